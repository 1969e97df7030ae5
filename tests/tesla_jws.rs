//! Tesla.SS256 against the known-answer vectors made with Tesla's own `tesla-jws` tool
//! (`testdata/tesla-jws/`, copied from the shared vectors): the same key and claims give the
//! same token byte for byte, every valid token verifies, both refused tokens are refused.

use std::path::PathBuf;

use fleetgate::tesla::jws::{verify_token, PartnerKey, TELEMETRY_AUDIENCE};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/tesla-jws")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn index() -> Vec<serde_json::Value> {
    serde_json::from_str(&read("index.json")).unwrap()
}

#[test]
fn every_vector_signs_byte_for_byte_as_teslas_tool() {
    let mut signed = 0;
    for vector in index() {
        let (Some(key), Some(claims)) = (vector["key"].as_str(), vector["claims"].as_str()) else {
            continue;
        };
        let key = PartnerKey::from_pem(&read(key)).unwrap();
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&read(claims)).unwrap();
        let expected = read(vector["token"].as_str().unwrap());
        assert_eq!(
            key.sign_telemetry_config(&claims),
            expected.trim(),
            "{vector}"
        );
        signed += 1;
    }
    assert_eq!(signed, 4, "the index lists four signed vectors");
}

#[test]
fn every_valid_token_verifies_and_both_bad_ones_are_refused() {
    let (mut good, mut bad) = (0, 0);
    for vector in index() {
        let token = read(vector["token"].as_str().unwrap());
        let result = verify_token(&token);
        if vector["valid"] == false {
            assert!(result.is_err(), "{vector} must be refused");
            bad += 1;
        } else {
            let verified = result.unwrap_or_else(|e| panic!("{vector}: {e}"));
            let key = PartnerKey::from_pem(&read(vector["key"].as_str().unwrap())).unwrap();
            assert_eq!(verified.public_key, key.public_bytes());
            assert_eq!(verified.claims["aud"], TELEMETRY_AUDIENCE);
            good += 1;
        }
    }
    assert_eq!((good, bad), (4, 2));
}
