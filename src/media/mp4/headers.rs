//! Movie, track and media headers (mvhd/tkhd/mdhd), handler type and edit list: the fields trimming must read or rewrite.

use super::bits::{fourcc_at, u32_at, u64_at, FourCC};
use super::error::Mp4Error;
use super::tables::{full_box, Table};
use super::tree::Node;

/// Bytes between the modification time and the duration: timescale in mvhd/mdhd.
pub(crate) const MID_MVHD_MDHD: usize = 4;
/// Bytes between the modification time and the duration: track_ID and a reserved word in tkhd.
pub(crate) const MID_TKHD: usize = 8;

/// Width of the time fields for a header version (0: 32-bit, 1: 64-bit).
fn time_width(payload: &[u8], what: &'static str) -> Result<usize, Mp4Error> {
    match full_box(payload, what)?.version {
        0 => Ok(4),
        1 => Ok(8),
        v => Err(Mp4Error::Unsupported(format!("{what} version {v}"))),
    }
}

/// Timescale of an mvhd or mdhd payload; zero is rejected because every conversion divides by it.
pub(crate) fn timescale(payload: &[u8], what: &'static str) -> Result<u32, Mp4Error> {
    let at = 4 + 2 * time_width(payload, what)?;
    match u32_at(payload, at) {
        Some(0) => Err(Mp4Error::malformed(format!("{what} timescale is zero"))),
        Some(ts) => Ok(ts),
        None => Err(Mp4Error::Truncated(what)),
    }
}

/// Copy of a header payload with a new duration; a version-0 header is widened to version 1 if needed.
pub(crate) fn with_duration(
    payload: &[u8],
    mid: usize,
    duration: u64,
    what: &'static str,
) -> Result<Vec<u8>, Mp4Error> {
    let w = time_width(payload, what)?;
    let at = 4 + 2 * w + mid;
    if payload.len() < at + w {
        return Err(Mp4Error::Truncated(what));
    }
    let (head, tail) = payload.split_at(at);
    let rest = tail.get(w..).unwrap_or(&[]);
    let mut out = Vec::with_capacity(payload.len() + 12);
    match u32::try_from(duration) {
        Ok(d) if w == 4 => {
            out.extend_from_slice(head);
            out.extend_from_slice(&d.to_be_bytes());
        }
        _ if w == 8 => {
            out.extend_from_slice(head);
            out.extend_from_slice(&duration.to_be_bytes());
        }
        _ => widen(&mut out, head, duration),
    }
    out.extend_from_slice(rest);
    Ok(out)
}

/// Rewrites a version-0 prefix `[vf][ctime32][mtime32][mid]` as version 1 followed by a 64-bit duration.
fn widen(out: &mut Vec<u8>, head: &[u8], duration: u64) {
    let flags = head.get(1..4).unwrap_or(&[0, 0, 0]);
    out.push(1);
    out.extend_from_slice(flags);
    for at in [4, 8] {
        let t = u32_at(head, at).unwrap_or(0);
        out.extend_from_slice(&u64::from(t).to_be_bytes());
    }
    out.extend_from_slice(head.get(12..).unwrap_or(&[]));
    out.extend_from_slice(&duration.to_be_bytes());
}

/// Handler type of an hdlr payload (`vide`, `soun`, ...).
pub(crate) fn handler(payload: &[u8]) -> Result<FourCC, Mp4Error> {
    let body = full_box(payload, "hdlr")?.body;
    fourcc_at(body, 4).ok_or(Mp4Error::Truncated("hdlr"))
}

/// What a track's edit list means for trimming.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Edit {
    /// No edit list: media time is presentation time.
    None,
    /// One normal-rate edit starting at this media time (B-frame delay, AAC priming): kept.
    Shift(u64),
    /// Empty edits, several segments or other rates cannot be remapped honestly: dropped.
    Unmappable,
}

/// Reads the edit list of a trak.
pub(crate) fn edit(trak: &Node<'_>) -> Result<Edit, Mp4Error> {
    let Some(elst) = trak.path(&[b"edts", b"elst"]).and_then(Node::payload) else {
        return Ok(Edit::None);
    };
    let fb = full_box(elst, "elst")?;
    let wide = match fb.version {
        0 => false,
        1 => true,
        v => return Err(Mp4Error::Unsupported(format!("elst version {v}"))),
    };
    let table = Table::parse(fb.body, if wide { 20 } else { 12 }, "elst")?;
    match table.len() {
        0 => Ok(Edit::None),
        1 => one_edit(table.raw(0, 1)?, wide),
        _ => Ok(Edit::Unmappable),
    }
}

fn one_edit(entry: &[u8], wide: bool) -> Result<Edit, Mp4Error> {
    let (media_time, rate) = if wide {
        (u64_at(entry, 8).map(|t| t as i64), u32_at(entry, 16))
    } else {
        (
            u32_at(entry, 4).map(|t| i64::from(t as i32)),
            u32_at(entry, 8),
        )
    };
    let (Some(media_time), Some(rate)) = (media_time, rate) else {
        return Err(Mp4Error::Truncated("elst"));
    };
    match u64::try_from(media_time) {
        Ok(t) if rate == 0x0001_0000 => Ok(Edit::Shift(t)),
        _ => Ok(Edit::Unmappable),
    }
}

/// An edts box holding a single normal-rate edit.
pub(crate) fn edts(segment_duration: u64, media_time: u64) -> Node<'static> {
    let small = u32::try_from(segment_duration)
        .ok()
        .zip(i32::try_from(media_time).ok());
    let mut p = Vec::with_capacity(28);
    match small {
        Some((d, t)) => {
            p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
            p.extend_from_slice(&d.to_be_bytes());
            p.extend_from_slice(&t.to_be_bytes());
        }
        None => {
            p.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 1]);
            p.extend_from_slice(&segment_duration.to_be_bytes());
            p.extend_from_slice(&media_time.min(i64::MAX as u64).to_be_bytes());
        }
    }
    p.extend_from_slice(&0x0001_0000u32.to_be_bytes());
    Node::Container {
        kind: *b"edts",
        children: vec![Node::leaf(*b"elst", p)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_rewrite_widens_version_0() {
        // mdhd v0: vf, ctime, mtime, timescale, duration, language+pre_defined
        let mut p = vec![
            0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0x03, 0xe8, 0, 0, 0, 9, 0x55, 0xc4, 0, 0,
        ];
        assert_eq!(timescale(&p, "mdhd").unwrap(), 1000);
        let same = with_duration(&p, MID_MVHD_MDHD, 77, "mdhd").unwrap();
        assert_eq!(u32_at(&same, 16), Some(77));
        let wide = with_duration(&p, MID_MVHD_MDHD, 1 << 40, "mdhd").unwrap();
        assert_eq!(wide.len(), p.len() + 12);
        assert_eq!(timescale(&wide, "mdhd").unwrap(), 1000);
        assert_eq!(u64_at(&wide, 24), Some(1 << 40));
        assert_eq!(u64_at(&wide, 4), Some(1));
        p.truncate(18);
        assert!(with_duration(&p, MID_MVHD_MDHD, 1, "mdhd").is_err());
    }
}
