//! The S3 state backend (feature `s3`): state objects under a bucket prefix
//! (`PREFIX/stacks/{stack}/{env}/state.json`, `.../history/…`,
//! `.../backups/…`), each conditional put a `PutObject` with `If-None-Match:
//! *` or `If-Match: <ETag>` (the object's version is its ETag), sent once.
//!
//! The S3 service must honour those conditions: like the S3 lock store, the
//! backend runs the conditional-write probe before its first write
//! (`accept_unsafe_conditional_writes=true` in the URL skips it). It decides
//! nothing about fences or documents ([`super::fenced`] does).
//!
//! IAM: `s3:GetObject`, `s3:PutObject` on `BUCKET/PREFIX/*`, `s3:ListBucket`
//! on the bucket (history listing); `s3:DeleteObject` only for operators'
//! tools. Bucket settings: versioning is optional (history snapshots are
//! separate immutable objects); a lifecycle rule may expire
//! `PREFIX/stacks/*/*/history/` after a retention period, but must never
//! expire current `state.json` objects.

use super::backend::{ObjectVersion, PutFailure, PutIf, StateBackend};
use super::StateError;
use crate::store::s3::client::{Answer, Bucket, Cond, ETag};
use crate::store::s3::probe::Gate;
use crate::store::url::S3Location;
use crate::store::StoreError;
use async_trait::async_trait;

/// The largest state object read (a state document of 64 MiB is far beyond
/// any deployment's).
const MAX_OBJECT_BYTES: u64 = 64 << 20;

/// State objects in an S3 bucket under a prefix.
#[derive(Debug)]
pub struct S3StateBackend {
    bucket: Bucket,
    prefix: String,
    url: String,
    gate: Gate,
}

fn state_error(e: StoreError) -> StateError {
    match e {
        StoreError::Unavailable(why) => StateError::Unavailable(why),
        StoreError::Corrupt { key, reason } => StateError::Corrupt { key, reason },
        StoreError::Misconfigured(why) => StateError::Misconfigured(why),
        other => StateError::Unavailable(other.to_string()),
    }
}

impl S3StateBackend {
    /// The backend at `location` (its format must be statelock's; the
    /// client is built from the default AWS chain with the URL's region and
    /// endpoint overrides). Nothing is sent until the first request.
    pub async fn connect(location: &S3Location) -> Result<S3StateBackend, StateError> {
        if location.format != crate::store::url::LockFormat::Statelock {
            return Err(StateError::Misconfigured(
                "format=terraform names Terraform's lockfiles; a state store takes no format"
                    .into(),
            ));
        }
        let bucket = Bucket::connect(
            &location.bucket,
            location.region.as_deref(),
            location.endpoint.as_deref(),
        )
        .await
        .map_err(state_error)?;
        Ok(S3StateBackend {
            bucket,
            prefix: location.prefix.clone(),
            url: crate::store::url::redact_credentials(&location.url()),
            gate: Gate::new(location),
        })
    }

    fn object(&self, path: &str) -> String {
        if self.prefix.is_empty() {
            path.to_string()
        } else {
            format!("{}/{path}", self.prefix)
        }
    }
}

#[async_trait]
impl StateBackend for S3StateBackend {
    async fn get(&self, path: &str) -> Result<Option<(Vec<u8>, ObjectVersion)>, StateError> {
        let object = self
            .bucket
            .get(&self.object(path), MAX_OBJECT_BYTES)
            .await
            .map_err(state_error)?;
        match object {
            None => Ok(None),
            Some(o) if o.bytes.len() as u64 > MAX_OBJECT_BYTES => Err(StateError::Corrupt {
                key: self.object(path),
                reason: format!("larger than {MAX_OBJECT_BYTES} bytes"),
            }),
            Some(o) => Ok(Some((o.bytes, ObjectVersion(o.etag.0)))),
        }
    }

    async fn put(
        &self,
        path: &str,
        body: &[u8],
        condition: PutIf,
    ) -> Result<ObjectVersion, PutFailure> {
        self.gate
            .ensure(&self.bucket)
            .await
            .map_err(|e| PutFailure::Error(state_error(e)))?;
        let etag;
        let cond = match &condition {
            PutIf::Absent => Cond::IfNoneMatch,
            PutIf::Version(v) => {
                etag = ETag(v.0.clone());
                Cond::IfMatch(&etag)
            }
        };
        match self
            .bucket
            .put(&self.object(path), body.to_vec(), cond)
            .await
            .map_err(|e| PutFailure::Error(state_error(e)))?
        {
            Answer::Done(etag) => Ok(ObjectVersion(etag.0)),
            // 412, 409 (a lost race), or 404 on If-Match (gone).
            Answer::Refused(_) | Answer::Missing => Err(PutFailure::ConditionFailed),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StateError> {
        let full = self.object(prefix);
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut names: Vec<String> = self
            .bucket
            .list(&full)
            .await
            .map_err(state_error)?
            .into_iter()
            .filter_map(|k| k.strip_prefix(&strip).map(str::to_string))
            .filter(|k| k.ends_with(".json") && !k[prefix.len().min(k.len())..].contains('/'))
            .collect();
        names.sort();
        Ok(names)
    }

    async fn delete(&self, path: &str) -> Result<(), StateError> {
        match self
            .bucket
            .delete(&self.object(path), None)
            .await
            .map_err(state_error)?
        {
            Answer::Done(()) | Answer::Missing => Ok(()),
            Answer::Refused(r) => Err(StateError::Unavailable(format!(
                "the delete of {} was refused ({r})",
                self.object(path)
            ))),
        }
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}
