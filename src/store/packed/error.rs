//! Errors of the packed store, and how they reach the kernel as the crate's `FsError`.

use thiserror::Error;

use crate::base::FsError;

/// Why a packed-store call failed. A miss is not an error: `get` answers `Ok(None)`.
#[derive(Debug, Error)]
pub enum PackedError {
    #[error("packed store I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("{what} of {len} bytes is over the packed store's limit of {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// Neither the cap nor the index memory limit leaves room, and nothing can be reclaimed:
    /// the caller serves the object without caching it.
    #[error("no room in the packed store, and nothing left to reclaim")]
    NoRoom,
    #[error("packed store configuration: {0}")]
    Config(String),
    #[error("packed store folder {0} is in use by another process")]
    Locked(String),
}

impl From<PackedError> for FsError {
    fn from(err: PackedError) -> FsError {
        match err {
            PackedError::TooLarge { .. } => FsError::TooLarge(err.to_string()),
            other => FsError::Io(other.to_string()),
        }
    }
}
