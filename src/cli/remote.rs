//! Reading a log's signed heads from a server, the one way the
//! verification commands do it: the newest checkpoint, verified with the
//! log key, and whether it extends an earlier one (spec/audit.md,
//! "Comparing checkpoints").

use super::client::Registry;
use super::error::CliError;
use crate::Did;
use crate::api::proto;
use crate::audit::{AuditCode, AuditError, compare_checkpoints};
use crate::ledger::{Checkpoint, Hash, verify_checkpoint, verify_consistency};

/// Hashes as the server sent them. A hash of the wrong length becomes
/// zeros, so the proof it is part of fails to verify (and says so).
pub(crate) fn hashes(raw: &[Vec<u8>]) -> Vec<Hash> {
    raw.iter()
        .map(|h| Hash::try_from(h.as_slice()).unwrap_or([0; 32]))
        .collect()
}

/// The server's newest checkpoint note, and its verification with `key`
/// (a verdict: `bad_checkpoint`).
pub(crate) async fn newest_checkpoint(
    client: &mut Registry,
    key: &Did,
) -> Result<(String, Result<Checkpoint, AuditError>), CliError> {
    let note = client
        .deadline
        .call(
            "GetCheckpoint",
            client.rpc.get_checkpoint(proto::GetCheckpointRequest {}),
        )
        .await?
        .checkpoint
        .unwrap_or_default()
        .note;
    let verified = verify_checkpoint(&note, key)
        .map_err(|e| AuditError::new(AuditCode::BadCheckpoint, e.to_string()));
    Ok((note, verified))
}

/// The consistency proof from `old` to `new` as the server gives it
/// (empty when `old` is empty or the sizes are equal).
pub(crate) async fn consistency_proof(
    client: &mut Registry,
    old: &Checkpoint,
    new: &Checkpoint,
) -> Result<Vec<Hash>, CliError> {
    if old.size == 0 || old.size >= new.size {
        return Ok(Vec::new());
    }
    let request = proto::GetConsistencyProofRequest {
        old_size: old.size,
        new_size: new.size,
    };
    let proof = client
        .deadline
        .call(
            "GetConsistencyProof",
            client.rpc.get_consistency_proof(request),
        )
        .await?
        .proof;
    Ok(hashes(&proof))
}

/// Whether `new` extends `old`: same log, not smaller, and (when it is
/// larger) a consistency proof from the server that verifies.
pub(crate) async fn extends(
    client: &mut Registry,
    old: &Checkpoint,
    new: &Checkpoint,
) -> Result<Result<(), AuditError>, CliError> {
    if let Err(e) = compare_checkpoints(old, new) {
        return Ok(Err(e));
    }
    let proof = consistency_proof(client, old, new).await?;
    Ok(check_consistency(old, new, &proof))
}

/// Verifies a consistency proof between two verified checkpoints.
pub(crate) fn check_consistency(
    old: &Checkpoint,
    new: &Checkpoint,
    proof: &[Hash],
) -> Result<(), AuditError> {
    compare_checkpoints(old, new)?;
    verify_consistency(old.size, new.size, &old.root, &new.root, proof).map_err(|e| {
        AuditError::new(
            AuditCode::BadConsistencyProof,
            format!("from size {} to {}: {e}", old.size, new.size),
        )
    })
}
