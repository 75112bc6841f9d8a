//! Acquire + release latency per store, measured in the same run as the raw
//! floor (the same two conditional writes sent straight to the store), plus
//! micro-benchmarks of the sans-IO core.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use statelock::client::{AcquireOptions, LockClient};
use statelock::protocol::{
    FencingToken, GrantFrom, HolderInfo, Lease, LeaseId, LockKey, LockOp, LockRecord, MonoTime,
    OpKind, Outcome, ProtocolConfig, RecordVersion, WallTime,
};
use statelock::store::file::FileStore;
use statelock::store::memory::MemoryStore;
use statelock::store::LockStore;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

static NEXT: AtomicU64 = AtomicU64::new(0);

fn fresh_key() -> LockKey {
    LockKey::new(format!("bench:{}", NEXT.fetch_add(1, Ordering::Relaxed)))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn acquire_op(key: &LockKey, owner: LeaseId, current: Option<&LockRecord>) -> LockOp {
    LockOp {
        key: key.clone(),
        new_rvn: RecordVersion::random(),
        at: WallTime(0),
        kind: OpKind::Acquire {
            from: GrantFrom::of(current, FencingToken(0)),
            owner,
            lease_ms: 20_000,
            holder: HolderInfo::named("bench"),
            at_least: FencingToken::NONE,
            dequeue: Default::default(),
        },
    }
}

/// The floor: one conditional acquire (of the version released last) and
/// one conditional release of one key, nothing else.
async fn raw_round_trip(store: &dyn LockStore, key: &LockKey, last: &Mutex<Option<LockRecord>>) {
    let owner = LeaseId::random();
    let previous = last.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let rec = store
        .apply(&acquire_op(key, owner, previous.as_ref()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let release = LockOp {
        key: key.clone(),
        new_rvn: RecordVersion::random(),
        at: WallTime(0),
        kind: OpKind::Release {
            owner,
            current: rec.rvn,
        },
    };
    let released = store
        .apply(&release)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(black_box(released));
}

/// The client's acquire and release of one key it released before (as a CI
/// deploy re-locks its stack): the client knows the released version, so
/// the acquire is one conditional write.
async fn client_round_trip(client: &LockClient, key: &LockKey) {
    let opts = AcquireOptions {
        wait: Some(Duration::ZERO),
        ..AcquireOptions::default()
    };
    let guard = client
        .acquire(key, opts)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    black_box(guard.token());
    guard.release().await.unwrap_or_else(|e| panic!("{e}"));
}

fn stores(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file: Arc<dyn LockStore> =
        Arc::new(FileStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}")));
    let memory: Arc<dyn LockStore> = Arc::new(MemoryStore::new());
    let mut group = c.benchmark_group("acquire_release");
    for (name, store) in [("memory", memory), ("file", file)] {
        let client = rt.block_on(async { LockClient::builder(store.clone()).build() });
        let (raw_key, client_key) = (fresh_key(), fresh_key());
        let last = Mutex::new(None);
        group.bench_with_input(BenchmarkId::new("raw_floor", name), &store, |b, s| {
            b.to_async(&rt)
                .iter(|| raw_round_trip(s.as_ref(), &raw_key, &last))
        });
        group.bench_with_input(BenchmarkId::new("client", name), &client, |b, cl| {
            b.to_async(&rt).iter(|| client_round_trip(cl, &client_key))
        });
    }
    group.finish();
}

fn core(c: &mut Criterion) {
    let key = LockKey::new("bench").unwrap_or_else(|e| panic!("{e}"));
    let owner = LeaseId::random();
    let record = acquire_op(&key, owner, None)
        .apply(None)
        .unwrap_or_else(|_| panic!("grant"));
    c.bench_function("core/lease_heartbeat_cycle", |b| {
        b.iter(|| {
            let mut lease = Lease::granted(&record, MonoTime::ZERO, ProtocolConfig::default());
            let now = MonoTime::from_duration(Duration::from_secs(7));
            let op = lease
                .poll_heartbeat(now, RecordVersion(1), WallTime(0))
                .unwrap_or_else(|| panic!("due"));
            let after = op
                .apply(Some(&record))
                .unwrap_or_else(|_| panic!("applies"));
            black_box(lease.handle_heartbeat(now, Outcome::Applied(after)))
        })
    });
}

criterion_group!(benches, stores, core);
criterion_main!(benches);
