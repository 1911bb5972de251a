//! Cutting one track to samples [from, to): new sample tables, partial first/last chunks, and the bytes they span.

use std::ops::Range;

use super::bits::{capacity, fourcc_at, Reader};
use super::error::Mp4Error;
use super::headers::Edit;
use super::tables::{clip_runs, full_box, Sizes, Table};
use super::track::Track;
use super::tree::Node;

/// Tables indexed by sample number that we cannot trim cheaply: dropped rather than left lying.
const DROPPED: [[u8; 4]; 6] = [*b"stps", *b"stsh", *b"cslg", *b"padb", *b"stdp", *b"subs"];

/// A chunk that keeps some samples: `count` samples starting `skip` samples into it.
struct KeptChunk {
    chunk: u32,
    first_sample: u32,
    skip: u32,
    count: u32,
    sdi: u32,
}

/// The rebuilt tables of one track.
pub(crate) struct TrackCut {
    pub from: u32,
    pub to: u32,
    pub stts: Vec<(u32, u32)>,
    pub ctts: Option<(u8, Vec<(u32, u32)>)>,
    pub stss: Option<Vec<u32>>,
    pub stsc: Vec<[u32; 3]>,
    /// Original file offsets of the kept chunks (the first one moved past skipped samples).
    pub chunk_offsets: Vec<u64>,
    /// Original file bytes spanned by the kept samples.
    pub data: Option<Range<u64>>,
    pub media_duration: u64,
    /// Latest composition end (dts + duration + ctts offset) of the kept samples, media units.
    pub presentation_end: i128,
}

/// Cuts `track` to samples `[from, to)` (`to` clamped to the sample count).
pub(crate) fn cut_track(track: &Track<'_>, from: u32, to: u32) -> Result<TrackCut, Mp4Error> {
    let to = to.min(track.samples);
    let from = from.min(to);
    let stts = clip_runs(&track.stts, from, to)?;
    let ctts = track
        .ctts
        .as_ref()
        .map(|(v, t)| clip_runs(t, from, to).map(|runs| (*v, runs)))
        .transpose()?;
    if let Some((_, runs)) = &ctts {
        if run_total(runs) != u64::from(to - from) {
            return Err(Mp4Error::malformed("ctts does not cover every sample"));
        }
    }
    let kept = kept_chunks(track, from, to)?;
    if kept.iter().map(|k| u64::from(k.count)).sum::<u64>() != u64::from(to - from) {
        return Err(Mp4Error::malformed("chunks do not hold every sample"));
    }
    let (chunk_offsets, data) = locate(track, &kept)?;
    let media_duration = stts.iter().try_fold(0u64, |acc, &(c, d)| {
        acc.checked_add(u64::from(c) * u64::from(d))
            .ok_or_else(|| Mp4Error::malformed("duration overflows"))
    })?;
    Ok(TrackCut {
        from,
        to,
        presentation_end: presentation_end(&stts, ctts.as_ref().map(|(_, r)| r.as_slice())),
        stss: track
            .stss
            .as_ref()
            .map(|t| renumber_sync(t, from, to))
            .transpose()?,
        stsc: merge_stsc(&kept),
        stts,
        ctts,
        chunk_offsets,
        data,
        media_duration,
    })
}

fn run_total(runs: &[(u32, u32)]) -> u64 {
    runs.iter().map(|&(c, _)| u64::from(c)).sum()
}

/// Sync samples inside the cut, renumbered from 1.
fn renumber_sync(stss: &Table<'_>, from: u32, to: u32) -> Result<Vec<u32>, Mp4Error> {
    let mut out = Vec::with_capacity(stss.len() as usize);
    for i in 0..stss.len() {
        let s = stss.u32(i, 0)?;
        if s > from && s <= to {
            out.push(s - from);
        }
    }
    Ok(out)
}

/// The last sync sample at or before sample `i` (0-based).
pub(crate) fn key_at_or_before(track: &Track<'_>, i: u32) -> Result<Option<u32>, Mp4Error> {
    let Some(stss) = &track.stss else {
        return Ok(Some(i));
    };
    let mut best = None;
    for e in 0..stss.len() {
        let s = stss.u32(e, 0)?;
        if s >= 1 && s - 1 <= i && best.is_none_or(|b| s - 1 > b) {
            best = Some(s - 1);
        }
    }
    Ok(best)
}

/// Walks stsc to the chunks that hold samples `[from, to)`; bounded by the chunks in the file.
fn kept_chunks(t: &Track<'_>, from: u32, to: u32) -> Result<Vec<KeptChunk>, Mp4Error> {
    let (from, to) = (u64::from(from), u64::from(to));
    let n_chunks = u64::from(t.chunks.len());
    let mut out = Vec::new();
    let mut sample = 0u64;
    for e in 0..t.stsc.len() {
        if sample >= to {
            break;
        }
        let first = u64::from(t.stsc.u32(e, 0)?);
        let spc = u64::from(t.stsc.u32(e, 1)?).max(1);
        let sdi = t.stsc.u32(e, 2)?;
        let next = match e + 1 < t.stsc.len() {
            true => u64::from(t.stsc.u32(e + 1, 0)?),
            false => n_chunks + 1,
        };
        let run_chunks = next.saturating_sub(first);
        let skip = from.saturating_sub(sample) / spc;
        let skip = skip.min(run_chunks);
        let (mut c, mut s) = (first.saturating_sub(1) + skip, sample + skip * spc);
        while c + 1 < next && s < to {
            let (lo, hi) = (s.max(from), (s + spc).min(to));
            if lo < hi {
                out.push(KeptChunk {
                    chunk: c as u32,
                    first_sample: s as u32,
                    skip: (lo - s) as u32,
                    count: (hi - lo) as u32,
                    sdi,
                });
            }
            c += 1;
            s += spc;
        }
        sample = sample.saturating_add(run_chunks.saturating_mul(spc));
    }
    Ok(out)
}

/// File offsets of the kept chunks and the byte range they span.
fn locate(t: &Track<'_>, kept: &[KeptChunk]) -> Result<(Vec<u64>, Option<Range<u64>>), Mp4Error> {
    let mut offsets = Vec::with_capacity(kept.len());
    let mut span: Option<Range<u64>> = None;
    let overflow = || Mp4Error::malformed("chunk extends past 2^64");
    for k in kept {
        let lo = k.first_sample + k.skip;
        let start = t
            .chunks
            .get(k.chunk)?
            .checked_add(t.sizes.sum(k.first_sample, lo)?)
            .ok_or_else(overflow)?;
        let end = start
            .checked_add(t.sizes.sum(lo, lo + k.count)?)
            .ok_or_else(overflow)?;
        offsets.push(start);
        span = Some(match span {
            Some(r) => r.start.min(start)..r.end.max(end),
            None => start..end,
        });
    }
    Ok((offsets, span))
}

/// One stsc entry per run of kept chunks with the same sample count and description.
fn merge_stsc(kept: &[KeptChunk]) -> Vec<[u32; 3]> {
    let mut out: Vec<[u32; 3]> = Vec::new();
    for (i, k) in kept.iter().enumerate() {
        let same = out.last().is_some_and(|l| l[1] == k.count && l[2] == k.sdi);
        if !same {
            out.push([i as u32 + 1, k.count, k.sdi]);
        }
    }
    out
}

/// Merges stts and ctts runs; within a merged run the last sample ends latest, so the loop is per run, not per sample.
fn presentation_end(stts: &[(u32, u32)], ctts: Option<&[(u32, u32)]>) -> i128 {
    let mut ci = ctts.unwrap_or(&[]).iter().copied();
    let mut cur = ci.next();
    let (mut dts, mut end) = (0i128, 0i128);
    for &(count, delta) in stts {
        let (mut left, delta) = (count, i128::from(delta));
        while left > 0 {
            let (cn, off) = cur.unwrap_or((left, 0));
            let n = left.min(cn);
            if n > 0 {
                // Version-0 offsets are read as signed too, as players do.
                end = end.max(dts + i128::from(n) * delta + i128::from(off as i32));
                dts += i128::from(n) * delta;
                left -= n;
            }
            cur = if cn > n {
                Some((cn - n, off))
            } else {
                ci.next()
            };
        }
    }
    end
}

/// The stbl children for the cut: rebuilt tables in place of the old ones, a placeholder chunk table.
pub(crate) fn stbl_children<'t>(
    stbl: &'t Node<'t>,
    t: &Track<'_>,
    cut: &TrackCut,
) -> Result<Vec<Node<'t>>, Mp4Error> {
    let mut out = Vec::with_capacity(stbl.children().len());
    let mut chunk_done = false;
    for child in stbl.children() {
        let kind = child.kind();
        let node = match &kind {
            b"stts" => Some(Node::leaf(kind, runs_box(0, &cut.stts))),
            b"ctts" => cut
                .ctts
                .as_ref()
                .map(|(v, r)| Node::leaf(kind, runs_box(*v, r))),
            b"stss" => cut.stss.as_ref().map(|s| Node::leaf(kind, stss_box(s))),
            b"stsc" => Some(Node::leaf(kind, stsc_box(&cut.stsc))),
            b"stsz" => Some(Node::leaf(kind, stsz_box(&t.sizes, cut.from, cut.to)?)),
            b"stco" | b"co64" if !chunk_done => {
                chunk_done = true;
                Some(Node::leaf(*b"stco", Vec::new()))
            }
            b"stco" | b"co64" => None,
            b"sdtp" => sdtp_box(child.payload().unwrap_or(&[]), cut.from, cut.to)
                .map(|p| Node::leaf(kind, p)),
            b"sbgp" => sbgp_box(child.payload().unwrap_or(&[]), cut.from, cut.to)
                .map(|p| Node::leaf(kind, p)),
            k if DROPPED.contains(k) => None,
            _ => Some(child.clone()),
        };
        out.extend(node);
    }
    Ok(out)
}

fn runs_box(version: u8, runs: &[(u32, u32)]) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + 8 * runs.len());
    p.extend_from_slice(&[version, 0, 0, 0]);
    p.extend_from_slice(&(runs.len() as u32).to_be_bytes());
    for &(c, v) in runs {
        p.extend_from_slice(&c.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    p
}

fn stss_box(sync: &[u32]) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + 4 * sync.len());
    p.extend_from_slice(&[0; 4]);
    p.extend_from_slice(&(sync.len() as u32).to_be_bytes());
    sync.iter()
        .for_each(|s| p.extend_from_slice(&s.to_be_bytes()));
    p
}

fn stsc_box(entries: &[[u32; 3]]) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + 12 * entries.len());
    p.extend_from_slice(&[0; 4]);
    p.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    entries
        .iter()
        .flatten()
        .for_each(|v| p.extend_from_slice(&v.to_be_bytes()));
    p
}

fn stsz_box(sizes: &Sizes<'_>, from: u32, to: u32) -> Result<Vec<u8>, Mp4Error> {
    let n = to - from;
    let (fixed, raw) = match sizes {
        Sizes::Fixed { size, .. } => (*size, &[][..]),
        Sizes::PerSample(t) => (0, t.raw(from, to)?),
    };
    let mut p = Vec::with_capacity(12 + raw.len());
    p.extend_from_slice(&[0; 4]);
    p.extend_from_slice(&fixed.to_be_bytes());
    p.extend_from_slice(&n.to_be_bytes());
    p.extend_from_slice(raw);
    Ok(p)
}

/// sbgp clipped to the cut; `None` (drop the box) if it does not parse.
fn sbgp_box(payload: &[u8], from: u32, to: u32) -> Option<Vec<u8>> {
    let fb = full_box(payload, "sbgp").ok()?;
    let head_len = if fb.version == 1 { 8 } else { 4 };
    let mut r = Reader::new(fb.body, "sbgp");
    let head = r.bytes(head_len).ok()?;
    fourcc_at(head, 0)?;
    let runs = clip_runs(&Table::parse(r.rest(), 8, "sbgp").ok()?, from, to).ok()?;
    let mut p = Vec::with_capacity(capacity(runs.len() as u64, 1, payload.len()) * 8 + 16);
    p.extend_from_slice(payload.get(..4)?);
    p.extend_from_slice(head);
    p.extend_from_slice(&(runs.len() as u32).to_be_bytes());
    for (c, v) in runs {
        p.extend_from_slice(&c.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    Some(p)
}

/// sdtp has one byte per sample after the version/flags; `None` (drop) if it is not that long.
fn sdtp_box(payload: &[u8], from: u32, to: u32) -> Option<Vec<u8>> {
    let (head, bytes) = (payload.get(..4)?, payload.get(4..)?);
    let kept = bytes.get(from as usize..to as usize)?;
    let mut p = Vec::with_capacity(4 + kept.len());
    p.extend_from_slice(head);
    p.extend_from_slice(kept);
    Some(p)
}

/// Samples sharing one stts delta and one ctts offset; their presentation times increase.
struct MergedRun {
    first: u64,
    n: u64,
    /// Presentation time of the run's first sample (dts + ctts offset - edit shift).
    pts: i128,
    delta: i128,
}

impl MergedRun {
    /// How many of the run's samples from `k0` on are presented before `limit`.
    fn shown_before(&self, k0: u64, limit: i128) -> u64 {
        let left = self.n.saturating_sub(k0);
        let base = self.pts + i128::from(k0) * self.delta;
        if base >= limit {
            0
        } else if self.delta == 0 {
            left
        } else {
            u64::try_from((limit - base + self.delta - 1) / self.delta)
                .map_or(left, |k| k.min(left))
        }
    }
}

/// Visits merged stts/ctts runs in decode order until `f` returns true; O(runs), never per sample.
fn walk_merged(t: &Track<'_>, mut f: impl FnMut(&MergedRun) -> bool) -> Result<(), Mp4Error> {
    let shift = match t.edit {
        Edit::Shift(s) => i128::from(s),
        Edit::None | Edit::Unmappable => 0,
    };
    let mut offsets = CttsCursor::new(t.ctts.as_ref().map(|(_, table)| *table));
    let (mut first, mut dts) = (0u64, 0i128);
    for i in 0..t.stts.len() {
        let count = u64::from(t.stts.u32(i, 0)?).min(u64::from(t.samples).saturating_sub(first));
        let delta = i128::from(t.stts.u32(i, 1)?);
        let end = first + count;
        while first < end {
            let (n, off) = offsets.take(end - first)?;
            let run = MergedRun {
                first,
                n,
                pts: dts + off - shift,
                delta,
            };
            if f(&run) {
                return Ok(());
            }
            dts += i128::from(n) * delta;
            first += n;
        }
    }
    Ok(())
}

/// One past the last sample (decode order) to keep for an interval ending at `end` (media units).
///
/// Cutting at a decode time would drop B-frames shown before `end`; cutting right after the last
/// sample shown before `end` keeps that sample's forward reference but may skip B-frames shown
/// between them. So: keep up to the last sample shown before `end`, then extend while the next
/// sample fills a gap below the latest kept presentation time. The result is decodable and
/// gap-free in presentation order.
pub(crate) fn end_of_presentation(t: &Track<'_>, end: u64) -> Result<u32, Mp4Error> {
    let limit = i128::from(end);
    let mut to = 0u64;
    walk_merged(t, |r| {
        let shown = r.shown_before(0, limit);
        if shown > 0 {
            to = to.max(r.first + shown);
        }
        false
    })?;
    let mut latest = i128::MIN;
    walk_merged(t, |r| {
        let kept = r.n.min(to.saturating_sub(r.first));
        if kept > 0 {
            latest = latest.max(r.pts + i128::from(kept - 1) * r.delta);
        }
        r.first + r.n >= to
    })?;
    walk_merged(t, |r| {
        if r.first + r.n <= to {
            return false;
        }
        let k0 = to - r.first;
        let fill = r.shown_before(k0, latest);
        to += fill;
        fill < r.n - k0
    })?;
    Ok(u32::try_from(to).unwrap_or(t.samples).min(t.samples))
}

/// Walks ctts runs alongside stts; a missing or exhausted ctts means offset 0.
struct CttsCursor<'a> {
    table: Option<Table<'a>>,
    next: u32,
    left: u64,
    offset: i128,
}

impl<'a> CttsCursor<'a> {
    fn new(table: Option<Table<'a>>) -> Self {
        CttsCursor {
            table,
            next: 0,
            left: 0,
            offset: 0,
        }
    }

    /// Up to `want` samples sharing one offset, and that offset.
    fn take(&mut self, want: u64) -> Result<(u64, i128), Mp4Error> {
        while self.left == 0 {
            match &self.table {
                Some(t) if self.next < t.len() => {
                    self.left = u64::from(t.u32(self.next, 0)?);
                    self.offset = i128::from(t.u32(self.next, 1)? as i32);
                    self.next += 1;
                }
                _ => {
                    self.left = u64::MAX;
                    self.offset = 0;
                }
            }
        }
        let n = want.min(self.left);
        self.left -= n;
        Ok((n, self.offset))
    }
}
