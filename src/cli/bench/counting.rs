//! A [`LockStore`] wrapper that counts what `statelock bench` sends to the
//! store: reads, conditional writes, conditional writes whose condition
//! failed, and takeovers that landed.
//!
//! It counts calls of the [`LockStore`] interface (one conditional write per
//! [`LockStore::apply`], by the trait's contract), not the adapter's wire
//! requests. It must not change any answer: every call is passed through
//! unchanged.

use crate::protocol::{FencingToken, LockKey, LockOp, LockRecord, OpKind, RecordVersion};
use crate::store::{Listing, LockStore, StoreError};
use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counters shared by every client's [`CountingStore`].
#[derive(Debug, Default)]
pub(crate) struct StoreCounters {
    reads: AtomicU64,
    writes: AtomicU64,
    failed_writes: AtomicU64,
    takeovers: AtomicU64,
}

/// A snapshot of [`StoreCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StoreCounts {
    /// `get`, `list` and `token_floor` calls.
    pub(crate) reads: u64,
    /// `apply` and `purge` calls (each one conditional write).
    pub(crate) writes: u64,
    /// Writes answered with a failed condition ([`StoreError::Conflict`]).
    pub(crate) failed_writes: u64,
    /// Takeovers that landed.
    pub(crate) takeovers: u64,
}

impl StoreCounters {
    /// The counts so far.
    pub(crate) fn snapshot(&self) -> StoreCounts {
        StoreCounts {
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            failed_writes: self.failed_writes.load(Ordering::Relaxed),
            takeovers: self.takeovers.load(Ordering::Relaxed),
        }
    }

    fn count_write<T>(&self, answer: &Result<T, StoreError>) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        if let Err(StoreError::Conflict { .. }) = answer {
            self.failed_writes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One client's store, counted into shared [`StoreCounters`].
#[derive(Debug)]
pub(crate) struct CountingStore {
    inner: Arc<dyn LockStore>,
    counters: Arc<StoreCounters>,
}

impl CountingStore {
    /// `inner`, counted into `counters`.
    pub(crate) fn new(inner: Arc<dyn LockStore>, counters: Arc<StoreCounters>) -> Self {
        CountingStore { inner, counters }
    }
}

#[async_trait]
impl LockStore for CountingStore {
    async fn apply(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
        let answer = self.inner.apply(op).await;
        self.counters.count_write(&answer);
        if answer.is_ok() && matches!(op.kind, OpKind::Takeover { .. }) {
            self.counters.takeovers.fetch_add(1, Ordering::Relaxed);
        }
        answer
    }

    async fn get(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.get(key).await
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.list().await
    }

    async fn token_floor(&self) -> Result<FencingToken, StoreError> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.token_floor().await
    }

    async fn purge(
        &self,
        key: &LockKey,
        observed: RecordVersion,
    ) -> Result<LockRecord, StoreError> {
        let answer = self.inner.purge(key, observed).await;
        self.counters.count_write(&answer);
        answer
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn shared_name(&self) -> Option<String> {
        self.inner.shared_name()
    }
    fn queues(&self) -> bool {
        self.inner.queues()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{AcquireOptions, LockClient};
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn counts_reads_writes_and_failed_conditions() {
        let shared: Arc<dyn LockStore> = Arc::new(MemoryStore::new());
        let counters = Arc::new(StoreCounters::default());
        let a = LockClient::builder(Arc::new(CountingStore::new(
            shared.clone(),
            counters.clone(),
        )))
        .build();
        let key = LockKey::new("counted").unwrap();
        let guard = a.acquire(&key, AcquireOptions::default()).await.unwrap();
        let after_grant = counters.snapshot();
        assert!(after_grant.writes >= 1, "{after_grant:?}");
        assert_eq!(after_grant.takeovers, 0);
        // A second client trying once finds it held: a failed condition or a
        // read, never a landed write.
        let b = LockClient::builder(Arc::new(CountingStore::new(
            shared.clone(),
            counters.clone(),
        )))
        .build();
        let once = AcquireOptions {
            wait: Some(std::time::Duration::ZERO),
            ..AcquireOptions::default()
        };
        assert!(b.acquire(&key, once).await.is_err());
        let after_refusal = counters.snapshot();
        assert!(
            after_refusal.failed_writes > after_grant.failed_writes
                || after_refusal.reads > after_grant.reads,
            "{after_grant:?} -> {after_refusal:?}"
        );
        guard.release().await.unwrap();
        let after_release = counters.snapshot();
        assert_eq!(after_release.writes, after_refusal.writes + 1);
    }
}
