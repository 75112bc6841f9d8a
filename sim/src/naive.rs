//! The naive protocol of the seed design — a counter-example, kept in the
//! simulator only, never in the library.
//!
//! - acquire: put the lock if it is absent or `expiresAt < :now`, where `now`
//!   is the CLIENT'S WALL CLOCK and `expiresAt = wall + lease`;
//! - heartbeat (every lease/3): if the lock id matches, `expiresAt = wall + lease`;
//! - the holder believes it holds while its wall clock is before `expiresAt`;
//! - release: delete the lock if the lock id matches;
//! - state writes carry no token and are unconditional.
//!
//! The store still numbers grants (`generation`) and the writer still reports
//! the version it read, but only so the checkers can judge the history:
//! nothing enforces them.

use crate::config::SimConfig;
use crate::context::{Session, StateRead};
use crate::history::SaveOutcome;
use crate::remote::Rpc;
use crate::rng::SimRng;
use crate::wire::{NaiveLock, Request, Response};
use rand::{Rng, SeedableRng};
use statelock::clock::{Clock, SkewedClock};
use statelock::protocol::Backoff;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

/// A naive client.
pub struct NaiveSession {
    rpc: Rpc,
    clock: SkewedClock,
    lease: Duration,
    backoff: Backoff,
    wait: Duration,
    rng: RefCell<SimRng>,
}

#[derive(Debug)]
struct LeaseState {
    expires_at: Cell<i64>,
    frozen: Cell<bool>,
    lost: Cell<bool>,
}

/// A naive lock held.
pub struct NaiveGuard {
    key: String,
    lock_id: u64,
    generation: u64,
    state: Rc<LeaseState>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Drop for NaiveGuard {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

impl NaiveSession {
    /// A naive client sending through `rpc`, reading `clock`.
    pub fn new(rpc: Rpc, clock: SkewedClock, cfg: &SimConfig, seed: u64) -> Self {
        NaiveSession {
            rpc,
            clock,
            lease: cfg.timing.lease,
            backoff: cfg.timing.backoff,
            wait: cfg.timing.acquire_wait,
            rng: RefCell::new(SimRng::seed_from_u64(seed)),
        }
    }

    fn lease_ms(&self) -> u64 {
        self.lease.as_millis() as u64
    }

    fn start(&self, key: &str, lock_id: u64, lock: NaiveLock) -> NaiveGuard {
        let state = Rc::new(LeaseState {
            expires_at: Cell::new(lock.expires_at),
            frozen: Cell::new(false),
            lost: Cell::new(false),
        });
        let heartbeat = tokio::task::spawn_local(heartbeat_loop(
            self.rpc.clone(),
            self.clock.clone(),
            key.to_string(),
            lock_id,
            self.lease,
            state.clone(),
        ));
        NaiveGuard {
            key: key.to_string(),
            lock_id,
            generation: lock.generation,
            state,
            heartbeat,
        }
    }
}

async fn heartbeat_loop(
    rpc: Rpc,
    clock: SkewedClock,
    key: String,
    lock_id: u64,
    lease: Duration,
    st: Rc<LeaseState>,
) {
    loop {
        clock.sleep(lease / 3).await;
        if st.frozen.get() {
            continue;
        }
        let request = Request::NaiveHeartbeat {
            key: key.clone(),
            lock_id,
            now_ms: clock.wall().as_millis(),
            lease_ms: lease.as_millis() as u64,
        };
        match rpc.call(request).await {
            Ok(Response::NaiveLock {
                applied: true,
                lock: Some(l),
            }) => st.expires_at.set(l.expires_at),
            Ok(Response::NaiveLock { applied: false, .. }) => {
                st.lost.set(true);
                return;
            }
            _ => {}
        }
    }
}

impl Session for NaiveSession {
    type Guard = NaiveGuard;

    async fn acquire(&self, key: &str) -> Result<NaiveGuard, String> {
        let lock_id: u64 = self.rng.borrow_mut().random();
        let started = self.clock.now();
        let mut attempts = 0u32;
        loop {
            let request = Request::NaiveAcquire {
                key: key.to_string(),
                lock_id,
                now_ms: self.clock.wall().as_millis(),
                lease_ms: self.lease_ms(),
            };
            match self.rpc.call(request).await {
                Ok(Response::NaiveLock {
                    applied: true,
                    lock: Some(l),
                }) => return Ok(self.start(key, lock_id, l)),
                // An earlier attempt whose answer was lost did land.
                Ok(Response::NaiveLock { lock: Some(l), .. }) if l.lock_id == lock_id => {
                    return Ok(self.start(key, lock_id, l))
                }
                Ok(Response::NaiveLock { .. }) | Err(_) => {}
                Ok(other) => return Err(format!("unexpected answer {other:?}")),
            }
            if self.clock.now().saturating_since(started) >= self.wait {
                return Err("timed out".into());
            }
            attempts = attempts.saturating_add(1);
            let jitter: f64 = self.rng.borrow_mut().random_range(0.0..1.0);
            self.clock.sleep(self.backoff.delay(attempts, jitter)).await;
        }
    }

    fn token(&self, g: &NaiveGuard) -> u64 {
        g.generation
    }
    fn owner(&self, g: &NaiveGuard) -> u128 {
        u128::from(g.lock_id)
    }
    fn is_valid(&self, g: &NaiveGuard) -> bool {
        !g.state.lost.get() && self.clock.wall().as_millis() < g.state.expires_at.get()
    }
    fn freeze(&self, g: &NaiveGuard) {
        g.state.frozen.set(true);
    }

    async fn seal(&self, _key: &str, _g: &NaiveGuard) -> Option<SaveOutcome> {
        None
    }
    async fn load(&self, key: &str, _g: &NaiveGuard) -> Result<StateRead, String> {
        match self
            .rpc
            .call(Request::NaiveLoad {
                key: key.to_string(),
            })
            .await
        {
            Ok(Response::NaiveState(s)) => Ok(StateRead {
                version: s.map(|(version, _)| version),
                ..StateRead::default()
            }),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.0),
        }
    }
    async fn save(&self, key: &str, g: &NaiveGuard, read: &StateRead, by: String) -> SaveOutcome {
        let request = Request::NaiveSave {
            key: key.to_string(),
            generation: g.generation,
            based_on: read.version.clone(),
            body: by.into_bytes(),
        };
        match self.rpc.call(request).await {
            Ok(Response::NaiveSaved(v)) => SaveOutcome::Accepted(v),
            Ok(other) => SaveOutcome::Rejected(format!("unexpected answer {other:?}")),
            Err(e) => SaveOutcome::Unknown(e.0),
        }
    }
    async fn release(&self, g: NaiveGuard) -> Result<(), String> {
        g.heartbeat.abort();
        let mut last = String::new();
        for _ in 0..3 {
            let request = Request::NaiveRelease {
                key: g.key.clone(),
                lock_id: g.lock_id,
            };
            match self.rpc.call(request).await {
                Ok(Response::NaiveLock { applied: true, .. }) => return Ok(()),
                Ok(Response::NaiveLock { applied: false, .. }) => {
                    return Err("not held any more".into())
                }
                Ok(other) => return Err(format!("unexpected answer {other:?}")),
                Err(e) => last = e.0,
            }
        }
        Err(last)
    }
    /// The naive protocol has no supervisor: it never runs supervised commands.
    fn supervision<'a>(
        &'a self,
        _g: &'a NaiveGuard,
    ) -> Option<(
        &'a statelock::client::LockGuard,
        &'a std::sync::Arc<dyn Clock>,
    )> {
        None
    }
}
