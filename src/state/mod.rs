//! State stores: where deployment state lives, guarded by fencing tokens
//! (docs/PROTOCOL.md, "Fencing at the state store").
//!
//! A [`StateStore`] keeps, per lock key, the deployer's state document
//! ([`document`], `deployer-state-v1`) at `stacks/{stack}/{env}/state.json`
//! ([`layout`]), immutable history snapshots and backups beside it. Every
//! document carries a fence: the token and lease of its last sealer or saver.
//! The holder of a lock **seals** the state when it acquires the lock (raising
//! the fence to its token) and only then saves; a save lands only on the
//! version its writer read and only while the fence is still its own. So once
//! a new holder has sealed, an older holder can write nothing at all
//! (`FencingMonotonic`, `NoLostUpdate`).
//!
//! [`fenced::FencedStore`] implements those rules once over any
//! [`backend::StateBackend`] (objects with conditional puts): in memory, in a
//! local directory ([`mod@file`], the embedded default) and in S3. The older
//! [`register::FencedRegister`] is the minimal register the simulator and the
//! DynamoDB state heads implement.

pub mod backend;
pub mod document;
#[cfg(feature = "dynamodb")]
pub mod dynamodb;
pub mod fenced;
pub mod file;
pub mod layout;
pub mod open;
pub mod register;
pub mod register_memory;
#[cfg(feature = "s3")]
pub mod s3;

pub use document::{Stamp, StateDocument};
pub use fenced::FencedStore;

use crate::client::LockGuard;
use crate::protocol::{FencingToken, LeaseId, LockKey, WallTime};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::fmt;

/// An opaque version of a state document (an ETag, a hash, a counter).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StateVersion(pub String);

impl fmt::Display for StateVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who writes the state: the holder of a key's lock, by its fencing token
/// and lease. From a guard ([`Writer::of`]), or from the environment
/// `statelock exec` gives its command (`STATELOCK_KEY`, `STATELOCK_TOKEN`,
/// `STATELOCK_LEASE_ID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    /// The lock key (and so the state's location).
    pub key: LockKey,
    /// The holder's fencing token.
    pub token: FencingToken,
    /// The holder's lease.
    pub lease: LeaseId,
}

impl Writer {
    /// The holder of `guard` (its current token).
    pub fn of(guard: &LockGuard) -> Writer {
        Writer {
            key: guard.key().clone(),
            token: guard.token(),
            lease: guard.lease_id(),
        }
    }
}

/// A document as read, with the version to name when saving over it.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The version read: pass it to [`StateStore::save`].
    pub version: StateVersion,
    /// The document (with its stamp).
    pub document: StateDocument,
}

impl Loaded {
    /// The document's stamp (`None` for a document written elsewhere).
    pub fn stamp(&self) -> Option<Stamp> {
        self.document.statelock
    }
}

/// One history snapshot (one accepted save).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// Its name, for [`StateStore::snapshot`] and restores.
    pub id: String,
    /// The save's number (1, 2, ...).
    pub serial: u64,
    /// The writer's fencing token.
    pub token: FencingToken,
    /// The writer's lease.
    pub lease: LeaseId,
    /// The writer's wall clock (informational).
    pub written_at: WallTime,
    /// The document's `metadata.last_updated_by`, if set.
    pub updated_by: Option<String>,
    /// The snapshot's checksums match its content.
    pub checksums_ok: bool,
}

/// Errors of a state store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The state's fence is above the writer's token (or equal, for another
    /// lease): its lock was taken over. Nothing was written.
    #[error("stale writer: the state is fenced at token {fence}, this writer holds token {token}; its lock was taken over")]
    Stale {
        /// The state's fence.
        fence: FencingToken,
        /// The writer's token.
        token: FencingToken,
    },
    /// The state is not sealed by this writer (its fence is below the
    /// writer's token, or there is no state): seal it when acquiring the
    /// lock, before saving.
    #[error("the state of {key} is not sealed by this holder (fence {}); seal it when the lock is acquired, then save", fence.map_or_else(|| "none".to_string(), |f| f.to_string()))]
    NotSealed {
        /// The key.
        key: String,
        /// The state's fence, if there is a state.
        fence: Option<FencingToken>,
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
    /// A document's content does not match its checksum: it is never
    /// overwritten, except by an explicit forced restore.
    #[error("the state of {key} is damaged: the checksum of its {part} is {computed}, the document says {stored}; restore a snapshot with --force")]
    ChecksumMismatch {
        /// The key.
        key: String,
        /// Which part (`resources`, `outputs`).
        part: String,
        /// The checksum the document carries.
        stored: String,
        /// The checksum of its content.
        computed: String,
    },
    /// No such state, snapshot or backup.
    #[error("{0}")]
    NotFound(String),
    /// The writer does not hold the lock (checked by stores that can check it).
    #[error("the writer does not hold the lock")]
    NotHolder,
    /// The store did not answer; the outcome of a write is unknown.
    #[error("the state store is unavailable: {0}")]
    Unavailable(String),
    /// A stored document is damaged (not a state document at all).
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

/// A store of state documents with fences, history and restores (see the
/// module documentation). Every implementation passes the state
/// conformance suite (`testkit::state_conformance`).
#[async_trait]
pub trait StateStore: Send + Sync + fmt::Debug {
    /// The current document of `key`, its checksums verified (a mismatch is
    /// [`StateError::ChecksumMismatch`]); `None` if there is none.
    async fn load(&self, key: &LockKey) -> Result<Option<Loaded>, StateError>;

    /// Raises the fence of `writer.key`'s state to the writer's token
    /// (creating an empty document if there is none), before the writer's
    /// first save. Idempotent for the same lease. A fence above the token (or
    /// equal, for another lease) is [`StateError::Stale`]: for a holder that
    /// still holds its lock, the key's lock record was deleted or restored
    /// behind the protocol's back — raise the lock's token above the fence
    /// ([`LockGuard::rebase_above`]) and seal again.
    async fn seal(&self, writer: &Writer) -> Result<Loaded, StateError>;

    /// Saves `document` over version `expected` (the version the writer
    /// read), if the state is still sealed by `writer`. Stamps it, computes
    /// its checksums and keeps a history snapshot. Returns the new version.
    async fn save(
        &self,
        writer: &Writer,
        expected: &StateVersion,
        document: StateDocument,
    ) -> Result<StateVersion, StateError>;

    /// The newest `limit` history snapshots, newest first.
    async fn history(&self, key: &LockKey, limit: usize) -> Result<Vec<HistoryEntry>, StateError>;

    /// A history snapshot or backup by name (its checksums verified).
    async fn snapshot(&self, key: &LockKey, id: &str) -> Result<StateDocument, StateError>;

    /// Copies the current document to a backup; returns its name.
    async fn backup(&self, key: &LockKey) -> Result<String, StateError>;

    /// Writes snapshot or backup `id` as a new version, by `writer` (who
    /// must have sealed the state): the fence stays the writer's token, it
    /// never goes back. `force` allows writing over a document whose
    /// checksums fail.
    async fn restore(
        &self,
        writer: &Writer,
        id: &str,
        force: bool,
    ) -> Result<StateVersion, StateError>;

    /// A short description for humans.
    fn describe(&self) -> String;
}

#[async_trait]
impl<S: StateStore + ?Sized> StateStore for std::sync::Arc<S> {
    async fn load(&self, key: &LockKey) -> Result<Option<Loaded>, StateError> {
        (**self).load(key).await
    }
    async fn seal(&self, writer: &Writer) -> Result<Loaded, StateError> {
        (**self).seal(writer).await
    }
    async fn save(
        &self,
        writer: &Writer,
        expected: &StateVersion,
        document: StateDocument,
    ) -> Result<StateVersion, StateError> {
        (**self).save(writer, expected, document).await
    }
    async fn history(&self, key: &LockKey, limit: usize) -> Result<Vec<HistoryEntry>, StateError> {
        (**self).history(key, limit).await
    }
    async fn snapshot(&self, key: &LockKey, id: &str) -> Result<StateDocument, StateError> {
        (**self).snapshot(key, id).await
    }
    async fn backup(&self, key: &LockKey) -> Result<String, StateError> {
        (**self).backup(key).await
    }
    async fn restore(
        &self,
        writer: &Writer,
        id: &str,
        force: bool,
    ) -> Result<StateVersion, StateError> {
        (**self).restore(writer, id, force).await
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// Seals `guard`'s state in `store`, raising the lock's token above the
/// state's fence first if the fence is ahead of it (the key's lock record was
/// deleted or restored behind the protocol's back), so the guard's holder —
/// and no older one — may save. Returns the writer to save with and the
/// sealed document.
pub async fn seal_for(
    store: &dyn StateStore,
    guard: &LockGuard,
) -> Result<(Writer, Loaded), SealError> {
    guard.check().map_err(SealError::Lock)?;
    let writer = Writer::of(guard);
    match store.seal(&writer).await {
        Ok(loaded) => Ok((writer, loaded)),
        Err(StateError::Stale { fence, .. }) => {
            tracing::warn!(
                lock_key = %writer.key,
                token = writer.token.0,
                fence = fence.0,
                "the state is fenced at or above this holder's token: raising the lock's token"
            );
            guard.rebase_above(fence).await.map_err(SealError::Lock)?;
            let writer = Writer::of(guard);
            let loaded = store.seal(&writer).await.map_err(SealError::State)?;
            Ok((writer, loaded))
        }
        Err(e) => Err(SealError::State(e)),
    }
}

/// Why [`seal_for`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The lease is not valid (or was lost while re-basing).
    #[error(transparent)]
    Lock(crate::client::LockError),
    /// The state store failed.
    #[error(transparent)]
    State(StateError),
}
