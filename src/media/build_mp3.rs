//! Cutting an MP3 clip with cache reads: the tags, the first frame, then both ends computed or walked.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use super::clip_error::ClipError;
use super::mp3::{self, ClipFrames, Stream, Walker};
use super::mp4::Presented;
use super::{Media, MediaView, Presentation, TrimSpan};
use crate::base::{FsError, FsResult};
use crate::cache::Object;

/// What a cut needs beyond the reads: a clip that cannot be made is the outer `Ok(Err)`.
type Cut<T> = FsResult<Result<T, ClipError>>;

impl Media {
    pub(super) async fn build_mp3_clip(
        self: &Arc<Self>,
        object: &Arc<Object>,
        span: TrimSpan,
        deadline: Instant,
    ) -> FsResult<Presentation> {
        match self.cut_mp3(object, span, deadline).await? {
            Ok(presented) => Ok(Presentation::View(MediaView::new(presented))),
            Err(e) => {
                let path = object.path();
                tracing::info!(%path, "no clip: not an MP3 interval that can be cut: {e}");
                Err(FsError::NotFound)
            }
        }
    }

    async fn cut_mp3(
        self: &Arc<Self>,
        object: &Arc<Object>,
        span: TrimSpan,
        deadline: Instant,
    ) -> Cut<Presented> {
        let stream = match self.mp3_stream(object, deadline).await? {
            Ok(stream) => stream,
            Err(e) => return Ok(Err(e)),
        };
        let frames = match mp3::frame_span(&stream, span.start, span.end)
            .and_then(|frames| Ok((frames, stream.frame_count()?)))
        {
            Ok(frames) => frames,
            Err(e) => return Ok(Err(e)),
        };
        // Both kinds start at the first frame at or after the estimate for the start.
        let start = self.sync_mp3(object, &stream, frames.0.start, frames.1, deadline);
        let start = match start.await? {
            Ok(start) => start,
            Err(e) => return Ok(Err(e)),
        };
        let clip = match stream.is_vbr() {
            true => {
                self.walk_mp3(object, &stream, start, frames, deadline)
                    .await?
            }
            false => {
                self.compute_mp3(object, &stream, start, frames, deadline)
                    .await?
            }
        };
        Ok(clip.and_then(|clip| mp3::assemble(&stream, &clip)))
    }

    /// The stream: after the ID3v2 tag, before the ID3v1 tag, from its first frame.
    async fn mp3_stream(self: &Arc<Self>, object: &Arc<Object>, deadline: Instant) -> Cut<Stream> {
        let size = object.size();
        let head = self.read_exactly(object, 0..size.min(10), deadline).await?;
        let audio_start = mp3::id3v2_len(&head).unwrap_or(0);
        if audio_start >= size {
            return Ok(Err(ClipError::malformed(
                "MP3: the ID3v2 tag runs past the file",
            )));
        }
        let mut audio_end = size;
        if size - audio_start >= mp3::ID3V1_LEN {
            let tail = size - mp3::ID3V1_LEN..size;
            if mp3::is_id3v1(&self.read_exactly(object, tail.clone(), deadline).await?) {
                audio_end = tail.start;
            }
        }
        let mut found = Err(ClipError::malformed("MP3: no audio"));
        for window in mp3::FIRST_FRAME_WINDOWS {
            let window = audio_start..audio_end.min(audio_start + window);
            let bytes = self.read_exactly(object, window, deadline).await?;
            found = Stream::find(audio_start, &bytes, audio_end);
            if found.is_ok() {
                break;
            }
        }
        Ok(found)
    }

    /// The first frame at or after the estimate for frame `index`.
    async fn sync_mp3(
        self: &Arc<Self>,
        object: &Arc<Object>,
        stream: &Stream,
        index: u64,
        total: u64,
        deadline: Instant,
    ) -> Cut<u64> {
        let window = mp3::sync_window(stream, index, total);
        let bytes = self.read_exactly(object, window.clone(), deadline).await?;
        Ok(mp3::sync_in(stream, window.start, &bytes))
    }

    /// A constant-bitrate clip from `start`: the end computed, found within a small window.
    async fn compute_mp3(
        self: &Arc<Self>,
        object: &Arc<Object>,
        stream: &Stream,
        start: u64,
        (frames, total): (Range<u64>, u64),
        deadline: Instant,
    ) -> Cut<ClipFrames> {
        let end = match frames.end >= total {
            true => Ok(stream.audio_end),
            false => {
                self.sync_mp3(object, stream, frames.end, total, deadline)
                    .await?
            }
        };
        Ok(end.and_then(|end| match end > start {
            true => Ok(ClipFrames {
                range: start..end,
                frames: frames.end - frames.start,
                offsets: Vec::new(),
            }),
            false => Err(ClipError::Empty),
        }))
    }

    /// A VBR clip from `start` (found from the seek table): its frames walked and counted.
    async fn walk_mp3(
        self: &Arc<Self>,
        object: &Arc<Object>,
        stream: &Stream,
        start: u64,
        (frames, total): (Range<u64>, u64),
        deadline: Instant,
    ) -> Cut<ClipFrames> {
        let mut walker = match Walker::new(stream, start, &frames, total) {
            Ok(walker) => walker,
            Err(e) => return Ok(Err(e)),
        };
        // Each read walks at least one frame or ends the walk.
        while let Some(range) = walker.need() {
            let bytes = self.read_exactly(object, range.clone(), deadline).await?;
            walker.feed(range.start, &bytes);
        }
        Ok(walker.finish())
    }
}
