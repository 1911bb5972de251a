//! Core integration tests for ston-fs: real mounts of an in-process HTTP
//! origin, with exact byte assertions.

mod common;

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::mount::{
    self, allocated_bytes, allocated_bytes_sample, describe_dir, find_data_files,
    force_unmount_all, is_mounted, mounts_at, run_cli, CliOutcome, Mount,
};
use common::mount_origin;
use common::origin::{pattern, Fault, FaultAction, Origin, RequestRecord};
use common::{
    assert_bytes_eq, assert_file_matches, assert_random_preads, assert_reader_matches, errno,
    pread_full, KIB, MIB,
};
use percent_encoding::percent_decode_str;

const CLI_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// 1. Sequential and random reads are byte-identical to the origin
// ---------------------------------------------------------------------------

#[test]
fn reads_match_origin_default_block_size() {
    let Some(origin) = mount_origin() else { return };
    let big = origin.put("/big.bin", pattern(1, 256 * MIB)).data;
    let small = Bytes::from(b"hello, ston-fs!\n".repeat(70)); // 1120 bytes
    let files: Vec<(&str, Bytes)> = vec![
        ("small.txt", small),
        ("empty.bin", Bytes::new()),
        ("one.bin", pattern(2, 1)),
        ("bs_plus_1.bin", pattern(3, MIB + 1)),
        ("three_bs_minus_7.bin", pattern(4, 3 * MIB - 7)),
        ("two_bs.bin", pattern(5, 2 * MIB)),
    ];
    for (name, data) in &files {
        origin.put(&format!("/{name}"), data.clone());
    }

    let m = Mount::new(origin.url());
    let infos = mounts_at(m.mountpoint());
    assert!(
        infos.iter().any(|i| i.fstype == "fuse.ston-fs"),
        "expected fstype fuse.ston-fs in mountinfo, got {infos:?}"
    );

    for (name, data) in &files {
        let p = m.path(name);
        let md = fs::metadata(&p).unwrap_or_else(|e| panic!("stat {name}: {e}"));
        assert!(md.is_file(), "{name} should be a regular file");
        assert_eq!(md.len(), data.len() as u64, "size of {name}");
        let got = fs::read(&p).unwrap_or_else(|e| panic!("read {name}: {e}"));
        assert_bytes_eq(&got, data, name);
        // Odd-sized sequential reads cross block boundaries at odd places.
        assert_file_matches(&p, data, 4097);
    }

    let p = m.path("big.bin");
    assert_eq!(fs::metadata(&p).unwrap().len(), big.len() as u64);
    let f = File::open(&p).unwrap();
    // Cold random reads first (partial fetches), then a full sequential pass,
    // then random reads again (cached).
    assert_random_preads(&f, &big, 11, 64, MIB, "big.bin cold");
    let mut seq = File::open(&p).unwrap();
    assert_reader_matches(&mut seq, &big, MIB, "big.bin sequential");
    assert_random_preads(&f, &big, 12, 128, 3 * MIB, "big.bin warm");
    drop(f);
    drop(seq);
    m.unmount();
}

#[test]
fn reads_match_origin_small_blocks() {
    const BS: usize = 64 * KIB;
    let Some(origin) = mount_origin() else { return };
    let files: Vec<(&str, Bytes)> = vec![
        ("bs_plus_1.bin", pattern(21, BS + 1)),
        ("three_bs_minus_7.bin", pattern(22, 3 * BS - 7)),
        ("exact_bs.bin", pattern(23, BS)),
        ("bs_minus_1.bin", pattern(24, BS - 1)),
        ("one.bin", pattern(25, 1)),
        ("empty.bin", Bytes::new()),
        ("dir/sub/five_mib_odd.bin", pattern(26, 5 * MIB + 123)),
    ];
    for (name, data) in &files {
        origin.put(&format!("/{name}"), data.clone());
    }
    let m = Mount::builder(origin.url())
        .opt(format!("block_size={}K", BS / KIB))
        .mount();

    assert!(fs::metadata(m.path("dir")).unwrap().is_dir());
    assert!(fs::metadata(m.path("dir/sub")).unwrap().is_dir());
    for (name, data) in &files {
        let p = m.path(name);
        assert_eq!(
            fs::metadata(&p)
                .unwrap_or_else(|e| panic!("stat {name}: {e}"))
                .len(),
            data.len() as u64,
            "size of {name}"
        );
        let f = File::open(&p).unwrap();
        // random first (cold), then sequential with a few buffer sizes
        assert_random_preads(&f, data, 31, 100, 3 * BS, name);
        for buf in [4097, BS - 1, BS, 3 * BS + 5] {
            assert_file_matches(&p, data, buf);
        }
        assert_random_preads(&f, data, 32, 100, 3 * BS, name);
    }
    m.unmount();
}

// ---------------------------------------------------------------------------
// 2. Concurrent cold readers
// ---------------------------------------------------------------------------

#[test]
fn concurrent_cold_readers_get_identical_bytes() {
    const THREADS: usize = 16;
    let Some(origin) = mount_origin() else { return };
    let data = origin
        .put("/shared/cold.bin", pattern(41, 48 * MIB + 1234))
        .data;
    let m = Mount::new(origin.url());
    let path = m.path("shared/cold.bin");
    let barrier = Barrier::new(THREADS);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());

    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (path, data, barrier, failures) = (&path, &data, &barrier, &failures);
            s.spawn(move || {
                barrier.wait();
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let f = File::open(path).unwrap_or_else(|e| panic!("open: {e}"));
                    let len = data.len();
                    // Even threads read from the start; odd ones start at a
                    // different offset and wrap around.
                    let start = if t % 2 == 0 { 0 } else { len / THREADS * t };
                    let buf = 64 * KIB + t * 4099;
                    let mut pos = start;
                    let mut done = 0;
                    while done < len {
                        let n = buf.min(len - pos);
                        let got = pread_full(&f, pos as u64, n)
                            .unwrap_or_else(|e| panic!("pread at {pos}: {e}"));
                        assert_bytes_eq(
                            &got,
                            &data[pos..pos + n],
                            &format!("thread {t} at offset {pos}"),
                        );
                        done += n;
                        pos = (pos + n) % len;
                    }
                }));
                if let Err(e) = res {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failures.lock().unwrap().push(format!("thread {t}: {msg}"));
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "reader failures:\n{}",
        failures.join("\n")
    );
    m.unmount();
}

// ---------------------------------------------------------------------------
// 3. Cached reads make zero origin requests, also across remount
// ---------------------------------------------------------------------------

#[test]
fn cached_reads_make_no_origin_requests_and_survive_remount() {
    let Some(origin) = mount_origin() else { return };
    let data = origin
        .put("/videos/intro.bin", pattern(51, 6 * MIB + 4321))
        .data;
    origin.put("/videos/other.bin", pattern(52, 1000));
    let cache = tempfile::tempdir().unwrap();

    let m = Mount::builder(origin.url())
        .cache_dir(cache.path())
        .opt("ttl=3600")
        .mount();
    let p = m.path("videos/intro.bin");
    assert_file_matches(&p, &data, 256 * KIB);
    origin.settle();
    assert!(
        origin.request_count_for("/videos/intro.bin") > 0,
        "first read should have reached the origin\n{}",
        origin.describe_requests()
    );
    assert!(origin.bytes_sent_for("/videos/intro.bin") >= data.len() as u64);

    origin.reset();
    assert_eq!(fs::metadata(&p).unwrap().len(), data.len() as u64);
    assert_file_matches(&p, &data, 256 * KIB);
    let f = File::open(&p).unwrap();
    assert_random_preads(&f, &data, 53, 50, 512 * KIB, "intro.bin cached");
    drop(f);
    origin.settle();
    assert_eq!(
        origin.request_count(),
        0,
        "second read of a cached file must not touch the origin\n{}",
        origin.describe_requests()
    );
    m.unmount();

    assert!(
        !find_data_files(cache.path()).is_empty(),
        "no .data file in the cache dir after unmount:\n{}",
        describe_dir(cache.path())
    );

    // Remount on the same cache dir: still zero requests, same bytes.
    origin.reset();
    let m = Mount::builder(origin.url())
        .cache_dir(cache.path())
        .opt("ttl=3600")
        .mount();
    let p = m.path("videos/intro.bin");
    assert_eq!(fs::metadata(&p).unwrap().len(), data.len() as u64);
    assert_file_matches(&p, &data, 256 * KIB);
    let f = File::open(&p).unwrap();
    assert_random_preads(&f, &data, 54, 50, 512 * KIB, "intro.bin after remount");
    drop(f);
    origin.settle();
    assert_eq!(
        origin.request_count(),
        0,
        "read after remount with the same cache dir (within ttl) must not touch the origin\n{}",
        origin.describe_requests()
    );
    m.unmount();
}

// ---------------------------------------------------------------------------
// 4. ENOENT, EROFS, special names
// ---------------------------------------------------------------------------

#[test]
fn missing_paths_are_enoent_and_negative_cached() {
    let Some(origin) = mount_origin() else { return };
    origin.put("/exists.txt", Bytes::from_static(b"here\n"));
    origin.put("/dir/file.txt", Bytes::from_static(b"inner\n"));
    origin.put("/gone.txt", Bytes::from_static(b"gone\n"));
    origin.add_fault(Fault::path("/gone.txt", FaultAction::Status(410)));
    origin.add_fault(Fault::path("/broken.txt", FaultAction::Status(500)));
    let m = Mount::builder(origin.url())
        .opt("negative_ttl=3600")
        .mount();

    for rel in ["missing.txt", "dir/missing.txt", "nodir/x.txt", "gone.txt"] {
        let r = fs::metadata(m.path(rel));
        assert_eq!(errno(&r), Some(libc::ENOENT), "stat {rel}: {r:?}");
        let r = File::open(m.path(rel));
        assert_eq!(errno(&r), Some(libc::ENOENT), "open {rel}: {r:?}");
    }
    let r = fs::metadata(m.path("broken.txt"));
    assert_eq!(errno(&r), Some(libc::EIO), "stat of a 500 path: {r:?}");
    assert_eq!(fs::read(m.path("exists.txt")).unwrap(), b"here\n");
    assert_eq!(fs::read(m.path("dir/file.txt")).unwrap(), b"inner\n");

    // 404 is negative-cached (negative_ttl=3600).
    origin.settle();
    assert!(origin.request_count_for("/missing.txt") > 0);
    origin.reset();
    let r = fs::metadata(m.path("missing.txt"));
    assert_eq!(errno(&r), Some(libc::ENOENT), "stat again: {r:?}");
    origin.settle();
    assert_eq!(
        origin.request_count_for("/missing.txt"),
        0,
        "404 should be negative-cached\n{}",
        origin.describe_requests()
    );
    m.unmount();
}

#[test]
fn write_access_is_erofs_and_modes_are_read_only() {
    let Some(origin) = mount_origin() else { return };
    origin.put("/file.txt", Bytes::from_static(b"read only\n"));
    origin.put("/dir/inner.txt", Bytes::from_static(b"inner\n"));
    let m = Mount::new(origin.url());
    let file = m.path("file.txt");

    let md = fs::metadata(&file).unwrap();
    assert!(md.is_file());
    assert_eq!(md.permissions().mode() & 0o7777, 0o444, "file mode");
    for d in [m.path("dir"), m.mountpoint().to_path_buf()] {
        let md = fs::metadata(&d).unwrap();
        assert!(md.is_dir(), "{} is a dir", d.display());
        assert_eq!(
            md.permissions().mode() & 0o7777,
            0o555,
            "dir mode of {}",
            d.display()
        );
    }

    let r = OpenOptions::new().write(true).open(&file);
    assert_eq!(errno(&r), Some(libc::EROFS), "O_WRONLY: {r:?}");
    let r = OpenOptions::new().read(true).write(true).open(&file);
    assert_eq!(errno(&r), Some(libc::EROFS), "O_RDWR: {r:?}");
    let r = OpenOptions::new().append(true).open(&file);
    assert_eq!(errno(&r), Some(libc::EROFS), "O_APPEND: {r:?}");
    let r = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.path("dir/inner.txt"));
    assert_eq!(errno(&r), Some(libc::EROFS), "O_TRUNC: {r:?}");
    let r = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("new.txt"));
    assert_eq!(errno(&r), Some(libc::EROFS), "create new file: {r:?}");
    let r = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.path("dir/new.txt"));
    assert_eq!(errno(&r), Some(libc::EROFS), "O_CREAT|O_EXCL: {r:?}");
    let r = fs::create_dir(m.path("newdir"));
    assert_eq!(errno(&r), Some(libc::EROFS), "mkdir: {r:?}");

    // Nothing changed.
    assert_eq!(fs::read(&file).unwrap(), b"read only\n");
    assert_eq!(fs::read(m.path("dir/inner.txt")).unwrap(), b"inner\n");
    origin.settle();
    for r in origin.requests() {
        assert!(
            r.method == "GET" || r.method == "HEAD",
            "unexpected method: {r:?}"
        );
    }
    m.unmount();
}

fn check_encoded_target(r: &RequestRecord) {
    assert!(
        r.query.is_none(),
        "request target split into path+query: {:?} (path {:?}, query {:?})",
        r.target,
        r.path,
        r.query
    );
    assert!(
        r.target.is_ascii()
            && !r.target.contains(' ')
            && !r.target.contains('?')
            && !r.target.contains('#'),
        "request target not properly percent-encoded: {:?}",
        r.target
    );
    let decoded = percent_decode_str(&r.target).decode_utf8_lossy();
    assert_eq!(decoded, r.path, "decoded target vs path for {:?}", r.target);
}

#[test]
fn special_names_are_percent_encoded() {
    let Some(origin) = mount_origin() else { return };
    let names = [
        "a%20b c?d#e ü.txt",
        "100%.txt",
        "plus+semi;colon=eq&amp@at.bin",
        "dir with space/ünï cödé 日本.bin",
        "q?dir/#hash.txt",
    ];
    let mut expected = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let data = pattern(60 + i as u64, 1000 + 37 * i);
        origin.put(&format!("/{name}"), data.clone());
        expected.push((name, data));
    }
    let m = Mount::new(origin.url());
    for (name, data) in &expected {
        let p = m.path(name);
        let got = fs::read(&p).unwrap_or_else(|e| panic!("read {name:?}: {e}"));
        assert_bytes_eq(&got, data, name);
    }
    origin.settle();

    let log = origin.requests();
    let mut allowed: Vec<String> = vec!["/".into()];
    for name in names {
        allowed.push(format!("/{name}"));
        if let Some((dir, _)) = name.rsplit_once('/') {
            allowed.push(format!("/{dir}"));
            allowed.push(format!("/{dir}/"));
        }
    }
    for r in &log {
        check_encoded_target(r);
        assert!(
            allowed.contains(&r.path),
            "request for an unexpected path {:?} (target {:?}) — name split or mangled?\n{}",
            r.path,
            r.target,
            origin.describe_requests()
        );
    }
    for name in names {
        let full = format!("/{name}");
        let reqs = origin.requests_for(&full);
        assert!(
            !reqs.is_empty(),
            "no request with decoded path {full:?}\n{}",
            origin.describe_requests()
        );
        assert!(
            reqs.iter().any(|r| r.status == 200 || r.status == 206),
            "no successful request for {full:?}\n{}",
            origin.describe_requests()
        );
    }
    let pct = origin.requests_for("/100%.txt");
    assert!(
        pct.iter().all(|r| r.target.contains("%25")),
        "'%' must be sent as %25: {:?}",
        pct.iter().map(|r| &r.target).collect::<Vec<_>>()
    );
    m.unmount();
}

#[test]
fn origin_path_prefix_is_prepended() {
    let Some(origin) = mount_origin() else { return };
    let data = origin
        .put("/prefix/sub/file.bin", pattern(70, 300 * KIB + 5))
        .data;
    origin.put("/file.bin", Bytes::from_static(b"wrong file\n"));
    let m = Mount::new(origin.url_with_prefix("prefix"));
    assert_file_matches(&m.path("sub/file.bin"), &data, 64 * KIB);
    let r = fs::metadata(m.path("prefix"));
    assert_eq!(errno(&r), Some(libc::ENOENT), "{r:?}");
    origin.settle();
    for r in origin.requests() {
        assert!(
            r.path.starts_with("/prefix/"),
            "request without the origin prefix: {r:?}"
        );
    }
    m.unmount();
}

// ---------------------------------------------------------------------------
// 5. max_cache_size is never exceeded
// ---------------------------------------------------------------------------

#[test]
fn max_cache_size_is_never_exceeded() {
    common::require_mount!();
    const LIMIT: u64 = 8 * MIB as u64;
    const FILES: usize = 5;
    const FILE_LEN: usize = 8 * MIB;
    let origin = Origin::start();
    let datas: Vec<Bytes> = (0..FILES)
        .map(|i| {
            let d = pattern(80 + i as u64, FILE_LEN + 77 * i);
            origin.put(&format!("/set/f{i}.bin"), d.clone());
            d
        })
        .collect();
    let m = Mount::builder(origin.url())
        .opt("max_cache_size=8M")
        .opt("block_size=64K")
        .mount();
    let cache = m.cache_dir().to_path_buf();

    let stop = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicU64::new(0));
    let worst: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let sampler = {
        let (stop, max_seen, worst, cache) =
            (stop.clone(), max_seen.clone(), worst.clone(), cache.clone());
        std::thread::spawn(move || {
            let mut samples = 0u64;
            // bounded: at most ~200k samples (minutes), stopped by the test
            while !stop.load(Ordering::SeqCst) && samples < 200_000 {
                let s = allocated_bytes_sample(&cache);
                if s > max_seen.fetch_max(s, Ordering::SeqCst) && s > LIMIT {
                    *worst.lock().unwrap() =
                        Some(format!("sample {s} bytes:\n{}", describe_dir(&cache)));
                }
                samples += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            samples
        })
    };

    for pass in 0..3 {
        let order: Vec<usize> = if pass % 2 == 0 {
            (0..FILES).collect()
        } else {
            (0..FILES).rev().collect()
        };
        for i in order {
            assert_file_matches(&m.path(&format!("set/f{i}.bin")), &datas[i], 256 * KIB);
        }
    }
    for (i, d) in datas.iter().enumerate() {
        let f = File::open(m.path(&format!("set/f{i}.bin"))).unwrap();
        assert_random_preads(&f, d, 90 + i as u64, 40, 512 * KIB, "random after passes");
    }
    origin.settle();
    stop.store(true, Ordering::SeqCst);
    let samples = sampler.join().unwrap();

    let idle = allocated_bytes(&cache);
    eprintln!(
        "max_cache_size: max sampled {} bytes over {samples} samples, {} when idle (limit {LIMIT})",
        max_seen.load(Ordering::SeqCst),
        idle
    );
    let listing = describe_dir(&cache);
    assert!(
        !find_data_files(&cache).is_empty() && idle > 0,
        "nothing cached in --cache-dir at all?\n{listing}"
    );
    assert!(
        idle <= LIMIT,
        "cache dir uses {idle} bytes after the reads, limit {LIMIT}\n{listing}"
    );
    let max = max_seen.load(Ordering::SeqCst);
    assert!(
        max <= LIMIT,
        "cache dir reached {max} bytes during the reads (limit {LIMIT}, {samples} samples)\n{}",
        worst.lock().unwrap().clone().unwrap_or_default()
    );
    m.unmount();
    let after = allocated_bytes(&cache);
    assert!(
        after <= LIMIT,
        "cache dir uses {after} bytes after unmount, limit {LIMIT}\n{}",
        describe_dir(&cache)
    );
}

// ---------------------------------------------------------------------------
// 6. Corrupted cache blocks are detected and refetched
// ---------------------------------------------------------------------------

#[test]
fn corrupted_cache_block_is_detected_and_refetched() {
    common::require_mount!();
    const BS: u64 = 64 * KIB as u64;
    let origin = Origin::start();
    let path = "/media/clip.bin";
    let data = pattern(100, MIB + 100); // 17 blocks, last one partial
    let len = data.len() as u64;
    origin.put(path, data.clone());
    let cache = tempfile::tempdir().unwrap();
    let mount = |origin: &Origin| {
        Mount::builder(origin.url())
            .cache_dir(cache.path())
            .opt("block_size=64K")
            .opt("ttl=3600")
            .mount()
    };

    let m = mount(&origin);
    assert_file_matches(&m.path("media/clip.bin"), &data, 128 * KIB);
    origin.settle();
    m.unmount();

    // Find the .data file of this object: byte N of the object at offset N.
    let corrupt: [(u64, usize); 2] = [(5 * BS + 1000, 16), (len - 50, 10)];
    let probe = corrupt[0].0;
    let candidates = find_data_files(cache.path());
    let data_file: PathBuf = candidates
        .iter()
        .find(|p| {
            File::open(p)
                .ok()
                .and_then(|f| pread_full(&f, probe, 64).ok())
                .is_some_and(|b| b[..] == data[probe as usize..probe as usize + 64])
        })
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no .data file holds the object's bytes at their own offsets; cache dir:\n{}",
                describe_dir(cache.path())
            )
        });
    {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&data_file)
            .unwrap();
        for (off, n) in corrupt {
            let on_disk = pread_full(&f, off, n).unwrap();
            assert_bytes_eq(
                &on_disk,
                &data[off as usize..off as usize + n],
                "cached bytes before corruption",
            );
            let flipped: Vec<u8> = on_disk.iter().map(|b| b ^ 0xA5).collect();
            f.write_all_at(&flipped, off).unwrap();
        }
        f.sync_all().unwrap();
    }

    origin.reset();
    let m = mount(&origin);
    let p = m.path("media/clip.bin");
    assert_file_matches(&p, &data, 128 * KIB);
    let f = File::open(&p).unwrap();
    for (off, n) in corrupt {
        let got = pread_full(&f, off, n).unwrap();
        assert_bytes_eq(
            &got,
            &data[off as usize..off as usize + n],
            "corrupted region",
        );
    }
    drop(f);
    origin.settle();
    let reqs = origin.requests_for(path);
    for (off, n) in corrupt {
        let (bs, be) = (off / BS * BS, ((off / BS + 1) * BS).min(len));
        assert!(
            reqs.iter()
                .any(|r| (r.status == 200 || r.status == 206) && r.covers(len, bs, be)),
            "no origin request re-fetched block [{bs}, {be}) (corrupted at {off}+{n})\n{}",
            origin.describe_requests()
        );
    }
    // And it is correct from the cache afterwards too.
    assert_file_matches(&m.path("media/clip.bin"), &data, 128 * KIB);
    m.unmount();
}

// ---------------------------------------------------------------------------
// 7. Command line and config errors
// ---------------------------------------------------------------------------

/// Detaches anything mounted on the path when dropped.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        force_unmount_all(&self.0);
    }
}

struct CliEnv {
    origin: Origin,
    tmp: tempfile::TempDir,
    mnt: PathBuf,
    cache: PathBuf,
    _guard: MountGuard,
}

fn cli_env() -> CliEnv {
    let origin = Origin::start();
    origin.put("/hello.txt", Bytes::from_static(b"hello\n"));
    let tmp = tempfile::Builder::new()
        .prefix("ston-fs-cli-test-")
        .tempdir()
        .unwrap();
    let mnt = tmp.path().join("mnt");
    let cache = tmp.path().join("cache");
    fs::create_dir(&mnt).unwrap();
    fs::create_dir(&cache).unwrap();
    CliEnv {
        origin,
        _guard: MountGuard(mnt.clone()),
        tmp,
        mnt,
        cache,
    }
}

fn os(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    args.iter().map(|a| a.as_ref().to_os_string()).collect()
}

/// Runs the binary, expects a prompt non-zero exit whose stderr contains
/// (case-insensitively) at least one of `words`, and no mount left behind.
#[track_caller]
fn expect_cli_error(args: Vec<OsString>, mnt: &Path, words: &[&str]) -> CliOutcome {
    let out = run_cli(&args, CLI_TIMEOUT);
    let left_mounted = is_mounted(mnt);
    force_unmount_all(mnt);
    assert!(
        !out.timed_out(),
        "expected an error exit for {args:?}, but it was still running after {CLI_TIMEOUT:?}\n{}",
        out.describe()
    );
    assert!(
        !out.success(),
        "expected a non-zero exit for {args:?}\n{}",
        out.describe()
    );
    assert!(
        !left_mounted,
        "a mount was left on {} after the error exit for {args:?}",
        mnt.display()
    );
    let err = out.stderr.to_lowercase();
    assert!(
        words.iter().any(|w| err.contains(&w.to_lowercase())),
        "stderr for {args:?} should mention one of {words:?}\n{}",
        out.describe()
    );
    out
}

#[test]
fn cli_rejects_bad_origin_urls() {
    let env = cli_env();
    for url in ["ftp://x/", "not a url", "http://"] {
        for fg in [true, false] {
            let mut a = Vec::new();
            if fg {
                a.push(OsString::from("-f"));
            }
            a.extend(os(&[&"--cache-dir", &env.cache, &url, &env.mnt]));
            expect_cli_error(a, &env.mnt, &["url", "origin", "scheme"]);
        }
    }
}

#[test]
fn cli_rejects_missing_mount_point() {
    common::require_mount!();
    let env = cli_env();
    let missing = env.tmp.path().join("does-not-exist");
    let ms = missing.to_string_lossy().to_string();
    for fg in [true, false] {
        let mut a = Vec::new();
        if fg {
            a.push(OsString::from("-f"));
        }
        a.extend(os(&[
            &"--cache-dir",
            &env.cache,
            &env.origin.url(),
            &missing,
        ]));
        expect_cli_error(a, &missing, &["mount point", "mountpoint", &ms]);
    }
    // and no positional mount point at all
    let a = os(&[&"-f", &"--cache-dir", &env.cache, &env.origin.url()]);
    expect_cli_error(a, &env.mnt, &["mount", "usage"]);
}

#[test]
fn cli_rejects_unknown_option_key() {
    let env = cli_env();
    for o in ["frobnicate_level=3", "ro,block_size=64K,frobnicate_level=3"] {
        let a = os(&[
            &"-f",
            &"--cache-dir",
            &env.cache,
            &"-o",
            &o,
            &env.origin.url(),
            &env.mnt,
        ]);
        expect_cli_error(a, &env.mnt, &["frobnicate_level"]);
    }
}

#[test]
fn cli_rejects_bad_size_values() {
    let env = cli_env();
    for (o, words) in [
        ("max_cache_size=lots", ["max_cache_size", "lots"]),
        ("block_size=12Q", ["block_size", "12Q"]),
        ("max_cache_size=-5M", ["max_cache_size", "-5M"]),
        ("ttl=abc", ["ttl", "abc"]),
    ] {
        let a = os(&[
            &"-f",
            &"--cache-dir",
            &env.cache,
            &"-o",
            &o,
            &env.origin.url(),
            &env.mnt,
        ]);
        expect_cli_error(a, &env.mnt, &words);
    }
}

#[test]
fn cli_rejects_bad_config_files() {
    let env = cli_env();
    let cfg = env.tmp.path().join("bad-key.toml");
    fs::write(
        &cfg,
        format!(
            "cache_dir = \"{}\"\nbogus_config_key = 5\n",
            env.cache.display()
        ),
    )
    .unwrap();
    let a = os(&[&"-f", &"--config", &cfg, &env.origin.url(), &env.mnt]);
    expect_cli_error(a, &env.mnt, &["bogus_config_key"]);

    let cfg2 = env.tmp.path().join("bad-value.toml");
    fs::write(
        &cfg2,
        format!(
            "cache_dir = \"{}\"\nblock_size = \"lots\"\n",
            env.cache.display()
        ),
    )
    .unwrap();
    let a = os(&[&"-f", &"--config", &cfg2, &env.origin.url(), &env.mnt]);
    expect_cli_error(a, &env.mnt, &["block_size", "lots"]);

    let cfg3 = env.tmp.path().join("broken.toml");
    fs::write(&cfg3, "cache_dir = \n[[[\n").unwrap();
    let a = os(&[&"-f", &"--config", &cfg3, &env.origin.url(), &env.mnt]);
    expect_cli_error(a, &env.mnt, &["config", "toml", "broken.toml"]);

    let missing = env.tmp.path().join("no-such-config.toml");
    let a = os(&[&"-f", &"--config", &missing, &env.origin.url(), &env.mnt]);
    expect_cli_error(a, &env.mnt, &["config", "no-such-config.toml"]);
}

#[test]
fn cli_rejects_mount_point_in_use() {
    common::require_mount!();
    let env = cli_env();
    let m = Mount::new(env.origin.url());
    let mnt = m.mountpoint().to_path_buf();
    let other_cache = env.tmp.path().join("cache2");
    fs::create_dir(&other_cache).unwrap();
    let before = mounts_at(&mnt).len();
    // daemon mode (no -f): must exit non-zero, not stack a second mount
    let out = run_cli(
        os(&[&"--cache-dir", &other_cache, &env.origin.url(), &mnt]),
        CLI_TIMEOUT,
    );
    let after = mounts_at(&mnt).len();
    if after > before {
        // remove the stacked mount (topmost) so the first one can unmount
        let _ = mount::umount2(&mnt, libc::MNT_DETACH);
    }
    assert!(
        !out.timed_out() && !out.success(),
        "second mount on a mount point in use should fail\n{}",
        out.describe()
    );
    assert_eq!(
        after,
        before,
        "a second mount was stacked on {}",
        mnt.display()
    );
    let err = out.stderr.to_lowercase();
    assert!(
        ["mount", "in use", "busy"].iter().any(|w| err.contains(w)),
        "stderr should say why\n{}",
        out.describe()
    );
    // the first mount still works
    assert_eq!(fs::read(m.path("hello.txt")).unwrap(), b"hello\n");
    m.unmount();
}

/// Mounts a read-only tmpfs on `dir` (root only); None if not permitted.
fn ro_tmpfs(dir: &Path) -> Option<MountGuard> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let src = CString::new("tmpfs").unwrap();
    let target = CString::new(dir.as_os_str().as_bytes()).unwrap();
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            libc::MS_RDONLY,
            std::ptr::null(),
        )
    };
    if r == 0 {
        Some(MountGuard(dir.to_path_buf()))
    } else {
        eprintln!(
            "note: cannot mount a read-only tmpfs ({}); skipping that case",
            std::io::Error::last_os_error()
        );
        None
    }
}

#[test]
fn cli_rejects_unwritable_cache_dir() {
    common::require_mount!();
    let env = cli_env();
    // A cache dir below a regular file can never be created.
    let file = env.tmp.path().join("plain-file");
    fs::write(&file, b"x").unwrap();
    let bad = file.join("cache");
    let bs = bad.to_string_lossy().to_string();
    for fg in [true, false] {
        let mut a = Vec::new();
        if fg {
            a.push(OsString::from("-f"));
        }
        a.extend(os(&[&"--cache-dir", &bad, &env.origin.url(), &env.mnt]));
        expect_cli_error(a, &env.mnt, &["cache", &bs]);
    }
    // A read-only cache dir (root ignores mode bits, so use a ro tmpfs).
    let ro = env.tmp.path().join("ro-cache");
    fs::create_dir(&ro).unwrap();
    if let Some(_g) = ro_tmpfs(&ro) {
        let rs = ro.to_string_lossy().to_string();
        for fg in [true, false] {
            let mut a = Vec::new();
            if fg {
                a.push(OsString::from("-f"));
            }
            a.extend(os(&[&"--cache-dir", &ro, &env.origin.url(), &env.mnt]));
            expect_cli_error(a, &env.mnt, &["cache", &rs, "read-only"]);
        }
    }
}

/// fstab and mount(8) pass words like `ro`, `allow_other` and `_netdev`: each is accepted.
#[test]
fn cli_accepts_standard_mount_words() {
    let Some(origin) = mount_origin() else { return };
    let data = origin.put_pattern("/f.bin", 110, 200 * KIB + 3);
    let m = Mount::builder(origin.url())
        .opt("ro")
        .opt("allow_other")
        .opt("default_permissions")
        .opt("_netdev")
        .opt("nofail")
        .opt("noauto")
        .opt("user")
        .opt("x-systemd.automount")
        .opt("x-systemd.device-timeout=10")
        .mount();
    assert_file_matches(&m.path("f.bin"), &data, 64 * KIB);
    m.unmount();
}

#[test]
fn config_file_sets_cache_dir_and_block_size() {
    let Some(origin) = mount_origin() else { return };
    let data = origin.put("/cfg/file.bin", pattern(120, MIB + 17)).data;
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cfg-cache");
    fs::create_dir(&cache).unwrap();
    let cfg = tmp.path().join("ston-fs.toml");
    fs::write(
        &cfg,
        format!(
            "cache_dir = \"{}\"\nblock_size = \"64K\"\nttl = 3600\n",
            cache.display()
        ),
    )
    .unwrap();
    let m = Mount::builder(origin.url())
        .no_cache_dir_arg()
        .arg("--config")
        .arg(&cfg)
        .mount();
    assert_file_matches(&m.path("cfg/file.bin"), &data, 100 * KIB);
    origin.settle();
    let first = origin
        .requests_for("/cfg/file.bin")
        .into_iter()
        .next()
        .expect("a request for the file");
    assert_eq!(
        first.range.as_deref(),
        Some("bytes=0-65535"),
        "lookup should fetch the first 64K block: {first:?}"
    );
    m.unmount();
    assert!(
        !find_data_files(&cache).is_empty(),
        "config cache_dir not used:\n{}",
        describe_dir(&cache)
    );
}

#[test]
fn daemon_mode_exits_zero_once_mounted() {
    common::require_mount!();
    let env = cli_env();
    let out = run_cli(
        os(&[&"--cache-dir", &env.cache, &env.origin.url(), &env.mnt]),
        CLI_TIMEOUT,
    );
    let mounted = is_mounted(&env.mnt);
    assert!(
        out.success(),
        "daemon mode should exit 0 once mounted\n{}",
        out.describe()
    );
    assert!(mounted, "mount not live when the launcher exited 0");
    assert_eq!(fs::read(env.mnt.join("hello.txt")).unwrap(), b"hello\n");
    mount::umount2(&env.mnt, 0).expect("umount daemon-mode mount");
}

// ---------------------------------------------------------------------------
// Harness self-test: the test origin itself (no mount involved)
// ---------------------------------------------------------------------------

struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        common::header_value(&self.headers, name)
    }
}

/// One request on a fresh connection (`Connection: close`), body read to EOF.
#[track_caller]
fn raw_request(
    origin: &Origin,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(origin.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw); // may end in a reset for CloseAfter
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head for {method} {target}: {raw:?}"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    RawResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

#[test]
fn harness_origin_semantics() {
    let Some(origin) = mount_origin() else { return };
    let data = pattern(7, 300_000);
    let e = origin.put("/d/x y.bin", data.clone());
    origin.put("/empty", Bytes::new());
    let t = "/d/x%20y.bin";

    let r = raw_request(&origin, "GET", t, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, data[..]);
    assert_eq!(r.header("etag"), Some(e.etag.as_str()));
    assert_eq!(r.header("last-modified"), Some(e.last_modified().as_str()));

    let r = raw_request(&origin, "GET", t, &[("Range", "bytes=10-19")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, data[10..20]);
    assert_eq!(r.header("content-range"), Some("bytes 10-19/300000"));
    let r = raw_request(&origin, "GET", t, &[("Range", "bytes=299990-")]);
    assert_eq!((r.status, &r.body[..]), (206, &data[299_990..]));
    let r = raw_request(&origin, "GET", t, &[("Range", "bytes=-5")]);
    assert_eq!((r.status, &r.body[..]), (206, &data[299_995..]));
    let r = raw_request(&origin, "GET", t, &[("Range", "bytes=0-999999")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, data[..]);
    let r = raw_request(&origin, "GET", t, &[("Range", "bytes=300000-")]);
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */300000"));
    let r = raw_request(&origin, "GET", "/empty", &[("Range", "bytes=0-1023")]);
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */0"));
    let r = raw_request(&origin, "GET", "/empty", &[]);
    assert_eq!((r.status, r.body.len()), (200, 0));

    // If-Range
    let r = raw_request(
        &origin,
        "GET",
        t,
        &[("Range", "bytes=0-9"), ("If-Range", &e.etag)],
    );
    assert_eq!(r.status, 206);
    let r = raw_request(
        &origin,
        "GET",
        t,
        &[("Range", "bytes=0-9"), ("If-Range", "\"nope\"")],
    );
    assert_eq!((r.status, r.body.len()), (200, data.len()));
    let lm = e.last_modified();
    let r = raw_request(
        &origin,
        "GET",
        t,
        &[("Range", "bytes=0-9"), ("If-Range", &lm)],
    );
    assert_eq!(r.status, 206);
    // Conditionals
    let r = raw_request(&origin, "GET", t, &[("If-None-Match", &e.etag)]);
    assert_eq!((r.status, r.body.len()), (304, 0));
    let r = raw_request(&origin, "GET", t, &[("If-Modified-Since", &lm)]);
    assert_eq!(r.status, 304);
    let r = raw_request(&origin, "GET", t, &[("If-None-Match", "\"other\"")]);
    assert_eq!(r.status, 200);

    // Directories and missing paths
    let r = raw_request(&origin, "GET", "/d", &[]);
    assert_eq!((r.status, r.header("location")), (301, Some("/d/")));
    assert_eq!(raw_request(&origin, "GET", "/d/", &[]).status, 403);
    assert_eq!(raw_request(&origin, "GET", "/", &[]).status, 403);
    assert_eq!(raw_request(&origin, "GET", "/nope", &[]).status, 404);
    let r = raw_request(&origin, "HEAD", t, &[]);
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(r.header("content-length"), Some("300000"));

    // Recording and counters
    assert!(origin.wait_idle(Duration::from_millis(50), Duration::from_secs(5)));
    let recs = origin.requests_for("/d/x y.bin");
    assert_eq!(recs[0].target, t);
    assert_eq!(recs[0].query, None);
    assert_eq!(recs[1].range.as_deref(), Some("bytes=10-19"));
    assert_eq!(origin.request_count_for("/d/x y.bin"), recs.len() as u64);
    let total = origin.request_count();
    assert_eq!(total, origin.requests().len() as u64);
    let q = raw_request(&origin, "GET", "/a%3Fb?c=d", &[]);
    assert_eq!(q.status, 404);
    let last = origin.requests().pop().unwrap();
    assert_eq!(
        (last.path.as_str(), last.query.as_deref()),
        ("/a?b", Some("c=d"))
    );
    origin.reset();
    assert_eq!((origin.request_count(), origin.bytes_sent()), (0, 0));
    let _ = raw_request(&origin, "GET", t, &[("Range", "bytes=0-99")]);
    assert!(origin.wait_idle(Duration::from_millis(50), Duration::from_secs(5)));
    assert_eq!(origin.bytes_sent_for("/d/x y.bin"), 100);
    assert_eq!(origin.bytes_sent(), 100);

    // Faults
    let id = origin.add_fault(Fault::path("/d/x y.bin", FaultAction::IgnoreRange));
    let r = raw_request(&origin, "GET", t, &[("Range", "bytes=0-9")]);
    assert_eq!((r.status, r.body.len()), (200, data.len()));
    origin.remove_fault(id);
    origin.add_fault(Fault::global(FaultAction::Status(503)).times(1));
    assert_eq!(raw_request(&origin, "GET", t, &[]).status, 503);
    assert_eq!(raw_request(&origin, "GET", t, &[]).status, 200);
    origin.add_fault(Fault::path("/d/x y.bin", FaultAction::CloseAfter(1000)).times(1));
    let r = raw_request(&origin, "GET", t, &[]);
    assert_eq!(r.status, 200);
    assert!(r.body.len() < data.len() && r.body[..] == data[..r.body.len()]);
    let gate = common::origin::Gate::new();
    origin.add_fault(
        Fault::path(
            "/d/x y.bin",
            FaultAction::StallBody {
                after: 5000,
                stall: common::origin::Stall::Until(gate.clone()),
            },
        )
        .times(1),
    );
    let h = {
        let addr = origin.addr();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /d/x%20y.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut v = Vec::new();
            s.read_to_end(&mut v).unwrap();
            v.len()
        })
    };
    assert!(gate.wait_for_waiters(1, Duration::from_secs(5)));
    assert_eq!(origin.in_flight(), 1);
    gate.release();
    assert!(h.join().unwrap() > data.len());
    let g2 = common::origin::Gate::new();
    origin.add_fault(
        Fault::global(FaultAction::StallHeaders(common::origin::Stall::For(
            Duration::from_millis(200),
        )))
        .times(1),
    );
    let t0 = std::time::Instant::now();
    assert_eq!(raw_request(&origin, "GET", t, &[]).status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(200));
    drop(g2);
    // Replace content: new validators
    let e2 = origin.replace("/d/x y.bin", pattern(8, 10));
    assert_ne!(e2.etag, e.etag);
    assert_ne!(e2.last_modified(), e.last_modified());
    let r = raw_request(
        &origin,
        "GET",
        t,
        &[("Range", "bytes=0-9"), ("If-Range", &e.etag)],
    );
    assert_eq!((r.status, &r.body[..]), (200, &pattern(8, 10)[..]));
    // pattern is seekable
    let p = pattern(9, 1000);
    assert_eq!(common::origin::pattern_range(9, 333, 100), p[333..433]);
}

#[test]
fn harness_mount_cleans_up_after_kill9_and_panic() {
    let Some(origin) = mount_origin() else { return };
    origin.put("/a.txt", Bytes::from_static(b"a\n"));

    // kill9 leaves a dead mount behind; drop detaches it.
    let mut m = Mount::new(origin.url());
    let mp = m.mountpoint().to_path_buf();
    assert_eq!(fs::read(m.path("a.txt")).unwrap(), b"a\n");
    let st = m.kill9().expect("daemon reaped after SIGKILL");
    assert!(!st.success());
    assert!(
        is_mounted(&mp),
        "the dead mount should still be there before drop"
    );
    drop(m);
    assert!(!is_mounted(&mp), "drop must detach a dead mount");
    assert!(!mp.exists(), "drop removes the scratch dir");

    // A panicking test with a live mount (and an open file) leaves nothing behind.
    let (tx, rx) = std::sync::mpsc::channel();
    let url = origin.url();
    let r = std::thread::spawn(move || {
        let m = Mount::new(url);
        tx.send(m.mountpoint().to_path_buf()).unwrap();
        let _f = File::open(m.path("a.txt")).unwrap();
        panic!("intentional panic with a live mount (harness self-test)");
    })
    .join();
    assert!(r.is_err());
    let mp = rx.recv().unwrap();
    assert!(!is_mounted(&mp), "mount left after a panicking test");
    assert!(!mp.exists());

    // A daemon that fails to start reports its output.
    let err = Mount::builder(origin.url())
        .opt("definitely_not_a_key=1")
        .try_mount()
        .err()
        .expect("mount with a bad option must fail");
    assert!(err.contains("definitely_not_a_key"), "{err}");
}
