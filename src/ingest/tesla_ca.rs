//! Tesla's public vehicle CA bundles, embedded so that a Tesla config without `tls.ca_file`
//! starts unchanged, as it does on Tesla's server. These are public certificates (no keys):
//! `certs/tesla/prod_ca.pem` (the default: Tesla's production issuing and root CAs) and
//! `certs/tesla/eng_ca.pem` (`use_default_eng_ca: true`: engineering vehicles). Each file lists
//! every certificate's subject, issuer and expiry above it.

/// Production vehicle CA bundle (14 certificates).
pub const PROD_CA_PEM: &str = include_str!("../../certs/tesla/prod_ca.pem");

/// Engineering vehicle CA bundle (8 certificates).
pub const ENG_CA_PEM: &str = include_str!("../../certs/tesla/eng_ca.pem");

/// Where the CAs that vehicle certificates must chain to come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientRoots {
    /// A PEM bundle on disk (`tls.ca_file`).
    File(std::path::PathBuf),
    /// The embedded production bundle (no `tls.ca_file`).
    EmbeddedProd,
    /// The embedded engineering bundle (no `tls.ca_file`, `use_default_eng_ca: true`).
    EmbeddedEng,
}

impl ClientRoots {
    /// Short description for logs and errors.
    pub fn describe(&self) -> String {
        match self {
            ClientRoots::File(path) => path.display().to_string(),
            ClientRoots::EmbeddedProd => "the embedded Tesla production CA bundle".into(),
            ClientRoots::EmbeddedEng => "the embedded Tesla engineering CA bundle".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    fn subjects(pem: &str) -> Vec<String> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(|c| {
                let c = c.unwrap();
                let (_, x) = x509_parser::parse_x509_certificate(&c).unwrap();
                x.subject().to_string()
            })
            .collect()
    }

    #[test]
    fn the_embedded_bundles_parse_and_hold_the_issuers_vehicles_use() {
        let prod = subjects(PROD_CA_PEM);
        assert_eq!(prod.len(), 14);
        for cn in [
            "CN=Tesla Issuing CA",
            "CN=Tesla Motors Products CA",
            "CN=Tesla Motors Product Issuing CA",
            "CN=Tesla Motors GF3 Product Issuing CA",
            "CN=Tesla Motors GF Austin Product Issuing CA",
            "CN=Tesla Motors GF Berlin Product Issuing CA",
            "CN=Tesla Product Root CA",
        ] {
            assert!(
                prod.iter().any(|s| s.starts_with(cn)),
                "{cn} not in {prod:?}"
            );
        }
        let eng = subjects(ENG_CA_PEM);
        assert_eq!(eng.len(), 8);
        assert!(eng
            .iter()
            .any(|s| s.starts_with("CN=Tesla Motors Products CA")));
    }
}
