//! The presented file: synthetic bytes and source ranges tiling [0, size), with O(log n) lookup and a hostile-safe codec.

use std::ops::Range;

use bytes::Bytes;

use super::error::Mp4Error;
use super::Limits;

/// One stretch of the presented file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Bytes held in memory (the rewritten moov, an mdat header).
    Synthetic(Bytes),
    /// `len` bytes of the original file starting at `offset`.
    Source {
        /// Absolute offset in the original file.
        offset: u64,
        /// Length in bytes (never zero in a built [`Presented`]).
        len: u64,
    },
}

impl Segment {
    fn len(&self) -> u64 {
        match self {
            Segment::Synthetic(b) => b.len() as u64,
            Segment::Source { len, .. } => *len,
        }
    }
}

/// A piece of a requested range: either bytes to copy or a range of the original file to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// A slice of synthetic bytes (shares memory with the segment).
    Synthetic(Bytes),
    /// Absolute byte range of the original file.
    Source(Range<u64>),
}

/// A presented file as segments that tile `[0, size)`.
///
/// Fields are private so that the prefix sums used by [`Presented::map`] cannot go stale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presented {
    size: u64,
    segments: Vec<Segment>,
    starts: Vec<u64>,
}

impl Presented {
    /// Builds a view, dropping empty segments and merging adjacent contiguous source ranges.
    pub fn new(segments: Vec<Segment>) -> Result<Self, Mp4Error> {
        let mut merged: Vec<Segment> = Vec::with_capacity(segments.len());
        for seg in segments.into_iter().filter(|s| s.len() > 0) {
            if let Segment::Source { offset, len } = &seg {
                offset
                    .checked_add(*len)
                    .ok_or(Mp4Error::BadArgument("source range overflows".into()))?;
            }
            match (merged.last_mut(), &seg) {
                (Some(Segment::Source { offset: o, len: l }), Segment::Source { offset, len })
                    if o.checked_add(*l) == Some(*offset) =>
                {
                    *l += *len
                }
                _ => merged.push(seg),
            }
        }
        let mut starts = Vec::with_capacity(merged.len());
        let mut size = 0u64;
        for seg in &merged {
            starts.push(size);
            size = size
                .checked_add(seg.len())
                .ok_or(Mp4Error::BadArgument("presented size overflows".into()))?;
        }
        Ok(Presented {
            size,
            segments: merged,
            starts,
        })
    }

    /// Exact size of the presented file.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The segments, in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Bytes held in memory by synthetic segments.
    pub fn synthetic_len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Synthetic(b) => b.len(),
                Segment::Source { .. } => 0,
            })
            .sum()
    }

    /// Bytes this view holds in memory: its synthetic bytes and its segment table (a clip
    /// of a long FLV has two segments per tag, which outweigh its synthetic bytes).
    pub fn held_bytes(&self) -> u64 {
        let per_segment = std::mem::size_of::<Segment>() + std::mem::size_of::<u64>();
        (self.synthetic_len() + self.segments.len() * per_segment) as u64
    }

    /// End of the furthest source range: the original file must be at least this long.
    pub fn source_extent(&self) -> u64 {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Source { offset, len } => offset.checked_add(*len),
                Segment::Synthetic(_) => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// Pieces making up presented bytes `range` (clamped to the file), in order.
    pub fn map(&self, range: Range<u64>) -> Vec<Piece> {
        let end = range.end.min(self.size);
        let mut pos = range.start;
        let mut out = Vec::new();
        if pos >= end {
            return out;
        }
        let mut i = self.starts.partition_point(|&s| s <= pos).saturating_sub(1);
        while pos < end {
            let (Some(seg), Some(&start)) = (self.segments.get(i), self.starts.get(i)) else {
                break;
            };
            let from = pos - start;
            let to = (end - start).min(seg.len());
            if let Some(piece) = piece_of(seg, from..to) {
                out.push(piece);
            }
            pos = start + to;
            i += 1;
        }
        out
    }

    /// Compact, checksummed serialization for persistence.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.synthetic_len() + 24 * self.segments.len());
        out.extend_from_slice(MAGIC);
        put_varint(&mut out, self.size);
        put_varint(&mut out, self.segments.len() as u64);
        for seg in &self.segments {
            match seg {
                Segment::Synthetic(b) => {
                    out.push(TAG_SYNTHETIC);
                    put_varint(&mut out, b.len() as u64);
                    out.extend_from_slice(b);
                }
                Segment::Source { offset, len } => {
                    out.push(TAG_SOURCE);
                    put_varint(&mut out, *offset);
                    put_varint(&mut out, *len);
                }
            }
        }
        let sum = fnv1a(&out);
        out.extend_from_slice(&sum.to_be_bytes());
        out
    }

    /// Decodes [`Presented::encode`] output, treating the input as hostile.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Presented, Mp4Error> {
        let split = bytes
            .len()
            .checked_sub(4)
            .ok_or(Mp4Error::BadEncoding("too short"))?;
        let (body, sum) = bytes.split_at(split);
        if sum != fnv1a(body).to_be_bytes() {
            return Err(Mp4Error::BadEncoding("checksum mismatch"));
        }
        let mut cur = Cursor { data: body, pos: 0 };
        if cur.take(MAGIC.len())? != MAGIC {
            return Err(Mp4Error::BadEncoding("bad magic"));
        }
        let size = cur.varint()?;
        let count = cur.varint()?;
        if count > limits.max_segments as u64 {
            return Err(Mp4Error::BadEncoding("too many segments"));
        }
        // Each segment takes at least two bytes, so the input bounds the allocation too.
        let mut segments = Vec::with_capacity(super::bits::capacity(count, 2, body.len()));
        for _ in 0..count {
            segments.push(cur.segment()?);
        }
        if cur.pos != body.len() {
            return Err(Mp4Error::BadEncoding("trailing bytes"));
        }
        let presented = Presented::new(segments)
            .map_err(|_| Mp4Error::BadEncoding("segment ranges overflow"))?;
        if presented.size != size {
            return Err(Mp4Error::BadEncoding(
                "segments do not tile the declared size",
            ));
        }
        Ok(presented)
    }
}

fn piece_of(seg: &Segment, r: Range<u64>) -> Option<Piece> {
    if r.start >= r.end {
        return None;
    }
    match seg {
        Segment::Synthetic(b) => {
            let from = usize::try_from(r.start).ok()?;
            let to = usize::try_from(r.end).ok()?.min(b.len());
            (from < to).then(|| Piece::Synthetic(b.slice(from..to)))
        }
        Segment::Source { offset, .. } => Some(Piece::Source(
            offset.checked_add(r.start)?..offset.checked_add(r.end)?,
        )),
    }
}

const MAGIC: &[u8] = b"STMV\x01";
const TAG_SYNTHETIC: u8 = 0;
const TAG_SOURCE: u8 = 1;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// FNV-1a: a torn or bit-flipped record must not silently map to wrong source bytes.
fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Mp4Error> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(Mp4Error::BadEncoding("truncated"))?;
        let out = self
            .data
            .get(self.pos..end)
            .ok_or(Mp4Error::BadEncoding("truncated"))?;
        self.pos = end;
        Ok(out)
    }

    fn varint(&mut self) -> Result<u64, Mp4Error> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .take(1)?
                .first()
                .ok_or(Mp4Error::BadEncoding("truncated"))?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(Mp4Error::BadEncoding("varint overflows"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Mp4Error::BadEncoding("varint too long"))
    }

    fn segment(&mut self) -> Result<Segment, Mp4Error> {
        let tag = *self
            .take(1)?
            .first()
            .ok_or(Mp4Error::BadEncoding("truncated"))?;
        let seg = match tag {
            TAG_SYNTHETIC => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| Mp4Error::BadEncoding("truncated"))?;
                Segment::Synthetic(Bytes::copy_from_slice(self.take(len)?))
            }
            TAG_SOURCE => Segment::Source {
                offset: self.varint()?,
                len: self.varint()?,
            },
            _ => return Err(Mp4Error::BadEncoding("unknown segment tag")),
        };
        if seg.len() == 0 {
            return Err(Mp4Error::BadEncoding("empty segment"));
        }
        Ok(seg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Presented {
        Presented::new(vec![
            Segment::Source { offset: 0, len: 4 },
            Segment::Synthetic(Bytes::from_static(b"MOOV")),
            Segment::Source { offset: 10, len: 6 },
            Segment::Source { offset: 16, len: 2 },
        ])
        .unwrap()
    }

    #[test]
    fn map_crosses_segments_and_merges_sources() {
        let p = sample();
        assert_eq!(p.size(), 16);
        assert_eq!(p.segments().len(), 3);
        assert_eq!(
            p.map(2..9),
            vec![
                Piece::Source(2..4),
                Piece::Synthetic(Bytes::from_static(b"MOOV")),
                Piece::Source(10..11)
            ]
        );
        assert_eq!(p.map(15..100), vec![Piece::Source(17..18)]);
        assert!(p.map(16..20).is_empty());
    }

    #[test]
    fn codec_round_trips_and_rejects_tampering() {
        let p = sample();
        let enc = p.encode();
        assert_eq!(Presented::decode(&enc, &Limits::default()).unwrap(), p);
        let mut bad = enc.clone();
        bad[6] ^= 1;
        assert!(Presented::decode(&bad, &Limits::default()).is_err());
        assert!(Presented::decode(&enc[..enc.len() - 1], &Limits::default()).is_err());
    }
}
