//! TLS for the destinations that reach the network on their own (HTTPS webhooks, PostgreSQL):
//! one client configuration, rustls on ring.
//!
//! The certificates trusted are the system's (`/etc/ssl/certs` and the like, found as curl
//! and OpenSSL find them; `SSL_CERT_FILE` / `SSL_CERT_DIR` override), plus the PEM file a
//! destination names with `ca=FILE` (a private CA, or a self-signed receiver's own
//! certificate). A server's certificate must name the host the address names.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// A client configuration trusting the system's roots and the certificates of `ca` (a PEM
/// file), or why it cannot be made: a `ca` that cannot be read or holds no certificate,
/// or no trusted certificate at all.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (_, _) = roots.add_parsable_certificates(native.certs);
    if let Some(ca) = ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("ca={}: cannot read its certificates: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "ca={}: holds no PEM certificate (BEGIN CERTIFICATE)",
                ca.display()
            ));
        }
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!(
                "ca={}: none of its certificates could be used",
                ca.display()
            ));
        }
    }
    if roots.is_empty() {
        return Err(
            "no trusted certificate: the system has none (install ca-certificates) and no ca= was given"
                .into(),
        );
    }
    // ring, not aws-lc-rs (whose build needs cmake and a long C compile): rustls 0.23.48
    // deprecates ring's provider only because it offers no post-quantum key exchange
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_is_not_pem_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("tl-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("ca.pem");
        std::fs::write(&bad, "not a certificate\n").unwrap();
        let err = client_config(Some(&bad)).unwrap_err();
        assert!(err.contains("holds no PEM certificate"), "{err}");
        let err = client_config(Some(&dir.join("absent.pem"))).unwrap_err();
        assert!(err.contains("cannot read"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
