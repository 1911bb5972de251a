//! The metadata journal of one object: a checksummed JSON header, then fixed-size records.
//!
//! Invariant (crash safety): a "block present" record is appended only after the block's data
//! has been made durable with `fdatasync`, and each record carries the block's CRC32C. After a
//! crash, a block is either listed with a checksum that its bytes match, or not listed at all;
//! torn records at the tail fail their own checksum and are ignored.

use std::io;

use serde::{Deserialize, Serialize};

use crate::base::ObjectKind;

const META_MAGIC: &[u8; 8] = b"STONFS01";
pub(super) const RECORD_LEN: usize = 16;
pub(super) const RECORD_BLOCK: u32 = 1;
pub(super) const RECORD_RENEWED: u32 = 2;

/// The durable description of one object version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetaHeader {
    pub site: String,
    pub path: String,
    pub kind: ObjectKind,
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// Seconds since the epoch when the origin last confirmed this version.
    pub fetched_at: u64,
    pub block_size: u64,
    /// Seconds the version stays fresh after each confirmation.
    #[serde(default = "default_ttl")]
    pub ttl: u64,
}

fn default_ttl() -> u64 {
    1800
}

pub(super) fn encode_header(header: &MetaHeader) -> io::Result<Vec<u8>> {
    let json = serde_json::to_vec(header).map_err(io::Error::other)?;
    let mut bytes = Vec::with_capacity(json.len() + 16);
    bytes.extend_from_slice(META_MAGIC);
    bytes.extend_from_slice(&(json.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
    bytes.extend_from_slice(&json);
    Ok(bytes)
}

pub(super) fn encode_record(kind: u32, block: u32, value: u32) -> [u8; RECORD_LEN] {
    let mut record = [0u8; RECORD_LEN];
    record[0..4].copy_from_slice(&kind.to_le_bytes());
    record[4..8].copy_from_slice(&block.to_le_bytes());
    record[8..12].copy_from_slice(&value.to_le_bytes());
    let check = crc32c::crc32c(&record[..12]);
    record[12..16].copy_from_slice(&check.to_le_bytes());
    record
}

fn word(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// Parses a metadata file. Returns `None` for anything damaged: the object is then dropped.
pub(super) fn decode_meta(bytes: &[u8]) -> Option<(MetaHeader, Vec<(u64, u32)>)> {
    if bytes.len() < 16 || &bytes[..8] != META_MAGIC {
        return None;
    }
    let json_len = word(bytes, 8) as usize;
    let json = bytes.get(16..16 + json_len)?;
    if crc32c::crc32c(json) != word(bytes, 12) {
        return None;
    }
    let mut header: MetaHeader = serde_json::from_slice(json).ok()?;
    let mut blocks = std::collections::BTreeMap::new();
    for record in bytes[16 + json_len..].chunks_exact(RECORD_LEN) {
        if crc32c::crc32c(&record[..12]) != word(record, 12) {
            break; // a torn tail: everything after it is unreliable
        }
        match word(record, 0) {
            RECORD_BLOCK => {
                blocks.insert(u64::from(word(record, 4)), word(record, 8));
            }
            // Records are in time order: the last confirmation (or expiry, 0) wins.
            RECORD_RENEWED => header.fetched_at = u64::from(word(record, 8)),
            _ => break,
        }
    }
    let block_count = header.size.div_ceil(header.block_size.max(1));
    blocks.retain(|block, _| *block < block_count);
    Some((header, blocks.into_iter().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> MetaHeader {
        MetaHeader {
            site: "s".into(),
            path: "/a".into(),
            kind: ObjectKind::File,
            size: 10_000,
            etag: Some("\"e\"".into()),
            last_modified: None,
            fetched_at: 100,
            block_size: 4096,
            ttl: 60,
        }
    }

    #[test]
    fn records_survive_and_torn_tails_are_ignored() {
        let mut bytes = encode_header(&header()).unwrap();
        bytes.extend_from_slice(&encode_record(RECORD_BLOCK, 0, 11));
        bytes.extend_from_slice(&encode_record(RECORD_BLOCK, 2, 22));
        bytes.extend_from_slice(&encode_record(RECORD_RENEWED, 0, 500));
        bytes.extend_from_slice(&encode_record(RECORD_BLOCK, 1, 33)[..9]);
        let (header, blocks) = decode_meta(&bytes).unwrap();
        assert_eq!(blocks, vec![(0, 11), (2, 22)]);
        assert_eq!(header.fetched_at, 500);
    }

    #[test]
    fn damaged_headers_are_rejected() {
        let mut bytes = encode_header(&header()).unwrap();
        bytes[20] ^= 1;
        assert!(decode_meta(&bytes).is_none());
        assert!(decode_meta(b"garbage").is_none());
    }

    #[test]
    fn blocks_beyond_the_size_are_dropped() {
        let mut bytes = encode_header(&header()).unwrap();
        bytes.extend_from_slice(&encode_record(RECORD_BLOCK, 3, 1));
        assert!(decode_meta(&bytes).unwrap().1.is_empty());
    }
}
