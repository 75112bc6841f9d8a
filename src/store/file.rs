//! The local directory store, the embedded default: lock records kept as small
//! JSON files in one directory, safe for any number of processes on one machine.
//!
//! Layout of the directory (`H` is the lowercase hex SHA-256 of the key):
//! - `H.json` — the record of one key, as
//!   `{"format":"statelock-lock-v1","record":{...}}`, written pretty for humans;
//! - `H.lock` — an empty file whose exclusive advisory lock ([`File::lock`])
//!   serialises the writers of that key across processes;
//! - `H.json.R.tmp` — a write in flight (`R` random); readers ignore it.
//!
//! Each [`LockOp`] is applied under the key's lock file as read, decide with
//! [`apply_reference`], write a temporary file, fsync it, rename it over the
//! record and fsync the directory. Because the rename is atomic, a crash at
//! any point leaves either the old or the new record, never a torn one, and
//! readers never need the lock.
//!
//! What this store must not do: delete lock files (a process may hold one);
//! overwrite a record it cannot read (it returns [`StoreError::Corrupt`]
//! instead); block the async runtime (the filesystem work runs in
//! [`tokio::task::spawn_blocking`]). It is only as safe as the filesystem's
//! advisory locks: do not point it at a network filesystem that ignores them.

use super::{
    apply_reference, check_floor, purge_reference, DamagedRecord, Listing, LockStore, StoreError,
};
use crate::protocol::{FencingToken, LockKey, LockOp, LockRecord, OpKind, RecordVersion};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The `format` tag of every record file this store writes and reads.
pub const RECORD_FORMAT: &str = "statelock-lock-v1";

/// The largest record file accepted, in bytes. Larger files are reported as
/// corrupt on reading, and a write that would produce one is refused.
pub const MAX_RECORD_BYTES: u64 = 1 << 20;

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
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

/// The file envelope, as written.
#[derive(Serialize)]
struct EnvelopeOut<'a> {
    format: &'static str,
    record: &'a LockRecord,
}

impl FileStore {
    /// Opens the store in `dir`, creating the directory (and its parents) if it
    /// is missing. Fails with [`StoreError::Misconfigured`] if `dir` is not a
    /// directory or is not writable. Also removes temporary files that crashed
    /// writers left behind more than an hour ago.
    ///
    /// This does a few quick, blocking filesystem calls.
    pub fn open(dir: impl Into<PathBuf>) -> Result<FileStore, StoreError> {
        let dir = dir.into();
        if dir.as_os_str().is_empty() {
            return Err(StoreError::Misconfigured(
                "the lock directory path is empty".to_string(),
            ));
        }
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
        let store = FileStore { dir };
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

    /// [`LockStore::apply`] without the async wrapper. Blocks while another
    /// writer of the same key (in any process) holds the key's lock file, and
    /// on disk I/O: call it only where blocking is allowed.
    pub fn apply_blocking(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
        let hash = key_hash(&op.key);
        let lock_path = self.dir.join(format!("{hash}.lock"));
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| io_error("open the lock file", &lock_path, e))?;
        lock_file
            .lock()
            .map_err(|e| io_error("lock", &lock_path, e))?;
        let result = self.apply_locked(op, &hash);
        // Closing the file releases the advisory lock, also if this thread
        // panicked or the process dies.
        drop(lock_file);
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
        let _key_lock = self.lock_file(&format!("{hash}.lock"))?;
        let record_path = self.dir.join(format!("{hash}.json"));
        let current = read_record(&record_path, &hash, key.as_str())?;
        let purged = purge_reference(current.as_ref(), observed)?;
        {
            let _floor_lock = self.lock_file(FLOOR_LOCK)?;
            let floor_path = self.dir.join(FLOOR_FILE);
            let floor = read_floor(&floor_path)?;
            if purged.token > floor {
                self.replace_file(FLOOR_FILE, &encode_floor(purged.token)?)?;
            }
        }
        fs::remove_file(&record_path).map_err(|e| io_error("remove", &record_path, e))?;
        sync_dir(&self.dir).map_err(|e| io_error("sync the lock directory", &self.dir, e))?;
        Ok(purged)
    }

    /// Opens `name` in the store's directory and takes its exclusive lock;
    /// the lock lasts as long as the returned file.
    fn lock_file(&self, name: &str) -> Result<File, StoreError> {
        let lock_path = self.dir.join(name);
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| io_error("open the lock file", &lock_path, e))?;
        lock_file
            .lock()
            .map_err(|e| io_error("lock", &lock_path, e))?;
        Ok(lock_file)
    }

    /// Replaces `name` with `bytes` atomically and durably: temporary file,
    /// fsync, rename, directory fsync.
    fn replace_file(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.dir.join(name);
        let temp_path = self
            .dir
            .join(format!("{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
        if let Err(e) = write_synced(&temp_path, bytes) {
            remove_quietly(&temp_path);
            return Err(io_error("write", &temp_path, e));
        }
        if let Err(e) = fs::rename(&temp_path, &path) {
            remove_quietly(&temp_path);
            return Err(io_error("replace", &path, e));
        }
        sync_dir(&self.dir).map_err(|e| io_error("sync the lock directory", &self.dir, e))
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
        if let Err(e) = write_synced(&temp_path, &bytes) {
            remove_quietly(&temp_path);
            return Err(io_error("write", &temp_path, e));
        }
        if let Err(e) = fs::rename(&temp_path, &record_path) {
            remove_quietly(&temp_path);
            return Err(io_error("replace", &record_path, e));
        }
        sync_dir(&self.dir).map_err(|e| io_error("sync the lock directory", &self.dir, e))?;
        Ok(next)
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
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", path, e)),
    };
    let meta = file.metadata().map_err(|e| io_error("read", path, e))?;
    if !meta.is_file() {
        return Err(corrupt("not a regular file".to_string()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error("read", path, e))?;
    decode(&bytes, hash).map(Some).map_err(corrupt)
}

/// Parses a record file, checking its envelope and that the key inside hashes
/// to `hash`. The error is a reason for [`StoreError::Corrupt`].
fn decode(bytes: &[u8], hash: &str) -> Result<LockRecord, String> {
    if bytes.is_empty() {
        return Err("the file is empty".to_string());
    }
    if u64::try_from(bytes.len()).map_or(true, |len| len > MAX_RECORD_BYTES) {
        return Err(format!("the file is larger than {MAX_RECORD_BYTES} bytes"));
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let Some(envelope) = value.as_object() else {
        return Err("not a statelock lock record: the JSON is not an object".to_string());
    };
    match envelope.get("format") {
        Some(serde_json::Value::String(format)) if format == RECORD_FORMAT => {}
        Some(other) => {
            return Err(format!(
                "unsupported format {other} (this version reads {RECORD_FORMAT:?})"
            ))
        }
        None => return Err("not a statelock lock record: it has no \"format\" field".to_string()),
    }
    let Some(record) = envelope.get("record") else {
        return Err("the envelope has no \"record\" field".to_string());
    };
    let record =
        LockRecord::deserialize(record).map_err(|e| format!("the record is invalid: {e}"))?;
    let expected = key_hash(&record.key);
    if expected != hash {
        return Err(format!(
            "it holds the record of key {:?}, which belongs in {expected}.json",
            record.key.as_str()
        ));
    }
    Ok(record)
}

/// The bytes of the record file for `record`.
fn encode(record: &LockRecord) -> Result<Vec<u8>, StoreError> {
    let envelope = EnvelopeOut {
        format: RECORD_FORMAT,
        record,
    };
    let mut bytes = serde_json::to_vec_pretty(&envelope).map_err(|e| {
        StoreError::Misconfigured(format!(
            "cannot encode the lock record of {:?}: {e}",
            record.key.as_str()
        ))
    })?;
    bytes.push(b'\n');
    if u64::try_from(bytes.len()).map_or(true, |len| len > MAX_RECORD_BYTES) {
        return Err(StoreError::Misconfigured(format!(
            "the lock record of {:?} would take {} bytes, more than the {MAX_RECORD_BYTES} \
             this store accepts: shorten the holder metadata",
            record.key.as_str(),
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// The file holding the store's token floor (see [`LockStore::token_floor`]).
pub const FLOOR_FILE: &str = "token-floor.json";

/// The lock file serialising writers of [`FLOOR_FILE`].
const FLOOR_LOCK: &str = "token-floor.lock";

/// The `format` tag of the token floor file.
const FLOOR_FORMAT: &str = "statelock-token-floor-v1";

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
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("not valid JSON: {e}")))?;
    match (
        value.get("format"),
        value.get("floor").and_then(|f| f.as_u64()),
    ) {
        (Some(serde_json::Value::String(f)), Some(floor)) if f == FLOOR_FORMAT => {
            Ok(FencingToken(floor))
        }
        _ => Err(corrupt(format!(
            "expected {{\"format\":\"{FLOOR_FORMAT}\",\"floor\":N}}"
        ))),
    }
}

fn encode_floor(floor: FencingToken) -> Result<Vec<u8>, StoreError> {
    let mut bytes = serde_json::to_vec_pretty(&serde_json::json!({
        "format": FLOOR_FORMAT,
        "floor": floor.0,
    }))
    .map_err(|e| StoreError::Misconfigured(format!("cannot encode the token floor: {e}")))?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Creates `path` (it must not exist), writes `bytes` and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Makes a rename in `dir` durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened as files here; the rename is durable once the
/// filesystem commits its metadata.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

fn remove_quietly(path: &Path) {
    // Best effort: a leftover temporary file is ignored by readers and removed
    // by a later `open`.
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
        format!("file://{}", self.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{GrantFrom, HolderInfo, LeaseId, WallTime};
    use std::collections::BTreeSet;
    use std::sync::{Arc, Barrier, Mutex};

    fn key(name: &str) -> LockKey {
        LockKey::new(name).unwrap()
    }

    /// An acquire of a key with no record (the floor of a fresh store is 0).
    fn acquire(key: &LockKey, owner: LeaseId) -> LockOp {
        acquire_from(
            key,
            owner,
            GrantFrom::Absent {
                floor: FencingToken(0),
            },
        )
    }

    fn acquire_from(key: &LockKey, owner: LeaseId, from: GrantFrom) -> LockOp {
        LockOp {
            key: key.clone(),
            new_rvn: RecordVersion::random(),
            at: WallTime(1_700_000_000_000),
            kind: OpKind::Acquire {
                from,
                owner,
                lease_ms: 10_000,
                holder: HolderInfo::named("tester"),
            },
        }
    }

    /// An acquire naming the record as `store` reads it now.
    fn acquire_current(store: &FileStore, key: &LockKey) -> LockOp {
        let current = store.get_blocking(key).unwrap();
        acquire_from(
            key,
            LeaseId::random(),
            GrantFrom::of(current.as_ref(), FencingToken(0)),
        )
    }

    fn release(record: &LockRecord) -> LockOp {
        LockOp {
            key: record.key.clone(),
            new_rvn: RecordVersion::random(),
            at: WallTime(1_700_000_000_001),
            kind: OpKind::Release {
                owner: record.owner,
                current: record.rvn,
            },
        }
    }

    fn store() -> (tempfile::TempDir, FileStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().join("locks")).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn round_trip() {
        let (_dir, store) = store();
        let k = key("stack:user-platform:env:production");
        assert_eq!(store.get(&k).await, Ok(None));
        assert_eq!(store.list().await, Ok(Listing::default()));
        let op = acquire(&k, LeaseId::random());
        let record = store.apply(&op).await.unwrap();
        assert_eq!(record, op.apply(None).unwrap());
        assert_eq!(store.get(&k).await, Ok(Some(record.clone())));
        assert_eq!(store.list().await, Ok(Listing::of(vec![record.clone()])));

        // The file is named by the key's hash and is pretty JSON in its envelope.
        let path = store.record_path(&k);
        assert_eq!(
            path.file_name().unwrap().to_str().unwrap(),
            format!("{}.json", hex::encode(Sha256::digest(k.as_str()))),
        );
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("{\n  \"format\": \"statelock-lock-v1\""),
            "{text}"
        );
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["record"]["key"], k.as_str());

        let released = store.apply(&release(&record)).await.unwrap();
        assert!(released.released);
        assert_eq!(released.token, FencingToken(1));
        assert_eq!(store.get(&k).await, Ok(Some(released)));
        assert_eq!(
            store.describe(),
            format!("file://{}", store.dir().display())
        );
    }

    #[test]
    fn open_rejects_a_file_and_creates_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        match FileStore::open(&file) {
            Err(StoreError::Misconfigured(msg)) => {
                assert!(msg.contains("not a directory"), "{msg}");
                assert!(msg.contains(&file.display().to_string()), "{msg}");
            }
            other => panic!("expected Misconfigured, got {other:?}"),
        }
        match FileStore::open(file.join("below")) {
            Err(StoreError::Misconfigured(msg)) => {
                assert!(msg.contains("below"), "{msg}")
            }
            other => panic!("expected Misconfigured, got {other:?}"),
        }
        let nested = dir.path().join("a/b/c");
        FileStore::open(&nested).unwrap();
        assert!(nested.is_dir());
        // Opening leaves no probe file behind.
        assert_eq!(fs::read_dir(&nested).unwrap().count(), 0);
    }

    #[cfg(unix)]
    #[test]
    fn open_rejects_a_read_only_directory() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let locked = dir.path().join("ro");
        fs::create_dir(&locked).unwrap();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).unwrap();
        let can_write_anyway = fs::write(locked.join("probe"), b"").is_ok();
        if can_write_anyway {
            // Running as root: permissions do not apply. Nothing to test.
            fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
            return;
        }
        match FileStore::open(&locked) {
            Err(StoreError::Misconfigured(msg)) => assert!(msg.contains("not writable"), "{msg}"),
            other => panic!("expected Misconfigured, got {other:?}"),
        }
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Contents that must all be reported as corrupt for key `k`.
    fn bad_contents(k: &LockKey) -> Vec<(&'static str, Vec<u8>)> {
        let good = encode(&acquire(k, LeaseId::random()).apply(None).unwrap()).unwrap();
        let other_key = encode(
            &acquire(&key("another-key"), LeaseId::random())
                .apply(None)
                .unwrap(),
        )
        .unwrap();
        let foreign_format = String::from_utf8(good.clone())
            .unwrap()
            .replace(RECORD_FORMAT, "statelock-lock-v9")
            .into_bytes();
        vec![
            ("not JSON", b"{this is not json".to_vec()),
            ("empty", Vec::new()),
            ("truncated", good[..good.len() / 2].to_vec()),
            (
                "foreign JSON",
                br#"{"LockID":"bucket/key","Info":"{}"}"#.to_vec(),
            ),
            ("a JSON array", b"[1, 2, 3]".to_vec()),
            ("unknown format", foreign_format),
            ("no record", br#"{"format":"statelock-lock-v1"}"#.to_vec()),
            (
                "invalid record",
                br#"{"format":"statelock-lock-v1","record":{"key":"k"}}"#.to_vec(),
            ),
            ("another key's record", other_key),
            ("binary", vec![0xff, 0xfe, 0x00, 0x01]),
        ]
    }

    #[tokio::test]
    async fn corrupt_records_are_reported_and_never_overwritten() {
        let (_dir, store) = store();
        let k = key("k");
        let healthy = store
            .apply(&acquire(&key("healthy"), LeaseId::random()))
            .await
            .unwrap();
        for (what, bytes) in bad_contents(&k) {
            let path = store.record_path(&k);
            fs::write(&path, &bytes).unwrap();
            match store.get(&k).await {
                Err(StoreError::Corrupt { key, reason }) => {
                    assert_eq!(key, "k", "{what}");
                    assert!(
                        reason.contains(&path.display().to_string()),
                        "{what}: {reason}"
                    );
                }
                other => panic!("{what}: get should say Corrupt, got {other:?}"),
            }
            // The listing flags it and still lists the healthy records.
            match store.list().await {
                Ok(listing) => {
                    assert_eq!(listing.records, vec![healthy.clone()], "{what}");
                    assert_eq!(listing.damaged.len(), 1, "{what}");
                    assert_eq!(
                        listing.damaged[0].key,
                        path.file_name().unwrap().to_str().unwrap(),
                        "{what}"
                    )
                }
                other => panic!("{what}: list should flag it, got {other:?}"),
            }
            match store.apply(&acquire(&k, LeaseId::random())).await {
                Err(StoreError::Corrupt { .. }) => {}
                other => panic!("{what}: apply should say Corrupt, got {other:?}"),
            }
            assert_eq!(
                fs::read(&path).unwrap(),
                bytes,
                "{what}: the bad file was changed"
            );
            fs::remove_file(&path).unwrap();
        }
        // Once the operator removes the bad file, the key works again.
        assert!(store.apply(&acquire(&k, LeaseId::random())).await.is_ok());
    }

    #[tokio::test]
    async fn a_directory_in_place_of_a_record_is_corrupt() {
        let (_dir, store) = store();
        let k = key("k");
        fs::create_dir(store.record_path(&k)).unwrap();
        assert!(matches!(
            store.get(&k).await,
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            store.apply(&acquire(&k, LeaseId::random())).await,
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn stray_files_are_ignored() {
        let (_dir, store) = store();
        let k = key("k");
        let record = store.apply(&acquire(&k, LeaseId::random())).await.unwrap();
        let hash = key_hash(&k);
        let other_hash = key_hash(&key("other"));
        let strays = [
            format!("{hash}.json.0123456789abcdef0123456789abcdef.tmp"),
            format!("{other_hash}.json.0123456789abcdef0123456789abcdef.tmp"),
            format!("{other_hash}.lock"),
            format!("{}.json", other_hash.to_uppercase()),
            "README.json".to_string(),
            "notes.txt".to_string(),
            ".hidden".to_string(),
        ];
        for name in &strays {
            fs::write(store.dir().join(name), b"{half a record").unwrap();
        }
        fs::create_dir(store.dir().join("subdir")).unwrap();
        assert_eq!(store.list().await, Ok(Listing::of(vec![record.clone()])));
        assert_eq!(store.get(&k).await, Ok(Some(record.clone())));
        assert_eq!(store.get(&key("other")).await, Ok(None));
        // Writes still work next to a leftover temporary file of the same key.
        let released = store.apply(&release(&record)).await.unwrap();
        assert_eq!(store.get(&k).await, Ok(Some(released)));
    }

    #[test]
    fn stale_temp_files_are_removed_on_open() {
        let (_dir, store) = store();
        let hash = key_hash(&key("k"));
        let old = store
            .dir()
            .join(format!("{hash}.json.0123456789abcdef0123456789abcdef.tmp"));
        let young = store
            .dir()
            .join(format!("{hash}.json.fedcba9876543210fedcba9876543210.tmp"));
        let not_ours = store.dir().join("keep.tmp");
        for path in [&old, &young, &not_ours] {
            fs::write(path, b"x").unwrap();
        }
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        for path in [&old, &not_ours] {
            File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(two_hours_ago)
                .unwrap();
        }
        FileStore::open(store.dir()).unwrap();
        assert!(!old.exists());
        assert!(young.exists());
        assert!(not_ours.exists());
    }

    #[tokio::test]
    async fn a_second_store_on_the_same_directory_sees_the_writes() {
        let (_dir, first) = store();
        let second = FileStore::open(first.dir()).unwrap();
        let k = key("shared");
        let record = first.apply(&acquire(&k, LeaseId::random())).await.unwrap();
        assert_eq!(second.get(&k).await, Ok(Some(record.clone())));
        assert_eq!(
            second.apply(&acquire(&k, LeaseId::random())).await,
            Err(StoreError::conflict(Some(record.clone())))
        );
        let released = second.apply(&release(&record)).await.unwrap();
        assert_eq!(first.list().await, Ok(Listing::of(vec![released])));
    }

    #[tokio::test]
    async fn oversized_records_are_refused() {
        let (_dir, store) = store();
        let k = key("big");
        let mut op = acquire(&k, LeaseId::random());
        if let OpKind::Acquire { holder, .. } = &mut op.kind {
            holder.metadata.insert(
                "blob".into(),
                "x".repeat(usize::try_from(MAX_RECORD_BYTES).unwrap()),
            );
        }
        assert!(matches!(
            store.apply(&op).await,
            Err(StoreError::Misconfigured(_))
        ));
        assert_eq!(store.get(&k).await, Ok(None));
    }

    #[test]
    fn io_errors_are_classified() {
        let p = Path::new("/x");
        let kinds = [
            (ErrorKind::PermissionDenied, false),
            (ErrorKind::ReadOnlyFilesystem, false),
            (ErrorKind::NotFound, false),
            (ErrorKind::Unsupported, false),
            (ErrorKind::StorageFull, true),
            (ErrorKind::QuotaExceeded, true),
            (ErrorKind::Interrupted, true),
            (ErrorKind::Other, true),
        ];
        for (kind, retryable) in kinds {
            let e = io_error("write", p, io::Error::new(kind, "boom"));
            assert_eq!(e.is_retryable(), retryable, "{kind:?}");
            assert!(e.to_string().contains("/x") && e.to_string().contains("boom"));
        }
    }

    type Attempt = Result<LockRecord, StoreError>;

    /// Threads with their own `FileStore` on one directory race for a key,
    /// round after round: exactly one wins each round and tokens increase.
    /// (`File::lock` locks belong to the open file, not the process, so
    /// separate opens in one process exclude each other like processes do.)
    #[test]
    fn racing_stores_on_one_directory_grant_exactly_once_per_round() {
        const THREADS: usize = 8;
        const ROUNDS: usize = 6;
        let dir = tempfile::tempdir().unwrap();
        let k = key("contended");
        let barrier = Arc::new(Barrier::new(THREADS));
        let results: Arc<Mutex<Vec<Vec<Attempt>>>> = Arc::new(Mutex::new(vec![Vec::new(); ROUNDS]));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let store = FileStore::open(dir.path()).unwrap();
                let (k, barrier, results) = (k.clone(), barrier.clone(), results.clone());
                std::thread::spawn(move || {
                    for round in 0..ROUNDS {
                        let op = acquire_current(&store, &k);
                        barrier.wait();
                        let outcome = store.apply_blocking(&op);
                        results.lock().unwrap()[round].push(outcome.clone());
                        barrier.wait();
                        if let Ok(record) = outcome {
                            store.apply_blocking(&release(&record)).unwrap();
                        }
                        barrier.wait();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let results = results.lock().unwrap();
        let mut last_token = FencingToken(0);
        for (round, outcomes) in results.iter().enumerate() {
            let winners: Vec<&LockRecord> =
                outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
            assert_eq!(winners.len(), 1, "round {round}: {outcomes:?}");
            let winner = winners[0];
            assert!(winner.token > last_token, "round {round}");
            last_token = winner.token;
            for outcome in outcomes.iter().filter(|o| o.is_err()) {
                assert_eq!(outcome, &Err(StoreError::conflict(Some(winner.clone()))));
            }
        }
        assert_eq!(last_token, FencingToken(ROUNDS as u64));
    }

    const CHILD_DIR_ENV: &str = "STATELOCK_FILE_STORE_CHILD_DIR";
    const CHILD_GRANTS: u64 = 15;
    const GRANT_MARK: &str = "statelock-granted-token ";

    /// Run by `separate_processes_never_grant_a_token_twice` in child
    /// processes; does nothing when run directly.
    #[test]
    #[ignore = "helper for separate_processes_never_grant_a_token_twice"]
    fn cross_process_child() {
        let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
            return;
        };
        let store = FileStore::open(PathBuf::from(dir)).unwrap();
        let k = key("cross-process");
        let mut granted = 0;
        while granted < CHILD_GRANTS {
            match store.apply_blocking(&acquire_current(&store, &k)) {
                Ok(record) => {
                    println!("{GRANT_MARK}{}", record.token.0);
                    store.apply_blocking(&release(&record)).unwrap();
                    granted += 1;
                }
                Err(StoreError::Conflict { .. }) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Real processes acquire and release one key concurrently; every grant
    /// must get a distinct token, and together they are exactly 1..=N (no
    /// grant was lost or duplicated by a racing read-modify-write).
    #[test]
    fn separate_processes_never_grant_a_token_twice() {
        const CHILDREN: u64 = 4;
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let children: Vec<_> = (0..CHILDREN)
            .map(|_| {
                std::process::Command::new(&exe)
                    .args([
                        "store::file::tests::cross_process_child",
                        "--exact",
                        "--ignored",
                        "--nocapture",
                        "--test-threads=1",
                    ])
                    .env(CHILD_DIR_ENV, dir.path())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // Wait for every child before judging any, so none is left running.
        let outputs: Vec<_> = children
            .into_iter()
            .map(|child| child.wait_with_output().unwrap())
            .collect();
        let mut tokens = Vec::new();
        for output in outputs {
            assert!(output.status.success(), "child failed: {output:?}");
            let stdout = String::from_utf8(output.stdout).unwrap();
            // libtest may print its own text before ours on the same line.
            let mine: Vec<u64> = stdout
                .lines()
                .filter_map(|l| l.split(GRANT_MARK).nth(1))
                .map(|t| t.trim().parse().unwrap())
                .collect();
            assert_eq!(mine.len() as u64, CHILD_GRANTS, "{stdout}");
            tokens.extend(mine);
        }
        let distinct: BTreeSet<u64> = tokens.iter().copied().collect();
        assert_eq!(distinct.len(), tokens.len(), "a token was granted twice");
        assert_eq!(distinct, (1..=CHILDREN * CHILD_GRANTS).collect());
    }
}
