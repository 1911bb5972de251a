//! MP3 clips, computed without I/O from bytes the caller reads: ID3v2 tag, rewritten Xing frame, frames.

mod clip;
mod frame;
mod stream;
mod tags;
mod xing;

#[cfg(test)]
mod fuzz;

pub use clip::{assemble, frame_span, sync_in, sync_window, ClipFrames, Walker, SYNC_WINDOW};
pub use frame::FrameHeader;
pub use stream::Stream;
pub use tags::{id3v2_len, is_id3v1, ID3V1_LEN};
pub use xing::XingTag;

/// Bytes after any ID3v2 tag searched for the first frame: first a few frames' worth, then,
/// for a file with other bytes before its audio, more.
pub const FIRST_FRAME_WINDOWS: [u64; 2] = [8 << 10, 64 << 10];
