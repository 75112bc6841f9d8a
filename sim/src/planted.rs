//! Planted bugs (`--bug`), for the sweeps that must catch them: a save that
//! writes the document through the backend itself, with weaker rules than
//! the production `FencedStore::save` — only the version read, and (for
//! `no-seal`) the fence raised when the save lands instead of by a seal
//! before it; a quorum member that ignores the quorum's token
//! ([`PerStoreToken`]); and a client that ignores the hand-off queue
//! ([`QueueJump`]).
//!
//! Nothing here runs unless a bug is asked for; the production path never
//! calls it.

use async_trait::async_trait;
use statelock::protocol::{
    Dequeue, FencingToken, GrantFrom, LockKey, LockOp, LockRecord, OpKind, RecordVersion, WallTime,
};
use statelock::state::backend::{PutFailure, PutIf, StateBackend};
use statelock::state::layout::StatePaths;
use statelock::state::{Stamp, StateDocument, StateError, StateVersion, Writer};
use statelock::store::{Listing, LockStore, StoreError};
use std::sync::Arc;

/// How the buggy save treats the fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceRule {
    /// A save lands if the writer's token is at least the fence (the design
    /// before the seal: the fence moves only when a save lands).
    AtWrite,
    /// The fence is not looked at.
    Ignored,
}

/// Saves `doc` for `writer` over the version it read (`based_on`; `None`: no
/// state yet), checking only `rule` and the version, and stamps it with the
/// writer's token and the next serial. `write_id` must be new for each call.
pub async fn buggy_save<B: StateBackend + ?Sized>(
    backend: &B,
    writer: &Writer,
    based_on: Option<&StateVersion>,
    mut doc: StateDocument,
    rule: FenceRule,
    write_id: u128,
) -> Result<StateVersion, StateError> {
    let key = &writer.key;
    let path = StatePaths::of(key).state();
    let current = backend.get(&path).await?;
    let current_stamp = current
        .as_ref()
        .and_then(|(bytes, _)| StateDocument::from_json(bytes).ok())
        .and_then(|d| d.statelock);
    if rule == FenceRule::AtWrite {
        if let Some(stamp) = current_stamp {
            if stamp.fence > writer.token {
                return Err(StateError::Stale {
                    fence: stamp.fence,
                    token: writer.token,
                });
            }
        }
    }
    let found = current.as_ref().map(|(_, v)| StateVersion(v.0.clone()));
    if found.as_ref() != based_on {
        return Err(StateError::VersionMismatch {
            expected: based_on.cloned(),
            found,
        });
    }
    doc.statelock = Some(Stamp {
        fence: writer.token,
        lease: writer.lease,
        serial: current_stamp.map_or(0, |s| s.serial) + 1,
        write_id,
        written_at: WallTime(0),
    });
    doc.update_checksums()
        .map_err(|e| StateError::Misconfigured(format!("{key}: {e}")))?;
    let bytes = doc
        .to_json()
        .map_err(|e| StateError::Misconfigured(format!("{key}: {e}")))?;
    let condition = match &current {
        None => PutIf::Absent,
        Some((_, v)) => PutIf::Version(v.clone()),
    };
    match backend.put(&path, &bytes, condition).await {
        Ok(v) => Ok(StateVersion(v.0)),
        Err(PutFailure::ConditionFailed) => Err(StateError::VersionMismatch {
            expected: based_on.cloned(),
            found: None,
        }),
        Err(PutFailure::Error(e)) => Err(e),
    }
}

/// `--bug per-store-token`: a quorum member whose grants lose their
/// `at_least` before they are sent, so the member installs its own next
/// token instead of the quorum's (the quorum store itself is unchanged;
/// every member of every client is wrapped).
#[derive(Debug)]
pub struct PerStoreToken(pub Arc<dyn LockStore>);

#[async_trait]
impl LockStore for PerStoreToken {
    async fn apply(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
        let mut op = op.clone();
        if let OpKind::Acquire { at_least, .. } | OpKind::Takeover { at_least, .. } = &mut op.kind {
            *at_least = FencingToken::NONE;
        }
        self.0.apply(&op).await
    }

    async fn get(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError> {
        self.0.get(key).await
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        self.0.list().await
    }

    async fn token_floor(&self) -> Result<FencingToken, StoreError> {
        self.0.token_floor().await
    }

    async fn purge(
        &self,
        key: &LockKey,
        observed: RecordVersion,
    ) -> Result<LockRecord, StoreError> {
        self.0.purge(key, observed).await
    }

    fn describe(&self) -> String {
        self.0.describe()
    }
}

/// `--bug queue-jump`: the lock store of one client that ignores the
/// hand-off queue. Its client is shown every record without its queue and is
/// told the store keeps none, so it never registers and takes any released
/// record it sees as its own turn; an acquire the store refuses for the turn
/// alone (the record is still the one it read, released, with another
/// waiter first) is sent again at once as a takeover that skips the queue's
/// head — a write the store accepts, as it cannot tell whether the head left
/// the record untaken for a whole lease. The production client is unchanged.
#[derive(Debug)]
pub struct QueueJump(pub Arc<dyn LockStore>);

/// `record` as a client that ignores the queue sees it.
fn without_queue(mut record: LockRecord) -> LockRecord {
    record.queue.clear();
    record
}

fn hide_queue(result: Result<LockRecord, StoreError>) -> Result<LockRecord, StoreError> {
    match result {
        Ok(record) => Ok(without_queue(record)),
        Err(StoreError::Conflict { current }) => {
            Err(StoreError::conflict(current.map(|r| without_queue(*r))))
        }
        Err(other) => Err(other),
    }
}

/// The takeover that jumps the queue of `current` for `op`, an acquire the
/// store refused: `None` unless `current` is the very record the acquire
/// named, released, and another waiter heads its queue.
fn skip_the_head(op: &LockOp, current: &LockRecord) -> Option<LockOp> {
    let OpKind::Acquire {
        from: GrantFrom::Version { rvn, token },
        owner,
        lease_ms,
        holder,
        at_least,
        ..
    } = &op.kind
    else {
        return None;
    };
    let head = current.queue_head()?;
    let refused_for_the_turn =
        current.rvn == *rvn && current.token == *token && current.released && head != *owner;
    refused_for_the_turn.then(|| LockOp {
        kind: OpKind::Takeover {
            observed: *rvn,
            token: *token,
            owner: *owner,
            lease_ms: *lease_ms,
            holder: holder.clone(),
            at_least: *at_least,
            dequeue: Dequeue {
                me_at: current
                    .queue_position(*owner)
                    .and_then(|i| u32::try_from(i).ok()),
                skip: Some(head),
            },
        },
        ..op.clone()
    })
}

#[async_trait]
impl LockStore for QueueJump {
    async fn apply(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
        let result = self.0.apply(op).await;
        if let Err(StoreError::Conflict {
            current: Some(current),
        }) = &result
        {
            if let Some(jump) = skip_the_head(op, current) {
                return hide_queue(self.0.apply(&jump).await);
            }
        }
        hide_queue(result)
    }

    async fn get(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError> {
        Ok(self.0.get(key).await?.map(without_queue))
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        self.0.list().await
    }

    async fn token_floor(&self) -> Result<FencingToken, StoreError> {
        self.0.token_floor().await
    }

    async fn purge(
        &self,
        key: &LockKey,
        observed: RecordVersion,
    ) -> Result<LockRecord, StoreError> {
        self.0.purge(key, observed).await
    }

    fn describe(&self) -> String {
        self.0.describe()
    }

    /// Its client never registers.
    fn queues(&self) -> bool {
        false
    }
}
