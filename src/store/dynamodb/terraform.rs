//! Terraform-compatible lock format over DynamoDB (feature `dynamodb`):
//! [`TerraformDynamoStore`] reads and writes the lock items of Terraform's S3
//! backend, so statelock and Terraform see, wait for and respect each other's
//! locks on the same state (PROTOCOL.md, "Terraform compatibility mode").
//!
//! This module translates between Terraform's lock items and lock records. It
//! must never let a statelock client take a Terraform lock away: Terraform
//! locks have no lease, so nothing here ever expires.
//!
//! # Items
//! The table's hash key is `LockID` (S). A lock is the item
//! `LockID = "<bucket>/<key>"` with `Info` = Terraform's `LockInfo` JSON:
//! `{"ID","Operation","Info","Who","Version","Created","Path"}`. Terraform also
//! keeps `LockID = "<bucket>/<key>-md5"` items with a `Digest` attribute (the
//! state's checksum); they are not locks and [`LockStore::list`] skips them.
//!
//! # How records map
//! | record | Terraform |
//! | --- | --- |
//! | `key` | `LockID` (use the lock key `<bucket>/<key>`) |
//! | `owner` | `ID` (a UUID; a non-UUID ID maps to a UUID derived from its SHA-256) |
//! | `holder.locked_by` | `Who` |
//! | `holder.operation` | `Operation` (e.g. `OperationTypeApply`) |
//! | `holder.host`, `pid`, `metadata` | `Info`, as a JSON object, for locks statelock wrote; Terraform's own non-empty `Info` is `metadata["info"]` |
//! | `acquired_at`, `heartbeat_at` | `Created` (RFC 3339) |
//! | `token` | always 0: Terraform has no fencing tokens |
//! | `rvn` | the first 128 bits of SHA-256 of the `Info` string |
//! | `lease_ms` | [`NO_EXPIRY_LEASE_MS`] for locks read from the table: they never expire |
//! | `released` | never stored: a released lock is an absent item |
//!
//! A Terraform `Version` other than statelock's own is `metadata["terraform_version"]`.
//!
//! # How operations map
//! - acquire: `PutItem` with `attribute_not_exists(LockID)`, `ALL_OLD` on failure.
//! - takeover: never allowed. The current item is read and returned as a
//!   conflict, so a waiter keeps waiting until Terraform unlocks (or its wait
//!   times out). Records read from the table carry [`NO_EXPIRY_LEASE_MS`], so a
//!   waiter never even tries.
//! - heartbeat: a conditional no-op `UpdateItem` (`Info = :ours`): it fails,
//!   and the holder learns its lock is gone, if someone ran
//!   `terraform force-unlock`.
//! - release: `DeleteItem` with `Info = :ours`; afterwards `get` returns `None`.
//! - force-unlock: reads the item, checks that its `rvn` (the hash of `Info`)
//!   is the one the operator saw, then `DeleteItem` with `Info = :that_info`.
//!
//! A Terraform lock has a single version for its whole life, so heartbeat
//! and release recognise the lease's lock by its `ID` (the lease id) alone
//! and ignore the version the op carries. That is what lets a client
//! abandon an acquire whose `PutItem` landed but whose answer was lost: its
//! release carries the acquire's own new version, which a Terraform lock
//! never has, and would otherwise conflict and leave a lock that never
//! expires.
//!
//! `Info = :ours` needs the exact `Info` string of the lease's lock. It is
//! kept in memory for locks acquired through this value; otherwise (another
//! process, or an acquire whose answer was lost) the heartbeat or release
//! first reads the item, checks that its `ID` is the lease's, then writes
//! conditionally on the `Info` it found. If the condition fails on a lock
//! that is still the lease's but whose `Info` is not the one remembered, it
//! writes once more with the `Info` it now finds.
//!
//! Records returned by writes differ from [`LockOp::apply`] where the format
//! cannot follow it: token 0, `rvn` from `Info`, and a release leaves no item.
//! This store is therefore not run through the statelock conformance suite.
//!
//! # IAM permissions
//! `dynamodb:GetItem`, `PutItem`, `UpdateItem`, `DeleteItem`, `Scan` on the
//! lock table (plus `CreateTable`, `DescribeTable` for `create_table`).

use super::errors::{sdk_error, service_error, split_sdk_error, Failure};
use super::table::{
    ensure_table, s, scan_all, write_once, Expr, Item, ItemReader, Table, TableSetup,
};
use crate::protocol::{
    FencingToken, HolderInfo, LeaseId, LockKey, LockOp, LockRecord, OpKind, RecordVersion,
};
use crate::store::terraform_lockinfo::{
    format_rfc3339, parse_rfc3339, Extras, LockInfo, VERSION_PREFIX,
};
use crate::store::url::LockFormat;
use crate::store::{DamagedRecord, Listing, LockStore, StoreError};
use crate::sync::Mutex;
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{ReturnValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;

/// The lease reported for every lock read from a Terraform table: Terraform
/// locks never expire, so no waiter may ever take one over.
pub const NO_EXPIRY_LEASE_MS: u64 = LockRecord::NO_EXPIRY_LEASE_MS;

/// Terraform's hash key.
const LOCK_ID: &str = "LockID";
/// Terraform's lock info attribute.
const INFO: &str = "Info";
/// Terraform's state digest attribute (on `<path>-md5` items).
const DIGEST: &str = "Digest";
/// Suffix of Terraform's digest items.
const DIGEST_SUFFIX: &str = "-md5";

const KEY_SCHEMA_HINT: &str =
    "a Terraform lock table has the hash key `LockID` (type S), as Terraform's S3 backend expects";

/// The `Info` string this store wrote for one of its leases.
#[derive(Debug, Clone)]
struct Ours {
    info: String,
    lease_ms: u64,
}

/// The answer to a write conditional on a lock's `Info`.
#[derive(Debug)]
enum Conditional {
    /// The write landed; the record as the op's caller sees it.
    Written(LockRecord),
    /// The condition failed; the lock now stored and its `Info` (`None`:
    /// there is none).
    Changed(Option<(LockRecord, String)>),
}

/// A lock store speaking Terraform's S3-backend DynamoDB lock protocol (see
/// the module documentation). Keys are Terraform lock ids, `<bucket>/<key>`.
pub struct TerraformDynamoStore {
    t: Table,
    ours: Mutex<HashMap<(LockKey, LeaseId), Ours>>,
}

impl std::fmt::Debug for TerraformDynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerraformDynamoStore")
            .field("t", &self.t)
            .finish_non_exhaustive()
    }
}

impl TerraformDynamoStore {
    /// A store over Terraform's lock `table`, using a client configured by the caller.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        TerraformDynamoStore::over(Table::new(
            client,
            table.into(),
            LockFormat::Terraform,
            KEY_SCHEMA_HINT,
        ))
    }

    fn over(t: Table) -> Self {
        TerraformDynamoStore {
            t,
            ours: Mutex::new(HashMap::new()),
        }
    }

    /// A store over `table` with a client from the default AWS configuration
    /// chain and optional region / endpoint overrides (see
    /// [`DynamoDbStore::connect`]).
    ///
    /// [`DynamoDbStore::connect`]: crate::store::dynamodb::DynamoDbStore::connect
    pub async fn connect(
        table: &str,
        region: Option<&str>,
        endpoint: Option<&str>,
    ) -> Result<Self, StoreError> {
        let t = Table::connect(
            table,
            region,
            endpoint,
            LockFormat::Terraform,
            KEY_SCHEMA_HINT,
        );
        Ok(TerraformDynamoStore::over(t.await?))
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.t.name
    }

    /// Creates a Terraform lock table (hash key `LockID`, S, on-demand) unless
    /// it exists with that key schema; waits until it is active.
    pub async fn create_table(&self) -> Result<TableSetup, StoreError> {
        ensure_table(&self.t.client, &self.t.name, LOCK_ID, None, &self.t.ctx).await
    }

    async fn read_item(&self, key: &LockKey) -> Result<Option<Item>, StoreError> {
        let out = self
            .t
            .client
            .get_item()
            .table_name(&self.t.name)
            .key(LOCK_ID, s(key.as_str()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error(e, &self.t.ctx))?;
        Ok(out.item().cloned())
    }

    async fn read(&self, key: &LockKey) -> Result<Option<(LockRecord, String)>, StoreError> {
        match self.read_item(key).await? {
            Some(item) if !is_digest(&item) => parse_item(&item).map(Some),
            _ => Ok(None),
        }
    }

    /// The lock a failed condition returned (`ALL_OLD`) and its `Info`, or none.
    fn current_of(item: Option<&Item>) -> Result<Option<(LockRecord, String)>, StoreError> {
        match item {
            None => Ok(None),
            Some(item) if is_digest(item) => Err(ItemReader::new(item, LOCK_ID)
                .corrupt("this is Terraform's state digest item, not a lock")),
            Some(item) => parse_item(item).map(Some),
        }
    }

    /// The current lock and its `Info` after a failed condition: the
    /// `ALL_OLD` item, or a read when the answer carried none (absent, or an
    /// older emulator).
    async fn current_after_failure(
        &self,
        key: &LockKey,
        item: Option<&Item>,
    ) -> Result<Option<(LockRecord, String)>, StoreError> {
        match item {
            Some(_) => Self::current_of(item),
            None => self.read(key).await,
        }
    }

    async fn acquire(
        &self,
        op: &LockOp,
        owner: LeaseId,
        lease_ms: u64,
        holder: &HolderInfo,
    ) -> Result<LockRecord, StoreError> {
        let info = info_for(op, owner, holder)?;
        let granted = |info: &str| {
            let (mut record, _) = parse_info(&op.key, info)?;
            record.lease_ms = lease_ms;
            Ok::<_, StoreError>(record)
        };
        let remember = |info: String| {
            self.ours
                .lock()
                .insert((op.key.clone(), owner), Ours { info, lease_ms });
        };
        let result = self
            .t
            .client
            .put_item()
            .table_name(&self.t.name)
            .item(LOCK_ID, s(op.key.as_str()))
            .item(INFO, s(&info))
            .condition_expression("attribute_not_exists(#id)")
            .expression_attribute_names("#id", LOCK_ID)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .customize()
            .config_override(write_once())
            .send()
            .await;
        match result {
            Ok(_) => {
                let record = granted(&info)?;
                remember(info);
                Ok(record)
            }
            Err(err) => match split_sdk_error(err, &self.t.ctx) {
                Failure::Service(PutItemError::ConditionalCheckFailedException(ccf), _) => {
                    let item = ccf.item();
                    match self.current_after_failure(&op.key, item).await? {
                        // Our own earlier attempt landed (its answer was lost).
                        Some((current, stored)) if current.owner == owner => {
                            let record = granted(&stored)?;
                            remember(stored);
                            Ok(record)
                        }
                        current => Err(StoreError::conflict(current.map(|(r, _)| r))),
                    }
                }
                Failure::Service(other, status) => Err(service_error(&other, status, &self.t.ctx)),
                Failure::Store(e) => Err(e),
            },
        }
    }

    /// The `Info` string of lease `owner`'s lock, or the conflict to report
    /// if the stored lock is not `owner`'s. A Terraform lock has a single
    /// version for its whole life (heartbeats rewrite the same `Info`), so
    /// the lease id, `Info.ID`, is all that identifies it: the version an op
    /// carries is not compared (an acquire whose answer was lost is
    /// abandoned with a release carrying the acquire's own new version,
    /// which a Terraform record never has).
    async fn our_info(&self, key: &LockKey, owner: LeaseId) -> Result<Ours, StoreError> {
        let cached = self.ours.lock().get(&(key.clone(), owner)).cloned();
        if let Some(ours) = cached {
            return Ok(ours);
        }
        match self.read(key).await? {
            Some((record, info)) if record.owner == owner => Ok(Ours {
                info,
                lease_ms: NO_EXPIRY_LEASE_MS,
            }),
            current => Err(StoreError::conflict(current.map(|(r, _)| r))),
        }
    }

    /// Performs `write` (a write conditional on `Info`) on lease `owner`'s
    /// lock. If the condition fails because the lock is still `owner`'s but
    /// its `Info` is not the one this store remembered, writes once more
    /// with the `Info` found.
    async fn on_ours<F, Fut>(
        &self,
        key: &LockKey,
        owner: LeaseId,
        write: F,
    ) -> Result<(LockRecord, Ours), StoreError>
    where
        F: Fn(Ours) -> Fut,
        Fut: std::future::Future<Output = Result<Conditional, StoreError>>,
    {
        let mut ours = self.our_info(key, owner).await?;
        let mut retried = false;
        loop {
            match write(ours.clone()).await? {
                Conditional::Written(record) => return Ok((record, ours)),
                Conditional::Changed(Some((record, info)))
                    if record.owner == owner && info != ours.info && !retried =>
                {
                    retried = true;
                    ours.info = info;
                }
                Conditional::Changed(current) => {
                    return Err(StoreError::conflict(current.map(|(r, _)| r)))
                }
            }
        }
    }

    /// Rewrites lease `owner`'s lock unchanged if its `Info` is still
    /// `ours.info`: the holder learns whether it still holds the lock.
    async fn touch(&self, op: &LockOp, ours: Ours) -> Result<Conditional, StoreError> {
        let mut e = Expr::default();
        let (name, value) = (e.n(INFO), e.v("ours", s(&ours.info)));
        let result = self
            .t
            .client
            .update_item()
            .table_name(&self.t.name)
            .key(LOCK_ID, s(op.key.as_str()))
            .update_expression(format!("SET {name} = {value}"))
            .condition_expression(format!("{name} = {value}"))
            .set_expression_attribute_names(e.names())
            .set_expression_attribute_values(Some(e.values))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .customize()
            .config_override(write_once())
            .send()
            .await;
        match result {
            Ok(out) => {
                let mut record = match out.attributes() {
                    Some(item) => parse_item(item)?.0,
                    None => parse_info(&op.key, &ours.info)?.0,
                };
                record.lease_ms = ours.lease_ms;
                Ok(Conditional::Written(record))
            }
            Err(err) => match split_sdk_error(err, &self.t.ctx) {
                Failure::Service(UpdateItemError::ConditionalCheckFailedException(ccf), _) => Ok(
                    Conditional::Changed(self.current_after_failure(&op.key, ccf.item()).await?),
                ),
                Failure::Service(other, status) => Err(service_error(&other, status, &self.t.ctx)),
                Failure::Store(e) => Err(e),
            },
        }
    }

    async fn heartbeat(&self, op: &LockOp, owner: LeaseId) -> Result<LockRecord, StoreError> {
        match self
            .on_ours(&op.key, owner, |ours| self.touch(op, ours))
            .await
        {
            Ok((record, ours)) => {
                // Remember the `Info` in use (it may have been read).
                self.ours.lock().insert((op.key.clone(), owner), ours);
                Ok(record)
            }
            Err(e) => {
                if matches!(e, StoreError::Conflict { .. }) {
                    self.forget(&op.key, owner);
                }
                Err(e)
            }
        }
    }

    async fn release(&self, op: &LockOp, owner: LeaseId) -> Result<LockRecord, StoreError> {
        let result = self
            .on_ours(&op.key, owner, |ours| async move {
                self.delete(op, &ours.info, None).await
            })
            .await;
        self.forget(&op.key, owner);
        result.map(|(record, _)| record)
    }

    /// Deletes the lock if its `Info` is still `info`; returns the record it
    /// had, marked released as [`LockOp::apply`] would.
    async fn delete(
        &self,
        op: &LockOp,
        info: &str,
        forced_by: Option<&str>,
    ) -> Result<Conditional, StoreError> {
        let mut e = Expr::default();
        let (name, value) = (e.n(INFO), e.v("info", s(info)));
        let result = self
            .t
            .client
            .delete_item()
            .table_name(&self.t.name)
            .key(LOCK_ID, s(op.key.as_str()))
            .condition_expression(format!("{name} = {value}"))
            .set_expression_attribute_names(e.names())
            .set_expression_attribute_values(Some(e.values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .customize()
            .config_override(write_once())
            .send()
            .await;
        match result {
            Ok(_) => {
                let (mut record, _) = parse_info(&op.key, info)?;
                record.released = true;
                record.rvn = op.new_rvn;
                record.heartbeat_at = op.at;
                record.forced_by = forced_by.map(str::to_string);
                Ok(Conditional::Written(record))
            }
            Err(err) => match split_sdk_error(err, &self.t.ctx) {
                Failure::Service(DeleteItemError::ConditionalCheckFailedException(ccf), _) => Ok(
                    Conditional::Changed(self.current_after_failure(&op.key, ccf.item()).await?),
                ),
                Failure::Service(other, status) => Err(service_error(&other, status, &self.t.ctx)),
                Failure::Store(e) => Err(e),
            },
        }
    }

    fn forget(&self, key: &LockKey, owner: LeaseId) {
        self.ours.lock().remove(&(key.clone(), owner));
    }
}

#[async_trait]
impl LockStore for TerraformDynamoStore {
    async fn apply(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
        match &op.kind {
            OpKind::Acquire {
                owner,
                lease_ms,
                holder,
                ..
            } => self.acquire(op, *owner, *lease_ms, holder).await,
            OpKind::Takeover { owner, .. } => match self.read(&op.key).await? {
                // Our own earlier acquire landed unheard.
                Some((record, info)) if record.owner == *owner => {
                    let lease_ms = self
                        .ours
                        .lock()
                        .get(&(op.key.clone(), *owner))
                        .filter(|o| o.info == info)
                        .map_or(NO_EXPIRY_LEASE_MS, |o| o.lease_ms);
                    Ok(LockRecord { lease_ms, ..record })
                }
                // Terraform locks never expire: never take one over.
                current => Err(StoreError::conflict(current.map(|(r, _)| r))),
            },
            // A Terraform lock has one version: the owner is all that
            // identifies it (see `our_info`).
            // Terraform locks carry no tokens: there is nothing to raise.
            OpKind::Enqueue { .. } | OpKind::Leave { .. } => Err(StoreError::Misconfigured(
                "Terraform-format locks keep no hand-off queue: their waiters are not ordered".into(),
            )),
            OpKind::Rebase { .. } => Err(StoreError::Misconfigured(
                "Terraform-format locks carry no fencing tokens: they cannot be re-based above a state fence".into(),
            )),
            OpKind::Heartbeat { owner, .. } => self.heartbeat(op, *owner).await,
            OpKind::Release { owner, .. } => self.release(op, *owner).await,
            OpKind::ForceUnlock { observed, by } => match self.read(&op.key).await? {
                Some((record, info)) if record.rvn == *observed => {
                    match self.delete(op, &info, Some(by)).await? {
                        Conditional::Written(released) => {
                            self.forget(&op.key, record.owner);
                            Ok(released)
                        }
                        Conditional::Changed(current) => {
                            Err(StoreError::conflict(current.map(|(r, _)| r)))
                        }
                    }
                }
                current => Err(StoreError::conflict(current.map(|(r, _)| r))),
            },
        }
    }

    async fn get(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError> {
        Ok(self.read(key).await?.map(|(r, _)| r))
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        let items = scan_all(&self.t.client, &self.t.name, &self.t.ctx).await?;
        let mut listing = Listing::default();
        for item in items.iter().filter(|item| !is_digest(item)) {
            match parse_item(item) {
                Ok((record, _)) => listing.records.push(record),
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

    /// Terraform locks carry no tokens: the floor is always 0.
    async fn token_floor(&self) -> Result<FencingToken, StoreError> {
        Ok(FencingToken::NONE)
    }

    /// Terraform deletes its lock items itself on unlock: there is nothing
    /// to purge.
    async fn purge(
        &self,
        key: &LockKey,
        _observed: RecordVersion,
    ) -> Result<LockRecord, StoreError> {
        Err(StoreError::Misconfigured(format!(
            "Terraform-format locks are deleted on unlock and carry no tokens: nothing to purge for {:?}",
            key.as_str()
        )))
    }

    fn describe(&self) -> String {
        self.t.ctx.url()
    }
    fn shared_name(&self) -> Option<String> {
        Some(self.describe())
    }
}

/// True for Terraform's `<path>-md5` state digest items.
fn is_digest(item: &Item) -> bool {
    let id_is_digest = matches!(item.get(LOCK_ID), Some(aws_sdk_dynamodb::types::AttributeValue::S(id)) if id.ends_with(DIGEST_SUFFIX));
    id_is_digest && item.contains_key(DIGEST) && !item.contains_key(INFO)
}

/// The record of a Terraform lock item and its `Info` string.
fn parse_item(item: &Item) -> Result<(LockRecord, String), StoreError> {
    let reader = ItemReader::new(item, LOCK_ID);
    let key = LockKey::new(reader.string(LOCK_ID)?)
        .map_err(|e| reader.corrupt(format!("LockID is not a valid lock key: {e}")))?;
    let info = reader.string(INFO)?.to_string();
    let (record, _) = parse_info(&key, &info)?;
    Ok((record, info))
}

/// The record described by Terraform `LockInfo` JSON `info` stored under `key`.
fn parse_info(key: &LockKey, info: &str) -> Result<(LockRecord, LockInfo), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: key.to_string(),
        reason,
    };
    let parsed: LockInfo = serde_json::from_str(info)
        .map_err(|e| corrupt(format!("Info is not Terraform lock info JSON: {e}")))?;
    let owner = match uuid::Uuid::parse_str(&parsed.id) {
        Ok(id) => LeaseId(id),
        Err(_) => {
            let digest = Sha256::digest(format!("terraform-lock-id:{}", parsed.id).as_bytes());
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(&digest[..16]);
            LeaseId(uuid::Uuid::from_bytes(bytes))
        }
    };
    let created = parse_rfc3339(&parsed.created).ok_or_else(|| {
        corrupt(format!(
            "Created {:?} is not an RFC 3339 time",
            parsed.created
        ))
    })?;
    let mut holder = HolderInfo::named(parsed.who.clone());
    if !parsed.operation.is_empty() {
        holder.operation = Some(parsed.operation.clone());
    }
    let ours = parsed.version.starts_with(VERSION_PREFIX);
    match serde_json::from_str::<Extras>(&parsed.info) {
        Ok(extras) if ours => {
            holder.host = extras.host;
            holder.pid = extras.pid;
            holder.metadata = extras.metadata;
        }
        _ if parsed.info.is_empty() => {}
        _ => {
            holder.metadata.insert("info".into(), parsed.info.clone());
        }
    }
    if !ours && !parsed.version.is_empty() {
        holder
            .metadata
            .insert("terraform_version".into(), parsed.version.clone());
    }
    let record = LockRecord {
        key: key.clone(),
        owner,
        token: FencingToken::NONE,
        rvn: info_rvn(info),
        lease_ms: NO_EXPIRY_LEASE_MS,
        released: false,
        holder,
        acquired_at: created,
        heartbeat_at: created,
        forced_by: None,
        queue: Vec::new(),
    };
    Ok((record, parsed))
}

/// The record version of a Terraform lock: the first 128 bits of SHA-256(Info).
fn info_rvn(info: &str) -> RecordVersion {
    let digest = Sha256::digest(info.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    RecordVersion(u128::from_be_bytes(bytes))
}

/// The `LockInfo` JSON statelock writes for a grant.
fn info_for(op: &LockOp, owner: LeaseId, holder: &HolderInfo) -> Result<String, StoreError> {
    let extras = Extras {
        host: holder.host.clone(),
        pid: holder.pid,
        metadata: holder.metadata.clone(),
    };
    let info = if extras == Extras::default() {
        String::new()
    } else {
        serde_json::to_string(&extras).map_err(|e| StoreError::Misconfigured(e.to_string()))?
    };
    let lock_info = LockInfo {
        id: owner.to_string(),
        operation: holder.operation.clone().unwrap_or_default(),
        info,
        who: holder.locked_by.clone(),
        version: format!("{VERSION_PREFIX}{}", env!("CARGO_PKG_VERSION")),
        created: format_rfc3339(op.at),
        path: op.key.to_string(),
    };
    serde_json::to_string(&lock_info).map_err(|e| StoreError::Misconfigured(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::WallTime;

    /// An `Info` exactly as Terraform 1.0.3 writes it.
    const TERRAFORM_INFO: &str = r#"{"ID":"5b9f1c2e-8d4a-4f51-9c0e-2a7b3d6e1f40","Operation":"OperationTypeApply","Info":"","Who":"alice@laptop","Version":"1.0.3","Created":"2024-01-15T14:20:00.123456Z","Path":"statelock-test/env/prod.tfstate"}"#;

    #[test]
    fn parses_terraform_lock_info() {
        let key = LockKey::new("statelock-test/env/prod.tfstate").unwrap();
        let (record, info) = parse_info(&key, TERRAFORM_INFO).unwrap();
        assert_eq!(info.who, "alice@laptop");
        assert_eq!(
            record.owner.to_string(),
            "5b9f1c2e-8d4a-4f51-9c0e-2a7b3d6e1f40"
        );
        assert_eq!(record.holder.locked_by, "alice@laptop");
        assert_eq!(
            record.holder.operation.as_deref(),
            Some("OperationTypeApply")
        );
        assert_eq!(
            record
                .holder
                .metadata
                .get("terraform_version")
                .map(String::as_str),
            Some("1.0.3")
        );
        assert_eq!(record.acquired_at, WallTime(1_705_328_400_123));
        assert_eq!(record.token, FencingToken(0));
        assert_eq!(record.lease_ms, NO_EXPIRY_LEASE_MS);
        assert!(record.is_held());
        assert_eq!(record.rvn, info_rvn(TERRAFORM_INFO));
    }

    #[test]
    fn our_info_round_trips_the_holder() {
        let key = LockKey::new("bucket/state").unwrap();
        let mut holder = HolderInfo::named("ci-1");
        holder.operation = Some("apply".into());
        holder.host = Some("runner".into());
        holder.pid = Some(42);
        holder.metadata.insert("git_commit".into(), "a1b2".into());
        let owner = LeaseId(uuid::Uuid::from_u128(9));
        let op = LockOp {
            key: key.clone(),
            new_rvn: RecordVersion(1),
            at: WallTime(1_705_328_400_123),
            kind: OpKind::Acquire {
                from: crate::protocol::GrantFrom::Absent {
                    floor: FencingToken::NONE,
                },
                owner,
                lease_ms: 1000,
                holder: holder.clone(),
                at_least: FencingToken::NONE,
                dequeue: Default::default(),
            },
        };
        let info = info_for(&op, owner, &holder).unwrap();
        let (record, parsed) = parse_info(&key, &info).unwrap();
        assert_eq!(record.holder, holder);
        assert_eq!(record.owner, owner);
        assert_eq!(record.acquired_at, op.at);
        assert_eq!(parsed.path, "bucket/state");
        assert!(parsed.version.starts_with("statelock "));
    }

    #[test]
    fn odd_items_are_corrupt_or_mapped() {
        let key = LockKey::new("b/k").unwrap();
        for bad in ["", "{}", "not json", r#"{"ID":"x","Created":"yesterday"}"#] {
            assert!(
                matches!(parse_info(&key, bad), Err(StoreError::Corrupt { .. })),
                "{bad:?}"
            );
        }
        let (record, _) = parse_info(
            &key,
            r#"{"ID":"not-a-uuid","Created":"2024-01-15T14:20:00Z","Info":"free text"}"#,
        )
        .unwrap();
        assert_eq!(
            record.holder.metadata.get("info").map(String::as_str),
            Some("free text")
        );
        let (again, _) = parse_info(
            &key,
            r#"{"ID":"not-a-uuid","Created":"2024-01-15T14:20:00Z"}"#,
        )
        .unwrap();
        assert_eq!(record.owner, again.owner);
        assert_eq!(
            parse_rfc3339("2024-01-15T16:20:00.5+02:00"),
            Some(WallTime(1_705_328_400_500))
        );
        assert_eq!(
            parse_rfc3339("2024-01-15T14:20:00-00:30"),
            Some(WallTime(1_705_330_200_000))
        );
        assert_eq!(format_rfc3339(WallTime(-5)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339(WallTime(i64::MAX)),
            "9999-12-31T23:59:59.999Z"
        );
    }
}
