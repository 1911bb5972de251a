//! FUSE layer: the adapter that speaks fuser, and the file-system logic under it.
//!
//! - [`adapter`]: `fuser::Filesystem` handlers that only turn values into replies;
//! - [`fs`]: the logic, returning entries, attributes, handles and bytes (no fuser types);
//! - `inodes`: inode numbers the kernel holds, with their paths, versions and open modes;
//! - [`passthrough`]: registrations of cache files the kernel reads directly;
//! - [`session`]: the fuser session over a `/dev/fuse` descriptor;
//! - [`init`]: the INIT exchange as bytes, and `FUSE_NOTIFY_RESEND`;
//! - [`journal`]: the kernel state a process that takes over the mount needs.
//!
//! Depends on `media`, `cache`, `store` (its tests build cache files) and `base`. fuser types
//! never leave this layer.

pub mod adapter;
pub mod fs;
pub mod init;
mod inodes;
pub mod journal;
pub mod passthrough;
pub mod session;

pub use adapter::{FuseAdapter, SessionCache};
pub use fs::{KernelFeatures, StonFs, TakeoverReport, Wiring, SOCKET_XATTR};
pub use session::{FuseSession, SessionOptions};
