//! Configuration: defaults, the TOML file, `-o key=value` options, and their validation.
//!
//! Every key goes through [`Config::set`], so the TOML file and `-o` accept exactly the same
//! keys and values, and an unknown key is rejected in one place with its name.
//!
//! Depends on `base` only.

mod keys;
mod media;
mod origins;
mod parse;
mod ttl;

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::base::{Invalidation, ZeroMessageOpens};

pub use keys::{keys_help, KeyDoc, KEYS};
pub use media::{FaststartRule, MediaConfig, MediaFormat};
pub use origins::{cache_folder_name, parse_origin_list, redact_url, Balance, Origin, Vhost};
pub use parse::{parse_duration, parse_size};
pub use ttl::TtlRule;

fn parse_zero_message_opens(key: &str, value: &str) -> Result<ZeroMessageOpens, ConfigError> {
    if value.eq_ignore_ascii_case("auto") {
        return Ok(ZeroMessageOpens::Auto);
    }
    match parse_bool(key, value) {
        Ok(true) => Ok(ZeroMessageOpens::On),
        Ok(false) => Ok(ZeroMessageOpens::Off),
        Err(_) => Err(bad(key, format!("`{value}` is not auto, true or false"))),
    }
}

use media::{
    faststart_rule_from_table, parse_extensions, parse_faststart_rule, parse_max_moov,
    parse_param_name,
};
use parse::*;
use ttl::{parse_ttl_rule, ttl_rule_from_table};

/// Where the daemon looks for a config file when no ORIGIN is given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/ston-fs/ston-fs.toml";

/// Largest `small_object_max`: a packed record holds at most about 500 KiB, and objects
/// this big already amortise a file of their own.
pub const MAX_SMALL_OBJECT: u64 = 256 << 10;

/// A configuration or command-line mistake, reported to the user before anything is mounted.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("unknown config key `{0}`")]
    UnknownKey(String),
    #[error("bad value for `{key}`: {reason}")]
    BadValue { key: String, reason: String },
    #[error("bad origin URL `{url}`: {reason}")]
    BadOrigin { url: String, reason: String },
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
}

fn bad(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::BadValue {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// When an origin is taken out of rotation and when it comes back.
#[derive(Debug, Clone)]
pub struct HealthPolicy {
    /// Consecutive failures (timeouts, connection errors, 5xx) that exclude an origin.
    pub fail_threshold: u32,
    /// Consecutive good background probes that readmit it.
    pub recover_threshold: u32,
    pub probe_interval: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            fail_threshold: 3,
            recover_threshold: 5,
            probe_interval: Duration::from_secs(10),
        }
    }
}

/// An extra request header; its value is a secret and never printed.
#[derive(Clone)]
pub struct ExtraHeader {
    pub name: String,
    pub value: String,
}

impl std::fmt::Debug for ExtraHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: <redacted>", self.name)
    }
}

/// The complete, validated configuration of one mount.
#[derive(Debug, Clone)]
pub struct Config {
    /// Single-origin mode (the mount root is the origin's root): equivalent origins that
    /// requests spread over. Empty in virtual-host mode.
    pub origins: Vec<Origin>,
    /// Single-origin mode: origins tried only while every one of `origins` is excluded.
    pub standby: Vec<Origin>,
    /// How requests spread over the origins (a vhost may choose its own).
    pub balance: Balance,
    /// This edge's name, sent as `Via: 1.1 NAME (ston-fs)` with every origin request.
    pub via: Option<String>,
    /// Virtual-host mode: the mount root lists these hosts.
    pub vhosts: Vec<Vhost>,
    pub cache_dir: PathBuf,
    pub block_size: u64,
    pub max_cache_size: u64,
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub connect_timeout: Duration,
    pub receive_timeout: Duration,
    pub allow_other: bool,
    pub default_permissions: bool,
    pub uid: u32,
    pub gid: u32,
    pub ca_file: Option<PathBuf>,
    pub headers: Vec<ExtraHeader>,
    pub file_status: Vec<u16>,
    pub dir_status: Vec<u16>,
    pub fuse_threads: usize,
    pub log_file: Option<PathBuf>,
    pub health: HealthPolicy,
    /// Per-path TTLs; the first matching rule wins over Cache-Control and `ttl`.
    pub ttl_rules: Vec<TtlRule>,
    pub ignore_cache_control: bool,
    /// What `unlink()` of a cached file does.
    pub unlink: Invalidation,
    /// A manifest at the origin (one path a line, or JSON) listing every file, used for
    /// directory listings instead of index pages.
    pub manifest: Option<String>,
    /// Answer any path component without a dot as a directory, without asking the origin.
    pub dot_dir: bool,
    /// Where file-system calls are logged, one line each.
    pub access_log: Option<PathBuf>,
    /// Loopback address of the Prometheus endpoint (`/metrics`).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Memory all open files together may hold in prefetched, not yet stored blocks.
    pub readahead_budget: u64,
    /// Largest read-ahead window of one open file.
    pub readahead_max: u64,
    /// Let the kernel read wholly cached files straight from the cache (FUSE passthrough).
    pub passthrough: bool,
    /// Files at least this big that are not wholly cached are opened for direct I/O; 0: never.
    pub direct_io_min_size: u64,
    /// Whether opens and closes cost no message to the daemon (the kernel keeps the page
    /// cache and serves hot files alone; passthrough and direct I/O are then off).
    pub zero_message_opens: ZeroMessageOpens,
    /// Objects up to this size go to the packed small-object store; 0 turns it off.
    pub small_object_max: u64,
    /// Percent of `max_cache_size` the packed store may take at most.
    pub small_object_share: u64,
    /// Memory the packed store's index may take (16 bytes an object): bounds the count of
    /// small objects cached, as `max_cache_size` bounds their bytes.
    pub index_memory_limit: u64,
    /// Largest object size an origin may claim; above it the object answers EIO.
    pub max_object_size: u64,
    /// Largest body read to learn the size of an answer that has no Content-Length.
    pub max_unsized_object: u64,
    /// One deadline for every file-system call that needs the origin, over all retries and
    /// origins; `None`: `connect_timeout + receive_timeout`.
    pub request_timeout: Option<Duration>,
    /// An answer's body slower than this many bytes a second over `low_speed_time` is a
    /// failure (curl's `--speed-limit`); 0 turns the rule off.
    pub low_speed_limit: u64,
    pub low_speed_time: Duration,
    /// SHA-256 fingerprints of origin certificates trusted as they are (self-signed ones too).
    pub tls_pins: Vec<[u8; 32]>,
    /// How long a directory listing is used before the origin is asked again.
    pub listing_ttl: Duration,
    /// Mounted read-only (`-o ro`): `mount` shows `ro`, and even `unlink()` is refused.
    pub read_only: bool,
    /// MP4 files: faststart presentation and trimmed clips.
    pub media: MediaConfig,
}

impl Config {
    /// The deadline of one file-system call that needs the origin.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
            .unwrap_or(self.connect_timeout + self.receive_timeout)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            origins: Vec::new(),
            standby: Vec::new(),
            balance: Balance::RoundRobin,
            via: None,
            vhosts: Vec::new(),
            cache_dir: PathBuf::from("/var/cache/ston-fs"),
            block_size: 1 << 20,
            max_cache_size: 10 << 30,
            ttl: Duration::from_secs(1800),
            negative_ttl: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(3),
            receive_timeout: Duration::from_secs(10),
            allow_other: false,
            default_permissions: true,
            uid: 0,
            gid: 0,
            ca_file: None,
            headers: Vec::new(),
            file_status: vec![200, 201, 202, 203, 204, 205, 206],
            dir_status: vec![301, 302, 403],
            fuse_threads: 8,
            log_file: None,
            health: HealthPolicy::default(),
            ttl_rules: Vec::new(),
            ignore_cache_control: false,
            unlink: Invalidation::Purge,
            access_log: None,
            manifest: None,
            dot_dir: false,
            metrics_addr: None,
            readahead_budget: 128 << 20,
            readahead_max: 32 << 20,
            passthrough: true,
            direct_io_min_size: 32 << 20,
            zero_message_opens: ZeroMessageOpens::Auto,
            small_object_max: 64 << 10,
            small_object_share: 50,
            index_memory_limit: 256 << 20,
            max_object_size: 1 << 40,
            max_unsized_object: 64 << 20,
            request_timeout: None,
            low_speed_limit: 16 << 10,
            low_speed_time: Duration::from_secs(3),
            tls_pins: Vec::new(),
            listing_ttl: Duration::from_secs(60),
            read_only: true,
            media: MediaConfig::default(),
        }
    }
}

/// Keys that add to a list each time they are given, so they may repeat.
const LIST_KEYS: &[&str] = &[
    "header",
    "headers",
    "header_file",
    "ttl_rule",
    "tls_pin",
    "mp4_faststart_rule",
];

/// Mount words that fstab, mount(8) and systemd pass along; they need no action from us.
const IGNORED_MOUNT_WORDS: &[&str] = &[
    "_netdev", "nofail", "noauto", "auto", "user", "nouser", "users", "defaults", "nodev",
    "nosuid", "noexec", "exec", "dev", "suid", "noatime", "relatime", "atime",
];

impl Config {
    /// Applies one `key = value` setting, from `-o` or from the TOML file.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let value = value.trim();
        let handled = self.set_origin_key(key, value)?
            || self.set_cache_key(key, value)?
            || self.set_timing_key(key, value)?
            || self.set_mount_key(key, value)?
            || self.set_service_key(key, value)?
            || self.set_media_key(key, value)?;
        if handled {
            Ok(())
        } else {
            Err(ConfigError::UnknownKey(key.to_string()))
        }
    }

    /// Where requests go and how they are asked and checked.
    fn set_origin_key(&mut self, key: &str, value: &str) -> Result<bool, ConfigError> {
        match key {
            "origin" | "origins" => self.origins = parse_origin_list(value)?,
            "standby" => self.standby = parse_origin_list(value)?,
            "balance" => self.balance = value.parse().map_err(|e: String| bad(key, e))?,
            "via" => self.via = Some(parse_via(key, value)?),
            "manifest" => {
                self.manifest = Some(format!(
                    "/{}",
                    nonempty(key, value)?.trim_start_matches('/')
                ))
            }
            "ca_file" => self.ca_file = Some(PathBuf::from(nonempty(key, value)?)),
            "tls_pin" => self.tls_pins.push(parse_pin(value)?),
            "header" | "headers" => self.headers.push(parse_header(value)?),
            "header_file" => self.headers.extend(read_header_file(value)?),
            "file_status" => self.file_status = parse_status_list(key, value)?,
            "dir_status" => self.dir_status = parse_status_list(key, value)?,
            "origin_fail_threshold" => self.health.fail_threshold = parse_count(key, value)?,
            "origin_recover_threshold" => self.health.recover_threshold = parse_count(key, value)?,
            "origin_probe_interval" => self.health.probe_interval = parse_timeout(key, value)?,
            "max_object_size" => self.max_object_size = parse_size(key, value)?,
            "max_unsized_object" => self.max_unsized_object = parse_size(key, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The cache on disk and in memory, and how reads use it.
    fn set_cache_key(&mut self, key: &str, value: &str) -> Result<bool, ConfigError> {
        match key {
            "cache_dir" => self.cache_dir = PathBuf::from(nonempty(key, value)?),
            "block_size" => self.block_size = parse_block_size(key, value)?,
            "max_cache_size" => self.max_cache_size = parse_size(key, value)?,
            "readahead_budget" => self.readahead_budget = parse_size_or_zero(key, value)?,
            "readahead_max" => self.readahead_max = parse_size_or_zero(key, value)?,
            "passthrough" => self.passthrough = parse_bool(key, value)?,
            "zero_message_opens" => self.zero_message_opens = parse_zero_message_opens(key, value)?,
            "small_object_max" => self.small_object_max = parse_size_or_zero(key, value)?,
            "small_object_share" => self.small_object_share = parse_percent(key, value)?,
            "index_memory_limit" => self.index_memory_limit = parse_size(key, value)?,
            "direct_io_min_size" => self.direct_io_min_size = parse_size_or_zero(key, value)?,
            "unlink" => self.unlink = value.parse().map_err(|e: String| bad(key, e))?,
            "dot_dir" => self.dot_dir = parse_bool(key, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Freshness and the time limits of origin requests.
    fn set_timing_key(&mut self, key: &str, value: &str) -> Result<bool, ConfigError> {
        match key {
            "ttl" => self.ttl = parse_duration(key, value)?,
            "negative_ttl" => self.negative_ttl = parse_duration(key, value)?,
            "listing_ttl" => self.listing_ttl = parse_duration(key, value)?,
            "ttl_rule" => self.ttl_rules.push(parse_ttl_rule(value)?),
            "ignore_cache_control" => self.ignore_cache_control = parse_bool(key, value)?,
            "connect_timeout" => self.connect_timeout = parse_timeout(key, value)?,
            "receive_timeout" => self.receive_timeout = parse_timeout(key, value)?,
            "request_timeout" => self.request_timeout = Some(parse_timeout(key, value)?),
            "low_speed_limit" => self.low_speed_limit = parse_size_or_zero(key, value)?,
            "low_speed_time" => self.low_speed_time = parse_timeout(key, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// How the mount looks to local programs.
    fn set_mount_key(&mut self, key: &str, value: &str) -> Result<bool, ConfigError> {
        match key {
            "allow_other" => self.allow_other = parse_bool(key, value)?,
            "default_permissions" => self.default_permissions = parse_bool(key, value)?,
            "read_only" => self.read_only = parse_bool(key, value)?,
            "uid" => self.uid = parse_user(key, value)?,
            "gid" => self.gid = parse_group(key, value)?,
            "fuse_threads" => {
                self.fuse_threads = parse_number(key, value)?;
                if !(1..=64).contains(&self.fuse_threads) {
                    return Err(bad(key, "must be between 1 and 64"));
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Logs, metrics and other operations settings.
    fn set_service_key(&mut self, key: &str, value: &str) -> Result<bool, ConfigError> {
        match key {
            "log_file" => self.log_file = Some(PathBuf::from(nonempty(key, value)?)),
            "access_log" => self.access_log = Some(PathBuf::from(nonempty(key, value)?)),
            "metrics_addr" => self.metrics_addr = Some(parse_metrics_addr(key, value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// How MP4 files are presented: faststart and trimmed clips.
    fn set_media_key(&mut self, key: &str, value: &str) -> Result<bool, ConfigError> {
        let media = &mut self.media;
        match key {
            "mp4_faststart" => media.faststart = parse_bool(key, value)?,
            "mp4_faststart_rule" => media.faststart_rules.push(parse_faststart_rule(value)?),
            "mp4_trim" => media.trim = parse_bool(key, value)?,
            "mp4_start_param" => media.start_param = parse_param_name(key, value)?,
            "mp4_end_param" => media.end_param = parse_param_name(key, value)?,
            "mp4_max_moov" => media.max_moov = parse_max_moov(key, value)?,
            "mp4_extensions" => media.extensions = parse_extensions(key, value)?,
            "mp3_extensions" => media.mp3_extensions = parse_extensions(key, value)?,
            "flv_extensions" => media.flv_extensions = parse_extensions(key, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Applies a comma-separated fstab-style option string (`-o a=b,c`). A key given twice
    /// is a mistake (which one was meant?), except the keys that add to a list.
    pub fn apply_mount_options(&mut self, options: &str) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for word in split_mount_options(options) {
            if word.trim().is_empty() {
                continue;
            }
            let (key, value) = match word.split_once('=') {
                Some((key, value)) => (key.trim(), Some(value)),
                None => (word.trim(), None),
            };
            if key.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "option `{word}` has no key (expected key=value)"
                )));
            }
            if !LIST_KEYS.contains(&key) && !seen.insert(key.to_string()) {
                return Err(bad(key, "given more than once"));
            }
            self.apply_mount_word(key, value)?;
        }
        Ok(())
    }

    fn apply_mount_word(&mut self, key: &str, value: Option<&str>) -> Result<(), ConfigError> {
        match (key, value) {
            ("ro", None) => self.read_only = true,
            ("rw", None) => self.read_only = false,
            (word, None) if IGNORED_MOUNT_WORDS.contains(&word) => {}
            (word, _) if word.starts_with("x-systemd.") => {}
            ("allow_other" | "default_permissions", None) => self.set(key, "true")?,
            ("allow_root", None) => self.allow_other = true,
            (_, Some(value)) => self.set(key, value)?,
            (_, None) => {
                // A bare word that is a real key still needs a value; anything else is unknown.
                let mut probe = Config::default();
                return match probe.set(key, "") {
                    Err(ConfigError::UnknownKey(k)) => Err(ConfigError::UnknownKey(k)),
                    _ => Err(bad(key, "needs a value (key=value)")),
                };
            }
        }
        Ok(())
    }

    /// Reads a TOML config file; keys are the same as for `-o`.
    pub fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let file_error = |reason: String| ConfigError::File {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        // toml's message names the line, shows it, and says what was expected there.
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| file_error(e.to_string().trim_end().to_string()))?;
        self.apply_table(&table)
            .map_err(|e| file_error(e.to_string()))
    }

    fn apply_table(&mut self, table: &toml::Table) -> Result<(), ConfigError> {
        for (key, value) in table {
            match (key.as_str(), value) {
                ("ttl_rule", toml::Value::Array(items)) => {
                    for item in tables_of(key, items)? {
                        self.ttl_rules.push(ttl_rule_from_table(item)?);
                    }
                }
                ("mp4_faststart_rule", toml::Value::Array(items)) => {
                    for item in tables_of(key, items)? {
                        let rule = faststart_rule_from_table(item)?;
                        self.media.faststart_rules.push(rule);
                    }
                }
                (
                    "mp4_extensions" | "mp3_extensions" | "flv_extensions",
                    toml::Value::Array(items),
                ) => {
                    let words = items
                        .iter()
                        .map(|item| toml_scalar(key, item))
                        .collect::<Result<Vec<_>, _>>()?;
                    self.set(key, &words.join(":"))?
                }
                ("vhost", toml::Value::Array(items)) => {
                    for item in tables_of(key, items)? {
                        self.vhosts.push(parse_vhost(item)?);
                    }
                }
                ("origins" | "origin", value @ toml::Value::Array(_)) => {
                    self.origins = parse_origin_value(key, value)?
                }
                ("standby", value @ toml::Value::Array(_)) => {
                    self.standby = parse_origin_value(key, value)?
                }
                ("headers", toml::Value::Array(items)) => {
                    for item in items {
                        self.set(key, &toml_scalar(key, item)?)?;
                    }
                }
                ("headers", other) => {
                    let found = other.type_str();
                    let reason = format!("expected a list like [\"Name: value\"], found {found}");
                    return Err(bad(key, reason));
                }
                (_, toml::Value::Array(items)) if key.ends_with("_status") => {
                    self.set_status_list(key, items)?
                }
                _ => self.set(key, &toml_scalar(key, value)?)?,
            }
        }
        Ok(())
    }

    /// `dir_status = [301, 403]`: replaces the default list.
    fn set_status_list(&mut self, key: &str, items: &[toml::Value]) -> Result<(), ConfigError> {
        self.set(key, "")?; // validates the key and clears the default list
        let codes = items
            .iter()
            .map(|item| toml_scalar(key, item))
            .collect::<Result<Vec<_>, _>>()?;
        self.set(key, &codes.join(":"))
    }

    /// Checks the settings as a whole once every source has been applied.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (self.origins.is_empty(), self.vhosts.is_empty()) {
            (true, true) => Err(ConfigError::Invalid(
                "no origin: give ORIGIN on the command line, `origin = \"...\"` or [[vhost]] tables in the config".into(),
            )),
            (false, false) => Err(ConfigError::Invalid(
                "give either a single origin or [[vhost]] tables, not both".into(),
            )),
            _ => Ok(()),
        }?;
        self.validate_standby()?;
        if self.max_cache_size < 4 * self.block_size {
            return Err(bad(
                "max_cache_size",
                format!(
                    "must hold at least 4 blocks ({} bytes)",
                    4 * self.block_size
                ),
            ));
        }
        if self.small_object_max > MAX_SMALL_OBJECT {
            return Err(bad(
                "small_object_max",
                format!("must be at most {MAX_SMALL_OBJECT} bytes (256K)"),
            ));
        }
        let overlap = self
            .file_status
            .iter()
            .find(|s| self.dir_status.contains(s));
        if let Some(status) = overlap {
            return Err(bad("dir_status", format!("{status} is also a file_status")));
        }
        if self.media.start_param == self.media.end_param {
            return Err(bad("mp4_end_param", "must differ from mp4_start_param"));
        }
        if let Some(ext) = self.media.shared_extension() {
            return Err(bad(
                "mp3_extensions",
                format!("`{ext}` is listed for two formats"),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// A standby belongs to the origins it stands in for: the global one to the global
    /// origins, a vhost's to that vhost. An origin cannot be both active and standby.
    fn validate_standby(&self) -> Result<(), ConfigError> {
        if !self.standby.is_empty() && self.origins.is_empty() {
            return Err(bad(
                "standby",
                "with [[vhost]] tables, give `standby` inside each [[vhost]]",
            ));
        }
        let lists = std::iter::once((&self.origins, &self.standby))
            .chain(self.vhosts.iter().map(|v| (&v.origins, &v.standby)));
        for (actives, standby) in lists {
            if let Some(both) = standby.iter().find(|s| actives.contains(s)) {
                let reason = format!("{both} is listed both as an origin and as a standby");
                return Err(bad("standby", reason));
            }
        }
        Ok(())
    }
}

/// Splits `-o` text on commas, keeping commas that belong to a header value
/// (`header=Accept: a, b` stays whole until the next `key=` word).
fn split_mount_options(options: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for piece in options.split(',') {
        let looks_like_new_word = piece.contains('=') || !piece.starts_with(' ');
        match words.last_mut() {
            Some(last) if last.starts_with("header") && !looks_like_new_word => {
                last.push(',');
                last.push_str(piece);
            }
            _ => words.push(piece.to_string()),
        }
    }
    words
}

fn parse_vhost(table: &toml::Table) -> Result<Vhost, ConfigError> {
    let mut name = None;
    let mut aliases = Vec::new();
    let mut origins = Vec::new();
    let mut mp4_faststart = None;
    let mut standby = Vec::new();
    let mut balance = None;
    for (key, value) in table {
        match key.as_str() {
            "name" => name = Some(toml_scalar("vhost.name", value)?),
            "mp4_faststart" => {
                let text = toml_scalar("vhost.mp4_faststart", value)?;
                mp4_faststart = Some(parse_bool("vhost.mp4_faststart", &text)?);
            }
            "origin" | "origins" => origins.extend(parse_origin_value("vhost.origin", value)?),
            "standby" => standby.extend(parse_origin_value("vhost.standby", value)?),
            "balance" => {
                let text = toml_scalar("vhost.balance", value)?;
                let parsed = text.parse::<Balance>();
                balance = Some(parsed.map_err(|e| bad("vhost.balance", e))?);
            }
            "aliases" => {
                let items = value
                    .as_array()
                    .ok_or_else(|| bad("vhost.aliases", "must be a list of names"))?;
                for item in items {
                    aliases.push(toml_scalar("vhost.aliases", item)?);
                }
            }
            other => return Err(ConfigError::UnknownKey(format!("vhost.{other}"))),
        }
    }
    let name = name.ok_or_else(|| bad("vhost", "every [[vhost]] needs a `name`"))?;
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(bad("vhost.name", format!("`{name}` is not a host name")));
    }
    if origins.is_empty() {
        return Err(bad("vhost", format!("vhost `{name}` needs an `origin`")));
    }
    Ok(Vhost {
        name,
        aliases,
        origins,
        mp4_faststart,
        standby,
        balance,
    })
}

/// The tables of a TOML array of tables (`[[vhost]]`, `[[ttl_rule]]`).
fn tables_of<'a>(key: &str, items: &'a [toml::Value]) -> Result<Vec<&'a toml::Table>, ConfigError> {
    items
        .iter()
        .map(|item| {
            let reason = format!("each [[{key}]] must be a table");
            item.as_table().ok_or_else(|| bad(key, reason))
        })
        .collect()
}

/// An origin value in TOML: a string (one URL or a list) or an array of URLs.
fn parse_origin_value(key: &str, value: &toml::Value) -> Result<Vec<Origin>, ConfigError> {
    match value {
        toml::Value::Array(items) => {
            let mut origins = Vec::new();
            for item in items {
                origins.extend(parse_origin_list(&toml_scalar(key, item)?)?);
            }
            Ok(origins)
        }
        other => parse_origin_list(&toml_scalar(key, other)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_documented_and_accepted() {
        let readme = include_str!("../../README.md");
        for key in KEYS {
            let row = format!("| `{}`", key.key);
            let in_table = readme.contains(&row) || readme.contains(&format!(", `{}` |", key.key));
            assert!(in_table, "README's config table lacks `{}`", key.key);
            let err = Config::default().set(key.key, "");
            assert!(
                !matches!(err, Err(ConfigError::UnknownKey(_))),
                "`{}` is documented but not accepted",
                key.key
            );
        }
    }

    #[test]
    fn duplicate_and_empty_keys_are_refused() {
        let err = Config::default()
            .apply_mount_options("ttl=5,ttl=10")
            .unwrap_err();
        assert!(err.to_string().contains("more than once"), "{err}");
        assert!(Config::default().apply_mount_options("=5").is_err());
        let mut config = Config::default();
        config
            .apply_mount_options("header=A: 1,header=B: 2,ro")
            .unwrap();
        assert_eq!(config.headers.len(), 2);
        assert!(config.read_only);
    }

    #[test]
    fn origin_urls_need_a_scheme_and_a_host() {
        let err = Origin::parse("origin.example.com").unwrap_err();
        assert!(
            err.to_string().contains("http://origin.example.com/"),
            "{err}"
        );
        assert!(Origin::parse("http:///nohost").is_err());
    }

    #[test]
    fn pins_take_openssl_fingerprints() {
        let hex = "AB:".repeat(31) + "AB";
        assert_eq!(parse_pin(&format!("sha256:{hex}")).unwrap(), [0xAB; 32]);
        assert_eq!(parse_pin(&"cd".repeat(32)).unwrap(), [0xCD; 32]);
        assert!(parse_pin("sha256:abc").is_err());
    }

    #[test]
    fn toml_type_errors_name_the_key() {
        let table: toml::Table = "ttl = [1, 2]".parse().unwrap();
        let err = Config::default().apply_table(&table).unwrap_err();
        assert!(err.to_string().contains("`ttl`"), "{err}");
        let table: toml::Table = "headers = \"X: y\"".parse().unwrap();
        let err = Config::default().apply_table(&table).unwrap_err();
        assert!(err.to_string().contains("headers"), "{err}");
    }

    #[test]
    fn users_and_groups_by_name() {
        assert_eq!(parse_user("uid", "root").unwrap(), 0);
        assert_eq!(parse_group("gid", "root").unwrap(), 0);
        assert_eq!(parse_user("uid", "33").unwrap(), 33);
        assert!(parse_user("uid", "no-such-user-here").is_err());
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("k", "10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("k", "512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("k", "1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("k", "4096").unwrap(), 4096);
        assert!(parse_size("k", "ten").is_err());
        assert!(parse_size("k", "99999999T").is_err());
    }

    #[test]
    fn unknown_keys_are_named() {
        let mut config = Config::default();
        let err = config.apply_mount_options("ttl=5,bogus_key=1").unwrap_err();
        assert!(err.to_string().contains("bogus_key"), "{err}");
        let err = config.apply_mount_options("frobnicate").unwrap_err();
        assert!(err.to_string().contains("frobnicate"), "{err}");
    }

    #[test]
    fn mount_words_are_accepted() {
        let mut config = Config::default();
        config
            .apply_mount_options("ro,_netdev,nofail,noauto,user,x-systemd.automount,allow_other,default_permissions,max_cache_size=1G")
            .unwrap();
        assert!(config.allow_other);
        assert_eq!(config.max_cache_size, 1 << 30);
    }

    #[test]
    fn header_values_may_hold_commas() {
        let mut config = Config::default();
        config
            .apply_mount_options("header=Accept: a, b,ttl=7")
            .unwrap();
        assert_eq!(config.headers[0].value, "a, b");
        assert_eq!(config.ttl, Duration::from_secs(7));
    }

    #[test]
    fn origins_keep_their_prefix() {
        let origin = Origin::parse("http://Example.com:8080/account/dir/").unwrap();
        assert_eq!(origin.base, "http://example.com:8080");
        assert_eq!(origin.prefix, "/account/dir");
        assert!(Origin::parse("ftp://example.com/").is_err());
        assert!(Origin::parse("not a url").is_err());
        assert!(Origin::parse("http://user:secret@example.com/").is_err());
    }

    #[test]
    fn origin_lists_take_commas_and_arrays() {
        let mut config = Config::default();
        config.set("origin", "http://a:1/,http://b:2/x/").unwrap();
        assert_eq!(config.origins.len(), 2);
        assert_eq!(config.origins[1].prefix, "/x");
        let table: toml::Table = r#"origins = ["http://c/", "http://d/"]"#.parse().unwrap();
        config.apply_table(&table).unwrap();
        assert_eq!(config.origins[0].base, "http://c");
        assert!(config.set("origin", "http://a/,ftp://b/").is_err());
    }

    #[test]
    fn ttl_rules_match_globs() {
        let rule = parse_ttl_rule("/live/*.m3u8:5").unwrap();
        assert_eq!(rule.ttl, Duration::from_secs(5));
        assert!(rule.matches("/live/a/b.m3u8"));
        assert!(!rule.matches("/vod/a.m3u8"));
        assert!(!rule.matches("/live/a.ts"));
        let table: toml::Table = "[[ttl_rule]]\npattern = \"/img/?.png\"\nttl = 60"
            .parse()
            .unwrap();
        let mut config = Config::default();
        config.apply_table(&table).unwrap();
        assert!(config.ttl_rules[0].matches("/img/a.png"));
        assert!(!config.ttl_rules[0].matches("/img/ab.png"));
    }

    #[test]
    fn wildcard_aliases_match_subdomains_only() {
        let vhost = Vhost {
            name: "example.com".into(),
            aliases: vec!["*.example.com".into(), "www.other.org".into()],
            origins: vec![Origin::parse("http://127.0.0.1/").unwrap()],
            mp4_faststart: None,
            standby: Vec::new(),
            balance: None,
        };
        assert!(vhost.answers_to("example.com"));
        assert!(vhost.answers_to("img.example.com"));
        assert!(vhost.answers_to("WWW.other.org"));
        assert!(!vhost.answers_to("badexample.com"));
        assert!(!vhost.answers_to(".example.com"));
    }

    #[test]
    fn toml_files_use_the_same_keys() {
        let mut config = Config::default();
        let table: toml::Table = r#"
            origin = "http://127.0.0.1:1/"
            block_size = "64K"
            ttl = 60
            dir_status = [301, 403]
            headers = ["Authorization: Bearer x"]
            mp4_extensions = ["mp4", ".M4A"]
            flv_extensions = ["flv", "F4V"]
            [[mp4_faststart_rule]]
            pattern = "/raw/*"
            faststart = false
            [[vhost]]
            name = "a.com"
            origin = "http://127.0.0.1:2/"
            mp4_faststart = false
        "#
        .parse()
        .unwrap();
        config.apply_table(&table).unwrap();
        assert_eq!(config.block_size, 64 << 10);
        assert_eq!(config.dir_status, vec![301, 403]);
        assert_eq!(config.vhosts.len(), 1);
        assert_eq!(config.vhosts[0].mp4_faststart, Some(false));
        assert_eq!(config.media.extensions, ["mp4", "m4a"]);
        assert_eq!(config.media.flv_extensions, ["flv", "f4v"]);
        assert!(!config.media.faststart_for(None, "/raw/a.mp4"));
        assert!(config.validate().is_err(), "origin and vhosts together");
        let table: toml::Table = "cache_size = 5".parse().unwrap();
        let err = Config::default().apply_table(&table).unwrap_err();
        assert!(err.to_string().contains("cache_size"));
    }

    #[test]
    fn balance_standby_and_via_are_set_globally_and_per_vhost() {
        let mut config = Config::default();
        config.set("origin", "http://a/,http://b/").unwrap();
        config
            .apply_mount_options("standby=http://c/,balance=hash,via=edge-1.example:8080")
            .unwrap();
        assert_eq!(config.balance, Balance::Hash);
        assert_eq!(config.standby.len(), 1);
        assert_eq!(config.via.as_deref(), Some("edge-1.example:8080"));
        config.validate().unwrap();
        assert!(config.set("balance", "random").is_err());
        for bad_name in ["", "two words", "a,b", "x\r\nInjected: 1", "(x)", "é"] {
            assert!(
                config.set("via", bad_name).is_err(),
                "via={bad_name:?} accepted"
            );
        }

        let table: toml::Table = r#"
            balance = "hash"
            [[vhost]]
            name = "a.com"
            origins = ["http://p1/", "http://p2/"]
            standby = ["http://origin/"]
            balance = "round_robin"
            [[vhost]]
            name = "b.com"
            origin = "http://p1/"
        "#
        .parse()
        .unwrap();
        let mut config = Config::default();
        config.apply_table(&table).unwrap();
        config.validate().unwrap();
        assert_eq!(config.vhosts[0].standby.len(), 1);
        assert_eq!(config.vhosts[0].balance, Some(Balance::RoundRobin));
        assert_eq!(
            config.vhosts[1].balance, None,
            "b.com takes the global balance"
        );
    }

    #[test]
    fn standbys_belong_to_their_origins() {
        let mut config = Config::default();
        config.set("origin", "http://a/,http://b/").unwrap();
        config.set("standby", "http://b/").unwrap();
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("both"), "{err}");
        let table: toml::Table = r#"
            standby = ["http://origin/"]
            [[vhost]]
            name = "a.com"
            origin = "http://p1/"
        "#
        .parse()
        .unwrap();
        let mut config = Config::default();
        config.apply_table(&table).unwrap();
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("inside each [[vhost]]"), "{err}");
    }
}
