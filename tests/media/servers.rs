//! A private nginx that streams from a mount: nginx-rtmp's `play` (VOD over RTMP) and the
//! HTTP `mp4` module's pseudo-streaming (`?start=`), on loopback ports.
// Each test binary uses part of this file.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;

use crate::common::nginx::{free_port, spawn_nginx, wait_listening, which};

/// Where Debian's libnginx-mod-rtmp puts the module.
const RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

/// nginx with an RTMP application `vod` playing files from `root`, and an HTTP server whose
/// `.mp4` files go through the `mp4` module.
pub struct StreamingNginx {
    child: Child,
    pub rtmp_port: u16,
    pub http_port: u16,
    error_log: PathBuf,
    _dir: tempfile::TempDir,
}

impl StreamingNginx {
    pub fn start(root: &Path) -> StreamingNginx {
        let nginx =
            which("nginx").expect("nginx is not installed: run the suite with `bash tests/run.sh`");
        assert!(
            Path::new(RTMP_MODULE).exists(),
            "{RTMP_MODULE} is missing: run the suite with `bash tests/run.sh` (libnginx-mod-rtmp)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let (rtmp_port, http_port) = (free_port(), free_port());
        let error_log = dir.path().join("error.log");
        let config = format!(
            "load_module {RTMP_MODULE};\n\
             daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\n\
             error_log {err} warn;\nevents {{ worker_connections 256; }}\n\
             rtmp {{\n  server {{\n    listen 127.0.0.1:{rtmp_port};\n\
                 application vod {{\n      play {root};\n    }}\n  }}\n}}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir};\n  proxy_temp_path {dir};\n\
               fastcgi_temp_path {dir};\n  uwsgi_temp_path {dir};\n  scgi_temp_path {dir};\n\
               default_type application/octet-stream;\n\
               server {{\n    listen 127.0.0.1:{http_port};\n    root {root};\n\
                 location ~ \\.mp4$ {{ mp4; }}\n  }}\n}}\n",
            dir = dir.path().display(),
            err = error_log.display(),
            root = root.display(),
        );
        let mut child = spawn_nginx(&nginx, &config, dir.path());
        wait_listening(rtmp_port, "nginx-rtmp", &mut child, &error_log);
        wait_listening(http_port, "nginx", &mut child, &error_log);
        StreamingNginx {
            child,
            rtmp_port,
            http_port,
            error_log,
            _dir: dir,
        }
    }

    pub fn rtmp_url(&self, name: &str) -> String {
        format!("rtmp://127.0.0.1:{}/vod/{name}", self.rtmp_port)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.http_port)
    }

    pub fn errors(&self) -> String {
        fs::read_to_string(&self.error_log).unwrap_or_default()
    }
}

impl Drop for StreamingNginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
