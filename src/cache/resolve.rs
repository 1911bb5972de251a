//! Resolving a path to a fresh object version: from memory, or with one probe of the origin
//! shared by every concurrent caller, with negative answers and stale-if-error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::object::{Identity, Object};
use super::{Cache, WAIT_GRACE};
use crate::base::flight::Flight;
use crate::base::{now_secs, FsError, FsResult, ObjectKind, SiteId};
use crate::origin::{CacheControl, Probe, Version};
use crate::store::{self, MetaHeader, OBJECT_OVERHEAD};

/// How long an answer stays fresh, and whether it may be kept on disk.
#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    pub ttl: Duration,
    pub store: bool,
}

/// What a probe found for a path, with the freshness it earns.
pub struct Found {
    pub version: Version,
    pub freshness: Freshness,
}

impl Cache {
    /// Answers from memory alone: a fresh object, a fresh not-found, or `None` (ask the origin).
    pub fn lookup_fresh(&self, site: SiteId, path: &Arc<str>) -> Option<FsResult<Arc<Object>>> {
        let key = (site, path.clone());
        let now = now_secs();
        if let Some(object) = self.index.get(&key) {
            return object.is_fresh(now).then_some(Ok(object));
        }
        if let Some(object) = self.small_object(site, path) {
            return object.is_fresh(now).then_some(Ok(object));
        }
        let mut negative = self.negative.lock();
        match negative.get(&key) {
            Some(expires) if *expires > Instant::now() => Some(Err(FsError::NotFound)),
            Some(_) => {
                negative.pop(&key);
                None
            }
            None => None,
        }
    }

    /// Resolves a path to a fresh object, asking the origin at most once for any number of
    /// concurrent callers. The caller waits until `deadline`; the probe itself goes on for
    /// the others who wait for it.
    pub async fn resolve(
        self: &Arc<Self>,
        site: SiteId,
        path: Arc<str>,
        deadline: Instant,
    ) -> FsResult<Arc<Object>> {
        if let Some(answer) = self.lookup_fresh(site, &path) {
            return answer;
        }
        let key = (site, path.clone());
        let (flight, leader) = {
            let mut probes = self.probes.lock();
            match probes.get(&key) {
                Some(flight) => (flight.clone(), false),
                None => {
                    let flight = Flight::new();
                    probes.insert(key.clone(), flight.clone());
                    (flight, true)
                }
            }
        };
        if leader {
            // A task of its own: a caller that goes away must not strand the other waiters.
            let cache = self.clone();
            let flight = flight.clone();
            tokio::spawn(async move {
                let result = cache.probe_and_record(site, path, deadline).await;
                cache.probes.lock().remove(&key);
                flight.finish(result);
            });
        }
        match tokio::time::timeout_at((deadline + WAIT_GRACE).into(), flight.wait()).await {
            Ok(result) => result,
            Err(_) => Err(FsError::Timeout),
        }
    }

    async fn probe_and_record(
        &self,
        site: SiteId,
        path: Arc<str>,
        deadline: Instant,
    ) -> FsResult<Arc<Object>> {
        let key = (site, path.clone());
        let existing = self
            .index
            .get(&key)
            .or_else(|| self.small_object(site, &path));
        let known = existing.as_ref().map(|o| o.version());
        let block_size = self.config.block_size;
        let probe = self
            .origin
            .probe(self.site(site), &path, block_size, known, deadline)
            .await;
        let now = now_secs();
        match probe {
            Ok(Probe::NotModified) => match existing {
                Some(object) => {
                    object.renew(now);
                    Ok(object)
                }
                None => Err(FsError::BadAnswer("304 to an unconditional request".into())),
            },
            Ok(Probe::File {
                version,
                head,
                cache_control,
            }) => {
                let freshness = self.freshness(&path, cache_control);
                let found = Found { version, freshness };
                Ok(self.record_file(site, path, existing, found, head, now))
            }
            Ok(Probe::Directory) => {
                let freshness = self.freshness(&path, CacheControl::default());
                Ok(self.record_directory(site, path, existing, freshness, now))
            }
            Ok(Probe::NotFound) => {
                if let Some(old) = existing {
                    self.retire(&old);
                }
                let expires = Instant::now() + self.config.negative_ttl;
                self.negative.lock().put(key, expires);
                Err(FsError::NotFound)
            }
            Err(error) => self.stale_if_error(site, path, existing, error, now),
        }
    }

    /// The origin failed: what the cache holds beats an error. A directory whose own record
    /// is gone but whose children are cached is still served as a directory.
    fn stale_if_error(
        &self,
        site: SiteId,
        path: Arc<str>,
        existing: Option<Arc<Object>>,
        error: FsError,
        now: u64,
    ) -> FsResult<Arc<Object>> {
        if let Some(object) = existing {
            tracing::warn!(path = %path, "origin failed ({error}); serving the cached copy");
            return Ok(object);
        }
        let below = format!("{path}/");
        if self.index.any_matching(site, |p| p.starts_with(&below)) {
            tracing::warn!(path = %path, "origin failed ({error}); serving the cached directory");
            let freshness = Freshness {
                ttl: Duration::ZERO,
                store: false,
            };
            return Ok(self.record_directory(site, path, None, freshness, now));
        }
        tracing::warn!(path = %path, "origin failed: {error}");
        Err(error)
    }

    /// A version the origin replaced (or no longer has) leaves the cache, from the index or
    /// the packed store.
    pub(super) fn retire(&self, old: &Arc<Object>) {
        match old.is_small() {
            true => self.forget_small(old.site(), old.path()),
            false => self.index.retire_replaced(old),
        }
    }

    fn record_file(
        &self,
        site: SiteId,
        path: Arc<str>,
        existing: Option<Arc<Object>>,
        found: Found,
        head: Bytes,
        now: u64,
    ) -> Arc<Object> {
        if let Some(object) = self.record_small(site, &path, &found, &head, now) {
            if let Some(old) = existing.filter(|old| !old.is_small()) {
                self.index.retire_replaced(&old);
            }
            return object;
        }
        if existing.as_ref().is_some_and(|old| old.is_small()) {
            self.forget_small(site, &path);
        }
        let existing = existing.filter(|old| !old.is_small());
        let block_size = self.config.block_size as usize;
        let first_block = head.slice(..head.len().min(block_size));
        let object = match existing {
            Some(object)
                if object.kind() == ObjectKind::File
                    && *object.version() == found.version
                    && self.same_content_start(&object, &first_block) =>
            {
                object.renew(now);
                object
            }
            other => {
                if let Some(old) = other {
                    self.index.retire_replaced(&old);
                }
                self.create_object(site, path, ObjectKind::File, found, now)
            }
        };
        self.store_head(&object, &head);
        object
    }

    /// Without validators, an unchanged size says little: the probe's first block must also
    /// agree with what the cached version handed out.
    fn same_content_start(&self, object: &Object, first_block: &[u8]) -> bool {
        object.version().is_pinned()
            || first_block.is_empty()
            || object.agrees_unpinned(0, first_block)
    }

    /// Keeps the blocks a probe brought along (its first block, or the whole of an answer
    /// that had no length).
    fn store_head(&self, object: &Arc<Object>, head: &Bytes) {
        let block_size = object.block_size() as usize;
        for (block, start) in (0..head.len()).step_by(block_size).enumerate() {
            let block = block as u64;
            let range = object.block_range(block);
            let piece = head.slice(start..(start + block_size).min(head.len()));
            let whole = piece.len() as u64 == range.end - range.start;
            if !whole || object.has_cached_block(block) {
                continue;
            }
            if !object.version().is_pinned() && !object.agrees_unpinned(block, &piece) {
                return;
            }
            object.store_block(block, std::slice::from_ref(&piece), None);
        }
    }

    fn record_directory(
        &self,
        site: SiteId,
        path: Arc<str>,
        existing: Option<Arc<Object>>,
        freshness: Freshness,
        now: u64,
    ) -> Arc<Object> {
        match existing {
            Some(object) if object.kind() == ObjectKind::Directory => {
                object.renew(now);
                object
            }
            other => {
                if let Some(old) = other {
                    self.retire(&old);
                }
                let version = Version {
                    size: 0,
                    etag: None,
                    last_modified: None,
                };
                let found = Found { version, freshness };
                self.create_object(site, path, ObjectKind::Directory, found, now)
            }
        }
    }

    /// Creates the object's metadata on disk when the cap allows, else keeps it in memory only.
    fn create_object(
        &self,
        site: SiteId,
        path: Arc<str>,
        kind: ObjectKind,
        found: Found,
        now: u64,
    ) -> Arc<Object> {
        let Found { version, freshness } = found;
        let identity = Identity {
            site,
            path,
            kind,
            version,
            block_size: self.config.block_size,
        };
        // no-store: the object lives in memory only, and every read goes to the origin.
        let location = match freshness.store {
            true => self.persist_header(site, &self.meta_header(&identity, freshness, now)),
            false => None,
        };
        let charge = location.as_ref().map_or(0, |_| OBJECT_OVERHEAD);
        let index = Arc::downgrade(&self.index);
        let ttl = (freshness.ttl, now);
        let object = Arc::new(Object::new(identity, ttl, location, charge, index));
        self.index.insert(object.clone());
        object
    }

    /// The durable description of a new object version.
    fn meta_header(&self, identity: &Identity, freshness: Freshness, now: u64) -> MetaHeader {
        let version = &identity.version;
        MetaHeader {
            site: self.sites[identity.site].store.name.clone(),
            path: identity.path.to_string(),
            kind: identity.kind,
            size: version.size,
            etag: version.etag.clone(),
            last_modified: version.last_modified.clone(),
            fetched_at: now,
            block_size: identity.block_size,
            ttl: freshness.ttl.as_secs(),
        }
    }

    fn persist_header(&self, site: SiteId, header: &MetaHeader) -> Option<store::ObjectLocation> {
        let located = self.sites[site].store.locate(&header.path, true);
        let (location, grown) = match located {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(path = %header.path, "cache unavailable, serving from the origin: {e}");
                return None;
            }
        };
        if grown > 0 {
            self.index.charge_existing(grown);
        }
        if !self.index.reserve_new(OBJECT_OVERHEAD) {
            return None;
        }
        match location.create(header) {
            Ok(_) => Some(location),
            Err(e) => {
                tracing::warn!(path = %header.path, "cache write failed, serving from the origin: {e}");
                self.index.release(OBJECT_OVERHEAD);
                None
            }
        }
    }

    /// The TTL of an answer: a matching `ttl_rule` first, then the origin's Cache-Control
    /// (unless `ignore_cache_control`), then `ttl`.
    fn freshness(&self, path: &str, cache_control: CacheControl) -> Freshness {
        let config = &self.config;
        let honour = !config.ignore_cache_control;
        let store = !(honour && cache_control.no_store);
        if let Some(rule) = config.ttl_rules.iter().find(|r| r.matches(path)) {
            return Freshness {
                ttl: rule.ttl,
                store,
            };
        }
        let ttl = match (honour, cache_control) {
            (true, CacheControl { no_store: true, .. } | CacheControl { no_cache: true, .. }) => {
                Duration::ZERO
            }
            (
                true,
                CacheControl {
                    max_age: Some(seconds),
                    ..
                },
            ) => Duration::from_secs(seconds),
            _ => config.ttl,
        };
        Freshness { ttl, store }
    }
}
