//! Uncontended acquire + release through `LockClient` over DynamoDB Local,
//! measured in the same run as the raw floor: one conditional `PutItem` and one
//! conditional `DeleteItem` on a fresh key, sent with the same SDK client.
//!
//! After the criterion functions, a paired pass runs floor, store and client
//! side by side in rotating order and prints their medians and the median of
//! the per-round client/floor ratios (immune to drift during the run).
//!
//! Needs DynamoDB Local: `eval "$(scripts/services.sh start)"`, then
//! `cargo bench --bench dynamodb`. Results: `target/criterion/dynamodb/*/new/estimates.json`.

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::types::AttributeValue;
use criterion::{criterion_group, criterion_main, Criterion};
use statelock::client::{AcquireOptions, LockClient};
use statelock::protocol::{GrantFrom, LeaseId, LockOp, OpKind, RecordVersion, WallTime};
use statelock::store::dynamodb::DynamoDbStore;
use statelock::store::LockStore;
use statelock::{FencingToken, HolderInfo, LockKey};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const TABLE: &str = "statelock-bench-locks";

/// Untimed rounds of every request path before measuring.
const WARM_UP_ROUNDS: usize = 2_000;

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

/// The floor: a conditional create and a conditional delete of one item
/// (`lockKey` and `lockId` only).
async fn raw_put_delete(client: &aws_sdk_dynamodb::Client, key: String) {
    put_delete(client, key, false).await
}

/// The floor with a whole lock item: a conditional create of an item with
/// every attribute a statelock record has, then a conditional delete. Shows
/// how much of the gap to the floor is the item's size alone.
async fn raw_put_delete_full_item(client: &aws_sdk_dynamodb::Client, key: String) {
    put_delete(client, key, true).await
}

async fn put_delete(client: &aws_sdk_dynamodb::Client, key: String, full_item: bool) {
    let s = |v: String| AttributeValue::S(v);
    let n = |v: u64| AttributeValue::N(v.to_string());
    let mut item = HashMap::from([
        ("lockKey".to_string(), s(key.clone())),
        ("lockId".to_string(), s(uuid::Uuid::new_v4().to_string())),
    ]);
    if full_item {
        let metadata = [("host", "bench-host"), ("pid", "4242")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), s(v.to_string())))
            .collect();
        item.extend([
            ("rvn".to_string(), s(RecordVersion::random().to_string())),
            ("token".to_string(), n(1)),
            ("leaseMs".to_string(), n(20_000)),
            ("released".to_string(), AttributeValue::Bool(false)),
            ("lockedBy".to_string(), s("bench".into())),
            ("metadata".to_string(), AttributeValue::M(metadata)),
            ("lockedAt".to_string(), n(1_700_000_000)),
            ("lockedAtMs".to_string(), n(1_700_000_000_000)),
            ("lastHeartbeat".to_string(), n(1_700_000_000)),
            ("lastHeartbeatMs".to_string(), n(1_700_000_000_000)),
        ]);
    }
    client
        .put_item()
        .table_name(TABLE)
        .set_item(Some(item))
        .condition_expression("attribute_not_exists(lockKey)")
        .send()
        .await
        .unwrap_or_else(|e| panic!("raw put: {e:?}"));
    black_box(
        client
            .delete_item()
            .table_name(TABLE)
            .key("lockKey", s(key))
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

/// Deletes a benchmark key's record (outside the timed part).
async fn delete(client: &aws_sdk_dynamodb::Client, key: &LockKey) {
    client
        .delete_item()
        .table_name(TABLE)
        .key("lockKey", AttributeValue::S(key.to_string()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("cleanup delete: {e:?}"));
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
            from: GrantFrom::Absent {
                floor: FencingToken(0),
            },
            owner,
            lease_ms: 20_000,
            holder: HolderInfo::named("bench"),
            at_least: FencingToken::NONE,
            dequeue: Default::default(),
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
    // One thread for the benchmark, its requests and the guard's heartbeat
    // task: no cross-thread hand-offs competing with DynamoDB Local's JVM for
    // the cores.
    let rt = tokio::runtime::Builder::new_current_thread()
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

    // DynamoDB Local runs on the JVM: every request path is warmed up (JIT)
    // before anything is measured, or whichever runs first pays for it.
    rt.block_on(async {
        for _ in 0..WARM_UP_ROUNDS {
            raw_put_delete(&sdk, fresh_key(&run)).await;
            raw_put_delete_full_item(&sdk, fresh_key(&run)).await;
            let key = LockKey::new(fresh_key(&run)).unwrap_or_else(|e| panic!("{e}"));
            store_acquire_release(&store, key.clone()).await;
            client_acquire_release(&client, &key).await;
            delete(&sdk, &key).await;
        }
    });

    let mut group = c.benchmark_group("dynamodb");
    group.sample_size(100);
    group.measurement_time(Duration::from_secs(10));
    // The floor is measured first and again last, so drift within the run
    // (DynamoDB Local warming up, the machine's load) shows.
    group.bench_function("raw_put_delete", |b| {
        b.to_async(&rt)
            .iter(|| raw_put_delete(&sdk, fresh_key(&run)))
    });
    group.bench_function("raw_put_delete_full_item", |b| {
        b.to_async(&rt)
            .iter(|| raw_put_delete_full_item(&sdk, fresh_key(&run)))
    });
    let (sdk_ref, store_ref, client_ref, run_ref) = (&sdk, &store, &client, run.as_str());
    // Fresh-key runs delete each released record after the timed part, so
    // the table stays as small as in the floor's runs (DynamoDB Local slows
    // down as a table grows; the floor deletes its items).
    group.bench_function("store_acquire_release_fresh_key", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let key = LockKey::new(fresh_key(run_ref)).unwrap_or_else(|e| panic!("{e}"));
                let start = Instant::now();
                store_acquire_release(store_ref, key.clone()).await;
                timed += start.elapsed();
                delete(sdk_ref, &key).await;
            }
            timed
        })
    });
    group.bench_function("client_acquire_release_fresh_key", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let key = LockKey::new(fresh_key(run_ref)).unwrap_or_else(|e| panic!("{e}"));
                let start = Instant::now();
                client_acquire_release(client_ref, &key).await;
                timed += start.elapsed();
                delete(sdk_ref, &key).await;
            }
            timed
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

    // Criterion measures one function after another, so the machine's and
    // DynamoDB Local's drift over minutes lands between the floor and the
    // client. The paired pass runs the floor, the full-item floor, the store
    // and the client side by side, rotating which goes first, and reports
    // each one's median and the median of the per-round client/floor ratios:
    // the drift-free comparison.
    const NAMES: [&str; 4] = [
        "raw_put_delete",
        "raw_put_delete_full_item",
        "store",
        "client",
    ];
    let mut times: [Vec<f64>; 4] = Default::default();
    let mut ratios = Vec::with_capacity(PAIRED_ROUNDS);
    rt.block_on(async {
        for round in 0..PAIRED_ROUNDS {
            let mut t = [Duration::ZERO; 4];
            for i in 0..4 {
                let which = (round + i) % 4;
                let key = fresh_key(&run);
                let lock_key = LockKey::new(key.clone()).unwrap_or_else(|e| panic!("{e}"));
                let start = Instant::now();
                match which {
                    0 => raw_put_delete(&sdk, key).await,
                    1 => raw_put_delete_full_item(&sdk, key).await,
                    2 => store_acquire_release(&store, lock_key.clone()).await,
                    _ => client_acquire_release(&client, &lock_key).await,
                }
                t[which] = start.elapsed();
                if which >= 2 {
                    delete(&sdk, &lock_key).await;
                }
            }
            for (all, one) in times.iter_mut().zip(t) {
                all.push(one.as_secs_f64());
            }
            ratios.push(t[3].as_secs_f64() / t[0].as_secs_f64());
        }
    });
    let medians: Vec<String> = NAMES
        .iter()
        .zip(times.iter_mut())
        .map(|(name, all)| format!("{name} {:.3} ms", median(all) * 1e3))
        .collect();
    println!(
        "dynamodb/paired ({PAIRED_ROUNDS} rounds, medians): {}; client/raw ratio per round, median {:.3}",
        medians.join(", "),
        median(&mut ratios)
    );
}

/// Rounds of the paired pass (each: floor, store and client once).
const PAIRED_ROUNDS: usize = 3_000;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

criterion_group!(benches, dynamodb);
criterion_main!(benches);
