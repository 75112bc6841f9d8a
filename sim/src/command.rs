//! Supervised commands: what `statelock exec` does with the command it runs
//! while holding a lock, simulated.
//!
//! In a fraction of ops ([`crate::SimConfig::supervised`], statelock only) the
//! client, once it holds the lock, starts a *command* task that keeps making
//! unfenced writes — actions on the outside world that no token protects, each
//! recorded with the true simulated time, the key and the holder's token — until
//! its work is done or it is stopped. The op's own task is the supervisor: it
//! drives the library's sans-IO [`Supervisor`] exactly as exec does, polling it
//! with the client's clock, the guard's [`LockGuard::deadline`] and
//! [`LockGuard::is_valid`] (each poll's answer is recorded as a validity
//! check), waking when it asked to (or after a tenth of a lease, whichever
//! comes first), when [`LockGuard::lost_token`] fires or when the command
//! exits:
//! - `Terminate` is SIGTERM: the command may ignore it (a third of commands),
//!   or stops within a random time, which may outlast the grace period;
//! - `Kill` is SIGKILL: the command task is aborted at once and writes nothing
//!   more.
//!
//! `SupervisedExclusion` (`invariants/supervised_exclusion.rs`) then checks
//! that every command write happened before the first write of any later
//! grant of the key.
//!
//! **Pauses.** A pause freezes the whole client process: heartbeats, the
//! supervisor and the command together (the command blocks before its next
//! write until the process runs again). A frozen supervisor cannot stop
//! anything, so if the process was frozen past the moment the kill had to land
//! (`deadline − kill_margin` by the holder's clock, read when it runs again),
//! the command may write after the holder's validity ended, by design: that is
//! what fencing exists for, and no supervisor can prevent it. Such pauses are
//! recorded ([`CommandEvent::Resumed`] with `late: true`) and the checker
//! ignores the command's writes after them. Supervised clients are paused like
//! the others rather than never, so that the other cases are exercised: a
//! pause that ends before the kill time (the supervisor must still stop the
//! command in time, and the lease, no longer renewed, then runs out), and the
//! command getting the processor back before its supervisor does (it writes
//! first, as a resumed process group would).
//!
//! A crash of the client host kills the command with it (the machine died).
//!
//! [`SupervisorVariant::LateKill`] is a planted bug, sim-only: the supervisor
//! is handed a deadline shifted by `grace + kill_margin`, so it kills at
//! `deadline + grace` instead of by `deadline − kill_margin`. It exists to
//! show that `SupervisedExclusion` catches a wrong schedule.
//!
//! This module must not change the library's schedule: it only drives
//! [`Supervisor`] and [`StopPlan`] as they are.

use crate::context::ClientCtx;
use crate::history::{now, CommandEvent, Guarded, OnTerm, What};
use crate::rng::SimRng;
use crate::scenario::SupervisorVariant;
use rand::Rng;
use statelock::client::LockGuard;
use statelock::clock::Clock;
use statelock::protocol::{StopPlan, SuperviseAction, Supervisor};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How one command behaves, drawn when it starts.
#[derive(Debug, Clone, Copy)]
struct Spec {
    run: Duration,
    on_term: OnTerm,
    /// A pause of the whole process: (after how long, how long).
    pause: Option<(Duration, Duration)>,
}

/// What the supervisor shares with its command.
struct Process {
    /// True simulated time of the SIGTERM, if sent.
    term_at: Mutex<Option<Duration>>,
    /// True while the process is frozen.
    frozen: watch::Sender<bool>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn draw_ms(rng: &mut SimRng, lo: Duration, hi: Duration) -> Duration {
    let (lo, hi) = (ms(lo), ms(hi));
    Duration::from_millis(rng.random_range(lo..=hi.max(lo)))
}

/// The command: writes every few milliseconds until its work is done, it
/// stops after a SIGTERM, or it is aborted (SIGKILL). Returns why it exited.
async fn command(
    ctx: Arc<ClientCtx>,
    key: String,
    token: u64,
    spec: Spec,
    process: Arc<Process>,
    mut rng: SimRng,
) -> &'static str {
    let started = now();
    let done_at = started + spec.run;
    let mut frozen = process.frozen.subscribe();
    let mut n: u32 = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(rng.random_range(2..=40))).await;
        // A frozen process does nothing until it runs again.
        let _ = frozen.wait_for(|f| !*f).await;
        let t = now();
        let term_at = *process.term_at.lock().unwrap_or_else(|p| p.into_inner());
        if let (OnTerm::StopAfter(d), Some(at)) = (spec.on_term, term_at) {
            if t >= at + d {
                return "stopped after SIGTERM";
            }
        }
        if t >= done_at || ctx.work_cut_short(started) {
            return "work done";
        }
        n += 1;
        ctx.record(What::Command(CommandEvent::Write {
            key: key.clone(),
            token,
            n,
        }));
    }
}

/// Runs one supervised command under `guard` (already held and checked) and
/// returns once it has exited or been killed. `rng` is the op's stream (the
/// command's behaviour), `command_rng` the command task's own (its write
/// times).
pub(crate) async fn run_supervised(
    ctx: &Arc<ClientCtx>,
    guard: &LockGuard,
    clock: &Arc<dyn Clock>,
    key: &str,
    rng: &mut SimRng,
    command_rng: SimRng,
) {
    let cfg = &ctx.cfg;
    let lease = cfg.timing.lease;
    let protocol = cfg.protocol_config;
    let token = guard.token().0;
    // Half the time the longest grace that fits, as exec's default grace
    // (10 s) is cut down to for leases under about 20 s.
    let max_grace = StopPlan::max_grace(&protocol, lease);
    let grace = if rng.random_bool(0.5) {
        max_grace
    } else {
        draw_ms(rng, Duration::ZERO, max_grace)
    };
    let plan = StopPlan::fitting(&protocol, lease, grace);
    let on_term = if rng.random_bool(1.0 / 3.0) {
        OnTerm::Ignore
    } else {
        OnTerm::StopAfter(draw_ms(
            rng,
            Duration::ZERO,
            plan.grace() * 2 + Duration::from_millis(10),
        ))
    };
    // As long as long work: up to `long_work_max` leases while faults are
    // on, so that a cut-off holder's lease runs out under a running command.
    let run = draw_ms(rng, lease / 10, lease.mul_f64(ctx.long_work_max()));
    let pause = rng.random_bool(cfg.pause_supervised).then(|| {
        (
            draw_ms(rng, Duration::ZERO, run),
            draw_ms(rng, lease / 20, lease * 5 / 2),
        )
    });
    let spec = Spec {
        run,
        on_term,
        pause,
    };
    // The planted bug hands the supervisor a deadline shifted so that its
    // kill time `deadline − kill_margin` lands at the real `deadline + grace`.
    let shift = match cfg.supervisor {
        SupervisorVariant::Exec => Duration::ZERO,
        SupervisorVariant::LateKill => plan.grace() + StopPlan::kill_margin(lease),
    };
    let record = |e: CommandEvent| ctx.record(What::Command(e));
    record(CommandEvent::Start {
        key: key.to_string(),
        token,
        run_ms: ms(run),
        grace_ms: ms(plan.grace()),
        on_term,
    });
    let (frozen, _) = watch::channel(false);
    let process = Arc::new(Process {
        term_at: Mutex::new(None),
        frozen,
    });
    let mut task = tokio::task::spawn_local(command(
        ctx.clone(),
        key.to_string(),
        token,
        spec,
        process.clone(),
        command_rng,
    ));
    let mut supervisor = Supervisor::new(plan);
    let lost = guard.lost_token();
    let mut lost_seen = false;
    let mut pause_at = spec.pause.map(|(after, len)| (now() + after, len));
    loop {
        let at = clock.now();
        let held = guard.is_valid();
        ctx.record(What::Check {
            key: key.to_string(),
            token,
            valid: held,
            before: Guarded::Work,
        });
        let until = match supervisor.poll(at, guard.deadline() + shift, held) {
            SuperviseAction::Wait { until } => until,
            SuperviseAction::Terminate { cause, until } => {
                *process.term_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(now());
                record(CommandEvent::Terminate {
                    key: key.to_string(),
                    token,
                    cause,
                });
                until
            }
            SuperviseAction::Kill => {
                task.abort();
                record(CommandEvent::Kill {
                    key: key.to_string(),
                    token,
                });
                return;
            }
            SuperviseAction::Done => {
                task.abort();
                return;
            }
        };
        // Asleep at most a tenth of a lease: the simulated clock times a
        // sleep by its rate when the sleep starts, and a rate that jumps by
        // 2ρ meanwhile would make a long sleep overshoot by 2ρ of its length
        // (an artefact of the simulated clock, not of exec's schedule).
        let nap = until.saturating_since(at).min(lease / 10);
        let pause_in = pause_at.map(|(t, _)| t.saturating_sub(now()));
        tokio::select! {
            // A lost lease wins a tie, as in exec.
            biased;
            _ = lost.cancelled(), if !lost_seen => lost_seen = true,
            exited = &mut task => {
                let reason = match exited {
                    Ok(why) => why.to_string(),
                    Err(e) => format!("the command task failed: {e}"),
                };
                record(CommandEvent::Exit { key: key.to_string(), token, reason });
                return;
            }
            _ = clock.sleep(nap) => {}
            _ = tokio::time::sleep(pause_in.unwrap_or_default()), if pause_in.is_some() => {
                let len = pause_at.take().map(|(_, len)| len).unwrap_or_default();
                if ctx.pauses_allowed() {
                    freeze(ctx, guard, clock, &plan, &process, key, len, rng).await;
                }
            }
        }
    }
}

/// Freezes the whole process for `len`: heartbeats, supervisor and command.
#[allow(clippy::too_many_arguments)]
async fn freeze(
    ctx: &ClientCtx,
    guard: &LockGuard,
    clock: &Arc<dyn Clock>,
    plan: &StopPlan,
    process: &Process,
    key: &str,
    len: Duration,
    rng: &mut SimRng,
) {
    let token = guard.token().0;
    guard.freeze_heartbeats();
    process.frozen.send_replace(true);
    ctx.record(What::PauseStart {
        key: key.to_string(),
        token,
        ms: ms(len),
    });
    tokio::time::sleep(len).await;
    process.frozen.send_replace(false);
    ctx.record(What::PauseEnd {
        key: key.to_string(),
        token,
    });
    // Judged by the library's schedule, whatever supervisor runs.
    let late = clock.now() >= plan.kill_by(guard.deadline());
    ctx.record(What::Command(CommandEvent::Resumed {
        key: key.to_string(),
        token,
        late,
    }));
    // The command gets the processor back first: the supervisor notices it
    // runs again a few milliseconds later.
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..=3))).await;
}
