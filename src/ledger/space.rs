//! The free-space guard. fjall treats a failed journal write as fatal
//! (its in-memory state is then unknown), so the ledger must stop writing
//! after one. Checking free space before each commit turns a disk that is
//! filling up into a clean, temporary refusal instead: nothing is written,
//! nothing is acknowledged, and writes resume by themselves once space
//! returns.

use std::path::PathBuf;

use super::error::{LedgerError, LedgerErrorCode};

/// Default reserve: room for a journal segment, a memtable flush and
/// compaction to finish after the last accepted write.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 128 * 1024 * 1024;

/// Default extra reserve the log keeps above the jobs' one: appends (open
/// to anyone) stop this much earlier than jobs, so registration spam
/// cannot leave jobs without room.
pub const DEFAULT_LOG_RESERVE_BYTES: u64 = 256 * 1024 * 1024;

/// Refuses writes while the data dir's file system has less than a
/// reserve free.
#[derive(Debug, Clone)]
pub struct SpaceGuard {
    dir: PathBuf,
    reserve: u64,
}

impl SpaceGuard {
    /// A guard on `dir`'s file system; a reserve of 0 turns it off.
    pub fn new(dir: impl Into<PathBuf>, reserve: u64) -> SpaceGuard {
        SpaceGuard {
            dir: dir.into(),
            reserve,
        }
    }

    /// Ok while at least the reserve is free.
    ///
    /// # Errors
    /// `disk_full`, with the free and reserved bytes.
    pub fn check(&self) -> Result<(), LedgerError> {
        if self.reserve == 0 {
            return Ok(());
        }
        match free_bytes(&self.dir) {
            Ok(free) if free < self.reserve => Err(LedgerError::new(
                LedgerErrorCode::DiskFull,
                format!(
                    "{} has {} MiB free, below the {} MiB kept in reserve; writes resume when space is freed",
                    self.dir.display(),
                    free / (1024 * 1024),
                    self.reserve / (1024 * 1024)
                ),
            )),
            // A file system that cannot say is not refused for it: the
            // commit itself will report a real failure.
            _ => Ok(()),
        }
    }
}

/// Bytes available to this (unprivileged) process on `dir`'s file system.
fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid C string and `st` points to writable memory
    // for one statvfs, which the call fills when it returns 0.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ by platform
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_above_the_free_space_refuses_and_zero_turns_it_off() {
        let dir = std::env::temp_dir();
        SpaceGuard::new(&dir, 0).check().unwrap();
        SpaceGuard::new(&dir, 1).check().unwrap();
        let e = SpaceGuard::new(&dir, u64::MAX).check().unwrap_err();
        assert_eq!(e.code(), "disk_full");
        assert!(e.to_string().contains("reserve"), "{e}");
    }
}
