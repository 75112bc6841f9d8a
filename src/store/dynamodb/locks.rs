//! The DynamoDB lock store (feature `dynamodb`): one item per key in a table
//! whose hash key is `lockKey` (S), each [`LockOp`] performed as exactly one
//! conditional `UpdateItem`.
//!
//! This module converts between lock records and items (SDK errors are
//! mapped by `errors.rs`, requests built with `table.rs`). It must not make
//! protocol decisions: the conditions it sends are those of
//! [`LockOp::condition_holds`], and the record it returns is the one DynamoDB
//! wrote (`ReturnValues=ALL_NEW`), equal to [`LockOp::apply`] of the previous
//! record. A failed condition returns the current item from the
//! same response (`ReturnValuesOnConditionCheckFailure=ALL_OLD`): no extra read.
//! (Only when an answer carries no item — on DynamoDB that means there is no
//! record; emulators before DynamoDB Local 2.2 never send one — is the record
//! read back with a consistent `GetItem`.)
//!
//! The item schema and the IAM permissions the store needs are documented
//! on [`DynamoDbStore`].

use super::errors::{sdk_error, service_error, split_sdk_error, Failure};
use super::table::{
    attr, ensure_table, n, s, scan_all, write_once, Expr, Item, ItemReader, Table, TableSetup,
};
use crate::protocol::{
    Dequeue, FencingToken, GrantFrom, HolderInfo, LeaseId, LockKey, LockOp, LockRecord, OpKind,
    RecordVersion, WallTime,
};
use crate::store::url::LockFormat;
use crate::store::{purge_reference, DamagedRecord, Listing, LockStore, StoreError};
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, ConditionCheck, ReturnValue,
    ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use std::collections::HashMap;

/// The hash key of the item holding the store's token floor.
pub const FLOOR_KEY: &str = "\u{1}statelock:token-floor";

/// The number attribute of the token floor item.
const FLOOR_ATTR: &str = "floor";

/// Metadata keys holding `HolderInfo`'s typed fields.
const META_OPERATION: &str = "operation";
const META_HOST: &str = "host";
const META_PID: &str = "pid";
/// Prefix of holder metadata whose key would collide with the typed fields.
const META_ESCAPE: &str = "meta:";

const KEY_SCHEMA_HINT: &str = "a statelock lock table has the hash key `lockKey` (type S)";

/// A lock store over a DynamoDB table (hash key `lockKey`, type S).
///
/// Cheap to clone (the SDK client is reference-counted).
///
/// # Item schema
/// | attribute | type | meaning |
/// | --- | --- | --- |
/// | `lockKey` | S | the lock key (hash key) |
/// | `lockId` | S | the lease id (UUID) that holds or last held the lock |
/// | `lockedBy` | S | who holds it (`HolderInfo::locked_by`) |
/// | `metadata` | M of S | `operation`, `host`, `pid` and the holder's other metadata |
/// | `token` | N | the fencing token of the current (or last) grant |
/// | `rvn` | S | the record version, 32 hex digits, new on every write |
/// | `leaseMs` | N | the lease the holder promised to renew within |
/// | `released` | BOOL | true when nobody holds the lock |
/// | `lockedAt` / `lockedAtMs` | N | grant time (writer's wall clock), unix s / ms |
/// | `lastHeartbeat` / `lastHeartbeatMs` | N | time of the last write, unix s / ms |
/// | `forcedBy` | S | who forced the last release, when it was forced |
/// | `queue` | L of S | the waiters registered for the key, in arrival order (lease ids; absent when none) |
///
/// Wall-clock attributes are informational: no condition ever compares them.
///
/// No item carries a TTL attribute: DynamoDB TTL deletes items by the
/// writer's *wall clock*, and a deleted record would restart its key's tokens.
/// Every write removes the `expiresAt` attribute that older versions set on
/// released records, so a table whose TTL is still enabled on it never loses
/// a record statelock wrote since. Long-released records are removed only by
/// [`LockStore::purge`], which first raises the token floor: the item
/// `lockKey = "\u{1}statelock:token-floor"` with a number attribute `floor`
/// (the key contains a control character, so no lock key can collide with it;
/// listings skip it).
///
/// Metadata keys `operation`, `host` and `pid` hold the holder's fields of
/// those names; holder metadata whose key collides with them (or starts with
/// `meta:`) is stored as `meta:<key>`, so every record round-trips exactly.
///
/// Items that lack an attribute or carry a mistyped one are reported as
/// [`StoreError::Corrupt`]. No write makes a damaged item lose what matters:
/// takeover and force-unlock (which act on a version another writer wrote)
/// also require the whole item to be well-formed; an acquire requires a
/// released record whose `token` is a number in range and rewrites every
/// other attribute (so it repairs the rest); heartbeat and release are pinned
/// to the holder's lease id and the 128-bit version it wrote itself.
///
/// # IAM permissions
/// `dynamodb:GetItem`, `dynamodb:UpdateItem`, `dynamodb:Scan` on the table;
/// [`DynamoDbStore::create_table`] also needs `dynamodb:CreateTable`,
/// `dynamodb:DescribeTable`, `dynamodb:DescribeTimeToLive` and
/// `dynamodb:UpdateTimeToLive`.
#[derive(Clone, Debug)]
pub struct DynamoDbStore {
    t: Table,
}

impl DynamoDbStore {
    /// A store over `table`, using an SDK client configured by the caller
    /// (region, credentials, endpoint, timeouts and read retries are theirs;
    /// writes are always sent once, see [`DynamoDbStore::connect`]).
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoDbStore {
            t: Table::new(client, table.into(), LockFormat::Statelock, KEY_SCHEMA_HINT),
        }
    }

    /// A store over `table` with a client built from the default AWS
    /// configuration chain (environment, profile, SSO, IMDS, ...), optionally
    /// overriding the region and the endpoint (e.g. DynamoDB Local). The client
    /// fails fast on a dead endpoint ([`CONNECT_TIMEOUT`], [`ATTEMPT_TIMEOUT`],
    /// [`OPERATION_TIMEOUT`]); the SDK resends reads ([`READ_ATTEMPTS`]) but
    /// never a write, whatever the client's retry configuration: retrying
    /// writes is the lock client's. Nothing is sent until the first operation.
    ///
    /// [`CONNECT_TIMEOUT`]: crate::store::dynamodb::CONNECT_TIMEOUT
    /// [`ATTEMPT_TIMEOUT`]: crate::store::dynamodb::ATTEMPT_TIMEOUT
    /// [`OPERATION_TIMEOUT`]: crate::store::dynamodb::OPERATION_TIMEOUT
    /// [`READ_ATTEMPTS`]: crate::store::dynamodb::READ_ATTEMPTS
    pub async fn connect(
        table: &str,
        region: Option<&str>,
        endpoint: Option<&str>,
    ) -> Result<Self, StoreError> {
        let t = Table::connect(
            table,
            region,
            endpoint,
            LockFormat::Statelock,
            KEY_SCHEMA_HINT,
        );
        Ok(DynamoDbStore { t: t.await? })
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.t.name
    }

    /// The SDK client (shared with the DynamoDB state store).
    pub(crate) fn client(&self) -> &Client {
        &self.t.client
    }

    /// Creates the lock table if it does not exist: on-demand billing, hash
    /// key `lockKey` (S), no TTL; waits until it is active. Idempotent: an
    /// existing table with this key schema is accepted (its settings are left
    /// as they are); a table with another key schema is a
    /// [`StoreError::Misconfigured`] error.
    pub async fn create_table(&self) -> Result<TableSetup, StoreError> {
        ensure_table(&self.t.client, &self.t.name, attr::KEY, None, &self.t.ctx).await
    }

    async fn update(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
        if let OpKind::Acquire {
            from: GrantFrom::Absent { floor },
            ..
        } = &op.kind
        {
            return self.grant_absent(op, *floor).await;
        }
        if let OpKind::ForceUnlock { observed, .. } = &op.kind {
            // An operator's rare override reads the record first, so a
            // damaged one (which no condition expression can fully
            // recognise, e.g. a token of 1.5) is reported, never rewritten.
            match self.get(&op.key).await? {
                Some(current) if current.rvn == *observed => {}
                current => return Err(StoreError::conflict(current)),
            }
        }
        let mut e = Expr::default();
        let (update, condition) = build_update(&mut e, op);
        let result = self
            .t
            .client
            .update_item()
            .table_name(&self.t.name)
            .key(attr::KEY, s(op.key.as_str()))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(e.names())
            .set_expression_attribute_values(Some(e.values))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .customize()
            .config_override(write_once())
            .send()
            .await;
        match result {
            Ok(out) => match out.attributes() {
                Some(item) => record_from_item(item),
                None => Err(StoreError::Unavailable(format!(
                    "DynamoDB returned no attributes for the {} of {:?}",
                    op.kind.name(),
                    op.key.as_str()
                ))),
            },
            Err(err) => match split_sdk_error(err, &self.t.ctx) {
                Failure::Service(UpdateItemError::ConditionalCheckFailedException(ccf), _) => {
                    // A resend whose first attempt landed (the client resends
                    // after a timeout) conflicts with its own write; the
                    // client recognises it by its record version.
                    let current = match ccf.item() {
                        Some(item) => Some(record_from_item(item)?),
                        // DynamoDB returns the old item whenever one exists;
                        // older emulators never do. Read it (on DynamoDB: the
                        // item is absent, so only rare ops pay this read).
                        None => self.get(&op.key).await?,
                    };
                    Err(StoreError::conflict(current))
                }
                Failure::Service(other, status) => Err(service_error(&other, status, &self.t.ctx)),
                Failure::Store(e) => Err(e),
            },
        }
    }
}

impl DynamoDbStore {
    /// A grant on an absent record: one transaction of a condition check on
    /// the token floor item (still the floor the acquirer read) and the
    /// conditional creation of the record. Rare: a key's first grant, or its
    /// first after a purge.
    async fn grant_absent(
        &self,
        op: &LockOp,
        floor: FencingToken,
    ) -> Result<LockRecord, StoreError> {
        let mut e = Expr::default();
        let (update, condition) = build_update(&mut e, op);
        let update = Update::builder()
            .table_name(&self.t.name)
            .key(attr::KEY, s(op.key.as_str()))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(e.names())
            .set_expression_attribute_values(Some(e.values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(|e| StoreError::Misconfigured(e.to_string()))?;
        let mut f = Expr::default();
        let floor_condition = if floor == FencingToken(0) {
            format!(
                "attribute_not_exists({}) OR {} = {}",
                f.n(attr::KEY),
                f.n(FLOOR_ATTR),
                f.v("floor", n(floor.0))
            )
        } else {
            format!("{} = {}", f.n(FLOOR_ATTR), f.v("floor", n(floor.0)))
        };
        let check = ConditionCheck::builder()
            .table_name(&self.t.name)
            .key(attr::KEY, s(FLOOR_KEY))
            .condition_expression(floor_condition)
            .set_expression_attribute_names(f.names())
            .set_expression_attribute_values(Some(f.values))
            .build()
            .map_err(|e| StoreError::Misconfigured(e.to_string()))?;
        let result = self
            .t
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().condition_check(check).build())
            .transact_items(TransactWriteItem::builder().update(update).build())
            .customize()
            .config_override(write_once())
            .send()
            .await;
        match result {
            // The transaction returns no item: read back what it wrote.
            Ok(_) => match self.get(&op.key).await? {
                Some(record) if op.is_own_write(&record) => Ok(record),
                other => Err(StoreError::Unavailable(format!(
                    "the grant of {:?} was accepted but the record reads back as {other:?}",
                    op.key.as_str()
                ))),
            },
            Err(err) => match split_sdk_error(err, &self.t.ctx) {
                Failure::Service(TransactWriteItemsError::TransactionCanceledException(tce), _) => {
                    let reasons = tce.cancellation_reasons();
                    let failed = |i: usize| {
                        reasons.get(i).and_then(CancellationReason::code)
                            == Some("ConditionalCheckFailed")
                    };
                    if failed(1) {
                        let current = match reasons.get(1).and_then(CancellationReason::item) {
                            Some(item) => Some(record_from_item(item)?),
                            None => self.get(&op.key).await?,
                        };
                        Err(StoreError::conflict(current))
                    } else if failed(0) {
                        // The floor moved (a purge): the acquirer reads again.
                        Err(StoreError::conflict(None))
                    } else {
                        let codes: Vec<&str> = reasons
                            .iter()
                            .filter_map(CancellationReason::code)
                            .collect();
                        Err(StoreError::Unavailable(format!(
                            "DynamoDB cancelled the grant of {:?} ({codes:?}); retry",
                            op.key.as_str()
                        )))
                    }
                }
                Failure::Service(other, status) => Err(service_error(&other, status, &self.t.ctx)),
                Failure::Store(e) => Err(e),
            },
        }
    }

    async fn read_floor(&self) -> Result<FencingToken, StoreError> {
        let out = self
            .t
            .client
            .get_item()
            .table_name(&self.t.name)
            .key(attr::KEY, s(FLOOR_KEY))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error(e, &self.t.ctx))?;
        match out.item() {
            None => Ok(FencingToken(0)),
            Some(item) => Ok(FencingToken(
                ItemReader::new(item, attr::KEY).number(FLOOR_ATTR)?,
            )),
        }
    }

    async fn raise_floor(&self, to: FencingToken) -> Result<(), StoreError> {
        let mut e = Expr::default();
        let set = e.assign(FLOOR_ATTR, "to", n(to.0));
        let condition = format!(
            "attribute_not_exists({}) OR {} < {}",
            e.n(attr::KEY),
            e.n(FLOOR_ATTR),
            e.v("to", n(to.0))
        );
        let result = self
            .t
            .client
            .update_item()
            .table_name(&self.t.name)
            .key(attr::KEY, s(FLOOR_KEY))
            .update_expression(format!("SET {set}"))
            .condition_expression(condition)
            .set_expression_attribute_names(e.names())
            .set_expression_attribute_values(Some(e.values))
            .customize()
            .config_override(write_once())
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) => match split_sdk_error(err, &self.t.ctx) {
                // Already at least that high.
                Failure::Service(UpdateItemError::ConditionalCheckFailedException(_), _) => Ok(()),
                Failure::Service(other, status) => Err(service_error(&other, status, &self.t.ctx)),
                Failure::Store(e) => Err(e),
            },
        }
    }

    async fn delete_released(
        &self,
        key: &LockKey,
        observed: RecordVersion,
    ) -> Result<(), StoreError> {
        let mut e = Expr::default();
        let condition = format!(
            "{} = {} AND {} = {}",
            e.n(attr::RVN),
            e.v("observed", s(observed.to_string())),
            e.n(attr::RELEASED),
            e.v("yes", AttributeValue::Bool(true))
        );
        let result = self
            .t
            .client
            .delete_item()
            .table_name(&self.t.name)
            .key(attr::KEY, s(key.as_str()))
            .condition_expression(condition)
            .set_expression_attribute_names(e.names())
            .set_expression_attribute_values(Some(e.values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .customize()
            .config_override(write_once())
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) => match split_sdk_error(err, &self.t.ctx) {
                Failure::Service(DeleteItemError::ConditionalCheckFailedException(ccf), _) => {
                    let current = match ccf.item() {
                        Some(item) => Some(record_from_item(item)?),
                        None => self.get(key).await?,
                    };
                    Err(StoreError::conflict(current))
                }
                Failure::Service(other, status) => Err(service_error(&other, status, &self.t.ctx)),
                Failure::Store(e) => Err(e),
            },
        }
    }
}

#[async_trait]
impl LockStore for DynamoDbStore {
    async fn apply(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
        self.update(op).await
    }

    async fn get(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError> {
        let out = self
            .t
            .client
            .get_item()
            .table_name(&self.t.name)
            .key(attr::KEY, s(key.as_str()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error(e, &self.t.ctx))?;
        out.item().map(record_from_item).transpose()
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        let items = scan_all(&self.t.client, &self.t.name, &self.t.ctx).await?;
        let mut listing = Listing::default();
        for item in &items {
            if matches!(item.get(attr::KEY), Some(AttributeValue::S(k)) if k == FLOOR_KEY) {
                continue;
            }
            match record_from_item(item) {
                Ok(record) => listing.records.push(record),
                Err(StoreError::Corrupt { key, reason }) => {
                    listing.damaged.push(DamagedRecord { key, reason })
                }
                Err(e) => return Err(e),
            }
        }
        listing.records.sort_by(|a, b| a.key.cmp(&b.key));
        listing.damaged.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listing)
    }

    async fn token_floor(&self) -> Result<FencingToken, StoreError> {
        self.read_floor().await
    }

    async fn purge(
        &self,
        key: &LockKey,
        observed: RecordVersion,
    ) -> Result<LockRecord, StoreError> {
        let current = self.get(key).await?;
        let purged = purge_reference(current.as_ref(), observed)?;
        self.raise_floor(purged.token).await?;
        self.delete_released(key, observed).await?;
        Ok(purged)
    }

    fn describe(&self) -> String {
        self.t.ctx.url()
    }
    fn shared_name(&self) -> Option<String> {
        Some(self.describe())
    }
    fn queues(&self) -> bool {
        true
    }
}

// ---------------------------------------------------------------------------
// Requests

/// The item's structure is that of a lock record (every attribute present
/// with its type, a non-negative token, a 32-character rvn and a 36-character
/// lease id). Required by the rare writes that act on a version somebody else
/// wrote (takeover, force-unlock), so they never land on a damaged item.
fn well_formed(e: &mut Expr) -> String {
    let typed = [
        (attr::OWNER, "S"),
        (attr::TOKEN, "N"),
        (attr::RVN, "S"),
        (attr::LEASE_MS, "N"),
        (attr::RELEASED, "BOOL"),
        (attr::LOCKED_BY, "S"),
        (attr::METADATA, "M"),
        (attr::LOCKED_AT_MS, "N"),
        (attr::HEARTBEAT_MS, "N"),
    ];
    let mut parts: Vec<String> = typed
        .iter()
        .map(|(a, t)| {
            let name = e.n(a);
            let ty = e.v(&format!("type{t}"), s(*t));
            format!("attribute_type({name}, {ty})")
        })
        .collect();
    let (token, zero) = (e.n(attr::TOKEN), e.v("zero", n(0)));
    parts.push(format!("{token} >= {zero}"));
    let (rvn, len) = (e.n(attr::RVN), e.v("rvnLen", n(32)));
    parts.push(format!("size({rvn}) = {len}"));
    let (owner, len) = (e.n(attr::OWNER), e.v("uuidLen", n(36)));
    parts.push(format!("size({owner}) = {len}"));
    parts.join(" AND ")
}

/// `SET` clauses installing the new version and recording the write time.
fn touch(e: &mut Expr, op: &LockOp) -> Vec<String> {
    vec![
        e.assign(attr::RVN, "newRvn", s(op.new_rvn.to_string())),
        e.assign(attr::HEARTBEAT, "atS", n(op.at.as_secs())),
        e.assign(attr::HEARTBEAT_MS, "atMs", n(op.at.as_millis())),
    ]
}

/// The update and condition expressions of `op` (PROTOCOL.md, "Operations").
/// Every write removes `expiresAt` (see [`DynamoDbStore`]: no TTL).
fn build_update(e: &mut Expr, op: &LockOp) -> (String, String) {
    let mut set = touch(e, op);
    let mut remove = vec![e.n(attr::EXPIRES_AT)];
    let condition = match &op.kind {
        OpKind::Acquire {
            owner,
            lease_ms,
            holder,
            ..
        }
        | OpKind::Takeover {
            owner,
            lease_ms,
            holder,
            ..
        } => {
            // The op carries the token it installs: the one after the token
            // of the version it names (or after the floor, when absent).
            let new_token = op.granted_token().map_or(u64::MAX, |t| t.0);
            set.extend([
                e.assign(attr::OWNER, "owner", s(owner.to_string())),
                e.assign(attr::TOKEN, "newToken", n(new_token)),
                e.assign(attr::LEASE_MS, "leaseMs", n(*lease_ms)),
                e.assign(attr::RELEASED, "no", AttributeValue::Bool(false)),
                e.assign(attr::LOCKED_BY, "lockedBy", s(&holder.locked_by)),
                e.assign(attr::METADATA, "metadata", metadata_to_attr(holder)),
                e.assign(attr::LOCKED_AT, "atS", n(op.at.as_secs())),
                e.assign(attr::LOCKED_AT_MS, "atMs", n(op.at.as_millis())),
            ]);
            remove.push(e.n(attr::FORCED_BY));
            let (OpKind::Acquire { dequeue: d, .. } | OpKind::Takeover { dequeue: d, .. }) =
                &op.kind
            else {
                return (String::new(), String::new());
            };
            let acquire = matches!(op.kind, OpKind::Acquire { .. });
            let (dequeue_condition, dequeued) = dequeue(e, *owner, d, acquire);
            remove.extend(dequeued);
            let grant_condition = match &op.kind {
                OpKind::Takeover {
                    observed, token, ..
                } => {
                    let (rvn, tok) = (e.n(attr::RVN), e.n(attr::TOKEN));
                    let observed = e.v("observed", s(observed.to_string()));
                    let token = e.v("token", n(token.0));
                    let wf = well_formed(e);
                    format!("{rvn} = {observed} AND {tok} = {token} AND {wf}")
                }
                OpKind::Acquire {
                    from: GrantFrom::Version { rvn: v, token },
                    ..
                } => {
                    // Pinned to the released version the acquirer read (a
                    // 128-bit value a statelock writer chose) and its token;
                    // every other attribute is rewritten.
                    let (rvn, tok, released) =
                        (e.n(attr::RVN), e.n(attr::TOKEN), e.n(attr::RELEASED));
                    let observed = e.v("observed", s(v.to_string()));
                    let token = e.v("token", n(token.0));
                    let yes = e.v("yes", AttributeValue::Bool(true));
                    format!("{rvn} = {observed} AND {tok} = {token} AND {released} = {yes}")
                }
                // Absent: the record must not exist (the floor is checked in
                // the same transaction, see `grant_absent`).
                _ => format!("attribute_not_exists({})", e.n(attr::KEY)),
            };
            format!("{grant_condition} AND {dequeue_condition}")
        }
        OpKind::Heartbeat { owner, current }
        | OpKind::Release { owner, current }
        | OpKind::Rebase { owner, current, .. } => {
            if matches!(op.kind, OpKind::Release { .. }) {
                set.push(e.assign(attr::RELEASED, "yes", AttributeValue::Bool(true)));
            }
            let mut upwards = String::new();
            if let OpKind::Rebase { token, .. } = &op.kind {
                // Only upwards; the token is replaced, the rest kept.
                set.push(e.assign(attr::TOKEN, "newToken", n(token.0)));
                let (tok, new) = (e.n(attr::TOKEN), e.v("newToken", n(token.0)));
                upwards = format!(" AND {tok} < {new}");
            }
            let (owner_attr, rvn, released) =
                (e.n(attr::OWNER), e.n(attr::RVN), e.n(attr::RELEASED));
            let me = e.v("me", s(owner.to_string()));
            let current = e.v("current", s(current.to_string()));
            let no = e.v("no", AttributeValue::Bool(false));
            // The holder's own lease id and the 128-bit version it wrote pin
            // the item to the record it wrote, so it needs no structure
            // check (an item edited by hand that kept both is still reported
            // as corrupt when the answer is parsed).
            format!("{owner_attr} = {me} AND {rvn} = {current} AND {released} = {no}{upwards}")
        }
        OpKind::ForceUnlock { observed, by } => {
            set.push(e.assign(attr::RELEASED, "yes", AttributeValue::Bool(true)));
            set.push(e.assign(attr::FORCED_BY, "forcedBy", s(by)));
            let rvn = e.n(attr::RVN);
            let observed = e.v("observed", s(observed.to_string()));
            let wf = well_formed(e);
            format!("{rvn} = {observed} AND {wf}")
        }
        // The queue's writes change nothing but the queue.
        OpKind::Enqueue { waiter } => {
            *e = Expr::default();
            return enqueue(e, *waiter);
        }
        OpKind::Leave { waiter, at } => {
            *e = Expr::default();
            return leave(e, *waiter, *at);
        }
    };
    let update = format!("SET {} REMOVE {}", set.join(", "), remove.join(", "));
    (update, condition)
}

/// The condition a grant puts on the queue, and the entries it removes
/// (`REMOVE` paths), as [`crate::protocol::Dequeue`] defines them.
fn dequeue(e: &mut Expr, owner: LeaseId, d: &Dequeue, acquire: bool) -> (String, Vec<String>) {
    let queue = e.n(attr::QUEUE);
    let me = e.v("queueMe", s(owner.to_string()));
    let mut parts = Vec::new();
    let mut removed = Vec::new();
    match d.me_at {
        Some(i) => {
            parts.push(format!("{queue}[{i}] = {me}"));
            removed.push(format!("{queue}[{i}]"));
        }
        None => parts.push(format!(
            "(attribute_not_exists({queue}) OR NOT contains({queue}, {me}))"
        )),
    }
    if let Some(head) = d.skip {
        if head == owner {
            // Never holds (a grantee cannot skip itself): a condition that
            // no item satisfies.
            parts.push(format!("attribute_not_exists({})", e.n(attr::KEY)));
        }
        let head = e.v("queueSkip", s(head.to_string()));
        let released = e.n(attr::RELEASED);
        let yes = e.v("skipReleased", AttributeValue::Bool(true));
        parts.push(format!("{queue}[0] = {head} AND {released} = {yes}"));
        removed.push(format!("{queue}[0]"));
    }
    if !acquire && d.skip.is_none() && d.me_at != Some(0) {
        // A released record with a queue is taken out of turn only by
        // naming the head it skips.
        let released = e.n(attr::RELEASED);
        let no = e.v("takeHeld", AttributeValue::Bool(false));
        let zero = e.v("queueEmpty", n(0));
        parts.push(format!(
            "({released} = {no} OR attribute_not_exists({queue}) OR size({queue}) = {zero})"
        ));
    }
    if acquire && d.me_at != Some(0) {
        let zero = e.v("queueEmpty", n(0));
        parts.push(format!(
            "(attribute_not_exists({queue}) OR size({queue}) = {zero})"
        ));
    }
    (parts.join(" AND "), removed)
}

/// An enqueue's update and condition: appends `waiter` to the queue of an
/// existing record that does not have it and has room.
fn enqueue(e: &mut Expr, waiter: LeaseId) -> (String, String) {
    let queue = e.n(attr::QUEUE);
    let key = e.n(attr::KEY);
    let me = e.v("queueMe", s(waiter.to_string()));
    let one = e.v(
        "queueAppend",
        AttributeValue::L(vec![s(waiter.to_string())]),
    );
    let empty = e.v("queueNone", AttributeValue::L(Vec::new()));
    let max = e.v("queueMax", n(LockRecord::MAX_QUEUE));
    (
        format!("SET {queue} = list_append(if_not_exists({queue}, {empty}), {one})"),
        format!(
            "attribute_exists({key}) AND (attribute_not_exists({queue}) OR \
             (NOT contains({queue}, {me}) AND size({queue}) < {max}))"
        ),
    )
}

/// A leave's update and condition: removes the queue's entry `at`, which
/// must be `waiter`.
fn leave(e: &mut Expr, waiter: LeaseId, at: u32) -> (String, String) {
    let queue = e.n(attr::QUEUE);
    let me = e.v("queueMe", s(waiter.to_string()));
    (
        format!("REMOVE {queue}[{at}]"),
        format!("{queue}[{at}] = {me}"),
    )
}

// ---------------------------------------------------------------------------
// Items <-> records

fn metadata_to_attr(holder: &HolderInfo) -> AttributeValue {
    let mut map = HashMap::new();
    if let Some(op) = &holder.operation {
        map.insert(META_OPERATION.to_string(), s(op));
    }
    if let Some(host) = &holder.host {
        map.insert(META_HOST.to_string(), s(host));
    }
    if let Some(pid) = holder.pid {
        map.insert(META_PID.to_string(), s(pid.to_string()));
    }
    for (k, v) in &holder.metadata {
        let reserved = [META_OPERATION, META_HOST, META_PID].contains(&k.as_str())
            || k.starts_with(META_ESCAPE);
        let stored = if reserved {
            format!("{META_ESCAPE}{k}")
        } else {
            k.clone()
        };
        map.insert(stored, s(v));
    }
    AttributeValue::M(map)
}

/// Parses a lock item; anything missing or mistyped is [`StoreError::Corrupt`].
pub(crate) fn record_from_item(item: &Item) -> Result<LockRecord, StoreError> {
    let r = ItemReader::new(item, attr::KEY);
    let key = LockKey::new(r.string(attr::KEY)?)
        .map_err(|e| r.corrupt(format!("the key is not a valid lock key: {e}")))?;
    let owner = r.string(attr::OWNER)?;
    let owner = uuid::Uuid::parse_str(owner)
        .map(LeaseId)
        .map_err(|_| r.corrupt(format!("lockId {owner:?} is not a UUID")))?;
    let rvn: RecordVersion = r
        .string(attr::RVN)?
        .parse()
        .map_err(|e| r.corrupt(format!("rvn: {e}")))?;
    let mut holder = HolderInfo::named(r.string(attr::LOCKED_BY)?);
    for (k, v) in r.map(attr::METADATA)? {
        let AttributeValue::S(v) = v else {
            return Err(r.corrupt(format!("metadata {k:?} should be a string, is {v:?}")));
        };
        match k.as_str() {
            META_OPERATION => holder.operation = Some(v.clone()),
            META_HOST => holder.host = Some(v.clone()),
            META_PID => {
                holder.pid =
                    Some(v.parse().map_err(|_| {
                        r.corrupt(format!("metadata pid {v:?} is not a process id"))
                    })?)
            }
            _ => {
                let k = k.strip_prefix(META_ESCAPE).unwrap_or(k);
                holder.metadata.insert(k.to_string(), v.clone());
            }
        }
    }
    Ok(LockRecord {
        key,
        owner,
        token: FencingToken(r.number(attr::TOKEN)?),
        rvn,
        lease_ms: r.number(attr::LEASE_MS)?,
        released: r.boolean(attr::RELEASED)?,
        holder,
        acquired_at: WallTime(r.number(attr::LOCKED_AT_MS)?),
        heartbeat_at: WallTime(r.number(attr::HEARTBEAT_MS)?),
        forced_by: r.opt_string(attr::FORCED_BY)?.map(str::to_string),
        queue: queue_from_attr(&r)?,
    })
}

/// The queue attribute: absent is empty; anything but a list of lease ids is
/// [`StoreError::Corrupt`].
fn queue_from_attr(r: &ItemReader<'_>) -> Result<Vec<LeaseId>, StoreError> {
    match r.item.get(attr::QUEUE) {
        None | Some(AttributeValue::Null(true)) => Ok(Vec::new()),
        Some(AttributeValue::L(entries)) => entries
            .iter()
            .map(|entry| match entry {
                AttributeValue::S(id) => uuid::Uuid::parse_str(id)
                    .map(LeaseId)
                    .map_err(|_| r.corrupt(format!("queue entry {id:?} is not a UUID"))),
                other => Err(r.corrupt(format!("queue entry {other:?} is not a string"))),
            })
            .collect(),
        Some(other) => Err(r.corrupt(format!(
            "attribute \"queue\" should be a list, is {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn record(holder: HolderInfo) -> LockRecord {
        LockRecord {
            key: LockKey::new("stack:a:env:b").unwrap(),
            owner: LeaseId(uuid::Uuid::from_u128(7)),
            token: FencingToken(42),
            rvn: RecordVersion(0xabc),
            lease_ms: 20_000,
            released: false,
            holder,
            acquired_at: WallTime(1_705_329_600_123),
            heartbeat_at: WallTime(1_705_329_601_456),
            forced_by: Some("ops".into()),
            queue: vec![
                LeaseId(uuid::Uuid::from_u128(8)),
                LeaseId(uuid::Uuid::from_u128(9)),
            ],
        }
    }

    fn item_of(r: &LockRecord) -> Item {
        let mut item = HashMap::new();
        item.insert(attr::KEY.into(), s(r.key.as_str()));
        item.insert(attr::OWNER.into(), s(r.owner.to_string()));
        item.insert(attr::TOKEN.into(), n(r.token.0));
        item.insert(attr::RVN.into(), s(r.rvn.to_string()));
        item.insert(attr::LEASE_MS.into(), n(r.lease_ms));
        item.insert(attr::RELEASED.into(), AttributeValue::Bool(r.released));
        item.insert(attr::LOCKED_BY.into(), s(&r.holder.locked_by));
        item.insert(attr::METADATA.into(), metadata_to_attr(&r.holder));
        item.insert(attr::LOCKED_AT_MS.into(), n(r.acquired_at.0));
        item.insert(attr::HEARTBEAT_MS.into(), n(r.heartbeat_at.0));
        if let Some(f) = &r.forced_by {
            item.insert(attr::FORCED_BY.into(), s(f));
        }
        if !r.queue.is_empty() {
            let ids = r.queue.iter().map(|w| s(w.to_string())).collect();
            item.insert(attr::QUEUE.into(), AttributeValue::L(ids));
        }
        item
    }

    #[test]
    fn items_round_trip_including_colliding_metadata() {
        let mut holder = HolderInfo::named("ci-run-1");
        holder.operation = Some("apply".into());
        holder.host = Some("runner".into());
        holder.pid = Some(4242);
        holder.metadata = BTreeMap::from([
            ("git_commit".to_string(), "a1b2".to_string()),
            ("host".to_string(), "user-supplied".to_string()),
            ("meta:x".to_string(), "y".to_string()),
        ]);
        let r = record(holder);
        assert_eq!(record_from_item(&item_of(&r)).unwrap(), r);
        let plain = record(HolderInfo::named(""));
        assert_eq!(record_from_item(&item_of(&plain)).unwrap(), plain);
    }

    #[test]
    fn damaged_items_are_corrupt_not_panics() {
        let good = item_of(&record(HolderInfo::named("x")));
        let cases: Vec<(&str, Option<AttributeValue>)> = vec![
            (attr::OWNER, None),
            (attr::OWNER, Some(s("not-a-uuid"))),
            (attr::TOKEN, Some(s("1"))),
            (attr::TOKEN, Some(n("-1"))),
            (attr::TOKEN, Some(n("1.5"))),
            (attr::RVN, Some(s("xyz"))),
            (attr::RELEASED, Some(s("false"))),
            (attr::METADATA, Some(s("{}"))),
            (
                attr::METADATA,
                Some(AttributeValue::M(HashMap::from([("pid".into(), s("abc"))]))),
            ),
            (attr::LEASE_MS, None),
            (attr::HEARTBEAT_MS, Some(n("1e400"))),
            (attr::KEY, Some(s(""))),
            (attr::QUEUE, Some(s("[]"))),
            (attr::QUEUE, Some(AttributeValue::L(vec![s("not-a-uuid")]))),
            (attr::QUEUE, Some(AttributeValue::L(vec![n(1)]))),
        ];
        for (name, value) in cases {
            let mut item = good.clone();
            match value.clone() {
                Some(v) => item.insert(name.to_string(), v),
                None => item.remove(name),
            };
            assert!(
                matches!(record_from_item(&item), Err(StoreError::Corrupt { .. })),
                "{name} = {value:?}"
            );
        }
    }

    #[test]
    fn expressions_only_register_what_they_use() {
        let key = LockKey::new("k").unwrap();
        let owner = LeaseId(uuid::Uuid::from_u128(1));
        let kinds = [
            OpKind::Acquire {
                from: GrantFrom::Version {
                    rvn: RecordVersion(1),
                    token: FencingToken(1),
                },
                owner,
                lease_ms: 1000,
                holder: HolderInfo::named("me"),
                at_least: FencingToken::NONE,
                dequeue: Default::default(),
            },
            OpKind::Acquire {
                from: GrantFrom::Absent {
                    floor: FencingToken(0),
                },
                owner,
                lease_ms: 1000,
                holder: HolderInfo::named("me"),
                at_least: FencingToken::NONE,
                dequeue: Default::default(),
            },
            OpKind::Takeover {
                observed: RecordVersion(1),
                token: FencingToken(1),
                owner,
                lease_ms: 1000,
                holder: HolderInfo::named("me"),
                at_least: FencingToken::NONE,
                dequeue: Default::default(),
            },
            OpKind::Heartbeat {
                owner,
                current: RecordVersion(1),
            },
            OpKind::Release {
                owner,
                current: RecordVersion(1),
            },
            OpKind::ForceUnlock {
                observed: RecordVersion(1),
                by: "ops".into(),
            },
            OpKind::Takeover {
                observed: RecordVersion(1),
                token: FencingToken(1),
                owner,
                lease_ms: 1000,
                holder: HolderInfo::named("me"),
                at_least: FencingToken::NONE,
                dequeue: Dequeue {
                    me_at: Some(2),
                    skip: Some(LeaseId(uuid::Uuid::from_u128(3))),
                },
            },
            OpKind::Acquire {
                from: GrantFrom::Version {
                    rvn: RecordVersion(1),
                    token: FencingToken(1),
                },
                owner,
                lease_ms: 1000,
                holder: HolderInfo::named("me"),
                at_least: FencingToken::NONE,
                dequeue: Dequeue {
                    me_at: Some(0),
                    skip: None,
                },
            },
            OpKind::Enqueue { waiter: owner },
            OpKind::Leave {
                waiter: owner,
                at: 1,
            },
        ];
        for kind in kinds {
            let op = LockOp {
                key: key.clone(),
                new_rvn: RecordVersion(2),
                at: WallTime(5),
                kind,
            };
            let mut e = Expr::default();
            let (update, condition) = build_update(&mut e, &op);
            let text = format!("{update} {condition}");
            for name in e.names.keys().chain(e.values.keys()) {
                let used = text.match_indices(name.as_str()).any(|(i, _)| {
                    !text[i + name.len()..].starts_with(|c: char| c.is_alphanumeric())
                });
                assert!(used, "{name} unused in {text}");
            }
        }
    }
}
