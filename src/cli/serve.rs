//! `pulse-ledger serve`: settings from flags, `PULSE_LEDGER_*` environment
//! variables and a TOML file (flags win, then environment, then file, then
//! defaults), then the gRPC server until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Deserialize;

use super::error::CliError;
use crate::api::{ServeConfig, serve};

/// Default data directory: embedded storage, created if missing.
pub(crate) const DEFAULT_DATA_DIR: &str = "./pulse-ledger-data";
/// Default gRPC address.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:7300";
/// Default log name (checkpoint origin); set your own for a public log.
pub(crate) const DEFAULT_LOG_NAME: &str = "pulse-ledger.local/log";

/// Run the gRPC registry API on an embedded data dir.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  pulse-ledger serve
  pulse-ledger serve --data-dir /var/lib/pulse-ledger --listen 0.0.0.0:7300 \\
      --log-name ledger.example.com/prod --metrics-listen 127.0.0.1:9300
  PULSE_LEDGER_LISTEN=127.0.0.1:7400 pulse-ledger serve --config pulse-ledger.toml

Config file keys (TOML): data_dir, listen, log_name, metrics_listen,
job_retention_hours.
Precedence: flags, then PULSE_LEDGER_* variables, then the file, then defaults.
Logs go to stderr (RUST_LOG=debug for more). SIGINT/SIGTERM stop accepting,
finish in-flight appends, persist, and exit 0.

Try it: grpcurl -plaintext 127.0.0.1:7300 list")]
pub(crate) struct Args {
    /// Data directory (fjall database + log key); created if missing
    /// [default: ./pulse-ledger-data].
    #[arg(long, env = "PULSE_LEDGER_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:7300].
    #[arg(long, env = "PULSE_LEDGER_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// The log's name: its checkpoints' origin line; fixed when the data dir
    /// is created [default: pulse-ledger.local/log].
    #[arg(long, env = "PULSE_LEDGER_LOG_NAME", value_name = "NAME")]
    log_name: Option<String>,
    /// Serve Prometheus metrics over HTTP here (off by default).
    #[arg(long, env = "PULSE_LEDGER_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Delete finished jobs this many hours after their last change
    /// [default: 168]. The ledger is never pruned.
    #[arg(long, env = "PULSE_LEDGER_JOB_RETENTION_HOURS", value_name = "HOURS")]
    job_retention_hours: Option<u64>,
    /// TOML file with the same settings.
    #[arg(long, env = "PULSE_LEDGER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    log_name: Option<String>,
    metrics_listen: Option<SocketAddr>,
    job_retention_hours: Option<u64>,
}

impl Args {
    fn resolve(self) -> Result<ServeConfig, CliError> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(super::files::io(path))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?
            }
            None => FileConfig::default(),
        };
        let default_listen: SocketAddr = DEFAULT_LISTEN
            .parse()
            .unwrap_or_else(|_| unreachable!("valid default"));
        Ok(ServeConfig {
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            listen: self.listen.or(file.listen).unwrap_or(default_listen),
            log_name: self
                .log_name
                .or(file.log_name)
                .unwrap_or_else(|| DEFAULT_LOG_NAME.to_owned()),
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            job_retention_hours: self
                .job_retention_hours
                .or(file.job_retention_hours)
                .unwrap_or(crate::api::DEFAULT_JOB_RETENTION_HOURS),
        })
    }
}

pub(crate) fn run(args: Args) -> Result<ExitCode, CliError> {
    let config = args.resolve()?;
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,fjall=warn,lsm_tree=warn")
            }),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        serve(config, shutdown_signal(), |addr, metrics, ledger| {
            // One line on stdout for scripts and tests; details go to the log.
            println!(
                "pulse-ledger listening on {addr} (log {} {})",
                ledger.origin(),
                ledger.log_did()
            );
            if let Some(m) = metrics {
                println!("metrics on http://{m}/metrics");
            }
        })
        .await
        .map_err(|e| CliError::Usage(format!("serve: {e}")))
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: finishing in-flight requests");
}
