//! Cutting an FLV clip with cache reads: the front, the start's key frame, then the clip's tags.

use std::sync::Arc;
use std::time::Instant;

use super::clip_error::ClipError;
use super::flv::{self, Head, HeadStep, Purpose, Tag, TagWalk};
use super::mp4::Presented;
use super::{Media, MediaView, Presentation, TrimSpan};
use crate::base::{FsError, FsResult};
use crate::cache::Object;

/// What a cut needs beyond the reads: a clip that cannot be made is the outer `Ok(Err)`.
type Cut<T> = FsResult<Result<T, ClipError>>;

impl Media {
    pub(super) async fn build_flv_clip(
        self: &Arc<Self>,
        object: &Arc<Object>,
        span: TrimSpan,
        deadline: Instant,
    ) -> FsResult<Presentation> {
        match self.cut_flv(object, span, deadline).await? {
            Ok(presented) => Ok(Presentation::View(MediaView::new(presented))),
            Err(e) => {
                let path = object.path();
                tracing::info!(%path, "no clip: not an FLV interval that can be cut: {e}");
                Err(FsError::NotFound)
            }
        }
    }

    async fn cut_flv(
        self: &Arc<Self>,
        object: &Arc<Object>,
        span: TrimSpan,
        deadline: Instant,
    ) -> Cut<Presented> {
        let head = match self.flv_head(object, deadline).await? {
            Ok(head) => head,
            Err(e) => return Ok(Err(e)),
        };
        let start = span.start.unwrap_or(0.0);
        let from = match self.flv_start(object, &head, start, deadline).await? {
            Some(from) => from,
            None => return Ok(Err(ClipError::Empty)),
        };
        let purpose = Purpose::Clip {
            end_ms: span.end.map(|end| (end * 1000.0).ceil() as u64),
            from_key: from != head.media_start,
        };
        let horizon = span
            .end
            .and_then(|end| flv::indexed_end(&head, end, object.size()));
        let walk = TagWalk::new(purpose, head.has_video(), from, object.size()).ending_by(horizon);
        let tags = match self.walk_flv(object, walk, deadline).await? {
            Ok(tags) => tags,
            Err(e) => return Ok(Err(e)),
        };
        let last_ms = tags.iter().map(|t| t.timestamp).max().unwrap_or(0);
        if f64::from(last_ms) < start * 1000.0 {
            let duration = f64::from(last_ms) / 1000.0;
            return Ok(Err(ClipError::StartPastEnd { start, duration }));
        }
        Ok(flv::assemble(&head, &tags))
    }

    /// The file's front: its first bytes, more when the metadata runs past them.
    async fn flv_head(self: &Arc<Self>, object: &Arc<Object>, deadline: Instant) -> Cut<Head> {
        let size = object.size();
        let mut len = size.min(flv::FIRST_READ);
        // Each step reads further, and a front never needs more than its bounded tags.
        for _ in 0..4 {
            let bytes = self.read_exactly(object, 0..len, deadline).await?;
            match flv::parse_head(&bytes, size) {
                HeadStep::Done(head) => return Ok(head),
                HeadStep::Need(more) => len = more.max(len),
            }
        }
        Ok(Err(ClipError::malformed("FLV: its front keeps growing")))
    }

    /// Where the clip starts: the media's start for a start of 0, else the key frame at or
    /// before `start` seconds, by the keyframe index or a walk from the media's start.
    async fn flv_start(
        self: &Arc<Self>,
        object: &Arc<Object>,
        head: &Head,
        start: f64,
        deadline: Instant,
    ) -> FsResult<Option<u64>> {
        if start <= 0.0 {
            return Ok(Some(head.media_start));
        }
        if let Some(from) = flv::indexed_start(head, start, object.size()) {
            return Ok(Some(from));
        }
        let purpose = Purpose::FindStart {
            at_ms: (start * 1000.0) as u64,
        };
        let walk = TagWalk::new(purpose, head.has_video(), head.media_start, object.size());
        let found = self.walk_flv(object, walk, deadline).await?;
        Ok(found
            .ok()
            .and_then(|tags| tags.first().map(|tag| tag.offset)))
    }

    async fn walk_flv(
        self: &Arc<Self>,
        object: &Arc<Object>,
        mut walk: TagWalk,
        deadline: Instant,
    ) -> Cut<Vec<Tag>> {
        // Each read walks at least one tag or ends the walk.
        while let Some(range) = walk.need() {
            let bytes = self.read_exactly(object, range.clone(), deadline).await?;
            if let Err(e) = walk.feed(range.start, &bytes) {
                return Ok(Err(e));
            }
        }
        Ok(Ok(walk.finish()))
    }
}
