//! Statements: what an attestation says, and their body encoding.

use std::fmt;

use super::cbor::{self, Map, Value};
use super::did::Did;
use super::envelope::AttestationId;
use super::error::{Error, ErrorCode};
use super::fields::Fields;
use super::schema::{HandlerSchema, PluginSchema, Schema};

/// The only body format version.
pub const FORMAT_VERSION: u64 = 1;
/// Largest `seq` and `issued_at` (2^53 - 1, exact in every JSON implementation).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
/// Largest revocation `reason`, in bytes.
pub const MAX_REASON_BYTES: usize = 256;

const BODY_FIELDS: &[&str] = &[
    "v",
    "kind",
    "subject",
    "signer",
    "seq",
    "prev",
    "issued_at",
    "schema",
    "new_key",
    "reason",
];

/// Which kind of identity a chain is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// An async job handler.
    Handler,
    /// A plugin process that executes handlers.
    Plugin,
}

impl Family {
    /// `handler` or `plugin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Handler => "handler",
            Family::Plugin => "plugin",
        }
    }
}

/// What a statement does to its subject's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Genesis: creates the identity with its first schema.
    Register(Schema),
    /// Replaces the schema.
    Update(Schema),
    /// Hands the identity to a new key.
    Rotate {
        /// The key that signs from now on.
        new_key: Did,
    },
    /// Ends the identity; nothing may follow.
    Revoke {
        /// Why, for people.
        reason: Option<String>,
    },
}

impl Action {
    fn verb(&self) -> &'static str {
        match self {
            Action::Register(_) => "register",
            Action::Update(_) => "update",
            Action::Rotate { .. } => "rotate",
            Action::Revoke { .. } => "revoke",
        }
    }
}

/// A statement's kind as written in its body, e.g. `handler.rotate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kind {
    /// Handler or plugin.
    pub family: Family,
    verb: &'static str,
}

impl Kind {
    /// All eight kinds.
    pub const ALL: [&'static str; 8] = [
        "handler.register",
        "handler.update",
        "handler.rotate",
        "handler.revoke",
        "plugin.register",
        "plugin.update",
        "plugin.rotate",
        "plugin.revoke",
    ];

    fn parse(text: &str) -> Option<Kind> {
        let (family, verb) = text.split_once('.')?;
        let family = match family {
            "handler" => Family::Handler,
            "plugin" => Family::Plugin,
            _ => return None,
        };
        let verb = ["register", "update", "rotate", "revoke"]
            .into_iter()
            .find(|v| *v == verb)?;
        Some(Kind { family, verb })
    }

    /// Whether this is a genesis (`*.register`) kind.
    pub fn is_genesis(&self) -> bool {
        self.verb == "register"
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.family.as_str(), self.verb)
    }
}

/// One signed statement about a handler or plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Handler or plugin.
    pub family: Family,
    /// The identity the statement is about: the did:key of its genesis key.
    pub subject: Did,
    /// The key that signs the statement: the subject's current key.
    pub signer: Did,
    /// Position in the subject's chain: 0 for genesis, then previous + 1.
    pub seq: u64,
    /// ID of the previous statement; `None` exactly for genesis.
    pub prev: Option<AttestationId>,
    /// When the statement was made, Unix milliseconds.
    pub issued_at: u64,
    /// What the statement does.
    pub action: Action,
}

impl Statement {
    /// The kind, e.g. `handler.update`.
    pub fn kind(&self) -> Kind {
        Kind {
            family: self.family,
            verb: self.action.verb(),
        }
    }

    /// The new schema, for register and update statements.
    pub fn schema(&self) -> Option<&Schema> {
        match &self.action {
            Action::Register(s) | Action::Update(s) => Some(s),
            _ => None,
        }
    }

    /// The canonical CBOR body bytes of this statement. The statement's
    /// rules are checked when the signed result is verified, not here.
    pub fn to_body(&self) -> Vec<u8> {
        let mut m = Map::new();
        m.insert("v", Value::Uint(FORMAT_VERSION));
        m.insert("kind", Value::Text(self.kind().to_string()));
        m.insert("subject", Value::Text(self.subject.to_string()));
        m.insert("signer", Value::Text(self.signer.to_string()));
        m.insert("seq", Value::Uint(self.seq));
        m.insert_opt("prev", self.prev.map(|p| Value::Bytes(p.0.to_vec())));
        m.insert("issued_at", Value::Uint(self.issued_at));
        match &self.action {
            Action::Register(s) | Action::Update(s) => m.insert("schema", s.to_value()),
            Action::Rotate { new_key } => m.insert("new_key", Value::Text(new_key.to_string())),
            Action::Revoke { reason } => m.insert_opt("reason", reason.clone().map(Value::Text)),
        }
        cbor::encode(&Value::Map(m))
    }

    /// Decodes and checks body bytes, in the order the spec gives.
    pub(crate) fn from_body(body: &[u8]) -> Result<Statement, Error> {
        let value = cbor::decode(body).map_err(|e| e.within("body"))?;
        // v and kind come first: a body of another version or kind is
        // reported as such, whatever fields it has.
        let f = Fields::open(value, "body")?;
        f.require(&["v"])?;
        let v = f.uint("v")?.unwrap_or_default();
        if v != FORMAT_VERSION {
            return Err(Error::new(
                ErrorCode::UnsupportedVersion,
                format!("body.v is {v}; this implementation reads version {FORMAT_VERSION}"),
            ));
        }
        f.require(&["kind"])?;
        let kind_text = f.text("kind")?.unwrap_or_default();
        let kind = Kind::parse(&kind_text).ok_or_else(|| {
            Error::new(
                ErrorCode::UnknownKind,
                format!(
                    "body.kind {kind_text:?} is not one of {}",
                    Kind::ALL.join(", ")
                ),
            )
        })?;
        f.known(BODY_FIELDS)?;
        let (allowed, required): (&[&str], &[&str]) = match kind.verb {
            "register" => (
                &[
                    "v",
                    "kind",
                    "subject",
                    "signer",
                    "seq",
                    "issued_at",
                    "schema",
                ],
                &["subject", "signer", "seq", "issued_at", "schema"],
            ),
            "update" => (
                &[
                    "v",
                    "kind",
                    "subject",
                    "signer",
                    "seq",
                    "prev",
                    "issued_at",
                    "schema",
                ],
                &["subject", "signer", "seq", "prev", "issued_at", "schema"],
            ),
            "rotate" => (
                &[
                    "v",
                    "kind",
                    "subject",
                    "signer",
                    "seq",
                    "prev",
                    "issued_at",
                    "new_key",
                ],
                &["subject", "signer", "seq", "prev", "issued_at", "new_key"],
            ),
            _ => (
                &[
                    "v",
                    "kind",
                    "subject",
                    "signer",
                    "seq",
                    "prev",
                    "issued_at",
                    "reason",
                ],
                &["subject", "signer", "seq", "prev", "issued_at"],
            ),
        };
        f.only(allowed, &kind_text)?;
        f.require(required)?;
        let subject = f
            .did("subject")?
            .unwrap_or_else(|| unreachable!("required"));
        // A genesis names the same key twice; decompress it once.
        let signer = match f.text("signer")? {
            Some(t) if Some(&t) == f.text("subject")?.as_ref() => subject.clone(),
            _ => f.did("signer")?.unwrap_or_else(|| unreachable!("required")),
        };
        let seq = f.uint_in("seq", 0, MAX_SAFE_INTEGER)?.unwrap_or_default();
        if kind.is_genesis() && seq != 0 {
            return Err(f.invalid(
                "seq",
                format_args!("is {seq}; a {kind} statement has seq 0"),
            ));
        }
        if !kind.is_genesis() && seq == 0 {
            return Err(f.invalid(
                "seq",
                format_args!("is 0; only a register statement has seq 0"),
            ));
        }
        let prev = match f.bytes("prev")? {
            None => None,
            Some(b) => Some(AttestationId(b.as_slice().try_into().map_err(|_| {
                f.invalid(
                    "prev",
                    format_args!("is {} bytes; an attestation ID is 32", b.len()),
                )
            })?)),
        };
        let issued_at = f
            .uint_in("issued_at", 0, MAX_SAFE_INTEGER)?
            .unwrap_or_default();
        let schema = match f.map("schema").cloned() {
            None => None,
            Some(value) => Some(
                match kind.family {
                    Family::Handler => HandlerSchema::from_value(value).map(Schema::Handler),
                    Family::Plugin => PluginSchema::from_value(value).map(Schema::Plugin),
                }
                .map_err(|e| e.within("body"))?,
            ),
        };
        let new_key = f.did("new_key")?;
        let reason = f.prose("reason", MAX_REASON_BYTES)?;
        let action = match (kind.verb, schema, new_key) {
            ("register", Some(s), _) => Action::Register(s),
            ("update", Some(s), _) => Action::Update(s),
            ("rotate", _, Some(k)) => Action::Rotate { new_key: k },
            _ => Action::Revoke { reason },
        };
        if kind.is_genesis() && signer != subject {
            return Err(Error::new(
                ErrorCode::SignerMismatch,
                "body.signer must equal body.subject in a register statement: the subject's ID is its genesis key",
            ));
        }
        if let Action::Rotate { new_key } = &action {
            if *new_key == signer {
                return Err(Error::new(
                    ErrorCode::RotateSameKey,
                    "body.new_key is the signing key; a rotation must name a different key",
                ));
            }
        }
        Ok(Statement {
            family: kind.family,
            subject,
            signer,
            seq,
            prev,
            issued_at,
            action,
        })
    }
}
