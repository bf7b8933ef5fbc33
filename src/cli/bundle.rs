//! `pulse-ledger bundle export` and `pulse-ledger verify bundle`: a
//! subject's chain with its inclusion proofs, for offline verification
//! (spec/audit.md, "Bundles").

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;

use super::audit::{log_key, report_failure};
use super::client::{ServerArg, connect, runtime};
use super::error::{CliError, EXIT_VERIFY_FAILED};
use super::files;
use super::output::good;
use crate::Did;
use crate::api::proto;
use crate::audit::{Bundle, BundleEntry, MAX_BUNDLE_BYTES, verify_bundle};

/// Offline bundles.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum BundleCmd {
    /// Write a subject's whole chain, an inclusion proof for each
    /// statement, and the signed checkpoint they are proven against, to one
    /// file that `verify bundle` checks with no network.
    #[command(after_help = "\
Examples:
  pulse-ledger bundle export did:key:z6Mk... --server http://127.0.0.1:7300 --out h.bundle
  pulse-ledger bundle export did:key:z6Mk... --log-key did:key:z6Mk... --out h.bundle

The bundle is verified before it is written (against --log-key, or the key
the server names when none is given); a bundle that does not verify is not
written and the exit status is 1.")]
    Export {
        /// The subject's did:key (a handler or plugin).
        did: String,
        #[command(flatten)]
        server: ServerArg,
        /// Where to write it (refuses to overwrite).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The log's key (a did:key, or a file holding one) to check the
        /// bundle against before writing it.
        #[arg(long, value_name = "DID|FILE")]
        log_key: Option<String>,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(cmd: BundleCmd) -> Result<ExitCode, CliError> {
    let BundleCmd::Export {
        did,
        server,
        out,
        log_key: key_arg,
        json: as_json,
    } = cmd;
    let subject = Did::parse(&did).map_err(|e| CliError::Usage(format!("DID: {e}")))?;
    let trusted = key_arg.as_deref().map(log_key).transpose()?;
    let bundle = runtime()?.block_on(fetch(&server, &subject))?;
    let key = trusted.unwrap_or_else(|| bundle.log.clone());
    let bytes = bundle.encode();
    match verify_bundle(&bytes, &key) {
        Ok(report) => {
            files::write_new(&out, &bytes, 0o644)?;
            if as_json {
                println!(
                    "{}",
                    json!({
                        "ok": true, "file": out.display().to_string(), "subject": subject.to_string(),
                        "statements": report.indexes.len(), "indexes": report.indexes,
                        "checkpoint_size": report.checkpoint.size, "bytes": bytes.len(),
                    })
                );
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{} {} statements of {} proven against checkpoint size {} -> {}",
                good("bundle written:"),
                report.indexes.len(),
                subject,
                report.checkpoint.size,
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            report_failure(&e, as_json);
            Ok(ExitCode::from(EXIT_VERIFY_FAILED))
        }
    }
}

/// The chain, with every proof against the checkpoint of the last page
/// (the newest): earlier pages' proofs are fetched again for its size.
async fn fetch(server: &ServerArg, subject: &Did) -> Result<Bundle, CliError> {
    let mut client = connect(server).await?;
    let log = client
        .deadline
        .call(
            "GetLogInfo",
            client.rpc.get_log_info(proto::GetLogInfoRequest {}),
        )
        .await?
        .log_did;
    let log =
        Did::parse(&log).map_err(|e| CliError::Usage(format!("the server's log key: {e}")))?;
    let mut pages = Vec::new();
    let mut from_seq = 0;
    loop {
        let request = proto::GetChainRequest {
            did: subject.to_string(),
            from_seq,
            page_size: 0,
        };
        let page = client
            .deadline
            .call("GetChain", client.rpc.get_chain(request))
            .await?;
        let more = page.more;
        from_seq = page.next_seq;
        pages.push(page);
        if !more {
            break;
        }
    }
    let checkpoint = pages
        .last()
        .and_then(|p| p.checkpoint.clone())
        .unwrap_or_default();
    let mut entries = Vec::new();
    for page in pages {
        let same = page.checkpoint.as_ref().map(|c| c.size) == Some(checkpoint.size);
        for e in page.entries {
            let proof = if same {
                e.inclusion_proof
            } else {
                let request = proto::GetInclusionProofRequest {
                    leaf: Some(proto::get_inclusion_proof_request::Leaf::Index(e.index)),
                    tree_size: checkpoint.size,
                };
                client
                    .deadline
                    .call("GetInclusionProof", client.rpc.get_inclusion_proof(request))
                    .await?
                    .path
            };
            entries.push(BundleEntry {
                index: e.index,
                envelope: e.envelope,
                proof: super::remote::hashes(&proof),
            });
        }
    }
    Ok(Bundle {
        log,
        subject: subject.clone(),
        checkpoint: checkpoint.note,
        entries,
    })
}

/// `verify bundle FILE --log-key …`.
pub(crate) fn verify_file(path: &Path, key_arg: &str, as_json: bool) -> Result<ExitCode, CliError> {
    let key = log_key(key_arg)?;
    let len = std::fs::metadata(path).map_err(files::io(path))?.len();
    if len > MAX_BUNDLE_BYTES as u64 {
        return Err(CliError::Usage(format!(
            "{}: {len} bytes is larger than any bundle ({MAX_BUNDLE_BYTES})",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(files::io(path))?;
    match verify_bundle(&bytes, &key) {
        Ok(r) => {
            if as_json {
                println!(
                    "{}",
                    json!({
                        "ok": true, "subject": r.state.subject.to_string(),
                        "statements": r.indexes.len(), "indexes": r.indexes,
                        "checkpoint_size": r.checkpoint.size,
                        "checkpoint_root": hex::encode(r.checkpoint.root),
                        "state": r.state.to_json(),
                    })
                );
            } else {
                println!(
                    "{} {} statements, each proven in the log's checkpoint of size {}",
                    good("bundle ok:"),
                    r.indexes.len(),
                    r.checkpoint.size
                );
                super::verify::print_state(&r.state);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            report_failure(&e, as_json);
            Ok(ExitCode::from(EXIT_VERIFY_FAILED))
        }
    }
}
