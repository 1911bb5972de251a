//! The index checkpoint: a snapshot of the index and of the segments it points into, saved
//! as one file so that a reopen reads it with one `mmap` instead of scanning every segment.
//!
//! Layout (little endian): a 48-byte header (magic `SPKCKPT1`, CRC32C of header bytes 12..48,
//! CRC32C of the body, the tail position, the segment and entry counts), then 16 bytes per
//! segment (slot, id) and 16 bytes per entry (key hash, packed location).
//!
//! Invariants: the file is written beside its place, synced, then renamed over the old one,
//! and only after every record it points at was synced, so a checkpoint never names bytes a
//! crash can take back. Records at or after the tail position (segment `tail_segment` from
//! `tail_offset`, and every newer segment) are not in it: a reopen scans them. Anything wrong
//! with the file (length, magic, checksums, counts) makes [`load`] answer `None`: the caller
//! falls back to a full scan.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::index::Entry;

const MAGIC: &[u8; 8] = b"SPKCKPT1";
const HEADER_LEN: usize = 48;
const ROW_LEN: usize = 16;

/// Where the checkpoint lives in the store's folder, and its temporary sibling.
pub(super) fn path(dir: &Path) -> PathBuf {
    dir.join("index.ckpt")
}

pub(super) fn temporary_path(dir: &Path) -> PathBuf {
    dir.join("index.ckpt.tmp")
}

/// Bytes a checkpoint of these counts takes in its file.
pub(super) fn file_len(segments: usize, entries: usize) -> u64 {
    (HEADER_LEN + ROW_LEN * (segments + entries)) as u64
}

/// Where the records a checkpoint covers end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tail {
    pub segment: u64,
    pub offset: u64,
}

/// Writes a checkpoint durably in place of the previous one.
pub(super) fn save(
    dir: &Path,
    tail: Tail,
    segments: &[(u32, u64)],
    entries: &[Entry],
) -> io::Result<()> {
    let temporary = temporary_path(dir);
    let _ = fs::remove_file(&temporary);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&temporary)?;
    // The rows go out through a buffer while their checksum is summed; the header, which
    // carries that checksum, is written last at offset 0.
    let mut writer = BufWriter::with_capacity(1 << 20, file);
    writer.write_all(&[0; HEADER_LEN])?;
    let mut body_crc = 0;
    let mut put_row = |a: u64, b: u64| -> io::Result<()> {
        let mut row = [0; ROW_LEN];
        row[..8].copy_from_slice(&a.to_le_bytes());
        row[8..].copy_from_slice(&b.to_le_bytes());
        body_crc = crc32c::crc32c_append(body_crc, &row);
        writer.write_all(&row)
    };
    for &(slot, id) in segments {
        put_row(u64::from(slot), id)?;
    }
    for entry in entries {
        put_row(entry.hash, entry.bits)?;
    }
    let file = writer.into_inner().map_err(|e| e.into_error())?;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&[0; 4]);
    header.extend_from_slice(&body_crc.to_le_bytes());
    for word in [
        tail.segment,
        tail.offset,
        segments.len() as u64,
        entries.len() as u64,
    ] {
        header.extend_from_slice(&word.to_le_bytes());
    }
    let header_crc = crc32c::crc32c(&header[12..]);
    header[8..12].copy_from_slice(&header_crc.to_le_bytes());
    file.write_all_at(&header, 0)?;
    file.sync_all()?;
    fs::rename(&temporary, path(dir))?;
    File::open(dir)?.sync_all()
}

/// A checkpoint read back and checked; its rows are read from the mapping.
pub(super) struct Loaded {
    map: memmap2::Mmap,
    pub tail: Tail,
    segment_count: usize,
    entry_count: usize,
}

fn word(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn half(bytes: &[u8], at: usize) -> u32 {
    let mut half = [0; 4];
    half.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(half)
}

impl Loaded {
    /// The segments the checkpoint names, as (slot, id).
    pub fn segments(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let rows = &self.map[HEADER_LEN..HEADER_LEN + ROW_LEN * self.segment_count];
        rows.chunks_exact(ROW_LEN)
            .map(|row| (word(row, 0), word(row, 8)))
    }

    pub fn entry_count(&self) -> usize {
        self.entry_count
    }

    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        let start = HEADER_LEN + ROW_LEN * self.segment_count;
        self.map[start..].chunks_exact(ROW_LEN).map(|row| Entry {
            hash: word(row, 0),
            bits: word(row, 8),
        })
    }
}

/// Reads the checkpoint; `Err` says why it cannot be used (the caller logs it once and
/// scans), `Ok(None)` that there is none.
pub(super) fn load(dir: &Path) -> Result<Option<Loaded>, String> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path(dir))
    {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
        Ok(file) => file,
    };
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len < HEADER_LEN as u64 || !(len - HEADER_LEN as u64).is_multiple_of(ROW_LEN as u64) {
        return Err(format!("{len} bytes is not a checkpoint's length"));
    }
    // SAFETY: the file is private to this store (0600 in a folder locked by this process),
    // opened read-only, and nobody truncates it while it is mapped: a new checkpoint is a
    // new file renamed over this name, which leaves this mapping's inode alone.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| e.to_string())?;
    let header = &map[..HEADER_LEN];
    if &header[..8] != MAGIC || crc32c::crc32c(&header[12..]) != half(header, 8) {
        return Err("damaged header".into());
    }
    let rows = (len as usize - HEADER_LEN) / ROW_LEN;
    let (segment_count, entry_count) = (word(header, 32), word(header, 40));
    if segment_count.checked_add(entry_count) != Some(rows as u64) {
        return Err("counts do not match the length".into());
    }
    if crc32c::crc32c(&map[HEADER_LEN..]) != half(header, 12) {
        return Err("damaged body".into());
    }
    Ok(Some(Loaded {
        tail: Tail {
            segment: word(header, 16),
            offset: word(header, 24),
        },
        segment_count: segment_count as usize,
        entry_count: entry_count as usize,
        map,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) {
        let entries = [
            Entry { hash: 9, bits: 77 },
            Entry {
                hash: 3,
                bits: 1 << 63,
            },
        ];
        let tail = Tail {
            segment: 4,
            offset: 800,
        };
        save(dir, tail, &[(0, 3), (1, 4)], &entries).unwrap();
    }

    #[test]
    fn a_checkpoint_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        sample(dir.path());
        let loaded = load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.tail.offset, 800);
        assert_eq!(loaded.segments().collect::<Vec<_>>(), vec![(0, 3), (1, 4)]);
        assert_eq!(loaded.entries().count(), 2);
        assert_eq!(loaded.entries().nth(1).unwrap().bits, 1 << 63);
    }

    #[test]
    fn any_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        sample(dir.path());
        let good = fs::read(path(dir.path())).unwrap();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            fs::write(path(dir.path()), &bad).unwrap();
            assert!(load(dir.path()).is_err(), "byte {at}");
        }
        for cut in 0..good.len() {
            fs::write(path(dir.path()), &good[..cut]).unwrap();
            assert!(load(dir.path()).is_err(), "cut {cut}");
        }
    }
}
