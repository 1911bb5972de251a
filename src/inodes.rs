//! Inode table: maps kernel inode numbers to namespace paths and the object last seen there.
//!
//! Inodes live while the kernel holds lookups on them (`forget` drops them), so memory follows
//! the kernel's dentry cache, not the number of files ever read.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use fuser::BackingId;
use parking_lot::Mutex;

use crate::object::{Object, SiteId};
use crate::store::ObjectKind;

pub const ROOT_INO: u64 = 1;

/// What the file system needs to know about one inode.
#[derive(Clone)]
pub struct Node {
    /// `None` only for the mount root in virtual-host mode, which lists the hosts.
    pub site: Option<SiteId>,
    /// Path within the site: `""` for the site root, `/a/b` below it.
    pub path: Arc<str>,
    /// The object version last resolved at this path (`None` for site roots, and for names
    /// known only from a listing until they are opened).
    pub object: Option<Arc<Object>>,
    /// What the parent's listing said of this name, when that answered the lookup.
    pub listed: Option<crate::listing::Entry>,
}

impl Node {
    pub fn is_directory(&self) -> bool {
        match (&self.object, &self.listed) {
            (Some(object), _) => object.kind == ObjectKind::Directory,
            (None, Some(entry)) => entry.is_dir,
            (None, None) => true,
        }
    }
}

struct Entry {
    node: Node,
    parent: u64,
    name: Arc<str>,
    lookups: u64,
    /// The version whose pages the kernel may keep across opens (`FOPEN_KEEP_CACHE`).
    page_cache_version: Weak<Object>,
    opens: Opens,
}

impl Entry {
    /// Whether `next` describes another version of this entry's file.
    fn is_replaced_by(&self, next: &Node) -> bool {
        match (&self.node.object, &next.object) {
            (Some(old), Some(new)) => {
                old.kind == ObjectKind::File
                    && new.kind == ObjectKind::File
                    && old.version != new.version
            }
            _ => false,
        }
    }

    /// Pages of some version were handed out with `FOPEN_KEEP_CACHE`, and `next` is another
    /// version. Forgets that version, so one change invalidates once.
    fn take_stale_pages(&mut self, next: Option<&Arc<Object>>) -> bool {
        let never_opened = self.page_cache_version.ptr_eq(&Weak::new());
        let same =
            next.is_some_and(|n| std::ptr::eq(self.page_cache_version.as_ptr(), Arc::as_ptr(n)));
        if never_opened || same {
            return false;
        }
        self.page_cache_version = Weak::new();
        true
    }
}

/// Open handles of one inode. The kernel refuses cached and passthrough opens of one inode
/// at the same time, so the first open decides until every handle is closed.
#[derive(Default)]
struct Opens {
    cached: usize,
    passthrough: usize,
    backing: Option<Arc<BackingId>>,
}

/// How one open of a file is served.
pub enum OpenMode {
    /// Reads come to the daemon (and the kernel page cache).
    Cached,
    /// Reads go straight to the cache file; the id stays registered while any such open lasts.
    Passthrough(Arc<BackingId>),
}

struct Table {
    entries: HashMap<u64, Entry>,
    children: HashMap<(u64, Arc<str>), u64>,
    next_ino: u64,
}

pub struct InodeTable {
    table: Mutex<Table>,
}

impl InodeTable {
    pub fn new(root_site: Option<SiteId>) -> InodeTable {
        let mut entries = HashMap::new();
        entries.insert(
            ROOT_INO,
            Entry {
                node: Node {
                    site: root_site,
                    path: Arc::from(""),
                    object: None,
                    listed: None,
                },
                parent: ROOT_INO,
                name: Arc::from(""),
                lookups: 1,
                page_cache_version: Weak::new(),
                opens: Opens::default(),
            },
        );
        InodeTable {
            table: Mutex::new(Table {
                entries,
                children: HashMap::new(),
                next_ino: ROOT_INO + 1,
            }),
        }
    }

    pub fn get(&self, ino: u64) -> Option<Node> {
        self.table.lock().entries.get(&ino).map(|e| e.node.clone())
    }

    /// Records a successful lookup of `name` under `parent`; returns the child's inode number.
    /// Also says whether the kernel may hold pages of an older version (to invalidate).
    pub fn attach(&self, parent: u64, name: &str, node: Node) -> (u64, bool) {
        let mut table = self.table.lock();
        let key = (parent, Arc::<str>::from(name));
        if let Some(&ino) = table.children.get(&key) {
            if let Some(entry) = table.entries.get_mut(&ino) {
                if !entry.is_replaced_by(&node) {
                    entry.lookups += 1;
                    let stale = entry.take_stale_pages(node.object.as_ref());
                    entry.node = node;
                    return (ino, stale);
                }
                // A new version gets a new inode: files still open on the old one keep
                // their own page cache, so they can never read the new version's pages.
                // The old entry lives on until the kernel forgets it.
            }
        }
        let ino = table.next_ino;
        table.next_ino += 1;
        table.children.insert(key.clone(), ino);
        table.entries.insert(
            ino,
            Entry {
                node,
                parent,
                name: key.1,
                lookups: 1,
                page_cache_version: Weak::new(),
                opens: Opens::default(),
            },
        );
        (ino, false)
    }

    /// Replaces the object seen at an inode (after a revalidation).
    /// Returns whether the kernel may hold pages of an older version (to invalidate).
    pub fn update_object(&self, ino: u64, object: &Arc<Object>) -> bool {
        let mut table = self.table.lock();
        let Some(entry) = table.entries.get_mut(&ino) else {
            return false;
        };
        let stale = entry.take_stale_pages(Some(object));
        entry.node.object = Some(object.clone());
        stale
    }

    /// Whether the kernel's cached pages for `ino` belong to `object`; records that they will.
    pub fn keep_page_cache(&self, ino: u64, object: &Arc<Object>) -> bool {
        let mut table = self.table.lock();
        let Some(entry) = table.entries.get_mut(&ino) else {
            return false;
        };
        let same = std::ptr::eq(entry.page_cache_version.as_ptr(), Arc::as_ptr(object));
        entry.page_cache_version = Arc::downgrade(object);
        same
    }

    /// Chooses how a new open is served. `open_backing` registers the cache file with the
    /// kernel; it is only called when passthrough is `wanted` and no cached open is active.
    pub fn begin_open(
        &self,
        ino: u64,
        wanted: bool,
        open_backing: impl FnOnce() -> std::io::Result<Arc<BackingId>>,
    ) -> OpenMode {
        let mut table = self.table.lock();
        let Some(entry) = table.entries.get_mut(&ino) else {
            return OpenMode::Cached;
        };
        let opens = &mut entry.opens;
        if let Some(backing) = opens.backing.as_ref().filter(|_| opens.passthrough > 0) {
            opens.passthrough += 1;
            return OpenMode::Passthrough(backing.clone());
        }
        if wanted && opens.cached == 0 {
            match open_backing() {
                Ok(backing) => {
                    opens.backing = Some(backing.clone());
                    opens.passthrough = 1;
                    return OpenMode::Passthrough(backing);
                }
                Err(e) => tracing::debug!(ino, "passthrough refused, serving cached: {e}"),
            }
        }
        opens.cached += 1;
        OpenMode::Cached
    }

    /// Records a release; the last passthrough release unregisters the cache file.
    pub fn end_open(&self, ino: u64, passthrough: bool) {
        let mut table = self.table.lock();
        let Some(entry) = table.entries.get_mut(&ino) else {
            return;
        };
        let opens = &mut entry.opens;
        if passthrough {
            opens.passthrough = opens.passthrough.saturating_sub(1);
            if opens.passthrough == 0 {
                opens.backing = None;
            }
        } else {
            opens.cached = opens.cached.saturating_sub(1);
        }
    }

    pub fn forget(&self, ino: u64, count: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut table = self.table.lock();
        let Some(entry) = table.entries.get_mut(&ino) else {
            return;
        };
        entry.lookups = entry.lookups.saturating_sub(count);
        if entry.lookups == 0 {
            if let Some(entry) = table.entries.remove(&ino) {
                let key = (entry.parent, entry.name);
                if table.children.get(&key) == Some(&ino) {
                    table.children.remove(&key);
                }
            }
        }
    }
}
