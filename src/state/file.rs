//! The local-directory state backend, the embedded default: objects as files
//! under one root directory, laid out as on S3
//! (`stacks/{stack}/{env}/state.json`, `.../history/…`), safe for any number
//! of processes on one machine.
//!
//! An object's version is the SHA-256 of its bytes (every document a state
//! store writes carries a random write id, so two versions never collide).
//! A conditional put runs under the object's lock file (`<name>.lock`, an
//! exclusive `flock`, waited for at most [`LOCK_WAIT`]) as: read and compare
//! the version, write a temporary file, fsync it, rename it over the object,
//! fsync the directory. Readers need no lock: a rename is atomic. What this
//! backend must not do: follow a symbolic link in place of an object, or
//! block the async runtime (the work runs on tokio's blocking pool).

use super::backend::{ObjectVersion, PutFailure, PutIf, StateBackend};
use super::StateError;
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The longest a put waits for another process's lock on the same object.
pub const LOCK_WAIT: Duration = Duration::from_secs(2);

/// State objects in a local directory (see the module documentation).
#[derive(Debug, Clone)]
pub struct FileBackend {
    root: PathBuf,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> StateError {
    let message = format!("cannot {what} {}: {e}", path.display());
    match e.kind() {
        ErrorKind::PermissionDenied
        | ErrorKind::ReadOnlyFilesystem
        | ErrorKind::NotADirectory
        | ErrorKind::IsADirectory
        | ErrorKind::InvalidFilename
        | ErrorKind::Unsupported => StateError::Misconfigured(message),
        _ => StateError::Unavailable(message),
    }
}

fn version_of(bytes: &[u8]) -> ObjectVersion {
    ObjectVersion(hex::encode(Sha256::digest(bytes)))
}

impl FileBackend {
    /// A backend rooted at `root` (made absolute; created when first written).
    pub fn open(root: impl Into<PathBuf>) -> Result<FileBackend, StateError> {
        let root = root.into();
        if root.as_os_str().is_empty() {
            return Err(StateError::Misconfigured(
                "the state directory path is empty".into(),
            ));
        }
        let root = std::path::absolute(&root).map_err(|e| io_error("resolve", &root, e))?;
        if let Ok(meta) = fs::metadata(&root) {
            if !meta.is_dir() {
                return Err(StateError::Misconfigured(format!(
                    "{} is not a directory: the file state store needs a directory",
                    root.display()
                )));
            }
        }
        Ok(FileBackend { root })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> Result<PathBuf, StateError> {
        let safe = !name.is_empty()
            && !name.starts_with('/')
            && name
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
        if !safe {
            return Err(StateError::Misconfigured(format!(
                "{name:?} is not a valid state object name"
            )));
        }
        Ok(self.root.join(name))
    }

    fn get_blocking(path: &Path) -> Result<Option<(Vec<u8>, ObjectVersion)>, StateError> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(StateError::Corrupt {
                    key: path.display().to_string(),
                    reason: "a symbolic link in place of a state object (never followed)".into(),
                })
            }
            Ok(meta) if !meta.is_file() => {
                return Err(StateError::Corrupt {
                    key: path.display().to_string(),
                    reason: "not a regular file".into(),
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("read", path, e)),
        }
        match fs::read(path) {
            Ok(bytes) => {
                let version = version_of(&bytes);
                Ok(Some((bytes, version)))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("read", path, e)),
        }
    }

    fn lock(path: &Path) -> Result<File, StateError> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| io_error("open the lock file", &lock_path, e))?;
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => return Err(io_error("lock", &lock_path, e)),
            }
            if start.elapsed() >= LOCK_WAIT {
                return Err(StateError::Unavailable(format!(
                    "the lock file {} is still held after {LOCK_WAIT:?}; a stopped or hung process may hold it (`fuser -v {}`)",
                    lock_path.display(),
                    lock_path.display()
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    fn put_blocking(
        path: &Path,
        body: &[u8],
        condition: &PutIf,
    ) -> Result<ObjectVersion, PutFailure> {
        let dir = path.parent().ok_or_else(|| {
            StateError::Misconfigured(format!("{} has no directory", path.display()))
        })?;
        fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
        let lock = Self::lock(path)?;
        let current = Self::get_blocking(path)?;
        let holds = match (condition, &current) {
            (PutIf::Absent, None) => true,
            (PutIf::Version(v), Some((_, cur))) => v == cur,
            _ => false,
        };
        if !holds {
            drop(lock);
            return Err(PutFailure::ConditionFailed);
        }
        let mut temp = path.as_os_str().to_owned();
        temp.push(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
        let temp = PathBuf::from(temp);
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .and_then(|mut f| {
                f.write_all(body)?;
                f.sync_all()
            });
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(io_error("write", &temp, e).into());
        }
        if let Err(e) = fs::rename(&temp, path) {
            let _ = fs::remove_file(&temp);
            return Err(io_error("replace", path, e).into());
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("sync", dir, e))?;
        drop(lock);
        Ok(version_of(body))
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<String>, StateError> {
        let dir_name = prefix.trim_end_matches('/');
        let dir = self.path(dir_name)?;
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("list", &dir, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("list", &dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.ends_with(".json") && entry.file_type().is_ok_and(|t| t.is_file()) {
                names.push(format!("{dir_name}/{name}"));
            }
        }
        names.sort();
        Ok(names)
    }
}

async fn blocking<T: Send + 'static, E: Send + 'static + From<StateError>>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        E::from(StateError::Unavailable(format!(
            "the file state store's worker failed: {e}"
        )))
    })?
}

#[async_trait]
impl StateBackend for FileBackend {
    async fn get(&self, name: &str) -> Result<Option<(Vec<u8>, ObjectVersion)>, StateError> {
        let path = self.path(name)?;
        blocking(move || Self::get_blocking(&path)).await
    }

    async fn put(
        &self,
        name: &str,
        body: &[u8],
        condition: PutIf,
    ) -> Result<ObjectVersion, PutFailure> {
        let path = self.path(name)?;
        let body = body.to_vec();
        blocking(move || Self::put_blocking(&path, &body, &condition)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StateError> {
        let me = self.clone();
        let prefix = prefix.to_string();
        blocking(move || me.list_blocking(&prefix)).await
    }

    async fn delete(&self, name: &str) -> Result<(), StateError> {
        let path = self.path(name)?;
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("delete", &path, e)),
        })
        .await
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conditional_puts_reads_and_listing() {
        let dir = tempfile::tempdir().unwrap();
        let b = FileBackend::open(dir.path().join("state")).unwrap();
        assert_eq!(b.get("a/x.json").await, Ok(None));
        let v1 = b.put("a/x.json", b"1", PutIf::Absent).await.unwrap();
        assert_eq!(
            b.put("a/x.json", b"2", PutIf::Absent).await,
            Err(PutFailure::ConditionFailed)
        );
        let v2 = b
            .put("a/x.json", b"2", PutIf::Version(v1.clone()))
            .await
            .unwrap();
        assert_eq!(
            b.put("a/x.json", b"3", PutIf::Version(v1)).await,
            Err(PutFailure::ConditionFailed)
        );
        assert_eq!(b.get("a/x.json").await, Ok(Some((b"2".to_vec(), v2))));
        b.put("a/h/2.json", b"h", PutIf::Absent).await.unwrap();
        b.put("a/h/1.json", b"h", PutIf::Absent).await.unwrap();
        assert_eq!(
            b.list("a/h/").await,
            Ok(vec!["a/h/1.json".to_string(), "a/h/2.json".to_string()])
        );
        assert_eq!(b.list("none/").await, Ok(vec![]));
        for bad in ["", "/abs", "a/../b", "a//b"] {
            assert!(matches!(
                b.get(bad).await,
                Err(StateError::Misconfigured(_))
            ));
        }
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_symlink_in_place_of_an_object_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let b = FileBackend::open(dir.path()).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join("s.json"))
            .unwrap();
        assert!(matches!(
            b.get("s.json").await,
            Err(StateError::Corrupt { .. })
        ));
        assert!(matches!(
            b.put("s.json", b"x", PutIf::Absent).await,
            Err(PutFailure::Error(StateError::Corrupt { .. }))
        ));
    }
}
