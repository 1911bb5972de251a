//! The byte budget of the store's folder: every byte on disk is charged here before it is
//! written, and the total never passes the cap.
//!
//! Invariant: `used <= cap` after every call; [`Budget::reserve`] is the only way to grow
//! `used` (a reopen charges what it finds with [`Budget::charge_found`], then shrinks).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A larger budget the store's bytes also count against (the whole cache's cap), owned by
/// the caller. The store asks it for every byte after its own cap allowed them, so both
/// caps hold at every moment.
///
/// Must hold: `take` may make room (evict other things), but never calls back into the
/// store; `give_back` and `charge_found` never block on anything the store holds.
pub trait SharedSpace: Send + Sync {
    /// Takes `bytes` if they fit (making room if it can); false and nothing taken otherwise.
    fn take(&self, bytes: u64) -> bool;
    fn give_back(&self, bytes: u64);
    /// Counts bytes already on disk (found at a reopen), even past the cap.
    fn charge_found(&self, bytes: u64);
}

/// Bytes charged against the cap. Lock-free: charges are taken and given back from any
/// thread, including a reader's `Drop` of the last handle on a reclaimed segment.
pub(super) struct Budget {
    cap: u64,
    used: AtomicU64,
    shared: Option<Arc<dyn SharedSpace>>,
}

impl Budget {
    pub fn new(cap: u64, shared: Option<Arc<dyn SharedSpace>>) -> Budget {
        Budget {
            cap,
            used: AtomicU64::new(0),
            shared,
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
        let local = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.cap)
            })
            .is_ok();
        if local && !self.shared.as_ref().is_none_or(|shared| shared.take(bytes)) {
            self.release_local(bytes);
            return false;
        }
        local
    }

    /// Charges bytes already on disk (found at a reopen); may leave `used` above the cap,
    /// which the reopen then reclaims before anything is written.
    pub fn charge_found(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        if let Some(shared) = &self.shared {
            shared.charge_found(bytes);
        }
    }

    pub fn release(&self, bytes: u64) {
        self.release_local(bytes);
        if let Some(shared) = &self.shared {
            shared.give_back(bytes);
        }
    }

    fn release_local(&self, bytes: u64) {
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
        let budget = Budget::new(100, None);
        assert!(budget.reserve(60));
        assert!(!budget.reserve(41));
        assert!(budget.reserve(40));
        assert_eq!(budget.free(), 0);
        budget.release(30);
        assert_eq!(budget.used(), 70);
        assert!(!budget.reserve(u64::MAX));
    }

    /// A shared space that allows `room` bytes and records what it holds.
    struct Outer {
        room: u64,
        held: AtomicU64,
    }

    impl SharedSpace for Outer {
        fn take(&self, bytes: u64) -> bool {
            self.held
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                    Some(held + bytes).filter(|total| *total <= self.room)
                })
                .is_ok()
        }
        fn give_back(&self, bytes: u64) {
            self.held.fetch_sub(bytes, Ordering::AcqRel);
        }
        fn charge_found(&self, bytes: u64) {
            self.held.fetch_add(bytes, Ordering::AcqRel);
        }
    }

    #[test]
    fn a_shared_space_that_refuses_leaves_nothing_taken_on_either_side() {
        let outer = Arc::new(Outer {
            room: 50,
            held: AtomicU64::new(0),
        });
        let budget = Budget::new(100, Some(outer.clone()));
        assert!(budget.reserve(40));
        assert!(!budget.reserve(20), "the shared space has only 10 left");
        assert_eq!(
            (budget.used(), outer.held.load(Ordering::Acquire)),
            (40, 40)
        );
        budget.release(40);
        budget.charge_found(7);
        assert_eq!((budget.used(), outer.held.load(Ordering::Acquire)), (7, 7));
    }
}
