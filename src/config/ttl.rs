//! Per-path TTL rules (`ttl_rule`): globs over request paths.

use std::time::Duration;

use super::parse::{parse_duration, toml_scalar};
use super::{bad, ConfigError};

/// A TTL for paths matching a glob (`*` matches anything, `/` included; `?` one character).
#[derive(Debug, Clone)]
pub struct TtlRule {
    pub pattern: String,
    pub ttl: Duration,
}

impl TtlRule {
    pub fn matches(&self, path: &str) -> bool {
        glob_match(self.pattern.as_bytes(), path.as_bytes())
    }
}

pub(super) fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative matcher with one backtrack point per `*`: linear enough for paths.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// `-o ttl_rule=/live/*:5` form.
pub(super) fn parse_ttl_rule(value: &str) -> Result<TtlRule, ConfigError> {
    let (pattern, ttl) = value
        .rsplit_once(':')
        .ok_or_else(|| bad("ttl_rule", "must look like `PATTERN:SECONDS`"))?;
    new_ttl_rule(pattern, parse_duration("ttl_rule", ttl)?)
}

pub(super) fn ttl_rule_from_table(table: &toml::Table) -> Result<TtlRule, ConfigError> {
    let mut pattern = None;
    let mut ttl = None;
    for (key, value) in table {
        match key.as_str() {
            "pattern" => pattern = Some(toml_scalar("ttl_rule.pattern", value)?),
            "ttl" => {
                let seconds = toml_scalar("ttl_rule.ttl", value)?;
                ttl = Some(parse_duration("ttl_rule.ttl", &seconds)?)
            }
            other => return Err(ConfigError::UnknownKey(format!("ttl_rule.{other}"))),
        }
    }
    match (pattern, ttl) {
        (Some(pattern), Some(ttl)) => new_ttl_rule(&pattern, ttl),
        _ => Err(bad(
            "ttl_rule",
            "each [[ttl_rule]] needs `pattern` and `ttl`",
        )),
    }
}

fn new_ttl_rule(pattern: &str, ttl: Duration) -> Result<TtlRule, ConfigError> {
    if !pattern.starts_with('/') && !pattern.starts_with('*') {
        return Err(bad(
            "ttl_rule",
            format!("pattern `{pattern}` must start with `/` or `*`"),
        ));
    }
    Ok(TtlRule {
        pattern: pattern.to_string(),
        ttl,
    })
}
