//! Refusals, each with a stable code (spec/security.md, "Error codes").

/// The rule a request broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthCode {
    /// The call needs a bearer token and carried none.
    TokenMissing,
    /// The `authorization` header or the token in it has the wrong shape.
    TokenMalformed,
    /// No configured token has this hash.
    TokenUnknown,
    /// A DID token outside its validity window.
    TokenExpired,
    /// A DID token made for another server.
    TokenWrongServer,
    /// A DID token whose signature is not its DID's.
    TokenBadSignature,
    /// The token is valid but its scopes do not cover the call.
    ScopeMissing,
    /// The client sent more than its rate allows.
    RateLimited,
    /// The client holds its most calls open at once.
    TooManyStreams,
}

impl AuthCode {
    /// Every code, for tables and tests.
    pub const ALL: [AuthCode; 9] = [
        AuthCode::TokenMissing,
        AuthCode::TokenMalformed,
        AuthCode::TokenUnknown,
        AuthCode::TokenExpired,
        AuthCode::TokenWrongServer,
        AuthCode::TokenBadSignature,
        AuthCode::ScopeMissing,
        AuthCode::RateLimited,
        AuthCode::TooManyStreams,
    ];

    /// The code as it appears in messages and `ErrorInfo.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthCode::TokenMissing => "token_missing",
            AuthCode::TokenMalformed => "token_malformed",
            AuthCode::TokenUnknown => "token_unknown",
            AuthCode::TokenExpired => "token_expired",
            AuthCode::TokenWrongServer => "token_wrong_server",
            AuthCode::TokenBadSignature => "token_bad_signature",
            AuthCode::ScopeMissing => "scope_missing",
            AuthCode::RateLimited => "rate_limited",
            AuthCode::TooManyStreams => "too_many_streams",
        }
    }
}

impl std::fmt::Display for AuthCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused request: the rule and a sentence about this case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AuthError {
    code: AuthCode,
    message: String,
    /// For `rate_limited`: when a retry can succeed.
    retry_after: Option<std::time::Duration>,
}

impl AuthError {
    pub(crate) fn new(code: AuthCode, message: impl Into<String>) -> AuthError {
        AuthError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(crate) fn rate_limited(
        message: impl Into<String>,
        after: std::time::Duration,
    ) -> AuthError {
        AuthError {
            retry_after: Some(after),
            ..AuthError::new(AuthCode::RateLimited, message)
        }
    }

    /// The rule broken.
    pub fn code(&self) -> AuthCode {
        self.code
    }

    /// What happened, for a person.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// When a rate-limited client may try again.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after
    }
}
