//! Reads: from verified cached blocks on the FUSE thread, else through the cache from the
//! origin, with read-ahead for sequential readers.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use super::{Answer, StonFs};
use crate::base::stats::Op;
use crate::base::FsError;
use crate::cache::{Object, ReadAhead};

/// How soon after a failed read the kernel's retry of it arrives, at most.
const KERNEL_RETRY_WINDOW: Duration = Duration::from_secs(1);

/// One open file: the version it opened, how it is served, and its read-ahead state.
pub(super) struct OpenFile {
    pub(super) object: Arc<Object>,
    pub(super) ino: u64,
    pub(super) passthrough: bool,
    pub(super) readahead: Mutex<ReadAhead>,
    /// The last read that failed for want of the origin. The kernel retries a failed page
    /// read at once, one page at a time; that retry gets the same answer instead of a second
    /// full deadline, so one `read()` waits at most one deadline.
    pub(super) failed_read: Mutex<Option<(Range<u64>, Instant)>>,
}

impl OpenFile {
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
    /// Reads `size` bytes at `offset` of an open handle.
    pub fn read(self: &Arc<Self>, fh: u64, offset: u64, size: u32) -> Answer<Bytes> {
        let Some(file) = self.handles.lock().get(&fh).cloned() else {
            return self.read_adopted(fh, offset, size);
        };
        let started = Instant::now();
        let range = offset..offset.saturating_add(u64::from(size));
        if file.is_retry_of_failure(&range) {
            return Answer::Now(Err(FsError::Timeout));
        }
        self.read_ahead(&file, &range);
        let object = file.object.clone();
        if let Some(Ok((data, hit))) = object.read_cached(range.clone()) {
            self.record(Op::Read, object.path(), data.len() as u64, started, hit);
            return Answer::Now(Ok(Bytes::from(data)));
        }
        let fs = self.clone();
        Answer::later(async move {
            let deadline = started + fs.cache.request_timeout();
            match fs.cache.read(&object, range.clone(), deadline).await {
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
    fn read_ahead(&self, file: &OpenFile, range: &Range<u64>) {
        let object = &file.object;
        let max_window = self.cache.config().readahead_max / object.block_size();
        if max_window == 0 {
            return;
        }
        let ahead = file.readahead.lock().on_read(
            range,
            object.block_size(),
            max_window,
            object.block_count(),
        );
        if !ahead.is_empty() {
            self.cache.prefetch(object, ahead);
        }
    }
}
