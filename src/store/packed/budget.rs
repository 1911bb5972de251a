//! The byte budget of the store's folder: every byte on disk is charged here before it is
//! written, and the total never passes the cap.
//!
//! Invariant: `used <= cap` after every call; [`Budget::reserve`] is the only way to grow
//! `used` (a reopen charges what it finds with [`Budget::charge_found`], then shrinks).

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes charged against the cap. Lock-free: charges are taken and given back from any
/// thread, including a reader's `Drop` of the last handle on a reclaimed segment.
#[derive(Debug)]
pub(super) struct Budget {
    cap: u64,
    used: AtomicU64,
}

impl Budget {
    pub fn new(cap: u64) -> Budget {
        Budget {
            cap,
            used: AtomicU64::new(0),
        }
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Bytes that may still be reserved.
    pub fn free(&self) -> u64 {
        self.cap.saturating_sub(self.used())
    }

    /// Takes `bytes` if they fit under the cap; false (and nothing taken) otherwise.
    pub fn reserve(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.cap)
            })
            .is_ok()
    }

    /// Charges bytes already on disk (found at a reopen); may leave `used` above the cap,
    /// which the reopen then reclaims before anything is written.
    pub fn charge_found(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
    }

    pub fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_never_pass_the_cap() {
        let budget = Budget::new(100);
        assert!(budget.reserve(60));
        assert!(!budget.reserve(41));
        assert!(budget.reserve(40));
        assert_eq!(budget.free(), 0);
        budget.release(30);
        assert_eq!(budget.used(), 70);
        assert!(!budget.reserve(u64::MAX));
    }
}
