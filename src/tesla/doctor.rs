//! `fleetgate tesla doctor`: checks what cars check before they stream, against the config and
//! the running server — the `ca` chain verifies the certificate served for `hostname`, it is
//! not expired, its key is one vehicles take, the port is an integer, the server asks for
//! client certificates and names the CAs vehicles' certificates come from, the hostname is
//! under the partner domain, the partner key loads. Each failure says the fix.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;

use crate::config::Config;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Fine.
    Ok,
    /// Works, but should be fixed.
    Warn,
    /// Vehicles will not stream until it is fixed.
    Fail,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Ok, warn or fail.
    pub level: Level,
    /// What was checked.
    pub check: &'static str,
    /// What was found, and the fix when it is not ok.
    pub detail: String,
}

/// Every finding, in the order checked.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The findings.
    pub findings: Vec<Finding>,
}

impl Report {
    fn add(&mut self, level: Level, check: &'static str, detail: impl Into<String>) {
        self.findings.push(Finding {
            level,
            check,
            detail: detail.into(),
        });
    }

    /// True when a check failed.
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.level == Level::Fail)
    }

    /// The report as lines: `ok`, `warn` or `FAIL`, the check, what was found.
    pub fn lines(&self) -> Vec<String> {
        self.findings
            .iter()
            .map(|f| {
                let tag = match f.level {
                    Level::Ok => "ok  ",
                    Level::Warn => "warn",
                    Level::Fail => "FAIL",
                };
                format!("{tag}  {}: {}", f.check, f.detail)
            })
            .collect()
    }
}

/// Runs every check of the config at `path`; `connect` (HOST:PORT) overrides where the
/// served certificate is fetched from (default `hostname:port`).
pub async fn run(path: &Path, connect: Option<&str>) -> Report {
    let mut report = Report::default();
    let base = path.parent().unwrap_or(Path::new(".")).to_owned();
    // the port as written: a string is the mistake Tesla's vehicles ignore silently
    if let Ok(text) = std::fs::read_to_string(path) {
        if let Ok(raw) = serde_json::from_str::<serde_json::Value>(&text) {
            match raw.pointer("/fleetgate/tesla/port") {
                Some(serde_json::Value::String(s)) => {
                    report.add(Level::Fail, "port", format!("fleetgate.tesla.port is the string \"{s}\": vehicles need an integer; write {s} without quotes"));
                    return report;
                }
                Some(serde_json::Value::Number(_)) | None => {}
                Some(other) => {
                    report.add(Level::Fail, "port", format!("fleetgate.tesla.port is {other}: write the port vehicles connect to as an integer"));
                    return report;
                }
            }
        }
    }
    let loaded = match Config::load(path) {
        Ok(loaded) => loaded,
        Err(e) => {
            report.add(Level::Fail, "config", format!("{e}"));
            return report;
        }
    };
    let config = &loaded.config;
    let Some(tesla) = config.fleetgate.tesla.clone() else {
        report.add(Level::Fail, "config", "no fleetgate.tesla section: set hostname, ca_file, private_key_file and partner_domain (docs/onboarding.md)");
        return report;
    };
    report.add(Level::Ok, "config", format!("{} loads", path.display()));
    let template = match super::telemetry_config::ConfigTemplate::from_config(config, &base) {
        Ok(t) => t,
        Err(e) => {
            report.add(Level::Fail, "telemetry config", e);
            return report;
        }
    };
    report.add(
        Level::Ok,
        "port",
        format!(
            "vehicles connect to {}:{} (an integer port)",
            template.hostname, template.port
        ),
    );
    match (&tesla.partner_domain, &template.hostname) {
        (Some(domain), host) if host == domain || host.ends_with(&format!(".{domain}")) => {
            report.add(Level::Ok, "partner domain", format!("{host} is under {domain}"))
        }
        (Some(domain), host) => report.add(Level::Fail, "partner domain", format!("{host} is not under the partner domain {domain}: Tesla accepts telemetry hosts under the registered domain; use a subdomain of {domain}")),
        (None, _) => report.add(Level::Warn, "partner domain", "fleetgate.tesla.partner_domain is not set: the pairing link and Tesla's checks need it"),
    }
    match tesla.partner_key(&base) {
        Ok(key) => report.add(
            Level::Ok,
            "partner key",
            format!("P-256 key loads (iss {})", key.issuer()),
        ),
        Err(e) => report.add(Level::Fail, "partner key", e),
    }
    match super::telemetry_config::check_config_chain(config, &tesla, &base) {
        Ok(check) => {
            report.add(
                Level::Ok,
                "ca chain (files)",
                format!(
                    "fleetgate.tesla.ca_file verifies tls.server_cert for {}",
                    template.hostname
                ),
            );
            for w in check.warnings {
                report.add(Level::Warn, "ca chain (files)", w);
            }
        }
        Err(e) => report.add(Level::Fail, "ca chain (files)", e),
    }
    let target = connect
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{}:{}", template.hostname, template.port));
    served(&mut report, config, &base, &template, &target).await;
    report
}

/// What the handshake saw.
#[derive(Debug, Default)]
struct Seen {
    certs: Vec<CertificateDer<'static>>,
    verified: Option<Result<(), String>>,
    asked_for_client_cert: bool,
    hints: Vec<Vec<u8>>,
}

/// Verifies as a vehicle would (the `ca` chain, the hostname, now) and records what it saw.
#[derive(Debug)]
struct Recording {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    seen: Arc<Mutex<Seen>>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.certs = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        seen.verified = Some(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Records the CA names a server asks client certificates from, presenting none.
#[derive(Debug)]
struct HintRecorder(Arc<Mutex<Seen>>);

impl ResolvesClientCert for HintRecorder {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.asked_for_client_cert = true;
        seen.hints = root_hint_subjects.iter().map(|h| h.to_vec()).collect();
        None
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Names of DER `Name`s, readable (`CN=…`), with or without their SEQUENCE header.
fn name_of(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::FromDer;
    if let Ok((_, name)) = x509_parser::x509::X509Name::from_der(der) {
        return Some(name.to_string());
    }
    let mut wrapped = vec![0x30];
    let len = der.len();
    if len < 128 {
        wrapped.push(len as u8);
    } else if len < 256 {
        wrapped.extend([0x81, len as u8]);
    } else {
        wrapped.extend([0x82, (len >> 8) as u8, len as u8]);
    }
    wrapped.extend_from_slice(der);
    x509_parser::x509::X509Name::from_der(&wrapped)
        .ok()
        .map(|(_, n)| n.to_string())
}

/// Subjects of the CAs the config trusts for vehicle certificates.
fn expected_client_cas(config: &Config, base: &Path) -> Vec<String> {
    use crate::ingest::tesla_ca::{ClientRoots, ENG_CA_PEM, PROD_CA_PEM};
    let pem = match config.client_roots(base) {
        ClientRoots::File(path) => std::fs::read_to_string(path).unwrap_or_default(),
        ClientRoots::EmbeddedProd => PROD_CA_PEM.to_owned(),
        ClientRoots::EmbeddedEng => ENG_CA_PEM.to_owned(),
    };
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .filter_map(|c| {
            x509_parser::parse_x509_certificate(c.as_ref())
                .ok()
                .map(|(_, x)| x.subject().to_string())
        })
        .collect()
}

async fn served(
    report: &mut Report,
    config: &Config,
    base: &Path,
    template: &super::telemetry_config::ConfigTemplate,
    target: &str,
) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(template.ca.as_bytes()).filter_map(Result::ok) {
        let _ = roots.add(cert);
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = match rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    {
        Ok(v) => v,
        Err(e) => {
            report.add(
                Level::Fail,
                "served certificate",
                format!("the ca chain is not usable as trust anchors: {e}"),
            );
            return;
        }
    };
    let seen = Arc::new(Mutex::new(Seen::default()));
    let tls = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Recording {
                inner,
                seen: seen.clone(),
            }))
            .with_client_cert_resolver(Arc::new(HintRecorder(seen.clone()))),
        Err(e) => {
            report.add(Level::Fail, "served certificate", e.to_string());
            return;
        }
    };
    let name = match ServerName::try_from(template.hostname.clone()) {
        Ok(n) => n,
        Err(e) => {
            report.add(
                Level::Fail,
                "hostname",
                format!("`{}` is not a server name: {e}", template.hostname),
            );
            return;
        }
    };
    let tcp = match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(target),
    )
    .await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            report.add(Level::Fail, "reachable", format!("cannot connect to {target}: {e} — is fleetgate running and {target} open to the internet? (use --connect HOST:PORT to check another address)"));
            return;
        }
        Err(_) => {
            report.add(Level::Fail, "reachable", format!("no answer from {target} within 5 s: check DNS, the firewall and the load balancer"));
            return;
        }
    };
    report.add(
        Level::Ok,
        "reachable",
        format!("{target} accepts connections"),
    );
    let handshake = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp),
    )
    .await;
    let handshake_error = match handshake {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("the TLS handshake did not finish within 10 s".into()),
    };
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
    match (&seen.verified, &handshake_error) {
        (Some(Ok(())), _) => report.add(Level::Ok, "served certificate", format!("the ca chain verifies the certificate {target} serves for {}", template.hostname)),
        (Some(Err(e)), _) => report.add(Level::Fail, "served certificate", format!("vehicles will refuse the certificate {target} serves: {e} — serve a certificate for {} issued under fleetgate.tesla.ca_file (full chain in tls.server_cert)", template.hostname)),
        (None, Some(e)) => {
            report.add(Level::Fail, "served certificate", format!("no certificate was served: {e}"));
            return;
        }
        (None, None) => {}
    }
    if let Some(leaf) = seen.certs.first() {
        leaf_checks(report, leaf);
    }
    if !seen.asked_for_client_cert {
        report.add(Level::Fail, "client certificates", format!("{target} does not ask for a client certificate: vehicles authenticate with theirs (mTLS); terminate TLS in fleetgate, or use fleetgate.proxy_mtls behind a proxy that forwards the certificate"));
        return;
    }
    let advertised: Vec<String> = seen.hints.iter().filter_map(|h| name_of(h)).collect();
    let expected = expected_client_cas(config, base);
    let missing: Vec<&String> = expected
        .iter()
        .filter(|e| !advertised.contains(e))
        .collect();
    if advertised.is_empty() {
        report.add(Level::Warn, "client CAs", "the server asks for a client certificate but names no CA: most vehicles still send theirs; fleetgate names its trusted CAs");
    } else if expected.iter().all(|e| !advertised.contains(e)) {
        report.add(Level::Fail, "client CAs", format!("the server names none of the CAs the config trusts for vehicles ({}): is another server answering on {target}? advertised: {}", expected.join("; "), advertised.join("; ")));
    } else if !missing.is_empty() {
        report.add(
            Level::Warn,
            "client CAs",
            format!(
                "the server does not name {} of the CAs the config trusts",
                missing.len()
            ),
        );
    } else {
        report.add(Level::Ok, "client CAs", format!("the server asks for a certificate from the {} CA(s) vehicles' certificates chain to", advertised.len()));
    }
}

/// Key type and expiry of the served leaf.
fn leaf_checks(report: &mut Report, leaf: &CertificateDer<'_>) {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        report.add(
            Level::Fail,
            "served certificate",
            "the served leaf does not parse as X.509",
        );
        return;
    };
    let spki = cert.public_key();
    let algorithm = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    match (algorithm.as_str(), curve.as_deref()) {
        ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7")) => {
            report.add(Level::Ok, "key type", "ECDSA P-256 (what Tesla's guide uses)")
        }
        ("1.2.840.113549.1.1.1", _) => {
            let bits = match spki.parsed() {
                Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => rsa.key_size(),
                _ => 0,
            };
            if bits >= 2048 {
                report.add(Level::Ok, "key type", format!("RSA {bits} bits"));
            } else {
                report.add(Level::Fail, "key type", format!("RSA {bits} bits is too weak: reissue with `openssl ecparam -name prime256v1 -genkey`"));
            }
        }
        (a, c) => report.add(Level::Fail, "key type", format!("key algorithm {a} (curve {}) is not one vehicles take: reissue the server certificate with an ECDSA P-256 key (`openssl ecparam -name prime256v1 -genkey`)", c.unwrap_or("none"))),
    }
    let left_s =
        cert.validity().not_after.timestamp() - time::OffsetDateTime::now_utc().unix_timestamp();
    if left_s <= 0 {
        report.add(
            Level::Fail,
            "expiry",
            "the served certificate has expired: renew it",
        );
    } else if left_s < 30 * 86_400 {
        report.add(
            Level::Warn,
            "expiry",
            format!(
                "the served certificate expires in {} day(s): renew it",
                left_s / 86_400
            ),
        );
    } else {
        report.add(
            Level::Ok,
            "expiry",
            format!("valid for {} more days", left_s / 86_400),
        );
    }
}
