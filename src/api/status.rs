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
        AuthCode::TokenMissing
        | AuthCode::TokenMalformed
        | AuthCode::TokenUnknown
        | AuthCode::TokenExpired
        | AuthCode::TokenWrongServer
        | AuthCode::TokenBadSignature => Code::Unauthenticated,
        AuthCode::ScopeMissing => Code::PermissionDenied,
        AuthCode::RateLimited | AuthCode::TooManyStreams => Code::ResourceExhausted,
    };
    let mut details =
        ErrorDetails::with_error_info(e.code().as_str(), ERROR_DOMAIN, HashMap::new());
    if let Some(after) = e.retry_after() {
        details.set_retry_info(Some(after));
    }
    Status::with_error_details(code, e.to_string(), details)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::collections::BTreeMap;

    /// spec/ledger.md, "Status codes": code → gRPC status name.
    fn spec_table() -> BTreeMap<String, String> {
        let spec = include_str!("../../spec/ledger.md");
        let start = spec.find("### Status codes").unwrap();
        let end = spec[start..]
            .find("\n## ")
            .map_or(spec.len(), |e| start + e);
        spec[start..end]
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| {
                let (code, rest) = l.split_once('`')?;
                let status = rest.trim_start_matches(" | ").split(" |").next()?;
                Some((code.to_owned(), status.trim().to_owned()))
            })
            .collect()
    }

    fn name(code: Code) -> String {
        // "InvalidArgument" → "INVALID_ARGUMENT".
        let mut out = String::new();
        for (i, ch) in format!("{code:?}").chars().enumerate() {
            if ch.is_ascii_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_uppercase());
        }
        out
    }

    fn check(table: &BTreeMap<String, String>, s: &Status, code: &str) {
        assert_eq!(
            table.get(code).map(String::as_str),
            Some(name(s.code()).as_str()),
            "{code}"
        );
        assert!(
            s.message().starts_with(&format!("{code}: ")),
            "{}",
            s.message()
        );
        let info = s.get_details_error_info().unwrap();
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            (code, ERROR_DOMAIN)
        );
    }

    /// Every code the Registry service can answer has the status the spec
    /// table gives it, its code as message prefix and as ErrorInfo reason;
    /// the table lists nothing else.
    #[test]
    fn the_status_table_is_the_one_the_server_uses() {
        let table = spec_table();
        let mut seen = std::collections::BTreeSet::new();
        for code in ErrorCode::ALL {
            let s = to_status(&LedgerError::Rejected(crate::Error::new(*code, "m")));
            check(&table, &s, code.as_str());
            seen.insert(code.as_str().to_owned());
        }
        for code in LedgerErrorCode::ALL {
            let s = to_status(&LedgerError::Ledger {
                code: *code,
                message: "m".into(),
            });
            check(&table, &s, code.as_str());
            seen.insert(code.as_str().to_owned());
        }
        for (grpc, message) in [
            (
                "11",
                "Error, decoded message length too large: found 2097152 bytes, the limit is: 1048576 bytes",
            ),
            ("13", "failed to decode Protobuf message: invalid wire type"),
        ] {
            let (code, reason) = super::super::normalize::renamed(grpc, message).unwrap();
            let s = super::super::normalize::normalize_status(Status::new(
                Code::from_i32(grpc.parse().unwrap()),
                message,
            ));
            assert_eq!(s.code(), code);
            check(&table, &s, reason);
            seen.insert(reason.to_owned());
        }
        let listed: std::collections::BTreeSet<String> = table.keys().cloned().collect();
        assert_eq!(listed, seen, "the table lists exactly the codes");
    }
}
