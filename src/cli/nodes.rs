//! `pulse-ledger nodes`: the server nodes sharing a store (`serve
//! --node`), as any of them lists them.

use std::process::ExitCode;

use serde_json::json;

use super::client::{ServerArg, runtime};
use super::error::CliError;
use super::output::escape;
use crate::api::proto;

/// `nodes`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  pulse-ledger nodes
  pulse-ledger nodes --server https://pulse.example.com:7300 --json

One line per node of the store the server is on: its name, live or gone
(no record for 10 s), the address it listens on, when it was last heard
from and started, the log size it serves and how far that trails the
store's, its plugin sessions and running attempts, and its version. A
server that holds its store alone (no --node) lists itself. Every node
appends to the log (there is no writer lease: each group commit is fenced
by the stored size, spec/ledger.md \"Several nodes\"). Needs the read scope
over every handler.")]
pub(crate) struct NodesArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Print one JSON object: {"answered_by", "store_log_size", "nodes": [...]}.
    #[arg(long)]
    json: bool,
}

/// Runs `nodes`.
pub(crate) fn run(args: NodesArgs) -> Result<ExitCode, CliError> {
    runtime()?.block_on(async move {
        let mut c = super::jobs::connect(&args.server).await?;
        let r = c
            .deadline
            .call("ListNodes", c.rpc.list_nodes(proto::ListNodesRequest {}))
            .await?;
        if args.json {
            println!("{}", to_json(&r));
        } else {
            print_text(&r);
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn to_json(r: &proto::ListNodesResponse) -> serde_json::Value {
    json!({
        "answered_by": r.answered_by,
        "store_log_size": r.store_log_size,
        "nodes": r.nodes.iter().map(|n| json!({
            "name": n.name, "live": n.live, "listen": n.listen,
            "started_ms": n.started_ms, "last_seen_ms": n.last_seen_ms,
            "log_size": n.log_size, "lag": r.store_log_size.saturating_sub(n.log_size),
            "sessions": n.sessions, "running": n.running, "version": n.version,
        })).collect::<Vec<_>>(),
    })
}

fn print_text(r: &proto::ListNodesResponse) {
    let now = crate::clock::unix_ms();
    let ago = |ms: u64| format!("{:.1} s ago", now.saturating_sub(ms) as f64 / 1000.0);
    if r.nodes.is_empty() {
        println!("no node has written its record yet");
    }
    for n in &r.nodes {
        let name = if n.name.is_empty() {
            "(single server)".to_owned()
        } else {
            escape(&n.name).into_owned()
        };
        let me = if n.name == r.answered_by {
            " (answered)"
        } else {
            ""
        };
        println!(
            "{name}{me} {} at {}: seen {}, started {}",
            if n.live { "live" } else { "GONE" },
            escape(&n.listen),
            ago(n.last_seen_ms),
            ago(n.started_ms)
        );
        println!(
            "  log {} (lag {}), sessions {}, running {}, version {}",
            n.log_size,
            r.store_log_size.saturating_sub(n.log_size),
            n.sessions,
            n.running,
            escape(&n.version)
        );
    }
    println!(
        "log writer: every node (each group commit fenced by the stored size); store log size {}",
        r.store_log_size
    );
}
