//! Lock stores: where lock records live. A [`LockStore`] performs each
//! [`LockOp`] of PROTOCOL.md as exactly one conditional write (one round trip)
//! and, when the condition fails, returns the current record.
//!
//! Implementations: [`memory::MemoryStore`] (the reference, also the
//! simulator's server), [`file::FileStore`] (the embedded default), and the
//! DynamoDB and S3 adapters behind their features. Every store must pass the
//! conformance suite in `testkit`.

#[cfg(feature = "dynamodb")]
pub mod dynamodb;
pub mod file;
pub mod memory;
pub mod open;
#[cfg(feature = "dynamodb")]
pub mod terraform;
pub mod url;

pub use open::open_lock_store;

use crate::protocol::{LockKey, LockOp, LockRecord};
use async_trait::async_trait;
use std::fmt;

/// Errors of a store, split by whose fault they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The op's condition failed. `current` is the record now stored (`None`:
    /// there is none). Nobody's fault: the protocol's normal answer.
    #[error("the lock record changed (condition failed)")]
    Conflict {
        /// The current record.
        current: Option<Box<LockRecord>>,
    },
    /// The store did not answer (network, throttling, 5xx, timeout). For a write
    /// the outcome is unknown: it may have landed. Retryable.
    #[error("the lock store is unavailable: {0}")]
    Unavailable(String),
    /// A stored record cannot be read (damaged or written by something else).
    /// It is never overwritten silently.
    #[error("the lock record for {key:?} is unreadable: {reason}")]
    Corrupt {
        /// The key (or object name) of the damaged record.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store is set up wrongly (missing table or bucket, bad credentials,
    /// bad path or URL). The operator must fix it; retrying will not help.
    #[error("the lock store is misconfigured: {0}")]
    Misconfigured(String),
}

impl StoreError {
    /// A conflict carrying `current`.
    pub fn conflict(current: Option<LockRecord>) -> Self {
        StoreError::Conflict {
            current: current.map(Box::new),
        }
    }

    /// True if retrying the same request may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// A store of lock records offering the conditional writes of PROTOCOL.md.
///
/// Guarantees every implementation must give (checked by the conformance
/// suite): `apply` is linearizable per key and is one conditional write; a
/// failed condition returns [`StoreError::Conflict`] with the current record;
/// the record written equals [`LockOp::apply`] of the previous one; records
/// are never deleted by these operations.
#[async_trait]
pub trait LockStore: Send + Sync + fmt::Debug {
    /// Performs `op` as one conditional write; returns the record written.
    async fn apply(&self, op: &LockOp) -> Result<LockRecord, StoreError>;
    /// Reads the record of `key` (a consistent read).
    async fn get(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError>;
    /// Lists every record, in key order.
    async fn list(&self) -> Result<Vec<LockRecord>, StoreError>;
    /// A short description for humans, such as `file:///srv/locks`.
    fn describe(&self) -> String;
}

#[async_trait]
impl<S: LockStore + ?Sized> LockStore for std::sync::Arc<S> {
    async fn apply(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
        (**self).apply(op).await
    }
    async fn get(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError> {
        (**self).get(key).await
    }
    async fn list(&self) -> Result<Vec<LockRecord>, StoreError> {
        (**self).list().await
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// Applies `op` to `current` with the reference semantics, mapping a rejection
/// to the store error every store returns.
pub fn apply_reference(
    op: &LockOp,
    current: Option<&LockRecord>,
) -> Result<LockRecord, StoreError> {
    op.apply(current)
        .map_err(|_| StoreError::conflict(current.cloned()))
}
