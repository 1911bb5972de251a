//! Low-level file work of the block store: private files and folders, symlink-proof opens,
//! atomic replacement, and positioned reads and writes without extra copies.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Writes a whole file next to `path` (0600, never through a symlink) and renames it into
/// place, so readers see the old content or the new one, never a mix.
pub(super) fn replace_file(path: &Path, content: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    remove_if_exists(&tmp)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    file.write_all(content)?;
    fs::rename(&tmp, path)
}

pub(super) fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

pub(super) fn read_nofollow(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Opens a log file for appending, created 0640: logs name paths, so they are not for every
/// local user. An existing file that others may read is tightened to the same.
pub fn open_private_log(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::PermissionsExt;
    let file = File::options()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    let mode = file.metadata()?.permissions().mode() & 0o7777;
    if mode & 0o037 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o640))?;
    }
    Ok(file)
}

/// Creates a directory (and parents) with mode 0700, refusing to reuse a symlink.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(io::Error::other(format!(
            "{} is a symlink; refusing to use it",
            path.display()
        ))),
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(io::Error::other(format!(
            "{} is not a directory",
            path.display()
        ))),
        Err(_) => DirBuilder::new().recursive(true).mode(0o700).create(path),
    }
}

/// Reads `len` bytes at `offset`; a short read means the cache file lost data.
/// Writes `pieces` back to back at `offset` with one `pwritev` (no copy into one buffer).
pub fn write_pieces_at(file: &File, pieces: &[bytes::Bytes], offset: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    let iovecs: Vec<libc::iovec> = pieces
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    let at = i64::try_from(offset).map_err(io::Error::other)?;
    let count = i32::try_from(iovecs.len()).map_err(io::Error::other)?;
    // SAFETY: every iovec points into a live `Bytes` that outlives the call, with its length.
    let written = unsafe { libc::pwritev(file.as_raw_fd(), iovecs.as_ptr(), count, at) };
    if written < 0 {
        return Err(io::Error::last_os_error());
    }
    let written = written as usize;
    if written < total {
        // A short write (rare): finish the rest the simple way.
        let rest: Vec<u8> = pieces
            .iter()
            .flat_map(|p| p.iter().copied())
            .skip(written)
            .collect();
        file.write_all_at(&rest, offset + written as u64)?;
    }
    Ok(())
}

/// The buffer is not zeroed first: on the hit path that memset costs as much as the read.
pub fn read_exact_at(file: &File, len: usize, offset: u64) -> io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buffer: Vec<u8> = Vec::with_capacity(len);
    let mut filled = 0;
    while filled < len {
        let at = i64::try_from(offset + filled as u64).map_err(io::Error::other)?;
        // SAFETY: the kernel writes at most `len - filled` bytes into the buffer's spare
        // capacity, which is allocated and exclusively ours; nothing reads it before set_len.
        let read = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buffer.as_mut_ptr().add(filled).cast(),
                len - filled,
                at,
            )
        };
        match read {
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            n if n > 0 => filled += n as usize,
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    // SAFETY: the first `len` bytes were written by pread above.
    unsafe { buffer.set_len(len) };
    Ok(buffer)
}

/// Frees `len` bytes at `offset` of a file, keeping its size (the range reads as zeros).
pub(super) fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (offset, len) = (
        i64::try_from(offset).map_err(io::Error::other)?,
        i64::try_from(len).map_err(io::Error::other)?,
    );
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate on a descriptor we own, with plain integer arguments.
    match unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// How long taking a folder's lock waits before it says another process holds it.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens `dir/lock` (0600, never through a symlink) and takes its exclusive lock; `None`
/// when another process holds it. A lock can outlive its holder for a moment (a process that
/// forks shares the descriptor until its child execs; one that exits takes time to close
/// it), so only a lock still held after `LOCK_WAIT` counts as taken.
pub(super) fn lock_folder(dir: &Path) -> io::Result<Option<File>> {
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir.join("lock"))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on a descriptor we own has no memory-safety requirements.
        let locked = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if locked == 0 {
            return Ok(Some(lock));
        }
        if std::time::Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
