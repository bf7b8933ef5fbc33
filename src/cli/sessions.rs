//! `pulse-ledger plugin sessions`: the plugin processes a server has live
//! sessions with (pools included), and the proofs it refused last.

use std::process::ExitCode;

use serde_json::json;

use super::client::{ServerArg, runtime};
use super::error::CliError;
use super::output::escape;
use crate::api::proto;

/// `plugin sessions`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  pulse-ledger plugin sessions
  pulse-ledger plugin sessions --server https://pulse.example.com:7300 --json

One block per session: the plugin (ID and name), the key it proved, how it
is connected (spawned, dialled, or connected in), its address, the handlers
it announced, its slots and running attempts, whether it drains, and when
its last health check succeeded. Then the last refused proof per plugin,
with its code (spec/plugin.md). Needs the read scope over every handler.")]
pub(crate) struct SessionsArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Print one JSON object: {"sessions": [...], "refusals": [...]}.
    #[arg(long)]
    json: bool,
}

/// Runs `plugin sessions`.
pub(crate) fn run(args: SessionsArgs) -> Result<ExitCode, CliError> {
    runtime()?.block_on(async move {
        let mut c = super::jobs::connect(&args.server).await?;
        let r = c
            .deadline
            .call(
                "ListPluginSessions",
                c.rpc
                    .list_plugin_sessions(proto::ListPluginSessionsRequest {}),
            )
            .await?;
        if args.json {
            println!("{}", to_json(&r));
        } else {
            print_text(&r);
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn to_json(r: &proto::ListPluginSessionsResponse) -> serde_json::Value {
    json!({
        "sessions": r.sessions.iter().map(|s| json!({
            "plugin": s.plugin, "name": s.name, "key": s.key, "connection": s.connection,
            "address": s.address, "handlers": s.handlers, "serves_any": s.serves_any,
            "slots": s.slots, "running": s.running, "draining": s.draining,
            "opened_ms": s.opened_ms, "last_health_ms": s.last_health_ms, "session": s.session,
            "attempt_streams": s.attempt_streams,
        })).collect::<Vec<_>>(),
        "refusals": r.refusals.iter().map(|f| json!({
            "plugin": f.plugin, "address": f.address, "code": f.code,
            "message": f.message, "at_ms": f.at_ms,
        })).collect::<Vec<_>>(),
    })
}

fn print_text(r: &proto::ListPluginSessionsResponse) {
    let now = crate::clock::unix_ms();
    let ago = |ms: u64| format!("{:.1} s ago", now.saturating_sub(ms) as f64 / 1000.0);
    if r.sessions.is_empty() {
        println!("no live plugin session");
    }
    for s in &r.sessions {
        let slots = if s.slots == 0 {
            "no limit".to_owned()
        } else {
            s.slots.to_string()
        };
        let mut handlers: Vec<String> = s.handlers.iter().map(|h| escape(h).into_owned()).collect();
        if s.serves_any {
            handlers.push("(any handler naming it)".into());
        }
        println!(
            "{} {} [{}{}]",
            s.plugin,
            escape(&s.name),
            s.connection,
            if s.draining { ", draining" } else { "" }
        );
        println!("  session   {} at {}", s.session, escape(&s.address));
        println!("  key       {}", s.key);
        println!("  handlers  {}", handlers.join(", "));
        println!("  slots     {slots}, running {}", s.running);
        if s.attempt_streams > 0 {
            println!("  attempts  over {} streams", s.attempt_streams);
        }
        println!(
            "  opened    {}; last health check {}",
            ago(s.opened_ms),
            ago(s.last_health_ms)
        );
    }
    if !r.refusals.is_empty() {
        println!("refused proofs (latest per plugin):");
    }
    for f in &r.refusals {
        println!(
            "  {} from {}: {} ({}) {}",
            escape(&f.plugin),
            escape(&f.address),
            f.code,
            escape(&f.message),
            ago(f.at_ms)
        );
    }
}
