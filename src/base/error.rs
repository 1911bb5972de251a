//! Errors of the file-system paths, and the one place where they become errno values.

use thiserror::Error;

/// Why a file-system operation failed. Cloneable so one failed fetch can answer every waiter.
/// The variant is the cause; [`FsError::errno`] is the only place that turns a cause into
/// what the kernel sees.
#[derive(Debug, Clone, Error)]
pub enum FsError {
    #[error("no such file")]
    NotFound,
    #[error("not a directory")]
    NotDirectory,
    #[error("is a directory")]
    IsDirectory,
    #[error("the file system is read-only")]
    ReadOnly,
    /// A purge through `unlink` by a user other than root and the one who mounted.
    #[error("only root and the mounting user may purge")]
    NotPermitted,
    /// An ioctl this file system does not know (`isatty` asks for one): the errno every
    /// plain file gives, and nothing worth a log line.
    #[error("no such ioctl")]
    NoIoctl,
    /// The kernel named an inode or open file this process does not know: one from before a
    /// restart that could not be carried over. ESTALE makes the kernel look a path up again.
    #[error("stale inode or file handle (from before a restart)")]
    Stale,
    #[error("no such extended attribute")]
    NoAttribute,
    #[error("the buffer is too small for the value")]
    BufferTooSmall,
    /// Tells the kernel a request is not needed at all (opens, with `zero_message_opens`).
    #[error("not needed")]
    NotNeeded,
    #[error("origin unreachable: {0}")]
    Unreachable(String),
    #[error("origin timed out")]
    Timeout,
    #[error("origin too slow: {0}")]
    TooSlow(String),
    #[error("object too large: {0}")]
    TooLarge(String),
    #[error("origin answered HTTP {0}")]
    Status(u16),
    #[error("origin answer is inconsistent: {0}")]
    BadAnswer(String),
    #[error("the object changed at the origin while it was being read")]
    VersionChanged,
    #[error("cached data failed verification and could not be refetched")]
    Corrupt,
    #[error("local I/O failed: {0}")]
    Io(String),
    /// Internal: a block reached the cache while a read waited for it; the read plans again.
    #[error("block moved to the cache; read again")]
    Replan,
}

impl FsError {
    /// The errno the kernel sees. Anything that leaves the bytes in doubt is EIO, never garbage.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotDirectory => libc::ENOTDIR,
            FsError::IsDirectory => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::NotPermitted => libc::EPERM,
            FsError::NoIoctl => libc::ENOTTY,
            FsError::Stale => libc::ESTALE,
            FsError::NoAttribute => libc::ENODATA,
            FsError::BufferTooSmall => libc::ERANGE,
            FsError::NotNeeded => libc::ENOSYS,
            FsError::Timeout
            | FsError::TooSlow(_)
            | FsError::TooLarge(_)
            | FsError::Unreachable(_)
            | FsError::Status(_)
            | FsError::BadAnswer(_)
            | FsError::VersionChanged
            | FsError::Corrupt
            | FsError::Replan
            | FsError::Io(_) => libc::EIO,
        }
    }
}

impl From<std::io::Error> for FsError {
    fn from(err: std::io::Error) -> Self {
        FsError::Io(err.to_string())
    }
}

pub type FsResult<T> = Result<T, FsError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubtful_bytes_are_always_eio() {
        let doubtful = [
            FsError::Timeout,
            FsError::BadAnswer("x".into()),
            FsError::VersionChanged,
            FsError::Corrupt,
            FsError::TooLarge("x".into()),
        ];
        assert!(doubtful.iter().all(|e| e.errno() == libc::EIO));
        assert_eq!(FsError::NotFound.errno(), libc::ENOENT);
        assert_eq!(FsError::ReadOnly.errno(), libc::EROFS);
    }
}
