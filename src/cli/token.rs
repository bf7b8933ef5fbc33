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
    /// Sign a DID token: proof, for one server and at most an hour, that
    /// you hold a key.
    #[command(after_help = "\
Examples:
  PULSE_LEDGER_TOKEN=$(pulse-ledger token did --key handler.key) pulse-ledger job list --handler did:key:z6Mk...
  pulse-ledger token did --key client.key --log-did did:key:z6Mk... --minutes 60

A handler's schema says who may enqueue to it, read, cancel and budget its
jobs (its access lists: owner, tokens, or named did:keys). A DID token
proves you are one of them with no operator token: sign it with the
handler's key to act as its owner, or with your own key if a list names
your did:key. The token names the server's log did:key (asked of --server,
or given with --log-did for no network), so no other server accepts it.
Job commands can sign their own with --as-key KEYFILE.")]
    Did {
        /// The key file whose did:key the token proves.
        #[arg(long, value_name = "KEYFILE")]
        key: PathBuf,
        /// Server whose log did:key the token names.
        #[arg(long, env = "PULSE_LEDGER_SERVER", default_value = super::client::DEFAULT_SERVER, value_name = "URL")]
        server: String,
        /// The server's log did:key (`pulse-ledger log info`), instead of
        /// asking --server.
        #[arg(long, value_name = "DID")]
        log_did: Option<String>,
        /// Minutes the token is valid (1..60).
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=60))]
        minutes: u64,
    },
    /// Revoke an operator token at once, without a reload or restart.
    #[command(after_help = "\
Example:
  PULSE_LEDGER_TOKEN=plt_...admin... pulse-ledger token revoke --name ci

Needs an admin token. The token stops working for every call from then on,
streams it opened included, and stays revoked: the server keeps its hash in
<data-dir>/revoked-tokens, so neither a SIGHUP reload nor a restart brings
it back while its [[token]] table is still in the config (remove the table
when convenient). Prints the revoked token's hash.")]
    Revoke {
        #[command(flatten)]
        server: super::client::ServerArg,
        /// The token's name, as in its [[token]] table.
        #[arg(long)]
        name: String,
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
        TokenCmd::Did {
            key,
            server,
            log_did,
            minutes,
        } => {
            let lifetime = minutes * 60_000;
            let token = match log_did {
                Some(d) => {
                    let audience = crate::Did::parse(&d)
                        .map_err(|e| CliError::Usage(format!("--log-did: {e}")))?;
                    let sk = crate::keyfile::load(&key)
                        .map_err(|e| CliError::Usage(format!("--key {}: {e}", key.display())))?;
                    let now = crate::clock::unix_ms();
                    crate::auth::DidToken::sign(&sk, &audience, now, now + lifetime)
                        .map_err(CliError::Usage)?
                }
                None => {
                    let server = super::client::ServerArg::new(server);
                    super::client::runtime()?.block_on(async {
                        let channel = server.channel().await?;
                        super::client::did_token(&key, &channel, server.deadline(), lifetime).await
                    })?
                }
            };
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        TokenCmd::Revoke { server, name } => {
            let hash = super::client::runtime()?.block_on(async {
                let mut c = super::jobs::connect(&server).await?;
                let request = crate::api::proto::RevokeTokenRequest { name };
                c.deadline
                    .call("RevokeToken", c.rpc.revoke_token(request))
                    .await
            })?;
            println!("revoked {}", hash.hash);
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
