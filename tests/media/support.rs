//! Helpers for the media tests: MP4 files made with ffmpeg at test time, what a presented file
//! must be (computed from the original's bytes with the crate's own MP4 library), and bounded
//! runs of ffmpeg and ffprobe that read what decoders see.
// Each test binary uses part of this file.
#![allow(dead_code)]

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use ston_fs::media::mp4::{
    self as media, Layout, Limits, Piece, Presented, ScanStep, TopLevelScan,
};

use crate::common::mount::wait_or_kill;

/// Longest any one ffmpeg or ffprobe run may take; a hang is what it catches.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// What a tool run printed, and whether it succeeded within its time.
pub struct ToolRun {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
    pub command: String,
}

/// Runs `program args...` with its output in files (a pipe could fill up), killed after
/// `TOOL_TIMEOUT`.
pub fn tool(program: &str, args: &[&str]) -> ToolRun {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let command = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("stdout file"))
        .stderr(File::create(&err).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{program} cannot start ({e}): run the suite with `bash tests/run.sh`")
        });
    let status = wait_or_kill(&mut child, TOOL_TIMEOUT);
    let read = |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
    ToolRun {
        ok: status.is_some_and(|s| s.success()),
        stdout: read(&out),
        stderr: read(&err),
        command,
    }
}

/// The bytes in `slot`, made by `ffmpeg_output(args, extension)` the first time.
pub fn made_once(
    slot: &'static OnceLock<Vec<u8>>,
    args: &[&str],
    extension: &str,
) -> &'static [u8] {
    slot.get_or_init(|| ffmpeg_output(args, extension))
}

/// What `ffmpeg -v error -y ARGS OUT` writes to a file named with `extension`.
#[track_caller]
pub fn ffmpeg_output(args: &[&str], extension: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join(format!("sample.{extension}"));
    let mut all = vec!["-v", "error", "-y"];
    all.extend(args);
    all.push(out.to_str().expect("utf-8 temp path"));
    tool_ok("ffmpeg", &all);
    fs::read(&out).expect("ffmpeg output")
}

#[track_caller]
pub fn tool_ok(program: &str, args: &[&str]) -> String {
    let run = tool(program, args);
    assert!(
        run.ok,
        "{} failed:\n{}\n{}",
        run.command, run.stderr, run.stdout
    );
    run.stdout
}

// ---------------------------------------------------------------------------
// Test media
// ---------------------------------------------------------------------------

/// The test files, each made once per test binary.
#[derive(Clone, Copy, Debug)]
pub enum Sample {
    /// H.264 without B-frames + AAC, 10 s, moov at the end (ffmpeg's default).
    Plain,
    /// H.264 with B-frames (ctts) + AAC, 10 s, moov at the end.
    BFrames,
    /// AAC only (.m4a), 10 s, moov at the end.
    Audio,
    /// Like `BFrames`, written with `+faststart`: moov first already.
    Front,
    /// Fragmented MP4 (moof boxes).
    Fragmented,
    /// A small H.264 (B-frames) + AAC file of 2 s, for mutation.
    Small,
}

/// Key frames come every 30 frames at 25 fps: at 0, 1.2, 2.4, ... s, so a start of 2 s
/// really snaps back.
pub const GOP_SECONDS: f64 = 1.2;

impl Sample {
    fn args(self) -> Vec<&'static str> {
        const VIDEO: [&str; 4] = ["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"];
        const SOUND: [&str; 4] = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"];
        // Noise makes the picture cost its bit rate, so byte counts follow time.
        const X264: [&str; 12] = [
            "-vf",
            "noise=alls=30:allf=t",
            "-c:v",
            "libx264",
            "-g",
            "30",
            "-b:v",
            "600k",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
        ];
        let mut args = Vec::new();
        match self {
            Sample::Plain | Sample::BFrames | Sample::Front | Sample::Fragmented => {
                args.extend(VIDEO);
                args.extend(SOUND);
                args.extend(["-t", "10"]);
                args.extend(X264);
                let b_frames = if matches!(self, Sample::Plain) {
                    "0"
                } else {
                    "2"
                };
                args.extend(["-bf", b_frames]);
                match self {
                    Sample::Front => args.extend(["-movflags", "+faststart"]),
                    Sample::Fragmented => args.extend(["-movflags", "frag_keyframe+empty_moov"]),
                    _ => {}
                }
            }
            Sample::Audio => {
                args.extend(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]);
                args.extend(["-t", "10", "-c:a", "aac", "-b:a", "64k"]);
            }
            Sample::Small => {
                args.extend(["-f", "lavfi", "-i", "testsrc=size=160x120:rate=25"]);
                args.extend(SOUND);
                args.extend(["-t", "2", "-c:v", "libx264", "-bf", "2", "-g", "20"]);
                args.extend(["-c:a", "aac", "-b:a", "32k"]);
            }
        }
        args
    }

    fn extension(self) -> &'static str {
        match self {
            Sample::Audio => "m4a",
            _ => "mp4",
        }
    }

    fn slot(self) -> &'static OnceLock<Vec<u8>> {
        static SLOTS: [OnceLock<Vec<u8>>; 6] = [const { OnceLock::new() }; 6];
        &SLOTS[self as usize]
    }

    /// The file's bytes (made with ffmpeg the first time).
    pub fn bytes(self) -> &'static [u8] {
        made_once(self.slot(), &self.args(), self.extension())
    }

    /// Writes the file to `dir` as `name` (for tools that compare with the original).
    pub fn write_to(self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, self.bytes()).expect("write sample");
        path
    }
}

// ---------------------------------------------------------------------------
// What a presented file must be
// ---------------------------------------------------------------------------

/// The top-level layout of a file, as the daemon finds it (with the same limits).
pub fn layout(file: &[u8]) -> Layout {
    let mut scan = TopLevelScan::new(file.len() as u64, &Limits::default());
    let mut range = scan.first_request();
    for _ in 0..200 {
        let end = (range.end as usize).min(file.len());
        let start = (range.start as usize).min(end);
        match scan.feed(range.start, &file[start..end]) {
            ScanStep::Need(next) => range = next,
            ScanStep::Done(layout) => return layout,
        }
    }
    panic!("the scan of a {}-byte file did not end", file.len());
}

/// The bytes a view presents.
pub fn expand(presented: &Presented, file: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(presented.size() as usize);
    for piece in presented.map(0..presented.size()) {
        match piece {
            Piece::Synthetic(bytes) => out.extend_from_slice(&bytes),
            Piece::Source(r) => out.extend_from_slice(&file[r.start as usize..r.end as usize]),
        }
    }
    out
}

/// The file presented whole: with its moov in front when it was at the end and could be
/// rewritten, else unchanged. Also says whether it is a view.
pub fn expected_whole(file: &[u8]) -> (Vec<u8>, bool) {
    if let Layout::MoovAtEnd { boxes, moov } = layout(file) {
        let bytes = &file[moov.start as usize..moov.end as usize];
        let size = file.len() as u64;
        if let Ok(p) = media::faststart(&boxes, moov.clone(), bytes, size, &Limits::default()) {
            return (expand(&p, file), true);
        }
    }
    (file.to_vec(), false)
}

/// The clip of `[start, end)` seconds, or `None` when there is none (ENOENT), with the
/// original's byte range its media data comes from.
pub fn expected_clip(
    file: &[u8],
    start: Option<f64>,
    end: Option<f64>,
) -> Option<(Vec<u8>, std::ops::Range<u64>)> {
    let layout = layout(file);
    let (boxes, moov) = layout.moov()?;
    let bytes = &file[moov.start as usize..moov.end as usize];
    let size = file.len() as u64;
    let p = media::trim(boxes, moov, bytes, size, start, end, &Limits::default()).ok()?;
    let data = p
        .segments()
        .iter()
        .filter_map(|s| match s {
            media::Segment::Source { offset, len } => Some(*offset..offset + len),
            media::Segment::Synthetic(_) => None,
        })
        .max_by_key(|r| r.end - r.start)?;
    Some((expand(&p, file), data))
}

/// The top-level box types of a file, in order.
pub fn top_level_boxes(file: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 8 <= file.len() && out.len() < 100 {
        let size32 = u32::from_be_bytes(file[at..at + 4].try_into().unwrap()) as usize;
        let size = match size32 {
            0 => file.len() - at,
            1 if at + 16 <= file.len() => {
                u64::from_be_bytes(file[at + 8..at + 16].try_into().unwrap()) as usize
            }
            n => n,
        };
        out.push(String::from_utf8_lossy(&file[at + 4..at + 8]).into_owned());
        if size < 8 {
            break;
        }
        at += size;
    }
    out
}

/// ftyp first, and the moov (after an optional `free`) before the first mdat.
#[track_caller]
pub fn assert_moov_first(file: &[u8], what: &str) {
    let boxes = top_level_boxes(file);
    let moov = boxes.iter().position(|b| b == "moov");
    let mdat = boxes.iter().position(|b| b == "mdat");
    let ok = boxes.first().map(String::as_str) == Some("ftyp")
        && matches!((moov, mdat), (Some(m), Some(d)) if m < d)
        && boxes[1..moov.unwrap_or(1)].iter().all(|b| b == "free");
    assert!(
        ok,
        "{what}: top-level boxes {boxes:?}, want ftyp, [free], moov, ..., mdat"
    );
}

// ---------------------------------------------------------------------------
// What decoders see
// ---------------------------------------------------------------------------

/// `ffmpeg -i FILE -map MAP -f framemd5 -`: one line per decoded frame of the streams `map`
/// selects, after `#` header lines.
fn framemd5_lines(path: &Path, map: &str) -> String {
    let p = path.to_str().expect("utf-8 path");
    let args = [
        "-v",
        "error",
        "-i",
        p,
        "-map",
        map,
        "-fps_mode",
        "passthrough",
    ];
    tool_ok("ffmpeg", &[&args[..], &["-f", "framemd5", "-"]].concat())
}

/// `ffmpeg -i FILE -f framemd5 -` for every stream, without the header lines.
pub fn framemd5(path: &Path) -> Vec<String> {
    framemd5_lines(path, "0")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// The decoded video frames in presentation order: (seconds, md5).
pub fn video_frames(path: &Path) -> Vec<(f64, String)> {
    let out = framemd5_lines(path, "0:v:0");
    let mut timebase = 1.0;
    let mut frames = Vec::new();
    for line in out.lines() {
        if let Some(tb) = line.strip_prefix("#tb 0: ") {
            let (num, den) = tb.trim().split_once('/').expect("timebase");
            timebase = num.parse::<f64>().unwrap() / den.parse::<f64>().unwrap();
        } else if !line.starts_with('#') {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let pts: f64 = fields[2].parse().expect("pts");
            frames.push((pts * timebase, fields[5].to_string()));
        }
    }
    frames
}

/// What `ffprobe -v warning` says of a file or URL (empty when it has no complaint).
pub fn ffprobe_complaints(input: &str) -> String {
    let run = tool("ffprobe", &["-v", "warning", "-i", input]);
    assert!(run.ok, "{} failed:\n{}", run.command, run.stderr);
    run.stderr.trim().to_string()
}

/// The container's duration in seconds.
pub fn duration(input: &str) -> f64 {
    let args = [
        "-v",
        "error",
        "-show_entries",
        "format=duration",
        "-of",
        "csv=p=0",
        input,
    ];
    let out = tool_ok("ffprobe", &args);
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("ffprobe duration of {input}: {out:?}"))
}

/// A stream's start time (`v:0`, `a:0`) as ffprobe prints it.
pub fn start_time(input: &str, stream: &str) -> String {
    let args = [
        "-v",
        "error",
        "-select_streams",
        stream,
        "-show_entries",
        "stream=start_time",
        "-of",
        "csv=p=0",
        input,
    ];
    tool_ok("ffprobe", &args).trim().to_string()
}

/// The time of the last video key frame at or before `t` seconds.
pub fn key_frame_at_or_before(input: &str, t: f64) -> f64 {
    let args = [
        "-v",
        "error",
        "-select_streams",
        "v",
        "-show_entries",
        "packet=pts_time,flags",
        "-of",
        "csv=p=0",
        input,
    ];
    let out = tool_ok("ffprobe", &args);
    out.lines()
        .filter_map(|l| {
            let (time, flags) = l.split_once(',')?;
            let time: f64 = time.parse().ok()?;
            (flags.contains('K') && time <= t + 1e-9).then_some(time)
        })
        .fold(0.0, f64::max)
}

/// Decodes from `seek` seconds on, failing on any decoder error.
pub fn decodes_from(input: &str, seek: &str) -> ToolRun {
    tool(
        "ffmpeg",
        &[
            "-v", "error", "-xerror", "-ss", seek, "-i", input, "-f", "null", "-",
        ],
    )
}
