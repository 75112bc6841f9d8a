//! The hand-off queue in the simulator. Without faults, five clients
//! contending on one key go through the queue — they register, and the
//! key is granted to the queue's head — and every invariant holds,
//! `FifoGrant` included (it is judged only in runs without faults). A
//! client that ignores the queue (`--bug queue-jump`: it takes a released
//! record whoever heads the queue, skipping the head at once) breaks
//! `FifoGrant` and nothing else, on the same seeds.

mod common;

use statelock_sim::sweep::{allowed_violations, verdict};
use statelock_sim::{FaultSet, Invariant, SimConfig, StateBug};

/// Five clients, one key, 16 ops each, no fault.
fn fault_free() -> SimConfig {
    SimConfig {
        faults: FaultSet::none(),
        ..common::small(SimConfig::default())
    }
}

/// Seeds of both sweeps.
const SEEDS: u64 = 8;

#[test]
fn without_faults_every_grant_goes_to_the_head_of_the_queue() {
    let cfg = fault_free();
    assert!(cfg.clients >= 4 && cfg.keys == 1 && cfg.fault_free());
    let s = common::run(cfg, 0..SEEDS);
    assert!(s.failures.is_empty(), "runs not judged: {:?}", s.failures);
    assert_eq!(s.violating_seeds(), 0, "violations: {:?}", s.violating);
    assert!(verdict(&s, false).is_ok());
    let st = s.stats;
    assert_eq!(st.grants, st.ops, "{st:?}");
    // Not vacuous: waiters registered, and most grants went to the head of
    // a queue with someone in it (the others found the key free and
    // nobody waiting).
    assert!(st.enqueued > 0 && st.turn_grants > 0, "{st:?}");
    assert!(
        st.turn_grants * 2 > st.grants,
        "most grants should be turns taken from the queue: {st:?}"
    );
    // Nobody was passed over, and no waiter gave up.
    assert_eq!((st.skips, st.takeovers, st.left), (0, 0, 0), "{st:?}");
}

#[test]
fn a_client_that_jumps_the_queue_is_caught_by_fifo_grant() {
    let buggy = SimConfig {
        bug: StateBug::QueueJump,
        ..fault_free()
    };
    assert_eq!(allowed_violations(&buggy), vec![Invariant::FifoGrant]);
    let s = common::run(buggy, 0..SEEDS);
    assert!(s.failures.is_empty(), "runs not judged: {:?}", s.failures);
    let caught = s.violating.get(&Invariant::FifoGrant).map_or(0, Vec::len);
    assert!(
        caught as u64 >= SEEDS - 1,
        "the queue jump was caught in only {caught} of {SEEDS} seeds: {:?}",
        s.violating
    );
    assert!(
        verdict(&s, true).is_ok(),
        "only FifoGrant may break: {:?}",
        s.violating
    );
    // Its skips are what FifoGrant caught: the store accepted them.
    assert!(s.stats.skips > 0, "{:?}", s.stats);
    let (seed, first) = &s.first[&Invariant::FifoGrant];
    assert!(
        first.violation.message.contains("c0's lease"),
        "seed {seed}: only c0 jumps the queue: {}",
        first.violation.message
    );
}

#[test]
fn fifo_grant_is_not_judged_under_faults() {
    // The same planted bug with one fault on: skips are then part of the
    // protocol, so FifoGrant says nothing.
    let cfg = SimConfig {
        bug: StateBug::QueueJump,
        faults: "clock-offset".parse().expect("a known fault"),
        ..fault_free()
    };
    assert!(!cfg.fault_free());
    let s = common::run(cfg, 0..2);
    assert!(s.failures.is_empty(), "runs not judged: {:?}", s.failures);
    assert!(s.stats.skips > 0, "{:?}", s.stats);
    assert_eq!(s.violating_seeds(), 0, "violations: {:?}", s.violating);
}
