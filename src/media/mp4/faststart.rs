//! moov-at-end to moov-first: the new moov goes before the first mdat and every chunk offset moves with the media.

use std::ops::Range;

use bytes::Bytes;

use super::error::Mp4Error;
use super::offsets::{settle, ChunkTable};
use super::presented::{Presented, Segment};
use super::scan::{check_layout, TopBox};
use super::tree::{parse_moov, Node};
use super::Limits;

/// Presents a moov-at-end file with its moov moved in front of the first mdat.
///
/// `moov_bytes` is the whole original moov box (header included).
pub fn faststart(
    layout_boxes: &[TopBox],
    moov: Range<u64>,
    moov_bytes: &[u8],
    file_size: u64,
    limits: &Limits,
) -> Result<Presented, Mp4Error> {
    check_layout(layout_boxes, &moov, moov_bytes, file_size, limits)?;
    let insert_at = layout_boxes
        .iter()
        .find(|b| &b.kind == b"mdat")
        .map(|b| b.range.start)
        .ok_or_else(|| Mp4Error::BadArgument("no mdat box".into()))?;
    if insert_at > moov.start {
        return Err(Mp4Error::BadArgument("moov is already before mdat".into()));
    }
    let mut tree = parse_moov(moov_bytes, limits)?;
    refuse_absolute_aux_offsets(&tree)?;
    let mut tables = chunk_tables(&mut tree)?;
    let shift = Shift {
        insert_at,
        moov: moov.clone(),
        file_size,
    };
    settle(&mut tree, &mut tables, &|new_len, x| shift.map(new_len, x))?;
    let bytes = Bytes::from(tree.encode()?);
    Presented::new(vec![
        Segment::Source {
            offset: 0,
            len: insert_at,
        },
        Segment::Synthetic(bytes),
        Segment::Source {
            offset: insert_at,
            len: moov.start - insert_at,
        },
        Segment::Source {
            offset: moov.end,
            len: file_size - moov.end,
        },
    ])
}

fn chunk_tables(tree: &mut Node<'_>) -> Result<Vec<ChunkTable>, Mp4Error> {
    let mut leaves = Vec::new();
    tree.chunk_tables_mut(&mut leaves);
    leaves
        .into_iter()
        .map(|l| ChunkTable::from_leaf(l))
        .collect()
}

/// saio holds absolute file offsets we do not rewrite; shifting the media under it would corrupt decryption.
fn refuse_absolute_aux_offsets(tree: &Node<'_>) -> Result<(), Mp4Error> {
    let found = tree
        .children()
        .iter()
        .filter(|t| &t.kind() == b"trak")
        .any(|t| t.path(&[b"mdia", b"minf", b"stbl", b"saio"]).is_some());
    if found {
        return Err(Mp4Error::Unsupported(
            "saio (encryption offsets) in stbl".into(),
        ));
    }
    Ok(())
}

/// Where an original byte lands once the moov has moved in front of `insert_at`.
struct Shift {
    insert_at: u64,
    moov: Range<u64>,
    file_size: u64,
}

impl Shift {
    fn map(&self, new_len: u64, x: u64) -> Result<u64, Mp4Error> {
        let overflow = || Mp4Error::malformed("chunk offset overflows after the shift");
        if x > self.file_size {
            return Err(Mp4Error::malformed(format!(
                "chunk offset {x} is past the end of the file"
            )));
        }
        if x < self.insert_at {
            Ok(x)
        } else if x < self.moov.start {
            x.checked_add(new_len).ok_or_else(overflow)
        } else if x < self.moov.end {
            Err(Mp4Error::malformed(format!(
                "chunk offset {x} points into the moov"
            )))
        } else {
            (x - (self.moov.end - self.moov.start))
                .checked_add(new_len)
                .ok_or_else(overflow)
        }
    }
}
