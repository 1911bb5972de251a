//! One cached object version in memory: its block table, in-flight fetches and cache files.
//!
//! Invariants:
//! - An `Object` describes exactly one origin version; a new version is a new `Object`.
//! - A block is `Cached` only after its bytes were written to the data file; they are then
//!   served from there, checked against the CRC32C the first time they are read back.
//! - A block is `Fetching` while exactly one fetch owns it (single-flight); every reader of
//!   the block waits on that fetch's [`Flight`].
//! - Once detached (evicted or superseded), an object never writes to the cache again.
//!
//! Its API, by who calls it (the rest is `pub(in crate::cache)`: planning, fetch claims,
//! storing and reading blocks, charge, detaching):
//! - everyone: what the version is (`site`, `path`, `kind`, `version`, `size`, `mtime`, the
//!   block geometry) and its freshness (`is_fresh`, `fresh_for`, `expire`, `is_detached`);
//! - the FUSE layer: open handles ([`OpenHandle`]), the passthrough registration it keeps
//!   with the object ([`KeptRegistration`], `keep_with`, `drop_kept`), whether the file is
//!   whole and verified (`fully_cached`, `fully_verified`, `verify_all`, `take_fresh`,
//!   `record_now`) and the hit path (`read_cached`);
//! - the media layer: the view record (`save_view`, `load_view`, `drop_view`) and the hit path;
//! - loading a cache folder: `restore`.
//!
//! Lock order (rows 6, 8 of the crate's table, `src/lib.rs`): `recording`, then `state`; under
//! `state` the index's `state` (giving charge back) and, through [`Object::keep_with`], the
//! passthrough registration's ioctl and its journal record (the journal's lock).

use std::fs::File;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;

use super::blocks::{BlockState, BlockTable, Delivered};
use super::index::{CacheIndex, IndexEntry, ObjectKey};
use super::writer::{BlockSink, WriteQueue};
use crate::base::flight::Flight;
use crate::base::{FsError, FsResult, ObjectKind, SiteId};
use crate::origin::Version;
use crate::store::descriptors::HeldFile;
use crate::store::{self, disk_bytes, ObjectLocation, BLOCK_OVERHEAD};

mod plan;
mod small;
#[cfg(test)]
mod tests;
mod view;

pub use plan::{BlockSource, Run, UnpinnedRun};
pub use small::{SmallRef, SmallSite, SmallTag};

use small::SmallHome;

/// How long an object must go without new blocks before its journal is synced.
const RECORD_QUIET: Duration = Duration::from_millis(250);
/// Longest a stored block waits for its journal record while blocks keep arriving.
const RECORD_MAX_DELAY: Duration = Duration::from_secs(10);

struct ObjectState {
    blocks: BlockTable,
    /// Bytes of `max_cache_size` this object holds; returned to the index when detached.
    charged: u64,
    detached: bool,
    /// The cache file, kept open while handles are (within the process-wide bound).
    data: Option<HeldFile>,
    open_handles: usize,
    /// Of `open_handles`, those that keep `small_pin` (not the handles of zero-message
    /// opens, see [`Object::open_handle_unpinned`]).
    pinned_handles: usize,
    /// The layer above's registration of the cache file, kept while the object is cached;
    /// dropped when the object leaves the cache.
    kept: Option<Arc<dyn KeptRegistration>>,
    /// Stored blocks waiting for `fdatasync` and their journal record.
    unrecorded: Vec<(u64, u32)>,
    recorder_running: bool,
    last_stored: Option<Instant>,
    /// Versions without validators only (see [`Object::plan`]).
    unpinned: Unpinned,
    /// Bytes of `charged` that the view record takes (see `view`).
    view_charged: u64,
    /// A small object's record, kept readable while handles are open (see `small`).
    small_pin: Option<Arc<crate::store::packed::PinnedRecord>>,
    /// A small object's bytes came from the origin and no read has used them yet.
    small_fetched: bool,
    /// What read-ahead may still spend on fetching cached blocks again (see `plan`).
    bridge_credit: u64,
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

/// What identifies one object version: where it lives and what the origin said of it.
pub struct Identity {
    pub site: SiteId,
    pub path: Arc<str>,
    pub kind: ObjectKind,
    pub version: Version,
    pub block_size: u64,
}

/// One object version as the cache holds it.
///
/// Owns: its block table, its in-flight fetches' flights, its write-behind queue, its cache
/// files (through `location`) and the bytes it has charged against the cap.
/// Must hold: `charged` is exactly what the index counts for it until it is detached; after
/// that it is 0 and nothing is written for it again.
pub struct Object {
    site: SiteId,
    path: Arc<str>,
    kind: ObjectKind,
    version: Version,
    block_size: u64,
    /// How long this version stays fresh after the origin confirms it.
    ttl: Duration,
    /// Seconds since the epoch when the origin last confirmed this version.
    fetched_at: AtomicU64,
    /// Boxed: small objects and memory-only ones have none, and every object in memory
    /// pays for this field.
    location: Option<Box<ObjectLocation>>,
    state: Mutex<ObjectState>,
    /// Held through one round of [`Object::record_now`], so that a round that returns has
    /// recorded every block stored before it began, even when another round was running.
    recording: Mutex<()>,
    /// Fetched blocks waiting for the cache file.
    writes: WriteQueue<Object>,
    /// The index that charges this object's bytes (weak: the index holds the object).
    index: Weak<CacheIndex<Object>>,
    /// Set for a small object: its bytes are a packed record, not files (see `small`).
    small: Option<SmallHome>,
}

impl Object {
    /// A new version. Without a `location` it lives in memory only (no-store, or no room).
    pub(in crate::cache) fn new(
        identity: Identity,
        freshness: (Duration, u64),
        location: Option<ObjectLocation>,
        charged: u64,
        index: Weak<CacheIndex<Object>>,
    ) -> Object {
        let Identity {
            site,
            path,
            kind,
            version,
            block_size,
        } = identity;
        let (ttl, fetched_at) = freshness;
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
                pinned_handles: 0,
                kept: None,
                unrecorded: Vec::new(),
                recorder_running: false,
                last_stored: None,
                unpinned: Unpinned::default(),
                view_charged: 0,
                small_pin: None,
                small_fetched: false,
                bridge_credit: 0,
            }),
            location: location.map(Box::new),
            version,
            recording: Mutex::new(()),
            writes: WriteQueue::default(),
            index,
            small: None,
        }
    }

    pub fn site(&self) -> SiteId {
        self.site
    }

    pub fn path(&self) -> &Arc<str> {
        &self.path
    }

    pub fn kind(&self) -> ObjectKind {
        self.kind
    }

    pub fn version(&self) -> &Version {
        &self.version
    }

    /// Whether `other` is known to hold this object's bytes: it is this object, a small
    /// object of the same tag (which hashes the bytes too), or the same version pinned by a
    /// validator. Two objects of a version without validators may hold two versions of the
    /// file that merely have one size, so they count only by tag or as the object itself.
    pub fn holds_same_bytes_as(self: &Arc<Self>, other: &Arc<Object>) -> bool {
        if Arc::ptr_eq(self, other) {
            return true;
        }
        match (self.small_tag(), other.small_tag()) {
            (Some(mine), Some(theirs)) => mine == theirs,
            _ => self.version.is_pinned() && self.version == other.version,
        }
    }

    pub fn size(&self) -> u64 {
        self.version.size
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Rebuilds an object from its metadata at startup; its blocks need verification.
    pub fn restore(
        site: SiteId,
        loaded: store::LoadedObject,
        index: Weak<CacheIndex<Object>>,
    ) -> Object {
        let header = loaded.header;
        let identity = Identity {
            site,
            path: header.path.into(),
            kind: header.kind,
            version: Version {
                size: header.size,
                etag: header.etag,
                last_modified: header.last_modified,
            },
            block_size: header.block_size,
        };
        let freshness = (Duration::from_secs(header.ttl), header.fetched_at);
        let view_bytes = loaded.location.view_disk_bytes();
        let object = Object::new(identity, freshness, Some(loaded.location), 0, index);
        {
            let mut state = object.state.lock();
            state.view_charged = view_bytes;
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

    pub fn block_count(&self) -> u64 {
        self.version.size.div_ceil(self.block_size)
    }

    /// Byte range of a block within the object.
    pub(in crate::cache) fn block_range(&self, block: u64) -> Range<u64> {
        let start = block * self.block_size;
        start..(start + self.block_size).min(self.version.size)
    }

    /// Bytes charged against the cap for caching one block.
    pub(in crate::cache) fn block_charge(&self, block: u64) -> u64 {
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
    pub(in crate::cache) fn renew(&self, now: u64) {
        self.fetched_at.store(now, Ordering::Relaxed);
        self.renew_small(now);
        if let Some(location) = self.persistent_location() {
            if let Err(e) = location.append_renewal(now) {
                tracing::warn!(path = %self.path, "cannot record renewal: {e}");
            }
        }
    }

    /// The TTL ends now: the next use revalidates (a 304 keeps every block).
    pub fn expire(&self) {
        self.renew(0);
        self.expire_small();
    }

    /// Bytes of the object's data held in the cache.
    pub(in crate::cache) fn cached_bytes(&self) -> u64 {
        if self.is_small() {
            return self.size();
        }
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

    /// Bytes charged against the cap for the blocks and view record on disk now (at restore).
    pub(in crate::cache) fn cached_charge(&self) -> u64 {
        let state = self.state.lock();
        let blocks: u64 = state
            .blocks
            .cached()
            .map(|(block, _, _)| self.block_charge(block))
            .sum();
        blocks + state.view_charged
    }

    fn persistent_location(&self) -> Option<&ObjectLocation> {
        if self.state.lock().detached {
            None
        } else {
            self.location.as_deref()
        }
    }

    pub fn is_detached(&self) -> bool {
        self.state.lock().detached || self.small_outdated()
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
            (unverified, self.data_file_locked(&mut state))
        };
        let Ok(file) = file else { return };
        for (block, crc) in unverified {
            let _ = self.read_from_disk(block, &file, crc, false, 0..0);
        }
    }

    /// The registration of this object's cache file, made by `make` the first time (a
    /// passthrough registration, which reopening a hot file then does not pay again). It is
    /// dropped when the object leaves the cache, so an evicted file gives up what pins it.
    /// Returns whether it was made now.
    pub fn keep_with(
        &self,
        make: impl FnOnce(&File) -> std::io::Result<Arc<dyn KeptRegistration>>,
    ) -> std::io::Result<(Arc<dyn KeptRegistration>, bool)> {
        let mut state = self.state.lock();
        if let Some(kept) = state.kept.clone() {
            return Ok((kept, false));
        }
        let file = self
            .data_file_locked(&mut state)
            .map_err(std::io::Error::other)?;
        let kept = make(&file)?;
        state.kept = Some(kept.clone());
        Ok((kept, true))
    }

    /// Drops what [`Object::keep_with`] kept (users still holding it keep theirs).
    pub fn drop_kept(&self) {
        let kept = self.state.lock().kept.take();
        drop(kept);
    }

    pub fn has_cached_block(&self, block: u64) -> bool {
        self.state.lock().blocks.is_cached(block)
    }

    /// Counts one open file handle on this object until the returned guard drops.
    #[must_use = "the handle closes when the guard drops"]
    pub fn open_handle(self: &Arc<Self>) -> OpenHandle {
        // Outside the lock: pinning reads the record back.
        let pin = match self.is_small() && self.state.lock().small_pin.is_none() {
            true => self.pin_small(),
            false => None,
        };
        let mut state = self.state.lock();
        state.open_handles += 1;
        state.pinned_handles += 1;
        if state.small_pin.is_none() {
            state.small_pin = pin.map(Arc::new);
        }
        drop(state);
        OpenHandle {
            object: self.clone(),
            pinned: true,
        }
    }

    /// A handle that reads a small object's current record rather than pinning one: for the
    /// handles of zero-message opens, which live as long as the kernel keeps the inode and
    /// would otherwise keep every segment they touch from being reclaimed. A read after the
    /// record moved on fetches this version again, or fails; it never serves another.
    pub fn open_handle_unpinned(self: &Arc<Self>) -> OpenHandle {
        self.state.lock().open_handles += 1;
        OpenHandle {
            object: self.clone(),
            pinned: false,
        }
    }

    /// How many [`OpenHandle`]s of this object are alive.
    pub fn open_handles(&self) -> usize {
        self.state.lock().open_handles
    }

    /// The last handle closing releases the data file descriptor: idle objects hold no fds.
    fn close_handle(&self, pinned: bool) {
        let mut state = self.state.lock();
        state.open_handles = state.open_handles.saturating_sub(1);
        if pinned {
            state.pinned_handles = state.pinned_handles.saturating_sub(1);
        }
        if state.pinned_handles == 0 {
            state.small_pin = None;
        }
        if state.open_handles == 0 {
            state.data = None;
        }
    }

    fn data_file_locked(&self, state: &mut ObjectState) -> FsResult<Arc<File>> {
        if let Some(held) = &state.data {
            return Ok(held.file().clone());
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
            state.data = HeldFile::try_hold(&file);
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
        if self.is_small() {
            let bytes = self.small_bytes()?;
            let within = bytes.get(range.start as usize..range.end as usize)?;
            return Some(Ok((within.to_vec(), self.take_small_hit())));
        }
        let (file, fresh) = {
            let mut state = self.state.lock();
            let blocks = range.start / self.block_size..(range.end - 1) / self.block_size + 1;
            if !state.blocks.all_verified(blocks.clone()) {
                return None;
            }
            let file = self.data_file_locked(&mut state).ok()?;
            (file, state.blocks.take_fresh(blocks))
        };
        let len = (range.end - range.start) as usize;
        let data = store::read_exact_at(&file, len, range.start).map_err(FsError::from);
        Some(data.map(|data| (data, !fresh)))
    }

    /// Reads part of a block if it is cached now (checking it as [`Object::read_from_disk`]).
    pub(in crate::cache) fn read_block(
        &self,
        block: u64,
        within: Range<u64>,
    ) -> Option<FsResult<Vec<u8>>> {
        if self.is_small() {
            let bytes = self.small_bytes()?;
            let within = bytes.get(within.start as usize..within.end as usize)?;
            return Some(Ok(within.to_vec()));
        }
        let (file, crc, verified) = {
            let mut state = self.state.lock();
            let Some(BlockState::Cached { crc, verified, .. }) = state.blocks.get(block).cloned()
            else {
                return None;
            };
            (self.data_file_locked(&mut state).ok()?, crc, verified)
        };
        Some(self.read_from_disk(block, &file, crc, verified, within))
    }

    /// Reads part of a cached block, checking its CRC32C on the first read back from disk.
    /// A mismatch drops the block and reports `Corrupt`; the caller refetches it.
    pub(in crate::cache) fn read_from_disk(
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
    pub(in crate::cache) fn store_block(
        self: &Arc<Self>,
        block: u64,
        pieces: &[Bytes],
        claim: Option<&Arc<Flight<Delivered>>>,
    ) -> Option<u32> {
        let index = self.index.upgrade()?;
        let charge = self.block_charge(block);
        let file = self.reserve_block(&index, block, charge, claim)?;
        let crc = pieces
            .iter()
            .fold(0, |crc, piece| crc32c::crc32c_append(crc, piece));
        let offset = self.block_range(block).start;
        if let Err(e) = store::write_pieces_at(&file, pieces, offset) {
            tracing::warn!(path = %self.path, "cache write failed, serving from the origin: {e}");
            self.uncharge(&index, charge);
            return None;
        }
        let handed_out = claim.is_some_and(|flight| flight.is_finished());
        self.mark_stored(block, crc, !handed_out).then_some(crc)
    }

    /// Charges a block against the cap and returns the file to write it to, if the cap
    /// allows, the object is still cached, and the block is the caller's to store.
    fn reserve_block(
        &self,
        index: &CacheIndex<Object>,
        block: u64,
        charge: u64,
        claim: Option<&Arc<Flight<Delivered>>>,
    ) -> Option<Arc<File>> {
        if !index.reserve(self, charge) {
            return None;
        }
        let mut state = self.state.lock();
        let owned = match (state.blocks.get(block), claim) {
            (Some(BlockState::Fetching(current)), Some(claim)) => Arc::ptr_eq(current, claim),
            (None, None) => true,
            _ => false,
        };
        match (state.detached || !owned, self.data_file_locked(&mut state)) {
            (false, Ok(file)) => {
                state.charged += charge;
                Some(file)
            }
            _ => {
                drop(state);
                index.release(charge);
                None
            }
        }
    }

    /// Records a written block as cached, and starts the journal recorder if it is idle.
    /// False if the object left the cache meanwhile.
    fn mark_stored(self: &Arc<Self>, block: u64, crc: u32, fresh: bool) -> bool {
        let mut state = self.state.lock();
        if state.detached {
            return false;
        }
        let cached = BlockState::Cached {
            crc,
            verified: true,
            fresh,
        };
        state.blocks.set(block, cached);
        state.unrecorded.push((block, crc));
        state.last_stored = Some(Instant::now());
        if !std::mem::replace(&mut state.recorder_running, true) {
            tokio::spawn(self.clone().record_when_quiet());
        }
        true
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

    /// Syncs and records every stored block now (the recorder's round; also at unmount, and
    /// before the kernel reads the cache file directly: a process that loads the cache frees
    /// the blocks it finds unrecorded).
    pub fn record_now(&self) {
        let _round = self.recording.lock();
        let (batch, file) = {
            let mut state = self.state.lock();
            if state.unrecorded.is_empty() || state.detached {
                return;
            }
            let file = self.data_file_locked(&mut state);
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

    fn uncharge(&self, index: &CacheIndex<Object>, charge: u64) {
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
    pub(in crate::cache) fn detach(&self, keep_open_readable: bool) -> u64 {
        let mut state = self.state.lock();
        if state.detached && state.charged == 0 {
            return 0;
        }
        let keep = keep_open_readable && state.open_handles > 0;
        if keep && state.data.is_none() {
            state.data = self
                .data_file_locked(&mut state)
                .ok()
                .map(HeldFile::hold_anyway);
        }
        state.detached = true;
        let kept = state.kept.take();
        if !keep || state.data.is_none() {
            state.data = None;
            state.blocks.clear_cached();
        }
        if let Some(location) = &self.location {
            if let Err(e) = location.remove() {
                tracing::warn!(path = %self.path, "cannot remove cache files: {e}");
            }
        }
        let charged = std::mem::take(&mut state.charged);
        drop(state);
        // Outside the lock: dropping a passthrough registration talks to the kernel.
        drop(kept);
        charged
    }

    /// Adds bytes (taken from the index already) to this object's charge.
    pub(in crate::cache) fn add_charge(&self, charge: u64) -> bool {
        let mut state = self.state.lock();
        if state.detached {
            return false;
        }
        state.charged += charge;
        true
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        self.leave_live();
    }
}

/// A registration of an object's cache file with the kernel, made by the layer above (a FUSE
/// passthrough backing) and kept by the object while it is cached (see [`Object::keep_with`]).
pub trait KeptRegistration: Send + Sync {
    /// The kernel's id of the registration.
    fn id(&self) -> u32;
}

/// One open file handle of an object (see [`Object::open_handle`]). Counting by a guard,
/// not by paired calls, means no path (a replaced implicit handle, an adopted handle, a
/// release racing a read) can leave the count, and so the object's data descriptor, behind.
pub struct OpenHandle {
    object: Arc<Object>,
    /// Whether it keeps a small object's record pinned (see [`Object::open_handle`]).
    pinned: bool,
}

impl OpenHandle {
    pub fn object(&self) -> &Arc<Object> {
        &self.object
    }
}

impl Drop for OpenHandle {
    fn drop(&mut self) {
        self.object.close_handle(self.pinned);
    }
}

impl IndexEntry for Object {
    fn key(&self) -> ObjectKey {
        (self.site, self.path.clone())
    }

    fn detach(&self, replaced: bool) -> u64 {
        Object::detach(self, replaced)
    }
}

impl BlockSink for Object {
    fn store(
        self: &Arc<Self>,
        block: u64,
        pieces: &[Bytes],
        claim: Option<&Arc<Flight<Delivered>>>,
    ) -> bool {
        if self.is_small() {
            // Kept as a record, not a cached block: readers get the bytes from the flight,
            // and later reads from the record.
            self.put_small(&pieces.concat());
            return false;
        }
        self.store_block(block, pieces, claim).is_some()
    }

    fn abandon(&self, block: u64, flight: &Arc<Flight<Delivered>>) {
        Object::abandon(self, block, flight)
    }

    fn writes(&self) -> &WriteQueue<Self> {
        &self.writes
    }
}
