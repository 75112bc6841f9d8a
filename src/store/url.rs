//! Store URLs: how users name a store (`--store` / `STATELOCK_STORE`), and
//! where the store is when they name none.
//!
//! - `file://PATH` — a directory on this machine. A relative PATH is taken
//!   from the working directory once, when the URL is resolved
//!   ([`StoreUrl::into_absolute`]) or the store opened; messages show the
//!   absolute path.
//! - `mem://` — an in-process store (tests and demos; forgets on exit).
//! - `dynamodb://TABLE?region=R&endpoint=URL[&format=terraform]` — a DynamoDB
//!   table (feature `dynamodb`).
//!
//! The default store ([`default_store_url`]) is a per-user directory that
//! does not depend on the working directory, so two processes of one user
//! started from different directories use the same locks.
//!
//! This module only computes names and paths: it must not touch the
//! filesystem or read the process environment itself (the environment is
//! passed in, so the resolution is testable without changing it).

use super::StoreError;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

/// The variable naming statelock's own directory; the default store is its
/// [`DEFAULT_STORE_SUBDIR`] subdirectory. Takes precedence over the XDG and
/// home locations.
pub const STATELOCK_HOME_ENV: &str = "STATELOCK_HOME";

/// The subdirectory of statelock's directory that holds the default store's
/// lock records. A subdirectory rather than the directory itself, so the
/// store's directory holds only the store's files even when
/// `STATELOCK_HOME` points at a directory that holds other things.
pub const DEFAULT_STORE_SUBDIR: &str = "locks";

/// Where the default store lives, from the environment `env` (a lookup such
/// as `|name| std::env::var_os(name)`), in order of precedence:
///
/// 1. `$STATELOCK_HOME/locks`, if `STATELOCK_HOME` is set (it must then be an
///    absolute path: a relative one would depend on the working directory);
/// 2. `$XDG_STATE_HOME/statelock/locks`, if `XDG_STATE_HOME` is an absolute
///    path (a relative one is ignored, as the XDG specification says);
/// 3. `$HOME/.local/state/statelock/locks`, if `HOME` is an absolute path.
///
/// Empty variables count as unset. If none applies the error is
/// [`StoreError::Misconfigured`], telling the user to pass `--store`.
///
/// The location is per user: processes of different users (or on different
/// machines) do not exclude each other through it; give them a shared
/// `--store` for that.
pub fn default_store_dir(env: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf, StoreError> {
    let var = |name: &str| {
        env(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    if let Some(home) = var(STATELOCK_HOME_ENV) {
        if !home.is_absolute() {
            return Err(StoreError::Misconfigured(format!(
                "{STATELOCK_HOME_ENV} is the relative path {}, which would depend on the \
                 working directory; set it to an absolute path, or pass --store file:///DIR",
                home.display()
            )));
        }
        return Ok(home.join(DEFAULT_STORE_SUBDIR));
    }
    if let Some(state) = var("XDG_STATE_HOME").filter(|p| p.is_absolute()) {
        return Ok(state.join("statelock").join(DEFAULT_STORE_SUBDIR));
    }
    if let Some(home) = var("HOME").filter(|p| p.is_absolute()) {
        return Ok(home
            .join(".local/state/statelock")
            .join(DEFAULT_STORE_SUBDIR));
    }
    Err(StoreError::Misconfigured(format!(
        "no default lock store: none of {STATELOCK_HOME_ENV}, XDG_STATE_HOME and HOME is set \
         to an absolute path; pass --store file:///DIR (or set STATELOCK_STORE, or \
         {STATELOCK_HOME_ENV})"
    )))
}

/// The default store's URL: a `file://` store in [`default_store_dir`].
pub fn default_store_url(env: impl Fn(&str) -> Option<OsString>) -> Result<StoreUrl, StoreError> {
    default_store_dir(env).map(StoreUrl::File)
}

/// Which lock format a DynamoDB table or an S3 bucket holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockFormat {
    /// statelock's own records (leases, tokens).
    Statelock,
    /// Terraform's S3-backend locks: DynamoDB lock items (`LockID` + `Info`),
    /// or `<state key>.tflock` lockfiles in S3.
    Terraform,
}

/// The URL parameter that lets an S3 store be used although the bucket's
/// service failed the conditional-write probe (or without probing it). See
/// [`S3Location::accept_unsafe_conditional_writes`].
pub const ACCEPT_UNSAFE_CONDITIONAL_WRITES: &str = "accept_unsafe_conditional_writes";

/// Where an S3 store lives: `s3://BUCKET[/PREFIX][?region=R&endpoint=URL&format=terraform]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// The key prefix every object of the store lives under: empty, or
    /// `/`-separated segments without a leading or trailing `/` (taken
    /// literally from the URL: no percent-decoding).
    pub prefix: String,
    /// Region override.
    pub region: Option<String>,
    /// Endpoint override (an S3-compatible service, e.g. MinIO or moto);
    /// requests then use path-style addressing.
    pub endpoint: Option<String>,
    /// Record format: statelock's records, or Terraform's `.tflock` lockfiles.
    pub format: LockFormat,
    /// Use the store even if its service does not honour conditional writes
    /// (`accept_unsafe_conditional_writes=true`): the conditional-write probe
    /// is skipped. DANGEROUS: on a service that ignores `If-None-Match` /
    /// `If-Match`, two clients can both be granted the same lock and tokens
    /// can repeat. Meant only for a service that honours the conditions on
    /// writes but cannot pass the probe for another reason (e.g. it may not
    /// write under the probe's prefix).
    pub accept_unsafe_conditional_writes: bool,
}

impl S3Location {
    /// A location in `bucket` under `prefix` (statelock format, default
    /// region and endpoint, probed).
    pub fn new(bucket: impl Into<String>, prefix: impl Into<String>) -> S3Location {
        S3Location {
            bucket: bucket.into(),
            prefix: prefix.into(),
            region: None,
            endpoint: None,
            format: LockFormat::Statelock,
            accept_unsafe_conditional_writes: false,
        }
    }

    /// The `s3://` URL of this location, without credentials (endpoint
    /// userinfo shown as `***`).
    pub fn url(&self) -> String {
        let mut url = format!("s3://{}", self.bucket);
        if !self.prefix.is_empty() {
            url.push('/');
            url.push_str(&self.prefix);
        }
        let mut params = Vec::new();
        if let Some(r) = &self.region {
            params.push(format!("region={r}"));
        }
        if let Some(e) = &self.endpoint {
            params.push(format!("endpoint={}", redact_credentials(e)));
        }
        if self.format == LockFormat::Terraform {
            params.push("format=terraform".to_string());
        }
        if self.accept_unsafe_conditional_writes {
            params.push(format!("{ACCEPT_UNSAFE_CONDITIONAL_WRITES}=true"));
        }
        if !params.is_empty() {
            url.push('?');
            url.push_str(&params.join("&"));
        }
        url
    }
}

/// Checks an S3 bucket name: 3-63 characters of `a-z 0-9 . -`, starting
/// and ending with a letter or digit (the rules of general-purpose buckets).
fn check_bucket(bucket: &str) -> Result<(), String> {
    let valid = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && bucket
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && bucket
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{bucket:?} is not a valid S3 bucket name (3-63 characters of a-z 0-9 . -, \
             starting and ending with a letter or digit)"
        ))
    }
}

/// The longest prefix accepted, in bytes (S3 object keys have at most 1024).
pub const MAX_S3_PREFIX_BYTES: usize = 512;

/// Checks and normalises an S3 key prefix (a trailing `/` is dropped).
fn check_prefix(prefix: &str) -> Result<String, String> {
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    if prefix.is_empty() {
        return Ok(String::new());
    }
    if prefix.len() > MAX_S3_PREFIX_BYTES {
        return Err(format!(
            "the key prefix is longer than {MAX_S3_PREFIX_BYTES} bytes"
        ));
    }
    if prefix.chars().any(char::is_control) {
        return Err("the key prefix contains control characters".to_string());
    }
    if prefix
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return Err(format!(
            "the key prefix {prefix:?} has an empty, \".\" or \"..\" segment"
        ));
    }
    Ok(prefix.to_string())
}

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreUrl {
    /// A directory store.
    File(PathBuf),
    /// An in-memory store.
    Memory,
    /// A DynamoDB table.
    DynamoDb {
        /// Table name.
        table: String,
        /// Region override.
        region: Option<String>,
        /// Endpoint override (e.g. DynamoDB Local).
        endpoint: Option<String>,
        /// Record format.
        format: LockFormat,
    },
    /// An S3 bucket (and key prefix).
    S3(S3Location),
    /// A quorum of member stores (see [`crate::store::quorum`]):
    /// `quorum://?store=URL&store=URL&store=URL`.
    Quorum(Vec<StoreUrl>),
}

fn bad(url: &str, why: impl fmt::Display) -> StoreError {
    StoreError::Misconfigured(format!("bad store URL {url:?}: {why}"))
}

fn query_params(url: &str, query: &str) -> Result<BTreeMap<String, String>, StoreError> {
    let mut out = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| bad(url, format!("parameter {pair:?} has no '='")))?;
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(bad(url, format!("parameter {k:?} is given twice")));
        }
    }
    Ok(out)
}

impl StoreUrl {
    /// Parses a store URL; errors say what is wrong in one sentence.
    pub fn parse(url: &str) -> Result<StoreUrl, StoreError> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            bad(
                url,
                "expected SCHEME://..., e.g. file:///srv/locks, dynamodb://TABLE or s3://BUCKET/PREFIX",
            )
        })?;
        match scheme {
            "file" => {
                if rest.is_empty() {
                    return Err(bad(url, "file:// needs a directory path"));
                }
                Ok(StoreUrl::File(PathBuf::from(rest)))
            }
            "mem" | "memory" => {
                if !rest.is_empty() {
                    return Err(bad(url, "mem:// takes no path"));
                }
                Ok(StoreUrl::Memory)
            }
            "dynamodb" => {
                let (table, query) = rest.split_once('?').unwrap_or((rest, ""));
                let valid = (3..=255).contains(&table.len())
                    && table
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
                if !valid {
                    return Err(bad(
                        url,
                        "a DynamoDB table name is 3-255 characters of a-z A-Z 0-9 _ - .",
                    ));
                }
                let mut params = query_params(url, query)?;
                let format = match params.remove("format").as_deref() {
                    None | Some("statelock") => LockFormat::Statelock,
                    Some("terraform") => LockFormat::Terraform,
                    Some(other) => {
                        return Err(bad(
                            url,
                            format!("format must be statelock or terraform, not {other:?}"),
                        ))
                    }
                };
                let region = params.remove("region");
                let endpoint = params.remove("endpoint");
                if let Some(unknown) = params.keys().next() {
                    return Err(bad(
                        url,
                        format!("unknown parameter {unknown:?} (known: region, endpoint, format)"),
                    ));
                }
                Ok(StoreUrl::DynamoDb {
                    table: table.to_string(),
                    region,
                    endpoint,
                    format,
                })
            }
            "s3" => parse_s3(url, rest).map(StoreUrl::S3),
            "quorum" => parse_quorum(url, rest),
            other => Err(bad(
                url,
                format!("unknown scheme {other:?} (known: file, mem, dynamodb, s3, quorum)"),
            )),
        }
    }

    /// This URL with a relative `file://` path made absolute against the
    /// working directory (no filesystem access besides reading the working
    /// directory; symbolic links are not resolved). Other URLs are returned
    /// unchanged.
    pub fn into_absolute(self) -> Result<StoreUrl, StoreError> {
        match self {
            StoreUrl::File(dir) => absolute_dir(&dir).map(StoreUrl::File),
            StoreUrl::Quorum(members) => members
                .into_iter()
                .map(StoreUrl::into_absolute)
                .collect::<Result<Vec<_>, _>>()
                .map(StoreUrl::Quorum),
            other => Ok(other),
        }
    }
}

/// Parses the part of a `quorum://` URL after the scheme:
/// `?store=URL&store=URL...`. Each member URL runs to the next `&store=`,
/// so members keep their own `?...&...` parameters unescaped (no member
/// URL has a parameter called `store`).
fn parse_quorum(url: &str, rest: &str) -> Result<StoreUrl, StoreError> {
    let list = rest
        .strip_prefix("?store=")
        .ok_or_else(|| bad(url, "expected quorum://?store=URL&store=URL&store=URL"))?;
    let members = list
        .split("&store=")
        .map(|member| {
            if member.starts_with("quorum:") {
                return Err(bad(url, "a quorum cannot be a member of a quorum"));
            }
            match StoreUrl::parse(member)? {
                StoreUrl::DynamoDb {
                    format: LockFormat::Terraform,
                    ..
                } => Err(bad(
                    url,
                    format!("{member:?} holds Terraform locks, which have no fencing tokens"),
                )),
                StoreUrl::S3(l) if l.format == LockFormat::Terraform => Err(bad(
                    url,
                    format!("{member:?} holds Terraform locks, which have no fencing tokens"),
                )),
                other => Ok(other),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if members.len() < 3 || members.len().is_multiple_of(2) {
        return Err(bad(
            url,
            format!(
                "a quorum needs an odd number of member stores, at least 3 (got {})",
                members.len()
            ),
        ));
    }
    Ok(StoreUrl::Quorum(members))
}

/// Parses the part of an `s3://` URL after the scheme.
fn parse_s3(url: &str, rest: &str) -> Result<S3Location, StoreError> {
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
    check_bucket(bucket).map_err(|why| bad(url, why))?;
    let prefix = check_prefix(prefix).map_err(|why| bad(url, why))?;
    let mut params = query_params(url, query)?;
    let format = match params.remove("format").as_deref() {
        None | Some("statelock") => LockFormat::Statelock,
        Some("terraform") => LockFormat::Terraform,
        Some(other) => {
            return Err(bad(
                url,
                format!("format must be statelock or terraform, not {other:?}"),
            ))
        }
    };
    let accept_unsafe = match params.remove(ACCEPT_UNSAFE_CONDITIONAL_WRITES).as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(bad(
                url,
                format!("{ACCEPT_UNSAFE_CONDITIONAL_WRITES} must be true or false, not {other:?}"),
            ))
        }
    };
    let region = params.remove("region");
    let endpoint = params.remove("endpoint");
    if let Some(unknown) = params.keys().next() {
        return Err(bad(
            url,
            format!(
                "unknown parameter {unknown:?} (known: region, endpoint, format, \
                 {ACCEPT_UNSAFE_CONDITIONAL_WRITES})"
            ),
        ));
    }
    Ok(S3Location {
        bucket: bucket.to_string(),
        prefix,
        region,
        endpoint,
        format,
        accept_unsafe_conditional_writes: accept_unsafe,
    })
}

/// `dir` made absolute against the working directory.
fn absolute_dir(dir: &Path) -> Result<PathBuf, StoreError> {
    std::path::absolute(dir).map_err(|e| {
        StoreError::Misconfigured(format!(
            "cannot resolve the store directory {} to an absolute path: {e}; \
             pass an absolute path, e.g. file:///srv/locks",
            dir.display()
        ))
    })
}

/// The URL of a `file://` store in `dir`, as messages show it
/// (`file:///abs/path` when `dir` is absolute).
pub fn file_store_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// `text` with the userinfo of every URL in it (`scheme://user:pass@host`,
/// also URLs nested in a store URL's query) replaced by `***`, so
/// credentials typed into a store URL never reach a message or a log.
pub fn redact_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#' | '&' | '"' | '\'') || c.is_whitespace())
            .unwrap_or(tail.len());
        match tail[..authority_end].rfind('@') {
            Some(userinfo_end) => {
                out.push_str("***");
                rest = &tail[userinfo_end..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_redacted() {
        let cases = [
            ("file:///srv/locks", "file:///srv/locks"),
            ("http://u:p@host:8000/x", "http://***@host:8000/x"),
            (
                "dynamodb://locks?region=r&endpoint=http://AKIA:secret@localhost:8000&format=terraform",
                "dynamodb://locks?region=r&endpoint=http://***@localhost:8000&format=terraform",
            ),
            (
                "store s3://b/p?endpoint=https://me@h and http://x:y@z",
                "store s3://b/p?endpoint=https://***@h and http://***@z",
            ),
            ("no url here", "no url here"),
        ];
        for (given, want) in cases {
            assert_eq!(redact_credentials(given), want, "{given}");
        }
    }

    #[test]
    fn parse_table() {
        assert_eq!(
            StoreUrl::parse("file://.statelock").unwrap(),
            StoreUrl::File(".statelock".into())
        );
        assert_eq!(
            StoreUrl::parse("file:///srv/locks").unwrap(),
            StoreUrl::File("/srv/locks".into())
        );
        assert_eq!(StoreUrl::parse("mem://").unwrap(), StoreUrl::Memory);
        assert_eq!(
            StoreUrl::parse(
                "dynamodb://locks?region=eu-west-1&endpoint=http://127.0.0.1:8000&format=terraform"
            )
            .unwrap(),
            StoreUrl::DynamoDb {
                table: "locks".into(),
                region: Some("eu-west-1".into()),
                endpoint: Some("http://127.0.0.1:8000".into()),
                format: LockFormat::Terraform
            }
        );
        assert_eq!(
            StoreUrl::parse("file://relative/locks").unwrap(),
            StoreUrl::File("relative/locks".into())
        );
        for bad in [
            "",
            "locks",
            "file://",
            "mem://x",
            "ftp://x",
            "dynamodb://ab",
            "dynamodb://a b c",
            "dynamodb://locks?format=xml",
            "dynamodb://locks?colour=red",
            "dynamodb://locks?region",
            "dynamodb://locks?region=a&region=b",
            "s3://",
            "s3://ab",
            "s3://Bucket",
            "s3://-bucket/x",
            "s3://bucket_1/x",
            "s3://bucket//x",
            "s3://bucket/a//b",
            "s3://bucket/a/../b",
            "s3://bucket/./b",
            "s3://bucket/x?format=xml",
            "s3://bucket/x?colour=red",
            "s3://bucket/x?accept_unsafe_conditional_writes=yes",
            "s3://bucket/x?region=a&region=b",
        ] {
            let err = StoreUrl::parse(bad).unwrap_err();
            assert!(matches!(err, StoreError::Misconfigured(_)), "{bad:?}");
        }
    }

    #[test]
    fn parse_s3_urls() {
        assert_eq!(
            StoreUrl::parse("s3://statelock-test").unwrap(),
            StoreUrl::S3(S3Location::new("statelock-test", ""))
        );
        assert_eq!(
            StoreUrl::parse("s3://statelock-test/team/a/").unwrap(),
            StoreUrl::S3(S3Location::new("statelock-test", "team/a"))
        );
        let full = StoreUrl::parse(
            "s3://my.bucket-1/locks?region=eu-west-1&endpoint=http://127.0.0.1:9000\
             &format=terraform&accept_unsafe_conditional_writes=true",
        )
        .unwrap();
        let StoreUrl::S3(location) = full else {
            panic!("{full:?}")
        };
        assert_eq!(
            location,
            S3Location {
                bucket: "my.bucket-1".into(),
                prefix: "locks".into(),
                region: Some("eu-west-1".into()),
                endpoint: Some("http://127.0.0.1:9000".into()),
                format: LockFormat::Terraform,
                accept_unsafe_conditional_writes: true,
            }
        );
        assert_eq!(
            location.url(),
            "s3://my.bucket-1/locks?region=eu-west-1&endpoint=http://127.0.0.1:9000\
             &format=terraform&accept_unsafe_conditional_writes=true"
        );
        let mut secret = S3Location::new("b-1", "");
        secret.endpoint = Some("http://key:s3cr3t@host:9000".into());
        assert_eq!(secret.url(), "s3://b-1?endpoint=http://***@host:9000");
        assert!(StoreUrl::parse(&format!("s3://b-1/{}", "p".repeat(600))).is_err());
    }

    /// An environment lookup over `vars` only.
    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn default_store_dir_table() {
        let full = [
            ("STATELOCK_HOME", "/opt/statelock"),
            ("XDG_STATE_HOME", "/home/u/state"),
            ("HOME", "/home/u"),
        ];
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&full, "/opt/statelock/locks"),
            (&full[1..], "/home/u/state/statelock/locks"),
            (&full[2..], "/home/u/.local/state/statelock/locks"),
            // Empty counts as unset.
            (
                &[
                    ("STATELOCK_HOME", ""),
                    ("XDG_STATE_HOME", ""),
                    ("HOME", "/home/u"),
                ],
                "/home/u/.local/state/statelock/locks",
            ),
            // A relative XDG_STATE_HOME is ignored (XDG specification).
            (
                &[("XDG_STATE_HOME", "state"), ("HOME", "/home/u")],
                "/home/u/.local/state/statelock/locks",
            ),
            (
                &[("STATELOCK_HOME", "/srv/sl"), ("HOME", "relative")],
                "/srv/sl/locks",
            ),
        ];
        for (vars, expected) in cases {
            assert_eq!(
                default_store_dir(env(vars)),
                Ok(PathBuf::from(expected)),
                "{vars:?}"
            );
            assert_eq!(
                default_store_url(env(vars)),
                Ok(StoreUrl::File(PathBuf::from(expected))),
                "{vars:?}"
            );
        }
        assert_eq!(
            file_store_url(&default_store_dir(env(&full[2..])).unwrap()),
            "file:///home/u/.local/state/statelock/locks"
        );
    }

    #[test]
    fn no_default_store_dir_is_a_misconfiguration_naming_store() {
        for vars in [
            &[][..],
            &[("HOME", "")],
            &[
                ("HOME", "relative/home"),
                ("XDG_STATE_HOME", "also/relative"),
            ],
        ] {
            match default_store_dir(env(vars)) {
                Err(StoreError::Misconfigured(msg)) => {
                    assert!(msg.contains("--store"), "{msg}");
                    assert!(msg.contains("HOME"), "{msg}");
                }
                other => panic!("{vars:?}: expected Misconfigured, got {other:?}"),
            }
        }
        // A relative STATELOCK_HOME is an error, not a silent fallback.
        match default_store_dir(env(&[("STATELOCK_HOME", "sl"), ("HOME", "/home/u")])) {
            Err(StoreError::Misconfigured(msg)) => {
                assert!(msg.contains("STATELOCK_HOME"), "{msg}");
                assert!(msg.contains("absolute"), "{msg}");
            }
            other => panic!("expected Misconfigured, got {other:?}"),
        }
    }

    #[test]
    fn relative_file_urls_resolve_against_the_working_directory() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            StoreUrl::parse("file://locks").unwrap().into_absolute(),
            Ok(StoreUrl::File(cwd.join("locks")))
        );
        assert_eq!(
            StoreUrl::parse("file://./a/locks").unwrap().into_absolute(),
            Ok(StoreUrl::File(cwd.join("a/locks")))
        );
        assert_eq!(
            StoreUrl::parse("file:///srv/locks")
                .unwrap()
                .into_absolute(),
            Ok(StoreUrl::File("/srv/locks".into()))
        );
        assert_eq!(StoreUrl::Memory.into_absolute(), Ok(StoreUrl::Memory));
        let resolved = StoreUrl::parse("file://locks").unwrap().into_absolute();
        let Ok(StoreUrl::File(dir)) = resolved else {
            panic!("{resolved:?}");
        };
        assert!(file_store_url(&dir).starts_with("file:///"));
    }

    #[test]
    fn quorum_urls_list_their_members_with_their_own_parameters() {
        let url =
            "quorum://?store=dynamodb://locks?region=us-east-1&endpoint=http://127.0.0.1:8000\
                   &store=s3://bucket/locks?region=eu-west-1&store=file:///srv/locks";
        let url: String = url.split_whitespace().collect();
        let StoreUrl::Quorum(members) = StoreUrl::parse(&url).unwrap() else {
            panic!("not a quorum");
        };
        assert_eq!(members.len(), 3);
        assert_eq!(
            members[0],
            StoreUrl::DynamoDb {
                table: "locks".into(),
                region: Some("us-east-1".into()),
                endpoint: Some("http://127.0.0.1:8000".into()),
                format: LockFormat::Statelock,
            }
        );
        assert!(matches!(&members[1], StoreUrl::S3(l) if l.region.as_deref() == Some("eu-west-1")));
        assert_eq!(members[2], StoreUrl::File("/srv/locks".into()));
    }

    #[test]
    fn bad_quorum_urls_say_what_is_wrong() {
        for (url, says) in [
            ("quorum://", "expected quorum://?store="),
            ("quorum://?store=mem://&store=mem://", "odd number"),
            (
                "quorum://?store=mem://&store=bogus&store=mem://",
                "expected SCHEME",
            ),
            (
                "quorum://?store=mem://&store=mem://&store=dynamodb://tbl?format=terraform",
                "Terraform",
            ),
            (
                "quorum://?store=mem://&store=mem://&store=quorum://?store=mem://",
                "member of a quorum",
            ),
        ] {
            match StoreUrl::parse(url) {
                Err(StoreError::Misconfigured(m)) => assert!(m.contains(says), "{url}: {m}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }
}
