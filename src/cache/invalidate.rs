//! `purge`, `expire` and `hardpurge`: of one path, or of what lies below a directory.

use std::sync::Weak;

use super::index::ObjectKey;
use super::Cache;
use crate::base::{Invalidation, SiteId};

/// Told of every invalidation, with which paths of a site it covered, so that what the
/// kernel keeps of them goes too: with zero-message opens the kernel would otherwise serve
/// a purged file from its page cache, and never ask again until the name's entry expires.
pub trait InvalidationWatcher: Send + Sync {
    fn invalidated(&self, site: SiteId, covers: &dyn Fn(&str) -> bool);
}

/// What an invalidation touched.
#[derive(Debug, Default, Clone, Copy)]
pub struct InvalidationReport {
    pub objects: u64,
    /// Cached data bytes of those objects.
    pub bytes: u64,
}

impl Cache {
    /// Applies an invalidation to one path, or to what lies below a directory when the path
    /// ends in `/*` (the directory's own record stays). Listings of the directories it
    /// covers expire too, and so do remembered not-found answers below them.
    pub fn invalidate(&self, site: SiteId, path: &str, action: Invalidation) -> InvalidationReport {
        let (dir, below) = match path.strip_suffix("/*") {
            Some(dir) => (dir.to_string(), format!("{dir}/")),
            None => (path.to_string(), format!("{path}/")),
        };
        let subtree = path.ends_with("/*");
        // `DIR/*` covers what lies below DIR; a plain path covers itself only, so purging a
        // directory keeps its cached children.
        let covers = |p: &str| match subtree {
            true => p.starts_with(&below),
            false => p == path,
        };
        let mut report = InvalidationReport::default();
        let purge = !matches!(action, Invalidation::Expire);
        let only = (!subtree).then_some(path);
        (report.objects, report.bytes) = self.invalidate_small(site, covers, only, purge);
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
                .filter(|(s, p)| *s == site && covers(p))
                .cloned()
                .collect();
            for key in gone {
                negative.pop(&key);
            }
        }
        let listed = |d: &str| d == dir || (subtree && d.starts_with(&below));
        self.expire_listings(site, listed);
        if let Some(watcher) = self.watcher.get().and_then(Weak::upgrade) {
            watcher.invalidated(site, &covers);
        }
        tracing::info!(
            path,
            ?action,
            objects = report.objects,
            bytes = report.bytes,
            "invalidated"
        );
        report
    }

    /// Tells `watcher` of every later invalidation. Fails (giving it back) when one is set.
    pub fn watch_invalidations(
        &self,
        watcher: Weak<dyn InvalidationWatcher>,
    ) -> Result<(), Weak<dyn InvalidationWatcher>> {
        self.watcher.set(watcher)
    }
}
