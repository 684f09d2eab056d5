//! AES-256-GCM sealing of cookie values.
//!
//! Format: base64url(no pad) of `version(2) || key id(4) || nonce(12) || ciphertext || tag(16)`.
//! The associated data binds a value to its purpose and cookie name, so a flow cookie cannot be
//! replayed as a session, nor one policy's cookie as another's; version and key id are
//! authenticated too. The key id (a hash prefix of the key) picks the key to open with, so
//! several keys can be configured during a rotation. Version 1 values (no key id) are refused.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

const VERSION: u8 = 2;
const KID_LEN: usize = 4;
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
    #[error("sealed with a key that is not configured")]
    UnknownKey,
    #[error("no sealing key configured")]
    NoKey,
    #[error("sealed value failed authentication")]
    Auth,
    #[error("no randomness available: {0}")]
    Random(String),
}

/// Fills `buf` with OS randomness (WASI `random_get` inside Envoy).
pub fn random_bytes(buf: &mut [u8]) -> Result<(), SealError> {
    getrandom::getrandom(buf).map_err(|e| SealError::Random(e.to_string()))
}

/// Key id of a sealing key: public, so derived through a domain-separated hash.
pub fn key_id(key: &[u8; 32]) -> [u8; KID_LEN] {
    let d = Sha256::new()
        .chain_update(b"portcullis seal key id\0")
        .chain_update(key)
        .finalize();
    let mut kid = [0u8; KID_LEN];
    kid.copy_from_slice(&d[..KID_LEN]);
    kid
}

/// Seals with the first key; opens with whichever configured key the value names.
pub struct Sealer {
    keys: Vec<([u8; KID_LEN], Aes256Gcm)>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Self {
        Self::with_keys(std::slice::from_ref(key))
    }

    /// The first key seals; all of them open.
    pub fn with_keys(keys: &[[u8; 32]]) -> Self {
        Self {
            keys: keys
                .iter()
                .map(|k| (key_id(k), Aes256Gcm::new(k.into())))
                .collect(),
        }
    }

    fn full_aad(kid: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut full = Vec::with_capacity(1 + KID_LEN + aad.len());
        full.push(VERSION);
        full.extend_from_slice(kid);
        full.extend_from_slice(aad);
        full
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
        let (kid, cipher) = self.keys.first().ok_or(SealError::NoKey)?;
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &Self::full_aad(kid, aad),
                },
            )
            .map_err(|_| SealError::Auth)?;
        let mut out = Vec::with_capacity(1 + KID_LEN + NONCE_LEN + ct.len());
        out.push(VERSION);
        out.extend_from_slice(kid);
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
        if raw.len() < 1 + KID_LEN + NONCE_LEN + TAG_LEN {
            return Err(SealError::Length);
        }
        if raw[0] != VERSION {
            return Err(SealError::Version);
        }
        let (kid, rest) = raw[1..].split_at(KID_LEN);
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let full = Self::full_aad(kid, aad);
        let mut result = Err(SealError::UnknownKey);
        // Normally one key matches; a 32-bit id collision just costs one more attempt.
        for (_, cipher) in self.keys.iter().filter(|(k, _)| k.as_slice() == kid) {
            result = cipher
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: ct,
                        aad: &full,
                    },
                )
                .map_err(|_| SealError::Auth);
            if result.is_ok() {
                break;
            }
        }
        result
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
            let expected = match i {
                0 => SealError::Version,
                1..=KID_LEN => SealError::UnknownKey,
                _ => SealError::Auth,
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
            Err(SealError::UnknownKey)
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

    #[test]
    fn rotation_first_key_seals_every_key_opens() {
        let (old, new) = ([7u8; 32], [8u8; 32]);
        let before = Sealer::new(&old).seal(b"s", b"v").unwrap();
        let rotated = Sealer::with_keys(&[new, old]);
        assert_eq!(rotated.open(b"s", &before).unwrap(), b"v");
        let after = rotated.seal(b"s", b"w").unwrap();
        // Sealed with the new key: the old-only sealer cannot open it, a new-only one can.
        assert_eq!(
            Sealer::new(&old).open(b"s", &after),
            Err(SealError::UnknownKey)
        );
        assert_eq!(Sealer::new(&new).open(b"s", &after).unwrap(), b"w");
        // The key id is carried in the clear right after the version.
        let raw = URL_SAFE_NO_PAD.decode(&after).unwrap();
        assert_eq!((raw[0], &raw[1..5]), (VERSION, &key_id(&new)[..]));
        // A version-1 value (no key id) is refused.
        let mut v1 = raw.clone();
        v1[0] = 1;
        assert_eq!(
            rotated.open(b"s", &URL_SAFE_NO_PAD.encode(&v1)),
            Err(SealError::Version)
        );
        // The key id is authenticated: pointing it at the other key fails.
        let mut moved = raw;
        moved[1..5].copy_from_slice(&key_id(&old));
        assert_eq!(
            rotated.open(b"s", &URL_SAFE_NO_PAD.encode(&moved)),
            Err(SealError::Auth)
        );
        assert_eq!(
            Sealer::with_keys(&[]).seal(b"s", b"v"),
            Err(SealError::NoKey)
        );
    }
}
