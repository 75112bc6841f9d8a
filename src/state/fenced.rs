//! The state store's rules, written once over any [`StateBackend`]: the fence
//! in the document, seal before save, compare-and-swap saves, history
//! snapshots, backups and restores.
//!
//! Every write of `state.json` is a conditional put on the version read, and
//! every document carries its [`Stamp`]: the fence (token and lease of the
//! last sealer or saver), the count of saves and a write id. So:
//! - `seal` raises the fence to the writer's token (or finds it already
//!   there, for the same lease); a fence above the token, or equal to it for
//!   another lease, is `Stale`;
//! - `save` lands only on the version the writer read, and only while the
//!   fence is exactly the writer's (token, lease): a holder whose lock was
//!   taken over can write nothing once the new holder sealed;
//! - a document whose checksums do not match is never overwritten, except by
//!   a forced restore;
//! - each accepted save also writes `history/<serial>.json` with
//!   `If-None-Match`, never rewritten.
//!
//! A write whose answer was lost is recognised by its write id when the
//! document is read back.

use super::backend::{ObjectVersion, PutFailure, PutIf, StateBackend};
use super::document::{Stamp, StateDocument};
use super::layout::{stack_and_env, StatePaths};
use super::{HistoryEntry, Loaded, StateError, StateStore, StateVersion, Writer};
use crate::protocol::{LockKey, WallTime};
use async_trait::async_trait;

/// Conditional puts that lose a race before the store gives up: only stale
/// writers race with a holder, so a few attempts are plenty.
const RACE_ATTEMPTS: usize = 5;

/// A state store over a backend (see the module documentation).
#[derive(Debug, Clone)]
pub struct FencedStore<B> {
    backend: B,
}

fn version_of(v: ObjectVersion) -> StateVersion {
    StateVersion(v.0)
}

fn object_of(v: &StateVersion) -> ObjectVersion {
    ObjectVersion(v.0.clone())
}

fn wall_now() -> WallTime {
    WallTime::from_system(std::time::SystemTime::now())
}

/// The current document, read without checking its checksums (the rules
/// need its fence even when its content is damaged).
struct Current {
    version: StateVersion,
    doc: StateDocument,
}

impl Current {
    /// The fence of the document (0 and no lease for one written elsewhere).
    fn stamp(&self) -> Option<Stamp> {
        self.doc.statelock
    }
}

impl<B: StateBackend> FencedStore<B> {
    /// A store over `backend`.
    pub fn new(backend: B) -> Self {
        FencedStore { backend }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn corrupt(key: &LockKey, path: &str, why: String) -> StateError {
        StateError::Corrupt {
            key: key.to_string(),
            reason: format!("{path}: {why}"),
        }
    }

    async fn current(&self, key: &LockKey) -> Result<Option<Current>, StateError> {
        let path = StatePaths::of(key).state();
        let Some((bytes, version)) = self.backend.get(&path).await? else {
            return Ok(None);
        };
        let doc = StateDocument::from_json(&bytes).map_err(|e| Self::corrupt(key, &path, e))?;
        Ok(Some(Current {
            version: version_of(version),
            doc,
        }))
    }

    /// The checksum error of a stamped document, if its content does not
    /// match its checksums. Documents written elsewhere (no stamp) are taken
    /// as they are; they get checksums at their first save.
    fn check(key: &LockKey, doc: &StateDocument) -> Result<(), StateError> {
        if doc.statelock.is_none() {
            return Ok(());
        }
        match doc
            .checksum_problem()
            .map_err(|e| StateError::Misconfigured(e.to_string()))?
        {
            None => Ok(()),
            Some(p) => Err(StateError::ChecksumMismatch {
                key: key.to_string(),
                part: p.part.to_string(),
                stored: p.stored.unwrap_or_else(|| "(none)".to_string()),
                computed: p.computed,
            }),
        }
    }

    /// Whether `writer` may write over `stamp`: `Ok(true)` sealed by it,
    /// `Ok(false)` the fence is below its token, else why not.
    fn sealed_by(stamp: Option<Stamp>, writer: &Writer) -> Result<bool, StateError> {
        let Some(stamp) = stamp else {
            return Ok(false);
        };
        if stamp.fence > writer.token
            || (stamp.fence == writer.token && stamp.lease != writer.lease)
        {
            return Err(StateError::Stale {
                fence: stamp.fence,
                token: writer.token,
            });
        }
        Ok(stamp.fence == writer.token && stamp.lease == writer.lease)
    }

    fn stamp_for(writer: &Writer, serial: u64) -> Stamp {
        Stamp {
            fence: writer.token,
            lease: writer.lease,
            serial,
            write_id: rand::random(),
            written_at: wall_now(),
        }
    }

    fn encode(key: &LockKey, doc: &StateDocument) -> Result<Vec<u8>, StateError> {
        doc.to_json()
            .map_err(|e| StateError::Misconfigured(format!("{key}: {e}")))
    }

    /// Writes `doc` (stamped with serial `serial`) over the current version
    /// `expected`, sealed by `writer`; on an unknown outcome, reads back to
    /// recognise its own write. Also writes the history snapshot of a save.
    async fn write(
        &self,
        writer: &Writer,
        expected: &StateVersion,
        mut doc: StateDocument,
        serial: u64,
        history: bool,
    ) -> Result<StateVersion, StateError> {
        let key = &writer.key;
        let paths = StatePaths::of(key);
        let stamp = Self::stamp_for(writer, serial);
        doc.statelock = Some(stamp);
        doc.update_checksums()
            .map_err(|e| StateError::Misconfigured(format!("{key}: {e}")))?;
        let bytes = Self::encode(key, &doc)?;
        let put = self
            .backend
            .put(&paths.state(), &bytes, PutIf::Version(object_of(expected)))
            .await;
        let version = match put {
            Ok(v) => version_of(v),
            Err(PutFailure::ConditionFailed) => {
                return Err(self.why_refused(writer, expected).await)
            }
            Err(PutFailure::Error(e @ StateError::Unavailable(_))) => {
                // Did it land? Our write id tells.
                match self.current(key).await {
                    Ok(Some(c)) if c.stamp().map(|s| s.write_id) == Some(stamp.write_id) => {
                        c.version
                    }
                    _ => return Err(e),
                }
            }
            Err(PutFailure::Error(e)) => return Err(e),
        };
        if history {
            match self
                .backend
                .put(&paths.history(serial), &bytes, PutIf::Absent)
                .await
            {
                Ok(_) | Err(PutFailure::ConditionFailed) => {}
                Err(PutFailure::Error(e)) => {
                    tracing::warn!(lock_key = %key, serial, error = %e, "the state was saved but its history snapshot was not written");
                }
            }
        }
        Ok(version)
    }

    /// Why a conditional write of `writer` over `expected` failed.
    async fn why_refused(&self, writer: &Writer, expected: &StateVersion) -> StateError {
        match self.current(&writer.key).await {
            Err(e) => e,
            Ok(None) => StateError::NotSealed {
                key: writer.key.to_string(),
                fence: None,
            },
            Ok(Some(c)) => match Self::sealed_by(c.stamp(), writer) {
                Err(stale) => stale,
                Ok(false) => StateError::NotSealed {
                    key: writer.key.to_string(),
                    fence: c.stamp().map(|s| s.fence),
                },
                Ok(true) => StateError::VersionMismatch {
                    expected: Some(expected.clone()),
                    found: Some(c.version),
                },
            },
        }
    }

    /// The save of `doc` by `writer` over `expected`; `force` allows writing
    /// over a document whose checksums fail (a restore).
    async fn save_inner(
        &self,
        writer: &Writer,
        expected: &StateVersion,
        doc: StateDocument,
        force: bool,
    ) -> Result<StateVersion, StateError> {
        let key = &writer.key;
        let Some(current) = self.current(key).await? else {
            return Err(StateError::NotSealed {
                key: key.to_string(),
                fence: None,
            });
        };
        if !Self::sealed_by(current.stamp(), writer)? {
            return Err(StateError::NotSealed {
                key: key.to_string(),
                fence: current.stamp().map(|s| s.fence),
            });
        }
        if &current.version != expected {
            return Err(StateError::VersionMismatch {
                expected: Some(expected.clone()),
                found: Some(current.version),
            });
        }
        if !force {
            Self::check(key, &current.doc)?;
        }
        let serial = current.stamp().map_or(0, |s| s.serial) + 1;
        self.write(writer, expected, doc, serial, true).await
    }

    async fn read_snapshot(&self, key: &LockKey, id: &str) -> Result<StateDocument, StateError> {
        let paths = StatePaths::of(key);
        let valid = !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && !id.contains("..");
        if !valid {
            return Err(StateError::NotFound(format!(
                "{id:?} is not a snapshot name (see `statelock state history`)"
            )));
        }
        for path in [
            format!("{}{id}.json", paths.history_prefix()),
            format!("{}{id}.json", paths.backups_prefix()),
        ] {
            if let Some((bytes, _)) = self.backend.get(&path).await? {
                let doc =
                    StateDocument::from_json(&bytes).map_err(|e| Self::corrupt(key, &path, e))?;
                Self::check(key, &doc)?;
                return Ok(doc);
            }
        }
        Err(StateError::NotFound(format!(
            "no snapshot {id:?} of {key} in {}",
            self.backend.describe()
        )))
    }
}

#[async_trait]
impl<B: StateBackend> StateStore for FencedStore<B> {
    async fn load(&self, key: &LockKey) -> Result<Option<Loaded>, StateError> {
        let Some(current) = self.current(key).await? else {
            return Ok(None);
        };
        Self::check(key, &current.doc)?;
        Ok(Some(Loaded {
            version: current.version,
            document: current.doc,
        }))
    }

    async fn seal(&self, writer: &Writer) -> Result<Loaded, StateError> {
        let key = &writer.key;
        for _ in 0..RACE_ATTEMPTS {
            let current = self.current(key).await?;
            let (expected, doc, serial) = match current {
                None => {
                    let (stack, env) = stack_and_env(key).unzip();
                    (None, StateDocument::empty(stack, env), 0)
                }
                Some(c) => {
                    if Self::sealed_by(c.stamp(), writer)? {
                        return Ok(Loaded {
                            version: c.version,
                            document: c.doc,
                        });
                    }
                    let serial = c.stamp().map_or(0, |s| s.serial);
                    (Some(c.version), c.doc, serial)
                }
            };
            let mut sealed = doc;
            let stamp = Self::stamp_for(writer, serial);
            sealed.statelock = Some(stamp);
            // The content is kept as it is, checksums included: sealing never
            // repairs nor hides a damaged document.
            if expected.is_none() {
                sealed
                    .update_checksums()
                    .map_err(|e| StateError::Misconfigured(format!("{key}: {e}")))?;
            }
            let bytes = Self::encode(key, &sealed)?;
            let condition = match &expected {
                None => PutIf::Absent,
                Some(v) => PutIf::Version(object_of(v)),
            };
            match self
                .backend
                .put(&StatePaths::of(key).state(), &bytes, condition)
                .await
            {
                Ok(v) => {
                    return Ok(Loaded {
                        version: version_of(v),
                        document: sealed,
                    })
                }
                // Someone wrote meanwhile: look again.
                Err(PutFailure::ConditionFailed) => continue,
                Err(PutFailure::Error(e @ StateError::Unavailable(_))) => {
                    match self.current(key).await {
                        Ok(Some(c)) if c.stamp().map(|s| s.write_id) == Some(stamp.write_id) => {
                            return Ok(Loaded {
                                version: c.version,
                                document: c.doc,
                            })
                        }
                        _ => return Err(e),
                    }
                }
                Err(PutFailure::Error(e)) => return Err(e),
            }
        }
        Err(StateError::Unavailable(format!(
            "{key}: the state changed under every seal attempt; another writer is racing this holder"
        )))
    }

    async fn save(
        &self,
        writer: &Writer,
        expected: &StateVersion,
        document: StateDocument,
    ) -> Result<StateVersion, StateError> {
        self.save_inner(writer, expected, document, false).await
    }

    async fn history(&self, key: &LockKey, limit: usize) -> Result<Vec<HistoryEntry>, StateError> {
        let paths = StatePaths::of(key);
        let prefix = paths.history_prefix();
        let mut names = self.backend.list(&prefix).await?;
        names.sort();
        let mut entries = Vec::new();
        for name in names.iter().rev().take(limit) {
            let id = name
                .strip_prefix(&prefix)
                .and_then(|n| n.strip_suffix(".json"))
                .unwrap_or(name)
                .to_string();
            let Some((bytes, _)) = self.backend.get(name).await? else {
                continue;
            };
            let doc = StateDocument::from_json(&bytes).map_err(|e| Self::corrupt(key, name, e))?;
            let checksums_ok = doc.checksum_problem().map(|p| p.is_none()).unwrap_or(false);
            let Some(stamp) = doc.statelock else {
                return Err(Self::corrupt(
                    key,
                    name,
                    "a history snapshot without a stamp".into(),
                ));
            };
            entries.push(HistoryEntry {
                id,
                serial: stamp.serial,
                token: stamp.fence,
                lease: stamp.lease,
                written_at: stamp.written_at,
                updated_by: doc.metadata.last_updated_by.clone(),
                checksums_ok,
            });
        }
        Ok(entries)
    }

    async fn snapshot(&self, key: &LockKey, id: &str) -> Result<StateDocument, StateError> {
        self.read_snapshot(key, id).await
    }

    async fn backup(&self, key: &LockKey) -> Result<String, StateError> {
        let paths = StatePaths::of(key);
        let Some((bytes, _)) = self.backend.get(&paths.state()).await? else {
            return Err(StateError::NotFound(format!(
                "{key} has no state to back up"
            )));
        };
        let doc =
            StateDocument::from_json(&bytes).map_err(|e| Self::corrupt(key, &paths.state(), e))?;
        Self::check(key, &doc)?;
        let serial = doc.statelock.map_or(0, |s| s.serial);
        let path = paths.backup(serial, wall_now().as_millis());
        match self.backend.put(&path, &bytes, PutIf::Absent).await {
            Ok(_) => {}
            Err(PutFailure::ConditionFailed) => {
                return Err(StateError::Unavailable(format!(
                    "a backup named {path} already exists; try again"
                )))
            }
            Err(PutFailure::Error(e)) => return Err(e),
        }
        Ok(path
            .strip_prefix(&paths.backups_prefix())
            .and_then(|n| n.strip_suffix(".json"))
            .unwrap_or(&path)
            .to_string())
    }

    async fn restore(
        &self,
        writer: &Writer,
        id: &str,
        force: bool,
    ) -> Result<StateVersion, StateError> {
        let key = &writer.key;
        let snapshot = self.read_snapshot(key, id).await?;
        let Some(current) = self.current(key).await? else {
            return Err(StateError::NotSealed {
                key: key.to_string(),
                fence: None,
            });
        };
        self.save_inner(writer, &current.version, snapshot, force)
            .await
    }

    fn describe(&self) -> String {
        self.backend.describe()
    }
}
