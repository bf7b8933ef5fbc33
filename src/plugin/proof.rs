//! Proof of possession: what a plugin signs in `Initialize` so Pulse knows
//! the process on the other end holds the plugin's current key
//! (spec/plugin.md, "Session proof"). Pure code.

use ed25519_dalek::{Signature, Signer, SigningKey};

use crate::Did;

/// Domain separation for session proofs: never valid as an attestation
/// signature, and the reverse.
pub const PROOF_CONTEXT: &[u8] = b"pulse-ledger/plugin-session/v1\0";

/// Length of the nonce Pulse sends.
pub const NONCE_BYTES: usize = 32;

/// Most handlers one announcement may list.
pub const MAX_ANNOUNCED: usize = 10_000;

/// A handler a plugin says it serves: by ID, by name, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnouncedHandler {
    /// The handler's did:key, if announced by ID.
    pub id: Option<Did>,
    /// The handler's schema name (may be empty when announced by ID).
    pub name: String,
}

/// What a plugin says about itself when a session opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The plugin's ID (its chain's subject).
    pub plugin: Did,
    /// The key that signs the proof: the plugin's current key.
    pub key: Did,
    /// The handlers it serves.
    pub handlers: Vec<AnnouncedHandler>,
    /// Serves every handler whose schema names the plugin.
    pub serves_any: bool,
}

impl Announcement {
    /// Whether a handler with this ID and schema name is announced.
    pub fn serves(&self, handler: &Did, name: &str) -> bool {
        self.serves_any
            || self
                .handlers
                .iter()
                .any(|h| h.id.as_ref() == Some(handler) || (!h.name.is_empty() && h.name == name))
    }
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The signed message: context ‖ nonce ‖ announcement, where the
/// announcement is plugin ‖ key ‖ serves_any (1 byte) ‖ count (u32 BE) ‖
/// each handler's id ‖ name, and every text is its UTF-8 bytes prefixed by
/// their length (u32 BE); an absent ID is the empty text.
pub fn proof_message(nonce: &[u8], a: &Announcement) -> Vec<u8> {
    let mut out = Vec::with_capacity(PROOF_CONTEXT.len() + nonce.len() + 256);
    out.extend_from_slice(PROOF_CONTEXT);
    out.extend_from_slice(nonce);
    put(&mut out, a.plugin.to_string().as_bytes());
    put(&mut out, a.key.to_string().as_bytes());
    out.push(u8::from(a.serves_any));
    out.extend_from_slice(&(a.handlers.len() as u32).to_be_bytes());
    for h in &a.handlers {
        put(
            &mut out,
            h.id.as_ref()
                .map(Did::to_string)
                .unwrap_or_default()
                .as_bytes(),
        );
        put(&mut out, h.name.as_bytes());
    }
    out
}

/// Signs an announcement over `nonce` with the plugin's current key.
pub fn sign_proof(nonce: &[u8], a: &Announcement, key: &SigningKey) -> [u8; 64] {
    key.sign(&proof_message(nonce, a)).to_bytes()
}

/// Why a session proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The signature is not 64 bytes or does not verify under `key`.
    #[error("bad_proof: the signature over the nonce and announcement does not verify under {0}")]
    BadSignature(String),
    /// The announcement lists too many handlers.
    #[error("bad_proof: the announcement lists {0} handlers, more than {MAX_ANNOUNCED}")]
    TooMany(usize),
}

/// Checks that `signature` is `a.key`'s strict signature over the proof
/// message for `nonce`. Whether `a.key` is the plugin's current key is
/// the ledger's question, asked by the caller.
///
/// # Errors
/// [`ProofError`].
pub fn verify_proof(nonce: &[u8], a: &Announcement, signature: &[u8]) -> Result<(), ProofError> {
    if a.handlers.len() > MAX_ANNOUNCED {
        return Err(ProofError::TooMany(a.handlers.len()));
    }
    let bad = || ProofError::BadSignature(a.key.to_string());
    let sig: [u8; 64] = signature.try_into().map_err(|_| bad())?;
    a.key
        .verifying_key()
        .verify_strict(&proof_message(nonce, a), &Signature::from_bytes(&sig))
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn did(k: &SigningKey) -> Did {
        Did::from_verifying_key(&k.verifying_key()).unwrap()
    }

    #[test]
    fn a_proof_verifies_only_for_its_nonce_key_and_announcement() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let a = Announcement {
            plugin: did(&key),
            key: did(&key),
            handlers: vec![AnnouncedHandler {
                id: None,
                name: "echo".into(),
            }],
            serves_any: false,
        };
        let nonce = [1u8; NONCE_BYTES];
        let sig = sign_proof(&nonce, &a, &key);
        verify_proof(&nonce, &a, &sig).unwrap();
        assert!(verify_proof(&[2u8; NONCE_BYTES], &a, &sig).is_err());
        let mut more = a.clone();
        more.serves_any = true;
        assert!(verify_proof(&nonce, &more, &sig).is_err());
        let mut renamed = a.clone();
        renamed.handlers[0].name = "echo2".into();
        assert!(verify_proof(&nonce, &renamed, &sig).is_err());
        let mut claimed = a.clone();
        claimed.key = did(&other);
        assert!(verify_proof(&nonce, &claimed, &sig).is_err());
        assert!(verify_proof(&nonce, &a, &sig[..63]).is_err());
        // Names and IDs are length-prefixed: moving bytes between fields
        // changes the message.
        let b = Announcement {
            handlers: vec![AnnouncedHandler {
                id: None,
                name: "ech".into(),
            }],
            ..a.clone()
        };
        assert_ne!(proof_message(&nonce, &a), proof_message(&nonce, &b));
    }

    #[test]
    fn serves_matches_by_id_name_or_any() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let h = did(&SigningKey::from_bytes(&[9; 32]));
        let mut a = Announcement {
            plugin: did(&key),
            key: did(&key),
            handlers: vec![AnnouncedHandler {
                id: Some(h.clone()),
                name: String::new(),
            }],
            serves_any: false,
        };
        assert!(a.serves(&h, "x"));
        assert!(!a.serves(&did(&key), ""));
        a.handlers.push(AnnouncedHandler {
            id: None,
            name: "echo".into(),
        });
        assert!(a.serves(&did(&key), "echo"));
        a.handlers.clear();
        a.serves_any = true;
        assert!(a.serves(&did(&key), "anything"));
    }
}
