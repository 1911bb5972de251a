//! Test support: a tiny MP4 builder, a reference reader of sample tables, and helpers to run the views.
#![allow(dead_code)]

use crate::media::mp4::{Layout, Limits, Piece, Presented, ScanStep, TopBox, TopLevelScan};

pub fn bx(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut v = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(kind);
    v.extend_from_slice(payload);
    v
}

pub fn bx64(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut v = 1u32.to_be_bytes().to_vec();
    v.extend_from_slice(kind);
    v.extend_from_slice(&((payload.len() + 16) as u64).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

pub fn full(version: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![version, 0, 0, 0];
    v.extend_from_slice(body);
    v
}

pub fn be(vals: &[u32]) -> Vec<u8> {
    vals.iter().flat_map(|v| v.to_be_bytes()).collect()
}

#[derive(Clone, Debug)]
pub struct TrackSpec {
    pub handler: [u8; 4],
    pub timescale: u32,
    pub sizes: Vec<u32>,
    pub deltas: Vec<u32>,
    pub ctts: Option<Vec<i32>>,
    /// 1-based sync sample numbers; `None` = no stss (all sync).
    pub sync: Option<Vec<u32>>,
    pub spc: u32,
    pub media_time: Option<u64>,
    pub fixed_size: bool,
    pub sdtp: bool,
}

impl TrackSpec {
    /// 25 fps video, timescale 12800, key frame every `gop` samples, ctts like x264 with B-frames.
    pub fn video(n: u32, gop: u32) -> Self {
        TrackSpec {
            handler: *b"vide",
            timescale: 12800,
            sizes: (0..n).map(|i| 40 + (i * 7) % 50).collect(),
            deltas: vec![512; n as usize],
            ctts: Some(
                (0..n)
                    .map(|i| if i % 3 == 0 { 1024 } else { 512 })
                    .collect(),
            ),
            sync: Some((0..n).filter(|i| i % gop == 0).map(|i| i + 1).collect()),
            spc: 5,
            media_time: Some(1024),
            fixed_size: false,
            sdtp: true,
        }
    }

    /// 48 kHz AAC-like audio: 1024-sample frames, priming edit of 1024.
    pub fn audio(n: u32) -> Self {
        TrackSpec {
            handler: *b"soun",
            timescale: 48000,
            sizes: (0..n).map(|i| 10 + i % 13).collect(),
            deltas: vec![1024; n as usize],
            ctts: None,
            sync: None,
            spc: 7,
            media_time: Some(1024),
            fixed_size: false,
            sdtp: false,
        }
    }

    pub fn duration(&self) -> u64 {
        self.deltas.iter().map(|&d| u64::from(d)).sum()
    }

    fn chunks(&self) -> Vec<std::ops::Range<usize>> {
        let n = self.sizes.len();
        (0..n)
            .step_by(self.spc as usize)
            .map(|s| s..(s + self.spc as usize).min(n))
            .collect()
    }
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub tracks: Vec<TrackSpec>,
    pub moov_first: bool,
    pub mdat64: bool,
    pub co64: bool,
    pub movie_timescale: u32,
    /// A free box between ftyp and mdat, as ffmpeg writes.
    pub free: bool,
    /// A udta child with a 64-bit header inside moov.
    pub udta64: bool,
}

impl Spec {
    pub fn av() -> Self {
        Spec {
            tracks: vec![TrackSpec::video(250, 30), TrackSpec::audio(470)],
            moov_first: false,
            mdat64: false,
            co64: false,
            movie_timescale: 1000,
            free: true,
            udta64: false,
        }
    }
}

/// Sample bytes carry their identity so tests can check every offset lands on the right sample.
pub fn sample_bytes(track: usize, sample: usize, size: u32) -> Vec<u8> {
    let tag = [b'T', track as u8, (sample >> 8) as u8, sample as u8];
    (0..size as usize).map(|i| tag[i % 4]).collect()
}

fn runs<T: PartialEq + Copy>(vals: &[T]) -> Vec<(u32, T)> {
    let mut out: Vec<(u32, T)> = Vec::new();
    for &v in vals {
        match out.last_mut() {
            Some((c, last)) if *last == v => *c += 1,
            _ => out.push((1, v)),
        }
    }
    out
}

fn stbl(t: &TrackSpec, offsets: &[u64], co64: bool) -> Vec<u8> {
    let mut s = bx(b"stsd", &full(0, &be(&[0])));
    let stts = runs(&t.deltas);
    let mut p = be(&[stts.len() as u32]);
    stts.iter().for_each(|(c, d)| p.extend(be(&[*c, *d])));
    s.extend(bx(b"stts", &full(0, &p)));
    if let Some(ctts) = &t.ctts {
        let r = runs(ctts);
        let mut p = be(&[r.len() as u32]);
        r.iter().for_each(|(c, o)| p.extend(be(&[*c, *o as u32])));
        s.extend(bx(b"ctts", &full(0, &p)));
    }
    if let Some(sync) = &t.sync {
        let mut p = be(&[sync.len() as u32]);
        p.extend(be(sync));
        s.extend(bx(b"stss", &full(0, &p)));
    }
    if t.sdtp {
        let p: Vec<u8> = (0..t.sizes.len()).map(|i| (i % 251) as u8).collect();
        s.extend(bx(b"sdtp", &full(0, &p)));
    }
    let chunks = t.chunks();
    let mut stsc = vec![(1u32, t.spc)];
    if let Some(last) = chunks.last() {
        if last.len() as u32 != t.spc {
            stsc.push((chunks.len() as u32, last.len() as u32));
        }
    }
    let mut p = be(&[stsc.len() as u32]);
    stsc.iter().for_each(|(f, n)| p.extend(be(&[*f, *n, 1])));
    s.extend(bx(b"stsc", &full(0, &p)));
    let p = if t.fixed_size {
        be(&[t.sizes[0], t.sizes.len() as u32])
    } else {
        let mut p = be(&[0, t.sizes.len() as u32]);
        p.extend(be(&t.sizes));
        p
    };
    s.extend(bx(b"stsz", &full(0, &p)));
    let mut p = be(&[offsets.len() as u32]);
    if co64 {
        offsets.iter().for_each(|o| p.extend(o.to_be_bytes()));
        s.extend(bx(b"co64", &full(0, &p)));
    } else {
        offsets.iter().for_each(|o| p.extend(be(&[*o as u32])));
        s.extend(bx(b"stco", &full(0, &p)));
    }
    bx(b"stbl", &s)
}

fn trak(spec: &Spec, i: usize, offsets: &[u64]) -> Vec<u8> {
    let t = &spec.tracks[i];
    let movie_dur =
        (t.duration() * u64::from(spec.movie_timescale) / u64::from(t.timescale)) as u32;
    let mut tkhd = be(&[0, 0, i as u32 + 1, 0, movie_dur, 0, 0, 0, 0]);
    tkhd.extend([0u8; 44]);
    let mut out = bx(b"tkhd", &full(0, &tkhd[..80]));
    if let Some(mt) = t.media_time {
        let elst = be(&[1, movie_dur, mt as u32, 0x0001_0000]);
        out.extend(bx(b"edts", &bx(b"elst", &full(0, &elst))));
    }
    let mdhd = be(&[0, 0, t.timescale, t.duration() as u32, 0x55c4_0000]);
    let mut hdlr = be(&[0]);
    hdlr.extend(t.handler);
    hdlr.extend([0u8; 13]);
    let mut minf = bx(b"dinf", &bx(b"dref", &full(0, &be(&[0]))));
    minf.extend(stbl(t, offsets, spec.co64));
    let mut mdia = bx(b"mdhd", &full(0, &mdhd));
    mdia.extend(bx(b"hdlr", &full(0, &hdlr)));
    mdia.extend(bx(b"minf", &minf));
    out.extend(bx(b"mdia", &mdia));
    bx(b"trak", &out)
}

/// A moov for `spec` whose chunk offsets are exactly `offsets` (per track).
pub fn moov(spec: &Spec, offsets: &[Vec<u64>]) -> Vec<u8> {
    let dur = spec
        .tracks
        .iter()
        .map(|t| t.duration() * u64::from(spec.movie_timescale) / u64::from(t.timescale))
        .max()
        .unwrap_or(0);
    let mut mvhd = be(&[0, 0, spec.movie_timescale, dur as u32, 0x0001_0000]);
    mvhd.extend([0u8; 76]);
    mvhd.extend(be(&[spec.tracks.len() as u32 + 1]));
    let mut m = bx(b"mvhd", &full(0, &mvhd));
    for (i, o) in offsets.iter().enumerate() {
        m.extend(trak(spec, i, o));
    }
    if spec.udta64 {
        m.extend(bx64(b"udta", &bx(b"name", b"hello")));
    }
    bx(b"moov", &m)
}

/// mdat payload (chunks interleaved round-robin) and each track's chunk offsets relative to it.
pub fn mdat_payload(spec: &Spec) -> (Vec<u8>, Vec<Vec<u64>>) {
    let chunks: Vec<_> = spec.tracks.iter().map(|t| t.chunks()).collect();
    let mut data = Vec::new();
    let mut offsets = vec![Vec::new(); spec.tracks.len()];
    let most = chunks.iter().map(|c| c.len()).max().unwrap_or(0);
    for c in 0..most {
        for (ti, t) in spec.tracks.iter().enumerate() {
            if let Some(r) = chunks[ti].get(c) {
                offsets[ti].push(data.len() as u64);
                for s in r.clone() {
                    data.extend(sample_bytes(ti, s, t.sizes[s]));
                }
            }
        }
    }
    (data, offsets)
}

pub const FTYP: &[u8] = b"isom\0\0\x02\0isomiso2mp41";

pub fn build(spec: &Spec) -> Vec<u8> {
    let mut head = bx(b"ftyp", FTYP);
    if spec.free {
        head.extend(bx(b"free", &[]));
    }
    let (payload, rel) = mdat_payload(spec);
    let mdat = if spec.mdat64 {
        bx64(b"mdat", &payload)
    } else {
        bx(b"mdat", &payload)
    };
    let mdat_header = (mdat.len() - payload.len()) as u64;
    let moov_len = moov(spec, &rel).len() as u64;
    let base = head.len() as u64 + mdat_header + if spec.moov_first { moov_len } else { 0 };
    let abs: Vec<Vec<u64>> = rel
        .iter()
        .map(|o| o.iter().map(|x| x + base).collect())
        .collect();
    let moov = moov(spec, &abs);
    let mut file = head;
    if spec.moov_first {
        file.extend(moov);
        file.extend(mdat);
    } else {
        file.extend(mdat);
        file.extend(moov);
    }
    file
}

/// Runs the scan over an in-memory file, honouring every Need.
pub fn scan(file: &[u8]) -> Layout {
    scan_with(file, &Limits::default())
}

pub fn scan_with(file: &[u8], limits: &Limits) -> Layout {
    let mut s = TopLevelScan::new(file.len() as u64, limits);
    let mut range = s.first_request();
    for _ in 0..1000 {
        let end = (range.end as usize).min(file.len());
        let start = (range.start as usize).min(end);
        match s.feed(range.start, &file[start..end]) {
            ScanStep::Need(r) => range = r,
            ScanStep::Done(l) => return l,
        }
    }
    panic!("scan did not finish");
}

pub fn moov_of(file: &[u8]) -> (Vec<TopBox>, std::ops::Range<u64>, Vec<u8>) {
    let layout = scan(file);
    let (boxes, moov) = layout.moov().expect("layout with moov");
    let bytes = file[moov.start as usize..moov.end as usize].to_vec();
    (boxes.to_vec(), moov, bytes)
}

pub fn expand(p: &Presented, file: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in p.map(0..p.size()) {
        match piece {
            Piece::Synthetic(b) => out.extend_from_slice(&b),
            Piece::Source(r) => out.extend_from_slice(&file[r.start as usize..r.end as usize]),
        }
    }
    assert_eq!(out.len() as u64, p.size());
    out
}

// ---- reference reader (tests only; trusts its input) ----

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

pub fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// Children of a box body: (kind, payload).
pub fn children(body: &[u8]) -> Vec<([u8; 4], &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= body.len() {
        let mut size = u32_at(body, at) as usize;
        let kind: [u8; 4] = body[at + 4..at + 8].try_into().unwrap();
        let mut hl = 8;
        if size == 1 {
            size = u64_at(body, at + 8) as usize;
            hl = 16;
        } else if size == 0 {
            size = body.len() - at;
        }
        out.push((kind, &body[at + hl..at + size]));
        at += size;
    }
    out
}

pub fn child<'a>(body: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    children(body)
        .into_iter()
        .find(|(k, _)| k == kind)
        .map(|(_, p)| p)
}

pub fn path<'a>(body: &'a [u8], kinds: &[&[u8; 4]]) -> Option<&'a [u8]> {
    kinds.iter().try_fold(body, |b, k| child(b, k))
}

#[derive(Debug, Clone, PartialEq)]
pub struct SampleInfo {
    pub offset: u64,
    pub size: u32,
    pub dts: u64,
    pub cts_offset: i64,
    pub sync: bool,
}

pub struct TrackInfo {
    pub handler: [u8; 4],
    pub timescale: u32,
    pub mdhd_duration: u64,
    pub tkhd_duration: u64,
    pub elst: Option<(u64, i64)>,
    pub samples: Vec<SampleInfo>,
    pub stbl_kinds: Vec<[u8; 4]>,
    pub stsc_entries: usize,
}

fn version_field(p: &[u8], at_v0: usize, at_v1: usize) -> u64 {
    if p[0] == 1 {
        u64_at(p, at_v1)
    } else {
        u64::from(u32_at(p, at_v0))
    }
}

fn expand_runs(p: &[u8], n: usize) -> Vec<(u32, u32)> {
    let count = u32_at(p, 4) as usize;
    let mut out = Vec::new();
    for e in 0..count {
        let (c, v) = (u32_at(p, 8 + 8 * e), u32_at(p, 12 + 8 * e));
        out.extend(std::iter::repeat_n((c, v), c as usize));
    }
    assert!(out.len() >= n, "run table shorter than sample count");
    out.truncate(n);
    out
}

fn chunk_offsets(stbl: &[u8]) -> Vec<u64> {
    match child(stbl, b"co64") {
        Some(p) => (0..u32_at(p, 4) as usize)
            .map(|i| u64_at(p, 8 + 8 * i))
            .collect(),
        None => {
            let p = child(stbl, b"stco").unwrap();
            (0..u32_at(p, 4) as usize)
                .map(|i| u64::from(u32_at(p, 8 + 4 * i)))
                .collect()
        }
    }
}

fn samples(stbl: &[u8]) -> (Vec<SampleInfo>, usize) {
    let stsz = child(stbl, b"stsz").unwrap();
    let n = u32_at(stsz, 8) as usize;
    let sizes: Vec<u32> = if u32_at(stsz, 4) != 0 {
        vec![u32_at(stsz, 4); n]
    } else {
        (0..n).map(|i| u32_at(stsz, 12 + 4 * i)).collect()
    };
    let stts = expand_runs(child(stbl, b"stts").unwrap(), n);
    let ctts = child(stbl, b"ctts").map(|p| expand_runs(p, n));
    let sync: Option<Vec<u32>> = child(stbl, b"stss").map(|p| {
        (0..u32_at(p, 4) as usize)
            .map(|i| u32_at(p, 8 + 4 * i))
            .collect()
    });
    let stsc = child(stbl, b"stsc").unwrap();
    let entries: Vec<(u32, u32)> = (0..u32_at(stsc, 4) as usize)
        .map(|e| (u32_at(stsc, 8 + 12 * e), u32_at(stsc, 12 + 12 * e)))
        .collect();
    let mut out = Vec::new();
    let (mut s, mut dts) = (0usize, 0u64);
    for (c, &off) in chunk_offsets(stbl).iter().enumerate() {
        let spc = entries
            .iter()
            .rev()
            .find(|(f, _)| *f as usize <= c + 1)
            .unwrap()
            .1;
        let mut at = off;
        for _ in 0..spc {
            assert!(s < n, "chunks hold more samples than stsz");
            out.push(SampleInfo {
                offset: at,
                size: sizes[s],
                dts,
                cts_offset: ctts.as_ref().map_or(0, |c| i64::from(c[s].1 as i32)),
                sync: sync.as_ref().is_none_or(|v| v.contains(&(s as u32 + 1))),
            });
            at += u64::from(sizes[s]);
            dts += u64::from(stts[s].1);
            s += 1;
        }
    }
    assert_eq!(out.len(), n, "chunks must hold every sample");
    (out, entries.len())
}

pub fn track_info(trak: &[u8]) -> TrackInfo {
    let mdia = child(trak, b"mdia").unwrap();
    let stbl = path(mdia, &[b"minf", b"stbl"]).unwrap();
    let (samples, stsc_entries) = samples(stbl);
    let tkhd = child(trak, b"tkhd").unwrap();
    let mdhd = child(mdia, b"mdhd").unwrap();
    let hdlr = child(mdia, b"hdlr").unwrap();
    let elst = path(trak, &[b"edts", b"elst"]).map(|p| {
        assert_eq!(u32_at(p, 4), 1);
        if p[0] == 1 {
            (u64_at(p, 8), u64_at(p, 16) as i64)
        } else {
            (u64::from(u32_at(p, 8)), i64::from(u32_at(p, 12) as i32))
        }
    });
    TrackInfo {
        handler: hdlr[8..12].try_into().unwrap(),
        timescale: u32_at(mdhd, if mdhd[0] == 1 { 20 } else { 12 }),
        mdhd_duration: version_field(mdhd, 16, 24),
        tkhd_duration: version_field(tkhd, 20, 28),
        elst,
        samples,
        stbl_kinds: children(stbl).iter().map(|(k, _)| *k).collect(),
        stsc_entries,
    }
}

/// Top-level box kinds of a file, its tracks, and the mvhd duration.
pub fn read_file(file: &[u8]) -> (Vec<[u8; 4]>, Vec<TrackInfo>, u64) {
    let top = children(file);
    let moov = top.iter().find(|(k, _)| k == b"moov").unwrap().1;
    let mvhd = child(moov, b"mvhd").unwrap();
    let tracks = children(moov)
        .into_iter()
        .filter(|(k, _)| k == b"trak")
        .map(|(_, p)| track_info(p))
        .collect();
    (
        top.iter().map(|(k, _)| *k).collect(),
        tracks,
        version_field(mvhd, 16, 24),
    )
}

/// Every sample's bytes must carry its (track, original sample number) tag.
pub fn assert_samples_tagged(file: &[u8], tracks: &[TrackInfo], first_sample: &[usize]) {
    for (ti, t) in tracks.iter().enumerate() {
        for (i, s) in t.samples.iter().enumerate() {
            let want = sample_bytes(ti, first_sample[ti] + i, s.size);
            let got = &file[s.offset as usize..s.offset as usize + s.size as usize];
            assert_eq!(got, &want[..], "track {ti} sample {i}");
        }
    }
}
