//! The store host's request/response protocol: one JSON document per frame,
//! each frame a big-endian `u32` length then the bytes. One connection carries
//! one request and its response.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use statelock::protocol::{FencingToken, LockKey, LockOp, LockRecord, RecordVersion};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The (first) store host's name in the simulated network.
pub const STORE_HOST: &str = "store";

/// The name of store host `i`: `store` for the first (it also serves the
/// state objects), then `store1`, `store2`, ...
pub fn store_host(i: usize) -> String {
    if i == 0 {
        STORE_HOST.to_string()
    } else {
        format!("{STORE_HOST}{i}")
    }
}
/// The port it listens on.
pub const STORE_PORT: u16 = 7000;
/// The host name of client `i`.
pub fn client_host(i: usize) -> String {
    format!("c{i}")
}

/// The operator's host name.
pub const OPERATOR_HOST: &str = "operator";

/// Largest frame accepted.
pub const MAX_FRAME: u32 = 1 << 20;

/// A request with its sender's name (for the trace only; never for decisions).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender's host name.
    pub from: String,
    /// The request.
    pub request: Request,
}

/// What a client asks the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// `LockStore::apply`.
    Apply(LockOp),
    /// `LockStore::get`.
    Get(LockKey),
    /// `LockStore::list`.
    List,
    /// `LockStore::token_floor`.
    Floor,
    /// `LockStore::purge`.
    Purge {
        /// The key.
        key: LockKey,
        /// The released version to delete.
        observed: RecordVersion,
    },
    /// `StateBackend::get`.
    ObjectGet {
        /// The object's name.
        path: String,
    },
    /// `StateBackend::put`.
    ObjectPut {
        /// The object's name.
        path: String,
        /// Its new bytes.
        body: Vec<u8>,
        /// `None`: only if absent; `Some(v)`: only if still at version `v`.
        if_match: Option<String>,
    },
    /// `StateBackend::list`.
    ObjectList {
        /// The names' prefix.
        prefix: String,
    },
    /// `StateBackend::delete`.
    ObjectDelete {
        /// The object's name.
        path: String,
    },
    /// Naive: put the lock if absent or `expires_at < now_ms`.
    NaiveAcquire {
        /// The key.
        key: String,
        /// The client's lock id.
        lock_id: u64,
        /// The CLIENT'S wall clock, ms.
        now_ms: i64,
        /// The lease, ms.
        lease_ms: u64,
    },
    /// Naive: if the lock id matches, `expires_at = now_ms + lease_ms`.
    NaiveHeartbeat {
        /// The key.
        key: String,
        /// The client's lock id.
        lock_id: u64,
        /// The CLIENT'S wall clock, ms.
        now_ms: i64,
        /// The lease, ms.
        lease_ms: u64,
    },
    /// Naive: delete the lock if the lock id matches.
    NaiveRelease {
        /// The key.
        key: String,
        /// The client's lock id.
        lock_id: u64,
    },
    /// Naive: read the state.
    NaiveLoad {
        /// The key.
        key: String,
    },
    /// Naive: write the state unconditionally. `generation` and `based_on`
    /// are recorded for the checkers only.
    NaiveSave {
        /// The key.
        key: String,
        /// The grant counter the writer got (audit only).
        generation: u64,
        /// The version the writer read (audit only).
        based_on: Option<String>,
        /// The document.
        body: Vec<u8>,
    },
}

impl Request {
    /// A short name for traces.
    pub fn name(&self) -> String {
        match self {
            Request::Apply(op) => format!("apply({} {})", op.kind.name(), op.key),
            Request::Get(k) => format!("get({k})"),
            Request::List => "list".into(),
            Request::Floor => "token-floor".into(),
            Request::Purge { key, .. } => format!("purge({key})"),
            Request::ObjectGet { path } => format!("get({path})"),
            Request::ObjectPut { path, if_match, .. } => match if_match {
                Some(v) => format!("put({path} if-match {v})"),
                None => format!("put({path} if-none-match)"),
            },
            Request::ObjectList { prefix } => format!("list({prefix})"),
            Request::ObjectDelete { path } => format!("delete({path})"),
            Request::NaiveAcquire { key, .. } => format!("naive-acquire({key})"),
            Request::NaiveHeartbeat { key, .. } => format!("naive-heartbeat({key})"),
            Request::NaiveRelease { key, .. } => format!("naive-release({key})"),
            Request::NaiveLoad { key } => format!("naive-load({key})"),
            Request::NaiveSave {
                key, generation, ..
            } => format!("naive-save({key} gen {generation})"),
        }
    }
}

/// A naive lock record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NaiveLock {
    /// Holder's lock id.
    pub lock_id: u64,
    /// Expiry by the wall clock of whoever last wrote it, ms.
    pub expires_at: i64,
    /// The store's grant counter for the key (audit only).
    pub generation: u64,
}

/// What the store answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// The lock write landed; the record written.
    Applied(LockRecord),
    /// The lock write's condition failed; the current record.
    Conflict(Option<LockRecord>),
    /// A record read.
    Record(Option<LockRecord>),
    /// Every record.
    Records(Vec<LockRecord>),
    /// The token floor.
    Floor(FencingToken),
    /// The purged record.
    Purged(LockRecord),
    /// An object read: its bytes and version (`None`: absent).
    Object(Option<(Vec<u8>, String)>),
    /// An object written; its new version.
    Put(String),
    /// An object's write condition did not hold; nothing was written.
    PutConditionFailed,
    /// Object names.
    Names(Vec<String>),
    /// An object deleted (or absent).
    Deleted,
    /// Naive: the lock (after the write, or as found on a failed condition).
    NaiveLock {
        /// True if the write landed.
        applied: bool,
        /// The record (`None`: absent).
        lock: Option<NaiveLock>,
    },
    /// Naive: the state read (version, body).
    NaiveState(Option<(String, Vec<u8>)>),
    /// Naive: the state written; its version.
    NaiveSaved(String),
    /// The store could not serve the request.
    Error(String),
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    value: &T,
) -> io::Result<()> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).await?;
    w.flush().await
}

/// Reads one frame.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(r: &mut R) -> io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let sent = Envelope {
            from: "c1".into(),
            request: Request::NaiveLoad { key: "k".into() },
        };
        write_frame(&mut a, &sent).await.unwrap();
        let got: Envelope = read_frame(&mut b).await.unwrap();
        assert_eq!(got.from, "c1");
        assert!(matches!(got.request, Request::NaiveLoad { key } if key == "k"));
    }
}
