//! Trim on synthetic files, checked against a naive per-sample model of the selection rules.

use super::builder::*;
use crate::media::mp4::{trim, Limits, Mp4Error, Presented, Segment, TopBox, TrimError};

/// Per-sample model: (dts, pts, delta) of each sample.
fn times(t: &TrackSpec) -> Vec<(i64, i64, i64)> {
    let mut dts = 0i64;
    let shift = t.media_time.unwrap_or(0) as i64;
    (0..t.sizes.len())
        .map(|i| {
            let c = t.ctts.as_ref().map_or(0, |c| i64::from(c[i]));
            let out = (dts, dts + c - shift, i64::from(t.deltas[i]));
            dts += i64::from(t.deltas[i]);
            out
        })
        .collect()
}

fn containing(t: &TrackSpec, at: i64) -> usize {
    let tm = times(t);
    tm.iter()
        .position(|&(d, _, dl)| d <= at && at < d + dl)
        .unwrap_or(tm.len())
}

fn model_end(t: &TrackSpec, end: Option<f64>) -> usize {
    let tm = times(t);
    let Some(e) = end else { return tm.len() };
    let limit = (e * f64::from(t.timescale)).ceil() as i64;
    let mut to = tm
        .iter()
        .rposition(|&(_, p, _)| p < limit)
        .map_or(0, |i| i + 1);
    let latest = tm[..to]
        .iter()
        .map(|&(_, p, _)| p)
        .max()
        .unwrap_or(i64::MIN);
    while to < tm.len() && tm[to].1 < latest {
        to += 1;
    }
    to
}

/// The model's kept sample range per track.
fn model(spec: &Spec, start: f64, end: Option<f64>) -> Vec<(usize, usize)> {
    let r = spec
        .tracks
        .iter()
        .position(|t| &t.handler == b"vide")
        .unwrap_or(0);
    let rt = &spec.tracks[r];
    let at = containing(rt, (start * f64::from(rt.timescale)).floor() as i64);
    let sync = |i: usize| rt.sync.as_ref().is_none_or(|s| s.contains(&(i as u32 + 1)));
    let key = (0..=at).rev().find(|&i| sync(i)).unwrap();
    let t0 = times(rt)[key].0;
    spec.tracks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let from = if i == r {
                key
            } else {
                containing(t, t0 * i64::from(t.timescale) / i64::from(rt.timescale))
            };
            (from, model_end(t, end).max(from))
        })
        .collect()
}

fn run(
    spec: &Spec,
    start: Option<f64>,
    end: Option<f64>,
) -> Result<(Vec<u8>, Presented), TrimError> {
    let file = build(spec);
    let (boxes, moov, bytes) = moov_of(&file);
    let p = trim(
        &boxes,
        moov,
        &bytes,
        file.len() as u64,
        start,
        end,
        &Limits::default(),
    )?;
    Ok((expand(&p, &file), p))
}

fn check(spec: &Spec, start: Option<f64>, end: Option<f64>) {
    let (out, p) = run(spec, start, end).unwrap();
    assert_eq!(
        p.segments().len(),
        3,
        "ftyp, moov+mdat header, one media range"
    );
    let (top, tracks, mvhd_duration) = read_file(&out);
    assert_eq!(top, [*b"ftyp", *b"moov", *b"mdat"]);
    let want = model(spec, start.unwrap_or(0.0), end);
    let firsts: Vec<usize> = want.iter().map(|w| w.0).collect();
    assert_samples_tagged(&out, &tracks, &firsts);
    let mut longest = 0;
    for ((t, ts), &(from, to)) in tracks.iter().zip(&spec.tracks).zip(&want) {
        assert_eq!(t.samples.len(), to - from, "{:?}", ts.handler);
        let orig = times(ts);
        for (k, s) in t.samples.iter().enumerate() {
            let i = from + k;
            assert_eq!(s.size, ts.sizes[i]);
            assert_eq!(s.dts as i64, orig[i].0 - orig[from].0);
            assert_eq!(
                s.cts_offset,
                ts.ctts.as_ref().map_or(0, |c| i64::from(c[i]))
            );
            assert_eq!(
                s.sync,
                ts.sync.as_ref().is_none_or(|v| v.contains(&(i as u32 + 1)))
            );
        }
        let kept = &orig[from..to];
        assert_eq!(
            t.mdhd_duration,
            kept.iter().map(|k| k.2 as u64).sum::<u64>()
        );
        if let (Some((seg, mt)), Some(shift)) = (t.elst, ts.media_time) {
            assert_eq!(mt, shift as i64);
            let base = orig[from].0;
            let end = kept
                .iter()
                .map(|&(d, p, dl)| p - d + d - base + dl + shift as i64)
                .max()
                .unwrap();
            let want = (end - shift as i64) as u64 * u64::from(spec.movie_timescale)
                / u64::from(ts.timescale);
            assert_eq!(seg, want);
            assert_eq!(t.tkhd_duration, seg);
        }
        if ts.sdtp {
            assert!(t.stbl_kinds.contains(b"sdtp"));
        }
        longest = longest.max(t.tkhd_duration);
    }
    assert_eq!(mvhd_duration, longest);
}

#[test]
fn snaps_to_key_frame_and_cuts_every_track() {
    let spec = Spec::av();
    check(&spec, Some(2.0), Some(5.0));
    let want = model(&spec, 2.0, Some(5.0));
    assert_eq!(want[0].0, 30, "key frame at 1.2 s");
    assert_eq!(want[1].0, 56, "audio sample containing 1.2 s");
}

#[test]
fn various_intervals_match_the_model() {
    let spec = Spec::av();
    for (s, e) in [
        (None, None),
        (Some(0.0), Some(0.01)),
        (Some(1.2), None),
        (Some(2.5), Some(2.6)),
        (Some(9.9), None),
        (None, Some(3.33)),
    ] {
        check(&spec, s, e);
    }
}

#[test]
fn faststart_sources_and_partial_chunks() {
    let mut spec = Spec::av();
    spec.moov_first = true;
    spec.tracks[0] = TrackSpec::video(250, 32);
    check(&spec, Some(2.0), Some(7.3));
    let (out, _) = run(&spec, Some(2.0), Some(7.3)).unwrap();
    let (_, tracks, _) = read_file(&out);
    assert!(
        tracks[0].stsc_entries <= 3,
        "partial first and last chunks add at most two entries"
    );
}

#[test]
fn audio_only_fixed_sizes_and_no_edit_list() {
    let mut a = TrackSpec::audio(300);
    a.sizes = vec![10; 300];
    a.fixed_size = true;
    a.media_time = None;
    let spec = Spec {
        tracks: vec![a],
        ..Spec::av()
    };
    check(&spec, Some(2.0), Some(3.0));
    let want = model(&spec, 2.0, Some(3.0));
    assert_eq!(want[0], (93, 141));
}

#[test]
fn interval_errors_are_distinguished() {
    let spec = Spec::av();
    let err = |s, e| run(&spec, s, e).err().unwrap();
    assert!(matches!(
        err(Some(100.0), None),
        TrimError::StartPastEnd { .. }
    ));
    assert!(matches!(
        err(Some(3.0), Some(3.0)),
        TrimError::EndNotAfterStart { .. }
    ));
    assert!(matches!(err(Some(-1.0), None), TrimError::InvalidTime(_)));
    assert!(matches!(
        err(Some(f64::NAN), None),
        TrimError::InvalidTime(_)
    ));
    assert!(matches!(
        err(None, Some(f64::INFINITY)),
        TrimError::InvalidTime(_)
    ));
    for e in [err(Some(100.0), None), err(Some(3.0), Some(2.0))] {
        assert!(e.is_empty_interval());
        assert!(!e.to_string().is_empty());
    }
    let file = build(&spec);
    let (boxes, moov, mut bytes) = moov_of(&file);
    let at = bytes.windows(4).position(|w| w == b"stsz").unwrap();
    bytes[at] = b'x';
    let e = trim(
        &boxes,
        moov,
        &bytes,
        file.len() as u64,
        Some(1.0),
        None,
        &Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(e, TrimError::Parse(Mp4Error::Malformed(_))), "{e}");
    assert!(!e.is_empty_interval());
}

#[test]
fn large_output_uses_co64_and_a_64_bit_mdat_header() {
    let mut spec = Spec::av();
    spec.tracks = vec![TrackSpec::video(250, 30)];
    spec.co64 = true;
    let offsets: Vec<u64> = (0..50).map(|k| 100 + k * 100_000_000).collect();
    let moov = moov(&spec, &[offsets]);
    let mdat_end = 5_000_000_000u64;
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
    let size = boxes[2].range.end;
    let p = trim(
        &boxes,
        boxes[2].range.clone(),
        &moov,
        size,
        None,
        None,
        &Limits::default(),
    )
    .unwrap();
    let [Segment::Source { offset: 0, len: 32 }, Segment::Synthetic(head), Segment::Source { offset: 100, len }] =
        p.segments()
    else {
        panic!("{:?}", p.segments().len())
    };
    let moov_len = u32_at(head, 0) as usize;
    let mdat = &head[moov_len..];
    assert_eq!(mdat.len(), 16);
    assert_eq!((u32_at(mdat, 0), &mdat[4..8]), (1, &b"mdat"[..]));
    assert_eq!(u64_at(mdat, 8), len + 16);
    let mut file = bx(b"ftyp", FTYP);
    file.extend_from_slice(&head[..moov_len]);
    let (_, tracks, _) = read_file(&file);
    assert!(tracks[0].stbl_kinds.contains(b"co64"));
    let last = tracks[0]
        .samples
        .iter()
        .rev()
        .find(|s| s.offset > 0)
        .unwrap();
    assert_eq!(
        last.offset,
        32 + head.len() as u64
            + 49 * 100_000_000
            + ((245..249).map(|i| 40 + (i * 7) % 50).sum::<u64>())
    );
    assert_eq!(p.size(), 32 + head.len() as u64 + len);
}
