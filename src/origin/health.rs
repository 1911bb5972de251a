//! Origin health: which equivalent origins are in rotation, in what order a request tries them,
//! and the background probes that readmit an excluded one.
//!
//! An origin leaves the rotation after `fail_threshold` consecutive failures (connection
//! errors, timeouts, 5xx) and comes back only after `recover_threshold` consecutive good
//! background probes. When every origin is out, requests still try them all: an outage must
//! not outlast the origins' own recovery by a probe interval.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::config::{HealthPolicy, Origin};

/// What is known of one origin's health, as `ston-fs stats` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    /// Never asked yet.
    Unknown,
    /// Its last request succeeded.
    Healthy,
    /// Its last requests failed, not yet enough to exclude it.
    Failing,
    /// Out of rotation until background probes readmit it.
    Excluded,
}

impl HealthState {
    pub fn name(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Healthy => "healthy",
            HealthState::Failing => "failing",
            HealthState::Excluded => "excluded",
        }
    }
}

/// One origin address and what is known of its health.
#[derive(Debug)]
pub struct Member {
    pub origin: Origin,
    healthy: AtomicBool,
    /// Whether any request to it has succeeded yet.
    answered: AtomicBool,
    failures: AtomicU32,
    good_probes: AtomicU32,
    /// Why its last failed request failed, for `ston-fs stats`.
    last_error: Mutex<Option<String>>,
}

impl Member {
    fn new(origin: Origin) -> Member {
        Member {
            origin,
            healthy: AtomicBool::new(true),
            answered: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            good_probes: AtomicU32::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn state(&self) -> HealthState {
        if !self.is_healthy() {
            HealthState::Excluded
        } else if self.failures.load(Ordering::Acquire) > 0 {
            HealthState::Failing
        } else if self.answered.load(Ordering::Acquire) {
            HealthState::Healthy
        } else {
            HealthState::Unknown
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    pub fn record_error(&self, reason: &str) {
        *self.last_error.lock() = Some(reason.chars().take(200).collect());
    }

    pub fn record_failure(&self, policy: &HealthPolicy) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= policy.fail_threshold && self.healthy.swap(false, Ordering::AcqRel) {
            self.good_probes.store(0, Ordering::Release);
            tracing::warn!(origin = %self.origin, failures, "origin excluded after consecutive failures");
        }
    }

    pub fn record_success(&self) {
        self.failures.store(0, Ordering::Release);
        self.answered.store(true, Ordering::Release);
    }

    /// A background probe's verdict on an excluded origin.
    pub fn record_probe(&self, good: bool, policy: &HealthPolicy) {
        if !good {
            self.good_probes.store(0, Ordering::Release);
            return;
        }
        if self.is_healthy() {
            // A probe of an origin in rotation (at mount time): it answers, so it works.
            self.record_success();
            return;
        }
        let goods = self.good_probes.fetch_add(1, Ordering::AcqRel) + 1;
        if goods >= policy.recover_threshold && !self.healthy.swap(true, Ordering::AcqRel) {
            self.failures.store(0, Ordering::Release);
            tracing::info!(origin = %self.origin, probes = goods, "origin readmitted");
        }
    }
}

/// Equivalent origins serving one site.
#[derive(Debug)]
pub struct Pool {
    pub members: Vec<Member>,
    next: AtomicUsize,
}

impl Pool {
    pub fn new(origins: Vec<Origin>) -> Pool {
        Pool {
            members: origins.into_iter().map(Member::new).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The order a request tries the origins in: healthy ones round-robin, then the excluded
    /// ones (a last resort, never skipped when nothing else is left).
    pub fn attempt_order(&self) -> Vec<&Member> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.members.len();
        let rotated = (0..count).map(|i| &self.members[(start + i) % count]);
        let (mut order, excluded): (Vec<&Member>, Vec<&Member>) =
            rotated.partition(|m| m.is_healthy());
        order.extend(excluded);
        order
    }

    pub fn excluded(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| !m.is_healthy())
    }
}

/// Pause before retry number `attempt` (1-based): exponential, with jitter so that many
/// readers retrying at once do not arrive at the next origin together.
pub fn backoff(attempt: usize) -> Duration {
    let base_ms = 20u64 << attempt.min(6);
    let jitter =
        std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), attempt);
    Duration::from_millis(base_ms / 2 + jitter % base_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Pool {
        let origins = (0..n)
            .map(|i| Origin::parse(&format!("http://127.0.0.{}:80/", i + 1)).unwrap())
            .collect();
        Pool::new(origins)
    }

    #[test]
    fn failing_origins_leave_the_rotation_and_probes_bring_them_back() {
        let policy = HealthPolicy::default();
        let pool = pool(2);
        for _ in 0..policy.fail_threshold {
            pool.members[0].record_failure(&policy);
        }
        assert!(!pool.members[0].is_healthy());
        for _ in 0..10 {
            assert_eq!(pool.attempt_order()[0].origin, pool.members[1].origin);
        }
        for _ in 0..policy.recover_threshold - 1 {
            pool.members[0].record_probe(true, &policy);
        }
        pool.members[0].record_probe(false, &policy);
        for _ in 0..policy.recover_threshold - 1 {
            pool.members[0].record_probe(true, &policy);
        }
        assert!(!pool.members[0].is_healthy(), "probes must be consecutive");
        pool.members[0].record_probe(true, &policy);
        assert!(pool.members[0].is_healthy());
    }

    #[test]
    fn excluded_origins_are_still_tried_last() {
        let policy = HealthPolicy::default();
        let pool = pool(2);
        for member in &pool.members {
            for _ in 0..policy.fail_threshold {
                member.record_failure(&policy);
            }
        }
        assert_eq!(pool.attempt_order().len(), 2);
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert!(backoff(1) < Duration::from_millis(61));
        assert!(backoff(20) <= Duration::from_millis(20 << 6).saturating_mul(2));
    }
}
