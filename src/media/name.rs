//! What a file name asks of a media file: the file as it is, an MP4 with its header in
//! front, or a clip of an interval (`NAME.mp4?start=S&end=E`, likewise `.mp3` and `.flv`).

use std::hash::{Hash, Hasher};

use crate::config::{MediaConfig, MediaFormat};

/// Longest number accepted as a trim bound: seconds with decimals, never more.
const MAX_NUMBER_LEN: usize = 24;

/// An interval of seconds; either bound may be left out.
#[derive(Clone, Copy, Debug)]
pub struct TrimSpan {
    pub start: Option<f64>,
    pub end: Option<f64>,
}

// The bounds come from `parse_seconds`: finite and never negative zero, so comparing the bits
// is comparing the numbers.
impl PartialEq for TrimSpan {
    fn eq(&self, other: &Self) -> bool {
        self.start.map(f64::to_bits) == other.start.map(f64::to_bits)
            && self.end.map(f64::to_bits) == other.end.map(f64::to_bits)
    }
}

impl Eq for TrimSpan {}

impl Hash for TrimSpan {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.start.map(f64::to_bits).hash(state);
        self.end.map(f64::to_bits).hash(state);
    }
}

/// What a file name asks of a media file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MediaRequest {
    /// The file itself, presented with its header (moov) in front when it is at the end.
    Faststart,
    /// A complete file of an interval of the original.
    Trim(TrimSpan),
}

/// How a directory entry name is served.
#[derive(Debug, PartialEq)]
pub enum NameKind {
    /// An ordinary file name (or one that media handling leaves alone).
    Plain,
    /// A media name: the original file's name (the name itself, or the part before `?`),
    /// and what is asked of it.
    Media { name: String, request: MediaRequest },
    /// A clip name that asks for nothing servable (a bad bound, an unknown parameter, end
    /// not after start): it does not exist. The reason is for the log.
    Invalid(String),
}

/// Classifies one directory entry name. `faststart` says whether faststart applies to the
/// original file's path.
pub fn classify(media: &MediaConfig, name: &str, faststart: impl Fn(&str) -> bool) -> NameKind {
    if media.trim {
        if let Some((base, query)) = name.split_once('?') {
            if !media.is_media_name(base) {
                return NameKind::Plain;
            }
            return match parse_trim(media, query) {
                Ok(span) => NameKind::Media {
                    name: base.to_string(),
                    request: MediaRequest::Trim(span),
                },
                Err(reason) => NameKind::Invalid(reason),
            };
        }
    }
    if media.format_of(name) == Some(MediaFormat::Mp4) && faststart(name) {
        return NameKind::Media {
            name: name.to_string(),
            request: MediaRequest::Faststart,
        };
    }
    NameKind::Plain
}

/// Whether a name in a listing is a clip name, which listings never show.
pub fn is_trim_name(media: &MediaConfig, name: &str) -> bool {
    media.trim
        && name
            .split_once('?')
            .is_some_and(|(base, _)| media.is_media_name(base))
}

/// `start=S&end=E`, in either order, either one optional but not both.
fn parse_trim(media: &MediaConfig, query: &str) -> Result<TrimSpan, String> {
    let mut span = TrimSpan {
        start: None,
        end: None,
    };
    for pair in query.split('&') {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not key=value"))?;
        let slot = if key == media.start_param {
            &mut span.start
        } else if key == media.end_param {
            &mut span.end
        } else {
            return Err(format!("unknown parameter `{key}`"));
        };
        if slot.replace(parse_seconds(value)?).is_some() {
            return Err(format!("`{key}` given twice"));
        }
    }
    match (span.start, span.end) {
        (None, None) => Err("neither a start nor an end".into()),
        (start, Some(end)) if end <= start.unwrap_or(0.0) => Err(format!(
            "end {end} is not after start {}",
            start.unwrap_or(0.0)
        )),
        _ => Ok(span),
    }
}

/// Seconds as plain decimals: `2`, `2.5`, `.5`; no sign, exponent or words like `inf`.
fn parse_seconds(text: &str) -> Result<f64, String> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let plain = text.len() <= MAX_NUMBER_LEN
        && digits(whole)
        && digits(fraction)
        && !(whole.is_empty() && fraction.is_empty());
    match plain {
        true => text
            .parse::<f64>()
            .map_err(|_| format!("`{text}` is not a number of seconds")),
        false => Err(format!("`{text}` is not a number of seconds")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media() -> MediaConfig {
        MediaConfig::default()
    }

    fn trim(start: Option<f64>, end: Option<f64>) -> NameKind {
        NameKind::Media {
            name: "a.mp4".into(),
            request: MediaRequest::Trim(TrimSpan { start, end }),
        }
    }

    #[test]
    fn clip_names_parse_in_any_order_with_decimals() {
        let on = |_: &str| true;
        assert_eq!(
            classify(&media(), "a.mp4?start=2&end=5", on),
            trim(Some(2.0), Some(5.0))
        );
        assert_eq!(
            classify(&media(), "a.mp4?end=5.25&start=.5", on),
            trim(Some(0.5), Some(5.25))
        );
        assert_eq!(classify(&media(), "a.mp4?end=3", on), trim(None, Some(3.0)));
        assert_eq!(
            classify(&media(), "a.mp4?start=3.", on),
            trim(Some(3.0), None)
        );
    }

    #[test]
    fn bad_clip_names_do_not_exist() {
        for name in [
            "a.mp4?",
            "a.mp4?start=2&end=2",
            "a.mp4?start=5&end=2",
            "a.mp4?start=-1",
            "a.mp4?start=1e3",
            "a.mp4?start=inf",
            "a.mp4?start=nan",
            "a.mp4?start=.",
            "a.mp4?start=1&start=2",
            "a.mp4?begin=1",
            "a.mp4?start",
            "a.mp4?start=1&",
            "a.mp4?end=0",
        ] {
            assert!(
                matches!(classify(&media(), name, |_| true), NameKind::Invalid(_)),
                "{name}"
            );
        }
    }

    #[test]
    fn other_names_are_plain_or_whole_files() {
        let whole = NameKind::Media {
            name: "a.MP4".into(),
            request: MediaRequest::Faststart,
        };
        assert_eq!(classify(&media(), "a.MP4", |_| true), whole);
        assert_eq!(classify(&media(), "a.mp4", |_| false), NameKind::Plain);
        assert_eq!(
            classify(&media(), "a.txt?start=1", |_| true),
            NameKind::Plain
        );
        assert_eq!(classify(&media(), "a.txt", |_| true), NameKind::Plain);
        // Header-first is MP4's alone; MP3 and FLV names are clips or plain files.
        assert_eq!(classify(&media(), "a.mp3", |_| true), NameKind::Plain);
        assert_eq!(classify(&media(), "a.flv", |_| true), NameKind::Plain);
        let clip = |name: &str| NameKind::Media {
            name: name.into(),
            request: MediaRequest::Trim(TrimSpan {
                start: Some(1.0),
                end: Some(2.0),
            }),
        };
        assert_eq!(
            classify(&media(), "a.mp3?start=1&end=2", |_| true),
            clip("a.mp3")
        );
        assert_eq!(
            classify(&media(), "a.FLV?start=1&end=2", |_| true),
            clip("a.FLV")
        );
        assert!(matches!(
            classify(&media(), "a.mp3?start=abc", |_| true),
            NameKind::Invalid(_)
        ));
        let mut off = media();
        off.trim = false;
        assert_eq!(classify(&off, "a.mp4?start=1", |_| false), NameKind::Plain);
        assert!(!is_trim_name(&off, "a.mp4?start=1"));
        assert!(is_trim_name(&media(), "a.mp4?start=1"));
        assert!(!is_trim_name(&media(), "a.mp4"));
    }

    #[test]
    fn parameter_names_are_configurable() {
        let mut media = media();
        media.start_param = "from".into();
        media.end_param = "to".into();
        assert_eq!(
            classify(&media, "a.mp4?from=1&to=2", |_| true),
            trim(Some(1.0), Some(2.0))
        );
        assert!(matches!(
            classify(&media, "a.mp4?start=1", |_| true),
            NameKind::Invalid(_)
        ));
    }
}
