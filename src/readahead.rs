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
}

impl Budget {
    pub fn new(bytes: u64) -> Budget {
        Budget {
            available: AtomicU64::new(bytes),
        }
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
}
