//! Walking FLV tags chunk by chunk: to the start's key frame without an index, and over a clip to its end.

use std::ops::Range;

use super::tag::{Tag, AUDIO, TAG_HEADER_LEN, TAG_PEEK_LEN};
use crate::media::clip_error::ClipError;

/// Bytes read at once while walking: the first read, then twice the last, to at most
/// `WALK_CHUNK`, so a short clip reads little past its end and a long one reads in big steps.
const FIRST_CHUNK: u64 = 32 << 10;
pub const WALK_CHUNK: u64 = 1 << 20;
/// Bytes scanned for the start's key frame without a keyframe index.
pub const MAX_START_SCAN: u64 = 256 << 20;
/// Tags in one clip (each becomes a rewritten header in memory).
pub const MAX_CLIP_TAGS: u64 = 1 << 19;

/// What a walk is for.
#[derive(Clone, Copy, Debug)]
pub enum Purpose {
    /// The last point to start playing from at or before `at_ms`.
    FindStart { at_ms: u64 },
    /// Every tag from the first, up to (not including) the first at or after `end_ms`;
    /// the first must be a point to start playing from when `from_key`.
    Clip { end_ms: Option<u64>, from_key: bool },
}

/// A walk over tags from one offset.
pub struct TagWalk {
    purpose: Purpose,
    has_video: bool,
    from: u64,
    next: u64,
    size: u64,
    tags: Vec<Tag>,
    stopped: bool,
    chunk: u64,
    /// Where the walk is known to end, at the latest: reads go there at once.
    horizon: Option<u64>,
}

impl TagWalk {
    pub fn new(purpose: Purpose, has_video: bool, from: u64, size: u64) -> TagWalk {
        TagWalk {
            purpose,
            has_video,
            from,
            next: from,
            size,
            tags: Vec::new(),
            stopped: false,
            chunk: FIRST_CHUNK,
            horizon: None,
        }
    }

    /// A walk that will end by `horizon` (the header of a tag past its end, from the
    /// keyframe index): it reads up to there in one step, then as usual.
    pub fn ending_by(mut self, horizon: Option<u64>) -> TagWalk {
        self.horizon = horizon.map(|h| h.saturating_add(TAG_PEEK_LEN as u64));
        self
    }

    /// The next bytes to read, or `None` once the walk is over.
    pub fn need(&self) -> Option<Range<u64>> {
        match self.stopped || self.next + TAG_HEADER_LEN > self.size {
            true => None,
            false => {
                let end = match self.horizon {
                    Some(horizon) if horizon > self.next + TAG_PEEK_LEN as u64 => {
                        horizon.min(self.next + WALK_CHUNK)
                    }
                    _ => self.next + self.chunk,
                };
                Some(self.next..end.min(self.size))
            }
        }
    }

    /// Whether playing can start at `tag`: a video key frame, or audio in a file without video.
    fn starts_here(&self, tag: &Tag) -> bool {
        !tag.sequence_header
            && match self.has_video {
                true => tag.video_key,
                false => tag.kind == AUDIO,
            }
    }

    /// Walks the tags whose headers are in `bytes`, read at `at` (= the last `need()`).
    /// Each call walks at least one tag or ends the walk.
    pub fn feed(&mut self, at: u64, bytes: &[u8]) -> Result<(), ClipError> {
        self.chunk = (self.chunk * 2).min(WALK_CHUNK);
        let chunk_end = at + bytes.len() as u64;
        while !self.stopped {
            let here = (self.next - at) as usize;
            let whole_peek = here + TAG_PEEK_LEN <= bytes.len();
            let last_peek = chunk_end >= self.size && here + TAG_HEADER_LEN as usize <= bytes.len();
            if !(whole_peek || last_peek) {
                // A header cut by the chunk's end is read again with the next chunk.
                self.stopped |= here == 0;
                return Ok(());
            }
            // A bad tag or one cut by the file's end ends the walk at the last whole tag.
            let tag = Tag::parse(&bytes[here..], self.next).filter(|t| t.next() <= self.size);
            let Some(tag) = tag else {
                self.stopped = true;
                return Ok(());
            };
            self.take(tag)?;
            self.next = tag.next();
        }
        Ok(())
    }

    fn take(&mut self, tag: Tag) -> Result<(), ClipError> {
        match self.purpose {
            Purpose::FindStart { at_ms } => {
                if u64::from(tag.timestamp) > at_ms && !self.tags.is_empty() {
                    self.stopped = true;
                } else if self.starts_here(&tag) {
                    self.tags = vec![tag];
                }
                self.stopped |= tag.next() - self.from > MAX_START_SCAN;
            }
            Purpose::Clip { end_ms, from_key } => {
                if self.tags.is_empty() && from_key && !self.starts_here(&tag) {
                    return Err(ClipError::malformed(
                        "FLV: the clip's first tag is no key frame",
                    ));
                }
                if end_ms.is_some_and(|end| u64::from(tag.timestamp) >= end) {
                    self.stopped = true;
                    return Ok(());
                }
                self.tags.push(tag);
                ClipError::check("FLV tags in a clip", self.tags.len() as u64, MAX_CLIP_TAGS)?;
            }
        }
        Ok(())
    }

    /// FindStart: the tag to start from. Clip: the clip's tags.
    pub fn finish(self) -> Vec<Tag> {
        self.tags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tags of `kinds` (video key, video, audio) every 40 ms, from offset 13.
    fn file(kinds: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; 13];
        for (i, &kind) in kinds.iter().enumerate() {
            let ts = (i as u32 * 40).to_be_bytes();
            let (tag, first) = match kind {
                b'K' => (9, 0x17),
                b'v' => (9, 0x27),
                _ => (8, 0xAF),
            };
            bytes.extend_from_slice(&[tag, 0, 0, 4, ts[1], ts[2], ts[3], ts[0], 0, 0, 0]);
            bytes.extend_from_slice(&[first, 1, 0, 0, 0, 0, 0, 15]);
        }
        bytes
    }

    fn walk(bytes: &[u8], purpose: Purpose, from: u64, chunk: usize) -> Vec<Tag> {
        let mut walk = TagWalk::new(purpose, true, from, bytes.len() as u64);
        while let Some(range) = walk.need() {
            let end = (range.start as usize + chunk).min(range.end as usize);
            walk.feed(range.start, &bytes[range.start as usize..end])
                .unwrap();
        }
        walk.finish()
    }

    #[test]
    fn the_start_is_the_key_frame_at_or_before_it() {
        let bytes = file(b"KvavaKvavaKva");
        for chunk in [13, 20, 1 << 20] {
            let start = walk(&bytes, Purpose::FindStart { at_ms: 250 }, 13, chunk);
            assert_eq!(start[0].timestamp, 200, "chunk {chunk}");
            let clip = walk(
                &bytes,
                Purpose::Clip {
                    end_ms: Some(400),
                    from_key: true,
                },
                start[0].offset,
                chunk,
            );
            assert_eq!(clip.len(), 5);
            let rest = walk(
                &bytes,
                Purpose::Clip {
                    end_ms: None,
                    from_key: true,
                },
                start[0].offset,
                chunk,
            );
            assert_eq!(rest.len(), 8);
        }
        let mut walk = TagWalk::new(
            Purpose::Clip {
                end_ms: None,
                from_key: true,
            },
            true,
            32,
            bytes.len() as u64,
        );
        assert!(walk.feed(32, &bytes[32..]).is_err(), "no key frame");
    }
}
