//! Helpers shared by the simulator's integration tests.

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
