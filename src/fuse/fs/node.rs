//! An inode's node as calls use it: checked against invalidations, and a small file's object rebuilt from its record when a call needs the object.

use super::StonFs;
use crate::fuse::inodes::Node;

impl StonFs {
    /// The node of `ino`. A small file's that an invalidation came after is stale: the next
    /// use resolves it again, as an object made before the invalidation would be.
    pub(super) fn node(&self, ino: u64) -> Option<Node> {
        let mut node = self.inodes.get(ino)?;
        if let (Some(site), Some(small)) = (node.site, node.small.as_mut()) {
            if !self.cache.small_is_current(site, small) {
                small.expire();
            }
        }
        Some(node)
    }

    /// `node` of `ino` with its object, rebuilt from the record for a small file whose
    /// inode keeps only its [`crate::cache::SmallRef`]. When the record holds another
    /// version now (or none), the node stays without an object and turns stale: its version
    /// left the cache, and the call resolves the name again as it would for any such object.
    pub(super) fn with_object(&self, ino: u64, mut node: Node) -> Node {
        let (Some(site), Some(small), None) = (node.site, node.small.as_mut(), &node.object) else {
            return node;
        };
        let Some(object) = self.cache.small_object_for(site, &node.path, small) else {
            small.expire();
            return node;
        };
        // Bytes fetched by the lookup: this first use of them is the miss.
        if small.fetched && self.inodes.take_fetched(ino) {
            object.mark_small_fetched();
        }
        node.object = Some(object);
        node
    }
}
