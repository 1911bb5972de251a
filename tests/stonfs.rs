//! `StonFs` driven as the kernel drives it, without FUSE and without root: lookups, attributes,
//! opens, reads over the three handle paths (implicit handle 0, open handles, handles adopted
//! after a restart), releases and forgets, version changes, purges, passthrough registrations
//! and restarts, against the in-process origin. A proptest model checks bytes, open counts and
//! versions over random sequences of these calls.

mod common;

use std::ffi::OsStr;

use common::assert_bytes_eq;
use common::kernel::{Kernel, ROOT, ROOT_UID};
use common::layer::{config, BLOCK};
use common::origin::{pattern, Fault, FaultAction, Origin};
use std::sync::Arc;
use ston_fs::base::FsError;
use ston_fs::fuse::fs::{EntryKind, KernelFeatures, OpenIo, Xattr};
use ston_fs::fuse::Wiring;
use tempfile::TempDir;

/// A mount over an origin and a cache folder of its own (dropped in this order).
struct Fixture {
    kernel: Kernel,
    origin: Origin,
    dir: TempDir,
}

impl std::ops::Deref for Fixture {
    type Target = Kernel;
    fn deref(&self) -> &Kernel {
        &self.kernel
    }
}

/// `settings`, with opens sent to the daemon unless they say otherwise: handles, their
/// versions and passthrough are what most of these tests are about.
fn with_opens<'a>(settings: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all = settings.to_vec();
    if !settings.iter().any(|(key, _)| *key == "zero_message_opens") {
        all.push(("zero_message_opens", "false"));
    }
    all
}

/// The origin's files: `/name` holds `pattern(seed, len)`.
fn fixture(files: &[(&str, u64, usize)], settings: &[(&str, &str)]) -> Fixture {
    fixture_with(files, settings, KernelFeatures::default())
}

fn fixture_with(
    files: &[(&str, u64, usize)],
    settings: &[(&str, &str)],
    features: KernelFeatures,
) -> Fixture {
    let origin = Origin::start();
    for (name, seed, len) in files {
        origin.put(&format!("/{name}"), pattern(*seed, *len));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = Kernel::mount_with(config(&origin, dir.path(), &with_opens(settings)), features);
    Fixture {
        kernel,
        origin,
        dir,
    }
}

impl Fixture {
    fn restart(self, settings: &[(&str, &str)]) -> (Fixture, ston_fs::fuse::TakeoverReport) {
        let Fixture {
            kernel,
            origin,
            dir,
        } = self;
        let (kernel, report) = kernel.restart(config(&origin, dir.path(), &with_opens(settings)));
        let fixture = Fixture {
            kernel,
            origin,
            dir,
        };
        (fixture, report)
    }

    fn content(&self, name: &str) -> bytes::Bytes {
        self.origin.content(&format!("/{name}"))
    }

    /// Looks `name` up and opens it: its inode and handle.
    fn opened(&self, name: &str) -> (u64, u64) {
        let ino = self.ino(name);
        (ino, self.fh(ino))
    }

    /// The origin gets a new version of `name`, and the cached one goes stale.
    fn change(&self, name: &str, bytes: bytes::Bytes) {
        self.origin.replace(&format!("/{name}"), bytes);
        self.expire(name);
    }

    /// After `/name` changed: its entry was dropped, and a new lookup gets a new inode (not
    /// `old_ino`) whose handle 0 reads the new bytes.
    #[track_caller]
    fn assert_new_inode_reads_new_version(&self, name: &str, old_ino: u64) {
        assert!(self.caches.wait_entry_invalidated(ROOT, name));
        let new_ino = self.ino(name);
        assert_ne!(new_ino, old_ino, "a new version is a new inode");
        self.assert_reads(new_ino, 0, 4096, &self.content(name), "new version");
    }

    /// Reads a handle to its end: it must give exactly `want`.
    #[track_caller]
    fn assert_reads(&self, ino: u64, fh: u64, chunk: u32, want: &[u8], what: &str) {
        let read = self.read_to_end(ino, fh, chunk);
        let read = read.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_bytes_eq(&read, want, what);
    }

    fn requests_for(&self, name: &str) -> u64 {
        self.origin.request_count_for(&format!("/{name}"))
    }
}

fn passthrough() -> KernelFeatures {
    KernelFeatures {
        passthrough: true,
        direct_io_mmap: false,
    }
}

/// A mount granted passthrough, whose `a.bin` of `len` bytes is wholly cached and verified
/// and looked up: the fixture and its inode.
fn verified(len: usize) -> (Fixture, u64) {
    let fx = fixture_with(&[("a.bin", 1, len)], FILES_ONLY, passthrough());
    fx.make_verified("a.bin");
    let ino = fx.ino("a.bin");
    (fx, ino)
}

/// The backing id of a passthrough open.
#[track_caller]
fn backing_of(opened: &ston_fs::fuse::fs::Opened) -> u32 {
    match opened.io {
        OpenIo::Passthrough { backing_id } => backing_id,
        OpenIo::Cached { .. } => panic!("not in passthrough: {:?}", opened.io),
    }
}

const SMALL: usize = 10_000;
/// Passthrough needs a cache file: small objects are packed records, so these mounts keep
/// every object as files.
const FILES_ONLY: &[(&str, &str)] = &[("small_object_max", "0")];
const MULTI: usize = 3 * BLOCK as usize + 1234;

// ---------------------------------------------------------------------------------------
// lookup, getattr, access
// ---------------------------------------------------------------------------------------

#[test]
fn lookup_gives_a_read_only_file_of_the_origin_size() {
    let fx = fixture(&[("a.bin", 1, MULTI)], &[]);
    let entry = fx.lookup(ROOT, "a.bin").expect("lookup");
    assert!(entry.attr.ino > ROOT);
    assert_eq!(entry.attr.kind, EntryKind::File);
    assert_eq!(entry.attr.size, MULTI as u64);
    assert_eq!(entry.attr.perm, 0o444);
    assert_eq!(entry.attr.nlink, 1);
    assert!(!entry.ttl.is_zero(), "the kernel may keep a fresh entry");
}

#[test]
fn a_missing_name_is_a_negative_entry_for_the_negative_ttl() {
    let fx = fixture(&[], &[("negative_ttl", "7")]);
    let entry = fx.lookup(ROOT, "missing.bin").expect("negative entry");
    assert_eq!(entry.attr.ino, 0, "inode 0 is a negative entry");
    assert_eq!(entry.ttl.as_secs(), 7);
}

#[test]
fn a_missing_name_is_remembered_without_asking_the_origin_again() {
    let fx = fixture(&[], &[]);
    fx.lookup(ROOT, "missing.bin").expect("negative entry");
    let asked = fx.requests_for("missing.bin");
    assert!(asked >= 1);
    fx.lookup(ROOT, "missing.bin").expect("negative entry");
    assert_eq!(fx.requests_for("missing.bin"), asked);
}

#[test]
fn a_lookup_under_an_unknown_parent_is_stale() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[]);
    assert!(matches!(fx.lookup(999, "a.bin"), Err(FsError::Stale)));
}

#[test]
fn names_that_are_no_path_component_do_not_exist() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[]);
    for name in ["", ".", "..", "x/a.bin", "a\0b"] {
        let found = fx.lookup(ROOT, name);
        assert!(matches!(found, Err(FsError::NotFound)), "{name:?}");
    }
    assert_eq!(fx.origin.request_count(), 0, "none reached the origin");
}

#[test]
fn a_lookup_under_a_file_is_not_a_directory() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[]);
    let ino = fx.ino("a.bin");
    assert!(matches!(fx.lookup(ino, "b"), Err(FsError::NotDirectory)));
}

#[test]
fn looking_a_name_up_twice_gives_one_inode_and_one_origin_request() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[]);
    let first = fx.ino("a.bin");
    let asked = fx.requests_for("a.bin");
    assert_eq!(fx.ino("a.bin"), first);
    assert_eq!(fx.requests_for("a.bin"), asked, "a fresh entry is known");
}

#[test]
fn two_names_get_two_inodes() {
    let fx = fixture(&[("a.bin", 1, SMALL), ("b.bin", 2, SMALL)], &[]);
    assert_ne!(fx.ino("a.bin"), fx.ino("b.bin"));
}

#[test]
fn dot_dir_answers_names_without_a_dot_as_directories_from_memory() {
    let fx = fixture(&[("dir/a.bin", 1, SMALL)], &[("dot_dir", "true")]);
    let dir = fx.lookup(ROOT, "dir").expect("dir");
    assert_eq!(dir.attr.kind, EntryKind::Directory);
    assert_eq!(dir.attr.perm, 0o555);
    assert_eq!(fx.origin.request_count(), 0);
    let file = fx.lookup(dir.attr.ino, "a.bin").expect("file in dir");
    assert_eq!(file.attr.size, SMALL as u64);
    assert!(fx.fs.opendir(dir.attr.ino).is_ok());
}

#[test]
fn the_root_is_a_directory() {
    let fx = fixture(&[], &[]);
    let root = fx.getattr(ROOT).expect("root");
    assert_eq!(root.kind, EntryKind::Directory);
    assert_eq!(root.ino, ROOT);
    assert!(fx.fs.opendir(ROOT).is_ok());
}

#[test]
fn getattr_of_an_unknown_inode_is_stale() {
    let fx = fixture(&[], &[]);
    assert!(matches!(fx.getattr(4242), Err(FsError::Stale)));
    assert!(matches!(fx.fs.opendir(4242), Err(FsError::Stale)));
}

#[test]
fn getattr_of_a_fresh_file_asks_nothing() {
    let fx = fixture(&[("a.bin", 1, MULTI)], &[]);
    let ino = fx.ino("a.bin");
    let asked = fx.origin.request_count();
    let attr = fx.getattr(ino).expect("getattr");
    assert_eq!((attr.ino, attr.size), (ino, MULTI as u64));
    assert_eq!(fx.origin.request_count(), asked);
}

#[test]
fn getattr_of_a_stale_file_shows_the_new_version_in_place() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[]);
    let ino = fx.ino("a.bin");
    fx.change("a.bin", pattern(2, SMALL + 5));
    let attr = fx.getattr(ino).expect("getattr");
    assert_eq!(
        attr.size,
        SMALL as u64 + 5,
        "no file is open: the inode follows"
    );
    assert_eq!(fx.ino("a.bin"), ino, "and the name keeps its inode");
}

#[test]
fn a_directory_cannot_be_opened_as_a_file_nor_a_file_as_a_directory() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[]);
    let ino = fx.ino("a.bin");
    assert!(matches!(fx.fs.opendir(ino), Err(FsError::NotDirectory)));
    assert!(matches!(fx.open(ROOT), Err(FsError::IsDirectory)));
}

#[test]
fn access_allows_reading_what_exists_and_never_writing() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[]);
    let ino = fx.ino("a.bin");
    assert!(fx.fs.access(ino, false).is_ok());
    assert!(matches!(fx.fs.access(ino, true), Err(FsError::ReadOnly)));
    assert!(matches!(fx.fs.access(777, false), Err(FsError::Stale)));
}

#[test]
fn the_control_socket_is_an_attribute_of_the_root_only() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[]);
    let name = OsStr::new(ston_fs::fuse::SOCKET_XATTR);
    assert!(matches!(
        fx.fs.getxattr(ROOT, name, 0),
        Err(FsError::NoAttribute)
    ));
    let socket = "/run/ston-fs/control.sock";
    fx.fs.set_control_socket(socket.into()).expect("set once");
    let again = fx.fs.set_control_socket("/elsewhere".into());
    assert!(again.is_err(), "a second path is refused, not dropped");
    let len = socket.len() as u32;
    assert!(matches!(fx.fs.getxattr(ROOT, name, 0), Ok(Xattr::Size(n)) if n == len));
    match fx.fs.getxattr(ROOT, name, len) {
        Ok(Xattr::Data(value)) => assert_eq!(value, socket.as_bytes()),
        _ => panic!("the socket's path"),
    }
    let short = fx.fs.getxattr(ROOT, name, len - 1);
    assert!(matches!(short, Err(FsError::BufferTooSmall)));
    let ino = fx.ino("a.bin");
    assert!(matches!(
        fx.fs.getxattr(ino, name, 0),
        Err(FsError::NoAttribute)
    ));
    let other = fx.fs.getxattr(ROOT, OsStr::new("user.other"), 0);
    assert!(matches!(other, Err(FsError::NoAttribute)));
    assert!(matches!(fx.fs.listxattr(0), Xattr::Size(0)));
}

#[test]
fn statfs_reports_the_cap_and_what_is_used() {
    let fx = fixture(&[("a.bin", 1, MULTI)], &[("max_cache_size", "64M")]);
    let empty = fx.fs.statfs();
    assert_eq!(empty.blocks, (64 << 20) / 4096);
    let (ino, fh) = fx.opened("a.bin");
    fx.read_to_end(ino, fh, 1 << 20).expect("read");
    common::layer::wait_cached(&fx.cached("a.bin").expect("cached"));
    let used = fx.fs.statfs();
    assert!(used.free < empty.free, "{} < {}", used.free, empty.free);
    assert!(used.files >= 1);
}

// ---------------------------------------------------------------------------------------
// open, read, release
// ---------------------------------------------------------------------------------------

#[test]
fn opening_for_writing_is_refused_as_read_only() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[]);
    let ino = fx.ino("a.bin");
    for flags in [
        libc::O_WRONLY,
        libc::O_RDWR,
        libc::O_RDONLY | libc::O_TRUNC,
        libc::O_RDONLY | libc::O_CREAT,
    ] {
        let opened = fx.answer(fx.fs.open(ino, flags));
        assert!(matches!(opened, Err(FsError::ReadOnly)), "flags {flags:#o}");
    }
    assert_eq!(fx.fs.open_handles(), 0);
}

#[test]
fn opening_an_unknown_inode_is_stale() {
    let fx = fixture(&[], &[]);
    assert!(matches!(fx.open(31337), Err(FsError::Stale)));
}

#[test]
fn each_open_gets_its_own_nonzero_handle() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[]);
    let ino = fx.ino("a.bin");
    let handles: Vec<u64> = (0..5).map(|_| fx.fh(ino)).collect();
    let distinct: std::collections::BTreeSet<u64> = handles.iter().copied().collect();
    assert_eq!(distinct.len(), 5);
    assert!(!distinct.contains(&0), "handle 0 is never handed out");
    assert_eq!(fx.fs.open_handles(), 5);
}

#[test]
fn a_read_gives_the_origin_bytes() {
    let fx = fixture(&[("a.bin", 1, MULTI)], &[]);
    let (ino, fh) = fx.opened("a.bin");
    fx.assert_reads(ino, fh, 128 << 10, &fx.content("a.bin"), "a.bin");
}

#[test]
fn reads_at_any_offset_and_length_are_exact_and_cut_at_the_end() {
    let fx = fixture(&[("a.bin", 3, MULTI)], &[]);
    let want = fx.content("a.bin");
    let (ino, fh) = fx.opened("a.bin");
    let mut rng = common::Rng::new(11);
    for _ in 0..60 {
        let offset = rng.below(MULTI as u64 + 2000);
        let size = 1 + rng.below(2 * BLOCK) as u32;
        let got = fx.read(ino, fh, offset, size).expect("read");
        let start = (offset as usize).min(MULTI);
        let end = (offset as usize + size as usize).min(MULTI);
        assert_bytes_eq(&got, &want[start..end], &format!("{offset}+{size}"));
    }
}

#[test]
fn a_read_past_the_end_is_empty() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[]);
    let (ino, fh) = fx.opened("a.bin");
    let past = fx.read(ino, fh, SMALL as u64 + 10, 4096).expect("read");
    assert!(past.is_empty());
}

#[test]
fn an_empty_file_opens_and_reads_nothing() {
    let fx = fixture(&[("empty.bin", 1, 0)], &[]);
    let ino = fx.ino("empty.bin");
    assert_eq!(fx.getattr(ino).expect("getattr").size, 0);
    let fh = fx.fh(ino);
    assert!(fx.read(ino, fh, 0, 4096).expect("read").is_empty());
}

#[test]
fn a_second_reader_is_served_by_the_cache_alone() {
    let fx = fixture(&[("a.bin", 1, MULTI)], &[]);
    let (ino, first) = fx.opened("a.bin");
    fx.read_to_end(ino, first, 128 << 10).expect("first read");
    fx.release(first);
    common::layer::wait_cached(&fx.cached("a.bin").expect("cached"));
    let asked = fx.origin.request_count();
    let second = fx.fh(ino);
    fx.assert_reads(
        ino,
        second,
        64 << 10,
        &fx.content("a.bin"),
        "from the cache",
    );
    assert_eq!(
        fx.origin.request_count(),
        asked,
        "{}",
        fx.origin.describe_requests()
    );
}

#[test]
fn a_released_or_never_opened_handle_is_stale() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[]);
    let (ino, fh) = fx.opened("a.bin");
    fx.release(fh);
    assert!(matches!(fx.read(ino, fh, 0, 10), Err(FsError::Stale)));
    assert!(matches!(fx.read(ino, 9999, 0, 10), Err(FsError::Stale)));
}

#[test]
fn handles_are_counted_on_their_version_until_released() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[]);
    let ino = fx.ino("a.bin");
    let (one, two) = (fx.fh(ino), fx.fh(ino));
    let object = fx.cached("a.bin").expect("cached");
    assert_eq!(object.open_handles(), 2);
    assert_eq!(fx.fs.open_handles(), 2);
    fx.release(one);
    assert_eq!(object.open_handles(), 1);
    fx.release(two);
    assert_eq!(object.open_handles(), 0);
    assert_eq!(fx.fs.open_handles(), 0);
}

#[test]
fn releasing_a_handle_twice_counts_once() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[]);
    let ino = fx.ino("a.bin");
    let (one, two) = (fx.fh(ino), fx.fh(ino));
    fx.release(one);
    fx.release(one);
    let object = fx.cached("a.bin").expect("cached");
    assert_eq!(object.open_handles(), 1, "the second release is of nothing");
    assert_eq!(
        fx.read(ino, two, 0, 5).expect("read")[..],
        fx.content("a.bin")[..5]
    );
}

#[test]
fn a_failed_read_is_not_waited_for_twice_when_the_kernel_retries_it() {
    let fx = fixture(&[("a.bin", 1, MULTI)], &[]);
    let (ino, fh) = fx.opened("a.bin");
    fx.origin
        .add_fault(Fault::path("/a.bin", FaultAction::Status(503)));
    let failed = fx.read(ino, fh, 2 * BLOCK, 4096);
    assert!(failed.is_err(), "the origin fails");
    let asked = fx.requests_for("a.bin");
    let retry = fx.read(ino, fh, 2 * BLOCK, 4096);
    assert!(matches!(retry, Err(FsError::Timeout)), "{retry:?}");
    assert_eq!(fx.requests_for("a.bin"), asked, "the retry asks nothing");
    fx.origin.clear_faults();
    let healed = fx.read(ino, fh, 2 * BLOCK, 4096).expect("read once healed");
    let at = 2 * BLOCK as usize;
    assert_bytes_eq(&healed, &fx.content("a.bin")[at..at + 4096], "healed");
}

#[test]
fn the_origin_failing_on_a_cold_lookup_is_an_error_not_a_negative_entry() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[]);
    fx.origin
        .add_fault(Fault::path("/a.bin", FaultAction::Status(500)));
    let found = fx.lookup(ROOT, "a.bin");
    assert!(found.is_err(), "{:?}", found.map(|e| e.attr.ino));
    fx.origin.clear_faults();
    assert_ne!(fx.ino("a.bin"), 0, "found once the origin answers");
}

// ---------------------------------------------------------------------------------------
// zero_message_opens: handle 0
// ---------------------------------------------------------------------------------------

#[test]
fn with_zero_message_opens_an_open_is_not_needed() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[("zero_message_opens", "true")]);
    let ino = fx.ino("a.bin");
    assert!(matches!(fx.open(ino), Err(FsError::NotNeeded)));
    assert_eq!(fx.fs.open_handles(), 0);
}

#[test]
fn handle_zero_reads_the_inode_version() {
    let fx = fixture(&[("a.bin", 4, MULTI)], &[("zero_message_opens", "true")]);
    let ino = fx.ino("a.bin");
    fx.assert_reads(ino, 0, 100_000, &fx.content("a.bin"), "handle 0");
    let object = fx.cached("a.bin").expect("cached");
    assert_eq!(object.open_handles(), 1, "one implicit handle per inode");
}

#[test]
fn handle_zero_of_an_unknown_inode_is_stale() {
    let fx = fixture(&[], &[("zero_message_opens", "true")]);
    assert!(matches!(fx.read(555, 0, 0, 10), Err(FsError::Stale)));
}

#[test]
fn forgetting_an_inode_closes_its_implicit_handle() {
    let fx = fixture(&[("a.bin", 1, MULTI)], &[("zero_message_opens", "true")]);
    let ino = fx.ino("a.bin");
    fx.read(ino, 0, 0, 100).expect("read");
    let object = fx.cached("a.bin").expect("cached");
    assert_eq!(object.open_handles(), 1);
    fx.forget(ino, 1);
    assert_eq!(object.open_handles(), 0);
    assert!(matches!(fx.read(ino, 0, 0, 10), Err(FsError::Stale)));
}

/// A small file's handle 0 keeps only the version's tag: the kernel may keep the inode
/// for as long as it likes without keeping an object in the daemon.
#[test]
fn handle_zero_of_a_small_file_keeps_no_object() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[("zero_message_opens", "true")]);
    let ino = fx.ino("a.bin");
    fx.assert_reads(ino, 0, 4096, &fx.content("a.bin"), "first");
    fx.assert_reads(
        ino,
        0,
        4096,
        &fx.content("a.bin"),
        "again, rebuilt from the record",
    );
    let object = fx.cached("a.bin").expect("cached");
    assert_eq!(object.open_handles(), 0, "no handle holds it");
    assert_eq!(fx.origin.request_count_for("/a.bin"), 1);
}

#[test]
fn handle_zero_keeps_its_version_and_a_new_lookup_gets_the_new_one() {
    let fx = fixture(&[("a.bin", 1, MULTI)], &[("zero_message_opens", "true")]);
    let old = fx.content("a.bin");
    let ino = fx.ino("a.bin");
    fx.assert_reads(ino, 0, 4096, &old, "before the change");
    common::layer::wait_cached(&fx.cached("a.bin").expect("cached"));
    fx.change("a.bin", pattern(9, MULTI * 2));
    fx.assert_reads(ino, 0, 4096, &old, "the open inode keeps its version");
    fx.assert_new_inode_reads_new_version("a.bin", ino);
}

/// A small file's handle 0 does not pin its packed record (it lives as long as the kernel
/// keeps the inode, and would keep segments from ever being reclaimed): once the record
/// holds a new version, a read of the old inode that reaches the daemon (its pages gone)
/// gets the old bytes back from the origin, or EIO, and never the new bytes.
#[test]
fn handle_zero_of_a_small_file_never_reads_the_new_version() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[("zero_message_opens", "true")]);
    let old = fx.content("a.bin");
    let ino = fx.ino("a.bin");
    fx.assert_reads(ino, 0, 4096, &old, "before the change");
    fx.change("a.bin", pattern(9, SMALL));
    match fx.read_to_end(ino, 0, 4096) {
        Ok(bytes) => assert_bytes_eq(&bytes, &old, "the old inode"),
        Err(error) => assert_eq!(error.errno(), libc::EIO, "the old inode: {error}"),
    }
    fx.assert_new_inode_reads_new_version("a.bin", ino);
}

// ---------------------------------------------------------------------------------------
// versions, purges, forgets
// ---------------------------------------------------------------------------------------

#[test]
fn an_open_handle_keeps_its_version_while_a_new_lookup_gets_the_new_one() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[]);
    let old = fx.content("a.bin");
    let (ino, fh) = fx.opened("a.bin");
    fx.read(ino, fh, 0, 10).expect("read");
    fx.change("a.bin", pattern(2, SMALL + 100));
    let attr = fx.getattr(ino).expect("getattr");
    assert_eq!(attr.size, SMALL as u64, "the open inode keeps its version");
    assert!(fx.caches.wait_entry_invalidated(ROOT, "a.bin"));
    fx.assert_reads(ino, fh, 4096, &old, "old handle");
    let new_ino = fx.ino("a.bin");
    assert_ne!(new_ino, ino);
    let new_fh = fx.fh(new_ino);
    fx.assert_reads(new_ino, new_fh, 4096, &fx.content("a.bin"), "new handle");
}

/// A small file's inode that nobody has open keeps no object: it is rebuilt from the
/// packed record when the inode is opened again, and serves exactly its own version; once
/// the record holds a new version, the old inode (still read) never serves its bytes, and a
/// fresh lookup gets a new inode that does (issue #18).
#[test]
fn a_small_files_inode_is_rebuilt_from_its_record_and_never_serves_another_version() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[]);
    let old = fx.content("a.bin");
    let (ino, fh) = fx.opened("a.bin");
    fx.assert_reads(ino, fh, 4096, &old, "first read");
    fx.release(fh);
    let object = fx.cached("a.bin").expect("a packed record");
    assert!(object.is_small());
    let unheld = Arc::downgrade(&object);
    drop(object);
    // A read's tasks (stats, the record's sync) may still hold it for a moment.
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while unheld.upgrade().is_some() && std::time::Instant::now() < give_up {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(unheld.upgrade().is_none(), "the inode keeps no object");

    let opened = fx.open(ino).expect("reopened from the record");
    fx.assert_reads(ino, opened.fh, 4096, &old, "rebuilt from the record");
    let OpenIo::Cached { keep_cache, .. } = opened.io else {
        panic!("no passthrough was granted");
    };
    assert!(
        keep_cache,
        "a rebuilt object is the same version: its pages stay"
    );
    let requests = fx.requests_for("a.bin");
    assert_eq!(requests, 1, "all from the record");

    // A new version of the same size takes the record, found by a new lookup.
    fx.change("a.bin", pattern(2, SMALL));
    let new = fx.content("a.bin");
    let new_ino = fx.ino("a.bin");
    assert_ne!(new_ino, ino, "a new version is a new inode");
    fx.assert_reads(
        ino,
        opened.fh,
        4096,
        &old,
        "the open handle keeps its version",
    );
    assert!(
        matches!(fx.open(ino), Err(FsError::VersionChanged)),
        "the old inode's version left the cache while it is read"
    );
    assert_eq!(fx.getattr(ino).expect("getattr").size, SMALL as u64);
    let new_fh = fx.fh(new_ino);
    fx.assert_reads(new_ino, new_fh, 4096, &new, "the new inode");
    fx.release(new_fh);
    fx.release(opened.fh);
}

/// A small file fetched whole by its lookup: the inode keeps no object for it either, and
/// its first open and read still count as the misses they are; the next ones are hits.
#[test]
fn a_small_file_fetched_by_its_lookup_keeps_no_object_and_its_first_use_is_a_miss() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[]);
    let ino = fx.ino("a.bin");
    let object = fx.cached("a.bin").expect("a packed record");
    let unheld = Arc::downgrade(&object);
    drop(object);
    // The probe's task lets go of its answer just after the lookup has it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while unheld.strong_count() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(unheld.upgrade().is_none(), "the inode keeps no object");
    let stats = || {
        let snapshot = fx.layer.cache.stats().snapshot();
        (
            snapshot.open_misses,
            snapshot.read_misses,
            snapshot.open_hits,
        )
    };
    let before = stats();
    for _ in 0..2 {
        let fh = fx.fh(ino);
        fx.assert_reads(ino, fh, 1 << 20, &fx.content("a.bin"), "read");
        fx.release(fh);
    }
    let (open_misses, read_misses, open_hits) = stats();
    assert_eq!(open_misses - before.0, 1, "the first open is a miss");
    assert_eq!(read_misses - before.1, 1, "so is its first read");
    assert_eq!(open_hits - before.2, 1, "the second open is a hit");
    assert_eq!(fx.requests_for("a.bin"), 1);
}

#[test]
fn the_page_cache_is_kept_across_opens_of_one_version_only() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[]);
    let ino = fx.ino("a.bin");
    let keeps = |opened: ston_fs::fuse::fs::Opened| match opened.io {
        OpenIo::Cached { keep_cache, .. } => keep_cache,
        OpenIo::Passthrough { .. } => panic!("no passthrough was granted"),
    };
    let first = fx.open(ino).expect("open");
    assert!(!keeps(first), "nothing cached yet");
    fx.release(first.fh);
    let second = fx.open(ino).expect("open");
    assert!(keeps(second), "same version");
    fx.release(second.fh);
    fx.change("a.bin", pattern(2, SMALL));
    let third = fx.open(ino).expect("open");
    assert!(!keeps(third), "another version");
    assert!(
        fx.caches.wait_inode_invalidated(ino),
        "its old pages are dropped"
    );
}

#[test]
fn a_purge_refetches_on_the_next_read_and_open_handles_read_on() {
    let fx = fixture(&[("a.bin", 5, MULTI)], &[]);
    let want = fx.content("a.bin");
    let (ino, fh) = fx.opened("a.bin");
    fx.read_to_end(ino, fh, 1 << 20).expect("read");
    let sent = fx.origin.bytes_sent_for("/a.bin");
    fx.fs
        .unlink(ROOT, OsStr::new("a.bin"), ROOT_UID)
        .expect("unlink purges");
    assert!(fx.cached("a.bin").is_none(), "the cache dropped it");
    fx.assert_reads(ino, fh, 100_000, &want, "the open handle");
    let new_fh = fx.fh(ino);
    fx.assert_reads(ino, new_fh, 100_000, &want, "reopened");
    assert!(fx.origin.bytes_sent_for("/a.bin") > sent, "fetched again");
}

/// With zero-message opens the kernel never asks again for a file it holds: a purge or an
/// expiry must drop its pages and its name's entry, or the next read would not reach the
/// daemon (nor the origin). `DIR/*` reaches every inode below DIR, and nothing else.
#[test]
fn purges_and_expiries_drop_what_the_kernel_keeps_of_the_files_they_cover() {
    let files = [("a.bin", 5, SMALL), ("b.bin", 6, MULTI)];
    let fx = fixture(&files, &[("zero_message_opens", "true")]);
    fx.origin.put("/d/c.bin", pattern(7, SMALL));
    let (a, b) = (fx.ino("a.bin"), fx.ino("b.bin"));
    let d = fx.ino("d");
    let c = fx.lookup(d, "c.bin").expect("d/c.bin").attr.ino;
    for ino in [a, b, c] {
        fx.read_to_end(ino, 0, 1 << 20).expect("read");
    }
    let cache = &fx.layer.cache;
    cache.invalidate(0, "/a.bin", ston_fs::base::Invalidation::Purge);
    assert!(fx.caches.wait_inode_invalidated(a), "a.bin's pages");
    assert!(fx.caches.wait_entry_invalidated(ROOT, "a.bin"));
    cache.invalidate(0, "/d/*", ston_fs::base::Invalidation::Expire);
    assert!(fx.caches.wait_inode_invalidated(c), "d/c.bin's pages");
    assert!(fx.caches.wait_entry_invalidated(d, "c.bin"));
    let before = fx.origin.request_count_for("/a.bin");
    fx.assert_reads(a, 0, 4096, &fx.content("a.bin"), "a.bin after its purge");
    let fetched_again = fx.origin.request_count_for("/a.bin") > before;
    let b_untouched = !fx.caches.inode_invalidations().contains(&b);
    assert!(
        fetched_again && b_untouched,
        "a.bin fetched again: {fetched_again}; b.bin, covered by neither, untouched: {b_untouched}"
    );
}

#[test]
fn only_root_and_the_mounting_user_purge_through_unlink() {
    let fx = fixture(&[("a.bin", 5, MULTI)], &[]);
    let (ino, fh) = fx.opened("a.bin");
    fx.read_to_end(ino, fh, 1 << 20).expect("read");
    // SAFETY: getuid has no preconditions.
    let mounting = unsafe { libc::getuid() };
    let stranger = if mounting == 65534 { 65533 } else { 65534 };
    let refused = fx.fs.unlink(ROOT, OsStr::new("a.bin"), stranger);
    assert!(matches!(refused, Err(FsError::NotPermitted)), "{refused:?}");
    assert!(
        fx.cached("a.bin").is_some(),
        "a stranger's unlink purged nothing"
    );
    fx.fs
        .unlink(ROOT, OsStr::new("a.bin"), mounting)
        .expect("the mounting user purges");
    assert!(fx.cached("a.bin").is_none());
}

#[test]
fn unlink_of_an_unknown_parent_is_stale_and_of_a_bad_name_not_found() {
    let fx = fixture(&[], &[]);
    let stale = fx.fs.unlink(4040, OsStr::new("a.bin"), ROOT_UID);
    assert!(matches!(stale, Err(FsError::Stale)));
    let bad = fx.fs.unlink(ROOT, OsStr::new(".."), ROOT_UID);
    assert!(matches!(bad, Err(FsError::NotFound)));
}

#[test]
fn a_forgotten_inode_is_stale_and_its_name_gets_a_new_one() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[]);
    let ino = fx.ino("a.bin");
    fx.ino("a.bin");
    fx.forget(ino, 1);
    assert_eq!(fx.getattr(ino).expect("one lookup left").ino, ino);
    fx.forget(ino, 1);
    assert!(matches!(fx.getattr(ino), Err(FsError::Stale)));
    assert_ne!(fx.ino("a.bin"), ino, "inode numbers are never reused");
}

#[test]
fn forgetting_the_root_keeps_it() {
    let fx = fixture(&[], &[]);
    fx.forget(ROOT, 100);
    assert_eq!(fx.getattr(ROOT).expect("root").ino, ROOT);
}

// ---------------------------------------------------------------------------------------
// passthrough
// ---------------------------------------------------------------------------------------

#[test]
fn a_verified_file_opens_in_passthrough_on_one_registration() {
    let (fx, ino) = verified(MULTI);
    let one = fx.open(ino).expect("open");
    let two = fx.open(ino).expect("open");
    let (OpenIo::Passthrough { backing_id: a }, OpenIo::Passthrough { backing_id: b }) =
        (one.io, two.io)
    else {
        panic!("passthrough: {:?} {:?}", one.io, two.io);
    };
    assert_eq!(a, b, "one registration per inode");
    assert!(fx.backings.open_ids().contains(&a));
    fx.release(one.fh);
    fx.release(two.fh);
    assert!(
        fx.backings.open_ids().contains(&a),
        "the object keeps it for the next open"
    );
    let again = fx.open(ino).expect("open");
    assert!(matches!(again.io, OpenIo::Passthrough { backing_id } if backing_id == a));
}

#[test]
fn a_file_not_wholly_cached_is_never_opened_in_passthrough() {
    let fx = fixture_with(&[("a.bin", 1, MULTI)], &[], passthrough());
    let ino = fx.ino("a.bin");
    let opened = fx.open(ino).expect("open");
    assert!(
        matches!(opened.io, OpenIo::Cached { .. }),
        "{:?}",
        opened.io
    );
    assert!(fx.backings.open_ids().is_empty());
}

#[test]
fn a_refused_registration_serves_the_file_through_the_daemon() {
    let (fx, ino) = verified(MULTI);
    fx.backings.refuse();
    let opened = fx.open(ino).expect("open");
    assert!(
        matches!(opened.io, OpenIo::Cached { .. }),
        "{:?}",
        opened.io
    );
    fx.assert_reads(ino, opened.fh, 100_000, &fx.content("a.bin"), "cached open");
}

#[test]
fn purging_a_kept_file_closes_its_registration_once_unused() {
    let (fx, ino) = verified(SMALL);
    let opened = fx.open(ino).expect("open");
    let backing_id = backing_of(&opened);
    fx.fs
        .unlink(ROOT, OsStr::new("a.bin"), ROOT_UID)
        .expect("purge");
    assert!(
        fx.backings.open_ids().contains(&backing_id),
        "the open file still reads it"
    );
    fx.release(opened.fh);
    assert!(!fx.backings.open_ids().contains(&backing_id));
    assert!(fx.backings.closed_ids().contains(&backing_id));
}

#[test]
fn passthrough_registrations_are_journaled_for_the_next_process() {
    let (fx, ino) = verified(SMALL);
    let opened = fx.open(ino).expect("open");
    let backing_id = backing_of(&opened);
    let (fx, report) = fx.restart(&[]);
    assert_eq!(report.handles, 1);
    assert_eq!(
        report.backings_kept, 1,
        "its open handle still uses {backing_id}"
    );
    assert!(fx.backings.open_ids().contains(&backing_id));
    fx.release(opened.fh);
    assert!(
        !fx.backings.open_ids().contains(&backing_id),
        "the last carried handle's release closes it"
    );
}

// ---------------------------------------------------------------------------------------
// restarts
// ---------------------------------------------------------------------------------------

#[test]
fn a_handle_open_before_a_restart_reads_the_same_bytes_after_it() {
    let fx = fixture(&[("a.bin", 6, MULTI)], &[]);
    let (ino, fh) = fx.opened("a.bin");
    fx.read(ino, fh, 0, 100).expect("read");
    let (fx, report) = fx.restart(&[]);
    assert_eq!((report.inodes, report.handles), (1, 1));
    assert_eq!(fx.fs.open_handles(), 1, "carried");
    let read = fx
        .read_to_end(ino, fh, 100_000)
        .expect("read after restart");
    assert_bytes_eq(&read, &fx.content("a.bin"), "carried handle");
    assert_eq!(fx.getattr(ino).expect("carried inode").size, MULTI as u64);
    fx.release(fh);
    assert_eq!(fx.fs.open_handles(), 0);
}

#[test]
fn a_carried_handle_whose_version_changed_meanwhile_answers_eio() {
    let fx = fixture(&[("a.bin", 6, SMALL)], &[]);
    let (ino, fh) = fx.opened("a.bin");
    fx.change("a.bin", pattern(7, SMALL));
    fx.ino("a.bin");
    let (fx, _) = fx.restart(&[]);
    let read = fx.read(ino, fh, 0, 100);
    assert!(matches!(read, Err(FsError::VersionChanged)), "{read:?}");
    let again = fx.read(ino, fh, 0, 100);
    assert!(matches!(again, Err(FsError::VersionChanged)), "stays EIO");
    let (new_ino, new_fh) = fx.opened("a.bin");
    fx.assert_reads(
        new_ino,
        new_fh,
        4096,
        &fx.content("a.bin"),
        "the new version",
    );
}

#[test]
fn a_carried_handle_reads_its_version_while_the_cache_still_holds_it() {
    let fx = fixture(&[("a.bin", 6, SMALL)], &[]);
    let old = fx.content("a.bin");
    let (ino, fh) = fx.opened("a.bin");
    fx.origin.replace("/a.bin", pattern(7, SMALL));
    let (fx, _) = fx.restart(&[]);
    let read = fx
        .read_to_end(ino, fh, 4096)
        .expect("proven from the cache");
    assert_bytes_eq(&read, &old, "the version it opened");
}

#[test]
fn a_carried_handle_released_before_reading_is_forgotten_by_the_journal() {
    let fx = fixture(&[("a.bin", 6, SMALL)], &[]);
    let (ino, fh) = fx.opened("a.bin");
    let (fx, _) = fx.restart(&[]);
    fx.release(fh);
    assert_eq!(fx.fs.open_handles(), 0);
    assert!(matches!(fx.read(ino, fh, 0, 1), Err(FsError::Stale)));
    let (fx, report) = fx.restart(&[]);
    assert_eq!(report.handles, 0, "not carried twice");
    assert_eq!(report.inodes, 1);
    assert_eq!(fx.fs.open_handles(), 0);
}

#[test]
fn handles_opened_after_a_restart_never_reuse_a_carried_number() {
    let fx = fixture(&[("a.bin", 6, SMALL)], &[]);
    let ino = fx.ino("a.bin");
    let before: Vec<u64> = (0..3).map(|_| fx.fh(ino)).collect();
    let (fx, _) = fx.restart(&[]);
    let after = fx.fh(ino);
    assert!(!before.contains(&after), "{after} in {before:?}");
    let ino_after = fx.ino("a.bin");
    assert_eq!(ino_after, ino, "the carried inode is the name's");
}

#[test]
fn a_forgotten_inode_is_not_carried() {
    let fx = fixture(&[("a.bin", 6, SMALL), ("b.bin", 7, SMALL)], &[]);
    let a = fx.ino("a.bin");
    let b = fx.ino("b.bin");
    fx.forget(a, 1);
    let (fx, report) = fx.restart(&[]);
    assert_eq!(report.inodes, 1);
    assert!(matches!(fx.getattr(a), Err(FsError::Stale)));
    assert_eq!(fx.getattr(b).expect("carried").size, SMALL as u64);
}

#[test]
fn a_handle_the_journal_never_carried_is_stale_after_a_restart() {
    let fx = fixture(&[("a.bin", 6, SMALL)], &[]);
    let ino = fx.ino("a.bin");
    let (fx, _) = fx.restart(&[]);
    assert!(matches!(fx.read(ino, 12345, 0, 1), Err(FsError::Stale)));
}

const ZERO_MESSAGE: &[(&str, &str)] = &[("zero_message_opens", "true")];
const ZERO_MESSAGE_TTL_1: &[(&str, &str)] = &[("zero_message_opens", "true"), ("ttl", "1")];

/// A mount with `settings` whose `a.bin` was read through handle 0, so the kernel holds
/// pages of it: the fixture and the inode.
fn read_through_handle_zero(settings: &[(&str, &str)]) -> (Fixture, u64) {
    let fx = fixture(&[("a.bin", 6, SMALL)], settings);
    let ino = fx.ino("a.bin");
    fx.read(ino, 0, 0, 10).expect("read");
    (fx, ino)
}

#[test]
fn after_a_takeover_handle_zero_keeps_the_pages_of_a_version_the_cache_holds_fresh() {
    let (fx, ino) = read_through_handle_zero(ZERO_MESSAGE);
    let (fx, _) = fx.restart(ZERO_MESSAGE);
    fx.assert_reads(ino, 0, 4096, &fx.content("a.bin"), "after takeover");
    assert!(
        !fx.caches.inode_invalidations().contains(&ino),
        "the journal proves the pages' version: they stay"
    );
}

#[test]
fn after_a_takeover_pages_of_a_version_gone_stale_are_dropped_before_serving() {
    let (fx, ino) = read_through_handle_zero(ZERO_MESSAGE_TTL_1);
    // Past the version's freshness, so the next process cannot vouch for it from the cache.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (fx, _) = fx.restart(ZERO_MESSAGE_TTL_1);
    assert!(
        fx.caches.inode_invalidations().contains(&ino),
        "dropped before the takeover returns, so before any request is answered"
    );
    fx.assert_reads(ino, 0, 4096, &fx.content("a.bin"), "the same version");
}

#[test]
fn after_a_takeover_an_inode_whose_version_changed_answers_eio_and_its_name_moves_on() {
    let (fx, ino) = read_through_handle_zero(ZERO_MESSAGE_TTL_1);
    fx.origin.replace("/a.bin", pattern(7, SMALL * 2));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (fx, _) = fx.restart(ZERO_MESSAGE_TTL_1);
    assert!(fx.caches.inode_invalidations().contains(&ino));
    // The kernel asks for the attributes again: the new version is found, and the inode,
    // whose pages were of the old one, keeps that; its name goes to a new inode.
    fx.getattr(ino).expect("getattr");
    assert!(fx.caches.wait_entry_invalidated(ROOT, "a.bin"));
    assert!(matches!(
        fx.read(ino, 0, 0, 10),
        Err(FsError::VersionChanged)
    ));
    let new_ino = fx.ino("a.bin");
    assert_ne!(new_ino, ino);
    fx.assert_reads(new_ino, 0, 4096, &fx.content("a.bin"), "the new version");
}

#[test]
fn after_a_takeover_a_name_whose_inode_kept_an_old_version_moves_to_a_new_inode() {
    let (fx, ino) = read_through_handle_zero(ZERO_MESSAGE);
    // The cache gets the new version while the inode, being read, keeps the old one.
    fx.change("a.bin", pattern(8, SMALL * 2));
    fx.getattr(ino).expect("getattr");
    // The journal gives the name back to this inode (no other has it yet), which now
    // shows what the cache holds: its first read must still find the old version gone.
    let (fx, _) = fx.restart(ZERO_MESSAGE);
    assert!(matches!(
        fx.read(ino, 0, 0, 10),
        Err(FsError::VersionChanged)
    ));
    assert!(fx.caches.wait_entry_invalidated(ROOT, "a.bin"));
    let new_ino = fx.ino("a.bin");
    assert_ne!(
        new_ino, ino,
        "the name no longer leads to the inode whose version is gone"
    );
    fx.assert_reads(new_ino, 0, 4096, &fx.content("a.bin"), "the new version");
}

// ---------------------------------------------------------------------------------------
// wiring
// ---------------------------------------------------------------------------------------

#[test]
fn wiring_a_file_system_twice_is_an_error_and_keeps_the_first() {
    let fx = fixture_with(&[("a.bin", 1, SMALL)], FILES_ONLY, passthrough());
    let other = Arc::new(common::kernel::FakeBackings::default());
    let twice = fx.fs.wire(Wiring::Unjournaled {
        backings: other.clone(),
    });
    assert!(twice.is_err());
    let again = fx.fs.set_kernel_cache(fx.caches.clone());
    assert!(again.is_err(), "a second kernel cache is refused");
    fx.make_verified("a.bin");
    let ino = fx.ino("a.bin");
    let opened = fx.open(ino).expect("open");
    let id = backing_of(&opened);
    assert!(
        fx.backings.open_ids().contains(&id),
        "registered where first wired"
    );
    assert!(other.open_ids().is_empty());
}

#[test]
fn registrations_are_journaled_because_the_journal_comes_with_them() {
    let fx = fixture_with(&[("a.bin", 1, SMALL)], FILES_ONLY, passthrough());
    fx.make_verified("a.bin");
    let ino = fx.ino("a.bin");
    let id = backing_of(&fx.open(ino).expect("open"));
    let mut file = ston_fs::fuse::journal::sealed_memfd("copy").expect("memfd");
    std::io::Write::write_all(&mut file, &fx.journal.image()).expect("copy");
    let (_, restored) = ston_fs::fuse::journal::Journal::open(file).expect("reads back");
    assert_eq!(restored.carried.backings, vec![id]);
    assert_eq!(restored.carried.handles.len(), 1);
    assert_eq!(restored.carried.handles[0].backing, id);
}

/// A small file without ETag or Last-Modified, changed at the origin for other bytes of the
/// same size: the new bytes are a new version (its tag hashes them), so they get a new inode
/// and the kernel's pages of the old one are never taken for them.
#[test]
fn a_small_file_without_validators_changed_in_place_is_a_new_version() {
    let fx = fixture(&[("a.bin", 1, SMALL)], &[("zero_message_opens", "true")]);
    fx.origin
        .add_fault(Fault::global(FaultAction::Rewrite(Arc::new(
            |_req, ans| {
                ans.remove_header("etag");
                ans.remove_header("last-modified");
            },
        ))));
    fx.expire("a.bin");
    let old = fx.content("a.bin");
    let ino = fx.ino("a.bin");
    fx.assert_reads(ino, 0, 4096, &old, "before the change");
    fx.change("a.bin", pattern(2, SMALL));
    let new_ino = fx.ino("a.bin");
    assert_ne!(
        new_ino, ino,
        "same size, other bytes: another version, another inode"
    );
    fx.assert_reads(new_ino, 0, 4096, &fx.content("a.bin"), "the new inode");
}
