//! Shared base types: errors and their errno, single-flight results, statistics, and the
//! small vocabulary every layer speaks. Depends on no other module of the crate.

pub mod error;
pub mod flight;
pub mod stats;
pub mod sync;
#[cfg(test)]
pub mod testing;

use std::time::{SystemTime, UNIX_EPOCH};

pub use error::{FsError, FsResult};

/// Index of a site (origin or virtual host) in the mount's site table.
pub type SiteId = usize;

/// Whether a cached object is a file or a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    File,
    Directory,
}

/// What `unlink()` and the control commands do to cached objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Invalidation {
    /// Drop the object: the next access downloads it again.
    Purge,
    /// End its TTL now: the next access revalidates, and a 304 keeps every block.
    Expire,
    /// Delete it for good, files and all.
    Hardpurge,
}

impl std::str::FromStr for Invalidation {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "purge" => Ok(Invalidation::Purge),
            "expire" => Ok(Invalidation::Expire),
            "hardpurge" => Ok(Invalidation::Hardpurge),
            other => Err(format!("`{other}` is not purge, expire or hardpurge")),
        }
    }
}

/// When opens stop costing a message to the daemon (`FUSE_NO_OPEN_SUPPORT`). The kernel
/// keeps that for the connection's life, so the switch is one way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroMessageOpens {
    /// Every open is an OPEN: passthrough and direct I/O for big files.
    Off,
    /// From the first open on: hot files cost no round trip.
    On,
    /// Off until opens of small files come at a rate where their round trips are what the
    /// readers wait on (Apache, game patch servers); then on.
    Auto,
}

/// Gives a hash table's memory back once most of its entries are gone: tables keep their
/// peak capacity otherwise (a million forgotten inodes kept tens of MiB of empty slots).
/// Halving only below a quarter full makes the rehash cost amortised O(1) a removal.
pub fn shrink_when_sparse<K: Eq + std::hash::Hash, V>(map: &mut std::collections::HashMap<K, V>) {
    const SMALLEST: usize = 1024;
    if map.capacity() > SMALLEST && map.len() * 4 < map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

/// Seconds since the epoch (0 if the clock is before it).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
