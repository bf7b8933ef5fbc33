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
    let (att, checks) = check_except_signatures(bytes)?;
    for (i, c) in checks.iter().enumerate() {
        c.did
            .verifying_key()
            .verify_strict(&c.message, &Signature::from_bytes(&c.signature))
            .map_err(|_| c.failure(i))?;
    }
    Ok(att)
}

/// One signature an attestation must carry: checked later, possibly in a
/// batch ([`crate::audit`]).
#[derive(Debug, Clone)]
pub(crate) struct SignatureCheck {
    /// The key that must have signed.
    pub(crate) did: Did,
    /// What was signed (the domain-separated body).
    pub(crate) message: std::sync::Arc<Vec<u8>>,
    /// The signature bytes from the envelope.
    pub(crate) signature: [u8; 64],
    /// `body.signer` or `body.new_key`.
    role: &'static str,
}

impl SignatureCheck {
    /// The `bad_signature` error for signature number `i` of its envelope.
    pub(crate) fn failure(&self, i: usize) -> Error {
        Error::new(
            ErrorCode::BadSignature,
            format!(
                "envelope.sigs[{i}] is not a valid signature by {} ({})",
                self.role, self.did
            ),
        )
    }
}

/// Every check of [`verify_attestation`] but the signatures, which are
/// returned for the caller to check: the attestation is NOT verified until
/// every returned check passes. Crate-internal so that an unverified
/// [`Attestation`] never leaves the crate.
pub(crate) fn check_except_signatures(
    bytes: &[u8],
) -> Result<(Attestation, Vec<SignatureCheck>), Error> {
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
    let message = std::sync::Arc::new(signing_message(&raw.body));
    let checks = signers
        .iter()
        .zip(&raw.sigs)
        .enumerate()
        .map(|(i, (did, sig))| SignatureCheck {
            did: (*did).clone(),
            message: std::sync::Arc::clone(&message),
            signature: *sig,
            role: if i == 0 {
                "body.signer"
            } else {
                "body.new_key"
            },
        })
        .collect();
    Ok((
        Attestation {
            id: AttestationId::of(bytes),
            envelope: bytes.to_vec(),
            body: raw.body,
            statement,
        },
        checks,
    ))
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
