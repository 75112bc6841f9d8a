//! The JSON encoding of lock records and of the token floor shared by the
//! stores that keep one document per record (the directory store's files,
//! the S3 store's objects):
//!
//! - a record is `{"format":"statelock-lock-v1","record":{...}}`, written
//!   pretty for humans, at most [`MAX_RECORD_BYTES`];
//! - the token floor is `{"format":"statelock-token-floor-v1","floor":N}`.
//!
//! This module only converts between bytes and values. It must not decide
//! where a document lives or whether a record belongs at the place it was
//! read from: each store checks that (a record whose key belongs elsewhere is
//! corrupt there), and each store reports a decoding failure as
//! [`StoreError::Corrupt`] naming its own place.

use super::StoreError;
use crate::protocol::{FencingToken, LockRecord};
use serde::{Deserialize, Serialize};

/// The `format` tag of every record document.
pub const RECORD_FORMAT: &str = "statelock-lock-v1";

/// The largest record document accepted, in bytes. Larger documents are
/// reported as corrupt on reading, and a write that would produce one is
/// refused.
pub const MAX_RECORD_BYTES: u64 = 1 << 20;

/// The `format` tag of the token floor document.
pub const FLOOR_FORMAT: &str = "statelock-token-floor-v1";

/// The record envelope, as written.
#[derive(Serialize)]
struct EnvelopeOut<'a> {
    format: &'static str,
    record: &'a LockRecord,
}

/// True if `len` bytes are more than [`MAX_RECORD_BYTES`].
pub fn too_large(len: usize) -> bool {
    u64::try_from(len).map_or(true, |len| len > MAX_RECORD_BYTES)
}

/// Parses a record document, checking its envelope. The error is a reason
/// for [`StoreError::Corrupt`]; the caller still has to check that the key
/// inside belongs where the document was found.
pub fn decode(bytes: &[u8]) -> Result<LockRecord, String> {
    if bytes.is_empty() {
        return Err("the file is empty".to_string());
    }
    if too_large(bytes.len()) {
        return Err(format!("the file is larger than {MAX_RECORD_BYTES} bytes"));
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let Some(envelope) = value.as_object() else {
        return Err("not a statelock lock record: the JSON is not an object".to_string());
    };
    match envelope.get("format") {
        Some(serde_json::Value::String(format)) if format == RECORD_FORMAT => {}
        Some(other) => {
            return Err(format!(
                "unsupported format {other} (this version reads {RECORD_FORMAT:?})"
            ))
        }
        None => return Err("not a statelock lock record: it has no \"format\" field".to_string()),
    }
    let Some(record) = envelope.get("record") else {
        return Err("the envelope has no \"record\" field".to_string());
    };
    LockRecord::deserialize(record).map_err(|e| format!("the record is invalid: {e}"))
}

/// The bytes of the record document for `record` (pretty JSON and a final
/// newline). Refuses a record that would exceed [`MAX_RECORD_BYTES`].
pub fn encode(record: &LockRecord) -> Result<Vec<u8>, StoreError> {
    let envelope = EnvelopeOut {
        format: RECORD_FORMAT,
        record,
    };
    let mut bytes = serde_json::to_vec_pretty(&envelope).map_err(|e| {
        StoreError::Misconfigured(format!(
            "cannot encode the lock record of {:?}: {e}",
            record.key.as_str()
        ))
    })?;
    bytes.push(b'\n');
    if too_large(bytes.len()) {
        return Err(StoreError::Misconfigured(format!(
            "the lock record of {:?} would take {} bytes, more than the {MAX_RECORD_BYTES} \
             this store accepts: shorten the holder metadata",
            record.key.as_str(),
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Parses a token floor document. The error is a reason for
/// [`StoreError::Corrupt`].
pub fn decode_floor(bytes: &[u8]) -> Result<FencingToken, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    match (
        value.get("format"),
        value.get("floor").and_then(|f| f.as_u64()),
    ) {
        (Some(serde_json::Value::String(f)), Some(floor)) if f == FLOOR_FORMAT => {
            Ok(FencingToken(floor))
        }
        _ => Err(format!(
            "expected {{\"format\":\"{FLOOR_FORMAT}\",\"floor\":N}}"
        )),
    }
}

/// The bytes of the token floor document for `floor`.
pub fn encode_floor(floor: FencingToken) -> Result<Vec<u8>, StoreError> {
    let mut bytes = serde_json::to_vec_pretty(&serde_json::json!({
        "format": FLOOR_FORMAT,
        "floor": floor.0,
    }))
    .map_err(|e| StoreError::Misconfigured(format!("cannot encode the token floor: {e}")))?;
    bytes.push(b'\n');
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{HolderInfo, LeaseId, LockKey, RecordVersion, WallTime};

    fn record() -> LockRecord {
        LockRecord {
            key: LockKey::new("stack:web:env:prod").unwrap(),
            owner: LeaseId(uuid::Uuid::from_u128(7)),
            token: FencingToken(3),
            rvn: RecordVersion(0xabc),
            lease_ms: 20_000,
            released: false,
            holder: HolderInfo::named("ci"),
            acquired_at: WallTime(1),
            heartbeat_at: WallTime(2),
            forced_by: None,
            queue: Vec::new(),
        }
    }

    #[test]
    fn records_and_floors_round_trip() {
        let r = record();
        let bytes = encode(&r).unwrap();
        assert!(bytes.ends_with(b"}\n"));
        assert_eq!(decode(&bytes), Ok(r));
        let floor = encode_floor(FencingToken(41)).unwrap();
        assert_eq!(decode_floor(&floor), Ok(FencingToken(41)));
    }

    #[test]
    fn damaged_documents_are_reasons_not_panics() {
        for bad in [
            &b""[..],
            b"{",
            b"[1]",
            br#"{"format":"statelock-lock-v9","record":{}}"#,
            br#"{"record":{}}"#,
            br#"{"format":"statelock-lock-v1"}"#,
            br#"{"format":"statelock-lock-v1","record":{"key":"k"}}"#,
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        for bad in [
            &b""[..],
            b"{}",
            br#"{"format":"statelock-token-floor-v1","floor":-1}"#,
            br#"{"format":"other","floor":1}"#,
        ] {
            assert!(decode_floor(bad).is_err());
        }
    }
}
