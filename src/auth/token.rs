//! Bearer tokens: 256 random bits, shown once, stored only as a hash.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;

use super::error::{AuthCode, AuthError};

/// Every token starts with this, so a leaked one is easy to recognise
/// (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "plt_";

/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;

/// A fresh token: `plt_` and 43 base64url characters of OS randomness.
///
/// # Errors
/// The OS has no randomness to give.
pub fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(format!("{TOKEN_PREFIX}{}", B64URL.encode(bytes)))
}

/// The stored form of a token: blake3 of its text. A token has 256 bits
/// of entropy, so a fast hash is enough: no password-style stretching
/// would make guessing it any harder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The hash of a presented token, if it has the token shape.
    ///
    /// # Errors
    /// `token_malformed` when the text is not `plt_` + 43 base64url
    /// characters.
    pub fn of(token: &str) -> Result<TokenHash, AuthError> {
        let body = token.strip_prefix(TOKEN_PREFIX).ok_or_else(|| {
            AuthError::new(
                AuthCode::TokenMalformed,
                format!("a token starts with {TOKEN_PREFIX:?}"),
            )
        })?;
        match B64URL.decode(body) {
            Ok(b) if b.len() == TOKEN_BYTES => {
                Ok(TokenHash(*blake3::hash(token.as_bytes()).as_bytes()))
            }
            _ => Err(AuthError::new(
                AuthCode::TokenMalformed,
                format!("a token is {TOKEN_PREFIX:?} and 43 base64url characters"),
            )),
        }
    }

    /// Parses the stored form, `blake3:` and 64 hex digits.
    ///
    /// # Errors
    /// A message naming the expected form.
    pub fn parse(text: &str) -> Result<TokenHash, String> {
        let hex_part = text
            .strip_prefix("blake3:")
            .ok_or_else(|| format!("{text:?}: a token hash is \"blake3:\" and 64 hex digits"))?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out)
            .map_err(|_| format!("{text:?}: a token hash is \"blake3:\" and 64 hex digits"))?;
        Ok(TokenHash(out))
    }
}

impl std::fmt::Display for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "blake3:{}", hex::encode(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_tokens_hash_and_round_trip_their_stored_form() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43);
        let h = TokenHash::of(&a).unwrap();
        assert_eq!(TokenHash::parse(&h.to_string()).unwrap(), h);
        assert_ne!(TokenHash::of(&b).unwrap(), h);
    }

    #[test]
    fn malformed_tokens_and_hashes_are_refused_by_rule() {
        let good = new_token().unwrap();
        for bad in [
            "",
            "plt_",
            &good[TOKEN_PREFIX.len()..],
            &good[..good.len() - 1],
            &format!("{good}A"),
            &good.replace("plt_", "plx_"),
        ] {
            let e = TokenHash::of(bad).unwrap_err();
            assert_eq!(e.code(), AuthCode::TokenMalformed, "{bad:?}");
        }
        for bad in [
            "",
            "blake3:",
            "sha256:00",
            &format!("blake3:{}", "g".repeat(64)),
        ] {
            assert!(TokenHash::parse(bad).is_err(), "{bad:?}");
        }
    }
}
