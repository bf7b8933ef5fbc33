//! `pulse-ledger verify inclusion` and `verify consistency`: single proofs,
//! from files or fetched from a server, checked against checkpoints signed
//! by the log key (spec/audit.md, "Proof files").

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{Value, json};

use super::audit::{log_key, read_checkpoint, report_failure};
use super::client::{ServerArg, connect, runtime};
use super::deadline::Deadline;
use super::error::{CliError, EXIT_VERIFY_FAILED};
use super::files;
use super::output::good;
use super::remote::{consistency_proof, hashes, newest_checkpoint};
use crate::api::proto;
use crate::audit::{AuditCode, AuditError, compare_checkpoints};
use crate::ledger::{Checkpoint, Hash, leaf_hash, verify_checkpoint, verify_inclusion};
use crate::{AttestationId, Did};

/// Where an inclusion proof comes from.
pub(crate) struct InclusionArgs {
    pub(crate) log_key: String,
    pub(crate) attestation: Option<PathBuf>,
    pub(crate) index: Option<u64>,
    pub(crate) server: Option<String>,
    pub(crate) timeout: Option<Deadline>,
    pub(crate) proof: Option<PathBuf>,
    pub(crate) save_proof: Option<PathBuf>,
    pub(crate) json: bool,
}

/// Where a consistency proof comes from.
pub(crate) struct ConsistencyArgs {
    pub(crate) log_key: String,
    pub(crate) old: PathBuf,
    pub(crate) new: Option<PathBuf>,
    pub(crate) server: Option<String>,
    pub(crate) timeout: Option<Deadline>,
    pub(crate) proof: Option<PathBuf>,
    pub(crate) save_proof: Option<PathBuf>,
    pub(crate) json: bool,
}

fn hex_hashes(v: &Value, what: &str) -> Result<Vec<Hash>, CliError> {
    v.as_array()
        .ok_or_else(|| CliError::Usage(format!("{what} is not an array of hex hashes")))?
        .iter()
        .map(|h| {
            h.as_str()
                .and_then(|t| hex::decode(t).ok())
                .and_then(|b| Hash::try_from(b.as_slice()).ok())
                .ok_or_else(|| {
                    CliError::Usage(format!("{what} holds a value that is not 64 hex digits"))
                })
        })
        .collect()
}

/// Reads a proof file: JSON with `"v": 1`.
fn read_json(path: &Path) -> Result<Value, CliError> {
    let text = std::fs::read_to_string(path).map_err(files::io(path))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("{}: not a proof file: {e}", path.display())))?;
    match v["v"].as_u64() {
        Some(1) => Ok(v),
        other => Err(CliError::Usage(format!(
            "{}: proof file version {other:?} is not supported (this reads version 1)",
            path.display()
        ))),
    }
}

/// A checkpoint file, verified; a failed verification is a verdict.
macro_rules! checkpoint_or_verdict {
    ($path:expr, $key:expr, $json:expr) => {
        match read_checkpoint($path, $key)? {
            Ok(c) => c,
            Err(e) => {
                report_failure(&e, $json);
                return Ok(ExitCode::from(EXIT_VERIFY_FAILED));
            }
        }
    };
}

fn number(v: &Value, key: &str, path: &Path) -> Result<u64, CliError> {
    v[key].as_u64().ok_or_else(|| {
        CliError::Usage(format!(
            "{}: {key} is not an unsigned integer",
            path.display()
        ))
    })
}

fn verdict(result: Result<Value, AuditError>, as_json: bool, ok_line: &str) -> ExitCode {
    match result {
        Ok(v) => {
            if as_json {
                println!("{v}");
            } else {
                println!("{} {ok_line}", good("ok"));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            report_failure(&e, as_json);
            ExitCode::from(EXIT_VERIFY_FAILED)
        }
    }
}

/// An inclusion proof, whatever its source, before it is checked.
struct Inclusion {
    index: u64,
    leaf: Hash,
    path: Vec<Hash>,
    note: String,
}

pub(crate) fn inclusion(a: InclusionArgs) -> Result<ExitCode, CliError> {
    let key = log_key(&a.log_key)?;
    let envelope = a
        .attestation
        .as_deref()
        .map(files::read_envelope)
        .transpose()?;
    let p = match (&a.proof, &a.server) {
        (Some(path), None) => {
            let v = read_json(path)?;
            let leaf = match &envelope {
                Some(e) => leaf_hash(e),
                None => {
                    return Err(CliError::Usage(
                        "--proof needs --attestation FILE: the entry the proof is about".into(),
                    ));
                }
            };
            Inclusion {
                index: number(&v, "index", path)?,
                leaf,
                path: hex_hashes(&v["path"], "path")?,
                note: v["checkpoint"].as_str().unwrap_or_default().to_owned(),
            }
        }
        (None, server) => {
            let server = ServerArg::new(server.clone().unwrap_or_else(default_server))
                .with_timeout(a.timeout);
            let leaf = match (&envelope, a.index) {
                (Some(e), None) => proto::get_inclusion_proof_request::Leaf::AttestationId(
                    AttestationId::of(e).as_bytes().to_vec(),
                ),
                (None, Some(i)) => proto::get_inclusion_proof_request::Leaf::Index(i),
                _ => {
                    return Err(CliError::Usage(
                        "give exactly one of --attestation FILE and --index N".into(),
                    ));
                }
            };
            let r = runtime()?.block_on(async {
                let mut c = connect(&server).await?;
                let request = proto::GetInclusionProofRequest {
                    leaf: Some(leaf),
                    tree_size: 0,
                };
                c.deadline
                    .call("GetInclusionProof", c.rpc.get_inclusion_proof(request))
                    .await
            })?;
            if let Some(asked) = a.index.filter(|i| *i != r.index) {
                let e = AuditError::at(
                    asked,
                    AuditCode::BadInclusionProof,
                    format!(
                        "asked about index {asked}, the server answered about {}",
                        r.index
                    ),
                );
                report_failure(&e, a.json);
                return Ok(ExitCode::from(EXIT_VERIFY_FAILED));
            }
            Inclusion {
                index: r.index,
                // The entry's own bytes when we have them; else the
                // server's word for the leaf (printed, so it can be checked).
                leaf: match &envelope {
                    Some(e) => leaf_hash(e),
                    None => hashes(std::slice::from_ref(&r.leaf_hash))[0],
                },
                path: hashes(&r.path),
                note: r.checkpoint.unwrap_or_default().note,
            }
        }
        (Some(_), Some(_)) => {
            return Err(CliError::Usage(
                "give --proof FILE or --server URL, not both".into(),
            ));
        }
    };
    let checked = check_inclusion(&p, &key);
    if let (Some(path), Ok(_)) = (&a.save_proof, &checked) {
        let doc = json!({
            "v": 1, "index": p.index,
            "path": p.path.iter().map(hex::encode).collect::<Vec<_>>(),
            "checkpoint": p.note,
        });
        save(path, &doc)?;
    }
    let line = format!(
        "entry {} (leaf {}) is in the log's tree of size {}",
        p.index,
        hex::encode(p.leaf),
        checked
            .as_ref()
            .map_or(0, |v| v["tree_size"].as_u64().unwrap_or(0))
    );
    Ok(verdict(checked, a.json, &line))
}

fn check_inclusion(p: &Inclusion, key: &Did) -> Result<Value, AuditError> {
    let cp = verify_checkpoint(&p.note, key)
        .map_err(|e| AuditError::new(AuditCode::BadCheckpoint, e.to_string()))?;
    if p.index >= cp.size {
        return Err(AuditError::at(
            p.index,
            AuditCode::IndexOutOfRange,
            format!("the checkpoint's tree has {} entries", cp.size),
        ));
    }
    verify_inclusion(&p.leaf, p.index, cp.size, &p.path, &cp.root)
        .map_err(|e| AuditError::at(p.index, AuditCode::BadInclusionProof, e.to_string()))?;
    Ok(json!({
        "ok": true, "index": p.index, "leaf_hash": hex::encode(p.leaf),
        "tree_size": cp.size, "root": hex::encode(cp.root),
    }))
}

fn default_server() -> String {
    std::env::var("PULSE_LEDGER_SERVER").unwrap_or_else(|_| super::client::DEFAULT_SERVER.into())
}

fn save(path: &Path, doc: &Value) -> Result<(), CliError> {
    super::audit::save_atomically(path, &format!("{doc:#}\n"))
}

pub(crate) fn consistency(a: ConsistencyArgs) -> Result<ExitCode, CliError> {
    let key = log_key(&a.log_key)?;
    let old = checkpoint_or_verdict!(&a.old, &key, a.json);
    let (new, proof) = match (&a.proof, &a.server) {
        (Some(path), None) => {
            let new_path = a
                .new
                .as_deref()
                .ok_or_else(|| CliError::Usage("--proof needs --new CHECKPOINT_FILE".into()))?;
            let new = checkpoint_or_verdict!(new_path, &key, a.json);
            if let Err(e) = compare_checkpoints(&old, &new) {
                report_failure(&e, a.json);
                return Ok(ExitCode::from(EXIT_VERIFY_FAILED));
            }
            let v = read_json(path)?;
            let (o, n) = (number(&v, "old_size", path)?, number(&v, "new_size", path)?);
            if (o, n) != (old.size, new.size) {
                return Err(CliError::Usage(format!(
                    "{}: the proof is from size {o} to {n}; the checkpoints have sizes {} and {}",
                    path.display(),
                    old.size,
                    new.size
                )));
            }
            (new, Ok(hex_hashes(&v["proof"], "proof")?))
        }
        (None, server) => {
            let server = ServerArg::new(server.clone().unwrap_or_else(default_server))
                .with_timeout(a.timeout);
            let given = match a.new.as_deref() {
                Some(p) => Some(checkpoint_or_verdict!(p, &key, a.json)),
                None => None,
            };
            runtime()?.block_on(fetch_consistency(&server, &key, &old, given))?
        }
        (Some(_), Some(_)) => {
            return Err(CliError::Usage(
                "give --proof FILE or --server URL, not both".into(),
            ));
        }
    };
    let proof = match proof {
        Ok(p) => p,
        Err(e) => {
            report_failure(&e, a.json);
            return Ok(ExitCode::from(EXIT_VERIFY_FAILED));
        }
    };
    let checked = check_consistency(&old, &new, &proof);
    if let (Some(path), Ok(_)) = (&a.save_proof, &checked) {
        save(
            path,
            &json!({
                "v": 1, "old_size": old.size, "new_size": new.size,
                "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
            }),
        )?;
    }
    let line = format!(
        "the tree of size {} is a prefix of the tree of size {}",
        old.size, new.size
    );
    Ok(verdict(checked, a.json, &line))
}

type Fetched = (Checkpoint, Result<Vec<Hash>, AuditError>);

async fn fetch_consistency(
    server: &ServerArg,
    key: &Did,
    old: &Checkpoint,
    given: Option<Checkpoint>,
) -> Result<Fetched, CliError> {
    let mut client = connect(server).await?;
    let new = match given {
        Some(g) => g,
        None => match newest_checkpoint(&mut client, key).await?.1 {
            Ok(c) => c,
            Err(e) => return Ok((old.clone(), Err(e))),
        },
    };
    if let Err(e) = compare_checkpoints(old, &new) {
        return Ok((new, Err(e)));
    }
    let proof = consistency_proof(&mut client, old, &new).await?;
    Ok((new, Ok(proof)))
}

fn check_consistency(
    old: &Checkpoint,
    new: &Checkpoint,
    proof: &[Hash],
) -> Result<Value, AuditError> {
    super::remote::check_consistency(old, new, proof)?;
    Ok(json!({
        "ok": true, "old_size": old.size, "new_size": new.size,
        "old_root": hex::encode(old.root), "new_root": hex::encode(new.root),
    }))
}
