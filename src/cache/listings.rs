//! Directory listings: kept in memory (bounded) and on disk, refreshed after `listing_ttl`,
//! and the last one served when the origin is down.

use std::sync::Arc;

use super::index::ObjectKey;
use super::Cache;
use crate::base::{now_secs, SiteId};
use crate::origin::listing;

/// Directory listings kept in memory at most (more stay on disk).
pub(super) const LISTINGS_IN_MEMORY: usize = 4096;

/// A directory's entries as the origin listed them, and when.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Listing {
    /// The directory (`""` for the site root); lets an expiry find listings on disk.
    #[serde(default)]
    dir: String,
    fetched_at: u64,
    entries: Arc<Vec<listing::Entry>>,
}

impl Cache {
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

    /// Ends the TTL of the listings of directories that `matches`, in memory and on disk;
    /// the old entries stay as a fallback for when the origin is down.
    pub(super) fn expire_listings(&self, site: SiteId, matches: impl Fn(&str) -> bool) {
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
}
