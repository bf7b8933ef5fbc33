//! The ledger's single writer: appends queued by callers are checked
//! against the stored chains (staged in memory, in order), then committed
//! as one group under one fsync with a signed checkpoint, and the new head
//! published for readers.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, TryRecvError};

use super::checkpoint::Checkpoint;
use super::error::{LedgerError, LedgerErrorCode};
use super::layout::{
    Ks, META_CHECKPOINT, META_SIZE, SubjectRecord, chain_key, equivocation_key, name_key, node_key,
    plugin_key, read_u64, u64_key,
};
use super::merkle::{self, Frontier};
use super::store::{CHANGE_LOG_ENTRIES, Receipt, Shared, TreeHead, missing, unavailable};
use crate::{
    Action, Attestation, AttestationId, ChainHead, Equivocation, ErrorCode, Schema, repeated_seq,
    verify_attestation,
};

/// The notice topic of the log's growth; the text is the new size.
pub(super) const LOG_TOPIC: &str = "log";

/// One append waiting for the writer, and where its answer goes.
pub(super) struct Job {
    pub(super) att: Attestation,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<Receipt, LedgerError>>,
}

pub(super) use crate::storage::wait as block_on;

/// A queued append: wait for its commit.
pub struct PendingAppend {
    pub(super) answer: tokio::sync::oneshot::Receiver<Result<Receipt, LedgerError>>,
}

impl PendingAppend {
    /// Blocks this thread until the append is committed (or refused). In
    /// an async task, [`PendingAppend::committed`] does not hold a thread.
    ///
    /// # Errors
    /// As for [`Ledger::append`].
    pub fn wait(self) -> Result<Receipt, LedgerError> {
        block_on(self.answer).map_err(|_| unavailable())?
    }

    /// Waits, without holding a thread, until the append is committed (or
    /// refused): a server awaits thousands of these at once.
    ///
    /// # Errors
    /// As for [`Ledger::append`].
    pub async fn committed(self) -> Result<Receipt, LedgerError> {
        self.answer.await.map_err(|_| unavailable())?
    }
}

/// One group commit being assembled: every write goes through `ops`
/// (last write wins per key), and reads see staged writes first.
struct Stage<'a> {
    shared: &'a Shared,
    frontier: Frontier,
    ops: HashMap<(Ks, Vec<u8>), Option<Vec<u8>>>,
    /// Values read for the whole group at once before staging (the state
    /// before the group; `ops` comes first).
    read: HashMap<(Ks, Vec<u8>), Option<Vec<u8>>>,
    dirty: bool,
    /// Set when the commit was refused because another node sharing the
    /// store appended first (nothing of it was written).
    lost_race: bool,
}

enum Staged {
    Appended(u64, AttestationId),
    Duplicate(u64, AttestationId),
}

impl Stage<'_> {
    fn get(&self, k: Ks, key: &[u8]) -> Result<Option<Vec<u8>>, LedgerError> {
        let at = (k, key.to_vec());
        match self.ops.get(&at).or_else(|| self.read.get(&at)) {
            Some(v) => Ok(v.clone()),
            None => self.shared.get(k, key),
        }
    }

    /// Reads what staging the group will read first — each statement's ID
    /// and subject — in one call (one round trip on PostgreSQL, instead
    /// of two per statement).
    fn read_ahead(&mut self, atts: &[&Attestation]) -> Result<(), LedgerError> {
        let mut wanted: Vec<(Ks, Vec<u8>)> = Vec::with_capacity(2 * atts.len());
        for att in atts {
            wanted.push((Ks::ById, att.id().as_bytes().to_vec()));
            wanted.push((Ks::Subjects, att.statement().subject.public_key().to_vec()));
        }
        let keys: Vec<(&crate::storage::Space, &[u8])> = wanted
            .iter()
            .map(|(k, key)| (self.shared.ks(*k), key.as_slice()))
            .collect();
        let values = self
            .shared
            .storage
            .get_many(&keys)
            .map_err(|e| LedgerError::storage("read", e))?;
        self.read.extend(wanted.into_iter().zip(values));
        Ok(())
    }

    fn put(&mut self, k: Ks, key: &[u8], value: Vec<u8>) {
        self.ops.insert((k, key.to_vec()), Some(value));
    }

    fn delete(&mut self, k: Ks, key: &[u8]) {
        self.ops.insert((k, key.to_vec()), None);
    }

    fn stage(&mut self, att: &Attestation) -> Result<Staged, LedgerError> {
        let id = att.id();
        if let Some(v) = self.get(Ks::ById, id.as_bytes())? {
            return Ok(Staged::Duplicate(read_u64(&v)?, id));
        }
        let st = att.statement();
        let subject = *st.subject.public_key();
        let index = self.frontier.size();
        let old = match self.get(Ks::Subjects, &subject)? {
            Some(v) => Some(SubjectRecord::decode(&v)?),
            None => None,
        };
        let head = match &old {
            None => ChainHead::genesis(att).map_err(|e| {
                if e.code() == ErrorCode::NotGenesis {
                    LedgerError::Rejected(crate::attest::Error::new(
                        ErrorCode::NotGenesis,
                        format!("no statement about {} is in the log; its {}.register statement comes first", st.subject, st.family.as_str()),
                    ))
                } else {
                    LedgerError::Rejected(e)
                }
            })?,
            Some(rec) => {
                let mut head = rec.head.clone();
                if st.family != head.family {
                    return Err(LedgerError::Rejected(crate::attest::Error::new(
                        ErrorCode::FamilyMismatch,
                        format!("a {} statement about {}, which is a {}", st.kind(), st.subject, head.family.as_str()),
                    )));
                }
                if st.seq <= head.seq {
                    return Err(self.repeated(att, &subject)?);
                }
                head.apply(att)?;
                head
            }
        };
        // The entry, its tree nodes and its two position indexes.
        let envelope = att.envelope();
        self.put(Ks::Entries, &u64_key(index), envelope.to_vec());
        for (level, i, hash) in self.frontier.push(merkle::leaf_hash(envelope)) {
            self.put(Ks::Nodes, &node_key(level, i), hash.to_vec());
        }
        self.put(Ks::ById, id.as_bytes(), u64_key(index).to_vec());
        self.put(
            Ks::Chains,
            &chain_key(&subject, st.seq),
            u64_key(index).to_vec(),
        );
        // The subject's record and the schema-derived indexes.
        let (name, plugin, schema_index) = match (&st.action, &old) {
            (Action::Register(s) | Action::Update(s), _) => {
                let (name, plugin) = match s {
                    Schema::Handler(h) => (h.name.clone(), Some(h.plugin.clone())),
                    Schema::Plugin(p) => (p.name.clone(), None),
                };
                (name, plugin, index)
            }
            (_, Some(rec)) => (rec.name.clone(), rec.plugin.clone(), rec.schema_index),
            (_, None) => unreachable!("only a register starts a record"),
        };
        if let Some(rec) = &old {
            if rec.name != name {
                self.delete(Ks::ByName, &name_key(rec.head.family, &rec.name, &subject));
            }
            if let Some(p) = rec.plugin.as_ref().filter(|p| Some(*p) != plugin.as_ref()) {
                self.delete(Ks::ByPlugin, &plugin_key(p.public_key(), &subject));
            }
        }
        self.put(
            Ks::ByName,
            &name_key(head.family, &name, &subject),
            Vec::new(),
        );
        if let Some(p) = &plugin {
            self.put(
                Ks::ByPlugin,
                &plugin_key(p.public_key(), &subject),
                Vec::new(),
            );
        }
        let rec = SubjectRecord {
            head,
            genesis_index: old.as_ref().map_or(index, |r| r.genesis_index),
            head_index: index,
            schema_index,
            name,
            plugin,
        };
        self.put(Ks::Subjects, &subject, rec.encode());
        self.dirty = true;
        Ok(Staged::Appended(index, id))
    }

    /// A statement for a seq the subject already has: a stranger's
    /// (wrong_signer), or the same key's second history (equivocation,
    /// stored as evidence).
    fn repeated(
        &mut self,
        att: &Attestation,
        subject: &[u8; 32],
    ) -> Result<LedgerError, LedgerError> {
        let st = att.statement();
        let at = self
            .get(Ks::Chains, &chain_key(subject, st.seq))?
            .ok_or_else(|| {
                LedgerError::new(
                    LedgerErrorCode::Integrity,
                    format!("{} has no seq {} below its head", st.subject, st.seq),
                )
            })?;
        let logged_index = read_u64(&at)?;
        let bytes = self
            .get(Ks::Entries, &u64_key(logged_index))?
            .ok_or_else(|| missing("entry", logged_index))?;
        let existing = verify_attestation(&bytes).map_err(|e| {
            LedgerError::new(
                LedgerErrorCode::Integrity,
                format!("stored entry {logged_index}: {e}"),
            )
        })?;
        let error = repeated_seq(&existing, att);
        if error.code() != ErrorCode::Equivocation {
            return Ok(LedgerError::Rejected(error));
        }
        // One record per (subject, seq): the first conflicting statement
        // already proves the key signed two histories, and a bound keeps a
        // leaked key from filling the disk with evidence.
        let key = equivocation_key(subject, st.seq);
        if self.get(Ks::Equivocations, &key)?.is_none() {
            let mut value = u64_key(logged_index).to_vec();
            value.extend_from_slice(att.envelope());
            self.put(Ks::Equivocations, &key, value);
            self.dirty = true;
        }
        Ok(LedgerError::Equivocation {
            message: error.message().to_owned(),
            evidence: Box::new(Equivocation {
                first: existing,
                second: att.clone(),
            }),
            logged_index,
        })
    }
}

/// Groups lost to other nodes' commits in a row before the appends are
/// answered `unavailable` (each loss means another node appended).
const MAX_LOST_RACES: usize = 64;

/// Runs the writer: each message is a group of appends, or empty to ask
/// for the store's head to be read again (another node sharing the store
/// appended).
pub(super) fn writer_loop(
    shared: &Shared,
    rx: &Receiver<Vec<Job>>,
    mut frontier: Frontier,
    max_batch: usize,
) {
    // Set after a failed commit on a store that goes on after one: the
    // next group first reads the head and the tree's edge again.
    let mut resync = false;
    while let Ok(first) = rx.recv() {
        let mut jobs = first;
        let mut catch_up = jobs.is_empty();
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(more) => {
                    catch_up |= more.is_empty();
                    jobs.extend(more);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        if catch_up || resync {
            match reread_head(shared) {
                Ok(f) => {
                    frontier = f;
                    resync = false;
                }
                Err(e) => {
                    resync = true;
                    for j in jobs {
                        let _ = j.reply.send(Err(e.clone()));
                    }
                    continue;
                }
            }
        }
        if jobs.is_empty() {
            continue;
        }
        if let Some(why) = shared
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            for j in jobs {
                let _ = j.reply.send(Err(LedgerError::new(
                    LedgerErrorCode::Unavailable,
                    format!("the ledger stopped accepting writes after a storage failure: {why}"),
                )));
            }
            continue;
        }
        // A nearly full disk refuses the whole group before anything is
        // written, and the next group tries again.
        if let Err(e) = shared.space.check() {
            for j in jobs {
                let _ = j.reply.send(Err(e.clone()));
            }
            continue;
        }
        write_group(shared, jobs, &mut frontier, &mut resync);
    }
}

/// Stages and commits one group, staging it again on the new head when
/// another node sharing the store appended first, and answers each append.
fn write_group(shared: &Shared, jobs: Vec<Job>, frontier: &mut Frontier, resync: &mut bool) {
    let mut races = 0;
    loop {
        let mut stage = Stage {
            shared,
            frontier: frontier.clone(),
            ops: HashMap::new(),
            read: HashMap::new(),
            dirty: false,
            lost_race: false,
        };
        let atts: Vec<&Attestation> = jobs.iter().map(|j| &j.att).collect();
        if let Err(e) = stage.read_ahead(&atts) {
            for j in jobs {
                let _ = j.reply.send(Err(LedgerError::new(
                    LedgerErrorCode::Unavailable,
                    format!("the store cannot be read; nothing was written: {e}"),
                )));
            }
            return;
        }
        let results: Vec<Result<Staged, LedgerError>> =
            jobs.iter().map(|j| stage.stage(&j.att)).collect();
        // Commit without holding any lock readers take: readers use a
        // snapshot of the state before this group until the new head is
        // published, and never wait for the fsync.
        let committed = if stage.dirty {
            let result = shared
                .begin_commit()
                .and_then(|()| commit(shared, frontier.size(), &mut stage));
            shared.publish(result.as_ref().ok().cloned().flatten());
            if let Ok(Some(_)) = &result {
                // After the head, before the size: whoever sees the new
                // size can learn which subjects it changed, and reads them
                // at this head or a newer one.
                let mut log = shared.changes.lock().unwrap_or_else(|p| p.into_inner());
                for (job, r) in jobs.iter().zip(&results) {
                    if let Ok(Staged::Appended(..)) = r {
                        log.subjects
                            .push_back(*job.att.statement().subject.public_key());
                    }
                }
                while log.subjects.len() > CHANGE_LOG_ENTRIES {
                    log.subjects.pop_front();
                    log.start += 1;
                }
            }
            result
        } else {
            Ok(None)
        };
        match committed {
            Ok(new_head) => {
                if let Some(h) = new_head {
                    *frontier = stage.frontier;
                    shared.size_tx.send_replace(h.size);
                }
                let head = shared.head();
                for (job, result) in jobs.into_iter().zip(results) {
                    let reply = result.map(|s| match s {
                        Staged::Appended(index, id) => Receipt {
                            index,
                            id,
                            duplicate: false,
                            head: head.clone(),
                        },
                        Staged::Duplicate(index, id) => Receipt {
                            index,
                            id,
                            duplicate: true,
                            head: head.clone(),
                        },
                    });
                    let _ = job.reply.send(reply);
                }
                return;
            }
            Err(_) if stage.lost_race => {
                // Another node appended since this one last read the
                // head: nothing of the group was written. Read the new
                // head and judge the group again on it (an append may now
                // be a duplicate, or come after the other node's).
                races += 1;
                shared
                    .lost_races
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let reread = reread_head(shared);
                if reread.is_err() {
                    shared.drop_commit_snapshot();
                    *resync = true;
                }
                let error = match reread {
                    Ok(f) => {
                        *frontier = f;
                        if races < MAX_LOST_RACES {
                            continue;
                        }
                        LedgerError::new(
                            LedgerErrorCode::Unavailable,
                            format!(
                                "other nodes appended first {races} times in a row; nothing was written: submit again"
                            ),
                        )
                    }
                    Err(e) => e,
                };
                answer_all(jobs, results, &error);
                return;
            }
            Err(e) if shared.storage.survives_failed_commit() => {
                // Whether the group was written is unknown: nothing of it
                // is acknowledged, and the log goes on from what the store
                // holds (a resubmission of a written entry answers as a
                // duplicate).
                match reread_head(shared) {
                    Ok(f) => *frontier = f,
                    Err(_) => {
                        // Readers take fresh snapshots, which work again
                        // as soon as the store is back.
                        shared.drop_commit_snapshot();
                        *resync = true;
                    }
                }
                let e = LedgerError::new(
                    LedgerErrorCode::Unavailable,
                    format!(
                        "the store did not confirm the commit, so nothing in it is acknowledged; submit again: {e}"
                    ),
                );
                answer_all(jobs, results, &e);
                return;
            }
            Err(e) => {
                *shared.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                answer_all(jobs, results, &e);
                return;
            }
        }
    }
}

/// Answers every append of a group that was not written with `e`;
/// rejections stay rejections (nothing staged was acknowledged).
fn answer_all(jobs: Vec<Job>, results: Vec<Result<Staged, LedgerError>>, e: &LedgerError) {
    for (job, result) in jobs.into_iter().zip(results) {
        let reply = match result {
            Err(LedgerError::Rejected(r)) => Err(LedgerError::Rejected(r)),
            _ => Err(e.clone()),
        };
        let _ = job.reply.send(reply);
    }
}

/// Reads the stored head again after a failed commit (on a store that
/// goes on after one): the size, the tree's right edge and the signed
/// checkpoint, which must agree as at open; then publishes it. A store
/// that cannot be read yet answers `unavailable`; one that disagrees with
/// its checkpoint stops the ledger (`integrity`).
fn reread_head(shared: &Shared) -> Result<Frontier, LedgerError> {
    let unavailable = |e: LedgerError| {
        LedgerError::new(
            LedgerErrorCode::Unavailable,
            format!("the store cannot be read yet; submit again shortly: {e}"),
        )
    };
    // Both in one read: another node sharing the store may commit
    // between two reads, and a size from before it with a checkpoint from
    // after would look like a store that contradicts itself.
    let meta = shared.ks(Ks::Meta);
    let [size, note]: [Option<Vec<u8>>; 2] = shared
        .storage
        .get_many(&[(meta, META_SIZE), (meta, META_CHECKPOINT)])
        .map_err(|e| unavailable(LedgerError::storage("read", e)))?
        .try_into()
        .map_err(|_| {
            LedgerError::new(
                LedgerErrorCode::Integrity,
                "a read of two keys gave another count",
            )
        })?;
    let size = match size {
        Some(v) => read_u64(&v)?,
        None => 0,
    };
    let note = note.and_then(|n| String::from_utf8(n).ok());
    let frontier = Frontier::load(shared, size).map_err(unavailable)?;
    let agrees = note.as_deref().and_then(|text| {
        crate::ledger::verify_checkpoint(text, &shared.log_did)
            .ok()
            .filter(|cp| cp.size == size && cp.root == frontier.root())
    });
    let (Some(_), Some(text)) = (agrees, note) else {
        let why = format!("the store holds size {size} with no signed checkpoint that matches it");
        *shared.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        return Err(LedgerError::new(LedgerErrorCode::Integrity, why));
    };
    shared.publish(Some(TreeHead {
        size,
        root: frontier.root(),
        checkpoint: text,
    }));
    {
        let mut log = shared.changes.lock().unwrap_or_else(|p| p.into_inner());
        let end = log.start + log.subjects.len() as u64;
        match subjects_of(shared, end, size) {
            Some(subjects) => log.subjects.extend(subjects),
            None => {
                // Which subjects changed is not known here: callers of
                // changed_since start over.
                log.start = size;
                log.subjects.clear();
            }
        }
        while log.subjects.len() > CHANGE_LOG_ENTRIES {
            log.subjects.pop_front();
            log.start += 1;
        }
    }
    shared.size_tx.send_replace(size);
    Ok(frontier)
}

/// The subjects of entries `from..to`, written by another node or by a
/// commit whose answer was lost; `None` when there are more than the change
/// log keeps, the log shrank (never), or they cannot be read.
fn subjects_of(shared: &Shared, from: u64, to: u64) -> Option<Vec<[u8; 32]>> {
    if to < from || to - from > CHANGE_LOG_ENTRIES as u64 {
        return None;
    }
    let mut subjects = Vec::with_capacity((to - from) as usize);
    for entry in shared.ks(Ks::Entries).range(u64_key(from)..u64_key(to)) {
        let (_, envelope) = entry.ok()?;
        // Stored entries were verified when appended: the subject is all
        // that is wanted, so the signatures are not checked again.
        let (att, _) = crate::attest::check_except_signatures(&envelope).ok()?;
        subjects.push(*att.statement().subject.public_key());
    }
    (subjects.len() as u64 == to - from).then_some(subjects)
}

/// Writes the staged operations, the new size and a checkpoint for it in
/// one batch under one fsync, if the stored size is still `from` (the
/// fencing between nodes sharing a store: spec/ledger.md, "Several
/// nodes"), and tells the other nodes the new size.
fn commit(
    shared: &Shared,
    from: u64,
    stage: &mut Stage<'_>,
) -> Result<Option<TreeHead>, LedgerError> {
    let size = stage.frontier.size();
    let root = stage.frontier.root();
    let cp = Checkpoint {
        origin: shared.origin.clone(),
        size,
        root,
    };
    let note = cp.sign(&shared.log_key);
    let mut batch = shared.storage.batch();
    for ((k, key), value) in stage.ops.drain() {
        match value {
            Some(v) => batch.insert(shared.ks(k), key, v),
            None => batch.remove(shared.ks(k), key),
        }
    }
    // Nodes sharing the store compete for each commit, fenced by the
    // stored size; a single server's one writer has nobody to race.
    if shared.storage.is_shared() {
        batch.expect(shared.ks(Ks::Meta), META_SIZE, Some(&u64_key(from)));
    }
    batch.insert(shared.ks(Ks::Meta), META_SIZE, u64_key(size));
    batch.insert(shared.ks(Ks::Meta), META_CHECKPOINT, note.as_bytes());
    batch.announce(LOG_TOPIC, size.to_string());
    let span = crate::timeline::span("log_commit");
    let ops = batch.len() as u64;
    let committed = shared.storage.commit(batch);
    crate::timeline::end(span, &[("ops", ops), ("size", size)]);
    committed.map_err(|e| {
        stage.lost_race = e.is_conflict();
        LedgerError::new(
            LedgerErrorCode::Storage,
            format!("commit failed; nothing in it was acknowledged: {e}"),
        )
    })?;
    Ok(Some(TreeHead {
        size,
        root,
        checkpoint: note,
    }))
}
