//! What the AWS stores (DynamoDB, S3) share about their errors: where a
//! service lives for messages ([`Whereabouts`]), the classification of
//! failures to send a request or to get its answer (connection, TLS, DNS,
//! credentials, timeouts) into retryable or not, and the wording of causes
//! in a few words with credentials and URL userinfo scrubbed.
//!
//! This module sends nothing and knows no service's error codes (each
//! adapter maps its own); nothing it returns may show a credential.

use crate::store::StoreError;

/// Where a service lives, for messages.
pub(crate) trait Whereabouts {
    /// The service's name: `DynamoDB`, `S3`.
    fn service(&self) -> &'static str;
    /// The region, if one was given.
    fn region(&self) -> Option<&str>;
    /// The endpoint override (userinfo already redacted), if any.
    fn endpoint(&self) -> Option<&str>;

    /// The endpoint requests go to, for messages: the override, or
    /// "SERVICE in REGION".
    fn endpoint_name(&self) -> String {
        match (self.endpoint(), self.region()) {
            (Some(e), _) => e.to_string(),
            (None, Some(r)) => format!("{} in {r}", self.service()),
            (None, None) => self.service().to_string(),
        }
    }

    /// ` at ENDPOINT`, ` in REGION` or nothing.
    fn whereabouts(&self) -> String {
        match (self.endpoint(), self.region()) {
            (Some(e), _) => format!(" at {e}"),
            (None, Some(r)) => format!(" in {r}"),
            (None, None) => String::new(),
        }
    }

    /// What to check when the endpoint's host is wrong.
    fn endpoint_advice(&self) -> &'static str {
        if self.endpoint().is_some() {
            "check the endpoint URL"
        } else {
            "check the region"
        }
    }
}

/// A timeout: of the connection (`connect timeout`) or of the request.
pub(crate) fn timed_out(
    err: &(dyn std::error::Error + 'static),
    ctx: &impl Whereabouts,
) -> StoreError {
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
pub(crate) fn transport_error(
    err: &(dyn std::error::Error + 'static),
    io: bool,
    user: bool,
    ctx: &impl Whereabouts,
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
        } else if ctx.endpoint().is_some_and(|e| e.starts_with("https://")) {
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
            "the {} endpoint {endpoint} is not a usable URL ({cause})",
            ctx.service()
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
pub(crate) fn causes<'a>(
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
pub(crate) fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
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
pub(crate) fn readable_duration(text: &str) -> String {
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
pub(crate) fn scrub(text: &str) -> String {
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

/// Refuses an endpoint that cannot work before any request is built;
/// `example` shows a good one.
pub(crate) fn check_endpoint(
    endpoint: &str,
    service: &str,
    example: &str,
) -> Result<(), StoreError> {
    let shown = redact_userinfo(endpoint);
    let bad = |why: &str| {
        Err(StoreError::Misconfigured(format!(
            "the {service} endpoint {shown:?} {why}: use e.g. {example}"
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
