//! In-process HTTP/1.1 test origin (hyper 1) for the ston-fs integration tests.
//!
//! The origin runs on its own tokio runtime (its own threads), so test bodies
//! stay plain blocking code. It serves an in-memory map `path -> Bytes` with an
//! ETag and Last-Modified per file, behaves like nginx without autoindex for
//! directories (`/dir` -> 301 to `/dir/`, `/dir/` -> 403), implements single
//! byte ranges, `If-Range`, `If-None-Match` and `If-Modified-Since`, records
//! every request and counts requests and body bytes per path and in total.
//! Fault knobs (ignore Range, stalls, connection close mid-body, forced status)
//! can be attached globally or per path, optionally for a limited number of
//! requests.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use percent_encoding::percent_decode_str;

/// Size of the chunks the response body is streamed in (slices of the file's
/// `Bytes`, never copies).
const CHUNK: usize = 64 * 1024;

type StallFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Last-Modified of the first version of any file; each new version gets a
/// later, distinct second.
const BASE_MTIME: u64 = 1_700_000_000;

// ---------------------------------------------------------------------------
// Deterministic content
// ---------------------------------------------------------------------------

#[inline]
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[inline]
fn pattern_word(seed: u64, index: u64) -> u64 {
    splitmix64(seed.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Deterministic pseudo-random content: `len` bytes for `seed`.
///
/// Word `i` (bytes `8i..8i+8`, little endian) depends only on `(seed, i)`, so
/// `pattern_range` can regenerate any sub-range without the whole file.
pub fn pattern(seed: u64, len: usize) -> Bytes {
    Bytes::from(pattern_range(seed, 0, len))
}

/// Bytes `offset..offset+len` of `pattern(seed, _)` (independent of the
/// total length).
pub fn pattern_range(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut pos = 0usize;
    let mut abs = offset;
    while pos < len {
        let word = pattern_word(seed, abs / 8).to_le_bytes();
        let within = (abs % 8) as usize;
        let n = (8 - within).min(len - pos);
        out[pos..pos + n].copy_from_slice(&word[within..within + n]);
        pos += n;
        abs += n as u64;
    }
    out
}

// ---------------------------------------------------------------------------
// HTTP dates (IMF-fixdate only, which is what we emit)
// ---------------------------------------------------------------------------

const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `secs` since the epoch as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn http_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Parses an IMF-fixdate; `None` for anything else.
pub fn parse_http_date(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let d: u32 = parts[1].parse().ok()?;
    let m = MONTHS.iter().position(|x| *x == parts[2])? as u32 + 1;
    let y: i64 = parts[3].parse().ok()?;
    let hms: Vec<u64> = parts[4]
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<Vec<u64>>>()?;
    if hms.len() != 3 {
        return None;
    }
    let days = days_from_civil(y, m, d);
    if days < 0 {
        return None;
    }
    Some(days as u64 * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2])
}

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// One version of a file served by the origin.
#[derive(Clone, Debug)]
pub struct FileEntry {
    pub data: Bytes,
    /// Quoted strong ETag, e.g. `"v3-1048576"`.
    pub etag: String,
    /// Seconds since the epoch.
    pub mtime: u64,
}

impl FileEntry {
    pub fn last_modified(&self) -> String {
        http_date(self.mtime)
    }
}

/// One request as received by the origin.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub method: String,
    /// The request target exactly as received (origin-form: path and query).
    pub target: String,
    /// Percent-decoded path (without query).
    pub path: String,
    /// Raw query string, if the target had one.
    pub query: Option<String>,
    /// Value of the `Range` header, if any.
    pub range: Option<String>,
    /// All headers (lower-case names), in order received.
    pub headers: Vec<(String, String)>,
    /// Status the origin answered with (decided before any stall).
    pub status: u16,
    /// Sequence number of the TCP connection this request came on.
    pub connection: u64,
}

impl RequestRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The byte interval `[start, end)` this request asks for, for a file of
    /// `len` bytes: the parsed single `Range` (clamped to `len`), or the whole
    /// file if there is no (or no parsable) Range header.
    pub fn requested_span(&self, len: u64) -> (u64, u64) {
        match self.range.as_deref().map(|r| parse_range(r, len)) {
            Some(RangeSpec::Satisfiable(a, b)) => (a, b + 1),
            Some(RangeSpec::Unsatisfiable) => (len, len),
            _ => (0, len),
        }
    }

    /// Whether this request asks for all of `[start, end)` of a file of
    /// `len` bytes.
    pub fn covers(&self, len: u64, start: u64, end: u64) -> bool {
        let (a, b) = self.requested_span(len);
        a <= start && end <= b
    }
}

/// Gate for stall faults: requests stalled on it wait until `release()`.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<GateInner>,
}

struct GateInner {
    tx: tokio::sync::watch::Sender<bool>,
    waiting: AtomicUsize,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    pub fn new() -> Gate {
        let (tx, _rx) = tokio::sync::watch::channel(false);
        Gate {
            inner: Arc::new(GateInner {
                tx,
                waiting: AtomicUsize::new(0),
            }),
        }
    }

    /// Lets every current and future waiter through (until `close`).
    pub fn release(&self) {
        self.inner.tx.send_replace(true);
    }

    /// Makes future waiters block again.
    pub fn close(&self) {
        self.inner.tx.send_replace(false);
    }

    /// Number of responses currently held at this gate.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::SeqCst)
    }

    /// Blocks (bounded by `timeout`) until at least `n` responses are held.
    pub fn wait_for_waiters(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.waiting() < n {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    fn wait(&self) -> StallFuture {
        let inner = self.inner.clone();
        Box::pin(async move {
            let mut rx = inner.tx.subscribe();
            if *rx.borrow() {
                return;
            }
            // Counted while held, also if the connection goes away meanwhile.
            struct Held<'a>(&'a AtomicUsize);
            impl Drop for Held<'_> {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            inner.waiting.fetch_add(1, Ordering::SeqCst);
            let _held = Held(&inner.waiting);
            let _ = rx.wait_for(|open| *open).await;
        })
    }
}

/// How long a stall lasts.
#[derive(Clone)]
pub enum Stall {
    For(Duration),
    Until(Gate),
}

impl Stall {
    fn future(&self) -> StallFuture {
        match self {
            Stall::For(d) => Box::pin(tokio::time::sleep(*d)),
            Stall::Until(g) => g.wait(),
        }
    }
}

/// What a fault does to a matching request.
#[derive(Clone)]
pub enum FaultAction {
    /// Ignore `Range` (and `If-Range`): always answer 200 with the whole body.
    IgnoreRange,
    /// Answer with this status (small text body; 3xx get a `Location`).
    Status(u16),
    /// Hold the response before sending headers.
    StallHeaders(Stall),
    /// Send headers and `after` body bytes, then hold the rest.
    StallBody { after: u64, stall: Stall },
    /// Send headers and `after` body bytes, then abort the connection.
    CloseAfter(u64),
    /// Set (or replace) a response header on every matching answer, 304s included, e.g.
    /// `Header("cache-control".into(), "max-age=1".into())` with a permanent path fault.
    Header(String, String),
    /// Rewrite the answer before it is sent (status, headers, body). Content-Length always
    /// follows the rewritten body; the request log records the rewritten status.
    Rewrite(Rewriter),
}

/// An answer as the origin is about to send it, for `FaultAction::Rewrite`. Header names
/// are lower case; `content-length` is not among them (it is added from the body).
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        super::header_value(&self.headers, name)
    }

    /// Sets `name` to `value`, replacing any earlier value.
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        self.remove_header(name);
        self.headers.push((name.to_ascii_lowercase(), value.into()));
    }

    pub fn remove_header(&mut self, name: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }
}

/// The function of a `FaultAction::Rewrite`: sees the request, edits the answer.
pub type Rewriter = Arc<dyn Fn(&RequestRecord, &mut Answer) + Send + Sync>;

/// A fault rule: an action, for one path (percent-decoded) or all, for a
/// limited number of matching requests or forever.
#[derive(Clone)]
pub struct Fault {
    pub path: Option<String>,
    pub times: Option<u64>,
    pub action: FaultAction,
}

impl Fault {
    pub fn global(action: FaultAction) -> Fault {
        Fault {
            path: None,
            times: None,
            action,
        }
    }

    pub fn path(path: &str, action: FaultAction) -> Fault {
        Fault {
            path: Some(path.to_string()),
            times: None,
            action,
        }
    }

    /// Apply to the next `n` matching requests only.
    pub fn times(mut self, n: u64) -> Fault {
        self.times = Some(n);
        self
    }
}

/// Handle returned by `Origin::add_fault`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultId(u64);

// ---------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------

#[derive(Default)]
struct PathStats {
    requests: AtomicU64,
    bytes: AtomicU64,
}

struct FaultRule {
    id: u64,
    fault: Fault,
    used: u64,
}

struct Shared {
    files: Mutex<HashMap<String, FileEntry>>,
    version: AtomicU64,
    log: Mutex<Vec<RequestRecord>>,
    per_path: Mutex<HashMap<String, Arc<PathStats>>>,
    total_requests: AtomicU64,
    total_bytes: AtomicU64,
    faults: Mutex<Vec<FaultRule>>,
    next_fault: AtomicU64,
    in_flight: AtomicUsize,
    last_activity: Mutex<Instant>,
    connections: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn touch(&self) {
        *lock(&self.last_activity) = Instant::now();
    }

    fn stats_for(&self, path: &str) -> Arc<PathStats> {
        lock(&self.per_path)
            .entry(path.to_string())
            .or_default()
            .clone()
    }
}

/// Decrements the in-flight count when the response (body) is done/dropped.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn new(shared: Arc<Shared>) -> InFlight {
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        shared.touch();
        InFlight(shared)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// Response body
// ---------------------------------------------------------------------------

struct FileBody {
    data: Bytes,
    pos: usize,
    stall: Option<(usize, StallFuture)>,
    close_after: Option<usize>,
    close_delay: Option<Pin<Box<tokio::time::Sleep>>>,
    stats: Arc<PathStats>,
    guard: Option<InFlight>,
}

impl FileBody {
    fn empty(guard: InFlight, stats: Arc<PathStats>) -> FileBody {
        FileBody {
            data: Bytes::new(),
            pos: 0,
            stall: None,
            close_after: None,
            close_delay: None,
            stats,
            guard: Some(guard),
        }
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if let Some((at, fut)) = this.stall.as_mut() {
            if this.pos >= *at {
                match fut.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => this.stall = None,
                }
            }
        }
        if let Some(c) = this.close_after {
            if this.pos >= c {
                // Give hyper a moment to flush what was sent so far, then
                // fail the body (hyper drops the connection).
                let delay = this
                    .close_delay
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(50))));
                if delay.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.guard = None;
                return Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "test origin fault: closing connection mid-body",
                ))));
            }
        }
        if this.pos >= this.data.len() {
            this.guard = None;
            return Poll::Ready(None);
        }
        let mut end = (this.pos + CHUNK).min(this.data.len());
        if let Some((at, _)) = &this.stall {
            if *at > this.pos {
                end = end.min(*at);
            }
        }
        if let Some(c) = this.close_after {
            end = end.min(c);
        }
        let chunk = this.data.slice(this.pos..end);
        this.pos = end;
        let n = chunk.len() as u64;
        this.stats.bytes.fetch_add(n, Ordering::Relaxed);
        if let Some(g) = &this.guard {
            g.0.total_bytes.fetch_add(n, Ordering::Relaxed);
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.data.len() && self.stall.is_none() && self.close_after.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((self.data.len() - self.pos) as u64)
    }
}

// ---------------------------------------------------------------------------
// Range / conditional helpers
// ---------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// Inclusive `first..=last`.
    Satisfiable(u64, u64),
    Unsatisfiable,
    /// Not a single byte range we understand: serve 200.
    Ignore,
}

/// Parses a single `bytes=` range against a representation of `len` bytes.
pub fn parse_range(value: &str, len: u64) -> RangeSpec {
    let value = value.trim();
    let Some(spec) = value.strip_prefix("bytes=") else {
        return RangeSpec::Ignore;
    };
    let spec = spec.trim();
    if spec.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // suffix: last n bytes
        let Ok(n) = b.parse::<u64>() else {
            return RangeSpec::Ignore;
        };
        if n == 0 {
            return RangeSpec::Unsatisfiable;
        }
        if len == 0 {
            return RangeSpec::Ignore; // nothing to slice: whole (empty) body
        }
        let n = n.min(len);
        return RangeSpec::Satisfiable(len - n, len - 1);
    }
    let Ok(first) = a.parse::<u64>() else {
        return RangeSpec::Ignore;
    };
    let last = if b.is_empty() {
        u64::MAX
    } else {
        match b.parse::<u64>() {
            Ok(v) => v,
            Err(_) => return RangeSpec::Ignore,
        }
    };
    if last < first {
        return RangeSpec::Ignore;
    }
    if first >= len {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Satisfiable(first, last.min(len - 1))
}

fn etag_matches_weak(header: &str, etag: &str) -> bool {
    let strip = |s: &str| s.trim().trim_start_matches("W/").to_string();
    let want = strip(etag);
    header
        .split(',')
        .any(|t| t.trim() == "*" || strip(t) == want)
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

/// A runtime of its own for a test server, and a listener on a free loopback port.
pub fn loopback_server(
    name: &str,
) -> (tokio::runtime::Runtime, tokio::net::TcpListener, SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("server runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("bound address");
    (rt, listener, addr)
}

/// Serves HTTP/1.1 on one accepted connection, each request answered by `answer`.
pub async fn serve_http1<I, A, F, B>(io: I, answer: A)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    A: Fn(Request<Incoming>) -> F + Send + 'static,
    F: std::future::Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = hyper::service::service_fn(move |req| {
        let answered = answer(req);
        async move { Ok::<_, std::convert::Infallible>(answered.await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await;
}

/// A running test origin. Dropping it shuts the server down.
pub struct Origin {
    shared: Arc<Shared>,
    addr: SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
}

impl Default for Origin {
    fn default() -> Self {
        Self::start()
    }
}

impl Origin {
    /// Binds 127.0.0.1:0 and starts serving on a private runtime.
    pub fn start() -> Origin {
        let (rt, listener, addr) = loopback_server("test-origin");
        let shared = Arc::new(Shared {
            files: Mutex::new(HashMap::new()),
            version: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            per_path: Mutex::new(HashMap::new()),
            total_requests: AtomicU64::new(0),
            total_bytes: AtomicU64::new(0),
            faults: Mutex::new(Vec::new()),
            next_fault: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
            last_activity: Mutex::new(Instant::now()),
            connections: AtomicU64::new(0),
        });
        let sh = shared.clone();
        rt.spawn(async move {
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(s) => s,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn_no = sh.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let sh2 = sh.clone();
                tokio::spawn(serve_http1(stream, move |req| {
                    handle(sh2.clone(), conn_no, req)
                }));
            }
        });
        Origin {
            shared,
            addr,
            rt: Some(rt),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// `http://127.0.0.1:PORT/<prefix>/` (prefix without slashes around it).
    pub fn url_with_prefix(&self, prefix: &str) -> String {
        format!("http://{}/{}/", self.addr, prefix.trim_matches('/'))
    }

    // --- content -----------------------------------------------------------

    /// Adds or replaces the file at `path` (percent-decoded, starting with
    /// `/`). Every call creates a new version: new ETag and a later
    /// Last-Modified. Returns the new entry.
    pub fn put(&self, path: &str, data: impl Into<Bytes>) -> FileEntry {
        assert!(path.starts_with('/'), "origin paths start with '/': {path}");
        let data: Bytes = data.into();
        let v = self.shared.version.fetch_add(1, Ordering::SeqCst) + 1;
        let entry = FileEntry {
            etag: format!("\"v{}-{:x}\"", v, data.len()),
            mtime: BASE_MTIME + v,
            data,
        };
        lock(&self.shared.files).insert(path.to_string(), entry.clone());
        entry
    }

    /// Puts `pattern(seed, len)` at `path` and returns those bytes.
    pub fn put_pattern(&self, path: &str, seed: u64, len: usize) -> Bytes {
        self.put(path, pattern(seed, len)).data
    }

    /// Same as `put` (named for tests that change content under a mount).
    pub fn replace(&self, path: &str, data: impl Into<Bytes>) -> FileEntry {
        self.put(path, data)
    }

    pub fn remove(&self, path: &str) -> Option<FileEntry> {
        lock(&self.shared.files).remove(path)
    }

    pub fn entry(&self, path: &str) -> Option<FileEntry> {
        lock(&self.shared.files).get(path).cloned()
    }

    /// Current content of `path` (cheap clone of the `Bytes`).
    pub fn content(&self, path: &str) -> Bytes {
        self.entry(path)
            .unwrap_or_else(|| panic!("origin has no {path}"))
            .data
    }

    // --- observation ---------------------------------------------------------

    /// Every request since start / the last `reset`.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.log).clone()
    }

    /// Requests whose percent-decoded path equals `path`.
    pub fn requests_for(&self, path: &str) -> Vec<RequestRecord> {
        lock(&self.shared.log)
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    pub fn request_count(&self) -> u64 {
        self.shared.total_requests.load(Ordering::SeqCst)
    }

    pub fn request_count_for(&self, path: &str) -> u64 {
        self.count_for(path, |s| &s.requests)
    }

    /// One of `path`'s counters (0 when no request named it).
    fn count_for(&self, path: &str, counter: impl Fn(&PathStats) -> &AtomicU64) -> u64 {
        let per_path = lock(&self.shared.per_path);
        per_path
            .get(path)
            .map_or(0, |s| counter(s).load(Ordering::SeqCst))
    }

    /// Response body bytes handed to the connection, in total.
    pub fn bytes_sent(&self) -> u64 {
        self.shared.total_bytes.load(Ordering::SeqCst)
    }

    pub fn bytes_sent_for(&self, path: &str) -> u64 {
        self.count_for(path, |s| &s.bytes)
    }

    /// TCP connections accepted so far (not reset by `reset`).
    pub fn connection_count(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Responses not yet finished (headers pending or body streaming).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Clears the request log and all counters.
    pub fn reset(&self) {
        lock(&self.shared.log).clear();
        lock(&self.shared.per_path).clear();
        self.shared.total_requests.store(0, Ordering::SeqCst);
        self.shared.total_bytes.store(0, Ordering::SeqCst);
    }

    /// Waits until nothing is in flight and nothing happened for `quiet`,
    /// at most `max`. Returns whether it got quiet.
    pub fn wait_idle(&self, quiet: Duration, max: Duration) -> bool {
        let deadline = Instant::now() + max;
        loop {
            let idle_for = lock(&self.shared.last_activity).elapsed();
            if self.in_flight() == 0 && idle_for >= quiet {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Compact human-readable dump of the request log (for assert messages).
    /// Waits (bounded) until nothing is in flight and nothing new arrived for a moment; a
    /// request that never finishes fails the test.
    #[track_caller]
    pub fn settle(&self) {
        assert!(
            self.wait_idle(Duration::from_millis(300), Duration::from_secs(30)),
            "origin never went idle: {} in flight\n{}",
            self.in_flight(),
            self.describe_requests()
        );
    }

    pub fn describe_requests(&self) -> String {
        let log = self.requests();
        let mut s = format!("{} request(s):\n", log.len());
        for r in log.iter().take(200) {
            s.push_str(&format!(
                "  {} {} range={:?} -> {} (conn {})\n",
                r.method, r.target, r.range, r.status, r.connection
            ));
        }
        if log.len() > 200 {
            s.push_str("  ...\n");
        }
        s
    }

    // --- faults --------------------------------------------------------------

    pub fn add_fault(&self, fault: Fault) -> FaultId {
        let id = self.shared.next_fault.fetch_add(1, Ordering::SeqCst);
        lock(&self.shared.faults).push(FaultRule { id, fault, used: 0 });
        FaultId(id)
    }

    pub fn remove_fault(&self, id: FaultId) {
        lock(&self.shared.faults).retain(|r| r.id != id.0);
    }

    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Faults that apply to one request (rules are consumed here).
#[derive(Default)]
struct Applied {
    ignore_range: bool,
    status: Option<u16>,
    stall_headers: Vec<Stall>,
    stall_body: Option<(u64, Stall)>,
    close_after: Option<u64>,
    headers: Vec<(String, String)>,
    rewrites: Vec<Rewriter>,
}

fn take_faults(shared: &Shared, path: &str) -> Applied {
    let mut ap = Applied::default();
    let mut rules = lock(&shared.faults);
    for r in rules.iter_mut() {
        if let Some(p) = &r.fault.path {
            if p != path {
                continue;
            }
        }
        if let Some(t) = r.fault.times {
            if r.used >= t {
                continue;
            }
        }
        r.used += 1;
        match &r.fault.action {
            FaultAction::IgnoreRange => ap.ignore_range = true,
            FaultAction::Status(s) => ap.status = Some(*s),
            FaultAction::StallHeaders(s) => ap.stall_headers.push(s.clone()),
            FaultAction::StallBody { after, stall } => {
                ap.stall_body = Some((*after, stall.clone()))
            }
            FaultAction::CloseAfter(n) => ap.close_after = Some(*n),
            FaultAction::Header(k, v) => ap.headers.push((k.to_ascii_lowercase(), v.clone())),
            FaultAction::Rewrite(f) => ap.rewrites.push(f.clone()),
        }
    }
    rules.retain(|r| r.fault.times.is_none_or(|t| r.used < t));
    ap
}

fn simple(status: u16, body: &'static str) -> (StatusCode, Vec<(&'static str, String)>, Bytes) {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        vec![("content-type", "text/plain".to_string())],
        Bytes::from_static(body.as_bytes()),
    )
}

async fn handle(shared: Arc<Shared>, conn_no: u64, req: Request<Incoming>) -> Response<FileBody> {
    let guard = InFlight::new(shared.clone());
    shared.total_requests.fetch_add(1, Ordering::SeqCst);

    let method = req.method().as_str().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().to_string());
    let raw_path = req.uri().path().to_string();
    let query = req.uri().query().map(|q| q.to_string());
    let path = percent_decode_str(&raw_path)
        .decode_utf8_lossy()
        .into_owned();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let hdr = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let range = hdr("range");
    let if_range = hdr("if-range");
    let if_none_match = hdr("if-none-match");
    let if_modified_since = hdr("if-modified-since");

    let stats = shared.stats_for(&path);
    stats.requests.fetch_add(1, Ordering::SeqCst);
    let faults = take_faults(&shared, &path);
    let is_head = method == "HEAD";

    // Decide the response.
    let mut file_body: Option<Bytes> = None;
    let (status, extra, small_body) = if let Some(code) = faults.status {
        let mut r = simple(code, "test origin fault status\n");
        if (300..400).contains(&code) {
            r.1.push(("location", format!("{raw_path}/")));
        }
        r
    } else if method != "GET" && !is_head {
        simple(405, "method not allowed\n")
    } else {
        let entry = lock(&shared.files).get(&path).cloned();
        match entry {
            Some(e) => {
                let len = e.data.len() as u64;
                let lm = e.last_modified();
                let mut h = vec![
                    ("etag", e.etag.clone()),
                    ("last-modified", lm.clone()),
                    ("accept-ranges", "bytes".to_string()),
                    ("content-type", "application/octet-stream".to_string()),
                ];
                let not_modified = if let Some(inm) = &if_none_match {
                    etag_matches_weak(inm, &e.etag)
                } else if let Some(ims) = &if_modified_since {
                    parse_http_date(ims).is_some_and(|t| e.mtime <= t)
                } else {
                    false
                };
                if not_modified {
                    (StatusCode::NOT_MODIFIED, h, Bytes::new())
                } else {
                    let use_range = match (&range, faults.ignore_range) {
                        (Some(_), false) => match &if_range {
                            None => true,
                            Some(ir) => {
                                let ir = ir.trim();
                                if ir.starts_with('"') || ir.starts_with("W/") {
                                    // strong comparison; weak tags never match
                                    ir == e.etag
                                } else {
                                    ir == lm
                                }
                            }
                        },
                        _ => false,
                    };
                    let spec = if use_range {
                        parse_range(range.as_deref().unwrap(), len)
                    } else {
                        RangeSpec::Ignore
                    };
                    match spec {
                        RangeSpec::Satisfiable(a, b) => {
                            h.push(("content-range", format!("bytes {a}-{b}/{len}")));
                            file_body = Some(e.data.slice(a as usize..=b as usize));
                            (StatusCode::PARTIAL_CONTENT, h, Bytes::new())
                        }
                        RangeSpec::Unsatisfiable => {
                            h.push(("content-range", format!("bytes */{len}")));
                            (StatusCode::RANGE_NOT_SATISFIABLE, h, Bytes::new())
                        }
                        RangeSpec::Ignore => {
                            file_body = Some(e.data.clone());
                            (StatusCode::OK, h, Bytes::new())
                        }
                    }
                }
            }
            None => {
                let files = lock(&shared.files);
                let is_dir_slash = path.ends_with('/')
                    && (path == "/" || files.keys().any(|k| k.starts_with(&path)));
                let dir_prefix = format!("{path}/");
                let is_dir_noslash =
                    !path.ends_with('/') && files.keys().any(|k| k.starts_with(&dir_prefix));
                drop(files);
                if is_dir_slash {
                    simple(403, "403 Forbidden\n")
                } else if is_dir_noslash {
                    let mut r = simple(301, "301 Moved Permanently\n");
                    r.1.push(("location", format!("{raw_path}/")));
                    r
                } else {
                    simple(404, "404 Not Found\n")
                }
            }
        }
    };

    let mut record = RequestRecord {
        method,
        target,
        path,
        query,
        range,
        headers,
        status: status.as_u16(),
        connection: conn_no,
    };
    let mut status = status;
    let mut data = file_body.unwrap_or(small_body);
    let mut extra: Vec<(String, String)> =
        extra.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    if !faults.headers.is_empty() || !faults.rewrites.is_empty() {
        let mut answer = Answer {
            status: status.as_u16(),
            headers: std::mem::take(&mut extra),
            body: data,
        };
        for (k, v) in &faults.headers {
            answer.set_header(k, v.clone());
        }
        for rewrite in &faults.rewrites {
            rewrite(&record, &mut answer);
        }
        answer.remove_header("content-length");
        status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        record.status = status.as_u16();
        extra = answer.headers;
        data = answer.body;
    }
    lock(&shared.log).push(record);

    for s in &faults.stall_headers {
        s.future().await;
    }

    let content_length = data.len();
    let mut body = FileBody::empty(guard, stats);
    if !is_head && status != StatusCode::NOT_MODIFIED {
        body.data = data;
        if let Some((after, stall)) = &faults.stall_body {
            body.stall = Some((*after as usize, stall.future()));
        }
        body.close_after = faults.close_after.map(|n| n as usize);
    }
    if status != StatusCode::NOT_MODIFIED {
        extra.push(("content-length".to_string(), content_length.to_string()));
    }
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    for (k, v) in extra {
        if let (Ok(k), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().append(k, v);
        }
    }
    resp
}
