//! The script plugin: runs user-created handlers whose signed schema
//! carries their code inline. For every job it re-verifies the handler
//! statement Pulse authorised the attempt under (signature, ID, subject,
//! and that the schema names this plugin), then runs the code with
//! `python3` in a subprocess: no shell, payload on stdin, result from
//! stdout, each stderr line to the job's log, the job's deadline enforced.
//!
//! ```text
//! pulse-script-plugin --key plugin.key [--plugin DID] [--python PATH]
//! ```
//!
//! Exit status 0 is success (stdout is the result, at most 1 MiB); 75
//! (EX_TEMPFAIL) is a retryable failure; anything else, or a signal, is a
//! failure that is not retried.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use pulse_ledger::plugin::sdk::{
    JobContext, JobError, JobHandler, PluginServer, async_trait, load_key,
};
use pulse_ledger::{Did, Schema, verify_attestation};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Largest result read from a script's stdout.
const MAX_OUTPUT: u64 = 1024 * 1024;
/// The exit status that asks for a retry (sysexits.h EX_TEMPFAIL).
const EX_TEMPFAIL: i32 = 75;

struct Runner {
    plugin: Did,
    python: Arc<str>,
}

impl Runner {
    /// The handler's code, after checking the statement it came in.
    fn code(&self, ctx: &JobContext) -> Result<Vec<u8>, JobError> {
        let (envelope, id) = ctx.handler_attestation();
        let att = verify_attestation(envelope).map_err(|e| {
            JobError::fatal(format!("the handler attestation does not verify: {e}"))
        })?;
        if att.id().as_bytes().as_slice() != id {
            return Err(JobError::fatal(
                "the handler attestation is not the one named by its ID",
            ));
        }
        let st = att.statement();
        if st.subject.to_string() != ctx.handler() {
            return Err(JobError::fatal(
                "the handler attestation is about another handler",
            ));
        }
        let Some(Schema::Handler(schema)) = st.schema() else {
            return Err(JobError::fatal(
                "the handler attestation carries no handler schema",
            ));
        };
        if schema.plugin != self.plugin {
            return Err(JobError::fatal(format!(
                "plugin_not_authorised: the handler's schema names {}, not this plugin",
                schema.plugin
            )));
        }
        schema
            .code
            .clone()
            .ok_or_else(|| JobError::fatal("the handler's schema has no code"))
    }
}

#[async_trait]
impl JobHandler for Runner {
    async fn execute(&self, ctx: JobContext, payload: Vec<u8>) -> Result<Vec<u8>, JobError> {
        let code = self.code(&ctx)?;
        let code = String::from_utf8(code).map_err(|_| JobError::fatal("the code is not UTF-8"))?;
        ctx.log(format!(
            "running code blake3:{}",
            blake3::hash(code.as_bytes()).to_hex()
        ))
        .await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let left = Duration::from_millis(ctx.deadline_ms().saturating_sub(now));
        let mut child = tokio::process::Command::new(&*self.python)
            // Isolated mode: no user site-packages, no PYTHON* variables.
            .args(["-I", "-c", &code])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Cancelled or past the deadline: the future is dropped and the
            // process killed.
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| JobError::retryable(format!("cannot start {}: {e}", self.python)))?;
        let (mut stdin, stdout, stderr) =
            match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
                (Some(i), Some(o), Some(e)) => (i, o, e),
                _ => return Err(JobError::retryable("the script's pipes are missing")),
            };
        let feed = async move {
            let _ = stdin.write_all(&payload).await;
            drop(stdin);
        };
        let read = async move {
            let mut out = Vec::new();
            let mut limited = stdout.take(MAX_OUTPUT + 1);
            limited.read_to_end(&mut out).await.map(|_| out)
        };
        let mut tail: Vec<String> = Vec::new();
        let logs = async {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                ctx.log(line.clone()).await;
                tail.push(line);
                if tail.len() > 10 {
                    tail.remove(0);
                }
            }
        };
        let run = async { tokio::join!(feed, read, logs, child.wait()) };
        let (_, out, _, status) = tokio::time::timeout(left, run)
            .await
            .map_err(|_| JobError::retryable("the script ran past the job's deadline"))?;
        let out = out.map_err(|e| JobError::retryable(format!("reading the result: {e}")))?;
        let status =
            status.map_err(|e| JobError::retryable(format!("waiting for the script: {e}")))?;
        if out.len() as u64 > MAX_OUTPUT {
            return Err(JobError::fatal(format!(
                "the result is over {MAX_OUTPUT} bytes"
            )));
        }
        match status.code() {
            Some(0) => Ok(out),
            Some(EX_TEMPFAIL) => Err(JobError::retryable(format!(
                "exit {EX_TEMPFAIL}: {}",
                tail.join("\n")
            ))),
            Some(n) => Err(JobError::fatal(format!("exit {n}: {}", tail.join("\n")))),
            None => Err(JobError::fatal(format!(
                "killed by a signal: {}",
                tail.join("\n")
            ))),
        }
    }
}

fn usage(why: &str) -> ! {
    eprintln!(
        "pulse-script-plugin: {why}\nusage: pulse-script-plugin --key FILE [--plugin DID] [--python PATH]"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut key, mut plugin, mut python) = (None, None, "python3".to_owned());
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--key" => key = Some(value()),
            "--plugin" => plugin = Some(value()),
            "--python" => python = value(),
            "-h" | "--help" => usage("runs handlers whose signed schema carries Python code"),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let key = key
        .or_else(|| std::env::var("PULSE_PLUGIN_KEY").ok())
        .unwrap_or_else(|| usage("--key is required"));
    let key = load_key(key.as_ref()).unwrap_or_else(|e| usage(&e));
    let id = match plugin {
        Some(p) => Did::parse(&p).unwrap_or_else(|e| usage(&format!("--plugin: {e}"))),
        None => {
            Did::from_verifying_key(&key.verifying_key()).unwrap_or_else(|e| usage(&e.to_string()))
        }
    };
    let runner = Runner {
        plugin: id.clone(),
        python: python.into(),
    };
    let server = PluginServer::new(key)
        .plugin_id(id)
        .metadata(
            "pulse-script-plugin",
            env!("CARGO_PKG_VERSION"),
            "runs handlers whose signed schema carries Python code",
        )
        .serve_any(runner);
    if let Err(e) = server.serve().await {
        eprintln!("pulse-script-plugin: {e}");
        std::process::exit(1);
    }
}
