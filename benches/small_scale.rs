//! End-to-end scale benchmark of small files (issue #18): an in-process HTTP/1.1 origin on
//! 127.0.0.1 serves `/d{i/1000}/f{i}.bin` (bytes, ETag and Last-Modified made from the
//! path, so nothing is stored), the real `ston-fs` binary mounts it, and T threads read
//! every file (open, read, close; every byte checked) in a cold pass (empty cache), a warm
//! pass (remount over the full cache, after `drop_caches`) and a hot pass (right after).
//! It reports daemon RSS per object (minus the RSS of a mount over an empty cache), `du`
//! and file count of the cache dir, remount time, origin requests per file, and the
//! passes against the same bytes as individual local files on the same disk; at 100,000
//! objects or fewer also httpdirfs and `rclone mount --vfs-cache-mode full` beside it.
//!
//! ```text
//! sudo cargo bench --bench small_scale                 # 1,000,000 x 1K, then 100,000 x 16K
//! SMALL_SCALE=100000 SMALL_SIZE=1K sudo -E cargo bench --bench small_scale   # one scale
//! ```
//! Root is needed for `/proc/sys/vm/drop_caches`. Environment: `SMALL_SCALE` (objects),
//! `SMALL_SIZE` (`1K` or `16K`; default 1K with SMALL_SCALE), `SMALL_THREADS` (16),
//! `SMALL_DIR` (/var/tmp/small-scale; caches, local copies and mount points, removed at
//! the end unless `SMALL_KEEP` is set), `SMALL_PEERS` (`httpdirfs,rclone`, `none`; default: both at ≤ 100,000
//! objects), `SMALL_PEER_BUDGET` (seconds a peer's pass may take, 150), `HTTPDIRFS`
//! (binary, default /usr/bin/httpdirfs), `STON_FS_BIN` (default: this build's ston-fs).
//! The table goes to stdout and to `benches/results/small_scale-<count>x<size>.md`.
//! A pass reports no rate when any read failed or returned other bytes; a peer's pass
//! stops at its budget and then reports the files it read (later passes read those).
//! `SMALL_STON_FS_OPTS` adds `-o` options to ston-fs's (e.g. `read_only=true`).
//! The ston-fs mounts use `-o ttl=86400`, so the warm pass is fresh however long the
//! cold one took; the peers use their defaults.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};

/// Files per origin directory (`/d{i/1000}/`).
const PER_DIR: u64 = 1000;
/// Longest a mount may take to appear (a remount of a full cache included).
const MOUNT_TIMEOUT: Duration = Duration::from_secs(900);
/// Longest a daemon may take to exit after its unmount.
const EXIT_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest a ston-fs or local pass may take.
const PASS_TIMEOUT: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------
// Content: everything about an object comes from its path
// ---------------------------------------------------------------------------

fn rel_path(i: u64) -> String {
    format!("d{}/f{i}.bin", i / PER_DIR)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The object's bytes: xorshift64* seeded by a hash of its path (no leading `/`).
fn fill_content(rel: &str, size: usize, out: &mut Vec<u8>) {
    out.clear();
    let mut x = fnv1a(rel.as_bytes()) | 1;
    while out.len() < size {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let word = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        let n = (size - out.len()).min(8);
        out.extend_from_slice(&word[..n]);
    }
}

fn etag(rel: &str, size: usize) -> String {
    format!("\"{:016x}-{size}\"", fnv1a(rel.as_bytes()))
}

fn last_modified(rel: &str) -> String {
    let secs = 1_700_000_000 + fnv1a(rel.as_bytes()) % 10_000_000;
    httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

// ---------------------------------------------------------------------------
// The origin
// ---------------------------------------------------------------------------

/// What the origin serves: `count` objects of `size` bytes.
#[derive(Clone, Copy)]
struct Site {
    count: u64,
    size: usize,
}

/// Requests the origin answered, by kind.
#[derive(Default)]
struct Counters {
    files: AtomicU64,
    listings: AtomicU64,
    other: AtomicU64,
}

impl Counters {
    fn total(&self) -> u64 {
        self.files.load(Ordering::Relaxed)
            + self.listings.load(Ordering::Relaxed)
            + self.other.load(Ordering::Relaxed)
    }
}

enum Target {
    Root,
    Dir(u64),
    DirWithoutSlash(u64),
    File(u64),
    Missing,
}

fn classify(path: &str, site: Site) -> Target {
    let dirs = site.count.div_ceil(PER_DIR);
    if path == "/" {
        return Target::Root;
    }
    let Some(rest) = path.strip_prefix("/d") else {
        return Target::Missing;
    };
    let (dir, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(k) = dir.parse::<u64>() else {
        return Target::Missing;
    };
    if k >= dirs || dir != k.to_string() {
        return Target::Missing;
    }
    if !path[2..].contains('/') {
        return Target::DirWithoutSlash(k);
    }
    if tail.is_empty() {
        return Target::Dir(k);
    }
    let file = tail.strip_prefix('f').and_then(|t| t.strip_suffix(".bin"));
    match file.and_then(|f| f.parse::<u64>().ok().filter(|i| f == i.to_string())) {
        Some(i) if i < site.count && i / PER_DIR == k => Target::File(i),
        _ => Target::Missing,
    }
}

fn html_index(links: impl Iterator<Item = String>) -> Bytes {
    let mut page = String::from("<html><head><title>Index</title></head><body><pre>\n");
    for link in links {
        let _ = writeln!(page, "<a href=\"{link}\">{link}</a>");
    }
    page.push_str("</pre></body></html>\n");
    Bytes::from(page)
}

fn listing(target: &Target, site: Site) -> Bytes {
    match *target {
        Target::Root => html_index((0..site.count.div_ceil(PER_DIR)).map(|k| format!("d{k}/"))),
        Target::Dir(k) => {
            let end = ((k + 1) * PER_DIR).min(site.count);
            html_index((k * PER_DIR..end).map(|i| format!("f{i}.bin")))
        }
        _ => Bytes::new(),
    }
}

/// A single `bytes=` range of a `len`-byte body: `None` without one (or one we ignore),
/// `Some(None)` when unsatisfiable, else the inclusive interval.
fn parse_range(header: &str, len: u64) -> Option<Option<(u64, u64)>> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        (len.saturating_sub(n), len.checked_sub(1)?)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() {
            u64::MAX
        } else {
            b.parse().ok()?
        };
        (start, end.min(len.saturating_sub(1)))
    };
    if start >= len || start > end {
        return Some(None);
    }
    Some(Some((start, end)))
}

fn response(
    status: StatusCode,
    headers: &[(&'static str, String)],
    body: Bytes,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    for (name, value) in headers {
        if let Ok(value) = hyper::header::HeaderValue::from_str(value) {
            resp.headers_mut().append(*name, value);
        }
    }
    resp
}

fn header<'a>(req: &'a Request<hyper::body::Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn answer_file(req: &Request<hyper::body::Incoming>, i: u64, site: Site) -> Response<Full<Bytes>> {
    let rel = rel_path(i);
    let (tag, modified) = (etag(&rel, site.size), last_modified(&rel));
    let mut headers = vec![("etag", tag.clone()), ("last-modified", modified.clone())];
    headers.push(("accept-ranges", "bytes".into()));
    headers.push(("content-type", "application/octet-stream".into()));
    let not_modified = match header(req, "if-none-match") {
        Some(inm) => inm.split(',').any(|t| t.trim() == tag || t.trim() == "*"),
        None => header(req, "if-modified-since") == Some(modified.as_str()),
    };
    if not_modified {
        return response(StatusCode::NOT_MODIFIED, &headers, Bytes::new());
    }
    let len = site.size as u64;
    let range = header(req, "range").and_then(|r| parse_range(r, len));
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, len),
        Some(None) => {
            headers.push(("content-range", format!("bytes */{len}")));
            return response(StatusCode::RANGE_NOT_SATISFIABLE, &headers, Bytes::new());
        }
        Some(Some((a, b))) => {
            headers.push(("content-range", format!("bytes {a}-{b}/{len}")));
            (StatusCode::PARTIAL_CONTENT, a, b + 1)
        }
    };
    headers.push(("content-length", (end - start).to_string()));
    if req.method() == hyper::Method::HEAD {
        return response(status, &headers, Bytes::new());
    }
    let mut body = Vec::with_capacity(site.size);
    fill_content(&rel, site.size, &mut body);
    let body = Bytes::from(body).slice(start as usize..end as usize);
    response(status, &headers, body)
}

fn answer(
    req: Request<hyper::body::Incoming>,
    site: Site,
    counters: &Counters,
) -> Response<Full<Bytes>> {
    let target = classify(req.uri().path(), site);
    match target {
        Target::File(i) => {
            counters.files.fetch_add(1, Ordering::Relaxed);
            answer_file(&req, i, site)
        }
        Target::Root | Target::Dir(_) => {
            counters.listings.fetch_add(1, Ordering::Relaxed);
            let page = listing(&target, site);
            let mut headers = vec![("content-type", "text/html".to_string())];
            headers.push(("content-length", page.len().to_string()));
            let body = if req.method() == hyper::Method::HEAD {
                Bytes::new()
            } else {
                page
            };
            response(StatusCode::OK, &headers, body)
        }
        Target::DirWithoutSlash(k) => {
            counters.other.fetch_add(1, Ordering::Relaxed);
            let headers = [
                ("location", format!("/d{k}/")),
                ("content-length", "0".into()),
            ];
            response(StatusCode::MOVED_PERMANENTLY, &headers, Bytes::new())
        }
        Target::Missing => {
            counters.other.fetch_add(1, Ordering::Relaxed);
            response(
                StatusCode::NOT_FOUND,
                &[("content-length", "0".into())],
                Bytes::new(),
            )
        }
    }
}

/// The origin: its own 2-thread runtime, serving until dropped.
struct Origin {
    _rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    counters: Arc<Counters>,
}

impl Origin {
    fn start(site: Site) -> Origin {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("origin")
            .enable_all()
            .build()
            .expect("origin runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind a loopback port for the origin");
        let addr = listener.local_addr().expect("origin address");
        let counters = Arc::new(Counters::default());
        rt.spawn(accept_loop(listener, site, counters.clone()));
        Origin {
            _rt: rt,
            addr,
            counters,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn requests(&self) -> u64 {
        self.counters.total()
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, site: Site, counters: Arc<Counters>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let counters = counters.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let resp = answer(req, site, &counters);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

// ---------------------------------------------------------------------------
// System helpers
// ---------------------------------------------------------------------------

fn load1() -> f64 {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(f64::NAN)
}

fn uptime() -> String {
    let out = Command::new("uptime").output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn rss_of(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:"));
    kib.and_then(|k| k.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |k| k * 1024)
}

/// Active `fuse_inode` objects in /proc/slabinfo: the inodes the kernel side of every
/// FUSE mount holds (system-wide: other jobs' mounts count too).
fn fuse_inodes() -> String {
    let slabs = fs::read_to_string("/proc/slabinfo").unwrap_or_default();
    let line = slabs.lines().find(|l| l.starts_with("fuse_inode "));
    let active = line.and_then(|l| l.split_whitespace().nth(1));
    active.unwrap_or("?").to_string()
}

fn drop_caches() {
    // SAFETY: sync() takes no arguments and cannot fail.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3")
        .expect("echo 3 > /proc/sys/vm/drop_caches (run as root)");
}

/// Allocated bytes (`du`) and regular-file count of a tree.
fn du_and_files(path: &Path) -> (u64, u64) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return (0, 0);
    };
    let mut total = (meta.blocks() * 512, meta.is_file() as u64);
    if meta.is_dir() {
        for entry in fs::read_dir(path).into_iter().flatten().flatten() {
            let (bytes, files) = du_and_files(&entry.path());
            total = (total.0 + bytes, total.1 + files);
        }
    }
    total
}

fn is_fuse_mounted(mountpoint: &Path) -> bool {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = mountpoint.as_os_str().as_bytes();
    text.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let fstype = fields.iter().skip_while(|f| **f != "-").nth(1);
        fields.get(4).is_some_and(|mp| mp.as_bytes() == want)
            && fstype.is_some_and(|t| t.starts_with("fuse"))
    })
}

fn umount(mountpoint: &Path) -> Result<(), std::io::Error> {
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_bytes()).expect("path without NUL");
    // SAFETY: umount2 reads a NUL-terminated path we own.
    match unsafe { libc::umount2(c.as_ptr(), 0) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

fn detach(mountpoint: &Path) {
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_bytes()).expect("path without NUL");
    for _ in 0..8 {
        if !is_fuse_mounted(mountpoint) {
            return;
        }
        // SAFETY: as in `umount`.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

// ---------------------------------------------------------------------------
// A FUSE daemon in the foreground
// ---------------------------------------------------------------------------

/// A running daemon (ston-fs or a peer); dropping it detaches the mount and kills it.
struct Daemon {
    child: Option<Child>,
    mountpoint: PathBuf,
    log: PathBuf,
    /// Spawn to the mount in /proc/self/mountinfo, and to the first stat of its root.
    mounted_after: Duration,
    ready_after: Duration,
}

impl Daemon {
    fn spawn(mut cmd: Command, mountpoint: &Path, log: &Path) -> Daemon {
        fs::create_dir_all(mountpoint).expect("create the mount point");
        let out = fs::File::create(log).expect("create the daemon log");
        let err = out.try_clone().expect("dup the log");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let start = Instant::now();
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let mut daemon = Daemon {
            child: Some(child),
            mountpoint: mountpoint.to_path_buf(),
            log: log.to_path_buf(),
            mounted_after: Duration::ZERO,
            ready_after: Duration::ZERO,
        };
        daemon.mounted_after = daemon.wait_mounted(start, &cmd);
        fs::metadata(mountpoint)
            .unwrap_or_else(|e| panic!("stat the mount root: {e}\n{}", daemon.log_tail()));
        daemon.ready_after = start.elapsed();
        daemon
    }

    fn wait_mounted(&mut self, start: Instant, cmd: &Command) -> Duration {
        while start.elapsed() < MOUNT_TIMEOUT {
            if is_fuse_mounted(&self.mountpoint) {
                return start.elapsed();
            }
            let child = self.child.as_mut().expect("daemon child");
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{cmd:?} exited with {status} before mounting:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!(
            "{cmd:?}: no mount within {MOUNT_TIMEOUT:?}:\n{}",
            self.log_tail()
        );
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    fn rss(&self) -> u64 {
        rss_of(self.pid())
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        text.get(start..).unwrap_or(&text).to_string()
    }

    /// Unmounts (retrying while busy), waits for the exit; returns how long that took.
    fn stop(mut self) -> Duration {
        let start = Instant::now();
        while let Err(e) = umount(&self.mountpoint) {
            let busy = e.raw_os_error() == Some(libc::EBUSY);
            assert!(
                busy && start.elapsed() < EXIT_TIMEOUT,
                "umount {}: {e}",
                self.mountpoint.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut child = self.child.take().expect("daemon child");
        while start.elapsed() < EXIT_TIMEOUT {
            if let Ok(Some(status)) = child.try_wait() {
                if !status.success() {
                    eprintln!("warning: daemon exited with {status}:\n{}", self.log_tail());
                }
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "daemon did not exit within {EXIT_TIMEOUT:?} of its unmount:\n{}",
            self.log_tail()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            detach(&self.mountpoint);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Read passes
// ---------------------------------------------------------------------------

/// One pass over files `0..count` with `threads` threads.
struct Pass {
    files: u64,
    seconds: f64,
    errors: u64,
    first_error: Option<String>,
    requests: u64,
    load: f64,
    timed_out: bool,
}

impl Pass {
    fn rate(&self) -> Option<f64> {
        (self.errors == 0 && self.files > 0).then(|| self.files as f64 / self.seconds)
    }

    fn describe(&self) -> String {
        match (self.rate(), &self.first_error) {
            (Some(rate), _) => format!("{rate:.0} files/s"),
            (None, Some(e)) => format!(
                "FAILED: {} of {} reads wrong ({e})",
                self.errors, self.files
            ),
            (None, None) => "no files read".to_string(),
        }
    }

    fn note(&self) -> String {
        let cut = if self.timed_out {
            ", stopped at the time budget"
        } else {
            ""
        };
        format!(
            "{} files in {:.1} s, load {:.2}{cut}",
            self.files, self.seconds, self.load
        )
    }

    fn per_file(&self) -> f64 {
        self.requests as f64 / self.files.max(1) as f64
    }
}

/// Reads `root/rel_path(i)` and checks it against the expected bytes.
fn check_file(
    root: &Path,
    i: u64,
    size: usize,
    got: &mut Vec<u8>,
    want: &mut Vec<u8>,
) -> Result<(), String> {
    let rel = rel_path(i);
    got.clear();
    let mut file = fs::File::open(root.join(&rel)).map_err(|e| format!("open {rel}: {e}"))?;
    file.read_to_end(got)
        .map_err(|e| format!("read {rel}: {e}"))?;
    drop(file);
    fill_content(&rel, size, want);
    if got != want {
        return Err(format!(
            "{rel}: {} bytes read, not the {size} expected bytes",
            got.len()
        ));
    }
    Ok(())
}

struct PassSpec<'a> {
    root: &'a Path,
    count: u64,
    size: usize,
    threads: usize,
    budget: Duration,
}

fn read_pass(spec: &PassSpec, origin: Option<&Origin>) -> Pass {
    let next = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let first_error = Mutex::new(None);
    let requests_before = origin.map_or(0, |o| o.requests());
    let load = load1();
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..spec.threads {
            scope.spawn(|| {
                let (mut got, mut want) = (Vec::new(), Vec::new());
                while start.elapsed() < spec.budget {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= spec.count {
                        break;
                    }
                    if let Err(e) = check_file(spec.root, i, spec.size, &mut got, &mut want) {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.lock().expect("error slot").get_or_insert(e);
                    }
                }
            });
        }
    });
    let seconds = start.elapsed().as_secs_f64();
    let files = next.load(Ordering::Relaxed).min(spec.count);
    Pass {
        files,
        seconds,
        errors: errors.load(Ordering::Relaxed),
        first_error: first_error.into_inner().expect("error slot"),
        requests: origin.map_or(0, |o| o.requests() - requests_before),
        load,
        timed_out: files < spec.count,
    }
}

// ---------------------------------------------------------------------------
// The results table
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Table {
    rows: Vec<[String; 4]>,
}

impl Table {
    fn row(&mut self, figure: &str, value: String, ratio: String, note: String) {
        println!("  {figure}: {value} | {ratio} | {note}");
        self.rows.push([figure.to_string(), value, ratio, note]);
    }

    fn pass(&mut self, figure: &str, pass: &Pass, baseline: Option<&Pass>) {
        let ratio = match (pass.rate(), baseline.and_then(Pass::rate)) {
            (Some(a), Some(b)) => format!("{:.2} of local", a / b),
            _ => String::new(),
        };
        self.row(figure, pass.describe(), ratio, pass.note());
    }

    fn markdown(&self) -> String {
        let mut out =
            String::from("| figure | value | ratio / baseline | notes |\n|---|---|---|---|\n");
        for [a, b, c, d] in &self.rows {
            let _ = writeln!(out, "| {a} | {b} | {c} | {d} |");
        }
        out
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn per_object(bytes: u64, base: u64, count: u64) -> String {
    format!(
        "{:.0} B/object",
        bytes.saturating_sub(base) as f64 / count as f64
    )
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

struct Config {
    threads: usize,
    dir: PathBuf,
    peers: Option<Vec<String>>,
    peer_budget: Duration,
    ston_fs: PathBuf,
    httpdirfs: PathBuf,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a valid value")),
        Err(_) => default,
    }
}

fn parse_size(text: &str) -> usize {
    match text
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        s if s.ends_with('K') => {
            s[..s.len() - 1]
                .parse::<usize>()
                .expect("SMALL_SIZE like 1K")
                * 1024
        }
        s => s.parse().expect("SMALL_SIZE like 1K or 16384"),
    }
}

fn config() -> Config {
    let peers = std::env::var("SMALL_PEERS").ok().map(|p| match p.as_str() {
        "none" | "" => Vec::new(),
        list => list.split(',').map(str::to_string).collect(),
    });
    let ston_fs =
        std::env::var("STON_FS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ston-fs").into());
    Config {
        threads: env_or("SMALL_THREADS", 16),
        dir: env_or("SMALL_DIR", PathBuf::from("/var/tmp/small-scale")),
        peers,
        peer_budget: Duration::from_secs(env_or("SMALL_PEER_BUDGET", 150)),
        ston_fs: ston_fs.into(),
        httpdirfs: env_or("HTTPDIRFS", PathBuf::from("/usr/bin/httpdirfs")),
    }
}

fn scales() -> Vec<Site> {
    match std::env::var("SMALL_SCALE") {
        Ok(count) => {
            let count = count.parse().expect("SMALL_SCALE is a number of objects");
            let size = parse_size(&std::env::var("SMALL_SIZE").unwrap_or_else(|_| "1K".into()));
            vec![Site { count, size }]
        }
        Err(_) => vec![
            Site {
                count: 1_000_000,
                size: 1024,
            },
            Site {
                count: 100_000,
                size: 16 * 1024,
            },
        ],
    }
}

fn label(site: Site) -> String {
    match site.size % 1024 {
        0 => format!("{}x{}K", site.count, site.size / 1024),
        _ => format!("{}x{}", site.count, site.size),
    }
}

// ---------------------------------------------------------------------------
// The scenarios
// ---------------------------------------------------------------------------

/// Everything one scale's scenarios share.
struct Run<'a> {
    cfg: &'a Config,
    site: Site,
    origin: Origin,
    work: PathBuf,
    table: Table,
}

const STON_FS_OPTS: &str = "ttl=86400";

impl Run<'_> {
    fn spec<'b>(&self, root: &'b Path, count: u64, budget: Duration) -> PassSpec<'b> {
        PassSpec {
            root,
            count,
            size: self.site.size,
            threads: self.cfg.threads,
            budget,
        }
    }

    fn ston_fs(&self, cache: &Path, name: &str) -> Daemon {
        fs::create_dir_all(cache).expect("create the cache dir");
        let mut opts = STON_FS_OPTS.to_string();
        if let Ok(extra) = std::env::var("SMALL_STON_FS_OPTS") {
            opts = format!("{opts},{extra}");
        }
        let mut cmd = Command::new(&self.cfg.ston_fs);
        cmd.arg("-f")
            .arg("--cache-dir")
            .arg(cache)
            .arg("-o")
            .arg(opts);
        let mountpoint = self.work.join(format!("mnt-{name}"));
        cmd.arg(self.origin.url()).arg(&mountpoint);
        Daemon::spawn(cmd, &mountpoint, &self.work.join(format!("{name}.log")))
    }

    /// RSS of a mount over an empty cache, no reads.
    fn empty_rss(&mut self) -> u64 {
        let daemon = self.ston_fs(&self.work.join("cache-empty"), "empty");
        std::thread::sleep(Duration::from_secs(1));
        let rss = daemon.rss();
        daemon.stop();
        self.table.row(
            "ston-fs RSS, mount over an empty cache",
            mib(rss),
            "baseline".into(),
            String::new(),
        );
        rss
    }

    fn local_passes(&mut self) -> (Pass, Pass, u64) {
        let local = self.cfg.dir.join(format!("local-{}", label(self.site)));
        write_local_copy(&local, self.site, self.cfg.threads);
        let (du, _) = du_and_files(&local);
        drop_caches();
        let spec = self.spec(&local, self.site.count, PASS_TIMEOUT);
        let warm = read_pass(&spec, None);
        let hot = read_pass(&spec, None);
        self.table
            .pass("local files, warm pass (after drop_caches)", &warm, None);
        self.table
            .pass("local files, hot pass (page cache)", &hot, None);
        let per = du as f64 / self.site.count as f64;
        self.table.row(
            "local files, du",
            format!("{per:.0} B/object"),
            "baseline".into(),
            mib(du),
        );
        (warm, hot, du)
    }

    fn ston_fs_passes(&mut self, base_rss: u64, local: &(Pass, Pass, u64)) {
        let count = self.site.count;
        let cache = self.work.join("cache-ston-fs");
        let daemon = self.ston_fs(&cache, "cold");
        let spec = self.spec(&daemon.mountpoint, count, PASS_TIMEOUT);
        let cold = read_pass(&spec, Some(&self.origin));
        self.table
            .pass("ston-fs cold pass (empty cache)", &cold, None);
        let per_file = format!("{:.4} requests/file", cold.per_file());
        self.table.row(
            "ston-fs cold pass, origin requests",
            cold.requests.to_string(),
            per_file,
            String::new(),
        );
        self.rss_rows(&daemon, "after the fill", base_rss);
        let unmount = daemon.stop();
        let (du, files) = du_and_files(&cache);
        let ratio = format!("{:.2} of local du", du as f64 / local.2 as f64);
        let note = format!("{}, unmount took {:.1} s", mib(du), unmount.as_secs_f64());
        self.table.row(
            "ston-fs cache du",
            format!("{:.0} B/object", du as f64 / count as f64),
            ratio,
            note,
        );
        self.table.row(
            "ston-fs files in the cache dir",
            files.to_string(),
            String::new(),
            String::new(),
        );
        self.remount_passes(&cache, base_rss, local);
    }

    /// The daemon's RSS now, and again once the kernel has dropped its caches (and so
    /// forgotten its inodes): what the daemon keeps per object on its own.
    fn rss_rows(&mut self, daemon: &Daemon, when: &str, base_rss: u64) {
        let count = self.site.count;
        let rss = daemon.rss();
        let per = per_object(rss, base_rss, count);
        self.table
            .row(&format!("ston-fs RSS {when}"), mib(rss), per, String::new());
        let before = fuse_inodes();
        drop_caches();
        std::thread::sleep(Duration::from_secs(2));
        let rss = daemon.rss();
        let per = per_object(rss, base_rss, count);
        let figure = format!("ston-fs RSS {when}, then drop_caches");
        let note = format!(
            "fuse_inode slab objects (system-wide): {before} before, {} after",
            fuse_inodes()
        );
        self.table.row(&figure, mib(rss), per, note);
    }

    fn remount_passes(&mut self, cache: &Path, base_rss: u64, local: &(Pass, Pass, u64)) {
        let count = self.site.count;
        drop_caches();
        let before = self.origin.requests();
        let daemon = self.ston_fs(cache, "warm");
        let note = format!(
            "in mountinfo after {:.2} s; {} origin requests; load {:.2}",
            daemon.mounted_after.as_secs_f64(),
            self.origin.requests() - before,
            load1()
        );
        let ready = format!("{:.2} s", daemon.ready_after.as_secs_f64());
        self.table.row(
            "ston-fs remount of the full cache: spawn to root stat",
            ready,
            String::new(),
            note,
        );
        std::thread::sleep(Duration::from_secs(1));
        let rss = daemon.rss();
        self.table.row(
            "ston-fs RSS after the remount, before reads",
            mib(rss),
            per_object(rss, base_rss, count),
            String::new(),
        );
        drop_caches();
        let spec = self.spec(&daemon.mountpoint, count, PASS_TIMEOUT);
        let warm = read_pass(&spec, Some(&self.origin));
        self.table.pass(
            "ston-fs warm pass (remount, drop_caches)",
            &warm,
            Some(&local.0),
        );
        self.table.row(
            "ston-fs warm pass, origin requests",
            warm.requests.to_string(),
            "must be 0".into(),
            String::new(),
        );
        let hot = read_pass(&spec, Some(&self.origin));
        self.table
            .pass("ston-fs hot pass (right after)", &hot, Some(&local.1));
        self.table.row(
            "ston-fs hot pass, origin requests",
            hot.requests.to_string(),
            String::new(),
            String::new(),
        );
        self.rss_rows(&daemon, "after the re-reads", base_rss);
        daemon.stop();
    }

    fn peer_command(&self, peer: &str, cache: &Path, mountpoint: &Path) -> Option<Command> {
        fs::create_dir_all(cache).expect("create a peer cache dir");
        match peer {
            "httpdirfs" => {
                let mut cmd = Command::new(&self.cfg.httpdirfs);
                cmd.args(["-f", "--cache", "--cache-location"]).arg(cache);
                cmd.arg(self.origin.url()).arg(mountpoint);
                Some(cmd)
            }
            "rclone" => {
                let mut cmd = Command::new("rclone");
                cmd.args(["mount", ":http:"]).arg(mountpoint);
                cmd.args([
                    "--http-url",
                    &self.origin.url(),
                    "--read-only",
                    "--vfs-cache-mode",
                    "full",
                ]);
                cmd.arg("--cache-dir")
                    .arg(cache)
                    .args(["--log-level", "NOTICE"]);
                Some(cmd)
            }
            _ => None,
        }
    }

    fn peer_daemon(&self, peer: &str, cache: &Path, phase: &str) -> Option<Daemon> {
        let mountpoint = self.work.join(format!("mnt-{peer}"));
        let cmd = self.peer_command(peer, cache, &mountpoint)?;
        let log = self.work.join(format!("{peer}-{phase}.log"));
        let spawn = std::panic::AssertUnwindSafe(|| Daemon::spawn(cmd, &mountpoint, &log));
        std::panic::catch_unwind(spawn).ok()
    }

    fn peer_passes(&mut self, peer: &str) {
        let cache = self.work.join(format!("cache-{peer}"));
        let Some(daemon) = self.peer_daemon(peer, &cache, "cold") else {
            let why = "could not be mounted (see the log in SMALL_DIR)".to_string();
            self.table.row(peer, "not run".into(), String::new(), why);
            return;
        };
        let budget = self.cfg.peer_budget;
        let cold = read_pass(
            &self.spec(&daemon.mountpoint, self.site.count, budget),
            Some(&self.origin),
        );
        let done = cold.files;
        self.peer_row(peer, "cold pass", &cold, daemon.rss());
        let hot = read_pass(
            &self.spec(&daemon.mountpoint, done, budget),
            Some(&self.origin),
        );
        self.peer_row(peer, "hot pass", &hot, daemon.rss());
        daemon.stop();
        drop_caches();
        let Some(daemon) = self.peer_daemon(peer, &cache, "warm") else {
            self.table.row(
                &format!("{peer} remount"),
                "failed".into(),
                String::new(),
                String::new(),
            );
            return;
        };
        let warm = read_pass(
            &self.spec(&daemon.mountpoint, done, budget),
            Some(&self.origin),
        );
        self.peer_row(
            peer,
            "warm pass (remount, drop_caches)",
            &warm,
            daemon.rss(),
        );
        daemon.stop();
        let (du, _) = du_and_files(&cache);
        let per = format!("{:.0} B/object", du as f64 / done.max(1) as f64);
        self.table
            .row(&format!("{peer} cache du"), per, String::new(), mib(du));
    }

    fn peer_row(&mut self, peer: &str, what: &str, pass: &Pass, rss: u64) {
        let figure = format!("{peer} {what}");
        let ratio = format!(
            "{} origin requests ({:.4}/file)",
            pass.requests,
            pass.per_file()
        );
        let note = format!("{}; RSS after: {}", pass.note(), mib(rss));
        self.table.row(&figure, pass.describe(), ratio, note);
    }
}

/// The same bytes as individual files under `dir`, written once (a marker says so).
fn write_local_copy(dir: &Path, site: Site, threads: usize) {
    let marker = dir.join(format!(".complete-{}", label(site)));
    if marker.exists() {
        return;
    }
    let started = Instant::now();
    for k in 0..site.count.div_ceil(PER_DIR) {
        fs::create_dir_all(dir.join(format!("d{k}"))).expect("create a local directory");
    }
    let next = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut bytes = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= site.count {
                        break;
                    }
                    let rel = rel_path(i);
                    fill_content(&rel, site.size, &mut bytes);
                    let mut file = fs::File::create(dir.join(&rel)).expect("create a local file");
                    file.write_all(&bytes).expect("write a local file");
                }
            });
        }
    });
    // SAFETY: sync() takes no arguments and cannot fail.
    unsafe { libc::sync() };
    fs::write(&marker, b"").expect("write the local copy's marker");
    println!(
        "  local copy written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The markdown report: what ran, the load before and after, and the table.
fn report(cfg: &Config, site: Site, peers: &[String], load_before: &str, table: &Table) -> String {
    let mut out = format!(
        "# small_scale: {} objects of {} bytes\n\n",
        site.count, site.size
    );
    let _ = write!(out, "{} threads; ston-fs `-o {STON_FS_OPTS}`", cfg.threads);
    let _ = writeln!(
        out,
        "; peers: {peers:?}; httpdirfs `{}`.\n",
        cfg.httpdirfs.display()
    );
    let _ = writeln!(
        out,
        "uptime before: `{load_before}`  \nuptime after: `{}`\n",
        uptime()
    );
    out.push_str(&table.markdown());
    out
}

fn run_scale(cfg: &Config, site: Site) {
    let work = cfg.dir.join(label(site));
    remove_work_dir(&work);
    fs::create_dir_all(&work).expect("create SMALL_DIR");
    let origin = Origin::start(site);
    println!(
        "## {} objects of {} bytes, {} threads, origin {}",
        site.count,
        site.size,
        cfg.threads,
        origin.url()
    );
    let load_before = uptime();
    let mut run = Run {
        cfg,
        site,
        origin,
        work: work.clone(),
        table: Table::default(),
    };
    let local = run.local_passes();
    let base_rss = run.empty_rss();
    run.ston_fs_passes(base_rss, &local);
    let default_peers = if site.count <= 100_000 {
        vec!["httpdirfs".into(), "rclone".into()]
    } else {
        Vec::new()
    };
    let peers = cfg.peers.clone().unwrap_or(default_peers);
    for peer in &peers {
        run.peer_passes(peer);
    }
    let report = report(cfg, site, &peers, &load_before, &run.table);
    println!("\n{report}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("benches/results/small_scale-{}.md", label(site)));
    fs::write(&out, &report).unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
    drop(run);
    if std::env::var_os("SMALL_KEEP").is_none() {
        remove_work_dir(&work);
        let local = cfg.dir.join(format!("local-{}", label(site)));
        fs::remove_dir_all(&local).unwrap_or_else(|e| eprintln!("remove {}: {e}", local.display()));
    }
}

/// Removes a scale's work dir, after detaching any mount left in it (never deletes
/// through a live mount).
fn remove_work_dir(work: &Path) {
    for entry in fs::read_dir(work).into_iter().flatten().flatten() {
        if entry.file_name().as_bytes().starts_with(b"mnt-") {
            detach(&entry.path());
            assert!(
                !is_fuse_mounted(&entry.path()),
                "{} is still mounted",
                entry.path().display()
            );
        }
    }
    if work.exists() {
        fs::remove_dir_all(work).unwrap_or_else(|e| eprintln!("remove {}: {e}", work.display()));
    }
}

fn main() {
    let cfg = config();
    for site in scales() {
        run_scale(&cfg, site);
    }
}
