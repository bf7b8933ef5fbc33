//! `pulse-ledger store`: the storage under a server, for operators.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;

use super::error::CliError;
use crate::ledger::{Ledger, LedgerConfig, StoredLog};
use crate::pulse::JobStore;
use crate::storage::postgres::{SCHEMA_VERSION, is_postgres_url, shown_url};
use crate::storage::{FjallBackend, FjallOptions, PostgresBackend, Storage, StorageError};

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
    /// Copy a log and its jobs from one store to another, and verify the
    /// copy.
    #[command(after_help = "\
Examples:
  pulse-ledger store copy --from ./pulse-ledger-data --to postgres://pulse@db/pulse \\
      --log-key /etc/pulse/log.key
  pulse-ledger store copy --from postgres://pulse@db/pulse --log-key /etc/pulse/log.key \\
      --to ./restored-data

A store is a data dir (fjall) or a postgres:// URL. Copies every entry of
the log, its tree, indexes and checkpoint, and the jobs with their logs,
budgets, spending and schedules. No server may use either store meanwhile
(both are locked; a running server makes the copy refuse). The target must
be empty: a data dir without a database or key, or a database without
pulse-ledger data (its schema is created). The log key goes with the log:
a data dir keeps it as log.key; a PostgreSQL store keeps it in the file
--log-key names (serve --log-key), never in the database.

Then the copy is verified as a server would open it: every entry's
signature and chain rules, the tree against the signed checkpoint, every
index, and the root and checkpoint equal to the source's. Exit status 0
when the copy verified, 1 when it did not (drop the target and copy
again), 2 on a usage error.")]
    Copy {
        /// The store to copy from (a data dir, or postgres://…).
        #[arg(long, value_name = "DIR|URL")]
        from: String,
        /// The empty store to copy to (a data dir, or postgres://…).
        #[arg(long, value_name = "DIR|URL")]
        to: String,
        /// The PostgreSQL side's log key file (read from it when copying
        /// from PostgreSQL, written to it when copying to PostgreSQL).
        #[arg(long, value_name = "FILE")]
        log_key: Option<PathBuf>,
        /// Print what was copied as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(cmd: StoreCmd) -> Result<ExitCode, CliError> {
    match cmd {
        StoreCmd::Copy {
            from,
            to,
            log_key,
            json,
        } => copy(&from, &to, log_key.as_deref(), json),
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

/// One side of a copy.
enum Place {
    Dir(PathBuf),
    Postgres(String),
}

impl Place {
    fn parse(text: &str) -> Place {
        if is_postgres_url(text) {
            Place::Postgres(text.to_owned())
        } else {
            Place::Dir(PathBuf::from(text))
        }
    }

    fn shown(&self) -> String {
        match self {
            Place::Dir(d) => d.display().to_string(),
            Place::Postgres(u) => shown_url(u),
        }
    }

    /// The log key file of this side.
    fn key_file(&self, log_key: Option<&Path>) -> Result<PathBuf, CliError> {
        match self {
            Place::Dir(d) => Ok(d.join("log.key")),
            Place::Postgres(_) => log_key.map(Path::to_path_buf).ok_or_else(|| {
                CliError::Usage(format!(
                    "store copy: {} is PostgreSQL: give its log key file with --log-key",
                    self.shown()
                ))
            }),
        }
    }

    /// Opens the store, locked against servers; `target` also requires it
    /// empty and creates it.
    fn open(&self, target: bool) -> Result<Storage, CliError> {
        let fail = |e: StorageError| CliError::Usage(format!("store copy: {}: {e}", self.shown()));
        match self {
            Place::Dir(d) => {
                let db = d.join("db");
                if target && (db.exists() || d.join("log.key").exists()) {
                    return Err(CliError::Usage(format!(
                        "store copy: target_not_empty: {} already holds a store (db/ or log.key)",
                        d.display()
                    )));
                }
                if !target && !db.is_dir() {
                    return Err(CliError::Usage(format!(
                        "store copy: {} holds no pulse-ledger database",
                        d.display()
                    )));
                }
                std::fs::create_dir_all(d)
                    .map_err(|e| CliError::Usage(format!("store copy: {}: {e}", d.display())))?;
                let backend = FjallBackend::open(&db, FjallOptions::default()).map_err(|e| {
                    if e.to_string().contains("Locked") {
                        CliError::Usage(format!(
                            "store copy: store_in_use: a server is using {}: stop it first",
                            d.display()
                        ))
                    } else {
                        fail(e)
                    }
                })?;
                Ok(Storage::new(backend))
            }
            Place::Postgres(url) => {
                let backend = PostgresBackend::connect(url).map_err(fail)?;
                if target {
                    backend.migrate().map_err(fail)?;
                } else {
                    let v = backend.stored_version().map_err(fail)?;
                    if v != SCHEMA_VERSION {
                        return Err(CliError::Usage(format!(
                            "store copy: {}: schema version {v}, this pulse-ledger's is {SCHEMA_VERSION} (run pulse-ledger store migrate)",
                            self.shown()
                        )));
                    }
                }
                backend.lock_single_server().map_err(fail)?;
                if target && !backend.is_empty().map_err(fail)? {
                    return Err(CliError::Usage(format!(
                        "store copy: target_not_empty: {} already holds pulse-ledger data",
                        self.shown()
                    )));
                }
                Ok(Storage::new(backend))
            }
        }
    }
}

/// Writes per commit at most, and bytes about: bounded memory whatever
/// the store's size.
const COPY_BATCH_OPS: usize = 2_000;
const COPY_BATCH_BYTES: usize = 8 * 1024 * 1024;

fn copy(from: &str, to: &str, log_key: Option<&Path>, json: bool) -> Result<ExitCode, CliError> {
    let (src, dst) = (Place::parse(from), Place::parse(to));
    let (src_key, dst_key) = (src.key_file(log_key)?, dst.key_file(log_key)?);
    if !src_key.is_file() {
        return Err(CliError::Usage(format!(
            "store copy: the source's log key {} is missing: the log cannot be verified without it",
            src_key.display()
        )));
    }
    let source = src.open(false)?;
    let stored = StoredLog::open_on(&source)
        .map_err(|e| CliError::Usage(format!("store copy: {}: {e}", src.shown())))?;
    let target = dst.open(true)?;
    // The key goes with the log, unless the target's key file is already
    // this very key (PostgreSQL to PostgreSQL with one --log-key).
    let key_bytes = std::fs::read(&src_key)
        .map_err(|e| CliError::Usage(format!("{}: {e}", src_key.display())))?;
    match std::fs::read(&dst_key) {
        Ok(existing) if existing == key_bytes => {}
        Ok(_) => {
            return Err(CliError::Usage(format!(
                "store copy: {} holds another key: give a new --log-key file for the target",
                dst_key.display()
            )));
        }
        Err(_) => {
            if let Some(parent) = dst_key.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(super::files::io(parent))?;
            }
            super::files::write_new(&dst_key, &key_bytes, 0o600)?;
        }
    }
    // A consistent view of the source; the ledger's meta (its size and
    // checkpoint) last, so an interrupted copy is never a log that opens.
    let snap = source
        .snapshot()
        .map_err(|e| CliError::Usage(format!("store copy: {e}")))?;
    let mut names: Vec<&str> = JobStore::space_names();
    names.extend(
        crate::ledger::space_names()
            .into_iter()
            .filter(|n| *n != "meta"),
    );
    names.push("meta");
    let mut copied = serde_json::Map::new();
    let fail = |e: StorageError| CliError::Usage(format!("store copy: {e}"));
    for name in &names {
        let (from_space, to_space) = (
            source.space(name).map_err(fail)?,
            target.space(name).map_err(fail)?,
        );
        let (mut batch, mut bytes, mut n) = (target.batch(), 0usize, 0u64);
        for kv in snap.iter(&from_space) {
            let (k, v) = kv.map_err(fail)?;
            bytes += k.len() + v.len();
            batch.insert(&to_space, &k, &v);
            n += 1;
            if batch.len() >= COPY_BATCH_OPS || bytes >= COPY_BATCH_BYTES {
                target
                    .commit(std::mem::replace(&mut batch, target.batch()))
                    .map_err(fail)?;
                bytes = 0;
            }
        }
        target.commit(batch).map_err(fail)?;
        copied.insert((*name).to_owned(), json!(n));
    }
    drop(snap);
    // Verify the target as a server would open it.
    let origin = stored.origin.clone();
    let source_checkpoint = stored.checkpoint.clone();
    drop(stored);
    let dir = match &dst {
        Place::Dir(d) => d.clone(),
        Place::Postgres(_) => dst_key.parent().unwrap_or(Path::new(".")).to_path_buf(),
    };
    let mut config = LedgerConfig::new(&dir, &origin);
    config.min_free_bytes = 0;
    let verdict = Ledger::open_on(target.clone(), &dst_key, config).and_then(|ledger| {
        let report = ledger.audit();
        let head = ledger.head();
        let jobs = JobStore::open(&ledger).map_err(|e| {
            crate::ledger::LedgerError::new(
                crate::ledger::LedgerErrorCode::Integrity,
                format!("the copied jobs do not open: {e}"),
            )
        });
        ledger.close();
        Ok((report?, head, jobs?))
    });
    let (report, head) = match verdict {
        Ok((report, head, _jobs)) => (report, head),
        Err(e) => {
            println!("FAILED: the copy in {} does not verify: {e}", dst.shown());
            return Ok(ExitCode::from(1));
        }
    };
    if head.checkpoint != source_checkpoint {
        println!(
            "FAILED: the copy's checkpoint differs from the source's:\n{}\n---\n{source_checkpoint}",
            head.checkpoint
        );
        return Ok(ExitCode::from(1));
    }
    if json {
        println!(
            "{}",
            json!({
                "from": src.shown(), "to": dst.shown(), "entries": report.entries,
                "subjects": report.subjects, "root": hex::encode(report.root),
                "log_key": dst_key.display().to_string(), "copied": copied,
            })
        );
    } else {
        println!(
            "copied {} entries ({} subjects) and {} jobs from {} to {}",
            report.entries,
            report.subjects,
            // Live jobs and finished ones are kept in two spaces.
            ["jobs", "job_done"]
                .iter()
                .filter_map(|n| copied.get(*n).and_then(serde_json::Value::as_u64))
                .sum::<u64>(),
            src.shown(),
            dst.shown()
        );
        println!(
            "verified: every entry, the tree and the indexes; root {} and checkpoint equal to the source's",
            hex::encode(report.root)
        );
        println!("log key: {}", dst_key.display());
    }
    Ok(ExitCode::SUCCESS)
}
