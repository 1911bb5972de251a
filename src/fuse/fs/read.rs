//! Reads: from verified cached blocks on the FUSE thread, else through the cache from the
//! origin, with read-ahead for sequential readers. A media file presented through a view
//! (a rewritten header, a clip) is read through it.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use super::lookup::needs_origin;
use super::{Answer, StonFs};
use crate::base::stats::Op;
use crate::base::FsError;
use crate::cache::{Object, OpenHandle, ReadAhead, SmallTag};
use crate::fuse::inodes::Node;
use crate::media::MediaView;

/// How soon after a failed read the kernel's retry of it arrives, at most.
const KERNEL_RETRY_WINDOW: Duration = Duration::from_secs(1);

/// One open file: the version it opened, how it is served, and its read-ahead state.
pub(super) struct OpenFile {
    /// The version it opened, counted open while this file lives.
    handle: OpenHandle,
    /// How the file is presented when not byte for byte as the object.
    pub(super) view: Option<MediaView>,
    pub(super) ino: u64,
    pub(super) passthrough: bool,
    pub(super) readahead: Mutex<ReadAhead>,
    /// The last read that failed for want of the origin. The kernel retries a failed page
    /// read at once, one page at a time; that retry gets the same answer instead of a second
    /// full deadline, so one `read()` waits at most one deadline.
    pub(super) failed_read: Mutex<Option<(Range<u64>, Instant)>>,
}

impl OpenFile {
    pub(super) fn new(
        handle: OpenHandle,
        view: Option<MediaView>,
        ino: u64,
        passthrough: bool,
    ) -> OpenFile {
        OpenFile {
            handle,
            view,
            ino,
            passthrough,
            readahead: Mutex::new(ReadAhead::default()),
            failed_read: Mutex::new(None),
        }
    }

    pub(super) fn object(&self) -> &Arc<Object> {
        self.handle.object()
    }

    /// Whether `range` is the kernel's immediate retry of the last failed read (asked once).
    fn is_retry_of_failure(&self, range: &Range<u64>) -> bool {
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

impl StonFs {
    /// Reads `size` bytes at `offset` of an open handle (handle 0: of inode `ino`, opened
    /// without a message).
    pub fn read(self: &Arc<Self>, ino: u64, fh: u64, offset: u64, size: u32) -> Answer<Bytes> {
        // Handle 0 is never handed out: the kernel sends it for files it opened without a
        // message, which it keeps doing after a restart even if the new configuration
        // would not have asked for that.
        if fh == 0 {
            return self.read_inode(ino, offset, size);
        }
        let Some(file) = self.handles.lock().get(&fh).cloned() else {
            return self.read_adopted(fh, offset, size);
        };
        self.read_open_file(file, offset, size)
    }

    /// A read of a file the kernel opened without telling the daemon: served from the
    /// inode's current version, resolved first if the inode has none yet.
    fn read_inode(self: &Arc<Self>, ino: u64, offset: u64, size: u32) -> Answer<Bytes> {
        if let Some(answer) = self.read_carried(ino, offset, size) {
            return answer;
        }
        let Some(node) = self.node(ino) else {
            return Answer::Now(Err(FsError::Stale));
        };
        if let Some(file) = self
            .implicit_handle(ino, &node)
            .filter(|_| !needs_origin(&node))
        {
            return self.read_open_file(file, offset, size);
        }
        let fs = self.clone();
        Answer::later(async move {
            let deadline = Instant::now() + fs.cache.request_timeout();
            let fresh = fs.fresh_node(ino, &node, deadline).await?;
            // Resolved, yet nothing to read: the inode's version left the cache for another.
            let file = fs
                .implicit_handle(ino, &fresh)
                .ok_or(FsError::VersionChanged)?;
            match fs.read_open_file(file, offset, size) {
                Answer::Now(result) => result,
                Answer::Later(read) => read.await,
            }
        })
    }

    /// Whether the kernel may hold pages of `ino` read without a handle, whose version the
    /// inode must then keep: a new version goes to a new inode.
    pub(super) fn pages_in_use(&self, ino: u64) -> bool {
        self.implicit.lock().contains_key(&ino) || self.carried_pages.lock().contains_key(&ino)
    }

    /// The per-inode handle of `zero_message_opens`, for the inode's version (and its view),
    /// which it keeps while this handle reads it (see `InodeTable::update_object`); `None`
    /// while the inode has no resolved object.
    fn implicit_handle(&self, ino: u64, node: &Node) -> Option<Arc<OpenFile>> {
        let kept = self.implicit.lock().get(&ino).cloned();
        match kept {
            Some(Implicit::File(file)) if node.shows(file.object()) => return Some(file),
            Some(Implicit::Small(tag)) if small_tag_of(node) == Some(tag) => {
                let object = self.with_object(ino, node.clone()).object?;
                return Some(Arc::new(unpinned_file(&object, None, ino)));
            }
            _ => {}
        }
        // Outside the lock: a small file's object may be read back from its record.
        let node = self.with_object(ino, node.clone());
        let object = node.object.clone()?;
        let file = Arc::new(unpinned_file(&object, node.view.clone(), ino));
        let kept = match (object.small_tag(), &node.view) {
            (Some(tag), None) => Implicit::Small(tag),
            _ => Implicit::File(file.clone()),
        };
        // Journaled before the read that gives the kernel pages of this version.
        self.journal_pages(ino, &object, node.view.as_ref());
        let replaced = self.implicit.lock().insert(ino, kept);
        // The kernel keeps a file's pages across opens it is not told of: pages of another
        // version must go. An inode carried over a restart has none left that this process
        // did not prove (see `restore::CarriedPages`); a new inode number never had any.
        let other_pages = replaced.as_ref().is_some_and(|old| !old.holds(&object));
        // The replaced file's handle closes when its last in-flight read ends.
        drop(replaced);
        if other_pages {
            self.invalidate_pages(ino);
        }
        Some(file)
    }

    fn read_open_file(
        self: &Arc<Self>,
        file: Arc<OpenFile>,
        offset: u64,
        size: u32,
    ) -> Answer<Bytes> {
        let started = Instant::now();
        let range = offset..offset.saturating_add(u64::from(size));
        if file.is_retry_of_failure(&range) {
            return Answer::Now(Err(FsError::Timeout));
        }
        self.read_ahead(&file, &range);
        let object = file.object().clone();
        let cached = match &file.view {
            None => object
                .read_cached(range.clone())
                .map(|read| read.map(|(data, hit)| (Bytes::from(data), hit))),
            Some(view) => self.media.read_view_cached(&object, view, range.clone()),
        };
        if let Some(Ok((data, hit))) = cached {
            self.record(Op::Read, object.path(), data.len() as u64, started, hit);
            return Answer::Now(Ok(data));
        }
        let fs = self.clone();
        Answer::later(async move {
            let deadline = started + fs.cache.request_timeout();
            let read = match &file.view {
                None => fs.cache.read(&object, range.clone(), deadline).await,
                Some(view) => {
                    let read = fs.media.read_view(&object, view, range.clone(), deadline);
                    read.await
                }
            };
            match read {
                Ok((data, hit)) => {
                    fs.record(Op::Read, object.path(), data.len() as u64, started, hit);
                    Ok(data)
                }
                Err(error) => {
                    let path = object.path();
                    tracing::debug!(%path, offset = range.start, "read failed: {error}");
                    *file.failed_read.lock() = Some((range, Instant::now()));
                    Err(error)
                }
            }
        })
    }

    /// Feeds the read to the file's sequential detector and prefetches what it asks for.
    /// A view's reads count where their bytes lie in the original, and never prefetch past
    /// what the view shows; reads of its rewritten header are not counted.
    fn read_ahead(&self, file: &OpenFile, range: &Range<u64>) {
        let object = file.object();
        let max_window = self.cache.config().readahead_max / object.block_size();
        if max_window == 0 {
            return;
        }
        let (range, block_count) = match &file.view {
            None => (range.clone(), object.block_count()),
            Some(view) => match view.source_span(range.clone()) {
                Some(span) => (span, view.source_extent().div_ceil(object.block_size())),
                None => return,
            },
        };
        let ahead =
            file.readahead
                .lock()
                .on_read(&range, object.block_size(), max_window, block_count);
        if !ahead.is_empty() {
            self.cache.prefetch(object, ahead);
        }
    }
}

/// What handle 0 of an inode reads through (`zero_message_opens`), kept until the kernel
/// forgets the inode.
#[derive(Clone)]
pub(super) enum Implicit {
    /// A large file's, or a presented view's: kept, with its read-ahead and held cache file.
    File(Arc<OpenFile>),
    /// A small file's version only: an inode the kernel keeps then costs no object, and a
    /// read (one per fill of the kernel's pages) rebuilds it from its record.
    Small(SmallTag),
}

impl Implicit {
    /// Whether this handle reads `object`'s bytes.
    fn holds(&self, object: &Arc<Object>) -> bool {
        match self {
            Implicit::File(file) => file.object().holds_same_bytes_as(object),
            Implicit::Small(tag) => object.small_tag() == Some(*tag),
        }
    }
}

/// A handle 0 of `object` that pins nothing (see [`Object::open_handle_unpinned`]).
pub(super) fn unpinned_file(object: &Arc<Object>, view: Option<MediaView>, ino: u64) -> OpenFile {
    OpenFile::new(object.open_handle_unpinned(), view, ino, false)
}

fn small_tag_of(node: &Node) -> Option<SmallTag> {
    let held = node.object.as_ref().and_then(|object| object.small_tag());
    held.or_else(|| node.small.map(|small| small.tag))
}
