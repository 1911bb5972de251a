//! Presentations kept in memory, least recently used first out, within a byte budget: whole
//! files (a few bytes when unchanged, the rewritten header when not) and clips.

use std::sync::{Arc, Weak};

use lru::LruCache;
use parking_lot::Mutex;

use super::{MediaRequest, Presentation};
use crate::base::SiteId;
use crate::cache::{Object, SmallTag};

/// Bytes of presented headers kept in memory: the only place that holds them, for open files
/// and names the kernel keeps alike (see `MediaView`).
pub(super) const VIEW_MEMORY: u64 = 64 << 20;
/// Most presentations kept, whatever their size.
const VIEW_ENTRIES: usize = 16_384;
/// What an entry costs beyond the bytes its view holds: key, path and bookkeeping.
const ENTRY_OVERHEAD: u64 = 256;

#[derive(Clone, PartialEq, Eq, Hash)]
struct ViewKey {
    site: SiteId,
    path: Arc<str>,
    request: MediaRequest,
}

struct Kept {
    /// The version it was made for; a weak reference also keeps the address from being
    /// reused, so comparing addresses compares versions.
    object: Weak<Object>,
    /// A small version's tag: an object rebuilt from its record is the same version.
    small: Option<SmallTag>,
    presentation: Presentation,
    cost: u64,
}

struct State {
    entries: LruCache<ViewKey, Kept>,
    bytes: u64,
}

/// The memory of presentations.
///
/// Owns: at most `VIEW_ENTRIES` presentations, `VIEW_MEMORY` bytes with their overhead.
/// Must hold: an entry is only ever returned for the object version it was made for.
pub(super) struct Views {
    state: Mutex<State>,
}

fn key(object: &Object, request: &MediaRequest) -> ViewKey {
    ViewKey {
        site: object.site(),
        path: object.path().clone(),
        request: request.clone(),
    }
}

impl Views {
    pub(super) fn new() -> Views {
        Views {
            state: Mutex::new(State {
                entries: LruCache::unbounded(),
                bytes: 0,
            }),
        }
    }

    /// The presentation made for this very version, if it is still kept.
    pub(super) fn get(&self, object: &Arc<Object>, request: &MediaRequest) -> Option<Presentation> {
        let key = key(object, request);
        let mut state = self.state.lock();
        let kept = state.entries.get(&key)?;
        let same = std::ptr::eq(kept.object.as_ptr(), Arc::as_ptr(object))
            || kept
                .small
                .is_some_and(|tag| object.small_tag() == Some(tag));
        if same {
            return Some(kept.presentation.clone());
        }
        // Made for another version: never again of use.
        let stale = state.entries.pop(&key)?;
        state.bytes -= stale.cost;
        None
    }

    pub(super) fn insert(
        &self,
        object: &Arc<Object>,
        request: &MediaRequest,
        presentation: &Presentation,
    ) {
        let held = match presentation {
            Presentation::Unchanged => 0,
            Presentation::View(view) => view.strong().map_or(0, |p| p.held_bytes()),
        };
        let key = key(object, request);
        let cost = ENTRY_OVERHEAD + key.path.len() as u64 + held;
        let kept = Kept {
            object: Arc::downgrade(object),
            small: object.small_tag(),
            presentation: presentation.clone(),
            cost,
        };
        let mut state = self.state.lock();
        if let Some(old) = state.entries.put(key, kept) {
            state.bytes -= old.cost;
        }
        state.bytes += cost;
        // The entry just kept stays even alone over the budget: its builder's readers use it.
        while (state.bytes > VIEW_MEMORY || state.entries.len() > VIEW_ENTRIES)
            && state.entries.len() > 1
        {
            match state.entries.pop_lru() {
                Some((_, gone)) => state.bytes -= gone.cost,
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use bytes::Bytes;

    use super::*;
    use crate::base::ObjectKind;
    use crate::media::mp4::{Presented, Segment};
    use crate::media::{MediaView, TrimSpan};
    use crate::store::{LoadedObject, MetaHeader, ObjectLocation};

    /// An object version of `path` (never touches its files).
    fn version(path: &str, etag: &str) -> Arc<Object> {
        let header = MetaHeader {
            site: "s".into(),
            path: path.into(),
            kind: ObjectKind::File,
            size: 1 << 20,
            etag: Some(etag.into()),
            last_modified: None,
            fetched_at: 0,
            block_size: 4096,
            ttl: 60,
        };
        let loaded = LoadedObject {
            header,
            blocks: Vec::new(),
            location: ObjectLocation {
                data: "/nonexistent/ston-fs-views.data".into(),
                meta: "/nonexistent/ston-fs-views.meta".into(),
            },
            last_used: SystemTime::UNIX_EPOCH,
        };
        Arc::new(Object::restore(0, loaded, Weak::new()))
    }

    fn view(header_bytes: usize) -> Presentation {
        let presented = Presented::new(vec![
            Segment::Synthetic(Bytes::from(vec![7u8; header_bytes])),
            Segment::Source { offset: 0, len: 10 },
        ])
        .unwrap();
        Presentation::View(MediaView::new(presented))
    }

    fn size(p: Option<Presentation>) -> Option<u64> {
        p.and_then(|p| p.view().map(MediaView::size))
    }

    #[test]
    fn a_kept_view_serves_only_its_own_version() {
        let views = Views::new();
        let (v1, v2) = (version("/a.mp4", "1"), version("/a.mp4", "2"));
        views.insert(&v1, &MediaRequest::Faststart, &view(100));
        assert_eq!(size(views.get(&v1, &MediaRequest::Faststart)), Some(110));
        let clip = MediaRequest::Trim(TrimSpan {
            start: Some(1.0),
            end: None,
        });
        assert!(views.get(&v1, &clip).is_none(), "another request");
        assert!(
            views.get(&v2, &MediaRequest::Faststart).is_none(),
            "another version"
        );
        assert!(
            views.get(&v1, &MediaRequest::Faststart).is_none(),
            "the stale entry was dropped"
        );
        assert_eq!(views.state.lock().bytes, 0);
    }

    #[test]
    fn memory_stays_within_its_budget_oldest_out_first() {
        let views = Views::new();
        let big = (VIEW_MEMORY / 4) as usize;
        let objects: Vec<_> = (0..6).map(|i| version(&format!("/{i}.mp4"), "1")).collect();
        for object in &objects {
            views.insert(object, &MediaRequest::Faststart, &view(big));
            assert!(views.state.lock().bytes <= VIEW_MEMORY);
        }
        assert!(views.get(&objects[0], &MediaRequest::Faststart).is_none());
        assert!(views.get(&objects[5], &MediaRequest::Faststart).is_some());
        // One view above the whole budget is kept alone (its readers hold it only weakly),
        // and goes with the next one kept.
        views.insert(
            &objects[0],
            &MediaRequest::Faststart,
            &view(VIEW_MEMORY as usize + 1),
        );
        assert!(views.get(&objects[0], &MediaRequest::Faststart).is_some());
        assert_eq!(views.state.lock().entries.len(), 1);
        views.insert(&objects[1], &MediaRequest::Faststart, &view(big));
        assert!(views.get(&objects[0], &MediaRequest::Faststart).is_none());
        assert!(views.state.lock().bytes <= VIEW_MEMORY);
    }

    #[test]
    fn a_handed_out_view_holds_its_header_only_while_memory_keeps_it() {
        let views = Views::new();
        let objects: Vec<_> = (0..6).map(|i| version(&format!("/{i}.mp4"), "1")).collect();
        let big = (VIEW_MEMORY / 4) as usize;
        views.insert(&objects[0], &MediaRequest::Faststart, &view(big));
        let kept = views.get(&objects[0], &MediaRequest::Faststart).unwrap();
        let handed = kept.weakened(&MediaRequest::Faststart);
        drop(kept);
        let handed = handed.view().unwrap().clone();
        assert!(handed.strong().is_some(), "kept in memory");
        for object in &objects[1..] {
            views.insert(object, &MediaRequest::Faststart, &view(big));
        }
        assert!(
            handed.strong().is_none(),
            "evicted: nothing else holds the header"
        );
        assert_eq!(handed.size(), big as u64 + 10, "the scalars stay");
        assert_eq!(handed.request(), Some(MediaRequest::Faststart));
    }
}
