//! The media layer's MP4 presentation, over a real cache, driven directly, without FUSE and without root: a moov-at-end
//! file found with two origin requests and presented byte-exact, its rewritten header kept on
//! disk across a restart (and checked when it is read back), a new version presented afresh,
//! clips that fetch only their own bytes, and the files that are served unchanged or refused.
//! Test media are made with ffmpeg; what each presented file must be is computed from the
//! original's bytes with the crate's MP4 library.

mod common;
#[path = "media/support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::assert_bytes_eq;
use common::layer::{config, origin_and_cache_dir, Layer, BLOCK};
use ston_fs::base::{FsError, Invalidation};
use ston_fs::media::{MediaRequest, Presentation, TrimSpan};
use support::{assert_moov_first, expected_clip, expected_whole, Sample};

fn clip(start: Option<f64>, end: Option<f64>) -> MediaRequest {
    MediaRequest::Trim(TrimSpan { start, end })
}

fn view_records(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "view") {
                found.push(path);
            }
        }
    }
    found
}

/// The presented header's length: everything before the first mdat's payload.
fn header_len(presented: &[u8]) -> u64 {
    let boxes = support::top_level_boxes(presented);
    let mut at = 0u64;
    for kind in boxes {
        let size = u32::from_be_bytes(presented[at as usize..at as usize + 4].try_into().unwrap());
        if kind == "mdat" {
            return at + 8;
        }
        at += u64::from(size);
    }
    panic!("no mdat");
}

#[test]
fn a_moov_at_end_file_costs_two_requests_and_is_presented_byte_exact() {
    for (sample, path) in [
        (Sample::Plain, "/v/plain.mp4"),
        (Sample::BFrames, "/v/bframes.mp4"),
        (Sample::Audio, "/a/audio.m4a"),
    ] {
        let (origin, dir) = origin_and_cache_dir();
        origin.put(path, sample.bytes().to_vec());
        let (want, is_view) = expected_whole(sample.bytes());
        assert!(is_view, "{sample:?} has its moov at the end");
        assert_moov_first(&want, path);
        let layer = Layer::open(config(&origin, dir.path(), &[]));
        let object = layer.file(path);
        let view = layer.view(&object, &MediaRequest::Faststart);
        assert_eq!(view.size(), want.len() as u64, "{path}: presented size");
        assert_eq!(
            origin.request_count_for(path),
            2,
            "{path}: the probe and the moov's range\n{}",
            origin.describe_requests()
        );
        // The header comes from memory and the first block: no request.
        let header = layer.read_view(&object, &view, 0..header_len(&want));
        assert_bytes_eq(&header, &want[..header.len()], path);
        assert_eq!(origin.request_count_for(path), 2, "{path}: header read");
        let whole = layer.read_view(&object, &view, 0..view.size());
        assert_bytes_eq(&whole, &want, path);
        // Reads at any offset and length agree too.
        let mut rng = common::Rng::new(7);
        for _ in 0..50 {
            let at = rng.below(view.size());
            let len = 1 + rng.below(3 * BLOCK);
            let got = layer.read_view(&object, &view, at..at + len);
            let end = (at + len).min(view.size()) as usize;
            assert_bytes_eq(&got, &want[at as usize..end], &format!("{path} at {at}"));
        }
        // The same request again is answered from memory.
        assert!(layer
            .media
            .presentation_now(&object, &MediaRequest::Faststart)
            .is_some());
        layer.close();
    }
}

#[test]
fn the_rewritten_header_survives_a_restart_and_is_checked_when_read_back() {
    let (origin, dir) = origin_and_cache_dir();
    let path = "/plain.mp4";
    origin.put(path, Sample::Plain.bytes().to_vec());
    let (want, _) = expected_whole(Sample::Plain.bytes());
    let layer = Layer::open(config(&origin, dir.path(), &[]));
    let object = layer.file(path);
    let (used_before, _, _) = layer.cache.usage();
    let view = layer.view(&object, &MediaRequest::Faststart);
    let (used_after, _, _) = layer.cache.usage();
    assert_bytes_eq(
        &layer.read_view(&object, &view, 0..view.size()),
        &want,
        "first run",
    );
    layer.wait_cached(&object);
    let records = view_records(dir.path());
    assert_eq!(records.len(), 1, "one record");
    let record_len = std::fs::metadata(&records[0]).unwrap().len();
    assert!(
        used_after >= used_before + record_len,
        "the record is charged against the cap: {used_before} -> {used_after}, record {record_len}"
    );
    layer.close();

    // After a restart the record answers: no origin request at all within the TTL.
    let before = origin.request_count();
    let layer = Layer::open(config(&origin, dir.path(), &[]));
    let object = layer.file(path);
    let view = layer.view(&object, &MediaRequest::Faststart);
    assert_bytes_eq(
        &layer.read_view(&object, &view, 0..view.size()),
        &want,
        "restart",
    );
    assert_eq!(
        origin.request_count(),
        before,
        "{}",
        origin.describe_requests()
    );
    layer.close();

    // A damaged record is dropped and the header decided again, from the cached blocks.
    let mut bytes = std::fs::read(&records[0]).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&records[0], &bytes).unwrap();
    let layer = Layer::open(config(&origin, dir.path(), &[]));
    let object = layer.file(path);
    let view = layer.view(&object, &MediaRequest::Faststart);
    assert_bytes_eq(
        &layer.read_view(&object, &view, 0..view.size()),
        &want,
        "rebuilt",
    );
    assert_eq!(origin.request_count(), before, "rebuilt from cached blocks");
    assert_ne!(
        std::fs::read(&records[0]).unwrap(),
        bytes,
        "a sound record replaced it"
    );
    layer.close();

    // A record too big to be ours (over twice mp4_max_moov) is not even read.
    std::fs::write(&records[0], vec![0u8; 512 << 10]).unwrap();
    let layer = Layer::open(config(&origin, dir.path(), &[("mp4_max_moov", "128K")]));
    let object = layer.file(path);
    let view = layer.view(&object, &MediaRequest::Faststart);
    assert_eq!(view.size(), want.len() as u64);
    layer.close();
}

#[test]
fn a_new_version_is_presented_afresh_and_its_old_record_goes() {
    let (origin, dir) = origin_and_cache_dir();
    let path = "/v.mp4";
    origin.put(path, Sample::Plain.bytes().to_vec());
    let layer = Layer::open(config(&origin, dir.path(), &[]));
    let old = layer.file(path);
    let old_view = layer.view(&old, &MediaRequest::Faststart);
    origin.replace(path, Sample::BFrames.bytes().to_vec());
    layer.cache.invalidate(0, path, Invalidation::Expire);
    let new = layer.file(path);
    assert!(!Arc::ptr_eq(&old, &new), "a new version is a new object");
    let (want, _) = expected_whole(Sample::BFrames.bytes());
    let view = layer.view(&new, &MediaRequest::Faststart);
    assert_bytes_eq(
        &layer.read_view(&new, &view, 0..view.size()),
        &want,
        "new version",
    );
    assert_eq!(
        view_records(dir.path()).len(),
        1,
        "the old record went with the old blocks"
    );
    // The old version's view still reads what that version had cached, for files open on it.
    let (old_want, _) = expected_whole(Sample::Plain.bytes());
    assert_eq!(old_view.size(), old_want.len() as u64);
    layer.close();
}

#[test]
fn a_clip_fetches_only_its_header_and_its_own_media_bytes() {
    let file = Sample::BFrames.bytes();
    let (want, data) = expected_clip(file, Some(2.0), Some(5.0)).expect("a clip");
    assert_moov_first(&want, "clip");
    let (origin, dir) = origin_and_cache_dir();
    let path = "/clip.mp4";
    origin.put(path, file.to_vec());
    let layer = Layer::open(config(&origin, dir.path(), &[("block_size", "16K")]));
    let object = layer.file(path);
    let view = layer.view(&object, &clip(Some(2.0), Some(5.0)));
    assert_eq!(view.size(), want.len() as u64);
    assert_bytes_eq(
        &layer.read_view(&object, &view, 0..view.size()),
        &want,
        "clip",
    );
    let fetched = origin.bytes_sent_for(path);
    let moov = match support::layout(file).moov() {
        Some((_, moov)) => moov.end - moov.start,
        None => unreachable!(),
    };
    // The scan's first 64 KiB, the tail with the moov, and the media range, each rounded
    // out to whole (16 KiB) blocks.
    let block = 16 * 1024;
    let budget = 64 * 1024 + (moov + block) + (data.end - data.start) + 2 * block;
    assert!(
        fetched >= data.end - data.start && fetched <= budget,
        "origin sent {fetched} bytes for a clip of {} media bytes (budget {budget}, file {})\n{}",
        data.end - data.start,
        file.len(),
        origin.describe_requests()
    );
    assert!(fetched < file.len() as u64 * 3 / 4, "not the whole file");
    // Clips of other intervals are views of the same cached blocks.
    let (tail, _) = expected_clip(file, Some(7.5), None).expect("a tail clip");
    let view = layer.view(&object, &clip(Some(7.5), None));
    assert_bytes_eq(
        &layer.read_view(&object, &view, 0..view.size()),
        &tail,
        "tail clip",
    );
    layer.close();
}

#[test]
fn files_that_cannot_be_rewritten_are_unchanged_and_bad_clips_do_not_exist() {
    let (origin, dir) = origin_and_cache_dir();
    origin.put("/front.mp4", Sample::Front.bytes().to_vec());
    origin.put("/frag.mp4", Sample::Fragmented.bytes().to_vec());
    origin.put("/text.mp4", b"hello, this is not a movie\n".repeat(100));
    origin.put("/empty.mp4", Vec::new());
    let layer = Layer::open(config(&origin, dir.path(), &[]));
    for path in ["/front.mp4", "/frag.mp4", "/text.mp4", "/empty.mp4"] {
        let object = layer.file(path);
        assert!(
            matches!(
                layer.present(&object, &MediaRequest::Faststart),
                Ok(Presentation::Unchanged)
            ),
            "{path} is served unchanged"
        );
    }
    for path in ["/frag.mp4", "/text.mp4", "/empty.mp4"] {
        let object = layer.file(path);
        let refused = layer.present(&object, &clip(Some(1.0), None));
        assert!(matches!(refused, Err(FsError::NotFound)), "{path}: no clip");
    }
    // A faststart file can be clipped; a start past its end cannot.
    let front = layer.file("/front.mp4");
    let (want, _) = expected_clip(Sample::Front.bytes(), Some(1.0), Some(2.0)).unwrap();
    let view = layer.view(&front, &clip(Some(1.0), Some(2.0)));
    assert_bytes_eq(
        &layer.read_view(&front, &view, 0..view.size()),
        &want,
        "front clip",
    );
    let past = layer.present(&front, &clip(Some(100.0), None));
    assert!(matches!(past, Err(FsError::NotFound)), "start past the end");
    // A moov above mp4_max_moov is never read: served unchanged, no clip.
    let tight_dir = tempfile::tempdir().unwrap();
    origin.put("/big-moov.mp4", Sample::Plain.bytes().to_vec());
    let tight = Layer::open(config(&origin, tight_dir.path(), &[("mp4_max_moov", "4K")]));
    let object = tight.file("/big-moov.mp4");
    assert!(matches!(
        tight.present(&object, &MediaRequest::Faststart),
        Ok(Presentation::Unchanged)
    ));
    let sent = origin.bytes_sent_for("/big-moov.mp4");
    assert!(
        sent < (Sample::Plain.bytes().len() as u64) / 2,
        "a refused moov is not fetched whole ({sent} bytes)"
    );
    tight.close();
    layer.close();
}
