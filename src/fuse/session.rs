//! The fuser session of a mount: fuser's handshake over a descriptor, its dispatch threads,
//! and the notifications the file system sends the kernel. The only place that builds one,
//! so fuser's session types stay in this layer.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use fuser::{Session, SessionACL};

use super::adapter::{FuseAdapter, SessionCache};
use super::fs::{KernelCache, StonFs};

/// How the session runs.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    pub threads: usize,
    /// One cloned `/dev/fuse` descriptor per thread (`FUSE_DEV_IOC_CLONE`). A request read
    /// on a clone dies with the clone, so a mount that must outlive its process shares one
    /// descriptor between all threads (libfuse's default).
    pub clone_fd: bool,
    /// Users other than the mounting one may use the mount.
    pub allow_other: bool,
}

/// A FUSE session whose handshake is done, ready to run.
pub struct FuseSession {
    session: Session<FuseAdapter>,
}

impl FuseSession {
    /// Runs fuser's INIT handshake on `device`: reads the INIT request from it, lets the file
    /// system negotiate, and writes the reply to it.
    pub fn handshake(
        fs: Arc<StonFs>,
        runtime: tokio::runtime::Handle,
        device: OwnedFd,
        options: SessionOptions,
    ) -> io::Result<FuseSession> {
        let acl = match options.allow_other {
            true => SessionACL::All,
            false => SessionACL::Owner,
        };
        let mut config = fuser::Config::default();
        config.n_threads = Some(options.threads.max(1));
        config.clone_fd = options.clone_fd;
        let adapter = FuseAdapter::new(fs, runtime);
        let session = Session::from_fd(adapter, device, acl, config)?;
        Ok(FuseSession { session })
    }

    /// The descriptor number the session reads requests from and writes replies to.
    pub fn device_fd(&self) -> RawFd {
        self.session.as_fd().as_raw_fd()
    }

    /// Another descriptor of the session's connection (for passthrough registrations, the fd
    /// store, or an exec).
    pub fn duplicate_device(&self) -> io::Result<OwnedFd> {
        self.session.as_fd().try_clone_to_owned()
    }

    /// Page-cache invalidation through this session.
    pub fn kernel_cache(&self) -> Arc<dyn KernelCache> {
        Arc::new(SessionCache(self.session.notifier()))
    }

    /// Asks the kernel to queue again every request a previous process read and never
    /// answered (`FUSE_NOTIFY_RESEND`); they come back with new unique numbers.
    pub fn request_resend(&self) -> io::Result<()> {
        let message = super::init::resend_notification();
        // SAFETY: writes a live 16-byte buffer to a descriptor the session owns.
        let written =
            unsafe { libc::write(self.device_fd(), message.as_ptr().cast(), message.len()) };
        match written {
            n if n == message.len() as isize => Ok(()),
            n if n < 0 => Err(io::Error::last_os_error()),
            _ => Err(io::Error::other("short write of FUSE_NOTIFY_RESEND")),
        }
    }

    /// Serves requests on the session's threads until the mount goes away.
    pub fn run(self) -> io::Result<()> {
        self.session.run()
    }
}
