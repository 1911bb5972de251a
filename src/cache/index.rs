//! Cache index: the in-memory LRU of cached objects, and the accounting that keeps the cache
//! directory under `max_cache_size`.
//!
//! Invariant: `used` never exceeds `cap`. Space is reserved *before* anything is written, and
//! eviction (which removes files) completes before a reservation is granted. Eviction and
//! retirement run under `evict_lock`, so a key's old files are always gone before a new
//! object with the same key creates its own.
//!
//! Lock order (rows 7, 8, 10 of the crate's table, `src/lib.rs`): `evict_lock`, then an
//! entry's own lock (its `Object.state`, taken by
//! [`IndexEntry::detach`] or when an object gives charge back), then the index's `state`.
//! The index releases `state` before it detaches an entry, and an entry never asks for a
//! reservation (`evict_lock`) while it holds its own lock.
//!
//! The index is generic over its entries and names no other module: what it needs of them is
//! the small [`IndexEntry`] trait it owns.

use std::sync::Arc;

use crate::base::sync::{Mutex, MutexGuard};
use lru::LruCache;

use crate::base::SiteId;

pub type ObjectKey = (SiteId, Arc<str>);

/// What the index needs of a cached object.
pub trait IndexEntry {
    fn key(&self) -> ObjectKey;
    /// Takes the entry out of the cache (files removed); returns the bytes it had charged.
    /// `replaced`: the origin has a new version, and open files may keep reading this one.
    fn detach(&self, replaced: bool) -> u64;
}

struct IndexState<E> {
    objects: LruCache<ObjectKey, Arc<E>>,
    used: u64,
}

/// The LRU of cached objects and the byte accounting of the cap.
///
/// Owns: the objects' place in the LRU and the count of bytes charged against `cap`.
/// Must hold: `used <= cap` at every moment a lock is released.
pub struct CacheIndex<E> {
    cap: u64,
    state: Mutex<IndexState<E>>,
    evict_lock: Mutex<()>,
}

impl<E: IndexEntry> CacheIndex<E> {
    pub fn new(cap: u64) -> CacheIndex<E> {
        CacheIndex {
            cap,
            state: Mutex::new(IndexState {
                objects: LruCache::unbounded(),
                used: 0,
            }),
            evict_lock: Mutex::new(()),
        }
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }

    pub fn used(&self) -> u64 {
        self.state.lock().used
    }

    pub fn object_count(&self) -> usize {
        self.state.lock().objects.len()
    }

    /// Looks an object up and marks it recently used.
    pub fn get(&self, key: &ObjectKey) -> Option<Arc<E>> {
        self.state.lock().objects.get(key).cloned()
    }

    /// Objects of `site` whose path `matches`, without touching their recency.
    pub fn matching(&self, site: SiteId, matches: impl Fn(&str) -> bool) -> Vec<Arc<E>> {
        let state = self.state.lock();
        state
            .objects
            .iter()
            .filter(|((object_site, path), _)| *object_site == site && matches(path))
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// Whether any object of `site` has a path that `matches`.
    pub fn any_matching(&self, site: SiteId, matches: impl Fn(&str) -> bool) -> bool {
        let state = self.state.lock();
        let found = state
            .objects
            .iter()
            .any(|((object_site, path), _)| *object_site == site && matches(path));
        found
    }

    /// Adds an object restored at startup, charging what it already holds on disk.
    /// Restored objects are added oldest first, so the newest end up most recently used.
    pub fn restore(&self, object: Arc<E>, charge: u64) {
        let mut state = self.state.lock();
        state.used += charge;
        state.objects.put(object.key(), object);
    }

    /// Charges bytes that are already on disk (directory growth); evicts to get back under
    /// the cap if they pushed it over.
    pub fn charge_existing(&self, bytes: u64) {
        let evicting = self.evict_lock.lock();
        self.state.lock().used += bytes;
        self.evict_until_locked(&evicting, 0, None);
    }

    /// Inserts a new object. The caller has retired any older object under the same key.
    pub fn insert(&self, object: Arc<E>) {
        let previous = self.state.lock().objects.put(object.key(), object);
        if let Some(previous) = previous {
            self.forget_charge(&previous, true);
        }
    }

    /// Takes `object` out of the index (if it is still the entry) and removes its files.
    pub fn retire(&self, object: &Arc<E>) {
        self.retire_as(object, false);
    }

    /// Like [`retire`](Self::retire), for a version the origin replaced: files that are open
    /// keep reading what was cached of it.
    pub fn retire_replaced(&self, object: &Arc<E>) {
        self.retire_as(object, true);
    }

    fn retire_as(&self, object: &Arc<E>, replaced: bool) {
        let _evicting = self.evict_lock.lock();
        let key = object.key();
        {
            let mut state = self.state.lock();
            if state
                .objects
                .peek(&key)
                .is_some_and(|o| Arc::ptr_eq(o, object))
            {
                state.objects.pop(&key);
            }
        }
        self.forget_charge(object, replaced);
    }

    fn forget_charge(&self, object: &E, replaced: bool) {
        let freed = object.detach(replaced);
        let mut state = self.state.lock();
        state.used = state.used.saturating_sub(freed);
    }

    /// Reserves `bytes` for `requester`, evicting least-recently-used objects as needed.
    /// Returns false when the cache cannot make room: the caller then does not cache.
    pub fn reserve(&self, requester: &E, bytes: u64) -> bool {
        self.reserve_for(Some(requester), bytes)
    }

    /// Reserves `bytes` for an object that is not in the index yet.
    pub fn reserve_new(&self, bytes: u64) -> bool {
        self.reserve_for(None, bytes)
    }

    fn reserve_for(&self, requester: Option<&E>, bytes: u64) -> bool {
        if bytes > self.cap {
            return false;
        }
        let evicting = self.evict_lock.lock();
        if !self.evict_until_locked(&evicting, bytes, requester) {
            return false;
        }
        self.state.lock().used += bytes;
        true
    }

    /// Returns unused reserved bytes.
    pub fn release(&self, bytes: u64) {
        let mut state = self.state.lock();
        state.used = state.used.saturating_sub(bytes);
    }

    /// Evicts until `bytes` more fit under the cap. Never evicts `keep`. `_evicting` is the
    /// held `evict_lock`.
    fn evict_until_locked(
        &self,
        _evicting: &MutexGuard<'_, ()>,
        bytes: u64,
        keep: Option<&E>,
    ) -> bool {
        let mut kept_back = None;
        let fits = loop {
            let victim = {
                let mut state = self.state.lock();
                if state.used + bytes <= self.cap {
                    break true;
                }
                match state.objects.pop_lru() {
                    Some((key, victim)) => {
                        if keep.is_some_and(|k| std::ptr::eq(k, &*victim)) {
                            kept_back = Some((key, victim));
                            continue;
                        }
                        victim
                    }
                    None => break false,
                }
            };
            tracing::debug!(path = %victim.key().1, "evicting");
            self.forget_charge(&victim, false);
        };
        if let Some((key, object)) = kept_back {
            self.state.lock().objects.put(key, object);
        }
        fits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry that only counts: its charge, whether it was detached, and a shared log of
    /// every detach (`id`, `replaced`) in the order the index asked for them.
    struct Fake {
        id: usize,
        key: ObjectKey,
        /// (charged, detached), under one lock as an `Object` keeps them.
        state: Mutex<(u64, bool)>,
        log: Arc<Mutex<Vec<(usize, bool)>>>,
    }

    impl IndexEntry for Fake {
        fn key(&self) -> ObjectKey {
            self.key.clone()
        }

        fn detach(&self, replaced: bool) -> u64 {
            let mut state = self.state.lock();
            self.log.lock().push((self.id, replaced));
            state.1 = true;
            std::mem::take(&mut state.0)
        }
    }

    impl Fake {
        fn new(
            id: usize,
            path: &str,
            charged: u64,
            log: &Arc<Mutex<Vec<(usize, bool)>>>,
        ) -> Arc<Fake> {
            Arc::new(Fake {
                id,
                key: (0, Arc::from(path)),
                state: Mutex::new((charged, false)),
                log: log.clone(),
            })
        }

        fn charged(&self) -> u64 {
            self.state.lock().0
        }

        fn is_detached(&self) -> bool {
            self.state.lock().1
        }

        /// What `Object::store_block` does with a granted reservation: keep it, or give it
        /// back if the object left the cache meanwhile.
        fn take_reserved(&self, index: &CacheIndex<Fake>, bytes: u64) {
            let mut state = self.state.lock();
            if state.1 {
                drop(state);
                index.release(bytes);
            } else {
                state.0 += bytes;
            }
        }
    }

    fn log() -> Arc<Mutex<Vec<(usize, bool)>>> {
        Arc::new(Mutex::new(Vec::new()))
    }

    /// Ids in the index from least to most recently used (`matching` leaves recency alone).
    fn lru_order(index: &CacheIndex<Fake>) -> Vec<usize> {
        let mut ids: Vec<usize> = index.matching(0, |_| true).iter().map(|f| f.id).collect();
        ids.reverse();
        ids
    }

    /// Under shuttle's scheduler (feature `shuttle`), many interleavings of objects reserving
    /// room (evicting others), a purge and a directory's growth: the cap holds whenever
    /// a lock is free, and what the index counts is what its objects hold.
    #[cfg(feature = "shuttle")]
    #[test]
    fn shuttle_reservations_and_purges_keep_the_cap_and_the_count() {
        shuttle::check_random(
            || {
                let log = log();
                let index = Arc::new(CacheIndex::new(1000));
                let old = Fake::new(0, "/old", 400, &log);
                index.restore(old.clone(), 400);
                let mut threads = Vec::new();
                for id in 1..=2 {
                    let entry = Fake::new(id, &format!("/{id}"), 0, &log);
                    index.insert(entry.clone());
                    let index = index.clone();
                    threads.push(shuttle::thread::spawn(move || {
                        for _ in 0..2 {
                            if index.reserve(&entry, 300) {
                                entry.take_reserved(&index, 300);
                            }
                            assert!(index.used() <= index.cap());
                        }
                    }));
                }
                let purger = index.clone();
                threads.push(shuttle::thread::spawn(move || {
                    purger.retire(&old);
                    purger.charge_existing(100);
                    assert!(purger.used() <= purger.cap());
                }));
                for thread in threads {
                    thread.join().expect("thread");
                }
                let held: u64 = index
                    .matching(0, |_| true)
                    .iter()
                    .map(|e| e.charged())
                    .sum();
                assert_eq!(index.used(), held + 100, "the count is what objects hold");
            },
            2000,
        );
    }

    #[test]
    fn restored_objects_are_trimmed_oldest_first_when_folders_overflow_the_cap() {
        let log = log();
        let index = CacheIndex::new(1000);
        let entries: Vec<Arc<Fake>> = (0..3)
            .map(|i| Fake::new(i, &format!("/{i}"), 300, &log))
            .collect();
        for entry in &entries {
            index.restore(entry.clone(), 300);
        }
        assert_eq!(index.used(), 900);
        index.charge_existing(200);
        assert_eq!(*log.lock(), vec![(0, false)], "only the oldest goes");
        assert_eq!(index.used(), 800);
        assert_eq!(lru_order(&index), vec![1, 2]);
        assert!(entries[0].is_detached() && !entries[1].is_detached());
    }

    #[test]
    fn a_reservation_bigger_than_the_cap_evicts_nothing() {
        let log = log();
        let index = CacheIndex::new(1000);
        let entry = Fake::new(0, "/a", 0, &log);
        index.insert(entry.clone());
        assert!(index.reserve(&entry, 600));
        entry.take_reserved(&index, 600);
        assert!(!index.reserve_new(1001));
        assert!(!index.reserve(&entry, 1001));
        assert!(log.lock().is_empty());
        assert_eq!(index.used(), 600);
        assert_eq!(index.cap(), 1000);
    }

    #[test]
    fn the_requester_survives_its_own_reservation_and_becomes_most_recent() {
        let log = log();
        let index = CacheIndex::new(1000);
        let requester = Fake::new(0, "/big", 0, &log);
        index.insert(requester.clone());
        assert!(index.reserve(&requester, 500));
        requester.take_reserved(&index, 500);
        let others: Vec<Arc<Fake>> = (1..4)
            .map(|i| Fake::new(i, &format!("/{i}"), 0, &log))
            .collect();
        for other in &others {
            index.insert(other.clone());
            assert!(index.reserve(other, 100));
            other.take_reserved(&index, 100);
        }
        assert_eq!(lru_order(&index), vec![0, 1, 2, 3]);
        // The requester is least recently used, yet only the others make room for it.
        assert!(index.reserve(&requester, 500));
        requester.take_reserved(&index, 500);
        assert_eq!(*log.lock(), vec![(1, false), (2, false), (3, false)]);
        assert!(!requester.is_detached());
        assert_eq!(lru_order(&index), vec![0]);
        assert_eq!(index.used(), 1000);
        // Nothing else left to evict: the requester cannot grow past the cap.
        assert!(!index.reserve(&requester, 1));
        assert_eq!(index.used(), 1000);
        assert!(!requester.is_detached());
    }

    #[test]
    fn retiring_a_superseded_version_leaves_its_successor_alone() {
        let log = log();
        let index = CacheIndex::new(1000);
        let old = Fake::new(0, "/same", 0, &log);
        index.insert(old.clone());
        assert!(index.reserve(&old, 300));
        old.take_reserved(&index, 300);
        let new = Fake::new(1, "/same", 0, &log);
        index.insert(new.clone());
        assert_eq!(
            *log.lock(),
            vec![(0, true)],
            "insert detaches the older version as replaced"
        );
        assert_eq!(index.used(), 0);
        assert!(index.reserve(&new, 200));
        new.take_reserved(&index, 200);
        index.retire_replaced(&old);
        assert_eq!(index.object_count(), 1);
        assert!(Arc::ptr_eq(&index.get(&new.key()).unwrap(), &new));
        assert!(!new.is_detached());
        assert_eq!(index.used(), 200);
        index.retire(&new);
        assert_eq!(index.object_count(), 0);
        assert_eq!(index.used(), 0);
        assert_eq!(log.lock().last(), Some(&(1, false)));
    }

    #[test]
    fn get_refreshes_recency_and_matching_does_not() {
        let log = log();
        let index = CacheIndex::new(300);
        let entries: Vec<Arc<Fake>> = (0..3)
            .map(|i| Fake::new(i, &format!("/d/{i}"), 0, &log))
            .collect();
        for entry in &entries {
            index.insert(entry.clone());
            assert!(index.reserve(entry, 100));
            entry.take_reserved(&index, 100);
        }
        assert!(index.get(&entries[0].key()).is_some());
        assert_eq!(index.matching(0, |p| p.starts_with("/d/")).len(), 3);
        assert!(index.any_matching(0, |p| p == "/d/1"));
        assert!(
            !index.any_matching(1, |p| p == "/d/1"),
            "another site has nothing"
        );
        assert_eq!(lru_order(&index), vec![1, 2, 0]);
        assert!(index.reserve_new(100));
        assert_eq!(
            *log.lock(),
            vec![(1, false)],
            "the least recently used goes first"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert { path: u8, overhead: u64 },
        Reserve { who: usize, bytes: u64 },
        Uncharge { who: usize, quarters: u64 },
        Retire { who: usize, replaced: bool },
        ChargeExisting(u64),
        Get(u8),
    }

    const CAP: u64 = 1000;

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            3 => (0u8..6, 0u64..=150).prop_map(|(path, overhead)| Op::Insert { path, overhead }),
            6 => (any::<usize>(), prop_oneof![9 => 0u64..=400, 1 => 900u64..=1200])
                .prop_map(|(who, bytes)| Op::Reserve { who, bytes }),
            2 => (any::<usize>(), 0u64..=4).prop_map(|(who, quarters)| Op::Uncharge { who, quarters }),
            2 => (any::<usize>(), any::<bool>()).prop_map(|(who, replaced)| Op::Retire { who, replaced }),
            1 => (0u64..=100).prop_map(Op::ChargeExisting),
            2 => (0u8..6).prop_map(Op::Get),
        ]
    }

    /// The index as a plain list: ids from least to most recently used, each entry's charge.
    #[derive(Default)]
    struct Model {
        lru: Vec<usize>,
        /// (path, charged, detached) by id.
        entries: Vec<(u8, u64, bool)>,
        used: u64,
        /// Charged bytes that belong to no object (folders).
        extra: u64,
        log: Vec<(usize, bool)>,
    }

    impl Model {
        fn detach(&mut self, id: usize, replaced: bool) {
            self.log.push((id, replaced));
            let entry = &mut self.entries[id];
            self.used -= std::mem::take(&mut entry.1);
            entry.2 = true;
        }

        fn evict_until(&mut self, bytes: u64, keep: Option<usize>) -> bool {
            let mut kept = None;
            let fits = loop {
                if self.used + bytes <= CAP {
                    break true;
                }
                if self.lru.is_empty() {
                    break false;
                }
                let victim = self.lru.remove(0);
                if Some(victim) == keep {
                    kept = Some(victim);
                    continue;
                }
                self.detach(victim, false);
            };
            self.lru.extend(kept);
            fits
        }

        fn reserve(&mut self, keep: Option<usize>, bytes: u64) -> bool {
            if bytes > CAP || !self.evict_until(bytes, keep) {
                return false;
            }
            self.used += bytes;
            true
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Random inserts, reservations, give-backs, retirements, folder charges and lookups:
        /// `used` stays under the cap and equals the sum of charges, evictions follow the
        /// model's LRU order, and no reservation ever evicts its own requester.
        #[test]
        fn accounting_and_eviction_follow_the_model(ops in proptest::collection::vec(op(), 1..60)) {
            use proptest::prop_assert_eq;
            let log = log();
            let index = CacheIndex::<Fake>::new(CAP);
            let mut fakes: Vec<Arc<Fake>> = Vec::new();
            let mut model = Model::default();
            for op in ops {
                match op {
                    Op::Insert { path, overhead } => {
                        let id = fakes.len();
                        let granted = index.reserve_new(overhead);
                        prop_assert_eq!(granted, model.reserve(None, overhead));
                        let charged = if granted { overhead } else { 0 };
                        let fake = Fake::new(id, &format!("/{path}"), charged, &log);
                        fakes.push(fake.clone());
                        model.entries.push((path, charged, false));
                        index.insert(fake);
                        let previous = model.lru.iter().position(|&i| model.entries[i].0 == path);
                        if let Some(at) = previous {
                            let old = model.lru.remove(at);
                            model.detach(old, true);
                        }
                        model.lru.push(id);
                    }
                    Op::Reserve { who, bytes } if !fakes.is_empty() => {
                        let who = who % fakes.len();
                        let before = log.lock().len();
                        let granted = index.reserve(&fakes[who], bytes);
                        prop_assert_eq!(granted, model.reserve(Some(who), bytes));
                        proptest::prop_assert!(
                            log.lock()[before..].iter().all(|(id, _)| *id != who),
                            "a reservation evicted its own requester"
                        );
                        if granted {
                            fakes[who].take_reserved(&index, bytes);
                            if !model.entries[who].2 {
                                model.entries[who].1 += bytes;
                            } else {
                                model.used -= bytes;
                            }
                        }
                    }
                    Op::Uncharge { who, quarters } if !fakes.is_empty() => {
                        let who = who % fakes.len();
                        let mut state = fakes[who].state.lock();
                        let bytes = state.0 * quarters / 4;
                        if !state.1 {
                            state.0 -= bytes;
                            index.release(bytes);
                            model.entries[who].1 -= bytes;
                            model.used -= bytes;
                        }
                    }
                    Op::Retire { who, replaced } if !fakes.is_empty() => {
                        let who = who % fakes.len();
                        match replaced {
                            true => index.retire_replaced(&fakes[who]),
                            false => index.retire(&fakes[who]),
                        }
                        model.lru.retain(|&i| i != who);
                        model.detach(who, replaced);
                    }
                    Op::ChargeExisting(bytes) if model.extra + bytes <= CAP / 2 => {
                        index.charge_existing(bytes);
                        model.extra += bytes;
                        model.used += bytes;
                        model.evict_until(0, None);
                    }
                    Op::Get(path) => {
                        let found = index.get(&(0, Arc::from(format!("/{path}")))).map(|f| f.id);
                        let at = model.lru.iter().position(|&i| model.entries[i].0 == path);
                        let want = at.map(|at| model.lru.remove(at));
                        model.lru.extend(want);
                        prop_assert_eq!(found, want);
                    }
                    _ => {}
                }
                let used = index.used();
                proptest::prop_assert!(used <= CAP, "used {} over the cap", used);
                prop_assert_eq!(used, model.used);
                let charges: u64 = fakes.iter().map(|f| f.charged()).sum();
                prop_assert_eq!(used, charges + model.extra, "used is not the sum of charges");
                prop_assert_eq!(lru_order(&index), model.lru.clone());
                prop_assert_eq!(index.object_count(), model.lru.len());
                prop_assert_eq!(log.lock().clone(), model.log.clone());
                for (fake, entry) in fakes.iter().zip(&model.entries) {
                    prop_assert_eq!(fake.is_detached(), entry.2);
                }
            }
        }
    }

    /// Threads reserving, keeping and giving back bytes at once, while another samples
    /// `used`: it never passes the cap, and in the end equals the charges exactly.
    #[test]
    fn concurrent_reservations_never_pass_the_cap() {
        let log = log();
        let index = Arc::new(CacheIndex::<Fake>::new(10_000));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let (index, stop) = (index.clone(), stop.clone());
            std::thread::spawn(move || {
                // At least one sample, however late this thread is scheduled on a busy machine.
                let mut samples = 0u64;
                loop {
                    assert!(index.used() <= index.cap(), "used passed the cap");
                    samples += 1;
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break samples;
                    }
                }
            })
        };
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let (index, log) = (index.clone(), log.clone());
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    let mut seed = t as u64 + 1;
                    for round in 0..400 {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let pick = (seed >> 33) as usize;
                        if mine.is_empty() || pick.is_multiple_of(7) {
                            let fake =
                                Fake::new(t * 1000 + round, &format!("/{t}/{}", pick % 5), 0, &log);
                            index.insert(fake.clone());
                            mine.push(fake);
                            continue;
                        }
                        let fake = &mine[pick % mine.len()];
                        let bytes = (pick % 1500) as u64;
                        if index.reserve(fake, bytes) {
                            fake.take_reserved(&index, bytes);
                        }
                        if pick.is_multiple_of(5) {
                            let mut state = fake.state.lock();
                            if !state.1 {
                                let back = state.0 / 2;
                                state.0 -= back;
                                index.release(back);
                            }
                        }
                        if pick.is_multiple_of(11) {
                            index.retire(fake);
                        }
                    }
                    mine
                })
            })
            .collect();
        let fakes: Vec<Arc<Fake>> = workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(sampler.join().expect("sampler") > 0);
        let charges: u64 = fakes.iter().map(|f| f.charged()).sum();
        assert_eq!(index.used(), charges);
        assert!(index.used() <= index.cap());
        let detached_charge: u64 = fakes
            .iter()
            .filter(|f| f.is_detached())
            .map(|f| f.charged())
            .sum();
        assert_eq!(detached_charge, 0, "a detached entry holds no charge");
    }
}
