//! Kernel-state journal: the inode numbers, open file handles and passthrough registrations
//! the kernel holds, kept in a memory-mapped table that outlives the process, so that a new
//! process can take over the mount's FUSE connection after a crash, a `kill -9` or an upgrade.
//!
//! The table lives in a sealed memfd that the fd store (systemd, or the ston-fs supervisor)
//! holds next to the `/dev/fuse` descriptor: it costs no disk I/O, survives any death of this
//! process, and goes away with the connection. It is updated before the reply that lets the
//! kernel know the thing it records (see [`layout`] for why a write cut short is harmless),
//! and read back with [`check`]: a record that is damaged or at odds with the others is
//! dropped, and the inode or handle it described answers ESTALE.
//!
//! Lock order: the journal's lock is a leaf (row 9 of the crate's table, `src/lib.rs`);
//! callers may hold the inode table's lock and an object's `state`.

mod check;
mod free;
mod layout;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{SystemTime, UNIX_EPOCH};

use memmap2::{MmapMut, MmapOptions};
use parking_lot::Mutex;

use free::FreeSlots;

pub use check::{Carried, Dropped, HandleState, InodeState, PagesState};
pub use layout::NodeKind;

use check::SlotPos;
use layout::{
    Counter, Record, SlotContent, CHUNK_HEADER_LEN, CHUNK_LEN, HEADER_LEN, MAX_INIT, MAX_NAME,
    SLOT_SIZES,
};

/// Largest journal: 1,024 chunks of 256 KiB, about two million inodes and handles.
const MAX_CHUNKS: usize = 1024;

/// Why a journal cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("the journal is not a memfd sealed against shrinking")]
    NotSealed,
    #[error("the journal header is missing or damaged")]
    BadHeader,
    #[error("the INIT exchange does not fit the journal ({0} bytes)")]
    InitTooLarge(usize),
    #[error("journal I/O: {0}")]
    Io(#[from] io::Error),
}

/// A journal read back: what it carries over, the INIT exchange, and what was dropped.
pub struct Restored {
    pub carried: Carried,
    pub init_request: Vec<u8>,
    pub init_reply: Vec<u8>,
    /// How many processes have served this connection before this one.
    pub incarnation: u64,
    pub dropped: Dropped,
}

/// Where each chunk is mapped.
struct ChunkMap {
    region: usize,
    offset: usize,
    /// `None` for a chunk whose header was damaged: formatted again before use.
    slot_size: Option<usize>,
}

struct Inner {
    /// The mapping of the journal as it was when opened, then one mapping per added chunk.
    regions: Vec<MmapMut>,
    chunks: Vec<ChunkMap>,
    /// Free slots by size class.
    free: [FreeSlots; 3],
    inodes: HashMap<u64, SlotPos>,
    handles: HashMap<u64, SlotPos>,
    backings: HashMap<u32, SlotPos>,
    pages: HashMap<u64, SlotPos>,
    max_chunks: usize,
    full_warned: bool,
}

/// The live journal of one FUSE connection.
///
/// Owns: the memfd and its mappings, and where each carried inode, handle and backing id
/// is recorded. Must hold: every number handed to the kernel is below the header's counters
/// before the reply that hands it out.
pub struct Journal {
    file: File,
    inner: Mutex<Inner>,
}

/// A new memfd, sealed so that nobody can shrink it under our mappings.
pub fn sealed_memfd(name: &str) -> io::Result<File> {
    let name = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a fresh descriptor that nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: F_ADD_SEALS takes an int argument on a descriptor we own.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

fn is_sealed_against_shrinking(file: &File) -> bool {
    // SAFETY: F_GET_SEALS takes no argument.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & libc::F_SEAL_SHRINK != 0
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Maps `len` bytes of `file` from `offset`.
fn map(file: &File, offset: usize, len: usize) -> io::Result<MmapMut> {
    // SAFETY: the file is a memfd sealed against shrinking, so the mapping can never lose its
    // pages; the only other holder (the fd store) never writes to it.
    unsafe {
        MmapOptions::new()
            .offset(offset as u64)
            .len(len)
            .map_mut(file)
    }
}

impl Journal {
    /// Starts a journal for a new connection in `file` (a [`sealed_memfd`]), keeping the INIT
    /// request and reply the connection was set up with.
    pub fn create(
        file: File,
        init_request: &[u8],
        init_reply: &[u8],
    ) -> Result<Journal, JournalError> {
        Journal::create_bounded(file, init_request, init_reply, MAX_CHUNKS)
    }

    fn create_bounded(
        file: File,
        init_request: &[u8],
        init_reply: &[u8],
        max_chunks: usize,
    ) -> Result<Journal, JournalError> {
        if !is_sealed_against_shrinking(&file) {
            return Err(JournalError::NotSealed);
        }
        let too_big = init_request.len().max(init_reply.len());
        if too_big > MAX_INIT {
            return Err(JournalError::InitTooLarge(too_big));
        }
        file.set_len(HEADER_LEN as u64)?;
        let mut header = map(&file, 0, HEADER_LEN)?;
        layout::write_header(&mut header, init_request, init_reply, now_ms());
        layout::write_counter(&mut header, Counter::Incarnation, 1);
        Ok(Journal {
            file,
            inner: Mutex::new(Inner {
                regions: vec![header],
                chunks: Vec::new(),
                free: Default::default(),
                inodes: HashMap::new(),
                handles: HashMap::new(),
                backings: HashMap::new(),
                pages: HashMap::new(),
                max_chunks,
                full_warned: false,
            }),
        })
    }

    /// Takes over the journal of a live connection: reads back what it carries, frees the
    /// slots of records it does not trust, and counts one more incarnation.
    pub fn open(file: File) -> Result<(Journal, Restored), JournalError> {
        Journal::open_bounded(file, MAX_CHUNKS)
    }

    fn open_bounded(file: File, max_chunks: usize) -> Result<(Journal, Restored), JournalError> {
        if !is_sealed_against_shrinking(&file) {
            return Err(JournalError::NotSealed);
        }
        let size = file.metadata()?.len() as usize;
        if size < HEADER_LEN {
            return Err(JournalError::BadHeader);
        }
        let chunk_count = ((size - HEADER_LEN) / CHUNK_LEN).min(max_chunks);
        let region = map(&file, 0, HEADER_LEN + chunk_count * CHUNK_LEN)?;
        let header = layout::read_header(&region[..HEADER_LEN]).ok_or(JournalError::BadHeader)?;
        let scan = scan_chunks(&region, chunk_count);
        let (chunks, records, damaged) = (scan.chunks, scan.records, scan.damaged);
        let verdict = check::check(records, header.next_ino, header.next_fh);
        let incarnation = header.incarnation.saturating_add(1);
        let mut inner = Inner {
            regions: vec![region],
            chunks,
            free: Default::default(),
            inodes: HashMap::new(),
            handles: HashMap::new(),
            backings: HashMap::new(),
            pages: HashMap::new(),
            max_chunks,
            full_warned: false,
        };
        for pos in damaged.iter().chain(&verdict.freed) {
            layout::clear_slot(inner.slot(*pos));
        }
        inner.inodes.extend(verdict.inode_slots.iter().copied());
        inner.handles.extend(verdict.handle_slots.iter().copied());
        inner.backings.extend(verdict.backing_slots.iter().copied());
        inner.pages.extend(verdict.pages_slots.iter().copied());
        inner.reformat_damaged_chunks();
        inner.collect_free_slots();
        let carried = verdict.carried;
        inner.set_counter(Counter::NextIno, carried.next_ino);
        inner.set_counter(Counter::NextFh, carried.next_fh);
        inner.set_counter(Counter::Incarnation, incarnation);
        let restored = Restored {
            carried,
            init_request: header.init_request,
            init_reply: header.init_reply,
            incarnation,
            dropped: Dropped {
                damaged: damaged.len() + scan.damaged_in_bad_chunks,
                inconsistent: verdict.dropped.inconsistent,
            },
        };
        Ok((
            Journal {
                file,
                inner: Mutex::new(inner),
            },
            restored,
        ))
    }

    /// How many processes have served this connection, this one included.
    pub fn incarnation(&self) -> u64 {
        layout::read_counter(&self.inner.lock().regions[0], Counter::Incarnation)
    }

    /// The descriptor to hand to the fd store (or across an exec).
    pub fn descriptor(&self) -> io::Result<OwnedFd> {
        self.file.as_fd().try_clone_to_owned()
    }

    /// Records a new inode number the kernel is about to learn, with `lookups` lookups.
    pub fn record_inode(&self, ino: u64, parent: u64, kind: NodeKind, name: &str, lookups: u64) {
        if name.len() > MAX_NAME {
            tracing::debug!(ino, "name too long for the restart journal");
            return;
        }
        let record = Record::Inode {
            ino,
            parent,
            kind,
            name: name.to_string(),
        };
        let mut inner = self.inner.lock();
        if let Some(pos) = inner.add(&self.file, &record, lookups) {
            inner.inodes.insert(ino, pos);
        }
    }

    /// The kernel's lookup count of `ino` changed; at 0 the record goes.
    pub fn set_lookups(&self, ino: u64, lookups: u64) {
        let mut inner = self.inner.lock();
        let Some(pos) = inner.inodes.get(&ino).copied() else {
            return;
        };
        if lookups == 0 {
            inner.inodes.remove(&ino);
            inner.release(pos);
            if let Some(pages) = inner.pages.remove(&ino) {
                inner.release(pages);
            }
            inner.shrink_when_sparse();
        } else {
            layout::write_count(inner.slot(pos), lookups);
        }
    }

    /// Records an open handle the kernel is about to learn.
    pub fn record_handle(&self, handle: &HandleState) {
        let record = Record::Handle {
            fh: handle.fh,
            ino: handle.ino,
            version: handle.version,
            pinned: handle.pinned,
            backing: handle.backing,
        };
        let mut inner = self.inner.lock();
        if let Some(pos) = inner.add(&self.file, &record, 0) {
            inner.handles.insert(handle.fh, pos);
        }
    }

    pub fn forget_handle(&self, fh: u64) {
        let mut inner = self.inner.lock();
        if let Some(pos) = inner.handles.remove(&fh) {
            inner.release(pos);
        }
    }

    /// Records the version whose pages the kernel is about to keep for `ino` (read without
    /// an open). The new record is written before the old one goes: a process killed in
    /// between leaves two, and both are dropped when read back, which costs the pages.
    pub fn record_pages(&self, pages: &PagesState) {
        let record = Record::Pages {
            ino: pages.ino,
            version: pages.version,
        };
        let mut inner = self.inner.lock();
        let added = inner.add(&self.file, &record, 0);
        let old = match added {
            Some(pos) => inner.pages.insert(pages.ino, pos),
            None => inner.pages.remove(&pages.ino),
        };
        if let Some(old) = old {
            inner.release(old);
        }
    }

    /// Records a passthrough registration just made on the connection.
    pub fn record_backing(&self, id: u32) {
        let mut inner = self.inner.lock();
        if let Some(pos) = inner.add(&self.file, &Record::Backing { id }, 0) {
            inner.backings.insert(id, pos);
        }
    }

    pub fn forget_backing(&self, id: u32) {
        let mut inner = self.inner.lock();
        if let Some(pos) = inner.backings.remove(&id) {
            inner.release(pos);
        }
    }

    /// Inode numbers below `next` may be handed out from now on.
    pub fn reserve_inodes(&self, next: u64) {
        self.inner.lock().raise_counter(Counter::NextIno, next);
    }

    /// Handle numbers below `next` may be handed out from now on.
    pub fn reserve_handles(&self, next: u64) {
        self.inner.lock().raise_counter(Counter::NextFh, next);
    }

    /// A copy of the whole journal as it is now (for tests and diagnostics).
    pub fn image(&self) -> Vec<u8> {
        let inner = self.inner.lock();
        let mut image = inner.regions[0][..HEADER_LEN].to_vec();
        for chunk in 0..inner.chunks.len() {
            let map = &inner.chunks[chunk];
            image.extend_from_slice(&inner.regions[map.region][map.offset..map.offset + CHUNK_LEN]);
        }
        image
    }
}

impl AsFd for Journal {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// What the chunks of a journal hold, as read back.
struct Scan {
    chunks: Vec<ChunkMap>,
    records: Vec<(SlotPos, Record, u64)>,
    /// Slots whose write was cut short or that were damaged since.
    damaged: Vec<SlotPos>,
    /// Marked slots in chunks whose header is damaged (none of them is trusted).
    damaged_in_bad_chunks: usize,
}

/// Reads every slot of the first `chunk_count` chunks of a mapped journal.
fn scan_chunks(region: &[u8], chunk_count: usize) -> Scan {
    let mut scan = Scan {
        chunks: Vec::with_capacity(chunk_count),
        records: Vec::new(),
        damaged: Vec::new(),
        damaged_in_bad_chunks: 0,
    };
    for chunk in 0..chunk_count {
        let offset = HEADER_LEN + chunk * CHUNK_LEN;
        let bytes = &region[offset..offset + CHUNK_LEN];
        let slot_size = layout::chunk_slot_size(bytes);
        scan.chunks.push(ChunkMap {
            region: 0,
            offset,
            slot_size,
        });
        let Some(slot_size) = slot_size else {
            scan.damaged_in_bad_chunks += count_marked(bytes);
            continue;
        };
        for index in 0..layout::slots_per_chunk(slot_size) {
            let at = CHUNK_HEADER_LEN + index * slot_size;
            let pos = SlotPos {
                chunk: chunk as u32,
                index: index as u32,
            };
            match layout::read_slot(&bytes[at..at + slot_size]) {
                SlotContent::Free => {}
                SlotContent::Live(record, count) => scan.records.push((pos, record, count)),
                SlotContent::Damaged => scan.damaged.push(pos),
            }
        }
    }
    scan
}

/// Slots of a damaged chunk that still carry a marker (reported as dropped).
fn count_marked(chunk: &[u8]) -> usize {
    let slot_size = SLOT_SIZES[0];
    (0..layout::slots_per_chunk(slot_size))
        .filter(|i| {
            let at = CHUNK_HEADER_LEN + i * slot_size;
            !matches!(
                layout::read_slot(&chunk[at..at + slot_size]),
                SlotContent::Free
            )
        })
        .count()
}

impl Inner {
    fn header(&mut self) -> &mut [u8] {
        &mut self.regions[0][..HEADER_LEN]
    }

    fn set_counter(&mut self, counter: Counter, value: u64) {
        layout::write_counter(self.header(), counter, value);
    }

    fn raise_counter(&mut self, counter: Counter, value: u64) {
        let current = layout::read_counter(self.header(), counter);
        if value > current {
            self.set_counter(counter, value);
        }
    }

    fn slot(&mut self, pos: SlotPos) -> &mut [u8] {
        let map = &self.chunks[pos.chunk as usize];
        let size = map.slot_size.unwrap_or(SLOT_SIZES[0]);
        let at = map.offset + CHUNK_HEADER_LEN + pos.index as usize * size;
        let region = map.region;
        &mut self.regions[region][at..at + size]
    }

    /// Writes `record` into a free slot of the right size; `None` when the journal is full.
    fn add(&mut self, file: &File, record: &Record, count: u64) -> Option<SlotPos> {
        let class = layout::slot_class(record.encode().len())?;
        if self.free[class].is_empty() && !self.add_chunk(file, class) {
            if !self.full_warned {
                self.full_warned = true;
                tracing::warn!(
                    "the restart journal is full; inodes and files opened from now on answer \
                     ESTALE if the daemon restarts"
                );
            }
            return None;
        }
        let pos = self.free[class].pop()?;
        layout::write_slot(self.slot(pos), record, count);
        Some(pos)
    }

    /// Gives memory back once the kernel has forgotten most inodes, as the inode table does.
    fn shrink_when_sparse(&mut self) {
        crate::base::shrink_when_sparse(&mut self.inodes);
        crate::base::shrink_when_sparse(&mut self.pages);
    }

    fn release(&mut self, pos: SlotPos) {
        layout::clear_slot(self.slot(pos));
        let size = self.chunks[pos.chunk as usize]
            .slot_size
            .unwrap_or(SLOT_SIZES[0]);
        if let Some(class) = SLOT_SIZES.iter().position(|s| *s == size) {
            self.free[class].push(pos);
        }
    }

    /// Grows the journal by one chunk of slots of `class`.
    fn add_chunk(&mut self, file: &File, class: usize) -> bool {
        if self.chunks.len() >= self.max_chunks {
            return false;
        }
        let offset = HEADER_LEN + self.chunks.len() * CHUNK_LEN;
        let grown = (|| -> io::Result<MmapMut> {
            let end = (offset + CHUNK_LEN) as u64;
            if file.metadata()?.len() < end {
                file.set_len(end)?;
            }
            map(file, offset, CHUNK_LEN)
        })();
        let mut region = match grown {
            Ok(region) => region,
            Err(e) => {
                tracing::warn!("cannot grow the restart journal: {e}");
                return false;
            }
        };
        let slot_size = SLOT_SIZES[class];
        layout::format_chunk(&mut region, slot_size);
        let chunk = self.chunks.len() as u32;
        self.regions.push(region);
        self.chunks.push(ChunkMap {
            region: self.regions.len() - 1,
            offset: 0,
            slot_size: Some(slot_size),
        });
        let slots = layout::slots_per_chunk(slot_size) as u32;
        self.free[class].add_chunk(chunk, slots);
        true
    }

    /// A chunk whose header was damaged holds nothing trusted: it is formatted afresh for
    /// the smallest slots.
    fn reformat_damaged_chunks(&mut self) {
        for chunk in &mut self.chunks {
            if chunk.slot_size.is_none() {
                let bytes = &mut self.regions[chunk.region][chunk.offset..chunk.offset + CHUNK_LEN];
                layout::format_chunk(bytes, SLOT_SIZES[0]);
                chunk.slot_size = Some(SLOT_SIZES[0]);
            }
        }
    }

    fn collect_free_slots(&mut self) {
        let used: std::collections::HashSet<SlotPos> = self
            .inodes
            .values()
            .chain(self.handles.values())
            .chain(self.backings.values())
            .chain(self.pages.values())
            .copied()
            .collect();
        for (chunk, map) in self.chunks.iter().enumerate() {
            let Some(size) = map.slot_size else { continue };
            let Some(class) = SLOT_SIZES.iter().position(|s| *s == size) else {
                continue;
            };
            for index in (0..layout::slots_per_chunk(size) as u32).rev() {
                let pos = SlotPos {
                    chunk: chunk as u32,
                    index,
                };
                if !used.contains(&pos) {
                    self.free[class].push(pos);
                }
            }
        }
    }
}
