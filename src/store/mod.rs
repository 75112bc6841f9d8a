//! Lock stores: where lock records live. A [`LockStore`] performs each
//! [`LockOp`] of PROTOCOL.md as exactly one conditional write (one round trip)
//! and, when the condition fails, returns the current record.
//!
//! Implementations: [`memory::MemoryStore`] (the reference, also the
//! simulator's server), [`file::FileStore`] (the embedded default), and the
//! DynamoDB and S3 adapters behind their features. Every store must pass the
//! conformance suite in `testkit`.

#[cfg(any(feature = "dynamodb", feature = "s3"))]
pub(crate) mod aws_errors;
#[cfg(feature = "dynamodb")]
pub mod dynamodb;
pub mod file;
pub mod memory;
pub mod open;
pub mod quorum;
pub mod record_json;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(any(feature = "dynamodb", feature = "s3"))]
pub(crate) mod terraform_lockinfo;
pub mod url;

#[cfg(feature = "dynamodb")]
pub use dynamodb::terraform;
pub use open::open_lock_store;

use crate::protocol::{FencingToken, LockKey, LockOp, LockRecord, RecordVersion};
use async_trait::async_trait;
use serde::Serialize;
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

/// A record a listing found but could not read (it is never overwritten).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedRecord {
    /// The key, or the record's name in the store when the key is unreadable.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl From<DamagedRecord> for StoreError {
    fn from(d: DamagedRecord) -> StoreError {
        StoreError::Corrupt {
            key: d.key,
            reason: d.reason,
        }
    }
}

/// Every record of a store: the readable ones in key order, and the damaged
/// ones (so one bad record never hides the others).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Listing {
    /// The readable records, in key order.
    pub records: Vec<LockRecord>,
    /// The records that could not be read, in name order.
    pub damaged: Vec<DamagedRecord>,
}

impl Listing {
    /// A listing of `records` (sorted here) with nothing damaged.
    pub fn of(mut records: Vec<LockRecord>) -> Listing {
        records.sort_by(|a, b| a.key.cmp(&b.key));
        Listing {
            records,
            damaged: Vec::new(),
        }
    }
}

/// A store of lock records offering the conditional writes of PROTOCOL.md.
///
/// Guarantees every implementation must give (checked by the conformance
/// suite): `apply` is linearizable per key and is one conditional write; a
/// failed condition returns [`StoreError::Conflict`] with the current record;
/// the record written equals [`LockOp::apply`] of the previous one; records
/// are never deleted by these operations, only by [`LockStore::purge`], which
/// first raises the store's token floor above the deleted record's token, so
/// tokens never restart.
#[async_trait]
pub trait LockStore: Send + Sync + fmt::Debug {
    /// Performs `op` as one conditional write; returns the record written.
    async fn apply(&self, op: &LockOp) -> Result<LockRecord, StoreError>;
    /// Reads the record of `key` (a consistent read).
    async fn get(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError>;
    /// Lists every record (readable ones in key order, damaged ones apart).
    async fn list(&self) -> Result<Listing, StoreError>;
    /// The token floor: at least the token of every record ever purged from
    /// this store (0 when none was). A grant on an absent record installs
    /// `floor + 1` ([`crate::protocol::GrantFrom::Absent`]).
    async fn token_floor(&self) -> Result<FencingToken, StoreError>;
    /// Deletes the record of `key` if it is still released at version
    /// `observed`, after raising the token floor to at least its token.
    /// Returns the deleted record; [`StoreError::Conflict`] with the current
    /// record if it is not (or no longer) that released version.
    async fn purge(&self, key: &LockKey, observed: RecordVersion)
        -> Result<LockRecord, StoreError>;
    /// A short description for humans, such as `file:///srv/locks`.
    fn describe(&self) -> String;
    /// A name of the place the records live that is the same for every
    /// store value of this process opened on that place (and differs for
    /// different places), or `None` if the store is not shared that way.
    /// The lock clients of one process that wait for a key of the same named
    /// store take turns in arrival order, and only the first asks the store.
    fn shared_name(&self) -> Option<String> {
        None
    }
    /// True if the store keeps the hand-off queue in its records (it
    /// performs [`crate::protocol::OpKind::Enqueue`] and `Leave`): waiters
    /// of every process are then granted in arrival order (PROTOCOL.md,
    /// "Hand-off queue"). Stores that do not refuse those ops as
    /// [`StoreError::Misconfigured`], and their waiters are not ordered.
    fn queues(&self) -> bool {
        false
    }
}

#[async_trait]
impl<S: LockStore + ?Sized> LockStore for std::sync::Arc<S> {
    async fn apply(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
        (**self).apply(op).await
    }
    async fn get(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError> {
        (**self).get(key).await
    }
    async fn list(&self) -> Result<Listing, StoreError> {
        (**self).list().await
    }
    async fn token_floor(&self) -> Result<FencingToken, StoreError> {
        (**self).token_floor().await
    }
    async fn purge(
        &self,
        key: &LockKey,
        observed: RecordVersion,
    ) -> Result<LockRecord, StoreError> {
        (**self).purge(key, observed).await
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn shared_name(&self) -> Option<String> {
        (**self).shared_name()
    }
    fn queues(&self) -> bool {
        (**self).queues()
    }
}

/// The reference semantics of [`LockStore::purge`] on `current`: the record
/// to delete (and the floor to raise to its token), or the conflict to report.
pub fn purge_reference(
    current: Option<&LockRecord>,
    observed: RecordVersion,
) -> Result<LockRecord, StoreError> {
    match current {
        Some(r) if r.released && r.rvn == observed => Ok(r.clone()),
        other => Err(StoreError::conflict(other.cloned())),
    }
}

/// The floor condition of a grant on an absent record: it must name the
/// store's current token floor (read by the store in the same atomic step
/// as `current`). A stale floor is a failed condition: the acquirer reads
/// again.
pub fn check_floor(
    op: &LockOp,
    current: Option<&LockRecord>,
    floor: FencingToken,
) -> Result<(), StoreError> {
    use crate::protocol::{GrantFrom, OpKind};
    match (current, &op.kind) {
        (
            None,
            OpKind::Acquire {
                from: GrantFrom::Absent { floor: named },
                ..
            },
        ) if *named != floor => Err(StoreError::conflict(None)),
        _ => Ok(()),
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
