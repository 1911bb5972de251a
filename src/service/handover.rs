//! Handing a live mount from one process to the next: the descriptors a new process takes
//! back, and fuser's INIT handshake relayed so that a connection already set up can be
//! adopted with fuser 0.18 unchanged.
//!
//! fuser's `Session::from_fd` insists on reading FUSE_INIT first. So the session is built on
//! one end of a SOCK_SEQPACKET socketpair (one message per read, as /dev/fuse) into which the
//! INIT request is written: the kernel's own on a fresh mount, the saved copy on a takeover.
//! fuser negotiates and writes its reply into the socket; then the real `/dev/fuse`
//! descriptor is `dup3`ed over the session's descriptor number, and every later read, write
//! and ioctl of the session (FUSE_DEV_IOC_CLONE and BACKING_OPEN included) reaches the kernel.
//! A fuser that ever did more than read and write during its handshake would fail this
//! loudly (ENOTTY on the socket), and the restart tests catch it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use super::fdstore;
use crate::fuse::{FuseSession, SessionOptions, StonFs};

/// Names of the mount's descriptors in the fd store.
pub const FUSE_FD_NAME: &str = "fuse";
pub const STATE_FD_NAME: &str = "state";
/// `name:fd,name:fd` of the descriptors an in-place exec left open for the new image.
pub const HANDOVER_ENV: &str = "STON_FS_HANDOVER";
/// Largest message fuser reads or writes in the handshake.
const MAX_INIT_MESSAGE: usize = 1 << 20;

/// The mount's descriptors as a new process found them.
#[derive(Default)]
pub struct Inherited {
    pub fuse: Option<OwnedFd>,
    pub state: Option<OwnedFd>,
}

impl Inherited {
    /// Takes what the fd store (`LISTEN_FDS`) or a previous image of this process
    /// (`STON_FS_HANDOVER`) handed over; descriptors with other names are closed. Must run
    /// at startup, before any other thread exists.
    pub fn take() -> Inherited {
        let mut fds = fdstore::take_listen_fds();
        fds.extend(take_handover_fds());
        let mut inherited = Inherited::default();
        for (name, fd) in fds {
            match name.as_str() {
                FUSE_FD_NAME if inherited.fuse.is_none() => inherited.fuse = Some(fd),
                STATE_FD_NAME if inherited.state.is_none() => inherited.state = Some(fd),
                other => tracing::debug!("closing an unexpected inherited descriptor {other}"),
            }
        }
        inherited
    }

    /// Whether a live connection was handed over (so the mount point must not be touched:
    /// it waits for this very process).
    pub fn is_takeover(&self) -> bool {
        self.fuse.is_some()
    }
}

fn take_handover_fds() -> Vec<(String, OwnedFd)> {
    let Ok(spec) = std::env::var(HANDOVER_ENV) else {
        return Vec::new();
    };
    std::env::remove_var(HANDOVER_ENV);
    spec.split(',')
        .filter_map(|item| {
            let (name, fd) = item.split_once(':')?;
            let fd: RawFd = fd.parse().ok().filter(|fd| *fd > 2)?;
            fdstore::adopt_fd(fd).map(|fd| (name.to_string(), fd))
        })
        .collect()
}

/// Reads the kernel's INIT request from a connection just mounted.
pub fn read_init(device: &OwnedFd) -> io::Result<Vec<u8>> {
    let mut buffer = vec![0u8; MAX_INIT_MESSAGE];
    loop {
        // SAFETY: the buffer is valid for writes of its length.
        let n = unsafe { libc::read(device.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
        if n >= 0 {
            buffer.truncate(n as usize);
            return Ok(buffer);
        }
        let error = io::Error::last_os_error();
        // The kernel's own "try again" answers (libfuse retries the same ones).
        if !matches!(
            error.raw_os_error(),
            Some(libc::EINTR | libc::EAGAIN | libc::ENOENT)
        ) {
            return Err(error);
        }
    }
}

/// Runs fuser's handshake on `init_request` over a socketpair, then points the session at
/// `device`. Returns the session and fuser's INIT reply, which the caller sends to the
/// kernel on a fresh mount and only compares on a takeover.
pub fn relay_handshake(
    fs: Arc<StonFs>,
    runtime: tokio::runtime::Handle,
    device: OwnedFd,
    init_request: &[u8],
    options: SessionOptions,
) -> io::Result<(FuseSession, Vec<u8>)> {
    let (ours, theirs) = seqpacket_pair()?;
    write_all(ours.as_raw_fd(), init_request)?;
    let session = FuseSession::handshake(fs, runtime, theirs, options)?;
    let mut reply = vec![0u8; MAX_INIT_MESSAGE];
    // SAFETY: the buffer is valid for writes of its length.
    let n = unsafe {
        libc::recv(
            ours.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::other(format!(
            "fuser sent no INIT reply: {}",
            io::Error::last_os_error()
        )));
    }
    reply.truncate(n as usize);
    // SAFETY: both descriptors are open; dup3 atomically makes the session's number refer
    // to the FUSE connection (and closes the socket end it referred to).
    let rc = unsafe { libc::dup3(device.as_raw_fd(), session.device_fd(), libc::O_CLOEXEC) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((session, reply))
}

fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut pair = [0 as RawFd; 2];
    // SAFETY: `pair` has room for the two descriptors socketpair writes.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair returned two fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) })
}

/// Writes one whole message (to /dev/fuse, or the socketpair).
pub fn write_all(fd: RawFd, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: writes a live buffer of its own length.
    let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    match n {
        n if n < 0 => Err(io::Error::last_os_error()),
        n if n as usize != bytes.len() => Err(io::Error::other("short write")),
        _ => Ok(()),
    }
}
