//! Cache index: the in-memory LRU of cached objects, and the accounting that keeps the cache
//! directory under `max_cache_size`.
//!
//! Invariant: `used` never exceeds `cap`. Space is reserved *before* anything is written, and
//! eviction (which removes files) completes before a reservation is granted. Eviction and
//! retirement run under `evict_lock`, so a key's old files are always gone before a new
//! object with the same key creates its own.
//!
//! Memory: one entry is an `Arc<Object>` (about 300 bytes plus the path) and 16 bytes per
//! block of the object's size, e.g. 16 KiB for a 1 GiB object with 1 MiB blocks.

use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use crate::object::{Object, SiteId};

pub type ObjectKey = (SiteId, Arc<str>);

struct IndexState {
    objects: LruCache<ObjectKey, Arc<Object>>,
    used: u64,
}

pub struct CacheIndex {
    cap: u64,
    state: Mutex<IndexState>,
    evict_lock: Mutex<()>,
}

impl CacheIndex {
    pub fn new(cap: u64) -> CacheIndex {
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
    pub fn get(&self, key: &ObjectKey) -> Option<Arc<Object>> {
        self.state.lock().objects.get(key).cloned()
    }

    /// Objects of `site` whose path `matches`, without touching their recency.
    pub fn matching(&self, site: SiteId, matches: impl Fn(&str) -> bool) -> Vec<Arc<Object>> {
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
    pub fn restore(&self, object: Arc<Object>, charge: u64) {
        let mut state = self.state.lock();
        state.used += charge;
        let key = (object.site, object.path.clone());
        state.objects.put(key, object);
    }

    /// Charges bytes that are already on disk (directory growth); evicts to get back under
    /// the cap if they pushed it over.
    pub fn charge_existing(&self, bytes: u64) {
        let _evicting = self.evict_lock.lock();
        self.state.lock().used += bytes;
        self.evict_until(0, None);
    }

    /// Inserts a new object. The caller has retired any older object under the same key.
    pub fn insert(&self, object: Arc<Object>) {
        let key = (object.site, object.path.clone());
        let previous = self.state.lock().objects.put(key, object);
        if let Some(previous) = previous {
            self.forget_charge(&previous, true);
        }
    }

    /// Takes `object` out of the index (if it is still the entry) and removes its files.
    pub fn retire(&self, object: &Arc<Object>) {
        self.retire_as(object, false);
    }

    /// Like [`retire`](Self::retire), for a version the origin replaced: files that are open
    /// keep reading what was cached of it.
    pub fn retire_replaced(&self, object: &Arc<Object>) {
        self.retire_as(object, true);
    }

    fn retire_as(&self, object: &Arc<Object>, replaced: bool) {
        let _evicting = self.evict_lock.lock();
        let key = (object.site, object.path.clone());
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

    fn forget_charge(&self, object: &Object, replaced: bool) {
        let freed = object.detach(replaced);
        let mut state = self.state.lock();
        state.used = state.used.saturating_sub(freed);
    }

    /// Reserves `bytes` for `requester`, evicting least-recently-used objects as needed.
    /// Returns false when the cache cannot make room: the caller then does not cache.
    pub fn reserve(&self, requester: &Object, bytes: u64) -> bool {
        self.reserve_for(Some(requester), bytes)
    }

    /// Reserves `bytes` for an object that is not in the index yet.
    pub fn reserve_new(&self, bytes: u64) -> bool {
        self.reserve_for(None, bytes)
    }

    fn reserve_for(&self, requester: Option<&Object>, bytes: u64) -> bool {
        if bytes > self.cap {
            return false;
        }
        let _evicting = self.evict_lock.lock();
        if !self.evict_until(bytes, requester) {
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

    /// Evicts until `bytes` more fit under the cap. Never evicts `keep`.
    /// Must be called with `evict_lock` held.
    fn evict_until(&self, bytes: u64, keep: Option<&Object>) -> bool {
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
            tracing::debug!(path = %victim.path, "evicting");
            self.forget_charge(&victim, false);
        };
        if let Some((key, object)) = kept_back {
            self.state.lock().objects.put(key, object);
        }
        fits
    }
}
