//! Uncontended acquire + release through `LockClient` on a quorum of three
//! DynamoDB Local tables (three tables on the one DynamoDB Local), measured
//! in the same run as the same client on each member table alone.
//!
//! A quorum op is one parallel round per member, so its yardstick is the
//! slowest member of the fastest majority: with three similar members, the
//! second fastest single-table figure. After the criterion functions, a
//! paired pass runs the quorum and each member alone side by side in
//! rotating order and prints each one's median and p99, the median of the
//! per-round ratios quorum / second-fastest member, and the same for one
//! read (`get`) to show what the quorum's read round costs.
//!
//! All three tables live on one DynamoDB Local, so a quorum round asks that
//! one server for three times the work of a member alone. Each round
//! therefore also runs the three members' clients *at once* (each on its
//! own key, concurrently on the bench's thread) and notes when the second
//! and the third finished: the slowest member of the fastest majority, and
//! the slowest member, under the same load a quorum round puts on the
//! server. The ratio of the quorum to those is the cost of the quorum
//! protocol itself.
//!
//! Needs DynamoDB Local: `eval "$(scripts/services.sh start)"`, then
//! `cargo bench --bench quorum`. It creates its three tables and leaves them.

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use criterion::{criterion_group, criterion_main, Criterion};
use statelock::client::{AcquireOptions, LockClient};
use statelock::store::dynamodb::DynamoDbStore;
use statelock::store::quorum::QuorumStore;
use statelock::store::LockStore;
use statelock::{HolderInfo, LockKey};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The member tables.
const TABLES: [&str; 3] = [
    "statelock-bench-quorum-a",
    "statelock-bench-quorum-b",
    "statelock-bench-quorum-c",
];

/// Untimed rounds of every request path before measuring (DynamoDB Local
/// runs on the JVM: whichever path runs first would pay for its JIT).
const WARM_UP_ROUNDS: usize = 300;

/// Rounds of the paired pass.
const PAIRED_ROUNDS: usize = 1_000;

fn endpoint() -> String {
    std::env::var("STATELOCK_TEST_DYNAMODB_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "STATELOCK_TEST_DYNAMODB_ENDPOINT is not set: start DynamoDB Local with \
             `eval \"$(scripts/services.sh start)\"` before `cargo bench --bench quorum`"
        )
    })
}

/// An SDK client of its own (its own connection pool), as each member of a
/// quorum opened from its URL has.
fn sdk_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "bench"))
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

async fn acquire_release(client: &LockClient, key: &LockKey) {
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

async fn read(store: &dyn LockStore, key: &LockKey) {
    black_box(store.get(key).await.unwrap_or_else(|e| panic!("get: {e}")));
}

/// The value at quantile `q` (0..=1) of `values` (sorted in place).
fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return f64::NAN;
    }
    let i = ((values.len() - 1) as f64 * q).round() as usize;
    values[i.min(values.len() - 1)]
}

/// The second smallest of three.
fn second_fastest(mut t: [f64; 3]) -> f64 {
    t.sort_by(f64::total_cmp);
    t[1]
}

/// Runs `op` for the three members at once and returns, in seconds from the
/// common start, when the second and the third of them finished.
async fn at_once<F, Fut>(op: F) -> (f64, f64)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    let timed = |i: usize| {
        let fut = op(i);
        async move {
            fut.await;
            start.elapsed().as_secs_f64()
        }
    };
    let (a, b, c) = tokio::join!(timed(0), timed(1), timed(2));
    let mut t = [a, b, c];
    t.sort_by(f64::total_cmp);
    (t[1], t[2])
}

fn quorum(c: &mut Criterion) {
    let endpoint = endpoint();
    // One thread, like benches/dynamodb.rs: the quorum's member requests run
    // as tasks on it, concurrently, without cross-thread hand-offs competing
    // with DynamoDB Local's JVM for the cores.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
    let members: Vec<DynamoDbStore> = TABLES
        .iter()
        .map(|t| DynamoDbStore::new(sdk_client(&endpoint), *t))
        .collect();
    for m in &members {
        rt.block_on(m.create_table())
            .unwrap_or_else(|e| panic!("cannot create a table on {endpoint}: {e}"));
    }
    let quorum = Arc::new(
        QuorumStore::new(
            members
                .iter()
                .map(|m| Arc::new(m.clone()) as Arc<dyn LockStore>)
                .collect(),
        )
        .unwrap_or_else(|e| panic!("quorum: {e}")),
    );
    let quorum_client = LockClient::builder(quorum.clone()).build();
    let singles: Vec<LockClient> = members.iter().map(|m| LockClient::new(m.clone())).collect();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let key =
        |what: &str| LockKey::new(format!("bench/{run}/{what}")).unwrap_or_else(|e| panic!("{e}"));
    // Each client its own reused key (the steady state of a CI key): the
    // quorum's key lives in all three tables, a single's in its own.
    let quorum_key = key("quorum");
    let single_keys: Vec<LockKey> = (0..3).map(|i| key(&format!("single-{i}"))).collect();

    rt.block_on(async {
        for _ in 0..WARM_UP_ROUNDS {
            acquire_release(&quorum_client, &quorum_key).await;
            read(&*quorum, &quorum_key).await;
            for (i, single) in singles.iter().enumerate() {
                acquire_release(single, &single_keys[i]).await;
                read(&members[i], &single_keys[i]).await;
            }
        }
    });

    let mut group = c.benchmark_group("quorum");
    group.sample_size(50);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("quorum_of_3_acquire_release", |b| {
        b.to_async(&rt)
            .iter(|| acquire_release(&quorum_client, &quorum_key))
    });
    for (i, single) in singles.iter().enumerate() {
        let name = format!("member_{}_alone_acquire_release", ["a", "b", "c"][i]);
        let k = &single_keys[i];
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| acquire_release(single, k))
        });
    }
    group.finish();

    // The paired pass: per round the quorum and each member alone, rotating
    // which goes first, so drift within the run lands on all of them.
    let mut quorum_times = Vec::with_capacity(PAIRED_ROUNDS);
    let mut single_times: [Vec<f64>; 3] = Default::default();
    let mut second_times = Vec::with_capacity(PAIRED_ROUNDS);
    let mut ratios = Vec::with_capacity(PAIRED_ROUNDS);
    let mut quorum_reads = Vec::with_capacity(PAIRED_ROUNDS);
    let mut single_reads: [Vec<f64>; 3] = Default::default();
    let mut read_ratios = Vec::with_capacity(PAIRED_ROUNDS);
    // The three members at once: (majority finished, all finished).
    let mut together: (Vec<f64>, Vec<f64>) = Default::default();
    let mut together_ratios: (Vec<f64>, Vec<f64>) = Default::default();
    let mut together_reads: (Vec<f64>, Vec<f64>) = Default::default();
    let mut together_read_ratios: (Vec<f64>, Vec<f64>) = Default::default();
    rt.block_on(async {
        for round in 0..PAIRED_ROUNDS {
            let mut t = [0f64; 4];
            let mut r = [0f64; 4];
            let mut both = (0f64, 0f64);
            let mut both_reads = (0f64, 0f64);
            for i in 0..5 {
                let which = (round + i) % 5;
                if which == 4 {
                    both = at_once(|m| acquire_release(&singles[m], &single_keys[m])).await;
                    both_reads = at_once(|m| read(&members[m], &single_keys[m])).await;
                    continue;
                }
                let start = Instant::now();
                match which {
                    3 => acquire_release(&quorum_client, &quorum_key).await,
                    m => acquire_release(&singles[m], &single_keys[m]).await,
                }
                t[which] = start.elapsed().as_secs_f64();
                let start = Instant::now();
                match which {
                    3 => read(&*quorum, &quorum_key).await,
                    m => read(&members[m], &single_keys[m]).await,
                }
                r[which] = start.elapsed().as_secs_f64();
            }
            together.0.push(both.0);
            together.1.push(both.1);
            together_ratios.0.push(t[3] / both.0);
            together_ratios.1.push(t[3] / both.1);
            together_reads.0.push(both_reads.0);
            together_reads.1.push(both_reads.1);
            together_read_ratios.0.push(r[3] / both_reads.0);
            together_read_ratios.1.push(r[3] / both_reads.1);
            let second = second_fastest([t[0], t[1], t[2]]);
            quorum_times.push(t[3]);
            second_times.push(second);
            ratios.push(t[3] / second);
            quorum_reads.push(r[3]);
            read_ratios.push(r[3] / second_fastest([r[0], r[1], r[2]]));
            for m in 0..3 {
                single_times[m].push(t[m]);
                single_reads[m].push(r[m]);
            }
        }
    });
    let ms = |v: &mut Vec<f64>| {
        format!(
            "median {:.3} ms, p99 {:.3} ms",
            quantile(v, 0.5) * 1e3,
            quantile(v, 0.99) * 1e3
        )
    };
    println!("quorum/paired ({PAIRED_ROUNDS} rounds), client acquire + release on a reused key:");
    println!("  quorum of 3:                 {}", ms(&mut quorum_times));
    for (m, times) in single_times.iter_mut().enumerate() {
        println!(
            "  member {} alone:              {}",
            ["a", "b", "c"][m],
            ms(times)
        );
    }
    println!("  2nd fastest member (round):  {}", ms(&mut second_times));
    println!(
        "  ratio quorum / 2nd fastest member, per round: median {:.3}, p99 {:.3}",
        quantile(&mut ratios, 0.5),
        quantile(&mut ratios, 0.99)
    );
    println!("  3 members at once, majority: {}", ms(&mut together.0));
    println!("  3 members at once, all:      {}", ms(&mut together.1));
    println!(
        "  ratio quorum / members at once, per round: majority median {:.3} p99 {:.3}, all median {:.3} p99 {:.3}",
        quantile(&mut together_ratios.0, 0.5),
        quantile(&mut together_ratios.0, 0.99),
        quantile(&mut together_ratios.1, 0.5),
        quantile(&mut together_ratios.1, 0.99)
    );
    println!("quorum/paired, one read (get) of the same key:");
    println!("  quorum of 3:                 {}", ms(&mut quorum_reads));
    for (m, times) in single_reads.iter_mut().enumerate() {
        println!(
            "  member {} alone:              {}",
            ["a", "b", "c"][m],
            ms(times)
        );
    }
    println!(
        "  ratio quorum / 2nd fastest member, per round: median {:.3}",
        quantile(&mut read_ratios, 0.5)
    );
    println!(
        "  3 members at once, majority: {}",
        ms(&mut together_reads.0)
    );
    println!(
        "  3 members at once, all:      {}",
        ms(&mut together_reads.1)
    );
    println!(
        "  ratio quorum / members at once, per round: majority median {:.3}, all median {:.3}",
        quantile(&mut together_read_ratios.0, 0.5),
        quantile(&mut together_read_ratios.1, 0.5)
    );
}

criterion_group!(benches, quorum);
criterion_main!(benches);
