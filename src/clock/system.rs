//! The machine's clock, [`SystemClock`]: OS clock sources under the rule of
//! [`CombinedClock`], and a sleep that wakes at once after a suspend.
//!
//! On Linux (and Android) the sources are CLOCK_BOOTTIME and
//! CLOCK_MONOTONIC_RAW, and a sleep waits on a CLOCK_BOOTTIME timerfd
//! registered with tokio: a suspend moves CLOCK_BOOTTIME on, so a timer that
//! the suspend overran fires as soon as the machine resumes. If the timerfd
//! cannot be made, sleeps fall back to tokio's timer in slices of at most one
//! second, so a resume is noticed within a second. On other unix systems both
//! sources are CLOCK_MONOTONIC: the guarantee is only what that clock gives
//! there (it may stop during a suspend, and NTP may slew it beyond ρ).
//!
//! This module must not read tokio's `Instant` for a reading (tokio's clock is
//! CLOCK_MONOTONIC and stops while the machine is suspended) and must not
//! block a runtime thread.

use super::combined::{ClockSources, CombinedClock, FALLBACK_SLICE};
use super::{Clock, Sleep};
use crate::protocol::{MonoTime, WallTime};
use nix::time::{clock_gettime, ClockId};
use std::time::{Duration, SystemTime};

#[cfg(any(target_os = "linux", target_os = "android"))]
type OsSources = BootAndRawSources;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
type OsSources = MonotonicSources;

/// The machine's clocks: a holder reading that counts a suspend and ignores
/// NTP slewing, a waiter reading that does neither, and `SystemTime`.
///
/// On Linux the holder reading is the larger of CLOCK_BOOTTIME and
/// CLOCK_MONOTONIC_RAW elapsed since the clock was made, the waiter reading the
/// smaller (see [`CombinedClock`]), and [`Clock::sleep`] waits on a
/// CLOCK_BOOTTIME timer, so a guard's heartbeat loop wakes, and signals
/// `lost()`, as soon as the machine resumes from a suspend that outlasted its
/// lease. On other unix systems both readings are CLOCK_MONOTONIC (a weaker
/// guarantee: a suspend or NTP slewing there may make the holder under-count).
///
/// Its readings are the OS's: they do not move under a paused tokio runtime;
/// tests that jump tokio's time use [`TokioClock`](super::TokioClock) or
/// [`SkewedClock`](super::SkewedClock). Its sleep needs a tokio runtime with
/// both the time and the IO driver enabled (`enable_all()`), as the network
/// stores do.
#[derive(Debug, Clone)]
pub struct SystemClock {
    clock: CombinedClock<OsSources>,
}

impl SystemClock {
    /// A clock whose monotonic origin is now.
    pub fn new() -> Self {
        SystemClock {
            clock: CombinedClock::new(OsSources::default()),
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
        self.clock.now()
    }
    fn now_waiter(&self) -> MonoTime {
        self.clock.now_waiter()
    }
    fn wall(&self) -> WallTime {
        WallTime::from_system(SystemTime::now())
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn sleep(&self, d: Duration) -> Sleep {
        let clock = self.clock.clone();
        let target = clock.now() + d;
        Box::pin(async move {
            // Made on the first wait, inside the runtime (tokio registers it).
            let mut timer = BootTimerState::Untried;
            while let Some(left) = clock.holder_left(target) {
                if let Some(boot_timer) = timer.get() {
                    match boot_timer.wait(left).await {
                        // CLOCK_BOOTTIME moved by `left`; the holder reading
                        // may lag it by what the raw clock was ahead: re-check.
                        Ok(()) => continue,
                        Err(e) => {
                            tracing::debug!(error = %e, "CLOCK_BOOTTIME timer failed; sleeping in slices of at most 1 s");
                            timer = BootTimerState::Unavailable;
                        }
                    }
                }
                tokio::time::sleep(left.min(FALLBACK_SLICE)).await;
            }
        })
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn sleep(&self, d: Duration) -> Sleep {
        // Sliced: re-reads CLOCK_MONOTONIC at least once a second.
        self.clock.sleep(d)
    }
}

/// Reads an OS clock as the time since its origin; `None` if the OS refuses.
fn read_os_clock(id: ClockId) -> Option<Duration> {
    let ts = clock_gettime(id).ok()?;
    let secs = u64::try_from(ts.tv_sec()).ok()?;
    let nanos = u32::try_from(ts.tv_nsec()).ok()?;
    (nanos < 1_000_000_000).then(|| Duration::new(secs, nanos))
}

/// Linux's CLOCK_BOOTTIME and CLOCK_MONOTONIC_RAW.
///
/// Both exist since Linux 2.6.39 and reading them cannot fail there; should it
/// fail anyway, the reading falls back to CLOCK_MONOTONIC (and, failing that,
/// zero), and the [`CombinedClock`] keeps its readings from going back.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[derive(Debug, Default, Clone, Copy)]
struct BootAndRawSources;

#[cfg(any(target_os = "linux", target_os = "android"))]
impl ClockSources for BootAndRawSources {
    fn boottime(&self) -> Duration {
        read_os_clock(ClockId::CLOCK_BOOTTIME)
            .or_else(|| read_os_clock(ClockId::CLOCK_MONOTONIC))
            .unwrap_or_default()
    }
    fn monotonic_raw(&self) -> Duration {
        read_os_clock(ClockId::CLOCK_MONOTONIC_RAW)
            .or_else(|| read_os_clock(ClockId::CLOCK_MONOTONIC))
            .unwrap_or_default()
    }
}

/// CLOCK_MONOTONIC for both sources: the fallback where the OS has neither
/// CLOCK_BOOTTIME nor CLOCK_MONOTONIC_RAW. (Built on Linux only for its test.)
#[cfg(any(
    not(any(target_os = "linux", target_os = "android")),
    all(test, not(loom))
))]
#[derive(Debug, Default, Clone, Copy)]
struct MonotonicSources;

#[cfg(any(
    not(any(target_os = "linux", target_os = "android")),
    all(test, not(loom))
))]
impl ClockSources for MonotonicSources {
    fn boottime(&self) -> Duration {
        read_os_clock(ClockId::CLOCK_MONOTONIC).unwrap_or_default()
    }
    fn monotonic_raw(&self) -> Duration {
        read_os_clock(ClockId::CLOCK_MONOTONIC).unwrap_or_default()
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
use boot_timer::BootTimerState;

#[cfg(any(target_os = "linux", target_os = "android"))]
mod boot_timer {
    use nix::sys::time::TimeSpec;
    use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
    use std::io;
    use std::os::fd::{AsFd, AsRawFd, RawFd};
    use std::time::Duration;
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    /// The longest one arming of the timer; a longer wait returns early and
    /// the caller re-arms (this also keeps the seconds within `time_t`).
    const MAX_ARM: Duration = Duration::from_secs(24 * 60 * 60);

    /// The timerfd, for tokio's registration (which wants a raw fd).
    #[derive(Debug)]
    struct TimerFdHandle(TimerFd);

    impl AsRawFd for TimerFdHandle {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_fd().as_raw_fd()
        }
    }

    /// A one-shot CLOCK_BOOTTIME timer that a task can await.
    #[derive(Debug)]
    pub(super) struct BootTimer {
        fd: AsyncFd<TimerFdHandle>,
    }

    impl BootTimer {
        /// A disarmed timer registered with the current tokio runtime.
        pub(super) fn new() -> io::Result<Self> {
            let timer = TimerFd::new(
                ClockId::CLOCK_BOOTTIME,
                TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
            )?;
            // tokio deprecated its safe constructors (its unsafe `register`
            // needs an `unsafe` block, which this crate forbids) because
            // nothing stops an arbitrary `AsRawFd` from closing or changing
            // its fd while registered. `TimerFdHandle` cannot: it owns the fd,
            // always returns that same fd, is never handed out, and the fd is
            // closed only when the `AsyncFd` drops it after deregistering.
            #[allow(deprecated)]
            let fd = AsyncFd::with_interest(TimerFdHandle(timer), Interest::READABLE)?;
            Ok(BootTimer { fd })
        }

        /// Returns once CLOCK_BOOTTIME has advanced by `d` (or by one day, if
        /// `d` is longer), at once on resume from a suspend that overran it.
        pub(super) async fn wait(&self, d: Duration) -> io::Result<()> {
            // A zero expiration would disarm the timer instead.
            let d = d.clamp(Duration::from_nanos(1), MAX_ARM);
            self.fd.get_ref().0.set(
                Expiration::OneShot(TimeSpec::from_duration(d)),
                TimerSetTimeFlags::empty(),
            )?;
            loop {
                let mut ready = self.fd.readable().await?;
                let mut expirations = [0u8; 8];
                let read = ready.try_io(|fd| {
                    nix::unistd::read(fd.get_ref().0.as_fd(), &mut expirations)
                        .map_err(io::Error::from)
                });
                match read {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Ok(Err(e)) => return Err(e),
                    // Not expired yet (stale readiness): wait again.
                    Err(_would_block) => {}
                }
            }
        }
    }

    /// A sleep's timer, made when first needed.
    #[derive(Debug)]
    pub(super) enum BootTimerState {
        Untried,
        Ready(BootTimer),
        Unavailable,
    }

    impl BootTimerState {
        /// The timer, making it on first use; `None` if it cannot be made.
        pub(super) fn get(&mut self) -> Option<&BootTimer> {
            if let BootTimerState::Untried = self {
                *self = match BootTimer::new() {
                    Ok(timer) => BootTimerState::Ready(timer),
                    Err(e) => {
                        tracing::debug!(error = %e, "no CLOCK_BOOTTIME timer; sleeping in slices of at most 1 s");
                        BootTimerState::Unavailable
                    }
                };
            }
            match self {
                BootTimerState::Ready(timer) => Some(timer),
                _ => None,
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    use boot_timer::BootTimer;

    #[tokio::test]
    async fn system_clock_sleep_waits_on_the_holder_reading() {
        let c = SystemClock::new();
        for _ in 0..5 {
            let w = c.now_waiter();
            let h = c.now();
            assert!(w <= h, "waiter {w:?} above a later holder {h:?}");
        }
        let before = c.now();
        c.sleep(Duration::from_millis(50)).await;
        let after = c.now();
        assert!(
            after >= before + Duration::from_millis(50),
            "{before:?} -> {after:?}"
        );
        let mut last = (c.now_waiter(), c.now());
        for _ in 0..5 {
            let w = c.now_waiter();
            let h = c.now();
            assert!(w <= h, "waiter {w:?} above a later holder {h:?}");
            assert!(w >= last.0 && h >= last.1, "a reading went back");
            last = (w, h);
        }
        assert!(c.wall().as_millis() > 1_600_000_000_000);
        // A zero sleep returns at once.
        c.sleep(Duration::ZERO).await;
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[tokio::test]
    async fn the_boottime_timer_is_used_and_waits_on_boottime() {
        // Made here, so the sliced fallback cannot hide a broken timer.
        let timer = BootTimer::new().unwrap();
        for _ in 0..2 {
            let start = read_os_clock(ClockId::CLOCK_BOOTTIME).unwrap();
            timer.wait(Duration::from_millis(20)).await.unwrap();
            let end = read_os_clock(ClockId::CLOCK_BOOTTIME).unwrap();
            assert!(
                end - start >= Duration::from_millis(20),
                "{start:?} -> {end:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_monotonic_fallback_reads_the_os() {
        let c = CombinedClock::new(MonotonicSources);
        let before = c.now();
        c.sleep(Duration::from_millis(20)).await;
        assert!(c.now() >= before + Duration::from_millis(20));
        assert!(c.now_waiter() <= c.now());
    }
}
