//! Scale benchmark of the packed small-object store: fills 1,000,000 objects of 1 KiB and
//! 100,000 of 16 KiB, and reports disk per object (`du`), RSS per object after the fill,
//! after a reopen and after a re-read (each minus the RSS before the store was opened), the
//! reopen time, and put/get rates against writing and reading the same bytes as individual
//! local files with the same threads, in the same run.
//!
//! ```text
//! cargo bench --bench packed_scale            # PACKED_SCALE_DIR (default /var/tmp/packed-scale),
//!                                             # PACKED_SCALE_THREADS (2), PACKED_SCALE_DIVIDE (1)
//! rm -rf /var/tmp/packed-scale                # the baseline's files are set aside, not removed
//! ```
//! Reopens run in a fresh process (this binary, run as `reopen DIR COUNT LEN`), so their RSS
//! is not the fill's allocator leftovers, with the store's files dropped from the page cache
//! first: once after a kill (the scan of what the last checkpoint does not cover), then
//! after a clean close. Puts and the file baseline's writes are timed up to a sync.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ston_fs::store::packed::{PackedConfig, PackedStore};

fn rss_bytes() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// `du -s` of a tree, in bytes.
fn du(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in fs::read_dir(path).into_iter().flatten().flatten() {
            total += du(&entry.path());
        }
    }
    total
}

fn key(id: u64) -> Vec<u8> {
    format!("bench\0/static/img/{:02x}/{id:08}.jpg", id % 251).into_bytes()
}

/// The object's bytes: one shared pattern with the id in front, so every object differs.
fn fill_bytes(template: &[u8], id: u64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(template);
    out[..8].copy_from_slice(&id.to_le_bytes());
}

fn validators(id: u64) -> Vec<u8> {
    format!("\"etag-{id:x}\"|Sun, 06 Dec 2026 09:00:00 GMT").into_bytes()
}

fn threads() -> u64 {
    std::env::var("PACKED_SCALE_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2)
}

/// Runs `work(thread, ids)` on the ids split over the threads; returns seconds taken.
fn parallel(count: u64, work: impl Fn(u64, &mut dyn Iterator<Item = u64>) + Sync) -> f64 {
    let start = Instant::now();
    let threads = threads();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let work = &work;
            scope.spawn(move || {
                // A stride walk: each thread's ids in a scattered order.
                let mut ids = (thread..count)
                    .step_by(threads as usize)
                    .map(move |i| (i * 7_919) % count);
                work(thread, &mut ids);
            });
        }
    });
    start.elapsed().as_secs_f64()
}

fn config(count: u64, len: usize) -> PackedConfig {
    let mut config = PackedConfig::new(count * (len as u64 + 256) * 2 + (1 << 30));
    config.index_memory_limit = 1 << 30;
    config
}

fn get_all(store: &PackedStore, count: u64, len: usize) -> f64 {
    parallel(count, |_, ids| {
        for id in ids {
            let object = store.get(&key(id)).expect("get").expect("hit");
            assert_eq!(object.data.len(), len);
            assert_eq!(object.data[..8], id.to_le_bytes());
        }
    })
}

/// The child process: reopen, re-read, print `open_ms rss_open rss_reread gets_per_s`, and
/// close (which checkpoints).
fn reopen(dir: &Path, count: u64, len: usize) {
    let before = rss_bytes();
    let start = Instant::now();
    let store = PackedStore::open(dir, config(count, len)).expect("reopen");
    let open_ms = start.elapsed().as_secs_f64() * 1000.0;
    let rss_open = rss_bytes().saturating_sub(before);
    assert_eq!(store.stats().objects, count);
    let seconds = get_all(&store, count, len);
    let rss_reread = rss_bytes().saturating_sub(before);
    println!(
        "{open_ms:.1} {rss_open} {rss_reread} {:.0}",
        count as f64 / seconds
    );
    store.close().expect("close");
}

/// Drops the folder's files from the page cache (they are synced), so a reopen reads the
/// disk, without touching any other file's cache on a shared machine.
fn drop_from_page_cache(dir: &Path) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(file) = fs::File::open(entry.path()) {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
            // SAFETY: fadvise on a descriptor we own; it only drops clean cached pages.
            unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
    }
}

/// Runs [`reopen`] in a fresh process, on a cold page cache; returns its four figures.
fn reopen_in_child(dir: &Path, count: u64, len: usize) -> Vec<f64> {
    drop_from_page_cache(dir);
    let child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["reopen", &dir.display().to_string()])
        .args([count.to_string(), len.to_string()])
        .output()
        .expect("reopen process");
    let text = String::from_utf8_lossy(&child.stdout);
    let fields: Vec<f64> = text
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let stderr = String::from_utf8_lossy(&child.stderr);
    assert_eq!(fields.len(), 4, "reopen said: {text} {stderr}");
    fields
}

struct Row {
    label: String,
    du_per_object: f64,
    rss_fill: f64,
    rss_open: f64,
    rss_reread: f64,
    open_ms: f64,
    crash_open_ms: f64,
    put_rate: f64,
    get_rate: f64,
    reopened_get_rate: f64,
    file_put_rate: f64,
    file_get_rate: f64,
    file_du_per_object: f64,
}

fn measure_store(dir: &Path, count: u64, len: usize) -> Row {
    let _ = fs::remove_dir_all(dir);
    let template = vec![0x5a; len];
    let before = rss_bytes();
    let store = PackedStore::open(dir, config(count, len)).expect("open");
    let put_seconds = parallel(count, |_, ids| {
        let mut bytes = Vec::with_capacity(len);
        for id in ids {
            fill_bytes(&template, id, &mut bytes);
            store.put(&key(id), &validators(id), &bytes).expect("put");
        }
    }) + {
        let start = Instant::now();
        store.sync().expect("sync");
        start.elapsed().as_secs_f64()
    };
    let rss_fill = rss_bytes().saturating_sub(before);
    let get_seconds = get_all(&store, count, len);
    // A crash after the fill: the first reopen scans what the last automatic checkpoint
    // does not cover, and closes; the second is a clean reopen from the checkpoint.
    store.abandon();
    let after_crash = reopen_in_child(dir, count, len);
    let du_bytes = du(dir);
    let fields = reopen_in_child(dir, count, len);
    let per = |bytes: f64| bytes / count as f64;
    Row {
        label: format!("{count} x {} KiB", len / 1024),
        du_per_object: per(du_bytes as f64),
        rss_fill: per(rss_fill as f64),
        rss_open: per(fields[1]),
        rss_reread: per(fields[2]),
        open_ms: fields[0],
        crash_open_ms: after_crash[0],
        put_rate: count as f64 / put_seconds,
        get_rate: count as f64 / get_seconds,
        reopened_get_rate: fields[3],
        file_put_rate: 0.0,
        file_get_rate: 0.0,
        file_du_per_object: 0.0,
    }
}

fn file_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{:02x}", id % 256))
        .join(format!("{id:08}.jpg"))
}

/// The baseline: the same bytes as one file per object (256 fan-out folders), written and
/// synced (syncfs), then read back, with the same threads.
fn measure_files(dir: &Path, count: u64, len: usize, row: &mut Row) {
    set_aside(dir);
    for fan in 0..256 {
        fs::create_dir_all(dir.join(format!("{fan:02x}"))).expect("mkdir");
    }
    let template = vec![0x5a; len];
    let put_seconds = parallel(count, |_, ids| {
        let mut bytes = Vec::with_capacity(len);
        for id in ids {
            fill_bytes(&template, id, &mut bytes);
            let mut file = fs::File::create(file_path(dir, id)).expect("create");
            file.write_all(&bytes).expect("write");
        }
    }) + {
        let start = Instant::now();
        let folder = fs::File::open(dir).expect("open dir");
        // SAFETY: syncfs on a descriptor we own.
        unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&folder)) };
        start.elapsed().as_secs_f64()
    };
    let get_seconds = parallel(count, |_, ids| {
        let mut bytes = Vec::with_capacity(len);
        for id in ids {
            bytes.clear();
            let mut file = fs::File::open(file_path(dir, id)).expect("open");
            file.read_to_end(&mut bytes).expect("read");
            assert_eq!(bytes[..8], id.to_le_bytes());
        }
    });
    row.file_put_rate = count as f64 / put_seconds;
    row.file_get_rate = count as f64 / get_seconds;
    row.file_du_per_object = du(dir) as f64 / count as f64;
    set_aside(dir);
}

/// Moves a folder of a million files out of the way instead of removing it, which takes
/// minutes: `rm -rf PACKED_SCALE_DIR/trash-*` after the run.
fn set_aside(dir: &Path) {
    if dir.exists() {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let trash = dir.with_file_name(format!("trash-{stamp}"));
        fs::rename(dir, trash).expect("set the old folder aside");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("reopen") {
        let count = args[3].parse().expect("count");
        reopen(Path::new(&args[2]), count, args[4].parse().expect("len"));
        return;
    }
    let base = PathBuf::from(
        std::env::var("PACKED_SCALE_DIR").unwrap_or_else(|_| "/var/tmp/packed-scale".into()),
    );
    let divide: u64 = std::env::var("PACKED_SCALE_DIVIDE")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(1);
    println!("threads: {}", threads());
    println!("| objects | du/object | RSS/object fill | reopen | re-read | reopen time (after a kill) | put/s (files) | get/s (files) | cold get/s after reopen | files du/object |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (count, len) in [(1_000_000 / divide, 1024), (100_000 / divide, 16 << 10)] {
        let store_dir = base.join(format!("store-{len}"));
        let mut row = measure_store(&store_dir, count, len);
        let _ = fs::remove_dir_all(&store_dir);
        eprintln!(
            "store done: {:.0} B/object, reopen {:.1} ms, after a kill {:.1} ms",
            row.du_per_object, row.open_ms, row.crash_open_ms
        );
        measure_files(&base.join(format!("files-{len}")), count, len, &mut row);
        println!(
            "| {} | {:.0} B | {:.1} B | {:.1} B | {:.1} B | {:.1} ms ({:.0} ms) | {:.0} ({:.0}) | {:.0} ({:.0}) | {:.0} | {:.0} B |",
            row.label, row.du_per_object, row.rss_fill, row.rss_open, row.rss_reread,
            row.open_ms, row.crash_open_ms, row.put_rate, row.file_put_rate, row.get_rate, row.file_get_rate,
            row.reopened_get_rate, row.file_du_per_object
        );
    }
}
