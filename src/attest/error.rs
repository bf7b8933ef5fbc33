//! The one error type of the attestation core: a stable code per rule plus a
//! message for people.

use std::fmt;

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, )*) => {
        /// A stable, machine-readable name for each rule an attestation or a
        /// chain can break. The strings are listed in `spec/attestation.md`
        /// and never change meaning once published.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in the order the spec lists them.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$variant, )* ];

            /// The code as written in the spec, e.g. `bad_signature`.
            pub fn as_str(self) -> &'static str {
                match self { $( ErrorCode::$variant => $code, )* }
            }

            /// Parses a code string as written in the spec.
            pub fn from_name(name: &str) -> Option<ErrorCode> {
                match name { $( $code => Some(ErrorCode::$variant), )* _ => None }
            }
        }
    };
}

error_codes! {
    /// The envelope is longer than 65,536 bytes.
    TooLarge = "too_large",
    /// The bytes are not well-formed CBOR, are truncated, have trailing bytes,
    /// or nest too deeply.
    MalformedCbor = "malformed_cbor",
    /// Well-formed CBOR that is not in the one deterministic encoding
    /// (non-shortest integer or length, indefinite length, unsorted map keys).
    NonCanonicalCbor = "non_canonical_cbor",
    /// A map holds the same key twice.
    DuplicateKey = "duplicate_key",
    /// A CBOR type the format never uses (negative integer, float, tag,
    /// simple value) or a map key that is not a text string.
    ForbiddenCborType = "forbidden_cbor_type",
    /// A map holds a key the format does not define.
    UnknownField = "unknown_field",
    /// A required field is absent.
    MissingField = "missing_field",
    /// A field has the wrong CBOR type.
    WrongType = "wrong_type",
    /// A field's value breaks its rule (pattern, range, length).
    InvalidField = "invalid_field",
    /// The statement's format version `v` is not 1.
    UnsupportedVersion = "unsupported_version",
    /// The statement's `kind` is not one of the eight defined kinds.
    UnknownKind = "unknown_kind",
    /// A defined field that this statement kind must not carry.
    UnexpectedField = "unexpected_field",
    /// A DID is not of the form `did:key:z…`.
    DidSyntax = "did_syntax",
    /// The base58btc part of a did:key does not decode.
    DidBase58 = "did_base58",
    /// The did:key multicodec prefix is not ed25519-pub (0xed 0x01).
    DidMulticodec = "did_multicodec",
    /// The did:key key is not exactly 32 bytes.
    DidLength = "did_length",
    /// The key is not a canonical encoding of a point of large order.
    WeakKey = "weak_key",
    /// A genesis statement's signer is not its subject.
    SignerMismatch = "signer_mismatch",
    /// A rotation names the key that is already current.
    RotateSameKey = "rotate_same_key",
    /// The envelope has the wrong number of signatures for its kind.
    SignatureCount = "signature_count",
    /// A signature does not verify (strict ed25519).
    BadSignature = "bad_signature",
    /// A chain with no statements.
    EmptyChain = "empty_chain",
    /// A chain's first statement is not a `*.register`.
    NotGenesis = "not_genesis",
    /// A statement in a chain is about another subject.
    SubjectMismatch = "subject_mismatch",
    /// A handler statement in a plugin chain or the reverse.
    FamilyMismatch = "family_mismatch",
    /// A statement's seq is not the previous seq + 1.
    SeqGap = "seq_gap",
    /// A statement's prev is not the ID of the statement before it.
    PrevMismatch = "prev_mismatch",
    /// A statement is not signed by the subject's current key, or claims a
    /// seq already taken by a statement another key signed.
    WrongSigner = "wrong_signer",
    /// A statement's issued_at is earlier than the one before it.
    TimeRegression = "time_regression",
    /// A statement follows a revocation.
    AfterRevoke = "after_revoke",
    /// Two different attestations for the same subject and seq: proof that
    /// the key signed two histories.
    Equivocation = "equivocation",
    /// The same attestation appears twice in a chain.
    DuplicateStatement = "duplicate_statement",
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A broken rule: which one ([`ErrorCode`]) and a message naming the
/// offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    code: ErrorCode,
    message: String,
}

impl Error {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
        }
    }

    /// The rule that was broken.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// What was wrong, for people; names the field where there is one.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with the place the error was found
    /// (for example `schema.name`).
    pub(crate) fn within(mut self, place: &str) -> Self {
        self.message = format!("{place}: {}", self.message);
        self
    }
}
