//! Hardening regressions: every test here names the issue item it guards (A1..C18).
//!
//! - A: answers that lie or stall (claimed sizes, encodings, long bodies, deadlines, trickles,
//!   hedging, origins without validators, answers without a length, a self-signed origin).
//! - B: the cache on disk (purge keeps directory records, the hard cap with passthrough,
//!   stale control sockets, symlinked data files, private logs, header files).
//! - C: operations (listings on demand, statistics, user names, warm, crashed mounts, syslog,
//!   CLI errors, `ro`, non-empty mount points, the demo).
//!
//! Every test mounts the real binary (or runs the CLI) against origins on loopback only, and
//! asserts real bytes, errnos, files or output. Every wait is bounded in count and time; the only
//! timing asserts are generous upper bounds on how long a configured *timeout* takes.

mod common;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::mount::{
    find_files_with_ext, force_unmount_all, is_mounted, mounts_at, run_cli, stats_json, tail,
    umount2, wait_or_kill, wait_timeout, CliOutcome, Mount, BIN,
};
use common::mount_origin;
use common::nginx::{which, Autoindex, Nginx};
use common::origin::{parse_range, pattern, Fault, FaultAction, Gate, Origin, RangeSpec, Stall};
use common::process::{memory_bytes, ston_fs_pids_with_arg, wait_gone, workers};
use common::{assert_bytes_eq, assert_file_matches, drop_page_cache, errno, no_kernel_readahead};
use common::{bounded, pread_full, KIB, MIB};

/// Longest any single file-system call may take before the test calls it a hang.
const CALL_BOUND: Duration = Duration::from_secs(30);
/// Bound for a whole-file read that may go through retries.
const READ_BOUND: Duration = Duration::from_secs(90);
/// Bound for one run of the CLI.
const CLI_BOUND: Duration = Duration::from_secs(30);
const EIO: i32 = libc::EIO;

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// Like `bounded`, and also returns how long `f` took.
#[track_caller]
fn timed<T: Send + 'static>(
    what: &str,
    bound: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> (T, Duration) {
    let start = Instant::now();
    let v = bounded(what, bound, f);
    (v, start.elapsed())
}

fn stat(path: &Path) -> std::io::Result<fs::Metadata> {
    let p = path.to_path_buf();
    bounded(&format!("stat {}", path.display()), CALL_BOUND, move || {
        fs::metadata(p)
    })
}

fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let p = path.to_path_buf();
    bounded(&format!("read {}", path.display()), READ_BOUND, move || {
        fs::read(p)
    })
}

fn open(path: &Path) -> File {
    let p = path.to_path_buf();
    bounded(&format!("open {}", path.display()), CALL_BOUND, move || {
        File::open(p)
    })
    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn pread(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let f = file.try_clone().expect("dup");
    bounded(&format!("pread({offset}, {len})"), CALL_BOUND, move || {
        pread_full(&f, offset, len)
    })
}

/// Reads `file` from `offset` to EOF in 64 KiB preads: the bytes read before any error, and
/// that error's errno.
fn read_from(file: &File, offset: u64) -> (Vec<u8>, Option<i32>) {
    let f = file.try_clone().expect("dup");
    bounded("read to EOF", READ_BOUND, move || {
        use std::os::unix::fs::FileExt;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * KIB];
        for _ in 0..100_000 {
            match f.read_at(&mut buf, offset + out.len() as u64) {
                Ok(0) => return (out, None),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return (out, Some(e.raw_os_error().unwrap_or(-1))),
            }
        }
        (out, None)
    })
}

/// Reads `path` whole: the bytes read before any error, and that error's errno.
fn read_outcome(path: &Path) -> (Vec<u8>, Option<i32>) {
    let p = path.to_path_buf();
    let f = bounded("open", CALL_BOUND, move || File::open(p));
    match f {
        Ok(f) => read_from(&f, 0),
        Err(e) => (Vec::new(), Some(e.raw_os_error().unwrap_or(-1))),
    }
}

/// Sorted names in a directory (bounded).
fn names(dir: &Path) -> Vec<String> {
    let d = dir.to_path_buf();
    let mut v = bounded(
        &format!("readdir {}", dir.display()),
        CALL_BOUND,
        move || {
            fs::read_dir(&d)
                .unwrap_or_else(|e| panic!("readdir {}: {e}", d.display()))
                .map(|e| {
                    e.expect("dir entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect::<Vec<_>>()
        },
    );
    v.sort();
    v
}

fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir")
}

/// A loopback port nobody listens on (bound, then released).
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().unwrap().port()
}

fn os<S: AsRef<OsStr>>(items: &[S]) -> Vec<OsString> {
    items.iter().map(|s| s.as_ref().to_os_string()).collect()
}

fn num(stats: &serde_json::Value, key: &str) -> u64 {
    stats[key]
        .as_u64()
        .unwrap_or_else(|| panic!("stats --json has no number `{key}`:\n{stats:#}"))
}

fn float(stats: &serde_json::Value, key: &str) -> f64 {
    stats[key]
        .as_f64()
        .unwrap_or_else(|| panic!("stats --json has no number `{key}`:\n{stats:#}"))
}

/// `ston-fs <cmd> PATH...` on a live mount; asserts success.
#[track_caller]
fn control(cmd: &str, paths: &[&Path]) -> CliOutcome {
    let mut args = vec![OsString::from(cmd)];
    args.extend(paths.iter().map(|p| p.as_os_str().to_os_string()));
    let out = run_cli(&args, CLI_BOUND);
    assert!(
        out.success(),
        "ston-fs {cmd} {paths:?}:\n{}",
        out.describe()
    );
    out
}

/// `dir/*` as the control commands take it.
fn star(dir: &Path) -> PathBuf {
    dir.join("*")
}

fn log_lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

// ---------------------------------------------------------------------------
// Running the binary: daemonized mounts and one-shot runs with an environment
// ---------------------------------------------------------------------------

/// Like `run_cli`, with extra environment variables.
fn run_bin(args: &[OsString], envs: &[(&str, &OsStr)], timeout: Duration) -> CliOutcome {
    let dir = tempdir("ston-fs-hard-cli-");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let start = Instant::now();
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .env("RUST_BACKTRACE", "1");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn ston-fs");
    let status = wait_or_kill(&mut child, timeout);
    let read = |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
    CliOutcome {
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
        elapsed: start.elapsed(),
    }
}

/// Guard for mounts made by daemonized runs of the binary (or attempts that should not mount
/// at all): unmounts and stops every ston-fs process serving `mountpoint`, by pid.
struct Daemon {
    mountpoint: PathBuf,
    pids: Vec<i32>,
}

impl Daemon {
    fn attach(mountpoint: &Path) -> Daemon {
        Daemon {
            mountpoint: mountpoint.to_path_buf(),
            pids: ston_fs_pids_with_arg(mountpoint),
        }
    }

    /// The process that serves the mount: the supervisor's worker (`--worker`).
    fn pid(&self) -> i32 {
        let workers = workers(&self.pids);
        assert_eq!(
            (self.pids.len(), workers.len()),
            (2, 1),
            "one supervisor and one worker serve {}: {:?}",
            self.mountpoint.display(),
            self.pids
        );
        workers[0]
    }

    /// Clean unmount; asserts the daemon exits.
    fn unmount(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match umount2(&self.mountpoint, 0) {
                Ok(()) => break,
                Err(e) if e == libc::EBUSY && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!(
                    "umount {}: {}",
                    self.mountpoint.display(),
                    std::io::Error::from_raw_os_error(e)
                ),
            }
        }
        for pid in std::mem::take(&mut self.pids) {
            assert!(
                wait_gone(pid, Duration::from_secs(15)),
                "ston-fs {pid} still running after umount"
            );
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if is_mounted(&self.mountpoint) && umount2(&self.mountpoint, 0).is_err() {
            force_unmount_all(&self.mountpoint);
        }
        let mut pids = std::mem::take(&mut self.pids);
        pids.extend(ston_fs_pids_with_arg(&self.mountpoint));
        for pid in pids {
            if !wait_gone(pid, Duration::from_secs(10)) {
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
                let _ = wait_gone(pid, Duration::from_secs(5));
            }
        }
        force_unmount_all(&self.mountpoint);
    }
}

/// `ston-fs [--cache-dir C] [-o OPTS] ORIGIN MOUNTPOINT` without `-f` (it daemonizes).
fn daemon_mount(
    origin: &str,
    mountpoint: &Path,
    cache_dir: &Path,
    opts: &[&str],
    envs: &[(&str, &OsStr)],
) -> (CliOutcome, Daemon) {
    let mut args = os(&["--cache-dir"]);
    args.push(cache_dir.as_os_str().to_os_string());
    if !opts.is_empty() {
        args.push("-o".into());
        args.push(opts.join(",").into());
    }
    args.push(origin.into());
    args.push(mountpoint.as_os_str().to_os_string());
    let out = run_bin(&args, envs, CLI_BOUND);
    let daemon = Daemon::attach(mountpoint);
    (out, daemon)
}

fn is_fuse_mounted(path: &Path) -> bool {
    mounts_at(path).iter().any(|m| m.fstype.starts_with("fuse"))
}

/// Runs the binary with `args` (no `-f`), expecting a refusal: non-zero exit, nothing mounted
/// on `mountpoint`. Returns stderr.
#[track_caller]
fn refused(args: &[OsString], mountpoint: &Path) -> String {
    let out = run_bin(args, &[], CLI_BOUND);
    let _guard = Daemon::attach(mountpoint);
    assert!(
        !out.timed_out() && !out.success(),
        "expected an error from ston-fs {args:?}:\n{}",
        out.describe()
    );
    assert!(
        !is_mounted(mountpoint),
        "ston-fs {args:?} mounted something:\n{}",
        out.describe()
    );
    out.stderr
}

// ---------------------------------------------------------------------------
// .meta files (src/store.rs format)
// ---------------------------------------------------------------------------

fn parse_meta(bytes: &[u8]) -> (serde_json::Value, Vec<u8>) {
    assert!(
        bytes.len() >= 16 && &bytes[..8] == b"STONFS01",
        "not a .meta file"
    );
    let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let json = &bytes[16..16 + len];
    (
        serde_json::from_slice(json).expect("meta json"),
        bytes[16 + len..].to_vec(),
    )
}

fn encode_meta(json: &serde_json::Value, records: &[u8]) -> Vec<u8> {
    let j = serde_json::to_vec(json).unwrap();
    let mut out = Vec::new();
    out.extend_from_slice(b"STONFS01");
    out.extend_from_slice(&(j.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&j).to_le_bytes());
    out.extend_from_slice(&j);
    out.extend_from_slice(records);
    out
}

/// Object path (as the origin sees it) -> its .meta file, for every object in `cache`.
fn metas_by_path(cache: &Path) -> HashMap<String, PathBuf> {
    find_files_with_ext(cache, "meta")
        .into_iter()
        .filter_map(|p| {
            let bytes = fs::read(&p).ok()?;
            if bytes.len() < 16 || &bytes[..8] != b"STONFS01" {
                return None;
            }
            let (json, _) = parse_meta(&bytes);
            Some((json["path"].as_str()?.to_string(), p))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// A raw HTTP/1.x server (optionally over TLS) for answers the hyper origin cannot give:
// chunked and close-delimited bodies, trickles, a self-signed CA:TRUE certificate.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Style {
    /// 206 for a single Range, 200 otherwise, with Content-Length.
    Ranged,
    /// Like `Ranged`, but the body trickles at 100 bytes/s.
    Trickle,
    /// `Ranged` for requests from byte 0 (the probe), `Trickle` for the rest.
    TrickleAfterProbe,
    /// 200 with the whole body, `Transfer-Encoding: chunked`, whatever the Range.
    Chunked,
    /// `HTTP/1.0 200` with the whole body and no length: it ends when the connection closes.
    Http10Close,
}

#[derive(Clone, Debug)]
struct RawRequest {
    path: String,
    headers: Vec<(String, String)>,
}

impl RawRequest {
    fn header(&self, name: &str) -> Option<&str> {
        common::header_value(&self.headers, name)
    }
}

type RawFiles = Arc<HashMap<String, (Bytes, Style)>>;

struct RawServer {
    addr: SocketAddr,
    tls: bool,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<RawRequest>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl RawServer {
    fn start(
        files: &[(&str, Bytes, Style)],
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    ) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind raw server");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let files: RawFiles = Arc::new(
            files
                .iter()
                .map(|(p, d, s)| (p.to_string(), (d.clone(), *s)))
                .collect(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let is_tls = tls.is_some();
        let (stop2, log2) = (stop.clone(), log.clone());
        let accept = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(900);
            while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
                let Ok((sock, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = sock.set_nonblocking(false);
                let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = sock.set_write_timeout(Some(Duration::from_secs(10)));
                let _ = sock.set_nodelay(true);
                let (files, log, stop, tls) =
                    (files.clone(), log2.clone(), stop2.clone(), tls.clone());
                std::thread::spawn(move || match tls {
                    Some(config) => {
                        let Ok(conn) = tokio_rustls::rustls::ServerConnection::new(config) else {
                            return;
                        };
                        let mut stream = tokio_rustls::rustls::StreamOwned::new(conn, sock);
                        serve_raw(&mut stream, &files, &log, &stop);
                        stream.conn.send_close_notify();
                        let _ = stream.flush();
                    }
                    None => {
                        let mut sock = sock;
                        serve_raw(&mut sock, &files, &log, &stop);
                    }
                });
            }
        });
        RawServer {
            addr,
            tls: is_tls,
            stop,
            log,
            accept: Some(accept),
        }
    }

    fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/", self.addr)
    }

    fn requests(&self) -> Vec<RawRequest> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

const RAW_LAST_MODIFIED: &str = "Tue, 14 Nov 2023 22:13:20 GMT";

/// One request, one answer, then the connection closes.
fn serve_raw<S: Read + Write>(
    s: &mut S,
    files: &RawFiles,
    log: &Mutex<Vec<RawRequest>>,
    stop: &AtomicBool,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > 64 * KIB {
            return;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let target = request_line.split(' ').nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/").to_string();
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let req = RawRequest { path, headers };
    log.lock().unwrap().push(req.clone());
    let _ = answer_raw(s, &req, files, stop);
    let _ = s.flush();
}

fn answer_raw<S: Write>(
    s: &mut S,
    req: &RawRequest,
    files: &RawFiles,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let Some((data, style)) = files.get(&req.path) else {
        return s.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    let len = data.len() as u64;
    let validators = format!(
        "ETag: \"raw-{len:x}-{:08x}\"\r\nLast-Modified: {RAW_LAST_MODIFIED}\r\nContent-Type: application/octet-stream\r\n",
        crc32c::crc32c(data)
    );
    match style {
        Style::Chunked => {
            s.write_all(
                format!("HTTP/1.1 200 OK\r\n{validators}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )?;
            for piece in data.chunks(16 * KIB) {
                s.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
                s.write_all(piece)?;
                s.write_all(b"\r\n")?;
            }
            s.write_all(b"0\r\n\r\n")
        }
        Style::Http10Close => {
            s.write_all(format!("HTTP/1.0 200 OK\r\n{validators}\r\n").as_bytes())?;
            s.write_all(data)
        }
        Style::Ranged | Style::Trickle | Style::TrickleAfterProbe => {
            let spec = req
                .header("range")
                .map(|r| parse_range(r, len))
                .unwrap_or(RangeSpec::Ignore);
            let (status, extra, body, start) = match spec {
                RangeSpec::Satisfiable(a, b) => (
                    "206 Partial Content",
                    format!("Content-Range: bytes {a}-{b}/{len}\r\n"),
                    data.slice(a as usize..=b as usize),
                    a,
                ),
                RangeSpec::Unsatisfiable => (
                    "416 Range Not Satisfiable",
                    format!("Content-Range: bytes */{len}\r\n"),
                    Bytes::new(),
                    0,
                ),
                RangeSpec::Ignore => ("200 OK", String::new(), data.clone(), 0),
            };
            let trickle =
                *style == Style::Trickle || (*style == Style::TrickleAfterProbe && start != 0);
            s.write_all(
                format!(
                    "HTTP/1.1 {status}\r\n{validators}{extra}Accept-Ranges: bytes\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )?;
            if !trickle {
                return s.write_all(&body);
            }
            // 10 bytes every 100 ms, for at most 60 s: far below any sane low-speed limit.
            for piece in body.chunks(10).take(600) {
                if stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
                s.write_all(piece)?;
                s.flush()?;
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        }
    }
}

// ===========================================================================
// A1. A claimed size cannot kill the daemon
// ===========================================================================

/// Replaces the total of every 206's Content-Range on `path` with `total`.
fn claim_total(path: &str, total: u64) -> Fault {
    Fault::path(
        path,
        FaultAction::Rewrite(Arc::new(move |_req, ans| {
            if ans.status != 206 {
                return;
            }
            let cr = ans.header("content-range").unwrap_or_default().to_string();
            let range = cr
                .strip_prefix("bytes ")
                .and_then(|r| r.split_once('/'))
                .map(|(r, _)| r.to_string())
                .unwrap_or_else(|| "0-0".into());
            ans.set_header("content-range", format!("bytes {range}/{total}"));
        })),
    )
}

#[test]
fn a1_claimed_size_cannot_kill_the_daemon() {
    let Some(origin) = mount_origin() else { return };
    let ok = origin.put("/ok.bin", pattern(101, 300 * KIB)).data;
    origin.put("/claim.bin", pattern(102, MIB));
    origin.add_fault(Fault::path(
        "/claim.bin",
        FaultAction::Rewrite(Arc::new(|_req, ans| {
            if ans.status == 206 {
                ans.set_header("content-range", "bytes 0-1048575/9223372036854775807");
            }
        })),
    ));
    let mut m = Mount::builder(origin.url())
        .opt("connect_timeout=1,receive_timeout=2")
        .mount();

    for attempt in 0..2 {
        let r = stat(&m.path("claim.bin"));
        assert_eq!(
            errno(&r),
            Some(EIO),
            "stat #{attempt} of an object claiming 2^63-1 bytes: {r:?}\n{}",
            tail(&m.log(), 4000)
        );
        let r = read_file(&m.path("claim.bin"));
        assert_eq!(
            errno(&r),
            Some(EIO),
            "read #{attempt}: {:?}",
            r.map(|v| v.len())
        );
    }
    assert!(
        m.is_running(),
        "the daemon died on a claimed size:\n{}",
        tail(&m.log(), 8000)
    );
    assert_file_matches(&m.path("ok.bin"), &ok, 64 * KIB);
    assert!(m.is_running());
}

#[test]
fn a1_max_object_size_bounds_claims_and_a_sparse_object_costs_no_memory() {
    let Some(origin) = mount_origin() else { return };
    let head = pattern(111, MIB);
    origin.put("/two-gib.bin", pattern(112, MIB));
    origin.put("/half-gib.bin", head.clone());
    origin.add_fault(claim_total("/two-gib.bin", 2 << 30));
    origin.add_fault(claim_total("/half-gib.bin", 512 << 20));
    let mut m = Mount::builder(origin.url())
        .opt("max_object_size=1G,readahead_max=0,connect_timeout=1,receive_timeout=2")
        .mount();
    let pid = m.pid().unwrap();

    let r = stat(&m.path("two-gib.bin"));
    assert_eq!(
        errno(&r),
        Some(EIO),
        "2 GiB claimed, max_object_size=1G: {r:?}"
    );

    let md = stat(&m.path("half-gib.bin")).expect("stat of a claimed 512 MiB object");
    assert_eq!(md.len(), 512 << 20, "claimed size");
    let f = open(&m.path("half-gib.bin"));
    no_kernel_readahead(&f);
    let got = pread(&f, 0, MIB).expect("first block of the 512 MiB object");
    assert_bytes_eq(&got, &head, "first block");
    let got = pread(&f, 12345, 4000).expect("pread inside the first block");
    assert_bytes_eq(&got, &head[12345..16345], "pread inside the first block");
    drop(f);

    let rss = memory_bytes(pid, "VmRSS");
    assert!(
        rss < 200 * MIB as u64,
        "daemon RSS {} MiB after a claimed 512 MiB object",
        rss >> 20
    );
    assert!(m.is_running(), "daemon died:\n{}", tail(&m.log(), 8000));
}

#[test]
fn a1_damaged_or_huge_meta_files_are_dropped_and_the_mount_goes_ahead() {
    let Some(origin) = mount_origin() else { return };
    let keep = pattern(121, 700 * KIB);
    let corrupt = pattern(122, 700 * KIB);
    let huge = pattern(123, 700 * KIB);
    origin.put("/keep.bin", keep.clone());
    origin.put("/corrupt.bin", corrupt.clone());
    origin.put("/huge.bin", huge.clone());
    let tmp = tempdir("ston-fs-hard-a1-");
    let cache = tmp.path().join("cache");

    let m = Mount::builder(origin.url()).cache_dir(&cache).mount();
    for (name, data) in [
        ("keep.bin", &keep),
        ("corrupt.bin", &corrupt),
        ("huge.bin", &huge),
    ] {
        assert_file_matches(&m.path(name), data, 64 * KIB);
    }
    m.unmount();

    let metas = metas_by_path(&cache);
    let corrupt_meta = metas
        .get("/corrupt.bin")
        .unwrap_or_else(|| panic!("no .meta for /corrupt.bin: {metas:?}"))
        .clone();
    let huge_meta = metas
        .get("/huge.bin")
        .expect("no .meta for /huge.bin")
        .clone();
    // A flipped byte inside the JSON header: its checksum no longer matches.
    let mut bytes = fs::read(&corrupt_meta).unwrap();
    bytes[20] ^= 0x5a;
    bytes[21] ^= 0xa5;
    fs::write(&corrupt_meta, &bytes).unwrap();
    // A well-formed header that claims 2^63-1 bytes.
    let (mut json, records) = parse_meta(&fs::read(&huge_meta).unwrap());
    json["size"] = serde_json::json!(9_223_372_036_854_775_807u64);
    fs::write(&huge_meta, encode_meta(&json, &records)).unwrap();

    origin.reset();
    let mut m = Mount::builder(origin.url()).cache_dir(&cache).mount();
    for (name, data) in [
        ("keep.bin", &keep),
        ("corrupt.bin", &corrupt),
        ("huge.bin", &huge),
    ] {
        let got = read_file(&m.path(name)).unwrap_or_else(|e| {
            panic!("read {name} after restoring: {e}\n{}", tail(&m.log(), 8000))
        });
        assert_bytes_eq(&got, data, name);
    }
    assert!(m.is_running());
    assert!(
        origin.request_count_for("/corrupt.bin") > 0 && origin.request_count_for("/huge.bin") > 0,
        "dropped objects are fetched again:\n{}",
        origin.describe_requests()
    );
    assert_eq!(
        origin.request_count_for("/keep.bin"),
        0,
        "the intact object is served from the cache:\n{}",
        origin.describe_requests()
    );
    let log = m.log();
    for meta in [&corrupt_meta, &huge_meta] {
        let stem = meta.file_stem().unwrap().to_string_lossy().into_owned();
        let lines = log_lines_with(&log, &stem);
        assert_eq!(
            lines.len(),
            1,
            "one log line about dropping {}:\n{log}",
            meta.display()
        );
        assert!(
            lines[0].to_ascii_lowercase().contains("meta"),
            "the line says it is about the metadata: {}",
            lines[0]
        );
    }
}

// ===========================================================================
// A2. Content-Encoding and bodies longer than their Content-Range
// ===========================================================================

#[test]
fn a2_requests_ask_for_identity_and_encoded_answers_are_eio() {
    const BLOCK: usize = 256 * KIB;
    let Some(origin) = mount_origin() else { return };
    let plain = pattern(201, 2 * BLOCK + 77);
    let gz_range = pattern(202, 4 * BLOCK + 5);
    let gz_probe = pattern(203, 2 * BLOCK);
    origin.put("/plain.bin", plain.clone());
    origin.put("/gz-range.bin", gz_range.clone());
    origin.put("/gz-probe.bin", gz_probe.clone());
    let m = Mount::builder(origin.url())
        .opt("block_size=256K,connect_timeout=1,receive_timeout=2,passthrough=false")
        .mount();

    assert_file_matches(&m.path("plain.bin"), &plain, 64 * KIB);

    // A gzip probe answer: nothing of it may be taken.
    let encode = || {
        FaultAction::Rewrite(Arc::new(|_req, ans| {
            if ans.status == 200 || ans.status == 206 {
                ans.body = pattern(299, ans.body.len());
                ans.set_header("content-encoding", "gzip");
            }
        }))
    };
    origin.add_fault(Fault::path("/gz-probe.bin", encode()));
    let r = stat(&m.path("gz-probe.bin"));
    assert_eq!(
        errno(&r),
        Some(EIO),
        "probe answered with Content-Encoding: gzip: {r:?}"
    );

    // A gzip 206 after a good probe.
    stat(&m.path("gz-range.bin")).expect("stat gz-range.bin");
    let f = open(&m.path("gz-range.bin"));
    no_kernel_readahead(&f);
    origin.add_fault(Fault::path("/gz-range.bin", encode()));
    let r = pread(&f, BLOCK as u64, BLOCK);
    match &r {
        Ok(got) => panic!(
            "a 206 with Content-Encoding: gzip was served ({} bytes, {})",
            got.len(),
            if got[..] == gz_range[BLOCK..2 * BLOCK] {
                "equal to the file"
            } else {
                "wrong bytes"
            }
        ),
        Err(_) => assert_eq!(errno(&r), Some(EIO), "{r:?}"),
    }
    let (got, err) = read_from(&f, 0);
    assert_bytes_eq(&got, &gz_range[..got.len()], "bytes read before the error");
    assert_eq!(
        err,
        Some(EIO),
        "whole read of gz-range.bin ended after {} bytes",
        got.len()
    );

    let reqs = origin.requests();
    assert!(reqs.len() >= 4, "{}", origin.describe_requests());
    for r in &reqs {
        assert_eq!(
            r.header("accept-encoding"),
            Some("identity"),
            "request {} {} range={:?} headers={:?}",
            r.method,
            r.target,
            r.range,
            r.headers
        );
    }
}

#[test]
fn a2_a_body_longer_than_its_content_range_is_never_served() {
    const BLOCK: usize = 256 * KIB;
    let Some(origin) = mount_origin() else { return };
    let once = pattern(211, 4 * BLOCK + 123);
    let forever = pattern(212, 4 * BLOCK + 123);
    origin.put("/long-once.bin", once.clone());
    origin.put("/long-forever.bin", forever.clone());
    let m = Mount::builder(origin.url())
        .opt("block_size=256K,connect_timeout=1,receive_timeout=2,passthrough=false")
        .mount();
    stat(&m.path("long-once.bin")).expect("stat");
    stat(&m.path("long-forever.bin")).expect("stat");

    let longer = || {
        FaultAction::Rewrite(Arc::new(|_req, ans| {
            if ans.status == 206 {
                let mut body = ans.body.to_vec();
                body.extend_from_slice(b"0123456789");
                ans.body = Bytes::from(body);
            }
        }))
    };
    origin.add_fault(Fault::path("/long-once.bin", longer()).times(1));
    origin.add_fault(Fault::path("/long-forever.bin", longer()));

    let (got, err) = read_outcome(&m.path("long-once.bin"));
    assert_bytes_eq(&got, &once[..got.len()], "long-once.bin bytes");
    match err {
        None => assert_eq!(got.len(), once.len(), "long-once.bin read whole"),
        Some(e) => assert_eq!(e, EIO, "long-once.bin failed with errno {e}"),
    }

    let (got, err) = read_outcome(&m.path("long-forever.bin"));
    assert_bytes_eq(
        &got,
        &forever[..got.len().min(forever.len())],
        "long-forever.bin bytes",
    );
    assert_eq!(
        err,
        Some(EIO),
        "a 206 always longer than its Content-Range was accepted ({} bytes read)\n{}",
        got.len(),
        origin.describe_requests()
    );
}

// ===========================================================================
// A3. Deadlines, the low-speed rule, failover and hedging
// ===========================================================================

#[test]
fn a3_a_stalled_origin_fails_a_read_within_one_deadline() {
    common::require_mount!();
    const BLOCK: u64 = 256 * 1024;
    let origin = Origin::start();
    origin.put("/stall.bin", pattern(301, 8 * BLOCK as usize));
    let m = Mount::builder(origin.url())
        .opt("block_size=256K,connect_timeout=0.5,receive_timeout=1,passthrough=false")
        .mount();
    let request_timeout = Duration::from_millis(1500);
    let bound = request_timeout * 2 + Duration::from_secs(1);

    stat(&m.path("stall.bin")).expect("lookup before the stall");
    let f = open(&m.path("stall.bin"));
    no_kernel_readahead(&f);
    let gate = Gate::new();
    origin.add_fault(Fault::path(
        "/stall.bin",
        FaultAction::StallHeaders(Stall::Until(gate.clone())),
    ));

    let (r, took) = {
        let f = f.try_clone().unwrap();
        timed("pread of a stalled block", CALL_BOUND, move || {
            pread_full(&f, 4 * BLOCK, 4096)
        })
    };
    assert_eq!(errno(&r), Some(EIO), "{r:?}");
    assert!(
        took < bound,
        "a 4 KiB read from a stalled origin took {took:?}; request_timeout is {request_timeout:?}"
    );

    // Through the page cache: a plain read() on a freshly opened file.
    let path = m.path("stall.bin");
    let (r, took) = timed("read() of a stalled block", CALL_BOUND, move || {
        let mut f = File::open(path)?;
        f.seek(SeekFrom::Start(6 * BLOCK))?;
        let mut buf = vec![0u8; 4096];
        f.read(&mut buf)
    });
    assert_eq!(errno(&r), Some(EIO), "{r:?}");
    assert!(
        took < bound,
        "a page-cache read from a stalled origin took {took:?}; request_timeout is {request_timeout:?}"
    );
    gate.release();
}

const TRICKLE_OPTS: &str =
    "low_speed_limit=16K,low_speed_time=1,block_size=256K,connect_timeout=1,passthrough=false";

#[test]
fn a3_a_trickling_origin_fails_within_seconds() {
    common::require_mount!();
    let slow_probe = pattern(311, MIB);
    let slow_read = pattern(312, MIB);
    let server = RawServer::start(
        &[
            ("/slow-probe.bin", slow_probe, Style::Trickle),
            (
                "/slow-read.bin",
                slow_read.clone(),
                Style::TrickleAfterProbe,
            ),
        ],
        None,
    );
    let m = Mount::builder(server.url()).opt(TRICKLE_OPTS).mount();
    let few_seconds = Duration::from_secs(10);

    let p = m.path("slow-probe.bin");
    let (r, took) = timed(
        "stat of a trickling file",
        Duration::from_secs(45),
        move || fs::metadata(p),
    );
    assert_eq!(errno(&r), Some(EIO), "{r:?}");
    assert!(
        took < few_seconds,
        "stat of a trickling probe took {took:?}"
    );

    stat(&m.path("slow-read.bin")).expect("the probe of slow-read.bin is served normally");
    let f = open(&m.path("slow-read.bin"));
    no_kernel_readahead(&f);
    let (r, took) = timed(
        "read of a trickling block",
        Duration::from_secs(45),
        move || pread_full(&f, 512 * 1024, 4096),
    );
    assert_eq!(errno(&r), Some(EIO), "{r:?}");
    assert!(
        took < few_seconds,
        "a read of a trickling block took {took:?}"
    );
}

#[test]
fn a3_a_trickling_origin_fails_over_to_a_good_one() {
    common::require_mount!();
    let files: Vec<(String, Bytes)> = (0..3)
        .map(|i| {
            (
                format!("/f{i}.bin"),
                pattern(320 + i, MIB + 1000 * i as usize),
            )
        })
        .collect();
    let list = |style| -> Vec<(&str, Bytes, Style)> {
        files
            .iter()
            .map(|(p, d)| (p.as_str(), d.clone(), style))
            .collect()
    };
    let slow = RawServer::start(&list(Style::Trickle), None);
    let good = RawServer::start(&list(Style::Ranged), None);
    let m = Mount::builder(format!("{},{}", slow.url(), good.url()))
        .opt(TRICKLE_OPTS)
        .mount();
    for (path, data) in &files {
        let md = stat(&m.path(path)).unwrap_or_else(|e| {
            panic!(
                "stat {path} with a trickling and a good origin: {e}\n{}",
                tail(&m.log(), 6000)
            )
        });
        assert_eq!(md.len(), data.len() as u64);
        let got = read_file(&m.path(path))
            .unwrap_or_else(|e| panic!("read {path}: {e}\n{}", tail(&m.log(), 6000)));
        assert_bytes_eq(&got, data, path);
    }
    assert!(
        !slow.requests().is_empty(),
        "the trickling origin was never asked, so nothing failed over"
    );
}

#[test]
fn a3_a_silent_origin_is_hedged_to_a_good_one() {
    let Some(silent) = mount_origin() else { return };
    let good = Origin::start();
    let gate = Gate::new();
    let files: Vec<(String, Bytes)> = (0..3)
        .map(|i| (format!("/h{i}.bin"), pattern(330 + i, 600 * KIB)))
        .collect();
    for (p, d) in &files {
        let a = silent.put(p, d.clone()).etag;
        let b = good.put(p, d.clone()).etag;
        assert_eq!(a, b);
    }
    silent.add_fault(Fault::global(FaultAction::StallHeaders(Stall::Until(
        gate.clone(),
    ))));
    let m = Mount::builder(format!("{},{}", silent.url(), good.url()))
        .opt("connect_timeout=0.5")
        .mount();
    let bound = Duration::from_secs(4);
    for (path, data) in &files {
        let p = m.path(path);
        let (r, took) = timed(&format!("stat {path}"), CALL_BOUND, move || fs::metadata(p));
        let md = r.unwrap_or_else(|e| panic!("stat {path}: {e}"));
        assert_eq!(md.len(), data.len() as u64);
        assert!(
            took < bound,
            "stat {path} took {took:?} with connect_timeout=0.5"
        );
        let p = m.path(path);
        let (r, took) = timed(&format!("read {path}"), CALL_BOUND, move || fs::read(p));
        let got = r.unwrap_or_else(|e| panic!("read {path}: {e}"));
        assert_bytes_eq(&got, data, path);
        assert!(
            took < bound,
            "read {path} took {took:?} with connect_timeout=0.5"
        );
    }
    assert!(
        silent.request_count() > 0,
        "the silent origin was never asked: no hedge happened"
    );
    gate.release();
}

// ===========================================================================
// A4. Origins without validators
// ===========================================================================

#[test]
fn a4_a_file_without_validators_is_never_served_as_a_mix_of_versions() {
    const BLOCK: usize = 256 * KIB;
    let Some(origin) = mount_origin() else { return };
    let whole = pattern(401, 8 * BLOCK + 99);
    let old = pattern(402, 8 * BLOCK);
    let new = pattern(403, 8 * BLOCK);
    origin.put("/whole.bin", whole.clone());
    origin.put("/mixed.bin", old.clone());
    origin.add_fault(Fault::global(FaultAction::Rewrite(Arc::new(
        |_req, ans| {
            ans.remove_header("etag");
            ans.remove_header("last-modified");
        },
    ))));
    let m = Mount::builder(origin.url())
        .opt("block_size=256K,readahead_max=0,passthrough=false")
        .mount();

    assert_file_matches(&m.path("whole.bin"), &whole, 64 * KIB);

    let f = open(&m.path("mixed.bin"));
    no_kernel_readahead(&f);
    let first = pread(&f, 0, 2 * BLOCK).expect("blocks 0..1");
    assert_bytes_eq(&first, &old[..2 * BLOCK], "blocks 0..1 before the change");

    origin.put("/mixed.bin", new.clone());
    // Drop whatever is cached, so the rest must come from the origin again.
    control("purge", &[&m.path("mixed.bin")]);

    let (rest, err) = read_from(&f, 2 * BLOCK as u64);
    if let Some(e) = err {
        assert_eq!(e, EIO, "the rest failed with errno {e}");
    }
    if let Some(i) = common::first_mismatch(&rest, &old[2 * BLOCK..2 * BLOCK + rest.len()]) {
        let from_new = rest[i..] == new[2 * BLOCK + i..2 * BLOCK + rest.len()];
        panic!(
            "one open file served two versions: blocks 0..1 of the old one, then {} at offset {}{}",
            if from_new {
                "the new version"
            } else {
                "other bytes"
            },
            2 * BLOCK + i,
            if err.is_some() {
                " (before an EIO)"
            } else {
                ""
            }
        );
    }
    if err.is_none() {
        assert_eq!(rest.len(), old.len() - 2 * BLOCK, "the rest read whole");
    }
}

// ===========================================================================
// A5. Answers without Content-Length
// ===========================================================================

#[test]
fn a5_answers_without_content_length_work_up_to_max_unsized_object() {
    common::require_mount!();
    let chunked = pattern(501, 900 * KIB + 7);
    let close = pattern(502, 600 * KIB + 3);
    let big = pattern(503, 2 * MIB);
    let server = RawServer::start(
        &[
            ("/chunked.bin", chunked.clone(), Style::Chunked),
            ("/close.bin", close.clone(), Style::Http10Close),
            ("/big.bin", big, Style::Chunked),
        ],
        None,
    );
    let m = Mount::builder(server.url())
        .opt("max_unsized_object=1M,block_size=256K,connect_timeout=1,receive_timeout=3")
        .mount();

    for (name, data) in [("chunked.bin", &chunked), ("close.bin", &close)] {
        let md = stat(&m.path(name))
            .unwrap_or_else(|e| panic!("stat {name}: {e}\n{}", tail(&m.log(), 6000)));
        assert_eq!(md.len(), data.len() as u64, "size of {name}");
        let got = read_file(&m.path(name))
            .unwrap_or_else(|e| panic!("read {name}: {e}\n{}", tail(&m.log(), 6000)));
        assert_bytes_eq(&got, data, name);
    }

    let r = stat(&m.path("big.bin"));
    assert_eq!(
        errno(&r),
        Some(EIO),
        "an unsized 2 MiB answer with max_unsized_object=1M: {r:?}"
    );
    let log = m.log();
    assert!(
        log.lines().any(|l| l.contains("max_unsized_object")),
        "no log line names max_unsized_object:\n{}",
        tail(&log, 6000)
    );
}

// ===========================================================================
// A6. A self-signed origin certificate
// ===========================================================================

/// A self-signed CA:TRUE certificate for 127.0.0.1 used directly by the server: (DER, PEM,
/// server config).
fn self_signed_origin() -> (Vec<u8>, String, Arc<tokio_rustls::rustls::ServerConfig>) {
    use rcgen::{ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let names = ["127.0.0.1", "localhost"];
    let mut params = common::certs::ca_params(&names, "ston-fs self-signed origin");
    params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed certificate");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server certificate");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (cert.der().to_vec(), cert.pem(), Arc::new(config))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a6_a_self_signed_origin_is_read_with_its_pin_only() {
    common::require_mount!();
    let data = pattern(601, 300 * KIB + 11);
    let (der, pem, config) = self_signed_origin();
    let server = RawServer::start(
        &[("/secure.bin", data.clone(), Style::Ranged)],
        Some(config),
    );
    let tmp = tempdir("ston-fs-hard-a6-");
    let pem_path = tmp.path().join("self-signed.pem");
    fs::write(&pem_path, pem).unwrap();
    let timeouts = "connect_timeout=1,receive_timeout=2";

    // As a CA in ca_file: a CA certificate is not a server certificate.
    let m = Mount::builder(server.url())
        .opt(timeouts)
        .opt(format!("ca_file={}", pem_path.display()))
        .mount();
    let r = read_file(&m.path("secure.bin"));
    assert_eq!(
        errno(&r),
        Some(EIO),
        "a self-signed CA:TRUE server certificate trusted through ca_file: {:?}",
        r.map(|v| v.len())
    );
    drop(m);

    // Pinned: read with exact bytes.
    let pin = format!("tls_pin=sha256:{}", sha256_hex(&der));
    let m = Mount::builder(server.url()).opt(timeouts).opt(pin).mount();
    let got = read_file(&m.path("secure.bin"))
        .unwrap_or_else(|e| panic!("read with tls_pin: {e}\n{}", tail(&m.log(), 6000)));
    assert_bytes_eq(&got, &data, "secure.bin with tls_pin");
    drop(m);

    // A wrong pin.
    let wrong = format!("tls_pin=sha256:{}", sha256_hex(b"not this certificate"));
    let m = Mount::builder(server.url())
        .opt(timeouts)
        .opt(wrong)
        .mount();
    let r = read_file(&m.path("secure.bin"));
    assert_eq!(
        errno(&r),
        Some(EIO),
        "a wrong pin: {:?}",
        r.map(|v| v.len())
    );
}

// ===========================================================================
// B7. Purge keeps directory records; cached children imply a directory
// ===========================================================================

struct DirSetup {
    origin: Origin,
    a: Bytes,
    b: Bytes,
    _tmp: tempfile::TempDir,
    cache: PathBuf,
    /// What the control commands of `act` printed, and the first mount's log (for messages).
    before: String,
}

/// An origin with /dir/a.bin, /dir/b.bin and /dir/sub/c.bin. A mount caches dir's own record,
/// a and b, then `act` gets it before it is unmounted; then the origin answers 503 for everything.
fn cache_dir_then_break_origin(act: impl FnOnce(&Mount) -> String) -> DirSetup {
    let origin = Origin::start();
    let a = pattern(701, 300 * KIB);
    let b = pattern(702, 500 * KIB + 5);
    origin.put("/dir/a.bin", a.clone());
    origin.put("/dir/b.bin", b.clone());
    origin.put("/dir/sub/c.bin", pattern(703, 100 * KIB));
    let tmp = tempdir("ston-fs-hard-b7-");
    let cache = tmp.path().join("cache");
    let m = Mount::builder(origin.url()).cache_dir(&cache).mount();
    assert!(stat(&m.path("dir")).expect("stat dir").is_dir());
    assert_file_matches(&m.path("dir/a.bin"), &a, 64 * KIB);
    assert_file_matches(&m.path("dir/b.bin"), &b, 64 * KIB);
    let said = act(&m);
    let log = m.unmount();
    origin.add_fault(Fault::global(FaultAction::Status(503)));
    DirSetup {
        origin,
        a,
        b,
        _tmp: tmp,
        cache,
        before: format!("--- control commands ---\n{said}--- first mount's log ---\n{log}"),
    }
}

#[track_caller]
fn assert_dir(m: &Mount, rel: &str, s: &DirSetup) {
    let r = stat(&m.path(rel));
    match r {
        Ok(md) => assert!(md.is_dir(), "{rel} is not a directory: {md:?}"),
        Err(e) => panic!(
            "stat {rel} with the origin down: {e}\n{}\n--- this mount's log ---\n{}",
            tail(&s.before, 6000),
            tail(&m.log(), 6000)
        ),
    }
}

/// Reads `rel` with the origin down and compares it with `want`.
#[track_caller]
fn assert_served(m: &Mount, rel: &str, want: &[u8], s: &DirSetup) {
    let got = read_file(&m.path(rel)).unwrap_or_else(|e| {
        panic!(
            "{rel} with the origin down: {e}\n{}\n--- this mount's log ---\n{}",
            tail(&s.before, 6000),
            tail(&m.log(), 6000)
        )
    });
    assert_bytes_eq(&got, want, rel);
}

/// `ston-fs purge PATH`, returning what it printed.
fn purge(path: &Path) -> String {
    let out = control("purge", &[path]);
    format!("purge {}: {}", path.display(), out.stdout)
}

#[test]
fn b7_purge_of_dir_star_keeps_the_directory_record() {
    common::require_mount!();
    let s = cache_dir_then_break_origin(|m| purge(&star(&m.path("dir"))));
    let m = Mount::builder(s.origin.url()).cache_dir(&s.cache).mount();
    assert_dir(&m, "dir", &s);
}

/// The issue's "purge only dir/a" check, plus a subtree purge (`dir/sub/*`) next to it: both
/// directories keep their records, and the untouched sibling stays readable.
#[test]
fn b7_purge_of_a_child_and_a_subtree_keeps_directories_and_siblings() {
    common::require_mount!();
    let s = cache_dir_then_break_origin(|m| {
        // (the origin is still up here)
        assert!(stat(&m.path("dir/sub")).expect("stat dir/sub").is_dir());
        assert_file_matches(&m.path("dir/sub/c.bin"), &pattern(703, 100 * KIB), 64 * KIB);
        purge(&m.path("dir/a.bin")) + &purge(&star(&m.path("dir/sub")))
    });
    let m = Mount::builder(s.origin.url()).cache_dir(&s.cache).mount();
    assert_dir(&m, "dir", &s);
    assert_dir(&m, "dir/sub", &s);
    assert_served(&m, "dir/b.bin", &s.b, &s);
}

/// The issue's other half: dir's own record gone through `purge MNT/dir` (the exact path), its
/// children still cached: with the origin down, dir is still a directory and dir/b readable.
#[test]
fn b7_a_directory_with_cached_children_is_served_without_its_record() {
    common::require_mount!();
    let s = cache_dir_then_break_origin(|m| purge(&m.path("dir")));
    let m = Mount::builder(s.origin.url()).cache_dir(&s.cache).mount();
    assert_dir(&m, "dir", &s);
    assert_served(&m, "dir/b.bin", &s.b, &s);
}

/// The same, with dir's own record removed from the cache dir directly (not through purge).
#[test]
fn b7_a_directory_with_cached_children_is_served_when_its_meta_is_gone() {
    common::require_mount!();
    let s = cache_dir_then_break_origin(|_| String::new());
    let metas = metas_by_path(&s.cache);
    let dir_meta = metas
        .get("/dir")
        .unwrap_or_else(|| panic!("no record of /dir in the cache: {metas:?}"));
    let (json, _) = parse_meta(&fs::read(dir_meta).unwrap());
    assert_eq!(json["kind"], "directory", "{json}");
    fs::remove_file(dir_meta).unwrap();
    let _ = fs::remove_file(dir_meta.with_extension("data"));
    let m = Mount::builder(s.origin.url()).cache_dir(&s.cache).mount();
    assert_dir(&m, "dir", &s);
    assert_served(&m, "dir/a.bin", &s.a, &s);
    assert_served(&m, "dir/b.bin", &s.b, &s);
}

// ===========================================================================
// B8. Disk use stays under the cap
// ===========================================================================

/// A tmpfs mounted by the test; detached on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        let c = |s: &[u8]| std::ffi::CString::new(s).unwrap();
        let (src, target, fstype, data) = (
            c(b"tmpfs"),
            c(dir.as_os_str().as_bytes()),
            c(b"tmpfs"),
            c(format!("size={size},mode=0700").as_bytes()),
        );
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }

    fn used(&self) -> u64 {
        fs_used(&self.dir)
    }
}

/// `(f_blocks - f_bfree) * f_frsize` of the file system holding `dir`.
fn fs_used(dir: &Path) -> u64 {
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs {}", dir.display());
    (st.f_blocks - st.f_bfree) as u64 * st.f_frsize as u64
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        force_unmount_all(&self.dir);
    }
}

#[test]
fn b8_disk_use_stays_under_the_cap_with_passthrough() {
    let Some(origin) = mount_origin() else { return };
    let files: Vec<(String, Bytes)> = (0..40)
        .map(|i| {
            let len = 3 * MIB + (i * 389 * KIB) % (2 * MIB + 1);
            (format!("/cap/f{i:02}.bin"), pattern(800 + i as u64, len))
        })
        .collect();
    let largest = files.iter().map(|(_, d)| d.len()).max().unwrap() as u64;
    for (p, d) in &files {
        origin.put(p, d.clone());
    }
    let tmp = tempdir("ston-fs-hard-b8-");
    let fs_dir = tmp.path().join("fs");
    let tmpfs = Tmpfs::mount(&fs_dir, "160M");
    let baseline = tmpfs.used();
    let cap = 64 * MIB as u64;
    let limit = cap + largest + MIB as u64;

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        let dir = fs_dir.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && n < 200_000 {
                peak.fetch_max(fs_used(&dir), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
                n += 1;
            }
            n
        })
    };

    let m = Mount::builder(origin.url())
        .cache_dir(fs_dir.join("cache"))
        .opt("max_cache_size=64M,block_size=1M")
        .mount();
    for (p, d) in &files {
        for round in 0..2 {
            let path = m.path(p);
            let want = d.clone();
            bounded(&format!("read {p} #{round}"), READ_BOUND, move || {
                assert_file_matches(&path, &want, 256 * KIB)
            });
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let end_use = tmpfs.used();
    stop.store(true, Ordering::SeqCst);
    let samples = sampler.join().expect("sampler");
    let peak = peak.load(Ordering::SeqCst).max(end_use);
    eprintln!(
        "b8: peak tmpfs use {:.2} MiB (baseline {} KiB, at end {:.2} MiB) over {samples} samples; limit {:.2} MiB",
        peak as f64 / MIB as f64,
        baseline / 1024,
        end_use as f64 / MIB as f64,
        limit as f64 / MIB as f64
    );
    assert!(samples > 10, "the sampler hardly ran ({samples} samples)");
    assert!(
        peak <= baseline + limit,
        "disk use peaked at {:.2} MiB: cap 64 MiB + one open file {:.2} MiB + 1 MiB slack = {:.2} MiB\n{}",
        peak as f64 / MIB as f64,
        largest as f64 / MIB as f64,
        limit as f64 / MIB as f64,
        common::mount::describe_dir(&fs_dir)
    );
    drop(m);
    drop(tmpfs);
}

// ===========================================================================
// B9. Stale control sockets, symlinked data files, private logs
// ===========================================================================

fn control_sockets(cache: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(cache)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("control.") && n.ends_with(".sock"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn b9_a_dead_daemons_control_socket_is_removed() {
    let Some(origin) = mount_origin() else { return };
    let data = origin.put("/s.bin", pattern(901, 200 * KIB)).data;
    let tmp = tempdir("ston-fs-hard-b9-");
    let cache = tmp.path().join("cache");

    let mut m1 = Mount::builder(origin.url()).cache_dir(&cache).mount();
    assert_file_matches(&m1.path("s.bin"), &data, 64 * KIB);
    let dead = m1.pid().unwrap();
    let dead_sock = format!("control.{dead}.sock");
    assert!(
        control_sockets(&cache).contains(&dead_sock),
        "no {dead_sock} in {:?}",
        control_sockets(&cache)
    );
    m1.kill9();
    m1.detach();

    let m2 = Mount::builder(origin.url()).cache_dir(&cache).mount();
    assert_file_matches(&m2.path("s.bin"), &data, 64 * KIB);
    let live = m2.pid().unwrap();
    assert_eq!(
        control_sockets(&cache),
        vec![format!("control.{live}.sock")],
        "only the live daemon's control socket remains (the dead one was {dead_sock})"
    );
    drop(m1);
}

#[test]
fn b9_a_symlinked_data_file_is_never_followed() {
    let Some(origin) = mount_origin() else { return };
    let data = origin.put("/sym.bin", pattern(911, 600 * KIB + 1)).data;
    let tmp = tempdir("ston-fs-hard-b9-");
    let cache = tmp.path().join("cache");
    let outside = tmp.path().join("outside.bin");
    let other = pattern(912, data.len());
    fs::write(&outside, &other).unwrap();

    let m = Mount::builder(origin.url()).cache_dir(&cache).mount();
    assert_file_matches(&m.path("sym.bin"), &data, 64 * KIB);
    m.unmount();
    let meta = metas_by_path(&cache)
        .get("/sym.bin")
        .cloned()
        .expect("a .meta for /sym.bin");
    let data_file = meta.with_extension("data");
    assert!(data_file.is_file(), "{} not found", data_file.display());
    fs::remove_file(&data_file).unwrap();
    std::os::unix::fs::symlink(&outside, &data_file).unwrap();

    let m = Mount::builder(origin.url()).cache_dir(&cache).mount();
    let got = read_file(&m.path("sym.bin"))
        .unwrap_or_else(|e| panic!("read sym.bin: {e}\n{}", tail(&m.log(), 6000)));
    assert_bytes_eq(&got, &data, "sym.bin with a symlinked .data");
    assert_eq!(
        fs::read(&outside).unwrap(),
        other.to_vec(),
        "the symlink's target was changed"
    );
    let name = data_file
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let log = m.log();
    assert!(
        log.lines()
            .any(|l| l.contains(&name) || l.contains("symlink") || l.contains("not a plain file")),
        "no log line about the symlinked data file {name}:\n{}",
        tail(&log, 6000)
    );
    let still_link = fs::symlink_metadata(&data_file)
        .map(|md| md.file_type().is_symlink())
        .unwrap_or(false);
    if still_link {
        assert_eq!(fs::read(&outside).unwrap(), other.to_vec());
    }
}

#[test]
fn b9_log_file_and_access_log_are_private() {
    let Some(origin) = mount_origin() else { return };
    let data = origin.put("/l.bin", pattern(921, 100 * KIB)).data;
    let tmp = tempdir("ston-fs-hard-b9-");
    let mp = tmp.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let log_file = tmp.path().join("ston.log");
    let access_log = tmp.path().join("access.log");
    let opts = [
        format!("log_file={}", log_file.display()),
        format!("access_log={}", access_log.display()),
    ];
    let opts: Vec<&str> = opts.iter().map(|s| s.as_str()).collect();
    let (out, mut daemon) = daemon_mount(&origin.url(), &mp, &tmp.path().join("cache"), &opts, &[]);
    assert!(out.success(), "daemonized mount:\n{}", out.describe());
    assert!(is_fuse_mounted(&mp));
    assert_file_matches(&mp.join("l.bin"), &data, 64 * KIB);
    for f in [&log_file, &access_log] {
        let mode = fs::metadata(f)
            .unwrap_or_else(|e| panic!("{} not created: {e}", f.display()))
            .mode()
            & 0o777;
        assert_eq!(
            mode & 0o027,
            0,
            "{} has mode {mode:o}: group-writable or open to others",
            f.display()
        );
    }
    daemon.unmount();
}

// ===========================================================================
// B10. header_file
// ===========================================================================

#[test]
fn b10_header_file_reaches_the_origin_and_stays_out_of_ps_and_logs() {
    let Some(origin) = mount_origin() else { return };
    let data = origin.put("/h.bin", pattern(1001, 300 * KIB)).data;
    let tmp = tempdir("ston-fs-hard-b10-");
    let secret = format!("s3cr3t-{}-{}", std::process::id(), 0x5eed_u32);
    let hf = tmp.path().join("headers");
    fs::write(
        &hf,
        format!("X-Api-Key: {secret}\n# a comment\nX-Second: two\n"),
    )
    .unwrap();
    fs::set_permissions(&hf, fs::Permissions::from_mode(0o600)).unwrap();

    let mut m = Mount::builder(origin.url())
        .arg("-v")
        .opt(format!("header_file={}", hf.display()))
        .mount();
    assert_file_matches(&m.path("h.bin"), &data, 64 * KIB);
    let reqs = origin.requests();
    assert!(!reqs.is_empty());
    for r in &reqs {
        assert_eq!(
            r.header("x-api-key"),
            Some(secret.as_str()),
            "{:?}",
            r.headers
        );
        assert_eq!(r.header("x-second"), Some("two"), "{:?}", r.headers);
    }
    let pid = m.pid().unwrap();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(&secret),
        "the header value is on the command line"
    );
    assert!(m.is_running());
    let log = m.unmount();
    assert!(
        !log.contains(&secret),
        "the header value is in the log:\n{log}"
    );
}

#[test]
fn b10_a_header_file_readable_by_others_is_refused() {
    common::require_mount!();
    let tmp = tempdir("ston-fs-hard-b10-");
    let hf = tmp.path().join("headers");
    fs::write(&hf, "X-Api-Key: open-secret\n").unwrap();
    let mp = tmp.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let origin = format!("http://127.0.0.1:{}/", closed_port());
    let opt = format!("header_file={},connect_timeout=0.5", hf.display());

    // The same file at 0600 is accepted (an unreachable origin is no mount failure).
    fs::set_permissions(&hf, fs::Permissions::from_mode(0o600)).unwrap();
    let (out, mut daemon) = daemon_mount(&origin, &mp, &tmp.path().join("cache"), &[&opt], &[]);
    assert!(out.success(), "a 0600 header_file:\n{}", out.describe());
    assert!(is_fuse_mounted(&mp));
    daemon.unmount();
    drop(daemon);

    fs::set_permissions(&hf, fs::Permissions::from_mode(0o644)).unwrap();
    let mut args = os(&["--cache-dir"]);
    args.push(tmp.path().join("cache").into());
    args.push("-o".into());
    args.push(opt.into());
    args.push(origin.into());
    args.push(mp.clone().into());
    let stderr = refused(&args, &mp);
    assert!(
        stderr.contains("header_file"),
        "the error names header_file:\n{stderr}"
    );
    assert!(
        !stderr.contains("open-secret"),
        "the error shows the secret:\n{stderr}"
    );
}

// ===========================================================================
// C11. Listings refresh on demand
// ===========================================================================

fn listing_root() -> (tempfile::TempDir, PathBuf) {
    assert!(which("nginx").is_some(), "nginx is not installed");
    let root = tempdir("ston-fs-hard-c11-");
    let dir = root.path().join("dir");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("a.txt"), "alpha\n").unwrap();
    fs::write(dir.join("b.txt"), "bravo\n").unwrap();
    // nginx (its worker may run as another user) must be able to read the tree.
    for p in [root.path(), dir.as_path()] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    (root, dir)
}

fn add_file(dir: &Path, name: &str) {
    let p = dir.join(name);
    fs::write(&p, format!("{name} content\n")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
}

#[track_caller]
fn assert_lists(m: &Mount, rel: &str, want: &[&str], what: &str) {
    let got = names(&m.path(rel));
    for w in want {
        assert!(
            got.iter().any(|g| g == w),
            "{what}: {w} is not listed in {rel}: {got:?}"
        );
    }
}

#[test]
fn c11_listings_refresh_on_expire_and_purge() {
    common::require_mount!();
    let (root, dir) = listing_root();
    let nginx = Nginx::start(root.path(), Autoindex::Html);
    let m = Mount::new(nginx.url());
    assert_eq!(names(&m.path("dir")), vec!["a.txt", "b.txt"]);

    add_file(&dir, "c.txt");
    control("expire", &[&star(&m.path("dir"))]);
    assert_lists(
        &m,
        "dir",
        &["a.txt", "b.txt", "c.txt"],
        "after expire dir/*",
    );
    assert_eq!(read_file(&m.path("dir/c.txt")).unwrap(), b"c.txt content\n");

    add_file(&dir, "d.txt");
    control("purge", &[&m.path("dir")]);
    assert_lists(
        &m,
        "dir",
        &["a.txt", "b.txt", "c.txt", "d.txt"],
        "after purge dir",
    );

    add_file(&dir, "e.txt");
    control("purge", &[&star(&m.path("dir"))]);
    assert_lists(&m, "dir", &["c.txt", "d.txt", "e.txt"], "after purge dir/*");
}

#[test]
fn c11_listing_ttl_refreshes_listings_without_a_command() {
    common::require_mount!();
    let (root, dir) = listing_root();
    let nginx = Nginx::start(root.path(), Autoindex::Html);
    let m = Mount::builder(nginx.url()).opt("listing_ttl=1").mount();
    assert_eq!(names(&m.path("dir")), vec!["a.txt", "b.txt"]);
    add_file(&dir, "c.txt");
    let added = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    // One more listing may still be the old one while a refresh runs: allow until 3 s.
    let mut got = names(&m.path("dir"));
    while !got.iter().any(|n| n == "c.txt") && added.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(250));
        got = names(&m.path("dir"));
    }
    assert!(
        got.iter().any(|n| n == "c.txt"),
        "with listing_ttl=1, a new file is not listed {:?} later: {got:?}",
        added.elapsed()
    );
}

#[test]
fn c11_listings_refresh_on_expire_after_a_restart() {
    common::require_mount!();
    let (root, dir) = listing_root();
    let nginx = Nginx::start(root.path(), Autoindex::Html);
    let tmp = tempdir("ston-fs-hard-c11-");
    let cache = tmp.path().join("cache");
    let m = Mount::builder(nginx.url()).cache_dir(&cache).mount();
    assert_eq!(names(&m.path("dir")), vec!["a.txt", "b.txt"]);
    m.unmount();

    add_file(&dir, "c.txt");
    let m = Mount::builder(nginx.url()).cache_dir(&cache).mount();
    let _ = names(&m.path("dir"));
    control("expire", &[&star(&m.path("dir"))]);
    assert_lists(
        &m,
        "dir",
        &["a.txt", "b.txt", "c.txt"],
        "after a restart and expire dir/*",
    );
}

// ===========================================================================
// C12. Statistics
// ===========================================================================

#[test]
fn c12_cold_reads_are_misses_warm_reads_hits_and_purged_reads_misses_again() {
    let Some(origin) = mount_origin() else { return };
    let data = origin.put("/cold.bin", pattern(1201, 8 * MIB)).data;
    let m = Mount::builder(origin.url())
        .opt("block_size=1M,passthrough=false")
        .mount();
    let path = m.path("cold.bin");

    assert_file_matches(&path, &data, MIB);
    let s1 = stats_json(m.mountpoint());
    assert_eq!(num(&s1, "read_hits"), 0, "cold read counted hits:\n{s1:#}");
    assert!(num(&s1, "read_misses") >= 1, "{s1:#}");
    assert_eq!(
        num(&s1, "bytes_from_cache"),
        0,
        "cold read served bytes from cache:\n{s1:#}"
    );
    assert_eq!(float(&s1, "byte_hit_ratio"), 0.0, "{s1:#}");

    drop_page_cache(&path);
    assert_file_matches(&path, &data, MIB);
    let s2 = stats_json(m.mountpoint());
    assert!(
        num(&s2, "read_hits") > 0,
        "warm read counted no hits:\n{s2:#}"
    );
    assert!(num(&s2, "bytes_from_cache") > 0, "{s2:#}");

    control("purge", &[&path]);
    drop_page_cache(&path);
    assert_file_matches(&path, &data, MIB);
    let s3 = stats_json(m.mountpoint());
    assert!(
        num(&s3, "read_misses") > num(&s2, "read_misses"),
        "a read after purge counted no misses:\n{s3:#}"
    );
    assert_eq!(
        num(&s3, "read_hits"),
        num(&s2, "read_hits"),
        "a read after purge counted hits:\n{s3:#}"
    );
    assert_eq!(
        num(&s3, "bytes_from_cache"),
        num(&s2, "bytes_from_cache"),
        "{s3:#}"
    );
    assert!(
        float(&s3, "byte_hit_ratio") < float(&s2, "byte_hit_ratio"),
        "{s3:#}"
    );
}

#[test]
fn c12_passthrough_opens_are_counted() {
    let Some(origin) = mount_origin() else { return };
    let data = origin.put("/p.bin", pattern(1211, 3 * MIB)).data;
    // Passthrough needs opens that reach the daemon.
    let m = Mount::builder(origin.url())
        .opt("zero_message_opens=false")
        .mount();
    let path = m.path("p.bin");
    assert_file_matches(&path, &data, MIB);
    std::thread::sleep(Duration::from_millis(400)); // let the blocks be journaled as cached
    let s1 = stats_json(m.mountpoint());
    let opens1 = num(&s1, "open_hits") + num(&s1, "open_misses");
    assert!(opens1 >= 1, "the first open is not counted:\n{s1:#}");

    for _ in 0..2 {
        assert_file_matches(&path, &data, MIB);
    }
    let s2 = stats_json(m.mountpoint());
    let opens2 = num(&s2, "open_hits") + num(&s2, "open_misses");
    assert!(
        opens2 >= opens1 + 2,
        "opens of a wholly cached file are not counted ({opens1} -> {opens2}):\n{s2:#}"
    );
    assert!(
        num(&s2, "open_hits") >= num(&s1, "open_hits") + 2,
        "opens of a wholly cached file are not hits:\n{s2:#}"
    );
}

#[test]
fn c12_a_dead_origin_is_not_shown_healthy() {
    common::require_mount!();
    let port = closed_port();
    let m = Mount::builder(format!("http://127.0.0.1:{port}/"))
        .opt("connect_timeout=0.5,receive_timeout=1")
        .mount();
    let s = stats_json(m.mountpoint());
    let o = &s["origins"][0];
    assert!(o.is_object(), "no origins[0]:\n{s:#}");
    assert_ne!(o["state"], "healthy", "a dead origin shown healthy:\n{s:#}");
    assert_eq!(o["healthy"], false, "{s:#}");

    let out = run_cli([OsStr::new("stats"), m.mountpoint().as_os_str()], CLI_BOUND);
    assert!(out.success(), "{}", out.describe());
    let needle = format!("127.0.0.1:{port}");
    let lines = log_lines_with(&out.stdout, &needle);
    assert!(
        !lines.is_empty(),
        "the origin is not in the stats text:\n{}",
        out.stdout
    );
    for l in lines {
        let says_healthy = l
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|w| w.eq_ignore_ascii_case("healthy"));
        assert!(
            !says_healthy,
            "a dead origin shown healthy: {l}\n{}",
            out.stdout
        );
    }
}

// ===========================================================================
// C13. uid/gid names
// ===========================================================================

fn id_of(file: &str, name: &str) -> Option<u32> {
    fs::read_to_string(file).ok()?.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then(|| f.nth(1)?.parse().ok())?
    })
}

#[test]
fn c13_uid_and_gid_take_user_and_group_names() {
    common::require_mount!();
    let (user, group) = match (
        id_of("/etc/passwd", "nobody"),
        id_of("/etc/group", "nogroup"),
    ) {
        (Some(_), Some(_)) => ("nobody", "nogroup"),
        _ => ("root", "root"),
    };
    let uid = id_of("/etc/passwd", user).unwrap();
    let gid = id_of("/etc/group", group).unwrap();
    let origin = Origin::start();
    origin.put("/u.bin", pattern(1301, 1000));
    let m = Mount::builder(origin.url())
        .opt(format!("uid={user},gid={group}"))
        .mount();
    for rel in ["", "u.bin"] {
        let md = stat(&m.path(rel)).expect("stat");
        assert_eq!((md.uid(), md.gid()), (uid, gid), "owner of /{rel}");
    }
    drop(m);

    let tmp = tempdir("ston-fs-hard-c13-");
    let mp = tmp.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    for (key, value) in [("uid", "no_such_user_ston"), ("gid", "no_such_group_ston")] {
        let mut args = os(&["--cache-dir"]);
        args.push(tmp.path().join("cache").into());
        args.push("-o".into());
        args.push(format!("{key}={value}").into());
        args.push(origin.url().into());
        args.push(mp.clone().into());
        let stderr = refused(&args, &mp);
        assert!(
            stderr.contains(&format!("`{key}`"))
                || stderr.contains(&format!("{key}:"))
                || stderr.contains(&format!("{key} ")),
            "the error for an unknown {key} name does not name the key:\n{stderr}"
        );
        assert!(
            stderr.contains(value),
            "the error shows the name:\n{stderr}"
        );
    }
}

// ===========================================================================
// C14. warm outside a mount
// ===========================================================================

#[test]
fn c14_warm_refuses_paths_that_are_not_on_a_mount() {
    common::require_mount!();
    let tmp = tempdir("ston-fs-hard-c14-");
    fs::write(tmp.path().join("x.bin"), b"local").unwrap();
    let out = run_cli([OsStr::new("warm"), tmp.path().as_os_str()], CLI_BOUND);
    assert!(!out.timed_out() && !out.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("not on a ston-fs mount"),
        "{}",
        out.describe()
    );

    let origin = Origin::start();
    let m = Mount::new(origin.url());
    let missing = m.path("missing.bin");
    let out = run_cli([OsStr::new("warm"), missing.as_os_str()], CLI_BOUND);
    assert!(
        !out.timed_out() && !out.success(),
        "warm of a missing path:\n{}",
        out.describe()
    );
}

// ===========================================================================
// C15. A crashed mount is replaced without umount
// ===========================================================================

#[test]
fn c15_a_crashed_mount_is_replaced_without_umount() {
    let Some(origin) = mount_origin() else { return };
    let data = origin.put("/c.bin", pattern(1501, 400 * KIB)).data;
    let tmp = tempdir("ston-fs-hard-c15-");
    let cache = tmp.path().join("cache");
    let mut m = Mount::builder(origin.url()).cache_dir(&cache).mount();
    assert_file_matches(&m.path("c.bin"), &data, 64 * KIB);
    m.kill9();
    let mp = m.mountpoint().to_path_buf();
    assert!(
        is_mounted(&mp),
        "the dead mount stays until someone detaches it"
    );

    let (out, mut daemon) = daemon_mount(&origin.url(), &mp, &cache, &[], &[]);
    assert!(
        out.success(),
        "remount over a dead mount:\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("detached a dead FUSE mount"),
        "nothing says a dead mount was detached:\n{}",
        out.describe()
    );
    assert!(is_fuse_mounted(&mp));
    assert_file_matches(&mp.join("c.bin"), &data, 64 * KIB);
    daemon.unmount();
    drop(daemon);
    drop(m);
}

// ===========================================================================
// C16. syslog, and an unreachable origin at mount time
// ===========================================================================

#[test]
fn c16_a_daemon_without_log_file_logs_to_syslog() {
    let Some(origin) = mount_origin() else { return };
    origin.put("/y.bin", pattern(1601, 1000));
    let tmp = tempdir("ston-fs-hard-c16-");
    let sock_path = tmp.path().join("syslog.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind syslog socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mp = tmp.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let (out, mut daemon) = daemon_mount(
        &origin.url(),
        &mp,
        &tmp.path().join("cache"),
        &[],
        &[("STON_FS_SYSLOG_SOCKET", sock_path.as_os_str())],
    );
    assert!(out.success(), "{}", out.describe());
    let pid = daemon.pid();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let mut found = None;
    let mut buf = vec![0u8; 64 * KIB];
    while found.is_none() && Instant::now() < deadline && seen.len() < 10_000 {
        if let Ok(n) = sock.recv(&mut buf) {
            let line = String::from_utf8_lossy(&buf[..n]).into_owned();
            if line.contains("mounted") {
                found = Some(line.clone());
            }
            seen.push(line);
        }
    }
    let line = found.unwrap_or_else(|| panic!("no line with `mounted` reached syslog: {seen:#?}"));
    let prefix_ok = line.starts_with('<')
        && line.split_once('>').is_some_and(|(pri, rest)| {
            pri[1..].parse::<u8>().is_ok() && rest.starts_with(&format!("ston-fs[{pid}]:"))
        });
    assert!(
        prefix_ok,
        "syslog line without `<PRI>ston-fs[{pid}]:`: {line:?}"
    );
    daemon.unmount();
}

#[test]
fn c16_an_unreachable_origin_is_warned_about_and_the_mount_goes_ahead() {
    common::require_mount!();
    let tmp = tempdir("ston-fs-hard-c16-");
    let mp = tmp.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let port = closed_port();
    let (out, mut daemon) = daemon_mount(
        &format!("http://127.0.0.1:{port}/"),
        &mp,
        &tmp.path().join("cache"),
        &["connect_timeout=0.5"],
        &[],
    );
    assert!(
        out.success(),
        "mount with an unreachable origin:\n{}",
        out.describe()
    );
    assert!(is_fuse_mounted(&mp), "not mounted");
    let lines = log_lines_with(&out.stderr, "unreachable");
    assert_eq!(lines.len(), 1, "one warning line:\n{}", out.describe());
    assert!(
        lines[0].contains("warning") && lines[0].contains(&format!("127.0.0.1:{port}")),
        "the line says which origin: {}",
        lines[0]
    );
    let _ = daemon.pid();
    daemon.unmount();
}

// ===========================================================================
// C17. CLI errors, --help, install.sh --help
// ===========================================================================

#[test]
fn c17_cli_errors_are_clear_and_mount_nothing() {
    common::require_mount!();
    let tmp = tempdir("ston-fs-hard-c17-");
    let mp = tmp.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let cache = tmp.path().join("cache");
    let with = |extra: &[&str], tail_args: &[&OsStr]| -> Vec<OsString> {
        let mut v = os(&["--cache-dir"]);
        v.push(cache.clone().into());
        v.extend(os(extra));
        v.extend(tail_args.iter().map(|s| s.to_os_string()));
        v
    };
    let mpo = mp.as_os_str();

    for url in ["127.0.0.1:9", "localhost:9"] {
        let e = refused(&with(&[], &[OsStr::new(url), mpo]), &mp);
        assert!(e.contains("http://"), "URL `{url}` without a scheme:\n{e}");
    }

    let e = refused(&with(&[], &[OsStr::new("http://127.0.0.1:9/")]), &mp);
    assert!(
        e.contains("MOUNTPOINT") && !e.contains("no origin"),
        "a missing mount point:\n{e}"
    );

    let write = |name: &str, text: &str| -> PathBuf {
        let p = tmp.path().join(name);
        fs::write(&p, text).unwrap();
        p
    };
    let origin_line = "origin = \"http://127.0.0.1:9/\"\n";
    for (name, bad) in [("a.toml", "ttl = [1\n"), ("b.toml", "ttl = 5 5\n")] {
        let file = write(name, &format!("{origin_line}{bad}"));
        let e = refused(&with(&["--config"], &[file.as_os_str(), mpo]), &mp);
        assert!(
            e.contains("line 2"),
            "{bad:?}: the error names the line:\n{e}"
        );
        assert!(
            e.contains(bad.trim()) || e.contains("expected"),
            "{bad:?}: the error shows more than `parse error`:\n{e}"
        );
    }
    let file = write("c.toml", &format!("{origin_line}ttl = [1, 2]\n"));
    let e = refused(&with(&["--config"], &[file.as_os_str(), mpo]), &mp);
    assert!(e.contains("ttl"), "ttl = [1, 2]:\n{e}");
    let file = write("d.toml", &format!("{origin_line}headers = \"X: y\"\n"));
    let e = refused(&with(&["--config"], &[file.as_os_str(), mpo]), &mp);
    assert!(e.contains("headers"), "headers = \"X: y\":\n{e}");

    let e = refused(
        &with(
            &["-o", "ttl=5,ttl=10"],
            &[OsStr::new("http://127.0.0.1:9/"), mpo],
        ),
        &mp,
    );
    assert!(e.contains("ttl"), "-o ttl=5,ttl=10:\n{e}");
    let e = refused(
        &with(&["-o", "=5"], &[OsStr::new("http://127.0.0.1:9/"), mpo]),
        &mp,
    );
    assert!(!e.trim().is_empty(), "-o =5 gives no message");
    let e = refused(&with(&[], &[OsStr::new("http:///nohost"), mpo]), &mp);
    assert!(!e.trim().is_empty(), "http:///nohost gives no message");
}

#[test]
fn c17_help_lists_every_key_and_install_help_installs_nothing() {
    common::require_mount!();
    let out = run_cli(["--help"], CLI_BOUND);
    assert!(out.success(), "{}", out.describe());
    let help = &out.stdout;
    for key in [
        "origin",
        "cache_dir",
        "block_size",
        "max_cache_size",
        "max_object_size",
        "max_unsized_object",
        "ttl",
        "negative_ttl",
        "listing_ttl",
        "connect_timeout",
        "receive_timeout",
        "request_timeout",
        "low_speed_limit",
        "low_speed_time",
        "allow_other",
        "default_permissions",
        "uid",
        "gid",
        "ca_file",
        "tls_pin",
        "headers",
        "header_file",
        "file_status",
        "dir_status",
        "fuse_threads",
        "log_file",
        "ignore_cache_control",
        "ttl_rule",
        "origin_fail_threshold",
        "origin_probe_interval",
        "origin_recover_threshold",
        "readahead_budget",
        "readahead_max",
        "passthrough",
        "direct_io_min_size",
        "unlink",
        "manifest",
        "dot_dir",
        "access_log",
        "metrics_addr",
    ] {
        assert!(
            help.lines()
                .any(|l| l.split_whitespace().next() == Some(key)),
            "--help does not list `{key}`:\n{help}"
        );
    }
    for word in [
        "purge",
        "expire",
        "hardpurge",
        "stats",
        "warm",
        "demo",
        "PATH",
        "MOUNTPOINT",
        "--json",
    ] {
        assert!(
            help.contains(word),
            "--help does not show `{word}`:\n{help}"
        );
    }

    let tmp = tempdir("ston-fs-hard-c17-");
    let dirs: Vec<PathBuf> = ["prefix", "sbin", "units"]
        .iter()
        .map(|d| {
            let p = tmp.path().join(d);
            fs::create_dir(&p).unwrap();
            p
        })
        .collect();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-helpers/install.sh");
    let mut child = Command::new("bash")
        .arg(&script)
        .arg("--prefix")
        .arg(&dirs[0])
        .arg("--sbindir")
        .arg(&dirs[1])
        .arg("--unitdir")
        .arg(&dirs[2])
        .arg("--help")
        .env("STON_FS_BIN", "/nonexistent/ston-fs")
        .stdin(Stdio::null())
        .stdout(File::create(tmp.path().join("out")).unwrap())
        .stderr(File::create(tmp.path().join("err")).unwrap())
        .spawn()
        .expect("bash");
    let status = wait_timeout(&mut child, CLI_BOUND);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = fs::read_to_string(tmp.path().join("out")).unwrap_or_default();
    let stderr = fs::read_to_string(tmp.path().join("err")).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "install.sh --help: {status:?}\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.to_ascii_lowercase().contains("usage"),
        "install.sh --help prints no usage line:\n{stdout}\n{stderr}"
    );
    for d in &dirs {
        assert_eq!(
            fs::read_dir(d).unwrap().count(),
            0,
            "install.sh --help installed into {}",
            d.display()
        );
    }
}

// ===========================================================================
// C18. ro, non-empty mount points, the demo
// ===========================================================================

#[test]
fn c18_ro_the_default_and_rw_show_in_mountinfo() {
    let Some(origin) = mount_origin() else { return };
    origin.put("/r.bin", pattern(1801, 100));
    for (opt, want) in [(Some("rw"), "rw"), (None, "ro")] {
        let mut b = Mount::builder(origin.url());
        if let Some(o) = opt {
            b = b.opt(o);
        }
        let m = b.mount();
        let entries = mounts_at(m.mountpoint());
        let e = entries
            .iter()
            .find(|e| e.fstype.starts_with("fuse"))
            .expect("mountinfo entry");
        assert!(
            e.options.split(',').any(|o| o == want),
            "with {opt:?}, mount options {:?} lack {want}",
            e.options
        );
        assert_eq!(
            read_file(&m.path("r.bin")).unwrap(),
            pattern(1801, 100).to_vec()
        );
    }
}

#[test]
fn c18_a_non_empty_mount_point_is_accepted_with_a_note() {
    let Some(origin) = mount_origin() else { return };
    let data = origin.put("/n.bin", pattern(1811, 5000)).data;
    let tmp = tempdir("ston-fs-hard-c18-");
    let mp = tmp.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    fs::write(mp.join("hidden.txt"), "under the mount").unwrap();
    let (out, mut daemon) = daemon_mount(&origin.url(), &mp, &tmp.path().join("cache"), &[], &[]);
    assert!(
        out.success(),
        "mount on a non-empty directory:\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("not empty"),
        "no note about the non-empty mount point:\n{}",
        out.describe()
    );
    assert!(is_fuse_mounted(&mp));
    assert_file_matches(&mp.join("n.bin"), &data, 4096);
    daemon.unmount();
    assert_eq!(
        fs::read_to_string(mp.join("hidden.txt")).unwrap(),
        "under the mount"
    );
}

/// A running `ston-fs demo`; stopped (SIGINT, then SIGKILL) and detached on drop.
struct Demo {
    child: Option<Child>,
    mountpoint: PathBuf,
}

impl Demo {
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGINT);
        }
        wait_or_kill(&mut child, Duration::from_secs(15))
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.stop();
        force_unmount_all(&self.mountpoint);
    }
}

#[test]
fn c18_the_demo_starts_with_an_empty_cache_each_time() {
    common::require_mount!();
    const README_START: &str = "This file comes from ston-fs's built-in demo origin.";
    let tmp = tempdir("ston-fs-hard-c18-");
    let mp = tmp.path().join("demo");
    fs::create_dir(&mp).unwrap();
    let mp = mp.canonicalize().unwrap();
    for run in 1..=2 {
        let out = tmp.path().join(format!("demo{run}.out"));
        let child = Command::new(BIN)
            .arg("demo")
            .arg(&mp)
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(tmp.path().join(format!("demo{run}.err"))).unwrap())
            .spawn()
            .expect("spawn demo");
        let mut demo = Demo {
            child: Some(child),
            mountpoint: mp.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_fuse_mounted(&mp) {
            let exited = demo.child.as_mut().unwrap().try_wait().ok().flatten();
            assert!(exited.is_none(), "demo run {run} exited: {exited:?}");
            assert!(Instant::now() < deadline, "demo run {run} did not mount");
            std::thread::sleep(Duration::from_millis(20));
        }
        let options: Vec<String> = mounts_at(&mp)
            .iter()
            .map(|m| format!("{},{}", m.options, m.super_options))
            .collect();
        assert!(
            options
                .iter()
                .any(|o| o.split(',').any(|w| w == "allow_other")),
            "demo run {run} is not mounted with allow_other (issue 20): {options:?}"
        );
        let s0 = stats_json(&mp);
        assert_eq!(
            num(&s0, "cache_objects"),
            0,
            "demo run {run} starts with cached objects:\n{s0:#}"
        );
        let text = read_file(&mp.join("README.txt"))
            .unwrap_or_else(|e| panic!("demo run {run}: README.txt: {e}"));
        assert!(
            String::from_utf8_lossy(&text).starts_with(README_START),
            "demo run {run}: README.txt is {:?}",
            String::from_utf8_lossy(&text)
        );
        // A small file comes whole with its lookup; its first read (through the daemon, as
        // opens send no message) or its open (in passthrough) carries the miss.
        let s = stats_json(&mp);
        let misses = num(&s, "read_misses") + num(&s, "open_misses");
        let hits = num(&s, "read_hits") + num(&s, "open_hits");
        assert!(
            misses >= 1 && hits == 0,
            "demo run {run}: the first read of README.txt is not a miss:\n{s:#}"
        );
        let status = demo.stop();
        assert!(
            status.is_some_and(|s| s.success()),
            "demo run {run} did not exit cleanly on SIGINT: {status:?}"
        );
        assert!(!is_mounted(&mp), "demo run {run} left its mount");
    }
}

// ===========================================================================
// D. The red team's second round (issue 20): every test failed before its fix.
// ===========================================================================

/// Rewrites every 206 of `path` into another version's bytes, with the given validators
/// dropped or changed: what an origin that swapped the file behind a cache would send.
fn splice_206s(origin: &Origin, path: &str, seed: u64, other_date: Option<String>) {
    origin.add_fault(Fault::path(
        path,
        FaultAction::Rewrite(Arc::new(move |_req, ans| {
            if ans.status == 206 {
                ans.body = pattern(seed, ans.body.len());
                ans.remove_header("etag");
                if let Some(date) = &other_date {
                    ans.set_header("last-modified", date.clone());
                }
            }
        })),
    ));
}

#[test]
fn d1_a_206_without_the_pinned_validator_is_a_version_change_never_a_splice() {
    common::require_mount!();
    const BLOCK: usize = 256 * KIB;
    let origin = Origin::start();
    let no_etag = pattern(2001, 4 * BLOCK + 11);
    let other_date = pattern(2002, 4 * BLOCK + 11);
    origin.put("/no-etag.bin", no_etag.clone());
    origin.put("/other-date.bin", other_date.clone());
    let m = Mount::builder(origin.url())
        .opt("block_size=256K,passthrough=false")
        .mount();
    // The lookups see the first version, with its ETag; the range requests after them get
    // another version's bytes.
    for name in ["no-etag.bin", "other-date.bin"] {
        stat(&m.path(name)).expect("stat");
    }
    splice_206s(&origin, "/no-etag.bin", 2003, None);
    let later = common::origin::http_date(1_800_000_000);
    splice_206s(&origin, "/other-date.bin", 2004, Some(later));
    for (name, want) in [("no-etag.bin", &no_etag), ("other-date.bin", &other_date)] {
        let f = open(&m.path(name));
        no_kernel_readahead(&f);
        let (got, err) = read_from(&f, 0);
        assert_bytes_eq(
            &got,
            &want[..got.len()],
            &format!("{name}: bytes before the EIO"),
        );
        assert_eq!(
            (err, got.len() < want.len()),
            (Some(EIO), true),
            "{name}: 206s without the pinned ETag gave {} bytes and {err:?}\n{}",
            got.len(),
            origin.describe_requests()
        );
    }
    let stats = stats_json(m.mountpoint());
    assert!(
        num(&stats, "reads_ended_by_version_change") >= 2,
        "{stats:#}"
    );
    let log = m.log();
    let warned = log_lines_with(&log, "version changed during a read");
    assert!(
        warned
            .iter()
            .any(|l| l.contains("no-etag.bin") && l.contains("ETag none")),
        "the WARN names the path and both versions' validators:\n{}",
        tail(&log, 4000)
    );
}

#[test]
fn d8_a_shorter_honest_206_is_served_and_the_rest_fetched() {
    common::require_mount!();
    const BLOCK: usize = 64 * KIB;
    let origin = Origin::start();
    let data = pattern(2081, 40 * BLOCK + 5);
    origin.put("/short.bin", data.clone());
    let shortened = Arc::new(AtomicU64::new(0));
    let count = shortened.clone();
    origin.add_fault(Fault::path(
        "/short.bin",
        FaultAction::Rewrite(Arc::new(move |_req, ans| {
            let Some(range) = ans.header("content-range").map(str::to_string) else {
                return;
            };
            if ans.status != 206 || ans.body.len() < 2 * BLOCK {
                return;
            }
            // "bytes a-b/total" becomes a legal, shorter "bytes a-c/total".
            let (span, total) = range["bytes ".len()..].split_once('/').unwrap();
            let start: u64 = span.split_once('-').unwrap().0.parse().unwrap();
            let keep = ans.body.len() / 2 + 1000;
            ans.body = ans.body.slice(..keep);
            let end = start + keep as u64 - 1;
            ans.set_header("content-range", format!("bytes {start}-{end}/{total}"));
            count.fetch_add(1, Ordering::Relaxed);
        })),
    ));
    let m = Mount::builder(origin.url())
        .opt("block_size=64K,passthrough=false")
        .mount();
    let got = read_file(&m.path("short.bin"))
        .unwrap_or_else(|e| panic!("read: {e}\n{}", tail(&m.log(), 4000)));
    assert_bytes_eq(&got, &data, "short.bin read through shorter 206s");
    assert!(
        shortened.load(Ordering::Relaxed) > 0,
        "no answer was shortened:\n{}",
        origin.describe_requests()
    );
}

#[test]
fn d6_unsupported_calls_are_quiet_and_a_repeated_warning_is_capped() {
    common::require_mount!();
    const BLOCK: usize = 64 * KIB;
    let origin = Origin::start();
    for i in 0..25 {
        origin.put(&format!("/v{i}.bin"), pattern(2060 + i, 3 * BLOCK));
    }
    let m = Mount::builder(origin.url())
        .opt("block_size=64K,passthrough=false")
        .mount();
    let f = open(&m.path("v0.bin"));
    for _ in 0..2000 {
        let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: TCGETS writes one termios into the buffer given; the file stays open.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                libc::TCGETS,
                termios.as_mut_ptr(),
            )
        };
        let err = std::io::Error::last_os_error().raw_os_error();
        assert_eq!((rc, err), (-1, Some(libc::ENOTTY)), "isatty on the mount");
    }
    drop(f);
    // 25 reads that each end with a version change: each counted, few logged.
    for i in 0..25 {
        let path = format!("/v{i}.bin");
        stat(&m.path(&path[1..])).expect("stat");
        splice_206s(&origin, &path, 2090 + i, None);
        let (_, err) = read_outcome(&m.path(&path[1..]));
        assert_eq!(err, Some(EIO), "{path}");
    }
    let stats = stats_json(m.mountpoint());
    assert!(
        num(&stats, "reads_ended_by_version_change") >= 25,
        "{stats:#}"
    );
    let log = m.log();
    assert!(
        log_lines_with(&log, "Not Implemented").is_empty() && log.len() < 64 * KIB,
        "ioctls were logged ({} bytes of log):\n{}",
        log.len(),
        tail(&log, 4000)
    );
    let warned = log_lines_with(&log, "version changed during a read").len();
    assert!(
        (1..=10).contains(&warned),
        "{warned} lines for one repeated warning:\n{}",
        tail(&log, 4000)
    );
}

#[test]
fn d2_thousands_of_open_files_never_exhaust_the_daemons_descriptors() {
    common::require_mount!();
    const FILES: usize = 400;
    let origin = Origin::start();
    let files: Vec<Bytes> = (0..FILES)
        .map(|i| pattern(2200 + i as u64, 20 * KIB + i))
        .collect();
    for (i, data) in files.iter().enumerate() {
        origin.put(&format!("/many/f{i}.bin"), data.clone());
    }
    origin.put("/late.bin", pattern(2199, 300 * KIB));
    let m = Mount::builder(origin.url())
        .opt("block_size=64K,passthrough=false")
        .max_open_files(256)
        .mount();
    let mut open_files = Vec::new();
    for (i, data) in files.iter().enumerate() {
        let f = open(&m.path(&format!("many/f{i}.bin")));
        let got = pread(&f, 0, data.len() + 1).unwrap_or_else(|e| {
            panic!(
                "read f{i} with {i} files open: {e}\n{}",
                tail(&m.log(), 4000)
            )
        });
        assert_bytes_eq(&got, data, &format!("f{i}"));
        open_files.push(f);
    }
    // Every file again while all stay open: from the cache, each through a descriptor.
    for (f, data) in open_files.iter().zip(&files) {
        assert_bytes_eq(&pread(f, 0, data.len()).expect("reread"), data, "reread");
    }
    let late = read_file(&m.path("late.bin")).expect("a cold file with 400 files open");
    assert_bytes_eq(&late, &origin.content("/late.bin"), "late.bin");
    let stats = stats_json(m.mountpoint());
    assert!(num(&stats, "cache_objects") as usize > FILES, "{stats:#}");
    let log = m.log();
    assert!(
        log_lines_with(&log, "Too many open files").is_empty(),
        "{}",
        tail(&log, 4000)
    );
}

#[test]
fn d3_the_control_socket_outlives_an_accept_that_fails() {
    common::require_mount!();
    let origin = Origin::start();
    origin.put("/x.bin", pattern(2301, 1000));
    let m = Mount::builder(origin.url()).mount();
    let pid = m.pid().expect("daemon pid");
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let prlimit = |soft: usize| {
        let out = Command::new("prlimit")
            .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
            .output()
            .expect("run prlimit");
        assert!(out.status.success(), "prlimit: {out:?}");
    };
    // No descriptor left: the next accept fails with EMFILE.
    prlimit(fds.saturating_sub(2));
    let mp = m.mountpoint().to_path_buf();
    let waiting = std::thread::spawn(move || {
        run_cli(
            [OsStr::new("stats"), mp.as_os_str(), OsStr::new("--json")],
            Duration::from_secs(20),
        )
    });
    std::thread::sleep(Duration::from_secs(1));
    prlimit(4096);
    let first = waiting.join().unwrap();
    let again = stats_json(m.mountpoint());
    assert!(num(&again, "cache_cap") > 0, "{again:#}");
    // The request made during the spell is answered once descriptors are back, or at worst
    // fails alone; what matters is that the socket still answers after it.
    assert!(
        first.success() || !first.timed_out(),
        "stats during the spell: {}",
        first.describe()
    );
}

#[test]
fn d9_only_root_and_the_mounting_user_purge_through_unlink() {
    common::require_mount!();
    let origin = Origin::start();
    let data = pattern(2901, 100 * KIB);
    origin.put("/p.bin", data.clone());
    let m = Mount::builder(origin.url())
        .opt("allow_other,default_permissions=false,rw")
        .mount();
    let top = m.mountpoint().parent().unwrap().to_path_buf();
    fs::set_permissions(&top, fs::Permissions::from_mode(0o755)).unwrap();
    assert_bytes_eq(&read_file(&m.path("p.bin")).unwrap(), &data, "first read");
    let fetched = origin.request_count_for("/p.bin");
    let as_nobody = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "rm",
            "-f",
        ])
        .arg(m.path("p.bin"))
        .output()
        .expect("run setpriv");
    let said = String::from_utf8_lossy(&as_nobody.stderr);
    assert!(
        !as_nobody.status.success() && said.contains("Operation not permitted"),
        "nobody's rm: {as_nobody:?}"
    );
    drop_page_cache(&m.path("p.bin"));
    assert_bytes_eq(
        &read_file(&m.path("p.bin")).unwrap(),
        &data,
        "after nobody's rm",
    );
    assert_eq!(
        origin.request_count_for("/p.bin"),
        fetched,
        "nobody's rm purged the object"
    );
    fs::remove_file(m.path("p.bin")).expect("root's rm purges");
    drop_page_cache(&m.path("p.bin"));
    assert_bytes_eq(
        &read_file(&m.path("p.bin")).unwrap(),
        &data,
        "after root's rm",
    );
    assert!(
        origin.request_count_for("/p.bin") > fetched,
        "root's rm did not purge"
    );
}

#[test]
fn d7_a_crash_loop_never_ends_a_live_mount_and_the_logs_say_so() {
    common::require_mount!();
    let origin = Origin::start();
    let data = pattern(2701, 300 * KIB);
    origin.put("/loop.bin", data.clone());
    let tmp = tempdir("ston-fs-hard-d7-");
    let mp = tmp.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let cache = tmp.path().join("cache");
    let no_syslog = tmp.path().join("no-syslog.sock");
    let (out, daemon) = daemon_mount(
        &origin.url(),
        &mp,
        &cache,
        &[],
        &[("STON_FS_SYSLOG_SOCKET", no_syslog.as_os_str())],
    );
    assert!(out.success(), "{}", out.describe());
    let log_file = cache.join("ston-fs.log");
    assert!(
        out.stderr.contains("logging to") && out.stderr.contains(&*log_file.to_string_lossy()),
        "the launcher says where logs go without a syslog socket:\n{}",
        out.describe()
    );
    let mut killed = Vec::new();
    for round in 0..11 {
        kill_next(&mp, true, &mut killed);
        assert!(is_fuse_mounted(&mp), "round {round}: the mount is gone");
    }
    // The eleventh death in a minute is a crash loop: the mount is kept, the next worker
    // comes after the loop's pause, and reads work again.
    let got = read_file(&mp.join("loop.bin")).expect("read after the crash loop");
    assert_bytes_eq(&got, &data, "loop.bin");
    let log = fs::read_to_string(&log_file).expect("the fallback log file");
    assert!(
        log.contains("ERROR") && log.contains("the mount is kept"),
        "{}",
        tail(&log, 4000)
    );
    drop(daemon);
}

/// The pids of the processes serving `mountpoint` in one role, leaving out `dead`.
fn role_pids(mountpoint: &Path, worker: bool, dead: &[i32]) -> Vec<i32> {
    ston_fs_pids_with_arg(mountpoint)
        .into_iter()
        .filter(|pid| !dead.contains(pid))
        .filter(|pid| {
            let is_worker = fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"--worker"));
            is_worker == worker
        })
        .collect()
}

/// Waits (bounded) for a process of that role that is not among `dead`, and kills it.
fn kill_next(mountpoint: &Path, worker: bool, dead: &mut Vec<i32>) {
    let (mp, gone) = (mountpoint.to_path_buf(), dead.clone());
    let what = if worker { "a worker" } else { "a supervisor" };
    let pid = bounded(what, Duration::from_secs(20), move || loop {
        if let Some(pid) = role_pids(&mp, worker, &gone).first() {
            return *pid;
        }
        std::thread::sleep(Duration::from_millis(20));
    });
    // SAFETY: kill sends a signal to a pid just read from /proc; nothing else is touched.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    dead.push(pid);
}

#[test]
fn f3_the_supervisor_is_no_single_point_of_failure() {
    common::require_mount!();
    const FILE: usize = 8 * MIB;
    let origin = Origin::start();
    let files: Vec<Bytes> = (0..4).map(|i| pattern(2500 + i, FILE)).collect();
    for (i, data) in files.iter().enumerate() {
        origin.put(&format!("/r{i}.bin"), data.clone());
    }
    let tmp = tempdir("ston-fs-hard-f3-");
    let mp = tmp.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let (out, daemon) = daemon_mount(
        &origin.url(),
        &mp,
        &tmp.path().join("cache"),
        &["passthrough=false", "block_size=256K"],
        &[],
    );
    assert!(out.success(), "{}", out.describe());
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(i, data)| {
            let (path, data, stop) = (mp.join(format!("r{i}.bin")), data.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut checked = 0u64;
                let file = File::open(&path).expect("open");
                while !stop.load(Ordering::Relaxed) && checked < 1 << 40 {
                    common::drop_pages_of(&file);
                    let got = pread_full(&file, 0, FILE).map_err(|e| format!("{path:?}: {e}"))?;
                    if got != data[..] {
                        return Err(format!("{path:?}: wrong bytes"));
                    }
                    checked += got.len() as u64;
                }
                Ok(checked)
            })
        })
        .collect();
    let mut dead = Vec::new();
    for round in 0..3 {
        kill_next(&mp, false, &mut dead);
        std::thread::sleep(Duration::from_millis(300));
        kill_next(&mp, true, &mut dead);
        std::thread::sleep(Duration::from_millis(300));
        assert!(is_fuse_mounted(&mp), "round {round}: the mount is gone");
    }
    // The readers go on a while with the last worker and supervisor.
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for (i, reader) in readers.into_iter().enumerate() {
        let checked = reader.join().expect("reader thread").unwrap_or_else(|e| {
            let log = fs::read_to_string(tmp.path().join("cache/ston-fs.log")).unwrap_or_default();
            panic!("reader {i}: {e}\n{}", tail(&log, 6000))
        });
        assert!(checked >= FILE as u64, "reader {i} checked {checked} bytes");
    }
    bounded(
        "a supervisor and a worker again",
        Duration::from_secs(20),
        {
            let (mp, dead) = (mp.clone(), dead.clone());
            move || {
                while role_pids(&mp, true, &dead).is_empty()
                    || role_pids(&mp, false, &dead).is_empty()
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        },
    );
    let log = fs::read_to_string(tmp.path().join("cache/ston-fs.log")).unwrap_or_default();
    assert!(
        log.contains("the supervisor died; a new one holds the mount's descriptors"),
        "{}",
        tail(&log, 4000)
    );
    drop(daemon);
}

#[test]
fn d5_answers_without_a_length_share_one_memory_budget() {
    common::require_mount!();
    const EACH: usize = 100 * MIB;
    const LOOKUPS: usize = 6;
    let body = pattern(2501, EACH);
    let files: Vec<(String, Bytes, Style)> = (0..LOOKUPS)
        .map(|i| (format!("/endless{i}.bin"), body.clone(), Style::Chunked))
        .collect();
    let borrowed: Vec<(&str, Bytes, Style)> = files
        .iter()
        .map(|(p, b, s)| (p.as_str(), b.clone(), *s))
        .collect();
    let server = RawServer::start(&borrowed, None);
    let m = Mount::builder(server.url())
        .opt("max_unsized_object=200M,receive_timeout=30,request_timeout=60")
        .mount();
    let stats: Vec<_> = (0..LOOKUPS)
        .map(|i| {
            let path = m.path(&format!("endless{i}.bin"));
            std::thread::spawn(move || fs::metadata(path).map(|md| md.len()))
        })
        .collect();
    let outcomes: Vec<_> = stats.into_iter().map(|t| t.join().unwrap()).collect();
    let served = outcomes.iter().filter(|r| r.is_ok()).count();
    for outcome in &outcomes {
        match outcome {
            Ok(len) => assert_eq!(*len, EACH as u64),
            Err(e) => assert_eq!(e.raw_os_error(), Some(EIO), "{e}"),
        }
    }
    let peak = memory_bytes(m.pid().expect("pid"), "VmHWM");
    assert!(
        (1..LOOKUPS).contains(&served),
        "{served} of {LOOKUPS} unsized answers of 100 MiB were held at once"
    );
    assert!(
        peak < 700 * MIB as u64,
        "peak RSS {} MiB with a 256 MiB budget for unsized answers",
        peak >> 20
    );
}
