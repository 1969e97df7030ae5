//! The TLS client settings of sinks that dial out over TLS (an MQTT broker, webhook receivers):
//! the system's roots, or a PEM bundle named in the config, with the `ring` provider.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject as _;

/// A rustls client config trusting `ca_file` (PEM) or, when `None`, the system's roots;
/// `key` names the config key in errors (e.g. `fleetgate.mqtt.ca_file`).
pub fn client_config(ca_file: Option<&Path>, key: &str) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| anyhow::anyhow!("{key} {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| anyhow::anyhow!("{key} {}: {e}", path.display()))?;
                roots.add(cert)?;
            }
            if roots.is_empty() {
                anyhow::bail!("{key} {} holds no PEM certificate", path.display());
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                anyhow::bail!("no system CA certificates to verify the server with: set {key}");
            }
        }
    }
    // ring is the one provider this build compiles in (no aws-lc); newer rustls 0.23 patch
    // releases mark its constructor deprecated for lacking post-quantum key exchange
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
