//! Helpers shared by the simulator's integration tests (each test file uses
//! some of them).
#![allow(dead_code)]

use statelock_sim::sweep::{sweep, SweepOptions, SweepSummary};
use statelock_sim::SimConfig;
use std::ops::Range;

/// A smaller scenario than the binary's default (cargo tests run in debug
/// builds, about 16× slower): 5 clients, 1 key, every fault, 16 ops each.
pub fn small(cfg: SimConfig) -> SimConfig {
    SimConfig {
        ops_per_client: 16,
        ..cfg
    }
}

/// A scenario aimed at holders cut off from the store mid-work: only the
/// faults that cut a client's link (partitions both ways and one way, held
/// messages) plus drifting, offset clocks, and long work in three ops of ten
/// (`--faults partition,oneway,hold,drift,clock-offset --long-work 0.3`), so
/// that a takeover is due while the old holder still works and checks.
pub fn cut_holders(cfg: SimConfig) -> SimConfig {
    SimConfig {
        faults: "partition,oneway,hold,drift,clock-offset"
            .parse()
            .expect("known faults"),
        long_work: 0.3,
        ..small(cfg)
    }
}

/// Runs `seeds` of `cfg` on every core and prints the summary.
pub fn run(cfg: SimConfig, seeds: Range<u64>) -> SweepSummary {
    assert!(
        statelock_sim::deterministic_build(),
        "build with RUSTFLAGS=\"--cfg tokio_unstable\" (the workspace's .cargo/config.toml sets it)"
    );
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let summary = sweep(&SweepOptions {
        cfg,
        seeds,
        jobs,
        progress: false,
    });
    println!("{summary}");
    for (inv, (seed, report)) in &summary.first {
        println!(
            "first {inv}: seed {seed}: {}\n{}",
            report.violation.message, report.excerpt
        );
    }
    summary
}
