//! mTLS terminated at a trusted proxy: the vehicle's certificate arrives in a request header
//! (RFC 9440 `Client-Cert` / `Client-Cert-Chain`, or the AWS ALB `X-Amzn-Mtls-Clientcert`),
//! and is believed **only** from source addresses in `fleetgate.proxy_mtls.trusted_proxies`.
//! The chain is verified against `tls.ca_file` by the same webpki verifier the direct listener's
//! handshake uses, then the same identity rules apply. Off unless configured.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};

use super::http::ForwardedCert;
use super::identity::{identity_from_der, Identity};

/// Which header form the proxy uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyHeaderForm {
    /// RFC 9440: `Client-Cert: :<base64 DER>:` and `Client-Cert-Chain: :<b64>:, :<b64>:`.
    Rfc9440,
    /// AWS ALB mTLS passthrough: `X-Amzn-Mtls-Clientcert: <URL-encoded PEM chain, leaf first>`.
    AwsAlb,
}

impl ProxyHeaderForm {
    /// The header that carries the leaf certificate.
    pub fn header_name(self) -> &'static str {
        match self {
            ProxyHeaderForm::Rfc9440 => "Client-Cert",
            ProxyHeaderForm::AwsAlb => "X-Amzn-Mtls-Clientcert",
        }
    }
}

/// `fleetgate.proxy_mtls`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyMtlsConfig {
    /// Listen address (IP:PORT) of the proxy-facing listener.
    pub listen: String,
    /// Header form: `rfc9440` or `aws_alb`.
    pub header: ProxyHeaderForm,
    /// Source addresses (CIDR, or a bare IP) whose certificate headers are believed.
    pub trusted_proxies: Vec<String>,
    /// Serve server-only TLS (with `tls.server_cert` / `tls.server_key`) instead of plain HTTP.
    #[serde(default)]
    pub tls: bool,
}

impl ProxyMtlsConfig {
    /// Parses `trusted_proxies`; the error names the entry and the expected form.
    pub fn trusted(&self) -> Result<TrustedProxies, String> {
        if self.trusted_proxies.is_empty() {
            return Err("fleetgate.proxy_mtls.trusted_proxies is empty: list the proxies' addresses (CIDR such as 10.0.0.0/8), or every certificate header would be refused".into());
        }
        let mut nets = Vec::with_capacity(self.trusted_proxies.len());
        for entry in &self.trusted_proxies {
            let net = entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!("fleetgate.proxy_mtls.trusted_proxies: `{entry}` is not a CIDR (10.0.0.0/8, fd00::/8) or an IP address")
                })?;
            nets.push(net);
        }
        Ok(TrustedProxies(nets))
    }
}

/// The trusted-proxy address ranges.
#[derive(Debug, Clone)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// True when `ip` (an IPv4-mapped IPv6 address counts as its IPv4 form) is in a range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// Why a proxied request carries no acceptable certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyCertError {
    /// A certificate header from an address outside `trusted_proxies`.
    #[error("certificate header from {0}, which is not a trusted proxy")]
    UntrustedPeer(IpAddr),
    /// No certificate header (the proxy did not require or forward a client certificate).
    #[error("no `{0}` header: the proxy must forward the client certificate")]
    Missing(&'static str),
    /// The header could not be decoded.
    #[error("`{header}` header cannot be decoded: {detail}")]
    Malformed {
        /// Header name.
        header: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The chain does not verify against `tls.ca_file`.
    #[error("certificate chain refused: {detail}")]
    Chain {
        /// Metric label (same as the direct listener's handshake reasons).
        reason: &'static str,
        /// rustls's words.
        detail: String,
    },
}

impl ProxyCertError {
    /// Short metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyCertError::UntrustedPeer(_) => "untrusted_proxy",
            ProxyCertError::Missing(_) => "no_client_cert",
            ProxyCertError::Malformed { .. } => "malformed_header",
            ProxyCertError::Chain { reason, .. } => reason,
        }
    }
}

/// The proxy-facing listener's certificate check.
#[derive(Clone)]
pub struct ProxyAuth {
    form: ProxyHeaderForm,
    trusted: TrustedProxies,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for ProxyAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyAuth")
            .field("form", &self.form)
            .field("trusted", &self.trusted)
            .finish_non_exhaustive()
    }
}

impl ProxyAuth {
    /// `verifier` is the client-certificate verifier built from `tls.ca_file`.
    pub fn new(
        form: ProxyHeaderForm,
        trusted: TrustedProxies,
        verifier: Arc<dyn ClientCertVerifier>,
    ) -> Self {
        ProxyAuth {
            form,
            trusted,
            verifier,
        }
    }

    /// True when `peer` is a trusted proxy.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted.contains(peer)
    }

    /// The verified certificate chain of a request from `peer`, leaf first.
    pub fn chain(
        &self,
        peer: IpAddr,
        forwarded: &ForwardedCert,
    ) -> Result<Vec<CertificateDer<'static>>, ProxyCertError> {
        let present = match self.form {
            ProxyHeaderForm::Rfc9440 => forwarded.client_cert.is_some(),
            ProxyHeaderForm::AwsAlb => forwarded.amzn_mtls_clientcert.is_some(),
        };
        // A header from anyone else is a forgery attempt whichever form it uses.
        if !self.trusted.contains(peer) {
            return Err(if forwarded.any() {
                ProxyCertError::UntrustedPeer(peer)
            } else {
                ProxyCertError::Missing(self.form.header_name())
            });
        }
        if !present {
            return Err(ProxyCertError::Missing(self.form.header_name()));
        }
        let chain = match self.form {
            ProxyHeaderForm::Rfc9440 => rfc9440_chain(
                forwarded.client_cert.as_deref().unwrap_or(""),
                forwarded.client_cert_chain.as_deref(),
            )?,
            ProxyHeaderForm::AwsAlb => {
                alb_chain(forwarded.amzn_mtls_clientcert.as_deref().unwrap_or(""))?
            }
        };
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or(ProxyCertError::Missing(self.form.header_name()))?;
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map_err(|e| ProxyCertError::Chain {
                reason: super::tls::certificate_error_reason(&e),
                detail: e.to_string(),
            })?;
        Ok(chain)
    }

    /// The verified chain run through the identity rules.
    pub fn identity(
        &self,
        peer: IpAddr,
        forwarded: &ForwardedCert,
    ) -> Result<Identity, (&'static str, String)> {
        let chain = self
            .chain(peer, forwarded)
            .map_err(|e| (e.reason(), e.to_string()))?;
        identity_from_der(&chain[0]).map_err(|e| (e.reason(), e.to_string()))
    }
}

fn malformed(header: &'static str, detail: impl ToString) -> ProxyCertError {
    ProxyCertError::Malformed {
        header,
        detail: detail.to_string(),
    }
}

/// RFC 9440: the leaf as an sf-binary item, the rest as an sf-list of sf-binary items.
fn rfc9440_chain(
    leaf: &str,
    chain: Option<&str>,
) -> Result<Vec<CertificateDer<'static>>, ProxyCertError> {
    let item: sfv::Item = sfv::Parser::new(leaf)
        .parse()
        .map_err(|e| malformed("Client-Cert", e))?;
    let der = item
        .bare_item
        .as_byte_sequence()
        .ok_or_else(|| malformed("Client-Cert", "not a byte sequence (`:base64:`)"))?;
    let mut certs = vec![CertificateDer::from(der.to_vec())];
    if let Some(chain) = chain.filter(|c| !c.trim().is_empty()) {
        let list: sfv::List = sfv::Parser::new(chain)
            .parse()
            .map_err(|e| malformed("Client-Cert-Chain", e))?;
        for entry in list {
            let sfv::ListEntry::Item(item) = entry else {
                return Err(malformed(
                    "Client-Cert-Chain",
                    "inner lists are not allowed",
                ));
            };
            let der = item
                .bare_item
                .as_byte_sequence()
                .ok_or_else(|| malformed("Client-Cert-Chain", "member is not a byte sequence"))?;
            certs.push(CertificateDer::from(der.to_vec()));
        }
    }
    Ok(certs)
}

/// AWS ALB: URL-encoded PEM, leaf first, intermediates after it.
fn alb_chain(value: &str) -> Result<Vec<CertificateDer<'static>>, ProxyCertError> {
    const HEADER: &str = "X-Amzn-Mtls-Clientcert";
    let pem = percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .map_err(|e| malformed(HEADER, e))?;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed(HEADER, e))?;
    if certs.is_empty() {
        return Err(malformed(HEADER, "no PEM certificate in the value"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_ranges_accept_cidrs_bare_ips_and_mapped_addresses() {
        let config = ProxyMtlsConfig {
            listen: "127.0.0.1:0".into(),
            header: ProxyHeaderForm::Rfc9440,
            trusted_proxies: vec!["10.0.0.0/8".into(), "192.0.2.7".into(), "fd00::/8".into()],
            tls: false,
        };
        let trusted = config.trusted().unwrap();
        assert!(trusted.contains("10.1.2.3".parse().unwrap()));
        assert!(trusted.contains("192.0.2.7".parse().unwrap()));
        assert!(!trusted.contains("192.0.2.8".parse().unwrap()));
        assert!(trusted.contains("::ffff:10.9.9.9".parse().unwrap()));
        assert!(trusted.contains("fd12::1".parse().unwrap()));
        let bad = ProxyMtlsConfig {
            trusted_proxies: vec!["10.0.0.0/33".into()],
            ..config.clone()
        };
        assert!(bad.trusted().unwrap_err().contains("10.0.0.0/33"));
        let empty = ProxyMtlsConfig {
            trusted_proxies: vec![],
            ..config
        };
        assert!(empty.trusted().unwrap_err().contains("empty"));
    }

    #[test]
    fn rfc9440_values_decode_and_garbage_is_named() {
        let chain = rfc9440_chain(":AQID:", Some(":BAU=:, :Bg==:")).unwrap();
        let bytes: Vec<&[u8]> = chain.iter().map(|c| c.as_ref()).collect();
        assert_eq!(bytes, vec![&[1u8, 2, 3][..], &[4, 5][..], &[6][..]]);
        let err = rfc9440_chain("AQID", None).unwrap_err();
        assert_eq!(err.reason(), "malformed_header");
        assert!(err.to_string().contains("Client-Cert"));
        let err = rfc9440_chain(":AQID:", Some(":AQ:, (1 2)")).unwrap_err();
        assert!(err.to_string().contains("Client-Cert-Chain"));
    }

    #[test]
    fn alb_values_need_pem() {
        assert_eq!(
            alb_chain("not%20a%20cert").unwrap_err().reason(),
            "malformed_header"
        );
    }
}
