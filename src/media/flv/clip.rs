//! An FLV clip assembled: header, rewritten onMetaData, set-up tags, then rebased tags over the original's bodies.

use bytes::{Bytes, BytesMut};

use super::amf::{self, Amf};
use super::head::{Head, FILE_HEADER_LEN};
use super::tag::{Tag, AUDIO, BACK_POINTER_LEN, SCRIPT, TAG_HEADER_LEN, VIDEO};
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
    let base = tags.first().ok_or(ClipError::Empty)?.timestamp;
    let rebased = |tag: &Tag| tag.timestamp.saturating_sub(base);
    let mut out = Assembly::default();
    let header = [
        b'F',
        b'L',
        b'V',
        1,
        head.flags,
        0,
        0,
        0,
        FILE_HEADER_LEN as u8,
    ];
    out.synthetic(&header);
    out.synthetic(&[0; BACK_POINTER_LEN as usize]);
    if let Some(meta) = &head.meta {
        let summary = summarize(&head.setup, tags, base);
        // Numbers have one length whatever their value: measure, then place.
        let measured = meta_body(meta, &Edits::new(&summary, 0, 0)).len() as u64;
        let prefix = FILE_HEADER_LEN + BACK_POINTER_LEN + TAG_HEADER_LEN + measured;
        let edits = Edits::new(
            &summary,
            prefix + BACK_POINTER_LEN,
            TAG_HEADER_LEN + measured,
        );
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

/// What the tags after the metadata add up to, as `onMetaData` describes them.
struct Summary {
    /// Video key frames: seconds, and offset from the first tag after the metadata.
    keys: Vec<(f64, u64)>,
    tags_len: u64,
    /// Header and body bytes of the video and audio tags (`videosize`, `audiosize`).
    video_len: u64,
    audio_len: u64,
    last_ms: u32,
    ends_on_key: bool,
}

fn summarize(setup: &[Tag], tags: &[Tag], base: u32) -> Summary {
    let mut summary = Summary {
        keys: Vec::new(),
        tags_len: 0,
        video_len: 0,
        audio_len: 0,
        last_ms: 0,
        ends_on_key: false,
    };
    let setup = setup.iter().map(|tag| (tag, 0));
    let clip = tags
        .iter()
        .map(|tag| (tag, tag.timestamp.saturating_sub(base)));
    for (tag, ms) in setup.chain(clip) {
        let time = f64::from(ms) / 1000.0;
        if tag.kind == VIDEO {
            // One entry per key frame time, at its first tag (a sequence header before its
            // key frame), as flvmeta indexes a file.
            if tag.video_key && summary.keys.last().is_none_or(|&(last, _)| last != time) {
                summary.keys.push((time, summary.tags_len));
            }
            summary.video_len += TAG_HEADER_LEN + u64::from(tag.body_len);
            summary.ends_on_key = tag.video_key;
        } else if tag.kind == AUDIO {
            summary.audio_len += TAG_HEADER_LEN + u64::from(tag.body_len);
        }
        summary.tags_len += tag_len(tag);
        summary.last_ms = summary.last_ms.max(ms);
    }
    summary
}

/// What a clip changes in `onMetaData`.
struct Edits {
    duration: f64,
    /// Key frames: seconds, and offset in the clip.
    keys: Vec<(f64, f64)>,
    filesize: f64,
    datasize: f64,
    videosize: f64,
    audiosize: f64,
    ends_on_key: bool,
}

impl Edits {
    /// The edits for a clip whose tags after the metadata start at `prefix`, with a
    /// metadata tag of `meta_tag` header and body bytes (`datasize`; zeros to measure).
    fn new(summary: &Summary, prefix: u64, meta_tag: u64) -> Edits {
        Edits {
            duration: f64::from(summary.last_ms) / 1000.0,
            keys: summary
                .keys
                .iter()
                .map(|&(t, at)| (t, (prefix + at) as f64))
                .collect(),
            filesize: (prefix + summary.tags_len) as f64,
            datasize: meta_tag as f64,
            videosize: summary.video_len as f64,
            audiosize: summary.audio_len as f64,
            ends_on_key: summary.ends_on_key,
        }
    }
}

/// The script tag body: `onMetaData` and the value with the clip's edits, to the members
/// the original has.
fn meta_body(meta: &Amf, edits: &Edits) -> Vec<u8> {
    let mut meta = meta.clone();
    for (name, value) in [
        ("duration", edits.duration),
        ("filesize", edits.filesize),
        ("lasttimestamp", edits.duration),
        ("datasize", edits.datasize),
        ("videosize", edits.videosize),
        ("audiosize", edits.audiosize),
    ] {
        meta.set_number(name, value);
    }
    if let Some(Amf::Bool(seekable)) = meta.get_mut("canSeekToEnd") {
        *seekable = edits.ends_on_key;
    }
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
