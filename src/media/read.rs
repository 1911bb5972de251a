//! Reading a presented file: synthetic pieces from memory, the rest as reads of the original
//! object's blocks through the cache.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::mp4::{Piece, Presented};
use super::Media;
use super::MediaView;
use crate::base::{FsError, FsResult};
use crate::cache::Object;

/// Joins the pieces of one read; a single piece is passed on without a copy.
fn join(mut parts: Vec<Bytes>) -> Bytes {
    if parts.len() == 1 {
        return parts.swap_remove(0);
    }
    Bytes::from(parts.concat())
}

/// A source piece must come back whole: a short one would shift every byte after it.
fn whole(data: Bytes, range: &Range<u64>) -> FsResult<Bytes> {
    match data.len() as u64 == range.end - range.start {
        true => Ok(data),
        false => Err(FsError::BadAnswer("short read of a media file".into())),
    }
}

impl Media {
    /// Serves a read of a presented file from memory and verified cached blocks alone, or
    /// says it cannot (`None`): the hit path, on the calling thread. Also says whether it
    /// was a cache hit.
    pub fn read_view_cached(
        &self,
        object: &Object,
        view: &MediaView,
        range: Range<u64>,
    ) -> Option<FsResult<(Bytes, bool)>> {
        let mut parts = Vec::new();
        let mut hit = true;
        for piece in view.strong()?.map(range) {
            match piece {
                Piece::Synthetic(bytes) => parts.push(bytes),
                Piece::Source(source) => match object.read_cached(source.clone())? {
                    Ok((data, from_cache)) => {
                        hit &= from_cache;
                        match whole(Bytes::from(data), &source) {
                            Ok(data) => parts.push(data),
                            Err(e) => return Some(Err(e)),
                        }
                    }
                    Err(e) => return Some(Err(e)),
                },
            }
        }
        Some(Ok((join(parts), hit)))
    }

    /// Reads `range` of a presented file, fetching the original's missing blocks.
    pub async fn read_view(
        self: &Arc<Self>,
        object: &Arc<Object>,
        view: &MediaView,
        range: Range<u64>,
        deadline: Instant,
    ) -> FsResult<(Bytes, bool)> {
        let presented = match view.strong() {
            Some(presented) => presented,
            None => self.rebuild_view(object, view, deadline).await?,
        };
        let mut parts = Vec::new();
        let mut hit = true;
        for piece in presented.map(range) {
            match piece {
                Piece::Synthetic(bytes) => parts.push(bytes),
                Piece::Source(source) => {
                    let (data, from_cache) =
                        self.cache.read(object, source.clone(), deadline).await?;
                    hit &= from_cache;
                    parts.push(whole(data, &source)?);
                }
            }
        }
        Ok((join(parts), hit))
    }

    /// The header of a view that memory let go, built again (or found kept again) for the
    /// same version. It must present the very same bytes: anything else is EIO.
    async fn rebuild_view(
        self: &Arc<Self>,
        object: &Arc<Object>,
        view: &MediaView,
        deadline: Instant,
    ) -> FsResult<Arc<Presented>> {
        let request = view
            .request()
            .ok_or(FsError::Io("a view without its request".into()))?;
        let rebuilt = self.present_kept(object, &request, deadline).await?;
        let presented = match rebuilt.view() {
            Some(again) if again.identity() == view.identity() => again.strong(),
            _ => None,
        };
        let presented = presented.ok_or_else(|| {
            tracing::warn!(path = %object.path(), "a media header built again differs; EIO");
            FsError::Io("the media header built again differs".into())
        })?;
        view.rejoin(&presented);
        Ok(presented)
    }
}
