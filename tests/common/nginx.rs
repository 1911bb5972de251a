//! A private nginx on a loopback port (optionally with autoindex) that logs every request,
//! and the small process helpers it and other private servers use.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn which(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

pub fn wait_listening(port: u16, what: &str, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited with {status} before listening\n--- {} ---\n{}",
                log.display(),
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on 127.0.0.1:{port}\n--- {} ---\n{}",
            log.display(),
            fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) until `path` stops growing for a few polls: a server writes its access-log
/// line just after the answer's last byte, so a client can be a moment ahead of the log.
pub fn settle_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = None;
    let mut stable = 0;
    while stable < 4 && Instant::now() < deadline {
        let len = fs::metadata(path).map(|m| m.len()).ok();
        if len == last {
            stable += 1;
        } else {
            stable = 0;
            last = len;
        }
        std::thread::sleep(Duration::from_millis(75));
    }
}

// ---------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------

/// How nginx answers a directory URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Autoindex {
    /// `autoindex off`: 403 for a directory without index.html.
    Off,
    /// `autoindex on` (HTML, exact sizes, GMT times).
    Html,
    /// `autoindex on; autoindex_format json`.
    Json,
}

/// One access-log line of the private nginx.
#[derive(Clone, Debug)]
pub struct NginxRequest {
    pub status: u16,
    pub bytes: u64,
    pub method: String,
    /// The request URI as sent (percent-encoded).
    pub uri: String,
    pub range: String,
}

/// A private nginx on a loopback port serving `root`, logging every request.
pub struct Nginx {
    child: Child,
    port: u16,
    access_log: PathBuf,
    error_log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start(root: &Path, autoindex: Autoindex) -> Nginx {
        let nginx =
            which("nginx").expect("nginx is not installed: run the suite with `bash tests/run.sh`");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let access_log = dir.path().join("access.log");
        let error_log = dir.path().join("error.log");
        let index = match autoindex {
            Autoindex::Off => "autoindex off;",
            Autoindex::Html => {
                "autoindex on; autoindex_exact_size on; autoindex_localtime off; autoindex_format html;"
            }
            Autoindex::Json => "autoindex on; autoindex_format json;",
        };
        let config = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\n\
             error_log {err} warn;\nevents {{ worker_connections 256; }}\n\
             http {{\n  log_format ston '$status $body_bytes_sent \"$request\" \"$http_range\"';\n\
               access_log {log} ston;\n  client_body_temp_path {dir};\n  proxy_temp_path {dir};\n\
               fastcgi_temp_path {dir};\n  uwsgi_temp_path {dir};\n  scgi_temp_path {dir};\n\
               sendfile on;\n  default_type application/octet-stream;\n\
               server {{ listen 127.0.0.1:{port}; root {root}; {index} }}\n}}\n",
            dir = dir.path().display(),
            err = error_log.display(),
            log = access_log.display(),
            root = root.display(),
        );
        let mut child = spawn_nginx(&nginx, &config, dir.path());
        wait_listening(port, "nginx", &mut child, &error_log);
        Nginx {
            child,
            port,
            access_log,
            error_log,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Every request so far, once the log has settled.
    pub fn requests(&self) -> Vec<NginxRequest> {
        settle_file(&self.access_log);
        fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .filter_map(parse_nginx_line)
            .collect()
    }

    /// Requests whose URI is exactly `uri`.
    pub fn requests_for(&self, uri: &str) -> Vec<NginxRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.uri == uri)
            .collect()
    }

    pub fn describe(&self) -> String {
        let mut s = String::from("nginx access log:\n");
        for r in self.requests() {
            s.push_str(&format!(
                "  {} {} {} range={:?} bytes={}\n",
                r.status, r.method, r.uri, r.range, r.bytes
            ));
        }
        s.push_str(&format!(
            "nginx error log:\n{}",
            fs::read_to_string(&self.error_log).unwrap_or_default()
        ));
        s
    }
}

fn parse_nginx_line(line: &str) -> Option<NginxRequest> {
    // 206 1048576 "GET /a%20b HTTP/1.1" "bytes=0-1048575"
    let (status, rest) = line.split_once(' ')?;
    let (bytes, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix('"')?;
    let (request, rest) = rest.split_once("\" ")?;
    let mut parts = request.split(' ');
    let method = parts.next()?.to_string();
    let uri = parts.next()?.to_string();
    let range = rest.trim_matches('"').to_string();
    Some(NginxRequest {
        status: status.parse().ok()?,
        bytes: bytes.parse().ok()?,
        method,
        uri,
        range,
    })
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `config` to `dir/nginx.conf` and starts `nginx` on it, with `dir` as its prefix.
pub fn spawn_nginx(nginx: &Path, config: &str, dir: &Path) -> Child {
    let config_path = dir.join("nginx.conf");
    fs::write(&config_path, config).expect("write nginx.conf");
    Command::new(nginx)
        .arg("-c")
        .arg(&config_path)
        .arg("-p")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx")
}
