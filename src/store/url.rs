//! Store URLs: how users name a store (`--store` / `STATELOCK_STORE`).
//!
//! - `file://PATH` — a directory on this machine (the embedded default,
//!   `file://.statelock`); a relative PATH is relative to the working directory.
//! - `mem://` — an in-process store (tests and demos; forgets on exit).
//! - `dynamodb://TABLE?region=R&endpoint=URL[&format=terraform]` — a DynamoDB
//!   table (feature `dynamodb`).

use super::StoreError;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// The default store: a `.statelock` directory in the working directory.
pub const DEFAULT_STORE_URL: &str = "file://.statelock";

/// Which lock format a DynamoDB table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockFormat {
    /// statelock's own records (leases, tokens).
    Statelock,
    /// Terraform's S3-backend lock items (`LockID` + `Info`).
    Terraform,
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
                "expected SCHEME://..., e.g. file://.statelock or dynamodb://TABLE",
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
            other => Err(bad(
                url,
                format!("unknown scheme {other:?} (known: file, mem, dynamodb)"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        ] {
            let err = StoreUrl::parse(bad).unwrap_err();
            assert!(matches!(err, StoreError::Misconfigured(_)), "{bad:?}");
        }
    }
}
