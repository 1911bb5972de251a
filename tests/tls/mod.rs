//! A small https test origin for the edge tests: a throw-away CA and a server
//! certificate for `127.0.0.1` / `localhost` (rcgen), served with
//! tokio-rustls + hyper (HTTP/1.1 only). It serves an in-memory map of files
//! with single byte ranges, an ETag and a Last-Modified, and records every
//! request (method, raw target, Range, status) and every failed handshake.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use percent_encoding::percent_decode_str;
use rcgen::{
    CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

const ETAG: &str = "\"tls-v1\"";
const LAST_MODIFIED: &str = "Tue, 14 Nov 2023 22:13:20 GMT";

/// One request as the TLS origin saw it.
#[derive(Clone, Debug)]
pub struct TlsRequest {
    pub method: String,
    pub target: String,
    pub range: Option<String>,
    pub status: u16,
}

struct Shared {
    files: Mutex<HashMap<String, Bytes>>,
    log: Mutex<Vec<TlsRequest>>,
    handshakes_ok: AtomicU64,
    handshakes_failed: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct TlsOrigin {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: PathBuf,
    rt: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

/// A fresh CA and a server certificate (for 127.0.0.1 and localhost) signed
/// by it. Returns (CA PEM, server chain DER, server key DER).
fn make_certs() -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let ca_params = crate::common::certs::ca_params(&[], "ston-fs edge test CA");
    let ca_key = KeyPair::generate().expect("CA key");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("self-signed CA");

    let mut leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("leaf params");
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    leaf_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = leaf_params.signed_by(&leaf_key, &ca).expect("sign leaf");

    let chain = vec![leaf.der().clone(), ca.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    (ca.pem(), chain, key)
}

impl TlsOrigin {
    pub fn start() -> TlsOrigin {
        let dir = tempfile::Builder::new()
            .prefix("ston-fs-tls-")
            .tempdir()
            .expect("tempdir");
        let (ca_pem, chain, key) = make_certs();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca_pem).expect("write ca.pem");

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let (rt, listener, addr) = crate::common::origin::loopback_server("tls-origin");
        let shared = Arc::new(Shared {
            files: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            handshakes_ok: AtomicU64::new(0),
            handshakes_failed: AtomicU64::new(0),
        });
        let sh = shared.clone();
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                let acceptor = acceptor.clone();
                let sh2 = sh.clone();
                tokio::spawn(async move {
                    let tls = match acceptor.accept(stream).await {
                        Ok(t) => t,
                        Err(_) => {
                            sh2.handshakes_failed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    sh2.handshakes_ok.fetch_add(1, Ordering::SeqCst);
                    let answer = move |req| std::future::ready(handle(&sh2, req));
                    crate::common::origin::serve_http1(tls, answer).await;
                });
            }
        });
        TlsOrigin {
            shared,
            addr,
            ca_pem: ca_path,
            rt: Some(rt),
            _dir: dir,
        }
    }

    /// `https://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("https://{}/", self.addr)
    }

    /// PEM file holding the CA that signed the server certificate.
    pub fn ca_pem(&self) -> &Path {
        &self.ca_pem
    }

    /// Adds or replaces the file at the (decoded) `path`.
    pub fn put(&self, path: &str, data: impl Into<Bytes>) {
        lock(&self.shared.files).insert(path.to_string(), data.into());
    }

    pub fn requests(&self) -> Vec<TlsRequest> {
        lock(&self.shared.log).clone()
    }

    pub fn reset(&self) {
        lock(&self.shared.log).clear();
        self.shared.handshakes_ok.store(0, Ordering::SeqCst);
        self.shared.handshakes_failed.store(0, Ordering::SeqCst);
    }

    pub fn handshakes_ok(&self) -> u64 {
        self.shared.handshakes_ok.load(Ordering::SeqCst)
    }

    pub fn handshakes_failed(&self) -> u64 {
        self.shared.handshakes_failed.load(Ordering::SeqCst)
    }
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// `bytes=a-b` / `bytes=a-` / `bytes=-n` against `len`: Some(Ok((a, b)))
/// inclusive, Some(Err(())) unsatisfiable, None to ignore the header.
fn parse_range(value: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 || len == 0 {
            return Some(Err(()));
        }
        return Some(Ok((len.saturating_sub(n), len - 1)));
    }
    let a: u64 = a.parse().ok()?;
    let b: u64 = if b.is_empty() {
        u64::MAX
    } else {
        b.parse().ok()?
    };
    if b < a {
        return None;
    }
    if a >= len {
        return Some(Err(()));
    }
    Some(Ok((a, b.min(len - 1))))
}

fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let path = percent_decode_str(req.uri().path())
        .decode_utf8_lossy()
        .into_owned();
    let range = req
        .headers()
        .get("range")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());

    // (The guard must not live into the if-let chain below, which locks again.)
    let file = lock(&shared.files).get(&path).cloned();
    let mut headers: Vec<(&str, String)> = Vec::new();
    let (status, body) = if method != "GET" && method != "HEAD" {
        (StatusCode::METHOD_NOT_ALLOWED, Bytes::new())
    } else if let Some(data) = file {
        let len = data.len() as u64;
        headers.push(("etag", ETAG.to_string()));
        headers.push(("last-modified", LAST_MODIFIED.to_string()));
        headers.push(("accept-ranges", "bytes".to_string()));
        match range.as_deref().and_then(|r| parse_range(r, len)) {
            Some(Ok((a, b))) => {
                headers.push(("content-range", format!("bytes {a}-{b}/{len}")));
                (
                    StatusCode::PARTIAL_CONTENT,
                    data.slice(a as usize..=b as usize),
                )
            }
            Some(Err(())) => {
                headers.push(("content-range", format!("bytes */{len}")));
                (StatusCode::RANGE_NOT_SATISFIABLE, Bytes::new())
            }
            None => (StatusCode::OK, data),
        }
    } else {
        // Directories as nginx without autoindex: `/dir` -> 301, `/dir/` -> 403.
        let files = lock(&shared.files);
        let as_dir = if path.ends_with('/') {
            path.clone()
        } else {
            format!("{path}/")
        };
        let is_dir = files.keys().any(|k| k.starts_with(&as_dir));
        drop(files);
        if is_dir && !path.ends_with('/') {
            headers.push(("location", format!("{}/", req.uri().path())));
            (
                StatusCode::MOVED_PERMANENTLY,
                Bytes::from_static(b"301 Moved Permanently\n"),
            )
        } else if is_dir {
            (
                StatusCode::FORBIDDEN,
                Bytes::from_static(b"403 Forbidden\n"),
            )
        } else {
            (
                StatusCode::NOT_FOUND,
                Bytes::from_static(b"404 Not Found\n"),
            )
        }
    };
    lock(&shared.log).push(TlsRequest {
        method: method.clone(),
        target,
        range,
        status: status.as_u16(),
    });
    let body = if method == "HEAD" { Bytes::new() } else { body };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    for (k, v) in headers {
        resp.headers_mut()
            .insert(k, hyper::header::HeaderValue::from_str(&v).unwrap());
    }
    resp
}
