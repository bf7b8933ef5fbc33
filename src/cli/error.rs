//! CLI errors: each prints as the sentence a person reads.

use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status for a verification failure.
pub(crate) const EXIT_VERIFY_FAILED: u8 = 1;
/// Exit status for usage and I/O errors.
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit status when the server cannot be reached, is unavailable, or does
/// not answer in time.
pub(crate) const EXIT_UNREACHABLE: u8 = 3;

/// A CLI failure that is not a verification verdict.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Arguments that do not make sense together, or a bad file.
    #[error("{0}")]
    Usage(String),
    /// The server refused a call. Its message may quote a plugin or a
    /// caller, so it is escaped ([`super::output::escape`]).
    #[error("server: {}", super::output::escape(message))]
    Server {
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message (starts with the spec error code).
        message: String,
    },
    /// The server could not be reached.
    #[error("{0}")]
    Unreachable(String),
    /// The server did not answer a call within the deadline.
    #[error(
        "no answer to {call} within {} (--timeout): the server is not responding",
        super::deadline::Deadline::from(*after)
    )]
    Timeout {
        /// The call (`connect`, or a gRPC method such as `GetCheckpoint`).
        call: &'static str,
        /// The deadline that passed.
        after: std::time::Duration,
    },
    /// An input file is not a valid attestation.
    #[error("{}: {source}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The broken rule.
        source: crate::Error,
    },
}

impl CliError {
    pub(crate) fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Invalid { .. } => ExitCode::from(EXIT_VERIFY_FAILED),
            CliError::Server { code, .. } => ExitCode::from(super::client::server_exit(*code)),
            CliError::Unreachable(_) | CliError::Timeout { .. } => ExitCode::from(EXIT_UNREACHABLE),
            _ => ExitCode::from(EXIT_USAGE),
        }
    }
}
