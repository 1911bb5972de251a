//! The supervisor: for mounts made without systemd (a plain command, an fstab line, mount(8)),
//! a small process of the same binary holds the mount's descriptors and starts the worker
//! that serves the mount again when it dies (a crash, `kill -9`, the OOM killer).
//!
//! It speaks systemd's protocol to the worker (a notification socket, FDSTORE, LISTEN_FDS;
//! see `fdstore`), so the worker has one protocol to speak whoever holds its descriptors. It
//! is single-threaded, starts no runtime, and never sees a request of the mount: it waits for
//! notifications, signals and its child, nothing else.
//!
//! Exit: when the worker exits 0 (the mount was unmounted), when asked to stop (SIGTERM,
//! SIGINT, SIGHUP: passed to the worker, which unmounts), when the mount's descriptor is gone,
//! or when workers keep dying before the mount was ever live. Once it is live, it never gives
//! the mount up: a crash loop only makes it wait longer between starts (up to
//! `CRASH_LOOP_BACKOFF`), with an ERROR line for each death.

use std::collections::VecDeque;
use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::daemon::READY_FD_ENV;
use super::fdstore::{self, LISTEN_FDS_START, SUPERVISOR_ENV};
use super::handover::{FUSE_FD_NAME, HANDOVER_ENV};
use super::holder::{self, Adoption, ADOPT_ENV};
use super::mount::unmount;

/// Most descriptors the supervisor keeps for its worker (systemd's FileDescriptorStoreMax).
pub const STORE_MAX: usize = 16;
/// Restarts within `RESTART_WINDOW` that make a crash loop: the mount is then kept, but
/// the next start waits `CRASH_LOOP_BACKOFF` (before the mount was live: the start fails).
const MAX_RESTARTS: usize = 10;
const CRASH_LOOP_BACKOFF: Duration = Duration::from_secs(30);
const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// A worker that dies sooner than this after it started makes the next start wait.
const QUICK_DEATH: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the supervisor starts.
pub struct Plan {
    /// The binary, as installed.
    pub exe: PathBuf,
    /// The worker's arguments (after argv[0]).
    pub args: Vec<OsString>,
    /// Where the command was started, so relative arguments mean the same to every worker.
    pub launch_dir: PathBuf,
    pub mountpoint: PathBuf,
}

struct Worker {
    pid: libc::pid_t,
    started: Instant,
    /// A worker adopted from a dead supervisor is not our child: its exit is seen here.
    adopted: Option<OwnedFd>,
}

struct Supervisor {
    plan: Plan,
    socket: UnixDatagram,
    socket_name: String,
    signals: OwnedFd,
    original_mask: libc::sigset_t,
    store: Vec<(String, OwnedFd)>,
    worker: Option<Worker>,
    /// Until the first worker says READY=1: the launcher's pipe.
    readiness: Option<File>,
    restarts: VecDeque<Instant>,
    quick_deaths: u32,
    restart_at: Option<Instant>,
    stopping: bool,
}

/// Runs the supervisor until the mount is gone; returns the process's exit code.
/// Must be called while the process is single-threaded.
/// `readiness` is the pipe the launcher waits on for "ready" (or an error).
pub fn run(plan: Plan, readiness: File) -> i32 {
    let mut supervisor = match Supervisor::new(plan, Some(readiness), None) {
        Ok(supervisor) => supervisor,
        Err(e) => return fail_early(e),
    };
    if let Err(e) = supervisor.spawn() {
        let why = format!("cannot start the mount process: {e}");
        supervisor.report_failure(&why);
        return 1;
    }
    supervisor.serve()
}

/// Runs a supervisor started by a worker whose supervisor died (see `holder`): it holds
/// `stored` for the running worker, and starts the next worker when that one dies.
pub fn adopt(adoption: Adoption, stored: Vec<(String, OwnedFd)>) -> i32 {
    let plan = Plan {
        exe: super::upgrade::installed_exe(),
        args: adoption.args,
        launch_dir: adoption.launch_dir,
        mountpoint: adoption.mountpoint,
    };
    let mut supervisor = match Supervisor::new(plan, None, Some(adoption.socket)) {
        Ok(supervisor) => supervisor,
        Err(e) => return fail_early(e),
    };
    supervisor.store = stored;
    match holder::pidfd_open(adoption.worker) {
        Ok(pidfd) => {
            supervisor.worker = Some(Worker {
                pid: adoption.worker as libc::pid_t,
                started: Instant::now(),
                adopted: Some(pidfd),
            })
        }
        // Gone already: start the next one at once.
        Err(_) => supervisor.restart_at = Some(Instant::now()),
    }
    tracing::info!(
        worker = adoption.worker,
        descriptors = supervisor.store.len(),
        "supervisor: took over the mount's descriptors from a dead supervisor"
    );
    supervisor.serve()
}

fn fail_early(error: std::io::Error) -> i32 {
    tracing::error!("the supervisor cannot start: {error}");
    1
}

impl Supervisor {
    fn new(
        plan: Plan,
        readiness: Option<File>,
        socket_name: Option<String>,
    ) -> std::io::Result<Supervisor> {
        let (signals, original_mask) = block_signals()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let socket_name = socket_name
            .unwrap_or_else(|| format!("ston-fs-supervisor-{}-{nanos}", std::process::id()));
        let address = {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(socket_name.as_bytes())?
        };
        let socket = UnixDatagram::bind_addr(&address)?;
        socket.set_nonblocking(true)?;
        // The kernel then attaches each sender's real pid: only the worker is listened to.
        set_passcred(&socket)?;
        Ok(Supervisor {
            plan,
            socket,
            socket_name,
            signals,
            original_mask,
            store: Vec::new(),
            worker: None,
            readiness,
            restarts: VecDeque::new(),
            quick_deaths: 0,
            restart_at: None,
            stopping: false,
        })
    }

    fn serve(&mut self) -> i32 {
        loop {
            let timeout = self.restart_at.map(|at| {
                let left = at.saturating_duration_since(Instant::now());
                left.as_millis().min(60_000) as i32
            });
            let adopted = self.worker.as_ref().and_then(|w| w.adopted.as_ref());
            let mut polled = vec![
                pollfd(self.socket.as_raw_fd(), libc::POLLIN),
                pollfd(self.signals.as_raw_fd(), libc::POLLIN),
                // An adopted worker's pidfd (or nothing: a negative fd is skipped).
                pollfd(adopted.map_or(-1, |fd| fd.as_raw_fd()), libc::POLLIN),
            ];
            // Events 0: only errors and hang-ups, which end a connection or a stored fd.
            polled.extend(self.store.iter().map(|(_, fd)| pollfd(fd.as_raw_fd(), 0)));
            // SAFETY: `polled` is a valid array of pollfd for the duration of the call.
            let ready = unsafe {
                libc::poll(
                    polled.as_mut_ptr(),
                    polled.len() as libc::nfds_t,
                    timeout.unwrap_or(-1),
                )
            };
            if ready < 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!("supervisor: poll failed: {error}");
                    return 1;
                }
                continue;
            }
            if polled[0].revents & libc::POLLIN != 0 {
                self.read_notifications();
            }
            if polled[1].revents & libc::POLLIN != 0 {
                if let Some(code) = self.handle_signals() {
                    return code;
                }
            }
            if polled[2].revents & libc::POLLIN != 0 {
                if let Some(code) = self.adopted_worker_ended() {
                    return code;
                }
            }
            self.drop_broken(&polled[3..]);
            if let Some(code) = self.restart_if_due() {
                return code;
            }
        }
    }

    fn read_notifications(&mut self) {
        for _ in 0..64 {
            let received = match fdstore::recv_with_fds(self.socket.as_raw_fd()) {
                Ok(Some(received)) => received,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!("supervisor: notification socket: {e}");
                    return;
                }
            };
            let from_worker = self.worker.as_ref().map(|w| w.pid as u32);
            if received.sender.is_none() || received.sender != from_worker {
                tracing::debug!(sender = ?received.sender, "supervisor: ignored a notification from another process");
                continue;
            }
            self.handle_notification(&received.text, received.fds);
        }
    }

    fn handle_notification(&mut self, text: &str, fds: Vec<OwnedFd>) {
        let mut name = "stored".to_string();
        let (mut store, mut remove, mut ready) = (false, false, false);
        for line in text.lines() {
            match line.split_once('=') {
                Some(("FDSTORE", "1")) => store = true,
                Some(("FDSTOREREMOVE", "1")) => remove = true,
                Some(("FDNAME", value)) => name = value.to_string(),
                Some(("READY", "1")) => ready = true,
                _ => {}
            }
        }
        let name_ok = !name.is_empty()
            && name.len() <= 255
            && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if remove && name_ok {
            self.store.retain(|(stored, _)| *stored != name);
        }
        if store && name_ok {
            for fd in fds {
                if self.store.len() >= STORE_MAX {
                    tracing::warn!("supervisor: the descriptor store is full; {name} refused");
                    break;
                }
                self.store.push((name.clone(), fd));
            }
        }
        if ready {
            if let Some(mut pipe) = self.readiness.take() {
                // The first worker tells the launcher itself; a restarted one cannot.
                let _ = pipe.write_all(b"ready\n");
            }
            self.quick_deaths = 0;
        }
    }

    /// Returns the exit code once the supervisor should end.
    fn handle_signals(&mut self) -> Option<i32> {
        loop {
            // SAFETY: an all-zero signalfd_siginfo is a valid buffer for read to fill.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: reads at most `size` bytes into `info`.
            let n = unsafe {
                libc::read(
                    self.signals.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            };
            if n != size as isize {
                return None;
            }
            let signal = info.ssi_signo as libc::c_int;
            match signal {
                libc::SIGCHLD => {
                    if let Some(code) = self.reap() {
                        return Some(code);
                    }
                }
                libc::SIGUSR2 => self.forward(signal),
                _ => {
                    tracing::info!(signal, "supervisor: stopping on signal");
                    self.stopping = true;
                    self.restart_at = None;
                    if self.worker.is_some() {
                        self.forward(signal);
                    } else {
                        unmount(&self.plan.mountpoint);
                        return Some(0);
                    }
                }
            }
        }
    }

    fn forward(&self, signal: libc::c_int) {
        if let Some(worker) = &self.worker {
            // SAFETY: kill with a pid of our own child and a valid signal number.
            unsafe { libc::kill(worker.pid, signal) };
        }
    }

    /// An adopted worker (not our child, so its status is unknown) ended: as after a crash,
    /// unless we were stopping or the mount is gone. `Some(code)`: exit.
    fn adopted_worker_ended(&mut self) -> Option<i32> {
        let worker = self.worker.take()?;
        if self.stopping {
            tracing::info!(
                pid = worker.pid,
                "supervisor: the mount process ended; stopping"
            );
            return Some(0);
        }
        self.schedule_restart(worker.pid, "ended", worker.started.elapsed())
    }

    /// Reaps the worker if it exited; decides what comes next. `Some(code)`: exit.
    fn reap(&mut self) -> Option<i32> {
        let worker = self.worker.as_ref()?;
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let reaped = unsafe { libc::waitpid(worker.pid, &mut status, libc::WNOHANG) };
        if reaped != worker.pid {
            return None;
        }
        let lived = worker.started.elapsed();
        let pid = worker.pid;
        self.worker = None;
        let how = describe_exit(status);
        let clean = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        if clean || self.stopping {
            tracing::info!(pid, "supervisor: the mount process {how}; stopping");
            return Some(match libc::WIFEXITED(status) {
                true => libc::WEXITSTATUS(status),
                false => 0,
            });
        }
        if !self.store.iter().any(|(name, _)| name == FUSE_FD_NAME) {
            let why = format!("the mount process {how}, and the mount went with it");
            tracing::error!(pid, "supervisor: {why}");
            self.report_failure(&why);
            return Some(1);
        }
        self.schedule_restart(pid, &how, lived)
    }

    /// After a crash: a new worker soon (at once, unless workers keep dying before they are
    /// ready). `Some(code)`: exit, only while the mount was never live.
    fn schedule_restart(&mut self, pid: libc::pid_t, how: &str, lived: Duration) -> Option<i32> {
        let now = Instant::now();
        while self
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            self.restarts.pop_front();
        }
        let crash_loop = self.restarts.len() >= MAX_RESTARTS;
        if crash_loop && self.readiness.is_some() {
            let why = format!(
                "the mount process {how}; {MAX_RESTARTS} starts within {}s and the mount \
                 never came up: giving up",
                RESTART_WINDOW.as_secs()
            );
            tracing::error!(pid, "supervisor: {why}");
            self.report_failure(&why);
            return Some(1);
        }
        if crash_loop {
            tracing::error!(
                pid,
                "supervisor: the mount process {how}; {} restarts within {}s: the next in {}s \
                 (the mount is kept; readers wait)",
                self.restarts.len(),
                RESTART_WINDOW.as_secs(),
                CRASH_LOOP_BACKOFF.as_secs()
            );
            self.restart_at = Some(now + CRASH_LOOP_BACKOFF);
            return None;
        }
        self.quick_deaths = match lived < QUICK_DEATH {
            true => self.quick_deaths + 1,
            false => 0,
        };
        let backoff = match self.quick_deaths {
            0 | 1 => Duration::ZERO,
            n => (Duration::from_millis(100) * 2u32.pow(n.min(8) - 2)).min(MAX_BACKOFF),
        };
        tracing::warn!(
            pid,
            "supervisor: the mount process {how}; starting another, which takes the mount over"
        );
        self.restart_at = Some(now + backoff);
        None
    }

    fn restart_if_due(&mut self) -> Option<i32> {
        let at = self.restart_at?;
        if Instant::now() < at || self.worker.is_some() {
            return None;
        }
        self.restart_at = None;
        if !self.store.iter().any(|(name, _)| name == FUSE_FD_NAME) {
            // Unmounted (or aborted) while no process served it: nothing to take over, and
            // mounting again would undo the unmount.
            tracing::info!("supervisor: the mount is gone; stopping");
            return Some(0);
        }
        self.restarts.push_back(Instant::now());
        if let Err(e) = self.spawn() {
            // Out of processes or memory for a moment: the mount is still held, so try again.
            tracing::error!(
                "supervisor: cannot start the mount process again ({e}); next try in {}s",
                MAX_BACKOFF.as_secs()
            );
            self.restart_at = Some(Instant::now() + MAX_BACKOFF);
        }
        None
    }

    /// Stored descriptors that report an error are dropped, as systemd does: for
    /// `/dev/fuse`, the connection is gone (unmounted or aborted).
    fn drop_broken(&mut self, polled: &[libc::pollfd]) {
        let broken: Vec<RawFd> = polled
            .iter()
            .filter(|p| p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0)
            .map(|p| p.fd)
            .collect();
        if !broken.is_empty() {
            self.store
                .retain(|(_, fd)| !broken.contains(&fd.as_raw_fd()));
        }
    }

    /// Tells the launcher why the mount failed, if it still waits.
    fn report_failure(&mut self, why: &str) {
        if let Some(mut pipe) = self.readiness.take() {
            let _ = pipe.write_all(format!("error: {why}\n").as_bytes());
        }
    }

    /// Starts a worker with the stored descriptors at fd 3 on, and the launcher's pipe
    /// after them for the first one.
    fn spawn(&mut self) -> std::io::Result<()> {
        let first = self.worker.is_none() && self.restarts.is_empty();
        let pipe = match (first, &self.readiness) {
            (true, Some(pipe)) => Some(pipe.as_raw_fd()),
            _ => None,
        };
        let launch = Launch::prepare(self, pipe)?;
        // SAFETY: the supervisor is single-threaded; the child only makes async-signal-safe
        // calls on memory prepared before the fork, then execs or exits.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => Err(std::io::Error::last_os_error()),
            0 => launch.exec_in_child(),
            pid => {
                tracing::info!(
                    pid,
                    descriptors = self.store.len(),
                    "supervisor: started the mount process"
                );
                self.worker = Some(Worker {
                    pid,
                    started: Instant::now(),
                    adopted: None,
                });
                Ok(())
            }
        }
    }
}

/// Everything the child needs, built before the fork (the child must not allocate).
struct Launch {
    exe: CString,
    /// Owners of the strings the pointer arrays point into.
    _strings: Vec<CString>,
    /// `LISTEN_PID=` followed by room for the child's pid, filled in the child.
    listen_pid: Vec<u8>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    dir: CString,
    fds: Vec<RawFd>,
    mask: libc::sigset_t,
}

impl Launch {
    fn prepare(supervisor: &Supervisor, pipe: Option<RawFd>) -> std::io::Result<Launch> {
        let cstring = |bytes: &[u8]| {
            CString::new(bytes).map_err(|_| std::io::Error::other("NUL byte in an argument"))
        };
        let plan = &supervisor.plan;
        let exe = cstring(plan.exe.as_os_str().as_bytes())?;
        let mut args = vec![exe.clone()];
        for arg in &plan.args {
            args.push(cstring(arg.as_bytes())?);
        }
        let mut env = inherited_env()?;
        let mut fds: Vec<RawFd> = supervisor
            .store
            .iter()
            .map(|(_, fd)| fd.as_raw_fd())
            .collect();
        let stored = fds.len();
        env.push(cstring(
            format!("NOTIFY_SOCKET=@{}", supervisor.socket_name).as_bytes(),
        )?);
        env.push(cstring(
            format!("{SUPERVISOR_ENV}={}", std::process::id()).as_bytes(),
        )?);
        env.push(cstring(format!("FDSTORE={STORE_MAX}").as_bytes())?);
        if stored > 0 {
            let names: Vec<&str> = supervisor.store.iter().map(|(n, _)| n.as_str()).collect();
            env.push(cstring(format!("LISTEN_FDS={stored}").as_bytes())?);
            env.push(cstring(
                format!("LISTEN_FDNAMES={}", names.join(":")).as_bytes(),
            )?);
        }
        if let Some(pipe) = pipe {
            let at = LISTEN_FDS_START + stored as RawFd;
            env.push(cstring(format!("{READY_FD_ENV}={at}").as_bytes())?);
            fds.push(pipe);
        }
        let mut listen_pid = b"LISTEN_PID=".to_vec();
        listen_pid.resize(listen_pid.len() + 21, 0);
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        if stored > 0 {
            envp.push(listen_pid.as_ptr().cast());
        }
        envp.push(std::ptr::null());
        args.extend(env);
        Ok(Launch {
            exe,
            _strings: args,
            listen_pid,
            argv,
            envp,
            dir: cstring(plan.launch_dir.as_os_str().as_bytes())?,
            fds,
            mask: supervisor.original_mask,
        })
    }

    /// In the forked child: descriptors to 3.., the pid into LISTEN_PID, the launch
    /// directory, the signal mask as it was, then exec. Never returns.
    fn exec_in_child(mut self) -> ! {
        let count = self.fds.len().min(STORE_MAX + 1);
        let prefix = b"LISTEN_PID=".len();
        // SAFETY: only async-signal-safe calls (fcntl, dup2, close, getpid, chdir,
        // sigprocmask, execve, _exit) on memory prepared before the fork; nothing allocates.
        unsafe {
            let mut moved = [-1 as RawFd; STORE_MAX + 1];
            let above = LISTEN_FDS_START + count as RawFd;
            for (slot, fd) in moved.iter_mut().zip(&self.fds) {
                *slot = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, above);
            }
            for (i, fd) in moved.iter().enumerate().take(count) {
                // dup2 clears close-on-exec on the new number.
                libc::dup2(*fd, LISTEN_FDS_START + i as RawFd);
                libc::close(*fd);
            }
            write_decimal(&mut self.listen_pid[prefix..], libc::getpid() as u64);
            if libc::chdir(self.dir.as_ptr()) != 0 {
                libc::chdir(c"/".as_ptr());
            }
            libc::sigprocmask(libc::SIG_SETMASK, &self.mask, std::ptr::null_mut());
            libc::execve(self.exe.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr());
            libc::_exit(127);
        }
    }
}

/// This process's environment without the variables the supervisor sets for its worker.
fn inherited_env() -> std::io::Result<Vec<CString>> {
    let ours = [
        "NOTIFY_SOCKET",
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "FDSTORE",
        SUPERVISOR_ENV,
        READY_FD_ENV,
        HANDOVER_ENV,
        ADOPT_ENV,
    ];
    let mut env = Vec::new();
    for (key, value) in std::env::vars_os() {
        if ours.iter().any(|k| key.as_bytes() == k.as_bytes()) {
            continue;
        }
        let mut entry = key.as_bytes().to_vec();
        entry.push(b'=');
        entry.extend_from_slice(value.as_bytes());
        let entry = CString::new(entry)
            .map_err(|_| std::io::Error::other("NUL byte in the environment"))?;
        env.push(entry);
    }
    Ok(env)
}

/// Writes `value` in decimal, NUL-terminated, into `out` (without allocating).
fn write_decimal(out: &mut [u8], mut value: u64) {
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (value % 10) as u8;
        n += 1;
        value /= 10;
        if value == 0 || n == digits.len() {
            break;
        }
    }
    for i in 0..n.min(out.len().saturating_sub(1)) {
        out[i] = digits[n - 1 - i];
    }
    if let Some(end) = out.get_mut(n) {
        *end = 0;
    }
}

fn describe_exit(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with code {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("was killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("ended (status {status})")
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn set_passcred(socket: &UnixDatagram) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a pointer to a live int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Blocks the signals the supervisor handles and returns a signalfd for them, with the
/// mask as it was (restored in each worker).
fn block_signals() -> std::io::Result<(OwnedFd, libc::sigset_t)> {
    // SAFETY: sigset operations on local sets; sigprocmask and signalfd with valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [
            libc::SIGCHLD,
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGUSR2,
        ] {
            libc::sigaddset(&mut set, signal);
        }
        let mut original: libc::sigset_t = std::mem::zeroed();
        if libc::sigprocmask(libc::SIG_BLOCK, &set, &mut original) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((OwnedFd::from_raw_fd(fd), original))
    }
}
