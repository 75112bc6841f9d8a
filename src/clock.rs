//! Clocks. The only module that reads the system clock.
//!
//! A [`Clock`] has a monotonic reading (used for every safety decision) and a
//! wall reading (for humans). [`SystemClock`] is the real one; [`SkewedClock`]
//! is a settable clock with an offset, a rate (drift) and wall-clock steps, for
//! tests and the simulator. Both are built on tokio's time, so tests with a
//! paused runtime and the simulator's virtual time drive them.

use crate::protocol::{MonoTime, WallTime};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// A boxed sleep future.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of time for one client.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The monotonic reading: never goes back, drifts from real time by at most ρ.
    /// This is the **holder** reading (it must never under-count real time):
    /// leases, `t_send` and supervision deadlines use it.
    fn now(&self) -> MonoTime;
    /// The **waiter** reading (it must never over-count real time): takeover
    /// waits and wait deadlines use it. Defaults to [`Clock::now`] for clocks
    /// with one source.
    fn now_waiter(&self) -> MonoTime {
        self.now()
    }
    /// The wall-clock reading: informational, may jump.
    fn wall(&self) -> WallTime;
    /// Sleeps for `d` as measured by this clock.
    fn sleep(&self, d: Duration) -> Sleep;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> MonoTime {
        (**self).now()
    }
    fn now_waiter(&self) -> MonoTime {
        (**self).now_waiter()
    }
    fn wall(&self) -> WallTime {
        (**self).wall()
    }
    fn sleep(&self, d: Duration) -> Sleep {
        (**self).sleep(d)
    }
}

/// The machine's clocks: tokio's monotonic `Instant` and `SystemTime`.
#[derive(Debug, Clone)]
pub struct SystemClock {
    origin: tokio::time::Instant,
}

impl SystemClock {
    /// A clock whose monotonic origin is now.
    pub fn new() -> Self {
        SystemClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> MonoTime {
        MonoTime::from_duration(tokio::time::Instant::now().duration_since(self.origin))
    }
    fn wall(&self) -> WallTime {
        WallTime::from_system(SystemTime::now())
    }
    fn sleep(&self, d: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(d))
    }
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    /// Real (tokio) time since origin at the start of this segment.
    real_start: Duration,
    /// Monotonic reading at the start of this segment.
    mono_start: Duration,
    /// Clock rate relative to real time (1.0 = exact).
    rate: f64,
}

#[derive(Debug)]
struct SkewState {
    segment: Segment,
    wall_epoch: WallTime,
    wall_offset_ms: i64,
}

/// A settable clock over tokio's (possibly virtual) time: a monotonic offset, a
/// rate (1.0 = real time; 1.001 = 1000 ppm fast) that can change at any moment
/// without the reading jumping, and wall-clock offset and steps.
#[derive(Debug, Clone)]
pub struct SkewedClock {
    origin: tokio::time::Instant,
    state: Arc<Mutex<SkewState>>,
}

impl SkewedClock {
    /// A clock reading `mono_offset` now, running at `rate`, whose wall clock
    /// reads `wall_epoch` when the monotonic reading is zero.
    pub fn new(mono_offset: Duration, rate: f64, wall_epoch: WallTime) -> Self {
        SkewedClock {
            origin: tokio::time::Instant::now(),
            state: Arc::new(Mutex::new(SkewState {
                segment: Segment {
                    real_start: Duration::ZERO,
                    mono_start: mono_offset,
                    rate: sanitize_rate(rate),
                },
                wall_epoch,
                wall_offset_ms: 0,
            })),
        }
    }

    /// A clock that runs at real rate from zero, with wall time 2024-01-01.
    pub fn exact() -> Self {
        SkewedClock::new(Duration::ZERO, 1.0, WallTime(1_704_067_200_000))
    }

    fn real(&self) -> Duration {
        tokio::time::Instant::now().duration_since(self.origin)
    }

    fn mono_at(seg: &Segment, real: Duration) -> Duration {
        let elapsed = real.saturating_sub(seg.real_start);
        seg.mono_start + elapsed.mul_f64(seg.rate)
    }

    /// Changes the rate from now on; the reading does not jump.
    pub fn set_rate(&self, rate: f64) {
        let real = self.real();
        let mut st = lock(&self.state);
        let mono = Self::mono_at(&st.segment, real);
        st.segment = Segment {
            real_start: real,
            mono_start: mono,
            rate: sanitize_rate(rate),
        };
    }

    /// The current rate.
    pub fn rate(&self) -> f64 {
        lock(&self.state).segment.rate
    }

    /// Steps the wall clock by `delta_ms` (may be negative); the monotonic
    /// reading is unaffected.
    pub fn step_wall(&self, delta_ms: i64) {
        let mut st = lock(&self.state);
        st.wall_offset_ms = st.wall_offset_ms.saturating_add(delta_ms);
    }
}

fn lock(m: &Mutex<SkewState>) -> MutexGuard<'_, SkewState> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn sanitize_rate(rate: f64) -> f64 {
    if rate.is_finite() && rate > 0.0 {
        rate
    } else {
        1.0
    }
}

impl Clock for SkewedClock {
    fn now(&self) -> MonoTime {
        let real = self.real();
        let st = lock(&self.state);
        MonoTime::from_duration(Self::mono_at(&st.segment, real))
    }
    fn wall(&self) -> WallTime {
        let mono = self.now().as_duration();
        let st = lock(&self.state);
        let ms = i64::try_from(mono.as_millis()).unwrap_or(i64::MAX);
        WallTime(
            st.wall_epoch
                .0
                .saturating_add(ms)
                .saturating_add(st.wall_offset_ms),
        )
    }
    fn sleep(&self, d: Duration) -> Sleep {
        let rate = self.rate();
        // Round up so that, on waking, at least `d` has passed on this clock.
        let real = d.div_f64(rate) + Duration::from_nanos(1);
        Box::pin(tokio::time::sleep(real))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn skewed_clock_rate_offset_and_steps() {
        let c = SkewedClock::new(Duration::from_secs(100), 2.0, WallTime(0));
        assert_eq!(c.now(), MonoTime::from_duration(Duration::from_secs(100)));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(c.now(), MonoTime::from_duration(Duration::from_secs(102)));
        c.set_rate(0.5);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(c.now(), MonoTime::from_duration(Duration::from_secs(103)));
        let before = c.now();
        c.step_wall(-60_000);
        assert_eq!(c.now(), before, "wall steps never move the monotonic clock");
        assert_eq!(c.wall(), WallTime(103_000 - 60_000));
        // Sleeping 1 s of a half-speed clock takes 2 s of real time.
        let t0 = tokio::time::Instant::now();
        c.sleep(Duration::from_secs(1)).await;
        let real = t0.elapsed();
        assert!(
            real >= Duration::from_secs(2) && real < Duration::from_millis(2010),
            "{real:?}"
        );
        assert!(c.now() >= before + Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn system_clock_is_monotonic() {
        let c = SystemClock::new();
        let a = c.now();
        c.sleep(Duration::from_millis(5)).await;
        assert!(c.now() >= a + Duration::from_millis(5));
        assert!(c.wall().as_millis() > 1_600_000_000_000);
    }
}
