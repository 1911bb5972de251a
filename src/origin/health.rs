//! Origin health and routing: which origins are in rotation, the order a request tries them
//! in (round robin, or rendezvous hashing of its path), standbys, and background probes.
//!
//! An origin leaves the rotation after `fail_threshold` consecutive failures (connection
//! errors, timeouts, 5xx) and comes back only after `recover_threshold` consecutive good
//! background probes. When every origin is out, requests still try them all: an outage must
//! not outlast the origins' own recovery by a probe interval.
//!
//! With `balance = hash`, the origins are ranked for each request by rendezvous
//! (highest-random-weight) hashing: every origin scores `xxh3(key, seed of its URL)` and
//! the highest score goes first. The ranking depends only on the path and the origins' URLs,
//! so every block of an object, from every edge that lists the same origins, goes to the same
//! one. Excluding an origin removes it from the ranking: only the keys it ranked first move,
//! each to its own next choice, and readmitting it brings exactly those keys back.
//!
//! Standby origins come after every active one in every order: they take a request only
//! when every active origin is excluded, or when each active in rotation has already failed
//! that request.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::config::{Balance, HealthPolicy, Origin};

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

/// Whether an origin serves normally or only stands in while every active one is out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Active,
    Standby,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Standby => "standby",
        }
    }
}

/// What has been sent to one origin and what came back, for `ston-fs stats`.
#[derive(Debug, Default)]
pub struct Traffic {
    requests: AtomicU64,
    bytes: AtomicU64,
    failures: AtomicU64,
}

impl Traffic {
    pub fn record_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_bytes(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Requests sent (health probes included), body bytes received, failed requests.
    pub fn totals(&self) -> (u64, u64, u64) {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        (
            load(&self.requests),
            load(&self.bytes),
            load(&self.failures),
        )
    }
}

/// One origin address and what is known of its health.
#[derive(Debug)]
pub struct Member {
    pub origin: Origin,
    pub role: Role,
    /// Its rendezvous seed: a hash of its URL, so every edge that lists it ranks it alike.
    seed: u64,
    healthy: AtomicBool,
    /// Whether any request to it has succeeded yet.
    answered: AtomicBool,
    failures: AtomicU32,
    good_probes: AtomicU32,
    /// Why its last failed request failed, for `ston-fs stats`.
    last_error: Mutex<Option<String>>,
    traffic: Arc<Traffic>,
}

impl Member {
    fn new(origin: Origin, role: Role) -> Member {
        Member {
            seed: xxh3_64(origin.to_string().as_bytes()),
            origin,
            role,
            healthy: AtomicBool::new(true),
            answered: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            good_probes: AtomicU32::new(0),
            last_error: Mutex::new(None),
            traffic: Arc::new(Traffic::default()),
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

    /// Its request and byte counters, shared with the bodies it sends.
    pub fn traffic(&self) -> &Arc<Traffic> {
        &self.traffic
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    pub fn record_error(&self, reason: &str) {
        *self.last_error.lock() = Some(reason.chars().take(200).collect());
    }

    pub fn record_failure(&self, policy: &HealthPolicy) {
        self.traffic.failures.fetch_add(1, Ordering::Relaxed);
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

    /// A background probe's verdict. An origin in rotation is probed only while it is an
    /// idle standby: a bad probe then counts as a failure, so a dead standby is out before
    /// it is needed. An excluded origin needs consecutive good probes to come back.
    pub fn record_probe(&self, good: bool, policy: &HealthPolicy) {
        if self.is_healthy() {
            match good {
                true => self.record_success(),
                false => self.record_failure(policy),
            }
            return;
        }
        if !good {
            self.traffic.failures.fetch_add(1, Ordering::Relaxed);
            self.good_probes.store(0, Ordering::Release);
            return;
        }
        let goods = self.good_probes.fetch_add(1, Ordering::AcqRel) + 1;
        if goods >= policy.recover_threshold && !self.healthy.swap(true, Ordering::AcqRel) {
            self.failures.store(0, Ordering::Release);
            tracing::info!(origin = %self.origin, probes = goods, "origin readmitted");
        }
    }

    /// Its rendezvous score for a request key: the highest score goes first.
    fn score(&self, key: u64) -> u64 {
        xxh3_64_with_seed(&key.to_le_bytes(), self.seed)
    }

    /// Where it stands in any order: active ones in rotation, standbys in rotation, then
    /// the excluded (a last resort, never skipped when nothing else is left).
    fn group(&self) -> u8 {
        match (self.is_healthy(), self.role) {
            (true, Role::Active) => 0,
            (true, Role::Standby) => 1,
            (false, Role::Active) => 2,
            (false, Role::Standby) => 3,
        }
    }
}

/// The routing key of a request: its path, and the host for a virtual host. Every edge
/// computes the same key for the same request.
pub fn route_key(host: Option<&str>, path: &str) -> u64 {
    let host_seed = host.map_or(0, |host| xxh3_64(host.as_bytes()));
    xxh3_64_with_seed(path.as_bytes(), host_seed)
}

/// The origins serving one site: active ones, then standbys.
#[derive(Debug)]
pub struct Pool {
    pub members: Vec<Member>,
    balance: Balance,
    next: AtomicUsize,
}

impl Pool {
    pub fn new(actives: Vec<Origin>, standby: Vec<Origin>, balance: Balance) -> Pool {
        let actives = actives.into_iter().map(|o| Member::new(o, Role::Active));
        let standby = standby.into_iter().map(|o| Member::new(o, Role::Standby));
        Pool {
            members: actives.chain(standby).collect(),
            balance,
            next: AtomicUsize::new(0),
        }
    }

    /// The order a request with routing key `key` tries the origins in: active ones in
    /// rotation, standbys in rotation, excluded active ones, excluded standbys. Within each
    /// group: rotated by request (round robin), or ranked by rendezvous score (hash).
    pub fn attempt_order(&self, key: u64) -> Vec<&Member> {
        let mut order: Vec<&Member> = self.members.iter().collect();
        match self.balance {
            Balance::Hash => {
                order.sort_by_cached_key(|m| (m.group(), std::cmp::Reverse(m.score(key))))
            }
            Balance::RoundRobin => {
                // Each member's group read once: health may change while this sorts.
                let mut grouped: Vec<_> = order.into_iter().map(|m| (m.group(), m)).collect();
                grouped.sort_by_key(|(group, _)| *group);
                let turn = self.next.fetch_add(1, Ordering::Relaxed);
                for run in grouped.chunk_by_mut(|a, b| a.0 == b.0) {
                    let len = run.len();
                    run.rotate_left(turn % len);
                }
                order = grouped.into_iter().map(|(_, m)| m).collect();
            }
        }
        order
    }

    /// Origins the background probes ask: every excluded one, and the standbys in rotation
    /// (idle until needed, so only a probe finds out that one is down).
    pub fn probe_targets(&self) -> impl Iterator<Item = &Member> {
        self.members
            .iter()
            .filter(|m| !m.is_healthy() || m.role == Role::Standby)
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
    use proptest::prelude::*;

    fn origins(first: usize, n: usize) -> Vec<Origin> {
        (first..first + n)
            .map(|i| Origin::parse(&format!("http://10.0.0.{}:8080/", i + 1)).unwrap())
            .collect()
    }

    fn pool(n: usize) -> Pool {
        Pool::new(origins(0, n), Vec::new(), Balance::RoundRobin)
    }

    fn hashed(n: usize, standby: usize) -> Pool {
        Pool::new(origins(0, n), origins(n, standby), Balance::Hash)
    }

    fn exclude(member: &Member) {
        let policy = HealthPolicy::default();
        for _ in 0..policy.fail_threshold {
            member.record_failure(&policy);
        }
        assert!(!member.is_healthy());
    }

    fn readmit(member: &Member) {
        let policy = HealthPolicy::default();
        for _ in 0..policy.recover_threshold {
            member.record_probe(true, &policy);
        }
        assert!(member.is_healthy());
    }

    /// Index (in `pool.members`) of the origin a key goes to first.
    fn first_choice(pool: &Pool, key: u64) -> usize {
        let first = pool.attempt_order(key)[0];
        pool.members
            .iter()
            .position(|m| std::ptr::eq(m, first))
            .unwrap()
    }

    fn key(i: u64) -> u64 {
        route_key(None, &format!("/objects/{i}.bin"))
    }

    #[test]
    fn failing_origins_leave_the_rotation_and_probes_bring_them_back() {
        let policy = HealthPolicy::default();
        let pool = pool(2);
        exclude(&pool.members[0]);
        for i in 0..10 {
            assert_eq!(pool.attempt_order(i)[0].origin, pool.members[1].origin);
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
        let pool = pool(2);
        for member in &pool.members {
            exclude(member);
        }
        assert_eq!(pool.attempt_order(0).len(), 2);
    }

    #[test]
    fn round_robin_takes_turns() {
        let pool = pool(3);
        let firsts: Vec<usize> = (0..6).map(|_| first_choice(&pool, 7)).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn hashing_depends_on_the_path_and_the_origins_only() {
        let a = hashed(5, 0);
        let b = hashed(5, 0);
        // Another edge lists the same origins in another order.
        let mut reversed = origins(0, 5);
        reversed.reverse();
        let c = Pool::new(reversed, Vec::new(), Balance::Hash);
        for i in 0..500 {
            let order_a: Vec<&Origin> = a
                .attempt_order(key(i))
                .into_iter()
                .map(|m| &m.origin)
                .collect();
            let order_b: Vec<&Origin> = b
                .attempt_order(key(i))
                .into_iter()
                .map(|m| &m.origin)
                .collect();
            let order_c: Vec<&Origin> = c
                .attempt_order(key(i))
                .into_iter()
                .map(|m| &m.origin)
                .collect();
            assert_eq!(order_a, order_b);
            assert_eq!(order_a, order_c, "the listing order must not matter");
        }
        assert_ne!(
            route_key(Some("a.com"), "/x"),
            route_key(Some("b.com"), "/x")
        );
    }

    #[test]
    fn hashing_spreads_keys_evenly() {
        let pool = hashed(10, 0);
        let mut counts = [0u32; 10];
        let keys = 100_000;
        for i in 0..keys {
            counts[first_choice(&pool, key(i))] += 1;
        }
        let fair = keys as f64 / 10.0;
        for count in counts {
            // Binomial spread is about 0.3 % of `fair` here; 5 % is far outside it.
            assert!((count as f64 - fair).abs() < 0.05 * fair, "{counts:?}");
        }
    }

    #[test]
    fn standbys_take_requests_only_when_every_active_is_excluded() {
        let pool = hashed(3, 2);
        for i in 0..200 {
            let order = pool.attempt_order(key(i));
            assert_eq!(order[0].role, Role::Active);
            assert!(order[..3].iter().all(|m| m.role == Role::Active));
        }
        exclude(&pool.members[0]);
        exclude(&pool.members[1]);
        for i in 0..200 {
            assert_eq!(first_choice(&pool, key(i)), 2);
        }
        exclude(&pool.members[2]);
        let mut standby_firsts = [0; 2];
        for i in 0..200 {
            let order = pool.attempt_order(key(i));
            assert_eq!(order.len(), 5, "every origin stays a last resort");
            assert_eq!(order[0].role, Role::Standby);
            assert_eq!(order[1].role, Role::Standby);
            standby_firsts[first_choice(&pool, key(i)) - 3] += 1;
        }
        assert!(standby_firsts.iter().all(|&n| n > 50), "{standby_firsts:?}");
        readmit(&pool.members[1]);
        for i in 0..200 {
            assert_eq!(
                first_choice(&pool, key(i)),
                1,
                "traffic returns to the actives"
            );
        }
    }

    #[test]
    fn hedges_and_retries_go_to_the_next_choice() {
        let pool = hashed(4, 0);
        for i in 0..200 {
            let full: Vec<&Origin> = pool
                .attempt_order(key(i))
                .into_iter()
                .map(|m| &m.origin)
                .collect();
            let first = pool.attempt_order(key(i))[0];
            exclude(first);
            let without: Vec<&Origin> = pool
                .attempt_order(key(i))
                .into_iter()
                .map(|m| &m.origin)
                .collect();
            // The excluded one drops to the end; everyone else keeps their place.
            assert_eq!(&without[..3], &full[1..]);
            assert_eq!(without[3], full[0]);
            readmit(first);
        }
    }

    #[test]
    fn idle_standbys_and_excluded_origins_are_probed() {
        let policy = HealthPolicy::default();
        let pool = hashed(2, 1);
        let probed = |pool: &Pool| {
            pool.probe_targets()
                .map(|m| m.origin.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(probed(&pool), vec![pool.members[2].origin.clone()]);
        exclude(&pool.members[0]);
        assert_eq!(probed(&pool).len(), 2);
        for _ in 0..policy.fail_threshold {
            pool.members[2].record_probe(false, &policy);
        }
        assert_eq!(
            pool.members[2].state(),
            HealthState::Excluded,
            "a dead standby is out"
        );
        assert_eq!(
            pool.members[2].traffic().totals().2,
            policy.fail_threshold as u64
        );
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert!(backoff(1) < Duration::from_millis(61));
        assert!(backoff(20) <= Duration::from_millis(20 << 6).saturating_mul(2));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Excluding one origin moves exactly the keys it ranked first, each to its own
        /// second choice; readmitting it brings exactly those keys back.
        #[test]
        fn exclusion_moves_only_the_excluded_share(
            members in 2usize..12,
            excluded in 0usize..12,
            salt in any::<u64>(),
        ) {
            let pool = hashed(members, 0);
            let gone = excluded % members;
            let keys: Vec<u64> = (0..2000).map(|i| route_key(None, &format!("/{salt}/{i}"))).collect();
            let before: Vec<Vec<usize>> = keys.iter().map(|&k| {
                pool.attempt_order(k).iter()
                    .map(|m| pool.members.iter().position(|x| std::ptr::eq(x, *m)).unwrap())
                    .collect()
            }).collect();
            exclude(&pool.members[gone]);
            let mut moved = 0;
            for (k, order) in keys.iter().zip(&before) {
                let now = first_choice(&pool, *k);
                if order[0] == gone {
                    moved += 1;
                    prop_assert_eq!(now, order[1], "a moved key goes to its own next choice");
                } else {
                    prop_assert_eq!(now, order[0], "a key of another origin moved");
                }
            }
            let share = moved as f64 / keys.len() as f64;
            let fair = 1.0 / members as f64;
            // 2000 keys: the binomial spread is at most 1.2 % absolute; 6 % is far outside.
            prop_assert!((share - fair).abs() < 0.06, "moved {share}, fair share {fair}");
            readmit(&pool.members[gone]);
            for (k, order) in keys.iter().zip(&before) {
                prop_assert_eq!(first_choice(&pool, *k), order[0], "keys come back");
            }
        }
    }
}
