//! pulse-ledger: self-certifying async job handlers.
//!
//! Every handler and plugin is an ed25519 key whose `did:key` is its ID.
//! Everything said about it is a signed statement (register → update →
//! rotate → revoke) in canonical CBOR, verified strictly and checked against
//! the chain rules of `spec/attestation.md`.
//!
//! ```
//! use ed25519_dalek::SigningKey;
//! use pulse_ledger::{Action, Did, Family, HandlerSchema, Schema, Statement};
//! use pulse_ledger::{sign_statement, verify_chain};
//!
//! let handler_key = SigningKey::from_bytes(&[1; 32]);
//! let plugin = Did::from_verifying_key(&SigningKey::from_bytes(&[2; 32]).verifying_key())?;
//! let id = Did::from_verifying_key(&handler_key.verifying_key())?;
//! let genesis = Statement {
//!     family: Family::Handler,
//!     subject: id.clone(),
//!     signer: id.clone(),
//!     seq: 0,
//!     prev: None,
//!     issued_at: 1_700_000_000_000,
//!     action: Action::Register(Schema::Handler(HandlerSchema::new("python.script", "1.0.0", plugin))),
//! };
//! let att = sign_statement(&genesis, &handler_key, None)?;
//! let state = verify_chain(&[att.envelope()]).map_err(|e| e.error)?;
//! assert_eq!(state.subject, id);
//! assert!(!state.revoked);
//! # Ok::<(), pulse_ledger::Error>(())
//! ```

mod attest;
mod clock;
mod histogram;
mod keyfile;
pub mod ledger;
pub mod telemetry;
pub mod timeline;

pub mod audit;

pub mod loadgen;

pub mod api;

pub mod auth;

pub mod pulse;

pub mod storage;

pub mod plugin;

pub mod cli;

// The public interface of the library.
pub use attest::{
    Action, Attestation, AttestationId, ChainError, ChainHead, ChainState, Did, Equivocation,
    Error, ErrorCode, FORMAT_VERSION, Family, HandlerAccess, HandlerSchema, Kind, Member,
    NetworkAccess, PluginSchema, Right, SIGNING_CONTEXT, Schema, Statement, is_valid_name, limits,
    repeated_seq, sign_statement, signing_message, verify_attestation, verify_chain,
};

#[doc(hidden)]
pub use attest::internal;

#[doc(hidden)]
pub mod vectors;

pub(crate) mod text;

#[doc(hidden)]
pub mod fuzzing;
