//! The conditional writes of PROTOCOL.md ("Operations") and their reference
//! semantics. Every store performs each [`LockOp`] as exactly one conditional write;
//! [`LockOp::apply`] is the executable definition stores are tested against (the
//! memory and file stores call it directly).
//!
//! A grant (acquire or takeover) always names the record it replaces as the
//! acquirer read it — its version and token, or its absence together with the
//! store's token floor — and installs the next token. So a grant can only land
//! on the very version its sender decided on: a delayed duplicate never lands
//! after the key moved on, a damaged record is never rewritten (it cannot be
//! read), and tokens continue above every token the store ever issued.

use super::{FencingToken, HolderInfo, LeaseId, LockKey, LockRecord, RecordVersion, WallTime};
use serde::{Deserialize, Serialize};

/// One conditional write on the record of `key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOp {
    /// The key written.
    pub key: LockKey,
    /// The record version this write installs (random, chosen by the writer).
    pub new_rvn: RecordVersion,
    /// The writer's wall clock when it built the op (informational).
    pub at: WallTime,
    /// What the write does and under which condition.
    pub kind: OpKind,
}

/// The record a grant replaces, as the acquirer read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum GrantFrom {
    /// There is no record. `floor` is the store's token floor (the largest
    /// token of any record ever purged, 0 if none): the grant's token is
    /// `floor + 1`.
    Absent {
        /// The store's token floor as read.
        floor: FencingToken,
    },
    /// The record at version `rvn`, whose token is `token`: the grant's token
    /// is `token + 1`.
    Version {
        /// The version read.
        rvn: RecordVersion,
        /// Its token.
        token: FencingToken,
    },
}

impl GrantFrom {
    /// What a grant replacing `current` names (`floor` is used when absent).
    pub fn of(current: Option<&LockRecord>, floor: FencingToken) -> GrantFrom {
        match current {
            None => GrantFrom::Absent { floor },
            Some(r) => GrantFrom::Version {
                rvn: r.rvn,
                token: r.token,
            },
        }
    }

    /// The token the grant installs, or `None` when the key has used up every
    /// token (u64::MAX grants): it can never be granted again.
    pub fn next_token(&self) -> Option<FencingToken> {
        match self {
            GrantFrom::Absent { floor } => floor.next(),
            GrantFrom::Version { token, .. } => token.next(),
        }
    }

    /// True if `current` is the record this grant names.
    fn matches(&self, current: Option<&LockRecord>) -> bool {
        match (self, current) {
            (GrantFrom::Absent { .. }, None) => true,
            (GrantFrom::Version { rvn, token }, Some(r)) => r.rvn == *rvn && r.token == *token,
            _ => false,
        }
    }
}

/// What a grant does to the record's queue (see PROTOCOL.md, "Hand-off
/// queue"), as the acquirer read it. Each named entry is a condition (the
/// queue has it at that place) and is removed by the grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Dequeue {
    /// The grantee's own place in the queue, if it is registered. An acquire
    /// of a released record must name place 0 — unless the queue is empty or
    /// it skips the head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub me_at: Option<u32>,
    /// The head a takeover of a released record skips: the waiter the record
    /// was reserved for, which did not take it within a whole skip wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip: Option<LeaseId>,
}

impl Dequeue {
    /// True when the grant leaves the queue as it is.
    pub fn is_none(&self) -> bool {
        self.me_at.is_none() && self.skip.is_none()
    }

    /// True if `queue` is as the grant read it: the grantee at `me_at` (or
    /// not registered at all), the skipped head first; and an acquire of a
    /// released record (`acquire`) takes its turn: the queue is empty or the
    /// grantee is its head.
    fn holds(&self, queue: &[LeaseId], owner: LeaseId, acquire: bool) -> bool {
        let at = |i: u32, who: LeaseId| {
            usize::try_from(i)
                .ok()
                .and_then(|i| queue.get(i))
                .is_some_and(|w| *w == who)
        };
        let me = match self.me_at {
            Some(i) => at(i, owner),
            None => !queue.contains(&owner),
        };
        let skip = self.skip.is_none_or(|h| h != owner && at(0, h));
        let turn = !acquire || queue.is_empty() || self.me_at == Some(0);
        me && skip && turn
    }

    /// `queue` without the entries this grant removes (its condition held).
    fn apply(&self, queue: &[LeaseId]) -> Vec<LeaseId> {
        let mine = self.me_at.and_then(|i| usize::try_from(i).ok());
        queue
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != mine && !(*i == 0 && self.skip.is_some()))
            .map(|(_, w)| *w)
            .collect()
    }
}

/// The operation and its condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpKind {
    /// Grant a free key: the record is absent, or released at the version read.
    Acquire {
        /// The record replaced (absent, or a released version).
        from: GrantFrom,
        /// The new lease.
        owner: LeaseId,
        /// Lease duration promised, in milliseconds.
        lease_ms: u64,
        /// Who asks.
        holder: HolderInfo,
        /// The least token to install: the grant installs the larger of this
        /// and its next token. A quorum store sets it so that every member
        /// installs the same token (see PROTOCOL.md, "Quorum lock");
        /// [`FencingToken::NONE`] otherwise.
        #[serde(default, skip_serializing_if = "FencingToken::is_none")]
        at_least: FencingToken,
        /// What the grant does to the queue.
        #[serde(default, skip_serializing_if = "Dequeue::is_none")]
        dequeue: Dequeue,
    },
    /// Grant a held key whose version the waiter has seen unchanged for a
    /// whole takeover wait: the record is still at that version.
    Takeover {
        /// The version the waiter observed for a whole lease.
        observed: RecordVersion,
        /// That version's token.
        token: FencingToken,
        /// The new lease.
        owner: LeaseId,
        /// Lease duration promised, in milliseconds.
        lease_ms: u64,
        /// Who asks.
        holder: HolderInfo,
        /// The least token to install (as for an acquire).
        #[serde(default, skip_serializing_if = "FencingToken::is_none")]
        at_least: FencingToken,
        /// What the grant does to the queue.
        #[serde(default, skip_serializing_if = "Dequeue::is_none")]
        dequeue: Dequeue,
    },
    /// Renew: only the current owner at its current version.
    Heartbeat {
        /// The holder's lease.
        owner: LeaseId,
        /// The version the holder last wrote.
        current: RecordVersion,
    },
    /// Raise the holder's token to `token` (above a state store's fence
    /// found at seal time, after a record was deleted behind the protocol's
    /// back): only the current owner at its current version, and only
    /// upwards. Renews the lease like a heartbeat.
    Rebase {
        /// The holder's lease.
        owner: LeaseId,
        /// The version the holder last wrote.
        current: RecordVersion,
        /// The new token (larger than the record's).
        token: FencingToken,
    },
    /// Release: only the current owner at its current version. Keeps the token.
    Release {
        /// The holder's lease.
        owner: LeaseId,
        /// The version the holder last wrote.
        current: RecordVersion,
    },
    /// Administrative release, conditional on the version the operator saw.
    ForceUnlock {
        /// The version the operator was shown.
        observed: RecordVersion,
        /// Who forces it (audit).
        by: String,
    },
    /// Register a waiter at the end of the record's queue: the record
    /// exists, the waiter is not registered and the queue has room. Changes
    /// nothing else, not even the version.
    Enqueue {
        /// The lease id the waiter will hold as.
        waiter: LeaseId,
    },
    /// Unregister a waiter that gives up: the queue has it at place `at`.
    /// Changes nothing else, not even the version.
    Leave {
        /// The waiter.
        waiter: LeaseId,
        /// Its place in the queue, as last read.
        at: u32,
    },
}

impl OpKind {
    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            OpKind::Acquire { .. } => "acquire",
            OpKind::Takeover { .. } => "takeover",
            OpKind::Heartbeat { .. } => "heartbeat",
            OpKind::Rebase { .. } => "rebase",
            OpKind::Release { .. } => "release",
            OpKind::ForceUnlock { .. } => "force_unlock",
            OpKind::Enqueue { .. } => "enqueue",
            OpKind::Leave { .. } => "leave",
        }
    }

    /// True for the queue's own writes (enqueue, leave): they keep the
    /// record's version, token, owner and state.
    pub fn is_queue_write(&self) -> bool {
        matches!(self, OpKind::Enqueue { .. } | OpKind::Leave { .. })
    }
}

/// Why [`LockOp::apply`] did not write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// The condition does not hold for the current record.
    ConditionFailed,
    /// The key has used up every fencing token (u64::MAX grants): it can never be
    /// granted again. Reported like a failed condition by stores.
    TokensExhausted,
}

impl LockOp {
    /// True if this op's condition holds on `current` (`None` = no record).
    pub fn condition_holds(&self, current: Option<&LockRecord>) -> bool {
        match (&self.kind, current) {
            (
                OpKind::Acquire {
                    from,
                    owner,
                    dequeue,
                    ..
                },
                _,
            ) => {
                from.matches(current)
                    && current.is_none_or(|r| r.released)
                    && dequeue.holds(current.map_or(&[][..], |r| &r.queue), *owner, true)
            }
            (
                OpKind::Takeover {
                    observed,
                    token,
                    owner,
                    dequeue,
                    ..
                },
                Some(r),
            ) => {
                r.rvn == *observed
                    && r.token == *token
                    && dequeue.holds(&r.queue, *owner, false)
                    // Only a released record is reserved for a head, and
                    // taking one out of turn must name the head it skips.
                    && (dequeue.skip.is_none() || r.released)
                    && (!r.released
                        || r.queue.is_empty()
                        || dequeue.skip.is_some()
                        || dequeue.me_at == Some(0))
            }
            (OpKind::Enqueue { waiter }, Some(r)) => {
                !r.queue.contains(waiter) && r.queue.len() < LockRecord::MAX_QUEUE
            }
            (OpKind::Leave { waiter, at }, Some(r)) => usize::try_from(*at)
                .ok()
                .and_then(|i| r.queue.get(i))
                .is_some_and(|w| w == waiter),
            (OpKind::Heartbeat { owner, current: v }, Some(r))
            | (OpKind::Release { owner, current: v }, Some(r)) => {
                !r.released && r.owner == *owner && r.rvn == *v
            }
            (
                OpKind::Rebase {
                    owner,
                    current: v,
                    token,
                },
                Some(r),
            ) => !r.released && r.owner == *owner && r.rvn == *v && *token > r.token,
            (OpKind::ForceUnlock { observed, .. }, Some(r)) => r.rvn == *observed,
            (_, None) => false,
        }
    }

    /// The token a grant installs (`None` for other ops, and for a grant on a
    /// key whose tokens are used up).
    pub fn granted_token(&self) -> Option<FencingToken> {
        match &self.kind {
            OpKind::Acquire { from, at_least, .. } => from.next_token().map(|t| t.max(*at_least)),
            OpKind::Takeover {
                token, at_least, ..
            } => token.next().map(|t| t.max(*at_least)),
            _ => None,
        }
    }

    /// The record after this write, or why it must not be written.
    /// This is the reference semantics every store implements.
    pub fn apply(&self, current: Option<&LockRecord>) -> Result<LockRecord, Rejected> {
        if let Some(r) = current {
            if r.key != self.key {
                return Err(Rejected::ConditionFailed);
            }
        }
        if !self.condition_holds(current) {
            return Err(Rejected::ConditionFailed);
        }
        match (&self.kind, current) {
            (
                OpKind::Acquire {
                    owner,
                    lease_ms,
                    holder,
                    dequeue,
                    ..
                }
                | OpKind::Takeover {
                    owner,
                    lease_ms,
                    holder,
                    dequeue,
                    ..
                },
                _,
            ) => {
                let token = self.granted_token().ok_or(Rejected::TokensExhausted)?;
                let queue = current.map_or_else(Vec::new, |r| dequeue.apply(&r.queue));
                Ok(LockRecord {
                    key: self.key.clone(),
                    owner: *owner,
                    token,
                    rvn: self.new_rvn,
                    lease_ms: *lease_ms,
                    released: false,
                    holder: holder.clone(),
                    acquired_at: self.at,
                    heartbeat_at: self.at,
                    forced_by: None,
                    queue,
                })
            }
            (OpKind::Heartbeat { .. }, Some(r)) => Ok(LockRecord {
                rvn: self.new_rvn,
                heartbeat_at: self.at,
                ..r.clone()
            }),
            (OpKind::Rebase { token, .. }, Some(r)) => Ok(LockRecord {
                rvn: self.new_rvn,
                token: *token,
                heartbeat_at: self.at,
                ..r.clone()
            }),
            (OpKind::Release { .. }, Some(r)) => Ok(LockRecord {
                rvn: self.new_rvn,
                released: true,
                heartbeat_at: self.at,
                ..r.clone()
            }),
            (OpKind::ForceUnlock { by, .. }, Some(r)) => Ok(LockRecord {
                rvn: self.new_rvn,
                released: true,
                heartbeat_at: self.at,
                forced_by: Some(by.clone()),
                ..r.clone()
            }),
            (OpKind::Enqueue { waiter }, Some(r)) => {
                let mut next = r.clone();
                next.queue.push(*waiter);
                Ok(next)
            }
            (OpKind::Leave { at, .. }, Some(r)) => {
                let mut next = r.clone();
                if let Ok(i) = usize::try_from(*at) {
                    if i < next.queue.len() {
                        next.queue.remove(i);
                    }
                }
                Ok(next)
            }
            (_, None) => Err(Rejected::ConditionFailed),
        }
    }

    /// True if `current` is this very write (its response was lost, but it landed).
    /// For the queue's writes, which keep the version: the waiter is
    /// registered (enqueue) or not (leave).
    pub fn is_own_write(&self, current: &LockRecord) -> bool {
        if current.key != self.key {
            return false;
        }
        match &self.kind {
            OpKind::Enqueue { waiter } => current.queue.contains(waiter),
            OpKind::Leave { waiter, .. } => !current.queue.contains(waiter),
            _ => current.rvn == self.new_rvn,
        }
    }

    /// True for operations that grant a lease (acquire, takeover).
    pub fn is_grant(&self) -> bool {
        matches!(self.kind, OpKind::Acquire { .. } | OpKind::Takeover { .. })
    }
}

/// The result of sending one [`LockOp`], as the core needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The write landed; this is the record it wrote.
    Applied(LockRecord),
    /// The condition failed; this is the current record (`None`: no record).
    Conflict(Option<LockRecord>),
    /// No answer (timeout, connection lost, 5xx): the write may or may not have
    /// landed. The core resends the same op, which recognises its own write.
    Unknown,
}

impl Outcome {
    /// Resolves a lost response: a conflict whose current record is `op`'s own
    /// write means `op` landed.
    pub fn resolve(self, op: &LockOp) -> Outcome {
        match self {
            Outcome::Conflict(Some(r)) if op.is_own_write(&r) => Outcome::Applied(r),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> LockKey {
        LockKey::new("k").unwrap()
    }

    fn rec(owner: LeaseId, token: u64, rvn: u128, released: bool) -> LockRecord {
        LockRecord {
            key: key(),
            owner,
            token: FencingToken(token),
            rvn: RecordVersion(rvn),
            lease_ms: 1000,
            released,
            holder: HolderInfo::named("h"),
            acquired_at: WallTime(0),
            heartbeat_at: WallTime(0),
            forced_by: None,
            queue: Vec::new(),
        }
    }

    fn op(kind: OpKind, new_rvn: u128) -> LockOp {
        LockOp {
            key: key(),
            new_rvn: RecordVersion(new_rvn),
            at: WallTime(5),
            kind,
        }
    }

    fn acquire_from(me: LeaseId, from: GrantFrom) -> OpKind {
        OpKind::Acquire {
            from,
            owner: me,
            lease_ms: 1000,
            holder: HolderInfo::named("me"),
            at_least: FencingToken::NONE,
            dequeue: Default::default(),
        }
    }

    fn version(rvn: u128, token: u64) -> GrantFrom {
        GrantFrom::Version {
            rvn: RecordVersion(rvn),
            token: FencingToken(token),
        }
    }

    #[test]
    fn condition_table() {
        let me = LeaseId(uuid::Uuid::from_u128(1));
        let other = LeaseId(uuid::Uuid::from_u128(2));
        let absent = acquire_from(
            me,
            GrantFrom::Absent {
                floor: FencingToken(0),
            },
        );
        let acquire = |rvn, token| acquire_from(me, version(rvn, token));
        let takeover = |v, token| OpKind::Takeover {
            observed: RecordVersion(v),
            token: FencingToken(token),
            owner: me,
            lease_ms: 1000,
            holder: HolderInfo::named("me"),
            at_least: FencingToken::NONE,
            dequeue: Default::default(),
        };
        let hb = |v| OpKind::Heartbeat {
            owner: me,
            current: RecordVersion(v),
        };
        let rel = |v| OpKind::Release {
            owner: me,
            current: RecordVersion(v),
        };
        let force = |v| OpKind::ForceUnlock {
            observed: RecordVersion(v),
            by: "admin".into(),
        };
        let held_by_other = rec(other, 4, 7, false);
        let held_by_me = rec(me, 4, 7, false);
        let released = rec(other, 4, 7, true);
        let released_mine = rec(me, 4, 7, true);
        // (op, current, condition holds?)
        let table: Vec<(OpKind, Option<&LockRecord>, bool)> = vec![
            (absent.clone(), None, true),
            (absent.clone(), Some(&released), false),
            (absent.clone(), Some(&held_by_other), false),
            (acquire(7, 4), None, false),
            (acquire(7, 4), Some(&released), true),
            (acquire(8, 4), Some(&released), false),
            (acquire(7, 3), Some(&released), false),
            (acquire(7, 4), Some(&held_by_other), false),
            (acquire(7, 4), Some(&held_by_me), false),
            (takeover(7, 4), Some(&held_by_other), true),
            (takeover(8, 4), Some(&held_by_other), false),
            (takeover(7, 5), Some(&held_by_other), false),
            (takeover(7, 4), Some(&released), true),
            (takeover(7, 4), None, false),
            (hb(7), Some(&held_by_me), true),
            (hb(8), Some(&held_by_me), false),
            (hb(7), Some(&held_by_other), false),
            (hb(7), Some(&released_mine), false),
            (hb(7), None, false),
            (rel(7), Some(&held_by_me), true),
            (rel(7), Some(&held_by_other), false),
            (rel(7), Some(&released_mine), false),
            (rel(6), Some(&held_by_me), false),
            (force(7), Some(&held_by_other), true),
            (force(6), Some(&held_by_other), false),
            (force(7), None, false),
        ];
        for (kind, current, want) in table {
            let o = op(kind.clone(), 99);
            assert_eq!(o.condition_holds(current), want, "{kind:?} on {current:?}");
            assert_eq!(o.apply(current).is_ok(), want, "{kind:?} on {current:?}");
        }
    }

    #[test]
    fn grants_increment_tokens_and_release_keeps_them() {
        let me = LeaseId(uuid::Uuid::from_u128(1));
        let first = op(
            acquire_from(
                me,
                GrantFrom::Absent {
                    floor: FencingToken(0),
                },
            ),
            10,
        )
        .apply(None)
        .unwrap();
        assert_eq!(first.token, FencingToken(1));
        assert_eq!(first.rvn, RecordVersion(10));
        assert!(!first.released);
        let released = op(
            OpKind::Release {
                owner: me,
                current: RecordVersion(10),
            },
            11,
        )
        .apply(Some(&first))
        .unwrap();
        assert!(released.released);
        assert_eq!(released.token, FencingToken(1));
        let second = op(
            acquire_from(me, GrantFrom::of(Some(&released), FencingToken(0))),
            12,
        )
        .apply(Some(&released))
        .unwrap();
        assert_eq!(second.token, FencingToken(2));
        let hb = op(
            OpKind::Heartbeat {
                owner: me,
                current: RecordVersion(12),
            },
            13,
        )
        .apply(Some(&second))
        .unwrap();
        assert_eq!(
            (hb.token, hb.rvn, hb.heartbeat_at),
            (FencingToken(2), RecordVersion(13), WallTime(5))
        );
        let forced = op(
            OpKind::ForceUnlock {
                observed: RecordVersion(13),
                by: "ops".into(),
            },
            14,
        )
        .apply(Some(&hb))
        .unwrap();
        assert!(forced.released);
        assert_eq!(forced.forced_by.as_deref(), Some("ops"));
        assert_eq!(forced.token, FencingToken(2));
    }

    #[test]
    fn a_rebase_only_raises_the_holders_token() {
        let me = LeaseId(uuid::Uuid::from_u128(1));
        let other = LeaseId(uuid::Uuid::from_u128(2));
        let rebase = |owner, v, t| {
            op(
                OpKind::Rebase {
                    owner,
                    current: RecordVersion(v),
                    token: FencingToken(t),
                },
                9,
            )
        };
        let held = rec(me, 4, 7, false);
        let raised = rebase(me, 7, 12).apply(Some(&held)).unwrap();
        assert_eq!(
            (raised.token, raised.rvn, raised.owner, raised.released),
            (FencingToken(12), RecordVersion(9), me, false)
        );
        for (o, why) in [
            (rebase(me, 7, 4), "not upwards"),
            (rebase(me, 7, 3), "downwards"),
            (rebase(me, 8, 12), "stale version"),
            (rebase(other, 7, 12), "not the owner"),
        ] {
            assert_eq!(
                o.apply(Some(&held)),
                Err(Rejected::ConditionFailed),
                "{why}"
            );
        }
        assert!(rebase(me, 7, 12).apply(Some(&rec(me, 4, 7, true))).is_err());
        assert!(rebase(me, 7, 12).apply(None).is_err());
    }

    #[test]
    fn a_grant_on_an_absent_record_continues_above_the_floor() {
        let me = LeaseId(uuid::Uuid::from_u128(1));
        let granted = op(
            acquire_from(
                me,
                GrantFrom::Absent {
                    floor: FencingToken(41),
                },
            ),
            1,
        )
        .apply(None)
        .unwrap();
        assert_eq!(granted.token, FencingToken(42));
    }

    #[test]
    fn exhausted_tokens_are_rejected() {
        let me = LeaseId(uuid::Uuid::from_u128(1));
        let last = rec(me, u64::MAX, 1, true);
        let acquire = op(
            acquire_from(me, GrantFrom::of(Some(&last), FencingToken(0))),
            2,
        );
        assert_eq!(acquire.granted_token(), None);
        assert_eq!(acquire.apply(Some(&last)), Err(Rejected::TokensExhausted));
        let floor_at_max = op(
            acquire_from(
                me,
                GrantFrom::Absent {
                    floor: FencingToken(u64::MAX),
                },
            ),
            3,
        );
        assert_eq!(floor_at_max.apply(None), Err(Rejected::TokensExhausted));
    }

    /// A grant decided on one version can never land on a later one: a
    /// delayed duplicate of an acquire arriving after the key moved on fails.
    #[test]
    fn a_delayed_duplicate_grant_never_lands_on_a_later_version() {
        let me = LeaseId(uuid::Uuid::from_u128(1));
        let released = rec(me, 4, 7, true);
        let acquire = op(
            acquire_from(me, GrantFrom::of(Some(&released), FencingToken(0))),
            20,
        );
        let granted = acquire.apply(Some(&released)).unwrap();
        let released_again = op(
            OpKind::Release {
                owner: me,
                current: RecordVersion(20),
            },
            21,
        )
        .apply(Some(&granted))
        .unwrap();
        assert_eq!(
            acquire.apply(Some(&released_again)),
            Err(Rejected::ConditionFailed)
        );
    }

    #[test]
    fn wrong_key_is_rejected_and_lost_responses_resolve() {
        let me = LeaseId(uuid::Uuid::from_u128(1));
        let mut other_key = rec(me, 1, 1, true);
        other_key.key = LockKey::new("other").unwrap();
        let acquire = op(acquire_from(me, version(1, 1)), 2);
        assert_eq!(
            acquire.apply(Some(&other_key)),
            Err(Rejected::ConditionFailed)
        );
        let mine = rec(me, 1, 1, true);
        let landed = acquire.apply(Some(&mine)).unwrap();
        assert_eq!(
            Outcome::Conflict(Some(landed.clone())).resolve(&acquire),
            Outcome::Applied(landed.clone())
        );
        let someone_else = rec(LeaseId(uuid::Uuid::from_u128(3)), 2, 3, false);
        assert_eq!(
            Outcome::Conflict(Some(someone_else.clone())).resolve(&acquire),
            Outcome::Conflict(Some(someone_else))
        );
        assert_eq!(Outcome::Unknown.resolve(&acquire), Outcome::Unknown);
    }

    fn queued(mut r: LockRecord, queue: &[u128]) -> LockRecord {
        r.queue = queue
            .iter()
            .map(|w| LeaseId(uuid::Uuid::from_u128(*w)))
            .collect();
        r
    }

    fn id(n: u128) -> LeaseId {
        LeaseId(uuid::Uuid::from_u128(n))
    }

    fn ids(r: &LockRecord) -> Vec<u128> {
        r.queue.iter().map(|w| w.0.as_u128()).collect()
    }

    #[test]
    fn the_queue_writes_keep_the_lease_and_recognise_themselves() {
        let held = queued(rec(id(1), 4, 7, false), &[2]);
        let enqueue = op(OpKind::Enqueue { waiter: id(3) }, 99);
        let after = enqueue.apply(Some(&held)).unwrap();
        assert_eq!(ids(&after), vec![2, 3]);
        assert_eq!(
            (after.rvn, after.token, after.owner, after.released),
            (held.rvn, held.token, held.owner, held.released),
            "an enqueue changes nothing but the queue"
        );
        assert!(enqueue.is_own_write(&after) && !enqueue.is_own_write(&held));
        assert_eq!(enqueue.apply(Some(&after)), Err(Rejected::ConditionFailed));
        assert_eq!(enqueue.apply(None), Err(Rejected::ConditionFailed));
        let full: Vec<u128> = (10..10 + LockRecord::MAX_QUEUE as u128).collect();
        assert!(enqueue.apply(Some(&queued(held.clone(), &full))).is_err());

        let leave = |at| op(OpKind::Leave { waiter: id(3), at }, 98);
        assert!(leave(0).apply(Some(&after)).is_err(), "not at that place");
        let left = leave(1).apply(Some(&after)).unwrap();
        assert_eq!(ids(&left), vec![2]);
        assert_eq!(left.rvn, held.rvn);
        assert!(leave(1).is_own_write(&left));
    }

    #[test]
    fn a_released_record_goes_to_the_queues_head_only() {
        let released = queued(rec(id(1), 4, 7, true), &[2, 3]);
        let acquire = |who: u128, me_at: Option<u32>| {
            op(
                OpKind::Acquire {
                    from: version(7, 4),
                    owner: id(who),
                    lease_ms: 1000,
                    holder: HolderInfo::named("w"),
                    at_least: FencingToken::NONE,
                    dequeue: Dequeue { me_at, skip: None },
                },
                50,
            )
        };
        // The head takes it, and leaves the queue.
        let granted = acquire(2, Some(0)).apply(Some(&released)).unwrap();
        assert_eq!((granted.owner, ids(&granted)), (id(2), vec![3]));
        // Nobody else may: not the second, not the releaser, not a newcomer.
        for (who, me_at) in [(3, Some(1)), (3, None), (1, None), (9, None), (2, None)] {
            assert_eq!(
                acquire(who, me_at).apply(Some(&released)),
                Err(Rejected::ConditionFailed),
                "{who} at {me_at:?}"
            );
        }
        // An empty queue is anyone's.
        assert!(acquire(9, None)
            .apply(Some(&rec(id(1), 4, 7, true)))
            .is_ok());
    }

    #[test]
    fn takeovers_dequeue_the_grantee_and_skip_only_a_released_head() {
        let takeover = |who: u128, me_at: Option<u32>, skip: Option<u128>| {
            op(
                OpKind::Takeover {
                    observed: RecordVersion(7),
                    token: FencingToken(4),
                    owner: id(who),
                    lease_ms: 1000,
                    holder: HolderInfo::named("w"),
                    at_least: FencingToken::NONE,
                    dequeue: Dequeue {
                        me_at,
                        skip: skip.map(id),
                    },
                },
                60,
            )
        };
        let held = queued(rec(id(1), 4, 7, false), &[2, 3, 4]);
        let t = takeover(3, Some(1), None).apply(Some(&held)).unwrap();
        assert_eq!(
            (t.owner, t.token, ids(&t)),
            (id(3), FencingToken(5), vec![2, 4])
        );
        assert!(
            takeover(3, Some(2), None).apply(Some(&held)).is_err(),
            "wrong place"
        );
        assert!(
            takeover(3, None, None).apply(Some(&held)).is_err(),
            "registered, unnamed"
        );
        assert!(
            takeover(3, Some(1), Some(2)).apply(Some(&held)).is_err(),
            "held: no skip"
        );

        let released = queued(rec(id(1), 4, 7, true), &[2, 3, 4]);
        let s = takeover(4, Some(2), Some(2))
            .apply(Some(&released))
            .unwrap();
        assert_eq!((s.owner, ids(&s)), (id(4), vec![3]));
        let s = takeover(9, None, Some(2)).apply(Some(&released)).unwrap();
        assert_eq!(ids(&s), vec![3, 4]);
        assert!(
            takeover(4, Some(2), Some(3))
                .apply(Some(&released))
                .is_err(),
            "not the head"
        );
        assert!(
            takeover(2, Some(0), Some(2))
                .apply(Some(&released))
                .is_err(),
            "skips itself"
        );
    }
}
