//! Read planning: which blocks of a read come from disk, which from a fetch in flight, and
//! which need a new fetch, grouped into runs of one range request each.

use std::fs::File;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use super::{Object, ObjectState};
use crate::base::flight::Flight;
use crate::cache::blocks::{BlockState, Delivered};

/// Where a reader gets one block from.
pub enum BlockSource {
    Disk {
        file: Arc<File>,
        crc: u32,
        verified: bool,
        /// Fetched for this read (by read-ahead): the read is not a cache hit.
        fresh: bool,
    },
    Flight(Arc<Flight<Delivered>>),
    /// Another fetch of this unvalidated version is in flight: wait for it, then plan again.
    Wait(Arc<Flight<()>>),
    /// This version is gone at the origin and the block is not cached.
    Gone,
}

/// Blocks that this reader must fetch (it owns their flights), for one range request.
pub struct Run {
    pub first: u64,
    /// Flights from `first` on; `None` where a block in between is not this run's to fetch.
    pub flights: Vec<Option<Arc<Flight<Delivered>>>>,
    /// Read-ahead runs hold one block of the global read-ahead budget per flight.
    pub prefetch: bool,
    /// A fetch of a version without validators (see [`UnpinnedRun`]).
    pub unpinned: Option<UnpinnedRun>,
    /// When the reader that needs this run gives up; the run gives up then too, so that no
    /// flight outlives every reader waiting for it. `None` for read-ahead.
    pub deadline: Option<Instant>,
}

/// A fetch of a version without validators. It asks for the object from byte 0 to
/// `request_end`, and checks every block below `compare_end` against what this version
/// handed out before. Until the answer has passed `compare_end`, it hands nothing out and
/// caches nothing, so a difference found late can never have been served next to new bytes.
pub struct UnpinnedRun {
    pub request_end: u64,
    pub compare_end: u64,
    /// Opened when the run ends; readers of the object wait for it.
    pub gate: Arc<Flight<()>>,
}

impl Run {
    fn new(first: u64) -> Run {
        Run {
            first,
            flights: Vec::new(),
            prefetch: false,
            unpinned: None,
            deadline: None,
        }
    }

    /// Blocks this run owns.
    pub(in crate::cache) fn owned(&self) -> usize {
        self.flights.iter().flatten().count()
    }
}

/// Longest run fetched with one range request; longer stretches become several requests in
/// flight at once, which is what fills a fast origin link.
const MAX_RUN_BYTES: u64 = 16 << 20;

/// Longest stretch of cached blocks that read-ahead fetches again to join the runs on either
/// side of it into one request.
///
/// Why: after random reads, the cached blocks cut a sequential reader's read-ahead into many
/// short requests (the bench's 175 cached blocks of a 1 GiB file made 197 requests instead of
/// 69), and each request pays its own round trip to the first byte and its own TCP ramp-up,
/// which a remote origin makes long. Fetching 1 MiB again costs one more millisecond of a
/// 1 GB/s link, less than the request it saves, but only up to the share below. Against a
/// loopback origin (the bench's), a request costs well under a millisecond and bridging
/// measured neither faster nor slower: it is there for origins farther away.
const MAX_BRIDGE_BYTES: u64 = 1 << 20;

/// Read-ahead fetches at most one cached byte again (to bridge a gap) for every this many
/// missing bytes it fetches, so a read after random reads asks the origin for at most 1.05×
/// the bytes that were missing. Bridging every gap would cost far more: cached blocks spread
/// one every few blocks (as random reads leave them) would be fetched again in full.
const BRIDGE_SHARE: u64 = 20;

/// Appends a block to the last run if it is adjacent and the run has room, else starts a run.
fn add_to_runs(runs: &mut Vec<Run>, block: u64, flight: Arc<Flight<Delivered>>, max_blocks: u64) {
    match runs.last_mut() {
        Some(run)
            if run.first + run.flights.len() as u64 == block
                && (run.flights.len() as u64) < max_blocks =>
        {
            run.flights.push(Some(flight))
        }
        _ => {
            let mut run = Run::new(block);
            run.flights.push(Some(flight));
            runs.push(run);
        }
    }
}

/// The block after a run's last.
fn run_end(run: &Run) -> u64 {
    run.first + run.flights.len() as u64
}

impl Object {
    /// Classifies the blocks of a read. Absent blocks become `Fetching` with flights owned by
    /// the caller, grouped into runs of adjacent blocks for one range request each.
    pub(in crate::cache) fn plan(&self, blocks: Range<u64>) -> (Vec<BlockSource>, Vec<Run>) {
        let mut state = self.state.lock();
        if !self.version.is_pinned() {
            return self.plan_unpinned_locked(&mut state, blocks);
        }
        let mut sources = Vec::with_capacity((blocks.end - blocks.start) as usize);
        let mut runs: Vec<Run> = Vec::new();
        for block in blocks {
            if let Some(source) = self.existing_source_locked(&mut state, block) {
                sources.push(source);
                continue;
            }
            let flight = Flight::new();
            state
                .blocks
                .set(block, BlockState::Fetching(flight.clone()));
            sources.push(BlockSource::Flight(flight.clone()));
            add_to_runs(&mut runs, block, flight, self.max_run_blocks());
        }
        (sources, runs)
    }

    /// Where a block comes from if no new fetch is needed: disk or a flight.
    /// `None` for an absent block (a cached block whose file is gone becomes absent).
    fn existing_source_locked(&self, state: &mut ObjectState, block: u64) -> Option<BlockSource> {
        match state.blocks.get(block).cloned() {
            Some(BlockState::Cached {
                crc,
                verified,
                fresh,
            }) => match self.data_file_locked(state) {
                Ok(file) => Some(BlockSource::Disk {
                    file,
                    crc,
                    verified,
                    fresh,
                }),
                Err(_) => {
                    state.blocks.clear(block);
                    None
                }
            },
            Some(BlockState::Fetching(flight)) => Some(BlockSource::Flight(flight)),
            None => None,
        }
    }

    /// Plans a read of a version without validators: its missing blocks come from one answer
    /// that starts at byte 0 and covers every block handed out before, so each is compared.
    /// Only one such fetch runs at a time, and every reader waits for it to end.
    fn plan_unpinned_locked(
        &self,
        state: &mut ObjectState,
        blocks: Range<u64>,
    ) -> (Vec<BlockSource>, Vec<Run>) {
        if state.unpinned.changed {
            let gone = (blocks.start..blocks.end).map(|_| BlockSource::Gone);
            return (gone.collect(), Vec::new());
        }
        if let Some(gate) = &state.unpinned.fetch {
            let wait = (blocks.start..blocks.end).map(|_| BlockSource::Wait(gate.clone()));
            return (wait.collect(), Vec::new());
        }
        let mut sources = Vec::new();
        let mut run = Run::new(blocks.start);
        for block in blocks.clone() {
            if let Some(source) = self.existing_source_locked(state, block) {
                sources.push(source);
                run.flights.push(None);
            } else {
                let flight = Flight::new();
                state
                    .blocks
                    .set(block, BlockState::Fetching(flight.clone()));
                sources.push(BlockSource::Flight(flight.clone()));
                run.flights.push(Some(flight));
            }
        }
        if run.owned() == 0 {
            return (sources, Vec::new());
        }
        let seen_end = state.unpinned.seen.keys().next_back().map_or(0, |b| b + 1);
        let compare_end = seen_end.max(state.blocks.cached_end());
        let gate = Flight::new();
        state.unpinned.fetch = Some(gate.clone());
        run.unpinned = Some(UnpinnedRun {
            request_end: (blocks.end.max(compare_end) * self.block_size).min(self.version.size),
            compare_end,
            gate,
        });
        (sources, vec![run])
    }

    /// The unpinned fetch that `gate` stands for has ended: the next one may start.
    pub(in crate::cache) fn end_unpinned_fetch(&self, gate: &Arc<Flight<()>>) {
        let mut state = self.state.lock();
        if state
            .unpinned
            .fetch
            .as_ref()
            .is_some_and(|g| Arc::ptr_eq(g, gate))
        {
            state.unpinned.fetch = None;
        }
        drop(state);
        gate.finish(Ok(()));
    }

    /// Whether a block of a version without validators agrees with what this version handed
    /// out or cached before. Records it as seen when it does.
    pub(in crate::cache) fn agrees_unpinned(&self, block: u64, bytes: &[u8]) -> bool {
        let hash = xxhash_rust::xxh3::xxh3_64(bytes);
        let mut state = self.state.lock();
        let agrees = match (state.unpinned.seen.get(&block), state.blocks.get(block)) {
            (Some(seen), _) => *seen == hash,
            (None, Some(BlockState::Cached { crc, .. })) => crc32c::crc32c(bytes) == *crc,
            (None, _) => true,
        };
        if agrees {
            state.unpinned.seen.insert(block, hash);
        } else {
            state.unpinned.changed = true;
        }
        agrees
    }

    /// Claims absent blocks in `blocks` for a fetch the caller will run (no reader waits yet).
    /// Versions without validators are never prefetched: their fetches must not overlap.
    /// Short stretches of cached blocks between claimed ones may be fetched again with them
    /// (`None` in the run's flights), within the object's bridge credit.
    pub(in crate::cache) fn claim_absent(&self, blocks: Range<u64>) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        if !self.version.is_pinned() {
            return runs;
        }
        let mut state = self.state.lock();
        for block in blocks {
            if state.blocks.get(block).is_some() {
                continue;
            }
            let flight = Flight::new();
            state
                .blocks
                .set(block, BlockState::Fetching(flight.clone()));
            add_to_runs(&mut runs, block, flight, self.max_run_blocks());
            let bytes = self.block_range(block);
            state.bridge_credit = state.bridge_credit.saturating_add(bytes.end - bytes.start);
        }
        self.bridge_gaps(&mut state, runs)
    }

    /// Joins runs separated by a short stretch of cached blocks into one request, spending
    /// `BRIDGE_SHARE` credit per byte fetched again. Only read-ahead bridges: a reader's own
    /// plan covers one read, rarely more than a block or two, and it waits for the answer.
    fn bridge_gaps(&self, state: &mut ObjectState, runs: Vec<Run>) -> Vec<Run> {
        let mut joined: Vec<Run> = Vec::with_capacity(runs.len());
        for run in runs {
            match joined.last_mut() {
                Some(last) if self.can_bridge(state, last, &run) => {
                    let gap = run.first - run_end(last);
                    state.bridge_credit -= gap * self.block_size * BRIDGE_SHARE;
                    last.flights.extend((0..gap).map(|_| None));
                    last.flights.extend(run.flights);
                }
                _ => joined.push(run),
            }
        }
        joined
    }

    /// Whether the blocks between `last` and `next` are few, all cached (a block in flight is
    /// another fetch's: never fetched twice), affordable, and the joined run not too long.
    fn can_bridge(&self, state: &ObjectState, last: &Run, next: &Run) -> bool {
        let gap_start = run_end(last);
        let gap = next.first.saturating_sub(gap_start);
        let joined = last.flights.len() as u64 + gap + next.flights.len() as u64;
        gap > 0
            && gap * self.block_size <= MAX_BRIDGE_BYTES.max(self.block_size)
            && joined <= self.max_run_blocks()
            && gap * self.block_size * BRIDGE_SHARE <= state.bridge_credit
            && (gap_start..next.first)
                .all(|b| matches!(state.blocks.get(b), Some(BlockState::Cached { .. })))
    }

    /// A fetch gave up on a block it owned: the next reader will try again.
    pub(in crate::cache) fn abandon(&self, block: u64, flight: &Arc<Flight<Delivered>>) {
        let mut state = self.state.lock();
        let owned = matches!(state.blocks.get(block), Some(BlockState::Fetching(f)) if Arc::ptr_eq(f, flight));
        if owned {
            state.blocks.clear(block);
        }
    }

    fn max_run_blocks(&self) -> u64 {
        (MAX_RUN_BYTES / self.block_size).max(1)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Weak;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::super::Identity;
    use super::*;
    use crate::base::{now_secs, ObjectKind};
    use crate::origin::Version;
    use crate::store::SiteStore;

    /// An object of `blocks` blocks (the last one short) with its files in `dir`. With
    /// `pinned` it has an ETag; without, no validator at all.
    fn object(dir: &std::path::Path, block_size: u64, blocks: u64, pinned: bool) -> Object {
        let store = SiteStore::open(dir, "site").expect("site store");
        let (location, _) = store.locate("/f", true).expect("locate");
        let identity = Identity {
            site: 0,
            path: Arc::from("/f"),
            kind: ObjectKind::File,
            version: Version {
                size: blocks * block_size - 1,
                etag: pinned.then(|| "\"v1\"".to_string()),
                last_modified: None,
            },
            block_size,
        };
        let freshness = (Duration::from_secs(60), now_secs());
        Object::new(identity, freshness, Some(location), 0, Weak::new())
    }

    fn cached(crc: u32) -> BlockState {
        BlockState::Cached {
            crc,
            verified: true,
            fresh: false,
        }
    }

    /// The flight a block is fetching under, if any.
    fn flight_of(object: &Object, block: u64) -> Option<Arc<Flight<Delivered>>> {
        match object.state.lock().blocks.get(block) {
            Some(BlockState::Fetching(flight)) => Some(flight.clone()),
            _ => None,
        }
    }

    fn source_flight(source: &BlockSource) -> Option<&Arc<Flight<Delivered>>> {
        match source {
            BlockSource::Flight(flight) => Some(flight),
            _ => None,
        }
    }

    #[test]
    fn long_stretches_become_several_runs_of_at_most_max_run_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let object = object(dir.path(), 4 << 20, 12, true);
        let (sources, runs) = object.plan(0..10);
        assert_eq!(sources.len(), 10);
        let shape: Vec<(u64, usize)> = runs.iter().map(|r| (r.first, r.flights.len())).collect();
        assert_eq!(shape, vec![(0, 4), (4, 4), (8, 2)]);
        assert!(runs
            .iter()
            .all(|r| !r.prefetch && r.deadline.is_none() && r.unpinned.is_none()));
    }

    #[test]
    fn a_cached_block_without_a_cache_file_is_fetched_again() {
        let identity = Identity {
            site: 0,
            path: Arc::from("/mem"),
            kind: ObjectKind::File,
            version: Version {
                size: 3 * 4096,
                etag: Some("\"e\"".into()),
                last_modified: None,
            },
            block_size: 4096,
        };
        // No location: memory only, so no block can be read from disk.
        let object = Object::new(identity, (Duration::ZERO, 0), None, 0, Weak::new());
        object.state.lock().blocks.set(1, cached(5));
        let (sources, runs) = object.plan(0..3);
        assert!(sources.iter().all(|s| matches!(s, BlockSource::Flight(_))));
        assert_eq!(runs.len(), 1);
        assert_eq!((runs[0].first, runs[0].owned()), (0, 3));
        assert!(!object.has_cached_block(1));
        assert!(flight_of(&object, 1).is_some());
    }

    #[test]
    fn abandon_releases_a_block_only_for_the_flight_that_owns_it() {
        let dir = tempfile::tempdir().unwrap();
        let object = object(dir.path(), 4096, 4, true);
        let (_, runs) = object.plan(1..2);
        let owner = runs[0].flights[0].clone().expect("owned");
        object.abandon(1, &Flight::new());
        assert!(flight_of(&object, 1).is_some_and(|f| Arc::ptr_eq(&f, &owner)));
        object.abandon(1, &owner);
        assert!(flight_of(&object, 1).is_none());
        let (_, again) = object.plan(1..2);
        assert_eq!(again.len(), 1, "the next reader fetches the block again");
        assert!(!Arc::ptr_eq(again[0].flights[0].as_ref().unwrap(), &owner));
    }

    #[test]
    fn claimed_blocks_are_reused_by_readers() {
        let dir = tempfile::tempdir().unwrap();
        let object = object(dir.path(), 4096, 8, true);
        object.state.lock().blocks.set(2, cached(1));
        let (_, reader_runs) = object.plan(4..5);
        // 6 blocks claimed earn too little credit to fetch block 2 again.
        let claimed = object.claim_absent(0..8);
        let shape: Vec<(u64, usize)> = claimed.iter().map(|r| (r.first, r.owned())).collect();
        assert_eq!(
            shape,
            vec![(0, 2), (3, 1), (5, 3)],
            "cached and fetching blocks are skipped"
        );
        let (sources, runs) = object.plan(0..8);
        assert!(runs.is_empty());
        for run in claimed.iter().chain(&reader_runs) {
            for (i, flight) in run.flights.iter().enumerate() {
                let block = (run.first + i as u64) as usize;
                let source = source_flight(&sources[block]).expect("a flight");
                assert!(Arc::ptr_eq(source, flight.as_ref().unwrap()));
            }
        }
        assert!(matches!(sources[2], BlockSource::Disk { crc: 1, .. }));
    }

    /// 64 KiB blocks: gaps of up to 16 cached blocks may be bridged.
    #[test]
    fn read_ahead_bridges_short_cached_gaps_while_its_credit_lasts() {
        let dir = tempfile::tempdir().unwrap();
        let object = object(dir.path(), 64 << 10, 121, true);
        for block in [10, 40, 41].into_iter().chain(80..100) {
            object.state.lock().blocks.set(block, cached(7));
        }
        let (_, reader_runs) = object.plan(60..61);
        let runs = object.claim_absent(0..120);
        let shape: Vec<(u64, usize, usize)> = runs
            .iter()
            .map(|r| (r.first, r.flights.len(), r.owned()))
            .collect();
        // 96 blocks claimed earn 96 / 20 blocks of credit: the gaps at 10 and 40..42 take
        // 3 of them. Block 60 is another fetch's and 80..100 is too long to fetch again.
        assert_eq!(shape, vec![(0, 60, 57), (61, 19, 19), (100, 20, 20)]);
        let bridged: Vec<usize> = (0..60).filter(|i| runs[0].flights[*i].is_none()).collect();
        assert_eq!(bridged, vec![10, 40, 41]);
        assert!(object.has_cached_block(10) && object.has_cached_block(41));
        let reader_flight = reader_runs[0].flights[0].clone().expect("owned");
        assert!(flight_of(&object, 60).is_some_and(|f| Arc::ptr_eq(&f, &reader_flight)));
        let left = object.state.lock().bridge_credit;
        assert_eq!(left, (96 - 3 * BRIDGE_SHARE) * (64 << 10));
    }

    #[test]
    fn unpinned_versions_fetch_from_byte_zero_one_fetch_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let object = object(dir.path(), 4096, 8, false);
        assert!(object.agrees_unpinned(0, b"first"));
        object
            .state
            .lock()
            .blocks
            .set(3, cached(crc32c::crc32c(b"three")));
        let (sources, runs) = object.plan(5..7);
        assert_eq!(sources.len(), 2);
        assert_eq!(runs.len(), 1);
        let run = &runs[0];
        let unpinned = run.unpinned.as_ref().expect("an unpinned run");
        assert_eq!(run.first, 5);
        assert_eq!(run.owned(), 2);
        assert_eq!(
            unpinned.compare_end, 4,
            "every block handed out or cached is compared"
        );
        assert_eq!(unpinned.request_end, 7 * 4096);
        // While it runs, every reader of the object waits for it.
        let (waiting, none) = object.plan(0..2);
        assert!(none.is_empty());
        for source in &waiting {
            assert!(matches!(source, BlockSource::Wait(gate) if Arc::ptr_eq(gate, &unpinned.gate)));
        }
        assert!(
            object.claim_absent(0..8).is_empty(),
            "no prefetch of an unpinned version"
        );
        object.end_unpinned_fetch(&unpinned.gate);
        assert!(unpinned.gate.is_finished());
        let (sources, runs) = object.plan(3..7);
        assert!(matches!(sources[0], BlockSource::Disk { .. }));
        assert_eq!(runs.len(), 1, "block 4 is still absent");
        assert_eq!(runs[0].owned(), 1);
        assert!(runs[0].flights[1].is_some() && runs[0].flights[0].is_none());
    }

    #[test]
    fn an_unpinned_version_that_changed_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let object = object(dir.path(), 4096, 4, false);
        let crc = crc32c::crc32c(b"cached bytes");
        object.state.lock().blocks.set(1, cached(crc));
        assert!(
            object.agrees_unpinned(1, b"cached bytes"),
            "compared by CRC when never seen"
        );
        assert!(object.agrees_unpinned(2, b"new"));
        assert!(object.agrees_unpinned(2, b"new"));
        assert!(!object.agrees_unpinned(2, b"other"));
        let (sources, runs) = object.plan(0..4);
        assert!(runs.is_empty());
        assert!(sources.iter().all(|s| matches!(s, BlockSource::Gone)));
    }

    /// What a block was before planning.
    #[derive(Clone)]
    enum Before {
        Absent,
        Cached {
            crc: u32,
            verified: bool,
            fresh: bool,
        },
        Fetching(Arc<Flight<Delivered>>),
    }

    fn setup(object: &Object, states: &[u8]) -> Vec<Before> {
        let mut state = object.state.lock();
        states
            .iter()
            .enumerate()
            .map(|(block, kind)| {
                let block = block as u64;
                match kind % 4 {
                    0 | 1 => Before::Absent,
                    2 => {
                        let (crc, verified, fresh) =
                            (block as u32 * 7, kind % 8 < 4, kind % 16 < 8);
                        state.blocks.set(
                            block,
                            BlockState::Cached {
                                crc,
                                verified,
                                fresh,
                            },
                        );
                        Before::Cached {
                            crc,
                            verified,
                            fresh,
                        }
                    }
                    _ => {
                        let flight = Flight::new();
                        state
                            .blocks
                            .set(block, BlockState::Fetching(flight.clone()));
                        Before::Fetching(flight)
                    }
                }
            })
            .collect()
    }

    const BLOCKS: u64 = 40;

    fn block_size() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(64 << 10),
            Just(2 << 20),
            Just(4 << 20),
            Just(16 << 20),
            Just(32 << 20)
        ]
    }

    fn range() -> impl Strategy<Value = Range<u64>> {
        (0..BLOCKS, 1..=BLOCKS).prop_map(|(a, b)| a.min(b - 1)..b.max(a + 1))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Over random tables and ranges: one source per block; cached blocks come from disk,
        /// blocks in flight from that same flight, and each absent block from a new flight
        /// owned by exactly one run; runs are contiguous, no longer than MAX_RUN_BYTES, and
        /// split only where full. Planning the range again starts nothing new.
        #[test]
        fn every_block_gets_one_source_and_every_absent_block_one_run(
            block_size in block_size(),
            states in proptest::collection::vec(any::<u8>(), BLOCKS as usize),
            range in range(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let object = object(dir.path(), block_size, BLOCKS, true);
            let before = setup(&object, &states);
            let cached_before = object.state.lock().blocks.cached_count();
            let (sources, runs) = object.plan(range.clone());
            prop_assert_eq!(sources.len() as u64, range.end - range.start);

            let max_run = (MAX_RUN_BYTES / block_size).max(1);
            let mut owned: Vec<(u64, Arc<Flight<Delivered>>)> = Vec::new();
            for run in &runs {
                prop_assert!(!run.flights.is_empty());
                prop_assert!(run.flights.len() as u64 <= max_run);
                prop_assert!(run.flights.len() as u64 * block_size <= MAX_RUN_BYTES.max(block_size));
                prop_assert!(run.unpinned.is_none() && !run.prefetch && run.deadline.is_none());
                for (i, flight) in run.flights.iter().enumerate() {
                    let flight = flight.clone().expect("a pinned run owns every block in it");
                    owned.push((run.first + i as u64, flight));
                }
            }
            for pair in runs.windows(2) {
                let end = pair[0].first + pair[0].flights.len() as u64;
                prop_assert!(end <= pair[1].first, "runs overlap or are out of order");
                if end == pair[1].first {
                    prop_assert_eq!(pair[0].flights.len() as u64, max_run, "split before full");
                }
            }

            for (i, source) in sources.iter().enumerate() {
                let block = range.start + i as u64;
                let runs_owning: Vec<&Arc<Flight<Delivered>>> =
                    owned.iter().filter(|(b, _)| *b == block).map(|(_, f)| f).collect();
                match &before[block as usize] {
                    Before::Absent => {
                        let flight = source_flight(source).expect("an absent block gets a flight");
                        prop_assert_eq!(runs_owning.len(), 1, "absent block {} not owned once", block);
                        prop_assert!(Arc::ptr_eq(runs_owning[0], flight));
                        let now = flight_of(&object, block).expect("now fetching");
                        prop_assert!(Arc::ptr_eq(&now, flight));
                    }
                    Before::Cached { crc, verified, fresh } => {
                        prop_assert!(runs_owning.is_empty());
                        match source {
                            BlockSource::Disk { crc: c, verified: v, fresh: f, .. } => {
                                prop_assert_eq!((c, v, f), (crc, verified, fresh));
                            }
                            _ => prop_assert!(false, "cached block {} not read from disk", block),
                        }
                    }
                    Before::Fetching(flight) => {
                        prop_assert!(runs_owning.is_empty(), "block {} fetched twice", block);
                        let got = source_flight(source).expect("a block in flight is waited for");
                        prop_assert!(Arc::ptr_eq(got, flight));
                    }
                }
            }
            prop_assert_eq!(object.state.lock().blocks.cached_count(), cached_before);

            // While the flights are pending, planning the same range starts no new fetch.
            let (again, new_runs) = object.plan(range.clone());
            prop_assert!(new_runs.is_empty());
            for (first, second) in sources.iter().zip(&again) {
                match (first, second) {
                    (BlockSource::Flight(a), BlockSource::Flight(b)) => prop_assert!(Arc::ptr_eq(a, b)),
                    (BlockSource::Disk { crc: a, .. }, BlockSource::Disk { crc: b, .. }) => {
                        prop_assert_eq!(a, b)
                    }
                    _ => prop_assert!(false, "the second plan changed a block's source"),
                }
            }
        }

        /// Read-ahead claims exactly the absent blocks and leaves cached blocks and other
        /// fetches alone. A run may also span a short stretch of cached blocks (never a
        /// block in flight), paid for by the credit: `BRIDGE_SHARE` per byte spanned again,
        /// earned one per byte claimed, never overdrawn.
        #[test]
        fn claims_take_exactly_the_absent_blocks(
            block_size in block_size(),
            states in proptest::collection::vec(any::<u8>(), BLOCKS as usize),
            range in range(),
            credit_blocks in 0..BLOCKS * BRIDGE_SHARE,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let object = object(dir.path(), block_size, BLOCKS, true);
            let before = setup(&object, &states);
            let credit = credit_blocks * block_size;
            object.state.lock().bridge_credit = credit;
            let runs = object.claim_absent(range.clone());
            let max_run = (MAX_RUN_BYTES / block_size).max(1);
            let max_gap = (MAX_BRIDGE_BYTES / block_size).max(1);
            let (mut claimed, mut claimed_bytes, mut bridged_bytes) = (Vec::new(), 0, 0);
            for run in &runs {
                prop_assert!(run.flights.len() as u64 <= max_run);
                prop_assert!(run.flights.first().is_some_and(Option::is_some));
                prop_assert!(run.flights.last().is_some_and(Option::is_some));
                let mut gap = 0;
                for (i, flight) in run.flights.iter().enumerate() {
                    let block = run.first + i as u64;
                    let bytes = object.block_range(block);
                    let Some(flight) = flight else {
                        let was_cached = matches!(before[block as usize], Before::Cached { .. });
                        prop_assert!(was_cached, "bridged block {} was not cached", block);
                        prop_assert!(object.has_cached_block(block));
                        gap += 1;
                        prop_assert!(gap <= max_gap, "a gap of {} blocks bridged", gap);
                        bridged_bytes += bytes.end - bytes.start;
                        continue;
                    };
                    gap = 0;
                    let now = flight_of(&object, block).expect("claimed blocks are fetching");
                    prop_assert!(Arc::ptr_eq(&now, flight));
                    claimed.push(block);
                    claimed_bytes += bytes.end - bytes.start;
                }
            }
            prop_assert!(bridged_bytes * BRIDGE_SHARE <= credit + claimed_bytes);
            prop_assert_eq!(
                object.state.lock().bridge_credit,
                credit + claimed_bytes - bridged_bytes * BRIDGE_SHARE
            );
            let absent: Vec<u64> = range
                .clone()
                .filter(|b| matches!(before[*b as usize], Before::Absent))
                .collect();
            prop_assert_eq!(claimed, absent);
            for block in 0..BLOCKS {
                match &before[block as usize] {
                    Before::Fetching(flight) => {
                        prop_assert!(flight_of(&object, block).is_some_and(|f| Arc::ptr_eq(&f, flight)));
                    }
                    Before::Cached { .. } => prop_assert!(object.has_cached_block(block)),
                    Before::Absent if !range.contains(&block) => {
                        prop_assert!(object.state.lock().blocks.get(block).is_none());
                    }
                    Before::Absent => {}
                }
            }
        }
    }
}
