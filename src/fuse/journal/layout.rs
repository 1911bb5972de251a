//! Byte layout of the kernel-state journal: one header page, then chunks of fixed-size slots,
//! one record per slot. Everything is little-endian.
//!
//! A slot is written in this order: kind and length, payload, count, checksum, and last the
//! `LIVE` marker; it is freed by clearing the marker first. A process killed at any point
//! therefore leaves either no record, or a whole record whose checksum matches, or a marker
//! whose checksum fails (dropped when read back). The lookup count is updated in place and is
//! not covered by the checksum: it only decides how long an inode is kept, never which file
//! it stands for.

use std::sync::atomic::{compiler_fence, Ordering};

/// First bytes of the journal.
pub const MAGIC: [u8; 8] = *b"STONJRNL";
/// Layout version; another value is not read.
pub const FORMAT: u32 = 1;
pub const HEADER_LEN: usize = 4096;
pub const CHUNK_LEN: usize = 256 * 1024;
pub const CHUNK_HEADER_LEN: usize = 64;
/// Slot sizes: most records fit the first; names up to `MAX_NAME` fit the last.
pub const SLOT_SIZES: [usize; 3] = [128, 512, 4608];
/// Bytes of a slot before its payload.
pub const SLOT_HEAD_LEN: usize = 24;
/// Largest INIT request or reply kept (the kernel's are about 100 bytes).
pub const MAX_INIT: usize = 1024;
/// Longest name an inode record holds.
pub const MAX_NAME: usize = 4096;
/// Highest inode or handle number a journal may claim to have handed out.
pub const MAX_COUNTER: u64 = 1 << 56;

const CHUNK_MAGIC: [u8; 8] = *b"STONCHNK";
/// The marker of a committed slot ("STONLIVE").
const LIVE: u64 = u64::from_le_bytes(*b"STONLIVE");

// Header fields.
const H_FORMAT: usize = 8;
const H_CHUNK_LEN: usize = 12;
const H_REQUEST_LEN: usize = 16;
const H_REPLY_LEN: usize = 20;
const H_CREATED: usize = 24;
const H_CRC: usize = 32;
const H_NEXT_INO: usize = 64;
const H_NEXT_FH: usize = 72;
const H_INCARNATION: usize = 80;
const H_REQUEST: usize = 128;
const H_REPLY: usize = H_REQUEST + MAX_INIT;

// Slot fields.
const S_STATE: usize = 0;
const S_CRC: usize = 8;
const S_KIND: usize = 12;
const S_LEN: usize = 14;
const S_COUNT: usize = 16;

const KIND_INODE: u8 = 1;
const KIND_HANDLE: u8 = 2;
const KIND_BACKING: u8 = 3;

/// What an inode stands for, as far as the journal knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    File,
    Directory,
}

/// One record of kernel state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// An inode number the kernel holds: the name it was looked up by, under `parent`.
    Inode {
        ino: u64,
        parent: u64,
        kind: NodeKind,
        name: String,
    },
    /// An open file handle: the inode and the exact object version it opened, and the
    /// passthrough registration it reads through (0 for reads through the daemon).
    Handle {
        fh: u64,
        ino: u64,
        version: [u8; 16],
        /// Whether the version has validators, so that a later answer can prove it the same.
        pinned: bool,
        backing: u32,
    },
    /// A passthrough registration (backing id) on the connection.
    Backing { id: u32 },
}

impl Record {
    fn kind(&self) -> u8 {
        match self {
            Record::Inode { .. } => KIND_INODE,
            Record::Handle { .. } => KIND_HANDLE,
            Record::Backing { .. } => KIND_BACKING,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Record::Inode {
                ino,
                parent,
                kind,
                name,
            } => {
                out.extend_from_slice(&ino.to_le_bytes());
                out.extend_from_slice(&parent.to_le_bytes());
                out.push(match kind {
                    NodeKind::File => 1,
                    NodeKind::Directory => 2,
                });
                out.extend_from_slice(name.as_bytes());
            }
            Record::Handle {
                fh,
                ino,
                version,
                pinned,
                backing,
            } => {
                out.extend_from_slice(&fh.to_le_bytes());
                out.extend_from_slice(&ino.to_le_bytes());
                out.extend_from_slice(version);
                out.push(u8::from(*pinned));
                out.extend_from_slice(&backing.to_le_bytes());
            }
            Record::Backing { id } => out.extend_from_slice(&id.to_le_bytes()),
        }
        out
    }

    /// Parses a payload; anything that is not exactly one well-formed record is `None`.
    pub fn decode(kind: u8, payload: &[u8]) -> Option<Record> {
        match kind {
            KIND_INODE if payload.len() >= 17 => {
                let kind = match payload[16] {
                    1 => NodeKind::File,
                    2 => NodeKind::Directory,
                    _ => return None,
                };
                let name = std::str::from_utf8(&payload[17..]).ok()?.to_string();
                Some(Record::Inode {
                    ino: u64_at(payload, 0),
                    parent: u64_at(payload, 8),
                    kind,
                    name,
                })
            }
            KIND_HANDLE if payload.len() == 37 => {
                let mut version = [0u8; 16];
                version.copy_from_slice(&payload[16..32]);
                let pinned = match payload[32] {
                    0 => false,
                    1 => true,
                    _ => return None,
                };
                Some(Record::Handle {
                    fh: u64_at(payload, 0),
                    ino: u64_at(payload, 8),
                    version,
                    pinned,
                    backing: u32_at(payload, 33),
                })
            }
            KIND_BACKING if payload.len() == 4 => Some(Record::Backing {
                id: u32_at(payload, 0),
            }),
            _ => None,
        }
    }
}

pub fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

pub fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// The smallest slot size whose payload room holds `len` bytes.
pub fn slot_class(len: usize) -> Option<usize> {
    SLOT_SIZES
        .iter()
        .position(|size| len <= size - SLOT_HEAD_LEN)
}

/// Slots in one chunk of `slot_size`.
pub fn slots_per_chunk(slot_size: usize) -> usize {
    (CHUNK_LEN - CHUNK_HEADER_LEN) / slot_size
}

/// The static part of the header, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub init_request: Vec<u8>,
    pub init_reply: Vec<u8>,
    pub next_ino: u64,
    pub next_fh: u64,
    pub incarnation: u64,
}

/// Writes a new header into `page` (`HEADER_LEN` bytes). `created_ms` is for people
/// reading a journal, not for the code.
pub fn write_header(page: &mut [u8], request: &[u8], reply: &[u8], created_ms: u64) {
    page.fill(0);
    page[..8].copy_from_slice(&MAGIC);
    put_u32(page, H_FORMAT, FORMAT);
    put_u32(page, H_CHUNK_LEN, CHUNK_LEN as u32);
    put_u32(page, H_REQUEST_LEN, request.len() as u32);
    put_u32(page, H_REPLY_LEN, reply.len() as u32);
    put_u64(page, H_CREATED, created_ms);
    page[H_REQUEST..H_REQUEST + request.len()].copy_from_slice(request);
    page[H_REPLY..H_REPLY + reply.len()].copy_from_slice(reply);
    let crc = header_crc(page, request.len(), reply.len());
    put_u32(page, H_CRC, crc);
}

fn header_crc(page: &[u8], request_len: usize, reply_len: usize) -> u32 {
    let crc = crc32c::crc32c(&page[..H_CRC]);
    let crc = crc32c::crc32c_append(crc, &page[H_REQUEST..H_REQUEST + request_len]);
    crc32c::crc32c_append(crc, &page[H_REPLY..H_REPLY + reply_len])
}

/// Reads the header; `None` if anything in it is not what this version wrote.
pub fn read_header(page: &[u8]) -> Option<Header> {
    if page.len() < HEADER_LEN || page[..8] != MAGIC {
        return None;
    }
    let fits = |len: u32| (len as usize) <= MAX_INIT;
    let (request_len, reply_len) = (u32_at(page, H_REQUEST_LEN), u32_at(page, H_REPLY_LEN));
    let sane = u32_at(page, H_FORMAT) == FORMAT
        && u32_at(page, H_CHUNK_LEN) as usize == CHUNK_LEN
        && fits(request_len)
        && fits(reply_len);
    if !sane {
        return None;
    }
    let (request_len, reply_len) = (request_len as usize, reply_len as usize);
    if header_crc(page, request_len, reply_len) != u32_at(page, H_CRC) {
        return None;
    }
    let header = Header {
        init_request: page[H_REQUEST..H_REQUEST + request_len].to_vec(),
        init_reply: page[H_REPLY..H_REPLY + reply_len].to_vec(),
        next_ino: u64_at(page, H_NEXT_INO),
        next_fh: u64_at(page, H_NEXT_FH),
        incarnation: u64_at(page, H_INCARNATION),
    };
    let counters_sane = header.next_ino <= MAX_COUNTER
        && header.next_fh <= MAX_COUNTER
        && header.incarnation <= MAX_COUNTER;
    counters_sane.then_some(header)
}

/// The header's mutable counters.
#[derive(Debug, Clone, Copy)]
pub enum Counter {
    NextIno,
    NextFh,
    Incarnation,
}

fn counter_at(counter: Counter) -> usize {
    match counter {
        Counter::NextIno => H_NEXT_INO,
        Counter::NextFh => H_NEXT_FH,
        Counter::Incarnation => H_INCARNATION,
    }
}

pub fn write_counter(page: &mut [u8], counter: Counter, value: u64) {
    put_u64(page, counter_at(counter), value);
}

pub fn read_counter(page: &[u8], counter: Counter) -> u64 {
    u64_at(page, counter_at(counter))
}

/// Formats a chunk for slots of `slot_size`: header written, every slot free.
pub fn format_chunk(chunk: &mut [u8], slot_size: usize) {
    chunk.fill(0);
    chunk[..8].copy_from_slice(&CHUNK_MAGIC);
    put_u32(chunk, 8, slot_size as u32);
    let crc = crc32c::crc32c(&chunk[..12]);
    put_u32(chunk, 12, crc);
}

/// A chunk's slot size, if its header is intact and names a known size.
pub fn chunk_slot_size(chunk: &[u8]) -> Option<usize> {
    if chunk.len() < CHUNK_HEADER_LEN || chunk[..8] != CHUNK_MAGIC {
        return None;
    }
    if crc32c::crc32c(&chunk[..12]) != u32_at(chunk, 12) {
        return None;
    }
    let size = u32_at(chunk, 8) as usize;
    SLOT_SIZES.contains(&size).then_some(size)
}

/// What one slot holds when read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotContent {
    Free,
    /// A committed record with its count.
    Live(Record, u64),
    /// Marked or checksummed wrong: a write cut short, or damage.
    Damaged,
}

pub fn read_slot(slot: &[u8]) -> SlotContent {
    let state = u64_at(slot, S_STATE);
    if state == 0 {
        return SlotContent::Free;
    }
    if state != LIVE {
        return SlotContent::Damaged;
    }
    let len = usize::from(u16::from_le_bytes([slot[S_LEN], slot[S_LEN + 1]]));
    if len > slot.len() - SLOT_HEAD_LEN {
        return SlotContent::Damaged;
    }
    let payload = &slot[SLOT_HEAD_LEN..SLOT_HEAD_LEN + len];
    if slot_crc(slot, payload) != u32_at(slot, S_CRC) {
        return SlotContent::Damaged;
    }
    match Record::decode(slot[S_KIND], payload) {
        Some(record) => SlotContent::Live(record, u64_at(slot, S_COUNT)),
        None => SlotContent::Damaged,
    }
}

fn slot_crc(slot: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&slot[S_KIND..S_COUNT]), payload)
}

/// The stores that write `record` into a free slot, in the order they must happen. Kept as
/// data so that tests can stop the sequence anywhere, as a `kill -9` would.
pub fn slot_writes(slot_size: usize, record: &Record, count: u64) -> Vec<(usize, Vec<u8>)> {
    let payload = record.encode();
    debug_assert!(payload.len() <= slot_size - SLOT_HEAD_LEN);
    let mut head = [0u8; SLOT_HEAD_LEN];
    head[S_KIND] = record.kind();
    head[S_LEN..S_LEN + 2].copy_from_slice(&(payload.len() as u16).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&head[S_KIND..S_COUNT]), &payload);
    vec![
        (S_KIND, head[S_KIND..S_COUNT].to_vec()),
        (SLOT_HEAD_LEN, payload),
        (S_COUNT, count.to_le_bytes().to_vec()),
        (S_CRC, crc.to_le_bytes().to_vec()),
        (S_STATE, LIVE.to_le_bytes().to_vec()),
    ]
}

/// Writes a record into a free slot (see [`slot_writes`] for the order).
pub fn write_slot(slot: &mut [u8], record: &Record, count: u64) {
    for (at, bytes) in slot_writes(slot.len(), record, count) {
        if at == S_STATE {
            // Every earlier store must be in memory before the marker says the slot is whole.
            compiler_fence(Ordering::Release);
        }
        slot[at..at + bytes.len()].copy_from_slice(&bytes);
    }
}

/// Frees a slot: the marker goes first, so a cut-short free leaves no half record.
pub fn clear_slot(slot: &mut [u8]) {
    slot[S_STATE..S_STATE + 8].fill(0);
}

pub fn write_count(slot: &mut [u8], count: u64) {
    put_u64(slot, S_COUNT, count);
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}
