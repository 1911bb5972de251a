//! FLV clips from a key frame with rebased timestamps, computed without I/O from bytes the caller reads.

mod amf;
mod clip;
mod head;
mod tag;
mod walk;

#[cfg(test)]
mod fuzz;

pub use amf::{Amf, AmfReader};
pub use clip::{assemble, indexed_end, indexed_start};
pub use head::{parse_head, Head, HeadStep};
pub use tag::Tag;
pub use walk::{Purpose, TagWalk};

/// Bytes of a file's front read first; a bigger `onMetaData` asks for more.
pub const FIRST_READ: u64 = 16 << 10;
