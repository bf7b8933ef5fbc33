//! `pulse-ledger inspect`: an attestation, for people.

use std::path::PathBuf;
use std::process::ExitCode;

use super::error::CliError;
use super::files;
use super::output::escape;
use crate::{Action, Schema};

/// Print an attestation for people (or as JSON).
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  pulse-ledger inspect h0.att
  pulse-ledger inspect --json h0.att | jq .statement.schema

The file is verified first; an invalid file prints the broken rule and exits 1.")]
pub(crate) struct Args {
    /// Attestation file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Print {"id", "size", "body", "statement"} as JSON (body as hex).
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> Result<ExitCode, CliError> {
    let att = files::read_attestation(&args.file)?;
    let st = att.statement();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "id": att.id().to_string(),
                "size": att.envelope().len(),
                "body": hex::encode(att.body()),
                "statement": st.to_json(),
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("id         {}", att.id());
    println!(
        "size       {} bytes (body {} bytes)",
        att.envelope().len(),
        att.body().len()
    );
    println!("kind       {}", st.kind());
    println!("subject    {}", st.subject);
    println!("signer     {}", st.signer);
    println!("seq        {}", st.seq);
    if let Some(p) = st.prev {
        println!("prev       {p}");
    }
    println!("issued_at  {} ({})", st.issued_at, utc(st.issued_at));
    match &st.action {
        Action::Register(s) | Action::Update(s) => print_schema(s),
        Action::Rotate { new_key } => println!("new_key    {new_key}"),
        Action::Revoke { reason } => println!(
            "reason     {}",
            reason.as_deref().map_or("(none given)".into(), escape)
        ),
    }
    println!("signatures verified");
    Ok(ExitCode::SUCCESS)
}

/// One line naming a schema (escaped: it is printed as is).
pub(crate) fn describe_schema(schema: &Schema) -> String {
    let line = match schema {
        Schema::Handler(h) => format!("{} {} (plugin {})", h.name, h.version, h.plugin),
        Schema::Plugin(p) => format!(
            "{} {} (protocol {}{})",
            p.name,
            p.version,
            p.protocol,
            p.endpoint
                .as_deref()
                .map(|e| format!(", endpoint {e}"))
                .unwrap_or_default()
        ),
    };
    escape(&line).into_owned()
}

fn print_schema(schema: &Schema) {
    let Schema::Handler(h) = schema else {
        if let Schema::Plugin(p) = schema {
            println!("name       {}", escape(&p.name));
            println!("version    {}", escape(&p.version));
            println!("protocol   {}", p.protocol);
            println!(
                "endpoint   {}",
                p.endpoint
                    .as_deref()
                    .map_or("(spawned locally)".into(), escape)
            );
            if let Some(d) = &p.description {
                println!("describe   {}", escape(d));
            }
        }
        return;
    };
    println!("name       {}", escape(&h.name));
    println!("version    {}", escape(&h.version));
    println!("plugin     {}", h.plugin);
    println!(
        "timeout    {} ms{}",
        h.effective_timeout_ms(),
        default_note(h.timeout_ms.is_none())
    );
    println!(
        "attempts   {}{}",
        h.effective_max_attempts(),
        default_note(h.max_attempts.is_none())
    );
    println!(
        "max_cost   {}",
        h.max_cost.map_or("no budget".into(), |c| c.to_string())
    );
    println!(
        "concurrency {}",
        h.max_concurrency
            .map_or("no limit".into(), |c| c.to_string())
    );
    if let Some(d) = &h.description {
        println!("describe   {}", escape(d));
    }
    if let Some(s) = &h.input_schema {
        println!("input      {} bytes of JSON Schema", s.len());
    }
    if let Some(s) = &h.output_schema {
        println!("output     {} bytes of JSON Schema", s.len());
    }
    if let (Some(code), Some(digest)) = (&h.code, h.code_digest()) {
        println!(
            "code       {} bytes, blake3 {}",
            code.len(),
            hex::encode(digest)
        );
    }
}

fn default_note(is_default: bool) -> &'static str {
    if is_default { " (default)" } else { "" }
}

/// Unix milliseconds as an RFC 3339 UTC timestamp.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm), valid for all u64 days
    // this format allows (issued_at < 2^53 ms).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::utc(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
