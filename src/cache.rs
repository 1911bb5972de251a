//! The cache as the file system sees it: resolves paths to fresh objects (probing or
//! revalidating at the origin when needed) and serves reads from cached or fetched blocks.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;

use crate::config::{cache_folder_name, Config, Origin};
use crate::error::{FsError, FsResult};
use crate::fetch::fetch_run;
use crate::flight::Waiter;
use crate::health::{HealthState, Pool};
use crate::index::{CacheIndex, ObjectKey};
use crate::listing;
use crate::object::{BlockSource, Delivered, Flight, Object, SiteId};
use crate::origin::{CacheControl, OriginClient, Probe, Site, Version};
use crate::readahead::Budget;
use crate::stats::{OriginHealth, Snapshot, Stats};
use crate::store::{self, MetaHeader, ObjectKind, SiteStore, OBJECT_OVERHEAD};
use crate::writer::WriteBehind;

/// How many not-found answers are remembered at most.
const NEGATIVE_ENTRIES: usize = 65_536;
/// How often freed heap memory is returned to the system. Blocks pass through memory by the
/// megabyte, and glibc would otherwise keep the freed space resident after a burst.
const MEMORY_TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Directory listings kept in memory at most (more stay on disk).
const LISTINGS_IN_MEMORY: usize = 4096;

/// A read's source for one block, with flights already waited for.
enum Pending {
    Disk {
        file: Arc<std::fs::File>,
        crc: u32,
        verified: bool,
    },
    Flight(Waiter<Delivered>),
    Gate(Waiter<()>),
    Gone,
}

impl From<BlockSource> for Pending {
    fn from(source: BlockSource) -> Pending {
        match source {
            BlockSource::Disk {
                file,
                crc,
                verified,
                ..
            } => Pending::Disk {
                file,
                crc,
                verified,
            },
            BlockSource::Flight(flight) => Pending::Flight(flight.waiter()),
            BlockSource::Wait(gate) => Pending::Gate(gate.waiter()),
            BlockSource::Gone => Pending::Gone,
        }
    }
}

/// A directory's entries as the origin listed them, and when.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Listing {
    /// The directory (`""` for the site root); lets an expiry find listings on disk.
    #[serde(default)]
    dir: String,
    fetched_at: u64,
    entries: Arc<Vec<listing::Entry>>,
}

/// Read attempts: a corrupt cached block, a block that reached the cache while the read
/// waited for it, or another fetch that had to end first makes the read plan again; past
/// this many it gives up with EIO.
const READ_ATTEMPTS: usize = 6;

/// How long past its deadline a caller waits for the work it started, which stops at the
/// deadline: the work's own outcome then reaches the caller.
const WAIT_GRACE: Duration = Duration::from_millis(200);

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One namespace root: an origin (or virtual host) and its cache folder.
pub struct SiteEntry {
    pub site: Site,
    /// The name a virtual host is listed under at the mount root.
    pub name: String,
    store: SiteStore,
}

impl SiteEntry {
    fn open(
        config: &Config,
        origins: Vec<Origin>,
        name: String,
        host: Option<String>,
    ) -> Result<SiteEntry, String> {
        let folder = cache_folder_name(&origins, &name);
        Ok(SiteEntry {
            site: Site {
                pool: Pool::new(origins),
                host,
            },
            name,
            store: SiteStore::open(&config.cache_dir, &folder)?,
        })
    }
}

/// What `unlink()` and the control commands do to cached objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Invalidation {
    /// Drop the object: the next access downloads it again.
    Purge,
    /// End its TTL now: the next access revalidates, and a 304 keeps every block.
    Expire,
    /// Delete it for good, files and all.
    Hardpurge,
}

impl std::str::FromStr for Invalidation {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "purge" => Ok(Invalidation::Purge),
            "expire" => Ok(Invalidation::Expire),
            "hardpurge" => Ok(Invalidation::Hardpurge),
            other => Err(format!("`{other}` is not purge, expire or hardpurge")),
        }
    }
}

/// What an invalidation touched.
#[derive(Debug, Default, Clone, Copy)]
pub struct InvalidationReport {
    pub objects: u64,
    /// Cached data bytes of those objects.
    pub bytes: u64,
}

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

pub struct Cache {
    pub config: Config,
    pub stats: Arc<Stats>,
    pub origin: OriginClient,
    pub index: CacheIndex,
    /// Prefetch memory shared by every open file.
    pub readahead: Arc<Budget>,
    /// Bound on fetched bytes waiting for the disk.
    pub write_behind: WriteBehind,
    runtime: tokio::runtime::Handle,
    sites: Vec<SiteEntry>,
    negative: Mutex<LruCache<ObjectKey, Instant>>,
    listings: Mutex<LruCache<ObjectKey, Listing>>,
    probes: Mutex<HashMap<ObjectKey, Arc<Flight<Arc<Object>>>>>,
}

impl Cache {
    /// Opens every site's cache folder (locking it) and loads what is cached there.
    pub fn open(config: Config) -> Result<Cache, String> {
        let access_log = match &config.access_log {
            Some(path) => Some(
                store::open_private_log(path)
                    .map_err(|e| format!("cannot open access_log {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let stats = Arc::new(Stats::new(access_log));
        let origin = OriginClient::new(&config, stats.clone())?;
        store::create_private_dir(&config.cache_dir).map_err(|e| {
            format!(
                "cannot create cache dir {}: {e}",
                config.cache_dir.display()
            )
        })?;
        let mut sites = Vec::new();
        if let Some(first) = config.origins.first() {
            let host = first
                .base
                .split("://")
                .nth(1)
                .unwrap_or_default()
                .to_string();
            sites.push(SiteEntry::open(
                &config,
                config.origins.clone(),
                host,
                None,
            )?);
        }
        for vhost in &config.vhosts {
            let (name, host) = (vhost.name.clone(), Some(vhost.name.clone()));
            sites.push(SiteEntry::open(&config, vhost.origins.clone(), name, host)?);
        }
        let cache = Cache {
            stats,
            index: CacheIndex::new(config.max_cache_size),
            readahead: Arc::new(Budget::new(config.readahead_budget)),
            write_behind: WriteBehind::new(config.block_size),
            runtime: tokio::runtime::Handle::try_current()
                .map_err(|_| "the cache must be opened inside the I/O runtime".to_string())?,
            origin,
            sites,
            negative: Mutex::new(LruCache::new(
                NonZeroUsize::new(NEGATIVE_ENTRIES).unwrap_or(NonZeroUsize::MIN),
            )),
            probes: Mutex::new(HashMap::new()),
            listings: Mutex::new(LruCache::new(
                NonZeroUsize::new(LISTINGS_IN_MEMORY).unwrap_or(NonZeroUsize::MIN),
            )),
            config,
        };
        cache.load();
        Ok(cache)
    }

    /// Restores the index from disk, oldest first, then trims it to the cap.
    fn load(&self) {
        let mut loaded = Vec::new();
        for (site, entry) in self.sites.iter().enumerate() {
            let limits = store::LoadLimits {
                max_object_size: self.config.max_object_size,
            };
            let objects = entry.store.load(&limits).into_iter();
            loaded.extend(objects.map(|object| (site, object)));
        }
        loaded.sort_by_key(|(_, object)| object.last_used);
        let count = loaded.len();
        for (site, object) in loaded {
            let restored = Object::restore(site, object, 0);
            let charge = OBJECT_OVERHEAD + restored.cached_charge();
            restored.add_charge(charge);
            self.index.restore(Arc::new(restored), charge);
        }
        let folders: u64 = self.sites.iter().map(|s| s.store.folder_bytes()).sum();
        self.index.charge_existing(folders);
        tracing::info!(
            objects = count,
            bytes = self.index.used(),
            cap = self.index.cap(),
            "cache index loaded"
        );
    }

    /// A fresh listing's entry for `name` in `dir`, from memory only (never asks the origin).
    pub fn listed_entry(&self, site: SiteId, dir: &str, name: &str) -> Option<listing::Entry> {
        let mut listings = self.listings.lock();
        let listing = listings.get(&(site, Arc::from(dir)))?;
        if now_secs()
            >= listing
                .fetched_at
                .saturating_add(self.config.listing_ttl.as_secs())
        {
            return None;
        }
        let found = listing
            .entries
            .binary_search_by(|e| e.name.as_str().cmp(name))
            .ok()?;
        Some(listing.entries[found].clone())
    }

    /// The entries of directory `dir` (`""` for the site root): from memory, from disk, or
    /// from the origin's index page (or manifest). No listing at all is an empty directory.
    pub async fn listing(&self, site: SiteId, dir: &str) -> Arc<Vec<listing::Entry>> {
        let key: ObjectKey = (site, Arc::from(dir));
        let now = now_secs();
        let ttl = self.config.listing_ttl.as_secs();
        let deadline = std::time::Instant::now() + self.request_timeout();
        let remembered = self
            .listings
            .lock()
            .get(&key)
            .cloned()
            .or_else(|| self.load_listing(site, dir));
        if let Some(listing) = remembered
            .as_ref()
            .filter(|l| now < l.fetched_at.saturating_add(ttl))
        {
            return listing.entries.clone();
        }
        let fetched = match &self.config.manifest {
            Some(manifest) => self
                .origin
                .fetch_listing(self.site(site), manifest, deadline)
                .await
                .map(|body| body.map(|b| listing::entries_from_manifest(&b, dir))),
            None => {
                let page = format!("{dir}/");
                self.origin
                    .fetch_listing(self.site(site), &page, deadline)
                    .await
                    .map(|body| body.map(|b| listing::parse(&b)))
            }
        };
        let entries = match (fetched, remembered) {
            (Ok(found), _) => Arc::new(found.unwrap_or_default()),
            // Stale-if-error: an old listing beats none.
            (Err(_), Some(old)) => return old.entries,
            (Err(_), None) => return Arc::new(Vec::new()),
        };
        let listing = Listing {
            dir: dir.to_string(),
            fetched_at: now,
            entries: entries.clone(),
        };
        self.save_listing(site, dir, &listing);
        self.listings.lock().put(key, listing);
        entries
    }

    fn load_listing(&self, site: SiteId, dir: &str) -> Option<Listing> {
        let bytes = self.sites[site].store.load_listing(dir)?;
        serde_json::from_slice(&bytes).ok()
    }

    fn save_listing(&self, site: SiteId, dir: &str, listing: &Listing) {
        let Ok(json) = serde_json::to_vec(listing) else {
            return;
        };
        match self.sites[site].store.save_listing(dir, &json) {
            Ok((now_takes, took)) if now_takes > took => {
                self.index.charge_existing(now_takes - took)
            }
            Ok((now_takes, took)) => self.index.release(took - now_takes),
            Err(e) => tracing::warn!(dir, "cannot save listing: {e}"),
        }
    }

    /// Records every stored but not yet journaled block, so an unmount loses nothing.
    pub fn flush(&self) {
        for entry in 0..self.sites.len() {
            for object in self.index.matching(entry, |_| true) {
                object.record_now();
            }
        }
    }

    /// Every figure of `ston-fs stats`, as of now.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = self.stats.snapshot();
        snapshot.cache_bytes = self.index.used();
        snapshot.cache_cap = self.index.cap();
        snapshot.cache_objects = self.index.object_count() as u64;
        for entry in &self.sites {
            for member in &entry.site.pool.members {
                let state = member.state();
                snapshot.origins.push(OriginHealth {
                    site: entry.name.clone(),
                    origin: member.origin.to_string(),
                    healthy: state == HealthState::Healthy,
                    state: state.name().to_string(),
                    last_error: member.last_error(),
                });
            }
        }
        snapshot
    }

    /// Applies an invalidation to one path, or to what lies below a directory when the path
    /// ends in `/*` (the directory's own record stays). Listings of the directories it
    /// covers expire too, and so do remembered not-found answers below them.
    pub fn invalidate(&self, site: SiteId, path: &str, action: Invalidation) -> InvalidationReport {
        let (dir, below) = match path.strip_suffix("/*") {
            Some(dir) => (dir.to_string(), format!("{dir}/")),
            None => (path.to_string(), format!("{path}/")),
        };
        let subtree = path.ends_with("/*");
        let covers = |p: &str| p.starts_with(&below) || (!subtree && p == path);
        let mut report = InvalidationReport::default();
        for object in self.index.matching(site, covers) {
            report.objects += 1;
            report.bytes += object.cached_bytes();
            match action {
                Invalidation::Expire => object.expire(),
                Invalidation::Purge | Invalidation::Hardpurge => self.index.retire(&object),
            }
        }
        {
            let mut negative = self.negative.lock();
            let gone: Vec<ObjectKey> = negative
                .iter()
                .map(|(key, _)| key)
                .filter(|(s, p)| *s == site && (p.starts_with(&below) || **p == *path))
                .cloned()
                .collect();
            for key in gone {
                negative.pop(&key);
            }
        }
        let listed = |d: &str| d == dir || (subtree && d.starts_with(&below));
        self.expire_listings(site, listed);
        tracing::info!(
            path,
            ?action,
            objects = report.objects,
            bytes = report.bytes,
            "invalidated"
        );
        report
    }

    /// Ends the TTL of the listings of directories that `matches`, in memory and on disk;
    /// the old entries stay as a fallback for when the origin is down.
    fn expire_listings(&self, site: SiteId, matches: impl Fn(&str) -> bool) {
        for (key, listing) in self.listings.lock().iter_mut() {
            if key.0 == site && matches(&key.1) {
                listing.fetched_at = 0;
            }
        }
        self.sites[site].store.rewrite_listings(|bytes| {
            let mut listing: Listing = serde_json::from_slice(bytes).ok()?;
            if !matches(&listing.dir) || listing.fetched_at == 0 {
                return None;
            }
            listing.fetched_at = 0;
            serde_json::to_vec(&listing).ok()
        });
    }

    /// Splits a mount-relative path (`/host/a/b` with virtual hosts) into site and path.
    pub fn split_mount_path(&self, path: &str) -> Option<(SiteId, String)> {
        let path = format!("/{}", path.trim_start_matches('/'));
        if !self.config.origins.is_empty() {
            return Some((0, path.trim_end_matches('/').to_string()));
        }
        let rest = &path[1..];
        let (host, inside) = rest.split_once('/').unwrap_or((rest, ""));
        let site = self.vhost_named(host)?;
        Some((site, format!("/{inside}").trim_end_matches('/').to_string()))
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

    /// Starts the background work of a live mount: probing excluded origins, and handing
    /// memory freed after bursts of traffic back to the system.
    pub fn start_background(self: &Arc<Self>) {
        self.runtime.spawn(async {
            let mut ticks = tokio::time::interval(MEMORY_TRIM_INTERVAL);
            loop {
                ticks.tick().await;
                // SAFETY: malloc_trim only returns free heap pages to the kernel.
                let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
            }
        });
        let cache = self.clone();
        self.runtime.spawn(async move {
            let mut ticks = tokio::time::interval(cache.config.health.probe_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                for entry in &cache.sites {
                    for member in entry.site.pool.excluded() {
                        let deadline = Instant::now() + cache.request_timeout();
                        cache
                            .origin
                            .probe_health(&entry.site, member, deadline)
                            .await;
                    }
                }
            }
        });
    }

    /// Tries a connection to every origin; returns one line for each that failed.
    pub async fn unreachable_origins(&self) -> Vec<String> {
        let timeout = self.config.connect_timeout;
        let members = self.sites.iter().flat_map(|e| e.site.pool.members.iter());
        let checks = members.map(|member| async move {
            let result = OriginClient::connectable(&member.origin, timeout).await;
            (member, result)
        });
        let mut warnings = Vec::new();
        for (member, result) in futures_util::future::join_all(checks).await {
            if let Err(reason) = result {
                self.origin.record_unreachable(member, &reason);
                warnings.push(format!("origin {} is unreachable: {reason}", member.origin));
            }
        }
        warnings
    }

    pub fn origin(&self) -> &OriginClient {
        &self.origin
    }

    pub fn readahead_budget(&self) -> Arc<Budget> {
        self.readahead.clone()
    }

    /// The deadline of one file-system call that needs the origin.
    pub fn request_timeout(&self) -> Duration {
        self.config.request_timeout()
    }

    pub fn site(&self, id: SiteId) -> &Site {
        &self.sites[id].site
    }

    pub fn sites(&self) -> &[SiteEntry] {
        &self.sites
    }

    /// In virtual-host mode, the site a mount-root name (host or alias) selects.
    pub fn vhost_named(&self, name: &str) -> Option<SiteId> {
        self.config.vhosts.iter().position(|v| v.answers_to(name))
    }

    /// Answers from memory alone: a fresh object, a fresh not-found, or `None` (ask the origin).
    pub fn lookup_fresh(&self, site: SiteId, path: &Arc<str>) -> Option<FsResult<Arc<Object>>> {
        let key = (site, path.clone());
        let now = now_secs();
        if let Some(object) = self.index.get(&key) {
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
        let existing = self.index.get(&key);
        let known = existing.as_ref().map(|o| &o.version);
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
                    self.index.retire_replaced(&old);
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

    fn record_file(
        &self,
        site: SiteId,
        path: Arc<str>,
        existing: Option<Arc<Object>>,
        found: Found,
        head: Bytes,
        now: u64,
    ) -> Arc<Object> {
        let block_size = self.config.block_size as usize;
        let first_block = head.slice(..head.len().min(block_size));
        let object = match existing {
            Some(object)
                if object.kind == ObjectKind::File
                    && object.version == found.version
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
        object.version.is_pinned()
            || first_block.is_empty()
            || object.agrees_unpinned(0, first_block)
    }

    /// Keeps the blocks a probe brought along (its first block, or the whole of an answer
    /// that had no length).
    fn store_head(&self, object: &Arc<Object>, head: &Bytes) {
        let block_size = object.block_size as usize;
        for (block, start) in (0..head.len()).step_by(block_size).enumerate() {
            let block = block as u64;
            let range = object.block_range(block);
            let piece = head.slice(start..(start + block_size).min(head.len()));
            let whole = piece.len() as u64 == range.end - range.start;
            if !whole || object.has_cached_block(block) {
                continue;
            }
            if !object.version.is_pinned() && !object.agrees_unpinned(block, &piece) {
                return;
            }
            object.store_block(&self.index, block, std::slice::from_ref(&piece), None);
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
            Some(object) if object.kind == ObjectKind::Directory => {
                object.renew(now);
                object
            }
            other => {
                if let Some(old) = other {
                    self.index.retire_replaced(&old);
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
        let header = MetaHeader {
            site: self.sites[site].store.name.clone(),
            path: path.to_string(),
            kind,
            size: version.size,
            etag: version.etag.clone(),
            last_modified: version.last_modified.clone(),
            fetched_at: now,
            block_size: self.config.block_size,
            ttl: freshness.ttl.as_secs(),
        };
        // no-store: the object lives in memory only, and every read goes to the origin.
        let location = if freshness.store {
            self.persist_header(site, &header)
        } else {
            None
        };
        let charge = if location.is_some() {
            OBJECT_OVERHEAD
        } else {
            0
        };
        let object = Arc::new(Object::new(
            site,
            path,
            kind,
            version,
            self.config.block_size,
            freshness.ttl,
            now,
            location,
            charge,
        ));
        self.index.insert(object.clone());
        object
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

    /// The origin has a new version: the cached one goes, so the next lookup probes afresh.
    pub fn version_changed(&self, object: &Arc<Object>) {
        tracing::info!(path = %object.path, "object changed at the origin");
        self.index.retire_replaced(object);
    }

    /// Starts fetching absent blocks ahead of a sequential reader, as far as the global
    /// read-ahead budget allows. Returns at once; callable from any thread.
    pub fn prefetch(self: &Arc<Self>, object: &Arc<Object>, blocks: Range<u64>) {
        let block_size = object.block_size;
        let granted = self
            .readahead
            .take((blocks.end - blocks.start) * block_size, block_size)
            / block_size;
        if granted == 0 {
            return;
        }
        let runs = object.claim_absent(blocks.start..blocks.start + granted);
        let claimed: u64 = runs.iter().map(|r| r.owned() as u64).sum();
        self.readahead.give_back((granted - claimed) * block_size);
        for mut run in runs {
            run.prefetch = true;
            self.runtime
                .spawn(fetch_run(self.clone(), object.clone(), run));
        }
    }

    /// Reads `range` of `object`, fetching only the blocks that are missing. Also says
    /// whether the cache alone answered (no block had to come from the origin).
    pub async fn read(
        self: &Arc<Self>,
        object: &Arc<Object>,
        range: Range<u64>,
        deadline: Instant,
    ) -> FsResult<(Bytes, bool)> {
        let range = range.start.min(object.version.size)..range.end.min(object.version.size);
        if range.is_empty() {
            return Ok((Bytes::new(), true));
        }
        let blocks = range.start / object.block_size..(range.end - 1) / object.block_size + 1;
        for _ in 0..READ_ATTEMPTS {
            let (sources, runs) = object.plan(blocks.clone());
            let from_cache = sources
                .iter()
                .all(|s| matches!(s, BlockSource::Disk { fresh: false, .. }));
            for mut run in runs {
                run.deadline = Some(deadline);
                tokio::spawn(fetch_run(self.clone(), object.clone(), run));
            }
            // A little past the deadline: the fetch gives up at the deadline, and its own
            // error says more than "timed out".
            let gathered = self.gather(object, &range, blocks.start, sources);
            let result =
                match tokio::time::timeout_at((deadline + WAIT_GRACE).into(), gathered).await {
                    Ok(result) => result,
                    Err(_) => Err(FsError::Timeout),
                };
            match result {
                Err(e @ (FsError::Corrupt | FsError::Replan)) => {
                    tracing::trace!(path = %object.path, "read plans again: {e}");
                    continue;
                }
                result => {
                    object.take_fresh(blocks.clone());
                    return result.map(|data| (data, from_cache));
                }
            }
        }
        Err(FsError::Corrupt)
    }

    /// Collects the read's bytes from disk and from flights, in order. Every flight is
    /// waited for from the start, so the fetch hands each block over in memory rather than
    /// through the cache file. A read within one fetched block is a slice of it, no copy.
    async fn gather(
        &self,
        object: &Object,
        range: &Range<u64>,
        first_block: u64,
        sources: Vec<BlockSource>,
    ) -> FsResult<Bytes> {
        let pending: Vec<Pending> = sources.into_iter().map(Pending::from).collect();
        let mut pieces = Vec::with_capacity(pending.len());
        for (i, source) in pending.into_iter().enumerate() {
            let block = first_block + i as u64;
            let block_range = object.block_range(block);
            let within = range.start.max(block_range.start) - block_range.start
                ..range.end.min(block_range.end) - block_range.start;
            let piece = match source {
                Pending::Disk {
                    file,
                    crc,
                    verified,
                } => Bytes::from(object.read_from_disk(block, &file, crc, verified, within)?),
                Pending::Flight(waiter) => match waiter.wait().await? {
                    Delivered::Data(bytes) if within.end as usize <= bytes.len() => {
                        bytes.slice(within.start as usize..within.end as usize)
                    }
                    Delivered::Data(_) => return Err(FsError::BadAnswer("short block".into())),
                    // It reached the cache before this read began to wait: read it there.
                    Delivered::Stored => match object.read_block(block, within) {
                        Some(Ok(bytes)) => Bytes::from(bytes),
                        _ => return Err(FsError::Replan),
                    },
                },
                Pending::Gate(waiter) => {
                    let _ = waiter.wait().await;
                    return Err(FsError::Replan);
                }
                Pending::Gone => return Err(FsError::VersionChanged),
            };
            pieces.push(piece);
        }
        if pieces.len() == 1 {
            return Ok(pieces.swap_remove(0));
        }
        Ok(Bytes::from(pieces.concat()))
    }
}
