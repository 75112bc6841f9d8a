//! The waiter's side: acquiring a key, timing a holder's record version on the
//! waiter's own monotonic clock, and taking over only after that version has
//! been seen unchanged for `lease × (1 + ρ) + margin`.
//!
//! The waiter reads and writes only when writing can succeed: it reads the
//! record (a consistent read), and sends a grant only when the record is
//! absent, released, or held at a version it has timed for a whole takeover
//! wait. Every grant names the version it replaces ([`GrantFrom`]), so it can
//! land only on that version.
//!
//! With the hand-off queue ([`Waiter::with_queue`]), a waiter that finds the
//! key taken a second time (it has waited a poll interval) registers at the
//! end of the record's queue (one conditional write that keeps the record's
//! version), and a released record is granted to the queue's head. The others treat a released record reserved for
//! another head like a held one: they time it, and skip the head only after
//! it has left the same released version untaken for a whole lease. The
//! queue decides only who may write first; every grant is still the
//! conditional write that names the version it replaces.
//!
//! Call order: [`Waiter::poll`] says what to do — read the record (feed it to
//! [`Waiter::handle_read`], or a failed read to [`Waiter::handle_read_error`]),
//! send an op (feed its answer to [`Waiter::handle_outcome`]), or sleep until a
//! time and poll again. `poll` takes both of the client's clock readings: the
//! holder reading (it stamps `t_send`, from which a granted lease is timed)
//! and the waiter reading (it times the holder's version); see
//! [`crate::clock::Clock`].

use super::{
    Dequeue, FencingToken, GrantFrom, HolderInfo, LeaseId, LockKey, LockOp, LockRecord, MonoTime,
    OpKind, Outcome, ProtocolConfig, ProtocolError, RecordVersion, WallTime,
};
use std::time::Duration;

/// How often a waiter reads, and how it backs off after unanswered requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First window after an unanswered request (exponential, full jitter).
    pub base: Duration,
    /// Largest window after unanswered requests.
    pub cap: Duration,
    /// The interval between reads of a held record: each read comes after
    /// between half of it and all of it (jittered).
    pub poll: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(2),
            poll: Duration::from_millis(60),
        }
    }
}

impl Backoff {
    /// The window after `attempts` unanswered requests.
    pub fn window(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.min(16);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Full jitter: a delay uniformly in the window, `jitter` in `[0, 1)`;
    /// never under a millisecond.
    pub fn delay(&self, attempts: u32, jitter: f64) -> Duration {
        self.window(attempts)
            .mul_f64(clamp_jitter(jitter))
            .max(Duration::from_millis(1))
    }

    /// The delay before the next read of a held record: `poll × (½ + jitter/2)`,
    /// never under a millisecond.
    pub fn poll_delay(&self, jitter: f64) -> Duration {
        self.poll
            .mul_f64(0.5 + clamp_jitter(jitter) / 2.0)
            .max(Duration::from_millis(1))
    }
}

/// True if `record` was released at least its lease ago by the wall clocks
/// (the releaser's stamp against `wall`, ours). Skipping a head is never a
/// question of safety (the record is released: no lease is valid on it), so
/// wall clocks may decide it: then a waiter that waits less than a lease, or
/// a try, is not kept from a key by an entry a dead waiter left behind. A
/// clock off by more than that only moves the skip earlier or later.
fn released_a_lease_ago(record: &LockRecord, wall: WallTime) -> bool {
    let age = wall.0.saturating_sub(record.heartbeat_at.0);
    record.released && u64::try_from(age).is_ok_and(|age| age >= record.lease_ms)
}

fn clamp_jitter(jitter: f64) -> f64 {
    if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.5
    }
}

/// What a read of the record found.
// One value per store round trip, moved once: boxing would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// No record; `floor` is the store's token floor.
    Absent {
        /// The store's token floor.
        floor: FencingToken,
    },
    /// The record.
    Record(LockRecord),
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

/// What to do next, from [`Waiter::poll`].
// One value per poll, moved once: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaiterAction {
    /// Read the record consistently (and, if absent, the token floor), then
    /// call [`Waiter::handle_read`].
    Read,
    /// Send this op, then call [`Waiter::handle_outcome`].
    Send(LockOp),
    /// Sleep until `until` (waiter's clock), then poll again.
    Wait {
        /// When to poll again.
        until: MonoTime,
    },
    /// The key has used up every fencing token: it can never be granted.
    Exhausted(Option<Box<LockRecord>>),
}

/// What [`Waiter::handle_outcome`] concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaiterStep {
    /// The lock is ours: `record` is what we wrote; `t_send` (holder clock) is
    /// when the granting op was first sent — start the [`super::Lease`] from it.
    Granted {
        /// The record written by the grant.
        record: Box<LockRecord>,
        /// When the granting op was first sent.
        t_send: MonoTime,
    },
    /// Poll again at once.
    Continue,
    /// Sleep until `until` (waiter's clock), then poll again.
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

/// A released record reserved for a queue head other than this waiter, as
/// first seen (waiter's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reservation {
    rvn: RecordVersion,
    head: LeaseId,
    /// When the head may be skipped if the record stays so.
    skip_at: MonoTime,
}

/// Grants whose condition failed on a free record in a row before the waiter
/// pauses for a poll interval (it never spins).
const FREE_CONFLICTS_BEFORE_PAUSE: u32 = 3;

/// The waiter state machine (sans-IO).
#[derive(Debug, Clone)]
pub struct Waiter {
    key: LockKey,
    owner: LeaseId,
    lease_ms: u64,
    holder: HolderInfo,
    cfg: ProtocolConfig,
    backoff: Backoff,
    /// What the last read or answer showed, not yet acted on.
    known: Option<Seen>,
    observed: Option<Observation>,
    pending: Option<Pending>,
    unanswered: u32,
    free_conflicts: u32,
    /// Registers in the record's queue (the store keeps one).
    queueing: bool,
    /// How many reads or answers found the key taken (held, or released for
    /// another head): a waiter registers from the second on, so a wait
    /// shorter than one poll interval costs no write.
    taken_sightings: u32,
    reserved: Option<Reservation>,
    /// The last record read or answered, for [`Waiter::leave_op`].
    last: Option<LockRecord>,
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
            known: None,
            observed: None,
            pending: None,
            unanswered: 0,
            free_conflicts: 0,
            queueing: false,
            taken_sightings: 0,
            reserved: None,
            last: None,
        })
    }

    /// Registers in the record's hand-off queue while waiting (only for
    /// stores that keep one, [`crate::store::LockStore::queues`]). Without
    /// it the waiter still respects a queue others keep: it never takes a
    /// released record out of turn before a whole lease of waiting.
    pub fn with_queue(mut self, queueing: bool) -> Waiter {
        self.queueing = queueing;
        self
    }

    /// The write that unregisters this waiter from the queue, when it gives
    /// up waiting: `None` if the last record it saw does not have it. (A
    /// stale place is refused with the current record; build it again from
    /// that, see [`Waiter::leave_op_from`].)
    pub fn leave_op(&self, new_rvn: RecordVersion, wall: WallTime) -> Option<LockOp> {
        self.last
            .as_ref()
            .and_then(|r| self.leave_op_from(r, new_rvn, wall))
    }

    /// The write that unregisters this waiter from `record`'s queue, if it is
    /// in it.
    pub fn leave_op_from(
        &self,
        record: &LockRecord,
        new_rvn: RecordVersion,
        wall: WallTime,
    ) -> Option<LockOp> {
        let at = u32::try_from(record.queue_position(self.owner)?).ok()?;
        Some(LockOp {
            key: self.key.clone(),
            new_rvn,
            at: wall,
            kind: OpKind::Leave {
                waiter: self.owner,
                at,
            },
        })
    }

    /// Starts from a free record this client saw recently (e.g. the one it
    /// wrote when it last released the key), saving the first read: the first
    /// op is a grant naming it. A stale hint costs one failed condition, which
    /// returns the current record. A held record is no hint (the waiter must
    /// time it from its own reads): it is ignored.
    pub fn with_hint(mut self, seen: Seen) -> Waiter {
        if !matches!(&seen, Seen::Record(r) if r.is_held()) {
            self.known = Some(seen);
        }
        self
    }

    /// The lease id this waiter will hold as.
    pub fn owner(&self) -> LeaseId {
        self.owner
    }

    /// The key.
    pub fn key(&self) -> &LockKey {
        &self.key
    }

    /// The current holder as last observed, with the takeover time.
    pub fn observation(&self) -> Option<&Observation> {
        self.observed.as_ref()
    }

    /// The op whose answer is still unknown, if any (it may have landed).
    pub fn unresolved(&self) -> Option<&LockOp> {
        self.pending.as_ref().map(|p| &p.op)
    }

    /// What to do now. `now` is the holder reading of the client's clock,
    /// `now_waiter` its waiter reading; `new_rvn` is used only if a new op is
    /// built; `jitter` is uniform in `[0, 1)`.
    pub fn poll(
        &mut self,
        now: MonoTime,
        now_waiter: MonoTime,
        new_rvn: RecordVersion,
        wall: WallTime,
        jitter: f64,
    ) -> WaiterAction {
        if let Some(p) = &self.pending {
            return WaiterAction::Send(p.op.clone());
        }
        let from = match &self.known {
            None => return WaiterAction::Read,
            Some(Seen::Absent { floor }) => GrantFrom::Absent { floor: *floor },
            Some(Seen::Record(r)) if self.should_enqueue(r) => {
                let op = LockOp {
                    key: self.key.clone(),
                    new_rvn,
                    at: wall,
                    kind: OpKind::Enqueue { waiter: self.owner },
                };
                self.known = None;
                self.pending = Some(Pending {
                    op: op.clone(),
                    first_sent: now,
                });
                return WaiterAction::Send(op);
            }
            Some(Seen::Record(r)) if r.released && self.my_turn(r) => {
                GrantFrom::of(Some(r), FencingToken::NONE)
            }
            Some(Seen::Record(r)) => {
                // Held, or released and reserved for another head: timed.
                let due = r.expires()
                    && if r.released {
                        self.reserved
                            .as_ref()
                            .is_some_and(|v| v.rvn == r.rvn && now_waiter >= v.skip_at)
                            || released_a_lease_ago(r, wall)
                    } else {
                        self.observed
                            .as_ref()
                            .is_some_and(|o| o.record.rvn == r.rvn && now_waiter >= o.takeover_at)
                    };
                if !due {
                    let mut until = now_waiter + self.backoff.poll_delay(jitter);
                    let timed = if r.released {
                        self.reserved.as_ref().map(|v| v.skip_at)
                    } else {
                        self.observed.as_ref().map(|o| o.takeover_at)
                    };
                    if let Some(at) = timed.filter(|_| r.expires()) {
                        until = until.min(at.max(now_waiter));
                    }
                    // The next poll reads again.
                    self.known = None;
                    return WaiterAction::Wait { until };
                }
                GrantFrom::of(Some(r), FencingToken::NONE)
            }
        };
        if from.next_token().is_none() {
            let record = match &self.known {
                Some(Seen::Record(r)) => Some(Box::new(r.clone())),
                _ => None,
            };
            return WaiterAction::Exhausted(record);
        }
        let kind = match (from, &self.known) {
            (GrantFrom::Version { rvn, token }, Some(Seen::Record(r)))
                if !r.released || !self.my_turn(r) =>
            {
                OpKind::Takeover {
                    observed: rvn,
                    token,
                    owner: self.owner,
                    lease_ms: self.lease_ms,
                    holder: self.holder.clone(),
                    at_least: FencingToken::NONE,
                    dequeue: Dequeue {
                        me_at: self.place_in(r),
                        // A released record out of turn: its head is skipped.
                        skip: r.queue_head().filter(|_| r.released),
                    },
                }
            }
            (from, known) => OpKind::Acquire {
                from,
                owner: self.owner,
                lease_ms: self.lease_ms,
                holder: self.holder.clone(),
                at_least: FencingToken::NONE,
                dequeue: Dequeue {
                    me_at: match known {
                        Some(Seen::Record(r)) => self.place_in(r),
                        _ => None,
                    },
                    skip: None,
                },
            },
        };
        let op = LockOp {
            key: self.key.clone(),
            new_rvn,
            at: wall,
            kind,
        };
        self.known = None;
        self.pending = Some(Pending {
            op: op.clone(),
            first_sent: now,
        });
        WaiterAction::Send(op)
    }

    /// Feeds what a read found (waiter's clock).
    pub fn handle_read(&mut self, now_waiter: MonoTime, seen: Seen) {
        self.unanswered = 0;
        self.learn(now_waiter, seen);
    }

    /// A read failed (no answer): wait a backoff before polling again.
    pub fn handle_read_error(&mut self, now_waiter: MonoTime, jitter: f64) -> WaiterStep {
        self.unanswered = self.unanswered.saturating_add(1);
        WaiterStep::Wait {
            until: now_waiter + self.backoff.delay(self.unanswered, jitter),
        }
    }

    /// Feeds the answer to the op last returned by [`Waiter::poll`]
    /// (waiter's clock). `jitter` is uniform in `[0, 1)`.
    pub fn handle_outcome(
        &mut self,
        now_waiter: MonoTime,
        outcome: Outcome,
        jitter: f64,
    ) -> WaiterStep {
        let Some(pending) = self.pending.clone() else {
            return WaiterStep::Continue;
        };
        match outcome.resolve(&pending.op) {
            Outcome::Applied(record) if pending.op.kind.is_queue_write() => {
                // Registered: wait for the turn with the record it wrote.
                self.pending = None;
                self.unanswered = 0;
                self.learn(now_waiter, Seen::Record(record));
                WaiterStep::Continue
            }
            Outcome::Applied(record) => {
                self.pending = None;
                self.unanswered = 0;
                WaiterStep::Granted {
                    record: Box::new(record),
                    t_send: pending.first_sent,
                }
            }
            Outcome::Unknown => {
                // The same op is resent after a backoff: it recognises its
                // own write if the first one landed.
                self.unanswered = self.unanswered.saturating_add(1);
                WaiterStep::Wait {
                    until: now_waiter + self.backoff.delay(self.unanswered, jitter),
                }
            }
            Outcome::Conflict(current) => {
                // The op named a version the record no longer has: it can
                // never land now. Learn the current record instead.
                self.pending = None;
                self.unanswered = 0;
                let free = current.as_ref().is_none_or(|r| r.released);
                match current {
                    Some(record) => self.learn(now_waiter, Seen::Record(record)),
                    // Absent: read again (the token floor is needed).
                    None => {
                        self.known = None;
                        self.observed = None;
                    }
                }
                if free {
                    self.free_conflicts += 1;
                    if self.free_conflicts > FREE_CONFLICTS_BEFORE_PAUSE {
                        self.free_conflicts = 0;
                        self.known = None;
                        return WaiterStep::Wait {
                            until: now_waiter + self.backoff.poll_delay(jitter),
                        };
                    }
                } else {
                    self.free_conflicts = 0;
                }
                WaiterStep::Continue
            }
        }
    }

    fn learn(&mut self, now_waiter: MonoTime, seen: Seen) {
        match &seen {
            Seen::Record(r) if r.is_held() => self.observe(now_waiter, r.clone()),
            _ => self.observed = None,
        }
        match &seen {
            Seen::Record(r) if r.released && !self.my_turn(r) => self.reserve(now_waiter, r),
            _ => self.reserved = None,
        }
        if matches!(&seen, Seen::Record(r) if r.is_held() || !self.my_turn(r)) {
            self.taken_sightings = self.taken_sightings.saturating_add(1);
        }
        self.last = match &seen {
            Seen::Record(r) => Some(r.clone()),
            Seen::Absent { .. } => None,
        };
        self.known = Some(seen);
    }

    /// This waiter's place in `record`'s queue, for a grant's [`Dequeue`].
    fn place_in(&self, record: &LockRecord) -> Option<u32> {
        record
            .queue_position(self.owner)
            .and_then(|i| u32::try_from(i).ok())
    }

    /// True if a release of `record` is this waiter's to take: nobody is
    /// registered, or it is first.
    fn my_turn(&self, record: &LockRecord) -> bool {
        record.queue_head().is_none_or(|head| head == self.owner)
    }

    /// True if the waiter should register before waiting on `record`: it
    /// queues, has found the key taken before (it has waited a poll
    /// interval already), is not registered, there is room, and the record
    /// is not free for it to take now.
    fn should_enqueue(&self, record: &LockRecord) -> bool {
        self.queueing
            && self.taken_sightings >= 2
            && record.queue_position(self.owner).is_none()
            && record.queue.len() < LockRecord::MAX_QUEUE
            && !(record.released && self.my_turn(record))
    }

    /// Times a released `record` reserved for another head: the head may be
    /// skipped when the same version with the same head has been seen for
    /// a whole lease (the record is released: no lease is at stake, only the
    /// head's turn).
    fn reserve(&mut self, now_waiter: MonoTime, record: &LockRecord) {
        let Some(head) = record.queue_head() else {
            self.reserved = None;
            return;
        };
        let same = self
            .reserved
            .as_ref()
            .is_some_and(|v| v.rvn == record.rvn && v.head == head);
        if !same {
            self.reserved = Some(Reservation {
                rvn: record.rvn,
                head,
                skip_at: now_waiter + record.lease(),
            });
        }
    }

    fn observe(&mut self, now_waiter: MonoTime, record: LockRecord) {
        match &mut self.observed {
            Some(obs) if obs.record.rvn == record.rvn => obs.record = record,
            _ => {
                let takeover_at = now_waiter + self.cfg.takeover_wait(record.lease());
                self.observed = Some(Observation {
                    record,
                    since: now_waiter,
                    takeover_at,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn backoff() -> Backoff {
        Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(400),
            poll: Duration::from_millis(40),
        }
    }
    fn waiter() -> Waiter {
        Waiter::new(
            LockKey::new("k").unwrap(),
            me(),
            Duration::from_secs(1),
            HolderInfo::named("me"),
            cfg(),
            backoff(),
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
            queue: Vec::new(),
        }
    }
    fn released(rvn: u128) -> LockRecord {
        LockRecord {
            released: true,
            ..held(rvn, 1000)
        }
    }
    /// Polls at `t` (both readings equal) with jitter ½.
    fn poll(w: &mut Waiter, t: u64, rvn: u128) -> WaiterAction {
        w.poll(ms(t), ms(t), RecordVersion(rvn), WallTime(0), 0.5)
    }
    fn sent(action: WaiterAction) -> LockOp {
        match action {
            WaiterAction::Send(op) => op,
            other => panic!("expected a send, got {other:?}"),
        }
    }

    #[test]
    fn reads_first_and_grants_an_absent_record_above_the_floor() {
        let mut w = waiter();
        assert_eq!(poll(&mut w, 10, 1), WaiterAction::Read);
        w.handle_read(
            ms(11),
            Seen::Absent {
                floor: FencingToken(7),
            },
        );
        let op = sent(poll(&mut w, 12, 1));
        assert_eq!(op.granted_token(), Some(FencingToken(8)));
        let rec = op.apply(None).unwrap();
        assert_eq!(
            w.handle_outcome(ms(20), Outcome::Applied(rec.clone()), 0.5),
            WaiterStep::Granted {
                record: Box::new(rec),
                t_send: ms(12)
            }
        );
    }

    #[test]
    fn a_held_record_is_no_hint() {
        let mut w = waiter().with_hint(Seen::Record(held(7, 1000)));
        assert_eq!(poll(&mut w, 0, 1), WaiterAction::Read);
    }

    #[test]
    fn a_released_record_is_acquired_at_its_version() {
        let mut w = waiter().with_hint(Seen::Record(released(7)));
        let op = sent(poll(&mut w, 0, 1));
        assert!(matches!(
            op.kind,
            OpKind::Acquire {
                from: GrantFrom::Version {
                    rvn: RecordVersion(7),
                    token: FencingToken(4)
                },
                ..
            }
        ));
        assert_eq!(op.granted_token(), Some(FencingToken(5)));
    }

    /// The lease of a grant whose answers were lost is timed from the FIRST
    /// send: resends never move `t_send` later.
    #[test]
    fn lost_answers_are_resent_and_recognised_with_the_first_t_send() {
        let mut w = waiter().with_hint(Seen::Record(released(7)));
        let op = sent(poll(&mut w, 10, 1));
        for (at, rvn) in [(20u64, 2u128), (300, 3)] {
            let WaiterStep::Wait { until } = w.handle_outcome(ms(at), Outcome::Unknown, 0.5) else {
                panic!("expected to back off")
            };
            assert!(until > ms(at));
            let again = sent(poll(&mut w, at + 100, rvn));
            assert_eq!(again, op, "the same op, the same new rvn");
        }
        let landed = op.apply(Some(&released(7))).unwrap();
        assert_eq!(
            w.handle_outcome(ms(500), Outcome::Conflict(Some(landed.clone())), 0.5),
            WaiterStep::Granted {
                record: Box::new(landed),
                t_send: ms(10)
            }
        );
    }

    #[test]
    fn a_held_record_is_polled_by_reads_and_taken_over_after_the_whole_wait() {
        // takeover_wait(1000 ms) = 1000 × 1.001 + 100 = 1101 ms.
        let mut w = waiter();
        assert_eq!(poll(&mut w, 0, 1), WaiterAction::Read);
        w.handle_read(ms(5), Seen::Record(held(7, 1000)));
        assert_eq!(w.observation().unwrap().takeover_at, ms(1106));
        // Not due: wait a poll interval (20..40 ms; ½ jitter → 30), then read.
        assert_eq!(poll(&mut w, 5, 2), WaiterAction::Wait { until: ms(35) });
        assert_eq!(poll(&mut w, 35, 2), WaiterAction::Read);
        // Same rvn again: the clock is NOT reset.
        w.handle_read(ms(600), Seen::Record(held(7, 1000)));
        assert_eq!(w.observation().unwrap().since, ms(5));
        // The wait is cut short at the takeover time.
        assert_eq!(
            poll(&mut w, 1090, 2),
            WaiterAction::Wait { until: ms(1106) }
        );
        w.handle_read(ms(1105), Seen::Record(held(7, 1000)));
        assert!(matches!(poll(&mut w, 1105, 3), WaiterAction::Wait { .. }));
        w.handle_read(ms(1106), Seen::Record(held(7, 1000)));
        let op = sent(poll(&mut w, 1106, 4));
        assert_eq!(
            op.kind,
            OpKind::Takeover {
                observed: RecordVersion(7),
                token: FencingToken(4),
                owner: me(),
                lease_ms: 1000,
                holder: HolderInfo::named("me"),
                at_least: FencingToken::NONE,
                dequeue: Default::default(),
            }
        );
        let rec = op.apply(Some(&held(7, 1000))).unwrap();
        assert_eq!(rec.token, FencingToken(5));
        assert!(matches!(
            w.handle_outcome(ms(1110), Outcome::Applied(rec), 0.5),
            WaiterStep::Granted { t_send, .. } if t_send == ms(1106)
        ));
    }

    /// The waiter's reading times the holder; the holder reading stamps the
    /// grant's `t_send`.
    #[test]
    fn the_two_clock_readings_have_their_roles() {
        let mut w = waiter();
        w.handle_read(ms(0), Seen::Record(held(7, 1000)));
        // Holder reading far ahead, waiter reading before the takeover time:
        // not due.
        let action = w.poll(ms(5000), ms(1000), RecordVersion(2), WallTime(0), 0.5);
        assert!(matches!(action, WaiterAction::Wait { .. }), "{action:?}");
        w.handle_read(ms(1101), Seen::Record(held(7, 1000)));
        let op = sent(w.poll(ms(9000), ms(1101), RecordVersion(3), WallTime(0), 0.5));
        let rec = op.apply(Some(&held(7, 1000))).unwrap();
        assert!(matches!(
            w.handle_outcome(ms(1102), Outcome::Applied(rec), 0.5),
            WaiterStep::Granted { t_send, .. } if t_send == ms(9000)
        ));
    }

    #[test]
    fn a_heartbeat_resets_the_observation() {
        let mut w = waiter();
        w.handle_read(ms(0), Seen::Record(held(7, 1000)));
        w.handle_read(ms(900), Seen::Record(held(8, 1000)));
        let obs = w.observation().unwrap();
        assert_eq!((obs.since, obs.takeover_at), (ms(900), ms(2001)));
        // A takeover whose condition fails (holder renewed meanwhile) resets too.
        let op = sent(poll(&mut w, 2001, 3));
        assert!(
            matches!(op.kind, OpKind::Takeover { observed, .. } if observed == RecordVersion(8))
        );
        assert_eq!(
            w.handle_outcome(ms(2002), Outcome::Conflict(Some(held(9, 1000))), 0.5),
            WaiterStep::Continue
        );
        assert_eq!(w.observation().unwrap().since, ms(2002));
        assert!(matches!(poll(&mut w, 2002, 4), WaiterAction::Wait { .. }));
    }

    #[test]
    fn waits_use_the_holders_lease_not_ours() {
        let mut w = waiter();
        w.handle_read(ms(0), Seen::Record(held(7, 10_000)));
        assert_eq!(w.observation().unwrap().takeover_at, ms(10_000 + 10 + 100));
    }

    #[test]
    fn a_lock_that_never_expires_is_never_taken_over() {
        let mut w = waiter();
        let forever = held(7, LockRecord::NO_EXPIRY_LEASE_MS);
        w.handle_read(ms(0), Seen::Record(forever.clone()));
        w.handle_read(ms(u64::MAX / 4), Seen::Record(forever));
        assert!(matches!(
            poll(&mut w, u64::MAX / 4, 2),
            WaiterAction::Wait { .. }
        ));
    }

    #[test]
    fn conflicts_on_a_free_record_are_retried_at_once_but_never_spin() {
        let mut w = waiter().with_hint(Seen::Record(released(1)));
        for i in 0..FREE_CONFLICTS_BEFORE_PAUSE {
            let _ = sent(poll(&mut w, 0, u128::from(i) + 10));
            assert_eq!(
                w.handle_outcome(
                    ms(0),
                    Outcome::Conflict(Some(released(u128::from(i) + 2))),
                    0.5
                ),
                WaiterStep::Continue
            );
        }
        let _ = sent(poll(&mut w, 0, 99));
        assert!(matches!(
            w.handle_outcome(ms(0), Outcome::Conflict(Some(released(50))), 0.5),
            WaiterStep::Wait { .. }
        ));
        assert_eq!(poll(&mut w, 30, 100), WaiterAction::Read);
    }

    #[test]
    fn a_record_gone_since_it_was_read_is_read_again() {
        let mut w = waiter().with_hint(Seen::Record(released(1)));
        let _ = sent(poll(&mut w, 0, 2));
        assert_eq!(
            w.handle_outcome(ms(1), Outcome::Conflict(None), 0.5),
            WaiterStep::Continue
        );
        assert_eq!(poll(&mut w, 1, 3), WaiterAction::Read);
    }

    #[test]
    fn used_up_tokens_are_reported_not_waited_out() {
        let mut w = waiter();
        let mut last = released(7);
        last.token = FencingToken(u64::MAX);
        w.handle_read(ms(0), Seen::Record(last.clone()));
        assert_eq!(
            poll(&mut w, 0, 1),
            WaiterAction::Exhausted(Some(Box::new(last)))
        );
        let mut w = waiter();
        w.handle_read(
            ms(0),
            Seen::Absent {
                floor: FencingToken(u64::MAX),
            },
        );
        assert_eq!(poll(&mut w, 0, 1), WaiterAction::Exhausted(None));
    }

    #[test]
    fn failed_reads_back_off() {
        let mut w = waiter();
        assert_eq!(poll(&mut w, 0, 1), WaiterAction::Read);
        let WaiterStep::Wait { until } = w.handle_read_error(ms(0), 0.99) else {
            panic!()
        };
        assert!(until > ms(100) && until <= ms(200), "{until:?}");
        assert_eq!(poll(&mut w, 200, 1), WaiterAction::Read);
    }

    #[test]
    fn backoff_is_capped_full_jitter_and_polls_are_jittered() {
        let b = backoff();
        assert_eq!(b.window(0), Duration::from_millis(100));
        assert_eq!(b.window(1), Duration::from_millis(200));
        assert_eq!(b.window(5), Duration::from_millis(400));
        assert_eq!(b.window(u32::MAX), Duration::from_millis(400));
        assert_eq!(b.delay(5, 0.5), Duration::from_millis(200));
        assert_eq!(b.delay(5, 0.0), Duration::from_millis(1));
        assert_eq!(b.delay(5, f64::NAN), Duration::from_millis(200));
        assert_eq!(b.poll_delay(0.0), Duration::from_millis(20));
        assert_eq!(b.poll_delay(1.0), Duration::from_millis(40));
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

    fn with_queue(mut r: LockRecord, queue: &[LeaseId]) -> LockRecord {
        r.queue = queue.to_vec();
        r
    }
    fn third() -> LeaseId {
        LeaseId(uuid::Uuid::from_u128(3))
    }

    /// A queueing waiter registers once, then polls by reading; the
    /// registration does not restart the timing of the holder's version.
    #[test]
    fn a_queueing_waiter_registers_then_reads() {
        let mut w = waiter().with_queue(true);
        w.handle_read(ms(0), Seen::Record(held(7, 1000)));
        // A wait shorter than a poll interval costs no write.
        assert_eq!(poll(&mut w, 0, 1), WaiterAction::Wait { until: ms(30) });
        assert_eq!(poll(&mut w, 30, 1), WaiterAction::Read);
        w.handle_read(ms(30), Seen::Record(held(7, 1000)));
        let op = sent(poll(&mut w, 30, 1));
        assert_eq!(op.kind, OpKind::Enqueue { waiter: me() });
        let registered = op.apply(Some(&held(7, 1000))).unwrap();
        assert_eq!(
            w.handle_outcome(ms(3), Outcome::Applied(registered.clone()), 0.5),
            WaiterStep::Continue
        );
        assert!(matches!(poll(&mut w, 3, 2), WaiterAction::Wait { .. }));
        assert_eq!(w.observation().unwrap().since, ms(0));
        // A lost answer: the resend finds itself registered.
        let mut w2 = waiter().with_queue(true);
        w2.handle_read(ms(0), Seen::Record(held(7, 1000)));
        w2.handle_read(ms(0), Seen::Record(held(7, 1000)));
        let op2 = sent(poll(&mut w2, 0, 1));
        assert!(matches!(
            w2.handle_outcome(ms(1), Outcome::Unknown, 0.5),
            WaiterStep::Wait { .. }
        ));
        assert_eq!(sent(poll(&mut w2, 200, 9)), op2);
        assert_eq!(
            w2.handle_outcome(ms(201), Outcome::Conflict(Some(registered)), 0.5),
            WaiterStep::Continue
        );
        assert!(matches!(poll(&mut w2, 201, 3), WaiterAction::Wait { .. }));
        // The takeover, when due, names the waiter's place.
        w.handle_read(ms(1200), Seen::Record(with_queue(held(7, 1000), &[me()])));
        let t = sent(poll(&mut w, 1200, 4));
        assert!(matches!(
            t.kind,
            OpKind::Takeover {
                dequeue: Dequeue {
                    me_at: Some(0),
                    skip: None
                },
                ..
            }
        ));
    }

    /// A released record reserved for another head is not taken before a
    /// whole lease; then the head is skipped. The head itself acquires at once.
    #[test]
    fn a_reserved_release_waits_for_its_head_for_one_lease() {
        let reserved = with_queue(released(7), &[third(), me()]);
        let mut w = waiter().with_queue(true);
        w.handle_read(ms(0), Seen::Record(reserved.clone()));
        assert_eq!(poll(&mut w, 0, 1), WaiterAction::Wait { until: ms(30) });
        w.handle_read(ms(999), Seen::Record(reserved.clone()));
        assert_eq!(poll(&mut w, 999, 2), WaiterAction::Wait { until: ms(1000) });
        w.handle_read(ms(1000), Seen::Record(reserved.clone()));
        let skip = sent(poll(&mut w, 1000, 3));
        assert!(matches!(
            skip.kind,
            OpKind::Takeover { dequeue: Dequeue { me_at: Some(1), skip: Some(h) }, .. } if h == third()
        ));
        assert_eq!(
            skip.apply(Some(&reserved)).unwrap().queue,
            Vec::<LeaseId>::new()
        );
        // Another head (the first left): the wait starts again.
        let mut w = waiter().with_queue(true);
        w.handle_read(ms(0), Seen::Record(reserved));
        let next = with_queue(released(7), &[them(), me()]);
        w.handle_read(ms(900), Seen::Record(next));
        w.handle_read(
            ms(1000),
            Seen::Record(with_queue(released(7), &[them(), me()])),
        );
        assert!(matches!(poll(&mut w, 1000, 4), WaiterAction::Wait { .. }));
        // The head acquires at once, naming its place.
        let mut head = waiter().with_queue(true);
        head.handle_read(
            ms(0),
            Seen::Record(with_queue(released(7), &[me(), third()])),
        );
        let op = sent(poll(&mut head, 0, 5));
        assert!(matches!(
            op.kind,
            OpKind::Acquire {
                dequeue: Dequeue {
                    me_at: Some(0),
                    skip: None
                },
                ..
            }
        ));
    }

    /// A waiter that does not register still respects the queue, and an
    /// unregistered queueing waiter finding a reserved release registers.
    #[test]
    fn the_queue_is_respected_with_or_without_registering() {
        let reserved = with_queue(released(7), &[third()]);
        let mut plain = waiter();
        plain.handle_read(ms(0), Seen::Record(reserved.clone()));
        assert!(matches!(poll(&mut plain, 0, 1), WaiterAction::Wait { .. }));
        let mut q = waiter().with_queue(true);
        q.handle_read(ms(0), Seen::Record(reserved.clone()));
        assert!(matches!(poll(&mut q, 0, 2), WaiterAction::Wait { .. }));
        q.handle_read(ms(30), Seen::Record(reserved.clone()));
        assert_eq!(
            sent(poll(&mut q, 30, 2)).kind,
            OpKind::Enqueue { waiter: me() }
        );
        // A free record with an empty queue is taken without registering.
        let mut q = waiter().with_queue(true);
        q.handle_read(ms(0), Seen::Record(released(7)));
        assert!(matches!(
            sent(poll(&mut q, 0, 3)).kind,
            OpKind::Acquire { .. }
        ));
    }

    #[test]
    fn a_waiter_that_gives_up_leaves_from_its_place() {
        let mut w = waiter().with_queue(true);
        assert_eq!(w.leave_op(RecordVersion(1), WallTime(0)), None);
        w.handle_read(
            ms(0),
            Seen::Record(with_queue(held(7, 1000), &[third(), me()])),
        );
        let leave = w.leave_op(RecordVersion(1), WallTime(0)).unwrap();
        assert_eq!(
            leave.kind,
            OpKind::Leave {
                waiter: me(),
                at: 1
            }
        );
    }

    /// An entry left behind by a waiter that died must not keep waiters
    /// that wait less than a lease (or a try) from the key: a release a
    /// lease old by the wall clocks is skipped at once.
    #[test]
    fn a_release_a_lease_old_by_the_wall_clocks_skips_its_head_at_once() {
        let reserved = with_queue(released(7), &[third()]);
        let mut w = waiter();
        w.handle_read(ms(0), Seen::Record(reserved.clone()));
        let fresh = w.poll(ms(0), ms(0), RecordVersion(1), WallTime(999), 0.5);
        assert!(matches!(fresh, WaiterAction::Wait { .. }), "{fresh:?}");
        w.handle_read(ms(1), Seen::Record(reserved.clone()));
        let op = sent(w.poll(ms(1), ms(1), RecordVersion(2), WallTime(1000), 0.5));
        assert!(matches!(
            op.kind,
            OpKind::Takeover { dequeue: Dequeue { me_at: None, skip: Some(h) }, .. } if h == third()
        ));
        // A held record is never judged by the wall clocks.
        let mut w = waiter();
        w.handle_read(ms(0), Seen::Record(held(7, 1000)));
        let action = w.poll(ms(0), ms(0), RecordVersion(3), WallTime(i64::MAX), 0.5);
        assert!(matches!(action, WaiterAction::Wait { .. }), "{action:?}");
    }
}
