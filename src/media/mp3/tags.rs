//! ID3 tags around the audio: ID3v2 kept at a clip's front, ID3v1 left out at the end.

/// Bytes of an ID3v2 header, and of an ID3v1 tag.
pub const ID3V2_HEADER_LEN: usize = 10;
pub const ID3V1_LEN: u64 = 128;

/// The whole ID3v2 tag's length (header, body, footer) when `head` starts with one.
/// A syncsafe size cannot exceed 256 MiB, so it needs no further bound here; the caller
/// checks it against the file.
pub fn id3v2_len(head: &[u8]) -> Option<u64> {
    let header = head.get(..ID3V2_HEADER_LEN)?;
    if &header[..3] != b"ID3" || header[3] == 0xFF || header[4] == 0xFF {
        return None;
    }
    let size_bytes = &header[6..10];
    if size_bytes.iter().any(|b| b & 0x80 != 0) {
        return None;
    }
    let body = size_bytes
        .iter()
        .fold(0u64, |size, &b| (size << 7) | u64::from(b));
    let footer = if header[5] & 0x10 != 0 { 10 } else { 0 };
    Some(ID3V2_HEADER_LEN as u64 + body + footer)
}

/// Whether the last 128 bytes of a file are an ID3v1 tag.
pub fn is_id3v1(tail: &[u8]) -> bool {
    tail.len() as u64 == ID3V1_LEN && tail.starts_with(b"TAG")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_sizes_are_syncsafe() {
        assert_eq!(
            id3v2_len(b"ID3\x04\x00\x00\x00\x00\x02\x01rest"),
            Some(10 + 257)
        );
        assert_eq!(id3v2_len(b"ID3\x04\x00\x10\x00\x00\x00\x01"), Some(21));
        assert_eq!(id3v2_len(b"ID3\x04\x00\x00\x80\x00\x00\x01"), None);
        assert_eq!(id3v2_len(b"ID3\x04\x00\x00\x00"), None);
        assert_eq!(id3v2_len(b"\xFF\xFB\x90\x64\x00\x00\x00\x00\x00\x00"), None);
        let mut v1 = vec![0u8; 128];
        v1[..3].copy_from_slice(b"TAG");
        assert!(is_id3v1(&v1));
        assert!(!is_id3v1(&v1[1..]));
    }
}
