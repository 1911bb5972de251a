//! Keeps a holder for a live mount: when the supervisor dies, the worker starts another.
//!
//! The supervisor holds the mount's `/dev/fuse` descriptor and restart journal so that the
//! mount outlives its worker. Killed itself, it would leave the worker running without that
//! protection, and the worker's next death would end the mount. So the worker watches its
//! supervisor (a pidfd) and, when it dies, starts a new one with `--adopt-worker`, handing it
//! the descriptors at exec: the new supervisor watches this worker (not its child) through a
//! pidfd, and starts the next worker when this one dies. The new supervisor is the worker's
//! child, so the worker reaps it, watches it the same way, and replaces it again if need be.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::fdstore;
use super::upgrade::installed_exe;

/// The environment variable that carries an [`Adoption`] to a new supervisor.
pub const ADOPT_ENV: &str = "STON_FS_ADOPT";
/// First descriptor a new supervisor finds the stored descriptors at.
const FIRST_FD: RawFd = 3;
/// How long a new supervisor may take to open its notification socket.
const SOCKET_WAIT: Duration = Duration::from_secs(5);
/// The pause before another try when a supervisor cannot be started.
const RETRY_PAUSE: Duration = Duration::from_secs(5);

/// What a new supervisor needs to take a running worker over.
#[derive(Debug, Serialize, Deserialize)]
pub struct Adoption {
    pub worker: u32,
    /// The abstract name of the notification socket it must bind.
    pub socket: String,
    /// The stored descriptors' names, in the order they are found from fd 3.
    pub names: Vec<String>,
    /// The worker's arguments, for the workers it starts later.
    pub args: Vec<OsString>,
    pub launch_dir: PathBuf,
    pub mountpoint: PathBuf,
    /// Whether the worker logs to stderr (its log file, the journal); else to syslog.
    pub log_to_stderr: bool,
}

/// The descriptors a new supervisor is given, and what it is told about the worker.
pub struct Handover {
    /// `(name, descriptor)` of each descriptor the holder keeps.
    pub stored: Vec<(String, OwnedFd)>,
    pub launch_dir: PathBuf,
    pub mountpoint: PathBuf,
    pub log_to_stderr: bool,
}

/// Watches the supervisor with pid `supervisor` and replaces it whenever it dies, for as
/// long as the runtime runs.
pub fn keep_a_holder(runtime: &tokio::runtime::Handle, supervisor: u32, handover: Handover) {
    runtime.spawn(async move {
        let mut current = supervisor;
        loop {
            wait_for_exit(current).await;
            reap_if_ours(current);
            match start_supervisor(&handover).await {
                Ok(pid) => {
                    tracing::warn!(
                        dead = current,
                        new = pid,
                        "the supervisor died; a new one holds the mount's descriptors"
                    );
                    current = pid;
                }
                Err(e) => {
                    tracing::error!(
                        "the supervisor died and a new one cannot start ({e}); trying again \
                         in {} s: until then, this process's death ends the mount",
                        RETRY_PAUSE.as_secs()
                    );
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    });
}

/// Returns once process `pid` has exited (at once if it is gone already). It must be this
/// process's parent (the first supervisor) or child (one it started, before or after an
/// in-place upgrade): those are the only pids that cannot be another process's meanwhile.
async fn wait_for_exit(pid: u32) {
    let Ok(pidfd) = pidfd_open(pid) else { return };
    // SAFETY: getppid has no preconditions.
    let is_parent = unsafe { libc::getppid() } as u32 == pid;
    if !is_parent && !is_our_child(pid) {
        return; // gone before the pidfd was opened: the pid may be another process's
    }
    // SAFETY: the pidfd is owned by the AsyncFd, which neither replaces nor closes it early.
    match unsafe { tokio::io::unix::AsyncFd::register(pidfd) } {
        Ok(watched) => {
            let _ = watched.readable().await;
        }
        Err(e) => {
            tracing::debug!("cannot watch the supervisor ({e}); polling it");
            while process_exists(pid) {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Whether `pid` is a child of this process (a zombie included).
fn is_our_child(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        parent == Some(std::process::id())
    })
}

/// A supervisor this process started is its child, and its to reap.
fn reap_if_ours(pid: u32) {
    if is_our_child(pid) {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
    }
}

/// Whether `pid` still runs (a zombie has exited).
fn process_exists(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        !matches!(state, Some("Z" | "X"))
    })
}

pub fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags, and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    match fd {
        -1 => Err(std::io::Error::last_os_error()),
        // SAFETY: the descriptor was just created and is owned by nobody else.
        fd => Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
    }
}

/// Starts a supervisor that adopts this process, and sends notifications to it once it
/// listens. Returns its pid (a child of this process, ours to reap).
async fn start_supervisor(handover: &Handover) -> std::io::Result<u32> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let adoption = Adoption {
        worker: std::process::id(),
        socket: format!("ston-fs-supervisor-{}-{nanos}", std::process::id()),
        names: handover
            .stored
            .iter()
            .map(|(name, _)| name.clone())
            .collect(),
        args: std::env::args_os().skip(1).collect(),
        launch_dir: handover.launch_dir.clone(),
        mountpoint: handover.mountpoint.clone(),
        log_to_stderr: handover.log_to_stderr,
    };
    let text = serde_json::to_string(&adoption).map_err(std::io::Error::other)?;
    let mut command = Command::new(installed_exe());
    command
        .arg("--adopt-worker")
        .arg(adoption.worker.to_string())
        .arg("--adopt-mountpoint")
        .arg(&adoption.mountpoint)
        .env(ADOPT_ENV, text)
        .current_dir("/")
        .stdin(Stdio::null());
    let fds: Vec<RawFd> = handover
        .stored
        .iter()
        .map(|(_, fd)| fd.as_raw_fd())
        .collect();
    place_at_exec(&mut command, fds);
    // Reaped by pid (`reap_if_ours`), which works after an in-place upgrade too.
    let pid = command.spawn()?.id();
    wait_until_listening(&adoption.socket).await;
    fdstore::redirect_notifications(&format!("@{}", adoption.socket), pid);
    Ok(pid)
}

/// Puts `fds` at 3, 4, ... in the child, open across exec.
fn place_at_exec(command: &mut Command, fds: Vec<RawFd>) {
    use std::os::unix::process::CommandExt;
    const ABOVE: RawFd = 64;
    // SAFETY: only fcntl and dup2, which are async-signal-safe, on descriptors this process
    // keeps open until the child has exec'd; `fds` was allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            let mut moved = [-1 as RawFd; 8];
            for (slot, fd) in moved.iter_mut().zip(&fds) {
                *slot = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, ABOVE);
            }
            for (i, fd) in moved.iter().take(fds.len()).enumerate() {
                if libc::dup2(*fd, FIRST_FD + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

async fn wait_until_listening(socket: &str) {
    use std::os::linux::net::SocketAddrExt;
    let deadline = tokio::time::Instant::now() + SOCKET_WAIT;
    while tokio::time::Instant::now() < deadline {
        let address = std::os::unix::net::SocketAddr::from_abstract_name(socket.as_bytes());
        let listening = address.and_then(|address| {
            let probe = std::os::unix::net::UnixDatagram::unbound()?;
            probe.connect_addr(&address)
        });
        if listening.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// In a new supervisor, before any thread starts: the adoption it was started for, and the
/// descriptors handed to it.
pub fn take_adoption() -> Result<(Adoption, Vec<(String, OwnedFd)>), String> {
    let text = std::env::var(ADOPT_ENV).map_err(|_| format!("{ADOPT_ENV} is not set"))?;
    let adoption: Adoption =
        serde_json::from_str(&text).map_err(|e| format!("{ADOPT_ENV} is not valid: {e}"))?;
    if adoption.names.len() > 8 {
        return Err(format!("{ADOPT_ENV} names too many descriptors"));
    }
    let mut stored = Vec::new();
    for (i, name) in adoption.names.iter().enumerate() {
        let fd = FIRST_FD + i as RawFd;
        let adopted =
            fdstore::adopt_fd(fd).ok_or_else(|| format!("descriptor {fd} was not handed over"))?;
        stored.push((name.clone(), adopted));
    }
    Ok((adoption, stored))
}
