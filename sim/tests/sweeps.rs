//! Sweeps through the simulator: statelock holds every invariant under every
//! fault; the naive protocol is caught; with clocks drifting beyond ρ,
//! statelock may lose `MutualExclusion` but fencing still holds; planted bugs
//! (a takeover wait without ρ and margin, a supervisor that kills late) are
//! caught while the correct configuration stays clean on the same seeds; so
//! are planted state bugs (no seal, a save that ignores the fence), by
//! `SealFencesStaleWriters`.
//!
//! The long sweeps (thousands of seeds) run through the release binary; see
//! sim/README.md.

mod common;

use statelock_sim::sweep::verdict;
use statelock_sim::{
    DriftMode, Invariant, ProtocolVariant, SimConfig, StateBug, SupervisorVariant,
};
use std::time::Duration;

#[test]
fn statelock_holds_every_invariant_under_all_faults() {
    let s = common::run(common::small(SimConfig::default()), 0..100);
    assert!(s.failures.is_empty(), "runs not judged: {:?}", s.failures);
    assert_eq!(s.violating_seeds(), 0, "violations: {:?}", s.violating);
    assert!(verdict(&s, false).is_ok());
    // The faults did happen.
    let st = s.stats;
    assert!(
        st.takeovers > 100 && st.pauses > 50 && st.crashes > 100 && st.network_faults > 500,
        "{st:?}"
    );
    assert!(
        st.writes_rejected > 0,
        "some stale writes must have been fenced: {st:?}"
    );
    // Every holder sealed before it read (a few seals were cut off).
    assert!(
        st.seals + st.seals_failed <= st.grants && st.seals > st.grants * 9 / 10,
        "{st:?}"
    );
    // Supervised commands ran, and some were stopped on the lease's
    // schedule or frozen past it.
    assert!(
        st.commands > 200
            && st.command_writes > 10 * st.commands
            && st.commands_terminated > 10
            && st.commands_killed > 10
            && st.commands_frozen_late > 0,
        "{st:?}"
    );
}

/// The mutant "takeover wait = lease" (no ρ, no margin), against clocks that
/// still drift by ±5 %: `--rho-ppm 0 --margin-ms 0 --clock-drift-ppm 50000`.
#[test]
fn a_takeover_wait_without_rho_and_margin_is_caught() {
    let correct = common::cut_holders(SimConfig::default());
    let mutant = correct
        .clone()
        .with_rho_ppm(0)
        .with_margin(Some(Duration::ZERO))
        .with_clock_drift_ppm(Some(50_000));
    let seeds = 0..60;
    let m = common::run(mutant, seeds.clone());
    assert!(m.failures.is_empty(), "runs not judged: {:?}", m.failures);
    let caught = m
        .violating
        .get(&Invariant::MutualExclusion)
        .map_or(0, Vec::len);
    assert!(
        caught >= 6,
        "the mutant was caught in only {caught} of 60 seeds: {:?}",
        m.violating
    );
    assert!(verdict(&m, true).is_ok(), "only MutualExclusion may break");
    let c = common::run(correct, seeds);
    assert!(c.failures.is_empty(), "runs not judged: {:?}", c.failures);
    assert_eq!(c.violating_seeds(), 0, "violations: {:?}", c.violating);
}

/// A supervisor that kills at `deadline + grace` instead of by
/// `deadline − kill_margin` (`--supervisor late-kill`), with many supervised
/// commands.
#[test]
fn a_supervisor_that_kills_late_is_caught() {
    let correct = SimConfig {
        supervised: 0.5,
        ..common::cut_holders(SimConfig::default())
    };
    let buggy = SimConfig {
        supervisor: SupervisorVariant::LateKill,
        ..correct.clone()
    };
    let seeds = 0..20;
    let b = common::run(buggy, seeds.clone());
    assert!(b.failures.is_empty(), "runs not judged: {:?}", b.failures);
    let caught = b
        .violating
        .get(&Invariant::SupervisedExclusion)
        .map_or(0, Vec::len);
    assert!(
        caught >= 4,
        "the late kill was caught in only {caught} of 20 seeds: {:?}",
        b.violating
    );
    assert!(
        verdict(&b, true).is_ok(),
        "only SupervisedExclusion may break"
    );
    let c = common::run(correct, seeds);
    assert!(c.failures.is_empty(), "runs not judged: {:?}", c.failures);
    assert_eq!(c.violating_seeds(), 0, "violations: {:?}", c.violating);
    assert!(c.stats.commands_killed > 0, "{:?}", c.stats);
}

/// Planted state bugs: holders that never seal (the fence rises only when a
/// save lands), and saves that check only the version read. Pauses after the
/// seal and between the pull and the push are frequent here, so a holder
/// often wakes after its lock was taken over.
#[test]
fn state_bugs_are_caught_by_seal_fences_stale_writers() {
    let correct = SimConfig {
        pause_after_acquire: 0.15,
        pause_before_write: 0.15,
        faults: "pause,clock-offset,drift".parse().expect("known faults"),
        ..common::small(SimConfig::default())
    };
    let seeds = 0..20;
    for bug in [StateBug::NoSeal, StateBug::UnfencedSave] {
        let buggy = SimConfig {
            bug,
            ..correct.clone()
        };
        let b = common::run(buggy, seeds.clone());
        assert!(b.failures.is_empty(), "runs not judged: {:?}", b.failures);
        let caught = b
            .violating
            .get(&Invariant::SealFencesStaleWriters)
            .map_or(0, Vec::len);
        assert!(
            caught >= 3,
            "{bug} was caught in only {caught} of 20 seeds: {:?}",
            b.violating
        );
        assert!(
            verdict(&b, true).is_ok(),
            "{bug}: only the invariants of a state bug may break: {:?}",
            b.violating
        );
    }
    let c = common::run(correct, seeds);
    assert!(c.failures.is_empty(), "runs not judged: {:?}", c.failures);
    assert_eq!(c.violating_seeds(), 0, "violations: {:?}", c.violating);
    assert!(c.stats.writes_stale > 0, "{:?}", c.stats);
}

#[test]
fn the_naive_protocol_is_caught() {
    let cfg = SimConfig {
        protocol: ProtocolVariant::Naive,
        ..common::small(SimConfig::default())
    };
    let s = common::run(cfg, 0..12);
    assert!(s.failures.is_empty(), "runs not judged: {:?}", s.failures);
    let seeds = |inv| s.violating.get(&inv).map_or(0, Vec::len);
    assert!(seeds(Invariant::MutualExclusion) > 0, "{:?}", s.violating);
    assert!(
        seeds(Invariant::FencingMonotonic) + seeds(Invariant::NoLostUpdate) > 0,
        "{:?}",
        s.violating
    );
    assert!(verdict(&s, true).is_ok(), "--expect-violations must pass");
    assert!(
        verdict(&s, false).is_ok(),
        "naive guarantees nothing, so nothing is forbidden"
    );
}

#[test]
fn drift_beyond_rho_may_break_mutual_exclusion_but_never_fencing() {
    let cfg = SimConfig {
        drift: DriftMode::Beyond,
        ..common::small(SimConfig::default())
    };
    let s = common::run(cfg, 0..60);
    assert!(s.failures.is_empty(), "runs not judged: {:?}", s.failures);
    for inv in [
        Invariant::TokenMonotonic,
        Invariant::FencingMonotonic,
        Invariant::NoLostUpdate,
        Invariant::OwnerOnlyRelease,
        Invariant::EventualAcquire,
    ] {
        // SupervisedExclusion rests on the holder's deadline, as
        // MutualExclusion does: it may break too.
        assert!(
            !s.violating.contains_key(&inv),
            "{inv} violated: {:?}",
            s.violating[&inv]
        );
    }
    assert!(
        s.violating.contains_key(&Invariant::MutualExclusion),
        "with clocks up to 2x off, some seed should show two believers"
    );
    assert!(verdict(&s, true).is_ok());
}

#[test]
fn without_faults_every_op_succeeds() {
    let cfg = SimConfig {
        faults: statelock_sim::FaultSet::none(),
        ..common::small(SimConfig::default())
    };
    let s = common::run(cfg, 0..5);
    assert_eq!(s.violating_seeds(), 0);
    assert!(s.failures.is_empty());
    let st = s.stats;
    assert_eq!(st.ops, 5 * 5 * 16);
    // Every op writes the state, or runs a supervised command instead.
    assert_eq!(
        (st.grants, st.writes_accepted + st.commands),
        (st.ops, st.ops),
        "{st:?}"
    );
    assert!(st.commands > 0, "{st:?}");
    assert_eq!((st.seals, st.seals_failed), (st.grants, 0), "{st:?}");
    assert_eq!(
        st.takeovers
            + st.writes_rejected
            + st.writes_unknown
            + st.commands_terminated
            + st.commands_killed,
        0,
        "{st:?}"
    );
}

/// The long statelock sweep, for release builds:
/// `cargo test --release -p statelock-sim -- --ignored`.
#[test]
#[ignore = "long: 1,000 seeds of the default scenario; run in release"]
fn statelock_thousand_seeds() {
    let s = common::run(SimConfig::default(), 0..1000);
    assert!(verdict(&s, false).is_ok(), "{s}");
}
