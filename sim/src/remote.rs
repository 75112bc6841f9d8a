//! The client side of the store host's protocol: [`RemoteLockStore`] and
//! [`RemoteStateBackend`] implement the library's store traits over simulated
//! TCP, so the code under test is the production `LockClient` and the
//! production `FencedStore`; with several store hosts, [`lock_store`] puts
//! the production `QuorumStore` over one `RemoteLockStore` per host.
//!
//! Every request has a deadline. A request that gets no answer in time (lost
//! or held message, partition, crashed store) maps to `Unavailable`: for a
//! write, the outcome is unknown — it may have landed, or may still land.
//!
//! Connections are kept for reuse, one request at a time each. A connection
//! whose request failed or timed out is dropped, never reused, so a late
//! answer can never be taken for the answer to another request.
//!
//! A refused connection (turmoil refuses at once when the link is cut or
//! the host is down) is answered at the request's deadline, as a dropped
//! SYN would be: a caller that retries at once cannot spin in zero
//! simulated time, opening connections until the host's ports run out
//! (turmoil never frees the port of a connection that was not
//! established).

use crate::config::SimConfig;
use crate::history::{Actor, Recorder, What};
use crate::planted::{PerStoreToken, QueueJump};
use crate::scenario::StateBug;
use crate::wire::{
    read_frame, store_host, write_frame, Envelope, Request, Response, STORE_HOST, STORE_PORT,
};
use async_trait::async_trait;
use statelock::protocol::{FencingToken, LockKey, LockOp, LockRecord, RecordVersion};
use statelock::state::backend::{ObjectVersion, PutFailure, PutIf, StateBackend};
use statelock::state::StateError;
use statelock::store::quorum::QuorumStore;
use statelock::store::{Listing, LockStore, StoreError};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use turmoil::net::TcpStream;

/// A request that got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError(pub String);

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One host's connection settings to one store host.
#[derive(Debug, Clone)]
pub struct Rpc {
    from: String,
    to: String,
    actor: Actor,
    timeout: Duration,
    recorder: Recorder,
    idle: Arc<Mutex<Vec<TcpStream>>>,
}

impl Rpc {
    /// Requests from host `from` (recorded as `actor`) to the (first)
    /// store host with this deadline.
    pub fn new(
        from: impl Into<String>,
        actor: Actor,
        timeout: Duration,
        recorder: Recorder,
    ) -> Self {
        Rpc {
            from: from.into(),
            to: STORE_HOST.to_string(),
            actor,
            timeout,
            recorder,
            idle: Arc::default(),
        }
    }

    /// The same settings, to store host `i` (with its own connections).
    pub fn to_store(&self, i: usize) -> Rpc {
        Rpc {
            to: store_host(i),
            idle: Arc::default(),
            ..self.clone()
        }
    }

    /// The store host the requests go to.
    pub fn host(&self) -> &str {
        &self.to
    }

    fn take_idle(&self) -> Option<TcpStream> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn put_idle(&self, stream: TcpStream) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(stream);
    }

    /// Sends `request` on an idle connection (or a new one) and waits for
    /// the answer.
    pub async fn call(&self, request: Request) -> Result<Response, RpcError> {
        let name = request.name();
        let envelope = Envelope {
            from: self.from.clone(),
            request,
        };
        let reused = self.take_idle();
        let exchanged = exchange(&self.to, reused, &envelope);
        let deadline = tokio::time::Instant::now() + self.timeout;
        let result = match tokio::time::timeout_at(deadline, exchanged).await {
            Ok(Ok((stream, response))) => {
                self.put_idle(stream);
                Ok(response)
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                // turmoil refuses a connection at once, in zero simulated
                // time, when the link is cut; a real partition drops the SYN
                // and the caller hears nothing until its deadline. Waiting it
                // out also bounds how fast a caller that retries at once can
                // open connections (each refused one keeps its port).
                tokio::time::sleep_until(deadline).await;
                Err(RpcError(format!(
                    "no answer within {}ms (connection refused: {e})",
                    self.timeout.as_millis()
                )))
            }
            Ok(Err(e)) => Err(RpcError(format!("connection error: {e}"))),
            Err(_) => Err(RpcError(format!(
                "no answer within {}ms",
                self.timeout.as_millis()
            ))),
        };
        if let Err(e) = &result {
            let request = if self.to == STORE_HOST {
                name
            } else {
                format!("{name} to {}", self.to)
            };
            self.recorder.record(
                self.actor,
                What::RpcFailed {
                    request,
                    error: e.0.clone(),
                },
            );
        }
        result
    }
}

async fn exchange(
    to: &str,
    reused: Option<TcpStream>,
    envelope: &Envelope,
) -> std::io::Result<(TcpStream, Response)> {
    let mut stream = match reused {
        Some(s) => s,
        None => TcpStream::connect((to, STORE_PORT)).await?,
    };
    write_frame(&mut stream, envelope).await?;
    let response = read_frame(&mut stream).await?;
    Ok((stream, response))
}

fn unexpected(r: Response) -> String {
    format!("unexpected answer from the store: {r:?}")
}

/// A [`LockStore`] on one store host.
#[derive(Debug, Clone)]
pub struct RemoteLockStore {
    rpc: Rpc,
}

impl RemoteLockStore {
    /// A store reached through `rpc`.
    pub fn new(rpc: Rpc) -> Self {
        RemoteLockStore { rpc }
    }
}

#[async_trait]
impl LockStore for RemoteLockStore {
    async fn apply(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
        match self.rpc.call(Request::Apply(op.clone())).await {
            Ok(Response::Applied(record)) => Ok(record),
            Ok(Response::Conflict(current)) => Err(StoreError::conflict(current)),
            Ok(Response::Error(e)) => Err(StoreError::Unavailable(e)),
            Ok(other) => Err(StoreError::Corrupt {
                key: op.key.to_string(),
                reason: unexpected(other),
            }),
            Err(e) => Err(StoreError::Unavailable(e.0)),
        }
    }

    async fn get(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError> {
        match self.rpc.call(Request::Get(key.clone())).await {
            Ok(Response::Record(r)) => Ok(r),
            Ok(other) => Err(StoreError::Corrupt {
                key: key.to_string(),
                reason: unexpected(other),
            }),
            Err(e) => Err(StoreError::Unavailable(e.0)),
        }
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        match self.rpc.call(Request::List).await {
            Ok(Response::Records(r)) => Ok(Listing::of(r)),
            Ok(other) => Err(StoreError::Corrupt {
                key: String::new(),
                reason: unexpected(other),
            }),
            Err(e) => Err(StoreError::Unavailable(e.0)),
        }
    }

    async fn token_floor(&self) -> Result<FencingToken, StoreError> {
        match self.rpc.call(Request::Floor).await {
            Ok(Response::Floor(f)) => Ok(f),
            Ok(other) => Err(StoreError::Corrupt {
                key: String::new(),
                reason: unexpected(other),
            }),
            Err(e) => Err(StoreError::Unavailable(e.0)),
        }
    }

    async fn purge(
        &self,
        key: &LockKey,
        observed: RecordVersion,
    ) -> Result<LockRecord, StoreError> {
        let request = Request::Purge {
            key: key.clone(),
            observed,
        };
        match self.rpc.call(request).await {
            Ok(Response::Purged(r)) => Ok(r),
            Ok(Response::Conflict(current)) => Err(StoreError::conflict(current)),
            Ok(Response::Error(e)) => Err(StoreError::Unavailable(e)),
            Ok(other) => Err(StoreError::Corrupt {
                key: key.to_string(),
                reason: unexpected(other),
            }),
            Err(e) => Err(StoreError::Unavailable(e.0)),
        }
    }

    fn describe(&self) -> String {
        format!("sim://{}:{STORE_PORT}", self.rpc.to)
    }
    /// The server is a memory store: it keeps the hand-off queue.
    fn queues(&self) -> bool {
        true
    }
}

/// A [`StateBackend`] on the store host: the production
/// [`statelock::state::FencedStore`] runs over it on the clients.
#[derive(Debug, Clone)]
pub struct RemoteStateBackend {
    rpc: Rpc,
}

impl RemoteStateBackend {
    /// A backend reached through `rpc`.
    pub fn new(rpc: Rpc) -> Self {
        RemoteStateBackend { rpc }
    }
}

fn state_corrupt(path: &str, r: Response) -> StateError {
    StateError::Corrupt {
        key: path.to_string(),
        reason: unexpected(r),
    }
}

#[async_trait]
impl StateBackend for RemoteStateBackend {
    async fn get(&self, path: &str) -> Result<Option<(Vec<u8>, ObjectVersion)>, StateError> {
        let request = Request::ObjectGet {
            path: path.to_string(),
        };
        match self.rpc.call(request).await {
            Ok(Response::Object(o)) => Ok(o.map(|(body, v)| (body, ObjectVersion(v)))),
            Ok(Response::Error(e)) => Err(StateError::Unavailable(e)),
            Ok(other) => Err(state_corrupt(path, other)),
            Err(e) => Err(StateError::Unavailable(e.0)),
        }
    }

    async fn put(
        &self,
        path: &str,
        body: &[u8],
        condition: PutIf,
    ) -> Result<ObjectVersion, PutFailure> {
        let request = Request::ObjectPut {
            path: path.to_string(),
            body: body.to_vec(),
            if_match: match condition {
                PutIf::Absent => None,
                PutIf::Version(v) => Some(v.0),
            },
        };
        match self.rpc.call(request).await {
            Ok(Response::Put(v)) => Ok(ObjectVersion(v)),
            Ok(Response::PutConditionFailed) => Err(PutFailure::ConditionFailed),
            Ok(Response::Error(e)) => Err(PutFailure::Error(StateError::Unavailable(e))),
            Ok(other) => Err(PutFailure::Error(state_corrupt(path, other))),
            // No answer: the put may have landed, or may still land.
            Err(e) => Err(PutFailure::Error(StateError::Unavailable(e.0))),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StateError> {
        let request = Request::ObjectList {
            prefix: prefix.to_string(),
        };
        match self.rpc.call(request).await {
            Ok(Response::Names(names)) => Ok(names),
            Ok(Response::Error(e)) => Err(StateError::Unavailable(e)),
            Ok(other) => Err(state_corrupt(prefix, other)),
            Err(e) => Err(StateError::Unavailable(e.0)),
        }
    }

    async fn delete(&self, path: &str) -> Result<(), StateError> {
        let request = Request::ObjectDelete {
            path: path.to_string(),
        };
        match self.rpc.call(request).await {
            Ok(Response::Deleted) => Ok(()),
            Ok(Response::Error(e)) => Err(StateError::Unavailable(e)),
            Ok(other) => Err(state_corrupt(path, other)),
            Err(e) => Err(StateError::Unavailable(e.0)),
        }
    }

    fn describe(&self) -> String {
        format!("sim://{}:{STORE_PORT}/state", self.rpc.to)
    }
}

/// The lock store client `id` of a run of `cfg` uses through `rpc`: the
/// one of [`lock_store`], wrapped in [`QueueJump`] for client 0 with
/// `--bug queue-jump`.
pub fn client_lock_store(
    rpc: &Rpc,
    cfg: &SimConfig,
    id: usize,
) -> Result<Arc<dyn LockStore>, StoreError> {
    let store = lock_store(rpc, cfg)?;
    if cfg.bug == StateBug::QueueJump && id == 0 {
        return Ok(Arc::new(QueueJump(store)));
    }
    Ok(store)
}

/// The lock store a client (or the operator) of a run of `cfg` uses through
/// `rpc`: the store host itself, or with several store hosts a
/// [`QuorumStore`] over one [`RemoteLockStore`] per store host (each
/// wrapped in [`PerStoreToken`] with `--bug per-store-token`).
pub fn lock_store(rpc: &Rpc, cfg: &SimConfig) -> Result<Arc<dyn LockStore>, StoreError> {
    if !cfg.quorum() {
        return Ok(Arc::new(RemoteLockStore::new(rpc.clone())));
    }
    let members: Vec<Arc<dyn LockStore>> = (0..cfg.stores)
        .map(|i| {
            let member: Arc<dyn LockStore> = Arc::new(RemoteLockStore::new(rpc.to_store(i)));
            if cfg.bug == StateBug::PerStoreToken {
                Arc::new(PerStoreToken(member))
            } else {
                member
            }
        })
        .collect();
    Ok(Arc::new(
        QuorumStore::new(members)?.with_straggler_wait(cfg.timing.straggler_wait),
    ))
}
