//! Checkpoints: the log's signed tree heads, in the C2SP tlog-checkpoint
//! format wrapped in a C2SP signed note. Pure code.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey};
use sha2::{Digest, Sha256};

use super::error::{LedgerError, LedgerErrorCode};
use super::merkle::Hash;
use crate::Did;

/// Signature type byte of Ed25519 in signed-note key IDs.
const ED25519_TYPE: u8 = 0x01;
/// Longest signed note accepted.
const MAX_NOTE_BYTES: usize = 64 * 1024;
/// The signature line prefix: U+2014 EM DASH and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// A tree head: which log, how many entries, and the Merkle root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name (the checkpoint's first line and the note key name).
    pub origin: String,
    /// Number of entries.
    pub size: u64,
    /// RFC 9162 root hash (blake3) of the first `size` entries.
    pub root: Hash,
}

impl Checkpoint {
    /// The checkpoint text: origin, size and base64 root, one per line.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Signs the checkpoint as a signed note with `key`, under the key name
    /// `origin`.
    pub fn sign(&self, key: &SigningKey) -> String {
        let text = self.body();
        let sig = key.sign(text.as_bytes());
        let mut blob = key_id(&self.origin, key.verifying_key().as_bytes()).to_vec();
        blob.extend_from_slice(&sig.to_bytes());
        format!("{text}\n{SIG_PREFIX}{} {}\n", self.origin, B64.encode(blob))
    }
}

/// The 4-byte signed-note key ID: SHA-256(name ‖ 0x0A ‖ 0x01 ‖ key)[:4].
pub fn key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519_TYPE]);
    h.update(public_key);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// The verifier key in the note ecosystem's text form:
/// `<name>+<key ID hex>+<base64(0x01 ‖ key)>`.
pub fn verifier_key(name: &str, key: &Did) -> String {
    let mut raw = vec![ED25519_TYPE];
    raw.extend_from_slice(key.public_key());
    format!(
        "{name}+{}+{}",
        hex::encode(key_id(name, key.public_key())),
        B64.encode(raw)
    )
}

/// Whether `name` is a valid origin / key name: non-empty, printable ASCII,
/// no spaces and no `+` (C2SP signed-note key name rules), at most 255 bytes.
pub fn is_valid_origin(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.bytes().all(|b| b.is_ascii_graphic() && b != b'+')
}

/// Parses a signed checkpoint note and verifies the signature of `log_key`
/// under the key name of its origin. Other signatures (witnesses) are
/// ignored; extension lines after the root are allowed and ignored.
///
/// # Errors
/// `bad_checkpoint`, naming the line or rule that failed.
pub fn verify_checkpoint(note: &str, log_key: &Did) -> Result<Checkpoint, LedgerError> {
    let bad = |why: String| LedgerError::new(LedgerErrorCode::BadCheckpoint, why);
    if note.len() > MAX_NOTE_BYTES {
        return Err(bad(format!("note is longer than {MAX_NOTE_BYTES} bytes")));
    }
    if note.chars().any(|c| c.is_control() && c != '\n') {
        return Err(bad(
            "a signed note has no control characters other than newline".into(),
        ));
    }
    // The text ends at the last blank line; signature lines follow it.
    let Some(split) = note.rfind("\n\n") else {
        return Err(bad(
            "no blank line between the text and the signatures".into()
        ));
    };
    let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
    let mut lines = text.split_terminator('\n');
    let origin = lines.next().unwrap_or_default().to_owned();
    if !is_valid_origin(&origin) {
        return Err(bad(format!(
            "origin line {origin:?} is not a valid log name"
        )));
    }
    let size_line = lines.next().unwrap_or_default();
    let canonical_size = size_line == "0" || (!size_line.starts_with('0') && !size_line.is_empty());
    let size: u64 = size_line
        .parse()
        .ok()
        .filter(|_| canonical_size && size_line.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| bad(format!("size line {size_line:?} is not a decimal number")))?;
    let root_line = lines.next().unwrap_or_default();
    let root: Hash = B64
        .decode(root_line)
        .ok()
        .and_then(|r| r.try_into().ok())
        .ok_or_else(|| bad("root line is not the base64 of 32 bytes".into()))?;
    if sigs.is_empty() || !sigs.ends_with('\n') {
        return Err(bad("signature lines must each end with a newline".into()));
    }
    // Every signature line must be well-formed; only the log's is checked.
    let want_id = key_id(&origin, log_key.public_key());
    let mut ours: Option<[u8; 64]> = None;
    for line in sigs.split_terminator('\n') {
        let Some(rest) = line.strip_prefix(SIG_PREFIX) else {
            return Err(bad(format!(
                "signature line {line:?} does not start with an em dash and a space"
            )));
        };
        let Some((name, b64)) = rest.split_once(' ') else {
            return Err(bad(format!("signature line {line:?} has no signature")));
        };
        let blob = match B64.decode(b64) {
            Ok(b) if b.len() >= 5 && !name.is_empty() => b,
            _ => {
                return Err(bad(format!(
                    "signature of {name:?} is not base64 of a key ID and a signature"
                )));
            }
        };
        if name == origin && blob.len() == 68 && blob[..4] == want_id && ours.is_none() {
            let mut sig = [0u8; 64];
            sig.copy_from_slice(&blob[4..]);
            ours = Some(sig);
        }
    }
    let Some(sig) = ours else {
        return Err(bad(format!(
            "no signature by {log_key} under the name {origin:?}"
        )));
    };
    log_key
        .verifying_key()
        .verify_strict(text.as_bytes(), &Signature::from_bytes(&sig))
        .map_err(|_| bad(format!("the signature by {log_key} does not verify")))?;
    Ok(Checkpoint { origin, size, root })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (SigningKey, Did) {
        let sk = SigningKey::from_bytes(&[5; 32]);
        let did = Did::from_verifying_key(&sk.verifying_key()).unwrap();
        (sk, did)
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let (sk, did) = key();
        let cp = Checkpoint {
            origin: "example.com/log".into(),
            size: 12,
            root: [7; 32],
        };
        let note = cp.sign(&sk);
        assert!(note.starts_with("example.com/log\n12\nBwcH"));
        assert!(note.contains("\n\n\u{2014} example.com/log "));
        assert_eq!(verify_checkpoint(&note, &did).unwrap(), cp);
    }

    #[test]
    fn tampering_and_wrong_keys_fail() {
        let (sk, did) = key();
        let cp = Checkpoint {
            origin: "log".into(),
            size: 3,
            root: [1; 32],
        };
        let note = cp.sign(&sk);
        let other =
            Did::from_verifying_key(&SigningKey::from_bytes(&[6; 32]).verifying_key()).unwrap();
        assert!(verify_checkpoint(&note, &other).is_err());
        assert!(verify_checkpoint(&note.replace("\n3\n", "\n4\n"), &did).is_err());
        assert!(verify_checkpoint(&note.replace("\n3\n", "\n03\n"), &did).is_err());
        assert!(verify_checkpoint(note.trim_end(), &did).is_err());
        for i in 0..note.len() {
            let mut bytes = note.clone().into_bytes();
            bytes[i] ^= 0x01;
            if let Ok(s) = String::from_utf8(bytes) {
                assert!(verify_checkpoint(&s, &did).is_err(), "flip at {i}");
            }
        }
    }

    #[test]
    fn witness_signatures_are_ignored() {
        let (sk, did) = key();
        let cp = Checkpoint {
            origin: "log".into(),
            size: 1,
            root: [2; 32],
        };
        let note = cp.sign(&sk);
        let with_witness = format!("{note}\u{2014} witness.example AAAAAAAA\n");
        let malformed = format!("{note}\u{2014} witness.example\n");
        assert!(verify_checkpoint(&malformed, &did).is_err());
        let cr = note.replace("log\n", "log\r\n");
        assert!(verify_checkpoint(&cr, &did).is_err());
        assert_eq!(verify_checkpoint(&with_witness, &did).unwrap(), cp);
    }
}
