//! The invariants of PROTOCOL.md, one file each, named as there (plus
//! `SupervisedExclusion`, the promise of `statelock exec`'s stop schedule). Each checker
//! is a pure function of a run's [`Event`] trace and returns the violations it
//! found (at most [`MAX_PER_CHECK`]), each pointing at the events that show it.
//!
//! Client-side checks use what clients *believed* and were *told*; store-side
//! checks audit what the store *applied*, with the record before and after.

pub mod eventual_acquire;
pub mod fencing_monotonic;
pub mod mutual_exclusion;
pub mod no_lost_update;
pub mod owner_only_release;
pub mod supervised_exclusion;
pub mod token_monotonic;

use crate::history::{Actor, Event};
use std::fmt;
use std::time::Duration;

/// A checker stops after this many violations.
pub const MAX_PER_CHECK: usize = 5;

/// The invariants (names exactly as in PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// No two clients believe they hold a key at the same real instant.
    MutualExclusion,
    /// Tokens granted for a key strictly increase.
    TokenMonotonic,
    /// Accepted state writes of a key have non-decreasing tokens.
    FencingMonotonic,
    /// Each accepted state write is based on the previously accepted one.
    NoLostUpdate,
    /// Only the owner renews or releases; a force-unlock needs the seen version.
    OwnerOnlyRelease,
    /// Once faults stop, a waiting client is never blocked for longer than
    /// the takeover bound.
    EventualAcquire,
    /// A supervised command's unfenced writes all happen before the first
    /// write of any later grant of its key.
    SupervisedExclusion,
}

impl Invariant {
    /// Every invariant, in report order.
    pub const ALL: [Invariant; 7] = [
        Invariant::MutualExclusion,
        Invariant::TokenMonotonic,
        Invariant::FencingMonotonic,
        Invariant::NoLostUpdate,
        Invariant::OwnerOnlyRelease,
        Invariant::EventualAcquire,
        Invariant::SupervisedExclusion,
    ];

    /// The name used in PROTOCOL.md, specs/ and reports.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::MutualExclusion => "MutualExclusion",
            Invariant::TokenMonotonic => "TokenMonotonic",
            Invariant::FencingMonotonic => "FencingMonotonic",
            Invariant::NoLostUpdate => "NoLostUpdate",
            Invariant::OwnerOnlyRelease => "OwnerOnlyRelease",
            Invariant::EventualAcquire => "EventualAcquire",
            Invariant::SupervisedExclusion => "SupervisedExclusion",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One violation of one invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant.
    pub invariant: Invariant,
    /// What went wrong, in one or two sentences.
    pub message: String,
    /// Indices of the events that show it (into the run's trace).
    pub events: Vec<usize>,
    /// The actors involved (the trace excerpt is filtered to them).
    pub actors: Vec<Actor>,
}

impl Violation {
    pub(crate) fn new(
        invariant: Invariant,
        message: String,
        events: Vec<usize>,
        actors: Vec<Actor>,
    ) -> Self {
        Violation {
            invariant,
            message,
            events,
            actors,
        }
    }
}

/// What the checkers need besides the trace.
#[derive(Debug, Clone, Copy)]
pub struct CheckContext {
    /// EventualAcquire's bound: how long, after faults stop, a waiter may go
    /// without the key being granted to anyone.
    pub liveness_bound: Duration,
}

/// Runs every checker.
pub fn check_all(events: &[Event], ctx: &CheckContext) -> Vec<Violation> {
    let mut out = Vec::new();
    out.extend(mutual_exclusion::check(events));
    out.extend(token_monotonic::check(events));
    out.extend(fencing_monotonic::check(events));
    out.extend(no_lost_update::check(events));
    out.extend(owner_only_release::check(events));
    out.extend(eventual_acquire::check(events, ctx.liveness_bound));
    out.extend(supervised_exclusion::check(events));
    out
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers to write hand-made histories.
    use crate::history::{Actor, AppliedOp, Event, LockOpKind, RecordView, What};
    use std::time::Duration;

    pub fn ev(ms: u64, actor: Actor, what: What) -> Event {
        Event {
            at: Duration::from_millis(ms),
            actor,
            what,
        }
    }

    pub fn c(i: u16) -> Actor {
        Actor::Client(i)
    }

    pub fn rec(owner: u128, token: u64, rvn: u128, released: bool) -> RecordView {
        RecordView {
            owner,
            token,
            rvn: Some(rvn),
            released,
        }
    }

    pub fn applied(
        ms: u64,
        from: Actor,
        kind: LockOpKind,
        owner: Option<u128>,
        expected: Option<u128>,
        prev: Option<RecordView>,
        next: Option<RecordView>,
    ) -> Event {
        ev(
            ms,
            Actor::Store,
            What::LockApplied {
                from,
                op: AppliedOp {
                    key: "k".into(),
                    kind,
                    owner,
                    expected_rvn: expected,
                    prev,
                    next,
                },
            },
        )
    }

    pub fn accepted(
        ms: u64,
        from: Actor,
        token: u64,
        expected: Option<&str>,
        version: &str,
    ) -> Event {
        ev(
            ms,
            Actor::Store,
            What::StateAccepted {
                from,
                key: "k".into(),
                token,
                expected: expected.map(str::to_string),
                version: version.into(),
                body: format!("{from}"),
            },
        )
    }
}
