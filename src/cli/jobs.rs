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
    /// List jobs in one state, oldest first.
    #[command(
        after_help = "Examples:\n  pulse-ledger job list --state retrying --page-size 50\n  pulse-ledger job list --handler did:key:z6Mk... --as-key handler.key --state succeeded"
    )]
    List {
        #[command(flatten)]
        server: ServerArg,
        /// queued, held, running, retrying, succeeded, dead or cancelled.
        #[arg(long, default_value = "queued")]
        state: String,
        /// Only this handler's jobs (did:key): all a caller may list
        /// without the read scope over every handler.
        #[arg(long, value_name = "DID")]
        handler: Option<String>,
        /// Jobs per page (1..1000).
        #[arg(long, default_value_t = 100)]
        page_size: u32,
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
    /// Cancel a job that has not finished.
    #[command(after_help = "Example:\n  pulse-ledger job cancel 0000019b76daa8007c1f3e5a9b2d4c68")]
    Cancel {
        #[command(flatten)]
        server: ServerArg,
        /// Job ID (32 hex digits).
        id: String,
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

/// `--delay`: a duration such as `90s`, `15m`, `2h` or `1d`.
fn parse_delay(text: &str) -> Result<u64, String> {
    humantime::parse_duration(text)
        .map(|d| d.as_millis() as u64)
        .map_err(|e| format!("{text:?} is not a duration such as 90s, 15m, 2h or 1d ({e})"))
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
    // Attempts cut short by a server stop use none of the job's attempts.
    let interrupted = j
        .attempt_history
        .iter()
        .filter(|a| a.outcome == "interrupted")
        .count();
    let used = (j.attempts as usize).saturating_sub(interrupted);
    let interrupted = if interrupted > 0 {
        format!(" (+{interrupted} interrupted)")
    } else {
        String::new()
    };
    format!(
        "{id} {}{reason} attempts {used}/{}{interrupted} cost {} progress {}%{message}{error}",
        escape(&j.state),
        j.max_attempts,
        j.total_cost,
        j.progress_percent,
    )
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
                let payload = match payload {
                    None => Vec::new(),
                    Some(p) if p.as_os_str() == "-" => {
                        let mut buf = Vec::new();
                        std::io::stdin()
                            .take(crate::pulse::MAX_PAYLOAD_BYTES as u64 + 1)
                            .read_to_end(&mut buf)
                            .map_err(|e| CliError::Usage(format!("stdin: {e}")))?;
                        buf
                    }
                    Some(p) => std::fs::read(&p).map_err(super::files::io(&p))?,
                };
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
                page_size,
                json,
            } => {
                let mut client = connect(&server).await?;
                let mut token = Vec::new();
                loop {
                    let request = proto::ListJobsRequest {
                        state: state.clone(),
                        page_size,
                        page_token: token,
                        handler: handler.clone().unwrap_or_default(),
                    };
                    let page = client.deadline.call("ListJobs", client.rpc.list_jobs(request)).await?;
                    for j in &page.jobs {
                        print_job(j, json);
                    }
                    if page.next_page_token.is_empty() {
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
            JobCmd::Cancel { server, id } => {
                let request = proto::CancelJobRequest { id: parse_id(&id)? };
                let mut c = connect(&server).await?;
                let j = c.deadline.call("CancelJob", c.rpc.cancel_job(request)).await?;
                print_job(&j.job.unwrap_or_default(), false);
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
