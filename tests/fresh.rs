//! Freshness and invalidation: `ttl`, `negative_ttl`, the origin's Cache-Control (and
//! `ignore_cache_control`), per-path `ttl_rule`s, revalidation that keeps every cached block on
//! a 304, new versions served whole, an open file that keeps the version it opened, and
//! purging through `unlink()` and `ston-fs purge|expire|hardpurge` on a live mount.
//!
//! Every test mounts the real binary against the in-process test origin and asserts exact
//! bytes, exact errno values and exact origin requests. The only waits are for TTLs to run out
//! (always well past them) and bounded waits for the origin to go idle.

mod common;

use std::fs::{self, File};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::mount::{find_files_with_ext, run_cli, CliOutcome, Mount};
use common::mount_origin;
use common::origin::{pattern, Fault, FaultAction, Origin, RequestRecord};
use common::{
    assert_bytes_eq, assert_file_matches, assert_random_preads, drop_page_cache, drop_pages_of,
    errno, no_kernel_readahead, pread_full, KIB,
};

const BLOCK: usize = 256 * KIB;
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// Sleeps `secs` seconds: only ever used to let a TTL run out (with a wide margin).
fn let_ttl_pass(secs: f64) {
    std::thread::sleep(Duration::from_secs_f64(secs));
}

/// Page cache dropped, then the whole file read and compared.
#[track_caller]
fn reread(mount: &Mount, rel: &str, want: &[u8]) {
    let path = mount.path(rel);
    drop_page_cache(&path);
    assert_file_matches(&path, want, 64 * KIB);
}

fn first_block_range() -> String {
    format!("bytes=0-{}", BLOCK - 1)
}

/// Whether `r` is the conditional probe of `path` against the origin's current version.
fn is_conditional_probe(origin: &Origin, r: &RequestRecord, path: &str) -> bool {
    let entry = origin.entry(path).expect("file at the origin");
    r.path == path
        && r.range.as_deref() == Some(first_block_range().as_str())
        && r.header("if-none-match") == Some(entry.etag.as_str())
        && r.header("if-modified-since") == Some(entry.last_modified().as_str())
}

/// The origin saw exactly one request for `path` since the last reset: the conditional probe
/// of the first block, answered 304, and it sent no body bytes for it.
#[track_caller]
fn assert_single_304(origin: &Origin, path: &str, what: &str) {
    let requests = origin.requests_for(path);
    assert_eq!(
        requests.len(),
        1,
        "{what}: expected exactly one request for {path} (the conditional probe)\n{}",
        origin.describe_requests()
    );
    let r = &requests[0];
    assert!(
        is_conditional_probe(origin, r, path),
        "{what}: the one request must be a conditional probe of the first block (Range {}, \
         If-None-Match and If-Modified-Since of the cached version), got {r:?}",
        first_block_range()
    );
    assert_eq!(r.status, 304, "{what}: the probe must be answered 304");
    assert_eq!(
        origin.bytes_sent_for(path),
        0,
        "{what}: a 304 keeps every block, no body may be sent"
    );
}

#[track_caller]
fn assert_no_requests(origin: &Origin, what: &str) {
    assert_eq!(
        origin.request_count(),
        0,
        "{what}: expected no origin request\n{}",
        origin.describe_requests()
    );
}

/// Whether some `.meta` file in the cache names `path` (headers are JSON: `"path":"/x"`).
fn meta_names(cache_dir: &Path, path: &str) -> bool {
    let needle = format!("\"path\":\"{path}\"");
    find_files_with_ext(cache_dir, "meta").iter().any(|meta| {
        fs::read(meta)
            .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
    })
}

fn cli(args: &[&dyn AsRef<std::ffi::OsStr>]) -> CliOutcome {
    let args: Vec<std::ffi::OsString> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    run_cli(args, CLI_TIMEOUT)
}

#[track_caller]
fn assert_cli_says(out: &CliOutcome, want: &str) {
    assert!(out.success(), "command failed:\n{}", out.describe());
    assert_eq!(
        out.stdout,
        format!("{want}\n"),
        "output:\n{}",
        out.describe()
    );
}

// ---------------------------------------------------------------------------
// TTL and revalidation
// ---------------------------------------------------------------------------

/// `ttl=2` (not 1: freshness is counted in whole seconds, and the re-read must not straddle
/// the end of the renewed TTL, which would make a second, legitimate, probe).
#[test]
fn expired_ttl_costs_one_conditional_request_and_a_304_keeps_every_block() {
    let Some(origin) = mount_origin() else { return };
    let data = origin
        .put("/media/clip.bin", pattern(101, 9 * BLOCK + 1234))
        .data;
    let mount = Mount::builder(origin.url())
        .opt("ttl=2,block_size=256K,passthrough=false")
        .mount();
    assert_file_matches(&mount.path("media/clip.bin"), &data, 64 * KIB);
    origin.settle();
    assert!(
        origin.bytes_sent_for("/media/clip.bin") >= data.len() as u64,
        "the first read must come from the origin"
    );

    // Within the TTL: nothing reaches the origin.
    origin.reset();
    reread(&mount, "media/clip.bin", &data);
    origin.settle();
    assert_no_requests(&origin, "re-read within the TTL");

    // Past the TTL: the lookup revalidates once, the 304 keeps every block, and the full
    // re-read (pages dropped, no passthrough) is served from the cache.
    let_ttl_pass(3.2);
    origin.reset();
    reread(&mount, "media/clip.bin", &data);
    let file = File::open(mount.path("media/clip.bin")).unwrap();
    assert_random_preads(&file, &data, 102, 60, 3 * BLOCK, "after the 304");
    drop(file);
    origin.settle();
    assert_single_304(&origin, "/media/clip.bin", "full re-read after the TTL");
    // The directory's TTL ran out too: its own revalidation is the only other request.
    for r in origin.requests() {
        assert!(
            r.path == "/media/clip.bin" || r.path == "/media",
            "unexpected request {r:?}\n{}",
            origin.describe_requests()
        );
    }

    // The 304 renewed the TTL: a re-read right after costs nothing.
    origin.reset();
    reread(&mount, "media/clip.bin", &data);
    origin.settle();
    assert_no_requests(&origin, "re-read after the renewal");
    mount.unmount();
}

fn ttl_rule_files(origin: &Origin) -> (Bytes, Bytes) {
    let live = pattern(111, 5 * BLOCK + 17);
    let vod = pattern(112, 4 * BLOCK + 3);
    origin.put("/live/stream.bin", live.clone());
    origin.put("/vod/movie.bin", vod.clone());
    // The rule wins over the origin's own Cache-Control.
    origin.add_fault(Fault::path(
        "/live/stream.bin",
        FaultAction::Header("cache-control".into(), "max-age=3600".into()),
    ));
    (live, vod)
}

/// `/live/*` gets a 2 s TTL from the rule; `/vod/*` keeps `ttl=3600`.
fn check_ttl_rule(origin: &Origin, mount: &Mount, live: &Bytes, vod: &Bytes) {
    assert_file_matches(&mount.path("live/stream.bin"), live, 64 * KIB);
    assert_file_matches(&mount.path("vod/movie.bin"), vod, 64 * KIB);
    origin.settle();
    let_ttl_pass(3.2);
    origin.reset();
    reread(mount, "live/stream.bin", live);
    origin.settle();
    assert_single_304(origin, "/live/stream.bin", "ttl_rule /live/*:2");
    origin.reset();
    reread(mount, "vod/movie.bin", vod);
    origin.settle();
    assert_no_requests(origin, "a path outside the rule keeps ttl=3600");
}

#[test]
fn ttl_rule_option_gives_a_subtree_its_own_ttl() {
    let Some(origin) = mount_origin() else { return };
    let (live, vod) = ttl_rule_files(&origin);
    let mount = Mount::builder(origin.url())
        .opt("ttl=3600,ttl_rule=/live/*:2,block_size=256K,passthrough=false")
        .mount();
    check_ttl_rule(&origin, &mount, &live, &vod);
    mount.unmount();
}

#[test]
fn ttl_rule_tables_in_the_config_file_give_a_subtree_its_own_ttl() {
    let Some(origin) = mount_origin() else { return };
    let (live, vod) = ttl_rule_files(&origin);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ston-fs.toml");
    fs::write(
        &config,
        "ttl = 3600\nblock_size = \"256K\"\npassthrough = false\n\n\
         [[ttl_rule]]\npattern = \"/live/*\"\nttl = 2\n",
    )
    .unwrap();
    let mount = Mount::builder(origin.url())
        .arg("--config")
        .arg(&config)
        .mount();
    check_ttl_rule(&origin, &mount, &live, &vod);
    mount.unmount();
}

// ---------------------------------------------------------------------------
// Cache-Control
// ---------------------------------------------------------------------------

const CC_FILES: [(&str, Option<&str>); 4] = [
    ("/cc/maxage.bin", Some("max-age=3")),
    ("/cc/nocache.bin", Some("no-cache")),
    ("/cc/nostore.bin", Some("no-store")),
    ("/cc/plain.bin", None),
];

/// An origin with the four Cache-Control cases. Two of these get identical files (same
/// put order, hence the same ETags and dates).
fn cc_origin() -> (Origin, Vec<Bytes>) {
    let origin = Origin::start();
    let mut datas = Vec::new();
    for (i, (path, header)) in CC_FILES.iter().enumerate() {
        let data = pattern(120 + i as u64, 4 * BLOCK + 99);
        origin.put(path, data.clone());
        if let Some(value) = header {
            origin.add_fault(Fault::path(
                path,
                FaultAction::Header("cache-control".into(), value.to_string()),
            ));
        }
        datas.push(data);
    }
    (origin, datas)
}

#[test]
fn origin_cache_control_is_honoured_unless_ignored() {
    common::require_mount!();
    let (honour_origin, datas) = cc_origin();
    let (ignore_origin, datas2) = cc_origin();
    assert_eq!(datas, datas2);
    let opts = "ttl=3600,block_size=256K,passthrough=false";
    let honour = Mount::builder(honour_origin.url()).opt(opts).mount();
    let ignore = Mount::builder(ignore_origin.url())
        .opt(opts)
        .opt("ignore_cache_control=true")
        .mount();
    let rel = |path: &str| path.trim_start_matches('/').to_string();

    for (mount, origin) in [(&honour, &honour_origin), (&ignore, &ignore_origin)] {
        for ((path, _), data) in CC_FILES.iter().zip(&datas) {
            assert_file_matches(&mount.path(&rel(path)), data, 64 * KIB);
        }
        origin.settle();
        if origin.url() == honour_origin.url() {
            // Right away (well within max-age=3), max-age and plain files are fresh.
            honour_origin.reset();
            reread(&honour, "cc/maxage.bin", &datas[0]);
            reread(&honour, "cc/plain.bin", &datas[3]);
            assert_no_requests(&honour_origin, "max-age=3 and ttl=3600 are still fresh");
        }
    }

    // no-store: nothing of it on disk (unless Cache-Control is ignored).
    assert!(meta_names(honour.cache_dir(), "/cc/maxage.bin"));
    assert!(
        !meta_names(honour.cache_dir(), "/cc/nostore.bin"),
        "a no-store answer must not be kept on disk"
    );
    assert!(meta_names(ignore.cache_dir(), "/cc/nostore.bin"));

    // Right away, within every TTL.
    honour_origin.reset();
    reread(&honour, "cc/nostore.bin", &datas[2]);
    honour_origin.settle();
    assert!(
        honour_origin.bytes_sent_for("/cc/nostore.bin") >= datas[2].len() as u64,
        "no-store: every read goes to the origin\n{}",
        honour_origin.describe_requests()
    );
    honour_origin.reset();
    reread(&honour, "cc/nocache.bin", &datas[1]);
    honour_origin.settle();
    let requests = honour_origin.requests();
    assert!(
        !requests.is_empty(),
        "no-cache: every open revalidates\n{}",
        honour_origin.describe_requests()
    );
    for r in &requests {
        assert!(
            is_conditional_probe(&honour_origin, r, "/cc/nocache.bin") && r.status == 304,
            "no-cache: only conditional probes answered 304, got {r:?}"
        );
    }
    assert_eq!(
        honour_origin.bytes_sent(),
        0,
        "no-cache: a 304 keeps the blocks"
    );

    ignore_origin.reset();
    for ((path, _), data) in CC_FILES.iter().zip(&datas) {
        reread(&ignore, &rel(path), data);
    }
    ignore_origin.settle();
    assert_no_requests(&ignore_origin, "ignore_cache_control: ttl=3600 for all");

    // Past max-age=3.
    let_ttl_pass(4.2);
    honour_origin.reset();
    reread(&honour, "cc/maxage.bin", &datas[0]);
    honour_origin.settle();
    assert_single_304(&honour_origin, "/cc/maxage.bin", "max-age=3 ran out");
    honour_origin.reset();
    reread(&honour, "cc/plain.bin", &datas[3]);
    honour_origin.settle();
    assert_no_requests(&honour_origin, "no Cache-Control: ttl=3600");

    ignore_origin.reset();
    for ((path, _), data) in CC_FILES.iter().zip(&datas) {
        reread(&ignore, &rel(path), data);
    }
    ignore_origin.settle();
    assert_no_requests(&ignore_origin, "ignore_cache_control after max-age ran out");

    honour.unmount();
    ignore.unmount();
}

// ---------------------------------------------------------------------------
// New versions
// ---------------------------------------------------------------------------

#[test]
fn a_new_version_after_the_ttl_is_served_whole_and_never_mixed() {
    let Some(origin) = mount_origin() else { return };
    let cases: Vec<(&str, Bytes, Bytes)> = vec![
        (
            "/v/same.bin",
            pattern(131, 6 * BLOCK + 77),
            pattern(132, 6 * BLOCK + 77),
        ),
        (
            "/v/grow.bin",
            pattern(133, 2 * BLOCK + 5),
            pattern(134, 7 * BLOCK + 3),
        ),
        (
            "/v/shrink.bin",
            pattern(135, 7 * BLOCK + 3),
            pattern(136, BLOCK / 2),
        ),
        // Only one middle block of this one is cached before the change.
        (
            "/v/partial.bin",
            pattern(137, 8 * BLOCK),
            pattern(138, 8 * BLOCK),
        ),
    ];
    for (path, old, _) in &cases {
        origin.put(path, old.clone());
    }
    // A fractional TTL is accepted too.
    let mount = Mount::builder(origin.url())
        .opt("ttl=1.5,block_size=256K")
        .mount();
    let rel = |path: &str| path.trim_start_matches('/').to_string();
    for (path, old, _) in &cases {
        if path.ends_with("partial.bin") {
            let file = File::open(mount.path(&rel(path))).unwrap();
            no_kernel_readahead(&file);
            let got = pread_full(&file, 4 * BLOCK as u64, 4096).unwrap();
            assert_bytes_eq(&got, &old[4 * BLOCK..4 * BLOCK + 4096], "partial.bin v1");
        } else {
            assert_file_matches(&mount.path(&rel(path)), old, 64 * KIB);
        }
    }
    origin.settle();

    let mut new_etags = Vec::new();
    for (path, _, new) in &cases {
        new_etags.push(origin.replace(path, new.clone()).etag);
    }
    let_ttl_pass(2.7);
    origin.reset();
    for (path, _, new) in &cases {
        let p = mount.path(&rel(path));
        assert_eq!(
            fs::metadata(&p).unwrap().len(),
            new.len() as u64,
            "{path}: size of the new version"
        );
        assert_file_matches(&p, new, 64 * KIB);
        let file = File::open(&p).unwrap();
        assert_random_preads(&file, new, 139, 40, 2 * BLOCK, path);
    }
    origin.settle();
    // Every block of the new versions was asked for pinned to the new version.
    for ((path, _, _), etag) in cases.iter().zip(&new_etags) {
        for r in origin.requests_for(path) {
            if r.header("if-range").is_some() {
                assert_eq!(
                    r.header("if-range"),
                    Some(etag.as_str()),
                    "{path}: range request pinned to the wrong version: {r:?}"
                );
            }
        }
    }
    mount.unmount();
}

/// Opens a 16-block file and reads blocks 0 and 2, then the origin changes. The open file
/// keeps its version: the cached blocks still give the old bytes, every other block fails
/// with EIO (the range requests carry `If-Range: <old ETag>`, the origin answers 200 with the
/// new version). A new open after the TTL sees the new version whole.
#[test]
fn an_open_file_keeps_its_version_when_the_origin_changes() {
    let Some(origin) = mount_origin() else { return };
    let blocks = 16;
    let old = pattern(141, blocks * BLOCK);
    let new = pattern(142, blocks * BLOCK);
    let old_etag = origin.put("/movie.bin", old.clone()).etag;
    let mount = Mount::builder(origin.url())
        .opt("ttl=1,block_size=256K,passthrough=false,readahead_max=0")
        .mount();
    let path = mount.path("movie.bin");
    let file = File::open(&path).unwrap();
    no_kernel_readahead(&file);
    let block = |b: usize| &old[b * BLOCK..(b + 1) * BLOCK];
    for b in [0, 2] {
        let got = pread_full(&file, (b * BLOCK) as u64, BLOCK).unwrap();
        assert_bytes_eq(&got, block(b), &format!("block {b} before the change"));
    }
    origin.settle();

    let new_etag = origin.replace("/movie.bin", new.clone()).etag;
    assert_ne!(old_etag, new_etag);
    let_ttl_pass(2.2);
    origin.reset();
    drop_pages_of(&file);
    for b in 0..blocks {
        let got = pread_full(&file, (b * BLOCK) as u64, BLOCK);
        match b {
            0 | 2 => {
                let got = got.unwrap_or_else(|e| {
                    panic!("block {b} was cached from the old version, yet: {e}")
                });
                assert_bytes_eq(&got, block(b), &format!("old fd, cached block {b}"));
            }
            _ => match got {
                Err(ref e) if e.raw_os_error() == Some(libc::EIO) => {}
                Err(e) => panic!("old fd, uncached block {b}: expected EIO, got {e}"),
                Ok(bytes) => panic!(
                    "old fd, block {b} (not cached before the change): expected EIO, got {} \
                     bytes of {}",
                    bytes.len(),
                    which_version(&bytes, block(b), &new[b * BLOCK..(b + 1) * BLOCK])
                ),
            },
        }
    }
    // The cached blocks still read back after the fetches failed (pages dropped again).
    drop_pages_of(&file);
    for b in [2, 0] {
        let got = pread_full(&file, (b * BLOCK) as u64, BLOCK).unwrap();
        assert_bytes_eq(&got, block(b), &format!("old fd, cached block {b}, again"));
    }
    origin.settle();
    let range_requests: Vec<RequestRecord> = origin
        .requests_for("/movie.bin")
        .into_iter()
        .filter(|r| r.header("if-range").is_some())
        .collect();
    assert!(
        !range_requests.is_empty(),
        "the old fd's missing blocks must have been asked for\n{}",
        origin.describe_requests()
    );
    for r in &range_requests {
        assert_eq!(
            r.header("if-range"),
            Some(old_etag.as_str()),
            "the old fd's range requests are pinned to the old version: {r:?}"
        );
        assert_eq!(
            r.status, 200,
            "If-Range mismatch: the origin answers 200: {r:?}"
        );
    }

    // A new open (past the TTL) sees the new version whole, while the old fd is still open.
    assert_eq!(fs::metadata(&path).unwrap().len(), new.len() as u64);
    assert_file_matches(&path, &new, 64 * KIB);
    let fresh = File::open(&path).unwrap();
    assert_random_preads(&fresh, &new, 143, 40, 2 * BLOCK, "new open");
    drop(fresh);
    drop(file);
    mount.unmount();
}

/// The page cache belongs to the inode, not to the descriptor. After a new open has read the
/// new version, a descriptor opened on the old version must still never get new-version
/// bytes: it reads its own cached blocks or fails with EIO.
#[test]
fn an_old_descriptor_never_reads_pages_of_the_new_version() {
    let Some(origin) = mount_origin() else { return };
    let blocks = 8;
    let old = pattern(151, blocks * BLOCK);
    let new = pattern(152, blocks * BLOCK);
    origin.put("/doc.bin", old.clone());
    let mount = Mount::builder(origin.url())
        .opt("ttl=1,block_size=256K,passthrough=false,readahead_max=0")
        .mount();
    let path = mount.path("doc.bin");
    let old_fd = File::open(&path).unwrap();
    no_kernel_readahead(&old_fd);
    let got = pread_full(&old_fd, 0, BLOCK).unwrap();
    assert_bytes_eq(&got, &old[..BLOCK], "block 0 before the change");
    origin.settle();

    origin.replace("/doc.bin", new.clone());
    let_ttl_pass(2.2);
    // The new open reads the whole new version (into the inode's page cache).
    assert_file_matches(&path, &new, 64 * KIB);
    for b in 0..blocks {
        let got = pread_full(&old_fd, (b * BLOCK) as u64, BLOCK);
        let want_old = &old[b * BLOCK..(b + 1) * BLOCK];
        match got {
            Ok(bytes) => assert_bytes_eq(
                &bytes,
                want_old,
                &format!(
                    "old fd, block {b}, after a new open read the new version (got bytes of {})",
                    which_version(&bytes, want_old, &new[b * BLOCK..(b + 1) * BLOCK])
                ),
            ),
            Err(e) => assert_eq!(
                e.raw_os_error(),
                Some(libc::EIO),
                "old fd, block {b}: only EIO may replace the old bytes, got {e}"
            ),
        }
    }
    drop(old_fd);
    mount.unmount();
}

/// A `stat` of an open file after the TTL must not move its inode to the new version: the
/// open file keeps its version, size included, and a new open gets the new version on an
/// inode of its own, so the two never share a page cache or a passthrough registration.
#[test]
fn a_stat_of_an_open_file_keeps_its_version_and_new_opens_get_their_own_inode() {
    common::require_mount!();
    use std::os::unix::fs::MetadataExt;
    for opts in ["passthrough=false", "passthrough=true"] {
        let origin = Origin::start();
        let old = pattern(161, 4 * BLOCK);
        let new = pattern(162, 3 * BLOCK);
        origin.put("/clip.bin", old.clone());
        let mount = Mount::builder(origin.url())
            .opt(format!("ttl=1,block_size=256K,readahead_max=0,{opts}"))
            .mount();
        let path = mount.path("clip.bin");
        // Wholly cached first, so that the open below may be a passthrough one.
        assert_file_matches(&path, &old, 64 * KIB);
        origin.settle();
        let old_fd = File::open(&path).unwrap();
        let got = pread_full(&old_fd, 0, BLOCK).unwrap();
        assert_bytes_eq(&got, &old[..BLOCK], &format!("{opts}: before the change"));

        origin.replace("/clip.bin", new.clone());
        let_ttl_pass(2.2);
        let seen = old_fd.metadata().unwrap();
        assert_eq!(
            seen.len(),
            old.len() as u64,
            "{opts}: fstat of the open file after the change"
        );
        let new_fd = File::open(&path).unwrap();
        assert_ne!(
            new_fd.metadata().unwrap().ino(),
            seen.ino(),
            "{opts}: the new version shares the open file's inode"
        );
        let got = pread_full(&new_fd, 0, new.len()).unwrap();
        assert_bytes_eq(&got, &new, &format!("{opts}: a new open after the change"));
        drop_pages_of(&old_fd);
        let got = pread_full(&old_fd, 0, BLOCK).unwrap();
        assert_bytes_eq(&got, &old[..BLOCK], &format!("{opts}: the open file again"));
        drop((old_fd, new_fd));
        mount.unmount();
    }
}

/// With `zero_message_opens` the daemon never hears of opens, and reads come per inode. A
/// file being read keeps its version after the TTL: later reads never switch to the new one
/// part way through the file (they read the old bytes, or EIO).
#[test]
fn zero_message_reads_never_switch_version_part_way_through_a_file() {
    let Some(origin) = mount_origin() else { return };
    let blocks = 8;
    let old = pattern(171, blocks * BLOCK);
    let new = pattern(172, blocks * BLOCK);
    origin.put("/song.bin", old.clone());
    let mount = Mount::builder(origin.url())
        .opt("ttl=1,block_size=256K,readahead_max=0,zero_message_opens=true")
        .mount();
    let path = mount.path("song.bin");
    assert_file_matches(&path, &old, 64 * KIB);
    origin.settle();
    let file = File::open(&path).unwrap();
    no_kernel_readahead(&file);
    drop_pages_of(&file);
    let got = pread_full(&file, 0, BLOCK).unwrap();
    assert_bytes_eq(&got, &old[..BLOCK], "block 0 before the change");

    origin.replace("/song.bin", new.clone());
    let_ttl_pass(2.2);
    for b in 1..blocks {
        let want_old = &old[b * BLOCK..(b + 1) * BLOCK];
        match pread_full(&file, (b * BLOCK) as u64, BLOCK) {
            Ok(bytes) => assert_bytes_eq(
                &bytes,
                want_old,
                &format!(
                    "block {b} after the change (got bytes of {})",
                    which_version(&bytes, want_old, &new[b * BLOCK..(b + 1) * BLOCK])
                ),
            ),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "block {b}: {e}"),
        }
    }
    // The name itself now leads to the new version.
    let fresh = fs::read(&path).unwrap();
    assert_bytes_eq(&fresh, &new, "a new open after the change");
    drop(file);
    mount.unmount();
}

fn which_version(got: &[u8], old: &[u8], new: &[u8]) -> &'static str {
    if got == old {
        "the old version"
    } else if got == new {
        "the NEW version"
    } else {
        "neither version"
    }
}

// ---------------------------------------------------------------------------
// negative_ttl
// ---------------------------------------------------------------------------

#[test]
fn a_missing_file_is_remembered_for_negative_ttl_then_found() {
    let Some(origin) = mount_origin() else { return };
    origin.put("/present.txt", Bytes::from_static(b"here\n"));
    let mount = Mount::builder(origin.url())
        .opt("negative_ttl=3,ttl=3600")
        .mount();
    let late = mount.path("late.bin");
    assert_eq!(errno(&fs::metadata(&late)), Some(libc::ENOENT));
    assert_eq!(errno(&File::open(&late)), Some(libc::ENOENT));
    let data = origin.put("/late.bin", pattern(161, 3 * BLOCK + 1)).data;
    // Well within negative_ttl=3: still remembered as missing, the origin is not asked.
    assert_eq!(errno(&fs::metadata(&late)), Some(libc::ENOENT));
    assert_eq!(
        origin.request_count_for("/late.bin"),
        1,
        "a remembered 404 is not asked again\n{}",
        origin.describe_requests()
    );
    let_ttl_pass(4.2);
    assert_eq!(fs::metadata(&late).unwrap().len(), data.len() as u64);
    assert_file_matches(&late, &data, 64 * KIB);
    mount.unmount();
}

// ---------------------------------------------------------------------------
// unlink() and the purge commands
// ---------------------------------------------------------------------------

#[test]
fn unlink_purges_a_cached_file_and_the_next_read_downloads_it_again() {
    let Some(origin) = mount_origin() else { return };
    let data = origin
        .put("/dl/file.bin", pattern(171, 8 * BLOCK + 100))
        .data;
    // `unlink()` purges only on a mount that is not read-only.
    let mount = Mount::builder(origin.url())
        .opt("ttl=3600,block_size=256K,passthrough=false,rw")
        .mount();
    let path = mount.path("dl/file.bin");
    assert_file_matches(&path, &data, 64 * KIB);
    origin.settle();
    origin.reset();

    fs::remove_file(&path).expect("unlink of a cached file succeeds");
    let md = fs::metadata(&path).expect("the file stays visible after unlink");
    assert_eq!(md.len(), data.len() as u64);
    reread(&mount, "dl/file.bin", &data);
    origin.settle();
    let requests = origin.requests_for("/dl/file.bin");
    assert!(
        !requests.is_empty(),
        "the read after unlink must reach the origin"
    );
    for r in &requests {
        assert!(
            r.header("if-none-match").is_none() && r.status != 304,
            "after a purge nothing is revalidated, it is downloaded: {r:?}"
        );
    }
    assert_eq!(
        origin.bytes_sent_for("/dl/file.bin"),
        data.len() as u64,
        "every block downloaded again, exactly once\n{}",
        origin.describe_requests()
    );

    // Cached again: the next read costs nothing.
    origin.reset();
    reread(&mount, "dl/file.bin", &data);
    origin.settle();
    assert_no_requests(&origin, "re-read after the new download");
    mount.unmount();
}

#[test]
fn unlink_with_unlink_expire_revalidates_and_keeps_the_blocks() {
    let Some(origin) = mount_origin() else { return };
    let data = origin
        .put("/dl/file.bin", pattern(181, 8 * BLOCK + 100))
        .data;
    let mount = Mount::builder(origin.url())
        .opt("ttl=3600,block_size=256K,passthrough=false,unlink=expire,rw")
        .mount();
    let path = mount.path("dl/file.bin");
    assert_file_matches(&path, &data, 64 * KIB);
    origin.settle();
    origin.reset();

    fs::remove_file(&path).expect("unlink of a cached file succeeds");
    assert_eq!(fs::metadata(&path).unwrap().len(), data.len() as u64);
    reread(&mount, "dl/file.bin", &data);
    origin.settle();
    assert_single_304(
        &origin,
        "/dl/file.bin",
        "read after unlink with unlink=expire",
    );
    mount.unmount();
}

#[test]
fn purge_expire_and_hardpurge_commands_on_a_live_mount() {
    let Some(origin) = mount_origin() else { return };
    let files: Vec<(&str, Bytes)> = vec![
        ("/img/a.jpg", pattern(191, BLOCK + 300)),
        ("/img/b.jpg", pattern(192, 3 * BLOCK)),
        ("/img/sub/c.jpg", pattern(193, 2 * BLOCK + 1)),
        ("/other.bin", pattern(194, 5 * BLOCK + 7)),
        ("/hard.bin", pattern(195, 4 * BLOCK + 9)),
        ("/keep.bin", pattern(196, 2 * BLOCK + 11)),
    ];
    for (path, data) in &files {
        origin.put(path, data.clone());
    }
    let mount = Mount::builder(origin.url())
        .opt("ttl=3600,block_size=256K,passthrough=false")
        .mount();
    let rel = |path: &str| path.trim_start_matches('/').to_string();
    for (path, data) in &files {
        assert_file_matches(&mount.path(&rel(path)), data, 64 * KIB);
    }
    origin.settle();
    let len_of = |p: &str| files.iter().find(|(q, _)| *q == p).unwrap().1.len();

    // purge one file.
    let out = cli(&[&"purge", &mount.path("other.bin")]);
    assert_cli_says(
        &out,
        &format!(
            "purged 1 object(s), {} byte(s) of cached data",
            len_of("/other.bin")
        ),
    );
    origin.reset();
    reread(&mount, "other.bin", &files[3].1);
    origin.settle();
    assert_eq!(
        origin.bytes_sent_for("/other.bin"),
        len_of("/other.bin") as u64,
        "a purged file is downloaded again\n{}",
        origin.describe_requests()
    );
    assert!(origin
        .requests()
        .iter()
        .all(|r| r.header("if-none-match").is_none()));

    // expire a subtree: what lies below /img (the directory /img/sub and the three files);
    // /img's own record stays.
    let img_bytes = len_of("/img/a.jpg") + len_of("/img/b.jpg") + len_of("/img/sub/c.jpg");
    let out = cli(&[&"expire", &format!("{}/*", mount.path("img").display())]);
    assert_cli_says(
        &out,
        &format!("expired 4 object(s), {img_bytes} byte(s) of cached data"),
    );
    origin.reset();
    for (path, data) in &files[..3] {
        reread(&mount, &rel(path), data);
    }
    origin.settle();
    for (path, _) in &files[..3] {
        assert_single_304(&origin, path, "read after `ston-fs expire img/*`");
    }
    // The expired directory /img/sub is asked again too (its kernel entry went with the
    // expiry): a 301 with a short body. No file body is sent again.
    for (path, _) in &files[..3] {
        assert_eq!(
            origin.bytes_sent_for(path),
            0,
            "{}",
            origin.describe_requests()
        );
    }

    // hardpurge, and a path that is not cached (nothing to do).
    let out = cli(&[&"hardpurge", &mount.path("hard.bin")]);
    assert_cli_says(
        &out,
        &format!(
            "hard-purged 1 object(s), {} byte(s) of cached data",
            len_of("/hard.bin")
        ),
    );
    let out = cli(&[&"purge", &mount.path("never-read.bin")]);
    assert_cli_says(&out, "purged 0 object(s), 0 byte(s) of cached data");
    origin.reset();
    reread(&mount, "hard.bin", &files[4].1);
    reread(&mount, "keep.bin", &files[5].1);
    origin.settle();
    assert_eq!(
        origin.bytes_sent_for("/hard.bin"),
        len_of("/hard.bin") as u64,
        "a hard-purged file is downloaded again\n{}",
        origin.describe_requests()
    );
    assert_eq!(
        origin.request_count_for("/keep.bin"),
        0,
        "an untouched file stays cached\n{}",
        origin.describe_requests()
    );

    // Several paths at once, a subtree (what lies below img/sub) and a file.
    let out = cli(&[
        &"purge",
        &format!("{}/*", mount.path("img/sub").display()),
        &mount.path("keep.bin"),
    ]);
    assert_cli_says(
        &out,
        &format!(
            "purged 2 object(s), {} byte(s) of cached data",
            len_of("/img/sub/c.jpg") + len_of("/keep.bin")
        ),
    );
    origin.reset();
    reread(&mount, "img/sub/c.jpg", &files[2].1);
    reread(&mount, "keep.bin", &files[5].1);
    origin.settle();
    assert_eq!(
        origin.bytes_sent(),
        (len_of("/img/sub/c.jpg") + len_of("/keep.bin")) as u64,
        "{}",
        origin.describe_requests()
    );
    mount.unmount();
}

#[test]
fn purged_data_never_comes_back_after_a_remount() {
    let Some(origin) = mount_origin() else { return };
    let files: Vec<(&str, Bytes)> = vec![
        ("/p.bin", pattern(201, 4 * BLOCK + 3)),
        ("/h.bin", pattern(202, 4 * BLOCK + 5)),
        ("/dir/x.bin", pattern(203, 2 * BLOCK + 7)),
        ("/k.bin", pattern(204, 4 * BLOCK + 9)),
    ];
    for (path, data) in &files {
        origin.put(path, data.clone());
    }
    let cache = tempfile::tempdir().unwrap();
    let opts = "ttl=3600,block_size=256K,passthrough=false";
    let rel = |path: &str| path.trim_start_matches('/').to_string();

    let mount = Mount::builder(origin.url())
        .cache_dir(cache.path())
        .opt(opts)
        .mount();
    for (path, data) in &files {
        assert_file_matches(&mount.path(&rel(path)), data, 64 * KIB);
    }
    origin.settle();
    assert_cli_says(
        &cli(&[&"purge", &mount.path("p.bin")]),
        &format!(
            "purged 1 object(s), {} byte(s) of cached data",
            files[0].1.len()
        ),
    );
    assert_cli_says(
        &cli(&[&"hardpurge", &mount.path("h.bin")]),
        &format!(
            "hard-purged 1 object(s), {} byte(s) of cached data",
            files[1].1.len()
        ),
    );
    // What lies below dir goes; dir's own record stays.
    assert_cli_says(
        &cli(&[&"purge", &format!("{}/*", mount.path("dir").display())]),
        &format!(
            "purged 1 object(s), {} byte(s) of cached data",
            files[2].1.len()
        ),
    );
    mount.unmount();

    origin.reset();
    let mount = Mount::builder(origin.url())
        .cache_dir(cache.path())
        .opt(opts)
        .mount();
    for (path, data) in &files {
        assert_file_matches(&mount.path(&rel(path)), data, 64 * KIB);
    }
    origin.settle();
    for (path, data) in &files[..3] {
        assert_eq!(
            origin.bytes_sent_for(path),
            data.len() as u64,
            "{path} was purged: after a remount it comes from the origin, not the disk\n{}",
            origin.describe_requests()
        );
    }
    assert_eq!(
        origin.request_count_for("/k.bin"),
        0,
        "k.bin was never purged: served from the cache after the remount\n{}",
        origin.describe_requests()
    );
    mount.unmount();
}
