//! The store host: serves the reference [`MemoryStore`] and
//! [`MemoryRegister`] (and the naive variant's tables) over simulated TCP.
//!
//! The data lives in [`Durable`], created outside the host's software, so it
//! survives a crash and restart of the host — like DynamoDB's — while
//! connections and requests in flight are lost. Each request is applied
//! synchronously inside one poll of the single-threaded host, so every
//! conditional write is atomic. The store records what it applied, with the
//! record before and after, for the server-side checkers.

use crate::history::{Actor, AppliedOp, LockOpKind, RecordView, Recorder, What};
use crate::wire::{read_frame, write_frame, Envelope, NaiveLock, Request, Response, STORE_PORT};
use statelock::protocol::{LockOp, LockRecord, OpKind};
use statelock::state::register_memory::MemoryRegister;
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

/// The store's durable data: survives host crashes.
#[derive(Debug, Default)]
pub struct Durable {
    /// Lock records.
    pub locks: MemoryStore,
    /// State documents.
    pub states: MemoryRegister,
    /// The naive variant's locks and state.
    pub naive: Mutex<NaiveTables>,
}

impl Durable {
    /// Empty stores.
    pub fn new() -> Self {
        Durable::default()
    }

    fn naive(&self) -> std::sync::MutexGuard<'_, NaiveTables> {
        self.naive.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The host's software: accept connections and answer their requests, one
/// at a time per connection.
pub async fn serve(durable: Arc<Durable>, recorder: Recorder) -> turmoil::Result {
    recorder.record(Actor::Store, What::StoreStarted);
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
        let response = handle(durable, recorder, envelope);
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
    }
}

fn naive_view(l: &NaiveLock) -> RecordView {
    RecordView {
        owner: u128::from(l.lock_id),
        token: l.generation,
        rvn: None,
        released: false,
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
    }
}

/// Applies one request atomically and records what it changed.
pub fn handle(durable: &Durable, recorder: &Recorder, envelope: Envelope) -> Response {
    let from = actor_of(&envelope.from);
    match envelope.request {
        Request::Apply(op) => {
            let prev = durable.locks.get_now(&op.key);
            let (kind, owner, expected_rvn) = describe_op(&op);
            match durable.locks.apply_now(&op) {
                Ok(record) => {
                    recorder.record(
                        Actor::Store,
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
                        Actor::Store,
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
        Request::Get(key) => Response::Record(durable.locks.get_now(&key)),
        Request::List => Response::Records(durable.locks.list_now()),
        Request::Floor => Response::Floor(durable.locks.token_floor_now()),
        Request::Purge { key, observed } => match durable.locks.purge_now(&key, observed) {
            Ok(record) => Response::Purged(record),
            Err(StoreError::Conflict { current }) => Response::Conflict(current.map(|r| *r)),
            Err(e) => Response::Error(e.to_string()),
        },
        Request::Load(key) => Response::State(durable.states.load_now(&key).map(Into::into)),
        Request::Save {
            key,
            token,
            expected,
            body,
        } => match durable
            .states
            .save_now(&key, token, expected.as_ref(), &body)
        {
            Ok(version) => {
                recorder.record(
                    Actor::Store,
                    What::StateAccepted {
                        from,
                        key: key.to_string(),
                        token: token.0,
                        expected: expected.map(|v| v.0),
                        version: version.0.clone(),
                        body: String::from_utf8_lossy(&body).into_owned(),
                    },
                );
                Response::Saved(version)
            }
            Err(e) => {
                recorder.record(
                    Actor::Store,
                    What::StateRejected {
                        from,
                        key: key.to_string(),
                        token: token.0,
                        reason: e.to_string(),
                    },
                );
                Response::SaveRejected(e.into())
            }
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
                    Actor::Store,
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
                Actor::Store,
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
                        Actor::Store,
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
                        Actor::Store,
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
                        Actor::Store,
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
                        Actor::Store,
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
                Actor::Store,
                What::StateAccepted {
                    from,
                    key,
                    token: generation,
                    expected: based_on,
                    version: version.clone(),
                    body: String::from_utf8_lossy(&body).into_owned(),
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
