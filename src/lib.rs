//! ston-fs: mounts HTTP(S) origins as a read-only, locally cached disk over FUSE.
//!
//! Module map, following the path of one read:
//! - [`fs`]: the FUSE adapter, which turns kernel requests into cache calls;
//! - [`inodes`]: inode numbers to namespace paths;
//! - [`listing`]: directory listings parsed from the origin's index pages or a manifest;
//! - [`cache`]: resolving paths (probe, revalidate, negative answers) and serving reads;
//! - [`object`]: one object version's block table and single-flight fetches;
//! - [`fetch`]: range requests turned into verified blocks;
//! - [`writer`]: write-behind of fetched blocks, one writer per object;
//! - [`readahead`]: sequential detection and the global prefetch budget;
//! - [`origin`]: the HTTP client and its checks of every answer;
//! - [`health`]: which of several equivalent origins are in rotation;
//! - [`index`]: the LRU of cached objects and the hard size cap;
//! - [`store`]: the on-disk block store and its crash-safe metadata journal;
//! - [`stats`]: counters, latency histograms, the access log and Prometheus text;
//! - [`control`]: the control socket behind `ston-fs purge|expire|hardpurge`;
//! - [`warm`]: `ston-fs warm`, reading subtrees through the mount to fill the cache;
//! - [`config`], [`cli`], [`daemon`], [`mount`], [`demo`]: setting up and running a mount.

pub mod blocks;
pub mod cache;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod error;
pub mod fetch;
pub mod flight;
pub mod fs;
pub mod health;
pub mod index;
pub mod inodes;
pub mod listing;
pub mod mount;
pub mod object;
pub mod origin;
pub mod readahead;
pub mod stats;
pub mod store;
pub mod syslog;
pub mod warm;
pub mod writer;
