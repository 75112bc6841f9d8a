//! The fenced register: the smallest state store, a versioned document per
//! key whose every save is a compare-and-swap on the version that also
//! requires `token >= fence` (the fence being the token of the last writer).
//! The simulator's store host and the DynamoDB state heads are registers; a
//! first save with a new token is that holder's seal. The full state store
//! ([`super::StateStore`]) adds documents, history and restores on top of the
//! same two rules.

use super::{StateError, StateVersion};
use crate::protocol::{FencingToken, LockKey};
use async_trait::async_trait;
use std::fmt;

/// A document as a register stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSnapshot {
    /// Its version: pass it as `expected` to the next save.
    pub version: StateVersion,
    /// The token of the writer that stored it (the fence).
    pub fence: FencingToken,
    /// The document.
    pub body: Vec<u8>,
}

/// A fenced, versioned register of documents.
#[async_trait]
pub trait FencedRegister: Send + Sync + fmt::Debug {
    /// Reads the current document of `key`.
    async fn load(&self, key: &LockKey) -> Result<Option<StateSnapshot>, StateError>;

    /// Stores `body` for `key` if the current version is `expected` (`None`:
    /// no document yet) and `token` is at least the current fence; the new
    /// fence is `token`. Returns the new version.
    async fn save(
        &self,
        key: &LockKey,
        token: FencingToken,
        expected: Option<&StateVersion>,
        body: &[u8],
    ) -> Result<StateVersion, StateError>;
}
