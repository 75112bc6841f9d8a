//! The holder's side: one granted lease, its deadline and heartbeat schedule.
//!
//! Call order (the driver owns the clock and the store):
//! 1. [`Lease::granted`] with the record the grant wrote and `t_send`, the
//!    holder's monotonic time *before* it first sent the granting write.
//! 2. Sleep until [`Lease::poll_timeout`]; then [`Lease::handle_timeout`] and
//!    [`Lease::poll_heartbeat`]. Send the op it returns and feed the answer to
//!    [`Lease::handle_heartbeat`].
//! 3. Ask [`Lease::is_valid`] before each protected action.
//! 4. [`Lease::release`], then [`Lease::handle_release`] until it says done.
//!
//! Once lost, a lease stays lost: the application must stop writing.

use super::{
    FencingToken, LeaseId, LockKey, LockOp, LockRecord, MonoTime, OpKind, Outcome, ProtocolConfig,
    RecordVersion, WallTime,
};
use std::time::Duration;

/// Why a lease was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostReason {
    /// The deadline passed before a heartbeat was confirmed.
    Expired,
    /// A heartbeat's condition failed: the record changed under us (taken over
    /// or forced). The current record, if the store returned it.
    Superseded(Option<Box<LockRecord>>),
}

/// Where a lease is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Held: valid until the deadline unless renewed.
    Held,
    /// Lost: the application must stop.
    Lost(LostReason),
    /// The holder released it (or is releasing it).
    Released,
}

/// What [`Lease::handle_heartbeat`] concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeartbeatEvent {
    /// Renewed; the deadline moved to the given time.
    Renewed(MonoTime),
    /// No answer: the same op will be resent at the next timeout.
    Retry,
    /// The lease is lost.
    Lost(LostReason),
    /// The answer came after the lease ended (released or lost): ignored.
    Ignored,
}

/// What [`Lease::handle_release`] concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseStep {
    /// Released; the record as written.
    Done(LockRecord),
    /// Send this op (a resend, or a release at the version a heartbeat whose
    /// answer was lost wrote).
    Retry(LockOp),
    /// We no longer own the record: nothing to release. The current record.
    NotHeld(Option<LockRecord>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    op: LockOp,
    first_sent: MonoTime,
}

/// The holder's lease state machine (sans-IO).
#[derive(Debug, Clone)]
pub struct Lease {
    key: LockKey,
    owner: LeaseId,
    token: FencingToken,
    rvn: RecordVersion,
    lease: Duration,
    cfg: ProtocolConfig,
    deadline: MonoTime,
    next_heartbeat: MonoTime,
    heartbeat: Option<Pending>,
    unconfirmed_rvn: Option<RecordVersion>,
    release: Option<LockOp>,
    state: LeaseState,
}

impl Lease {
    /// A lease granted by `record` (which this holder wrote), whose granting
    /// write was first sent at `t_send` on the holder's monotonic clock.
    pub fn granted(record: &LockRecord, t_send: MonoTime, cfg: ProtocolConfig) -> Lease {
        let lease = record.lease();
        Lease {
            key: record.key.clone(),
            owner: record.owner,
            token: record.token,
            rvn: record.rvn,
            lease,
            cfg,
            deadline: t_send + cfg.holder_validity(lease),
            next_heartbeat: t_send + cfg.heartbeat_interval(lease),
            heartbeat: None,
            unconfirmed_rvn: None,
            release: None,
            state: LeaseState::Held,
        }
    }

    /// The key held.
    pub fn key(&self) -> &LockKey {
        &self.key
    }
    /// This lease's id (the record's owner).
    pub fn owner(&self) -> LeaseId {
        self.owner
    }
    /// The fencing token of this grant.
    pub fn token(&self) -> FencingToken {
        self.token
    }
    /// The last record version this holder confirmed writing.
    pub fn rvn(&self) -> RecordVersion {
        self.rvn
    }
    /// The lease duration promised.
    pub fn lease(&self) -> Duration {
        self.lease
    }
    /// Until when (holder's clock) the lease is valid unless renewed.
    pub fn deadline(&self) -> MonoTime {
        self.deadline
    }
    /// The current state.
    pub fn state(&self) -> &LeaseState {
        &self.state
    }

    /// True if the holder may act as the holder at `now`.
    pub fn is_valid(&self, now: MonoTime) -> bool {
        self.state == LeaseState::Held && now < self.deadline
    }

    /// When to call [`Lease::handle_timeout`] / [`Lease::poll_heartbeat`] next;
    /// `None` once the lease has ended.
    pub fn poll_timeout(&self) -> Option<MonoTime> {
        match self.state {
            LeaseState::Held => Some(self.next_heartbeat.min(self.deadline)),
            _ => None,
        }
    }

    /// Marks the lease lost if its deadline has passed. Returns the reason if
    /// this call is the one that lost it.
    pub fn handle_timeout(&mut self, now: MonoTime) -> Option<LostReason> {
        if self.state == LeaseState::Held && now >= self.deadline {
            self.state = LeaseState::Lost(LostReason::Expired);
            return Some(LostReason::Expired);
        }
        None
    }

    /// The heartbeat to send now, if one is due: a resend of an unanswered one,
    /// or a new one installing `new_rvn` (ignored when resending).
    pub fn poll_heartbeat(
        &mut self,
        now: MonoTime,
        new_rvn: RecordVersion,
        wall: WallTime,
    ) -> Option<LockOp> {
        self.handle_timeout(now);
        if self.state != LeaseState::Held || now < self.next_heartbeat {
            return None;
        }
        self.next_heartbeat = now + self.cfg.heartbeat_retry(self.lease);
        if let Some(p) = &self.heartbeat {
            return Some(p.op.clone());
        }
        let op = LockOp {
            key: self.key.clone(),
            new_rvn,
            at: wall,
            kind: OpKind::Heartbeat {
                owner: self.owner,
                current: self.rvn,
            },
        };
        self.unconfirmed_rvn = Some(new_rvn);
        self.heartbeat = Some(Pending {
            op: op.clone(),
            first_sent: now,
        });
        Some(op)
    }

    /// A rebase to send now, raising this lease's token to `token` (above a
    /// state store's fence, see [`OpKind::Rebase`]): a resend of an
    /// unanswered rebase, a new one, or `None` while a heartbeat is in
    /// flight (ask again once it is answered) or when there is nothing to do
    /// (the token is already that high, or the lease is not held). Its answer
    /// goes to [`Lease::handle_heartbeat`]: a rebase renews like a heartbeat.
    pub fn poll_rebase(
        &mut self,
        now: MonoTime,
        new_rvn: RecordVersion,
        wall: WallTime,
        token: FencingToken,
    ) -> Option<LockOp> {
        self.handle_timeout(now);
        if self.state != LeaseState::Held {
            return None;
        }
        if let Some(p) = &self.heartbeat {
            return matches!(p.op.kind, OpKind::Rebase { .. }).then(|| p.op.clone());
        }
        if token <= self.token {
            return None;
        }
        let op = LockOp {
            key: self.key.clone(),
            new_rvn,
            at: wall,
            kind: OpKind::Rebase {
                owner: self.owner,
                current: self.rvn,
                token,
            },
        };
        self.next_heartbeat = now + self.cfg.heartbeat_retry(self.lease);
        self.unconfirmed_rvn = Some(new_rvn);
        self.heartbeat = Some(Pending {
            op: op.clone(),
            first_sent: now,
        });
        Some(op)
    }

    /// Feeds the answer to the last heartbeat sent.
    pub fn handle_heartbeat(&mut self, now: MonoTime, outcome: Outcome) -> HeartbeatEvent {
        if self.state != LeaseState::Held {
            return HeartbeatEvent::Ignored;
        }
        let Some(pending) = self.heartbeat.clone() else {
            return HeartbeatEvent::Ignored;
        };
        if let Some(reason) = self.handle_timeout(now) {
            return HeartbeatEvent::Lost(reason);
        }
        match outcome.resolve(&pending.op) {
            Outcome::Applied(record) => {
                self.heartbeat = None;
                self.unconfirmed_rvn = None;
                self.rvn = record.rvn;
                // A rebase raised it; a heartbeat keeps it.
                self.token = self.token.max(record.token);
                self.deadline = self
                    .deadline
                    .max(pending.first_sent + self.cfg.holder_validity(self.lease));
                self.next_heartbeat = pending.first_sent + self.cfg.heartbeat_interval(self.lease);
                if now >= self.deadline {
                    self.state = LeaseState::Lost(LostReason::Expired);
                    return HeartbeatEvent::Lost(LostReason::Expired);
                }
                HeartbeatEvent::Renewed(self.deadline)
            }
            Outcome::Conflict(current) => {
                self.heartbeat = None;
                let reason = LostReason::Superseded(current.map(Box::new));
                self.state = LeaseState::Lost(reason.clone());
                HeartbeatEvent::Lost(reason)
            }
            Outcome::Unknown => HeartbeatEvent::Retry,
        }
    }

    /// Ends the lease (the holder stops believing it holds at once) and returns
    /// the release write to send, or `None` if we know we no longer own the
    /// record. Calling it again returns the same op.
    pub fn release(&mut self, new_rvn: RecordVersion, wall: WallTime) -> Option<LockOp> {
        if let Some(op) = &self.release {
            return Some(op.clone());
        }
        match self.state {
            LeaseState::Lost(LostReason::Superseded(_)) => return None,
            LeaseState::Released if self.release.is_none() => return None,
            _ => {}
        }
        self.state = LeaseState::Released;
        let op = self.release_op(self.rvn, new_rvn, wall);
        self.release = Some(op.clone());
        Some(op)
    }

    fn release_op(&self, current: RecordVersion, new_rvn: RecordVersion, wall: WallTime) -> LockOp {
        LockOp {
            key: self.key.clone(),
            new_rvn,
            at: wall,
            kind: OpKind::Release {
                owner: self.owner,
                current,
            },
        }
    }

    /// Feeds the answer to the last release sent. `new_rvn` is used if a second
    /// release is needed (a heartbeat whose answer was lost did land).
    pub fn handle_release(
        &mut self,
        outcome: Outcome,
        new_rvn: RecordVersion,
        wall: WallTime,
    ) -> ReleaseStep {
        let Some(op) = self.release.clone() else {
            return ReleaseStep::NotHeld(None);
        };
        match outcome.resolve(&op) {
            Outcome::Applied(record) => ReleaseStep::Done(record),
            Outcome::Unknown => ReleaseStep::Retry(op),
            Outcome::Conflict(Some(current))
                if !current.released
                    && current.owner == self.owner
                    && Some(current.rvn) == self.unconfirmed_rvn =>
            {
                // Our heartbeat landed though we never heard back: release at
                // the version it wrote.
                self.unconfirmed_rvn = None;
                self.rvn = current.rvn;
                let retry = self.release_op(current.rvn, new_rvn, wall);
                self.release = Some(retry.clone());
                ReleaseStep::Retry(retry)
            }
            Outcome::Conflict(current) => ReleaseStep::NotHeld(current),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{HolderInfo, LeaseId};

    const LEASE_MS: u64 = 3000;

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
    fn granted_record() -> LockRecord {
        LockRecord {
            key: LockKey::new("k").unwrap(),
            owner: me(),
            token: FencingToken(3),
            rvn: RecordVersion(100),
            lease_ms: LEASE_MS,
            released: false,
            holder: HolderInfo::named("me"),
            acquired_at: WallTime(0),
            heartbeat_at: WallTime(0),
            forced_by: None,
            queue: Vec::new(),
        }
    }
    fn lease() -> Lease {
        Lease::granted(&granted_record(), ms(1000), cfg())
    }
    fn landed(op: &LockOp, before: &LockRecord) -> LockRecord {
        op.apply(Some(before)).unwrap()
    }

    #[test]
    fn deadline_and_schedule_from_t_send() {
        let l = lease();
        // 3000 × (1 − 0.001) − 100 = 2897 ms after t_send = 1000.
        assert_eq!(l.deadline(), ms(3897));
        assert_eq!(l.poll_timeout(), Some(ms(2000)));
        assert!(l.is_valid(ms(3896)));
        assert!(!l.is_valid(ms(3897)));
        assert_eq!(l.token(), FencingToken(3));
    }

    /// Table: (time of heartbeat send, outcome kind, time of answer) → event.
    #[test]
    fn heartbeat_transitions() {
        #[derive(Clone, Copy, Debug)]
        enum Answer {
            Landed,
            LandedButLost,
            TakenOver,
            Silent,
        }
        let cases: &[(u64, Answer, u64, &str)] = &[
            (2000, Answer::Landed, 2010, "renewed to 2000+2897"),
            (2000, Answer::LandedButLost, 2300, "renewed to 2000+2897"),
            (2000, Answer::TakenOver, 2010, "lost superseded"),
            (2000, Answer::Silent, 2010, "retry"),
            (2000, Answer::Landed, 3897, "lost expired"),
        ];
        for &(send, answer, at, want) in cases {
            let mut l = lease();
            assert_eq!(
                l.poll_heartbeat(ms(send - 1), RecordVersion(7), WallTime(0)),
                None
            );
            let op = l
                .poll_heartbeat(ms(send), RecordVersion(200), WallTime(5))
                .unwrap();
            assert_eq!(
                op.kind,
                OpKind::Heartbeat {
                    owner: me(),
                    current: RecordVersion(100)
                }
            );
            let after = landed(&op, &granted_record());
            let outcome = match answer {
                Answer::Landed => Outcome::Applied(after),
                Answer::LandedButLost => Outcome::Conflict(Some(after)),
                Answer::TakenOver => {
                    let mut other = granted_record();
                    other.owner = LeaseId(uuid::Uuid::from_u128(9));
                    other.rvn = RecordVersion(300);
                    Outcome::Conflict(Some(other))
                }
                Answer::Silent => Outcome::Unknown,
            };
            let event = l.handle_heartbeat(ms(at), outcome);
            match want {
                "renewed to 2000+2897" => {
                    assert_eq!(event, HeartbeatEvent::Renewed(ms(4897)), "{answer:?}");
                    assert_eq!(l.rvn(), RecordVersion(200));
                    assert_eq!(l.poll_timeout(), Some(ms(3000)));
                }
                "lost superseded" => {
                    assert!(matches!(
                        event,
                        HeartbeatEvent::Lost(LostReason::Superseded(Some(_)))
                    ));
                    assert!(!l.is_valid(ms(at)));
                    assert_eq!(l.poll_timeout(), None);
                }
                "retry" => {
                    assert_eq!(event, HeartbeatEvent::Retry);
                    // Resends the very same op (same new_rvn), not a new one.
                    let again = l
                        .poll_heartbeat(ms(2150), RecordVersion(999), WallTime(0))
                        .unwrap();
                    assert_eq!(again, op);
                    assert!(l.is_valid(ms(2150)));
                }
                "lost expired" => {
                    assert_eq!(event, HeartbeatEvent::Lost(LostReason::Expired));
                    assert!(!l.is_valid(ms(at)));
                }
                _ => unreachable!(),
            }
        }
    }

    #[test]
    fn silent_store_expires_lease() {
        let mut l = lease();
        let _ = l
            .poll_heartbeat(ms(2000), RecordVersion(200), WallTime(0))
            .unwrap();
        assert_eq!(
            l.handle_heartbeat(ms(2500), Outcome::Unknown),
            HeartbeatEvent::Retry
        );
        assert_eq!(l.handle_timeout(ms(3896)), None);
        assert_eq!(l.handle_timeout(ms(3897)), Some(LostReason::Expired));
        assert_eq!(l.handle_timeout(ms(3898)), None, "lost only once");
        assert_eq!(
            l.poll_heartbeat(ms(4000), RecordVersion(1), WallTime(0)),
            None
        );
        // A late answer does not resurrect the lease.
        assert_eq!(
            l.handle_heartbeat(ms(4000), Outcome::Applied(granted_record())),
            HeartbeatEvent::Ignored
        );
        assert!(!l.is_valid(ms(4000)));
    }

    #[test]
    fn release_transitions() {
        // Plain release.
        let mut l = lease();
        let op = l.release(RecordVersion(500), WallTime(0)).unwrap();
        assert!(!l.is_valid(ms(1001)), "belief ends when release starts");
        let rec = landed(&op, &granted_record());
        assert_eq!(
            l.handle_release(
                Outcome::Applied(rec.clone()),
                RecordVersion(501),
                WallTime(0)
            ),
            ReleaseStep::Done(rec.clone())
        );
        // Lost answer to the release itself.
        let mut l = lease();
        let op = l.release(RecordVersion(500), WallTime(0)).unwrap();
        assert_eq!(
            l.handle_release(Outcome::Unknown, RecordVersion(501), WallTime(0)),
            ReleaseStep::Retry(op.clone())
        );
        let rec = landed(&op, &granted_record());
        assert_eq!(
            l.handle_release(
                Outcome::Conflict(Some(rec.clone())),
                RecordVersion(501),
                WallTime(0)
            ),
            ReleaseStep::Done(rec)
        );
        // A heartbeat landed unheard: release retries at the heartbeat's version.
        let mut l = lease();
        let hb = l
            .poll_heartbeat(ms(2000), RecordVersion(200), WallTime(0))
            .unwrap();
        let after_hb = landed(&hb, &granted_record());
        assert_eq!(
            l.handle_heartbeat(ms(2001), Outcome::Unknown),
            HeartbeatEvent::Retry
        );
        let _ = l.release(RecordVersion(500), WallTime(0)).unwrap();
        let ReleaseStep::Retry(second) = l.handle_release(
            Outcome::Conflict(Some(after_hb.clone())),
            RecordVersion(501),
            WallTime(0),
        ) else {
            panic!("expected a second release");
        };
        assert_eq!(
            second.kind,
            OpKind::Release {
                owner: me(),
                current: RecordVersion(200)
            }
        );
        assert!(landed(&second, &after_hb).released);
        // Taken over: nothing to release.
        let mut l = lease();
        let mut other = granted_record();
        other.owner = LeaseId(uuid::Uuid::from_u128(9));
        let _ = l.release(RecordVersion(500), WallTime(0)).unwrap();
        assert_eq!(
            l.handle_release(
                Outcome::Conflict(Some(other.clone())),
                RecordVersion(501),
                WallTime(0)
            ),
            ReleaseStep::NotHeld(Some(other))
        );
    }

    #[test]
    fn superseded_lease_sends_no_release_but_expired_one_does() {
        let mut l = lease();
        let _ = l.poll_heartbeat(ms(2000), RecordVersion(200), WallTime(0));
        let _ = l.handle_heartbeat(ms(2001), Outcome::Conflict(None));
        assert_eq!(l.release(RecordVersion(5), WallTime(0)), None);

        let mut l = lease();
        l.handle_timeout(ms(10_000));
        let op = l.release(RecordVersion(5), WallTime(0)).unwrap();
        assert_eq!(
            op.kind,
            OpKind::Release {
                owner: me(),
                current: RecordVersion(100)
            }
        );
        assert_eq!(
            l.release(RecordVersion(6), WallTime(0)),
            Some(op),
            "idempotent"
        );
    }
}
