//! The lock record a store keeps per key, and the identifiers in it: the fencing
//! token, the record version and the lease id.

use super::{LockKey, WallTime};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;

/// A fencing token: strictly increasing over every grant of a key, never reused.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

impl FencingToken {
    /// The token of the first grant of a key.
    pub const FIRST: FencingToken = FencingToken(1);

    /// No grant: no statelock grant ever carries it (tokens start at
    /// [`Self::FIRST`]); records of lock formats without fencing tokens
    /// (Terraform's lock items) do.
    pub const NONE: FencingToken = FencingToken(0);

    /// True for [`Self::NONE`].
    pub fn is_none(&self) -> bool {
        *self == Self::NONE
    }

    /// The token the next grant after this one receives, if any is left.
    pub fn next(self) -> Option<FencingToken> {
        self.0.checked_add(1).map(FencingToken)
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A record version: a random 128-bit value chosen by the writer of each write,
/// so that a writer whose response was lost recognises its own write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordVersion(pub u128);

impl RecordVersion {
    /// A fresh random version.
    pub fn random() -> Self {
        RecordVersion(rand::random())
    }
}

impl fmt::Display for RecordVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Error parsing a [`RecordVersion`] from its 32-hex-digit form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a record version is 32 hexadecimal digits, got {0:?}")]
pub struct InvalidRecordVersion(pub String);

impl FromStr for RecordVersion {
    type Err = InvalidRecordVersion;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidRecordVersion(s.to_string()));
        }
        u128::from_str_radix(s, 16)
            .map(RecordVersion)
            .map_err(|_| InvalidRecordVersion(s.to_string()))
    }
}

impl Serialize for RecordVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RecordVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The id of one lease (one grant to one client): the record's `owner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseId(pub Uuid);

impl LeaseId {
    /// A fresh random (v4) lease id.
    pub fn random() -> Self {
        LeaseId(Uuid::new_v4())
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Who holds (or asks for) a lock: shown to humans, never used for decisions.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HolderInfo {
    /// Free-form holder name, e.g. `github-actions-run-12345` or `alice@laptop`.
    pub locked_by: String,
    /// What the holder is doing, e.g. `apply`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// Host name of the holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Process id of the holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Other metadata (CI run, git commit, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl HolderInfo {
    /// A holder called `locked_by`, with no other details.
    pub fn named(locked_by: impl Into<String>) -> Self {
        HolderInfo {
            locked_by: locked_by.into(),
            ..HolderInfo::default()
        }
    }
}

impl fmt::Display for HolderInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.locked_by)?;
        if let Some(op) = &self.operation {
            write!(f, " ({op})")?;
        }
        match (&self.host, self.pid) {
            (Some(h), Some(p)) => write!(f, " on {h} pid {p}"),
            (Some(h), None) => write!(f, " on {h}"),
            (None, Some(p)) => write!(f, " pid {p}"),
            (None, None) => Ok(()),
        }
    }
}

/// The record a store keeps for one key (see PROTOCOL.md, "The lock record").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// The key this record locks.
    pub key: LockKey,
    /// The lease that holds (or last held) the lock.
    pub owner: LeaseId,
    /// The fencing token of the current (or last) grant.
    pub token: FencingToken,
    /// The version of this record: changes on every write.
    pub rvn: RecordVersion,
    /// The lease duration the holder promised to renew within, in milliseconds.
    pub lease_ms: u64,
    /// True when nobody holds the lock.
    pub released: bool,
    /// Who holds (or last held) the lock.
    pub holder: HolderInfo,
    /// Wall-clock time of the grant (informational).
    pub acquired_at: WallTime,
    /// Wall-clock time of the last write (informational).
    pub heartbeat_at: WallTime,
    /// Who forced the last release, if it was forced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced_by: Option<String>,
    /// The waiters registered for the key, in arrival order (the lease ids
    /// they will hold as): a released record is granted to the first (see
    /// PROTOCOL.md, "Hand-off queue"). At most [`Self::MAX_QUEUE`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queue: Vec<LeaseId>,
}

impl LockRecord {
    /// The promised lease as a duration.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    /// The `lease_ms` of a lock that never expires: records of lock formats
    /// without leases (Terraform's lock items) carry it.
    pub const NO_EXPIRY_LEASE_MS: u64 = u64::MAX;

    /// False for a lock that never expires ([`Self::NO_EXPIRY_LEASE_MS`]):
    /// nobody can take it over, only its holder or an operator can free it.
    pub fn expires(&self) -> bool {
        self.lease_ms != Self::NO_EXPIRY_LEASE_MS
    }

    /// False for records of lock formats without fencing tokens.
    pub fn has_token(&self) -> bool {
        self.token != FencingToken::NONE
    }

    /// True while some lease holds the lock (as far as the record says).
    pub fn is_held(&self) -> bool {
        !self.released
    }

    /// The most waiters a record's queue registers; later waiters poll
    /// unregistered until a place frees.
    pub const MAX_QUEUE: usize = 32;

    /// Where `waiter` is in the queue, if it is registered.
    pub fn queue_position(&self, waiter: LeaseId) -> Option<usize> {
        self.queue.iter().position(|w| *w == waiter)
    }

    /// The waiter a released record is reserved for: the first in the queue.
    pub fn queue_head(&self) -> Option<LeaseId> {
        self.queue.first().copied()
    }
}
