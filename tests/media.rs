//! MP4, MP3 and FLV files through real mounts: moov-at-end files presented with their header
//! first (and played by ffmpeg exactly like the originals), files served unchanged, clips by
//! name (`NAME.mp4?start=S&end=E`, `.mp3`, `.flv`) checked frame by frame or sample by sample
//! against the original, what they cost at the origin, restarts and new versions, mutated
//! files that must never crash, hang or bloat the daemon, Apache serving clips from the mount,
//! and nginx-rtmp and nginx's mp4 module streaming from it. Test media are made with
//! ffmpeg at test time; what each presented file must be is computed from the original's
//! bytes with the crate's MP4 library.

#[path = "media/clips.rs"]
mod clip_support;
mod common;
#[path = "media/support.rs"]
mod media_support;
#[path = "media/servers.rs"]
mod servers;
#[path = "service/support.rs"]
mod support;

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use clip_support::{
    assert_one_audio_run, assert_one_frame_run, decoded_audio, video_packet_times, ClipSample,
};
use common::mount::{run_cli, Mount};
use common::mount_origin;
use common::nginx::{Autoindex, Nginx};
use common::origin::Origin;
use common::process::memory_bytes;
use common::{
    assert_bytes_eq, assert_file_matches, bounded, errno, no_kernel_readahead, pread_full, Rng,
};
use media_support::{
    assert_moov_first, decodes_from, duration, expected_clip, expected_whole, ffprobe_complaints,
    framemd5, key_frame_at_or_before, start_time, top_level_boxes, video_frames, Sample,
    GOP_SECONDS,
};
use servers::StreamingNginx;
use ston_fs::media::mp3::{id3v2_len, FrameHeader, XingTag};
use support::{curl, Apache};

const KIB: u64 = 1024;
/// Longest one file-system call of the fuzz test may take before it counts as a hang.
const CALL_BOUND: Duration = Duration::from_secs(30);

fn text(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// The presented header's length: everything up to the first mdat's payload.
fn header_len(presented: &[u8]) -> usize {
    let mut at = 0usize;
    for kind in top_level_boxes(presented) {
        let size = u32::from_be_bytes(presented[at..at + 4].try_into().unwrap()) as usize;
        if kind == "mdat" {
            return at + 8;
        }
        at += size;
    }
    panic!("no mdat in the presented file");
}

/// A scratch dir other users may traverse (Apache's www-data, nginx's workers).
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

// ===========================================================================
// Header in front
// ===========================================================================

/// Puts each `(bytes, name)` on `origin` and mounts it with 64 KiB blocks.
fn mount_files<'a>(origin: &Origin, files: impl IntoIterator<Item = (&'a [u8], &'a str)>) -> Mount {
    for (bytes, name) in files {
        origin.put(&format!("/{name}"), bytes.to_vec());
    }
    Mount::builder(origin.url()).opt("block_size=64K").mount()
}

#[test]
fn moov_at_end_files_are_presented_header_first_and_decode_like_the_originals() {
    let Some(origin) = mount_origin() else { return };
    let originals = tempfile::tempdir().unwrap();
    let samples = [
        (Sample::Plain, "plain.mp4"),
        (Sample::BFrames, "bframes.mp4"),
        (Sample::Audio, "audio.m4a"),
    ];
    let mount = mount_files(
        &origin,
        samples.map(|(sample, name)| (sample.bytes(), name)),
    );
    for (sample, name) in samples {
        let (want, is_view) = expected_whole(sample.bytes());
        assert!(is_view, "{name} has its moov at the end");
        let path = mount.path(name);

        // Cold: the lookup, the open and the whole header cost at most 3 origin requests
        // (the probe's first block and the moov's range).
        let size = fs::metadata(&path).expect("stat").len();
        assert_eq!(
            size,
            want.len() as u64,
            "{name}: stat gives the presented size"
        );
        let file = File::open(&path).expect("open");
        no_kernel_readahead(&file);
        let header = pread_full(&file, 0, header_len(&want)).expect("header");
        assert_bytes_eq(&header, &want[..header.len()], name);
        let requests = origin.request_count_for(&format!("/{name}"));
        assert!(
            requests <= 3,
            "{name}: {requests} origin requests before the first media byte\n{}",
            origin.describe_requests()
        );
        drop(file);
        eprintln!("{name}: {requests} origin requests before the first media byte");

        assert_file_matches(&path, &want, 256 * KIB as usize);
        assert_moov_first(&fs::read(&path).unwrap(), name);
        let original = sample.write_to(originals.path(), name);
        assert_eq!(
            framemd5(&path),
            framemd5(&original),
            "{name}: ffmpeg decodes the presented file like the original"
        );
        assert_eq!(ffprobe_complaints(text(&path)), "", "{name}: ffprobe warns");
    }
    mount.unmount();
}

#[test]
fn faststart_fragmented_and_broken_files_are_served_byte_for_byte() {
    let Some(origin) = mount_origin() else { return };
    let broken = b"not a movie at all, whatever its name says\n".repeat(500);
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("/front.mp4", Sample::Front.bytes().to_vec()),
        ("/frag.mp4", Sample::Fragmented.bytes().to_vec()),
        ("/broken.mp4", broken),
        ("/raw/plain.mp4", Sample::Plain.bytes().to_vec()),
        ("/plain.bin", Sample::Plain.bytes().to_vec()),
    ];
    for (path, data) in &files {
        origin.put(path, data.clone());
    }
    let mount = Mount::builder(origin.url())
        .opt("block_size=64K,mp4_faststart_rule=/raw/*:off")
        .mount();
    for round in 0..2 {
        for (path, data) in &files {
            let on_mount = mount.path(path);
            assert_eq!(
                fs::metadata(&on_mount).unwrap().len(),
                data.len() as u64,
                "{path}"
            );
            assert_file_matches(&on_mount, data, 64 * KIB as usize);
            if round == 1 {
                common::drop_page_cache(&on_mount);
            }
        }
    }
    let log = mount.unmount();
    let unchanged = |path: &str| {
        log.lines()
            .filter(|l| l.contains(path) && l.contains("served unchanged"))
            .count()
    };
    assert_eq!(
        unchanged("/broken.mp4"),
        1,
        "one log line for a file that does not parse:\n{log}"
    );
    for path in ["/front.mp4", "/frag.mp4", "/raw/plain.mp4"] {
        assert_eq!(unchanged(path), 0, "{path} is no error:\n{log}");
    }
}

#[test]
fn the_rewritten_header_survives_a_restart_without_an_origin_request() {
    let Some(origin) = mount_origin() else { return };
    origin.put("/plain.mp4", Sample::Plain.bytes().to_vec());
    let (want, _) = expected_whole(Sample::Plain.bytes());
    let cache = tempfile::tempdir().unwrap();
    let mount = Mount::builder(origin.url())
        .opt("block_size=64K")
        .cache_dir(cache.path())
        .mount();
    assert_file_matches(&mount.path("plain.mp4"), &want, 128 * KIB as usize);
    mount.unmount();
    let records = common::mount::find_files_with_ext(cache.path(), "view");
    assert_eq!(
        records.len(),
        1,
        "the rewritten header is kept with the object"
    );

    origin.reset();
    let mount = Mount::builder(origin.url())
        .opt("block_size=64K")
        .cache_dir(cache.path())
        .mount();
    let path = mount.path("plain.mp4");
    assert_eq!(fs::metadata(&path).unwrap().len(), want.len() as u64);
    assert_file_matches(&path, &want, 128 * KIB as usize);
    assert_eq!(
        origin.request_count(),
        0,
        "a restart serves the cached view\n{}",
        origin.describe_requests()
    );
    mount.unmount();
}

#[test]
fn a_new_version_at_the_origin_is_presented_afresh() {
    let Some(origin) = mount_origin() else { return };
    origin.put("/v.mp4", Sample::Plain.bytes().to_vec());
    let cache = tempfile::tempdir().unwrap();
    let mount = Mount::builder(origin.url())
        .opt("block_size=64K,ttl=1")
        .cache_dir(cache.path())
        .mount();
    let path = mount.path("v.mp4");
    let (first, _) = expected_whole(Sample::Plain.bytes());
    assert_file_matches(&path, &first, 128 * KIB as usize);
    origin.replace("/v.mp4", Sample::BFrames.bytes().to_vec());
    std::thread::sleep(Duration::from_millis(1200));
    let (second, _) = expected_whole(Sample::BFrames.bytes());
    assert_eq!(fs::metadata(&path).unwrap().len(), second.len() as u64);
    assert_file_matches(&path, &second, 128 * KIB as usize);
    let clip = mount.path("v.mp4?start=2&end=5");
    let (want, _) = expected_clip(Sample::BFrames.bytes(), Some(2.0), Some(5.0)).unwrap();
    assert_file_matches(&clip, &want, 128 * KIB as usize);
    mount.unmount();
    let records = common::mount::find_files_with_ext(cache.path(), "view");
    assert_eq!(
        records.len(),
        1,
        "the old version's record went with its blocks"
    );
}

// ===========================================================================
// Clips by name
// ===========================================================================

/// Checks a mounted clip of `[2, 5)` s against the original with ffprobe and ffmpeg.
fn check_video_clip(clip: &Path, original: &Path, name: &str) {
    let c = text(clip);
    assert_eq!(ffprobe_complaints(c), "", "{name}: ffprobe warns");
    let d = duration(c);
    assert!(
        (d - 3.0).abs() <= GOP_SECONDS,
        "{name}: duration {d} s, want 3 s within a GOP"
    );

    let key = key_frame_at_or_before(text(original), 2.0);
    let all = video_frames(original);
    let cut = video_frames(clip);
    let first = &cut.first().expect("the clip has video frames").1;
    let at = all
        .iter()
        .position(|(_, hash)| hash == first)
        .unwrap_or_else(|| panic!("{name}: the clip's first frame is no frame of the original"));
    assert!(
        (all[at].0 - key).abs() < 0.001,
        "{name}: the clip starts at {} s, not at the key frame at {key} s",
        all[at].0
    );
    let hashes = |frames: &[(f64, String)]| frames.iter().map(|f| f.1.clone()).collect::<Vec<_>>();
    let expected = &all[at..(at + cut.len()).min(all.len())];
    assert_eq!(
        hashes(&cut),
        hashes(expected),
        "{name}: the clip's frames are the original's from {key} s on"
    );
    let last = expected.last().map_or(0.0, |f| f.0);
    assert!(
        (last - 5.0).abs() <= 0.1,
        "{name}: the clip ends at {last} s, not near 5 s"
    );

    let video = start_time(c, "v:0");
    let audio = start_time(c, "a:0");
    assert!(
        !audio.is_empty() && audio == video,
        "{name}: audio starts at {audio}, video at {video}"
    );
    let seek = decodes_from(c, "1");
    assert!(seek.ok, "{name}: ffmpeg -ss 1 fails:\n{}", seek.stderr);
}

#[test]
fn a_clip_by_name_plays_the_interval_and_costs_only_its_share_of_the_file() {
    let samples = [
        (Sample::BFrames, "bframes.mp4"),
        (Sample::Plain, "plain.mp4"),
    ];
    let Some(origin) = mount_origin() else { return };
    let originals = tempfile::tempdir().unwrap();
    for (sample, name) in samples {
        origin.put(&format!("/{name}"), sample.bytes().to_vec());
    }
    let block = 16 * KIB;
    let mount = Mount::builder(origin.url()).opt("block_size=16K").mount();
    for (sample, name) in samples {
        let file = sample.bytes();
        let (want, data) = expected_clip(file, Some(2.0), Some(5.0)).expect("a clip");
        let clip = mount.path(&format!("{name}?start=2&end=5"));
        // Cold: the clip is the first thing read of this file.
        assert_eq!(
            fs::metadata(&clip).unwrap().len(),
            want.len() as u64,
            "{name}"
        );
        assert_file_matches(&clip, &want, 128 * KIB as usize);
        let fetched = origin.bytes_sent_for(&format!("/{name}"));
        let moov = match media_support::layout(file).moov() {
            Some((_, moov)) => moov.end - moov.start,
            None => unreachable!("{name} has a moov"),
        };
        // The scan's first 64 KiB, the tail with the moov, and the media range, each
        // rounded out to whole blocks.
        let share = data.end - data.start;
        let budget = 64 * KIB + (moov + block) + share + 2 * block;
        assert!(
            fetched >= share && fetched <= budget && fetched < file.len() as u64 * 3 / 4,
            "{name}: the origin sent {fetched} bytes for a clip of {share} media bytes and a \
             {moov}-byte moov (budget {budget}, whole file {})\n{}",
            file.len(),
            origin.describe_requests()
        );
        eprintln!(
            "{name}: the clip's {share} media bytes and {moov}-byte moov cost {fetched} origin \
             bytes of {}",
            file.len()
        );
        check_video_clip(&clip, &sample.write_to(originals.path(), name), name);
    }
    // Either bound may be left out.
    let (tail, _) = expected_clip(Sample::Plain.bytes(), Some(7.5), None).unwrap();
    assert_file_matches(
        &mount.path("plain.mp4?start=7.5"),
        &tail,
        128 * KIB as usize,
    );
    let (head, _) = expected_clip(Sample::Plain.bytes(), None, Some(1.5)).unwrap();
    assert_file_matches(&mount.path("plain.mp4?end=1.5"), &head, 128 * KIB as usize);
    // The origin was only ever asked for the files themselves.
    for request in origin.requests() {
        assert!(
            request.query.is_none() && !request.path.contains('?'),
            "a clip name reached the origin: {}",
            request.target
        );
    }
    mount.unmount();
}

#[test]
fn audio_clips_and_clips_that_cannot_exist() {
    let Some(origin) = mount_origin() else { return };
    origin.put("/audio.m4a", Sample::Audio.bytes().to_vec());
    origin.put("/bframes.mp4", Sample::BFrames.bytes().to_vec());
    origin.put("/frag.mp4", Sample::Fragmented.bytes().to_vec());
    origin.put("/text.mp4", b"plain text\n".repeat(300));
    let mount = Mount::builder(origin.url())
        .opt("block_size=64K,mp4_start_param=from,mp4_end_param=to")
        .mount();
    let clip = mount.path("audio.m4a?from=2&to=5");
    let (want, _) = expected_clip(Sample::Audio.bytes(), Some(2.0), Some(5.0)).unwrap();
    assert_file_matches(&clip, &want, 64 * KIB as usize);
    let d = duration(text(&clip));
    assert!(
        (d - 3.0).abs() <= 0.05,
        "audio clip lasts {d} s, want 3 s within an AAC frame"
    );
    assert!(decodes_from(text(&clip), "1").ok);

    for name in [
        "bframes.mp4?from=100",
        "bframes.mp4?from=3&to=3",
        "bframes.mp4?from=4&to=3",
        "bframes.mp4?start=1",
        "bframes.mp4?from=x",
        "frag.mp4?from=1",
        "text.mp4?from=1",
        "missing.mp4?from=1",
    ] {
        let got = fs::metadata(mount.path(name));
        assert_eq!(errno(&got), Some(libc::ENOENT), "{name}: {got:?}");
    }
    // The whole files are still there.
    assert_eq!(
        fs::metadata(mount.path("text.mp4")).unwrap().len(),
        "plain text\n".len() as u64 * 300
    );
    let log = mount.unmount();
    let said = |path: &str, why: &str| log.lines().any(|l| l.contains(path) && l.contains(why));
    assert!(
        said("/text.mp4", "not an MP4"),
        "the log says why text.mp4 has no clip:\n{log}"
    );
    assert!(
        said("/frag.mp4", "fragmented"),
        "the log says why frag.mp4 has no clip:\n{log}"
    );
    assert!(
        said("/bframes.mp4", "past the end"),
        "the log says why:\n{log}"
    );
}

// ===========================================================================
// MP3 and FLV clips
// ===========================================================================

/// The Layer III frames of an MP3 (after its ID3v2 tag, before an ID3v1 tag): (offset, header).
fn mp3_frames(file: &[u8]) -> Vec<(usize, FrameHeader)> {
    let mut at = id3v2_len(file).unwrap_or(0) as usize;
    let mut frames = Vec::new();
    while let Some(header) = file.get(at..).and_then(FrameHeader::parse) {
        if at + header.frame_len() > file.len() {
            break;
        }
        frames.push((at, header));
        at += header.frame_len();
    }
    frames
}

/// That the clip has a Xing frame where the original has one, counting the clip's frames
/// and bytes; returns the clip's audio frames.
fn check_xing(clip: &[u8], bytes: &[u8], frames: &[(usize, FrameHeader)], name: &str) -> u32 {
    let (first_at, first) = frames[0];
    let original_first = mp3_frames(bytes)[0];
    let original_tag = XingTag::parse(&bytes[original_first.0..], &original_first.1);
    let clip_tag = XingTag::parse(&clip[first_at..], &first);
    assert_eq!(
        original_tag.is_some(),
        clip_tag.is_some(),
        "{name}: a Xing frame only if the original has one"
    );
    match &clip_tag {
        Some(tag) => {
            let audio = (frames.len() - 1) as u32;
            assert_eq!(tag.frames, Some(audio), "{name}: Xing frame count");
            assert_eq!(
                tag.bytes,
                Some((clip.len() - first_at) as u32),
                "{name}: Xing bytes"
            );
            audio
        }
        None => frames.len() as u32,
    }
}

/// What ffprobe says of an input, without the addresses it prints.
fn complaints(input: &str) -> Vec<String> {
    let said = ffprobe_complaints(input);
    said.lines()
        .map(|l| l.split_once("] ").map_or(l, |(_, what)| what).to_string())
        .collect()
}

/// Checks one MP3 clip of `[start, end)` seconds against its original, written at `original`.
fn check_mp3_clip(mount: &Mount, sample: ClipSample, name: &str, original: &Path) {
    let (start, end) = (5.0, 12.0);
    let clip_path = mount.path(&format!("{name}?start={start}&end={end}"));
    let clip = fs::read(&clip_path).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        fs::metadata(&clip_path).unwrap().len(),
        clip.len() as u64,
        "{name}: stat size"
    );
    let bytes = sample.bytes();
    let id3 = id3v2_len(bytes).unwrap_or(0) as usize;
    assert_eq!(
        clip[..id3],
        bytes[..id3],
        "{name}: the ID3v2 tag stays in front"
    );
    let frames = mp3_frames(&clip);
    let first = frames[0].1;
    let frame_seconds = f64::from(first.samples()) / f64::from(first.sample_rate);
    let audio_frames = check_xing(&clip, bytes, &frames, name);
    let want = ((end - start) / frame_seconds).round();
    assert!(
        (f64::from(audio_frames) - want).abs() <= 2.0,
        "{name}: {audio_frames} frames, want {want}"
    );
    // The same as of the original (a file without a Xing frame has its duration estimated).
    assert_eq!(
        complaints(text(&clip_path)),
        complaints(text(original)),
        "ffprobe of {name}'s clip"
    );
    let d = duration(text(&clip_path));
    assert!(
        (d - (end - start)).abs() <= 2.0 * frame_seconds,
        "{name}: lasts {d} s"
    );
    let channels = if first.mono { 1 } else { 2 };
    let run = assert_one_audio_run(
        &decoded_audio(&clip_path),
        &decoded_audio(original),
        first.samples() as usize,
        channels,
        (4, 2),
    );
    assert!(
        run as f64 >= (end - start - 8.0 * frame_seconds) * f64::from(first.sample_rate),
        "{name}: run of {run}"
    );
}

/// CRC-16/ARC, written out here apart from the crate's, for the LAME tag's checksum.
fn crc16_arc(data: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &byte in data {
        crc ^= u16::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// A clip's LAME tag: its delay and padding, with its tag CRC checked.
fn lame_delay_padding(clip: &[u8]) -> (u32, u32) {
    let (at, header) = mp3_frames(clip)[0];
    let tag = XingTag::parse(&clip[at..], &header).expect("a Xing frame");
    let crc_at = at + tag.lame_crc_at().expect("a LAME tag");
    let stored = u16::from_be_bytes([clip[crc_at], clip[crc_at + 1]]);
    assert_eq!(stored, crc16_arc(&clip[at..crc_at]), "the LAME tag's CRC");
    tag.delay_padding().expect("a LAME tag")
}

#[test]
fn mp3_clips_keep_the_encoder_delay_and_padding_only_at_the_original_ends() {
    common::require_mount!();
    let origin = Origin::start();
    let bytes = ClipSample::Mp3Vbr.bytes();
    origin.put("/vbr.mp3", bytes.to_vec());
    let mount = Mount::builder(origin.url()).opt("block_size=64K").mount();
    let (delay, padding) = lame_delay_padding(bytes);
    assert!(
        delay > 0 && padding > 0,
        "the original has both: {delay}, {padding}"
    );
    for (query, want) in [
        ("start=5&end=12", (0, 0)),
        ("end=3", (delay, 0)),
        ("start=15", (0, padding)),
    ] {
        let clip = fs::read(mount.path(&format!("vbr.mp3?{query}"))).unwrap();
        assert_eq!(lame_delay_padding(&clip), want, "{query}");
    }
    mount.unmount();
}

/// Mounts an origin holding `samples` and a text file named `text`, checks each sample's clips
/// with `check` (given the original written to a local file) and that the sample itself reads
/// byte for byte; returns the origin and the mount for the test's own checks.
fn check_each_sample(
    samples: &[(ClipSample, &str)],
    text: &str,
    check: impl Fn(&Mount, ClipSample, &str, &Path),
) -> (Origin, Mount) {
    let dir = tempfile::tempdir().expect("tempdir");
    let origin = Origin::start();
    origin.put(&format!("/{text}"), b"plain text\n".repeat(300));
    let mount = mount_files(&origin, samples.iter().map(|&(s, name)| (s.bytes(), name)));
    for &(sample, name) in samples {
        let original = dir.path().join(name);
        fs::write(&original, sample.bytes()).unwrap();
        check(&mount, sample, name, &original);
        assert_file_matches(&mount.path(name), sample.bytes(), 64 * KIB as usize);
    }
    (origin, mount)
}

#[test]
fn mp3_clips_cut_on_frames_keep_their_tags_and_decode_to_one_run_of_the_original() {
    common::require_mount!();
    let samples = [
        (ClipSample::Mp3Cbr, "cbr.mp3"),
        (ClipSample::Mp3Vbr, "vbr.mp3"),
        (ClipSample::Mp3Bare, "bare.mp3"),
    ];
    let (_origin, mount) =
        check_each_sample(&samples, "text.mp3", |mount, sample, name, original| {
            check_mp3_clip(mount, sample, name, original)
        });
    // A clip to the end keeps the original's last frame; one from the start its first.
    let tail = fs::read(mount.path("vbr.mp3?start=15")).unwrap();
    let bytes = ClipSample::Mp3Vbr.bytes();
    assert_eq!(tail[tail.len() - 1000..], bytes[bytes.len() - 1000..]);
    assert!(fs::metadata(mount.path("cbr.mp3?end=3")).unwrap().len() > 0);
    assert_no_such_clips(
        mount,
        &[
            "cbr.mp3?start=100",
            "vbr.mp3?start=30",
            "cbr.mp3?start=abc",
            "cbr.mp3?start=5&end=5",
            "text.mp3?start=1",
            "missing.mp3?start=1",
        ],
        &[
            ("/text.mp3", "no run of Layer III frames"),
            ("/cbr.mp3", "past the end"),
        ],
    );
}

/// Each of `names` is ENOENT, and after unmounting, the log says `why` of each `(path, why)`.
fn assert_no_such_clips(mount: Mount, names: &[&str], reasons: &[(&str, &str)]) {
    for name in names {
        let got = fs::metadata(mount.path(name));
        assert_eq!(errno(&got), Some(libc::ENOENT), "{name}: {got:?}");
    }
    let log = mount.unmount();
    for (path, why) in reasons {
        assert!(
            log.lines().any(|l| l.contains(path) && l.contains(why)),
            "the log says why {path} has no clip ({why}):\n{log}"
        );
    }
}

/// Where the audio frames of `clip` (after its Xing frame, if any) begin among `original`'s,
/// and how many there are.
fn frame_run_in(clip: &[u8], original: &[u8]) -> (usize, usize) {
    let frame_bytes = |file: &[u8]| -> Vec<Vec<u8>> {
        let frames = mp3_frames(file);
        let skip = usize::from(XingTag::parse(&file[frames[0].0..], &frames[0].1).is_some());
        frames[skip..]
            .iter()
            .map(|&(at, h)| file[at..at + h.frame_len()].to_vec())
            .collect()
    };
    let (ours, all) = (frame_bytes(clip), frame_bytes(original));
    let at = all
        .windows(ours.len())
        .position(|w| w == ours.as_slice())
        .expect("the clip's frames are one run of the original's");
    (at, ours.len())
}

#[test]
fn mp3_clips_cut_on_the_frames_mp3splt_cuts_on() {
    common::require_mount!();
    let dir = tempfile::tempdir().expect("tempdir");
    let origin = Origin::start();
    let samples = [
        (ClipSample::Mp3Cbr, "cbr.mp3"),
        (ClipSample::Mp3Vbr, "vbr.mp3"),
    ];
    let mount = mount_files(
        &origin,
        samples.map(|(sample, name)| (sample.bytes(), name)),
    );
    for (sample, name) in samples {
        let original = dir.path().join(name);
        fs::write(&original, sample.bytes()).unwrap();
        // Frame mode, 5.00 s to 12.00 s (mm.ss.hh).
        let out = dir.path().join(format!("splt-{name}"));
        let stem = format!("splt-{}", name.trim_end_matches(".mp3"));
        let args = ["-q", "-f", "-d", text(dir.path()), "-o", &stem];
        let run = media_support::tool(
            "mp3splt",
            &[&args[..], &[text(&original), "0.05.00", "0.12.00"]].concat(),
        );
        let split = fs::read(&out)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}{}", run.command, run.stdout, run.stderr));
        let ours = fs::read(mount.path(&format!("{name}?start=5&end=12"))).unwrap();
        let (our_start, our_len) = frame_run_in(&ours, sample.bytes());
        let (splt_start, splt_len) = frame_run_in(&split, sample.bytes());
        eprintln!("{name}: frames {our_start}+{our_len}, mp3splt's {splt_start}+{splt_len}");
        assert!(
            our_start.abs_diff(splt_start) <= 1,
            "{name}: starts at frame {our_start}, mp3splt at {splt_start}"
        );
        assert!(
            our_len.abs_diff(splt_len) <= 2,
            "{name}: {our_len} frames, mp3splt's {splt_len}"
        );
    }
    mount.unmount();
}

#[test]
fn mp3_and_flv_clips_cost_only_their_share_of_the_file() {
    common::require_mount!();
    let origin = Origin::start();
    let samples = [
        (ClipSample::Mp3Cbr, "cbr.mp3"),
        (ClipSample::Mp3Vbr, "vbr.mp3"),
        (ClipSample::FlvIndexed, "indexed.flv"),
    ];
    for (sample, name) in samples {
        origin.put(&format!("/{name}"), sample.bytes().to_vec());
    }
    let block = 16 * KIB;
    let mount = Mount::builder(origin.url())
        .opt("block_size=16K,readahead_max=0")
        .mount();
    for (sample, name) in samples {
        let whole = sample.bytes().len() as u64;
        // Cold: the clip is the first thing read of this file.
        let clip = mount.path(&format!("{name}?start=8&end=11"));
        let size = fs::metadata(&clip).unwrap().len();
        let at_stat = origin.bytes_sent_for(&format!("/{name}"));
        let bytes = fs::read(&clip).unwrap();
        assert_eq!(bytes.len() as u64, size, "{name}");
        let fetched = origin.bytes_sent_for(&format!("/{name}"));
        // The front (64 KiB), the last block (an ID3v1 tag), a block or two at each end of
        // the clip, and the clip itself.
        let budget = 64 * KIB + block + 4 * block + size;
        assert!(
            fetched <= budget && fetched < whole / 2,
            "{name}: the origin sent {fetched} bytes ({at_stat} at stat) for a {size}-byte \
             clip of a {whole}-byte file (budget {budget})\n{}",
            origin.describe_requests()
        );
        eprintln!("{name}: a {size}-byte clip cost {at_stat} origin bytes at stat, {fetched} read");
    }
    let cbr_at_stat = {
        let name = "cbr.mp3?start=15&end=16";
        let before = origin.bytes_sent_for("/cbr.mp3");
        fs::metadata(mount.path(name)).unwrap();
        origin.bytes_sent_for("/cbr.mp3") - before
    };
    // Two 8 KiB windows, each within one or two blocks.
    assert!(
        cbr_at_stat <= 4 * block,
        "a warm CBR clip's stat reads two windows: {cbr_at_stat}"
    );
    for request in origin.requests() {
        assert!(
            request.query.is_none() && !request.path.contains('?'),
            "a clip name reached the origin: {}",
            request.target
        );
    }
    mount.unmount();
}

/// Runs `flvmeta --check` on a file: it fails on an error, and reports warnings.
fn flvmeta_check(path: &Path) -> media_support::ToolRun {
    media_support::tool("flvmeta", &["--check", "--level=warning", text(path)])
}

/// What a clip rewrites in `onMetaData` (the rest, like ffmpeg's stated bit rates, it keeps
/// as the original states them).
const FLV_REWRITTEN: [&str; 9] = [
    "duration",
    "filesize",
    "datasize",
    "videosize",
    "audiosize",
    "lasttimestamp",
    "lastkeyframe",
    "keyframe",
    "canSeekToEnd",
];

/// The warnings of a `flvmeta --check` report about what a clip rewrites.
fn flvmeta_warnings_on_rewrites(report: &str) -> Vec<&str> {
    report
        .lines()
        .filter(|l| l.contains("warning") && FLV_REWRITTEN.iter().any(|w| l.contains(w)))
        .collect()
}

/// Checks one FLV clip of 5 to 12 s against its original, written at `original`.
fn check_flv_clip(mount: &Mount, name: &str, original: &Path) {
    let (start, end) = (5.0, 12.0);
    let clip_path = mount.path(&format!("{name}?start={start}&end={end}"));
    let clip = fs::read(&clip_path).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        fs::metadata(&clip_path).unwrap().len(),
        clip.len() as u64,
        "{name}: stat size"
    );
    assert_eq!(
        ffprobe_complaints(text(&clip_path)),
        "",
        "ffprobe of {name}'s clip"
    );
    let check = flvmeta_check(&clip_path);
    assert!(
        check.ok,
        "{}:\n{}{}",
        check.command, check.stdout, check.stderr
    );
    let wrong = flvmeta_warnings_on_rewrites(&check.stdout);
    assert!(
        wrong.is_empty(),
        "{name}: flvmeta on the clip: {wrong:?}\n{}",
        check.stdout
    );
    let key = key_frame_at_or_before(text(original), start);
    let frames: Vec<String> = video_frames(&clip_path).into_iter().map(|f| f.1).collect();
    let hashes: Vec<String> = video_frames(original).into_iter().map(|f| f.1).collect();
    let at = assert_one_frame_run(&frames, &hashes);
    // The FLV's own millisecond timestamps: decoded frames are on a 1/25 s grid.
    let times = video_packet_times(text(original));
    let in_clip = |t: &f64| *t >= key - 1e-6 && *t < end;
    let first = times
        .iter()
        .position(in_clip)
        .expect("a frame at the key frame");
    assert_eq!(
        at, first,
        "{name}: the clip starts at the key frame at or before {start} s"
    );
    let want = times.iter().filter(|t| in_clip(t)).count();
    assert_eq!(frames.len(), want, "{name}: every frame up to {end} s");
    let d = duration(text(&clip_path));
    assert!(
        (d - (end - key)).abs() <= 0.1,
        "{name}: lasts {d} s, want {}",
        end - key
    );
    assert!(
        decodes_from(text(&clip_path), "1").ok,
        "{name}: ffmpeg plays the clip"
    );
}

#[test]
fn flv_clips_start_on_a_key_frame_pass_flvmeta_and_play_one_run_of_the_original() {
    common::require_mount!();
    let samples = [
        (ClipSample::FlvIndexed, "indexed.flv"),
        (ClipSample::FlvPlain, "plain.flv"),
    ];
    let (_origin, mount) = check_each_sample(&samples, "text.flv", |mount, _, name, original| {
        check_flv_clip(mount, name, original)
    });
    assert_no_such_clips(
        mount,
        &[
            "indexed.flv?start=100",
            "plain.flv?start=30",
            "plain.flv?end=abc",
            "text.flv?start=1",
        ],
        &[
            ("/text.flv", "not an FLV"),
            ("/indexed.flv", "past the end"),
        ],
    );
}

// ===========================================================================
// Hostile files
// ===========================================================================

/// (box start, payload start, box end) of every box reachable through the containers.
fn box_spans(file: &[u8]) -> Vec<(usize, usize, usize)> {
    fn walk(body: &[u8], base: usize, out: &mut Vec<(usize, usize, usize)>) {
        let mut at = 0;
        while at + 8 <= body.len() {
            let size32 = u32::from_be_bytes(body[at..at + 4].try_into().unwrap()) as usize;
            let (header, size) = match size32 {
                1 if at + 16 <= body.len() => (
                    16,
                    u64::from_be_bytes(body[at + 8..at + 16].try_into().unwrap()) as usize,
                ),
                0 => (8, body.len() - at),
                n => (8, n),
            };
            if size < header || at + size > body.len() {
                return;
            }
            out.push((base + at, base + at + header, base + at + size));
            let kind = &body[at + 4..at + 8];
            let containers: [&[u8]; 7] = [
                b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf",
            ];
            if containers.contains(&kind) {
                walk(&body[at + header..at + size], base + at + header, out);
            }
            at += size;
        }
    }
    let mut out = Vec::new();
    walk(file, 0, &mut out);
    out
}

fn put_u32(file: &mut [u8], at: usize, value: u32) {
    if at + 4 <= file.len() {
        file[at..at + 4].copy_from_slice(&value.to_be_bytes());
    }
}

fn get_u32(file: &[u8], at: usize) -> u32 {
    file.get(at..at + 4)
        .map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap()))
}

/// A value a parser is likely to trip over, near the current one or at an edge.
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
        file_len as u32,
        rng.next_u64() as u32,
    ];
    choices[rng.below(choices.len() as u64) as usize]
}

/// One to three changes to box sizes, table counts, table entries (offsets among them),
/// single bits, or the file's length.
fn mutate(rng: &mut Rng, original: &[u8], spans: &[(usize, usize, usize)]) -> Vec<u8> {
    let mut f = original.to_vec();
    for _ in 0..1 + rng.below(3) {
        let (start, payload, end) = spans[rng.below(spans.len() as u64) as usize];
        let pick = |rng: &mut Rng, n: usize| rng.below(n.max(1) as u64) as usize;
        let at = match rng.below(5) {
            0 => start,                                        // the box size
            1 => payload + 4 * pick(rng, 3),                   // a count after version and flags
            2 => payload + 4 * pick(rng, (end - payload) / 4), // any entry: offsets, sizes
            3 if !f.is_empty() => {
                let at = pick(rng, f.len());
                f[at] ^= 1 << rng.below(8);
                continue;
            }
            _ => {
                f.truncate(pick(rng, f.len()));
                continue;
            }
        };
        let current = get_u32(&f, at);
        let value = interesting(rng, current, original.len());
        put_u32(&mut f, at, value);
    }
    f
}

#[test]
fn mutated_mp4_files_never_crash_hang_or_bloat_the_daemon() {
    common::require_mount!();
    const MUTANTS: usize = 48;
    let original = Sample::Small.bytes();
    let spans = box_spans(original);
    let mut rng = Rng::new(0x5eed_f00d);
    let origin = Origin::start();
    let mutants: Vec<Vec<u8>> = (0..MUTANTS)
        .map(|_| mutate(&mut rng, original, &spans))
        .collect();
    for (i, m) in mutants.iter().enumerate() {
        origin.put(&format!("/fuzz/{i}.mp4"), m.clone());
    }
    let mut mount = Mount::builder(origin.url()).opt("block_size=16K").mount();
    let pid = mount.pid().expect("daemon pid");
    let (mut views, mut clips) = (0, 0);
    for (i, m) in mutants.iter().enumerate() {
        // What the file must read as: the library's view, or the bytes unchanged; EIO is
        // the only other answer allowed.
        let (want, is_view) = expected_whole(m);
        views += usize::from(is_view);
        let path = mount.path(&format!("fuzz/{i}.mp4"));
        let got = bounded(&format!("reading mutant {i}"), CALL_BOUND, move || {
            fs::read(path)
        });
        match got {
            Ok(bytes) => assert_bytes_eq(&bytes, &want, &format!("mutant {i}")),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "mutant {i}: {e}"),
        }
        let clip = mount.path(&format!("fuzz/{i}.mp4?start=0.5&end=1.5"));
        let want = expected_clip(m, Some(0.5), Some(1.5)).map(|(bytes, _)| bytes);
        clips += usize::from(want.is_some());
        let got = bounded(
            &format!("reading a clip of mutant {i}"),
            CALL_BOUND,
            move || fs::read(clip),
        );
        match (got, want) {
            (Ok(bytes), Some(want)) => assert_bytes_eq(&bytes, &want, &format!("clip {i}")),
            (Err(e), None) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "clip {i}"),
            (Err(e), Some(_)) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "clip {i}: {e}"),
            (Ok(_), None) => panic!("clip {i} exists, but the library makes none"),
        }
    }
    eprintln!("{MUTANTS} mutants: {views} presented through a view, {clips} with a clip");
    assert!(mount.is_running(), "the daemon died:\n{}", mount.log());
    let peak = memory_bytes(pid, "VmHWM") / 1024;
    assert!(peak < 256 * 1024, "the daemon's peak RSS is {peak} KiB");
    let log = mount.unmount();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}

/// A hostile copy of an MP3 or FLV: a few bytes set to 0, 0xFF or noise, mostly in the first
/// 4 KiB where the tags, headers, metadata and seek tables are; sometimes cut short.
fn mutate_front(rng: &mut Rng, original: &[u8]) -> Vec<u8> {
    let mut file = original.to_vec();
    for _ in 0..1 + rng.below(8) {
        let span = if rng.below(2) == 0 {
            4096
        } else {
            file.len() as u64
        };
        let at = rng.below(span.min(file.len() as u64)) as usize;
        file[at] = match rng.below(3) {
            0 => 0,
            1 => 0xFF,
            _ => rng.below(256) as u8,
        };
    }
    if rng.below(10) == 0 {
        file.truncate(rng.below(file.len() as u64) as usize);
    }
    file
}

#[test]
fn mutated_mp3_and_flv_files_never_crash_hang_or_bloat_the_daemon() {
    common::require_mount!();
    const MUTANTS: usize = 24;
    let mut rng = Rng::new(0x0a11_ce5e);
    let origin = Origin::start();
    let mut names = Vec::new();
    for sample in [
        ClipSample::Mp3Vbr,
        ClipSample::Mp3Cbr,
        ClipSample::FlvIndexed,
        ClipSample::FlvPlain,
    ] {
        for i in 0..MUTANTS {
            let name = format!("fuzz/{i}-{sample:?}.{}", sample.extension());
            origin.put(&format!("/{name}"), mutate_front(&mut rng, sample.bytes()));
            names.push(name);
        }
    }
    let mut mount = Mount::builder(origin.url()).opt("block_size=16K").mount();
    let pid = mount.pid().expect("daemon pid");
    let mut clips = 0;
    for name in &names {
        for query in ["start=5&end=12", "start=0.5", "end=3"] {
            let path = mount.path(&format!("{name}?{query}"));
            let what = format!("a clip of {name}?{query}");
            let got = bounded(&what, CALL_BOUND, move || {
                let size = fs::metadata(&path)?.len();
                fs::read(&path).map(|bytes| (size, bytes))
            });
            match got {
                Ok((size, bytes)) => {
                    assert_eq!(
                        size,
                        bytes.len() as u64,
                        "{what}: stat gives the exact size"
                    );
                    clips += 1;
                }
                Err(e) => assert!(
                    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EIO)),
                    "{what}: {e}"
                ),
            }
        }
    }
    eprintln!("{} mutants: {clips} clips made", names.len());
    assert!(clips > 0, "some mutants still have clips");
    assert!(mount.is_running(), "the daemon died:\n{}", mount.log());
    let peak = memory_bytes(pid, "VmHWM") / 1024;
    assert!(peak < 256 * 1024, "the daemon's peak RSS is {peak} KiB");
    let log = mount.unmount();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}

// ===========================================================================
// Streaming servers on the mount
// ===========================================================================

/// The codecs ffprobe finds in an input, in stream order.
fn codecs(input: &str) -> String {
    let args = [
        "-v",
        "error",
        "-show_entries",
        "stream=codec_name",
        "-of",
        "csv=p=0",
        input,
    ];
    let run = media_support::tool("ffprobe", &args);
    assert!(run.ok, "{} failed:\n{}", run.command, run.stderr);
    run.stdout.split_whitespace().collect::<Vec<_>>().join(",")
}

#[test]
fn nginx_rtmp_plays_a_moov_at_end_mp4_and_an_flv_from_the_mount() {
    common::require_mount!();
    let origin = Origin::start();
    origin.put("/movie.mp4", Sample::Plain.bytes().to_vec());
    origin.put("/video.flv", ClipSample::FlvIndexed.bytes().to_vec());
    let mount = Mount::builder(origin.url())
        .opt("allow_other,block_size=64K")
        .mount();
    assert!(
        layout_is_moov_at_end(Sample::Plain.bytes()),
        "the origin's MP4 has its moov at the end"
    );
    let nginx = StreamingNginx::start(mount.mountpoint());
    for name in ["movie.mp4", "video.flv"] {
        let url = nginx.rtmp_url(name);
        let found = codecs(&url);
        assert!(
            found.contains("h264") && found.contains("aac"),
            "{url}: streams {found}\n{}",
            nginx.errors()
        );
        let played = media_support::tool(
            "ffmpeg",
            &[
                "-v", "error", "-xerror", "-i", &url, "-t", "3", "-f", "null", "-",
            ],
        );
        assert!(
            played.ok,
            "ffmpeg plays {url}:\n{}\n{}",
            played.stderr,
            nginx.errors()
        );
    }
    drop(nginx);
    mount.unmount();
}

/// Whether the MP4's top-level boxes put `moov` after `mdat`.
fn layout_is_moov_at_end(file: &[u8]) -> bool {
    let boxes = top_level_boxes(file);
    let at = |kind: &str| boxes.iter().position(|b| b == kind);
    matches!((at("mdat"), at("moov")), (Some(mdat), Some(moov)) if mdat < moov)
}

#[test]
fn nginx_mp4_pseudo_streaming_serves_clips_from_the_mount() {
    common::require_mount!();
    let origin = Origin::start();
    origin.put("/movie.mp4", Sample::Plain.bytes().to_vec());
    let mount = Mount::builder(origin.url())
        .opt("allow_other,block_size=64K")
        .mount();
    let nginx = StreamingNginx::start(mount.mountpoint());
    let whole = curl(&nginx.http_url("movie.mp4"), &[]);
    assert_eq!(whole.code, 200, "{}", nginx.errors());
    assert_bytes_eq(
        &whole.body,
        &fs::read(mount.path("movie.mp4")).unwrap(),
        "the whole file",
    );
    assert_moov_first(&whole.body, "nginx's copy of the mount's file");
    let url = nginx.http_url("movie.mp4?start=2&end=5");
    let clip = curl(&url, &[]);
    assert_eq!(clip.code, 200, "{url}\n{}", nginx.errors());
    assert!(
        clip.body.len() < whole.body.len() / 2,
        "{url}: {} bytes",
        clip.body.len()
    );
    assert_moov_first(&clip.body, "nginx's clip");
    assert_eq!(ffprobe_complaints(&url), "", "ffprobe of {url}");
    let d = duration(&url);
    assert!((d - 3.0).abs() <= GOP_SECONDS, "{url}: duration {d} s");
    assert!(decodes_from(&url, "1").ok, "ffmpeg plays {url}");
    drop(nginx);
    mount.unmount();
}

// ===========================================================================
// Apache, listings
// ===========================================================================

/// Apache with mod_rewrite, the README's rules: a player's `NAME.EXT?start=S&end=E` URL is
/// served from the clip file of that name for every media extension (the last `?` of the
/// rewrite ends the file name); a bound the mount refuses, or one with characters a file name
/// should not get, is a 404.
fn rewrite_config(docroot: &Path) -> String {
    let root = docroot.display();
    format!(
        "LoadModule rewrite_module /usr/lib/apache2/modules/mod_rewrite.so\n\
         RewriteEngine On\n\
         RewriteCond %{{QUERY_STRING}} (^|&)(start|end)=\n\
         RewriteCond %{{QUERY_STRING}} ^([A-Za-z0-9_.=&-]+)$\n\
         RewriteRule ^/(.+\\.(mp4|m4v|m4a|mov|mp3|flv))$ {root}/$1?%1? [NC,QSL,L]\n\
         RewriteCond %{{QUERY_STRING}} (^|&)(start|end)=\n\
         RewriteRule \\.(mp4|m4v|m4a|mov|mp3|flv)$ - [NC,R=404,L]\n"
    )
}

#[test]
fn apache_serves_clips_of_every_media_extension_and_404s_bad_bounds() {
    common::require_mount!();
    let root = open_tempdir();
    let files = [
        ("audio.mp3", ClipSample::Mp3Cbr.bytes()),
        ("video.flv", ClipSample::FlvIndexed.bytes()),
        ("audio.m4a", Sample::Audio.bytes()),
        ("vod.mp4", Sample::Plain.bytes()),
    ];
    for (name, bytes) in files {
        fs::write(root.path().join(name), bytes).unwrap();
        fs::set_permissions(root.path().join(name), fs::Permissions::from_mode(0o644)).unwrap();
    }
    let nginx = Nginx::start(root.path(), Autoindex::Html);
    let mount = Mount::builder(nginx.url())
        .opt("allow_other,block_size=64K")
        .mount();
    fs::set_permissions(mount.tmp_dir(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut apache = Apache::start_with(mount.mountpoint(), &rewrite_config(mount.mountpoint()));
    for (name, bytes) in files {
        let clip = fs::read(mount.path(&format!("{name}?start=2&end=5"))).unwrap();
        assert!(clip.len() < bytes.len(), "{name}: the clip is shorter");
        let url = apache.url(&format!("/{name}?start=2&end=5"));
        let got = curl(&url, &[]);
        assert_eq!(got.code, 200, "GET {url}\n{}", apache.logs());
        assert_bytes_eq(&got.body, &clip, &url);
        let url = apache.url(&format!("/{name}?v=3"));
        let got = curl(&url, &[]);
        assert_eq!(got.code, 200, "GET {url}\n{}", apache.logs());
        let whole = fs::read(mount.path(name)).unwrap();
        assert_bytes_eq(&got.body, &whole, "another query gets the whole file");
        for query in [
            "start=abc",
            "start=5&end=2",
            "start=100",
            "start=%2F1",
            "end=1/2",
        ] {
            let url = apache.url(&format!("/{name}?{query}"));
            assert_eq!(curl(&url, &[]).code, 404, "GET {url}\n{}", apache.logs());
        }
    }
    assert!(apache.stop().is_some(), "apache2 did not stop");
    mount.unmount();
}

#[test]
fn apache_serves_a_clip_from_the_mount_and_listings_never_show_clip_names() {
    common::require_mount!();
    let root = open_tempdir();
    let bytes = Sample::BFrames.bytes();
    fs::write(root.path().join("movie.mp4"), bytes).unwrap();
    fs::write(
        root.path().join("movie.mp4?start=1&end=2"),
        b"an origin file with a clip's name",
    )
    .unwrap();
    fs::write(root.path().join("notes.txt"), b"notes").unwrap();
    for entry in fs::read_dir(root.path()).unwrap() {
        fs::set_permissions(entry.unwrap().path(), fs::Permissions::from_mode(0o644)).unwrap();
    }
    let nginx = Nginx::start(root.path(), Autoindex::Html);
    let mount = Mount::builder(nginx.url())
        .opt("allow_other,block_size=64K")
        .mount();
    fs::set_permissions(mount.tmp_dir(), fs::Permissions::from_mode(0o755)).unwrap();

    let mut listed: Vec<String> = fs::read_dir(mount.mountpoint())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        ["movie.mp4", "notes.txt"],
        "listings never show clip names"
    );

    let mut apache = Apache::start_with(mount.mountpoint(), &rewrite_config(mount.mountpoint()));
    let (want, _) = expected_clip(bytes, Some(2.0), Some(5.0)).unwrap();
    for url in [
        apache.url("/movie.mp4%3Fstart=2&end=5"),
        apache.url("/movie.mp4?start=2&end=5"),
    ] {
        let got = curl(&url, &[]);
        assert_eq!(got.code, 200, "GET {url}\n{}", apache.logs());
        assert_bytes_eq(&got.body, &want, &url);
    }
    let (whole, _) = expected_whole(bytes);
    let got = curl(&apache.url("/movie.mp4"), &[]);
    assert_eq!(got.code, 200, "{}", apache.logs());
    assert_bytes_eq(&got.body, &whole, "the whole file through Apache");
    let url = apache.url("/movie.mp4?start=2&end=5");
    assert_eq!(ffprobe_complaints(&url), "", "ffprobe of {url}");
    let d = duration(&url);
    assert!((d - 3.0).abs() <= GOP_SECONDS, "{url}: duration {d} s");
    assert!(decodes_from(&url, "1").ok, "ffmpeg plays {url}");
    assert!(apache.stop().is_some(), "apache2 did not stop");

    for request in nginx.requests() {
        assert!(
            request.uri == "/" || request.uri == "/movie.mp4",
            "the origin was asked for {}\n{}",
            request.uri,
            nginx.describe()
        );
    }
    mount.unmount();
}

/// The ston-fs command line is part of the surface: `--help` lists the media keys.
#[test]
fn help_lists_the_media_keys() {
    let out = run_cli(["--help"], Duration::from_secs(20));
    for key in [
        "mp4_faststart",
        "mp4_trim",
        "mp4_max_moov",
        "mp4_start_param",
        "mp4_extensions",
        "mp3_extensions",
        "flv_extensions",
    ] {
        assert!(
            out.stdout.contains(key),
            "--help lacks {key}:\n{}",
            out.describe()
        );
    }
}

// ===========================================================================
// Memory of presented headers (issue 20, item 4)
// ===========================================================================

#[test]
fn clip_names_the_kernel_keeps_share_one_header_budget_and_rebuild_exactly() {
    common::require_mount!();
    const NAMES: usize = 800;
    // Ten minutes of tiny video and audio: 15,000 + 28,125 samples, so every clip of nearly
    // all of it has a header of a few hundred KB.
    let file = media_support::ffmpeg_output(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x48:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            "600",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-c:a",
            "aac",
            "-b:a",
            "16k",
        ],
        "mp4",
    );
    let origin = Origin::start();
    origin.put("/long.mp4", file.clone());
    let mount = Mount::builder(origin.url()).mount();
    let pid = mount.pid().expect("daemon pid");
    let name = |i: usize| format!("long.mp4?start=0&end={:.2}", 590.0 + i as f64 * 0.01);
    let (first, _) = expected_clip(&file, Some(0.0), Some(590.0)).expect("a clip");
    for i in 0..NAMES {
        fs::metadata(mount.path(&name(i))).unwrap_or_else(|e| panic!("{}: {e}", name(i)));
    }
    let rss = memory_bytes(pid, "VmRSS") / 1024;
    let headers_mib = (NAMES as u64 * header_len(&first) as u64) >> 20;
    eprintln!(
        "{NAMES} clip names, {headers_mib} MiB of headers: daemon RSS {} MiB",
        rss >> 10
    );
    assert!(
        rss < 200 * 1024,
        "{NAMES} clip names the kernel keeps ({headers_mib} MiB of headers) hold {} MiB",
        rss >> 10
    );
    // The first names' headers left memory long ago: reading them builds them again, exactly.
    assert_bytes_eq(
        &fs::read(mount.path(&name(0))).expect("read the first clip"),
        &first,
        "the first clip, read after its header was evicted",
    );
    let (second, _) = expected_clip(&file, Some(0.0), Some(590.01)).expect("a clip");
    assert_bytes_eq(
        &fs::read(mount.path(&name(1))).expect("read the second clip"),
        &second,
        "the second clip",
    );
}
