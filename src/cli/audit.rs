//! `pulse-ledger verify log`: the full audit of a log, from a server or a
//! stopped server's data dir (spec/audit.md, "Auditing a log").

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use serde_json::json;

use super::client::{Registry, ServerArg};
use super::error::{CliError, EXIT_VERIFY_FAILED};
use super::files;
use super::output::{Progress, bad, escape, good};
use super::remote::{extends, newest_checkpoint};
use crate::Did;
use crate::api::proto;
use crate::audit::{
    AuditCode, AuditError, AuditSummary, LogAuditor, available_threads, compare_checkpoints,
};
use crate::ledger::{Checkpoint, StoredLog, verify_checkpoint};

/// Entries handed to the verifier at a time (split over the threads).
const CHUNK: u64 = 4_000;
/// Pages of entries asked for at once from a server.
const PAGES_IN_FLIGHT: usize = 4;

/// Reads `--log-key`: a did:key, or a file holding one (a bare DID, or a
/// key file's `# did:` line).
pub(crate) fn log_key(arg: &str) -> Result<Did, CliError> {
    if arg.starts_with("did:") {
        return Did::parse(arg).map_err(|e| CliError::Usage(format!("--log-key: {e}")));
    }
    let path = Path::new(arg);
    let text = std::fs::read_to_string(path).map_err(files::io(path))?;
    let did = text
        .lines()
        .map(|l| l.trim().trim_start_matches("# did:").trim())
        .find(|l| l.starts_with("did:"))
        .ok_or_else(|| CliError::Usage(format!("--log-key: {arg} holds no did:key")))?;
    Did::parse(did).map_err(|e| CliError::Usage(format!("--log-key: {arg}: {e}")))
}

/// Reads a saved checkpoint file; the inner result is its verification
/// with the log key (a verdict: `bad_checkpoint`).
pub(crate) fn read_checkpoint(
    path: &Path,
    key: &Did,
) -> Result<Result<Checkpoint, AuditError>, CliError> {
    let note = std::fs::read_to_string(path).map_err(files::io(path))?;
    Ok(verify_checkpoint(&note, key)
        .map_err(|e| AuditError::new(AuditCode::BadCheckpoint, format!("{}: {e}", path.display()))))
}

/// Writes a file atomically: a synced temporary beside it, then a rename.
pub(crate) fn save_atomically(path: &Path, text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut f = std::fs::File::create(&tmp).map_err(files::io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(files::io(&tmp))?;
    f.sync_all().map_err(files::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(files::io(path))
}

/// Where the log comes from.
pub(crate) enum Source {
    Server(ServerArg),
    DataDir(PathBuf),
    /// A PostgreSQL store, and the log's key file if given (to check the
    /// store's indexes, which needs opening it as a ledger).
    Store {
        url: String,
        key_file: Option<PathBuf>,
    },
}

/// The `verify log` options.
pub(crate) struct Options {
    pub(crate) source: Source,
    pub(crate) log_key: String,
    pub(crate) since: Option<PathBuf>,
    pub(crate) save: Option<PathBuf>,
    pub(crate) json: bool,
}

pub(crate) fn run(o: Options) -> Result<ExitCode, CliError> {
    let key = log_key(&o.log_key)?;
    let earlier = match o
        .since
        .as_deref()
        .map(|p| read_checkpoint(p, &key))
        .transpose()?
    {
        Some(Err(e)) => {
            report_failure(&e, o.json);
            return Ok(ExitCode::from(EXIT_VERIFY_FAILED));
        }
        Some(Ok(c)) => Some(c),
        None => None,
    };
    let started = Instant::now();
    let threads = available_threads();
    let outcome = match &o.source {
        Source::Server(server) => super::client::runtime()?.block_on(from_server(
            server,
            &key,
            earlier.as_ref(),
            threads,
        ))?,
        Source::DataDir(dir) => from_data_dir(dir, &key, earlier.as_ref(), threads)?,
        Source::Store { url, key_file } => {
            from_store(url, key_file.as_deref(), &key, earlier.as_ref(), threads)?
        }
    };
    let secs = started.elapsed().as_secs_f64();
    match outcome {
        Ok((summary, note)) => {
            if let Some(path) = &o.save {
                save_atomically(path, &note)?;
            }
            let rate = summary.entries as f64 / secs.max(1e-9);
            if o.json {
                println!(
                    "{}",
                    json!({
                        "ok": true, "entries": summary.entries, "subjects": summary.subjects,
                        "revoked": summary.revoked, "root": hex::encode(summary.root),
                        "earlier_size": earlier.as_ref().map(|c| c.size),
                        "seconds": secs, "entries_per_second": rate, "threads": threads,
                    })
                );
            } else {
                println!(
                    "{} {} entries, {} subjects ({} revoked), root {}",
                    good("log ok:"),
                    summary.entries,
                    summary.subjects,
                    summary.revoked,
                    hex::encode(summary.root)
                );
                if let Some(e) = &earlier {
                    println!("consistent with the earlier checkpoint of size {}", e.size);
                }
                println!("verified in {secs:.2}s ({rate:.0} entries/s on {threads} threads)");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            report_failure(&e, o.json);
            Ok(ExitCode::from(EXIT_VERIFY_FAILED))
        }
    }
}

/// Prints a verification failure (stdout: it is the verdict).
pub(crate) fn report_failure(e: &AuditError, as_json: bool) {
    if as_json {
        println!(
            "{}",
            json!({"ok": false, "code": e.code.as_str(), "index": e.index, "message": e.message})
        );
    } else {
        println!("{} {}", bad("FAILED"), escape(&e.to_string()));
    }
}

type Verdict = Result<(AuditSummary, String), AuditError>;

fn verified_checkpoint(note: &str, key: &Did) -> Result<Checkpoint, AuditError> {
    verify_checkpoint(note, key)
        .map_err(|e| AuditError::new(AuditCode::BadCheckpoint, e.to_string()))
}

/// Runs the auditor on its own thread, fed chunks of entries through a
/// channel; returns the sender and the thread.
type AuditThread = std::thread::JoinHandle<Result<LogAuditor, AuditError>>;

fn spawn_auditor(
    mut auditor: LogAuditor,
    total: u64,
) -> (tokio::sync::mpsc::Sender<Vec<Vec<u8>>>, AuditThread) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Vec<u8>>>(8);
    let handle = std::thread::spawn(move || {
        let mut progress = Progress::new(total);
        while let Some(chunk) = rx.blocking_recv() {
            auditor.push(&chunk)?;
            progress.show(auditor.size());
        }
        progress.done();
        Ok(auditor)
    });
    (tx, handle)
}

fn joined(handle: AuditThread) -> Result<LogAuditor, AuditError> {
    handle
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// A page of entries being fetched: (start, end, the call).
type PageFetch = (
    u64,
    u64,
    tokio::task::JoinHandle<Result<proto::GetEntriesResponse, CliError>>,
);

/// Starts fetching entries `start..end` (the server may answer a prefix).
fn fetch_page(client: &Registry, start: u64, end: u64) -> PageFetch {
    let mut c = client.clone();
    let call = tokio::spawn(async move {
        c.deadline
            .call(
                "GetEntries",
                c.rpc.get_entries(proto::GetEntriesRequest { start, end }),
            )
            .await
    });
    (start, end, call)
}

async fn from_server(
    server: &ServerArg,
    key: &Did,
    earlier: Option<&Checkpoint>,
    threads: usize,
) -> Result<Verdict, CliError> {
    let mut client = super::client::connect(server).await?;
    let (note, cp) = newest_checkpoint(&mut client, key).await?;
    let cp = match cp {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    let mut auditor = LogAuditor::new(threads);
    if let Some(old) = earlier {
        if let Err(e) = extends(&mut client, old, &cp).await? {
            return Ok(Err(e));
        }
        if let Err(e) = auditor.check_earlier(old) {
            return Ok(Err(e));
        }
    }
    let (tx, handle) = spawn_auditor(auditor, cp.size);
    // Pages are fetched a few at a time, in order, while the auditor works.
    let mut inflight = std::collections::VecDeque::new();
    let mut next = 0u64;
    let mut chunk: Vec<Vec<u8>> = Vec::new();
    let mut fetch_error = None;
    let mut page_error = None;
    loop {
        while inflight.len() < PAGES_IN_FLIGHT && next < cp.size {
            let end = (next + crate::ledger::MAX_ENTRY_RANGE).min(cp.size);
            inflight.push_back(fetch_page(&client, next, end));
            next = end;
        }
        let Some((start, end, task)) = inflight.pop_front() else {
            break;
        };
        let page = match task.await {
            Ok(Ok(r)) => r.entries,
            Ok(Err(e)) => {
                fetch_error = Some(e);
                break;
            }
            Err(e) => {
                fetch_error = Some(CliError::Usage(format!("fetching entries: {e}")));
                break;
            }
        };
        let wrong = page
            .iter()
            .enumerate()
            .find(|(i, e)| e.index != start + *i as u64)
            .map(|(i, e)| {
                AuditError::at(
                    start + i as u64,
                    AuditCode::SizeMismatch,
                    format!("the server sent index {} in its place", e.index),
                )
            });
        // A page may stop short of `end` (the server caps pages by bytes,
        // spec/ledger.md): ask for the rest before anything after it. An
        // empty page, or one longer than asked, is the server's fault.
        let got = page.len() as u64;
        let short = (got == 0 || got > end - start).then(|| {
            AuditError::at(
                start + got.min(end - start),
                AuditCode::SizeMismatch,
                format!(
                    "asked for indexes {start}..{end} of a {}-entry checkpoint, the server sent {} entries",
                    cp.size,
                    page.len()
                ),
            )
        });
        if let Some(e) = wrong.or(short) {
            page_error = Some(e);
            break;
        }
        if got < end - start {
            inflight.push_front(fetch_page(&client, start + got, end));
        }
        chunk.extend(page.into_iter().map(|e| e.envelope));
        if chunk.len() as u64 >= CHUNK && tx.send(std::mem::take(&mut chunk)).await.is_err() {
            break; // the auditor stopped at a failure
        }
    }
    if !chunk.is_empty() {
        let _ = tx.send(chunk).await;
    }
    drop(tx);
    let audited = joined(handle);
    // A failure the auditor found in entries before the bad page comes
    // first; then the page's.
    if let Some(e) = page_error {
        return Ok(Err(audited.err().unwrap_or(e)));
    }
    if let Some(e) = fetch_error {
        // A verification failure found first is the verdict; otherwise the
        // download failed.
        if let Err(found) = audited {
            return Ok(Err(found));
        }
        return Err(e);
    }
    Ok(audited.and_then(|a| a.finish(&cp)).map(|s| (s, note)))
}

fn from_data_dir(
    dir: &Path,
    key: &Did,
    earlier: Option<&Checkpoint>,
    threads: usize,
) -> Result<Verdict, CliError> {
    let stored = StoredLog::open(dir).map_err(|e| CliError::Usage(e.to_string()))?;
    from_stored(stored, key, earlier, threads, |origin| {
        // Opening the store as a ledger needs its key file: a copy without
        // one gets the entry audit only.
        if !StoredLog::has_key_file(dir) {
            eprintln!(
                "note: {} has no log.key, so the store's indexes were not checked (the entries were)",
                dir.display()
            );
            return None;
        }
        Some(crate::ledger::Ledger::open(
            crate::ledger::LedgerConfig::new(dir, origin),
        ))
    })
}

fn from_store(
    url: &str,
    key_file: Option<&Path>,
    key: &Did,
    earlier: Option<&Checkpoint>,
    threads: usize,
) -> Result<Verdict, CliError> {
    let shown = crate::storage::postgres::shown_url(url);
    if !crate::storage::postgres::is_postgres_url(url) {
        return Err(CliError::Usage(format!(
            "verify log: invalid_store: {shown} is not a postgres:// URL (a data dir is --data-dir)"
        )));
    }
    let usage = |e: crate::storage::StorageError| CliError::Usage(format!("{shown}: {e}"));
    let backend = crate::storage::PostgresBackend::connect(url).map_err(usage)?;
    match backend.stored_version().map_err(usage)? {
        0 => {
            return Err(CliError::Usage(format!(
                "{shown} holds no pulse-ledger schema"
            )));
        }
        v if v > crate::storage::postgres::SCHEMA_VERSION => {
            return Err(CliError::Usage(format!(
                "{shown}: schema_too_new: schema version {v}; this pulse-ledger knows up to {}",
                crate::storage::postgres::SCHEMA_VERSION
            )));
        }
        _ => {}
    }
    let storage = crate::storage::Storage::new(backend);
    let stored = StoredLog::open_on(&storage).map_err(|e| CliError::Usage(e.to_string()))?;
    from_stored(stored, key, earlier, threads, |origin| {
        let Some(key_file) = key_file else {
            eprintln!(
                "note: no --key-file, so the store's indexes were not checked (the entries were)"
            );
            return None;
        };
        let dir = key_file.parent().unwrap_or(Path::new("."));
        let mut config = crate::ledger::LedgerConfig::new(dir, origin);
        config.min_free_bytes = 0;
        Some(crate::ledger::Ledger::open_on(
            storage.clone(),
            key_file,
            config,
        ))
    })
}

/// The entry audit of a stored log, then (when `open_ledger` can open it
/// as a ledger) the audit of the indexes the server serves from.
fn from_stored(
    stored: StoredLog,
    key: &Did,
    earlier: Option<&Checkpoint>,
    threads: usize,
    open_ledger: impl FnOnce(
        String,
    ) -> Option<Result<crate::ledger::Ledger, crate::ledger::LedgerError>>,
) -> Result<Verdict, CliError> {
    let cp = match verified_checkpoint(&stored.checkpoint, key) {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    let mut auditor = LogAuditor::new(threads);
    if let Some(old) = earlier {
        if let Err(e) = compare_checkpoints(old, &cp).and_then(|()| auditor.check_earlier(old)) {
            return Ok(Err(e));
        }
    }
    let mut progress = Progress::new(cp.size);
    let mut start = 0;
    while start < cp.size {
        let end = (start + CHUNK).min(cp.size);
        let chunk = stored
            .entries(start, end)
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let missing = (chunk.len() as u64 != end - start).then(|| {
            let at = start + chunk.len() as u64;
            AuditError::at(
                at,
                AuditCode::SizeMismatch,
                format!(
                    "entry {at} is missing from the store, below the checkpoint's size {}",
                    cp.size
                ),
            )
        });
        if let Some(e) = auditor.push(&chunk).err().or(missing) {
            progress.done();
            return Ok(Err(e));
        }
        progress.show(end);
        start = end;
    }
    progress.done();
    let summary = match auditor.finish(&cp) {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    let note = stored.checkpoint.clone();
    let origin = stored.origin.clone();
    drop(stored);
    // The entries are sound; now the indexes the server serves from
    // (spec/ledger.md, "Audit").
    let Some(ledger) = open_ledger(origin) else {
        return Ok(Ok((summary, note)));
    };
    let ledger = ledger.and_then(|l| {
        // Signatures were just verified, entry by entry.
        let r = l.audit_structure();
        l.close();
        r
    });
    if let Err(e) = ledger {
        return Ok(Err(AuditError::new(
            AuditCode::StoreIntegrity,
            e.to_string(),
        )));
    }
    Ok(Ok((summary, note)))
}
