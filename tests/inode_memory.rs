//! What a small file costs the daemon's heap while the kernel holds its inode (issue #18):
//! the file system is driven without FUSE over a cache filled beforehand, every file is
//! looked up and read again, and a counting allocator says what stayed allocated, in
//! glibc's chunk sizes, per inode. Forgetting the inodes must give it all back.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use common::assert_bytes_eq;
use common::kernel::{Kernel, ROOT};
use common::layer::config;
use common::origin::Origin;
use ston_fs::base::FsError;

/// Heap bytes in use, counted as glibc's malloc lays them out: 8 bytes of header, 16-byte
/// alignment, 32 bytes at least. RSS follows this, not the sizes asked for.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

fn chunk(layout: Layout) -> isize {
    ((layout.size() + 8 + 15) & !15).max(32) as isize
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(chunk(layout), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(chunk(layout), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(chunk(layout), Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let grown = Layout::from_size_align_unchecked(new_size, layout.align());
        LIVE.fetch_add(chunk(grown) - chunk(layout), Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Files of the test, in folders of 1,000 as the scale benchmark lays them out: more than
/// the bounded in-memory caches (8,192 live objects) hold, so those do not count per file.
const FILES: usize = 20_000;
const PER_DIR: usize = 1_000;
/// The bound for an object whose inode the kernel holds, after it was read again.
const MAX_BYTES_PER_HELD_INODE: isize = 512;

fn name(i: usize) -> (String, String) {
    (format!("d{}", i / PER_DIR), format!("f{i}.bin"))
}

/// Looks every file up and reads it whole as the kernel would (one open if opens are
/// sent), keeping the lookups; returns the inodes with their lookup counts.
fn look_up_and_read_all(kernel: &Kernel, origin: &Origin) -> Vec<(u64, u64)> {
    let mut held = Vec::new();
    let mut folder = (String::new(), 0);
    for i in 0..FILES {
        let (dir, file) = name(i);
        if folder.0 != dir {
            let ino = kernel.lookup(ROOT, &dir).expect("folder").attr.ino;
            held.push((ino, 1));
            folder = (dir.clone(), ino);
        }
        let ino = kernel.lookup(folder.1, &file).expect("file").attr.ino;
        held.push((ino, 1));
        let path = format!("/{dir}/{file}");
        let bytes = match kernel.open(ino) {
            Ok(opened) => {
                let bytes = kernel.read_to_end(ino, opened.fh, 128 << 10).expect("read");
                kernel.release(opened.fh);
                bytes
            }
            Err(FsError::NotNeeded) => kernel.read_to_end(ino, 0, 128 << 10).expect("read"),
            Err(error) => panic!("open {path}: {error}"),
        };
        assert_bytes_eq(&bytes, &origin.content(&path), &path);
    }
    held
}

/// Opens sent to the daemon: each file was opened, read through its handle and released.
#[test]
fn a_small_file_whose_inode_the_kernel_holds_costs_at_most_512_heap_bytes() {
    held_inode_cost("false");
}

/// Zero-message opens (what `auto` switches to under a load of small files): each inode
/// also keeps what its handle 0 read, and the journal the version of its pages.
#[test]
fn with_zero_message_opens_a_held_small_file_still_costs_at_most_512_heap_bytes() {
    held_inode_cost("true");
}

/// Fills a cache, mounts it again with `zero_message_opens` set to `opens`, reads every
/// file again, and checks what stays allocated per held inode, and after the forgets.
fn held_inode_cost(opens: &str) {
    // The count is the whole process's: one measurement at a time.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let origin = Origin::start();
    for i in 0..FILES {
        let (dir, file) = name(i);
        origin.put_pattern(&format!("/{dir}/{file}"), i as u64, 1024);
    }
    let dir = tempfile::tempdir().expect("cache folder");
    let settings = [("ttl", "86400"), ("zero_message_opens", opens)];
    let filling = Kernel::mount(config(&origin, dir.path(), &settings));
    for (ino, lookups) in look_up_and_read_all(&filling, &origin) {
        filling.forget(ino, lookups);
    }
    filling.unmount();
    let requests = origin.request_count();

    let kernel = Kernel::mount(config(&origin, dir.path(), &settings));
    // The first call of a process sets up what every later one shares.
    let warm_up = kernel.lookup(ROOT, "d0").expect("folder").attr.ino;
    kernel.forget(warm_up, 1);
    let before = LIVE.load(Ordering::Relaxed);
    let held = look_up_and_read_all(&kernel, &origin);
    let after = LIVE.load(Ordering::Relaxed);
    assert_eq!(origin.request_count(), requests, "all from the cache");
    let per_inode = (after - before) / held.len() as isize;
    eprintln!(
        "{} inodes held: {} heap bytes each ({} in all)",
        held.len(),
        per_inode,
        after - before
    );
    for (ino, lookups) in held {
        kernel.forget(ino, lookups);
    }
    let forgotten = LIVE.load(Ordering::Relaxed);
    eprintln!(
        "after the forgets: {} bytes above the start",
        forgotten - before
    );
    assert!(
        per_inode <= MAX_BYTES_PER_HELD_INODE,
        "{per_inode} heap bytes per held inode"
    );
    assert!(
        forgotten - before < (FILES as isize) * 16,
        "forgetting every inode gives their memory back: {} bytes left",
        forgotten - before
    );
    kernel.unmount();
}
