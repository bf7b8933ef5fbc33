//! Who may do what on a server: bearer tokens with scopes for the Jobs
//! API, and a per-client rate limit for the open registry (spec/security.md).
//!
//! Pure logic, no I/O: the gRPC services read the `authorization` header
//! and the peer address and ask these types for a verdict.

mod access;
mod config;
pub(crate) mod did_token;
mod error;
mod rate;
mod scope;
mod token;

pub use access::{Access, AccessCell, Grant, RevokedTokens, TokenRule};
pub use config::{TokenTable, read_token_rules};
pub use did_token::{
    DID_TOKEN_CLOCK_SKEW_MS, DID_TOKEN_CONTEXT, DID_TOKEN_PREFIX, DidToken, MAX_DID_TOKEN_CHARS,
    MAX_DID_TOKEN_LIFETIME_MS,
};
pub use error::{AuthCode, AuthError};
pub use rate::{RateLimit, RateLimiter};
pub use scope::Scope;
pub use token::{TOKEN_PREFIX, TokenHash, new_token};
