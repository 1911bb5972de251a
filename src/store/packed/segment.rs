//! Segment files: large append-only files of records, each charged against the budget for as
//! long as any handle on it lives.
//!
//! A segment is `seg-<id as 16 hex digits>.pack`; ids only grow, so a higher id holds newer
//! records, and within a file a later offset is newer. While a segment is the head (open for
//! appends) it is charged whole (`segment_size`); once sealed, it is charged what it takes on
//! disk. The charge is given back when the last `Arc<Segment>` drops, after the file was
//! unlinked, so a reader still holding a reclaimed segment keeps both its bytes and their
//! place under the cap.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::budget::Budget;
use super::record::{self, Decoded, MAX_RECORD_LEN};

/// Bytes read at once when a segment is scanned at a reopen.
const SCAN_WINDOW: usize = 4 << 20;

/// One segment file and its charge.
pub(super) struct Segment {
    pub id: u64,
    file: File,
    charge: AtomicU64,
    budget: Arc<Budget>,
}

/// Where segment `id` lives in `dir`.
pub(super) fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("seg-{id:016x}.pack"))
}

/// The id a file name stands for, if it names a segment.
pub(super) fn id_of(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("seg-")?.strip_suffix(".pack")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The segment ids in `dir`, oldest first.
pub(super) fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids: Vec<u64> = fs::read_dir(dir)?
        .flatten()
        .filter_map(|entry| id_of(entry.file_name().to_str()?))
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

fn open_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    options
}

/// Charged per segment beyond its blocks: its share of the folder's entries and of the
/// file's extent tree, which `du` of the folder counts too.
pub(super) const SEGMENT_OVERHEAD: u64 = 4096;

/// Bytes a head segment is charged while it takes appends.
pub(super) fn head_charge(segment_size: u64) -> u64 {
    segment_size + SEGMENT_OVERHEAD
}

/// Bytes a sealed segment of `len` bytes is charged: what it takes on disk (allocated, or
/// its length in whole blocks, whichever is more) and its overhead.
fn disk_bytes(file: &File, len: u64) -> u64 {
    let allocated = file.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
    allocated.max(len.div_ceil(4096) * 4096) + SEGMENT_OVERHEAD
}

impl Segment {
    /// Creates a new, empty head segment. `charge` was reserved by the caller.
    pub fn create(dir: &Path, id: u64, budget: &Arc<Budget>, charge: u64) -> io::Result<Segment> {
        let created = open_options().create_new(true).open(path(dir, id));
        let file = match created {
            Ok(file) => file,
            Err(e) => {
                budget.release(charge);
                return Err(e);
            }
        };
        Ok(Segment {
            id,
            file,
            charge: AtomicU64::new(charge),
            budget: budget.clone(),
        })
    }

    /// Opens a segment found at a reopen and charges what it takes on disk.
    pub fn open_found(dir: &Path, id: u64, budget: &Arc<Budget>) -> io::Result<Segment> {
        let file = open_options().open(path(dir, id))?;
        let metadata = file.metadata()?;
        if !metadata.file_type().is_file() {
            return Err(io::Error::other("not a plain file"));
        }
        let charge = disk_bytes(&file, metadata.len());
        budget.charge_found(charge);
        Ok(Segment {
            id,
            file,
            charge: AtomicU64::new(charge),
            budget: budget.clone(),
        })
    }

    pub fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    pub fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        crate::store::read_exact_at(&self.file, len, offset)
    }

    pub fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(bytes, offset)
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Cuts a torn tail off (after a crash), so the space it took is free again.
    pub fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.file.sync_all()
    }

    /// Seals a head that takes no more appends: starts writing it back without waiting (the
    /// store syncs it before anything names its records), and lowers its charge from the
    /// whole segment to what it takes on disk.
    pub fn seal(&self, len: u64) -> io::Result<()> {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.file);
        // SAFETY: sync_file_range on a descriptor we own, with plain integer arguments; it
        // only starts writeback, so an error here is caught by the later sync.
        unsafe { libc::sync_file_range(fd, 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        let on_disk = disk_bytes(&self.file, len);
        let before = self
            .charge
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                Some(c.min(on_disk))
            })
            .unwrap_or(0);
        self.budget
            .release(before.saturating_sub(on_disk.min(before)));
        Ok(())
    }

    /// Visits every valid record from `from` to `end`, in order; returns where the valid run
    /// stops (at `end`, or at the first torn or damaged record).
    pub fn scan(
        &self,
        from: u64,
        end: u64,
        mut visit: impl FnMut(u64, &Decoded<'_>),
    ) -> io::Result<u64> {
        let mut window: Vec<u8> = Vec::new();
        let mut window_start = from;
        let mut at = from;
        while at < end {
            let window_end = window_start + window.len() as u64;
            let short = window_end.saturating_sub(at) < MAX_RECORD_LEN as u64;
            if at < window_start || (short && window_end < end) {
                let len = (end - at).min(SCAN_WINDOW as u64) as usize;
                window = self.read_at(at, len)?;
                window_start = at;
            }
            let from_window = &window[(at - window_start) as usize..];
            let Some(decoded) = record::decode(from_window) else {
                break;
            };
            visit(at, &decoded);
            at += decoded.header.record_len() as u64;
        }
        Ok(at.min(end))
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        self.budget.release(self.charge.load(Ordering::Acquire));
    }
}

/// The live segments, by the slot the index names them with, and the order reclamation
/// takes the sealed ones in (oldest first). Slots are reused once a segment is gone; no
/// index entry names a freed slot, since reclamation takes every entry of a segment out
/// first.
#[derive(Default)]
pub(super) struct Segments {
    by_slot: Vec<Option<Arc<Segment>>>,
    free_slots: Vec<u32>,
    pub sealed: std::collections::VecDeque<u32>,
}

impl Segments {
    /// Files a segment under a free slot; `None` when every slot the index can name is taken.
    pub fn add(&mut self, segment: Arc<Segment>) -> Option<u32> {
        if let Some(slot) = self.free_slots.pop() {
            self.by_slot[slot as usize] = Some(segment);
            return Some(slot);
        }
        let slot = u32::try_from(self.by_slot.len()).ok()?;
        if slot >= super::index::SEGMENT_SLOTS {
            return None;
        }
        self.by_slot.push(Some(segment));
        Some(slot)
    }

    pub fn get(&self, slot: u32) -> Option<&Arc<Segment>> {
        self.by_slot.get(slot as usize)?.as_ref()
    }

    /// Takes a segment out of the table (its file is the caller's to unlink).
    pub fn remove(&mut self, slot: u32) -> Option<Arc<Segment>> {
        let segment = self.by_slot.get_mut(slot as usize)?.take()?;
        self.free_slots.push(slot);
        self.sealed.retain(|&s| s != slot);
        Some(segment)
    }

    /// Every live segment as (slot, id).
    pub fn list(&self) -> Vec<(u32, u64)> {
        self.by_slot
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| Some((slot as u32, s.as_ref()?.id)))
            .collect()
    }

    pub fn count(&self) -> usize {
        self.by_slot.len() - self.free_slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::packed::record::{encode, RecordKind};

    #[test]
    fn names_round_trip_and_strangers_are_ignored() {
        let name = path(Path::new("/x"), 0xab).file_name().unwrap().to_owned();
        assert_eq!(id_of(name.to_str().unwrap()), Some(0xab));
        assert_eq!(id_of("seg-12.pack"), None);
        assert_eq!(id_of("index.ckpt"), None);
    }

    #[test]
    fn a_scan_stops_at_a_torn_record_and_charges_are_returned() {
        let dir = tempfile::tempdir().unwrap();
        let budget = Arc::new(Budget::new(1 << 20, None));
        assert!(budget.reserve(head_charge(1 << 16)));
        let segment = Segment::create(dir.path(), 1, &budget, head_charge(1 << 16)).unwrap();
        let mut at = 0;
        for i in 0..3u8 {
            let bytes = encode(RecordKind::Object, &[b'k', i], b"", &vec![i; 3000]);
            segment.write_at(&bytes, at).unwrap();
            at += bytes.len() as u64;
        }
        let torn = at - 5;
        segment.truncate(torn).unwrap();
        let mut seen = Vec::new();
        let stop = segment
            .scan(0, torn, |_, d| seen.push(d.key.to_vec()))
            .unwrap();
        assert_eq!(seen.len(), 2);
        assert!(stop < torn);
        segment.seal(torn).unwrap();
        assert!(budget.used() < head_charge(1 << 16));
        drop(segment);
        assert_eq!(budget.used(), 0);
    }
}
