//! A tier of parent caches on loopback: private nginx instances built from
//! `benches/tier-parent.conf.in` (proxy_cache in 1 MiB slices in front of one origin), each
//! with its own port, cache and access log, that can be killed and restarted on the same
//! port with the same cache.

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::nginx::{free_port, settle_file, wait_listening, which};

/// The parent configuration the README shows; the tests and the bench fill it in.
pub const PARENT_TEMPLATE: &str = include_str!("../../benches/tier-parent.conf.in");
/// The parents' slice size (`slice 1m` in the template).
pub const SLICE: u64 = 1 << 20;

/// One request a parent logged (an edge's request; slice subrequests are not logged).
#[derive(Clone, Debug)]
pub struct ParentRequest {
    pub status: u16,
    pub bytes: u64,
    pub method: String,
    /// The request URI as sent (percent-encoded).
    pub uri: String,
    pub range: String,
    pub if_range: String,
    pub if_none_match: String,
    pub via: String,
}

/// One private nginx parent cache.
pub struct Parent {
    pub name: String,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Parent {
    /// Starts a parent named `name` in front of the origin at `origin`.
    pub fn start(name: &str, origin: SocketAddr) -> Parent {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        // The command the README gives users writes the config from the template.
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-helpers/tier-parent");
        let written = Command::new(script)
            .args(["--origin", &format!("http://{origin}/")])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--dir")
            .arg(dir.path())
            .args(["--max-size", "4g", "--name", name, "--foreground"])
            .output()
            .expect("run mount-helpers/tier-parent");
        assert!(written.status.success(), "tier-parent: {written:?}");
        let mut parent = Parent {
            name: name.to_string(),
            port,
            dir,
            child: None,
        };
        parent.run();
        parent
    }

    fn run(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let nginx =
            which("nginx").expect("nginx is not installed: run the suite with `bash tests/run.sh`");
        let mut child = Command::new(nginx)
            .arg("-c")
            .arg(self.dir.path().join("nginx.conf"))
            .arg("-p")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx parent");
        wait_listening(self.port, &self.name, &mut child, &self.error_log());
        self.child = Some(child);
    }

    /// `kill -9`: the parent is gone at once, mid-answer if it was answering.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the cache it had.
    pub fn restart(&mut self) {
        self.run();
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    fn access_log(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    fn error_log(&self) -> PathBuf {
        self.dir.path().join("error.log")
    }

    /// How many requests it has logged so far, without waiting for the log to settle.
    pub fn logged_now(&self) -> usize {
        fs::read_to_string(self.access_log())
            .map(|log| log.lines().count())
            .unwrap_or(0)
    }

    /// Every request logged so far, once the log has settled.
    pub fn requests(&self) -> Vec<ParentRequest> {
        settle_file(&self.access_log());
        fs::read_to_string(self.access_log())
            .unwrap_or_default()
            .lines()
            .filter_map(parse_parent_line)
            .collect()
    }

    /// Cache entries (one per slice) and their bytes on disk (apparent sizes).
    pub fn cache_usage(&self) -> (u64, u64) {
        let mut entries = 0;
        let mut bytes = 0;
        for file in files_below(&self.dir.path().join("cache")) {
            let is_entry = file
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.len() == 32 && n.bytes().all(|b| b.is_ascii_hexdigit()));
            if is_entry {
                entries += 1;
                bytes += fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            }
        }
        (entries, bytes)
    }

    pub fn describe(&self) -> String {
        let requests = self.requests();
        let mut s = format!(
            "parent {} ({}): {} request(s)\n",
            self.name,
            self.url(),
            requests.len()
        );
        for r in requests.iter().rev().take(40).rev() {
            s.push_str(&format!(
                "  {} {} range={:?} if-range={:?} via={:?} bytes={}\n",
                r.status, r.uri, r.range, r.if_range, r.via, r.bytes
            ));
        }
        s.push_str(&format!(
            "error log:\n{}",
            super::mount::tail(
                &fs::read_to_string(self.error_log()).unwrap_or_default(),
                4000
            )
        ));
        s
    }
}

impl Drop for Parent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `count` parents named `parent-0`.. in front of `origin`.
pub fn start_parents(count: usize, origin: SocketAddr) -> Vec<Parent> {
    (0..count)
        .map(|i| Parent::start(&format!("parent-{i}"), origin))
        .collect()
}

/// The parents' URLs as one ORIGIN argument.
pub fn parent_list(parents: &[Parent]) -> String {
    parents
        .iter()
        .map(Parent::url)
        .collect::<Vec<_>>()
        .join(",")
}

/// For each URI, which parents (by index) logged a data request for it among `requests`
/// (per parent); health probes of `/` are left out.
pub fn parents_by_uri(requests: &[Vec<ParentRequest>]) -> HashMap<String, Vec<usize>> {
    let mut by_uri: HashMap<String, Vec<usize>> = HashMap::new();
    for (parent, logged) in requests.iter().enumerate() {
        for r in logged.iter().filter(|r| r.uri != "/") {
            let parents = by_uri.entry(r.uri.clone()).or_default();
            if !parents.contains(&parent) {
                parents.push(parent);
            }
        }
    }
    for parents in by_uri.values_mut() {
        parents.sort_unstable();
    }
    by_uri
}

/// Waits (bounded) until `done` holds, polling.
#[track_caller]
pub fn wait_until(what: &str, bound: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {bound:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => pending.push(entry.path()),
                Ok(t) if t.is_file() => files.push(entry.path()),
                _ => {}
            }
        }
    }
    files
}

/// `1700000000.123 206 1048576 "GET /a HTTP/1.1" "bytes=0-1048575" "\"v1\"" "-" "1.1 e (ston-fs)"`
fn parse_parent_line(line: &str) -> Option<ParentRequest> {
    let mut fields = line.splitn(4, ' ');
    let _msec = fields.next()?;
    let status = fields.next()?.parse().ok()?;
    let bytes = fields.next()?.parse().ok()?;
    let quoted = quoted_fields(fields.next()?);
    let [request, range, if_range, if_none_match, via] = quoted.as_slice() else {
        return None;
    };
    let mut parts = request.split(' ');
    Some(ParentRequest {
        status,
        bytes,
        method: parts.next()?.to_string(),
        uri: parts.next()?.to_string(),
        range: range.clone(),
        if_range: if_range.clone(),
        if_none_match: if_none_match.clone(),
        via: via.clone(),
    })
}

/// The `"..."` fields of a log line, with nginx's `\"` escapes undone; `-` (absent) is "".
fn quoted_fields(text: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut field = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    // nginx writes `"` as \x22 in logs.
                    let escaped: String = chars.by_ref().take(3).collect();
                    match escaped.as_str() {
                        "x22" => field.push('"'),
                        "x5C" => field.push('\\'),
                        other => {
                            field.push('\\');
                            field.push_str(other);
                        }
                    }
                }
                '"' => break,
                c => field.push(c),
            }
        }
        fields.push(if field == "-" { String::new() } else { field });
    }
    fields
}
