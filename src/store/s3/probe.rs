//! The conditional-write probe: checks, on scratch objects under
//! `PREFIX/.statelock-probe/`, that an S3 service honours the conditions the
//! S3 stores rely on for mutual exclusion (`If-None-Match: *` and `If-Match`
//! on `PutObject`, `If-Match` on `DeleteObject`). Some S3-compatible services
//! accept these headers and silently ignore them; on such a service two
//! clients could both be granted one lock.
//!
//! [`probe`] runs the checks and reports each one (`statelock s3 probe`).
//! The S3 stores run them once before their first write (`Gate`): once per
//! process for each bucket and endpoint, and remembered in the bucket by a
//! small marker object, `PREFIX/.statelock-probe/passed.json`, so that later
//! processes skip them (delete the marker, or run `statelock s3 probe`, to
//! probe again). A store whose service fails a check refuses to write with
//! [`StoreError::Misconfigured`] naming the check, unless its URL carries
//! `accept_unsafe_conditional_writes=true`.
//!
//! This module must not touch anything but its scratch objects and the
//! marker, and must leave no scratch object behind when it can help it.

use super::client::{Answer, Bucket, Cond, ETag};
use crate::store::url::{S3Location, ACCEPT_UNSAFE_CONDITIONAL_WRITES};
use crate::store::StoreError;
use crate::sync::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// The folder (under the store's prefix) of the probe's scratch objects and
/// of its marker.
pub const PROBE_DIR: &str = ".statelock-probe";

/// The marker's name in [`PROBE_DIR`].
pub const MARKER_NAME: &str = "passed.json";

/// The `format` tag of the marker object.
const MARKER_FORMAT: &str = "statelock-s3-probe-v1";

/// The largest marker read, in bytes.
const MARKER_MAX_BYTES: u64 = 64 * 1024;

/// The names of the checks, in the order they run.
pub const CHECKS: [&str; 7] = [
    "PutObject If-None-Match: * on a new key succeeds",
    "PutObject If-None-Match: * on an existing key fails with 412",
    "PutObject If-Match with a wrong ETag fails with 412",
    "PutObject If-Match with the right ETag succeeds",
    "PutObject If-Match on a missing key fails and creates nothing",
    "DeleteObject If-Match with a wrong ETag fails with 412",
    "DeleteObject If-Match with the right ETag succeeds",
];

/// One check and what the service did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeCheck {
    /// What was checked (one of [`CHECKS`]).
    pub name: &'static str,
    /// Whether the service behaved as statelock needs.
    pub passed: bool,
    /// What the service answered, in a few words.
    pub seen: String,
}

/// Every check of one probe run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ProbeReport {
    /// The checks, in the order they ran.
    pub checks: Vec<ProbeCheck>,
}

impl ProbeReport {
    /// True if every check ran and passed.
    pub fn passed(&self) -> bool {
        self.checks.len() == CHECKS.len() && self.checks.iter().all(|c| c.passed)
    }

    /// The first check that failed.
    pub fn first_failure(&self) -> Option<&ProbeCheck> {
        self.checks.iter().find(|c| !c.passed)
    }
}

/// Runs every check against the bucket and prefix of `location` (its format
/// and `accept_unsafe_conditional_writes` are ignored), then writes the
/// marker if all passed and removes it otherwise. An error means the probe
/// could not run at all (the service does not answer, no credentials, a
/// malformed endpoint); a service that answers wrongly is a failed check.
pub async fn probe(location: &S3Location) -> Result<ProbeReport, StoreError> {
    let bucket = Bucket::connect(
        &location.bucket,
        location.region.as_deref(),
        location.endpoint.as_deref(),
    )
    .await?;
    let report = run_checks(&bucket, &location.prefix).await?;
    let marker = marker_name(&location.prefix);
    if report.passed() {
        write_marker(&bucket, &marker, &report).await?;
        let _ = process_cell(&bucket).set(());
    } else {
        // A marker from an earlier run must not let stores skip the probe
        // (best effort: the report matters more than this clean-up).
        if let Err(e) = bucket.delete(&marker, None).await {
            tracing::warn!("cannot remove the probe marker {marker} after a failed probe: {e}");
        }
    }
    Ok(report)
}

/// `PREFIX/.statelock-probe/` (or `.statelock-probe/` without a prefix).
fn probe_dir(prefix: &str) -> String {
    if prefix.is_empty() {
        format!("{PROBE_DIR}/")
    } else {
        format!("{prefix}/{PROBE_DIR}/")
    }
}

/// The marker object of `prefix`.
pub(crate) fn marker_name(prefix: &str) -> String {
    format!("{}{MARKER_NAME}", probe_dir(prefix))
}

/// A scratch body; every write differs, so every write has a new ETag.
fn scratch(run: &str, write: u32) -> Vec<u8> {
    format!(
        "{{\"format\":\"statelock-s3-probe-scratch-v1\",\"run\":\"{run}\",\"write\":{write}}}\n"
    )
    .into_bytes()
}

/// What a check saw, in a few words.
fn seen_of<T>(answer: &Answer<T>, done: &str) -> String {
    match answer {
        Answer::Done(_) => done.to_string(),
        Answer::Refused(r) => format!("refused ({r})"),
        Answer::Missing => "HTTP 404 (no such key)".to_string(),
    }
}

/// Records the answer to a request: a service error is a failed check (the
/// service refused a request statelock needs), an unavailable service ends
/// the probe.
fn answered<T>(
    result: Result<Answer<T>, StoreError>,
) -> Result<Result<Answer<T>, String>, StoreError> {
    match result {
        Ok(answer) => Ok(Ok(answer)),
        Err(e @ StoreError::Unavailable(_)) => Err(e),
        Err(other) => Ok(Err(other.to_string())),
    }
}

/// The checks, on fresh scratch objects; removes them afterwards.
async fn run_checks(bucket: &Bucket, prefix: &str) -> Result<ProbeReport, StoreError> {
    let dir = probe_dir(prefix);
    let run = uuid::Uuid::new_v4().simple().to_string();
    let key = format!("{dir}{run}.json");
    let missing = format!("{dir}{run}-missing.json");
    let mut report = ProbeReport::default();
    let result = checks(bucket, &key, &missing, &run, &mut report).await;
    // Best effort: a leftover scratch object is harmless (and tiny).
    let _ = bucket.delete(&key, None).await;
    let _ = bucket.delete(&missing, None).await;
    result.map(|()| report)
}

async fn checks(
    bucket: &Bucket,
    key: &str,
    missing: &str,
    run: &str,
    report: &mut ProbeReport,
) -> Result<(), StoreError> {
    let mut check = |index: usize, passed: bool, seen: String| {
        report.checks.push(ProbeCheck {
            name: CHECKS[index],
            passed,
            seen,
        })
    };
    // An ETag no object has (S3's are quoted hex digests).
    let wrong = |current: &ETag| {
        let candidate = ETag("\"00000000000000000000000000000000\"".to_string());
        if &candidate == current {
            ETag("\"11111111111111111111111111111111\"".to_string())
        } else {
            candidate
        }
    };

    // 1. Create a new key.
    let mut etag: Option<ETag> = None;
    match answered(bucket.put(key, scratch(run, 1), Cond::IfNoneMatch).await)? {
        Ok(Answer::Done(e)) => {
            check(0, true, format!("written (ETag {e})"));
            etag = Some(e);
        }
        Ok(other) => check(0, false, seen_of(&other, "written")),
        Err(why) => check(0, false, why),
    }
    let mut etag = match etag {
        Some(e) => e,
        // The other checks need the object: write it plainly.
        None => match answered(bucket.put(key, scratch(run, 1), Cond::None).await)? {
            Ok(Answer::Done(e)) => e,
            Ok(other) => return Err(not_run(bucket, &seen_of(&other, "written"))),
            Err(why) => return Err(not_run(bucket, &why)),
        },
    };

    // 2. Create it again.
    match answered(bucket.put(key, scratch(run, 2), Cond::IfNoneMatch).await)? {
        Ok(Answer::Refused(r)) if r.status == 412 => check(1, true, format!("refused ({r})")),
        Ok(Answer::Done(e)) => {
            check(1, false, "written: the object was overwritten".to_string());
            etag = e;
        }
        Ok(other) => check(1, false, seen_of(&other, "written")),
        Err(why) => check(1, false, why),
    }

    // 3. Overwrite with a wrong ETag.
    let wrong_etag = wrong(&etag);
    match answered(
        bucket
            .put(key, scratch(run, 3), Cond::IfMatch(&wrong_etag))
            .await,
    )? {
        Ok(Answer::Refused(r)) if r.status == 412 => check(2, true, format!("refused ({r})")),
        Ok(Answer::Done(e)) => {
            check(2, false, "written: the object was overwritten".to_string());
            etag = e;
        }
        Ok(other) => check(2, false, seen_of(&other, "written")),
        Err(why) => check(2, false, why),
    }

    // 4. Overwrite with the right ETag.
    match answered(bucket.put(key, scratch(run, 4), Cond::IfMatch(&etag)).await)? {
        Ok(Answer::Done(e)) => {
            check(3, true, format!("written (ETag {e})"));
            etag = e;
        }
        Ok(other) => check(3, false, seen_of(&other, "written")),
        Err(why) => check(3, false, why),
    }

    // 5. Overwrite a missing key: nothing may be created.
    match answered(
        bucket
            .put(missing, scratch(run, 5), Cond::IfMatch(&etag))
            .await,
    )? {
        Ok(Answer::Done(_)) => check(4, false, "written: the missing object was created".into()),
        Ok(refused) => {
            let seen = seen_of(&refused, "written");
            match answered(bucket.head(missing, None).await)? {
                Ok(Answer::Missing) => check(4, true, format!("{seen}, nothing created")),
                Ok(_) => check(4, false, format!("{seen}, but the object was created")),
                Err(why) => check(4, false, why),
            }
        }
        Err(why) => check(4, false, why),
    }

    // 6. Delete with a wrong ETag.
    let wrong_etag = wrong(&etag);
    match answered(bucket.delete(key, Some(&wrong_etag)).await)? {
        Ok(Answer::Refused(r)) if r.status == 412 => {
            match answered(bucket.head(key, None).await)? {
                Ok(Answer::Done(_)) => check(5, true, format!("refused ({r})")),
                Ok(_) => check(5, false, format!("refused ({r}), but the object is gone")),
                Err(why) => check(5, false, why),
            }
        }
        Ok(Answer::Done(())) => {
            check(5, false, "deleted: the object is gone".to_string());
            // Check 7 needs the object back.
            match answered(bucket.put(key, scratch(run, 6), Cond::None).await)? {
                Ok(Answer::Done(e)) => etag = e,
                Ok(other) => return Err(not_run(bucket, &seen_of(&other, "written"))),
                Err(why) => return Err(not_run(bucket, &why)),
            }
        }
        Ok(other) => check(5, false, seen_of(&other, "deleted")),
        Err(why) => check(5, false, why),
    }

    // 7. Delete with the right ETag.
    match answered(bucket.delete(key, Some(&etag)).await)? {
        Ok(Answer::Done(())) => match answered(bucket.head(key, None).await)? {
            Ok(Answer::Missing) => check(6, true, "deleted".to_string()),
            Ok(_) => check(
                6,
                false,
                "answered success, but the object is still there".into(),
            ),
            Err(why) => check(6, false, why),
        },
        Ok(other) => check(6, false, seen_of(&other, "deleted")),
        Err(why) => check(6, false, why),
    }
    Ok(())
}

/// The probe cannot go on: the scratch object cannot even be written.
fn not_run(bucket: &Bucket, why: &str) -> StoreError {
    StoreError::Misconfigured(format!(
        "cannot run the conditional-write probe on {}: writing a scratch object failed ({why})",
        bucket.ctx.where_()
    ))
}

#[derive(Serialize)]
struct Marker<'a> {
    format: &'static str,
    passed_at: String,
    statelock: &'static str,
    endpoint: String,
    checks: Vec<&'a str>,
}

async fn write_marker(bucket: &Bucket, name: &str, report: &ProbeReport) -> Result<(), StoreError> {
    let marker = Marker {
        format: MARKER_FORMAT,
        passed_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        statelock: env!("CARGO_PKG_VERSION"),
        endpoint: bucket.ctx.endpoint_name(),
        checks: report.checks.iter().map(|c| c.name).collect(),
    };
    let mut body = serde_json::to_vec_pretty(&marker)
        .map_err(|e| StoreError::Misconfigured(format!("cannot encode the probe marker: {e}")))?;
    body.push(b'\n');
    match bucket.put(name, body, Cond::None).await? {
        Answer::Done(_) => Ok(()),
        other => Err(StoreError::Unavailable(format!(
            "cannot write the probe marker {}: {}",
            bucket.ctx.object(name),
            seen_of(&other, "written")
        ))),
    }
}

/// True if the bucket holds a marker of a passed probe.
async fn marker_present(bucket: &Bucket, name: &str) -> Result<bool, StoreError> {
    let Some(object) = bucket.get(name, MARKER_MAX_BYTES).await? else {
        return Ok(false);
    };
    let value: serde_json::Value = match serde_json::from_slice(&object.bytes) {
        Ok(v) => v,
        Err(_) => return Ok(false),
    };
    Ok(value.get("format").and_then(|f| f.as_str()) == Some(MARKER_FORMAT))
}

/// Buckets (with their endpoints) this process has seen pass the probe.
fn process_cell(bucket: &Bucket) -> Arc<tokio::sync::OnceCell<()>> {
    static PASSED: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::OnceCell<()>>>>> =
        OnceLock::new();
    let cells = PASSED.get_or_init(|| Mutex::new(HashMap::new()));
    cells.lock().entry(bucket.ctx.where_()).or_default().clone()
}

/// Runs the probe before a store's first write (see the module docs).
#[derive(Debug)]
pub(crate) struct Gate {
    /// The store's URL (for messages), without the override.
    url: String,
    /// The store's key prefix (where the scratch objects and the marker go).
    prefix: String,
    /// `accept_unsafe_conditional_writes=true`: never probe.
    accept_unsafe: bool,
    /// Whether the warning about `accept_unsafe` was logged.
    warned: AtomicBool,
    /// The refusal, once the service failed the probe.
    refused: Mutex<Option<StoreError>>,
}

impl Gate {
    pub(crate) fn new(location: &S3Location) -> Gate {
        let url = S3Location {
            accept_unsafe_conditional_writes: false,
            ..location.clone()
        }
        .url();
        Gate {
            url,
            prefix: location.prefix.clone(),
            accept_unsafe: location.accept_unsafe_conditional_writes,
            warned: AtomicBool::new(false),
            refused: Mutex::new(None),
        }
    }

    /// Ok once the bucket's service passed the probe (in this process, or
    /// as its marker says); the refusal if it failed.
    pub(crate) async fn ensure(&self, bucket: &Bucket) -> Result<(), StoreError> {
        if self.accept_unsafe {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    store = %self.url,
                    "{ACCEPT_UNSAFE_CONDITIONAL_WRITES}=true: not checking that the S3 service \
                     honours conditional writes; if it does not, locks can be granted twice"
                );
            }
            return Ok(());
        }
        if let Some(refusal) = self.refused.lock().clone() {
            return Err(refusal);
        }
        let cell = process_cell(bucket);
        let result = cell
            .get_or_try_init(|| async {
                let marker = marker_name(&self.prefix);
                if marker_present(bucket, &marker).await? {
                    return Ok(());
                }
                let report = run_checks(bucket, &self.prefix).await?;
                if !report.passed() {
                    return Err(self.refusal(bucket, &report));
                }
                if let Err(e) = write_marker(bucket, &marker, &report).await {
                    tracing::warn!(
                        store = %self.url,
                        "the S3 service passed the conditional-write probe, but its marker \
                         could not be written ({e}); the next process will probe again"
                    );
                }
                Ok(())
            })
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                if matches!(e, StoreError::Misconfigured(_)) {
                    *self.refused.lock() = Some(e.clone());
                }
                Err(e)
            }
        }
    }

    fn refusal(&self, bucket: &Bucket, report: &ProbeReport) -> StoreError {
        let failed = report
            .first_failure()
            .map(|c| format!("\"{}\" failed: {}", c.name, c.seen))
            .unwrap_or_else(|| "not every check ran".to_string());
        StoreError::Misconfigured(format!(
            "{} ignores conditional writes ({failed}), so a lock in s3://{} could be granted \
             twice: use a service that honours If-None-Match and If-Match (details: `statelock \
             s3 probe URL`), or accept that danger with {ACCEPT_UNSAFE_CONDITIONAL_WRITES}=true",
            bucket.ctx.endpoint_name(),
            bucket.name(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_live_under_the_prefix() {
        assert_eq!(marker_name(""), ".statelock-probe/passed.json");
        assert_eq!(marker_name("a/b"), "a/b/.statelock-probe/passed.json");
        assert_ne!(scratch("r", 1), scratch("r", 2));
    }

    #[test]
    fn a_report_passes_only_when_every_check_ran_and_passed() {
        let all = |passed: bool| ProbeReport {
            checks: CHECKS
                .iter()
                .map(|name| ProbeCheck {
                    name,
                    passed,
                    seen: String::new(),
                })
                .collect(),
        };
        assert!(all(true).passed());
        assert!(!all(false).passed());
        let mut short = all(true);
        short.checks.pop();
        assert!(!short.passed());
        assert!(!ProbeReport::default().passed());
        let mut one = all(true);
        one.checks[2].passed = false;
        assert_eq!(one.first_failure().map(|c| c.name), Some(CHECKS[2]));
    }
}
