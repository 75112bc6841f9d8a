//! Uncontended acquire + release through `LockClient` over DynamoDB Local,
//! measured in the same run as the raw floor: one conditional `PutItem` and one
//! conditional `DeleteItem` on a fresh key, sent with the same SDK client.
//!
//! Needs DynamoDB Local: `eval "$(scripts/services.sh start)"`, then
//! `cargo bench --bench dynamodb`. Results: `target/criterion/dynamodb/*/new/estimates.json`.

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::types::AttributeValue;
use criterion::{criterion_group, criterion_main, Criterion};
use statelock::client::{AcquireOptions, LockClient};
use statelock::protocol::{LeaseId, LockOp, OpKind, RecordVersion, WallTime};
use statelock::store::dynamodb::DynamoDbStore;
use statelock::store::LockStore;
use statelock::{HolderInfo, LockKey};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const TABLE: &str = "statelock-bench-locks";

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A key no earlier iteration (or run) used.
fn fresh_key(run: &str) -> String {
    format!("bench/{run}/{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn endpoint() -> String {
    std::env::var("STATELOCK_TEST_DYNAMODB_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "STATELOCK_TEST_DYNAMODB_ENDPOINT is not set: start DynamoDB Local with \
             `eval \"$(scripts/services.sh start)\"` before `cargo bench --bench dynamodb`"
        )
    })
}

fn sdk_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "bench"))
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// The floor: a conditional create and a conditional delete of one item.
async fn raw_put_delete(client: &aws_sdk_dynamodb::Client, key: String) {
    client
        .put_item()
        .table_name(TABLE)
        .item("lockKey", AttributeValue::S(key.clone()))
        .item(
            "lockId",
            AttributeValue::S(uuid::Uuid::new_v4().to_string()),
        )
        .condition_expression("attribute_not_exists(lockKey)")
        .send()
        .await
        .unwrap_or_else(|e| panic!("raw put: {e:?}"));
    black_box(
        client
            .delete_item()
            .table_name(TABLE)
            .key("lockKey", AttributeValue::S(key))
            .condition_expression("attribute_exists(lockKey)")
            .send()
            .await
            .unwrap_or_else(|e| panic!("raw delete: {e:?}")),
    );
}

async fn client_acquire_release(client: &LockClient, key: &LockKey) {
    let opts = AcquireOptions {
        wait: Some(Duration::ZERO),
        holder: HolderInfo::named("bench"),
        ..AcquireOptions::default()
    };
    let guard = client
        .acquire(key, opts)
        .await
        .unwrap_or_else(|e| panic!("acquire: {e}"));
    black_box(guard.token());
    guard
        .release()
        .await
        .unwrap_or_else(|e| panic!("release: {e}"));
}

/// The same two writes as the client sends, straight to the store: the
/// store's own cost without the client (waiter, guard, heartbeat task).
async fn store_acquire_release(store: &DynamoDbStore, key: LockKey) {
    let owner = LeaseId::random();
    let acquire = LockOp {
        key: key.clone(),
        new_rvn: RecordVersion::random(),
        at: WallTime(0),
        kind: OpKind::Acquire {
            owner,
            lease_ms: 20_000,
            holder: HolderInfo::named("bench"),
        },
    };
    let granted = store
        .apply(&acquire)
        .await
        .unwrap_or_else(|e| panic!("store acquire: {e}"));
    let release = LockOp {
        key,
        new_rvn: RecordVersion::random(),
        at: WallTime(0),
        kind: OpKind::Release {
            owner,
            current: granted.rvn,
        },
    };
    black_box(
        store
            .apply(&release)
            .await
            .unwrap_or_else(|e| panic!("store release: {e}")),
    );
}

fn dynamodb(c: &mut Criterion) {
    let endpoint = endpoint();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
    let sdk = sdk_client(&endpoint);
    let store = DynamoDbStore::new(sdk.clone(), TABLE);
    rt.block_on(store.create_table())
        .unwrap_or_else(|e| panic!("cannot create {TABLE} on {endpoint}: {e}"));
    let client = LockClient::new(store.clone());
    let run = uuid::Uuid::new_v4().simple().to_string();
    let reused = LockKey::new(format!("bench/{run}/reused")).unwrap_or_else(|e| panic!("{e}"));

    let mut group = c.benchmark_group("dynamodb");
    group.sample_size(100);
    group.measurement_time(Duration::from_secs(10));
    // The floor is measured first and again last, so drift within the run
    // (DynamoDB Local warming up, the machine's load) shows.
    group.bench_function("raw_put_delete", |b| {
        b.to_async(&rt)
            .iter(|| raw_put_delete(&sdk, fresh_key(&run)))
    });
    group.bench_function("store_acquire_release_fresh_key", |b| {
        b.to_async(&rt).iter(|| async {
            let key = LockKey::new(fresh_key(&run)).unwrap_or_else(|e| panic!("{e}"));
            store_acquire_release(&store, key).await
        })
    });
    group.bench_function("client_acquire_release_fresh_key", |b| {
        b.to_async(&rt).iter(|| async {
            let key = LockKey::new(fresh_key(&run)).unwrap_or_else(|e| panic!("{e}"));
            client_acquire_release(&client, &key).await
        })
    });
    group.bench_function("client_acquire_release_reused_key", |b| {
        b.to_async(&rt)
            .iter(|| client_acquire_release(&client, &reused))
    });
    group.bench_function("raw_put_delete_again", |b| {
        b.to_async(&rt)
            .iter(|| raw_put_delete(&sdk, fresh_key(&run)))
    });
    group.finish();
}

criterion_group!(benches, dynamodb);
criterion_main!(benches);
