//! The in-memory reference register (also the simulator's state register).

use super::register::{FencedRegister, StateSnapshot};
use super::{StateError, StateVersion};
use crate::protocol::{FencingToken, LockKey};
use crate::sync::Mutex;
use async_trait::async_trait;
use std::collections::BTreeMap;

#[derive(Debug, Default)]
struct Inner {
    docs: BTreeMap<LockKey, StateSnapshot>,
    next_version: u64,
}

/// An in-memory fenced register. Versions are `v1`, `v2`, ... across keys.
#[derive(Debug, Default)]
pub struct MemoryRegister {
    inner: Mutex<Inner>,
}

impl MemoryRegister {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// [`FencedRegister::load`] without the async wrapper.
    pub fn load_now(&self, key: &LockKey) -> Option<StateSnapshot> {
        self.inner.lock().docs.get(key).cloned()
    }

    /// [`FencedRegister::save`] without the async wrapper: one atomic check-and-set.
    pub fn save_now(
        &self,
        key: &LockKey,
        token: FencingToken,
        expected: Option<&StateVersion>,
        body: &[u8],
    ) -> Result<StateVersion, StateError> {
        let mut inner = self.inner.lock();
        let current = inner.docs.get(key);
        if let Some(cur) = current {
            if token < cur.fence {
                return Err(StateError::Stale {
                    fence: cur.fence,
                    token,
                });
            }
        }
        let found = current.map(|c| c.version.clone());
        if found.as_ref() != expected {
            return Err(StateError::VersionMismatch {
                expected: expected.cloned(),
                found,
            });
        }
        inner.next_version += 1;
        let version = StateVersion(format!("v{}", inner.next_version));
        inner.docs.insert(
            key.clone(),
            StateSnapshot {
                version: version.clone(),
                fence: token,
                body: body.to_vec(),
            },
        );
        Ok(version)
    }
}

#[async_trait]
impl FencedRegister for MemoryRegister {
    async fn load(&self, key: &LockKey) -> Result<Option<StateSnapshot>, StateError> {
        Ok(self.load_now(key))
    }
    async fn save(
        &self,
        key: &LockKey,
        token: FencingToken,
        expected: Option<&StateVersion>,
        body: &[u8],
    ) -> Result<StateVersion, StateError> {
        self.save_now(key, token, expected, body)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fence_and_version_are_enforced() {
        let s = MemoryRegister::new();
        let k = LockKey::new("k").unwrap();
        let v1 = s.save_now(&k, FencingToken(3), None, b"a").unwrap();
        assert!(matches!(
            s.save_now(&k, FencingToken(3), None, b"b"),
            Err(StateError::VersionMismatch { .. })
        ));
        assert_eq!(
            s.save_now(&k, FencingToken(2), Some(&v1), b"b"),
            Err(StateError::Stale {
                fence: FencingToken(3),
                token: FencingToken(2)
            })
        );
        let v2 = s.save_now(&k, FencingToken(5), Some(&v1), b"c").unwrap();
        let snap = s.load_now(&k).unwrap();
        assert_eq!(
            (snap.version, snap.fence, snap.body),
            (v2, FencingToken(5), b"c".to_vec())
        );
    }
}
