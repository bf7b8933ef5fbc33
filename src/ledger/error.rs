//! Ledger errors: a rejected attestation (with its attestation code), or a
//! ledger rule, or storage.

use std::fmt;

use crate::attest::{Equivocation, Error as AttestError};

/// Stable codes of the ledger's own rules (spec/ledger.md). Rejected
/// attestations carry the attestation code instead (spec/attestation.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LedgerErrorCode {
    /// A log index at or beyond the tree size.
    IndexOutOfRange,
    /// A tree size beyond the log's size, or sizes in the wrong order.
    SizeOutOfRange,
    /// No attestation with that ID, or no subject with that DID.
    NotFound,
    /// A proof that does not verify.
    BadProof,
    /// A checkpoint that does not parse or whose signature does not verify.
    BadCheckpoint,
    /// Stored data contradicts itself (tree head vs checkpoint, missing
    /// node): the ledger refuses to serve.
    Integrity,
    /// The disk failed or is full; nothing was acknowledged.
    Storage,
    /// Free space is below the reserve: writes are refused until space
    /// returns; nothing was written.
    DiskFull,
    /// The ledger stopped accepting writes after a storage failure.
    Unavailable,
    /// The writer's queue is full (the disk is slower than the appends):
    /// nothing was queued; retry after a short wait.
    Overloaded,
    /// A data directory or key file that cannot be used as given.
    Config,
}

impl LedgerErrorCode {
    /// The code as written in spec/ledger.md.
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerErrorCode::IndexOutOfRange => "index_out_of_range",
            LedgerErrorCode::SizeOutOfRange => "size_out_of_range",
            LedgerErrorCode::NotFound => "not_found",
            LedgerErrorCode::BadProof => "bad_proof",
            LedgerErrorCode::BadCheckpoint => "bad_checkpoint",
            LedgerErrorCode::Integrity => "integrity",
            LedgerErrorCode::Storage => "storage",
            LedgerErrorCode::DiskFull => "disk_full",
            LedgerErrorCode::Unavailable => "unavailable",
            LedgerErrorCode::Overloaded => "overloaded",
            LedgerErrorCode::Config => "config",
        }
    }

    /// Every ledger code.
    pub const ALL: &'static [LedgerErrorCode] = &[
        LedgerErrorCode::IndexOutOfRange,
        LedgerErrorCode::SizeOutOfRange,
        LedgerErrorCode::NotFound,
        LedgerErrorCode::BadProof,
        LedgerErrorCode::BadCheckpoint,
        LedgerErrorCode::Integrity,
        LedgerErrorCode::Storage,
        LedgerErrorCode::DiskFull,
        LedgerErrorCode::Unavailable,
        LedgerErrorCode::Overloaded,
        LedgerErrorCode::Config,
    ];
}

/// Why the ledger refused or failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    /// The attestation broke a rule of spec/attestation.md; nothing was
    /// stored.
    #[error("rejected: {0}")]
    Rejected(AttestError),
    /// The attestation conflicts with one already in the log for the same
    /// subject and seq, signed by the same key. The pair was stored as
    /// evidence; the attestation was not appended.
    #[error("rejected: equivocation: {message}")]
    Equivocation {
        /// What conflicts with what.
        message: String,
        /// The attestation in the log and the rejected one.
        evidence: Box<Equivocation>,
        /// Log index of the attestation already in the log.
        logged_index: u64,
    },
    /// A ledger rule or storage failure.
    #[error("{code}: {message}")]
    Ledger {
        /// The rule.
        code: LedgerErrorCode,
        /// For people.
        message: String,
    },
}

impl fmt::Display for LedgerErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl LedgerError {
    pub(crate) fn new(code: LedgerErrorCode, message: impl Into<String>) -> LedgerError {
        LedgerError::Ledger {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn storage(what: &str, e: impl fmt::Display) -> LedgerError {
        LedgerError::new(LedgerErrorCode::Storage, format!("{what}: {e}"))
    }

    /// The stable code: an attestation code for rejections
    /// (`equivocation` for equivocations), else a ledger code.
    pub fn code(&self) -> &'static str {
        match self {
            LedgerError::Rejected(e) => e.code().as_str(),
            LedgerError::Equivocation { .. } => crate::ErrorCode::Equivocation.as_str(),
            LedgerError::Ledger { code, .. } => code.as_str(),
        }
    }
}

impl From<AttestError> for LedgerError {
    fn from(e: AttestError) -> LedgerError {
        LedgerError::Rejected(e)
    }
}
