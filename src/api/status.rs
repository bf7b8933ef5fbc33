//! The one table that maps domain errors to gRPC status codes.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::ErrorCode;
use crate::ledger::{LedgerError, LedgerErrorCode};

/// `domain` of every google.rpc.ErrorInfo this server returns.
pub const ERROR_DOMAIN: &str = "pulse-ledger";

/// The gRPC status for a ledger error: the spec code is the message prefix
/// and the ErrorInfo `reason`.
pub fn to_status(e: &LedgerError) -> Status {
    let mut metadata = HashMap::new();
    let code = match e {
        LedgerError::Rejected(err) => attestation_status(err.code()),
        LedgerError::Equivocation { logged_index, .. } => {
            metadata.insert("logged_index".to_owned(), logged_index.to_string());
            Code::AlreadyExists
        }
        LedgerError::Ledger { code, .. } => match code {
            LedgerErrorCode::IndexOutOfRange | LedgerErrorCode::SizeOutOfRange => Code::OutOfRange,
            LedgerErrorCode::NotFound => Code::NotFound,
            LedgerErrorCode::BadProof | LedgerErrorCode::BadCheckpoint => Code::InvalidArgument,
            LedgerErrorCode::Integrity => Code::DataLoss,
            LedgerErrorCode::Storage | LedgerErrorCode::Unavailable => Code::Unavailable,
            LedgerErrorCode::DiskFull | LedgerErrorCode::Overloaded => Code::ResourceExhausted,
            LedgerErrorCode::Config => Code::Internal,
        },
    };
    let message = match e {
        LedgerError::Rejected(err) => format!("{}: {}", err.code(), err.message()),
        LedgerError::Equivocation { message, .. } => format!("equivocation: {message}"),
        LedgerError::Ledger { code, message } => format!("{code}: {message}"),
    };
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(e.code(), ERROR_DOMAIN, metadata),
    )
}

/// A rejected attestation: format and signature problems are the caller's
/// bytes (INVALID_ARGUMENT, RESOURCE_EXHAUSTED for size); chain rules
/// depend on the log's state (FAILED_PRECONDITION).
fn attestation_status(code: ErrorCode) -> Code {
    use ErrorCode as E;
    match code {
        E::TooLarge => Code::ResourceExhausted,
        E::NotGenesis
        | E::SubjectMismatch
        | E::FamilyMismatch
        | E::SeqGap
        | E::PrevMismatch
        | E::WrongSigner
        | E::TimeRegression
        | E::AfterRevoke
        | E::DuplicateStatement
        | E::EmptyChain => Code::FailedPrecondition,
        E::Equivocation => Code::AlreadyExists,
        _ => Code::InvalidArgument,
    }
}

/// A request field that does not parse: INVALID_ARGUMENT with the rule.
pub(crate) fn bad_request(field: &str, reason: &str, why: impl std::fmt::Display) -> Status {
    let mut metadata = HashMap::new();
    metadata.insert("field".to_owned(), field.to_owned());
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{reason}: {field}: {why}"),
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}

/// A did:key request field, or INVALID_ARGUMENT with the DID rule broken.
pub(crate) fn parse_did(field: &str, text: &str) -> Result<crate::Did, Status> {
    crate::Did::parse(text).map_err(|e| bad_request(field, e.code().as_str(), e.message()))
}

/// The gRPC status for a refused caller: UNAUTHENTICATED for the token
/// itself, PERMISSION_DENIED for its scopes, RESOURCE_EXHAUSTED (with a
/// google.rpc.RetryInfo) for a rate limit.
pub(crate) fn auth_status(e: &crate::auth::AuthError) -> Status {
    use crate::auth::AuthCode;
    let code = match e.code() {
        AuthCode::TokenMissing | AuthCode::TokenMalformed | AuthCode::TokenUnknown => {
            Code::Unauthenticated
        }
        AuthCode::ScopeMissing => Code::PermissionDenied,
        AuthCode::RateLimited => Code::ResourceExhausted,
    };
    let mut details =
        ErrorDetails::with_error_info(e.code().as_str(), ERROR_DOMAIN, HashMap::new());
    if let Some(after) = e.retry_after() {
        details.set_retry_info(Some(after));
    }
    Status::with_error_details(code, e.to_string(), details)
}
