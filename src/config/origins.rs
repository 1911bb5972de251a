//! Origin addresses, virtual hosts and how requests spread over origins: parsing, display
//! without secrets, cache folder names.

use url::Url;

use super::ConfigError;

/// How requests spread over a site's equivalent origins (`balance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Each request goes to the next origin in rotation.
    #[default]
    RoundRobin,
    /// Rendezvous hashing of the request path: every request for one object goes to the same
    /// origin, on every edge that lists the same origins. Made for a tier of parent caches.
    Hash,
}

impl std::str::FromStr for Balance {
    type Err = String;

    fn from_str(text: &str) -> Result<Balance, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "round_robin" => Ok(Balance::RoundRobin),
            "hash" => Ok(Balance::Hash),
            other => Err(format!("`{other}` is neither round_robin nor hash")),
        }
    }
}

/// One virtual host: the first path component of the mount selects it.
#[derive(Debug, Clone)]
pub struct Vhost {
    /// Canonical host name, sent as the `Host` header.
    pub name: String,
    /// Other names that reach the same host; one leading `*.` wildcard is allowed.
    pub aliases: Vec<String>,
    /// Equivalent origins; requests spread over the healthy ones.
    pub origins: Vec<Origin>,
    /// This host's own `mp4_faststart` (path rules still come first).
    pub mp4_faststart: Option<bool>,
    /// Origins tried only while every one of `origins` is excluded.
    pub standby: Vec<Origin>,
    /// How requests spread over the origins; `None`: the global `balance`.
    pub balance: Option<Balance>,
}

impl Vhost {
    /// Whether a path component names this host (its name or one of its aliases).
    pub fn answers_to(&self, component: &str) -> bool {
        let component = component.to_ascii_lowercase();
        component == self.name.to_ascii_lowercase()
            || self.aliases.iter().any(|alias| {
                let alias = alias.to_ascii_lowercase();
                match alias.strip_prefix("*.") {
                    Some(suffix) => component
                        .strip_suffix(suffix)
                        .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                    None => alias == component,
                }
            })
    }
}

/// An origin server address: scheme, authority and an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `scheme://host[:port]`, with no trailing slash and no credentials.
    pub base: String,
    /// Path prefix prepended to every request, without a trailing slash (`""` for none).
    pub prefix: String,
}

impl Origin {
    pub fn parse(text: &str) -> Result<Origin, ConfigError> {
        let fail = |reason: &str| ConfigError::BadOrigin {
            url: redact_url(text),
            reason: reason.to_string(),
        };
        let trimmed = text.trim();
        let url = Url::parse(trimmed).map_err(|e| match e {
            url::ParseError::RelativeUrlWithoutBase => fail(&format!(
                "it needs a scheme, e.g. http://{}/",
                trimmed.trim_matches('/')
            )),
            other => fail(&other.to_string()),
        })?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(fail("only http:// and https:// origins are supported"));
        }
        // The url crate reads `http:///host` as `http://host/`; a typo should not pass.
        let after_scheme = trimmed.split_once("://").map(|(_, rest)| rest);
        if after_scheme.is_none_or(|rest| rest.starts_with('/')) {
            return Err(fail("no host after the scheme (expected http://HOST/...)"));
        }
        let host = url.host_str().ok_or_else(|| fail("no host"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(fail(
                "credentials in the URL are not supported; use `headers = [\"Authorization: ...\"]`",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(fail("an origin URL cannot carry a query or a fragment"));
        }
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        Ok(Origin {
            base: format!("{}://{}", url.scheme(), authority),
            prefix: url.path().trim_end_matches('/').to_string(),
        })
    }
}

/// A file-system-safe, stable name for a site's cache subfolder: readable, and unique to the
/// set of origins and the host, whatever order the origins are listed in.
pub fn cache_folder_name(origins: &[Origin], host: &str) -> String {
    let prefix = origins.first().map(|o| o.prefix.as_str()).unwrap_or("");
    let readable: String = format!("{host}{prefix}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    let mut identity: Vec<String> = origins
        .iter()
        .map(|o| format!("{}|{}", o.base, o.prefix))
        .collect();
    identity.sort();
    identity.push(host.to_string());
    format!(
        "{readable}-{:016x}",
        xxhash_rust::xxh3::xxh3_64(identity.join("\n").as_bytes())
    )
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}/", self.base, self.prefix)
    }
}

/// Drops anything that could be a credential from a URL before it is shown to anyone.
pub fn redact_url(text: &str) -> String {
    match Url::parse(text.trim()) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        Err(_) => text.chars().take(200).collect(),
    }
}

/// Parses one origin or a list separated by commas, semicolons or white space.
pub fn parse_origin_list(value: &str) -> Result<Vec<Origin>, ConfigError> {
    let origins = value
        .split([',', ';', ' ', '\t', '\n'])
        .filter(|s| !s.trim().is_empty())
        .map(Origin::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if origins.is_empty() {
        return Err(ConfigError::BadOrigin {
            url: value.to_string(),
            reason: "no origin URL given".into(),
        });
    }
    Ok(origins)
}
