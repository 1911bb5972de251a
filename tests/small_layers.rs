//! The cache layer's small objects, through `Cache`'s own API (no FUSE, no root): a small
//! file becomes one packed record, survives a restart with no origin request, is never
//! served from a damaged record, keeps its version while a handle is open, and leaves with
//! a purge.

mod common;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::assert_bytes_eq;
use common::layer::{config, origin_and_cache_dir, Layer};
use common::origin::{pattern, Origin};
use ston_fs::base::Invalidation;

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    common::mount::find_files_with_ext(dir, "pack")
}

/// An origin with one file at `path`, read once through a layer that is then closed: the
/// file is a packed record in the returned cache folder.
fn cached_once(path: &str, seed: u64, len: usize) -> (Origin, tempfile::TempDir, Bytes) {
    let (origin, dir) = origin_and_cache_dir();
    let data = origin.put_pattern(path, seed, len);
    let layer = layer_over(&origin, &dir);
    layer.read_all(&layer.file(path));
    layer.close();
    (origin, dir, data)
}

/// A layer over `dir` with the default settings (small objects on).
fn layer_over(origin: &Origin, dir: &tempfile::TempDir) -> Layer {
    Layer::open(config(origin, dir.path(), &[]))
}

#[test]
fn small_files_are_records_that_a_restart_serves_without_the_origin() {
    let (origin, dir) = origin_and_cache_dir();
    let files: Vec<(String, bytes::Bytes)> = (0..50)
        .map(|i| {
            let path = format!("/d/{i}.txt");
            let data = origin.put_pattern(&path, 500 + i, 100 + 37 * i as usize);
            (path, data)
        })
        .collect();
    let layer = layer_over(&origin, &dir);
    for (path, data) in &files {
        let object = layer.file(path);
        assert!(object.is_small(), "{path} is a packed record");
        assert_bytes_eq(&layer.read_all(&object).0, data, path);
    }
    assert_eq!(origin.request_count(), 50, "one request a file");
    assert_eq!(layer.objects(), 50);
    layer.close();
    assert_eq!(
        common::mount::find_data_files(dir.path()).len(),
        0,
        "no file per object"
    );

    origin.reset();
    let layer = layer_over(&origin, &dir);
    for (path, data) in &files {
        let object = layer
            .cache
            .lookup_fresh(0, &Arc::from(path.as_str()))
            .expect("known from its record")
            .expect("a file");
        let (bytes, hit) = layer.read_all(&object);
        assert_bytes_eq(&bytes, data, path);
        assert!(hit, "{path} read from the cache");
    }
    assert_eq!(origin.request_count(), 0);
    layer.close();
}

#[test]
fn a_damaged_record_is_never_served_and_its_file_is_fetched_again() {
    let (origin, dir, data) = cached_once("/x.bin", 77, 3000);

    // Flip one byte of the object's data inside its segment.
    let segment = segments(dir.path()).pop().expect("a segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes
        .windows(64)
        .position(|w| w == &data[1000..1064])
        .expect("the data is in the segment");
    bytes[at + 10] ^= 0x40;
    std::fs::write(&segment, &bytes).unwrap();

    origin.reset();
    let layer = layer_over(&origin, &dir);
    assert_bytes_eq(
        &layer.read_all(&layer.file("/x.bin")).0,
        &data,
        "after the damage",
    );
    assert_eq!(origin.request_count_for("/x.bin"), 1, "fetched again");
    layer.close();
}

#[test]
fn an_open_handle_keeps_its_version_while_the_record_moves_on() {
    let (origin, dir) = origin_and_cache_dir();
    let old = origin.put_pattern("/v.txt", 1, 2000);
    let layer = layer_over(&origin, &dir);
    let first = layer.file("/v.txt");
    let handle = first.open_handle();
    let new = origin.replace("/v.txt", pattern(2, 2100)).data;
    layer.cache.invalidate(0, "/v.txt", Invalidation::Expire);
    let second = layer.file("/v.txt");
    assert_eq!(second.size(), 2100, "a lookup gets the new version");
    assert_bytes_eq(&layer.read_all(&second).0, &new, "new version");
    assert_bytes_eq(
        &layer.read_all(handle.object()).0,
        &old,
        "the open handle's version, from its pinned record",
    );
    drop(handle);
    layer.close();
}

#[test]
fn a_purge_of_a_folder_takes_its_records_and_leaves_the_others() {
    let (origin, dir) = origin_and_cache_dir();
    for path in ["/a/x", "/a/y", "/b/z"] {
        origin.put_pattern(path, 3, 1000);
    }
    let layer = layer_over(&origin, &dir);
    for path in ["/a/x", "/a/y", "/b/z"] {
        layer.read_all(&layer.file(path));
    }
    let report = layer.cache.invalidate(0, "/a/*", Invalidation::Purge);
    assert_eq!((report.objects, report.bytes), (2, 2000));
    let known = |path: &str| layer.cache.lookup_fresh(0, &Arc::from(path)).is_some();
    assert!(!known("/a/x") && !known("/a/y"));
    assert!(known("/b/z"));
    assert_eq!(layer.objects(), 1);
    layer.close();
}

#[test]
fn turning_small_objects_off_removes_the_store_the_cap_would_not_count() {
    let (origin, dir, data) = cached_once("/s", 5, 1000);
    assert_eq!(segments(dir.path()).len(), 1);
    let layer = Layer::open(config(&origin, dir.path(), &[("small_object_max", "0")]));
    assert!(
        segments(dir.path()).is_empty(),
        "no bytes left outside the cap"
    );
    assert_bytes_eq(&layer.read_all(&layer.file("/s")).0, &data, "/s");
    layer.close();
}

#[test]
fn with_small_objects_off_every_file_has_its_cache_files() {
    let (origin, dir) = origin_and_cache_dir();
    origin.put_pattern("/f", 4, 1000);
    let layer = Layer::open(config(&origin, dir.path(), &[("small_object_max", "0")]));
    let object = layer.file("/f");
    layer.read_all(&object);
    assert!(!object.is_small());
    layer.wait_cached(&object);
    layer.close();
    assert_eq!(common::mount::find_data_files(dir.path()).len(), 1);
    assert!(segments(dir.path()).is_empty());
}
