//! Block store: one sparse data file and one metadata journal per object, on local disk.
//!
//! Layout: `<cache_dir>/<site folder>/<xx>/<hash>.data` holds byte N of the object at offset N;
//! `<hash>.meta` is a checksummed JSON header followed by fixed-size checksummed records.
//!
//! Invariant (crash safety): a "block present" record is appended only after the block's data
//! has been made durable with `fdatasync`, and each record carries the block's CRC32C. After a
//! crash, a block is either listed with a checksum that its bytes match, or not listed at all;
//! torn records at the tail fail their own checksum and are ignored.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

const META_MAGIC: &[u8; 8] = b"STONFS01";
const RECORD_LEN: usize = 16;
const RECORD_BLOCK: u32 = 1;
const RECORD_RENEWED: u32 = 2;

/// Bytes charged against `max_cache_size` for an object's metadata, inode and directory
/// entries, beyond its data blocks. Deliberately generous: the cap is a hard promise.
pub const OBJECT_OVERHEAD: u64 = 12 * 1024;
/// Bytes charged per cached block beyond its data: its journal record and extent-tree share.
pub const BLOCK_OVERHEAD: u64 = 64;

/// Rounds a byte count up to whole file-system blocks, as the disk allocates them.
pub fn disk_bytes(len: u64) -> u64 {
    len.div_ceil(4096) * 4096
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    File,
    Directory,
}

/// The durable description of one object version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetaHeader {
    pub site: String,
    pub path: String,
    pub kind: ObjectKind,
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// Seconds since the epoch when the origin last confirmed this version.
    pub fetched_at: u64,
    pub block_size: u64,
    /// Seconds the version stays fresh after each confirmation.
    #[serde(default = "default_ttl")]
    pub ttl: u64,
}

fn default_ttl() -> u64 {
    1800
}

/// An object read back from disk at startup.
pub struct LoadedObject {
    pub header: MetaHeader,
    /// Blocks with a durable record, and their CRC32C.
    pub blocks: Vec<(u64, u32)>,
    pub location: ObjectLocation,
    pub last_used: SystemTime,
}

/// Where one object's files live.
#[derive(Debug, Clone)]
pub struct ObjectLocation {
    pub data: PathBuf,
    pub meta: PathBuf,
}

impl ObjectLocation {
    /// Opens (creating if needed) the data file, never following a symlink. A symlink in its
    /// place is removed (and logged), so the object can be cached again.
    pub fn open_data(&self) -> io::Result<File> {
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&self.data)
        };
        match open() {
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                self.remove_symlinked_data();
                open()
            }
            result => result,
        }
    }

    /// Whether the data file is a plain file (or absent). Anything else in its place, such
    /// as a symlink, is removed with a log line: its blocks are fetched again.
    pub fn data_is_regular_file(&self) -> bool {
        match fs::symlink_metadata(&self.data) {
            Ok(meta) if !meta.file_type().is_file() => {
                self.remove_symlinked_data();
                false
            }
            _ => true,
        }
    }

    fn remove_symlinked_data(&self) {
        tracing::warn!(file = %self.data.display(), "cache data file is not a plain file; removed");
        let _ = fs::remove_file(&self.data);
    }

    /// Replaces the metadata with a fresh header (no records): the start of a new version.
    /// Any older data file is removed first, so stale bytes can never meet the new header.
    pub fn create(&self, header: &MetaHeader) -> io::Result<u64> {
        remove_if_exists(&self.meta)?;
        remove_if_exists(&self.data)?;
        let bytes = encode_header(header)?;
        replace_file(&self.meta, &bytes)?;
        Ok(bytes.len() as u64)
    }

    /// Appends block records. The caller has already made the blocks' data durable.
    pub fn append_blocks(&self, blocks: &[(u64, u32)]) -> io::Result<()> {
        let mut buffer = Vec::with_capacity(blocks.len() * RECORD_LEN);
        for &(block, crc) in blocks {
            let block =
                u32::try_from(block).map_err(|_| io::Error::other("block index too large"))?;
            buffer.extend_from_slice(&encode_record(RECORD_BLOCK, block, crc));
        }
        self.append(&buffer)
    }

    /// Records that the origin confirmed the version again at `fetched_at`.
    pub fn append_renewal(&self, fetched_at: u64) -> io::Result<()> {
        let seconds = u32::try_from(fetched_at).unwrap_or(u32::MAX);
        self.append(&encode_record(RECORD_RENEWED, 0, seconds))
    }

    fn append(&self, bytes: &[u8]) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .append(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.meta)?;
        file.write_all(bytes)
    }

    pub fn remove(&self) -> io::Result<()> {
        remove_if_exists(&self.meta)?;
        remove_if_exists(&self.data)
    }
}

/// Writes a whole file next to `path` (0600, never through a symlink) and renames it into
/// place, so readers see the old content or the new one, never a mix.
fn replace_file(path: &Path, content: &[u8]) -> io::Result<()> {
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

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn encode_header(header: &MetaHeader) -> io::Result<Vec<u8>> {
    let json = serde_json::to_vec(header).map_err(io::Error::other)?;
    let mut bytes = Vec::with_capacity(json.len() + 16);
    bytes.extend_from_slice(META_MAGIC);
    bytes.extend_from_slice(&(json.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
    bytes.extend_from_slice(&json);
    Ok(bytes)
}

fn encode_record(kind: u32, block: u32, value: u32) -> [u8; RECORD_LEN] {
    let mut record = [0u8; RECORD_LEN];
    record[0..4].copy_from_slice(&kind.to_le_bytes());
    record[4..8].copy_from_slice(&block.to_le_bytes());
    record[8..12].copy_from_slice(&value.to_le_bytes());
    let check = crc32c::crc32c(&record[..12]);
    record[12..16].copy_from_slice(&check.to_le_bytes());
    record
}

fn word(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// Parses a metadata file. Returns `None` for anything damaged: the object is then dropped.
fn decode_meta(bytes: &[u8]) -> Option<(MetaHeader, Vec<(u64, u32)>)> {
    if bytes.len() < 16 || &bytes[..8] != META_MAGIC {
        return None;
    }
    let json_len = word(bytes, 8) as usize;
    let json = bytes.get(16..16 + json_len)?;
    if crc32c::crc32c(json) != word(bytes, 12) {
        return None;
    }
    let mut header: MetaHeader = serde_json::from_slice(json).ok()?;
    let mut blocks = std::collections::BTreeMap::new();
    for record in bytes[16 + json_len..].chunks_exact(RECORD_LEN) {
        if crc32c::crc32c(&record[..12]) != word(record, 12) {
            break; // a torn tail: everything after it is unreliable
        }
        match word(record, 0) {
            RECORD_BLOCK => {
                blocks.insert(u64::from(word(record, 4)), word(record, 8));
            }
            // Records are in time order: the last confirmation (or expiry, 0) wins.
            RECORD_RENEWED => header.fetched_at = u64::from(word(record, 8)),
            _ => break,
        }
    }
    let block_count = header.size.div_ceil(header.block_size.max(1));
    blocks.retain(|block, _| *block < block_count);
    Some((header, blocks.into_iter().collect()))
}

/// The cache folder of one site, locked against a second daemon using it at the same time.
pub struct SiteStore {
    pub name: String,
    dir: PathBuf,
    _lock: File,
}

impl SiteStore {
    /// Opens (creating 0700) the site's folder and takes its exclusive lock.
    pub fn open(cache_dir: &Path, name: &str) -> Result<SiteStore, String> {
        let dir = cache_dir.join(name);
        create_private_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        // SAFETY: flock on a descriptor we own has no memory-safety requirements.
        if unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } != 0
        {
            return Err(format!(
                "cache folder {} is in use by another ston-fs process",
                dir.display()
            ));
        }
        Ok(SiteStore {
            name: name.to_string(),
            dir,
            _lock: lock,
        })
    }

    /// Where an object's files live; creates its fan-out folder when `create` is set.
    /// Returns the location and any bytes the fan-out folder grew by.
    pub fn locate(&self, path: &str, create: bool) -> io::Result<(ObjectLocation, u64)> {
        let hash = xxhash_rust::xxh3::xxh3_128(format!("{}\0{}", self.name, path).as_bytes());
        let hex = format!("{hash:032x}");
        let fan_out = self.dir.join(&hex[..2]);
        let mut grown = 0;
        if create {
            let before = fs::symlink_metadata(&fan_out)
                .map(|m| m.blocks() * 512)
                .ok();
            if before.is_none() {
                create_private_dir(&fan_out)?;
            }
            let after = fs::symlink_metadata(&fan_out)?.blocks() * 512;
            grown = after.saturating_sub(before.unwrap_or(0));
        }
        let location = ObjectLocation {
            data: fan_out.join(format!("{}.data", &hex[2..])),
            meta: fan_out.join(format!("{}.meta", &hex[2..])),
        };
        Ok((location, grown))
    }

    /// Saves a directory listing (JSON); returns the bytes it now takes on disk and took before.
    pub fn save_listing(&self, dir: &str, json: &[u8]) -> io::Result<(u64, u64)> {
        let folder = self.dir.join("listings");
        create_private_dir(&folder)?;
        let path = self.listing_path(dir);
        let before = fs::symlink_metadata(&path)
            .map(|m| m.blocks() * 512)
            .unwrap_or(0);
        replace_file(&path, json)?;
        Ok((disk_bytes(json.len() as u64), before))
    }

    /// Rewrites saved listings in place: `change` gets each one's bytes and returns the new
    /// bytes for those it changes.
    pub fn rewrite_listings(&self, change: impl Fn(&[u8]) -> Option<Vec<u8>>) {
        let Ok(entries) = fs::read_dir(self.dir.join("listings")) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Some(changed) = read_nofollow(&path).ok().and_then(|b| change(&b)) else {
                continue;
            };
            if let Err(e) = replace_file(&path, &changed) {
                tracing::warn!(file = %path.display(), "cannot rewrite listing: {e}");
            }
        }
    }

    /// A listing saved earlier, if any.
    pub fn load_listing(&self, dir: &str) -> Option<Vec<u8>> {
        read_nofollow(&self.listing_path(dir)).ok()
    }

    fn listing_path(&self, dir: &str) -> PathBuf {
        let hash = xxhash_rust::xxh3::xxh3_128(format!("{}\0{}", self.name, dir).as_bytes());
        self.dir.join("listings").join(format!("{hash:032x}.json"))
    }

    /// Bytes the site's own folders take on disk (charged against the cap).
    pub fn folder_bytes(&self) -> u64 {
        let mut total = dir_blocks(&self.dir) + 4096; // the lock file's share
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    total += dir_blocks(&entry.path());
                }
            }
        }
        total
    }

    /// Reads every object's metadata, removing damaged, partial and orphaned files.
    pub fn load(&self, limits: &LoadLimits) -> Vec<LoadedObject> {
        let mut objects = Vec::new();
        let Ok(fan_outs) = fs::read_dir(&self.dir) else {
            return objects;
        };
        for fan_out in fan_outs.flatten() {
            if !fan_out.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(entries) = fs::read_dir(fan_out.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                match path.extension().and_then(|e| e.to_str()) {
                    Some("meta") => {
                        if let Some(object) = load_object(&path, &self.name, limits) {
                            objects.push(object);
                        }
                    }
                    Some("data") if !path.with_extension("meta").exists() => {
                        let _ = fs::remove_file(&path);
                    }
                    Some("tmp") => {
                        let _ = fs::remove_file(&path);
                    }
                    _ => {}
                }
            }
        }
        objects
    }
}

fn dir_blocks(path: &Path) -> u64 {
    fs::symlink_metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

/// Largest metadata file read back (a header and 16 bytes per cached block): anything
/// bigger is not ours.
const MAX_META_BYTES: u64 = 256 << 20;

fn load_object(meta_path: &Path, site: &str, limits: &LoadLimits) -> Option<LoadedObject> {
    let location = ObjectLocation {
        data: meta_path.with_extension("data"),
        meta: meta_path.to_path_buf(),
    };
    let (header, mut blocks) = match read_meta(meta_path, site, limits) {
        Ok(parsed) => parsed,
        Err(reason) => {
            tracing::warn!(file = %meta_path.display(), "dropping cache metadata: {reason}");
            let _ = location.remove();
            return None;
        }
    };
    if !location.data_is_regular_file() {
        blocks.clear();
    }
    let last_used = fs::symlink_metadata(meta_path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Some(LoadedObject {
        header,
        blocks,
        location,
        last_used,
    })
}

/// What a metadata file must satisfy to be loaded.
pub struct LoadLimits {
    pub max_object_size: u64,
}

/// Reads and checks one metadata file; the error says which check failed.
fn read_meta(
    path: &Path,
    site: &str,
    limits: &LoadLimits,
) -> Result<(MetaHeader, Vec<(u64, u32)>), String> {
    let len = fs::symlink_metadata(path).map_err(|e| e.to_string())?.len();
    if len > MAX_META_BYTES {
        return Err(format!("{len} bytes, more than any object's metadata"));
    }
    let bytes = read_nofollow(path).map_err(|e| e.to_string())?;
    let (header, blocks) = decode_meta(&bytes).ok_or("damaged or torn header")?;
    if header.site != site {
        return Err(format!("belongs to site `{}`", header.site));
    }
    if !(4096..=(64 << 20)).contains(&header.block_size) || header.block_size % 4096 != 0 {
        return Err(format!("bad block size {}", header.block_size));
    }
    if header.size > limits.max_object_size {
        return Err(format!(
            "size {} is above max_object_size {}",
            header.size, limits.max_object_size
        ));
    }
    let sane_path = header.path.starts_with('/')
        && !header.path.contains('\0')
        && !header.path.split('/').any(|c| c == "." || c == "..");
    if !sane_path {
        return Err("bad path".into());
    }
    Ok((header, blocks))
}

fn read_nofollow(path: &Path) -> io::Result<Vec<u8>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> MetaHeader {
        MetaHeader {
            site: "s".into(),
            path: "/a".into(),
            kind: ObjectKind::File,
            size: 10_000,
            etag: Some("\"e\"".into()),
            last_modified: None,
            fetched_at: 100,
            block_size: 4096,
            ttl: 60,
        }
    }

    #[test]
    fn records_survive_and_torn_tails_are_ignored() {
        let mut bytes = encode_header(&header()).unwrap();
        bytes.extend_from_slice(&encode_record(RECORD_BLOCK, 0, 11));
        bytes.extend_from_slice(&encode_record(RECORD_BLOCK, 2, 22));
        bytes.extend_from_slice(&encode_record(RECORD_RENEWED, 0, 500));
        bytes.extend_from_slice(&encode_record(RECORD_BLOCK, 1, 33)[..9]);
        let (header, blocks) = decode_meta(&bytes).unwrap();
        assert_eq!(blocks, vec![(0, 11), (2, 22)]);
        assert_eq!(header.fetched_at, 500);
    }

    #[test]
    fn damaged_headers_are_rejected() {
        let mut bytes = encode_header(&header()).unwrap();
        bytes[20] ^= 1;
        assert!(decode_meta(&bytes).is_none());
        assert!(decode_meta(b"garbage").is_none());
    }

    #[test]
    fn blocks_beyond_the_size_are_dropped() {
        let mut bytes = encode_header(&header()).unwrap();
        bytes.extend_from_slice(&encode_record(RECORD_BLOCK, 3, 1));
        assert!(decode_meta(&bytes).unwrap().1.is_empty());
    }
}
