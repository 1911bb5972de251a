//! One cached object version in memory: its block table, in-flight fetches and cache files.
//!
//! Invariants:
//! - An `Object` describes exactly one origin version; a new version is a new `Object`.
//! - A block is `Cached` only after its bytes were written to the data file; they are then
//!   served from there, checked against the CRC32C the first time they are read back.
//! - A block is `Fetching` while exactly one fetch owns it (single-flight); every reader of
//!   the block waits on that fetch's [`Flight`].
//! - Once detached (evicted or superseded), an object never writes to the cache again.

use std::fs::File;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::blocks::{BlockState, BlockTable};
use crate::error::{FsError, FsResult};
pub use crate::flight::{Delivered, Flight};
use crate::index::CacheIndex;
use crate::origin::Version;
use crate::store::{self, disk_bytes, ObjectKind, ObjectLocation, BLOCK_OVERHEAD};
use crate::writer::WriteQueue;

/// How long an object must go without new blocks before its journal is synced.
const RECORD_QUIET: Duration = Duration::from_millis(250);
/// Longest a stored block waits for its journal record while blocks keep arriving.
const RECORD_MAX_DELAY: Duration = Duration::from_secs(10);

/// Index of a site (origin or virtual host) in the mount's site table.
pub type SiteId = usize;

struct ObjectState {
    blocks: BlockTable,
    /// Bytes of `max_cache_size` this object holds; returned to the index when detached.
    charged: u64,
    detached: bool,
    data: Option<Arc<File>>,
    open_handles: usize,
    /// The cache file registered with the kernel for passthrough, kept between opens so that
    /// reopening a hot file costs no registration. Dropped when the object leaves the cache.
    backing: Option<Arc<fuser::BackingId>>,
    /// Stored blocks waiting for `fdatasync` and their journal record.
    unrecorded: Vec<(u64, u32)>,
    recorder_running: bool,
    last_stored: Option<Instant>,
    /// Versions without validators only (see [`Object::plan`]).
    unpinned: Unpinned,
}

/// What keeps a version without validators from being served as a splice of two versions.
#[derive(Default)]
struct Unpinned {
    /// The one fetch in flight: fetches of such a version never overlap.
    fetch: Option<Arc<Flight<()>>>,
    /// xxh3 of every block this version has handed out or cached: every later answer must
    /// agree with all of them, even after the blocks themselves left the cache.
    seen: std::collections::BTreeMap<u64, u64>,
    /// An answer disagreed: this version is gone at the origin.
    changed: bool,
}

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
    pub fn owned(&self) -> usize {
        self.flights.iter().flatten().count()
    }
}

/// Longest run fetched with one range request; longer stretches become several requests in
/// flight at once, which is what fills a fast origin link.
const MAX_RUN_BYTES: u64 = 16 << 20;

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

pub struct Object {
    pub site: SiteId,
    pub path: Arc<str>,
    pub kind: ObjectKind,
    pub version: Version,
    pub block_size: u64,
    /// How long this version stays fresh after the origin confirms it.
    pub ttl: Duration,
    /// Seconds since the epoch when the origin last confirmed this version.
    fetched_at: AtomicU64,
    location: Option<ObjectLocation>,
    state: Mutex<ObjectState>,
    /// Fetched blocks waiting for the cache file.
    pub writes: WriteQueue,
}

impl Object {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        site: SiteId,
        path: Arc<str>,
        kind: ObjectKind,
        version: Version,
        block_size: u64,
        ttl: Duration,
        fetched_at: u64,
        location: Option<ObjectLocation>,
        charged: u64,
    ) -> Object {
        Object {
            site,
            path,
            kind,
            block_size,
            ttl,
            fetched_at: AtomicU64::new(fetched_at),
            state: Mutex::new(ObjectState {
                blocks: BlockTable::default(),
                charged,
                detached: location.is_none(),
                data: None,
                open_handles: 0,
                backing: None,
                unrecorded: Vec::new(),
                recorder_running: false,
                last_stored: None,
                unpinned: Unpinned::default(),
            }),
            location,
            version,
            writes: WriteQueue::default(),
        }
    }

    /// Rebuilds an object from its metadata at startup; its blocks need verification.
    pub fn restore(site: SiteId, loaded: store::LoadedObject, charged: u64) -> Object {
        let header = loaded.header;
        let version = Version {
            size: header.size,
            etag: header.etag,
            last_modified: header.last_modified,
        };
        let object = Object::new(
            site,
            header.path.into(),
            header.kind,
            version,
            header.block_size,
            Duration::from_secs(header.ttl),
            header.fetched_at,
            Some(loaded.location),
            charged,
        );
        {
            let mut state = object.state.lock();
            let count = object.block_count();
            for (block, crc) in loaded.blocks.into_iter().filter(|(b, _)| *b < count) {
                let cached = BlockState::Cached {
                    crc,
                    verified: false,
                    fresh: false,
                };
                state.blocks.set(block, cached);
            }
        }
        object
    }

    fn max_run_blocks(&self) -> u64 {
        (MAX_RUN_BYTES / self.block_size).max(1)
    }

    pub fn block_count(&self) -> u64 {
        self.version.size.div_ceil(self.block_size)
    }

    /// Byte range of a block within the object.
    pub fn block_range(&self, block: u64) -> Range<u64> {
        let start = block * self.block_size;
        start..(start + self.block_size).min(self.version.size)
    }

    /// Bytes charged against the cap for caching one block.
    pub fn block_charge(&self, block: u64) -> u64 {
        let range = self.block_range(block);
        disk_bytes(range.end - range.start) + BLOCK_OVERHEAD
    }

    pub fn fetched_at(&self) -> u64 {
        self.fetched_at.load(Ordering::Relaxed)
    }

    pub fn is_fresh(&self, now: u64) -> bool {
        now < self.fetched_at().saturating_add(self.ttl.as_secs())
    }

    /// Seconds of freshness left, for kernel attribute and entry timeouts.
    pub fn fresh_for(&self, now: u64) -> Duration {
        Duration::from_secs(
            self.fetched_at()
                .saturating_add(self.ttl.as_secs())
                .saturating_sub(now),
        )
    }

    pub fn mtime(&self) -> SystemTime {
        self.version.mtime()
    }

    /// The origin confirmed this version again: it is fresh for another TTL.
    pub fn renew(&self, now: u64) {
        self.fetched_at.store(now, Ordering::Relaxed);
        if let Some(location) = self.persistent_location() {
            if let Err(e) = location.append_renewal(now) {
                tracing::warn!(path = %self.path, "cannot record renewal: {e}");
            }
        }
    }

    /// The TTL ends now: the next use revalidates (a 304 keeps every block).
    pub fn expire(&self) {
        self.renew(0);
    }

    /// Bytes of the object's data held in the cache.
    pub fn cached_bytes(&self) -> u64 {
        let state = self.state.lock();
        state
            .blocks
            .cached()
            .map(|(block, _, _)| {
                let range = self.block_range(block);
                range.end - range.start
            })
            .sum()
    }

    /// Bytes charged against the cap for the blocks cached now (at restore).
    pub fn cached_charge(&self) -> u64 {
        let state = self.state.lock();
        state
            .blocks
            .cached()
            .map(|(block, _, _)| self.block_charge(block))
            .sum()
    }

    fn persistent_location(&self) -> Option<&ObjectLocation> {
        if self.state.lock().detached {
            None
        } else {
            self.location.as_ref()
        }
    }

    pub fn is_detached(&self) -> bool {
        self.state.lock().detached
    }

    /// Whether every block is cached and has passed its checksum in this process: only then
    /// may the cache file stand in for the object (passthrough), holes and all ruled out.
    pub fn fully_verified(&self) -> bool {
        let state = self.state.lock();
        !state.detached && state.blocks.all_verified(0..self.block_count())
    }

    /// Whether every block is cached, verified or not.
    pub fn fully_cached(&self) -> bool {
        let state = self.state.lock();
        !state.detached && state.blocks.cached_count() == self.block_count()
    }

    /// Checks every cached, unverified block against its CRC32C (dropping the ones that fail).
    pub fn verify_all(&self) {
        let (unverified, file) = {
            let mut state = self.state.lock();
            let unverified: Vec<(u64, u32)> = state
                .blocks
                .cached()
                .filter(|(_, _, verified)| !verified)
                .map(|(block, crc, _)| (block, crc))
                .collect();
            (unverified, self.data_file(&mut state))
        };
        let Ok(file) = file else { return };
        for (block, crc) in unverified {
            let _ = self.read_from_disk(block, &file, crc, false, 0..0);
        }
    }

    /// The cache file's passthrough registration, made with `register` the first time.
    /// Returns whether it is new (the caller bounds how many objects keep one).
    pub fn backing(
        &self,
        register: impl FnOnce(&File) -> std::io::Result<fuser::BackingId>,
    ) -> std::io::Result<(Arc<fuser::BackingId>, bool)> {
        let mut state = self.state.lock();
        if let Some(backing) = &state.backing {
            return Ok((backing.clone(), false));
        }
        let file = self.data_file(&mut state).map_err(std::io::Error::other)?;
        let backing = Arc::new(register(&file)?);
        state.backing = Some(backing.clone());
        Ok((backing, true))
    }

    /// Gives up the kept passthrough registration (handles still open keep theirs).
    pub fn drop_backing(&self) {
        self.state.lock().backing = None;
    }

    pub fn has_cached_block(&self, block: u64) -> bool {
        self.state.lock().blocks.is_cached(block)
    }

    pub fn open_handle(&self) {
        self.state.lock().open_handles += 1;
    }

    /// The last handle closing releases the data file descriptor: idle objects hold no fds.
    pub fn close_handle(&self) {
        let mut state = self.state.lock();
        state.open_handles = state.open_handles.saturating_sub(1);
        if state.open_handles == 0 {
            state.data = None;
        }
    }

    fn data_file(&self, state: &mut ObjectState) -> FsResult<Arc<File>> {
        if let Some(file) = &state.data {
            return Ok(file.clone());
        }
        if state.detached {
            // The path may already hold another version's file: never reopen it.
            return Err(FsError::Io("object left the cache".into()));
        }
        let location = self
            .location
            .as_ref()
            .ok_or(FsError::Io("object is not cached".into()))?;
        let file = Arc::new(location.open_data()?);
        if state.open_handles > 0 {
            state.data = Some(file.clone());
        }
        Ok(file)
    }

    /// Serves a read entirely from verified cached blocks, or says it cannot (`None`).
    /// This is the hit path, run on the FUSE thread without touching the network. Also says
    /// whether it was a cache hit: false when read-ahead fetched some block for this read.
    pub fn read_cached(&self, range: Range<u64>) -> Option<FsResult<(Vec<u8>, bool)>> {
        let range = range.start.min(self.version.size)..range.end.min(self.version.size);
        if range.is_empty() {
            return Some(Ok((Vec::new(), true)));
        }
        let (file, fresh) = {
            let mut state = self.state.lock();
            let blocks = range.start / self.block_size..(range.end - 1) / self.block_size + 1;
            if !state.blocks.all_verified(blocks.clone()) {
                return None;
            }
            let file = self.data_file(&mut state).ok()?;
            (file, state.blocks.take_fresh(blocks))
        };
        let len = (range.end - range.start) as usize;
        let data = store::read_exact_at(&file, len, range.start).map_err(FsError::from);
        Some(data.map(|data| (data, !fresh)))
    }

    /// Classifies the blocks of a read. Absent blocks become `Fetching` with flights owned by
    /// the caller, grouped into runs of adjacent blocks for one range request each.
    pub fn plan(&self, blocks: Range<u64>) -> (Vec<BlockSource>, Vec<Run>) {
        let mut state = self.state.lock();
        if !self.version.is_pinned() {
            return self.plan_unpinned(&mut state, blocks);
        }
        let mut sources = Vec::with_capacity((blocks.end - blocks.start) as usize);
        let mut runs: Vec<Run> = Vec::new();
        for block in blocks {
            if let Some(source) = self.existing_source(&mut state, block) {
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
    fn existing_source(&self, state: &mut ObjectState, block: u64) -> Option<BlockSource> {
        match state.blocks.get(block).cloned() {
            Some(BlockState::Cached {
                crc,
                verified,
                fresh,
            }) => match self.data_file(state) {
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
    fn plan_unpinned(
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
            if let Some(source) = self.existing_source(state, block) {
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
    pub fn end_unpinned_fetch(&self, gate: &Arc<Flight<()>>) {
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
    pub fn agrees_unpinned(&self, block: u64, bytes: &[u8]) -> bool {
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
    pub fn claim_absent(&self, blocks: Range<u64>) -> Vec<Run> {
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
        }
        runs
    }

    /// A fetch gave up on a block it owned: the next reader will try again.
    pub fn abandon(&self, block: u64, flight: &Arc<Flight<Delivered>>) {
        let mut state = self.state.lock();
        let owned = matches!(state.blocks.get(block), Some(BlockState::Fetching(f)) if Arc::ptr_eq(f, flight));
        if owned {
            state.blocks.clear(block);
        }
    }

    /// Reads part of a block if it is cached now (checking it as [`Object::read_from_disk`]).
    pub fn read_block(&self, block: u64, within: Range<u64>) -> Option<FsResult<Vec<u8>>> {
        let (file, crc, verified) = {
            let mut state = self.state.lock();
            let Some(BlockState::Cached { crc, verified, .. }) = state.blocks.get(block).cloned()
            else {
                return None;
            };
            (self.data_file(&mut state).ok()?, crc, verified)
        };
        Some(self.read_from_disk(block, &file, crc, verified, within))
    }

    /// Reads part of a cached block, checking its CRC32C on the first read back from disk.
    /// A mismatch drops the block and reports `Corrupt`; the caller refetches it.
    pub fn read_from_disk(
        &self,
        block: u64,
        file: &File,
        crc: u32,
        verified: bool,
        within: Range<u64>,
    ) -> FsResult<Vec<u8>> {
        let block_range = self.block_range(block);
        if verified {
            let len = (within.end - within.start) as usize;
            return store::read_exact_at(file, len, block_range.start + within.start)
                .map_err(|_| self.drop_block(block, crc));
        }
        let whole = store::read_exact_at(
            file,
            (block_range.end - block_range.start) as usize,
            block_range.start,
        );
        match whole {
            Ok(bytes) if crc32c::crc32c(&bytes) == crc => {
                self.mark_verified(block, crc);
                Ok(bytes[within.start as usize..within.end as usize].to_vec())
            }
            _ => Err(self.drop_block(block, crc)),
        }
    }

    fn mark_verified(&self, block: u64, expected: u32) {
        let mut state = self.state.lock();
        if let Some(BlockState::Cached { crc, verified, .. }) = state.blocks.get_mut(block) {
            if *crc == expected {
                *verified = true;
            }
        }
    }

    /// Clears the `fresh` marks of blocks a read used; returns whether any had one.
    pub fn take_fresh(&self, blocks: Range<u64>) -> bool {
        self.state.lock().blocks.take_fresh(blocks)
    }

    fn drop_block(&self, block: u64, expected: u32) -> FsError {
        tracing::warn!(path = %self.path, block, "cached block failed its checksum; refetching");
        let mut state = self.state.lock();
        if matches!(state.blocks.get(block), Some(BlockState::Cached { crc, .. }) if *crc == expected)
        {
            state.blocks.clear(block);
        }
        FsError::Corrupt
    }

    /// Writes a fetched block to the cache if the cap allows; returns its CRC when stored.
    /// A full or failing disk only costs the caching: the caller serves the bytes anyway.
    /// `claim` is the flight that owns the block; without one, the block must be absent.
    /// A block whose flight already handed it to readers is not `fresh`: its first read
    /// from the cache is a hit.
    pub fn store_block(
        self: &Arc<Self>,
        index: &CacheIndex,
        block: u64,
        pieces: &[Bytes],
        claim: Option<&Arc<Flight<Delivered>>>,
    ) -> Option<u32> {
        let charge = self.block_charge(block);
        if !index.reserve(self, charge) {
            return None;
        }
        let file = {
            let mut state = self.state.lock();
            let owned = match (state.blocks.get(block), claim) {
                (Some(BlockState::Fetching(current)), Some(claim)) => Arc::ptr_eq(current, claim),
                (None, None) => true,
                _ => false,
            };
            match (state.detached || !owned, self.data_file(&mut state)) {
                (false, Ok(file)) => {
                    state.charged += charge;
                    file
                }
                _ => {
                    drop(state);
                    index.release(charge);
                    return None;
                }
            }
        };
        let crc = pieces
            .iter()
            .fold(0, |crc, piece| crc32c::crc32c_append(crc, piece));
        let offset = self.block_range(block).start;
        if let Err(e) = store::write_pieces_at(&file, pieces, offset) {
            tracing::warn!(path = %self.path, "cache write failed, serving from the origin: {e}");
            self.uncharge(index, charge);
            return None;
        }
        let mut state = self.state.lock();
        if state.detached {
            return None;
        }
        let handed_out = claim.is_some_and(|flight| flight.is_finished());
        let cached = BlockState::Cached {
            crc,
            verified: true,
            fresh: !handed_out,
        };
        state.blocks.set(block, cached);
        state.unrecorded.push((block, crc));
        state.last_stored = Some(Instant::now());
        if !std::mem::replace(&mut state.recorder_running, true) {
            tokio::spawn(self.clone().record_when_quiet());
        }
        Some(crc)
    }

    /// Makes stored blocks durable (`fdatasync`), then records them in the journal: only then
    /// do they survive a restart. It waits until the object has been quiet for
    /// `RECORD_QUIET` (or blocks have waited `RECORD_MAX_DELAY`): on some file systems an fsync
    /// holds the inode lock and would stall a stream still writing to the same file.
    async fn record_when_quiet(self: Arc<Self>) {
        let mut waiting_since = Instant::now();
        loop {
            tokio::time::sleep(RECORD_QUIET).await;
            let due = {
                let mut state = self.state.lock();
                if state.unrecorded.is_empty() || state.detached {
                    state.recorder_running = false;
                    return;
                }
                let quiet = state
                    .last_stored
                    .is_none_or(|t| t.elapsed() >= RECORD_QUIET);
                quiet || waiting_since.elapsed() >= RECORD_MAX_DELAY
            };
            if due {
                waiting_since = Instant::now();
                let object = self.clone();
                let _ = tokio::task::spawn_blocking(move || object.record_now()).await;
            }
        }
    }

    /// Syncs and records every stored block now (the recorder's round; also at unmount).
    pub fn record_now(&self) {
        let (batch, file) = {
            let mut state = self.state.lock();
            if state.unrecorded.is_empty() || state.detached {
                return;
            }
            let file = self.data_file(&mut state);
            (std::mem::take(&mut state.unrecorded), file)
        };
        let (Ok(file), Some(location)) = (file, &self.location) else {
            return;
        };
        if let Err(e) = file
            .sync_data()
            .and_then(|()| location.append_blocks(&batch))
        {
            tracing::warn!(path = %self.path, "cannot record cached blocks: {e}");
        }
    }

    fn uncharge(&self, index: &CacheIndex, charge: u64) {
        let mut state = self.state.lock();
        if !state.detached {
            state.charged = state.charged.saturating_sub(charge);
            index.release(charge);
        }
    }

    /// Takes the object out of the cache: no more cache reads or writes, files removed.
    /// Returns the bytes it had charged against the cap.
    ///
    /// With `keep_open_readable` (the origin has a new version), files still open keep reading
    /// this version's cached blocks from the removed file: an open file keeps the version it
    /// opened. Otherwise (eviction, purge) they fetch again, pinned to this same version.
    pub fn detach(&self, keep_open_readable: bool) -> u64 {
        let mut state = self.state.lock();
        if state.detached && state.charged == 0 {
            return 0;
        }
        let keep = keep_open_readable && state.open_handles > 0;
        if keep && state.data.is_none() {
            state.data = self.data_file(&mut state).ok();
        }
        state.detached = true;
        state.backing = None;
        if !keep || state.data.is_none() {
            state.data = None;
            state.blocks.clear_cached();
        }
        if let Some(location) = &self.location {
            if let Err(e) = location.remove() {
                tracing::warn!(path = %self.path, "cannot remove cache files: {e}");
            }
        }
        std::mem::take(&mut state.charged)
    }

    /// Adds bytes (taken from the index already) to this object's charge.
    pub fn add_charge(&self, charge: u64) -> bool {
        let mut state = self.state.lock();
        if state.detached {
            return false;
        }
        state.charged += charge;
        true
    }
}
