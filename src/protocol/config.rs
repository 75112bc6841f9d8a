//! Protocol constants: the drift bound ρ and the safety margin, and the timing
//! formulas of PROTOCOL.md derived from them.

use super::ProtocolError;
use std::time::Duration;

/// ρ and the margin, shared by holders and waiters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolConfig {
    /// ρ in parts per million: the most any monotonic clock may drift from real
    /// time (1000 = 0.1 %).
    pub drift_ppm: u32,
    /// Extra safety margin subtracted by holders and added by waiters.
    pub margin: Duration,
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        ProtocolConfig {
            drift_ppm: 1000,
            margin: Duration::from_millis(100),
        }
    }
}

const PPM: u128 = 1_000_000;

fn scale(d: Duration, num: u128, round_up: bool) -> Duration {
    let nanos = d.as_nanos() * num;
    let scaled = if round_up {
        nanos.div_ceil(PPM)
    } else {
        nanos / PPM
    };
    Duration::from_nanos(u64::try_from(scaled).unwrap_or(u64::MAX))
}

impl ProtocolConfig {
    /// Checks ρ (< 10 %) and that `lease` is long enough to be renewed safely.
    pub fn check_lease(&self, lease: Duration) -> Result<(), ProtocolError> {
        if u128::from(self.drift_ppm) >= PPM / 10 {
            return Err(ProtocolError::DriftTooLarge(self.drift_ppm));
        }
        let min = self.min_lease();
        if lease < min {
            return Err(ProtocolError::LeaseTooShort { lease, min });
        }
        if lease > Duration::from_secs(7 * 24 * 3600) {
            return Err(ProtocolError::LeaseTooLong(lease));
        }
        Ok(())
    }

    /// The shortest lease accepted: three margins, and never under 30 ms.
    pub fn min_lease(&self) -> Duration {
        (self.margin * 3).max(Duration::from_millis(30))
    }

    /// How long after `t_send` (holder's clock) the holder may believe it holds:
    /// `lease × (1 − ρ) − margin`.
    pub fn holder_validity(&self, lease: Duration) -> Duration {
        scale(lease, PPM - u128::from(self.drift_ppm), false).saturating_sub(self.margin)
    }

    /// How long a waiter must see the same record version (waiter's clock) before
    /// it may take over: `lease × (1 + ρ) + margin`.
    pub fn takeover_wait(&self, lease: Duration) -> Duration {
        scale(lease, PPM + u128::from(self.drift_ppm), true).saturating_add(self.margin)
    }

    /// The holder renews every `lease / 3`.
    pub fn heartbeat_interval(&self, lease: Duration) -> Duration {
        lease / 3
    }

    /// After an unanswered heartbeat, the holder retries this often.
    pub fn heartbeat_retry(&self, lease: Duration) -> Duration {
        (lease / 20).max(Duration::from_millis(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas() {
        let cfg = ProtocolConfig {
            drift_ppm: 1000,
            margin: Duration::from_millis(100),
        };
        let lease = Duration::from_secs(20);
        assert_eq!(cfg.holder_validity(lease), Duration::from_millis(19_880));
        assert_eq!(cfg.takeover_wait(lease), Duration::from_millis(20_120));
        assert_eq!(
            cfg.heartbeat_interval(lease),
            Duration::from_millis(6_666) + Duration::from_nanos(666_666)
        );
        // The holder's real validity ends before the waiter's real wait does,
        // whatever the two clocks' rates within ρ.
        let holder_real_max = cfg.holder_validity(lease).as_secs_f64() / (1.0 - 0.001);
        let waiter_real_min = cfg.takeover_wait(lease).as_secs_f64() / (1.0 + 0.001);
        assert!(holder_real_max < waiter_real_min);
    }

    #[test]
    fn lease_checks() {
        let cfg = ProtocolConfig::default();
        assert!(cfg.check_lease(Duration::from_secs(20)).is_ok());
        assert_eq!(
            cfg.check_lease(Duration::from_millis(200)),
            Err(ProtocolError::LeaseTooShort {
                lease: Duration::from_millis(200),
                min: Duration::from_millis(300)
            })
        );
        assert!(matches!(
            cfg.check_lease(Duration::from_secs(8 * 24 * 3600)),
            Err(ProtocolError::LeaseTooLong(_))
        ));
        let wild = ProtocolConfig {
            drift_ppm: 200_000,
            ..cfg
        };
        assert_eq!(
            wild.check_lease(Duration::from_secs(20)),
            Err(ProtocolError::DriftTooLarge(200_000))
        );
    }
}
