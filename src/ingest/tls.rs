//! TLS for the vehicle listener: server certificate, client certificates required and verified
//! against `tls.ca_file` (or Tesla's embedded CA bundles when it is unset), and the mapping of handshake failures to metric reasons.

use std::path::Path;
use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::tesla_ca::ClientRoots;

/// Why the TLS configuration could not be built (names the config key to fix).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{key}: cannot use {path}: {detail}")]
    File {
        /// Config key.
        key: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// rustls refused the combination.
    #[error("{0}")]
    Rustls(String),
}

fn file_err(key: &'static str, path: &Path, detail: impl ToString) -> TlsSetupError {
    TlsSetupError::File {
        key,
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

/// Reads every certificate of a PEM file.
pub fn load_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(key, path, e))?;
    if certs.is_empty() {
        let detail = match pem_labels(path).iter().find(|l| l.contains("PRIVATE KEY")) {
            Some(label) => format!("the file holds a {label}, not a certificate: are the certificate and key paths swapped?"),
            None => "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file".into(),
        };
        return Err(file_err(key, path, detail));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub fn load_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        let labels = pem_labels(path);
        if labels.iter().any(|l| l == "CERTIFICATE") && !labels.iter().any(|l| l.contains("KEY")) {
            file_err(
                key,
                path,
                "the file holds certificates, not a private key: are the certificate and key paths swapped?",
            )
        } else {
            file_err(key, path, e)
        }
    })
}

/// The labels of a PEM file's sections (`CERTIFICATE`, `EC PRIVATE KEY`, …), for errors
/// that say what a file holds instead of what was expected.
fn pem_labels(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("-----BEGIN "))
        .filter_map(|l| l.strip_suffix("-----"))
        .map(str::to_owned)
        .collect()
}

/// The verifier of client certificate chains against `roots` (the handshake's, and the
/// proxy listener's for forwarded certificates).
pub fn client_verifier(roots: &ClientRoots) -> Result<Arc<dyn ClientCertVerifier>, TlsSetupError> {
    let (certs, path) = match roots {
        ClientRoots::File(path) => (load_certs("tls.ca_file", path)?, path.as_path()),
        ClientRoots::EmbeddedProd | ClientRoots::EmbeddedEng => {
            let pem = if *roots == ClientRoots::EmbeddedEng {
                super::tesla_ca::ENG_CA_PEM
            } else {
                super::tesla_ca::PROD_CA_PEM
            };
            let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    TlsSetupError::Rustls(format!("tls: embedded Tesla CA bundle: {e}"))
                })?;
            (certs, Path::new("<embedded>"))
        }
    };
    let mut store = RootCertStore::empty();
    for cert in certs {
        store
            .add(cert)
            .map_err(|e| file_err("tls.ca_file", path, e))?;
    }
    WebPkiClientVerifier::builder(Arc::new(store))
        .build()
        .map_err(|e| file_err("tls.ca_file", path, e))
}

/// The server TLS configuration: mTLS with client certificates checked by `verifier`, or
/// server-only TLS when `verifier` is `None` (the proxy listener's optional TLS).
pub fn server_config(
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    server_cert: &Path,
    server_key: &Path,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let chain = load_certs("tls.server_cert", server_cert)?;
    let key = load_key("tls.server_key", server_key)?;
    let builder = match verifier {
        Some(verifier) => ServerConfig::builder().with_client_cert_verifier(verifier),
        None => ServerConfig::builder().with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                TlsSetupError::Rustls(format!(
                    "{} is not the key of the certificate in {} (their public keys differ): use the key the certificate was issued for",
                    server_key.display(),
                    server_cert.display()
                ))
            }
            e => TlsSetupError::Rustls(format!("tls.server_cert / tls.server_key: {e}")),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Resumption tickets are cheap to serve and halve reconnect storms' CPU.
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(20_000);
    Ok(Arc::new(config))
}

/// Short metric label for a failed handshake.
pub fn handshake_failure_reason(err: &std::io::Error) -> &'static str {
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return match err.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            std::io::ErrorKind::TimedOut => "timeout",
            std::io::ErrorKind::ConnectionReset => "reset",
            _ => "io",
        };
    };
    certificate_error_reason(tls)
}

/// Short metric label for a TLS or certificate verification error.
pub fn certificate_error_reason(tls: &rustls::Error) -> &'static str {
    match tls {
        rustls::Error::NoCertificatesPresented => "no_client_cert",
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::UnknownIssuer => "untrusted_issuer",
            CertificateError::Revoked => "revoked",
            CertificateError::BadSignature => "bad_signature",
            _ => "bad_certificate",
        },
        rustls::Error::InvalidMessage(_) => "not_tls",
        rustls::Error::AlertReceived(_) => "client_alert",
        rustls::Error::PeerIncompatible(_) => "incompatible",
        _ => "tls_error",
    }
}
