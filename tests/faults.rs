//! Origins that fail or lie: failover between equivalent origins (and readmission after
//! recovery), stale-if-error when every origin is down, answers that break their own promises
//! (cut bodies, wrong lengths, wrong ranges, other versions, stalls), and `kill -9` of the
//! daemon in the middle of many downloads.
//!
//! Every test mounts the real binary and asserts exact bytes or an exact errno. A lie limited to
//! one answer must end in a retry and exact bytes (or, for an answer that claims another version,
//! in EIO and exact bytes on the next open); a permanent lie must end in EIO. Nothing may ever
//! return wrong bytes or hang: every call that could hang runs under a bound (a hang detector,
//! not a timing assertion).

mod common;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::mount::Mount;
use common::mount_origin;
use common::origin::{
    http_date, parse_range, pattern, Answer, Fault, FaultAction, Gate, Origin, RangeSpec,
    RequestRecord, Stall,
};
use common::{assert_bytes_eq, assert_file_matches, assert_random_preads, errno, pread_full};
use common::{bounded, drop_pages_of, no_kernel_readahead, KIB, MIB};

const BLOCK: usize = 256 * KIB;
/// Longest any single file-system call may take here before the test calls it a hang.
const CALL_BOUND: Duration = Duration::from_secs(20);
/// Bound for whole-file reads that may go through retries and failovers.
const READ_BOUND: Duration = Duration::from_secs(90);
/// Options every fault test uses: short timeouts so failures end quickly.
const TIMEOUTS: &str = "connect_timeout=1,receive_timeout=2";

/// `assert_file_matches` under `READ_BOUND`.
#[track_caller]
fn read_whole(path: PathBuf, want: Bytes) {
    let what = format!("read {}", path.display());
    bounded(&what, READ_BOUND, move || {
        assert_file_matches(&path, &want, 64 * KIB)
    });
}

/// One `pread` of `len` bytes at `offset`, under `CALL_BOUND`.
#[track_caller]
fn pread_bounded(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let file = file.try_clone().expect("dup");
    bounded(&format!("pread({offset}, {len})"), CALL_BOUND, move || {
        pread_full(&file, offset, len)
    })
}

/// Like `common::drop_page_cache`, but an open that hangs fails the test.
fn drop_page_cache(path: &Path) {
    let path = path.to_path_buf();
    let file = bounded("open to drop pages", CALL_BOUND, move || File::open(path))
        .expect("open to drop pages");
    drop_pages_of(&file);
}

fn open_bounded(path: &Path) -> File {
    let p = path.to_path_buf();
    bounded(&format!("open {}", path.display()), CALL_BOUND, move || {
        File::open(p)
    })
    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn len_bounded(path: &Path) -> u64 {
    let p = path.to_path_buf();
    bounded(&format!("stat {}", path.display()), CALL_BOUND, move || {
        fs::metadata(p)
    })
    .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
    .len()
}

/// What a wrong answer looked like, for messages.
fn describe_wrong(got: &[u8]) -> String {
    if got.iter().all(|&b| b == 0) {
        format!("{} zero bytes", got.len())
    } else {
        format!("{} bytes that differ from the file", got.len())
    }
}

/// Puts the same files, in the same order, on every origin: equal ETags and dates.
fn put_everywhere(origins: &[&Origin], files: &[(String, Bytes)]) {
    for (path, data) in files {
        let tags: Vec<String> = origins
            .iter()
            .map(|o| o.put(path, data.clone()).etag)
            .collect();
        assert!(
            tags.windows(2).all(|w| w[0] == w[1]),
            "equivalent origins must agree on the version: {tags:?}"
        );
    }
}

fn origin_list(origins: &[&Origin]) -> String {
    origins
        .iter()
        .map(|o| o.url())
        .collect::<Vec<_>>()
        .join(",")
}

fn log_has_line(log: &str, words: &[&str]) -> bool {
    log.lines().any(|l| words.iter().all(|w| l.contains(w)))
}

// ---------------------------------------------------------------------------
// Failover between equivalent origins
// ---------------------------------------------------------------------------

fn files(prefix: &str, count: usize, blocks: usize, seed: u64) -> Vec<(String, Bytes)> {
    (0..count)
        .map(|i| {
            (
                format!("/{prefix}{i}.bin"),
                pattern(seed + i as u64, blocks * BLOCK + 123 * i),
            )
        })
        .collect()
}

fn rel(path: &str) -> &str {
    path.trim_start_matches('/')
}

/// Origin A is killed (its runtime and port go away) while it holds a response in the middle
/// of a body; every read still returns exact bytes from B, and A is excluded.
#[test]
fn an_origin_killed_mid_read_is_routed_around() {
    let Some(a) = mount_origin() else { return };
    let b = Origin::start();
    let set = files("k", 4, 16, 301);
    put_everywhere(&[&a, &b], &set);
    let a_url = a.url();
    let mount = Mount::builder(origin_list(&[&a, &b]))
        .opt(format!("block_size=256K,passthrough=false,{TIMEOUTS}"))
        .mount();
    for (path, data) in &set {
        assert_eq!(len_bounded(&mount.path(rel(path))), data.len() as u64);
    }
    read_whole(mount.path(rel(&set[0].0)), set[0].1.clone());
    assert!(
        a.request_count() > 0 && b.request_count() > 0,
        "requests spread over both origins:\nA: {}\nB: {}",
        a.describe_requests(),
        b.describe_requests()
    );

    // A holds its next answer after 64 KiB of body; then A dies.
    let gate = Gate::new();
    a.add_fault(Fault::global(FaultAction::StallBody {
        after: 64 * KIB as u64,
        stall: Stall::Until(gate.clone()),
    }));
    let reader = {
        let jobs: Vec<(PathBuf, Bytes)> = set[1..]
            .iter()
            .map(|(p, d)| (mount.path(rel(p)), d.clone()))
            .collect();
        std::thread::spawn(move || {
            for (path, data) in jobs {
                assert_file_matches(&path, &data, 64 * KIB);
            }
        })
    };
    assert!(
        gate.wait_for_waiters(1, Duration::from_secs(30)),
        "no read reached origin A\nA: {}",
        a.describe_requests()
    );
    drop(a);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(reader.join());
    });
    match rx.recv_timeout(READ_BOUND) {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("the reads did not finish within {READ_BOUND:?} after A died (hung)"),
    }
    // Everything again, from the cache and from B.
    for (path, data) in &set {
        drop_page_cache(&mount.path(rel(path)));
        read_whole(mount.path(rel(path)), data.clone());
    }
    let log = mount.log();
    assert!(
        log_has_line(&log, &["origin excluded", &a_url]),
        "A ({a_url}) must be excluded after its failures:\n{log}"
    );
    mount.unmount();
}

/// A answers 500 to everything: reads are served by B, A is excluded (it then sees only the
/// background health probes, never a data request), and once A answers again it is
/// readmitted after `origin_recover_threshold` good probes and gets data requests again.
#[test]
fn a_failing_origin_is_excluded_and_readmitted_when_it_recovers() {
    let Some(a) = mount_origin() else { return };
    let b = Origin::start();
    let set = files("g", 6, 8, 311);
    put_everywhere(&[&a, &b], &set);
    let a_url = a.url();
    let mount = Mount::builder(origin_list(&[&a, &b]))
        .opt(format!(
            "block_size=256K,passthrough=false,readahead_max=0,{TIMEOUTS},\
             origin_probe_interval=0.2,origin_recover_threshold=2"
        ))
        .mount();
    a.add_fault(Fault::global(FaultAction::Status(500)));
    for (path, data) in &set[..2] {
        read_whole(mount.path(rel(path)), data.clone());
    }
    assert!(
        a.requests().iter().any(|r| r.status == 500),
        "A was never asked\n{}",
        a.describe_requests()
    );
    let log = mount.log();
    assert!(
        log_has_line(&log, &["origin excluded", &a_url]),
        "A ({a_url}) must be excluded after failing {} times:\n{log}",
        3
    );

    // Excluded: A sees health probes of `/` only.
    a.reset();
    read_whole(mount.path(rel(&set[2].0)), set[2].1.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.requests().iter().filter(|r| r.path == "/").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "no health probes reached A\n{}",
            a.describe_requests()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for r in a.requests() {
        assert_eq!(
            r.path, "/",
            "an excluded origin gets health probes only, got {r:?}"
        );
        assert_eq!(r.status, 500);
    }

    // A recovers: readmitted after two good probes, then used for data again.
    a.clear_faults();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log_has_line(&mount.log(), &["origin readmitted", &a_url]) {
        assert!(
            Instant::now() < deadline,
            "A was not readmitted within 20 s\nA: {}\n{}",
            a.describe_requests(),
            mount.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    a.reset();
    for (path, data) in &set[3..] {
        read_whole(mount.path(rel(path)), data.clone());
    }
    let data_requests = a.requests().iter().filter(|r| r.path != "/").count();
    assert!(
        data_requests > 0,
        "a readmitted origin takes data requests again\nA: {}\nB: {}",
        a.describe_requests(),
        b.describe_requests()
    );
    mount.unmount();
}

/// Stats and reads every file of `set` (bounded), with A's and B's request logs on failure.
fn stat_and_read_all(mount: &Mount, set: &[(String, Bytes)], a: &Origin, b: &Origin) {
    for (path, data) in set {
        let p = mount.path(rel(path));
        let md = {
            let p = p.clone();
            bounded("stat", CALL_BOUND, move || fs::metadata(p))
        };
        let md = md.unwrap_or_else(|e| {
            panic!(
                "stat {path} failed ({e}) although B serves it\nA: {}\nB: {}",
                a.describe_requests(),
                b.describe_requests()
            )
        });
        assert_eq!(md.len(), data.len() as u64);
        let result = {
            let (p, data) = (p.clone(), data.clone());
            bounded("read", READ_BOUND, move || {
                std::panic::catch_unwind(move || assert_file_matches(&p, &data, 64 * KIB))
            })
        };
        if let Err(panic) = result {
            eprintln!("A: {}\nB: {}", a.describe_requests(), b.describe_requests());
            std::panic::resume_unwind(panic);
        }
    }
    assert!(
        a.requests().iter().any(|r| r.path != "/"),
        "A must have been tried: the test proved nothing\n{}",
        a.describe_requests()
    );
}

/// The files are looked up while A is fine; then A accepts every request and drops the
/// connection 100 000 bytes into the body. Reads still return exact bytes, served by B.
#[test]
fn an_origin_that_drops_connections_mid_body_is_routed_around_for_reads() {
    let Some(a) = mount_origin() else { return };
    let b = Origin::start();
    let set = files("h", 4, 8, 321);
    put_everywhere(&[&a, &b], &set);
    let mount = Mount::builder(origin_list(&[&a, &b]))
        .opt(format!("block_size=256K,passthrough=false,{TIMEOUTS}"))
        .mount();
    for (path, data) in &set {
        assert_eq!(len_bounded(&mount.path(rel(path))), data.len() as u64);
    }
    a.add_fault(Fault::global(FaultAction::CloseAfter(100_000)));
    a.reset();
    stat_and_read_all(&mount, &set, &a, &b);
    mount.unmount();
}

/// A drops every connection 100 000 bytes into the body from the start, so lookups (whose
/// probe brings the first 256 KiB block along) meet it too. Stats and reads still succeed with
/// exact bytes, served by B.
#[test]
fn an_origin_that_drops_connections_mid_body_is_routed_around_for_lookups() {
    let Some(a) = mount_origin() else { return };
    let b = Origin::start();
    let set = files("h", 4, 8, 331);
    put_everywhere(&[&a, &b], &set);
    let mount = Mount::builder(origin_list(&[&a, &b]))
        .opt(format!("block_size=256K,passthrough=false,{TIMEOUTS}"))
        .mount();
    a.add_fault(Fault::global(FaultAction::CloseAfter(100_000)));
    stat_and_read_all(&mount, &set, &a, &b);
    mount.unmount();
}

/// An origin whose answers always break off mid-body fails like a dead one: after
/// `origin_fail_threshold` (3) broken answers it is excluded, and it then gets no data requests.
#[test]
fn an_origin_that_always_breaks_its_bodies_is_excluded() {
    let Some(a) = mount_origin() else { return };
    let b = Origin::start();
    let set = files("x", 6, 8, 341);
    put_everywhere(&[&a, &b], &set);
    let a_url = a.url();
    let mount = Mount::builder(origin_list(&[&a, &b]))
        .opt(format!(
            "block_size=256K,passthrough=false,{TIMEOUTS},origin_probe_interval=60"
        ))
        .mount();
    a.add_fault(Fault::global(FaultAction::CloseAfter(100_000)));
    stat_and_read_all(&mount, &set[..4], &a, &b);
    let broken = a.requests().iter().filter(|r| r.path != "/").count();
    let log = mount.log();
    assert!(
        log_has_line(&log, &["origin excluded", &a_url]),
        "A ({a_url}) broke {broken} answer(s) off mid-body and is still in the rotation \
         (expected exclusion after 3 failures)\nA: {}\n--- log ---\n{log}",
        a.describe_requests()
    );
    a.reset();
    for (path, data) in &set[4..] {
        read_whole(mount.path(rel(path)), data.clone());
    }
    assert!(
        a.requests().iter().all(|r| r.path == "/"),
        "an excluded origin gets no data requests\n{}",
        a.describe_requests()
    );
    mount.unmount();
}

// ---------------------------------------------------------------------------
// Stale-if-error
// ---------------------------------------------------------------------------

/// Both origins go away. Files read before stay readable past their TTL; an uncached block
/// and a path never seen fail within a bounded time.
#[test]
fn with_every_origin_down_cached_files_stay_readable_past_their_ttl() {
    let Some(a) = mount_origin() else { return };
    let b = Origin::start();
    let cached = pattern(331, 8 * BLOCK + 5);
    let part = pattern(332, 8 * BLOCK + 5);
    let deep = pattern(333, 3 * BLOCK);
    let set = vec![
        ("/cached.bin".to_string(), cached.clone()),
        ("/part.bin".to_string(), part.clone()),
        ("/dir/deep.bin".to_string(), deep.clone()),
    ];
    put_everywhere(&[&a, &b], &set);
    let mount = Mount::builder(origin_list(&[&a, &b]))
        .opt(format!(
            "ttl=1,block_size=256K,passthrough=false,readahead_max=0,{TIMEOUTS}"
        ))
        .mount();
    read_whole(mount.path("cached.bin"), cached.clone());
    read_whole(mount.path("dir/deep.bin"), deep.clone());
    assert_eq!(len_bounded(&mount.path("part.bin")), part.len() as u64);
    a.settle();
    b.settle();
    drop(a);
    drop(b);

    for round in 0..2 {
        std::thread::sleep(Duration::from_millis(2200)); // past ttl=1
        drop_page_cache(&mount.path("cached.bin"));
        read_whole(mount.path("cached.bin"), cached.clone());
        drop_page_cache(&mount.path("dir/deep.bin"));
        read_whole(mount.path("dir/deep.bin"), deep.clone());

        let file = open_bounded(&mount.path("part.bin"));
        no_kernel_readahead(&file);
        let got = pread_bounded(&file, 0, BLOCK).expect("block 0 of part.bin is cached");
        assert_bytes_eq(&got, &part[..BLOCK], "part.bin block 0");
        let got = pread_bounded(&file, 3 * BLOCK as u64, BLOCK);
        assert_eq!(
            errno(&got),
            Some(libc::EIO),
            "round {round}: an uncached block with every origin down: {got:?}"
        );

        let unknown = mount.path("never-seen.bin");
        let got = bounded("stat never-seen.bin", CALL_BOUND, move || {
            fs::metadata(unknown).map(|m| m.len())
        });
        assert!(
            matches!(errno(&got), Some(libc::EIO) | Some(libc::ENOENT)),
            "round {round}: an unknown path with every origin down must fail with EIO or \
             ENOENT, got {got:?}"
        );
    }
    mount.unmount();
}

/// The origin answers 503 to the revalidation of an expired file: the cached copy is served,
/// and once the origin is back a 304 keeps every block.
#[test]
fn a_revalidation_answered_5xx_keeps_the_cached_copy() {
    let Some(origin) = mount_origin() else { return };
    let data = origin.put_pattern("/c.bin", 341, 8 * BLOCK + 77);
    let part = origin.put_pattern("/p.bin", 342, 8 * BLOCK + 77);
    let mount = Mount::builder(origin.url())
        .opt(format!(
            "ttl=1,block_size=256K,passthrough=false,readahead_max=0,{TIMEOUTS}"
        ))
        .mount();
    read_whole(mount.path("c.bin"), data.clone());
    assert_eq!(len_bounded(&mount.path("p.bin")), part.len() as u64);
    origin.settle();
    let etag = origin.entry("/c.bin").unwrap().etag;

    origin.add_fault(Fault::global(FaultAction::Status(503)));
    std::thread::sleep(Duration::from_millis(2200)); // past ttl=1
    origin.reset();
    drop_page_cache(&mount.path("c.bin"));
    read_whole(mount.path("c.bin"), data.clone());
    let requests = origin.requests_for("/c.bin");
    assert!(
        !requests.is_empty(),
        "the expired file must be revalidated\n{}",
        origin.describe_requests()
    );
    for r in &requests {
        assert_eq!(r.header("if-none-match"), Some(etag.as_str()), "{r:?}");
        assert_eq!(
            r.range.as_deref(),
            Some(format!("bytes=0-{}", BLOCK - 1).as_str())
        );
        assert_eq!(r.status, 503);
    }
    let file = open_bounded(&mount.path("p.bin"));
    no_kernel_readahead(&file);
    let got = pread_bounded(&file, 3 * BLOCK as u64, BLOCK);
    assert_eq!(
        errno(&got),
        Some(libc::EIO),
        "uncached block while the origin answers 503"
    );
    drop(file);

    origin.clear_faults();
    origin.reset();
    drop_page_cache(&mount.path("c.bin"));
    read_whole(mount.path("c.bin"), data.clone());
    let requests = origin.requests_for("/c.bin");
    assert!(!requests.is_empty(), "{}", origin.describe_requests());
    for r in &requests {
        assert_eq!(r.header("if-none-match"), Some(etag.as_str()), "{r:?}");
        assert_eq!(r.status, 304, "{r:?}");
    }
    assert_eq!(
        origin.bytes_sent_for("/c.bin"),
        0,
        "a 304 keeps every block"
    );
    read_whole(mount.path("p.bin"), part.clone());
    mount.unmount();
}

// ---------------------------------------------------------------------------
// Origins that lie
// ---------------------------------------------------------------------------

/// What a lie told once must end in.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Once {
    /// The fetch is retried: the read returns exact bytes.
    Retried,
    /// The lying answer's body is itself right: the read returns exact bytes, with or
    /// without a retry.
    Exact,
    /// The answer claims another version: that read fails with EIO, or gives exact bytes when
    /// the kernel retries it (a failed read-ahead is re-read page by page, and the daemon asks
    /// again, still pinned to the version the file was opened with). The next open probes
    /// again and reads exact bytes.
    VersionChange,
}

/// What a lie told forever must end in.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Forever {
    Eio,
    /// The body itself is right (only what follows it is not): exact bytes or EIO.
    ExactOrEio,
}

/// One origin (hyper test origin or the raw one) and how to make it lie.
struct Liar<'a> {
    url: String,
    /// Starts lying about `path`: once, or until `disarm`.
    arm: &'a dyn Fn(&str, bool),
    disarm: &'a dyn Fn(),
    /// How many requests for `path` asked for all of `[start, end)`.
    covering: &'a dyn Fn(&str, u64, u64) -> usize,
}

/// `f.bin` stays under `LIAR_DIRECT_IO_MIN` and is read through the page cache; `g.bin` is
/// over it and is read with direct I/O (the default for big cold files), so every lie is
/// checked on both read paths.
fn liar_files() -> (Bytes, Bytes) {
    (
        pattern(351, 12 * BLOCK + 1000),
        pattern(352, 17 * BLOCK + 1000),
    )
}

const LIAR_DIRECT_IO_MIN: &str = "4M";

/// Phase A: `/f.bin` is looked up (first block cached), the lie is armed for one answer and
/// block 3 is read. Phase B: `/g.bin` is looked up, the lie is armed for good and blocks 1, 5
/// and 10 are read with direct I/O; block 0 (cached) still reads back. After disarming, new
/// opens read both files exactly.
fn lie_scenario(name: &str, liar: Liar, once: Once, forever: Forever) {
    let (f, g) = liar_files();
    let mount = Mount::builder(liar.url.clone())
        .opt(format!(
            "block_size=256K,readahead_max=0,passthrough=false,{TIMEOUTS},\
             direct_io_min_size={LIAR_DIRECT_IO_MIN},zero_message_opens=false"
        ))
        .arg("-v")
        .mount();

    // Phase A: one lie.
    let fpath = mount.path("f.bin");
    assert_eq!(len_bounded(&fpath), f.len() as u64, "{name}: size of f.bin");
    (liar.arm)("/f.bin", true);
    let file = open_bounded(&fpath);
    no_kernel_readahead(&file);
    let (start, end) = (3 * BLOCK, 4 * BLOCK);
    let got = pread_bounded(&file, start as u64, BLOCK);
    match once {
        Once::Retried => {
            let got = got.unwrap_or_else(|e| {
                panic!(
                    "{name}: a lie told once must be retried, got {e}\n{}",
                    mount.log()
                )
            });
            assert_bytes_eq(
                &got,
                &f[start..end],
                &format!("{name}: block 3 after one lie"),
            );
            let asked = (liar.covering)("/f.bin", start as u64, end as u64);
            assert!(
                asked >= 2,
                "{name}: the lie was never told (block 3 asked for {asked} time(s))"
            );
        }
        Once::Exact => {
            let got = got.unwrap_or_else(|e| panic!("{name}: expected exact bytes, got {e}"));
            assert_bytes_eq(
                &got,
                &f[start..end],
                &format!("{name}: block 3 after one lie"),
            );
            assert!((liar.covering)("/f.bin", start as u64, end as u64) >= 1);
        }
        Once::VersionChange => {
            match got {
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {}
                Err(e) => panic!("{name}: expected EIO or exact bytes, got {e}"),
                Ok(bytes) if bytes[..] == f[start..end] => {}
                Ok(bytes) => panic!("{name}: WRONG BYTES: {}", describe_wrong(&bytes)),
            }
            let asked = (liar.covering)("/f.bin", start as u64, end as u64);
            assert!(asked >= 1, "{name}: the lie was never told");
        }
    }
    drop(file);
    (liar.disarm)();
    read_whole(fpath.clone(), f.clone());
    let file = open_bounded(&fpath);
    assert_random_preads(&file, &f, 353, 30, 3 * BLOCK, name);
    drop(file);

    // Phase B: lies for good.
    let gpath = mount.path("g.bin");
    assert_eq!(len_bounded(&gpath), g.len() as u64, "{name}: size of g.bin");
    (liar.arm)("/g.bin", false);
    let file = open_bounded(&gpath);
    no_kernel_readahead(&file);
    // Whole blocks only: every lie here starts 100 000 bytes into a body.
    for block in [1, 5, 10] {
        let start = block * BLOCK;
        let end = (start + BLOCK).min(g.len());
        let got = pread_bounded(&file, start as u64, BLOCK);
        match (got, forever) {
            (Err(e), _) if e.raw_os_error() == Some(libc::EIO) => {}
            (Err(e), _) => {
                panic!("{name}: block {block} under a permanent lie: expected EIO, got {e}")
            }
            (Ok(bytes), Forever::ExactOrEio) if bytes[..] == g[start..end] => {}
            (Ok(bytes), Forever::ExactOrEio) => panic!(
                "{name}: block {block}: WRONG BYTES: {}",
                describe_wrong(&bytes)
            ),
            (Ok(bytes), Forever::Eio) => panic!(
                "{name}: block {block} under a permanent lie must fail with EIO, got {}",
                if bytes[..] == g[start..end] {
                    "the right bytes (so the lie was never told?)".to_string()
                } else {
                    format!("WRONG BYTES: {}", describe_wrong(&bytes))
                }
            ),
        }
    }
    let got = pread_bounded(&file, 0, BLOCK).expect("block 0 of g.bin is cached");
    assert_bytes_eq(
        &got,
        &g[..BLOCK],
        &format!("{name}: cached block 0 of g.bin"),
    );
    drop(file);
    let log = mount.log();
    let direct_opens = |path: &str| {
        log.lines()
            .filter(|l| l.contains("open: direct I/O") && l.contains(&format!("path={path}")))
            .count()
    };
    assert!(
        direct_opens("/g.bin") > 0 && direct_opens("/f.bin") == 0,
        "{name}: g.bin must be read with direct I/O and f.bin through the page cache:\n{log}"
    );
    (liar.disarm)();
    read_whole(gpath.clone(), g.clone());
    let file = open_bounded(&gpath);
    assert_random_preads(&file, &g, 354, 30, 3 * BLOCK, name);
    drop(file);
    mount.unmount();
}

/// Runs `lie_scenario` against the hyper test origin, `make` building the fault's action for
/// a path (given that path's content).
fn hyper_lie(name: &str, make: impl Fn(Bytes) -> FaultAction, once: Once, forever: Forever) {
    let origin = Origin::start();
    let (f, g) = liar_files();
    origin.put("/f.bin", f);
    origin.put("/g.bin", g);
    let arm = |path: &str, one: bool| {
        let fault = Fault::path(path, make(origin.content(path)));
        origin.add_fault(if one { fault.times(1) } else { fault });
    };
    let disarm = || origin.clear_faults();
    let covering = |path: &str, start: u64, end: u64| {
        let len = origin.content(path).len() as u64;
        origin
            .requests_for(path)
            .iter()
            .filter(|r| r.covers(len, start, end))
            .count()
    };
    let liar = Liar {
        url: origin.url(),
        arm: &arm,
        disarm: &disarm,
        covering: &covering,
    };
    lie_scenario(name, liar, once, forever);
}

/// A rewrite that only touches 206 answers to ranges past the first block (never probes).
fn on_range_answers(
    f: impl Fn(&RequestRecord, &mut Answer, u64, u64) + Send + Sync + 'static,
    len: u64,
) -> FaultAction {
    FaultAction::Rewrite(Arc::new(move |req: &RequestRecord, answer: &mut Answer| {
        let (start, end) = req.requested_span(len);
        if answer.status == 206 && start > 0 {
            f(req, answer, start, end);
        }
    }))
}

#[test]
fn lie_connection_closed_mid_body() {
    common::require_mount!();
    hyper_lie(
        "close mid-body",
        |_| FaultAction::CloseAfter(100_000),
        Once::Retried,
        Forever::Eio,
    );
}

#[test]
fn lie_stall_mid_body_beyond_receive_timeout() {
    common::require_mount!();
    let gate = Gate::new(); // never released: the origin's drop ends the held answers
    hyper_lie(
        "stall mid-body",
        move |_| FaultAction::StallBody {
            after: 100_000,
            stall: Stall::Until(gate.clone()),
        },
        Once::Retried,
        Forever::Eio,
    );
}

/// A correctly labelled answer for the wrong range: `Content-Range` does not match `Range`.
#[test]
fn lie_content_range_does_not_match_the_request() {
    common::require_mount!();
    hyper_lie(
        "wrong Content-Range",
        |content| {
            let len = content.len() as u64;
            on_range_answers(
                move |_, answer, start, end| {
                    // The same number of bytes, from one block earlier, labelled as such.
                    let (a, b) = (start - BLOCK as u64, end - BLOCK as u64);
                    answer.body = content.slice(a as usize..b as usize);
                    answer.set_header("content-range", format!("bytes {a}-{}/{len}", b - 1));
                },
                len,
            )
        },
        Once::Retried,
        Forever::Eio,
    );
}

/// A 200 with the whole body and another ETag where a 206 was asked for.
#[test]
fn lie_200_with_another_etag_instead_of_206() {
    common::require_mount!();
    hyper_lie(
        "200 with another ETag",
        |content| {
            let len = content.len() as u64;
            on_range_answers(
                move |_, answer, _, _| {
                    answer.status = 200;
                    answer.body = content.clone();
                    answer.remove_header("content-range");
                    answer.set_header("etag", "\"someone-else\"");
                },
                len,
            )
        },
        Once::VersionChange,
        Forever::Eio,
    );
}

#[test]
fn lie_412_to_a_range_request() {
    common::require_mount!();
    hyper_lie(
        "412",
        |_| FaultAction::Status(412),
        Once::VersionChange,
        Forever::Eio,
    );
}

// --- a raw origin, for lies hyper will not tell (bodies that disagree with Content-Length) ---

#[derive(Clone, Copy, Debug, PartialEq)]
enum RawLie {
    /// Content-Length is the full range, half of it is sent, the connection is closed.
    ShortBody,
    /// The full range as promised, followed by bytes nobody asked for: a fake second
    /// response (`206`, the file's ETag, zeros for a range ston-fs never asks for).
    LongBody,
}

struct RawFault {
    path: String,
    lie: RawLie,
    left: Option<u64>,
}

struct RawRecord {
    path: String,
    range: Option<String>,
}

struct RawShared {
    files: HashMap<String, Bytes>,
    fault: Mutex<Option<RawFault>>,
    log: Mutex<Vec<RawRecord>>,
    stop: AtomicBool,
}

/// A minimal HTTP/1.1 origin on a plain socket: GET of whole files and single ranges,
/// If-None-Match, and the `RawLie`s.
struct RawOrigin {
    addr: SocketAddr,
    shared: Arc<RawShared>,
    accept: Option<JoinHandle<()>>,
}

const RAW_MTIME: u64 = 1_700_000_000;

impl RawOrigin {
    fn start(files: HashMap<String, Bytes>) -> RawOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind raw origin");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(RawShared {
            files,
            fault: Mutex::new(None),
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let sh = shared.clone();
        let accept = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let sh = sh.clone();
                    std::thread::spawn(move || serve_raw(stream, &sh));
                }
            }
        });
        RawOrigin {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn set_fault(&self, fault: Option<RawFault>) {
        *self.shared.fault.lock().unwrap() = fault;
    }

    fn covering(&self, path: &str, start: u64, end: u64) -> usize {
        let len = self.shared.files[path].len() as u64;
        self.shared
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .filter(|r| match r.range.as_deref().map(|v| parse_range(v, len)) {
                Some(RangeSpec::Satisfiable(a, b)) => a <= start && end <= b + 1,
                _ => true,
            })
            .count()
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn serve_raw(mut stream: TcpStream, shared: &RawShared) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let target = request_line.split(' ').nth(1).unwrap_or("/").to_string();
        let path = target.split('?').next().unwrap_or("/").to_string();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let range = headers.get("range").cloned();
        shared.log.lock().unwrap().push(RawRecord {
            path: path.clone(),
            range: range.clone(),
        });
        let (bytes, close) = raw_answer(shared, &path, &headers, range.as_deref());
        if stream.write_all(&bytes).is_err() {
            return;
        }
        let _ = stream.flush();
        if close {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

fn raw_answer(
    shared: &RawShared,
    path: &str,
    headers: &HashMap<String, String>,
    range: Option<&str>,
) -> (Vec<u8>, bool) {
    let simple = |status: &str| {
        let body = format!("{status}\n");
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        ([head.into_bytes(), body.into_bytes()].concat(), false)
    };
    let Some(data) = shared.files.get(path) else {
        return simple(if path == "/" {
            "403 Forbidden"
        } else {
            "404 Not Found"
        });
    };
    let len = data.len() as u64;
    let etag = format!("\"raw-{len:x}\"");
    let validators = format!(
        "ETag: {etag}\r\nLast-Modified: {}\r\nAccept-Ranges: bytes\r\n",
        http_date(RAW_MTIME)
    );
    if headers.get("if-none-match") == Some(&etag) {
        return (
            format!("HTTP/1.1 304 Not Modified\r\n{validators}\r\n").into_bytes(),
            false,
        );
    }
    let (status, span) = match range.map(|r| parse_range(r, len)) {
        Some(RangeSpec::Satisfiable(a, b)) => ("206 Partial Content", Some((a, b))),
        _ => ("200 OK", None),
    };
    let (a, b) = span.unwrap_or((0, len.saturating_sub(1)));
    let body = data.slice(a as usize..(b + 1) as usize);
    let content_range = match span {
        Some((a, b)) => format!("Content-Range: bytes {a}-{b}/{len}\r\n"),
        None => String::new(),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\n{validators}{content_range}Content-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let lie = {
        let mut fault = shared.fault.lock().unwrap();
        match fault.as_mut() {
            Some(f) if f.path == path && span.is_some_and(|(a, _)| a > 0) && f.left != Some(0) => {
                if let Some(n) = f.left.as_mut() {
                    *n -= 1;
                }
                Some(f.lie)
            }
            _ => None,
        }
    };
    match lie {
        None => ([head.into_bytes(), body.to_vec()].concat(), false),
        Some(RawLie::ShortBody) => (
            [head.into_bytes(), body[..body.len() / 2].to_vec()].concat(),
            true,
        ),
        Some(RawLie::LongBody) => {
            let fake = format!(
                "HTTP/1.1 206 Partial Content\r\n{validators}Content-Range: bytes 1-4096/{len}\r\n\
                 Content-Length: 4096\r\n\r\n"
            );
            let junk = [fake.into_bytes(), vec![0u8; 4096]].concat();
            ([head.into_bytes(), body.to_vec(), junk].concat(), false)
        }
    }
}

fn raw_lie(name: &str, lie: RawLie, once: Once, forever: Forever) {
    let (f, g) = liar_files();
    let origin = RawOrigin::start(HashMap::from([
        ("/f.bin".to_string(), f),
        ("/g.bin".to_string(), g),
    ]));
    let arm = |path: &str, one: bool| {
        origin.set_fault(Some(RawFault {
            path: path.to_string(),
            lie,
            left: one.then_some(1),
        }))
    };
    let disarm = || origin.set_fault(None);
    let covering = |path: &str, start: u64, end: u64| origin.covering(path, start, end);
    let liar = Liar {
        url: origin.url(),
        arm: &arm,
        disarm: &disarm,
        covering: &covering,
    };
    lie_scenario(name, liar, once, forever);
}

#[test]
fn lie_fewer_body_bytes_than_content_length() {
    common::require_mount!();
    raw_lie(
        "fewer bytes than Content-Length",
        RawLie::ShortBody,
        Once::Retried,
        Forever::Eio,
    );
}

/// The answer carries more bytes than its Content-Length (a fake second answer of zeros).
/// The promised bytes are right, so reads may succeed, but the extra bytes must never be
/// taken for an answer: never zeros, never a hang.
#[test]
fn lie_more_body_bytes_than_content_length() {
    common::require_mount!();
    let (f, g) = liar_files();
    let origin = RawOrigin::start(HashMap::from([
        ("/f.bin".to_string(), f.clone()),
        ("/g.bin".to_string(), g),
    ]));
    // Phase A/B of the common scenario, where a lie told once cannot be seen in the answer
    // itself (its body is right): the read returns exact bytes either way.
    let arm = |path: &str, one: bool| {
        origin.set_fault(Some(RawFault {
            path: path.to_string(),
            lie: RawLie::LongBody,
            left: one.then_some(1),
        }))
    };
    let disarm = || origin.set_fault(None);
    let covering = |path: &str, start: u64, end: u64| origin.covering(path, start, end);
    let liar = Liar {
        url: origin.url(),
        arm: &arm,
        disarm: &disarm,
        covering: &covering,
    };
    lie_scenario(
        "more bytes than Content-Length",
        liar,
        Once::Exact,
        Forever::ExactOrEio,
    );

    // And sequential reads of a whole file while every answer carries the junk.
    let mount = Mount::builder(origin.url())
        .opt(format!("block_size=256K,passthrough=false,{TIMEOUTS}"))
        .mount();
    origin.set_fault(Some(RawFault {
        path: "/f.bin".into(),
        lie: RawLie::LongBody,
        left: None,
    }));
    let path = mount.path("f.bin");
    let result = bounded(
        "read f.bin with junk after every answer",
        READ_BOUND,
        move || {
            let mut file = File::open(&path)?;
            let mut got = Vec::new();
            file.read_to_end(&mut got).map(|_| got)
        },
    );
    match result {
        Ok(got) => assert_bytes_eq(&got, &f, "f.bin with junk after every answer"),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::EIO),
            "only EIO may replace bytes: {e}"
        ),
    }
    mount.unmount();
}

// ---------------------------------------------------------------------------
// kill -9 in the middle of many downloads
// ---------------------------------------------------------------------------

/// Reads `path` with 128 KiB reads, comparing every chunk; stops at the first error (the daemon
/// is killed under it). Returns the bytes verified and the error, if any.
fn read_until_error(path: &Path, want: &[u8]) -> (usize, Option<std::io::Error>) {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return (0, Some(e)),
    };
    let mut buf = vec![0u8; 128 * KIB];
    let mut pos = 0;
    loop {
        match file.read(&mut buf) {
            Ok(0) => return (pos, None),
            Ok(n) => {
                assert!(
                    pos + n <= want.len(),
                    "{}: read past the end",
                    path.display()
                );
                assert_bytes_eq(
                    &buf[..n],
                    &want[pos..pos + n],
                    &format!("{} @ {pos} (before the kill)", path.display()),
                );
                pos += n;
            }
            Err(e) => return (pos, Some(e)),
        }
    }
}

#[test]
fn kill9_during_concurrent_downloads_never_serves_wrong_bytes() {
    let Some(origin) = mount_origin() else { return };
    let rounds = 2;
    let per_round = 6;
    let all = files("c", rounds * per_round, 24, 361);
    for (path, data) in &all {
        origin.put(path, data.clone());
    }
    let cache = tempfile::tempdir().unwrap();
    let opts = "ttl=3600,block_size=256K";

    for round in 0..rounds {
        let set = &all[round * per_round..(round + 1) * per_round];
        let mut mount = Mount::builder(origin.url())
            .cache_dir(cache.path())
            .opt(opts)
            .mount();
        // Durably cached: read whole, then a pause for the journal to catch up.
        read_whole(mount.path(rel(&set[0].0)), set[0].1.clone());
        origin.settle();
        std::thread::sleep(Duration::from_secs(3));

        // Many downloads at once; one of them is surely in the middle of a body at the kill.
        origin.reset();
        let gate = Gate::new();
        origin.add_fault(Fault::path(
            &set[per_round - 1].0,
            FaultAction::StallBody {
                after: 300 * KIB as u64,
                stall: Stall::Until(gate.clone()),
            },
        ));
        let readers: Vec<JoinHandle<(usize, Option<std::io::Error>)>> = set[1..]
            .iter()
            .map(|(path, data)| {
                let (p, d) = (mount.path(rel(path)), data.clone());
                std::thread::spawn(move || read_until_error(&p, &d))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while gate.waiting() == 0 || origin.bytes_sent() < 8 * MIB as u64 {
            assert!(
                Instant::now() < deadline,
                "downloads did not get going\n{}",
                origin.describe_requests()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        mount.kill9().expect("daemon reaped after SIGKILL");
        let umount = std::process::Command::new("umount")
            .arg("-l")
            .arg(mount.mountpoint())
            .status()
            .expect("run umount -l");
        assert!(umount.success(), "umount -l of the dead mount: {umount}");
        assert!(!mount.is_mounted());
        let held = readers.len() - 1; // the reader of the file whose answer is held
        for (i, reader) in readers.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(reader.join());
            });
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(Ok((done, error))) => assert!(
                    i != held || error.is_some(),
                    "round {round}: the held download finished ({done} bytes) before the \
                     kill: the test proved nothing"
                ),
                Ok(Err(panic)) => std::panic::resume_unwind(panic),
                Err(_) => panic!("reader {i} hung after the daemon was killed"),
            }
        }
        gate.release();
        origin.clear_faults();
        origin.settle();
        drop(mount);

        // Remount on the same cache: the durable file costs nothing, everything is exact.
        origin.reset();
        let mount = Mount::builder(origin.url())
            .cache_dir(cache.path())
            .opt(opts)
            .mount();
        let durable = &set[0];
        read_whole(mount.path(rel(&durable.0)), durable.1.clone());
        origin.settle();
        assert_eq!(
            origin.request_count_for(&durable.0),
            0,
            "round {round}: {} was durably cached before the kill: it must come from the \
             cache\n{}",
            durable.0,
            origin.describe_requests()
        );
        for (path, data) in &all[..(round + 1) * per_round] {
            read_whole(mount.path(rel(path)), data.clone());
            let file = open_bounded(&mount.path(rel(path)));
            assert_random_preads(&file, data, 362 + round as u64, 20, 3 * BLOCK, path);
        }
        mount.unmount();
    }
}
