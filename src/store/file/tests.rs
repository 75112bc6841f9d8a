//! Tests of the directory store: layout, corrupt and stray files, symlinks,
//! bounded lock waits, torn reads, the order of a write's filesystem
//! operations (through a recording fake), and real processes racing.

use super::*;
use crate::protocol::{
    FencingToken, GrantFrom, HolderInfo, LeaseId, OpKind, RecordVersion, WallTime,
};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;

fn key(name: &str) -> LockKey {
    LockKey::new(name).unwrap()
}

/// An acquire of a key with no record (the floor of a fresh store is 0).
fn acquire(key: &LockKey, owner: LeaseId) -> LockOp {
    acquire_from(
        key,
        owner,
        GrantFrom::Absent {
            floor: FencingToken(0),
        },
    )
}

fn acquire_from(key: &LockKey, owner: LeaseId, from: GrantFrom) -> LockOp {
    LockOp {
        key: key.clone(),
        new_rvn: RecordVersion::random(),
        at: WallTime(1_700_000_000_000),
        kind: OpKind::Acquire {
            from,
            owner,
            lease_ms: 10_000,
            holder: HolderInfo::named("tester"),
            at_least: FencingToken::NONE,
            dequeue: Default::default(),
        },
    }
}

/// An acquire naming the record as `store` reads it now.
fn acquire_current(store: &FileStore, key: &LockKey) -> LockOp {
    let current = store.get_blocking(key).unwrap();
    acquire_from(
        key,
        LeaseId::random(),
        GrantFrom::of(current.as_ref(), FencingToken(0)),
    )
}

fn release(record: &LockRecord) -> LockOp {
    LockOp {
        key: record.key.clone(),
        new_rvn: RecordVersion::random(),
        at: WallTime(1_700_000_000_001),
        kind: OpKind::Release {
            owner: record.owner,
            current: record.rvn,
        },
    }
}

fn heartbeat(record: &LockRecord) -> LockOp {
    LockOp {
        key: record.key.clone(),
        new_rvn: RecordVersion::random(),
        at: WallTime(1_700_000_000_002),
        kind: OpKind::Heartbeat {
            owner: record.owner,
            current: record.rvn,
        },
    }
}

fn store() -> (tempfile::TempDir, FileStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path().join("locks")).unwrap();
    (dir, store)
}

#[tokio::test]
async fn round_trip() {
    let (_dir, store) = store();
    let k = key("stack:user-platform:env:production");
    assert_eq!(store.get(&k).await, Ok(None));
    assert_eq!(store.list().await, Ok(Listing::default()));
    let op = acquire(&k, LeaseId::random());
    let record = store.apply(&op).await.unwrap();
    assert_eq!(record, op.apply(None).unwrap());
    assert_eq!(store.get(&k).await, Ok(Some(record.clone())));
    assert_eq!(store.list().await, Ok(Listing::of(vec![record.clone()])));

    // The file is named by the key's hash and is pretty JSON in its envelope.
    let path = store.record_path(&k);
    assert_eq!(
        path.file_name().unwrap().to_str().unwrap(),
        format!("{}.json", hex::encode(Sha256::digest(k.as_str()))),
    );
    let text = fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("{\n  \"format\": \"statelock-lock-v1\""),
        "{text}"
    );
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["record"]["key"], k.as_str());

    let released = store.apply(&release(&record)).await.unwrap();
    assert!(released.released);
    assert_eq!(released.token, FencingToken(1));
    assert_eq!(store.get(&k).await, Ok(Some(released)));
    assert_eq!(
        store.describe(),
        format!("file://{}", store.dir().display())
    );
}

#[test]
fn open_rejects_a_file_and_creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    fs::write(&file, b"x").unwrap();
    match FileStore::open(&file) {
        Err(StoreError::Misconfigured(msg)) => {
            assert!(msg.contains("not a directory"), "{msg}");
            assert!(msg.contains(&file.display().to_string()), "{msg}");
        }
        other => panic!("expected Misconfigured, got {other:?}"),
    }
    match FileStore::open(file.join("below")) {
        Err(StoreError::Misconfigured(msg)) => {
            assert!(msg.contains("below"), "{msg}")
        }
        other => panic!("expected Misconfigured, got {other:?}"),
    }
    let nested = dir.path().join("a/b/c");
    FileStore::open(&nested).unwrap();
    assert!(nested.is_dir());
    // Opening leaves no probe file behind.
    assert_eq!(fs::read_dir(&nested).unwrap().count(), 0);
}

#[cfg(unix)]
#[test]
fn open_rejects_a_read_only_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let locked = dir.path().join("ro");
    fs::create_dir(&locked).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).unwrap();
    let can_write_anyway = fs::write(locked.join("probe"), b"").is_ok();
    if can_write_anyway {
        // Running as root: permissions do not apply. Nothing to test.
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
        return;
    }
    match FileStore::open(&locked) {
        Err(StoreError::Misconfigured(msg)) => assert!(msg.contains("not writable"), "{msg}"),
        other => panic!("expected Misconfigured, got {other:?}"),
    }
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Contents that must all be reported as corrupt for key `k`.
fn bad_contents(k: &LockKey) -> Vec<(&'static str, Vec<u8>)> {
    let good = encode(&acquire(k, LeaseId::random()).apply(None).unwrap()).unwrap();
    let other_key = encode(
        &acquire(&key("another-key"), LeaseId::random())
            .apply(None)
            .unwrap(),
    )
    .unwrap();
    let foreign_format = String::from_utf8(good.clone())
        .unwrap()
        .replace(RECORD_FORMAT, "statelock-lock-v9")
        .into_bytes();
    vec![
        ("not JSON", b"{this is not json".to_vec()),
        ("empty", Vec::new()),
        ("truncated", good[..good.len() / 2].to_vec()),
        (
            "foreign JSON",
            br#"{"LockID":"bucket/key","Info":"{}"}"#.to_vec(),
        ),
        ("a JSON array", b"[1, 2, 3]".to_vec()),
        ("unknown format", foreign_format),
        ("no record", br#"{"format":"statelock-lock-v1"}"#.to_vec()),
        (
            "invalid record",
            br#"{"format":"statelock-lock-v1","record":{"key":"k"}}"#.to_vec(),
        ),
        ("another key's record", other_key),
        ("binary", vec![0xff, 0xfe, 0x00, 0x01]),
    ]
}

#[tokio::test]
async fn corrupt_records_are_reported_and_never_overwritten() {
    let (_dir, store) = store();
    let k = key("k");
    let healthy = store
        .apply(&acquire(&key("healthy"), LeaseId::random()))
        .await
        .unwrap();
    for (what, bytes) in bad_contents(&k) {
        let path = store.record_path(&k);
        fs::write(&path, &bytes).unwrap();
        match store.get(&k).await {
            Err(StoreError::Corrupt { key, reason }) => {
                assert_eq!(key, "k", "{what}");
                assert!(
                    reason.contains(&path.display().to_string()),
                    "{what}: {reason}"
                );
            }
            other => panic!("{what}: get should say Corrupt, got {other:?}"),
        }
        // The listing flags it and still lists the healthy records.
        match store.list().await {
            Ok(listing) => {
                assert_eq!(listing.records, vec![healthy.clone()], "{what}");
                assert_eq!(listing.damaged.len(), 1, "{what}");
                assert_eq!(
                    listing.damaged[0].key,
                    path.file_name().unwrap().to_str().unwrap(),
                    "{what}"
                )
            }
            other => panic!("{what}: list should flag it, got {other:?}"),
        }
        match store.apply(&acquire(&k, LeaseId::random())).await {
            Err(StoreError::Corrupt { .. }) => {}
            other => panic!("{what}: apply should say Corrupt, got {other:?}"),
        }
        assert_eq!(
            fs::read(&path).unwrap(),
            bytes,
            "{what}: the bad file was changed"
        );
        fs::remove_file(&path).unwrap();
    }
    // Once the operator removes the bad file, the key works again.
    assert!(store.apply(&acquire(&k, LeaseId::random())).await.is_ok());
}

#[tokio::test]
async fn a_directory_in_place_of_a_record_is_corrupt() {
    let (_dir, store) = store();
    let k = key("k");
    fs::create_dir(store.record_path(&k)).unwrap();
    assert!(matches!(
        store.get(&k).await,
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        store.apply(&acquire(&k, LeaseId::random())).await,
        Err(StoreError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn stray_files_are_ignored() {
    let (_dir, store) = store();
    let k = key("k");
    let record = store.apply(&acquire(&k, LeaseId::random())).await.unwrap();
    let hash = key_hash(&k);
    let other_hash = key_hash(&key("other"));
    let strays = [
        format!("{hash}.json.0123456789abcdef0123456789abcdef.tmp"),
        format!("{other_hash}.json.0123456789abcdef0123456789abcdef.tmp"),
        format!("{other_hash}.lock"),
        format!("{}.json", other_hash.to_uppercase()),
        "README.json".to_string(),
        "notes.txt".to_string(),
        ".hidden".to_string(),
    ];
    for name in &strays {
        fs::write(store.dir().join(name), b"{half a record").unwrap();
    }
    fs::create_dir(store.dir().join("subdir")).unwrap();
    assert_eq!(store.list().await, Ok(Listing::of(vec![record.clone()])));
    assert_eq!(store.get(&k).await, Ok(Some(record.clone())));
    assert_eq!(store.get(&key("other")).await, Ok(None));
    // Writes still work next to a leftover temporary file of the same key.
    let released = store.apply(&release(&record)).await.unwrap();
    assert_eq!(store.get(&k).await, Ok(Some(released)));
}

#[test]
fn stale_temp_files_are_removed_on_open() {
    let (_dir, store) = store();
    let hash = key_hash(&key("k"));
    let old = store
        .dir()
        .join(format!("{hash}.json.0123456789abcdef0123456789abcdef.tmp"));
    let young = store
        .dir()
        .join(format!("{hash}.json.fedcba9876543210fedcba9876543210.tmp"));
    let not_ours = store.dir().join("keep.tmp");
    for path in [&old, &young, &not_ours] {
        fs::write(path, b"x").unwrap();
    }
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    for path in [&old, &not_ours] {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
    }
    FileStore::open(store.dir()).unwrap();
    assert!(!old.exists());
    assert!(young.exists());
    assert!(not_ours.exists());
}

#[tokio::test]
async fn a_second_store_on_the_same_directory_sees_the_writes() {
    let (_dir, first) = store();
    let second = FileStore::open(first.dir()).unwrap();
    let k = key("shared");
    let record = first.apply(&acquire(&k, LeaseId::random())).await.unwrap();
    assert_eq!(second.get(&k).await, Ok(Some(record.clone())));
    assert_eq!(
        second.apply(&acquire(&k, LeaseId::random())).await,
        Err(StoreError::conflict(Some(record.clone())))
    );
    let released = second.apply(&release(&record)).await.unwrap();
    assert_eq!(first.list().await, Ok(Listing::of(vec![released])));
}

#[tokio::test]
async fn oversized_records_are_refused() {
    let (_dir, store) = store();
    let k = key("big");
    let mut op = acquire(&k, LeaseId::random());
    if let OpKind::Acquire { holder, .. } = &mut op.kind {
        holder.metadata.insert(
            "blob".into(),
            "x".repeat(usize::try_from(MAX_RECORD_BYTES).unwrap()),
        );
    }
    assert!(matches!(
        store.apply(&op).await,
        Err(StoreError::Misconfigured(_))
    ));
    assert_eq!(store.get(&k).await, Ok(None));
}

#[test]
fn io_errors_are_classified() {
    let p = Path::new("/x");
    let kinds = [
        (ErrorKind::PermissionDenied, false),
        (ErrorKind::ReadOnlyFilesystem, false),
        (ErrorKind::NotFound, false),
        (ErrorKind::Unsupported, false),
        (ErrorKind::StorageFull, true),
        (ErrorKind::QuotaExceeded, true),
        (ErrorKind::Interrupted, true),
        (ErrorKind::Other, true),
    ];
    for (kind, retryable) in kinds {
        let e = io_error("write", p, io::Error::new(kind, "boom"));
        assert_eq!(e.is_retryable(), retryable, "{kind:?}");
        assert!(e.to_string().contains("/x") && e.to_string().contains("boom"));
    }
}

type Attempt = Result<LockRecord, StoreError>;

/// The lock wait of the tests that race writers to check exclusion. Their
/// writers hammer one key back to back, so on a loaded machine one of them
/// can keep the lock busy for longer than [`DEFAULT_LOCK_WAIT`]; what they
/// check is exclusion and tokens, not the bound (tested on its own below),
/// so they wait longer, though still not without end.
const EXCLUSION_TEST_LOCK_WAIT: Duration = Duration::from_secs(120);

/// Threads with their own `FileStore` on one directory race for a key,
/// round after round: exactly one wins each round and tokens increase.
/// (`File::lock` locks belong to the open file, not the process, so
/// separate opens in one process exclude each other like processes do.)
#[test]
fn racing_stores_on_one_directory_grant_exactly_once_per_round() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let k = key("contended");
    let barrier = Arc::new(Barrier::new(THREADS));
    let results: Arc<Mutex<Vec<Vec<Attempt>>>> = Arc::new(Mutex::new(vec![Vec::new(); ROUNDS]));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let store = FileStore::open(dir.path())
                .unwrap()
                .with_lock_wait(EXCLUSION_TEST_LOCK_WAIT);
            let (k, barrier, results) = (k.clone(), barrier.clone(), results.clone());
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    let op = acquire_current(&store, &k);
                    barrier.wait();
                    let outcome = store.apply_blocking(&op);
                    results.lock().unwrap()[round].push(outcome.clone());
                    barrier.wait();
                    if let Ok(record) = outcome {
                        store.apply_blocking(&release(&record)).unwrap();
                    }
                    barrier.wait();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let results = results.lock().unwrap();
    let mut last_token = FencingToken(0);
    for (round, outcomes) in results.iter().enumerate() {
        let winners: Vec<&LockRecord> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {outcomes:?}");
        let winner = winners[0];
        assert!(winner.token > last_token, "round {round}");
        last_token = winner.token;
        for outcome in outcomes.iter().filter(|o| o.is_err()) {
            assert_eq!(outcome, &Err(StoreError::conflict(Some(winner.clone()))));
        }
    }
    assert_eq!(last_token, FencingToken(ROUNDS as u64));
}

const CHILD_DIR_ENV: &str = "STATELOCK_FILE_STORE_CHILD_DIR";
const CHILD_GRANTS: u64 = 15;
const GRANT_MARK: &str = "statelock-granted-token ";

/// Run by `separate_processes_never_grant_a_token_twice` in child
/// processes; does nothing when run directly.
#[test]
#[ignore = "helper for separate_processes_never_grant_a_token_twice"]
fn cross_process_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let store = FileStore::open(PathBuf::from(dir))
        .unwrap()
        .with_lock_wait(EXCLUSION_TEST_LOCK_WAIT);
    let k = key("cross-process");
    let mut granted = 0;
    while granted < CHILD_GRANTS {
        match store.apply_blocking(&acquire_current(&store, &k)) {
            Ok(record) => {
                println!("{GRANT_MARK}{}", record.token.0);
                store.apply_blocking(&release(&record)).unwrap();
                granted += 1;
            }
            Err(StoreError::Conflict { .. }) => std::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    }
}

/// Real processes acquire and release one key concurrently; every grant
/// must get a distinct token, and together they are exactly 1..=N (no
/// grant was lost or duplicated by a racing read-modify-write).
#[test]
fn separate_processes_never_grant_a_token_twice() {
    const CHILDREN: u64 = 4;
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..CHILDREN)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "store::file::tests::cross_process_child",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_DIR_ENV, dir.path())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Wait for every child before judging any, so none is left running.
    let outputs: Vec<_> = children
        .into_iter()
        .map(|child| child.wait_with_output().unwrap())
        .collect();
    let mut tokens = Vec::new();
    for output in outputs {
        assert!(output.status.success(), "child failed: {output:?}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        // libtest may print its own text before ours on the same line.
        let mine: Vec<u64> = stdout
            .lines()
            .filter_map(|l| l.split(GRANT_MARK).nth(1))
            .map(|t| t.trim().parse().unwrap())
            .collect();
        assert_eq!(mine.len() as u64, CHILD_GRANTS, "{stdout}");
        tokens.extend(mine);
    }
    let distinct: BTreeSet<u64> = tokens.iter().copied().collect();
    assert_eq!(distinct.len(), tokens.len(), "a token was granted twice");
    assert_eq!(distinct, (1..=CHILDREN * CHILD_GRANTS).collect());
}

// --- Relative directories -------------------------------------------------

#[test]
fn a_relative_directory_is_kept_as_an_absolute_path() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = std::env::current_dir().unwrap();
    // The temporary directory, spelled relative to the working directory.
    let mut relative = PathBuf::new();
    for _ in cwd.components().skip(1) {
        relative.push("..");
    }
    relative.push(dir.path().strip_prefix("/").unwrap());
    relative.push("locks");
    assert!(relative.is_relative());
    let store = FileStore::open(&relative).unwrap();
    assert_eq!(store.dir(), cwd.join(&relative));
    assert!(store.dir().is_absolute());
    assert!(
        store.describe().starts_with("file:///"),
        "{}",
        store.describe()
    );
    assert!(dir.path().join("locks").is_dir());
}

// --- Symbolic links -------------------------------------------------------

/// A symlink in place of a record, dangling or not, is corrupt for `get`,
/// `list` and `apply`, and is left exactly as it was (never followed or
/// replaced).
fn assert_symlink_is_corrupt(store: &FileStore, k: &LockKey, target: &Path) {
    let path = store.record_path(k);
    match store.get_blocking(k) {
        Err(StoreError::Corrupt { key, reason }) => {
            assert_eq!(key, k.as_str());
            assert!(reason.contains("symbolic link"), "{reason}");
            assert!(reason.contains(&path.display().to_string()), "{reason}");
        }
        other => panic!("get should say Corrupt, got {other:?}"),
    }
    match store.list_blocking() {
        Ok(listing) => {
            assert!(listing.records.is_empty(), "{listing:?}");
            assert_eq!(listing.damaged.len(), 1, "{listing:?}");
            assert!(listing.damaged[0].reason.contains("symbolic link"));
        }
        other => panic!("list should flag the link as damaged, got {other:?}"),
    }
    for op in [
        acquire(k, LeaseId::random()),
        LockOp {
            key: k.clone(),
            new_rvn: RecordVersion::random(),
            at: WallTime(1_700_000_000_000),
            kind: OpKind::ForceUnlock {
                observed: RecordVersion::random(),
                by: "operator".into(),
            },
        },
    ] {
        match store.apply_blocking(&op) {
            Err(StoreError::Corrupt { .. }) => {}
            other => panic!("apply should say Corrupt, got {other:?}"),
        }
    }
    let meta = fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_symlink(), "the link was replaced");
    assert_eq!(fs::read_link(&path).unwrap(), target);
}

#[cfg(unix)]
#[test]
fn a_dangling_symlink_in_place_of_a_record_is_corrupt_not_absent() {
    let (dir, store) = store();
    let k = key("k");
    let target = dir.path().join("gone.json");
    std::os::unix::fs::symlink(&target, store.record_path(&k)).unwrap();
    assert_symlink_is_corrupt(&store, &k, &target);
    // Nothing was created through the link.
    assert!(!target.exists());
}

#[cfg(unix)]
#[test]
fn a_symlink_to_a_valid_record_is_corrupt_and_never_followed() {
    let (dir, store) = store();
    let k = key("k");
    // A valid record of `k`, kept outside the store and linked in.
    let record = store
        .apply_blocking(&acquire(&k, LeaseId::random()))
        .unwrap();
    let target = dir.path().join("elsewhere.json");
    fs::rename(store.record_path(&k), &target).unwrap();
    let bytes = fs::read(&target).unwrap();
    assert_eq!(decode(&bytes, &key_hash(&k)), Ok(record));
    std::os::unix::fs::symlink(&target, store.record_path(&k)).unwrap();
    assert_symlink_is_corrupt(&store, &k, &target);
    assert_eq!(fs::read(&target).unwrap(), bytes, "the target was changed");
}

// --- Bounded lock waits ---------------------------------------------------

/// Opens `path` and takes its lock: a holder with its own open file
/// description, which excludes the store's writers like another process.
fn hold_lock(path: &Path) -> File {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    file.lock().unwrap();
    file
}

fn lock_path(store: &FileStore, k: &LockKey) -> PathBuf {
    store.dir().join(format!("{}.lock", key_hash(k)))
}

/// Checks that `outcome` is the Unavailable of a held lock file.
fn assert_lock_held_error(outcome: Result<LockRecord, StoreError>, lock: &Path) {
    match outcome {
        Err(StoreError::Unavailable(msg)) => {
            assert!(msg.contains(&lock.display().to_string()), "{msg}");
            assert!(msg.contains("stopped"), "{msg}");
            assert!(msg.contains("hung"), "{msg}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[test]
fn a_held_lock_file_gives_unavailable_after_the_bound_then_works_once_released() {
    const BOUND: Duration = Duration::from_millis(300);
    let (_dir, store) = store();
    let store = store.with_lock_wait(BOUND);
    assert_eq!(store.lock_wait(), BOUND);
    assert_eq!(
        FileStore::open(store.dir()).unwrap().lock_wait(),
        DEFAULT_LOCK_WAIT
    );
    let k = key("k");
    let record = store
        .apply_blocking(&acquire(&k, LeaseId::random()))
        .unwrap();
    let lock = lock_path(&store, &k);

    let holder = hold_lock(&lock);
    let started = Instant::now();
    let outcome = store.apply_blocking(&heartbeat(&record));
    let waited = started.elapsed();
    assert_lock_held_error(outcome, &lock);
    // It tried for the whole bound, and did not wait without end (the
    // upper limit is generous: it only has to tell "bounded" from "forever").
    assert!(waited >= BOUND, "gave up after {waited:?}");
    assert!(waited < BOUND + Duration::from_secs(30), "{waited:?}");
    // Readers do not need the lock.
    assert_eq!(store.get_blocking(&k), Ok(Some(record.clone())));

    drop(holder);
    let renewed = store.apply_blocking(&heartbeat(&record)).unwrap();
    assert_eq!(store.get_blocking(&k), Ok(Some(renewed)));
}

#[test]
fn a_zero_lock_wait_makes_one_attempt() {
    let (_dir, store) = store();
    let store = store.with_lock_wait(Duration::ZERO);
    let k = key("k");
    let lock = lock_path(&store, &k);
    let holder = hold_lock(&lock);
    assert_lock_held_error(store.apply_blocking(&acquire(&k, LeaseId::random())), &lock);
    drop(holder);
    assert!(store
        .apply_blocking(&acquire(&k, LeaseId::random()))
        .is_ok());
}

const HOLDER_LOCK_ENV: &str = "STATELOCK_FILE_STORE_HOLD_LOCK";
const HOLDING_MARK: &str = "statelock-holding-lock";

/// Run by `a_stopped_process_holding_the_lock_cannot_block_writers` in a
/// child process: takes the lock file, says so, and keeps it until stdin
/// closes. Does nothing when run directly.
#[test]
#[ignore = "helper for a_stopped_process_holding_the_lock_cannot_block_writers"]
fn lock_holder_child() {
    let Some(path) = std::env::var_os(HOLDER_LOCK_ENV) else {
        return;
    };
    let _held = hold_lock(Path::new(&path));
    println!("{HOLDING_MARK}");
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
}

/// A child process takes the key's lock file and is stopped with SIGSTOP
/// inside its "critical section": writers get Unavailable within the bound
/// instead of hanging; once the process is gone they work again.
#[cfg(unix)]
#[test]
fn a_stopped_process_holding_the_lock_cannot_block_writers() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::io::BufRead;

    const BOUND: Duration = Duration::from_millis(200);
    let (_dir, store) = store();
    let store = store.with_lock_wait(BOUND);
    let k = key("stopped-holder");
    let lock = lock_path(&store, &k);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "store::file::tests::lock_holder_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLDER_LOCK_ENV, &lock)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kills the child whatever happens below.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let mut child = Reap(child);
    // Blocks until the child holds the lock (or exits: then the test fails).
    let holding = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains(HOLDING_MARK));
    assert!(holding, "the child did not take the lock");
    let pid = Pid::from_raw(i32::try_from(child.0.id()).unwrap());
    kill(pid, Signal::SIGSTOP).unwrap();

    for _ in 0..2 {
        let started = Instant::now();
        assert_lock_held_error(store.apply_blocking(&acquire(&k, LeaseId::random())), &lock);
        assert!(started.elapsed() >= BOUND);
    }
    assert_eq!(store.get_blocking(&k), Ok(None));

    // The kernel releases the lock of a dead process.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let record = store
        .apply_blocking(&acquire(&k, LeaseId::random()))
        .unwrap();
    assert_eq!(record.token, FencingToken(1));
}

// --- Torn reads -----------------------------------------------------------

/// 3,000 writes (acquire, heartbeats, release, again and again) on one key
/// while readers read its record in a tight loop, through `get` and as raw
/// bytes: every read is a whole, valid record, or absent before the first
/// write. (Writing the record in place instead of renaming a temporary file
/// over it makes this fail at once: readers see empty and half files.)
///
/// The directory is on a memory filesystem when the machine has one: fsync
/// costs nothing there, so the 6,000 fsyncs take moments instead of a
/// minute, while the store code is the real one and renames are just as
/// atomic for readers (what they see never depends on fsync).
#[test]
fn readers_never_see_a_torn_or_empty_record() {
    const WRITES: usize = 3_000;
    const HEARTBEATS_PER_LEASE: usize = 3;
    let shm = Path::new("/dev/shm");
    let dir = match shm.is_dir().then(|| tempfile::tempdir_in(shm)) {
        Some(Ok(dir)) => dir,
        _ => tempfile::tempdir().unwrap(),
    };
    let store = FileStore::open(dir.path().join("locks")).unwrap();
    let k = key("torn-read");
    let hash = key_hash(&k);
    let path = store.record_path(&k);
    let done = Arc::new(AtomicBool::new(false));

    // Each reader returns how many records it read.
    let mut readers = Vec::new();
    for raw in [false, true, false, true] {
        let (store, k, hash, path, done) = (
            store.clone(),
            k.clone(),
            hash.clone(),
            path.clone(),
            done.clone(),
        );
        readers.push(std::thread::spawn(move || -> usize {
            let mut read = 0;
            let mut last_token = FencingToken(0);
            loop {
                // Checked before the read, so one more read follows the
                // last write.
                let finished = done.load(Ordering::Acquire);
                let record = if raw {
                    match fs::read(&path) {
                        Ok(bytes) => Some(decode(&bytes, &hash).unwrap_or_else(|e| {
                            panic!("raw read {read} (after {last_token:?}): {e}")
                        })),
                        Err(e) if e.kind() == ErrorKind::NotFound => None,
                        Err(e) => panic!("raw read {read}: {e}"),
                    }
                } else {
                    store
                        .get_blocking(&k)
                        .unwrap_or_else(|e| panic!("get {read} (after {last_token:?}): {e}"))
                };
                match record {
                    Some(record) => {
                        assert_eq!(record.key, k);
                        assert!(record.token >= last_token, "tokens went back");
                        last_token = record.token;
                        read += 1;
                    }
                    None => assert_eq!(
                        last_token,
                        FencingToken(0),
                        "the record vanished after it was read"
                    ),
                }
                if finished {
                    return read;
                }
            }
        }));
    }

    let mut writes = 0;
    let mut leases = 0;
    while writes < WRITES {
        let mut record = store.apply_blocking(&acquire_current(&store, &k)).unwrap();
        writes += 1;
        leases += 1;
        for _ in 0..HEARTBEATS_PER_LEASE {
            record = store.apply_blocking(&heartbeat(&record)).unwrap();
            writes += 1;
        }
        store.apply_blocking(&release(&record)).unwrap();
        writes += 1;
    }
    done.store(true, Ordering::Release);
    let reads: Vec<usize> = readers.into_iter().map(|r| r.join().unwrap()).collect();

    let last = store.get_blocking(&k).unwrap().unwrap();
    assert!(last.released);
    assert_eq!(last.token, FencingToken(leases));
    // Every reader read at least the final record; the readers together
    // read far more than that (they overlapped the writes).
    assert!(reads.iter().all(|&n| n >= 1), "{reads:?}");
    assert!(reads.iter().sum::<usize>() >= reads.len() * 2, "{reads:?}");
    // No temporary file is left behind.
    let names: Vec<String> = fs::read_dir(store.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

// --- The order of a write's filesystem operations -------------------------

/// One filesystem operation, as the recording fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FsEvent {
    OpenLock(PathBuf),
    TryLock(PathBuf),
    Unlock(PathBuf),
    Write(PathBuf),
    SyncFile(PathBuf),
    Rename(PathBuf, PathBuf),
    SyncDir(PathBuf),
    Remove(PathBuf),
    Pause(Duration),
}

/// The step at which the fake fails (with an I/O error of kind `Other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailAt {
    Write,
    SyncFile,
    Rename,
    SyncDir,
}

/// A recording fake of the write operations: it logs every call and then
/// does the real thing, except that it fails the step `fail_at`, reports the
/// lock as held when `lock_busy`, and has a clock that only moves when the
/// store pauses.
#[derive(Debug)]
struct RecordingOps {
    events: Mutex<Vec<FsEvent>>,
    fail_at: Mutex<Option<FailAt>>,
    lock_busy: AtomicBool,
    origin: Instant,
    elapsed: Mutex<Duration>,
}

impl RecordingOps {
    fn new() -> Arc<RecordingOps> {
        Arc::new(RecordingOps {
            events: Mutex::new(Vec::new()),
            fail_at: Mutex::new(None),
            lock_busy: AtomicBool::new(false),
            origin: Instant::now(),
            elapsed: Mutex::new(Duration::ZERO),
        })
    }

    fn record(&self, event: FsEvent) {
        self.events.lock().unwrap().push(event);
    }

    /// The events so far, and forgets them.
    fn take(&self) -> Vec<FsEvent> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }

    fn fail_at(&self, step: Option<FailAt>) {
        *self.fail_at.lock().unwrap() = step;
    }

    fn fails(&self, step: FailAt) -> io::Result<()> {
        if *self.fail_at.lock().unwrap() == Some(step) {
            Err(io::Error::other(format!("injected failure at {step:?}")))
        } else {
            Ok(())
        }
    }
}

impl WriteOps for RecordingOps {
    fn open_lock_file(&self, path: &Path) -> io::Result<File> {
        self.record(FsEvent::OpenLock(path.to_path_buf()));
        RealOps.open_lock_file(path)
    }

    fn try_lock(&self, file: &File, path: &Path) -> Result<(), TryLockError> {
        self.record(FsEvent::TryLock(path.to_path_buf()));
        if self.lock_busy.load(Ordering::SeqCst) {
            return Err(TryLockError::WouldBlock);
        }
        RealOps.try_lock(file, path)
    }

    fn unlock(&self, file: File, path: &Path) {
        self.record(FsEvent::Unlock(path.to_path_buf()));
        RealOps.unlock(file, path)
    }

    fn create_and_write(&self, path: &Path, bytes: &[u8]) -> io::Result<File> {
        self.record(FsEvent::Write(path.to_path_buf()));
        // Fail after creating the file, as a full disk would.
        let file = RealOps.create_and_write(path, bytes)?;
        self.fails(FailAt::Write)?;
        Ok(file)
    }

    fn sync_file(&self, file: &File, path: &Path) -> io::Result<()> {
        self.record(FsEvent::SyncFile(path.to_path_buf()));
        self.fails(FailAt::SyncFile)?;
        RealOps.sync_file(file, path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.record(FsEvent::Rename(from.to_path_buf(), to.to_path_buf()));
        self.fails(FailAt::Rename)?;
        RealOps.rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.record(FsEvent::SyncDir(dir.to_path_buf()));
        self.fails(FailAt::SyncDir)?;
        RealOps.sync_dir(dir)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.record(FsEvent::Remove(path.to_path_buf()));
        RealOps.remove_file(path)
    }

    fn now(&self) -> Instant {
        self.origin + *self.elapsed.lock().unwrap()
    }

    fn pause(&self, pause: Duration) {
        self.record(FsEvent::Pause(pause));
        *self.elapsed.lock().unwrap() += pause;
    }
}

/// A store on the recording fake, with one record of `k` written; the
/// events of that first write are forgotten.
fn recorded_store(k: &LockKey) -> (tempfile::TempDir, FileStore, Arc<RecordingOps>, LockRecord) {
    let dir = tempfile::tempdir().unwrap();
    let ops = RecordingOps::new();
    let store = FileStore::open_with_ops(dir.path().join("locks"), ops.clone()).unwrap();
    let record = store
        .apply_blocking(&acquire(k, LeaseId::random()))
        .unwrap();
    ops.take();
    (dir, store, ops, record)
}

/// The temporary file of the write in `events` (the path of its `Write`),
/// checked to be a temporary file of `record_path` in the same directory.
fn temp_of(events: &[FsEvent], record_path: &Path) -> PathBuf {
    let temp = events
        .iter()
        .find_map(|e| match e {
            FsEvent::Write(path) => Some(path.clone()),
            _ => None,
        })
        .expect("a write");
    assert_eq!(temp.parent(), record_path.parent());
    let name = temp.file_name().unwrap().to_str().unwrap();
    assert!(is_temp_name(name), "{name}");
    assert!(
        name.starts_with(record_path.file_name().unwrap().to_str().unwrap()),
        "{name}"
    );
    temp
}

fn temp_files(store: &FileStore) -> Vec<PathBuf> {
    fs::read_dir(store.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().is_some_and(|p| p.ends_with(".tmp")))
        .collect()
}

#[test]
fn a_write_is_write_fsync_rename_fsync_dir_under_the_lock() {
    let k = key("k");
    let (_dir, store, ops, record) = recorded_store(&k);
    let renewed = store.apply_blocking(&heartbeat(&record)).unwrap();
    let events = ops.take();
    let record_path = store.record_path(&k);
    let lock = lock_path(&store, &k);
    let temp = temp_of(&events, &record_path);
    assert_eq!(
        events,
        [
            FsEvent::OpenLock(lock.clone()),
            FsEvent::TryLock(lock.clone()),
            FsEvent::Write(temp.clone()),
            FsEvent::SyncFile(temp.clone()),
            FsEvent::Rename(temp, record_path),
            FsEvent::SyncDir(store.dir().to_path_buf()),
            FsEvent::Unlock(lock),
        ]
    );
    assert_eq!(store.get_blocking(&k), Ok(Some(renewed)));
    assert_eq!(temp_files(&store), Vec::<PathBuf>::new());

    // A refused op writes nothing, and still unlocks.
    let lock = lock_path(&store, &k);
    assert!(matches!(
        store.apply_blocking(&acquire(&k, LeaseId::random())),
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        ops.take(),
        [
            FsEvent::OpenLock(lock.clone()),
            FsEvent::TryLock(lock.clone()),
            FsEvent::Unlock(lock),
        ]
    );
}

#[test]
fn a_failed_write_or_fsync_renames_nothing_and_removes_the_temporary_file() {
    let k = key("k");
    for step in [FailAt::Write, FailAt::SyncFile, FailAt::Rename] {
        let (_dir, store, ops, record) = recorded_store(&k);
        ops.fail_at(Some(step));
        match store.apply_blocking(&heartbeat(&record)) {
            Err(StoreError::Unavailable(msg)) => {
                assert!(msg.contains("injected failure"), "{step:?}: {msg}")
            }
            other => panic!("{step:?}: expected Unavailable, got {other:?}"),
        }
        let events = ops.take();
        let record_path = store.record_path(&k);
        let lock = lock_path(&store, &k);
        let temp = temp_of(&events, &record_path);
        let mut expected = vec![
            FsEvent::OpenLock(lock.clone()),
            FsEvent::TryLock(lock.clone()),
            FsEvent::Write(temp.clone()),
        ];
        if step != FailAt::Write {
            expected.push(FsEvent::SyncFile(temp.clone()));
        }
        if step == FailAt::Rename {
            expected.push(FsEvent::Rename(temp.clone(), record_path.clone()));
        }
        expected.extend([FsEvent::Remove(temp), FsEvent::Unlock(lock)]);
        assert_eq!(events, expected, "{step:?}");
        // The old record is intact and the key still works.
        assert_eq!(store.get_blocking(&k), Ok(Some(record.clone())), "{step:?}");
        assert_eq!(temp_files(&store), Vec::<PathBuf>::new(), "{step:?}");
        ops.fail_at(None);
        assert!(
            store.apply_blocking(&heartbeat(&record)).is_ok(),
            "{step:?}"
        );
    }
}

#[test]
fn a_failed_directory_fsync_is_unavailable_after_the_rename() {
    let k = key("k");
    let (_dir, store, ops, record) = recorded_store(&k);
    ops.fail_at(Some(FailAt::SyncDir));
    let op = heartbeat(&record);
    assert!(matches!(
        store.apply_blocking(&op),
        Err(StoreError::Unavailable(_))
    ));
    let events = ops.take();
    let record_path = store.record_path(&k);
    let temp = temp_of(&events, &record_path);
    let tail = &events[events.len() - 3..];
    assert_eq!(
        tail,
        [
            FsEvent::Rename(temp, record_path),
            FsEvent::SyncDir(store.dir().to_path_buf()),
            FsEvent::Unlock(lock_path(&store, &k)),
        ]
    );
    // The outcome was unknown to the caller; here the new record landed.
    assert_eq!(
        store.get_blocking(&k),
        Ok(Some(op.apply(Some(&record)).unwrap()))
    );
}

#[test]
fn a_busy_lock_is_retried_with_growing_pauses_up_to_the_bound() {
    let k = key("k");
    let (_dir, store, ops, record) = recorded_store(&k);
    let store = store.with_lock_wait(Duration::from_millis(500));
    ops.lock_busy.store(true, Ordering::SeqCst);
    let lock = lock_path(&store, &k);
    assert_lock_held_error(store.apply_blocking(&heartbeat(&record)), &lock);
    let events = ops.take();
    assert_eq!(events[0], FsEvent::OpenLock(lock.clone()));
    let pauses: Vec<Duration> = events
        .iter()
        .filter_map(|e| match e {
            FsEvent::Pause(d) => Some(*d),
            _ => None,
        })
        .collect();
    let attempts = events
        .iter()
        .filter(|e| **e == FsEvent::TryLock(lock.clone()))
        .count();
    // Attempt, pause, attempt, ..., pause, attempt: nothing else, no write.
    assert_eq!(attempts, pauses.len() + 1);
    assert_eq!(events.len(), 1 + attempts + pauses.len());
    assert!(events[1..]
        .iter()
        .step_by(2)
        .all(|e| *e == FsEvent::TryLock(lock.clone())));
    // The pauses add up to exactly the bound, never exceed the longest
    // pause, and grow (each at least half its un-jittered value).
    assert_eq!(pauses.iter().sum::<Duration>(), Duration::from_millis(500));
    assert!(pauses.iter().all(|p| *p <= MAX_LOCK_PAUSE), "{pauses:?}");
    let mut schedule = FIRST_LOCK_PAUSE;
    for pause in &pauses[..pauses.len() - 1] {
        assert!(*pause >= schedule / 2 && *pause <= schedule, "{pauses:?}");
        schedule = (schedule * 2).min(MAX_LOCK_PAUSE);
    }
    assert_eq!(store.get_blocking(&k), Ok(Some(record.clone())));

    // Once the lock is free, the next attempt takes it.
    ops.lock_busy.store(false, Ordering::SeqCst);
    assert!(store.apply_blocking(&heartbeat(&record)).is_ok());
}
