//! Turns: the waiters of one process for one key of one store take the lock
//! in the order they started waiting, and only the first of them talks to the
//! store.
//!
//! A client whose store names a place other processes can share
//! ([`LockStore::shared_name`](crate::store::LockStore::shared_name)) joins a
//! process-wide queue per (store, key) when it starts waiting. Only the
//! queue's first waiter runs the protocol's waiter; the others wait for their
//! turn without any store request. A client that has just released the key
//! and wants it again joins at the back, behind those already waiting, so it
//! cannot barge in ahead of them. Every record a client of the process learns
//! for a key (a grant, a release) is announced to the key's queue; a release
//! wakes the first waiter at once with the released version, so its grant is
//! one conditional write after the release instead of a poll interval later.
//!
//! This module decides only *which waiter of this process asks the store, and
//! when*. Every grant is still the store's conditional write naming the
//! version it replaces, so no safety property depends on it. It must not
//! decide anything about records, and must never block: waiting for a turn
//! is an await bounded by the caller's deadline and cancellation.

use crate::protocol::{LockKey, LockRecord};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use tokio::sync::watch;

/// The queues of the process, by (store name, key).
type Registry = Mutex<HashMap<(String, LockKey), Arc<Queue>>>;

fn registry() -> MutexGuard<'static, HashMap<(String, LockKey), Arc<Queue>>> {
    static QUEUES: OnceLock<Registry> = OnceLock::new();
    QUEUES
        .get_or_init(Registry::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// One key's queue.
#[derive(Debug)]
struct Queue {
    /// Tickets of the waiting clients, in arrival order.
    waiting: Mutex<VecDeque<u64>>,
    next_ticket: Mutex<u64>,
    /// The ticket whose turn it is (0: nobody's).
    first: watch::Sender<u64>,
    /// The newest record of the key a client of this process learned.
    latest: watch::Sender<Option<LockRecord>>,
}

impl Queue {
    fn new() -> Queue {
        Queue {
            waiting: Mutex::new(VecDeque::new()),
            next_ticket: Mutex::new(1),
            first: watch::Sender::new(0),
            latest: watch::Sender::new(None),
        }
    }

    fn waiting(&self) -> MutexGuard<'_, VecDeque<u64>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether `new` may replace `old` as the newest record of a key: records of
/// a key are ordered by token, and a release follows the grant it ends (a
/// late announcement of an older version is ignored).
fn newer(new: &LockRecord, old: Option<&LockRecord>) -> bool {
    match old {
        None => true,
        Some(old) => (new.token, new.released) >= (old.token, old.released),
    }
}

/// A place in a key's queue; leaving (drop) hands the turn on.
#[derive(Debug)]
pub(crate) struct Turn {
    store: String,
    key: LockKey,
    queue: Arc<Queue>,
    ticket: u64,
}

impl Turn {
    /// Joins the back of the queue of `key` in the store named `store`.
    pub(crate) fn join(store: String, key: &LockKey) -> Turn {
        let queue = registry()
            .entry((store.clone(), key.clone()))
            .or_insert_with(|| Arc::new(Queue::new()))
            .clone();
        let ticket = {
            let mut next = queue
                .next_ticket
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let ticket = *next;
            *next = next.wrapping_add(1).max(1);
            ticket
        };
        {
            let mut waiting = queue.waiting();
            waiting.push_back(ticket);
            if waiting.len() == 1 {
                queue.first.send_replace(ticket);
            }
        }
        Turn {
            store,
            key: key.clone(),
            queue,
            ticket,
        }
    }

    /// Resolves when it is this waiter's turn.
    pub(crate) async fn arrived(&self) {
        let mut first = self.queue.first.subscribe();
        loop {
            if *first.borrow_and_update() == self.ticket {
                return;
            }
            if first.changed().await.is_err() {
                return;
            }
        }
    }

    /// The newest record of the key a client of this process learned, and a
    /// receiver that wakes when another one is announced.
    pub(crate) fn latest(&self) -> (Option<LockRecord>, watch::Receiver<Option<LockRecord>>) {
        let mut rx = self.queue.latest.subscribe();
        let now = rx.borrow_and_update().clone();
        (now, rx)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut registry = registry();
        let empty = {
            let mut waiting = self.queue.waiting();
            let was_first = waiting.front() == Some(&self.ticket);
            waiting.retain(|t| *t != self.ticket);
            if was_first {
                self.queue
                    .first
                    .send_replace(waiting.front().copied().unwrap_or(0));
            }
            waiting.is_empty()
        };
        let key = (std::mem::take(&mut self.store), self.key.clone());
        if empty
            && registry
                .get(&key)
                .is_some_and(|q| Arc::ptr_eq(q, &self.queue))
        {
            registry.remove(&key);
        }
    }
}

/// Announces `record` (learned by a client of this process from the store
/// named `store`) to the queue of its key, if anyone waits for it.
pub(crate) fn announce(store: &str, record: &LockRecord) {
    let queue = registry()
        .get(&(store.to_string(), record.key.clone()))
        .cloned();
    if let Some(queue) = queue {
        queue.latest.send_if_modified(|latest| {
            let replace = newer(record, latest.as_ref());
            if replace {
                *latest = Some(record.clone());
            }
            replace
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::protocol::{FencingToken, HolderInfo, LeaseId, RecordVersion, WallTime};
    use std::time::Duration;

    fn key(name: &str) -> LockKey {
        LockKey::new(name).unwrap()
    }

    fn record(key: &LockKey, token: u64, released: bool) -> LockRecord {
        LockRecord {
            key: key.clone(),
            owner: LeaseId(uuid::Uuid::from_u128(token as u128)),
            token: FencingToken(token),
            rvn: RecordVersion::random(),
            lease_ms: 1000,
            released,
            holder: HolderInfo::named("t"),
            acquired_at: WallTime(0),
            heartbeat_at: WallTime(0),
            forced_by: None,
            queue: Vec::new(),
        }
    }

    async fn is_first(turn: &Turn) -> bool {
        tokio::time::timeout(Duration::from_millis(1), turn.arrived())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn turns_come_in_arrival_order_and_pass_on_when_a_waiter_leaves() {
        let k = key("turns/order");
        let a = Turn::join("s".into(), &k);
        let b = Turn::join("s".into(), &k);
        let c = Turn::join("s".into(), &k);
        assert!(is_first(&a).await);
        assert!(!is_first(&b).await && !is_first(&c).await);
        // A waiter in the middle gives up: the order of the others stays.
        drop(b);
        assert!(!is_first(&c).await);
        drop(a);
        assert!(is_first(&c).await);
        // A client that comes back joins behind those waiting.
        let a2 = Turn::join("s".into(), &k);
        assert!(!is_first(&a2).await);
        drop(c);
        assert!(is_first(&a2).await);
    }

    #[tokio::test]
    async fn queues_are_per_store_and_key_and_go_away_when_empty() {
        let k = key("turns/separate");
        let a = Turn::join("one".into(), &k);
        let b = Turn::join("two".into(), &k);
        let c = Turn::join("one".into(), &key("turns/other"));
        assert!(is_first(&a).await && is_first(&b).await && is_first(&c).await);
        drop((a, b, c));
        let registry = registry();
        assert!(!registry.contains_key(&("one".to_string(), k.clone())));
        assert!(!registry.contains_key(&("two".to_string(), k)));
    }

    #[tokio::test]
    async fn a_release_wakes_the_first_waiter_and_older_news_is_ignored() {
        let k = key("turns/news");
        let turn = Turn::join("s".into(), &k);
        let (now, mut rx) = turn.latest();
        assert!(now.is_none());
        announce("s", &record(&k, 4, false));
        rx.changed().await.unwrap();
        assert_eq!(
            rx.borrow_and_update().as_ref().map(|r| r.token),
            Some(FencingToken(4))
        );
        announce("s", &record(&k, 4, true));
        rx.changed().await.unwrap();
        assert!(rx.borrow_and_update().as_ref().is_some_and(|r| r.released));
        // A late heartbeat of token 4 and anything of token 3 are older.
        announce("s", &record(&k, 4, false));
        announce("s", &record(&k, 3, true));
        assert!(!rx.has_changed().unwrap());
        // Another store's news does not reach this queue.
        announce("other", &record(&k, 9, true));
        assert!(!rx.has_changed().unwrap());
    }
}
