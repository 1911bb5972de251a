//! Cache layer: resolves paths to fresh object versions and serves their bytes from the
//! block store or the origin, keeping the cache under its cap.
//!
//! - [`resolve`](Cache::resolve): probe, revalidate, negative answers, stale-if-error;
//! - [`read`](Cache::read): plans a read over cached and fetched blocks, with read-ahead;
//! - `object`: one version's block table, flights, cache files and journal;
//! - `index`: the LRU of objects and the byte accounting of the cap;
//! - `fetch`: range requests into whole, verified blocks; `writer`: write-behind;
//! - `readahead`: sequential detection and the global prefetch budget;
//! - `listings`: directory listings, cached in memory and on disk.
//!
//! An object also keeps one opaque record beside its blocks (`save_view`, `load_view`) for
//! the layer above, which presents MP4 files through views; it goes with the version.
//!
//! Depends on `origin`, `store`, `config` and `base`; knows nothing of FUSE or of media.
//!
//! Lock order: see the crate's table (`src/lib.rs`). `Cache.probes`, `Cache.negative`,
//! `Cache.listings` and a write queue's lock are leaves; the index's `evict_lock`, an
//! object's `recording` and `state`, and the index's `state` are rows 6 to 10.

mod blocks;
mod fetch;
mod index;
mod invalidate;
mod listings;
mod object;
mod read;
mod readahead;
mod resolve;
mod small;
mod writer;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;

use crate::base::flight::Flight;
use crate::base::stats::{OriginHealth, Snapshot, Stats};
use crate::base::SiteId;
use crate::config::{cache_folder_name, Balance, Config, Origin};
use crate::origin::{HealthState, OriginClient, Pool, Site};
use crate::store::{self, SiteStore, OBJECT_OVERHEAD};

pub use crate::origin::listing::Entry as ListedEntry;
pub use index::ObjectKey;
pub use invalidate::{InvalidationReport, InvalidationWatcher};
pub use object::{KeptRegistration, Object, OpenHandle, SmallRef, SmallSite, SmallTag};
pub use readahead::ReadAhead;

use fetch::FetchHost;
use index::CacheIndex;
use listings::{Listing, LISTINGS_IN_MEMORY};
use read::WAIT_GRACE;
use readahead::Budget;
use writer::WriteBehind;

/// How many not-found answers are remembered at most.
const NEGATIVE_ENTRIES: usize = 65_536;
/// How often freed heap memory is returned to the system. Blocks pass through memory by the
/// megabyte, and glibc would otherwise keep the freed space resident after a burst.
const MEMORY_TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Where one site's requests go: active origins, standbys, and how requests spread.
struct Routing {
    origins: Vec<Origin>,
    standby: Vec<Origin>,
    balance: Balance,
}

/// One namespace root: an origin (or virtual host) and its cache folder.
pub struct SiteEntry {
    site: Site,
    /// The name a virtual host is listed under at the mount root.
    name: String,
    store: SiteStore,
    /// The packed store of the site's small objects (`None`: they are kept as files).
    small: Option<Arc<SmallSite>>,
}

impl SiteEntry {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn open(
        config: &Config,
        routing: Routing,
        name: String,
        host: Option<String>,
    ) -> Result<SiteEntry, String> {
        // Standbys serve the same content, so adding one keeps the cache folder.
        let folder = cache_folder_name(&routing.origins, &name);
        Ok(SiteEntry {
            site: Site {
                pool: Pool::new(routing.origins, routing.standby, routing.balance),
                host,
            },
            name,
            store: SiteStore::open(&config.cache_dir, &folder)?,
            small: None,
        })
    }
}

/// Every site of the mount, each with its cache folder opened and locked: the origin (list),
/// or one per virtual host.
fn open_sites(config: &Config) -> Result<Vec<SiteEntry>, String> {
    let mut sites = Vec::new();
    if let Some(first) = config.origins.first() {
        let authority = authority(&first.base);
        let routing = Routing {
            origins: config.origins.clone(),
            standby: config.standby.clone(),
            balance: config.balance,
        };
        sites.push(SiteEntry::open(
            config,
            routing,
            authority.to_string(),
            None,
        )?);
    }
    for vhost in &config.vhosts {
        let (name, host) = (vhost.name.clone(), Some(vhost.name.clone()));
        let routing = Routing {
            origins: vhost.origins.clone(),
            standby: vhost.standby.clone(),
            balance: vhost.balance.unwrap_or(config.balance),
        };
        sites.push(SiteEntry::open(config, routing, name, host)?);
    }
    Ok(sites)
}

/// `host:port/` of an origin's base URL.
fn authority(base: &str) -> &str {
    base.split("://").nth(1).unwrap_or_default()
}

fn bounded_lru<K: std::hash::Hash + Eq, V>(entries: usize) -> LruCache<K, V> {
    LruCache::new(NonZeroUsize::new(entries).unwrap_or(NonZeroUsize::MIN))
}

/// The cache of one mount: every site's store, the index of what is cached, and the origin
/// client that fills it.
///
/// Owns: the sites (origins and their cache folders, each locked against a second daemon),
/// the index, the negative and listing caches, the probes in flight (one per path), and the
/// global read-ahead and write-behind budgets.
/// Must hold: every object in the index has its files in its site's folder, and the index
/// counts exactly the bytes those files may take.
pub struct Cache {
    config: Config,
    stats: Arc<Stats>,
    origin: OriginClient,
    index: Arc<CacheIndex<Object>>,
    /// Prefetch memory shared by every open file.
    readahead: Arc<Budget>,
    /// Bound on fetched bytes waiting for the disk.
    write_behind: WriteBehind,
    runtime: tokio::runtime::Handle,
    sites: Vec<SiteEntry>,
    negative: Mutex<LruCache<ObjectKey, Instant>>,
    listings: Mutex<LruCache<ObjectKey, Listing>>,
    probes: Mutex<HashMap<ObjectKey, Arc<Flight<Arc<Object>>>>>,
    /// The layer above, told of every invalidation (weak: it holds this cache).
    watcher: std::sync::OnceLock<std::sync::Weak<dyn InvalidationWatcher>>,
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
        let dir = &config.cache_dir;
        store::create_private_dir(dir)
            .map_err(|e| format!("cannot create cache dir {}: {e}", dir.display()))?;
        let mut cache = Cache {
            stats,
            index: Arc::new(CacheIndex::new(config.max_cache_size)),
            readahead: Arc::new(Budget::new(config.readahead_budget)),
            write_behind: WriteBehind::new(config.block_size),
            runtime: tokio::runtime::Handle::try_current()
                .map_err(|_| "the cache must be opened inside the I/O runtime".to_string())?,
            origin,
            sites: open_sites(&config)?,
            negative: Mutex::new(bounded_lru(NEGATIVE_ENTRIES)),
            probes: Mutex::new(HashMap::new()),
            watcher: std::sync::OnceLock::new(),
            listings: Mutex::new(bounded_lru(LISTINGS_IN_MEMORY)),
            config,
        };
        cache.load();
        for entry in &mut cache.sites {
            entry.small = small::open_site(&cache.config, &entry.store, &cache.index);
        }
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
            let restored = Object::restore(site, object, Arc::downgrade(&self.index));
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

    /// Waits, at most `max`, for read-ahead in flight and blocks queued for the disk to land:
    /// an unmount that stopped the runtime under them would drop blocks readers already had
    /// (the next mount would fetch them again).
    pub fn settle(&self, max: Duration) {
        let give_up = Instant::now() + max;
        while !(self.readahead.is_idle() && self.write_behind.is_idle()) && Instant::now() < give_up
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Records every stored but not yet journaled block, and saves the small objects'
    /// index, so an unmount loses nothing and the next mount is ready at once.
    pub fn flush(&self) {
        for entry in 0..self.sites.len() {
            for object in self.index.matching(entry, |_| true) {
                object.record_now();
            }
        }
        self.sync_small(true);
    }

    /// Every figure of `ston-fs stats`, as of now.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = self.stats.snapshot();
        snapshot.cache_bytes = self.index.used();
        snapshot.cache_cap = self.index.cap();
        let (small_objects, small_bytes) = self.small_usage();
        snapshot.cache_objects = self.index.object_count() as u64 + small_objects;
        snapshot.small_objects = small_objects;
        snapshot.small_bytes = small_bytes;
        for entry in &self.sites {
            for member in &entry.site.pool.members {
                let state = member.state();
                let (requests, bytes, failures) = member.traffic().totals();
                // A vhost's rows carry its name; the mount root's carry each origin's own
                // authority, so a standby is never shown under another origin's name.
                let site = match &entry.site.host {
                    Some(_) => entry.name.clone(),
                    None => authority(&member.origin.base).to_string(),
                };
                snapshot.origins.push(OriginHealth {
                    site,
                    origin: member.origin.to_string(),
                    role: member.role.name().to_string(),
                    healthy: state == HealthState::Healthy,
                    state: state.name().to_string(),
                    last_error: member.last_error(),
                    requests,
                    bytes,
                    failures,
                });
            }
        }
        snapshot
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

    /// Starts the background work of a live mount: probing excluded origins and idle
    /// standbys, and handing
    /// memory freed after bursts of traffic back to the system.
    pub fn start_background(self: &Arc<Self>) {
        let cache = self.clone();
        self.runtime.spawn(async move {
            let mut ticks = tokio::time::interval(small::SYNC_INTERVAL);
            loop {
                ticks.tick().await;
                let cache = cache.clone();
                let _ = tokio::task::spawn_blocking(move || cache.sync_small(false)).await;
            }
        });
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
                    for member in entry.site.pool.probe_targets() {
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

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The deadline of one file-system call that needs the origin.
    pub fn request_timeout(&self) -> Duration {
        self.config.request_timeout()
    }

    /// Bytes used, the cap, and the number of cached objects.
    pub fn usage(&self) -> (u64, u64, u64) {
        let index = &self.index;
        let objects = index.object_count() as u64 + self.small_usage().0;
        (index.used(), index.cap(), objects)
    }

    /// The object the cache holds at a path, fresh or not (a process that takes over a mount
    /// checks it against the version a file was open on).
    pub fn cached_object(&self, site: SiteId, path: &Arc<str>) -> Option<Arc<Object>> {
        let key = (site, path.clone());
        self.index
            .get(&key)
            .or_else(|| self.small_object(site, path))
    }

    /// Marks an object as just used (it moves to the recent end of the LRU).
    pub fn touch(&self, object: &Object) {
        let _ = self.index.get(&(object.site(), object.path().clone()));
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

    /// The origin has a new version: the cached one goes, so the next lookup probes afresh.
    pub fn version_changed(&self, object: &Arc<Object>) {
        tracing::info!(path = %object.path(), "object changed at the origin");
        self.retire(object);
    }
}

impl FetchHost for Cache {
    fn origin(&self) -> &OriginClient {
        &self.origin
    }

    fn site(&self, id: SiteId) -> &Site {
        &self.sites[id].site
    }

    fn request_timeout(&self) -> Duration {
        self.config.request_timeout()
    }

    fn readahead_budget(&self) -> Arc<Budget> {
        self.readahead.clone()
    }

    fn write_behind(&self) -> &WriteBehind {
        &self.write_behind
    }

    fn version_changed(&self, object: &Arc<Object>) {
        Cache::version_changed(self, object)
    }
}
