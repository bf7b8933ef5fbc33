//! DID tokens: a client proves it holds a did:key by signing a short-lived
//! bearer token itself, for one server (spec/security.md, "DID tokens").
//!
//! No account, no operator edit and no round trip: the token names the
//! client's DID, the server's log DID (so it is worth nothing elsewhere)
//! and a validity window of at most an hour, and is signed by the DID's
//! key. The server keeps nothing per token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ed25519_dalek::{Signature, Signer, SigningKey};

use super::error::{AuthCode, AuthError};
use crate::Did;
use crate::attest::cbor::{Map, Value, decode, encode};

/// Every DID token starts with this (operator tokens start with `plt_`).
pub const DID_TOKEN_PREFIX: &str = "pld_";
/// Signed ahead of the token's fields, so no signature over another
/// format (an attestation, a checkpoint) can be taken for a token.
pub const DID_TOKEN_CONTEXT: &[u8] = b"pulse-ledger/did-token/v1\0";
/// Longest validity window, `expires_at − issued_at`: one hour.
pub const MAX_DID_TOKEN_LIFETIME_MS: u64 = 3_600_000;
/// How far in the future `issued_at` may lie, for clocks that disagree.
pub const DID_TOKEN_CLOCK_SKEW_MS: u64 = 300_000;
/// Longest token text.
pub const MAX_DID_TOKEN_CHARS: usize = 600;

const FIELDS: [&str; 5] = ["did", "audience", "signature", "issued_at", "expires_at"];

/// A verified DID token's claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DidToken {
    /// The client: the key that signed the token.
    pub did: Did,
    /// The server it is for: its log's did:key.
    pub audience: Did,
    /// Unix ms.
    pub issued_at: u64,
    /// Unix ms; the token is refused from this instant on.
    pub expires_at: u64,
}

impl DidToken {
    /// Signs a token for `audience` valid from `issued_at` to `expires_at`.
    ///
    /// # Errors
    /// A window that is empty or longer than an hour.
    pub fn sign(
        key: &SigningKey,
        audience: &Did,
        issued_at: u64,
        expires_at: u64,
    ) -> Result<String, String> {
        if expires_at <= issued_at || expires_at - issued_at > MAX_DID_TOKEN_LIFETIME_MS {
            return Err(format!(
                "a DID token is valid for 1 ms to {} minutes",
                MAX_DID_TOKEN_LIFETIME_MS / 60_000
            ));
        }
        let did = Did::from_verifying_key(&key.verifying_key()).map_err(|e| e.to_string())?;
        let claims = DidToken {
            did,
            audience: audience.clone(),
            issued_at,
            expires_at,
        };
        Ok(seal(key, claims.unsigned()))
    }

    /// Checks `text` as a token for the server whose log DID is `audience`,
    /// at `now` (Unix ms), in the order spec/security.md gives.
    ///
    /// # Errors
    /// `token_malformed`, `token_wrong_server`, `token_expired` or
    /// `token_bad_signature`, naming what is wrong.
    pub fn verify(text: &str, audience: &Did, now: u64) -> Result<DidToken, AuthError> {
        let (claims, signature) = parse(text)?;
        if claims.audience != *audience {
            return Err(AuthError::new(
                AuthCode::TokenWrongServer,
                format!(
                    "the DID token is for the server whose log is {}, not this one ({audience})",
                    claims.audience
                ),
            ));
        }
        if claims.expires_at <= claims.issued_at
            || claims.expires_at - claims.issued_at > MAX_DID_TOKEN_LIFETIME_MS
        {
            return Err(malformed(format_args!(
                "a DID token's expires_at is after its issued_at by at most {} ms",
                MAX_DID_TOKEN_LIFETIME_MS
            )));
        }
        if now.saturating_add(DID_TOKEN_CLOCK_SKEW_MS) < claims.issued_at {
            return Err(AuthError::new(
                AuthCode::TokenExpired,
                format!(
                    "the DID token is not valid until {} (issued_at, Unix ms); the server's clock says {now}",
                    claims.issued_at
                ),
            ));
        }
        if now >= claims.expires_at {
            return Err(AuthError::new(
                AuthCode::TokenExpired,
                format!(
                    "the DID token expired at {} (Unix ms); sign a new one",
                    claims.expires_at
                ),
            ));
        }
        let message = signing_message(&claims.unsigned());
        claims
            .did
            .verifying_key()
            .verify_strict(&message, &signature)
            .map_err(|_| {
                AuthError::new(
                    AuthCode::TokenBadSignature,
                    format!("the DID token's signature is not {}'s", claims.did),
                )
            })?;
        Ok(claims)
    }

    fn unsigned(&self) -> Map {
        let mut map = Map::new();
        map.insert("did", Value::Text(self.did.to_string()));
        map.insert("audience", Value::Text(self.audience.to_string()));
        map.insert("issued_at", Value::Uint(self.issued_at));
        map.insert("expires_at", Value::Uint(self.expires_at));
        map
    }
}

/// Signs any map as a token would be (for test vectors that break a rule
/// other than the signature's) and returns the token text.
pub(crate) fn seal(key: &SigningKey, mut map: Map) -> String {
    let signature = key.sign(&signing_message(&map));
    map.insert("signature", Value::Bytes(signature.to_bytes().to_vec()));
    format!(
        "{DID_TOKEN_PREFIX}{}",
        B64URL.encode(encode(&Value::Map(map)))
    )
}

/// [`DID_TOKEN_CONTEXT`] ‖ the canonical CBOR of the fields but `signature`.
fn signing_message(unsigned: &Map) -> Vec<u8> {
    let body = encode(&Value::Map(unsigned.clone()));
    let mut msg = Vec::with_capacity(DID_TOKEN_CONTEXT.len() + body.len());
    msg.extend_from_slice(DID_TOKEN_CONTEXT);
    msg.extend_from_slice(&body);
    msg
}

fn malformed(why: impl std::fmt::Display) -> AuthError {
    AuthError::new(AuthCode::TokenMalformed, why.to_string())
}

/// The token's claims and signature, if it has the token's shape.
fn parse(text: &str) -> Result<(DidToken, Signature), AuthError> {
    let body = text
        .strip_prefix(DID_TOKEN_PREFIX)
        .ok_or_else(|| malformed(format_args!("a DID token starts with {DID_TOKEN_PREFIX:?}")))?;
    if text.len() > MAX_DID_TOKEN_CHARS {
        return Err(malformed(format_args!(
            "a DID token is at most {MAX_DID_TOKEN_CHARS} characters"
        )));
    }
    let bytes = B64URL
        .decode(body)
        .map_err(|_| malformed("a DID token is \"pld_\" and unpadded base64url"))?;
    let value = decode(&bytes).map_err(|e| {
        malformed(format_args!(
            "a DID token holds one canonical CBOR map: {e}"
        ))
    })?;
    let Value::Map(map) = value else {
        return Err(malformed("a DID token holds one canonical CBOR map"));
    };
    if map.keys().count() != FIELDS.len() || FIELDS.iter().any(|k| map.get(k).is_none()) {
        return Err(malformed(
            "a DID token's map has exactly the keys did, audience, issued_at, expires_at and signature",
        ));
    }
    let did = |key: &str| match map.get(key) {
        Some(Value::Text(t)) => {
            Did::parse(t).map_err(|e| malformed(format_args!("the DID token's {key}: {e}")))
        }
        _ => Err(malformed(format_args!(
            "the DID token's {key} must be a text string"
        ))),
    };
    let uint = |key: &str| match map.get(key) {
        Some(Value::Uint(n)) => Ok(*n),
        _ => Err(malformed(format_args!(
            "the DID token's {key} must be an unsigned integer"
        ))),
    };
    let signature = match map.get("signature") {
        Some(Value::Bytes(b)) if b.len() == 64 => {
            Signature::from_slice(b).map_err(|_| malformed("the DID token's signature"))?
        }
        _ => {
            return Err(malformed(
                "the DID token's signature must be a 64-byte byte string",
            ));
        }
    };
    let claims = DidToken {
        did: did("did")?,
        audience: did("audience")?,
        issued_at: uint("issued_at")?,
        expires_at: uint("expires_at")?,
    };
    Ok((claims, signature))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Hostile token text never panics the checker: anything after
        /// the prefix that is not a signed token is refused by a rule.
        #[test]
        fn any_text_is_judged_without_panicking(
            body in proptest::collection::vec(any::<u8>(), 0..400),
            as_b64 in any::<bool>(),
        ) {
            let (_, server) = key(2);
            let text = if as_b64 {
                format!("{DID_TOKEN_PREFIX}{}", B64URL.encode(&body))
            } else {
                format!("{DID_TOKEN_PREFIX}{}", String::from_utf8_lossy(&body))
            };
            let e = DidToken::verify(&text, &server, T).unwrap_err();
            prop_assert!(matches!(
                e.code(),
                AuthCode::TokenMalformed | AuthCode::TokenWrongServer | AuthCode::TokenExpired
                    | AuthCode::TokenBadSignature
            ));
        }

        /// A well-formed map with random field values is judged by a rule
        /// too, never accepted unsigned.
        #[test]
        fn random_claims_are_refused(issued in any::<u64>(), expires in any::<u64>(), sig in proptest::collection::vec(any::<u8>(), 64)) {
            let ((_, did), (_, server)) = (key(1), key(2));
            let mut m = DidToken { did, audience: server.clone(), issued_at: issued, expires_at: expires }.unsigned();
            m.insert("signature", Value::Bytes(sig));
            let text = format!("{DID_TOKEN_PREFIX}{}", B64URL.encode(encode(&Value::Map(m))));
            prop_assert!(DidToken::verify(&text, &server, T).is_err());
        }
    }

    fn key(n: u8) -> (SigningKey, Did) {
        let sk = SigningKey::from_bytes(&[n; 32]);
        let did = Did::from_verifying_key(&sk.verifying_key()).unwrap();
        (sk, did)
    }

    const T: u64 = 1_767_225_600_000;

    #[test]
    fn a_signed_token_verifies_for_its_server_within_its_window() {
        let ((client, did), (_, server)) = (key(1), key(2));
        let t = DidToken::sign(&client, &server, T, T + 600_000).unwrap();
        assert!(
            t.starts_with("pld_") && t.len() <= MAX_DID_TOKEN_CHARS,
            "{t}"
        );
        let claims = DidToken::verify(&t, &server, T + 1).unwrap();
        assert_eq!(claims.did, did);
        assert_eq!(claims.expires_at, T + 600_000);
        // Early by less than the skew: accepted; by more: refused.
        DidToken::verify(&t, &server, T - DID_TOKEN_CLOCK_SKEW_MS).unwrap();
        let code =
            |text: &str, aud: &Did, now| DidToken::verify(text, aud, now).unwrap_err().code();
        assert_eq!(
            code(&t, &server, T - DID_TOKEN_CLOCK_SKEW_MS - 1),
            AuthCode::TokenExpired
        );
        assert_eq!(code(&t, &server, T + 600_000), AuthCode::TokenExpired);
        assert_eq!(code(&t, &key(3).1, T + 1), AuthCode::TokenWrongServer);
    }

    #[test]
    fn each_rule_is_refused_with_its_code() {
        let ((client, did), (_, server)) = (key(1), key(2));
        let t = DidToken::sign(&client, &server, T, T + 1000).unwrap();
        let code = |text: &str| DidToken::verify(text, &server, T).unwrap_err().code();
        // The token with `key` set to `value` (the signature kept).
        let reseal = |key: &str, value: Value| {
            let bytes = B64URL.decode(&t[4..]).unwrap();
            let Value::Map(mut m) = decode(&bytes).unwrap() else {
                unreachable!()
            };
            m.0.retain(|(k, _)| k != key);
            m.insert(key, value);
            format!("pld_{}", B64URL.encode(encode(&Value::Map(m))))
        };
        assert_eq!(
            code(&t.replacen("pld_", "plt_", 1)),
            AuthCode::TokenMalformed
        );
        assert_eq!(code(&format!("{t}=")), AuthCode::TokenMalformed);
        assert_eq!(
            code(&format!("pld_{}", "A".repeat(700))),
            AuthCode::TokenMalformed
        );
        assert_eq!(
            code(&reseal("extra", Value::Uint(1))),
            AuthCode::TokenMalformed
        );
        assert_eq!(
            code(&reseal("issued_at", Value::Text("0".into()))),
            AuthCode::TokenMalformed
        );
        assert_eq!(
            code(&reseal("did", Value::Text("did:key:zX".into()))),
            AuthCode::TokenMalformed
        );
        assert_eq!(
            code(&reseal("signature", Value::Bytes(vec![0; 63]))),
            AuthCode::TokenMalformed
        );
        // A longer window than the token was signed for: the lifetime rule,
        // or, within it, the signature.
        assert_eq!(
            code(&reseal(
                "expires_at",
                Value::Uint(T + MAX_DID_TOKEN_LIFETIME_MS + 1)
            )),
            AuthCode::TokenMalformed
        );
        assert_eq!(
            code(&reseal("expires_at", Value::Uint(T + 2000))),
            AuthCode::TokenBadSignature
        );
        // Another DID's name on this DID's signature.
        let other = key(4).1;
        assert_eq!(
            code(&reseal("did", Value::Text(other.to_string()))),
            AuthCode::TokenBadSignature
        );
        assert_ne!(did, other);
        assert!(DidToken::sign(&client, &server, T, T).is_err());
        assert!(DidToken::sign(&client, &server, T, T + MAX_DID_TOKEN_LIFETIME_MS + 1).is_err());
    }
}
