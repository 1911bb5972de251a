//! Cutting an MP3 clip: the interval's frames (walked where the bitrate varies) behind a rewritten Xing frame.

use std::ops::Range;

use bytes::Bytes;

use super::frame::FrameHeader;
use super::stream::Stream;
use super::xing::{linear_toc, toc_of, ClipTag};
use crate::media::clip_error::ClipError;
use crate::media::mp4::{Presented, Segment};

/// Bytes read from an estimated frame start to find the frame: room for the chain of the
/// longest frames (1441 bytes) a sync needs, twice over.
pub const SYNC_WINDOW: u64 = 8 << 10;
/// Bytes read at once while walking a VBR clip's frames, at most; a walk reads what the
/// frames it still wants take at the stream's mean frame length, and a little more.
pub const WALK_CHUNK: u64 = 1 << 20;
const WALK_SLACK: u64 = 4 << 10;
/// Frames of a VBR clip walked at most (a frame offset each is kept for the seek table).
pub const MAX_WALKED_FRAMES: u64 = 1 << 20;

/// The frames of a clip: the original's bytes `range`, `frames` frames long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClipFrames {
    pub range: Range<u64>,
    pub frames: u64,
    /// Each frame's offset from the range's start, when they were walked.
    pub offsets: Vec<u64>,
}

/// The frame indices a clip of `[start, end)` seconds spans, or why it is empty.
pub fn frame_span(
    stream: &Stream,
    start: Option<f64>,
    end: Option<f64>,
) -> Result<Range<u64>, ClipError> {
    let total = stream.frame_count()?;
    let first = stream.frame_at(start.unwrap_or(0.0));
    if first >= total {
        return Err(ClipError::StartPastEnd {
            start: start.unwrap_or(0.0),
            duration: total as f64 * stream.frame_seconds(),
        });
    }
    let last = end.map_or(total, |end| {
        ((end / stream.frame_seconds()).ceil() as u64).min(total)
    });
    match last > first {
        true => Ok(first..last),
        false => Err(ClipError::Empty),
    }
}

/// Where the window to find frame `index` in starts: a little before the estimate, which
/// a constant bitrate's padding can put a byte after the frame's real start.
pub fn sync_window(stream: &Stream, index: u64, total: u64) -> Range<u64> {
    let from = stream
        .estimate(index, total)
        .saturating_sub(8)
        .max(stream.data_start);
    from..(from + SYNC_WINDOW).min(stream.audio_end)
}

/// The first frame of `stream` in `window` (read at `at`), as an absolute offset. A window
/// that runs to the audio's end and holds no whole run of frames (a file cut short in its
/// last frame) finds the end.
pub fn sync_in(stream: &Stream, at: u64, window: &[u8]) -> Result<u64, ClipError> {
    let at_end = at + window.len() as u64 >= stream.audio_end;
    match super::frame::find_sync(window, 0, &stream.header, at_end) {
        Some(found) => Ok(at + found as u64),
        None if at_end => Ok(stream.audio_end),
        None => Err(ClipError::malformed(format!(
            "MP3: no frame near byte {at}"
        ))),
    }
}

/// Walks a VBR clip's frames from `start`, chunk by chunk, until it has `wanted` of them or
/// the audio ends.
pub struct Walker {
    header: FrameHeader,
    start: u64,
    next: u64,
    audio_end: u64,
    wanted: u64,
    mean_frame_len: u64,
    offsets: Vec<u64>,
    stopped: bool,
}

impl Walker {
    /// A walk from `start`, the frame found for the first of `frames` (of `total`).
    pub fn new(
        stream: &Stream,
        start: u64,
        frames: &Range<u64>,
        total: u64,
    ) -> Result<Walker, ClipError> {
        // The seek table only approximates the start's index: a clip to the end walks there.
        let wanted = match frames.end >= total {
            true => MAX_WALKED_FRAMES,
            false => frames.end - frames.start,
        };
        ClipError::check(
            "MP3 frames walked for a VBR clip",
            wanted,
            MAX_WALKED_FRAMES,
        )?;
        Ok(Walker {
            header: stream.header,
            start,
            next: start,
            audio_end: stream.audio_end,
            wanted,
            mean_frame_len: stream.mean_frame_len(),
            offsets: Vec::new(),
            stopped: false,
        })
    }

    /// The next bytes to read, or `None` once the walk is over.
    pub fn need(&self) -> Option<Range<u64>> {
        let done = self.stopped || self.offsets.len() as u64 >= self.wanted;
        match done || self.next >= self.audio_end {
            true => None,
            false => {
                let left = self.wanted - self.offsets.len() as u64;
                let chunk = left
                    .saturating_mul(self.mean_frame_len)
                    .saturating_add(WALK_SLACK);
                let end = self.next + chunk.min(WALK_CHUNK);
                Some(self.next..end.min(self.audio_end))
            }
        }
    }

    /// Walks the frames whose headers are in `bytes`, read at `at` (= the last `need()`).
    /// Each call walks at least one frame or ends the walk.
    pub fn feed(&mut self, at: u64, bytes: &[u8]) {
        let chunk_end = at + bytes.len() as u64;
        while (self.offsets.len() as u64) < self.wanted {
            let Some(here) = self.next.checked_sub(at).map(|i| i as usize) else {
                self.stopped = true;
                return;
            };
            if here + 4 > bytes.len() {
                // A header cut by the chunk's end is read again with the next chunk.
                self.stopped |= chunk_end >= self.audio_end || here == 0;
                return;
            }
            let end = FrameHeader::parse(&bytes[here..])
                .filter(|header| header.same_stream(&self.header))
                .map(|header| self.next + header.frame_len() as u64)
                .filter(|&end| end <= self.audio_end);
            // A header that is not the stream's ends the clip at the last whole frame.
            let Some(end) = end else {
                self.stopped = true;
                return;
            };
            self.offsets.push(self.next - self.start);
            self.next = end;
        }
    }

    pub fn finish(self) -> Result<ClipFrames, ClipError> {
        if self.offsets.is_empty() {
            return Err(ClipError::Empty);
        }
        Ok(ClipFrames {
            range: self.start..self.next,
            frames: self.offsets.len() as u64,
            offsets: self.offsets,
        })
    }
}

/// The clip: the bytes before the first frame (the ID3v2 tag), the tag frame rewritten for
/// the clip when the original has one, then the clip's frames.
pub fn assemble(stream: &Stream, clip: &ClipFrames) -> Result<Presented, ClipError> {
    let mut segments = vec![Segment::Source {
        offset: 0,
        len: stream.first_frame,
    }];
    if let Some(tag) = &stream.tag {
        let tag_len = tag.frame.len() as u64;
        let audio_bytes = tag_len + (clip.range.end - clip.range.start);
        let bytes = u32::try_from(audio_bytes)
            .map_err(|_| ClipError::malformed("MP3: a clip over 4 GiB has no Xing tag"))?;
        let frames = u32::try_from(clip.frames)
            .map_err(|_| ClipError::malformed("MP3: frame count overflows"))?;
        let toc = match clip.offsets.is_empty() {
            true => linear_toc(),
            false => {
                let from_tag: Vec<u64> = clip.offsets.iter().map(|o| o + tag_len).collect();
                toc_of(&from_tag, audio_bytes)
            }
        };
        let rewritten = tag.for_clip(&ClipTag {
            frames,
            bytes,
            toc: &toc,
            keeps_first: clip.range.start == stream.data_start,
            keeps_last: clip.range.end == stream.audio_end,
        });
        segments.push(Segment::Synthetic(Bytes::from(rewritten)));
    }
    segments.push(Segment::Source {
        offset: clip.range.start,
        len: clip.range.end - clip.range.start,
    });
    Presented::new(segments).map_err(|e| ClipError::malformed(format!("MP3 clip: {e}")))
}
