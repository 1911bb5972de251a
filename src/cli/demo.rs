//! `ston-fs demo`: a built-in sample origin on loopback, mounted with a throwaway cache, so
//! ston-fs can be tried with no configuration and no network.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};

use crate::config::Config;
use crate::service::daemon::Readiness;
use crate::service::{mount, mountinfo};

const LARGE_FILE_SIZE: u64 = 256 << 20;
const CHUNK: u64 = 256 << 10;

/// The body of a sample file: literal text, or a large generated file.
enum Content {
    Text(&'static str),
    Generated(u64),
}

impl Content {
    fn len(&self) -> u64 {
        match self {
            Content::Text(text) => text.len() as u64,
            Content::Generated(len) => *len,
        }
    }
}

const README: &str = "This file comes from ston-fs's built-in demo origin.\n\
Read it twice: the first read fetched it over HTTP, the second came from the local cache.\n";

fn sample_files() -> Vec<(&'static str, Content)> {
    vec![
        ("/README.txt", Content::Text(README)),
        (
            "/hello.txt",
            Content::Text("Hello from the ston-fs demo origin!\n"),
        ),
        ("/media/large.bin", Content::Generated(LARGE_FILE_SIZE)),
        (
            "/media/clip.json",
            Content::Text("{\"title\": \"demo clip\", \"seconds\": 60}\n"),
        ),
        (
            "/docs/guide.txt",
            Content::Text("Files are fetched block by block, with HTTP Range requests.\n"),
        ),
        (
            "/docs/naïve café notes.txt",
            Content::Text("Names with spaces and unicode work too.\n"),
        ),
    ]
}

/// Deterministic bytes for the large file: byte `offset` depends only on its position.
fn generated_bytes(offset: u64, len: u64) -> Bytes {
    let mut out = Vec::with_capacity(len as usize);
    let mut position = offset;
    while position < offset + len {
        let word = splitmix64(position / 8).to_le_bytes();
        let skip = (position % 8) as usize;
        let take = (8 - skip).min((offset + len - position) as usize);
        out.extend_from_slice(&word[skip..skip + take]);
        position += take as u64;
    }
    Bytes::from(out)
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

type Body = BoxBody<Bytes, Infallible>;

struct DemoOrigin {
    files: Vec<(&'static str, Content)>,
    last_modified: String,
}

impl DemoOrigin {
    fn respond(&self, request: &Request<Incoming>) -> Response<Body> {
        let decoded =
            percent_encoding::percent_decode_str(request.uri().path()).decode_utf8_lossy();
        let path = decoded.as_ref();
        if let Some((_, content)) = self.files.iter().find(|(name, _)| *name == path) {
            return self.file_response(request, content);
        }
        let as_dir = format!("{}/", path.trim_end_matches('/'));
        let is_dir = path == "/" || self.files.iter().any(|(name, _)| name.starts_with(&as_dir));
        match (is_dir, path.ends_with('/')) {
            (true, false) => simple(StatusCode::MOVED_PERMANENTLY, Some(&as_dir)),
            (true, true) => self.listing(path),
            _ => simple(StatusCode::NOT_FOUND, None),
        }
    }

    /// A directory index in nginx's `autoindex_format json`, so `ls` works on the demo mount.
    fn listing(&self, dir: &str) -> Response<Body> {
        let mut entries = std::collections::BTreeMap::new();
        for (name, content) in &self.files {
            let Some(rest) = name.strip_prefix(dir) else {
                continue;
            };
            let entry = match rest.split_once('/') {
                Some((child, _)) => (
                    child.to_string(),
                    serde_json::json!({"name": child, "type": "directory", "mtime": self.last_modified}),
                ),
                None => (
                    rest.to_string(),
                    serde_json::json!({"name": rest, "type": "file", "mtime": self.last_modified, "size": content.len()}),
                ),
            };
            entries.insert(entry.0, entry.1);
        }
        let body = serde_json::Value::Array(entries.into_values().collect()).to_string();
        let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
        if let Ok(value) = "application/json".parse() {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    }

    fn file_response(&self, request: &Request<Incoming>, content: &Content) -> Response<Body> {
        let size = content.len();
        let range = request
            .headers()
            .get(hyper::header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_range(v, size));
        let (status, start, end) = match range {
            Some(Ok((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end),
            Some(Err(())) => {
                let mut response = simple(StatusCode::RANGE_NOT_SATISFIABLE, None);
                if let Ok(value) = format!("bytes */{size}").parse() {
                    response
                        .headers_mut()
                        .insert(hyper::header::CONTENT_RANGE, value);
                }
                return response;
            }
            None => (StatusCode::OK, 0, size),
        };
        let mut builder = Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_LENGTH, end - start)
            .header(hyper::header::ETAG, format!("\"demo-{size}\""))
            .header(hyper::header::LAST_MODIFIED, &self.last_modified);
        if status == StatusCode::PARTIAL_CONTENT {
            builder = builder.header(
                hyper::header::CONTENT_RANGE,
                format!("bytes {start}-{}/{size}", end - 1),
            );
        }
        let body = match content {
            Content::Text(text) => Full::new(Bytes::from_static(
                &text.as_bytes()[start as usize..end as usize],
            ))
            .boxed(),
            Content::Generated(_) => generated_body(start, end),
        };
        builder
            .body(body)
            .unwrap_or_else(|_| simple(StatusCode::INTERNAL_SERVER_ERROR, None))
    }
}

/// Streams generated bytes in chunks, so even a whole-file GET holds little memory.
fn generated_body(start: u64, end: u64) -> Body {
    let stream = futures_util::stream::unfold(start, move |position| async move {
        (position < end).then(|| {
            let len = CHUNK.min(end - position);
            (
                Ok::<_, Infallible>(Frame::data(generated_bytes(position, len))),
                position + len,
            )
        })
    });
    StreamBody::new(stream).boxed()
}

fn simple(status: StatusCode, location: Option<&str>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    *response.status_mut() = status;
    if let Some(value) = location.and_then(|l| l.parse().ok()) {
        response
            .headers_mut()
            .insert(hyper::header::LOCATION, value);
    }
    response
}

/// One `bytes=a-b`, `a-` or `-n` range: half-open bounds, or Err if unsatisfiable.
fn parse_range(header: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = header.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (start, end) = match (first.trim(), last.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            (size.saturating_sub(n), size)
        }
        (first, "") => (first.parse().ok()?, size),
        (first, last) => (
            first.parse().ok()?,
            last.parse::<u64>().ok()?.saturating_add(1).min(size),
        ),
    };
    Some(if start < end {
        Ok((start, end))
    } else {
        Err(())
    })
}

/// Starts the sample origin on its own thread; returns its address.
fn start_origin() -> Result<SocketAddr, String> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| format!("cannot listen on loopback: {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let origin = Arc::new(DemoOrigin {
        files: sample_files(),
        last_modified: httpdate::fmt_http_date(SystemTime::now()),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("demo-origin".into())
        .spawn(move || runtime.block_on(serve_origin(listener, origin)))
        .map_err(|e| e.to_string())?;
    Ok(address)
}

async fn serve_origin(listener: std::net::TcpListener, origin: Arc<DemoOrigin>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    while let Ok((stream, _)) = listener.accept().await {
        let origin = origin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = origin.respond(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

pub fn run(mountpoint: &Path) -> ExitCode {
    match run_demo(mountpoint) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ston-fs demo: {e}");
            ExitCode::from(1)
        }
    }
}

fn run_demo(mountpoint: &Path) -> Result<(), String> {
    std::fs::create_dir_all(mountpoint)
        .map_err(|e| format!("cannot create {}: {e}", mountpoint.display()))?;
    let mountpoint = mountpoint.canonicalize().map_err(|e| e.to_string())?;
    if mountinfo::is_mount_point(&mountpoint) {
        return Err(format!(
            "{} is already in use (something is mounted there)",
            mountpoint.display()
        ));
    }
    let address = start_origin()?;
    let mut config = Config::default();
    config
        .set("origin", &format!("http://{address}/"))
        .map_err(|e| e.to_string())?;
    // A new, empty cache each run, so the first read really comes from the origin.
    let cache_dir = std::env::temp_dir().join(format!("ston-fs-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache_dir);
    config.cache_dir = cache_dir.clone();
    config.max_cache_size = 1 << 30;
    // The README promises Apache and nginx workers can read it, as they would in production.
    config.allow_other = true;
    let shown = mountpoint.display().to_string();
    let instructions = move || {
        println!("ston-fs demo: origin http://{address}/ is mounted at {shown}");
        println!("Try, in another terminal:");
        println!("  ls -lR {shown}");
        println!("  cat {shown}/README.txt");
        println!("  ls -l {shown}/media/large.bin \"{shown}/docs/naïve café notes.txt\"");
        println!("  time cat {shown}/media/large.bin > /dev/null    # first read: from the origin");
        println!("  time cat {shown}/media/large.bin > /dev/null    # second read: from the cache");
        println!("Press Ctrl-C here (or run: umount {shown}) to stop.");
    };
    let served = mount::serve(
        config,
        &mountpoint,
        Readiness::Callback(Box::new(instructions)),
        mount::Lifetime::ThisProcess,
    );
    let _ = std::fs::remove_dir_all(&cache_dir);
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_bytes_depend_only_on_position() {
        let whole = generated_bytes(0, 64);
        assert_eq!(generated_bytes(13, 20), whole.slice(13..33));
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 10))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 100))));
        assert_eq!(parse_range("bytes=-5", 100), Some(Ok((95, 100))));
        assert_eq!(parse_range("bytes=0-999", 100), Some(Ok((0, 100))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-0", 0), Some(Err(())));
    }
}
