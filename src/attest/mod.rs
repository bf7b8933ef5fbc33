//! Attestations: did:key identities, the canonical envelope, statements,
//! and the chain rules. Pure code: no I/O, no clock.

mod access;
mod attestation;
pub(crate) mod cbor;
mod chain;
mod did;
mod envelope;
mod error;
mod fields;
mod json;
mod json_number;
mod schema;
mod statement;

pub use access::{HandlerAccess, Member, Right};
pub use attestation::{Attestation, sign_statement, verify_attestation};
pub(crate) use attestation::{SignatureCheck, check_except_signatures};
pub use chain::{ChainError, ChainHead, ChainState, Equivocation, repeated_seq, verify_chain};
pub use did::Did;
pub use envelope::{AttestationId, SIGNING_CONTEXT, signing_message};
pub use error::{Error, ErrorCode};
pub use schema::{HandlerSchema, NetworkAccess, PluginSchema, Schema, is_valid_name};

/// Every field limit and default of the format, as `spec/attestation.md`
/// states them.
pub mod limits {
    pub use super::access::MAX_ACCESS_MEMBERS;
    pub use super::envelope::MAX_ENVELOPE_BYTES;
    pub use super::schema::{
        DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_MS, MAX_CODE_BYTES, MAX_DESCRIPTION_BYTES,
        MAX_ENDPOINT_BYTES, MAX_JSON_SCHEMA_BYTES, MAX_MAX_ATTEMPTS, MAX_MAX_CONCURRENCY,
        MAX_MAX_COST, MAX_PROTOCOL, MAX_TIMEOUT_MS, MAX_VERSION_BYTES,
    };
    pub use super::statement::{MAX_REASON_BYTES, MAX_SAFE_INTEGER};
}
pub use statement::{Action, FORMAT_VERSION, Family, Kind, Statement};

/// Low-level pieces for test-vector generation and fuzzing: seal arbitrary
/// body bytes, encode arbitrary CBOR. Not a stable API.
#[doc(hidden)]
pub mod internal {
    pub use super::cbor::{Map, Value, decode, encode};

    /// Signs `body` with each key in order and returns envelope bytes,
    /// without checking the body.
    pub fn seal(body: Vec<u8>, keys: &[&ed25519_dalek::SigningKey]) -> Vec<u8> {
        super::envelope::RawEnvelope::seal(body, keys).encode()
    }
}
