//! `pulse-ledger keygen`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::error::CliError;
use super::files;
use crate::Did;
use crate::keyfile;

/// Create an ed25519 key and print its did:key.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  pulse-ledger keygen --out handler.key
  pulse-ledger keygen --out plugin.key --json

The file is created with mode 0600 and never overwritten. Its did:key is
the ID of the handler or plugin whose genesis statement it signs.")]
pub(crate) struct Args {
    /// Where to write the secret key (must not exist).
    #[arg(long, value_name = "KEYFILE")]
    out: PathBuf,
    /// Print {"did": …, "key_file": …} instead of the bare did:key.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> Result<ExitCode, CliError> {
    let key = keyfile::generate()
        .map_err(|e| CliError::Usage(format!("the OS random number generator failed: {e}")))?;
    // A random key is a large-order point with overwhelming probability;
    // the check stays so a broken RNG cannot produce an unusable ID.
    let did = Did::from_verifying_key(&key.verifying_key())
        .map_err(|e| CliError::Usage(format!("generated key rejected: {e}")))?;
    files::write_new(&args.out, keyfile::render(&key, &did).as_bytes(), 0o600)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"did": did.to_string(), "key_file": args.out.display().to_string()})
        );
    } else {
        println!("{did}");
    }
    Ok(ExitCode::SUCCESS)
}
