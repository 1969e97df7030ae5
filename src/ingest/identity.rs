//! Who is on the other end: Tesla's identity rules applied to the verified client
//! certificate, once, right after the TLS handshake.

use x509_parser::prelude::{FromDer, X509Certificate};

/// Issuers whose certificates are vehicles without any OID check.
const VEHICLE_ISSUERS: &[&str] = &[
    "TeslaMotors",
    "Tesla Issuing CA",
    "Tesla Motors Products CA",
];
/// The issuer whose certificates may be board devices (first subject OU `Tesla Motors SN`).
const PRODUCTS_CA: &str = "Tesla Motors Products CA";

/// Issuers whose certificates carry the client type in an extended-key-usage OID.
const OID_ISSUERS: &[&str] = &[
    "Tesla Motors Product Issuing CA",
    "Tesla Motors Product RSA Issuing CA",
    "Tesla Motors GF3 Product Issuing CA",
    "Tesla Motors GF3 Product RSA Issuing CA",
    "Tesla Energy Product Issuing CA",
    "Tesla Energy GF0 Product Issuing CA",
    "Tesla Motors GF0 Product Issuing CA",
    "Tesla Motors GF Austin Product Issuing CA",
    "Tesla Motors GF Berlin Product Issuing CA",
    "Tesla Product Access Issuing CA",
    "Tesla China Product Access Issuing CA",
    "Tesla GF0 Product Access Issuing CA",
    "Tesla GF3 Product Access Issuing CA",
    "Tesla GF Austin Product Access Issuing CA",
    "Tesla GF Berlin Product Access Issuing CA",
];

/// Wi-Fi EAP certificates: never accepted as a telemetry client.
pub const EXCLUDED_OID: &str = "1.3.6.1.4.1.49279.2.5.1.1";

/// Client type for the last arc N of `1.3.6.1.4.1.49279.2.{4,5}.N`.
fn client_type_for_oid(oid: &str) -> Option<&'static str> {
    let rest = oid
        .strip_prefix("1.3.6.1.4.1.49279.2.4.")
        .or_else(|| oid.strip_prefix("1.3.6.1.4.1.49279.2.5."))?;
    Some(match rest {
        "1" => "vehicle_device",
        "11" => "vehicle_board_device",
        "2" => "energy_device",
        "12" => "das_device",
        "14" => "vehicle_service",
        "15" => "das_service",
        "16" => "energy_service",
        "28" => "robotics_device",
        _ => return None,
    })
}

/// The identity of a connected client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Subject CN with `.` replaced by `-` (the VIN for vehicles).
    pub device_id: String,
    /// `vehicle_device`, `energy_device`, …
    pub client_type: &'static str,
    /// `{client_type}.{device_id}`: what frames must claim as sender id.
    pub sender_id: String,
}

/// Why a verified certificate is still not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The client sent no certificate (should be impossible after a verified handshake).
    #[error("no client certificate")]
    NoCertificate,
    /// The certificate could not be parsed.
    #[error("client certificate cannot be parsed: {0}")]
    Unparsable(String),
    /// The subject has no common name.
    #[error("client certificate has no subject common name")]
    NoCommonName,
    /// The issuer is not one of Tesla's.
    #[error("issuer `{0}` is not a Tesla issuer")]
    IssuerNotAllowed(String),
    /// The certificate is a Wi-Fi EAP certificate.
    #[error("extended key usage {EXCLUDED_OID} (Wi-Fi EAP) is excluded")]
    ExcludedOid,
    /// An OID issuer's certificate without a client-type OID.
    #[error("issuer `{0}` requires a client-type OID and the certificate has none")]
    NoClientTypeOid(String),
}

impl IdentityError {
    /// Short metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            IdentityError::NoCertificate => "no_client_cert",
            IdentityError::Unparsable(_) => "unparsable_cert",
            IdentityError::NoCommonName => "no_common_name",
            IdentityError::IssuerNotAllowed(_) => "issuer_not_allowed",
            IdentityError::ExcludedOid => "excluded_oid",
            IdentityError::NoClientTypeOid(_) => "no_client_type_oid",
        }
    }
}

/// Applies the identity rules to the DER of the leaf certificate.
pub fn identity_from_der(der: &[u8]) -> Result<Identity, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .filter(|s| !s.is_empty())
        .ok_or(IdentityError::NoCommonName)?;
    let device_id = cn.replace('.', "-");
    let issuer = cert
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or("")
        .to_owned();
    let first_ou = cert
        .subject()
        .iter_organizational_unit()
        .next()
        .and_then(|a| a.as_str().ok());

    let client_type = if VEHICLE_ISSUERS.contains(&issuer.as_str()) {
        if issuer == PRODUCTS_CA && first_ou == Some("Tesla Motors SN") {
            "vehicle_board_device"
        } else {
            "vehicle_device"
        }
    } else if OID_ISSUERS.contains(&issuer.as_str()) {
        let oids: Vec<String> = match cert.extended_key_usage() {
            Ok(Some(eku)) => eku.value.other.iter().map(|o| o.to_id_string()).collect(),
            _ => Vec::new(),
        };
        let mut found = None;
        for oid in &oids {
            if oid == EXCLUDED_OID {
                return Err(IdentityError::ExcludedOid);
            }
            if let Some(t) = client_type_for_oid(oid) {
                found = Some(t);
                break;
            }
        }
        let from_oid = found.ok_or_else(|| IdentityError::NoClientTypeOid(issuer.clone()))?;
        match first_ou {
            Some("Solar Inverter") => "solar_inverter_device",
            Some("Gen3 Wall Connector") => "wall_connector_device",
            _ => from_oid,
        }
    } else {
        return Err(IdentityError::IssuerNotAllowed(issuer));
    };
    Ok(Identity {
        sender_id: format!("{client_type}.{device_id}"),
        device_id,
        client_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oid_map() {
        assert_eq!(
            client_type_for_oid("1.3.6.1.4.1.49279.2.4.1"),
            Some("vehicle_device")
        );
        assert_eq!(
            client_type_for_oid("1.3.6.1.4.1.49279.2.5.28"),
            Some("robotics_device")
        );
        assert_eq!(client_type_for_oid("1.3.6.1.4.1.49279.2.5.1.1"), None);
        assert_eq!(client_type_for_oid("1.3.6.1.4.1.49279.2.6.1"), None);
    }
}
