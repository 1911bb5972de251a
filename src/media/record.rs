//! The on-disk record of how a whole media file is presented: unchanged, or a rewritten
//! view. It names the version it was made for, and is read back as hostile input.

use super::mp4::{Limits, Presented};
use super::{MediaView, Presentation};
use crate::origin::Version;

const MAGIC: &[u8] = b"STVR\x01";
const UNCHANGED: u8 = 0;
const VIEW: u8 = 1;
/// Magic, object size, validator hash and kind.
const HEAD_LEN: usize = MAGIC.len() + 8 + 8 + 1;

/// A hash of what identifies the version beside its size, so a record can never be taken
/// for another version's.
fn validators(version: &Version) -> u64 {
    let etag = version.etag.as_deref().unwrap_or("");
    let modified = version.last_modified.as_deref().unwrap_or("");
    xxhash_rust::xxh3::xxh3_64(format!("{etag}\0{modified}").as_bytes())
}

/// `None` for a view whose header memory no longer holds (only one just built is recorded).
pub(super) fn encode(version: &Version, presentation: &Presentation) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(HEAD_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.size.to_be_bytes());
    out.extend_from_slice(&validators(version).to_be_bytes());
    match presentation {
        Presentation::Unchanged => out.push(UNCHANGED),
        Presentation::View(view) => {
            out.push(VIEW);
            out.extend_from_slice(&view.strong()?.encode());
        }
    }
    Some(out)
}

/// The presentation a record describes, if it is well formed, made for `version`, and maps
/// only onto bytes the version has.
pub(super) fn decode(
    bytes: &[u8],
    version: &Version,
    limits: &Limits,
) -> Result<Presentation, String> {
    let head = bytes.get(..HEAD_LEN).ok_or("too short")?;
    let (magic, rest) = head.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err("bad magic".into());
    }
    let (size, rest) = rest.split_at(8);
    let (hash, kind) = rest.split_at(8);
    if size != version.size.to_be_bytes() || hash != validators(version).to_be_bytes() {
        return Err("made for another version".into());
    }
    let payload = bytes.get(HEAD_LEN..).unwrap_or(&[]);
    match kind {
        [UNCHANGED] if payload.is_empty() => Ok(Presentation::Unchanged),
        [VIEW] => {
            let presented = Presented::decode(payload, limits).map_err(|e| e.to_string())?;
            if presented.source_extent() > version.size {
                return Err("maps past the end of the object".into());
            }
            Ok(Presentation::View(MediaView::new(presented)))
        }
        _ => Err("bad kind".into()),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::media::mp4::Segment;

    fn version(size: u64, etag: &str) -> Version {
        Version {
            size,
            etag: Some(etag.into()),
            last_modified: None,
        }
    }

    fn view(source_len: u64) -> Presentation {
        let presented = Presented::new(vec![
            Segment::Source {
                offset: 0,
                len: source_len,
            },
            Segment::Synthetic(Bytes::from_static(b"moov")),
        ])
        .unwrap();
        Presentation::View(MediaView::new(presented))
    }

    fn size_of(p: &Presentation) -> Option<u64> {
        match p {
            Presentation::Unchanged => None,
            Presentation::View(v) => Some(v.size()),
        }
    }

    #[test]
    fn records_round_trip_for_their_own_version_only() {
        let limits = Limits::default();
        let v = version(100, "\"a\"");
        let record = encode(&v, &view(100)).unwrap();
        assert_eq!(size_of(&decode(&record, &v, &limits).unwrap()), Some(104));
        let unchanged = encode(&v, &Presentation::Unchanged).unwrap();
        assert!(matches!(
            decode(&unchanged, &v, &limits),
            Ok(Presentation::Unchanged)
        ));
        assert!(decode(&record, &version(100, "\"b\""), &limits).is_err());
        assert!(decode(&record, &version(101, "\"a\""), &limits).is_err());
    }

    #[test]
    fn damaged_records_are_refused() {
        let limits = Limits::default();
        let v = version(100, "\"a\"");
        let record = encode(&v, &view(100)).unwrap();
        for i in 0..record.len() {
            let mut bad = record.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad, &v, &limits).is_err(), "flip at {i}");
        }
        for len in 0..record.len() {
            assert!(decode(&record[..len], &v, &limits).is_err(), "cut at {len}");
        }
        let mut longer = encode(&v, &Presentation::Unchanged).unwrap();
        longer.push(0);
        assert!(decode(&longer, &v, &limits).is_err());
        // A view that maps past the end of a smaller object of the same identity.
        let record = encode(&version(50, "\"a\""), &view(100)).unwrap();
        assert!(decode(&record, &version(50, "\"a\""), &limits).is_err());
    }
}
