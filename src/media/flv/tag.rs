//! FLV tags: the 11-byte header, the role its first body bytes give it, and the header rewritten.

/// A tag's header, and the `PreviousTagSize` after its body.
pub const TAG_HEADER_LEN: u64 = 11;
pub const BACK_POINTER_LEN: u64 = 4;
/// Header bytes plus the body bytes that tell a tag's role.
pub const TAG_PEEK_LEN: usize = TAG_HEADER_LEN as usize + 2;

pub const AUDIO: u8 = 8;
pub const VIDEO: u8 = 9;
pub const SCRIPT: u8 = 18;
const AVC: u8 = 7;
const AAC: u8 = 10;
const KEY_FRAME: u8 = 1;

/// One tag of the original, as a clip needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    /// Where its header starts in the original.
    pub offset: u64,
    pub kind: u8,
    pub body_len: u32,
    /// Milliseconds.
    pub timestamp: u32,
    /// A point to start playing from: a video key frame, or any audio tag when the file
    /// has no video.
    pub video_key: bool,
    /// An AVC or AAC sequence header: decoder set-up, not a frame.
    pub sequence_header: bool,
}

impl Tag {
    /// Reads a tag header (and its first two body bytes, where present) from `bytes`, which
    /// start at `offset`. `None` for what cannot be a clear FLV tag.
    pub fn parse(bytes: &[u8], offset: u64) -> Option<Tag> {
        let header = bytes.get(..TAG_HEADER_LEN as usize)?;
        // The filter bit marks an encrypted tag, which no clip can rewrite.
        let kind = header[0];
        if !matches!(kind, AUDIO | VIDEO | SCRIPT) || header[8..11] != [0, 0, 0] {
            return None;
        }
        let body_len = u32::from_be_bytes([0, header[1], header[2], header[3]]);
        let timestamp = u32::from_be_bytes([header[7], header[4], header[5], header[6]]);
        let body = bytes.get(TAG_HEADER_LEN as usize..).unwrap_or(&[]);
        let (first, second) = (body.first().copied(), body.get(1).copied());
        let video_key = kind == VIDEO && first.is_some_and(|b| b >> 4 == KEY_FRAME);
        let sequence_header = match (kind, first) {
            (VIDEO, Some(b)) => b & 0x0F == AVC && second == Some(0),
            (AUDIO, Some(b)) => b >> 4 == AAC && second == Some(0),
            _ => false,
        };
        Some(Tag {
            offset,
            kind,
            body_len,
            timestamp,
            video_key,
            sequence_header,
        })
    }

    /// One past the tag's back pointer: where the next tag starts.
    pub fn next(&self) -> u64 {
        self.offset + TAG_HEADER_LEN + u64::from(self.body_len) + BACK_POINTER_LEN
    }

    /// Where its body starts in the original.
    pub fn body(&self) -> u64 {
        self.offset + TAG_HEADER_LEN
    }

    /// Its header as a clip presents it, at `timestamp` milliseconds.
    pub fn header_at(&self, timestamp: u32) -> [u8; TAG_HEADER_LEN as usize] {
        let len = self.body_len.to_be_bytes();
        let ts = timestamp.to_be_bytes();
        [
            self.kind, len[1], len[2], len[3], ts[1], ts[2], ts[3], ts[0], 0, 0, 0,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_read_and_write_back() {
        let bytes = [9, 0, 1, 0, 0x12, 0x34, 0x56, 0x01, 0, 0, 0, 0x17, 0];
        let tag = Tag::parse(&bytes, 100).unwrap();
        assert_eq!(
            (tag.kind, tag.body_len, tag.timestamp),
            (VIDEO, 256, 0x0112_3456)
        );
        assert!(tag.video_key && tag.sequence_header);
        assert_eq!(tag.next(), 100 + 11 + 256 + 4);
        assert_eq!(tag.header_at(0x0112_3456), bytes[..11]);
        assert!(Tag::parse(&[7; 11], 0).is_none());
        assert!(Tag::parse(&[8, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1], 0).is_none());
        let inter = Tag::parse(&[9, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0x27, 1], 0).unwrap();
        assert!(!inter.video_key && !inter.sequence_header);
    }
}
