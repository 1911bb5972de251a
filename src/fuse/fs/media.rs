//! Media names: the node of an MP4 file presented with its header in front, or of a clip
//! of it by name (`NAME.mp4?start=S&end=E`). The cache decides how the file is presented;
//! the node carries the view, so its entry has the presented size, and opens and reads go
//! through the view.

use std::sync::Arc;
use std::time::Instant;

use super::StonFs;
use crate::base::{FsResult, SiteId};
use crate::cache::Object;
use crate::fuse::inodes::Node;
use crate::media::{MediaRequest, MediaView, Presentation};

impl StonFs {
    /// The node of a media name from memory alone: a fresh original whose presentation for
    /// `request` is known (or a fresh not-found); `None` when the cache must be asked.
    pub(super) fn media_node_now(
        &self,
        site: SiteId,
        path: &Arc<str>,
        request: &MediaRequest,
    ) -> Option<FsResult<Node>> {
        let found = match self.cache.lookup_fresh(site, path)? {
            Ok(object) => {
                let presented = self.media.presentation_now(&object, request)?;
                presented.map(|p| (object, p))
            }
            Err(error) => Err(error),
        };
        Some(found.map(|found| media_node(site, path, request, found)))
    }

    /// The node of a media name: the original at `path`, resolved, then how it is presented
    /// for `request` (which may read its first block and moov through the cache).
    pub(super) async fn media_node(
        &self,
        site: SiteId,
        path: &Arc<str>,
        request: &MediaRequest,
        deadline: Instant,
    ) -> FsResult<Node> {
        let object = self.cache.resolve(site, path.clone(), deadline).await?;
        let presented = self.media.present(&object, request, deadline).await?;
        Ok(media_node(site, path, request, (object, presented)))
    }

    /// How the node's name presents `object`: its view when the node is a media name and
    /// the object is another version than the one it last presented.
    pub(super) async fn view_of(
        &self,
        node: &Node,
        object: &Arc<Object>,
        deadline: Instant,
    ) -> FsResult<Option<MediaView>> {
        let Some(request) = &node.media else {
            return Ok(None);
        };
        if node.shows(object) {
            return Ok(node.view.clone());
        }
        let presented = self.media.present(object, request, deadline).await?;
        Ok(presented.view().cloned())
    }
}

fn media_node(
    site: SiteId,
    path: &Arc<str>,
    request: &MediaRequest,
    (object, presentation): (Arc<Object>, Presentation),
) -> Node {
    Node {
        media: Some(request.clone()),
        view: presentation.view().cloned(),
        ..Node::new(site, path.clone(), Some(object))
    }
}
