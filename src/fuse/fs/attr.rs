//! File attributes as the kernel sees them, and how long it may keep them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::StonFs;
use crate::base::{now_secs, ObjectKind};
use crate::fuse::inodes::Node;

/// Kernel attribute timeout when an object is served past its TTL (origin down).
const STALE_ATTR_TTL: Duration = Duration::from_secs(1);

/// Whether an entry is a file or a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
}

/// The attributes of one inode.
#[derive(Debug, Clone)]
pub struct Attr {
    pub ino: u64,
    pub kind: EntryKind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub blksize: u32,
}

impl StonFs {
    /// Attributes of `node` under inode number `ino`: files 0444, directories 0555.
    pub(super) fn attr(&self, ino: u64, node: &Node) -> Attr {
        let config = self.cache.config();
        let (kind, size, mtime) = self.kind_size_time(node);
        let (perm, nlink) = match kind {
            EntryKind::File => (0o444, 1),
            EntryKind::Directory => (0o555, 2),
        };
        Attr {
            ino,
            kind,
            size,
            mtime,
            perm,
            nlink,
            uid: config.uid,
            gid: config.gid,
            blksize: config.block_size.min(1 << 20) as u32,
        }
    }

    /// From the object when one is known, else from the parent's listing, else a directory
    /// (a site root, or a name `dot_dir` answered).
    fn kind_size_time(&self, node: &Node) -> (EntryKind, u64, SystemTime) {
        if let Some(object) = &node.object {
            return match object.kind() {
                ObjectKind::File => {
                    // A media name presented through a view has the view's exact size.
                    let size = node.view.as_ref().map_or(object.size(), |v| v.size());
                    (EntryKind::File, size, object.mtime())
                }
                ObjectKind::Directory => {
                    let fetched = UNIX_EPOCH + Duration::from_secs(object.fetched_at());
                    (EntryKind::Directory, 0, fetched)
                }
            };
        }
        if let Some(small) = &node.small {
            let size = node.view.as_ref().map_or(small.size, |v| v.size());
            return (EntryKind::File, size, small.mtime());
        }
        match &node.listed {
            Some(entry) if !entry.is_dir => (
                EntryKind::File,
                entry.size.unwrap_or(0),
                entry.mtime().unwrap_or(self.mounted_at),
            ),
            Some(entry) => (
                EntryKind::Directory,
                0,
                entry.mtime().unwrap_or(self.mounted_at),
            ),
            None => (EntryKind::Directory, 0, self.mounted_at),
        }
    }

    /// How long the kernel may keep `node`'s attributes: its object's freshness left.
    pub(super) fn attr_ttl(&self, node: &Node) -> Duration {
        let now = now_secs();
        match (&node.object, &node.small) {
            (Some(object), _) => fresh_left(object.fresh_for(now)),
            (None, Some(small)) => fresh_left(small.fresh_for(now)),
            (None, None) => self.cache.config().ttl,
        }
    }
}

/// Freshness left, or a second when the object is served past its TTL (origin down).
fn fresh_left(ttl: Duration) -> Duration {
    if ttl.is_zero() {
        STALE_ATTR_TTL
    } else {
        ttl
    }
}
