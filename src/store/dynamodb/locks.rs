//! The DynamoDB lock store (feature `dynamodb`): one item per key in a table
//! whose hash key is `lockKey` (S), each [`LockOp`] performed as exactly one
//! conditional `UpdateItem`.
//!
//! This module converts between lock records and items and between SDK errors
//! and [`StoreError`]s. It must not make protocol decisions: the conditions it
//! sends are those of [`LockOp::condition_holds`], and the record it returns is
//! the one DynamoDB wrote (`ReturnValues=ALL_NEW`), equal to [`LockOp::apply`]
//! of the previous record. A failed condition returns the current item from the
//! same response (`ReturnValuesOnConditionCheckFailure=ALL_OLD`): no extra read.
//! (Only when an answer carries no item — on DynamoDB that means there is no
//! record; emulators before DynamoDB Local 2.2 never send one — is the record
//! read back with a consistent `GetItem`.)
//!
//! # Item schema
//! | attribute | type | meaning |
//! | --- | --- | --- |
//! | `lockKey` | S | the lock key (hash key) |
//! | `lockId` | S | the lease id (UUID) that holds or last held the lock |
//! | `lockedBy` | S | who holds it (`HolderInfo::locked_by`) |
//! | `metadata` | M of S | `operation`, `host`, `pid` and the holder's other metadata |
//! | `token` | N | the fencing token of the current (or last) grant |
//! | `rvn` | S | the record version, 32 hex digits, new on every write |
//! | `leaseMs` | N | the lease the holder promised to renew within |
//! | `released` | BOOL | true when nobody holds the lock |
//! | `lockedAt` / `lockedAtMs` | N | grant time (writer's wall clock), unix s / ms |
//! | `lastHeartbeat` / `lastHeartbeatMs` | N | time of the last write, unix s / ms |
//! | `forcedBy` | S | who forced the last release, when it was forced |
//!
//! Wall-clock attributes are informational: no condition ever compares them.
//!
//! No item carries a TTL attribute: DynamoDB TTL deletes items by the
//! writer's *wall clock*, and a deleted record would restart its key's tokens.
//! Every write removes the `expiresAt` attribute that older versions set on
//! released records, so a table whose TTL is still enabled on it never loses
//! a record statelock wrote since. Long-released records are removed only by
//! [`LockStore::purge`], which first raises the token floor: the item
//! `lockKey = "\u{1}statelock:token-floor"` with a number attribute `floor`
//! (the key contains a control character, so no lock key can collide with it;
//! listings skip it).
//!
//! Metadata keys `operation`, `host` and `pid` hold the holder's fields of
//! those names; holder metadata whose key collides with them (or starts with
//! `meta:`) is stored as `meta:<key>`, so every record round-trips exactly.
//!
//! Items that lack an attribute or carry a mistyped one are reported as
//! [`StoreError::Corrupt`]. No write makes a damaged item lose what matters:
//! takeover and force-unlock (which act on a version another writer wrote)
//! also require the whole item to be well-formed; an acquire requires a
//! released record whose `token` is a number in range and rewrites every
//! other attribute (so it repairs the rest); heartbeat and release are pinned
//! to the holder's lease id and the 128-bit version it wrote itself.
//!
//! # Timeouts, retries and errors
//! A client from [`DynamoDbStore::connect`] gives up on a connection after
//! [`CONNECT_TIMEOUT`] (3 s), on one request after [`ATTEMPT_TIMEOUT`]
//! (5 s) and on a whole operation, retries included, after
//! [`OPERATION_TIMEOUT`] (12 s). The SDK resends reads up to
//! [`READ_ATTEMPTS`] times in all; it never resends a write (the lock
//! client does, and recognises its own landed write). A client passed to
//! [`DynamoDbStore::new`] keeps its own timeouts, but writes are still sent
//! once.
//!
//! Every error is one line naming what failed, the endpoint or table, and
//! the cause in a few words; it never shows the SDK's debug output, the
//! userinfo of an endpoint URL (`http://***@host`) or anything that looks
//! like an access key, a secret key or a session token. Whether retrying can
//! help decides the variant: connection refused or reset, timeouts,
//! throttling and 5xx answers are [`StoreError::Unavailable`] (retryable); a
//! TLS mismatch (`https://` to an http port), an endpoint that is not a
//! usable URL or whose host does not exist, missing or rejected
//! credentials, a missing table, access denied and invalid requests are
//! [`StoreError::Misconfigured`], on which callers fail at once.
//!
//! # IAM permissions
//! `dynamodb:GetItem`, `dynamodb:UpdateItem`, `dynamodb:Scan` on the table;
//! [`DynamoDbStore::create_table`] also needs `dynamodb:CreateTable`,
//! `dynamodb:DescribeTable`, `dynamodb:DescribeTimeToLive` and
//! `dynamodb:UpdateTimeToLive`.

use crate::store::url::{LockFormat, StoreUrl};
use crate::store::{purge_reference, DamagedRecord, Listing, LockStore, StoreError};
use crate::protocol::{
    FencingToken, GrantFrom, HolderInfo, LeaseId, LockKey, LockOp, LockRecord, OpKind,
    RecordVersion, WallTime,
};
use async_trait::async_trait;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, CancellationReason, ConditionCheck,
    KeySchemaElement, KeyType, ReturnValue, ReturnValuesOnConditionCheckFailure,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification, TimeToLiveStatus, TransactWriteItem,
    Update,
};
use aws_sdk_dynamodb::Client;
use std::collections::HashMap;
use std::time::Duration;

/// The hash key of the item holding the store's token floor.
pub const FLOOR_KEY: &str = "\u{1}statelock:token-floor";

/// The number attribute of the token floor item.
const FLOOR_ATTR: &str = "floor";

/// Connect timeout of [`DynamoDbStore::connect`]'s client: 3 s. A
/// connection to DynamoDB (TLS included) takes milliseconds; a host that
/// drops packets is reported as unavailable after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Per-attempt timeout of [`DynamoDbStore::connect`]'s client: 5 s, far
/// above DynamoDB's latency, so only a request that will not be answered
/// hits it (a write is then of unknown outcome; the lock client resends it).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-operation timeout (all attempts) of [`DynamoDbStore::connect`]'s
/// client: 12 s, which bounds a read's [`READ_ATTEMPTS`].
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(12);

/// An item as the SDK represents it.
pub(crate) type Item = HashMap<String, AttributeValue>;

/// Attribute names of a statelock lock item.
pub(crate) mod attr {
    pub const KEY: &str = "lockKey";
    pub const OWNER: &str = "lockId";
    pub const LOCKED_BY: &str = "lockedBy";
    pub const METADATA: &str = "metadata";
    pub const TOKEN: &str = "token";
    pub const RVN: &str = "rvn";
    pub const LEASE_MS: &str = "leaseMs";
    pub const RELEASED: &str = "released";
    pub const LOCKED_AT: &str = "lockedAt";
    pub const LOCKED_AT_MS: &str = "lockedAtMs";
    pub const HEARTBEAT: &str = "lastHeartbeat";
    pub const HEARTBEAT_MS: &str = "lastHeartbeatMs";
    /// Set by older versions on released records for DynamoDB TTL; every
    /// write now removes it.
    pub const EXPIRES_AT: &str = "expiresAt";
    pub const FORCED_BY: &str = "forcedBy";
}

/// Metadata keys holding `HolderInfo`'s typed fields.
const META_OPERATION: &str = "operation";
const META_HOST: &str = "host";
const META_PID: &str = "pid";
/// Prefix of holder metadata whose key would collide with the typed fields.
const META_ESCAPE: &str = "meta:";

/// What [`DynamoDbStore::create_table`] (and its siblings) found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableSetup {
    /// The table was created (and is now active).
    Created,
    /// A table with the right key schema already existed; nothing was changed
    /// except enabling TTL where it was off.
    AlreadyExisted,
}

/// A DynamoDB table reached through one SDK client, with what its errors
/// name: the part every DynamoDB store (locks, Terraform locks, state heads)
/// shares. Cheap to clone (the SDK client is reference-counted).
#[derive(Clone)]
pub(crate) struct Table {
    pub(crate) client: Client,
    pub(crate) name: String,
    pub(crate) ctx: ErrorContext,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.ctx.url())
    }
}

impl Table {
    /// `name` reached through a caller-configured `client`.
    pub(crate) fn new(
        client: Client,
        name: String,
        format: LockFormat,
        schema_hint: &'static str,
    ) -> Self {
        Table {
            ctx: ErrorContext::new(&name, format, schema_hint),
            client,
            name,
        }
    }

    /// `name` reached through a client from [`load_client`]; errors name the
    /// region and endpoint overrides.
    pub(crate) async fn connect(
        name: &str,
        region: Option<&str>,
        endpoint: Option<&str>,
        format: LockFormat,
        schema_hint: &'static str,
    ) -> Result<Self, StoreError> {
        let client = load_client(region, endpoint).await?;
        let mut table = Table::new(client, name.to_string(), format, schema_hint);
        table.ctx.region = region.map(str::to_string);
        table.ctx.set_endpoint(endpoint);
        Ok(table)
    }
}

/// A lock store over a DynamoDB table (hash key `lockKey`, type S).
///
/// Cheap to clone (the SDK client is reference-counted). See the module
/// documentation for the item schema and the IAM permissions it needs.
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
}

/// Opens the DynamoDB store named by `url` (either format). Used by
/// [`crate::store::open_lock_store`].
pub(crate) async fn open(url: &StoreUrl) -> Result<std::sync::Arc<dyn LockStore>, StoreError> {
    match url {
        StoreUrl::DynamoDb {
            table,
            region,
            endpoint,
            format: LockFormat::Statelock,
        } => Ok(std::sync::Arc::new(
            DynamoDbStore::connect(table, region.as_deref(), endpoint.as_deref()).await?,
        )),
        StoreUrl::DynamoDb {
            table,
            region,
            endpoint,
            format: LockFormat::Terraform,
        } => Ok(std::sync::Arc::new(
            super::terraform::TerraformDynamoStore::connect(
                table,
                region.as_deref(),
                endpoint.as_deref(),
            )
            .await?,
        )),
        other => Err(StoreError::Misconfigured(format!(
            "{other:?} is not a DynamoDB store URL"
        ))),
    }
}

/// Creates the lock table named by a `dynamodb://` URL with the key schema of
/// its format (`lockKey` for statelock's own records, no TTL;
/// `LockID` for `format=terraform`, as Terraform's S3 backend expects).
/// Idempotent; see [`DynamoDbStore::create_table`].
pub async fn create_table_for_url(url: &StoreUrl) -> Result<TableSetup, StoreError> {
    match url {
        StoreUrl::DynamoDb {
            table,
            region,
            endpoint,
            format: LockFormat::Statelock,
        } => {
            DynamoDbStore::connect(table, region.as_deref(), endpoint.as_deref())
                .await?
                .create_table()
                .await
        }
        StoreUrl::DynamoDb {
            table,
            region,
            endpoint,
            format: LockFormat::Terraform,
        } => {
            super::terraform::TerraformDynamoStore::connect(
                table,
                region.as_deref(),
                endpoint.as_deref(),
            )
            .await?
            .create_table()
            .await
        }
        other => Err(StoreError::Misconfigured(format!(
            "only dynamodb:// stores have a table to create, not {other:?}"
        ))),
    }
}

// ---------------------------------------------------------------------------
// Requests

/// Expression attribute names and values, registered as they are used (DynamoDB
/// rejects unused ones).
#[derive(Default)]
pub(crate) struct Expr {
    pub(crate) names: HashMap<String, String>,
    pub(crate) values: HashMap<String, AttributeValue>,
}

/// Lock attribute names that are not DynamoDB reserved words: expressions
/// name them directly (every placeholder costs the server parsing time; the
/// DynamoDB Local tests send every one of them). `token` is reserved.
const PLAIN_NAMES: [&str; 13] = [
    attr::KEY,
    attr::OWNER,
    attr::LOCKED_BY,
    attr::METADATA,
    attr::RVN,
    attr::LEASE_MS,
    attr::RELEASED,
    attr::LOCKED_AT,
    attr::LOCKED_AT_MS,
    attr::HEARTBEAT,
    attr::HEARTBEAT_MS,
    attr::EXPIRES_AT,
    attr::FORCED_BY,
];

impl Expr {
    /// `attr` as an expression may name it: itself when it is one of
    /// [`PLAIN_NAMES`], otherwise a registered `#attr` placeholder.
    pub(crate) fn n(&mut self, attr: &str) -> String {
        if PLAIN_NAMES.contains(&attr) {
            return attr.to_string();
        }
        let placeholder = format!("#{attr}");
        self.names.insert(placeholder.clone(), attr.to_string());
        placeholder
    }

    /// `attr = :tag`, for an update's `SET` list.
    pub(crate) fn assign(&mut self, attr: &str, tag: &str, value: AttributeValue) -> String {
        format!("{} = {}", self.n(attr), self.v(tag, value))
    }

    /// The registered placeholders, or `None` when there are none (DynamoDB
    /// rejects an empty map).
    pub(crate) fn names(&mut self) -> Option<HashMap<String, String>> {
        let names = std::mem::take(&mut self.names);
        (!names.is_empty()).then_some(names)
    }

    /// `:tag` bound to `value`.
    pub(crate) fn v(&mut self, tag: &str, value: AttributeValue) -> String {
        let placeholder = format!(":{tag}");
        self.values.insert(placeholder.clone(), value);
        placeholder
    }
}

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
/// Every write removes `expiresAt` (see the module docs: no TTL).
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
            match &op.kind {
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
            }
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
    };
    let update = format!("SET {} REMOVE {}", set.join(", "), remove.join(", "));
    (update, condition)
}

/// Every item of `table` (a paginated, strongly consistent scan).
pub(crate) async fn scan_all(
    client: &Client,
    table: &str,
    ctx: &ErrorContext,
) -> Result<Vec<Item>, StoreError> {
    let mut items = Vec::new();
    let mut start: Option<Item> = None;
    loop {
        let out = client
            .scan()
            .table_name(table)
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| sdk_error(e, ctx))?;
        items.extend(out.items().iter().cloned());
        match out.last_evaluated_key() {
            Some(k) if !k.is_empty() => start = Some(k.clone()),
            _ => return Ok(items),
        }
    }
}

// ---------------------------------------------------------------------------
// Items <-> records

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(crate) fn n(value: impl std::fmt::Display) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

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

/// Reads the attributes of one item, reporting the first problem as
/// [`StoreError::Corrupt`] naming the item's key.
pub(crate) struct ItemReader<'a> {
    pub(crate) item: &'a Item,
    pub(crate) key: String,
}

impl<'a> ItemReader<'a> {
    /// A reader of `item`, whose key attribute is `key_attr`.
    pub(crate) fn new(item: &'a Item, key_attr: &str) -> Self {
        let key = match item.get(key_attr) {
            Some(AttributeValue::S(k)) => k.clone(),
            _ => "<no key>".to_string(),
        };
        ItemReader { item, key }
    }

    pub(crate) fn corrupt(&self, reason: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            key: self.key.clone(),
            reason: reason.into(),
        }
    }

    fn get(&self, name: &str) -> Result<&'a AttributeValue, StoreError> {
        self.item
            .get(name)
            .ok_or_else(|| self.corrupt(format!("attribute {name:?} is missing")))
    }

    pub(crate) fn string(&self, name: &str) -> Result<&'a str, StoreError> {
        match self.get(name)? {
            AttributeValue::S(v) => Ok(v),
            other => Err(self.corrupt(format!(
                "attribute {name:?} should be a string, is {other:?}"
            ))),
        }
    }

    pub(crate) fn opt_string(&self, name: &str) -> Result<Option<&'a str>, StoreError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(true)) => Ok(None),
            Some(_) => self.string(name).map(Some),
        }
    }

    pub(crate) fn number<T: std::str::FromStr>(&self, name: &str) -> Result<T, StoreError> {
        match self.get(name)? {
            AttributeValue::N(v) => v.parse().map_err(|_| {
                self.corrupt(format!(
                    "attribute {name:?} = {v} is out of range for a {}",
                    std::any::type_name::<T>()
                ))
            }),
            other => Err(self.corrupt(format!(
                "attribute {name:?} should be a number, is {other:?}"
            ))),
        }
    }

    fn boolean(&self, name: &str) -> Result<bool, StoreError> {
        match self.get(name)? {
            AttributeValue::Bool(v) => Ok(*v),
            other => Err(self.corrupt(format!(
                "attribute {name:?} should be a boolean, is {other:?}"
            ))),
        }
    }

    fn map(&self, name: &str) -> Result<&'a HashMap<String, AttributeValue>, StoreError> {
        match self.get(name)? {
            AttributeValue::M(v) => Ok(v),
            other => Err(self.corrupt(format!("attribute {name:?} should be a map, is {other:?}"))),
        }
    }
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
    })
}

// ---------------------------------------------------------------------------
// Client configuration

/// Attempts the SDK makes at a read (`GetItem`, `Scan`, table setup) of a
/// client from [`DynamoDbStore::connect`]. Reads are idempotent; writes are
/// never resent.
pub const READ_ATTEMPTS: u32 = 3;

/// The per-request configuration of every conditional write: the SDK sends it
/// once, whatever the client's own retry configuration. A verbatim resend can
/// land after the writer's later operations (a delayed acquire after its own
/// release would grant the key to a finished lease); the lock client resends
/// by itself and recognises its own landed write by `rvn`.
pub(crate) fn write_once() -> aws_sdk_dynamodb::config::Builder {
    aws_sdk_dynamodb::config::Builder::default()
        .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::standard().with_max_attempts(1))
}

/// Refuses an endpoint override that cannot work: not `http://` or
/// `https://`, no host, or characters no URL may contain. The message shows
/// the endpoint with any userinfo redacted.
fn check_endpoint(endpoint: &str) -> Result<(), StoreError> {
    let shown = redact_userinfo(endpoint);
    let bad = |why: &str| {
        Err(StoreError::Misconfigured(format!(
            "the DynamoDB endpoint {shown:?} {why}: use e.g. http://localhost:8000 or \
             https://dynamodb.us-east-1.amazonaws.com"
        )))
    };
    let Some(rest) = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
    else {
        return bad("must be an http:// or https:// URL");
    };
    if endpoint
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return bad("contains spaces or control characters");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    if host.is_empty() {
        return bad("names no host");
    }
    Ok(())
}

/// An SDK client from the default configuration chain, with `region` and
/// `endpoint` overrides, fail-fast timeouts, and SDK retries for reads only
/// ([`READ_ATTEMPTS`]; writes: [`write_once`]).
pub(crate) async fn load_client(
    region: Option<&str>,
    endpoint: Option<&str>,
) -> Result<Client, StoreError> {
    use aws_sdk_dynamodb::config::{retry::RetryConfig, timeout::TimeoutConfig, Region};
    if let Some(e) = endpoint {
        check_endpoint(e)?;
    }
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(r) = region {
        loader = loader.region(Region::new(r.to_string()));
    }
    let sdk = loader.load().await;
    let mut config = aws_sdk_dynamodb::config::Builder::from(&sdk)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        )
        // Reads may be resent by the SDK; every conditional write overrides
        // this with `write_once()`.
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(READ_ATTEMPTS)
                .with_initial_backoff(Duration::from_millis(50)),
        );
    if let Some(e) = endpoint {
        config = config.endpoint_url(e);
    }
    if sdk.region().is_none() {
        if endpoint.is_some() {
            // A local endpoint does not care; the signature needs some region.
            config = config.region(Region::new("us-east-1"));
        } else {
            return Err(StoreError::Misconfigured(
                "no AWS region is configured: set AWS_REGION (or a profile's region), or add \
                 ?region=REGION to the dynamodb:// store URL"
                    .into(),
            ));
        }
    }
    Ok(Client::from_conf(config.build()))
}

// ---------------------------------------------------------------------------
// Tables

const KEY_SCHEMA_HINT: &str = "a statelock lock table has the hash key `lockKey` (type S)";

/// Creates `table` (hash key `hash_key` of type S, on-demand) unless it exists,
/// waits until it is active and enables TTL on `ttl_attr`.
pub(crate) async fn ensure_table(
    client: &Client,
    table: &str,
    hash_key: &str,
    ttl_attr: Option<&str>,
    ctx: &ErrorContext,
) -> Result<TableSetup, StoreError> {
    let setup = match describe_table(client, table, ctx).await? {
        Some(_) => TableSetup::AlreadyExisted,
        None => {
            let created = client
                .create_table()
                .table_name(table)
                .billing_mode(BillingMode::PayPerRequest)
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name(hash_key)
                        .attribute_type(ScalarAttributeType::S)
                        .build()
                        .map_err(|e| StoreError::Misconfigured(e.to_string()))?,
                )
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name(hash_key)
                        .key_type(KeyType::Hash)
                        .build()
                        .map_err(|e| StoreError::Misconfigured(e.to_string()))?,
                )
                .send()
                .await;
            match created {
                Ok(_) => TableSetup::Created,
                // Someone else created it in the meantime.
                Err(err) if err.code() == Some("ResourceInUseException") => {
                    TableSetup::AlreadyExisted
                }
                Err(err) => return Err(sdk_error(err, ctx)),
            }
        }
    };
    // Wait until active (DynamoDB Local is at once; AWS takes seconds).
    let mut waited = Duration::ZERO;
    let step = Duration::from_millis(250);
    loop {
        let Some(description) = describe_table(client, table, ctx).await? else {
            return Err(StoreError::Unavailable(format!(
                "table {table:?} disappeared while it was being created"
            )));
        };
        check_key_schema(&description, table, hash_key)?;
        match description.table_status() {
            Some(TableStatus::Active) => break,
            Some(TableStatus::Creating | TableStatus::Updating) | None => {}
            Some(other) => {
                return Err(StoreError::Misconfigured(format!(
                    "table {table:?} is {other:?}, not ACTIVE"
                )))
            }
        }
        if waited > Duration::from_secs(300) {
            return Err(StoreError::Unavailable(format!(
                "table {table:?} did not become ACTIVE within 5 minutes"
            )));
        }
        tokio::time::sleep(step).await;
        waited += step;
    }
    if let Some(ttl_attr) = ttl_attr {
        ensure_ttl(client, table, ttl_attr, ctx).await?;
    }
    Ok(setup)
}

async fn describe_table(
    client: &Client,
    table: &str,
    ctx: &ErrorContext,
) -> Result<Option<aws_sdk_dynamodb::types::TableDescription>, StoreError> {
    match client.describe_table().table_name(table).send().await {
        Ok(out) => Ok(out.table().cloned()),
        Err(err) if err.code() == Some("ResourceNotFoundException") => Ok(None),
        Err(err) => Err(sdk_error(err, ctx)),
    }
}

fn check_key_schema(
    description: &aws_sdk_dynamodb::types::TableDescription,
    table: &str,
    hash_key: &str,
) -> Result<(), StoreError> {
    let schema: Vec<(String, String)> = description
        .key_schema()
        .iter()
        .map(|k| {
            (
                k.attribute_name().to_string(),
                k.key_type().as_str().to_string(),
            )
        })
        .collect();
    let hash_type = description
        .attribute_definitions()
        .iter()
        .find(|d| d.attribute_name() == hash_key)
        .map(|d| d.attribute_type().as_str().to_string());
    let expected = vec![(hash_key.to_string(), "HASH".to_string())];
    if schema != expected || hash_type.as_deref() != Some("S") {
        return Err(StoreError::Misconfigured(format!(
            "table {table:?} exists with key schema {schema:?} (hash key type {}), but this store \
             needs exactly the hash key {hash_key:?} of type S: use another table name, or the \
             other lock format (?format=terraform uses the hash key \"LockID\")",
            hash_type.as_deref().unwrap_or("unknown"),
        )));
    }
    Ok(())
}

async fn ttl_enabled(
    client: &Client,
    table: &str,
    ttl_attr: &str,
    ctx: &ErrorContext,
) -> Result<bool, StoreError> {
    let current = client
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| sdk_error(e, ctx))?;
    let Some(d) = current.time_to_live_description() else {
        return Ok(false);
    };
    match d.time_to_live_status() {
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling) => {
            if d.attribute_name() != Some(ttl_attr) {
                tracing::warn!(
                    table,
                    ttl_attribute = ?d.attribute_name(),
                    "TTL is enabled on another attribute than {ttl_attr}; leaving it as it is"
                );
            }
            Ok(true)
        }
        Some(TimeToLiveStatus::Disabling) => {
            tracing::warn!(
                table,
                "TTL is being disabled; not enabling it on {ttl_attr}"
            );
            Ok(true)
        }
        _ => Ok(false),
    }
}

async fn ensure_ttl(
    client: &Client,
    table: &str,
    ttl_attr: &str,
    ctx: &ErrorContext,
) -> Result<(), StoreError> {
    if ttl_enabled(client, table, ttl_attr, ctx).await? {
        return Ok(());
    }
    let enabled = client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name(ttl_attr)
                .build()
                .map_err(|e| StoreError::Misconfigured(e.to_string()))?,
        )
        .send()
        .await;
    match enabled {
        Ok(_) => Ok(()),
        Err(err) => {
            let err = sdk_error(err, ctx);
            // Someone else enabled it meanwhile ("TimeToLive is already enabled").
            if ttl_enabled(client, table, ttl_attr, ctx).await? {
                Ok(())
            } else {
                Err(err)
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Errors
//
// One line each, never a debug dump or a credential, classified by whether
// retrying can help: see the module documentation, "Timeouts, retries and
// errors".

/// What an error message needs to say what to do.
#[derive(Debug, Clone)]
pub(crate) struct ErrorContext {
    pub(crate) table: String,
    pub(crate) format: LockFormat,
    pub(crate) region: Option<String>,
    /// The endpoint override, with any userinfo already redacted
    /// ([`redact_userinfo`]): only ever used in messages.
    pub(crate) endpoint: Option<String>,
    /// What the table's key schema must be.
    pub(crate) schema_hint: &'static str,
}

impl ErrorContext {
    pub(crate) fn new(table: &str, format: LockFormat, schema_hint: &'static str) -> Self {
        ErrorContext {
            table: table.to_string(),
            format,
            region: None,
            endpoint: None,
            schema_hint,
        }
    }

    /// Records the endpoint override (redacted: messages never show userinfo).
    pub(crate) fn set_endpoint(&mut self, endpoint: Option<&str>) {
        self.endpoint = endpoint.map(redact_userinfo);
    }

    /// The store URL of this table, as a user would type it (any userinfo
    /// of the endpoint redacted).
    pub(crate) fn url(&self) -> String {
        let mut params = Vec::new();
        if let Some(r) = &self.region {
            params.push(format!("region={r}"));
        }
        if let Some(e) = &self.endpoint {
            params.push(format!("endpoint={e}"));
        }
        if self.format == LockFormat::Terraform {
            params.push("format=terraform".to_string());
        }
        if params.is_empty() {
            format!("dynamodb://{}", self.table)
        } else {
            format!("dynamodb://{}?{}", self.table, params.join("&"))
        }
    }

    /// The endpoint requests go to, for messages: the override, or
    /// "DynamoDB in REGION".
    fn endpoint_name(&self) -> String {
        match (&self.endpoint, &self.region) {
            (Some(e), _) => e.clone(),
            (None, Some(r)) => format!("DynamoDB in {r}"),
            (None, None) => "DynamoDB".to_string(),
        }
    }

    /// Where the table is, for messages: ` at ENDPOINT`, ` in REGION` or nothing.
    fn whereabouts(&self) -> String {
        match (&self.endpoint, &self.region) {
            (Some(e), _) => format!(" at {e}"),
            (None, Some(r)) => format!(" in {r}"),
            (None, None) => String::new(),
        }
    }

    /// What to check when the endpoint's host is wrong.
    fn endpoint_advice(&self) -> &'static str {
        if self.endpoint.is_some() {
            "check the endpoint URL"
        } else {
            "check the region"
        }
    }
}

/// An SDK error split into the operation's own error (to match on) and the
/// rest (already mapped).
pub(crate) enum Failure<E> {
    /// The service answered with this error and HTTP status.
    Service(E, u16),
    /// Anything else, mapped.
    Store(StoreError),
}

/// Splits `err`: the service's own answers are returned to match on; the
/// rest is mapped to a one-line [`StoreError`] (see [`transport_error`]).
pub(crate) fn split_sdk_error<E>(err: SdkError<E>, ctx: &ErrorContext) -> Failure<E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            Failure::Service(service.into_err(), status)
        }
        other => Failure::Store(failure_error(&other, ctx)),
    }
}

/// Maps an SDK error that is not the service's own answer.
fn failure_error<E>(err: &SdkError<E>, ctx: &ErrorContext) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
{
    match err {
        SdkError::TimeoutError(_) => timed_out(err, ctx),
        SdkError::DispatchFailure(failure) => {
            let (timeout, io, user) = (failure.is_timeout(), failure.is_io(), failure.is_user());
            match failure.as_connector_error() {
                Some(cause) if timeout => timed_out(cause, ctx),
                Some(cause) => transport_error(cause, io, user, ctx),
                None => StoreError::Unavailable(format!(
                    "the request to {} failed",
                    ctx.endpoint_name()
                )),
            }
        }
        SdkError::ConstructionFailure(_) => StoreError::Misconfigured(format!(
            "cannot build a DynamoDB request for the table {:?} ({})",
            ctx.table,
            root_cause(err)
        )),
        SdkError::ResponseError(response) => StoreError::Unavailable(format!(
            "unreadable answer from {} (HTTP {}: {})",
            ctx.endpoint_name(),
            response.raw().status().as_u16(),
            root_cause(err)
        )),
        _ => StoreError::Unavailable(format!(
            "the request to {} failed ({})",
            ctx.endpoint_name(),
            root_cause(err)
        )),
    }
}

/// A timeout: of the connection (`connect timeout`) or of the request.
fn timed_out(err: &(dyn std::error::Error + 'static), ctx: &ErrorContext) -> StoreError {
    let text = causes(err)
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let after = text
        .rfind(" after ")
        .map(|i| readable_duration(&text[i + " after ".len()..]))
        .filter(|d| !d.is_empty());
    let connect = text.to_ascii_lowercase().contains("connect timeout");
    StoreError::Unavailable(match (connect, after) {
        (true, Some(d)) => format!(
            "cannot connect to {}: no answer within {d}",
            ctx.endpoint_name()
        ),
        (true, None) => format!("cannot connect to {}: timed out", ctx.endpoint_name()),
        (false, Some(d)) => format!(
            "no answer from {}: the request timed out after {d}",
            ctx.endpoint_name()
        ),
        (false, None) => format!(
            "no answer from {}: the request timed out",
            ctx.endpoint_name()
        ),
    })
}

/// Maps a failure to send a request (or to receive its answer) by its
/// causes. `io`: the SDK saw an I/O failure; `user`: it blames the caller's
/// configuration.
fn transport_error(
    err: &(dyn std::error::Error + 'static),
    io: bool,
    user: bool,
    ctx: &ErrorContext,
) -> StoreError {
    let chain = causes(err);
    let lower = chain
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(" | ")
        .to_ascii_lowercase();
    let endpoint = ctx.endpoint_name();
    let cause = root_cause(err);
    let mentions = |words: &[&str]| words.iter().any(|w| lower.contains(w));

    // The credential providers failed (their own network failures included:
    // the SDK reports those as "other", not as I/O with the endpoint).
    if !io && mentions(&["credential", "imds", "identity"]) {
        let cause = if mentions(&["no credentials found", "not enabled"]) {
            "none found in the environment, profile, web identity, container or instance \
             metadata"
                .to_string()
        } else {
            cause
        };
        return StoreError::Misconfigured(format!(
            "no usable AWS credentials for {endpoint} ({cause}): configure them (AWS_PROFILE, \
             AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, SSO, an instance role...)"
        ));
    }
    // The host does not exist (a typo, a wrong region), or the resolver
    // failed for now.
    if mentions(&["dns error", "lookup address"]) {
        let message = format!("cannot resolve the host of {endpoint} ({cause})");
        return if mentions(&[
            "not known",
            "nodename nor servname",
            "no such host",
            "nxdomain",
        ]) {
            StoreError::Misconfigured(format!("{message}: {}", ctx.endpoint_advice()))
        } else {
            StoreError::Unavailable(message)
        };
    }
    let tls = mentions(&["tls", "handshake", "certificate"]);
    let retryable_io = chain
        .iter()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind)
        .find(|k| is_retryable_io(*k));
    if let Some(kind) = retryable_io {
        let what = io_kind_text(kind);
        return StoreError::Unavailable(if tls {
            format!("TLS handshake with {endpoint} failed ({what})")
        } else if mentions(&["(connect)", "connect error"]) {
            format!("cannot connect to {endpoint} ({what})")
        } else {
            format!("lost the connection to {endpoint} ({what})")
        });
    }
    if tls {
        let hint = if mentions(&["certificate", "notvalidforname"]) {
            "check its certificate and host name (or the trusted CAs)"
        } else if ctx
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("https://"))
        {
            "is the endpoint http?"
        } else {
            "check the endpoint and any proxy on the way"
        };
        return StoreError::Misconfigured(format!(
            "TLS handshake with {endpoint} failed ({cause}): {hint}"
        ));
    }
    if mentions(&["endpoint", "invalid uri", "scheme"]) {
        return StoreError::Misconfigured(format!(
            "the DynamoDB endpoint {endpoint} is not a usable URL ({cause})"
        ));
    }
    if user {
        return StoreError::Misconfigured(format!("cannot send a request to {endpoint} ({cause})"));
    }
    if mentions(&["connection closed", "incomplete"]) {
        return StoreError::Unavailable(format!("lost the connection to {endpoint} ({cause})"));
    }
    StoreError::Unavailable(format!("the request to {endpoint} failed ({cause})"))
}

/// I/O failures a new connection (or a later attempt) could avoid.
fn is_retryable_io(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        kind,
        ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | NotConnected
            | AddrNotAvailable
            | NetworkUnreachable
            | HostUnreachable
            | NetworkDown
            | BrokenPipe
            | TimedOut
            | UnexpectedEof
            | Interrupted
    )
}

/// A few words for an I/O error kind.
fn io_kind_text(kind: std::io::ErrorKind) -> String {
    use std::io::ErrorKind::*;
    match kind {
        UnexpectedEof => "the connection closed early".to_string(),
        TimedOut => "timed out".to_string(),
        other => other.to_string(),
    }
}

/// `err` and its causes, outermost first (an `io::Error` wrapping another
/// error is followed by it; at most 16).
fn causes<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut out: Vec<&'a (dyn std::error::Error + 'static)> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        if out.len() >= 16 {
            break;
        }
        out.push(e);
        // `io::Error::source` skips the error it wraps; visit it too.
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    out
}

/// The innermost cause of `err` that says something, in a few words: its
/// first line, without credentials or URL userinfo, cut to 120 characters.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let chain = causes(err);
    let text = chain
        .iter()
        .rev()
        .map(|e| e.to_string())
        .find(|t| !t.trim().is_empty())
        .unwrap_or_default();
    few_words(&text)
}

/// `text` made fit for a one-line message: first line only, scrubbed
/// ([`scrub`]), at most 120 characters.
fn few_words(text: &str) -> String {
    const MAX: usize = 120;
    let line = text.lines().next().unwrap_or("").trim();
    let line = line.trim_end_matches([':', '.', ' ']);
    let clean = scrub(line);
    if clean.chars().count() <= MAX {
        clean
    } else {
        let cut: String = clean.chars().take(MAX - 1).collect();
        format!("{}…", cut.trim_end())
    }
}

/// `5s` / `500ms` / `1.5s` (a `Duration` as `Debug` prints it, maybe
/// followed by more text) as `5 s` / `500 ms` / `1.5 s`.
fn readable_duration(text: &str) -> String {
    let token = text
        .split(|c: char| c.is_whitespace() || c == ')' || c == ',')
        .next()
        .unwrap_or("");
    let split = token
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(token.len());
    let (number, unit) = token.split_at(split);
    if number.is_empty() || unit.is_empty() || !unit.chars().all(|c| c.is_alphabetic()) {
        return String::new();
    }
    format!("{number} {unit}")
}

/// `url` with any userinfo replaced by `***`
/// (`http://user:pass@host` → `http://***@host`).
pub(crate) fn redact_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..rest_start], &rest[at..]),
        None => url.to_string(),
    }
}

/// `text` without what must never be shown: the userinfo of any URL in it,
/// AWS access key ids (`AKIA…`, `ASIA…`) and anything long enough to be a
/// secret key or a session token (a run of 32 or more base64 characters).
fn scrub(text: &str) -> String {
    // URLs: redact the userinfo of each `scheme://...` word.
    let mut out = String::with_capacity(text.len());
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        match word.find("://") {
            Some(at) => {
                let start = word[..at]
                    .rfind(|c: char| !c.is_ascii_alphanumeric())
                    .map_or(0, |i| i + 1);
                out.push_str(&word[..start]);
                out.push_str(&redact_userinfo(&word[start..]));
            }
            None => out.push_str(word),
        }
    }
    // Access key ids: words of capitals and digits with a key id prefix.
    let key_id = |run: &str| {
        run.len() >= 16
            && KEY_ID_PREFIXES.iter().any(|p| run.starts_with(p))
            && run
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    };
    let out = replace_runs(&out, |c| c.is_ascii_alphanumeric(), key_id);
    // Secret keys and session tokens: long runs of base64 characters.
    let base64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=');
    replace_runs(&out, base64, |run| run.len() >= 32)
}

/// Prefixes of AWS access key ids (and other unique ids) in messages.
const KEY_ID_PREFIXES: [&str; 9] = [
    "AKIA", "ASIA", "AIDA", "AROA", "AGPA", "ANPA", "ANVA", "ABIA", "ACCA",
];

/// `text` with every maximal run of characters in `class` for which
/// `secret` holds replaced by `***`.
fn replace_runs(text: &str, class: impl Fn(char) -> bool, secret: impl Fn(&str) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        out.push_str(if secret(run) { "***" } else { run });
        run.clear();
    };
    for c in text.chars() {
        if class(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Maps a service error by its code: throttling and 5xx are
/// [`StoreError::Unavailable`]; a missing table, rejected credentials,
/// access denied and invalid requests are [`StoreError::Misconfigured`],
/// with what to do.
pub(crate) fn service_error<E: ProvideErrorMetadata>(
    err: &E,
    status: u16,
    ctx: &ErrorContext,
) -> StoreError {
    let code: String = err
        .code()
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '#' | ':' | '-'))
        .take(80)
        .collect();
    let message = few_words(err.message().unwrap_or(""));
    let detail = if message.is_empty() {
        code.clone()
    } else {
        format!("{code}: {message}")
    };
    let table = &ctx.table;
    let endpoint = ctx.endpoint_name();
    match code.as_str() {
        "ResourceNotFoundException" => StoreError::Misconfigured(format!(
            "the table {table:?} does not exist{}: create it with `statelock --store '{}' \
             dynamodb create-table` (or check the table name and the region)",
            ctx.whereabouts(),
            ctx.url(),
        )),
        "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "MissingAuthenticationToken"
        | "MissingAuthenticationTokenException"
        | "IncompleteSignature"
        | "IncompleteSignatureException"
        | "InvalidClientTokenId"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "SignatureDoesNotMatch" => StoreError::Misconfigured(format!(
            "the credentials were rejected by {endpoint} ({code}): check AWS_PROFILE / \
             AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN and the region"
        )),
        "AccessDeniedException" | "UnauthorizedOperation" => StoreError::Misconfigured(format!(
            "access to the table {table:?} was denied ({detail}): the IAM policy must allow \
             dynamodb:GetItem, PutItem, UpdateItem, DeleteItem, Scan and TransactWriteItems on it"
        )),
        "ValidationException" | "SerializationException" => StoreError::Misconfigured(format!(
            "DynamoDB rejected the request on the table {table:?} ({detail}); {}",
            ctx.schema_hint
        )),
        "ThrottlingException"
        | "ProvisionedThroughputExceededException"
        | "RequestLimitExceeded"
        | "InternalServerError"
        | "ServiceUnavailable"
        | "TransactionConflictException"
        | "ReplicatedWriteConflictException"
        | "TransactionInProgressException"
        | "LimitExceededException" => {
            StoreError::Unavailable(format!("DynamoDB is busy on the table {table:?} ({code})"))
        }
        "" if status >= 500 || status == 429 => {
            StoreError::Unavailable(format!("{endpoint} failed (HTTP {status})"))
        }
        _ if status >= 500 || status == 429 => {
            StoreError::Unavailable(format!("{endpoint} failed (HTTP {status}, {code})"))
        }
        "" => StoreError::Misconfigured(format!(
            "{endpoint} answered HTTP {status} without a DynamoDB error code: is it a DynamoDB \
             endpoint?"
        )),
        _ => StoreError::Misconfigured(format!(
            "DynamoDB refused the request on the table {table:?} (HTTP {status}, {detail})"
        )),
    }
}

/// Maps any SDK error of an operation without errors of its own to handle.
pub(crate) fn sdk_error<E>(err: SdkError<E>, ctx: &ErrorContext) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match split_sdk_error(err, ctx) {
        Failure::Service(e, status) => service_error(&e, status, ctx),
        Failure::Store(e) => e,
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
            },
            OpKind::Acquire {
                from: GrantFrom::Absent {
                    floor: FencingToken(0),
                },
                owner,
                lease_ms: 1000,
                holder: HolderInfo::named("me"),
            },
            OpKind::Takeover {
                observed: RecordVersion(1),
                token: FencingToken(1),
                owner,
                lease_ms: 1000,
                holder: HolderInfo::named("me"),
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

#[cfg(test)]
mod error_tests {
    use super::*;
    use aws_sdk_dynamodb::config::http::HttpResponse;
    use aws_sdk_dynamodb::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_dynamodb::operation::get_item::GetItemError;
    use aws_smithy_types::body::SdkBody;
    use std::io::{Error as IoError, ErrorKind as Io};

    type BoxError = Box<dyn std::error::Error + Send + Sync>;

    /// One layer of an error chain, as the SDK's connectors wrap them.
    #[derive(Debug)]
    struct Layer {
        text: String,
        cause: Option<BoxError>,
    }

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.text)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.cause
                .as_deref()
                .map(|e| e as &(dyn std::error::Error + 'static))
        }
    }

    fn cause(t: &str) -> BoxError {
        Box::new(Layer {
            text: t.to_string(),
            cause: None,
        })
    }

    /// `outer` layers (outermost first) around `root`.
    fn chain(outer: &[&str], root: BoxError) -> BoxError {
        outer.iter().rev().fold(root, |cause, t| {
            Box::new(Layer {
                text: t.to_string(),
                cause: Some(cause),
            })
        })
    }

    fn ctx(endpoint: Option<&str>, region: Option<&str>) -> ErrorContext {
        let mut ctx = ErrorContext::new("locks", LockFormat::Statelock, KEY_SCHEMA_HINT);
        ctx.set_endpoint(endpoint);
        ctx.region = region.map(str::to_string);
        ctx
    }

    fn local() -> ErrorContext {
        ctx(Some("http://127.0.0.1:1"), None)
    }

    fn dispatch(c: ConnectorError) -> SdkError<GetItemError> {
        SdkError::dispatch_failure(c)
    }

    fn service(code: &str, message: &str, status: u16) -> SdkError<GetItemError> {
        let mut meta = ErrorMetadata::builder().message(message);
        if !code.is_empty() {
            meta = meta.code(code);
        }
        let response = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        SdkError::service_error(GetItemError::generic(meta.build()), response)
    }

    /// The message, checked to be one readable line without debug dumps.
    fn line(e: &StoreError) -> String {
        let text = e.to_string();
        assert!(!text.contains('\n'), "one line: {text}");
        assert!(text.len() < 300, "{} chars: {text}", text.len());
        for debug in [
            "{ ",
            "Some(",
            "DispatchFailure",
            "ConnectorError",
            "Request {",
            "SdkBody",
        ] {
            assert!(!text.contains(debug), "{debug:?} in {text}");
        }
        text
    }

    fn unavailable(e: StoreError) -> String {
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        line(&e)
    }

    fn misconfigured(e: StoreError) -> String {
        assert!(matches!(e, StoreError::Misconfigured(_)), "{e:?}");
        line(&e)
    }

    #[test]
    fn network_failures_are_retryable_and_say_what_happened() {
        let refused = dispatch(ConnectorError::io(chain(
            &["client error (Connect)", "tcp connect error"],
            Box::new(IoError::from(Io::ConnectionRefused)),
        )));
        let text = unavailable(sdk_error(refused, &local()));
        assert!(
            text.contains("cannot connect to http://127.0.0.1:1 (connection refused)"),
            "{text}"
        );

        let reset = dispatch(ConnectorError::io(chain(
            &["client error (SendRequest)"],
            Box::new(IoError::from(Io::ConnectionReset)),
        )));
        let text = unavailable(sdk_error(reset, &local()));
        assert!(
            text.contains("lost the connection to http://127.0.0.1:1"),
            "{text}"
        );

        let closed = dispatch(ConnectorError::other(
            chain(
                &["client error (SendRequest)"],
                cause("connection closed before message completed"),
            ),
            Some(aws_smithy_types::retry::ErrorKind::TransientError),
        ));
        let text = unavailable(sdk_error(closed, &local()));
        assert!(
            text.contains("connection closed before message completed"),
            "{text}"
        );

        // An EOF in the middle of a TLS handshake may be a restart: retry.
        let eof = dispatch(ConnectorError::io(chain(
            &["client error (Connect)", "TLS handshake failed"],
            Box::new(IoError::new(Io::UnexpectedEof, "tls handshake eof")),
        )));
        let text = unavailable(sdk_error(eof, &local()));
        assert!(text.contains("TLS handshake"), "{text}");

        let temporary_dns = dispatch(ConnectorError::io(chain(
            &["client error (Connect)", "dns error"],
            Box::new(IoError::other("Temporary failure in name resolution")),
        )));
        unavailable(sdk_error(temporary_dns, &local()));
    }

    #[test]
    fn timeouts_say_how_long_was_waited() {
        let operation = SdkError::<GetItemError>::timeout_error(cause(
            "operation timeout (all attempts including retries) occurred after 5s",
        ));
        let text = unavailable(sdk_error(operation, &local()));
        assert!(
            text.contains("no answer from http://127.0.0.1:1: the request timed out after 5 s"),
            "{text}"
        );
        let connect = dispatch(ConnectorError::timeout(chain(
            &["client error (Connect)"],
            Box::new(Layer {
                text: "HTTP connect timeout occurred after 3s".into(),
                cause: None,
            }),
        )));
        let text = unavailable(sdk_error(connect, &ctx(None, Some("eu-west-1"))));
        assert!(
            text.contains("cannot connect to DynamoDB in eu-west-1: no answer within 3 s"),
            "{text}"
        );
        assert_eq!(readable_duration("500ms and more"), "500 ms");
        assert_eq!(readable_duration("1.5s"), "1.5 s");
        assert_eq!(readable_duration("soon"), "");
    }

    #[test]
    fn tls_mismatches_and_bad_endpoints_fail_fast() {
        let https_to_http = dispatch(ConnectorError::io(chain(
            &["client error (Connect)", "TLS handshake failed"],
            Box::new(IoError::other(IoError::new(
                Io::InvalidData,
                "received corrupt message of type InvalidContentType",
            ))),
        )));
        let text = misconfigured(sdk_error(
            https_to_http,
            &ctx(Some("https://127.0.0.1:8000"), None),
        ));
        assert!(
            text.contains("TLS handshake with https://127.0.0.1:8000 failed")
                && text.contains("InvalidContentType")
                && text.ends_with("is the endpoint http?"),
            "{text}"
        );

        let untrusted = dispatch(ConnectorError::io(chain(
            &["client error (Connect)", "TLS handshake failed"],
            Box::new(IoError::new(
                Io::InvalidData,
                "invalid peer certificate: UnknownIssuer",
            )),
        )));
        let text = misconfigured(sdk_error(untrusted, &ctx(None, Some("us-east-1"))));
        assert!(text.contains("certificate"), "{text}");

        let no_such_host = dispatch(ConnectorError::io(chain(
            &["client error (Connect)", "dns error"],
            Box::new(IoError::other(
                "failed to lookup address information: Name or service not known",
            )),
        )));
        let text = misconfigured(sdk_error(no_such_host, &ctx(None, Some("us-eest-1"))));
        assert!(
            text.contains("cannot resolve the host of DynamoDB in us-eest-1")
                && text.ends_with("check the region"),
            "{text}"
        );

        // The SDK's own text dumps the whole request: none of it is shown.
        let bad_url = dispatch(ConnectorError::other(
            chain(
                &[
                    "failed to apply endpoint `http://user:pass@exa mple` to request `Request { \
                     body: SdkBody { inner: Once(Some(b\"{}\")) }, headers: {} }`",
                    "endpoint is not a valid URI",
                ],
                cause("invalid uri character"),
            ),
            None,
        ));
        let text = misconfigured(sdk_error(
            bad_url,
            &ctx(Some("http://user:pass@exa mple"), None),
        ));
        assert!(
            text.contains("http://***@exa mple is not a usable URL (invalid uri character)"),
            "{text}"
        );
        assert!(!text.contains("pass"), "{text}");

        let unbuildable =
            SdkError::<GetItemError>::construction_failure(cause("the table name is missing"));
        let text = misconfigured(sdk_error(unbuildable, &local()));
        assert!(text.contains("the table name is missing"), "{text}");
    }

    #[test]
    fn credentials_are_never_shown() {
        let key_id = "AKIAIOSFODNN7EXAMPLE";
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let token = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQD6";
        let failed = dispatch(ConnectorError::other(
            chain(
                &["an error occurred while loading credentials"],
                cause(&format!(
                    "profile default: key {key_id} secret {secret} token {token} refused"
                )),
            ),
            None,
        ));
        let text = misconfigured(sdk_error(failed, &local()));
        assert!(text.contains("no usable AWS credentials"), "{text}");
        for hidden in [key_id, secret, token, "wJalr", "IQoJb3"] {
            assert!(!text.contains(hidden), "{hidden} shown: {text}");
        }

        let none = dispatch(ConnectorError::other(
            chain(
                &["the credential provider was not enabled"],
                cause("no credentials found in chain. Attempted:\n  Environment: not set"),
            ),
            None,
        ));
        let text = misconfigured(sdk_error(none, &local()));
        assert!(text.contains("none found"), "{text}");

        let rejected = service(
            "UnrecognizedClientException",
            &format!("The security token {token} is invalid for {key_id}"),
            400,
        );
        let text = misconfigured(sdk_error(rejected, &local()));
        assert!(
            text.contains(
                "the credentials were rejected by http://127.0.0.1:1 (UnrecognizedClientException)"
            ),
            "{text}"
        );
        for hidden in [key_id, token] {
            assert!(!text.contains(hidden), "{hidden} shown: {text}");
        }
        let denied = service(
            "AccessDeniedException",
            &format!("User: arn:aws:sts::123456789012:assumed-role/ci/{key_id} is not authorized"),
            400,
        );
        let text = misconfigured(sdk_error(denied, &local()));
        assert!(text.contains("arn:aws:sts::123456789012"), "{text}");
        assert!(!text.contains(key_id), "{text}");
    }

    #[test]
    fn service_errors_are_classified_by_code() {
        let endpoint = ctx(Some("http://user:pass@127.0.0.1:8000"), None);
        let missing = service(
            "ResourceNotFoundException",
            "Cannot do operations on a non-existent table",
            400,
        );
        let text = misconfigured(sdk_error(missing, &endpoint));
        assert!(
            text.contains("the table \"locks\" does not exist at http://***@127.0.0.1:8000")
                && text.contains("dynamodb create-table"),
            "{text}"
        );
        assert!(!text.contains("pass"), "{text}");

        for code in ["ValidationException", "SomethingNew"] {
            misconfigured(sdk_error(service(code, "no", 400), &endpoint));
        }
        for (code, status) in [
            ("ThrottlingException", 400),
            ("ProvisionedThroughputExceededException", 400),
            ("InternalServerError", 500),
            ("SomethingNew", 503),
            ("", 502),
        ] {
            let text = unavailable(sdk_error(service(code, "later", status), &endpoint));
            assert!(text.contains(code), "{text}");
        }
        let not_dynamodb = misconfigured(sdk_error(service("", "", 404), &endpoint));
        assert!(
            not_dynamodb.contains("is it a DynamoDB endpoint?"),
            "{not_dynamodb}"
        );

        let response = SdkError::<GetItemError>::response_error(
            cause("invalid JSON"),
            HttpResponse::new(200u16.try_into().unwrap(), SdkBody::empty()),
        );
        let text = unavailable(sdk_error(response, &endpoint));
        assert!(text.contains("HTTP 200: invalid JSON"), "{text}");
    }

    #[test]
    fn endpoint_userinfo_is_redacted() {
        assert_eq!(
            redact_userinfo("http://user:pass@host:8000/x?y"),
            "http://***@host:8000/x?y"
        );
        assert_eq!(redact_userinfo("https://host/a@b"), "https://host/a@b");
        assert_eq!(redact_userinfo("no url"), "no url");
        let ctx = ctx(Some("http://user:pass@localhost:8000"), Some("us-east-1"));
        assert_eq!(
            ctx.url(),
            "dynamodb://locks?region=us-east-1&endpoint=http://***@localhost:8000"
        );
        assert_eq!(
            scrub("see `https://a:b@h/p` now"),
            "see `https://***@h/p` now"
        );
    }

    #[test]
    fn unusable_endpoints_are_refused_before_any_request() {
        for good in [
            "http://localhost:8000",
            "https://dynamodb.us-east-1.amazonaws.com",
            "http://[::1]:8000/",
            "http://user:pass@127.0.0.1:8000",
        ] {
            assert_eq!(check_endpoint(good), Ok(()), "{good}");
        }
        for bad in [
            "127.0.0.1:8000",
            "ftp://host",
            "http://",
            "http://:8000",
            "http://exa mple:80",
            "http://user:secret@",
        ] {
            match check_endpoint(bad) {
                Err(StoreError::Misconfigured(why)) => {
                    assert!(!why.contains("secret"), "{why}");
                    line(&StoreError::Misconfigured(why));
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
