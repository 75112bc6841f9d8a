//! Test support (feature `testkit`): the conformance suites every
//! [`LockStore`](crate::store::LockStore) and every state backend must pass,
//! fault-injecting store wrappers, and checkers for the invariants of
//! docs/PROTOCOL.md.
//!
//! Everything here exists to test stores and clients; none of it may be used
//! on a production path (the fault wrappers lie to their callers on purpose).
//!
//! Mount the suite on a store with one line in an integration test:
//!
//! ```ignore
//! statelock::lock_store_conformance!(async { statelock::store::memory::MemoryStore::new() });
//! ```

pub mod conformance;
pub mod faults;
pub mod invariants;
pub mod state_conformance;

pub use conformance::WithGuard;
pub use faults::{FaultMode, FaultSwitch, LoseResponses};
