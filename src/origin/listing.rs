//! Directory listings: parses the origin's own index pages (nginx and Apache HTML autoindex,
//! nginx `autoindex_format json`) and manifests into entries with names, kinds, and the sizes
//! and times where the page gives them exactly.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One name in a directory, as the origin's listing describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub is_dir: bool,
    /// Exact size in bytes, when the listing gives one (not "1.2K").
    pub size: Option<u64>,
    /// Seconds since the epoch.
    pub mtime: Option<u64>,
}

impl Entry {
    pub fn mtime(&self) -> Option<SystemTime> {
        self.mtime.map(|s| UNIX_EPOCH + Duration::from_secs(s))
    }
}

/// Parses a listing body: JSON when it looks like JSON, HTML autoindex otherwise.
pub fn parse(body: &str) -> Vec<Entry> {
    let trimmed = body.trim_start();
    let mut entries = if trimmed.starts_with('[') {
        parse_nginx_json(trimmed)
    } else {
        parse_html(body)
    };
    entries.retain(|e| valid_name(&e.name));
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries.dedup_by(|a, b| a.name == b.name);
    entries
}

/// Names that can be a single path component of the mount.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

#[derive(Deserialize)]
struct NginxJsonEntry {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    mtime: Option<String>,
    size: Option<u64>,
}

fn parse_nginx_json(body: &str) -> Vec<Entry> {
    let Ok(items) = serde_json::from_str::<Vec<NginxJsonEntry>>(body) else {
        return Vec::new();
    };
    items
        .into_iter()
        .map(|item| Entry {
            is_dir: item.kind == "directory",
            size: if item.kind == "directory" {
                None
            } else {
                item.size
            },
            mtime: item.mtime.as_deref().and_then(parse_http_date),
            name: item.name,
        })
        .collect()
}

/// Links of an autoindex page, with the date and size that follow each on its line.
fn parse_html(body: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    let lower = body.to_ascii_lowercase();
    let mut cursor = 0;
    while let Some(found) = lower[cursor..].find("<a ") {
        let start = cursor + found;
        let Some(tag_end) = lower[start..].find('>').map(|i| start + i) else {
            break;
        };
        let after_link = lower[tag_end..]
            .find("</a>")
            .map(|i| tag_end + i + 4)
            .unwrap_or(tag_end + 1);
        let line_end = body[after_link..]
            .find('\n')
            .map(|i| after_link + i)
            .unwrap_or(body.len());
        if let Some(href) = attribute(&body[start..tag_end], "href") {
            if let Some(mut entry) = entry_from_href(&href) {
                describe_from_text(&mut entry, &strip_tags(&body[after_link..line_end]));
                entries.push(entry);
            }
        }
        cursor = after_link.max(tag_end + 1);
    }
    entries
}

/// The value of `name="..."` (or single-quoted) inside a tag.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let at = lower.find(&format!("{name}="))? + name.len() + 1;
    let rest = &tag[at..];
    let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let value = &rest[1..];
    let end = value.find(quote)?;
    Some(html_unescape(&value[..end]))
}

/// A link that names a child of this directory (relative, no query): its entry.
fn entry_from_href(href: &str) -> Option<Entry> {
    if href.contains("://")
        || href.starts_with('/')
        || href.starts_with('?')
        || href.starts_with('#')
        || href.contains('?')
    {
        return None;
    }
    let href = href.strip_prefix("./").unwrap_or(href);
    let (raw, is_dir) = match href.strip_suffix('/') {
        Some(dir) => (dir, true),
        None => (href, false),
    };
    let name = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()?
        .into_owned();
    valid_name(&name).then_some(Entry {
        name,
        is_dir,
        size: None,
        mtime: None,
    })
}

/// Reads the date and the exact size that follow a link (nginx: `22-Nov-2026 03:13  12345`;
/// Apache: `2026-11-22 03:13  12K`). Abbreviated sizes are not exact, so they are left out.
fn describe_from_text(entry: &mut Entry, text: &str) {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    for pair in tokens.windows(2) {
        if let Some(seconds) = parse_listing_date(pair[0], pair[1]) {
            entry.mtime = Some(seconds);
            break;
        }
    }
    if !entry.is_dir {
        entry.size = tokens
            .last()
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse().ok());
    }
}

fn parse_listing_date(day: &str, time: &str) -> Option<u64> {
    let (hour, minute) = time.split_once(':')?;
    let (hour, minute): (u64, u64) = (hour.parse().ok()?, minute.get(..2)?.parse().ok()?);
    let (year, month, mday) =
        if let Some((d, rest)) = day.split_once('-').filter(|(d, _)| d.len() <= 2) {
            // nginx: 22-Nov-2026
            let (mon, year) = rest.split_once('-')?;
            (
                year.parse::<i64>().ok()?,
                month_number(mon)?,
                d.parse::<u64>().ok()?,
            )
        } else {
            // Apache: 2026-11-22
            let mut parts = day.split('-');
            let year = parts.next()?.parse::<i64>().ok()?;
            let month = parts.next()?.parse::<u64>().ok()?;
            let mday = parts.next()?.parse::<u64>().ok()?;
            (year, month, mday)
        };
    if !(1..=12).contains(&month) || !(1..=31).contains(&mday) || hour > 23 || minute > 59 {
        return None;
    }
    let days = days_from_civil(year, month, mday)?;
    Some(days * 86_400 + hour * 3600 + minute * 60)
}

fn month_number(name: &str) -> Option<u64> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let lower = name.to_ascii_lowercase();
    MONTHS
        .iter()
        .position(|m| *m == lower)
        .map(|i| i as u64 + 1)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u64, day: u64) -> Option<u64> {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = month as i64;
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day as i64 - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    u64::try_from(era * 146_097 + day_of_era - 719_468).ok()
}

fn parse_http_date(text: &str) -> Option<u64> {
    let time = httpdate::parse_http_date(text).ok()?;
    time.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

fn strip_tags(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    html_unescape(&out)
}

fn html_unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// A manifest: one path per line, or a JSON list of paths or of `{"path", "size", "mtime"}`.
/// Returns the entries directly below `dir` (`""` for the root, else `/a/b`).
pub fn entries_from_manifest(body: &str, dir: &str) -> Vec<Entry> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Item {
        Path(String),
        Described {
            path: String,
            size: Option<u64>,
            mtime: Option<u64>,
        },
    }
    let items: Vec<(String, Option<u64>, Option<u64>)> =
        match serde_json::from_str::<Vec<Item>>(body.trim()) {
            Ok(items) => items
                .into_iter()
                .map(|item| match item {
                    Item::Path(path) => (path, None, None),
                    Item::Described { path, size, mtime } => (path, size, mtime),
                })
                .collect(),
            Err(_) => body
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| (l.to_string(), None, None))
                .collect(),
        };
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    let mut entries: Vec<Entry> = items
        .into_iter()
        .filter_map(|(path, size, mtime)| {
            let path = format!("/{}", path.trim_start_matches('/'));
            let rest = path.strip_prefix(&prefix)?;
            Some(match rest.split_once('/') {
                Some((child, _)) => Entry {
                    name: child.to_string(),
                    is_dir: true,
                    size: None,
                    mtime: None,
                },
                None => Entry {
                    name: rest.to_string(),
                    is_dir: false,
                    size,
                    mtime,
                },
            })
        })
        .filter(|e| valid_name(&e.name))
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name).then(b.is_dir.cmp(&a.is_dir)));
    entries.dedup_by(|a, b| a.name == b.name);
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    const NGINX: &str = r#"<html>
<head><title>Index of /videos/</title></head>
<body>
<h1>Index of /videos/</h1><hr><pre><a href="../">../</a>
<a href="sub/">sub/</a>                                               22-Nov-2026 03:13                   -
<a href="a%20b.mp4">a b.mp4</a>                                           22-Nov-2026 03:14               12345
<a href="x&amp;y.txt">x&amp;y.txt</a>                                    01-Jan-2026 00:00                   7
</pre><hr></body>
</html>"#;

    #[test]
    fn nginx_html_gives_names_kinds_sizes_and_times() {
        let entries = parse(NGINX);
        assert_eq!(entries.len(), 3);
        assert_eq!(
            entries[0],
            Entry {
                name: "a b.mp4".into(),
                is_dir: false,
                size: Some(12345),
                mtime: Some(1_795_317_240)
            }
        );
        assert!(entries[1].is_dir && entries[1].name == "sub");
        assert_eq!(entries[2].name, "x&y.txt");
        assert_eq!(entries[2].mtime, Some(1_767_225_600));
    }

    #[test]
    fn apache_html_keeps_only_exact_sizes() {
        let apache = r#"<table>
<tr><th><a href="?C=N;O=D">Name</a></th></tr>
<tr><td><a href="/">Parent Directory</a></td><td>&nbsp;</td></tr>
<tr><td valign="top"><img src="/icons/text.gif" alt="[TXT]"></td><td><a href="small.txt">small.txt</a></td><td align="right">2026-11-22 03:13  </td><td align="right">512</td></tr>
<tr><td valign="top"><img src="/icons/binary.gif"></td><td><a href="big.bin">big.bin</a></td><td align="right">2026-11-22 03:13  </td><td align="right">1.2M</td></tr>
<tr><td><a href="docs/">docs/</a></td><td align="right">2026-11-22 03:13  </td><td align="right">  - </td></tr>
</table>"#;
        let entries = parse(apache);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["big.bin", "docs", "small.txt"]);
        assert_eq!(entries[0].size, None);
        assert_eq!(entries[2].size, Some(512));
        assert!(entries[1].is_dir);
        assert!(entries[2].mtime.is_some());
    }

    #[test]
    fn nginx_json_is_exact() {
        let json = r#"[{ "name":"d", "type":"directory", "mtime":"Sun, 22 Nov 2026 03:13:00 GMT" },
                       { "name":"f.bin", "type":"file", "mtime":"Sun, 22 Nov 2026 03:14:00 GMT", "size":99 }]"#;
        let entries = parse(json);
        assert_eq!(entries[1].size, Some(99));
        assert!(entries[0].is_dir);
    }

    #[test]
    fn manifests_list_the_children_of_one_directory() {
        let manifest = "/a.txt\n/dir/b.txt\n/dir/sub/c.txt\n# comment\n";
        let root = entries_from_manifest(manifest, "");
        assert_eq!(
            root.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["a.txt", "dir"]
        );
        let dir = entries_from_manifest(manifest, "/dir");
        assert_eq!(dir.len(), 2);
        assert!(dir.iter().any(|e| e.name == "sub" && e.is_dir));
        let json = r#"[{"path": "/x/y.bin", "size": 5, "mtime": 10}]"#;
        assert_eq!(entries_from_manifest(json, "/x")[0].size, Some(5));
    }
}
