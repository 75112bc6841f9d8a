//! The S3 requests the S3 stores and the probe make, over one SDK client:
//! how the client is configured (timeouts, read retries, no resent writes,
//! path-style addressing for custom endpoints, request checksums only where
//! S3 requires them) and how SDK answers become either a conditional answer
//! (`Answer`) or one readable [`StoreError`] line.
//!
//! This module makes no decision about locks: it only sends the requests it
//! is asked for, with the conditions it is given, and reports what came
//! back. It must never let the SDK resend a write (a verbatim resend could
//! land after the writer's later operations), never show credentials or the
//! userinfo of an endpoint URL, and never put SDK types into the public API.

use crate::store::StoreError;
use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::{BoxError, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Connect timeout of the client: 3 s. A connection to S3 (TLS included)
/// takes milliseconds; a host that drops packets is reported as unavailable
/// after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Per-attempt timeout: 5 s, far above the latency of the small objects the
/// stores read and write, so only a request that will not be answered hits it
/// (a write is then of unknown outcome; the lock client resends it).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-operation timeout (all attempts): 12 s, which bounds a read's
/// [`READ_ATTEMPTS`].
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(12);
/// Attempts the SDK makes for a read (`GetObject`, `HeadObject`,
/// `ListObjectsV2`) that failed in a way worth retrying. Writes
/// (`PutObject`, `DeleteObject`) are always sent once.
pub const READ_ATTEMPTS: u32 = 3;

/// An object's entity tag, as S3 returned it (quotes included).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ETag(pub(crate) String);

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The condition a write carries.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cond<'a> {
    /// None (the probe's clean-up and its marker only).
    None,
    /// `If-None-Match: *`: only if no object exists.
    IfNoneMatch,
    /// `If-Match: <etag>`: only if the object's current ETag is this one.
    IfMatch(&'a ETag),
}

/// A refused condition: `412 Precondition Failed`, or `409
/// ConditionalRequestConflict` (a concurrent conditional write to the key
/// won the race). Either way the writer must read the object and decide
/// again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: u16,
    pub(crate) code: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.code.is_empty() {
            write!(f, "HTTP {}", self.status)
        } else {
            write!(f, "HTTP {} {}", self.status, self.code)
        }
    }
}

/// The answer to a (conditional) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer<T> {
    /// It was done.
    Done(T),
    /// The condition was refused (412, or 409 for a lost race).
    Refused(Refusal),
    /// There is no such object (404); for `If-Match`, the object is gone.
    Missing,
}

/// An object read whole (at most the limit asked for, plus one byte).
#[derive(Debug, Clone)]
pub(crate) struct Object {
    pub(crate) bytes: Vec<u8>,
    pub(crate) etag: ETag,
}

/// How many requests of each kind a store has sent, every attempt counted
/// (a read the SDK retried counts once per attempt).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// `GetObject`.
    pub get: u64,
    /// `HeadObject`.
    pub head: u64,
    /// `PutObject`.
    pub put: u64,
    /// `DeleteObject`.
    pub delete: u64,
    /// `ListObjectsV2`.
    pub list: u64,
    /// Anything else.
    pub other: u64,
}

impl RequestCounts {
    /// Every request.
    pub fn total(&self) -> u64 {
        self.get + self.head + self.put + self.delete + self.list + self.other
    }

    /// The requests sent since `earlier` was taken.
    pub fn since(&self, earlier: RequestCounts) -> RequestCounts {
        RequestCounts {
            get: self.get.saturating_sub(earlier.get),
            head: self.head.saturating_sub(earlier.head),
            put: self.put.saturating_sub(earlier.put),
            delete: self.delete.saturating_sub(earlier.delete),
            list: self.list.saturating_sub(earlier.list),
            other: self.other.saturating_sub(earlier.other),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    get: AtomicU64,
    head: AtomicU64,
    put: AtomicU64,
    delete: AtomicU64,
    list: AtomicU64,
    other: AtomicU64,
}

/// Counts every attempt the SDK transmits.
#[derive(Debug)]
struct CountRequests(Arc<Counters>);

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "statelock::CountRequests"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        let counter = match request.method() {
            "GET" if request.uri().contains("list-type=2") => &self.0.list,
            "GET" => &self.0.get,
            "HEAD" => &self.0.head,
            "PUT" => &self.0.put,
            "DELETE" => &self.0.delete,
            _ => &self.0.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// One bucket reached through one SDK client, with what its errors name.
/// Cheap to clone (the client is reference-counted).
#[derive(Clone)]
pub(crate) struct Bucket {
    client: Client,
    pub(crate) ctx: ErrorContext,
    counters: Arc<Counters>,
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bucket({})", self.ctx.where_())
    }
}

/// A write is sent once: the per-request override of the client's retries.
fn write_once() -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::default()
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(1))
}

impl Bucket {
    /// `bucket` through a client built from the default AWS configuration
    /// chain (environment, profile, SSO, IMDS, ...) with optional region and
    /// endpoint overrides. Nothing is sent until the first request.
    pub(crate) async fn connect(
        bucket: &str,
        region: Option<&str>,
        endpoint: Option<&str>,
    ) -> Result<Bucket, StoreError> {
        use aws_sdk_s3::config::retry::RetryConfig;
        use aws_sdk_s3::config::timeout::TimeoutConfig;
        use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
        if let Some(e) = endpoint {
            check_endpoint(e)?;
        }
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(r) = region {
            loader = loader.region(Region::new(r.to_string()));
        }
        let sdk = loader.load().await;
        let counters = Arc::new(Counters::default());
        let mut config = aws_sdk_s3::config::Builder::from(&sdk)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .operation_timeout(OPERATION_TIMEOUT)
                    .build(),
            )
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(READ_ATTEMPTS)
                    .with_initial_backoff(Duration::from_millis(50)),
            )
            // Checksums only where S3 requires them (none of the requests
            // sent here): several S3-compatible services reject the SDK's
            // default checksum headers and trailers. The body is still
            // covered by the request signature's payload hash.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .interceptor(CountRequests(counters.clone()));
        if let Some(e) = endpoint {
            config = config.endpoint_url(e).force_path_style(true);
        }
        if sdk.region().is_none() {
            if endpoint.is_some() {
                config = config.region(Region::new("us-east-1"));
            } else {
                return Err(StoreError::Misconfigured(
                    "no AWS region is configured: set AWS_REGION (or a profile's region), or add \
                     ?region=REGION to the s3:// store URL"
                        .into(),
                ));
            }
        }
        let ctx = ErrorContext {
            bucket: bucket.to_string(),
            region: region.map(str::to_string),
            endpoint: endpoint.map(redact_userinfo),
        };
        Ok(Bucket {
            client: Client::from_conf(config.build()),
            ctx,
            counters,
        })
    }

    /// The bucket name.
    pub(crate) fn name(&self) -> &str {
        &self.ctx.bucket
    }

    /// The requests sent so far.
    pub(crate) fn request_counts(&self) -> RequestCounts {
        let c = &self.counters;
        RequestCounts {
            get: c.get.load(Ordering::Relaxed),
            head: c.head.load(Ordering::Relaxed),
            put: c.put.load(Ordering::Relaxed),
            delete: c.delete.load(Ordering::Relaxed),
            list: c.list.load(Ordering::Relaxed),
            other: c.other.load(Ordering::Relaxed),
        }
    }

    /// Reads the object `key` (`None`: there is none), its body cut after
    /// `limit + 1` bytes so a huge object is never loaded whole.
    pub(crate) async fn get(&self, key: &str, limit: u64) -> Result<Option<Object>, StoreError> {
        let result = self
            .client
            .get_object()
            .bucket(&self.ctx.bucket)
            .key(key)
            .send()
            .await;
        let out = match result {
            Ok(out) => out,
            Err(err) => {
                return match classify(err, &self.ctx, "read", key) {
                    Classified::Missing => Ok(None),
                    Classified::Refused(r) => Err(StoreError::Unavailable(format!(
                        "{} answered {r} to a plain read of {}",
                        self.ctx.endpoint_name(),
                        self.ctx.object(key)
                    ))),
                    Classified::Error(e) => Err(e),
                }
            }
        };
        let etag = self.etag_of(out.e_tag(), "read", key)?;
        let bytes = read_limited(out.body, limit)
            .await
            .map_err(|cause| self.body_error(key, &cause))?;
        Ok(Some(Object { bytes, etag }))
    }

    /// `HeadObject`, conditional on `if_match` if given: the object's ETag.
    pub(crate) async fn head(
        &self,
        key: &str,
        if_match: Option<&ETag>,
    ) -> Result<Answer<ETag>, StoreError> {
        let result = self
            .client
            .head_object()
            .bucket(&self.ctx.bucket)
            .key(key)
            .set_if_match(if_match.map(|e| e.0.clone()))
            .send()
            .await;
        match result {
            Ok(out) => Ok(Answer::Done(self.etag_of(out.e_tag(), "read", key)?)),
            Err(err) => self.answer(err, "read", key),
        }
    }

    /// `PutObject` of `body` (JSON) under `cond`, sent once: the new ETag.
    pub(crate) async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        cond: Cond<'_>,
    ) -> Result<Answer<ETag>, StoreError> {
        let mut request = self
            .client
            .put_object()
            .bucket(&self.ctx.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body));
        request = match cond {
            Cond::None => request,
            Cond::IfNoneMatch => request.if_none_match("*"),
            Cond::IfMatch(etag) => request.if_match(etag.0.clone()),
        };
        let result = request
            .customize()
            .config_override(write_once())
            .send()
            .await;
        match result {
            Ok(out) => Ok(Answer::Done(self.etag_of(out.e_tag(), "write", key)?)),
            Err(err) => self.answer(err, "write", key),
        }
    }

    /// `DeleteObject` under `If-Match: if_match` if given, sent once.
    pub(crate) async fn delete(
        &self,
        key: &str,
        if_match: Option<&ETag>,
    ) -> Result<Answer<()>, StoreError> {
        let result = self
            .client
            .delete_object()
            .bucket(&self.ctx.bucket)
            .key(key)
            .set_if_match(if_match.map(|e| e.0.clone()))
            .customize()
            .config_override(write_once())
            .send()
            .await;
        match result {
            Ok(_) => Ok(Answer::Done(())),
            Err(err) => self.answer(err, "delete", key),
        }
    }

    /// The keys of every object whose key starts with `prefix`, in S3's
    /// (byte) order.
    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let result = self
                .client
                .list_objects_v2()
                .bucket(&self.ctx.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await;
            let out = match result {
                Ok(out) => out,
                Err(err) => {
                    return Err(match classify(err, &self.ctx, "list", prefix) {
                        Classified::Error(e) => e,
                        other => StoreError::Unavailable(format!(
                            "{} answered {other:?} to a listing of {}",
                            self.ctx.endpoint_name(),
                            self.ctx.object(prefix)
                        )),
                    })
                }
            };
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(String::from)),
            );
            match out.next_continuation_token() {
                Some(next) if out.is_truncated() == Some(true) && !next.is_empty() => {
                    token = Some(next.to_string())
                }
                _ => return Ok(keys),
            }
        }
    }

    /// The answer of a conditional request that failed.
    fn answer<T, E>(
        &self,
        err: SdkError<E, HttpResponse>,
        what: &str,
        key: &str,
    ) -> Result<Answer<T>, StoreError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match classify(err, &self.ctx, what, key) {
            Classified::Refused(r) => Ok(Answer::Refused(r)),
            Classified::Missing => Ok(Answer::Missing),
            Classified::Error(e) => Err(e),
        }
    }

    fn etag_of(&self, etag: Option<&str>, what: &str, key: &str) -> Result<ETag, StoreError> {
        match etag {
            Some(e) if !e.is_empty() => Ok(ETag(e.to_string())),
            _ => Err(StoreError::Misconfigured(format!(
                "{} answered a {what} of {} without an ETag: statelock needs an S3-compatible \
                 service with ETags and conditional writes (check it with `statelock s3 probe`)",
                self.ctx.endpoint_name(),
                self.ctx.object(key)
            ))),
        }
    }

    fn body_error(&self, key: &str, cause: &str) -> StoreError {
        StoreError::Unavailable(format!(
            "lost the answer of {} while reading {} ({})",
            self.ctx.endpoint_name(),
            self.ctx.object(key),
            few_words(cause)
        ))
    }
}

type HttpResponse = aws_sdk_s3::config::http::HttpResponse;

/// Reads `body` up to `limit + 1` bytes.
async fn read_limited(mut body: ByteStream, limit: u64) -> Result<Vec<u8>, String> {
    let cap = usize::try_from(limit.saturating_add(1)).unwrap_or(usize::MAX);
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            causes(&e)
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(": ")
        })?;
        let room = cap.saturating_sub(bytes.len());
        bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if bytes.len() >= cap {
            break;
        }
    }
    Ok(bytes)
}

// ---------------------------------------------------------------------------
// Errors

/// What an error message names: the bucket, and where it lives.
#[derive(Debug, Clone)]
pub(crate) struct ErrorContext {
    pub(crate) bucket: String,
    pub(crate) region: Option<String>,
    /// The endpoint override, userinfo already redacted.
    pub(crate) endpoint: Option<String>,
}

impl ErrorContext {
    /// The service, for messages: the endpoint, or S3 in the region.
    pub(crate) fn endpoint_name(&self) -> String {
        match (&self.endpoint, &self.region) {
            (Some(e), _) => e.clone(),
            (None, Some(r)) => format!("S3 in {r}"),
            (None, None) => "S3".to_string(),
        }
    }

    /// ` at ENDPOINT` / ` in REGION` / nothing.
    fn whereabouts(&self) -> String {
        match (&self.endpoint, &self.region) {
            (Some(e), _) => format!(" at {e}"),
            (None, Some(r)) => format!(" in {r}"),
            (None, None) => String::new(),
        }
    }

    /// The bucket and where it lives.
    pub(crate) fn where_(&self) -> String {
        format!("s3://{}{}", self.bucket, self.whereabouts())
    }

    /// An object, for messages: `s3://bucket/key` (a very long key cut).
    pub(crate) fn object(&self, key: &str) -> String {
        const MAX: usize = 200;
        if key.chars().count() <= MAX {
            format!("s3://{}/{key}", self.bucket)
        } else {
            let cut: String = key.chars().take(MAX - 1).collect();
            format!("s3://{}/{cut}…", self.bucket)
        }
    }

    fn endpoint_advice(&self) -> &'static str {
        if self.endpoint.is_some() {
            "check the endpoint URL"
        } else {
            "check the region"
        }
    }
}

/// A failed request, sorted.
#[derive(Debug)]
pub(crate) enum Classified {
    /// 412, or 409 `ConditionalRequestConflict`.
    Refused(Refusal),
    /// 404 for the object (not for the bucket).
    Missing,
    /// Anything else, as a store error.
    Error(StoreError),
}

/// Sorts a failed request on `key` (`what`: read, write, delete, list).
pub(crate) fn classify<E>(
    err: SdkError<E, HttpResponse>,
    ctx: &ErrorContext,
    what: &str,
    key: &str,
) -> Classified
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let err = service.into_err();
            let code = clean_code(err.code().unwrap_or(""));
            match (status, code.as_str()) {
                (412, _) | (409, "ConditionalRequestConflict") => {
                    Classified::Refused(Refusal { status, code })
                }
                (404, "NoSuchBucket") => {
                    Classified::Error(service_error(&err, status, ctx, what, key))
                }
                (404, _) => Classified::Missing,
                _ => Classified::Error(service_error(&err, status, ctx, what, key)),
            }
        }
        other => Classified::Error(failure_error(&other, ctx, what, key)),
    }
}

/// An error code made safe to show (at most 80 plain characters).
fn clean_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '#' | ':' | '-'))
        .take(80)
        .collect()
}

/// Maps a service error by its code: throttling and 5xx (but 501) are
/// [`StoreError::Unavailable`]; a missing bucket, rejected credentials,
/// access denied, a wrong region and invalid requests are
/// [`StoreError::Misconfigured`], with what to do.
fn service_error<E: ProvideErrorMetadata>(
    err: &E,
    status: u16,
    ctx: &ErrorContext,
    what: &str,
    key: &str,
) -> StoreError {
    let code = clean_code(err.code().unwrap_or(""));
    let message = few_words(err.message().unwrap_or(""));
    let detail = match (code.is_empty(), message.is_empty()) {
        (true, _) => format!("HTTP {status}"),
        (false, true) => format!("HTTP {status} {code}"),
        (false, false) => format!("HTTP {status} {code}: {message}"),
    };
    let bucket = &ctx.bucket;
    let endpoint = ctx.endpoint_name();
    let object = ctx.object(key);
    match code.as_str() {
        "NoSuchBucket" => StoreError::Misconfigured(format!(
            "the bucket {bucket:?} does not exist{}: create it (e.g. `aws s3 mb s3://{bucket}`), \
             or check the bucket name and the region",
            ctx.whereabouts()
        )),
        "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "ExpiredToken"
        | "InvalidToken"
        | "TokenRefreshRequired"
        | "InvalidSecurity"
        | "MissingSecurityHeader"
        | "UnrecognizedClientException"
        | "InvalidClientTokenId" => StoreError::Misconfigured(format!(
            "the credentials were rejected by {endpoint} ({code}): check AWS_PROFILE / \
                 AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN"
        )),
        "AuthorizationHeaderMalformed"
        | "PermanentRedirect"
        | "IllegalLocationConstraintException"
        | "AuthorizationQueryParametersError" => StoreError::Misconfigured(format!(
            "the bucket {bucket:?} is not in the region the request was sent to ({detail}): \
             add ?region=REGION (the bucket's region) to the s3:// store URL"
        )),
        "RequestTimeTooSkewed" => StoreError::Misconfigured(format!(
            "{endpoint} refused the request because this machine's clock is too far off \
             ({code}): synchronise the clock (NTP)"
        )),
        "AccessDenied" | "AllAccessDisabled" | "AccountProblem" | "Forbidden" => {
            StoreError::Misconfigured(format!(
                "access denied: cannot {what} {object} ({detail}); the IAM policy must allow \
                 s3:GetObject, s3:PutObject, s3:DeleteObject on the store's objects and \
                 s3:ListBucket on the bucket"
            ))
        }
        "NotImplemented" => StoreError::Misconfigured(format!(
            "{endpoint} does not implement a request statelock needs ({detail}) to {what} \
             {object}: it may not support conditional writes; check it with `statelock s3 probe`"
        )),
        "SlowDown"
        | "InternalError"
        | "ServiceUnavailable"
        | "RequestTimeout"
        | "Throttling"
        | "ThrottlingException"
        | "RequestThrottled"
        | "OperationAborted"
        | "TooManyRequests" => StoreError::Unavailable(format!(
            "{endpoint} is busy: cannot {what} {object} now ({detail})"
        )),
        _ if (status >= 500 && status != 501) || status == 429 => {
            StoreError::Unavailable(format!("{endpoint} failed to {what} {object} ({detail})"))
        }
        "" if status == 301 || (status == 400 && message.is_empty()) => {
            StoreError::Misconfigured(format!(
                "{endpoint} refused to {what} {object} ({detail}): is the bucket in another \
                 region? add ?region=REGION to the s3:// store URL"
            ))
        }
        "" if status == 403 => StoreError::Misconfigured(format!(
            "access denied: cannot {what} {object} ({detail}); the IAM policy must allow \
             s3:GetObject, s3:PutObject, s3:DeleteObject on the store's objects and \
             s3:ListBucket on the bucket"
        )),
        "" => StoreError::Misconfigured(format!(
            "{endpoint} answered {detail} without an S3 error code to a {what} of {object}: is \
             it an S3 endpoint?"
        )),
        _ => StoreError::Misconfigured(format!("{endpoint} refused to {what} {object} ({detail})")),
    }
}

/// Maps a failure that is not an answer of the service.
fn failure_error<E>(
    err: &SdkError<E, HttpResponse>,
    ctx: &ErrorContext,
    what: &str,
    key: &str,
) -> StoreError
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
            "cannot build an S3 request to {what} {} ({})",
            ctx.object(key),
            root_cause(err)
        )),
        SdkError::ResponseError(response) => StoreError::Unavailable(format!(
            "unreadable answer from {} to a {what} of {} (HTTP {}: {})",
            ctx.endpoint_name(),
            ctx.object(key),
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
    let endpoint = ctx.endpoint_name();
    StoreError::Unavailable(match (connect, after) {
        (true, Some(d)) => format!("cannot connect to {endpoint}: no answer within {d}"),
        (true, None) => format!("cannot connect to {endpoint}: timed out"),
        (false, Some(d)) => format!("no answer from {endpoint}: the request timed out after {d}"),
        (false, None) => format!("no answer from {endpoint}: the request timed out"),
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
            "the S3 endpoint {endpoint} is not a usable URL ({cause})"
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

/// The innermost cause of `err` that says something, in a few words.
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
pub(crate) fn few_words(text: &str) -> String {
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
    let key_id = |run: &str| {
        run.len() >= 16
            && KEY_ID_PREFIXES.iter().any(|p| run.starts_with(p))
            && run
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    };
    let out = replace_runs(&out, |c| c.is_ascii_alphanumeric(), key_id);
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

/// Refuses an endpoint that cannot work before any request is built.
fn check_endpoint(endpoint: &str) -> Result<(), StoreError> {
    let shown = redact_userinfo(endpoint);
    let bad = |why: &str| {
        Err(StoreError::Misconfigured(format!(
            "the S3 endpoint {shown:?} {why}: use e.g. http://localhost:9000 or \
             https://s3.eu-west-1.amazonaws.com"
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

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_s3::operation::put_object::PutObjectError;
    use aws_sdk_s3::primitives::SdkBody;
    use std::io::{Error as IoError, ErrorKind as Io};

    /// One layer of an error chain, as the SDK's connectors wrap them.
    #[derive(Debug)]
    struct Layer {
        text: String,
        cause: Option<BoxError>,
    }

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

    fn chain(outer: &[&str], root: BoxError) -> BoxError {
        outer.iter().rev().fold(root, |cause, t| {
            Box::new(Layer {
                text: t.to_string(),
                cause: Some(cause),
            })
        })
    }

    fn ctx(endpoint: Option<&str>, region: Option<&str>) -> ErrorContext {
        ErrorContext {
            bucket: "locks-bucket".into(),
            region: region.map(str::to_string),
            endpoint: endpoint.map(redact_userinfo),
        }
    }

    fn service(code: &str, message: &str, status: u16) -> SdkError<PutObjectError, HttpResponse> {
        let mut meta = ErrorMetadata::builder().message(message);
        if !code.is_empty() {
            meta = meta.code(code);
        }
        let response = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        SdkError::service_error(PutObjectError::generic(meta.build()), response)
    }

    fn error_of(c: Classified) -> StoreError {
        match c {
            Classified::Error(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// The message, checked to be one readable line without debug dumps.
    fn line(e: &StoreError) -> String {
        let text = e.to_string();
        assert!(!text.contains('\n'), "one line: {text}");
        assert!(text.len() < 400, "{} chars: {text}", text.len());
        for debug in [
            "{ ",
            "Some(",
            "DispatchFailure",
            "ConnectorError",
            "SdkBody",
        ] {
            assert!(!text.contains(debug), "{debug:?} in {text}");
        }
        text
    }

    fn put(err: SdkError<PutObjectError, HttpResponse>, ctx: &ErrorContext) -> Classified {
        classify(err, ctx, "write", "p/locks/k.json")
    }

    #[test]
    fn conditions_and_missing_keys_are_answers_not_errors() {
        let c = ctx(Some("http://127.0.0.1:9000"), None);
        match put(service("PreconditionFailed", "no", 412), &c) {
            Classified::Refused(r) => assert_eq!(r.to_string(), "HTTP 412 PreconditionFailed"),
            other => panic!("{other:?}"),
        }
        match put(service("ConditionalRequestConflict", "retry", 409), &c) {
            Classified::Refused(r) => assert_eq!(r.status, 409),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            put(service("NoSuchKey", "", 404), &c),
            Classified::Missing
        ));
        assert!(matches!(put(service("", "", 404), &c), Classified::Missing));
        // Another 409 is not a lost race: retry later.
        let e = error_of(put(service("OperationAborted", "busy", 409), &c));
        assert!(e.is_retryable(), "{e:?}");
    }

    #[test]
    fn service_errors_are_classified_and_say_what_to_do() {
        let c = ctx(Some("http://user:pass@127.0.0.1:9000"), None);
        let e = error_of(put(service("NoSuchBucket", "gone", 404), &c));
        let text = line(&e);
        assert!(matches!(e, StoreError::Misconfigured(_)));
        assert!(
            text.contains(
                "the bucket \"locks-bucket\" does not exist at http://***@127.0.0.1:9000"
            ) && !text.contains("pass"),
            "{text}"
        );
        for (code, status, needle) in [
            ("AccessDenied", 403, "s3:PutObject"),
            ("", 403, "access denied"),
            ("InvalidAccessKeyId", 403, "credentials were rejected"),
            ("SignatureDoesNotMatch", 403, "credentials were rejected"),
            ("AuthorizationHeaderMalformed", 400, "?region="),
            ("PermanentRedirect", 301, "?region="),
            ("NotImplemented", 501, "statelock s3 probe"),
            ("InvalidArgument", 400, "refused to write"),
            ("", 418, "is it an S3 endpoint?"),
        ] {
            let e = error_of(put(service(code, "", status), &c));
            let text = line(&e);
            assert!(matches!(e, StoreError::Misconfigured(_)), "{code}: {e:?}");
            assert!(text.contains(needle), "{code}: {text}");
        }
        for (code, status) in [
            ("SlowDown", 503),
            ("InternalError", 500),
            ("ServiceUnavailable", 503),
            ("RequestTimeout", 400),
            ("", 502),
            ("Weird", 500),
            ("", 429),
        ] {
            let e = error_of(put(service(code, "later", status), &c));
            assert!(e.is_retryable(), "{code} {status}: {e:?}");
            line(&e);
        }
    }

    #[test]
    fn credentials_never_show() {
        let key_id = "AKIAIOSFODNN7EXAMPLE";
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let c = ctx(None, Some("eu-west-1"));
        let e = error_of(put(
            service(
                "AccessDenied",
                &format!("User {key_id} with {secret} is not authorized"),
                403,
            ),
            &c,
        ));
        let text = line(&e);
        assert!(!text.contains(key_id) && !text.contains("wJalr"), "{text}");
        let failed =
            SdkError::<PutObjectError, HttpResponse>::dispatch_failure(ConnectorError::other(
                chain(
                    &["an error occurred while loading credentials"],
                    Box::new(Layer {
                        text: format!("profile: key {key_id} secret {secret} refused"),
                        cause: None,
                    }),
                ),
                None,
            ));
        let e = error_of(put(failed, &c));
        let text = line(&e);
        assert!(text.contains("no usable AWS credentials"), "{text}");
        assert!(!text.contains(key_id) && !text.contains("wJalr"), "{text}");
    }

    #[test]
    fn network_failures_are_retryable_tls_mismatches_are_not() {
        let c = ctx(Some("http://127.0.0.1:1"), None);
        let refused =
            SdkError::<PutObjectError, HttpResponse>::dispatch_failure(ConnectorError::io(chain(
                &["client error (Connect)", "tcp connect error"],
                Box::new(IoError::from(Io::ConnectionRefused)),
            )));
        let e = error_of(put(refused, &c));
        assert!(e.is_retryable());
        assert!(
            line(&e).contains("cannot connect to http://127.0.0.1:1 (connection refused)"),
            "{e}"
        );
        let https = ctx(Some("https://127.0.0.1:9000"), None);
        let tls =
            SdkError::<PutObjectError, HttpResponse>::dispatch_failure(ConnectorError::io(chain(
                &["client error (Connect)", "TLS handshake failed"],
                Box::new(IoError::new(
                    Io::InvalidData,
                    "received corrupt message of type InvalidContentType",
                )),
            )));
        let e = error_of(put(tls, &https));
        assert!(matches!(e, StoreError::Misconfigured(_)));
        assert!(line(&e).ends_with("is the endpoint http?"), "{e}");
        let timeout = SdkError::<PutObjectError, HttpResponse>::timeout_error(Box::new(Layer {
            text: "operation timeout (all attempts including retries) occurred after 12s".into(),
            cause: None,
        }));
        let e = error_of(put(timeout, &c));
        assert!(
            line(&e)
                .contains("no answer from http://127.0.0.1:1: the request timed out after 12 s"),
            "{e}"
        );
    }

    #[test]
    fn endpoints_are_checked_before_any_request() {
        for good in [
            "http://localhost:9000",
            "https://s3.eu-west-1.amazonaws.com",
            "http://[::1]:9000/",
        ] {
            assert_eq!(check_endpoint(good), Ok(()), "{good}");
        }
        for bad in [
            "127.0.0.1:9000",
            "ftp://h",
            "http://",
            "http://exa mple",
            "http://u:secret@",
        ] {
            match check_endpoint(bad) {
                Err(StoreError::Misconfigured(why)) => assert!(!why.contains("secret"), "{why}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert_eq!(
            redact_userinfo("http://user:pass@host:9000/x"),
            "http://***@host:9000/x"
        );
    }

    #[test]
    fn request_counts_subtract() {
        let later = RequestCounts {
            get: 3,
            put: 2,
            ..RequestCounts::default()
        };
        let earlier = RequestCounts {
            get: 1,
            ..RequestCounts::default()
        };
        assert_eq!(
            later.since(earlier),
            RequestCounts {
                get: 2,
                put: 2,
                ..RequestCounts::default()
            }
        );
        assert_eq!(later.total(), 5);
    }
}
