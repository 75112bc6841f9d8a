//! Clocks. The only module that reads the system clock.
//!
//! A [`Clock`] has two monotonic readings that share one origin and a wall
//! reading:
//! - the **holder** reading [`Clock::now`] never under-counts real time (by more
//!   than the drift bound ρ): a holder that trusts it never believes its lease
//!   lasts longer than it does in real time;
//! - the **waiter** reading [`Clock::now_waiter`] never over-counts real time
//!   (by more than ρ): a waiter that trusts it never believes another client's
//!   lease ran out before it did in real time;
//! - the wall reading is for humans and may jump.
//!
//! [`SystemClock`] is the real one. On Linux it combines CLOCK_BOOTTIME (counts
//! a suspend, but NTP may slew it) with CLOCK_MONOTONIC_RAW (never slewed, but
//! stops while suspended) by the rule of [`CombinedClock`]: the holder reading
//! is the larger of the two elapsed times, the waiter reading the smaller. Its
//! [`Clock::sleep`] waits on a CLOCK_BOOTTIME timer, so a sleep that a suspend
//! overran ends at once on resume. The guard's heartbeat loop sleeps with
//! [`Clock::sleep`] until its next heartbeat or its deadline, so this is what
//! makes a guard signal `lost()` as soon as the machine resumes from a suspend
//! longer than what is left of its lease, instead of a whole CLOCK_MONOTONIC
//! sleep later.
//!
//! [`TokioClock`] reads tokio's `Instant` (CLOCK_MONOTONIC, or tokio's paused
//! virtual time in tests); [`SkewedClock`] is a settable clock over tokio's
//! time with an offset, a rate (drift) and wall-clock steps, for tests and the
//! simulator. Both have one source, so their two readings are the same.
//!
//! What this module must not do: make any decision about leases (callers pass
//! readings to the pure protocol core), or let a reading go backwards.

mod combined;
mod system;

pub use combined::{ClockSources, CombinedClock};
pub use system::SystemClock;

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
///
/// # Which reading to use
/// Both monotonic readings count from the same origin, and a waiter reading
/// never exceeds a holder reading taken after it. A duration must start and
/// end on the same reading.
/// - [`now`](Clock::now), the **holder** reading, bounds how long *this*
///   client may act: the `t_send` noted before sending an acquire, takeover or
///   heartbeat, [`Lease::is_valid`](crate::protocol::Lease::is_valid), the
///   heartbeat schedule and the lost deadline, the stop times of a supervised
///   command, and the deadline of a bounded wait. Over-counting there is safe
///   (the lease ends early); under-counting is not.
/// - [`now_waiter`](Clock::now_waiter), the **waiter** reading, bounds how long
///   *another* client has been silent: the `t_obs` a waiter notes when it first
///   sees a record version, the takeover time derived from it, and an
///   operator's "unchanged for" age before a force-unlock. Under-counting
///   there is safe (the takeover comes late); over-counting is not.
///
/// # Sleeping
/// `sleep(d)` returns once at least `d` has passed on the holder reading
/// [`now`](Clock::now) since `sleep` was called (it may return later). The
/// waiter reading may have advanced less: a caller that needs
/// [`now_waiter`](Clock::now_waiter) to reach a time `t` loops,
/// `while clock.now_waiter() < t { clock.sleep(t.saturating_since(clock.now_waiter())).await }`.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The holder reading: never goes back, never under-counts real time by
    /// more than a factor ρ.
    fn now(&self) -> MonoTime;
    /// The waiter reading: never goes back, never over-counts real time by
    /// more than a factor ρ. A clock with one source returns [`Clock::now`].
    fn now_waiter(&self) -> MonoTime {
        self.now()
    }
    /// The wall-clock reading: informational, may jump.
    fn wall(&self) -> WallTime;
    /// Returns once at least `d` has passed on [`Clock::now`].
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

/// tokio's monotonic `Instant` and `SystemTime`: one source for both readings.
///
/// Under a paused runtime (`#[tokio::test(start_paused = true)]`) or a
/// simulator it follows tokio's virtual time, which is what tests that jump
/// time need ([`SystemClock`] reads the OS and does not move under a paused
/// runtime). On a real runtime it is CLOCK_MONOTONIC: it stops while the
/// machine is suspended and NTP may slew it beyond ρ, so it does not meet the
/// holder guarantee there; use [`SystemClock`] in production.
#[derive(Debug, Clone)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose monotonic origin is now.
    pub fn new() -> Self {
        TokioClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
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
    async fn tokio_clock_follows_virtual_time() {
        let c = TokioClock::new();
        let a = c.now();
        c.sleep(Duration::from_millis(5)).await;
        assert!(c.now() >= a + Duration::from_millis(5));
        assert_eq!(c.now_waiter(), c.now(), "one source: both readings agree");
        assert!(c.wall().as_millis() > 1_600_000_000_000);
    }
}
