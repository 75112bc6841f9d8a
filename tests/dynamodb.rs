//! The DynamoDB store and the DynamoDB state head against DynamoDB Local:
//! the conformance suite, racing clients, a paused holder fenced out, lost
//! responses, damaged items and misconfiguration.
//!
//! Needs DynamoDB Local: `eval "$(scripts/services.sh start)"` exports
//! `STATELOCK_TEST_DYNAMODB_ENDPOINT` (and test credentials). Without it these
//! tests fail; `STATELOCK_SKIP_SERVICE_TESTS=1` skips them explicitly.
#![cfg(feature = "dynamodb")]

mod common;

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::types::AttributeValue;
use common::{raw_item, sdk_client, service};
use statelock::client::{AcquireOptions, LockClient, LockError};
use statelock::protocol::{Backoff, GrantFrom, LeaseId, LockOp, OpKind, RecordVersion, WallTime};
use statelock::state::dynamodb::DynamoDbStateStore;
use statelock::state::register::FencedRegister;
use statelock::state::StateError;
use statelock::store::dynamodb::{DynamoDbStore, TableSetup};
use statelock::store::url::StoreUrl;
use statelock::store::{open_lock_store, LockStore, StoreError};
use statelock::testkit::LoseResponses;
use statelock::{FencingToken, HolderInfo, LockKey};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The table every test shares (each uses its own key prefix).
const TABLE: &str = "statelock-test-locks";
/// The state head table of [`TABLE`].
const STATE_TABLE: &str = "statelock-test-locks-state";

/// DynamoDB Local's endpoint; `None` if the service tests are explicitly
/// skipped. Panics (failing the test) if it is not configured or not reachable.
fn endpoint() -> Option<String> {
    service("STATELOCK_TEST_DYNAMODB_ENDPOINT")
}

/// Creates a lock table (hash key `lockKey`) *without* TTL, unless it
/// exists. The shared test tables have no TTL: the conformance suite writes
/// wall times from 2023, so DynamoDB Local's TTL would collect its released
/// records in the middle of a case. (`create_table`, TTL included, is tested
/// on a table of its own.)
async fn table_without_ttl(raw: &aws_sdk_dynamodb::Client, table: &str) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let created = raw
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("lockKey")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attribute definition"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("lockKey")
                .key_type(KeyType::Hash)
                .build()
                .expect("key schema"),
        )
        .send()
        .await;
    if let Err(e) = created {
        let code = aws_sdk_dynamodb::error::ProvideErrorMetadata::code(&e);
        assert_eq!(
            code,
            Some("ResourceInUseException"),
            "cannot create {table}: {e:?}"
        );
    }
}

/// A store over the shared table (created if needed), with its own client.
async fn store(endpoint: &str) -> DynamoDbStore {
    let raw = sdk_client(endpoint);
    table_without_ttl(&raw, TABLE).await;
    DynamoDbStore::new(raw, TABLE)
}

/// A key no other test (or test run) uses.
fn unique_key(name: &str) -> LockKey {
    LockKey::new(format!("test/{name}/{}", uuid::Uuid::new_v4().simple())).unwrap()
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

/// A store for the conformance suite over a table of its own (one case
/// raises the table's token floor, which the others assume is 0), or a
/// memory store when the service tests are explicitly skipped (the suite
/// then checks nothing new).
async fn conformance_store() -> Arc<dyn LockStore> {
    match endpoint() {
        Some(endpoint) => {
            let raw = sdk_client(&endpoint);
            let table = format!("statelock-conf-{}", uuid::Uuid::new_v4().simple());
            table_without_ttl(&raw, &table).await;
            Arc::new(DynamoDbStore::new(raw, table))
        }
        None => Arc::new(statelock::store::memory::MemoryStore::new()),
    }
}

mod conformance {
    use super::*;

    statelock::lock_store_conformance!(conformance_store());
}

/// 16 clients, each with its own SDK client, race for one key round after
/// round (no waiting): exactly one holds it per round, with a larger token
/// each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_clients_race_one_key() {
    let Some(endpoint) = endpoint() else { return };
    store(&endpoint).await;
    let key = unique_key("race");
    let clients: Vec<LockClient> = (0..16)
        .map(|_| LockClient::new(DynamoDbStore::new(sdk_client(&endpoint), TABLE)))
        .collect();
    let mut last_token = FencingToken(0);
    for round in 0..6 {
        let start = Arc::new(tokio::sync::Barrier::new(clients.len()));
        let tasks: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(i, client)| {
                let (client, key, start) = (client.clone(), key.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    let name = format!("racer-{i}");
                    client
                        .acquire(
                            &key,
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
            "round {round}: exactly one client must win"
        );
        let winner = winners.pop().expect("one winner");
        assert!(
            winner.token() > last_token,
            "round {round}: token {} after {last_token}",
            winner.token()
        );
        assert_eq!(
            winner.token(),
            FencingToken(last_token.0 + 1),
            "round {round}: one grant per round"
        );
        last_token = winner.token();
        winner.release().await.expect("release");
    }
}

/// 16 clients, each with its own SDK client, all wait for one key: they hold
/// it one at a time, and the tokens increase in the order they held it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_waiting_clients_hold_one_at_a_time() {
    let Some(endpoint) = endpoint() else { return };
    store(&endpoint).await;
    let key = unique_key("queue");
    let inside = Arc::new(AtomicUsize::new(0));
    let order = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let client = LockClient::new(DynamoDbStore::new(sdk_client(&endpoint), TABLE));
            let (key, inside, order) = (key.clone(), inside.clone(), order.clone());
            tokio::spawn(async move {
                let name = format!("waiter-{i}");
                let guard = client
                    .acquire(
                        &key,
                        opts(
                            &name,
                            Duration::from_secs(20),
                            Some(Duration::from_secs(120)),
                        ),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                order.lock().expect("order").push(guard.token());
                tokio::time::sleep(Duration::from_millis(20)).await;
                assert!(guard.is_valid());
                inside.fetch_sub(1, Ordering::SeqCst);
                guard.release().await.expect("release");
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("waiting task");
    }
    let order = order.lock().expect("order").clone();
    assert_eq!(order.len(), 16);
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "tokens must increase in holding order: {order:?}"
    );
    assert_eq!(order.first(), Some(&FencingToken(1)));
    assert_eq!(order.last(), Some(&FencingToken(16)));
}

/// A holder paused past its (1 s) lease is taken over; afterwards its fenced
/// state writes are rejected while the new holder's are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_holder_is_fenced_out_of_the_state_head() {
    let Some(endpoint) = endpoint() else { return };
    let locks = store(&endpoint).await;
    let heads = DynamoDbStateStore::for_lock_store(&locks, STATE_TABLE);
    heads.create_table().await.expect("create the state table");
    let key = unique_key("paused");
    let lease = Duration::from_secs(1);
    let old = LockClient::new(locks.clone());
    let new = LockClient::new(DynamoDbStore::new(sdk_client(&endpoint), TABLE));

    let a = old
        .acquire(&key, opts("old-holder", lease, Some(Duration::ZERO)))
        .await
        .expect("a");
    let v1 = heads
        .save_fenced(&key, a.lease_id(), a.token(), None, b"state by a")
        .await
        .expect("the holder writes");
    // The process stops (GC pause, SIGSTOP): no more heartbeats.
    a.freeze_heartbeats();
    let paused = Instant::now();
    let b = new
        .acquire(
            &key,
            opts("new-holder", lease, Some(Duration::from_secs(20))),
        )
        .await
        .expect("the waiter takes over");
    assert!(
        paused.elapsed() >= lease,
        "taken over before the lease ran out"
    );
    assert_eq!(b.token(), FencingToken(a.token().0 + 1));
    tokio::time::timeout(Duration::from_secs(5), a.lost())
        .await
        .expect("the paused holder's lost signal fired");
    assert!(!a.is_valid());

    // The paused holder wakes up and writes as if it still held the lock.
    assert_eq!(
        heads
            .save_fenced(&key, a.lease_id(), a.token(), Some(&v1), b"late write")
            .await,
        Err(StateError::NotHolder)
    );
    assert_eq!(
        heads.save(&key, a.token(), Some(&v1), b"late write").await,
        Err(StateError::NotHolder)
    );
    let v2 = heads
        .save_fenced(&key, b.lease_id(), b.token(), Some(&v1), b"state by b")
        .await
        .expect("the new holder writes");
    assert_eq!(
        heads
            .save_fenced(&key, a.lease_id(), a.token(), Some(&v2), b"late write")
            .await,
        Err(StateError::Stale {
            fence: b.token(),
            token: a.token()
        })
    );
    let head = heads.load(&key).await.expect("load").expect("a head");
    assert_eq!(
        (head.version, head.fence, head.body),
        (v2.clone(), b.token(), b"state by b".to_vec())
    );

    // The new holder's chain: a stale version is refused, the current accepted.
    assert!(matches!(
        heads
            .save_fenced(&key, b.lease_id(), b.token(), Some(&v1), b"x")
            .await,
        Err(StateError::VersionMismatch { .. })
    ));
    assert!(matches!(
        heads
            .save_fenced(&key, b.lease_id(), b.token(), None, b"x")
            .await,
        Err(StateError::VersionMismatch { .. })
    ));
    let v3 = heads
        .save(&key, b.token(), Some(&v2), b"via the trait")
        .await
        .expect("save");
    let (b_owner, b_token) = (b.lease_id(), b.token());
    b.release().await.expect("release");
    assert_eq!(
        heads
            .save_fenced(&key, b_owner, b_token, Some(&v3), b"after release")
            .await,
        Err(StateError::NotHolder)
    );
    drop(a);
}

/// An acquire and a release whose answers are lost (the write landed) are
/// recognised by their record version: one grant, one release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_responses_are_recognised_by_the_client() {
    let Some(endpoint) = endpoint() else { return };
    let inner = store(&endpoint).await;
    let faulty = LoseResponses::new(inner.clone());
    let switch = faulty.switch().clone();
    let client = LockClient::new(faulty);
    let key = unique_key("lost");
    let wait = Some(Duration::from_secs(10));

    switch.lose_next_responses(1);
    let guard = client
        .acquire(&key, opts("me", Duration::from_secs(20), wait))
        .await
        .expect("acquire");
    assert_eq!(switch.injected(), 1);
    assert_eq!(guard.token(), FencingToken(1), "exactly one grant");
    let record = inner.get(&key).await.expect("get").expect("a record");
    assert_eq!((record.owner, record.released), (guard.lease_id(), false));

    switch.lose_next_responses(1);
    guard.release().await.expect("release");
    let record = inner.get(&key).await.expect("get").expect("a record");
    assert!(record.released);
    assert_eq!(record.token, FencingToken(1));

    // A request that never arrived, then one whose answer is lost.
    switch.fail_next_requests(1);
    let guard = client
        .acquire(&key, opts("me", Duration::from_secs(20), wait))
        .await
        .expect("acquire");
    assert_eq!(guard.token(), FencingToken(2));
    switch.lose_next_responses(1);
    guard.release().await.expect("release");
    assert_eq!(switch.injected(), 4);

    // Resending a landed op: the conflict carries its own write.
    let current = inner.get(&key).await.expect("get");
    let op = LockOp {
        key: key.clone(),
        new_rvn: RecordVersion::random(),
        at: WallTime(1_700_000_000_000),
        kind: OpKind::Acquire {
            from: GrantFrom::of(current.as_ref(), FencingToken(0)),
            owner: LeaseId::random(),
            lease_ms: 20_000,
            holder: HolderInfo::named("resender"),
            at_least: FencingToken::NONE,
            dequeue: Default::default(),
        },
    };
    let landed = inner.apply(&op).await.expect("first send");
    assert_eq!(
        inner.apply(&op).await,
        Err(StoreError::conflict(Some(landed)))
    );
}

/// The item is readable by people and tools: the seed's attributes with
/// their types, plus statelock's.
#[tokio::test]
async fn items_carry_the_documented_attributes() {
    let Some(endpoint) = endpoint() else { return };
    let store = store(&endpoint).await;
    let key = unique_key("schema");
    let client = LockClient::new(store.clone());
    let mut o = opts(
        "github-actions-run-12345",
        Duration::from_secs(30),
        Some(Duration::ZERO),
    );
    o.holder.operation = Some("apply".into());
    o.holder.host = Some("runner-abc123".into());
    o.holder.pid = Some(54321);
    o.holder
        .metadata
        .insert("git_commit".into(), "a1b2c3d4e5f6".into());
    let guard = client.acquire(&key, o).await.expect("acquire");
    let item = raw_item(&sdk_client(&endpoint), TABLE, "lockKey", key.as_str())
        .await
        .expect("an item");
    let s = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
    let num = |name: &str| {
        item.get(name)
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse::<i64>().ok())
    };
    assert_eq!(s("lockId"), Some(guard.lease_id().to_string()));
    assert_eq!(s("lockedBy").as_deref(), Some("github-actions-run-12345"));
    assert_eq!(num("token"), Some(1));
    assert_eq!(num("leaseMs"), Some(30_000));
    assert_eq!(item.get("released"), Some(&AttributeValue::Bool(false)));
    assert_eq!(s("rvn").map(|r| r.len()), Some(32));
    let now = WallTime::from_system(std::time::SystemTime::now()).as_secs();
    let locked_at = num("lockedAt").expect("lockedAt");
    assert!(
        (now - locked_at).abs() < 60,
        "lockedAt {locked_at} is unix seconds"
    );
    assert_eq!(num("lastHeartbeat"), Some(locked_at));
    assert_eq!(
        item.get("expiresAt"),
        None,
        "a held record has no TTL deadline"
    );
    let metadata = item
        .get("metadata")
        .and_then(|v| v.as_m().ok())
        .expect("metadata map");
    let meta = |k: &str| {
        metadata
            .get(k)
            .and_then(|v| v.as_s().ok())
            .map(String::as_str)
    };
    assert_eq!(meta("operation"), Some("apply"));
    assert_eq!(meta("host"), Some("runner-abc123"));
    assert_eq!(meta("pid"), Some("54321"));
    assert_eq!(meta("git_commit"), Some("a1b2c3d4e5f6"));
    guard.release().await.expect("release");
    let released = raw_item(&sdk_client(&endpoint), TABLE, "lockKey", key.as_str())
        .await
        .expect("the record is kept after release");
    assert_eq!(released.get("released"), Some(&AttributeValue::Bool(true)));
    assert_eq!(released.get("token"), Some(&AttributeValue::N("1".into())));
    assert_eq!(
        released.get("expiresAt"),
        None,
        "no record carries a TTL deadline: TTL would restart the key's tokens"
    );
}

/// Items with missing or mistyped attributes — including a released one
/// whose token is 1.5 or whose `rvn` is missing — are reported as corrupt by
/// every operation and never overwritten: the client's acquire reads first
/// and stops at once with `Corrupt` (a damaged record never restarts tokens),
/// and no write lands on them. A listing still shows the healthy records.
#[tokio::test]
async fn damaged_items_are_corrupt_and_never_overwritten() {
    let Some(endpoint) = endpoint() else { return };
    let raw = sdk_client(&endpoint);
    let table = format!("statelock-test-corrupt-{}", uuid::Uuid::new_v4().simple());
    table_without_ttl(&raw, &table).await;
    let store = DynamoDbStore::new(raw.clone(), &table);
    let client = LockClient::new(store.clone());

    // A well-formed released record, then damaged copies of it.
    let good_key = unique_key("good");
    let guard = client
        .acquire(
            &good_key,
            opts("x", Duration::from_secs(20), Some(Duration::ZERO)),
        )
        .await
        .expect("acquire");
    guard.release().await.expect("release");
    let good = store.get(&good_key).await.expect("get").expect("record");
    let good_item = raw_item(&raw, &table, "lockKey", good_key.as_str())
        .await
        .expect("item");

    let damages: Vec<(&str, Option<AttributeValue>)> = vec![
        ("lockId", None),
        ("token", None),
        ("token", Some(AttributeValue::S("3".into()))),
        ("token", Some(AttributeValue::N("-3".into()))),
        ("token", Some(AttributeValue::N("1.5".into()))),
        ("released", None),
        ("released", Some(AttributeValue::S("true".into()))),
        ("rvn", None),
        ("rvn", Some(AttributeValue::S("not-hex".into()))),
        ("rvn", Some(AttributeValue::N("1".into()))),
        ("metadata", Some(AttributeValue::S("{}".into()))),
        ("leaseMs", None),
        ("lastHeartbeatMs", Some(AttributeValue::S("soon".into()))),
        ("lockId", Some(AttributeValue::S("not-a-uuid".into()))),
    ];
    let mut damaged_keys = Vec::new();
    for (attribute, value) in damages {
        let key = unique_key("damaged");
        let mut item: HashMap<String, AttributeValue> = good_item.clone();
        item.insert("lockKey".into(), AttributeValue::S(key.to_string()));
        match value.clone() {
            Some(v) => item.insert(attribute.to_string(), v),
            None => item.remove(attribute),
        };
        raw.put_item()
            .table_name(&table)
            .set_item(Some(item.clone()))
            .send()
            .await
            .expect("put damaged item");
        damaged_keys.push(key.to_string());
        let what = format!("{attribute} = {value:?}");
        let corrupt = |r: Result<_, StoreError>| matches!(r, Err(StoreError::Corrupt { .. }));
        assert!(corrupt(store.get(&key).await.map(|_| ())), "get: {what}");
        // The client reads first and stops at once: no write, no wait.
        let started = Instant::now();
        match client
            .acquire(
                &key,
                opts("y", Duration::from_secs(20), Some(Duration::from_secs(30))),
            )
            .await
        {
            Err(LockError::Store(StoreError::Corrupt { key: named, .. })) => {
                assert_eq!(named, key.as_str(), "{what}")
            }
            other => panic!("acquire of {what} must be Corrupt, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a damaged record must not be waited out: {what}"
        );
        // No write lands on it, whatever version or token it names.
        let rvn = match item.get("rvn") {
            Some(AttributeValue::S(v)) => v.parse().unwrap_or(good.rvn),
            _ => good.rvn,
        };
        for kind in [
            OpKind::Acquire {
                from: GrantFrom::Version {
                    rvn,
                    token: good.token,
                },
                owner: LeaseId::random(),
                lease_ms: 1000,
                holder: HolderInfo::named("y"),
                at_least: FencingToken::NONE,
                dequeue: Default::default(),
            },
            OpKind::Takeover {
                observed: rvn,
                token: good.token,
                owner: LeaseId::random(),
                lease_ms: 1000,
                holder: HolderInfo::named("y"),
                at_least: FencingToken::NONE,
                dequeue: Default::default(),
            },
            OpKind::ForceUnlock {
                observed: rvn,
                by: "ops".into(),
            },
            OpKind::Heartbeat {
                owner: good.owner,
                current: rvn,
            },
        ] {
            let name = kind.name();
            let op = LockOp {
                key: key.clone(),
                new_rvn: RecordVersion::random(),
                at: WallTime(1),
                kind,
            };
            let answer = store.apply(&op).await;
            // Only an acquire naming the intact version and token of an item
            // damaged elsewhere lands — and it rewrites every attribute.
            let repairs = name == "acquire"
                && ["metadata", "leaseMs", "lastHeartbeatMs", "lockId"].contains(&attribute);
            if repairs {
                let granted = answer.unwrap_or_else(|e| panic!("acquire of {what}: {e}"));
                assert_eq!(Some(granted.token), good.token.next(), "{what}");
                raw.put_item()
                    .table_name(&table)
                    .set_item(Some(item.clone()))
                    .send()
                    .await
                    .expect("put the damaged item back");
                continue;
            }
            assert!(corrupt(answer.map(|_| ())), "{name}: {what}");
            let after = raw_item(&raw, &table, "lockKey", key.as_str()).await;
            assert_eq!(
                after.as_ref(),
                Some(&item),
                "{name} overwrote the damaged item: {what}"
            );
        }
    }
    // The listing shows the healthy record and flags every damaged one.
    let listing = store.list().await.expect("list");
    assert_eq!(listing.records, vec![good]);
    let mut flagged: Vec<String> = listing.damaged.iter().map(|d| d.key.clone()).collect();
    flagged.sort();
    damaged_keys.sort();
    assert_eq!(flagged, damaged_keys);
    let _ = raw.delete_table().table_name(&table).send().await;
}

/// A record at the last fencing token says so at once instead of waiting out
/// the wait.
#[tokio::test]
async fn a_key_whose_tokens_are_used_up_says_so() {
    let Some(endpoint) = endpoint() else { return };
    let raw = sdk_client(&endpoint);
    let store = store(&endpoint).await;
    let client = LockClient::new(store.clone());
    let key = unique_key("exhausted");
    let guard = client
        .acquire(
            &key,
            opts("x", Duration::from_secs(20), Some(Duration::ZERO)),
        )
        .await
        .expect("acquire");
    guard.release().await.expect("release");
    raw.update_item()
        .table_name(TABLE)
        .key("lockKey", AttributeValue::S(key.to_string()))
        .update_expression("SET #t = :max")
        .expression_attribute_names("#t", "token")
        .expression_attribute_values(":max", AttributeValue::N(u64::MAX.to_string()))
        .send()
        .await
        .expect("set the token to u64::MAX");
    let started = Instant::now();
    match client
        .acquire(
            &key,
            opts("y", Duration::from_secs(20), Some(Duration::from_secs(60))),
        )
        .await
    {
        Err(e @ LockError::TokensExhausted { .. }) => {
            assert!(e.to_string().contains("used up every fencing token"), "{e}")
        }
        other => panic!("expected TokensExhausted, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Table creation is idempotent and checks the key schema; a missing table, a
/// dead endpoint and a wrong URL are reported as what they are.
#[tokio::test]
async fn setup_and_misconfiguration_are_reported_clearly() {
    let Some(endpoint) = endpoint() else { return };
    let raw = sdk_client(&endpoint);
    let fresh = format!("statelock-test-{}", uuid::Uuid::new_v4().simple());
    let store = DynamoDbStore::new(raw.clone(), &fresh);
    let key = unique_key("setup");

    match store.get(&key).await {
        Err(StoreError::Misconfigured(why)) => {
            assert!(
                why.contains("does not exist") && why.contains("dynamodb create-table"),
                "{why}"
            )
        }
        other => panic!("a missing table must be Misconfigured, got {other:?}"),
    }
    assert_eq!(store.create_table().await, Ok(TableSetup::Created));
    assert_eq!(store.create_table().await, Ok(TableSetup::AlreadyExisted));
    assert_eq!(store.get(&key).await, Ok(None));
    let ttl = raw
        .describe_time_to_live()
        .table_name(&fresh)
        .send()
        .await
        .expect("ttl");
    assert_ne!(
        ttl.time_to_live_description()
            .and_then(|d| d.time_to_live_status()),
        Some(&aws_sdk_dynamodb::types::TimeToLiveStatus::Enabled),
        "a statelock lock table has no TTL: it would restart tokens"
    );

    // A Terraform lock table is not a statelock lock table.
    let tf =
        statelock::store::terraform::TerraformDynamoStore::new(raw.clone(), format!("{fresh}-tf"));
    assert_eq!(tf.create_table().await, Ok(TableSetup::Created));
    match DynamoDbStore::new(raw.clone(), format!("{fresh}-tf"))
        .create_table()
        .await
    {
        Err(StoreError::Misconfigured(why)) => assert!(why.contains("LockID"), "{why}"),
        other => panic!("a wrong key schema must be Misconfigured, got {other:?}"),
    }
    match DynamoDbStore::new(raw.clone(), format!("{fresh}-tf"))
        .get(&key)
        .await
    {
        Err(StoreError::Misconfigured(why)) => assert!(why.contains("lockKey"), "{why}"),
        other => panic!("a wrong key schema must be Misconfigured, got {other:?}"),
    }
    for table in [fresh.clone(), format!("{fresh}-tf")] {
        raw.delete_table()
            .table_name(table)
            .send()
            .await
            .expect("delete table");
    }

    // Nothing listens on port 9 of this host: fail fast and retryably.
    let dead = DynamoDbStore::connect(TABLE, Some("us-east-1"), Some("http://127.0.0.1:9"))
        .await
        .expect("connect is lazy");
    let started = Instant::now();
    match dead.get(&key).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("a dead endpoint must be Unavailable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(
        DynamoDbStore::connect(TABLE, None, Some("127.0.0.1:9")).await,
        Err(StoreError::Misconfigured(_))
    ));
}

/// `open_lock_store` opens both formats from a URL (with the default AWS
/// configuration chain, here the test credentials in the environment).
#[tokio::test]
async fn store_urls_open_both_formats() {
    let Some(endpoint) = endpoint() else { return };
    store(&endpoint).await;
    let url = StoreUrl::parse(&format!(
        "dynamodb://{TABLE}?region=us-east-1&endpoint={endpoint}"
    ))
    .expect("url");
    let opened = open_lock_store(&url).await.expect("open");
    assert!(opened
        .describe()
        .starts_with(&format!("dynamodb://{TABLE}?")));
    let key = unique_key("url");
    let client = LockClient::builder(opened).build();
    let guard = client
        .acquire(
            &key,
            opts("url", Duration::from_secs(20), Some(Duration::ZERO)),
        )
        .await
        .expect("acquire through the URL's store");
    assert_eq!(guard.token(), FencingToken(1));
    guard.release().await.expect("release");

    let tf_table = "statelock-test-tf-url";
    let tf_url = StoreUrl::parse(&format!(
        "dynamodb://{tf_table}?endpoint={endpoint}&format=terraform"
    ))
    .expect("url");
    statelock::store::dynamodb::create_table_for_url(&tf_url)
        .await
        .expect("create tf table");
    let tf = open_lock_store(&tf_url).await.expect("open");
    assert!(tf.describe().ends_with("format=terraform"));
    assert_eq!(
        tf.get(&LockKey::new("bucket/none").unwrap()).await,
        Ok(None)
    );
}

/// `statelock dynamodb create-table` creates the lock table (and, asked to,
/// the state table) with the right key schema and TTL, is idempotent, refuses
/// a table with another key schema (exit 5) and bad input (exit 2).
#[tokio::test]
async fn cli_creates_the_tables() {
    let Some(endpoint) = endpoint() else { return };
    let raw = sdk_client(&endpoint);
    let table = format!(
        "statelock-test-cli-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let url = format!("dynamodb://{table}?endpoint={endpoint}");
    let run = |url: &str, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_statelock"))
            .arg("--store")
            .arg(url)
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

    let (code, stdout, stderr) = run(&url, &["dynamodb", "create-table", "--with-state-table"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("Created the lock table {table:?}")),
        "{stdout}"
    );
    let state_table = format!("{table}-state");
    assert!(
        stdout.contains(&format!("Created the state table {state_table:?}")),
        "{stdout}"
    );
    for (name, ttl) in [(&table, false), (&state_table, false)] {
        let described = raw
            .describe_table()
            .table_name(name.as_str())
            .send()
            .await
            .expect("describe");
        let key = described
            .table()
            .and_then(|t| t.key_schema().first())
            .map(|k| k.attribute_name().to_string());
        assert_eq!(key.as_deref(), Some("lockKey"), "{name}");
        let ttl_status = raw
            .describe_time_to_live()
            .table_name(name.as_str())
            .send()
            .await
            .expect("describe TTL");
        let attr = ttl_status
            .time_to_live_description()
            .and_then(|d| d.attribute_name())
            .map(str::to_string);
        assert_eq!(attr.is_some(), ttl, "{name}: TTL {ttl_status:?}");
    }

    // Idempotent; and the table works as a store at once.
    let (code, stdout, _) = run(&url, &["dynamodb", "create-table"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("already exists"), "{stdout}");
    let (code, stdout, stderr) = run(&url, &["exec", "--key", "k", "--", "true"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");

    // A Terraform-format table of the same name has the wrong key schema.
    let tf_url = format!("{url}&format=terraform");
    let (code, _, stderr) = run(&tf_url, &["dynamodb", "create-table"]);
    assert_eq!(code, Some(5), "{stderr}");
    assert!(
        stderr.contains("LockID"),
        "names the expected key: {stderr}"
    );
    // Bad input.
    let (code, _, stderr) = run(&tf_url, &["dynamodb", "create-table", "--with-state-table"]);
    assert_eq!(code, Some(2), "{stderr}");
    let (code, _, stderr) = run("mem://", &["dynamodb", "create-table"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("dynamodb://"), "{stderr}");
}

/// An HTTP endpoint that answers every request with DynamoDB's 500
/// `InternalServerError` and counts the requests.
fn failing_endpoint() -> (String, Arc<AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then as much body as Content-Length says.
            let complete = loop {
                let Ok(n) = conn.read(&mut buf) else {
                    break false;
                };
                if n == 0 {
                    break false;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break true;
                    }
                }
            };
            if !complete {
                continue;
            }
            seen.fetch_add(1, Ordering::SeqCst);
            let body = r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"injected"}"#;
            let _ = write!(
                conn,
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/x-amz-json-1.0\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (format!("http://{addr}"), count)
}

/// The SDK may resend reads but never a conditional write, even when the
/// caller's client is configured to retry: a verbatim resend could land
/// after the writer's later operations. Needs no DynamoDB Local.
#[tokio::test]
async fn sdk_resends_reads_but_never_writes() {
    use aws_sdk_dynamodb::config::retry::RetryConfig;
    let (endpoint, requests) = failing_endpoint();
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(&endpoint)
        .credentials_provider(Credentials::new("t", "t", None, None, "test"))
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(1)),
        )
        .build();
    let client = aws_sdk_dynamodb::Client::from_conf(config);
    let store = DynamoDbStore::new(client.clone(), "t");
    let key = LockKey::new("resend/probe").unwrap();

    let read = store.get(&key).await;
    assert!(matches!(read, Err(StoreError::Unavailable(_))), "{read:?}");
    assert_eq!(requests.swap(0, Ordering::SeqCst), 3, "a read is retried");

    let acquire = LockOp {
        key: key.clone(),
        new_rvn: RecordVersion::random(),
        at: WallTime(1),
        kind: OpKind::Acquire {
            from: GrantFrom::Version {
                rvn: RecordVersion(1),
                token: FencingToken(1),
            },
            owner: LeaseId::random(),
            lease_ms: 1000,
            holder: HolderInfo::named("x"),
            at_least: FencingToken::NONE,
            dequeue: Default::default(),
        },
    };
    let written = store.apply(&acquire).await;
    assert!(
        matches!(written, Err(StoreError::Unavailable(_))),
        "{written:?}"
    );
    assert_eq!(
        requests.swap(0, Ordering::SeqCst),
        1,
        "a write is sent once"
    );
    // A grant of an absent record is a transaction (with the token floor's
    // check): sent once too.
    let first_grant = LockOp {
        kind: OpKind::Acquire {
            from: GrantFrom::Absent {
                floor: FencingToken(0),
            },
            owner: LeaseId::random(),
            lease_ms: 1000,
            holder: HolderInfo::named("x"),
            at_least: FencingToken::NONE,
            dequeue: Default::default(),
        },
        ..acquire.clone()
    };
    let written = store.apply(&first_grant).await;
    assert!(written.is_err(), "{written:?}");
    assert_eq!(
        requests.swap(0, Ordering::SeqCst),
        1,
        "a first grant is sent once"
    );

    let terraform = statelock::store::terraform::TerraformDynamoStore::new(client.clone(), "t");
    let tf_key = LockKey::new("bucket/state.tfstate").unwrap();
    let written = terraform
        .apply(&LockOp {
            key: tf_key,
            ..acquire.clone()
        })
        .await;
    assert!(written.is_err(), "{written:?}");
    assert_eq!(
        requests.swap(0, Ordering::SeqCst),
        1,
        "a Terraform write is sent once"
    );

    let heads = DynamoDbStateStore::new(client, "t", "t-state");
    let saved = heads
        .save_fenced(&key, LeaseId::random(), FencingToken(1), None, b"{}")
        .await;
    assert!(saved.is_err(), "{saved:?}");
    assert_eq!(
        requests.swap(0, Ordering::SeqCst),
        1,
        "a state write is sent once"
    );
}

/// Every store error is one readable line naming the endpoint or table and
/// the cause, classified by whether retrying can help: nothing listening is
/// `Unavailable`; `https://` to DynamoDB Local's http port, a missing table
/// and rejected credentials are `Misconfigured`, and the client fails at
/// once, whatever its wait. Endpoint userinfo and credentials never show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_errors_are_one_line_and_classified() {
    let Some(endpoint) = endpoint() else { return };
    store(&endpoint).await;
    let key = unique_key("errors");
    let acquire = || LockOp {
        key: key.clone(),
        new_rvn: RecordVersion::random(),
        at: WallTime(1),
        kind: OpKind::Acquire {
            from: GrantFrom::Version {
                rvn: RecordVersion(1),
                token: FencingToken(1),
            },
            owner: LeaseId::random(),
            lease_ms: 20_000,
            holder: HolderInfo::named("errors"),
            at_least: FencingToken::NONE,
            dequeue: Default::default(),
        },
    };
    // A client that would wait ten minutes for a lock it could get.
    let fails_at_once = |store: DynamoDbStore| async {
        let client = LockClient::new(store);
        let acquired = tokio::time::timeout(
            Duration::from_secs(60),
            client.acquire(
                &key,
                opts(
                    "errors",
                    Duration::from_secs(20),
                    Some(Duration::from_secs(600)),
                ),
            ),
        )
        .await
        .expect("a misconfigured store must fail the acquire at once, not wait");
        match acquired {
            Err(LockError::Store(e @ StoreError::Misconfigured(_))) => e,
            other => panic!("expected a Misconfigured store error, got {other:?}"),
        }
    };

    // Nothing listens: retryable, and says so.
    let dead = common::closed_port_endpoint();
    let store = DynamoDbStore::connect(TABLE, Some("us-east-1"), Some(&dead))
        .await
        .expect("connect is lazy");
    let read = store.get(&key).await.map(|_| ());
    let write = store.apply(&acquire()).await.map(|_| ());
    for result in [read, write] {
        match result {
            Err(e @ StoreError::Unavailable(_)) => {
                let text = e.to_string();
                common::assert_one_readable_line(&text);
                assert!(text.len() < 300, "{} characters: {text}", text.len());
                assert!(
                    text.contains(&format!("cannot connect to {dead} (connection refused)")),
                    "{text}"
                );
            }
            other => panic!("a dead endpoint must be Unavailable, got {other:?}"),
        }
    }

    // https:// to an http port: retrying cannot help.
    let https = endpoint.replacen("http://", "https://", 1);
    let store = DynamoDbStore::connect(TABLE, Some("us-east-1"), Some(&https))
        .await
        .expect("connect is lazy");
    match store.get(&key).await {
        Err(e @ StoreError::Misconfigured(_)) => {
            let text = e.to_string();
            common::assert_one_readable_line(&text);
            assert!(
                text.contains(&format!("TLS handshake with {https} failed"))
                    && text.contains("is the endpoint http?"),
                "{text}"
            );
        }
        other => panic!("https to an http port must be Misconfigured, got {other:?}"),
    }
    common::assert_one_readable_line(&fails_at_once(store).await.to_string());

    // A missing table.
    let missing = format!("statelock-test-missing-{}", uuid::Uuid::new_v4().simple());
    let store = DynamoDbStore::connect(&missing, Some("us-east-1"), Some(&endpoint))
        .await
        .expect("connect is lazy");
    let read = store.get(&key).await.map(|_| ());
    let write = store.apply(&acquire()).await.map(|_| ());
    for result in [read, write] {
        match result {
            Err(e @ StoreError::Misconfigured(_)) => {
                let text = e.to_string();
                common::assert_one_readable_line(&text);
                assert!(
                    text.contains(&format!(
                        "the table {missing:?} does not exist at {endpoint}"
                    )),
                    "{text}"
                );
            }
            other => panic!("a missing table must be Misconfigured, got {other:?}"),
        }
    }
    let text = fails_at_once(store).await.to_string();
    assert!(text.contains("does not exist"), "{text}");

    // Userinfo in the endpoint URL is never shown.
    let with_userinfo = endpoint.replacen("http://", "http://statelock:s3cr3t-pass@", 1);
    let store = DynamoDbStore::connect(&missing, Some("us-east-1"), Some(&with_userinfo))
        .await
        .expect("connect is lazy");
    let redacted = endpoint.replacen("http://", "http://***@", 1);
    assert!(
        store.describe().contains(&redacted) && !store.describe().contains("s3cr3t"),
        "{}",
        store.describe()
    );
    match store.get(&key).await {
        Err(e @ StoreError::Misconfigured(_)) => {
            let text = e.to_string();
            common::assert_one_readable_line(&text);
            assert!(text.contains(&redacted), "{text}");
            assert!(
                !text.contains("s3cr3t") && !text.contains("statelock:"),
                "{text}"
            );
        }
        other => panic!("a missing table must be Misconfigured, got {other:?}"),
    }

    // Rejected credentials (DynamoDB Local refuses access keys that are not
    // alphanumeric): no key, secret or token in the message.
    let (key_id, secret, token) = (
        "BAD-KEY-7EXAMPLE",
        "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY0",
        "IQoJb3JpZ2luX2VjEJrSESSIONTOKENEXAMPLE0123456789",
    );
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(&endpoint)
        .credentials_provider(Credentials::new(
            key_id,
            secret,
            Some(token.to_string()),
            None,
            "test",
        ))
        .build();
    let store = DynamoDbStore::new(aws_sdk_dynamodb::Client::from_conf(config), TABLE);
    match store.get(&key).await {
        Err(e @ StoreError::Misconfigured(_)) => {
            let text = e.to_string();
            common::assert_one_readable_line(&text);
            assert!(text.contains("the credentials were rejected"), "{text}");
            for hidden in [key_id, secret, token] {
                assert!(!text.contains(hidden), "{hidden} shown: {text}");
            }
        }
        other => panic!("rejected credentials must be Misconfigured, got {other:?}"),
    }
    let text = fails_at_once(store).await.to_string();
    assert!(text.contains("UnrecognizedClientException"), "{text}");
}

/// `statelock exec` says what is wrong with the store in one line and exits
/// 5: at once for `https://` to an http port (whatever `--wait`), after its
/// wait for an endpoint where nothing listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reports_store_failures_in_one_line() {
    let Some(endpoint) = endpoint() else { return };
    let exec = |store: String, wait: &'static str| async move {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_statelock"))
            .arg("--store")
            .arg(store)
            .args(["exec", "--key", "errors/cli", "--wait", wait, "--", "true"])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), child)
            .await
            .expect("statelock exec must give up, not wait")
            .expect("run statelock");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let https = endpoint.replacen("http://", "https://", 1);
    let (code, stderr) = exec(format!("dynamodb://{TABLE}?endpoint={https}"), "10m").await;
    assert_eq!(code, Some(5), "{stderr}");
    let line = stderr.trim_end();
    assert!(!line.contains('\n'), "one line: {stderr}");
    assert!(line.contains("TLS handshake"), "{stderr}");
    assert!(!line.contains("DispatchFailure"), "{stderr}");

    // A store that does not answer is said at once, then retried until the
    // wait runs out: one readable line each time, and the last one exits 5.
    let dead = common::closed_port_endpoint();
    let (code, stderr) = exec(format!("dynamodb://{TABLE}?endpoint={dead}"), "1s").await;
    assert_eq!(code, Some(5), "{stderr}");
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    assert!(lines.len() >= 2, "a retry line, then the failure: {stderr}");
    assert!(
        lines[0].contains("connection refused") && lines[0].contains("retrying"),
        "{stderr}"
    );
    for line in &lines {
        assert!(line.contains("connection refused"), "{stderr}");
        assert!(!line.contains("DispatchFailure"), "{stderr}");
    }
}

/// With a long wait, a store that does not answer is said on stderr within
/// seconds (not after the wait), and SIGINT still ends the wait at once.
#[tokio::test]
async fn cli_says_at_once_that_the_store_does_not_answer() {
    use tokio::io::AsyncBufReadExt;
    let dead = common::closed_port_endpoint();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_statelock"))
        .arg("--store")
        .arg(format!(
            "dynamodb://{TABLE}?region=us-east-1&endpoint={dead}"
        ))
        .args([
            "exec",
            "--key",
            "errors/long-wait",
            "--wait",
            "10m",
            "--",
            "true",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run statelock");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the store's trouble must be said within seconds, not after --wait")
        .expect("read stderr")
        .expect("a line");
    assert!(
        first.contains("connection refused") && first.contains("retrying until --wait"),
        "{first}"
    );
    let pid = nix::unistd::Pid::from_raw(child.id().expect("pid") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("SIGINT ends the wait")
        .expect("wait");
    assert_eq!(status.code(), Some(130));
}

/// An endpoint that accepts connections but never answers: a write (sent
/// once) times out after the attempt timeout, said in one line. Needs no
/// DynamoDB Local.
#[tokio::test]
async fn silent_endpoint_times_out_in_one_line() {
    let silent = common::silent_endpoint();
    let store = DynamoDbStore::connect(TABLE, Some("us-east-1"), Some(&silent))
        .await
        .expect("connect is lazy");
    let written = store
        .apply(&LockOp {
            key: unique_key("silent"),
            new_rvn: RecordVersion::random(),
            at: WallTime(1),
            kind: OpKind::Acquire {
                from: GrantFrom::Version {
                    rvn: RecordVersion(1),
                    token: FencingToken(1),
                },
                owner: LeaseId::random(),
                lease_ms: 20_000,
                holder: HolderInfo::named("silent"),
                at_least: FencingToken::NONE,
                dequeue: Default::default(),
            },
        })
        .await;
    match written {
        Err(e @ StoreError::Unavailable(_)) => {
            let text = e.to_string();
            common::assert_one_readable_line(&text);
            let after = statelock::store::dynamodb::ATTEMPT_TIMEOUT.as_secs();
            assert!(
                text.contains(&format!(
                    "no answer from {silent}: the request timed out after {after} s"
                )),
                "{text}"
            );
        }
        other => panic!("a silent endpoint must be Unavailable, got {other:?}"),
    }
}
