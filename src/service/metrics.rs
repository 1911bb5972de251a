//! The Prometheus endpoint: `GET /metrics` on a loopback address, every figure under a
//! `stonfs_` name.

use std::sync::Arc;

use crate::cache::Cache;

/// Serves `GET /metrics` in Prometheus text format on `addr` (a loopback address).
pub fn serve(cache: Arc<Cache>, addr: std::net::SocketAddr) {
    tokio::spawn(async move {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(%addr, "no metrics endpoint: {e}");
                return;
            }
        };
        loop {
            let accepted = listener.accept().await;
            let Some(stream) = super::control::accept_or_back_off(accepted, "metrics").await else {
                continue;
            };
            let cache = cache.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let found = request.uri().path() == "/metrics";
                        let body = if found {
                            cache.snapshot().to_prometheus()
                        } else {
                            String::new()
                        };
                        async move {
                            hyper::Response::builder()
                                .status(if found { 200 } else { 404 })
                                .header("content-type", "text/plain; version=0.0.4")
                                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
}
