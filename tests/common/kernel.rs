//! A fake kernel for [`StonFs`]: FUSE-shaped calls (lookup, getattr, open, read, release,
//! forget) made straight on the file system, with fake page-cache invalidation and fake
//! passthrough registrations, so its logic runs without `/dev/fuse` and without root.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ston_fs::base::FsResult;
use ston_fs::cache::Object;
use ston_fs::config::Config;
use ston_fs::fuse::fs::{Answer, Attr, Entry, KernelCache, KernelFeatures, Opened};
use ston_fs::fuse::journal::{sealed_memfd, Carried, Journal};
use ston_fs::fuse::passthrough::Backings;
use ston_fs::fuse::{StonFs, TakeoverReport, Wiring};

use super::layer::{Layer, CALL};

/// The root inode.
pub const ROOT: u64 = 1;
/// The caller of a call made as root (`unlink` purges only for root and the mounting user).
pub const ROOT_UID: u32 = 0;

/// What the file system asked the kernel to drop from its caches.
#[derive(Default)]
pub struct FakeKernelCache {
    inodes: Mutex<Vec<u64>>,
    entries: Mutex<Vec<(u64, String)>>,
}

impl KernelCache for FakeKernelCache {
    fn invalidate_inode(&self, ino: u64) {
        self.inodes.lock().expect("lock").push(ino);
    }

    fn invalidate_entry(&self, parent: u64, name: &str) {
        let entry = (parent, name.to_string());
        self.entries.lock().expect("lock").push(entry);
    }
}

impl FakeKernelCache {
    /// Waits (bounded) until `ino`'s pages were invalidated; invalidations run on a thread
    /// of their own, as the kernel may hold locks while it waits for the daemon.
    pub fn wait_inode_invalidated(&self, ino: u64) -> bool {
        wait_for(|| self.inodes.lock().expect("lock").contains(&ino))
    }

    pub fn wait_entry_invalidated(&self, parent: u64, name: &str) -> bool {
        let want = (parent, name.to_string());
        wait_for(|| self.entries.lock().expect("lock").contains(&want))
    }

    pub fn inode_invalidations(&self) -> Vec<u64> {
        self.inodes.lock().expect("lock").clone()
    }
}

fn wait_for(done: impl Fn() -> bool) -> bool {
    let give_up = Instant::now() + CALL;
    while !done() {
        if Instant::now() > give_up {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// Passthrough registrations as a connection would hold them: ids handed out and closed.
#[derive(Default)]
pub struct FakeBackings {
    next: AtomicU32,
    /// Open registrations, with the length of the file each was made for.
    open: Mutex<HashMap<u32, u64>>,
    closed: Mutex<Vec<u32>>,
    refuse: AtomicBool,
}

impl Backings for FakeBackings {
    fn open(&self, file: &File) -> std::io::Result<u32> {
        if self.refuse.load(Ordering::Relaxed) {
            return Err(std::io::Error::from_raw_os_error(libc::EPERM));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let len = file.metadata()?.len();
        self.open.lock().expect("lock").insert(id, len);
        Ok(id)
    }

    fn close(&self, id: u32) {
        self.open.lock().expect("lock").remove(&id);
        self.closed.lock().expect("lock").push(id);
    }
}

impl FakeBackings {
    /// Ids registered and not closed.
    pub fn open_ids(&self) -> BTreeSet<u32> {
        self.open.lock().expect("lock").keys().copied().collect()
    }

    pub fn closed_ids(&self) -> Vec<u32> {
        self.closed.lock().expect("lock").clone()
    }

    /// Makes every registration fail, as a kernel without the privilege does.
    pub fn refuse(&self) {
        self.refuse.store(true, Ordering::Relaxed);
    }
}

/// The registrations one process makes: when it dies, what it would still close is not
/// closed (the kernel keeps them for the next process, which the journal tells).
struct ProcessBackings {
    connection: Arc<FakeBackings>,
    alive: AtomicBool,
}

impl Backings for ProcessBackings {
    fn open(&self, file: &File) -> std::io::Result<u32> {
        self.connection.open(file)
    }

    fn close(&self, id: u32) {
        if self.alive.load(Ordering::Relaxed) {
            self.connection.close(id);
        }
    }
}

/// A [`StonFs`] over a cache, with a fake kernel's caches and registrations, and a restart
/// journal (as a mount with restart protection has).
pub struct Kernel {
    pub fs: Arc<StonFs>,
    pub layer: Layer,
    pub caches: Arc<FakeKernelCache>,
    pub backings: Arc<FakeBackings>,
    process: Arc<ProcessBackings>,
    pub journal: Arc<Journal>,
    /// What the kernel granted at INIT; a restart keeps it, as the connection does.
    pub features: KernelFeatures,
}

impl Kernel {
    /// Mounts `config` (page cache only: no passthrough granted).
    pub fn mount(config: Config) -> Kernel {
        Kernel::mount_with(config, KernelFeatures::default())
    }

    /// Mounts `config` on a kernel that granted `features` at INIT.
    pub fn mount_with(config: Config, features: KernelFeatures) -> Kernel {
        let journal = sealed_memfd("stonfs-test-journal").expect("memfd");
        let journal = Journal::create(journal, b"init request", b"init reply").expect("journal");
        Kernel::start(config, Arc::new(journal), Arc::default(), features, None).0
    }

    /// A process on a connection with `journal`: wired fresh, or taking over `carried`.
    fn start(
        config: Config,
        journal: Arc<Journal>,
        backings: Arc<FakeBackings>,
        features: KernelFeatures,
        carried: Option<Carried>,
    ) -> (Kernel, Option<TakeoverReport>) {
        let layer = Layer::open(config);
        let fs = StonFs::new(layer.cache.clone(), layer.runtime.handle().clone());
        let caches = Arc::new(FakeKernelCache::default());
        fs.set_kernel_features(features);
        fs.set_kernel_cache(caches.clone()).expect("set once");
        let process = Arc::new(ProcessBackings {
            connection: backings.clone(),
            alive: AtomicBool::new(true),
        });
        let report = match carried {
            Some(carried) => {
                let with_handles = carried.handles.iter().map(|h| h.ino).collect();
                let taken = fs.take_over(process.clone(), journal.clone(), carried);
                // As the service does, before it serves.
                fs.drop_carried_pages(caches.clone(), &with_handles, CALL);
                Some(taken.expect("wired once"))
            }
            None => {
                let wiring = Wiring::Journaled {
                    backings: process.clone(),
                    journal: journal.clone(),
                };
                fs.wire(wiring).expect("wired once");
                None
            }
        };
        let kernel = Kernel {
            fs,
            layer,
            caches,
            backings,
            process,
            journal,
            features,
        };
        (kernel, report)
    }

    /// This process dies and another takes over the connection with what the journal
    /// carries at that moment; the cache folder and the connection's registrations stay.
    pub fn restart(self, config: Config) -> (Kernel, TakeoverReport) {
        let Kernel {
            fs,
            layer,
            journal,
            backings,
            process,
            features,
            ..
        } = self;
        let image = journal.image();
        process.alive.store(false, Ordering::Relaxed);
        drop(fs);
        drop(journal);
        layer.close();
        let mut file = sealed_memfd("stonfs-test-journal").expect("memfd");
        file.write_all(&image).expect("journal image");
        let (journal, restored) = Journal::open(file).expect("journal reopens");
        let carried = Some(restored.carried);
        let (kernel, report) =
            Kernel::start(config, Arc::new(journal), backings, features, carried);
        (kernel, report.expect("taken over"))
    }

    /// This process exits cleanly, as at an unmount: the cache is closed, nothing carried.
    pub fn unmount(self) {
        let Kernel { fs, layer, .. } = self;
        drop(fs);
        layer.close();
    }

    /// The answer now, or once the I/O runtime produced it.
    pub fn answer<T>(&self, answer: Answer<T>) -> FsResult<T> {
        match answer {
            Answer::Now(result) => result,
            Answer::Later(future) => self.layer.runtime.block_on(future),
        }
    }

    pub fn lookup(&self, parent: u64, name: &str) -> FsResult<Entry> {
        self.answer(self.fs.lookup(parent, OsStr::new(name)))
    }

    /// Looks up `name` under the root, which must exist; returns its inode.
    pub fn ino(&self, name: &str) -> u64 {
        let entry = self
            .lookup(ROOT, name)
            .unwrap_or_else(|e| panic!("lookup {name}: {e}"));
        assert_ne!(entry.attr.ino, 0, "{name} exists");
        entry.attr.ino
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        self.answer(self.fs.getattr(ino)).map(|(attr, _)| attr)
    }

    pub fn open(&self, ino: u64) -> FsResult<Opened> {
        self.answer(self.fs.open(ino, libc::O_RDONLY))
    }

    /// Opens `ino` read-only, which must work; returns the handle.
    pub fn fh(&self, ino: u64) -> u64 {
        self.open(ino)
            .unwrap_or_else(|e| panic!("open {ino}: {e}"))
            .fh
    }

    pub fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        self.answer(self.fs.read(ino, fh, offset, size))
    }

    /// Reads a handle to its end in `chunk`-byte reads, as the kernel does.
    pub fn read_to_end(&self, ino: u64, fh: u64, chunk: u32) -> FsResult<Vec<u8>> {
        let mut bytes = Vec::new();
        loop {
            let got = self.read(ino, fh, bytes.len() as u64, chunk)?;
            if got.is_empty() {
                return Ok(bytes);
            }
            bytes.extend_from_slice(&got);
        }
    }

    pub fn release(&self, fh: u64) {
        self.fs.release(fh);
    }

    pub fn forget(&self, ino: u64, lookups: u64) {
        self.fs.forget(ino, lookups);
    }

    /// The object the cache holds for `/name` now.
    pub fn cached(&self, name: &str) -> Option<Arc<Object>> {
        self.layer
            .cache
            .cached_object(0, &Arc::from(format!("/{name}")))
    }

    /// Makes the cached version of `/name` stale, as its TTL running out would.
    pub fn expire(&self, name: &str) {
        if let Some(object) = self.cached(name) {
            object.expire();
        }
    }

    /// Reads `/name` whole through a handle, waits until it is all on disk and verified,
    /// so that the next open may be served in passthrough.
    pub fn make_verified(&self, name: &str) -> Arc<Object> {
        let ino = self.ino(name);
        let fh = self.fh(ino);
        self.read_to_end(ino, fh, 128 << 10).expect("read");
        self.release(fh);
        let object = self.cached(name).expect("cached");
        super::layer::wait_cached(&object);
        object.verify_all();
        assert!(object.fully_verified(), "{name} verified");
        object
    }
}
