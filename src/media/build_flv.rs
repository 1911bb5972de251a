//! Cutting an FLV clip with cache reads.

use std::sync::Arc;
use std::time::Instant;

use super::{Media, Presentation, TrimSpan};
use crate::base::{FsError, FsResult};
use crate::cache::Object;

impl Media {
    pub(super) async fn build_flv_clip(
        self: &Arc<Self>,
        _object: &Arc<Object>,
        _span: TrimSpan,
        _deadline: Instant,
    ) -> FsResult<Presentation> {
        Err(FsError::NotFound)
    }
}
