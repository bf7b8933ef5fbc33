//! The embedded backend: one fjall database in a directory, each space a
//! keyspace, each commit one batch fsynced with `SyncAll`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};

use super::{
    Backend, Entries, KeyRange, Order, ReadView, Snapshot, SpaceId, StorageError, WriteBatch,
    WriteOp,
};

/// Sizes of the fjall database's buffers.
#[derive(Debug, Clone, Copy)]
pub struct FjallOptions {
    /// Journal kept before memtables must be flushed (bounds the replay
    /// after a crash); at least 64 MiB.
    pub journal_bytes: u64,
    /// Block cache for reads.
    pub cache_bytes: u64,
    /// Memtable size of each space.
    pub memtable_bytes: u64,
}

impl Default for FjallOptions {
    /// Bounded memory and start-up: at most 64 MiB of journal to replay
    /// after a crash (fjall's minimum), and small memtables per space; the
    /// fjall defaults (512 MiB journal, 64 MiB per memtable) cost ~1 GB of
    /// RSS and ~9 s of replay at 1M log entries. Small memtables also mean
    /// the journal's limit forces many small flushes, never one large one.
    fn default() -> FjallOptions {
        FjallOptions {
            journal_bytes: 64 * 1024 * 1024,
            cache_bytes: 64 * 1024 * 1024,
            memtable_bytes: 8 * 1024 * 1024,
        }
    }
}

/// The spaces opened so far: keyspace handles by [`SpaceId`].
#[derive(Default)]
struct Spaces {
    handles: Vec<Keyspace>,
    by_name: HashMap<String, SpaceId>,
}

/// A fjall database as a [`Backend`].
pub struct FjallBackend {
    db: Database,
    options: FjallOptions,
    spaces: Arc<RwLock<Spaces>>,
}

fn storage(context: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::new(format!("{context}: {e}"))
}

impl FjallBackend {
    /// Opens (or creates) the database in `path`.
    ///
    /// # Errors
    /// When fjall cannot open it (another process holds it, I/O).
    pub fn open(path: &Path, options: FjallOptions) -> Result<FjallBackend, StorageError> {
        let db = Database::builder(path)
            .max_journaling_size(options.journal_bytes.max(64 * 1024 * 1024))
            .cache_size(options.cache_bytes)
            .open()
            .map_err(|e| storage("opening the database", e))?;
        Ok(FjallBackend {
            db,
            options,
            spaces: Arc::default(),
        })
    }

    /// Opens an existing database to read it with fjall's default buffer
    /// sizes (an audit of a stopped server's data dir).
    ///
    /// # Errors
    /// When fjall cannot open it.
    pub fn open_for_reading(path: &Path) -> Result<FjallBackend, StorageError> {
        let db = Database::builder(path)
            .open()
            .map_err(|e| storage("opening the database", e))?;
        Ok(FjallBackend {
            db,
            options: FjallOptions::default(),
            spaces: Arc::default(),
        })
    }
}

impl Spaces {
    fn get(&self, space: SpaceId) -> Result<&Keyspace, StorageError> {
        self.handles
            .get(usize::from(space.0))
            .ok_or_else(|| StorageError::new(format!("no space number {}", space.0)))
    }
}

fn read_spaces(spaces: &RwLock<Spaces>) -> std::sync::RwLockReadGuard<'_, Spaces> {
    spaces.read().unwrap_or_else(|p| p.into_inner())
}

/// fjall's iterators own what they read from, so a scan needs no borrow.
fn scan_with(
    spaces: &RwLock<Spaces>,
    space: SpaceId,
    range: KeyRange,
    order: Order,
    run: impl FnOnce(&Keyspace, (std::ops::Bound<Vec<u8>>, std::ops::Bound<Vec<u8>>)) -> fjall::Iter,
) -> Entries {
    if range.is_empty() {
        return Box::new(std::iter::empty());
    }
    let iter = match read_spaces(spaces).get(space) {
        Ok(ks) => run(ks, (range.start, range.end)),
        Err(e) => return Box::new(std::iter::once(Err(e))),
    };
    let entry = |kv: fjall::Guard| {
        kv.into_inner()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .map_err(|e| storage("read", e))
    };
    match order {
        Order::Ascending => Box::new(iter.map(entry)),
        Order::Descending => Box::new(iter.rev().map(entry)),
    }
}

impl ReadView for FjallBackend {
    fn get(&self, space: SpaceId, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        read_spaces(&self.spaces)
            .get(space)?
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| storage("read", e))
    }

    fn scan(&self, space: SpaceId, range: KeyRange, order: Order) -> Entries {
        scan_with(&self.spaces, space, range, order, |ks, r| ks.range(r))
    }
}

impl Backend for FjallBackend {
    fn open_space(&self, name: &str) -> Result<SpaceId, StorageError> {
        let mut spaces = self.spaces.write().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = spaces.by_name.get(name) {
            return Ok(*id);
        }
        let memtable = self.options.memtable_bytes;
        let ks = self
            .db
            .keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(memtable)
            })
            .map_err(|e| storage(&format!("opening the keyspace {name}"), e))?;
        let id = SpaceId(
            u16::try_from(spaces.handles.len())
                .map_err(|_| StorageError::new("too many spaces"))?,
        );
        spaces.handles.push(ks);
        spaces.by_name.insert(name.to_owned(), id);
        Ok(id)
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(Snapshot::new(FjallSnapshot {
            snap: self.db.snapshot(),
            spaces: Arc::clone(&self.spaces),
        }))
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let spaces = read_spaces(&self.spaces);
        let mut b = if batch.is_synced() {
            self.db.batch().durability(Some(PersistMode::SyncAll))
        } else {
            self.db.batch()
        };
        for op in batch.into_ops() {
            match op {
                WriteOp::Put { space, key, value } => b.insert(spaces.get(space)?, key, value),
                WriteOp::Delete { space, key } => b.remove(spaces.get(space)?, key),
            }
        }
        drop(spaces);
        b.commit().map_err(|e| storage("commit", e))
    }

    fn engine(&self) -> &'static str {
        "fjall"
    }
}

/// A fjall snapshot and the keyspaces to read it through.
struct FjallSnapshot {
    snap: fjall::Snapshot,
    spaces: Arc<RwLock<Spaces>>,
}

impl ReadView for FjallSnapshot {
    fn get(&self, space: SpaceId, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.snap
            .get(read_spaces(&self.spaces).get(space)?, key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| storage("read", e))
    }

    fn scan(&self, space: SpaceId, range: KeyRange, order: Order) -> Entries {
        scan_with(&self.spaces, space, range, order, |ks, r| {
            self.snap.range(ks, r)
        })
    }
}
