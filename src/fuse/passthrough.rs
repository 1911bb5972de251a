//! Passthrough registrations: cache files the kernel reads directly, by backing id.
//!
//! The logic above works with raw backing ids through the small [`Backings`] trait, so it
//! needs no fuser type and can run without a kernel. A [`Backing`] closes its id when the
//! last holder drops it: the inode's open handles, and the object it is kept with.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

/// Registers files with the FUSE connection for passthrough, and closes registrations.
pub trait Backings: Send + Sync {
    /// Registers `file`; returns its backing id.
    fn open(&self, file: &File) -> std::io::Result<u32>;
    /// Closes a registration made by `open`.
    fn close(&self, id: u32);
}

/// One registration, closed when the last holder drops it.
pub struct Backing {
    id: u32,
    owner: Arc<dyn Backings>,
}

impl Backing {
    pub fn register(owner: &Arc<dyn Backings>, file: &File) -> std::io::Result<Arc<Backing>> {
        let id = owner.open(file)?;
        Ok(Arc::new(Backing {
            id,
            owner: owner.clone(),
        }))
    }

    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        self.owner.close(self.id);
    }
}

/// `_IOW(229, 2, uint32_t)`: `FUSE_DEV_IOC_BACKING_CLOSE` from `<linux/fuse.h>`.
const FUSE_DEV_IOC_BACKING_CLOSE: u64 = (1 << 30) | (4 << 16) | (229 << 8) | 2;

/// Registrations on a FUSE connection, through its `/dev/fuse` descriptor.
pub struct DevFuseBackings {
    device: OwnedFd,
}

impl DevFuseBackings {
    /// `device` is a descriptor of the mount's FUSE connection (a duplicate is fine).
    pub fn new(device: OwnedFd) -> DevFuseBackings {
        DevFuseBackings { device }
    }
}

impl Backings for DevFuseBackings {
    fn open(&self, file: &File) -> std::io::Result<u32> {
        fuser::BackingId::create_raw(&self.device, file)
    }

    fn close(&self, id: u32) {
        // SAFETY: the ioctl reads one u32 from a valid pointer on a descriptor we own.
        let rc = unsafe {
            libc::ioctl(
                self.device.as_raw_fd(),
                FUSE_DEV_IOC_BACKING_CLOSE as _,
                &id as *const u32,
            )
        };
        if rc != 0 {
            let error = std::io::Error::last_os_error();
            tracing::debug!(id, "closing a passthrough registration: {error}");
        }
    }
}
