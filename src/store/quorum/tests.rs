//! The quorum store with members down, behind and ahead, through the
//! `LockStore` interface the client uses.

use super::*;
use crate::protocol::{GrantFrom, HolderInfo, LeaseId, WallTime};
use crate::store::memory::MemoryStore;
use crate::testkit::faults::{FaultMode, LoseResponses};

fn key() -> LockKey {
    LockKey::new("stack:web:env:prod").unwrap()
}

fn acquire(current: Option<&LockRecord>, floor: FencingToken) -> LockOp {
    LockOp {
        key: key(),
        new_rvn: RecordVersion::random(),
        at: WallTime(1),
        kind: OpKind::Acquire {
            from: GrantFrom::of(current, floor),
            owner: LeaseId::random(),
            lease_ms: 10_000,
            holder: HolderInfo::named("t"),
            at_least: FencingToken::NONE,
            dequeue: Default::default(),
        },
    }
}

fn release(held: &LockRecord) -> LockOp {
    LockOp {
        key: key(),
        new_rvn: RecordVersion::random(),
        at: WallTime(2),
        kind: OpKind::Release {
            owner: held.owner,
            current: held.rvn,
        },
    }
}

/// Three memory members, each behind a fault switch.
fn quorum() -> (QuorumStore, Vec<Arc<LoseResponses<MemoryStore>>>) {
    let members: Vec<Arc<LoseResponses<MemoryStore>>> = (0..3)
        .map(|_| Arc::new(LoseResponses::new(MemoryStore::new())))
        .collect();
    let dyns = members
        .iter()
        .map(|m| m.clone() as Arc<dyn LockStore>)
        .collect();
    let q = QuorumStore::new(dyns)
        .unwrap()
        .with_straggler_wait(Duration::from_secs(5));
    (q, members)
}

async fn grant_and_release(q: &QuorumStore) -> (LockRecord, LockRecord) {
    let current = q.get(&key()).await.unwrap();
    let floor = q.token_floor().await.unwrap();
    let held = q.apply(&acquire(current.as_ref(), floor)).await.unwrap();
    let released = q.apply(&release(&held)).await.unwrap();
    (held, released)
}

fn down(m: &LoseResponses<MemoryStore>) {
    m.switch().set_reads_too(true);
    m.switch().set(FaultMode::FailRequests);
}

fn up(m: &LoseResponses<MemoryStore>) {
    m.switch().off();
}

#[tokio::test]
async fn grants_continue_with_one_member_down_and_it_is_repaired_when_back() {
    let (q, members) = quorum();
    let (first, _) = grant_and_release(&q).await;
    down(&members[2]);
    let mut last = first.token;
    for _ in 0..3 {
        let (held, _) = grant_and_release(&q).await;
        assert!(held.token > last, "tokens increase with a member down");
        last = held.token;
    }
    // Back with its old record (token of the first grant).
    up(&members[2]);
    let old = members[2].inner().get(&key()).await.unwrap().unwrap();
    assert_eq!(old.token, first.token, "the member kept its old record");
    // A second member goes down: the two left disagree (one is behind),
    // and the next grant still works and repairs the member that was back.
    down(&members[0]);
    let (held, released) = grant_and_release(&q).await;
    assert!(
        held.token > last,
        "no token goes backwards after the repair"
    );
    let repaired = members[2].inner().get(&key()).await.unwrap().unwrap();
    assert_eq!(repaired, released, "the member that came back was repaired");
}

#[tokio::test]
async fn two_members_down_is_unavailable_not_a_grant() {
    let (q, members) = quorum();
    grant_and_release(&q).await;
    down(&members[0]);
    down(&members[1]);
    match q.get(&key()).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("a read without a majority must be unavailable, got {other:?}"),
    }
    up(&members[1]);
    let current = q.get(&key()).await.unwrap();
    let floor = q.token_floor().await.unwrap();
    let op = acquire(current.as_ref(), floor);
    down(&members[1]);
    match q.apply(&op).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("a grant that reached one member must not count, got {other:?}"),
    }
}

/// The token rule on real stores: a member holding a larger token than
/// the majority (a grant it alone received) pushes the next grant's token
/// above it, on every member. Per-member tokens would hand out a token
/// twice.
#[tokio::test]
async fn a_member_ahead_raises_the_next_token_everywhere() {
    let (q, members) = quorum();
    let (_, released) = grant_and_release(&q).await;
    // Member 0 alone moves on: a grant and a release only it received.
    let solo = acquire(Some(&released), FencingToken::NONE);
    let solo_held = members[0].inner().apply(&solo).await.unwrap();
    members[0]
        .inner()
        .apply(&release(&solo_held))
        .await
        .unwrap();
    assert_eq!(solo_held.token, FencingToken(released.token.0 + 1));
    let (held, _) = grant_and_release(&q).await;
    assert_eq!(held.token, FencingToken(solo_held.token.0 + 1));
    for m in &members {
        let r = m.inner().get(&key()).await.unwrap().unwrap();
        assert_eq!(r.token, held.token, "every member installs the same token");
    }
}

#[tokio::test]
async fn a_refused_partial_grant_is_released() {
    let (q, members) = quorum();
    let (_, released) = grant_and_release(&q).await;
    let current = q.get(&key()).await.unwrap();
    let op = acquire(current.as_ref(), FencingToken::NONE);
    // A rival wins members 1 and 2 first.
    let rival = acquire(Some(&released), FencingToken::NONE);
    members[1].inner().apply(&rival).await.unwrap();
    members[2].inner().apply(&rival).await.unwrap();
    match q.apply(&op).await {
        Err(StoreError::Conflict { current: Some(r) }) => assert_eq!(r.rvn, rival.new_rvn),
        other => panic!("the grant lost to a majority: {other:?}"),
    }
    // Member 0 got the grant alone; it is released (in the background).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = members[0].inner().get(&key()).await.unwrap().unwrap();
        if r.released {
            assert_eq!(
                r.owner,
                match &op.kind {
                    OpKind::Acquire { owner, .. } => *owner,
                    _ => unreachable!(),
                }
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the partial grant was not released"
        );
        tokio::task::yield_now().await;
    }
}

#[test]
fn member_counts_are_checked() {
    let two: Vec<Arc<dyn LockStore>> =
        vec![Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new())];
    assert!(matches!(
        QuorumStore::new(two),
        Err(StoreError::Misconfigured(_))
    ));
    let same = Arc::new(MemoryStore::new());
    let dup: Vec<Arc<dyn LockStore>> = vec![same.clone(), same, Arc::new(MemoryStore::new())];
    assert!(matches!(
        QuorumStore::new(dup),
        Err(StoreError::Misconfigured(_))
    ));
}
