//! One DynamoDB table reached through one SDK client (feature `dynamodb`):
//! what every DynamoDB store (statelock's locks, Terraform's locks, the
//! state heads) shares. The SDK client's setup (timeouts; reads resent,
//! writes sent once), table creation and description, expression names
//! and values, scans, and reading attributes out of items.
//!
//! This module makes no lock decision and knows neither lock format
//! beyond the attribute names of statelock's items (`attr`, which
//! expressions write without placeholders): what a store writes, and on
//! which condition, is that store's business. From the rest of the
//! DynamoDB adapter it imports only `errors`.
//!
//! # Timeouts and retries
//! A client from [`DynamoDbStore::connect`] gives up on a connection after
//! [`CONNECT_TIMEOUT`] (3 s), on one request after [`ATTEMPT_TIMEOUT`]
//! (5 s) and on a whole operation, retries included, after
//! [`OPERATION_TIMEOUT`] (12 s). The SDK resends reads up to
//! [`READ_ATTEMPTS`] times in all; it never resends a write (the lock
//! client does, and recognises its own landed write). A client passed to
//! [`DynamoDbStore::new`] keeps its own timeouts, but writes are still sent
//! once.
//!
//! [`DynamoDbStore::connect`]: crate::store::dynamodb::DynamoDbStore::connect
//! [`DynamoDbStore::new`]: crate::store::dynamodb::DynamoDbStore::new

use super::errors::{sdk_error, ErrorContext};
use crate::store::aws_errors::check_endpoint;
use crate::store::url::LockFormat;
use crate::store::StoreError;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
};
use aws_sdk_dynamodb::Client;
use std::collections::HashMap;
use std::time::Duration;

/// Connect timeout of [`DynamoDbStore::connect`]'s client: 3 s. A
/// connection to DynamoDB (TLS included) takes milliseconds; a host that
/// drops packets is reported as unavailable after this long.
///
/// [`DynamoDbStore::connect`]: crate::store::dynamodb::DynamoDbStore::connect
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Per-attempt timeout of [`DynamoDbStore::connect`]'s client: 5 s, far
/// above DynamoDB's latency, so only a request that will not be answered
/// hits it (a write is then of unknown outcome; the lock client resends it).
///
/// [`DynamoDbStore::connect`]: crate::store::dynamodb::DynamoDbStore::connect
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-operation timeout (all attempts) of [`DynamoDbStore::connect`]'s
/// client: 12 s, which bounds a read's [`READ_ATTEMPTS`].
///
/// [`DynamoDbStore::connect`]: crate::store::dynamodb::DynamoDbStore::connect
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(12);

/// What [`DynamoDbStore::create_table`] (and its siblings) found or did.
///
/// [`DynamoDbStore::create_table`]: crate::store::dynamodb::DynamoDbStore::create_table
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

// ---------------------------------------------------------------------------
// Client configuration

/// Attempts the SDK makes at a read (`GetItem`, `Scan`, table setup) of a
/// client from [`DynamoDbStore::connect`]. Reads are idempotent; writes are
/// never resent.
///
/// [`DynamoDbStore::connect`]: crate::store::dynamodb::DynamoDbStore::connect
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

/// An SDK client from the default configuration chain, with `region` and
/// `endpoint` overrides, fail-fast timeouts, and SDK retries for reads only
/// ([`READ_ATTEMPTS`]; writes: [`write_once`]).
pub(crate) async fn load_client(
    region: Option<&str>,
    endpoint: Option<&str>,
) -> Result<Client, StoreError> {
    use aws_sdk_dynamodb::config::{retry::RetryConfig, timeout::TimeoutConfig, Region};
    if let Some(e) = endpoint {
        check_endpoint(
            e,
            "DynamoDB",
            "http://localhost:8000 or https://dynamodb.us-east-1.amazonaws.com",
        )?;
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
// Requests

/// Attribute names of a statelock lock item (the schema is documented on
/// [`DynamoDbStore`]). They live here rather than with that store because
/// [`Expr`] writes them without placeholders ([`PLAIN_NAMES`]) and the state
/// heads' table shares the hash key `lockKey`.
///
/// [`DynamoDbStore`]: crate::store::dynamodb::DynamoDbStore
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
    /// The hand-off queue: a list of lease ids (absent: empty).
    pub const QUEUE: &str = "queue";
}

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
// Items

/// An item as the SDK represents it.
pub(crate) type Item = HashMap<String, AttributeValue>;

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(crate) fn n(value: impl std::fmt::Display) -> AttributeValue {
    AttributeValue::N(value.to_string())
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

    pub(crate) fn boolean(&self, name: &str) -> Result<bool, StoreError> {
        match self.get(name)? {
            AttributeValue::Bool(v) => Ok(*v),
            other => Err(self.corrupt(format!(
                "attribute {name:?} should be a boolean, is {other:?}"
            ))),
        }
    }

    pub(crate) fn map(
        &self,
        name: &str,
    ) -> Result<&'a HashMap<String, AttributeValue>, StoreError> {
        match self.get(name)? {
            AttributeValue::M(v) => Ok(v),
            other => Err(self.corrupt(format!("attribute {name:?} should be a map, is {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::dynamodb::errors::tests::line;

    #[test]
    fn unusable_endpoints_are_refused_before_any_request() {
        for good in [
            "http://localhost:8000",
            "https://dynamodb.us-east-1.amazonaws.com",
            "http://[::1]:8000/",
            "http://user:pass@127.0.0.1:8000",
        ] {
            assert_eq!(
                check_endpoint(
                    good,
                    "DynamoDB",
                    "http://localhost:8000 or https://dynamodb.us-east-1.amazonaws.com"
                ),
                Ok(()),
                "{good}"
            );
        }
        for bad in [
            "127.0.0.1:8000",
            "ftp://host",
            "http://",
            "http://:8000",
            "http://exa mple:80",
            "http://user:secret@",
        ] {
            match check_endpoint(
                bad,
                "DynamoDB",
                "http://localhost:8000 or https://dynamodb.us-east-1.amazonaws.com",
            ) {
                Err(StoreError::Misconfigured(why)) => {
                    assert!(!why.contains("secret"), "{why}");
                    line(&StoreError::Misconfigured(why));
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
