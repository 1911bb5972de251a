//! FUSE layer: the adapter that speaks fuser, and the file-system logic under it.
//!
//! - [`adapter`]: `fuser::Filesystem` handlers that only turn values into replies;
//! - [`fs`]: the logic, returning entries, attributes, handles and bytes (no fuser types);
//! - `inodes`: inode numbers the kernel holds, with their paths, versions and open modes;
//! - [`passthrough`]: registrations of cache files the kernel reads directly.
//!
//! Depends on `cache`, `config` and `base`. fuser types never leave this layer.

pub mod adapter;
pub mod fs;
mod inodes;
pub mod passthrough;

pub use adapter::{FuseAdapter, SessionCache};
pub use fs::{StonFs, SOCKET_XATTR};
