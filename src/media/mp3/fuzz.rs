//! Hostile MP3s through every step of a clip: no panic, bounded memory, clips only map onto the file.

use super::*;
use crate::media::clip_error::ClipError;
use crate::media::mp4::Presented;

/// A small VBR stream: ID3v2 tag, a Xing/LAME frame, then frames of changing bitrate.
fn sample() -> Vec<u8> {
    stream(b"Xing", &[0x90, 0xA0, 0x50, 0xB0, 0x92])
}

/// A stream with a Xing (`kind`) or Info frame, and frames of `bitrates` in turn.
fn stream(kind: &[u8; 4], bitrates: &[u8]) -> Vec<u8> {
    let mut file = b"ID3\x04\x00\x00\x00\x00\x00\x20".to_vec();
    file.resize(10 + 32, 0);
    let mut xing = vec![0xFF, 0xFB, 0x90, 0x64];
    xing.resize(36, 0);
    xing.extend_from_slice(kind);
    xing.extend_from_slice(b"\x00\x00\x00\x07");
    xing.extend_from_slice(&200u32.to_be_bytes());
    xing.extend_from_slice(&80_000u32.to_be_bytes());
    xing.extend((0..100).map(|i| (i * 256 / 100) as u8));
    xing.extend_from_slice(b"LAME3.100");
    xing.resize(417, 0);
    file.extend_from_slice(&xing);
    for i in 0..200 {
        let header = [0xFF, 0xFB, bitrates[i % bitrates.len()], 0x64];
        let len = FrameHeader::parse(&header).map_or(417, |h| h.frame_len());
        let start = file.len();
        file.extend_from_slice(&header);
        file.resize(start + len, (i % 251) as u8);
    }
    file
}

/// What the media layer does, with slices for reads.
fn clip(file: &[u8], start: Option<f64>, end: Option<f64>) -> Result<Presented, ClipError> {
    let size = file.len() as u64;
    let read = |from: u64, to: u64| &file[from.min(size) as usize..to.min(size) as usize];
    let audio_start = id3v2_len(read(0, 10)).unwrap_or(0);
    if audio_start >= size {
        return Err(ClipError::Empty);
    }
    let mut audio_end = size;
    if size - audio_start >= ID3V1_LEN && is_id3v1(read(size - ID3V1_LEN, size)) {
        audio_end = size - ID3V1_LEN;
    }
    let window = read(audio_start, audio_start + FIRST_FRAME_WINDOWS[1]).to_vec();
    let stream = Stream::find(audio_start, &window, audio_end)?;
    let frames = frame_span(&stream, start, end)?;
    let total = stream.frame_count()?;
    let window = sync_window(&stream, frames.start, total);
    let first = sync_in(&stream, window.start, read(window.start, window.end))?;
    let clip = match stream.is_vbr() {
        true => {
            let mut walker = Walker::new(&stream, first, &frames, total)?;
            while let Some(range) = walker.need() {
                walker.feed(range.start, read(range.start, range.end));
            }
            walker.finish()?
        }
        false => ClipFrames {
            range: first..stream.audio_end,
            frames: frames.end - frames.start,
            offsets: Vec::new(),
        },
    };
    assemble(&stream, &clip)
}

#[test]
fn the_sample_cuts_into_a_clip_with_a_rewritten_xing_frame() {
    let file = sample();
    let presented = clip(&file, Some(1.0), Some(3.0)).unwrap();
    let tag_len = 417;
    assert!(
        presented.synthetic_len() == tag_len,
        "one rewritten Xing frame"
    );
    // 2 s at 26.12 ms a frame.
    let frames = (2.0f64 / (1152.0 / 44100.0)).ceil() as u64;
    let walked = presented.size() - 42 - tag_len as u64;
    assert!(walked > frames * 150, "{walked} bytes for {frames} frames");
}

#[test]
fn a_file_cut_short_in_its_last_frame_still_has_clips_to_its_end() {
    // VBR: the walk ends at the last whole frame.
    let mut file = sample();
    file.truncate(file.len() - 100);
    let extent = clip(&file, Some(4.0), Some(5.5)).unwrap().source_extent();
    assert!(
        file.len() as u64 - extent < 626,
        "the clip runs to the last whole frame"
    );
    // CBR: the end is computed, and found where the frames stop chaining.
    let mut file = stream(b"Info", &[0x90]);
    file.truncate(file.len() - 100);
    let near_end = 198.5 * 1152.0 / 44100.0;
    let extent = clip(&file, Some(4.0), Some(near_end))
        .unwrap()
        .source_extent();
    assert_eq!(extent, file.len() as u64, "the clip runs to the end");
}

#[test]
fn mutated_files_never_panic_and_clips_map_inside_them() {
    let original = sample();
    let mut next = crate::base::testing::xorshift(0x9e37_79b9_7f4a_7c15u64);
    for _ in 0..3000 {
        let mut file = original.clone();
        for _ in 0..1 + next() % 6 {
            let at = (next() % 1200).min(file.len() as u64 - 1) as usize;
            file[at] = next() as u8;
        }
        if next().is_multiple_of(8) {
            file.truncate((next() % file.len() as u64) as usize);
        }
        let start = (next() % 8) as f64 * 0.5;
        if let Ok(presented) = clip(&file, Some(start), Some(start + 1.5)) {
            assert!(presented.source_extent() <= file.len() as u64);
            assert!(presented.synthetic_len() <= 2048);
        }
    }
}
