//! Scan and faststart on synthetic files: exact offset shifts, co64 promotion, 64-bit sizes, layout detection.

use super::builder::*;
use crate::media::mp4::{
    faststart, Layout, Limits, Mp4Error, ScanStep, Segment, TopBox, TopLevelScan,
};

fn faststart_file(file: &[u8]) -> Vec<u8> {
    let (boxes, moov, bytes) = moov_of(file);
    let p = faststart(&boxes, moov, &bytes, file.len() as u64, &Limits::default()).unwrap();
    expand(&p, file)
}

#[test]
fn faststart_shifts_offsets_exactly() {
    let file = build(&Spec::av());
    let layout = scan(&file);
    let Layout::MoovAtEnd { boxes, moov } = &layout else {
        panic!("{layout:?}")
    };
    let kinds: Vec<_> = boxes.iter().map(|b| b.kind).collect();
    assert_eq!(kinds, [*b"ftyp", *b"free", *b"mdat", *b"moov"]);
    let bytes = &file[moov.start as usize..moov.end as usize];
    let p = faststart(
        boxes,
        moov.clone(),
        bytes,
        file.len() as u64,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(p.size(), file.len() as u64);
    assert_eq!(p.synthetic_len() as u64, moov.end - moov.start);
    assert_eq!(
        p.segments().len(),
        3,
        "head, moov, mdat: the old moov is simply left out"
    );
    let out = expand(&p, &file);
    let (top, tracks, _) = read_file(&out);
    assert_eq!(top, [*b"ftyp", *b"free", *b"moov", *b"mdat"]);
    let (_, orig, _) = read_file(&file);
    let shift = moov.end - moov.start;
    for (t, o) in tracks.iter().zip(&orig) {
        for (s, so) in t.samples.iter().zip(&o.samples) {
            assert_eq!(s.offset, so.offset + shift);
        }
        assert_eq!(t.samples.len(), o.samples.len());
    }
    assert_samples_tagged(&out, &tracks, &[0, 0]);
}

#[test]
fn faststart_of_co64_input_and_64_bit_boxes() {
    let mut spec = Spec::av();
    spec.co64 = true;
    spec.mdat64 = true;
    spec.udta64 = true;
    let file = build(&spec);
    let out = faststart_file(&file);
    // The udta's 64-bit header becomes a 32-bit one, so the moov shrinks by 8 bytes.
    assert_eq!(out.len(), file.len() - 8);
    let (top, tracks, _) = read_file(&out);
    assert_eq!(top, [*b"ftyp", *b"free", *b"moov", *b"mdat"]);
    assert!(tracks[0].stbl_kinds.contains(b"co64"));
    assert_samples_tagged(&out, &tracks, &[0, 0]);
    let moov = child(&out, b"moov").unwrap();
    assert_eq!(child(moov, b"udta").unwrap(), bx(b"name", b"hello"));
}

#[test]
fn size_zero_boxes() {
    // moov-at-end whose moov runs "to end of file".
    let file = build(&Spec::av());
    let (boxes, moov, _) = moov_of(&file);
    let mut zero = file.clone();
    zero[moov.start as usize..moov.start as usize + 4].copy_from_slice(&[0; 4]);
    let (b2, m2, bytes) = moov_of(&zero);
    assert_eq!((b2, m2.clone()), (boxes, moov));
    let p = faststart(
        &moov_of(&zero).0,
        m2,
        &bytes,
        zero.len() as u64,
        &Limits::default(),
    )
    .unwrap();
    let out = expand(&p, &zero);
    assert_eq!(out, faststart_file(&file));
    // faststart file whose mdat runs to the end.
    let mut spec = Spec::av();
    spec.moov_first = true;
    let mut file = build(&spec);
    let mdat_at = file.len() - mdat_payload(&spec).0.len() - 8;
    file[mdat_at..mdat_at + 4].copy_from_slice(&[0; 4]);
    let layout = scan(&file);
    let Layout::FastStart { boxes, .. } = &layout else {
        panic!("{layout:?}")
    };
    assert_eq!(boxes.last().unwrap().range.end, file.len() as u64);
}

#[test]
fn already_faststart_is_detected_and_refused() {
    let mut spec = Spec::av();
    spec.moov_first = true;
    let file = build(&spec);
    let layout = scan(&file);
    let Layout::FastStart { boxes, moov } = &layout else {
        panic!("{layout:?}")
    };
    let bytes = &file[moov.start as usize..moov.end as usize];
    let err = faststart(
        boxes,
        moov.clone(),
        bytes,
        file.len() as u64,
        &Limits::default(),
    );
    assert!(matches!(err, Err(Mp4Error::BadArgument(_))), "{err:?}");
}

#[test]
fn fragmented_is_detected() {
    let mut file = bx(b"ftyp", FTYP);
    file.extend(bx(b"moov", &bx(b"mvex", &[])));
    file.extend(bx(b"moof", &[0; 16]));
    file.extend(bx(b"mdat", &[0; 100]));
    assert_eq!(scan(&file), Layout::Fragmented);
}

#[test]
fn scan_asks_for_the_whole_tail_after_mdat() {
    let mut spec = Spec::av();
    spec.tracks[0].sizes.iter_mut().for_each(|s| *s += 1000);
    let file = build(&spec);
    let limits = Limits::default();
    let mut s = TopLevelScan::new(file.len() as u64, &limits);
    let first = s.first_request();
    let step = s.feed(0, &file[..first.end as usize]);
    let (_, moov, _) = moov_of(&file);
    assert_eq!(step, ScanStep::Need(moov.start..file.len() as u64));
    let step = s.feed(moov.start, &file[moov.start as usize..]);
    assert!(
        matches!(step, ScanStep::Done(Layout::MoovAtEnd { .. })),
        "{step:?}"
    );
}

/// A moov with chunk offsets just under 4 GiB and a file layout that claims a 4 GiB mdat.
fn near_4gib(old_len_guess: u64) -> (Vec<TopBox>, std::ops::Range<u64>, Vec<u8>, u64) {
    let mut spec = Spec::av();
    spec.tracks[0] = TrackSpec::video(100, 25);
    spec.tracks[1] = TrackSpec::audio(70);
    let max = u64::from(u32::MAX);
    // Track 0 overflows as soon as it moves; track 1 only once track 0's promotion grows the moov.
    let v: Vec<u64> = (0..20).map(|k| max - 1000 + k * 10).collect();
    let a: Vec<u64> = (0..10).map(|k| max - old_len_guess - 20 + k).collect();
    let moov = moov(&spec, &[v, a]);
    let mdat_end = max + 1000;
    let boxes = vec![
        TopBox {
            kind: *b"ftyp",
            range: 0..32,
        },
        TopBox {
            kind: *b"mdat",
            range: 32..mdat_end,
        },
        TopBox {
            kind: *b"moov",
            range: mdat_end..mdat_end + moov.len() as u64,
        },
    ];
    let range = boxes[2].range.clone();
    (boxes, range.clone(), moov, range.end)
}

#[test]
fn stco_promotes_to_co64_at_a_fixed_point() {
    let len = near_4gib(0).2.len() as u64;
    let (boxes, moov, bytes, size) = near_4gib(len);
    assert_eq!(bytes.len() as u64, len);
    let p = faststart(&boxes, moov, &bytes, size, &Limits::default()).unwrap();
    let Segment::Synthetic(new_moov) = &p.segments()[1] else {
        panic!()
    };
    let growth = 4 * (20 + 10);
    assert_eq!(new_moov.len() as u64, len + growth, "both tables promoted");
    assert_eq!(p.size(), size + growth);
    let mut file = bx(b"ftyp", FTYP);
    file.extend_from_slice(new_moov);
    let (_, tracks, _) = read_file(&file);
    let new_len = new_moov.len() as u64;
    let max = u64::from(u32::MAX);
    for (t, base) in tracks.iter().zip([max - 1000, max - len - 20]) {
        assert!(t.stbl_kinds.contains(b"co64") && !t.stbl_kinds.contains(b"stco"));
        let first_chunk = t.samples[0].offset;
        assert_eq!(first_chunk, base + new_len);
    }
    // A table that does not need it stays 32-bit.
    let (boxes, moov, bytes, size) = near_4gib(len + 4 * 20 + 100);
    let p = faststart(&boxes, moov, &bytes, size, &Limits::default()).unwrap();
    assert_eq!(p.synthetic_len() as u64, len + 4 * 20);
}

#[test]
fn chunk_offsets_into_moov_or_past_eof_are_errors() {
    let file = build(&Spec::av());
    let (boxes, moov, mut bytes) = moov_of(&file);
    let at = bytes.windows(4).position(|w| w == b"stco").unwrap() + 12;
    bytes[at..at + 4].copy_from_slice(&(moov.start as u32 + 10).to_be_bytes());
    let r = faststart(
        &boxes,
        moov.clone(),
        &bytes,
        file.len() as u64,
        &Limits::default(),
    );
    assert!(r.is_err());
    bytes[at..at + 4].copy_from_slice(&(file.len() as u32 + 10).to_be_bytes());
    let r = faststart(&boxes, moov, &bytes, file.len() as u64, &Limits::default());
    assert!(r.is_err());
}

#[test]
fn garbage_and_truncation_never_panic() {
    let noise: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    assert!(matches!(scan(&noise), Layout::Unsupported(_)));
    assert!(matches!(
        scan(b"hello world, not a movie"),
        Layout::Unsupported(_)
    ));
    assert!(matches!(scan(&[]), Layout::Unsupported(_)));
    let file = build(&Spec::av());
    for cut in (1..file.len()).step_by(97) {
        let layout = scan(&file[..cut]);
        assert!(
            matches!(layout, Layout::Unsupported(_)),
            "{cut}: {layout:?}"
        );
    }
    let (boxes, moov, bytes) = moov_of(&file);
    for cut in (0..bytes.len()).step_by(13) {
        let r = faststart(
            &boxes,
            moov.clone(),
            &bytes[..cut],
            file.len() as u64,
            &Limits::default(),
        );
        assert!(r.is_err());
    }
}

#[test]
fn limits_are_enforced() {
    let file = build(&Spec::av());
    let limits = Limits {
        max_moov_size: 100,
        ..Limits::default()
    };
    assert!(matches!(scan_with(&file, &limits), Layout::Unsupported(m) if m.contains("moov is")));
    let limits = Limits {
        max_top_level_boxes: 2,
        ..Limits::default()
    };
    assert!(matches!(scan_with(&file, &limits), Layout::Unsupported(_)));
    let (boxes, moov, bytes) = moov_of(&file);
    let limits = Limits {
        max_moov_boxes: 5,
        ..Limits::default()
    };
    let r = faststart(&boxes, moov, &bytes, file.len() as u64, &limits);
    assert!(matches!(r, Err(Mp4Error::TooLarge { .. })), "{r:?}");
}
