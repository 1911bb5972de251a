//! ston-fs: mounts HTTP(S) origins as a read-only, locally cached disk over FUSE.
//!
//! The crate is cut into layers, and every dependency points down this list:
//!
//! - [`cli`]: the `ston-fs` command: arguments, `warm`, `demo`;
//! - [`service`]: mounting, daemonizing, the control socket, metrics, logging;
//! - [`fuse`]: the FUSE adapter and the file-system logic under it (inodes, handles);
//! - [`cache`]: resolving paths, reading blocks, the index, fetches, write-behind;
//! - [`origin`] (HTTP client, answer checks, health, listings), [`store`] (block files,
//!   journal) and [`media`] (MP4 faststart and trim views, pure computation): side by side,
//!   none knows another;
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
