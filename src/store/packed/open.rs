//! Reopening a packed store: the folder's lock, the checkpoint, and a scan of the segment
//! tails written after it, into an index and a segment table.
//!
//! Invariants: nothing in the folder can stop an open. A damaged checkpoint means a full
//! scan (one log line); a segment that cannot be opened is skipped; a torn tail ends the
//! scan of its segment, and the newest segment is cut back to its last whole record (it was
//! the head when the process died). Entries of the checkpoint are kept only if they point
//! below its tail into a segment that still exists; records after the tail are applied in
//! (segment id, offset) order, which is the order they were written in, so the newest
//! version of a key and its tombstones win.

use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::sync::Arc;

use super::budget::Budget;
use super::checkpoint::{self, Tail};
use super::error::PackedError;
use super::index::{Location, PackedIndex};
use super::record::{Decoded, RecordKind};
use super::segment::{self, Segment, Segments};
use super::PackedConfig;

/// What a reopen found.
pub(super) struct Recovered {
    pub index: PackedIndex,
    pub segments: Segments,
    pub next_id: u64,
    pub checkpoint_charge: u64,
    /// Bytes of records scanned after the checkpoint's tail.
    pub scanned_bytes: u64,
}

/// Creates the folder (0700) if needed and takes its exclusive lock.
pub(super) fn lock_folder(dir: &Path) -> Result<File, PackedError> {
    crate::store::create_private_dir(dir)?;
    crate::store::files::lock_folder(dir)?
        .ok_or_else(|| PackedError::Locked(dir.display().to_string()))
}

/// Opens every segment in `dir` (oldest first), charging what each takes on disk.
fn open_segments(dir: &Path, budget: &Arc<Budget>) -> io::Result<Vec<Arc<Segment>>> {
    let mut found = Vec::new();
    for id in segment::list(dir)? {
        match Segment::open_found(dir, id, budget) {
            Ok(segment) => found.push(Arc::new(segment)),
            Err(e) => tracing::warn!(dir = %dir.display(), id, "skipping packed segment: {e}"),
        }
    }
    Ok(found)
}

/// The checkpoint if it can be used; a damaged one is removed with one log line.
fn usable_checkpoint(dir: &Path) -> Option<checkpoint::Loaded> {
    match checkpoint::load(dir) {
        Ok(loaded) => loaded,
        Err(reason) => {
            tracing::warn!(dir = %dir.display(), "packed index checkpoint unusable ({reason}); scanning every segment");
            let _ = fs::remove_file(checkpoint::path(dir));
            None
        }
    }
}

/// Files the segments found under slots, oldest first, all sealed. Returns the segments
/// that got a slot, the table, and each one's slot.
fn segment_table(
    dir: &Path,
    mut found: Vec<Arc<Segment>>,
) -> (Vec<Arc<Segment>>, Segments, Vec<u32>) {
    let mut segments = Segments::default();
    let mut slots = Vec::with_capacity(found.len());
    for (at, segment) in found.iter().enumerate() {
        let Some(slot) = segments.add(segment.clone()) else {
            // More segments than the index can name: not a folder this store wrote. The
            // newest are dropped rather than refuse to open.
            tracing::warn!(dir = %dir.display(), "too many packed segments; dropping the rest");
            for extra in &found[at..] {
                let _ = fs::remove_file(segment::path(dir, extra.id));
            }
            break;
        };
        segments.sealed.push_back(slot);
        slots.push(slot);
    }
    found.truncate(slots.len());
    (found, segments, slots)
}

/// Reads the store's folder back: checkpoint, then every record after its tail.
pub(super) fn recover(
    dir: &Path,
    config: &PackedConfig,
    budget: &Arc<Budget>,
) -> Result<Recovered, PackedError> {
    let _ = fs::remove_file(checkpoint::temporary_path(dir));
    let (found, segments, slots) = segment_table(dir, open_segments(dir, budget)?);
    let loaded = usable_checkpoint(dir);
    let (mut index, tail, checkpoint_charge) = match &loaded {
        Some(loaded) => {
            let index = index_from_checkpoint(loaded, &found, &slots, config);
            let charge = fs::metadata(checkpoint::path(dir)).map_or(0, |m| m.len());
            let charge = charge.div_ceil(4096) * 4096;
            budget.charge_found(charge);
            (index, loaded.tail, charge)
        }
        None => (
            PackedIndex::new(config.index_memory_limit),
            Tail {
                segment: 0,
                offset: 0,
            },
            0,
        ),
    };
    drop(loaded);
    let mut scanned_bytes = 0;
    for (position, (segment, &slot)) in found.iter().zip(&slots).enumerate() {
        let newest = position + 1 == found.len();
        match scan_tail(dir, segment, slot, tail, newest, &mut index) {
            Ok(scanned) => scanned_bytes += scanned,
            // Its records that the checkpoint names are still checked at every read.
            Err(e) => {
                tracing::warn!(dir = %dir.display(), id = segment.id, "cannot scan packed segment: {e}")
            }
        }
    }
    let next_id = found
        .last()
        .map_or(0, |s| s.id + 1)
        .max(tail.segment.saturating_add(1));
    Ok(Recovered {
        index,
        segments,
        next_id,
        checkpoint_charge,
        scanned_bytes,
    })
}

/// The checkpoint's entries that still point at records below its tail, in segments that
/// still exist (renumbered to this open's slots).
fn index_from_checkpoint(
    loaded: &checkpoint::Loaded,
    found: &[Arc<Segment>],
    slots: &[u32],
    config: &PackedConfig,
) -> PackedIndex {
    let mut index = PackedIndex::with_capacity(loaded.entry_count(), config.index_memory_limit);
    // Checkpoint slot -> (this open's slot, segment id, segment length).
    let mut renumber = std::collections::HashMap::new();
    for (old_slot, id) in loaded.segments() {
        if let Ok(at) = found.binary_search_by_key(&id, |s| s.id) {
            let len = found[at].len().unwrap_or(0);
            renumber.insert(old_slot, (slots[at], id, len));
        }
    }
    let tail = loaded.tail;
    for entry in loaded.entries() {
        let location = entry.location();
        let Some(&(slot, id, len)) = renumber.get(&u64::from(location.segment)) else {
            continue;
        };
        let end = location.offset + u64::from(location.len);
        let below_tail = id < tail.segment || (id == tail.segment && end <= tail.offset);
        if entry.hash != 0 && below_tail && end <= len {
            // At the memory limit the rest is dropped: those objects are fetched again.
            let _ = index.put_entry(entry.in_segment(slot));
        }
    }
    index
}

/// Applies the records of `segment` at or after the tail to the index; returns the bytes
/// scanned. The newest segment's torn tail is cut off.
fn scan_tail(
    dir: &Path,
    segment: &Segment,
    slot: u32,
    tail: Tail,
    newest: bool,
    index: &mut PackedIndex,
) -> io::Result<u64> {
    let from = match segment.id.cmp(&tail.segment) {
        std::cmp::Ordering::Less => return Ok(0),
        std::cmp::Ordering::Equal => tail.offset,
        std::cmp::Ordering::Greater => 0,
    };
    let end = segment.len()?;
    if from >= end {
        return Ok(0);
    }
    let valid_end = segment.scan(from, end, |offset, decoded| {
        apply(index, slot, offset, decoded);
    })?;
    if valid_end < end {
        tracing::warn!(dir = %dir.display(), id = segment.id, offset = valid_end,
            "packed segment ends in {} bytes of torn or damaged records; ignored", end - valid_end);
        if newest {
            // It was the head when the process died: cut the tear off, and its charge.
            segment.truncate(valid_end)?;
            segment.seal(valid_end)?;
        }
    }
    Ok(valid_end - from)
}

/// Applies one scanned record: a version points its key here, a tombstone removes it.
fn apply(index: &mut PackedIndex, slot: u32, offset: u64, decoded: &Decoded<'_>) {
    let len = decoded.header.record_len();
    if !Location::fits(slot, offset, len) {
        return;
    }
    let hash = decoded.header.hash;
    match decoded.header.kind {
        RecordKind::Object => {
            let location = Location {
                segment: slot,
                offset,
                len: len as u32,
            };
            // At the memory limit a new key is dropped: it is fetched again.
            let _ = index.upsert(hash, location);
        }
        RecordKind::Tombstone => {
            index.remove(hash);
        }
    }
}
