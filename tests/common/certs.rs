//! Certificates for the https test origins (rcgen).

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};

/// The parameters of a CA certificate named `common_name`, valid for `names` (none for a
/// CA that only signs).
pub fn ca_params(names: &[&str], common_name: &str) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("certificate parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}
