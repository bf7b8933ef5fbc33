//! The secret key file: a text file holding one ed25519 seed. Used by the
//! CLI (`keygen`, `--key`) and by the ledger for its own log key.
//!
//! ```text
//! # pulse-ledger secret key: keep it private
//! # did: did:key:z6Mk…
//! PULSE-LEDGER-SECRET-KEY-1 <64 lowercase hex digits>
//! ```
//!
//! Lines starting with `#` and blank lines are ignored; exactly one key line
//! is required. The hex digits are written lowercase and read in either
//! case. Files are created with mode 0600 and never overwritten.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use ed25519_dalek::SigningKey;

use crate::Did;

const TAG: &str = "PULSE-LEDGER-SECRET-KEY-1";
/// A key file is a few lines; refuse to read anything much larger.
const MAX_KEY_FILE: u64 = 4096;

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyFileError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a key file: {0}")]
    Format(String),
    #[error("already exists; refusing to overwrite a key file")]
    Exists,
}

/// A fresh random key.
pub(crate) fn generate() -> Result<SigningKey, KeyFileError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| KeyFileError::Io(std::io::Error::other(e.to_string())))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The key file text for a key.
pub(crate) fn render(key: &SigningKey, did: &Did) -> String {
    format!(
        "# pulse-ledger secret key: keep it private\n# did: {did}\n{TAG} {}\n",
        hex::encode(key.to_bytes())
    )
}

/// Reads a key file.
pub(crate) fn load(path: &Path) -> Result<SigningKey, KeyFileError> {
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(MAX_KEY_FILE)
        .read_to_end(&mut bytes)?;
    // An attestation is a CBOR map: a common mix-up of --key and --prev.
    if matches!(bytes.first(), Some(0xa0..=0xbf)) {
        return Err(KeyFileError::Format(
            "it is an attestation (CBOR): give the key file `pulse-ledger keygen` wrote".into(),
        ));
    }
    let text =
        String::from_utf8(bytes).map_err(|_| KeyFileError::Format("it is not text".into()))?;
    parse(&text).map_err(KeyFileError::Format)
}

/// Whether `bytes` hold a secret key (a key file), so a command that
/// expects an attestation can say what it was given instead.
pub(crate) fn is_key_file(bytes: &[u8]) -> bool {
    bytes.windows(TAG.len()).any(|w| w == TAG.as_bytes())
}

/// Writes a new key file with mode 0600, durably: the bytes go to a
/// temporary file that is synced, then linked into place (never replacing
/// an existing file), then the directory is synced. A crash leaves either no
/// key file or a complete one.
pub(crate) fn create(path: &Path, key: &SigningKey, did: &Did) -> Result<(), KeyFileError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, render(key, did).as_bytes(), 0o600)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    linked.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyFileError::Exists
        } else {
            KeyFileError::Io(e)
        }
    })?;
    sync_dir(path)?;
    Ok(())
}

/// Syncs the directory holding `path`, so a new name in it survives a crash.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Writes a new file with the given Unix mode, refusing to replace an
/// existing one, and syncs it to disk.
pub(crate) fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = opts.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

pub(crate) fn parse(text: &str) -> Result<SigningKey, String> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = lines.next().ok_or("no key line")?;
    if lines.next().is_some() {
        return Err("more than one key line".into());
    }
    let hex_part = line
        .strip_prefix(TAG)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| format!("the key line must start with {TAG:?}"))?;
    let mut seed = [0u8; 32];
    if hex_part.len() != 64 || hex::decode_to_slice(hex_part, &mut seed).is_err() {
        return Err("the key must be 64 hex digits".into());
    }
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_then_parse_round_trips() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let did = Did::from_verifying_key(&key.verifying_key()).unwrap();
        let back = parse(&render(&key, &did)).unwrap();
        assert_eq!(back.to_bytes(), key.to_bytes());
    }

    #[test]
    fn rejects_bad_files() {
        assert!(parse("").is_err());
        assert!(parse("# only a comment\n").is_err());
        assert!(parse(&format!("{TAG} 00")).is_err());
        assert!(parse(&format!("OTHER {}", "00".repeat(32))).is_err());
        let line = format!("{TAG} {}\n", "00".repeat(32));
        assert!(parse(&format!("{line}{line}")).is_err());
        assert!(parse(&format!("{TAG} {}g", "0".repeat(63))).is_err());
    }

    /// spec/ledger.md, "Log key file": written lowercase, read in either
    /// case.
    #[test]
    fn hex_digits_are_read_in_either_case() {
        let key = SigningKey::from_bytes(&[0xab; 32]);
        let did = Did::from_verifying_key(&key.verifying_key()).unwrap();
        let text = render(&key, &did);
        assert!(text.contains(&"ab".repeat(32)), "{text}");
        for variant in [
            text.to_uppercase()
                .replace("PULSE-LEDGER-SECRET-KEY-1", TAG),
            text.replace("abab", "ABab"),
        ] {
            let line = variant
                .lines()
                .find(|l| l.starts_with(TAG))
                .unwrap()
                .to_owned();
            assert_eq!(parse(&line).unwrap().to_bytes(), key.to_bytes(), "{line}");
        }
    }
}
