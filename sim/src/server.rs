//! A store host: serves the reference [`MemoryStore`] for locks and a
//! [`MemoryBackend`] for state objects (and the naive variant's tables) over
//! simulated TCP. With several store hosts (a quorum), each serves its own
//! lock records; the clients send state requests to the first only.
//!
//! The clients run the production `FencedStore` over that backend, so the
//! store host decides nothing about fences: it only applies
//! conditional puts, and records what each accepted put of a key's
//! `state.json` did (a seal or a save, read from the documents' stamps) for
//! the checkers.
//!
//! The data lives in [`Durable`], created outside the host's software, so it
//! survives a crash and restart of the host — like DynamoDB's — while
//! connections and requests in flight are lost (the `store-wipe` fault
//! alone replaces the lock records by an empty store). Each request is applied
//! synchronously inside one poll of the single-threaded host, so every
//! conditional write is atomic. The store records what it applied, with the
//! record before and after, for the server-side checkers.

use crate::history::{Actor, AppliedOp, LockOpKind, RecordView, Recorder, What};
use crate::wire::{read_frame, write_frame, Envelope, NaiveLock, Request, Response, STORE_PORT};
use statelock::protocol::{LockKey, LockOp, LockRecord, OpKind};
use statelock::state::backend::{MemoryBackend, ObjectVersion, PutFailure, PutIf, StateBackend};
use statelock::state::layout::StatePaths;
use statelock::state::StateDocument;
use statelock::store::memory::MemoryStore;
use statelock::store::StoreError;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use turmoil::net::{TcpListener, TcpStream};

/// A connection that sends nothing for this long is dropped.
const IDLE_CONNECTION: Duration = Duration::from_secs(60);

/// The naive variant's tables.
#[derive(Debug, Default)]
pub struct NaiveTables {
    locks: BTreeMap<String, NaiveLock>,
    generations: BTreeMap<String, u64>,
    states: BTreeMap<String, (String, Vec<u8>)>,
    next_version: u64,
}

/// A store host's durable data: survives host crashes (its lock records
/// are lost only by [`Durable::wipe_locks`]).
#[derive(Debug)]
pub struct Durable {
    /// The store host this data belongs to (the actor of its events).
    pub id: Actor,
    /// Lock records (replaced by an empty store when wiped).
    locks: Mutex<Arc<MemoryStore>>,
    /// State objects (documents, history snapshots).
    pub states: MemoryBackend,
    /// The `state.json` object of each key the run uses → the key.
    pub state_keys: BTreeMap<String, String>,
    /// The naive variant's locks and state.
    pub naive: Mutex<NaiveTables>,
}

impl Default for Durable {
    fn default() -> Self {
        Durable::new()
    }
}

impl Durable {
    /// Empty stores of the first store host.
    pub fn new() -> Self {
        Durable::of_store(0)
    }

    /// Empty stores of store host `i`.
    pub fn of_store(i: u8) -> Self {
        Durable {
            id: Actor::Store(i),
            locks: Mutex::default(),
            states: MemoryBackend::default(),
            state_keys: BTreeMap::new(),
            naive: Mutex::default(),
        }
    }

    /// Empty stores of store host `i` for a run on `keys` (their state
    /// writes are recorded).
    pub fn for_keys(i: u8, keys: &[LockKey]) -> Self {
        Durable {
            state_keys: keys
                .iter()
                .map(|k| (StatePaths::of(k).state(), k.to_string()))
                .collect(),
            ..Durable::of_store(i)
        }
    }

    /// The lock records.
    pub fn locks(&self) -> Arc<MemoryStore> {
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Loses every lock record and the token floor: the host comes back
    /// empty (acknowledged writes are gone). The state objects are kept.
    pub fn wipe_locks(&self) {
        *self.locks.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(MemoryStore::new());
    }

    fn naive(&self) -> std::sync::MutexGuard<'_, NaiveTables> {
        self.naive.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The host's software: accept connections and answer their requests, one
/// at a time per connection.
pub async fn serve(durable: Arc<Durable>, recorder: Recorder) -> turmoil::Result {
    recorder.record(durable.id, What::StoreStarted);
    let listener = TcpListener::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), STORE_PORT)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let (durable, recorder) = (durable.clone(), recorder.clone());
        tokio::task::spawn_local(async move {
            let _ = serve_connection(stream, &durable, &recorder).await;
        });
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    durable: &Durable,
    recorder: &Recorder,
) -> std::io::Result<()> {
    loop {
        let envelope: Envelope =
            match tokio::time::timeout(IDLE_CONNECTION, read_frame(&mut stream)).await {
                Ok(frame) => frame?,
                Err(_) => return Ok(()),
            };
        let response = handle(durable, recorder, envelope).await;
        write_frame(&mut stream, &response).await?;
    }
}

fn actor_of(name: &str) -> Actor {
    match name {
        "operator" => Actor::Operator,
        _ => name
            .strip_prefix('c')
            .and_then(|n| n.parse().ok())
            .map(Actor::Client)
            .unwrap_or(Actor::Sim),
    }
}

/// A statelock record as the checkers see it.
pub fn view(r: &LockRecord) -> RecordView {
    RecordView {
        owner: r.owner.0.as_u128(),
        token: r.token.0,
        rvn: Some(r.rvn.0),
        released: r.released,
        queue: r.queue.iter().map(|w| w.0.as_u128()).collect(),
    }
}

fn naive_view(l: &NaiveLock) -> RecordView {
    RecordView {
        owner: u128::from(l.lock_id),
        token: l.generation,
        rvn: None,
        released: false,
        queue: Vec::new(),
    }
}

/// The op's kind, owner and expected version, as the checkers see them.
pub fn describe_op(op: &LockOp) -> (LockOpKind, Option<u128>, Option<u128>) {
    match &op.kind {
        OpKind::Acquire { owner, .. } => (LockOpKind::Acquire, Some(owner.0.as_u128()), None),
        OpKind::Takeover {
            observed, owner, ..
        } => (
            LockOpKind::Takeover,
            Some(owner.0.as_u128()),
            Some(observed.0),
        ),
        // A rebase is the holder's own conditional write, like a heartbeat
        // (the simulated store never loses records, so none is sent).
        OpKind::Heartbeat { owner, current } | OpKind::Rebase { owner, current, .. } => (
            LockOpKind::Heartbeat,
            Some(owner.0.as_u128()),
            Some(current.0),
        ),
        OpKind::Release { owner, current } => (
            LockOpKind::Release,
            Some(owner.0.as_u128()),
            Some(current.0),
        ),
        OpKind::ForceUnlock { observed, .. } => (LockOpKind::ForceUnlock, None, Some(observed.0)),
        // The queue's writes are conditional on the waiter's place, not on
        // a version.
        OpKind::Enqueue { waiter } => (LockOpKind::Enqueue, Some(waiter.0.as_u128()), None),
        OpKind::Leave { waiter, .. } => (LockOpKind::Leave, Some(waiter.0.as_u128()), None),
    }
}

/// The stamp and save counter of a stored state document, if it is one.
fn stamp_of(bytes: &[u8]) -> Option<(StateDocument, statelock::state::Stamp)> {
    let doc = StateDocument::from_json(bytes).ok()?;
    let stamp = doc.statelock?;
    Some((doc, stamp))
}

/// What a put of `key`'s `state.json` did: a seal (the stamp's serial is
/// unchanged: only the fence moved), a save, or a rejection.
fn state_put_event(
    from: Actor,
    key: &str,
    prev: Option<&(Vec<u8>, ObjectVersion)>,
    body: &[u8],
    if_match: Option<&String>,
    result: &Result<ObjectVersion, PutFailure>,
) -> What {
    let written = stamp_of(body);
    let token = written.as_ref().map_or(0, |(_, s)| s.fence.0);
    let version = match result {
        Ok(v) => v.0.clone(),
        Err(failure) => {
            let reason = match failure {
                PutFailure::ConditionFailed => format!(
                    "condition {} failed: the state is at {}",
                    if_match
                        .map_or_else(|| "if-none-match".to_string(), |v| format!("if-match {v}")),
                    prev.map_or_else(|| "none".to_string(), |(_, v)| v.0.clone())
                ),
                PutFailure::Error(e) => e.to_string(),
            };
            return What::StateRejected {
                from,
                key: key.to_string(),
                token,
                reason,
            };
        }
    };
    let prev_serial = prev
        .and_then(|(bytes, _)| stamp_of(bytes))
        .map_or(0, |(_, s)| s.serial);
    let expected = if_match.cloned();
    let Some((doc, stamp)) = written else {
        return What::StateAccepted {
            from,
            key: key.to_string(),
            token,
            expected,
            version,
            body: "a document without a stamp".into(),
            counter: None,
        };
    };
    if stamp.serial == prev_serial {
        What::StateSealed {
            from,
            key: key.to_string(),
            token,
            lease: stamp.lease.0.as_u128(),
            expected,
            version,
        }
    } else {
        What::StateAccepted {
            from,
            key: key.to_string(),
            token,
            expected,
            version,
            body: doc
                .metadata
                .last_updated_by
                .clone()
                .unwrap_or_else(|| "?".into()),
            counter: doc.outputs.get("counter").and_then(|v| v.as_u64()),
        }
    }
}

/// Applies one request atomically and records what it changed. The state
/// backend answers at once (it never waits), so nothing else runs between
/// reading an object and writing it.
pub async fn handle(durable: &Durable, recorder: &Recorder, envelope: Envelope) -> Response {
    let from = actor_of(&envelope.from);
    match envelope.request {
        Request::Apply(op) => {
            let prev = durable.locks().get_now(&op.key);
            let (kind, owner, expected_rvn) = describe_op(&op);
            match durable.locks().apply_now(&op) {
                Ok(record) => {
                    recorder.record(
                        durable.id,
                        What::LockApplied {
                            from,
                            op: AppliedOp {
                                key: op.key.to_string(),
                                kind,
                                owner,
                                expected_rvn,
                                prev: prev.as_ref().map(view),
                                next: Some(view(&record)),
                            },
                        },
                    );
                    Response::Applied(record)
                }
                Err(StoreError::Conflict { current }) => {
                    recorder.record(
                        durable.id,
                        What::LockRejected {
                            from,
                            key: op.key.to_string(),
                            kind,
                            current: current.as_deref().map(view),
                        },
                    );
                    Response::Conflict(current.map(|b| *b))
                }
                Err(other) => Response::Error(other.to_string()),
            }
        }
        Request::Get(key) => Response::Record(durable.locks().get_now(&key)),
        Request::List => Response::Records(durable.locks().list_now()),
        Request::Floor => Response::Floor(durable.locks().token_floor_now()),
        Request::Purge { key, observed } => match durable.locks().purge_now(&key, observed) {
            Ok(record) => Response::Purged(record),
            Err(StoreError::Conflict { current }) => Response::Conflict(current.map(|r| *r)),
            Err(e) => Response::Error(e.to_string()),
        },
        Request::ObjectGet { path } => match durable.states.get(&path).await {
            Ok(o) => Response::Object(o.map(|(body, v)| (body, v.0))),
            Err(e) => Response::Error(e.to_string()),
        },
        Request::ObjectPut {
            path,
            body,
            if_match,
        } => {
            let condition = match &if_match {
                None => PutIf::Absent,
                Some(v) => PutIf::Version(ObjectVersion(v.clone())),
            };
            let prev = durable.states.get(&path).await.ok().flatten();
            let result = durable.states.put(&path, &body, condition).await;
            if let Some(key) = durable.state_keys.get(&path) {
                let what =
                    state_put_event(from, key, prev.as_ref(), &body, if_match.as_ref(), &result);
                recorder.record(durable.id, what);
            }
            match result {
                Ok(v) => Response::Put(v.0),
                Err(PutFailure::ConditionFailed) => Response::PutConditionFailed,
                Err(PutFailure::Error(e)) => Response::Error(e.to_string()),
            }
        }
        Request::ObjectList { prefix } => match durable.states.list(&prefix).await {
            Ok(names) => Response::Names(names),
            Err(e) => Response::Error(e.to_string()),
        },
        Request::ObjectDelete { path } => match durable.states.delete(&path).await {
            Ok(()) => Response::Deleted,
            Err(e) => Response::Error(e.to_string()),
        },
        Request::NaiveAcquire {
            key,
            lock_id,
            now_ms,
            lease_ms,
        } => {
            let mut t = durable.naive();
            let current = t.locks.get(&key).copied();
            let free = match current {
                None => true,
                Some(l) => l.expires_at < now_ms,
            };
            if !free {
                recorder.record(
                    durable.id,
                    What::LockRejected {
                        from,
                        key,
                        kind: LockOpKind::Acquire,
                        current: current.as_ref().map(naive_view),
                    },
                );
                return Response::NaiveLock {
                    applied: false,
                    lock: current,
                };
            }
            let generation = {
                let g = t.generations.entry(key.clone()).or_insert(0);
                *g += 1;
                *g
            };
            let lock = NaiveLock {
                lock_id,
                expires_at: now_ms.saturating_add(lease_ms as i64),
                generation,
            };
            t.locks.insert(key.clone(), lock);
            let kind = if current.is_some() {
                LockOpKind::Takeover
            } else {
                LockOpKind::Acquire
            };
            recorder.record(
                durable.id,
                What::LockApplied {
                    from,
                    op: AppliedOp {
                        key,
                        kind,
                        owner: Some(u128::from(lock_id)),
                        expected_rvn: None,
                        prev: current.as_ref().map(naive_view),
                        next: Some(naive_view(&lock)),
                    },
                },
            );
            Response::NaiveLock {
                applied: true,
                lock: Some(lock),
            }
        }
        Request::NaiveHeartbeat {
            key,
            lock_id,
            now_ms,
            lease_ms,
        } => {
            let mut t = durable.naive();
            let current = t.locks.get(&key).copied();
            match current {
                Some(l) if l.lock_id == lock_id => {
                    let next = NaiveLock {
                        expires_at: now_ms.saturating_add(lease_ms as i64),
                        ..l
                    };
                    t.locks.insert(key.clone(), next);
                    recorder.record(
                        durable.id,
                        What::LockApplied {
                            from,
                            op: AppliedOp {
                                key,
                                kind: LockOpKind::Heartbeat,
                                owner: Some(u128::from(lock_id)),
                                expected_rvn: None,
                                prev: Some(naive_view(&l)),
                                next: Some(naive_view(&next)),
                            },
                        },
                    );
                    Response::NaiveLock {
                        applied: true,
                        lock: Some(next),
                    }
                }
                _ => {
                    recorder.record(
                        durable.id,
                        What::LockRejected {
                            from,
                            key,
                            kind: LockOpKind::Heartbeat,
                            current: current.as_ref().map(naive_view),
                        },
                    );
                    Response::NaiveLock {
                        applied: false,
                        lock: current,
                    }
                }
            }
        }
        Request::NaiveRelease { key, lock_id } => {
            let mut t = durable.naive();
            let current = t.locks.get(&key).copied();
            match current {
                Some(l) if l.lock_id == lock_id => {
                    t.locks.remove(&key);
                    recorder.record(
                        durable.id,
                        What::LockApplied {
                            from,
                            op: AppliedOp {
                                key,
                                kind: LockOpKind::Release,
                                owner: Some(u128::from(lock_id)),
                                expected_rvn: None,
                                prev: Some(naive_view(&l)),
                                next: None,
                            },
                        },
                    );
                    Response::NaiveLock {
                        applied: true,
                        lock: None,
                    }
                }
                _ => {
                    recorder.record(
                        durable.id,
                        What::LockRejected {
                            from,
                            key,
                            kind: LockOpKind::Release,
                            current: current.as_ref().map(naive_view),
                        },
                    );
                    Response::NaiveLock {
                        applied: false,
                        lock: current,
                    }
                }
            }
        }
        Request::NaiveLoad { key } => {
            Response::NaiveState(durable.naive().states.get(&key).cloned())
        }
        Request::NaiveSave {
            key,
            generation,
            based_on,
            body,
        } => {
            let mut t = durable.naive();
            t.next_version += 1;
            let version = format!("n{}", t.next_version);
            t.states
                .insert(key.clone(), (version.clone(), body.clone()));
            recorder.record(
                durable.id,
                What::StateAccepted {
                    from,
                    key,
                    token: generation,
                    expected: based_on,
                    version: version.clone(),
                    body: String::from_utf8_lossy(&body).into_owned(),
                    counter: None,
                },
            );
            Response::NaiveSaved(version)
        }
    }
}

/// The naive records still held at the end of a run (for audits).
pub fn naive_locks(durable: &Durable) -> Vec<(String, NaiveLock)> {
    durable
        .naive()
        .locks
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}
