//! Chain rules: how statements about one subject follow each other.

use super::attestation::{Attestation, verify_attestation};
use super::did::Did;
use super::envelope::AttestationId;
use super::error::{Error, ErrorCode};
use super::schema::Schema;
use super::statement::{Action, Family};

/// Where a subject's chain stands after its last statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    /// The subject's ID (did:key of its genesis key).
    pub subject: Did,
    /// Handler or plugin.
    pub family: Family,
    /// The key that must sign the next statement.
    pub key: Did,
    /// The schema in force.
    pub schema: Schema,
    /// seq of the last statement.
    pub seq: u64,
    /// ID of the last statement.
    pub head: AttestationId,
    /// `issued_at` of the last statement, Unix ms.
    pub issued_at: u64,
    /// Whether the last statement is a revocation.
    pub revoked: bool,
}

/// A chain's position without its schema: all the chain rules need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// The subject's ID (did:key of its genesis key).
    pub subject: Did,
    /// Handler or plugin.
    pub family: Family,
    /// The key that must sign the next statement.
    pub key: Did,
    /// seq of the last statement.
    pub seq: u64,
    /// ID of the last statement.
    pub head: AttestationId,
    /// `issued_at` of the last statement, Unix ms.
    pub issued_at: u64,
    /// Whether the last statement is a revocation.
    pub revoked: bool,
}

/// Two different attestations about the same subject with the same seq.
/// Together they prove the subject's key signed two histories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Equivocation {
    /// The one seen first.
    pub first: Attestation,
    /// The conflicting one.
    pub second: Attestation,
}

/// Why a chain failed: the rule, and the position of the offending statement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("statement {index}: {error}")]
pub struct ChainError {
    /// 0-based position in the input of the statement that broke the rule
    /// (0 for `empty_chain`).
    pub index: usize,
    /// The broken rule.
    pub error: Error,
    /// Both attestations, when the rule is `equivocation`.
    pub equivocation: Option<Box<Equivocation>>,
}

impl ChainState {
    /// The state a genesis statement creates.
    ///
    /// # Errors
    /// `not_genesis` unless `att` is a `*.register` statement.
    pub fn genesis(att: &Attestation) -> Result<ChainState, Error> {
        let head = ChainHead::genesis(att)?;
        let schema = att
            .statement()
            .schema()
            .cloned()
            .unwrap_or_else(|| unreachable!("a register statement has a schema"));
        Ok(ChainState::from_parts(head, schema))
    }

    /// Applies the next statement of the chain: the rules of
    /// [`ChainHead::apply`], then the new schema if it is an update.
    ///
    /// # Errors
    /// The first broken chain rule; `self` is unchanged on error.
    pub fn apply(&mut self, att: &Attestation) -> Result<(), Error> {
        let mut head = self.chain_head();
        head.apply(att)?;
        let schema = match &att.statement().action {
            Action::Update(s) => s.clone(),
            _ => self.schema.clone(),
        };
        *self = ChainState::from_parts(head, schema);
        Ok(())
    }

    /// Everything but the schema.
    pub fn chain_head(&self) -> ChainHead {
        ChainHead {
            subject: self.subject.clone(),
            family: self.family,
            key: self.key.clone(),
            seq: self.seq,
            head: self.head,
            issued_at: self.issued_at,
            revoked: self.revoked,
        }
    }

    /// Joins a head and the schema in force.
    pub fn from_parts(head: ChainHead, schema: Schema) -> ChainState {
        ChainState {
            subject: head.subject,
            family: head.family,
            key: head.key,
            schema,
            seq: head.seq,
            head: head.head,
            issued_at: head.issued_at,
            revoked: head.revoked,
        }
    }
}

impl ChainHead {
    /// The state a genesis statement creates.
    ///
    /// # Errors
    /// `not_genesis` unless `att` is a `*.register` statement.
    pub fn genesis(att: &Attestation) -> Result<ChainHead, Error> {
        let st = att.statement();
        let Action::Register(_) = &st.action else {
            return Err(Error::new(
                ErrorCode::NotGenesis,
                format!(
                    "a chain starts with a register statement, not {}",
                    st.kind()
                ),
            ));
        };
        Ok(ChainHead {
            subject: st.subject.clone(),
            family: st.family,
            key: st.signer.clone(),
            seq: 0,
            head: att.id(),
            issued_at: st.issued_at,
            revoked: false,
        })
    }

    /// Applies the next statement of the chain.
    ///
    /// A statement with `seq <= self.seq` needs the subject's history: the
    /// caller that holds it compares the statement with the one already at
    /// that seq using [`repeated_seq`] before calling this. Without that,
    /// such a statement fails here with `seq_gap` (or `duplicate_statement`
    /// if it is the head itself).
    ///
    /// # Errors
    /// The first broken chain rule; `self` is unchanged on error.
    pub fn apply(&mut self, att: &Attestation) -> Result<(), Error> {
        let st = att.statement();
        if st.subject != self.subject {
            return Err(Error::new(
                ErrorCode::SubjectMismatch,
                format!(
                    "statement is about {}, the chain about {}",
                    st.subject, self.subject
                ),
            ));
        }
        if st.family != self.family {
            return Err(Error::new(
                ErrorCode::FamilyMismatch,
                format!(
                    "a {} statement in a {} chain",
                    st.kind(),
                    self.family.as_str()
                ),
            ));
        }
        if att.id() == self.head {
            return Err(Error::new(
                ErrorCode::DuplicateStatement,
                format!("statement {} is already the head of the chain", att.id()),
            ));
        }
        let next = self.seq.saturating_add(1);
        if st.seq != next || next == self.seq {
            return Err(Error::new(
                ErrorCode::SeqGap,
                format!("body.seq is {}; the next seq is {next}", st.seq),
            ));
        }
        if self.revoked {
            return Err(Error::new(
                ErrorCode::AfterRevoke,
                format!(
                    "the subject was revoked at seq {}; nothing may follow",
                    self.seq
                ),
            ));
        }
        if st.prev != Some(self.head) {
            return Err(Error::new(
                ErrorCode::PrevMismatch,
                format!(
                    "body.prev must be {}, the ID of seq {}",
                    self.head, self.seq
                ),
            ));
        }
        if st.signer != self.key {
            return Err(Error::new(
                ErrorCode::WrongSigner,
                format!("signed by {}; the current key is {}", st.signer, self.key),
            ));
        }
        if st.issued_at < self.issued_at {
            return Err(Error::new(
                ErrorCode::TimeRegression,
                format!(
                    "body.issued_at {} is earlier than the previous statement's {}",
                    st.issued_at, self.issued_at
                ),
            ));
        }
        match &st.action {
            Action::Register(_) => unreachable!("register statements have seq 0"),
            Action::Update(_) => {}
            Action::Rotate { new_key } => self.key = new_key.clone(),
            Action::Revoke { .. } => self.revoked = true,
        }
        self.seq = st.seq;
        self.head = att.id();
        self.issued_at = st.issued_at;
        Ok(())
    }
}

/// Judges a statement whose (subject, seq) is already taken by `existing`:
/// the same attestation again (`duplicate_statement`), one signed by a key
/// other than the one that signed `existing` (`wrong_signer`: it proves
/// nothing about the subject's key), or a second history signed by the same
/// key (`equivocation`).
pub fn repeated_seq(existing: &Attestation, candidate: &Attestation) -> Error {
    let (a, b) = (existing.statement(), candidate.statement());
    if existing.id() == candidate.id() {
        Error::new(
            ErrorCode::DuplicateStatement,
            format!(
                "statement {} is already in the chain at seq {}",
                candidate.id(),
                b.seq
            ),
        )
    } else if a.signer != b.signer {
        Error::new(
            ErrorCode::WrongSigner,
            format!(
                "seq {} is signed by {}; this statement by {}",
                b.seq, a.signer, b.signer
            ),
        )
    } else {
        Error::new(
            ErrorCode::Equivocation,
            format!(
                "statements {} and {} both claim seq {} of {}, signed by the same key",
                existing.id(),
                candidate.id(),
                b.seq,
                b.subject
            ),
        )
    }
}

/// Verifies envelopes as one chain, in the given order, and returns the
/// final state.
///
/// Every attestation is verified on its own first; then the first must be a
/// genesis and each later one must follow the one before it.
///
/// # Errors
/// The first broken rule and the index of the statement that broke it. An
/// equivocation carries both conflicting attestations.
pub fn verify_chain<B: AsRef<[u8]>>(envelopes: &[B]) -> Result<ChainState, ChainError> {
    let fail = |index, error| ChainError {
        index,
        error,
        equivocation: None,
    };
    if envelopes.is_empty() {
        return Err(fail(
            0,
            Error::new(
                ErrorCode::EmptyChain,
                "a chain has at least its genesis statement",
            ),
        ));
    }
    let mut seen: Vec<Attestation> = Vec::with_capacity(envelopes.len());
    let mut state: Option<ChainState> = None;
    for (index, bytes) in envelopes.iter().enumerate() {
        let att = verify_attestation(bytes.as_ref()).map_err(|e| fail(index, e))?;
        let Some(current) = state.as_mut() else {
            state = Some(ChainState::genesis(&att).map_err(|e| fail(index, e))?);
            seen.push(att);
            continue;
        };
        // With the whole history at hand, a repeated seq is compared with
        // the statement already at that seq, not only with the head.
        let st = att.statement();
        if st.subject == current.subject && st.family == current.family && st.seq <= current.seq {
            let earlier = usize::try_from(st.seq).ok().and_then(|s| seen.get(s));
            if let Some(earlier) = earlier {
                let error = repeated_seq(earlier, &att);
                let equivocation = (error.code() == ErrorCode::Equivocation).then(|| {
                    Box::new(Equivocation {
                        first: earlier.clone(),
                        second: att,
                    })
                });
                return Err(ChainError {
                    index,
                    error,
                    equivocation,
                });
            }
        }
        current.apply(&att).map_err(|e| fail(index, e))?;
        seen.push(att);
    }
    Ok(state.unwrap_or_else(|| unreachable!("non-empty chain")))
}
