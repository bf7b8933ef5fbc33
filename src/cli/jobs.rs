//! `pulse-ledger job …` and `pulse-ledger budget …`: the jobs API from the
//! command line.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use super::client::{ServerArg, call_failed, runtime};
use super::deadline::Deadline;
use super::error::CliError;
use super::output::escape;
use crate::api::AuthedChannel;
use crate::api::proto::{self, jobs_client::JobsClient};
use serde_json::json;
use tokio_stream::StreamExt;

/// Jobs.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum JobCmd {
    /// Enqueue a job for a handler.
    #[command(after_help = "\
Examples:
  pulse-ledger job submit did:key:z6Mk... --payload input.json
  echo '{\"n\": 3}' | pulse-ledger job submit did:key:z6Mk... --payload - --priority 7 \\
      --idempotency-key order-42 --max-cost 500 --wait
  pulse-ledger job submit did:key:z6Mk... --payload input.json --delay 15m
  pulse-ledger job submit did:key:z6Mk... --payload input.json --run-at 2026-12-24T18:00:00Z")]
    Submit {
        #[command(flatten)]
        server: ServerArg,
        /// The handler's did:key.
        handler: String,
        /// Payload file, or - for standard input (at most 1 MiB).
        #[arg(long, value_name = "FILE")]
        payload: Option<PathBuf>,
        /// 0..9, higher first.
        #[arg(long, default_value_t = 0)]
        priority: u32,
        /// Enqueueing the same key again for this handler returns the same job.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Lower the handler's per-attempt timeout, ms.
        #[arg(long, value_name = "MS")]
        timeout_ms: Option<u64>,
        /// Lower (or set) the job's cost limit.
        #[arg(long)]
        max_cost: Option<u64>,
        /// Lower the handler's attempt limit.
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Run no earlier than this time: RFC 3339 in UTC
        /// (`2026-12-24T18:00:00Z`) or Unix milliseconds. Default: now.
        #[arg(long, value_name = "TIME", conflicts_with = "delay", value_parser = parse_run_at)]
        run_at: Option<u64>,
        /// Run no earlier than this long from now (`90s`, `15m`, `2h`, `1d`).
        #[arg(long, value_name = "DURATION", value_parser = parse_delay)]
        delay: Option<u64>,
        /// The job that spawned this one (32 hex digits): recorded on the
        /// job for people and tools (a plugin enqueuing follow-up work
        /// names the job it runs); it changes nothing in scheduling.
        #[arg(long, value_name = "ID")]
        parent: Option<String>,
        /// Follow the job until it finishes.
        #[arg(long)]
        wait: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a job.
    #[command(
        after_help = "Example:\n  pulse-ledger job get 0000019b76daa8007c1f3e5a9b2d4c68\n\nIn --json, the result is the hex of its bytes (`result`), like every byte field.\nattempts N/M counts the attempts that use the job's limit: attempts cut short\nby a server stop (interrupted) use none and are shown apart."
    )]
    Get {
        #[command(flatten)]
        server: ServerArg,
        /// Job ID (32 hex digits).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List jobs, newest first: every state unless --state names one.
    /// Prints one page (--page-size) and, if there is more, the
    /// --page-token of the next on standard error (pages that held no
    /// matching job are passed over); --all prints every page.
    #[command(after_help = "\
Examples:
  pulse-ledger job list
  pulse-ledger job list --state dead --since 1h
  pulse-ledger job list --handler git.ingest --state retrying --all --json
  pulse-ledger job list --handler did:key:z6Mk... --as-key handler.key --since 2026-12-01T00:00:00Z

--handler takes a did:key or a handler's name; a name more than one handler
has is refused with their did:keys.")]
    List {
        #[command(flatten)]
        server: ServerArg,
        /// queued, held, running, retrying, succeeded, dead or cancelled
        /// (default: every state).
        #[arg(long)]
        state: Option<String>,
        /// Only this handler's jobs (did:key or name): all a caller may
        /// list without the read scope over every handler.
        #[arg(long, value_name = "DID|NAME")]
        handler: Option<String>,
        /// Only jobs created since: a time (RFC 3339 or Unix ms) or a
        /// duration ago (`90s`, `15m`, `2h`, `1d`).
        #[arg(long, value_name = "TIME|DURATION", value_parser = parse_since)]
        since: Option<u64>,
        /// Oldest first.
        #[arg(long)]
        oldest_first: bool,
        /// Jobs per page (1..1000).
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        /// Continue from a previous page (the token it printed).
        #[arg(long, value_name = "HEX")]
        page_token: Option<String>,
        /// Print every page.
        #[arg(long)]
        all: bool,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Follow a job until it finishes: a progress bar on a terminal, else one
    /// line (or JSON line) per change. Exit status 0 if it succeeded, 1 if not.
    #[command(
        after_help = "Example:\n  pulse-ledger job watch 0000019b76daa8007c1f3e5a9b2d4c68 --json"
    )]
    Watch {
        #[command(flatten)]
        server: ServerArg,
        /// Job ID (32 hex digits).
        id: String,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Print a job's log: the lines its plugin reported (for the script
    /// plugin, the script's stderr), one per line as `[attempt N] text`.
    /// With --follow, keep printing new lines until the job finishes.
    #[command(after_help = "\
Examples:
  pulse-ledger job log 0000019b76daa8007c1f3e5a9b2d4c68
  pulse-ledger job log 0000019b76daa8007c1f3e5a9b2d4c68 --follow --json")]
    Log {
        #[command(flatten)]
        server: ServerArg,
        /// Job ID (32 hex digits).
        id: String,
        /// Keep printing new lines until the job finishes.
        #[arg(long)]
        follow: bool,
        /// Print JSON lines: {"seq", "attempt", "at_ms", "line"}.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job that has not finished; or, with --handler and/or
    /// --state instead of an ID, every unfinished job they select (a bulk
    /// cancel, which needs --yes and prints how many it cancelled).
    #[command(after_help = "\
Examples:
  pulse-ledger job cancel 0000019b76daa8007c1f3e5a9b2d4c68
  pulse-ledger job cancel --handler git.ingest --state queued --yes
  pulse-ledger job cancel --handler did:key:z6Mk... --yes     # queued, held, running and retrying")]
    Cancel {
        #[command(flatten)]
        server: ServerArg,
        /// Job ID (32 hex digits).
        #[arg(required_unless_present_any = ["handler", "state"], conflicts_with_all = ["handler", "state"])]
        id: Option<String>,
        /// Bulk cancel: this handler's jobs (did:key or name).
        #[arg(long, value_name = "DID|NAME")]
        handler: Option<String>,
        /// Bulk cancel: jobs in this state (queued, held, running or
        /// retrying; default: all four).
        #[arg(long)]
        state: Option<String>,
        /// Confirm a bulk cancel.
        #[arg(long)]
        yes: bool,
    },
    /// Run a dead or cancelled job again: the same job (same ID, its
    /// attempts kept as history) is queued at once with a new series of
    /// attempts, which has the job's whole attempt limit.
    #[command(after_help = "\
Examples:
  pulse-ledger job retry 0000019b76daa8007c1f3e5a9b2d4c68
  pulse-ledger job retry 0000019b76daa8007c1f3e5a9b2d4c68 --wait")]
    Retry {
        #[command(flatten)]
        server: ServerArg,
        /// Job ID (32 hex digits).
        id: String,
        /// Follow the job until it finishes.
        #[arg(long)]
        wait: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Per-handler cost budgets.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum BudgetCmd {
    /// Show a handler's budget and spend (no handler: the default budget).
    #[command(
        after_help = "Examples:\n  pulse-ledger budget show did:key:z6Mk...\n  pulse-ledger budget show"
    )]
    Show {
        #[command(flatten)]
        server: ServerArg,
        /// The handler's did:key.
        handler: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set a handler's budget (no handler: the default). Give at least one
    /// limit; a limit not given keeps its current value; 0 means no limit.
    #[command(
        after_help = "Examples:\n  pulse-ledger budget set did:key:z6Mk... --per-hour 1000 --per-day 10000\n  pulse-ledger budget set --per-day 50000\n  pulse-ledger budget clear did:key:z6Mk...   # no limits",
        group(clap::ArgGroup::new("limit").required(true).multiple(true).args(["per_hour", "per_day"]))
    )]
    Set {
        #[command(flatten)]
        server: ServerArg,
        /// The handler's did:key.
        handler: Option<String>,
        /// Cost units per rolling hour (0: no limit).
        #[arg(long)]
        per_hour: Option<u64>,
        /// Cost units per rolling day (0: no limit).
        #[arg(long)]
        per_day: Option<u64>,
    },
    /// Remove a handler's limits (no handler: the default budget's).
    #[command(
        after_help = "Examples:\n  pulse-ledger budget clear did:key:z6Mk...\n  pulse-ledger budget clear"
    )]
    Clear {
        #[command(flatten)]
        server: ServerArg,
        /// The handler's did:key.
        handler: Option<String>,
    },
}

/// A jobs client and the deadline of each of its calls.
pub(crate) struct Jobs {
    pub(crate) rpc: JobsClient<AuthedChannel>,
    pub(crate) deadline: Deadline,
}

pub(crate) async fn connect(server: &ServerArg) -> Result<Jobs, CliError> {
    // The token's transport is checked before anything is dialed.
    server.bearer()?;
    let channel = server.channel().await?;
    let bearer = server.jobs_bearer(&channel).await?;
    Ok(Jobs {
        rpc: JobsClient::with_interceptor(channel, bearer)
            .max_decoding_message_size(crate::api::MAX_RESPONSE_BYTES),
        deadline: server.deadline(),
    })
}

/// `--run-at`: Unix milliseconds, or an RFC 3339 time.
fn parse_run_at(text: &str) -> Result<u64, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map_err(|_| format!("{text:?} is too large for Unix milliseconds"));
    }
    let at = humantime::parse_rfc3339_weak(text).map_err(|e| {
        format!("{text:?} is not a time: give RFC 3339 (2026-12-24T18:00:00Z) or Unix milliseconds ({e})")
    })?;
    at.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .map_err(|_| format!("{text:?} is before 1970"))
}

/// `--since`: a time (as `--run-at`) or a duration before now.
fn parse_since(text: &str) -> Result<u64, String> {
    parse_run_at(text).or_else(|at_error| {
        humantime::parse_duration(text)
            .map(|d| crate::clock::unix_ms().saturating_sub(d.as_millis() as u64))
            .map_err(|_| format!("{at_error}, or a duration ago such as 15m or 2h"))
    })
}

/// A handler named by did:key, or by name: the one handler with exactly
/// that name (revoked ones too: their jobs stay listed).
pub(crate) async fn handler_did(server: &ServerArg, text: &str) -> Result<String, CliError> {
    if text.starts_with("did:") {
        return Ok(text.to_owned());
    }
    let mut registry = super::client::connect(server).await?;
    let mut found = Vec::new();
    let mut token = Vec::new();
    // Names sort together: the pages of this prefix end at the first
    // longer name, but a prefix may be shared by many, so stop at 10 pages.
    for _ in 0..10 {
        let request = proto::ListHandlersRequest {
            name_prefix: text.to_owned(),
            include_revoked: true,
            page_size: 1000,
            page_token: token,
            ..Default::default()
        };
        let page = registry
            .deadline
            .call("ListHandlers", registry.rpc.list_handlers(request))
            .await?;
        found.extend(
            page.handlers
                .into_iter()
                .filter(|h| h.name == text)
                .map(|h| h.did),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(CliError::Usage(format!(
            "no handler is named {:?}: give its did:key, or see `pulse-ledger handler list --name-prefix {}`",
            text,
            escape(text)
        ))),
        many => Err(CliError::Usage(format!(
            "{} handlers are named {:?} (names are not unique): give one did:key of {}",
            many.len(),
            text,
            many.join(", ")
        ))),
    }
}

/// `--delay`: a duration such as `90s`, `15m`, `2h` or `1d`.
fn parse_delay(text: &str) -> Result<u64, String> {
    humantime::parse_duration(text)
        .map(|d| d.as_millis() as u64)
        .map_err(|e| format!("{text:?} is not a duration such as 90s, 15m, 2h or 1d ({e})"))
}

/// A payload file, `-` for standard input (read up to one byte past the
/// limit, so the server names the rule), or nothing.
pub(crate) fn read_payload(path: Option<&std::path::Path>) -> Result<Vec<u8>, CliError> {
    match path {
        None => Ok(Vec::new()),
        Some(p) if p.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .take(crate::pulse::MAX_PAYLOAD_BYTES as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(|e| CliError::Usage(format!("stdin: {e}")))?;
            Ok(buf)
        }
        Some(p) => std::fs::read(p).map_err(super::files::io(p)),
    }
}

fn parse_id(text: &str) -> Result<Vec<u8>, CliError> {
    match hex::decode(text) {
        Ok(b) if b.len() == 16 => Ok(b),
        _ => Err(CliError::Usage(format!(
            "{text:?} is not a job ID (32 hex digits)"
        ))),
    }
}

/// `[#####-----]  50% running 1/3 cost 12 message`, for a terminal. The
/// message is the plugin's, so it is escaped.
fn progress_line(j: &proto::Job) -> String {
    let filled = (j.progress_percent.min(100) / 5) as usize;
    let reason = if j.reason.is_empty() {
        String::new()
    } else {
        format!(" ({})", escape(&j.reason))
    };
    format!(
        "[{}{}] {:>3}% {}{reason} attempt {}/{} cost {} {}",
        "#".repeat(filled),
        "-".repeat(20 - filled),
        j.progress_percent,
        escape(&j.state),
        j.attempts,
        j.max_attempts,
        j.total_cost,
        escape(&j.progress_message)
    )
}

/// A result for people, on one line: UTF-8 text escaped ([`escape`]:
/// newlines too), anything else as hex; at most 1,000 characters.
fn result_text(bytes: &[u8]) -> String {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => escape(t.trim_end()).into_owned(),
        Err(_) => format!("0x{}", hex::encode(bytes)),
    };
    match text.char_indices().nth(1000) {
        Some((at, _)) => format!("{}… ({} bytes)", &text[..at], bytes.len()),
        None => text,
    }
}

/// `ID STATE (REASON) attempts N/M cost C progress P% [message] error:
/// ERROR`, every text from the server or the plugin escaped.
fn job_line(j: &proto::Job) -> String {
    let id = hex::encode(&j.id);
    let reason = if j.reason.is_empty() {
        String::new()
    } else {
        format!(" ({})", escape(&j.reason))
    };
    let message = if j.progress_message.is_empty() {
        String::new()
    } else {
        format!(" [{}]", escape(&j.progress_message))
    };
    let error = if j.last_error.is_empty() {
        String::new()
    } else {
        format!(" error: {}", escape(&j.last_error))
    };
    // Attempts cut short by a server stop use none of the job's attempts,
    // nor do those before a job retry.
    let series = j.attempt_history.iter().skip(j.series_start as usize);
    let interrupted = series.filter(|a| a.outcome == "interrupted").count();
    let used = (j.attempts.saturating_sub(j.series_start) as usize).saturating_sub(interrupted);
    let interrupted = if interrupted > 0 {
        format!(" (+{interrupted} interrupted)")
    } else {
        String::new()
    };
    let retried = if j.series_start > 0 {
        format!(" (retried after {})", j.series_start)
    } else {
        String::new()
    };
    format!(
        "{id} {}{reason} attempts {used}/{}{interrupted}{retried} cost {} progress {}%{message}{error}",
        escape(&j.state),
        j.max_attempts,
        j.total_cost,
        j.progress_percent,
    )
}

/// The creation time in a job ID (its first 8 bytes).
fn created_at_ms(id: &[u8]) -> u64 {
    id.get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

fn print_job(j: &proto::Job, json: bool) {
    let id = hex::encode(&j.id);
    if json {
        println!(
            "{}",
            json!({
                "id": id, "handler": j.handler, "state": j.state, "reason": j.reason,
                "priority": j.priority, "attempts": j.attempts, "max_attempts": j.max_attempts,
                "total_cost": j.total_cost, "max_cost": j.max_cost, "progress": j.progress_percent,
                "progress_message": j.progress_message, "last_error": j.last_error,
                "result": hex::encode(&j.result), "retry_at_ms": j.retry_at_ms, "updated_at_ms": j.updated_at_ms,
                "created_at_ms": created_at_ms(&j.id), "series_start": j.series_start,
                "attempt_history": j.attempt_history.iter().map(|a| json!({
                    "number": a.number, "started_at_ms": a.started_at_ms, "ended_at_ms": a.ended_at_ms,
                    "outcome": a.outcome, "error": a.error, "cost": a.cost, "authorised": a.authorised,
                    "handler_index": a.handler_index, "plugin_index": a.plugin_index,
                })).collect::<Vec<_>>(),
            })
        );
    } else {
        println!("{}", job_line(j));
        if !j.result.is_empty() {
            println!("  result: {}", result_text(&j.result));
        }
    }
}

async fn watch(client: &mut Jobs, id: Vec<u8>, json: bool) -> Result<ExitCode, CliError> {
    // Only the stream's opening has a deadline: a long job may send
    // nothing for a long time.
    let mut stream = client
        .deadline
        .call(
            "WatchJob",
            client.rpc.watch_job(proto::WatchJobRequest { id }),
        )
        .await?;
    use std::io::IsTerminal;
    // On a terminal (and without --json) one line is redrawn in place as a
    // progress bar; otherwise every change is its own line.
    let bar = !json && std::io::stdout().is_terminal();
    let mut last = None;
    while let Some(j) = stream.next().await {
        let j = j.map_err(|s| call_failed(&s))?;
        if bar {
            print!("\r\x1b[2K{}", progress_line(&j));
            let _ = std::io::Write::flush(&mut std::io::stdout());
            if matches!(j.state.as_str(), "succeeded" | "dead" | "cancelled") {
                println!();
            }
        } else {
            print_job(&j, json);
        }
        last = Some(j.state);
    }
    Ok(match last.as_deref() {
        Some("succeeded") => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

pub(crate) fn job(cmd: JobCmd) -> Result<ExitCode, CliError> {
    runtime()?.block_on(async move {
        match cmd {
            JobCmd::Submit {
                server,
                handler,
                payload,
                priority,
                idempotency_key,
                timeout_ms,
                max_cost,
                max_attempts,
                parent,
                wait,
                json,
                run_at,
                delay,
            } => {
                let run_at_ms = match (run_at, delay) {
                    (Some(at), _) => at,
                    (None, Some(d)) => crate::clock::unix_ms().saturating_add(d),
                    (None, None) => 0,
                };
                let parent = parent
                    .as_deref()
                    .map(parse_id)
                    .transpose()?
                    .unwrap_or_default();
                let payload = read_payload(payload.as_deref())?;
                let mut client = connect(&server).await?;
                let request = proto::EnqueueRequest {
                        handler,
                        payload,
                        priority,
                        run_at_ms,
                        idempotency_key: idempotency_key.unwrap_or_default(),
                        max_attempts: max_attempts.unwrap_or(0),
                        timeout_ms: timeout_ms.unwrap_or(0),
                        max_cost: max_cost.unwrap_or(0),
                        parent,
                };
                let r = client.deadline.call("Enqueue", client.rpc.enqueue(request)).await?;
                let job = r.job.unwrap_or_default();
                if !wait {
                    if json {
                        print_job(&job, true);
                    } else {
                        let existing = if r.existing {
                            " (existing job for this idempotency key)"
                        } else {
                            ""
                        };
                        println!("{}{existing}", hex::encode(&job.id));
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                watch(&mut client, job.id, json).await
            }
            JobCmd::Get { server, id, json } => {
                let request = proto::GetJobRequest { id: parse_id(&id)? };
                let mut c = connect(&server).await?;
                let j = c.deadline.call("GetJob", c.rpc.get_job(request)).await?;
                print_job(&j.job.unwrap_or_default(), json);
                Ok(ExitCode::SUCCESS)
            }
            JobCmd::List {
                server,
                state,
                handler,
                since,
                oldest_first,
                page_size,
                page_token,
                all,
                json,
            } => {
                let mut token = match &page_token {
                    Some(t) => match hex::decode(t) {
                        Ok(b) if b.len() == 16 => b,
                        _ => {
                            return Err(CliError::Usage(
                                "--page-token is the 32 hex digits a previous page printed".into(),
                            ));
                        }
                    },
                    None => Vec::new(),
                };
                let handler = match handler {
                    Some(h) => handler_did(&server, &h).await?,
                    None => String::new(),
                };
                let mut client = connect(&server).await?;
                loop {
                    let request = proto::ListJobsRequest {
                        state: state.clone().unwrap_or_default(),
                        page_size,
                        page_token: token,
                        handler: handler.clone(),
                        since_ms: since.unwrap_or(0),
                        oldest_first,
                    };
                    let page = client.deadline.call("ListJobs", client.rpc.list_jobs(request)).await?;
                    for j in &page.jobs {
                        print_job(j, json);
                    }
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    // A page that skipped only other jobs (it may, with a
                    // filter) says nothing to a person: go on to the next.
                    if !all && !page.jobs.is_empty() {
                        eprintln!("next page: --page-token {}", hex::encode(&page.next_page_token));
                        break;
                    }
                    token = page.next_page_token;
                }
                Ok(ExitCode::SUCCESS)
            }
            JobCmd::Watch { server, id, json } => {
                let id = parse_id(&id)?;
                watch(&mut connect(&server).await?, id, json).await
            }
            JobCmd::Log {
                server,
                id,
                follow,
                json,
            } => {
                let id = parse_id(&id)?;
                let mut client = connect(&server).await?;
                let mut after = 0;
                loop {
                    let request = proto::GetJobLogRequest {
                        id: id.clone(),
                        after_seq: after,
                        page_size: 1000,
                    };
                    let page = client.deadline.call("GetJobLog", client.rpc.get_job_log(request)).await?;
                    for l in &page.lines {
                        if json {
                            println!(
                                "{}",
                                json!({"seq": l.seq, "attempt": l.attempt, "at_ms": l.at_ms, "line": l.line})
                            );
                        } else {
                            println!("[attempt {}] {}", l.attempt, escape(&l.line));
                        }
                    }
                    let more = page.next_after_seq != after;
                    after = page.next_after_seq;
                    if more {
                        continue;
                    }
                    if !follow || page.finished {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Ok(ExitCode::SUCCESS)
            }
            JobCmd::Cancel { server, id: Some(id), .. } => {
                let request = proto::CancelJobRequest { id: parse_id(&id)? };
                let mut c = connect(&server).await?;
                let j = c.deadline.call("CancelJob", c.rpc.cancel_job(request)).await?;
                print_job(&j.job.unwrap_or_default(), false);
                Ok(ExitCode::SUCCESS)
            }
            JobCmd::Cancel { server, id: None, handler, state, yes } => {
                if !yes {
                    return Err(CliError::Usage(
                        "a bulk cancel stops every job it selects: add --yes to confirm".into(),
                    ));
                }
                let handler = match handler {
                    Some(h) => handler_did(&server, &h).await?,
                    None => String::new(),
                };
                let mut c = connect(&server).await?;
                let mut total = 0u64;
                loop {
                    let request = proto::CancelJobsRequest {
                        handler: handler.clone(),
                        state: state.clone().unwrap_or_default(),
                    };
                    let r = c.deadline.call("CancelJobs", c.rpc.cancel_jobs(request)).await?;
                    total += r.cancelled;
                    if !r.more {
                        break;
                    }
                }
                println!("cancelled {total} job{}", if total == 1 { "" } else { "s" });
                Ok(ExitCode::SUCCESS)
            }
            JobCmd::Retry { server, id, wait, json } => {
                let request = proto::RetryJobRequest { id: parse_id(&id)? };
                let mut c = connect(&server).await?;
                let r = c.deadline.call("RetryJob", c.rpc.retry_job(request)).await?;
                let job = r.job.unwrap_or_default();
                if wait {
                    return watch(&mut c, job.id, json).await;
                }
                print_job(&job, json);
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

pub(crate) fn budget(cmd: BudgetCmd) -> Result<ExitCode, CliError> {
    runtime()?.block_on(async move {
        match cmd {
            BudgetCmd::Show { server, handler, json } => {
                let request = proto::GetBudgetRequest { handler: handler.unwrap_or_default() };
                let mut c = connect(&server).await?;
                let b = c.deadline.call("GetBudget", c.rpc.get_budget(request)).await?;
                let limit = |v: u64| if v == 0 { "no limit".to_owned() } else { v.to_string() };
                if json {
                    println!("{}", json!({"per_hour": b.per_hour, "per_day": b.per_day, "spent_hour": b.spent_hour, "spent_day": b.spent_day}));
                } else {
                    println!("per hour  {} (spent {})", limit(b.per_hour), b.spent_hour);
                    println!("per day   {} (spent {})", limit(b.per_day), b.spent_day);
                }
            }
            BudgetCmd::Set { server, handler, per_hour, per_day } => {
                let handler = handler.unwrap_or_default();
                let mut c = connect(&server).await?;
                // A limit not given keeps its value: read it first.
                let (per_hour, per_day) = match (per_hour, per_day) {
                    (Some(h), Some(d)) => (h, d),
                    (h, d) => {
                        let now = c.deadline.call("GetBudget", c.rpc.get_budget(proto::GetBudgetRequest { handler: handler.clone() })).await?;
                        (h.unwrap_or(now.per_hour), d.unwrap_or(now.per_day))
                    }
                };
                let request = proto::SetBudgetRequest { handler, per_hour, per_day };
                c.deadline.call("SetBudget", c.rpc.set_budget(request)).await?;
                let limit = |v: u64| if v == 0 { "no limit".to_owned() } else { v.to_string() };
                println!("budget set: per hour {}, per day {}", limit(per_hour), limit(per_day));
            }
            BudgetCmd::Clear { server, handler } => {
                let request = proto::SetBudgetRequest { handler: handler.unwrap_or_default(), per_hour: 0, per_day: 0 };
                let mut c = connect(&server).await?;
                c.deadline.call("SetBudget", c.rpc.set_budget(request)).await?;
                println!("budget cleared: no limits");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn progress_line_draws_a_bar() {
        let j = super::proto::Job {
            state: "running".into(),
            progress_percent: 50,
            attempts: 1,
            max_attempts: 3,
            total_cost: 12,
            progress_message: "halfway".into(),
            ..Default::default()
        };
        assert_eq!(
            super::progress_line(&j),
            "[##########----------]  50% running attempt 1/3 cost 12 halfway"
        );
    }

    #[test]
    fn run_at_and_delay_parse_times_and_durations() {
        assert_eq!(super::parse_run_at("1767225600000"), Ok(1_767_225_600_000));
        assert_eq!(
            super::parse_run_at("2026-01-01T00:00:00Z"),
            Ok(1_767_225_600_000)
        );
        assert!(
            super::parse_run_at("tomorrow")
                .unwrap_err()
                .contains("RFC 3339")
        );
        assert_eq!(super::parse_delay("90s"), Ok(90_000));
        assert_eq!(super::parse_delay("2h"), Ok(7_200_000));
        assert_eq!(super::parse_delay("1d"), Ok(86_400_000));
        assert!(super::parse_delay("soon").unwrap_err().contains("90s"));
    }

    /// `attempts N/M` counts what uses the job's limit: an attempt a server
    /// stop cut short (interrupted) is shown apart (issue 19).
    #[test]
    fn interrupted_attempts_are_not_counted_against_the_limit() {
        let attempt = |outcome: &str| super::proto::JobAttempt {
            outcome: outcome.into(),
            ..Default::default()
        };
        let j = super::proto::Job {
            id: vec![0; 16],
            state: "succeeded".into(),
            attempts: 3,
            max_attempts: 3,
            attempt_history: vec![
                attempt("interrupted"),
                attempt("crashed"),
                attempt("succeeded"),
            ],
            ..Default::default()
        };
        let line = super::job_line(&j);
        assert!(line.contains(" attempts 2/3 (+1 interrupted) "), "{line}");
    }

    /// A plugin's text (progress message, error, result) cannot drive the
    /// terminal or forge a line: it is shown escaped, on the job's line.
    #[test]
    fn plugin_text_is_escaped_in_every_human_line() {
        let j = super::proto::Job {
            id: vec![0xab; 16],
            state: "dead".into(),
            reason: "non_retryable".into(),
            attempts: 1,
            max_attempts: 1,
            progress_percent: 50,
            progress_message: "\x1b[2J\x1b]0;title\x07half".into(),
            last_error: "exit 3\nFAILED entry 1: forged\u{202e}".into(),
            ..Default::default()
        };
        let line = super::job_line(&j);
        assert_eq!(
            line,
            format!(
                "{} dead (non_retryable) attempts 1/1 cost 0 progress 50% \
                 [\\u{{1b}}[2J\\u{{1b}}]0;title\\u{{7}}half] \
                 error: exit 3\\nFAILED entry 1: forged\\u{{202e}}",
                "ab".repeat(16)
            )
        );
        let bar = super::progress_line(&j);
        assert!(
            bar.ends_with("cost 0 \\u{1b}[2J\\u{1b}]0;title\\u{7}half"),
            "{bar}"
        );
        assert_eq!(
            super::result_text(b"line 1\nline 2\x1b[0m\n"),
            "line 1\\nline 2\\u{1b}[0m"
        );
        assert_eq!(super::result_text(&[0xff, 0x1b]), "0xff1b");
        for text in [line, bar, super::result_text("a\x1bb\u{9b}".as_bytes())] {
            assert!(!text.chars().any(|c| c.is_control()), "{text:?}");
        }
    }
}
