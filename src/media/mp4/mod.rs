//! MP4 views: moov-first ("faststart") and time-trimmed presentations, computed without I/O.
//!
//! Pure computation over bytes the caller fetches: [`TopLevelScan`] says which byte ranges it
//! needs, [`faststart`] and [`trim`] turn a moov into a [`Presented`] file (synthetic bytes and
//! ranges of the original), and [`Presented::encode`]/[`Presented::decode`] persist one.
//! Everything read from a file is treated as hostile and bounded by [`Limits`].
//!
//! Depends on no other module of the crate (`bytes` and `thiserror` only); the media layer
//! above it does the I/O.

mod bits;
mod cut;
mod error;
mod faststart;
mod headers;
mod offsets;
mod presented;
mod scan;
mod tables;
mod track;
mod tree;
mod trim;

#[cfg(test)]
mod tests;

pub use error::{Mp4Error, TrimError};
pub use faststart::faststart;
pub use presented::{Piece, Presented, Segment};
pub use scan::{Layout, ScanStep, TopBox, TopLevelScan};
pub use trim::trim;

/// Bounds applied to everything read from a (possibly hostile) file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest moov box accepted; the caller holds the whole moov in memory.
    pub max_moov_size: u64,
    /// Top-level boxes walked before giving up (each one may cost a fetch).
    pub max_top_level_boxes: usize,
    /// Samples per track; tables are also bounded by the bytes actually present.
    pub max_samples: u32,
    /// Tracks per moov.
    pub max_tracks: usize,
    /// Boxes in the parsed moov tree (all levels together).
    pub max_moov_boxes: usize,
    /// Segments accepted by [`Presented::decode`].
    pub max_segments: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_moov_size: 64 << 20,
            max_top_level_boxes: 64,
            max_samples: 10_000_000,
            max_tracks: 64,
            max_moov_boxes: 100_000,
            max_segments: 1024,
        }
    }
}
