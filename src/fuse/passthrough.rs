//! Passthrough registrations: cache files the kernel reads directly, by backing id.
//!
//! The logic above works with raw backing ids through the small [`Backings`] trait, so it
//! needs no fuser type and can run without a kernel. A [`Backing`] closes its id when the
//! last holder drops it: the inode's open handles, and the object it is kept with.
//!
//! Backing ids belong to the connection, not to the process: after a restart, the new process
//! takes over the ids that open files still use ([`Backing::adopt`]), because the kernel
//! refuses a second backing file for an inode that is open in passthrough.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use super::journal::Journal;
use crate::cache::KeptRegistration;

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

    /// Takes over an id registered on this connection by a previous process.
    pub fn adopt(owner: &Arc<dyn Backings>, id: u32) -> Arc<Backing> {
        Arc::new(Backing {
            id,
            owner: owner.clone(),
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }
}

impl KeptRegistration for Backing {
    fn id(&self) -> u32 {
        self.id
    }
}

/// Registrations that are also written to the restart journal, so that a new process knows
/// every id the connection holds: the ones open files use, and the ones to close.
pub struct JournaledBackings {
    inner: Arc<dyn Backings>,
    journal: Arc<Journal>,
}

impl JournaledBackings {
    pub fn new(inner: Arc<dyn Backings>, journal: Arc<Journal>) -> JournaledBackings {
        JournaledBackings { inner, journal }
    }
}

impl Backings for JournaledBackings {
    fn open(&self, file: &File) -> std::io::Result<u32> {
        let id = self.inner.open(file)?;
        self.journal.record_backing(id);
        Ok(id)
    }

    fn close(&self, id: u32) {
        self.inner.close(id);
        self.journal.forget_backing(id);
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
