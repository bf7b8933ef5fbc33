//! `pulse-ledger schedule …`: recurring schedules on a server
//! (spec/pulse.md, "Schedules").

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use super::client::{ServerArg, runtime};
use super::error::CliError;
use super::jobs::{connect, handler_did};
use super::output::escape;
use crate::api::proto;

/// Recurring schedules.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ScheduleCmd {
    /// Create a schedule: at each occurrence it enqueues an ordinary job
    /// for the handler, exactly once (its idempotency key is
    /// `schedule:<ID>:<occurrence ms>`). Prints the schedule's ID.
    #[command(
        after_help = "\
Examples:
  pulse-ledger schedule create --handler reports.daily --cron \"0 9 * * 1-5\" \\
      --timezone Europe/Paris --payload report.json
  pulse-ledger schedule create --handler did:key:z6Mk... --every 30s --overlap allow
  pulse-ledger schedule create --handler git.ingest --cron \"*/5 * * * *\" --missed skip

A cron pattern has five fields (minute hour day-of-month month day-of-week),
or six with seconds first; names (MON, JAN), ranges, steps, L, W and # work.
It is read in --timezone (an IANA name; default UTC): a local time that
occurs twice when clocks go back fires once; one skipped when they go
forward fires just after the gap. --every counts from the creation.

Overlap: skip (default) skips an occurrence while the previous job has not
finished; allow enqueues it anyway. Missed (occurrences that passed while
the server was stopped): run_once (default) runs the latest one, late;
skip runs none more than a minute late. Both count the rest as missed.",
        group(clap::ArgGroup::new("when").required(true).args(["cron", "every"]))
    )]
    Create {
        #[command(flatten)]
        server: ServerArg,
        /// The handler (did:key or name).
        #[arg(long, value_name = "DID|NAME")]
        handler: String,
        /// A cron pattern.
        #[arg(long, value_name = "PATTERN")]
        cron: Option<String>,
        /// An interval (`30s`, `15m`, `2h`, `1d`; at least 1s).
        #[arg(long, value_name = "DURATION", value_parser = parse_every)]
        every: Option<u64>,
        /// The IANA time zone of the cron pattern (default: UTC).
        #[arg(long, value_name = "ZONE", requires = "cron")]
        timezone: Option<String>,
        /// Each job's payload file, or - for standard input.
        #[arg(long, value_name = "FILE")]
        payload: Option<PathBuf>,
        /// Each job's priority, 0..9.
        #[arg(long, default_value_t = 0)]
        priority: u32,
        /// Lower the handler's attempt limit.
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Lower the handler's per-attempt timeout, ms.
        #[arg(long, value_name = "MS")]
        timeout_ms: Option<u64>,
        /// Lower (or set) each job's cost limit.
        #[arg(long)]
        max_cost: Option<u64>,
        /// skip or allow.
        #[arg(long, default_value = "skip", value_parser = ["skip", "allow"])]
        overlap: String,
        /// run_once or skip.
        #[arg(long, default_value = "run_once", value_parser = ["run_once", "skip"])]
        missed: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List schedules, oldest first.
    #[command(after_help = "\
Examples:
  pulse-ledger schedule list
  pulse-ledger schedule list --handler reports.daily --json")]
    List {
        #[command(flatten)]
        server: ServerArg,
        /// Only this handler's (did:key or name).
        #[arg(long, value_name = "DID|NAME")]
        handler: Option<String>,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Show a schedule, with its next five occurrences.
    #[command(
        after_help = "Example:\n  pulse-ledger schedule show 0000019b76daa8007c1f3e5a9b2d4c68"
    )]
    Show {
        #[command(flatten)]
        server: ServerArg,
        /// Schedule ID (32 hex digits).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pause a schedule: it fires nothing until resumed.
    #[command(
        after_help = "Example:\n  pulse-ledger schedule pause 0000019b76daa8007c1f3e5a9b2d4c68"
    )]
    Pause {
        #[command(flatten)]
        server: ServerArg,
        /// Schedule ID (32 hex digits).
        id: String,
    },
    /// Resume a paused schedule from its next occurrence (those while it
    /// was paused are not run).
    #[command(
        after_help = "Example:\n  pulse-ledger schedule resume 0000019b76daa8007c1f3e5a9b2d4c68"
    )]
    Resume {
        #[command(flatten)]
        server: ServerArg,
        /// Schedule ID (32 hex digits).
        id: String,
    },
    /// Delete a schedule (the jobs it enqueued stay).
    #[command(
        after_help = "Example:\n  pulse-ledger schedule delete 0000019b76daa8007c1f3e5a9b2d4c68"
    )]
    Delete {
        #[command(flatten)]
        server: ServerArg,
        /// Schedule ID (32 hex digits).
        id: String,
    },
}

fn parse_every(text: &str) -> Result<u64, String> {
    humantime::parse_duration(text)
        .map(|d| d.as_millis() as u64)
        .map_err(|e| format!("{text:?} is not a duration such as 30s, 15m, 2h or 1d ({e})"))
}

fn parse_id(text: &str) -> Result<Vec<u8>, CliError> {
    match hex::decode(text) {
        Ok(b) if b.len() == 16 => Ok(b),
        _ => Err(CliError::Usage(format!(
            "{text:?} is not a schedule ID (32 hex digits)"
        ))),
    }
}

/// An RFC 3339 time in UTC, to the second.
fn time(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

fn when(s: &proto::Schedule) -> String {
    if s.cron.is_empty() {
        format!(
            "every {}",
            humantime::format_duration(std::time::Duration::from_millis(s.every_ms))
        )
    } else {
        let tz = if s.timezone.is_empty() {
            "UTC"
        } else {
            &s.timezone
        };
        format!("cron {:?} {}", escape(&s.cron), escape(tz))
    }
}

fn to_json(s: &proto::Schedule) -> serde_json::Value {
    json!({
        "id": hex::encode(&s.id), "handler": s.handler, "cron": s.cron, "timezone": s.timezone,
        "every_ms": s.every_ms, "priority": s.priority, "overlap": s.overlap, "missed": s.missed,
        "paused": s.paused, "created_at_ms": s.created_at_ms, "next_at_ms": s.next_at_ms,
        "last_fired_at_ms": s.last_fired_at_ms, "last_job": hex::encode(&s.last_job),
        "fired": s.fired, "skipped": s.skipped, "missed_count": s.missed_count,
        "last_error": s.last_error, "upcoming_ms": s.upcoming_ms, "payload": hex::encode(&s.payload),
    })
}

/// `ID STATE WHEN next TIME fired N skipped N missed N [error: E]`.
fn line(s: &proto::Schedule) -> String {
    let state = if s.paused { "paused" } else { "active" };
    let error = if s.last_error.is_empty() {
        String::new()
    } else {
        format!(" error: {}", escape(&s.last_error))
    };
    format!(
        "{} {state} {} handler {} next {} fired {} skipped {} missed {}{error}",
        hex::encode(&s.id),
        when(s),
        escape(&s.handler),
        time(s.next_at_ms),
        s.fired,
        s.skipped,
        s.missed_count
    )
}

fn print(s: &proto::Schedule, json: bool) {
    if json {
        println!("{}", to_json(s));
    } else {
        println!("{}", line(s));
    }
}

pub(crate) fn run(cmd: ScheduleCmd) -> Result<ExitCode, CliError> {
    runtime()?.block_on(async move {
        match cmd {
            ScheduleCmd::Create {
                server,
                handler,
                cron,
                every,
                timezone,
                payload,
                priority,
                max_attempts,
                timeout_ms,
                max_cost,
                overlap,
                missed,
                json,
            } => {
                let payload = super::jobs::read_payload(payload.as_deref())?;
                let handler = handler_did(&server, &handler).await?;
                let mut c = connect(&server).await?;
                let request = proto::CreateScheduleRequest {
                    handler,
                    cron: cron.unwrap_or_default(),
                    timezone: timezone.unwrap_or_default(),
                    every_ms: every.unwrap_or(0),
                    payload,
                    priority,
                    max_attempts: max_attempts.unwrap_or(0),
                    timeout_ms: timeout_ms.unwrap_or(0),
                    max_cost: max_cost.unwrap_or(0),
                    overlap,
                    missed,
                };
                let r = c
                    .deadline
                    .call("CreateSchedule", c.rpc.create_schedule(request))
                    .await?;
                let s = r.schedule.unwrap_or_default();
                if json {
                    print(&s, true);
                } else {
                    println!("{}", hex::encode(&s.id));
                    eprintln!("{}; next at {}", when(&s), time(s.next_at_ms));
                }
            }
            ScheduleCmd::List {
                server,
                handler,
                json,
            } => {
                let handler = match handler {
                    Some(h) => handler_did(&server, &h).await?,
                    None => String::new(),
                };
                let mut c = connect(&server).await?;
                let mut token = Vec::new();
                loop {
                    let request = proto::ListSchedulesRequest {
                        handler: handler.clone(),
                        page_size: 1000,
                        page_token: token,
                    };
                    let page = c
                        .deadline
                        .call("ListSchedules", c.rpc.list_schedules(request))
                        .await?;
                    for s in &page.schedules {
                        print(s, json);
                    }
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    token = page.next_page_token;
                }
            }
            ScheduleCmd::Show { server, id, json } => {
                let request = proto::GetScheduleRequest { id: parse_id(&id)? };
                let mut c = connect(&server).await?;
                let r = c
                    .deadline
                    .call("GetSchedule", c.rpc.get_schedule(request))
                    .await?;
                let s = r.schedule.unwrap_or_default();
                if json {
                    print(&s, true);
                } else {
                    println!("{}", line(&s));
                    println!(
                        "  overlap {}, missed {}, priority {}",
                        s.overlap, s.missed, s.priority
                    );
                    if s.last_fired_at_ms > 0 {
                        println!(
                            "  last fired for {}: job {}",
                            time(s.last_fired_at_ms),
                            hex::encode(&s.last_job)
                        );
                    }
                    for at in &s.upcoming_ms {
                        println!("  next: {}", time(*at));
                    }
                }
            }
            ScheduleCmd::Pause { server, id } => pause(&server, &id, true).await?,
            ScheduleCmd::Resume { server, id } => pause(&server, &id, false).await?,
            ScheduleCmd::Delete { server, id } => {
                let request = proto::GetScheduleRequest { id: parse_id(&id)? };
                let mut c = connect(&server).await?;
                c.deadline
                    .call("DeleteSchedule", c.rpc.delete_schedule(request))
                    .await?;
                println!("deleted schedule {id}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn pause(server: &ServerArg, id: &str, paused: bool) -> Result<(), CliError> {
    let request = proto::PauseScheduleRequest {
        id: parse_id(id)?,
        paused,
    };
    let mut c = connect(server).await?;
    let r = c
        .deadline
        .call("PauseSchedule", c.rpc.pause_schedule(request))
        .await?;
    println!("{}", line(&r.schedule.unwrap_or_default()));
    Ok(())
}
