//! The filesystem operations of a file-store write, behind a small trait
//! ([`WriteOps`]) so that a test can record their order and make any one of
//! them fail. [`RealOps`] is the implementation every store uses unless a test
//! builds it with another one.
//!
//! Each method performs exactly one operation and decides nothing: the order
//! (lock, write the temporary file, fsync it, rename it over the record, fsync
//! the directory, unlock), the bounded wait for the lock and the error
//! classification belong to the store (`super`). This module must not grow
//! into a filesystem abstraction: reads, listing and opening the store use
//! `std::fs` directly because their order does not matter for durability.

use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// The operations a write performs, in the order the store calls them.
pub(crate) trait WriteOps: Send + Sync + fmt::Debug {
    /// Opens the key's lock file at `path`, creating it if it is missing and
    /// never truncating it.
    fn open_lock_file(&self, path: &Path) -> io::Result<File>;
    /// One non-blocking attempt to take the exclusive advisory lock of
    /// `file` (opened from `path`).
    fn try_lock(&self, file: &File, path: &Path) -> Result<(), TryLockError>;
    /// Releases the lock of `file` and closes it. (Closing alone would
    /// release it too, which is what happens if the thread panics.)
    fn unlock(&self, file: File, path: &Path);
    /// Creates `path`, which must not exist, and writes `bytes` to it.
    fn create_and_write(&self, path: &Path, bytes: &[u8]) -> io::Result<File>;
    /// Flushes `file` (created at `path`) to stable storage.
    fn sync_file(&self, file: &File, path: &Path) -> io::Result<()>;
    /// Renames `from` over `to` (atomically replacing `to`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the renames in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes the file at `path`.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// A reading of the monotonic clock, to bound the wait for a lock.
    fn now(&self) -> Instant;
    /// Pauses the calling thread for `pause` between two lock attempts.
    fn pause(&self, pause: Duration);
}

/// The operating system's operations.
///
/// The lock wait is measured with [`Instant`] directly rather than through
/// the crate's `Clock`: it is a local I/O timeout, like a socket timeout,
/// taken on a blocking thread, and no protocol decision depends on it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RealOps;

impl WriteOps for RealOps {
    fn open_lock_file(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    }

    fn try_lock(&self, file: &File, _path: &Path) -> Result<(), TryLockError> {
        file.try_lock()
    }

    fn unlock(&self, file: File, _path: &Path) {
        // Closing the file releases the lock whatever `unlock` says.
        let _ = file.unlock();
    }

    fn create_and_write(&self, path: &Path, bytes: &[u8]) -> io::Result<File> {
        let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
        file.write_all(bytes)?;
        Ok(file)
    }

    fn sync_file(&self, file: &File, _path: &Path) -> io::Result<()> {
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    #[cfg(unix)]
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    /// Directories cannot be opened as files here; the rename is durable
    /// once the filesystem commits its metadata.
    #[cfg(not(unix))]
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn pause(&self, pause: Duration) {
        std::thread::sleep(pause);
    }
}
