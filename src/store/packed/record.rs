//! The record format of packed segments: one self-identifying, checksummed object version.
//!
//! A record is a 32-byte header, then the key, the validators and the data, padded with zeros
//! to a multiple of 8 bytes (so offsets and lengths fit the index's packed location):
//!
//! ```text
//!  0  magic        u32  "SPK1"
//!  4  header_crc   u32  CRC32C of bytes 8..32, the key and the validators
//!  8  key_hash     u64  xxh3-64 of the key (never 0), what the index is keyed by
//! 16  data_crc     u32  CRC32C of the data
//! 20  data_len     u32
//! 24  key_len      u16
//! 26  valid_len    u16  length of the validators (opaque to the store)
//! 28  kind         u8   1 = object, 2 = tombstone (the key was removed)
//! 29  reserved     3 zero bytes
//! ```
//!
//! Invariant: [`decode`] accepts a record only if its magic, both checksums, its lengths and
//! its reserved bytes are all right, and never sizes anything from an unchecked length. A
//! record torn anywhere (a tail cut by a crash) fails one of the checks.

/// Bytes of the fixed header.
pub(super) const HEADER_LEN: usize = 32;
/// Longest key a record carries (a site and URL path).
pub const MAX_KEY_LEN: usize = 4096;
/// Longest validators a record carries (ETag, Last-Modified and whatever the cache adds).
pub const MAX_VALIDATORS_LEN: usize = 4096;
/// Longest whole record: the index keeps lengths in 16 bits of 8-byte units.
pub(super) const MAX_RECORD_LEN: usize = ((1 << 16) - 1) * 8;
/// Largest object data a record can carry with the longest key and validators.
pub const MAX_DATA_LEN: usize = MAX_RECORD_LEN - HEADER_LEN - MAX_KEY_LEN - MAX_VALIDATORS_LEN;

const MAGIC: u32 = u32::from_le_bytes(*b"SPK1");

/// What a record says about its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RecordKind {
    /// A version of the object: its validators and data follow the key.
    Object,
    /// The key was removed: any older record of it is dead.
    Tombstone,
}

impl RecordKind {
    fn code(self) -> u8 {
        match self {
            RecordKind::Object => 1,
            RecordKind::Tombstone => 2,
        }
    }

    fn from_code(code: u8) -> Option<RecordKind> {
        match code {
            1 => Some(RecordKind::Object),
            2 => Some(RecordKind::Tombstone),
            _ => None,
        }
    }
}

/// The hash the index files a key under; 0 is kept for "empty slot", so it never occurs.
pub(super) fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key).max(1)
}

/// Bytes a record of these lengths takes in a segment, padding included.
pub(super) fn record_len(key_len: usize, validators_len: usize, data_len: usize) -> usize {
    (HEADER_LEN + key_len + validators_len + data_len).div_ceil(8) * 8
}

/// Encodes a record. The caller has checked the lengths against the `MAX_*` limits.
pub(super) fn encode(kind: RecordKind, key: &[u8], validators: &[u8], data: &[u8]) -> Vec<u8> {
    let total = record_len(key.len(), validators.len(), data.len());
    let mut bytes = Vec::with_capacity(total);
    bytes.extend_from_slice(&MAGIC.to_le_bytes());
    bytes.extend_from_slice(&[0; 4]); // header_crc, filled below
    bytes.extend_from_slice(&key_hash(key).to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    bytes.extend_from_slice(&(data.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&(key.len() as u16).to_le_bytes());
    bytes.extend_from_slice(&(validators.len() as u16).to_le_bytes());
    bytes.extend_from_slice(&[kind.code(), 0, 0, 0]);
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(validators);
    let header_crc =
        crc32c::crc32c_append(crc32c::crc32c(&bytes[8..HEADER_LEN]), &bytes[HEADER_LEN..]);
    bytes[4..8].copy_from_slice(&header_crc.to_le_bytes());
    bytes.extend_from_slice(data);
    bytes.resize(total, 0);
    bytes
}

/// The fixed header's fields, read before the variable part is trusted.
#[derive(Debug, Clone, Copy)]
pub(super) struct Header {
    pub hash: u64,
    pub kind: RecordKind,
    pub key_len: usize,
    pub validators_len: usize,
    pub data_len: usize,
    header_crc: u32,
    data_crc: u32,
}

impl Header {
    /// The whole record's length, padding included.
    pub fn record_len(&self) -> usize {
        record_len(self.key_len, self.validators_len, self.data_len)
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Reads the fixed header; `None` when it cannot be one of ours (the lengths are bounded
/// here, so a caller may size a read from them).
pub(super) fn decode_header(bytes: &[u8]) -> Option<Header> {
    let fixed = bytes.get(..HEADER_LEN)?;
    if u32_at(fixed, 0) != MAGIC || fixed[29..32] != [0, 0, 0] {
        return None;
    }
    let header = Header {
        hash: u64_at(fixed, 8),
        kind: RecordKind::from_code(fixed[28])?,
        key_len: usize::from(u16_at(fixed, 24)),
        validators_len: usize::from(u16_at(fixed, 26)),
        data_len: u32_at(fixed, 20) as usize,
        header_crc: u32_at(fixed, 4),
        data_crc: u32_at(fixed, 16),
    };
    let bounded = header.hash != 0
        && header.key_len <= MAX_KEY_LEN
        && header.validators_len <= MAX_VALIDATORS_LEN
        && header.data_len <= MAX_DATA_LEN
        && header.record_len() <= MAX_RECORD_LEN;
    bounded.then_some(header)
}

/// A record that passed every check, borrowing its parts from the bytes it was read from.
#[derive(Debug)]
pub(super) struct Decoded<'a> {
    pub header: Header,
    pub key: &'a [u8],
    pub validators: &'a [u8],
    pub data: &'a [u8],
}

/// Decodes and fully checks the record at the start of `bytes`. `None` for anything torn,
/// damaged or not a record.
pub(super) fn decode(bytes: &[u8]) -> Option<Decoded<'_>> {
    let header = decode_header(bytes)?;
    let record = bytes.get(..header.record_len())?;
    let key_end = HEADER_LEN + header.key_len;
    let validators_end = key_end + header.validators_len;
    let data_end = validators_end + header.data_len;
    let header_crc = crc32c::crc32c_append(
        crc32c::crc32c(&record[8..HEADER_LEN]),
        &record[HEADER_LEN..validators_end],
    );
    if header_crc != header.header_crc
        || key_hash(&record[HEADER_LEN..key_end]) != header.hash
        || crc32c::crc32c(&record[validators_end..data_end]) != header.data_crc
        || record[data_end..].iter().any(|&b| b != 0)
    {
        return None;
    }
    if header.kind == RecordKind::Tombstone && (header.data_len != 0 || header.validators_len != 0)
    {
        return None;
    }
    Some(Decoded {
        header,
        key: &record[HEADER_LEN..key_end],
        validators: &record[key_end..validators_end],
        data: &record[validators_end..data_end],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips() {
        let bytes = encode(
            RecordKind::Object,
            b"/site/a.jpg",
            b"etag-1",
            b"hello world",
        );
        assert_eq!(bytes.len() % 8, 0);
        let decoded = decode(&bytes).expect("valid");
        assert_eq!(decoded.key, b"/site/a.jpg");
        assert_eq!(decoded.validators, b"etag-1");
        assert_eq!(decoded.data, b"hello world");
        assert_eq!(decoded.header.kind, RecordKind::Object);
        assert_eq!(decoded.header.hash, key_hash(b"/site/a.jpg"));
    }

    #[test]
    fn every_cut_of_a_record_is_rejected() {
        let bytes = encode(RecordKind::Object, b"/k", b"v", &[7; 100]);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let bytes = encode(RecordKind::Object, b"/key", b"val", b"0123456789abcdef0");
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[at] ^= 1 << bit;
                assert!(decode(&damaged).is_none(), "byte {at} bit {bit}");
            }
        }
    }

    #[test]
    fn tombstones_carry_only_their_key() {
        let bytes = encode(RecordKind::Tombstone, b"/gone", b"", b"");
        let decoded = decode(&bytes).expect("valid");
        assert_eq!(decoded.header.kind, RecordKind::Tombstone);
        assert_eq!(decoded.key, b"/gone");
    }

    #[test]
    fn lengths_beyond_the_limits_are_refused_before_any_read() {
        let mut bytes = encode(RecordKind::Object, b"/k", b"", b"x");
        bytes[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_header(&bytes).is_none());
    }
}
