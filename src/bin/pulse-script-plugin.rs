//! The script plugin: runs user-created handlers whose signed schema
//! carries their code inline. For every job it re-verifies the handler
//! statement Pulse authorised the attempt under (signature, ID, subject,
//! and that the schema names this plugin), then runs the code with
//! `python3` in a subprocess: no shell, payload on stdin, result from
//! stdout, each stderr line to the job's log, the job's deadline enforced.
//!
//! ```text
//! pulse-script-plugin --key plugin.key [--plugin DID] [--python PATH]
//!     [--scratch-dir DIR] [--memory-mb N] [--cpu-seconds N] [--max-files N]
//!     [--read-only PATH]... [--allow-network] [--allow-weak-confinement]
//!     [--connect URL] [--slots N]
//! ```
//!
//! It listens (Pulse spawns or dials it) unless `--connect URL` (or
//! `PULSE_PLUGIN_CONNECT`) names a server to connect in to; `--slots N`
//! announces how many attempts it runs at once.
//!
//! Exit status 0 is success (stdout is the result, at most 1 MiB); 75
//! (EX_TEMPFAIL) is a retryable failure; anything else, or a signal, is a
//! failure that is not retried.
//!
//! The code is a stranger's, so every attempt runs confined
//! ([`pulse_ledger::plugin::confine`], spec/plugin.md "Confining user
//! code"): the plugin runs itself as `--confined-exec`, a fresh
//! single-threaded process that confines itself and then executes the
//! interpreter. The code can read only the interpreter's files and write
//! only its own scratch directory (removed after the attempt); it has no
//! network, cannot signal, trace or read the plugin or other attempts,
//! cannot start processes, gets a clean environment, and is bounded in CPU
//! time, memory, open files and file size. A handler whose signed schema
//! asks for `"network": "outbound"` gets sockets that connect out (never a
//! TCP listener) only if the plugin runs with `--allow-network`; otherwise
//! its jobs fail (`network_not_allowed`, not retried). When the kernel cannot enforce
//! all of that, the plugin refuses to start unless
//! `--allow-weak-confinement` is given, and names what is missing.

use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use pulse_ledger::plugin::confine::{Confinement, Limits, Support};

use pulse_ledger::plugin::sdk::{
    JobContext, JobError, JobHandler, PluginServer, async_trait, load_key,
};
use pulse_ledger::{Did, Schema, verify_attestation};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Largest result read from a script's stdout.
const MAX_OUTPUT: u64 = 1024 * 1024;
/// Files code with outbound network may read as well: name resolution and
/// the system's CA certificates.
const NETWORK_FILES: [&str; 6] = [
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
];
/// The exit status that asks for a retry (sysexits.h EX_TEMPFAIL).
const EX_TEMPFAIL: i32 = 75;

struct Runner {
    plugin: Did,
    python: Arc<str>,
    sandbox: Sandbox,
}

/// How attempts are confined: the parts every attempt shares.
#[derive(Debug, Clone)]
struct Sandbox {
    /// This executable, run as `--confined-exec`.
    exe: PathBuf,
    /// Where each attempt's scratch directory is made.
    scratch_base: PathBuf,
    read_only: Vec<PathBuf>,
    limits: Limits,
    allow_weak: bool,
    /// Whether handlers that ask for outbound network get it.
    allow_network: bool,
}

impl Sandbox {
    /// The command that runs `program args` confined to `scratch`, its CPU
    /// time cut to `cpu_seconds` if that is lower than the plugin's bound.
    fn command(
        &self,
        scratch: &Path,
        cpu_seconds: u64,
        network: bool,
        program: &str,
        args: &[&str],
    ) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.exe);
        c.arg("--confined-exec")
            .arg("--scratch")
            .arg(scratch)
            .args(["--memory", &self.limits.memory_bytes.to_string()])
            .args([
                "--cpu",
                &self.limits.cpu_seconds.min(cpu_seconds).max(1).to_string(),
            ])
            .args(["--files", &self.limits.open_files.to_string()])
            .args(["--file-bytes", &self.limits.file_bytes.to_string()]);
        for p in &self.read_only {
            c.arg("--ro").arg(p);
        }
        if network {
            // Name resolution and the system's CA certificates.
            for p in NETWORK_FILES {
                c.arg("--ro").arg(p);
            }
        }
        if self.allow_weak {
            c.arg("--allow-weak");
        }
        if network {
            c.arg("--outbound-network");
        }
        c.arg("--").arg(program).args(args);
        // A clean environment: nothing of the plugin's reaches the code.
        c.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", scratch)
            .env("TMPDIR", scratch)
            .env("LANG", "C.UTF-8")
            .current_dir(scratch);
        c
    }

    /// A new, private scratch directory for one attempt.
    fn scratch(&self) -> std::io::Result<PathBuf> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(e.to_string()))?;
        let dir = self
            .scratch_base
            .join(format!("pulse-script-{}", hex::encode(nonce)));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(dir)
    }
}

/// Removes an attempt's scratch directory when the attempt ends, however it
/// ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Runner {
    /// The handler's code, and whether it gets outbound network, after
    /// checking the statement it came in.
    fn code(&self, ctx: &JobContext) -> Result<(Vec<u8>, bool), JobError> {
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
        let network = schema.network.is_some();
        if network && !self.sandbox.allow_network {
            return Err(JobError::fatal(
                "network_not_allowed: the handler's schema asks for outbound network, which this plugin's operator does not allow (pulse-script-plugin --allow-network)",
            ));
        }
        let code = schema
            .code
            .clone()
            .ok_or_else(|| JobError::fatal("the handler's schema has no code"))?;
        Ok((code, network))
    }
}

#[async_trait]
impl JobHandler for Runner {
    async fn execute(&self, ctx: JobContext, payload: Vec<u8>) -> Result<Vec<u8>, JobError> {
        let (code, network) = self.code(&ctx)?;
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
        let scratch =
            Scratch(self.sandbox.scratch().map_err(|e| {
                JobError::retryable(format!("cannot make a scratch directory: {e}"))
            })?);
        let mut child = self
            .sandbox
            // Isolated mode: no user site-packages, no PYTHON* variables.
            .command(
                &scratch.0,
                left.as_secs() + 1,
                network,
                &self.python,
                &["-I", "-c", &code],
            )
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
        "pulse-script-plugin: {why}\nusage: pulse-script-plugin --key FILE [--plugin DID] [--python PATH] [--scratch-dir DIR] [--memory-mb N] [--cpu-seconds N] [--max-files N] [--read-only PATH]... [--allow-network] [--allow-weak-confinement] [--connect URL] [--slots N]"
    );
    std::process::exit(2)
}

fn number(flag: &str, text: &str) -> u64 {
    text.parse().ok().filter(|n| *n > 0).unwrap_or_else(|| {
        usage(&format!(
            "{flag} needs a positive whole number, not {text:?}"
        ))
    })
}

/// `--confined-exec`: confine this process, then become the program
/// (arguments after `--`). Runs before any thread is started.
fn confined_exec(mut args: impl Iterator<Item = String>) -> ! {
    let fail = |why: String| -> ! {
        eprintln!("pulse-script-plugin --confined-exec: {why}");
        std::process::exit(126)
    };
    let mut c = Confinement {
        read_only: Vec::new(),
        scratch: PathBuf::new(),
        limits: Limits::default(),
        outbound_network: false,
    };
    let mut allow_weak = false;
    let mut program = Vec::new();
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| fail(format!("{a} needs a value")))
        };
        let n = |v: String| {
            v.parse::<u64>()
                .unwrap_or_else(|_| fail(format!("{a}: {v:?}")))
        };
        match a.as_str() {
            "--scratch" => c.scratch = PathBuf::from(value()),
            "--ro" => c.read_only.push(PathBuf::from(value())),
            "--memory" => c.limits.memory_bytes = n(value()),
            "--cpu" => c.limits.cpu_seconds = n(value()),
            "--files" => c.limits.open_files = n(value()),
            "--file-bytes" => c.limits.file_bytes = n(value()),
            "--allow-weak" => allow_weak = true,
            "--outbound-network" => c.outbound_network = true,
            "--" => {
                program.extend(args.by_ref());
                break;
            }
            other => fail(format!("unknown argument {other}")),
        }
    }
    if program.is_empty() || c.scratch.as_os_str().is_empty() {
        fail("needs --scratch DIR and -- PROGRAM".into());
    }
    if let Err(e) = c.apply(allow_weak) {
        fail(e.to_string());
    }
    let e = std::process::Command::new(&program[0])
        .args(&program[1..])
        .exec();
    fail(format!("cannot run {}: {e}", program[0]))
}

/// The interpreter as it really is: its executable (what `--python`
/// resolves to, through any wrapper script such as a pyenv shim) and its
/// installation (`sys.base_prefix`), so confined code can run it and read
/// its files.
fn interpreter(python: &str) -> Result<(PathBuf, PathBuf), String> {
    let out = std::process::Command::new(python)
        .args([
            "-I",
            "-c",
            "import os, sys; print(os.path.realpath(sys.executable)); print(sys.base_prefix)",
        ])
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    match (out.status.success(), lines.next(), lines.next()) {
        (true, Some(exe), Some(prefix)) if !exe.is_empty() => {
            Ok((PathBuf::from(exe), PathBuf::from(prefix)))
        }
        _ => Err(format!(
            "{python} did not say where it is installed: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--confined-exec") {
        args.next();
        confined_exec(args);
    }
    let mut key = None;
    let mut plugin = None;
    let mut python = "python3".to_owned();
    let mut scratch_base = std::env::temp_dir();
    let mut limits = Limits::default();
    let mut extra_read_only = Vec::new();
    let mut allow_weak = false;
    let mut allow_network = false;
    let (mut connect, mut slots) = (None, 0u32);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--key" => key = Some(value()),
            "--plugin" => plugin = Some(value()),
            "--python" => python = value(),
            "--scratch-dir" => scratch_base = PathBuf::from(value()),
            "--memory-mb" => limits.memory_bytes = number(&a, &value()) << 20,
            "--cpu-seconds" => limits.cpu_seconds = number(&a, &value()),
            "--max-files" => limits.open_files = number(&a, &value()),
            "--read-only" => extra_read_only.push(PathBuf::from(value())),
            "--allow-weak-confinement" => allow_weak = true,
            "--allow-network" => allow_network = true,
            "--connect" => connect = Some(value()),
            "--slots" => slots = number(&a, &value()) as u32,
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
    // User code must not reach the plugin: refuse to run it when the
    // kernel cannot confine it, unless the operator accepts less.
    let missing = Support::probe().missing();
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(ToString::to_string).collect();
        if !allow_weak {
            usage(&format!(
                "this kernel cannot confine user code: {}; give --allow-weak-confinement to run it anyway",
                list.join("; ")
            ));
        }
        eprintln!(
            "pulse-script-plugin: WARNING: user code runs with weaker confinement: {}",
            list.join("; ")
        );
    }
    let (exe, prefix) = interpreter(&python).unwrap_or_else(|e| usage(&e));
    let mut read_only = vec![
        prefix,
        exe.parent().map(Path::to_path_buf).unwrap_or_default(),
        PathBuf::from("/lib"),
        PathBuf::from("/lib64"),
        PathBuf::from("/usr/lib"),
        PathBuf::from("/etc/ld.so.cache"),
    ];
    read_only.extend(extra_read_only);
    let sandbox = Sandbox {
        exe: std::env::current_exe()
            .unwrap_or_else(|e| usage(&format!("cannot find this program: {e}"))),
        scratch_base,
        read_only,
        limits,
        allow_weak,
        allow_network,
    };
    let runtime = tokio::runtime::Runtime::new()
        .unwrap_or_else(|e| usage(&format!("cannot start the runtime: {e}")));
    let python = exe.display().to_string();
    runtime.block_on(async move {
        // The interpreter must start under the confinement, or nothing will.
        if let Err(e) = self_test(&sandbox, &python).await {
            usage(&format!(
                "{python} does not run confined: {e} (give --read-only for the paths it needs)"
            ));
        }
        let runner = Runner {
            plugin: id.clone(),
            python: python.into(),
            sandbox,
        };
        let server = PluginServer::new(key)
            .plugin_id(id)
            .metadata(
                "pulse-script-plugin",
                env!("CARGO_PKG_VERSION"),
                "runs handlers whose signed schema carries Python code",
            )
            .serve_any(runner)
            .slots(slots);
        if let Err(e) = server.run(connect).await {
            eprintln!("pulse-script-plugin: {e}");
            std::process::exit(1);
        }
    });
}

/// Runs a small script confined, as every attempt will be.
async fn self_test(sandbox: &Sandbox, python: &str) -> Result<(), String> {
    let scratch = Scratch(
        sandbox
            .scratch()
            .map_err(|e| format!("scratch directory: {e}"))?,
    );
    let out = sandbox
        .command(
            &scratch.0,
            10,
            false,
            python,
            &["-I", "-c", "import json, sys; json.dump({}, sys.stdout)"],
        )
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if out.status.success() && out.stdout == b"{}" {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}
