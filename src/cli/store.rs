//! `pulse-ledger store`: the storage under a server, for operators.

use std::process::ExitCode;

use serde_json::json;

use super::error::CliError;
use crate::storage::PostgresBackend;
use crate::storage::postgres::{SCHEMA_VERSION, is_postgres_url, shown_url};

/// Storage commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum StoreCmd {
    /// Create or migrate a PostgreSQL database's schema to this binary's.
    #[command(after_help = "\
Examples:
  pulse-ledger store migrate --store postgres://pulse@db.internal/pulse
  PULSE_LEDGER_STORE=postgres://pulse@127.0.0.1/pulse pulse-ledger store migrate --json

`serve --store` migrates at start as well; run this first to migrate as a
deploy step of its own. Migrations are embedded in the binary, applied in
order, each database once (an advisory lock keeps two runs apart). A
schema newer than this binary knows is refused (schema_too_new): run a
newer pulse-ledger. Exit status 0 when the schema is current, 1 on error.")]
    Migrate {
        /// The database (postgres://USER[:PASSWORD]@HOST[:PORT]/DB).
        #[arg(long, env = "PULSE_LEDGER_STORE", value_name = "URL")]
        store: String,
        /// Print {"store", "from", "to"} as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(cmd: StoreCmd) -> Result<ExitCode, CliError> {
    match cmd {
        StoreCmd::Migrate { store, json } => {
            if !is_postgres_url(&store) {
                return Err(CliError::Usage(format!(
                    "store migrate: invalid_store: {} is not a postgres:// URL (a data dir needs no migration)",
                    shown_url(&store)
                )));
            }
            let fail =
                |e: crate::storage::StorageError| CliError::Usage(format!("store migrate: {e}"));
            let backend = PostgresBackend::connect(&store).map_err(fail)?;
            let (from, to) = backend.migrate().map_err(fail)?;
            if json {
                println!(
                    "{}",
                    json!({"store": backend.url(), "from": from, "to": to})
                );
            } else if from == to {
                println!("{}: schema version {to} is current", backend.url());
            } else {
                println!(
                    "{}: schema migrated from version {from} to {to}",
                    backend.url()
                );
            }
            debug_assert_eq!(to, SCHEMA_VERSION);
            Ok(ExitCode::SUCCESS)
        }
    }
}
