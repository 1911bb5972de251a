//! FUSE adapter: kernel requests in, cache calls out, replies back.
//!
//! Hits are answered inline on the FUSE thread; anything that needs the origin is answered
//! later from a tokio task, so a slow origin never holds a FUSE thread. Handlers never panic.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, Notifier, OpenAccMode, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;

use crate::cache::{now_secs, Cache};
use crate::control::SOCKET_XATTR;
use crate::error::{FsError, FsResult};
use crate::inodes::{InodeTable, Node, OpenMode, ROOT_INO};
use crate::listing;
use crate::object::{Object, SiteId};
use crate::readahead::ReadAhead;
use crate::stats::Op;
use crate::store::ObjectKind;

/// Objects whose passthrough registration outlives their last close. Reopening one costs no
/// cache-file open or registration (a third of a warm small-file open on a VM); each pins one
/// open cache file in the kernel, a few KiB.
const KEPT_BACKINGS: usize = 4096;

/// Kernel attribute timeout when an object is served past its TTL (origin down).
const STALE_ATTR_TTL: Duration = Duration::from_secs(1);

/// One open file: the version it opened, how it is served, and its read-ahead state.
struct OpenFile {
    object: Arc<Object>,
    ino: u64,
    passthrough: bool,
    readahead: Mutex<ReadAhead>,
    /// The last read that failed for want of the origin. The kernel retries a failed page
    /// read at once, one page at a time; that retry gets the same answer instead of a second
    /// full deadline, so one `read()` waits at most one deadline.
    failed_read: Mutex<Option<(std::ops::Range<u64>, Instant)>>,
}

/// How soon after a failed read the kernel's retry of it arrives, at most.
const KERNEL_RETRY_WINDOW: Duration = Duration::from_secs(1);

impl OpenFile {
    /// Whether `range` is the kernel's immediate retry of the last failed read (asked once).
    fn is_retry_of_failure(&self, range: &std::ops::Range<u64>) -> bool {
        let mut failed = self.failed_read.lock();
        let retry = failed.as_ref().is_some_and(|(failed_range, at)| {
            at.elapsed() < KERNEL_RETRY_WINDOW
                && range.start < failed_range.end
                && failed_range.start < range.end
        });
        if retry {
            *failed = None;
        }
        retry
    }
}

/// State shared by the FUSE threads and the tasks that answer them later.
struct Core {
    cache: Arc<Cache>,
    inodes: InodeTable,
    handles: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_handle: AtomicU64,
    runtime: tokio::runtime::Handle,
    mounted_at: SystemTime,
    /// Configured, and granted by the kernel at INIT.
    passthrough: bool,
    /// Big cold files may be opened for direct I/O: configured, and the kernel lets programs
    /// mmap such files (without that, a shared mapping of them would fail with ENODEV).
    direct_io: bool,
    /// Objects that keep a passthrough registration between opens, oldest first.
    kept_backings: Mutex<std::collections::VecDeque<std::sync::Weak<Object>>>,
    /// The control socket's path, once it listens.
    control_socket: Arc<OnceLock<PathBuf>>,
    /// Set once the session exists; used to invalidate the kernel's page cache.
    notifier: Arc<OnceLock<Notifier>>,
}

pub struct StonFs {
    core: Arc<Core>,
}

impl StonFs {
    pub fn new(cache: Arc<Cache>, runtime: tokio::runtime::Handle) -> StonFs {
        let root_site = (!cache.config.origins.is_empty()).then_some(0);
        StonFs {
            core: Arc::new(Core {
                inodes: InodeTable::new(root_site),
                handles: Mutex::new(HashMap::new()),
                next_handle: AtomicU64::new(1),
                runtime,
                mounted_at: SystemTime::now(),
                passthrough: cache.config.passthrough,
                direct_io: cache.config.direct_io_min_size > 0,
                notifier: Arc::new(OnceLock::new()),
                control_socket: Arc::new(OnceLock::new()),
                kept_backings: Mutex::new(std::collections::VecDeque::new()),
                cache,
            }),
        }
    }
}

impl StonFs {
    /// Where the control socket's path goes once it listens.
    pub fn control_socket_slot(&self) -> Arc<OnceLock<PathBuf>> {
        self.core.control_socket.clone()
    }

    /// Where the session's notifier goes once the session exists.
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.core.notifier.clone()
    }
}

/// Sends directory entries from `offset` on, as many as fit.
fn fill_directory(mut reply: ReplyDirectory, entries: &[(u64, FileType, String)], offset: u64) {
    for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
        if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
            break;
        }
    }
    reply.ok();
}

/// File names that can never be sent to the origin as a path component.
fn component(name: &OsStr) -> Option<&str> {
    let name = name.to_str()?;
    (!name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0'))
        .then_some(name)
}

impl Core {
    fn ttl_of(&self, object: &Object) -> Duration {
        let ttl = object.fresh_for(now_secs());
        if ttl.is_zero() {
            STALE_ATTR_TTL
        } else {
            ttl
        }
    }

    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let config = &self.cache.config;
        let (kind, perm, nlink, size, mtime) = match &node.object {
            Some(object) if object.kind == ObjectKind::File => (
                FileType::RegularFile,
                0o444,
                1,
                object.version.size,
                object.mtime(),
            ),
            Some(object) => (
                FileType::Directory,
                0o555,
                2,
                0,
                UNIX_EPOCH + Duration::from_secs(object.fetched_at()),
            ),
            None => match &node.listed {
                Some(entry) if !entry.is_dir => (
                    FileType::RegularFile,
                    0o444,
                    1,
                    entry.size.unwrap_or(0),
                    entry.mtime().unwrap_or(self.mounted_at),
                ),
                Some(entry) => (
                    FileType::Directory,
                    0o555,
                    2,
                    0,
                    entry.mtime().unwrap_or(self.mounted_at),
                ),
                None => (FileType::Directory, 0o555, 2, 0, self.mounted_at),
            },
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm,
            nlink,
            uid: config.uid,
            gid: config.gid,
            rdev: 0,
            blksize: config.block_size.min(1 << 20) as u32,
            flags: 0,
        }
    }

    fn attr_ttl(&self, node: &Node) -> Duration {
        match &node.object {
            Some(object) => self.ttl_of(object),
            None => self.cache.config.ttl,
        }
    }

    /// Replies to a lookup. Not-found becomes a negative entry the kernel caches too.
    fn reply_entry(
        &self,
        parent: u64,
        name: &str,
        site: SiteId,
        path: Arc<str>,
        answer: FsResult<Arc<Object>>,
        reply: ReplyEntry,
    ) {
        match answer {
            Ok(object) => {
                let node = Node {
                    site: Some(site),
                    path,
                    object: Some(object),
                    listed: None,
                };
                let (ino, stale) = self.inodes.attach(parent, name, node.clone());
                if stale {
                    self.invalidate_pages(ino);
                }
                reply.entry(&self.attr_ttl(&node), &self.attr(ino, &node), Generation(0));
            }
            Err(FsError::NotFound) => {
                let node = Node {
                    site: Some(site),
                    path,
                    object: None,
                    listed: None,
                };
                let negative = self.cache.config.negative_ttl;
                reply.entry(&negative, &self.attr(0, &node), Generation(0));
            }
            Err(error) => reply.error(error.errno()),
        }
    }

    fn lookup_vhost(&self, name: &str, reply: ReplyEntry) {
        match self.cache.vhost_named(name) {
            Some(site) => {
                let node = Node {
                    site: Some(site),
                    path: Arc::from(""),
                    object: None,
                    listed: None,
                };
                let (ino, _) = self.inodes.attach(ROOT_INO, name, node.clone());
                reply.entry(
                    &self.cache.config.ttl,
                    &self.attr(ino, &node),
                    Generation(0),
                );
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    /// The node's object, revalidated when its TTL has run out.
    async fn fresh_object(
        self: &Arc<Self>,
        ino: u64,
        node: &Node,
        deadline: Instant,
    ) -> FsResult<Arc<Object>> {
        let Some(site) = node.site.filter(|_| !node.path.is_empty()) else {
            return Err(FsError::NotFound);
        };
        if let Some(object) = &node.object {
            if object.is_fresh(now_secs()) && !object.is_detached() {
                return Ok(object.clone());
            }
        }
        let object = self
            .cache
            .resolve(site, node.path.clone(), deadline)
            .await?;
        // A name first known from a listing may turn out another size: the kernel must drop
        // the listed attributes, or it would cut reads short at the listed size.
        let listed_differs = node.listed.as_ref().is_some_and(|e| {
            e.size != Some(object.version.size)
                || e.is_dir != (object.kind == ObjectKind::Directory)
        });
        if self.inodes.update_object(ino, &object) || listed_differs {
            self.invalidate_pages(ino);
        }
        Ok(object)
    }

    /// Answers a lookup from the parent's listing (or `dot_dir`), without the origin.
    fn reply_listed(
        &self,
        parent: u64,
        name: &str,
        site: SiteId,
        path: Arc<str>,
        entry: listing::Entry,
        reply: ReplyEntry,
    ) {
        let node = Node {
            site: Some(site),
            path,
            object: None,
            listed: Some(entry),
        };
        let (ino, _) = self.inodes.attach(parent, name, node.clone());
        reply.entry(
            &self.cache.config.ttl,
            &self.attr(ino, &node),
            Generation(0),
        );
    }

    /// What can be said of `name` without asking the origin: `dot_dir`, or a fresh listing
    /// of the parent that gives a directory, or a file with exact size and time.
    fn known_without_origin(
        &self,
        site: SiteId,
        parent_path: &str,
        name: &str,
    ) -> Option<listing::Entry> {
        if self.cache.config.dot_dir && !name.contains('.') {
            return Some(listing::Entry {
                name: name.to_string(),
                is_dir: true,
                size: None,
                mtime: None,
            });
        }
        self.cache
            .listed_entry(site, parent_path, name)
            .filter(|e| e.is_dir || (e.size.is_some() && e.mtime.is_some()))
    }

    /// Whether answering for this node needs the cache's resolver (and maybe the origin):
    /// its TTL ran out, or its object left the cache.
    fn needs_origin(&self, node: &Node) -> bool {
        node.object
            .as_ref()
            .is_some_and(|o| o.is_detached() || !o.is_fresh(now_secs()))
            && !node.path.is_empty()
    }

    fn finish_open(&self, ino: u64, object: Arc<Object>, reply: ReplyOpen) {
        if object.kind != ObjectKind::File {
            reply.error(Errno::EISDIR);
            return;
        }
        // Opening counts as use: it keeps the object at the recent end of the LRU.
        let _ = self.cache.index.get(&(object.site, object.path.clone()));
        let wanted = self.passthrough_wanted(&object);
        let mode = self.inodes.begin_open(ino, wanted, || {
            let (backing, new) = object.backing(|file| reply.open_backing(file))?;
            if new {
                self.bound_kept_backings(&object);
            }
            Ok(backing)
        });
        object.open_handle();
        let keep = self.inodes.keep_page_cache(ino, &object);
        // Nothing is ever written, so closing needs no FLUSH round trip.
        let flags = if self.direct_io_wanted(&object) {
            tracing::debug!(ino, path = %object.path, "open: direct I/O");
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH
        } else if keep {
            FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH
        } else {
            FopenFlags::FOPEN_NOFLUSH
        };
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let passthrough = matches!(mode, OpenMode::Passthrough(_));
        let file_path = object.path.clone();
        let file = OpenFile {
            object,
            ino,
            passthrough,
            readahead: Mutex::new(ReadAhead::default()),
            failed_read: Mutex::new(None),
        };
        self.handles.lock().insert(handle, Arc::new(file));
        match mode {
            OpenMode::Passthrough(backing) => {
                // The kernel refuses FOPEN_KEEP_CACHE with passthrough: its page cache is unused.
                tracing::debug!(ino, path = %file_path, "open: passthrough");
                reply.opened_passthrough(FileHandle(handle), FopenFlags::FOPEN_NOFLUSH, &backing);
            }
            OpenMode::Cached => reply.opened(FileHandle(handle), flags),
        }
    }

    /// Keeps at most `KEPT_BACKINGS` objects registered for passthrough between opens: each
    /// holds a file reference in the kernel (and the disk space of an evicted file).
    fn bound_kept_backings(&self, object: &Arc<Object>) {
        let mut kept = self.kept_backings.lock();
        kept.push_back(Arc::downgrade(object));
        while kept.len() > KEPT_BACKINGS {
            if let Some(oldest) = kept.pop_front().and_then(|o| o.upgrade()) {
                oldest.drop_backing();
            }
        }
    }

    /// A big file still being fetched is read with direct I/O: its bytes then sit in memory
    /// once, in the cache file's page cache, not a second time in the FUSE file's. That is
    /// also a third fewer copies per byte on a cold read. Wholly cached files use passthrough
    /// (or the page cache where passthrough is off), so re-reads skip the daemon.
    fn direct_io_wanted(&self, object: &Object) -> bool {
        self.direct_io
            && object.version.size >= self.cache.config.direct_io_min_size
            && !object.fully_cached()
    }

    /// Passthrough only for a whole, verified object: the kernel would read holes as zeros.
    /// A whole but not yet verified object is verified in the background for the next open.
    fn passthrough_wanted(&self, object: &Arc<Object>) -> bool {
        if !self.passthrough || object.version.size == 0 {
            return false;
        }
        if object.fully_verified() {
            return true;
        }
        if object.fully_cached() {
            let object = object.clone();
            self.runtime.spawn_blocking(move || object.verify_all());
        }
        false
    }

    /// The origin has a new version: drop the kernel's cached pages of the old one. Sent from
    /// a thread of its own, as the kernel may hold locks while it waits for this reply.
    fn invalidate_pages(&self, ino: u64) {
        let Some(notifier) = self.notifier.get().cloned() else {
            return;
        };
        self.runtime.spawn_blocking(move || {
            if let Err(e) = notifier.inval_inode(INodeNo(ino), 0, 0) {
                tracing::debug!(ino, "page cache invalidation: {e}");
            }
        });
    }

    /// Feeds the read to the file's sequential detector and prefetches what it asks for.
    fn read_ahead(&self, file: &OpenFile, range: &std::ops::Range<u64>) {
        let object = &file.object;
        let max_window = self.cache.config.readahead_max / object.block_size;
        if max_window == 0 {
            return;
        }
        let ahead = file.readahead.lock().on_read(
            range,
            object.block_size,
            max_window,
            object.block_count(),
        );
        if !ahead.is_empty() {
            self.cache.prefetch(object, ahead);
        }
    }

    fn record(&self, op: Op, path: &str, bytes: u64, started: Instant, hit: bool) {
        self.cache
            .stats
            .record_op(op, path, bytes, started.elapsed(), hit);
    }

    fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(task);
    }
}

impl Filesystem for StonFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for wanted in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_MAX_PAGES,
        ] {
            if config.add_capabilities(wanted).is_err() {
                tracing::debug!("kernel lacks {wanted:?}");
            }
        }
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        let Some(core) = Arc::get_mut(&mut self.core) else {
            return Ok(());
        };
        if core.direct_io {
            // Kernel >= 6.6: programs may mmap files opened for direct I/O.
            core.direct_io = config
                .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
                .is_ok();
            if !core.direct_io {
                tracing::info!(
                    "kernel cannot mmap direct-I/O files; every open uses the page cache"
                );
            }
        }
        if core.passthrough {
            // The cache files live on an ordinary file system: one level of stacking.
            let granted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            if !granted {
                tracing::info!(
                    "kernel has no FUSE passthrough; every read goes through the daemon"
                );
            }
            core.passthrough = granted;
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let core = &self.core;
        let (Some(parent_node), Some(name)) = (core.inodes.get(parent.0), component(name)) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let Some(site) = parent_node.site else {
            core.lookup_vhost(name, reply);
            return;
        };
        if !parent_node.is_directory() {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let started = Instant::now();
        let path: Arc<str> = format!("{}/{}", parent_node.path, name).into();
        if let Some(answer) = core.cache.lookup_fresh(site, &path) {
            core.record(Op::Lookup, &path, 0, started, true);
            core.reply_entry(parent.0, name, site, path, answer, reply);
            return;
        }
        if let Some(entry) = core.known_without_origin(site, &parent_node.path, name) {
            core.record(Op::Lookup, &path, 0, started, true);
            core.reply_listed(parent.0, name, site, path, entry, reply);
            return;
        }
        let core = self.core.clone();
        let name = name.to_string();
        self.core.spawn(async move {
            let deadline = started + core.cache.request_timeout();
            let answer = core.cache.resolve(site, path.clone(), deadline).await;
            core.record(Op::Lookup, &path, 0, started, false);
            core.reply_entry(parent.0, &name, site, path, answer, reply);
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let Some(node) = self.core.inodes.get(ino.0) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let started = Instant::now();
        if !self.core.needs_origin(&node) {
            self.core.record(Op::Attr, &node.path, 0, started, true);
            reply.attr(&self.core.attr_ttl(&node), &self.core.attr(ino.0, &node));
            return;
        }
        let core = self.core.clone();
        self.core.spawn(async move {
            let deadline = started + core.cache.request_timeout();
            let answer = core.fresh_object(ino.0, &node, deadline).await;
            core.record(Op::Attr, &node.path, 0, started, false);
            match answer {
                Ok(object) => {
                    let node = Node {
                        object: Some(object),
                        ..node
                    };
                    reply.attr(&core.attr_ttl(&node), &core.attr(ino.0, &node));
                }
                Err(error) => reply.error(error.errno()),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let writes = flags.acc_mode() != OpenAccMode::O_RDONLY
            || flags.0 & (libc::O_TRUNC | libc::O_CREAT) != 0;
        if writes {
            reply.error(Errno::EROFS);
            return;
        }
        let Some(node) = self.core.inodes.get(ino.0) else {
            reply.error(Errno::ENOENT);
            return;
        };
        if node.is_directory() {
            reply.error(Errno::EISDIR);
            return;
        }
        let started = Instant::now();
        if !self.core.needs_origin(&node) {
            if let Some(object) = node.object {
                self.core.record(Op::Open, &node.path, 0, started, true);
                self.core.finish_open(ino.0, object, reply);
                return;
            }
        }
        let core = self.core.clone();
        self.core.spawn(async move {
            let deadline = started + core.cache.request_timeout();
            let answer = core.fresh_object(ino.0, &node, deadline).await;
            core.record(Op::Open, &node.path, 0, started, false);
            match answer {
                Ok(object) => core.finish_open(ino.0, object, reply),
                Err(error) => reply.error(error.errno()),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(file) = self.core.handles.lock().get(&fh.0).cloned() else {
            reply.error(Errno::EBADF);
            return;
        };
        let object = file.object.clone();
        let started = Instant::now();
        let range = offset..offset.saturating_add(u64::from(size));
        if file.is_retry_of_failure(&range) {
            reply.error(Errno::EIO);
            return;
        }
        self.core.read_ahead(&file, &range);
        if let Some(Ok((data, hit))) = object.read_cached(range.clone()) {
            self.core
                .record(Op::Read, &object.path, data.len() as u64, started, hit);
            reply.data(&data);
            return;
        }
        let core = self.core.clone();
        self.core.spawn(async move {
            let deadline = started + core.cache.request_timeout();
            match core.cache.read(&object, range.clone(), deadline).await {
                Ok((data, hit)) => {
                    core.record(Op::Read, &object.path, data.len() as u64, started, hit);
                    reply.data(&data);
                }
                Err(error) => {
                    tracing::debug!(path = %object.path, offset = range.start, "read failed: {error}");
                    *file.failed_read.lock() = Some((range, Instant::now()));
                    reply.error(error.errno())
                }
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(file) = self.core.handles.lock().remove(&fh.0) {
            file.object.close_handle();
            self.core.inodes.end_open(file.ino, file.passthrough);
        }
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok(); // nothing is ever written, so there is nothing to flush
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.core.inodes.get(ino.0) {
            Some(node) if node.is_directory() => reply.opened(FileHandle(0), FopenFlags::empty()),
            Some(_) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let Some(node) = self.core.inodes.get(ino.0) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let mut entries: Vec<(u64, FileType, String)> = vec![
            (ino.0, FileType::Directory, ".".into()),
            (ROOT_INO, FileType::Directory, "..".into()),
        ];
        let Some(site) = node.site else {
            // The virtual-host root lists its hosts; inode numbers come with their lookups.
            for site in self.core.cache.sites() {
                entries.push((u64::MAX, FileType::Directory, site.name.clone()));
            }
            fill_directory(reply, &entries, offset);
            return;
        };
        let core = self.core.clone();
        self.core.spawn(async move {
            for entry in core.cache.listing(site, &node.path).await.iter() {
                let kind = if entry.is_dir {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                entries.push((u64::MAX, kind, entry.name.clone()));
            }
            fill_directory(reply, &entries, offset);
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let index = &self.core.cache.index;
        let blocks = index.cap() / 4096;
        let free = index.cap().saturating_sub(index.used()) / 4096;
        reply.statfs(
            blocks,
            free,
            free,
            index.object_count() as u64,
            u64::MAX / 2,
            4096,
            255,
            4096,
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if mask.contains(AccessFlags::W_OK) {
            reply.error(Errno::EROFS);
        } else if self.core.inodes.get(ino.0).is_some() {
            reply.ok();
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    /// The mount root carries the control socket's path, for `ston-fs purge` to find.
    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let socket = self.core.control_socket.get().filter(|_| ino.0 == ROOT_INO);
        let Some(socket) = socket.filter(|_| name == SOCKET_XATTR) else {
            reply.error(Errno::ENODATA);
            return;
        };
        let value = socket.as_os_str().as_encoded_bytes();
        match size {
            0 => reply.size(value.len() as u32),
            n if (n as usize) < value.len() => reply.error(Errno::ERANGE),
            _ => reply.data(value),
        }
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    // Everything that would change the tree is refused: the origin is the only writer.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    /// Unlinking a cached file invalidates it (the configured `unlink` action); the origin
    /// still has the file, so it stays visible and the next read fetches or revalidates.
    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let core = &self.core;
        let parent_node = core.inodes.get(parent.0);
        let (Some(parent_node), Some(name)) = (parent_node, component(name)) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let Some(site) = parent_node.site else {
            reply.error(Errno::EROFS);
            return;
        };
        let path = format!("{}/{}", parent_node.path, name);
        core.cache.invalidate(site, &path, core.cache.config.unlink);
        reply.ok();
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
}
