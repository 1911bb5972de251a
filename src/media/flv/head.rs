//! The front of an FLV file: header, onMetaData and the decoder set-up every clip repeats.

use super::amf::{Amf, AmfReader};
use super::tag::{Tag, SCRIPT, TAG_HEADER_LEN, TAG_PEEK_LEN};
use crate::media::clip_error::ClipError;

pub const FILE_HEADER_LEN: u64 = 9;
/// Largest `onMetaData` tag body read: a keyframe index of days of video fits.
pub const MAX_META_LEN: u64 = 2 << 20;
/// Largest header offset accepted (the header is nine bytes; more is padding).
const MAX_DATA_OFFSET: u64 = 1 << 16;
/// Tags at the front examined for set-up before the media is taken to begin.
const MAX_FRONT_TAGS: usize = 16;
const HAS_VIDEO: u8 = 1;

/// What the front of the file holds.
#[derive(Clone, Debug)]
pub struct Head {
    /// The header's audio/video flags.
    pub flags: u8,
    /// The `onMetaData` value, where the file has one.
    pub meta: Option<Amf>,
    /// Sequence headers at the front, in order.
    pub setup: Vec<Tag>,
    /// The first tag that is neither metadata nor set-up.
    pub media_start: u64,
}

impl Head {
    pub fn has_video(&self) -> bool {
        self.flags & HAS_VIDEO != 0
    }
}

/// What parsing the front needs next.
pub enum HeadStep {
    /// The file's first `n` bytes.
    Need(u64),
    Done(Result<Head, ClipError>),
}

/// Parses the front from `bytes`, the file's first bytes, of a file of `size` bytes.
pub fn parse_head(bytes: &[u8], size: u64) -> HeadStep {
    match front(bytes, size) {
        Ok(Some(head)) => HeadStep::Done(Ok(head)),
        Ok(None) => HeadStep::Done(Err(ClipError::malformed("FLV: its front ends early"))),
        Err(Needs(n)) if n > bytes.len() as u64 && n <= size => HeadStep::Need(n),
        Err(Needs(_)) => HeadStep::Done(Err(ClipError::malformed("FLV: truncated front"))),
        Err(Bad(e)) => HeadStep::Done(Err(e)),
    }
}

enum Short {
    Needs(u64),
    Bad(ClipError),
}
use Short::{Bad, Needs};

impl From<ClipError> for Short {
    fn from(e: ClipError) -> Short {
        Bad(e)
    }
}

fn front(bytes: &[u8], size: u64) -> Result<Option<Head>, Short> {
    let header = bytes
        .get(..FILE_HEADER_LEN as usize)
        .ok_or(Needs(FILE_HEADER_LEN))?;
    if &header[..3] != b"FLV" || header[3] != 1 {
        return Err(Bad(ClipError::malformed("not an FLV file")));
    }
    let data_offset = u64::from(u32::from_be_bytes([
        header[5], header[6], header[7], header[8],
    ]));
    if !(FILE_HEADER_LEN..=MAX_DATA_OFFSET).contains(&data_offset) {
        return Err(Bad(ClipError::malformed("FLV: bad header size")));
    }
    let mut head = Head {
        flags: header[4],
        meta: None,
        setup: Vec::new(),
        media_start: data_offset + 4,
    };
    for _ in 0..MAX_FRONT_TAGS {
        let at = head.media_start;
        if at + TAG_HEADER_LEN > size {
            return Ok(None);
        }
        let peek_end = (at + TAG_PEEK_LEN as u64).min(size);
        let peek = bytes
            .get(at as usize..peek_end as usize)
            .ok_or(Needs(peek_end))?;
        let tag = Tag::parse(peek, at).ok_or(Bad(ClipError::malformed("FLV: bad tag")))?;
        match tag.kind == SCRIPT && head.meta.is_none() {
            true => match meta_of(bytes, &tag)? {
                Some(meta) => head.meta = Some(meta),
                None => return Ok(Some(head)),
            },
            false if tag.sequence_header => head.setup.push(tag),
            false => return Ok(Some(head)),
        }
        head.media_start = tag.next();
    }
    Ok(Some(head))
}

/// The `onMetaData` value of a script tag, or `None` for another script tag.
fn meta_of(bytes: &[u8], tag: &Tag) -> Result<Option<Amf>, Short> {
    ClipError::check("FLV onMetaData tag", u64::from(tag.body_len), MAX_META_LEN)?;
    let end = tag.body() + u64::from(tag.body_len);
    let body = bytes
        .get(tag.body() as usize..end as usize)
        .ok_or(Needs(end))?;
    let mut reader = AmfReader::new(body);
    if reader.value(0)? != Amf::String(b"onMetaData".to_vec()) {
        return Ok(None);
    }
    let meta = reader.value(0)?;
    match meta {
        Amf::Object(_) | Amf::EcmaArray(_) => Ok(Some(meta)),
        _ => Err(Bad(ClipError::malformed(
            "FLV: onMetaData is not an object",
        ))),
    }
}
