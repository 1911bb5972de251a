//! Daemonizing and readiness: the parent process returns only once the mount is live (exit 0)
//! or has failed (non-zero, with the reason), and systemd (or the ston-fs supervisor) hears
//! `READY=1`.

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::Path;

use super::fdstore;

/// Environment variable that hands the launcher's readiness pipe to the supervisor's first
/// worker (the descriptor number).
pub const READY_FD_ENV: &str = "STON_FS_READY_FD";

/// Whom to tell that the mount is live.
pub enum Readiness {
    /// The waiting parent of a daemonized process.
    Parent(File),
    /// systemd's `NOTIFY_SOCKET` (Type=notify), or nobody.
    Foreground,
    /// A caller-supplied action (the demo prints its instructions).
    Callback(Box<dyn FnOnce() + Send>),
}

impl Readiness {
    /// The readiness pipe the supervisor handed to its first worker, if this is one.
    /// Must run at startup, before any other thread exists.
    pub fn from_supervisor() -> Option<Readiness> {
        let fd = std::env::var(READY_FD_ENV).ok()?.parse().ok()?;
        std::env::remove_var(READY_FD_ENV);
        let pipe = fdstore::adopt_fd(fd)?;
        Some(Readiness::Parent(File::from(pipe)))
    }

    pub fn ready(self) {
        match self {
            Readiness::Parent(mut pipe) => {
                let _ = pipe.write_all(b"ready\n");
                // A supervised worker also tells its supervisor.
                notify_systemd("READY=1");
            }
            Readiness::Foreground => notify_systemd("READY=1"),
            Readiness::Callback(callback) => {
                notify_systemd("READY=1");
                callback();
            }
        }
    }

    /// A problem the user should hear of now, though the mount goes ahead.
    pub fn warn(&self, warning: &str) {
        match self {
            Readiness::Parent(pipe) => {
                let mut pipe: &File = pipe;
                let _ = pipe.write_all(format!("warning: {warning}\n").as_bytes());
            }
            // In the foreground the log line itself goes to stderr (or the journal).
            Readiness::Foreground => {}
            Readiness::Callback(_) => eprintln!("ston-fs: warning: {warning}"),
        }
    }

    pub fn failed(self, reason: &str) {
        if let Readiness::Parent(mut pipe) = self {
            let _ = pipe.write_all(format!("error: {reason}\n").as_bytes());
        }
    }
}

/// Sends a state line to systemd (or the supervisor) if one listens.
pub fn notify_systemd(state: &str) {
    if let Err(e) = fdstore::notify(state, &[]) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// Forks into the background. Returns in the child, with the pipe to report readiness on;
/// the parent waits for that report and exits with it. Must run before any thread starts.
pub fn daemonize(log_file: Option<&Path>) -> Result<File, String> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two descriptors for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!(
            "cannot create a pipe: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (reader, writer) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    // SAFETY: the process is still single-threaded here (the caller's contract).
    match unsafe { libc::fork() } {
        -1 => Err(format!("cannot fork: {}", std::io::Error::last_os_error())),
        0 => {
            drop(reader);
            detach_from_terminal(log_file)?;
            Ok(writer)
        }
        _ => {
            drop(writer);
            std::process::exit(wait_for_child(reader));
        }
    }
}

/// Relays the child's warnings, then exits with its verdict: 0 once the mount is live.
fn wait_for_child(reader: File) -> i32 {
    use std::io::BufRead;
    for line in std::io::BufReader::new(reader).lines() {
        let Ok(line) = line else { break };
        match line.as_str() {
            "ready" => return 0,
            warning if warning.starts_with("warning: ") => eprintln!("ston-fs: {warning}"),
            error => {
                eprintln!(
                    "ston-fs: {}",
                    error.strip_prefix("error: ").unwrap_or(error)
                );
                return 1;
            }
        }
    }
    eprintln!("ston-fs: the background process exited before the mount was live");
    1
}

fn detach_from_terminal(log_file: Option<&Path>) -> Result<(), String> {
    // SAFETY: setsid has no preconditions; failure only means we already lead a session.
    unsafe { libc::setsid() };
    let _ = std::env::set_current_dir("/");
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("cannot open /dev/null: {e}"))?;
    let log = match log_file {
        Some(path) => crate::store::open_private_log(path)
            .map_err(|e| format!("cannot open log_file {}: {e}", path.display()))?,
        None => null.try_clone().map_err(|e| e.to_string())?,
    };
    use std::os::fd::AsRawFd;
    // SAFETY: dup2 onto the standard descriptors with descriptors we hold open.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(null.as_raw_fd(), 1);
        libc::dup2(log.as_raw_fd(), 2);
    }
    Ok(())
}
