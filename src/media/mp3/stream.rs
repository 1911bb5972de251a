//! Where an MP3's audio is and how long it plays: seconds to frames to bytes.

use super::frame::{chains, FrameHeader};
use super::xing::XingTag;
use crate::media::clip_error::ClipError;

/// Frames in a stream at most: over a day of audio, and far past any real file.
const MAX_FRAMES: u64 = 1 << 24;

/// An MP3's audio: where it starts and ends, and its first frame.
#[derive(Clone, Debug)]
pub struct Stream {
    /// The first frame (the tag frame when there is one); everything before it is kept.
    pub first_frame: u64,
    pub header: FrameHeader,
    pub tag: Option<XingTag>,
    /// The first audio frame: after the tag frame, if any.
    pub data_start: u64,
    /// One past the audio's last byte: before an ID3v1 tag, if any.
    pub audio_end: u64,
}

impl Stream {
    /// The stream whose first frame is in `window`, which starts at `at` (after any ID3v2
    /// tag). The window bounds the search for the first frame.
    pub fn find(at: u64, window: &[u8], audio_end: u64) -> Result<Stream, ClipError> {
        let near_end = at + window.len() as u64 >= audio_end;
        let (offset, header) = (0..window.len())
            .find_map(|i| {
                let header = FrameHeader::parse(&window[i..])?;
                chains(window, i, &header, near_end).then_some((i, header))
            })
            .ok_or_else(|| ClipError::malformed("MP3: no run of Layer III frames at its start"))?;
        let frame = window.get(offset..offset + header.frame_len());
        let tag = frame.and_then(|frame| XingTag::parse(frame, &header));
        let first_frame = at + offset as u64;
        let data_start = match tag {
            Some(_) => first_frame + header.frame_len() as u64,
            None => first_frame,
        };
        if data_start >= audio_end {
            return Err(ClipError::malformed("MP3: no audio frames"));
        }
        Ok(Stream {
            first_frame,
            header,
            tag,
            data_start,
            audio_end,
        })
    }

    /// Whether frames must be walked to be counted: a VBR stream with a seek table.
    pub fn is_vbr(&self) -> bool {
        self.tag
            .as_ref()
            .is_some_and(|t| t.vbr && t.toc.is_some() && t.bytes.is_some() && t.frames.is_some())
    }

    /// Audio frames in the stream: the tag's count, else what the bitrate makes of its bytes.
    pub fn frame_count(&self) -> Result<u64, ClipError> {
        let counted = self.tag.as_ref().and_then(|t| t.frames).map(u64::from);
        let frames = counted.unwrap_or_else(|| {
            (self.audio_end - self.data_start)
                .saturating_mul(8 * u64::from(self.header.sample_rate))
                / self.bits_per_frame_times_rate()
        });
        ClipError::check("MP3 frame count", frames, MAX_FRAMES)?;
        Ok(frames)
    }

    /// A frame's mean length in bytes: by the tag's counts, else the first frame's.
    pub fn mean_frame_len(&self) -> u64 {
        let counted = self.tag.as_ref().and_then(|t| Some((t.bytes?, t.frames?)));
        match counted {
            Some((bytes, frames)) if frames > 0 => u64::from(bytes / frames).max(1),
            _ => self.header.frame_len() as u64,
        }
    }

    /// Seconds of one frame.
    pub fn frame_seconds(&self) -> f64 {
        f64::from(self.header.samples()) / f64::from(self.header.sample_rate)
    }

    /// The frame playing at `seconds`.
    pub fn frame_at(&self, seconds: f64) -> u64 {
        (seconds / self.frame_seconds()).floor().max(0.0) as u64
    }

    /// Where frame `index` starts, as an estimate to sync from: by the seek table when the
    /// stream is VBR, else exactly for a constant bitrate, to within the padding byte.
    pub fn estimate(&self, index: u64, frame_count: u64) -> u64 {
        if self.is_vbr() {
            let fraction = index as f64 / frame_count.max(1) as f64;
            if let Some(offset) = self.tag.as_ref().and_then(|t| t.seek(fraction)) {
                return (self.first_frame + offset).min(self.audio_end);
            }
        }
        let bytes = u128::from(index) * u128::from(self.bits_per_frame_times_rate())
            / (8 * u128::from(self.header.sample_rate));
        self.data_start
            .saturating_add(u64::try_from(bytes).unwrap_or(u64::MAX))
            .min(self.audio_end)
    }

    /// A frame's bits times the sample rate (samples × bitrate): an integer, where the
    /// frame's length in bytes is not.
    fn bits_per_frame_times_rate(&self) -> u64 {
        (u64::from(self.header.samples()) * u64::from(self.header.bitrate_kbps) * 1000).max(1)
    }
}
