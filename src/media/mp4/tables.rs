//! Read-only views of the sample tables, validated against the bytes present and never expanded per sample.

use super::bits::{u32_at, u64_at, Reader};
use super::error::Mp4Error;

/// Version and flags of a full box, and what follows them.
pub(crate) struct FullBox<'a> {
    pub version: u8,
    pub body: &'a [u8],
}

pub(crate) fn full_box<'a>(payload: &'a [u8], what: &'static str) -> Result<FullBox<'a>, Mp4Error> {
    let mut r = Reader::new(payload, what);
    let vf = r.u32()?;
    Ok(FullBox {
        version: (vf >> 24) as u8,
        body: r.rest(),
    })
}

/// A counted table of fixed-width entries whose count is checked against the bytes present.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Table<'a> {
    entries: &'a [u8],
    width: usize,
    len: u32,
}

impl<'a> Table<'a> {
    /// `body` starts with the u32 entry count.
    pub(crate) fn parse(
        body: &'a [u8],
        width: usize,
        what: &'static str,
    ) -> Result<Self, Mp4Error> {
        let mut r = Reader::new(body, what);
        let len = r.u32()?;
        let bytes = (len as usize)
            .checked_mul(width)
            .ok_or(Mp4Error::Truncated(what))?;
        let entries = r.bytes(bytes)?;
        Ok(Table {
            entries,
            width,
            len,
        })
    }

    pub(crate) fn len(&self) -> u32 {
        self.len
    }

    /// Field `field` (u32 units) of entry `i`.
    pub(crate) fn u32(&self, i: u32, field: usize) -> Result<u32, Mp4Error> {
        let at = (i as usize)
            .checked_mul(self.width)
            .and_then(|a| a.checked_add(field * 4));
        at.and_then(|a| u32_at(self.entries, a))
            .ok_or_else(|| Mp4Error::malformed("table index out of range"))
    }

    pub(crate) fn u64(&self, i: u32) -> Result<u64, Mp4Error> {
        (i as usize)
            .checked_mul(self.width)
            .and_then(|a| u64_at(self.entries, a))
            .ok_or_else(|| Mp4Error::malformed("table index out of range"))
    }

    /// Raw bytes of entries `[from, to)`.
    pub(crate) fn raw(&self, from: u32, to: u32) -> Result<&'a [u8], Mp4Error> {
        let a = (from as usize).checked_mul(self.width);
        let b = (to as usize).checked_mul(self.width);
        a.zip(b)
            .and_then(|(a, b)| self.entries.get(a..b))
            .ok_or_else(|| Mp4Error::malformed("table range out of range"))
    }
}

/// Sample sizes (stsz): one size for all, or one entry per sample.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Sizes<'a> {
    Fixed { size: u32, count: u32 },
    PerSample(Table<'a>),
}

impl<'a> Sizes<'a> {
    pub(crate) fn parse(payload: &'a [u8]) -> Result<Self, Mp4Error> {
        let body = full_box(payload, "stsz")?.body;
        let mut r = Reader::new(body, "stsz");
        let size = r.u32()?;
        if size != 0 {
            return Ok(Sizes::Fixed {
                size,
                count: r.u32()?,
            });
        }
        Ok(Sizes::PerSample(Table::parse(r.rest(), 4, "stsz")?))
    }

    pub(crate) fn count(&self) -> u32 {
        match self {
            Sizes::Fixed { count, .. } => *count,
            Sizes::PerSample(t) => t.len(),
        }
    }

    /// Total bytes of samples `[from, to)`; loops only over entries that exist in the file.
    pub(crate) fn sum(&self, from: u32, to: u32) -> Result<u64, Mp4Error> {
        match self {
            Sizes::Fixed { size, .. } => Ok(u64::from(to.saturating_sub(from)) * u64::from(*size)),
            Sizes::PerSample(t) => (from..to).try_fold(0u64, |acc, i| {
                acc.checked_add(u64::from(t.u32(i, 0)?))
                    .ok_or_else(|| Mp4Error::malformed("sample sizes overflow"))
            }),
        }
    }
}

/// Chunk offsets from stco (32-bit) or co64.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChunkOffsets<'a> {
    table: Table<'a>,
    wide: bool,
}

impl<'a> ChunkOffsets<'a> {
    pub(crate) fn parse(payload: &'a [u8], wide: bool) -> Result<Self, Mp4Error> {
        let what = if wide { "co64" } else { "stco" };
        let body = full_box(payload, what)?.body;
        let table = Table::parse(body, if wide { 8 } else { 4 }, what)?;
        Ok(ChunkOffsets { table, wide })
    }

    pub(crate) fn len(&self) -> u32 {
        self.table.len()
    }

    pub(crate) fn get(&self, i: u32) -> Result<u64, Mp4Error> {
        if self.wide {
            self.table.u64(i)
        } else {
            self.table.u32(i, 0).map(u64::from)
        }
    }
}

/// Run-length (count, value) entries of stts, ctts and sbgp clipped to samples `[from, to)`.
pub(crate) fn clip_runs(
    table: &Table<'_>,
    from: u32,
    to: u32,
) -> Result<Vec<(u32, u32)>, Mp4Error> {
    let mut out = Vec::with_capacity(super::bits::capacity(u64::from(table.len()), 1, 1 << 16));
    let mut first = 0u64;
    for i in 0..table.len() {
        let (count, value) = (table.u32(i, 0)?, table.u32(i, 1)?);
        let end = first + u64::from(count);
        let lo = first.max(u64::from(from));
        let hi = end.min(u64::from(to));
        if lo < hi {
            out.push(((hi - lo) as u32, value));
        }
        if end >= u64::from(to) {
            break;
        }
        first = end;
    }
    Ok(out)
}

/// Decode times from stts, limited to the first `samples` samples.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeline<'a> {
    stts: Table<'a>,
    samples: u32,
}

/// One stts run positioned on the timeline.
struct Run {
    first: u64,
    count: u64,
    dts: u64,
    delta: u64,
    end: u64,
}

impl<'a> Timeline<'a> {
    /// Fails unless stts covers every sample, so later lookups cannot run off its end.
    pub(crate) fn new(stts: Table<'a>, samples: u32) -> Result<Self, Mp4Error> {
        let t = Timeline { stts, samples };
        let mut covered = 0u64;
        t.walk(|r| {
            covered = r.first + r.count;
            false
        })?;
        if covered < u64::from(samples) {
            return Err(Mp4Error::malformed(format!(
                "stts covers {covered} of {samples} samples"
            )));
        }
        Ok(t)
    }

    /// Visits runs (clipped to `samples`) until `f` returns true.
    fn walk(&self, mut f: impl FnMut(&Run) -> bool) -> Result<(), Mp4Error> {
        let (mut first, mut dts) = (0u64, 0u64);
        for i in 0..self.stts.len() {
            let left = u64::from(self.samples).saturating_sub(first);
            if left == 0 {
                break;
            }
            let count = u64::from(self.stts.u32(i, 0)?).min(left);
            let delta = u64::from(self.stts.u32(i, 1)?);
            let end = dts
                .checked_add(count * delta)
                .ok_or_else(|| Mp4Error::malformed("stts total duration overflows"))?;
            let run = Run {
                first,
                count,
                dts,
                delta,
                end,
            };
            if f(&run) {
                return Ok(());
            }
            first += count;
            dts = end;
        }
        Ok(())
    }

    /// End of the last sample.
    pub(crate) fn duration(&self) -> Result<u64, Mp4Error> {
        let mut end = 0;
        self.walk(|r| {
            end = r.end;
            false
        })?;
        Ok(end)
    }

    /// The sample whose span contains `t` (the last one with dts <= t), or `None` past the end.
    pub(crate) fn sample_at(&self, t: u64) -> Result<Option<u32>, Mp4Error> {
        let mut found = None;
        self.walk(|r| {
            if t >= r.dts && t < r.end {
                found = Some((r.first + (t - r.dts) / r.delta) as u32);
                return true;
            }
            false
        })?;
        Ok(found)
    }

    /// Decode time of sample `i`.
    pub(crate) fn dts(&self, i: u32) -> Result<u64, Mp4Error> {
        let mut out = None;
        self.walk(|r| {
            let i = u64::from(i);
            if i < r.first + r.count {
                out = Some(r.dts + (i - r.first) * r.delta);
                return true;
            }
            false
        })?;
        out.ok_or_else(|| Mp4Error::malformed("sample beyond stts"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stts(runs: &[(u32, u32)]) -> Vec<u8> {
        let mut v = (runs.len() as u32).to_be_bytes().to_vec();
        for (c, d) in runs {
            v.extend_from_slice(&c.to_be_bytes());
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn timeline_lookups() {
        let raw = stts(&[(3, 10), (2, 0), (2, 5)]);
        let t = Timeline::new(Table::parse(&raw, 8, "stts").unwrap(), 7).unwrap();
        assert_eq!(t.duration().unwrap(), 40);
        assert_eq!(t.sample_at(0).unwrap(), Some(0));
        assert_eq!(t.sample_at(29).unwrap(), Some(2));
        assert_eq!(t.sample_at(30).unwrap(), Some(5));
        assert_eq!(t.sample_at(40).unwrap(), None);
        assert_eq!(t.dts(6).unwrap(), 35);
        assert!(Timeline::new(Table::parse(&raw, 8, "stts").unwrap(), 8).is_err());
    }

    #[test]
    fn runs_clip() {
        let raw = stts(&[(3, 10), (2, 0), (2, 5)]);
        let t = Table::parse(&raw, 8, "stts").unwrap();
        assert_eq!(clip_runs(&t, 2, 6).unwrap(), vec![(1, 10), (2, 0), (1, 5)]);
        assert!(Table::parse(&raw[..20], 8, "stts").is_err());
    }
}
