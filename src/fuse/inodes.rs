//! Inode table: maps kernel inode numbers to namespace paths and the object last seen there.
//!
//! Inodes live while the kernel holds lookups on them (`forget` drops them), so memory follows
//! the kernel's dentry cache, not the number of files ever read. With a restart journal, every
//! number and lookup count is written to it before the reply that hands it to the kernel.
//!
//! Memory: an inode the kernel holds costs a few hundred bytes. A small file's inode that
//! nobody has open keeps a [`SmallRef`], not its object (see [`Node::small`]); fields few
//! inodes use are boxed, and a name that is its path's last component is that path.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;

use super::journal::{Journal, NodeKind};
use crate::base::{ObjectKind, SiteId};
use crate::cache::{KeptRegistration, ListedEntry, Object, SmallRef, SmallTag};
use crate::media::{MediaRequest, MediaView};

pub const ROOT_INO: u64 = 1;

/// What the file system needs to know about one inode.
#[derive(Clone)]
pub struct Node {
    /// `None` only for the mount root in virtual-host mode, which lists the hosts.
    pub site: Option<SiteId>,
    /// Path within the site: `""` for the site root, `/a/b` below it.
    pub path: Arc<str>,
    /// The object version last resolved at this path (`None` for site roots, for names
    /// known only from a listing until they are opened, and for small files, which the
    /// table keeps as `small`).
    pub object: Option<Arc<Object>>,
    /// What the parent's listing said of this name, when that answered the lookup.
    pub listed: Option<ListedEntry>,
    /// What the name asks of a media file (`None`: an ordinary name).
    pub media: Option<MediaRequest>,
    /// How `object` is presented when not byte for byte: a rewritten header, or a clip.
    pub view: Option<MediaView>,
    /// A small file's version, as the inode table keeps it (open or not; open handles hold
    /// their own object): `object` is then `None` until a call that needs the object
    /// rebuilds it from the record.
    pub small: Option<SmallRef>,
}

impl Node {
    /// A node of `site` at `path`, with the object last resolved there if any.
    pub fn new(site: SiteId, path: Arc<str>, object: Option<Arc<Object>>) -> Node {
        Node {
            site: Some(site),
            path,
            object,
            listed: None,
            media: None,
            view: None,
            small: None,
        }
    }

    /// A file carried over a restart whose object the cache no longer holds: nothing is
    /// known of it until the origin is asked again (see [`Node::awaits_origin`]).
    pub fn carried_file(site: SiteId, path: Arc<str>, name: &str) -> Node {
        let listed = ListedEntry {
            name: name.to_string(),
            is_dir: false,
            size: None,
            mtime: None,
        };
        Node {
            listed: Some(listed),
            ..Node::new(site, path, None)
        }
    }

    /// Whether this is a [`Node::carried_file`] not resolved yet. Lookups only ever make
    /// listed files with a size, so nothing else looks like this.
    pub fn awaits_origin(&self) -> bool {
        self.object.is_none()
            && self.small.is_none()
            && self
                .listed
                .as_ref()
                .is_some_and(|e| !e.is_dir && e.size.is_none())
    }

    pub fn is_directory(&self) -> bool {
        match (&self.object, &self.listed) {
            (Some(object), _) => object.kind() == ObjectKind::Directory,
            (None, _) if self.small.is_some() => false,
            (None, Some(entry)) => entry.is_dir,
            (None, None) => true,
        }
    }

    /// Whether `object` is the version this node shows (rebuilt from its record or not).
    pub fn shows(&self, object: &Object) -> bool {
        let small = self.small.map(|small| small.tag);
        self.object
            .as_ref()
            .is_some_and(|o| o.is_same_version(object))
            || small.is_some_and(|tag| object.small_tag() == Some(tag))
    }

    fn journal_kind(&self) -> NodeKind {
        match self.is_directory() {
            true => NodeKind::Directory,
            false => NodeKind::File,
        }
    }
}

/// An inode carried over a restart, as the file system rebuilt it from the journal.
pub struct CarriedInode {
    pub ino: u64,
    pub parent: u64,
    pub name: Arc<str>,
    pub lookups: u64,
    pub node: Node,
}

/// A [`Node`] as an entry keeps it: a small object nobody has open as its [`SmallRef`], and
/// the fields few inodes use in a box of their own.
struct Stored {
    site: Option<SiteId>,
    path: Arc<str>,
    held: Held,
    rare: Option<Box<Rare>>,
}

/// The version an inode shows.
enum Held {
    None,
    Object(Arc<Object>),
    Small(SmallRef),
}

/// The fields of a [`Node`] that only listed names and media names have.
struct Rare {
    listed: Option<ListedEntry>,
    media: Option<MediaRequest>,
    view: Option<MediaView>,
}

impl Held {
    fn new(object: Option<Arc<Object>>, small: Option<SmallRef>) -> Held {
        match (object, small) {
            (Some(object), _) => match compact(&object) {
                Some(small) => Held::Small(small),
                None => Held::Object(object),
            },
            (None, Some(small)) => Held::Small(small),
            (None, None) => Held::None,
        }
    }
}

/// What an inode keeps of a small object instead of the object (`None` for a large one).
fn compact(object: &Object) -> Option<SmallRef> {
    let mut small = object.small_ref()?;
    if object.is_detached() {
        small.expire();
    }
    Some(small)
}

impl Stored {
    fn new(node: Node) -> Stored {
        let rare =
            (node.listed.is_some() || node.media.is_some() || node.view.is_some()).then(|| {
                Box::new(Rare {
                    listed: node.listed,
                    media: node.media,
                    view: node.view,
                })
            });
        Stored {
            site: node.site,
            path: node.path,
            held: Held::new(node.object, node.small),
            rare,
        }
    }

    fn node(&self) -> Node {
        let (object, small) = match &self.held {
            Held::None => (None, None),
            Held::Object(object) => (Some(object.clone()), None),
            Held::Small(small) => (None, Some(*small)),
        };
        let rare = self.rare.as_deref();
        Node {
            site: self.site,
            path: self.path.clone(),
            object,
            listed: rare.and_then(|r| r.listed.clone()),
            media: rare.and_then(|r| r.media.clone()),
            view: rare.and_then(|r| r.view.clone()),
            small,
        }
    }

    fn set_view(&mut self, view: Option<MediaView>) {
        match (&mut self.rare, view) {
            (Some(rare), view) => rare.view = view,
            (None, None) => {}
            (None, Some(view)) => {
                self.rare = Some(Box::new(Rare {
                    listed: None,
                    media: None,
                    view: Some(view),
                }))
            }
        }
    }
}

/// A name, kept as the tail of its path when it is that (as most are): it then costs nothing.
#[derive(Clone)]
struct Name {
    text: Arc<str>,
    at: u32,
}

impl Name {
    fn new(name: &str, path: &Arc<str>) -> Name {
        let at = path.len().saturating_sub(name.len());
        let tail = path.ends_with(name) && path[..at].ends_with('/');
        match (tail, u32::try_from(at)) {
            (true, Ok(at)) => Name {
                text: path.clone(),
                at,
            },
            _ => Name::own(name),
        }
    }

    fn own(name: &str) -> Name {
        Name {
            text: Arc::from(name),
            at: 0,
        }
    }

    fn as_str(&self) -> &str {
        &self.text[self.at as usize..]
    }

    fn to_arc(&self) -> Arc<str> {
        match self.at {
            0 => self.text.clone(),
            _ => Arc::from(self.as_str()),
        }
    }
}

/// A name under a parent directory: what a lookup asks for.
#[derive(Clone)]
struct ChildKey {
    parent: u64,
    name: Name,
}

impl PartialEq for ChildKey {
    fn eq(&self, other: &ChildKey) -> bool {
        self.parent == other.parent && self.name.as_str() == other.name.as_str()
    }
}

impl Eq for ChildKey {}

impl Hash for ChildKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parent.hash(state);
        self.name.as_str().hash(state);
    }
}

/// The version whose pages the kernel may keep across opens (`FOPEN_KEEP_CACHE`): a large
/// object by identity (a weak reference keeps its address from being reused), a small one by
/// its tag (the object is rebuilt from its record, and is the same version if its tag is).
enum Pages {
    None,
    Object(Weak<Object>),
    Small(SmallTag),
}

impl Pages {
    fn of(object: &Arc<Object>) -> Pages {
        match object.small_tag() {
            Some(tag) => Pages::Small(tag),
            None => Pages::Object(Arc::downgrade(object)),
        }
    }

    fn belong_to(&self, object: &Object) -> bool {
        match self {
            Pages::None => false,
            Pages::Object(weak) => std::ptr::eq(weak.as_ptr(), object),
            Pages::Small(tag) => object.small_tag() == Some(*tag),
        }
    }
}

struct Entry {
    node: Stored,
    parent: u64,
    name: Name,
    lookups: u64,
    page_cache: Pages,
    /// Boxed: most inodes are not open.
    opens: Option<Box<Opens>>,
}

impl Entry {
    fn new(node: Node, parent: u64, name: Name, lookups: u64) -> Box<Entry> {
        Box::new(Entry {
            node: Stored::new(node),
            parent,
            name,
            lookups,
            page_cache: Pages::None,
            opens: None,
        })
    }

    fn key(&self) -> ChildKey {
        ChildKey {
            parent: self.parent,
            name: self.name.clone(),
        }
    }

    /// Whether `next` is another version of this entry's file.
    fn is_replaced_by(&self, next: Option<&Arc<Object>>) -> bool {
        let Some(new) = next.filter(|new| new.kind() == ObjectKind::File) else {
            return false;
        };
        match &self.node.held {
            Held::Object(old) => old.kind() == ObjectKind::File && !old.holds_same_bytes_as(new),
            // By the whole tag, which hashes the bytes too: without validators, two
            // versions of one size would otherwise look like one.
            Held::Small(old) => match new.small_tag() {
                Some(tag) => tag != old.tag,
                None => !(new.version().is_pinned() && old.tag.version == new.version_hash()),
            },
            Held::None => false,
        }
    }

    /// Pages of some version were handed out with `FOPEN_KEEP_CACHE`, and `next` is another
    /// version. Forgets that version, so one change invalidates once.
    fn take_stale_pages(&mut self, next: Option<&Arc<Object>>) -> bool {
        let never_opened = matches!(self.page_cache, Pages::None);
        let same = next.is_some_and(|n| self.page_cache.belong_to(n));
        if never_opened || same {
            return false;
        }
        self.page_cache = Pages::None;
        true
    }

    fn is_open(&self) -> bool {
        self.opens
            .as_ref()
            .is_some_and(|o| o.cached > 0 || o.passthrough > 0)
    }
}

/// What a revalidation did to an inode.
#[derive(Debug, PartialEq)]
pub enum Revalidated {
    /// The inode shows the new object; the kernel may hold pages of an older version.
    Updated { stale_pages: bool },
    /// Files are reading the inode's version, which it keeps; the name `name` under `parent`
    /// is looked up afresh next time, into a new inode.
    Kept { parent: u64, name: Arc<str> },
}

/// Open handles of one inode. The kernel refuses cached and passthrough opens of one inode
/// at the same time, so the first open decides until every handle is closed.
#[derive(Default)]
struct Opens {
    cached: usize,
    passthrough: usize,
    backing: Option<Arc<dyn KeptRegistration>>,
}

/// How one open of a file is served.
pub enum OpenMode {
    /// Reads come to the daemon (and the kernel page cache).
    Cached,
    /// Reads go straight to the cache file; the id stays registered while any such open lasts.
    Passthrough(Arc<dyn KeptRegistration>),
}

/// Boxed entries: a hash table's slots stay allocated at its peak size (up to twice its
/// entries), so a slot is 16 bytes rather than the whole entry.
struct Table {
    entries: HashMap<u64, Box<Entry>>,
    children: HashMap<ChildKey, u64>,
    next_ino: u64,
}

impl Table {
    /// Gives memory back once the kernel has forgotten most inodes.
    fn shrink_when_sparse(&mut self) {
        crate::base::shrink_when_sparse(&mut self.entries);
        crate::base::shrink_when_sparse(&mut self.children);
    }
}

/// Inode numbers the kernel holds, with the path and object version each stands for, and
/// the open handles of each.
///
/// Owns: one entry per inode the kernel has looked up and not forgotten.
/// Must hold: an inode number is never reused for another path or version while the kernel
/// holds it (a new version gets a new number); one inode never has cached and passthrough
/// opens at once.
pub struct InodeTable {
    table: Mutex<Table>,
    journal: OnceLock<Arc<Journal>>,
}

impl InodeTable {
    pub fn new(root_site: Option<SiteId>) -> InodeTable {
        let mut entries = HashMap::new();
        let root = Node {
            site: root_site,
            ..Node::new(0, Arc::from(""), None)
        };
        entries.insert(ROOT_INO, Entry::new(root, ROOT_INO, Name::own(""), 1));
        InodeTable {
            table: Mutex::new(Table {
                entries,
                children: HashMap::new(),
                next_ino: ROOT_INO + 1,
            }),
            journal: OnceLock::new(),
        }
    }

    /// Writes every inode number and lookup count to `journal` from now on.
    /// Fails (giving `journal` back) when the table records to a journal already.
    pub fn set_journal(&self, journal: Arc<Journal>) -> Result<(), Arc<Journal>> {
        self.journal.set(journal)
    }

    /// Puts back the inodes a previous process handed to the kernel, parents first, and
    /// continues numbering at `next_ino`. Of two inodes of one name, the newer (higher)
    /// number is the name's current one, as it was before.
    pub fn restore(&self, carried: Vec<CarriedInode>, next_ino: u64) {
        let mut table = self.table.lock();
        for inode in carried {
            let name = Name::new(&inode.name, &inode.node.path);
            let key = ChildKey {
                parent: inode.parent,
                name: name.clone(),
            };
            let newer = table
                .children
                .get(&key)
                .is_none_or(|&other| other < inode.ino);
            if newer {
                table.children.insert(key, inode.ino);
            }
            // Pages unknown: the first open drops whatever pages the kernel holds.
            let entry = Entry::new(inode.node, inode.parent, name, inode.lookups);
            table.entries.insert(inode.ino, entry);
        }
        table.next_ino = table.next_ino.max(next_ino);
    }

    /// Puts back the open handles of an inode carried over a restart: `cached` handles read
    /// through the daemon, or `passthrough` handles that share one registration.
    pub fn restore_opens(
        &self,
        ino: u64,
        cached: usize,
        passthrough: Option<(usize, Arc<dyn KeptRegistration>)>,
    ) {
        let mut table = self.table.lock();
        let Some(entry) = table.entries.get_mut(&ino) else {
            return;
        };
        let opens = entry.opens.get_or_insert_with(Box::default);
        opens.cached = cached;
        if let Some((count, backing)) = passthrough {
            opens.passthrough = count;
            opens.backing = Some(backing);
        }
    }

    /// The inodes of `site` whose path `covers` says yes to, each with its parent and name.
    pub fn matching(
        &self,
        site: SiteId,
        covers: &dyn Fn(&str) -> bool,
    ) -> Vec<(u64, u64, Arc<str>)> {
        let table = self.table.lock();
        table
            .entries
            .iter()
            .filter(|(_, e)| e.node.site == Some(site) && covers(&e.node.path))
            .map(|(&ino, e)| (ino, e.parent, e.name.to_arc()))
            .collect()
    }

    /// The inode's node; a small file's that nobody has open comes without its object (see
    /// [`Node::small`]).
    pub fn get(&self, ino: u64) -> Option<Node> {
        let table = self.table.lock();
        table.entries.get(&ino).map(|entry| entry.node.node())
    }

    /// Whether `ino` shows a small version whose bytes came with its lookup and were not
    /// used yet; says no from now on (the caller's use is that first one).
    pub fn take_fetched(&self, ino: u64) -> bool {
        let mut table = self.table.lock();
        match table.entries.get_mut(&ino).map(|e| &mut e.node.held) {
            Some(Held::Small(small)) => std::mem::take(&mut small.fetched),
            _ => false,
        }
    }

    /// Records a successful lookup of `name` under `parent`; returns the child's inode number.
    /// Also says whether the kernel may hold pages of an older version (to invalidate).
    pub fn attach(&self, parent: u64, name: &str, node: Node) -> (u64, bool) {
        let mut table = self.table.lock();
        let key = ChildKey {
            parent,
            name: Name::own(name),
        };
        if let Some(&ino) = table.children.get(&key) {
            if let Some(entry) = table.entries.get_mut(&ino) {
                if !entry.is_replaced_by(node.object.as_ref()) {
                    entry.lookups += 1;
                    if let Some(journal) = self.journal.get() {
                        journal.set_lookups(ino, entry.lookups);
                    }
                    let stale = entry.take_stale_pages(node.object.as_ref());
                    entry.node = Stored::new(node);
                    return (ino, stale);
                }
                // A new version gets a new inode: files still open on the old one keep
                // their own page cache, so they can never read the new version's pages.
                // The old entry lives on until the kernel forgets it.
            }
        }
        let ino = table.next_ino;
        table.next_ino += 1;
        if let Some(journal) = self.journal.get() {
            journal.reserve_inodes(table.next_ino);
            journal.record_inode(ino, parent, node.journal_kind(), name, 1);
        }
        let name = Name::new(name, &node.path);
        let entry = Entry::new(node, parent, name, 1);
        table.children.insert(entry.key(), ino);
        table.entries.insert(ino, entry);
        (ino, false)
    }

    /// Puts the object found by a revalidation, and how it is presented, at an inode. An
    /// inode whose file is being read (open handles, or `in_use` by the caller's reckoning)
    /// keeps its version instead, so no reader ever mixes two versions in one file or one
    /// page cache: its name goes to a new inode at the next lookup.
    pub fn update_object(
        &self,
        ino: u64,
        object: &Arc<Object>,
        view: Option<MediaView>,
        in_use: bool,
    ) -> Revalidated {
        let mut table = self.table.lock();
        let Some(entry) = table.entries.get_mut(&ino) else {
            return Revalidated::Updated { stale_pages: false };
        };
        let read = in_use || entry.is_open();
        if read && entry.is_replaced_by(Some(object)) {
            let key = entry.key();
            if table.children.get(&key) == Some(&ino) {
                table.children.remove(&key);
            }
            return Revalidated::Kept {
                parent: key.parent,
                name: key.name.to_arc(),
            };
        }
        let stale_pages = entry.take_stale_pages(Some(object));
        entry.node.held = Held::new(Some(object.clone()), None);
        entry.node.set_view(view);
        Revalidated::Updated { stale_pages }
    }

    /// Takes its name from `ino`: the next lookup of the name makes a new inode. Returns the
    /// name (for the kernel's entry to be dropped); `None` for an unknown inode.
    pub fn detach(&self, ino: u64) -> Option<(u64, Arc<str>)> {
        let mut table = self.table.lock();
        let key = table.entries.get(&ino)?.key();
        if table.children.get(&key) == Some(&ino) {
            table.children.remove(&key);
        }
        Some((key.parent, key.name.to_arc()))
    }

    /// Whether the kernel's cached pages for `ino` belong to `object`; records that they will.
    pub fn keep_page_cache(&self, ino: u64, object: &Arc<Object>) -> bool {
        let mut table = self.table.lock();
        let Some(entry) = table.entries.get_mut(&ino) else {
            return false;
        };
        let same = entry.page_cache.belong_to(object);
        entry.page_cache = Pages::of(object);
        same
    }

    /// Chooses how a new open is served. `open_backing` registers the cache file with the
    /// kernel; it is only called when passthrough is `wanted` and no cached open is active.
    pub fn begin_open(
        &self,
        ino: u64,
        wanted: bool,
        open_backing: impl FnOnce() -> std::io::Result<Arc<dyn KeptRegistration>>,
    ) -> OpenMode {
        let mut table = self.table.lock();
        let Some(entry) = table.entries.get_mut(&ino) else {
            return OpenMode::Cached;
        };
        let opens = entry.opens.get_or_insert_with(Box::default);
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
        let Some(opens) = entry.opens.as_mut() else {
            return;
        };
        if passthrough {
            opens.passthrough = opens.passthrough.saturating_sub(1);
            if opens.passthrough == 0 {
                opens.backing = None;
            }
        } else {
            opens.cached = opens.cached.saturating_sub(1);
        }
        if opens.cached == 0 && opens.passthrough == 0 {
            // Its last registration, if any, was dropped above, under this lock as before.
            entry.opens = None;
        }
    }

    /// The kernel dropped `count` lookups of `ino`; returns whether the inode is gone.
    pub fn forget(&self, ino: u64, count: u64) -> bool {
        if ino == ROOT_INO {
            return false;
        }
        let mut table = self.table.lock();
        let Some(entry) = table.entries.get_mut(&ino) else {
            return false;
        };
        entry.lookups = entry.lookups.saturating_sub(count);
        if let Some(journal) = self.journal.get() {
            journal.set_lookups(ino, entry.lookups);
        }
        if entry.lookups > 0 {
            return false;
        }
        if let Some(entry) = table.entries.remove(&ino) {
            let key = entry.key();
            if table.children.get(&key) == Some(&ino) {
                table.children.remove(&key);
            }
        }
        table.shrink_when_sparse();
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::fs::File;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::SystemTime;

    use proptest::prelude::*;

    use super::*;
    use crate::fuse::passthrough::{Backing, Backings};
    use crate::store::{LoadedObject, MetaHeader, ObjectLocation};

    /// Registrations without a kernel: ids handed out and the ones still open.
    #[derive(Default)]
    struct FakeBackings {
        next: AtomicU32,
        open: parking_lot::Mutex<HashSet<u32>>,
    }

    impl Backings for FakeBackings {
        fn open(&self, _: &File) -> std::io::Result<u32> {
            let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
            self.open.lock().insert(id);
            Ok(id)
        }
        fn close(&self, id: u32) {
            assert!(self.open.lock().remove(&id), "backing {id} closed twice");
        }
    }

    struct Kernel {
        fake: Arc<FakeBackings>,
        owner: Arc<dyn Backings>,
        file: File,
    }

    impl Kernel {
        fn new() -> Kernel {
            let fake = Arc::new(FakeBackings::default());
            Kernel {
                owner: fake.clone(),
                fake,
                file: tempfile::tempfile().expect("temp file"),
            }
        }

        fn register(&self) -> std::io::Result<Arc<dyn KeptRegistration>> {
            let backing = Backing::register(&self.owner, &self.file)?;
            Ok(backing)
        }

        fn live(&self) -> usize {
            self.fake.open.lock().len()
        }
    }

    /// An object version of `/f` (never touches its files).
    fn version(etag: &str) -> Arc<Object> {
        let header = MetaHeader {
            site: "s".into(),
            path: "/f".into(),
            kind: ObjectKind::File,
            size: 10,
            etag: Some(etag.into()),
            last_modified: None,
            fetched_at: 0,
            block_size: 4096,
            ttl: 60,
        };
        let loaded = LoadedObject {
            header,
            blocks: Vec::new(),
            location: ObjectLocation {
                data: "/nonexistent/ston-fs-test.data".into(),
                meta: "/nonexistent/ston-fs-test.meta".into(),
            },
            last_used: SystemTime::UNIX_EPOCH,
        };
        Arc::new(Object::restore(0, loaded, Weak::new()))
    }

    fn node(object: Option<Arc<Object>>) -> Node {
        Node::new(0, Arc::from("/f"), object)
    }

    #[test]
    fn lookups_add_up_and_the_last_forget_removes_the_inode() {
        let table = InodeTable::new(Some(0));
        let (ino, stale) = table.attach(ROOT_INO, "f", node(None));
        assert!(!stale);
        assert_eq!(table.attach(ROOT_INO, "f", node(None)).0, ino);
        assert_eq!(table.attach(ROOT_INO, "f", node(None)).0, ino);
        table.forget(ino, 2);
        assert!(table.get(ino).is_some(), "one lookup is still held");
        table.forget(ino, 1);
        assert!(table.get(ino).is_none());
        table.forget(ino, 1);
        let (again, _) = table.attach(ROOT_INO, "f", node(None));
        assert!(again > ino, "numbers are never reused");
        assert_ne!(
            table.attach(again, "f", node(None)).0,
            again,
            "another parent, another inode"
        );
    }

    #[test]
    fn forgetting_most_inodes_gives_the_table_memory_back() {
        let table = InodeTable::new(Some(0));
        let inodes: Vec<u64> = (0..20_000)
            .map(|i| table.attach(ROOT_INO, &format!("f{i}"), node(None)).0)
            .collect();
        let peak = table.table.lock().entries.capacity();
        for &ino in &inodes[10..] {
            table.forget(ino, 1);
        }
        let shrunk = table.table.lock().entries.capacity();
        assert!(shrunk * 8 <= peak, "capacity {peak} -> {shrunk}");
        for &ino in &inodes[..10] {
            assert!(table.get(ino).is_some(), "held inodes stay");
        }
        assert!(table.table.lock().children.capacity() * 8 <= peak);
    }

    #[test]
    fn the_root_is_never_forgotten() {
        let table = InodeTable::new(None);
        table.forget(ROOT_INO, 1_000);
        let root = table.get(ROOT_INO).expect("root");
        assert!(root.site.is_none() && root.path.is_empty() && root.is_directory());
    }

    #[test]
    fn a_new_version_gets_a_new_inode_and_the_old_one_lives_until_forgotten() {
        let table = InodeTable::new(Some(0));
        let (v1, v2) = (version("\"1\""), version("\"2\""));
        let (old, _) = table.attach(ROOT_INO, "f", node(Some(v1.clone())));
        let (new, _) = table.attach(ROOT_INO, "f", node(Some(v2.clone())));
        assert_ne!(old, new);
        let kept = table.get(old).and_then(|n| n.object).expect("old inode");
        assert!(
            Arc::ptr_eq(&kept, &v1),
            "open files of the old inode keep their version"
        );
        table.forget(old, 1);
        assert!(table.get(old).is_none());
        // Forgetting the old inode leaves the name pointing at the new one.
        assert_eq!(table.attach(ROOT_INO, "f", node(Some(v2.clone()))).0, new);
        table.forget(new, 1);
        assert!(table.get(new).is_some(), "the second lookup still holds it");
    }

    #[test]
    fn pages_of_another_object_are_invalidated_once() {
        let table = InodeTable::new(Some(0));
        let first = version("\"1\"");
        let (ino, _) = table.attach(ROOT_INO, "f", node(Some(first.clone())));
        assert!(!table.keep_page_cache(ino, &first), "no pages yet");
        assert!(
            table.keep_page_cache(ino, &first),
            "the same object keeps its pages"
        );
        // Same version, but another object (reloaded): the same inode, pages dropped once.
        let reloaded = version("\"1\"");
        let (same, stale) = table.attach(ROOT_INO, "f", node(Some(reloaded.clone())));
        assert_eq!((same, stale), (ino, true));
        assert!(!table.attach(ROOT_INO, "f", node(Some(reloaded.clone()))).1);
        assert!(!table.keep_page_cache(ino, &reloaded));
        let stale =
            |ino: u64, object: &Arc<Object>| match table.update_object(ino, object, None, false) {
                Revalidated::Updated { stale_pages } => stale_pages,
                kept => panic!("nothing reads inode {ino}, yet {kept:?}"),
            };
        assert!(!stale(ino, &reloaded), "the pages belong to it");
        assert!(stale(ino, &first));
        assert!(!stale(ino, &first));
        assert!(!stale(9_999, &first), "unknown inodes have no pages");
        assert!(!table.keep_page_cache(9_999, &first));
    }

    #[test]
    fn an_inode_being_read_keeps_its_version_and_its_name_moves_on() {
        let kernel = Kernel::new();
        let table = InodeTable::new(Some(0));
        let (v1, v2) = (version("\"1\""), version("\"2\""));
        for (opened, in_use) in [(true, false), (false, true)] {
            let name = format!("f{opened}");
            let (ino, _) = table.attach(ROOT_INO, &name, node(Some(v1.clone())));
            if opened {
                let _ = table.begin_open(ino, false, || kernel.register());
            }
            assert_eq!(
                table.update_object(ino, &v2, None, in_use),
                Revalidated::Kept {
                    parent: ROOT_INO,
                    name: Arc::from(name.as_str()),
                }
            );
            let kept = table.get(ino).and_then(|n| n.object).expect("still there");
            assert!(Arc::ptr_eq(&kept, &v1), "the inode keeps the version read");
            let (next, _) = table.attach(ROOT_INO, &name, node(Some(v2.clone())));
            assert_ne!(next, ino, "the new version gets an inode of its own");
            let same_version = table.update_object(ino, &v1, None, in_use);
            assert_eq!(same_version, Revalidated::Updated { stale_pages: false });
        }
    }

    #[test]
    fn cached_and_passthrough_opens_never_mix() {
        let kernel = Kernel::new();
        let table = InodeTable::new(Some(0));
        let (ino, _) = table.attach(ROOT_INO, "f", node(None));
        let OpenMode::Passthrough(a) = table.begin_open(ino, true, || kernel.register()) else {
            panic!("passthrough wanted and possible");
        };
        // A second open joins the registration, even when it did not ask for passthrough.
        let OpenMode::Passthrough(b) = table.begin_open(ino, false, || panic!("no new one")) else {
            panic!("the inode is in passthrough");
        };
        assert_eq!(a.id(), b.id());
        assert_eq!(kernel.live(), 1);
        table.end_open(ino, true);
        drop(a);
        assert_eq!(kernel.live(), 1, "one passthrough open is left");
        table.end_open(ino, true);
        drop(b);
        assert_eq!(kernel.live(), 0, "the last release unregisters");
        assert!(matches!(
            table.begin_open(ino, false, || panic!("not wanted")),
            OpenMode::Cached
        ));
        assert!(
            matches!(
                table.begin_open(ino, true, || panic!("a cached open is active")),
                OpenMode::Cached
            ),
            "passthrough waits for cached opens to close"
        );
        table.end_open(ino, false);
        table.end_open(ino, false);
        assert!(matches!(
            table.begin_open(ino, true, || kernel.register()),
            OpenMode::Passthrough(_)
        ));
    }

    #[test]
    fn a_refused_registration_serves_the_open_cached() {
        let table = InodeTable::new(Some(0));
        let (ino, _) = table.attach(ROOT_INO, "f", node(None));
        let refused = || Err(std::io::Error::other("no passthrough here"));
        assert!(matches!(
            table.begin_open(ino, true, refused),
            OpenMode::Cached
        ));
        assert!(matches!(
            table.begin_open(ino, true, || panic!("cached open active")),
            OpenMode::Cached
        ));
        assert!(matches!(
            table.begin_open(9_999, true, || panic!("unknown")),
            OpenMode::Cached
        ));
        table.end_open(9_999, true);
        table.forget(9_999, 1);
    }

    /// With a journal, what the table hands the kernel is recorded before it is handed out:
    /// a new table built from the journal has the same numbers, names and counts, and keeps
    /// numbering after them.
    #[test]
    fn the_journal_carries_numbers_names_and_counts_to_a_new_table() {
        let file = crate::fuse::journal::sealed_memfd("inodes-test").unwrap();
        let journal = Arc::new(Journal::create(file, b"init", b"reply").unwrap());
        let table = InodeTable::new(Some(0));
        assert!(
            table.set_journal(journal.clone()).is_ok(),
            "the first journal"
        );
        let dir = Node {
            listed: Some(ListedEntry {
                name: "d".into(),
                is_dir: true,
                size: None,
                mtime: None,
            }),
            ..Node::new(0, Arc::from("/d"), None)
        };
        let (d, _) = table.attach(ROOT_INO, "d", dir);
        let (f, _) = table.attach(d, "f", node(Some(version("\"1\""))));
        let (g, _) = table.attach(d, "g", node(None));
        table.attach(d, "f", node(Some(version("\"1\""))));
        table.forget(g, 1);
        let (newer, _) = table.attach(d, "f", node(Some(version("\"2\""))));
        assert_ne!(newer, f);

        let file = std::fs::File::from(journal.descriptor().unwrap());
        let (_, restored) = Journal::open(file).unwrap();
        let carried = restored.carried;
        let mut got: Vec<(u64, u64, String, u64)> = carried
            .inodes
            .iter()
            .map(|i| (i.ino, i.parent, i.name.clone(), i.lookups))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (d, ROOT_INO, "d".to_string(), 1),
                (f, d, "f".to_string(), 2),
                (newer, d, "f".to_string(), 1),
            ],
            "the forgotten inode is gone; both versions of f are there"
        );
        assert!(carried.next_ino > newer);

        let again = InodeTable::new(Some(0));
        let placed = carried
            .inodes
            .iter()
            .map(|i| CarriedInode {
                ino: i.ino,
                parent: i.parent,
                name: Arc::from(i.name.as_str()),
                lookups: i.lookups,
                node: node(None),
            })
            .collect();
        again.restore(placed, carried.next_ino);
        assert!(again.get(f).is_some() && again.get(newer).is_some());
        assert_eq!(
            again.attach(d, "f", node(None)).0,
            newer,
            "the name leads to the newer inode, as before the restart"
        );
        let (fresh, _) = again.attach(d, "h", node(None));
        assert!(fresh >= carried.next_ino, "numbers are never reused");
        again.forget(f, 2);
        assert!(again.get(f).is_none(), "restored counts are the kernel's");
    }

    #[derive(Debug, Clone)]
    enum OpenOp {
        Begin { wanted: bool, refuse: bool },
        End(usize),
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Random opens and releases of one inode: it never has cached and passthrough opens
        /// at once, passthrough opens share one registration, and the registration lives
        /// exactly while a passthrough open does.
        #[test]
        fn open_modes_follow_the_model(
            ops in proptest::collection::vec(
                prop_oneof![
                    3 => (any::<bool>(), proptest::bool::weighted(0.2))
                        .prop_map(|(wanted, refuse)| OpenOp::Begin { wanted, refuse }),
                    2 => any::<usize>().prop_map(OpenOp::End),
                ],
                1..60,
            )
        ) {
            let kernel = Kernel::new();
            let table = InodeTable::new(Some(0));
            let (ino, _) = table.attach(ROOT_INO, "f", node(None));
            // Handles still open: `Some(backing)` for passthrough ones.
            let mut handles: Vec<Option<Arc<dyn KeptRegistration>>> = Vec::new();
            for op in ops {
                let passthrough = handles.iter().filter(|h| h.is_some()).count();
                let cached = handles.len() - passthrough;
                match op {
                    OpenOp::Begin { wanted, refuse } => {
                        let mut asked = false;
                        let mode = table.begin_open(ino, wanted, || {
                            asked = true;
                            match refuse {
                                true => Err(std::io::Error::other("refused")),
                                false => kernel.register(),
                            }
                        });
                        prop_assert_eq!(asked, passthrough == 0 && wanted && cached == 0);
                        let want_passthrough = passthrough > 0 || (asked && !refuse);
                        match mode {
                            OpenMode::Passthrough(backing) => {
                                prop_assert!(want_passthrough);
                                if let Some(Some(other)) = handles.iter().find(|h| h.is_some()) {
                                    prop_assert_eq!(other.id(), backing.id());
                                }
                                handles.push(Some(backing));
                            }
                            OpenMode::Cached => {
                                prop_assert!(!want_passthrough);
                                handles.push(None);
                            }
                        }
                    }
                    OpenOp::End(i) if !handles.is_empty() => {
                        let handle = handles.swap_remove(i % handles.len());
                        table.end_open(ino, handle.is_some());
                    }
                    OpenOp::End(_) => {}
                }
                let passthrough = handles.iter().filter(|h| h.is_some()).count();
                prop_assert!(passthrough == 0 || passthrough == handles.len(), "modes mixed");
                prop_assert_eq!(kernel.live(), usize::from(passthrough > 0));
            }
        }
    }
}
