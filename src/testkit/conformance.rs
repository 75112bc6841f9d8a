//! The conformance suite every [`LockStore`] must pass: the guarantees of the
//! trait's docs and of PROTOCOL.md ("Operations"), checked through the public
//! API only, so the same cases run against the memory, file, DynamoDB and S3
//! stores and the simulator's remote store.
//!
//! Each case is a `pub async fn case(store: SharedStore, prefix: &str)` that
//! panics (with `assert!`) naming the operation that misbehaved. Cases only
//! touch keys that start with `prefix/` and never assume the store is empty,
//! so any number of them can share one real table or bucket at once.
//! Mount them all with [`lock_store_conformance!`](crate::lock_store_conformance),
//! which makes one named `#[test]` per case.
//!
//! Nothing here may weaken a check to suit one store: where a store may
//! legitimately differ from the reference semantics ([`LockOp::apply`]), the
//! difference must be written down here, for every store.

use super::faults::LoseResponses;
use crate::protocol::{
    Dequeue, FencingToken, GrantFrom, HolderInfo, LeaseId, LockKey, LockOp, LockRecord, OpKind,
    Outcome, RecordVersion, WallTime, MAX_KEY_BYTES,
};
use crate::store::{Listing, LockStore, StoreError};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// The store handle every case takes.
pub type SharedStore = Arc<dyn LockStore>;

/// The names of every case, in the order [`run_all`] runs them (the same
/// names as the tests [`lock_store_conformance!`](crate::lock_store_conformance)
/// generates).
pub const CASES: &[&str] = &[
    "acquire_absent_grants_first_token",
    "acquire_held_conflicts_with_current_record",
    "acquire_released_increments_token",
    "token_monotonic_across_grants",
    "takeover_requires_observed_rvn",
    "conditional_heartbeat",
    "owner_only_release",
    "force_unlock_needs_seen_version",
    "records_are_never_deleted",
    "conflict_returns_current_record",
    "lost_response_recognised_by_rvn",
    "list_and_get_agree",
    "keys_are_independent",
    "written_record_matches_reference_semantics",
    "concurrent_acquirers_exactly_one_wins",
    "grants_name_the_version_they_replace",
    "purge_raises_the_floor_and_tokens_continue",
    "rebase_raises_only_the_holders_token",
    "grants_install_at_least_the_token_named",
    "the_queue_orders_grants_and_keeps_the_lease",
    "the_queue_is_bounded_and_left_by_place",
];

/// The cases of the hand-off queue: only for stores that keep one
/// ([`LockStore::queues`]); the last of [`CASES`].
pub const QUEUE_CASES: usize = 2;

/// Mounts the conformance suite on a store: expands to one `#[test]` per case
/// (named after the case), each running on its own multi-threaded tokio
/// runtime (4 workers) with a fresh unique key prefix. The argument is an
/// expression evaluating to a future that yields the store (anything that
/// implements [`LockStore`](crate::store::LockStore) and is `'static`); it is
/// evaluated once per test. Wrap the store in
/// [`WithGuard`](crate::testkit::WithGuard) to keep, say, its temporary
/// directory alive for the test. Invoke it at most once per module.
///
/// ```ignore
/// statelock::lock_store_conformance!(async { statelock::store::memory::MemoryStore::new() });
/// ```
#[macro_export]
macro_rules! lock_store_conformance {
    (@cases ($make_store:expr) $($case:ident)*) => {
        $(
            #[test]
            fn $case() {
                $crate::testkit::conformance::runtime().block_on(async {
                    let store: $crate::testkit::conformance::SharedStore =
                        ::std::sync::Arc::new($make_store.await);
                    let prefix =
                        $crate::testkit::conformance::unique_prefix(::core::stringify!($case));
                    $crate::testkit::conformance::$case(store, &prefix).await;
                });
            }
        )*
    };
    (@common ($make_store:expr) $concurrent:ident) => {
        $crate::lock_store_conformance!(@cases ($make_store)
            $concurrent
            acquire_absent_grants_first_token
            acquire_held_conflicts_with_current_record
            acquire_released_increments_token
            token_monotonic_across_grants
            takeover_requires_observed_rvn
            conditional_heartbeat
            owner_only_release
            force_unlock_needs_seen_version
            records_are_never_deleted
            conflict_returns_current_record
            lost_response_recognised_by_rvn
            list_and_get_agree
            keys_are_independent
            written_record_matches_reference_semantics
            grants_name_the_version_they_replace
            purge_raises_the_floor_and_tokens_continue
            rebase_raises_only_the_holders_token
            grants_install_at_least_the_token_named
        );
    };
    (quorum: $make_store:expr $(,)?) => {
        $crate::lock_store_conformance!(@common ($make_store) concurrent_acquirers_at_most_one_wins);
    };
    ($make_store:expr $(,)?) => {
        $crate::lock_store_conformance!(@common ($make_store) concurrent_acquirers_exactly_one_wins);
        $crate::lock_store_conformance!(@cases ($make_store)
            the_queue_orders_grants_and_keeps_the_lease
            the_queue_is_bounded_and_left_by_place
        );
    };
}

/// A key prefix no other test run uses: `conformance/<case>/<random>`.
pub fn unique_prefix(case: &str) -> String {
    format!("conformance/{case}/{}", uuid::Uuid::new_v4().simple())
}

/// The runtime each generated test runs on: multi-threaded, 4 workers, time
/// and I/O enabled. Panics if the operating system refuses the threads.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot start a tokio runtime for the conformance suite: {e}"))
}

/// Runs every case in turn against `store`, each under `prefix/<case>`. The
/// cases assume a store whose token floor is 0 when they start (a fresh
/// store, table or bucket prefix); [`lock_store_conformance!`] needs one
/// per case for the same reason, since one case raises the floor.
pub async fn run_all(store: SharedStore, prefix: &str) {
    let p = |case: &str| format!("{prefix}/{case}");
    acquire_absent_grants_first_token(store.clone(), &p(CASES[0])).await;
    acquire_held_conflicts_with_current_record(store.clone(), &p(CASES[1])).await;
    acquire_released_increments_token(store.clone(), &p(CASES[2])).await;
    token_monotonic_across_grants(store.clone(), &p(CASES[3])).await;
    takeover_requires_observed_rvn(store.clone(), &p(CASES[4])).await;
    conditional_heartbeat(store.clone(), &p(CASES[5])).await;
    owner_only_release(store.clone(), &p(CASES[6])).await;
    force_unlock_needs_seen_version(store.clone(), &p(CASES[7])).await;
    records_are_never_deleted(store.clone(), &p(CASES[8])).await;
    conflict_returns_current_record(store.clone(), &p(CASES[9])).await;
    lost_response_recognised_by_rvn(store.clone(), &p(CASES[10])).await;
    list_and_get_agree(store.clone(), &p(CASES[11])).await;
    keys_are_independent(store.clone(), &p(CASES[12])).await;
    written_record_matches_reference_semantics(store.clone(), &p(CASES[13])).await;
    concurrent_acquirers_exactly_one_wins(store.clone(), &p(CASES[14])).await;
    grants_name_the_version_they_replace(store.clone(), &p(CASES[15])).await;
    rebase_raises_only_the_holders_token(store.clone(), &p(CASES[17])).await;
    grants_install_at_least_the_token_named(store.clone(), &p(CASES[18])).await;
    if store.queues() {
        the_queue_orders_grants_and_keeps_the_lease(store.clone(), &p(CASES[19])).await;
        the_queue_is_bounded_and_left_by_place(store.clone(), &p(CASES[20])).await;
    }
    // Last: it raises the store's token floor, which the cases above assume
    // to be 0.
    purge_raises_the_floor_and_tokens_continue(store, &p(CASES[16])).await;
}

/// A store together with something that must live as long as it (a temporary
/// directory, a table that is dropped afterwards, a server process). Every
/// call goes to the store; the guard is only kept.
pub struct WithGuard<S, G> {
    store: S,
    _guard: G,
}

impl<S, G> WithGuard<S, G> {
    /// Keeps `guard` alive as long as `store`.
    pub fn new(store: S, guard: G) -> Self {
        WithGuard {
            store,
            _guard: guard,
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }
}

impl<S: fmt::Debug, G> fmt::Debug for WithGuard<S, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithGuard")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<S: LockStore, G: Send + Sync> LockStore for WithGuard<S, G> {
    async fn apply(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
        self.store.apply(op).await
    }
    async fn get(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError> {
        self.store.get(key).await
    }
    async fn list(&self) -> Result<Listing, StoreError> {
        self.store.list().await
    }
    async fn token_floor(&self) -> Result<FencingToken, StoreError> {
        self.store.token_floor().await
    }
    async fn purge(
        &self,
        key: &LockKey,
        observed: RecordVersion,
    ) -> Result<LockRecord, StoreError> {
        self.store.purge(key, observed).await
    }
    fn describe(&self) -> String {
        self.store.describe()
    }
    fn queues(&self) -> bool {
        self.store.queues()
    }
}

// ---------------------------------------------------------------------------
// Building ops and checking answers.

/// Wall-clock values for ops: informational only, but distinct so a store
/// that drops or mixes them up is caught.
static WALL: AtomicI64 = AtomicI64::new(1_700_000_000_000);

fn key(prefix: &str, name: &str) -> LockKey {
    LockKey::new(format!("{prefix}/{name}"))
        .unwrap_or_else(|e| panic!("the prefix {prefix:?} makes an invalid key: {e}"))
}

fn holder(name: &str) -> HolderInfo {
    HolderInfo {
        locked_by: name.to_string(),
        operation: Some("conformance".to_string()),
        host: Some("test-host".to_string()),
        pid: Some(4242),
        metadata: BTreeMap::from([
            ("ci_run".to_string(), "12345".to_string()),
            (
                "note".to_string(),
                "ünïcödé \"quoted\" {braces}".to_string(),
            ),
        ]),
    }
}

fn op(key: &LockKey, kind: OpKind) -> LockOp {
    LockOp {
        key: key.clone(),
        new_rvn: RecordVersion::random(),
        at: WallTime(WALL.fetch_add(1, Ordering::Relaxed)),
        kind,
    }
}

/// An acquire naming `current` as the record it replaces (absent: a store
/// whose token floor is 0, as every fresh store's is).
fn acquire(key: &LockKey, owner: LeaseId, current: Option<&LockRecord>) -> LockOp {
    acquire_from(key, owner, GrantFrom::of(current, FencingToken(0)))
}

fn acquire_from(key: &LockKey, owner: LeaseId, from: GrantFrom) -> LockOp {
    op(
        key,
        OpKind::Acquire {
            from,
            owner,
            lease_ms: 20_000,
            holder: holder("acquirer"),
            at_least: FencingToken::NONE,
            dequeue: Default::default(),
        },
    )
}

/// A takeover of the version `observed` whose token is `token`.
fn takeover(key: &LockKey, observed: RecordVersion, token: FencingToken, owner: LeaseId) -> LockOp {
    op(
        key,
        OpKind::Takeover {
            observed,
            token,
            owner,
            lease_ms: 15_000,
            holder: holder("taker"),
            at_least: FencingToken::NONE,
            dequeue: Default::default(),
        },
    )
}

/// A takeover of `record` as observed.
fn takeover_of(record: &LockRecord, owner: LeaseId) -> LockOp {
    takeover(&record.key, record.rvn, record.token, owner)
}

fn heartbeat(key: &LockKey, owner: LeaseId, current: RecordVersion) -> LockOp {
    op(key, OpKind::Heartbeat { owner, current })
}

fn release(key: &LockKey, owner: LeaseId, current: RecordVersion) -> LockOp {
    op(key, OpKind::Release { owner, current })
}

fn force(key: &LockKey, observed: RecordVersion) -> LockOp {
    op(
        key,
        OpKind::ForceUnlock {
            observed,
            by: "operator@admin-host".to_string(),
        },
    )
}

/// The holder's heartbeat of `record`.
fn heartbeat_of(record: &LockRecord) -> LockOp {
    heartbeat(&record.key, record.owner, record.rvn)
}

/// The holder's release of `record`.
fn release_of(record: &LockRecord) -> LockOp {
    release(&record.key, record.owner, record.rvn)
}

fn describe_op(op: &LockOp) -> String {
    format!("{} on {:?}", op.kind.name(), op.key.as_str())
}

async fn get(store: &dyn LockStore, key: &LockKey) -> Option<LockRecord> {
    store
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("get {:?} failed: {e:?}", key.as_str()))
}

/// The records under `prefix/`, as `list` returns them (checking its order).
async fn list_under(store: &dyn LockStore, prefix: &str) -> Vec<LockRecord> {
    let listing = store
        .list()
        .await
        .unwrap_or_else(|e| panic!("list failed: {e:?}"));
    let mine = format!("{prefix}/");
    assert!(
        !listing.damaged.iter().any(|d| d.key.starts_with(&mine)),
        "list reports a record of this case as damaged: {:?}",
        listing.damaged
    );
    let all = listing.records;
    for pair in all.windows(2) {
        assert!(
            pair[0].key < pair[1].key,
            "list is not in strictly increasing key order: {:?} then {:?}",
            pair[0].key.as_str(),
            pair[1].key.as_str()
        );
    }
    all.into_iter()
        .filter(|r| r.key.as_str().starts_with(&mine))
        .collect()
}

/// Sends `op`, which must apply to `previous`: the answer and the stored
/// record must both equal the reference result.
async fn applied(store: &dyn LockStore, op: &LockOp, previous: Option<&LockRecord>) -> LockRecord {
    let want = op.apply(previous).unwrap_or_else(|why| {
        panic!(
            "suite bug: {} does not apply to {previous:?} ({why:?})",
            describe_op(op)
        )
    });
    let got = store.apply(op).await.unwrap_or_else(|e| {
        panic!(
            "{} should have been applied to {previous:?}, but the store answered {e:?}",
            describe_op(op)
        )
    });
    assert_eq!(
        got,
        want,
        "{}: the record returned differs from the reference semantics",
        describe_op(op)
    );
    assert_eq!(
        get(store, &op.key).await.as_ref(),
        Some(&want),
        "{}: the record stored differs from the one returned",
        describe_op(op)
    );
    got
}

/// Sends `op`, which must fail its condition against `current`: the store
/// must answer `Conflict` carrying exactly `current`, and change nothing.
async fn conflicts(store: &dyn LockStore, op: &LockOp, current: Option<&LockRecord>) {
    assert!(
        op.apply(current).is_err(),
        "suite bug: {} applies to {current:?}",
        describe_op(op)
    );
    match store.apply(op).await {
        Err(StoreError::Conflict { current: answered }) => assert_eq!(
            answered.as_deref(),
            current,
            "{}: the conflict must carry the exact current record",
            describe_op(op)
        ),
        other => panic!(
            "{} must conflict with {current:?}, but the store answered {other:?}",
            describe_op(op)
        ),
    }
    assert_eq!(
        get(store, &op.key).await.as_ref(),
        current,
        "{}: a failed condition changed the record",
        describe_op(op)
    );
}

/// What the protocol core learns from one answer.
fn outcome_of(op: &LockOp, answer: Result<LockRecord, StoreError>) -> Outcome {
    match answer {
        Ok(record) => Outcome::Applied(record),
        Err(StoreError::Conflict { current }) => Outcome::Conflict(current.map(|r| *r)),
        Err(StoreError::Unavailable(_)) => Outcome::Unknown,
        Err(other) => panic!("{}: unexpected error {other:?}", describe_op(op)),
    }
}

// ---------------------------------------------------------------------------
// The cases.

/// An acquire on a key with no record grants token 1 and writes exactly the
/// reference record; `get` sees it.
pub async fn acquire_absent_grants_first_token(store: SharedStore, prefix: &str) {
    let s = &*store;
    let k = key(prefix, "lock");
    assert_eq!(get(s, &k).await, None, "a fresh key must have no record");
    let op = acquire(&k, LeaseId::random(), None);
    let record = applied(s, &op, None).await;
    assert_eq!(record.token, FencingToken::FIRST);
    assert_eq!(record.rvn, op.new_rvn);
    assert!(!record.released);
}

/// An acquire of a held key, by anyone (even the holder), conflicts and
/// returns the holder's record.
pub async fn acquire_held_conflicts_with_current_record(store: SharedStore, prefix: &str) {
    let s = &*store;
    let k = key(prefix, "lock");
    let holder = LeaseId::random();
    let held = applied(s, &acquire(&k, holder, None), None).await;
    conflicts(s, &acquire(&k, LeaseId::random(), Some(&held)), Some(&held)).await;
    conflicts(s, &acquire(&k, holder, Some(&held)), Some(&held)).await;
    let renewed = applied(s, &heartbeat_of(&held), Some(&held)).await;
    conflicts(
        s,
        &acquire(&k, LeaseId::random(), Some(&renewed)),
        Some(&renewed),
    )
    .await;
}

/// An acquire of a released key succeeds at once with the next token.
pub async fn acquire_released_increments_token(store: SharedStore, prefix: &str) {
    let s = &*store;
    let k = key(prefix, "lock");
    let first = applied(s, &acquire(&k, LeaseId::random(), None), None).await;
    let released = applied(s, &release_of(&first), Some(&first)).await;
    let second_owner = LeaseId::random();
    let second = applied(
        s,
        &acquire(&k, second_owner, Some(&released)),
        Some(&released),
    )
    .await;
    assert_eq!(second.token, FencingToken(2));
    assert_eq!(second.owner, second_owner);
    assert_ne!(second.rvn, released.rvn);
}

/// `TokenMonotonic`: over many grants by acquire-after-release, takeover and
/// acquire-after-force-unlock, every grant's token is larger than the last.
pub async fn token_monotonic_across_grants(store: SharedStore, prefix: &str) {
    let s = &*store;
    let k = key(prefix, "lock");
    let mut current = applied(s, &acquire(&k, LeaseId::random(), None), None).await;
    let mut tokens = vec![current.token];
    for cycle in 0..24 {
        current = match cycle % 3 {
            0 => {
                let released = applied(s, &release_of(&current), Some(&current)).await;
                applied(
                    s,
                    &acquire(&k, LeaseId::random(), Some(&released)),
                    Some(&released),
                )
                .await
            }
            1 => {
                let taken = takeover_of(&current, LeaseId::random());
                applied(s, &taken, Some(&current)).await
            }
            _ => {
                let forced = applied(s, &force(&k, current.rvn), Some(&current)).await;
                applied(
                    s,
                    &acquire(&k, LeaseId::random(), Some(&forced)),
                    Some(&forced),
                )
                .await
            }
        };
        tokens.push(current.token);
    }
    for pair in tokens.windows(2) {
        assert!(
            pair[0] < pair[1],
            "tokens must strictly increase: {tokens:?}"
        );
    }
}

/// A takeover succeeds only against the record version the waiter observed;
/// the old holder's later heartbeat then fails.
pub async fn takeover_requires_observed_rvn(store: SharedStore, prefix: &str) {
    let s = &*store;
    let k = key(prefix, "lock");
    let never = key(prefix, "never-written");
    conflicts(
        s,
        &takeover(
            &never,
            RecordVersion::random(),
            FencingToken(0),
            LeaseId::random(),
        ),
        None,
    )
    .await;

    let first = applied(s, &acquire(&k, LeaseId::random(), None), None).await;
    let renewed = applied(s, &heartbeat_of(&first), Some(&first)).await;
    // The waiter observed the version before the heartbeat: too old.
    conflicts(s, &takeover_of(&first, LeaseId::random()), Some(&renewed)).await;
    conflicts(
        s,
        &takeover(
            &k,
            RecordVersion::random(),
            renewed.token,
            LeaseId::random(),
        ),
        Some(&renewed),
    )
    .await;
    let taker = LeaseId::random();
    let taken = applied(s, &takeover_of(&renewed, taker), Some(&renewed)).await;
    assert_eq!(taken.owner, taker);
    assert_eq!(taken.token, FencingToken(2));
    // The old holder has lost the lock: its heartbeat and release fail.
    conflicts(s, &heartbeat_of(&renewed), Some(&taken)).await;
    conflicts(s, &release_of(&renewed), Some(&taken)).await;
    // A takeover of a released record at its version is also a grant.
    let released = applied(s, &release_of(&taken), Some(&taken)).await;
    let again = applied(
        s,
        &takeover_of(&released, LeaseId::random()),
        Some(&released),
    )
    .await;
    assert_eq!(again.token, FencingToken(3));
}

/// A heartbeat needs both the owner and its current version; it installs the
/// new version and keeps the token and owner.
pub async fn conditional_heartbeat(store: SharedStore, prefix: &str) {
    let s = &*store;
    let k = key(prefix, "lock");
    conflicts(
        s,
        &heartbeat(
            &key(prefix, "absent"),
            LeaseId::random(),
            RecordVersion::random(),
        ),
        None,
    )
    .await;

    let held = applied(s, &acquire(&k, LeaseId::random(), None), None).await;
    conflicts(s, &heartbeat(&k, LeaseId::random(), held.rvn), Some(&held)).await;
    conflicts(
        s,
        &heartbeat(&k, held.owner, RecordVersion::random()),
        Some(&held),
    )
    .await;
    let beat = heartbeat_of(&held);
    let renewed = applied(s, &beat, Some(&held)).await;
    assert_eq!(renewed.rvn, beat.new_rvn);
    assert_eq!((renewed.token, renewed.owner), (held.token, held.owner));
    assert!(!renewed.released);
    // The version before the heartbeat is no longer good.
    conflicts(s, &heartbeat_of(&held), Some(&renewed)).await;
    let renewed_again = applied(s, &heartbeat_of(&renewed), Some(&renewed)).await;
    assert_eq!(renewed_again.token, held.token);
}

/// `OwnerOnlyRelease`: a release needs the owner at its current version; it
/// keeps the token; a released record cannot be renewed or released again.
pub async fn owner_only_release(store: SharedStore, prefix: &str) {
    let s = &*store;
    let k = key(prefix, "lock");
    conflicts(
        s,
        &release(
            &key(prefix, "absent"),
            LeaseId::random(),
            RecordVersion::random(),
        ),
        None,
    )
    .await;

    let held = applied(s, &acquire(&k, LeaseId::random(), None), None).await;
    conflicts(s, &release(&k, LeaseId::random(), held.rvn), Some(&held)).await;
    conflicts(
        s,
        &release(&k, held.owner, RecordVersion::random()),
        Some(&held),
    )
    .await;
    let released = applied(s, &release_of(&held), Some(&held)).await;
    assert!(released.released);
    assert_eq!(released.token, held.token, "a release keeps the token");
    assert_eq!(released.forced_by, None);
    // Neither the old version nor the released record's own version renews it.
    conflicts(s, &heartbeat_of(&held), Some(&released)).await;
    conflicts(s, &heartbeat(&k, held.owner, released.rvn), Some(&released)).await;
    conflicts(s, &release(&k, held.owner, released.rvn), Some(&released)).await;
    conflicts(s, &release_of(&held), Some(&released)).await;
}

/// A force-unlock succeeds only against the version the operator saw; it
/// releases, records who forced it and keeps the token.
pub async fn force_unlock_needs_seen_version(store: SharedStore, prefix: &str) {
    let s = &*store;
    let k = key(prefix, "lock");
    conflicts(
        s,
        &force(&key(prefix, "absent"), RecordVersion::random()),
        None,
    )
    .await;

    let held = applied(s, &acquire(&k, LeaseId::random(), None), None).await;
    let renewed = applied(s, &heartbeat_of(&held), Some(&held)).await;
    // The operator was shown the record before the heartbeat: refused.
    conflicts(s, &force(&k, held.rvn), Some(&renewed)).await;
    let forced = applied(s, &force(&k, renewed.rvn), Some(&renewed)).await;
    assert!(forced.released);
    assert_eq!(forced.forced_by.as_deref(), Some("operator@admin-host"));
    assert_eq!(forced.token, held.token);
    // The forced-out holder cannot renew or release any more.
    conflicts(s, &heartbeat_of(&renewed), Some(&forced)).await;
    conflicts(s, &release_of(&renewed), Some(&forced)).await;
    let next = applied(
        s,
        &acquire(&k, LeaseId::random(), Some(&forced)),
        Some(&forced),
    )
    .await;
    assert_eq!(next.token, FencingToken(2));
    assert_eq!(next.forced_by, None, "a new grant clears forced_by");
}

/// No operation deletes a record: released and forced records stay readable
/// and listed, keeping their tokens.
pub async fn records_are_never_deleted(store: SharedStore, prefix: &str) {
    let s = &*store;
    let k = key(prefix, "lock");
    let held = applied(s, &acquire(&k, LeaseId::random(), None), None).await;
    let released = applied(s, &release_of(&held), Some(&held)).await;
    assert_eq!(get(s, &k).await, Some(released.clone()));
    assert_eq!(list_under(s, prefix).await, vec![released.clone()]);
    conflicts(s, &release_of(&held), Some(&released)).await;
    let again = applied(
        s,
        &acquire(&k, LeaseId::random(), Some(&released)),
        Some(&released),
    )
    .await;
    let forced = applied(s, &force(&k, again.rvn), Some(&again)).await;
    assert_eq!(get(s, &k).await, Some(forced.clone()));
    assert_eq!(list_under(s, prefix).await, vec![forced]);
}

/// Every failed condition — on an absent, a held and a released record —
/// answers `Conflict` with exactly the current record.
pub async fn conflict_returns_current_record(store: SharedStore, prefix: &str) {
    let s = &*store;
    let absent = key(prefix, "absent");
    for failing in [
        takeover(
            &absent,
            RecordVersion::random(),
            FencingToken(0),
            LeaseId::random(),
        ),
        acquire_from(
            &absent,
            LeaseId::random(),
            GrantFrom::Version {
                rvn: RecordVersion::random(),
                token: FencingToken(3),
            },
        ),
        heartbeat(&absent, LeaseId::random(), RecordVersion::random()),
        release(&absent, LeaseId::random(), RecordVersion::random()),
        force(&absent, RecordVersion::random()),
    ] {
        conflicts(s, &failing, None).await;
    }

    let k = key(prefix, "lock");
    let held = applied(s, &acquire(&k, LeaseId::random(), None), None).await;
    let stranger = LeaseId::random();
    for failing in [
        acquire(&k, stranger, None),
        acquire(&k, stranger, Some(&held)),
        acquire(&k, held.owner, Some(&held)),
        takeover(&k, RecordVersion::random(), held.token, stranger),
        takeover(&k, held.rvn, FencingToken(held.token.0 + 1), stranger),
        heartbeat(&k, stranger, held.rvn),
        heartbeat(&k, held.owner, RecordVersion::random()),
        release(&k, stranger, held.rvn),
        release(&k, held.owner, RecordVersion::random()),
        force(&k, RecordVersion::random()),
    ] {
        conflicts(s, &failing, Some(&held)).await;
    }

    let released = applied(s, &release_of(&held), Some(&held)).await;
    for failing in [
        takeover_of(&held, stranger),
        acquire(&k, stranger, Some(&held)),
        acquire(&k, stranger, None),
        heartbeat(&k, held.owner, released.rvn),
        heartbeat_of(&held),
        release(&k, held.owner, released.rvn),
        force(&k, held.rvn),
    ] {
        conflicts(s, &failing, Some(&released)).await;
    }
}

/// A write whose answer is lost has landed; resending the same op conflicts
/// with a record carrying the op's own `new_rvn`, which
/// [`Outcome::resolve`] turns into `Applied`. A failed request applies
/// nothing, and a lost *conflict* is never mistaken for an own write.
pub async fn lost_response_recognised_by_rvn(store: SharedStore, prefix: &str) {
    let s = &*store;
    let faulty = LoseResponses::new(store.clone());
    let switch = faulty.switch().clone();
    let k = key(prefix, "lock");

    // Each of these ops lands, its answer is lost, and the resend recognises it.
    let mut current: Option<LockRecord> = None;
    for step in ["acquire", "heartbeat", "heartbeat", "release"] {
        let sent = match (&current, step) {
            (None, _) => acquire(&k, LeaseId::random(), None),
            (Some(r), "heartbeat") => heartbeat_of(r),
            (Some(r), _) => release_of(r),
        };
        let landed = sent
            .apply(current.as_ref())
            .unwrap_or_else(|why| panic!("suite bug: {step} does not apply ({why:?})"));
        switch.lose_next_responses(1);
        let first = outcome_of(&sent, faulty.apply(&sent).await);
        assert_eq!(
            first,
            Outcome::Unknown,
            "{step}: the answer should have been lost"
        );
        assert_eq!(
            get(s, &k).await.as_ref(),
            Some(&landed),
            "{step}: an op whose answer was lost must have landed"
        );
        let resent = outcome_of(&sent, faulty.apply(&sent).await);
        assert_eq!(
            resent,
            Outcome::Conflict(Some(landed.clone())),
            "{step}: resending a landed op must conflict with the record it wrote"
        );
        assert_eq!(
            resent.resolve(&sent),
            Outcome::Applied(landed.clone()),
            "{step}: the resend must be recognised by its record version"
        );
        current = Some(landed);
    }
    let released = current.unwrap_or_else(|| panic!("suite bug: no record"));

    // A competitor's conflicting op whose answer is lost: the resend is a real
    // conflict, and must not resolve to Applied.
    let held = applied(
        s,
        &acquire(&k, LeaseId::random(), Some(&released)),
        Some(&released),
    )
    .await;
    let rival = acquire(&k, LeaseId::random(), Some(&released));
    switch.lose_next_responses(1);
    assert_eq!(
        outcome_of(&rival, faulty.apply(&rival).await),
        Outcome::Unknown
    );
    let resent = outcome_of(&rival, faulty.apply(&rival).await);
    assert_eq!(resent, Outcome::Conflict(Some(held.clone())));
    assert_eq!(resent.clone().resolve(&rival), resent);

    // A request that never arrived applies nothing; its resend applies.
    let released = applied(s, &release_of(&held), Some(&held)).await;
    let next = acquire(&k, LeaseId::random(), Some(&released));
    switch.fail_next_requests(1);
    assert_eq!(
        outcome_of(&next, faulty.apply(&next).await),
        Outcome::Unknown
    );
    assert_eq!(
        get(s, &k).await,
        Some(released.clone()),
        "a failed request changed the record"
    );
    let granted = outcome_of(&next, faulty.apply(&next).await);
    assert_eq!(
        granted,
        Outcome::Applied(
            next.apply(Some(&released))
                .unwrap_or_else(|why| panic!("suite bug: {why:?}"))
        )
    );
    assert_eq!(switch.injected(), 6);
}

/// `list` returns, in key order, exactly the records `get` returns, for keys
/// in every state; never-written keys appear in neither.
pub async fn list_and_get_agree(store: SharedStore, prefix: &str) {
    let s = &*store;
    let held = applied(
        s,
        &acquire(&key(prefix, "d-held"), LeaseId::random(), None),
        None,
    )
    .await;
    let released = {
        let r = applied(
            s,
            &acquire(&key(prefix, "b-released"), LeaseId::random(), None),
            None,
        )
        .await;
        applied(s, &release_of(&r), Some(&r)).await
    };
    let forced = {
        let r = applied(
            s,
            &acquire(&key(prefix, "c-forced"), LeaseId::random(), None),
            None,
        )
        .await;
        applied(s, &force(&r.key, r.rvn), Some(&r)).await
    };
    let renewed = {
        let r = applied(
            s,
            &acquire(&key(prefix, "a-renewed"), LeaseId::random(), None),
            None,
        )
        .await;
        applied(s, &heartbeat_of(&r), Some(&r)).await
    };
    let never = key(prefix, "e-never-written");
    assert_eq!(get(s, &never).await, None);

    let listed = list_under(s, prefix).await;
    let expected = vec![renewed, released, forced, held];
    assert_eq!(
        listed, expected,
        "list must return every record, in key order"
    );
    for record in &listed {
        assert_eq!(get(s, &record.key).await.as_ref(), Some(record));
    }
}

/// Records of different keys — including keys that share a prefix, contain
/// unusual characters, or have the maximum length — never affect each other,
/// and tokens count per key.
pub async fn keys_are_independent(store: SharedStore, prefix: &str) {
    let s = &*store;
    let long_head = format!("{prefix}/long-");
    let long = LockKey::new(format!(
        "{long_head}{}",
        "x".repeat(MAX_KEY_BYTES.saturating_sub(long_head.len()))
    ))
    .unwrap_or_else(|e| panic!("suite bug: {e}"));
    assert_eq!(long.as_str().len(), MAX_KEY_BYTES);
    let keys = [
        key(prefix, "a"),
        key(prefix, "a2"),
        key(prefix, "a/b c:ü€ \"q\""),
        long,
    ];
    let mut records = Vec::new();
    for k in &keys {
        let record = applied(s, &acquire(k, LeaseId::random(), None), None).await;
        assert_eq!(record.token, FencingToken::FIRST, "tokens count per key");
        records.push(record);
    }
    // Ops carrying another key's owner and version fail.
    conflicts(
        s,
        &heartbeat(&keys[1], records[0].owner, records[0].rvn),
        Some(&records[1]),
    )
    .await;
    conflicts(
        s,
        &release(&keys[2], records[1].owner, records[1].rvn),
        Some(&records[2]),
    )
    .await;
    conflicts(
        s,
        &takeover(
            &keys[3],
            records[2].rvn,
            records[2].token,
            LeaseId::random(),
        ),
        Some(&records[3]),
    )
    .await;
    conflicts(s, &force(&keys[0], records[3].rvn), Some(&records[0])).await;
    // Releasing and re-granting one key leaves the others as they were.
    let released = applied(s, &release_of(&records[0]), Some(&records[0])).await;
    let regranted = applied(
        s,
        &acquire(&keys[0], LeaseId::random(), Some(&released)),
        Some(&released),
    )
    .await;
    assert_eq!(regranted.token, FencingToken(2));
    for (k, record) in keys.iter().zip(&records).skip(1) {
        assert_eq!(
            get(s, k).await.as_ref(),
            Some(record),
            "{:?} changed",
            k.as_str()
        );
    }
    let mut expected = records;
    expected[0] = regranted;
    expected.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(list_under(s, prefix).await, expected);
}

/// A small deterministic generator (SplitMix64), so a failing sequence can be
/// replayed exactly.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// A long pseudo-random sequence of ops — valid and invalid, on three keys,
/// from three owners, with current, stale and unknown versions — gives
/// exactly the answers and records of the reference semantics
/// ([`LockOp::apply`]). No store may differ from it.
pub async fn written_record_matches_reference_semantics(store: SharedStore, prefix: &str) {
    const STEPS: usize = 300;
    let s = &*store;
    let keys = [key(prefix, "x"), key(prefix, "y"), key(prefix, "z")];
    let owners = [LeaseId::random(), LeaseId::random(), LeaseId::random()];
    let mut rng = SplitMix64(0x5EED_0FC0_FFEE);
    let mut model: BTreeMap<LockKey, LockRecord> = BTreeMap::new();
    let mut seen: Vec<RecordVersion> = Vec::new();
    let (mut writes, mut refusals) = (0, 0);
    for step in 0..STEPS {
        let k = &keys[rng.below(keys.len())];
        let current = model.get(k).cloned();
        let version = match &current {
            Some(r) if rng.chance(60) => r.rvn,
            _ if !seen.is_empty() && rng.chance(50) => seen[rng.below(seen.len())],
            _ => RecordVersion::random(),
        };
        let owner = match &current {
            Some(r) if rng.chance(60) => r.owner,
            _ => owners[rng.below(owners.len())],
        };
        let sent = match rng.below(5) {
            0 => match &current {
                // Sometimes naming a stale or unknown version.
                Some(r) if rng.chance(40) => acquire_from(
                    k,
                    owner,
                    GrantFrom::Version {
                        rvn: version,
                        token: r.token,
                    },
                ),
                _ => acquire(k, owner, current.as_ref()),
            },
            1 => takeover(
                k,
                version,
                current.as_ref().map_or(FencingToken(0), |r| r.token),
                owner,
            ),
            2 => heartbeat(k, owner, version),
            3 => release(k, owner, version),
            _ => force(k, version),
        };
        let answer = store.apply(&sent).await;
        match (sent.apply(current.as_ref()), answer) {
            (Ok(want), Ok(got)) => {
                assert_eq!(got, want, "step {step}: {}", describe_op(&sent));
                seen.push(got.rvn);
                model.insert(k.clone(), got);
                writes += 1;
            }
            (Err(_), Err(StoreError::Conflict { current: answered })) => {
                assert_eq!(
                    answered.as_deref(),
                    current.as_ref(),
                    "step {step}: {} conflicted with the wrong record",
                    describe_op(&sent)
                );
                refusals += 1;
            }
            (want, got) => panic!(
                "step {step}: {} on {current:?}: the reference says {want:?}, the store answered {got:?}",
                describe_op(&sent)
            ),
        }
    }
    assert!(
        writes >= STEPS / 5 && refusals >= STEPS / 5,
        "suite bug: the sequence is lopsided ({writes} writes, {refusals} refusals)"
    );
    for k in &keys {
        assert_eq!(get(s, k).await.as_ref(), model.get(k), "{:?}", k.as_str());
    }
    let expected: Vec<LockRecord> = model.into_values().collect();
    assert_eq!(list_under(s, prefix).await, expected);
}

/// 16 tasks race to acquire one key, round after round: exactly one wins
/// each round, every loser's conflict carries the winner's record, and the
/// winners' tokens strictly increase.
pub async fn concurrent_acquirers_exactly_one_wins(store: SharedStore, prefix: &str) {
    const TASKS: usize = 16;
    const ROUNDS: usize = 5;
    let s = &*store;
    let k = key(prefix, "contended");
    let mut previous: Option<LockRecord> = None;
    for round in 0..ROUNDS {
        let start = Arc::new(tokio::sync::Barrier::new(TASKS));
        let racers: Vec<_> = (0..TASKS)
            .map(|_| {
                let (store, start) = (store.clone(), start.clone());
                let sent = acquire(&k, LeaseId::random(), previous.as_ref());
                tokio::spawn(async move {
                    start.wait().await;
                    let answer = store.apply(&sent).await;
                    (sent, answer)
                })
            })
            .collect();
        let mut answers = Vec::new();
        for racer in racers {
            answers.push(
                racer
                    .await
                    .unwrap_or_else(|e| panic!("round {round}: an acquiring task failed: {e}")),
            );
        }
        let winners: Vec<(&LockOp, &LockRecord)> = answers
            .iter()
            .filter_map(|(sent, answer)| answer.as_ref().ok().map(|r| (sent, r)))
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one acquirer must win; answers: {answers:?}"
        );
        let (winning_op, winner) = winners[0];
        assert_eq!(
            Ok(winner),
            winning_op.apply(previous.as_ref()).as_ref(),
            "round {round}: the winner's record differs from the reference"
        );
        if let Some(prev) = &previous {
            assert!(
                winner.token > prev.token,
                "round {round}: the token did not increase"
            );
        }
        for (sent, answer) in &answers {
            if let Err(e) = answer {
                assert_eq!(
                    e,
                    &StoreError::conflict(Some(winner.clone())),
                    "round {round}: {} lost but did not get the winner's record",
                    describe_op(sent)
                );
            }
        }
        previous = Some(applied(s, &release_of(winner), Some(winner)).await);
    }
    let last = previous.unwrap_or_else(|| panic!("suite bug: no rounds"));
    assert_eq!(last.token, FencingToken(ROUNDS as u64));
}

/// The quorum form of [`concurrent_acquirers_exactly_one_wins`]: members
/// can each pick a different racer (a split vote), so at most one racer
/// wins a round; every winner's token is larger than the last; the
/// losers' partial grants are released, so a lone acquirer then wins.
pub async fn concurrent_acquirers_at_most_one_wins(store: SharedStore, prefix: &str) {
    const TASKS: usize = 16;
    const ROUNDS: usize = 5;
    let s = &*store;
    let k = key(prefix, "contended");
    let mut last_token = FencingToken::NONE;
    for round in 0..ROUNDS {
        let previous = settled(s, &k).await;
        let start = Arc::new(tokio::sync::Barrier::new(TASKS));
        let racers: Vec<_> = (0..TASKS)
            .map(|_| {
                let (store, start) = (store.clone(), start.clone());
                let sent = acquire(&k, LeaseId::random(), previous.as_ref());
                tokio::spawn(async move {
                    start.wait().await;
                    let answer = store.apply(&sent).await;
                    (sent, answer)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for racer in racers {
            let (sent, answer) = racer
                .await
                .unwrap_or_else(|e| panic!("round {round}: an acquiring task failed: {e}"));
            match answer {
                Ok(r) => winners.push(r),
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => panic!("round {round}: {} failed: {e:?}", describe_op(&sent)),
            }
        }
        assert!(
            winners.len() <= 1,
            "round {round}: {} acquirers won at once: {winners:?}",
            winners.len()
        );
        if let Some(winner) = winners.pop() {
            assert!(
                winner.token > last_token,
                "round {round}: the token did not increase"
            );
            last_token = winner.token;
            applied(s, &release_of(&winner), Some(&winner)).await;
        }
    }
    let previous = settled(s, &k).await;
    let lone = s
        .apply(&acquire(&k, LeaseId::random(), previous.as_ref()))
        .await
        .unwrap_or_else(|e| panic!("a lone acquirer after the races must win: {e:?}"));
    assert!(lone.token > last_token);
}

/// The record of `k` once nobody holds it (partial grants released in the
/// background are waited for, up to 10 s).
async fn settled(s: &dyn LockStore, k: &LockKey) -> Option<LockRecord> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let current = get(s, k).await;
        if current.as_ref().is_none_or(|r| r.released) {
            return current;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "partial grants of {k:?} were not released within 10 s: {current:?}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// A grant lands only on the exact version it names: not on another
/// released version, not with another token, not on an absent record when it
/// names a version, not on an existing record when it names absence — so a
/// delayed duplicate of an acquire never lands after the key moved on.
pub async fn grants_name_the_version_they_replace(store: SharedStore, prefix: &str) {
    let s = &*store;
    let k = key(prefix, "lock");
    let first = applied(s, &acquire(&k, LeaseId::random(), None), None).await;
    let released = applied(s, &release_of(&first), Some(&first)).await;
    let stale_version = acquire(&k, LeaseId::random(), Some(&first));
    conflicts(s, &stale_version, Some(&released)).await;
    let wrong_token = acquire_from(
        &k,
        LeaseId::random(),
        GrantFrom::Version {
            rvn: released.rvn,
            token: FencingToken(released.token.0 + 1),
        },
    );
    conflicts(s, &wrong_token, Some(&released)).await;
    conflicts(s, &acquire(&k, LeaseId::random(), None), Some(&released)).await;
    // The acquire that lands, then its delayed duplicate after a release.
    let duplicate = acquire(&k, LeaseId::random(), Some(&released));
    let held = applied(s, &duplicate, Some(&released)).await;
    let released_again = applied(s, &release_of(&held), Some(&held)).await;
    conflicts(s, &duplicate, Some(&released_again)).await;
}

/// `purge` deletes only a released record at the version named, and only
/// after raising the token floor above its token: the next grant of the key
/// (naming its absence and the new floor) gets a token larger than every
/// earlier one, and a grant naming the old floor is refused.
pub async fn purge_raises_the_floor_and_tokens_continue(store: SharedStore, prefix: &str) {
    let s = &*store;
    let k = key(prefix, "purged");
    let other = key(prefix, "kept");
    let floor_before = s
        .token_floor()
        .await
        .unwrap_or_else(|e| panic!("token_floor failed: {e:?}"));
    let mut tokens = Vec::new();
    let mut current = applied(
        s,
        &acquire_from(
            &k,
            LeaseId::random(),
            GrantFrom::Absent {
                floor: floor_before,
            },
        ),
        None,
    )
    .await;
    tokens.push(current.token);
    for _ in 0..3 {
        let released = applied(s, &release_of(&current), Some(&current)).await;
        current = applied(
            s,
            &acquire(&k, LeaseId::random(), Some(&released)),
            Some(&released),
        )
        .await;
        tokens.push(current.token);
    }
    let kept = applied(
        s,
        &acquire_from(
            &other,
            LeaseId::random(),
            GrantFrom::Absent {
                floor: floor_before,
            },
        ),
        None,
    )
    .await;
    // A held record is never purged; nor a released one at another version.
    match s.purge(&k, current.rvn).await {
        Err(StoreError::Conflict { current: answered }) => {
            assert_eq!(
                answered.as_deref(),
                Some(&current),
                "purge of a held record"
            )
        }
        other => panic!("purge of a held record must conflict, got {other:?}"),
    }
    let released = applied(s, &release_of(&current), Some(&current)).await;
    match s.purge(&k, current.rvn).await {
        Err(StoreError::Conflict { current: answered }) => {
            assert_eq!(
                answered.as_deref(),
                Some(&released),
                "purge of a stale version"
            )
        }
        other => panic!("purge of a stale version must conflict, got {other:?}"),
    }
    assert_eq!(get(s, &k).await, Some(released.clone()));
    // The purge.
    let purged = s
        .purge(&k, released.rvn)
        .await
        .unwrap_or_else(|e| panic!("purge of a released record failed: {e:?}"));
    assert_eq!(purged, released);
    assert_eq!(get(s, &k).await, None, "the purged record must be gone");
    assert_eq!(
        get(s, &other).await,
        Some(kept),
        "purge touched another key"
    );
    let floor = s
        .token_floor()
        .await
        .unwrap_or_else(|e| panic!("token_floor failed: {e:?}"));
    assert!(
        floor >= released.token,
        "the floor {floor} must cover the purged token {}",
        released.token
    );
    // Purging again finds nothing.
    match s.purge(&k, released.rvn).await {
        Err(StoreError::Conflict { current: None }) => {}
        other => panic!("purging a gone record must conflict with None, got {other:?}"),
    }
    // A grant naming the old floor (decided before the purge) is refused:
    // the condition includes the store's floor, which the reference
    // semantics of one record do not see.
    if floor != floor_before {
        let stale = acquire_from(
            &k,
            LeaseId::random(),
            GrantFrom::Absent {
                floor: floor_before,
            },
        );
        match s.apply(&stale).await {
            Err(StoreError::Conflict { current: None }) => {}
            other => panic!(
                "a grant naming the floor from before a purge must conflict with None, got {other:?}"
            ),
        }
        assert_eq!(get(s, &k).await, None, "a refused grant wrote a record");
    }
    // The next grant continues above every token ever issued for the key.
    let next = applied(
        s,
        &acquire_from(&k, LeaseId::random(), GrantFrom::Absent { floor }),
        None,
    )
    .await;
    assert!(
        tokens.iter().all(|t| next.token > *t),
        "after a purge the token restarted: {} after {tokens:?}",
        next.token
    );
}

/// A rebase raises the holder's token (only upwards, only by the owner at
/// its current version) and installs a new version, like a heartbeat; the
/// next grant continues above the raised token.
pub async fn rebase_raises_only_the_holders_token(store: SharedStore, prefix: &str) {
    let s = &*store;
    let k = key(prefix, "lock");
    let held = applied(s, &acquire(&k, LeaseId::random(), None), None).await;
    let rebase = |owner: LeaseId, current: RecordVersion, token: u64| {
        op(
            &k,
            OpKind::Rebase {
                owner,
                current,
                token: FencingToken(token),
            },
        )
    };
    conflicts(s, &rebase(held.owner, held.rvn, 1), Some(&held)).await;
    conflicts(s, &rebase(LeaseId::random(), held.rvn, 9), Some(&held)).await;
    conflicts(
        s,
        &rebase(held.owner, RecordVersion::random(), 9),
        Some(&held),
    )
    .await;
    let raised = applied(s, &rebase(held.owner, held.rvn, 9), Some(&held)).await;
    assert_eq!(raised.token, FencingToken(9));
    let renewed = applied(s, &heartbeat_of(&raised), Some(&raised)).await;
    assert_eq!(renewed.token, FencingToken(9));
    let released = applied(s, &release_of(&renewed), Some(&renewed)).await;
    conflicts(s, &rebase(held.owner, released.rvn, 20), Some(&released)).await;
    let next = applied(
        s,
        &acquire(&k, LeaseId::random(), Some(&released)),
        Some(&released),
    )
    .await;
    assert_eq!(next.token, FencingToken(10));
}

/// A grant whose `at_least` is above its next token installs `at_least`
/// (what a quorum store asks of its members); one below changes nothing.
/// Tokens still only increase on the store.
pub async fn grants_install_at_least_the_token_named(store: SharedStore, prefix: &str) {
    let s = &*store;
    let k = key(prefix, "lock");
    let with_at_least = |mut op: LockOp, t: u64| {
        if let OpKind::Acquire { at_least, .. } | OpKind::Takeover { at_least, .. } = &mut op.kind {
            *at_least = FencingToken(t);
        }
        op
    };
    let first = with_at_least(acquire(&k, LeaseId::random(), None), 7);
    let first = applied(s, &first, None).await;
    assert_eq!(first.token, FencingToken(7), "an absent key's grant");
    let released = applied(s, &release_of(&first), Some(&first)).await;
    let low = with_at_least(acquire(&k, LeaseId::random(), Some(&released)), 3);
    let second = applied(s, &low, Some(&released)).await;
    assert_eq!(second.token, FencingToken(8), "a lower at_least is ignored");
    let taken = with_at_least(takeover_of(&second, LeaseId::random()), 40);
    let third = applied(s, &taken, Some(&second)).await;
    assert_eq!(third.token, FencingToken(40), "a takeover's at_least");
    let released = applied(s, &release_of(&third), Some(&third)).await;
    let next = applied(
        s,
        &acquire(&k, LeaseId::random(), Some(&released)),
        Some(&released),
    )
    .await;
    assert_eq!(next.token, FencingToken(41), "tokens continue above it");
}

fn enqueue(key: &LockKey, waiter: LeaseId) -> LockOp {
    op(key, OpKind::Enqueue { waiter })
}

fn with_dequeue(mut op: LockOp, me_at: Option<u32>, skip: Option<LeaseId>) -> LockOp {
    if let OpKind::Acquire { dequeue, .. } | OpKind::Takeover { dequeue, .. } = &mut op.kind {
        *dequeue = Dequeue { me_at, skip };
    }
    op
}

/// The hand-off queue (PROTOCOL.md, "Hand-off queue"): waiters register in
/// order; a registration keeps the record's version, so the holder's
/// heartbeat and release still land; a released record goes to the queue's
/// head only (not to the releaser, a later waiter or a newcomer); a
/// takeover removes its grantee; a head can be skipped only on a released
/// record, and a released record is taken out of turn only by naming the
/// head it skips. A resent registration recognises itself.
pub async fn the_queue_orders_grants_and_keeps_the_lease(store: SharedStore, prefix: &str) {
    let s = &*store;
    assert!(
        s.queues(),
        "the queue cases run only on stores that keep one"
    );
    let k = key(prefix, "lock");
    let (a, b, c, d) = (
        LeaseId::random(),
        LeaseId::random(),
        LeaseId::random(),
        LeaseId::random(),
    );
    let held = applied(s, &acquire(&k, LeaseId::random(), None), None).await;
    let q1 = applied(s, &enqueue(&k, a), Some(&held)).await;
    assert_eq!(
        (q1.rvn, &q1.queue),
        (held.rvn, &vec![a]),
        "an enqueue keeps the version"
    );
    let resend = enqueue(&k, a);
    let answer = s.apply(&resend).await;
    assert_eq!(
        outcome_of(&resend, answer).resolve(&resend),
        Outcome::Applied(q1.clone()),
        "a resent enqueue recognises itself"
    );
    let q2 = applied(s, &enqueue(&k, b), Some(&q1)).await;
    // The holder's writes land on the version it wrote and keep the queue.
    let renewed = applied(s, &heartbeat_of(&held), Some(&q2)).await;
    assert_eq!(renewed.queue, vec![a, b]);
    let released = applied(s, &release_of(&renewed), Some(&renewed)).await;
    // Only the head may take the released record.
    let releaser_again = acquire(&k, held.owner, Some(&released));
    conflicts(s, &releaser_again, Some(&released)).await;
    conflicts(
        s,
        &acquire(&k, LeaseId::random(), Some(&released)),
        Some(&released),
    )
    .await;
    conflicts(
        s,
        &with_dequeue(acquire(&k, b, Some(&released)), Some(1), None),
        Some(&released),
    )
    .await;
    let granted = applied(
        s,
        &with_dequeue(acquire(&k, a, Some(&released)), Some(0), None),
        Some(&released),
    )
    .await;
    assert_eq!((granted.owner, &granted.queue), (a, &vec![b]));
    assert_eq!(granted.token.0, held.token.0 + 1);
    // A takeover names its grantee's place and removes it; it skips nobody
    // on a held record.
    conflicts(
        s,
        &with_dequeue(takeover_of(&granted, c), None, Some(b)),
        Some(&granted),
    )
    .await;
    let taken = applied(
        s,
        &with_dequeue(takeover_of(&granted, b), Some(0), None),
        Some(&granted),
    )
    .await;
    assert!(taken.queue.is_empty());
    // A released record reserved for a head that does not act: skipped.
    let q = applied(s, &enqueue(&k, c), Some(&taken)).await;
    let q = applied(s, &enqueue(&k, d), Some(&q)).await;
    let released = applied(s, &release_of(&q), Some(&q)).await;
    conflicts(
        s,
        &with_dequeue(takeover_of(&released, d), Some(1), Some(d)),
        Some(&released),
    )
    .await;
    conflicts(
        s,
        &with_dequeue(takeover_of(&released, d), Some(1), None),
        Some(&released),
    )
    .await;
    let skipped = applied(
        s,
        &with_dequeue(takeover_of(&released, d), Some(1), Some(c)),
        Some(&released),
    )
    .await;
    assert_eq!((skipped.owner, skipped.queue.len()), (d, 0));
}

/// A queue holds at most [`LockRecord::MAX_QUEUE`] waiters; a waiter leaves
/// from the place it names (another place is refused), and a record that
/// does not exist takes no registration.
pub async fn the_queue_is_bounded_and_left_by_place(store: SharedStore, prefix: &str) {
    let s = &*store;
    let k = key(prefix, "lock");
    conflicts(s, &enqueue(&k, LeaseId::random()), None).await;
    let mut current = applied(s, &acquire(&k, LeaseId::random(), None), None).await;
    let waiters: Vec<LeaseId> = (0..LockRecord::MAX_QUEUE)
        .map(|_| LeaseId::random())
        .collect();
    for w in &waiters {
        current = applied(s, &enqueue(&k, *w), Some(&current)).await;
    }
    conflicts(s, &enqueue(&k, LeaseId::random()), Some(&current)).await;
    let leave = |waiter: LeaseId, at: u32| op(&k, OpKind::Leave { waiter, at });
    conflicts(s, &leave(waiters[3], 2), Some(&current)).await;
    let left = applied(s, &leave(waiters[3], 3), Some(&current)).await;
    assert_eq!(left.queue.len(), LockRecord::MAX_QUEUE - 1);
    assert!(!left.queue.contains(&waiters[3]));
    assert_eq!(left.rvn, current.rvn, "a leave keeps the version");
    let again = leave(waiters[3], 3);
    let answer = s.apply(&again).await;
    assert_eq!(
        outcome_of(&again, answer).resolve(&again),
        Outcome::Applied(left.clone()),
        "a resent leave recognises itself"
    );
    applied(s, &enqueue(&k, LeaseId::random()), Some(&left)).await;
}

#[cfg(test)]
mod tests {
    //! The suite must pass the reference store and fail stores with typical bugs.

    use super::*;
    use crate::store::apply_reference;
    use crate::store::memory::MemoryStore;
    use std::sync::Mutex;
    use std::time::Duration;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Bug {
        ConflictWithoutRecord,
        TokenKeptOnRegrant,
        HeartbeatIgnoresOwner,
        DeletesOnRelease,
        ReadThenWriteNotAtomic,
        ListUnsorted,
        OwnRecordVersion,
        PurgeLeavesTheFloor,
        GrantIgnoresTheFloor,
        GrantIgnoresTheQueue,
        QueueWriteChangesTheVersion,
    }

    /// A store with one deliberate bug.
    #[derive(Debug)]
    struct Buggy {
        bug: Bug,
        records: Mutex<BTreeMap<LockKey, LockRecord>>,
        floor: Mutex<FencingToken>,
    }

    impl Buggy {
        fn current(&self, key: &LockKey) -> Option<LockRecord> {
            self.records.lock().unwrap().get(key).cloned()
        }
    }

    #[async_trait]
    impl LockStore for Buggy {
        async fn apply(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
            if self.bug == Bug::ReadThenWriteNotAtomic {
                let current = self.current(&op.key);
                let next = apply_reference(op, current.as_ref())?;
                tokio::time::sleep(Duration::from_millis(2)).await;
                self.records
                    .lock()
                    .unwrap()
                    .insert(op.key.clone(), next.clone());
                return Ok(next);
            }
            let mut records = self.records.lock().unwrap();
            let current = records.get(&op.key).cloned();
            if self.bug != Bug::GrantIgnoresTheFloor {
                crate::store::check_floor(op, current.as_ref(), *self.floor.lock().unwrap())?;
            }
            let mut lenient = op.clone();
            if let (Bug::HeartbeatIgnoresOwner, OpKind::Heartbeat { owner, .. }, Some(r)) =
                (self.bug, &mut lenient.kind, &current)
            {
                *owner = r.owner;
            }
            let mut seen = current.clone();
            if let (Bug::GrantIgnoresTheQueue, Some(r), true) = (self.bug, &mut seen, op.is_grant())
            {
                r.queue.clear();
                if let OpKind::Acquire { dequeue, .. } | OpKind::Takeover { dequeue, .. } =
                    &mut lenient.kind
                {
                    *dequeue = Dequeue::default();
                }
            }
            let mut next = match apply_reference(&lenient, seen.as_ref()) {
                Err(_) if self.bug == Bug::ConflictWithoutRecord => {
                    return Err(StoreError::conflict(None))
                }
                other => other?,
            };
            match (self.bug, &current) {
                (Bug::TokenKeptOnRegrant, Some(r)) => next.token = r.token,
                (Bug::OwnRecordVersion, _) => next.rvn = RecordVersion::random(),
                (Bug::QueueWriteChangesTheVersion, _) if op.kind.is_queue_write() => {
                    next.rvn = RecordVersion::random()
                }
                _ => {}
            }
            if self.bug == Bug::DeletesOnRelease && next.released {
                records.remove(&op.key);
            } else {
                records.insert(op.key.clone(), next.clone());
            }
            Ok(next)
        }
        async fn get(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError> {
            Ok(self.current(key))
        }
        async fn list(&self) -> Result<Listing, StoreError> {
            let mut all: Vec<LockRecord> = self.records.lock().unwrap().values().cloned().collect();
            if self.bug == Bug::ListUnsorted {
                all.reverse();
            }
            Ok(Listing {
                records: all,
                damaged: Vec::new(),
            })
        }
        async fn token_floor(&self) -> Result<FencingToken, StoreError> {
            Ok(*self.floor.lock().unwrap())
        }
        async fn purge(
            &self,
            key: &LockKey,
            observed: RecordVersion,
        ) -> Result<LockRecord, StoreError> {
            let mut records = self.records.lock().unwrap();
            let purged = crate::store::purge_reference(records.get(key), observed)?;
            if self.bug != Bug::PurgeLeavesTheFloor {
                let mut floor = self.floor.lock().unwrap();
                *floor = (*floor).max(purged.token);
            }
            records.remove(key);
            Ok(purged)
        }
        fn describe(&self) -> String {
            format!("buggy://{:?}", self.bug)
        }
        fn queues(&self) -> bool {
            true
        }
    }

    fn passes(store: SharedStore) -> bool {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime().block_on(run_all(store, &unique_prefix("meta")));
        }))
        .is_ok()
    }

    #[test]
    fn the_reference_store_passes() {
        assert!(passes(Arc::new(MemoryStore::new())));
    }

    #[test]
    fn every_planted_bug_is_caught() {
        for bug in [
            Bug::ConflictWithoutRecord,
            Bug::TokenKeptOnRegrant,
            Bug::HeartbeatIgnoresOwner,
            Bug::DeletesOnRelease,
            Bug::ReadThenWriteNotAtomic,
            Bug::ListUnsorted,
            Bug::OwnRecordVersion,
            Bug::PurgeLeavesTheFloor,
            Bug::GrantIgnoresTheFloor,
            Bug::GrantIgnoresTheQueue,
            Bug::QueueWriteChangesTheVersion,
        ] {
            let store = Arc::new(Buggy {
                bug,
                records: Mutex::new(BTreeMap::new()),
                floor: Mutex::new(FencingToken(0)),
            });
            assert!(!passes(store), "the suite passed a store with bug {bug:?}");
        }
    }

    #[test]
    fn cases_lists_every_case_once() {
        let mut names = CASES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CASES.len());
        assert_eq!(CASES.len(), 21);
    }
}
