//! The conformance suite every state backend must pass, through the one
//! state store built over it ([`FencedStore`]): sealing, fenced and
//! compare-and-swap saves (the case of a holder whose lock was taken over),
//! history, checksums, backups and restores, lost answers, and what survives
//! a document deleted behind the store's back. The same cases run against
//! memory, the local directory and S3.
//!
//! Each case is a `pub async fn case(backend: SharedBackend, prefix: &str)`
//! that panics naming what misbehaved; cases only use keys under `prefix/`
//! and never assume the backend is empty. Mount them with
//! [`state_backend_conformance!`](crate::state_backend_conformance).

use crate::protocol::{FencingToken, LeaseId, LockKey};
use crate::state::backend::{ObjectVersion, PutFailure, PutIf, StateBackend};
use crate::state::layout::StatePaths;
use crate::state::{
    FencedStore, Loaded, StateDocument, StateError, StateStore, StateVersion, Writer,
};
use async_trait::async_trait;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The backend handle every case takes.
pub type SharedBackend = Arc<dyn StateBackend>;

/// The names of every case (the tests the macro generates).
pub const CASES: &[&str] = &[
    "seal_creates_and_raises_the_fence",
    "a_taken_over_holder_can_write_nothing",
    "saves_form_a_chain_with_history",
    "damaged_documents_are_never_overwritten",
    "restore_writes_a_new_version_and_never_rewinds_the_fence",
    "backups_can_be_restored",
    "lost_answers_are_recognised",
    "a_deleted_document_accepts_no_write_below_an_earlier_one",
    "racing_holders_leave_a_monotonic_chain",
];

/// Mounts the state conformance suite on a backend: one `#[test]` per case,
/// each on its own runtime with a fresh key prefix. The argument is an
/// expression evaluating to a future yielding an `Arc<dyn StateBackend>`.
#[macro_export]
macro_rules! state_backend_conformance {
    (@cases ($make:expr) $($case:ident)*) => {
        $(
            #[test]
            fn $case() {
                $crate::testkit::conformance::runtime().block_on(async {
                    let backend: $crate::testkit::state_conformance::SharedBackend = $make.await;
                    let prefix =
                        $crate::testkit::conformance::unique_prefix(::core::stringify!($case));
                    $crate::testkit::state_conformance::$case(backend, &prefix).await;
                });
            }
        )*
    };
    ($make:expr $(,)?) => {
        $crate::state_backend_conformance!(@cases ($make)
            seal_creates_and_raises_the_fence
            a_taken_over_holder_can_write_nothing
            saves_form_a_chain_with_history
            damaged_documents_are_never_overwritten
            restore_writes_a_new_version_and_never_rewinds_the_fence
            backups_can_be_restored
            lost_answers_are_recognised
            a_deleted_document_accepts_no_write_below_an_earlier_one
            racing_holders_leave_a_monotonic_chain
        );
    };
}

/// Runs every case against `backend`, each under `prefix/<case>`.
pub async fn run_all(backend: SharedBackend, prefix: &str) {
    let p = |case: &str| format!("{prefix}/{case}");
    seal_creates_and_raises_the_fence(backend.clone(), &p(CASES[0])).await;
    a_taken_over_holder_can_write_nothing(backend.clone(), &p(CASES[1])).await;
    saves_form_a_chain_with_history(backend.clone(), &p(CASES[2])).await;
    damaged_documents_are_never_overwritten(backend.clone(), &p(CASES[3])).await;
    restore_writes_a_new_version_and_never_rewinds_the_fence(backend.clone(), &p(CASES[4])).await;
    backups_can_be_restored(backend.clone(), &p(CASES[5])).await;
    lost_answers_are_recognised(backend.clone(), &p(CASES[6])).await;
    a_deleted_document_accepts_no_write_below_an_earlier_one(backend.clone(), &p(CASES[7])).await;
    racing_holders_leave_a_monotonic_chain(backend, &p(CASES[8])).await;
}

fn store(backend: &SharedBackend) -> FencedStore<SharedBackend> {
    FencedStore::new(backend.clone())
}

fn key(prefix: &str, name: &str) -> LockKey {
    LockKey::new(format!("{prefix}/{name}"))
        .unwrap_or_else(|e| panic!("the prefix {prefix:?} makes an invalid key: {e}"))
}

fn writer(key: &LockKey, token: u64) -> Writer {
    Writer {
        key: key.clone(),
        token: FencingToken(token),
        lease: LeaseId::random(),
    }
}

/// A document whose output `counter` is `n`.
fn doc_with(base: &StateDocument, n: u64) -> StateDocument {
    let mut doc = base.clone();
    doc.outputs.insert("counter".into(), Value::from(n));
    doc
}

fn counter(doc: &StateDocument) -> Option<u64> {
    doc.outputs.get("counter").and_then(Value::as_u64)
}

async fn seal(s: &dyn StateStore, w: &Writer) -> Loaded {
    s.seal(w)
        .await
        .unwrap_or_else(|e| panic!("seal by token {} failed: {e:?}", w.token))
}

async fn load(s: &dyn StateStore, k: &LockKey) -> Option<Loaded> {
    s.load(k)
        .await
        .unwrap_or_else(|e| panic!("load of {k} failed: {e:?}"))
}

async fn save(
    s: &dyn StateStore,
    w: &Writer,
    v: &StateVersion,
    doc: StateDocument,
) -> StateVersion {
    s.save(w, v, doc)
        .await
        .unwrap_or_else(|e| panic!("save by token {} failed: {e:?}", w.token))
}

fn stale(result: Result<impl std::fmt::Debug, StateError>, what: &str) {
    match result {
        Err(StateError::Stale { .. }) => {}
        other => panic!("{what}: expected Stale, got {other:?}"),
    }
}

/// Sealing an absent state creates an empty document fenced at the token;
/// sealing again by the same lease changes nothing; a lower token, or the
/// same token for another lease, is refused; a higher one raises the fence.
pub async fn seal_creates_and_raises_the_fence(backend: SharedBackend, prefix: &str) {
    let s = &store(&backend);
    let k = key(prefix, "state");
    assert!(load(s, &k).await.is_none(), "a fresh key has no state");
    let w3 = writer(&k, 3);
    let sealed = seal(s, &w3).await;
    let stamp = sealed.stamp().expect("a sealed document carries a stamp");
    assert_eq!(
        (stamp.fence, stamp.lease, stamp.serial),
        (FencingToken(3), w3.lease, 0)
    );
    assert!(sealed.document.resources.is_empty());
    assert_eq!(load(s, &k).await, Some(sealed.clone()));
    let again = seal(s, &w3).await;
    assert_eq!(
        again.version, sealed.version,
        "sealing twice changes nothing"
    );
    stale(s.seal(&writer(&k, 2)).await, "seal by a lower token");
    stale(
        s.seal(&writer(&k, 3)).await,
        "seal by the same token, another lease",
    );
    let w9 = writer(&k, 9);
    let raised = seal(s, &w9).await;
    assert_eq!(raised.stamp().map(|s| s.fence), Some(FencingToken(9)));
    assert_ne!(raised.version, sealed.version);
    stale(
        s.seal(&w3).await,
        "the older holder's seal after a newer one",
    );
}

/// The case the fence exists for: A reads the state, B takes the lock over
/// and seals (without writing anything else), then A saves what it read —
/// refused, and nothing is written. A save without a seal, or over a version
/// the writer did not read, is refused too.
pub async fn a_taken_over_holder_can_write_nothing(backend: SharedBackend, prefix: &str) {
    let s = &store(&backend);
    let k = key(prefix, "state");
    let a = writer(&k, 1);
    let sealed = seal(s, &a).await;
    let v1 = save(s, &a, &sealed.version, doc_with(&sealed.document, 1)).await;
    let a_read = load(s, &k).await.expect("state");
    assert_eq!(a_read.version, v1);
    // B takes over and seals.
    let b = writer(&k, 2);
    let b_sealed = seal(s, &b).await;
    // A saves what it read: refused, nothing written.
    stale(
        s.save(&a, &a_read.version, doc_with(&a_read.document, 99))
            .await,
        "the old holder's save after the takeover",
    );
    stale(
        s.save(&a, &b_sealed.version, doc_with(&a_read.document, 99))
            .await,
        "the old holder's save over the new version",
    );
    assert_eq!(
        load(s, &k).await,
        Some(b_sealed.clone()),
        "a refused save wrote"
    );
    // A holder that did not seal (a newer token) may not save either.
    let c = writer(&k, 3);
    match s
        .save(&c, &b_sealed.version, doc_with(&a_read.document, 5))
        .await
    {
        Err(StateError::NotSealed { fence, .. }) => assert_eq!(fence, Some(FencingToken(2))),
        other => panic!("a save without a seal must be NotSealed, got {other:?}"),
    }
    // B saves over the version it read; a second save over the same
    // (now old) version is a version mismatch.
    let v2 = save(s, &b, &b_sealed.version, doc_with(&b_sealed.document, 2)).await;
    match s
        .save(&b, &b_sealed.version, doc_with(&b_sealed.document, 3))
        .await
    {
        Err(StateError::VersionMismatch { found, .. }) => assert_eq!(found, Some(v2)),
        other => panic!("a save over an old version must mismatch, got {other:?}"),
    }
    let last = load(s, &k).await.expect("state");
    assert_eq!(counter(&last.document), Some(2));
    assert_eq!(
        last.stamp().map(|s| (s.fence, s.serial)),
        Some((FencingToken(2), 2))
    );
}

/// Each save is stamped with the next serial and leaves an immutable
/// history snapshot; `history` lists them newest first, and each snapshot
/// holds exactly what was saved.
pub async fn saves_form_a_chain_with_history(backend: SharedBackend, prefix: &str) {
    let s = &store(&backend);
    let k = key(prefix, "stack-state");
    let w = writer(&k, 4);
    let mut current = seal(s, &w).await;
    for n in 1..=5u64 {
        let v = save(s, &w, &current.version, doc_with(&current.document, n)).await;
        current = load(s, &k).await.expect("state");
        assert_eq!(current.version, v);
        assert_eq!(current.stamp().map(|s| s.serial), Some(n));
        assert_eq!(counter(&current.document), Some(n));
        assert_eq!(current.document.checksum_problem(), Ok(None));
    }
    let history = s.history(&k, 10).await.expect("history");
    let serials: Vec<u64> = history.iter().map(|h| h.serial).collect();
    assert_eq!(serials, [5, 4, 3, 2, 1]);
    assert!(history
        .iter()
        .all(|h| h.token == FencingToken(4) && h.checksums_ok));
    let newest_two = s.history(&k, 2).await.expect("history");
    assert_eq!(newest_two.len(), 2);
    assert_eq!(newest_two[0].serial, 5);
    for entry in &history {
        let snapshot = s.snapshot(&k, &entry.id).await.expect("snapshot");
        assert_eq!(counter(&snapshot), Some(entry.serial));
    }
    // History snapshots are immutable: a second write of one is refused.
    let path = StatePaths::of(&k).history(1);
    assert_eq!(
        backend.put(&path, b"{}", PutIf::Absent).await,
        Err(PutFailure::ConditionFailed)
    );
}

/// Overwrites the current document's bytes (keeping its stamp and
/// checksums) with different content, as a disk error or a hand edit would.
async fn damage(backend: &SharedBackend, k: &LockKey) {
    let path = StatePaths::of(k).state();
    let (bytes, version) = backend
        .get(&path)
        .await
        .unwrap_or_else(|e| panic!("raw get failed: {e:?}"))
        .expect("a document to damage");
    let mut doc = StateDocument::from_json(&bytes).expect("a document");
    doc.outputs.insert("counter".into(), Value::from(1_000_000));
    let bytes = doc.to_json().expect("encode");
    backend
        .put(&path, &bytes, PutIf::Version(version))
        .await
        .unwrap_or_else(|e| panic!("raw put failed: {e:?}"));
}

/// A document whose content does not match its checksums is reported on
/// load and never overwritten by a save, a seal or a plain restore; only a
/// forced restore replaces it.
pub async fn damaged_documents_are_never_overwritten(backend: SharedBackend, prefix: &str) {
    let s = &store(&backend);
    let k = key(prefix, "state");
    let w = writer(&k, 2);
    let sealed = seal(s, &w).await;
    save(s, &w, &sealed.version, doc_with(&sealed.document, 7)).await;
    let good = s.history(&k, 1).await.expect("history")[0].id.clone();
    damage(&backend, &k).await;
    let path = StatePaths::of(&k).state();
    let damaged = backend.get(&path).await.expect("get").expect("object");
    match s.load(&k).await {
        Err(StateError::ChecksumMismatch { part, .. }) => assert_eq!(part, "outputs"),
        other => panic!("a damaged document must fail its checksum, got {other:?}"),
    }
    let version = StateVersion(damaged.1 .0.clone());
    match s.save(&w, &version, StateDocument::empty(None, None)).await {
        Err(StateError::ChecksumMismatch { .. }) => {}
        other => panic!("a save over a damaged document must be refused, got {other:?}"),
    }
    // A newer holder's seal keeps the content (it only raises the fence).
    let newer = writer(&k, 3);
    let _ = s.seal(&newer).await;
    assert!(matches!(
        s.load(&k).await,
        Err(StateError::ChecksumMismatch { .. })
    ));
    match s.restore(&newer, &good, false).await {
        Err(StateError::ChecksumMismatch { .. }) => {}
        other => panic!("a plain restore over a damaged document must be refused, got {other:?}"),
    }
    s.restore(&newer, &good, true)
        .await
        .unwrap_or_else(|e| panic!("a forced restore failed: {e:?}"));
    let restored = load(s, &k).await.expect("state");
    assert_eq!(counter(&restored.document), Some(7));
    assert_eq!(restored.stamp().map(|s| s.fence), Some(FencingToken(3)));
}

/// A restore writes the snapshot's content as a new version fenced at the
/// restorer's token (never the snapshot's older one), after the others in
/// the chain; a stale holder cannot restore.
pub async fn restore_writes_a_new_version_and_never_rewinds_the_fence(
    backend: SharedBackend,
    prefix: &str,
) {
    let s = &store(&backend);
    let k = key(prefix, "state");
    let a = writer(&k, 1);
    let mut current = seal(s, &a).await;
    for n in 1..=3u64 {
        save(s, &a, &current.version, doc_with(&current.document, n)).await;
        current = load(s, &k).await.expect("state");
    }
    let first = s
        .history(&k, 10)
        .await
        .expect("history")
        .pop()
        .expect("a snapshot");
    assert_eq!(first.serial, 1);
    let b = writer(&k, 5);
    seal(s, &b).await;
    s.restore(&b, &first.id, false)
        .await
        .unwrap_or_else(|e| panic!("restore failed: {e:?}"));
    let restored = load(s, &k).await.expect("state");
    assert_eq!(counter(&restored.document), Some(1));
    let stamp = restored.stamp().expect("stamp");
    assert_eq!((stamp.fence, stamp.serial), (FencingToken(5), 4));
    stale(
        s.restore(&a, &first.id, false).await,
        "a restore by the old holder",
    );
    match s.restore(&b, "no-such-snapshot", false).await {
        Err(StateError::NotFound(_)) => {}
        other => panic!("an unknown snapshot must be NotFound, got {other:?}"),
    }
    match s.restore(&b, "../../x", false).await {
        Err(StateError::NotFound(_)) => {}
        other => panic!("a path as a snapshot name must be NotFound, got {other:?}"),
    }
}

/// A backup copies the current document; restoring it brings its content
/// back as a new version.
pub async fn backups_can_be_restored(backend: SharedBackend, prefix: &str) {
    let s = &store(&backend);
    let k = key(prefix, "state");
    let w = writer(&k, 2);
    let sealed = seal(s, &w).await;
    save(s, &w, &sealed.version, doc_with(&sealed.document, 10)).await;
    let backup = s.backup(&k).await.expect("backup");
    let current = load(s, &k).await.expect("state");
    save(s, &w, &current.version, doc_with(&current.document, 11)).await;
    assert_eq!(
        counter(&s.snapshot(&k, &backup).await.expect("snapshot")),
        Some(10)
    );
    s.restore(&w, &backup, false).await.expect("restore");
    assert_eq!(
        counter(&load(s, &k).await.expect("state").document),
        Some(10)
    );
    match s.backup(&key(prefix, "none")).await {
        Err(StateError::NotFound(_)) => {}
        other => panic!("a backup of no state must be NotFound, got {other:?}"),
    }
}

/// Puts land but their answers are lost.
#[derive(Debug)]
struct LoseAnswers {
    inner: SharedBackend,
    lose: AtomicBool,
}

#[async_trait]
impl StateBackend for LoseAnswers {
    async fn get(&self, path: &str) -> Result<Option<(Vec<u8>, ObjectVersion)>, StateError> {
        self.inner.get(path).await
    }
    async fn put(
        &self,
        path: &str,
        body: &[u8],
        condition: PutIf,
    ) -> Result<ObjectVersion, PutFailure> {
        let answer = self.inner.put(path, body, condition).await;
        if self.lose.load(Ordering::SeqCst) && path.ends_with("/state.json") {
            let _ = answer;
            return Err(PutFailure::Error(StateError::Unavailable(
                "answer lost".into(),
            )));
        }
        answer
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StateError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, path: &str) -> Result<(), StateError> {
        self.inner.delete(path).await
    }
    fn describe(&self) -> String {
        format!("{} (answers lost)", self.inner.describe())
    }
}

/// A seal or save whose write landed but whose answer was lost is
/// recognised by its write id: it succeeds, once.
pub async fn lost_answers_are_recognised(backend: SharedBackend, prefix: &str) {
    let lossy = Arc::new(LoseAnswers {
        inner: backend.clone(),
        lose: AtomicBool::new(true),
    });
    let s = &FencedStore::new(lossy.clone() as SharedBackend);
    let k = key(prefix, "state");
    let w = writer(&k, 2);
    let sealed = seal(s, &w).await;
    let v = save(s, &w, &sealed.version, doc_with(&sealed.document, 1)).await;
    lossy.lose.store(false, Ordering::SeqCst);
    let current = load(s, &k).await.expect("state");
    assert_eq!(current.version, v);
    assert_eq!(counter(&current.document), Some(1));
    assert_eq!(current.stamp().map(|s| s.serial), Some(1));
    assert_eq!(s.history(&k, 10).await.expect("history").len(), 1);
}

/// A document deleted behind the store's back (by hand, by a lifecycle
/// rule, by re-creating the bucket) lets no write below an earlier accepted
/// token in: the holder that had sealed finds its state gone and cannot
/// save; a newer holder seals afresh; the older one stays refused.
pub async fn a_deleted_document_accepts_no_write_below_an_earlier_one(
    backend: SharedBackend,
    prefix: &str,
) {
    let s = &store(&backend);
    let k = key(prefix, "state");
    let a = writer(&k, 3);
    let sealed = seal(s, &a).await;
    let v = save(s, &a, &sealed.version, doc_with(&sealed.document, 1)).await;
    backend
        .delete(&StatePaths::of(&k).state())
        .await
        .unwrap_or_else(|e| panic!("raw delete failed: {e:?}"));
    match s.save(&a, &v, doc_with(&sealed.document, 2)).await {
        Err(StateError::NotSealed { fence: None, .. }) => {}
        other => panic!("a save into a vanished state must be refused, got {other:?}"),
    }
    assert!(load(s, &k).await.is_none(), "a refused save wrote");
    let b = writer(&k, 4);
    let b_sealed = seal(s, &b).await;
    save(s, &b, &b_sealed.version, doc_with(&b_sealed.document, 5)).await;
    stale(
        s.seal(&a).await,
        "the older holder's seal after the newer one",
    );
    let latest = load(s, &k).await.expect("state");
    stale(
        s.save(&a, &latest.version, doc_with(&latest.document, 9))
            .await,
        "the older holder's save",
    );
    assert_eq!(
        counter(&load(s, &k).await.expect("state").document),
        Some(5)
    );
}

/// Holders with increasing tokens race: each seals and saves while older
/// ones keep trying. Every accepted save's token is at least every earlier
/// accepted one's (`FencingMonotonic`), and the history is one chain of
/// serials 1..=n (`NoLostUpdate`).
pub async fn racing_holders_leave_a_monotonic_chain(backend: SharedBackend, prefix: &str) {
    const WRITERS: u64 = 6;
    const SAVES_EACH: u64 = 4;
    let s = Arc::new(store(&backend));
    let k = key(prefix, "state");
    let tasks: Vec<_> = (1..=WRITERS)
        .map(|token| {
            let (s, k) = (s.clone(), k.clone());
            tokio::spawn(async move {
                let w = writer(&k, token);
                let mut accepted = Vec::new();
                if s.seal(&w).await.is_err() {
                    return accepted;
                }
                for n in 0..SAVES_EACH {
                    let Ok(Some(current)) = s.load(&k).await else {
                        continue;
                    };
                    let doc = doc_with(&current.document, token * 100 + n);
                    if let Ok(v) = s.save(&w, &current.version, doc).await {
                        accepted.push(v);
                    }
                }
                accepted
            })
        })
        .collect();
    for t in tasks {
        t.await
            .unwrap_or_else(|e| panic!("a writer task failed: {e}"));
    }
    let history = s.history(&k, 1000).await.expect("history");
    let mut chain: Vec<(u64, FencingToken)> = history.iter().map(|h| (h.serial, h.token)).collect();
    chain.reverse();
    assert!(!chain.is_empty(), "some save was accepted");
    for (i, (serial, _)) in chain.iter().enumerate() {
        assert_eq!(*serial, i as u64 + 1, "the history is one chain: {chain:?}");
    }
    for pair in chain.windows(2) {
        assert!(pair[0].1 <= pair[1].1, "a token went back: {chain:?}");
    }
    let last = load(&*s, &k).await.expect("state");
    assert_eq!(last.stamp().map(|s| s.serial), chain.last().map(|c| c.0));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::backend::MemoryBackend;

    #[test]
    fn the_memory_backend_passes() {
        crate::testkit::conformance::runtime().block_on(run_all(
            Arc::new(MemoryBackend::new()),
            &crate::testkit::conformance::unique_prefix("state"),
        ));
    }

    #[test]
    fn cases_lists_every_case_once() {
        let mut names = CASES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CASES.len());
    }
}
