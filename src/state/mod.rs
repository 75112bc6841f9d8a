//! State stores: where deployment state lives, guarded by fencing tokens.
//!
//! A [`StateStore`] keeps, per key, a state document with a version and a
//! *fence* (the token of its last writer). Every save is a compare-and-swap on
//! the version that also requires `token >= fence`, so the accepted writes form a
//! chain (`NoLostUpdate`) with non-decreasing tokens (`FencingMonotonic`), and a
//! holder whose lock was taken over can no longer write once the new holder has
//! sealed the state (raised the fence to its token).

#[cfg(feature = "dynamodb")]
pub mod dynamodb;
pub mod memory;

use crate::protocol::{FencingToken, LockKey};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::fmt;

/// An opaque version of a state document (an ETag, a counter, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StateVersion(pub String);

impl fmt::Display for StateVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A state document as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSnapshot {
    /// Its version: pass it as `expected` to the next save.
    pub version: StateVersion,
    /// The token of the writer that stored it (the fence).
    pub fence: FencingToken,
    /// The document.
    pub body: Vec<u8>,
}

/// Errors of a state store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The writer's token is older than the fence: its lock was taken over.
    #[error("stale writer: the state is fenced at token {fence}, this writer holds token {token}")]
    Stale {
        /// The state's fence.
        fence: FencingToken,
        /// The writer's token.
        token: FencingToken,
    },
    /// The state changed since the writer read it.
    #[error(
        "the state changed since it was read (expected version {expected:?}, found {found:?})"
    )]
    VersionMismatch {
        /// What the writer expected.
        expected: Option<StateVersion>,
        /// What is stored.
        found: Option<StateVersion>,
    },
    /// The writer does not hold the lock (checked by stores that can check it).
    #[error("the writer does not hold the lock")]
    NotHolder,
    /// The store did not answer; the outcome of a write is unknown.
    #[error("the state store is unavailable: {0}")]
    Unavailable(String),
    /// A stored document is damaged.
    #[error("the state for {key:?} is unreadable: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The store is set up wrongly.
    #[error("the state store is misconfigured: {0}")]
    Misconfigured(String),
}

/// A fenced, versioned register of state documents.
#[async_trait]
pub trait StateStore: Send + Sync + fmt::Debug {
    /// Reads the current state of `key`.
    async fn load(&self, key: &LockKey) -> Result<Option<StateSnapshot>, StateError>;

    /// Stores `body` for `key` if the current version is `expected` (`None`:
    /// no state yet) and `token` is at least the current fence; the new fence is
    /// `token`. Returns the new version.
    async fn save(
        &self,
        key: &LockKey,
        token: FencingToken,
        expected: Option<&StateVersion>,
        body: &[u8],
    ) -> Result<StateVersion, StateError>;
}
