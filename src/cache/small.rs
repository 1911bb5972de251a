//! Small objects in the cache: each site's packed store, sized from the cache's cap, and the
//! lookups, records and invalidations of the versions kept there.
//!
//! A file whose whole version fits `small_object_max` (and one block) is kept as one record
//! of its site's packed store, straight from the probe that found it: no file, no inode, no
//! index entry. The store's bytes count against `max_cache_size` through [`CacheSpace`],
//! so the cap holds over both stores; the store itself may take `small_object_share` of it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::index::CacheIndex;
use super::object::{Identity, Object, SmallRef, SmallSite};
use super::resolve::Found;
use super::Cache;
use crate::base::{ObjectKind, SiteId};
use crate::config::Config;
use crate::store::packed::{PackedConfig, PackedStore, SharedSpace, MAX_KEY_LEN};
use crate::store::{SiteStore, PACKED_FOLDER};

/// Largest segment file: the unit of reclamation, and of the disk a roll charges at once.
const MAX_SEGMENT: u64 = 16 << 20;
/// How often records are made durable: a crash loses at most this much of the newest.
pub(super) const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The cache's cap, as the packed store sees it: its bytes are charged to the index, which
/// evicts large objects to make room for them.
struct CacheSpace(Arc<CacheIndex<Object>>);

impl SharedSpace for CacheSpace {
    fn take(&self, bytes: u64) -> bool {
        self.0.reserve_new(bytes)
    }

    fn give_back(&self, bytes: u64) {
        self.0.release(bytes)
    }

    fn charge_found(&self, bytes: u64) {
        self.0.charge_existing(bytes)
    }
}

/// How a site's packed store is sized, or `None` when small objects are off.
fn packed_config(config: &Config) -> Option<PackedConfig> {
    let max_object = config.small_object_max.min(config.block_size);
    if max_object == 0 {
        return None;
    }
    let cap = (config.max_cache_size as u128 * config.small_object_share as u128 / 100) as u64;
    let mut packed = PackedConfig::new(cap);
    // Small caps get small segments, so that four of them (the store's minimum) still fit;
    // each must hold two of the largest records.
    let largest = 2 * (max_object + 2 * MAX_KEY_LEN as u64 + 4096);
    packed.segment_size = (cap / 16)
        .clamp(largest, MAX_SEGMENT)
        .next_multiple_of(4096);
    packed.max_object = max_object as usize;
    packed.index_memory_limit = config.index_memory_limit;
    packed.checkpoint_every = packed.checkpoint_every.min(cap / 4).max(1);
    Some(packed)
}

/// Opens the packed store of one site's folder, sharing `index`'s cap. A store that cannot
/// open (a cap too small for its segments, a folder it cannot use) turns small objects off
/// for the site, with one warning: they are then cached as files, as large ones are.
pub(super) fn open_site(
    config: &Config,
    site: &SiteStore,
    index: &Arc<CacheIndex<Object>>,
) -> Option<Arc<SmallSite>> {
    let dir = site.dir().join(PACKED_FOLDER);
    let Some(packed) = packed_config(config) else {
        remove_unused(&dir);
        return None;
    };
    let shared: Arc<dyn SharedSpace> = Arc::new(CacheSpace(index.clone()));
    match PackedStore::open_sharing(&dir, packed, Some(shared)) {
        Ok(store) => Some(Arc::new(SmallSite::new(store))),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "small objects are cached as files: {e}");
            remove_unused(&dir);
            None
        }
    }
}

/// Removes a packed store no one will use: nothing would count its bytes against the cap.
fn remove_unused(dir: &std::path::Path) {
    if !dir.exists() {
        return;
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => tracing::info!(dir = %dir.display(), "removed the unused packed store"),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "cannot remove the unused packed store: {e}")
        }
    }
}

impl Cache {
    fn small_site(&self, site: SiteId) -> Option<&Arc<SmallSite>> {
        self.sites.get(site)?.small.as_ref()
    }

    /// The version the packed store keeps at `path`, fresh or not.
    pub(super) fn small_object(&self, site: SiteId, path: &Arc<str>) -> Option<Arc<Object>> {
        let small = self.small_site(site)?;
        if let Some(object) = small.live(path) {
            return Some(object);
        }
        let found = match small.store.get(path.as_bytes()) {
            Ok(found) => found?,
            Err(e) => {
                tracing::warn!(path = %path, "packed store read failed: {e}");
                return None;
            }
        };
        let object = Object::from_record(site, path.clone(), small, &found);
        if object.is_none() {
            tracing::warn!(path = %path, "packed record with unknown validators; dropped");
            let _ = small.store.remove(path.as_bytes());
        }
        let object = Arc::new(object?);
        small.keep_live(&object);
        Some(object)
    }

    /// The small object an inode keeps as `small`, rebuilt from its record when nothing has
    /// it in memory; `None` when the record holds another version now (or none), or an
    /// invalidation came after `small` was made.
    pub fn small_object_for(
        &self,
        site: SiteId,
        path: &Arc<str>,
        small: &SmallRef,
    ) -> Option<Arc<Object>> {
        if !self.small_is_current(site, small) {
            return None;
        }
        let object = self.small_object(site, path)?;
        (object.small_tag() == Some(small.tag)).then_some(object)
    }

    /// Whether no invalidation came after `small` was made.
    pub fn small_is_current(&self, site: SiteId, small: &SmallRef) -> bool {
        self.small_site(site).is_some_and(|s| s.is_current(small))
    }

    /// Keeps a file found by a probe as a small object, when its whole version came with the
    /// probe and fits; `None` otherwise (the caller caches it as files).
    pub(super) fn record_small(
        &self,
        site: SiteId,
        path: &Arc<str>,
        found: &Found,
        head: &Bytes,
        now: u64,
    ) -> Option<Arc<Object>> {
        let small = self.small_site(site)?;
        let size = found.version.size;
        let fits = size <= self.config.small_object_max.min(self.config.block_size);
        let whole = head.len() as u64 == size;
        if !(fits && whole && found.freshness.store && path.len() <= MAX_KEY_LEN) {
            return None;
        }
        let identity = Identity {
            site,
            path: path.clone(),
            kind: ObjectKind::File,
            version: found.version.clone(),
            block_size: self.config.block_size,
        };
        let freshness = (found.freshness.ttl, now);
        let object = Object::new_small(identity, freshness, small.clone(), head);
        if !object.put_new_small(head) {
            return None;
        }
        object.mark_small_fetched();
        let object = Arc::new(object);
        small.keep_live(&object);
        Some(object)
    }

    /// Forgets the small record at `path` (its version is gone, or is now cached as files).
    pub(super) fn forget_small(&self, site: SiteId, path: &str) {
        if let Some(small) = self.small_site(site) {
            if let Err(e) = small.store.remove(path.as_bytes()) {
                tracing::warn!(path, "cannot remove a packed record: {e}");
            }
            small.invalidate_all_made();
        }
    }

    /// Purges or expires the small objects whose paths `covers` accepts; returns how many
    /// and their bytes. A subtree reads every record's key back (a sweep of the store).
    pub(super) fn invalidate_small(
        &self,
        site: SiteId,
        covers: impl Fn(&str) -> bool,
        only: Option<&str>,
        purge: bool,
    ) -> (u64, u64) {
        let Some(small) = self.small_site(site) else {
            return (0, 0);
        };
        let keys: Vec<Arc<str>> = match only {
            Some(path) => vec![Arc::from(path)],
            None => {
                let matches = |key: &[u8]| std::str::from_utf8(key).is_ok_and(&covers);
                let keys = small.store.keys_matching(matches);
                keys.iter()
                    .filter_map(|k| std::str::from_utf8(k).ok().map(Arc::from))
                    .collect()
            }
        };
        let (mut objects, mut bytes) = (0, 0);
        for path in keys {
            let Some(object) = self.small_object(site, &path) else {
                continue;
            };
            objects += 1;
            bytes += object.size();
            match purge {
                true => self.forget_small(site, &path),
                false => object.expire(),
            }
        }
        small.invalidate_all_made();
        (objects, bytes)
    }

    /// Makes every small record put so far durable, and saves each store's index.
    pub(super) fn sync_small(&self, checkpoint: bool) {
        for small in self.sites.iter().filter_map(|s| s.small.as_ref()) {
            let done = match checkpoint {
                true => small.store.checkpoint(),
                false => small.store.sync(),
            };
            if let Err(e) = done {
                tracing::warn!("cannot sync the packed store: {e}");
            }
        }
    }

    /// Objects and segment bytes of every site's packed store.
    pub(super) fn small_usage(&self) -> (u64, u64) {
        let stats = self.sites.iter().filter_map(|s| s.small.as_ref());
        stats
            .map(|small| small.store.stats())
            .fold((0, 0), |(objects, bytes), s| {
                (objects + s.objects, bytes + s.used_bytes)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_shrink_with_small_caps_and_never_below_two_records() {
        let mut config = Config {
            max_cache_size: 8 << 20,
            ..Config::default()
        };
        let packed = packed_config(&config).unwrap();
        assert_eq!(packed.cap_bytes, 4 << 20);
        assert!(packed.segment_size >= 2 * (64 << 10));
        assert_eq!(packed.segment_size % 4096, 0);
        config.max_cache_size = 1 << 40;
        assert_eq!(packed_config(&config).unwrap().segment_size, MAX_SEGMENT);
        config.small_object_max = 0;
        assert!(packed_config(&config).is_none());
    }

    #[test]
    fn objects_never_outgrow_one_block() {
        let config = Config {
            block_size: 16 << 10,
            ..Config::default()
        };
        assert_eq!(packed_config(&config).unwrap().max_object, 16 << 10);
    }
}
