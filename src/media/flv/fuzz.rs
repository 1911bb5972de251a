//! Hostile FLVs through every step of a clip: no panic, bounded memory, clips only map onto the file.

use super::amf::{write, Amf};
use super::*;
use crate::media::clip_error::ClipError;
use crate::media::mp4::Presented;

fn tag(kind: u8, ts: u32, body: &[u8]) -> Vec<u8> {
    let len = (body.len() as u32).to_be_bytes();
    let t = ts.to_be_bytes();
    let mut out = vec![
        kind, len[1], len[2], len[3], t[1], t[2], t[3], t[0], 0, 0, 0,
    ];
    out.extend_from_slice(body);
    out.extend_from_slice(&(11 + body.len() as u32).to_be_bytes());
    out
}

fn meta(keys: &[(f64, f64)]) -> Vec<u8> {
    let numbers = |f: fn(&(f64, f64)) -> f64| {
        Amf::StrictArray(keys.iter().map(|k| Amf::Number(f(k))).collect())
    };
    let value = Amf::EcmaArray(vec![
        (b"duration".to_vec(), Amf::Number(8.0)),
        (b"filesize".to_vec(), Amf::Number(0.0)),
        (
            b"keyframes".to_vec(),
            Amf::Object(vec![
                (b"times".to_vec(), numbers(|k| k.0)),
                (b"filepositions".to_vec(), numbers(|k| k.1)),
            ]),
        ),
    ]);
    let mut body = Vec::new();
    write(&Amf::String(b"onMetaData".to_vec()), &mut body);
    write(&value, &mut body);
    tag(18, 0, &body)
}

/// 8 s of 25 fps video (a key frame each second) and audio tags, with a keyframe index.
fn sample() -> Vec<u8> {
    let mut media = Vec::new();
    let mut keys = Vec::new();
    for i in 0..200u32 {
        let first = if i % 25 == 0 { 0x17 } else { 0x27 };
        if i % 25 == 0 {
            keys.push((f64::from(i * 40) / 1000.0, media.len() as f64));
        }
        media.extend(tag(9, i * 40, &[first, 1, 0, 0, 0, i as u8, 7, 7]));
        media.extend(tag(8, i * 40 + 20, &[0xAF, 1, i as u8, 3]));
    }
    let setup = [
        tag(9, 0, &[0x17, 0, 0, 0, 0, 1, 2]),
        tag(8, 0, &[0xAF, 0, 0x12, 0x10]),
    ]
    .concat();
    let front = 13 + meta(&keys).len() + setup.len();
    let keys: Vec<_> = keys.iter().map(|&(t, p)| (t, p + front as f64)).collect();
    [
        &b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00"[..],
        &meta(&keys),
        &setup,
        &media,
    ]
    .concat()
}

/// What the media layer does, with slices for reads.
fn clip(file: &[u8], start: f64, end: f64) -> Result<Presented, ClipError> {
    let size = file.len() as u64;
    let read =
        |r: std::ops::Range<u64>| &file[r.start.min(size) as usize..r.end.min(size) as usize];
    let mut len = size.min(FIRST_READ);
    let head = loop {
        match parse_head(read(0..len), size) {
            HeadStep::Done(head) => break head?,
            HeadStep::Need(more) => len = more,
        }
    };
    let walk = |purpose, from| -> Result<Vec<Tag>, ClipError> {
        let mut walk = TagWalk::new(purpose, head.has_video(), from, size);
        while let Some(range) = walk.need() {
            walk.feed(range.start, read(range))?;
        }
        Ok(walk.finish())
    };
    let from = match indexed_start(&head, start, size) {
        Some(from) => from,
        None => {
            let purpose = Purpose::FindStart {
                at_ms: (start * 1000.0) as u64,
            };
            walk(purpose, head.media_start)?
                .first()
                .ok_or(ClipError::Empty)?
                .offset
        }
    };
    let purpose = Purpose::Clip {
        end_ms: Some((end * 1000.0) as u64),
        from_key: true,
    };
    assemble(&head, &walk(purpose, from)?)
}

#[test]
fn the_sample_cuts_from_its_key_frame() {
    let presented = clip(&sample(), 2.5, 4.0).unwrap();
    // Key frame at 2 s: 50 video and 50 audio tags to 4 s, each header rewritten.
    let bodies: u64 = presented
        .segments()
        .iter()
        .map(|s| match s {
            crate::media::mp4::Segment::Source { len, .. } => *len,
            _ => 0,
        })
        .sum();
    assert_eq!(bodies, 7 + 4 + 50 * 8 + 50 * 4);
}

#[test]
fn mutated_files_never_panic_and_clips_map_inside_them() {
    let original = sample();
    let mut next = crate::base::testing::xorshift(0x2545_f491_4f6c_dd1du64);
    for _ in 0..3000 {
        let mut file = original.clone();
        for _ in 0..1 + next() % 6 {
            let span = if next().is_multiple_of(2) {
                400
            } else {
                file.len() as u64
            };
            let at = (next() % span) as usize;
            file[at] = match next() % 3 {
                0 => 0,
                1 => 0xFF,
                _ => next() as u8,
            };
        }
        if next().is_multiple_of(8) {
            file.truncate((next() % file.len() as u64) as usize);
        }
        let start = (next() % 16) as f64 * 0.5;
        if let Ok(presented) = clip(&file, start, start + 1.5) {
            assert!(presented.source_extent() <= file.len() as u64);
            assert!(presented.size() <= 2 * file.len() as u64);
        }
    }
}
