//! The lock store conformance suite mounted on the in-memory reference store.
//! It must not hold store-specific checks: those live next to the store.

statelock::lock_store_conformance!(async { statelock::store::memory::MemoryStore::new() });
