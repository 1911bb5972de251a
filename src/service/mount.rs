//! Mounting: the FUSE mount itself, the session's threads, readiness, and a clean unmount on
//! SIGTERM/SIGINT.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Session, SessionACL};

use super::control;
use super::daemon::Readiness;
use super::mountinfo::{is_fuse_mount_point, mount_device};
use crate::cache::Cache;
use crate::config::{redact_url, Config};
use crate::fuse::passthrough::DevFuseBackings;
use crate::fuse::{FuseAdapter, SessionCache, StonFs};

/// Largest FUSE read the kernel may send (bytes); matches the raised bdi read-ahead.
const MAX_READ: u32 = 1 << 20;

/// A live mount, ready to serve.
struct Mounted {
    session: Session<FuseAdapter>,
    runtime: tokio::runtime::Runtime,
    cache: Arc<Cache>,
    cache_dir: PathBuf,
}

/// Runs a mount until it is unmounted. `readiness` hears once the mount is live, or why not.
pub fn serve(config: Config, mountpoint: &Path, readiness: Readiness) -> Result<(), String> {
    let mounted = match start(config, mountpoint) {
        Ok(mounted) => mounted,
        Err(e) => {
            readiness.failed(&e);
            return Err(e);
        }
    };
    tracing::info!(mountpoint = %mountpoint.display(), "mounted");
    // Reported where the user looks, though the mount goes ahead: the cache still serves.
    for warning in mounted
        .runtime
        .block_on(mounted.cache.unreachable_origins())
    {
        tracing::warn!("{warning}; serving what the cache holds");
        readiness.warn(&warning);
    }
    readiness.ready();
    unmount_on_signal(mountpoint.to_path_buf());
    let result = mounted.session.run();
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
    // Journal what was fetched, so it survives the restart.
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

fn start(config: Config, mountpoint: &Path) -> Result<Mounted, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("ston-fs-io")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the I/O runtime: {e}"))?;
    let (threads, read_only) = (config.fuse_threads, config.read_only);
    let cache_dir = config.cache_dir.clone();
    let acl = match config.allow_other {
        true => SessionACL::All,
        false => SessionACL::Owner,
    };
    let (source, options) = (mount_source(&config), kernel_options(&config));
    let cache = {
        let _guard = runtime.enter();
        Arc::new(Cache::open(config)?)
    };
    cache.start_background();
    let fs = Arc::new(StonFs::new(cache.clone(), runtime.handle().clone()));
    start_services(&runtime, &fs);
    let device = fuse_mount(mountpoint, &source, &options, read_only)?;
    let backings = device
        .try_clone()
        .map_err(|e| format!("cannot duplicate the FUSE descriptor: {e}"))?;
    fs.set_backings(Arc::new(DevFuseBackings::new(backings)));
    let mut session_config = fuser::Config::default();
    session_config.n_threads = Some(threads);
    session_config.clone_fd = true;
    let adapter = FuseAdapter::new(fs.clone(), runtime.handle().clone());
    let session = match Session::from_fd(adapter, device, acl, session_config) {
        Ok(session) => session,
        Err(e) => {
            unmount(mountpoint);
            return Err(format!("FUSE handshake failed: {e}"));
        }
    };
    fs.set_kernel_cache(Arc::new(SessionCache(session.notifier())));
    raise_read_ahead(mountpoint);
    Ok(Mounted {
        session,
        runtime,
        cache,
        cache_dir,
    })
}

/// The control socket and the metrics endpoint, on the I/O runtime.
fn start_services(runtime: &tokio::runtime::Runtime, fs: &Arc<StonFs>) {
    let _guard = runtime.enter();
    let cache = fs.cache();
    if let Some(path) = control::socket_path(&cache.config().cache_dir) {
        control::serve(cache.clone(), path.clone());
        fs.set_control_socket(path);
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
fn fuse_mount(
    mountpoint: &Path,
    source: &str,
    options: &str,
    read_only: bool,
) -> Result<OwnedFd, String> {
    let device = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")
        .map_err(|e| format!("cannot open /dev/fuse: {e}{}", why_fuse_failed(&e)))?;
    let data = format!("fd={},{}", device.as_raw_fd(), options);
    let c_source = CString::new(source).map_err(|_| "bad mount source".to_string())?;
    let c_target = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| "bad mount point".to_string())?;
    let c_type = CString::new("fuse.ston-fs").map_err(|_| "bad type".to_string())?;
    let c_data = CString::new(data).map_err(|_| "bad mount options".to_string())?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            c_source.as_ptr(),
            c_target.as_ptr(),
            c_type.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | if read_only { libc::MS_RDONLY } else { 0 },
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

/// SIGTERM or SIGINT unmounts; the session then ends and the process exits cleanly.
fn unmount_on_signal(mountpoint: PathBuf) {
    let mut signals =
        match signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT, libc::SIGHUP]) {
            Ok(signals) => signals,
            Err(e) => {
                tracing::warn!("cannot handle signals: {e}");
                return;
            }
        };
    let spawned = std::thread::Builder::new()
        .name("ston-fs-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                tracing::info!(signal, "unmounting on signal");
                unmount(&mountpoint);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the signal thread: {e}");
    }
}
