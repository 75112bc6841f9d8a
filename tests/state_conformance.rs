//! The state conformance suite on the memory and local-directory backends
//! (the S3 backend runs it in tests/s3.rs).

mod memory {
    use statelock::state::backend::MemoryBackend;
    use std::sync::Arc;

    statelock::state_backend_conformance!(async {
        Arc::new(MemoryBackend::new()) as statelock::testkit::state_conformance::SharedBackend
    });
}

mod file {
    use async_trait::async_trait;
    use statelock::state::backend::{ObjectVersion, PutFailure, PutIf, StateBackend};
    use statelock::state::file::FileBackend;
    use statelock::state::StateError;
    use std::sync::Arc;

    /// A file backend in a temporary directory removed when it is dropped.
    #[derive(Debug)]
    struct InTempDir {
        backend: FileBackend,
        _dir: tempfile::TempDir,
    }

    #[async_trait]
    impl StateBackend for InTempDir {
        async fn get(&self, path: &str) -> Result<Option<(Vec<u8>, ObjectVersion)>, StateError> {
            self.backend.get(path).await
        }
        async fn put(
            &self,
            path: &str,
            body: &[u8],
            condition: PutIf,
        ) -> Result<ObjectVersion, PutFailure> {
            self.backend.put(path, body, condition).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<String>, StateError> {
            self.backend.list(prefix).await
        }
        async fn delete(&self, path: &str) -> Result<(), StateError> {
            self.backend.delete(path).await
        }
        fn describe(&self) -> String {
            self.backend.describe()
        }
    }

    async fn backend() -> statelock::testkit::state_conformance::SharedBackend {
        let dir = tempfile::tempdir().expect("temporary directory");
        let backend = FileBackend::open(dir.path().join("state")).expect("file backend");
        Arc::new(InTempDir { backend, _dir: dir })
    }

    statelock::state_backend_conformance!(backend());
}
