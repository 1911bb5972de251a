//! A sequential read after random reads of the same cold file (the bench's figure 6), through
//! a real FUSE mount: every byte is right, the origin is asked for at most 1.05× the bytes
//! that were missing, and read-ahead joined some of the pieces the cached blocks cut the file
//! into. No timing here: the speed is the bench's to measure.

mod common;

use std::collections::BTreeSet;
use std::fs::File;

use common::mount::Mount;
use common::mount_origin;
use common::origin::pattern;
use common::{
    assert_bytes_eq, assert_file_matches, drop_pages_of, no_kernel_readahead, pread_full, Rng, MIB,
};

/// 1024 blocks and 200 random 4 KiB reads, as in the bench, at a sixteenth of its size.
const BLOCK: u64 = 64 * 1024;
const BLOCKS: u64 = 1024;
const RANDOM_READS: usize = 200;

/// Stretches of consecutive blocks not in `cached`: the fewest range requests a read of the
/// whole file needs if it never fetches a cached block again.
fn missing_stretches(cached: &BTreeSet<u64>) -> u64 {
    (0..BLOCKS)
        .filter(|b| !cached.contains(b) && (*b == 0 || cached.contains(&(b - 1))))
        .count() as u64
}

#[test]
fn a_sequential_read_after_random_reads_fetches_at_most_5_percent_more_than_is_missing() {
    let Some(origin) = mount_origin() else { return };
    let len = BLOCK * BLOCKS;
    let data = origin.put("/big.bin", pattern(22, len as usize)).data;
    let mount = Mount::builder(origin.url()).opt("block_size=64K").mount();

    let file = File::open(mount.path("big.bin")).expect("open");
    no_kernel_readahead(&file);
    let mut rng = Rng::new(42);
    for i in 0..RANDOM_READS {
        let offset = rng.below(len / 4096) * 4096;
        let got = pread_full(&file, offset, 4096).expect("random read");
        let want = &data[offset as usize..offset as usize + 4096];
        assert_bytes_eq(&got, want, &format!("random read #{i} at {offset}"));
    }
    origin.settle();
    let mut cached = BTreeSet::new();
    for request in origin.requests_for("/big.bin") {
        let (start, end) = request.requested_span(len);
        cached.extend(start / BLOCK..end.div_ceil(BLOCK));
    }
    let cached_bytes = origin.bytes_sent_for("/big.bin");
    assert_eq!(
        cached_bytes,
        cached.len() as u64 * BLOCK,
        "whole blocks only"
    );
    let missing = len - cached_bytes;

    origin.reset();
    drop_pages_of(&file);
    drop(file);
    assert_file_matches(&mount.path("big.bin"), &data, MIB);
    origin.settle();
    let fetched = origin.bytes_sent_for("/big.bin");
    let requests = origin.request_count_for("/big.bin");
    let stretches = missing_stretches(&cached);
    eprintln!(
        "{} cached blocks; sequential read: {fetched} bytes of {missing} missing, \
         {requests} requests for {stretches} missing stretches",
        cached.len()
    );
    assert!(
        fetched >= missing,
        "{fetched} bytes fetched, {missing} missing"
    );
    assert!(
        fetched * 20 <= missing * 21,
        "{fetched} bytes fetched for {missing} missing: more than 1.05×\n{}",
        origin.describe_requests()
    );
    assert!(
        requests < stretches,
        "{requests} requests for {stretches} missing stretches: no cached gap was bridged"
    );
    mount.unmount();
}
