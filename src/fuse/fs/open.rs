//! Opening and closing files: passthrough for wholly cached files, direct I/O for big cold
//! ones, the page cache for the rest.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::lookup::needs_origin;
use super::read::OpenFile;
use super::{Answer, StonFs};
use crate::base::stats::Op;
use crate::base::{FsError, FsResult, ObjectKind};
use crate::cache::{KeptRegistration, Object};
use crate::fuse::inodes::OpenMode;
use crate::fuse::passthrough::Backing;
use crate::media::MediaView;

/// Objects whose passthrough registration outlives their last close. Reopening one costs no
/// cache-file open or registration (a third of a warm small-file open on a VM); each pins one
/// open cache file in the kernel, a few KiB.
pub(super) const KEPT_BACKINGS: usize = 4096;

/// How the kernel is to read an opened file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenIo {
    /// Straight from the cache file, by backing id; the daemon never sees the reads.
    Passthrough { backing_id: u32 },
    /// Through the daemon: keeping the page cache across opens, or bypassing it.
    Cached { keep_cache: bool, direct_io: bool },
}

/// An open file handle and how it is served.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub fh: u64,
    pub io: OpenIo,
}

impl StonFs {
    /// Opens an inode read-only; `flags` are the open(2) flags. Any write access is EROFS.
    pub fn open(self: &Arc<Self>, ino: u64, flags: i32) -> Answer<Opened> {
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY
            || flags & (libc::O_TRUNC | libc::O_CREAT) != 0;
        if writes {
            return Answer::Now(Err(FsError::ReadOnly));
        }
        let Some(node) = self.node(ino) else {
            return Answer::Now(Err(FsError::Stale));
        };
        if node.is_directory() {
            return Answer::Now(Err(FsError::IsDirectory));
        }
        let started = Instant::now();
        let size = match (&node.object, &node.small) {
            (Some(object), _) => object.size(),
            (None, Some(small)) => small.size,
            (None, None) => u64::MAX,
        };
        if self.open_mode.note_open(size) {
            tracing::info!(
                "small files opened {} times a second: opens send the daemon nothing from now \
                 on (zero_message_opens=auto)",
                super::open_mode::SWITCH_OPENS_PER_SECOND
            );
        }
        if self.zero_message_opens() {
            // The kernel then opens every file without a message, keeping its page cache;
            // reads come per inode (see `read`). Not counted: this one message is how the
            // connection learns the setting, not a file served.
            return Answer::Now(Err(FsError::NotNeeded));
        }
        let node = self.with_object(ino, node);
        if let Some(object) = node.object.clone().filter(|_| !needs_origin(&node)) {
            let opened = self.finish_open(ino, object, node.view.clone());
            let hit = opened.as_ref().is_ok_and(|(_, from_cache)| *from_cache);
            self.record(Op::Open, &node.path, 0, started, hit);
            return Answer::Now(opened.map(|(opened, _)| opened));
        }
        let fs = self.clone();
        Answer::later(async move {
            let deadline = started + fs.cache.request_timeout();
            let answer = fs.fresh_node(ino, &node, deadline).await;
            fs.record(Op::Open, &node.path, 0, started, false);
            let node = answer?;
            // Without an object, the inode's small version left the cache while files read
            // it: this open cannot have it, and the name leads to the new one.
            let gone = match node.small {
                Some(_) => FsError::VersionChanged,
                None => FsError::NotFound,
            };
            let object = node.object.ok_or(gone)?;
            fs.finish_open(ino, object, node.view)
                .map(|(opened, _)| opened)
        })
    }

    /// Opens a resolved object, presented through `view` when it has one. Also says whether
    /// the open was served by the cache alone: a passthrough open consumes the file's blocks
    /// without the daemon seeing a read, so it is a miss if any of them had just come from
    /// the origin (fetched by the lookup, say).
    fn finish_open(
        &self,
        ino: u64,
        object: Arc<Object>,
        view: Option<MediaView>,
    ) -> FsResult<(Opened, bool)> {
        if object.kind() != ObjectKind::File {
            return Err(FsError::IsDirectory);
        }
        // Opening counts as use: it keeps the object at the recent end of the LRU.
        self.cache.touch(&object);
        let mode = self.begin_open(ino, &object, view.is_some())?;
        let (io, from_cache) = self.open_io(ino, &object, &mode);
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let backing_id = match io {
            OpenIo::Passthrough { backing_id } => backing_id,
            OpenIo::Cached { .. } => 0,
        };
        self.journal_handle(fh, ino, &object, view.as_ref(), backing_id);
        let passthrough = matches!(mode, OpenMode::Passthrough(_));
        let file = OpenFile::new(object.open_handle(), view, ino, passthrough);
        self.handles.lock().insert(fh, Arc::new(file));
        Ok((Opened { fh, io }, from_cache))
    }

    /// Counts the open on its inode, in passthrough when that is wanted and possible.
    fn begin_open(&self, ino: u64, object: &Arc<Object>, has_view: bool) -> FsResult<OpenMode> {
        // A view's bytes are not the cache file's: the kernel must never read that instead.
        let wanted = !has_view && self.passthrough_wanted(object);
        if wanted && self.journal().is_some() {
            // A process that takes the mount over frees the blocks it finds unrecorded when
            // it loads the cache: the kernel, reading this file directly, would read holes.
            object.record_now();
        }
        let mode = self
            .inodes
            .begin_open(ino, wanted, || self.register(object));
        if has_view && matches!(mode, OpenMode::Passthrough(_)) {
            // Another version of this name is open in passthrough, presented unchanged.
            self.inodes.end_open(ino, true);
            return Err(FsError::VersionChanged);
        }
        Ok(mode)
    }

    /// How the kernel reads an open in `mode`, and whether the open was served by the cache
    /// alone.
    fn open_io(&self, ino: u64, object: &Arc<Object>, mode: &OpenMode) -> (OpenIo, bool) {
        let path = object.path();
        match mode {
            // The kernel refuses FOPEN_KEEP_CACHE with passthrough: its page cache is unused.
            OpenMode::Passthrough(backing) => {
                tracing::debug!(ino, %path, "open: passthrough");
                let from_cache = !object.take_fresh(0..object.block_count());
                let io = OpenIo::Passthrough {
                    backing_id: backing.id(),
                };
                (io, from_cache)
            }
            OpenMode::Cached => {
                let direct_io = self.direct_io_wanted(object);
                match direct_io {
                    true => tracing::debug!(ino, %path, "open: direct I/O"),
                    false => tracing::debug!(ino, %path, "open: page cache"),
                }
                let io = OpenIo::Cached {
                    keep_cache: self.inodes.keep_page_cache(ino, object),
                    direct_io,
                };
                // A small file fetched whole by its lookup: the open carries the miss.
                (io, !object.fetched_unread())
            }
        }
    }

    /// The object's passthrough registration: kept with the object between opens (at most
    /// `KEPT_BACKINGS` objects keep one), made now if it has none.
    fn register(&self, object: &Arc<Object>) -> std::io::Result<Arc<dyn KeptRegistration>> {
        let backings = self
            .backings()
            .ok_or_else(|| std::io::Error::other("no passthrough on this connection"))?;
        let register = |file: &std::fs::File| -> std::io::Result<Arc<dyn KeptRegistration>> {
            Ok(Backing::register(backings, file)?)
        };
        let (backing, new) = object.keep_with(register)?;
        if new {
            let evicted: Vec<Arc<Object>> = {
                let mut kept = self.kept.lock();
                kept.push_back(Arc::downgrade(object));
                let excess = kept.len().saturating_sub(KEPT_BACKINGS);
                kept.drain(..excess).filter_map(|o| o.upgrade()).collect()
            };
            // After `kept` is released (a leaf lock): this takes each object's lock, and
            // closing a registration is a call into the kernel.
            for oldest in evicted {
                oldest.drop_kept();
            }
        }
        Ok(backing)
    }

    /// A big file still being fetched is read with direct I/O: its bytes then sit in memory
    /// once, in the cache file's page cache, not a second time in the FUSE file's. That is
    /// also a third fewer copies per byte on a cold read. Wholly cached files use passthrough
    /// (or the page cache where passthrough is off), so re-reads skip the daemon.
    fn direct_io_wanted(&self, object: &Object) -> bool {
        self.direct_io.load(Ordering::Relaxed)
            && object.size() >= self.cache.config().direct_io_min_size
            && !object.fully_cached()
    }

    /// Passthrough only for a whole, verified object: the kernel would read holes as zeros.
    /// A whole but not yet verified object is verified in the background for the next open.
    fn passthrough_wanted(&self, object: &Arc<Object>) -> bool {
        if !self.passthrough.load(Ordering::Relaxed) || object.size() == 0 {
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

    /// The kernel closed a handle.
    pub fn release(&self, fh: u64) {
        self.forget_journaled_handle(fh);
        let file = self.handles.lock().remove(&fh);
        match file {
            Some(file) => self.inodes.end_open(file.ino, file.passthrough),
            None => {
                self.release_adopted(fh);
            }
        }
    }
}
