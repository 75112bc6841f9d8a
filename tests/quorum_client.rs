//! The lock client on a quorum store, on tokio's paused clock: a frozen
//! holder's lease is taken over through the quorum only after a whole
//! takeover wait, with a larger token, while one member is down — and the
//! holder's lease has ended by then.

use statelock::client::{AcquireOptions, LockClient};
use statelock::clock::TokioClock;
use statelock::store::memory::MemoryStore;
use statelock::store::quorum::QuorumStore;
use statelock::store::LockStore;
use statelock::testkit::faults::{FaultMode, LoseResponses};
use statelock::{HolderInfo, LockKey};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

fn key() -> LockKey {
    LockKey::new("stack:web:env:prod").unwrap()
}

fn opts(name: &str, lease: Duration) -> AcquireOptions {
    AcquireOptions {
        lease,
        wait: Some(Duration::from_secs(600)),
        holder: HolderInfo::named(name),
        ..AcquireOptions::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_frozen_holder_is_taken_over_after_a_lease_with_one_member_down() {
    let members: Vec<Arc<LoseResponses<MemoryStore>>> = (0..3)
        .map(|_| Arc::new(LoseResponses::new(MemoryStore::new())))
        .collect();
    let quorum: Arc<dyn LockStore> = Arc::new(
        QuorumStore::new(
            members
                .iter()
                .map(|m| m.clone() as Arc<dyn LockStore>)
                .collect(),
        )
        .unwrap(),
    );
    let lease = Duration::from_secs(20);
    let holder = LockClient::builder(quorum.clone())
        .clock(TokioClock::new())
        .build();
    let waiter = LockClient::builder(quorum.clone())
        .clock(TokioClock::new())
        .build();
    let held = holder.acquire(&key(), opts("holder", lease)).await.unwrap();
    // Renewals reach every member for a while.
    tokio::time::sleep(lease * 2).await;
    assert!(held.is_valid(), "a renewing holder keeps its lease");
    held.freeze_heartbeats();
    let frozen_at = Instant::now();
    members[0].switch().set_reads_too(true);
    members[0].switch().set(FaultMode::FailRequests);
    let taken = waiter.acquire(&key(), opts("waiter", lease)).await.unwrap();
    let waited = frozen_at.elapsed();
    assert!(
        waited >= lease,
        "the takeover came {waited:?} after the holder froze, before a whole lease"
    );
    assert!(
        !held.is_valid(),
        "the frozen holder still believed it held the lock at the takeover"
    );
    assert!(taken.token() > held.token());
    // The member that was down is repaired by the next grant once it is back.
    members[0].switch().off();
    taken.release().await.unwrap();
    let again = waiter.acquire(&key(), opts("waiter", lease)).await.unwrap();
    let record = members[0].inner().get(&key()).await.unwrap().unwrap();
    assert_eq!(record.token, again.token());
    assert_eq!(record.owner, again.lease_id());
    again.release().await.unwrap();
}
