//! The async driver (tokio) of the protocol core: [`LockClient`] acquires keys
//! (waiting with backoff, timing out, cancellable), [`LockGuard`] holds one
//! (heartbeat task, lease-lost signal, release and best-effort release on
//! drop), and the client lists locks and force-unlocks them.
//!
//! The client makes no decision of its own: it asks the core
//! ([`crate::protocol::Waiter`], [`crate::protocol::Lease`]) what to send and
//! when to sleep, and sleeps only on its [`Clock`].

mod cell;
mod error;
mod guard;
mod rng;

pub use error::LockError;
pub use guard::LockGuard;

use crate::clock::{Clock, SystemClock};
use crate::observe;
use crate::protocol::{
    Backoff, HolderInfo, Lease, LockKey, LockOp, LockRecord, MonoTime, OpKind, Outcome,
    ProtocolConfig, RecordVersion, Waiter, WaiterStep, WallTime,
};
use crate::store::{LockStore, StoreError};
use rng::ClientRng;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Options for [`LockClient::acquire`].
#[derive(Clone)]
pub struct AcquireOptions {
    /// The lease: the holder renews every third of it; a crashed holder's lock
    /// is taken over about one lease after its last heartbeat.
    pub lease: Duration,
    /// How long to wait for a held lock; `Some(ZERO)` tries once, `None` waits
    /// forever.
    pub wait: Option<Duration>,
    /// Backoff between polls while waiting.
    pub backoff: Backoff,
    /// Cancels the wait.
    pub cancel: Option<CancellationToken>,
    /// Who is asking (shown to others).
    pub holder: HolderInfo,
    /// Called each time the waiter learns who holds the lock.
    pub on_wait: Option<WaitCallback>,
}

impl std::fmt::Debug for AcquireOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcquireOptions")
            .field("lease", &self.lease)
            .field("wait", &self.wait)
            .field("backoff", &self.backoff)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl Default for AcquireOptions {
    fn default() -> Self {
        AcquireOptions {
            lease: Duration::from_secs(20),
            wait: Some(Duration::from_secs(600)),
            backoff: Backoff::default(),
            cancel: None,
            holder: HolderInfo::named(default_holder_name()),
            on_wait: None,
        }
    }
}

fn default_holder_name() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "statelock".to_string())
}

/// A callback receiving [`WaitProgress`] while an acquirer waits.
pub type WaitCallback = Arc<dyn Fn(&WaitProgress) + Send + Sync>;

/// What a waiting acquirer knows, for progress output.
#[derive(Debug, Clone)]
pub struct WaitProgress {
    /// The current holder's record.
    pub holder: LockRecord,
    /// How long we have waited so far.
    pub waited: Duration,
    /// How long until a takeover is allowed if the holder stays silent.
    pub takeover_in: Duration,
}

/// A lock as shown by [`LockClient::status`] and [`LockClient::locks`].
#[derive(Debug, Clone, Serialize)]
pub struct LockStatus {
    /// The record.
    pub record: LockRecord,
    /// Held (not released).
    pub held: bool,
    /// Milliseconds since the last heartbeat, by this machine's wall clock
    /// (informational: wall clocks can disagree).
    pub heartbeat_age_ms: u64,
    /// Held, but no heartbeat for longer than a takeover wait: the holder is
    /// probably gone, and a waiter would take the lock over.
    pub stale: bool,
}

/// Builder for [`LockClient`].
#[derive(Debug)]
pub struct LockClientBuilder {
    store: Arc<dyn LockStore>,
    clock: Arc<dyn Clock>,
    protocol: ProtocolConfig,
    seed: Option<u64>,
}

impl LockClientBuilder {
    /// Uses `clock` instead of the system clock.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }
    /// Uses these protocol constants (ρ, margin).
    pub fn protocol(mut self, protocol: ProtocolConfig) -> Self {
        self.protocol = protocol;
        self
    }
    /// Derives every random choice (lease ids, versions, jitter) from `seed`.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
    /// Builds the client.
    pub fn build(self) -> LockClient {
        LockClient {
            inner: Arc::new(Inner {
                store: self.store,
                clock: self.clock,
                protocol: self.protocol,
                rng: ClientRng::new(self.seed),
            }),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) store: Arc<dyn LockStore>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) protocol: ProtocolConfig,
    pub(crate) rng: ClientRng,
}

/// A lock client over one store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LockClient {
    inner: Arc<Inner>,
}

/// Turns a store answer into what the core needs to know. Errors that are not
/// about the write's outcome (corrupt record, misconfiguration) are returned.
pub(crate) fn outcome_of(result: Result<LockRecord, StoreError>) -> Result<Outcome, StoreError> {
    match result {
        Ok(record) => Ok(Outcome::Applied(record)),
        Err(StoreError::Conflict { current }) => Ok(Outcome::Conflict(current.map(|b| *b))),
        Err(StoreError::Unavailable(why)) => {
            tracing::debug!(%why, "store unavailable; the write's outcome is unknown");
            Ok(Outcome::Unknown)
        }
        Err(other) => Err(other),
    }
}

impl LockClient {
    /// A client over `store` with the system clock and default protocol constants.
    pub fn new(store: impl LockStore + 'static) -> LockClient {
        LockClient::builder(Arc::new(store)).build()
    }

    /// A builder over `store`.
    pub fn builder(store: Arc<dyn LockStore>) -> LockClientBuilder {
        LockClientBuilder {
            store,
            clock: Arc::new(SystemClock::new()),
            protocol: ProtocolConfig::default(),
            seed: None,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn LockStore> {
        &self.inner.store
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The protocol constants.
    pub fn protocol(&self) -> ProtocolConfig {
        self.inner.protocol
    }

    /// Acquires `key`: at once if it is free, else waits (polling with backoff)
    /// until the holder releases it or stays silent for a whole lease, then
    /// takes it over. Returns a guard holding the lease.
    pub async fn acquire(
        &self,
        key: &LockKey,
        opts: AcquireOptions,
    ) -> Result<LockGuard, LockError> {
        let inner = &self.inner;
        let clock = &inner.clock;
        let started = clock.now();
        let deadline = opts.wait.map(|w| started + w);
        loop {
            let mut waiter = Waiter::new(
                key.clone(),
                inner.rng.lease_id(),
                opts.lease,
                opts.holder.clone(),
                inner.protocol,
                opts.backoff,
            )?;
            let (record, t_send, how) = self
                .wait_for_grant(&mut waiter, started, deadline, &opts)
                .await?;
            let lease = Lease::granted(&record, t_send, inner.protocol);
            let now = clock.now();
            if lease.is_valid(now) {
                metrics::counter!(observe::LOCK_ACQUIRED, "how" => how).increment(1);
                metrics::histogram!(observe::LOCK_ACQUIRE_SECONDS)
                    .record(now.saturating_since(started).as_secs_f64());
                tracing::info!(
                    target: observe::AUDIT_TARGET,
                    event = "lock.acquired",
                    lock_key = %key,
                    lock_id = %record.owner,
                    token = record.token.0,
                    how,
                    locked_by = %record.holder.locked_by,
                    "lock acquired"
                );
                return Ok(LockGuard::start(inner.clone(), lease, record));
            }
            // The grant took longer than the lease (the process was paused):
            // it may already have been taken over. Give it back and start over.
            tracing::warn!(lock_key = %key, "grant arrived after its lease ran out; retrying");
            let mut stale = lease;
            if let Some(op) = stale.release(inner.rng.rvn(), clock.wall()) {
                let _ = inner.store.apply(&op).await;
            }
        }
    }

    async fn wait_for_grant(
        &self,
        waiter: &mut Waiter,
        started: MonoTime,
        deadline: Option<MonoTime>,
        opts: &AcquireOptions,
    ) -> Result<(LockRecord, MonoTime, &'static str), LockError> {
        let inner = &self.inner;
        let clock = &inner.clock;
        let mut last_unavailable: Option<StoreError> = None;
        loop {
            let op = waiter.poll_send(clock.now(), inner.rng.rvn(), clock.wall());
            let how = op.kind.name();
            let answer = inner.store.apply(&op).await;
            if let Err(e @ StoreError::Unavailable(_)) = &answer {
                last_unavailable = Some(e.clone());
            }
            let outcome = outcome_of(answer)?;
            let now = clock.now();
            match waiter.handle_outcome(now, outcome, inner.rng.jitter()) {
                WaiterStep::Granted { record, t_send } => return Ok((*record, t_send, how)),
                WaiterStep::SendNow => {}
                WaiterStep::Wait { until } => {
                    if let Some(obs) = waiter.observation() {
                        if let Some(cb) = &opts.on_wait {
                            cb(&WaitProgress {
                                holder: obs.record.clone(),
                                waited: now.saturating_since(started),
                                takeover_in: obs.takeover_at.saturating_since(now),
                            });
                        }
                    }
                    let wake = match deadline {
                        Some(d) if now >= d => {
                            let zero_wait = opts.wait == Some(Duration::ZERO);
                            return Err(self
                                .give_up(waiter, now, started, zero_wait, last_unavailable)
                                .await);
                        }
                        Some(d) => until.min(d),
                        None => until,
                    };
                    let sleep = clock.sleep(wake.saturating_since(now));
                    match &opts.cancel {
                        Some(token) => {
                            tokio::select! {
                                _ = sleep => {}
                                _ = token.cancelled() => {
                                    self.abandon(waiter).await;
                                    return Err(LockError::Cancelled);
                                }
                            }
                        }
                        None => sleep.await,
                    }
                }
            }
        }
    }

    /// Builds the error for a wait that ran out, after abandoning any write
    /// whose outcome is unknown.
    async fn give_up(
        &self,
        waiter: &Waiter,
        now: MonoTime,
        started: MonoTime,
        zero_wait: bool,
        last_unavailable: Option<StoreError>,
    ) -> LockError {
        let unresolved = waiter.unresolved().is_some();
        self.abandon(waiter).await;
        metrics::counter!(observe::LOCK_ACQUIRE_FAILED, "reason" => "timeout").increment(1);
        if unresolved {
            if let Some(e) = last_unavailable {
                return LockError::Store(e);
            }
        }
        let holder = waiter.observation().map(|o| Box::new(o.record.clone()));
        let waited = now.saturating_since(started);
        match holder {
            Some(holder) if zero_wait => LockError::Held { holder },
            holder => LockError::Timeout { waited, holder },
        }
    }

    /// If a grant we sent may have landed unheard, release it (best effort).
    async fn abandon(&self, waiter: &Waiter) {
        let Some(op) = waiter.unresolved() else {
            return;
        };
        if !op.is_grant() {
            return;
        }
        let release = LockOp {
            key: op.key.clone(),
            new_rvn: self.inner.rng.rvn(),
            at: self.inner.clock.wall(),
            kind: OpKind::Release {
                owner: waiter.owner(),
                current: op.new_rvn,
            },
        };
        let _ = self.inner.store.apply(&release).await;
    }

    /// The status of `key`, or `None` if it has never been locked.
    pub async fn status(&self, key: &LockKey) -> Result<Option<LockStatus>, LockError> {
        let record = self.inner.store.get(key).await?;
        Ok(record.map(|r| self.describe(r)))
    }

    /// Every lock record in the store, in key order.
    pub async fn locks(&self) -> Result<Vec<LockStatus>, LockError> {
        let records = self.inner.store.list().await?;
        let statuses: Vec<LockStatus> = records.into_iter().map(|r| self.describe(r)).collect();
        let stale = statuses.iter().filter(|s| s.stale).count();
        if stale > 0 {
            metrics::counter!(observe::LOCK_STALE_SEEN).increment(stale as u64);
        }
        Ok(statuses)
    }

    fn describe(&self, record: LockRecord) -> LockStatus {
        let wall = self.inner.clock.wall();
        let age = wall.saturating_since(record.heartbeat_at);
        let stale = record.is_held() && age > self.inner.protocol.takeover_wait(record.lease());
        LockStatus {
            held: record.is_held(),
            heartbeat_age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
            stale,
            record,
        }
    }

    /// Forces `key` released, but only if its record version is still `seen`
    /// (the version the operator was shown). `by` is recorded for audit.
    pub async fn force_unlock(
        &self,
        key: &LockKey,
        seen: RecordVersion,
        by: &str,
    ) -> Result<LockRecord, LockError> {
        let op = LockOp {
            key: key.clone(),
            new_rvn: self.inner.rng.rvn(),
            at: self.inner.clock.wall(),
            kind: OpKind::ForceUnlock {
                observed: seen,
                by: by.to_string(),
            },
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            match outcome_of(self.inner.store.apply(&op).await)?.resolve(&op) {
                Outcome::Applied(record) => {
                    metrics::counter!(observe::LOCK_FORCED).increment(1);
                    tracing::warn!(
                        target: observe::AUDIT_TARGET,
                        event = "lock.force_unlocked",
                        lock_key = %key,
                        lock_id = %record.owner,
                        token = record.token.0,
                        forced_by = by,
                        "lock force-unlocked"
                    );
                    return Ok(record);
                }
                Outcome::Conflict(None) => return Err(LockError::NotFound(key.to_string())),
                Outcome::Conflict(current) => {
                    return Err(LockError::Changed {
                        current: current.map(Box::new),
                    })
                }
                Outcome::Unknown if attempts < 5 => {
                    self.inner
                        .clock
                        .sleep(Duration::from_millis(100 * attempts))
                        .await;
                }
                Outcome::Unknown => {
                    return Err(LockError::Store(StoreError::Unavailable(
                        "no answer to the force-unlock after 5 attempts".into(),
                    )))
                }
            }
        }
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
}

/// The wall clock's idea of now, for callers that format ages.
pub fn wall_now(client: &LockClient) -> WallTime {
    client.inner().clock.wall()
}
