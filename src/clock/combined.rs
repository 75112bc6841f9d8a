//! The rule that turns two imperfect monotonic sources into a holder reading
//! that cannot under-count real time and a waiter reading that cannot
//! over-count it, kept apart from the OS so it can be tested with fake sources.
//!
//! One source counts a suspend but may be slewed (Linux CLOCK_BOOTTIME: NTP
//! may slew it far beyond ρ, chrony up to 83,333 ppm); the other is never
//! slewed but stops while the machine is suspended (CLOCK_MONOTONIC_RAW). Each
//! reading is the time elapsed on a source since the clock's origin. If the raw
//! oscillator is within ρ of real time, the larger of the two elapsed times
//! never under-counts real time by more than ρ, whatever NTP does and however
//! long a suspend lasts, and the smaller never over-counts it by more than ρ.
//!
//! This module must not read the OS itself (a [`ClockSources`] does) and must
//! never return a reading smaller than one it returned before, even when a
//! source steps back.

use super::{Clock, Sleep};
use crate::protocol::{MonoTime, WallTime};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Longest a sleep goes without re-reading the sources when it has no timer
/// that counts a suspend: a resume is noticed within this time.
pub(crate) const FALLBACK_SLICE: Duration = Duration::from_secs(1);

/// Two monotonic sources, each read as the time since its own fixed origin.
///
/// Implementations read the OS (see [`SystemClock`](super::SystemClock)) or,
/// in tests, fakes. A source that errs or steps back is tolerated: the
/// [`CombinedClock`] over it never goes backwards.
pub trait ClockSources: Send + Sync + fmt::Debug + 'static {
    /// A source that counts time the machine spent suspended but whose rate
    /// NTP may slew (Linux CLOCK_BOOTTIME).
    fn boottime(&self) -> Duration;
    /// A source whose rate is the raw oscillator's, never slewed, but which
    /// may stop while the machine is suspended (Linux CLOCK_MONOTONIC_RAW).
    fn monotonic_raw(&self) -> Duration;
}

#[derive(Debug)]
struct Shared<S> {
    sources: S,
    boot_origin: Duration,
    raw_origin: Duration,
    /// The largest holder reading returned so far, in nanoseconds.
    holder_nanos: AtomicU64,
    /// The largest waiter reading returned so far, in nanoseconds.
    waiter_nanos: AtomicU64,
}

/// A [`Clock`] over two [`ClockSources`]; its origin is its creation.
///
/// - holder reading ([`Clock::now`]) = max(boottime elapsed, raw elapsed);
/// - waiter reading ([`Clock::now_waiter`]) = min(boottime elapsed, raw elapsed);
///
/// each also at least the largest value it returned before, so neither goes
/// backwards when a source does; every read updates both, so a waiter reading
/// never exceeds a holder reading taken after it. Clones share the origin and
/// the readings. Its [`Clock::sleep`] re-reads the sources at least once a
/// second ([`SystemClock`](super::SystemClock) sleeps on a timer instead).
pub struct CombinedClock<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for CombinedClock<S> {
    fn clone(&self) -> Self {
        CombinedClock {
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for CombinedClock<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CombinedClock")
            .field("sources", &self.shared.sources)
            .field("holder", &nanos_duration(&self.shared.holder_nanos))
            .field("waiter", &nanos_duration(&self.shared.waiter_nanos))
            .finish()
    }
}

/// One read of both sources, as elapsed times since the origin.
#[derive(Debug, Clone, Copy)]
struct Readings {
    holder: Duration,
    waiter: Duration,
}

impl<S: ClockSources> CombinedClock<S> {
    /// A clock over `sources` whose readings are zero now.
    pub fn new(sources: S) -> Self {
        let boot_origin = sources.boottime();
        let raw_origin = sources.monotonic_raw();
        CombinedClock {
            shared: Arc::new(Shared {
                sources,
                boot_origin,
                raw_origin,
                holder_nanos: AtomicU64::new(0),
                waiter_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// The sources this clock reads.
    pub fn sources(&self) -> &S {
        &self.shared.sources
    }

    fn read(&self) -> Readings {
        let s = &self.shared;
        let boot = s.sources.boottime().saturating_sub(s.boot_origin);
        let raw = s.sources.monotonic_raw().saturating_sub(s.raw_origin);
        let high = duration_nanos(boot.max(raw));
        let low = duration_nanos(boot.min(raw));
        // The holder's high-water mark is raised before the waiter's, so any
        // waiter value stored is already covered by the holder's.
        let holder = s.holder_nanos.fetch_max(high, Ordering::SeqCst).max(high);
        let waiter = s.waiter_nanos.fetch_max(low, Ordering::SeqCst).max(low);
        Readings {
            holder: Duration::from_nanos(holder),
            waiter: Duration::from_nanos(waiter),
        }
    }

    /// How much holder time is left until the holder reading reaches
    /// `target`, or `None` once it has.
    pub(crate) fn holder_left(&self, target: MonoTime) -> Option<Duration> {
        let now = self.now();
        (now < target).then(|| target.saturating_since(now))
    }
}

impl<S: ClockSources> Clock for CombinedClock<S> {
    fn now(&self) -> MonoTime {
        MonoTime::from_duration(self.read().holder)
    }
    fn now_waiter(&self) -> MonoTime {
        MonoTime::from_duration(self.read().waiter)
    }
    fn wall(&self) -> WallTime {
        WallTime::from_system(SystemTime::now())
    }
    fn sleep(&self, d: Duration) -> Sleep {
        let clock = self.clone();
        let target = self.now() + d;
        Box::pin(async move {
            while let Some(left) = clock.holder_left(target) {
                tokio::time::sleep(left.min(FALLBACK_SLICE)).await;
            }
        })
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn nanos_duration(n: &AtomicU64) -> Duration {
    Duration::from_nanos(n.load(Ordering::SeqCst))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Sources set by hand, in nanoseconds since their own origins.
    #[derive(Debug, Default)]
    struct FakeSources {
        boot: AtomicU64,
        raw: AtomicU64,
    }

    impl FakeSources {
        fn at(boot: Duration, raw: Duration) -> Self {
            FakeSources {
                boot: AtomicU64::new(duration_nanos(boot)),
                raw: AtomicU64::new(duration_nanos(raw)),
            }
        }
        fn set(&self, boot: Duration, raw: Duration) {
            self.boot.store(duration_nanos(boot), Ordering::SeqCst);
            self.raw.store(duration_nanos(raw), Ordering::SeqCst);
        }
        fn advance(&self, boot: Duration, raw: Duration) {
            self.boot.fetch_add(duration_nanos(boot), Ordering::SeqCst);
            self.raw.fetch_add(duration_nanos(raw), Ordering::SeqCst);
        }
    }

    impl ClockSources for FakeSources {
        fn boottime(&self) -> Duration {
            nanos_duration(&self.boot)
        }
        fn monotonic_raw(&self) -> Duration {
            nanos_duration(&self.raw)
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn mono(d: Duration) -> MonoTime {
        MonoTime::from_duration(d)
    }

    #[test]
    fn a_suspend_counts_for_the_holder_not_the_waiter() {
        let c = CombinedClock::new(FakeSources::at(secs(500), secs(400)));
        c.sources().advance(secs(1), secs(1));
        assert_eq!((c.now(), c.now_waiter()), (mono(secs(1)), mono(secs(1))));
        // Suspended for a minute: boottime counts it, the raw clock stood still.
        c.sources().advance(secs(60), Duration::ZERO);
        assert_eq!(c.now(), mono(secs(61)), "the holder counts the suspend");
        assert_eq!(c.now_waiter(), mono(secs(1)), "the waiter does not");
        c.sources().advance(secs(2), secs(2));
        assert_eq!((c.now(), c.now_waiter()), (mono(secs(63)), mono(secs(3))));
    }

    #[test]
    fn ntp_slewing_boottime_slow_never_makes_the_holder_under_count() {
        let c = CombinedClock::new(FakeSources::default());
        // Real time = raw time; NTP slews boottime 8 % slow.
        let mut raw_elapsed = Duration::ZERO;
        for _ in 0..100 {
            c.sources().advance(Duration::from_millis(920), secs(1));
            raw_elapsed += secs(1);
            assert!(c.now() >= mono(raw_elapsed), "holder under-counted");
            assert!(c.now_waiter() <= mono(raw_elapsed));
        }
        assert_eq!(c.now(), mono(secs(100)));
        assert_eq!(c.now_waiter(), mono(secs(92)));
    }

    #[test]
    fn ntp_slewing_boottime_fast_never_makes_the_waiter_over_count() {
        let c = CombinedClock::new(FakeSources::default());
        let mut raw_elapsed = Duration::ZERO;
        for _ in 0..100 {
            c.sources().advance(Duration::from_millis(1080), secs(1));
            raw_elapsed += secs(1);
            assert!(c.now_waiter() <= mono(raw_elapsed), "waiter over-counted");
            assert!(c.now() >= mono(raw_elapsed));
        }
        assert_eq!(c.now_waiter(), mono(secs(100)));
        assert_eq!(c.now(), mono(secs(108)));
    }

    #[test]
    fn readings_never_go_back_when_a_source_does() {
        let c = CombinedClock::new(FakeSources::at(secs(100), secs(100)));
        c.sources().set(secs(110), secs(105));
        assert_eq!((c.now(), c.now_waiter()), (mono(secs(10)), mono(secs(5))));
        // boottime steps back 8 s: the holder keeps 10 s, the waiter its 5 s.
        c.sources().set(secs(102), secs(105));
        assert_eq!((c.now(), c.now_waiter()), (mono(secs(10)), mono(secs(5))));
        // Both step back below the origin.
        c.sources().set(secs(50), secs(0));
        assert_eq!((c.now(), c.now_waiter()), (mono(secs(10)), mono(secs(5))));
        // They recover: readings move on from where they were, no jump back.
        c.sources().set(secs(112), secs(107));
        assert_eq!((c.now(), c.now_waiter()), (mono(secs(12)), mono(secs(7))));
    }

    #[test]
    fn the_origin_is_creation_and_clones_share_it() {
        let c = CombinedClock::new(FakeSources::at(secs(1_000_000), secs(3)));
        assert_eq!((c.now(), c.now_waiter()), (MonoTime::ZERO, MonoTime::ZERO));
        let twin = c.clone();
        c.sources().set(secs(1_000_002), secs(5));
        assert_eq!(twin.now(), mono(secs(2)));
        assert_eq!(twin.now_waiter(), mono(secs(2)));
        assert_eq!(c.now(), twin.now());
    }

    #[test]
    fn concurrent_readers_see_no_step_back_and_waiter_below_holder() {
        let c = CombinedClock::new(FakeSources::default());
        std::thread::scope(|scope| {
            let mover = scope.spawn(|| {
                // A misbehaving source pair: forward and back, out of step.
                for i in 0..20_000u64 {
                    c.sources().set(
                        Duration::from_micros((i * 2).saturating_sub((i % 7) * 3)),
                        Duration::from_micros(i + (i % 5)),
                    );
                }
            });
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        let (mut last_h, mut last_w) = (MonoTime::ZERO, MonoTime::ZERO);
                        for _ in 0..20_000 {
                            let w = c.now_waiter();
                            let h = c.now();
                            assert!(w <= h, "waiter {w:?} above a later holder {h:?}");
                            assert!(h >= last_h && w >= last_w, "a reading went back");
                            (last_h, last_w) = (h, w);
                        }
                    })
                })
                .collect();
            mover.join().unwrap();
            for r in readers {
                r.join().unwrap();
            }
        });
    }

    proptest! {
        /// Whatever the sources do, readings never decrease, the waiter never
        /// exceeds the holder, and each reading is bounded by the sources'
        /// elapsed times (holder ≥ both, waiter ≤ the largest seen).
        #[test]
        fn readings_are_monotonic_and_ordered(
            steps in prop::collection::vec((-5_000i64..10_000, -5_000i64..10_000), 1..60)
        ) {
            let c = CombinedClock::new(FakeSources::at(secs(10), secs(10)));
            let (mut boot, mut raw) = (10_000i64, 10_000i64);
            let (mut last_h, mut last_w) = (MonoTime::ZERO, MonoTime::ZERO);
            for (db, dr) in steps {
                boot = (boot + db).max(0);
                raw = (raw + dr).max(0);
                let ms = |v: i64| Duration::from_millis(v.unsigned_abs());
                c.sources().set(ms(boot), ms(raw));
                let (h, w) = (c.now(), c.now_waiter());
                prop_assert!(h >= last_h && w >= last_w);
                prop_assert!(w <= h);
                let boot_elapsed = mono(ms((boot - 10_000).max(0)));
                let raw_elapsed = mono(ms((raw - 10_000).max(0)));
                prop_assert!(h >= boot_elapsed && h >= raw_elapsed);
                (last_h, last_w) = (h, w);
            }
        }
    }

    /// Sources over tokio's (paused) time: the raw clock follows it, boottime
    /// runs `boot_ppm` fast or slow and jumps by whatever is added to `suspended`.
    #[derive(Debug)]
    struct TokioSources {
        origin: tokio::time::Instant,
        boot_rate: f64,
        suspended: AtomicU64,
    }

    impl ClockSources for TokioSources {
        fn boottime(&self) -> Duration {
            self.origin.elapsed().mul_f64(self.boot_rate) + nanos_duration(&self.suspended)
        }
        fn monotonic_raw(&self) -> Duration {
            self.origin.elapsed()
        }
    }

    fn tokio_sources(boot_rate: f64) -> TokioSources {
        TokioSources {
            origin: tokio::time::Instant::now(),
            boot_rate,
            suspended: AtomicU64::new(0),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_returns_once_the_holder_reading_has_advanced() {
        for rate in [0.92, 1.0, 1.08] {
            let c = CombinedClock::new(tokio_sources(rate));
            let t0 = tokio::time::Instant::now();
            let before = c.now();
            c.sleep(secs(10)).await;
            assert!(c.now() >= before + secs(10), "rate {rate}: {:?}", c.now());
            // The holder reading never runs slower than the raw clock, which
            // is tokio's time here: no sleep needs more than 10 s of it.
            let real = t0.elapsed();
            assert!(
                real <= secs(10) + Duration::from_millis(5),
                "rate {rate}: {real:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sliced_sleep_notices_a_suspend_within_a_slice() {
        let c = CombinedClock::new(tokio_sources(1.0));
        let t0 = tokio::time::Instant::now();
        let sleeper = tokio::spawn({
            let c = c.clone();
            async move { c.sleep(secs(30)).await }
        });
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert!(!sleeper.is_finished());
        // The machine resumes from a 60 s suspend.
        c.sources()
            .suspended
            .store(duration_nanos(secs(60)), Ordering::SeqCst);
        sleeper.await.unwrap();
        let real = t0.elapsed();
        assert!(
            real <= Duration::from_millis(2_500) + FALLBACK_SLICE,
            "{real:?}"
        );
        assert!(c.now() >= mono(secs(62)));
        assert!(
            c.now_waiter() < mono(secs(4)),
            "the waiter skips the suspend"
        );
    }
}
