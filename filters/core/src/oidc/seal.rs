//! AES-256-GCM sealing of cookie values.
//!
//! Format: base64url(no pad) of `version(1) || nonce(12) || ciphertext || tag(16)`. The
//! associated data binds a value to its purpose and cookie name, so a flow cookie cannot be
//! replayed as a session, nor one policy's cookie as another's.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Refuse to even base64-decode absurd inputs (cookies are bounded by Envoy anyway).
const MAX_SEALED_LEN: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("sealed value is not base64url")]
    Encoding,
    #[error("sealed value too short or too long")]
    Length,
    #[error("unknown sealed format version")]
    Version,
    #[error("sealed value failed authentication")]
    Auth,
    #[error("no randomness available: {0}")]
    Random(String),
}

/// Fills `buf` with OS randomness (WASI `random_get` inside Envoy).
pub fn random_bytes(buf: &mut [u8]) -> Result<(), SealError> {
    getrandom::getrandom(buf).map_err(|e| SealError::Random(e.to_string()))
}

pub struct Sealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        self.seal_with_nonce(aad, plaintext, nonce)
    }

    fn seal_with_nonce(
        &self,
        aad: &[u8],
        plaintext: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Result<String, SealError> {
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| SealError::Auth)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    /// Opens a sealed value; any tampering, truncation or wrong `aad` fails with an error.
    pub fn open(&self, aad: &[u8], sealed: &str) -> Result<Vec<u8>, SealError> {
        if sealed.len() > MAX_SEALED_LEN {
            return Err(SealError::Length);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(sealed.as_bytes())
            .map_err(|_| SealError::Encoding)?;
        if raw.len() < 1 + NONCE_LEN + TAG_LEN {
            return Err(SealError::Length);
        }
        if raw[0] != VERSION {
            return Err(SealError::Version);
        }
        let (nonce, ct) = raw[1..].split_at(NONCE_LEN);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| SealError::Auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::new(&[7u8; 32])
    }

    #[test]
    fn round_trip_and_fresh_nonces() {
        let s = sealer();
        let a = s.seal(b"session:x", b"hello").unwrap();
        let b = s.seal(b"session:x", b"hello").unwrap();
        assert_ne!(a, b, "every seal uses a fresh nonce");
        assert_eq!(s.open(b"session:x", &a).unwrap(), b"hello");
        assert_eq!(s.open(b"session:x", &b).unwrap(), b"hello");
    }

    #[test]
    fn tampering_is_detected_at_every_byte() {
        let s = sealer();
        let sealed = s
            .seal_with_nonce(b"aad", b"some session payload", [1; 12])
            .unwrap();
        let raw = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        for i in 0..raw.len() {
            let mut t = raw.clone();
            t[i] ^= 0x01;
            let err = s.open(b"aad", &URL_SAFE_NO_PAD.encode(&t)).unwrap_err();
            let expected = if i == 0 {
                SealError::Version
            } else {
                SealError::Auth
            };
            assert_eq!(err, expected, "byte {i}");
        }
    }

    #[test]
    fn wrong_key_aad_or_shape_fails() {
        let s = sealer();
        let sealed = s.seal(b"flow:a", b"a longer plaintext value").unwrap();
        assert_eq!(s.open(b"flow:b", &sealed), Err(SealError::Auth));
        assert_eq!(
            Sealer::new(&[8u8; 32]).open(b"flow:a", &sealed),
            Err(SealError::Auth)
        );
        assert_eq!(s.open(b"flow:a", "not*base64"), Err(SealError::Encoding));
        assert_eq!(s.open(b"flow:a", ""), Err(SealError::Length));
        let mut raw = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        raw.truncate(raw.len() - 3);
        assert_eq!(
            s.open(b"flow:a", &URL_SAFE_NO_PAD.encode(&raw)),
            Err(SealError::Auth)
        );
        assert_eq!(
            s.open(b"flow:a", &"A".repeat(MAX_SEALED_LEN + 1)),
            Err(SealError::Length)
        );
    }
}
