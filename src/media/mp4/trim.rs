//! Time-interval views: ftyp + rebuilt moov + one mdat over a single contiguous source range (nginx mp4 semantics).

use std::ops::Range;

use bytes::Bytes;

use super::bits::{header_len, put_header};
use super::cut::{cut_track, end_of_presentation, key_at_or_before, stbl_children, TrackCut};
use super::error::{Mp4Error, TrimError};
use super::headers::{edts, timescale, with_duration, Edit, MID_MVHD_MDHD, MID_TKHD};
use super::offsets::{settle, ChunkTable};
use super::presented::{Presented, Segment};
use super::scan::{check_layout, TopBox};
use super::track::{parse_track, Track};
use super::tree::{parse_moov, Node};
use super::Limits;

/// Presents `[start, end)` seconds of the file as a complete MP4 (`None` = from 0 / to the end).
///
/// The start snaps back to the key frame at or before it in the first video track (or the first track),
/// and every track is cut to the same span by decode time.
#[allow(clippy::too_many_arguments)]
pub fn trim(
    layout_boxes: &[TopBox],
    moov: Range<u64>,
    moov_bytes: &[u8],
    file_size: u64,
    start: Option<f64>,
    end: Option<f64>,
    limits: &Limits,
) -> Result<Presented, TrimError> {
    let (start, end) = check_times(start, end)?;
    check_layout(layout_boxes, &moov, moov_bytes, file_size, limits)?;
    let tree = parse_moov(moov_bytes, limits)?;
    if tree.child(b"mvex").is_some() {
        return Err(Mp4Error::Unsupported("fragmented movie (mvex)".into()).into());
    }
    let mvhd = tree
        .child(b"mvhd")
        .and_then(Node::payload)
        .ok_or_else(|| Mp4Error::malformed("moov without mvhd"))?;
    let movie_ts = timescale(mvhd, "mvhd")?;
    let traks: Vec<&Node<'_>> = tree
        .children()
        .iter()
        .filter(|c| &c.kind() == b"trak")
        .collect();
    if traks.is_empty() || traks.len() > limits.max_tracks {
        return Err(Mp4Error::Unsupported(format!("{} tracks", traks.len())).into());
    }
    let tracks = traks
        .iter()
        .map(|t| parse_track(t, limits))
        .collect::<Result<Vec<_>, _>>()?;
    let cuts = select(&tracks, start, end)?
        .into_iter()
        .zip(&tracks)
        .map(|((from, to), t)| cut_track(t, from, to))
        .collect::<Result<Vec<_>, _>>()?;
    let data = data_range(&cuts, layout_boxes)?;
    let mut out = rebuild_moov(&tree, &traks, &tracks, &cuts, movie_ts)?;
    assemble(&mut out, cuts, data, layout_boxes).map_err(TrimError::from)
}

fn check_times(start: Option<f64>, end: Option<f64>) -> Result<(f64, Option<f64>), TrimError> {
    let start = start.unwrap_or(0.0);
    for t in std::iter::once(start).chain(end) {
        if !t.is_finite() || t < 0.0 {
            return Err(TrimError::InvalidTime(t));
        }
    }
    match end {
        Some(e) if e <= start => Err(TrimError::EndNotAfterStart { start, end: e }),
        _ => Ok((start, end)),
    }
}

/// Seconds to track units; `as` saturates, so huge values cannot wrap.
fn units(secs: f64, timescale: u32, round_up: bool) -> u64 {
    let v = secs * f64::from(timescale);
    (if round_up { v.ceil() } else { v.floor() }) as u64
}

fn rescale(v: u64, from: u32, to: u32) -> u64 {
    let r = u128::from(v) * u128::from(to) / u128::from(from.max(1));
    u64::try_from(r).unwrap_or(u64::MAX)
}

/// Sample range `[from, to)` of every track.
fn select(
    tracks: &[Track<'_>],
    start: f64,
    end: Option<f64>,
) -> Result<Vec<(u32, u32)>, TrimError> {
    let with_samples = |t: &&Track<'_>| t.samples > 0;
    let reference = tracks
        .iter()
        .filter(with_samples)
        .find(|t| &t.handler == b"vide")
        .or_else(|| tracks.iter().find(with_samples))
        .ok_or(TrimError::NoSamples)?;
    let ts = reference.timescale;
    let Some(at) = reference.timeline.sample_at(units(start, ts, false))? else {
        let duration = reference.timeline.duration()? as f64 / f64::from(ts);
        return Err(TrimError::StartPastEnd { start, duration });
    };
    let key = key_at_or_before(reference, at)?
        .ok_or_else(|| Mp4Error::Unsupported("no key frame at or before the start".into()))?;
    let t0 = reference.timeline.dts(key)?;
    let mut out = Vec::with_capacity(tracks.len());
    for t in tracks {
        let from = match std::ptr::eq(t, reference) {
            true => key,
            false => t
                .timeline
                .sample_at(rescale(t0, ts, t.timescale))?
                .unwrap_or(t.samples),
        };
        let to = match end {
            Some(e) => end_of_presentation(t, units(e, t.timescale, true))?,
            None => t.samples,
        };
        if std::ptr::eq(t, reference) && to <= from {
            return Err(TrimError::NoSamples);
        }
        out.push((from, to.max(from)));
    }
    Ok(out)
}

/// The one source range the output mdat carries: all kept samples of all tracks.
fn data_range(cuts: &[TrackCut], boxes: &[TopBox]) -> Result<Range<u64>, TrimError> {
    let data = cuts
        .iter()
        .filter_map(|c| c.data.clone())
        .reduce(|a, b| a.start.min(b.start)..a.end.max(b.end))
        .ok_or(TrimError::NoSamples)?;
    let mdats = boxes.iter().filter(|b| &b.kind == b"mdat");
    let lo = mdats
        .clone()
        .map(|b| b.range.start)
        .min()
        .unwrap_or(u64::MAX);
    let hi = mdats.map(|b| b.range.end).max().unwrap_or(0);
    if data.start < lo || data.end > hi {
        return Err(Mp4Error::malformed("sample data lies outside the mdat boxes").into());
    }
    Ok(data)
}

fn rebuild_moov<'t>(
    tree: &'t Node<'t>,
    traks: &[&'t Node<'t>],
    tracks: &[Track<'_>],
    cuts: &[TrackCut],
    movie_ts: u32,
) -> Result<Node<'t>, Mp4Error> {
    let mut new_traks = Vec::with_capacity(traks.len());
    let mut movie_duration = 0;
    for ((trak, track), cut) in traks.iter().zip(tracks).zip(cuts) {
        let (node, duration) = rebuild_trak(trak, track, cut, movie_ts)?;
        movie_duration = movie_duration.max(duration);
        new_traks.push(node);
    }
    let mut new_traks = new_traks.into_iter();
    let mut children = Vec::with_capacity(tree.children().len());
    for child in tree.children() {
        match &child.kind() {
            b"mvhd" => {
                let p = with_duration(
                    child.payload().unwrap_or(&[]),
                    MID_MVHD_MDHD,
                    movie_duration,
                    "mvhd",
                )?;
                children.push(Node::leaf(*b"mvhd", p));
            }
            b"trak" => children.extend(new_traks.next()),
            _ => children.push(child.clone()),
        }
    }
    Ok(Node::Container {
        kind: *b"moov",
        children,
    })
}

/// A rebuilt trak and its duration in movie units.
fn rebuild_trak<'t>(
    trak: &'t Node<'t>,
    track: &Track<'_>,
    cut: &TrackCut,
    movie_ts: u32,
) -> Result<(Node<'t>, u64), Mp4Error> {
    let to_movie = |v: i128| rescale(u64::try_from(v).unwrap_or(0), track.timescale, movie_ts);
    // Only a single normal-rate edit is kept: its media_time (B-frame delay, AAC priming) still applies to
    // the cut media. Multi-segment and empty edits describe the original timeline and are dropped.
    let edit = match track.edit {
        Edit::Shift(t) if cut.presentation_end > i128::from(t) => {
            let d = to_movie(cut.presentation_end - i128::from(t));
            Some((edts(d, t), d))
        }
        _ => None,
    };
    let duration = edit
        .as_ref()
        .map_or(to_movie(i128::from(cut.media_duration)), |e| e.1);
    let mut edit = edit.map(|e| e.0);
    let mut children = Vec::with_capacity(trak.children().len());
    for child in trak.children() {
        match &child.kind() {
            b"tkhd" => {
                let p = with_duration(child.payload().unwrap_or(&[]), MID_TKHD, duration, "tkhd")?;
                children.push(Node::leaf(*b"tkhd", p));
            }
            b"edts" => children.extend(edit.take()),
            b"mdia" => children.push(rebuild_mdia(child, track, cut)?),
            _ => children.push(child.clone()),
        }
    }
    Ok((
        Node::Container {
            kind: *b"trak",
            children,
        },
        duration,
    ))
}

fn rebuild_mdia<'t>(
    mdia: &'t Node<'t>,
    track: &Track<'_>,
    cut: &TrackCut,
) -> Result<Node<'t>, Mp4Error> {
    let mut children = Vec::with_capacity(mdia.children().len());
    for child in mdia.children() {
        children.push(match &child.kind() {
            b"mdhd" => {
                let p = with_duration(
                    child.payload().unwrap_or(&[]),
                    MID_MVHD_MDHD,
                    cut.media_duration,
                    "mdhd",
                )?;
                Node::leaf(*b"mdhd", p)
            }
            b"minf" => {
                let mut minf = Vec::with_capacity(child.children().len());
                for c in child.children() {
                    minf.push(match &c.kind() {
                        b"stbl" => Node::Container {
                            kind: *b"stbl",
                            children: stbl_children(c, track, cut)?,
                        },
                        _ => c.clone(),
                    });
                }
                Node::Container {
                    kind: *b"minf",
                    children: minf,
                }
            }
            _ => child.clone(),
        });
    }
    Ok(Node::Container {
        kind: *b"mdia",
        children,
    })
}

/// Settles chunk offsets against the final layout and lays out ftyp, moov, mdat header and media.
fn assemble(
    moov: &mut Node<'_>,
    cuts: Vec<TrackCut>,
    data: Range<u64>,
    boxes: &[TopBox],
) -> Result<Presented, Mp4Error> {
    let ftyp = boxes
        .iter()
        .find(|b| &b.kind == b"ftyp")
        .map(|b| b.range.clone());
    let ftyp_len = ftyp.as_ref().map_or(0, |r| r.end - r.start);
    let payload_len = data.end - data.start;
    let mdat_header = header_len(payload_len);
    let mut tables: Vec<ChunkTable> = cuts
        .into_iter()
        .map(|c| ChunkTable {
            offsets: c.chunk_offsets,
            wide: false,
        })
        .collect();
    let map = |moov_len: u64, x: u64| {
        x.checked_sub(data.start)
            .and_then(|rel| {
                rel.checked_add(ftyp_len)?
                    .checked_add(moov_len)?
                    .checked_add(mdat_header)
            })
            .ok_or_else(|| Mp4Error::malformed("chunk offset outside the kept data"))
    };
    settle(moov, &mut tables, &map)?;
    let mut bytes = moov.encode()?;
    put_header(&mut bytes, *b"mdat", payload_len);
    let mut segments = Vec::with_capacity(3);
    if let Some(r) = ftyp {
        segments.push(Segment::Source {
            offset: r.start,
            len: ftyp_len,
        });
    }
    segments.push(Segment::Synthetic(Bytes::from(bytes)));
    segments.push(Segment::Source {
        offset: data.start,
        len: payload_len,
    });
    Presented::new(segments)
}
