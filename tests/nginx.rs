//! ston-fs in front of a real nginx: the server operators actually run. nginx answers ranges
//! with 206 and no Accept-Ranges header, redirects directories, and escapes names its own way.

mod common;

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::mount::Mount;
use common::origin::pattern;
use common::{assert_file_matches, assert_random_preads, errno, MIB};

/// A private nginx on a loopback port, serving `root`, logging every request.
struct Nginx {
    child: Child,
    port: u16,
    access_log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(root: &Path) -> Nginx {
        let nginx =
            which("nginx").expect("nginx is not installed: run the suite with `bash tests/run.sh`");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let access_log = dir.path().join("access.log");
        let config = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\n\
             error_log {dir}/error.log warn;\nevents {{ worker_connections 256; }}\n\
             http {{\n  log_format ston '$status $body_bytes_sent \"$request\" \"$http_range\"';\n\
               access_log {log} ston;\n  client_body_temp_path {dir};\n  proxy_temp_path {dir};\n\
               fastcgi_temp_path {dir};\n  uwsgi_temp_path {dir};\n  scgi_temp_path {dir};\n\
               sendfile on;\n  default_type application/octet-stream;\n\
               server {{ listen 127.0.0.1:{port}; root {root}; autoindex off; }}\n}}\n",
            dir = dir.path().display(),
            log = access_log.display(),
            root = root.display(),
        );
        let config_path = dir.path().join("nginx.conf");
        fs::write(&config_path, config).expect("write nginx.conf");
        let child = Command::new(nginx)
            .arg("-c")
            .arg(&config_path)
            .arg("-p")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let started = Nginx {
            child,
            port,
            access_log,
            _dir: dir,
        };
        started.wait_listening();
        started
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Request lines logged so far (`status bytes "GET /x HTTP/1.1" "range"`).
    fn log_lines(&self) -> Vec<String> {
        // nginx writes each line as the response completes; give the last one a moment.
        std::thread::sleep(Duration::from_millis(200));
        fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn requests_for(&self, url_path: &str) -> Vec<String> {
        let needle = format!("\"GET {url_path} HTTP/1.1\"");
        self.log_lines()
            .into_iter()
            .filter(|l| l.contains(&needle))
            .collect()
    }

    fn body_bytes_for(&self, url_path: &str) -> u64 {
        self.requests_for(url_path)
            .iter()
            .filter_map(|l| l.split(' ').nth(1)?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[test]
fn nginx_origin_serves_exact_bytes_with_one_request_per_small_file() {
    let root = tempfile::tempdir().expect("tempdir");
    let big = pattern(41, 64 * MIB + 12_345);
    let small = pattern(42, 3000);
    let odd_name = "naïve 100% sure?#.txt";
    fs::create_dir(root.path().join("videos")).unwrap();
    fs::write(root.path().join("videos/big.bin"), &big).unwrap();
    fs::write(root.path().join("small.txt"), &small).unwrap();
    fs::write(root.path().join("empty"), b"").unwrap();
    fs::write(root.path().join(odd_name), b"odd name, right file\n").unwrap();
    fs::write(
        root.path().join("escape-target"),
        b"must not be reachable via ..",
    )
    .unwrap();
    let nginx = Nginx::start(root.path());
    let mount = Mount::builder(nginx.url()).opt("block_size=256K").mount();

    // A cold small file: stat + open + read is one origin request.
    assert_file_matches(&mount.path("small.txt"), &small, 64 * 1024);
    assert_eq!(
        nginx.requests_for("/small.txt").len(),
        1,
        "{:?}",
        nginx.log_lines()
    );

    // Sequential and random reads of a large file, every byte compared.
    assert_file_matches(&mount.path("videos/big.bin"), &big, MIB);
    let file = fs::File::open(mount.path("videos/big.bin")).unwrap();
    assert_random_preads(&file, &big, 7, 300, 200_000, "big.bin via nginx");
    drop(file);
    // Every block came from the origin exactly once.
    assert_eq!(nginx.body_bytes_for("/videos/big.bin"), big.len() as u64);

    // Directories are directories (nginx redirects /videos to /videos/), empty files are empty.
    assert!(fs::metadata(mount.path("videos")).unwrap().is_dir());
    let mut empty = Vec::new();
    fs::File::open(mount.path("empty"))
        .unwrap()
        .read_to_end(&mut empty)
        .unwrap();
    assert!(empty.is_empty());

    // A name with `%`, `?`, `#`, a space and unicode reaches the right file.
    assert_eq!(
        fs::read(mount.path(odd_name)).unwrap(),
        b"odd name, right file\n"
    );
    assert_eq!(
        errno(&fs::metadata(mount.path("no-such-file"))),
        Some(libc::ENOENT)
    );
    mount.unmount();
}

#[test]
fn nginx_cache_survives_remount_with_zero_origin_requests() {
    let root = tempfile::tempdir().expect("tempdir");
    let data = pattern(43, 5 * MIB + 3);
    fs::create_dir(root.path().join("media")).unwrap();
    fs::write(root.path().join("media/clip.mp4"), &data).unwrap();
    let nginx = Nginx::start(root.path());
    let cache = tempfile::tempdir().expect("tempdir");

    let mount = Mount::builder(nginx.url()).cache_dir(cache.path()).mount();
    assert_file_matches(&mount.path("media/clip.mp4"), &data, MIB);
    mount.unmount();
    let before = nginx.log_lines().len();

    let mount = Mount::builder(nginx.url()).cache_dir(cache.path()).mount();
    assert_file_matches(&mount.path("media/clip.mp4"), &data, MIB);
    assert_eq!(
        nginx.log_lines().len(),
        before,
        "a remount must be served from the cache"
    );
    mount.unmount();
}
