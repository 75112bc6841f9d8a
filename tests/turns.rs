//! Waiters of one process for one key take turns: they are granted in the
//! order they started waiting, a client that released cannot barge back in
//! ahead of them, only the first waiter asks the store, and a release in the
//! process hands the lock to the first waiter without a poll interval. On
//! tokio's paused clock over the memory store, counting store requests.

use async_trait::async_trait;
use statelock::client::{AcquireOptions, LockClient, LockGuard};
use statelock::clock::TokioClock;
use statelock::protocol::{LockOp, RecordVersion};
use statelock::store::memory::MemoryStore;
use statelock::store::{Listing, LockStore, StoreError};
use statelock::{FencingToken, HolderInfo, LockKey, LockRecord};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// A store that counts reads and writes, forwarding to a memory store.
#[derive(Debug, Default)]
struct Counting {
    inner: MemoryStore,
    reads: AtomicU64,
    writes: AtomicU64,
}

#[async_trait]
impl LockStore for Counting {
    async fn apply(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.apply(op).await
    }
    async fn get(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key).await
    }
    async fn list(&self) -> Result<Listing, StoreError> {
        self.inner.list().await
    }
    async fn token_floor(&self) -> Result<FencingToken, StoreError> {
        self.inner.token_floor().await
    }
    async fn purge(
        &self,
        key: &LockKey,
        observed: RecordVersion,
    ) -> Result<LockRecord, StoreError> {
        self.inner.purge(key, observed).await
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

fn key() -> LockKey {
    LockKey::new("stack:web:env:prod").unwrap()
}

/// A client of its own over the shared store (as separate clients of one
/// process would be).
fn client(store: &Arc<Counting>) -> LockClient {
    LockClient::builder(store.clone() as Arc<dyn LockStore>)
        .clock(TokioClock::new())
        .build()
}

fn opts(name: &str) -> AcquireOptions {
    AcquireOptions {
        lease: Duration::from_secs(20),
        wait: Some(Duration::from_secs(600)),
        holder: HolderInfo::named(name),
        ..AcquireOptions::default()
    }
}

/// Lets every other task run until it waits.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn waiters_are_granted_in_arrival_order_and_the_releaser_cannot_barge() {
    let store = Arc::new(Counting::default());
    let a = client(&store);
    let held = a.acquire(&key(), opts("a")).await.unwrap();
    assert_eq!(held.token(), FencingToken(1));
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for name in ["b", "c", "d"] {
        let (c, order) = (client(&store), order.clone());
        tasks.push(tokio::spawn(async move {
            let g = c.acquire(&key(), opts(name)).await.unwrap();
            order.lock().unwrap().push((name, g.token()));
            // Hold a little, as a deploy would.
            tokio::time::sleep(Duration::from_millis(500)).await;
            g.release().await.unwrap();
        }));
        settle().await;
        // Time passes between arrivals: the first waiter polls meanwhile.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    held.release().await.unwrap();
    // The releaser wants the key again at once: it queues behind b, c, d.
    let again = a.acquire(&key(), opts("a")).await.unwrap();
    order.lock().unwrap().push(("a", again.token()));
    again.release().await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(
        order,
        vec![
            ("b", FencingToken(2)),
            ("c", FencingToken(3)),
            ("d", FencingToken(4)),
            ("a", FencingToken(5)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn only_the_first_waiter_reads_and_a_release_hands_over_at_once() {
    let store = Arc::new(Counting::default());
    let holder = client(&store)
        .acquire(&key(), opts("holder"))
        .await
        .unwrap();
    let granted_at: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (c, granted_at) = (client(&store), granted_at.clone());
        tasks.push(tokio::spawn(async move {
            let g: LockGuard = c.acquire(&key(), opts(&format!("w{i}"))).await.unwrap();
            granted_at.lock().unwrap().push(Instant::now());
            g.release().await.unwrap();
        }));
        settle().await;
    }
    let reads_before = store.reads.load(Ordering::SeqCst);
    let held_for = Duration::from_secs(10);
    tokio::time::sleep(held_for).await;
    let reads = store.reads.load(Ordering::SeqCst) - reads_before;
    // One waiter reads every 30–60 ms (the default poll): at most 10 s / 30 ms
    // reads, where four waiters reading would make at least 4 × 10 s / 60 ms.
    let one_poller_max = held_for.as_millis() as u64 / 30 + 2;
    assert!(
        reads <= one_poller_max,
        "{reads} reads in {held_for:?} with four waiters: more than one of them polled"
    );
    assert!(reads > 0, "the first waiter polls the held record");
    let writes_before = store.writes.load(Ordering::SeqCst);
    let released_at = Instant::now();
    holder.release().await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let granted_at = granted_at.lock().unwrap().clone();
    assert_eq!(granted_at.len(), 4);
    // On the paused clock, time moves only when every task sleeps: a grant
    // that waited for a poll interval would show up here.
    assert_eq!(
        granted_at[0], released_at,
        "the first waiter was granted without waiting for its next poll"
    );
    assert!(
        granted_at.iter().all(|t| *t == released_at),
        "each release handed over to the next waiter at once"
    );
    // The holder's release, then per waiter one grant and one release: no
    // failed conditional writes.
    let writes = store.writes.load(Ordering::SeqCst) - writes_before;
    assert_eq!(writes, 1 + 4 * 2, "no conditional write failed");
}
