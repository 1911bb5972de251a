//! The block table of one object version: which blocks are cached, being fetched, or failed.
//!
//! The table is sparse: absent blocks take no memory, so an object's memory follows what is
//! cached or in flight, never the size its origin claims.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use crate::base::flight::Flight;

/// How a fetched block reaches the readers waiting for it.
#[derive(Clone)]
pub enum Delivered {
    /// The block's bytes (when readers were already waiting, or it could not be cached).
    Data(Bytes),
    /// Nobody was waiting: the block went straight to the cache, to be read from there.
    Stored,
}

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
///
/// Must hold: `cached` equals the number of `Cached` entries (every change goes through
/// [`BlockTable::set`], [`BlockTable::clear`] or [`BlockTable::clear_cached`]).
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

    #[test]
    fn unverified_and_fetching_blocks_are_not_verified() {
        let mut table = BlockTable::default();
        table.set(0, cached(1));
        table.set(
            1,
            BlockState::Cached {
                crc: 2,
                verified: false,
                fresh: false,
            },
        );
        table.set(2, BlockState::Fetching(Flight::new()));
        assert!(table.all_verified(0..1));
        assert!(!table.all_verified(0..2), "block 1 is not verified yet");
        assert!(!table.all_verified(2..3), "a block in flight is not cached");
        assert!(
            table.all_verified(5..5),
            "an empty range is trivially verified"
        );
        assert_eq!(
            table.cached().collect::<Vec<_>>(),
            vec![(0, 1, true), (1, 2, false)]
        );
        assert!(!table.is_cached(2));
    }

    #[test]
    fn clearing_the_cache_keeps_flights_and_their_identity() {
        let mut table = BlockTable::default();
        let flight = Flight::new();
        table.set(3, BlockState::Fetching(flight.clone()));
        table.set(4, cached(9));
        table.clear_cached();
        assert!(!table.is_cached(4));
        assert!(table.get(4).is_none());
        match table.get(3) {
            Some(BlockState::Fetching(kept)) => assert!(Arc::ptr_eq(kept, &flight)),
            _ => panic!("the flight of block 3 must survive clear_cached"),
        }
        // Replacing a flight by a cached block and back keeps the count exact.
        table.set(3, cached(5));
        assert_eq!(table.cached_count(), 1);
        table.set(3, BlockState::Fetching(Flight::new()));
        assert_eq!(table.cached_count(), 0);
        table.clear(3);
        table.clear(3);
        assert_eq!(
            table.cached_count(),
            0,
            "clearing an absent block is harmless"
        );
    }

    /// What the model knows of one block.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Model {
        Fetching,
        Cached {
            crc: u32,
            verified: bool,
            fresh: bool,
        },
    }

    #[derive(Debug, Clone)]
    enum Op {
        Cache {
            block: u64,
            crc: u32,
            verified: bool,
            fresh: bool,
        },
        Fetch(u64),
        Clear(u64),
        ClearCached,
        TakeFresh(u64, u64),
    }

    const BLOCKS: u64 = 24;

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0..BLOCKS, any::<u32>(), any::<bool>(), any::<bool>()).prop_map(
                |(block, crc, verified, fresh)| Op::Cache { block, crc, verified, fresh }
            ),
            3 => (0..BLOCKS).prop_map(Op::Fetch),
            3 => (0..BLOCKS).prop_map(Op::Clear),
            1 => Just(Op::ClearCached),
            2 => (0..=BLOCKS, 0..=BLOCKS).prop_map(|(a, b)| Op::TakeFresh(a.min(b), a.max(b))),
        ]
    }

    /// Checks every query of the table against the model.
    fn agrees(table: &BlockTable, model: &BTreeMap<u64, Model>) -> Result<(), String> {
        let cached: Vec<(u64, u32, bool)> = model
            .iter()
            .filter_map(|(b, m)| match m {
                Model::Cached { crc, verified, .. } => Some((*b, *crc, *verified)),
                Model::Fetching => None,
            })
            .collect();
        if table.cached_count() != cached.len() as u64 {
            return Err(format!(
                "cached_count {} != {}",
                table.cached_count(),
                cached.len()
            ));
        }
        if table.cached().collect::<Vec<_>>() != cached {
            return Err("cached() differs from the model".into());
        }
        let end = cached.last().map_or(0, |(b, _, _)| b + 1);
        if table.cached_end() != end {
            return Err(format!("cached_end {} != {end}", table.cached_end()));
        }
        for block in 0..BLOCKS + 2 {
            let want = matches!(model.get(&block), Some(Model::Cached { .. }));
            if table.is_cached(block) != want {
                return Err(format!("is_cached({block}) != {want}"));
            }
            let fetching = matches!(table.get(block), Some(BlockState::Fetching(_)));
            if fetching != matches!(model.get(&block), Some(Model::Fetching)) {
                return Err(format!("block {block}: fetching state differs"));
            }
        }
        for start in 0..=BLOCKS {
            for stop in start..=BLOCKS + 1 {
                let want = (start..stop)
                    .all(|b| matches!(model.get(&b), Some(Model::Cached { verified: true, .. })));
                if table.all_verified(start..stop) != want {
                    return Err(format!("all_verified({start}..{stop}) != {want}"));
                }
            }
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Random sequences of changes: every query agrees with a plain map of states.
        #[test]
        fn the_table_agrees_with_a_plain_map(ops in proptest::collection::vec(op(), 1..48)) {
            let mut table = BlockTable::default();
            let mut model: BTreeMap<u64, Model> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Cache { block, crc, verified, fresh } => {
                        table.set(block, BlockState::Cached { crc, verified, fresh });
                        model.insert(block, Model::Cached { crc, verified, fresh });
                    }
                    Op::Fetch(block) => {
                        table.set(block, BlockState::Fetching(Flight::new()));
                        model.insert(block, Model::Fetching);
                    }
                    Op::Clear(block) => {
                        table.clear(block);
                        model.remove(&block);
                    }
                    Op::ClearCached => {
                        table.clear_cached();
                        model.retain(|_, m| *m == Model::Fetching);
                    }
                    Op::TakeFresh(start, stop) => {
                        let mut want = false;
                        for (_, m) in model.range_mut(start..stop) {
                            if let Model::Cached { fresh, .. } = m {
                                want |= std::mem::take(fresh);
                            }
                        }
                        proptest::prop_assert_eq!(table.take_fresh(start..stop), want);
                        proptest::prop_assert!(!table.take_fresh(start..stop), "fresh is taken once");
                    }
                }
                if let Err(why) = agrees(&table, &model) {
                    return Err(proptest::test_runner::TestCaseError::fail(why));
                }
            }
        }
    }
}
