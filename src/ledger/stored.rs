//! A stopped server's data dir, read for an audit: the stored checkpoint
//! and the entries, nothing else trusted and nothing written.

use std::path::Path;

use crate::storage::{FjallBackend, Space, Storage};

use super::error::{LedgerError, LedgerErrorCode};
use super::layout::{Ks, META_CHECKPOINT, META_ORIGIN, u64_key};

/// A data dir opened for reading its log.
pub struct StoredLog {
    entries: Space,
    /// The newest signed checkpoint as stored (not yet verified).
    pub checkpoint: String,
    /// The origin the data dir was created for.
    pub origin: String,
}

impl StoredLog {
    /// Opens `<data_dir>/db`. The server must be stopped: fjall allows one
    /// process at a time.
    ///
    /// # Errors
    /// `config` if there is no database there; `storage`; `integrity` if
    /// no readable checkpoint is stored.
    pub fn open(data_dir: &Path) -> Result<StoredLog, LedgerError> {
        let path = data_dir.join("db");
        if !path.is_dir() {
            return Err(LedgerError::new(
                LedgerErrorCode::Config,
                format!("{} holds no pulse-ledger database", data_dir.display()),
            ));
        }
        let storage = Storage::new(
            FjallBackend::open_for_reading(&path)
                .map_err(|e| LedgerError::storage("opening the database", e))?,
        );
        Self::open_on(&storage)
    }

    /// Opens the log stored in `storage` for reading.
    ///
    /// # Errors
    /// `storage`; `integrity` if no readable checkpoint is stored.
    pub fn open_on(storage: &Storage) -> Result<StoredLog, LedgerError> {
        let open = |k: Ks| {
            storage
                .space(k.name())
                .map_err(|e| LedgerError::storage("opening keyspaces", e))
        };
        let (entries, meta) = (open(Ks::Entries)?, open(Ks::Meta)?);
        let text = |key: &[u8], what: &str| -> Result<String, LedgerError> {
            meta.get(key)
                .map_err(|e| LedgerError::storage("read", e))?
                .and_then(|v| String::from_utf8(v).ok())
                .ok_or_else(|| {
                    LedgerError::new(
                        LedgerErrorCode::Integrity,
                        format!("no readable {what} is stored"),
                    )
                })
        };
        let checkpoint = text(META_CHECKPOINT, "signed checkpoint")?;
        let origin = text(META_ORIGIN, "origin")?;
        Ok(StoredLog {
            entries,
            checkpoint,
            origin,
        })
    }

    /// The entries at indexes `start..end`, in order, stopping before the
    /// first missing index (so fewer than asked means that one is missing).
    ///
    /// # Errors
    /// `storage`.
    pub fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, LedgerError> {
        let mut out = Vec::with_capacity(end.saturating_sub(start) as usize);
        for (expect, kv) in (start..).zip(self.entries.range(u64_key(start)..u64_key(end))) {
            let (k, v) = kv.map_err(|e| LedgerError::storage("read", e))?;
            if k != u64_key(expect) {
                break;
            }
            out.push(v);
        }
        Ok(out)
    }

    /// Whether the data dir holds the log's key file, which opening it as
    /// a ledger (for the store's own audit) needs.
    pub fn has_key_file(data_dir: &Path) -> bool {
        data_dir.join("log.key").is_file()
    }
}
