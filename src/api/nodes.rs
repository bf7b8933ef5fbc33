//! The server nodes sharing one store (`serve --node`): each writes a
//! record of itself into the storage space `nodes` every second (its
//! address, when it started, the log size it has caught up with, its
//! plugin sessions and running attempts), and `ListNodes` reads them back.
//! A node not heard from for [`LIVE_MS`] is listed as gone; its record is
//! dropped a day later. Records are JSON, for an operator reading the
//! table by hand.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::proto;
use crate::ledger::{Ledger, LedgerError};
use crate::storage::{Storage, StorageError, WriteBatch};

/// The storage space of node records (not copied by `store copy`: nodes
/// are a running cluster's, not its data).
pub(crate) const SPACE: &str = "server_nodes";

/// How often a node writes its record.
pub const BEAT: Duration = Duration::from_secs(1);

/// A node whose record is older than this is listed as gone.
pub const LIVE_MS: u64 = 10_000;

/// A gone node's record is dropped after this long.
const FORGET_MS: u64 = 24 * 3600 * 1000;

/// What a node says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeRecord {
    pub(crate) name: String,
    /// The gRPC address it listens on, as it bound it.
    pub(crate) listen: String,
    pub(crate) started_ms: u64,
    /// When it last wrote this record.
    pub(crate) seen_ms: u64,
    /// The log size its readers serve.
    pub(crate) log_size: u64,
    pub(crate) sessions: u32,
    pub(crate) running: u32,
    pub(crate) version: String,
}

/// Writes `record` (unsynced: a lost heartbeat is written again a second
/// later), and drops records of nodes gone for a day.
///
/// # Errors
/// When the store cannot be written.
pub(crate) fn beat(storage: &Storage, record: &NodeRecord) -> Result<(), StorageError> {
    let space = storage.space(SPACE)?;
    let mut batch = WriteBatch::unsynced();
    for node in all(storage)? {
        if record.seen_ms.saturating_sub(node.seen_ms) > FORGET_MS {
            batch.remove(&space, node.name.as_bytes());
        }
    }
    let value =
        serde_json::to_vec(record).map_err(|e| StorageError::new(format!("a node record: {e}")))?;
    batch.insert(&space, record.name.as_bytes(), value);
    storage.commit(batch)
}

/// Removes a node's record (it stopped cleanly).
///
/// # Errors
/// When the store cannot be written.
pub(crate) fn leave(storage: &Storage, name: &str) -> Result<(), StorageError> {
    let space = storage.space(SPACE)?;
    let mut batch = storage.batch();
    batch.remove(&space, name.as_bytes());
    storage.commit(batch)
}

/// Every node record, by name. A record that does not read is skipped
/// (and replaced by its node's next heartbeat).
///
/// # Errors
/// When the store cannot be read.
pub(crate) fn all(storage: &Storage) -> Result<Vec<NodeRecord>, StorageError> {
    let space = storage.space(SPACE)?;
    let mut out = Vec::new();
    for kv in space.iter() {
        let (_, value) = kv?;
        if let Ok(r) = serde_json::from_slice::<NodeRecord>(&value) {
            out.push(r);
        }
    }
    Ok(out)
}

/// A server's plugin sessions and the attempts running on them.
pub(crate) fn load(sessions: &crate::plugin::Sessions) -> (u32, u32) {
    let all = sessions.all();
    let running = all.iter().map(|s| s.running()).sum();
    (u32::try_from(all.len()).unwrap_or(u32::MAX), running)
}

/// `ListNodes`: the nodes' records (a server alone: `this`, an unnamed
/// record), and the log size the store holds.
///
/// # Errors
/// When the store cannot be read.
pub(crate) fn list(
    ledger: &Ledger,
    this: NodeRecord,
) -> Result<proto::ListNodesResponse, LedgerError> {
    let nodes = if this.name.is_empty() {
        vec![this.clone()]
    } else {
        all(ledger.storage()).map_err(|e| LedgerError::storage("node records", e))?
    };
    let now = crate::clock::unix_ms();
    Ok(proto::ListNodesResponse {
        nodes: nodes
            .into_iter()
            .map(|n| proto::ServerNode {
                live: now.saturating_sub(n.seen_ms) < LIVE_MS,
                name: n.name,
                listen: n.listen,
                started_ms: n.started_ms,
                last_seen_ms: n.seen_ms,
                log_size: n.log_size,
                sessions: n.sessions,
                running: n.running,
                version: n.version,
            })
            .collect(),
        store_log_size: ledger.stored_size()?,
        answered_by: this.name,
    })
}

/// Writes this node's record every [`BEAT`] until the process ends.
pub(crate) async fn heartbeats(
    ledger: std::sync::Arc<Ledger>,
    sessions: std::sync::Arc<crate::plugin::Sessions>,
    mut record: NodeRecord,
) {
    loop {
        record.seen_ms = crate::clock::unix_ms();
        record.log_size = ledger.size();
        (record.sessions, record.running) = load(&sessions);
        let (l, r) = (std::sync::Arc::clone(&ledger), record.clone());
        match tokio::task::spawn_blocking(move || beat(l.storage(), &r)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "this node's record not written"),
            Err(_) => return,
        }
        tokio::time::sleep(BEAT).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, seen_ms: u64) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            listen: "127.0.0.1:7300".into(),
            started_ms: 1,
            seen_ms,
            log_size: 5,
            sessions: 1,
            running: 2,
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn records_are_written_listed_replaced_forgotten_and_removed() {
        let dir = std::env::temp_dir().join(format!("pulse-nodes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let storage = Storage::new(
            crate::storage::FjallBackend::open(&dir, crate::storage::FjallOptions::default())
                .unwrap(),
        );
        beat(&storage, &record("b", 10)).unwrap();
        beat(&storage, &record("a", 20)).unwrap();
        beat(&storage, &record("a", 30)).unwrap();
        assert_eq!(
            all(&storage).unwrap(),
            vec![record("a", 30), record("b", 10)]
        );
        // A day after b was last seen, a's heartbeat drops b's record.
        beat(&storage, &record("a", 10 + FORGET_MS + 1)).unwrap();
        assert_eq!(
            all(&storage).unwrap(),
            vec![record("a", 10 + FORGET_MS + 1)]
        );
        leave(&storage, "a").unwrap();
        assert!(all(&storage).unwrap().is_empty());
        drop(storage);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
