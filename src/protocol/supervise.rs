//! Supervising a command that acts for a lease holder (`statelock exec`):
//! when to ask it to stop and when to kill it, so that it is dead before the
//! holder's validity ends (PROTOCOL.md, "Supervising a command").
//!
//! Sans-IO like the rest of the core: [`Supervisor::poll`] takes the holder's
//! monotonic `now`, the lease's current deadline and whether the lease is
//! still held, and returns what to do and when to call again. The driver sends
//! the signals; nothing here reads a clock or touches a process.
//!
//! The schedule, for a lease deadline `D` (the end of the holder's validity,
//! which moves forward with every confirmed heartbeat):
//! - while running, if no heartbeat has moved `D` by `D − grace − kill_margin`,
//!   ask the command to stop (SIGTERM to its process group);
//! - once asked, kill it (SIGKILL) at `min(asked + grace, D − kill_margin)`:
//!   the grace period, cut short so that the kill lands before `D`;
//! - a lease that is lost (taken over or forced) or a stop requested from
//!   outside (a signal to the supervisor) starts the same sequence at once.
//!
//! A grace period only fits if normal renewals never trigger it: the
//! terminate time must lie after the next heartbeat and two retries, see
//! [`StopPlan::max_grace`].

use super::{MonoTime, ProtocolConfig};
use std::time::Duration;

/// The grace period asked for does not fit in the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a grace period of {grace:?} does not fit in a {lease:?} lease: the most that fits is {max:?}"
)]
pub struct GraceTooLong {
    /// The grace period asked for.
    pub grace: Duration,
    /// The lease.
    pub lease: Duration,
    /// The longest grace period that fits this lease.
    pub max: Duration,
}

/// The two durations of a stop: the grace period between the request to stop
/// and the kill, and the kill margin, the time a kill is given to land before
/// the lease's validity ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopPlan {
    grace: Duration,
    kill_margin: Duration,
}

impl StopPlan {
    /// The time a kill is given to land before validity ends: a twentieth of
    /// the lease, at least 50 ms and at most 1 s.
    pub fn kill_margin(lease: Duration) -> Duration {
        (lease / 20).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// The longest grace period that fits `lease`: the holder's validity minus
    /// one heartbeat interval, two heartbeat retries and the kill margin. A
    /// longer one would ask a healthy command to stop between two renewals.
    pub fn max_grace(cfg: &ProtocolConfig, lease: Duration) -> Duration {
        cfg.holder_validity(lease)
            .saturating_sub(cfg.heartbeat_interval(lease))
            .saturating_sub(cfg.heartbeat_retry(lease) * 2)
            .saturating_sub(Self::kill_margin(lease))
    }

    /// A plan for `lease` with `grace`, refused if the grace does not fit.
    pub fn new(
        cfg: &ProtocolConfig,
        lease: Duration,
        grace: Duration,
    ) -> Result<StopPlan, GraceTooLong> {
        let max = Self::max_grace(cfg, lease);
        if grace > max {
            return Err(GraceTooLong { grace, lease, max });
        }
        Ok(StopPlan {
            grace,
            kill_margin: Self::kill_margin(lease),
        })
    }

    /// A plan for `lease` with `grace` cut down to what fits (for a default
    /// grace the user did not choose).
    pub fn fitting(cfg: &ProtocolConfig, lease: Duration, grace: Duration) -> StopPlan {
        StopPlan {
            grace: grace.min(Self::max_grace(cfg, lease)),
            kill_margin: Self::kill_margin(lease),
        }
    }

    /// The grace period.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// When (holder's clock) a command whose lease ends at `deadline` must be
    /// asked to stop: `deadline − grace − kill_margin`.
    pub fn terminate_at(&self, deadline: MonoTime) -> MonoTime {
        deadline - self.grace - self.kill_margin
    }

    /// When it must be killed at the latest: `deadline − kill_margin`.
    pub fn kill_by(&self, deadline: MonoTime) -> MonoTime {
        deadline - self.kill_margin
    }
}

/// Why the command is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// No heartbeat was confirmed in time: the lease is running out.
    LeaseRunningOut,
    /// The lease was lost (taken over, forced, or expired).
    LeaseLost,
    /// The supervisor was asked to stop (a signal).
    Requested,
}

/// What the driver must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuperviseAction {
    /// Nothing now; poll again at `until` (or when the lease changes).
    Wait {
        /// When to poll again.
        until: MonoTime,
    },
    /// Ask the command to stop (SIGTERM to its group), then poll again at `until`.
    Terminate {
        /// Why.
        cause: StopCause,
        /// When to poll again (the kill time).
        until: MonoTime,
    },
    /// Kill the command (SIGKILL to its group) now; nothing more to schedule.
    Kill,
    /// Already killed: nothing more to do.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Terminating {
        since: MonoTime,
        cause: StopCause,
        /// The terminate action was returned to the driver.
        announced: bool,
        /// Kill at the next poll, whatever the schedule.
        kill_now: bool,
    },
    Killed,
}

/// The supervisor's state machine (sans-IO). Poll it whenever it asked to be
/// polled, whenever the lease's deadline or state changes, and after
/// [`Supervisor::request_stop`].
#[derive(Debug, Clone)]
pub struct Supervisor {
    plan: StopPlan,
    phase: Phase,
}

impl Supervisor {
    /// A supervisor of a running command.
    pub fn new(plan: StopPlan) -> Self {
        Supervisor {
            plan,
            phase: Phase::Running,
        }
    }

    /// The plan.
    pub fn plan(&self) -> &StopPlan {
        &self.plan
    }

    /// True once the command has been asked to stop (or killed).
    pub fn stopping(&self) -> bool {
        self.phase != Phase::Running
    }

    /// Why the command is being stopped, if it is.
    pub fn cause(&self) -> Option<StopCause> {
        match self.phase {
            Phase::Terminating { cause, .. } => Some(cause),
            _ => None,
        }
    }

    /// Asks for a stop from outside (a signal to the supervisor). The next
    /// poll returns [`SuperviseAction::Terminate`] if the command was running.
    pub fn request_stop(&mut self, now: MonoTime) {
        if self.phase == Phase::Running {
            self.phase = Phase::Terminating {
                since: now,
                cause: StopCause::Requested,
                announced: false,
                kill_now: false,
            };
        }
    }

    /// Asks for an immediate kill (e.g. a second signal): the next poll
    /// returns [`SuperviseAction::Kill`] unless the command was killed already.
    pub fn request_kill(&mut self, now: MonoTime) {
        match &mut self.phase {
            Phase::Killed => {}
            Phase::Terminating { kill_now, .. } => *kill_now = true,
            Phase::Running => {
                self.phase = Phase::Terminating {
                    since: now,
                    cause: StopCause::Requested,
                    announced: true,
                    kill_now: true,
                }
            }
        }
    }

    /// What to do at `now`, for a lease whose validity ends at `deadline`
    /// and which is still held (`held == false`: lost or ended).
    pub fn poll(&mut self, now: MonoTime, deadline: MonoTime, held: bool) -> SuperviseAction {
        let plan = self.plan;
        match self.phase {
            Phase::Killed => SuperviseAction::Done,
            Phase::Running => {
                let cause = if !held {
                    StopCause::LeaseLost
                } else if now >= plan.terminate_at(deadline) {
                    StopCause::LeaseRunningOut
                } else {
                    return SuperviseAction::Wait {
                        until: plan.terminate_at(deadline),
                    };
                };
                self.phase = Phase::Terminating {
                    since: now,
                    cause,
                    announced: false,
                    kill_now: false,
                };
                self.terminate_or_kill(now, deadline)
            }
            Phase::Terminating { .. } => self.terminate_or_kill(now, deadline),
        }
    }

    /// In the terminating phase: kill if the kill time has come, else
    /// terminate (once), else wait for the kill time.
    fn terminate_or_kill(&mut self, now: MonoTime, deadline: MonoTime) -> SuperviseAction {
        let Phase::Terminating {
            since,
            cause,
            announced,
            kill_now,
        } = self.phase
        else {
            return SuperviseAction::Done;
        };
        let kill_at = (since + self.plan.grace).min(self.plan.kill_by(deadline));
        if kill_now || now >= kill_at {
            self.phase = Phase::Killed;
            return SuperviseAction::Kill;
        }
        if !announced {
            self.phase = Phase::Terminating {
                since,
                cause,
                announced: true,
                kill_now,
            };
            return SuperviseAction::Terminate {
                cause,
                until: kill_at,
            };
        }
        SuperviseAction::Wait { until: kill_at }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> MonoTime {
        MonoTime::from_duration(Duration::from_millis(n))
    }
    fn cfg() -> ProtocolConfig {
        ProtocolConfig::default()
    }

    #[test]
    fn grace_must_fit_the_lease() {
        let lease = Duration::from_secs(20);
        // 19.88 s validity − 6.667 s heartbeat − 2 × 1 s retries − 1 s margin.
        let max = StopPlan::max_grace(&cfg(), lease);
        assert!(max > Duration::from_millis(10_210) && max < Duration::from_millis(10_220));
        assert!(StopPlan::new(&cfg(), lease, Duration::from_secs(10)).is_ok());
        assert_eq!(
            StopPlan::new(&cfg(), lease, Duration::from_secs(11)),
            Err(GraceTooLong {
                grace: Duration::from_secs(11),
                lease,
                max
            })
        );
        let short = Duration::from_secs(3);
        assert_eq!(
            StopPlan::fitting(&cfg(), short, Duration::from_secs(10)).grace(),
            StopPlan::max_grace(&cfg(), short)
        );
        assert_eq!(StopPlan::kill_margin(short), Duration::from_millis(150));
        assert_eq!(
            StopPlan::kill_margin(Duration::from_secs(600)),
            Duration::from_secs(1)
        );
        assert_eq!(
            StopPlan::kill_margin(Duration::from_millis(300)),
            Duration::from_millis(50)
        );
    }

    /// The stop never fires between healthy renewals, whatever the lease:
    /// after a heartbeat sent at `t`, the terminate time lies beyond the next
    /// heartbeat plus two retries.
    #[test]
    fn healthy_renewals_never_trigger_a_stop() {
        for lease_ms in [300u64, 1000, 3000, 20_000, 600_000] {
            let lease = Duration::from_millis(lease_ms);
            let plan = StopPlan::fitting(&cfg(), lease, Duration::from_secs(3600));
            let sent = ms(1000);
            let deadline = sent + cfg().holder_validity(lease);
            let next_try =
                sent + cfg().heartbeat_interval(lease) + cfg().heartbeat_retry(lease) * 2;
            assert!(
                plan.terminate_at(deadline) >= next_try,
                "lease {lease_ms} ms"
            );
        }
    }

    #[test]
    fn running_out_terminates_then_kills_before_the_deadline() {
        let plan = StopPlan::new(&cfg(), Duration::from_secs(20), Duration::from_secs(5)).unwrap();
        let mut s = Supervisor::new(plan);
        let deadline = ms(20_000);
        // terminate at 20 000 − 5 000 − 1 000 = 14 000; kill by 19 000.
        assert_eq!(
            s.poll(ms(1000), deadline, true),
            SuperviseAction::Wait { until: ms(14_000) }
        );
        assert_eq!(
            s.poll(ms(14_000), deadline, true),
            SuperviseAction::Terminate {
                cause: StopCause::LeaseRunningOut,
                until: ms(19_000)
            }
        );
        assert!(s.stopping());
        assert_eq!(
            s.poll(ms(15_000), deadline, true),
            SuperviseAction::Wait { until: ms(19_000) }
        );
        assert_eq!(s.poll(ms(19_000), deadline, true), SuperviseAction::Kill);
        assert_eq!(s.poll(ms(19_001), deadline, true), SuperviseAction::Done);
    }

    #[test]
    fn a_late_renewal_extends_the_grace_but_never_past_it() {
        let plan = StopPlan::new(&cfg(), Duration::from_secs(20), Duration::from_secs(5)).unwrap();
        let mut s = Supervisor::new(plan);
        assert!(matches!(
            s.poll(ms(14_000), ms(20_000), true),
            SuperviseAction::Terminate { .. }
        ));
        // A heartbeat confirmed late moves the deadline to 30 000: the
        // command keeps its full grace (14 000 + 5 000), no more.
        assert_eq!(
            s.poll(ms(16_000), ms(30_000), true),
            SuperviseAction::Wait { until: ms(19_000) }
        );
        assert_eq!(s.poll(ms(19_000), ms(30_000), true), SuperviseAction::Kill);
    }

    #[test]
    fn a_lost_lease_stops_at_once_and_kills_before_the_old_deadline() {
        let plan = StopPlan::new(&cfg(), Duration::from_secs(20), Duration::from_secs(5)).unwrap();
        let mut s = Supervisor::new(plan);
        // Forced at 17 000 with the deadline at 20 000: kill by 19 000, not
        // 17 000 + 5 000.
        assert_eq!(
            s.poll(ms(17_000), ms(20_000), false),
            SuperviseAction::Terminate {
                cause: StopCause::LeaseLost,
                until: ms(19_000)
            }
        );
        // Noticed only after the kill time (the process was slow): kill at once.
        let mut late = Supervisor::new(plan);
        assert_eq!(
            late.poll(ms(19_500), ms(20_000), false),
            SuperviseAction::Kill
        );
    }

    #[test]
    fn a_requested_stop_gets_the_grace_and_a_second_request_kills() {
        let plan = StopPlan::new(&cfg(), Duration::from_secs(20), Duration::from_secs(5)).unwrap();
        let mut s = Supervisor::new(plan);
        s.request_stop(ms(2000));
        assert_eq!(
            s.poll(ms(2001), ms(20_000), true),
            SuperviseAction::Terminate {
                cause: StopCause::Requested,
                until: ms(7000)
            }
        );
        assert_eq!(
            s.poll(ms(3000), ms(20_000), true),
            SuperviseAction::Wait { until: ms(7000) }
        );
        s.request_kill(ms(3001));
        assert_eq!(s.poll(ms(3001), ms(20_000), true), SuperviseAction::Kill);
        // A stop requested after the kill changes nothing.
        s.request_stop(ms(4000));
        assert_eq!(s.poll(ms(4000), ms(20_000), true), SuperviseAction::Done);
    }
}
