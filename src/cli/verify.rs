//! `pulse-ledger verify …`: attestations and chains offline; whole logs
//! (see `audit.rs`).

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use super::client::ServerArg;
use super::error::{CliError, EXIT_USAGE, EXIT_VERIFY_FAILED};
use super::files;
use super::inspect::describe_schema;
use super::output::escape;
use crate::{ChainState, verify_attestation, verify_chain};

/// What to verify.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Target {
    /// Verify each file on its own: encoding, fields, signatures.
    #[command(after_help = "\
Examples:
  pulse-ledger verify attestation h0.att h1.att
  pulse-ledger verify attestation --json *.att

Prints one verdict line per file: `ok FILE ID KIND SUBJECT seq N`, or
`FAIL FILE CODE: message`. Exit status 1 if any file fails verification,
2 if a file cannot be read.")]
    Attestation {
        /// Attestation files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Print {"ok": bool, "results": [...]} instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Verify the files as one chain, in the order given (genesis first),
    /// and print the subject's final state.
    #[command(after_help = "\
Examples:
  pulse-ledger verify chain h0.att h1.att h2.att h3.att h4.att
  pulse-ledger verify chain --json h*.att

On failure prints the index and file of the statement that broke a rule and
the rule's code (spec/attestation.md lists every code); exit status 1.")]
    Chain {
        /// Attestation files, genesis first.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Print the state or the failure as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify an offline bundle (from `bundle export`) with no network:
    /// every signature, every chain rule, every inclusion proof and the
    /// checkpoint's signature; print the subject's final state.
    #[command(after_help = "\
Examples:
  pulse-ledger verify bundle h.bundle --log-key did:key:z6Mk...
  pulse-ledger verify bundle h.bundle --log-key log.did --json

Prints `bundle ok: …` and the state, or `FAILED entry N: CODE: message`
(spec/audit.md lists the codes); exit status 1 on failure. A bundle proves
its statements are in the log at its checkpoint; it cannot prove that no
later statement (say a revoke) exists: check freshness with a newer
checkpoint or `monitor`.")]
    Bundle {
        /// The bundle file.
        file: PathBuf,
        /// The log's key: a did:key, or a file holding one.
        #[arg(long, value_name = "DID|FILE")]
        log_key: String,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check that an entry is in the log: an inclusion proof against a
    /// checkpoint signed by the log key, from a server or a proof file.
    #[command(after_help = "\
Examples:
  pulse-ledger verify inclusion --attestation h0.att --log-key did:key:z6Mk... \\
      --server http://127.0.0.1:7300 --save-proof h0.proof
  pulse-ledger verify inclusion --attestation h0.att --proof h0.proof --log-key log.did
  pulse-ledger verify inclusion --index 42 --log-key did:key:z6Mk... --json

A proof file is JSON: {\"v\": 1, \"index\", \"path\": [hex], \"checkpoint\": note}
(spec/audit.md). Exit status 1 if the proof does not verify.")]
    Inclusion {
        /// The attestation file the proof is about.
        #[arg(long, value_name = "FILE")]
        attestation: Option<PathBuf>,
        /// Ask the server about this log index instead (the leaf hash is
        /// then the server's, and is printed).
        #[arg(long, value_name = "N", conflicts_with = "proof")]
        index: Option<u64>,
        /// Fetch the proof from this server [default: $PULSE_LEDGER_SERVER
        /// or http://127.0.0.1:7300].
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        /// Longest wait for one call to the server (500ms, 30s, 2m)
        /// [default: $PULSE_LEDGER_TIMEOUT or 30s]; exit status 3 when it
        /// passes.
        #[arg(long, value_name = "DURATION", value_parser = super::deadline::parse)]
        timeout: Option<super::deadline::Deadline>,
        /// Read the proof from this file instead of a server.
        #[arg(long, value_name = "FILE", conflicts_with = "server")]
        proof: Option<PathBuf>,
        /// Also write the proof to this file, for offline checks.
        #[arg(long, value_name = "FILE")]
        save_proof: Option<PathBuf>,
        /// The log's key: a did:key, or a file holding one.
        #[arg(long, value_name = "DID|FILE")]
        log_key: String,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check that a log only grew between two checkpoints: a consistency
    /// proof between them, from a server or a proof file.
    #[command(after_help = "\
Examples:
  pulse-ledger verify consistency --old seen.cp --log-key did:key:z6Mk... \\
      --server http://127.0.0.1:7300
  pulse-ledger verify consistency --old seen.cp --new now.cp --proof c.proof --log-key log.did

Checkpoint files hold a signed note as the server sent it (`log checkpoint`
prints one). A proof file is JSON: {\"v\": 1, \"old_size\", \"new_size\",
\"proof\": [hex]}. Reports fork (same size, other root), log_shrank or
bad_consistency_proof; exit status 1 then.")]
    Consistency {
        /// The earlier checkpoint (a signed note file).
        #[arg(long, value_name = "FILE")]
        old: PathBuf,
        /// The later checkpoint; default: the server's newest.
        #[arg(long, value_name = "FILE")]
        new: Option<PathBuf>,
        /// Fetch the proof (and the newest checkpoint) from this server.
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        /// Longest wait for one call to the server (500ms, 30s, 2m)
        /// [default: $PULSE_LEDGER_TIMEOUT or 30s]; exit status 3 when it
        /// passes.
        #[arg(long, value_name = "DURATION", value_parser = super::deadline::parse)]
        timeout: Option<super::deadline::Deadline>,
        /// Read the proof from this file instead of a server.
        #[arg(long, value_name = "FILE", conflicts_with = "server")]
        proof: Option<PathBuf>,
        /// Also write the proof to this file.
        #[arg(long, value_name = "FILE")]
        save_proof: Option<PathBuf>,
        /// The log's key: a did:key, or a file holding one.
        #[arg(long, value_name = "DID|FILE")]
        log_key: String,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Audit a whole log: download every entry (or read a stopped server's
    /// data dir), re-verify every attestation and chain rule on every core,
    /// recompute the Merkle root and check it against the signed
    /// checkpoint, and check it is consistent with a checkpoint saved
    /// earlier.
    #[command(after_help = "\
Examples:
  pulse-ledger verify log --server http://127.0.0.1:7300 --log-key did:key:z6Mk... \\
      --save-checkpoint seen.cp
  pulse-ledger verify log --server http://127.0.0.1:7300 --log-key log.did \\
      --since-checkpoint seen.cp --save-checkpoint seen.cp
  pulse-ledger verify log --data-dir ./pulse-ledger-data --log-key did:key:z6Mk... --json
  pulse-ledger verify log --store postgres://pulse@db/pulse --log-key did:key:z6Mk... \\
      --key-file /etc/pulse/log.key

On a terminal a progress line (entries, rate, ETA) is shown on stderr.
Prints `log ok: …` or `FAILED entry N: CODE: message` (spec/audit.md lists
the codes). Exit status 0 ok, 1 verification failed, 2 usage or I/O error,
3 cannot reach the server.")]
    Log {
        /// Server URL [default: $PULSE_LEDGER_SERVER or http://127.0.0.1:7300].
        #[arg(long, value_name = "URL", conflicts_with_all = ["data_dir", "store"])]
        server: Option<String>,
        /// Longest wait for one call to the server (500ms, 30s, 2m)
        /// [default: $PULSE_LEDGER_TIMEOUT or 30s]; exit status 3 when it
        /// passes.
        #[arg(long, value_name = "DURATION", value_parser = super::deadline::parse)]
        timeout: Option<super::deadline::Deadline>,
        /// Audit a stopped server's data dir instead of a server.
        #[arg(long, value_name = "DIR", conflicts_with = "store")]
        data_dir: Option<PathBuf>,
        /// Audit a PostgreSQL store (postgres://USER@HOST/DB) instead of a
        /// server; a server may be running on it.
        #[arg(long, value_name = "URL")]
        store: Option<String>,
        /// With --store: the log's key file (serve's --log-key), to check
        /// the store's indexes too, not only its entries.
        #[arg(long, value_name = "FILE", requires = "store")]
        key_file: Option<PathBuf>,
        /// The log's key: a did:key, or a file holding one.
        #[arg(long, value_name = "DID|FILE")]
        log_key: String,
        /// A checkpoint saved by an earlier audit: the log must extend it.
        #[arg(long, value_name = "FILE")]
        since_checkpoint: Option<PathBuf>,
        /// Save the verified checkpoint here (for the next --since-checkpoint).
        #[arg(long, value_name = "FILE")]
        save_checkpoint: Option<PathBuf>,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(target: Target) -> Result<ExitCode, CliError> {
    match target {
        Target::Attestation { files, json } => attestations(&files, json),
        Target::Chain { files, json } => chain(&files, json),
        Target::Bundle {
            file,
            log_key,
            json,
        } => super::bundle::verify_file(&file, &log_key, json),
        Target::Inclusion {
            attestation,
            index,
            server,
            timeout,
            proof,
            save_proof,
            log_key,
            json,
        } => super::proofs::inclusion(super::proofs::InclusionArgs {
            log_key,
            attestation,
            index,
            server,
            timeout,
            proof,
            save_proof,
            json,
        }),
        Target::Consistency {
            old,
            new,
            server,
            timeout,
            proof,
            save_proof,
            log_key,
            json,
        } => super::proofs::consistency(super::proofs::ConsistencyArgs {
            log_key,
            timeout,
            old,
            new,
            server,
            proof,
            save_proof,
            json,
        }),
        Target::Log {
            server,
            timeout,
            data_dir,
            store,
            key_file,
            log_key,
            since_checkpoint,
            save_checkpoint,
            json,
        } => {
            let source = match (server, data_dir) {
                _ if store.is_some() => super::audit::Source::Store {
                    url: store.unwrap_or_default(),
                    key_file,
                },
                (_, Some(dir)) => super::audit::Source::DataDir(dir),
                (Some(url), None) => {
                    super::audit::Source::Server(ServerArg::new(url).with_timeout(timeout))
                }
                (None, None) => super::audit::Source::Server(
                    ServerArg::new(
                        std::env::var("PULSE_LEDGER_SERVER")
                            .unwrap_or_else(|_| super::client::DEFAULT_SERVER.to_owned()),
                    )
                    .with_timeout(timeout),
                ),
            };
            super::audit::run(super::audit::Options {
                source,
                log_key,
                since: since_checkpoint,
                save: save_checkpoint,
                json,
            })
        }
    }
}

fn attestations(paths: &[PathBuf], as_json: bool) -> Result<ExitCode, CliError> {
    let mut worst = 0u8;
    let mut results = Vec::new();
    for path in paths {
        let shown = path.display().to_string();
        let bytes = match files::read_envelope(path) {
            Ok(b) => b,
            Err(e) => {
                worst = worst.max(EXIT_USAGE);
                if as_json {
                    results.push(json!({"file": shown, "ok": false, "code": "io_error", "message": e.to_string()}));
                } else {
                    println!("FAIL {shown} io_error: {e}");
                }
                continue;
            }
        };
        match verify_attestation(&bytes) {
            Ok(att) => {
                let st = att.statement();
                if as_json {
                    results.push(json!({
                        "file": shown, "ok": true, "id": att.id().to_string(),
                        "statement": st.to_json(),
                    }));
                } else {
                    println!(
                        "ok   {shown} {} {} {} seq {}",
                        att.id(),
                        st.kind(),
                        st.subject,
                        st.seq
                    );
                }
            }
            Err(e) => {
                worst = worst.max(EXIT_VERIFY_FAILED);
                if as_json {
                    results.push(json!({"file": shown, "ok": false, "code": e.code().as_str(), "message": e.message()}));
                } else {
                    println!("FAIL {shown} {}", escape(&e.to_string()));
                }
            }
        }
    }
    if as_json {
        println!("{}", json!({"ok": worst == 0, "results": results}));
    }
    Ok(ExitCode::from(worst))
}

fn chain(paths: &[PathBuf], as_json: bool) -> Result<ExitCode, CliError> {
    let envelopes = paths
        .iter()
        .map(|p| files::read_envelope(p))
        .collect::<Result<Vec<_>, _>>()?;
    match verify_chain(&envelopes) {
        Ok(state) => {
            if as_json {
                println!(
                    "{}",
                    json!({"ok": true, "statements": paths.len(), "state": state.to_json()})
                );
            } else {
                println!("chain ok: {} statements", paths.len());
                print_state(&state);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let file = paths
                .get(e.index)
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            if as_json {
                let mut out = json!({
                    "ok": false, "index": e.index, "file": file,
                    "code": e.error.code().as_str(), "message": e.error.message(),
                });
                if let Some(eq) = &e.equivocation {
                    out["equivocation"] =
                        json!([eq.first.id().to_string(), eq.second.id().to_string()]);
                }
                println!("{out}");
            } else {
                println!(
                    "chain FAILED at statement {} ({file}): {}",
                    e.index,
                    escape(&e.error.to_string())
                );
                if let Some(eq) = &e.equivocation {
                    println!(
                        "equivocation evidence: {} and {} are both signed for seq {}",
                        eq.first.id(),
                        eq.second.id(),
                        eq.second.statement().seq
                    );
                }
            }
            Ok(ExitCode::from(EXIT_VERIFY_FAILED))
        }
    }
}

pub(crate) fn print_state(state: &ChainState) {
    println!("subject  {}", state.subject);
    println!("family   {}", state.family.as_str());
    println!("key      {}", state.key);
    println!("seq      {}", state.seq);
    println!("head     {}", state.head);
    println!("revoked  {}", if state.revoked { "yes" } else { "no" });
    println!("schema   {}", describe_schema(&state.schema));
}
