//! SDK errors of the DynamoDB stores (feature `dynamodb`) as [`StoreError`]s:
//! one line each, classified by whether retrying can help.
//!
//! This module only classifies and words errors: it sends no request, and
//! nothing it returns may show the SDK's debug output or a credential. It
//! imports nothing from the rest of the DynamoDB adapter.
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

use crate::store::url::LockFormat;
use crate::store::StoreError;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};

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
pub(crate) mod tests {
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

    /// What `ValidationException` messages append (a lock table's).
    const KEY_SCHEMA_HINT: &str = "a statelock lock table has the hash key `lockKey` (type S)";

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
    pub(crate) fn line(e: &StoreError) -> String {
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
}
