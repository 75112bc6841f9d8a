//! Opening a store from its URL (see [`super::url`]).

use super::url::StoreUrl;
use super::{LockStore, StoreError};
use std::sync::Arc;

/// Opens the lock store named by `url`.
pub async fn open_lock_store(url: &StoreUrl) -> Result<Arc<dyn LockStore>, StoreError> {
    match url {
        StoreUrl::File(dir) => Ok(Arc::new(super::file::FileStore::open(dir.clone())?)),
        StoreUrl::Memory => Ok(Arc::new(super::memory::MemoryStore::new())),
        StoreUrl::DynamoDb { .. } => open_dynamodb(url).await,
        StoreUrl::S3(_) => open_s3(url).await,
        StoreUrl::Quorum(members) => {
            let mut stores = Vec::with_capacity(members.len());
            for member in members {
                stores.push(Box::pin(open_lock_store(member)).await?);
            }
            Ok(Arc::new(super::quorum::QuorumStore::new(stores)?))
        }
    }
}

#[cfg(feature = "dynamodb")]
async fn open_dynamodb(url: &StoreUrl) -> Result<Arc<dyn LockStore>, StoreError> {
    super::dynamodb::open(url).await
}

#[cfg(not(feature = "dynamodb"))]
async fn open_dynamodb(_url: &StoreUrl) -> Result<Arc<dyn LockStore>, StoreError> {
    Err(StoreError::Misconfigured(
        "this statelock was built without the `dynamodb` feature".into(),
    ))
}

#[cfg(feature = "s3")]
async fn open_s3(url: &StoreUrl) -> Result<Arc<dyn LockStore>, StoreError> {
    super::s3::open(url).await
}

#[cfg(not(feature = "s3"))]
async fn open_s3(_url: &StoreUrl) -> Result<Arc<dyn LockStore>, StoreError> {
    Err(StoreError::Misconfigured(
        "this statelock was built without the `s3` feature".into(),
    ))
}
