//! Mounting: the FUSE mount itself, the session's threads, readiness, and a clean unmount on
//! SIGTERM/SIGINT. Where something holds descriptors for it (systemd, or the ston-fs
//! supervisor), the mount outlives this process: a fresh mount gives the holder its
//! `/dev/fuse` descriptor and restart journal, and a process started with them takes the
//! live mount over instead of mounting (see `handover`). Where nothing can, one log line
//! says why and the mount lives and dies with this process, as it always did.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::control;
use super::daemon::Readiness;
use super::fdstore::{self, Holder};
use super::handover::{self, Inherited, FUSE_FD_NAME, STATE_FD_NAME};
use super::holder;
use super::mountinfo::{is_fuse_mount_point, mount_device};
use super::upgrade::{Reexec, Upgrade};
use crate::cache::Cache;
use crate::config::{redact_url, Config};
use crate::fuse::init::{accepted_features, InitRequest};
use crate::fuse::journal::{sealed_memfd, Dropped, Journal};
use crate::fuse::passthrough::DevFuseBackings;
use crate::fuse::{FuseSession, SessionOptions, StonFs, TakeoverReport, Wiring};

/// Largest FUSE read the kernel may send (bytes); matches the raised bdi read-ahead.
const MAX_READ: u32 = 1 << 20;

/// A live mount, ready to serve.
struct Mounted {
    session: FuseSession,
    runtime: tokio::runtime::Runtime,
    cache: Arc<Cache>,
    cache_dir: PathBuf,
    /// `None` when the mount lives and dies with this process.
    journal: Option<Arc<Journal>>,
    /// Whether this process took a live mount over (rather than mounting).
    taken_over: bool,
    upgrade: Arc<Upgrade>,
}

/// What the mount's connection is set up with.
struct Connection {
    session: FuseSession,
    /// The journal and incarnation when the mount can outlive this process; else why not.
    restart: Result<(Arc<Journal>, u64), String>,
    taken_over: bool,
}

/// How a mount may outlive the process that serves it.
pub enum Lifetime {
    /// Where something holds its descriptors, the mount outlives this process.
    Restartable {
        /// A live mount's descriptors, when this process is to take it over.
        inherited: Inherited,
        /// Where the command started (an in-place upgrade starts there again).
        launch_dir: PathBuf,
    },
    /// The mount ends with this process, without a word (the demo, whose origin is this
    /// process too).
    ThisProcess,
}

/// Runs a mount until it is unmounted. `readiness` hears once the mount is live, or why not.
pub fn serve(
    config: Config,
    mountpoint: &Path,
    readiness: Readiness,
    lifetime: Lifetime,
) -> Result<(), String> {
    let mounted = match start(config, mountpoint, lifetime) {
        Ok(mounted) => mounted,
        Err(e) => {
            readiness.failed(&e);
            return Err(e);
        }
    };
    if !mounted.taken_over {
        tracing::info!(mountpoint = %mountpoint.display(), "mounted");
        // Reported where the user looks, though the mount goes ahead: the cache still serves.
        for warning in mounted
            .runtime
            .block_on(mounted.cache.unreachable_origins())
        {
            tracing::warn!("{warning}; serving what the cache holds");
            readiness.warn(&warning);
        }
    }
    readiness.ready();
    handle_signals(mountpoint.to_path_buf(), mounted.upgrade.clone());
    let result = mounted.session.run();
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
    if mounted.journal.is_some() {
        // The connection is gone: nothing is left for another process to take over.
        fdstore::remove(FUSE_FD_NAME);
        fdstore::remove(STATE_FD_NAME);
    }
    // Journal what was fetched, so it survives the restart.
    mounted.cache.settle(std::time::Duration::from_secs(3));
    mounted
        .runtime
        .shutdown_timeout(std::time::Duration::from_secs(10));
    mounted.cache.flush();
    if let Some(path) = control::socket_path(&mounted.cache_dir) {
        let _ = std::fs::remove_file(path);
    }
    match result {
        // The kernel ends the session this way after an unmount: that is a clean exit.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::ENODEV)) => Ok(()),
        result => result.map_err(|e| format!("FUSE session ended with an error: {e}")),
    }
}

fn start(config: Config, mountpoint: &Path, lifetime: Lifetime) -> Result<Mounted, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("ston-fs-io")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the I/O runtime: {e}"))?;
    let options = SessionOptions {
        threads: config.fuse_threads,
        clone_fd: true,
        allow_other: config.allow_other,
    };
    let cache_dir = config.cache_dir.clone();
    let log_to_stderr = logs_to_stderr(&config);
    let kernel = KernelMount {
        mountpoint: mountpoint.to_path_buf(),
        source: mount_source(&config),
        options: kernel_options(&config),
        read_only: config.read_only,
    };
    let cache = {
        let _guard = runtime.enter();
        Arc::new(Cache::open(config)?)
    };
    cache.start_background();
    let fs = StonFs::new(cache.clone(), runtime.handle().clone());
    let handle = runtime.handle().clone();
    let (connection, launch_dir) = match lifetime {
        Lifetime::Restartable {
            inherited,
            launch_dir,
        } => (
            connect(&fs, &handle, &kernel, inherited, options)?,
            launch_dir,
        ),
        Lifetime::ThisProcess => {
            let why = "the mount serves an origin inside this process".to_string();
            let connection = plain_mount(&fs, &handle, &kernel, options, why, false)?;
            (connection, PathBuf::from("/"))
        }
    };
    fs.set_kernel_cache(connection.session.kernel_cache())
        .map_err(|e| e.to_string())?;
    keep_a_holder(&connection, &handle, &kernel, &launch_dir, log_to_stderr);
    let (journal, upgrade) = upgrade_service(&connection, &cache, launch_dir);
    start_services(&runtime, &fs, upgrade.clone());
    Ok(Mounted {
        session: connection.session,
        runtime,
        cache,
        cache_dir,
        journal,
        taken_over: connection.taken_over,
        upgrade,
    })
}

/// Under a ston-fs supervisor, watches it and starts another if it dies (see `holder`).
fn keep_a_holder(
    connection: &Connection,
    runtime: &tokio::runtime::Handle,
    kernel: &KernelMount,
    launch_dir: &Path,
    log_to_stderr: bool,
) {
    let (Ok((journal, _)), Holder::Supervisor(supervisor)) =
        (&connection.restart, Holder::from_env())
    else {
        return;
    };
    let device = connection.session.duplicate_device();
    let state = journal.as_fd().try_clone_to_owned();
    let (Ok(device), Ok(state)) = (device, state) else {
        tracing::warn!("cannot keep copies of the mount's descriptors: if the supervisor dies, no new one takes over");
        return;
    };
    let handover = holder::Handover {
        stored: vec![
            (FUSE_FD_NAME.to_string(), device),
            (STATE_FD_NAME.to_string(), state),
        ],
        launch_dir: launch_dir.to_path_buf(),
        mountpoint: kernel.mountpoint.clone(),
        log_to_stderr,
    };
    holder::keep_a_holder(runtime, supervisor, handover);
}

/// Whether this process's log lines go to stderr (a terminal, a log file, the journal), as
/// `cli` decides; else they go to syslog.
fn logs_to_stderr(config: &Config) -> bool {
    config.log_file.is_some()
        || std::env::var_os("JOURNAL_STREAM").is_some()
        || !super::syslog::is_listening()
}

/// `ston-fs restart` and SIGUSR2: an exec in place where the mount can be handed over.
fn upgrade_service(
    connection: &Connection,
    cache: &Arc<Cache>,
    launch_dir: PathBuf,
) -> (Option<Arc<Journal>>, Arc<Upgrade>) {
    let (journal, plan, incarnation) = match &connection.restart {
        Ok((journal, incarnation)) => {
            let state_fd = journal.as_fd().as_raw_fd();
            let plan = Reexec::new(launch_dir, connection.session.device_fd(), state_fd);
            (Some(journal.clone()), Ok(plan), *incarnation)
        }
        Err(why) => (None, Err(why.clone()), 1),
    };
    (
        journal,
        Arc::new(Upgrade::new(cache.clone(), plan, incarnation)),
    )
}

/// How the kernel mount is made.
struct KernelMount {
    mountpoint: PathBuf,
    source: String,
    options: String,
    read_only: bool,
}

/// Takes over the live mount handed to this process, or mounts afresh: restartable where
/// something holds descriptors, as a plain mount where nothing does.
fn connect(
    fs: &Arc<StonFs>,
    runtime: &tokio::runtime::Handle,
    kernel: &KernelMount,
    inherited: Inherited,
    options: SessionOptions,
) -> Result<Connection, String> {
    if inherited.is_takeover() {
        match take_over(fs, runtime, inherited, options) {
            Ok(connection) => return Ok(connection),
            Err(why) => {
                // The old connection cannot be served: let it go and start a new one.
                tracing::error!(
                    "cannot take the mount over ({why}); detaching it and mounting afresh"
                );
                fdstore::remove(FUSE_FD_NAME);
                fdstore::remove(STATE_FD_NAME);
                detach(&kernel.mountpoint);
            }
        }
    }
    match Holder::from_env() {
        Holder::Nobody(why) => plain_mount(fs, runtime, kernel, options, why, true),
        holder => restartable_mount(fs, runtime, kernel, options, &holder),
    }
}

/// Today's mount: it ends with this process.
fn plain_mount(
    fs: &Arc<StonFs>,
    runtime: &tokio::runtime::Handle,
    kernel: &KernelMount,
    options: SessionOptions,
    why: String,
    say_why: bool,
) -> Result<Connection, String> {
    let device = fuse_mount(kernel)?;
    let backings = device
        .try_clone()
        .map_err(|e| format!("cannot duplicate the FUSE descriptor: {e}"))?;
    let backings = Arc::new(DevFuseBackings::new(backings));
    fs.wire(Wiring::Unjournaled { backings })
        .map_err(|e| e.to_string())?;
    let session = FuseSession::handshake(fs.clone(), runtime.clone(), device, options)
        .map_err(|e| handshake_failed(kernel, e))?;
    raise_read_ahead(&kernel.mountpoint);
    if say_why {
        log_no_restart(&why);
    }
    Ok(Connection {
        session,
        restart: Err(why),
        taken_over: false,
    })
}

fn log_no_restart(why: &str) {
    tracing::warn!("restart protection off: {why}; if this process dies, the mount goes with it");
}

/// A fresh mount whose descriptor and journal go to the holder, so that it outlives this
/// process.
fn restartable_mount(
    fs: &Arc<StonFs>,
    runtime: &tokio::runtime::Handle,
    kernel: &KernelMount,
    options: SessionOptions,
    holder: &Holder,
) -> Result<Connection, String> {
    let (session, init, reply) = relayed_mount(fs, runtime, kernel, options)?;
    let backings = session
        .duplicate_device()
        .map_err(|e| format!("cannot duplicate the FUSE descriptor: {e}"))?;
    let resend = InitRequest::parse(&init).is_some_and(|offered| offered.can_resend());
    if !resend {
        let backings = Arc::new(DevFuseBackings::new(backings));
        fs.wire(Wiring::Unjournaled { backings })
            .map_err(|e| e.to_string())?;
        raise_read_ahead(&kernel.mountpoint);
        let why = "the kernel cannot resend what a dead daemon had read \
                   (FUSE_NOTIFY_RESEND needs Linux 6.9)"
            .to_string();
        log_no_restart(&why);
        return Ok(Connection {
            session,
            restart: Err(why),
            taken_over: false,
        });
    }
    let journal = sealed_memfd("ston-fs-journal")
        .map_err(|e| e.to_string())
        .and_then(|file| Journal::create(file, &init, &reply).map_err(|e| e.to_string()))
        .map_err(|e| format!("cannot create the restart journal: {e}"))?;
    let journal = Arc::new(journal);
    let backings = Arc::new(DevFuseBackings::new(backings));
    let journal_too = journal.clone();
    fs.wire(Wiring::Journaled {
        backings,
        journal: journal_too,
    })
    .map_err(|e| e.to_string())?;
    raise_read_ahead(&kernel.mountpoint);
    let restart = match hand_to_holder(&session, &journal) {
        Ok(()) => {
            tracing::info!(
                "restart protection on: the mount outlives this process ({} holds its descriptors)",
                holder.describe()
            );
            warn_about_request_timeout();
            Ok((journal, 1))
        }
        Err(why) => {
            log_no_restart(&why);
            Err(why)
        }
    };
    Ok(Connection {
        session,
        restart,
        taken_over: false,
    })
}

/// Mounts, reads the kernel's INIT and relays it to fuser, and sends fuser's reply. The
/// threads share one descriptor where the kernel can resend (the mount is then
/// restartable): a request read on a cloned descriptor dies with the clone.
fn relayed_mount(
    fs: &Arc<StonFs>,
    runtime: &tokio::runtime::Handle,
    kernel: &KernelMount,
    mut options: SessionOptions,
) -> Result<(FuseSession, Vec<u8>, Vec<u8>), String> {
    let device = fuse_mount(kernel)?;
    let init = handover::read_init(&device).map_err(|e| handshake_failed(kernel, e))?;
    let offered = InitRequest::parse(&init).ok_or_else(|| {
        unmount(&kernel.mountpoint);
        "the kernel's first FUSE message is not INIT".to_string()
    })?;
    options.clone_fd = !offered.can_resend();
    let (session, reply) =
        handover::relay_handshake(fs.clone(), runtime.clone(), device, &init, options)
            .map_err(|e| handshake_failed(kernel, e))?;
    handover::write_all(session.device_fd(), &reply).map_err(|e| handshake_failed(kernel, e))?;
    Ok((session, init, reply))
}

/// Gives the holder the mount's descriptor and journal; why not, when it cannot.
fn hand_to_holder(session: &FuseSession, journal: &Journal) -> Result<(), String> {
    let device = session.duplicate_device().map_err(|e| e.to_string())?;
    let stored = fdstore::store(FUSE_FD_NAME, device.as_fd())
        .and_then(|first| Ok(first && fdstore::store(STATE_FD_NAME, journal.as_fd())?));
    match stored {
        Ok(true) => Ok(()),
        Ok(false) => Err("nobody listens on NOTIFY_SOCKET".to_string()),
        Err(e) => Err(format!(
            "the descriptor store refused the mount's descriptors: {e}"
        )),
    }
}

/// How long a takeover waits, at most, for the kernel to drop the pages of carried files
/// before it serves (only a read in flight across the takeover can hold it up).
const CARRIED_PAGES_BOUND: Duration = Duration::from_secs(2);

/// Serves the live mount whose descriptors were handed over: its journal gives back what
/// the kernel holds, fuser's handshake is replayed, and the requests the previous process
/// had read come back through FUSE_NOTIFY_RESEND.
fn take_over(
    fs: &Arc<StonFs>,
    runtime: &tokio::runtime::Handle,
    inherited: Inherited,
    mut options: SessionOptions,
) -> Result<Connection, String> {
    let started = Instant::now();
    let (Some(device), Some(state)) = (inherited.fuse, inherited.state) else {
        return Err("the FUSE descriptor came without its journal".into());
    };
    let (journal, restored) =
        Journal::open(File::from(state)).map_err(|e| format!("the restart journal: {e}"))?;
    let offered =
        InitRequest::parse(&restored.init_request).ok_or("the journal holds no INIT request")?;
    if !offered.can_resend() {
        return Err("the kernel cannot resend what the previous process had read".into());
    }
    let features =
        accepted_features(&restored.init_reply).ok_or("the journal holds no INIT reply")?;
    options.clone_fd = false;
    let (session, reply) = handover::relay_handshake(
        fs.clone(),
        runtime.clone(),
        device,
        &restored.init_request,
        options,
    )
    .map_err(|e| format!("replaying the INIT handshake: {e}"))?;
    if reply != restored.init_reply {
        tracing::info!(
            "this binary would negotiate the connection differently; it keeps what was \
             agreed when it was mounted until the next fresh mount"
        );
    }
    fs.set_kernel_features(features);
    let journal = Arc::new(journal);
    let backings = session
        .duplicate_device()
        .map_err(|e| format!("cannot duplicate the FUSE descriptor: {e}"))?;
    let backings = Arc::new(DevFuseBackings::new(backings));
    let with_handles = restored.carried.handles.iter().map(|h| h.ino).collect();
    let report = fs
        .take_over(backings, journal.clone(), restored.carried)
        .map_err(|e| e.to_string())?;
    // Before any request is answered: no page the previous process left may be read as
    // this one's (see `fuse::fs::restore`).
    fs.drop_carried_pages(session.kernel_cache(), &with_handles, CARRIED_PAGES_BOUND);
    if let Err(e) = session.request_resend() {
        tracing::error!(
            "FUSE_NOTIFY_RESEND failed ({e}): requests the previous process had read may \
             never be answered"
        );
    }
    log_takeover(&report, restored.dropped, restored.incarnation, started);
    Ok(Connection {
        session,
        restart: Ok((journal, restored.incarnation)),
        taken_over: true,
    })
}

fn log_takeover(report: &TakeoverReport, dropped: Dropped, incarnation: u64, started: Instant) {
    tracing::info!(
        incarnation,
        inodes = report.inodes,
        open_files = report.handles,
        passthrough_kept = report.backings_kept,
        passthrough_closed = report.backings_closed,
        unplaced = report.unplaced,
        damaged = dropped.damaged,
        inconsistent = dropped.inconsistent,
        "took the live mount over in {} ms",
        started.elapsed().as_millis()
    );
}

/// The kernel aborts a connection whose requests wait longer than its request timeout
/// (Linux 6.14+): a restart must finish within it.
fn warn_about_request_timeout() {
    for knob in ["default_request_timeout", "max_request_timeout"] {
        let path = format!("/proc/sys/fs/fuse/{knob}");
        let seconds = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if seconds > 0 {
            tracing::warn!(
                "{path} is {seconds}: the kernel ends the mount if a restart takes longer than that"
            );
        }
    }
}

fn handshake_failed(kernel: &KernelMount, error: std::io::Error) -> String {
    unmount(&kernel.mountpoint);
    format!("FUSE handshake failed: {error}")
}

/// The control socket and the metrics endpoint, on the I/O runtime.
fn start_services(runtime: &tokio::runtime::Runtime, fs: &Arc<StonFs>, upgrade: Arc<Upgrade>) {
    let _guard = runtime.enter();
    let cache = fs.cache();
    if let Some(path) = control::socket_path(&cache.config().cache_dir) {
        control::serve(cache.clone(), path.clone(), upgrade);
        if let Err(e) = fs.set_control_socket(path) {
            tracing::error!("the control socket's path is not published: {e}");
        }
    }
    if let Some(addr) = cache.config().metrics_addr {
        super::metrics::serve(cache.clone(), addr);
    }
}

/// The name shown as the mount's source: the origin, without anything secret.
fn mount_source(config: &Config) -> String {
    let text = match config.origins.as_slice() {
        [] => "ston-fs".to_string(),
        origins => origins
            .iter()
            .map(|o| redact_url(&o.to_string()))
            .collect::<Vec<_>>()
            .join("+"),
    };
    // The kernel splits mount data on commas, and mount tables on white space.
    text.replace([',', ' ', '\t', '\n'], "_")
}

fn kernel_options(config: &Config) -> String {
    let mut options = format!("rootmode=40000,user_id=0,group_id=0,max_read={MAX_READ}");
    if config.allow_other {
        options.push_str(",allow_other");
    }
    if config.default_permissions {
        options.push_str(",default_permissions");
    }
    options
}

/// Opens /dev/fuse and mounts it with type `fuse.ston-fs`, so mount tables, `umount` and
/// `mount -t fuse.ston-fs` all see the same name.
fn fuse_mount(kernel: &KernelMount) -> Result<OwnedFd, String> {
    let device = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")
        .map_err(|e| format!("cannot open /dev/fuse: {e}{}", why_fuse_failed(&e)))?;
    let mountpoint = &kernel.mountpoint;
    let data = format!("fd={},{}", device.as_raw_fd(), kernel.options);
    let c_source =
        CString::new(kernel.source.as_str()).map_err(|_| "bad mount source".to_string())?;
    let c_target = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| "bad mount point".to_string())?;
    let c_type = CString::new("fuse.ston-fs").map_err(|_| "bad type".to_string())?;
    let c_data = CString::new(data).map_err(|_| "bad mount options".to_string())?;
    let flags =
        libc::MS_NOSUID | libc::MS_NODEV | if kernel.read_only { libc::MS_RDONLY } else { 0 };
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            c_source.as_ptr(),
            c_target.as_ptr(),
            c_type.as_ptr(),
            flags,
            c_data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(format!(
            "cannot mount on {}: {err}{}",
            mountpoint.display(),
            why_fuse_failed(&err)
        ));
    }
    Ok(OwnedFd::from(device))
}

/// A hint for the usual reason behind a failed FUSE open or mount.
fn why_fuse_failed(error: &std::io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => " (mounting needs root, or CAP_SYS_ADMIN)",
        Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => {
            " (is the fuse module loaded? try `modprobe fuse`)"
        }
        _ => "",
    }
}

/// Detaches a dead FUSE mount at `mountpoint` (its daemon is gone, so every access says
/// "Transport endpoint is not connected"), so that a new mount can take its place.
/// Returns whether it detached one.
pub fn detach_dead_mount(mountpoint: &Path) -> bool {
    let dead = std::fs::metadata(mountpoint)
        .err()
        .is_some_and(|e| e.raw_os_error() == Some(libc::ENOTCONN));
    if !dead || !is_fuse_mount_point(mountpoint) {
        return false;
    }
    let Ok(target) = CString::new(mountpoint.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `target` is a valid NUL-terminated path.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) == 0 }
}

/// Unmounts, detaching lazily if files are still open.
pub fn unmount(mountpoint: &Path) {
    let Ok(target) = CString::new(mountpoint.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: `target` is a valid NUL-terminated path.
    let rc = unsafe { libc::umount2(target.as_ptr(), 0) };
    if rc != 0 {
        // SAFETY: as above.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// The kernel's default read-ahead for a FUSE mount is 128 KiB; 1 MiB lets sequential reads
/// arrive as whole blocks. Only the bdi setting can raise it. The device number comes from
/// mountinfo: a stat of the mount point would wait on this not-yet-running session.
fn raise_read_ahead(mountpoint: &Path) {
    let Some(device) = mount_device(mountpoint) else {
        return;
    };
    let path = format!("/sys/class/bdi/{device}/read_ahead_kb");
    if let Err(e) = std::fs::write(&path, format!("{}", MAX_READ / 1024)) {
        tracing::debug!("cannot raise read-ahead at {path}: {e}");
    }
}

/// Detaches whatever is mounted at `mountpoint` at once (its open files finish on the old
/// connection), without looking inside it.
fn detach(mountpoint: &Path) {
    let Ok(target) = CString::new(mountpoint.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: `target` is a valid NUL-terminated path.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
}

/// SIGTERM, SIGINT or SIGHUP unmounts; the session then ends and the process exits cleanly.
/// SIGUSR2 upgrades in place (as `ston-fs restart` does).
fn handle_signals(mountpoint: PathBuf, upgrade: Arc<Upgrade>) {
    let wanted = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR2];
    let mut signals = match signal_hook::iterator::Signals::new(wanted) {
        Ok(signals) => signals,
        Err(e) => {
            tracing::warn!("cannot handle signals: {e}");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("ston-fs-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == libc::SIGUSR2 {
                    upgrade.run();
                    continue;
                }
                tracing::info!(signal, "unmounting on signal");
                unmount(&mountpoint);
                break;
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the signal thread: {e}");
    }
}
