//! The floor `statelock bench --raw` measures beside the lock client: the
//! barest spin lock a store kind allows, one create-if-absent to take a key
//! and one delete to give it back, polled every [`POLL`].
//!
//! Per store kind: DynamoDB `PutItem` with `attribute_not_exists` and
//! `DeleteItem` of a scratch item in the lock table; S3 `PutObject` with
//! `If-None-Match: *` and `DeleteObject` of a scratch object under the
//! prefix's `bench-raw/`; a file created with `O_CREAT|O_EXCL` and unlinked
//! in the store's directory; in memory, an insert into and a removal from a
//! mutex-protected set. None of it goes through [`crate::store::LockStore`].
//!
//! This lock has no lease, no token and no takeover: a holder that dies
//! leaves its scratch item behind for good. It exists only to be measured;
//! nothing may use it to protect anything.

use crate::store::url::StoreUrl;
use crate::store::StoreError;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a waiter of the raw lock tries again.
pub(crate) const POLL: Duration = Duration::from_millis(25);

/// One client's raw lock over its own connection to the store.
#[derive(Debug)]
pub(crate) enum RawLock {
    /// A set shared by the clients of this process.
    Memory(Arc<Mutex<HashSet<String>>>),
    /// Lock files in a directory.
    File(PathBuf),
    /// Scratch items in a DynamoDB table.
    #[cfg(feature = "dynamodb")]
    DynamoDb {
        /// The table, through this client's own SDK client.
        table: crate::store::dynamodb::table::Table,
        /// The table's hash key attribute.
        hash_key: &'static str,
    },
    /// Scratch objects in an S3 bucket.
    #[cfg(feature = "s3")]
    S3 {
        /// The bucket, through this client's own SDK client.
        bucket: crate::store::s3::client::Bucket,
        /// The key prefix of the scratch objects (ends with `/`).
        prefix: String,
    },
}

/// What the raw locks of one run share: the memory kind's set.
#[derive(Debug, Default, Clone)]
pub(crate) struct RawShared {
    memory: Arc<Mutex<HashSet<String>>>,
}

impl RawLock {
    /// A raw lock for `url`, with its own connection (an SDK client of its
    /// own for DynamoDB and S3).
    pub(crate) async fn open(url: &StoreUrl, shared: &RawShared) -> Result<RawLock, StoreError> {
        match url {
            StoreUrl::Memory => Ok(RawLock::Memory(shared.memory.clone())),
            StoreUrl::File(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Misconfigured(format!(
                        "cannot create the directory {}: {e}",
                        dir.display()
                    ))
                })?;
                Ok(RawLock::File(dir.clone()))
            }
            #[cfg(feature = "dynamodb")]
            StoreUrl::DynamoDb {
                table,
                region,
                endpoint,
                format,
            } => {
                use crate::store::url::LockFormat;
                let hash_key = match format {
                    LockFormat::Statelock => "lockKey",
                    LockFormat::Terraform => "LockID",
                };
                let table = crate::store::dynamodb::table::Table::connect(
                    table,
                    region.as_deref(),
                    endpoint.as_deref(),
                    *format,
                    "the lock table's hash key",
                )
                .await?;
                Ok(RawLock::DynamoDb { table, hash_key })
            }
            #[cfg(feature = "s3")]
            StoreUrl::S3(location) => {
                let bucket = crate::store::s3::client::Bucket::connect(
                    &location.bucket,
                    location.region.as_deref(),
                    location.endpoint.as_deref(),
                )
                .await?;
                let prefix = if location.prefix.is_empty() {
                    "bench-raw/".to_string()
                } else {
                    format!("{}/bench-raw/", location.prefix)
                };
                Ok(RawLock::S3 { bucket, prefix })
            }
            #[allow(unreachable_patterns)]
            other => Err(StoreError::Misconfigured(format!(
                "this statelock cannot reach {}: it was built without that store's feature",
                crate::store::url::redact_credentials(&format!("{other:?}"))
            ))),
        }
    }

    /// Takes `name` if nobody holds it: `Ok(false)` if somebody does.
    pub(crate) async fn try_acquire(&self, name: &str) -> Result<bool, StoreError> {
        match self {
            RawLock::Memory(set) => Ok(set
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(name.to_string())),
            RawLock::File(dir) => {
                let path = dir.join(file_name(name));
                let answer = tokio::task::spawn_blocking(move || {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .map(drop)
                        .map_err(|e| (e, path))
                })
                .await
                .map_err(|e| StoreError::Unavailable(format!("a file operation failed: {e}")))?;
                match answer {
                    Ok(()) => Ok(true),
                    Err((e, _)) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                    Err((e, path)) => Err(StoreError::Misconfigured(format!(
                        "cannot create {}: {e}",
                        path.display()
                    ))),
                }
            }
            #[cfg(feature = "dynamodb")]
            RawLock::DynamoDb { table, hash_key } => {
                use crate::store::dynamodb::errors::{service_error, split_sdk_error, Failure};
                use aws_sdk_dynamodb::operation::put_item::PutItemError;
                use aws_sdk_dynamodb::types::AttributeValue;
                let result = table
                    .client
                    .put_item()
                    .table_name(&table.name)
                    .item(*hash_key, AttributeValue::S(scratch_item(name)))
                    .condition_expression("attribute_not_exists(#k)")
                    .expression_attribute_names("#k", *hash_key)
                    .customize()
                    .config_override(crate::store::dynamodb::table::write_once())
                    .send()
                    .await;
                match result {
                    Ok(_) => Ok(true),
                    Err(err) => match split_sdk_error(err, &table.ctx) {
                        Failure::Service(PutItemError::ConditionalCheckFailedException(_), _) => {
                            Ok(false)
                        }
                        Failure::Service(other, status) => {
                            Err(service_error(&other, status, &table.ctx))
                        }
                        Failure::Store(e) => Err(e),
                    },
                }
            }
            #[cfg(feature = "s3")]
            RawLock::S3 { bucket, prefix } => {
                use crate::store::s3::client::{Answer, Cond};
                let key = format!("{prefix}{}", file_name(name));
                match bucket.put(&key, b"{}".to_vec(), Cond::IfNoneMatch).await? {
                    Answer::Done(_) => Ok(true),
                    Answer::Refused(_) | Answer::Missing => Ok(false),
                }
            }
        }
    }

    /// Gives `name` back.
    pub(crate) async fn release(&self, name: &str) -> Result<(), StoreError> {
        match self {
            RawLock::Memory(set) => {
                set.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(name);
                Ok(())
            }
            RawLock::File(dir) => {
                let path = dir.join(file_name(name));
                tokio::task::spawn_blocking(move || {
                    std::fs::remove_file(&path).map_err(|e| {
                        StoreError::Unavailable(format!("cannot remove {}: {e}", path.display()))
                    })
                })
                .await
                .map_err(|e| StoreError::Unavailable(format!("a file operation failed: {e}")))?
            }
            #[cfg(feature = "dynamodb")]
            RawLock::DynamoDb { table, hash_key } => {
                use aws_sdk_dynamodb::types::AttributeValue;
                table
                    .client
                    .delete_item()
                    .table_name(&table.name)
                    .key(*hash_key, AttributeValue::S(scratch_item(name)))
                    .customize()
                    .config_override(crate::store::dynamodb::table::write_once())
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| crate::store::dynamodb::errors::sdk_error(e, &table.ctx))
            }
            #[cfg(feature = "s3")]
            RawLock::S3 { bucket, prefix } => {
                let key = format!("{prefix}{}", file_name(name));
                bucket.delete(&key, None).await.map(drop)
            }
        }
    }
}

/// The file (or object) name of raw lock `name`: never a lock record's name
/// (those are hex digests ending in `.json`).
fn file_name(name: &str) -> String {
    format!("bench-raw-{name}.lock")
}

/// The scratch item's hash key value for raw lock `name`.
#[cfg(feature = "dynamodb")]
fn scratch_item(name: &str) -> String {
    format!("statelock-bench-raw/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_raw_lock_excludes_until_released() {
        let dir = std::env::temp_dir().join(format!(
            "statelock-raw-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let shared = RawShared::default();
        for url in [StoreUrl::Memory, StoreUrl::File(dir.clone())] {
            let a = RawLock::open(&url, &shared).await.unwrap();
            let b = RawLock::open(&url, &shared).await.unwrap();
            assert!(a.try_acquire("k0").await.unwrap(), "{url:?}");
            assert!(!b.try_acquire("k0").await.unwrap(), "{url:?}");
            assert!(b.try_acquire("k1").await.unwrap(), "{url:?}");
            a.release("k0").await.unwrap();
            assert!(b.try_acquire("k0").await.unwrap(), "{url:?}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
