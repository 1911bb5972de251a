//! Small objects in the packed store, through real FUSE against the in-process origin: a
//! restart serves them with no origin request and no file per object, a `kill -9` during a
//! fill loses at most what was not yet synced and never a byte, the cap holds while small
//! and large objects compete, and purges and new versions reach them.

mod common;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mount::{allocated_bytes_sample, run_cli, stats_json, Mount};
use common::mount_origin;
use common::origin::{pattern, Origin};
use common::{assert_bytes_eq, KIB, MIB};

/// Path of small file `i` (folders of 1,000, as a shop's images would be).
fn small_path(i: usize) -> String {
    format!("/s{}/f{i}.bin", i / 1000)
}

/// Puts `count` small files of 1-4 KiB; returns their bytes by index.
fn put_small_files(origin: &Origin, count: usize, seed: u64) -> Vec<bytes::Bytes> {
    (0..count)
        .map(|i| {
            let len = KIB + (i * 977) % (3 * KIB);
            origin.put_pattern(&small_path(i), seed + i as u64, len)
        })
        .collect()
}

/// Reads files `range` through the mount with `threads` readers, checking every byte.
fn read_all(mount: &Mount, want: &[bytes::Bytes], range: std::ops::Range<usize>, threads: usize) {
    let next = AtomicUsize::new(range.start);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= range.end {
                    return;
                }
                let path = mount.path(&small_path(i)[1..]);
                let got = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert_bytes_eq(&got, &want[i], &small_path(i));
            });
        }
    });
}

fn files_below(dir: &Path) -> usize {
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            match entry.file_type().unwrap().is_dir() {
                true => stack.push(entry.path()),
                false => count += 1,
            }
        }
    }
    count
}

/// A mount of `origin` over the cache folder `cache`, with `opts`.
fn mount_over(origin: &Origin, cache: &Path, opts: &[String]) -> Mount {
    let builder = Mount::builder(origin.url()).cache_dir(cache);
    opts.iter().fold(builder, |b, o| b.opt(o.clone())).mount()
}

fn num(stats: &serde_json::Value, key: &str) -> u64 {
    stats[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {stats:#}"))
}

#[test]
fn a_restart_serves_small_files_without_the_origin_and_keeps_no_file_per_object() {
    let Some(origin) = mount_origin() else { return };
    const FILES: usize = 3_000;
    let want = put_small_files(&origin, FILES, 18_000);
    let cache = tempfile::tempdir().unwrap();
    let mount = mount_over(&origin, cache.path(), &[]);
    read_all(&mount, &want, 0..FILES, 4);
    let stats = stats_json(mount.mountpoint());
    assert_eq!(num(&stats, "small_objects"), FILES as u64, "{stats:#}");
    mount.unmount();

    // A few segment files, a checkpoint and the folders: nothing per object.
    let files = files_below(cache.path());
    assert!(files < 40, "{files} files in the cache for {FILES} objects");
    let used = allocated_bytes_sample(cache.path());
    let data: u64 = want.iter().map(|b| b.len() as u64).sum();
    assert!(
        used < data * 3 / 2 + 2 * MIB as u64,
        "{used} bytes on disk for {data} of data"
    );

    origin.reset();
    let mount = mount_over(&origin, cache.path(), &[]);
    read_all(&mount, &want, 0..FILES, 4);
    let files_requested = origin
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/s"))
        .count();
    assert_eq!(files_requested, 0, "fresh small files come from the cache");
    mount.unmount();
}

#[test]
fn kill_9_during_a_fill_of_20000_small_files_then_a_remount_serves_exact_bytes() {
    let Some(origin) = mount_origin() else { return };
    const FILES: usize = 20_000;
    const SYNCED: usize = 8_000;
    let want = put_small_files(&origin, FILES, 18_100);
    let cache = tempfile::tempdir().unwrap();
    let mut mount = mount_over(&origin, cache.path(), &[]);
    read_all(&mount, &want, 0..SYNCED, 4);
    // Records are synced every second: these are durable before the fill goes on.
    std::thread::sleep(Duration::from_millis(2_500));

    let stop = Arc::new(AtomicBool::new(false));
    let read = Arc::new(AtomicUsize::new(SYNCED));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, read) = (stop.clone(), read.clone());
            let root = mount.mountpoint().to_path_buf();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let i = read.fetch_add(1, Ordering::Relaxed);
                    if i >= FILES {
                        return;
                    }
                    // Reads racing the kill may fail; the bytes are checked after the remount.
                    let _ = fs::read(root.join(&small_path(i)[1..]));
                }
            })
        })
        .collect();
    let started = Instant::now();
    while read.load(Ordering::Relaxed) < SYNCED + 4_000
        && started.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    mount.kill9();
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let _ = reader.join();
    }
    drop(mount);

    origin.reset();
    let mount = mount_over(&origin, cache.path(), &[]);
    read_all(&mount, &want, 0..FILES, 4);
    let refetched = |range: std::ops::Range<usize>| {
        range
            .filter(|i| origin.request_count_for(&small_path(*i)) > 0)
            .count()
    };
    assert_eq!(
        refetched(0..SYNCED),
        0,
        "records synced before the kill survive it"
    );
    let stats = stats_json(mount.mountpoint());
    assert_eq!(num(&stats, "small_objects"), FILES as u64, "{stats:#}");
    mount.unmount();
}

#[test]
fn the_cap_holds_while_small_and_large_objects_compete() {
    let Some(origin) = mount_origin() else { return };
    const CAP: u64 = 64 * MIB as u64;
    const SMALL: usize = 12_000; // about 30 MiB: past the packed store's half of the cap
    let small = put_small_files(&origin, SMALL, 18_200);
    let large: Vec<bytes::Bytes> = (0..6)
        .map(|i| origin.put_pattern(&format!("/large/{i}.bin"), 18_300 + i, 8 * MIB))
        .collect();
    let cache = tempfile::tempdir().unwrap();
    let mount = mount_over(&origin, cache.path(), &[format!("max_cache_size={CAP}")]);
    let over_cap = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if allocated_bytes_sample(cache.path()) > CAP {
                    over_cap.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        for round in 0..2 {
            for (i, bytes) in large.iter().enumerate() {
                let got = fs::read(mount.path(&format!("large/{i}.bin"))).unwrap();
                assert_bytes_eq(&got, bytes, &format!("large {i}, round {round}"));
                let part = SMALL / large.len();
                read_all(&mount, &small, i * part..(i + 1) * part, 2);
            }
        }
        done.store(true, Ordering::Relaxed);
    });
    assert!(
        !over_cap.load(Ordering::Relaxed),
        "the cache went over its cap"
    );
    let stats = stats_json(mount.mountpoint());
    assert!(num(&stats, "cache_bytes") <= CAP, "{stats:#}");
    assert!(num(&stats, "small_bytes") <= CAP / 2, "{stats:#}");
    assert!(num(&stats, "small_objects") > 1_000, "{stats:#}");
    mount.unmount();
    assert!(allocated_bytes_sample(cache.path()) <= CAP);
}

#[test]
fn purges_and_new_versions_reach_small_files() {
    let Some(origin) = mount_origin() else { return };
    let names = ["a/one.txt", "a/two.txt", "b/three.txt"];
    for (i, name) in names.iter().enumerate() {
        origin.put(
            &format!("/{name}"),
            pattern(18_400 + i as u64, 3000 - 1000 * i),
        );
    }
    let cache = tempfile::tempdir().unwrap();
    let mount = mount_over(&origin, cache.path(), &["ttl_rule=/a/*:1".to_string()]);
    for name in names {
        fs::read(mount.path(name)).unwrap();
    }

    // A new version after the TTL: the next read has it, whole.
    let changed = origin.replace("/a/one.txt", pattern(18_410, 2500)).data;
    std::thread::sleep(Duration::from_millis(2_100));
    assert_bytes_eq(
        &fs::read(mount.path("a/one.txt")).unwrap(),
        &changed,
        "new version",
    );

    // A purge of a folder's files: each is asked for again; the other folder is not.
    let purge = run_cli(
        [
            "purge".to_string(),
            format!("{}/*", mount.path("a").display()),
        ],
        Duration::from_secs(30),
    );
    assert!(purge.success(), "{}", purge.describe());
    origin.reset();
    let two = origin.replace("/a/two.txt", pattern(18_411, 2222)).data;
    assert_bytes_eq(
        &fs::read(mount.path("a/two.txt")).unwrap(),
        &two,
        "after purge",
    );
    assert_eq!(
        origin.request_count_for("/a/two.txt"),
        1,
        "purged: fetched again"
    );
    assert_eq!(origin.request_count_for("/b/three.txt"), 0);
    mount.unmount();
}
