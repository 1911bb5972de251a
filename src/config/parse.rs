//! Parsers for config values: sizes, durations, booleans, users, headers and pins. Each
//! error names the key it was given for.

use std::path::Path;
use std::time::Duration;

use super::{bad, ConfigError, ExtraHeader};

pub(super) fn nonempty<'a>(key: &str, value: &'a str) -> Result<&'a str, ConfigError> {
    if value.is_empty() {
        Err(bad(key, "must not be empty"))
    } else {
        Ok(value)
    }
}

pub(super) fn parse_number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ConfigError> {
    value
        .parse()
        .map_err(|_| bad(key, format!("`{value}` is not a whole number")))
}

pub(super) fn parse_count(key: &str, value: &str) -> Result<u32, ConfigError> {
    match parse_number::<u32>(key, value)? {
        0 => Err(bad(key, "must be at least 1")),
        n => Ok(n),
    }
}

pub(super) fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "" | "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(bad(key, format!("`{value}` is not true or false"))),
    }
}

/// Parses a byte count with an optional K/M/G/T suffix (binary multiples).
pub fn parse_size(key: &str, value: &str) -> Result<u64, ConfigError> {
    let text = value.trim().to_ascii_uppercase();
    let text = text
        .strip_suffix("IB")
        .or_else(|| text.strip_suffix('B'))
        .unwrap_or(&text);
    let (digits, shift) = match text.chars().last() {
        Some('K') => (&text[..text.len() - 1], 10),
        Some('M') => (&text[..text.len() - 1], 20),
        Some('G') => (&text[..text.len() - 1], 30),
        Some('T') => (&text[..text.len() - 1], 40),
        _ => (text, 0),
    };
    let number: u64 = digits
        .trim()
        .parse()
        .map_err(|_| bad(key, format!("`{value}` is not a size (like 512K, 10G)")))?;
    number
        .checked_mul(1u64 << shift)
        .filter(|n| *n > 0)
        .ok_or_else(|| bad(key, format!("`{value}` is out of range")))
}

/// Like [`parse_size`], but `0` is allowed (it turns a feature off).
pub(super) fn parse_size_or_zero(key: &str, value: &str) -> Result<u64, ConfigError> {
    if value.trim() == "0" {
        Ok(0)
    } else {
        parse_size(key, value)
    }
}

/// Parses a whole percentage from 1 to 100.
pub(super) fn parse_percent(key: &str, value: &str) -> Result<u64, ConfigError> {
    let number: u64 = value
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| bad(key, format!("`{value}` is not a percentage")))?;
    match number {
        1..=100 => Ok(number),
        _ => Err(bad(key, "must be between 1 and 100")),
    }
}

pub(super) fn parse_block_size(key: &str, value: &str) -> Result<u64, ConfigError> {
    let size = parse_size(key, value)?;
    if !(4096..=(64 << 20)).contains(&size) || size % 4096 != 0 {
        return Err(bad(key, "must be a multiple of 4K between 4K and 64M"));
    }
    Ok(size)
}

/// Parses seconds (`30`, `1.5`, `30s`) or milliseconds (`500ms`).
pub fn parse_duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    let text = value.trim();
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else {
        (text.strip_suffix('s').unwrap_or(text), 1.0)
    };
    let seconds: f64 = number
        .trim()
        .parse()
        .map_err(|_| bad(key, format!("`{value}` is not a duration in seconds")))?;
    let seconds = seconds * scale;
    if !seconds.is_finite() || !(0.0..=1e9).contains(&seconds) {
        return Err(bad(key, format!("`{value}` is out of range")));
    }
    Ok(Duration::from_secs_f64(seconds))
}

pub(super) fn parse_timeout(key: &str, value: &str) -> Result<Duration, ConfigError> {
    let duration = parse_duration(key, value)?;
    if duration < Duration::from_millis(10) {
        return Err(bad(key, "must be at least 10ms"));
    }
    Ok(duration)
}

pub(super) fn parse_status_list(key: &str, value: &str) -> Result<Vec<u16>, ConfigError> {
    value
        .split([':', ' ', ';'])
        .filter(|s| !s.is_empty())
        .map(|s| match s.parse::<u16>() {
            Ok(code) if (100..=599).contains(&code) => Ok(code),
            _ => Err(bad(key, format!("`{s}` is not an HTTP status code"))),
        })
        .collect()
}

pub(super) fn parse_metrics_addr(
    key: &str,
    value: &str,
) -> Result<std::net::SocketAddr, ConfigError> {
    let addr: std::net::SocketAddr = value.parse().map_err(|_| {
        bad(
            key,
            format!("`{value}` is not an address like 127.0.0.1:9400"),
        )
    })?;
    if !addr.ip().is_loopback() {
        return Err(bad(key, "must be a loopback address (127.0.0.1 or ::1)"));
    }
    Ok(addr)
}

/// `sha256:AB:CD:...` or plain hex, as `openssl x509 -noout -fingerprint -sha256` prints it.
pub(super) fn parse_pin(value: &str) -> Result<[u8; 32], ConfigError> {
    let text = value.trim();
    let lower = text.to_ascii_lowercase();
    let hex: String = lower
        .strip_prefix("sha256:")
        .or_else(|| lower.strip_prefix("sha256 fingerprint="))
        .unwrap_or(&lower)
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let invalid = || {
        bad(
            "tls_pin",
            "must be a certificate's SHA-256 fingerprint: sha256: and 64 hex digits",
        )
    };
    if hex.len() != 64 {
        return Err(invalid());
    }
    let mut pin = [0u8; 32];
    for (i, byte) in pin.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| invalid())?;
    }
    Ok(pin)
}

/// Request headers from a file, one `Name: value` a line, so that secrets stay out of `ps`
/// and fstab. The file must not be readable by other users.
pub(super) fn read_header_file(value: &str) -> Result<Vec<ExtraHeader>, ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let path = Path::new(nonempty("header_file", value)?);
    let fail = |reason: String| bad("header_file", format!("{}: {reason}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.mode() & 0o077 != 0 {
        return Err(fail(format!(
            "mode {:o} lets other users read it; chmod 600 it",
            meta.mode() & 0o777
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(parse_header)
        .collect()
}

/// A user id, or a user name looked up in the system's user database.
pub(super) fn parse_user(key: &str, value: &str) -> Result<u32, ConfigError> {
    if let Ok(id) = value.parse() {
        return Ok(id);
    }
    lookup_id(value, false).ok_or_else(|| bad(key, format!("no user named `{value}`")))
}

/// A group id, or a group name.
pub(super) fn parse_group(key: &str, value: &str) -> Result<u32, ConfigError> {
    if let Ok(id) = value.parse() {
        return Ok(id);
    }
    lookup_id(value, true).ok_or_else(|| bad(key, format!("no group named `{value}`")))
}

/// The id of a user (or group) name, through libc's reentrant lookups.
pub(super) fn lookup_id(name: &str, group: bool) -> Option<u32> {
    let c_name = std::ffi::CString::new(name).ok()?;
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    if group {
        // SAFETY: zeroed plain-old-data output struct, filled by getgrnam_r.
        let mut entry: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; the buffer's length is passed.
        let rc = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut found,
            )
        };
        (rc == 0 && !found.is_null()).then_some(entry.gr_gid)
    } else {
        // SAFETY: zeroed plain-old-data output struct, filled by getpwnam_r.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; the buffer's length is passed.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut found,
            )
        };
        (rc == 0 && !found.is_null()).then_some(entry.pw_uid)
    }
}

pub(super) fn parse_header(value: &str) -> Result<ExtraHeader, ConfigError> {
    let (name, header_value) = value
        .split_once(':')
        .ok_or_else(|| bad("headers", "must look like `Name: value`"))?;
    let name = name.trim();
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid_name {
        return Err(bad("headers", format!("`{name}` is not a header name")));
    }
    let header_value = header_value.trim();
    if header_value
        .bytes()
        .any(|b| b == b'\r' || b == b'\n' || b == 0)
    {
        return Err(bad(
            "headers",
            format!("the value of `{name}` has a line break"),
        ));
    }
    Ok(ExtraHeader {
        name: name.to_string(),
        value: header_value.to_string(),
    })
}

/// Longest edge name `via` takes.
const MAX_VIA_NAME: usize = 128;

/// An edge name for `Via: 1.1 NAME (ston-fs)`: RFC 9110's `received-by`, a token or a
/// `host[:port]` (IPv6 in brackets). Nothing that could end the header or the entry
/// (white space, commas, parentheses, line breaks) gets through.
pub(super) fn parse_via(key: &str, value: &str) -> Result<String, ConfigError> {
    let name = nonempty(key, value.trim())?;
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:[]".contains(&b);
    if name.len() > MAX_VIA_NAME || !name.bytes().all(allowed) {
        return Err(bad(
            key,
            format!("`{name}` is not an edge name (letters, digits, `.-_:` and the like, at most {MAX_VIA_NAME})"),
        ));
    }
    Ok(name.to_string())
}

pub(super) fn toml_scalar(key: &str, value: &toml::Value) -> Result<String, ConfigError> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(bad(
            key,
            format!(
                "expected a string, number or boolean, found {}",
                other.type_str()
            ),
        )),
    }
}
