//! Consistent reads: a view pairs the published signed head with the
//! database snapshot taken just after it was committed.

use super::error::{LedgerError, LedgerErrorCode};
use super::layout::{self, Ks, SubjectRecord, chain_key, node_key, plugin_key, read_u64, u64_key};
use super::merkle::{self, Hash, NodeSource};
use super::store::{
    CHAIN_PAGE_BYTES, ChainPage, EquivocationRecord, MAX_ENTRY_RANGE, MAX_PAGE, MAX_SCAN, Shared,
    SubjectFilter, TreeHead, missing, stored_node,
};
use crate::storage::Snapshot;
use crate::{Attestation, AttestationId, ChainState, Did, Family, verify_attestation};

/// A consistent read view: the published signed head and the database
/// snapshot taken just after it was committed, so a view never sees part
/// of a group commit or entries beyond its head. Without a snapshot the
/// view reads the store itself, and its caller checks that no commit began
/// meanwhile (`Ledger::read`).
pub(super) struct View<'a> {
    pub(super) shared: &'a Shared,
    pub(super) snap: Option<Snapshot>,
    pub(super) head: TreeHead,
}

impl View<'_> {
    pub(super) fn get(&self, k: Ks, key: &[u8]) -> Result<Option<Vec<u8>>, LedgerError> {
        match &self.snap {
            Some(s) => s.get(self.shared.ks(k), key),
            None => self.shared.ks(k).get(key),
        }
        .map_err(|e| LedgerError::storage("read", e))
    }

    fn range<K: AsRef<[u8]>>(
        &self,
        k: Ks,
        range: impl std::ops::RangeBounds<K>,
    ) -> crate::storage::Entries {
        match &self.snap {
            Some(s) => s.range(self.shared.ks(k), range),
            None => self.shared.ks(k).range(range),
        }
    }

    fn prefix(&self, k: Ks, prefix: impl AsRef<[u8]>) -> crate::storage::Entries {
        match &self.snap {
            Some(s) => s.prefix(self.shared.ks(k), prefix),
            None => self.shared.ks(k).prefix(prefix),
        }
    }

    pub(super) fn entry(&self, index: u64) -> Result<Vec<u8>, LedgerError> {
        let size = self.head.size;
        if index >= size {
            return Err(LedgerError::new(
                LedgerErrorCode::IndexOutOfRange,
                format!("index {index} is not below the tree size {size}"),
            ));
        }
        self.shared
            .get(Ks::Entries, &u64_key(index))?
            .ok_or_else(|| missing("entry", index))
    }

    pub(super) fn entries(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, LedgerError> {
        self.entries_within(start, end, usize::MAX)
    }

    /// [`Self::entries`], stopping before the entry that would take the
    /// envelopes past `max_bytes` (the first entry is always read).
    pub(super) fn entries_within(
        &self,
        start: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, LedgerError> {
        let size = self.head.size;
        if start > size {
            return Err(LedgerError::new(
                LedgerErrorCode::IndexOutOfRange,
                format!("start {start} is beyond the tree size {size}"),
            ));
        }
        let end = end.min(size).min(start.saturating_add(MAX_ENTRY_RANGE));
        if end <= start {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut budget = max_bytes;
        for kv in self.range(Ks::Entries, u64_key(start)..u64_key(end)) {
            let (k, v) = kv.map_err(|e| LedgerError::storage("read", e))?;
            if !out.is_empty() && v.len() > budget {
                break;
            }
            budget = budget.saturating_sub(v.len());
            out.push((read_u64(&k)?, v.to_vec()));
        }
        Ok(out)
    }

    pub(super) fn index_of(&self, id: &AttestationId) -> Result<u64, LedgerError> {
        match self.get(Ks::ById, id.as_bytes())? {
            Some(v) => read_u64(&v),
            None => Err(LedgerError::new(
                LedgerErrorCode::NotFound,
                format!("attestation {id} is not in the log"),
            )),
        }
    }

    pub(super) fn subject(&self, subject: &Did) -> Result<SubjectRecord, LedgerError> {
        match self.get(Ks::Subjects, subject.public_key())? {
            Some(v) => SubjectRecord::decode(&v),
            None => Err(LedgerError::new(
                LedgerErrorCode::NotFound,
                format!("no statement about {subject} is in the log"),
            )),
        }
    }

    pub(super) fn subject_state(&self, subject: &Did) -> Result<ChainState, LedgerError> {
        let rec = self.subject(subject)?;
        let att = self.stored_attestation(rec.schema_index)?;
        let schema = att.statement().schema().cloned().ok_or_else(|| {
            LedgerError::new(
                LedgerErrorCode::Integrity,
                "schema index points at a statement without a schema",
            )
        })?;
        Ok(ChainState::from_parts(rec.head, schema))
    }

    pub(super) fn statement_indexes(&self, subject: &Did) -> Result<Vec<u64>, LedgerError> {
        self.subject(subject)?;
        let mut out = Vec::new();
        for kv in self.prefix(Ks::Chains, subject.public_key()) {
            let (_, v) = kv.map_err(|e| LedgerError::storage("read", e))?;
            out.push(read_u64(&v)?);
        }
        Ok(out)
    }

    pub(super) fn chain(
        &self,
        subject: &Did,
        from_seq: u64,
        limit: usize,
    ) -> Result<ChainPage, LedgerError> {
        let rec = self.subject(subject)?;
        let limit = limit.clamp(1, MAX_ENTRY_RANGE as usize);
        let key = subject.public_key();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let range = chain_key(key, from_seq)..=chain_key(key, u64::MAX);
        for kv in self.range(Ks::Chains, range) {
            if out.len() == limit || bytes >= CHAIN_PAGE_BYTES {
                break;
            }
            let (_, v) = kv.map_err(|e| LedgerError::storage("read", e))?;
            let index = read_u64(&v)?;
            let entry = self.entry(index)?;
            bytes += entry.len();
            out.push((index, entry));
        }
        let next = from_seq.saturating_add(out.len() as u64);
        let more = next <= rec.head.seq && !out.is_empty();
        Ok((out, more.then_some(next)))
    }

    pub(super) fn list_subjects(
        &self,
        filter: &SubjectFilter,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<SubjectRecord>, Option<Vec<u8>>), LedgerError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let family = filter.family.unwrap_or(Family::Handler);
        let mut prefix = vec![layout::family_byte(family)];
        prefix.extend_from_slice(filter.name_prefix.as_bytes());
        let iter = match cursor {
            Some(c) => {
                let mut after = c.to_vec();
                after.push(0);
                self.range(Ks::ByName, after..)
            }
            None => self.range(Ks::ByName, prefix.clone()..),
        };
        let mut page = Vec::new();
        let mut last = None;
        let mut scanned = 0usize;
        for kv in iter {
            // Bound the work of one call: with selective filters, return a
            // short page and a cursor rather than scan the whole index.
            if scanned == MAX_SCAN {
                break;
            }
            scanned += 1;
            let (k, _) = kv.map_err(|e| LedgerError::storage("read", e))?;
            if !k.starts_with(&prefix) {
                break;
            }
            let subject: [u8; 32] = k
                .get(k.len().saturating_sub(32)..)
                .unwrap_or_default()
                .try_into()
                .map_err(|_| LedgerError::new(LedgerErrorCode::Integrity, "name index key"))?;
            let rec = match self.get(Ks::Subjects, &subject)? {
                Some(v) => SubjectRecord::decode(&v)?,
                None => {
                    return Err(LedgerError::new(
                        LedgerErrorCode::Integrity,
                        "name index points at no subject",
                    ));
                }
            };
            last = Some(k.to_vec());
            let plugin_ok = filter
                .plugin
                .as_ref()
                .is_none_or(|p| rec.plugin.as_ref() == Some(p));
            if plugin_ok && (filter.include_revoked || !rec.head.revoked) {
                page.push(rec);
                if page.len() == limit {
                    break;
                }
            }
        }
        let next = if page.len() == limit || scanned == MAX_SCAN {
            last
        } else {
            None
        };
        Ok((page, next))
    }

    pub(super) fn handlers_of_plugin(
        &self,
        plugin: &Did,
        cursor: Option<&Did>,
        limit: usize,
    ) -> Result<Vec<SubjectRecord>, LedgerError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let start = match cursor {
            Some(c) => {
                let mut k = plugin_key(plugin.public_key(), c.public_key()).to_vec();
                k.push(0);
                k
            }
            None => plugin.public_key().to_vec(),
        };
        let mut out = Vec::new();
        for kv in self.range(Ks::ByPlugin, start..) {
            let (k, _) = kv.map_err(|e| LedgerError::storage("read", e))?;
            if !k.starts_with(plugin.public_key()) || out.len() == limit {
                break;
            }
            let handler = &k[32..];
            if let Some(v) = self.get(Ks::Subjects, handler)? {
                out.push(SubjectRecord::decode(&v)?);
            }
        }
        Ok(out)
    }

    pub(super) fn equivocations(
        &self,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<EquivocationRecord>, Option<Vec<u8>>), LedgerError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let start = match cursor {
            Some(c) => {
                let mut after = c.to_vec();
                after.push(0);
                after
            }
            None => Vec::new(),
        };
        let mut out = Vec::new();
        let mut last = None;
        for kv in self.range(Ks::Equivocations, start..) {
            if out.len() == limit {
                break;
            }
            let (k, v) = kv.map_err(|e| LedgerError::storage("read", e))?;
            let corrupt = || LedgerError::new(LedgerErrorCode::Integrity, "equivocation record");
            let subject: [u8; 32] = k
                .get(..32)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(corrupt)?;
            out.push(EquivocationRecord {
                subject: Did::from_public_key(subject).map_err(|_| corrupt())?,
                seq: read_u64(k.get(32..).ok_or_else(corrupt)?)?,
                logged_index: read_u64(&v)?,
                rejected: v.get(8..).ok_or_else(corrupt)?.to_vec(),
            });
            last = Some(k.to_vec());
        }
        let next = if out.len() == limit { last } else { None };
        Ok((out, next))
    }

    /// The tree at this view's head (tree nodes need no snapshot).
    fn tree(&self) -> TreeView<'_> {
        TreeView {
            shared: self.shared,
            head: self.head.clone(),
        }
    }

    pub(super) fn inclusion_proof_by_id(
        &self,
        id: &AttestationId,
        size: u64,
    ) -> Result<(u64, Vec<Hash>), LedgerError> {
        let index = self.index_of(id)?;
        Ok((index, self.tree().inclusion_proof(index, size)?))
    }

    pub(super) fn stored_attestation(&self, index: u64) -> Result<Attestation, LedgerError> {
        let bytes = self
            .shared
            .get(Ks::Entries, &u64_key(index))?
            .ok_or_else(|| missing("entry", index))?;
        verify_attestation(&bytes).map_err(|e| {
            LedgerError::new(
                LedgerErrorCode::Integrity,
                format!("stored entry {index} no longer verifies: {e}"),
            )
        })
    }
}

/// The tree at the published head, for proofs: tree nodes never change
/// once written, so these need no snapshot (on PostgreSQL a snapshot is a
/// transaction of its own).
pub(super) struct TreeView<'a> {
    pub(super) shared: &'a Shared,
    pub(super) head: TreeHead,
}

impl TreeView<'_> {
    fn check_size(&self, size: u64) -> Result<(), LedgerError> {
        let current = self.head.size;
        if size > current {
            return Err(LedgerError::new(
                LedgerErrorCode::SizeOutOfRange,
                format!("tree size {size} is beyond the log's size {current}"),
            ));
        }
        Ok(())
    }

    pub(super) fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, LedgerError> {
        self.check_size(size)?;
        merkle::inclusion_proof(self, index, size)
    }

    pub(super) fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, LedgerError> {
        self.check_size(new)?;
        merkle::consistency_proof(self, old, new)
    }

    pub(super) fn root_at(&self, size: u64) -> Result<Hash, LedgerError> {
        self.check_size(size)?;
        merkle::subtree_root(self, 0, size)
    }
}

impl NodeSource for TreeView<'_> {
    fn node(&self, level: u8, index: u64) -> Result<Hash, LedgerError> {
        stored_node(
            self.shared.get(Ks::Nodes, &node_key(level, index))?,
            level,
            index,
        )
    }
}

/// Reads from one point-in-time snapshot.
pub(super) struct Snap<'a> {
    pub(super) shared: &'a Shared,
    pub(super) snap: Snapshot,
}

impl Snap<'_> {
    pub(super) fn get(&self, k: Ks, key: &[u8]) -> Result<Option<Vec<u8>>, LedgerError> {
        self.snap
            .get(self.shared.ks(k), key)
            .map_err(|e| LedgerError::storage("read", e))
    }
}
