//! A fenced state head in DynamoDB (feature `dynamodb`): a small item per lock
//! key that only the current holder of the lock can write.
//!
//! This module stores and checks; it must not decide who holds a lock (the
//! lock item in the lock table does) and must not retry writes whose outcome
//! is unknown (its callers reload and decide).
//!
//! # Where heads live
//! In a *state table* of their own (hash key `lockKey`, S, like the lock table;
//! by convention `<lock table>-state`, see [`default_state_table`]), one item
//! per lock key:
//!
//! | attribute | type | meaning |
//! | --- | --- | --- |
//! | `lockKey` | S | the lock key the state belongs to (hash key) |
//! | `fence` | N | the fencing token of the last accepted writer |
//! | `version` | S | the head's version (32 hex digits, new on every save) |
//! | `body` | B | the document (at most [`MAX_BODY_BYTES`]: a head, a pointer or a small state) |
//! | `savedAtMs` | N | writer's wall clock, unix ms (informational) |
//! | `savedBy` | S | the writer's lease id, when known |
//!
//! A separate table keeps heads out of lock listings, away from the lock
//! table's TTL, and cannot collide with any lock key.
//!
//! # The write
//! Every save is one `TransactWriteItems`:
//! 1. a `ConditionCheck` on the lock item: `lockId = :owner AND token = :token
//!    AND released = false` — the writer is the current holder (with
//!    [`FencedRegister::save`], which has no owner, `token = :token AND released =
//!    false`: tokens are unique per grant, so that is the same grant);
//! 2. a conditional `Put` of the head: `attribute_not_exists(lockKey)` when no
//!    state is expected, else `fence <= :token AND version = :expected`.
//!
//! Both hold or nothing is written. A cancelled transaction maps to
//! [`StateError::Stale`] (the head's fence is above the writer's token — it
//! was taken over), else [`StateError::NotHolder`] (the lock check failed),
//! else [`StateError::VersionMismatch`]. The SDK sends a client request token,
//! so its own retries of a transaction are idempotent.
//!
//! # IAM permissions
//! `dynamodb:ConditionCheckItem` on the lock table; `dynamodb:PutItem` and
//! `dynamodb:GetItem` on the state table (`TransactWriteItems` is authorised
//! per contained action); `CreateTable`/`DescribeTable` for `create_table`.

use super::register::{FencedRegister, StateSnapshot};
use super::{StateError, StateVersion};
use crate::clock::{Clock, SystemClock};
use crate::protocol::{FencingToken, LeaseId, LockKey};
use crate::store::dynamodb::errors::{sdk_error, service_error, split_sdk_error, Failure};
use crate::store::dynamodb::table::{
    attr, ensure_table, n, s, write_once, Expr, Item, ItemReader, Table, TableSetup,
};
use crate::store::dynamodb::DynamoDbStore;
use crate::store::url::LockFormat;
use crate::store::StoreError;
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, ConditionCheck, Put, ReturnValuesOnConditionCheckFailure,
    TransactWriteItem,
};
use aws_sdk_dynamodb::Client;

/// The largest body accepted: DynamoDB items are at most 400 KB.
pub const MAX_BODY_BYTES: usize = 350 * 1024;

const FENCE: &str = "fence";
const VERSION: &str = "version";
const BODY: &str = "body";
const SAVED_AT_MS: &str = "savedAtMs";
const SAVED_BY: &str = "savedBy";

const STATE_SCHEMA_HINT: &str =
    "a statelock state table has the hash key `lockKey` (type S), like the lock table";

/// The conventional state table of lock table `lock_table`: `<lock_table>-state`.
pub fn default_state_table(lock_table: &str) -> String {
    format!("{lock_table}-state")
}

/// Fenced state heads in a DynamoDB table, written only by the current holder
/// of the lock in the lock table (see the module documentation).
#[derive(Clone)]
pub struct DynamoDbStateStore {
    /// The table of heads (its context names it in errors).
    heads: Table,
    lock_table: String,
}

impl std::fmt::Debug for DynamoDbStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoDbStateStore")
            .field("lock_table", &self.lock_table)
            .field("state_table", &self.heads.name)
            .finish_non_exhaustive()
    }
}

fn state_error(e: StoreError) -> StateError {
    match e {
        StoreError::Unavailable(why) => StateError::Unavailable(why),
        StoreError::Corrupt { key, reason } => StateError::Corrupt { key, reason },
        StoreError::Misconfigured(why) => StateError::Misconfigured(why),
        other => StateError::Unavailable(other.to_string()),
    }
}

impl DynamoDbStateStore {
    /// Heads in `state_table`, fenced by the locks in `lock_table`, with a
    /// client configured by the caller.
    pub fn new(
        client: Client,
        lock_table: impl Into<String>,
        state_table: impl Into<String>,
    ) -> Self {
        DynamoDbStateStore {
            heads: Table::new(
                client,
                state_table.into(),
                LockFormat::Statelock,
                STATE_SCHEMA_HINT,
            ),
            lock_table: lock_table.into(),
        }
    }

    /// Heads in `state_table`, fenced by `locks`' table, sharing its client.
    pub fn for_lock_store(locks: &DynamoDbStore, state_table: impl Into<String>) -> Self {
        DynamoDbStateStore::new(locks.client().clone(), locks.table(), state_table)
    }

    /// Like [`DynamoDbStore::connect`]: a client from the default AWS chain,
    /// with optional region and endpoint overrides.
    pub async fn connect(
        lock_table: &str,
        state_table: &str,
        region: Option<&str>,
        endpoint: Option<&str>,
    ) -> Result<Self, StateError> {
        let heads = Table::connect(
            state_table,
            region,
            endpoint,
            LockFormat::Statelock,
            STATE_SCHEMA_HINT,
        )
        .await
        .map_err(state_error)?;
        Ok(DynamoDbStateStore {
            heads,
            lock_table: lock_table.to_string(),
        })
    }

    /// The lock table whose items fence the writes.
    pub fn lock_table(&self) -> &str {
        &self.lock_table
    }

    /// The table holding the heads.
    pub fn state_table(&self) -> &str {
        &self.heads.name
    }

    /// Creates the state table (hash key `lockKey`, S, on-demand, no TTL)
    /// unless it exists with that key schema; waits until it is active.
    pub async fn create_table(&self) -> Result<TableSetup, StateError> {
        ensure_table(
            &self.heads.client,
            &self.heads.name,
            attr::KEY,
            None,
            &self.heads.ctx,
        )
        .await
        .map_err(state_error)
    }

    /// Saves `body` as the head of `key` if lease `owner` holds the lock with
    /// fencing `token` right now (per the lock table), the head's fence is at
    /// most `token`, and its version is `expected` (`None`: no head yet).
    /// Returns the new version; the head's fence becomes `token`.
    pub async fn save_fenced(
        &self,
        key: &LockKey,
        owner: LeaseId,
        token: FencingToken,
        expected: Option<&StateVersion>,
        body: &[u8],
    ) -> Result<StateVersion, StateError> {
        self.save_checked(key, Some(owner), token, expected, body)
            .await
    }

    async fn save_checked(
        &self,
        key: &LockKey,
        owner: Option<LeaseId>,
        token: FencingToken,
        expected: Option<&StateVersion>,
        body: &[u8],
    ) -> Result<StateVersion, StateError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(StateError::Misconfigured(format!(
                "the state of {key} is {} bytes; a DynamoDB head holds at most {MAX_BODY_BYTES}: \
                 keep large documents elsewhere (e.g. S3) and store their pointer and digest here",
                body.len()
            )));
        }
        let version = StateVersion(format!("{:032x}", rand::random::<u128>()));
        let build =
            |e: aws_sdk_dynamodb::error::BuildError| StateError::Misconfigured(e.to_string());

        // 1. The writer holds the lock with this token.
        let mut lock = Expr::default();
        let mut checks = vec![
            format!("{} = {}", lock.n(attr::TOKEN), lock.v("token", n(token.0))),
            format!(
                "{} = {}",
                lock.n(attr::RELEASED),
                lock.v("no", AttributeValue::Bool(false))
            ),
        ];
        if let Some(owner) = owner {
            checks.insert(
                0,
                format!(
                    "{} = {}",
                    lock.n(attr::OWNER),
                    lock.v("owner", s(owner.to_string()))
                ),
            );
        }
        let check = ConditionCheck::builder()
            .table_name(&self.lock_table)
            .key(attr::KEY, s(key.as_str()))
            .condition_expression(checks.join(" AND "))
            .set_expression_attribute_names(lock.names())
            .set_expression_attribute_values(Some(lock.values))
            .build()
            .map_err(build)?;

        // 2. The head is the one the writer read, and not fenced above it.
        let mut head = Expr::default();
        let condition = match expected {
            None => format!("attribute_not_exists({})", head.n(attr::KEY)),
            Some(v) => format!(
                "{} <= {} AND {} = {}",
                head.n(FENCE),
                head.v("token", n(token.0)),
                head.n(VERSION),
                head.v("expected", s(v.0.clone()))
            ),
        };
        let mut put = Put::builder()
            .table_name(&self.heads.name)
            .item(attr::KEY, s(key.as_str()))
            .item(FENCE, n(token.0))
            .item(VERSION, s(version.0.clone()))
            .item(BODY, AttributeValue::B(Blob::new(body)))
            .item(SAVED_AT_MS, n(SystemClock::new().wall().as_millis()))
            .condition_expression(condition)
            .set_expression_attribute_names(head.names())
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if !head.values.is_empty() {
            put = put.set_expression_attribute_values(Some(head.values));
        }
        if let Some(owner) = owner {
            put = put.item(SAVED_BY, s(owner.to_string()));
        }
        let put = put.build().map_err(build)?;

        let result = self
            .heads
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().condition_check(check).build())
            .transact_items(TransactWriteItem::builder().put(put).build())
            .customize()
            .config_override(write_once())
            .send()
            .await;
        match result {
            Ok(_) => Ok(version),
            Err(err) => match split_sdk_error(err, &self.heads.ctx) {
                Failure::Service(TransactWriteItemsError::TransactionCanceledException(tce), _) => {
                    Err(self
                        .cancelled(key, token, expected, tce.cancellation_reasons())
                        .await)
                }
                Failure::Service(other, status) => Err(state_error(
                    self.transaction_error(service_error(&other, status, &self.heads.ctx)),
                )),
                Failure::Store(e) => Err(state_error(e)),
            },
        }
    }

    /// Names both tables when one of them is missing.
    fn transaction_error(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Misconfigured(why) if why.contains("does not exist") => {
                StoreError::Misconfigured(format!(
                    "the lock table {:?} or the state table {:?} does not exist: create them with \
                     `statelock --store dynamodb://{} dynamodb create-table --state-table {}`",
                    self.lock_table, self.heads.name, self.lock_table, self.heads.name
                ))
            }
            other => other,
        }
    }

    /// Why a transaction was cancelled, from its per-item reasons.
    async fn cancelled(
        &self,
        key: &LockKey,
        token: FencingToken,
        expected: Option<&StateVersion>,
        reasons: &[CancellationReason],
    ) -> StateError {
        let failed = |r: Option<&CancellationReason>| {
            r.and_then(CancellationReason::code) == Some("ConditionalCheckFailed")
        };
        let (lock_reason, head_reason) = (reasons.first(), reasons.get(1));
        let lock_failed = failed(lock_reason);
        let head_failed = failed(head_reason);
        if !lock_failed && !head_failed {
            let codes: Vec<&str> = reasons
                .iter()
                .filter_map(CancellationReason::code)
                .collect();
            let busy = codes.iter().any(|c| {
                matches!(
                    *c,
                    "TransactionConflict" | "ThrottlingError" | "ProvisionedThroughputExceeded"
                )
            });
            return if busy || codes.iter().all(|c| *c == "None") {
                StateError::Unavailable(format!("the state write was cancelled ({codes:?}); retry"))
            } else {
                StateError::Misconfigured(format!(
                    "DynamoDB cancelled the state write for {key}: {codes:?} ({})",
                    reasons
                        .iter()
                        .filter_map(CancellationReason::message)
                        .collect::<Vec<_>>()
                        .join("; ")
                ))
            };
        }
        // The head as it is, from the same response where DynamoDB returned it.
        let current = if head_failed {
            match head_reason.and_then(CancellationReason::item) {
                Some(item) => match snapshot_from_item(item) {
                    Ok(snapshot) => Some(snapshot),
                    Err(e) => return state_error(e),
                },
                None => match self.load(key).await {
                    Ok(snapshot) => snapshot,
                    Err(e) => return e,
                },
            }
        } else {
            None
        };
        match current {
            Some(cur) if cur.fence > token => StateError::Stale {
                fence: cur.fence,
                token,
            },
            _ if lock_failed => StateError::NotHolder,
            current => StateError::VersionMismatch {
                expected: expected.cloned(),
                found: current.map(|c| c.version),
            },
        }
    }
}

/// Parses a head item.
fn snapshot_from_item(item: &Item) -> Result<StateSnapshot, StoreError> {
    let r = ItemReader::new(item, attr::KEY);
    let body = match item.get(BODY) {
        Some(AttributeValue::B(b)) => b.as_ref().to_vec(),
        Some(other) => {
            return Err(r.corrupt(format!("attribute \"body\" should be binary, is {other:?}")))
        }
        None => return Err(r.corrupt("attribute \"body\" is missing")),
    };
    Ok(StateSnapshot {
        version: StateVersion(r.string(VERSION)?.to_string()),
        fence: FencingToken(r.number(FENCE)?),
        body,
    })
}

#[async_trait]
impl FencedRegister for DynamoDbStateStore {
    async fn load(&self, key: &LockKey) -> Result<Option<StateSnapshot>, StateError> {
        let out = self
            .heads
            .client
            .get_item()
            .table_name(&self.heads.name)
            .key(attr::KEY, s(key.as_str()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| state_error(sdk_error(e, &self.heads.ctx)))?;
        out.item()
            .map(snapshot_from_item)
            .transpose()
            .map_err(state_error)
    }

    /// Saves if the grant with fencing `token` still holds the lock (any
    /// owner: tokens are unique per grant); otherwise as
    /// [`DynamoDbStateStore::save_fenced`].
    async fn save(
        &self,
        key: &LockKey,
        token: FencingToken,
        expected: Option<&StateVersion>,
        body: &[u8],
    ) -> Result<StateVersion, StateError> {
        self.save_checked(key, None, token, expected, body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_or_are_corrupt() {
        let mut item = Item::new();
        item.insert(attr::KEY.into(), s("k"));
        item.insert(FENCE.into(), n(7));
        item.insert(VERSION.into(), s("v"));
        item.insert(BODY.into(), AttributeValue::B(Blob::new(b"doc".to_vec())));
        let snap = snapshot_from_item(&item).unwrap();
        assert_eq!(
            (snap.fence, snap.version.0.as_str(), snap.body.as_slice()),
            (FencingToken(7), "v", &b"doc"[..])
        );
        for (name, value) in [(FENCE, s("7")), (BODY, s("doc")), (VERSION, n(1))] {
            let mut bad = item.clone();
            bad.insert(name.into(), value);
            assert!(
                matches!(snapshot_from_item(&bad), Err(StoreError::Corrupt { .. })),
                "{name}"
            );
        }
        assert_eq!(default_state_table("locks"), "locks-state");
    }
}
