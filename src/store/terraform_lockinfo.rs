//! Terraform's `LockInfo` (internal/states/statemgr/locker.go) as both
//! Terraform lock formats carry it (the DynamoDB item's `Info`, the S3
//! `.tflock` body), the holder details statelock keeps inside it, and the
//! RFC 3339 times Terraform writes. Pure data: no I/O, no store decisions.

use crate::protocol::WallTime;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

/// The `Version` statelock writes (followed by its own version).
pub(crate) const VERSION_PREFIX: &str = "statelock ";

/// Terraform's `LockInfo`, field order kept (Go marshals the fields in
/// declaration order, under their own names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LockInfo {
    #[serde(rename = "ID")]
    pub(crate) id: String,
    #[serde(rename = "Operation", default)]
    pub(crate) operation: String,
    #[serde(rename = "Info", default)]
    pub(crate) info: String,
    #[serde(rename = "Who", default)]
    pub(crate) who: String,
    #[serde(rename = "Version", default)]
    pub(crate) version: String,
    #[serde(rename = "Created")]
    pub(crate) created: String,
    #[serde(rename = "Path", default)]
    pub(crate) path: String,
}

/// The holder details statelock keeps in `LockInfo.Info`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Extras {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) pid: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) metadata: BTreeMap<String, String>,
}

/// The latest time humantime can format (9999-12-31T23:59:59.999Z).
const MAX_FORMATTABLE_MS: i64 = 253_402_300_799_999;

/// RFC 3339 in UTC with milliseconds, as Go's `time.Time` JSON accepts.
/// Times outside 1970..=9999 are clamped (wall times are informational).
pub(crate) fn format_rfc3339(t: WallTime) -> String {
    let ms = t.as_millis().clamp(0, MAX_FORMATTABLE_MS);
    let system = UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs());
    humantime::format_rfc3339_millis(system).to_string()
}

/// Parses Terraform's `Created` (Go's RFC 3339 with up to nanoseconds, `Z` or
/// a `±hh:mm` offset).
pub(crate) fn parse_rfc3339(text: &str) -> Option<WallTime> {
    let has_offset =
        text.len() > 6 && matches!(text.as_bytes().get(text.len() - 6), Some(b'+' | b'-'));
    if !has_offset {
        return humantime::parse_rfc3339_weak(text)
            .ok()
            .map(WallTime::from_system);
    }
    // `±hh:mm` offset: parse the local part, then subtract the offset.
    let split = text.len() - 6;
    let (local, offset) = (text.get(..split)?, text.get(split..)?);
    let sign = match offset.as_bytes().first()? {
        b'+' => 1i64,
        b'-' => -1i64,
        _ => return None,
    };
    let hours: i64 = offset.get(1..3)?.parse().ok()?;
    let minutes: i64 = offset.get(4..6)?.parse().ok()?;
    if offset.as_bytes().get(3) != Some(&b':') || hours > 23 || minutes > 59 {
        return None;
    }
    let local = WallTime::from_system(humantime::parse_rfc3339_weak(local).ok()?);
    let offset_ms = sign * (hours * 3600 + minutes * 60) * 1000;
    Some(WallTime(local.as_millis().checked_sub(offset_ms)?))
}
