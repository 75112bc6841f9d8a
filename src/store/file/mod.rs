//! The local directory store, the embedded default: lock records kept as small
//! JSON files in one directory, safe for any number of processes on one machine.
//!
//! Layout of the directory (`H` is the lowercase hex SHA-256 of the key):
//! - `H.json` — the record of one key, as
//!   `{"format":"statelock-lock-v1","record":{...}}`, written pretty for humans
//!   (the encoding of [`super::record_json`], shared with the S3 store);
//! - `H.lock` — an empty file whose exclusive advisory lock ([`File::lock`])
//!   serialises the writers of that key across processes;
//! - `H.json.R.tmp` — a write in flight (`R` random); readers ignore it.
//!
//! Each [`LockOp`] is applied under the key's lock file as read, decide with
//! [`apply_reference`], write a temporary file, fsync it, rename it over the
//! record and fsync the directory (the filesystem operations of a write sit
//! behind the internal `ops::WriteOps`, so a test can check that order).
//! Because the rename is atomic, a crash at any point leaves either the old or
//! the new record, never a torn one, and readers never need the lock.
//!
//! The lock is taken with non-blocking attempts and a short backoff, for at
//! most [`DEFAULT_LOCK_WAIT`] (see [`FileStore::with_lock_wait`]): a writer
//! that is stopped or hung inside its write makes the others fail with
//! [`StoreError::Unavailable`] naming the lock file, instead of hanging them.
//!
//! What this store must not do: delete lock files (a process may hold one);
//! overwrite a record it cannot read (it returns [`StoreError::Corrupt`]
//! instead); follow a symbolic link in place of a record (that is
//! [`StoreError::Corrupt`] too, dangling or not: reading it as "no record"
//! would restart the fencing tokens at 1); block the async runtime (the
//! filesystem work runs in [`tokio::task::spawn_blocking`]). It is only as
//! safe as the filesystem's advisory locks: do not point it at a network
//! filesystem that ignores them.

mod ops;

use self::ops::{RealOps, WriteOps};
use super::{
    apply_reference, check_floor, purge_reference, DamagedRecord, Listing, LockStore, StoreError,
};
use crate::protocol::{FencingToken, LockKey, LockOp, LockRecord, OpKind, RecordVersion};
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::record_json::{decode_floor, encode, encode_floor};
pub use super::record_json::{MAX_RECORD_BYTES, RECORD_FORMAT};

/// How long a write waits for its key's lock file while another writer holds
/// it, before giving up with [`StoreError::Unavailable`].
///
/// A healthy writer holds the lock for one small read, one small write and
/// two fsyncs: milliseconds. A holder that has not let go after this long is
/// most likely stopped (SIGSTOP, a debugger) or hung on a failing disk, and
/// waiting for it without a bound would hang every other process using the
/// key. The error is retryable, so a client keeps trying within its own
/// deadline. Change it per store with [`FileStore::with_lock_wait`].
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(2);

/// The first pause between two attempts to take a lock; each pause doubles,
/// up to [`MAX_LOCK_PAUSE`], and is shortened by a random part of at most a
/// half so that waiting writers do not retry in lockstep.
const FIRST_LOCK_PAUSE: Duration = Duration::from_millis(1);

/// The longest pause between two attempts to take a lock.
const MAX_LOCK_PAUSE: Duration = Duration::from_millis(20);

/// How many times a reader opens a record that a concurrent write replaced
/// between the check that it is a regular file and the open, before it
/// reports the store as unavailable. One retry is almost always enough.
const READ_ATTEMPTS: usize = 16;

/// Temporary files older than this are leftovers of crashed writers and are
/// removed when a store is opened.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

/// Length of a record file's stem: 64 hex digits of SHA-256.
const HASH_HEX_LEN: usize = 64;

/// Prefix of the file written (and removed) by [`FileStore::open`] to check
/// that the directory is writable.
const PROBE_PREFIX: &str = ".statelock-probe.";

/// A lock store in a local directory (see the module docs for the layout).
///
/// Opening is cheap; any number of `FileStore` values, in any number of
/// processes, may use the same directory at once.
///
/// I/O errors are classified as follows. Errors an operator must fix — no
/// permission, a read-only filesystem, a path that is not a directory, a
/// missing directory, a filesystem without file locking — are
/// [`StoreError::Misconfigured`]. Every other I/O error (disk full, quota,
/// EIO, interrupted or busy resources) is [`StoreError::Unavailable`]: a retry
/// may succeed once space is freed or the device recovers, and after a failure
/// late in a write (the rename or the directory fsync) the outcome genuinely
/// is unknown, which is exactly what `Unavailable` tells the caller. Every
/// message names the path and the operating system's error text.
///
/// A writer that finds the key's lock file held waits at most
/// [`DEFAULT_LOCK_WAIT`] (or what [`FileStore::with_lock_wait`] set) and then
/// returns [`StoreError::Unavailable`] naming the lock file.
#[derive(Debug, Clone)]
pub struct FileStore {
    /// The directory, always absolute.
    dir: PathBuf,
    /// The bound on one wait for a key's lock file.
    lock_wait: Duration,
    /// The filesystem operations of a write ([`RealOps`] outside tests).
    ops: Arc<dyn WriteOps>,
}

impl FileStore {
    /// Opens the store in `dir`, creating the directory (and its parents) if it
    /// is missing. Fails with [`StoreError::Misconfigured`] if `dir` is not a
    /// directory or is not writable. Also removes temporary files that crashed
    /// writers left behind more than an hour ago.
    ///
    /// A relative `dir` is resolved against the working directory now, once:
    /// the store keeps (and [`FileStore::dir`] and [`LockStore::describe`]
    /// show) the absolute path, so a later change of the working directory
    /// does not move the store.
    ///
    /// This does a few quick, blocking filesystem calls.
    pub fn open(dir: impl Into<PathBuf>) -> Result<FileStore, StoreError> {
        FileStore::open_with_ops(dir.into(), Arc::new(RealOps))
    }

    /// Opens the store in the per-user default directory, as
    /// [`default_store_dir`](super::url::default_store_dir) finds it in this
    /// process's environment (`$STATELOCK_HOME/locks`, else
    /// `$XDG_STATE_HOME/statelock/locks`, else
    /// `$HOME/.local/state/statelock/locks`). Fails with
    /// [`StoreError::Misconfigured`] if none of them is set.
    pub fn open_default() -> Result<FileStore, StoreError> {
        FileStore::open(super::url::default_store_dir(|name| {
            std::env::var_os(name)
        })?)
    }

    /// This store with `limit` as the bound on one wait for a key's lock
    /// file (default [`DEFAULT_LOCK_WAIT`]); `Duration::ZERO` makes a single
    /// attempt.
    pub fn with_lock_wait(mut self, limit: Duration) -> FileStore {
        self.lock_wait = limit;
        self
    }

    /// The bound on one wait for a key's lock file.
    pub fn lock_wait(&self) -> Duration {
        self.lock_wait
    }

    /// [`FileStore::open`] with other filesystem operations for writes (a
    /// test's recording fake).
    pub(crate) fn open_with_ops(
        dir: PathBuf,
        ops: Arc<dyn WriteOps>,
    ) -> Result<FileStore, StoreError> {
        if dir.as_os_str().is_empty() {
            return Err(StoreError::Misconfigured(
                "the lock directory path is empty".to_string(),
            ));
        }
        let dir = std::path::absolute(&dir).map_err(|e| {
            StoreError::Misconfigured(format!(
                "cannot resolve the lock directory {} to an absolute path: {e}; \
                 give an absolute path",
                dir.display()
            ))
        })?;
        match fs::metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(StoreError::Misconfigured(format!(
                    "{} is not a directory: the file store needs a directory for its lock records",
                    dir.display()
                )))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                fs::create_dir_all(&dir).map_err(|e| {
                    StoreError::Misconfigured(format!(
                        "cannot create the lock directory {}: {e}",
                        dir.display()
                    ))
                })?;
            }
            Err(e) => {
                return Err(StoreError::Misconfigured(format!(
                    "cannot use the lock directory {}: {e}",
                    dir.display()
                )))
            }
        }
        let store = FileStore {
            dir,
            lock_wait: DEFAULT_LOCK_WAIT,
            ops,
        };
        store.check_writable()?;
        store.remove_stale_temp_files();
        Ok(store)
    }

    /// The directory holding the records.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of the record file of `key` (which may not exist yet).
    pub fn record_path(&self, key: &LockKey) -> PathBuf {
        self.dir.join(format!("{}.json", key_hash(key)))
    }

    /// [`LockStore::apply`] without the async wrapper. Blocks (at most
    /// [`FileStore::lock_wait`]) while another writer of the same key, in any
    /// process, holds the key's lock file, and on disk I/O: call it only
    /// where blocking is allowed.
    pub fn apply_blocking(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
        let hash = key_hash(&op.key);
        self.locked(&format!("{hash}.lock"), || self.apply_locked(op, &hash))
    }

    /// Runs `work` while holding the exclusive lock of the lock file `name`
    /// in the store's directory (taken within [`FileStore::lock_wait`]).
    fn locked<T>(
        &self,
        name: &str,
        work: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let lock_path = self.dir.join(name);
        let lock_file = self
            .ops
            .open_lock_file(&lock_path)
            .map_err(|e| io_error("open the lock file", &lock_path, e))?;
        self.lock_bounded(&lock_file, &lock_path)?;
        // If this panics, closing the file (or the process dying) releases
        // the advisory lock.
        let result = work();
        self.ops.unlock(lock_file, &lock_path);
        result
    }

    /// [`LockStore::get`] without the async wrapper (blocking file I/O).
    pub fn get_blocking(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError> {
        let hash = key_hash(key);
        let path = self.dir.join(format!("{hash}.json"));
        read_record(&path, &hash, key.as_str())
    }

    /// [`LockStore::list`] without the async wrapper (blocking file I/O).
    pub fn list_blocking(&self) -> Result<Listing, StoreError> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| io_error("list the lock directory", &self.dir, e))?;
        let mut listing = Listing::default();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("list the lock directory", &self.dir, e))?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else {
                continue;
            };
            let Some(hash) = record_file_hash(name) else {
                continue;
            };
            match read_record(&entry.path(), hash, name) {
                Ok(Some(record)) => listing.records.push(record),
                Ok(None) => {}
                Err(StoreError::Corrupt { key, reason }) => {
                    listing.damaged.push(DamagedRecord { key, reason })
                }
                Err(e) => return Err(e),
            }
        }
        listing.records.sort_by(|a, b| a.key.cmp(&b.key));
        listing.damaged.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listing)
    }

    /// [`LockStore::token_floor`] without the async wrapper (blocking file I/O).
    pub fn token_floor_blocking(&self) -> Result<FencingToken, StoreError> {
        read_floor(&self.dir.join(FLOOR_FILE))
    }

    /// [`LockStore::purge`] without the async wrapper: under the key's lock
    /// file, checks the record, raises the floor file (under its own lock,
    /// durably) and only then removes the record.
    pub fn purge_blocking(
        &self,
        key: &LockKey,
        observed: RecordVersion,
    ) -> Result<LockRecord, StoreError> {
        let hash = key_hash(key);
        self.locked(&format!("{hash}.lock"), || {
            let record_path = self.dir.join(format!("{hash}.json"));
            let current = read_record(&record_path, &hash, key.as_str())?;
            let purged = purge_reference(current.as_ref(), observed)?;
            self.locked(FLOOR_LOCK, || {
                let floor_path = self.dir.join(FLOOR_FILE);
                if purged.token > read_floor(&floor_path)? {
                    let temp_path = self.dir.join(format!(
                        "{FLOOR_FILE}.{}.tmp",
                        uuid::Uuid::new_v4().simple()
                    ));
                    self.replace_durably(&temp_path, &floor_path, &encode_floor(purged.token)?)?;
                }
                Ok(())
            })?;
            self.ops
                .remove_file(&record_path)
                .map_err(|e| io_error("remove", &record_path, e))?;
            self.ops
                .sync_dir(&self.dir)
                .map_err(|e| io_error("sync the lock directory", &self.dir, e))?;
            Ok(purged)
        })
    }

    /// Takes the exclusive lock of `file` (the lock file at `path`) with
    /// non-blocking attempts and a growing, jittered pause between them, for
    /// at most [`FileStore::lock_wait`].
    fn lock_bounded(&self, file: &File, path: &Path) -> Result<(), StoreError> {
        let start = self.ops.now();
        let mut pause = FIRST_LOCK_PAUSE;
        loop {
            match self.ops.try_lock(file, path) {
                Ok(()) => return Ok(()),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => return Err(io_error("lock", path, e)),
            }
            let waited = self.ops.now().saturating_duration_since(start);
            let left = self.lock_wait.saturating_sub(waited);
            if left.is_zero() {
                return Err(StoreError::Unavailable(format!(
                    "the lock file {} is still held by another writer after {}; a stopped \
                     (SIGSTOP) or hung process may hold it: find it with `fuser -v {}` or \
                     `lslocks`, resume or end it, then try again",
                    path.display(),
                    humantime::format_duration(self.lock_wait),
                    path.display(),
                )));
            }
            // Between half of `pause` and all of it, so the waits still grow.
            let jittered = pause.saturating_sub((pause / 2).mul_f64(rand::random::<f64>()));
            self.ops.pause(jittered.min(left));
            pause = pause.saturating_mul(2).min(MAX_LOCK_PAUSE);
        }
    }

    /// Applies `op` while holding the key's lock file.
    fn apply_locked(&self, op: &LockOp, hash: &str) -> Result<LockRecord, StoreError> {
        let record_path = self.dir.join(format!("{hash}.json"));
        // A corrupt record stops here: it is reported, never overwritten.
        let current = read_record(&record_path, hash, op.key.as_str())?;
        // A grant on an absent record must name the current token floor (a
        // purge of this key, under this lock, raised it above the key's
        // tokens); a stale floor is a failed condition, and the acquirer
        // reads again.
        if let (None, OpKind::Acquire { .. }) = (&current, &op.kind) {
            check_floor(op, None, read_floor(&self.dir.join(FLOOR_FILE))?)?;
        }
        let next = apply_reference(op, current.as_ref())?;
        let bytes = encode(&next)?;
        let temp_path = self
            .dir
            .join(format!("{hash}.json.{}.tmp", uuid::Uuid::new_v4().simple()));
        self.replace_durably(&temp_path, &record_path, &bytes)?;
        Ok(next)
    }

    /// Replaces the file at `record_path` with `bytes` so that a crash leaves
    /// either the old or the new content: write `temp_path`, fsync it, rename
    /// it over `record_path`, fsync the directory. If the write or the fsync
    /// fails, nothing is renamed and the temporary file is removed.
    fn replace_durably(
        &self,
        temp_path: &Path,
        record_path: &Path,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let written = self
            .ops
            .create_and_write(temp_path, bytes)
            .and_then(|file| self.ops.sync_file(&file, temp_path));
        if let Err(e) = written {
            // Best effort: a leftover temporary file is ignored by readers
            // and removed by a later `open`.
            let _ = self.ops.remove_file(temp_path);
            return Err(io_error("write", temp_path, e));
        }
        if let Err(e) = self.ops.rename(temp_path, record_path) {
            let _ = self.ops.remove_file(temp_path);
            return Err(io_error("replace", record_path, e));
        }
        self.ops
            .sync_dir(&self.dir)
            .map_err(|e| io_error("sync the lock directory", &self.dir, e))
    }

    /// Writes and removes a probe file, so a read-only directory is reported
    /// when the store is opened rather than at the first acquire.
    fn check_writable(&self) -> Result<(), StoreError> {
        let probe = self.dir.join(format!(
            "{PROBE_PREFIX}{}.tmp",
            uuid::Uuid::new_v4().simple()
        ));
        let created = OpenOptions::new().write(true).create_new(true).open(&probe);
        match created {
            Ok(file) => {
                drop(file);
                remove_quietly(&probe);
                Ok(())
            }
            Err(e) => Err(StoreError::Misconfigured(format!(
                "the lock directory {} is not writable: {e}",
                self.dir.display()
            ))),
        }
    }

    /// Best effort: removes temporary files older than [`STALE_TEMP_AGE`].
    /// A younger one may belong to a write in flight and is left alone.
    fn remove_stale_temp_files(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else {
                continue;
            };
            if !is_temp_name(name) {
                continue;
            }
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| now.duration_since(modified).ok())
                .is_some_and(|age| age > STALE_TEMP_AGE);
            if old {
                remove_quietly(&entry.path());
            }
        }
    }
}

/// The lowercase hex SHA-256 of `key`: the stem of its files.
fn key_hash(key: &LockKey) -> String {
    hex::encode(Sha256::digest(key.as_str().as_bytes()))
}

/// The hash part of `name` if it names a record file (`<64 hex>.json`).
fn record_file_hash(name: &str) -> Option<&str> {
    let hash = name.strip_suffix(".json")?;
    let is_hash = hash.len() == HASH_HEX_LEN
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    is_hash.then_some(hash)
}

/// The file holding the store's token floor (see [`LockStore::token_floor`]).
pub const FLOOR_FILE: &str = "token-floor.json";

/// The lock file serialising writers of [`FLOOR_FILE`].
const FLOOR_LOCK: &str = "token-floor.lock";

/// Reads the token floor (absent: 0). A damaged floor file is corrupt: it is
/// reported, and no grant of an absent record is made until it is repaired.
fn read_floor(path: &Path) -> Result<FencingToken, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: FLOOR_FILE.to_string(),
        reason: format!("{}: {reason}", path.display()),
    };
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(FencingToken(0)),
        Err(e) => return Err(io_error("read", path, e)),
    };
    decode_floor(&bytes).map_err(corrupt)
}

/// True for the temporary files this store creates.
fn is_temp_name(name: &str) -> bool {
    if !name.ends_with(".tmp") {
        return false;
    }
    if name.starts_with(PROBE_PREFIX) || name.starts_with(&format!("{FLOOR_FILE}.")) {
        return true;
    }
    name.get(..HASH_HEX_LEN + ".json.".len())
        .and_then(|head| head.strip_suffix('.'))
        .and_then(record_file_hash)
        .is_some()
}

/// Reads the record at `path` (absent: `None`). `hash` is the stem the record's
/// key must hash to; `label` names the record in errors (the key, or the file
/// name when listing).
fn read_record(path: &Path, hash: &str, label: &str) -> Result<Option<LockRecord>, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: label.to_string(),
        reason: format!("{}: {reason}", path.display()),
    };
    for _ in 0..READ_ATTEMPTS {
        // Look at the path itself first: a symbolic link is never followed.
        let seen = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("read", path, e)),
        };
        if seen.file_type().is_symlink() {
            let target = fs::read_link(path)
                .map(|t| format!(" to {}", t.display()))
                .unwrap_or_default();
            return Err(corrupt(format!(
                "it is a symbolic link{target}, which this store never writes and does not \
                 follow; put the record file itself there or remove the link"
            )));
        }
        if !seen.is_file() {
            return Err(corrupt("not a regular file".to_string()));
        }
        let file = match File::open(path) {
            Ok(file) => file,
            // Removed since: look again.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error("read", path, e)),
        };
        let opened = file.metadata().map_err(|e| io_error("read", path, e))?;
        if !same_file(&seen, &opened) {
            // Replaced since (by a write's rename, or by something else):
            // what was opened is not what was checked. Look again.
            continue;
        }
        let mut bytes = Vec::new();
        file.take(MAX_RECORD_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| io_error("read", path, e))?;
        return decode(&bytes, hash).map(Some).map_err(corrupt);
    }
    Err(StoreError::Unavailable(format!(
        "cannot read {}: it was replaced every time it was opened ({READ_ATTEMPTS} \
         times); try again",
        path.display()
    )))
}

/// True if `a` and `b` describe the same file (device and inode).
#[cfg(unix)]
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// Without inode numbers, only the type can be compared.
#[cfg(not(unix))]
fn same_file(_a: &fs::Metadata, b: &fs::Metadata) -> bool {
    b.is_file()
}

/// Parses a record file, checking its envelope and that the key inside hashes
/// to `hash`. The error is a reason for [`StoreError::Corrupt`].
fn decode(bytes: &[u8], hash: &str) -> Result<LockRecord, String> {
    let record = super::record_json::decode(bytes)?;
    let expected = key_hash(&record.key);
    if expected != hash {
        return Err(format!(
            "it holds the record of key {:?}, which belongs in {expected}.json",
            record.key.as_str()
        ));
    }
    Ok(record)
}

/// Best effort removal of a file this store created (a probe or a stale
/// temporary file).
fn remove_quietly(path: &Path) {
    let _ = fs::remove_file(path);
}

/// Maps an I/O error while trying to `what` on `path` (see [`FileStore`]).
fn io_error(what: &str, path: &Path, e: io::Error) -> StoreError {
    let message = format!("cannot {what} {}: {e}", path.display());
    match e.kind() {
        ErrorKind::PermissionDenied
        | ErrorKind::ReadOnlyFilesystem
        | ErrorKind::NotADirectory
        | ErrorKind::IsADirectory
        | ErrorKind::NotFound
        | ErrorKind::InvalidFilename
        | ErrorKind::InvalidInput
        | ErrorKind::Unsupported => StoreError::Misconfigured(message),
        _ => StoreError::Unavailable(message),
    }
}

/// Runs blocking store work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    // If the caller stops waiting, the work still runs to completion (and
    // releases the key's lock): a write either lands whole or not at all.
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Unavailable(format!("the file store's worker failed: {e}")))?
}

#[async_trait]
impl LockStore for FileStore {
    async fn apply(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
        let store = self.clone();
        let op = op.clone();
        blocking(move || store.apply_blocking(&op)).await
    }

    async fn get(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError> {
        let store = self.clone();
        let key = key.clone();
        blocking(move || store.get_blocking(&key)).await
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        let store = self.clone();
        blocking(move || store.list_blocking()).await
    }

    async fn token_floor(&self) -> Result<FencingToken, StoreError> {
        let store = self.clone();
        blocking(move || store.token_floor_blocking()).await
    }

    async fn purge(
        &self,
        key: &LockKey,
        observed: RecordVersion,
    ) -> Result<LockRecord, StoreError> {
        let store = self.clone();
        let key = key.clone();
        blocking(move || store.purge_blocking(&key, observed)).await
    }

    fn describe(&self) -> String {
        super::url::file_store_url(&self.dir)
    }
    fn shared_name(&self) -> Option<String> {
        Some(self.describe())
    }
    fn queues(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests;
