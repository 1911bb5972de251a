//! Logging to syslog (and so to the journal) for a daemon that has no `log_file`.
//!
//! A small client of the `/dev/log` datagram socket rather than libc's `syslog(3)`: it
//! needs no global state, survives the fork into the background, and its socket path can
//! be pointed elsewhere (`STON_FS_SYSLOG_SOCKET`) so tests can read what it sends.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Where log lines go: the system's syslog socket.
pub struct Syslog {
    socket: Option<UnixDatagram>,
    path: PathBuf,
}

/// The syslog socket: `/dev/log`, or `STON_FS_SYSLOG_SOCKET` (tests).
pub fn socket_path() -> PathBuf {
    std::env::var_os("STON_FS_SYSLOG_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/log"))
}

/// Whether a syslog daemon (or journald) listens: without one, lines sent there vanish.
pub fn is_listening() -> bool {
    UnixDatagram::unbound().is_ok_and(|socket| socket.connect(socket_path()).is_ok())
}

impl Syslog {
    pub fn new() -> Syslog {
        let path = socket_path();
        Syslog {
            socket: UnixDatagram::unbound().ok(),
            path,
        }
    }

    fn send(&self, severity: u8, message: &[u8]) {
        const DAEMON_FACILITY: u8 = 3;
        let Some(socket) = &self.socket else { return };
        let text = String::from_utf8_lossy(message);
        let line = format!(
            "<{}>ston-fs[{}]: {}",
            DAEMON_FACILITY * 8 + severity,
            std::process::id(),
            text.trim_end()
        );
        // Nobody listening (no syslog daemon) is not an error worth more than the line.
        let _ = socket.send_to(line.as_bytes(), &self.path);
    }
}

impl Default for Syslog {
    fn default() -> Self {
        Syslog::new()
    }
}

/// One log line being formatted; sent when the formatter is done with it.
pub struct SyslogLine<'a> {
    target: &'a Syslog,
    severity: u8,
    buffer: Vec<u8>,
}

impl Write for SyslogLine<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine<'_> {
    fn drop(&mut self) {
        if !self.buffer.is_empty() {
            self.target.send(self.severity, &self.buffer);
        }
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine<'a>;

    fn make_writer(&'a self) -> SyslogLine<'a> {
        self.line(6)
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> SyslogLine<'a> {
        let severity = match *meta.level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        self.line(severity)
    }
}

impl Syslog {
    fn line(&self, severity: u8) -> SyslogLine<'_> {
        SyslogLine {
            target: self,
            severity,
            buffer: Vec::new(),
        }
    }
}
