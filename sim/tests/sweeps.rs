//! Sweeps through the simulator: statelock holds every invariant under every
//! fault; the naive protocol is caught; with clocks drifting beyond ρ,
//! statelock may lose `MutualExclusion` but fencing still holds.
//!
//! The long sweeps (thousands of seeds) run through the release binary; see
//! sim/README.md.

mod common;

use statelock_sim::sweep::verdict;
use statelock_sim::{DriftMode, Invariant, ProtocolVariant, SimConfig};

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
    assert_eq!((st.grants, st.writes_accepted), (st.ops, st.ops), "{st:?}");
    assert_eq!(
        st.takeovers + st.writes_rejected + st.writes_unknown,
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
