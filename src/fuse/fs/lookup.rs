//! Names to inodes: lookups, attributes, directory listings and `unlink` (an invalidation).

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Answer, Attr, DirEntry, EntryKind, StonFs};
use crate::base::stats::Op;
use crate::base::{now_secs, FsError, FsResult, ObjectKind, SiteId};
use crate::cache::{ListedEntry, Object};
use crate::fuse::inodes::{Node, Revalidated, ROOT_INO};
use crate::media::{MediaRequest, NameKind};

/// A lookup's answer: an inode and how long the kernel may keep it. Inode 0 is a negative
/// entry: the kernel remembers the name does not exist for `ttl`.
#[derive(Debug, Clone)]
pub struct Entry {
    pub attr: Attr,
    pub ttl: Duration,
}

/// File names that can never be sent to the origin as a path component.
fn component(name: &OsStr) -> Option<&str> {
    let name = name.to_str()?;
    let plain = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']);
    plain.then_some(name)
}

impl StonFs {
    /// Looks `name` up in directory `parent`: from memory (a fresh object, a fresh negative
    /// answer, the parent's listing, `dot_dir`) or else with a probe of the origin.
    pub fn lookup(self: &Arc<Self>, parent: u64, name: &OsStr) -> Answer<Entry> {
        let Some(parent_node) = self.node(parent) else {
            return Answer::Now(Err(FsError::Stale));
        };
        let Some(name) = component(name) else {
            return Answer::Now(Err(FsError::NotFound));
        };
        let Some(site) = parent_node.site else {
            return Answer::Now(self.lookup_vhost(name));
        };
        if !parent_node.is_directory() {
            return Answer::Now(Err(FsError::NotDirectory));
        }
        let started = Instant::now();
        let path: Arc<str> = format!("{}/{}", parent_node.path, name).into();
        match self.media.media_name(site, &parent_node.path, name) {
            NameKind::Plain => {}
            NameKind::Invalid(reason) => {
                tracing::debug!(%path, "no such clip: {reason}");
                return Answer::Now(self.node_entry(
                    parent,
                    name,
                    site,
                    path,
                    Err(FsError::NotFound),
                ));
            }
            NameKind::Media {
                name: original,
                request,
            } => {
                let path: Arc<str> = format!("{}/{}", parent_node.path, original).into();
                return self.lookup_media((parent, name), site, path, request, started);
            }
        }
        if let Some(answer) = self.cache.lookup_fresh(site, &path) {
            self.record(Op::Lookup, &path, 0, started, true);
            return Answer::Now(self.entry(parent, name, site, path, answer));
        }
        if let Some(listed) = self.known_without_origin(site, &parent_node.path, name) {
            self.record(Op::Lookup, &path, 0, started, true);
            return Answer::Now(Ok(self.listed_entry(parent, name, site, path, listed)));
        }
        let fs = self.clone();
        let name = name.to_string();
        Answer::later(async move {
            let deadline = started + fs.cache.request_timeout();
            let answer = fs.cache.resolve(site, path.clone(), deadline).await;
            fs.record(Op::Lookup, &path, 0, started, false);
            fs.entry(parent, &name, site, path, answer)
        })
    }

    /// Looks up a media name: the original at `path`, then how it is presented for
    /// `request`. From memory when both are known, else from the cache and the origin.
    fn lookup_media(
        self: &Arc<Self>,
        (parent, name): (u64, &str),
        site: SiteId,
        path: Arc<str>,
        request: MediaRequest,
        started: Instant,
    ) -> Answer<Entry> {
        if let Some(node) = self.media_node_now(site, &path, &request) {
            self.record(Op::Lookup, &path, 0, started, true);
            return Answer::Now(self.node_entry(parent, name, site, path, node));
        }
        let fs = self.clone();
        let name = name.to_string();
        Answer::later(async move {
            let deadline = started + fs.cache.request_timeout();
            let node = fs.media_node(site, &path, &request, deadline).await;
            fs.record(Op::Lookup, &path, 0, started, false);
            fs.node_entry(parent, &name, site, path, node)
        })
    }

    /// The entry for a resolved name. Not-found becomes a negative entry the kernel caches.
    fn entry(
        &self,
        parent: u64,
        name: &str,
        site: SiteId,
        path: Arc<str>,
        answer: FsResult<Arc<Object>>,
    ) -> FsResult<Entry> {
        let node = answer.map(|object| Node::new(site, path.clone(), Some(object)));
        self.node_entry(parent, name, site, path, node)
    }

    /// The entry for a name whose node is known (or not found: a negative entry).
    fn node_entry(
        &self,
        parent: u64,
        name: &str,
        site: SiteId,
        path: Arc<str>,
        answer: FsResult<Node>,
    ) -> FsResult<Entry> {
        let node = match answer {
            Ok(node) => node,
            Err(FsError::NotFound) => {
                let node = Node::new(site, path, None);
                return Ok(Entry {
                    attr: self.attr(0, &node),
                    ttl: self.cache.config().negative_ttl,
                });
            }
            Err(error) => return Err(error),
        };
        let (ino, stale) = self.inodes.attach(parent, name, node.clone());
        if stale {
            self.invalidate_pages(ino);
        }
        Ok(Entry {
            attr: self.attr(ino, &node),
            ttl: self.attr_ttl(&node),
        })
    }

    /// At the virtual-host root, a name is a host (or one of its aliases).
    fn lookup_vhost(&self, name: &str) -> FsResult<Entry> {
        let site = self.cache.vhost_named(name).ok_or(FsError::NotFound)?;
        let node = Node::new(site, Arc::from(""), None);
        let (ino, _) = self.inodes.attach(ROOT_INO, name, node.clone());
        Ok(Entry {
            attr: self.attr(ino, &node),
            ttl: self.cache.config().ttl,
        })
    }

    /// An entry answered from the parent's listing (or `dot_dir`), without the origin.
    fn listed_entry(
        &self,
        parent: u64,
        name: &str,
        site: SiteId,
        path: Arc<str>,
        listed: ListedEntry,
    ) -> Entry {
        let node = Node {
            listed: Some(listed),
            ..Node::new(site, path, None)
        };
        let (ino, _) = self.inodes.attach(parent, name, node.clone());
        Entry {
            attr: self.attr(ino, &node),
            ttl: self.cache.config().ttl,
        }
    }

    /// What can be said of `name` without asking the origin: `dot_dir`, or a fresh listing
    /// of the parent that gives a directory, or a file with exact size and time.
    fn known_without_origin(
        &self,
        site: SiteId,
        parent_path: &str,
        name: &str,
    ) -> Option<ListedEntry> {
        if self.cache.config().dot_dir && !name.contains('.') {
            return Some(ListedEntry {
                name: name.to_string(),
                is_dir: true,
                size: None,
                mtime: None,
            });
        }
        self.cache
            .listed_entry(site, parent_path, name)
            .filter(|e| e.is_dir || (e.size.is_some() && e.mtime.is_some()))
    }

    /// The attributes of an inode, revalidated at the origin when its TTL has run out.
    pub fn getattr(self: &Arc<Self>, ino: u64) -> Answer<(Attr, Duration)> {
        let Some(node) = self.node(ino) else {
            return Answer::Now(Err(FsError::Stale));
        };
        let started = Instant::now();
        if !needs_origin(&node) {
            self.record(Op::Attr, &node.path, 0, started, true);
            return Answer::Now(Ok((self.attr(ino, &node), self.attr_ttl(&node))));
        }
        let fs = self.clone();
        Answer::later(async move {
            let deadline = started + fs.cache.request_timeout();
            let answer = fs.fresh_node(ino, &node, deadline).await;
            fs.record(Op::Attr, &node.path, 0, started, false);
            let node = answer?;
            Ok((fs.attr(ino, &node), fs.attr_ttl(&node)))
        })
    }

    /// The node with its object revalidated when its TTL has run out, and, for a media
    /// name, presented as that version is.
    pub(super) async fn fresh_node(
        &self,
        ino: u64,
        node: &Node,
        deadline: Instant,
    ) -> FsResult<Node> {
        let Some(site) = node.site.filter(|_| !node.path.is_empty()) else {
            return Err(FsError::NotFound);
        };
        let node = &self.with_object(ino, node.clone());
        if node.object.is_some() && !needs_origin(node) {
            return Ok(node.clone());
        }
        let object = self
            .cache
            .resolve(site, node.path.clone(), deadline)
            .await?;
        let view = self.view_of(node, &object, deadline).await?;
        // A name first known from a listing may turn out another size: the kernel must drop
        // the listed attributes, or it would cut reads short at the listed size.
        let listed_differs = node.listed.as_ref().is_some_and(|e| {
            e.size != Some(object.size()) || e.is_dir != (object.kind() == ObjectKind::Directory)
        });
        let in_use = self.pages_in_use(ino);
        match self
            .inodes
            .update_object(ino, &object, view.clone(), in_use)
        {
            Revalidated::Kept { parent, name } => {
                // Readers keep this inode's version; new path walks must find the new one.
                self.invalidate_entry(parent, &name);
                return Ok(node.clone());
            }
            Revalidated::Updated { stale_pages } => {
                if stale_pages || listed_differs {
                    self.invalidate_pages(ino);
                }
            }
        }
        Ok(Node {
            object: Some(object),
            view,
            small: None,
            ..node.clone()
        })
    }

    pub fn opendir(&self, ino: u64) -> FsResult<()> {
        match self.node(ino) {
            Some(node) if node.is_directory() => Ok(()),
            Some(_) => Err(FsError::NotDirectory),
            None => Err(FsError::Stale),
        }
    }

    /// A directory's entries: `.`, `..`, then the origin's listing (or, at the virtual-host
    /// root, the hosts). Inode numbers come with the kernel's lookups of the names.
    pub fn readdir(self: &Arc<Self>, ino: u64) -> Answer<Vec<DirEntry>> {
        let Some(node) = self.node(ino) else {
            return Answer::Now(Err(FsError::Stale));
        };
        let mut entries = vec![
            dir_entry(ino, EntryKind::Directory, "."),
            dir_entry(ROOT_INO, EntryKind::Directory, ".."),
        ];
        let Some(site) = node.site else {
            let hosts = self.cache.sites().iter().map(|s| s.name());
            entries.extend(hosts.map(|host| dir_entry(u64::MAX, EntryKind::Directory, host)));
            return Answer::Now(Ok(entries));
        };
        let fs = self.clone();
        Answer::later(async move {
            for listed in fs.cache.listing(site, &node.path).await.iter() {
                // Clips exist only by name: a listing never shows one.
                if fs.media.is_trim_name(&listed.name) {
                    continue;
                }
                let kind = match listed.is_dir {
                    true => EntryKind::Directory,
                    false => EntryKind::File,
                };
                entries.push(dir_entry(u64::MAX, kind, &listed.name));
            }
            Ok(entries)
        })
    }

    /// Unlinking a cached file invalidates it (the configured `unlink` action); the origin
    /// still has the file, so it stays visible and the next read fetches or revalidates.
    /// Only root and the user who mounted may: with `allow_other`, anyone else could empty
    /// the cache of what everybody reads.
    pub fn unlink(&self, parent: u64, name: &OsStr, caller_uid: u32) -> FsResult<()> {
        if caller_uid != 0 && caller_uid != self.mounting_uid {
            return Err(FsError::NotPermitted);
        }
        let parent_node = self.node(parent).ok_or(FsError::Stale)?;
        let name = component(name).ok_or(FsError::NotFound)?;
        let site = parent_node.site.ok_or(FsError::ReadOnly)?;
        let path = format!("{}/{}", parent_node.path, name);
        let action = self.cache.config().unlink;
        self.cache.invalidate(site, &path, action);
        Ok(())
    }
}

fn dir_entry(ino: u64, kind: EntryKind, name: &str) -> DirEntry {
    DirEntry {
        ino,
        kind,
        name: name.to_string(),
    }
}

/// Whether answering for this node needs the cache's resolver (and maybe the origin):
/// its TTL ran out, or its object left the cache, or it is a file carried over a restart
/// that the cache no longer held.
pub(super) fn needs_origin(node: &Node) -> bool {
    let now = now_secs();
    let stale = node
        .object
        .as_ref()
        .is_some_and(|o| o.is_detached() || !o.is_fresh(now))
        || node.small.is_some_and(|small| !small.is_fresh(now));
    (stale || node.awaits_origin()) && !node.path.is_empty()
}
