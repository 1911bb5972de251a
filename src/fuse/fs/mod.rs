//! The file system under the FUSE adapter: every kernel request as a method that returns a
//! value (an entry, attributes, an open handle, bytes) or an [`FsError`].
//!
//! A request answers [`Answer::Now`] when memory and the cache suffice, on the FUSE thread;
//! anything that needs the origin is an [`Answer::Later`] future that the adapter runs on the
//! I/O runtime, so a slow origin never holds a FUSE thread. Nothing here names fuser: the
//! adapter owns that, and this logic runs in tests without a kernel.
//!
//! Its locks (`handles`, `adopted`, `implicit`, `kept`) are rows 1, 2, 3 and 5 of the crate's
//! lock-order table (`src/lib.rs`).

mod attr;
mod lookup;
mod media;
mod node;
mod open;
mod open_mode;
mod read;
mod restore;
mod wiring;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;

use super::inodes::{InodeTable, ROOT_INO};
use crate::base::stats::Op;
use crate::base::SiteId;
use crate::base::{FsError, FsResult};
use crate::cache::{Cache, InvalidationWatcher, Object};
use crate::media::Media;

pub use attr::{Attr, EntryKind};
pub use lookup::Entry;
pub use open::{OpenIo, Opened};
pub use restore::{PagesReport, TakeoverReport};
pub use wiring::Wiring;

use read::OpenFile;
use restore::{AdoptedHandle, CarriedPages};
use wiring::Wired;

/// Extended attribute of the mount root that holds the control socket's path.
pub const SOCKET_XATTR: &str = "user.stonfs.control";

/// An answer now, or the work that will produce it.
pub enum Answer<T> {
    Now(FsResult<T>),
    Later(Pin<Box<dyn Future<Output = FsResult<T>> + Send>>),
}

impl<T> Answer<T> {
    fn later(future: impl Future<Output = FsResult<T>> + Send + 'static) -> Answer<T> {
        Answer::Later(Box::pin(future))
    }
}

/// Drops what the kernel cached of an inode; implemented by the adapter over its session.
pub trait KernelCache: Send + Sync {
    fn invalidate_inode(&self, ino: u64);
    /// Drops the kernel's entry for `name` under `parent`, so the next path walk looks it up.
    fn invalidate_entry(&self, parent: u64, name: &str);
}

/// What the kernel granted at INIT, which decides how files are opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelFeatures {
    /// FUSE passthrough (kernel ≥ 6.9, and the privilege to register backing files).
    pub passthrough: bool,
    /// Programs may mmap files opened for direct I/O (kernel ≥ 6.6).
    pub direct_io_mmap: bool,
}

/// One directory entry of a listing.
pub struct DirEntry {
    /// `u64::MAX` when the kernel is to learn the number from a lookup.
    pub ino: u64,
    pub kind: EntryKind,
    pub name: String,
}

/// What `statfs` reports: the cache's cap and use, in 4 KiB blocks.
pub struct FsStat {
    pub blocks: u64,
    pub free: u64,
    pub files: u64,
}

/// An extended attribute's answer: its size when asked for the size, else its bytes.
pub enum Xattr {
    Size(u32),
    Data(Vec<u8>),
}

/// The file system of one mount, above the cache.
///
/// Owns: the inode table, the open handles, and the objects that keep a passthrough
/// registration between opens (at most `open::KEPT_BACKINGS`).
/// Must hold: every handle's object is the version its open resolved; an inode's handles
/// are all cached or all passthrough.
pub struct StonFs {
    cache: Arc<Cache>,
    /// MP4 files presented through views, over `cache`.
    media: Arc<Media>,
    inodes: InodeTable,
    handles: Mutex<HashMap<u64, Arc<OpenFile>>>,
    /// With `zero_message_opens`: the kernel opens files without telling the daemon, so
    /// reads arrive with handle 0 and are served per inode, from this handle.
    implicit: Mutex<HashMap<u64, read::Implicit>>,
    /// Handles carried over a restart that have not read yet (see `restore`).
    adopted: Mutex<HashMap<u64, AdoptedHandle>>,
    /// Inodes carried over a restart whose kernel pages this process did not make: what
    /// their first handle-less read must prove first (see `restore::CarriedPages`).
    carried_pages: Mutex<HashMap<u64, CarriedPages>>,
    next_handle: AtomicU64,
    runtime: tokio::runtime::Handle,
    mounted_at: SystemTime,
    /// The user who mounted (this process's real uid): besides root, the only one who may
    /// purge through `unlink`.
    mounting_uid: u32,
    passthrough: AtomicBool,
    direct_io: AtomicBool,
    /// Whether opens reach the daemon (`zero_message_opens`).
    open_mode: open_mode::OpenMode,
    /// Objects that keep a passthrough registration between opens, oldest first.
    kept: Mutex<VecDeque<Weak<Object>>>,
    /// The connection's registrations and restart journal (see `wiring`).
    wired: OnceLock<Wired>,
    kernel: OnceLock<Arc<dyn KernelCache>>,
    control_socket: OnceLock<PathBuf>,
}

impl StonFs {
    /// A file system over `cache`, which tells it of every invalidation from now on.
    pub fn new(cache: Arc<Cache>, runtime: tokio::runtime::Handle) -> Arc<StonFs> {
        let root_site = (!cache.config().origins.is_empty()).then_some(0);
        let fs = Arc::new(StonFs {
            media: Arc::new(Media::new(cache.clone())),
            inodes: InodeTable::new(root_site),
            handles: Mutex::new(HashMap::new()),
            implicit: Mutex::new(HashMap::new()),
            adopted: Mutex::new(HashMap::new()),
            carried_pages: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            runtime,
            mounted_at: SystemTime::now(),
            // SAFETY: getuid has no preconditions and cannot fail.
            mounting_uid: unsafe { libc::getuid() },
            passthrough: AtomicBool::new(false),
            direct_io: AtomicBool::new(false),
            open_mode: open_mode::OpenMode::new(cache.config().zero_message_opens),
            kept: Mutex::new(VecDeque::new()),
            wired: OnceLock::new(),
            kernel: OnceLock::new(),
            control_socket: OnceLock::new(),
            cache,
        });
        let watcher: Weak<dyn InvalidationWatcher> = Arc::downgrade(&fs) as _;
        if fs.cache.watch_invalidations(watcher).is_err() {
            tracing::warn!("a second file system over one cache: purges reach the first only");
        }
        fs
    }

    /// What the kernel granted: passthrough and direct I/O are used only where both the
    /// configuration and the kernel allow them.
    pub fn set_kernel_features(&self, features: KernelFeatures) {
        let config = self.cache.config();
        let passthrough = config.passthrough && features.passthrough;
        self.passthrough.store(passthrough, Ordering::Relaxed);
        let direct_io = config.direct_io_min_size > 0 && features.direct_io_mmap;
        self.direct_io.store(direct_io, Ordering::Relaxed);
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// Handles the kernel holds open: opened here, or carried over a restart and not yet
    /// read (handle 0 of `zero_message_opens` is not counted).
    pub fn open_handles(&self) -> usize {
        let handles = self.handles.lock();
        // `handles` before `adopted`, as everywhere.
        handles.len() + self.adopted.lock().len()
    }

    pub fn forget(&self, ino: u64, count: u64) {
        if self.inodes.forget(ino, count) {
            // Its handle closes when the last read in flight on it ends.
            let mut implicit = self.implicit.lock();
            let file = implicit.remove(&ino);
            crate::base::shrink_when_sparse(&mut implicit);
            drop(implicit);
            drop(file);
            self.carried_pages.lock().remove(&ino);
            // A handle journaled just before a crash, whose open never reached the kernel.
            self.adopted.lock().retain(|_, handle| handle.ino() != ino);
        }
    }

    /// Whether opens and closes send no message (the kernel keeps each file's page cache
    /// and serves hot files alone).
    pub fn zero_message_opens(&self) -> bool {
        self.open_mode.is_on()
    }

    /// The cache's cap and use, as a file system's size and free space.
    pub fn statfs(&self) -> FsStat {
        let (used, cap, objects) = self.cache.usage();
        FsStat {
            blocks: cap / 4096,
            free: cap.saturating_sub(used) / 4096,
            files: objects,
        }
    }

    /// `access(2)`: everything that exists may be read, nothing written.
    pub fn access(&self, ino: u64, wants_write: bool) -> FsResult<()> {
        if wants_write {
            return Err(FsError::ReadOnly);
        }
        self.node(ino).map(|_| ()).ok_or(FsError::Stale)
    }

    /// The mount root carries the control socket's path, for `ston-fs purge` to find.
    pub fn getxattr(&self, ino: u64, name: &std::ffi::OsStr, size: u32) -> FsResult<Xattr> {
        let socket = self.control_socket.get().filter(|_| ino == ROOT_INO);
        let socket = socket
            .filter(|_| name == SOCKET_XATTR)
            .ok_or(FsError::NoAttribute)?;
        let value = socket.as_os_str().as_encoded_bytes();
        match size {
            0 => Ok(Xattr::Size(value.len() as u32)),
            n if (n as usize) < value.len() => Err(FsError::BufferTooSmall),
            _ => Ok(Xattr::Data(value.to_vec())),
        }
    }

    /// No file has extended attributes of its own.
    pub fn listxattr(&self, size: u32) -> Xattr {
        match size {
            0 => Xattr::Size(0),
            _ => Xattr::Data(Vec::new()),
        }
    }

    /// Drops what the kernel cached of `ino` (a new version), from a thread of its own: the
    /// kernel may hold locks while it waits for this very daemon.
    fn invalidate_pages(&self, ino: u64) {
        let Some(kernel) = self.kernel.get().cloned() else {
            return;
        };
        self.runtime
            .spawn_blocking(move || kernel.invalidate_inode(ino));
    }

    /// Off the FUSE thread: the kernel takes the directory's lock for this, which a lookup
    /// waiting on this very thread may hold.
    fn invalidate_entry(&self, parent: u64, name: &str) {
        let Some(kernel) = self.kernel.get().cloned() else {
            return;
        };
        let name = name.to_string();
        self.runtime
            .spawn_blocking(move || kernel.invalidate_entry(parent, &name));
    }

    fn record(&self, op: Op, path: &str, bytes: u64, started: Instant, hit: bool) {
        self.cache
            .stats()
            .record_op(op, path, bytes, started.elapsed(), hit);
    }
}

/// A purged or expired file must not live on in the kernel: its pages and attributes go,
/// and so does its name's entry, so the next open looks it up and the next read asks.
impl InvalidationWatcher for StonFs {
    fn invalidated(&self, site: SiteId, covers: &dyn Fn(&str) -> bool) {
        let covered = self.inodes.matching(site, covers);
        let Some(kernel) = self.kernel.get().cloned().filter(|_| !covered.is_empty()) else {
            return;
        };
        // One task for them all, off the caller's thread (which may be a FUSE thread, for
        // `unlink`): the kernel may wait on this very daemon while it drops them.
        self.runtime.spawn_blocking(move || {
            for (ino, parent, name) in covered {
                kernel.invalidate_inode(ino);
                kernel.invalidate_entry(parent, &name);
            }
        });
    }
}
