//! The in-process reference store: a mutex over a map. It is the executable
//! definition of a correct store (it applies [`LockOp::apply`] atomically) and
//! the server of the simulator. Data lives as long as the value.

use super::{apply_reference, LockStore, StoreError};
use crate::protocol::{LockKey, LockOp, LockRecord};
use crate::sync::Mutex;
use async_trait::async_trait;
use std::collections::BTreeMap;

/// An in-memory lock store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    records: Mutex<BTreeMap<LockKey, LockRecord>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// [`LockStore::apply`] without the async wrapper: one atomic
    /// compare-and-swap under the mutex.
    pub fn apply_now(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
        let mut records = self.records.lock();
        let next = apply_reference(op, records.get(&op.key))?;
        records.insert(op.key.clone(), next.clone());
        Ok(next)
    }

    /// [`LockStore::get`] without the async wrapper.
    pub fn get_now(&self, key: &LockKey) -> Option<LockRecord> {
        self.records.lock().get(key).cloned()
    }

    /// [`LockStore::list`] without the async wrapper.
    pub fn list_now(&self) -> Vec<LockRecord> {
        self.records.lock().values().cloned().collect()
    }
}

#[async_trait]
impl LockStore for MemoryStore {
    async fn apply(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
        self.apply_now(op)
    }
    async fn get(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError> {
        Ok(self.get_now(key))
    }
    async fn list(&self) -> Result<Vec<LockRecord>, StoreError> {
        Ok(self.list_now())
    }
    fn describe(&self) -> String {
        "mem://".to_string()
    }
}
