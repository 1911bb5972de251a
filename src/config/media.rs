//! The media keys: which names are MP4, MP3 and FLV files, where faststart applies, and how
//! clips are named.

use super::parse::{parse_bool, parse_size, toml_scalar};
use super::ttl::glob_match;
use super::{bad, ConfigError};

/// Bounds of `mp4_max_moov`: a whole moov is held in memory while a view is built.
const MOOV_LIMIT_RANGE: std::ops::RangeInclusive<u64> = 4096..=(1 << 30);
/// Longest trim parameter name; they are short words like `start`.
const MAX_PARAM_LEN: usize = 32;

/// Faststart on or off for paths matching a glob (`*` matches anything, `/` included).
#[derive(Debug, Clone)]
pub struct FaststartRule {
    pub pattern: String,
    pub enabled: bool,
}

impl FaststartRule {
    pub fn matches(&self, path: &str) -> bool {
        glob_match(self.pattern.as_bytes(), path.as_bytes())
    }
}

/// A media format ston-fs cuts clips of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MediaFormat {
    Mp4,
    Mp3,
    Flv,
}

/// How media files are presented.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Present moov-at-end MP4 files with the moov first (`mp4_faststart`).
    pub faststart: bool,
    /// Per-path overrides of `faststart`; the first match wins over the vhost and the default.
    pub faststart_rules: Vec<FaststartRule>,
    /// Serve `NAME.EXT?start=S&end=E` as a clip of every media format (`mp4_trim`).
    pub trim: bool,
    pub start_param: String,
    pub end_param: String,
    /// Largest moov accepted: a bigger one is served unchanged and cannot be trimmed.
    pub max_moov: u64,
    /// Lower-case extensions, without the dot, of the files treated as MP4.
    pub extensions: Vec<String>,
    /// Likewise for MP3 (`mp3_extensions`) and FLV (`flv_extensions`).
    pub mp3_extensions: Vec<String>,
    pub flv_extensions: Vec<String>,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            faststart: true,
            faststart_rules: Vec::new(),
            trim: true,
            start_param: "start".into(),
            end_param: "end".into(),
            max_moov: 64 << 20,
            extensions: ["mp4", "m4v", "m4a", "mov"].map(String::from).to_vec(),
            mp3_extensions: vec!["mp3".into()],
            flv_extensions: vec!["flv".into()],
        }
    }
}

impl MediaConfig {
    /// Whether a file name ends in one of the media extensions (case-insensitive).
    pub fn is_media_name(&self, name: &str) -> bool {
        self.format_of(name).is_some()
    }

    /// The media format a file name's extension names (case-insensitive), if any.
    pub fn format_of(&self, name: &str) -> Option<MediaFormat> {
        let (stem, ext) = name.rsplit_once('.')?;
        if stem.is_empty() || stem.ends_with('/') {
            return None;
        }
        let listed = |list: &[String]| list.iter().any(|e| e.eq_ignore_ascii_case(ext));
        [
            (MediaFormat::Mp4, &self.extensions),
            (MediaFormat::Mp3, &self.mp3_extensions),
            (MediaFormat::Flv, &self.flv_extensions),
        ]
        .into_iter()
        .find(|(_, list)| listed(list))
        .map(|(format, _)| format)
    }

    /// An extension listed for two formats, which would make a name mean two things.
    pub fn shared_extension(&self) -> Option<&str> {
        let lists = [&self.extensions, &self.mp3_extensions, &self.flv_extensions];
        lists.iter().enumerate().find_map(|(i, list)| {
            list.iter()
                .find(|ext| lists[i + 1..].iter().any(|other| other.contains(ext)))
                .map(String::as_str)
        })
    }

    /// Whether faststart applies to `path`: the first matching rule, else the virtual host's
    /// own setting, else `mp4_faststart`.
    pub fn faststart_for(&self, vhost: Option<bool>, path: &str) -> bool {
        match self.faststart_rules.iter().find(|r| r.matches(path)) {
            Some(rule) => rule.enabled,
            None => vhost.unwrap_or(self.faststart),
        }
    }
}

/// `-o mp4_faststart_rule=/raw/*:off` form.
pub(super) fn parse_faststart_rule(value: &str) -> Result<FaststartRule, ConfigError> {
    let key = "mp4_faststart_rule";
    let (pattern, enabled) = value
        .rsplit_once(':')
        .ok_or_else(|| bad(key, "must look like `PATTERN:on` or `PATTERN:off`"))?;
    new_rule(pattern, parse_bool(key, enabled)?)
}

/// TOML `[[mp4_faststart_rule]] pattern = "/raw/*" faststart = false` form.
pub(super) fn faststart_rule_from_table(table: &toml::Table) -> Result<FaststartRule, ConfigError> {
    let (mut pattern, mut enabled) = (None, None);
    for (key, value) in table {
        match key.as_str() {
            "pattern" => pattern = Some(toml_scalar("mp4_faststart_rule.pattern", value)?),
            "faststart" => {
                let text = toml_scalar("mp4_faststart_rule.faststart", value)?;
                enabled = Some(parse_bool("mp4_faststart_rule.faststart", &text)?)
            }
            other => {
                return Err(ConfigError::UnknownKey(format!(
                    "mp4_faststart_rule.{other}"
                )))
            }
        }
    }
    match (pattern, enabled) {
        (Some(pattern), Some(enabled)) => new_rule(&pattern, enabled),
        _ => Err(bad(
            "mp4_faststart_rule",
            "each [[mp4_faststart_rule]] needs `pattern` and `faststart`",
        )),
    }
}

fn new_rule(pattern: &str, enabled: bool) -> Result<FaststartRule, ConfigError> {
    if !pattern.starts_with('/') && !pattern.starts_with('*') {
        return Err(bad(
            "mp4_faststart_rule",
            format!("pattern `{pattern}` must start with `/` or `*`"),
        ));
    }
    Ok(FaststartRule {
        pattern: pattern.to_string(),
        enabled,
    })
}

/// A trim parameter name: a short word that cannot change how a name is split.
pub(super) fn parse_param_name(key: &str, value: &str) -> Result<String, ConfigError> {
    let plain = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if value.is_empty() || value.len() > MAX_PARAM_LEN || !plain {
        return Err(bad(
            key,
            format!("`{value}` must be 1 to {MAX_PARAM_LEN} letters, digits, `_` or `-`"),
        ));
    }
    Ok(value.to_string())
}

/// Extensions separated by `:`, `,`, `;` or spaces, with or without their dot.
pub(super) fn parse_extensions(key: &str, value: &str) -> Result<Vec<String>, ConfigError> {
    let mut extensions = Vec::new();
    for word in value.split([':', ',', ';', ' ']).filter(|w| !w.is_empty()) {
        let ext = word.trim_start_matches('.').to_ascii_lowercase();
        if ext.is_empty() || !ext.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad(key, format!("`{word}` is not a file extension")));
        }
        if !extensions.contains(&ext) {
            extensions.push(ext);
        }
    }
    if extensions.is_empty() {
        return Err(bad(key, "needs at least one extension, like mp4:m4a"));
    }
    Ok(extensions)
}

pub(super) fn parse_max_moov(key: &str, value: &str) -> Result<u64, ConfigError> {
    let size = parse_size(key, value)?;
    if !MOOV_LIMIT_RANGE.contains(&size) {
        return Err(bad(key, "must be between 4K and 1G"));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_names_are_matched_by_extension() {
        let media = MediaConfig::default();
        assert!(media.is_media_name("a.mp4"));
        assert!(media.is_media_name("b.M4A"));
        assert!(media.is_media_name("c.tar.mov"));
        assert!(!media.is_media_name(".mp4"), "a dot file has no extension");
        assert!(!media.is_media_name("mp4"));
        assert!(!media.is_media_name("a.mp4.txt"));
        assert_eq!(media.format_of("a.MP3"), Some(MediaFormat::Mp3));
        assert_eq!(media.format_of("d/a.flv"), Some(MediaFormat::Flv));
        assert_eq!(media.format_of("d/.flv"), None);
        assert_eq!(media.format_of("a.m4a"), Some(MediaFormat::Mp4));
        assert_eq!(media.shared_extension(), None);
        let mut shared = media.clone();
        shared.flv_extensions.push("mp4".into());
        assert_eq!(shared.shared_extension(), Some("mp4"));
    }

    #[test]
    fn faststart_rules_beat_the_vhost_and_the_default() {
        let mut media = MediaConfig::default();
        media
            .faststart_rules
            .push(parse_faststart_rule("/raw/*:off").unwrap());
        media
            .faststart_rules
            .push(parse_faststart_rule("*:on").unwrap());
        assert!(!media.faststart_for(Some(true), "/raw/a.mp4"));
        assert!(media.faststart_for(Some(false), "/vod/a.mp4"));
        media.faststart_rules.clear();
        assert!(!media.faststart_for(Some(false), "/vod/a.mp4"));
        assert!(media.faststart_for(None, "/vod/a.mp4"));
        assert!(parse_faststart_rule("raw/*:off").is_err());
        assert!(parse_faststart_rule("/raw/*").is_err());
        let table: toml::Table = "pattern = \"/x/*\"\nfaststart = false".parse().unwrap();
        let rule = faststart_rule_from_table(&table).unwrap();
        assert!(!rule.enabled && rule.matches("/x/y.mp4"));
    }

    #[test]
    fn values_are_checked() {
        assert_eq!(
            parse_extensions("k", ".MP4:m4a, mov").unwrap(),
            ["mp4", "m4a", "mov"]
        );
        assert!(parse_extensions("k", "mp4:a/b").is_err());
        assert!(parse_extensions("k", " : ").is_err());
        assert_eq!(parse_param_name("k", "from").unwrap(), "from");
        for bad_name in ["", "a=b", "a&b", "a?", &"x".repeat(33)] {
            assert!(parse_param_name("k", bad_name).is_err(), "{bad_name}");
        }
        assert_eq!(parse_max_moov("k", "16M").unwrap(), 16 << 20);
        assert!(parse_max_moov("k", "2G").is_err());
        assert!(parse_max_moov("k", "1K").is_err());
    }
}
