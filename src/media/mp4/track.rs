//! One trak's timing and sample tables, parsed as views into the moov bytes and checked for consistency.

use super::bits::{show, FourCC};
use super::error::Mp4Error;
use super::headers::{edit, handler, timescale, Edit};
use super::tables::{full_box, ChunkOffsets, Sizes, Table, Timeline};
use super::tree::Node;
use super::Limits;

/// stbl boxes that mean the sample data cannot be cut by this module (compact sizes, encryption).
const REFUSED: [FourCC; 3] = [*b"stz2", *b"saiz", *b"saio"];

/// A track ready to be cut.
pub(crate) struct Track<'t> {
    pub timescale: u32,
    pub handler: FourCC,
    pub samples: u32,
    pub stts: Table<'t>,
    pub timeline: Timeline<'t>,
    /// ctts version (0 or 1) and entries.
    pub ctts: Option<(u8, Table<'t>)>,
    /// Absent means every sample is a sync sample.
    pub stss: Option<Table<'t>>,
    pub stsc: Table<'t>,
    pub sizes: Sizes<'t>,
    pub chunks: ChunkOffsets<'t>,
    pub edit: Edit,
}

fn leaf<'t>(node: &'t Node<'_>, kind: &FourCC) -> Result<&'t [u8], Mp4Error> {
    node.child(kind)
        .and_then(Node::payload)
        .ok_or_else(|| Mp4Error::malformed(format!("missing {}", show(*kind))))
}

fn table<'t>(payload: &'t [u8], width: usize, what: &'static str) -> Result<Table<'t>, Mp4Error> {
    Table::parse(full_box(payload, what)?.body, width, what)
}

/// Parses a trak node.
pub(crate) fn parse_track<'t>(trak: &'t Node<'_>, limits: &Limits) -> Result<Track<'t>, Mp4Error> {
    let mdia = trak
        .child(b"mdia")
        .ok_or_else(|| Mp4Error::malformed("trak without mdia"))?;
    let stbl = mdia
        .path(&[b"minf", b"stbl"])
        .ok_or_else(|| Mp4Error::malformed("trak without minf/stbl"))?;
    if let Some(k) = REFUSED.iter().find(|k| stbl.child(k).is_some()) {
        return Err(Mp4Error::Unsupported(format!("'{}' in stbl", show(*k))));
    }
    let sizes = Sizes::parse(leaf(stbl, b"stsz")?)?;
    let samples = sizes.count();
    if samples > limits.max_samples {
        return Err(Mp4Error::TooLarge {
            what: "sample count",
            value: u64::from(samples),
            limit: u64::from(limits.max_samples),
        });
    }
    let stts = table(leaf(stbl, b"stts")?, 8, "stts")?;
    let track = Track {
        timescale: timescale(leaf(mdia, b"mdhd")?, "mdhd")?,
        handler: handler(leaf(mdia, b"hdlr")?)?,
        samples,
        stts,
        timeline: Timeline::new(stts, samples)?,
        ctts: stbl
            .child(b"ctts")
            .and_then(Node::payload)
            .map(ctts)
            .transpose()?,
        stss: stbl
            .child(b"stss")
            .and_then(Node::payload)
            .map(|p| table(p, 4, "stss"))
            .transpose()?,
        stsc: table(leaf(stbl, b"stsc")?, 12, "stsc")?,
        sizes,
        chunks: chunk_offsets(stbl)?,
        edit: edit(trak)?,
    };
    check_chunk_coverage(&track)?;
    Ok(track)
}

fn ctts(payload: &[u8]) -> Result<(u8, Table<'_>), Mp4Error> {
    let fb = full_box(payload, "ctts")?;
    Ok((fb.version, Table::parse(fb.body, 8, "ctts")?))
}

fn chunk_offsets<'t>(stbl: &'t Node<'_>) -> Result<ChunkOffsets<'t>, Mp4Error> {
    let mut found = stbl
        .children()
        .iter()
        .filter(|c| &c.kind() == b"stco" || &c.kind() == b"co64");
    let (Some(node), None) = (found.next(), found.next()) else {
        return Err(Mp4Error::malformed("stbl needs exactly one stco or co64"));
    };
    ChunkOffsets::parse(node.payload().unwrap_or(&[]), &node.kind() == b"co64")
}

/// stsc must start at chunk 1, increase, and with stco describe at least every sample.
fn check_chunk_coverage(t: &Track<'_>) -> Result<(), Mp4Error> {
    let chunks = u64::from(t.chunks.len());
    let mut covered = 0u64;
    let mut prev = 0u64;
    for e in 0..t.stsc.len() {
        let first = u64::from(t.stsc.u32(e, 0)?);
        let spc = u64::from(t.stsc.u32(e, 1)?);
        let bad_start = e == 0 && first != 1;
        if bad_start || first <= prev || spc == 0 || first > chunks {
            return Err(Mp4Error::malformed(format!("stsc entry {e}")));
        }
        if prev > 0 {
            let spc_prev = u64::from(t.stsc.u32(e - 1, 1)?);
            covered = covered.saturating_add((first - prev).saturating_mul(spc_prev));
        }
        prev = first;
    }
    if prev > 0 {
        let last_spc = u64::from(t.stsc.u32(t.stsc.len() - 1, 1)?);
        covered = covered.saturating_add((chunks + 1 - prev).saturating_mul(last_spc));
    }
    if covered < u64::from(t.samples) {
        return Err(Mp4Error::malformed(format!(
            "chunks hold {covered} of {} samples",
            t.samples
        )));
    }
    Ok(())
}
