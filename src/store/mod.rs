//! Block store: one sparse data file and one metadata journal per object, on local disk.
//!
//! Layout: `<cache_dir>/<site folder>/<xx>/<hash>.data` holds byte N of the object at offset N;
//! `<hash>.meta` is a checksummed JSON header followed by fixed-size checksummed records.
//! `<hash>.view`, when present, is what the cache layer keeps of how the object is presented
//! (an MP4's rewritten header); it lives and dies with the other two.
//!
//! Invariant (crash safety): a "block present" record is appended only after the block's data
//! has been made durable with `fdatasync`, and each record carries the block's CRC32C. After a
//! crash, a block is either listed with a checksum that its bytes match, or not listed at all;
//! torn records at the tail fail their own checksum and are ignored.
//!
//! Depends on `base` only.

pub mod descriptors;
mod files;
mod journal;
pub mod packed;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use files::{create_private_dir, open_private_log, read_exact_at, write_pieces_at};
pub use journal::MetaHeader;

use files::{read_nofollow, remove_if_exists, replace_file};
use journal::{
    decode_meta, encode_header, encode_record, RECORD_BLOCK, RECORD_LEN, RECORD_RENEWED,
};

/// Bytes charged against `max_cache_size` for an object's metadata, inode and directory
/// entries, beyond its data blocks. Deliberately generous: the cap is a hard promise.
pub const OBJECT_OVERHEAD: u64 = 12 * 1024;
/// Bytes charged per cached block beyond its data: its journal record and extent-tree share.
pub const BLOCK_OVERHEAD: u64 = 64;

/// Rounds a byte count up to whole file-system blocks, as the disk allocates them.
pub fn disk_bytes(len: u64) -> u64 {
    len.div_ceil(4096) * 4096
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

    /// Frees the parts of the data file that no journal record covers (blocks written just
    /// before a crash), so that what is on disk is what the cap counts.
    fn drop_unrecorded(&self, blocks: &[(u64, u32)], block_size: u64, size: u64) {
        let Ok(file) = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.data)
        else {
            return;
        };
        let recorded: u64 = blocks
            .iter()
            .map(|(b, _)| disk_bytes(block_size.min(size.saturating_sub(b * block_size))))
            .sum();
        let allocated = file.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
        if allocated <= recorded {
            return;
        }
        let mut next = 0;
        for (block, _) in blocks
            .iter()
            .chain(std::iter::once(&(u64::MAX / block_size, 0)))
        {
            let start = next * block_size;
            let end = (block * block_size).min(size);
            if end > start {
                if let Err(e) = files::punch_hole(&file, start, end - start) {
                    tracing::warn!(file = %self.data.display(), "cannot free unjournaled blocks: {e}");
                    return;
                }
            }
            next = block + 1;
        }
    }

    fn remove_symlinked_data(&self) {
        tracing::warn!(file = %self.data.display(), "cache data file is not a plain file; removed");
        let _ = fs::remove_file(&self.data);
    }

    /// Replaces the metadata with a fresh header (no records): the start of a new version.
    /// Any older data and view file is removed first, so stale bytes can never meet the new
    /// header.
    pub fn create(&self, header: &MetaHeader) -> io::Result<u64> {
        remove_if_exists(&self.meta)?;
        remove_if_exists(&self.data)?;
        remove_if_exists(&self.view_path())?;
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
        remove_if_exists(&self.view_path())?;
        remove_if_exists(&self.data)
    }

    /// Where the object's view record lives: next to its metadata.
    pub fn view_path(&self) -> PathBuf {
        self.meta.with_extension("view")
    }

    fn staged_view_path(&self) -> PathBuf {
        self.meta.with_extension("vtmp")
    }

    /// Writes a view record beside its final place; [`ObjectLocation::commit_view`] puts it
    /// there. Split in two so the caller can put it in place under its own lock, and a
    /// version that left the cache meanwhile never gets one.
    pub fn stage_view(&self, record: &[u8]) -> io::Result<()> {
        let staged = self.staged_view_path();
        remove_if_exists(&staged)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&staged)?;
        file.write_all(record)
    }

    /// Puts the staged view record in place.
    pub fn commit_view(&self) -> io::Result<()> {
        fs::rename(self.staged_view_path(), self.view_path())
    }

    /// Drops a staged view record that will not be committed.
    pub fn discard_staged_view(&self) {
        let _ = remove_if_exists(&self.staged_view_path());
    }

    /// The view record, if there is one of at most `max_len` bytes (a bigger one is not ours
    /// and is removed).
    pub fn load_view(&self, max_len: u64) -> io::Result<Option<Vec<u8>>> {
        let path = self.view_path();
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
            Ok(meta) if !meta.file_type().is_file() || meta.len() > max_len => {
                remove_if_exists(&path)?;
                return Ok(None);
            }
            Ok(_) => {}
        }
        match read_nofollow(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            other => other.map(Some),
        }
    }

    pub fn remove_view(&self) -> io::Result<()> {
        remove_if_exists(&self.view_path())
    }

    /// Bytes the view record takes on disk (0 without one).
    pub fn view_disk_bytes(&self) -> u64 {
        fs::symlink_metadata(self.view_path())
            .ok()
            .filter(|m| m.file_type().is_file())
            .map_or(0, |m| m.blocks() * 512)
    }
}

/// The folder of a site's packed small-object store, inside the site's folder.
pub const PACKED_FOLDER: &str = "packed";

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
        let lock = files::lock_folder(&dir)
            .map_err(|e| format!("cannot open {}: {e}", dir.join("lock").display()))?
            .ok_or_else(|| {
                format!(
                    "cache folder {} is in use by another ston-fs process",
                    dir.display()
                )
            })?;
        Ok(SiteStore {
            name: name.to_string(),
            dir,
            _lock: lock,
        })
    }

    /// The site's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
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

    /// Bytes the site's own folders take on disk (charged against the cap). The packed
    /// store charges its own folder.
    pub fn folder_bytes(&self) -> u64 {
        let mut total = dir_blocks(&self.dir) + 4096; // the lock file's share
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) && entry.file_name() != PACKED_FOLDER
                {
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
            // The packed store's files are its own to check (its temporaries included).
            if !fan_out.file_type().is_ok_and(|t| t.is_dir())
                || fan_out.file_name() == PACKED_FOLDER
            {
                continue;
            }
            let Ok(entries) = fs::read_dir(fan_out.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                match path.extension().and_then(|e| e.to_str()) {
                    Some("meta") => {
                        if let Some(object) = self.load_object(&path, limits) {
                            objects.push(object);
                        }
                    }
                    Some("data" | "view") if !path.with_extension("meta").exists() => {
                        let _ = fs::remove_file(&path);
                    }
                    Some("tmp" | "vtmp") => {
                        let _ = fs::remove_file(&path);
                    }
                    _ => {}
                }
            }
        }
        objects
    }
}

impl SiteStore {
    /// Loads one object's metadata, or drops its files with one log line if any check fails.
    /// Blocks written but not journaled before a crash are punched out of the data file: they
    /// are not served, and must not take space the cap does not count.
    fn load_object(&self, meta_path: &Path, limits: &LoadLimits) -> Option<LoadedObject> {
        let location = ObjectLocation {
            data: meta_path.with_extension("data"),
            meta: meta_path.to_path_buf(),
        };
        let checked = read_meta(meta_path, &self.name, limits).and_then(|parsed| {
            let at_home = self.locate(&parsed.0.path, false).map(|(l, _)| l.meta);
            match at_home {
                Ok(home) if home == meta_path => Ok(parsed),
                _ => Err("not where its path belongs (a copy or a stray file)".to_string()),
            }
        });
        let (header, mut blocks) = match checked {
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
        location.drop_unrecorded(&blocks, header.block_size, header.size);
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
}

fn dir_blocks(path: &Path) -> u64 {
    fs::symlink_metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

/// Largest metadata file read back (a header and 16 bytes per cached block): anything
/// bigger is not ours.
const MAX_META_BYTES: u64 = 256 << 20;

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
