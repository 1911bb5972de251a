//! The view record kept with an object version: what the layer above computed of how the
//! version is presented (an MP4's rewritten header), stored beside its metadata, charged
//! against the cap, and removed with the version's other files.

use super::Object;
use crate::store::disk_bytes;

impl Object {
    /// Keeps `record` with the object's files, replacing any earlier one, if the cap allows
    /// and the object is still cached. Returns whether it was kept.
    ///
    /// The record is written beside its place first and moved there under the object's lock,
    /// after checking the object is still cached: a version that left the cache meanwhile
    /// (its files removed, maybe a new version's created) never gets a record.
    pub fn save_view(&self, record: &[u8]) -> bool {
        let (Some(index), Some(location)) = (self.index.upgrade(), self.location.as_ref()) else {
            return false;
        };
        if self.is_detached() {
            return false;
        }
        if let Err(e) = location.stage_view(record) {
            tracing::warn!(path = %self.path, "cannot write the view record: {e}");
            location.discard_staged_view();
            return false;
        }
        let charge = disk_bytes(record.len() as u64);
        if !index.reserve(self, charge) {
            location.discard_staged_view();
            return false;
        }
        let mut state = self.state.lock();
        let committed = match state.detached {
            true => Err(std::io::Error::other("object left the cache")),
            false => location.commit_view(),
        };
        if let Err(e) = committed {
            drop(state);
            index.release(charge);
            location.discard_staged_view();
            tracing::debug!(path = %self.path, "view record not kept: {e}");
            return false;
        }
        let replaced = std::mem::replace(&mut state.view_charged, charge);
        state.charged = state.charged.saturating_sub(replaced) + charge;
        drop(state);
        index.release(replaced);
        true
    }

    /// The view record kept with this version, if any (at most `max_len` bytes). The caller
    /// treats it as hostile: it is only a file on disk.
    pub fn load_view(&self, max_len: u64) -> Option<Vec<u8>> {
        let location = self.location.as_ref()?;
        if self.is_detached() {
            return None;
        }
        match location.load_view(max_len) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(path = %self.path, "cannot read the view record: {e}");
                None
            }
        }
    }

    /// Drops a view record that failed its checks, giving its space back.
    pub fn drop_view(&self) {
        let Some(location) = self.location.as_ref() else {
            return;
        };
        let mut state = self.state.lock();
        if state.detached {
            return;
        }
        if let Err(e) = location.remove_view() {
            tracing::warn!(path = %self.path, "cannot remove the view record: {e}");
            return;
        }
        let freed = std::mem::take(&mut state.view_charged);
        state.charged = state.charged.saturating_sub(freed);
        drop(state);
        if let Some(index) = self.index.upgrade() {
            index.release(freed);
        }
    }
}
