//! The full audit of a log, fed its entries in order (spec/audit.md,
//! "Auditing a log"): every attestation re-verified, every chain rule
//! re-applied, the Merkle root recomputed and compared with a signed
//! checkpoint, and, given an earlier checkpoint, the root at its size
//! compared with it (so a rewritten history is caught). Pure: the caller
//! reads the entries from a server or a data dir.

use std::collections::HashMap;

use super::batch::verify_parallel;
use super::error::{AuditCode, AuditError};
use crate::ledger::{Checkpoint, Frontier, Hash, leaf_hash};
use crate::{AttestationId, ChainHead, Did, Family};

/// What the chain rules need of a subject, without its decoded keys (so a
/// million subjects fit in ~130 MB).
#[derive(Debug, Clone, Copy)]
struct Head {
    key: [u8; 32],
    family: Family,
    seq: u64,
    head: AttestationId,
    issued_at: u64,
    revoked: bool,
}

impl Head {
    fn of(h: &ChainHead) -> Head {
        Head {
            key: *h.key.public_key(),
            family: h.family,
            seq: h.seq,
            head: h.head,
            issued_at: h.issued_at,
            revoked: h.revoked,
        }
    }
}

/// What a finished audit checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSummary {
    /// Entries verified.
    pub entries: u64,
    /// Distinct subjects (handlers and plugins).
    pub subjects: u64,
    /// Of those, revoked.
    pub revoked: u64,
    /// The verified root.
    pub root: Hash,
}

/// An audit in progress: push entries in index order, then finish against
/// a checkpoint.
pub struct LogAuditor {
    frontier: Frontier,
    subjects: HashMap<[u8; 32], Head>,
    threads: usize,
    /// An earlier checkpoint's (size, root): the recomputed root at that
    /// size must equal it.
    earlier: Option<(u64, Hash)>,
}

impl LogAuditor {
    /// An audit from index 0, verifying on `threads` threads.
    pub fn new(threads: usize) -> LogAuditor {
        LogAuditor {
            frontier: Frontier::default(),
            subjects: HashMap::new(),
            threads,
            earlier: None,
        }
    }

    /// Requires the tree of `earlier.size` entries to have `earlier.root`:
    /// an earlier checkpoint the auditor trusts.
    ///
    /// # Errors
    /// `fork` if the audit is already past that size with another root.
    pub fn check_earlier(&mut self, earlier: &Checkpoint) -> Result<(), AuditError> {
        self.earlier = Some((earlier.size, earlier.root));
        if earlier.size == self.frontier.size() {
            self.compare_earlier()?;
        }
        Ok(())
    }

    /// Entries verified so far (the next index expected).
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// The root of the entries verified so far.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    fn compare_earlier(&self) -> Result<(), AuditError> {
        if let Some((size, root)) = self.earlier {
            if size == self.frontier.size() && root != self.frontier.root() {
                return Err(AuditError::new(
                    AuditCode::Fork,
                    format!(
                        "the earlier checkpoint has size {size} and root {}, but the log's first {size} entries have root {}: the history was rewritten",
                        hex::encode(root),
                        hex::encode(self.frontier.root())
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Verifies the next entries (log indexes `size()` onwards, in order).
    ///
    /// # Errors
    /// The first broken rule, naming its index; the audit must stop then.
    pub fn push(&mut self, envelopes: &[Vec<u8>]) -> Result<(), AuditError> {
        let verdicts = verify_parallel(envelopes, self.threads);
        for (bytes, verdict) in envelopes.iter().zip(verdicts) {
            let index = self.frontier.size();
            let att = verdict.map_err(|e| AuditError::entry(index, &e))?;
            self.apply(index, &att)?;
            self.frontier.push(leaf_hash(bytes));
            self.compare_earlier()?;
        }
        Ok(())
    }

    /// Applies the chain rules to one verified attestation.
    fn apply(&mut self, index: u64, att: &crate::Attestation) -> Result<(), AuditError> {
        let st = att.statement();
        let key = *st.subject.public_key();
        let Some(known) = self.subjects.get_mut(&key) else {
            let head = ChainHead::genesis(att).map_err(|e| AuditError::entry(index, &e))?;
            self.subjects.insert(key, Head::of(&head));
            return Ok(());
        };
        // Rebuild the head from the statement's own decoded keys where they
        // match (they nearly always do), so no key is decompressed twice.
        let current = if known.key == *st.signer.public_key() {
            st.signer.clone()
        } else {
            Did::from_public_key(known.key).map_err(|e| AuditError::entry(index, &e))?
        };
        let mut head = ChainHead {
            subject: st.subject.clone(),
            family: known.family,
            key: current,
            seq: known.seq,
            head: known.head,
            issued_at: known.issued_at,
            revoked: known.revoked,
        };
        head.apply(att).map_err(|e| AuditError::entry(index, &e))?;
        *known = Head::of(&head);
        Ok(())
    }

    /// Ends the audit: the entries pushed must be exactly the checkpoint's
    /// tree.
    ///
    /// # Errors
    /// `size_mismatch`, `root_mismatch`; `log_shrank` if an earlier
    /// checkpoint is larger than this tree.
    pub fn finish(self, checkpoint: &Checkpoint) -> Result<AuditSummary, AuditError> {
        let size = self.frontier.size();
        if size != checkpoint.size {
            return Err(AuditError::new(
                AuditCode::SizeMismatch,
                format!(
                    "the checkpoint has size {}, but {size} entries were verified",
                    checkpoint.size
                ),
            ));
        }
        if self.frontier.root() != checkpoint.root {
            return Err(AuditError::new(
                AuditCode::RootMismatch,
                format!(
                    "the {size} entries have root {}, the signed checkpoint says {}",
                    hex::encode(self.frontier.root()),
                    hex::encode(checkpoint.root)
                ),
            ));
        }
        if let Some((earlier, _)) = self.earlier {
            if earlier > size {
                return Err(AuditError::new(
                    AuditCode::LogShrank,
                    format!("an earlier checkpoint had {earlier} entries; the log now has {size}"),
                ));
            }
        }
        Ok(AuditSummary {
            entries: size,
            subjects: self.subjects.len() as u64,
            revoked: self.subjects.values().filter(|h| h.revoked).count() as u64,
            root: checkpoint.root,
        })
    }
}

/// Compares a new checkpoint with an earlier one before anything is
/// downloaded: same log, not smaller, and the same root at the same size.
///
/// # Errors
/// `wrong_log`, `log_shrank`, `fork`.
pub fn compare_checkpoints(earlier: &Checkpoint, new: &Checkpoint) -> Result<(), AuditError> {
    if earlier.origin != new.origin {
        return Err(AuditError::new(
            AuditCode::WrongLog,
            format!(
                "the earlier checkpoint is for the log {:?}, the new one for {:?}",
                earlier.origin, new.origin
            ),
        ));
    }
    if new.size < earlier.size {
        return Err(AuditError::new(
            AuditCode::LogShrank,
            format!(
                "the new checkpoint has {} entries, an earlier one had {}: the log lost entries",
                new.size, earlier.size
            ),
        ));
    }
    if new.size == earlier.size && new.root != earlier.root {
        return Err(AuditError::new(
            AuditCode::Fork,
            format!(
                "two checkpoints of size {} with different roots ({} and {}): the log forked",
                new.size,
                hex::encode(earlier.root),
                hex::encode(new.root)
            ),
        ));
    }
    Ok(())
}
