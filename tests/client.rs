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
