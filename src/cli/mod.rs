//! The `pulse-ledger` command line: argument definitions and dispatch.
//!
//! Exit codes: 0 success, 1 verification failed, 2 usage or I/O error,
//! 3 cannot reach the server.

mod audit;
mod author;
mod bench;
mod bench_pool;
mod bundle;
mod client;
mod deadline;
mod error;
mod files;
mod head;
mod inspect;
mod jobs;

mod keygen;
mod monitor;
mod nodes;
mod output;
mod proofs;
mod reach;
mod remote;
mod schedules;
mod serve;
mod sessions;
mod store;
mod token;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use error::CliError;

/// Self-certifying async job handlers: sign, chain and verify attestations.
#[derive(Debug, Parser)]
#[command(
    name = "pulse-ledger",
    version,
    about,
    after_help = "\
Quick start:
  pulse-ledger serve &                       # gRPC on 127.0.0.1:7300, data in ./pulse-ledger-data
  pulse-ledger keygen --out handler.key
  pulse-ledger keygen --out plugin.key
  pulse-ledger plugin new --key plugin.key --name py-runner --version 1.0.0 --out p0.att
  pulse-ledger handler new --key handler.key --name python.script --version 1.0.0 \\
      --plugin did:key:z6Mk... --out h0.att
  pulse-ledger submit p0.att h0.att
  pulse-ledger handler show did:key:z6Mk...
  pulse-ledger log checkpoint

Exit status: 0 success, 1 verification failed, 2 usage or I/O error,
3 cannot reach the server."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: variant sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Create an ed25519 key; print its did:key.
    Keygen(keygen::Args),
    /// Sign handler statements: new, update, rotate, revoke.
    #[command(subcommand)]
    Handler(author::Verb),
    /// Sign plugin statements: new, update, rotate, revoke.
    #[command(subcommand)]
    Plugin(author::PluginVerb),
    /// Verify attestations, chains, bundles, proofs, or a whole log.
    #[command(subcommand)]
    Verify(verify::Target),
    /// Print an attestation for people (or as JSON).
    Inspect(inspect::Args),
    /// Run the gRPC registry API on an embedded data dir.
    Serve(serve::Args),
    /// Submit attestation files to a server's log.
    Submit(client::SubmitArgs),
    /// Read a server's log: info, checkpoint, entries, watch.
    #[command(subcommand)]
    Log(client::LogCmd),
    /// Jobs on a server: submit, get, list, watch, log, cancel, retry.
    #[command(subcommand)]
    Job(jobs::JobCmd),
    /// Follow a log: verify every new entry and checkpoint, report what
    /// concerns watched identities, equivocations and inconsistent
    /// checkpoints.
    #[command(after_help = "\
Examples:
  pulse-ledger monitor --server http://127.0.0.1:7300 --log-key did:key:z6Mk... \\
      --watch did:key:z6MkHandler... --state monitor.json
  pulse-ledger monitor --log-key log.did --watch did:key:z6Mk... --state m.json --once --json
  pulse-ledger monitor --log-key log.did --watch did:key:z6Mk... --exit-on-alert

Reports one line each (JSON lines with --json, spec/audit.md gives the
schema): `statement` for every new statement about a watched identity, and
`ALERT [entry N:] CODE: message` for an invalid entry, an equivocation, a checkpoint that is not
consistent with the last verified one (fork, log_shrank,
bad_consistency_proof), or entries that do not match their checkpoint. The
state file keeps the last verified checkpoint and tree edge, so a restart
continues where it stopped. Exit status: 1 at the first report with
--exit-on-alert, 3 if the server cannot be reached, 0 after --once.")]
    Monitor(monitor::Args),
    /// Measure this machine's ceilings and pulse-ledger against them.
    Bench(bench::Args),
    /// Offline bundles of a subject's chain with inclusion proofs.
    #[command(subcommand)]
    Bundle(bundle::BundleCmd),
    /// Recurring schedules on a server: create, list, show, pause, resume,
    /// delete.
    #[command(subcommand)]
    Schedule(schedules::ScheduleCmd),
    /// Per-handler cost budgets on a server: show, set.
    #[command(subcommand)]
    Budget(jobs::BudgetCmd),
    /// Bearer tokens for a server's jobs API: create, hash.
    #[command(subcommand)]
    Token(token::TokenCmd),
    /// The storage under a server: migrate a PostgreSQL schema.
    #[command(subcommand)]
    Store(store::StoreCmd),
    /// The server nodes sharing a store: live or gone, log lag, sessions.
    Nodes(nodes::NodesArgs),
}

impl Cli {
    /// Runs the command and returns the process exit status. Errors are
    /// printed to stderr for people.
    pub fn run(self) -> ExitCode {
        // A command whose output is cut short (`log entries | head -1`)
        // ends quietly, as `git log | head` does, instead of panicking at
        // its next print. (SIGPIPE stays ignored: the gRPC sockets would
        // raise it too, when a server closes a connection.) The server
        // never prints data to stdout, so this is for client commands.
        if !matches!(self.command, Command::Serve(_)) {
            quiet_on_closed_stdout();
        }
        let result = match self.command {
            Command::Keygen(a) => keygen::run(a),
            Command::Handler(v) => author::run_handler(v),
            Command::Plugin(v) => author::run_plugin(v),
            Command::Verify(t) => verify::run(t),
            Command::Inspect(a) => inspect::run(a),
            Command::Serve(a) => serve::run(a),
            Command::Submit(a) => client::submit(a),
            Command::Log(c) => client::log(c),
            Command::Job(c) => jobs::job(c),
            Command::Budget(c) => jobs::budget(c),
            Command::Schedule(c) => schedules::run(c),
            Command::Token(c) => token::run(c),
            Command::Store(c) => store::run(c),
            Command::Nodes(a) => nodes::run(a),
            Command::Bundle(c) => bundle::run(c),
            Command::Bench(a) => bench::run(a),
            Command::Monitor(a) => monitor::run(a.into_options()),
        };
        match result {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e}");
                e.exit_code()
            }
        }
    }
}

/// Exit status of a command whose standard output was closed under it:
/// 128 + SIGPIPE, as a shell reports a command a closed pipe stopped.
const EXIT_CLOSED_STDOUT: i32 = 141;

/// Makes a print to a closed standard output end the process quietly
/// (`println!` panics on EPIPE) and leaves every other panic to the
/// default hook.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(EXIT_CLOSED_STDOUT);
        }
        default(info);
    }));
}
