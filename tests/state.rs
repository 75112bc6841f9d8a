//! The state store with the real lock client in front: a holder seals its
//! state when it acquires; the fence and the tokens survive what users do to
//! their stores — a lock record deleted by hand (the next holder's token is
//! re-based above the fence), a restore, a state deleted behind the store's
//! back — and no state write with a token below an earlier accepted one is
//! ever accepted.

use statelock::client::{AcquireOptions, LockClient};
use statelock::clock::SkewedClock;
use statelock::protocol::{Backoff, HolderInfo, LockKey};
use statelock::state::backend::{MemoryBackend, StateBackend};
use statelock::state::layout::StatePaths;
use statelock::state::{seal_for, FencedStore, StateError, StateStore, Writer};
use statelock::store::memory::MemoryStore;
use statelock::store::LockStore;
use statelock::FencingToken;
use std::sync::Arc;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(3);

fn key() -> LockKey {
    LockKey::new("stack:web:env:prod").unwrap()
}

fn opts() -> AcquireOptions {
    AcquireOptions {
        lease: LEASE,
        wait: Some(Duration::from_secs(30)),
        backoff: Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(100),
            poll: Duration::from_millis(20),
        },
        holder: HolderInfo::named("test"),
        ..AcquireOptions::default()
    }
}

fn client(locks: &Arc<MemoryStore>, seed: u64) -> LockClient {
    LockClient::builder(locks.clone() as Arc<dyn LockStore>)
        .clock(SkewedClock::exact())
        .seed(seed)
        .build()
}

/// Every accepted save's token, in order, from the history.
async fn accepted_tokens(state: &dyn StateStore) -> Vec<FencingToken> {
    let mut h = state.history(&key(), 1000).await.unwrap();
    h.reverse();
    h.into_iter().map(|e| e.token).collect()
}

fn non_decreasing(tokens: &[FencingToken]) -> bool {
    tokens.windows(2).all(|p| p[0] <= p[1])
}

/// A lock record deleted by hand restarts the key's tokens (no purge kept
/// the floor). The next holder gets token 1, finds the state fenced at 3 when
/// it seals, raises its lock's token above the fence and seals: its saves are
/// accepted, and the holder whose record was deleted can save nothing.
#[tokio::test(start_paused = true)]
async fn a_lock_record_deleted_by_hand_is_answered_by_rebasing_the_token() {
    let locks = Arc::new(MemoryStore::new());
    let state = FencedStore::new(MemoryBackend::new());
    let c = client(&locks, 1);
    // Three holders one after another; the third keeps the lock.
    for _ in 0..2 {
        let g = c.acquire(&key(), opts()).await.unwrap();
        let (w, loaded) = seal_for(&state, &g).await.unwrap();
        state
            .save(&w, &loaded.version, loaded.document.clone())
            .await
            .unwrap();
        g.release().await.unwrap();
    }
    let third = c.acquire(&key(), opts()).await.unwrap();
    assert_eq!(third.token(), FencingToken(3));
    let (third_writer, loaded) = seal_for(&state, &third).await.unwrap();
    state
        .save(&third_writer, &loaded.version, loaded.document.clone())
        .await
        .unwrap();
    // An operator deletes the lock record by hand; a new client acquires
    // the key at once, with token 1.
    locks.delete_behind_the_protocols_back(&key());
    let fresh = client(&locks, 2);
    let next = fresh.acquire(&key(), opts()).await.unwrap();
    assert_eq!(next.token(), FencingToken(1), "tokens restarted");
    // Sealing re-bases the lock's token above the state's fence (3).
    let (w, loaded) = seal_for(&state, &next).await.unwrap();
    assert_eq!(next.token(), FencingToken(4));
    assert_eq!(w.token, FencingToken(4));
    assert_eq!(locks.get_now(&key()).unwrap().token, FencingToken(4));
    assert!(next.is_valid(), "a rebase renews the lease");
    state
        .save(&w, &loaded.version, loaded.document.clone())
        .await
        .unwrap();
    // The holder whose record was deleted can no longer save.
    let current = state.load(&key()).await.unwrap().unwrap();
    match state
        .save(&third_writer, &current.version, current.document)
        .await
    {
        Err(StateError::Stale { fence, token }) => {
            assert_eq!((fence, token), (FencingToken(4), FencingToken(3)))
        }
        other => panic!("expected Stale, got {other:?}"),
    }
    let tokens = accepted_tokens(&state).await;
    assert_eq!(tokens.len(), 4);
    assert!(non_decreasing(&tokens), "{tokens:?}");
    next.release().await.unwrap();
    std::mem::forget(third);
}

/// A restore never rewinds the fence: the restored content is written with
/// the restorer's token, and the holder of the snapshot's (older) token stays
/// refused.
#[tokio::test(start_paused = true)]
async fn a_restore_never_rewinds_the_fence() {
    let locks = Arc::new(MemoryStore::new());
    let state = FencedStore::new(MemoryBackend::new());
    let c = client(&locks, 1);
    let first = c.acquire(&key(), opts()).await.unwrap();
    let (w1, loaded) = seal_for(&state, &first).await.unwrap();
    state
        .save(&w1, &loaded.version, loaded.document)
        .await
        .unwrap();
    let snapshot = state.history(&key(), 1).await.unwrap()[0].id.clone();
    first.release().await.unwrap();
    let second = c.acquire(&key(), opts()).await.unwrap();
    let (w2, _) = seal_for(&state, &second).await.unwrap();
    state.restore(&w2, &snapshot, false).await.unwrap();
    let current = state.load(&key()).await.unwrap().unwrap();
    assert_eq!(current.stamp().map(|s| s.fence), Some(w2.token));
    match state.save(&w1, &current.version, current.document).await {
        Err(StateError::Stale { .. }) => {}
        other => panic!("expected Stale, got {other:?}"),
    }
    assert!(non_decreasing(&accepted_tokens(&state).await));
    second.release().await.unwrap();
}

/// The state deleted behind the store's back (a bucket re-created): the
/// holder that had sealed cannot save into the void; the next holder seals
/// afresh with a larger token; nothing below an earlier accepted token is
/// ever accepted.
#[tokio::test(start_paused = true)]
async fn a_state_deleted_behind_the_stores_back_takes_no_older_write() {
    let locks = Arc::new(MemoryStore::new());
    let backend = Arc::new(MemoryBackend::new());
    let state = FencedStore::new(backend.clone() as Arc<dyn StateBackend>);
    let c = client(&locks, 1);
    let a = c.acquire(&key(), opts()).await.unwrap();
    let (wa, loaded) = seal_for(&state, &a).await.unwrap();
    let v = state
        .save(&wa, &loaded.version, loaded.document.clone())
        .await
        .unwrap();
    backend
        .delete(&StatePaths::of(&key()).state())
        .await
        .unwrap();
    match state.save(&wa, &v, loaded.document.clone()).await {
        Err(StateError::NotSealed { fence: None, .. }) => {}
        other => panic!("expected NotSealed, got {other:?}"),
    }
    a.release().await.unwrap();
    let b = c.acquire(&key(), opts()).await.unwrap();
    let (wb, loaded) = seal_for(&state, &b).await.unwrap();
    assert!(wb.token > wa.token);
    state
        .save(&wb, &loaded.version, loaded.document)
        .await
        .unwrap();
    let stale = Writer { ..wa };
    assert!(matches!(
        state.seal(&stale).await,
        Err(StateError::Stale { .. })
    ));
    assert!(non_decreasing(&accepted_tokens(&state).await));
    b.release().await.unwrap();
}
