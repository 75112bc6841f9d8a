//! Sightings: what this machine has seen of lock records, remembered across
//! runs of the CLI, so that `locks`, `status` and `unlock` judge a holder's
//! liveness by how long *this machine* has seen the same record version —
//! never by comparing the holder's wall clock with ours.
//!
//! Each sighting is `(store, key) → (record version, boot id, CLOCK_BOOTTIME
//! and CLOCK_MONOTONIC_RAW readings when that version was first seen)`. Both
//! clocks are machine-wide, so two runs on the same boot can be compared; the
//! time a version has stood unchanged is the smaller of the two clocks'
//! elapsed times (it never over-counts: a suspend is not counted, an NTP slew
//! of boottime is capped by the raw oscillator). Sightings from another boot
//! are ignored.
//!
//! The file lives in `$STATELOCK_CACHE_DIR`, else `$XDG_CACHE_HOME/statelock`,
//! else `~/.cache/statelock` (`sightings.json`). It is a cache: a missing,
//! unreadable or unwritable file only means the first look knows nothing,
//! so nothing here ever fails a command. It must not be used for safety.

use crate::client::{Liveness, LockStatus};
use crate::protocol::{LockKey, ProtocolConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Sightings kept at most (the oldest are dropped beyond).
const MAX_SIGHTINGS: usize = 4096;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Sighting {
    rvn: String,
    boot_id: String,
    boottime_ns: u64,
    raw_ns: u64,
}

/// A reading of the machine-wide clocks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MachineNow {
    boot_id: String,
    boottime: Duration,
    raw: Duration,
}

#[cfg(target_os = "linux")]
fn machine_now() -> Option<MachineNow> {
    use nix::time::{clock_gettime, ClockId};
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let boottime = Duration::from(clock_gettime(ClockId::CLOCK_BOOTTIME).ok()?);
    let raw = Duration::from(clock_gettime(ClockId::CLOCK_MONOTONIC_RAW).ok()?);
    Some(MachineNow {
        boot_id: boot_id.trim().to_string(),
        boottime,
        raw,
    })
}

#[cfg(not(target_os = "linux"))]
fn machine_now() -> Option<MachineNow> {
    None
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Where the sightings file lives, from the given environment lookup.
fn cache_file(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let dir = env("STATELOCK_CACHE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            env("XDG_CACHE_HOME")
                .filter(|d| !d.is_empty())
                .map(|d| PathBuf::from(d).join("statelock"))
        })
        .or_else(|| {
            env("HOME")
                .filter(|d| !d.is_empty())
                .map(|h| PathBuf::from(h).join(".cache").join("statelock"))
        })?;
    Some(dir.join("sightings.json"))
}

/// The sightings of one store, loaded from the cache file.
#[derive(Debug)]
pub(crate) struct Sightings {
    path: Option<PathBuf>,
    store: String,
    now: Option<MachineNow>,
    entries: BTreeMap<String, Sighting>,
    dirty: bool,
}

impl Sightings {
    /// Loads the sightings for `store` (best effort: an unreadable file is
    /// treated as empty).
    pub(crate) fn load(store: &str) -> Sightings {
        let path = cache_file(|name| std::env::var(name).ok());
        let entries = path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Sightings {
            path,
            store: store.to_string(),
            now: machine_now(),
            entries,
            dirty: false,
        }
    }

    fn entry_key(&self, key: &LockKey) -> String {
        format!("{}\u{1f}{}", self.store, key.as_str())
    }

    /// Folds what this machine saw before into `status` (which holds what
    /// this process saw) and records the current version.
    pub(crate) fn apply(&mut self, status: &mut LockStatus, protocol: &ProtocolConfig) {
        let Some(now) = self.now.clone() else {
            return;
        };
        let record = &status.record;
        let name = self.entry_key(&record.key);
        let rvn = record.rvn.to_string();
        let (unchanged, changed) = match self.entries.get(&name) {
            Some(s) if s.boot_id == now.boot_id && s.rvn == rvn => {
                let by_boot = now
                    .boottime
                    .saturating_sub(Duration::from_nanos(s.boottime_ns));
                let by_raw = now.raw.saturating_sub(Duration::from_nanos(s.raw_ns));
                (by_boot.min(by_raw), false)
            }
            Some(s) if s.boot_id == now.boot_id => (Duration::ZERO, true),
            _ => (Duration::ZERO, false),
        };
        let same =
            matches!(self.entries.get(&name), Some(s) if s.boot_id == now.boot_id && s.rvn == rvn);
        if !same {
            self.entries.insert(
                name,
                Sighting {
                    rvn,
                    boot_id: now.boot_id.clone(),
                    boottime_ns: nanos(now.boottime),
                    raw_ns: nanos(now.raw),
                },
            );
            self.dirty = true;
        }
        let unchanged_ms = u64::try_from(unchanged.as_millis()).unwrap_or(u64::MAX);
        let changed = changed || status.liveness == Liveness::Alive;
        status.unchanged_ms = status.unchanged_ms.max(unchanged_ms);
        status.liveness = Liveness::judge(
            &status.record,
            Duration::from_millis(status.unchanged_ms),
            changed,
            protocol,
        );
        status.stale = status.liveness == Liveness::Stale;
    }

    /// Writes the sightings back (best effort, atomically).
    pub(crate) fn save(mut self) {
        if !self.dirty {
            return;
        }
        let Some(path) = self.path.take() else {
            return;
        };
        while self.entries.len() > MAX_SIGHTINGS {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, s)| s.boottime_ns)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.entries.remove(&k),
                None => break,
            };
        }
        let Ok(bytes) = serde_json::to_vec(&self.entries) else {
            return;
        };
        let Some(dir) = path.parent() else {
            return;
        };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        let temp = dir.join(format!(".sightings.{}.tmp", uuid::Uuid::new_v4().simple()));
        if std::fs::write(&temp, bytes).is_ok() && std::fs::rename(&temp, &path).is_err() {
            let _ = std::fs::remove_file(&temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{FencingToken, HolderInfo, LeaseId, LockRecord, RecordVersion, WallTime};

    fn status(rvn: u128, held: bool) -> LockStatus {
        LockStatus {
            record: LockRecord {
                key: LockKey::new("k").unwrap(),
                owner: LeaseId(uuid::Uuid::nil()),
                token: FencingToken(3),
                rvn: RecordVersion(rvn),
                lease_ms: 1_000,
                released: !held,
                holder: HolderInfo::named("h"),
                // Wall times far in the past and future: never used.
                acquired_at: WallTime(0),
                heartbeat_at: WallTime(i64::MAX / 2),
                forced_by: None,
                queue: Vec::new(),
            },
            held,
            liveness: if held {
                Liveness::Unknown
            } else {
                Liveness::Released
            },
            unchanged_ms: 0,
            stale: false,
            wall_age_ms: 0,
        }
    }

    fn sightings(now: MachineNow) -> Sightings {
        Sightings {
            path: None,
            store: "mem://".into(),
            now: Some(now),
            entries: BTreeMap::new(),
            dirty: false,
        }
    }

    fn at(boot: &str, boottime_s: u64, raw_s: u64) -> MachineNow {
        MachineNow {
            boot_id: boot.into(),
            boottime: Duration::from_secs(boottime_s),
            raw: Duration::from_secs(raw_s),
        }
    }

    #[test]
    fn liveness_comes_from_this_machines_sightings_not_wall_clocks() {
        let protocol = ProtocolConfig::default();
        let mut s = sightings(at("b1", 100, 100));
        let mut first = status(7, true);
        s.apply(&mut first, &protocol);
        assert_eq!(first.liveness, Liveness::Unknown);
        // 0.5 s later: same version, not yet a takeover wait (1.101 s).
        s.now = Some(at("b1", 100, 100));
        s.now.as_mut().unwrap().boottime += Duration::from_millis(500);
        s.now.as_mut().unwrap().raw += Duration::from_millis(500);
        let mut again = status(7, true);
        s.apply(&mut again, &protocol);
        assert_eq!(
            (again.liveness, again.unchanged_ms),
            (Liveness::Unknown, 500)
        );
        // A suspend of an hour: boottime jumps, raw does not; the smaller
        // elapsed time counts, so a suspend never makes a holder look stale.
        s.now = Some(at("b1", 3700, 101));
        let mut after_suspend = status(7, true);
        s.apply(&mut after_suspend, &protocol);
        assert_eq!(after_suspend.liveness, Liveness::Unknown);
        assert_eq!(after_suspend.unchanged_ms, 1000);
        // Both clocks past the takeover wait: stale.
        s.now = Some(at("b1", 3800, 200));
        let mut later = status(7, true);
        s.apply(&mut later, &protocol);
        assert_eq!(later.liveness, Liveness::Stale);
        assert!(later.stale);
        // A new version: alive, and the clock restarts.
        let mut renewed = status(8, true);
        s.apply(&mut renewed, &protocol);
        assert_eq!(renewed.liveness, Liveness::Alive);
        assert_eq!(renewed.unchanged_ms, 0);
    }

    #[test]
    fn sightings_from_another_boot_are_ignored() {
        let protocol = ProtocolConfig::default();
        let mut s = sightings(at("b1", 100, 100));
        s.apply(&mut status(7, true), &protocol);
        s.now = Some(at("b2", 5000, 5000));
        let mut after_reboot = status(7, true);
        s.apply(&mut after_reboot, &protocol);
        assert_eq!(after_reboot.liveness, Liveness::Unknown);
        assert_eq!(after_reboot.unchanged_ms, 0);
    }

    #[test]
    fn cache_file_location() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            cache_file(env(&[("STATELOCK_CACHE_DIR", "/c"), ("HOME", "/h")])),
            Some(PathBuf::from("/c/sightings.json"))
        );
        assert_eq!(
            cache_file(env(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")])),
            Some(PathBuf::from("/x/statelock/sightings.json"))
        );
        assert_eq!(
            cache_file(env(&[("HOME", "/h")])),
            Some(PathBuf::from("/h/.cache/statelock/sightings.json"))
        );
        assert_eq!(cache_file(env(&[])), None);
    }
}
