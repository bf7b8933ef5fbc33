//! The signed envelope: exact body bytes plus signatures over a
//! domain-separated message, and the attestation ID derived from it.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey};

use super::cbor::{self, Map, Value};
use super::error::{Error, ErrorCode};
use super::fields::Fields;

/// Largest envelope accepted, in bytes.
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;

/// Prefix of every signed message: a fixed, versioned context string and a
/// NUL, so a signature over a body can never be replayed as a signature over
/// anything else the same key signs.
pub const SIGNING_CONTEXT: &[u8] = b"pulse-ledger/attestation/v1\0";

/// The ID of an attestation: blake3 of its envelope bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttestationId(pub [u8; 32]);

impl AttestationId {
    /// The ID of the given envelope bytes.
    pub fn of(envelope: &[u8]) -> AttestationId {
        AttestationId(*blake3::hash(envelope).as_bytes())
    }

    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for AttestationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for AttestationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AttestationId({self})")
    }
}

impl FromStr for AttestationId {
    type Err = Error;
    /// Parses 64 lowercase hex digits.
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || {
            Error::new(
                ErrorCode::InvalidField,
                "an attestation ID is 64 lowercase hex digits",
            )
        };
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| bad())?;
        Ok(AttestationId(out))
    }
}

/// The message each signature covers: [`SIGNING_CONTEXT`] ‖ body bytes.
pub fn signing_message(body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_CONTEXT.len() + body.len());
    msg.extend_from_slice(SIGNING_CONTEXT);
    msg.extend_from_slice(body);
    msg
}

/// An envelope split into its parts, not yet verified.
pub(crate) struct RawEnvelope {
    pub(crate) body: Vec<u8>,
    pub(crate) sigs: Vec<[u8; 64]>,
}

/// Most signatures an envelope may carry (a rotation has two).
const MAX_SIGNATURES: usize = 2;

impl RawEnvelope {
    /// Splits envelope bytes into body and signatures, enforcing size,
    /// canonical CBOR and the envelope's field rules.
    pub(crate) fn decode(bytes: &[u8]) -> Result<RawEnvelope, Error> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!(
                    "envelope is {} bytes; the limit is {MAX_ENVELOPE_BYTES}",
                    bytes.len()
                ),
            ));
        }
        let value = cbor::decode(bytes).map_err(|e| e.within("envelope"))?;
        let fields = Fields::new(value, "envelope", &["body", "sigs"])?;
        fields.require(&["body", "sigs"])?;
        let body = fields.bytes("body")?.unwrap_or_default();
        let Some(Value::Array(items)) = fields.value("sigs") else {
            return Err(fields.wrong_type("sigs", "an array of byte strings"));
        };
        if items.is_empty() || items.len() > MAX_SIGNATURES {
            return Err(Error::new(
                ErrorCode::SignatureCount,
                format!(
                    "envelope.sigs has {} signatures; an envelope carries 1 or 2",
                    items.len()
                ),
            ));
        }
        let mut sigs = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let Value::Bytes(b) = item else {
                return Err(Error::new(
                    ErrorCode::WrongType,
                    format!("envelope.sigs[{i}] must be a byte string"),
                ));
            };
            let sig: [u8; 64] = b.as_slice().try_into().map_err(|_| {
                Error::new(
                    ErrorCode::InvalidField,
                    format!("envelope.sigs[{i}] is {} bytes; a signature is 64", b.len()),
                )
            })?;
            sigs.push(sig);
        }
        Ok(RawEnvelope { body, sigs })
    }

    /// Encodes body and signatures as canonical envelope bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut m = Map::new();
        m.insert("body", Value::Bytes(self.body.clone()));
        m.insert(
            "sigs",
            Value::Array(self.sigs.iter().map(|s| Value::Bytes(s.to_vec())).collect()),
        );
        cbor::encode(&Value::Map(m))
    }

    /// Signs `body` with each key in order and builds the envelope. Does not
    /// check the body: callers verify the result.
    pub(crate) fn seal(body: Vec<u8>, keys: &[&SigningKey]) -> RawEnvelope {
        let msg = signing_message(&body);
        let sigs = keys
            .iter()
            .map(|k| {
                let sig: Signature = k.sign(&msg);
                sig.to_bytes()
            })
            .collect();
        RawEnvelope { body, sigs }
    }
}
