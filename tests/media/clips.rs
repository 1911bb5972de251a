//! Helpers for the MP3 and FLV clip tests: files made with ffmpeg at test time, and what a
//! decoder makes of a clip next to what it makes of the original.
// Each test binary uses part of this file.
#![allow(dead_code)]

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use crate::media_support::{made_once, tool_ok};

/// The MP3 and FLV test files, each made once per test binary.
#[derive(Clone, Copy, Debug)]
pub enum ClipSample {
    /// 20 s of stereo chirps, 128 kb/s CBR, with an ID3v2 tag and an Info/LAME frame.
    Mp3Cbr,
    /// Likewise, LAME VBR (`-q:a 4`) with a Xing frame and its seek table.
    Mp3Vbr,
    /// 20 s, 48 kHz mono 64 kb/s CBR, no Xing frame, no ID3v2 tag, an ID3v1 tag at the end.
    Mp3Bare,
    /// 20 s of H.264 (a key frame every 1.2 s) + AAC in FLV, with a keyframe index.
    FlvIndexed,
    /// Likewise, without a keyframe index.
    FlvPlain,
}

const CHIRPS: &str =
    "aevalsrc=sin(2*PI*(200+40*t)*t)|0.5*sin(2*PI*(500+25*t)*t)+0.2*random(0):d=20:s=44100";
const VIDEO: &str = "testsrc2=size=320x240:rate=25:d=20";

impl ClipSample {
    fn args(self) -> Vec<&'static str> {
        let mp3 = ["-f", "lavfi", "-i", CHIRPS, "-c:a", "libmp3lame"];
        let flv = [
            "-f",
            "lavfi",
            "-i",
            VIDEO,
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:d=20",
            "-vf",
            "noise=alls=30:allf=t",
            "-c:v",
            "libx264",
            "-g",
            "30",
            "-bf",
            "0",
            "-b:v",
            "600k",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
        ];
        match self {
            ClipSample::Mp3Cbr => {
                [&mp3[..], &["-b:a", "128k", "-metadata", "title=Chirps"]].concat()
            }
            ClipSample::Mp3Vbr => [&mp3[..], &["-q:a", "4", "-metadata", "title=Chirps"]].concat(),
            ClipSample::Mp3Bare => [
                &[
                    "-f",
                    "lavfi",
                    "-i",
                    "aevalsrc=sin(2*PI*(300+30*t)*t):d=20:s=48000",
                ][..],
                &["-c:a", "libmp3lame", "-b:a", "64k", "-write_xing", "0"],
                &[
                    "-id3v2_version",
                    "0",
                    "-write_id3v1",
                    "1",
                    "-metadata",
                    "title=Bare",
                ],
            ]
            .concat(),
            ClipSample::FlvIndexed => [&flv[..], &["-flvflags", "add_keyframe_index"]].concat(),
            ClipSample::FlvPlain => flv.to_vec(),
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            ClipSample::Mp3Cbr | ClipSample::Mp3Vbr | ClipSample::Mp3Bare => "mp3",
            ClipSample::FlvIndexed | ClipSample::FlvPlain => "flv",
        }
    }

    fn slot(self) -> &'static OnceLock<Vec<u8>> {
        static SLOTS: [OnceLock<Vec<u8>>; 5] = [const { OnceLock::new() }; 5];
        &SLOTS[self as usize]
    }

    /// The file's bytes (made with ffmpeg the first time).
    pub fn bytes(self) -> &'static [u8] {
        made_once(self.slot(), &self.args(), self.extension())
    }
}

/// The first audio stream decoded to 32-bit float samples, interleaved, as bytes.
pub fn decoded_audio(input: &Path) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("audio.raw");
    let input = input.to_str().expect("utf-8 path");
    let out_text = out.to_str().expect("utf-8 temp path");
    let args = ["-v", "error", "-y", "-i", input, "-map", "0:a:0"];
    let raw = ["-c:a", "pcm_f32le", "-f", "f32le", out_text];
    tool_ok("ffmpeg", &[&args[..], &raw[..]].concat());
    fs::read(&out).expect("decoded audio")
}

/// Where `needle` starts in `haystack`, at a multiple of `unit` bytes, if it does.
fn find_run(haystack: &[u8], needle: &[u8], unit: usize) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    (0..=haystack.len() - needle.len())
        .step_by(unit)
        .find(|&at| haystack[at..at + needle.len()] == *needle)
}

/// That the clip's decoded samples, past its first `skip_front` frames and before its last
/// `skip_back`, are exactly one run of the original's; returns the run's length in samples
/// per channel.
#[track_caller]
pub fn assert_one_audio_run(
    clip: &[u8],
    original: &[u8],
    frame_samples: usize,
    channels: usize,
    (skip_front, skip_back): (usize, usize),
) -> usize {
    let unit = 4 * channels;
    let frame_bytes = frame_samples * unit;
    let (from, to) = (
        skip_front * frame_bytes,
        clip.len().saturating_sub(skip_back * frame_bytes),
    );
    assert!(
        to > from + frame_bytes,
        "the clip decodes to {} bytes only",
        clip.len()
    );
    let inner = &clip[from..to];
    assert!(
        find_run(original, inner, unit).is_some(),
        "the clip's {} decoded samples are no run of the original's {}",
        inner.len() / unit,
        original.len() / unit
    );
    inner.len() / unit
}

/// That `clip`'s frame hashes are exactly one run of `original`'s; returns where it starts.
#[track_caller]
pub fn assert_one_frame_run(clip: &[String], original: &[String]) -> usize {
    assert!(!clip.is_empty(), "the clip has no frames");
    original
        .windows(clip.len())
        .position(|w| w == clip)
        .unwrap_or_else(|| {
            panic!(
                "the clip's {} frames are no run of the original's",
                clip.len()
            )
        })
}

/// The container's timestamps of the first video stream's packets, in file order (decode
/// order, which is display order without B-frames).
pub fn video_packet_times(input: &str) -> Vec<f64> {
    let args = [
        "-v",
        "error",
        "-select_streams",
        "v:0",
        "-show_entries",
        "packet=pts_time",
    ];
    let out = tool_ok("ffprobe", &[&args[..], &["-of", "csv=p=0", input]].concat());
    out.lines().filter_map(|l| l.trim().parse().ok()).collect()
}
