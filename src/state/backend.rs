//! What a state store needs from the place it keeps its objects: read an
//! object with its version, write one only if it is absent or still at a
//! version (the compare-and-swap S3 offers with `If-None-Match: *` and
//! `If-Match: <ETag>`), and list names under a prefix. One small trait, with
//! the in-memory reference ([`MemoryBackend`]) here, the local directory in
//! [`super::file`] and S3 in the `s3` feature.
//!
//! A backend decides nothing about fences or documents: that is
//! [`super::fenced`]'s job, written once for every backend.

use super::StateError;
use crate::sync::Mutex;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::fmt;

/// The version of an object as its backend names it (an ETag, a hash, a
/// counter). Opaque; equal versions mean equal contents.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectVersion(pub String);

impl fmt::Display for ObjectVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// When a put may land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutIf {
    /// Only if there is no object by that name (`If-None-Match: *`).
    Absent,
    /// Only if the object is still at this version (`If-Match`).
    Version(ObjectVersion),
}

/// Why a put did not land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutFailure {
    /// The condition did not hold (someone else wrote, or the object exists
    /// or is gone). Nothing was written.
    ConditionFailed,
    /// The backend failed; for [`StateError::Unavailable`] the put may or
    /// may not have landed.
    Error(StateError),
}

impl From<StateError> for PutFailure {
    fn from(e: StateError) -> Self {
        PutFailure::Error(e)
    }
}

/// Objects with versions and conditional puts.
#[async_trait]
pub trait StateBackend: Send + Sync + fmt::Debug {
    /// The object at `path` and its version, or `None`.
    async fn get(&self, path: &str) -> Result<Option<(Vec<u8>, ObjectVersion)>, StateError>;
    /// Writes `body` at `path` if `condition` holds, atomically; returns the
    /// new version.
    async fn put(
        &self,
        path: &str,
        body: &[u8],
        condition: PutIf,
    ) -> Result<ObjectVersion, PutFailure>;
    /// The names of the objects under `prefix` (which ends with `/`), in
    /// name order.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StateError>;
    /// Deletes the object at `path` unconditionally (absent: nothing to do).
    /// The state store never calls it: it is for operators and for tests of
    /// what survives a deletion behind the store's back.
    async fn delete(&self, path: &str) -> Result<(), StateError>;
    /// A short description for humans (`file:///srv/state`, `s3://b/p`).
    fn describe(&self) -> String;
}

#[async_trait]
impl<B: StateBackend + ?Sized> StateBackend for std::sync::Arc<B> {
    async fn get(&self, path: &str) -> Result<Option<(Vec<u8>, ObjectVersion)>, StateError> {
        (**self).get(path).await
    }
    async fn put(
        &self,
        path: &str,
        body: &[u8],
        condition: PutIf,
    ) -> Result<ObjectVersion, PutFailure> {
        (**self).put(path, body, condition).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StateError> {
        (**self).list(prefix).await
    }
    async fn delete(&self, path: &str) -> Result<(), StateError> {
        (**self).delete(path).await
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

#[derive(Debug, Default)]
struct Objects {
    by_name: BTreeMap<String, (Vec<u8>, ObjectVersion)>,
    next: u64,
}

/// The in-memory reference backend: a mutex over a map; versions `m1`,
/// `m2`, ... Data lives as long as the value.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    objects: Mutex<Objects>,
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the bytes of an object without a new version, as a disk
    /// error or a hand edit would. For tests of checksums.
    pub fn corrupt(&self, path: &str, bytes: Vec<u8>) {
        if let Some(object) = self.objects.lock().by_name.get_mut(path) {
            object.0 = bytes;
        }
    }
}

#[async_trait]
impl StateBackend for MemoryBackend {
    async fn get(&self, path: &str) -> Result<Option<(Vec<u8>, ObjectVersion)>, StateError> {
        Ok(self.objects.lock().by_name.get(path).cloned())
    }

    async fn put(
        &self,
        path: &str,
        body: &[u8],
        condition: PutIf,
    ) -> Result<ObjectVersion, PutFailure> {
        let mut objects = self.objects.lock();
        let holds = match (&condition, objects.by_name.get(path)) {
            (PutIf::Absent, None) => true,
            (PutIf::Version(v), Some((_, current))) => v == current,
            _ => false,
        };
        if !holds {
            return Err(PutFailure::ConditionFailed);
        }
        objects.next += 1;
        let version = ObjectVersion(format!("m{}", objects.next));
        objects
            .by_name
            .insert(path.to_string(), (body.to_vec(), version.clone()));
        Ok(version)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StateError> {
        Ok(self
            .objects
            .lock()
            .by_name
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }

    async fn delete(&self, path: &str) -> Result<(), StateError> {
        self.objects.lock().by_name.remove(path);
        Ok(())
    }

    fn describe(&self) -> String {
        "mem://".to_string()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conditional_puts_are_compare_and_swap() {
        let b = MemoryBackend::new();
        let v1 = b.put("a/x", b"1", PutIf::Absent).await.unwrap();
        assert_eq!(
            b.put("a/x", b"2", PutIf::Absent).await,
            Err(PutFailure::ConditionFailed)
        );
        let v2 = b
            .put("a/x", b"2", PutIf::Version(v1.clone()))
            .await
            .unwrap();
        assert_eq!(
            b.put("a/x", b"3", PutIf::Version(v1)).await,
            Err(PutFailure::ConditionFailed)
        );
        assert_eq!(b.get("a/x").await, Ok(Some((b"2".to_vec(), v2))));
        assert_eq!(
            b.put("a/y", b"1", PutIf::Version(ObjectVersion("m1".into())))
                .await,
            Err(PutFailure::ConditionFailed),
            "If-Match on a missing object fails"
        );
        b.put("b/z", b"1", PutIf::Absent).await.unwrap();
        assert_eq!(b.list("a/").await, Ok(vec!["a/x".to_string()]));
    }
}
