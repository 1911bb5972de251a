//! Packed small-object store: objects up to a size threshold kept as checksummed records in
//! large append-only segment files, with a 16-byte-per-object index in memory.
//!
//! Files in the store's folder: `seg-<id>.pack` (records, see `record`), `index.ckpt` (the
//! index checkpoint, see `checkpoint`) and `lock`. No file and no inode per object.
//!
//! The API is what the cache needs for small objects: [`PackedStore::put`] a version (key,
//! opaque validators, bytes), [`PackedStore::get`] checked bytes or a miss,
//! [`PackedStore::pin`] a record to keep reading it while newer versions come,
//! [`PackedStore::remove`], [`PackedStore::sync`], [`PackedStore::open`] to reopen, and
//! [`PackedStore::stats`]. It imports nothing above `store`. The cache decides what goes in
//! (objects whose whole size is at most `PackedConfig::max_object`), encodes its version
//! (ETag, Last-Modified, size, fetched-at, TTL) into the validators, and compares them on
//! a hit; the store keeps them opaque, and serves a record only to the exact key it holds.
//!
//! Invariants:
//! - Never a wrong byte: every hit is read back whole and checked (magic, both CRC32Cs, the
//!   full key, the length the index expected) before it is served; a failed check is a miss,
//!   and drops the entry.
//! - The hard cap: every byte in the folder is charged to the `Budget` before it is written.
//!   The head segment is charged whole; a sealed one what it takes on disk, until the last
//!   handle on it drops after reclamation unlinked it. After a roll, at least one segment of
//!   headroom is kept free, so reclamation always has a head to copy survivors into.
//! - Crash rules: a sealed segment is written back in the background and synced, with the
//!   head, before a checkpoint names its records or `sync` returns; survivors' copies are
//!   synced before the segment they leave is unlinked. A record not yet synced may be lost;
//!   a torn one fails its checksum and is never served.
//! - The object count is bounded by the index memory limit: a new key that would pass it
//!   reclaims the oldest segment first, as the cap does.
//!
//! Lock order: `writer` (appends, rolls, reclamation, checkpoints: everything that writes),
//! then `shared` (the index and the segment table). `get` takes `shared` only, and reads the
//! record after releasing it, through an `Arc` of its segment. No lock is held while another
//! thread's progress is awaited, and `Budget` is lock-free.

mod budget;
mod checkpoint;
mod error;
mod evict;
mod index;
mod open;
mod record;
mod segment;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

pub use budget::SharedSpace;
pub use error::PackedError;
pub use record::{MAX_DATA_LEN, MAX_KEY_LEN, MAX_VALIDATORS_LEN};

use budget::Budget;
use index::{Location, PackedIndex};
use record::RecordKind;
use segment::{Segment, Segments};

/// Bytes charged for the folder itself and its lock file.
const FOLDER_BYTES: u64 = 8192;

/// How a store is sized. [`PackedConfig::new`] gives the defaults for a byte cap.
#[derive(Debug, Clone)]
pub struct PackedConfig {
    /// Hard cap on the folder's disk use (`du`), checkpoint and open segments included.
    pub cap_bytes: u64,
    /// Size of a segment file: the unit of appends and of reclamation.
    pub segment_size: u64,
    /// Largest object data the store takes (the cache's `small_object_max`).
    pub max_object: usize,
    /// Most bytes the index may take in memory (16 bytes a slot); bounds the object count.
    pub index_memory_limit: u64,
    /// Bytes appended between automatic checkpoints (bounds the scan at a reopen).
    pub checkpoint_every: u64,
}

impl PackedConfig {
    pub fn new(cap_bytes: u64) -> PackedConfig {
        PackedConfig {
            cap_bytes,
            segment_size: 16 << 20,
            max_object: 64 << 10,
            index_memory_limit: 256 << 20,
            checkpoint_every: 64 << 20,
        }
    }

    fn check(&self) -> Result<(), PackedError> {
        let largest = record::record_len(MAX_KEY_LEN, MAX_VALIDATORS_LEN, self.max_object);
        let problem = if self.max_object > MAX_DATA_LEN {
            format!("max_object is above {MAX_DATA_LEN}")
        } else if self.segment_size < largest as u64 * 2 {
            "segment_size must hold two of the largest records".to_string()
        } else if self.segment_size >= index::MAX_SEGMENT_BYTES {
            format!("segment_size must be below {}", index::MAX_SEGMENT_BYTES)
        } else if self.cap_bytes < FOLDER_BYTES + 4 * segment::head_charge(self.segment_size) {
            "cap_bytes must hold at least four segments".to_string()
        } else {
            return Ok(());
        };
        Err(PackedError::Config(problem))
    }
}

/// A checked object version: the validators it was put with and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedObject {
    pub validators: Bytes,
    pub data: Bytes,
}

/// What the store holds and has done since it was opened.
#[derive(Debug, Clone, Default)]
pub struct PackedStats {
    pub objects: u64,
    /// Most objects the index memory limit allows.
    pub max_objects: u64,
    pub index_memory_bytes: u64,
    pub used_bytes: u64,
    pub cap_bytes: u64,
    pub segments: u64,
    pub hits: u64,
    pub misses: u64,
    /// Records that failed their checks when read (served as misses).
    pub rejected: u64,
    pub puts: u64,
    pub removes: u64,
    pub evicted: u64,
    pub second_chances: u64,
    pub reclaimed_segments: u64,
    pub checkpoints: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    rejected: AtomicU64,
    puts: AtomicU64,
    removes: AtomicU64,
    evicted: AtomicU64,
    second_chances: AtomicU64,
    reclaimed_segments: AtomicU64,
    checkpoints: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// The segment appends go to, and how far it is written.
struct Head {
    segment: Arc<Segment>,
    slot: u32,
    len: u64,
}

/// What only writers touch (under `writer`).
struct Writer {
    head: Option<Head>,
    /// Sealed segments written back in the background but not yet synced.
    unsynced: Vec<Arc<Segment>>,
    next_id: u64,
    since_checkpoint: u64,
    checkpoint_charge: u64,
}

/// What readers and writers share (under `shared`).
struct Shared {
    index: PackedIndex,
    segments: Segments,
}

/// The packed store of one folder. See the module header for its invariants and lock order.
pub struct PackedStore {
    dir: PathBuf,
    config: PackedConfig,
    budget: Arc<Budget>,
    writer: Mutex<Writer>,
    shared: Mutex<Shared>,
    counters: Counters,
    /// Set by `close` and `abandon`: `Drop` then leaves the folder as it is.
    finished: AtomicBool,
    _lock: File,
}

/// A record held for reading: it stays readable, and its segment stays charged, while this
/// lives, even after a newer version or reclamation took it out of the index.
pub struct PinnedRecord {
    segment: Arc<Segment>,
    location: Location,
    key: Box<[u8]>,
}

impl PinnedRecord {
    /// The record's bytes, checked again (a damaged disk answers `Ok(None)`, never bytes).
    pub fn read(&self) -> Result<Option<PackedObject>, PackedError> {
        read_checked(&self.segment, self.location, &self.key)
    }
}

/// Reads the record at `location` and checks it against `key`; `Ok(None)` if it fails.
fn read_checked(
    segment: &Segment,
    location: Location,
    key: &[u8],
) -> Result<Option<PackedObject>, PackedError> {
    let bytes = match segment.read_at(location.offset, location.len as usize) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    };
    let Some(decoded) = record::decode(&bytes) else {
        return Ok(None);
    };
    let matches = decoded.header.kind == RecordKind::Object
        && decoded.key == key
        && decoded.header.record_len() == location.len as usize;
    if !matches {
        return Ok(None);
    }
    let validators_at = record::HEADER_LEN + decoded.key.len();
    let data_at = validators_at + decoded.validators.len();
    let data_end = data_at + decoded.data.len();
    let bytes = Bytes::from(bytes);
    Ok(Some(PackedObject {
        validators: bytes.slice(validators_at..data_at),
        data: bytes.slice(data_at..data_end),
    }))
}

impl PackedStore {
    /// Opens (creating 0700) the store in `dir`: reads the checkpoint, scans what was written
    /// after it, and reclaims down to the cap if it shrank. Nothing in the folder can make
    /// this fail; only I/O on the folder itself, its lock, or a bad `config`.
    pub fn open(dir: &Path, config: PackedConfig) -> Result<PackedStore, PackedError> {
        Self::open_sharing(dir, config, None)
    }

    /// Like [`open`](PackedStore::open), with every byte also counted against `shared`
    /// (the whole cache's cap, which other objects use too).
    pub fn open_sharing(
        dir: &Path,
        config: PackedConfig,
        shared: Option<Arc<dyn SharedSpace>>,
    ) -> Result<PackedStore, PackedError> {
        config.check()?;
        let lock = open::lock_folder(dir)?;
        let budget = Arc::new(Budget::new(config.cap_bytes, shared));
        budget.charge_found(FOLDER_BYTES);
        let recovered = open::recover(dir, &config, &budget)?;
        let store = PackedStore {
            dir: dir.to_path_buf(),
            budget,
            writer: Mutex::new(Writer {
                head: None,
                unsynced: Vec::new(),
                next_id: recovered.next_id,
                since_checkpoint: recovered.scanned_bytes,
                checkpoint_charge: recovered.checkpoint_charge,
            }),
            shared: Mutex::new(Shared {
                index: recovered.index,
                segments: recovered.segments,
            }),
            counters: Counters::default(),
            finished: AtomicBool::new(false),
            _lock: lock,
            config,
        };
        store.settle_after_open()?;
        Ok(store)
    }

    /// Reclaims until the folder is under its cap (it may have shrunk since the last run),
    /// and checkpoints at once if the scan was long.
    fn settle_after_open(&self) -> Result<(), PackedError> {
        let mut writer = self.writer.lock();
        while self.budget.used() > self.budget.cap() {
            if !self.reclaim_oldest(&mut writer)? {
                break;
            }
        }
        if self.budget.used() > self.budget.cap() && writer.checkpoint_charge > 0 {
            let _ = std::fs::remove_file(checkpoint::path(&self.dir));
            self.budget
                .release(std::mem::take(&mut writer.checkpoint_charge));
        }
        if writer.since_checkpoint >= self.config.checkpoint_every {
            self.checkpoint_locked(&mut writer)?;
        }
        Ok(())
    }

    /// Stores a new version of `key`. The older version, if any, becomes dead space; readers
    /// that pinned it keep reading it. The record is durable after the next [`sync`], roll
    /// or checkpoint.
    ///
    /// [`sync`]: PackedStore::sync
    pub fn put(&self, key: &[u8], validators: &[u8], data: &[u8]) -> Result<(), PackedError> {
        let too_large = |what, len, max| Err(PackedError::TooLarge { what, len, max });
        if key.len() > MAX_KEY_LEN {
            return too_large("key", key.len(), MAX_KEY_LEN);
        }
        if validators.len() > MAX_VALIDATORS_LEN {
            return too_large("validators", validators.len(), MAX_VALIDATORS_LEN);
        }
        if data.len() > self.config.max_object {
            return too_large("object", data.len(), self.config.max_object);
        }
        let bytes = record::encode(RecordKind::Object, key, validators, data);
        let hash = record::key_hash(key);
        let mut writer = self.writer.lock();
        self.make_room_for_entry(&mut writer, hash)?;
        let location = self.append(&mut writer, &bytes)?;
        let upserted = self.shared.lock().index.upsert(hash, location);
        upserted.map_err(|()| PackedError::NoRoom)?;
        bump(&self.counters.puts, 1);
        self.after_append(&mut writer, bytes.len() as u64);
        Ok(())
    }

    /// The newest version of `key`, checked against its record; `Ok(None)` is a miss.
    pub fn get(&self, key: &[u8]) -> Result<Option<PackedObject>, PackedError> {
        let Some((segment, location)) = self.locate(key) else {
            bump(&self.counters.misses, 1);
            return Ok(None);
        };
        let object = read_checked(&segment, location, key)?;
        self.count_read(key, location, object.is_some());
        Ok(object)
    }

    /// Like [`get`](PackedStore::get), and keeps the record for later reads.
    pub fn pin(&self, key: &[u8]) -> Result<Option<(PackedObject, PinnedRecord)>, PackedError> {
        let Some((segment, location)) = self.locate(key) else {
            bump(&self.counters.misses, 1);
            return Ok(None);
        };
        let object = read_checked(&segment, location, key)?;
        self.count_read(key, location, object.is_some());
        let pinned = PinnedRecord {
            segment,
            location,
            key: key.into(),
        };
        Ok(object.map(|object| (object, pinned)))
    }

    /// Keeps the record `key` has now readable, without reading it: a hot open pins at no
    /// I/O cost, and every [`PinnedRecord::read`] checks the record whole anyway.
    pub fn pin_unread(&self, key: &[u8]) -> Option<PinnedRecord> {
        let (segment, location) = self.locate(key)?;
        Some(PinnedRecord {
            segment,
            location,
            key: key.into(),
        })
    }

    fn locate(&self, key: &[u8]) -> Option<(Arc<Segment>, Location)> {
        let mut shared = self.shared.lock();
        let location = shared.index.touch(record::key_hash(key))?;
        let segment = shared.segments.get(location.segment)?.clone();
        Some((segment, location))
    }

    /// Counts a read; a record that failed its checks leaves the index (if still there).
    fn count_read(&self, key: &[u8], location: Location, served: bool) {
        if served {
            bump(&self.counters.hits, 1);
            return;
        }
        bump(&self.counters.rejected, 1);
        bump(&self.counters.misses, 1);
        let hash = record::key_hash(key);
        self.shared.lock().index.remove_if_at(hash, location);
        tracing::warn!("packed record failed its checks; dropped, to be fetched again");
    }

    /// Removes `key`; a tombstone record keeps it removed across a reopen. Returns whether
    /// the key was cached.
    pub fn remove(&self, key: &[u8]) -> Result<bool, PackedError> {
        if key.len() > MAX_KEY_LEN {
            return Ok(false);
        }
        let hash = record::key_hash(key);
        let mut writer = self.writer.lock();
        if self.shared.lock().index.get(hash).is_none() {
            return Ok(false);
        }
        let bytes = record::encode(RecordKind::Tombstone, key, b"", b"");
        self.append(&mut writer, &bytes)?;
        self.shared.lock().index.remove(hash);
        bump(&self.counters.removes, 1);
        self.after_append(&mut writer, bytes.len() as u64);
        Ok(true)
    }

    /// The keys of every cached object that `matches` (a sweep of the store: each record's
    /// header and key are read back and checked, so it costs a read per object).
    pub fn keys_matching(&self, matches: impl Fn(&[u8]) -> bool) -> Vec<Box<[u8]>> {
        let located: Vec<(Arc<Segment>, Location)> = {
            let shared = self.shared.lock();
            let entries = shared.index.entries();
            let with_segment = |e: index::Entry| {
                let location = e.location();
                let segment = shared.segments.get(location.segment)?.clone();
                Some((segment, location))
            };
            entries.filter_map(with_segment).collect()
        };
        let key_of = |(segment, location): (Arc<Segment>, Location)| -> Option<Box<[u8]>> {
            let bytes = segment.read_at(location.offset, location.len as usize);
            let bytes = bytes.ok()?;
            let decoded = record::decode(&bytes)?;
            let wanted = decoded.header.kind == RecordKind::Object && matches(decoded.key);
            wanted.then(|| Box::from(decoded.key))
        };
        located.into_iter().filter_map(key_of).collect()
    }

    /// Makes every record put so far durable.
    ///
    /// The `fsync`s run outside the writer lock, so puts go on meanwhile (a put that lands
    /// during them is covered by the next sync, as one after it would be).
    pub fn sync(&self) -> Result<(), PackedError> {
        let (sealed, head) = {
            let writer = self.writer.lock();
            let head = writer.head.as_ref().map(|head| head.segment.clone());
            (writer.unsynced.clone(), head)
        };
        for segment in sealed.iter().chain(&head) {
            segment.sync()?;
        }
        let synced = |segment: &Arc<Segment>| sealed.iter().any(|done| done.id == segment.id);
        self.writer
            .lock()
            .unsynced
            .retain(|segment| !synced(segment));
        Ok(())
    }

    /// Syncs the sealed segments not synced yet, then the head.
    fn sync_locked(writer: &mut Writer) -> Result<(), PackedError> {
        while let Some(segment) = writer.unsynced.last() {
            segment.sync()?;
            writer.unsynced.pop();
        }
        if let Some(head) = &writer.head {
            head.segment.sync()?;
        }
        Ok(())
    }

    /// Saves the index now (it is also saved every `checkpoint_every` bytes and at close).
    pub fn checkpoint(&self) -> Result<(), PackedError> {
        let mut writer = self.writer.lock();
        self.checkpoint_locked(&mut writer)
    }

    pub fn stats(&self) -> PackedStats {
        let (objects, max_objects, index_memory_bytes, segments) = {
            let shared = self.shared.lock();
            let index = &shared.index;
            let max = index.max_entries() as u64;
            (
                index.len() as u64,
                max,
                index.memory_bytes(),
                shared.segments.count(),
            )
        };
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.counters;
        PackedStats {
            objects,
            max_objects,
            index_memory_bytes,
            used_bytes: self.budget.used(),
            cap_bytes: self.budget.cap(),
            segments: segments as u64,
            hits: count(&c.hits),
            misses: count(&c.misses),
            rejected: count(&c.rejected),
            puts: count(&c.puts),
            removes: count(&c.removes),
            evicted: count(&c.evicted),
            second_chances: count(&c.second_chances),
            reclaimed_segments: count(&c.reclaimed_segments),
            checkpoints: count(&c.checkpoints),
        }
    }

    /// Syncs and checkpoints, so the next open reads the index at once.
    pub fn close(self) -> Result<(), PackedError> {
        self.finished.store(true, Ordering::Release);
        self.sync()?;
        self.checkpoint()
    }

    /// Drops the store as a crash would: nothing synced, no checkpoint (tests, benchmarks).
    pub fn abandon(self) {
        self.finished.store(true, Ordering::Release);
    }
}

impl Drop for PackedStore {
    fn drop(&mut self) {
        if self.finished.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = self.sync().and_then(|()| self.checkpoint()) {
            tracing::warn!(dir = %self.dir.display(), "packed store not saved at close: {e}");
        }
    }
}

impl PackedStore {
    /// Counts appended bytes and checkpoints when enough have piled up since the last one.
    /// A failed checkpoint costs a longer scan at the next open, not the put.
    fn after_append(&self, writer: &mut Writer, bytes: u64) {
        writer.since_checkpoint += bytes;
        if writer.since_checkpoint >= self.config.checkpoint_every {
            if let Err(e) = self.checkpoint_locked(writer) {
                tracing::warn!(dir = %self.dir.display(), "packed index checkpoint failed: {e}");
            }
        }
    }

    /// Appends one record to the head, rolling to a new head when it does not fit.
    fn append(&self, writer: &mut Writer, bytes: &[u8]) -> Result<Location, PackedError> {
        let len = bytes.len() as u64;
        let fits = |head: &Head| head.len + len <= self.config.segment_size;
        if !writer.head.as_ref().is_some_and(fits) {
            self.roll(writer)?;
        }
        let head = writer.head.as_mut().ok_or(PackedError::NoRoom)?;
        let location = Location {
            segment: head.slot,
            offset: head.len,
            len: len as u32,
        };
        match head.segment.write_at(bytes, head.len) {
            Ok(()) => {
                head.len += len;
                Ok(location)
            }
            Err(e) => {
                // Bytes may be half written: no more appends to this head.
                self.seal_head(writer);
                Err(e.into())
            }
        }
    }

    /// Seals the head (if any), opens a new one, and reclaims until a segment's worth of
    /// headroom is free again.
    fn roll(&self, writer: &mut Writer) -> Result<(), PackedError> {
        self.seal_head(writer);
        let size = segment::head_charge(self.config.segment_size);
        while !self.budget.reserve(size) {
            if !self.reclaim_oldest(writer)? {
                return Err(PackedError::NoRoom);
            }
        }
        let id = writer.next_id;
        writer.next_id += 1;
        let segment = Arc::new(Segment::create(&self.dir, id, &self.budget, size)?);
        let slot = self.shared.lock().segments.add(segment.clone());
        let Some(slot) = slot else {
            let _ = std::fs::remove_file(segment::path(&self.dir, id));
            return Err(PackedError::NoRoom);
        };
        writer.head = Some(Head {
            segment,
            slot,
            len: 0,
        });
        while self.budget.free() < size {
            if !self.reclaim_oldest(writer)? {
                break;
            }
        }
        Ok(())
    }

    /// Seals the head and files it with the sealed segments, to be synced later (see
    /// `sync_locked`).
    fn seal_head(&self, writer: &mut Writer) {
        let Some(head) = writer.head.take() else {
            return;
        };
        if let Err(e) = head.segment.seal(head.len) {
            tracing::warn!(dir = %self.dir.display(), "cannot seal packed segment: {e}");
        }
        self.shared.lock().segments.sealed.push_back(head.slot);
        writer.unsynced.push(head.segment);
    }

    /// Reclaims sealed segments while `hash` is a new key and the index is at its limit.
    fn make_room_for_entry(&self, writer: &mut Writer, hash: u64) -> Result<(), PackedError> {
        loop {
            {
                let shared = self.shared.lock();
                let index = &shared.index;
                if index.get(hash).is_some() || index.len() < index.max_entries() {
                    return Ok(());
                }
            }
            if !self.reclaim_oldest(writer)? {
                if writer.head.is_none() {
                    return Err(PackedError::NoRoom);
                }
                // Only the head is left (a limit below one segment's objects): seal it, so
                // that it is the oldest sealed segment next time round.
                self.seal_head(writer);
            }
        }
    }
}

impl PackedStore {
    /// Reclaims the oldest sealed segment (see `evict`); false if there is none.
    fn reclaim_oldest(&self, writer: &mut Writer) -> Result<bool, PackedError> {
        let room = writer
            .head
            .as_ref()
            .map_or(0, |head| self.config.segment_size - head.len);
        let (slot, segment, plan) = {
            let mut shared = self.shared.lock();
            let Some(slot) = shared.segments.sealed.pop_front() else {
                return Ok(false);
            };
            let Some(segment) = shared.segments.get(slot).cloned() else {
                return Ok(true);
            };
            let plan = evict::plan(&shared.index, slot, room);
            for entry in &plan.evicted {
                shared.index.remove_if_at(entry.hash, entry.location());
            }
            (slot, segment, plan)
        };
        let moved = self.give_second_chances(writer, &segment, &plan.survivors);
        if moved > 0 {
            if let Some(head) = &writer.head {
                head.segment.sync()?;
            }
        }
        let dropped = (plan.survivors.len() + plan.evicted.len()) as u64 - moved;
        self.shared.lock().segments.remove(slot);
        // Its bytes no longer matter: no sync, and no handle that keeps its charge.
        writer.unsynced.retain(|s| s.id != segment.id);
        if let Err(e) = std::fs::remove_file(segment::path(&self.dir, segment.id)) {
            tracing::warn!(dir = %self.dir.display(), "cannot remove packed segment: {e}");
        }
        bump(&self.counters.evicted, dropped);
        bump(&self.counters.second_chances, moved);
        bump(&self.counters.reclaimed_segments, 1);
        Ok(true)
    }

    /// Copies survivors to the head (they fit: the plan counted the room). A survivor that
    /// cannot be read, checked or written leaves the index instead. Returns how many moved.
    fn give_second_chances(
        &self,
        writer: &mut Writer,
        from: &Segment,
        survivors: &[index::Entry],
    ) -> u64 {
        let mut moved = 0;
        for entry in survivors {
            let old = entry.location();
            let bytes = from.read_at(old.offset, old.len as usize).ok();
            let intact = bytes.as_deref().and_then(record::decode).is_some_and(|d| {
                d.header.hash == entry.hash && d.header.record_len() == old.len as usize
            });
            let new = match (bytes, writer.head.as_mut()) {
                (Some(bytes), Some(head)) if intact => {
                    let at = head.len;
                    let written = head.segment.write_at(&bytes, at).is_ok();
                    if written {
                        head.len += old.len as u64;
                    }
                    written.then_some(Location {
                        segment: head.slot,
                        offset: at,
                        len: old.len,
                    })
                }
                _ => None,
            };
            let mut shared = self.shared.lock();
            match new {
                Some(new) if shared.index.move_if_at(entry.hash, old, new) => moved += 1,
                _ => {
                    shared.index.remove_if_at(entry.hash, old);
                }
            }
        }
        moved
    }

    /// Saves the index: reserve its file's space, snapshot, sync what it names, write.
    fn checkpoint_locked(&self, writer: &mut Writer) -> Result<(), PackedError> {
        let rows = {
            let shared = self.shared.lock();
            shared.index.len() + shared.segments.count()
        };
        let charge = checkpoint::file_len(rows, 0).div_ceil(4096) * 4096;
        while !self.budget.reserve(charge) {
            if !self.reclaim_oldest(writer)? {
                return Err(PackedError::NoRoom);
            }
        }
        let (segments, entries) = {
            let shared = self.shared.lock();
            (
                shared.segments.list(),
                shared.index.entries().collect::<Vec<_>>(),
            )
        };
        let tail = match &writer.head {
            Some(head) => checkpoint::Tail {
                segment: head.segment.id,
                offset: head.len,
            },
            None => checkpoint::Tail {
                segment: writer.next_id,
                offset: 0,
            },
        };
        let saved = Self::sync_locked(writer).and_then(|()| {
            checkpoint::save(&self.dir, tail, &segments, &entries).map_err(PackedError::from)
        });
        if let Err(e) = saved {
            self.budget.release(charge);
            let _ = std::fs::remove_file(checkpoint::temporary_path(&self.dir));
            return Err(e);
        }
        self.budget
            .release(std::mem::replace(&mut writer.checkpoint_charge, charge));
        writer.since_checkpoint = 0;
        bump(&self.counters.checkpoints, 1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_config() -> PackedConfig {
        let mut config = PackedConfig::new(8 << 20);
        config.segment_size = 256 << 10;
        config.max_object = 16 << 10;
        config
    }

    /// Two keys under one 64-bit hash (forced here: xxh3 gives none to find) share an
    /// entry; the one the record does not name gets a miss, never the other's bytes.
    #[test]
    fn a_hash_collision_costs_a_miss_never_another_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = PackedStore::open(dir.path(), small_config()).unwrap();
        store.put(b"/b", b"vb", b"bytes of b").unwrap();
        {
            let mut shared = store.shared.lock();
            let location = shared.index.get(record::key_hash(b"/b")).unwrap();
            shared
                .index
                .upsert(record::key_hash(b"/a"), location)
                .unwrap();
        }
        assert_eq!(store.get(b"/a").unwrap(), None);
        assert_eq!(store.stats().rejected, 1);
        assert_eq!(&store.get(b"/b").unwrap().unwrap().data[..], b"bytes of b");
    }

    #[test]
    fn keys_matching_names_the_live_objects_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = PackedStore::open(dir.path(), small_config()).unwrap();
        for key in ["/a/1", "/a/2", "/a/3", "/b/1"] {
            store.put(key.as_bytes(), b"v", key.as_bytes()).unwrap();
        }
        store.put(b"/a/2", b"v2", b"newer").unwrap();
        store.remove(b"/a/3").unwrap();
        let mut keys = store.keys_matching(|k| k.starts_with(b"/a/"));
        keys.sort();
        assert_eq!(keys, [Box::from(&b"/a/1"[..]), Box::from(&b"/a/2"[..])]);
    }

    #[test]
    fn configurations_that_cannot_hold_the_cap_are_refused() {
        let mut config = small_config();
        config.cap_bytes = 3 * config.segment_size;
        assert!(matches!(config.check(), Err(PackedError::Config(_))));
        let mut config = small_config();
        config.segment_size = 16 << 10;
        assert!(config.check().is_err(), "segments smaller than two records");
        let mut config = small_config();
        config.max_object = MAX_DATA_LEN + 1;
        assert!(config.check().is_err());
        assert!(small_config().check().is_ok());
    }

    #[test]
    fn objects_over_the_threshold_are_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = PackedStore::open(dir.path(), small_config()).unwrap();
        let too_big = vec![0; (16 << 10) + 1];
        assert!(matches!(
            store.put(b"/big", b"", &too_big),
            Err(PackedError::TooLarge { .. })
        ));
        assert_eq!(store.stats().objects, 0);
        assert_eq!(store.stats().segments, 0);
    }
}
