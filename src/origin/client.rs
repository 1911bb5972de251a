//! Origin client: turns probes and block-range fetches into HTTP requests to a site's origins.
//!
//! Every request runs under one deadline across all its retries and origins. A request whose
//! origin has not answered within `connect_timeout` is hedged to the next origin, and the
//! first good answer wins. Answers are checked (see [`super::answer`]) before use.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::StatusCode;

use super::health::{backoff, route_key, Member, Pool, Traffic};
use crate::base::stats::Stats;
use crate::base::{FsError, FsResult};
use crate::config::{Config, HealthPolicy, Origin};

use super::answer::{
    check_encoding, partial_range, unsatisfiable_version, version_of, CacheControl, Probe, Version,
};
use super::body::{BodyReader, RangeBody, SpeedRule};
use super::failure::{error_chain, map_reqwest_error};

/// Everything outside RFC 3986's unreserved set is escaped, so no byte of a file name
/// (`%`, `?`, `#`, space, CR/LF, unicode) can change the meaning of a request.
const PATH_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Largest directory listing or manifest read (bytes).
const MAX_LISTING: usize = 16 << 20;
/// Bytes all answers without a length may hold at once, at least (`max_unsized_object` when
/// larger): each is buffered whole, and many at once must not exhaust memory.
const UNSIZED_BUDGET: u64 = 256 << 20;

/// Where requests for one part of the namespace go: equivalent origins (and standbys), and
/// the Host they are asked for.
#[derive(Debug)]
pub struct Site {
    pub pool: Pool,
    /// The `Host` header for a virtual host; `None` sends each origin's own authority.
    pub host: Option<String>,
}

/// Failures of an answer's body rather than its headers: worth asking another origin.
fn body_failure(error: &FsError) -> bool {
    matches!(
        error,
        FsError::BadAnswer(_) | FsError::Unreachable(_) | FsError::Timeout | FsError::TooSlow(_)
    )
}

/// The shared HTTP client for every origin of a mount.
pub struct OriginClient {
    http: reqwest::Client,
    extra_headers: HeaderMap,
    file_status: Vec<u16>,
    dir_status: Vec<u16>,
    policy: HealthPolicy,
    stats: Arc<Stats>,
    speed: SpeedRule,
    /// How long an attempt may go unanswered before the next origin is asked as well.
    hedge_after: Duration,
    max_object_size: u64,
    max_unsized_object: u64,
    /// Bytes still free for answers without a length, in KiB (see `read_unsized`).
    unsized_budget: tokio::sync::Semaphore,
}

impl OriginClient {
    pub fn new(config: &Config, stats: Arc<Stats>) -> Result<OriginClient, String> {
        let mut defaults = HeaderMap::new();
        defaults.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        let builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.receive_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .no_proxy()
            .default_headers(defaults)
            .user_agent(concat!("ston-fs/", env!("CARGO_PKG_VERSION")));
        let http = with_tls(builder, config)?
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        Ok(OriginClient {
            http,
            extra_headers: extra_headers(config)?,
            file_status: config.file_status.clone(),
            dir_status: config.dir_status.clone(),
            policy: config.health.clone(),
            stats,
            speed: SpeedRule {
                limit: config.low_speed_limit,
                window: config.low_speed_time,
            },
            hedge_after: config.connect_timeout,
            max_object_size: config.max_object_size,
            max_unsized_object: config.max_unsized_object,
            unsized_budget: tokio::sync::Semaphore::new(
                (UNSIZED_BUDGET.max(config.max_unsized_object) >> 10) as usize,
            ),
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

    /// Sends a request to the site's origins in failover order, all before `deadline`.
    /// A failure before the answer's headers (connection error, timeout, 5xx) counts against
    /// that origin and is retried on the next one after a jittered pause. An origin silent
    /// for `connect_timeout` is hedged: the next origin is asked too, the first answer wins.
    async fn send<'s>(
        &self,
        site: &'s Site,
        path: &str,
        deadline: Instant,
        avoid: &[Origin],
        decorate: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> FsResult<(reqwest::Response, &'s Member)> {
        let mut order = site
            .pool
            .attempt_order(route_key(site.host.as_deref(), path));
        // Origins whose answer just broke go last: a retry should ask someone else.
        order.sort_by_key(|member| avoid.contains(&member.origin));
        if order.is_empty() {
            return Err(FsError::Unreachable("no origin configured".into()));
        }
        let max_attempts = order.len().max(2);
        let mut pending = FuturesUnordered::new();
        // Attempts not finished yet, by number: a hedge that wins blames them.
        let mut open: Vec<Option<(&Member, Instant)>> = Vec::new();
        let mut last_error = FsError::Timeout;
        let mut hedge_at = deadline;
        loop {
            if pending.is_empty() {
                if open.len() >= max_attempts
                    || !self.pause_before_retry(open.len(), deadline).await
                {
                    return Err(last_error);
                }
                let member = order[open.len() % order.len()];
                pending.push(self.attempt(open.len(), site, member, path, deadline, &decorate));
                open.push(Some((member, Instant::now())));
                hedge_at = Instant::now() + self.hedge_after;
            }
            let can_hedge = open.len() < order.len() && hedge_at < deadline;
            tokio::select! {
                Some((number, answer)) = pending.next() => {
                    let Some((member, _)) = open[number].take() else { continue };
                    match self.judge(member, answer, path) {
                        Ok(response) => {
                            self.blame_silent(&open);
                            return Ok((response, member));
                        }
                        Err(error) => last_error = error,
                    }
                }
                _ = tokio::time::sleep_until(hedge_at.into()), if can_hedge => {
                    self.stats.record_hedge();
                    let member = order[open.len() % order.len()];
                    tracing::debug!(origin = %member.origin, path, "origin silent; hedging");
                    pending.push(self.attempt(open.len(), site, member, path, deadline, &decorate));
                    open.push(Some((member, Instant::now())));
                    hedge_at = Instant::now() + self.hedge_after;
                }
            }
        }
    }

    /// Waits the backoff before retry number `started` (none before the first attempt);
    /// false when the deadline leaves no time for it.
    async fn pause_before_retry(&self, started: usize, deadline: Instant) -> bool {
        if started == 0 {
            return true;
        }
        let pause = backoff(started);
        if Instant::now() + pause >= deadline {
            return false;
        }
        self.stats.record_retry();
        tokio::time::sleep(pause).await;
        true
    }

    async fn attempt(
        &self,
        number: usize,
        site: &Site,
        member: &Member,
        path: &str,
        deadline: Instant,
        decorate: &impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> (usize, FsResult<reqwest::Response>) {
        let request = decorate(self.request(site, &member.origin, path));
        member.traffic().record_request();
        let answer = match tokio::time::timeout_at(deadline.into(), request.send()).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(map_reqwest_error(e)),
            Err(_) => Err(FsError::Timeout),
        };
        (number, answer)
    }

    /// Counts an attempt's outcome; a 5xx or a failure to answer is an error.
    fn judge(
        &self,
        member: &Member,
        answer: FsResult<reqwest::Response>,
        path: &str,
    ) -> FsResult<reqwest::Response> {
        let error = match answer {
            Ok(response) => {
                self.stats.record_origin_status(response.status().as_u16());
                if !response.status().is_server_error() {
                    // Success is recorded by the caller once the body has arrived whole too.
                    return Ok(response);
                }
                FsError::Status(response.status().as_u16())
            }
            Err(error) => {
                self.stats
                    .record_origin_failure(matches!(error, FsError::Timeout));
                error
            }
        };
        member.record_failure(&self.policy);
        member.record_error(&error.to_string());
        tracing::debug!(origin = %member.origin, path, "origin request failed: {error}");
        Err(error)
    }

    /// Attempts still silent after `connect_timeout` when another origin answered count as
    /// failures: a blackholed origin must leave the rotation, not cost every request a hedge.
    fn blame_silent(&self, open: &[Option<(&Member, Instant)>]) {
        for (member, began) in open.iter().flatten() {
            if began.elapsed() >= self.hedge_after {
                self.stats.record_origin_failure(true);
                member.record_failure(&self.policy);
                member.record_error("no answer within connect_timeout; another origin answered");
            }
        }
    }

    /// The body of a listing page (a directory's index, or a manifest), if the origin serves
    /// one: anything but a 200 is simply no listing. Bounded to `MAX_LISTING` bytes.
    pub async fn fetch_listing(
        &self,
        site: &Site,
        path: &str,
        deadline: Instant,
    ) -> FsResult<Option<String>> {
        let (response, member) = self
            .send(site, path, deadline, &[], |request| request)
            .await?;
        if response.status() != StatusCode::OK {
            member.record_success();
            return Ok(None);
        }
        check_encoding(&response)?;
        let mut reader = self.body_reader(response, member);
        let mut body = Vec::new();
        while let Some(chunk) = reader.chunk().await? {
            if body.len() + chunk.len() > MAX_LISTING {
                tracing::warn!(path, "listing larger than {MAX_LISTING} bytes; ignored");
                return Ok(None);
            }
            body.extend_from_slice(&chunk);
        }
        member.record_success();
        Ok(Some(String::from_utf8_lossy(&body).into_owned()))
    }

    /// Whether `origin` accepts a TCP connection within `connect_timeout` (no request is
    /// sent, so nothing shows up in its logs): a bad host name or a dead address is reported
    /// at mount time instead of at the first read.
    pub async fn connectable(origin: &Origin, timeout: Duration) -> Result<(), String> {
        let url = reqwest::Url::parse(&origin.base).map_err(|e| e.to_string())?;
        let resolve = tokio::task::spawn_blocking(move || url.socket_addrs(|| None));
        let addrs = match tokio::time::timeout(timeout, resolve).await {
            Ok(Ok(Ok(addrs))) if !addrs.is_empty() => addrs,
            Ok(Ok(Ok(_))) => return Err("its host name has no address".into()),
            Ok(Ok(Err(e))) => return Err(format!("cannot resolve its host name: {e}")),
            _ => return Err("resolving its host name timed out".into()),
        };
        let connect = tokio::net::TcpStream::connect(addrs.as_slice());
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot connect: {e}")),
            Err(_) => Err(format!("no connection within {} s", timeout.as_secs_f64())),
        }
    }

    /// Records a failure found outside a request (at mount time).
    pub fn record_unreachable(&self, member: &Member, reason: &str) {
        member.record_failure(&self.policy);
        member.record_error(reason);
    }

    /// Health check of one origin: any answer below 500 is good.
    pub async fn probe_health(&self, site: &Site, member: &Member, deadline: Instant) -> bool {
        let request = self
            .request(site, &member.origin, "/")
            .header(header::RANGE, "bytes=0-0");
        member.traffic().record_request();
        let good = match tokio::time::timeout_at(deadline.into(), request.send()).await {
            Ok(Ok(response)) => !response.status().is_server_error(),
            Ok(Err(e)) => {
                member.record_error(&error_chain(&e.without_url()));
                false
            }
            Err(_) => {
                member.record_error("no answer before the deadline");
                false
            }
        };
        member.record_probe(good, &self.policy);
        good
    }

    /// `GET` of the first block: one round trip tells file or directory, size, validators,
    /// and brings the first block along. With `known`, the probe is conditional.
    pub async fn probe(
        &self,
        site: &Site,
        path: &str,
        block_size: u64,
        known: Option<&Version>,
        deadline: Instant,
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
        let mut broken = Vec::new();
        loop {
            let (response, member) = self.send(site, path, deadline, &broken, &decorate).await?;
            let read = self.read_probe(response, member.traffic(), path, block_size, known);
            let result = match tokio::time::timeout_at(deadline.into(), read).await {
                Ok(result) => result,
                Err(_) => Err(FsError::Timeout),
            };
            match result {
                Err(e) if body_failure(&e) => {
                    member.record_failure(&self.policy);
                    tracing::debug!(origin = %member.origin, path, "probe body failed ({e})");
                    broken.push(member.origin.clone());
                    if broken.len() >= site.pool.members.len().max(2) || Instant::now() >= deadline
                    {
                        return Err(e);
                    }
                    self.stats.record_retry();
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
        traffic: &Arc<Traffic>,
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
                head: Bytes::new(),
                cache_control: CacheControl::of(&response),
            }),
            code if self.file_status.contains(&code) && status.is_success() => {
                check_encoding(&response)?;
                self.read_head(response, traffic, block_size).await
            }
            code if self.dir_status.contains(&code) => Ok(Probe::Directory),
            404 | 410 => Ok(Probe::NotFound),
            code => Err(FsError::Status(code)),
        }
    }

    /// Reads a file answer's first block; an answer with no length is read whole to learn it.
    async fn read_head(
        &self,
        response: reqwest::Response,
        traffic: &Arc<Traffic>,
        block_size: u64,
    ) -> FsResult<Probe> {
        let mut version = version_of(&response);
        let cache_control = CacheControl::of(&response);
        let partial = response.status() == StatusCode::PARTIAL_CONTENT;
        let mut reader = BodyReader::new(response, self.speed, self.stats.clone(), traffic.clone());
        let head = if partial {
            let range = partial_range(reader.response())?;
            let total = range
                .total
                .ok_or_else(|| FsError::BadAnswer("Content-Range has no total size".into()))?;
            self.check_size(total)?;
            if range.start != 0 || range.end != total.min(block_size) {
                return Err(FsError::BadAnswer(format!(
                    "asked for the first block, got bytes {}-{}",
                    range.start,
                    range.end - 1
                )));
            }
            version.size = total;
            let head = read_exactly(&mut reader, range.end).await?;
            reader.expect_end().await?;
            head
        } else if version.size == u64::MAX {
            let head = self.read_unsized(&mut reader).await?;
            version.size = head.len() as u64;
            head
        } else {
            self.check_size(version.size)?;
            // An origin that ignores Range: the first block is enough; the rest is dropped.
            read_exactly(&mut reader, version.size.min(block_size)).await?
        };
        Ok(Probe::File {
            version,
            head,
            cache_control,
        })
    }

    /// An answer without Content-Length (chunked or close-delimited), read whole to learn
    /// its size, up to `max_unsized_object`. All such answers in flight share one budget;
    /// past it, an answer fails (EIO) rather than wait, since every holder waits for more.
    async fn read_unsized(&self, reader: &mut BodyReader) -> FsResult<Bytes> {
        let mut body = BytesMut::new();
        let mut held = None::<tokio::sync::SemaphorePermit>;
        while let Some(chunk) = reader.chunk().await? {
            let len = (body.len() + chunk.len()) as u64;
            if len > self.max_unsized_object {
                return Err(FsError::TooLarge(format!(
                    "the answer has no length and runs past max_unsized_object ({} bytes)",
                    self.max_unsized_object
                )));
            }
            let wanted = len.div_ceil(1024) as u32;
            let have = held
                .as_ref()
                .map_or(0, |permit| permit.num_permits() as u32);
            if wanted > have {
                let more = self
                    .unsized_budget
                    .try_acquire_many(wanted - have)
                    .map_err(|_| {
                        FsError::TooLarge(
                            "answers without a length already hold their whole memory budget"
                                .into(),
                        )
                    })?;
                match &mut held {
                    Some(permit) => permit.merge(more),
                    None => held = Some(more),
                }
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    fn check_size(&self, size: u64) -> FsResult<()> {
        if size > self.max_object_size {
            return Err(FsError::TooLarge(format!(
                "the origin claims {size} bytes, more than max_object_size ({} bytes)",
                self.max_object_size
            )));
        }
        Ok(())
    }

    /// Fetches `range` of the object pinned to `version`. A different version at the origin is
    /// reported as [`FsError::VersionChanged`]; the caller never gets its bytes.
    pub async fn fetch<'s>(
        &'s self,
        site: &'s Site,
        path: &str,
        range: Range<u64>,
        version: &Version,
        deadline: Instant,
        avoid: &[Origin],
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
        let (response, member) = self.send(site, path, deadline, avoid, decorate).await?;
        let checked = self.check_range_answer(&response, path, &range, version);
        if let Err(FsError::BadAnswer(_)) = &checked {
            member.record_failure(&self.policy);
        }
        let (body_start, body_end, whole_object) = checked?;
        Ok(RangeBody {
            reader: self.body_reader(response, member),
            member,
            policy: &self.policy,
            body_start,
            body_end,
            whole_object,
        })
    }

    /// A reader of an answer's body that counts its bytes for the mount and for `member`.
    fn body_reader(&self, response: reqwest::Response, member: &Member) -> BodyReader {
        let traffic = member.traffic().clone();
        BodyReader::new(response, self.speed, self.stats.clone(), traffic)
    }

    /// Where a range answer's body lies, if it is an answer about `version` at all.
    fn check_range_answer(
        &self,
        response: &reqwest::Response,
        path: &str,
        range: &Range<u64>,
        version: &Version,
    ) -> FsResult<(u64, u64, bool)> {
        let answered = version_of(response);
        let checked = Self::locate_range_answer(response, range, version, &answered);
        if let Err(FsError::VersionChanged) = &checked {
            self.stats.record_version_change();
            tracing::warn!(
                path,
                reading = %describe(version),
                origin_now = %describe(&answered),
                status = response.status().as_u16(),
                "the origin's version changed during a read: its reads end with EIO, never a mix of versions"
            );
        }
        checked
    }

    fn locate_range_answer(
        response: &reqwest::Response,
        range: &Range<u64>,
        version: &Version,
        answered: &Version,
    ) -> FsResult<(u64, u64, bool)> {
        match response.status() {
            StatusCode::PARTIAL_CONTENT => {
                check_encoding(response)?;
                let got = partial_range(response)?;
                if got.total != Some(version.size) || !version.matches_partial_answer(answered) {
                    return Err(FsError::VersionChanged);
                }
                // A shorter answer from the right start is legal (RFC 9110 15.3.7): its
                // bytes are used and the rest is asked for again.
                if got.start != range.start || got.end > range.end {
                    return Err(FsError::BadAnswer(format!(
                        "asked for bytes {}-{}, got {}-{}",
                        range.start,
                        range.end - 1,
                        got.start,
                        got.end - 1
                    )));
                }
                Ok((got.start, got.end, false))
            }
            // An origin that ignores Range: the whole body, from byte 0.
            StatusCode::OK if version.matches_full_answer(answered) => {
                check_encoding(response)?;
                Ok((0, version.size, true))
            }
            StatusCode::OK | StatusCode::PRECONDITION_FAILED => Err(FsError::VersionChanged),
            StatusCode::RANGE_NOT_SATISFIABLE => Err(FsError::VersionChanged),
            status => Err(FsError::Status(status.as_u16())),
        }
    }
}

/// A version's validators for a log line.
fn describe(version: &Version) -> String {
    let size = match version.size {
        u64::MAX => "?".to_string(),
        size => size.to_string(),
    };
    format!(
        "size {size}, ETag {}, Last-Modified {}",
        version.etag.as_deref().unwrap_or("none"),
        version.last_modified.as_deref().unwrap_or("none")
    )
}

/// Reads exactly `len` bytes from the start of a body; a shorter body is a broken answer.
async fn read_exactly(reader: &mut BodyReader, len: u64) -> FsResult<Bytes> {
    let wanted = len as usize;
    let mut block = BytesMut::with_capacity(wanted);
    while block.len() < wanted {
        match reader.chunk().await? {
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
    Ok(block.freeze())
}

/// The client's TLS: the platform's roots plus `ca_file`, and pinned certificates if any.
fn with_tls(
    builder: reqwest::ClientBuilder,
    config: &Config,
) -> Result<reqwest::ClientBuilder, String> {
    let Some(ca_file) = &config.ca_file else {
        return match config.tls_pins.is_empty() {
            true => Ok(builder),
            false => Ok(builder.tls_backend_preconfigured(super::tls::pinned_config(
                &config.tls_pins,
                Vec::new(),
            )?)),
        };
    };
    let pem = std::fs::read(ca_file)
        .map_err(|e| format!("cannot read ca_file {}: {e}", ca_file.display()))?;
    if config.tls_pins.is_empty() {
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("ca_file {} is not PEM: {e}", ca_file.display()))?;
        return Ok(builder.tls_certs_merge(certs));
    }
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let roots = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("ca_file {} is not PEM: {e}", ca_file.display()))?;
    Ok(builder.tls_backend_preconfigured(super::tls::pinned_config(&config.tls_pins, roots)?))
}

fn extra_headers(config: &Config) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    if let Some(name) = &config.via {
        // The name was checked by the config; this check is the HTTP library's own.
        let value = HeaderValue::from_str(&format!("1.1 {name} (ston-fs)"))
            .map_err(|_| format!("`{name}` cannot name this edge in a Via header"))?;
        headers.append(header::VIA, value);
    }
    for extra in &config.headers {
        let name = HeaderName::from_bytes(extra.name.as_bytes())
            .map_err(|_| format!("bad header name `{}`", extra.name))?;
        let mut value = HeaderValue::from_str(&extra.value)
            .map_err(|_| format!("the value of header `{}` is not valid", extra.name))?;
        value.set_sensitive(true);
        headers.append(name, value);
    }
    Ok(headers)
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
