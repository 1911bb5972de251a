//! Origin client: turns probes and block-range fetches into HTTP requests and checks the answers.
//!
//! Every answer is checked against what was asked for (status, Content-Range, length,
//! validators) before a byte of it is used; anything inconsistent becomes an error, never data.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::StatusCode;

use crate::config::{Config, HealthPolicy, Origin};
use crate::error::{FsError, FsResult};
use crate::health::{backoff, Member, Pool};
use crate::stats::Stats;

/// Everything outside RFC 3986's unreserved set is escaped, so no byte of a file name
/// (`%`, `?`, `#`, space, CR/LF, unicode) can change the meaning of a request.
const PATH_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Where requests for one part of the namespace go: equivalent origins, and the Host they
/// are asked for.
#[derive(Debug)]
pub struct Site {
    pub pool: Pool,
    /// The `Host` header for a virtual host; `None` sends each origin's own authority.
    pub host: Option<String>,
}

/// The identity of one version of an object, as the origin described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Version {
    pub fn mtime(&self) -> SystemTime {
        self.last_modified
            .as_deref()
            .and_then(|text| httpdate::parse_http_date(text).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// The `If-Range` value pinning a range request to this version. A weak ETag may not be
    /// used there (RFC 9110 13.1.5), so Last-Modified stands in for it.
    fn if_range(&self) -> Option<&str> {
        match &self.etag {
            Some(etag) if !etag.starts_with("W/") => Some(etag),
            _ => self.last_modified.as_deref(),
        }
    }

    /// Whether a full answer describes this same version (used when an origin ignores Range).
    fn matches(&self, other: &Version) -> bool {
        self.size == other.size
            && (self.etag.is_some() || self.last_modified.is_some())
            && self.etag == other.etag
            && self.last_modified == other.last_modified
    }
}

/// The parts of an answer's `Cache-Control` that decide freshness.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `s-maxage` (shared caches) or else `max-age`, in seconds.
    pub max_age: Option<u64>,
    /// Revalidate before every use.
    pub no_cache: bool,
    /// Keep nothing on disk.
    pub no_store: bool,
}

impl CacheControl {
    fn of(response: &reqwest::Response) -> CacheControl {
        let mut parsed = CacheControl::default();
        let mut shared_max_age = None;
        for value in response.headers().get_all(header::CACHE_CONTROL) {
            let Ok(text) = value.to_str() else { continue };
            for directive in text.split(',') {
                let (name, argument) = match directive.split_once('=') {
                    Some((name, argument)) => {
                        (name.trim(), Some(argument.trim().trim_matches('"')))
                    }
                    None => (directive.trim(), None),
                };
                match (name.to_ascii_lowercase().as_str(), argument) {
                    ("no-store", _) => parsed.no_store = true,
                    ("no-cache" | "private", _) => parsed.no_cache = true,
                    ("max-age", Some(n)) => parsed.max_age = n.parse().ok().or(parsed.max_age),
                    ("s-maxage", Some(n)) => shared_max_age = n.parse().ok(),
                    _ => {}
                }
            }
        }
        parsed.max_age = shared_max_age.or(parsed.max_age);
        parsed
    }
}

/// What a probe (`GET` of the first block) found at a path.
#[derive(Debug)]
pub enum Probe {
    File {
        version: Version,
        first_block: Bytes,
        cache_control: CacheControl,
    },
    Directory,
    NotFound,
    /// A conditional probe whose validators still match.
    NotModified,
}

/// A range answer whose headers passed the checks; its body starts at `body_start`.
pub struct RangeBody<'s> {
    client: &'s OriginClient,
    member: &'s Member,
    pub body_start: u64,
    /// The origin ignored Range and sends the whole object.
    pub whole_object: bool,
    response: reqwest::Response,
}

impl RangeBody<'_> {
    /// The next piece of the body, or `None` at its end. A body that breaks off counts
    /// against the origin that sent it.
    pub async fn chunk(&mut self) -> FsResult<Option<Bytes>> {
        match self.response.chunk().await {
            Ok(chunk) => {
                if let Some(bytes) = &chunk {
                    self.client.stats.record_origin_bytes(bytes.len() as u64);
                }
                Ok(chunk)
            }
            Err(e) => {
                self.failed();
                Err(map_reqwest_error(e))
            }
        }
    }

    /// The answer turned out wrong (short, long, inconsistent): mark its origin.
    pub fn failed(&self) {
        self.member.record_failure(&self.client.policy);
    }

    /// The whole answer arrived as asked: its origin is working.
    pub fn succeeded(&self) {
        self.member.record_success();
    }
}

/// Failures of an answer's body rather than its headers: worth asking another origin.
fn body_failure(error: &FsError) -> bool {
    matches!(
        error,
        FsError::BadAnswer(_) | FsError::Unreachable(_) | FsError::Timeout
    )
}

/// Largest directory listing or manifest read (bytes).
const MAX_LISTING: usize = 16 << 20;

/// The shared HTTP client for every origin of a mount.
pub struct OriginClient {
    http: reqwest::Client,
    extra_headers: HeaderMap,
    file_status: Vec<u16>,
    dir_status: Vec<u16>,
    policy: HealthPolicy,
    stats: Arc<Stats>,
    /// Longest a request may take to produce its answer's headers, over every retry.
    deadline: Duration,
}

impl OriginClient {
    pub fn new(config: &Config, stats: Arc<Stats>) -> Result<OriginClient, String> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.receive_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .no_proxy()
            .user_agent(concat!("ston-fs/", env!("CARGO_PKG_VERSION")));
        if let Some(ca_file) = &config.ca_file {
            let pem = std::fs::read(ca_file)
                .map_err(|e| format!("cannot read ca_file {}: {e}", ca_file.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("ca_file {} is not PEM: {e}", ca_file.display()))?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        let mut extra_headers = HeaderMap::new();
        for extra in &config.headers {
            let name = HeaderName::from_bytes(extra.name.as_bytes())
                .map_err(|_| format!("bad header name `{}`", extra.name))?;
            let mut value = HeaderValue::from_str(&extra.value)
                .map_err(|_| format!("the value of header `{}` is not valid", extra.name))?;
            value.set_sensitive(true);
            extra_headers.append(name, value);
        }
        Ok(OriginClient {
            http,
            extra_headers,
            file_status: config.file_status.clone(),
            dir_status: config.dir_status.clone(),
            policy: config.health.clone(),
            stats,
            deadline: config.connect_timeout + config.receive_timeout,
        })
    }

    fn request(&self, site: &Site, origin: &Origin, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}{}{}", origin.base, origin.prefix, encode_path(path));
        let mut request = self.http.get(url).headers(self.extra_headers.clone());
        if let Some(host) = &site.host {
            request = request.header(header::HOST, host);
        }
        request
    }

    /// Sends a request to the site's origins in failover order. A failure before the answer's
    /// headers (connection error, timeout, 5xx) counts against that origin and is retried on
    /// the next one after a jittered pause, all within connect + receive timeout.
    async fn send<'s>(
        &self,
        site: &'s Site,
        path: &str,
        decorate: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> FsResult<(reqwest::Response, &'s Member)> {
        let started = Instant::now();
        let order = site.pool.attempt_order();
        let attempts = order.len().max(2);
        let mut last_error = FsError::Unreachable("no origin configured".into());
        for attempt in 0..attempts {
            let member = order[attempt % order.len()];
            if attempt > 0 {
                let pause = backoff(attempt);
                if started.elapsed() + pause >= self.deadline {
                    break;
                }
                self.stats.record_retry();
                tokio::time::sleep(pause).await;
            }
            let remaining = self.deadline.saturating_sub(started.elapsed());
            let request = decorate(self.request(site, &member.origin, path));
            let answer = tokio::time::timeout(remaining, request.send()).await;
            if let Ok(Ok(response)) = &answer {
                self.stats.record_origin_status(response.status().as_u16());
            }
            match answer {
                // Success is recorded by the caller once the body has arrived whole too.
                Ok(Ok(response)) if !response.status().is_server_error() => {
                    return Ok((response, member));
                }
                Ok(Ok(response)) => last_error = FsError::Status(response.status().as_u16()),
                Ok(Err(e)) => last_error = map_reqwest_error(e),
                Err(_) => last_error = FsError::Timeout,
            }
            if !matches!(last_error, FsError::Status(_)) {
                self.stats
                    .record_origin_failure(matches!(last_error, FsError::Timeout));
            }
            member.record_failure(&self.policy);
            tracing::debug!(origin = %member.origin, path, attempt, "origin request failed: {last_error}");
        }
        Err(last_error)
    }

    /// The body of a listing page (a directory's index, or a manifest), if the origin serves
    /// one: anything but a 200 is simply no listing. Bounded to `MAX_LISTING` bytes.
    pub async fn fetch_listing(&self, site: &Site, path: &str) -> FsResult<Option<String>> {
        let (mut response, member) = self.send(site, path, |request| request).await?;
        if response.status() != StatusCode::OK {
            member.record_success();
            return Ok(None);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(map_reqwest_error)? {
            self.stats.record_origin_bytes(chunk.len() as u64);
            if body.len() + chunk.len() > MAX_LISTING {
                tracing::warn!(path, "listing larger than {MAX_LISTING} bytes; ignored");
                return Ok(None);
            }
            body.extend_from_slice(&chunk);
        }
        member.record_success();
        Ok(Some(String::from_utf8_lossy(&body).into_owned()))
    }

    /// Background health check of an excluded origin: any answer below 500 is good.
    pub async fn probe_health(&self, site: &Site, member: &Member) {
        let request = self
            .request(site, &member.origin, "/")
            .header(header::RANGE, "bytes=0-0");
        let good = match tokio::time::timeout(self.deadline, request.send()).await {
            Ok(Ok(response)) => !response.status().is_server_error(),
            _ => false,
        };
        member.record_probe(good, &self.policy);
    }

    /// `GET` of the first block: one round trip tells file or directory, size, validators,
    /// and brings the first block along. With `known`, the probe is conditional.
    pub async fn probe(
        &self,
        site: &Site,
        path: &str,
        block_size: u64,
        known: Option<&Version>,
    ) -> FsResult<Probe> {
        let decorate = |mut request: reqwest::RequestBuilder| {
            request = request.header(header::RANGE, format!("bytes=0-{}", block_size - 1));
            if let Some(known) = known {
                if let Some(etag) = &known.etag {
                    request = request.header(header::IF_NONE_MATCH, etag);
                }
                if let Some(date) = &known.last_modified {
                    request = request.header(header::IF_MODIFIED_SINCE, date);
                }
            }
            request
        };
        // A body that breaks off (or lies) counts against that origin, and the probe is asked
        // again: the failover order then puts another origin first.
        let mut attempt = 0;
        loop {
            let (response, member) = self.send(site, path, &decorate).await?;
            match self.read_probe(response, path, block_size, known).await {
                Err(e) if body_failure(&e) && attempt + 1 < site.pool.members.len().max(2) => {
                    member.record_failure(&self.policy);
                    self.stats.record_retry();
                    tracing::debug!(origin = %member.origin, path, "probe body failed ({e}); asking again");
                    attempt += 1;
                }
                Err(e) if body_failure(&e) => {
                    member.record_failure(&self.policy);
                    return Err(e);
                }
                result => {
                    member.record_success();
                    return result;
                }
            }
        }
    }

    async fn read_probe(
        &self,
        response: reqwest::Response,
        path: &str,
        block_size: u64,
        known: Option<&Version>,
    ) -> FsResult<Probe> {
        let status = response.status();
        tracing::debug!(path, status = status.as_u16(), "probe");
        match status.as_u16() {
            304 if known.is_some() => Ok(Probe::NotModified),
            416 => Ok(Probe::File {
                version: unsatisfiable_version(&response)?,
                first_block: Bytes::new(),
                cache_control: CacheControl::of(&response),
            }),
            code if self.file_status.contains(&code) && status.is_success() => {
                let probe = read_first_block(response, block_size).await;
                if let Ok(Probe::File { first_block, .. }) = &probe {
                    self.stats.record_origin_bytes(first_block.len() as u64);
                }
                probe
            }
            code if self.dir_status.contains(&code) => Ok(Probe::Directory),
            404 | 410 => Ok(Probe::NotFound),
            code => Err(FsError::Status(code)),
        }
    }

    /// Fetches `range` of the object pinned to `version`. A different version at the origin is
    /// reported as [`FsError::VersionChanged`]; the caller never gets its bytes.
    pub async fn fetch<'s>(
        &'s self,
        site: &'s Site,
        path: &str,
        range: Range<u64>,
        version: &Version,
    ) -> FsResult<RangeBody<'s>> {
        let decorate = |mut request: reqwest::RequestBuilder| {
            request = request.header(
                header::RANGE,
                format!("bytes={}-{}", range.start, range.end - 1),
            );
            if let Some(pin) = version.if_range() {
                request = request.header(header::IF_RANGE, pin);
            }
            request
        };
        let (response, member) = self.send(site, path, decorate).await?;
        let answered = version_of(&response);
        match response.status() {
            StatusCode::PARTIAL_CONTENT => {
                let (start, end, total) = content_range(&response).ok_or_else(|| {
                    FsError::BadAnswer("206 without a valid Content-Range".into())
                })?;
                if total != Some(version.size)
                    || answered.etag.is_some() && answered.etag != version.etag
                {
                    return Err(FsError::VersionChanged);
                }
                if start != range.start || end != range.end {
                    member.record_failure(&self.policy);
                    return Err(FsError::BadAnswer(format!(
                        "asked for bytes {}-{}, got {}-{}",
                        range.start,
                        range.end - 1,
                        start,
                        end.saturating_sub(1)
                    )));
                }
                Ok(RangeBody {
                    client: self,
                    member,
                    body_start: start,
                    whole_object: false,
                    response,
                })
            }
            StatusCode::OK if answered.matches(version) => {
                // An origin that ignores Range: the whole body, from byte 0.
                Ok(RangeBody {
                    client: self,
                    member,
                    body_start: 0,
                    whole_object: true,
                    response,
                })
            }
            StatusCode::OK | StatusCode::PRECONDITION_FAILED => Err(FsError::VersionChanged),
            StatusCode::RANGE_NOT_SATISFIABLE => Err(FsError::VersionChanged),
            status => Err(FsError::Status(status.as_u16())),
        }
    }
}

/// Percent-encodes a mount-relative path (`/dir/name`) component by component.
pub fn encode_path(path: &str) -> String {
    let mut encoded = String::with_capacity(path.len() + 8);
    for component in path.split('/').filter(|c| !c.is_empty()) {
        encoded.push('/');
        encoded.extend(utf8_percent_encode(component, PATH_COMPONENT));
    }
    // A directory's own index page is asked for with its trailing slash.
    if encoded.is_empty() || (path.ends_with('/') && !encoded.ends_with('/')) {
        encoded.push('/');
    }
    encoded
}

fn map_reqwest_error(err: reqwest::Error) -> FsError {
    let err = err.without_url();
    if err.is_timeout() {
        FsError::Timeout
    } else {
        FsError::Unreachable(error_chain(&err))
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn header_text(response: &reqwest::Response, name: header::HeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

/// Validators of an answer; the size is filled in by the caller.
fn version_of(response: &reqwest::Response) -> Version {
    Version {
        size: response.content_length().unwrap_or(u64::MAX),
        etag: header_text(response, header::ETAG),
        last_modified: header_text(response, header::LAST_MODIFIED),
    }
}

/// Parses `Content-Range: bytes a-b/total` into a half-open range and the total (if known).
fn content_range(response: &reqwest::Response) -> Option<(u64, u64, Option<u64>)> {
    let text = header_text(response, header::CONTENT_RANGE)?;
    let spec = text.strip_prefix("bytes ")?.trim();
    let (span, total) = spec.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        number => Some(number.parse::<u64>().ok()?),
    };
    if last < first || total.is_some_and(|t| last >= t) {
        return None;
    }
    Some((first, last + 1, total))
}

/// A 416 to `bytes=0-…` means an empty file: the total is in `Content-Range: bytes */0`.
fn unsatisfiable_version(response: &reqwest::Response) -> FsResult<Version> {
    let text = header_text(response, header::CONTENT_RANGE).unwrap_or_default();
    match text.strip_prefix("bytes */").map(str::trim) {
        Some("0") => Ok(Version {
            size: 0,
            ..version_of(response)
        }),
        _ => Err(FsError::Status(416)),
    }
}

async fn read_first_block(mut response: reqwest::Response, block_size: u64) -> FsResult<Probe> {
    let mut version = version_of(&response);
    let cache_control = CacheControl::of(&response);
    let size = if response.status() == StatusCode::PARTIAL_CONTENT {
        let (start, end, total) = content_range(&response)
            .ok_or_else(|| FsError::BadAnswer("206 without a valid Content-Range".into()))?;
        let total =
            total.ok_or_else(|| FsError::BadAnswer("Content-Range has no total size".into()))?;
        if start != 0 || end != total.min(block_size) {
            return Err(FsError::BadAnswer(format!(
                "asked for the first block, got bytes {start}-{}",
                end.saturating_sub(1)
            )));
        }
        total
    } else {
        response
            .content_length()
            .ok_or_else(|| FsError::BadAnswer("200 without Content-Length".into()))?
    };
    version.size = size;
    let wanted = size.min(block_size) as usize;
    let mut block = BytesMut::with_capacity(wanted);
    while block.len() < wanted {
        match response.chunk().await.map_err(map_reqwest_error)? {
            Some(chunk) => {
                let take = chunk.len().min(wanted - block.len());
                block.extend_from_slice(&chunk[..take]);
            }
            None => {
                return Err(FsError::BadAnswer(format!(
                    "body ended after {} of {wanted} bytes",
                    block.len()
                )))
            }
        }
    }
    Ok(Probe::File {
        version,
        first_block: block.freeze(),
        cache_control,
    })
}

#[cfg(test)]
mod tests {
    use super::encode_path;

    #[test]
    fn names_never_change_the_request() {
        assert_eq!(encode_path("/a b/c?d#e%f"), "/a%20b/c%3Fd%23e%25f");
        assert_eq!(encode_path("/x\r\ny"), "/x%0D%0Ay");
        assert_eq!(encode_path("/ü.txt"), "/%C3%BC.txt");
        assert_eq!(encode_path("/"), "/");
        assert_eq!(encode_path("/dir/"), "/dir/");
        assert_eq!(encode_path("/a b/"), "/a%20b/");
        assert_eq!(encode_path("/dir/file-1_2.~x"), "/dir/file-1_2.~x");
    }
}
