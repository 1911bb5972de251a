//! Bounds-checked big-endian access, so that hostile input yields errors instead of panics.

use super::error::Mp4Error;

pub(crate) type FourCC = [u8; 4];

/// Reads a big-endian u32 at `at`, or `None` past the end.
pub(crate) fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    let end = at.checked_add(4)?;
    let b: [u8; 4] = data.get(at..end)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

/// Reads a big-endian u64 at `at`, or `None` past the end.
pub(crate) fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    let end = at.checked_add(8)?;
    let b: [u8; 8] = data.get(at..end)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// Reads a four-character code at `at`.
pub(crate) fn fourcc_at(data: &[u8], at: usize) -> Option<FourCC> {
    let end = at.checked_add(4)?;
    data.get(at..end)?.try_into().ok()
}

/// Printable form of a box type for error messages (hostile bytes are escaped).
pub(crate) fn show(kind: FourCC) -> String {
    kind.iter().map(|&b| b.escape_ascii().to_string()).collect()
}

/// Cursor over a payload; each read names what it was reading so truncation errors are useful.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8], what: &'static str) -> Self {
        Reader { data, pos: 0, what }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], Mp4Error> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(Mp4Error::Truncated(self.what))?;
        let out = self
            .data
            .get(self.pos..end)
            .ok_or(Mp4Error::Truncated(self.what))?;
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Mp4Error> {
        u32_at(self.bytes(4)?, 0).ok_or(Mp4Error::Truncated(self.what))
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        self.data.get(self.pos..).unwrap_or(&[])
    }
}

/// Appends a box header for a payload of `payload_len` bytes, 64-bit only when needed.
pub(crate) fn put_header(out: &mut Vec<u8>, kind: FourCC, payload_len: u64) {
    let small = payload_len.saturating_add(8);
    if let Ok(size) = u32::try_from(small) {
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&kind);
    } else {
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(&kind);
        out.extend_from_slice(&payload_len.saturating_add(16).to_be_bytes());
    }
}

/// Header length [`put_header`] will use for a payload of `payload_len` bytes.
pub(crate) fn header_len(payload_len: u64) -> u64 {
    if payload_len.saturating_add(8) <= u64::from(u32::MAX) {
        8
    } else {
        16
    }
}

/// Capacity for `count` entries of `width` bytes, never more than `available` bytes can hold.
pub(crate) fn capacity(count: u64, width: usize, available: usize) -> usize {
    let fit = available / width.max(1);
    usize::try_from(count).map_or(fit, |c| c.min(fit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_switches_to_64_bit_only_when_needed() {
        let mut v = Vec::new();
        put_header(&mut v, *b"mdat", 10);
        assert_eq!(v, [0, 0, 0, 18, b'm', b'd', b'a', b't']);
        let mut v = Vec::new();
        put_header(&mut v, *b"mdat", u64::from(u32::MAX));
        assert_eq!(v.len(), 16);
        assert_eq!(u64_at(&v, 8), Some(u64::from(u32::MAX) + 16));
        assert_eq!(header_len(u64::from(u32::MAX)), 16);
    }

    #[test]
    fn reader_reports_truncation() {
        let mut r = Reader::new(&[1, 2, 3], "x");
        assert!(r.u32().is_err());
        assert_eq!(show(*b"a\0b\xff"), "a\\x00b\\xff");
    }
}
