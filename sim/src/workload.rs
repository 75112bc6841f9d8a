//! The client hosts' software: the workload every client runs, whatever the
//! protocol variant.
//!
//! Each op, as `statelock exec --state-store` and `statelock state pull` /
//! `push` run it: acquire a key (waiting) → check → **seal** the key's state
//! with the production `seal_for` (the fence rises to the holder's token) →
//! check → pull the document → work (now and then long, over several
//! heartbeats, checking as it goes) → check → push it with its counter one
//! higher (the production `FencedStore::save`: only while the fence is the
//! holder's, only on the version read) → release. The state lives on the
//! store host behind a [`RemoteStateBackend`]; the rules all run here, in the
//! library's code. Before each protected action the client asks its guard
//! whether it still holds the lock and records the answer (that is its
//! belief, judged by `MutualExclusion`). A client whose lease is gone stops
//! — unless it was *paused*: a paused process froze between its check and
//! its action (after the seal, or between its pull and its push), so it
//! carries on and writes anyway, and the seal must stop it. In a share of ops
//! (statelock only) the client runs a supervised command after the seal
//! instead of pulling and pushing (see [`crate::command`]). Long work (and
//! commands) may outlast the lease while faults are on, so that a holder cut
//! off mid-work must notice in time; once faults stop it is cut to 1.2
//! leases. With `--bug`, the save is a planted bug ([`crate::planted`]).
//!
//! Process state (op counter, whether a lock is held) lives in
//! [`crate::context::Shared`], outside the host, so a restarted client
//! carries on where it was and the simulator knows which leases died with a
//! crash. This module must not be imported by the modules it uses.

use crate::config::SimConfig;
use crate::context::{ClientCtx, Session, StateRead};
use crate::history::{Guarded, SaveOutcome, What};
use crate::naive::NaiveSession;
use crate::planted::{buggy_save, FenceRule};
use crate::remote::{client_lock_store, RemoteStateBackend, Rpc};
use crate::rng::{derive, stream, SimRng};
use crate::scenario::{Fault, ProtocolVariant, StateBug};
use crate::wire::client_host;
use rand::Rng;
use statelock::client::{AcquireOptions, LockClient, LockGuard};
use statelock::clock::{Clock, SkewedClock};
use statelock::protocol::{HolderInfo, LockKey, WallTime};
use statelock::state::layout::stack_and_env;
use statelock::state::{
    seal_for, FencedStore, Loaded, SealError, StateDocument, StateError, StateStore, StateVersion,
    Writer,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The document's counter (`outputs.counter`): one more at every save.
pub const COUNTER: &str = "counter";

/// Wall-clock time at the start of every run: 2024-01-01T00:00:00Z.
pub const EPOCH_MS: i64 = 1_704_067_200_000;

struct StatelockSession {
    client: LockClient,
    state: FencedStore<RemoteStateBackend>,
    opts: AcquireOptions,
    bug: StateBug,
    /// Write ids of the planted bugs' saves: client, incarnation, count.
    write_ids: AtomicU64,
    write_id_base: u128,
}

fn lock_key(key: &str) -> Result<LockKey, String> {
    LockKey::new(key).map_err(|e| e.to_string())
}

/// The state as loaded, for the workload.
fn read_of(loaded: Option<Loaded>) -> StateRead {
    let Some(loaded) = loaded else {
        return StateRead::default();
    };
    StateRead {
        version: Some(loaded.version.0.clone()),
        counter: loaded
            .document
            .outputs
            .get(COUNTER)
            .and_then(|v| v.as_u64())
            .unwrap_or(0),
        serial: loaded.stamp().map_or(0, |s| s.serial),
        document: Some(loaded.document),
    }
}

fn outcome_of(result: Result<StateVersion, StateError>) -> SaveOutcome {
    match result {
        Ok(v) => SaveOutcome::Accepted(v.0),
        Err(StateError::Unavailable(e)) => SaveOutcome::Unknown(e),
        Err(e) => SaveOutcome::Rejected(e.to_string()),
    }
}

/// What `statelock state push` does with a pulled document: read the
/// current state; refuse at once if the fence is another holder's, or if it
/// was saved since the pull; else save over the current version (the store
/// checks the fence and the version again, atomically).
async fn push(
    store: &dyn StateStore,
    writer: &Writer,
    read: &StateRead,
    doc: StateDocument,
) -> SaveOutcome {
    let current = match store.load(&writer.key).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return SaveOutcome::Rejected(
                StateError::NotSealed {
                    key: writer.key.to_string(),
                    fence: None,
                }
                .to_string(),
            )
        }
        // Nothing was written.
        Err(e) => return SaveOutcome::Rejected(format!("could not read the state: {e}")),
    };
    if let Some(stamp) = current.stamp() {
        if stamp.fence > writer.token
            || (stamp.fence == writer.token && stamp.lease != writer.lease)
        {
            let stale = StateError::Stale {
                fence: stamp.fence,
                token: writer.token,
            };
            return SaveOutcome::Rejected(stale.to_string());
        }
    }
    let now = current.stamp().map_or(0, |s| s.serial);
    if now != read.serial {
        return SaveOutcome::Rejected(format!(
            "the state changed since it was pulled (pulled at save {}, now at save {now})",
            read.serial
        ));
    }
    outcome_of(store.save(writer, &current.version, doc).await)
}

impl Session for StatelockSession {
    type Guard = LockGuard;

    async fn acquire(&self, key: &str) -> Result<LockGuard, String> {
        self.client
            .acquire(&lock_key(key)?, self.opts.clone())
            .await
            .map_err(|e| e.to_string())
    }
    fn token(&self, g: &LockGuard) -> u64 {
        g.token().0
    }
    fn owner(&self, g: &LockGuard) -> u128 {
        g.lease_id().0.as_u128()
    }
    fn is_valid(&self, g: &LockGuard) -> bool {
        g.is_valid()
    }
    fn freeze(&self, g: &LockGuard) {
        g.freeze_heartbeats();
    }
    async fn seal(&self, _key: &str, g: &LockGuard) -> Option<SaveOutcome> {
        if self.bug == StateBug::NoSeal {
            return None;
        }
        Some(match seal_for(&self.state, g).await {
            Ok((_, loaded)) => SaveOutcome::Accepted(loaded.version.0),
            Err(SealError::State(StateError::Unavailable(e))) => SaveOutcome::Unknown(e),
            Err(e) => SaveOutcome::Rejected(e.to_string()),
        })
    }
    async fn load(&self, key: &str, _g: &LockGuard) -> Result<StateRead, String> {
        match self.state.load(&lock_key(key)?).await {
            Ok(loaded) => Ok(read_of(loaded)),
            Err(e) => Err(e.to_string()),
        }
    }
    async fn save(&self, key: &str, g: &LockGuard, read: &StateRead, by: String) -> SaveOutcome {
        let writer = Writer::of(g);
        let mut doc = read.document.clone().unwrap_or_else(|| {
            let (stack, env) = stack_and_env(&writer.key).unzip();
            StateDocument::empty(stack, env)
        });
        doc.outputs.insert(
            COUNTER.to_string(),
            serde_json::Value::from(read.counter + 1),
        );
        doc.metadata.last_updated_by = Some(by);
        let rule = match self.bug {
            StateBug::None | StateBug::PerStoreToken | StateBug::QueueJump => {
                if read.document.is_none() {
                    return SaveOutcome::Rejected(format!(
                        "{key} has no state: it was never sealed"
                    ));
                }
                return push(&self.state, &writer, read, doc).await;
            }
            StateBug::NoSeal => FenceRule::AtWrite,
            StateBug::UnfencedSave => FenceRule::Ignored,
        };
        let write_id =
            self.write_id_base | u128::from(self.write_ids.fetch_add(1, Ordering::SeqCst));
        let based_on = read.version.clone().map(StateVersion);
        outcome_of(
            buggy_save(
                self.state.backend(),
                &writer,
                based_on.as_ref(),
                doc,
                rule,
                write_id,
            )
            .await,
        )
    }
    async fn release(&self, g: LockGuard) -> Result<(), String> {
        g.release().await.map_err(|e| e.to_string())
    }
    fn supervision<'a>(&'a self, g: &'a LockGuard) -> Option<(&'a LockGuard, &'a Arc<dyn Clock>)> {
        Some((g, self.client.clock()))
    }
}

/// Picks a clock rate in `[lo, hi]`: half the time exactly at one end of the
/// range (the protocol's worst cases live there: a slow holder against a
/// fast waiter), otherwise uniformly.
pub fn pick_rate(rng: &mut SimRng, (lo, hi): (f64, f64)) -> f64 {
    if lo >= hi {
        return lo;
    }
    match rng.random_range(0..4) {
        0 => lo,
        1 => hi,
        _ => rng.random_range(lo..=hi),
    }
}

/// A new rate for a clock running at `current`: half the time a jump to the
/// other end of the range (from inside it, to either end), otherwise as
/// [`pick_rate`].
pub fn next_rate(rng: &mut SimRng, current: f64, (lo, hi): (f64, f64)) -> f64 {
    if lo >= hi {
        return lo;
    }
    if !rng.random_bool(0.5) {
        return pick_rate(rng, (lo, hi));
    }
    if current <= lo {
        hi
    } else if current >= hi || rng.random_bool(0.5) {
        lo
    } else {
        hi
    }
}

/// Parts per million above (or below) real time.
pub fn rate_ppm(rate: f64) -> i64 {
    ((rate - 1.0) * 1e6).round() as i64
}

/// Builds this process's clock; must run inside the host (it reads the
/// host's virtual time). Returns the clock, its rate and its wall skew (ms).
fn make_clock(cfg: &SimConfig, rng: &mut SimRng) -> (SkewedClock, f64, i64) {
    let rate = pick_rate(rng, cfg.rate_range());
    let offsets = cfg.faults.has(Fault::ClockOffset);
    let lease_ms = cfg.timing.lease.as_millis() as i64;
    let mono_offset_ms: u64 = if offsets {
        rng.random_range(0..1_000_000_000)
    } else {
        0
    };
    let wall_skew_ms: i64 = if offsets {
        rng.random_range(-2 * lease_ms..=2 * lease_ms)
    } else {
        0
    };
    let now_ms = crate::history::now().as_millis() as i64;
    let wall_epoch = WallTime(EPOCH_MS + now_ms + wall_skew_ms - mono_offset_ms as i64);
    let clock = SkewedClock::new(Duration::from_millis(mono_offset_ms), rate, wall_epoch);
    (clock, rate, wall_skew_ms)
}

/// Drifts and steps this process's clock until faults stop.
async fn clock_faults(clock: SkewedClock, ctx: Arc<ClientCtx>, mut rng: SimRng) {
    let drift = ctx.cfg.faults.has(Fault::Drift);
    let steps = ctx.cfg.faults.has(Fault::WallStep);
    if !drift && !steps {
        return;
    }
    let lease_ms = ctx.cfg.timing.lease.as_millis() as i64;
    loop {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..=1000))).await;
        if ctx.shared.is_quiet() {
            return;
        }
        if drift && rng.random_bool(0.5) {
            let rate = next_rate(&mut rng, clock.rate(), ctx.cfg.rate_range());
            clock.set_rate(rate);
            ctx.record(What::ClockRate {
                rate_ppm: rate_ppm(rate),
            });
        }
        if steps && rng.random_bool(0.3) {
            let delta_ms = rng.random_range(-3 * lease_ms..=3 * lease_ms);
            clock.step_wall(delta_ms);
            ctx.record(What::WallStep { delta_ms });
        }
    }
}

/// The software of client host `ctx.id`; restarted after a crash.
pub async fn client_main(ctx: Arc<ClientCtx>) -> turmoil::Result {
    let incarnation = {
        let mut p = ctx.shared.progress(ctx.id);
        p.incarnations += 1;
        p.holding = None;
        p.incarnations
    };
    let id = ctx.id as u64;
    let sub = u64::from(incarnation);
    let mut rng = stream(ctx.seed, "client", id, sub);
    let (clock, rate, wall_skew_ms) = make_clock(&ctx.cfg, &mut rng);
    ctx.record(What::ClientStarted {
        incarnation,
        rate_ppm: rate_ppm(rate),
        wall_skew_ms,
    });
    tokio::task::spawn_local(clock_faults(
        clock.clone(),
        ctx.clone(),
        stream(ctx.seed, "clock", id, sub),
    ));
    let rpc = Rpc::new(
        client_host(ctx.id),
        ctx.me(),
        ctx.cfg.timing.request_timeout,
        ctx.rec.clone(),
    );
    match ctx.cfg.protocol {
        ProtocolVariant::Statelock => {
            let client = LockClient::builder(client_lock_store(&rpc, &ctx.cfg, ctx.id)?)
                .clock(clock)
                .seed(derive(ctx.seed, "lock-client", id, sub))
                .protocol(ctx.cfg.protocol_config)
                .build();
            let session = StatelockSession {
                client,
                state: FencedStore::new(RemoteStateBackend::new(rpc)),
                bug: ctx.cfg.bug,
                write_ids: AtomicU64::new(0),
                write_id_base: u128::from(id) << 96 | u128::from(sub) << 64,
                opts: AcquireOptions {
                    lease: ctx.cfg.timing.lease,
                    wait: Some(ctx.cfg.timing.acquire_wait),
                    backoff: ctx.cfg.timing.backoff,
                    cancel: None,
                    holder: HolderInfo::named(client_host(ctx.id)),
                    on_wait: None,
                    on_store_error: None,
                },
            };
            run_ops(&ctx, &session, &mut rng).await;
        }
        ProtocolVariant::Naive => {
            let session = NaiveSession::new(
                rpc,
                clock,
                &ctx.cfg,
                derive(ctx.seed, "naive-client", id, sub),
            );
            run_ops(&ctx, &session, &mut rng).await;
        }
    }
    Ok(())
}

async fn run_ops<S: Session>(ctx: &Arc<ClientCtx>, s: &S, rng: &mut SimRng) {
    let keys = ctx.cfg.key_names();
    loop {
        let op = {
            let mut p = ctx.shared.progress(ctx.id);
            if p.next_op >= ctx.cfg.ops_per_client {
                p.finished = true;
                None
            } else {
                p.next_op += 1;
                Some(p.next_op - 1)
            }
        };
        let Some(op) = op else { break };
        let key = &keys[rng.random_range(0..keys.len())];
        one_op(ctx, s, rng, key, op).await;
        let think = rng.random_range(0..=ctx.cfg.timing.think_max.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(think)).await;
    }
    ctx.record(What::Finished);
}

fn pauses_allowed(ctx: &ClientCtx) -> bool {
    ctx.pauses_allowed()
}

async fn pause<S: Session>(ctx: &ClientCtx, s: &S, g: &S::Guard, rng: &mut SimRng, key: &str) {
    let lease_ms = ctx.cfg.timing.lease.as_millis() as u64;
    let ms = rng.random_range(lease_ms * 6 / 5..=lease_ms * 5 / 2);
    let token = s.token(g);
    s.freeze(g);
    ctx.record(What::PauseStart {
        key: key.to_string(),
        token,
        ms,
    });
    // A paused process sees no time pass: sleep on the real (simulated) clock.
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ctx.record(What::PauseEnd {
        key: key.to_string(),
        token,
    });
}

async fn give_back<S: Session>(ctx: &ClientCtx, s: &S, g: S::Guard, key: &str, token: u64) {
    let result = match s.release(g).await {
        Ok(()) => "ok".to_string(),
        Err(e) => e,
    };
    ctx.record(What::Released {
        key: key.to_string(),
        token,
        result,
    });
    ctx.shared.progress(ctx.id).holding = None;
}

async fn one_op<S: Session>(ctx: &Arc<ClientCtx>, s: &S, rng: &mut SimRng, key: &str, op: u32) {
    ctx.record(What::AcquireStart {
        key: key.to_string(),
        op,
    });
    let guard = match s.acquire(key).await {
        Ok(g) => g,
        Err(error) => {
            ctx.record(What::AcquireFailed {
                key: key.to_string(),
                op,
                error,
            });
            return;
        }
    };
    let token = s.token(&guard);
    let owner = s.owner(&guard);
    ctx.record(What::Acquired {
        key: key.to_string(),
        op,
        token,
        owner,
    });
    ctx.shared.progress(ctx.id).holding = Some((key.to_string(), owner));

    // Seal the state before anything else, as `statelock exec` does.
    let valid = s.is_valid(&guard);
    ctx.record(What::Check {
        key: key.to_string(),
        token,
        valid,
        before: Guarded::Seal,
    });
    if !valid {
        ctx.record(What::Abandoned {
            key: key.to_string(),
            token,
            reason: "lease lost before sealing".into(),
        });
        return give_back(ctx, s, guard, key, token).await;
    }
    if let Some(outcome) = s.seal(key, &guard).await {
        let sealed = matches!(outcome, SaveOutcome::Accepted(_));
        ctx.record(What::Sealed {
            key: key.to_string(),
            token: s.token(&guard),
            outcome,
        });
        if !sealed {
            return give_back(ctx, s, guard, key, token).await;
        }
    }
    // A seal may have raised the token above a fence that was ahead of it.
    let token = s.token(&guard);

    if let Some((lock_guard, clock)) = s.supervision(&guard) {
        if rng.random_bool(ctx.cfg.supervised) {
            let command_rng = {
                let incarnation = ctx.shared.progress(ctx.id).incarnations;
                stream(
                    ctx.seed,
                    "command",
                    ctx.id as u64,
                    u64::from(incarnation) << 32 | u64::from(op),
                )
            };
            crate::command::run_supervised(ctx, lock_guard, clock, key, rng, command_rng).await;
            return give_back(ctx, s, guard, key, token).await;
        }
    }

    let mut paused = false;
    if pauses_allowed(ctx) && rng.random_bool(ctx.cfg.pause_after_acquire) {
        pause(ctx, s, &guard, rng, key).await;
        paused = true;
    }
    let valid = s.is_valid(&guard);
    ctx.record(What::Check {
        key: key.to_string(),
        token,
        valid,
        before: Guarded::Load,
    });
    if !valid && !paused {
        ctx.record(What::Abandoned {
            key: key.to_string(),
            token,
            reason: "lease lost before reading".into(),
        });
        return give_back(ctx, s, guard, key, token).await;
    }
    let read = match s.load(key, &guard).await {
        Ok(r) => r,
        Err(error) => {
            ctx.record(What::LoadFailed {
                key: key.to_string(),
                error,
            });
            return give_back(ctx, s, guard, key, token).await;
        }
    };
    ctx.record(What::Loaded {
        key: key.to_string(),
        token,
        version: read.version.clone(),
    });
    // Work: usually short; sometimes long enough that the lease must be
    // renewed, checking the guard all along (as a careful holder does).
    let lease_ms = ctx.cfg.timing.lease.as_millis() as u64;
    let long = rng.random_bool(ctx.cfg.long_work);
    let mut left = if long {
        rng.random_range(lease_ms / 5..=(lease_ms as f64 * ctx.long_work_max()) as u64)
    } else {
        rng.random_range(0..=ctx.cfg.timing.work_max.as_millis() as u64)
    };
    let work_started = crate::history::now();
    while left > 0 {
        let step = if long {
            left.min(rng.random_range(5..=50))
        } else {
            left
        };
        tokio::time::sleep(Duration::from_millis(step)).await;
        left -= step;
        if ctx.work_cut_short(work_started) {
            left = 0;
        }
        if long && left > 0 {
            let valid = s.is_valid(&guard);
            ctx.record(What::Check {
                key: key.to_string(),
                token,
                valid,
                before: Guarded::Work,
            });
            if !valid && !paused {
                ctx.record(What::Abandoned {
                    key: key.to_string(),
                    token,
                    reason: "lease lost while working".into(),
                });
                return give_back(ctx, s, guard, key, token).await;
            }
        }
    }

    let valid = s.is_valid(&guard);
    ctx.record(What::Check {
        key: key.to_string(),
        token,
        valid,
        before: Guarded::Save,
    });
    if !valid && !paused {
        ctx.record(What::Abandoned {
            key: key.to_string(),
            token,
            reason: "lease lost before writing".into(),
        });
        return give_back(ctx, s, guard, key, token).await;
    }
    if pauses_allowed(ctx) && rng.random_bool(ctx.cfg.pause_before_write) {
        pause(ctx, s, &guard, rng, key).await;
    }
    let by = format!("c{}#{op}", ctx.id);
    let outcome = s.save(key, &guard, &read, by).await;
    ctx.record(What::Saved {
        key: key.to_string(),
        token,
        expected: read.version,
        outcome,
    });
    give_back(ctx, s, guard, key, token).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_sit_at_the_edges_half_the_time_and_jump_between_them() {
        let range = (0.95, 1.05);
        let mut rng = stream(1, "test", 0, 0);
        let n = 4000;
        let picks: Vec<f64> = (0..n).map(|_| pick_rate(&mut rng, range)).collect();
        assert!(picks.iter().all(|r| (0.95..=1.05).contains(r)));
        let lo = picks.iter().filter(|r| **r == 0.95).count();
        let hi = picks.iter().filter(|r| **r == 1.05).count();
        assert!(
            (800..1200).contains(&lo) && (800..1200).contains(&hi),
            "{lo} {hi}"
        );
        // From an edge, a change goes to the other edge more than half the time.
        let from_lo: Vec<f64> = (0..n).map(|_| next_rate(&mut rng, 0.95, range)).collect();
        let to_hi = from_lo.iter().filter(|r| **r == 1.05).count();
        assert!(to_hi > n * 55 / 100, "{to_hi}");
        let from_hi = (0..n)
            .filter(|_| next_rate(&mut rng, 1.05, range) == 0.95)
            .count();
        assert!(from_hi > n * 55 / 100, "{from_hi}");
        // Inside the range, a change lands on an edge at least half the time.
        let inside = (0..n)
            .filter(|_| {
                let r = next_rate(&mut rng, 1.01, range);
                r == 0.95 || r == 1.05
            })
            .count();
        assert!(inside > n * 70 / 100, "{inside}");
        // Exact clocks stay exact.
        assert_eq!(pick_rate(&mut rng, (1.0, 1.0)), 1.0);
        assert_eq!(next_rate(&mut rng, 1.0, (1.0, 1.0)), 1.0);
    }
}
