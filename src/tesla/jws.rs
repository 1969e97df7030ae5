//! Tesla's `Tesla.SS256` JWS: Schnorr signatures over P-256 with SHA-256 and an RFC 6979
//! nonce, the signature vehicles check on a fleet telemetry config.
//!
//! The construction (facts from teslamotors/vehicle-command; this is our own code):
//! - header `{"alg":"Tesla.SS256","typ":"JWT"}`; payload = the claims plus `aud` and `iss`
//!   (standard base64 of the 65-byte uncompressed public key), serialised as Go's
//!   `encoding/json` serialises a map: sorted keys, no spaces, `<`, `>`, `&`, U+2028 and U+2029
//!   escaped; both base64url without padding; the signing input is `header.payload`;
//! - nonce `k` = RFC 6979 over the private scalar and SHA-256(signing input), public nonce
//!   `V = kG`;
//! - challenge `c` = SHA-256 of four length-prefixed (u32 big-endian) values: the generator,
//!   `V`, the public key (all uncompressed) and the signing input; `r = k − a·c mod q`;
//! - signature = `V.x ‖ V.y ‖ r` (96 bytes), base64url without padding. A verifier checks
//!   `V = c·A + r·G`.
//!
//! The same key and claims give the same token byte for byte as Tesla's `tesla-jws` tool
//! (`tests/tesla_jws.rs` checks the shared known-answer vectors).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
use p256::elliptic_curve::PrimeField;
use p256::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use p256::{AffinePoint, EncodedPoint, FieldBytes, ProjectivePoint, Scalar, SecretKey, U256};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The JWS `alg` of Tesla's Schnorr signatures.
pub const ALG: &str = "Tesla.SS256";
/// The `aud` of a signed fleet telemetry config.
pub const TELEMETRY_AUDIENCE: &str = "com.tesla.fleet.TelemetryClient";
/// The encoded header every token carries (`{"alg":"Tesla.SS256","typ":"JWT"}`).
const HEADER_JSON: &str = r#"{"alg":"Tesla.SS256","typ":"JWT"}"#;
/// Bytes of a scalar or a coordinate.
const SCALAR_LEN: usize = 32;

/// Why a key, a signature or a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    /// The PEM is not a P-256 private key.
    #[error("not a P-256 private key (SEC1 `EC PRIVATE KEY` or PKCS#8 `PRIVATE KEY` PEM): {0}")]
    Key(String),
    /// The public key is not an uncompressed P-256 point.
    #[error("the public key is not an uncompressed P-256 point")]
    PublicKey,
    /// The token is not three base64url parts, or its header or payload does not parse.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header's `alg` is not Tesla.SS256.
    #[error("unsupported alg {0:?} (expected Tesla.SS256)")]
    Alg(String),
    /// The signature does not verify.
    #[error("the signature does not verify")]
    Signature,
}

/// The partner key: the P-256 key pair whose public half Tesla knows from the partner domain
/// (`/.well-known/appspecific/com.tesla.3p.public-key.pem`) and whose private half signs
/// telemetry configs.
#[derive(Clone)]
pub struct PartnerKey {
    secret: SecretKey,
}

impl std::fmt::Debug for PartnerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartnerKey")
            .field("public", &STANDARD.encode(self.public_bytes()))
            .finish_non_exhaustive()
    }
}

impl PartnerKey {
    /// A new random key (the operating system's random source, through ring).
    pub fn generate() -> PartnerKey {
        use ring::rand::SecureRandom as _;
        let rng = ring::rand::SystemRandom::new();
        loop {
            let mut bytes = FieldBytes::default();
            rng.fill(&mut bytes)
                .expect("the operating system's random source failed");
            // a value ≥ q or zero is refused: draw again (probability ~2^-32)
            if let Ok(secret) = SecretKey::from_bytes(&bytes) {
                return PartnerKey { secret };
            }
        }
    }

    /// From a PEM: SEC1 (`EC PRIVATE KEY`, as `openssl ecparam -genkey` writes it) or PKCS#8.
    pub fn from_pem(text: &str) -> Result<PartnerKey, JwsError> {
        let secret = if text.contains("BEGIN EC PRIVATE KEY") {
            SecretKey::from_sec1_pem(text).map_err(|e| JwsError::Key(e.to_string()))?
        } else if text.contains("BEGIN PRIVATE KEY") {
            SecretKey::from_pkcs8_pem(text).map_err(|e| JwsError::Key(e.to_string()))?
        } else {
            return Err(JwsError::Key(
                "no `EC PRIVATE KEY` or `PRIVATE KEY` block".into(),
            ));
        };
        Ok(PartnerKey { secret })
    }

    /// The private key as SEC1 PEM (what `keygen` writes).
    pub fn private_pem(&self) -> String {
        self.secret
            .to_sec1_pem(LineEnding::LF)
            .expect("a P-256 key encodes")
            .to_string()
    }

    /// The public key as SPKI PEM (`PUBLIC KEY`, what Tesla fetches from the partner domain).
    pub fn public_pem(&self) -> String {
        self.secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("a P-256 key encodes")
    }

    /// The 65-byte uncompressed public key.
    pub fn public_bytes(&self) -> [u8; 65] {
        let point = self.secret.public_key().to_encoded_point(false);
        point
            .as_bytes()
            .try_into()
            .expect("uncompressed is 65 bytes")
    }

    /// The `iss` of tokens this key signs: standard base64 (with padding) of the public key.
    pub fn issuer(&self) -> String {
        STANDARD.encode(self.public_bytes())
    }

    /// The Schnorr signature of `message` (96 bytes: `V.x ‖ V.y ‖ r`).
    pub fn sign(&self, message: &[u8]) -> [u8; 96] {
        let a: Scalar = *self.secret.to_nonzero_scalar();
        let digest = Sha256::digest(message);
        let h = <Scalar as Reduce<U256>>::reduce_bytes(&digest).to_repr();
        let order = FieldBytes::from(hex_order());
        let k_bytes = rfc6979::generate_k::<Sha256, _>(&a.to_repr(), &order, &h, &[]);
        let k = Option::<Scalar>::from(Scalar::from_repr(k_bytes))
            .expect("RFC 6979 yields a scalar below the order");
        let nonce = (ProjectivePoint::GENERATOR * k).to_affine();
        let nonce_point = nonce.to_encoded_point(false);
        let c = challenge(nonce_point.as_bytes(), &self.public_bytes(), message);
        let r = k - a * c;
        let mut signature = [0u8; 96];
        signature[..2 * SCALAR_LEN].copy_from_slice(&nonce_point.as_bytes()[1..]);
        signature[2 * SCALAR_LEN..].copy_from_slice(&r.to_repr());
        signature
    }

    /// Signs `claims` as a fleet telemetry config for vehicles: sets `aud` and `iss`, returns
    /// the compact token.
    pub fn sign_telemetry_config(&self, claims: &Map<String, Value>) -> String {
        let mut claims = claims.clone();
        claims.insert("aud".into(), Value::String(TELEMETRY_AUDIENCE.into()));
        claims.insert("iss".into(), Value::String(self.issuer()));
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER_JSON),
            URL_SAFE_NO_PAD.encode(go_json(&Value::Object(claims)))
        );
        let signature = self.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

/// The group order q of P-256, big-endian.
fn hex_order() -> [u8; 32] {
    let mut order = [0u8; 32];
    hex::decode_to_slice(
        "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551",
        &mut order,
    )
    .expect("constant");
    order
}

/// The challenge scalar `c` (the SHA-256 digest reduced mod q).
fn challenge(nonce_point: &[u8], public_key: &[u8], message: &[u8]) -> Scalar {
    let mut hash = Sha256::new();
    let generator = AffinePoint::GENERATOR.to_encoded_point(false);
    for value in [generator.as_bytes(), nonce_point, public_key, message] {
        hash.update((value.len() as u32).to_be_bytes());
        hash.update(value);
    }
    <Scalar as Reduce<U256>>::reduce_bytes(&hash.finalize())
}

/// Checks a Schnorr signature of `message` by the 65-byte uncompressed `public_key`.
pub fn verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), JwsError> {
    let key = EncodedPoint::from_bytes(public_key).map_err(|_| JwsError::PublicKey)?;
    if key.is_compressed() || key.is_identity() {
        return Err(JwsError::PublicKey);
    }
    let key = Option::<AffinePoint>::from(AffinePoint::from_encoded_point(&key))
        .ok_or(JwsError::PublicKey)?;
    if signature.len() != 3 * SCALAR_LEN {
        return Err(JwsError::Signature);
    }
    let mut nonce_point = [0u8; 65];
    nonce_point[0] = 0x04;
    nonce_point[1..].copy_from_slice(&signature[..2 * SCALAR_LEN]);
    let r_bytes = FieldBytes::clone_from_slice(&signature[2 * SCALAR_LEN..]);
    let r = Option::<Scalar>::from(Scalar::from_repr(r_bytes)).ok_or(JwsError::Signature)?;
    let c = challenge(&nonce_point, public_key, message);
    let expected = (ProjectivePoint::from(key) * c + ProjectivePoint::GENERATOR * r).to_affine();
    if expected.to_encoded_point(false).as_bytes() == nonce_point.as_slice() {
        Ok(())
    } else {
        Err(JwsError::Signature)
    }
}

/// A token whose signature verified.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    /// The payload's claims (including `aud` and `iss`).
    pub claims: Map<String, Value>,
    /// The signer's public key (from `iss`), 65 bytes uncompressed.
    pub public_key: Vec<u8>,
}

/// Verifies a compact `Tesla.SS256` token against the key its `iss` names; the caller checks
/// that this is the key it expects (and `aud`).
pub fn verify_token(token: &str) -> Result<VerifiedToken, JwsError> {
    let mut parts = token.trim().split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwsError::Malformed("not three dot-separated parts".into()));
    };
    let decode = |part: &str, what: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|e| JwsError::Malformed(format!("{what}: {e}")))
    };
    let header_json: Value = serde_json::from_slice(&decode(header, "header")?)
        .map_err(|e| JwsError::Malformed(format!("header: {e}")))?;
    let alg = header_json.get("alg").and_then(Value::as_str).unwrap_or("");
    if alg != ALG {
        return Err(JwsError::Alg(alg.to_owned()));
    }
    let claims: Map<String, Value> = serde_json::from_slice(&decode(payload, "payload")?)
        .map_err(|e| JwsError::Malformed(format!("payload: {e}")))?;
    let issuer = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or_else(|| JwsError::Malformed("payload: no `iss`".into()))?;
    let public_key = STANDARD
        .decode(issuer)
        .map_err(|e| JwsError::Malformed(format!("`iss`: {e}")))?;
    let signature = decode(signature, "signature")?;
    let input_len = header.len() + 1 + payload.len();
    verify(
        &public_key,
        &token.trim().as_bytes()[..input_len],
        &signature,
    )?;
    Ok(VerifiedToken { claims, public_key })
}

/// JSON as Go's `encoding/json` writes a decoded document: object keys sorted, no spaces,
/// HTML characters and U+2028/U+2029 escaped, integral numbers without a fraction.
pub fn go_json(value: &Value) -> String {
    let mut out = String::new();
    write_go_json(value, &mut out);
    out
}

fn write_go_json(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_go_number(n, out),
        Value::String(s) => write_go_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_string(key, out);
                out.push(':');
                write_go_json(&map[key], out);
            }
            out.push('}');
        }
    }
}

/// Go decodes every JSON number into a float64 and writes it back in the shortest form that
/// round-trips: plain notation between 1e-6 and 1e21, exponent notation (`1e-7`) outside.
fn write_go_number(n: &serde_json::Number, out: &mut String) {
    use std::fmt::Write as _;
    let Some(f) = n.as_f64() else {
        let _ = write!(out, "{n}");
        return;
    };
    let abs = f.abs();
    if f == 0.0 {
        out.push('0');
    } else if (1e-6..1e21).contains(&abs) {
        // Rust's Display for f64 is the shortest round-trip digits in plain notation
        let _ = write!(out, "{f}");
    } else {
        let _ = write!(out, "{f:e}");
    }
}

fn write_go_string(s: &str, out: &mut String) {
    use std::fmt::Write as _;
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", ch as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_a_changed_message_or_key_does_not() {
        let key = PartnerKey::generate();
        let signature = key.sign(b"hello");
        verify(&key.public_bytes(), b"hello", &signature).unwrap();
        assert_eq!(
            verify(&key.public_bytes(), b"hellO", &signature),
            Err(JwsError::Signature)
        );
        let other = PartnerKey::generate();
        assert_eq!(
            verify(&other.public_bytes(), b"hello", &signature),
            Err(JwsError::Signature)
        );
        assert_eq!(
            verify(&key.public_bytes()[..33], b"hello", &signature),
            Err(JwsError::PublicKey)
        );
        // deterministic: the same message signs the same
        assert_eq!(key.sign(b"hello"), signature);
    }

    #[test]
    fn a_key_round_trips_through_its_pem() {
        let key = PartnerKey::generate();
        let again = PartnerKey::from_pem(&key.private_pem()).unwrap();
        assert_eq!(again.public_bytes(), key.public_bytes());
        assert!(key.public_pem().starts_with("-----BEGIN PUBLIC KEY-----"));
        assert!(PartnerKey::from_pem("-----BEGIN CERTIFICATE-----").is_err());
    }

    #[test]
    fn go_json_sorts_keys_and_escapes_like_go() {
        let value: Value = serde_json::from_str(
            r#"{"b":1,"a":[true,null,0.5,25.0,1e-7],"c":"<x>&\u2028\n\u0001\"\\"}"#,
        )
        .unwrap();
        assert_eq!(
            go_json(&value),
            r#"{"a":[true,null,0.5,25,1e-7],"b":1,"c":"\u003cx\u003e\u0026\u2028\n\u0001\"\\"}"#
        );
    }

    #[test]
    fn a_token_verifies_and_tampering_is_refused() {
        let key = PartnerKey::generate();
        let mut claims = Map::new();
        claims.insert("hostname".into(), "h.example".into());
        let token = key.sign_telemetry_config(&claims);
        let verified = verify_token(&token).unwrap();
        assert_eq!(verified.public_key, key.public_bytes());
        assert_eq!(verified.claims["aud"], TELEMETRY_AUDIENCE);
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(r#"{"hostname":"evil"}"#);
        assert!(verify_token(&parts.join(".")).is_err());
        assert!(matches!(verify_token("a.b"), Err(JwsError::Malformed(_))));
    }
}
