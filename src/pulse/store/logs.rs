//! Jobs' log lines, as their executors reported them.

use serde::{Deserialize, Serialize};

use super::super::job::cut_text;
use super::{
    Jk, JobError, JobId, JobStore, KeyRange, WriteBatch, corrupt, keyed, record_from_slice,
    record_to_vec, storage,
};

/// Log lines kept per job: the most recent ones; older ones are dropped
/// (their sequence numbers show the gap).
pub const MAX_LOG_LINES: u64 = 1_000;

/// Longest log line kept, bytes; longer lines are cut at a character
/// boundary and marked.
pub const MAX_LOG_LINE_BYTES: usize = 4_096;

/// One line of a job's log, as an executor reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Its number in the job's log, from 1.
    #[serde(skip)]
    pub seq: u64,
    /// The attempt that reported it.
    pub attempt: u32,
    /// When Pulse received it, Unix ms.
    pub at_ms: u64,
    /// The text (at most [`MAX_LOG_LINE_BYTES`]).
    pub line: String,
}

fn log_key(id: &JobId, seq: u64) -> Vec<u8> {
    keyed(&[], id)
        .into_iter()
        .chain(seq.to_be_bytes())
        .collect()
}

fn log_seq(key: &[u8]) -> Result<u64, JobError> {
    key.get(16..24)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("log key"))
}

impl JobStore {
    /// Appends lines to jobs' logs, keeping each job's last
    /// [`MAX_LOG_LINES`]. Not fsynced on its own: a log is for people, and
    /// the next durable batch persists it (losing the last lines in a
    /// crash is allowed; losing acknowledged state is not).
    ///
    /// # Errors
    /// Storage failures.
    pub fn append_logs(&self, lines: Vec<(JobId, LogLine)>) -> Result<(), JobError> {
        if lines.is_empty() {
            return Ok(());
        }
        let _guard = self.writer();
        let mut next: std::collections::HashMap<JobId, u64> = std::collections::HashMap::new();
        let mut batch = WriteBatch::unsynced();
        for (id, mut line) in lines {
            let seq = match next.get(&id) {
                Some(n) => *n,
                None => self.last_log_seq(&id)? + 1,
            };
            next.insert(id, seq + 1);
            line.line = cut_text(line.line, MAX_LOG_LINE_BYTES);
            batch.insert(self.ks(Jk::Log), log_key(&id, seq), record_to_vec(&line));
            if seq > MAX_LOG_LINES {
                batch.remove(self.ks(Jk::Log), log_key(&id, seq - MAX_LOG_LINES));
            }
        }
        self.storage.commit(batch).map_err(storage)
    }

    fn last_log_seq(&self, id: &JobId) -> Result<u64, JobError> {
        match self
            .ks(Jk::Log)
            .last_in(KeyRange::prefix(&id.0))
            .map_err(storage)?
        {
            Some((key, _)) => log_seq(&key),
            None => Ok(0),
        }
    }

    /// A job's log lines with sequence numbers after `after`, oldest first,
    /// at most `limit`.
    ///
    /// # Errors
    /// Storage failures.
    pub fn log(&self, id: &JobId, after: u64, limit: usize) -> Result<Vec<LogLine>, JobError> {
        let mut out = Vec::new();
        let from = log_key(id, after.saturating_add(1));
        let to = log_key(id, u64::MAX);
        for kv in self.ks(Jk::Log).range(from..=to).take(limit) {
            let (k, v) = kv.map_err(storage)?;
            let mut line: LogLine =
                record_from_slice(&v).map_err(|e| corrupt(&format!("log line: {e}")))?;
            line.seq = log_seq(&k)?;
            out.push(line);
        }
        Ok(out)
    }
}
