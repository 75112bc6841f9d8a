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
mod turns;

pub use error::LockError;
pub use guard::LockGuard;

use crate::clock::{Clock, SystemClock};
use crate::observe;
use crate::protocol::{
    Backoff, HolderInfo, Lease, LeaseId, LockKey, LockOp, LockRecord, MonoTime, OpKind, Outcome,
    ProtocolConfig, RecordVersion, Seen, Waiter, WaiterAction, WaiterStep, WallTime,
};
use crate::store::{DamagedRecord, LockStore, StoreError};
use rng::ClientRng;
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The first attempt of an acquire may take this long for its round trips
/// even when the wait is shorter (`--wait 0s` still gets one try).
pub const FIRST_ATTEMPT_BUDGET: Duration = Duration::from_secs(5);

/// After the wait ran out or was cancelled, a grant that may have landed
/// unheard is given back with requests bounded by this budget.
pub const ABANDON_BUDGET: Duration = Duration::from_secs(2);

/// Records kept as hints (the last version seen per key) before the cache
/// starts over.
const HINTS_MAX: usize = 1024;

/// Grants given up on (they may land later) remembered per client, so that a
/// later acquire of this client that finds one holding the key releases it.
const ABANDONED_MAX: usize = 64;

/// Options for [`LockClient::acquire`].
#[derive(Clone)]
pub struct AcquireOptions {
    /// The lease: the holder renews every third of it; a crashed holder's lock
    /// is taken over about one lease after its last heartbeat.
    pub lease: Duration,
    /// How long to wait for a held lock; `Some(ZERO)` tries once, `None` waits
    /// forever.
    pub wait: Option<Duration>,
    /// How often to read a held record, and the backoff after unanswered
    /// requests.
    pub backoff: Backoff,
    /// Cancels the wait.
    pub cancel: Option<CancellationToken>,
    /// Who is asking (shown to others).
    pub holder: HolderInfo,
    /// Called each time the waiter learns who holds the lock.
    pub on_wait: Option<WaitCallback>,
    /// Called each time a store request fails in a way that retrying may
    /// cure (the acquirer keeps trying until the wait runs out).
    pub on_store_error: Option<StoreErrorCallback>,
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
            on_store_error: None,
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

/// A callback receiving [`StoreTrouble`] while an acquirer retries.
pub type StoreErrorCallback = Arc<dyn Fn(&StoreTrouble) + Send + Sync>;

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

/// A store request failed in a way that retrying may cure.
#[derive(Debug, Clone)]
pub struct StoreTrouble {
    /// The error (always retryable: [`StoreError::Unavailable`]).
    pub error: StoreError,
    /// Requests that failed in a row.
    pub failures: u32,
    /// How long we have waited so far.
    pub waited: Duration,
}

/// How alive a lock's holder looks to this observer. Judged only by how long
/// this observer has seen the record's version unchanged on its own monotonic
/// clock — never by comparing wall clocks, which may disagree by hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// Nobody holds the lock.
    Released,
    /// The lock format has no leases (Terraform's locks): it never expires.
    NeverExpires,
    /// The version changed since this observer last looked: the holder (or a
    /// new one) wrote it recently.
    Alive,
    /// Seen unchanged for less than a takeover wait (or seen for the first
    /// time): not known yet.
    Unknown,
    /// Seen unchanged for at least a takeover wait: a waiter would take it
    /// over; the holder is probably gone.
    Stale,
}

impl Liveness {
    /// The rule every observer applies: `record` has been seen unchanged for
    /// `unchanged` (on the observer's monotonic clock), and `changed` says
    /// whether the observer saw another version of it before.
    pub fn judge(
        record: &LockRecord,
        unchanged: Duration,
        changed: bool,
        protocol: &ProtocolConfig,
    ) -> Liveness {
        if !record.is_held() {
            Liveness::Released
        } else if !record.expires() {
            Liveness::NeverExpires
        } else if changed {
            Liveness::Alive
        } else if unchanged >= protocol.takeover_wait(record.lease()) {
            Liveness::Stale
        } else {
            Liveness::Unknown
        }
    }
}

/// A lock as shown by [`LockClient::status`] and [`LockClient::locks`].
#[derive(Debug, Clone, Serialize)]
pub struct LockStatus {
    /// The record.
    pub record: LockRecord,
    /// Held (not released).
    pub held: bool,
    /// How alive the holder looks to this observer.
    pub liveness: Liveness,
    /// How long this observer has seen the current version unchanged, on its
    /// own monotonic clock (0 at the first look).
    pub unchanged_ms: u64,
    /// Held and unchanged for a whole takeover wait ([`Liveness::Stale`]).
    pub stale: bool,
    /// Milliseconds between the record's last write and now by the WALL
    /// clocks of the writer and this machine: informational only (negative
    /// when the writer's clock is ahead).
    pub wall_age_ms: i64,
}

/// What [`LockClient::locks`] found.
#[derive(Debug, Clone)]
pub struct LocksListing {
    /// The readable locks, in key order.
    pub locks: Vec<LockStatus>,
    /// The records that could not be read (never overwritten).
    pub damaged: Vec<DamagedRecord>,
}

/// What [`LockClient::purge`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PurgeReport {
    /// The records deleted (the token floor now covers their tokens).
    pub purged: Vec<LockRecord>,
    /// Released records younger than the limit, left alone.
    pub kept_recent: usize,
    /// Held records, left alone.
    pub kept_held: usize,
    /// Records that changed while purging, left alone.
    pub changed: usize,
}

/// The shortest age [`LockClient::purge`] accepts: a grant sent before a
/// record was purged cannot land after this long (AWS rejects requests signed
/// more than 15 minutes earlier; the local stores decide under a lock).
pub const PURGE_MIN_AGE: Duration = Duration::from_secs(3600);

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
        let shared = self.store.shared_name();
        let store_kind = observe::store_kind(&self.store.describe());
        LockClient {
            inner: Arc::new(Inner {
                store: self.store,
                clock: self.clock,
                protocol: self.protocol,
                rng: ClientRng::new(self.seed),
                shared,
                store_kind,
                hints: Mutex::new(HashMap::new()),
                looked: Mutex::new(HashMap::new()),
                abandoned: Mutex::new(Vec::new()),
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
    /// The store's [`LockStore::shared_name`]: waiters of the process take
    /// turns per key of it ([`turns`]).
    shared: Option<String>,
    /// The store's kind, for metric labels and audit events
    /// ([`observe::store_kind`]).
    pub(crate) store_kind: &'static str,
    /// The last record this client wrote or saw per key (a hint for the next
    /// acquire, saving its first read).
    hints: Mutex<HashMap<LockKey, LockRecord>>,
    /// Versions this client has looked at (status, locks): key → (version,
    /// first seen, waiter reading).
    looked: Mutex<HashMap<LockKey, (RecordVersion, MonoTime)>>,
    /// Grants this client gave up on while their outcome was unknown:
    /// `(key, lease id, version the grant would have written)`.
    abandoned: Mutex<Vec<(LockKey, LeaseId, RecordVersion)>>,
}

fn guarded<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    /// Remembers `record` as the latest version of its key this client saw.
    pub(crate) fn remember(&self, record: &LockRecord) {
        let mut hints = guarded(&self.hints);
        if hints.len() >= HINTS_MAX && !hints.contains_key(&record.key) {
            hints.clear();
        }
        hints.insert(record.key.clone(), record.clone());
        drop(hints);
        if let Some(name) = &self.shared {
            turns::announce(name, record);
        }
    }

    fn hint(&self, key: &LockKey) -> Option<LockRecord> {
        guarded(&self.hints).get(key).cloned()
    }

    fn note_abandoned(&self, op: &LockOp, owner: LeaseId) {
        let mut abandoned = guarded(&self.abandoned);
        if abandoned.len() >= ABANDONED_MAX {
            abandoned.remove(0);
        }
        abandoned.push((op.key.clone(), owner, op.new_rvn));
    }

    /// True if `record` is a grant this client gave up on (it landed late).
    fn is_abandoned(&self, record: &LockRecord) -> bool {
        record.is_held()
            && guarded(&self.abandoned)
                .iter()
                .any(|(k, o, v)| *k == record.key && *o == record.owner && *v == record.rvn)
    }

    fn forget_abandoned(&self, record: &LockRecord) {
        guarded(&self.abandoned).retain(|(k, o, _)| !(*k == record.key && *o == record.owner));
    }
}

/// Announcements of a key's records in this process ([`turns`]).
type News = tokio::sync::watch::Receiver<Option<LockRecord>>;

/// How a store call bounded by a deadline and a cancellation ended.
enum Bounded<T> {
    Done(T),
    TimedOut,
    Cancelled,
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

    /// Acquires `key`: at once if it is free, else waits (reading the record
    /// every poll interval) until the holder releases it or stays silent for
    /// a whole lease, then takes it over. Returns a guard holding the lease.
    ///
    /// Every store request made while waiting is bounded by the wait's
    /// deadline (the first attempt gets at least [`FIRST_ATTEMPT_BUDGET`]) and
    /// by `opts.cancel`. Errors that retrying cannot cure (a misconfigured
    /// store, a damaged record, a key whose tokens are used up) are returned
    /// at once; others are reported through `opts.on_store_error` and retried
    /// with backoff until the wait runs out.
    pub async fn acquire(
        &self,
        key: &LockKey,
        opts: AcquireOptions,
    ) -> Result<LockGuard, LockError> {
        let result = self.acquire_inner(key, opts).await;
        if let Err(e) = &result {
            let reason = match e {
                LockError::Held { .. } => "held",
                LockError::Timeout { .. } => "timeout",
                LockError::Cancelled => "cancelled",
                LockError::TokensExhausted { .. } => "tokens_exhausted",
                LockError::Protocol(_) => "invalid",
                _ => "store",
            };
            metrics::counter!(
                observe::ACQUISITION_FAILURE,
                observe::labels_with_reason(self.inner.store_kind, key, reason)
            )
            .increment(1);
        }
        result
    }

    async fn acquire_inner(
        &self,
        key: &LockKey,
        opts: AcquireOptions,
    ) -> Result<LockGuard, LockError> {
        let inner = &self.inner;
        let clock = &inner.clock;
        let started = clock.now_waiter();
        let deadline = opts.wait.map(|w| started + w);
        let mut wait = Wait {
            started,
            deadline,
            calls_until: deadline.map(|d| d.max(started + FIRST_ATTEMPT_BUDGET)),
            failures: 0,
            last_failure: None,
        };
        let mut stale_grants: u32 = 0;
        // Waiters of this process for this key take turns (see [`turns`]).
        // A try (`wait` zero) asks the store itself: it must not time out
        // behind a waiter that may be about to be granted.
        let turn = inner
            .shared
            .clone()
            .filter(|_| opts.wait != Some(Duration::ZERO))
            .map(|name| turns::Turn::join(name, key));
        let mut news = match &turn {
            Some(turn) => Some(self.await_turn(turn, &mut wait, &opts).await?),
            None => None,
        };
        loop {
            let mut waiter = Waiter::new(
                key.clone(),
                inner.rng.lease_id(),
                opts.lease,
                opts.holder.clone(),
                inner.protocol,
                opts.backoff,
            )?
            // A try gives up at once: registering would only cost writes.
            .with_queue(inner.store.queues() && opts.wait != Some(Duration::ZERO));
            let latest = news.as_mut().and_then(|n| n.borrow_and_update().clone());
            if let Some(hint) = latest.or_else(|| inner.hint(key)) {
                waiter = waiter.with_hint(Seen::Record(hint));
            }
            let Grant {
                record,
                t_send,
                how,
                previous,
            } = self
                .wait_for_grant(&mut waiter, &mut wait, &opts, news.as_mut())
                .await?;
            inner.remember(&record);
            let lease = Lease::granted(&record, t_send, inner.protocol);
            let now = clock.now();
            if lease.is_valid(now) {
                let store = inner.store_kind;
                let labels = observe::labels(store, key);
                metrics::counter!(observe::ACQUISITION_SUCCESS, labels.clone()).increment(1);
                metrics::histogram!(observe::ACQUISITION_DURATION, labels.clone())
                    .record(clock.now_waiter().saturating_since(started).as_secs_f64());
                tracing::info!(
                    target: observe::AUDIT_TARGET,
                    event = "lock.acquired",
                    key = %key,
                    token = record.token.0,
                    lease_id = %record.owner,
                    holder = %record.holder.locked_by,
                    store,
                    how,
                    "lock acquired"
                );
                if how == "takeover" {
                    metrics::counter!(observe::TAKEOVER, labels).increment(1);
                    tracing::warn!(
                        target: observe::AUDIT_TARGET,
                        event = "lock.takeover",
                        key = %key,
                        token = record.token.0,
                        lease_id = %record.owner,
                        holder = %record.holder.locked_by,
                        store,
                        previous_holder = previous.as_ref().map(|p| p.holder.locked_by.as_str()),
                        previous_token = previous.as_ref().map(|p| p.token.0),
                        previous_lease_id = previous.as_ref().map(|p| tracing::field::display(p.owner)),
                        "abandoned lease taken over"
                    );
                }
                return Ok(LockGuard::start(inner.clone(), lease, record));
            }
            // The grant took longer than its lease (the process was paused, or
            // the answer crawled back): it may already have been taken over.
            // Give it back, back off and start over, within the wait.
            tracing::warn!(lock_key = %key, "grant arrived after its lease ran out; retrying");
            stale_grants = stale_grants.saturating_add(1);
            let mut stale = lease;
            if let Some(op) = stale.release(inner.rng.rvn(), clock.wall()) {
                let until = clock.now_waiter() + ABANDON_BUDGET;
                if let Bounded::Done(Ok(released)) = self
                    .bounded(inner.store.apply(&op), Some(until), opts.cancel.as_ref())
                    .await
                {
                    inner.remember(&released);
                }
            }
            let pause = opts.backoff.delay(stale_grants, inner.rng.jitter());
            let until = clock.now_waiter() + pause;
            self.sleep_until(until, &mut wait, None, &opts, None)
                .await?;
        }
    }

    /// Runs `fut` unless the deadline passes or the wait is cancelled first.
    async fn bounded<T>(
        &self,
        fut: impl Future<Output = T>,
        until: Option<MonoTime>,
        cancel: Option<&CancellationToken>,
    ) -> Bounded<T> {
        let clock = &self.inner.clock;
        let timeout = async {
            match until {
                Some(t) => {
                    // The clock's sleep may wake before the waiter reading
                    // reaches `t`: loop until it has.
                    loop {
                        let now = clock.now_waiter();
                        if now >= t {
                            return;
                        }
                        clock.sleep(t.saturating_since(now)).await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        let cancelled = async {
            match cancel {
                Some(token) => token.cancelled().await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            biased;
            _ = cancelled => Bounded::Cancelled,
            r = fut => Bounded::Done(r),
            _ = timeout => Bounded::TimedOut,
        }
    }

    /// Sleeps until `until` (waiter reading), or fails: the wait ran out (after
    /// giving up any unresolved grant of `waiter`) or was cancelled.
    ///
    /// With `news` (the key's announcements in this process, see [`turns`]),
    /// a release announced meanwhile ends the sleep early: the released
    /// record is returned, to be acted on at once.
    async fn sleep_until(
        &self,
        until: MonoTime,
        wait: &mut Wait,
        waiter: Option<&Waiter>,
        opts: &AcquireOptions,
        news: Option<&mut News>,
    ) -> Result<Option<LockRecord>, LockError> {
        let now = self.inner.clock.now_waiter();
        let wake = match wait.deadline {
            Some(d) if now >= d => return Err(self.give_up(waiter, wait, opts).await),
            Some(d) => until.min(d),
            None => until,
        };
        let released = async {
            match news {
                Some(news) => loop {
                    if news.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    let latest = news.borrow_and_update().clone();
                    if let Some(record) = latest.filter(|r| r.released) {
                        return record;
                    }
                },
                None => std::future::pending().await,
            }
        };
        match self
            .bounded(released, Some(wake), opts.cancel.as_ref())
            .await
        {
            Bounded::Cancelled => {
                if let Some(w) = waiter {
                    self.abandon(w).await;
                }
                Err(LockError::Cancelled)
            }
            Bounded::Done(record) => Ok(Some(record)),
            Bounded::TimedOut => Ok(None),
        }
    }

    /// Waits for `turn` within the wait's deadline and cancellation; returns
    /// the key's announcements, to follow while this client waits.
    async fn await_turn(
        &self,
        turn: &turns::Turn,
        wait: &mut Wait,
        opts: &AcquireOptions,
    ) -> Result<News, LockError> {
        match self
            .bounded(turn.arrived(), wait.deadline, opts.cancel.as_ref())
            .await
        {
            Bounded::Done(()) => Ok(turn.latest().1),
            Bounded::Cancelled => Err(LockError::Cancelled),
            Bounded::TimedOut => {
                let holder = turn.latest().0.filter(LockRecord::is_held).map(Box::new);
                let waited = self.inner.clock.now_waiter().saturating_since(wait.started);
                Err(match holder {
                    Some(holder) if opts.wait == Some(Duration::ZERO) => LockError::Held { holder },
                    holder => LockError::Timeout { waited, holder },
                })
            }
        }
    }

    async fn wait_for_grant(
        &self,
        waiter: &mut Waiter,
        wait: &mut Wait,
        opts: &AcquireOptions,
        mut news: Option<&mut News>,
    ) -> Result<Grant, LockError> {
        let inner = &self.inner;
        let clock = &inner.clock;
        let cancel = opts.cancel.as_ref();
        loop {
            let action = waiter.poll(
                clock.now(),
                clock.now_waiter(),
                inner.rng.rvn(),
                clock.wall(),
                inner.rng.jitter(),
            );
            let step = match action {
                WaiterAction::Exhausted(record) => {
                    return Err(LockError::TokensExhausted {
                        key: waiter.key().to_string(),
                        record,
                    })
                }
                WaiterAction::Wait { until } => {
                    if let (Some(obs), Some(cb)) = (waiter.observation(), &opts.on_wait) {
                        let now = clock.now_waiter();
                        cb(&WaitProgress {
                            holder: obs.record.clone(),
                            waited: now.saturating_since(wait.started),
                            takeover_in: obs.takeover_at.saturating_since(now),
                        });
                    }
                    WaiterStep::Wait { until }
                }
                WaiterAction::Read => {
                    let read = self.bounded(self.read(waiter.key()), wait.calls_until, cancel);
                    match read.await {
                        Bounded::Done(Ok(seen)) => {
                            wait.succeeded();
                            if let Seen::Record(r) = &seen {
                                if inner.is_abandoned(r) {
                                    self.reclaim(r, wait.calls_until, cancel).await;
                                    continue;
                                }
                            }
                            waiter.handle_read(clock.now_waiter(), seen);
                            WaiterStep::Continue
                        }
                        Bounded::Done(Err(e)) if e.is_retryable() => {
                            self.report(wait, e, opts);
                            waiter.handle_read_error(clock.now_waiter(), inner.rng.jitter())
                        }
                        Bounded::Done(Err(e)) => return Err(e.into()),
                        Bounded::TimedOut => {
                            return Err(self.give_up(Some(waiter), wait, opts).await)
                        }
                        Bounded::Cancelled => {
                            self.abandon(waiter).await;
                            return Err(LockError::Cancelled);
                        }
                    }
                }
                WaiterAction::Send(op) => {
                    // A skip takes a released record whose head did not
                    // take its turn: no lease is taken over.
                    let how = match &op.kind {
                        OpKind::Takeover { dequeue, .. } if dequeue.skip.is_some() => "skip",
                        kind => kind.name(),
                    };
                    // The record a takeover replaces, for the audit.
                    let previous = match &op.kind {
                        OpKind::Takeover { observed, .. } => waiter
                            .observation()
                            .filter(|o| o.record.rvn == *observed)
                            .map(|o| o.record.clone()),
                        _ => None,
                    };
                    // A registration's answer is awaited a little past the
                    // deadline: leaving while it is still on its way could
                    // let it land after the leave, an entry nobody acts for.
                    let until = match wait.calls_until {
                        Some(u) if op.kind.is_queue_write() => Some(u + ABANDON_BUDGET),
                        u => u,
                    };
                    let answer = self.bounded(inner.store.apply(&op), until, cancel);
                    let answer = match answer.await {
                        Bounded::Done(answer) => answer,
                        Bounded::TimedOut => {
                            return Err(self.give_up(Some(waiter), wait, opts).await)
                        }
                        Bounded::Cancelled => {
                            self.abandon(waiter).await;
                            return Err(LockError::Cancelled);
                        }
                    };
                    match &answer {
                        Err(e @ StoreError::Unavailable(_)) => self.report(wait, e.clone(), opts),
                        _ => wait.succeeded(),
                    }
                    let outcome = outcome_of(answer)?;
                    if let Outcome::Conflict(Some(current)) = &outcome {
                        if inner.is_abandoned(current) {
                            self.reclaim(current, wait.calls_until, cancel).await;
                        }
                    }
                    match waiter.handle_outcome(clock.now_waiter(), outcome, inner.rng.jitter()) {
                        WaiterStep::Granted { record, t_send } => {
                            return Ok(Grant {
                                record: *record,
                                t_send,
                                how,
                                previous,
                            })
                        }
                        step => step,
                    }
                }
            };
            match step {
                WaiterStep::Continue => {}
                WaiterStep::Wait { until } => {
                    let released = self
                        .sleep_until(until, wait, Some(waiter), opts, news.as_deref_mut())
                        .await?;
                    // A release in this process: grant from it at once (a
                    // stale one costs one failed condition, which returns
                    // the current record).
                    if let Some(record) = released.filter(|_| waiter.unresolved().is_none()) {
                        waiter.handle_read(clock.now_waiter(), Seen::Record(record));
                    }
                }
                WaiterStep::Granted { record, t_send } => {
                    return Ok(Grant {
                        record: *record,
                        t_send,
                        how: "acquire",
                        previous: None,
                    });
                }
            }
        }
    }

    /// Reads the record of `key`, and the token floor when there is none.
    async fn read(&self, key: &LockKey) -> Result<Seen, StoreError> {
        let store = &self.inner.store;
        match store.get(key).await? {
            Some(record) => Ok(Seen::Record(record)),
            None => Ok(Seen::Absent {
                floor: store.token_floor().await?,
            }),
        }
    }

    fn report(&self, wait: &mut Wait, error: StoreError, opts: &AcquireOptions) {
        wait.failures = wait.failures.saturating_add(1);
        tracing::debug!(%error, failures = wait.failures, "store request failed; retrying");
        if let Some(cb) = &opts.on_store_error {
            cb(&StoreTrouble {
                error: error.clone(),
                failures: wait.failures,
                waited: self.inner.clock.now_waiter().saturating_since(wait.started),
            });
        }
        wait.last_failure = Some(error);
    }

    /// Releases a grant of this client that it had given up on and that
    /// landed after all (best effort, bounded).
    async fn reclaim(
        &self,
        record: &LockRecord,
        until: Option<MonoTime>,
        cancel: Option<&CancellationToken>,
    ) {
        let inner = &self.inner;
        let op = LockOp {
            key: record.key.clone(),
            new_rvn: inner.rng.rvn(),
            at: inner.clock.wall(),
            kind: OpKind::Release {
                owner: record.owner,
                current: record.rvn,
            },
        };
        tracing::info!(lock_key = %record.key, lock_id = %record.owner, "releasing a grant this client had given up on");
        let until = until.map(|u| u.max(inner.clock.now_waiter() + ABANDON_BUDGET));
        match self.bounded(inner.store.apply(&op), until, cancel).await {
            Bounded::Done(Ok(released)) => {
                inner.forget_abandoned(record);
                inner.remember(&released);
            }
            Bounded::Done(Err(StoreError::Conflict { .. })) => inner.forget_abandoned(record),
            _ => {}
        }
    }

    /// Builds the error for a wait that ran out, after abandoning any grant
    /// whose outcome is unknown.
    async fn give_up(
        &self,
        waiter: Option<&Waiter>,
        wait: &Wait,
        opts: &AcquireOptions,
    ) -> LockError {
        if let Some(w) = waiter {
            self.abandon(w).await;
        }
        if let Some(e) = &wait.last_failure {
            return LockError::Store(e.clone());
        }
        let holder = waiter
            .and_then(Waiter::observation)
            .map(|o| Box::new(o.record.clone()));
        let waited = self.inner.clock.now_waiter().saturating_since(wait.started);
        match holder {
            Some(holder) if opts.wait == Some(Duration::ZERO) => LockError::Held { holder },
            holder => LockError::Timeout { waited, holder },
        }
    }

    /// Unregisters a waiter that gives up from the key's hand-off queue
    /// (best effort, bounded by [`ABANDON_BUDGET`]): an entry left behind
    /// would hold up the key for a lease when its turn came.
    async fn leave_queue(&self, waiter: &Waiter) {
        let inner = &self.inner;
        let enqueue_unresolved = waiter
            .unresolved()
            .is_some_and(|op| op.kind.is_queue_write());
        let mut leave = waiter.leave_op(inner.rng.rvn(), inner.clock.wall());
        if leave.is_none() && !enqueue_unresolved {
            return;
        }
        let until = inner.clock.now_waiter() + ABANDON_BUDGET;
        // Every refusal carries the current queue, so each attempt names the
        // place the waiter has now; places move while others leave too.
        for _ in 0..=LockRecord::MAX_QUEUE {
            let op = match leave.take() {
                Some(op) => op,
                // Where it is now (an enqueue whose answer was lost, or a
                // place that moved).
                None => match self
                    .bounded(inner.store.get(waiter.key()), Some(until), None)
                    .await
                {
                    Bounded::Done(Ok(Some(record))) => {
                        match waiter.leave_op_from(&record, inner.rng.rvn(), inner.clock.wall()) {
                            Some(op) => op,
                            None => return,
                        }
                    }
                    _ => return,
                },
            };
            match self
                .bounded(inner.store.apply(&op), Some(until), None)
                .await
            {
                Bounded::Done(Ok(_)) => return,
                Bounded::Done(Err(StoreError::Conflict {
                    current: Some(current),
                })) => {
                    if op.is_own_write(&current) {
                        return;
                    }
                    leave = waiter.leave_op_from(&current, inner.rng.rvn(), inner.clock.wall());
                    if leave.is_none() {
                        return;
                    }
                }
                Bounded::Done(Err(StoreError::Unavailable(_))) => {}
                _ => return,
            }
        }
    }

    /// If a grant we sent may have landed unheard, release it (best effort,
    /// bounded by [`ABANDON_BUDGET`]) and remember it, in case it lands later;
    /// and leave the hand-off queue.
    async fn abandon(&self, waiter: &Waiter) {
        self.leave_queue(waiter).await;
        let Some(op) = waiter.unresolved() else {
            return;
        };
        if !op.is_grant() {
            return;
        }
        let inner = &self.inner;
        inner.note_abandoned(op, waiter.owner());
        let release = LockOp {
            key: op.key.clone(),
            new_rvn: inner.rng.rvn(),
            at: inner.clock.wall(),
            kind: OpKind::Release {
                owner: waiter.owner(),
                current: op.new_rvn,
            },
        };
        let until = inner.clock.now_waiter() + ABANDON_BUDGET;
        match self
            .bounded(inner.store.apply(&release), Some(until), None)
            .await
        {
            Bounded::Done(Ok(released)) => {
                inner.remember(&released);
                guarded(&inner.abandoned).retain(|(_, o, _)| *o != waiter.owner());
            }
            Bounded::Done(Err(StoreError::Conflict { current }))
                if !op.condition_holds(current.as_deref())
                    && current.as_ref().is_none_or(|c| c.owner != waiter.owner()) =>
            {
                // The record moved on from the version our grant named: the
                // grant can never land now. (If it still could — it may be
                // in flight — it stays remembered, and a later acquire of
                // this client that finds it holding the key releases it.)
                guarded(&inner.abandoned).retain(|(_, o, _)| *o != waiter.owner());
            }
            _ => {}
        }
    }

    /// The status of `key`, or `None` if it has never been locked. Liveness
    /// is judged by how long this client has seen the version unchanged (see
    /// [`Liveness`]): call it again later, or use [`LockClient::observe`].
    pub async fn status(&self, key: &LockKey) -> Result<Option<LockStatus>, LockError> {
        let record = self.inner.store.get(key).await?;
        Ok(record.map(|r| self.describe(r)))
    }

    /// Like [`LockClient::status`], but keeps reading the record (every poll
    /// interval of [`Backoff::default`]) for up to `patience` while its holder
    /// is not known to be alive or stale: long enough to see a live holder
    /// renew when `patience` exceeds a third of its lease.
    pub async fn observe(
        &self,
        key: &LockKey,
        patience: Duration,
    ) -> Result<Option<LockStatus>, LockError> {
        let clock = &self.inner.clock;
        let until = clock.now_waiter() + patience;
        loop {
            let status = self.status(key).await?;
            let settled = match &status {
                None => true,
                Some(s) => s.liveness != Liveness::Unknown,
            };
            let now = clock.now_waiter();
            if settled || now >= until {
                return Ok(status);
            }
            let step = Backoff::default().poll_delay(self.inner.rng.jitter());
            clock.sleep(step.min(until.saturating_since(now))).await;
        }
    }

    /// Tells this client that `key`'s version `rvn` has been seen unchanged
    /// for `unchanged_for` already (e.g. by an earlier process on this
    /// machine, measured on a machine-wide monotonic clock).
    pub fn note_seen(&self, key: &LockKey, rvn: RecordVersion, unchanged_for: Duration) {
        let now = self.inner.clock.now_waiter();
        let since = MonoTime::from_duration(now.as_duration().saturating_sub(unchanged_for));
        let mut looked = guarded(&self.inner.looked);
        match looked.get(key) {
            Some((v, first)) if *v == rvn && *first <= since => {}
            _ => {
                looked.insert(key.clone(), (rvn, since));
            }
        }
    }

    /// Every lock record in the store: the readable ones in key order with
    /// their status, and the damaged ones apart.
    pub async fn locks(&self) -> Result<LocksListing, LockError> {
        let listing = self.inner.store.list().await?;
        let locks: Vec<LockStatus> = listing
            .records
            .into_iter()
            .map(|r| self.describe(r))
            .collect();
        Ok(LocksListing {
            locks,
            damaged: listing.damaged,
        })
    }

    fn describe(&self, record: LockRecord) -> LockStatus {
        let now = self.inner.clock.now_waiter();
        let (unchanged, changed) = {
            let mut looked = guarded(&self.inner.looked);
            match looked.get(&record.key) {
                Some((v, since)) if *v == record.rvn => (now.saturating_since(*since), false),
                previous => {
                    let changed = previous.is_some();
                    looked.insert(record.key.clone(), (record.rvn, now));
                    (Duration::ZERO, changed)
                }
            }
        };
        let liveness = Liveness::judge(&record, unchanged, changed, &self.inner.protocol);
        if liveness == Liveness::Stale {
            metrics::counter!(
                observe::STALE_DETECTED,
                observe::labels(self.inner.store_kind, &record.key)
            )
            .increment(1);
        }
        let wall_age_ms = self
            .inner
            .clock
            .wall()
            .as_millis()
            .saturating_sub(record.heartbeat_at.as_millis());
        LockStatus {
            held: record.is_held(),
            liveness,
            unchanged_ms: u64::try_from(unchanged.as_millis()).unwrap_or(u64::MAX),
            stale: liveness == Liveness::Stale,
            wall_age_ms,
            record,
        }
    }

    /// Deletes every record released longer than `older_than` ago (by the
    /// release's wall-clock time; at least [`PURGE_MIN_AGE`]), each only
    /// together with the store's token floor, so the next grant of a purged
    /// key continues above every token ever issued. With `dry_run`, only
    /// reports what it would delete.
    pub async fn purge(
        &self,
        older_than: Duration,
        dry_run: bool,
    ) -> Result<PurgeReport, LockError> {
        if older_than < PURGE_MIN_AGE {
            return Err(LockError::PurgeTooSoon {
                older_than,
                min: PURGE_MIN_AGE,
            });
        }
        let listing = self.inner.store.list().await?;
        let now = self.inner.clock.wall();
        let mut report = PurgeReport::default();
        for record in listing.records {
            if record.is_held() {
                report.kept_held += 1;
                continue;
            }
            if now.saturating_since(record.heartbeat_at) < older_than {
                report.kept_recent += 1;
                continue;
            }
            if dry_run {
                report.purged.push(record);
                continue;
            }
            match self.inner.store.purge(&record.key, record.rvn).await {
                Ok(purged) => {
                    tracing::info!(
                        target: observe::AUDIT_TARGET,
                        event = "lock.purged",
                        key = %purged.key,
                        token = purged.token.0,
                        store = self.inner.store_kind,
                        "released lock record purged; token floor raised"
                    );
                    report.purged.push(purged);
                }
                Err(StoreError::Conflict { .. }) => report.changed += 1,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(report)
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
                    tracing::warn!(
                        target: observe::AUDIT_TARGET,
                        event = "lock.forced",
                        key = %key,
                        token = record.token.0,
                        lease_id = %record.owner,
                        store = self.inner.store_kind,
                        by,
                        holder = %record.holder.locked_by,
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

/// What [`LockClient::wait_for_grant`] got: the record granted, when the
/// grant was sent, how (`acquire` or `takeover`) and the record a takeover
/// replaced.
struct Grant {
    record: LockRecord,
    t_send: MonoTime,
    how: &'static str,
    previous: Option<LockRecord>,
}

/// An acquire's wait: its deadline and how the store has been answering.
struct Wait {
    started: MonoTime,
    deadline: Option<MonoTime>,
    /// Store requests made while waiting must be answered by then.
    calls_until: Option<MonoTime>,
    failures: u32,
    last_failure: Option<StoreError>,
}

impl Wait {
    fn succeeded(&mut self) {
        self.failures = 0;
        self.last_failure = None;
    }
}

/// The wall clock's idea of now, for callers that format ages.
pub fn wall_now(client: &LockClient) -> WallTime {
    client.inner().clock.wall()
}
