//! [`LockGuard`]: one held lease. It runs the heartbeat task, fires
//! [`LockGuard::lost`] the moment the core says the lease is lost, and releases
//! the lock on [`LockGuard::release`] (or, best effort, on drop).

use super::cell::{AfterHeartbeat, GuardCell};
use super::{outcome_of, Inner, LockError};
use crate::observe;
use crate::protocol::{
    FencingToken, LeaseId, LeaseState, LockKey, LockOp, LockRecord, MonoTime, Outcome, ReleaseStep,
};
use crate::store::StoreError;
use crate::sync::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

struct Shared {
    inner: Arc<Inner>,
    cell: Mutex<GuardCell>,
    key: LockKey,
    token: FencingToken,
    owner: LeaseId,
    granted: LockRecord,
    /// Fires when the lease is lost.
    lost: CancellationToken,
    /// Stops the heartbeat task.
    stop: CancellationToken,
    /// Test hook: heartbeats are not sent while set (a paused process).
    frozen: std::sync::atomic::AtomicBool,
}

/// A held lock. Check [`LockGuard::is_valid`] (or watch [`LockGuard::lost`])
/// before acting as the holder, and pass [`LockGuard::token`] with every write
/// to fenced state.
pub struct LockGuard {
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.shared.key)
            .field("token", &self.shared.token)
            .field("owner", &self.shared.owner)
            .finish_non_exhaustive()
    }
}

impl LockGuard {
    pub(crate) fn start(
        inner: Arc<Inner>,
        lease: crate::protocol::Lease,
        granted: LockRecord,
    ) -> LockGuard {
        let shared = Arc::new(Shared {
            key: granted.key.clone(),
            token: granted.token,
            owner: granted.owner,
            granted,
            cell: Mutex::new(GuardCell::new(lease)),
            inner,
            lost: CancellationToken::new(),
            stop: CancellationToken::new(),
            frozen: std::sync::atomic::AtomicBool::new(false),
        });
        let task = tokio::spawn(heartbeat_loop(shared.clone()));
        LockGuard {
            shared,
            task: Some(task),
        }
    }

    /// The key held.
    pub fn key(&self) -> &LockKey {
        &self.shared.key
    }

    /// The fencing token of this lease: pass it with every state write. It
    /// is the grant's token, unless [`LockGuard::rebase_above`] raised it.
    pub fn token(&self) -> FencingToken {
        self.shared.cell.lock().lease.token()
    }

    /// This lease's id (the record's `owner`).
    pub fn lease_id(&self) -> LeaseId {
        self.shared.owner
    }

    /// The record as granted.
    pub fn granted_record(&self) -> &LockRecord {
        &self.shared.granted
    }

    /// Until when (this client's monotonic clock) the lease is valid unless renewed.
    pub fn deadline(&self) -> MonoTime {
        self.shared.cell.lock().lease.deadline()
    }

    /// True if this client may act as the holder now. Also notices an expired
    /// deadline at once (firing [`LockGuard::lost`]).
    pub fn is_valid(&self) -> bool {
        let now = self.shared.inner.clock.now();
        let mut cell = self.shared.cell.lock();
        if cell.finish_heartbeat(now, None) == AfterHeartbeat::SignalLost {
            signal_lost(&self.shared, &cell);
        }
        cell.lease.is_valid(now)
    }

    /// Returns the token if the lease is valid now, else why not.
    pub fn check(&self) -> Result<FencingToken, LockError> {
        if self.is_valid() {
            return Ok(self.token());
        }
        let cell = self.shared.cell.lock();
        match cell.lease.state() {
            LeaseState::Lost(reason) => Err(LockError::LeaseLost(reason.clone())),
            _ => Err(LockError::LeaseLost(crate::protocol::LostReason::Expired)),
        }
    }

    /// Raises this lease's fencing token above `fence`, if it is not already:
    /// one conditional write on the lock record, by its owner at its current
    /// version, which also renews the lease. For a holder that finds, when it
    /// seals the state, a fence at or above its token: the key's lock record
    /// was deleted (or restored from an old copy) behind the protocol's back,
    /// so tokens restarted below the state's fence. Returns the new token.
    pub async fn rebase_above(&self, fence: FencingToken) -> Result<FencingToken, LockError> {
        let inner = &self.shared.inner;
        let clock = &inner.clock;
        let Some(wanted) = fence.next() else {
            return Err(LockError::TokensExhausted {
                key: self.shared.key.to_string(),
                record: None,
            });
        };
        loop {
            let (op, deadline) = {
                let mut cell = self.shared.cell.lock();
                let now = clock.now();
                if cell.finish_heartbeat(now, None) == AfterHeartbeat::SignalLost {
                    signal_lost(&self.shared, &cell);
                }
                if !cell.lease.is_valid(now) {
                    drop(cell);
                    return Err(self
                        .check()
                        .err()
                        .unwrap_or(LockError::LeaseLost(crate::protocol::LostReason::Expired)));
                }
                if cell.lease.token() >= wanted {
                    return Ok(cell.lease.token());
                }
                let op = cell
                    .lease
                    .poll_rebase(now, inner.rng.rvn(), clock.wall(), wanted);
                (op, cell.lease.deadline())
            };
            let Some(op) = op else {
                // A heartbeat is in flight: ask again once it is answered.
                clock
                    .sleep(inner.protocol.heartbeat_retry(self.shared.granted.lease()))
                    .await;
                continue;
            };
            let answer = tokio::select! {
                r = inner.store.apply(&op) => Some(r),
                _ = clock.sleep(deadline.saturating_since(clock.now())) => None,
            };
            let outcome = match answer {
                Some(r) => outcome_of(r)?,
                None => Outcome::Unknown,
            };
            let token = {
                let mut cell = self.shared.cell.lock();
                if cell.finish_heartbeat(clock.now(), Some(outcome)) == AfterHeartbeat::SignalLost {
                    signal_lost(&self.shared, &cell);
                }
                cell.lease.token()
            };
            if token >= wanted {
                tracing::warn!(
                    target: observe::AUDIT_TARGET,
                    event = "lock.rebased",
                    key = %self.shared.key,
                    token = token.0,
                    lease_id = %self.shared.owner,
                    store = inner.store_kind,
                    fence = fence.0,
                    "fencing token raised above the state's fence"
                );
                return Ok(token);
            }
            // Not raised yet (the answer was lost or the store failed): the
            // same op is resent after the heartbeat's retry pause, never at
            // once, so a store that fails fast is not hammered.
            clock
                .sleep(inner.protocol.heartbeat_retry(self.shared.granted.lease()))
                .await;
        }
    }

    /// A token cancelled the moment the lease is lost (not on release).
    pub fn lost_token(&self) -> CancellationToken {
        self.shared.lost.clone()
    }

    /// Completes when the lease is lost.
    pub async fn lost(&self) {
        self.shared.lost.cancelled().await
    }

    /// Stops renewing, as if this process were paused: the lease will expire.
    #[cfg(feature = "testkit")]
    pub fn freeze_heartbeats(&self) {
        self.shared
            .frozen
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Releases the lock. The lease ends at once for this client; the release
    /// write is retried a few times if the store does not answer (the lock then
    /// frees itself after one lease).
    pub async fn release(mut self) -> Result<(), LockError> {
        let shared = self.shared.clone();
        let (op, _) = {
            let mut cell = shared.cell.lock();
            cell.claim_release(shared.inner.rng.rvn(), shared.inner.clock.wall())
        };
        // The release goes out at once: a heartbeat still in flight is
        // handled by the lease machine (a release that conflicts with this
        // lease's own unheard heartbeat is resent at its version), exactly as
        // for a release on drop. The stopped task is joined afterwards.
        shared.stop.cancel();
        let result = match op {
            Some(op) => send_release(&shared, op).await,
            None => Ok(()),
        };
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        result
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        let (op, first) = {
            let mut cell = self.shared.cell.lock();
            cell.claim_release(self.shared.inner.rng.rvn(), self.shared.inner.clock.wall())
        };
        if !first {
            return;
        }
        let Some(op) = op else { return };
        // Best effort: needs a running tokio runtime.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let shared = self.shared.clone();
            handle.spawn(async move {
                if let Err(e) = send_release(&shared, op).await {
                    tracing::warn!(lock_key = %shared.key, error = %e, "release on drop failed");
                }
            });
        }
    }
}

/// How long a release keeps trying when the store does not answer. Past it,
/// the lock frees itself one lease after its last heartbeat anyway.
pub const RELEASE_BUDGET: Duration = Duration::from_secs(5);

async fn send_release(shared: &Shared, mut op: LockOp) -> Result<(), LockError> {
    let inner = &shared.inner;
    let clock = &inner.clock;
    let until = clock.now() + RELEASE_BUDGET;
    let gave_up = || {
        LockError::Store(StoreError::Unavailable(format!(
            "no answer to the release within {RELEASE_BUDGET:?}; the lock frees itself one lease after its last heartbeat"
        )))
    };
    let mut attempts: u32 = 0;
    loop {
        attempts += 1;
        let left = until.saturating_since(clock.now());
        if left.is_zero() {
            return Err(gave_up());
        }
        let answer = tokio::select! {
            r = inner.store.apply(&op) => r,
            _ = clock.sleep(left) => return Err(gave_up()),
        };
        let outcome = outcome_of(answer)?;
        let step = {
            let mut cell = shared.cell.lock();
            cell.lease
                .handle_release(outcome, inner.rng.rvn(), clock.wall())
        };
        match step {
            ReleaseStep::Done(record) => {
                inner.remember(&record);
                let held = record
                    .heartbeat_at
                    .saturating_since(shared.granted.acquired_at);
                metrics::histogram!(
                    observe::HELD_DURATION,
                    observe::labels(inner.store_kind, &shared.key)
                )
                .record(held.as_secs_f64());
                tracing::info!(
                    target: observe::AUDIT_TARGET,
                    event = "lock.released",
                    key = %shared.key,
                    token = record.token.0,
                    lease_id = %shared.owner,
                    store = inner.store_kind,
                    duration_ms = u64::try_from(held.as_millis()).unwrap_or(u64::MAX),
                    "lock released"
                );
                return Ok(());
            }
            ReleaseStep::NotHeld(current) => {
                if let Some(current) = current {
                    inner.remember(&current);
                }
                return Ok(());
            }
            ReleaseStep::Retry(next) => {
                if next == op {
                    let pause = Duration::from_millis(50u64 << attempts.min(6));
                    let left = until.saturating_since(clock.now());
                    if pause >= left {
                        return Err(gave_up());
                    }
                    clock.sleep(pause).await;
                }
                op = next;
            }
        }
    }
}

fn signal_lost(shared: &Shared, cell: &GuardCell) {
    let reason = match cell.lease.state() {
        LeaseState::Lost(crate::protocol::LostReason::Expired) => "expired",
        _ => "superseded",
    };
    let store = shared.inner.store_kind;
    metrics::counter!(
        observe::LOST,
        observe::labels_with_reason(store, &shared.key, reason)
    )
    .increment(1);
    tracing::warn!(
        target: observe::AUDIT_TARGET,
        event = "lock.lost",
        key = %shared.key,
        token = cell.lease.token().0,
        lease_id = %shared.owner,
        store,
        reason,
        "lease lost: stop writing"
    );
    shared.lost.cancel();
}

async fn heartbeat_loop(shared: Arc<Shared>) {
    let inner = shared.inner.clone();
    let clock = &inner.clock;
    loop {
        let wake = {
            let cell = shared.cell.lock();
            if cell.release_claimed() {
                return;
            }
            match cell.lease.poll_timeout() {
                // A frozen (paused) holder sends nothing: it only notices the
                // deadline, like a process that wakes up too late.
                Some(_) if shared.frozen.load(std::sync::atomic::Ordering::SeqCst) => {
                    cell.lease.deadline()
                }
                Some(t) => t,
                None => return,
            }
        };
        let sleep = clock.sleep(wake.saturating_since(clock.now()));
        tokio::select! {
            _ = sleep => {}
            _ = shared.stop.cancelled() => return,
        }
        let now = clock.now();
        let frozen = shared.frozen.load(std::sync::atomic::Ordering::SeqCst);
        let (op, deadline) = {
            let mut cell = shared.cell.lock();
            if cell.finish_heartbeat(now, None) == AfterHeartbeat::SignalLost {
                signal_lost(&shared, &cell);
                return;
            }
            let op = if frozen {
                None
            } else {
                cell.begin_heartbeat(now, inner.rng.rvn(), clock.wall())
            };
            (op, cell.lease.deadline())
        };
        let Some(op) = op else { continue };
        // Race the answer against the deadline: the lost signal must fire on
        // time even if the store hangs.
        let until_deadline = clock.sleep(deadline.saturating_since(clock.now()));
        let answer = tokio::select! {
            r = inner.store.apply(&op) => Some(r),
            _ = until_deadline => None,
            _ = shared.stop.cancelled() => return,
        };
        let outcome = match answer {
            Some(r) => match outcome_of(r) {
                Ok(o) => Some(o),
                Err(e) => {
                    tracing::warn!(lock_key = %shared.key, error = %e, "heartbeat failed");
                    Some(Outcome::Unknown)
                }
            },
            None => None,
        };
        let now = clock.now();
        let label = match &outcome {
            Some(Outcome::Applied(_)) | Some(Outcome::Conflict(_)) => "answered",
            _ => "retry",
        };
        let mut cell = shared.cell.lock();
        let after = match outcome {
            Some(o) => cell.finish_heartbeat(now, Some(o)),
            None => cell.finish_heartbeat(now, None),
        };
        let store = inner.store_kind;
        match (&after, label) {
            (AfterHeartbeat::Continue, "answered") => {
                metrics::counter!(
                    observe::HEARTBEAT_SUCCESS,
                    observe::labels(store, &shared.key)
                )
                .increment(1);
            }
            (AfterHeartbeat::Continue, _) => {
                metrics::counter!(
                    observe::HEARTBEAT_FAILURE,
                    observe::labels_with_reason(store, &shared.key, "unanswered")
                )
                .increment(1);
            }
            (AfterHeartbeat::SignalLost, _) => {
                metrics::counter!(
                    observe::HEARTBEAT_FAILURE,
                    observe::labels_with_reason(store, &shared.key, "lost")
                )
                .increment(1);
            }
            // Released meanwhile, or the loss was already signalled.
            (AfterHeartbeat::Stop, _) => {}
        }
        match after {
            AfterHeartbeat::Continue => {}
            AfterHeartbeat::SignalLost => {
                signal_lost(&shared, &cell);
                return;
            }
            AfterHeartbeat::Stop => return,
        }
    }
}
