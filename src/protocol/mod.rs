//! The sans-IO core of the lock protocol (PROTOCOL.md): the lock record, fencing
//! tokens, record versions, key validation, the conditional operations and the
//! holder's and waiter's state machines.
//!
//! Nothing here reads a clock, sleeps, spawns or does I/O: time comes in as an
//! argument and decisions come out as values, so the same code runs in
//! production, in tests with a virtual clock and in the simulator.

mod config;
mod key;
mod lease;
mod op;
mod record;
mod supervise;
mod time;
mod waiter;

pub use config::ProtocolConfig;
pub use key::{InvalidKey, LockKey, MAX_KEY_BYTES};
pub use lease::{HeartbeatEvent, Lease, LeaseState, LostReason, ReleaseStep};
pub use op::{Dequeue, GrantFrom, LockOp, OpKind, Outcome, Rejected};
pub use record::{
    FencingToken, HolderInfo, InvalidRecordVersion, LeaseId, LockRecord, RecordVersion,
};
pub use supervise::{GraceTooLong, StopCause, StopPlan, SuperviseAction, Supervisor};
pub use time::{MonoTime, WallTime};
pub use waiter::{Backoff, Observation, Seen, Waiter, WaiterAction, WaiterStep};

use std::time::Duration;

/// Errors of the core: always the caller's (bad parameters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The lease is too short to be renewed safely with this margin.
    #[error("lease {lease:?} is too short: the minimum is {min:?}")]
    LeaseTooShort {
        /// The lease asked for.
        lease: Duration,
        /// The shortest allowed.
        min: Duration,
    },
    /// The lease is longer than a week.
    #[error("lease {0:?} is too long: the maximum is 7 days")]
    LeaseTooLong(Duration),
    /// ρ must be under 10 % (100000 ppm).
    #[error("clock drift bound {0} ppm is too large: it must be under 100000 ppm")]
    DriftTooLarge(u32),
    /// A key failed validation.
    #[error(transparent)]
    InvalidKey(#[from] InvalidKey),
}
