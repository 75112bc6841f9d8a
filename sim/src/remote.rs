//! The client side of the store host's protocol: [`RemoteLockStore`] and
//! [`RemoteStateStore`] implement the library's store traits over simulated
//! TCP, so the code under test is the production `LockClient`.
//!
//! Every request has a deadline. A request that gets no answer in time (lost
//! or held message, partition, crashed store) maps to `Unavailable`: for a
//! write, the outcome is unknown — it may have landed, or may still land.
//!
//! Connections are kept for reuse, one request at a time each. A connection
//! whose request failed or timed out is dropped, never reused, so a late
//! answer can never be taken for the answer to another request.

use crate::history::{Actor, Recorder, What};
use crate::wire::{read_frame, write_frame, Envelope, Request, Response, STORE_HOST, STORE_PORT};
use async_trait::async_trait;
use statelock::protocol::{FencingToken, LockKey, LockOp, LockRecord, RecordVersion};
use statelock::state::register::{FencedRegister, StateSnapshot};
use statelock::state::{StateError, StateVersion};
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

/// One host's connection settings to the store host.
#[derive(Debug, Clone)]
pub struct Rpc {
    from: String,
    actor: Actor,
    timeout: Duration,
    recorder: Recorder,
    idle: Arc<Mutex<Vec<TcpStream>>>,
}

impl Rpc {
    /// Requests from host `from` (recorded as `actor`) with this deadline.
    pub fn new(
        from: impl Into<String>,
        actor: Actor,
        timeout: Duration,
        recorder: Recorder,
    ) -> Self {
        Rpc {
            from: from.into(),
            actor,
            timeout,
            recorder,
            idle: Arc::default(),
        }
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

    /// Sends `request` on a fresh connection and waits for the answer.
    pub async fn call(&self, request: Request) -> Result<Response, RpcError> {
        let name = request.name();
        let envelope = Envelope {
            from: self.from.clone(),
            request,
        };
        let reused = self.take_idle();
        let result = match tokio::time::timeout(self.timeout, exchange(reused, &envelope)).await {
            Ok(Ok((stream, response))) => {
                self.put_idle(stream);
                Ok(response)
            }
            Ok(Err(e)) => Err(RpcError(format!("connection error: {e}"))),
            Err(_) => Err(RpcError(format!(
                "no answer within {}ms",
                self.timeout.as_millis()
            ))),
        };
        if let Err(e) = &result {
            self.recorder.record(
                self.actor,
                What::RpcFailed {
                    request: name,
                    error: e.0.clone(),
                },
            );
        }
        result
    }
}

async fn exchange(
    reused: Option<TcpStream>,
    envelope: &Envelope,
) -> std::io::Result<(TcpStream, Response)> {
    let mut stream = match reused {
        Some(s) => s,
        None => TcpStream::connect((STORE_HOST, STORE_PORT)).await?,
    };
    write_frame(&mut stream, envelope).await?;
    let response = read_frame(&mut stream).await?;
    Ok((stream, response))
}

fn unexpected(r: Response) -> String {
    format!("unexpected answer from the store: {r:?}")
}

/// A [`LockStore`] on the store host.
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
        format!("sim://{STORE_HOST}:{STORE_PORT}")
    }
}

/// A [`FencedRegister`] on the store host.
#[derive(Debug, Clone)]
pub struct RemoteStateStore {
    rpc: Rpc,
}

impl RemoteStateStore {
    /// A store reached through `rpc`.
    pub fn new(rpc: Rpc) -> Self {
        RemoteStateStore { rpc }
    }
}

#[async_trait]
impl FencedRegister for RemoteStateStore {
    async fn load(&self, key: &LockKey) -> Result<Option<StateSnapshot>, StateError> {
        match self.rpc.call(Request::Load(key.clone())).await {
            Ok(Response::State(s)) => Ok(s.map(Into::into)),
            Ok(other) => Err(StateError::Corrupt {
                key: key.to_string(),
                reason: unexpected(other),
            }),
            Err(e) => Err(StateError::Unavailable(e.0)),
        }
    }

    async fn save(
        &self,
        key: &LockKey,
        token: FencingToken,
        expected: Option<&StateVersion>,
        body: &[u8],
    ) -> Result<StateVersion, StateError> {
        let request = Request::Save {
            key: key.clone(),
            token,
            expected: expected.cloned(),
            body: body.to_vec(),
        };
        match self.rpc.call(request).await {
            Ok(Response::Saved(v)) => Ok(v),
            Ok(Response::SaveRejected(e)) => Err(e.into()),
            Ok(other) => Err(StateError::Corrupt {
                key: key.to_string(),
                reason: unexpected(other),
            }),
            Err(e) => Err(StateError::Unavailable(e.0)),
        }
    }
}
