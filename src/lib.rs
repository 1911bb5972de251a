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
