//! What an origin's answer says, and the checks it must pass before a byte of it is used.
//!
//! Every number an origin sends (sizes, ranges, lengths) is parsed here, checked against
//! what was asked for and bounded; anything inconsistent is an error, never data.

use std::time::SystemTime;

use bytes::Bytes;
use reqwest::header::{self, HeaderName};

use crate::base::{FsError, FsResult};

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
    pub fn if_range(&self) -> Option<&str> {
        match &self.etag {
            Some(etag) if !etag.starts_with("W/") => Some(etag),
            _ => self.last_modified.as_deref(),
        }
    }

    /// Whether range requests can be pinned to this version. Without a validator, two
    /// answers may come from two versions; the cache then takes each version in one answer.
    pub fn is_pinned(&self) -> bool {
        self.if_range().is_some()
    }

    /// Whether a 206 is about this version. RFC 9110 (15.3.7) has a 206 carry the ETag and
    /// Last-Modified a 200 would: one that drops or changes a validator the version has may
    /// come from another version, and its bytes would splice two versions into one file.
    pub fn matches_partial_answer(&self, answered: &Version) -> bool {
        let etag_agrees = self.etag.is_none() || answered.etag == self.etag;
        let pinned_by_date =
            self.last_modified.is_some() && self.if_range() == self.last_modified.as_deref();
        let date_agrees = !pinned_by_date || answered.last_modified == self.last_modified;
        etag_agrees && date_agrees
    }

    /// Whether a full (200) answer describes this same version: same length when it gives
    /// one, and the same validators.
    pub fn matches_full_answer(&self, answered: &Version) -> bool {
        let size_agrees = answered.size == u64::MAX || answered.size == self.size;
        size_agrees && self.etag == answered.etag && self.last_modified == answered.last_modified
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
    pub fn of(response: &reqwest::Response) -> CacheControl {
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
        /// The object's first bytes: its first block, or the whole object when the answer
        /// had no length and was read whole to learn it.
        head: Bytes,
        cache_control: CacheControl,
    },
    Directory,
    NotFound,
    /// A conditional probe whose validators still match.
    NotModified,
}

pub fn header_text(response: &reqwest::Response, name: HeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

/// Validators and length of an answer (`u64::MAX` when it gives no Content-Length).
pub fn version_of(response: &reqwest::Response) -> Version {
    Version {
        size: response.content_length().unwrap_or(u64::MAX),
        etag: header_text(response, header::ETAG),
        last_modified: header_text(response, header::LAST_MODIFIED),
    }
}

/// Every request asks for `Accept-Encoding: identity`: an encoded body would be served as
/// the file's bytes, so any other encoding is a lie.
pub fn check_encoding(response: &reqwest::Response) -> FsResult<()> {
    match header_text(response, header::CONTENT_ENCODING) {
        None => Ok(()),
        Some(coding) if coding.is_empty() || coding.eq_ignore_ascii_case("identity") => Ok(()),
        Some(coding) => Err(FsError::BadAnswer(format!(
            "Content-Encoding `{coding}` although identity was asked for"
        ))),
    }
}

/// A satisfiable `Content-Range: bytes a-b/total` as a half-open range and the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub start: u64,
    pub end: u64,
    pub total: Option<u64>,
}

/// Parses and checks a 206's Content-Range, and that Content-Length (when given) agrees
/// with it: a body longer or shorter than its range is a lie.
pub fn partial_range(response: &reqwest::Response) -> FsResult<ContentRange> {
    let text = header_text(response, header::CONTENT_RANGE).unwrap_or_default();
    let range = parse_content_range(&text)
        .ok_or_else(|| FsError::BadAnswer(format!("206 with a bad Content-Range `{text}`")))?;
    match response.content_length() {
        Some(length) if length != range.end - range.start => Err(FsError::BadAnswer(format!(
            "Content-Length {length} disagrees with Content-Range `{text}`"
        ))),
        _ => Ok(range),
    }
}

fn parse_content_range(text: &str) -> Option<ContentRange> {
    let spec = text.strip_prefix("bytes ")?.trim();
    let (span, total) = spec.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        number => Some(number.parse::<u64>().ok()?),
    };
    if last < first || last == u64::MAX || total.is_some_and(|t| last >= t) {
        return None;
    }
    Some(ContentRange {
        start: first,
        end: last + 1,
        total,
    })
}

/// A 416 to `bytes=0-…` means an empty file: the total is in `Content-Range: bytes */0`.
pub fn unsatisfiable_version(response: &reqwest::Response) -> FsResult<Version> {
    let text = header_text(response, header::CONTENT_RANGE).unwrap_or_default();
    match text.strip_prefix("bytes */").map(str::trim) {
        Some("0") => Ok(Version {
            size: 0,
            ..version_of(response)
        }),
        _ => Err(FsError::Status(416)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_are_checked() {
        let range = parse_content_range("bytes 0-1023/4096").unwrap();
        assert_eq!((range.start, range.end, range.total), (0, 1024, Some(4096)));
        assert_eq!(parse_content_range("bytes 5-9/*").unwrap().total, None);
        assert!(parse_content_range("bytes 9-5/10").is_none());
        assert!(parse_content_range("bytes 0-10/10").is_none());
        assert!(parse_content_range("bytes 0-18446744073709551615/*").is_none());
        assert!(parse_content_range("items 0-1/2").is_none());
    }

    #[test]
    fn only_validators_pin_a_version() {
        let mut version = Version {
            size: 1,
            etag: None,
            last_modified: None,
        };
        assert!(!version.is_pinned());
        version.etag = Some("W/\"weak\"".into());
        assert!(!version.is_pinned(), "a weak ETag cannot go in If-Range");
        version.last_modified = Some("Tue, 14 Nov 2023 22:13:20 GMT".into());
        assert_eq!(version.if_range(), version.last_modified.as_deref());
    }

    #[test]
    fn a_partial_answer_must_carry_the_validators_it_is_pinned_to() {
        let strong = Version {
            size: 10,
            etag: Some("\"v1\"".into()),
            last_modified: Some("Tue, 14 Nov 2023 22:13:20 GMT".into()),
        };
        assert!(strong.matches_partial_answer(&strong));
        let without_etag = Version {
            etag: None,
            ..strong.clone()
        };
        assert!(
            !strong.matches_partial_answer(&without_etag),
            "ETag dropped"
        );
        let other_date = Version {
            etag: None,
            last_modified: Some("Wed, 15 Nov 2023 22:13:20 GMT".into()),
            ..strong.clone()
        };
        assert!(!strong.matches_partial_answer(&other_date));
        let weak = Version {
            etag: Some("W/\"v1\"".into()),
            ..strong.clone()
        };
        let weak_other_date = Version {
            last_modified: other_date.last_modified.clone(),
            ..weak.clone()
        };
        assert!(weak.matches_partial_answer(&weak));
        assert!(
            !weak.matches_partial_answer(&weak_other_date),
            "pinned by Last-Modified"
        );
        let unpinned = Version {
            etag: None,
            last_modified: None,
            ..strong
        };
        assert!(unpinned.matches_partial_answer(&other_date));
    }
}
