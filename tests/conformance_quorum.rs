//! The lock store conformance suite mounted on a quorum store of three
//! members (a file store between two in-memory stores): with every member
//! answering, a quorum must behave exactly like one store. Quorum-specific
//! checks (members down, behind, split) live in `src/store/quorum/tests.rs`.

use statelock::store::file::FileStore;
use statelock::store::memory::MemoryStore;
use statelock::store::quorum::QuorumStore;
use statelock::store::LockStore;
use statelock::testkit::WithGuard;
use std::sync::Arc;

statelock::lock_store_conformance!(quorum: async {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = FileStore::open(dir.path().join("locks")).expect("open the file store");
    let members: Vec<Arc<dyn LockStore>> = vec![
        Arc::new(MemoryStore::new()),
        Arc::new(file),
        Arc::new(MemoryStore::new()),
    ];
    // Members that all answer: wait for each (a file store's fsync can
    // take longer than the default straggler wait on a busy disk).
    let quorum = QuorumStore::new(members)
        .expect("three members")
        .with_straggler_wait(std::time::Duration::from_secs(10));
    WithGuard::new(quorum, dir)
});
