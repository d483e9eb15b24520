//! The deployment's signing key, shared by every dispatcher and worker, and what it seals: the
//! jobs a dispatcher publishes for an authenticated caller (so that a worker believes their
//! `principal`), the `requestState` a 2026-07-28 client gets with a question (so that only the
//! caller asked can answer), and the job ids an authenticated caller's idempotency keys derive
//! (so that nobody without the key can take one before the caller does).
//!
//! Each seal is an HMAC-SHA256 over a purpose and length-prefixed parts, so that no seal made for
//! one purpose or one set of parts passes for another.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// What a seal is for; part of what is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A job's body, published by a dispatcher (`Mcpq-Seal` header).
    Job,
    /// A question's `requestState`: job, question, principal.
    Question,
    /// An idempotent job id: principal, server, key.
    JobId,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Job => b"mcpq job v1",
            Purpose::Question => b"mcpq question v1",
            Purpose::JobId => b"mcpq job id v1",
        }
    }
}

/// The deployment's signing key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey([u8; 32]);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// The key a configured secret (`nats.signingKey`) stands for.
    pub fn from_secret(secret: &str) -> SigningKey {
        SigningKey(Sha256::digest(secret.as_bytes()).into())
    }

    /// A fresh random key.
    pub fn generate() -> SigningKey {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the operating system's random source");
        SigningKey(key)
    }

    /// The key as text, to be stored.
    pub fn to_text(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0)
    }

    /// A key stored with [`SigningKey::to_text`].
    pub fn from_text(text: &str) -> Option<SigningKey> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim())
            .ok()?;
        Some(SigningKey(bytes.try_into().ok()?))
    }

    fn mac(&self, purpose: Purpose, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes a key of any size");
        mac.update(purpose.label());
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The seal of `parts` for `purpose`: 43 characters of base64url.
    pub fn seal(&self, purpose: Purpose, parts: &[&[u8]]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(self.mac(purpose, parts).finalize().into_bytes())
    }

    /// Whether `seal` is the seal of `parts` for `purpose` (compared in constant time).
    pub fn verify(&self, purpose: Purpose, parts: &[&[u8]], seal: &str) -> bool {
        let Ok(given) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(seal) else {
            return false;
        };
        self.mac(purpose, parts).verify_slice(&given).is_ok()
    }

    /// 16 bytes derived from `parts` for `purpose`: an id nobody without the key can compute.
    pub fn derive(&self, purpose: Purpose, parts: &[&[u8]]) -> [u8; 16] {
        let full = self.mac(purpose, parts).finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_passes_for_its_parts_and_purpose_only() {
        let key = SigningKey::generate();
        let seal = key.seal(Purpose::Question, &[b"job", b"q1", b"key:alice"]);
        assert_eq!(seal.len(), 43);
        assert!(key.verify(Purpose::Question, &[b"job", b"q1", b"key:alice"], &seal));
        assert!(!key.verify(Purpose::Question, &[b"job", b"q1", b"key:bob"], &seal));
        assert!(!key.verify(Purpose::Job, &[b"job", b"q1", b"key:alice"], &seal));
        // Parts are length-prefixed: moving a byte across a boundary changes the seal.
        assert!(!key.verify(Purpose::Question, &[b"jo", b"bq1", b"key:alice"], &seal));
        assert!(!SigningKey::generate().verify(
            Purpose::Question,
            &[b"job", b"q1", b"key:alice"],
            &seal
        ));
        assert!(!key.verify(
            Purpose::Question,
            &[b"job", b"q1", b"key:alice"],
            "not base64!"
        ));
    }

    #[test]
    fn keys_round_trip_as_text_and_secrets_derive_one_key() {
        let key = SigningKey::generate();
        assert_eq!(SigningKey::from_text(&key.to_text()), Some(key));
        assert_eq!(SigningKey::from_text("short"), None);
        assert_eq!(SigningKey::from_secret("s"), SigningKey::from_secret("s"));
        assert_ne!(SigningKey::from_secret("s"), SigningKey::from_secret("t"));
    }
}
