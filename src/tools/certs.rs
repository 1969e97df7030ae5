//! Development PKI made with rcgen: a root CA, a server certificate, an issuing CA named like
//! Tesla's, vehicle certificates (CN = VIN), and the negative cases the server must refuse.
//! For development and tests only; production uses Tesla's CA bundle and a real server cert.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// The Wi-Fi EAP OID (`1.3.6.1.4.1.49279.2.5.1.1`), refused by the identity rules.
const EXCLUDED_OID_ARCS: &[u64] = &[1, 3, 6, 1, 4, 1, 49279, 2, 5, 1, 1];
/// `1.3.6.1.4.1.49279.2.4.2`: energy_device.
const ENERGY_DEVICE_OID_ARCS: &[u64] = &[1, 3, 6, 1, 4, 1, 49279, 2, 4, 2];
/// `1.3.6.1.4.1.49279.2.4.1`: vehicle_device.
const VEHICLE_DEVICE_OID_ARCS: &[u64] = &[1, 3, 6, 1, 4, 1, 49279, 2, 4, 1];

/// A certificate chain and its key, as PEM text.
#[derive(Debug, Clone)]
pub struct PemPair {
    /// The leaf certificate followed by any intermediates.
    pub chain_pem: String,
    /// PKCS#8 private key.
    pub key_pem: String,
}

/// Errors while making or writing certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// rcgen refused the parameters.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Reading an existing PKI failed.
    #[error("cannot load the dev CA from {path}: {detail} (run `fleetgate certs dev --out DIR` to make one)")]
    Load {
        /// The folder.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

fn dn(cn: &str, ou: Option<&str>) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    if let Some(ou) = ou {
        d.push(DnType::OrganizationalUnitName, ou);
    }
    d
}

fn ca_params(cn: &str) -> Result<CertificateParams, CertsError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = dn(cn, None);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::days(1);
    p.not_after = now + Duration::days(3650);
    Ok(p)
}

/// Options of one client (vehicle) certificate.
#[derive(Debug, Clone)]
pub struct ClientCertSpec {
    /// Subject CN (the VIN).
    pub common_name: String,
    /// First subject OU, if any.
    pub organizational_unit: Option<String>,
    /// Extra extended-key-usage OIDs after clientAuth.
    pub oids: Vec<Vec<u64>>,
    /// Validity window relative to now.
    pub valid_from: Duration,
    /// End of validity relative to now.
    pub valid_until: Duration,
}

impl ClientCertSpec {
    /// A plain vehicle certificate valid from yesterday for ten years.
    pub fn vehicle(vin: &str) -> Self {
        Self {
            common_name: vin.to_owned(),
            organizational_unit: None,
            oids: Vec::new(),
            valid_from: -Duration::days(1),
            valid_until: Duration::days(3650),
        }
    }
}

/// A CA able to sign certificates, with its own certificate.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    /// PEM of this CA's certificate.
    pub cert_pem: String,
    /// PEM of this CA's private key.
    pub key_pem: String,
    /// PEM chain from this CA up to (not including) the root: itself plus its parents.
    pub chain_pem: String,
}

impl DevCa {
    /// A self-signed root.
    pub fn root(cn: &str) -> Result<DevCa, CertsError> {
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let params = ca_params(cn)?;
        let cert_pem = params.self_signed(&key)?.pem();
        let issuer = Issuer::new(params, key);
        Ok(DevCa {
            issuer,
            cert_pem,
            key_pem,
            chain_pem: String::new(),
        })
    }

    /// An intermediate signed by `self`.
    pub fn intermediate(&self, cn: &str) -> Result<DevCa, CertsError> {
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let params = ca_params(cn)?;
        let cert_pem = params.signed_by(&key, &self.issuer)?.pem();
        let issuer = Issuer::new(params, key);
        Ok(DevCa {
            issuer,
            chain_pem: format!("{cert_pem}{}", self.chain_pem),
            cert_pem,
            key_pem,
        })
    }

    /// Loads a CA written by [`DevPki::write`] (certificate and key PEM files).
    pub fn load(cert: &Path, key: &Path) -> Result<DevCa, CertsError> {
        let err = |detail: String| CertsError::Load {
            path: cert.to_owned(),
            detail,
        };
        let cert_pem = std::fs::read_to_string(cert).map_err(|e| err(e.to_string()))?;
        let key_pem = std::fs::read_to_string(key).map_err(|e| err(e.to_string()))?;
        let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| err(e.to_string()))?;
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key_pair).map_err(|e| err(e.to_string()))?;
        Ok(DevCa {
            issuer,
            cert_pem,
            key_pem,
            chain_pem: String::new(),
        })
    }

    /// A server certificate for the given DNS names / IP addresses.
    pub fn server_cert(&self, names: &[&str]) -> Result<PemPair, CertsError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name = dn(names.first().copied().unwrap_or("localhost"), None);
        p.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName((*n).try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::days(1);
        p.not_after = now + Duration::days(825);
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(PemPair {
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            key_pem: key.serialize_pem(),
        })
    }

    /// A client certificate signed by this CA, chained with this CA's certificate.
    pub fn client_cert(&self, spec: &ClientCertSpec) -> Result<PemPair, CertsError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name = dn(&spec.common_name, spec.organizational_unit.as_deref());
        p.extended_key_usages = std::iter::once(ExtendedKeyUsagePurpose::ClientAuth)
            .chain(
                spec.oids
                    .iter()
                    .cloned()
                    .map(ExtendedKeyUsagePurpose::Other),
            )
            .collect();
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        p.not_before = now + spec.valid_from;
        p.not_after = now + spec.valid_until;
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(PemPair {
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The whole dev PKI.
pub struct DevPki {
    /// Root CA; its certificate is the server's `tls.ca_file`.
    pub root: DevCa,
    /// Issuing CA named `Tesla Issuing CA` under the root; signs vehicle certificates.
    pub issuing: DevCa,
}

/// File names inside a dev PKI folder.
pub mod files {
    /// Root CA certificate: use as `tls.ca_file`.
    pub const CA: &str = "ca.pem";
    /// Root CA key (dev only).
    pub const CA_KEY: &str = "ca.key";
    /// Issuing CA certificate (`Tesla Issuing CA`).
    pub const ISSUING: &str = "issuing-ca.pem";
    /// Issuing CA key.
    pub const ISSUING_KEY: &str = "issuing-ca.key";
    /// Server certificate chain for localhost / 127.0.0.1 / ::1.
    pub const SERVER: &str = "server.pem";
    /// Server key.
    pub const SERVER_KEY: &str = "server.key";
    /// Folder of vehicle certificates: `VIN.pem` (chain) and `VIN.key`.
    pub const VEHICLES: &str = "vehicles";
    /// Folder of negative cases: `NAME.pem` and `NAME.key`.
    pub const NEGATIVE: &str = "negative";
}

/// The negative cases written by `certs dev` (name, what the server must do).
pub const NEGATIVE_CASES: &[(&str, &str)] = &[
    (
        "untrusted-ca",
        "refused at the TLS handshake: chains to a root not in tls.ca_file",
    ),
    (
        "unknown-issuer",
        "refused after the handshake: issuer `Acme Issuing CA` is not Tesla's",
    ),
    ("expired", "refused at the TLS handshake: expired"),
    (
        "not-yet-valid",
        "refused at the TLS handshake: not valid yet",
    ),
    (
        "excluded-oid",
        "refused after the handshake: Wi-Fi EAP OID 1.3.6.1.4.1.49279.2.5.1.1",
    ),
    (
        "oid-issuer-no-oid",
        "refused after the handshake: OID issuer without a client-type OID",
    ),
    (
        "oid-energy-device",
        "accepted as energy_device (OID issuer + 1.3.6.1.4.1.49279.2.4.2)",
    ),
];

/// Writes a file of the dev PKI; private keys (`*.key`) are created owner-only (0600).
pub fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf, CertsError> {
    use std::io::Write;
    let path = dir.join(name);
    let err = |source| CertsError::Write {
        path: path.clone(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if name.ends_with(".key") {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path).map_err(err)?;
    // an existing file keeps its old mode through open(): tighten it too
    #[cfg(unix)]
    if name.ends_with(".key") {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(err)?;
    }
    file.write_all(text.as_bytes()).map_err(err)?;
    Ok(path)
}

fn mkdir(dir: &Path) -> Result<(), CertsError> {
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Write {
        path: dir.to_owned(),
        source,
    })
}

impl DevPki {
    /// Makes a new root and issuing CA.
    pub fn generate() -> Result<DevPki, CertsError> {
        let root = DevCa::root("fleetgate dev root CA")?;
        let issuing = root.intermediate("Tesla Issuing CA")?;
        Ok(DevPki { root, issuing })
    }

    /// A vehicle certificate for `vin`.
    pub fn vehicle(&self, vin: &str) -> Result<PemPair, CertsError> {
        self.issuing.client_cert(&ClientCertSpec::vehicle(vin))
    }

    /// The certificate of a negative case by name (see [`NEGATIVE_CASES`]).
    pub fn negative(&self, name: &str, vin: &str) -> Result<PemPair, CertsError> {
        let spec = ClientCertSpec::vehicle(vin);
        match name {
            "untrusted-ca" => {
                let other = DevCa::root("untrusted root CA")?;
                other.intermediate("Tesla Issuing CA")?.client_cert(&spec)
            }
            "unknown-issuer" => self
                .root
                .intermediate("Acme Issuing CA")?
                .client_cert(&spec),
            "expired" => self.issuing.client_cert(&ClientCertSpec {
                valid_from: -Duration::days(30),
                valid_until: -Duration::days(1),
                ..spec
            }),
            "not-yet-valid" => self.issuing.client_cert(&ClientCertSpec {
                valid_from: Duration::days(2),
                valid_until: Duration::days(30),
                ..spec
            }),
            "excluded-oid" => self
                .root
                .intermediate("Tesla Motors Product Issuing CA")?
                .client_cert(&ClientCertSpec {
                    oids: vec![EXCLUDED_OID_ARCS.to_vec(), VEHICLE_DEVICE_OID_ARCS.to_vec()],
                    ..spec
                }),
            "oid-issuer-no-oid" => self
                .root
                .intermediate("Tesla Energy Product Issuing CA")?
                .client_cert(&spec),
            "oid-energy-device" => self
                .root
                .intermediate("Tesla Energy Product Issuing CA")?
                .client_cert(&ClientCertSpec {
                    oids: vec![ENERGY_DEVICE_OID_ARCS.to_vec()],
                    ..spec
                }),
            other => Err(CertsError::Load {
                path: PathBuf::from(other),
                detail: format!("unknown negative case `{other}`"),
            }),
        }
    }

    /// Writes the PKI to `dir`: CAs, a server cert for `server_names`, vehicle certs for `vins`
    /// and, when `negatives`, every negative case (CN = first VIN or `NEGATIVE000000000`).
    pub fn write(
        &self,
        dir: &Path,
        server_names: &[&str],
        vins: &[String],
        negatives: bool,
    ) -> Result<Vec<PathBuf>, CertsError> {
        mkdir(dir)?;
        let mut written = vec![
            write(dir, files::CA, &self.root.cert_pem)?,
            write(dir, files::CA_KEY, &self.root.key_pem)?,
            write(dir, files::ISSUING, &self.issuing.cert_pem)?,
            write(dir, files::ISSUING_KEY, &self.issuing.key_pem)?,
        ];
        let server = self.root.server_cert(server_names)?;
        written.push(write(dir, files::SERVER, &server.chain_pem)?);
        written.push(write(dir, files::SERVER_KEY, &server.key_pem)?);
        let vdir = dir.join(files::VEHICLES);
        mkdir(&vdir)?;
        for vin in vins {
            let pair = self.vehicle(vin)?;
            written.push(write(&vdir, &format!("{vin}.pem"), &pair.chain_pem)?);
            written.push(write(&vdir, &format!("{vin}.key"), &pair.key_pem)?);
        }
        if negatives {
            let ndir = dir.join(files::NEGATIVE);
            mkdir(&ndir)?;
            let vin = vins
                .first()
                .map(String::as_str)
                .unwrap_or("NEGATIVE000000000");
            for (name, _) in NEGATIVE_CASES {
                let pair = self.negative(name, vin)?;
                written.push(write(&ndir, &format!("{name}.pem"), &pair.chain_pem)?);
                written.push(write(&ndir, &format!("{name}.key"), &pair.key_pem)?);
            }
        }
        Ok(written)
    }

    /// Loads a PKI written by [`DevPki::write`].
    pub fn load(dir: &Path) -> Result<DevPki, CertsError> {
        let root = DevCa::load(&dir.join(files::CA), &dir.join(files::CA_KEY))?;
        let mut issuing = DevCa::load(&dir.join(files::ISSUING), &dir.join(files::ISSUING_KEY))?;
        issuing.chain_pem = issuing.cert_pem.clone();
        Ok(DevPki { root, issuing })
    }
}

/// Example VINs for dev certificates (valid-looking, not real vehicles).
pub fn example_vins(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("5YJ3E1EA7KF{i:06}")).collect()
}

#[cfg(test)]
mod tests {
    #[cfg(unix)]
    #[test]
    fn dev_keys_are_owner_only_and_certificates_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pki = super::DevPki::generate().unwrap();
        pki.write(
            dir.path(),
            &["localhost"],
            &["5YJ3E1EA7KF000001".into()],
            true,
        )
        .unwrap();
        let mode = |p: &str| {
            std::fs::metadata(dir.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        for key in [
            "ca.key",
            "issuing-ca.key",
            "server.key",
            "vehicles/5YJ3E1EA7KF000001.key",
        ] {
            assert_eq!(mode(key), 0o600, "{key}");
        }
        assert_ne!(mode("ca.pem") & 0o044, 0, "certificates stay readable");
        // rewriting over an existing, looser key file tightens it
        std::fs::set_permissions(
            dir.path().join("server.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        pki.write(dir.path(), &["localhost"], &[], false).unwrap();
        assert_eq!(mode("server.key"), 0o600);
    }
}
