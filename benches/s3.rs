//! Uncontended lock and state operations on the S3 server, each measured in
//! the same run as its raw floor sent with the same kind of SDK client:
//!
//! - lock floor: one `PutObject` with `If-None-Match: *` of a fresh object and
//!   one `DeleteObject` with `If-Match` of its ETag (the bare conditional-write
//!   lock); against it `LockClient` acquire + release on a fresh key and on a
//!   reused key (the steady state of a CI key);
//! - state floor: one `PutObject` with `If-Match` of a state-sized object;
//!   against it a fenced `StateStore::save` (the conditional write of
//!   `state.json` plus its immutable history snapshot).
//!
//! Criterion functions first, then a paired pass that runs every measurement
//! once per round in rotating order and prints the medians and the median of
//! the per-round ratios (immune to drift during the run).
//!
//! Needs the S3 server: `eval "$(scripts/services.sh start)"`, then
//! `cargo bench --bench s3` (reads `STATELOCK_TEST_S3_ENDPOINT`).

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use criterion::{criterion_group, criterion_main, Criterion};
use statelock::client::{AcquireOptions, LockClient, LockGuard};
use statelock::state::fenced::FencedStore;
use statelock::state::s3::S3StateBackend;
use statelock::state::{seal_for, StateDocument, StateStore, StateVersion, Writer};
use statelock::store::s3::S3LockStore;
use statelock::store::url::S3Location;
use statelock::{HolderInfo, LockKey};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const BUCKET: &str = "statelock-bench";

/// Untimed rounds of every request path before measuring.
const WARM_UP_ROUNDS: usize = 50;

/// Rounds of the paired pass.
const PAIRED_ROUNDS: usize = 300;

static NEXT: AtomicU64 = AtomicU64::new(0);

fn endpoint() -> String {
    std::env::var("STATELOCK_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "STATELOCK_TEST_S3_ENDPOINT is not set: start the S3 server with \
             `eval \"$(scripts/services.sh start)\"` before `cargo bench --bench s3`"
        )
    })
}

fn sdk_client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new("test", "test", None, None, "bench"))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Everything one run measures against.
struct Bench {
    sdk: aws_sdk_s3::Client,
    run: String,
    client: LockClient,
    reused: LockKey,
    state: FencedStore<S3StateBackend>,
    /// The state's holder for the whole run (sealed once).
    guard: LockGuard,
    writer: Writer,
    version: std::sync::Mutex<StateVersion>,
    document: StateDocument,
    /// The state floor's object, its body and current ETag.
    floor_key: String,
    floor_body: Vec<u8>,
    floor_etag: std::sync::Mutex<String>,
}

impl Bench {
    async fn new(endpoint: &str) -> Bench {
        let sdk = sdk_client(endpoint);
        if let Err(e) = sdk.create_bucket().bucket(BUCKET).send().await {
            let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&e);
            assert!(
                matches!(
                    code,
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ),
                "cannot create the bucket {BUCKET}: {e:?}"
            );
        }
        let run = format!("bench/{}", uuid::Uuid::new_v4().simple());
        let at = |what: &str| S3Location {
            region: Some("us-east-1".into()),
            endpoint: Some(endpoint.to_string()),
            ..S3Location::new(BUCKET, format!("{run}/{what}"))
        };
        let locks = S3LockStore::connect(&at("locks"))
            .await
            .unwrap_or_else(|e| panic!("lock store: {e}"));
        let client = LockClient::new(locks);
        let state = FencedStore::new(
            S3StateBackend::connect(&at("state"))
                .await
                .unwrap_or_else(|e| panic!("state store: {e}")),
        );
        let key = LockKey::new("stack:bench:env:prod").unwrap_or_else(|e| panic!("{e}"));
        let guard = client
            .acquire(&key, options(Duration::from_secs(600)))
            .await
            .unwrap_or_else(|e| panic!("acquire the state's lock: {e}"));
        let (writer, sealed) = seal_for(&state, &guard)
            .await
            .unwrap_or_else(|e| panic!("seal: {e}"));
        let mut document = StateDocument::empty(Some("bench"), Some("prod"));
        for i in 0..20 {
            document
                .outputs
                .insert(format!("output_{i}"), serde_json::Value::from(i));
        }
        let floor_body = serde_json::to_vec_pretty(&document).unwrap_or_else(|e| panic!("{e}"));
        let floor_key = format!("{run}/floor/state.json");
        let put = sdk
            .put_object()
            .bucket(BUCKET)
            .key(&floor_key)
            .body(ByteStream::from(floor_body.clone()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("floor object: {e:?}"));
        Bench {
            reused: LockKey::new(format!("{run}/reused")).unwrap_or_else(|e| panic!("{e}")),
            sdk,
            run,
            client,
            state,
            guard,
            writer,
            version: std::sync::Mutex::new(sealed.version),
            document,
            floor_key,
            floor_body,
            floor_etag: std::sync::Mutex::new(put.e_tag().unwrap_or_default().to_string()),
        }
    }

    fn fresh_key(&self) -> LockKey {
        LockKey::new(format!(
            "{}/fresh/{}",
            self.run,
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The lock floor: a conditional create and a conditional delete.
    async fn raw_put_delete(&self) {
        let key = format!(
            "{}/raw/{}.json",
            self.run,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let put = self
            .sdk
            .put_object()
            .bucket(BUCKET)
            .key(&key)
            .if_none_match("*")
            .body(ByteStream::from_static(b"{\"owner\":\"bench\"}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("raw put: {e:?}"));
        black_box(
            self.sdk
                .delete_object()
                .bucket(BUCKET)
                .key(&key)
                .if_match(put.e_tag().unwrap_or_default())
                .send()
                .await
                .unwrap_or_else(|e| panic!("raw delete: {e:?}")),
        );
    }

    async fn client_acquire_release(&self, key: &LockKey) {
        let guard = self
            .client
            .acquire(key, options(Duration::from_secs(20)))
            .await
            .unwrap_or_else(|e| panic!("acquire: {e}"));
        black_box(guard.token());
        guard
            .release()
            .await
            .unwrap_or_else(|e| panic!("release: {e}"));
    }

    /// The state floor: one `PutObject` with `If-Match` of a state-sized body.
    async fn raw_put_if_match(&self) {
        let etag = self
            .floor_etag
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let put = self
            .sdk
            .put_object()
            .bucket(BUCKET)
            .key(&self.floor_key)
            .if_match(etag)
            .body(ByteStream::from(self.floor_body.clone()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("raw conditional put: {e:?}"));
        *self.floor_etag.lock().unwrap_or_else(|e| e.into_inner()) =
            put.e_tag().unwrap_or_default().to_string();
    }

    /// A fenced save of the state document over the version last saved.
    async fn fenced_save(&self) {
        let expected = self
            .version
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let next = self
            .state
            .save(&self.writer, &expected, self.document.clone())
            .await
            .unwrap_or_else(|e| panic!("fenced save: {e}"));
        *self.version.lock().unwrap_or_else(|e| e.into_inner()) = next;
    }
}

fn options(lease: Duration) -> AcquireOptions {
    AcquireOptions {
        wait: Some(Duration::ZERO),
        lease,
        holder: HolderInfo::named("bench"),
        ..AcquireOptions::default()
    }
}

fn s3(c: &mut Criterion) {
    let endpoint = endpoint();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
    let bench = rt.block_on(Bench::new(&endpoint));
    rt.block_on(async {
        for _ in 0..WARM_UP_ROUNDS {
            bench.raw_put_delete().await;
            bench.client_acquire_release(&bench.fresh_key()).await;
            bench.client_acquire_release(&bench.reused).await;
            bench.raw_put_if_match().await;
            bench.fenced_save().await;
        }
    });

    let mut group = c.benchmark_group("s3");
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(5));
    let b_ref = &bench;
    group.bench_function("raw_put_delete", |b| {
        b.to_async(&rt).iter(|| b_ref.raw_put_delete())
    });
    group.bench_function("client_acquire_release_fresh_key", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let key = b_ref.fresh_key();
                let start = Instant::now();
                b_ref.client_acquire_release(&key).await;
                timed += start.elapsed();
            }
            timed
        })
    });
    group.bench_function("client_acquire_release_reused_key", |b| {
        b.to_async(&rt)
            .iter(|| b_ref.client_acquire_release(&b_ref.reused))
    });
    group.bench_function("raw_put_if_match", |b| {
        b.to_async(&rt).iter(|| b_ref.raw_put_if_match())
    });
    group.bench_function("fenced_save", |b| {
        b.to_async(&rt).iter(|| b_ref.fenced_save())
    });
    group.finish();

    // The paired pass: every measurement once per round, rotating which goes
    // first, so drift during the run cannot favour one of them.
    let names = [
        "raw put+delete",
        "client fresh key",
        "client reused key",
        "raw put If-Match",
        "fenced save",
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(PAIRED_ROUNDS); names.len()];
    rt.block_on(async {
        for round in 0..PAIRED_ROUNDS {
            for i in 0..names.len() {
                let which = (round + i) % names.len();
                let fresh = bench.fresh_key();
                let start = Instant::now();
                match which {
                    0 => bench.raw_put_delete().await,
                    1 => bench.client_acquire_release(&fresh).await,
                    2 => bench.client_acquire_release(&bench.reused).await,
                    3 => bench.raw_put_if_match().await,
                    _ => bench.fenced_save().await,
                }
                samples[which].push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    });
    let ratios = |num: usize, den: usize| {
        let mut r: Vec<f64> = samples[num]
            .iter()
            .zip(&samples[den])
            .map(|(n, d)| n / d)
            .collect();
        median(&mut r)
    };
    let (fresh, reused, save) = (ratios(1, 0), ratios(2, 0), ratios(4, 3));
    let medians: Vec<String> = names
        .iter()
        .zip(samples.iter_mut())
        .map(|(name, s)| format!("{name} {:.3} ms", median(s)))
        .collect();
    println!(
        "s3/paired ({PAIRED_ROUNDS} rounds, medians): {}; per-round ratio medians: \
         client fresh/raw {fresh:.3}, client reused/raw {reused:.3}, fenced save/raw put {save:.3}",
        medians.join(", ")
    );
    let guard = bench.guard;
    rt.block_on(guard.release())
        .unwrap_or_else(|e| panic!("release the state's lock: {e}"));
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

criterion_group!(benches, s3);
criterion_main!(benches);
