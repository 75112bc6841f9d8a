//! Sweeps: many seeds across threads (each seed is its own single-threaded,
//! deterministic simulation), a summary, and the verdict the binary exits with.
//!
//! Progress goes to stderr only, never to stdout (the summary's stream): a
//! bar on a terminal, and on anything else (a CI log, a file) one plain line
//! each time another tenth of the seeds is done ([`progress_line`]). Progress
//! reporting must not change what a sweep runs or finds.

use crate::config::SimConfig;
use crate::invariants::Invariant;
use crate::run::{run_seed, RunReport, Stats, ViolationReport};
use crate::scenario::{ProtocolVariant, StateBug, SupervisorVariant};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io::{IsTerminal, Write as _};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What a sweep runs.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// The configuration of every run.
    pub cfg: SimConfig,
    /// The seeds.
    pub seeds: Range<u64>,
    /// Worker threads.
    pub jobs: usize,
    /// Report progress on stderr: a bar when stderr is a terminal, otherwise
    /// one plain line each time another tenth of the seeds is done (see
    /// [`progress_line`]).
    pub progress: bool,
}

/// The outcome of a sweep.
#[derive(Debug, Clone)]
pub struct SweepSummary {
    /// The configuration.
    pub cfg: SimConfig,
    /// The seeds run.
    pub seeds: Range<u64>,
    /// Worker threads used.
    pub jobs: usize,
    /// Totals over every run.
    pub stats: Stats,
    /// Per invariant: the seeds that violated it, in order.
    pub violating: BTreeMap<Invariant, Vec<u64>>,
    /// Per invariant: the report of its lowest violating seed.
    pub first: BTreeMap<Invariant, (u64, ViolationReport)>,
    /// Runs that could not be judged (host panic, time limit), with why.
    pub failures: Vec<(u64, String)>,
    /// Real time the sweep took.
    pub wall: Duration,
}

impl SweepSummary {
    /// Number of seeds run.
    pub fn seed_count(&self) -> u64 {
        self.seeds.end.saturating_sub(self.seeds.start)
    }

    /// Seeds per second of real time.
    pub fn seeds_per_second(&self) -> f64 {
        self.seed_count() as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Seeds that violated any invariant.
    pub fn violating_seeds(&self) -> usize {
        let mut all: Vec<u64> = self.violating.values().flatten().copied().collect();
        all.sort_unstable();
        all.dedup();
        all.len()
    }

    fn absorb(&mut self, r: RunReport) {
        self.stats.add(&r.stats);
        if let Some(f) = r.failure {
            self.failures.push((r.seed, f));
        }
        for v in r.violations {
            let inv = v.violation.invariant;
            let seeds = self.violating.entry(inv).or_default();
            if seeds.last() != Some(&r.seed) {
                seeds.push(r.seed);
            }
            match self.first.get(&inv) {
                Some((s, _)) if *s <= r.seed => {}
                _ => {
                    self.first.insert(inv, (r.seed, v));
                }
            }
        }
    }

    fn finish(&mut self) {
        for seeds in self.violating.values_mut() {
            seeds.sort_unstable();
            seeds.dedup();
        }
        self.failures.sort();
    }
}

/// How a sweep reports its progress on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProgressMode {
    /// Nothing.
    Off,
    /// An indicatif bar (stderr is a terminal).
    Bar,
    /// A plain line at every tenth of the seeds (stderr is not a terminal).
    Lines,
}

impl ProgressMode {
    fn choose(progress: bool, stderr_is_terminal: bool) -> Self {
        match (progress, stderr_is_terminal) {
            (false, _) => ProgressMode::Off,
            (true, true) => ProgressMode::Bar,
            (true, false) => ProgressMode::Lines,
        }
    }
}

/// How many tenths of `total` seeds `done` seeds are, rounded down (0 to 10).
fn tenths_done(done: u64, total: u64) -> u64 {
    if total == 0 {
        return 10;
    }
    let tenths = u128::from(done.min(total)) * 10 / u128::from(total);
    u64::try_from(tenths).unwrap_or(10)
}

/// The tenth reached when `done` seeds of `total` are done, if it is past the
/// `reported` one: a progress line is then due.
fn tenth_due(done: u64, total: u64, reported: u64) -> Option<u64> {
    let tenths = tenths_done(done, total);
    (tenths > reported).then_some(tenths)
}

/// Whole seconds, or minutes and seconds from two minutes on: `41 s`,
/// `12 min 5 s`.
fn human_seconds(d: Duration) -> String {
    let secs = d.as_secs_f64().round() as u64;
    if secs < 120 {
        format!("{secs} s")
    } else {
        format!("{} min {} s", secs / 60, secs % 60)
    }
}

/// The plain progress line of a sweep that is not drawn on a terminal:
/// `sweep: 300/1000 seeds, 0 violating, 41 s, about 95 s left`. `elapsed` is
/// the real time since the sweep began; the time left assumes the remaining
/// seeds run at the rate so far and is left out once every seed is done. Runs
/// that could not be judged are named only when there are any.
pub fn progress_line(
    done: u64,
    total: u64,
    violating: usize,
    not_judged: usize,
    elapsed: Duration,
) -> String {
    let mut line = format!("sweep: {done}/{total} seeds, {violating} violating");
    if not_judged > 0 {
        let _ = write!(line, ", {not_judged} not judged");
    }
    let _ = write!(line, ", {}", human_seconds(elapsed));
    if done > 0 && done < total {
        let left = elapsed.mul_f64((total - done) as f64 / done as f64);
        let _ = write!(line, ", about {} left", human_seconds(left));
    }
    line
}

/// Runs every seed of `opts`.
pub fn sweep(opts: &SweepOptions) -> SweepSummary {
    let started = Instant::now();
    let total = opts.seeds.end.saturating_sub(opts.seeds.start);
    let mode = ProgressMode::choose(opts.progress, std::io::stderr().is_terminal());
    let bar = if mode == ProgressMode::Bar {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} seeds ({per_sec}, eta {eta}) {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut summary = SweepSummary {
        cfg: opts.cfg.clone(),
        seeds: opts.seeds.clone(),
        jobs: opts.jobs.max(1),
        stats: Stats::default(),
        violating: BTreeMap::new(),
        first: BTreeMap::new(),
        failures: Vec::new(),
        wall: Duration::ZERO,
    };
    let next = AtomicU64::new(opts.seeds.start);
    let (tx, rx) = mpsc::channel::<RunReport>();
    std::thread::scope(|scope| {
        for w in 0..summary.jobs {
            let tx = tx.clone();
            let next = &next;
            let cfg = &opts.cfg;
            let end = opts.seeds.end;
            std::thread::Builder::new()
                .name(format!("sim-{w}"))
                .stack_size(32 << 20)
                .spawn_scoped(scope, move || loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    if tx.send(run_seed(cfg, seed, false)).is_err() {
                        break;
                    }
                })
                .expect("spawn a worker thread");
        }
        drop(tx);
        let mut done = 0u64;
        let mut tenths_reported = 0u64;
        for report in rx {
            let bad = !report.violations.is_empty() || report.failure.is_some();
            summary.absorb(report);
            bar.inc(1);
            done += 1;
            let due = tenth_due(done, total, tenths_reported);
            if let (ProgressMode::Lines, Some(tenths)) = (mode, due) {
                tenths_reported = tenths;
                let line = progress_line(
                    done,
                    total,
                    summary.violating_seeds(),
                    summary.failures.len(),
                    started.elapsed(),
                );
                // A closed or full stderr must not stop the sweep.
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
            if bad {
                bar.set_message(format!(
                    "{} violating seeds, {} failed",
                    summary.violating_seeds(),
                    summary.failures.len()
                ));
            }
        }
    });
    bar.finish_and_clear();
    summary.finish();
    summary.wall = started.elapsed();
    summary
}

/// The invariants a configuration is allowed to violate: none for statelock;
/// `MutualExclusion` and `SupervisedExclusion` when clocks drift beyond ρ
/// (`--drift beyond`, or `--clock-drift-ppm` above `--rho-ppm`: the
/// protocol's assumption is broken by design); `SupervisedExclusion` with the
/// planted supervisor bug; those that rest on unique tokens with the planted
/// quorum bug or `store-wipe` (lost acknowledged writes); `FifoGrant` with
/// the planted queue bug; all for naive, which guarantees nothing.
pub fn allowed_violations(cfg: &SimConfig) -> Vec<Invariant> {
    if cfg.protocol == ProtocolVariant::Naive {
        return Invariant::ALL.to_vec();
    }
    let mut allowed = Vec::new();
    if cfg.clocks_beyond_rho() {
        allowed.extend([Invariant::MutualExclusion, Invariant::SupervisedExclusion]);
    }
    if cfg.supervisor != SupervisorVariant::Exec
        && !allowed.contains(&Invariant::SupervisedExclusion)
    {
        allowed.push(Invariant::SupervisedExclusion);
    }
    // Tokens that are not one above every earlier grant defeat exclusion
    // and fencing alike: a planted quorum bug, or a store host that lost
    // acknowledged writes (outside the quorum's fault model).
    let token_breaks = [
        Invariant::MutualExclusion,
        Invariant::TokenMonotonic,
        Invariant::FencingMonotonic,
        Invariant::NoLostUpdate,
        Invariant::SealFencesStaleWriters,
        Invariant::SupervisedExclusion,
    ];
    if cfg.bug == StateBug::PerStoreToken || cfg.lost_writes() {
        allowed.retain(|inv| !token_breaks.contains(inv));
        allowed.extend(token_breaks);
    }
    match cfg.bug {
        StateBug::None | StateBug::PerStoreToken => {}
        StateBug::QueueJump => allowed.push(Invariant::FifoGrant),
        StateBug::NoSeal => allowed.push(Invariant::SealFencesStaleWriters),
        StateBug::UnfencedSave => allowed.extend([
            Invariant::SealFencesStaleWriters,
            Invariant::FencingMonotonic,
        ]),
    }
    allowed
}

/// Why `inv` may be violated in `cfg` (statelock only), for summaries.
fn allowed_because(cfg: &SimConfig, inv: Invariant) -> Option<&'static str> {
    if cfg.protocol != ProtocolVariant::Statelock || !allowed_violations(cfg).contains(&inv) {
        return None;
    }
    let state_bug = matches!(
        inv,
        Invariant::SealFencesStaleWriters | Invariant::FencingMonotonic
    ) && cfg.bug.is_state_bug();
    if cfg.bug == StateBug::PerStoreToken {
        Some("planted quorum bug")
    } else if inv == Invariant::FifoGrant {
        Some("planted queue bug")
    } else if cfg.lost_writes() {
        Some("a store host lost acknowledged writes")
    } else if state_bug {
        Some("planted state bug")
    } else if cfg.clocks_beyond_rho() {
        Some("clocks drift beyond rho")
    } else {
        Some("planted supervisor bug")
    }
}

/// The sweep's verdict: `Ok(why)` or `Err(why)`. Fails on any run that could
/// not be judged, on any violation the configuration does not allow, and —
/// with `expect_violations` — when no violation was found at all.
pub fn verdict(s: &SweepSummary, expect_violations: bool) -> Result<String, String> {
    if !s.failures.is_empty() {
        return Err(format!(
            "{} runs could not be judged (first: seed {}: {})",
            s.failures.len(),
            s.failures[0].0,
            s.failures[0].1
        ));
    }
    let allowed = allowed_violations(&s.cfg);
    let forbidden: Vec<String> = s
        .violating
        .iter()
        .filter(|(inv, seeds)| !seeds.is_empty() && !allowed.contains(inv))
        .map(|(inv, seeds)| format!("{inv} in {} seeds", seeds.len()))
        .collect();
    if !forbidden.is_empty() {
        return Err(format!("violated: {}", forbidden.join(", ")));
    }
    let found = s.violating_seeds();
    if expect_violations && found == 0 {
        return Err("violations were expected, but none was found".into());
    }
    if found > 0 {
        Ok(format!(
            "{found} seeds violated only invariants this configuration may violate"
        ))
    } else {
        Ok("no violation".into())
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl fmt::Display for SweepSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.seed_count();
        let st = &self.stats;
        writeln!(f, "statelock-sim sweep  {}", self.cfg.describe())?;
        writeln!(
            f,
            "  seeds                {} ({}..{})",
            thousands(n),
            self.seeds.start,
            self.seeds.end
        )?;
        writeln!(
            f,
            "  simulated ops        {} ({} acquired, {} by takeover, {} abandoned after losing the lease)",
            thousands(st.ops),
            thousands(st.grants),
            thousands(st.takeovers),
            thousands(st.leases_lost)
        )?;
        writeln!(
            f,
            "  state writes         {} accepted, {} rejected ({} stale), {} unknown; {} seals ({} failed)",
            thousands(st.writes_accepted),
            thousands(st.writes_rejected),
            thousands(st.writes_stale),
            thousands(st.writes_unknown),
            thousands(st.seals),
            thousands(st.seals_failed)
        )?;
        writeln!(
            f,
            "  faults               {} network, {} crashes, {} pauses, {} force-unlocks",
            thousands(st.network_faults),
            thousands(st.crashes),
            thousands(st.pauses),
            thousands(st.forced)
        )?;
        writeln!(
            f,
            "  simulated time       {:.0} s ({:.1} s per seed)",
            st.sim_time.as_secs_f64(),
            st.sim_time.as_secs_f64() / n.max(1) as f64
        )?;
        writeln!(
            f,
            "  supervised commands  {} ({} unfenced writes; {} asked to stop, {} killed, {} frozen past the kill time)",
            thousands(st.commands),
            thousands(st.command_writes),
            thousands(st.commands_terminated),
            thousands(st.commands_killed),
            thousands(st.commands_frozen_late)
        )?;
        writeln!(
            f,
            "  hand-off queue       {} registered, {} left, {} grants to the head, {} heads skipped",
            thousands(st.enqueued),
            thousands(st.left),
            thousands(st.turn_grants),
            thousands(st.skips)
        )?;
        writeln!(f, "  violations           seeds")?;
        for inv in Invariant::ALL {
            let seeds = self.violating.get(&inv).map(Vec::as_slice).unwrap_or(&[]);
            let mut line = format!("    {:<22} {:>4}", inv.name(), seeds.len());
            if !seeds.is_empty() {
                let shown: Vec<String> = seeds.iter().take(5).map(u64::to_string).collect();
                let _ = write!(
                    line,
                    "  (seeds {}{})",
                    shown.join(", "),
                    if seeds.len() > 5 { ", ..." } else { "" }
                );
            }
            if let Some(why) = allowed_because(&self.cfg, inv) {
                let _ = write!(line, "  [allowed: {why}]");
            }
            if inv == Invariant::FifoGrant && !self.cfg.fault_free() {
                let _ = write!(line, "  [judged only without faults]");
            }
            writeln!(f, "{line}")?;
        }
        writeln!(f, "  runs not judged      {}", self.failures.len())?;
        write!(
            f,
            "  wall time            {:.1} s with {} jobs: {:.1} seeds/s ({:.0} seeds/min)",
            self.wall.as_secs_f64(),
            self.jobs,
            self.seeds_per_second(),
            self.seeds_per_second() * 60.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_names_seeds_violations_elapsed_and_time_left() {
        assert_eq!(
            progress_line(300, 1000, 0, 0, Duration::from_secs(41)),
            "sweep: 300/1000 seeds, 0 violating, 41 s, about 96 s left"
        );
        assert_eq!(
            progress_line(100, 1000, 3, 2, Duration::from_millis(9_600)),
            "sweep: 100/1000 seeds, 3 violating, 2 not judged, 10 s, about 86 s left"
        );
    }

    #[test]
    fn progress_line_switches_to_minutes_from_two_minutes() {
        assert_eq!(
            progress_line(500, 1000, 0, 0, Duration::from_secs(245)),
            "sweep: 500/1000 seeds, 0 violating, 4 min 5 s, about 4 min 5 s left"
        );
        assert_eq!(
            progress_line(100, 10_000, 1, 0, Duration::from_secs(119)),
            "sweep: 100/10000 seeds, 1 violating, 119 s, about 196 min 21 s left"
        );
    }

    #[test]
    fn progress_line_drops_the_estimate_when_done() {
        assert_eq!(
            progress_line(1000, 1000, 0, 0, Duration::from_secs(137)),
            "sweep: 1000/1000 seeds, 0 violating, 2 min 17 s"
        );
    }

    #[test]
    fn a_line_is_due_at_every_tenth_and_at_most_ten_times() {
        let due = |total: u64| -> Vec<u64> {
            let mut reported = 0;
            let mut at = Vec::new();
            for done in 1..=total {
                if let Some(tenths) = tenth_due(done, total, reported) {
                    reported = tenths;
                    at.push(done);
                }
            }
            at
        };
        assert_eq!(
            due(1000),
            vec![100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
        );
        assert_eq!(due(3), vec![1, 2, 3]);
        assert_eq!(due(25), vec![3, 5, 8, 10, 13, 15, 18, 20, 23, 25]);
        assert_eq!(tenths_done(u64::MAX, u64::MAX), 10);
        assert_eq!(tenths_done(u64::MAX - 1, u64::MAX), 9);
    }

    #[test]
    fn lines_only_off_a_terminal_and_only_when_asked() {
        assert_eq!(ProgressMode::choose(false, true), ProgressMode::Off);
        assert_eq!(ProgressMode::choose(false, false), ProgressMode::Off);
        assert_eq!(ProgressMode::choose(true, true), ProgressMode::Bar);
        assert_eq!(ProgressMode::choose(true, false), ProgressMode::Lines);
    }
}
