//! Mount harness: runs the real `ston-fs` binary in the foreground against a
//! test origin, on a fresh mount point, and guarantees that no stale mount or
//! process survives the test (even when it panics).

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ston-fs");

/// How long to wait for a mount to show up / a child to exit.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(15);
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// A mount older than this gets its daemon SIGKILLed by a watchdog, so a hung
/// FUSE request fails the test (ENOTCONN) instead of hanging the suite.
pub const DEFAULT_WATCHDOG: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------
// mountinfo
// ---------------------------------------------------------------------------

fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = (oct[0] - b'0') * 64 + (oct[1] - b'0') * 8 + (oct[2] - b'0');
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// One line of /proc/self/mountinfo.
#[derive(Clone, Debug)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    pub options: String,
    pub fstype: String,
    pub source: String,
    pub super_options: String,
}

pub fn mountinfo() -> Vec<MountInfo> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < 6 || fields.len() < dash + 3 {
            continue;
        }
        out.push(MountInfo {
            mount_point: PathBuf::from(OsStr::from_bytes(&unescape_mountinfo(fields[4]))),
            options: fields[5].to_string(),
            fstype: fields[dash + 1].to_string(),
            source: fields[dash + 2].to_string(),
            super_options: fields.get(dash + 3).unwrap_or(&"").to_string(),
        });
    }
    out
}

/// Mount entries (possibly stacked) on exactly `path`.
pub fn mounts_at(path: &Path) -> Vec<MountInfo> {
    mountinfo()
        .into_iter()
        .filter(|m| m.mount_point == path)
        .collect()
}

pub fn is_mounted(path: &Path) -> bool {
    !mounts_at(path).is_empty()
}

fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("path without NUL")
}

/// `umount2(path, flags)`; Err(errno).
pub fn umount2(path: &Path, flags: libc::c_int) -> Result<(), i32> {
    let c = cpath(path);
    let r = unsafe { libc::umount2(c.as_ptr(), flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// Lazily detaches every mount stacked on `path` (bounded). Returns how many
/// were detached.
pub fn force_unmount_all(path: &Path) -> usize {
    let mut n = 0;
    for _ in 0..16 {
        if !is_mounted(path) {
            break;
        }
        if umount2(path, libc::MNT_DETACH).is_ok() {
            n += 1;
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    n
}

// ---------------------------------------------------------------------------
// Child process helpers
// ---------------------------------------------------------------------------

/// Waits (bounded) for `child` to exit; kills it when it has not. `None`: it was killed.
pub fn wait_or_kill(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let status = wait_timeout(child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = wait_timeout(child, Duration::from_secs(5));
    }
    status
}

/// Waits (bounded) for `child` to exit.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_lossy(path: &Path) -> String {
    let mut v = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut v);
    }
    String::from_utf8_lossy(&v).into_owned()
}

/// Last `max` bytes of a (log) string, on a char boundary.
pub fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Result of a bounded one-shot run of the binary.
#[derive(Debug)]
pub struct CliOutcome {
    /// `None` if it had to be killed after the timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CliOutcome {
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn describe(&self) -> String {
        format!(
            "status: {:?} (after {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.elapsed,
            tail(&self.stdout, 8000),
            tail(&self.stderr, 8000)
        )
    }
}

/// Runs `ston-fs ARGS...` to completion (killed after `timeout`). Output goes
/// to files (not pipes), so a daemonized grandchild keeping them open cannot
/// block us.
pub fn run_cli<I, S>(args: I, timeout: Duration) -> CliOutcome
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let dir = tempfile::Builder::new()
        .prefix("ston-fs-cli-")
        .tempdir()
        .expect("tempdir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let start = Instant::now();
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .env("RUST_BACKTRACE", "1")
        .spawn()
        .expect("spawn ston-fs");
    let status = wait_or_kill(&mut child, timeout);
    CliOutcome {
        status,
        stdout: read_lossy(&out_path),
        stderr: read_lossy(&err_path),
        elapsed: start.elapsed(),
    }
}

/// `ston-fs stats MOUNTPOINT --json`, parsed.
pub fn stats_json(mountpoint: &Path) -> serde_json::Value {
    let out = run_cli(
        [
            OsStr::new("stats"),
            mountpoint.as_os_str(),
            OsStr::new("--json"),
        ],
        Duration::from_secs(20),
    );
    assert!(out.success(), "ston-fs stats --json:\n{}", out.describe());
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stats --json is not JSON ({e}):\n{}", out.describe()))
}

/// How many calls of kind `op` (`read`, `open`, `lookup`, ...) the daemon has answered.
pub fn op_count(stats: &serde_json::Value, op: &str) -> u64 {
    stats["ops"]
        .as_array()
        .unwrap_or_else(|| panic!("stats has no ops[]: {stats:#}"))
        .iter()
        .find(|o| o["op"] == op)
        .and_then(|o| o["count"].as_u64())
        .unwrap_or_else(|| panic!("stats has no op {op:?}: {stats:#}"))
}

// ---------------------------------------------------------------------------
// Cache-dir inspection
// ---------------------------------------------------------------------------

fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &std::fs::Metadata)) {
    if let Ok(md) = std::fs::symlink_metadata(dir) {
        f(dir, &md);
        if !md.is_dir() {
            return;
        }
    } else {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        match std::fs::symlink_metadata(&p) {
            Ok(md) if md.is_dir() => walk(&p, f),
            Ok(md) => f(&p, &md),
            Err(_) => {} // vanished while walking
        }
    }
}

/// Allocated bytes (st_blocks * 512) of `dir` itself and everything below it.
pub fn allocated_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    walk(dir, &mut |_, md| total += md.blocks() * 512);
    total
}

/// Allocated bytes per path (dirs included) below and including `dir`.
pub fn allocated_by_path(dir: &Path) -> HashMap<PathBuf, u64> {
    let mut m = HashMap::new();
    walk(dir, &mut |p, md| {
        m.insert(p.to_path_buf(), md.blocks() * 512);
    });
    m
}

/// A conservative "allocated bytes at one instant" sample: two consecutive
/// walks, per-path minimum. A single walk is not atomic and can count a file
/// before it was trimmed and another after it grew; taking the per-path
/// minimum of two back-to-back walks removes that double counting, while a
/// cache that stays over its limit is still seen over it.
pub fn allocated_bytes_sample(dir: &Path) -> u64 {
    let a = allocated_by_path(dir);
    let b = allocated_by_path(dir);
    a.iter()
        .map(|(p, &x)| b.get(p).map_or(0, |&y| x.min(y)))
        .sum()
}

/// All regular files under `dir` whose name ends with `.<ext>`.
pub fn find_files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let suffix = format!(".{ext}");
    let mut v = Vec::new();
    walk(dir, &mut |p, md| {
        if md.is_file() && p.as_os_str().as_bytes().ends_with(suffix.as_bytes()) {
            v.push(p.to_path_buf());
        }
    });
    v.sort();
    v
}

/// `.data` files in the cache dir.
pub fn find_data_files(dir: &Path) -> Vec<PathBuf> {
    find_files_with_ext(dir, "data")
}

/// Human-readable listing of a cache dir (for assert messages).
pub fn describe_dir(dir: &Path) -> String {
    let mut v = Vec::new();
    walk(dir, &mut |p, md| {
        v.push(format!(
            "  {:>12} alloc {:>12} len  {}",
            md.blocks() * 512,
            md.len(),
            p.display()
        ))
    });
    v.sort();
    v.join("\n")
}

// ---------------------------------------------------------------------------
// Mount
// ---------------------------------------------------------------------------

enum CacheArg {
    /// `--cache-dir <tempdir>/cache`
    Private,
    Path(PathBuf),
    /// no `--cache-dir` argument at all (e.g. set in a config file)
    None,
}

/// Builder for `Mount`.
pub struct MountBuilder {
    /// `None`: no ORIGIN positional (the config file names the origins).
    origin: Option<String>,
    cache: CacheArg,
    opts: Vec<String>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    watchdog: Duration,
    /// RLIMIT_NOFILE (soft and hard) the daemon starts with.
    max_open_files: Option<u64>,
}

impl MountBuilder {
    /// Adds `key=value` (or a bare word) to the `-o` list.
    pub fn opt(mut self, o: impl Into<String>) -> Self {
        self.opts.push(o.into());
        self
    }

    /// Adds a raw argument (placed before ORIGIN MOUNTPOINT).
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    /// Uses this cache directory (must outlive remounts: the caller owns it).
    pub fn cache_dir(mut self, p: impl AsRef<Path>) -> Self {
        self.cache = CacheArg::Path(p.as_ref().to_path_buf());
        self
    }

    /// Passes no `--cache-dir` at all.
    pub fn no_cache_dir_arg(mut self) -> Self {
        self.cache = CacheArg::None;
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((k.as_ref().to_os_string(), v.as_ref().to_os_string()));
        self
    }

    /// Starts the daemon with at most `n` descriptors (soft and hard limit).
    pub fn max_open_files(mut self, n: u64) -> Self {
        self.max_open_files = Some(n);
        self
    }

    pub fn watchdog(mut self, d: Duration) -> Self {
        self.watchdog = d;
        self
    }

    /// Starts the daemon and waits until the mount is live; panics (with the
    /// daemon's output) if it isn't.
    pub fn mount(self) -> Mount {
        match self.try_mount() {
            Ok(m) => m,
            Err(e) => panic!("mount failed: {e}"),
        }
    }

    /// Starts the daemon and waits (bounded) until the mount shows up in
    /// /proc/self/mountinfo. Err carries the exit status and output.
    pub fn try_mount(self) -> Result<Mount, String> {
        let tmp = tempfile::Builder::new()
            .prefix("ston-fs-test-")
            .tempdir()
            .expect("tempdir");
        let mountpoint = tmp.path().join("mnt");
        std::fs::create_dir(&mountpoint).unwrap();
        let log_path = tmp.path().join("ston-fs.log");
        let cache_dir = match &self.cache {
            CacheArg::Private => {
                let p = tmp.path().join("cache");
                std::fs::create_dir(&p).unwrap();
                Some(p)
            }
            CacheArg::Path(p) => Some(p.clone()),
            CacheArg::None => None,
        };

        let mut cmd = Command::new(BIN);
        cmd.arg("-f");
        if let Some(c) = &cache_dir {
            cmd.arg("--cache-dir").arg(c);
        }
        if !self.opts.is_empty() {
            cmd.arg("-o").arg(self.opts.join(","));
        }
        cmd.args(&self.args);
        if let Some(origin) = &self.origin {
            cmd.arg(origin);
        }
        cmd.arg(&mountpoint);
        let log = File::create(&log_path).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env("RUST_BACKTRACE", "1");
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if let Some(n) = self.max_open_files {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit is async-signal-safe and reads a struct copied into the child.
            unsafe {
                cmd.pre_exec(move || match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                });
            }
        }
        let cmdline = format!("{cmd:?}");
        let child = cmd.spawn().map_err(|e| format!("spawn {BIN}: {e}"))?;
        let pid = child.id();

        let (wd_tx, wd_rx) = mpsc::channel::<()>();
        let wd_limit = self.watchdog;
        let wd_mp = mountpoint.clone();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = wd_rx.recv_timeout(wd_limit) {
                eprintln!(
                    "WATCHDOG: mount {} older than {:?}; SIGKILL ston-fs pid {}",
                    wd_mp.display(),
                    wd_limit,
                    pid
                );
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        });

        let mut m = Mount {
            child: Some(child),
            mountpoint,
            cache_dir,
            log_path,
            cmdline,
            watchdog: Some(wd_tx),
            tmp: Some(tmp),
        };

        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if mounts_at(&m.mountpoint)
                .iter()
                .any(|e| e.fstype.starts_with("fuse"))
            {
                return Ok(m);
            }
            if let Ok(Some(st)) = m.child.as_mut().unwrap().try_wait() {
                // It may have mounted and exited in between: re-check.
                let msg = format!(
                    "ston-fs exited with {st} before mounting\ncommand: {}\n--- output ---\n{}",
                    m.cmdline,
                    tail(&m.log(), 16000)
                );
                return Err(msg);
            }
            if Instant::now() >= deadline {
                let msg = format!(
                    "mount did not appear within {:?}\ncommand: {}\n--- output ---\n{}",
                    MOUNT_TIMEOUT,
                    m.cmdline,
                    tail(&m.log(), 16000)
                );
                return Err(msg); // Drop kills the child
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A live ston-fs mount. Dropping it detaches the mount and kills the daemon.
pub struct Mount {
    child: Option<Child>,
    mountpoint: PathBuf,
    cache_dir: Option<PathBuf>,
    log_path: PathBuf,
    cmdline: String,
    watchdog: Option<mpsc::Sender<()>>,
    // Dropped last (after Drop::drop has unmounted).
    tmp: Option<tempfile::TempDir>,
}

impl Mount {
    /// Builder for a mount of `origin_url` (e.g. `origin.url()`).
    pub fn builder(origin_url: impl Into<String>) -> MountBuilder {
        MountBuilder {
            origin: Some(origin_url.into()),
            cache: CacheArg::Private,
            opts: Vec::new(),
            args: Vec::new(),
            envs: Vec::new(),
            watchdog: DEFAULT_WATCHDOG,
            max_open_files: None,
        }
    }

    /// Builder for `ston-fs -f --config FILE MOUNTPOINT`: the file names the origins (and
    /// usually the cache dir, so no `--cache-dir` is passed).
    pub fn with_config(file: impl AsRef<Path>) -> MountBuilder {
        let mut builder = Self::builder("").no_cache_dir_arg();
        builder.origin = None;
        builder.arg("--config").arg(file.as_ref())
    }

    /// Mount with default options and a private cache dir.
    pub fn new(origin_url: impl Into<String>) -> Mount {
        Self::builder(origin_url).mount()
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// `mountpoint/rel` (a leading `/` in `rel` is ignored).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel.trim_start_matches('/'))
    }

    /// The `--cache-dir` passed (None with `no_cache_dir_arg`).
    pub fn cache_dir(&self) -> &Path {
        self.cache_dir
            .as_deref()
            .expect("mount was started without --cache-dir")
    }

    /// Scratch dir of this mount (holds mnt/, the log and the private cache).
    pub fn tmp_dir(&self) -> &Path {
        self.tmp.as_ref().unwrap().path()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Daemon stdout+stderr so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.mountpoint)
    }

    /// Whether the daemon process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn stop_watchdog(&mut self) {
        if let Some(tx) = self.watchdog.take() {
            let _ = tx.send(());
        }
    }

    /// Clean unmount: `umount2(mountpoint, 0)` (retrying while busy), then
    /// waits for the daemon to exit and asserts exit status 0. Returns the
    /// daemon's output.
    pub fn unmount(mut self) -> String {
        self.stop_watchdog();
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            match umount2(&self.mountpoint, 0) {
                Ok(()) => break,
                Err(e) if e == libc::EBUSY && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!(
                    "umount {} failed: {}\n--- ston-fs output ---\n{}",
                    self.mountpoint.display(),
                    std::io::Error::from_raw_os_error(e),
                    tail(&self.log(), 16000)
                ),
            }
        }
        let mut child = self.child.take().expect("daemon child");
        let status = wait_timeout(&mut child, EXIT_TIMEOUT);
        let log = self.log();
        match status {
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ston-fs did not exit within {:?} after umount\n--- output ---\n{}",
                    EXIT_TIMEOUT,
                    tail(&log, 16000)
                );
            }
            Some(st) => assert!(
                st.success(),
                "ston-fs exited with {st} after umount (expected 0)\n--- output ---\n{}",
                tail(&log, 16000)
            ),
        }
        log
    }

    /// SIGKILLs the daemon and reaps it. The (now dead) mount stays until
    /// drop or `detach()`.
    pub fn kill9(&mut self) -> Option<ExitStatus> {
        self.stop_watchdog();
        let mut child = self.child.take()?;
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
        }
        wait_timeout(&mut child, EXIT_TIMEOUT)
    }

    /// Lazily detaches the mount(s) on the mount point.
    pub fn detach(&self) -> usize {
        force_unmount_all(&self.mountpoint)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop_watchdog();
        let panicking = std::thread::panicking();
        if let Some(mut child) = self.child.take() {
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            force_unmount_all(&self.mountpoint);
            if !exited && wait_timeout(&mut child, Duration::from_secs(3)).is_none() {
                let _ = child.kill();
                let _ = wait_timeout(&mut child, Duration::from_secs(5));
            }
        }
        force_unmount_all(&self.mountpoint);
        if panicking {
            eprintln!(
                "--- ston-fs output for {} ---\ncommand: {}\n{}\n--- end of ston-fs output ---",
                self.mountpoint.display(),
                self.cmdline,
                tail(&self.log(), 32000)
            );
        }
        if is_mounted(&self.mountpoint) {
            // Never recurse into a live mount while deleting the tempdir.
            eprintln!(
                "WARNING: {} still mounted; leaking its tempdir",
                self.mountpoint.display()
            );
            if let Some(t) = self.tmp.take() {
                let _ = t.keep();
            }
        }
    }
}
