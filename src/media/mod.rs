//! Media layer: MP4 files presented with their header in front, and clips of an interval by
//! name (`NAME.mp4?start=S&end=E`, likewise MP3 and FLV), as views over the cached
//! original's blocks.
//!
//! It sits between the FUSE adapter and the cache: it reads the original through the cache's
//! own API and keeps its records in the object's opaque view record; the cache knows nothing
//! of it.
//!
//! - `mp4`: the MP4 library, pure computation on bytes (scan, faststart, trim, presented);
//! - `mp3`, `flv`: the MP3 and FLV clip libraries, likewise pure, making `mp4::Presented`s;
//! - `clip_error`: why an MP3 or FLV clip cannot be cut;
//! - `name`: what a file name asks for;
//! - `build`: finding the layout with cache reads, then `mp4`'s rewrite or cut;
//! - `build_mp3`, `build_flv`: the cache reads that cut an MP3 or FLV clip;
//! - `record`: the rewritten header kept with the object's files, so it survives restarts;
//! - `views`: presentations kept in memory, within a byte budget;
//! - `read`: presented bytes, from memory and the original's cached blocks.
//!
//! A presentation belongs to one object version: a new version is a new `Object`, which has
//! no record on disk and matches no kept view. Lock order: `Media.flights` and the
//! views' lock are leaf locks.
//!
//! Depends on `cache`, `origin` (an object's `Version`), `store` (its tests), `config` and `base`.

pub mod flv;
pub mod mp3;
pub mod mp4;

mod build;
mod build_flv;
mod build_mp3;
mod clip_error;
mod name;
mod read;
mod record;
mod views;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::base::flight::Flight;
use crate::base::{FsError, FsResult, ObjectKind, SiteId};
use crate::cache::{Cache, Object};
use mp4::{Piece, Presented};

pub use clip_error::ClipError;
pub use name::{MediaRequest, NameKind, TrimSpan};

use views::Views;

/// Presentations built at once: each holds a whole moov and its rewrite in memory.
const BUILDS_AT_ONCE: usize = 2;
/// How long past its deadline a caller waits for a build it joined, so that the build's
/// own deadline error, not a bare timeout, reaches it.
const WAIT_GRACE: Duration = Duration::from_millis(200);

/// A presented file: its exact size, and where each of its bytes comes from.
///
/// Its header (the rewritten `moov`, a clip's `moov`) can weigh megabytes, and the kernel may
/// keep a node for every name it looked up, so only the views' memory (`views`, one byte
/// budget) holds it. A view handed out holds it weakly, and its scalars (size, extent,
/// identity) always; a read that finds the header gone has it rebuilt (see `read`).
#[derive(Clone)]
pub struct MediaView(Arc<ViewParts>);

struct ViewParts {
    size: u64,
    source_extent: u64,
    /// A digest of every presented byte's origin (see [`MediaView::identity`]).
    identity: OnceLock<[u8; 16]>,
    held: Mutex<Held>,
    /// What it presents: how to build it again. `None` only for a view not handed out yet.
    request: Option<MediaRequest>,
}

/// The view's header and mapping: owned where it was built and in the views' memory,
/// borrowed everywhere else.
#[derive(Clone)]
enum Held {
    Strong(Arc<Presented>),
    Weak(std::sync::Weak<Presented>),
}

impl MediaView {
    fn new(presented: Presented) -> MediaView {
        MediaView(Arc::new(ViewParts {
            size: presented.size(),
            source_extent: presented.source_extent(),
            identity: OnceLock::new(),
            held: Mutex::new(Held::Strong(Arc::new(presented))),
            request: None,
        }))
    }

    /// The same view holding its header weakly, for handing out: it stays within the views'
    /// budget however many names and open files use it.
    fn weakened(&self, request: &MediaRequest) -> MediaView {
        let held = match self.strong() {
            Some(presented) => Held::Weak(Arc::downgrade(&presented)),
            None => self.0.held.lock().clone(),
        };
        MediaView(Arc::new(ViewParts {
            size: self.0.size,
            source_extent: self.0.source_extent,
            identity: OnceLock::from(self.identity()),
            held: Mutex::new(held),
            request: Some(request.clone()),
        }))
    }

    /// What tells two presentations apart: equal identities present equal bytes over equal
    /// originals. A process that takes a mount over checks an open clip or rewritten header
    /// by it, since a new binary might rewrite the same version differently.
    pub fn identity(&self) -> [u8; 16] {
        *self.0.identity.get_or_init(|| {
            let encoded = self.strong().map(|p| p.encode()).unwrap_or_default();
            let digest = Sha256::digest(encoded);
            let mut identity = [0u8; 16];
            identity.copy_from_slice(&digest[..16]);
            identity
        })
    }

    /// The exact size of the presented file.
    pub fn size(&self) -> u64 {
        self.0.size
    }

    /// One past the last byte of the original that the view reads.
    pub fn source_extent(&self) -> u64 {
        self.0.source_extent
    }

    /// The original's bytes behind `range` of the presented file, when they are one
    /// stretch of it (for read-ahead); `None` when the range touches the rewritten header,
    /// or when the header is not in memory just now.
    pub fn source_span(&self, range: Range<u64>) -> Option<Range<u64>> {
        match self.strong()?.map(range).as_slice() {
            [Piece::Source(source)] => Some(source.clone()),
            _ => None,
        }
    }

    /// The header and mapping, if memory still holds them.
    fn strong(&self) -> Option<Arc<Presented>> {
        match &*self.0.held.lock() {
            Held::Strong(presented) => Some(presented.clone()),
            Held::Weak(presented) => presented.upgrade(),
        }
    }

    fn request(&self) -> Option<MediaRequest> {
        self.0.request.clone()
    }

    /// Points this view at a rebuilt header (the views' memory holds it).
    fn rejoin(&self, presented: &Arc<Presented>) {
        *self.0.held.lock() = Held::Weak(Arc::downgrade(presented));
    }
}

/// How a media file is served.
#[derive(Clone)]
pub enum Presentation {
    /// Byte for byte as the origin has it.
    Unchanged,
    /// Through a view: a rewritten header, or a clip.
    View(MediaView),
}

impl Presentation {
    pub fn view(&self) -> Option<&MediaView> {
        match self {
            Presentation::Unchanged => None,
            Presentation::View(view) => Some(view),
        }
    }

    /// The presentation as handed out: its header held weakly (see [`MediaView`]).
    fn weakened(&self, request: &MediaRequest) -> Presentation {
        match self {
            Presentation::Unchanged => Presentation::Unchanged,
            Presentation::View(view) => Presentation::View(view.weakened(request)),
        }
    }
}

/// One build in flight: for one version (its address; the builder holds it) and request.
type BuildKey = (usize, MediaRequest);

/// The media layer over one cache: kept presentations, builds in flight and their bound.
pub struct Media {
    cache: Arc<Cache>,
    views: Views,
    flights: Mutex<HashMap<BuildKey, Arc<Flight<Presentation>>>>,
    builds: Semaphore,
    /// When free memory was last given back to the system (see `build`).
    trimmed_at: Mutex<Option<std::time::Instant>>,
}

impl Media {
    pub fn new(cache: Arc<Cache>) -> Media {
        Media {
            cache,
            views: Views::new(),
            flights: Mutex::new(HashMap::new()),
            builds: Semaphore::new(BUILDS_AT_ONCE),
            trimmed_at: Mutex::new(None),
        }
    }

    /// How a directory entry name of `site` under `parent` (a site path) is served.
    pub fn media_name(&self, site: SiteId, parent: &str, name: &str) -> NameKind {
        let media = &self.cache.config().media;
        let vhost = self
            .cache
            .config()
            .vhosts
            .get(site)
            .and_then(|v| v.mp4_faststart);
        name::classify(media, name, |base| {
            media.faststart_for(vhost, &format!("{parent}/{base}"))
        })
    }

    /// Whether a listed name is a clip name, which listings never show.
    pub fn is_trim_name(&self, name: &str) -> bool {
        name::is_trim_name(&self.cache.config().media, name)
    }

    /// The presentation of `object` for `request` when memory alone can tell: a directory
    /// is no media file (a clip of it does not exist), else a kept presentation.
    pub fn presentation_now(
        &self,
        object: &Arc<Object>,
        request: &MediaRequest,
    ) -> Option<FsResult<Presentation>> {
        if object.kind() != ObjectKind::File {
            return Some(match request {
                MediaRequest::Faststart => Ok(Presentation::Unchanged),
                MediaRequest::Trim(_) => Err(FsError::NotFound),
            });
        }
        let kept = self.views.get(object, request)?;
        Some(Ok(kept.weakened(request)))
    }

    /// How `object` is presented for `request`, built at most once for any number of
    /// concurrent callers. Whole files cost, the first time, the reads that find the moov
    /// (the first block and the moov's range); clips also read the moov.
    pub async fn present(
        self: &Arc<Self>,
        object: &Arc<Object>,
        request: &MediaRequest,
        deadline: Instant,
    ) -> FsResult<Presentation> {
        let presented = self.present_kept(object, request, deadline).await?;
        Ok(presented.weakened(request))
    }

    /// Like [`Media::present`], with the header held: as kept in memory, or as just built.
    async fn present_kept(
        self: &Arc<Self>,
        object: &Arc<Object>,
        request: &MediaRequest,
        deadline: Instant,
    ) -> FsResult<Presentation> {
        if object.kind() != ObjectKind::File {
            return self
                .presentation_now(object, request)
                .unwrap_or(Ok(Presentation::Unchanged));
        }
        if let Some(kept) = self.views.get(object, request) {
            return Ok(kept);
        }
        let key = (Arc::as_ptr(object) as usize, request.clone());
        let (flight, leader) = {
            let mut flights = self.flights.lock();
            match flights.get(&key) {
                Some(flight) => (flight.clone(), false),
                None => {
                    let flight = Flight::new();
                    flights.insert(key.clone(), flight.clone());
                    (flight, true)
                }
            }
        };
        if leader {
            // A task of its own: a caller that goes away must not strand the others.
            let (media, object, request) = (self.clone(), object.clone(), request.clone());
            let flight = flight.clone();
            tokio::spawn(async move {
                let built = media.build_presentation(&object, &request, deadline).await;
                if let Ok(presentation) = &built {
                    media.views.insert(&object, &request, presentation);
                }
                media.flights.lock().remove(&key);
                flight.finish(built);
            });
        }
        match tokio::time::timeout_at((deadline + WAIT_GRACE).into(), flight.wait()).await {
            Ok(result) => result,
            Err(_) => Err(FsError::Timeout),
        }
    }
}
