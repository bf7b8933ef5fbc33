//! Reading and writing the files the CLI works with.

use std::fs;
use std::path::Path;

use super::error::CliError;
use crate::{Attestation, verify_attestation};

/// Largest file the CLI reads as an attestation; anything longer cannot be
/// one and is not read into memory.
const READ_LIMIT: u64 = crate::limits::MAX_ENVELOPE_BYTES as u64 + 1;

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |source| CliError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads up to one byte past the envelope limit, so oversized files fail
/// with `too_large` without being read whole.
pub(crate) fn read_envelope(path: &Path) -> Result<Vec<u8>, CliError> {
    use std::io::Read;
    let file = fs::File::open(path).map_err(io(path))?;
    let mut bytes = Vec::new();
    file.take(READ_LIMIT)
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    if crate::keyfile::is_key_file(&bytes) {
        return Err(CliError::Usage(format!(
            "{} is a key file (it holds a secret key), not an attestation: give the file that `handler|plugin new|update|rotate|revoke --out` wrote",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Reads and verifies an attestation file.
pub(crate) fn read_attestation(path: &Path) -> Result<Attestation, CliError> {
    let bytes = read_envelope(path)?;
    verify_attestation(&bytes).map_err(|source| CliError::Invalid {
        path: path.to_owned(),
        source,
    })
}

/// Writes a new file (mode as given), refusing to replace an existing one.
pub(crate) fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CliError> {
    crate::keyfile::write_new(path, bytes, mode).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CliError::Usage(format!(
                "{} already exists; refusing to overwrite it (choose another --out)",
                path.display()
            ))
        } else {
            io(path)(e)
        }
    })
}
