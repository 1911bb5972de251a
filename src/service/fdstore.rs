//! systemd's notification protocol, both ends: `READY=1` and the file-descriptor store
//! (`FDSTORE=1` with `FDNAME=`, `FDSTOREREMOVE=1`) sent to `$NOTIFY_SOCKET` with the
//! descriptors as SCM_RIGHTS, and the descriptors a new process gets back (`LISTEN_FDS`,
//! `LISTEN_FDNAMES`, `LISTEN_PID`; see sd_notify(3) and sd_listen_fds(3)). The ston-fs
//! supervisor speaks the same protocol, so a worker has one protocol to speak.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// First descriptor number handed over (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;
/// Most descriptors taken back at once; anything beyond is left alone.
const MAX_LISTEN_FDS: usize = 64;
/// Set by the ston-fs supervisor for its worker: the supervisor's pid.
pub const SUPERVISOR_ENV: &str = "STON_FS_SUPERVISOR";

/// Who keeps the mount's descriptors while no worker runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    Systemd,
    /// The ston-fs supervisor with this pid.
    Supervisor(u32),
    /// Nobody: the reason, for the log.
    Nobody(String),
}

impl Holder {
    /// Decided from the environment this process was started with.
    pub fn from_env() -> Holder {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Holder::Nobody(
                "no supervisor and no systemd (started with --foreground without NOTIFY_SOCKET)"
                    .into(),
            );
        }
        // systemd 254 and later say how many descriptors the unit may store.
        if std::env::var("FDSTORE").is_ok_and(|max| max.trim() == "0") {
            return Holder::Nobody("the systemd unit sets no FileDescriptorStoreMax=".into());
        }
        match std::env::var(SUPERVISOR_ENV)
            .ok()
            .and_then(|p| p.parse().ok())
        {
            Some(pid) => Holder::Supervisor(pid),
            None => Holder::Systemd,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Holder::Systemd => "systemd's file-descriptor store".to_string(),
            Holder::Supervisor(pid) => format!("the ston-fs supervisor (pid {pid})"),
            Holder::Nobody(why) => why.clone(),
        }
    }
}

/// Where notifications go once the holder was replaced (see `holder`), and the new
/// supervisor's pid; `$NOTIFY_SOCKET` until then.
static REDIRECTED: parking_lot::RwLock<Option<(std::ffi::OsString, u32)>> =
    parking_lot::RwLock::new(None);

/// Sends every later notification to `socket` (`@name` for an abstract socket), the
/// notification socket of the supervisor with pid `supervisor`.
pub fn redirect_notifications(socket: &str, supervisor: u32) {
    *REDIRECTED.write() = Some((socket.into(), supervisor));
}

/// The replacement holder's socket and pid, if the holder was replaced: what a new image of
/// this process (an in-place upgrade) must be told instead of its own environment's.
pub fn redirected() -> Option<(std::ffi::OsString, u32)> {
    REDIRECTED.read().clone()
}

/// Sends one notification, with `fds` attached. Returns `Ok(false)` when nobody listens
/// (no `$NOTIFY_SOCKET`).
pub fn notify(state: &str, fds: &[BorrowedFd<'_>]) -> io::Result<bool> {
    let target = redirected().map(|(socket, _)| socket);
    let Some(path) = target.or_else(|| std::env::var_os("NOTIFY_SOCKET")) else {
        return Ok(false);
    };
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.connect_addr(&address)?;
    } else {
        socket.connect(Path::new(&path))?;
    }
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    send_with_fds(socket.as_raw_fd(), state.as_bytes(), &raw)?;
    Ok(true)
}

/// Puts `fd` in the store under `name` (one message per name: a name covers every
/// descriptor of its message).
pub fn store(name: &str, fd: BorrowedFd<'_>) -> io::Result<bool> {
    notify(&format!("FDSTORE=1\nFDNAME={name}"), &[fd])
}

/// Takes every descriptor named `name` out of the store.
pub fn remove(name: &str) {
    if let Err(e) = notify(&format!("FDSTOREREMOVE=1\nFDNAME={name}"), &[]) {
        tracing::debug!("cannot remove {name} from the fd store: {e}");
    }
}

/// One datagram with descriptors attached (`sd_pid_notify_with_fds`).
pub fn send_with_fds(socket: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    if !fds.is_empty() {
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = space as _;
        // SAFETY: the control buffer is CMSG_SPACE(fd_bytes) long, so the first header and
        // its data fit in it.
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&message);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(header),
                fd_bytes,
            );
        }
    }
    // SAFETY: `message` points at buffers that live for the call.
    let sent = unsafe { libc::sendmsg(socket, &message, libc::MSG_NOSIGNAL) };
    match sent {
        n if n < 0 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
}

/// One datagram as received: its text, the descriptors it carried (close-on-exec), and the
/// sender's pid as the kernel vouches for it (the socket must have SO_PASSCRED).
pub struct Received {
    pub text: String,
    pub fds: Vec<OwnedFd>,
    pub sender: Option<u32>,
}

/// Receives one datagram without blocking; `Ok(None)` when none is waiting.
pub fn recv_with_fds(socket: RawFd) -> io::Result<Option<Received>> {
    const MAX_FDS: usize = 16;
    let mut data = vec![0u8; 4096];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: CMSG_SPACE only computes sizes.
    let space = unsafe {
        libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32)
            + libc::CMSG_SPACE(std::mem::size_of::<libc::ucred>() as u32)
    } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = space as _;
    let flags = libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT;
    // SAFETY: `message` points at buffers that live for the call.
    let received = unsafe { libc::recvmsg(socket, &mut message, flags) };
    if received < 0 {
        let error = io::Error::last_os_error();
        return match error.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(error),
        };
    }
    let mut fds = Vec::new();
    let mut sender = None;
    // SAFETY: walks the control messages the kernel wrote into `control`, each within
    // msg_controllen; descriptors passed to us are ours to own.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            let data_ptr = libc::CMSG_DATA(header);
            let len = (*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
            match ((*header).cmsg_level, (*header).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                    let count = len / std::mem::size_of::<RawFd>();
                    for i in 0..count {
                        let fd = data_ptr.cast::<RawFd>().add(i).read_unaligned();
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                (libc::SOL_SOCKET, libc::SCM_CREDENTIALS)
                    if len >= std::mem::size_of::<libc::ucred>() =>
                {
                    let credentials = data_ptr.cast::<libc::ucred>().read_unaligned();
                    sender = u32::try_from(credentials.pid).ok();
                }
                _ => {}
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
    }
    data.truncate(received as usize);
    Ok(Some(Received {
        text: String::from_utf8_lossy(&data).into_owned(),
        fds,
        sender,
    }))
}

/// The descriptors handed to this process at fd 3 on (`sd_listen_fds_with_names`), with
/// their names; the variables are removed so that children do not see them. Empty unless
/// `LISTEN_PID` is this process.
pub fn take_listen_fds() -> Vec<(String, OwnedFd)> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_LISTEN_FDS);
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|names| names.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    // At startup, before any other thread exists (the caller's contract).
    for variable in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(variable);
    }
    if !for_us {
        return Vec::new();
    }
    (0..count)
        .filter_map(|i| {
            let fd = LISTEN_FDS_START + i as RawFd;
            let name = names.get(i).cloned().unwrap_or_else(|| "unknown".into());
            adopt_fd(fd).map(|fd| (name, fd))
        })
        .collect()
}

/// Owns descriptor `fd` handed over by a previous process, made close-on-exec.
pub fn adopt_fd(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD and F_SETFD on a plain number; a closed number just fails.
    let open = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == 0;
    // SAFETY: the number was handed to this process for it to own (LISTEN_FDS or a
    // handover), and is open.
    open.then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}
