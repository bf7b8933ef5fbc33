//! `pulse-ledger verify attestation|chain`: offline verification.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use super::error::{CliError, EXIT_USAGE, EXIT_VERIFY_FAILED};
use super::files;
use super::inspect::describe_schema;
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
}

pub(crate) fn run(target: Target) -> Result<ExitCode, CliError> {
    match target {
        Target::Attestation { files, json } => attestations(&files, json),
        Target::Chain { files, json } => chain(&files, json),
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
                    println!("FAIL {shown} {e}");
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
                    e.index, e.error
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

fn print_state(state: &ChainState) {
    println!("subject  {}", state.subject);
    println!("family   {}", state.family.as_str());
    println!("key      {}", state.key);
    println!("seq      {}", state.seq);
    println!("head     {}", state.head);
    println!("revoked  {}", if state.revoked { "yes" } else { "no" });
    println!("schema   {}", describe_schema(&state.schema));
}
