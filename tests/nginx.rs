//! ston-fs in front of a real nginx: the server operators actually run. nginx answers ranges
//! with 206 and no Accept-Ranges header, redirects directories, and escapes names its own way.

mod common;

use std::fs;
use std::io::Read;

use common::mount::Mount;
use common::nginx::{Autoindex, Nginx};
use common::origin::pattern;
use common::{assert_file_matches, assert_random_preads, errno, MIB};

#[test]
fn nginx_origin_serves_exact_bytes_with_one_request_per_small_file() {
    common::require_mount!();
    let root = tempfile::tempdir().expect("tempdir");
    let big = pattern(41, 64 * MIB + 12_345);
    let small = pattern(42, 3000);
    let odd_name = "naïve 100% sure?#.txt";
    fs::create_dir(root.path().join("videos")).unwrap();
    fs::write(root.path().join("videos/big.bin"), &big).unwrap();
    fs::write(root.path().join("small.txt"), &small).unwrap();
    fs::write(root.path().join("empty"), b"").unwrap();
    fs::write(root.path().join(odd_name), b"odd name, right file\n").unwrap();
    fs::write(
        root.path().join("escape-target"),
        b"must not be reachable via ..",
    )
    .unwrap();
    let nginx = Nginx::start(root.path(), Autoindex::Off);
    let mount = Mount::builder(nginx.url()).opt("block_size=256K").mount();

    // A cold small file: stat + open + read is one origin request.
    assert_file_matches(&mount.path("small.txt"), &small, 64 * 1024);
    assert_eq!(
        nginx.requests_for("/small.txt").len(),
        1,
        "{}",
        nginx.describe()
    );

    // Sequential and random reads of a large file, every byte compared.
    assert_file_matches(&mount.path("videos/big.bin"), &big, MIB);
    let file = fs::File::open(mount.path("videos/big.bin")).unwrap();
    assert_random_preads(&file, &big, 7, 300, 200_000, "big.bin via nginx");
    drop(file);
    // Every block came from the origin exactly once.
    let origin_bytes: u64 = nginx
        .requests_for("/videos/big.bin")
        .iter()
        .map(|r| r.bytes)
        .sum();
    assert_eq!(origin_bytes, big.len() as u64, "{}", nginx.describe());

    // Directories are directories (nginx redirects /videos to /videos/), empty files are empty.
    assert!(fs::metadata(mount.path("videos")).unwrap().is_dir());
    let mut empty = Vec::new();
    fs::File::open(mount.path("empty"))
        .unwrap()
        .read_to_end(&mut empty)
        .unwrap();
    assert!(empty.is_empty());

    // A name with `%`, `?`, `#`, a space and unicode reaches the right file.
    assert_eq!(
        fs::read(mount.path(odd_name)).unwrap(),
        b"odd name, right file\n"
    );
    assert_eq!(
        errno(&fs::metadata(mount.path("no-such-file"))),
        Some(libc::ENOENT)
    );
    mount.unmount();
}

#[test]
fn nginx_cache_survives_remount_with_zero_origin_requests() {
    common::require_mount!();
    let root = tempfile::tempdir().expect("tempdir");
    let data = pattern(43, 5 * MIB + 3);
    fs::create_dir(root.path().join("media")).unwrap();
    fs::write(root.path().join("media/clip.mp4"), &data).unwrap();
    let nginx = Nginx::start(root.path(), Autoindex::Off);
    let cache = tempfile::tempdir().expect("tempdir");

    let mount = Mount::builder(nginx.url()).cache_dir(cache.path()).mount();
    assert_file_matches(&mount.path("media/clip.mp4"), &data, MIB);
    mount.unmount();
    let before = nginx.requests().len();

    let mount = Mount::builder(nginx.url()).cache_dir(cache.path()).mount();
    assert_file_matches(&mount.path("media/clip.mp4"), &data, MIB);
    assert_eq!(
        nginx.requests().len(),
        before,
        "a remount must be served from the cache"
    );
    mount.unmount();
}
