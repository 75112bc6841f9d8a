//! Errors of the client layer.

use crate::protocol::{LockRecord, LostReason, ProtocolError};
use crate::store::StoreError;
use std::time::Duration;

/// Why a lock operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The lock is held and the caller did not want to wait.
    #[error("the lock is held by {}", .holder.holder)]
    Held {
        /// The current record.
        holder: Box<LockRecord>,
    },
    /// The wait ran out before the lock could be acquired.
    #[error("timed out after {waited:?} waiting for the lock{}", holder_suffix(.holder))]
    Timeout {
        /// How long we waited.
        waited: Duration,
        /// The holder at the end of the wait, if known.
        holder: Option<Box<LockRecord>>,
    },
    /// The lease was lost: another client may hold the lock now. Stop writing.
    #[error("the lease was lost ({})", lost_text(.0))]
    LeaseLost(LostReason),
    /// The caller cancelled the operation.
    #[error("cancelled")]
    Cancelled,
    /// The record changed since it was shown (force-unlock refused).
    #[error("the lock record changed since it was read; look again before forcing")]
    Changed {
        /// The current record.
        current: Option<Box<LockRecord>>,
    },
    /// There is no record for the key.
    #[error("no lock record exists for {0:?}")]
    NotFound(String),
    /// The key has used up every fencing token (u64::MAX grants): it can
    /// never be granted again.
    #[error("the lock {key:?} has used up every fencing token (u64::MAX grants) and can never be granted again; use another key")]
    TokensExhausted {
        /// The key.
        key: String,
        /// Its record, if there is one.
        record: Option<Box<LockRecord>>,
    },
    /// `purge` was asked to delete records released too recently.
    #[error("records released less than {min:?} ago are never purged (asked for {older_than:?})")]
    PurgeTooSoon {
        /// The age asked for.
        older_than: Duration,
        /// The shortest age allowed.
        min: Duration,
    },
    /// Bad parameters (lease, key).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn holder_suffix(holder: &Option<Box<LockRecord>>) -> String {
    match holder {
        Some(r) => format!(" held by {}", r.holder),
        None => String::new(),
    }
}

fn lost_text(reason: &LostReason) -> &'static str {
    match reason {
        LostReason::Expired => "no heartbeat was confirmed before the lease ran out",
        LostReason::Superseded(_) => "the lock record was taken over or forced",
    }
}
