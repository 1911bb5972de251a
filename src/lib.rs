//! ston-fs: mounts HTTP(S) origins as a read-only, locally cached disk over FUSE.
//!
//! The crate is cut into layers, and every dependency points down this list (modules on one
//! line are side by side: neither knows the other). Each module's own header says which
//! layers below it it uses, the README's Architecture section draws the same picture, and
//! `tests/architecture.rs` checks all three against the `crate::` paths in the code.
//!
//! - [`cli`]: the `ston-fs` command: arguments, `warm`, `demo`;
//! - [`service`]: mounting, daemonizing, the control socket, metrics, logging;
//! - [`fuse`]: the FUSE adapter and the file-system logic under it (inodes, handles);
//! - [`media`]: MP4 files presented header first, and clips, as views read through the cache
//!   (its `mp4` library is pure computation on bytes);
//! - [`cache`]: resolving paths, reading blocks, the index, fetches, write-behind;
//! - [`origin`] (HTTP client, answer checks, health, listings) and [`store`] (block files,
//!   journal);
//! - [`config`]: the validated configuration;
//! - [`base`]: errors and their errno, single-flight results, statistics, shared vocabulary.
//!
//! Where a lower layer must call back up, it owns a small trait the higher layer implements
//! (`cache`'s `FetchHost` and `BlockSink`, the index's `IndexEntry`, `fuse`'s `Backings`).
//!
//! # Lock order
//!
//! Every lock of the daemon, outermost first: a thread holding a lock may take only locks
//! below it in this table, never one above it. "Leaf" locks are taken with no other lock
//! taken under them. All are `parking_lot` mutexes, never held across an `await`.
//!
//! | # | lock | guards | takes, while held |
//! |---|------|--------|-------------------|
//! | 1 | `fuse::fs` `StonFs.handles` | open handles | 2; 8 (an adopted handle's `OpenHandle`) |
//! | 2 | `fuse::fs` `StonFs.adopted` | handles carried over a restart | 4; 9 |
//! | 3 | `fuse::fs` `StonFs.implicit` | handle 0 of each inode | 8 (its `OpenHandle`); 9 (the journal record of its version) |
//! | 4 | `fuse::inodes` `InodeTable.table` | inodes, names, open counts | 5; 8 (registering a cache file, or taking a small object's reference); 9 |
//! | 5 | `fuse::fs` `StonFs.kept` | objects keeping a registration | leaf |
//! | 6 | `cache::object` `Object.recording` | one journal round of an object | 7 |
//! | 6a | `store::packed` `PackedStore.writer` | appends, rolls, reclamation, checkpoints of small objects | 6b; 7 (room for a segment, through `SharedSpace`); 10 |
//! | 6b | `store::packed` `PackedStore.shared` | the packed index and segment table | 10 (a dropped segment gives its charge back) |
//! | 7 | `cache::index` `CacheIndex.evict_lock` | eviction and retirement | 8 |
//! | 8 | `cache::object` `Object.state` | block table, charge, data file, kept registration | 9; 10 |
//! | 9 | `fuse::journal` `Journal.inner` | the restart journal's slots | leaf |
//! | 10 | `cache::index` `CacheIndex.state` | the LRU and the bytes charged | leaf |
//!
//! Leaf locks outside the chain: `OpenFile.readahead`, `OpenFile.failed_read` and
//! `StonFs.carried_pages` (the pages a takeover found, `fuse::fs`);
//! `Cache.probes`, `Cache.negative`, `Cache.listings` and a write queue's `WriteQueue.state`
//! (`cache`); `Media.flights` and the views' `Views.state` (`media`); an origin's
//! `Member.last_error` (`origin::health`); `Stats.access_log` (`base`); `Upgrade.error`
//! (`service`); a media view's header reference `ViewParts.held` and `Media.trimmed_at`
//! (`media`); the log cap's `Limiter.windows` (`service::lograte`) and the replaced holder's
//! socket `REDIRECTED` (`service::fdstore`, a read-write lock); the small objects in use,
//! `SmallSite.live` (`cache::object::small`; a small object dropped under any lock leaves it). Rows 6 and 8 are taken by `cache::object` as 6
//! then 8, and row 8 is also reached without 6 or 7. Rows 6a and 6b are never taken under
//! 6 to 10: a small object calls its store with no lock of its own held.
//!
//! Calls into the kernel and the disk under a lock:
//! - the passthrough registration ioctl runs under 4 and 8 (`Object::keep_with` makes the
//!   registration with the object's cache file, which it opens under 8), and its journal
//!   record is written under 4, 8 and 9; the kernel does not call back into the daemon for it;
//! - closing a registration (an ioctl, and a journal write under 9) runs where its last
//!   holder drops it: under 4 when an inode's last passthrough handle is released or the
//!   inode forgotten, never under 8 (`Object::detach` and `drop_kept` drop it after `state`);
//! - `fsync` of a cache file and the append of its metadata record run under 6 only;
//!   appends to packed segments, their `fsync` and checkpoints run under 6a;
//! - invalidating the kernel's caches never runs under a lock, nor on the calling thread:
//!   the kernel may hold its own locks while it waits for this daemon.
//!
//! A function that needs a lock held takes the guarded state as an argument (`&mut
//! ObjectState`, say), so it cannot be called without the lock, and its name ends in
//! `_locked`; methods of a guarded state type itself (the journal's `Inner`, the index's
//! `IndexState`) run under their lock by construction. Open handles are counted by a guard,
//! `cache::OpenHandle`, that closes the handle when dropped.
//!
//! The write-behind queue's and the index's locks (rows 7, 10 and `WriteQueue.state`) come
//! from `base::sync`: with the `shuttle` feature, the shuttle model checker runs their
//! `shuttle_` tests over thousands of thread interleavings (`tests/run.sh` does).

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod base;
pub mod cache;
pub mod cli;
pub mod config;
pub mod fuse;
pub mod media;
pub mod origin;
pub mod service;
pub mod store;
