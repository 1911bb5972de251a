//! Control socket: `ston-fs purge|expire|hardpurge PATH...` talks to a live mount through a
//! Unix socket under the cache dir, one JSON line each way.
//!
//! The command finds the socket from the mount itself (an xattr on the mount root), so it
//! needs nothing but a path on the mount.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use super::mountinfo::ston_fs_mount_of;
use super::upgrade::{DaemonStatus, Upgrade};
use crate::base::stats::Snapshot;
use crate::base::Invalidation;
use crate::cache::Cache;
use crate::fuse::SOCKET_XATTR;
/// Longest request line the daemon reads.
const MAX_REQUEST: usize = 1 << 20;

/// What a request asks the daemon to do.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Purge,
    Expire,
    Hardpurge,
    Stats,
    /// Who serves the mount: pid, binary, incarnation.
    Status,
    /// Exec the installed binary in place, keeping the mount (`ston-fs restart`).
    Restart,
}

impl From<Invalidation> for Op {
    fn from(action: Invalidation) -> Op {
        match action {
            Invalidation::Purge => Op::Purge,
            Invalidation::Expire => Op::Expire,
            Invalidation::Hardpurge => Op::Hardpurge,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub op: Op,
    /// Paths relative to the mount root; a trailing `/*` covers a subtree.
    #[serde(default)]
    pub paths: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub objects: u64,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Snapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<DaemonStatus>,
}

/// Where a daemon with this cache dir listens; `None` if the path is too long for a socket.
pub fn socket_path(cache_dir: &Path) -> Option<PathBuf> {
    let path = cache_dir.join(format!("control.{}.sock", std::process::id()));
    (path.as_os_str().len() < 100).then_some(path)
}

/// Removes control sockets left behind by daemons that died (`kill -9`, a crash): a socket
/// nobody accepts on is stale. A live daemon sharing the cache dir keeps its own.
pub fn remove_stale_sockets(cache_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(cache_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("control.") && name.ends_with(".sock")) {
            continue;
        }
        let refused = UnixStream::connect(entry.path()).is_err_and(|e| {
            matches!(
                e.raw_os_error(),
                Some(libc::ECONNREFUSED | libc::ENOENT | libc::ENOTSOCK)
            )
        });
        if refused {
            tracing::info!(socket = %entry.path().display(), "removing a dead daemon's control socket");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Serves control requests until the runtime stops. Runs on the mount's I/O runtime.
pub fn serve(cache: Arc<Cache>, path: PathBuf, upgrade: Arc<Upgrade>) {
    if let Some(dir) = path.parent() {
        remove_stale_sockets(dir);
    }
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!(path = %path.display(), "no control socket: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            let Some(stream) = accept_or_back_off(listener.accept().await, "control socket").await
            else {
                continue;
            };
            let cache = cache.clone();
            let upgrade = upgrade.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(&cache, &upgrade, stream).await {
                    tracing::debug!("control connection: {e}");
                }
            });
        }
    });
}

/// The accepted connection; or, after a failed accept (EMFILE, ENFILE, ENOMEM), a pause
/// and `None`. A listener must outlive such a spell: with it gone, `purge`, `stats` and
/// `restart` would be refused until the process died.
pub async fn accept_or_back_off<S, A>(
    accepted: std::io::Result<(S, A)>,
    listener: &'static str,
) -> Option<S> {
    const PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
    match accepted {
        Ok((stream, _)) => Some(stream),
        Err(e) => {
            tracing::warn!("{listener}: cannot accept a connection ({e}); trying again");
            tokio::time::sleep(PAUSE).await;
            None
        }
    }
}

async fn answer(
    cache: &Cache,
    upgrade: &Arc<Upgrade>,
    stream: tokio::net::UnixStream,
) -> std::io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(reader).take(MAX_REQUEST as u64);
    reader.read_line(&mut line).await?;
    let request = serde_json::from_str::<Request>(&line);
    let response = match &request {
        Ok(request) => execute(cache, upgrade, request),
        Err(e) => Response {
            error: Some(format!("bad request: {e}")),
            ..Response::default()
        },
    };
    let mut text = serde_json::to_string(&response).map_err(std::io::Error::other)?;
    text.push('\n');
    writer.write_all(text.as_bytes()).await?;
    writer.shutdown().await?;
    let restart = matches!(
        request,
        Ok(Request {
            op: Op::Restart,
            ..
        })
    ) && response.ok;
    if restart {
        // The answer is out; the exec replaces this process (or fails and is reported).
        let upgrade = upgrade.clone();
        tokio::task::spawn_blocking(move || upgrade.run());
    }
    Ok(())
}

fn execute(cache: &Cache, upgrade: &Upgrade, request: &Request) -> Response {
    let mut response = Response {
        ok: true,
        daemon: Some(upgrade.status()),
        ..Response::default()
    };
    let action = match request.op {
        Op::Stats => {
            response.stats = Some(cache.snapshot());
            return response;
        }
        Op::Status => return response,
        Op::Restart => {
            if let Err(why) = upgrade.check() {
                response.ok = false;
                response.error = Some(why);
            }
            return response;
        }
        Op::Purge => Invalidation::Purge,
        Op::Expire => Invalidation::Expire,
        Op::Hardpurge => Invalidation::Hardpurge,
    };
    for path in &request.paths {
        match cache.split_mount_path(path) {
            Some((site, site_path)) => {
                let report = cache.invalidate(site, &site_path, action);
                response.objects += report.objects;
                response.bytes += report.bytes;
            }
            None => {
                response.ok = false;
                response.error = Some(format!("{path}: not a path of this mount"));
            }
        }
    }
    response
}

/// The client side: sends one request for `paths` (absolute paths on one mount).
pub fn request(op: Op, paths: &[PathBuf]) -> Result<Response, String> {
    let first = paths
        .first()
        .ok_or("give at least one PATH on a ston-fs mount")?;
    let mountpoint =
        mount_of(first).ok_or_else(|| format!("{} is not on a ston-fs mount", first.display()))?;
    let mut relative = Vec::new();
    for path in paths {
        let absolute = absolute(path);
        let inside = absolute.strip_prefix(&mountpoint).map_err(|_| {
            format!(
                "{} is not on the mount at {}",
                path.display(),
                mountpoint.display()
            )
        })?;
        relative.push(format!("/{}", inside.to_string_lossy()));
    }
    let socket = read_socket_xattr(&mountpoint)?;
    let mut stream = UnixStream::connect(&socket)
        .map_err(|e| format!("cannot reach the daemon at {}: {e}", socket.display()))?;
    let mut line = serde_json::to_string(&Request {
        op,
        paths: relative,
    })
    .map_err(|e| e.to_string())?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&answer).map_err(|e| format!("bad answer from the daemon: {e}"))
}

/// Absolute form of a path without resolving its last component (it may be a pattern).
fn absolute(path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    match (
        joined.parent().and_then(|p| p.canonicalize().ok()),
        joined.file_name(),
    ) {
        (Some(parent), Some(name)) => parent.join(name),
        _ => joined,
    }
}

/// The ston-fs mount that contains `path`: the longest matching mount point.
pub fn mount_of(path: &Path) -> Option<PathBuf> {
    ston_fs_mount_of(&absolute(path))
}

fn read_socket_xattr(mountpoint: &Path) -> Result<PathBuf, String> {
    use std::os::unix::ffi::OsStrExt;
    let c_path =
        std::ffi::CString::new(mountpoint.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let c_name = std::ffi::CString::new(SOCKET_XATTR).map_err(|e| e.to_string())?;
    let mut buffer = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated and the buffer is valid for its length.
    let len = unsafe {
        libc::getxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
        )
    };
    if len < 0 {
        return Err(format!(
            "the mount at {} has no control socket: {}",
            mountpoint.display(),
            std::io::Error::last_os_error()
        ));
    }
    buffer.truncate(len as usize);
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(&buffer)))
}
