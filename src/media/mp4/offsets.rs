//! Chunk-offset tables that depend on the size of the moov that contains them, solved to a fixed point.

use super::error::Mp4Error;
use super::tables::ChunkOffsets;
use super::tree::Node;

/// Offsets of one stco/co64 table, before mapping to the presented file.
pub(crate) struct ChunkTable {
    pub offsets: Vec<u64>,
    /// Written as co64; only ever switches from false to true, which bounds the iteration.
    pub wide: bool,
}

impl ChunkTable {
    pub(crate) fn from_leaf(node: &Node<'_>) -> Result<Self, Mp4Error> {
        let wide = &node.kind() == b"co64";
        let table = ChunkOffsets::parse(node.payload().unwrap_or(&[]), wide)?;
        let offsets = (0..table.len())
            .map(|i| table.get(i))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ChunkTable { offsets, wide })
    }

    fn encode(&self, map: &dyn Fn(u64) -> Result<u64, Mp4Error>) -> Result<Vec<u8>, Mp4Error> {
        let width = if self.wide { 8 } else { 4 };
        let mut p = Vec::with_capacity(8 + width * self.offsets.len());
        p.extend_from_slice(&[0, 0, 0, 0]);
        let count = u32::try_from(self.offsets.len())
            .map_err(|_| Mp4Error::malformed("too many chunks"))?;
        p.extend_from_slice(&count.to_be_bytes());
        for &o in &self.offsets {
            let o = map(o)?;
            match u32::try_from(o) {
                Ok(small) if !self.wide => p.extend_from_slice(&small.to_be_bytes()),
                _ if self.wide => p.extend_from_slice(&o.to_be_bytes()),
                _ => return Err(Mp4Error::malformed("stco entry overflow after promotion")),
            }
        }
        Ok(p)
    }
}

/// Most rounds needed: each round either settles or promotes at least one table.
const MAX_ROUNDS: usize = 16;

/// Writes the tables into the tree's stco/co64 leaves (depth-first order) with `map(moov_size, offset)`,
/// promoting stco to co64 where a mapped offset exceeds 32 bits; returns the final moov size.
pub(crate) fn settle(
    tree: &mut Node<'_>,
    tables: &mut [ChunkTable],
    map: &dyn Fn(u64, u64) -> Result<u64, Mp4Error>,
) -> Result<u64, Mp4Error> {
    let mut size = tree.size();
    for _ in 0..MAX_ROUNDS {
        for t in tables.iter_mut().filter(|t| !t.wide) {
            for &o in &t.offsets {
                if map(size, o)? > u64::from(u32::MAX) {
                    t.wide = true;
                    break;
                }
            }
        }
        write(tree, tables, &|o| map(size, o))?;
        let new_size = tree.size();
        if new_size == size {
            return Ok(size);
        }
        size = new_size;
    }
    Err(Mp4Error::malformed("chunk offsets did not settle"))
}

fn write(
    tree: &mut Node<'_>,
    tables: &[ChunkTable],
    map: &dyn Fn(u64) -> Result<u64, Mp4Error>,
) -> Result<(), Mp4Error> {
    let mut leaves = Vec::new();
    tree.chunk_tables_mut(&mut leaves);
    if leaves.len() != tables.len() {
        return Err(Mp4Error::malformed(
            "chunk offset tables changed while rewriting",
        ));
    }
    for (leaf, table) in leaves.into_iter().zip(tables) {
        let kind = if table.wide { *b"co64" } else { *b"stco" };
        *leaf = Node::leaf(kind, table.encode(map)?);
    }
    Ok(())
}
