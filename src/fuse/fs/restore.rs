//! Taking over a mount from a previous process: the inodes and open handles the kernel still
//! holds come back from the restart journal, and a handle serves no byte until the cache
//! proves it still has the exact version the handle opened.
//!
//! A handle whose version is gone (the origin changed while no process served the mount, or
//! the version had no validators to prove it by) answers EIO; an inode or handle the journal
//! did not carry answers ESTALE. Neither ever reads another file's bytes.
//!
//! Files opened without a message (`zero_message_opens`) have no handle: the kernel keeps
//! their pages across opens, and the journal records the version each inode was read at.
//! Before the first request is answered, the kernel drops the pages of every carried file
//! whose version the cache cannot vouch for (recorded and fresh); the first read of a
//! recorded inode proves its version as a handle's first read does, else that inode answers
//! EIO from then on and its name goes to a new inode. So no read after a takeover mixes
//! pages of two versions, nor gets a page of a version the origin no longer has.
//!
//! Locks: `handles` before `adopted`, which may take the inode table's and the journal's
//! (the crate's lock-order table, `src/lib.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::read::{unpinned_file, Implicit, OpenFile};
use super::{Answer, KernelCache, StonFs};
use crate::base::{now_secs, FsError, FsResult, ObjectKind, SiteId};
use crate::cache::{KeptRegistration, Object};
use crate::fuse::inodes::{CarriedInode, Node, ROOT_INO};
use crate::fuse::journal::{Carried, HandleState, NodeKind, PagesState};
use crate::fuse::passthrough::Backing;
use crate::media::{MediaView, NameKind};

/// A handle carried over a restart, until its first read proves its version.
#[derive(Debug, Clone)]
pub(super) struct AdoptedHandle {
    ino: u64,
    version: [u8; 16],
    pinned: bool,
    passthrough: bool,
    /// Its version is known to be gone: every read is EIO.
    gone: bool,
}

impl AdoptedHandle {
    pub(super) fn ino(&self) -> u64 {
        self.ino
    }
}

/// What the kernel may hold of a carried file's pages, made by the previous process, until
/// this process knows their version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CarriedPages {
    /// Read at `version` by the previous process (journaled): the inode's first read without
    /// a handle proves that version, from the cache or the origin, else the inode is `Gone`.
    /// `kept`: the cache held that very version, fresh, at the takeover, so its pages stayed.
    Version { version: [u8; 16], kept: bool },
    /// Of an unknown version: dropped before serving (see [`StonFs::drop_carried_pages`]);
    /// reads without a handle answer EIO until they are.
    Dropping,
    /// Its version is gone: every read without a handle answers EIO.
    Gone,
}

/// What [`StonFs::drop_carried_pages`] did, for the log.
#[derive(Debug, Default, Clone, Copy)]
pub struct PagesReport {
    /// Carried files whose pages stayed (their recorded version is fresh in the cache).
    pub kept: usize,
    /// Carried files whose pages were to be dropped.
    pub to_drop: usize,
    /// Of those, dropped before the first request was answered.
    pub dropped_before_serving: usize,
    pub waited: Duration,
}

/// What a takeover carried over, for the log.
#[derive(Debug, Default, Clone, Copy)]
pub struct TakeoverReport {
    pub inodes: usize,
    pub handles: usize,
    pub backings_kept: usize,
    pub backings_closed: usize,
    /// Inodes the journal carried that this configuration cannot place (a virtual host gone).
    pub unplaced: usize,
}

impl StonFs {
    /// Puts back what a previous process handed to the kernel (see [`StonFs::take_over`]).
    pub(super) fn restore(&self, carried: Carried) -> TakeoverReport {
        let mut report = TakeoverReport::default();
        let placed = self.place_inodes(&carried, &mut report);
        self.carry_pages(&placed, &carried.pages);
        self.inodes.restore(placed, carried.next_ino);
        self.restore_handles(&carried.handles, &mut report);
        self.close_unused_backings(&carried, &mut report);
        let next = self.next_handle.load(std::sync::atomic::Ordering::Relaxed);
        self.next_handle.store(
            next.max(carried.next_fh),
            std::sync::atomic::Ordering::Relaxed,
        );
        report
    }

    /// What each carried file's kernel pages are: of a recorded version (kept when the cache
    /// holds that version, fresh), or of an unknown one.
    fn carry_pages(&self, placed: &[CarriedInode], recorded: &[PagesState]) {
        let recorded: HashMap<u64, [u8; 16]> =
            recorded.iter().map(|p| (p.ino, p.version)).collect();
        let now = now_secs();
        let states: Vec<(u64, CarriedPages)> = placed
            .iter()
            .filter(|inode| !inode.node.is_directory())
            .map(|inode| {
                let state = match recorded.get(&inode.ino) {
                    Some(&version) => {
                        let kept = inode.node.object.as_ref().is_some_and(|object| {
                            !object.is_detached()
                                && object.is_fresh(now)
                                && self.version_id(object, inode.node.view.as_ref()) == version
                        });
                        CarriedPages::Version { version, kept }
                    }
                    None => CarriedPages::Dropping,
                };
                (inode.ino, state)
            })
            .collect();
        self.carried_pages.lock().extend(states);
    }

    /// Has the kernel drop the pages of every carried file whose version is not known good,
    /// before this process answers any request: call it after [`StonFs::take_over`], before
    /// serving. It waits at most `bound`: a page locked by a read in flight across the
    /// takeover (the kernel queues it again) is only unlocked once that read is answered,
    /// which then goes on from another thread; until a file's pages are dropped, its reads
    /// without a handle answer EIO. Files with open handles carried over go last and are
    /// not waited for: a handle proves its own version.
    pub fn drop_carried_pages(
        self: &Arc<Self>,
        kernel: Arc<dyn KernelCache>,
        with_handles: &HashSet<u64>,
        bound: Duration,
    ) -> PagesReport {
        let started = Instant::now();
        let mut report = PagesReport::default();
        let (mut first, mut last) = (Vec::new(), Vec::new());
        for (&ino, state) in self.carried_pages.lock().iter() {
            match state {
                CarriedPages::Version { kept: true, .. } => report.kept += 1,
                CarriedPages::Version { kept: false, .. } | CarriedPages::Dropping => {
                    match with_handles.contains(&ino) {
                        true => last.push(ino),
                        false => first.push(ino),
                    }
                }
                CarriedPages::Gone => {}
            }
        }
        report.to_drop = first.len() + last.len();
        if report.to_drop == 0 {
            return report;
        }
        let waited_for = first.len();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<usize>();
        let fs = self.clone();
        self.runtime.spawn_blocking(move || {
            for (n, ino) in first.into_iter().chain(last).enumerate() {
                kernel.invalidate_inode(ino);
                let mut carried = fs.carried_pages.lock();
                if carried.get(&ino) == Some(&CarriedPages::Dropping) {
                    carried.remove(&ino);
                }
                drop(carried);
                let _ = done_tx.send(n + 1);
            }
        });
        let deadline = started + bound;
        while report.dropped_before_serving < waited_for {
            let left = deadline.saturating_duration_since(Instant::now());
            match done_rx.recv_timeout(left) {
                Ok(n) => report.dropped_before_serving = n,
                Err(_) => break,
            }
        }
        // Whatever else finished meanwhile.
        while let Ok(n) = done_rx.try_recv() {
            report.dropped_before_serving = n;
        }
        report.waited = started.elapsed();
        if report.dropped_before_serving < waited_for {
            tracing::warn!(
                dropped = report.dropped_before_serving,
                to_drop = report.to_drop,
                "the kernel's pages of files carried over a restart were not all dropped within \
                 {} ms (a read in flight holds a page); the rest are dropped once it is \
                 answered, and until then reads of those files answer EIO",
                bound.as_millis()
            );
        } else {
            tracing::info!(
                kept = report.kept,
                dropped = report.dropped_before_serving,
                to_drop = report.to_drop,
                "pages of files carried over a restart: those of a version not known good \
                 dropped before serving, in {} ms",
                report.waited.as_millis()
            );
        }
        report
    }

    /// A read without a handle of an inode carried over a restart whose pages this process
    /// does not vouch for yet: EIO while they are being dropped or their version is gone;
    /// for a recorded version, the read waits for the proof. `None`: read as usual.
    pub(super) fn read_carried(
        self: &Arc<Self>,
        ino: u64,
        offset: u64,
        size: u32,
    ) -> Option<Answer<Bytes>> {
        let state = self.carried_pages.lock().get(&ino).copied()?;
        let version = match state {
            CarriedPages::Dropping | CarriedPages::Gone => {
                return Some(Answer::Now(Err(FsError::VersionChanged)))
            }
            CarriedPages::Version { version, .. } => version,
        };
        let Some(node) = self.node(ino) else {
            return Some(Answer::Now(Err(FsError::Stale)));
        };
        match self.version_in_cache(&node) {
            Some(Ok((object, view))) if self.version_id(&object, view.as_ref()) == version => {
                self.pages_proven(ino, object, view);
                return None;
            }
            Some(Err(error)) => return Some(Answer::Now(Err(error))),
            _ => {}
        }
        let fs = self.clone();
        Some(Answer::later(async move {
            let deadline = Instant::now() + fs.cache.request_timeout();
            match fs.version_at_origin(&node, deadline).await {
                Ok((object, view)) if fs.version_id(&object, view.as_ref()) == version => {
                    fs.pages_proven(ino, object, view);
                }
                Ok(_) | Err(FsError::NotFound) => {
                    fs.pages_gone(ino, &node.path);
                    return Err(FsError::VersionChanged);
                }
                Err(error) => return Err(error),
            }
            match fs.read(ino, 0, offset, size) {
                Answer::Now(result) => result,
                Answer::Later(read) => read.await,
            }
        }))
    }

    /// The carried inode's recorded version is the one there now: it is read as if this
    /// process had read it, and the kernel's pages of it stay.
    fn pages_proven(&self, ino: u64, object: Arc<Object>, view: Option<MediaView>) {
        let _ = self.inodes.update_object(ino, &object, view.clone(), false);
        let kept = match (object.small_tag(), &view) {
            (Some(tag), None) => Implicit::Small(tag),
            _ => Implicit::File(Arc::new(unpinned_file(&object, view, ino))),
        };
        self.implicit.lock().insert(ino, kept);
        // Its reads go on through the handle just made (a `Gone` one stays gone).
        let mut carried = self.carried_pages.lock();
        if matches!(carried.get(&ino), Some(CarriedPages::Version { .. })) {
            carried.remove(&ino);
        }
    }

    /// The carried inode's recorded version is gone: its reads answer EIO, its pages go, and
    /// its name goes to a new inode at the next lookup (whatever version this inode shows).
    fn pages_gone(&self, ino: u64, path: &str) {
        {
            let mut carried = self.carried_pages.lock();
            if !matches!(carried.get(&ino), Some(CarriedPages::Version { .. })) {
                return;
            }
            carried.insert(ino, CarriedPages::Gone);
        }
        tracing::warn!(
            ino,
            path,
            "a file read before the restart has another version at the origin now: reads of \
             it through names looked up before answer EIO; a new lookup gets the new version"
        );
        if let Some((parent, name)) = self.inodes.detach(ino) {
            self.invalidate_entry(parent, &name);
        }
        self.invalidate_pages(ino);
    }

    /// Records the version of the pages the kernel is about to get for `ino`, read without a
    /// handle; a version without validators is not recorded (no answer could prove it).
    pub(super) fn journal_pages(&self, ino: u64, object: &Object, view: Option<&MediaView>) {
        let Some(journal) = self.journal() else {
            return;
        };
        if !object.version().is_pinned() {
            return;
        }
        journal.record_pages(&PagesState {
            ino,
            version: self.version_id(object, view),
        });
    }

    /// What the cache holds at the node's path now, presented as the node asks: `None` when
    /// the cache holds nothing there or cannot present it without the origin.
    fn version_in_cache(&self, node: &Node) -> Option<FsResult<(Arc<Object>, Option<MediaView>)>> {
        let Some(site) = node.site else {
            return Some(Err(FsError::Stale));
        };
        let object = self.cache.cached_object(site, &node.path)?;
        let view = match &node.media {
            None => None,
            Some(request) => match self.media.presentation_now(&object, request)? {
                Ok(presentation) => presentation.view().cloned(),
                Err(error) => return Some(Err(error)),
            },
        };
        Some(Ok((object, view)))
    }

    /// What the origin says is at the node's path now, presented as the node asks.
    async fn version_at_origin(
        &self,
        node: &Node,
        deadline: Instant,
    ) -> FsResult<(Arc<Object>, Option<MediaView>)> {
        let site = node.site.ok_or(FsError::Stale)?;
        let object = self
            .cache
            .resolve(site, node.path.clone(), deadline)
            .await?;
        let view = match &node.media {
            None => None,
            Some(request) => {
                let presentation = self.media.present(&object, request, deadline).await?;
                presentation.view().cloned()
            }
        };
        Ok((object, view))
    }

    /// Rebuilds each carried inode's path from its parent's, and finds what the cache holds
    /// there now.
    fn place_inodes(&self, carried: &Carried, report: &mut TakeoverReport) -> Vec<CarriedInode> {
        let root_site = self.node(ROOT_INO).and_then(|n| n.site);
        let mut places: HashMap<u64, (Option<SiteId>, Arc<str>)> = HashMap::new();
        places.insert(ROOT_INO, (root_site, Arc::from("")));
        let mut placed = Vec::with_capacity(carried.inodes.len());
        for inode in &carried.inodes {
            let Some((parent_site, parent_path)) = places.get(&inode.parent).cloned() else {
                report.unplaced += 1;
                self.forget_carried_inode(inode.ino);
                continue;
            };
            let node = match parent_site {
                // At the virtual-host root, names are hosts.
                None => match self.cache.vhost_named(&inode.name) {
                    Some(site) => Node::new(site, Arc::from(""), None),
                    None => {
                        report.unplaced += 1;
                        self.forget_carried_inode(inode.ino);
                        continue;
                    }
                },
                Some(site) => {
                    match self.carried_node(site, &parent_path, &inode.name, inode.kind) {
                        Some(node) => node,
                        None => {
                            report.unplaced += 1;
                            self.forget_carried_inode(inode.ino);
                            continue;
                        }
                    }
                }
            };
            places.insert(inode.ino, (node.site, node.path.clone()));
            placed.push(CarriedInode {
                ino: inode.ino,
                parent: inode.parent,
                name: Arc::from(inode.name.as_str()),
                lookups: inode.lookups,
                node,
            });
        }
        report.inodes = placed.len();
        placed
    }

    /// The node of a carried inode: the object the cache holds at its path (fresh or not;
    /// a stale one is revalidated on use, as always), else what the kind says. A media name
    /// (an MP4 presented header first, a clip) keeps its request, and its view when memory
    /// or the cache's record has it; else it is presented again on use. `None`: a name this
    /// configuration does not serve.
    fn carried_node(
        &self,
        site: SiteId,
        parent_path: &str,
        name: &str,
        kind: NodeKind,
    ) -> Option<Node> {
        let (original, media) = match self.media.media_name(site, parent_path, name) {
            NameKind::Plain => (name.to_string(), None),
            NameKind::Media { name, request } => (name, Some(request)),
            NameKind::Invalid(_) => return None,
        };
        let path: Arc<str> = format!("{parent_path}/{original}").into();
        let object = self.cache.cached_object(site, &path);
        let node = match (&object, kind) {
            (Some(_), _) | (None, NodeKind::Directory) => Node::new(site, path, object.clone()),
            (None, NodeKind::File) => Node::carried_file(site, path, name),
        };
        let Some(request) = media else {
            return Some(node);
        };
        let presented = object
            .as_ref()
            .and_then(|object| self.media.presentation_now(object, &request));
        Some(match presented {
            Some(Ok(presentation)) => Node {
                view: presentation.view().cloned(),
                media: Some(request),
                ..node
            },
            // Presented again at the next use, from the object the origin confirms.
            _ => Node {
                media: Some(request),
                ..Node::carried_file(site, node.path, name)
            },
        })
    }

    fn forget_carried_inode(&self, ino: u64) {
        if let Some(journal) = self.journal() {
            journal.set_lookups(ino, 0);
        }
    }

    /// Every carried handle waits for its first read; each inode gets back its open counts,
    /// and its passthrough registration, which new opens must share.
    fn restore_handles(&self, handles: &[HandleState], report: &mut TakeoverReport) {
        let mut per_inode: HashMap<u64, (usize, usize, u32)> = HashMap::new();
        let mut adopted = self.adopted.lock();
        for handle in handles {
            if self.node(handle.ino).is_none() {
                if let Some(journal) = self.journal() {
                    journal.forget_handle(handle.fh);
                }
                continue;
            }
            let counts = per_inode.entry(handle.ino).or_default();
            match handle.backing {
                0 => counts.0 += 1,
                id => {
                    counts.1 += 1;
                    counts.2 = id;
                }
            }
            adopted.insert(
                handle.fh,
                AdoptedHandle {
                    ino: handle.ino,
                    version: handle.version,
                    pinned: handle.pinned,
                    passthrough: handle.backing != 0,
                    gone: false,
                },
            );
        }
        report.handles = adopted.len();
        drop(adopted);
        for (ino, (cached, passthrough, id)) in per_inode {
            let backing = match (passthrough, self.backings()) {
                (0, _) | (_, None) => None,
                (count, Some(owner)) => {
                    let adopted: Arc<dyn KeptRegistration> = Backing::adopt(owner, id);
                    Some((count, adopted))
                }
            };
            self.inodes.restore_opens(ino, cached, backing);
        }
    }

    /// Registrations no carried handle uses (kept for reopening, or from a damaged record)
    /// are closed: nothing in this process refers to them.
    fn close_unused_backings(&self, carried: &Carried, report: &mut TakeoverReport) {
        let used: std::collections::HashSet<u32> =
            carried.handles.iter().map(|h| h.backing).collect();
        let Some(owner) = self.backings() else {
            return;
        };
        for id in &carried.backings {
            if used.contains(id) {
                report.backings_kept += 1;
            } else {
                owner.close(*id);
                report.backings_closed += 1;
            }
        }
    }

    /// A read of a handle that is not open in this process: one carried over a restart
    /// serves once its version is proven; anything else is ESTALE.
    pub(super) fn read_adopted(self: &Arc<Self>, fh: u64, offset: u64, size: u32) -> Answer<Bytes> {
        let Some(adopted) = self.adopted.lock().get(&fh).cloned() else {
            return Answer::Now(Err(FsError::Stale));
        };
        match self.prove_from_cache(fh, &adopted) {
            Some(Ok(())) => return self.read(adopted.ino, fh, offset, size),
            Some(Err(error)) => return Answer::Now(Err(error)),
            None => {}
        }
        let fs = self.clone();
        Answer::later(async move {
            fs.prove_at_origin(fh, &adopted).await?;
            match fs.read(adopted.ino, fh, offset, size) {
                Answer::Now(result) => result,
                Answer::Later(future) => future.await,
            }
        })
    }

    /// Proves the handle's version from the cache alone: `None` when the origin must say.
    fn prove_from_cache(&self, fh: u64, adopted: &AdoptedHandle) -> Option<FsResult<()>> {
        if adopted.gone {
            return Some(Err(FsError::VersionChanged));
        }
        let Some(node) = self.node(adopted.ino) else {
            return Some(Err(FsError::Stale));
        };
        if node.site.is_none() {
            return Some(Err(FsError::Stale));
        }
        if !adopted.pinned {
            // Without validators, no answer can prove the version is the one that was open.
            self.version_gone(fh, &node.path, "it has no validators to prove it unchanged");
            return Some(Err(FsError::VersionChanged));
        }
        let (object, view) = match self.version_in_cache(&node)? {
            Ok(found) => found,
            Err(error) => return Some(Err(error)),
        };
        if self.version_id(&object, view.as_ref()) != adopted.version {
            return None;
        }
        self.install_adopted(fh, object, view);
        Some(Ok(()))
    }

    /// Asks the origin for the handle's path; the version must be the one that was open.
    async fn prove_at_origin(&self, fh: u64, adopted: &AdoptedHandle) -> FsResult<()> {
        let node = self.node(adopted.ino).ok_or(FsError::Stale)?;
        let deadline = Instant::now() + self.cache.request_timeout();
        let (object, view) = match self.version_at_origin(&node, deadline).await {
            Ok(found) => found,
            Err(FsError::NotFound) => {
                self.version_gone(fh, &node.path, "the origin no longer has it");
                return Err(FsError::VersionChanged);
            }
            Err(error) => return Err(error),
        };
        if self.version_id(&object, view.as_ref()) != adopted.version {
            self.version_gone(fh, &node.path, "the origin has another version now");
            return Err(FsError::VersionChanged);
        }
        self.install_adopted(fh, object, view);
        Ok(())
    }

    fn version_gone(&self, fh: u64, path: &str, why: &str) {
        if let Some(adopted) = self.adopted.lock().get_mut(&fh) {
            if !adopted.gone {
                adopted.gone = true;
                tracing::warn!(
                    fh,
                    path,
                    "a file open before the restart cannot be read on: {why}; its reads answer EIO"
                );
            }
        }
    }

    /// The handle is proven: from now on it is an ordinary open file.
    fn install_adopted(&self, fh: u64, object: Arc<Object>, view: Option<MediaView>) {
        let mut handles = self.handles.lock();
        if handles.contains_key(&fh) {
            return;
        }
        let Some(adopted) = self.adopted.lock().remove(&fh) else {
            return; // released meanwhile
        };
        let file = OpenFile::new(object.open_handle(), view, adopted.ino, adopted.passthrough);
        handles.insert(fh, Arc::new(file));
    }

    /// Releases a carried handle that never read. Returns whether `fh` was one.
    pub(super) fn release_adopted(&self, fh: u64) -> bool {
        let Some(adopted) = self.adopted.lock().remove(&fh) else {
            return false;
        };
        self.inodes.end_open(adopted.ino, adopted.passthrough);
        true
    }

    /// Records a handle about to be handed to the kernel (and reserves its number).
    pub(super) fn journal_handle(
        &self,
        fh: u64,
        ino: u64,
        object: &Object,
        view: Option<&MediaView>,
        backing: u32,
    ) {
        let Some(journal) = self.journal() else {
            return;
        };
        journal.reserve_handles(fh + 1);
        journal.record_handle(&HandleState {
            fh,
            ino,
            version: self.version_id(object, view),
            pinned: object.version().is_pinned(),
            backing,
        });
    }

    pub(super) fn forget_journaled_handle(&self, fh: u64) {
        if let Some(journal) = self.journal() {
            journal.forget_handle(fh);
        }
    }

    /// What identifies an object version across processes: its site, path, kind, size and
    /// validators, and, for a file read through a view, the view's identity.
    pub(super) fn version_id(&self, object: &Object, view: Option<&MediaView>) -> [u8; 16] {
        let site = self
            .cache
            .sites()
            .get(object.site())
            .map(|s| s.name().to_string())
            .unwrap_or_default();
        let version = object.version();
        let mut hash = Sha256::new();
        for part in [
            site.as_bytes(),
            object.path().as_bytes(),
            version.etag.as_deref().unwrap_or("").as_bytes(),
            version.last_modified.as_deref().unwrap_or("").as_bytes(),
        ] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part);
        }
        hash.update(version.size.to_le_bytes());
        hash.update([u8::from(object.kind() == ObjectKind::File)]);
        hash.update([
            u8::from(version.etag.is_some()),
            u8::from(version.last_modified.is_some()),
        ]);
        if let Some(view) = view {
            hash.update(view.identity());
        }
        let digest = hash.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        id
    }
}
