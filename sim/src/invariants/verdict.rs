//! What a checker reports: the invariants by name and one violation of one,
//! with the events and actors that show it. Every checker uses these; this
//! module must not import any checker.

use crate::history::Actor;
use std::fmt;

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
    /// Once a holder with token `t` has sealed the state (or read it, which
    /// it does only after sealing), no save with a token below `t` lands.
    SealFencesStaleWriters,
    /// Only the owner renews or releases; a force-unlock needs the seen version.
    OwnerOnlyRelease,
    /// Once faults stop, a waiting client is never blocked for longer than
    /// the takeover bound.
    EventualAcquire,
    /// A supervised command's unfenced writes all happen before the first
    /// write of any later grant of its key.
    SupervisedExclusion,
    /// Without faults, a registered waiter is granted before any waiter
    /// registered after it: every grant goes to the head of the hand-off
    /// queue (or the queue is empty).
    FifoGrant,
}

impl Invariant {
    /// Every invariant, in report order.
    pub const ALL: [Invariant; 9] = [
        Invariant::MutualExclusion,
        Invariant::TokenMonotonic,
        Invariant::FencingMonotonic,
        Invariant::NoLostUpdate,
        Invariant::SealFencesStaleWriters,
        Invariant::OwnerOnlyRelease,
        Invariant::EventualAcquire,
        Invariant::SupervisedExclusion,
        Invariant::FifoGrant,
    ];

    /// The name used in PROTOCOL.md, specs/ and reports.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::MutualExclusion => "MutualExclusion",
            Invariant::TokenMonotonic => "TokenMonotonic",
            Invariant::FencingMonotonic => "FencingMonotonic",
            Invariant::NoLostUpdate => "NoLostUpdate",
            Invariant::SealFencesStaleWriters => "SealFencesStaleWriters",
            Invariant::OwnerOnlyRelease => "OwnerOnlyRelease",
            Invariant::EventualAcquire => "EventualAcquire",
            Invariant::SupervisedExclusion => "SupervisedExclusion",
            Invariant::FifoGrant => "FifoGrant",
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
