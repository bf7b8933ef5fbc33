//! `pulse-ledger token`: bearer tokens for the jobs API. The server keeps
//! only their hashes (spec/security.md, "Tokens").

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use super::error::CliError;
use super::files;
use crate::auth::{Scope, TokenHash, new_token};

/// Bearer tokens.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum TokenCmd {
    /// Make a token and the [[token]] table that lets a server accept it.
    #[command(after_help = "\
Examples:
  pulse-ledger token create --name ci --scope enqueue --scope read
  pulse-ledger token create --name billing --scope enqueue:did:key:z6Mk... --out billing.token
  pulse-ledger token create --name ops --scope admin --json

Scopes: enqueue (any handler), enqueue:<handler did:key> (one handler),
read (jobs, logs, budgets), cancel, budget (set budgets), admin (all).
The token is printed (or written with --out) once and never stored: the
server's config holds only its blake3 hash. Give it to clients as
PULSE_LEDGER_TOKEN. Add or delete tables, then send the server SIGHUP
(kill -HUP PID) to put them in force without a restart.")]
    Create {
        /// A name for the server's logs and refusals.
        #[arg(long)]
        name: String,
        /// A scope; repeat for several.
        #[arg(long = "scope", value_name = "SCOPE", required = true, value_parser = parse_scope)]
        scopes: Vec<Scope>,
        /// Write the token to this new file (mode 0600) instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Print {"name", "token", "hash", "scopes", "config"} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the stored form (hash) of a token read from standard input.
    #[command(after_help = "Example:\n  pulse-ledger token hash < ci.token")]
    Hash,
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    Scope::parse(s)
}

fn toml_table(name: &str, hash: &TokenHash, scopes: &[Scope]) -> String {
    let list: Vec<String> = scopes
        .iter()
        .map(|s| format!("{:?}", s.to_string()))
        .collect();
    format!(
        "[[token]]\nname = {name:?}\nhash = \"{hash}\"\nscopes = [{}]\n",
        list.join(", ")
    )
}

pub(crate) fn run(cmd: TokenCmd) -> Result<ExitCode, CliError> {
    match cmd {
        TokenCmd::Create {
            name,
            scopes,
            out,
            json,
        } => {
            if name.is_empty() || name.chars().any(char::is_control) {
                return Err(CliError::Usage(
                    "--name: give a printable, non-empty name".into(),
                ));
            }
            let token = new_token().map_err(CliError::Usage)?;
            let hash = TokenHash::of(&token)
                .map_err(|e| CliError::Usage(format!("generated token rejected: {e}")))?;
            let table = toml_table(&name, &hash, &scopes);
            if let Some(path) = &out {
                files::write_new(path, format!("{token}\n").as_bytes(), 0o600)?;
            }
            if json {
                let shown = if out.is_some() { None } else { Some(&token) };
                println!(
                    "{}",
                    json!({
                        "name": name, "token": shown, "hash": hash.to_string(),
                        "scopes": scopes.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "config": table,
                    })
                );
            } else {
                match &out {
                    Some(p) => println!("token written to {} (mode 0600)", p.display()),
                    None => println!("{token}"),
                }
                println!(
                    "\n# add to the server's config file, then send the server SIGHUP:\n{table}"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCmd::Hash => {
            let mut text = String::new();
            std::io::stdin()
                .take(4096)
                .read_to_string(&mut text)
                .map_err(|e| CliError::Usage(format!("standard input: {e}")))?;
            let hash = TokenHash::of(text.trim()).map_err(|e| CliError::Usage(e.to_string()))?;
            println!("{hash}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
