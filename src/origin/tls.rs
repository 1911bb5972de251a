//! Certificate pins: trust one exact origin certificate, self-signed ones included.
//!
//! Internal origins often present a self-signed certificate that is its own CA. webpki
//! rightly refuses such a certificate as an end entity even when it is listed in `ca_file`
//! (`CaUsedAsEndEntity`). A pin trusts that exact certificate, by the SHA-256 of its DER
//! bytes, and nothing else: every other certificate still goes through normal verification.
//! The handshake signature is always checked, so a pin cannot be replayed without the key.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

#[derive(Debug)]
struct PinnedVerifier {
    pins: Vec<[u8; 32]>,
    /// The platform's roots plus `ca_file`: what every unpinned certificate must pass.
    fallback: Arc<rustls_platform_verifier::Verifier>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fingerprint: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if self.pins.contains(&fingerprint) {
            return Ok(ServerCertVerified::assertion());
        }
        self.fallback
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.fallback.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.fallback.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.fallback.supported_verify_schemes()
    }
}

/// A rustls client configuration that trusts the pinned certificates as well as the
/// platform's roots and `extra_roots` (from `ca_file`).
pub fn pinned_config(
    pins: &[[u8; 32]],
    extra_roots: Vec<CertificateDer<'static>>,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let fallback =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())
            .map_err(|e| format!("cannot load the system's CA roots: {e}"))?;
    let verifier = PinnedVerifier {
        pins: pins.to_vec(),
        fallback: Arc::new(fallback),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
