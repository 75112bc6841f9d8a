//! `--audit-log FILE`: the audit events of the library (tracing target
//! [`observe::AUDIT_TARGET`]) and of the state commands, appended to FILE as
//! JSON lines with stable names and fields (see [`AUDIT_LOG_HELP`]).
//!
//! Each event is one `write` of one line to a file opened for appending, so
//! concurrent processes never interleave lines. A write that fails is
//! remembered and reported by the command ([`audit_failure`]), never
//! silenced. Nothing here may write a credential: every string is passed
//! through [`redact_credentials`], and no event carries the environment.

use crate::observe;
use crate::store::url::redact_credentials;
use serde_json::Value;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context as LayerContext;
use tracing_subscriber::Layer;

/// The long help of `--audit-log`: the schema.
pub(crate) const AUDIT_LOG_HELP: &str = "\
Append audit events to FILE as JSON lines (one event per line, one write per
line; the file is only ever appended to).

Every line has `ts` (RFC 3339, UTC, milliseconds) and `event`; the other
fields depend on the event. `store` is the kind of store (memory, file,
dynamodb, s3, terraform-dynamodb, terraform-s3) and `store_url` the --store
(for state events, the state store) as messages show it. No line ever carries a
credential, an environment variable or the userinfo of a URL.

  event           fields
  lock.acquired   key, token, lease_id, holder, store, how (acquire|takeover|
                  skip: a released lock whose next registered waiter did
                  not take it within a lease)
  lock.takeover   key, token, lease_id, holder, store, previous_holder,
                  previous_token, previous_lease_id (after lock.acquired)
  lock.released   key, token, lease_id, store, duration_ms
  lock.lost       key, token, lease_id, store, reason (expired|superseded)
  lock.forced     key, token, lease_id, store, by (who forced it),
                  holder (whose lock it was)
  lock.rebased    key, token, lease_id, store, fence
  lock.purged     key, token, store
  state.saved     key, serial, token, lease_id, store
  state.rejected  key, token, lease_id, store, why (stale|changed|not_sealed|
                  damaged|other), message

If FILE cannot be written the command fails (exit 1; `exec` runs nothing
when the grant's event cannot be written).";

/// Event names written by the command line itself (the state commands).
pub(crate) mod event {
    /// A state document was saved.
    pub(crate) const STATE_SAVED: &str = "state.saved";
    /// A state save was refused.
    pub(crate) const STATE_REJECTED: &str = "state.rejected";
}

/// The audit log file: appends every event as one write, and remembers the
/// first write that failed.
#[derive(Clone)]
pub(crate) struct AuditLog {
    file: Arc<std::fs::File>,
    path: PathBuf,
    failed: Arc<Mutex<Option<String>>>,
}

/// The audit log of this process, if `--audit-log` was given.
static AUDIT_LOG: OnceLock<AuditLog> = OnceLock::new();

/// The store the command works on, as messages name it (credentials
/// redacted), written as `store_url` on every line once known.
static STORE_URL: OnceLock<String> = OnceLock::new();

/// Records the store the command works on (`store_url` on every line).
pub(crate) fn set_store_url(text: &str) {
    let _ = STORE_URL.set(redact_credentials(text));
}

/// Why the audit log could not be written, if a write failed.
pub(crate) fn audit_failure() -> Option<String> {
    let log = AUDIT_LOG.get()?;
    let failed = log.failed.lock().unwrap_or_else(PoisonError::into_inner);
    failed.clone()
}

impl AuditLog {
    /// Opens `path` for appending (creating it).
    pub(crate) fn open(path: &Path) -> Result<AuditLog, String> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                format!(
                    "cannot open the audit log {}: {e}; check the path and its permissions",
                    path.display()
                )
            })?;
        Ok(AuditLog {
            file: Arc::new(file),
            path: path.to_path_buf(),
            failed: Arc::new(Mutex::new(None)),
        })
    }

    /// Makes this the process's audit log (for [`audit_failure`]) and
    /// returns the layer that writes to it.
    pub(crate) fn install(self) -> AuditLayer {
        let _ = AUDIT_LOG.set(self.clone());
        AuditLayer { log: self }
    }

    fn append(&self, line: &str) {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        if let Err(e) = (&*self.file).write_all(&bytes) {
            let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
            failed.get_or_insert_with(|| {
                format!("cannot write the audit log {}: {e}", self.path.display())
            });
        }
    }
}

/// Collects an event's fields in the order they were recorded.
#[derive(Default)]
struct Fields(Vec<(String, Value)>);

impl Fields {
    fn push(&mut self, field: &Field, value: Value) {
        // The human sentence is for -v logs; the audit line has fields only.
        if field.name() != "message" {
            self.0.push((field.name().to_string(), value));
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, Value::String(redact_credentials(value)));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Value::Bool(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.push(
            field,
            Value::String(redact_credentials(&format!("{value:?}"))),
        );
    }
}

/// One audit line: `ts` and `event` first, then the other fields in order
/// (a field named `ts` or given twice keeps its first value).
pub(crate) fn audit_line(ts: &str, fields: Vec<(String, Value)>) -> String {
    let mut seen: Vec<String> = vec!["ts".to_string()];
    let mut parts = vec![format!("\"ts\":{}", Value::String(ts.to_string()))];
    let event = fields
        .iter()
        .find(|(k, _)| k == "event")
        .map_or(Value::String("unknown".into()), |(_, v)| v.clone());
    parts.push(format!("\"event\":{event}"));
    seen.push("event".to_string());
    for (name, value) in fields {
        if seen.contains(&name) {
            continue;
        }
        parts.push(format!("{}:{value}", Value::String(name.clone())));
        seen.push(name);
    }
    format!("{{{}}}", parts.join(","))
}

/// Now as RFC 3339 UTC with milliseconds.
fn timestamp() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// The `tracing` layer writing audit events (target
/// [`observe::AUDIT_TARGET`]) to the audit log.
pub(crate) struct AuditLayer {
    log: AuditLog,
}

impl<S: Subscriber> Layer<S> for AuditLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: LayerContext<'_, S>) {
        if event.metadata().target() != observe::AUDIT_TARGET {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let Some(url) = STORE_URL.get() {
            fields
                .0
                .push(("store_url".into(), Value::String(url.clone())));
        }
        self.log.append(&audit_line(&timestamp(), fields.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_start_with_ts_and_event_and_keep_field_order() {
        let line = audit_line(
            "2024-01-15T14:40:00.000Z",
            vec![
                ("key".into(), Value::from("stack:web:env:prod")),
                ("event".into(), Value::from("lock.acquired")),
                ("token".into(), Value::from(7u64)),
                ("key".into(), Value::from("again")),
            ],
        );
        assert_eq!(
            line,
            r#"{"ts":"2024-01-15T14:40:00.000Z","event":"lock.acquired","key":"stack:web:env:prod","token":7}"#
        );
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["token"], 7);
    }

    #[test]
    fn the_layer_writes_audit_events_only_without_userinfo() {
        use tracing_subscriber::prelude::*;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let layer = AuditLayer {
            log: AuditLog::open(&path).unwrap(),
        };
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "statelock::other", event = "not.audit", "ignored");
            tracing::info!(
                target: observe::AUDIT_TARGET,
                event = "lock.acquired",
                key = "k",
                token = 3u64,
                store_url = "s3://b/p?endpoint=http://AKIA:hunter2@127.0.0.1:9000",
                "lock acquired"
            );
        });
        let log = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 1, "{log}");
        let v: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["event"], "lock.acquired");
        assert_eq!(v["token"], 3);
        assert!(v.get("message").is_none(), "{log}");
        assert!(!log.contains("hunter2"), "{log}");
        assert!(log.contains("127.0.0.1:9000"), "{log}");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let ts = timestamp();
        assert!(
            ts.ends_with('Z') && ts.len() == 24 && ts.as_bytes()[10] == b'T',
            "{ts}"
        );
    }
}
