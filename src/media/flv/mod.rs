//! FLV clips: the header, `onMetaData` rewritten for the clip and the decoder set-up, then the
//! original's tags from a key frame with their timestamps rebased, computed without I/O from
//! bytes the caller reads.

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
