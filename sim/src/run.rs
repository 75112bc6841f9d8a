//! One simulation run: build the world from a seed (one or several store
//! hosts, the client hosts, the operator), step it while injecting faults
//! until every client has done its ops (or the time limit), then audit every
//! store host and run the checkers.

use crate::config::SimConfig;
use crate::context::{ClientCtx, Shared};
use crate::faults::Injector;
use crate::history::{
    excerpt, Actor, AppliedOp, CommandEvent, Event, LockOpKind, Recorder, SaveOutcome, What,
};
use crate::invariants::{check_all, CheckContext, Invariant, Violation};
use crate::operator::{operator_main, OperatorCtx};
use crate::rng::derive;
use crate::scenario::{Fault, ProtocolVariant};
use crate::server::{naive_locks, serve, view, Durable};
use crate::wire::{client_host, store_host, OPERATOR_HOST};
use crate::workload::{client_main, EPOCH_MS};
use statelock::protocol::LockKey;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// Counts of what a run (or a sweep) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Ops started (acquire attempts by the workload).
    pub ops: u64,
    /// Locks acquired by the workload.
    pub grants: u64,
    /// Grants made by takeover (a quorum's takeover counts once, however
    /// many members applied it).
    pub takeovers: u64,
    /// State writes accepted.
    pub writes_accepted: u64,
    /// State writes rejected (fenced, or based on an old version).
    pub writes_rejected: u64,
    /// State writes whose outcome the client never learned.
    pub writes_unknown: u64,
    /// Seals that succeeded (the holder then went on).
    pub seals: u64,
    /// Seals that failed or whose outcome the holder never learned (it then
    /// gave the lock back).
    pub seals_failed: u64,
    /// Saves the store refused because a newer holder had sealed (the
    /// holder was told its lock was taken over).
    pub writes_stale: u64,
    /// Ops abandoned because the lease was lost.
    pub leases_lost: u64,
    /// Process pauses.
    pub pauses: u64,
    /// Host crashes.
    pub crashes: u64,
    /// Network faults.
    pub network_faults: u64,
    /// Operator force-unlocks applied (once per quorum op).
    pub forced: u64,
    /// Waiters registered in a hand-off queue (enqueues applied).
    pub enqueued: u64,
    /// Waiters that gave up and left a queue (leaves applied).
    pub left: u64,
    /// Grants to the head of a non-empty queue: the waiter's turn came.
    pub turn_grants: u64,
    /// Grants of a released record past the head of its queue (the head
    /// left it untaken for a whole lease and was skipped; also counted as
    /// takeovers).
    pub skips: u64,
    /// Supervised commands started.
    pub commands: u64,
    /// Unfenced writes by supervised commands.
    pub command_writes: u64,
    /// Supervised commands asked to stop (SIGTERM).
    pub commands_terminated: u64,
    /// Supervised commands killed (SIGKILL).
    pub commands_killed: u64,
    /// Supervised commands whose process was frozen past the kill time
    /// (their later writes are not judged).
    pub commands_frozen_late: u64,
    /// Simulated time.
    pub sim_time: Duration,
    /// Events recorded.
    pub events: u64,
}

impl Stats {
    /// Counts the events of one run.
    pub fn of(events: &[Event], sim_time: Duration) -> Stats {
        let mut s = Stats {
            sim_time,
            events: events.len() as u64,
            ..Stats::default()
        };
        // The writes each member of a quorum applied for one op carry the
        // same new record (same owner, token and version): count it once.
        let mut writes = std::collections::BTreeSet::new();
        for e in events {
            if let What::LockApplied { op, .. } = &e.what {
                s.count_queue_use(op);
            }
            match &e.what {
                What::AcquireStart { .. } => s.ops += 1,
                What::Acquired { .. } => s.grants += 1,
                What::LockApplied { op, .. }
                    if matches!(op.kind, LockOpKind::Takeover | LockOpKind::ForceUnlock) =>
                {
                    let next = op.next.as_ref().map(|n| (n.owner, n.token, n.rvn));
                    if writes.insert((op.key.as_str(), op.kind == LockOpKind::Takeover, next)) {
                        if op.kind == LockOpKind::Takeover {
                            s.takeovers += 1;
                        } else {
                            s.forced += 1;
                        }
                    }
                }
                What::Saved { outcome, .. } => match outcome {
                    SaveOutcome::Accepted(_) => s.writes_accepted += 1,
                    SaveOutcome::Rejected(why) => {
                        s.writes_rejected += 1;
                        if why.starts_with("stale writer") {
                            s.writes_stale += 1;
                        }
                    }
                    SaveOutcome::Unknown(_) => s.writes_unknown += 1,
                },
                What::Sealed { outcome, .. } => match outcome {
                    SaveOutcome::Accepted(_) => s.seals += 1,
                    SaveOutcome::Rejected(_) | SaveOutcome::Unknown(_) => s.seals_failed += 1,
                },
                What::Abandoned { .. } => s.leases_lost += 1,
                What::PauseStart { .. } => s.pauses += 1,
                What::Crash(_) => s.crashes += 1,
                What::Fault(_) => s.network_faults += 1,
                What::Command(c) => match c {
                    CommandEvent::Start { .. } => s.commands += 1,
                    CommandEvent::Write { .. } => s.command_writes += 1,
                    CommandEvent::Terminate { .. } => s.commands_terminated += 1,
                    CommandEvent::Kill { .. } => s.commands_killed += 1,
                    CommandEvent::Resumed { late: true, .. } => s.commands_frozen_late += 1,
                    CommandEvent::Resumed { .. } | CommandEvent::Exit { .. } => {}
                },
                _ => {}
            }
        }
        s
    }

    /// Counts what an applied lock write did with the hand-off queue (a
    /// quorum keeps no queue, so each write is one op).
    fn count_queue_use(&mut self, op: &AppliedOp) {
        match op.kind {
            LockOpKind::Enqueue => self.enqueued += 1,
            LockOpKind::Leave => self.left += 1,
            kind if kind.is_grant() => {
                let Some(prev) = op.prev.as_ref().filter(|p| !p.queue.is_empty()) else {
                    return;
                };
                if op.owner.is_some() && prev.queue.first() == op.owner.as_ref() {
                    self.turn_grants += 1;
                } else if prev.released {
                    self.skips += 1;
                }
            }
            _ => {}
        }
    }

    /// Adds another run's counts.
    pub fn add(&mut self, o: &Stats) {
        self.ops += o.ops;
        self.grants += o.grants;
        self.takeovers += o.takeovers;
        self.writes_accepted += o.writes_accepted;
        self.writes_rejected += o.writes_rejected;
        self.writes_unknown += o.writes_unknown;
        self.seals += o.seals;
        self.seals_failed += o.seals_failed;
        self.writes_stale += o.writes_stale;
        self.leases_lost += o.leases_lost;
        self.pauses += o.pauses;
        self.crashes += o.crashes;
        self.network_faults += o.network_faults;
        self.forced += o.forced;
        self.enqueued += o.enqueued;
        self.left += o.left;
        self.turn_grants += o.turn_grants;
        self.skips += o.skips;
        self.commands += o.commands;
        self.command_writes += o.command_writes;
        self.commands_terminated += o.commands_terminated;
        self.commands_killed += o.commands_killed;
        self.commands_frozen_late += o.commands_frozen_late;
        self.sim_time += o.sim_time;
        self.events += o.events;
    }
}

/// A violation with the trace excerpt that shows it.
#[derive(Debug, Clone)]
pub struct ViolationReport {
    /// The violation.
    pub violation: Violation,
    /// The relevant events, rendered.
    pub excerpt: String,
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// What the checkers found.
    pub violations: Vec<ViolationReport>,
    /// A run that could not be judged: a host panicked, or the run was cut at
    /// the time limit.
    pub failure: Option<String>,
    /// What the run did.
    pub stats: Stats,
    /// The whole trace, if asked for.
    pub events: Option<Vec<Event>>,
}

impl RunReport {
    /// The invariants violated, each once.
    pub fn violated(&self) -> Vec<Invariant> {
        let mut v: Vec<Invariant> = self
            .violations
            .iter()
            .map(|r| r.violation.invariant)
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// `EventualAcquire`'s bound: a takeover wait plus one backoff cap, both as
/// measured by the slowest clock of the run, plus one lease of slack for
/// the requests in flight and the live holder's own op.
pub fn liveness_bound(cfg: &SimConfig) -> Duration {
    let (slowest, _) = cfg.rate_range();
    let lease = cfg.timing.lease;
    let wait = cfg.protocol_config.takeover_wait(lease) + cfg.timing.backoff.cap;
    wait.div_f64(slowest.min(1.0)) + lease
}

/// Runs one seed. `keep_events` keeps the whole trace in the report.
pub fn run_seed(cfg: &SimConfig, seed: u64, keep_events: bool) -> RunReport {
    if !crate::deterministic_build() {
        return RunReport {
            seed,
            violations: Vec::new(),
            failure: Some(
                "statelock-sim was built without RUSTFLAGS=\"--cfg tokio_unstable\": runs would not be \
                 deterministic and panics in host tasks would be lost (the workspace's .cargo/config.toml sets it)"
                    .into(),
            ),
            stats: Stats::default(),
            events: None,
        };
    }
    if let Err(why) = cfg.validate() {
        return RunReport {
            seed,
            violations: Vec::new(),
            failure: Some(why),
            stats: Stats::default(),
            events: None,
        };
    }
    let cfg = Arc::new(cfg.clone());
    let rec = Recorder::new();
    let state_keys: Vec<LockKey> = cfg
        .key_names()
        .iter()
        .filter_map(|k| LockKey::new(k).ok())
        .collect();
    // One durable store per store host; the state objects live on the first.
    let durables: Vec<Arc<Durable>> = (0..cfg.stores)
        .map(|i| {
            let i = u8::try_from(i).unwrap_or(u8::MAX);
            Arc::new(if i == 0 {
                Durable::for_keys(0, &state_keys)
            } else {
                Durable::of_store(i)
            })
        })
        .collect();
    let shared = Arc::new(Shared::new(cfg.clients));
    let t = cfg.timing;
    let mut sim = turmoil::Builder::new()
        .simulation_duration(t.max_run + Duration::from_secs(1))
        .tick_duration(t.tick)
        .rng_seed(derive(seed, "turmoil", 0, 0))
        .min_message_latency(t.min_latency)
        .max_message_latency(t.max_latency)
        .fail_rate(0.0)
        .repair_rate(0.5)
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS as u64))
        .build();
    for (i, durable) in durables.iter().enumerate() {
        let (durable, rec) = (durable.clone(), rec.clone());
        sim.host(store_host(i), move || serve(durable.clone(), rec.clone()));
    }
    for i in 0..cfg.clients {
        let ctx = Arc::new(ClientCtx {
            id: i,
            seed,
            cfg: cfg.clone(),
            rec: rec.clone(),
            shared: shared.clone(),
        });
        sim.host(client_host(i), move || client_main(ctx.clone()));
    }
    if cfg.faults.has(Fault::ForceUnlock) && cfg.protocol == ProtocolVariant::Statelock {
        let ctx = Arc::new(OperatorCtx {
            seed,
            cfg: cfg.clone(),
            rec: rec.clone(),
            shared: shared.clone(),
        });
        sim.host(OPERATOR_HOST, move || operator_main(ctx.clone()));
    }

    let mut injector = Injector::new(&cfg, seed, durables.clone());
    let mut failure = None;
    let mut finished = false;
    loop {
        let now = sim.elapsed();
        injector.before_step(&mut sim, now, &cfg, &shared, &rec);
        if let Err(e) = sim.step() {
            failure = Some(format!("a host failed: {e}"));
            break;
        }
        if shared.all_finished() {
            finished = true;
            break;
        }
        if sim.elapsed() >= t.max_run {
            failure = Some(format!(
                "the run was cut at the time limit ({}s of simulated time) before every client finished",
                t.max_run.as_secs()
            ));
            break;
        }
    }
    let end = sim.elapsed();
    drop(sim);

    // Audit: each store host's final records.
    for durable in &durables {
        let naive = naive_locks(durable);
        for key in cfg.key_names() {
            let record = match cfg.protocol {
                ProtocolVariant::Statelock => LockKey::new(key.as_str())
                    .ok()
                    .and_then(|k| durable.locks().get_now(&k))
                    .map(|r| view(&r)),
                ProtocolVariant::Naive => {
                    naive
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map(|(_, l)| crate::history::RecordView {
                            owner: u128::from(l.lock_id),
                            token: l.generation,
                            rvn: None,
                            released: false,
                            queue: Vec::new(),
                        })
                }
            };
            let store = durable.id;
            rec.record_at(end, Actor::Sim, What::FinalRecord { store, key, record });
        }
    }
    rec.record_at(end, Actor::Sim, What::End { finished });

    let events = rec.take();
    let ctx = CheckContext {
        liveness_bound: liveness_bound(&cfg),
        fault_free: cfg.fault_free(),
    };
    let violations = check_all(&events, &ctx)
        .into_iter()
        .map(|v| {
            let lo = v
                .events
                .iter()
                .min()
                .copied()
                .unwrap_or(0)
                .saturating_sub(60);
            let hi = v.events.iter().max().copied().unwrap_or(0) + 12;
            let excerpt = excerpt(&events, lo, hi, &v.actors, &v.events, 60);
            ViolationReport {
                violation: v,
                excerpt,
            }
        })
        .collect();
    let stats = Stats::of(&events, end);
    RunReport {
        seed,
        violations,
        failure,
        stats,
        events: keep_events.then_some(events),
    }
}
