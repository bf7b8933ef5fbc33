//! Offline bundles (spec/audit.md, "Bundles"): one subject's whole chain,
//! an inclusion proof for each statement, and the signed checkpoint they
//! are proven against, in one canonical CBOR item. A bundle verifies with
//! nothing but the log's key.

use crate::attest::internal::{Map, Value, decode, encode};
use crate::audit::{AuditCode, AuditError};
use crate::ledger::{Checkpoint, Hash, leaf_hash, verify_checkpoint, verify_inclusion};
use crate::{ChainState, Did, verify_attestation, verify_chain};

/// The bundle format version this code writes and reads.
pub const BUNDLE_VERSION: u64 = 1;
/// Largest bundle read, bytes.
pub const MAX_BUNDLE_BYTES: usize = 256 * 1024 * 1024;

/// One statement of the chain and where it is in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEntry {
    /// Its log index.
    pub index: u64,
    /// The attestation envelope.
    pub envelope: Vec<u8>,
    /// Its inclusion proof against the bundle's checkpoint, leaf side first.
    pub proof: Vec<Hash>,
}

/// A subject's chain with its proofs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The log's key (did:key); verifiers use the key they trust, and a
    /// bundle naming another is refused.
    pub log: Did,
    /// The subject (handler or plugin).
    pub subject: Did,
    /// The signed checkpoint note every proof is against.
    pub checkpoint: String,
    /// The chain, genesis first.
    pub entries: Vec<BundleEntry>,
}

/// What a verified bundle proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleReport {
    /// The subject's state after its last statement in the bundle.
    pub state: ChainState,
    /// The checkpoint, verified with the log key.
    pub checkpoint: Checkpoint,
    /// The statements' log indexes, by seq.
    pub indexes: Vec<u64>,
}

fn field(message: impl Into<String>) -> AuditError {
    AuditError::new(AuditCode::BundleField, message)
}

impl Bundle {
    /// The canonical CBOR encoding.
    pub fn encode(&self) -> Vec<u8> {
        let entries = self
            .entries
            .iter()
            .map(|e| {
                let mut m = Map::new();
                m.insert("index", Value::Uint(e.index));
                m.insert("envelope", Value::Bytes(e.envelope.clone()));
                m.insert(
                    "proof",
                    Value::Array(e.proof.iter().map(|h| Value::Bytes(h.to_vec())).collect()),
                );
                Value::Map(m)
            })
            .collect();
        let mut m = Map::new();
        m.insert("v", Value::Uint(BUNDLE_VERSION));
        m.insert("log", Value::Text(self.log.to_string()));
        m.insert("subject", Value::Text(self.subject.to_string()));
        m.insert("checkpoint", Value::Text(self.checkpoint.clone()));
        m.insert("entries", Value::Array(entries));
        encode(&Value::Map(m))
    }

    /// Decodes a bundle: canonical CBOR, exactly the format's fields.
    /// Nothing is verified but the shape.
    ///
    /// # Errors
    /// `bundle_encoding`, `bundle_field`.
    pub fn decode(bytes: &[u8]) -> Result<Bundle, AuditError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(AuditError::new(
                AuditCode::BundleEncoding,
                format!("a bundle is at most {MAX_BUNDLE_BYTES} bytes"),
            ));
        }
        let value = decode(bytes).map_err(|e| {
            AuditError::new(
                AuditCode::BundleEncoding,
                format!("{}: {}", e.code(), e.message()),
            )
        })?;
        let top = fields(
            &value,
            "bundle",
            &["v", "log", "subject", "checkpoint", "entries"],
        )?;
        match top.get("v") {
            Some(Value::Uint(BUNDLE_VERSION)) => {}
            Some(Value::Uint(v)) => {
                return Err(field(format!(
                    "bundle version {v} is not supported (this reads version {BUNDLE_VERSION})"
                )));
            }
            _ => return Err(field("v is not an unsigned integer")),
        }
        let did = |name: &str| -> Result<Did, AuditError> {
            match top.get(name) {
                Some(Value::Text(t)) => Did::parse(t).map_err(|e| field(format!("{name}: {e}"))),
                _ => Err(field(format!("{name} is not a text string"))),
            }
        };
        let (log, subject) = (did("log")?, did("subject")?);
        let Some(Value::Text(checkpoint)) = top.get("checkpoint") else {
            return Err(field("checkpoint is not a text string"));
        };
        let Some(Value::Array(items)) = top.get("entries") else {
            return Err(field("entries is not an array"));
        };
        let entries = items
            .iter()
            .enumerate()
            .map(|(i, item)| entry(i, item))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Bundle {
            log,
            subject,
            checkpoint: checkpoint.clone(),
            entries,
        })
    }
}

/// A map with exactly `names` as keys.
fn fields<'a>(value: &'a Value, what: &str, names: &[&str]) -> Result<&'a Map, AuditError> {
    let Value::Map(m) = value else {
        return Err(field(format!("the {what} is not a map")));
    };
    if let Some(k) = m.keys().find(|k| !names.contains(k)) {
        return Err(field(format!("the {what} has an unknown field {k:?}")));
    }
    if let Some(k) = names.iter().find(|k| m.get(k).is_none()) {
        return Err(field(format!("the {what} has no field {k:?}")));
    }
    Ok(m)
}

fn entry(i: usize, item: &Value) -> Result<BundleEntry, AuditError> {
    let what = format!("entries[{i}]");
    let m = fields(item, &what, &["index", "envelope", "proof"])?;
    let Some(Value::Uint(index)) = m.get("index") else {
        return Err(field(format!("{what}.index is not an unsigned integer")));
    };
    let Some(Value::Bytes(envelope)) = m.get("envelope") else {
        return Err(field(format!("{what}.envelope is not a byte string")));
    };
    let Some(Value::Array(path)) = m.get("proof") else {
        return Err(field(format!("{what}.proof is not an array")));
    };
    let proof = path
        .iter()
        .map(|h| match h {
            Value::Bytes(b) => <[u8; 32]>::try_from(b.as_slice()).map_err(|_| {
                field(format!(
                    "{what}.proof has a hash of {} bytes, not 32",
                    b.len()
                ))
            }),
            _ => Err(field(format!(
                "{what}.proof holds something other than byte strings"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(BundleEntry {
        index: *index,
        envelope: envelope.clone(),
        proof,
    })
}

/// Verifies a bundle with the log's key and nothing else: its shape, the
/// checkpoint's signature, every attestation and its inclusion proof, and
/// the chain rules over the whole chain.
///
/// # Errors
/// The first broken rule, in the order of spec/audit.md, "Verifying a
/// bundle"; errors about a statement carry its log index.
pub fn verify_bundle(bytes: &[u8], log_key: &Did) -> Result<BundleReport, AuditError> {
    let b = Bundle::decode(bytes)?;
    if b.log != *log_key {
        return Err(AuditError::new(
            AuditCode::WrongLogKey,
            format!("the bundle is for the log key {}, not {log_key}", b.log),
        ));
    }
    let checkpoint = verify_checkpoint(&b.checkpoint, log_key)
        .map_err(|e| AuditError::new(AuditCode::BadCheckpoint, e.to_string()))?;
    if b.entries.is_empty() {
        return Err(AuditError::new(
            AuditCode::EmptyBundle,
            "the bundle holds no statements",
        ));
    }
    let mut last = None;
    for e in &b.entries {
        if last.is_some_and(|l| e.index <= l) {
            return Err(AuditError::at(
                e.index,
                AuditCode::BundleField,
                "entries are not in log order",
            ));
        }
        last = Some(e.index);
        let att =
            verify_attestation(&e.envelope).map_err(|err| AuditError::entry(e.index, &err))?;
        if att.statement().subject != b.subject {
            return Err(AuditError::at(
                e.index,
                AuditCode::WrongSubject,
                format!(
                    "the statement is about {}, the bundle about {}",
                    att.statement().subject,
                    b.subject
                ),
            ));
        }
        if e.index >= checkpoint.size {
            return Err(AuditError::at(
                e.index,
                AuditCode::IndexOutOfRange,
                format!("the checkpoint's tree has {} entries", checkpoint.size),
            ));
        }
        verify_inclusion(
            &leaf_hash(&e.envelope),
            e.index,
            checkpoint.size,
            &e.proof,
            &checkpoint.root,
        )
        .map_err(|err| AuditError::at(e.index, AuditCode::BadInclusionProof, err.to_string()))?;
    }
    let envelopes: Vec<&[u8]> = b.entries.iter().map(|e| e.envelope.as_slice()).collect();
    let state = verify_chain(&envelopes).map_err(|err| {
        let index = b.entries.get(err.index).map_or(0, |e| e.index);
        AuditError::entry(index, &err.error)
    })?;
    Ok(BundleReport {
        state,
        checkpoint,
        indexes: b.entries.iter().map(|e| e.index).collect(),
    })
}
