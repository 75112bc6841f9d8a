//! Time values the core reasons about. The core never reads a clock: callers pass
//! `now` in. `MonoTime` is a reading of one client's monotonic clock (comparable
//! only with readings of the same clock); `WallTime` is a wall-clock reading kept
//! for humans and never used for safety decisions.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::{Add, Sub};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A reading of a client's monotonic clock: time since that clock's origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MonoTime(Duration);

impl MonoTime {
    /// The clock's origin.
    pub const ZERO: MonoTime = MonoTime(Duration::ZERO);

    /// A reading `since_origin` after the clock's origin.
    pub const fn from_duration(since_origin: Duration) -> Self {
        MonoTime(since_origin)
    }

    /// Time since the clock's origin.
    pub const fn as_duration(self) -> Duration {
        self.0
    }

    /// `self - earlier`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: MonoTime) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for MonoTime {
    type Output = MonoTime;
    fn add(self, rhs: Duration) -> MonoTime {
        MonoTime(self.0.saturating_add(rhs))
    }
}

impl Sub<Duration> for MonoTime {
    type Output = MonoTime;
    fn sub(self, rhs: Duration) -> MonoTime {
        MonoTime(self.0.saturating_sub(rhs))
    }
}

/// A wall-clock reading in milliseconds since the Unix epoch. Informational only.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct WallTime(pub i64);

impl WallTime {
    /// Converts a `SystemTime` (times before 1970 become negative).
    pub fn from_system(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => WallTime(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Err(e) => WallTime(-i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX)),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// Whole seconds since the Unix epoch (rounded down).
    pub const fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// Converts back to a `SystemTime`.
    pub fn to_system(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_millis(self.0.unsigned_abs())
        } else {
            UNIX_EPOCH - Duration::from_millis(self.0.unsigned_abs())
        }
    }

    /// `self - earlier` when positive, else zero.
    pub fn saturating_since(self, earlier: WallTime) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

impl fmt::Display for WallTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_millis(self.to_system()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mono_arithmetic_saturates() {
        let t = MonoTime::from_duration(Duration::from_secs(5));
        assert_eq!(
            t.saturating_since(t + Duration::from_secs(1)),
            Duration::ZERO
        );
        assert_eq!(
            (t + Duration::from_secs(1)).saturating_since(t),
            Duration::from_secs(1)
        );
        assert_eq!(MonoTime::ZERO - Duration::from_secs(1), MonoTime::ZERO);
    }

    #[test]
    fn wall_round_trips_and_displays() {
        let w = WallTime(1_705_329_600_123);
        assert_eq!(WallTime::from_system(w.to_system()), w);
        assert_eq!(w.as_secs(), 1_705_329_600);
        assert_eq!(w.to_string(), "2024-01-15T14:40:00.123Z");
        assert_eq!(WallTime(-1500).as_secs(), -2);
        assert_eq!(WallTime(10).saturating_since(WallTime(20)), Duration::ZERO);
    }
}
