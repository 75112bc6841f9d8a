//! The lock store conformance suite mounted on the directory store, each test
//! in a fresh temporary directory (removed when the test ends). It must not
//! hold store-specific checks: those live in `src/store/file.rs`.

use statelock::store::file::FileStore;
use statelock::testkit::WithGuard;

statelock::lock_store_conformance!(async {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = FileStore::open(dir.path().join("locks")).expect("open the file store");
    WithGuard::new(store, dir)
});
