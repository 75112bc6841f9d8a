//! The deployer's state document (`deployer-state-v1`, the users' format) as
//! typed structs that keep every field they do not know, its checksums, and
//! the `statelock` stamp a state store adds to every document it writes.
//!
//! Checksums are `sha256:<hex>` of the canonical JSON of `resources` and of
//! `outputs`. The canonical form is the JSON text serde_json writes for the
//! value with object keys sorted by their bytes (serde_json's map order), no
//! whitespace, strings escaped as serde_json escapes them and numbers as it
//! writes them (integers as integers, other numbers in their shortest
//! round-trip form). It is the RFC 8785 idea without its ES6 number rules:
//! documents whose numbers are integers (as deploy state has) hash the same
//! under both.
//!
//! This module must not do I/O; it only parses, stamps and checks.

use crate::protocol::{FencingToken, LeaseId, WallTime};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The `format_version` of documents this version reads and writes.
pub const FORMAT_VERSION: &str = "deployer-state-v1";

/// The document's own `version` field for new documents.
pub const DOCUMENT_VERSION: &str = "1.0.0";

/// A state document. Every field the type does not name is kept in `extra`
/// (and in each nested struct's own `extra`), so a document read and written
/// again loses nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateDocument {
    /// The document format's version (`1.0.0`).
    pub version: String,
    /// `deployer-state-v1`.
    pub format_version: String,
    /// Who wrote it last, for which stack and environment.
    #[serde(default)]
    pub metadata: Metadata,
    /// The seed's informational lock section (kept as it is).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub lock: Value,
    /// The deployed resources by name.
    #[serde(default)]
    pub resources: BTreeMap<String, Resource>,
    /// The stack's outputs.
    #[serde(default)]
    pub outputs: BTreeMap<String, Value>,
    /// Past deployments, newest first (kept as written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_history: Option<Vec<Value>>,
    /// `resources` and `outputs` → `sha256:<hex>` of their canonical JSON.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checksums: BTreeMap<String, String>,
    /// What the state store that wrote it stamped on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statelock: Option<Stamp>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The document's `metadata`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Metadata {
    /// The stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// The environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// When it was last updated (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<String>,
    /// Who updated it last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_by: Option<String>,
    /// The deployment that wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<String>,
    /// The commit deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// The branch deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_branch: Option<String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// One deployed resource.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Resource {
    /// Its kind (`RDS`, `MicroService`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The API version of its kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Its status (`ready`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// What was asked for.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub desired_config: Value,
    /// What was observed.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub actual_state: Value,
    /// Its outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<BTreeMap<String, Value>>,
    /// Names of the resources it depends on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<Vec<String>>,
    /// Fields this version does not know (`lifecycle`, `pulumi`, `health`, ...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// What a state store stamps on every document it writes: the fence and the
/// document's place in the chain of saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// The fencing token of the lease that sealed or saved it last.
    pub fence: FencingToken,
    /// That lease.
    pub lease: LeaseId,
    /// Accepted saves so far (0: sealed, never saved).
    pub serial: u64,
    /// A random value new on every write: a writer whose answer was lost
    /// recognises its own write by it.
    #[serde(with = "write_id_hex")]
    pub write_id: u128,
    /// The writer's wall clock (informational).
    pub written_at: WallTime,
}

mod write_id_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:032x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let text = String::deserialize(d)?;
        u128::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
    }
}

/// What is wrong with a document's checksums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksumProblem {
    /// Which part (`resources` or `outputs`).
    pub part: &'static str,
    /// The checksum the document carries (`None`: missing).
    pub stored: Option<String>,
    /// The checksum of what the document holds.
    pub computed: String,
}

impl StateDocument {
    /// An empty document for a stack and environment (either may be unknown).
    pub fn empty(stack: Option<&str>, environment: Option<&str>) -> StateDocument {
        StateDocument {
            version: DOCUMENT_VERSION.to_string(),
            format_version: FORMAT_VERSION.to_string(),
            metadata: Metadata {
                stack: stack.map(str::to_string),
                environment: environment.map(str::to_string),
                ..Metadata::default()
            },
            lock: Value::Null,
            resources: BTreeMap::new(),
            outputs: BTreeMap::new(),
            deployment_history: None,
            checksums: BTreeMap::new(),
            statelock: None,
            extra: BTreeMap::new(),
        }
    }

    /// Parses a document; the error says what is wrong in one sentence.
    pub fn from_json(bytes: &[u8]) -> Result<StateDocument, String> {
        let doc: StateDocument =
            serde_json::from_slice(bytes).map_err(|e| format!("not a state document: {e}"))?;
        if doc.format_version != FORMAT_VERSION {
            return Err(format!(
                "unsupported format_version {:?} (this version reads {FORMAT_VERSION:?})",
                doc.format_version
            ));
        }
        Ok(doc)
    }

    /// The document as pretty JSON (with a final newline).
    pub fn to_json(&self) -> Result<Vec<u8>, String> {
        let mut bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| format!("cannot encode the state document: {e}"))?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// The checksums of what the document holds now.
    pub fn computed_checksums(&self) -> Result<BTreeMap<String, String>, String> {
        let resources = serde_json::to_value(&self.resources)
            .map_err(|e| format!("cannot encode the resources: {e}"))?;
        let outputs = serde_json::to_value(&self.outputs)
            .map_err(|e| format!("cannot encode the outputs: {e}"))?;
        Ok(BTreeMap::from([
            ("resources".to_string(), checksum(&resources)?),
            ("outputs".to_string(), checksum(&outputs)?),
        ]))
    }

    /// Sets `checksums` to what the document holds now.
    pub fn update_checksums(&mut self) -> Result<(), String> {
        self.checksums = self.computed_checksums()?;
        Ok(())
    }

    /// The first checksum that does not match what the document holds (a
    /// missing one counts), or `None` when both match.
    pub fn checksum_problem(&self) -> Result<Option<ChecksumProblem>, String> {
        let computed = self.computed_checksums()?;
        for part in ["resources", "outputs"] {
            let want = computed.get(part).cloned().unwrap_or_default();
            let stored = self.checksums.get(part).cloned();
            if stored.as_deref() != Some(want.as_str()) {
                return Ok(Some(ChecksumProblem {
                    part,
                    stored,
                    computed: want,
                }));
            }
        }
        Ok(None)
    }
}

/// The canonical JSON of `value` (see the module documentation).
pub fn canonical_json(value: &Value) -> Result<Vec<u8>, String> {
    // serde_json's `Map` is a BTreeMap here (no `preserve_order`): keys come
    // out sorted; `to_vec` writes no whitespace.
    serde_json::to_vec(value).map_err(|e| format!("cannot encode JSON: {e}"))
}

/// `sha256:<hex>` of the canonical JSON of `value`.
pub fn checksum(value: &Value) -> Result<String, String> {
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(canonical_json(value)?))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example document of the users' design, abridged but with every
    /// kind of field it has.
    pub(crate) const SEED_EXAMPLE: &str = r#"{
      "version": "1.0.0",
      "format_version": "deployer-state-v1",
      "metadata": {
        "stack": "user-platform",
        "environment": "production",
        "last_updated": "2024-01-15T14:20:00Z",
        "last_updated_by": "github-actions-run-12345",
        "deployment_id": "dep-abc123def456",
        "git_commit": "a1b2c3d4e5f6",
        "git_branch": "main"
      },
      "lock": {"locked": false, "lock_id": null, "locked_by": null, "locked_at": null, "expires_at": null},
      "resources": {
        "user-service/database": {
          "kind": "RDS",
          "api_version": "components.deployer.io/v1",
          "status": "ready",
          "lifecycle": {"created_at": "2024-01-10T10:00:00Z", "last_updated": "2024-01-15T14:20:00Z", "version": 5},
          "desired_config": {"engine": {"type": "postgres", "version": "15.4"}, "instance": {"class": "db.r6g.xlarge", "storage": {"allocatedGB": 100, "type": "gp3"}}},
          "actual_state": {"instance_id": "user-db-prod", "port": 5432, "multi_az": true},
          "outputs": {"endpoint": "user-db-prod.abc123.us-east-1.rds.amazonaws.com", "port": "5432"},
          "pulumi": {"urn": "urn:pulumi:production::user-platform::aws:rds/instance:Instance::user-service-database", "id": "user-db-prod"},
          "dependencies": [],
          "health": {"status": "healthy", "last_check": "2024-01-15T14:30:00Z"}
        },
        "user-service/api": {
          "kind": "MicroService",
          "status": "ready",
          "desired_config": {"image": {"tag": "v1.2.3"}, "scaling": {"minReplicas": 5, "maxReplicas": 50}},
          "actual_state": {"running_count": 5},
          "dependencies": ["user-service/database"],
          "deployment": {"last_deployment_id": "dep-abc123def456", "rollout_status": "completed"}
        }
      },
      "outputs": {"userServiceApiUrl": "https://api.company.com/users"},
      "deployment_history": [
        {"deployment_id": "dep-abc123def456", "timestamp": "2024-01-15T14:20:00Z", "status": "success", "resources_changed": {"created": 0, "updated": 3, "deleted": 0}}
      ],
      "checksums": {"resources": "sha256:abc123...", "outputs": "sha256:def456..."},
      "future_field": {"kept": [1, 2, 3]}
    }"#;

    #[test]
    fn the_seed_document_round_trips_without_losing_a_field() {
        let doc = StateDocument::from_json(SEED_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(doc.metadata.stack.as_deref(), Some("user-platform"));
        assert_eq!(doc.resources.len(), 2);
        assert_eq!(
            doc.resources["user-service/api"].dependencies.as_deref(),
            Some(&["user-service/database".to_string()][..])
        );
        assert!(doc.resources["user-service/database"]
            .extra
            .contains_key("pulumi"));
        assert!(doc.extra.contains_key("future_field"));
        let original: Value = serde_json::from_str(SEED_EXAMPLE).unwrap();
        let again: Value = serde_json::from_slice(&doc.to_json().unwrap()).unwrap();
        assert_eq!(again, original, "a round trip must keep every field");
    }

    #[test]
    fn checksums_cover_resources_and_outputs_and_catch_a_change() {
        let mut doc = StateDocument::from_json(SEED_EXAMPLE.as_bytes()).unwrap();
        // The seed's placeholders are not real checksums.
        let problem = doc.checksum_problem().unwrap().unwrap();
        assert_eq!(problem.part, "resources");
        doc.update_checksums().unwrap();
        assert_eq!(doc.checksum_problem(), Ok(None));
        assert!(doc.checksums["resources"].starts_with("sha256:"));
        assert_eq!(doc.checksums["resources"].len(), "sha256:".len() + 64);
        // Metadata is not covered; resources and outputs are.
        let mut other = doc.clone();
        other.metadata.last_updated_by = Some("someone else".into());
        assert_eq!(other.checksum_problem(), Ok(None));
        other.outputs.insert("x".into(), Value::from(1));
        assert_eq!(other.checksum_problem().unwrap().unwrap().part, "outputs");
        let mut tampered = doc.clone();
        if let Some(r) = tampered.resources.get_mut("user-service/api") {
            r.status = Some("broken".into());
        }
        assert_eq!(
            tampered.checksum_problem().unwrap().unwrap().part,
            "resources"
        );
        // Key order in the input does not change the checksum.
        let reordered: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"d": [1, 2], "c": null}}"#).unwrap();
        let sorted: Value =
            serde_json::from_str(r#"{"a": {"c": null, "d": [1, 2]}, "b": 1}"#).unwrap();
        assert_eq!(checksum(&reordered), checksum(&sorted));
        assert_eq!(
            canonical_json(&sorted).unwrap(),
            br#"{"a":{"c":null,"d":[1,2]},"b":1}"#
        );
    }

    #[test]
    fn foreign_formats_are_refused_plainly() {
        let err =
            StateDocument::from_json(br#"{"version":"1","format_version":"tfstate"}"#).unwrap_err();
        assert!(err.contains("unsupported format_version"), "{err}");
        assert!(StateDocument::from_json(b"[]")
            .unwrap_err()
            .contains("not a state document"));
    }

    #[test]
    fn the_stamp_round_trips() {
        let mut doc = StateDocument::empty(Some("s"), Some("e"));
        doc.statelock = Some(Stamp {
            fence: FencingToken(7),
            lease: LeaseId(uuid::Uuid::from_u128(3)),
            serial: 12,
            write_id: 0xabc,
            written_at: WallTime(1_700_000_000_000),
        });
        let back = StateDocument::from_json(&doc.to_json().unwrap()).unwrap();
        assert_eq!(back, doc);
        let text = String::from_utf8(doc.to_json().unwrap()).unwrap();
        assert!(
            text.contains("\"write_id\": \"00000000000000000000000000000abc\""),
            "{text}"
        );
    }
}
