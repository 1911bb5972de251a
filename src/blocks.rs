//! The block table of one object version: which blocks are cached, being fetched, or failed.
//!
//! The table is sparse: absent blocks take no memory, so an object's memory follows what is
//! cached or in flight, never the size its origin claims.

use crate::flight::{Delivered, Flight};
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

/// What is known of one block.
#[derive(Clone)]
pub enum BlockState {
    /// One fetch owns the block; every reader of it waits on the flight.
    Fetching(Arc<Flight<Delivered>>),
    /// In the cache file, with its CRC32C.
    Cached {
        crc: u32,
        /// Checked against the CRC since this process read it back (or wrote it).
        verified: bool,
        /// Fetched from the origin in this process and not read since: the read that first
        /// uses it counts as a miss, even though it finds the block on disk.
        fresh: bool,
    },
}

/// Sparse map from block number to state; a missing entry is an absent block.
#[derive(Default)]
pub struct BlockTable {
    blocks: BTreeMap<u64, BlockState>,
    cached: u64,
}

impl BlockTable {
    pub fn get(&self, block: u64) -> Option<&BlockState> {
        self.blocks.get(&block)
    }

    pub fn get_mut(&mut self, block: u64) -> Option<&mut BlockState> {
        self.blocks.get_mut(&block)
    }

    /// Sets a block's state, keeping the count of cached blocks exact.
    pub fn set(&mut self, block: u64, state: BlockState) {
        let now_cached = matches!(state, BlockState::Cached { .. });
        let was_cached = matches!(
            self.blocks.insert(block, state),
            Some(BlockState::Cached { .. })
        );
        self.recount(was_cached, now_cached);
    }

    /// Makes a block absent.
    pub fn clear(&mut self, block: u64) {
        let was_cached = matches!(self.blocks.remove(&block), Some(BlockState::Cached { .. }));
        self.recount(was_cached, false);
    }

    fn recount(&mut self, was_cached: bool, now_cached: bool) {
        match (was_cached, now_cached) {
            (false, true) => self.cached += 1,
            (true, false) => self.cached -= 1,
            _ => {}
        }
    }

    pub fn is_cached(&self, block: u64) -> bool {
        matches!(self.blocks.get(&block), Some(BlockState::Cached { .. }))
    }

    pub fn cached_count(&self) -> u64 {
        self.cached
    }

    /// Cached blocks in order, with their CRC and whether they are verified.
    pub fn cached(&self) -> impl Iterator<Item = (u64, u32, bool)> + '_ {
        self.blocks.iter().filter_map(|(block, state)| match state {
            BlockState::Cached { crc, verified, .. } => Some((*block, *crc, *verified)),
            _ => None,
        })
    }

    /// One past the last cached block (0 when nothing is cached).
    pub fn cached_end(&self) -> u64 {
        self.blocks
            .iter()
            .rev()
            .find(|(_, state)| matches!(state, BlockState::Cached { .. }))
            .map_or(0, |(block, _)| block + 1)
    }

    /// Whether every block in `range` is cached and verified.
    pub fn all_verified(&self, range: Range<u64>) -> bool {
        let wanted = range.end.saturating_sub(range.start);
        let verified = self
            .blocks
            .range(range)
            .filter(|(_, s)| matches!(s, BlockState::Cached { verified: true, .. }))
            .count() as u64;
        verified == wanted
    }

    /// Clears the `fresh` mark of every block in `range`; returns whether any had it.
    pub fn take_fresh(&mut self, range: Range<u64>) -> bool {
        let mut any = false;
        for (_, state) in self.blocks.range_mut(range) {
            if let BlockState::Cached { fresh, .. } = state {
                any |= std::mem::take(fresh);
            }
        }
        any
    }

    /// Forgets every cached block (the object left the cache); flights stay.
    pub fn clear_cached(&mut self) {
        self.blocks
            .retain(|_, state| !matches!(state, BlockState::Cached { .. }));
        self.cached = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(crc: u32) -> BlockState {
        BlockState::Cached {
            crc,
            verified: true,
            fresh: true,
        }
    }

    #[test]
    fn counts_follow_every_change() {
        let mut table = BlockTable::default();
        table.set(5, cached(1));
        table.set(5, cached(2));
        table.set(9, BlockState::Fetching(Flight::new()));
        assert_eq!(table.cached_count(), 1);
        table.set(9, cached(3));
        assert_eq!(table.cached_count(), 2);
        assert_eq!(table.cached_end(), 10);
        table.clear(5);
        assert_eq!(table.cached_count(), 1);
        assert!(table.take_fresh(0..10));
        assert!(!table.take_fresh(0..10), "fresh is taken once");
        table.clear_cached();
        assert_eq!(table.cached_count(), 0);
        assert_eq!(table.cached_end(), 0);
    }

    #[test]
    fn a_huge_claimed_size_costs_nothing() {
        let mut table = BlockTable::default();
        table.set(u64::MAX / 2, cached(7));
        assert!(table.all_verified(u64::MAX / 2..u64::MAX / 2 + 1));
        assert!(!table.all_verified(0..u64::MAX / 2 + 1));
    }
}
