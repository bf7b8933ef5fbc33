//! A verified attestation, and the two ways to get one: verify bytes, or
//! sign a statement.

use ed25519_dalek::{Signature, SigningKey};

use super::did::Did;
use super::envelope::{AttestationId, RawEnvelope, signing_message};
use super::error::{Error, ErrorCode};
use super::statement::{Action, Statement};

/// An attestation whose encoding, statement rules and signatures have all
/// been checked. Holds the exact envelope bytes it was verified from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    id: AttestationId,
    envelope: Vec<u8>,
    body: Vec<u8>,
    statement: Statement,
}

impl Attestation {
    /// blake3 of the envelope bytes.
    pub fn id(&self) -> AttestationId {
        self.id
    }

    /// The exact envelope bytes (what is stored and hashed).
    pub fn envelope(&self) -> &[u8] {
        &self.envelope
    }

    /// The exact body bytes (what is signed).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The decoded statement.
    pub fn statement(&self) -> &Statement {
        &self.statement
    }

    /// The keys that must sign a statement, in envelope order: the signer,
    /// then (for a rotation) the new key.
    fn required_signers(statement: &Statement) -> Vec<&Did> {
        match &statement.action {
            Action::Rotate { new_key } => vec![&statement.signer, new_key],
            _ => vec![&statement.signer],
        }
    }
}

/// Verifies one attestation in isolation: size, canonical encoding, every
/// field rule, and every signature (strict ed25519).
///
/// Chain rules (seq, prev, current key, revocation) need the subject's
/// history: see [`verify_chain`](super::verify_chain).
///
/// # Errors
/// The first broken rule, in the order `spec/attestation.md` lists the
/// checks.
pub fn verify_attestation(bytes: &[u8]) -> Result<Attestation, Error> {
    let raw = RawEnvelope::decode(bytes)?;
    let statement = Statement::from_body(&raw.body)?;
    let signers = Attestation::required_signers(&statement);
    if raw.sigs.len() != signers.len() {
        return Err(Error::new(
            ErrorCode::SignatureCount,
            format!(
                "a {} envelope carries {} signature(s), this one has {}",
                statement.kind(),
                signers.len(),
                raw.sigs.len()
            ),
        ));
    }
    let msg = signing_message(&raw.body);
    for (i, (did, sig)) in signers.iter().zip(&raw.sigs).enumerate() {
        let role = if i == 0 {
            "body.signer"
        } else {
            "body.new_key"
        };
        did.verifying_key()
            .verify_strict(&msg, &Signature::from_bytes(sig))
            .map_err(|_| {
                Error::new(
                    ErrorCode::BadSignature,
                    format!("envelope.sigs[{i}] is not a valid signature by {role} ({did})"),
                )
            })?;
    }
    Ok(Attestation {
        id: AttestationId::of(bytes),
        envelope: bytes.to_vec(),
        body: raw.body,
        statement,
    })
}

/// Signs a statement and returns the verified attestation.
///
/// `signer` must be the key named by `statement.signer`; a rotation also
/// needs `new_key`, the key it names. The result is run through
/// [`verify_attestation`], so nothing invalid is ever produced.
///
/// # Errors
/// Any rule the statement breaks, or `bad_signature` if a key does not match
/// the DID the statement names.
pub fn sign_statement(
    statement: &Statement,
    signer: &SigningKey,
    new_key: Option<&SigningKey>,
) -> Result<Attestation, Error> {
    let mut keys = vec![signer];
    if let (Action::Rotate { .. }, Some(k)) = (&statement.action, new_key) {
        keys.push(k);
    }
    let envelope = RawEnvelope::seal(statement.to_body(), &keys).encode();
    verify_attestation(&envelope)
}
