//! The fast paths keep their promises: a stalled origin never holds up cached reads, any number
//! of readers cost one fetch per block, and passthrough serves only whole, verified files.

mod common;

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use bytes::Bytes;
use common::mount::{op_count, stats_json, Mount};
use common::mount_origin;
use common::origin::{pattern, Fault, FaultAction, Gate, Origin, Stall};
use common::{
    assert_bytes_eq, assert_file_matches, assert_random_preads, drop_page_cache, pread_full, MIB,
};

#[test]
fn a_stalled_origin_never_delays_reads_of_cached_files() {
    let Some(origin) = mount_origin() else { return };
    let cached = pattern(61, 3 * MIB + 5);
    let slow = pattern(62, 4 * MIB);
    origin.put("/cached.bin", cached.clone());
    origin.put("/slow.bin", slow.clone());
    // Passthrough off: the cached reads must go through the daemon to prove anything.
    let mount = Mount::builder(origin.url())
        .opt("passthrough=false,receive_timeout=60")
        .mount();
    assert_file_matches(&mount.path("cached.bin"), &cached, MIB);
    // Looked up (first block cached); every further block of slow.bin now stalls.
    assert_eq!(
        std::fs::metadata(mount.path("slow.bin")).unwrap().len(),
        slow.len() as u64
    );
    let gate = Gate::new();
    origin.add_fault(Fault::path(
        "/slow.bin",
        FaultAction::StallHeaders(Stall::Until(gate.clone())),
    ));

    let finished = Arc::new(AtomicBool::new(false));
    let slow_reader = {
        let (path, finished, slow) = (mount.path("slow.bin"), finished.clone(), slow.clone());
        std::thread::spawn(move || {
            assert_file_matches(&path, &slow, MIB);
            finished.store(true, Ordering::SeqCst);
        })
    };
    assert!(
        gate.wait_for_waiters(1, Duration::from_secs(20)),
        "the slow read never reached the origin"
    );
    for _ in 0..5 {
        drop_page_cache(&mount.path("cached.bin"));
        assert_file_matches(&mount.path("cached.bin"), &cached, 256 * 1024);
    }
    assert!(
        !finished.load(Ordering::SeqCst),
        "the stalled read finished before the gate opened: the test proved nothing"
    );
    gate.release();
    slow_reader
        .join()
        .expect("the slow read must end with the right bytes");
    assert!(finished.load(Ordering::SeqCst));
    mount.unmount();
}

#[test]
fn concurrent_readers_of_a_cold_file_fetch_each_block_exactly_once() {
    let Some(origin) = mount_origin() else { return };
    let block = 256 * 1024;
    let data = origin
        .put("/shared.bin", pattern(63, 40 * block + 777))
        .data;
    let mount = Mount::builder(origin.url()).opt("block_size=256K").mount();

    let readers = 12;
    let start = Arc::new(Barrier::new(readers));
    let handles: Vec<_> = (0..readers)
        .map(|i| {
            let (path, start, data) = (mount.path("shared.bin"), start.clone(), data.clone());
            std::thread::spawn(move || {
                start.wait();
                if i % 2 == 0 {
                    assert_file_matches(&path, &data, 128 * 1024);
                } else {
                    let file = File::open(&path).unwrap();
                    assert_random_preads(&file, &data, i as u64, 40, 300_000, "random reader");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("reader");
    }

    let len = data.len() as u64;
    let blocks = len.div_ceil(block as u64) as usize;
    let mut fetched = vec![0u32; blocks];
    for request in origin.requests_for("/shared.bin") {
        let (start, end) = request.requested_span(len);
        assert_eq!(
            start % block as u64,
            0,
            "requests start on block boundaries"
        );
        let last = end.div_ceil(block as u64) as usize;
        for count in &mut fetched[(start / block as u64) as usize..last.min(blocks)] {
            *count += 1;
        }
    }
    assert!(
        fetched.iter().all(|&n| n == 1),
        "each block must be fetched exactly once, got {fetched:?}\n{}",
        origin.describe_requests()
    );
    mount.unmount();
}

#[test]
fn passthrough_serves_whole_files_exactly_and_never_partial_ones() {
    let Some(origin) = mount_origin() else { return };
    let whole = origin.put_pattern("/whole.bin", 64, 6 * MIB + 123);
    let partial = origin.put_pattern("/partial.bin", 65, 6 * MIB + 321);
    // Passthrough needs opens that reach the daemon.
    let mount = Mount::builder(origin.url())
        .opt("zero_message_opens=false")
        .arg("-v")
        .mount();

    // whole.bin: read entirely (cached and verified), then reopened in passthrough. The
    // kernel sends RELEASE after close returns, so an open racing the previous release is
    // (rightly) served cached; reopen until the daemon has seen every release.
    assert_file_matches(&mount.path("whole.bin"), &whole, MIB);
    let passthrough_seen = |log: &str| {
        log.lines()
            .any(|l| l.contains("open: passthrough") && l.contains("path=/whole.bin"))
    };
    for round in 0..50 {
        let file = File::open(mount.path("whole.bin")).unwrap();
        assert_random_preads(&file, &whole, 5 + round, 40, 500_000, "passthrough reads");
        drop(file);
        if passthrough_seen(&mount.log()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_file_matches(&mount.path("whole.bin"), &whole, 64 * 1024);

    // partial.bin: one read in the middle (not sequential, so no read-ahead) caches a small
    // part of it; it must never be opened in passthrough.
    let file = File::open(mount.path("partial.bin")).unwrap();
    let mut middle = vec![0u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut middle, 3 * MIB as u64).unwrap();
    assert_eq!(&middle[..], &partial[3 * MIB..3 * MIB + 4096]);
    drop(file);
    let file = File::open(mount.path("partial.bin")).unwrap();
    assert_random_preads(&file, &partial, 6, 100, 500_000, "partly cached file");
    drop(file);

    let log = mount.log();
    assert!(
        passthrough_seen(&log),
        "a whole, verified file must open in passthrough:\n{log}"
    );
    let partial_passthrough = log
        .lines()
        .filter(|l| l.contains("open: passthrough") && l.contains("path=/partial.bin"))
        .count();
    // Both opens of partial.bin happened while most of it was still missing.
    assert_eq!(
        partial_passthrough, 0,
        "a partly cached file was opened in passthrough:\n{log}"
    );
    mount.unmount();
}

/// Reads the same range `times` times through one descriptor; returns how many of those reads
/// reached the daemon (the kernel answers the rest from its page cache, or passthrough does).
fn daemon_reads_for_repeated_pread(mount: &Mount, file: &File, want: &[u8], times: u64) -> u64 {
    let (offset, len) = (MIB + 4096, 64 * 1024);
    let before = op_count(&stats_json(mount.mountpoint()), "read");
    for _ in 0..times {
        let got = pread_full(file, offset as u64, len).unwrap();
        assert_bytes_eq(&got, &want[offset..offset + len], "repeated pread");
    }
    op_count(&stats_json(mount.mountpoint()), "read") - before
}

#[test]
fn a_big_file_still_being_fetched_is_read_with_direct_io_and_can_still_be_mapped() {
    let Some(origin) = mount_origin() else { return };
    let data = origin.put("/big.bin", pattern(66, 5 * MIB + 4097)).data;
    let mount = Mount::builder(origin.url())
        .opt("block_size=256K,direct_io_min_size=1M,zero_message_opens=false")
        .mount();

    // Not wholly cached at open: direct I/O, so every read reaches the daemon and the kernel
    // keeps no second copy of the bytes in the FUSE file's page cache.
    let file = File::open(mount.path("big.bin")).unwrap();
    // Reads arrive exactly as the program makes them: any offset, any size, across blocks
    // cached and not, and past the end.
    assert_random_preads(&file, &data, 67, 60, 700_000, "direct-I/O preads");
    assert_eq!(
        daemon_reads_for_repeated_pread(&mount, &file, &data, 5),
        5,
        "each read of a file opened for direct I/O must reach the daemon"
    );
    // A shared mapping of a direct-I/O file still works (FUSE_DIRECT_IO_ALLOW_MMAP), exactly.
    // SAFETY: the mount is read-only, so the mapped file cannot change under the mapping.
    let map = unsafe { memmap2::Mmap::map(&file) }.expect("mmap of a file opened for direct I/O");
    assert_bytes_eq(&map, &data, "mmap of a direct-I/O file");
    drop(map);
    assert_file_matches(&mount.path("big.bin"), &data, 300_000);
    drop(file);

    // Wholly cached now: later opens use passthrough (or the page cache), so repeated reads
    // stop reaching the daemon. The last blocks may still be on their way to the cache file,
    // so reopen until they are there.
    let mut last = u64::MAX;
    for _ in 0..50 {
        let file = File::open(mount.path("big.bin")).unwrap();
        last = daemon_reads_for_repeated_pread(&mount, &file, &data, 5);
        if last <= 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        last <= 1,
        "a wholly cached file was still opened for direct I/O ({last} of 5 reads reached the daemon)"
    );
    mount.unmount();
}

/// `count` small files put at the origin below `dir/`: their paths (no leading `/`) and bytes.
fn put_small_files(origin: &Origin, dir: &str, count: u64, seed: u64) -> Vec<(String, Bytes)> {
    (0..count)
        .map(|i| {
            let path = format!("{dir}/f{i}.bin");
            let data = origin.put_pattern(&format!("/{path}"), seed + i, 2048 + 13 * i as usize);
            (path, data)
        })
        .collect()
}

/// Reads every file `passes` times through `mount`, checking every byte.
fn read_files(mount: &Mount, files: &[(String, Bytes)], passes: usize) {
    for _ in 0..passes {
        for (path, data) in files {
            assert_file_matches(&mount.path(path), data, 64 * 1024);
        }
    }
}

/// Reads `files` five times, hot, and asserts that not one call reached the daemon.
fn assert_hot_reads_send_nothing(mount: &Mount, files: &[(String, Bytes)]) {
    let before = stats_json(mount.mountpoint());
    read_files(mount, files, 5);
    let after = stats_json(mount.mountpoint());
    for op in ["open", "read", "lookup", "getattr"] {
        assert_eq!(
            op_count(&after, op),
            op_count(&before, op),
            "hot re-opens sent `{op}` messages:\n{after:#}"
        );
    }
}

/// With `zero_message_opens=true`, a file the kernel still holds is opened and read again with no
/// message to the daemon at all, and every byte is still exact, also when the pages are gone
/// and reads reach the daemon per inode.
#[test]
fn zero_message_opens_serve_hot_files_without_any_message() {
    let Some(origin) = mount_origin() else { return };
    let files = put_small_files(&origin, "small", 20, 700);
    let big = origin.put("/big.bin", pattern(720, 3 * MIB + 17)).data;
    let mount = Mount::builder(origin.url())
        .opt("zero_message_opens=true,ttl=3600")
        .mount();
    read_files(&mount, &files, 1);
    assert_file_matches(&mount.path("big.bin"), &big, MIB);
    assert_hot_reads_send_nothing(&mount, &files);
    let after = stats_json(mount.mountpoint());
    assert!(
        op_count(&after, "open") <= 1,
        "only the first open may reach the daemon (its ENOSYS turns opens off):\n{after:#}"
    );
    // Pages dropped: reads come to the daemon per inode and are still exact.
    let file = File::open(mount.path("big.bin")).unwrap();
    drop_page_cache(&mount.path("big.bin"));
    assert_random_preads(&file, &big, 77, 40, 300_000, "reads per inode");
    drop(file);
    let log = mount.log();
    assert!(
        !log.contains("open: passthrough"),
        "no open, so no passthrough:\n{log}"
    );
    mount.unmount();
}

/// By default (`zero_message_opens=auto`) opens reach the daemon, as a server of big files
/// wants (passthrough, direct I/O), until small files are opened a thousand times in a
/// second: from then on opens send nothing, and a hot small file costs no message at all.
#[test]
fn by_default_opens_stop_reaching_the_daemon_once_small_files_are_opened_fast() {
    let Some(origin) = mount_origin() else { return };
    let files = put_small_files(&origin, "s", 50, 900);
    let big = origin.put("/big.bin", pattern(950, 3 * MIB + 5)).data;
    let mount = Mount::builder(origin.url()).opt("ttl=3600").mount();
    read_files(&mount, &files, 1);
    for _ in 0..3 {
        assert_file_matches(&mount.path("big.bin"), &big, MIB);
    }
    let opened = op_count(&stats_json(mount.mountpoint()), "open");
    assert!(opened >= 53, "slow opens reach the daemon ({opened})");
    const SWITCHED: &str = "opens send the daemon nothing from now on";
    for _ in 0..10 {
        if mount.log().contains(SWITCHED) {
            break;
        }
        read_files(&mount, &files, 30);
    }
    assert!(mount.log().contains(SWITCHED), "{}", mount.log());
    // Read in passthrough so far, big.bin now fills the FUSE file's page cache once.
    assert_file_matches(&mount.path("big.bin"), &big, MIB);
    assert_hot_reads_send_nothing(&mount, &files);
    mount.unmount();
}
