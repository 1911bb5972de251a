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

/// Seconds since the epoch (0 if the clock is before it).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
