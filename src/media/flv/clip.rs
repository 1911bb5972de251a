//! An FLV clip assembled: the header, `onMetaData` rewritten (duration, size, the keyframe
//! index), the set-up tags, then the clip's tags with rebased timestamps over the
//! original's bodies.

use bytes::{Bytes, BytesMut};

use super::amf::{self, Amf};
use super::head::{Head, FILE_HEADER_LEN};
use super::tag::{Tag, BACK_POINTER_LEN, SCRIPT, TAG_HEADER_LEN};
use crate::media::clip_error::ClipError;
use crate::media::mp4::{Presented, Segment};

/// The offset of the key frame at or before `start` seconds by the file's keyframe index,
/// when it has a usable one.
pub fn indexed_start(head: &Head, start: f64, size: u64) -> Option<u64> {
    let (times, positions) = index_of(head)?;
    times
        .iter()
        .zip(positions)
        .filter_map(|(t, p)| Some((t.number()?, p.number()?)))
        .filter(|&(t, p)| t.is_finite() && t <= start && usable(head, p, size))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, p)| p as u64)
}

/// The offset of the first key frame at or after `end` seconds by the file's keyframe
/// index: a clip to `end` ends by there.
pub fn indexed_end(head: &Head, end: f64, size: u64) -> Option<u64> {
    let (times, positions) = index_of(head)?;
    times
        .iter()
        .zip(positions)
        .filter_map(|(t, p)| Some((t.number()?, p.number()?)))
        .filter(|&(t, p)| t >= end && usable(head, p, size))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, p)| p as u64)
}

fn index_of(head: &Head) -> Option<(&Vec<Amf>, &Vec<Amf>)> {
    let index = head.meta.as_ref()?.get("keyframes")?;
    match (index.get("times"), index.get("filepositions")) {
        (Some(Amf::StrictArray(times)), Some(Amf::StrictArray(positions))) => {
            Some((times, positions))
        }
        _ => None,
    }
}

/// Whether an index position can be a tag of the media.
fn usable(head: &Head, position: f64, size: u64) -> bool {
    position.fract() == 0.0 && position >= head.media_start as f64 && position < size as f64
}

/// A tag's whole length in a file: header, body and back pointer.
fn tag_len(tag: &Tag) -> u64 {
    TAG_HEADER_LEN + u64::from(tag.body_len) + BACK_POINTER_LEN
}

/// The clip of `tags` (the first a point to start from), with `head`'s front.
pub fn assemble(head: &Head, tags: &[Tag]) -> Result<Presented, ClipError> {
    let first = tags.first().ok_or(ClipError::Empty)?;
    let base = first.timestamp;
    let rebased = |tag: &Tag| tag.timestamp.saturating_sub(base);
    let mut keys = Vec::new();
    let mut media_len = 0u64;
    for tag in tags {
        if tag.video_key && !tag.sequence_header {
            keys.push((f64::from(rebased(tag)) / 1000.0, media_len));
        }
        media_len += tag_len(tag);
    }
    let last_ms = tags.iter().map(rebased).max().unwrap_or(0);
    let mut out = Assembly::default();
    out.synthetic(&[
        b'F',
        b'L',
        b'V',
        1,
        head.flags,
        0,
        0,
        0,
        FILE_HEADER_LEN as u8,
    ]);
    out.synthetic(&[0; BACK_POINTER_LEN as usize]);
    if let Some(meta) = &head.meta {
        let setup_len: u64 = head.setup.iter().map(tag_len).sum();
        // Numbers have one length whatever their value: measure, then place.
        let measured = meta_body(meta, &Edits::measuring(&keys, last_ms));
        let prefix = FILE_HEADER_LEN
            + BACK_POINTER_LEN
            + TAG_HEADER_LEN
            + measured.len() as u64
            + BACK_POINTER_LEN
            + setup_len;
        let edits = Edits::placed(&keys, last_ms, prefix, prefix + media_len);
        out.script(&meta_body(meta, &edits))?;
    }
    for tag in &head.setup {
        out.tag(tag, 0);
    }
    for tag in tags {
        out.tag(tag, rebased(tag));
    }
    out.finish()
}

/// What a clip changes in `onMetaData`.
struct Edits {
    duration: f64,
    /// Key frames: seconds, and offset in the clip.
    keys: Vec<(f64, f64)>,
    filesize: f64,
}

impl Edits {
    fn measuring(keys: &[(f64, u64)], last_ms: u32) -> Edits {
        Edits::placed(keys, last_ms, 0, 0)
    }

    fn placed(keys: &[(f64, u64)], last_ms: u32, prefix: u64, size: u64) -> Edits {
        Edits {
            duration: f64::from(last_ms) / 1000.0,
            keys: keys
                .iter()
                .map(|&(t, at)| (t, (prefix + at) as f64))
                .collect(),
            filesize: size as f64,
        }
    }
}

/// The script tag body: `onMetaData` and the value with the clip's edits.
fn meta_body(meta: &Amf, edits: &Edits) -> Vec<u8> {
    let mut meta = meta.clone();
    meta.set_number("duration", edits.duration);
    meta.set_number("filesize", edits.filesize);
    meta.set_number("lasttimestamp", edits.duration);
    if let Some(&(time, at)) = edits.keys.last() {
        meta.set_number("lastkeyframetimestamp", time);
        meta.set_number("lastkeyframelocation", at);
    }
    if let Some(index) = meta.get_mut("keyframes") {
        let numbers = |f: fn(&(f64, f64)) -> f64| {
            Amf::StrictArray(edits.keys.iter().map(|k| Amf::Number(f(k))).collect())
        };
        if let Some(times) = index.get_mut("times") {
            *times = numbers(|k| k.0);
        }
        if let Some(positions) = index.get_mut("filepositions") {
            *positions = numbers(|k| k.1);
        }
    }
    let mut body = Vec::new();
    amf::write(&Amf::String(b"onMetaData".to_vec()), &mut body);
    amf::write(&meta, &mut body);
    body
}

/// Segments being laid out: synthetic bytes gathered into runs between source bodies.
#[derive(Default)]
struct Assembly {
    synthetic: BytesMut,
    /// Synthetic runs (as ranges of `synthetic`) and bodies, in order.
    parts: Vec<Part>,
    run_start: usize,
}

enum Part {
    Synthetic(std::ops::Range<usize>),
    Source { offset: u64, len: u64 },
}

impl Assembly {
    fn synthetic(&mut self, bytes: &[u8]) {
        self.synthetic.extend_from_slice(bytes);
    }

    fn close_run(&mut self) {
        let end = self.synthetic.len();
        if end > self.run_start {
            self.parts.push(Part::Synthetic(self.run_start..end));
        }
        self.run_start = end;
    }

    /// A script tag of `body`, at time 0, all of it synthetic.
    fn script(&mut self, body: &[u8]) -> Result<(), ClipError> {
        let len = u32::try_from(body.len())
            .ok()
            .filter(|&len| len < 1 << 24)
            .ok_or_else(|| ClipError::malformed("FLV: rewritten metadata too long"))?;
        let script = Tag {
            offset: 0,
            kind: SCRIPT,
            body_len: len,
            timestamp: 0,
            video_key: false,
            sequence_header: false,
        };
        self.synthetic(&script.header_at(0));
        self.synthetic(body);
        self.synthetic(&(TAG_HEADER_LEN as u32 + len).to_be_bytes());
        Ok(())
    }

    /// A tag: its header at `timestamp`, its body from the original, its back pointer.
    fn tag(&mut self, tag: &Tag, timestamp: u32) {
        self.synthetic(&tag.header_at(timestamp));
        self.close_run();
        self.parts.push(Part::Source {
            offset: tag.body(),
            len: u64::from(tag.body_len),
        });
        let back = TAG_HEADER_LEN as u32 + tag.body_len;
        self.synthetic(&back.to_be_bytes());
    }

    fn finish(mut self) -> Result<Presented, ClipError> {
        self.close_run();
        let synthetic: Bytes = self.synthetic.freeze();
        let segments = self
            .parts
            .into_iter()
            .map(|part| match part {
                Part::Synthetic(range) => Segment::Synthetic(synthetic.slice(range)),
                Part::Source { offset, len } => Segment::Source { offset, len },
            })
            .collect();
        Presented::new(segments).map_err(|e| ClipError::malformed(format!("FLV clip: {e}")))
    }
}
