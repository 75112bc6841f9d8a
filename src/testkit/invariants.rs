//! The safety invariants of PROTOCOL.md as checkers over recorded histories,
//! named exactly as in `specs/`: [`check_mutual_exclusion`],
//! [`check_token_monotonic`], [`check_fencing_monotonic`],
//! [`check_no_lost_update`], [`check_owner_only_release`] and
//! [`check_fifo_grant`]. Property tests record what happened and call these;
//! each returns the first violation.

use crate::protocol::{FencingToken, LockKey, LockOp, LockRecord, OpKind};
use crate::state::StateVersion;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// A broken invariant: its name (as in PROTOCOL.md) and what broke it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's name, e.g. `MutualExclusion`.
    pub invariant: &'static str,
    /// What happened.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} violated: {}", self.invariant, self.detail)
    }
}

/// A point in true time. `seq` orders events a recorder saw at the same
/// instant (on a virtual clock, a release and the next grant can share one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct TruePoint {
    /// True (real or simulated) time.
    pub at: Duration,
    /// Order among events at the same `at`.
    pub seq: u64,
}

/// A span of true time during which `client` believed it held `key`
/// (closed interval).
///
/// A lease the operator force-unlocked is outside `MutualExclusion` from
/// that moment (the operator overrode the holder; fencing still protects the
/// state): recorders end its interval at the force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeliefInterval {
    /// Who believed.
    pub client: String,
    /// Which key.
    pub key: LockKey,
    /// First instant of belief.
    pub start: TruePoint,
    /// Last instant of belief.
    pub end: TruePoint,
    /// The token of the grant.
    pub token: FencingToken,
}

/// `MutualExclusion`: no two clients believe they hold the same key at the
/// same instant.
pub fn check_mutual_exclusion(intervals: &[BeliefInterval]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&LockKey, Vec<&BeliefInterval>> = BTreeMap::new();
    for i in intervals {
        by_key.entry(&i.key).or_default().push(i);
    }
    for (key, mut list) in by_key {
        list.sort_by_key(|i| (i.start, i.end));
        for pair in list.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if b.start <= a.end && a.client != b.client {
                return Err(Violation {
                    invariant: "MutualExclusion",
                    detail: format!(
                        "on {key}: {} (token {}) believed during {:?}..={:?} and {} (token {}) during {:?}..={:?}",
                        a.client, a.token, a.start, a.end, b.client, b.token, b.start, b.end
                    ),
                });
            }
        }
    }
    Ok(())
}

/// `TokenMonotonic`: the tokens granted for each key, in grant order, strictly
/// increase.
pub fn check_token_monotonic(grants: &[(LockKey, FencingToken)]) -> Result<(), Violation> {
    let mut last: BTreeMap<&LockKey, FencingToken> = BTreeMap::new();
    for (key, token) in grants {
        if let Some(prev) = last.get(key) {
            if token <= prev {
                return Err(Violation {
                    invariant: "TokenMonotonic",
                    detail: format!("on {key}: token {token} granted after token {prev}"),
                });
            }
        }
        last.insert(key, *token);
    }
    Ok(())
}

/// One state write the state store accepted, in the order it accepted them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedWrite {
    /// The key.
    pub key: LockKey,
    /// The writer's token.
    pub token: FencingToken,
    /// The version the writer expected (its precondition).
    pub expected: Option<StateVersion>,
    /// The version it wrote.
    pub written: StateVersion,
}

/// `FencingMonotonic`: accepted writes of a key have non-decreasing tokens.
pub fn check_fencing_monotonic(accepted: &[AcceptedWrite]) -> Result<(), Violation> {
    let mut last: BTreeMap<&LockKey, FencingToken> = BTreeMap::new();
    for w in accepted {
        if let Some(prev) = last.get(&w.key) {
            if w.token < *prev {
                return Err(Violation {
                    invariant: "FencingMonotonic",
                    detail: format!(
                        "on {}: a write with token {} was accepted after one with token {}",
                        w.key, w.token, prev
                    ),
                });
            }
        }
        last.insert(&w.key, w.token);
    }
    Ok(())
}

/// `NoLostUpdate`: every accepted write's precondition is the version written
/// by the previously accepted write of that key (none for the first).
pub fn check_no_lost_update(accepted: &[AcceptedWrite]) -> Result<(), Violation> {
    let mut last: BTreeMap<&LockKey, &StateVersion> = BTreeMap::new();
    for w in accepted {
        let prev = last.get(&w.key).copied();
        if w.expected.as_ref() != prev {
            return Err(Violation {
                invariant: "NoLostUpdate",
                detail: format!(
                    "on {}: a write expecting {:?} was accepted when the last accepted write was {:?}",
                    w.key, w.expected, prev
                ),
            });
        }
        last.insert(&w.key, &w.written);
    }
    Ok(())
}

/// `OwnerOnlyRelease`: each applied heartbeat/release came from the record's
/// owner at its current version, and each applied force-unlock named the
/// version it replaced. `applied` holds (record before, op) pairs in apply order.
pub fn check_owner_only_release(applied: &[(Option<LockRecord>, LockOp)]) -> Result<(), Violation> {
    for (before, op) in applied {
        let ok = match (&op.kind, before) {
            (OpKind::Heartbeat { owner, current }, Some(r))
            | (OpKind::Release { owner, current }, Some(r))
            | (OpKind::Rebase { owner, current, .. }, Some(r)) => {
                r.owner == *owner && r.rvn == *current && !r.released
            }
            (OpKind::ForceUnlock { observed, .. }, Some(r)) => r.rvn == *observed,
            (
                OpKind::Heartbeat { .. }
                | OpKind::Rebase { .. }
                | OpKind::Release { .. }
                | OpKind::ForceUnlock { .. },
                None,
            ) => false,
            (OpKind::Acquire { .. } | OpKind::Takeover { .. }, _) => true,
            // The queue's writes release nothing (they keep the lease).
            (OpKind::Enqueue { .. } | OpKind::Leave { .. }, _) => true,
        };
        if !ok {
            return Err(Violation {
                invariant: "OwnerOnlyRelease",
                detail: format!(
                    "{} on {} was applied to {:?}",
                    op.kind.name(),
                    op.key,
                    before
                ),
            });
        }
    }
    Ok(())
}

/// The rule [`check_fifo_grant`] checks, for one grant: `grantee` is the
/// head of `queue` (the hand-off queue of the record the grant replaced,
/// first registered first), or `queue` is empty. Generic over the id, so
/// that a recorder that keeps lease ids in another form (a simulator's
/// integers) applies the very same rule.
pub fn granted_in_turn<Id: PartialEq>(queue: &[Id], grantee: &Id) -> bool {
    queue.first().is_none_or(|head| head == grantee)
}

/// `FifoGrant`: a registered waiter is granted before any waiter registered
/// after it. Store-side form: every applied grant (acquire or takeover) went
/// to the head of the queue of the record it replaced, or that queue was
/// empty. `applied` holds (record before, op) pairs in apply order, as for
/// [`check_owner_only_release`].
///
/// It must hold in runs without faults. Under faults, grants out of turn are
/// part of the protocol: a takeover of a lease that ran out removes its
/// grantee's entry wherever it stands, and a head that leaves a released
/// record untaken for a whole lease is skipped. Check those runs with the
/// other invariants only.
pub fn check_fifo_grant(applied: &[(Option<LockRecord>, LockOp)]) -> Result<(), Violation> {
    for (before, op) in applied {
        let grantee = match &op.kind {
            OpKind::Acquire { owner, .. } | OpKind::Takeover { owner, .. } => owner,
            _ => continue,
        };
        let queue = before.as_ref().map_or(&[][..], |r| &r.queue[..]);
        if let Some(head) = queue.first().filter(|_| !granted_in_turn(queue, grantee)) {
            let place = queue
                .iter()
                .position(|w| w == grantee)
                .map_or_else(|| "not registered".to_string(), |i| format!("at place {i}"));
            return Err(Violation {
                invariant: "FifoGrant",
                detail: format!(
                    "{} of {} was applied for {grantee} ({place}) while {head} headed the queue {:?}",
                    op.kind.name(),
                    op.key,
                    queue.iter().map(ToString::to_string).collect::<Vec<_>>()
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Dequeue, GrantFrom, HolderInfo, LeaseId, RecordVersion, WallTime};

    fn key() -> LockKey {
        LockKey::new("k").unwrap()
    }
    fn belief(client: &str, start: u64, end: u64) -> BeliefInterval {
        let point = |ms| TruePoint {
            at: Duration::from_millis(ms),
            seq: 0,
        };
        BeliefInterval {
            client: client.into(),
            key: key(),
            start: point(start),
            end: point(end),
            token: FencingToken(1),
        }
    }
    fn write(token: u64, expected: Option<&str>, written: &str) -> AcceptedWrite {
        AcceptedWrite {
            key: key(),
            token: FencingToken(token),
            expected: expected.map(|s| StateVersion(s.into())),
            written: StateVersion(written.into()),
        }
    }

    #[test]
    fn each_checker_can_fail_and_pass() {
        assert!(check_mutual_exclusion(&[belief("a", 0, 10), belief("b", 11, 20)]).is_ok());
        assert_eq!(
            check_mutual_exclusion(&[belief("a", 0, 10), belief("b", 10, 20)])
                .unwrap_err()
                .invariant,
            "MutualExclusion"
        );
        // Same instant, ordered by the recorder: no overlap.
        let mut later = belief("b", 10, 20);
        later.start.seq = 1;
        assert!(check_mutual_exclusion(&[belief("a", 0, 10), later]).is_ok());
        assert!(
            check_token_monotonic(&[(key(), FencingToken(1)), (key(), FencingToken(2))]).is_ok()
        );
        assert!(
            check_token_monotonic(&[(key(), FencingToken(2)), (key(), FencingToken(2))]).is_err()
        );
        assert!(
            check_fencing_monotonic(&[write(1, None, "v1"), write(1, Some("v1"), "v2")]).is_ok()
        );
        assert!(
            check_fencing_monotonic(&[write(2, None, "v1"), write(1, Some("v1"), "v2")]).is_err()
        );
        assert!(check_no_lost_update(&[write(1, None, "v1"), write(2, Some("v1"), "v2")]).is_ok());
        assert!(check_no_lost_update(&[write(1, None, "v1"), write(2, None, "v2")]).is_err());

        let me = LeaseId(uuid::Uuid::from_u128(1));
        let rec = LockRecord {
            key: key(),
            owner: me,
            token: FencingToken(1),
            rvn: RecordVersion(5),
            lease_ms: 1000,
            released: false,
            holder: HolderInfo::named("me"),
            acquired_at: WallTime(0),
            heartbeat_at: WallTime(0),
            forced_by: None,
            queue: Vec::new(),
        };
        let release = |owner, current| LockOp {
            key: key(),
            new_rvn: RecordVersion(6),
            at: WallTime(0),
            kind: OpKind::Release {
                owner,
                current: RecordVersion(current),
            },
        };
        assert!(check_owner_only_release(&[(Some(rec.clone()), release(me, 5))]).is_ok());
        assert!(check_owner_only_release(&[(Some(rec.clone()), release(me, 4))]).is_err());
        let other = LeaseId(uuid::Uuid::from_u128(2));
        assert!(check_owner_only_release(&[(Some(rec), release(other, 5))]).is_err());
    }

    fn id(n: u128) -> LeaseId {
        LeaseId(uuid::Uuid::from_u128(n))
    }

    /// The record of `key()` held (or released) by lease 1 at version
    /// `rvn`, with lease ids `queue` registered in that order.
    fn queued(rvn: u128, released: bool, queue: &[u128]) -> LockRecord {
        LockRecord {
            key: key(),
            owner: id(1),
            token: FencingToken(rvn as u64),
            rvn: RecordVersion(rvn),
            lease_ms: 1000,
            released,
            holder: HolderInfo::named("h"),
            acquired_at: WallTime(0),
            heartbeat_at: WallTime(0),
            forced_by: None,
            queue: queue.iter().map(|n| id(*n)).collect(),
        }
    }

    fn acquire(of: &LockRecord, owner: u128, me_at: Option<u32>) -> LockOp {
        LockOp {
            key: key(),
            new_rvn: RecordVersion(of.rvn.0 + 1),
            at: WallTime(0),
            kind: OpKind::Acquire {
                from: GrantFrom::of(Some(of), FencingToken::NONE),
                owner: id(owner),
                lease_ms: 1000,
                holder: HolderInfo::named("w"),
                at_least: FencingToken::NONE,
                dequeue: Dequeue { me_at, skip: None },
            },
        }
    }

    fn takeover(of: &LockRecord, owner: u128, me_at: Option<u32>, skip: bool) -> LockOp {
        LockOp {
            key: key(),
            new_rvn: RecordVersion(of.rvn.0 + 1),
            at: WallTime(0),
            kind: OpKind::Takeover {
                observed: of.rvn,
                token: of.token,
                owner: id(owner),
                lease_ms: 1000,
                holder: HolderInfo::named("w"),
                at_least: FencingToken::NONE,
                dequeue: Dequeue {
                    me_at,
                    skip: of.queue_head().filter(|_| skip),
                },
            },
        }
    }

    /// Each (record before, op) pair of `ops` as a store applies them: the
    /// op must land, and the next one starts from the record it wrote.
    fn applied_from(
        first: Option<LockRecord>,
        ops: &[&dyn Fn(&LockRecord) -> LockOp],
    ) -> Vec<(Option<LockRecord>, LockOp)> {
        let mut before = first;
        let mut out = Vec::new();
        for make in ops {
            let current = before.clone().unwrap();
            let op = make(&current);
            let after = op.apply(before.as_ref()).unwrap();
            out.push((before, op));
            before = Some(after);
        }
        out
    }

    #[test]
    fn fifo_grant_passes_grants_in_turn_and_fails_a_grant_past_a_registered_waiter() {
        assert!(granted_in_turn::<u8>(&[], &1));
        assert!(granted_in_turn(&[1, 2], &1));
        assert!(!granted_in_turn(&[1, 2], &2));
        assert!(!granted_in_turn(&[1, 2], &3));

        // Lease 1 holds, 2 then 3 register; 1 releases; 2 is granted, then 3.
        let good = applied_from(
            Some(queued(10, false, &[])),
            &[
                &|r| LockOp {
                    key: key(),
                    new_rvn: r.rvn,
                    at: WallTime(0),
                    kind: OpKind::Enqueue { waiter: id(2) },
                },
                &|r| LockOp {
                    key: key(),
                    new_rvn: r.rvn,
                    at: WallTime(0),
                    kind: OpKind::Enqueue { waiter: id(3) },
                },
                &|r| LockOp {
                    key: key(),
                    new_rvn: RecordVersion(r.rvn.0 + 1),
                    at: WallTime(0),
                    kind: OpKind::Release {
                        owner: id(1),
                        current: r.rvn,
                    },
                },
                &|r| acquire(r, 2, Some(0)),
                &|r| LockOp {
                    key: key(),
                    new_rvn: RecordVersion(r.rvn.0 + 1),
                    at: WallTime(0),
                    kind: OpKind::Release {
                        owner: id(2),
                        current: r.rvn,
                    },
                },
                &|r| acquire(r, 3, Some(0)),
            ],
        );
        assert_eq!(good.len(), 6);
        assert_eq!(check_fifo_grant(&good), Ok(()));
        // A grant of an absent record, and one of a record nobody waits for.
        let fresh = LockOp {
            key: key(),
            new_rvn: RecordVersion(1),
            at: WallTime(0),
            kind: OpKind::Acquire {
                from: GrantFrom::Absent {
                    floor: FencingToken::NONE,
                },
                owner: id(7),
                lease_ms: 1000,
                holder: HolderInfo::named("w"),
                at_least: FencingToken::NONE,
                dequeue: Dequeue::default(),
            },
        };
        let idle = queued(4, false, &[]);
        assert_eq!(
            check_fifo_grant(&[
                (None, fresh),
                (Some(idle.clone()), takeover(&idle, 8, None, false))
            ]),
            Ok(())
        );

        // A skip of the head (a store accepts it: the head may have left the
        // record untaken for a lease) grants past a registered waiter.
        let released = queued(20, true, &[2, 3]);
        let skip = takeover(&released, 3, Some(1), true);
        assert!(skip.apply(Some(&released)).is_ok());
        let v = check_fifo_grant(&[(Some(released.clone()), skip)]).unwrap_err();
        assert_eq!(v.invariant, "FifoGrant");
        assert!(v.detail.contains("at place 1"), "{v}");
        // So does a takeover of a lapsed lease by the second waiter, and a
        // grant to a waiter that never registered.
        let held = queued(30, false, &[2, 3]);
        assert!(
            check_fifo_grant(&[(Some(held.clone()), takeover(&held, 3, Some(1), false))]).is_err()
        );
        let barging =
            check_fifo_grant(&[(Some(released.clone()), acquire(&released, 9, None))]).unwrap_err();
        assert!(barging.detail.contains("not registered"), "{barging}");
        // The violation is found after grants in turn too.
        let mut trace = good;
        trace.push((Some(held.clone()), takeover(&held, 3, Some(1), false)));
        assert!(check_fifo_grant(&trace).is_err());
    }
}
