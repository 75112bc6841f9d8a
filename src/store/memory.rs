//! The in-process reference store: a mutex over a map. It is the executable
//! definition of a correct store (it applies [`LockOp::apply`] atomically) and
//! the server of the simulator. Data lives as long as the value.

use super::{apply_reference, check_floor, purge_reference, Listing, LockStore, StoreError};
use crate::protocol::{FencingToken, LockKey, LockOp, LockRecord, RecordVersion};
use crate::sync::Mutex;
use async_trait::async_trait;
use std::collections::BTreeMap;

/// An in-memory lock store.
#[derive(Debug)]
pub struct MemoryStore {
    records: Mutex<Records>,
    /// Tells this store apart from the process's other memory stores.
    instance: u64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        MemoryStore {
            records: Mutex::default(),
            instance: INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Default)]
struct Records {
    by_key: BTreeMap<LockKey, LockRecord>,
    floor: FencingToken,
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
        check_floor(op, records.by_key.get(&op.key), records.floor)?;
        let next = apply_reference(op, records.by_key.get(&op.key))?;
        records.by_key.insert(op.key.clone(), next.clone());
        Ok(next)
    }

    /// [`LockStore::get`] without the async wrapper.
    pub fn get_now(&self, key: &LockKey) -> Option<LockRecord> {
        self.records.lock().by_key.get(key).cloned()
    }

    /// [`LockStore::list`] without the async wrapper (key order).
    pub fn list_now(&self) -> Vec<LockRecord> {
        self.records.lock().by_key.values().cloned().collect()
    }

    /// [`LockStore::token_floor`] without the async wrapper.
    pub fn token_floor_now(&self) -> FencingToken {
        self.records.lock().floor
    }

    /// [`LockStore::purge`] without the async wrapper: raises the floor and
    /// deletes the record in one step under the mutex.
    pub fn purge_now(
        &self,
        key: &LockKey,
        observed: RecordVersion,
    ) -> Result<LockRecord, StoreError> {
        let mut records = self.records.lock();
        let purged = purge_reference(records.by_key.get(key), observed)?;
        records.floor = records.floor.max(purged.token);
        records.by_key.remove(key);
        Ok(purged)
    }

    /// Stores `record` as it is, without any condition, as an operator editing
    /// the store by hand would. For tests (records at extreme tokens, records
    /// restored from old backups).
    pub fn put_behind_the_protocols_back(&self, record: LockRecord) {
        self.records
            .lock()
            .by_key
            .insert(record.key.clone(), record);
    }

    /// Deletes the record of `key` without raising the floor, as an operator
    /// or a lifecycle rule deleting it behind the protocol's back would.
    /// For tests of what fencing does then.
    pub fn delete_behind_the_protocols_back(&self, key: &LockKey) {
        self.records.lock().by_key.remove(key);
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
    async fn list(&self) -> Result<Listing, StoreError> {
        Ok(Listing::of(self.list_now()))
    }
    async fn token_floor(&self) -> Result<FencingToken, StoreError> {
        Ok(self.token_floor_now())
    }
    async fn purge(
        &self,
        key: &LockKey,
        observed: RecordVersion,
    ) -> Result<LockRecord, StoreError> {
        self.purge_now(key, observed)
    }
    fn describe(&self) -> String {
        "mem://".to_string()
    }
    fn shared_name(&self) -> Option<String> {
        Some(format!("mem://#{}", self.instance))
    }
    fn queues(&self) -> bool {
        true
    }
}
