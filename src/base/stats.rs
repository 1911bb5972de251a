//! Statistics: lock-free counters and latency histograms, shown by `ston-fs stats` and the
//! Prometheus endpoint, plus the optional access log of file-system calls.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// File-system operations that are counted and timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lookup,
    Attr,
    Open,
    Read,
}

impl Op {
    const ALL: [Op; 4] = [Op::Lookup, Op::Attr, Op::Open, Op::Read];

    fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Attr => "getattr",
            Op::Open => "open",
            Op::Read => "read",
        }
    }

    /// The access log's method names (STON's ATTR/OPEN/READ).
    fn log_name(self) -> &'static str {
        match self {
            Op::Lookup | Op::Attr => "ATTR",
            Op::Open => "OPEN",
            Op::Read => "READ",
        }
    }
}

/// Latency histogram with power-of-two microsecond buckets: 1 µs .. ~1 hour.
struct Histogram {
    buckets: [AtomicU64; 32],
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn record(&self, elapsed: Duration) {
        let micros = elapsed.as_micros().max(1) as u64;
        let bucket = (63 - micros.leading_zeros() as usize).min(31);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// Upper bound of the bucket holding quantile `q`, in microseconds.
    fn quantile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let wanted = ((total as f64) * q).ceil() as u64;
        let mut seen = 0;
        for (bucket, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= wanted {
                return 2u64 << bucket;
            }
        }
        2u64 << 31
    }
}

/// Counters of one mount. Every field is updated without locks on the hot paths.
pub struct Stats {
    op_counts: [AtomicU64; 4],
    op_latency: [Histogram; 4],
    read_hits: AtomicU64,
    read_misses: AtomicU64,
    open_hits: AtomicU64,
    open_misses: AtomicU64,
    bytes_from_cache: AtomicU64,
    bytes_from_origin: AtomicU64,
    origin_by_class: [AtomicU64; 6],
    origin_bytes: AtomicU64,
    origin_timeouts: AtomicU64,
    origin_errors: AtomicU64,
    origin_retries: AtomicU64,
    origin_hedges: AtomicU64,
    version_changes: AtomicU64,
    access_log: Option<Mutex<File>>,
}

/// A point-in-time copy of the statistics, as `ston-fs stats --json` prints it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub ops: Vec<OpSnapshot>,
    pub read_hits: u64,
    pub read_misses: u64,
    pub request_hit_ratio: f64,
    /// Opens answered without the origin, passthrough opens included.
    pub open_hits: u64,
    pub open_misses: u64,
    pub bytes_from_cache: u64,
    pub bytes_from_origin: u64,
    pub byte_hit_ratio: f64,
    /// Origin answers by status class: 1xx .. 5xx.
    pub origin_requests: OriginClasses,
    pub origin_bytes: u64,
    pub origin_timeouts: u64,
    pub origin_errors: u64,
    pub origin_retries: u64,
    pub origin_hedges: u64,
    /// Range answers that came from another version than the one being read: each ends
    /// its reads with EIO rather than splice two versions.
    pub reads_ended_by_version_change: u64,
    pub origins: Vec<OriginHealth>,
    pub cache_bytes: u64,
    pub cache_cap: u64,
    pub cache_objects: u64,
    /// Of `cache_objects`, those kept as records of the packed small-object store, and the
    /// bytes of `cache_bytes` its segments take.
    #[serde(default)]
    pub small_objects: u64,
    #[serde(default)]
    pub small_bytes: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct OpSnapshot {
    pub op: String,
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct OriginClasses {
    pub status_1xx: u64,
    pub status_2xx: u64,
    pub status_3xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
}

/// One origin of one site: its health and what it was sent.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct OriginHealth {
    pub site: String,
    pub origin: String,
    /// `active`, or `standby` (used only while every active origin is excluded).
    #[serde(default)]
    pub role: String,
    /// In rotation and not failing.
    pub healthy: bool,
    /// unknown (never asked), healthy, failing or excluded.
    pub state: String,
    /// Why its last failed request failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Requests sent to it, health probes included.
    #[serde(default)]
    pub requests: u64,
    /// Body bytes received from it.
    #[serde(default)]
    pub bytes: u64,
    /// Requests to it that failed: no answer in time, 5xx, broken or lying answers.
    #[serde(default)]
    pub failures: u64,
}

/// The states an origin can be in, as the `stonfs_origin_state` samples name them.
const ORIGIN_STATES: [&str; 4] = ["unknown", "healthy", "failing", "excluded"];

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

impl Stats {
    pub fn new(access_log: Option<File>) -> Stats {
        Stats {
            op_counts: std::array::from_fn(|_| AtomicU64::new(0)),
            op_latency: std::array::from_fn(|_| Histogram::new()),
            read_hits: AtomicU64::new(0),
            read_misses: AtomicU64::new(0),
            open_hits: AtomicU64::new(0),
            open_misses: AtomicU64::new(0),
            bytes_from_cache: AtomicU64::new(0),
            bytes_from_origin: AtomicU64::new(0),
            origin_by_class: std::array::from_fn(|_| AtomicU64::new(0)),
            origin_bytes: AtomicU64::new(0),
            origin_timeouts: AtomicU64::new(0),
            origin_errors: AtomicU64::new(0),
            origin_retries: AtomicU64::new(0),
            origin_hedges: AtomicU64::new(0),
            version_changes: AtomicU64::new(0),
            access_log: access_log.map(Mutex::new),
        }
    }

    /// Records one finished file-system call; `hit` is whether the cache alone answered it:
    /// for a read, that no byte of it had to come from the origin (read-ahead included).
    pub fn record_op(&self, op: Op, path: &str, bytes: u64, elapsed: Duration, hit: bool) {
        self.op_counts[op.index()].fetch_add(1, Ordering::Relaxed);
        self.op_latency[op.index()].record(elapsed);
        match op {
            Op::Read => {
                let (requests, bytes_counter) = if hit {
                    (&self.read_hits, &self.bytes_from_cache)
                } else {
                    (&self.read_misses, &self.bytes_from_origin)
                };
                requests.fetch_add(1, Ordering::Relaxed);
                bytes_counter.fetch_add(bytes, Ordering::Relaxed);
            }
            Op::Open => {
                let counter = if hit {
                    &self.open_hits
                } else {
                    &self.open_misses
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Op::Lookup | Op::Attr => {}
        }
        if let Some(log) = &self.access_log {
            self.write_access_log(log, op, path, bytes, elapsed, hit);
        }
    }

    fn write_access_log(
        &self,
        log: &Mutex<File>,
        op: Op,
        path: &str,
        bytes: u64,
        elapsed: Duration,
        hit: bool,
    ) {
        let time = httpdate::fmt_http_date(SystemTime::now());
        let path: String = path
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        let line = format!(
            "{time}\t{}\t{path}\t{bytes}\t{}us\t{}\n",
            op.log_name(),
            elapsed.as_micros(),
            if hit { "HIT" } else { "MISS" }
        );
        let _ = log.lock().write_all(line.as_bytes());
    }

    pub fn record_origin_status(&self, status: u16) {
        let class = usize::from(status / 100).min(5);
        self.origin_by_class[class].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_origin_bytes(&self, bytes: u64) {
        self.origin_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn record_origin_failure(&self, timeout: bool) {
        let counter = if timeout {
            &self.origin_timeouts
        } else {
            &self.origin_errors
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_retry(&self) {
        self.origin_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// A request that went to a second origin because the first stayed silent.
    pub fn record_version_change(&self) {
        self.version_changes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_hedge(&self) {
        self.origin_hedges.fetch_add(1, Ordering::Relaxed);
    }

    /// Everything but the cache and origin-health figures, which the caller fills in.
    pub fn snapshot(&self) -> Snapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let (hits, misses) = (load(&self.read_hits), load(&self.read_misses));
        let (cached, fetched) = (load(&self.bytes_from_cache), load(&self.bytes_from_origin));
        let classes = &self.origin_by_class;
        Snapshot {
            ops: Op::ALL
                .iter()
                .map(|op| OpSnapshot {
                    op: op.name().to_string(),
                    count: load(&self.op_counts[op.index()]),
                    p50_us: self.op_latency[op.index()].quantile(0.5),
                    p90_us: self.op_latency[op.index()].quantile(0.9),
                    p99_us: self.op_latency[op.index()].quantile(0.99),
                })
                .collect(),
            read_hits: hits,
            read_misses: misses,
            request_hit_ratio: ratio(hits, hits + misses),
            open_hits: load(&self.open_hits),
            open_misses: load(&self.open_misses),
            bytes_from_cache: cached,
            bytes_from_origin: fetched,
            byte_hit_ratio: ratio(cached, cached + fetched),
            origin_requests: OriginClasses {
                status_1xx: load(&classes[1]),
                status_2xx: load(&classes[2]),
                status_3xx: load(&classes[3]),
                status_4xx: load(&classes[4]),
                status_5xx: load(&classes[5]),
            },
            origin_bytes: load(&self.origin_bytes),
            origin_timeouts: load(&self.origin_timeouts),
            origin_errors: load(&self.origin_errors),
            origin_retries: load(&self.origin_retries),
            origin_hedges: load(&self.origin_hedges),
            reads_ended_by_version_change: load(&self.version_changes),
            ..Snapshot::default()
        }
    }
}

impl Snapshot {
    /// The readable summary of `ston-fs stats`.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "hit ratio: {:.1}% of reads ({} hits, {} misses), {:.1}% of bytes; {:.1}% of opens ({} hits, {} misses)",
            self.request_hit_ratio * 100.0,
            self.read_hits,
            self.read_misses,
            self.byte_hit_ratio * 100.0,
            ratio(self.open_hits, self.open_hits + self.open_misses) * 100.0,
            self.open_hits,
            self.open_misses
        );
        self.write_ops(&mut text);
        self.write_origins(&mut text);
        let _ = writeln!(
            text,
            "cache: {} of {} bytes ({:.1}%), {} objects ({} small, in {} bytes of packed segments)",
            self.cache_bytes,
            self.cache_cap,
            ratio(self.cache_bytes, self.cache_cap) * 100.0,
            self.cache_objects,
            self.small_objects,
            self.small_bytes
        );
        text
    }

    fn write_ops(&self, text: &mut String) {
        let _ = writeln!(
            text,
            "operations:            count      p50      p90      p99"
        );
        for op in &self.ops {
            let _ = writeln!(
                text,
                "  {:<10} {:>14} {:>8} {:>8} {:>8}",
                op.op,
                op.count,
                micros(op.p50_us),
                micros(op.p90_us),
                micros(op.p99_us)
            );
        }
    }

    fn write_origins(&self, text: &mut String) {
        let classes = &self.origin_requests;
        let _ = writeln!(
            text,
            "origin: {} bytes; requests 2xx {} 3xx {} 4xx {} 5xx {}; {} timeouts, {} errors, {} retries, {} hedged; {} reads ended by a version change",
            self.origin_bytes,
            classes.status_2xx,
            classes.status_3xx,
            classes.status_4xx,
            classes.status_5xx,
            self.origin_timeouts,
            self.origin_errors,
            self.origin_retries,
            self.origin_hedges,
            self.reads_ended_by_version_change
        );
        for origin in &self.origins {
            let _ = write!(
                text,
                "  {} {} {} {}: {} requests, {} bytes, {} failures",
                origin.site,
                origin.origin,
                origin.role,
                origin.state,
                origin.requests,
                origin.bytes,
                origin.failures
            );
            match &origin.last_error {
                Some(error) if !origin.healthy => {
                    let _ = writeln!(text, " (last error: {error})");
                }
                _ => text.push('\n'),
            }
        }
    }

    /// Prometheus text exposition, every figure under a `stonfs_` name.
    pub fn to_prometheus(&self) -> String {
        let mut text = String::new();
        for family in self.metric_families() {
            let _ = writeln!(
                text,
                "# HELP stonfs_{name} {help}\n# TYPE stonfs_{name} {kind}",
                name = family.name,
                help = family.help,
                kind = family.kind
            );
            for (labels, value) in family.samples {
                let _ = writeln!(text, "stonfs_{}{labels} {value}", family.name);
            }
        }
        text
    }

    /// Every metric family, in the order they are exposed.
    fn metric_families(&self) -> Vec<Family> {
        let mut families = vec![
            Family::labelled(
                "operations_total",
                "counter",
                "File-system calls served.",
                self.ops
                    .iter()
                    .map(|o| (format!("{{op=\"{}\"}}", o.op), o.count as f64))
                    .collect(),
            ),
            Family::labelled(
                "operation_latency_seconds",
                "gauge",
                "Latency quantiles (bucket upper bounds).",
                self.latency_samples(),
            ),
        ];
        let counters: [(&'static str, &'static str, u64); 14] = [
            (
                "read_hits_total",
                "Reads answered from the cache alone.",
                self.read_hits,
            ),
            (
                "read_misses_total",
                "Reads that needed the origin.",
                self.read_misses,
            ),
            (
                "read_bytes_from_cache_total",
                "Bytes read from the cache.",
                self.bytes_from_cache,
            ),
            (
                "read_bytes_from_origin_total",
                "Bytes read that came from the origin.",
                self.bytes_from_origin,
            ),
            (
                "open_hits_total",
                "Opens answered without the origin (passthrough opens included).",
                self.open_hits,
            ),
            (
                "open_misses_total",
                "Opens that needed the origin.",
                self.open_misses,
            ),
            (
                "origin_bytes_total",
                "Body bytes received from origins.",
                self.origin_bytes,
            ),
            (
                "origin_timeouts_total",
                "Origin requests that timed out.",
                self.origin_timeouts,
            ),
            (
                "origin_errors_total",
                "Origin requests that failed to connect or broke.",
                self.origin_errors,
            ),
            (
                "origin_retries_total",
                "Origin requests retried.",
                self.origin_retries,
            ),
            (
                "origin_hedges_total",
                "Origin requests also sent to a second origin after the first stayed silent.",
                self.origin_hedges,
            ),
            (
                "reads_ended_by_version_change_total",
                "Range answers from another version than the one being read; their reads got EIO.",
                self.reads_ended_by_version_change,
            ),
            (
                "cache_bytes",
                "Bytes the cache uses on disk (charged).",
                self.cache_bytes,
            ),
            ("cache_capacity_bytes", "max_cache_size.", self.cache_cap),
        ];
        for (name, help, value) in counters {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            families.push(Family::plain(name, kind, help, value as f64));
        }
        families.extend([
            Family::plain(
                "cache_objects",
                "gauge",
                "Objects in the cache, small ones included.",
                self.cache_objects as f64,
            ),
            Family::plain(
                "cache_small_objects",
                "gauge",
                "Objects kept as records of the packed small-object store.",
                self.small_objects as f64,
            ),
            Family::plain(
                "cache_small_bytes",
                "gauge",
                "Bytes the packed store's segments take (part of cache_bytes).",
                self.small_bytes as f64,
            ),
            Family::plain(
                "request_hit_ratio",
                "gauge",
                "Share of reads answered from the cache.",
                self.request_hit_ratio,
            ),
            Family::plain(
                "byte_hit_ratio",
                "gauge",
                "Share of read bytes served from the cache.",
                self.byte_hit_ratio,
            ),
            Family::labelled(
                "origin_requests_total",
                "counter",
                "Origin answers by status class.",
                self.class_samples(),
            ),
            Family::labelled(
                "origin_healthy",
                "gauge",
                "1 while the origin is in rotation and its last request succeeded.",
                self.per_origin(|o| if o.healthy { 1.0 } else { 0.0 }),
            ),
            Family::labelled(
                "origin_state",
                "gauge",
                "1 for the state the origin is in: unknown, healthy, failing or excluded.",
                self.state_samples(),
            ),
            Family::labelled(
                "origin_sent_requests_total",
                "counter",
                "Requests sent to the origin, health probes included.",
                self.per_origin(|o| o.requests as f64),
            ),
            Family::labelled(
                "origin_received_bytes_total",
                "counter",
                "Body bytes received from the origin.",
                self.per_origin(|o| o.bytes as f64),
            ),
            Family::labelled(
                "origin_failures_total",
                "counter",
                "Requests to the origin that failed (no answer in time, 5xx, broken answers).",
                self.per_origin(|o| o.failures as f64),
            ),
        ]);
        families
    }

    fn latency_samples(&self) -> Vec<(String, f64)> {
        let mut samples = Vec::new();
        for op in &self.ops {
            for (q, value) in [("0.5", op.p50_us), ("0.9", op.p90_us), ("0.99", op.p99_us)] {
                let labels = format!("{{op=\"{}\",quantile=\"{q}\"}}", op.op);
                samples.push((labels, value as f64 / 1e6));
            }
        }
        samples
    }

    fn class_samples(&self) -> Vec<(String, f64)> {
        let classes = &self.origin_requests;
        [
            ("1xx", classes.status_1xx),
            ("2xx", classes.status_2xx),
            ("3xx", classes.status_3xx),
            ("4xx", classes.status_4xx),
            ("5xx", classes.status_5xx),
        ]
        .iter()
        .map(|(class, n)| (format!("{{class=\"{class}\"}}"), *n as f64))
        .collect()
    }

    /// One sample per origin, labelled with its site, URL and role.
    fn per_origin(&self, value: impl Fn(&OriginHealth) -> f64) -> Vec<(String, f64)> {
        self.origins
            .iter()
            .map(|o| (origin_labels(o, ""), value(o)))
            .collect()
    }

    fn state_samples(&self) -> Vec<(String, f64)> {
        let mut samples = Vec::new();
        for origin in &self.origins {
            for state in ORIGIN_STATES {
                let labels = origin_labels(origin, &format!(",state=\"{state}\""));
                samples.push((labels, if origin.state == state { 1.0 } else { 0.0 }));
            }
        }
        samples
    }
}

/// `{site="...",origin="...",role="..."}` plus `extra`. Label values are escaped as the
/// text format asks, though a site name or a redacted URL should hold nothing to escape.
fn origin_labels(origin: &OriginHealth, extra: &str) -> String {
    let escape = |value: &str| {
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    format!(
        "{{site=\"{}\",origin=\"{}\",role=\"{}\"{extra}}}",
        escape(&origin.site),
        escape(&origin.origin),
        escape(&origin.role)
    )
}

/// One Prometheus metric family: its name (after `stonfs_`), type, help and samples.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, f64)>,
}

impl Family {
    fn plain(name: &'static str, kind: &'static str, help: &'static str, value: f64) -> Family {
        Family::labelled(name, kind, help, vec![(String::new(), value)])
    }

    fn labelled(
        name: &'static str,
        kind: &'static str,
        help: &'static str,
        samples: Vec<(String, f64)>,
    ) -> Family {
        Family {
            name,
            kind,
            help,
            samples,
        }
    }
}

fn micros(value: u64) -> String {
    match value {
        0 => "-".to_string(),
        v if v < 1000 => format!("{v}us"),
        v if v < 1_000_000 => format!("{:.1}ms", v as f64 / 1e3),
        v => format!("{:.2}s", v as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_split_into_hits_and_misses() {
        let stats = Stats::new(None);
        stats.record_op(Op::Read, "/a", 100, Duration::from_micros(5), true);
        stats.record_op(Op::Read, "/a", 300, Duration::from_millis(5), false);
        let snapshot = stats.snapshot();
        assert_eq!((snapshot.read_hits, snapshot.read_misses), (1, 1));
        assert_eq!(snapshot.byte_hit_ratio, 0.25);
        assert!(snapshot
            .to_prometheus()
            .contains("stonfs_read_hits_total 1"));
    }

    #[test]
    fn quantiles_come_from_the_right_buckets() {
        let histogram = Histogram::new();
        for _ in 0..99 {
            histogram.record(Duration::from_micros(10));
        }
        histogram.record(Duration::from_secs(1));
        assert_eq!(histogram.quantile(0.5), 16);
        assert!(histogram.quantile(0.999) >= 1_000_000);
    }

    #[test]
    fn every_origin_gets_its_own_label_set() {
        let mut snapshot = Snapshot::default();
        for (origin, role, state, requests) in [
            ("http://p1:80/", "active", "healthy", 7),
            ("http://p2:80/", "active", "excluded", 3),
            ("http://o:80/", "standby", "unknown", 0),
        ] {
            snapshot.origins.push(OriginHealth {
                site: "s".into(),
                origin: origin.into(),
                role: role.into(),
                healthy: state == "healthy",
                state: state.into(),
                requests,
                bytes: requests * 100,
                failures: u64::from(state == "excluded") * 3,
                last_error: None,
            });
        }
        let text = snapshot.to_prometheus();
        let p2 = "site=\"s\",origin=\"http://p2:80/\",role=\"active\"";
        for line in [
            format!("stonfs_origin_sent_requests_total{{{p2}}} 3"),
            format!("stonfs_origin_received_bytes_total{{{p2}}} 300"),
            format!("stonfs_origin_failures_total{{{p2}}} 3"),
            format!("stonfs_origin_state{{{p2},state=\"excluded\"}} 1"),
            format!("stonfs_origin_state{{{p2},state=\"healthy\"}} 0"),
            format!("stonfs_origin_healthy{{{p2}}} 0"),
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        let standby = "stonfs_origin_sent_requests_total{site=\"s\",origin=\"http://o:80/\",role=\"standby\"} 0";
        assert!(text.contains(standby), "{text}");
        let summary = snapshot.to_text();
        assert!(
            summary.contains("http://p1:80/ active healthy: 7 requests, 700 bytes, 0 failures"),
            "{summary}"
        );
        assert!(
            summary.contains("http://o:80/ standby unknown"),
            "{summary}"
        );
    }
}
