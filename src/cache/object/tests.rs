//! Tests of one object version against a real block store in a temporary folder: storing
//! blocks under the cap, reading them back checked, detaching, and the journal.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::slice::from_ref;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;

use super::{Identity, Object};
use crate::base::flight::Flight;
use crate::base::{now_secs, FsError, ObjectKind};
use crate::cache::blocks::{BlockState, Delivered};
use crate::cache::index::CacheIndex;
use crate::cache::ReadAhead;
use crate::origin::Version;
use crate::store::{LoadLimits, MetaHeader, SiteStore, BLOCK_OVERHEAD};

const BLOCK: u64 = 4096;

struct Fixture {
    store: SiteStore,
    index: Arc<CacheIndex<Object>>,
    /// `store_block` starts the journal recorder as a task: it needs a runtime, but this
    /// one is never driven, so the tests decide when blocks are journaled.
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn fixture(cap: u64) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    Fixture {
        store: SiteStore::open(dir.path(), "site").expect("site store"),
        index: Arc::new(CacheIndex::new(cap)),
        runtime: tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime"),
        _dir: dir,
    }
}

impl Fixture {
    /// A cached object of `blocks` blocks with an ETag, its header on disk, in the index.
    fn object(&self, path: &str, blocks: u64, etag: &str) -> Arc<Object> {
        let (location, _) = self.store.locate(path, true).expect("locate");
        let size = blocks * BLOCK;
        let header = MetaHeader {
            site: self.store.name.clone(),
            path: path.to_string(),
            kind: ObjectKind::File,
            size,
            etag: Some(etag.to_string()),
            last_modified: None,
            fetched_at: now_secs(),
            block_size: BLOCK,
            ttl: 60,
        };
        location.create(&header).expect("meta header");
        let identity = Identity {
            site: 0,
            path: Arc::from(path),
            kind: ObjectKind::File,
            version: Version {
                size,
                etag: Some(etag.to_string()),
                last_modified: None,
            },
            block_size: BLOCK,
        };
        let freshness = (Duration::from_secs(60), now_secs());
        let object = Arc::new(Object::new(
            identity,
            freshness,
            Some(location),
            0,
            Arc::downgrade(&self.index),
        ));
        self.index.insert(object.clone());
        object
    }
}

/// The bytes of one block: distinct per block and per `seed`.
fn block_bytes(seed: u8, block: u64) -> Bytes {
    Bytes::from(
        (0..BLOCK)
            .map(|i| seed.wrapping_mul(31) ^ (i as u8).wrapping_add(block as u8 * 17))
            .collect::<Vec<u8>>(),
    )
}

fn data_path(object: &Object) -> std::path::PathBuf {
    object.location.as_ref().expect("location").data.clone()
}

#[test]
fn stored_blocks_are_charged_and_read_back_exactly() {
    let fx = fixture(1 << 20);
    let _enter = fx.runtime.enter();
    let object = fx.object("/a", 4, "\"v1\"");
    let bytes = block_bytes(1, 2);
    // Two pieces, as a block arrives from the network: one write, one CRC over both.
    let pieces = [bytes.slice(..1000), bytes.slice(1000..)];
    let crc = object.store_block(2, &pieces, None).expect("stored");
    assert_eq!(crc, crc32c::crc32c(&bytes));
    assert!(object.has_cached_block(2) && !object.has_cached_block(1));
    assert_eq!(object.block_charge(2), BLOCK + BLOCK_OVERHEAD);
    assert_eq!(fx.index.used(), BLOCK + BLOCK_OVERHEAD);
    assert_eq!(object.cached_bytes(), BLOCK);
    let part = object
        .read_block(2, 100..300)
        .expect("cached")
        .expect("readable");
    assert_eq!(part, &bytes[100..300]);
    assert!(
        object.read_block(1, 0..10).is_none(),
        "an absent block is not read"
    );
    let on_disk = std::fs::read(data_path(&object)).expect("data file");
    assert_eq!(&on_disk[(2 * BLOCK) as usize..], &bytes[..]);
}

#[test]
fn a_block_that_fails_its_checksum_is_dropped_as_corrupt() {
    let fx = fixture(1 << 20);
    let _enter = fx.runtime.enter();
    let object = fx.object("/c", 3, "\"v1\"");
    let bytes = block_bytes(2, 1);
    let crc = object
        .store_block(1, from_ref(&bytes), None)
        .expect("stored");
    // As after a restart: the block is listed but not checked yet, and its bytes rotted.
    object.state.lock().blocks.set(
        1,
        BlockState::Cached {
            crc,
            verified: false,
            fresh: false,
        },
    );
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(data_path(&object))
        .expect("open data");
    file.write_all_at(b"rot", BLOCK + 77).expect("corrupt");
    let read = object.read_block(1, 0..16).expect("still listed");
    assert!(matches!(read, Err(FsError::Corrupt)));
    assert!(
        !object.has_cached_block(1),
        "a corrupt block is dropped for a refetch"
    );
    // A block whose bytes are intact passes and is then trusted.
    let good = block_bytes(2, 2);
    let crc = object
        .store_block(2, from_ref(&good), None)
        .expect("stored");
    object.state.lock().blocks.set(
        2,
        BlockState::Cached {
            crc,
            verified: false,
            fresh: false,
        },
    );
    object.verify_all();
    assert!(object.state.lock().blocks.all_verified(2..3));
    assert_eq!(object.read_block(2, 0..BLOCK).unwrap().unwrap(), &good[..]);
}

#[test]
fn a_cache_file_cut_short_is_corruption_not_zeros() {
    let fx = fixture(1 << 20);
    let _enter = fx.runtime.enter();
    let object = fx.object("/short", 2, "\"v1\"");
    object
        .store_block(1, &[block_bytes(3, 1)], None)
        .expect("stored");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(data_path(&object))
        .expect("open data");
    file.set_len(BLOCK + 10).expect("truncate");
    // Verified blocks are not checked again, but a short read is never served.
    let read = object.read_block(1, 0..BLOCK).expect("listed");
    assert!(matches!(read, Err(FsError::Corrupt)));
    assert!(!object.has_cached_block(1));
}

#[test]
fn a_full_cache_refuses_the_block_and_writes_nothing() {
    let fx = fixture(BLOCK);
    let _enter = fx.runtime.enter();
    let object = fx.object("/big", 2, "\"v1\"");
    assert!(object.store_block(0, &[block_bytes(4, 0)], None).is_none());
    assert_eq!(fx.index.used(), 0);
    assert!(!object.has_cached_block(0));
    assert!(!data_path(&object).exists(), "nothing was written");
}

#[test]
fn a_detached_object_gives_its_charge_back_and_never_writes_again() {
    let fx = fixture(1 << 20);
    let _enter = fx.runtime.enter();
    let object = fx.object("/d", 3, "\"v1\"");
    assert!(fx.index.reserve_new(12_000));
    assert!(object.add_charge(12_000));
    object
        .store_block(0, &[block_bytes(5, 0)], None)
        .expect("stored");
    let location = object.location.clone().expect("location");
    assert!(location.data.exists() && location.meta.exists());
    fx.index.retire(&object);
    assert!(object.is_detached());
    assert_eq!(
        fx.index.used(),
        0,
        "the header's and the block's charges went back"
    );
    assert_eq!(fx.index.object_count(), 0);
    assert!(!location.data.exists() && !location.meta.exists());
    assert!(
        object.read_block(0, 0..10).is_none(),
        "its cached blocks are gone"
    );
    assert!(object.store_block(1, &[block_bytes(5, 1)], None).is_none());
    assert!(
        !location.data.exists(),
        "a detached object never writes again"
    );
    assert_eq!(
        fx.index.used(),
        0,
        "the refused block's reservation went back"
    );
    assert!(!object.add_charge(1));
    assert_eq!(
        object.detach(false),
        0,
        "detaching twice frees nothing more"
    );
}

#[test]
fn an_open_file_of_a_replaced_version_keeps_reading_it() {
    let fx = fixture(1 << 20);
    let _enter = fx.runtime.enter();
    let old = fx.object("/r", 2, "\"v1\"");
    let _open = old.open_handle();
    let old_bytes = block_bytes(6, 0);
    old.store_block(0, from_ref(&old_bytes), None)
        .expect("stored");
    fx.index.retire_replaced(&old);
    assert!(!data_path(&old).exists(), "the files are removed");
    let new = fx.object("/r", 2, "\"v2\"");
    let new_bytes = block_bytes(7, 0);
    new.store_block(0, from_ref(&new_bytes), None)
        .expect("stored");
    assert_eq!(
        old.read_block(0, 0..BLOCK).unwrap().unwrap(),
        &old_bytes[..]
    );
    assert_eq!(
        new.read_block(0, 0..BLOCK).unwrap().unwrap(),
        &new_bytes[..]
    );
    assert!(!old.has_cached_block(1));
    assert!(old.store_block(1, &[old_bytes], None).is_none());
    // Without open files, a replaced version keeps nothing.
    fx.index.retire_replaced(&new);
    assert!(new.read_block(0, 0..10).is_none());
}

#[test]
fn a_block_is_stored_only_under_the_flight_that_owns_it() {
    let fx = fixture(1 << 20);
    let _enter = fx.runtime.enter();
    let object = fx.object("/f", 2, "\"v1\"");
    let (_, runs) = object.plan(0..1);
    let owner = runs[0].flights[0].clone().expect("owned");
    let bytes = block_bytes(8, 0);
    assert!(object
        .store_block(0, from_ref(&bytes), Some(&Flight::new()))
        .is_none());
    assert!(object.store_block(0, from_ref(&bytes), None).is_none());
    assert_eq!(fx.index.used(), 0, "refused blocks keep no reservation");
    assert!(!object.has_cached_block(0));
    assert!(object
        .store_block(0, from_ref(&bytes), Some(&owner))
        .is_some());
    assert!(object.has_cached_block(0));
    assert!(
        object.store_block(0, &[bytes], None).is_none(),
        "a cached block is not stored twice"
    );
    assert_eq!(fx.index.used(), BLOCK + BLOCK_OVERHEAD);
}

#[test]
fn a_block_fetched_for_nobody_makes_its_first_read_a_miss() {
    let fx = fixture(1 << 20);
    let _enter = fx.runtime.enter();
    let object = fx.object("/h", 2, "\"v1\"");
    let first = block_bytes(9, 0);
    object
        .store_block(0, from_ref(&first), None)
        .expect("stored");
    let (data, hit) = object.read_cached(0..BLOCK).expect("cached").expect("read");
    assert_eq!(
        (data.as_slice(), hit),
        (&first[..], false),
        "read-ahead fetched it"
    );
    let (_, hit) = object.read_cached(0..BLOCK).unwrap().unwrap();
    assert!(hit, "the mark is taken once");
    // A block whose flight already handed it to a reader is a hit from the start.
    let (_, runs) = object.plan(1..2);
    let flight = runs[0].flights[0].clone().unwrap();
    let second = block_bytes(9, 1);
    flight.finish(Ok(Delivered::Data(second.clone())));
    object
        .store_block(1, from_ref(&second), Some(&flight))
        .expect("stored");
    let (data, hit) = object.read_cached(BLOCK..2 * BLOCK).unwrap().unwrap();
    assert_eq!((data.as_slice(), hit), (&second[..], true));
    assert!(object
        .read_cached(BLOCK * 2..BLOCK * 9)
        .unwrap()
        .unwrap()
        .0
        .is_empty());
}

#[test]
fn journaled_blocks_survive_a_reload_and_unjournaled_ones_do_not() {
    let fx = fixture(1 << 20);
    let _enter = fx.runtime.enter();
    let object = fx.object("/j", 4, "\"v1\"");
    for block in 0..3 {
        object
            .store_block(block, &[block_bytes(10, block)], None)
            .expect("stored");
    }
    object.record_now();
    object
        .store_block(3, &[block_bytes(10, 3)], None)
        .expect("stored");
    object.renew(now_secs() + 5);
    let limits = LoadLimits {
        max_object_size: 1 << 40,
    };
    let mut loaded = fx.store.load(&limits);
    assert_eq!(loaded.len(), 1);
    let loaded = loaded.remove(0);
    assert_eq!(loaded.header.path, "/j");
    assert_eq!(
        loaded.header.fetched_at,
        object.fetched_at(),
        "the renewal is journaled"
    );
    let listed: Vec<u64> = loaded.blocks.iter().map(|(b, _)| *b).collect();
    assert_eq!(listed, vec![0, 1, 2], "block 3 was never made durable");
    let restored = Object::restore(0, loaded, Weak::new());
    assert_eq!(restored.version(), object.version());
    assert!(!restored.fully_cached());
    assert_eq!(restored.cached_charge(), 3 * (BLOCK + BLOCK_OVERHEAD));
    assert!(!restored.state.lock().blocks.all_verified(0..3));
    restored.verify_all();
    assert!(restored.state.lock().blocks.all_verified(0..3));
    for block in 0..3 {
        let got = restored.read_block(block, 0..BLOCK).unwrap().unwrap();
        assert_eq!(got, &block_bytes(10, block)[..]);
    }
}

/// What the runs planned for a sequential reader ask of the origin.
#[derive(Default)]
struct Requested {
    /// Range requests, one per run.
    requests: u64,
    /// Requests there would be without bridging: one per stretch of owned blocks.
    pieces: u64,
    bytes: u64,
    /// Blocks owned by some run, in the order claimed.
    owned: Vec<u64>,
}

impl Requested {
    /// Counts `runs`, checks that every block they fetch again was cached before the
    /// reader started, and completes them at once (their blocks become cached).
    fn add(&mut self, object: &Object, cached_before: &BTreeSet<u64>, runs: Vec<super::Run>) {
        for run in runs {
            self.requests += 1;
            let mut previous_owned = false;
            for (i, flight) in run.flights.iter().enumerate() {
                let block = run.first + i as u64;
                let range = object.block_range(block);
                self.bytes += range.end - range.start;
                if flight.is_some() {
                    self.pieces += u64::from(!previous_owned);
                    self.owned.push(block);
                    object.state.lock().blocks.set(block, cached_block());
                } else {
                    assert!(
                        cached_before.contains(&block),
                        "bridged block {block} was not cached"
                    );
                }
                previous_owned = flight.is_some();
            }
            assert!(run.flights.first().is_some_and(Option::is_some));
            assert!(run.flights.last().is_some_and(Option::is_some));
        }
    }
}

fn cached_block() -> BlockState {
    BlockState::Cached {
        crc: 0,
        verified: true,
        fresh: false,
    }
}

/// An object for planning only (nothing is written): `blocks` blocks of `block_size`.
fn planned_object(dir: &std::path::Path, block_size: u64, blocks: u64) -> Object {
    let store = SiteStore::open(dir, "site").expect("site store");
    let (location, _) = store.locate("/big", true).expect("locate");
    let identity = Identity {
        site: 0,
        path: Arc::from("/big"),
        kind: ObjectKind::File,
        version: Version {
            size: blocks * block_size,
            etag: Some("\"v1\"".to_string()),
            last_modified: None,
        },
        block_size,
    };
    let freshness = (Duration::from_secs(60), now_secs());
    Object::new(identity, freshness, Some(location), 0, Weak::new())
}

/// Figure 6 of the bench through the planner and read-ahead alone (no FUSE, no fetch): a
/// 1 GiB object of 1 MiB blocks (the default `block_size`) with the blocks of 200 seeded
/// random reads cached, then read from start to end a block at a time with the default 32 MiB
/// read-ahead. Every missing block is fetched exactly once; read-ahead bridges short cached
/// gaps into fewer requests, and asks for at most 1.05× the missing bytes.
#[test]
fn a_sequential_read_after_random_reads_bridges_gaps_within_five_percent() {
    const MIB: u64 = 1 << 20;
    const BLOCKS: u64 = 1024;
    let dir = tempfile::tempdir().expect("temp dir");
    let object = planned_object(dir.path(), MIB, BLOCKS);
    let mut next = crate::base::testing::xorshift(42);
    let cached: BTreeSet<u64> = (0..200).map(|_| next() % BLOCKS).collect();
    for block in &cached {
        object.state.lock().blocks.set(*block, cached_block());
    }
    let mut ahead = ReadAhead::default();
    let mut requested = Requested::default();
    for block in 0..BLOCKS {
        let (_, runs) = object.plan(block..block + 1);
        requested.add(&object, &cached, runs);
        let range = block * MIB..(block + 1) * MIB;
        let prefetch = ahead.on_read(&range, MIB, 32, BLOCKS);
        requested.add(&object, &cached, object.claim_absent(prefetch));
    }
    let missing: Vec<u64> = (0..BLOCKS).filter(|b| !cached.contains(b)).collect();
    let mut owned = requested.owned.clone();
    owned.sort_unstable();
    assert_eq!(owned, missing, "every missing block fetched exactly once");
    let missing_bytes = missing.len() as u64 * MIB;
    eprintln!(
        "{} cached blocks; {} requests ({} unbridged), {} of {} missing bytes",
        cached.len(),
        requested.requests,
        requested.pieces,
        requested.bytes,
        missing_bytes
    );
    assert!(
        requested.bytes * 20 <= missing_bytes * 21,
        "{} bytes asked for, {missing_bytes} missing",
        requested.bytes
    );
    assert!(
        requested.requests + 30 <= requested.pieces,
        "{} requests, {} without bridging: too few gaps bridged",
        requested.requests,
        requested.pieces
    );
}
