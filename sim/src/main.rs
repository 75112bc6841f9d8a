//! `statelock-sim`: sweep seed ranges, or replay one seed with its trace.
//!
//! ```text
//! statelock-sim sweep --seeds 0..10000 [--clients 5] [--stores 1|3] [--faults all] [--protocol statelock] [--drift within] [--jobs N]
//! statelock-sim replay --seed 42 --trace
//! ```

use clap::{Args, Parser, Subcommand};
use statelock_sim::config::SimConfig;
use statelock_sim::run::{liveness_bound, run_seed};
use statelock_sim::scenario::{DriftMode, FaultSet, ProtocolVariant, StateBug};
use statelock_sim::sweep::{allowed_violations, sweep, verdict, SweepOptions};
use statelock_sim::SupervisorVariant;
use std::ops::Range;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "statelock-sim",
    version,
    about = "Deterministic simulation of statelock clients under faults"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a range of seeds and print a summary. Exits non-zero on any
    /// violation the configuration does not allow, or on a run that could
    /// not be judged.
    ///
    /// Progress goes to stderr: a bar on a terminal; otherwise (a CI log, a
    /// file) one plain line each time another tenth of the seeds is done, so
    /// at most 10 lines, e.g. `sweep: 300/1000 seeds, 0 violating, 41 s,
    /// about 96 s left`.
    Sweep {
        /// Seeds to run: `A..B`, or `N` for `0..N`.
        #[arg(long, default_value = "0..1000", value_parser = parse_seeds)]
        seeds: Range<u64>,
        /// Worker threads (default: the available cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Exit non-zero if NO violation is found (for the naive protocol,
        /// or drift beyond ρ).
        #[arg(long)]
        expect_violations: bool,
        #[command(flatten)]
        scenario: Scenario,
    },
    /// Run one seed and print what happened (the full trace with --trace).
    Replay {
        /// The seed.
        #[arg(long)]
        seed: u64,
        /// Print every event of the run.
        #[arg(long)]
        trace: bool,
        #[command(flatten)]
        scenario: Scenario,
    },
}

/// The scenario: must be the same to replay a seed of a sweep.
#[derive(Args)]
struct Scenario {
    /// Client hosts.
    #[arg(long, default_value_t = 5)]
    clients: usize,
    /// Lock-store hosts: 1, or 3 (an odd number up to 9) for a quorum
    /// store over one member per host (state objects stay on the first).
    #[arg(long, default_value_t = 1)]
    stores: usize,
    /// Lock keys.
    #[arg(long, default_value_t = 1)]
    keys: usize,
    /// Ops per client.
    #[arg(long, default_value_t = 40)]
    ops: u32,
    /// Faults: `all`, `none`, or a comma list (`partition,hold,...`; `all,-pause`
    /// removes one). Known: partition, oneway, latency, loss, hold,
    /// client-crash, store-crash, pause, clock-offset, drift, wall-step,
    /// force-unlock; with --stores 3 also store-partition, store-slow, and
    /// store-wipe (a store host loses its lock records: outside the fault
    /// model, not in `all`, expected to produce violations).
    #[arg(long, default_value = "all")]
    faults: FaultSet,
    /// Protocol variant: statelock or naive.
    #[arg(long, default_value = "statelock")]
    protocol: ProtocolVariant,
    /// Clock drift: within ρ, or beyond it (rates from 0.5 to 2).
    #[arg(long, default_value = "within")]
    drift: DriftMode,
    /// The lease, in simulated milliseconds.
    #[arg(long, default_value_t = 400)]
    lease_ms: u64,
    /// ρ, the clock drift bound the protocol assumes, in parts per million
    /// (must be under 100000).
    #[arg(long, default_value_t = 50_000)]
    rho_ppm: u32,
    /// The drift the clients' clocks really have, in parts per million
    /// (default: ρ). Above --rho-ppm the protocol's assumption is broken on
    /// purpose: `--rho-ppm 0 --margin-ms 0 --clock-drift-ppm 50000` is a
    /// protocol that believes clocks are perfect, against clocks at ±5 %.
    #[arg(long)]
    clock_drift_ppm: Option<u32>,
    /// The protocol's safety margin in milliseconds (default: a twentieth of
    /// the lease). Safety must hold even with 0: the margin is extra slack.
    #[arg(long)]
    margin_ms: Option<u64>,
    /// Share of ops that run a supervised command (statelock only): unfenced
    /// writes, stopped on the schedule of `statelock exec`.
    #[arg(long, default_value_t = 0.05)]
    supervised: f64,
    /// The supervisor of those commands: `exec` (the library's schedule) or
    /// `late-kill` (a planted bug: kills at deadline + grace; use with
    /// --expect-violations).
    #[arg(long, default_value = "exec")]
    supervisor: SupervisorVariant,
    /// A planted bug: `no-seal` (holders never seal; a save raises the fence
    /// when it lands), `unfenced-save` (a save checks only the version read,
    /// not the fence), with --stores 3 `per-store-token` (each quorum
    /// member installs its own next token), or `queue-jump` (client 0
    /// ignores the hand-off queue and skips its head at once; caught by
    /// FifoGrant, judged only with --faults none); use with
    /// --expect-violations.
    #[arg(long, default_value = "none")]
    bug: StateBug,
    /// Share of ops whose work between read and write is long (renewed by
    /// heartbeats, checking the lease all along).
    #[arg(long, default_value_t = 0.06)]
    long_work: f64,
    /// The longest long work or supervised command while faults are on, in
    /// leases (1.2 once they stop).
    #[arg(long, default_value_t = 2.5)]
    long_work_max: f64,
    /// Share of network and host faults aimed at a client holding a lock
    /// (the others hit any client).
    #[arg(long, default_value_t = 0.5)]
    target_holders: f64,
    /// Simulated milliseconds per simulation step.
    #[arg(long, default_value_t = 1)]
    tick_ms: u64,
    /// How long a client waits for a lock before giving up on the op (and
    /// leaving the hand-off queue), in simulated milliseconds.
    #[arg(long, default_value_t = 30_000)]
    acquire_wait_ms: u64,
}

impl Scenario {
    fn config(&self) -> SimConfig {
        SimConfig {
            protocol: self.protocol,
            clients: self.clients,
            stores: self.stores,
            keys: self.keys,
            ops_per_client: self.ops,
            faults: self.faults,
            drift: self.drift,
            supervised: self.supervised,
            supervisor: self.supervisor,
            bug: self.bug,
            long_work_max: self.long_work_max,
            long_work: self.long_work,
            target_holders: self.target_holders,
            ..SimConfig::default()
        }
        .with_lease(Duration::from_millis(self.lease_ms))
        .with_rho_ppm(self.rho_ppm)
        .with_clock_drift_ppm(self.clock_drift_ppm)
        .with_tick(Duration::from_millis(self.tick_ms))
        .with_acquire_wait(Duration::from_millis(self.acquire_wait_ms))
        .with_margin(self.margin_ms.map(Duration::from_millis))
    }
}

fn parse_seeds(s: &str) -> Result<Range<u64>, String> {
    let bad = |e: std::num::ParseIntError| format!("bad seed range {s:?}: {e}");
    match s.split_once("..") {
        Some((a, b)) => {
            let a: u64 = a.trim().parse().map_err(bad)?;
            let b: u64 = b.trim().parse().map_err(bad)?;
            if b < a {
                return Err(format!("empty seed range {s:?}"));
            }
            Ok(a..b)
        }
        None => Ok(0..s.trim().parse().map_err(bad)?),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let scenario = match &cli.command {
        Command::Sweep { scenario, .. } | Command::Replay { scenario, .. } => scenario,
    };
    if let Err(why) = scenario.config().validate() {
        eprintln!("error: {why}");
        return ExitCode::from(2);
    }
    match cli.command {
        Command::Sweep {
            seeds,
            jobs,
            expect_violations,
            scenario,
        } => {
            let jobs = jobs
                .unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1)
                })
                .max(1);
            let opts = SweepOptions {
                cfg: scenario.config(),
                seeds,
                jobs,
                progress: true,
            };
            let summary = sweep(&opts);
            println!("{summary}");
            let scenario_flags = scenario_flags(&opts.cfg);
            for (inv, (seed, report)) in &summary.first {
                println!();
                println!("first {inv} violation: seed {seed}");
                println!("  {}", report.violation.message);
                println!("{}", report.excerpt);
                println!("  replay: statelock-sim replay --seed {seed}{scenario_flags} --trace");
            }
            for (seed, why) in summary.failures.iter().take(5) {
                println!();
                println!("seed {seed} could not be judged: {why}");
                println!("  replay: statelock-sim replay --seed {seed}{scenario_flags} --trace");
            }
            match verdict(&summary, expect_violations) {
                Ok(why) => {
                    println!("PASS: {why}");
                    ExitCode::SUCCESS
                }
                Err(why) => {
                    println!("FAIL: {why}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Replay {
            seed,
            trace,
            scenario,
        } => {
            let cfg = scenario.config();
            let report = run_seed(&cfg, seed, true);
            println!("seed {seed}: {}", cfg.describe());
            println!(
                "liveness bound (EventualAcquire): {:?}",
                liveness_bound(&cfg)
            );
            if trace {
                for (i, e) in report.events.iter().flatten().enumerate() {
                    println!("#{i:<6} {e}");
                }
            }
            let s = &report.stats;
            println!(
                "ops {} acquired {} takeovers {} seals {} (failed {}) writes accepted {} rejected {} (stale {}) unknown {} pauses {} crashes {} network faults {} simulated {:.3}s",
                s.ops,
                s.grants,
                s.takeovers,
                s.seals,
                s.seals_failed,
                s.writes_accepted,
                s.writes_rejected,
                s.writes_stale,
                s.writes_unknown,
                s.pauses,
                s.crashes,
                s.network_faults,
                s.sim_time.as_secs_f64()
            );
            println!(
                "hand-off queue: registered {} left {} grants to the head {} heads skipped {}",
                s.enqueued, s.left, s.turn_grants, s.skips
            );
            println!(
                "supervised commands {} unfenced writes {} asked to stop {} killed {} frozen past the kill time {}",
                s.commands,
                s.command_writes,
                s.commands_terminated,
                s.commands_killed,
                s.commands_frozen_late
            );
            let allowed = allowed_violations(&cfg);
            let mut ok = true;
            if let Some(f) = &report.failure {
                println!("NOT JUDGED: {f}");
                ok = false;
            }
            for v in &report.violations {
                println!();
                println!(
                    "VIOLATION {}: {}",
                    v.violation.invariant, v.violation.message
                );
                println!("{}", v.excerpt);
                ok &= allowed.contains(&v.violation.invariant);
            }
            if report.violations.is_empty() && report.failure.is_none() {
                println!("no violation");
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn scenario_flags(cfg: &SimConfig) -> String {
    let d = SimConfig::default();
    let mut s = String::new();
    if cfg.protocol != d.protocol {
        s += &format!(" --protocol {}", cfg.protocol);
    }
    if cfg.clients != d.clients {
        s += &format!(" --clients {}", cfg.clients);
    }
    if cfg.stores != d.stores {
        s += &format!(" --stores {}", cfg.stores);
    }
    if cfg.keys != d.keys {
        s += &format!(" --keys {}", cfg.keys);
    }
    if cfg.ops_per_client != d.ops_per_client {
        s += &format!(" --ops {}", cfg.ops_per_client);
    }
    if cfg.faults != d.faults {
        s += &format!(" --faults {}", cfg.faults);
    }
    if cfg.drift != d.drift {
        s += &format!(" --drift {}", cfg.drift);
    }
    if cfg.timing.lease != d.timing.lease {
        s += &format!(" --lease-ms {}", cfg.timing.lease.as_millis());
    }
    if cfg.protocol_config.drift_ppm != d.protocol_config.drift_ppm {
        s += &format!(" --rho-ppm {}", cfg.protocol_config.drift_ppm);
    }
    if let Some(ppm) = cfg.clock_drift_ppm {
        s += &format!(" --clock-drift-ppm {ppm}");
    }
    if cfg.protocol_config.margin != cfg.timing.lease / 20 {
        s += &format!(" --margin-ms {}", cfg.protocol_config.margin.as_millis());
    }
    if cfg.supervised != d.supervised {
        s += &format!(" --supervised {}", cfg.supervised);
    }
    if cfg.supervisor != d.supervisor {
        s += &format!(" --supervisor {}", cfg.supervisor);
    }
    if cfg.bug != d.bug {
        s += &format!(" --bug {}", cfg.bug);
    }
    if cfg.long_work != d.long_work {
        s += &format!(" --long-work {}", cfg.long_work);
    }
    if cfg.long_work_max != d.long_work_max {
        s += &format!(" --long-work-max {}", cfg.long_work_max);
    }
    if cfg.target_holders != d.target_holders {
        s += &format!(" --target-holders {}", cfg.target_holders);
    }
    if cfg.timing.tick != d.timing.tick {
        s += &format!(" --tick-ms {}", cfg.timing.tick.as_millis());
    }
    if cfg.timing.acquire_wait != d.timing.acquire_wait {
        s += &format!(" --acquire-wait-ms {}", cfg.timing.acquire_wait.as_millis());
    }
    s
}
