//! What a vehicle's fleet telemetry config says, built from fleetgate's own config: the claims
//! `sign-config` prints and the reconciler signs ([`ConfigTemplate`]), and the check that the
//! `ca` chain vehicles get verifies the certificate fleetgate serves ([`check_chain`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::config::{FieldConfig, TeslaConfig};
use crate::config::Config;
use crate::paths::resolve;

/// Everything of a telemetry config except its fields and `exp`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigTemplate {
    /// `hostname`.
    pub hostname: String,
    /// `port` (an integer, as vehicles require).
    pub port: u16,
    /// `ca`: the PEM chain vehicles trust.
    pub ca: String,
    /// `alert_types`.
    pub alert_types: Vec<String>,
    /// `delivery_policy`.
    pub delivery_policy: String,
    /// `prefer_typed`.
    pub prefer_typed: bool,
    /// Seconds a signed config is valid.
    pub ttl_s: i64,
    /// The fields when a vehicle names none.
    pub default_fields: BTreeMap<String, FieldConfig>,
}

impl ConfigTemplate {
    /// From `fleetgate.tesla` (and the vehicle port when `port` is unset).
    pub fn from_config(config: &Config, base: &Path) -> Result<ConfigTemplate, String> {
        let tesla = config
            .fleetgate
            .tesla
            .as_ref()
            .ok_or("the config has no `fleetgate.tesla` section")?;
        let hostname = tesla
            .hostname
            .clone()
            .ok_or("fleetgate.tesla.hostname is not set: the host name vehicles connect to")?;
        let ca_file = tesla.ca_file.as_deref().ok_or(
            "fleetgate.tesla.ca_file is not set: the PEM chain vehicles trust for fleetgate's certificate",
        )?;
        let path = resolve(base, ca_file);
        let ca = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "fleetgate.tesla.ca_file: cannot read {}: {e}",
                path.display()
            )
        })?;
        let port = match tesla.port {
            Some(p) => p,
            None => config
                .listen_addr()
                .map(|a| a.port())
                .map_err(|e| format!("fleetgate.tesla.port is unset and the vehicle port: {e}"))?,
        };
        if port == 0 {
            return Err("fleetgate.tesla.port: vehicles need a real port; the vehicle listener's `port` is 0, so set fleetgate.tesla.port".into());
        }
        Ok(ConfigTemplate {
            hostname,
            port,
            ca: normalise_pem(&ca),
            alert_types: tesla.alert_types.clone(),
            delivery_policy: tesla.delivery_policy.clone(),
            prefer_typed: tesla.prefer_typed,
            ttl_s: i64::from(tesla.config_ttl_days) * 86_400,
            default_fields: tesla.default_fields(),
        })
    }

    /// The claims of a config with `fields` that expires at `exp` (unix seconds).
    pub fn claims(&self, fields: &BTreeMap<String, FieldConfig>, exp: i64) -> Map<String, Value> {
        let mut claims = self.content(fields);
        claims.insert("exp".into(), exp.into());
        claims
    }

    /// The claims without `exp`: what must match for a vehicle's config to be this one.
    pub fn content(&self, fields: &BTreeMap<String, FieldConfig>) -> Map<String, Value> {
        let mut claims = Map::new();
        claims.insert("hostname".into(), self.hostname.clone().into());
        claims.insert("port".into(), self.port.into());
        claims.insert("ca".into(), self.ca.clone().into());
        claims.insert(
            "fields".into(),
            serde_json::to_value(fields).unwrap_or_default(),
        );
        if !self.alert_types.is_empty() {
            claims.insert("alert_types".into(), self.alert_types.clone().into());
        }
        claims.insert(
            "delivery_policy".into(),
            self.delivery_policy.clone().into(),
        );
        claims.insert("prefer_typed".into(), self.prefer_typed.into());
        claims
    }

    /// A digest of [`ConfigTemplate::content`]: equal digests, same config.
    pub fn digest(&self, fields: &BTreeMap<String, FieldConfig>) -> String {
        let text = super::jws::go_json(&Value::Object(self.content(fields)));
        hex::encode(&Sha256::digest(text.as_bytes())[..16])
    }
}

/// True when the config a vehicle reports (`fleet_telemetry_config`'s `config`) says what
/// `wanted` (the claims without `exp`) says. Numbers compare by value, PEM by its
/// certificates (line endings and trailing newlines do not count).
pub fn same_config(reported: &Map<String, Value>, wanted: &Map<String, Value>) -> bool {
    wanted.iter().all(|(key, want)| {
        let Some(got) = reported.get(key) else {
            // Tesla leaves out what equals its default
            return match key.as_str() {
                "prefer_typed" => want == &Value::Bool(false),
                "delivery_policy" => want == "latest",
                "alert_types" => want.as_array().is_some_and(Vec::is_empty),
                _ => false,
            };
        };
        match key.as_str() {
            "ca" => got
                .as_str()
                .is_some_and(|g| normalise_pem(g) == normalise_pem(want.as_str().unwrap_or(""))),
            _ => same_value(got, want),
        }
    })
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same_value(v, w))
        }
        _ => a == b,
    }
}

/// PEM certificates re-encoded one way (the chain's order kept).
pub fn normalise_pem(text: &str) -> String {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(text.as_bytes())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return text.trim().to_owned() + "\n";
    }
    certs.iter().map(|c| pem_of(c)).collect()
}

/// One certificate as PEM (64-character lines).
pub fn pem_of(cert: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// What checking the `ca` chain found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChainCheck {
    /// Non-fatal findings (no root in the chain).
    pub warnings: Vec<String>,
}

/// Checks that `ca_pem` (what vehicles trust) verifies `served` (the server's chain, leaf
/// first) for `hostname` now, as a vehicle's TLS client would. Errors say what to fix.
pub fn check_chain(
    ca_pem: &str,
    served: &[CertificateDer<'static>],
    hostname: &str,
) -> Result<ChainCheck, String> {
    let ca: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the ca chain is not PEM certificates: {e}"))?;
    if ca.is_empty() {
        return Err("the ca chain holds no certificate".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in &ca {
        roots
            .add(cert.clone())
            .map_err(|e| format!("a ca certificate cannot be a trust anchor: {e}"))?;
    }
    let Some((leaf, intermediates)) = served.split_first() else {
        return Err("the server certificate file holds no certificate".into());
    };
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("cannot build a verifier from the ca chain: {e}"))?;
    let name = ServerName::try_from(hostname.to_owned())
        .map_err(|e| format!("`{hostname}` is not a server name: {e}"))?;
    verifier
        .verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now())
        .map_err(|e| {
            format!("the ca chain does not verify the server certificate for `{hostname}`: {e} — put the CA that issued tls.server_cert (and its root) in fleetgate.tesla.ca_file, and make sure the certificate names `{hostname}`")
        })?;
    let mut check = ChainCheck::default();
    let has_root = ca.iter().any(|c| {
        x509_parser::parse_x509_certificate(c.as_ref())
            .map(|(_, x)| x.subject() == x.issuer())
            .unwrap_or(false)
    });
    if !has_root {
        check.warnings.push("the ca chain has no root certificate (a self-signed CA): vehicles verify up to a root they are given, so add the root to fleetgate.tesla.ca_file".into());
    }
    Ok(check)
}

/// Checks `fleetgate.tesla.ca_file` against `tls.server_cert` for `hostname` (the
/// config-level check of `check-config`, `serve` and `sign-config`).
pub fn check_config_chain(
    config: &Config,
    tesla: &TeslaConfig,
    base: &Path,
) -> Result<ChainCheck, String> {
    let (Some(ca_file), Some(hostname)) = (&tesla.ca_file, &tesla.hostname) else {
        return Ok(ChainCheck::default());
    };
    let Some(tls) = &config.tls else {
        return Ok(ChainCheck::default());
    };
    let ca_path = resolve(base, ca_file);
    let ca = std::fs::read_to_string(&ca_path)
        .map_err(|e| format!("cannot read {}: {e}", ca_path.display()))?;
    let cert_path = resolve(base, &tls.server_cert);
    let served: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("tls.server_cert {}: {e}", cert_path.display()))?;
    check_chain(&ca, &served, hostname)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::certs::DevCa;

    fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn a_chain_verifies_the_server_it_issued_and_nothing_else() {
        let root = DevCa::root("root").unwrap();
        let issuing = root.intermediate("issuing").unwrap();
        let server = issuing.server_cert(&["t.example.com"]).unwrap();
        let full = format!("{}{}", issuing.cert_pem, root.cert_pem);
        let ok = check_chain(&full, &chain(&server.chain_pem), "t.example.com").unwrap();
        assert!(ok.warnings.is_empty());
        // only the intermediate: verifies, with a warning about the missing root
        let partial = check_chain(
            &issuing.cert_pem,
            &chain(&server.chain_pem),
            "t.example.com",
        )
        .unwrap();
        assert_eq!(partial.warnings.len(), 1);
        // the wrong host name, or another CA: refused, with the fix
        let e = check_chain(&full, &chain(&server.chain_pem), "other.example.com").unwrap_err();
        assert!(e.contains("other.example.com"), "{e}");
        let other = DevCa::root("other").unwrap();
        assert!(check_chain(&other.cert_pem, &chain(&server.chain_pem), "t.example.com").is_err());
    }

    #[test]
    fn a_reported_config_matches_what_was_pushed_whatever_its_formatting() {
        let template = ConfigTemplate {
            hostname: "h".into(),
            port: 443,
            ca: "x".into(),
            alert_types: vec![],
            delivery_policy: "latest".into(),
            prefer_typed: true,
            ttl_s: 86_400,
            default_fields: super::super::config::Preset::Arrival.fields(),
        };
        let wanted = template.content(&template.default_fields);
        let mut reported = template.claims(&template.default_fields, 1);
        assert!(same_config(&reported, &wanted));
        reported.insert("port".into(), serde_json::json!(443.0));
        assert!(same_config(&reported, &wanted));
        reported.insert("port".into(), serde_json::json!(4443));
        assert!(!same_config(&reported, &wanted));
    }
}
