//! The config keys as `--help` and the README describe them.

/// One config key as `--help` and the README describe it: name, default, meaning.
pub struct KeyDoc {
    pub key: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

const fn doc(key: &'static str, default: &'static str, meaning: &'static str) -> KeyDoc {
    KeyDoc {
        key,
        default,
        meaning,
    }
}

/// Every config key, in the README's order. A unit test keeps this, [`Config::set`] and the
/// README's table in step.
pub const KEYS: &[KeyDoc] = &[
    doc("origin", "-", "origin URL, or a comma-separated list of equivalent origins (TOML: `origins = [...]`)"),
    doc("standby", "-", "origins used only while every origin is excluded (a list like `origin`)"),
    doc("balance", "round_robin", "how requests spread over the origins: round_robin, or hash (one origin per path)"),
    doc("via", "-", "edge name sent as `Via: 1.1 NAME (ston-fs)` with every origin request"),
    doc("cache_dir", "/var/cache/ston-fs", "cache location; one subfolder per origin"),
    doc("block_size", "1M", "cache and fetch unit; a multiple of 4K from 4K to 64M"),
    doc("max_cache_size", "10G", "hard cap on the cache directory's disk use"),
    doc("max_object_size", "1T", "largest object size an origin may claim; larger objects answer EIO"),
    doc("max_unsized_object", "64M", "largest answer without Content-Length read whole to learn its size"),
    doc("ttl", "1800", "seconds an object is fresh before it is revalidated"),
    doc("negative_ttl", "30", "seconds a 404/410 is remembered (by ston-fs and the kernel)"),
    doc("listing_ttl", "60", "seconds a directory listing is used before it is fetched again"),
    doc("connect_timeout", "3", "origin connect timeout; also when a request is hedged to a second origin"),
    doc("receive_timeout", "10", "longest wait for any data from the origin"),
    doc("request_timeout", "connect+receive", "one deadline for a file-system call that needs the origin, over all retries and origins"),
    doc("low_speed_limit", "16K", "bytes/s below which an answer counts as failing (0: off)"),
    doc("low_speed_time", "3", "seconds an answer may stay below low_speed_limit"),
    doc("allow_other", "false", "let users other than the mounting one use the mount (Apache, nginx workers)"),
    doc("default_permissions", "true", "the kernel checks mode bits (files 0444, directories 0555)"),
    doc("uid", "0", "owner shown for every file and directory (a number or a user name)"),
    doc("gid", "0", "group shown for every file and directory (a number or a group name)"),
    doc("read_only", "true", "mount read-only (`-o ro`, the default); `mount` shows ro and unlink() is refused. `-o rw`: unlink() purges"),
    doc("ca_file", "-", "PEM file of extra CAs trusted for https origins, on top of the system roots"),
    doc("tls_pin", "-", "sha256:FINGERPRINT of an origin certificate trusted as it is (self-signed too); may repeat"),
    doc("headers", "-", "request header `Name: value` (TOML list; `-o header=...`); values are never logged"),
    doc("header_file", "-", "file of request headers, one `Name: value` a line; must not be readable by others"),
    doc("file_status", "200..206", "origin statuses that make a path a file (`-o file_status=200:206`)"),
    doc("dir_status", "301, 302, 403", "origin statuses that make a path a directory"),
    doc("fuse_threads", "8", "FUSE dispatch threads"),
    doc("log_file", "-", "where a daemonized ston-fs writes its log (otherwise syslog/the journal)"),
    doc("ignore_cache_control", "false", "ignore the origin's Cache-Control"),
    doc("ttl_rule", "-", "per-path TTL: `-o ttl_rule=/live/*:5` or TOML [[ttl_rule]]"),
    doc("origin_fail_threshold", "3", "consecutive failures that take an origin out of rotation"),
    doc("origin_probe_interval", "10", "seconds between background probes of excluded origins"),
    doc("origin_recover_threshold", "5", "consecutive good probes that readmit an origin"),
    doc("readahead_budget", "128M", "memory all open files together may hold in prefetched blocks"),
    doc("readahead_max", "32M", "largest read-ahead window of one sequentially read file (0: off)"),
    doc("passthrough", "true", "let the kernel read wholly cached files straight from the cache file"),
    doc("zero_message_opens", "auto", "opens and closes send nothing to the daemon: hot files are served by the kernel alone; no passthrough, no direct I/O. auto: from when small files are opened at a high rate"),
    doc("small_object_max", "64K", "objects up to this size are kept as records in the packed store (0: off; at most 256K)"),
    doc("small_object_share", "50", "percent of max_cache_size the packed small-object store may take"),
    doc("index_memory_limit", "256M", "memory of the packed store's index (16 bytes an object): bounds how many small objects are cached"),
    doc("direct_io_min_size", "32M", "files at least this big and not wholly cached use direct I/O (0: never)"),
    doc("unlink", "purge", "what unlink() of a cached file does: purge, expire or hardpurge"),
    doc("manifest", "-", "origin path of a manifest used for directory listings"),
    doc("dot_dir", "false", "answer any path component without a dot as a directory at once"),
    doc("access_log", "-", "file with one line per file-system call (created 0640)"),
    doc("metrics_addr", "-", "loopback address serving Prometheus text at /metrics"),
    doc("mp4_faststart", "true", "present moov-at-end MP4 files with the moov first (also per [[vhost]] and mp4_faststart_rule)"),
    doc("mp4_faststart_rule", "-", "per-path faststart: `-o mp4_faststart_rule=/raw/*:off` or TOML [[mp4_faststart_rule]]"),
    doc("mp4_trim", "true", "serve NAME.mp4?start=S&end=E (and .mp3, .flv) as a clip of that interval"),
    doc("mp4_start_param", "start", "name of the clip start parameter (seconds), for every media format"),
    doc("mp4_end_param", "end", "name of the clip end parameter (seconds), for every media format"),
    doc("mp4_max_moov", "64M", "largest MP4 header (moov) accepted, 4K to 1G; bigger files are served unchanged"),
    doc("mp4_extensions", "mp4:m4v:m4a:mov", "extensions of the files treated as MP4 (TOML: a list)"),
    doc("mp3_extensions", "mp3", "extensions of the files treated as MP3, cut into clips by name (TOML: a list)"),
    doc("flv_extensions", "flv", "extensions of the files treated as FLV, cut into clips by name (TOML: a list)"),
];

/// The key table as `--help` prints it.
pub fn keys_help() -> String {
    let mut text = String::from("Config keys (TOML file and -o key=value take the same keys):\n");
    for key in KEYS {
        text.push_str(&format!(
            "  {:<26} {} [default: {}]\n",
            key.key, key.meaning, key.default
        ));
    }
    text
}
