//! The S3 lock store against moto (the S3 server `scripts/services.sh`
//! starts): the conformance suite, the request cost of the ETag cache,
//! racing stores, damaged objects, lost answers and errors; the conditional-
//! write probe against moto and against a server that ignores conditions.
//!
//! Needs moto: `eval "$(scripts/services.sh start)"` exports
//! `STATELOCK_TEST_S3_ENDPOINT` (and test credentials). Without it these
//! tests fail; `STATELOCK_SKIP_SERVICE_TESTS=1` skips them explicitly. The
//! tests marked "needs no moto" use a fake server of their own.
#![cfg(feature = "s3")]

mod common;

use common::s3::{
    endpoint, ensure_bucket, location, raw_client, raw_delete, raw_get, raw_list, raw_put,
    unique_prefix, Behaviour, FakeS3, BUCKET,
};
use statelock::client::{AcquireOptions, LockClient, LockError};
use statelock::protocol::{Backoff, GrantFrom, LeaseId, LockOp, OpKind, RecordVersion, WallTime};
use statelock::store::s3::probe::{probe, CHECKS};
use statelock::store::s3::{RequestCounts, S3LockStore};
use statelock::store::url::{S3Location, StoreUrl};
use statelock::store::{open_lock_store, LockStore, StoreError};
use statelock::testkit::LoseResponses;
use statelock::{FencingToken, HolderInfo, LockKey, LockRecord};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A store over the shared bucket (created if needed) under a fresh prefix.
async fn store(endpoint: &str, name: &str) -> S3LockStore {
    ensure_bucket(&raw_client(endpoint), BUCKET).await;
    S3LockStore::connect(&location(endpoint, BUCKET, &unique_prefix(name)))
        .await
        .expect("connect")
}

/// Another store (its own SDK client and cache) over the same objects.
async fn twin(endpoint: &str, of: &S3LockStore) -> S3LockStore {
    let url = StoreUrl::parse(&of.describe()).expect("the store's URL parses");
    let StoreUrl::S3(location) = url else {
        panic!("{url:?}")
    };
    assert_eq!(location.endpoint.as_deref(), Some(endpoint));
    S3LockStore::connect(&location).await.expect("connect")
}

/// A store for the conformance suite under a prefix of its own (one case
/// raises the token floor, which lives under the prefix), or a memory
/// store when the service tests are explicitly skipped.
async fn conformance_store() -> Arc<dyn LockStore> {
    match endpoint() {
        Some(endpoint) => Arc::new(store(&endpoint, "conformance").await),
        None => Arc::new(statelock::store::memory::MemoryStore::new()),
    }
}

mod conformance {
    use super::*;

    statelock::lock_store_conformance!(conformance_store());
}

/// The state backend for the state conformance suite, under a prefix of its
/// own (or a memory backend when the service tests are explicitly skipped).
async fn state_backend() -> statelock::testkit::state_conformance::SharedBackend {
    match endpoint() {
        Some(endpoint) => {
            common::s3::ensure_bucket(&common::s3::raw_client(&endpoint), BUCKET).await;
            let at = location(&endpoint, BUCKET, &unique_prefix("state"));
            Arc::new(
                statelock::state::s3::S3StateBackend::connect(&at)
                    .await
                    .expect("connect"),
            )
        }
        None => Arc::new(statelock::state::backend::MemoryBackend::new()),
    }
}

mod state_conformance {
    use super::*;

    statelock::state_backend_conformance!(state_backend());
}

fn key(name: &str) -> LockKey {
    LockKey::new(name).unwrap()
}

fn op(key: &LockKey, kind: OpKind) -> LockOp {
    LockOp {
        key: key.clone(),
        new_rvn: RecordVersion::random(),
        at: WallTime(1_736_950_800_000),
        kind,
    }
}

fn acquire(key: &LockKey, from: GrantFrom) -> LockOp {
    op(
        key,
        OpKind::Acquire {
            from,
            owner: LeaseId::random(),
            lease_ms: 20_000,
            holder: HolderInfo::named("tester"),
            at_least: FencingToken::NONE,
            dequeue: Default::default(),
        },
    )
}

fn absent() -> GrantFrom {
    GrantFrom::Absent {
        floor: FencingToken(0),
    }
}

fn heartbeat(r: &LockRecord) -> LockOp {
    op(
        &r.key,
        OpKind::Heartbeat {
            owner: r.owner,
            current: r.rvn,
        },
    )
}

fn release(r: &LockRecord) -> LockOp {
    op(
        &r.key,
        OpKind::Release {
            owner: r.owner,
            current: r.rvn,
        },
    )
}

fn opts(name: &str, lease: Duration, wait: Option<Duration>) -> AcquireOptions {
    AcquireOptions {
        lease,
        wait,
        backoff: Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(200),
            poll: Duration::from_millis(20),
        },
        holder: HolderInfo::named(name),
        ..AcquireOptions::default()
    }
}

/// Requests sent by `store` while `work` ran.
async fn cost<T>(
    store: &S3LockStore,
    work: impl std::future::Future<Output = T>,
) -> (T, RequestCounts) {
    let before = store.request_counts();
    let out = work.await;
    (out, store.request_counts().since(before))
}

fn only(get: u64, put: u64) -> RequestCounts {
    RequestCounts {
        get,
        put,
        ..RequestCounts::default()
    }
}

/// With the ETag cache, a heartbeat, a release and a grant of the version
/// last read are one `PutObject` each; without it (another store), one read
/// more. Also through a client: heartbeats send no reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_makes_writes_one_request() {
    let Some(endpoint) = endpoint() else { return };
    let s = store(&endpoint, "cache").await;
    let k = key("cache/lock");
    // The first write of a key reads it, reads the floor and creates it
    // (the store's first write also probed the service: not counted here).
    s.apply(&acquire(&key("cache/warm-up"), absent()))
        .await
        .expect("warm up");
    let (held, spent) = cost(&s, s.apply(&acquire(&k, absent()))).await;
    let held = held.expect("acquire");
    assert_eq!(spent, only(2, 1), "record read, floor read, create");

    let mut current = held;
    for _ in 0..3 {
        let (beat, spent) = cost(&s, s.apply(&heartbeat(&current))).await;
        current = beat.expect("heartbeat");
        assert_eq!(spent, only(0, 1), "a heartbeat is one PutObject");
    }
    let (released, spent) = cost(&s, s.apply(&release(&current))).await;
    let released = released.expect("release");
    assert_eq!(spent, only(0, 1), "a release is one PutObject");
    let from = GrantFrom::of(Some(&released), FencingToken(0));
    let (granted, spent) = cost(&s, s.apply(&acquire(&k, from))).await;
    let granted = granted.expect("grant of the released version");
    assert_eq!(granted.token, FencingToken(2));
    assert_eq!(
        spent,
        only(0, 1),
        "a grant of the version read is one PutObject"
    );

    // Another store has no cache: it reads first.
    let other = twin(&endpoint, &s).await;
    other
        .apply(&acquire(&key("cache/other-warm-up"), absent()))
        .await
        .expect("warm up");
    let (beat, spent) = cost(&other, other.apply(&heartbeat(&granted))).await;
    beat.expect("heartbeat through another store");
    assert_eq!(spent, only(1, 1), "no cache: one read, one write");

    // Through a client: after the acquire, its heartbeats only write.
    let shared = Arc::new(twin(&endpoint, &s).await);
    let client = LockClient::new(shared.clone());
    let guard = client
        .acquire(
            &key("cache/client"),
            opts("client", Duration::from_millis(900), Some(Duration::ZERO)),
        )
        .await
        .expect("acquire");
    let before = shared.request_counts();
    let deadline = Instant::now() + Duration::from_secs(10);
    while shared.request_counts().since(before).put < 3 {
        assert!(Instant::now() < deadline, "the holder stopped renewing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let spent = shared.request_counts().since(before);
    assert_eq!(
        spent,
        only(0, spent.put),
        "heartbeats through the client are one PutObject each"
    );
    assert!(guard.is_valid());
    guard.release().await.expect("release");
}

/// A refused condition costs one read: the op is decided again on the
/// current record — a conflict if its condition fails there, one more write
/// if it holds (the object was replaced by an identical record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_condition_costs_one_read() {
    let Some(endpoint) = endpoint() else { return };
    let a = store(&endpoint, "refused").await;
    let b = twin(&endpoint, &a).await;
    let raw = raw_client(&endpoint);
    let k = key("refused/lock");
    let held = a.apply(&acquire(&k, absent())).await.expect("acquire");

    // The same record, written by someone else (compact JSON): new ETag.
    let object = a.record_object(&k);
    let bytes = raw_get(&raw, BUCKET, &object).await.expect("the record");
    let value: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
    raw_put(&raw, BUCKET, &object, &serde_json::to_vec(&value).unwrap()).await;
    let beat = heartbeat(&held);
    let (renewed, spent) = cost(&a, a.apply(&beat)).await;
    let renewed = renewed.expect("the condition still holds on the record read");
    assert_eq!(renewed, beat.apply(Some(&held)).unwrap());
    assert_eq!(spent, only(1, 2), "refused, one read, written again");

    // Another store forces it: the holder's heartbeat is refused, reads
    // once, and conflicts with the forced record.
    let forced = b
        .apply(&op(
            &k,
            OpKind::ForceUnlock {
                observed: renewed.rvn,
                by: "ops".into(),
            },
        ))
        .await
        .expect("force");
    let (lost, spent) = cost(&a, a.apply(&heartbeat(&renewed))).await;
    assert_eq!(lost, Err(StoreError::conflict(Some(forced.clone()))));
    assert_eq!(spent, only(1, 1), "refused, one read, conflict");
    // The read refreshed the cache: the next grant is one request.
    let from = GrantFrom::of(Some(&forced), FencingToken(0));
    let (granted, spent) = cost(&a, a.apply(&acquire(&k, from))).await;
    assert_eq!(granted.expect("grant").token, FencingToken(2));
    assert_eq!(spent, only(0, 1));
}

/// `If-Match` on a record that is gone (404) is decided on "absent": a
/// grant naming the old version conflicts with no record, in one request;
/// a grant naming absence then creates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_record_is_decided_as_absent() {
    let Some(endpoint) = endpoint() else { return };
    let s = store(&endpoint, "vanished").await;
    let k = key("vanished/lock");
    let held = s.apply(&acquire(&k, absent())).await.expect("acquire");
    let released = s.apply(&release(&held)).await.expect("release");
    raw_delete(&raw_client(&endpoint), BUCKET, &s.record_object(&k)).await;
    let from = GrantFrom::of(Some(&released), FencingToken(0));
    let (answer, spent) = cost(&s, s.apply(&acquire(&k, from))).await;
    assert_eq!(answer, Err(StoreError::conflict(None)));
    assert_eq!(spent, only(0, 1), "one If-Match write, answered 404");
    let (again, spent) = cost(&s, s.apply(&acquire(&k, absent()))).await;
    assert_eq!(
        again.expect("grant of the absent record").token,
        FencingToken(1)
    );
    assert_eq!(spent, only(2, 1), "record read, floor read, create");
}

/// 16 clients, each over its own store (own SDK client, own cache), race
/// for one key round after round: exactly one wins each round, with the
/// next token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_stores_race_one_key() {
    let Some(endpoint) = endpoint() else { return };
    let first = store(&endpoint, "race").await;
    let mut clients = Vec::new();
    for _ in 0..16 {
        clients.push(LockClient::new(twin(&endpoint, &first).await));
    }
    let k = key("race/contended");
    let mut last = FencingToken(0);
    for round in 0..6 {
        let start = Arc::new(tokio::sync::Barrier::new(clients.len()));
        let tasks: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(i, client)| {
                let (client, k, start) = (client.clone(), k.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    let name = format!("racer-{i}");
                    client
                        .acquire(
                            &k,
                            opts(&name, Duration::from_secs(20), Some(Duration::ZERO)),
                        )
                        .await
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            match task.await.expect("racing task") {
                Ok(guard) => winners.push(guard),
                Err(LockError::Held { .. }) => {}
                Err(other) => panic!("round {round}: unexpected error {other}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one store must grant"
        );
        let winner = winners.pop().expect("one winner");
        assert_eq!(
            winner.token(),
            FencingToken(last.0 + 1),
            "round {round}: one grant per round"
        );
        last = winner.token();
        winner.release().await.expect("release");
    }
}

/// Damaged objects — not JSON, another format, an empty body, another
/// key's record, a stray object — are corrupt: never overwritten, reported
/// by `get` and `apply`, listed apart from the good records. A damaged
/// token floor stops grants of absent records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_objects_are_corrupt_and_never_overwritten() {
    let Some(endpoint) = endpoint() else { return };
    let s = store(&endpoint, "damaged").await;
    let raw = raw_client(&endpoint);
    let good = s
        .apply(&acquire(&key("damaged/good"), absent()))
        .await
        .expect("acquire");
    let moved = s
        .apply(&acquire(&key("damaged/moved"), absent()))
        .await
        .expect("acquire");
    let moved_bytes = raw_get(&raw, BUCKET, &s.record_object(&moved.key))
        .await
        .expect("record");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("damaged/not-json", b"{this is not json".to_vec()),
        ("damaged/empty", Vec::new()),
        (
            "damaged/foreign",
            br#"{"format":"statelock-lock-v9","record":{}}"#.to_vec(),
        ),
        ("damaged/elsewhere", moved_bytes),
    ];
    for (name, bytes) in &cases {
        raw_put(&raw, BUCKET, &s.record_object(&key(name)), bytes).await;
    }
    let prefix = s.record_object(&key("x"));
    let locks_dir = prefix.trim_end_matches("x.json");
    let stray = format!("{locks_dir}README.txt");
    raw_put(&raw, BUCKET, &stray, b"hello").await;

    for (name, bytes) in &cases {
        let k = key(name);
        match s.get(&k).await {
            Err(StoreError::Corrupt { key, reason }) => {
                assert_eq!(key, *name);
                assert!(reason.contains(&s.record_object(&k)), "{reason}");
            }
            other => panic!("{name}: expected Corrupt, got {other:?}"),
        }
        for sent in [
            acquire(&k, absent()),
            acquire(
                &k,
                GrantFrom::Version {
                    rvn: RecordVersion(1),
                    token: FencingToken(1),
                },
            ),
        ] {
            match s.apply(&sent).await {
                Err(StoreError::Corrupt { .. }) => {}
                other => panic!("{name}: a write must report Corrupt, got {other:?}"),
            }
        }
        assert_eq!(
            raw_get(&raw, BUCKET, &s.record_object(&k)).await.as_ref(),
            Some(bytes),
            "{name} was overwritten"
        );
    }
    let listing = s.list().await.expect("list");
    let keys: Vec<&str> = listing.records.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, vec!["damaged/good", "damaged/moved"]);
    assert_eq!(listing.records[0], good);
    let damaged: Vec<&str> = listing.damaged.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(damaged.len(), cases.len() + 1, "{:?}", listing.damaged);
    assert!(damaged.contains(&stray.as_str()), "{damaged:?}");
    assert!(
        listing
            .damaged
            .iter()
            .any(|d| d.reason.contains("belongs at")),
        "{:?}",
        listing.damaged
    );

    // A damaged floor stops grants of absent records, and is kept.
    raw_put(&raw, BUCKET, &s.floor_object(), b"floor: 3").await;
    assert!(matches!(
        s.token_floor().await,
        Err(StoreError::Corrupt { .. })
    ));
    match s.apply(&acquire(&key("damaged/new"), absent())).await {
        Err(StoreError::Corrupt { key, .. }) => assert_eq!(key, s.floor_object()),
        other => panic!("expected a corrupt floor, got {other:?}"),
    }
    assert_eq!(
        raw_get(&raw, BUCKET, &s.floor_object()).await.as_deref(),
        Some(&b"floor: 3"[..])
    );
    assert_eq!(s.get(&key("damaged/new")).await, Ok(None));
}

/// Keys with characters S3 or URLs treat specially get readable, distinct
/// objects under `PREFIX/locks/`, and round-trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_keys_round_trip() {
    let Some(endpoint) = endpoint() else { return };
    let s = store(&endpoint, "odd-keys").await;
    let raw = raw_client(&endpoint);
    let keys = [
        "stack:web:env:prod",
        "a b/c+d",
        "ünï/cödé",
        "(x)*!'@=,",
        "..",
        "/lead//double/",
        "100%",
        "sha256-abc",
        &"long/".repeat(200),
    ];
    for name in keys {
        let k = key(name);
        let record = s.apply(&acquire(&k, absent())).await.expect(name);
        assert_eq!(s.get(&k).await, Ok(Some(record.clone())), "{name}");
        let object = s.record_object(&k);
        assert!(raw_get(&raw, BUCKET, &object).await.is_some(), "{object}");
    }
    assert_eq!(
        s.record_object(&key("stack:web:env:prod"))
            .rsplit("/locks/")
            .next(),
        Some("stack:web:env:prod.json")
    );
    let listing = s.list().await.expect("list");
    assert!(listing.damaged.is_empty(), "{:?}", listing.damaged);
    assert_eq!(listing.records.len(), keys.len());
}

/// An op whose answer is lost has landed; its resend finds the op's own
/// version and the client resolves it as applied (one grant, one token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_are_recognised_by_the_client() {
    let Some(endpoint) = endpoint() else { return };
    let faulty = LoseResponses::new(store(&endpoint, "lost").await);
    let switch = faulty.switch().clone();
    let client = LockClient::new(faulty);
    let k = key("lost/lock");
    switch.lose_next_responses(1);
    let guard = client
        .acquire(
            &k,
            opts(
                "lost",
                Duration::from_secs(20),
                Some(Duration::from_secs(5)),
            ),
        )
        .await
        .expect("acquire despite the lost answer");
    assert_eq!(switch.injected(), 1);
    assert_eq!(guard.token(), FencingToken(1));
    switch.lose_next_responses(1);
    guard
        .release()
        .await
        .expect("release despite the lost answer");
    let record = client.store().get(&k).await.expect("get").expect("record");
    assert!(record.released);
    assert_eq!(record.token, FencingToken(1));
}

/// `purge` through the client raises the floor object, deletes the record,
/// and the next grant continues above it; the floor never goes down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_keeps_tokens_in_the_floor_object() {
    let Some(endpoint) = endpoint() else { return };
    let s = store(&endpoint, "purge").await;
    let raw = raw_client(&endpoint);
    let k = key("purge/lock");
    let mut current = s.apply(&acquire(&k, absent())).await.expect("acquire");
    for _ in 0..3 {
        let released = s.apply(&release(&current)).await.expect("release");
        let from = GrantFrom::of(Some(&released), FencingToken(0));
        current = s.apply(&acquire(&k, from)).await.expect("grant");
    }
    let released = s.apply(&release(&current)).await.expect("release");
    assert_eq!(released.token, FencingToken(4));
    // A higher floor already there is kept.
    let low = key("purge/low");
    let low_record = s.apply(&acquire(&low, absent())).await.expect("acquire");
    let low_released = s.apply(&release(&low_record)).await.expect("release");
    assert_eq!(
        s.purge(&k, released.rvn).await.expect("purge"),
        released.clone()
    );
    assert_eq!(s.token_floor().await, Ok(FencingToken(4)));
    assert_eq!(
        s.purge(&low, low_released.rvn).await.expect("purge"),
        low_released
    );
    assert_eq!(s.token_floor().await, Ok(FencingToken(4)), "never lowered");
    let floor = raw_get(&raw, BUCKET, &s.floor_object())
        .await
        .expect("floor");
    let floor: serde_json::Value = serde_json::from_slice(&floor).expect("JSON");
    assert_eq!(floor["format"], "statelock-token-floor-v1");
    assert_eq!(floor["floor"], 4);
    assert!(raw_get(&raw, BUCKET, &s.record_object(&k)).await.is_none());
    let next = s
        .apply(&acquire(
            &k,
            GrantFrom::Absent {
                floor: FencingToken(4),
            },
        ))
        .await
        .expect("grant after the purge");
    assert_eq!(next.token, FencingToken(5));
}

/// The SDK may resend reads but never a write: a verbatim resend could land
/// after the writer's later operations. Needs no moto.
#[tokio::test]
async fn sdk_resends_reads_but_never_writes() {
    let failing = FakeS3::start(Behaviour {
        honour_conditions: true,
        fail: vec!["GET", "PUT", "DELETE", "HEAD"],
        ..Behaviour::default()
    });
    let mut loc = location(&failing.endpoint(), BUCKET, "p");
    loc.accept_unsafe_conditional_writes = true;
    let s = S3LockStore::connect(&loc).await.expect("connect");
    let k = key("resend/probe");
    let read = s.get(&k).await;
    assert!(matches!(read, Err(StoreError::Unavailable(_))), "{read:?}");
    let methods: Vec<String> = failing.take_log().into_iter().map(|(m, _)| m).collect();
    assert_eq!(methods, vec!["GET"; 3], "a read is retried");

    // Reads succeed, writes fail.
    let writes_fail = FakeS3::start(Behaviour {
        honour_conditions: true,
        fail: vec!["PUT", "DELETE"],
        ..Behaviour::default()
    });
    let mut loc = location(&writes_fail.endpoint(), BUCKET, "p");
    loc.accept_unsafe_conditional_writes = true;
    let s = S3LockStore::connect(&loc).await.expect("connect");
    let written = s.apply(&acquire(&k, absent())).await;
    assert!(
        matches!(written, Err(StoreError::Unavailable(_))),
        "{written:?}"
    );
    let methods: Vec<String> = writes_fail.take_log().into_iter().map(|(m, _)| m).collect();
    assert_eq!(
        methods,
        vec!["GET", "GET", "PUT"],
        "record, floor, one create"
    );

    // A purge's delete is sent once too (the floor write works here).
    let deletes_fail = FakeS3::start(Behaviour {
        honour_conditions: true,
        fail: vec!["DELETE"],
        ..Behaviour::default()
    });
    let mut loc = location(&deletes_fail.endpoint(), BUCKET, "p");
    loc.accept_unsafe_conditional_writes = true;
    let s = S3LockStore::connect(&loc).await.expect("connect");
    let held = s.apply(&acquire(&k, absent())).await.expect("acquire");
    let released = s.apply(&release(&held)).await.expect("release");
    deletes_fail.take_log();
    let purged = s.purge(&k, released.rvn).await;
    assert!(
        matches!(purged, Err(StoreError::Unavailable(_))),
        "{purged:?}"
    );
    let deletes = deletes_fail
        .take_log()
        .into_iter()
        .filter(|(m, _)| m == "DELETE")
        .count();
    assert_eq!(deletes, 1, "a delete is sent once");

    // Terraform's format: one PutObject.
    let mut tf = loc.clone();
    tf.endpoint = Some(writes_fail.endpoint());
    tf.format = statelock::store::url::LockFormat::Terraform;
    let tf = statelock::store::s3::terraform::TerraformS3Store::connect(&tf)
        .await
        .expect("connect");
    let written = tf
        .apply(&acquire(&key("state/terraform.tfstate"), absent()))
        .await;
    assert!(written.is_err(), "{written:?}");
    let puts = writes_fail
        .take_log()
        .into_iter()
        .filter(|(m, _)| m == "PUT")
        .count();
    assert_eq!(puts, 1, "a Terraform lockfile write is sent once");
}

/// The probe passes on moto, leaves only its marker, and a store opened on
/// a bucket that passed works at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_passes_on_moto() {
    let Some(endpoint) = endpoint() else { return };
    let raw = raw_client(&endpoint);
    ensure_bucket(&raw, BUCKET).await;
    let prefix = unique_prefix("probe");
    let report = probe(&location(&endpoint, BUCKET, &prefix))
        .await
        .expect("the probe runs");
    assert!(report.passed(), "{report:#?}");
    let names: Vec<&str> = report.checks.iter().map(|c| c.name).collect();
    assert_eq!(names, CHECKS.to_vec());
    assert_eq!(
        raw_list(&raw, BUCKET, &format!("{prefix}/")).await,
        vec![format!("{prefix}/.statelock-probe/passed.json")],
        "only the marker is left"
    );
}

/// A server that accepts the conditional headers and ignores them fails
/// the probe (one line per check), and stores over it refuse to write —
/// naming the failed check and the override — unless the URL accepts the
/// danger. Needs no moto.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_refuse_a_service_that_ignores_conditions() {
    let careless = FakeS3::start(Behaviour::default());
    let loc = location(&careless.endpoint(), "careless-bucket", "team");
    let report = probe(&loc).await.expect("the probe runs");
    assert!(!report.passed());
    let verdicts: Vec<(&str, bool)> = report.checks.iter().map(|c| (c.name, c.passed)).collect();
    assert_eq!(
        verdicts,
        vec![
            (CHECKS[0], true),
            (CHECKS[1], false),
            (CHECKS[2], false),
            (CHECKS[3], true),
            (CHECKS[4], false),
            (CHECKS[5], false),
            (CHECKS[6], true),
        ]
    );
    assert!(
        report.checks[1].seen.contains("overwritten"),
        "{:?}",
        report.checks[1]
    );
    // No marker, no scratch object left.
    careless.take_log();
    let s = S3LockStore::connect(&loc).await.expect("connect");
    let k = key("careless/lock");
    for _ in 0..2 {
        match s.apply(&acquire(&k, absent())).await {
            Err(StoreError::Misconfigured(why)) => {
                assert!(why.contains(CHECKS[1]), "{why}");
                assert!(
                    why.contains("accept_unsafe_conditional_writes=true"),
                    "{why}"
                );
                common::assert_one_readable_line(&why);
            }
            other => panic!("the store must refuse, got {other:?}"),
        }
    }
    let log = careless.take_log();
    assert!(
        log.iter()
            .all(|(_, path)| path.contains(".statelock-probe")),
        "only the probe touched the bucket: {log:?}"
    );
    assert_eq!(s.get(&k).await, Ok(None), "reads need no probe");
    let tf = statelock::store::s3::terraform::TerraformS3Store::connect(&S3Location {
        format: statelock::store::url::LockFormat::Terraform,
        ..loc.clone()
    })
    .await
    .expect("connect");
    assert!(matches!(
        tf.apply(&acquire(&key("app.tfstate"), absent())).await,
        Err(StoreError::Misconfigured(_))
    ));

    // Accepting the danger: the store writes (and this server lets it).
    let unsafe_loc = S3Location {
        accept_unsafe_conditional_writes: true,
        ..loc
    };
    let s = S3LockStore::connect(&unsafe_loc).await.expect("connect");
    assert!(s
        .describe()
        .ends_with("accept_unsafe_conditional_writes=true"));
    let granted = s.apply(&acquire(&k, absent())).await.expect("acquire");
    assert_eq!(granted.token, FencingToken(1));
}

/// The marker remembers a passed probe across processes: the first CLI run
/// on a fresh prefix probes, the next one reads the marker and goes
/// straight to work. A server that honours conditions passes. Needs no moto.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_marker_spares_later_processes_the_probe() {
    let careful = FakeS3::start(Behaviour {
        honour_conditions: true,
        ..Behaviour::default()
    });
    let url = format!(
        "s3://careful-bucket/p?region=us-east-1&endpoint={}",
        careful.endpoint()
    );
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_statelock"))
            .args(["--store", &url, "exec", "--key", "k", "--", "true"])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run statelock")
    };
    let probe_writes = |log: &[(String, String)]| {
        log.iter()
            .filter(|(m, p)| m == "PUT" && p.contains("/p/.statelock-probe/"))
            .count()
    };
    let first = run();
    assert!(first.status.success(), "{first:?}");
    let log = careful.take_log();
    assert!(probe_writes(&log) >= 5, "the first process probes: {log:?}");
    let second = run();
    assert!(second.status.success(), "{second:?}");
    let log = careful.take_log();
    assert_eq!(
        probe_writes(&log),
        0,
        "the marker spares the probe: {log:?}"
    );
    assert!(
        log.iter()
            .any(|(m, p)| m == "GET" && p.contains("/p/.statelock-probe/passed.json")),
        "{log:?}"
    );
}

/// `statelock s3 probe URL`: one line per check and exit 0 on moto; FAIL
/// lines and exit 5 where conditions are ignored; exit 2 for a URL that is
/// not s3://.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_probe_reports_each_check() {
    let Some(endpoint) = endpoint() else { return };
    ensure_bucket(&raw_client(&endpoint), BUCKET).await;
    let probe_cli = |url: String| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_statelock"))
            .args(["s3", "probe", &url])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run statelock");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let good = format!(
        "s3://{BUCKET}/{}?endpoint={endpoint}",
        unique_prefix("cli-probe")
    );
    let (code, stdout, stderr) = probe_cli(good);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), CHECKS.len() + 1, "{stdout}");
    for (line, check) in lines.iter().zip(CHECKS) {
        assert!(line.starts_with(&format!("PASS  {check}: ")), "{line}");
    }

    let careless = FakeS3::start(Behaviour::default());
    let (code, stdout, stderr) = probe_cli(format!(
        "s3://careless-bucket/p?endpoint={}",
        careless.endpoint()
    ));
    assert_eq!(code, Some(5), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("FAIL  {}: written", CHECKS[1])),
        "{stdout}"
    );
    assert!(stdout.contains("4 of 7 checks failed"), "{stdout}");

    let (code, _, stderr) = probe_cli("file:///tmp/x".to_string());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("s3://"), "{stderr}");
}

/// `open_lock_store` opens an `s3://` URL; the CLI locks, lists and shows
/// through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_urls_and_the_cli_work() {
    let Some(endpoint) = endpoint() else { return };
    ensure_bucket(&raw_client(&endpoint), BUCKET).await;
    let url = format!(
        "s3://{BUCKET}/{}?region=us-east-1&endpoint={endpoint}",
        unique_prefix("url")
    );
    let opened = open_lock_store(&StoreUrl::parse(&url).expect("url"))
        .await
        .expect("open");
    assert_eq!(opened.describe(), url);
    let client = LockClient::builder(opened).build();
    let k = key("url/lock");
    let guard = client
        .acquire(
            &k,
            opts("url", Duration::from_secs(20), Some(Duration::ZERO)),
        )
        .await
        .expect("acquire through the URL's store");
    assert_eq!(guard.token(), FencingToken(1));
    guard.release().await.expect("release");

    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_statelock"))
            .arg("--store")
            .arg(&url)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run statelock");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = cli(&[
        "exec",
        "--key",
        "url/cli",
        "--",
        "sh",
        "-c",
        "echo $STATELOCK_TOKEN",
    ]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(stdout.trim(), "1");
    let (code, stdout, stderr) = cli(&["locks"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("url/cli") && stdout.contains("url/lock"),
        "{stdout}"
    );
}

/// Errors are one readable line naming the bucket or endpoint, classified
/// by whether retrying helps; endpoint userinfo never shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_errors_are_one_line_and_classified() {
    let Some(endpoint) = endpoint() else { return };
    let k = key("errors/lock");

    // A missing bucket.
    let missing = format!(
        "statelock-missing-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let s = S3LockStore::connect(&location(&endpoint, &missing, "p"))
        .await
        .expect("connect is lazy");
    match s.get(&k).await {
        Err(e @ StoreError::Misconfigured(_)) => {
            let text = e.to_string();
            common::assert_one_readable_line(&text);
            assert!(
                text.contains(&format!(
                    "the bucket {missing:?} does not exist at {endpoint}"
                )),
                "{text}"
            );
        }
        other => panic!("a missing bucket must be Misconfigured, got {other:?}"),
    }
    match s.apply(&acquire(&k, absent())).await {
        Err(e @ StoreError::Misconfigured(_)) => {
            assert!(e.to_string().contains("does not exist"), "{e}")
        }
        other => panic!("a missing bucket must be Misconfigured, got {other:?}"),
    }

    // Nothing listens: retryable.
    let dead = common::closed_port_endpoint();
    let s = S3LockStore::connect(&location(&dead, BUCKET, "p"))
        .await
        .expect("connect is lazy");
    let started = Instant::now();
    match s.get(&k).await {
        Err(e @ StoreError::Unavailable(_)) => {
            let text = e.to_string();
            common::assert_one_readable_line(&text);
            assert!(
                text.contains(&format!("cannot connect to {dead} (connection refused)")),
                "{text}"
            );
        }
        other => panic!("a dead endpoint must be Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(15));

    // https:// to an http port: retrying cannot help.
    let https = endpoint.replacen("http://", "https://", 1);
    let s = S3LockStore::connect(&location(&https, BUCKET, "p"))
        .await
        .expect("connect is lazy");
    match s.get(&k).await {
        Err(e @ StoreError::Misconfigured(_)) => {
            let text = e.to_string();
            common::assert_one_readable_line(&text);
            assert!(
                text.contains("TLS handshake") && text.contains("is the endpoint http?"),
                "{text}"
            );
        }
        other => panic!("https to an http port must be Misconfigured, got {other:?}"),
    }

    // Userinfo in the endpoint never shows.
    let with_userinfo = endpoint.replacen("http://", "http://statelock:s3cr3t-pass@", 1);
    let s = S3LockStore::connect(&location(&with_userinfo, &missing, "p"))
        .await
        .expect("connect is lazy");
    assert!(!s.describe().contains("s3cr3t"), "{}", s.describe());
    let text = s.get(&k).await.expect_err("missing bucket").to_string();
    assert!(
        !text.contains("s3cr3t") && text.contains("http://***@"),
        "{text}"
    );

    // Malformed endpoints are refused before any request.
    assert!(matches!(
        S3LockStore::connect(&location("127.0.0.1:9", BUCKET, "p")).await,
        Err(StoreError::Misconfigured(_))
    ));
}

/// An endpoint that accepts connections and never answers: a write times
/// out after the attempt timeout, in one line. Needs no moto.
#[tokio::test]
async fn a_silent_endpoint_times_out_in_one_line() {
    let silent = common::silent_endpoint();
    let mut loc = location(&silent, BUCKET, "p");
    loc.accept_unsafe_conditional_writes = true;
    let s = S3LockStore::connect(&loc).await.expect("connect");
    let started = Instant::now();
    match s.get(&key("silent")).await {
        Err(e @ StoreError::Unavailable(_)) => {
            let text = e.to_string();
            common::assert_one_readable_line(&text);
            assert!(text.contains(&format!("no answer from {silent}")), "{text}");
        }
        other => panic!("a silent endpoint must be Unavailable, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited < statelock::store::s3::client::OPERATION_TIMEOUT + Duration::from_secs(3),
        "{waited:?}"
    );
}

// ---------------------------------------------------------------------------
// Terraform's lockfiles (`format=terraform`).

mod terraform {
    use super::*;
    use common::s3::tf_location;
    use statelock::store::s3::terraform::{TerraformS3Store, NO_EXPIRY_LEASE_MS};

    /// A lockfile exactly as Terraform ≥ 1.10 writes it: `json.Marshal` of
    /// its `LockInfo` (fields in declaration order, no json tags), `Created`
    /// in UTC with nanoseconds, `Path` = `<bucket>/<state key>`.
    fn golden(path: &str) -> Vec<u8> {
        format!(
            r#"{{"ID":"5b9f1c2e-8d4a-4f51-9c0e-2a7b3d6e1f40","Operation":"OperationTypeApply","Info":"","Who":"carol@build-7","Version":"1.10.3","Created":"2025-01-15T14:20:00.123456789Z","Path":"{path}"}}"#
        )
        .into_bytes()
    }

    /// Terraform's reader: `json.Unmarshal` into `LockInfo`.
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(non_snake_case, dead_code)]
    struct LockInfo {
        ID: String,
        Operation: String,
        Info: String,
        Who: String,
        Version: String,
        Created: String,
        Path: String,
    }

    async fn tf_store(endpoint: &str, name: &str) -> (TerraformS3Store, String) {
        ensure_bucket(&raw_client(endpoint), BUCKET).await;
        let prefix = unique_prefix(name);
        let store = TerraformS3Store::connect(&tf_location(endpoint, BUCKET, &prefix))
            .await
            .expect("connect");
        (store, prefix)
    }

    fn tf_opts(who: &str, lease: Duration, wait: Option<Duration>) -> AcquireOptions {
        let mut o = opts(who, lease, wait);
        o.holder.operation = Some("OperationTypeApply".into());
        o
    }

    /// statelock writes Terraform's lockfile (under the URL's prefix, with
    /// Terraform's `Path`), which Terraform's reader accepts; waits on and
    /// reports it; releases by deleting it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn statelock_writes_terraform_lockfiles() {
        let Some(endpoint) = endpoint() else { return };
        let (store, prefix) = tf_store(&endpoint, "tf-round-trip").await;
        let raw = raw_client(&endpoint);
        let k = key("app/terraform.tfstate");
        let object = store.lockfile_object(&k);
        assert_eq!(object, format!("{prefix}/app/terraform.tfstate.tflock"));
        let client = LockClient::new(store);
        let guard = client
            .acquire(
                &k,
                tf_opts(
                    "alice@laptop",
                    Duration::from_secs(20),
                    Some(Duration::ZERO),
                ),
            )
            .await
            .expect("acquire");
        assert_eq!(
            guard.token(),
            FencingToken::NONE,
            "no tokens in this format"
        );

        let body = raw_get(&raw, BUCKET, &object).await.expect("the lockfile");
        let text = String::from_utf8(body.clone()).expect("UTF-8");
        let positions: Vec<usize> = [
            "ID",
            "Operation",
            "Info",
            "Who",
            "Version",
            "Created",
            "Path",
        ]
        .iter()
        .map(|f| {
            text.find(&format!("\"{f}\":"))
                .unwrap_or_else(|| panic!("{f} in {text}"))
        })
        .collect();
        assert!(
            positions.windows(2).all(|p| p[0] < p[1]),
            "field order: {text}"
        );
        let info: LockInfo = serde_json::from_slice(&body).expect("Terraform's reader accepts it");
        assert_eq!(info.ID, guard.lease_id().to_string());
        assert_eq!(info.Who, "alice@laptop");
        assert_eq!(info.Operation, "OperationTypeApply");
        assert!(info.Version.starts_with("statelock "), "{info:?}");
        assert_eq!(
            info.Path,
            format!("{BUCKET}/{prefix}/app/terraform.tfstate")
        );
        assert!(humantime::parse_rfc3339(&info.Created).is_ok(), "{info:?}");

        match client
            .acquire(
                &k,
                tf_opts("bob@desk", Duration::from_secs(20), Some(Duration::ZERO)),
            )
            .await
        {
            Err(LockError::Held { holder }) => {
                assert_eq!(holder.holder.locked_by, "alice@laptop");
                assert_eq!(holder.lease_ms, NO_EXPIRY_LEASE_MS);
            }
            other => panic!("the lock is held, got {other:?}"),
        }
        let listing = client.store().list().await.expect("list");
        assert_eq!(
            listing
                .records
                .iter()
                .map(|r| r.key.as_str())
                .collect::<Vec<_>>(),
            vec!["app/terraform.tfstate"]
        );
        guard.release().await.expect("release");
        assert!(
            raw_get(&raw, BUCKET, &object).await.is_none(),
            "deleted on release"
        );
        assert!(client.status(&k).await.expect("status").is_none());
    }

    /// A lockfile written as Terraform writes it (a workspace's `env:/` key)
    /// is shown, never taken over, and force-unlocked only at the version
    /// the operator saw.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn terraform_lockfiles_are_respected() {
        let Some(endpoint) = endpoint() else { return };
        let (store, prefix) = tf_store(&endpoint, "tf-respected").await;
        let raw = raw_client(&endpoint);
        let k = key("env:/dev/app/terraform.tfstate");
        let object = store.lockfile_object(&k);
        assert_eq!(
            object,
            format!("{prefix}/env:/dev/app/terraform.tfstate.tflock")
        );
        let body = golden(&format!("{BUCKET}/{prefix}/env:/dev/app/terraform.tfstate"));
        raw_put(&raw, BUCKET, &object, &body).await;

        let record = store.get(&k).await.expect("get").expect("a lock");
        assert_eq!(
            record.owner.to_string(),
            "5b9f1c2e-8d4a-4f51-9c0e-2a7b3d6e1f40"
        );
        assert_eq!(record.holder.locked_by, "carol@build-7");
        assert_eq!(
            record.holder.operation.as_deref(),
            Some("OperationTypeApply")
        );
        assert_eq!(
            record
                .holder
                .metadata
                .get("terraform_version")
                .map(String::as_str),
            Some("1.10.3")
        );
        assert_eq!(record.acquired_at, WallTime(1_736_950_800_123));
        assert_eq!(record.lease_ms, NO_EXPIRY_LEASE_MS);
        assert_eq!(
            store.list().await.expect("list").records,
            vec![record.clone()]
        );

        // Created in 2025, never renewed: still never taken over.
        let client = LockClient::new(store);
        let started = Instant::now();
        match client
            .acquire(
                &k,
                tf_opts(
                    "me@here",
                    Duration::from_millis(300),
                    Some(Duration::from_millis(1500)),
                ),
            )
            .await
        {
            Err(LockError::Timeout {
                holder: Some(h), ..
            }) => assert_eq!(h.holder.locked_by, "carol@build-7"),
            other => panic!("a Terraform lock must never be taken over, got {other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(1500));
        assert_eq!(raw_get(&raw, BUCKET, &object).await, Some(body.clone()));

        // Force-unlock: only at the version shown.
        let stale = RecordVersion(record.rvn.0 ^ 1);
        assert!(matches!(
            client.force_unlock(&k, stale, "ops@admin").await,
            Err(LockError::Changed { .. })
        ));
        assert_eq!(raw_get(&raw, BUCKET, &object).await, Some(body));
        let forced = client
            .force_unlock(&k, record.rvn, "ops@admin")
            .await
            .expect("force");
        assert_eq!(forced.forced_by.as_deref(), Some("ops@admin"));
        assert!(raw_get(&raw, BUCKET, &object).await.is_none());
        let guard = client
            .acquire(
                &k,
                tf_opts("me@here", Duration::from_secs(20), Some(Duration::ZERO)),
            )
            .await
            .expect("free after the force-unlock");
        guard.release().await.expect("release");
    }

    /// The command line sees a Terraform lockfile: `status` shows its Who
    /// and Operation, `exec --wait 0s` exits 3, `unlock` refuses a version
    /// the lockfile no longer has.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cli_respects_terraform_lockfiles() {
        let Some(endpoint) = endpoint() else { return };
        let (store, prefix) = tf_store(&endpoint, "tf-cli").await;
        let raw = raw_client(&endpoint);
        let k = key("stacks/web/terraform.tfstate");
        raw_put(
            &raw,
            BUCKET,
            &store.lockfile_object(&k),
            &golden(&format!("{BUCKET}/{prefix}/{k}")),
        )
        .await;
        let url = format!("s3://{BUCKET}/{prefix}?endpoint={endpoint}&format=terraform");
        let cli = |args: &[&str]| {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_statelock"))
                .arg("--store")
                .arg(&url)
                .args(args)
                .stdin(std::process::Stdio::null())
                .output()
                .expect("run statelock");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (code, stdout, stderr) = cli(&["status", k.as_str()]);
        assert_eq!(code, Some(0), "{stdout}{stderr}");
        for expected in [
            "state:          held",
            "holder:         carol@build-7",
            "operation:      OperationTypeApply",
            "token:          none (this lock format has no fencing tokens)",
        ] {
            assert!(stdout.contains(expected), "{expected:?} in:\n{stdout}");
        }
        let (code, stdout, stderr) =
            cli(&["exec", "--key", k.as_str(), "--wait", "0s", "--", "true"]);
        assert_eq!(code, Some(3), "{stdout}{stderr}");
        assert!(stderr.contains("carol@build-7"), "{stderr}");
        let (code, stdout, _) = cli(&["locks"]);
        assert_eq!(code, Some(0));
        assert!(stdout.contains("stacks/web/terraform.tfstate"), "{stdout}");
    }

    /// Heartbeats are one conditional HEAD and notice a deleted or replaced
    /// lockfile; a release deletes only the lease's own lockfile (by
    /// `If-Match`), retrying once when it was rewritten with the same ID;
    /// another holder's lockfile is never deleted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_are_conditional_on_the_lockfile() {
        let Some(endpoint) = endpoint() else { return };
        let (store, _prefix) = tf_store(&endpoint, "tf-conditional").await;
        let raw = raw_client(&endpoint);
        let k = key("app.tfstate");
        let object = store.lockfile_object(&k);
        let owner = LeaseId::random();
        let grant = || {
            op(
                &k,
                OpKind::Acquire {
                    from: absent(),
                    owner,
                    lease_ms: 20_000,
                    holder: HolderInfo::named("me@here"),
                    at_least: FencingToken::NONE,
                    dequeue: Default::default(),
                },
            )
        };
        let mine =
            |kind: fn(LeaseId, RecordVersion) -> OpKind| op(&k, kind(owner, RecordVersion(7)));
        let beat = |owner, current| OpKind::Heartbeat { owner, current };
        let rel = |owner, current| OpKind::Release { owner, current };

        let granted = store.apply(&grant()).await.expect("acquire");
        assert_eq!(granted.lease_ms, 20_000);
        let before = store.request_counts();
        let renewed = store.apply(&mine(beat)).await.expect("heartbeat");
        assert_eq!((renewed.owner, renewed.rvn), (owner, granted.rvn));
        let spent = store.request_counts().since(before);
        assert_eq!(
            spent,
            RequestCounts {
                head: 1,
                ..RequestCounts::default()
            },
            "a heartbeat is one conditional HEAD"
        );

        // Rewritten with the same ID (another store's lost acquire): the
        // heartbeat and the release follow it.
        let body = raw_get(&raw, BUCKET, &object).await.expect("lockfile");
        let rewritten = String::from_utf8(body)
            .unwrap()
            .replace("\"Who\":\"me@here\"", "\"Who\":\"me@elsewhere\"");
        raw_put(&raw, BUCKET, &object, rewritten.as_bytes()).await;
        let renewed = store
            .apply(&mine(beat))
            .await
            .expect("heartbeat of the rewrite");
        assert_eq!(renewed.holder.locked_by, "me@elsewhere");
        raw_put(
            &raw,
            BUCKET,
            &object,
            rewritten.replace("elsewhere", "there").as_bytes(),
        )
        .await;
        let released = store.apply(&mine(rel)).await.expect("release");
        assert!(released.released);
        assert!(raw_get(&raw, BUCKET, &object).await.is_none());

        // Replaced by another holder's lockfile: refused, never deleted.
        store.apply(&grant()).await.expect("acquire again");
        let theirs = golden(&format!("{BUCKET}/{k}"));
        raw_put(&raw, BUCKET, &object, &theirs).await;
        for kind in [beat as fn(LeaseId, RecordVersion) -> OpKind, rel] {
            match store.apply(&mine(kind)).await {
                Err(StoreError::Conflict { current: Some(c) }) => {
                    assert_eq!(c.holder.locked_by, "carol@build-7")
                }
                other => panic!("another holder's lockfile must conflict, got {other:?}"),
            }
        }
        assert_eq!(raw_get(&raw, BUCKET, &object).await, Some(theirs));
        raw_delete(&raw, BUCKET, &object).await;

        // Deleted (`terraform force-unlock`): the holder learns it at once.
        let client = LockClient::new(store);
        let guard = client
            .acquire(
                &k,
                tf_opts("me@here", Duration::from_millis(900), Some(Duration::ZERO)),
            )
            .await
            .expect("acquire");
        raw_delete(&raw, BUCKET, &object).await;
        tokio::time::timeout(Duration::from_secs(5), guard.lost())
            .await
            .expect("the holder must notice the force-unlock");
        assert!(matches!(guard.check(), Err(LockError::LeaseLost(_))));
    }

    /// A force-unlock deletes with `If-Match` of the lockfile it checked: a
    /// lockfile replaced between that look and the delete (another ETag) is
    /// refused and kept. Needs no moto.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn force_unlock_with_a_stale_etag_refuses() {
        let theirs = golden("careful-bucket/app.tfstate");
        let replacement = String::from_utf8(theirs.clone())
            .unwrap()
            .replace("carol@build-7", "dave@build-8")
            .into_bytes();
        let careful = FakeS3::start(Behaviour {
            honour_conditions: true,
            replace_before_delete: Some(replacement.clone()),
            ..Behaviour::default()
        });
        careful.seed("/careful-bucket/app.tfstate.tflock", &theirs);
        let mut loc = tf_location(&careful.endpoint(), "careful-bucket", "");
        // This fake is not what is under test here: skip the probe.
        loc.accept_unsafe_conditional_writes = true;
        let store = TerraformS3Store::connect(&loc).await.expect("connect");
        let k = key("app.tfstate");
        let seen = store.get(&k).await.expect("get").expect("a lock");
        assert_eq!(seen.holder.locked_by, "carol@build-7");
        let forced = store
            .apply(&op(
                &k,
                OpKind::ForceUnlock {
                    observed: seen.rvn,
                    by: "ops".into(),
                },
            ))
            .await;
        match forced {
            Err(StoreError::Conflict { current: Some(c) }) => {
                assert_eq!(c.holder.locked_by, "dave@build-8")
            }
            other => panic!("a replaced lockfile must not be force-unlocked, got {other:?}"),
        }
        let log = careful.take_log();
        let delete = log
            .iter()
            .position(|(m, _)| m == "DELETE")
            .expect("a conditional delete was sent");
        assert!(
            log[delete + 1..].iter().any(|(m, _)| m == "GET"),
            "the refusal read the current lockfile: {log:?}"
        );
        let still = store.get(&k).await.expect("get").expect("kept");
        assert_eq!(still.holder.locked_by, "dave@build-8");
    }

    /// An acquire that landed but whose answer never came back is abandoned
    /// when the caller gives up: the release recognises the lockfile by its
    /// `ID` and deletes it; otherwise it would never expire.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_acquire_leaves_no_lockfile() {
        let Some(endpoint) = endpoint() else { return };
        let (store, prefix) = tf_store(&endpoint, "tf-abandoned").await;
        let raw = raw_client(&endpoint);
        let faulty = LoseResponses::new(store);
        let switch = faulty.switch().clone();
        let client = LockClient::new(faulty);
        let k = key("abandoned.tfstate");
        switch.lose_next_responses(1);
        match client
            .acquire(
                &k,
                tf_opts("me@here", Duration::from_secs(20), Some(Duration::ZERO)),
            )
            .await
        {
            Err(LockError::Store(e)) => assert!(e.is_retryable(), "{e:?}"),
            other => panic!("a lost answer with no time to resend must fail, got {other:?}"),
        }
        assert_eq!(switch.injected(), 1);
        assert!(
            raw_get(&raw, BUCKET, &format!("{prefix}/abandoned.tfstate.tflock"))
                .await
                .is_none(),
            "the abandoned lockfile must be deleted"
        );
        // With time to resend, the lost answer is recognised.
        switch.lose_next_responses(1);
        let guard = client
            .acquire(
                &k,
                tf_opts(
                    "me@here",
                    Duration::from_secs(20),
                    Some(Duration::from_secs(5)),
                ),
            )
            .await
            .expect("acquire despite the lost answer");
        guard.release().await.expect("release");
    }
}

// --------------------------------------------------------------------------
// Fenced state behind real locks: 8 clients × 50 rounds.

const CLIENTS: usize = 8;
const ROUNDS: usize = 50;

/// `CLIENTS` clients, each with its own lock store (its own SDK client),
/// run `ROUNDS` rounds each of: lock → seal → load → increment the counter
/// in the document → save → unlock. The final counter is exactly the number
/// of rounds, and the history holds every save, in order, each with a token
/// at least the previous one's.
async fn counter_rounds(
    make_locks: impl Fn() -> futures_like::BoxFuture<Arc<dyn LockStore>>,
    state: Arc<dyn statelock::state::StateStore>,
    key: LockKey,
) {
    use statelock::state::{seal_for, StateDocument};
    // The initial document: counter 0 (one save).
    {
        let client = LockClient::new(make_locks().await);
        let guard = client
            .acquire(
                &key,
                opts(
                    "init",
                    Duration::from_secs(20),
                    Some(Duration::from_secs(60)),
                ),
            )
            .await
            .expect("acquire");
        let (writer, sealed) = seal_for(&*state, &guard).await.expect("seal");
        let mut doc = StateDocument::empty(Some("web"), Some("prod"));
        doc.outputs
            .insert("counter".into(), serde_json::Value::from(0));
        state
            .save(&writer, &sealed.version, doc)
            .await
            .expect("save");
        guard.release().await.expect("release");
    }
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let locks = make_locks().await;
        let (state, key) = (state.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let client = LockClient::new(locks);
            for round in 0..ROUNDS {
                let name = format!("client-{c}-{round}");
                let guard = client
                    .acquire(
                        &key,
                        opts(
                            &name,
                            Duration::from_secs(20),
                            Some(Duration::from_secs(300)),
                        ),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{name}: acquire: {e}"));
                let (writer, sealed) = seal_for(&*state, &guard)
                    .await
                    .unwrap_or_else(|e| panic!("{name}: seal: {e}"));
                let mut doc = sealed.document.clone();
                let n = doc
                    .outputs
                    .get("counter")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0);
                doc.outputs
                    .insert("counter".into(), serde_json::Value::from(n + 1));
                state
                    .save(&writer, &sealed.version, doc)
                    .await
                    .unwrap_or_else(|e| panic!("{name}: save: {e}"));
                guard
                    .release()
                    .await
                    .unwrap_or_else(|e| panic!("{name}: release: {e}"));
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let last = state.load(&key).await.expect("load").expect("state");
    let total = (CLIENTS * ROUNDS) as u64;
    assert_eq!(
        last.document
            .outputs
            .get("counter")
            .and_then(|v| v.as_u64()),
        Some(total),
        "every increment landed exactly once"
    );
    let mut history = state.history(&key, 10_000).await.expect("history");
    history.reverse();
    let serials: Vec<u64> = history.iter().map(|h| h.serial).collect();
    assert_eq!(
        serials,
        (1..=total + 1).collect::<Vec<_>>(),
        "one snapshot per save, in order"
    );
    for pair in history.windows(2) {
        assert!(pair[0].token <= pair[1].token, "a token went back");
    }
    for (i, h) in history.iter().enumerate().step_by(57) {
        let snap = state.snapshot(&key, &h.id).await.expect("snapshot");
        assert_eq!(
            snap.outputs.get("counter").and_then(|v| v.as_u64()),
            Some(i as u64),
            "snapshot {} holds the counter it saved",
            h.id
        );
    }
}

/// A minimal boxed future, to pass store factories around.
mod futures_like {
    pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;
}

async fn s3_state(endpoint: &str) -> Arc<dyn statelock::state::StateStore> {
    let at = location(endpoint, BUCKET, &unique_prefix("rounds-state"));
    Arc::new(statelock::state::FencedStore::new(
        statelock::state::s3::S3StateBackend::connect(&at)
            .await
            .expect("connect"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_clients_fifty_rounds_on_s3_locks_and_s3_state() {
    let Some(endpoint) = endpoint() else { return };
    common::s3::ensure_bucket(&common::s3::raw_client(&endpoint), BUCKET).await;
    let prefix = unique_prefix("rounds-locks");
    let ep = endpoint.clone();
    let make = move || -> futures_like::BoxFuture<Arc<dyn LockStore>> {
        let (ep, prefix) = (ep.clone(), prefix.clone());
        Box::pin(async move {
            Arc::new(
                S3LockStore::connect(&location(&ep, BUCKET, &prefix))
                    .await
                    .expect("connect"),
            ) as Arc<dyn LockStore>
        })
    };
    counter_rounds(make, s3_state(&endpoint).await, key("stack:web:env:prod")).await;
}

#[cfg(feature = "dynamodb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_clients_fifty_rounds_on_dynamodb_locks_and_s3_state() {
    use statelock::store::dynamodb::DynamoDbStore;
    let Some(endpoint) = endpoint() else { return };
    let Some(ddb) = common::service("STATELOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    common::s3::ensure_bucket(&common::s3::raw_client(&endpoint), BUCKET).await;
    let table = format!("statelock-rounds-{}", uuid::Uuid::new_v4().simple());
    DynamoDbStore::new(common::sdk_client(&ddb), &table)
        .create_table()
        .await
        .expect("create table");
    let make = move || -> futures_like::BoxFuture<Arc<dyn LockStore>> {
        let (ddb, table) = (ddb.clone(), table.clone());
        Box::pin(async move {
            Arc::new(DynamoDbStore::new(common::sdk_client(&ddb), table)) as Arc<dyn LockStore>
        })
    };
    counter_rounds(make, s3_state(&endpoint).await, key("stack:web:env:prod")).await;
}
