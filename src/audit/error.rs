//! What an audit, a bundle check or a proof check found wrong: one stable
//! code per rule (spec/audit.md, "Error codes").

use std::fmt;

use crate::ErrorCode;

/// The rule an audit found broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditCode {
    /// An entry broke an attestation or chain rule of spec/attestation.md;
    /// the code is that rule's.
    Attestation(ErrorCode),
    /// A checkpoint note does not parse or is not signed by the log key.
    BadCheckpoint,
    /// Two checkpoints name different logs (origins).
    WrongLog,
    /// The root recomputed from the entries is not the checkpoint's.
    RootMismatch,
    /// Fewer or more entries than the checkpoint's size.
    SizeMismatch,
    /// A tree of the same size with a different root than an earlier
    /// checkpoint: the log's history was rewritten.
    Fork,
    /// A checkpoint smaller than an earlier one: the log lost entries.
    LogShrank,
    /// A consistency proof does not verify.
    BadConsistencyProof,
    /// An inclusion proof does not verify.
    BadInclusionProof,
    /// An index at or beyond the tree size it is proven against.
    IndexOutOfRange,
    /// A bundle is not canonical CBOR of the format's types.
    BundleEncoding,
    /// A bundle field is missing, unknown, of the wrong type or out of range.
    BundleField,
    /// A bundle names another log key than the one given.
    WrongLogKey,
    /// A bundle entry is about another subject than the bundle's.
    WrongSubject,
    /// A bundle holds no statements.
    EmptyBundle,
    /// A data dir's indexes or tree nodes contradict its entries
    /// (spec/ledger.md, "Audit").
    StoreIntegrity,
    /// The server did not answer a call within the deadline (a monitor's
    /// alert; spec/audit.md, "Deadlines").
    Unresponsive,
}

impl AuditCode {
    /// The code's name, as the CLI prints it and spec/audit.md lists it.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditCode::Attestation(c) => c.as_str(),
            AuditCode::BadCheckpoint => "bad_checkpoint",
            AuditCode::WrongLog => "wrong_log",
            AuditCode::RootMismatch => "root_mismatch",
            AuditCode::SizeMismatch => "size_mismatch",
            AuditCode::Fork => "fork",
            AuditCode::LogShrank => "log_shrank",
            AuditCode::BadConsistencyProof => "bad_consistency_proof",
            AuditCode::BadInclusionProof => "bad_inclusion_proof",
            AuditCode::IndexOutOfRange => "index_out_of_range",
            AuditCode::BundleEncoding => "bundle_encoding",
            AuditCode::BundleField => "bundle_field",
            AuditCode::WrongLogKey => "wrong_log_key",
            AuditCode::WrongSubject => "wrong_subject",
            AuditCode::EmptyBundle => "empty_bundle",
            AuditCode::StoreIntegrity => "store_integrity",
            AuditCode::Unresponsive => "unresponsive",
        }
    }
}

impl fmt::Display for AuditCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed check: the rule, where (a log index or a bundle entry), and a
/// sentence for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditError {
    /// The broken rule.
    pub code: AuditCode,
    /// The log index of the entry concerned, if one is.
    pub index: Option<u64>,
    /// For people.
    pub message: String,
}

impl fmt::Display for AuditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "entry {i}: {}: {}", self.code, self.message),
            None => write!(f, "{}: {}", self.code, self.message),
        }
    }
}

impl std::error::Error for AuditError {}

impl AuditError {
    /// An error about no entry in particular.
    pub fn new(code: AuditCode, message: impl Into<String>) -> AuditError {
        AuditError {
            code,
            index: None,
            message: message.into(),
        }
    }

    /// An error about the entry at log index `index`.
    pub fn at(index: u64, code: AuditCode, message: impl Into<String>) -> AuditError {
        AuditError {
            code,
            index: Some(index),
            message: message.into(),
        }
    }

    /// An attestation or chain rule broken by the entry at `index`.
    pub fn entry(index: u64, e: &crate::Error) -> AuditError {
        AuditError::at(index, AuditCode::Attestation(e.code()), e.message())
    }
}
