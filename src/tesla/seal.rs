//! Tokens at rest: an account's access and refresh tokens are sealed with AES-256-GCM (ring)
//! under the token key before they reach the store or a Kafka topic, bound to the account id
//! (a sealed blob moved to another account does not open). Nothing here logs or formats a
//! token.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The key tokens are sealed with (`FLEETGATE_TESLA_TOKEN_KEY` / `token_key_file`).
pub struct TokenKey {
    key: LessSafeKey,
    id: String,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey").field("id", &self.id).finish()
    }
}

/// Why a sealed blob did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Sealed with another token key.
    #[error("the tokens were sealed with another token key (id {sealed_with}, this one is {current}): set the token key they were written with, or PUT the account's refresh token again")]
    OtherKey {
        /// The key id stored with the blob.
        sealed_with: String,
        /// This key's id.
        current: String,
    },
    /// Not a blob this code wrote, or tampered with.
    #[error("the sealed tokens are damaged (they do not authenticate): PUT the account's refresh token again")]
    Damaged,
}

/// An account's tokens in the clear (only in memory, only while used).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    /// The refresh token (rotated by every refresh).
    pub refresh_token: String,
    /// The current access token, when one was obtained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(<sealed>)")
    }
}

/// Sealed tokens as stored: which key, and nonce ‖ ciphertext ‖ tag in base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The id of the key that sealed it ([`TokenKey::id`]).
    pub key_id: String,
    /// base64(nonce ‖ ciphertext ‖ tag).
    pub blob: String,
}

impl TokenKey {
    /// From the 32 key bytes.
    pub fn new(bytes: &[u8; 32]) -> TokenKey {
        let digest = Sha256::new()
            .chain_update(b"fleetgate token key id\0")
            .chain_update(bytes)
            .finalize();
        TokenKey {
            key: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes is an AES-256 key"),
            ),
            id: hex::encode(&digest[..6]),
        }
    }

    /// A short public id of the key (not secret: says which key sealed a blob).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `tokens` for `account_id`.
    pub fn seal(&self, account_id: &str, tokens: &Tokens) -> Sealed {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the operating system's random source failed");
        let mut data = serde_json::to_vec(tokens).expect("tokens serialise");
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(account_id)),
                &mut data,
            )
            .expect("AES-GCM seals any length we use");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&data);
        Sealed {
            key_id: self.id.clone(),
            blob: STANDARD.encode(blob),
        }
    }

    /// Opens what [`TokenKey::seal`] sealed for `account_id`.
    pub fn open(&self, account_id: &str, sealed: &Sealed) -> Result<Tokens, SealError> {
        if sealed.key_id != self.id {
            return Err(SealError::OtherKey {
                sealed_with: sealed.key_id.clone(),
                current: self.id.clone(),
            });
        }
        let blob = STANDARD
            .decode(&sealed.blob)
            .map_err(|_| SealError::Damaged)?;
        if blob.len() < NONCE_LEN {
            return Err(SealError::Damaged);
        }
        let (nonce, data) = blob.split_at(NONCE_LEN);
        let mut data = data.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Damaged)?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(account_id)), &mut data)
            .map_err(|_| SealError::Damaged)?;
        serde_json::from_slice(plain).map_err(|_| SealError::Damaged)
    }
}

fn aad(account_id: &str) -> Vec<u8> {
    format!("fleetgate-tesla-account:{account_id}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_tokens_open_only_with_their_key_and_account() {
        let key = TokenKey::new(&[7u8; 32]);
        let tokens = Tokens {
            refresh_token: "refresh-secret".into(),
            access_token: Some("access-secret".into()),
        };
        let sealed = key.seal("acct", &tokens);
        assert!(!sealed.blob.contains("secret"));
        assert_eq!(key.open("acct", &sealed).unwrap(), tokens);
        assert_eq!(key.open("other", &sealed), Err(SealError::Damaged));
        let other = TokenKey::new(&[8u8; 32]);
        assert!(matches!(
            other.open("acct", &sealed),
            Err(SealError::OtherKey { .. })
        ));
        assert!(!format!("{tokens:?}").contains("secret"));
    }
}
