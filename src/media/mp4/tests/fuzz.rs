//! Seeded mutation fuzzing of scan + faststart + trim: box sizes, table counts and offsets of valid files are
//! corrupted; every run must return Ok or Err (no panic), stay within the file, and keep memory bounded.

use super::builder::*;
use crate::media::mp4::{faststart, trim, Layout, Limits, Presented};

/// xorshift64*: deterministic, so a failure reproduces from the seed and iteration number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// (box start, payload start, payload end) of every box reachable through known containers.
fn boxes_of(file: &[u8]) -> Vec<(usize, usize, usize)> {
    fn walk(body: &[u8], base: usize, out: &mut Vec<(usize, usize, usize)>) {
        let mut at = 0;
        while at + 8 <= body.len() {
            let size32 = u32_at(body, at) as usize;
            let (hl, size) = match size32 {
                1 => (16, u64_at(body, at + 8) as usize),
                0 => (8, body.len() - at),
                n => (8, n),
            };
            let kind = &body[at + 4..at + 8];
            out.push((base + at, base + at + hl, base + at + size));
            if [
                &b"moov"[..],
                b"trak",
                b"mdia",
                b"minf",
                b"stbl",
                b"edts",
                b"dinf",
            ]
            .contains(&kind)
            {
                walk(&body[at + hl..at + size], base + at + hl, out);
            }
            at += size;
        }
    }
    let mut out = Vec::new();
    walk(file, 0, &mut out);
    out
}

fn interesting(rng: &mut Rng, current: u32, file_len: usize) -> u32 {
    let choices = [
        0,
        1,
        7,
        8,
        current.wrapping_sub(1),
        current.wrapping_add(1),
        current.wrapping_mul(2),
        u32::MAX,
        0x8000_0000,
        0x4000_0000,
        file_len as u32,
        rng.next() as u32,
    ];
    choices[rng.below(choices.len())]
}

fn get_u32(file: &[u8], at: usize) -> u32 {
    if at + 4 <= file.len() {
        u32_at(file, at)
    } else {
        0
    }
}

fn put_u32(file: &mut [u8], at: usize, v: u32) {
    if at + 4 <= file.len() {
        file[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
}

fn mutate(rng: &mut Rng, orig: &[u8], boxes: &[(usize, usize, usize)]) -> Vec<u8> {
    let mut f = orig.to_vec();
    for _ in 0..1 + rng.below(3) {
        let (start, payload, end) = boxes[rng.below(boxes.len())];
        match rng.below(6) {
            0 => {
                let cur = get_u32(&f, start);
                put_u32(&mut f, start, interesting(rng, cur, orig.len()));
            }
            1 => {
                // Count field of a full box (after version/flags), or the first field of a plain one.
                let at = payload + 4 * rng.below(3);
                let cur = get_u32(&f, at);
                put_u32(&mut f, at, interesting(rng, cur, orig.len()));
            }
            2 if end > payload + 4 => {
                let at = payload + 4 * rng.below((end - payload) / 4);
                let cur = get_u32(&f, at);
                put_u32(&mut f, at, interesting(rng, cur, orig.len()));
            }
            3 if !f.is_empty() => {
                let at = rng.below(f.len());
                f[at] ^= 1 << rng.below(8);
            }
            4 => f.truncate(rng.below(f.len())),
            _ => {
                let at = start + rng.below(end.saturating_sub(start).max(1));
                if at < f.len() {
                    f[at] = rng.next() as u8;
                }
            }
        }
    }
    f
}

fn check_presented(p: &Presented, file: &[u8], moov_len: usize) {
    assert!(
        p.source_extent() <= file.len() as u64,
        "source range past the file"
    );
    assert!(
        p.synthetic_len() <= 2 * moov_len + 4096,
        "synthetic bytes out of proportion"
    );
    let _ = expand(p, file);
}

/// Runs everything ston-fs would run on one (possibly corrupt) file.
fn exercise(file: &[u8], limits: &Limits) -> (bool, bool) {
    let layout = scan_with(file, limits);
    let Some((boxes, moov)) = layout.moov() else {
        return (false, false);
    };
    let bytes = &file[moov.start as usize..moov.end as usize];
    let size = file.len() as u64;
    let mut ok = (false, false);
    if matches!(layout, Layout::MoovAtEnd { .. }) {
        if let Ok(p) = faststart(boxes, moov.clone(), bytes, size, limits) {
            check_presented(&p, file, bytes.len());
            ok.0 = true;
        }
    }
    for (s, e) in [(None, None), (Some(1.0), Some(2.5)), (Some(0.5), None)] {
        if let Ok(p) = trim(boxes, moov.clone(), bytes, size, s, e, limits) {
            check_presented(&p, file, bytes.len());
            ok.1 = true;
        }
    }
    ok
}

/// `MEDIA_FUZZ_SCALE=N` runs N times as many mutations (with different seeds) for a deeper local run.
fn scale() -> usize {
    std::env::var("MEDIA_FUZZ_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

fn fuzz(name: &str, orig: &[u8], iterations: usize, seed: u64) {
    let iterations = iterations * scale();
    let seed = seed ^ (scale() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let limits = Limits::default();
    assert!(
        exercise(orig, &limits).1,
        "{name}: the unmutated file must trim"
    );
    let boxes = boxes_of(orig);
    let mut rng = Rng(seed);
    let (mut fs_ok, mut trim_ok) = (0, 0);
    for _ in 0..iterations {
        let f = mutate(&mut rng, orig, &boxes);
        let (a, b) = exercise(&f, &limits);
        fs_ok += usize::from(a);
        trim_ok += usize::from(b);
    }
    eprintln!("{name}: {iterations} mutations, faststart ok {fs_ok}, trim ok {trim_ok}");
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn ffmpeg_sample() -> Option<Vec<u8>> {
    let path = std::env::temp_dir().join(format!("ston-media-fuzz-{}.mp4", std::process::id()));
    let status = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=160x120:rate=25",
            "-f",
            "lavfi",
        ])
        .args([
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            "3",
            "-c:v",
            "libx264",
            "-bf",
            "2",
        ])
        .args(["-g", "20", "-c:a", "aac", "-b:a", "32k"])
        .arg(&path)
        .status()
        .ok()?;
    let bytes = status
        .success()
        .then(|| std::fs::read(&path).ok())
        .flatten();
    let _ = std::fs::remove_file(&path);
    bytes
}

#[test]
fn seeded_mutations_never_panic_or_overallocate() {
    fuzz("moov-at-end", &build(&Spec::av()), 800, 0x5eed_0001);
    let mut spec = Spec::av();
    spec.moov_first = true;
    fuzz("faststart", &build(&spec), 600, 0x5eed_0002);
    let mut spec = Spec::av();
    spec.co64 = true;
    spec.mdat64 = true;
    spec.udta64 = true;
    spec.tracks[1].fixed_size = true;
    fuzz("co64+64-bit", &build(&spec), 600, 0x5eed_0003);
    match ffmpeg_sample() {
        Some(real) => fuzz("ffmpeg", &real, 600, 0x5eed_0004),
        None => eprintln!("ffmpeg not available: real-file fuzzing skipped"),
    }
    if let Some(kib) = peak_rss_kib() {
        eprintln!("peak RSS {kib} KiB");
        assert!(kib < 512 * 1024, "peak RSS {kib} KiB");
    }
}
