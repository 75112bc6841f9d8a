//! The waiter's side: acquiring a key, timing a holder's record version on the
//! waiter's own monotonic clock, and taking over only after that version has
//! been seen unchanged for `lease × (1 + ρ) + margin`.
//!
//! Call order: [`Waiter::poll_send`] gives the op to send; feed its answer to
//! [`Waiter::handle_outcome`], which says: granted, send again now, or wait
//! until a time (sleep there, then `poll_send` again). Every poll is an acquire
//! attempt, so each round trip both tries and learns the current holder.

use super::{
    HolderInfo, LeaseId, LockKey, LockOp, LockRecord, MonoTime, OpKind, Outcome, ProtocolConfig,
    ProtocolError, RecordVersion, WallTime,
};
use std::time::Duration;

/// Exponential backoff with full jitter between polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First window.
    pub base: Duration,
    /// Largest window.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(2),
        }
    }
}

impl Backoff {
    /// The window after `attempts` failed polls.
    pub fn window(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.min(16);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Full jitter: a delay uniformly in the window, `jitter` in `[0, 1)`;
    /// never under a millisecond.
    pub fn delay(&self, attempts: u32, jitter: f64) -> Duration {
        let j = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.5
        };
        self.window(attempts)
            .mul_f64(j)
            .max(Duration::from_millis(1))
    }
}

/// What the waiter knows of the current holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The record as last seen.
    pub record: LockRecord,
    /// When (waiter's clock) its version was first seen.
    pub since: MonoTime,
    /// When (waiter's clock) a takeover becomes allowed if the version stays.
    pub takeover_at: MonoTime,
}

/// What [`Waiter::handle_outcome`] concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaiterStep {
    /// The lock is ours: `record` is what we wrote; `t_send` (our clock) is when
    /// the granting op was first sent — start the [`super::Lease`] from it.
    Granted {
        /// The record written by the grant.
        record: Box<LockRecord>,
        /// When the granting op was first sent.
        t_send: MonoTime,
    },
    /// Call [`Waiter::poll_send`] again at once (the lock is free, or a takeover
    /// is due).
    SendNow,
    /// Sleep until `until`, then call [`Waiter::poll_send`].
    Wait {
        /// When to poll again.
        until: MonoTime,
    },
}

#[derive(Debug, Clone)]
struct Pending {
    op: LockOp,
    first_sent: MonoTime,
}

/// The waiter state machine (sans-IO).
#[derive(Debug, Clone)]
pub struct Waiter {
    key: LockKey,
    owner: LeaseId,
    lease_ms: u64,
    holder: HolderInfo,
    cfg: ProtocolConfig,
    backoff: Backoff,
    observed: Option<Observation>,
    pending: Option<Pending>,
    attempts: u32,
    quick_retries: u32,
}

impl Waiter {
    /// A waiter for `key` that will hold it as lease `owner` for `lease`.
    pub fn new(
        key: LockKey,
        owner: LeaseId,
        lease: Duration,
        holder: HolderInfo,
        cfg: ProtocolConfig,
        backoff: Backoff,
    ) -> Result<Waiter, ProtocolError> {
        cfg.check_lease(lease)?;
        let lease_ms =
            u64::try_from(lease.as_millis()).map_err(|_| ProtocolError::LeaseTooLong(lease))?;
        Ok(Waiter {
            key,
            owner,
            lease_ms,
            holder,
            cfg,
            backoff,
            observed: None,
            pending: None,
            attempts: 0,
            quick_retries: 0,
        })
    }

    /// The lease id this waiter will hold as.
    pub fn owner(&self) -> LeaseId {
        self.owner
    }

    /// The current holder as last observed, with the takeover time.
    pub fn observation(&self) -> Option<&Observation> {
        self.observed.as_ref()
    }

    /// The op whose answer is still unknown, if any (it may have landed).
    pub fn unresolved(&self) -> Option<&LockOp> {
        self.pending.as_ref().map(|p| &p.op)
    }

    /// The op to send now: a resend of an unanswered op, a takeover if the
    /// observed version has stood long enough, else an acquire attempt.
    /// `new_rvn` is used only when a new op is built.
    pub fn poll_send(&mut self, now: MonoTime, new_rvn: RecordVersion, wall: WallTime) -> LockOp {
        if let Some(p) = &self.pending {
            return p.op.clone();
        }
        let kind = match &self.observed {
            Some(obs) if now >= obs.takeover_at => OpKind::Takeover {
                observed: obs.record.rvn,
                owner: self.owner,
                lease_ms: self.lease_ms,
                holder: self.holder.clone(),
            },
            _ => OpKind::Acquire {
                owner: self.owner,
                lease_ms: self.lease_ms,
                holder: self.holder.clone(),
            },
        };
        let op = LockOp {
            key: self.key.clone(),
            new_rvn,
            at: wall,
            kind,
        };
        self.pending = Some(Pending {
            op: op.clone(),
            first_sent: now,
        });
        op
    }

    /// Feeds the answer to the op last returned by [`Waiter::poll_send`].
    /// `jitter` is a uniform random number in `[0, 1)` for the backoff.
    pub fn handle_outcome(&mut self, now: MonoTime, outcome: Outcome, jitter: f64) -> WaiterStep {
        let Some(pending) = self.pending.clone() else {
            return WaiterStep::SendNow;
        };
        match outcome.resolve(&pending.op) {
            Outcome::Applied(record) => {
                self.pending = None;
                WaiterStep::Granted {
                    record: Box::new(record),
                    t_send: pending.first_sent,
                }
            }
            Outcome::Unknown => {
                self.attempts = self.attempts.saturating_add(1);
                self.wait(now, jitter)
            }
            Outcome::Conflict(current) => {
                self.pending = None;
                match current {
                    Some(record) if record.is_held() => {
                        self.quick_retries = 0;
                        self.observe(now, record);
                        self.attempts = self.attempts.saturating_add(1);
                        match &self.observed {
                            Some(obs) if now >= obs.takeover_at => WaiterStep::SendNow,
                            _ => self.wait(now, jitter),
                        }
                    }
                    // Free (released or absent): try again at once, but never spin.
                    _ => {
                        self.observed = None;
                        self.quick_retries += 1;
                        if self.quick_retries <= 3 {
                            WaiterStep::SendNow
                        } else {
                            self.attempts = self.attempts.saturating_add(1);
                            self.wait(now, jitter)
                        }
                    }
                }
            }
        }
    }

    fn observe(&mut self, now: MonoTime, record: LockRecord) {
        match &mut self.observed {
            Some(obs) if obs.record.rvn == record.rvn => obs.record = record,
            _ => {
                let takeover_at = now + self.cfg.takeover_wait(record.lease());
                self.observed = Some(Observation {
                    record,
                    since: now,
                    takeover_at,
                });
            }
        }
    }

    fn wait(&self, now: MonoTime, jitter: f64) -> WaiterStep {
        let mut until = now + self.backoff.delay(self.attempts, jitter);
        if let Some(obs) = &self.observed {
            if self.pending.is_none() {
                until = until.min(obs.takeover_at.max(now));
            }
        }
        WaiterStep::Wait { until }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FencingToken;

    fn cfg() -> ProtocolConfig {
        ProtocolConfig {
            drift_ppm: 1000,
            margin: Duration::from_millis(100),
        }
    }
    fn ms(n: u64) -> MonoTime {
        MonoTime::from_duration(Duration::from_millis(n))
    }
    fn me() -> LeaseId {
        LeaseId(uuid::Uuid::from_u128(1))
    }
    fn them() -> LeaseId {
        LeaseId(uuid::Uuid::from_u128(2))
    }
    fn waiter() -> Waiter {
        Waiter::new(
            LockKey::new("k").unwrap(),
            me(),
            Duration::from_secs(1),
            HolderInfo::named("me"),
            cfg(),
            Backoff {
                base: Duration::from_millis(100),
                cap: Duration::from_millis(400),
            },
        )
        .unwrap()
    }
    fn held(rvn: u128, lease_ms: u64) -> LockRecord {
        LockRecord {
            key: LockKey::new("k").unwrap(),
            owner: them(),
            token: FencingToken(4),
            rvn: RecordVersion(rvn),
            lease_ms,
            released: false,
            holder: HolderInfo::named("them"),
            acquired_at: WallTime(0),
            heartbeat_at: WallTime(0),
            forced_by: None,
        }
    }

    #[test]
    fn free_lock_is_granted_from_first_send() {
        let mut w = waiter();
        let op = w.poll_send(ms(10), RecordVersion(1), WallTime(0));
        assert!(matches!(op.kind, OpKind::Acquire { .. }));
        let rec = op.apply(None).unwrap();
        assert_eq!(
            w.handle_outcome(ms(20), Outcome::Applied(rec.clone()), 0.5),
            WaiterStep::Granted {
                record: Box::new(rec),
                t_send: ms(10)
            }
        );
    }

    #[test]
    fn lost_answer_is_resent_and_recognised_with_original_t_send() {
        let mut w = waiter();
        let op = w.poll_send(ms(10), RecordVersion(1), WallTime(0));
        let WaiterStep::Wait { until } = w.handle_outcome(ms(20), Outcome::Unknown, 0.5) else {
            panic!("expected to wait")
        };
        assert!(until > ms(20));
        let again = w.poll_send(until, RecordVersion(2), WallTime(0));
        assert_eq!(again, op, "the same op, the same new rvn");
        let landed = op.apply(None).unwrap();
        assert_eq!(
            w.handle_outcome(until, Outcome::Conflict(Some(landed.clone())), 0.5),
            WaiterStep::Granted {
                record: Box::new(landed),
                t_send: ms(10)
            }
        );
    }

    #[test]
    fn takeover_only_after_same_rvn_for_whole_wait() {
        // takeover_wait(1000 ms) = 1000 × 1.001 + 100 = 1101 ms.
        let mut w = waiter();
        let _ = w.poll_send(ms(0), RecordVersion(1), WallTime(0));
        let step = w.handle_outcome(ms(5), Outcome::Conflict(Some(held(7, 1000))), 0.99);
        let WaiterStep::Wait { until } = step else {
            panic!("{step:?}")
        };
        assert!(until <= ms(5 + 1101));
        assert_eq!(w.observation().unwrap().takeover_at, ms(1106));
        // Polls before the deadline are acquire attempts, not takeovers.
        let op = w.poll_send(ms(600), RecordVersion(2), WallTime(0));
        assert!(matches!(op.kind, OpKind::Acquire { .. }));
        // Same rvn again: the clock is NOT reset.
        let _ = w.handle_outcome(ms(601), Outcome::Conflict(Some(held(7, 1000))), 0.99);
        assert_eq!(w.observation().unwrap().since, ms(5));
        // At 1105 still an acquire, at 1106 a takeover of rvn 7.
        let op = w.poll_send(ms(1105), RecordVersion(3), WallTime(0));
        assert!(matches!(op.kind, OpKind::Acquire { .. }));
        let _ = w.handle_outcome(ms(1105), Outcome::Conflict(Some(held(7, 1000))), 0.99);
        let op = w.poll_send(ms(1106), RecordVersion(4), WallTime(0));
        assert_eq!(
            op.kind,
            OpKind::Takeover {
                observed: RecordVersion(7),
                owner: me(),
                lease_ms: 1000,
                holder: HolderInfo::named("me")
            }
        );
        let rec = op.apply(Some(&held(7, 1000))).unwrap();
        assert_eq!(rec.token, FencingToken(5));
        assert!(matches!(
            w.handle_outcome(ms(1110), Outcome::Applied(rec), 0.5),
            WaiterStep::Granted { t_send, .. } if t_send == ms(1106)
        ));
    }

    #[test]
    fn heartbeat_resets_the_observation() {
        let mut w = waiter();
        let _ = w.poll_send(ms(0), RecordVersion(1), WallTime(0));
        let _ = w.handle_outcome(ms(0), Outcome::Conflict(Some(held(7, 1000))), 0.5);
        let _ = w.poll_send(ms(900), RecordVersion(2), WallTime(0));
        let _ = w.handle_outcome(ms(900), Outcome::Conflict(Some(held(8, 1000))), 0.5);
        let obs = w.observation().unwrap();
        assert_eq!((obs.since, obs.takeover_at), (ms(900), ms(2001)));
        // A takeover whose condition fails (holder renewed meanwhile) resets too.
        let op = w.poll_send(ms(2001), RecordVersion(3), WallTime(0));
        assert!(
            matches!(op.kind, OpKind::Takeover { observed, .. } if observed == RecordVersion(8))
        );
        let _ = w.handle_outcome(ms(2002), Outcome::Conflict(Some(held(9, 1000))), 0.5);
        assert_eq!(w.observation().unwrap().since, ms(2002));
    }

    #[test]
    fn waits_use_the_holders_lease_not_ours() {
        let mut w = waiter();
        let _ = w.poll_send(ms(0), RecordVersion(1), WallTime(0));
        let _ = w.handle_outcome(ms(0), Outcome::Conflict(Some(held(7, 10_000))), 0.5);
        assert_eq!(w.observation().unwrap().takeover_at, ms(10_000 + 10 + 100));
    }

    #[test]
    fn released_record_is_retried_at_once_but_never_spins() {
        let mut w = waiter();
        let mut released = held(7, 1000);
        released.released = true;
        for _ in 0..3 {
            let _ = w.poll_send(ms(0), RecordVersion(1), WallTime(0));
            assert_eq!(
                w.handle_outcome(ms(0), Outcome::Conflict(Some(released.clone())), 0.5),
                WaiterStep::SendNow
            );
        }
        let _ = w.poll_send(ms(0), RecordVersion(1), WallTime(0));
        assert!(matches!(
            w.handle_outcome(ms(0), Outcome::Conflict(Some(released)), 0.5),
            WaiterStep::Wait { .. }
        ));
    }

    #[test]
    fn backoff_is_capped_full_jitter() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(400),
        };
        assert_eq!(b.window(0), Duration::from_millis(100));
        assert_eq!(b.window(1), Duration::from_millis(200));
        assert_eq!(b.window(5), Duration::from_millis(400));
        assert_eq!(b.window(u32::MAX), Duration::from_millis(400));
        assert_eq!(b.delay(5, 0.5), Duration::from_millis(200));
        assert_eq!(b.delay(5, 0.0), Duration::from_millis(1));
        assert_eq!(b.delay(5, f64::NAN), Duration::from_millis(200));
    }

    #[test]
    fn lease_is_checked() {
        let r = Waiter::new(
            LockKey::new("k").unwrap(),
            me(),
            Duration::from_millis(10),
            HolderInfo::default(),
            cfg(),
            Backoff::default(),
        );
        assert!(matches!(r, Err(ProtocolError::LeaseTooShort { .. })));
    }
}
