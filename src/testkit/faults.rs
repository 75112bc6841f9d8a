//! Fault injection for lock stores: [`LoseResponses`] wraps a store and, when
//! its [`FaultSwitch`] says so, either applies an op and then "loses" the
//! answer, or fails the request without applying it. Both surface as
//! [`StoreError::Unavailable`], exactly what a caller sees when a network
//! answer goes missing, so tests can check that retries recognise their own
//! writes (PROTOCOL.md: the record version) and never double-grant.
//!
//! This module must not change what the inner store stores: it only changes
//! what the caller is told. It is for tests only.

use crate::protocol::{FencingToken, LockKey, LockOp, LockRecord, RecordVersion};
use crate::store::{Listing, LockStore, StoreError};
use async_trait::async_trait;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The message of the [`StoreError::Unavailable`] returned for a lost response.
pub const RESPONSE_LOST: &str = "response lost";

/// The message of the [`StoreError::Unavailable`] returned for a failed request.
pub const REQUEST_FAILED: &str = "request failed";

/// What happens to the requests a [`LoseResponses`] store receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultMode {
    /// Requests pass through untouched.
    #[default]
    Off,
    /// The request is performed on the inner store, then the answer is
    /// dropped: the caller gets `Unavailable("response lost")`.
    LoseResponses,
    /// The request is dropped before it reaches the inner store: the caller
    /// gets `Unavailable("request failed")` and nothing is applied.
    FailRequests,
}

#[derive(Debug, Default)]
struct SwitchState {
    mode: FaultMode,
    /// Requests left to fault before the mode returns to `Off`; `None`: until
    /// changed.
    remaining: Option<u64>,
    /// Whether `get` and `list` are faulted too (by default only `apply`).
    reads_too: bool,
    /// Faults injected so far.
    injected: u64,
}

/// A shared, cloneable switch controlling one or more [`LoseResponses`]
/// stores. Clones control the same stores, so a test can keep one while the
/// store moves into a client.
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch {
    state: Arc<Mutex<SwitchState>>,
}

impl FaultSwitch {
    /// A switch with faults off.
    pub fn new() -> Self {
        FaultSwitch::default()
    }

    fn state(&self) -> MutexGuard<'_, SwitchState> {
        // A panicking test thread cannot leave the state inconsistent: every
        // update is a plain assignment.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Faults every request with `mode` until changed.
    pub fn set(&self, mode: FaultMode) {
        let mut state = self.state();
        state.mode = mode;
        state.remaining = None;
    }

    /// Faults the next `requests` requests with `mode`, then turns faults off.
    pub fn set_for(&self, mode: FaultMode, requests: u64) {
        let mut state = self.state();
        state.mode = if requests == 0 { FaultMode::Off } else { mode };
        state.remaining = Some(requests);
    }

    /// Applies the next `requests` requests but loses their answers.
    pub fn lose_next_responses(&self, requests: u64) {
        self.set_for(FaultMode::LoseResponses, requests);
    }

    /// Fails the next `requests` requests without applying them.
    pub fn fail_next_requests(&self, requests: u64) {
        self.set_for(FaultMode::FailRequests, requests);
    }

    /// Turns faults off.
    pub fn off(&self) {
        self.set(FaultMode::Off);
    }

    /// The current mode.
    pub fn mode(&self) -> FaultMode {
        self.state().mode
    }

    /// Whether reads (`get`, `list`) are faulted too; by default only `apply`
    /// is. A read whose response is "lost" simply fails.
    pub fn set_reads_too(&self, reads_too: bool) {
        self.state().reads_too = reads_too;
    }

    /// How many faults have been injected so far.
    pub fn injected(&self) -> u64 {
        self.state().injected
    }

    /// Decides the fate of one request.
    fn take(&self, is_read: bool) -> FaultMode {
        let mut state = self.state();
        if state.mode == FaultMode::Off || (is_read && !state.reads_too) {
            return FaultMode::Off;
        }
        let mode = state.mode;
        state.injected += 1;
        if let Some(remaining) = state.remaining.as_mut() {
            *remaining = remaining.saturating_sub(1);
            if *remaining == 0 {
                state.mode = FaultMode::Off;
                state.remaining = None;
            }
        }
        mode
    }
}

/// A store wrapper that loses responses or fails requests on command (see
/// [`FaultMode`]); with faults off it is transparent.
#[derive(Debug)]
pub struct LoseResponses<S> {
    inner: S,
    switch: FaultSwitch,
}

impl<S: LockStore> LoseResponses<S> {
    /// Wraps `inner` with faults off; control it with [`LoseResponses::switch`].
    pub fn new(inner: S) -> Self {
        LoseResponses::with_switch(inner, FaultSwitch::new())
    }

    /// Wraps `inner`, controlled by `switch` (which may control other stores).
    pub fn with_switch(inner: S, switch: FaultSwitch) -> Self {
        LoseResponses { inner, switch }
    }

    /// The switch controlling this store (clone it to keep it).
    pub fn switch(&self) -> &FaultSwitch {
        &self.switch
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwraps the store.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

#[async_trait]
impl<S: LockStore> LockStore for LoseResponses<S> {
    async fn apply(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
        match self.switch.take(false) {
            FaultMode::Off => self.inner.apply(op).await,
            FaultMode::LoseResponses => {
                // Whatever the inner store answered (written or conflict), the
                // caller never hears it.
                let _ = self.inner.apply(op).await;
                Err(StoreError::Unavailable(RESPONSE_LOST.to_string()))
            }
            FaultMode::FailRequests => Err(StoreError::Unavailable(REQUEST_FAILED.to_string())),
        }
    }

    async fn get(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError> {
        match self.switch.take(true) {
            FaultMode::Off => self.inner.get(key).await,
            FaultMode::LoseResponses => {
                let _ = self.inner.get(key).await;
                Err(StoreError::Unavailable(RESPONSE_LOST.to_string()))
            }
            FaultMode::FailRequests => Err(StoreError::Unavailable(REQUEST_FAILED.to_string())),
        }
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        match self.switch.take(true) {
            FaultMode::Off => self.inner.list().await,
            FaultMode::LoseResponses => {
                let _ = self.inner.list().await;
                Err(StoreError::Unavailable(RESPONSE_LOST.to_string()))
            }
            FaultMode::FailRequests => Err(StoreError::Unavailable(REQUEST_FAILED.to_string())),
        }
    }

    async fn token_floor(&self) -> Result<FencingToken, StoreError> {
        match self.switch.take(true) {
            FaultMode::Off => self.inner.token_floor().await,
            FaultMode::LoseResponses => {
                let _ = self.inner.token_floor().await;
                Err(StoreError::Unavailable(RESPONSE_LOST.to_string()))
            }
            FaultMode::FailRequests => Err(StoreError::Unavailable(REQUEST_FAILED.to_string())),
        }
    }

    async fn purge(
        &self,
        key: &LockKey,
        observed: RecordVersion,
    ) -> Result<LockRecord, StoreError> {
        match self.switch.take(false) {
            FaultMode::Off => self.inner.purge(key, observed).await,
            FaultMode::LoseResponses => {
                let _ = self.inner.purge(key, observed).await;
                Err(StoreError::Unavailable(RESPONSE_LOST.to_string()))
            }
            FaultMode::FailRequests => Err(StoreError::Unavailable(REQUEST_FAILED.to_string())),
        }
    }

    fn describe(&self) -> String {
        format!("{} (with injected faults)", self.inner.describe())
    }
    fn queues(&self) -> bool {
        self.inner.queues()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{GrantFrom, HolderInfo, LeaseId, OpKind, RecordVersion, WallTime};
    use crate::store::memory::MemoryStore;

    fn acquire(key: &LockKey) -> LockOp {
        LockOp {
            key: key.clone(),
            new_rvn: RecordVersion::random(),
            at: WallTime(0),
            kind: OpKind::Acquire {
                from: GrantFrom::Absent {
                    floor: FencingToken(0),
                },
                owner: LeaseId::random(),
                lease_ms: 1000,
                holder: HolderInfo::named("t"),
                at_least: FencingToken::NONE,
                dequeue: Default::default(),
            },
        }
    }

    #[tokio::test]
    async fn lost_responses_apply_and_failed_requests_do_not() {
        let store = LoseResponses::new(MemoryStore::new());
        let switch = store.switch().clone();
        let a = LockKey::new("a").unwrap();
        let b = LockKey::new("b").unwrap();

        switch.lose_next_responses(1);
        let op = acquire(&a);
        assert_eq!(
            store.apply(&op).await,
            Err(StoreError::Unavailable(RESPONSE_LOST.into()))
        );
        assert_eq!(switch.mode(), FaultMode::Off);
        assert_eq!(store.get(&a).await, Ok(op.apply(None).ok()));

        switch.fail_next_requests(2);
        for _ in 0..2 {
            assert_eq!(
                store.apply(&acquire(&b)).await,
                Err(StoreError::Unavailable(REQUEST_FAILED.into()))
            );
        }
        assert_eq!(store.get(&b).await, Ok(None));
        assert!(store.apply(&acquire(&b)).await.is_ok());
        assert_eq!(switch.injected(), 3);
    }

    #[tokio::test]
    async fn reads_are_faulted_only_on_request() {
        let store = LoseResponses::new(MemoryStore::new());
        let a = LockKey::new("a").unwrap();
        store.switch().set(FaultMode::FailRequests);
        assert_eq!(store.get(&a).await, Ok(None));
        assert_eq!(store.list().await, Ok(Listing::default()));
        store.switch().set_reads_too(true);
        assert!(matches!(
            store.get(&a).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            store.list().await,
            Err(StoreError::Unavailable(_))
        ));
        store.switch().off();
        assert_eq!(store.get(&a).await, Ok(None));
        assert_eq!(store.switch().injected(), 2);
        assert!(store.describe().starts_with("mem://"));
    }
}
