//! In-place upgrade: the worker execs the installed binary in its own process (same pid, so
//! systemd's MAINPID and the supervisor's child stay the same), keeping the mount's
//! `/dev/fuse` descriptor and restart journal open across the exec. The new image takes the
//! connection over exactly as after a crash (see `handover`); requests the old image had
//! read come back through FUSE_NOTIFY_RESEND. `ston-fs restart MOUNTPOINT` and SIGUSR2 ask
//! for it; a failed exec leaves the old image serving.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::handover::{FUSE_FD_NAME, HANDOVER_ENV, STATE_FD_NAME};
use crate::cache::Cache;

/// What `ston-fs restart` and `stats` learn of the daemon behind a mount.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DaemonStatus {
    pub pid: u32,
    /// How many processes have served this mount's connection, this one included.
    pub incarnation: u64,
    /// The binary this process runs, as installed.
    pub exe: String,
    pub version: String,
    /// Why the mount cannot outlive this process, when it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_restart: Option<String>,
    /// Why the last in-place upgrade failed (the old image kept serving).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_error: Option<String>,
}

/// How to exec the installed binary in place.
pub struct Reexec {
    /// The binary's path on disk (never `/proc/self/exe`, which names the old, replaced file).
    exe: PathBuf,
    args: Vec<OsString>,
    /// Where this process started, so that relative arguments mean the same again.
    launch_dir: PathBuf,
    fuse_fd: RawFd,
    state_fd: RawFd,
}

/// The upgrade service of one mount.
pub struct Upgrade {
    cache: Arc<Cache>,
    plan: Result<Reexec, String>,
    incarnation: u64,
    error: Mutex<Option<String>>,
}

/// The path this process was started from, as it is on disk (a replaced binary shows as
/// "PATH (deleted)" in /proc).
pub fn installed_exe() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("ston-fs"));
    match exe
        .to_str()
        .and_then(|text| text.strip_suffix(" (deleted)"))
    {
        Some(kept) => PathBuf::from(kept),
        None => exe,
    }
}

impl Reexec {
    /// Execs this process's own command line again, with the two descriptors kept open.
    pub fn new(launch_dir: PathBuf, fuse_fd: RawFd, state_fd: RawFd) -> Reexec {
        Reexec {
            exe: installed_exe(),
            args: std::env::args_os().skip(1).collect(),
            launch_dir,
            fuse_fd,
            state_fd,
        }
    }

    /// Replaces this process's image. Returns only on failure.
    fn exec(&self) -> std::io::Error {
        let fds = [self.fuse_fd, self.state_fd];
        for fd in fds {
            if let Err(e) = set_cloexec(fd, false) {
                return e;
            }
        }
        let mut command = std::process::Command::new(&self.exe);
        command
            .args(&self.args)
            .current_dir(&self.launch_dir)
            .env(
                HANDOVER_ENV,
                format!(
                    "{FUSE_FD_NAME}:{},{STATE_FD_NAME}:{}",
                    self.fuse_fd, self.state_fd
                ),
            )
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES");
        // A supervisor that replaced a dead one is the holder now, whatever the environment
        // this process started with says.
        if let Some((socket, supervisor)) = super::fdstore::redirected() {
            command
                .env("NOTIFY_SOCKET", socket)
                .env(super::fdstore::SUPERVISOR_ENV, supervisor.to_string());
        }
        let error = command.exec();
        for fd in fds {
            let _ = set_cloexec(fd, true);
        }
        let _ = std::env::set_current_dir("/");
        error
    }
}

fn set_cloexec(fd: RawFd, on: bool) -> std::io::Result<()> {
    let flags = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD with an int argument on a descriptor this process holds.
    match unsafe { libc::fcntl(fd, libc::F_SETFD, flags) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

impl Upgrade {
    /// `plan` is `Err(why)` where the mount cannot be handed over.
    pub fn new(cache: Arc<Cache>, plan: Result<Reexec, String>, incarnation: u64) -> Upgrade {
        Upgrade {
            cache,
            plan,
            incarnation,
            error: Mutex::new(None),
        }
    }

    pub fn status(&self) -> DaemonStatus {
        DaemonStatus {
            pid: std::process::id(),
            incarnation: self.incarnation,
            exe: installed_exe().display().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            no_restart: self.plan.as_ref().err().cloned(),
            upgrade_error: self.error.lock().clone(),
        }
    }

    /// Whether an upgrade can run now; the reason when not.
    pub fn check(&self) -> Result<(), String> {
        let plan = self
            .plan
            .as_ref()
            .map_err(|why| format!("this mount cannot be restarted in place: {why}"))?;
        let exe = std::ffi::CString::new(plan.exe.as_os_str().as_encoded_bytes())
            .map_err(|_| "bad binary path".to_string())?;
        // SAFETY: `exe` is a valid NUL-terminated path.
        if unsafe { libc::access(exe.as_ptr(), libc::X_OK) } != 0 {
            return Err(format!(
                "{} is not an executable binary: {}",
                plan.exe.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// Journals what was fetched (so the new image need not fetch it again), then execs
    /// the installed binary. Returns only if the exec failed; the old image goes on serving.
    pub fn run(&self) {
        if let Err(why) = self.check() {
            tracing::warn!("in-place upgrade refused: {why}");
            *self.error.lock() = Some(why);
            return;
        }
        let Ok(plan) = self.plan.as_ref() else {
            return;
        };
        tracing::info!(exe = %plan.exe.display(), "upgrading in place: exec of the installed binary");
        self.cache.flush();
        let error = plan.exec();
        let why = format!("exec of {} failed: {error}", plan.exe.display());
        tracing::error!("{why}; the running binary keeps serving");
        *self.error.lock() = Some(why);
    }
}
