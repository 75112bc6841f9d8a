//! The S3 lock stores (feature `s3`): [`S3LockStore`] keeps statelock's own
//! records as JSON objects in a bucket and performs each [`LockOp`] as one
//! conditional `PutObject` (`If-None-Match: *` to create a record, `If-Match:
//! <ETag>` to replace the version the op's condition was checked against);
//! [`terraform::TerraformS3Store`] speaks Terraform's `.tflock` lockfile
//! protocol; [`probe`] checks that a service honours those conditions.
//!
//! This module maps records to objects and S3 answers to [`StoreError`]s. It
//! must not make protocol decisions: whether an op applies is decided by
//! [`apply_reference`] on the record read, and the record written is
//! [`LockOp::apply`] of it. It must never overwrite an object it cannot read
//! as a record, never delete a record except in [`LockStore::purge`], and
//! never let the SDK resend a write.
//!
//! # Object layout
//! Under the URL's `PREFIX` (`s3://BUCKET/PREFIX`; without one, at the top of
//! the bucket):
//!
//! | object | content |
//! | --- | --- |
//! | `PREFIX/locks/<key>.json` | the record of one key, `{"format":"statelock-lock-v1","record":{...}}` (pretty JSON, the same envelope as the directory store's files) |
//! | `PREFIX/locks/sha256-<hex>.json` | the same, for a key whose readable name would exceed S3's 1024-byte key limit (`<hex>`: SHA-256 of the key) |
//! | `PREFIX/token-floor.json` | the token floor, `{"format":"statelock-token-floor-v1","floor":N}` (absent: 0) |
//! | `PREFIX/.statelock-probe/passed.json` | the marker of a passed conditional-write probe ([`probe`]) |
//!
//! `<key>` is the lock key percent-encoded so that it stays readable in the
//! console: letters, digits, `-_.!*'():@=,` and `/` between two non-empty
//! segments are kept, every other byte is `%XX` (a segment of dots only is
//! encoded whole, and a leading `s` of `sha256-` too, so no name is ever
//! ambiguous). The body carries the key: a record whose key does not belong
//! at the name it was read from is [`StoreError::Corrupt`], as is any body
//! that is not a record; neither is ever overwritten, and [`LockStore::list`]
//! reports them in [`Listing::damaged`].
//!
//! # Requests
//! - A grant of an absent record reads the token floor object first (it must
//!   still be the floor the grant names, else the answer is a conflict with
//!   no record), then creates the record with `If-None-Match: *`.
//! - Every other op replaces the record with `If-Match: <ETag>` of the
//!   version its condition was checked against.
//! - The store caches, per key, the record and ETag of the last version it
//!   read or wrote. When the cached record satisfies the op's condition the
//!   op is one request (the steady state: the client reads with
//!   [`LockStore::get`], then heartbeats, releases or grants). A refused
//!   condition (412, or 409 `ConditionalRequestConflict`: a concurrent write
//!   won) costs one `GetObject` of the current record, then the op is decided
//!   again on it; a 404 means the record is gone, and the op is decided on
//!   "absent". Without a cached record the op reads first.
//! - Writes are sent once: the writer-chosen record version is in the body,
//!   so a resend after a lost answer finds its own write (refused, read,
//!   `Conflict` carrying the op's own version, which the client resolves as
//!   applied). Reads may be resent by the SDK.
//! - [`LockStore::purge`] reads the record, raises the floor object (a
//!   conditional write loop that never lowers it), then deletes the record
//!   with `If-Match` of the version it checked.
//!
//! A grant of an absent record is two requests, not one atomic step: a purge
//! of the same key that raised the floor and deleted the record *between*
//! them could let the grant install a token at or below the floor. Only
//! grants naming a floor read before such a purge are exposed, and a purge
//! only deletes records released long before (`statelock purge
//! --older-than`, at least an hour), so this needs a key created, released
//! and purged within one request's time.
//!
//! # IAM permissions
//! `s3:GetObject`, `s3:PutObject` and `s3:DeleteObject` on
//! `arn:aws:s3:::BUCKET/PREFIX/*` (delete: purge and the probe's clean-up),
//! `s3:ListBucket` on `arn:aws:s3:::BUCKET` (for `statelock locks`, condition
//! `s3:prefix` = `PREFIX/locks/` if you restrict it). A bucket policy may
//! require the conditional headers (`s3:if-none-match`, `s3:if-match`) on
//! writes under `PREFIX/locks/`.
//!
//! # Bucket settings
//! Versioning is not needed. On a versioned bucket every heartbeat leaves a
//! noncurrent version of its record (about 4,300 a day for a 20 s lease): a
//! lifecycle rule expiring **noncurrent** versions under `PREFIX/locks/`
//! (e.g. after a day) is fine and recommended. A rule expiring **current**
//! objects under `PREFIX/` must never be set: deleting a record restarts its
//! key's fencing tokens, and deleting the floor object forgets purged
//! tokens. Old released records are removed only by `statelock purge`.
//!
//! # Timeouts and errors
//! As the DynamoDB store: connect 3 s, attempt 5 s, operation 12 s
//! ([`client::CONNECT_TIMEOUT`], ...); reads are tried up to
//! [`client::READ_ATTEMPTS`] times, writes once. Every error is one line
//! naming what failed (bucket, object, endpoint) and the cause, without
//! credentials or endpoint userinfo. Unreachable services, timeouts, 5xx and
//! throttling are [`StoreError::Unavailable`] (retryable); a TLS mismatch, a
//! bad endpoint, a missing bucket, access denied, rejected credentials and a
//! wrong region are [`StoreError::Misconfigured`]. With an endpoint override
//! requests use path-style addressing, and request checksums are only sent
//! where S3 requires them (several S3-compatible services reject the SDK's
//! default ones).

pub mod client;
pub mod probe;
pub mod terraform;

pub use client::RequestCounts;

use self::client::{Answer, Bucket, Cond, ETag};
use self::probe::Gate;
use super::record_json::{self, MAX_RECORD_BYTES};
use super::url::{LockFormat, S3Location, StoreUrl};
use super::{
    apply_reference, check_floor, purge_reference, DamagedRecord, Listing, LockStore, StoreError,
};
use crate::protocol::{FencingToken, LockKey, LockOp, LockRecord, OpKind, RecordVersion};
use crate::sync::Mutex;
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// The longest S3 object key, in bytes.
pub const MAX_OBJECT_KEY_BYTES: usize = 1024;

/// How many times one op reacts to a concurrent change (a refused condition)
/// before it reports the store as unavailable.
const MAX_ROUNDS: usize = 8;

/// How many keys the cache holds before it starts over.
const CACHE_LIMIT: usize = 4096;

/// How many records a listing reads at once.
const LIST_CONCURRENCY: usize = 16;

/// The largest token floor object read, in bytes.
const FLOOR_MAX_BYTES: u64 = 4096;

/// Where a store's objects live under its prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    /// `PREFIX/`, or empty.
    root: String,
}

impl Layout {
    fn new(prefix: &str) -> Layout {
        Layout {
            root: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        }
    }

    /// `PREFIX/locks/`.
    fn locks_dir(&self) -> String {
        format!("{}locks/", self.root)
    }

    /// The object holding the record of `key`.
    fn record_name(&self, key: &LockKey) -> String {
        let dir = self.locks_dir();
        let readable = format!("{dir}{}.json", encode_key(key.as_str()));
        if readable.len() <= MAX_OBJECT_KEY_BYTES {
            readable
        } else {
            let hash = hex::encode(Sha256::digest(key.as_str().as_bytes()));
            format!("{dir}sha256-{hash}.json")
        }
    }

    /// The object holding the token floor.
    fn floor_name(&self) -> String {
        format!("{}token-floor.json", self.root)
    }
}

/// True for bytes a record name keeps as they are.
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.!*'():@=,".contains(&b)
}

/// The readable, injective name of `key` (see the module docs).
fn encode_key(key: &str) -> String {
    use std::fmt::Write as _;
    let segments: Vec<&str> = key.split('/').collect();
    let mut out = String::with_capacity(key.len() + 8);
    for (i, segment) in segments.iter().enumerate() {
        if i > 0 {
            let between = !segments[i - 1].is_empty() && !segment.is_empty();
            out.push_str(if between { "/" } else { "%2F" });
        }
        let dots = segment.bytes().all(|b| b == b'.');
        for b in segment.bytes() {
            if plain(b) && !dots {
                out.push(char::from(b));
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    if out.starts_with("sha256-") {
        out.replace_range(0..1, "%73");
    }
    out
}

/// A version of a record as this store last saw it.
#[derive(Debug, Clone)]
struct Seen {
    record: LockRecord,
    etag: ETag,
}

/// A lock store in an S3 bucket, `s3://BUCKET/PREFIX` (the module
/// documentation has the details).
///
/// - Objects: `PREFIX/locks/<percent-encoded key>.json` (or
///   `PREFIX/locks/sha256-<hex>.json` for very long keys) per record,
///   `PREFIX/token-floor.json`, and the probe's `PREFIX/.statelock-probe/`.
/// - IAM: `s3:GetObject`, `s3:PutObject`, `s3:DeleteObject` on
///   `BUCKET/PREFIX/*`; `s3:ListBucket` on the bucket.
/// - Bucket: versioning optional; with versioning, expire **noncurrent**
///   versions under `PREFIX/locks/` (every heartbeat makes one); never set a
///   rule that expires current objects under `PREFIX/`.
///
/// Any number of stores, in any number of processes, may use one bucket and
/// prefix at once. Share one store behind an `Arc`: its per-key ETag cache
/// makes heartbeats, releases and grants one request each.
pub struct S3LockStore {
    bucket: Bucket,
    layout: Layout,
    url: String,
    cache: Mutex<HashMap<LockKey, Seen>>,
    gate: Gate,
}

impl std::fmt::Debug for S3LockStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3LockStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl S3LockStore {
    /// A store at `location` (its format must be statelock's) with a client
    /// from the default AWS configuration chain (environment, profile, SSO,
    /// instance role...) and the location's region and endpoint overrides.
    /// Nothing is sent until the first operation; the first write probes the
    /// service ([`probe`]) unless the bucket's marker says it passed.
    pub async fn connect(location: &S3Location) -> Result<S3LockStore, StoreError> {
        if location.format != LockFormat::Statelock {
            return Err(StoreError::Misconfigured(format!(
                "{} holds Terraform lockfiles: open it with TerraformS3Store",
                location.url()
            )));
        }
        let bucket = Bucket::connect(
            &location.bucket,
            location.region.as_deref(),
            location.endpoint.as_deref(),
        )
        .await?;
        Ok(S3LockStore {
            bucket,
            layout: Layout::new(&location.prefix),
            url: location.url(),
            cache: Mutex::new(HashMap::new()),
            gate: Gate::new(location),
        })
    }

    /// The object key holding the record of `key`.
    pub fn record_object(&self, key: &LockKey) -> String {
        self.layout.record_name(key)
    }

    /// The object key holding the token floor.
    pub fn floor_object(&self) -> String {
        self.layout.floor_name()
    }

    /// The requests this store has sent so far, by kind (every attempt
    /// counted, the probe's included).
    pub fn request_counts(&self) -> RequestCounts {
        self.bucket.request_counts()
    }

    fn cached(&self, key: &LockKey) -> Option<Seen> {
        self.cache.lock().get(key).cloned()
    }

    fn remember(&self, seen: &Seen) {
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_LIMIT && !cache.contains_key(&seen.record.key) {
            cache.clear();
        }
        cache.insert(seen.record.key.clone(), seen.clone());
    }

    fn forget(&self, key: &LockKey) {
        self.cache.lock().remove(key);
    }

    /// Reads the record of `key` and its ETag (updating the cache).
    async fn read(&self, key: &LockKey) -> Result<Option<Seen>, StoreError> {
        let name = self.layout.record_name(key);
        let object = match self.bucket.get(&name, MAX_RECORD_BYTES).await {
            Ok(object) => object,
            Err(e) => {
                self.forget(key);
                return Err(e);
            }
        };
        let Some(object) = object else {
            self.forget(key);
            return Ok(None);
        };
        match self.decode_at(&name, &object.bytes, key.as_str()) {
            Ok(record) => {
                let seen = Seen {
                    record,
                    etag: object.etag,
                };
                self.remember(&seen);
                Ok(Some(seen))
            }
            Err(e) => {
                self.forget(key);
                Err(e)
            }
        }
    }

    /// Parses the record object `name`; `label` names it in errors.
    fn decode_at(&self, name: &str, bytes: &[u8], label: &str) -> Result<LockRecord, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            key: label.to_string(),
            reason: format!("{}: {reason}", self.bucket.ctx.object(name)),
        };
        let record = record_json::decode(bytes).map_err(corrupt)?;
        let belongs = self.layout.record_name(&record.key);
        if belongs != name {
            return Err(corrupt(format!(
                "it holds the record of key {:?}, which belongs at {belongs}",
                record.key.as_str()
            )));
        }
        Ok(record)
    }

    /// The token floor and the ETag of its object (`None`: no object).
    async fn read_floor(&self) -> Result<(FencingToken, Option<ETag>), StoreError> {
        let name = self.layout.floor_name();
        match self.bucket.get(&name, FLOOR_MAX_BYTES).await? {
            None => Ok((FencingToken(0), None)),
            Some(object) => {
                let floor = record_json::decode_floor(&object.bytes).map_err(|reason| {
                    StoreError::Corrupt {
                        key: name.clone(),
                        reason: format!("{}: {reason}", self.bucket.ctx.object(&name)),
                    }
                })?;
                Ok((floor, Some(object.etag)))
            }
        }
    }

    /// Raises the token floor to at least `to` (never lowers it).
    async fn raise_floor(&self, to: FencingToken) -> Result<(), StoreError> {
        let name = self.layout.floor_name();
        for _ in 0..MAX_ROUNDS {
            let (floor, etag) = self.read_floor().await?;
            if floor >= to {
                return Ok(());
            }
            let body = record_json::encode_floor(to)?;
            let cond = match &etag {
                None => Cond::IfNoneMatch,
                Some(etag) => Cond::IfMatch(etag),
            };
            match self.bucket.put(&name, body, cond).await? {
                Answer::Done(_) => return Ok(()),
                // Raised (or removed) meanwhile: read it again.
                Answer::Refused(_) | Answer::Missing => {}
            }
        }
        Err(StoreError::Unavailable(format!(
            "the token floor {} kept changing while it was being raised; try again",
            self.bucket.ctx.object(&name)
        )))
    }

    async fn apply_op(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
        let key = &op.key;
        let name = self.layout.record_name(key);
        // The version the op is decided on, and whether it was just read
        // (a cached version may be stale: a failed condition on it is
        // checked against a fresh read before it is reported).
        let (mut current, mut fresh) = match self.cached(key) {
            Some(seen) => (Some(seen), false),
            None => (self.read(key).await?, true),
        };
        for _ in 0..MAX_ROUNDS {
            let next = match apply_reference(op, current.as_ref().map(|s| &s.record)) {
                Ok(next) => next,
                Err(conflict) if fresh => return Err(conflict),
                Err(_) => {
                    current = self.read(key).await?;
                    fresh = true;
                    continue;
                }
            };
            let answer = match &current {
                None => {
                    // A grant of an absent record: the floor it names must
                    // still be the store's.
                    if let OpKind::Acquire { .. } = op.kind {
                        let (floor, _) = self.read_floor().await?;
                        check_floor(op, None, floor)?;
                    }
                    let body = record_json::encode(&next)?;
                    self.bucket.put(&name, body, Cond::IfNoneMatch).await
                }
                Some(seen) => {
                    let body = record_json::encode(&next)?;
                    self.bucket
                        .put(&name, body, Cond::IfMatch(&seen.etag))
                        .await
                }
            };
            match answer {
                Ok(Answer::Done(etag)) => {
                    self.remember(&Seen {
                        record: next.clone(),
                        etag,
                    });
                    return Ok(next);
                }
                // Another write won: read what is there and decide again.
                Ok(Answer::Refused(_)) => current = self.read(key).await?,
                // `If-Match` on a record that is gone.
                Ok(Answer::Missing) => {
                    self.forget(key);
                    current = None;
                }
                Err(e) => {
                    // The write may have landed: the cached version is stale.
                    self.forget(key);
                    return Err(e);
                }
            }
            fresh = true;
        }
        Err(StoreError::Unavailable(format!(
            "the record {} kept changing during the {}; try again",
            self.bucket.ctx.object(&name),
            op.kind.name()
        )))
    }

    /// Reads the records `names` (listing order) with a few requests at once.
    async fn read_all(&self, names: Vec<String>) -> Result<Listing, StoreError> {
        let mut listing = Listing::default();
        for chunk in names.chunks(LIST_CONCURRENCY) {
            let mut reads = tokio::task::JoinSet::new();
            for name in chunk {
                let (bucket, name) = (self.bucket.clone(), name.clone());
                reads.spawn(async move {
                    let object = bucket.get(&name, MAX_RECORD_BYTES).await;
                    (name, object)
                });
            }
            while let Some(joined) = reads.join_next().await {
                let (name, object) = joined.map_err(|e| {
                    StoreError::Unavailable(format!("a read of the listing failed: {e}"))
                })?;
                let Some(object) = object? else {
                    // Purged since it was listed.
                    continue;
                };
                match self.decode_at(&name, &object.bytes, &name) {
                    Ok(record) => listing.records.push(record),
                    Err(StoreError::Corrupt { key, reason }) => {
                        listing.damaged.push(DamagedRecord { key, reason })
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        listing.records.sort_by(|a, b| a.key.cmp(&b.key));
        listing.damaged.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listing)
    }
}

#[async_trait]
impl LockStore for S3LockStore {
    async fn apply(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
        self.gate.ensure(&self.bucket).await?;
        self.apply_op(op).await
    }

    async fn get(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError> {
        Ok(self.read(key).await?.map(|seen| seen.record))
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        let dir = self.layout.locks_dir();
        let mut names = Vec::new();
        let mut strays = Vec::new();
        for name in self.bucket.list(&dir).await? {
            if name.ends_with('/') {
                // A "folder" placeholder made by a console.
                continue;
            }
            if name.ends_with(".json") {
                names.push(name);
            } else {
                strays.push(DamagedRecord {
                    reason: format!(
                        "{}: not a lock record (this store only writes NAME.json objects under {dir})",
                        self.bucket.ctx.object(&name)
                    ),
                    key: name,
                });
            }
        }
        let mut listing = self.read_all(names).await?;
        listing.damaged.extend(strays);
        listing.damaged.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listing)
    }

    async fn token_floor(&self) -> Result<FencingToken, StoreError> {
        Ok(self.read_floor().await?.0)
    }

    async fn purge(
        &self,
        key: &LockKey,
        observed: RecordVersion,
    ) -> Result<LockRecord, StoreError> {
        self.gate.ensure(&self.bucket).await?;
        let current = self.read(key).await?;
        let purged = purge_reference(current.as_ref().map(|s| &s.record), observed)?;
        let Some(seen) = current else {
            return Err(StoreError::conflict(None));
        };
        self.raise_floor(purged.token).await?;
        let name = self.layout.record_name(key);
        let answer = self.bucket.delete(&name, Some(&seen.etag)).await;
        self.forget(key);
        match answer? {
            Answer::Done(()) => Ok(purged),
            Answer::Refused(_) => Err(StoreError::conflict(
                self.read(key).await?.map(|seen| seen.record),
            )),
            Answer::Missing => Err(StoreError::conflict(None)),
        }
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
    fn shared_name(&self) -> Option<String> {
        Some(self.describe())
    }
    fn queues(&self) -> bool {
        true
    }
}

/// Opens the S3 store named by `url` (either format). Used by
/// [`super::open_lock_store`].
pub(crate) async fn open(url: &StoreUrl) -> Result<Arc<dyn LockStore>, StoreError> {
    match url {
        StoreUrl::S3(location) if location.format == LockFormat::Terraform => Ok(Arc::new(
            terraform::TerraformS3Store::connect(location).await?,
        )),
        StoreUrl::S3(location) => Ok(Arc::new(S3LockStore::connect(location).await?)),
        other => Err(StoreError::Misconfigured(format!(
            "{other:?} is not an S3 store URL"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn name(prefix: &str, key: &str) -> String {
        Layout::new(prefix).record_name(&LockKey::new(key).unwrap())
    }

    #[test]
    fn record_names_are_readable() {
        assert_eq!(
            name("team/a", "stack:web:env:prod"),
            "team/a/locks/stack:web:env:prod.json"
        );
        assert_eq!(name("", "db/migrate"), "locks/db/migrate.json");
        assert_eq!(name("p", "a b%c+d"), "p/locks/a%20b%25c%2Bd.json");
        assert_eq!(name("p", "ünï"), "p/locks/%C3%BCn%C3%AF.json");
        assert_eq!(Layout::new("p").floor_name(), "p/token-floor.json");
        assert_eq!(Layout::new("").floor_name(), "token-floor.json");
    }

    #[test]
    fn record_names_never_collide() {
        let keys = [
            "a/b",
            "a%2Fb",
            "a//b",
            "a/%2Fb",
            "/a",
            "%2Fa",
            "a/",
            "a%2F",
            "..",
            "%2E%2E",
            "./a",
            "a/../b",
            "sha256-0000000000000000000000000000000000000000000000000000000000000000",
            "%73ha256-0000000000000000000000000000000000000000000000000000000000000000",
            "x.json",
            "x",
        ];
        let names: HashSet<String> = keys.iter().map(|k| name("p", k)).collect();
        assert_eq!(names.len(), keys.len(), "{names:?}");
        for n in &names {
            let inner = n.trim_start_matches("p/locks/");
            assert!(!inner.starts_with('/') && !inner.contains("//"), "{n}");
            assert!(
                !inner.split('/').any(|s| s == "." || s == ".."),
                "a dot segment could be normalised away: {n}"
            );
            assert!(!inner.starts_with("sha256-"), "{n}");
        }
    }

    #[test]
    fn long_keys_are_hashed() {
        let long = "k".repeat(1020);
        let n = name("p", &long);
        assert!(
            n.starts_with("p/locks/sha256-") && n.ends_with(".json"),
            "{n}"
        );
        assert_eq!(n.len(), "p/locks/sha256-".len() + 64 + ".json".len());
        // Percent-encoding can push a shorter key over the limit too.
        let wide = "é".repeat(300);
        assert!(name("p", &wide).contains("sha256-"));
        let fits = "k".repeat(1000);
        assert_eq!(name("p", &fits), format!("p/locks/{fits}.json"));
    }
}
