//! The same seed must produce the same run: every event, in the same order,
//! at the same simulated time — whatever thread runs it and whatever ran
//! before it on that thread.

use statelock_sim::history::Event;
use statelock_sim::{run_seed, SimConfig};

fn traces(cfg: &SimConfig, seeds: std::ops::Range<u64>) -> Vec<Vec<Event>> {
    seeds
        .map(|seed| {
            let r = run_seed(cfg, seed, true);
            assert!(r.failure.is_none(), "seed {seed}: {:?}", r.failure);
            r.events.expect("events kept")
        })
        .collect()
}

#[test]
fn fifty_seeds_twice_give_identical_traces() {
    assert!(
        statelock_sim::deterministic_build(),
        "build with RUSTFLAGS=\"--cfg tokio_unstable\""
    );
    let cfg = SimConfig {
        ops_per_client: 8,
        ..SimConfig::default()
    };
    // Forward on one thread, backward on another: order and thread must not matter.
    let (first, second) = std::thread::scope(|s| {
        let a = s.spawn(|| traces(&cfg, 0..50));
        let b = s.spawn(|| {
            let mut t = Vec::new();
            for seed in (0..50).rev() {
                t.push(traces(&cfg, seed..seed + 1).remove(0));
            }
            t.reverse();
            t
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    let mut distinct = std::collections::BTreeSet::new();
    for (seed, (a, b)) in first.iter().zip(&second).enumerate() {
        if let Some(i) = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)) {
            panic!(
                "seed {seed} diverged at event {i}:\n  first:  {:?}\n  second: {:?}",
                a.get(i).map(ToString::to_string),
                b.get(i).map(ToString::to_string)
            );
        }
        distinct.insert(a.len());
    }
    assert!(
        distinct.len() > 10,
        "different seeds must give different runs"
    );
}

#[test]
fn different_protocols_share_nothing_but_the_seed() {
    let naive = SimConfig {
        protocol: statelock_sim::ProtocolVariant::Naive,
        ops_per_client: 4,
        ..SimConfig::default()
    };
    let a = traces(&naive, 7..8);
    let b = traces(&naive, 7..8);
    assert_eq!(a, b);
}
