//! Observability: the metric names (the `metrics` facade), their labels, and
//! the audit events (the `tracing` facade, target [`AUDIT_TARGET`]).
//!
//! Nothing here decides anything, and nothing here may fail or block: a
//! metric or an audit event is a side note of what the client and the stores
//! already did. Labels never carry a lock's holder, token or any credential:
//! only the kind of store and the `stack`/`env` parts of `stack:S:env:E` keys.
//!
//! # Metrics
//! | name | type | extra labels |
//! | --- | --- | --- |
//! | `statelock.lock.acquisition.duration` | histogram (seconds, first attempt to grant) | |
//! | `statelock.lock.acquisition.success` | counter | |
//! | `statelock.lock.acquisition.failure` | counter | `reason`: `held`, `timeout`, `cancelled`, `store`, `tokens_exhausted`, `invalid` |
//! | `statelock.lock.held.duration` | histogram (seconds, grant to release) | |
//! | `statelock.lock.heartbeat.success` | counter | |
//! | `statelock.lock.heartbeat.failure` | counter | `reason`: `unanswered`, `lost` |
//! | `statelock.lock.stale.detected` | counter | |
//! | `statelock.lock.takeover` | counter | |
//! | `statelock.lock.lost` | counter | `reason`: `expired`, `superseded` |
//! | `statelock.state.save.rejected` | counter | `reason`: `stale` |
//!
//! Every metric is labelled `store` ([`store_kind`]: `memory`, `file`,
//! `dynamodb`, `s3`, `terraform-dynamodb`, `terraform-s3`) and, for keys of
//! the form `stack:S:env:E`, `stack` and `env`.

use crate::protocol::LockKey;
use metrics::Label;

/// Histogram: seconds from an acquire's first attempt to its grant.
pub const ACQUISITION_DURATION: &str = "statelock.lock.acquisition.duration";
/// Counter: acquisitions that got the lock (fresh or by takeover).
pub const ACQUISITION_SUCCESS: &str = "statelock.lock.acquisition.success";
/// Counter: acquisitions that gave up, labelled `reason`.
pub const ACQUISITION_FAILURE: &str = "statelock.lock.acquisition.failure";
/// Histogram: seconds a lock was held (grant to release, by the holder's
/// wall clock).
pub const HELD_DURATION: &str = "statelock.lock.held.duration";
/// Counter: heartbeats that renewed the lease.
pub const HEARTBEAT_SUCCESS: &str = "statelock.lock.heartbeat.success";
/// Counter: heartbeats that did not renew it, labelled `reason` =
/// `unanswered` (retried) | `lost`.
pub const HEARTBEAT_FAILURE: &str = "statelock.lock.heartbeat.failure";
/// Counter: locks this observer judged stale (held, unchanged for a whole
/// takeover wait).
pub const STALE_DETECTED: &str = "statelock.lock.stale.detected";
/// Counter: grants that took over an abandoned lease.
pub const TAKEOVER: &str = "statelock.lock.takeover";
/// Counter: leases lost, labelled `reason` = `expired` | `superseded`.
pub const LOST: &str = "statelock.lock.lost";
/// Counter: state saves refused because the writer's token is below the
/// state's fence (its lock was taken over), labelled `reason` = `stale`.
pub const STATE_SAVE_REJECTED: &str = "statelock.state.save.rejected";

/// Every metric name, for exporters and tests.
pub const METRICS: [&str; 10] = [
    ACQUISITION_DURATION,
    ACQUISITION_SUCCESS,
    ACQUISITION_FAILURE,
    HELD_DURATION,
    HEARTBEAT_SUCCESS,
    HEARTBEAT_FAILURE,
    STALE_DETECTED,
    TAKEOVER,
    LOST,
    STATE_SAVE_REJECTED,
];

/// The `tracing` target of audit events. Their names and fields are stable
/// (the `statelock --audit-log` schema):
///
/// | `event` | fields |
/// | --- | --- |
/// | `lock.acquired` | `key`, `token`, `lease_id`, `holder`, `store`, `how` (`acquire`/`takeover`) |
/// | `lock.takeover` | `key`, `token`, `lease_id`, `holder`, `store`, `previous_holder`, `previous_token`, `previous_lease_id` |
/// | `lock.released` | `key`, `token`, `lease_id`, `store`, `duration_ms` |
/// | `lock.lost` | `key`, `token`, `lease_id`, `store`, `reason` (`expired`/`superseded`) |
/// | `lock.forced` | `key`, `token`, `lease_id`, `store`, `by` (who forced), `holder` (whose lock) |
/// | `lock.rebased` | `key`, `token`, `lease_id`, `store`, `fence` |
/// | `lock.purged` | `key`, `token`, `store` |
///
/// The state events (`state.saved`, `state.rejected`) are the command
/// line's: the library's state stores return their answers instead.
pub const AUDIT_TARGET: &str = "statelock::audit";

/// The kind of store a description ([`crate::store::LockStore::describe`],
/// [`crate::state::StateStore::describe`], or a store URL) names: `memory`,
/// `file`, `dynamodb`, `s3`, `terraform-dynamodb`, `terraform-s3`, or
/// `other`.
pub fn store_kind(description: &str) -> &'static str {
    let (scheme, rest) = description.split_once("://").unwrap_or(("", description));
    let terraform = rest
        .split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|p| p == "format=terraform"));
    match (scheme, terraform) {
        ("mem" | "memory", _) => "memory",
        ("file", _) => "file",
        ("dynamodb", false) => "dynamodb",
        ("dynamodb", true) => "terraform-dynamodb",
        ("s3", false) => "s3",
        ("s3", true) => "terraform-s3",
        _ => "other",
    }
}

/// The labels of every metric about `key` in a store of kind `store`:
/// `store`, and `stack` and `env` for `stack:S:env:E` keys.
pub fn labels(store: &'static str, key: &LockKey) -> Vec<Label> {
    let mut labels = vec![Label::from_static_parts("store", store)];
    if let Some((stack, env)) = crate::state::layout::stack_and_env(key) {
        labels.push(Label::new("stack", stack.to_string()));
        labels.push(Label::new("env", env.to_string()));
    }
    labels
}

/// [`labels`] plus `reason`.
pub fn labels_with_reason(store: &'static str, key: &LockKey, reason: &'static str) -> Vec<Label> {
    let mut labels = labels(store, key);
    labels.push(Label::from_static_parts("reason", reason));
    labels
}

/// Counts a state save refused because its writer is stale
/// ([`STATE_SAVE_REJECTED`]); `store` describes the state store.
pub fn state_save_rejected(store: &str, key: &LockKey) {
    metrics::counter!(
        STATE_SAVE_REJECTED,
        labels_with_reason(store_kind(store), key, "stale")
    )
    .increment(1);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn store_kinds_come_from_descriptions() {
        for (description, kind) in [
            ("mem://", "memory"),
            ("file:///srv/locks", "file"),
            ("dynamodb://locks?region=eu-west-1", "dynamodb"),
            (
                "dynamodb://tf?region=r&endpoint=http://***@h:1&format=terraform",
                "terraform-dynamodb",
            ),
            ("s3://bucket/prefix", "s3"),
            ("s3://bucket/p?region=r&format=terraform", "terraform-s3"),
            ("s3://bucket/p?format=terraformish", "s3"),
            ("somewhere", "other"),
        ] {
            assert_eq!(store_kind(description), kind, "{description}");
        }
    }

    #[test]
    fn stack_keys_get_stack_and_env_labels() {
        let key = LockKey::new("stack:web:env:prod").unwrap();
        let got: Vec<(String, String)> = labels_with_reason("file", &key, "stale")
            .iter()
            .map(|l| (l.key().to_string(), l.value().to_string()))
            .collect();
        let expected = [
            ("store", "file"),
            ("stack", "web"),
            ("env", "prod"),
            ("reason", "stale"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(got, expected);
        let plain = labels("memory", &LockKey::new("nightly-report").unwrap());
        assert_eq!(plain.len(), 1);
        assert_eq!(plain[0].key(), "store");
    }
}
