//! Adaptive read-ahead: detects sequential reading per open file and prefetches ahead of it in
//! a window that doubles, all files drawing on one global memory budget.
//!
//! Invariant: bytes of prefetched blocks that are in memory (in transit, not yet in the block
//! store) never exceed the budget, whatever the number of open files. A reader that jumps
//! around gets no prefetch at all.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The global allowance of prefetch memory, shared by every open file.
pub struct Budget {
    available: AtomicU64,
    total: u64,
}

impl Budget {
    pub fn new(bytes: u64) -> Budget {
        Budget {
            available: AtomicU64::new(bytes),
            total: bytes,
        }
    }

    /// Whether no prefetched block is held anywhere (no read-ahead in flight or unstored).
    pub fn is_idle(&self) -> bool {
        self.available.load(Ordering::Acquire) >= self.total
    }

    /// Takes up to `wanted` bytes, in whole multiples of `unit`; returns what it took.
    pub fn take(&self, wanted: u64, unit: u64) -> u64 {
        let mut taken = 0;
        let _ = self
            .available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |available| {
                taken = wanted.min(available) / unit * unit;
                Some(available - taken)
            });
        taken
    }

    pub fn give_back(&self, bytes: u64) {
        self.available.fetch_add(bytes, Ordering::AcqRel);
    }
}

/// Budget taken for one prefetched block; given back when the block leaves memory.
pub struct BudgetHold {
    budget: Arc<Budget>,
    bytes: u64,
}

impl BudgetHold {
    /// Takes over `bytes` the caller already took from `budget`.
    pub fn adopt(budget: &Arc<Budget>, bytes: u64) -> BudgetHold {
        BudgetHold {
            budget: budget.clone(),
            bytes,
        }
    }
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// Per-open-file sequential detector and window.
#[derive(Default)]
pub struct ReadAhead {
    /// Where the next read starts if the reader is sequential.
    next_offset: u64,
    /// Blocks to keep fetched ahead of the reader; 0 when the reader is not sequential.
    window: u64,
    /// First block not yet requested by read-ahead.
    requested_until: u64,
}

impl ReadAhead {
    /// Records a read and returns the blocks to prefetch now (possibly empty).
    /// `max_window` bounds the window in blocks; `block_count` is the object's size in blocks.
    pub fn on_read(
        &mut self,
        range: &Range<u64>,
        block_size: u64,
        max_window: u64,
        block_count: u64,
    ) -> Range<u64> {
        let sequential = range.start == self.next_offset
            || (range.start < self.next_offset && range.end > self.next_offset);
        self.next_offset = range.end;
        if !sequential {
            self.window = 0;
            self.requested_until = 0;
            return 0..0;
        }
        self.window = (self.window * 2).clamp(2, max_window.max(2));
        let next_block = range.end.div_ceil(block_size);
        // Top the window up only once half of it is used: requests stay large (a few per
        // window, not one per block read), while the other half is still in flight.
        let ahead = self.requested_until.saturating_sub(next_block);
        if ahead > self.window / 2 {
            return 0..0;
        }
        let from = next_block.max(self.requested_until);
        let until = (next_block + self.window).min(block_count);
        if from >= until {
            return 0..0;
        }
        self.requested_until = until;
        from..until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_reads_grow_the_window_and_random_reads_reset_it() {
        let mut ahead = ReadAhead::default();
        let first = ahead.on_read(&(0..100), 100, 16, 1000);
        assert_eq!(first, 1..3);
        let second = ahead.on_read(&(100..200), 100, 16, 1000);
        assert_eq!(second, 3..6);
        let jump = ahead.on_read(&(50_000..50_100), 100, 16, 1000);
        assert!(jump.is_empty());
        let window_stays_bounded = (0..20)
            .map(|i| ahead.on_read(&(50_100 + i * 100..50_200 + i * 100), 100, 16, 1000))
            .all(|r| r.end - r.start <= 16);
        assert!(window_stays_bounded);
    }

    #[test]
    fn the_budget_is_never_overdrawn() {
        let budget = Budget::new(250);
        assert_eq!(budget.take(400, 100), 200);
        assert_eq!(budget.take(100, 100), 0);
        budget.give_back(200);
        assert_eq!(budget.take(100, 100), 100);
    }

    #[test]
    fn a_reader_that_jumps_around_gets_no_prefetch() {
        let mut ahead = ReadAhead::default();
        let jumps = [5_000, 90_000, 1_000, 40_000, 70_000];
        for start in jumps {
            assert!(ahead
                .on_read(&(start..start + 4096), 4096, 64, 1_000)
                .is_empty());
        }
        // A read that overlaps the end of the last one (a retried short read) is sequential.
        assert_eq!(ahead.on_read(&(72_000..80_000), 4096, 64, 1_000), 20..22);
    }

    #[test]
    fn the_window_stops_at_the_end_of_the_object() {
        let mut ahead = ReadAhead::default();
        let mut requested = Vec::new();
        for i in 0..10u64 {
            let range = ahead.on_read(&(i * 100..(i + 1) * 100), 100, 64, 10);
            requested.extend(range);
        }
        assert_eq!(
            requested,
            (1..10).collect::<Vec<u64>>(),
            "each block once, none past the end"
        );
        assert!(ahead.on_read(&(1000..1100), 100, 64, 10).is_empty());
    }

    #[test]
    fn budget_holds_give_their_bytes_back_when_dropped() {
        let budget = Arc::new(Budget::new(4096 * 3));
        let taken = budget.take(4096 * 2, 4096);
        let holds: Vec<BudgetHold> = (0..2).map(|_| BudgetHold::adopt(&budget, 4096)).collect();
        assert_eq!(taken, 8192);
        assert_eq!(budget.take(8192, 4096), 4096);
        drop(holds);
        assert_eq!(budget.take(u64::MAX, 4096), 8192);
    }

    /// Threads taking and giving back at once never hold more than the budget in total.
    #[test]
    fn concurrent_takers_never_overdraw_the_budget() {
        const TOTAL: u64 = 64 * 4096;
        let budget = Arc::new(Budget::new(TOTAL));
        let outstanding = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (budget, outstanding) = (budget.clone(), outstanding.clone());
                std::thread::spawn(move || {
                    for i in 0..2_000u64 {
                        let wanted = ((t * 7 + i * 13) % 40 + 1) * 4096;
                        let taken = budget.take(wanted, 4096);
                        assert!(taken <= wanted && taken % 4096 == 0);
                        let now = outstanding.fetch_add(taken, Ordering::SeqCst) + taken;
                        assert!(now <= TOTAL, "{now} bytes held of {TOTAL}");
                        std::thread::yield_now();
                        outstanding.fetch_sub(taken, Ordering::SeqCst);
                        let _hold = BudgetHold::adopt(&budget, taken);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("taker");
        }
        assert_eq!(budget.take(u64::MAX, 1), TOTAL, "every byte came back");
    }

    #[derive(Debug, Clone)]
    enum Read {
        /// Continues where the last read ended (or overlaps its end by `back` bytes).
        Next {
            len: u64,
            back: u64,
        },
        Jump {
            to: u64,
            len: u64,
        },
    }

    fn read() -> impl proptest::strategy::Strategy<Value = Read> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (1u64..300_000, 0u64..3).prop_map(|(len, back)| Read::Next { len, back }),
            1 => (0u64..2_000_000, 1u64..300_000).prop_map(|(to, len)| Read::Jump { to, len }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Random mixes of sequential reads and jumps: jumps get nothing; otherwise the
        /// prefetch lies ahead of the read, inside the object and the window, and within a
        /// sequential streak no block is requested twice.
        #[test]
        fn prefetch_stays_ahead_inside_the_window_and_never_repeats(
            block_shift in 12u32..=16,
            max_window in 0u64..64,
            block_count in 1u64..400,
            reads in proptest::collection::vec(read(), 1..60),
        ) {
            use proptest::prop_assert;
            let block_size = 1u64 << block_shift;
            let mut ahead = ReadAhead::default();
            let (mut end, mut streak_until) = (0u64, 0u64);
            for read in reads {
                let range = match read {
                    Read::Next { len, back } => {
                        let start = end.saturating_sub(back);
                        start..(end + len).max(start + 1)
                    }
                    Read::Jump { to, len } => to..to + len,
                };
                let sequential = range.start == end || (range.start < end && range.end > end);
                end = range.end;
                let got = ahead.on_read(&range, block_size, max_window, block_count);
                if !sequential {
                    prop_assert!(got.is_empty(), "a jump prefetched {:?}", got);
                    streak_until = 0;
                    continue;
                }
                if got.is_empty() {
                    continue;
                }
                let next_block = range.end.div_ceil(block_size);
                prop_assert!(got.start >= next_block, "{:?} is not ahead of {:?}", got, range);
                prop_assert!(got.end <= block_count);
                prop_assert!(got.end - got.start <= max_window.max(2));
                prop_assert!(got.end <= next_block + max_window.max(2));
                prop_assert!(got.start >= streak_until, "{:?} requested twice", got);
                streak_until = got.end;
            }
        }

        /// Takes and give-backs against a model: whole units only, never more than wanted or
        /// available, and nothing is lost.
        #[test]
        fn the_budget_agrees_with_a_counter(
            total in 0u64..100_000,
            ops in proptest::collection::vec((proptest::prelude::any::<bool>(), 0u64..50_000, 1u64..5_000), 1..60),
        ) {
            let budget = Budget::new(total);
            let mut available = total;
            let mut held = Vec::new();
            for (take, amount, unit) in ops {
                if take {
                    let taken = budget.take(amount, unit);
                    proptest::prop_assert_eq!(taken, amount.min(available) / unit * unit);
                    available -= taken;
                    held.push(taken);
                } else if let Some(bytes) = held.pop() {
                    budget.give_back(bytes);
                    available += bytes;
                }
            }
            proptest::prop_assert_eq!(budget.take(u64::MAX, 1), available);
        }
    }
}
