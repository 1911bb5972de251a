//! Helpers for `tests/service.rs`: a private Apache, a foreground ston-fs daemon the test controls itself (signals, `NOTIFY_SOCKET`),
//! daemons started by mount(8), the /sbin helpers the installer writes (restored afterwards),
//! and small command runners. Every process started here is stopped by its own guard, by pid.
//! Shared by `tests/service.rs` and `tests/restart.rs`; each uses a part.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::mount::{
    force_unmount_all, is_mounted, mounts_at, tail, wait_or_kill, wait_timeout, BIN,
};
use crate::common::nginx::{free_port, wait_listening, which};
#[allow(unused_imports)]
pub use crate::common::process::{ston_fs_pids_with_arg, wait_gone, workers};

pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Apache
// ---------------------------------------------------------------------------

const APACHE_MODULES: &str = "/usr/lib/apache2/modules";

/// A private Apache (`apache2 -X`, one process) on a loopback port whose DocumentRoot is
/// `docroot`, with `Options Indexes`. It drops to www-data like a packaged Apache does.
pub struct Apache {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Apache {
    /// One process (`apache2 -X`): requests are served one after another.
    pub fn start(docroot: &Path) -> Apache {
        Apache::launch(docroot, None, "")
    }

    /// Like [`Apache::start`], with `extra` appended to the configuration.
    pub fn start_with(docroot: &Path, extra: &str) -> Apache {
        Apache::launch(docroot, None, extra)
    }

    /// A forking Apache (prefork, `-DFOREGROUND`) with `workers` children, for requests
    /// served at the same time.
    pub fn start_with_workers(docroot: &Path, workers: usize) -> Apache {
        Apache::launch(docroot, Some(workers), "")
    }

    fn launch(docroot: &Path, workers: Option<usize>, extra: &str) -> Apache {
        let apache2 = which("apache2")
            .expect("apache2 is not installed: run the suite with `bash tests/run.sh`");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let d = dir.path().display();
        let root = docroot.display();
        let modules = [
            ("mpm_prefork_module", "mod_mpm_prefork.so"),
            ("authz_core_module", "mod_authz_core.so"),
            ("dir_module", "mod_dir.so"),
            ("autoindex_module", "mod_autoindex.so"),
            ("mime_module", "mod_mime.so"),
            ("alias_module", "mod_alias.so"),
        ]
        .iter()
        .map(|(name, file)| format!("LoadModule {name} {APACHE_MODULES}/{file}\n"))
        .collect::<String>();
        let types = if Path::new("/etc/mime.types").exists() {
            "/etc/mime.types"
        } else {
            "/dev/null"
        };
        let config = format!(
            "ServerRoot \"{d}\"\n{modules}\
             ServerName 127.0.0.1\nListen 127.0.0.1:{port}\n\
             PidFile \"{d}/apache2.pid\"\nDefaultRuntimeDir \"{d}\"\nMutex file:{d} default\n\
             ErrorLog \"{d}/error.log\"\nLogLevel warn\n\
             LogFormat \"%>s %B \\\"%r\\\" \\\"%{{Range}}i\\\"\" ston\n\
             CustomLog \"{d}/access.log\" ston\n\
             User www-data\nGroup www-data\n\
             TypesConfig {types}\nAddType text/plain .txt\n\
             EnableSendfile Off\nKeepAlive Off\n\
             DocumentRoot \"{root}\"\n\
             <Directory />\n  AllowOverride None\n  Require all denied\n</Directory>\n\
             <Directory \"{root}\">\n  Options Indexes\n  AllowOverride None\n  Require all granted\n</Directory>\n\
             DirectoryIndex index.html\n{extra}"
        );
        let config = match workers {
            None => config,
            Some(n) => format!(
                "{config}StartServers {n}\nMinSpareServers {n}\nMaxSpareServers {n}\n\
                 ServerLimit {}\nMaxRequestWorkers {}\n",
                2 * n,
                2 * n
            ),
        };
        let conf = dir.path().join("apache2.conf");
        fs::write(&conf, config).expect("write apache2.conf");
        let syntax = run_command(
            Command::new(&apache2).arg("-t").arg("-f").arg(&conf),
            STEP_TIMEOUT,
        );
        assert!(
            syntax.success(),
            "apache2 -t rejected the config:\n{}",
            syntax.describe()
        );
        let stderr = dir.path().join("stderr.log");
        let mode = match workers {
            None => "-X",
            Some(_) => "-DFOREGROUND",
        };
        let mut command = Command::new(&apache2);
        if workers.is_some() {
            // A forking Apache stops its children by signalling its whole process group:
            // that must not be the test's.
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let mut child = command
            .arg(mode)
            .arg("-f")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(File::create(&stderr).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .expect("start apache2");
        wait_listening(port, "apache2", &mut child, &dir.path().join("error.log"));
        Apache {
            child: Some(child),
            port,
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn logs(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "--- apache error.log ---\n{}\n--- apache access.log ---\n{}\n--- apache stderr ---\n{}",
            tail(&read("error.log"), 8000),
            tail(&read("access.log"), 8000),
            tail(&read("stderr.log"), 4000)
        )
    }

    /// SIGTERM, then (bounded) SIGKILL; returns how it ended.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        match wait_timeout(&mut child, Duration::from_secs(10)) {
            Some(status) => Some(status),
            None => {
                let _ = child.kill();
                wait_timeout(&mut child, Duration::from_secs(5))
            }
        }
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

/// Result of a bounded command run.
#[derive(Debug)]
pub struct Outcome {
    pub command: String,
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Outcome {
    /// Asserts the command succeeded and printed `want`.
    #[track_caller]
    pub fn assert_printed(&self, want: &str) {
        let printed = self.success() && self.stdout_text().contains(want);
        assert!(
            printed,
            "expected success and {want:?}:\n{}",
            self.describe()
        );
    }

    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.status,
            tail(&self.stdout_text(), 8000),
            tail(&self.stderr, 8000)
        )
    }
}

/// Runs `cmd` to completion (killed after `timeout`). Output goes to files, not pipes, so a
/// daemon that the command leaves behind cannot hold our reads open.
pub fn run_command(cmd: &mut Command, timeout: Duration) -> Outcome {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("stdout");
    let err = dir.path().join("stderr");
    let command = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command}: {e}"));
    let status = wait_or_kill(&mut child, timeout);
    Outcome {
        command,
        status,
        stdout: fs::read(&out).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&fs::read(&err).unwrap_or_default()).into_owned(),
    }
}

/// `ston-fs ARGS...` (bounded).
pub fn ston_fs<I, S>(args: I) -> Outcome
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    run_command(&mut cmd, Duration::from_secs(60))
}

/// curl's answer: HTTP status and body.
pub struct CurlAnswer {
    pub code: u16,
    pub body: Vec<u8>,
}

/// `curl -sS [extra] URL`, body to a file, status from `-w`.
pub fn curl(url: &str, extra: &[&str]) -> CurlAnswer {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = dir.path().join("body");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "-o"])
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .args(extra)
        .arg(url);
    let out = run_command(&mut cmd, Duration::from_secs(90));
    assert!(out.success(), "curl failed:\n{}", out.describe());
    CurlAnswer {
        code: out
            .stdout_text()
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("curl printed no status:\n{}", out.describe())),
        body: fs::read(&body).unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------
// A foreground ston-fs the test drives itself
// ---------------------------------------------------------------------------

/// `ston-fs -f ARGS... ORIGIN MOUNTPOINT`, started without waiting for anything. Dropping it
/// detaches the mount and kills the process.
pub struct Daemon {
    child: Option<Child>,
    mountpoint: PathBuf,
    log: PathBuf,
}

impl Daemon {
    pub fn spawn(
        args: &[&OsStr],
        origin: &str,
        mountpoint: &Path,
        envs: &[(&str, &OsStr)],
        log: &Path,
    ) -> Daemon {
        let mut cmd = Command::new(BIN);
        cmd.arg("-f").args(args).arg(origin).arg(mountpoint);
        let file = File::create(log).expect("daemon log");
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .env_remove("NOTIFY_SOCKET");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn ston-fs");
        Daemon {
            child: Some(child),
            mountpoint: mountpoint.to_path_buf(),
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon").id()
    }

    pub fn log(&self) -> String {
        tail(&fs::read_to_string(&self.log).unwrap_or_default(), 16000).to_string()
    }

    /// Waits (bounded) until the mount shows up; panics with the log if it doesn't.
    pub fn wait_mounted(&mut self) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if mounts_at(&self.mountpoint)
                .iter()
                .any(|m| m.fstype == "fuse.ston-fs")
            {
                return;
            }
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                panic!(
                    "ston-fs exited with {status} before mounting\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "ston-fs did not mount within {STEP_TIMEOUT:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) for the process to exit by itself.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon");
        match wait_timeout(&mut child, STEP_TIMEOUT) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ston-fs did not exit within {STEP_TIMEOUT:?}\n{}",
                    self.log()
                );
            }
        }
    }

    /// Sends `signal` and waits (bounded) for the exit.
    pub fn signal_and_wait(&mut self, signal: libc::c_int) -> ExitStatus {
        unsafe {
            libc::kill(self.pid() as libc::pid_t, signal);
        }
        self.wait_exit()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            force_unmount_all(&self.mountpoint);
            if wait_timeout(&mut child, Duration::from_secs(3)).is_none() {
                let _ = child.kill();
                let _ = wait_timeout(&mut child, Duration::from_secs(5));
            }
        }
        force_unmount_all(&self.mountpoint);
        if std::thread::panicking() {
            eprintln!("--- ston-fs log ---\n{}", self.log());
        }
    }
}

pub fn describe_status(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => format!("{status}"),
    }
}

// ---------------------------------------------------------------------------
// Daemons started by mount(8)
// ---------------------------------------------------------------------------

/// Cleanup for a mount made by mount(8): detaches whatever is left on `dir` and kills, by
/// pid, any ston-fs daemon still serving it.
pub struct ExternalMount {
    pub dir: PathBuf,
}

impl Drop for ExternalMount {
    fn drop(&mut self) {
        let pids = ston_fs_pids_with_arg(&self.dir);
        if is_mounted(&self.dir) {
            force_unmount_all(&self.dir);
        }
        for pid in pids {
            if !wait_gone(pid, Duration::from_secs(3)) {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                wait_gone(pid, Duration::from_secs(5));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The mount(8) helpers in /sbin
// ---------------------------------------------------------------------------

/// Remembers `/sbin/mount.fuse.ston-fs`, `/sbin/mount.ston-fs` (and whether /etc/ston-fs
/// existed) and puts them back as they were on drop: the test installs its own helpers where
/// mount(8) looks for them, but must not leave the machine changed.
pub struct SbinHelpers {
    /// Each helper path with its old bytes and mode, if it existed.
    saved: Vec<(PathBuf, Option<Saved>)>,
    etc_created: bool,
}

/// A file's bytes and permission bits.
type Saved = (Vec<u8>, u32);

impl SbinHelpers {
    pub const NAMES: [&'static str; 2] = ["mount.fuse.ston-fs", "mount.ston-fs"];

    pub fn save() -> SbinHelpers {
        let saved = Self::NAMES
            .iter()
            .map(|name| {
                let path = Path::new("/sbin").join(name);
                let old = fs::read(&path).ok().map(|bytes| {
                    let mode = fs::metadata(&path).map(|m| m.permissions().mode()).unwrap();
                    (bytes, mode)
                });
                (path, old)
            })
            .collect();
        SbinHelpers {
            saved,
            etc_created: !Path::new("/etc/ston-fs").exists(),
        }
    }
}

impl Drop for SbinHelpers {
    fn drop(&mut self) {
        for (path, old) in &self.saved {
            match old {
                Some((bytes, mode)) => {
                    let _ = fs::remove_file(path);
                    if fs::write(path, bytes).is_ok() {
                        let _ = fs::set_permissions(path, fs::Permissions::from_mode(*mode));
                    }
                }
                None => {
                    let _ = fs::remove_file(path);
                }
            }
        }
        if self.etc_created {
            let _ = fs::remove_dir("/etc/ston-fs"); // only if still empty
        }
    }
}
