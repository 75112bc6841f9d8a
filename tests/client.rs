//! Client behaviour over the memory store, on tokio's paused (virtual) clock:
//! waiting, takeover timing, the lost signal, force-unlock, timeouts and
//! cancellation. No real sleeps: virtual time jumps to the next timer.

use statelock::client::{AcquireOptions, LockClient, LockError};
use statelock::clock::SkewedClock;
use statelock::protocol::{Backoff, ProtocolConfig, WallTime};
use statelock::store::memory::MemoryStore;
use statelock::store::LockStore;
use statelock::{FencingToken, HolderInfo, LockKey};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const LEASE: Duration = Duration::from_secs(3);

fn key() -> LockKey {
    LockKey::new("stack:user-platform:env:production").unwrap()
}

fn client(store: &Arc<MemoryStore>, seed: u64, rate: f64) -> LockClient {
    LockClient::builder(store.clone() as Arc<dyn LockStore>)
        // Monotonic origins differ per client; wall clocks agree.
        .clock(SkewedClock::new(
            Duration::from_secs(seed * 1000),
            rate,
            WallTime(1_700_000_000_000 - seed as i64 * 1_000_000),
        ))
        .seed(seed)
        .build()
}

fn opts(name: &str, wait: Option<Duration>) -> AcquireOptions {
    AcquireOptions {
        lease: LEASE,
        wait,
        backoff: Backoff {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(500),
            poll: Duration::from_millis(40),
        },
        holder: HolderInfo::named(name),
        ..AcquireOptions::default()
    }
}

#[tokio::test(start_paused = true)]
async fn acquire_release_and_tokens_increase() {
    let store = Arc::new(MemoryStore::new());
    let a = client(&store, 1, 1.0);
    let g1 = a
        .acquire(&key(), opts("a", Some(Duration::ZERO)))
        .await
        .unwrap();
    assert_eq!(g1.token(), FencingToken(1));
    assert!(g1.is_valid());
    g1.release().await.unwrap();
    let rec = store.get_now(&key()).unwrap();
    assert!(rec.released);
    let g2 = a
        .acquire(&key(), opts("a", Some(Duration::ZERO)))
        .await
        .unwrap();
    assert_eq!(g2.token(), FencingToken(2));
    g2.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_a_live_holder_and_waiter_times_out() {
    let store = Arc::new(MemoryStore::new());
    let holder = client(&store, 1, 1.0)
        .acquire(&key(), opts("a", None))
        .await
        .unwrap();
    let start = Instant::now();
    let err = client(&store, 2, 1.0)
        .acquire(&key(), opts("b", Some(Duration::from_secs(30))))
        .await
        .unwrap_err();
    match err {
        LockError::Timeout {
            waited,
            holder: Some(h),
        } => {
            assert!(waited >= Duration::from_secs(30), "{waited:?}");
            assert_eq!(h.holder.locked_by, "a");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_secs(30));
    // Ten leases later the holder is still valid: heartbeats worked.
    assert!(holder.is_valid());
    assert!(store.get_now(&key()).unwrap().heartbeat_at > holder.granted_record().heartbeat_at);
    holder.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn zero_wait_on_held_lock_names_the_holder() {
    let store = Arc::new(MemoryStore::new());
    let _holder = client(&store, 1, 1.0)
        .acquire(&key(), opts("alice", None))
        .await
        .unwrap();
    let err = client(&store, 2, 1.0)
        .acquire(&key(), opts("bob", Some(Duration::ZERO)))
        .await
        .unwrap_err();
    match err {
        LockError::Held { holder } => assert_eq!(holder.holder.locked_by, "alice"),
        other => panic!("expected Held, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn waiter_gets_released_lock_promptly() {
    let store = Arc::new(MemoryStore::new());
    let holder = client(&store, 1, 1.0)
        .acquire(&key(), opts("a", None))
        .await
        .unwrap();
    let waiter = client(&store, 2, 1.0);
    let waiting = tokio::spawn(async move {
        waiter
            .acquire(&key(), opts("b", Some(Duration::from_secs(60))))
            .await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let released_at = Instant::now();
    holder.release().await.unwrap();
    let g = waiting.await.unwrap().unwrap();
    assert_eq!(g.token(), FencingToken(2));
    // Bounded by one backoff cap, far less than a takeover wait.
    assert!(
        released_at.elapsed() <= Duration::from_millis(500),
        "{:?}",
        released_at.elapsed()
    );
}

/// A paused holder is taken over only after its lease has run out in real
/// time, even with clocks drifting by ρ in the unfavourable directions, and
/// its lost signal fires before the new holder is granted.
#[tokio::test(start_paused = true)]
async fn takeover_of_a_paused_holder_is_safe_under_drift() {
    let rho = ProtocolConfig::default().drift_ppm as f64 / 1e6;
    let store = Arc::new(MemoryStore::new());
    // Holder's clock runs slow (its lease looks longer to it in real time),
    // the waiter's runs fast (its wait looks shorter in real time).
    let holder_client = client(&store, 1, 1.0 - rho);
    let holder = holder_client
        .acquire(&key(), opts("a", None))
        .await
        .unwrap();
    let granted_at = Instant::now();
    holder.freeze_heartbeats();
    let lost = holder.lost_token();
    let lost_at = tokio::spawn(async move {
        lost.cancelled().await;
        Instant::now()
    });
    let taker = client(&store, 2, 1.0 + rho)
        .acquire(&key(), opts("b", Some(Duration::from_secs(60))))
        .await
        .unwrap();
    let taken_at = Instant::now();
    let lost_at = lost_at.await.unwrap();
    assert!(
        lost_at < taken_at,
        "old holder lost at {lost_at:?}, new holder granted at {taken_at:?}"
    );
    assert!(!holder.is_valid());
    assert!(
        taken_at.duration_since(granted_at) >= LEASE,
        "{:?}",
        taken_at.duration_since(granted_at)
    );
    assert_eq!(taker.token(), FencingToken(2));
    assert!(matches!(holder.check(), Err(LockError::LeaseLost(_))));
    // The old holder's release does not touch the new holder's record.
    holder.release().await.unwrap();
    assert!(taker.is_valid());
    let rec = store.get_now(&key()).unwrap();
    assert_eq!((rec.owner, rec.released), (taker.lease_id(), false));
}

#[tokio::test(start_paused = true)]
async fn force_unlock_makes_the_holder_lose_its_lease() {
    let store = Arc::new(MemoryStore::new());
    let admin = client(&store, 3, 1.0);
    let holder = client(&store, 1, 1.0)
        .acquire(&key(), opts("a", None))
        .await
        .unwrap();
    let seen = admin.status(&key()).await.unwrap().unwrap();
    assert!(seen.held && !seen.stale);
    // A stale view is refused.
    let wrong = statelock::protocol::RecordVersion(seen.record.rvn.0 ^ 1);
    assert!(matches!(
        admin.force_unlock(&key(), wrong, "ops").await,
        Err(LockError::Changed { .. })
    ));
    let forced = admin
        .force_unlock(&key(), seen.record.rvn, "ops")
        .await
        .unwrap();
    assert!(forced.released);
    assert_eq!(forced.forced_by.as_deref(), Some("ops"));
    // The holder notices at its next heartbeat, within a third of a lease.
    let t0 = Instant::now();
    holder.lost().await;
    assert!(
        t0.elapsed() <= LEASE / 3 + Duration::from_millis(1),
        "{:?}",
        t0.elapsed()
    );
    assert!(!holder.is_valid());
    assert!(matches!(
        admin
            .force_unlock(&LockKey::new("never").unwrap(), seen.record.rvn, "ops")
            .await,
        Err(LockError::NotFound(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn cancellation_stops_the_wait() {
    let store = Arc::new(MemoryStore::new());
    let _holder = client(&store, 1, 1.0)
        .acquire(&key(), opts("a", None))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let mut o = opts("b", None);
    o.cancel = Some(cancel.clone());
    let waiter = client(&store, 2, 1.0);
    let task = tokio::spawn(async move { waiter.acquire(&key(), o).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    cancel.cancel();
    assert!(matches!(task.await.unwrap(), Err(LockError::Cancelled)));
}

#[tokio::test(start_paused = true)]
async fn progress_reports_the_holder_and_takeover_time() {
    let store = Arc::new(MemoryStore::new());
    let _holder = client(&store, 1, 1.0)
        .acquire(&key(), opts("alice", None))
        .await
        .unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut o = opts("bob", Some(Duration::from_secs(2)));
    let sink = seen.clone();
    o.on_wait = Some(Arc::new(move |p| {
        sink.lock()
            .unwrap()
            .push((p.holder.holder.locked_by.clone(), p.takeover_in))
    }));
    let _ = client(&store, 2, 1.0).acquire(&key(), o).await;
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|(who, _)| who == "alice"));
    assert!(seen[0].1 <= ProtocolConfig::default().takeover_wait(LEASE));
}

#[tokio::test(start_paused = true)]
async fn dropping_a_guard_releases_the_lock() {
    let store = Arc::new(MemoryStore::new());
    let c = client(&store, 1, 1.0);
    let g = c.acquire(&key(), opts("a", None)).await.unwrap();
    drop(g);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(store.get_now(&key()).unwrap().released);
}

/// Liveness in `locks` is judged by how long this observer has seen a
/// version unchanged on its own monotonic clock: a silent holder is STALE
/// only after a whole takeover wait of looking, a live one is alive, and
/// the wall clocks' opinion (here: the frozen holder's last write long ago)
/// decides nothing.
#[tokio::test(start_paused = true)]
async fn locks_judges_liveness_by_observation_not_wall_clocks() {
    use statelock::client::Liveness;
    let store = Arc::new(MemoryStore::new());
    let c = client(&store, 1, 1.0);
    let g = c.acquire(&key(), opts("a", None)).await.unwrap();
    g.freeze_heartbeats();
    std::mem::forget(g);
    let other = LockKey::new("other").unwrap();
    c.acquire(&other, opts("a", None))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let live_key = LockKey::new("live").unwrap();
    let live = c.acquire(&live_key, opts("b", None)).await.unwrap();
    tokio::time::sleep(LEASE * 2).await;
    let first = c.locks().await.unwrap();
    assert!(first.damaged.is_empty());
    let by_key = |l: &statelock::client::LocksListing, k: &LockKey| {
        l.locks
            .iter()
            .find(|s| &s.record.key == k)
            .cloned()
            .unwrap()
    };
    assert_eq!(first.locks.len(), 3);
    assert_eq!(by_key(&first, &other).liveness, Liveness::Released);
    // First look: not known, although the frozen holder's wall-clock
    // heartbeat is two leases old.
    let frozen = by_key(&first, &key());
    assert_eq!((frozen.liveness, frozen.stale), (Liveness::Unknown, false));
    assert!(frozen.wall_age_ms >= 2 * LEASE.as_millis() as i64);
    let takeover = ProtocolConfig::default().takeover_wait(LEASE);
    tokio::time::sleep(takeover).await;
    let second = c.locks().await.unwrap();
    let frozen = by_key(&second, &key());
    assert_eq!((frozen.liveness, frozen.stale), (Liveness::Stale, true));
    assert!(frozen.unchanged_ms >= takeover.as_millis() as u64);
    assert_eq!(by_key(&second, &live_key).liveness, Liveness::Alive);
    live.release().await.unwrap();
}

// --------------------------------------------------------------------------
// Lost answers, bounded waits, grants given up on, used-up tokens.

use async_trait::async_trait;
use statelock::clock::Clock;
use statelock::protocol::{LockOp, LockRecord, MonoTime, RecordVersion};
use statelock::store::{Listing, StoreError};
use statelock::testkit::faults::{FaultSwitch, LoseResponses};
use std::sync::Mutex;

/// A memory store behind a fault switch that notes, for every op it is
/// sent, the sender's clock reading when it was FIRST sent (keyed by the
/// version it installs: a resend carries the same one).
#[derive(Debug)]
struct Noted {
    inner: LoseResponses<Arc<MemoryStore>>,
    clock: SkewedClock,
    first_sent: Mutex<Vec<(RecordVersion, &'static str, MonoTime)>>,
}

impl Noted {
    fn new(store: &Arc<MemoryStore>, clock: SkewedClock) -> Arc<Noted> {
        Arc::new(Noted {
            inner: LoseResponses::new(store.clone()),
            clock,
            first_sent: Mutex::new(Vec::new()),
        })
    }
    fn switch(&self) -> &FaultSwitch {
        self.inner.switch()
    }
    fn first_send_of(&self, kind: &str) -> Vec<MonoTime> {
        let sent = self.first_sent.lock().unwrap();
        sent.iter()
            .filter(|(_, k, _)| *k == kind)
            .map(|(_, _, t)| *t)
            .collect()
    }
}

#[async_trait]
impl LockStore for Noted {
    async fn apply(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
        {
            let mut sent = self.first_sent.lock().unwrap();
            if !sent.iter().any(|(v, _, _)| *v == op.new_rvn) {
                sent.push((op.new_rvn, op.kind.name(), self.clock.now()));
            }
        }
        self.inner.apply(op).await
    }
    async fn get(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self) -> Result<Listing, StoreError> {
        self.inner.list().await
    }
    async fn token_floor(&self) -> Result<FencingToken, StoreError> {
        self.inner.token_floor().await
    }
    async fn purge(&self, key: &LockKey, rvn: RecordVersion) -> Result<LockRecord, StoreError> {
        self.inner.purge(key, rvn).await
    }
    fn describe(&self) -> String {
        "noted".into()
    }
    fn queues(&self) -> bool {
        self.inner.queues()
    }
}

fn noted_client(noted: &Arc<Noted>, clock: SkewedClock) -> LockClient {
    LockClient::builder(noted.clone() as Arc<dyn LockStore>)
        .clock(clock)
        .seed(7)
        .build()
}

/// A grant whose answer is lost twice is recognised by its third send, and
/// its lease is timed from the FIRST send: `deadline == first send +
/// validity`, never from a resend (which would stretch the lease past what
/// the waiters allow for).
#[tokio::test(start_paused = true)]
async fn a_grant_whose_answer_was_lost_twice_is_timed_from_its_first_send() {
    let store = Arc::new(MemoryStore::new());
    let clock = SkewedClock::exact();
    let noted = Noted::new(&store, clock.clone());
    let c = noted_client(&noted, clock);
    noted.switch().lose_next_responses(2);
    let guard = c.acquire(&key(), opts("a", Some(LEASE))).await.unwrap();
    let grants = noted.first_send_of("acquire");
    assert_eq!(grants.len(), 1, "one grant op, resent: {grants:?}");
    assert_eq!(noted.switch().injected(), 2);
    let validity = ProtocolConfig::default().holder_validity(LEASE);
    assert_eq!(guard.deadline(), grants[0] + validity);
    // The resends came later: timing from them would have been wrong.
    assert!(c.clock().now() > grants[0]);
    guard.release().await.unwrap();
}

/// A heartbeat whose answer is lost is resent and recognised; the renewed
/// deadline counts from that heartbeat's FIRST send.
#[tokio::test(start_paused = true)]
async fn a_heartbeat_whose_answer_was_lost_renews_from_its_first_send() {
    let store = Arc::new(MemoryStore::new());
    let clock = SkewedClock::exact();
    let noted = Noted::new(&store, clock.clone());
    let c = noted_client(&noted, clock);
    let guard = c.acquire(&key(), opts("a", Some(LEASE))).await.unwrap();
    let granted_deadline = guard.deadline();
    noted.switch().lose_next_responses(1);
    // Past the first heartbeat and its resend.
    tokio::time::sleep(LEASE / 2).await;
    let beats = noted.first_send_of("heartbeat");
    assert_eq!(beats.len(), 1, "{beats:?}");
    assert_eq!(
        noted.switch().injected(),
        1,
        "the heartbeat's answer was lost"
    );
    let validity = ProtocolConfig::default().holder_validity(LEASE);
    assert!(guard.is_valid());
    assert_eq!(guard.deadline(), beats[0] + validity);
    assert!(guard.deadline() > granted_deadline);
    guard.release().await.unwrap();
}

/// A store whose writes never answer while `hang` is set.
#[derive(Debug)]
struct Hanging {
    inner: Arc<MemoryStore>,
    hang: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl LockStore for Hanging {
    async fn apply(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
        if self.hang.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.apply(op).await
    }
    async fn get(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self) -> Result<Listing, StoreError> {
        self.inner.list().await
    }
    async fn token_floor(&self) -> Result<FencingToken, StoreError> {
        self.inner.token_floor().await
    }
    async fn purge(&self, key: &LockKey, rvn: RecordVersion) -> Result<LockRecord, StoreError> {
        self.inner.purge(key, rvn).await
    }
    fn describe(&self) -> String {
        "hanging".into()
    }
}

fn hanging() -> (Arc<Hanging>, LockClient) {
    let store = Arc::new(Hanging {
        inner: Arc::new(MemoryStore::new()),
        hang: std::sync::atomic::AtomicBool::new(true),
    });
    let c = LockClient::builder(store.clone() as Arc<dyn LockStore>)
        .clock(SkewedClock::exact())
        .seed(3)
        .build();
    (store, c)
}

/// A store call that never answers is cut at the wait's deadline (and the
/// grant it may have been is given up within ABANDON_BUDGET): the acquire
/// returns, it does not hang with the store.
#[tokio::test(start_paused = true)]
async fn a_store_that_never_answers_cannot_outlast_the_wait() {
    let (_store, c) = hanging();
    let wait = Duration::from_secs(10);
    let started = Instant::now();
    let result = c.acquire(&key(), opts("a", Some(wait))).await;
    let took = started.elapsed();
    assert!(result.is_err(), "{result:?}");
    assert!(took >= wait, "{took:?}");
    assert!(
        took <= wait + statelock::client::ABANDON_BUDGET + Duration::from_millis(10),
        "{took:?}"
    );
}

/// Cancelling stops a wait that is stuck in a store call, at once.
#[tokio::test(start_paused = true)]
async fn cancellation_interrupts_a_store_call() {
    let (_store, c) = hanging();
    let cancel = CancellationToken::new();
    let mut o = opts("a", None);
    o.cancel = Some(cancel.clone());
    let task = tokio::spawn({
        let c = c.clone();
        async move { c.acquire(&key(), o).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cancelled_at = Instant::now();
    cancel.cancel();
    let result = task.await.unwrap();
    assert!(matches!(result, Err(LockError::Cancelled)), "{result:?}");
    assert!(
        cancelled_at.elapsed() <= statelock::client::ABANDON_BUDGET + Duration::from_millis(10)
    );
}

/// A store whose grant answers always come back after the lease ran out (a
/// paused process, a crawling network): the client gives each stale grant
/// back and retries with backoff — but only until the wait runs out.
#[tokio::test(start_paused = true)]
async fn stale_grants_are_retried_only_within_the_wait() {
    #[derive(Debug)]
    struct Slow(Arc<MemoryStore>);
    #[async_trait]
    impl LockStore for Slow {
        async fn apply(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
            let answer = self.0.apply(op).await;
            if op.is_grant() {
                tokio::time::sleep(LEASE * 2).await;
            }
            answer
        }
        async fn get(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError> {
            self.0.get(key).await
        }
        async fn list(&self) -> Result<Listing, StoreError> {
            self.0.list().await
        }
        async fn token_floor(&self) -> Result<FencingToken, StoreError> {
            self.0.token_floor().await
        }
        async fn purge(&self, key: &LockKey, rvn: RecordVersion) -> Result<LockRecord, StoreError> {
            self.0.purge(key, rvn).await
        }
        fn describe(&self) -> String {
            "slow".into()
        }
    }
    let inner = Arc::new(MemoryStore::new());
    let c = LockClient::builder(Arc::new(Slow(inner.clone())) as Arc<dyn LockStore>)
        .clock(SkewedClock::exact())
        .seed(5)
        .build();
    let wait = Duration::from_secs(30);
    let started = Instant::now();
    let result = c.acquire(&key(), opts("a", Some(wait))).await;
    assert!(result.is_err(), "no grant ever arrives in time: {result:?}");
    let took = started.elapsed();
    assert!(took <= wait + statelock::client::ABANDON_BUDGET, "{took:?}");
    // It did retry (several grants were given back), and gave every one back.
    let record = inner.get_now(&key()).unwrap();
    assert!(record.token.0 >= 3, "{record:?}");
    assert!(record.released, "{record:?}");
}

/// A grant this client gave up on (its answer never came) that lands later
/// is released by this client's next acquire at once — it does not block
/// the key for a lease.
#[tokio::test(start_paused = true)]
async fn a_late_landing_grant_of_this_client_is_released_at_once() {
    #[derive(Debug)]
    struct BlackHole {
        inner: Arc<MemoryStore>,
        swallow: std::sync::atomic::AtomicBool,
        swallowed: Mutex<Vec<LockOp>>,
    }
    #[async_trait]
    impl LockStore for BlackHole {
        async fn apply(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
            if self.swallow.load(std::sync::atomic::Ordering::SeqCst) {
                self.swallowed.lock().unwrap().push(op.clone());
                return Err(StoreError::Unavailable("no answer".into()));
            }
            self.inner.apply(op).await
        }
        async fn get(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError> {
            self.inner.get(key).await
        }
        async fn list(&self) -> Result<Listing, StoreError> {
            self.inner.list().await
        }
        async fn token_floor(&self) -> Result<FencingToken, StoreError> {
            self.inner.token_floor().await
        }
        async fn purge(&self, key: &LockKey, rvn: RecordVersion) -> Result<LockRecord, StoreError> {
            self.inner.purge(key, rvn).await
        }
        fn describe(&self) -> String {
            "black-hole".into()
        }
    }
    let inner = Arc::new(MemoryStore::new());
    let hole = Arc::new(BlackHole {
        inner: inner.clone(),
        swallow: std::sync::atomic::AtomicBool::new(true),
        swallowed: Mutex::new(Vec::new()),
    });
    let c = LockClient::builder(hole.clone() as Arc<dyn LockStore>)
        .clock(SkewedClock::exact())
        .seed(9)
        .build();
    // Every write vanishes: the acquire gives up.
    let result = c
        .acquire(&key(), opts("a", Some(Duration::from_secs(1))))
        .await;
    assert!(result.is_err(), "{result:?}");
    // The network delivers the first grant late: it lands.
    hole.swallow
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let late = hole
        .swallowed
        .lock()
        .unwrap()
        .iter()
        .find(|op| op.is_grant())
        .cloned()
        .expect("a grant was sent");
    let zombie = inner.apply_now(&late).expect("the late grant lands");
    assert!(zombie.is_held());
    // The next acquire finds it, releases it and gets the key at once.
    let started = Instant::now();
    let guard = c
        .acquire(&key(), opts("a", Some(LEASE * 5)))
        .await
        .expect("acquire");
    assert!(started.elapsed() < LEASE / 10, "{:?}", started.elapsed());
    assert_eq!(guard.token(), FencingToken(zombie.token.0 + 1));
    guard.release().await.unwrap();
}

/// A key at the last fencing token says so at once.
#[tokio::test(start_paused = true)]
async fn a_key_whose_tokens_are_used_up_fails_at_once() {
    let store = Arc::new(MemoryStore::new());
    store.put_behind_the_protocols_back(LockRecord {
        key: key(),
        owner: statelock::protocol::LeaseId::random(),
        token: FencingToken(u64::MAX),
        rvn: RecordVersion::random(),
        lease_ms: 3000,
        released: true,
        holder: HolderInfo::named("x"),
        acquired_at: WallTime(0),
        heartbeat_at: WallTime(0),
        forced_by: None,
        queue: Vec::new(),
    });
    let c = client(&store, 1, 1.0);
    let started = Instant::now();
    match c.acquire(&key(), opts("a", Some(LEASE * 10))).await {
        Err(LockError::TokensExhausted { key: k, record }) => {
            assert_eq!(k, key().to_string());
            assert_eq!(record.map(|r| r.token), Some(FencingToken(u64::MAX)));
        }
        other => panic!("expected TokensExhausted, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_millis(10));
}
