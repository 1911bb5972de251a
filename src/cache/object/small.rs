//! Small objects: a version kept whole as one record of its site's packed store, with no
//! file, no block table and no index entry of its own.
//!
//! The record's validators carry what the metadata file carries for a large object (size,
//! ETag, Last-Modified, when the origin last confirmed it, its TTL), so a lookup after a
//! restart rebuilds the object from the record alone. A read takes the record back and
//! serves it only if it still names this object's version; anything else is a miss, and the
//! read fetches this version from the origin as it would an evicted block.
//!
//! Invariants:
//! - Never a wrong byte: the store checks each record (CRC32C, key, length) and this module
//!   checks its version and length before a byte is served.
//! - One version a record: a fetch of an object that is no longer the cached version never
//!   replaces the record (a newer version, or a purge, wins).
//! - Invalidations move the site's generation; an object made before sees itself as detached
//!   (left the cache), so the next use resolves it again from the store or the origin.
//! - A version is told apart by its [`SmallTag`]: a hash of its validators and one of its
//!   bytes. An object rebuilt from the record is the same version when its tag is, so the
//!   kernel keeps its pages; a record with another tag is never served for it.
//!
//! Memory: nothing keeps a small object that nobody uses. An inode keeps a [`SmallRef`]
//! (what its attributes need, and the tag) and rebuilds the object from the record when a
//! call needs it; the site's `live` map finds objects that are in use without reading
//! their record, and an object leaves it when it is dropped.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;

use super::{Identity, Object};
use crate::base::ObjectKind;
use crate::origin::Version;
use crate::store::packed::{PackedObject, PackedStore, PinnedRecord};

/// Small objects in use that a lookup finds again without reading their record (weakly
/// held: open files own them, and an object leaves when it is dropped, so a dead one keeps
/// no memory here).
const LIVE_OBJECTS: usize = 8_192;

/// The packed store of one site, its invalidation generation, and the objects in use.
///
/// Lock order: `live` is a leaf; the store's own locks are never taken under it.
pub struct SmallSite {
    pub store: PackedStore,
    generation: AtomicU64,
    live: Mutex<LruCache<Arc<str>, Weak<Object>>>,
}

impl SmallSite {
    pub fn new(store: PackedStore) -> SmallSite {
        let live = NonZeroUsize::new(LIVE_OBJECTS).unwrap_or(NonZeroUsize::MIN);
        SmallSite {
            store,
            generation: AtomicU64::new(0),
            live: Mutex::new(LruCache::new(live)),
        }
    }

    /// Makes every small object made before now re-resolve at its next use.
    pub fn invalidate_all_made(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.live.lock().clear();
    }

    /// The object of `path` still in use and still cached, if any.
    pub fn live(&self, path: &Arc<str>) -> Option<Arc<Object>> {
        let object = self.live.lock().get(path)?.upgrade()?;
        (!object.is_detached()).then_some(object)
    }

    /// Remembers an object in use, so the next lookup of its path finds this one.
    pub fn keep_live(&self, object: &Arc<Object>) {
        self.live
            .lock()
            .put(object.path().clone(), Arc::downgrade(object));
    }

    /// Whether `small` was made since the last invalidation (else it must be resolved again).
    pub fn is_current(&self, small: &SmallRef) -> bool {
        self.generation() == small.generation
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A dropped object leaves the map, so that its allocation goes with it (a weak
    /// reference keeps the allocation of an object that is gone).
    fn forget_dropped(&self, path: &Arc<str>, object: *const Object) {
        let mut live = self.live.lock();
        let entry = live.peek(path);
        if entry.is_some_and(|weak| std::ptr::eq(weak.as_ptr(), object)) {
            let gone = live.pop(path);
            drop(live);
            drop(gone);
        }
    }
}

/// Where a small object's bytes live: its site's store, as of a generation, and which
/// bytes they are.
pub(super) struct SmallHome {
    site: Arc<SmallSite>,
    generation: u64,
    tag: SmallTag,
}

/// What tells two small versions of a path apart: a hash of the validators (what
/// `Version` equality compares) and a hash of the bytes (which tells apart two versions
/// without validators of one size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmallTag {
    pub version: u64,
    pub content: u64,
}

impl SmallTag {
    fn new(version: &Version, data: &[u8]) -> SmallTag {
        SmallTag {
            version: version_hash(version),
            content: xxhash_rust::xxh3::xxh3_64(data),
        }
    }
}

/// A hash of what `Version` equality compares.
pub fn version_hash(version: &Version) -> u64 {
    let mut bytes = version.size.to_le_bytes().to_vec();
    put_text(&mut bytes, version.etag.as_deref());
    put_text(&mut bytes, version.last_modified.as_deref());
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// A small object as an inode keeps it (its open handles hold the object): what its attributes say,
/// and the tag of its version, to rebuild it from the record (see the module header).
#[derive(Debug, Clone, Copy)]
pub struct SmallRef {
    pub size: u64,
    /// Seconds since the epoch (Last-Modified has no finer unit).
    mtime: u64,
    /// When the version stops being fresh (seconds since the epoch).
    fresh_until: u64,
    generation: u64,
    pub tag: SmallTag,
    /// The bytes came from the origin with the lookup and no read used them yet: the first
    /// use is a miss (see [`Object::fetched_unread`]), and the object rebuilt for it says so.
    pub fetched: bool,
}

impl SmallRef {
    pub fn mtime(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.mtime)
    }

    pub fn is_fresh(&self, now: u64) -> bool {
        now < self.fresh_until
    }

    /// Seconds of freshness left, as [`Object::fresh_for`].
    pub fn fresh_for(&self, now: u64) -> Duration {
        Duration::from_secs(self.fresh_until.saturating_sub(now))
    }

    /// Makes the next use resolve the version again (it left the cache, or was invalidated).
    pub fn expire(&mut self) {
        self.fresh_until = 0;
    }
}

/// What a record says of the version it holds.
pub struct RecordedVersion {
    pub version: Version,
    pub fetched_at: u64,
    pub ttl: Duration,
    pub block_size: u64,
}

const FORMAT: u8 = 1;
/// Length that stands for "no such validator" (an empty one is a different answer).
const ABSENT: u16 = u16::MAX;

fn put_text(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => {
            out.extend_from_slice(&(text.len() as u16).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        None => out.extend_from_slice(&ABSENT.to_le_bytes()),
    }
}

/// Encodes a version for a record; `None` when a validator is too long to keep.
pub fn encode_version(recorded: &RecordedVersion) -> Option<Vec<u8>> {
    let version = &recorded.version;
    let too_long = |t: &Option<String>| t.as_ref().is_some_and(|t| t.len() >= ABSENT as usize);
    if too_long(&version.etag) || too_long(&version.last_modified) {
        return None;
    }
    let mut out = vec![FORMAT];
    for number in [
        version.size,
        recorded.fetched_at,
        recorded.ttl.as_secs(),
        recorded.block_size,
    ] {
        out.extend_from_slice(&number.to_le_bytes());
    }
    put_text(&mut out, version.etag.as_deref());
    put_text(&mut out, version.last_modified.as_deref());
    Some(out)
}

/// Reads what [`encode_version`] wrote; `None` for anything else (the bytes come from disk).
pub fn decode_version(bytes: &[u8]) -> Option<RecordedVersion> {
    let (&format, mut rest) = bytes.split_first()?;
    if format != FORMAT {
        return None;
    }
    let mut number = || {
        let (head, tail) = rest.split_first_chunk::<8>()?;
        rest = tail;
        Some(u64::from_le_bytes(*head))
    };
    let (size, fetched_at, ttl, block_size) = (number()?, number()?, number()?, number()?);
    let mut text = || -> Option<Option<String>> {
        let (len, tail) = rest.split_first_chunk::<2>()?;
        let len = u16::from_le_bytes(*len);
        if len == ABSENT {
            rest = tail;
            return Some(None);
        }
        let (text, tail) = tail.split_at_checked(len as usize)?;
        rest = tail;
        Some(Some(String::from_utf8(text.to_vec()).ok()?))
    };
    let (etag, last_modified) = (text()?, text()?);
    let valid = rest.is_empty() && block_size > 0 && size <= block_size;
    valid.then_some(RecordedVersion {
        version: Version {
            size,
            etag,
            last_modified,
        },
        fetched_at,
        ttl: Duration::from_secs(ttl),
        block_size,
    })
}

impl Object {
    /// An object whose bytes are the record of `path` in `site`'s packed store.
    /// `data` are its bytes, which its tag hashes.
    pub(in crate::cache) fn new_small(
        identity: Identity,
        freshness: (Duration, u64),
        site: Arc<SmallSite>,
        data: &[u8],
    ) -> Object {
        let tag = SmallTag::new(&identity.version, data);
        let mut object = Object::new(identity, freshness, None, 0, Weak::new());
        object.state.get_mut().detached = false;
        let generation = site.generation();
        object.small = Some(SmallHome {
            site,
            generation,
            tag,
        });
        object
    }

    /// Rebuilds the object a record describes (a lookup that found no object in memory).
    pub(in crate::cache) fn from_record(
        site_id: crate::base::SiteId,
        path: Arc<str>,
        site: &Arc<SmallSite>,
        found: &PackedObject,
    ) -> Option<Object> {
        let recorded = decode_version(&found.validators)?;
        let identity = Identity {
            site: site_id,
            path,
            kind: ObjectKind::File,
            version: recorded.version,
            block_size: recorded.block_size,
        };
        let freshness = (recorded.ttl, recorded.fetched_at);
        let object = Object::new_small(identity, freshness, site.clone(), &found.data);
        Some(object)
    }

    pub fn is_small(&self) -> bool {
        self.small.is_some()
    }

    /// The tag of a small object's version (`None` for a large object).
    pub fn small_tag(&self) -> Option<SmallTag> {
        self.small.as_ref().map(|home| home.tag)
    }

    /// A hash of what `Version` equality compares (what an inode's [`SmallRef`] keeps).
    pub fn version_hash(&self) -> u64 {
        version_hash(&self.version)
    }

    /// Whether `other` is this very version: the same object, or small objects with one tag
    /// (an object rebuilt from its record is the version it was).
    pub fn is_same_version(&self, other: &Object) -> bool {
        std::ptr::eq(self, other)
            || self
                .small_tag()
                .is_some_and(|t| other.small_tag() == Some(t))
    }

    /// What an inode keeps of a small object (`None` for a large object).
    pub fn small_ref(&self) -> Option<SmallRef> {
        let home = self.small.as_ref()?;
        let mtime = self.mtime().duration_since(UNIX_EPOCH).unwrap_or_default();
        Some(SmallRef {
            size: self.size(),
            mtime: mtime.as_secs(),
            fresh_until: self.fetched_at().saturating_add(self.ttl.as_secs()),
            generation: home.generation,
            tag: home.tag,
            fetched: self.fetched_unread(),
        })
    }

    /// Takes a dropped small object out of its site's map of objects in use.
    pub(super) fn leave_live(&self) {
        if let Some(home) = &self.small {
            home.site.forget_dropped(&self.path, self);
        }
    }

    /// A small object just fetched whole by its probe: its first use is a miss.
    pub fn mark_small_fetched(&self) {
        self.state.lock().small_fetched = true;
    }

    /// Whether the bytes came from the origin for this object and no read has used them
    /// yet (they are a miss, as a block fetched for a read is).
    pub fn fetched_unread(&self) -> bool {
        self.state.lock().small_fetched
    }

    /// Whether a read of the bytes is a cache hit; the first read after the fetch is not.
    pub(in crate::cache) fn take_small_hit(&self) -> bool {
        !std::mem::take(&mut self.state.lock().small_fetched)
    }

    /// Whether an invalidation came after this object was made (see the module header).
    pub(super) fn small_outdated(&self) -> bool {
        self.small
            .as_ref()
            .is_some_and(|home| home.site.generation() != home.generation)
    }

    fn recorded(&self, fetched_at: u64) -> RecordedVersion {
        RecordedVersion {
            version: self.version.clone(),
            fetched_at,
            ttl: self.ttl,
            block_size: self.block_size,
        }
    }

    /// Whether `found` holds exactly this version, whole: its validators, and its bytes.
    fn is_this_version(&self, found: &PackedObject) -> bool {
        decode_version(&found.validators).is_some_and(|r| r.version == self.version)
            && found.data.len() as u64 == self.version.size
            && self.holds_bytes(&found.data)
    }

    /// Whether `data` are the bytes of this small version (its tag's hash of them).
    fn holds_bytes(&self, data: &[u8]) -> bool {
        self.small
            .as_ref()
            .is_some_and(|home| home.tag.content == xxhash_rust::xxh3::xxh3_64(data))
    }

    /// This version's bytes from the store, or `None` (gone, replaced, or failed a check).
    /// The pin of an open file comes first: it outlives newer versions and reclamation.
    pub(in crate::cache) fn small_bytes(&self) -> Option<Bytes> {
        let home = self.small.as_ref()?;
        // The pin is taken under the lock and read after it: no I/O under `state`.
        let pin = self.state.lock().small_pin.clone();
        if let Some(Ok(Some(found))) = pin.as_deref().map(PinnedRecord::read) {
            if self.is_this_version(&found) {
                return Some(found.data);
            }
        }
        match home.site.store.get(self.path.as_bytes()) {
            Ok(Some(found)) if self.is_this_version(&found) => Some(found.data),
            other => {
                if let Err(e) = other {
                    tracing::warn!(path = %self.path, "packed store read failed: {e}");
                }
                // It left the cache: the next open resolves again; this read fetches.
                self.state.lock().detached = true;
                None
            }
        }
    }

    /// An expired small version must reach the inodes that keep it as a [`SmallRef`], not as
    /// this object: every small object and reference of the site made before now resolves
    /// again at its next use (from its record, when that is still fresh).
    pub(super) fn expire_small(&self) {
        if let Some(home) = &self.small {
            home.site.invalidate_all_made();
        }
    }

    /// Keeps the path's record readable while a file has it open. It is not read here
    /// (rebuilding the object for the open already did): reads check that it holds this
    /// version, and fall back to the store if it does not.
    pub(super) fn pin_small(&self) -> Option<PinnedRecord> {
        let home = self.small.as_ref()?;
        home.site.store.pin_unread(self.path.as_bytes())
    }

    /// Keeps a refetched version as the record of its path again, unless the object left
    /// the cache or another version took the record meanwhile.
    pub(in crate::cache) fn put_small(&self, data: &[u8]) -> bool {
        let Some(home) = self.small.as_ref() else {
            return false;
        };
        // Bytes of another version without validators (same size): never this one's record.
        if self.is_detached() || !self.holds_bytes(data) {
            return false;
        }
        if let Ok(Some(found)) = home.site.store.get(self.path.as_bytes()) {
            if !self.is_this_version(&found) {
                return false;
            }
        }
        self.put_new_small(data)
    }

    /// Keeps the version a probe just brought whole as the record of its path: it is the
    /// newest, so it replaces whatever record the path had.
    pub(in crate::cache) fn put_new_small(&self, data: &[u8]) -> bool {
        let Some(home) = self.small.as_ref() else {
            return false;
        };
        data.len() as u64 == self.version.size
            && self.write_record(&home.site.store, self.fetched_at(), data)
    }

    fn write_record(&self, store: &PackedStore, fetched_at: u64, data: &[u8]) -> bool {
        let Some(validators) = encode_version(&self.recorded(fetched_at)) else {
            return false;
        };
        match store.put(self.path.as_bytes(), &validators, data) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(path = %self.path, "small object not kept: {e}");
                false
            }
        }
    }

    /// The origin confirmed the version (or it was expired): the record says so too.
    pub(super) fn renew_small(&self, fetched_at: u64) {
        let Some(home) = self.small.as_ref() else {
            return;
        };
        let store = &home.site.store;
        if let Ok(Some(found)) = store.get(self.path.as_bytes()) {
            if self.is_this_version(&found) {
                self.write_record(store, fetched_at, &found.data);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(etag: Option<&str>, last_modified: Option<&str>) -> RecordedVersion {
        RecordedVersion {
            version: Version {
                size: 1000,
                etag: etag.map(str::to_string),
                last_modified: last_modified.map(str::to_string),
            },
            fetched_at: 1_700_000_000,
            ttl: Duration::from_secs(1800),
            block_size: 1 << 20,
        }
    }

    #[test]
    fn versions_round_trip_and_an_empty_validator_is_not_an_absent_one() {
        for (etag, date) in [
            (Some("\"abc\""), Some("Sun, 06 Dec 2026 10:00:00 GMT")),
            (None, Some("")),
            (Some(""), None),
            (None, None),
        ] {
            let encoded = encode_version(&recorded(etag, date)).unwrap();
            let decoded = decode_version(&encoded).unwrap();
            assert_eq!(decoded.version, recorded(etag, date).version);
            assert_eq!(decoded.fetched_at, 1_700_000_000);
            assert_eq!(decoded.ttl, Duration::from_secs(1800));
        }
    }

    #[test]
    fn every_cut_or_extension_of_the_validators_is_refused() {
        let encoded = encode_version(&recorded(Some("\"e\""), Some("d"))).unwrap();
        for cut in 0..encoded.len() {
            assert!(decode_version(&encoded[..cut]).is_none(), "cut at {cut}");
        }
        let mut longer = encoded.clone();
        longer.push(0);
        assert!(decode_version(&longer).is_none());
        let mut other_format = encoded;
        other_format[0] = 2;
        assert!(decode_version(&other_format).is_none());
    }

    #[test]
    fn a_size_above_the_block_or_validators_too_long_are_refused() {
        let mut too_big = recorded(None, None);
        too_big.version.size = (1 << 20) + 1;
        assert!(decode_version(&encode_version(&too_big).unwrap()).is_none());
        let long = "x".repeat(70_000);
        assert!(encode_version(&recorded(Some(&long), None)).is_none());
    }
}
