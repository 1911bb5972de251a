//! Byte layout of the kernel-state journal: one header page, then chunks of fixed-size slots,
//! one record per slot. Everything is little-endian.
//!
//! A slot is written in this order: kind and length, payload, count, checksum, and last the
//! `LIVE` marker; it is freed by clearing the marker first. A process killed at any point
//! therefore leaves either no record, or a whole record whose checksum matches, or a marker
//! whose checksum fails (dropped when read back). The lookup count is updated in place and is
//! not covered by the checksum: it only decides how long an inode is kept, never which file
//! it stands for.
//!
//! The layout is a contract between binary versions (a new binary reads what the old one
//! wrote): every field is declared once below, as a [`Field`] placed after the one before
//! it, and both the writer and the reader go through the declaration. The tests check a
//! written record byte by byte against offsets typed out by hand.

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

/// One field of the layout: where it starts and how many bytes it takes.
#[derive(Debug, Clone, Copy)]
struct Field {
    at: usize,
    len: usize,
}

impl Field {
    const fn at(at: usize, len: usize) -> Field {
        Field { at, len }
    }

    /// The field of `len` bytes right after this one.
    const fn then(self, len: usize) -> Field {
        Field::at(self.end(), len)
    }

    const fn end(self) -> usize {
        self.at + self.len
    }

    fn bytes(self, from: &[u8]) -> &[u8] {
        &from[self.at..self.end()]
    }

    fn put(self, into: &mut [u8], value: &[u8]) {
        debug_assert_eq!(value.len(), self.len);
        into[self.at..self.end()].copy_from_slice(value);
    }

    fn u64(self, from: &[u8]) -> u64 {
        u64_at(from, self.at)
    }

    fn u32(self, from: &[u8]) -> u32 {
        u32_at(from, self.at)
    }

    fn u16(self, from: &[u8]) -> u16 {
        u16::from_le_bytes([from[self.at], from[self.at + 1]])
    }
}

// The header page: fixed fields, counters, then the INIT exchange.
const H_MAGIC: Field = Field::at(0, 8);
const H_FORMAT: Field = H_MAGIC.then(4);
const H_CHUNK_LEN: Field = H_FORMAT.then(4);
const H_REQUEST_LEN: Field = H_CHUNK_LEN.then(4);
const H_REPLY_LEN: Field = H_REQUEST_LEN.then(4);
const H_CREATED: Field = H_REPLY_LEN.then(8);
/// Covers every byte before it, and the INIT request and reply.
const H_CRC: Field = H_CREATED.then(4);
const H_NEXT_INO: Field = Field::at(64, 8);
const H_NEXT_FH: Field = H_NEXT_INO.then(8);
const H_INCARNATION: Field = H_NEXT_FH.then(8);
const H_REQUEST: Field = Field::at(128, MAX_INIT);
const H_REPLY: Field = H_REQUEST.then(MAX_INIT);

// A chunk's header.
const C_MAGIC: Field = Field::at(0, 8);
const C_SLOT_SIZE: Field = C_MAGIC.then(4);
/// Covers the magic and the slot size.
const C_CRC: Field = C_SLOT_SIZE.then(4);

// A slot's head; the payload starts at `SLOT_HEAD_LEN`.
const S_STATE: Field = Field::at(0, 8);
/// Covers kind, length and payload (not the count, updated in place).
const S_CRC: Field = S_STATE.then(4);
const S_KIND: Field = S_CRC.then(1);
const S_LEN: Field = Field::at(S_KIND.at + 2, 2);
const S_COUNT: Field = S_LEN.then(8);
/// Kind, padding and length, as one store.
const S_KIND_AND_LEN: Field = Field::at(S_KIND.at, S_COUNT.at - S_KIND.at);

// Payloads.
const INODE_INO: Field = Field::at(0, 8);
const INODE_PARENT: Field = INODE_INO.then(8);
const INODE_KIND: Field = INODE_PARENT.then(1);
/// The name's UTF-8 bytes fill the rest of the payload.
const INODE_NAME_AT: usize = INODE_KIND.end();
const HANDLE_FH: Field = Field::at(0, 8);
const HANDLE_INO: Field = HANDLE_FH.then(8);
const HANDLE_VERSION: Field = HANDLE_INO.then(16);
const HANDLE_PINNED: Field = HANDLE_VERSION.then(1);
const HANDLE_BACKING: Field = HANDLE_PINNED.then(4);
const BACKING_ID: Field = Field::at(0, 4);
const PAGES_INO: Field = Field::at(0, 8);
const PAGES_VERSION: Field = PAGES_INO.then(16);

// The fields fit where they live, and the slot's head ends where its payload starts.
const _: () = assert!(H_CRC.end() <= H_NEXT_INO.at && H_INCARNATION.end() <= H_REQUEST.at);
const _: () = assert!(H_REPLY.end() <= HEADER_LEN && C_CRC.end() <= CHUNK_HEADER_LEN);
const _: () = assert!(S_COUNT.end() == SLOT_HEAD_LEN);

const KIND_INODE: u8 = 1;
const KIND_HANDLE: u8 = 2;
const KIND_BACKING: u8 = 3;
/// Added after format 1 was first written: a binary that predates it drops the record as
/// damaged, and then drops the inode's pages (see `fuse::fs::restore`), which is safe.
const KIND_PAGES: u8 = 4;

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
    /// The exact object version an inode opened without a message (`zero_message_opens`)
    /// was read at: the version of every page the kernel keeps for it. Only versions with
    /// validators are recorded, so a later answer can prove them the same.
    Pages { ino: u64, version: [u8; 16] },
}

impl Record {
    fn kind(&self) -> u8 {
        match self {
            Record::Inode { .. } => KIND_INODE,
            Record::Handle { .. } => KIND_HANDLE,
            Record::Backing { .. } => KIND_BACKING,
            Record::Pages { .. } => KIND_PAGES,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Record::Inode {
                ino,
                parent,
                kind,
                name,
            } => {
                let mut out = vec![0u8; INODE_NAME_AT + name.len()];
                INODE_INO.put(&mut out, &ino.to_le_bytes());
                INODE_PARENT.put(&mut out, &parent.to_le_bytes());
                INODE_KIND.put(&mut out, &[node_kind_byte(*kind)]);
                out[INODE_NAME_AT..].copy_from_slice(name.as_bytes());
                out
            }
            Record::Handle {
                fh,
                ino,
                version,
                pinned,
                backing,
            } => {
                let mut out = vec![0u8; HANDLE_BACKING.end()];
                HANDLE_FH.put(&mut out, &fh.to_le_bytes());
                HANDLE_INO.put(&mut out, &ino.to_le_bytes());
                HANDLE_VERSION.put(&mut out, version);
                HANDLE_PINNED.put(&mut out, &[u8::from(*pinned)]);
                HANDLE_BACKING.put(&mut out, &backing.to_le_bytes());
                out
            }
            Record::Backing { id } => {
                let mut out = vec![0u8; BACKING_ID.end()];
                BACKING_ID.put(&mut out, &id.to_le_bytes());
                out
            }
            Record::Pages { ino, version } => {
                let mut out = vec![0u8; PAGES_VERSION.end()];
                PAGES_INO.put(&mut out, &ino.to_le_bytes());
                PAGES_VERSION.put(&mut out, version);
                out
            }
        }
    }

    /// Parses a payload; anything that is not exactly one well-formed record is `None`.
    pub fn decode(kind: u8, payload: &[u8]) -> Option<Record> {
        match kind {
            KIND_INODE if payload.len() >= INODE_NAME_AT => {
                let kind = match INODE_KIND.bytes(payload)[0] {
                    1 => NodeKind::File,
                    2 => NodeKind::Directory,
                    _ => return None,
                };
                let name = std::str::from_utf8(&payload[INODE_NAME_AT..]).ok()?;
                Some(Record::Inode {
                    ino: INODE_INO.u64(payload),
                    parent: INODE_PARENT.u64(payload),
                    kind,
                    name: name.to_string(),
                })
            }
            KIND_HANDLE if payload.len() == HANDLE_BACKING.end() => {
                let pinned = match HANDLE_PINNED.bytes(payload)[0] {
                    0 => false,
                    1 => true,
                    _ => return None,
                };
                Some(Record::Handle {
                    fh: HANDLE_FH.u64(payload),
                    ino: HANDLE_INO.u64(payload),
                    version: HANDLE_VERSION.bytes(payload).try_into().ok()?,
                    pinned,
                    backing: HANDLE_BACKING.u32(payload),
                })
            }
            KIND_BACKING if payload.len() == BACKING_ID.end() => Some(Record::Backing {
                id: BACKING_ID.u32(payload),
            }),
            KIND_PAGES if payload.len() == PAGES_VERSION.end() => Some(Record::Pages {
                ino: PAGES_INO.u64(payload),
                version: PAGES_VERSION.bytes(payload).try_into().ok()?,
            }),
            _ => None,
        }
    }
}

fn node_kind_byte(kind: NodeKind) -> u8 {
    match kind {
        NodeKind::File => 1,
        NodeKind::Directory => 2,
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
    H_MAGIC.put(page, &MAGIC);
    H_FORMAT.put(page, &FORMAT.to_le_bytes());
    H_CHUNK_LEN.put(page, &(CHUNK_LEN as u32).to_le_bytes());
    H_REQUEST_LEN.put(page, &(request.len() as u32).to_le_bytes());
    H_REPLY_LEN.put(page, &(reply.len() as u32).to_le_bytes());
    H_CREATED.put(page, &created_ms.to_le_bytes());
    page[H_REQUEST.at..H_REQUEST.at + request.len()].copy_from_slice(request);
    page[H_REPLY.at..H_REPLY.at + reply.len()].copy_from_slice(reply);
    let crc = header_crc(page, request.len(), reply.len());
    H_CRC.put(page, &crc.to_le_bytes());
}

fn header_crc(page: &[u8], request_len: usize, reply_len: usize) -> u32 {
    let crc = crc32c::crc32c(&page[..H_CRC.at]);
    let crc = crc32c::crc32c_append(crc, &page[H_REQUEST.at..H_REQUEST.at + request_len]);
    crc32c::crc32c_append(crc, &page[H_REPLY.at..H_REPLY.at + reply_len])
}

/// Reads the header; `None` if anything in it is not what this version wrote.
pub fn read_header(page: &[u8]) -> Option<Header> {
    if page.len() < HEADER_LEN || H_MAGIC.bytes(page) != MAGIC {
        return None;
    }
    let fits = |len: u32| (len as usize) <= MAX_INIT;
    let (request_len, reply_len) = (H_REQUEST_LEN.u32(page), H_REPLY_LEN.u32(page));
    let sane = H_FORMAT.u32(page) == FORMAT
        && H_CHUNK_LEN.u32(page) as usize == CHUNK_LEN
        && fits(request_len)
        && fits(reply_len);
    if !sane {
        return None;
    }
    let (request_len, reply_len) = (request_len as usize, reply_len as usize);
    if header_crc(page, request_len, reply_len) != H_CRC.u32(page) {
        return None;
    }
    let header = Header {
        init_request: page[H_REQUEST.at..H_REQUEST.at + request_len].to_vec(),
        init_reply: page[H_REPLY.at..H_REPLY.at + reply_len].to_vec(),
        next_ino: H_NEXT_INO.u64(page),
        next_fh: H_NEXT_FH.u64(page),
        incarnation: H_INCARNATION.u64(page),
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

fn counter_field(counter: Counter) -> Field {
    match counter {
        Counter::NextIno => H_NEXT_INO,
        Counter::NextFh => H_NEXT_FH,
        Counter::Incarnation => H_INCARNATION,
    }
}

pub fn write_counter(page: &mut [u8], counter: Counter, value: u64) {
    counter_field(counter).put(page, &value.to_le_bytes());
}

pub fn read_counter(page: &[u8], counter: Counter) -> u64 {
    counter_field(counter).u64(page)
}

/// Formats a chunk for slots of `slot_size`: header written, every slot free.
pub fn format_chunk(chunk: &mut [u8], slot_size: usize) {
    chunk.fill(0);
    C_MAGIC.put(chunk, &CHUNK_MAGIC);
    C_SLOT_SIZE.put(chunk, &(slot_size as u32).to_le_bytes());
    let crc = crc32c::crc32c(&chunk[..C_CRC.at]);
    C_CRC.put(chunk, &crc.to_le_bytes());
}

/// A chunk's slot size, if its header is intact and names a known size.
pub fn chunk_slot_size(chunk: &[u8]) -> Option<usize> {
    if chunk.len() < CHUNK_HEADER_LEN || C_MAGIC.bytes(chunk) != CHUNK_MAGIC {
        return None;
    }
    if crc32c::crc32c(&chunk[..C_CRC.at]) != C_CRC.u32(chunk) {
        return None;
    }
    let size = C_SLOT_SIZE.u32(chunk) as usize;
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
    let state = S_STATE.u64(slot);
    if state == 0 {
        return SlotContent::Free;
    }
    if state != LIVE {
        return SlotContent::Damaged;
    }
    let len = usize::from(S_LEN.u16(slot));
    if len > slot.len() - SLOT_HEAD_LEN {
        return SlotContent::Damaged;
    }
    let payload = &slot[SLOT_HEAD_LEN..SLOT_HEAD_LEN + len];
    if slot_crc(slot, payload) != S_CRC.u32(slot) {
        return SlotContent::Damaged;
    }
    match Record::decode(S_KIND.bytes(slot)[0], payload) {
        Some(record) => SlotContent::Live(record, S_COUNT.u64(slot)),
        None => SlotContent::Damaged,
    }
}

fn slot_crc(slot: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(S_KIND_AND_LEN.bytes(slot)), payload)
}

/// The stores that write `record` into a free slot, in the order they must happen. Kept as
/// data so that tests can stop the sequence anywhere, as a `kill -9` would.
pub fn slot_writes(slot_size: usize, record: &Record, count: u64) -> Vec<(usize, Vec<u8>)> {
    let payload = record.encode();
    debug_assert!(payload.len() <= slot_size - SLOT_HEAD_LEN);
    let mut head = [0u8; SLOT_HEAD_LEN];
    S_KIND.put(&mut head, &[record.kind()]);
    S_LEN.put(&mut head, &(payload.len() as u16).to_le_bytes());
    let crc = slot_crc(&head, &payload);
    vec![
        (S_KIND_AND_LEN.at, S_KIND_AND_LEN.bytes(&head).to_vec()),
        (SLOT_HEAD_LEN, payload),
        (S_COUNT.at, count.to_le_bytes().to_vec()),
        (S_CRC.at, crc.to_le_bytes().to_vec()),
        (S_STATE.at, LIVE.to_le_bytes().to_vec()),
    ]
}

/// Writes a record into a free slot (see [`slot_writes`] for the order).
pub fn write_slot(slot: &mut [u8], record: &Record, count: u64) {
    for (at, bytes) in slot_writes(slot.len(), record, count) {
        if at == S_STATE.at {
            // Every earlier store must be in memory before the marker says the slot is whole.
            compiler_fence(Ordering::Release);
        }
        slot[at..at + bytes.len()].copy_from_slice(&bytes);
    }
}

/// Frees a slot: the marker goes first, so a cut-short free leaves no half record.
pub fn clear_slot(slot: &mut [u8]) {
    slot[S_STATE.at..S_STATE.end()].fill(0);
}

pub fn write_count(slot: &mut [u8], count: u64) {
    S_COUNT.put(slot, &count.to_le_bytes());
}

/// The layout as a contract: offsets typed out here, by hand, once more, so that moving a
/// declaration above fails a test instead of silently changing what old journals mean.
#[cfg(test)]
mod contract {
    use super::*;

    fn le64(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
    }

    fn le32(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
    }

    /// Writes `record` into a slot as this version does; checks the slot's head by hand.
    fn written(record: &Record, count: u64) -> Vec<u8> {
        let mut slot = vec![0u8; SLOT_SIZES[0]];
        write_slot(&mut slot, record, count);
        assert_eq!(&slot[0..8], b"STONLIVE", "the marker");
        assert_eq!(slot[12], record.kind(), "the kind");
        let len = u16::from_le_bytes([slot[14], slot[15]]) as usize;
        assert_eq!(le64(&slot, 16), count, "the count");
        let crc = crc32c::crc32c_append(crc32c::crc32c(&slot[12..16]), &slot[24..24 + len]);
        assert_eq!(le32(&slot, 8), crc, "the checksum");
        assert_eq!(read_slot(&slot), SlotContent::Live(record.clone(), count));
        slot[24..24 + len].to_vec()
    }

    #[test]
    fn an_inode_record_is_read_back_field_by_field() {
        let record = Record::Inode {
            ino: 0x1122_3344_5566_7788,
            parent: 7,
            kind: NodeKind::Directory,
            name: "dir é".to_string(),
        };
        let payload = written(&record, 3);
        assert_eq!(payload.len(), 17 + "dir é".len());
        assert_eq!(le64(&payload, 0), 0x1122_3344_5566_7788, "ino");
        assert_eq!(le64(&payload, 8), 7, "parent");
        assert_eq!(payload[16], 2, "kind: 1 file, 2 directory");
        assert_eq!(&payload[17..], "dir é".as_bytes(), "name");
    }

    #[test]
    fn a_handle_record_is_read_back_field_by_field() {
        let version: [u8; 16] = std::array::from_fn(|i| i as u8 + 1);
        let record = Record::Handle {
            fh: 42,
            ino: 9,
            version,
            pinned: true,
            backing: 0xA1B2_C3D4,
        };
        let payload = written(&record, 1);
        assert_eq!(payload.len(), 37);
        assert_eq!(le64(&payload, 0), 42, "fh");
        assert_eq!(le64(&payload, 8), 9, "ino");
        assert_eq!(&payload[16..32], &version, "version");
        assert_eq!(payload[32], 1, "pinned");
        assert_eq!(le32(&payload, 33), 0xA1B2_C3D4, "backing");
    }

    #[test]
    fn a_backing_record_is_read_back_field_by_field() {
        let payload = written(&Record::Backing { id: 77 }, 0);
        assert_eq!(payload, 77u32.to_le_bytes());
    }

    #[test]
    fn a_pages_record_is_read_back_field_by_field() {
        let version: [u8; 16] = std::array::from_fn(|i| 0xF0 - i as u8);
        let payload = written(&Record::Pages { ino: 12, version }, 0);
        assert_eq!(payload.len(), 24);
        assert_eq!(le64(&payload, 0), 12, "ino");
        assert_eq!(&payload[8..24], &version, "version");
    }

    #[test]
    fn the_header_is_read_back_field_by_field() {
        let mut page = vec![0u8; HEADER_LEN];
        write_header(&mut page, b"request", b"reply!", 1234);
        write_counter(&mut page, Counter::NextIno, 5);
        write_counter(&mut page, Counter::NextFh, 6);
        write_counter(&mut page, Counter::Incarnation, 2);
        assert_eq!(&page[0..8], b"STONJRNL");
        assert_eq!(le32(&page, 8), 1, "format");
        assert_eq!(le32(&page, 12), 256 * 1024, "chunk length");
        assert_eq!((le32(&page, 16), le32(&page, 20)), (7, 6), "INIT lengths");
        assert_eq!(le64(&page, 24), 1234, "created");
        let crc = crc32c::crc32c(&page[..32]);
        let crc = crc32c::crc32c_append(crc, &page[128..135]);
        let crc = crc32c::crc32c_append(crc, &page[1152..1158]);
        assert_eq!(le32(&page, 32), crc, "checksum");
        assert_eq!(
            (le64(&page, 64), le64(&page, 72), le64(&page, 80)),
            (5, 6, 2)
        );
        assert_eq!(&page[128..135], b"request");
        assert_eq!(&page[1152..1158], b"reply!");
        let header = read_header(&page).expect("reads back");
        assert_eq!(header.init_request, b"request");
        assert_eq!(header.init_reply, b"reply!");
        assert_eq!(
            (header.next_ino, header.next_fh, header.incarnation),
            (5, 6, 2)
        );
    }

    #[test]
    fn a_chunk_header_is_read_back_field_by_field() {
        let mut chunk = vec![0u8; CHUNK_HEADER_LEN];
        format_chunk(&mut chunk, 512);
        assert_eq!(&chunk[0..8], b"STONCHNK");
        assert_eq!(le32(&chunk, 8), 512);
        assert_eq!(le32(&chunk, 12), crc32c::crc32c(&chunk[..12]));
        assert_eq!(chunk_slot_size(&chunk), Some(512));
    }
}
