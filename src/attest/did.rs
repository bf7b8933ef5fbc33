//! `did:key` identities for ed25519 keys: the ID certifies itself.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::VerifyingKey;

use super::error::{Error, ErrorCode};

/// Multicodec varint prefix of an ed25519 public key (0xed).
const ED25519_PUB_MULTICODEC: [u8; 2] = [0xed, 0x01];
const PREFIX: &str = "did:key:z";
/// Longest text a valid did:key can have; anything longer is rejected before
/// decoding so hostile input costs nothing.
const MAX_LEN: usize = 64;

/// The `did:key` of an ed25519 public key: `did:key:z6Mk…`.
///
/// A `Did` always holds a canonical encoding of a point of large order, so
/// it can verify signatures strictly. Parsing accepts exactly one spelling of
/// each key.
#[derive(Clone)]
pub struct Did {
    key: [u8; 32],
    /// The decompressed point, kept so verification does not decompress
    /// the key a second time.
    vk: VerifyingKey,
}

impl PartialEq for Did {
    fn eq(&self, other: &Did) -> bool {
        self.key == other.key
    }
}

impl Eq for Did {}

impl std::hash::Hash for Did {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl PartialOrd for Did {
    fn partial_cmp(&self, other: &Did) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Did {
    fn cmp(&self, other: &Did) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

impl Did {
    /// The did:key of a 32-byte ed25519 public key.
    ///
    /// # Errors
    /// `weak_key` if the bytes are not a canonical point of large order.
    pub fn from_public_key(key: [u8; 32]) -> Result<Did, Error> {
        // The same keys come back again and again (a statement's subject
        // and signer, every handler's plugin): decompressing a point costs
        // as much as a third of a signature check, so recent successes are
        // remembered per thread. Only valid keys are cached, and the result
        // is a pure function of the bytes.
        thread_local! {
            static RECENT: std::cell::RefCell<std::collections::HashMap<[u8; 32], VerifyingKey>> =
                std::cell::RefCell::new(std::collections::HashMap::new());
        }
        const RECENT_KEYS: usize = 4_096;
        if let Some(vk) = RECENT.with(|r| r.borrow().get(&key).copied()) {
            return Ok(Did { key, vk });
        }
        let did = Did::decompress(key)?;
        RECENT.with(|r| {
            let mut r = r.borrow_mut();
            if r.len() >= RECENT_KEYS {
                r.clear();
            }
            r.insert(key, did.vk);
        });
        Ok(did)
    }

    fn decompress(key: [u8; 32]) -> Result<Did, Error> {
        let vk = VerifyingKey::from_bytes(&key)
            .map_err(|_| Error::new(ErrorCode::WeakKey, "key is not a valid curve point"))?;
        if vk.is_weak() {
            return Err(Error::new(ErrorCode::WeakKey, "key is a small-order point"));
        }
        // Decompression accepts y encodings ≥ p; require the one encoding
        // so each key has exactly one DID. (x = 0 with the sign bit set is
        // the other non-canonical form, but only the small-order points
        // y = ±1 have x = 0, and those are rejected above.)
        if !y_is_reduced(&key) {
            return Err(Error::new(
                ErrorCode::WeakKey,
                "key is a non-canonical point encoding",
            ));
        }
        Ok(Did { key, vk })
    }

    /// The did:key of a verifying key.
    ///
    /// # Errors
    /// `weak_key` as for [`Did::from_public_key`].
    pub fn from_verifying_key(key: &VerifyingKey) -> Result<Did, Error> {
        Did::from_public_key(key.to_bytes())
    }

    /// Parses `did:key:z…`, accepting exactly the canonical form.
    ///
    /// # Errors
    /// `did_syntax`, `did_base58`, `did_multicodec`, `did_length` or
    /// `weak_key`, naming what is wrong.
    pub fn parse(text: &str) -> Result<Did, Error> {
        if text.len() > MAX_LEN {
            return Err(Error::new(
                ErrorCode::DidSyntax,
                format!("a did:key is at most {MAX_LEN} characters"),
            ));
        }
        if let Some(key) = Did::parsed_before(text) {
            return Did::from_public_key(key);
        }
        let Some(encoded) = text.strip_prefix(PREFIX) else {
            return Err(Error::new(
                ErrorCode::DidSyntax,
                "expected a did:key with a base58btc multibase value (did:key:z…)",
            ));
        };
        let raw = bs58::decode(encoded)
            .with_alphabet(bs58::Alphabet::BITCOIN)
            .into_vec()
            .map_err(|e| Error::new(ErrorCode::DidBase58, format!("base58btc: {e}")))?;
        if raw.len() < 2 || raw[..2] != ED25519_PUB_MULTICODEC {
            return Err(Error::new(
                ErrorCode::DidMulticodec,
                "multicodec prefix is not ed25519-pub (0xed01)",
            ));
        }
        let key: [u8; 32] = raw[2..].try_into().map_err(|_| {
            Error::new(
                ErrorCode::DidLength,
                format!("ed25519 key is {} bytes, expected 32", raw.len() - 2),
            )
        })?;
        let did = Did::from_public_key(key)?;
        // base58 has one spelling per byte string, but a leading-zero
        // quirk or a future alphabet change must not let two texts name
        // one key: remember only the text this key prints as.
        if did.with_text(|canonical| canonical == text) {
            Did::remember_parsed(text, key);
        }
        Ok(did)
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.key
    }

    /// The key, ready to verify signatures.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.vk
    }
}

/// Whether the y coordinate (the low 255 bits, little-endian) is below
/// p = 2^255 - 19. Checked on the bytes: re-compressing the point would cost
/// a field inversion.
fn y_is_reduced(key: &[u8; 32]) -> bool {
    let top_is_max = key[31] & 0x7f == 0x7f && key[1..31].iter().all(|&b| b == 0xff);
    !(top_is_max && key[0] >= 0xed)
}

/// How many keys' texts each thread remembers (see [`Did::with_text`]).
const RECENT_TEXTS: usize = 4_096;

impl Did {
    /// Calls `f` with the DID's text. Base58 is quadratic in the length
    /// (about a microsecond for a key), and the same few handler keys are
    /// written into every job record and message, so recent texts are
    /// remembered per thread.
    fn with_text<T>(&self, f: impl FnOnce(&str) -> T) -> T {
        thread_local! {
            static TEXTS: std::cell::RefCell<std::collections::HashMap<[u8; 32], Box<str>>> =
                std::cell::RefCell::new(std::collections::HashMap::new());
        }
        TEXTS.with(|t| {
            let mut t = t.borrow_mut();
            if let Some(text) = t.get(&self.key) {
                return f(text);
            }
            let mut raw = [0u8; 34];
            raw[..2].copy_from_slice(&ED25519_PUB_MULTICODEC);
            raw[2..].copy_from_slice(&self.key);
            let text: Box<str> = format!("{PREFIX}{}", bs58::encode(raw).into_string()).into();
            let out = f(&text);
            if t.len() >= RECENT_TEXTS {
                t.clear();
            }
            t.insert(self.key, text);
            out
        })
    }

    /// The key of a text that parsed before on this thread: parsing is
    /// base58-decoding, as costly as encoding. Only canonical texts that
    /// parsed are remembered, so the one-spelling rule is kept.
    fn parsed_before(text: &str) -> Option<[u8; 32]> {
        PARSED.with(|p| p.borrow().get(text).copied())
    }

    fn remember_parsed(text: &str, key: [u8; 32]) {
        PARSED.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() >= RECENT_TEXTS {
                p.clear();
            }
            p.insert(text.into(), key);
        });
    }
}

thread_local! {
    static PARSED: std::cell::RefCell<std::collections::HashMap<Box<str>, [u8; 32]>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

impl fmt::Display for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_text(|text| f.write_str(text))
    }
}

impl fmt::Debug for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Did({self})")
    }
}

impl serde::Serialize for Did {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.with_text(|text| s.serialize_str(text))
    }
}

impl<'de> serde::Deserialize<'de> for Did {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Did, D::Error> {
        let text = String::deserialize(d)?;
        Did::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl FromStr for Did {
    type Err = Error;
    fn from_str(s: &str) -> Result<Did, Error> {
        Did::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_starts_with_z6mk() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let did = Did::from_verifying_key(&sk.verifying_key()).unwrap();
        let text = did.to_string();
        assert!(text.starts_with("did:key:z6Mk"), "{text}");
        assert_eq!(Did::parse(&text).unwrap(), did);
    }

    #[test]
    fn rejects_each_malformation_with_its_code() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let good = Did::from_verifying_key(&sk.verifying_key())
            .unwrap()
            .to_string();
        let code = |s: &str| Did::parse(s).unwrap_err().code();
        assert_eq!(code("did:web:example.com"), ErrorCode::DidSyntax);
        assert_eq!(
            code(&good.replace("did:key:z", "did:key:f")),
            ErrorCode::DidSyntax
        );
        assert_eq!(code(&format!("{good}0")), ErrorCode::DidBase58);
        // secp256k1-pub multicodec 0xe7 0x01
        let mut raw = vec![0xe7, 0x01];
        raw.extend_from_slice(&[1u8; 33]);
        let other = format!("did:key:z{}", bs58::encode(&raw).into_string());
        assert_eq!(code(&other), ErrorCode::DidMulticodec);
        let mut short = vec![0xed, 0x01];
        short.extend_from_slice(&[1u8; 31]);
        let short = format!("did:key:z{}", bs58::encode(&short).into_string());
        assert_eq!(code(&short), ErrorCode::DidLength);
        // The identity point (small order).
        let mut ident = vec![0xed, 0x01, 1];
        ident.extend_from_slice(&[0u8; 31]);
        let ident = format!("did:key:z{}", bs58::encode(&ident).into_string());
        assert_eq!(code(&ident), ErrorCode::WeakKey);
    }

    #[test]
    fn remembered_texts_and_parses_agree_with_base58_past_the_cache_size() {
        // More keys than a thread remembers, twice over: every text is the
        // encoding written out, parses back to its key, and a bad
        // spelling of a remembered key is still refused.
        for round in 0..2 {
            for n in 0..(RECENT_TEXTS as u32 + 100) {
                let mut seed = [0u8; 32];
                seed[..4].copy_from_slice(&n.to_le_bytes());
                let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
                let did = Did::from_verifying_key(&sk.verifying_key()).unwrap();
                let mut raw = ED25519_PUB_MULTICODEC.to_vec();
                raw.extend_from_slice(did.public_key());
                let expected = format!("{PREFIX}{}", bs58::encode(&raw).into_string());
                assert_eq!(did.to_string(), expected, "round {round}, key {n}");
                assert_eq!(Did::parse(&expected).unwrap(), did);
                assert_eq!(Did::parse(&expected).unwrap(), did);
                if n % 512 == 0 {
                    let padded = format!("{PREFIX}1{}", &expected[PREFIX.len()..]);
                    assert!(Did::parse(&padded).is_err(), "{padded}");
                }
            }
        }
    }

    #[test]
    fn reduced_check_matches_recompression() {
        // Every y in [p - 3, 2^255) and a few ordinary keys: the byte check
        // agrees with decompress-then-compress wherever decompression works.
        let mut keys: Vec<[u8; 32]> = (0xeau8..=0xff)
            .map(|low| {
                let mut k = [0xffu8; 32];
                k[0] = low;
                k[31] = 0x7f;
                k
            })
            .collect();
        keys.extend((1u8..20).map(|n| {
            *ed25519_dalek::SigningKey::from_bytes(&[n; 32])
                .verifying_key()
                .as_bytes()
        }));
        for key in keys {
            if let Ok(vk) = VerifyingKey::from_bytes(&key) {
                let canonical = vk.to_edwards().compress().to_bytes() == key;
                assert_eq!(y_is_reduced(&key), canonical, "{key:02x?}");
            }
        }
    }

    #[test]
    fn rejects_non_canonical_point_encoding() {
        // y = p + 1 (≥ p) encodes the same point as y = 1 non-canonically;
        // p = 2^255 - 19, so p + 1 = 2^255 - 18.
        let mut key = [0xffu8; 32];
        key[0] = 0xee;
        key[31] = 0x7f;
        let err = Did::from_public_key(key).unwrap_err();
        assert_eq!(err.code(), ErrorCode::WeakKey);
    }
}
