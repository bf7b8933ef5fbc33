//! The `pulse-ledger` binary.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    pulse_ledger::cli::Cli::parse().run()
}
