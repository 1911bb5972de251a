//! Building a presentation: walking the top-level boxes with cache reads (the first block,
//! then the moov range found from the box sizes), then moving the header to the front or
//! cutting a clip, off the I/O threads.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::mp4::{self, Layout, Limits, ScanStep, TopLevelScan};
use super::Media;
use super::{record, MediaRequest, MediaView, Presentation, TrimSpan};
use crate::base::{FsError, FsResult};
use crate::cache::Object;
use crate::config::MediaFormat;

/// The top-level layout of a file, and the last bytes read to find it (often the moov).
struct Scanned {
    layout: Layout,
    last: (u64, Bytes),
}

impl Media {
    /// The limits every file is held to, from `mp4_max_moov`.
    pub(super) fn media_limits(&self) -> Limits {
        Limits {
            max_moov_size: self.cache.config().media.max_moov,
            ..Limits::default()
        }
    }

    /// Builds how `object` is presented for `request`. Whole files: from the record kept with
    /// the object, else decided now and recorded. Clips: always cut afresh.
    pub(super) async fn build_presentation(
        self: &Arc<Self>,
        object: &Arc<Object>,
        request: &MediaRequest,
        deadline: Instant,
    ) -> FsResult<Presentation> {
        // Each build holds a whole moov and its rewrite in memory: only a few at once.
        let permit = self.builds.acquire();
        let _permit = match tokio::time::timeout_at(deadline.into(), permit).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(FsError::Io("media builds stopped".into())),
            Err(_) => return Err(FsError::Timeout),
        };
        let built = match request {
            MediaRequest::Faststart => self.build_whole(object, deadline).await,
            MediaRequest::Trim(span) => {
                match self.cache.config().media.format_of(&object.path()[..]) {
                    Some(MediaFormat::Mp3) => self.build_mp3_clip(object, *span, deadline).await,
                    Some(MediaFormat::Flv) => self.build_flv_clip(object, *span, deadline).await,
                    Some(MediaFormat::Mp4) | None => self.build_clip(object, *span, deadline).await,
                }
            }
        };
        drop(_permit);
        self.give_memory_back();
        built
    }

    /// A build of a big `moov` leaves tens of MB free in the allocator's arenas, which glibc
    /// keeps from the system unless asked. Once no build runs, at most once a second, ask.
    fn give_memory_back(&self) {
        const EVERY: std::time::Duration = std::time::Duration::from_secs(1);
        if self.builds.available_permits() < super::BUILDS_AT_ONCE {
            return;
        }
        {
            let mut trimmed_at = self.trimmed_at.lock();
            if trimmed_at.is_some_and(|at| at.elapsed() < EVERY) {
                return;
            }
            *trimmed_at = Some(Instant::now());
        }
        // SAFETY: malloc_trim only returns free memory of glibc's heap to the system.
        tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) });
    }

    async fn build_whole(
        self: &Arc<Self>,
        object: &Arc<Object>,
        deadline: Instant,
    ) -> FsResult<Presentation> {
        let limits = self.media_limits();
        if let Some(recorded) = self.recorded_presentation(object, &limits).await {
            return Ok(recorded);
        }
        let scanned = self.scan(object, &limits, deadline).await?;
        let path = object.path();
        let presentation = match &scanned.layout {
            Layout::MoovAtEnd { boxes, moov } => {
                let moov_bytes = self.moov_bytes(object, &scanned, moov, deadline).await?;
                let (boxes, moov, size) = (boxes.clone(), moov.clone(), object.size());
                let built =
                    off_thread(move || mp4::faststart(&boxes, moov, &moov_bytes, size, &limits))
                        .await?;
                match built {
                    Ok(presented) => Presentation::View(MediaView::new(presented)),
                    Err(e) => {
                        tracing::warn!(%path, "MP4 header stays at the end, served unchanged: {e}");
                        Presentation::Unchanged
                    }
                }
            }
            Layout::FastStart { .. } | Layout::Fragmented => Presentation::Unchanged,
            Layout::Unsupported(reason) => {
                tracing::warn!(%path, "not an MP4 that can be rewritten, served unchanged: {reason}");
                Presentation::Unchanged
            }
        };
        // Only a cost saved: without the record, the next mount decides again.
        if let Some(kept) = record::encode(object.version(), &presentation) {
            let keeper = object.clone();
            let _ = off_thread(move || keeper.save_view(&kept)).await;
        }
        Ok(presentation)
    }

    /// The presentation recorded with the object (after a restart, or once memory let it go).
    /// A record that fails any check is dropped with a log line and decided again.
    async fn recorded_presentation(
        &self,
        object: &Arc<Object>,
        limits: &Limits,
    ) -> Option<Presentation> {
        // A rewritten header grows by at most its chunk offset tables (stco to co64) and a
        // few 64-bit box headers: twice the moov is a generous bound for what we wrote.
        let max_len = limits
            .max_moov_size
            .saturating_mul(2)
            .saturating_add(64 << 10);
        let keeper = object.clone();
        let record = off_thread(move || keeper.load_view(max_len)).await.ok()??;
        match record::decode(&record, object.version(), limits) {
            Ok(presentation) => Some(presentation),
            Err(reason) => {
                let path = object.path();
                tracing::warn!(%path, "dropping the MP4 view record: {reason}");
                object.drop_view();
                None
            }
        }
    }

    async fn build_clip(
        self: &Arc<Self>,
        object: &Arc<Object>,
        span: TrimSpan,
        deadline: Instant,
    ) -> FsResult<Presentation> {
        let limits = self.media_limits();
        let scanned = self.scan(object, &limits, deadline).await?;
        let path = object.path();
        let (boxes, moov) = match &scanned.layout {
            Layout::FastStart { boxes, moov } | Layout::MoovAtEnd { boxes, moov } => {
                (boxes.clone(), moov.clone())
            }
            Layout::Fragmented => {
                tracing::info!(%path, "no clip: a fragmented MP4 cannot be trimmed");
                return Err(FsError::NotFound);
            }
            Layout::Unsupported(reason) => {
                tracing::info!(%path, "no clip: not an MP4 that can be trimmed: {reason}");
                return Err(FsError::NotFound);
            }
        };
        let moov_bytes = self.moov_bytes(object, &scanned, &moov, deadline).await?;
        let size = object.size();
        let built = off_thread(move || {
            mp4::trim(
                &boxes,
                moov,
                &moov_bytes,
                size,
                span.start,
                span.end,
                &limits,
            )
        })
        .await?;
        match built {
            Ok(presented) => Ok(Presentation::View(MediaView::new(presented))),
            Err(e) if e.is_empty_interval() => {
                tracing::info!(%path, "no clip: {e}");
                Err(FsError::NotFound)
            }
            Err(e) => {
                tracing::info!(%path, "no clip: not an MP4 that can be trimmed: {e}");
                Err(FsError::NotFound)
            }
        }
    }

    /// Walks the top-level boxes, reading only what the scan asks for: the first block (the
    /// probe brought it), then after an mdat the whole tail when it may be the moov.
    async fn scan(
        self: &Arc<Self>,
        object: &Arc<Object>,
        limits: &Limits,
        deadline: Instant,
    ) -> FsResult<Scanned> {
        let mut scan = TopLevelScan::new(object.size(), limits);
        let mut range = scan.first_request();
        // Every step reads past at least one more box header.
        for _ in 0..limits.max_top_level_boxes + 2 {
            let bytes = self.read_exactly(object, range.clone(), deadline).await?;
            let step = scan.feed(range.start, &bytes);
            let last = (range.start, bytes);
            match step {
                ScanStep::Need(next) => range = next,
                ScanStep::Done(layout) => return Ok(Scanned { layout, last }),
            }
        }
        Err(FsError::BadAnswer("MP4 scan did not end".into()))
    }

    /// The moov's bytes: from the scan's last read when it holds them, else read now.
    async fn moov_bytes(
        self: &Arc<Self>,
        object: &Arc<Object>,
        scanned: &Scanned,
        moov: &Range<u64>,
        deadline: Instant,
    ) -> FsResult<Bytes> {
        let (at, bytes) = &scanned.last;
        let end = at + bytes.len() as u64;
        if *at <= moov.start && moov.end <= end {
            let from = (moov.start - at) as usize;
            return Ok(bytes.slice(from..from + (moov.end - moov.start) as usize));
        }
        self.read_exactly(object, moov.clone(), deadline).await
    }

    /// Reads a range of the object, which must all exist.
    pub(super) async fn read_exactly(
        self: &Arc<Self>,
        object: &Arc<Object>,
        range: Range<u64>,
        deadline: Instant,
    ) -> FsResult<Bytes> {
        let (bytes, _) = self.cache.read(object, range.clone(), deadline).await?;
        if bytes.len() as u64 != range.end - range.start {
            return Err(FsError::BadAnswer("short read of a media file".into()));
        }
        Ok(bytes)
    }
}

/// Runs CPU-bound or disk work on the blocking pool, so it never holds an I/O thread.
pub(super) async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> FsResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| FsError::Io(format!("media work failed: {e}")))
}
