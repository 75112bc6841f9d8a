//! The DynamoDB adapter (feature `dynamodb`): lock stores over a DynamoDB
//! table in two formats, statelock's own ([`DynamoDbStore`], hash key
//! `lockKey`) and Terraform's ([`terraform::TerraformDynamoStore`], hash key
//! `LockID`), and what a `dynamodb://` store URL needs from both: opening the
//! store of its format (for [`crate::store::open_lock_store`]) and creating
//! its table ([`create_table_for_url`]).
//!
//! A client from [`DynamoDbStore::connect`] fails fast ([`CONNECT_TIMEOUT`],
//! [`ATTEMPT_TIMEOUT`], [`OPERATION_TIMEOUT`]); the SDK resends reads
//! ([`READ_ATTEMPTS`]) but never a write. Every error is one line that never
//! shows a credential: [`StoreError::Unavailable`] when retrying can help,
//! [`StoreError::Misconfigured`] when the operator must fix something. The
//! items each format writes and the IAM permissions each needs are
//! documented on [`DynamoDbStore`] and in [`terraform`].
//!
//! This file only dispatches on the lock format; no other file of the
//! adapter imports from it. The files, each importing only those after it:
//! - `mod.rs`: the public paths, [`create_table_for_url`] and `open`.
//! - `locks.rs`: [`DynamoDbStore`], statelock's items, update expressions,
//!   token floor and purge.
//! - `terraform.rs`: the Terraform format ([`terraform`]).
//! - `table.rs`: what every DynamoDB store shares (also the state heads of
//!   `crate::state::dynamodb`): the SDK client (timeouts, writes sent once),
//!   [`TableSetup`] and table creation, expressions, scans, item reading.
//! - `errors.rs`: SDK errors as one-line [`StoreError`]s, credentials
//!   scrubbed.

pub(crate) mod errors;
pub(crate) mod locks;
pub(crate) mod table;
pub mod terraform;

pub use locks::{DynamoDbStore, FLOOR_KEY};
pub use table::{TableSetup, ATTEMPT_TIMEOUT, CONNECT_TIMEOUT, OPERATION_TIMEOUT, READ_ATTEMPTS};

use crate::store::url::{LockFormat, StoreUrl};
use crate::store::{LockStore, StoreError};
use terraform::TerraformDynamoStore;

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
            TerraformDynamoStore::connect(table, region.as_deref(), endpoint.as_deref()).await?,
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
            TerraformDynamoStore::connect(table, region.as_deref(), endpoint.as_deref())
                .await?
                .create_table()
                .await
        }
        other => Err(StoreError::Misconfigured(format!(
            "only dynamodb:// stores have a table to create, not {other:?}"
        ))),
    }
}
