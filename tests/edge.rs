//! Edge-case integration tests for ston-fs: virtual hosts, origins that
//! ignore Range, extra headers (and that they are never logged), an origin
//! that is gone at mount time, https with `ca_file`, a cache disk that fills
//! up, and names that try to escape the origin prefix. Every test mounts the
//! real binary and asserts exact bytes or exact errno.

mod common;
#[path = "tls/mod.rs"]
mod tls;

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::mount::{
    force_unmount_all, is_mounted, run_cli, tail, umount2, Mount, BIN, EXIT_TIMEOUT,
};
use common::mount_origin;
use common::origin::{pattern, Fault, FaultAction, Origin, RequestRecord};
use common::{
    assert_bytes_eq, assert_file_matches, assert_random_preads, drop_page_cache, errno, pread_full,
    KIB, MIB,
};
use percent_encoding::percent_decode_str;
use tls::TlsOrigin;

const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for one file-system call that must not hang (a hang fails the
/// test; it is not a timing assertion).
const CALL_BOUND: Duration = Duration::from_secs(60);

/// Runs `f` on a helper thread and fails the test if it does not return
/// within `CALL_BOUND` (a hung FUSE request must fail the test, not hang it).
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(CALL_BOUND) {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {CALL_BOUND:?} (hung)"),
    }
}

// ---------------------------------------------------------------------------
// A foreground daemon started with our own arguments (for `--config FILE
// MOUNTPOINT` without an ORIGIN positional, which the shared builder always
// passes).
// ---------------------------------------------------------------------------

/// Detaches whatever is mounted on the path when dropped.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        force_unmount_all(&self.0);
    }
}

fn host_of(r: &RequestRecord) -> Option<&str> {
    r.header("host")
}

// ---------------------------------------------------------------------------
// 1. Virtual hosts
// ---------------------------------------------------------------------------

#[test]
fn vhosts_route_by_first_component_with_canonical_host() {
    let Some(a) = mount_origin() else { return };
    let b = Origin::start();
    let a_x = a.put("/x.txt", pattern(1001, 3000)).data;
    let b_y = b.put("/pre/y.txt", pattern(1002, 200 * KIB + 11)).data;
    // Decoys: what a request without the prefix, or to the wrong origin,
    // would get.
    b.put("/y.txt", Bytes::from_static(b"B without its prefix\n"));
    b.put("/x.txt", Bytes::from_static(b"wrong origin (B)\n"));
    a.put("/y.txt", Bytes::from_static(b"wrong origin (A)\n"));

    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let cfg = tmp.path().join("vhosts.toml");
    fs::write(
        &cfg,
        format!(
            "cache_dir = \"{cache}\"\nblock_size = \"64K\"\n\n\
             [[vhost]]\nname = \"a.example\"\n\
             aliases = [\"www.a.example\", \"*.img.a.example\"]\norigin = \"{a}\"\n\n\
             [[vhost]]\nname = \"b.example\"\norigin = \"{b}\"\n",
            cache = cache.display(),
            a = a.url(),
            b = b.url_with_prefix("pre"),
        ),
    )
    .unwrap();
    let d = Mount::with_config(&cfg).mount();

    // Root listing: the canonical names.
    let names: BTreeSet<String> = fs::read_dir(d.mountpoint())
        .expect("readdir of the mount root")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for want in ["a.example", "b.example"] {
        assert!(
            names.contains(want),
            "readdir of the root should list {want}, got {names:?}"
        );
    }

    // Each name reads x.txt and one file nobody read before, so that every
    // name is seen making its own origin request.
    for (i, dir) in ["a.example", "www.a.example", "cdn.img.a.example"]
        .into_iter()
        .enumerate()
    {
        let fresh_path = format!("/fresh-{i}.bin");
        let fresh = pattern(1100 + i as u64, 70 * KIB + i);
        a.put(&fresh_path, fresh.clone());
        a.reset();
        let rel = format!("{dir}/x.txt");
        let got = fs::read(d.path(&rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"));
        assert_bytes_eq(&got, &a_x, &rel);
        let rel2 = format!("{dir}{fresh_path}");
        let got = fs::read(d.path(&rel2)).unwrap_or_else(|e| panic!("read {rel2}: {e}"));
        assert_bytes_eq(&got, &fresh, &rel2);
        a.settle();
        if i == 0 {
            assert!(
                !a.requests_for("/x.txt").is_empty(),
                "{rel}: no request reached origin A\n{}",
                a.describe_requests()
            );
        }
        assert!(
            !a.requests_for(&fresh_path).is_empty(),
            "{rel2}: no request reached origin A\n{}",
            a.describe_requests()
        );
        for r in a.requests() {
            assert_eq!(
                host_of(&r),
                Some("a.example"),
                "via {dir}: origin A request should carry Host: a.example: {r:?}"
            );
            assert!(
                r.path == "/x.txt" || r.path == fresh_path,
                "via {dir}: unexpected request {r:?}"
            );
        }
    }

    let got = fs::read(d.path("b.example/y.txt")).expect("read b.example/y.txt");
    assert_bytes_eq(&got, &b_y, "b.example/y.txt");
    let f = File::open(d.path("b.example/y.txt")).unwrap();
    assert_random_preads(&f, &b_y, 7, 40, 100 * KIB, "b.example/y.txt");
    drop(f);
    b.settle();
    let b_reqs = b.requests();
    assert!(
        b_reqs.iter().any(|r| r.path == "/pre/y.txt"),
        "origin B never saw /pre/y.txt\n{}",
        b.describe_requests()
    );
    for r in &b_reqs {
        assert!(
            r.path.starts_with("/pre/"),
            "origin B request without the /pre/ prefix: {r:?}"
        );
        assert_eq!(
            host_of(r),
            Some("b.example"),
            "origin B request should carry Host: b.example: {r:?}"
        );
    }

    // Unknown hosts are ENOENT, also near-misses of the wildcard alias.
    for unknown in [
        "c.example",
        "img.a.example.evil",
        "evilimg.a.example",
        "a.example.b.example",
    ] {
        let r = fs::metadata(d.path(unknown));
        assert_eq!(
            errno(&r),
            Some(libc::ENOENT),
            "unknown host dir {unknown} should be ENOENT, got {r:?}"
        );
        let r = fs::read(d.path(&format!("{unknown}/x.txt")));
        assert_eq!(
            errno(&r),
            Some(libc::ENOENT),
            "{unknown}/x.txt should be ENOENT, got {r:?}"
        );
    }
    // Nothing about the unknown hosts reached either origin as another host.
    a.settle();
    for r in a.requests() {
        assert_eq!(host_of(&r), Some("a.example"), "{r:?}");
    }
    for r in b.requests() {
        assert_eq!(host_of(&r), Some("b.example"), "{r:?}");
    }
    d.unmount();
}

// ---------------------------------------------------------------------------
// 2. Origins that ignore Range
// ---------------------------------------------------------------------------

#[test]
fn origin_ignoring_range_is_read_exactly_and_kept() {
    const BS: usize = 64 * KIB;
    let Some(origin) = mount_origin() else { return };
    origin.add_fault(Fault::global(FaultAction::IgnoreRange));
    let seq = pattern(2001, 5 * MIB + 17);
    let rnd = pattern(2002, 5 * MIB + 17);
    origin.put("/seq.bin", seq.clone());
    origin.put("/rnd.bin", rnd.clone());
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    fs::create_dir(&cache).unwrap();

    let m = Mount::builder(origin.url())
        .cache_dir(&cache)
        .opt(format!("block_size={}K", BS / KIB))
        .arg("-v")
        .mount();
    // Sequential, odd buffer size (crosses block boundaries at odd places).
    assert_file_matches(&m.path("seq.bin"), &seq, 100 * KIB + 3);
    // Random preads on a cold file, then a full pass.
    let f = File::open(m.path("rnd.bin")).unwrap();
    assert_random_preads(&f, &rnd, 21, 120, 3 * BS, "rnd.bin cold");
    drop(f);
    assert_file_matches(&m.path("rnd.bin"), &rnd, 4097);
    origin.settle();
    let statuses: BTreeSet<u16> = origin.requests().iter().map(|r| r.status).collect();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "the origin should only have answered 200 (IgnoreRange)\n{}",
        origin.describe_requests()
    );

    // A second full read (page cache dropped, so it reaches the daemon)
    // makes no origin request: every block that went by was kept.
    origin.reset();
    for (name, data) in [("seq.bin", &seq), ("rnd.bin", &rnd)] {
        drop_page_cache(&m.path(name));
        assert_file_matches(&m.path(name), data, 128 * KIB);
        let f = File::open(m.path(name)).unwrap();
        assert_random_preads(&f, data, 22, 60, 3 * BS, &format!("{name} warm"));
    }
    origin.settle();
    assert_eq!(
        origin.request_count(),
        0,
        "second read should come from the cache\n{}",
        origin.describe_requests()
    );
    m.unmount();

    // And it was kept on disk: a remount on the same cache reads both files
    // without a single origin request.
    origin.reset();
    let m = Mount::builder(origin.url())
        .cache_dir(&cache)
        .opt(format!("block_size={}K", BS / KIB))
        .mount();
    assert_file_matches(&m.path("seq.bin"), &seq, MIB);
    let f = File::open(m.path("rnd.bin")).unwrap();
    assert_random_preads(&f, &rnd, 23, 60, 3 * BS, "rnd.bin after remount");
    drop(f);
    assert_file_matches(&m.path("rnd.bin"), &rnd, MIB);
    origin.settle();
    assert_eq!(
        origin.request_count(),
        0,
        "reads after a remount should come from the cache\n{}",
        origin.describe_requests()
    );
    m.unmount();
}

// ---------------------------------------------------------------------------
// 3. Extra headers are sent and never logged
// ---------------------------------------------------------------------------

const SECRET: &str = "s3cr3t-token";

/// Drives a mount through successes and errors, then checks that every
/// origin request carried the headers and the log never shows the secret.
fn exercise_headers(origin: &Origin, m: Mount, extra: Option<(&str, &str)>) {
    let ok = origin.content("/ok.bin");
    assert_file_matches(&m.path("ok.bin"), &ok, 64 * KIB);
    let r = fs::metadata(m.path("boom.txt"));
    assert_eq!(errno(&r), Some(libc::EIO), "500 should be EIO: {r:?}");
    let r = fs::read(m.path("dir/boom502.bin"));
    assert_eq!(errno(&r), Some(libc::EIO), "502 should be EIO: {r:?}");
    let r = fs::metadata(m.path("missing.txt"));
    assert_eq!(errno(&r), Some(libc::ENOENT), "404 should be ENOENT: {r:?}");
    assert!(fs::metadata(m.path("dir")).unwrap().is_dir());
    assert_eq!(
        fs::read(m.path("dir/small.txt")).unwrap(),
        b"small\n",
        "dir/small.txt"
    );
    origin.settle();

    let reqs = origin.requests();
    assert!(
        reqs.iter().all(|r| r.method == "GET"),
        "unexpected methods: {reqs:?}"
    );
    assert!(
        reqs.iter().any(|r| r.status == 500) && reqs.iter().any(|r| r.status == 502),
        "the error paths were not requested\n{}",
        origin.describe_requests()
    );
    for r in &reqs {
        assert_eq!(
            r.header("authorization"),
            Some("Bearer s3cr3t-token"),
            "request without the Authorization header: {} {}",
            r.method,
            r.target
        );
        if let Some((name, value)) = extra {
            assert_eq!(
                r.header(name),
                Some(value),
                "request without {name}: {} {}",
                r.method,
                r.target
            );
        }
    }
    let log = m.unmount();
    assert!(
        !log.trim().is_empty(),
        "expected debug output with -v, the log is empty"
    );
    for needle in [SECRET, "s3cr3t"] {
        if let Some(i) = log.find(needle) {
            let start = log[..i].rfind('\n').map_or(0, |p| p + 1);
            let end = log[i..].find('\n').map_or(log.len(), |p| i + p);
            panic!(
                "the daemon log contains the header value ({needle:?}):\n{}",
                &log[start..end]
            );
        }
    }
}

fn header_origin() -> Origin {
    let origin = Origin::start();
    origin.put("/ok.bin", pattern(3001, 300 * KIB + 9));
    origin.put("/boom.txt", Bytes::from_static(b"never served\n"));
    origin.put("/dir/boom502.bin", Bytes::from_static(b"never served\n"));
    origin.put("/dir/small.txt", Bytes::from_static(b"small\n"));
    origin.add_fault(Fault::path("/boom.txt", FaultAction::Status(500)));
    origin.add_fault(Fault::path("/dir/boom502.bin", FaultAction::Status(502)));
    origin
}

#[test]
fn extra_headers_are_sent_and_never_logged() {
    common::require_mount!();
    // -o header=..., -v
    let origin = header_origin();
    let m = Mount::builder(origin.url())
        .opt(format!("header=Authorization: Bearer {SECRET}"))
        .opt("block_size=64K")
        .arg("-v")
        .mount();
    exercise_headers(&origin, m, None);

    // headers = [...] in a TOML file, -vv (trace)
    let origin = header_origin();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("headers.toml");
    fs::write(
        &cfg,
        format!(
            "block_size = \"64K\"\nheaders = [\"Authorization: Bearer {SECRET}\", \"X-Edge-Test: yes\"]\n"
        ),
    )
    .unwrap();
    let m = Mount::builder(origin.url())
        .arg("--config")
        .arg(&cfg)
        .arg("-vv")
        .mount();
    exercise_headers(&origin, m, Some(("x-edge-test", "yes")));
}

// ---------------------------------------------------------------------------
// 4. An unreachable origin at mount time is not a mount failure
// ---------------------------------------------------------------------------

/// PIDs of ston-fs processes whose command line names `mnt`.
fn daemon_pids(mnt: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    let want = mnt.as_os_str().as_bytes();
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is_ours = args
            .first()
            .is_some_and(|a| a.ends_with(b"ston-fs") || *a == BIN.as_bytes());
        if is_ours && args.contains(&want) {
            out.push(pid);
        }
    }
    out
}

/// Waits (bounded) for the daemons of `mnt` to exit; SIGKILLs (by pid) any
/// that do not. Returns whether they all exited by themselves.
fn reap_daemons(mnt: &Path) -> bool {
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        let pids = daemon_pids(mnt);
        if pids.is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            for pid in pids {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Detaches the mount and reaps its daemonized ston-fs on drop.
struct DaemonizedGuard(PathBuf);

impl Drop for DaemonizedGuard {
    fn drop(&mut self) {
        force_unmount_all(&self.0);
        reap_daemons(&self.0);
    }
}

fn check_offline_mount(mnt: &Path, cached: &str, data: &Bytes) {
    let p = mnt.join(cached);
    let p2 = p.clone();
    let md = bounded("stat of the cached file", move || fs::metadata(p2));
    let md = md.unwrap_or_else(|e| panic!("stat cached file with the origin down: {e}"));
    assert_eq!(md.len(), data.len() as u64);
    let (p2, want) = (p.clone(), data.clone());
    bounded("read of the cached file", move || {
        assert_file_matches(&p2, &want, 100 * KIB + 1)
    });
    let f = File::open(&p).unwrap();
    assert_random_preads(&f, data, 41, 50, 200 * KIB, "cached.bin offline");
    drop(f);

    for rel in ["uncached.bin", "media/uncached.bin", "never/seen.txt"] {
        let q = mnt.join(rel);
        let r = bounded("lookup of an uncached path", move || fs::metadata(q));
        let e = errno(&r);
        assert!(
            e == Some(libc::ENOENT) || e == Some(libc::EIO),
            "{rel} with the origin down should be ENOENT or EIO, got {r:?}"
        );
        let q = mnt.join(rel);
        let r = bounded("read of an uncached path", move || fs::read(q));
        let e = errno(&r);
        assert!(
            e == Some(libc::ENOENT) || e == Some(libc::EIO),
            "reading {rel} with the origin down should be ENOENT or EIO, got {:?}",
            r.map(|v| v.len())
        );
    }
}

#[test]
fn unreachable_origin_at_mount_time_serves_the_cache() {
    common::require_mount!();
    offline_remount("cached.bin", 4001);
}

/// The same with the cached file one directory down: the directory itself
/// was only ever learnt from the origin (a 301), which is gone after the
/// restart.
#[test]
fn unreachable_origin_at_mount_time_serves_cached_file_in_subdir() {
    common::require_mount!();
    offline_remount("media/cached.bin", 4003);
}

/// Mount, read `cached` fully, unmount; stop the origin; mount again (`-f`,
/// then daemonized) on the same cache: `cached` reads exactly, uncached
/// paths are ENOENT/EIO without hanging.
fn offline_remount(cached: &str, seed: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let data = pattern(seed, 3 * MIB + 333);
    let origin = Origin::start();
    origin.put(&format!("/{cached}"), data.clone());
    origin.put("/uncached.bin", pattern(seed + 100, 1000));
    origin.put("/media/uncached.bin", pattern(seed + 101, 1000));
    let url = origin.url();
    let addr = origin.addr();
    const OPTS: &str = "block_size=256K,connect_timeout=1,receive_timeout=2";

    let m = Mount::builder(&url).cache_dir(&cache).opt(OPTS).mount();
    assert_file_matches(&m.path(cached), &data, MIB);
    origin.settle();
    m.unmount();

    // Stop the origin; wait (bounded) until its port refuses connections.
    drop(origin);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the stopped origin still accepts connections"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Foreground mount with the origin gone.
    let m = Mount::builder(&url).cache_dir(&cache).opt(OPTS).mount();
    check_offline_mount(m.mountpoint(), cached, &data);
    assert!(m.is_mounted());
    m.unmount();

    // Daemonized mount with the origin gone: the launcher exits 0 once the
    // mount is live.
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let guard = DaemonizedGuard(mnt.clone());
    let log_file = tmp.path().join("daemon.log");
    let out = run_cli(
        [
            OsStr::new("--cache-dir"),
            cache.as_os_str(),
            OsStr::new("-o"),
            OsStr::new(&format!("{OPTS},log_file={}", log_file.display())),
            OsStr::new(&url),
            mnt.as_os_str(),
        ],
        CLI_TIMEOUT,
    );
    let daemon_log =
        || String::from_utf8_lossy(&fs::read(&log_file).unwrap_or_default()).into_owned();
    assert!(
        out.success(),
        "daemonized mount with the origin down should exit 0\n{}\n--- log_file ---\n{}",
        out.describe(),
        tail(&daemon_log(), 8000)
    );
    assert!(is_mounted(&mnt), "launcher exited 0 but nothing is mounted");
    check_offline_mount(&mnt, cached, &data);
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        match umount2(&mnt, 0) {
            Ok(()) => break,
            Err(e) if e == libc::EBUSY && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!(
                "umount of the daemonized mount: {}",
                std::io::Error::from_raw_os_error(e)
            ),
        }
    }
    assert!(
        reap_daemons(&mnt),
        "the daemonized ston-fs did not exit after umount\n{}",
        tail(&daemon_log(), 8000)
    );
    drop(guard);
}

// ---------------------------------------------------------------------------
// 5. https with ca_file
// ---------------------------------------------------------------------------

#[test]
fn https_origin_needs_ca_file_and_serves_exact_bytes() {
    common::require_mount!();
    let origin = TlsOrigin::start();
    let hello = Bytes::from_static(b"hello over TLS\n");
    let big = pattern(5001, 2 * MIB + 4097);
    origin.put("/hello.txt", hello.clone());
    origin.put("/media/big.bin", big.clone());

    // Without ca_file: the mount comes up, but the certificate is not
    // trusted, so any access is EIO (there is no insecure mode).
    let m = Mount::builder(origin.url())
        .opt("connect_timeout=2,receive_timeout=5")
        .mount();
    let p = m.path("hello.txt");
    let r = bounded("read over untrusted TLS", move || fs::read(p));
    assert_eq!(
        errno(&r),
        Some(libc::EIO),
        "untrusted certificate: reading should be EIO, got {:?}",
        r.map(|v| v.len())
    );
    let p = m.path("media/big.bin");
    let r = bounded("stat over untrusted TLS", move || fs::metadata(p));
    assert_eq!(
        errno(&r),
        Some(libc::EIO),
        "untrusted certificate: stat should be EIO, got {r:?}"
    );
    assert!(
        origin.requests().is_empty(),
        "no HTTP request may pass an untrusted handshake: {:?}",
        origin.requests()
    );
    assert!(
        origin.handshakes_failed() >= 1,
        "expected a failed TLS handshake (ok {}, failed {})",
        origin.handshakes_ok(),
        origin.handshakes_failed()
    );
    m.unmount();

    // With ca_file: exact bytes.
    origin.reset();
    let m = Mount::builder(origin.url())
        .opt(format!("ca_file={}", origin.ca_pem().display()))
        .opt("block_size=64K")
        .mount();
    let got = fs::read(m.path("hello.txt")).expect("read hello.txt over TLS");
    assert_bytes_eq(&got, &hello, "hello.txt");
    let f = File::open(m.path("media/big.bin")).expect("open big.bin over TLS");
    assert_random_preads(&f, &big, 51, 60, 200 * KIB, "big.bin over TLS");
    drop(f);
    assert_file_matches(&m.path("media/big.bin"), &big, 100 * KIB + 7);
    assert!(
        origin.handshakes_ok() >= 1,
        "no TLS handshake succeeded with ca_file"
    );
    let reqs = origin.requests();
    assert!(
        reqs.iter().all(|r| r.method == "GET"),
        "unexpected methods: {reqs:?}"
    );
    assert!(
        reqs.iter()
            .any(|r| r.target == "/media/big.bin" && r.status == 206 && r.range.is_some()),
        "expected ranged requests for big.bin: {reqs:?}"
    );
    m.unmount();
}

// ---------------------------------------------------------------------------
// 6. A cache disk that fills up keeps serving from the origin
// ---------------------------------------------------------------------------

/// Mounts a tmpfs of `size` on `dir`; the guard unmounts it.
fn tiny_tmpfs(dir: &Path, size: &str) -> MountGuard {
    let src = CString::new("tmpfs").unwrap();
    let target = CString::new(dir.as_os_str().as_bytes()).unwrap();
    let data = CString::new(format!("size={size},mode=0700")).unwrap();
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            data.as_ptr() as *const libc::c_void,
        )
    };
    assert_eq!(
        r,
        0,
        "mount -t tmpfs -o size={size} on {}: {}",
        dir.display(),
        std::io::Error::last_os_error()
    );
    MountGuard(dir.to_path_buf())
}

#[test]
fn full_cache_disk_serves_from_origin() {
    common::require_mount!();
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("tiny");
    fs::create_dir(&disk).unwrap();
    let _tmpfs = tiny_tmpfs(&disk, "1m");
    let cache = disk.join("cache");

    let origin = Origin::start();
    let data = origin
        .put("/big/twenty.bin", pattern(6001, 20 * MIB + 5))
        .data;
    let small = origin.put("/small.bin", pattern(6002, 10 * KIB + 1)).data;

    for bs in ["64K", "1M"] {
        origin.reset();
        let mut m = Mount::builder(origin.url())
            .cache_dir(&cache)
            .opt(format!("max_cache_size=100M,block_size={bs}"))
            .mount();
        let p = m.path("big/twenty.bin");
        assert_file_matches(&p, &data, 256 * KIB + 3);
        assert!(m.is_running(), "daemon died after the cache disk filled up");
        assert!(m.is_mounted(), "mount gone after the cache disk filled up");
        // Second read, reaching the daemon again.
        drop_page_cache(&p);
        assert_file_matches(&p, &data, MIB);
        drop_page_cache(&p);
        let f = File::open(&p).unwrap();
        assert_random_preads(&f, &data, 61, 80, 3 * MIB, "twenty.bin random");
        drop(f);
        let got = fs::read(m.path("small.bin")).expect("small.bin");
        assert_bytes_eq(&got, &small, "small.bin");
        let got = pread_full(&File::open(&p).unwrap(), 20 * MIB as u64 - 3, 100).unwrap();
        assert_bytes_eq(&got, &data[20 * MIB - 3..], "tail of twenty.bin");
        assert!(m.is_running(), "daemon died");
        origin.settle();
        m.unmount();
    }
}

// ---------------------------------------------------------------------------
// 7. `..` and odd names never escape the prefix
// ---------------------------------------------------------------------------

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 encoding of one path component (unreserved stays literal).
fn encode_component(name: &str) -> String {
    let mut s = String::new();
    for &b in name.as_bytes() {
        if is_unreserved(b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

#[test]
fn odd_names_stay_one_component_under_the_prefix() {
    let names = [
        "..%2Fsecret",
        "a%2F..%2F..%2Fsecret",
        "%2e%2e",
        "..\\secret",
        "a\r\nX-Injected: 1",
        "b\nX-Injected: 2\r\n\r\nGET secret HTTP-1.1",
        "...",
    ];
    let Some(origin) = mount_origin() else { return };
    // Decoys outside the prefix.
    origin.put(
        "/secret",
        Bytes::from_static(b"SECRET OUTSIDE THE PREFIX\n"),
    );
    origin.put("/pre/secret", Bytes::from_static(b"secret inside\n"));
    let mut expected = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let data = pattern(7000 + i as u64, 500 + 91 * i);
        origin.put(&format!("/pre/{name}"), data.clone());
        expected.push((*name, data));
    }
    let m = Mount::new(origin.url_with_prefix("pre"));
    for (name, data) in &expected {
        let p = m.path(name);
        let got = fs::read(&p).unwrap_or_else(|e| panic!("read {name:?}: {e}"));
        assert_bytes_eq(&got, data, &format!("{name:?}"));
    }
    origin.settle();

    for (name, _) in &expected {
        let want_target = format!("/pre/{}", encode_component(name));
        let reqs = origin.requests_for(&format!("/pre/{name}"));
        assert!(
            !reqs.is_empty(),
            "no request for {name:?}\n{}",
            origin.describe_requests()
        );
        for r in &reqs {
            assert!(
                r.target.eq_ignore_ascii_case(&want_target),
                "{name:?} should be requested as {want_target:?}, got target {:?}",
                r.target
            );
        }
    }
    for r in origin.requests() {
        assert!(
            r.query.is_none(),
            "request target split into a query: {:?}",
            r.target
        );
        let rest = r.target.strip_prefix("/pre/").unwrap_or_else(|| {
            panic!(
                "request outside the prefix: {:?}\n{}",
                r.target,
                origin.describe_requests()
            )
        });
        assert!(
            !rest.contains('/') && rest.bytes().all(|b| is_unreserved(b) || b == b'%'),
            "request target is not one encoded component under /pre/: {:?}",
            r.target
        );
        let decoded = percent_decode_str(&r.target).decode_utf8_lossy();
        assert_eq!(decoded, r.path, "{:?}", r.target);
        assert_ne!(r.path, "/secret", "escaped the prefix: {r:?}");
        for (k, v) in &r.headers {
            assert!(
                !k.contains("injected") && !v.contains("Injected"),
                "injected header reached the origin: {k}: {v} in {r:?}"
            );
        }
    }
    m.unmount();
}
