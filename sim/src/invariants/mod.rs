//! The invariants of PROTOCOL.md, one file each, named as there (plus
//! `SupervisedExclusion`, the promise of `statelock exec`'s stop schedule,
//! `SealFencesStaleWriters`, the promise of the state store's seal, and
//! `FifoGrant`, the hand-off queue's order, judged only in runs without
//! faults). Each checker
//! is a pure function of a run's [`Event`] trace and returns the violations it
//! found (at most [`MAX_PER_CHECK`]), each pointing at the events that show it.
//!
//! Client-side checks use what clients *believed* and were *told*; store-side
//! checks audit what the store *applied*, with the record before and after.

pub mod eventual_acquire;
pub mod fencing_monotonic;
pub mod fifo_grant;
pub mod mutual_exclusion;
pub mod no_lost_update;
pub mod owner_only_release;
pub mod seal_fences_stale_writers;
pub mod supervised_exclusion;
pub mod token_monotonic;
pub mod verdict;

pub use verdict::{Invariant, Violation, MAX_PER_CHECK};

use crate::history::Event;
use std::time::Duration;

/// What the checkers need besides the trace.
#[derive(Debug, Clone, Copy)]
pub struct CheckContext {
    /// EventualAcquire's bound: how long, after faults stop, a waiter may go
    /// without the key being granted to anyone.
    pub liveness_bound: Duration,
    /// The run had no faults at all (`--faults none`): `FifoGrant` is
    /// judged only then.
    pub fault_free: bool,
}

/// Runs every checker.
pub fn check_all(events: &[Event], ctx: &CheckContext) -> Vec<Violation> {
    let mut out = Vec::new();
    out.extend(mutual_exclusion::check(events));
    out.extend(token_monotonic::check(events));
    out.extend(fencing_monotonic::check(events));
    out.extend(no_lost_update::check(events));
    out.extend(seal_fences_stale_writers::check(events));
    out.extend(owner_only_release::check(events));
    out.extend(eventual_acquire::check(events, ctx.liveness_bound));
    out.extend(supervised_exclusion::check(events));
    out.extend(fifo_grant::check(events, ctx.fault_free));
    out
}

#[cfg(test)]
pub(crate) mod testing;
