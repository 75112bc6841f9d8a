//! The quorum rules on hand-built views.

use super::*;
use crate::protocol::{HolderInfo, LeaseId, WallTime};

fn key() -> LockKey {
    LockKey::new("k").unwrap()
}

fn rec(owner: u128, token: u64, rvn: u128, released: bool) -> LockRecord {
    LockRecord {
        key: key(),
        owner: LeaseId(uuid::Uuid::from_u128(owner)),
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

fn view(answers: Vec<Option<MemberRead>>) -> View {
    View {
        key: key(),
        answers,
    }
}

fn r(record: LockRecord) -> Option<MemberRead> {
    Some(MemberRead::Record(record))
}

fn absent(floor: u64) -> Option<MemberRead> {
    Some(MemberRead::Absent {
        floor: FencingToken(floor),
    })
}

fn grant(from: GrantFrom) -> LockOp {
    LockOp {
        key: key(),
        new_rvn: RecordVersion(999),
        at: WallTime(5),
        kind: OpKind::Acquire {
            from,
            owner: LeaseId(uuid::Uuid::from_u128(77)),
            lease_ms: 2000,
            holder: HolderInfo::named("me"),
            at_least: FencingToken::NONE,
            dequeue: Default::default(),
        },
    }
}

fn takeover(of: &LockRecord) -> LockOp {
    LockOp {
        kind: OpKind::Takeover {
            observed: of.rvn,
            token: of.token,
            owner: LeaseId(uuid::Uuid::from_u128(77)),
            lease_ms: 2000,
            holder: HolderInfo::named("me"),
            at_least: FencingToken::NONE,
            dequeue: Default::default(),
        },
        ..grant(GrantFrom::Absent {
            floor: FencingToken::NONE,
        })
    }
}

#[test]
fn fewer_than_a_majority_of_answers_is_no_view() {
    let v = view(vec![r(rec(1, 3, 10, false)), None, None]);
    assert_eq!(v.seen(), None);
    assert_eq!(majority(3), 2);
    assert_eq!(majority(5), 3);
}

#[test]
fn a_majority_on_one_write_agrees_on_it() {
    let a = rec(1, 3, 10, false);
    let stale = rec(2, 1, 4, true);
    let v = view(vec![r(a.clone()), r(stale), r(a.clone())]);
    assert_eq!(v.seen(), Some(Seen::Agreed(a)));
}

#[test]
fn a_majority_of_absences_is_absent() {
    let partial = rec(1, 1, 10, false);
    let v = view(vec![absent(0), r(partial), absent(0)]);
    assert_eq!(v.seen(), Some(Seen::Absent));
}

#[test]
fn a_split_view_is_held_with_the_largest_token_longest_lease_and_a_digest() {
    let mut old = rec(1, 3, 10, false);
    old.lease_ms = 9000;
    let newer = rec(2, 4, 11, true);
    let v = view(vec![r(old.clone()), r(newer.clone()), None]);
    let Some(Seen::Split(s)) = v.seen() else {
        panic!("expected a split view, got {:?}", v.seen())
    };
    assert_eq!(s.token, FencingToken(4));
    assert!(s.is_held(), "a held answer makes the split view held");
    assert_eq!(s.lease_ms, 9000, "the longest lease of the held answers");
    assert_ne!(s.rvn, old.rvn);
    assert_ne!(s.rvn, newer.rvn);
    // The digest changes when any member's answer changes, or who answered.
    let mut heartbeat = old.clone();
    heartbeat.rvn = RecordVersion(12);
    let after = view(vec![r(heartbeat), r(newer.clone()), None]);
    assert_ne!(after.digest(), v.digest());
    let other_members = view(vec![r(old), None, r(newer)]);
    assert_ne!(other_members.digest(), v.digest());
    assert_eq!(v.digest(), v.clone().digest());
}

#[test]
fn all_released_split_view_is_released() {
    let v = view(vec![
        r(rec(1, 3, 10, true)),
        r(rec(2, 5, 11, true)),
        absent(0),
    ]);
    let Some(Seen::Split(s)) = v.seen() else {
        panic!("expected a split view")
    };
    assert!(s.released);
    assert_eq!(s.token, FencingToken(5));
}

/// The token rule: one above the largest token anywhere in the view, even
/// a member the majority does not agree with (an old or partial grant).
/// Each member's own "next token" would hand out 4 on two members here.
#[test]
fn grant_tokens_are_one_above_the_whole_view() {
    let released = rec(1, 3, 10, true);
    // Maybe a grant still in flight: a larger token than the agreed one.
    let partial = rec(2, 6, 20, false);
    let v = view(vec![r(released.clone()), r(released.clone()), r(partial)]);
    let op = grant(GrantFrom::Version {
        rvn: released.rvn,
        token: released.token,
    });
    assert!(v.is_named_by(&op));
    assert_eq!(quorum_token(&v, &op), Some(FencingToken(7)));
    let ops = member_ops(&v, &op);
    for o in ops.iter().take(2) {
        let o = o.as_ref().expect("the agreed members get the grant");
        assert_eq!(o.granted_token(), Some(FencingToken(7)));
        assert_eq!(o.new_rvn, op.new_rvn);
        assert_eq!(o.apply(Some(&released)).unwrap().token, FencingToken(7));
    }
    assert_eq!(ops[2], None, "a held member nobody timed is left alone");
}

/// A held member behind the agreed record (a token no larger than its)
/// belongs to an earlier grant: the next grant takes it over at once, so
/// a member that missed grants is repaired.
#[test]
fn a_stale_held_member_is_repaired_by_the_next_grant() {
    let released = rec(1, 3, 10, true);
    let stale = rec(2, 2, 5, false);
    let same_token = rec(3, 3, 6, false);
    let v = view(vec![
        r(released.clone()),
        r(released.clone()),
        r(stale.clone()),
    ]);
    let op = grant(GrantFrom::Version {
        rvn: released.rvn,
        token: released.token,
    });
    let ops = member_ops(&v, &op);
    assert!(matches!(
        ops[2].as_ref().unwrap().kind,
        OpKind::Takeover { observed, .. } if observed == stale.rvn
    ));
    let v = view(vec![
        r(released.clone()),
        r(released.clone()),
        r(same_token),
    ]);
    assert_eq!(
        member_ops(&v, &op)[2],
        None,
        "a held member with the agreed token is not stale"
    );
}

/// A regression found by TLC (specs/traces/quorum-stale-heartbeat.txt): the
/// waiter timed the holder's grant (version 1); the holder's heartbeat
/// (version 2, same token) reached one member after the waiter read the
/// others, so the view still agrees on version 1. Taking over the member
/// at version 2 as "stale" (token no larger than the agreed one) would
/// let the takeover land on it and on the member the heartbeat has not
/// reached yet: a majority, while the holder's renewed lease runs. That
/// member must get nothing; the takeover then reaches a majority only if
/// the heartbeat did not.
#[test]
fn a_takeover_spares_the_holders_later_write_on_one_member() {
    let timed = rec(1, 1, 1, false);
    let heartbeat = rec(1, 1, 2, false);
    let v = view(vec![
        r(heartbeat.clone()),
        r(timed.clone()),
        r(timed.clone()),
    ]);
    assert_eq!(v.seen(), Some(Seen::Agreed(timed.clone())));
    let ops = member_ops(&v, &takeover(&timed));
    assert_eq!(ops[0], None, "the holder's heartbeat is not stale");
    for op in &ops[1..] {
        assert!(matches!(
            op.as_ref().unwrap().kind,
            OpKind::Takeover { observed, .. } if observed == timed.rvn
        ));
    }
}

#[test]
fn absent_members_get_an_acquire_with_their_own_floor() {
    let v = view(vec![absent(4), absent(2), absent(4)]);
    let op = grant(GrantFrom::Absent {
        floor: FencingToken(4),
    });
    assert!(v.is_named_by(&op));
    let ops = member_ops(&v, &op);
    match &ops[1].as_ref().unwrap().kind {
        OpKind::Acquire {
            from: GrantFrom::Absent { floor },
            at_least,
            ..
        } => {
            assert_eq!(*floor, FencingToken(2));
            assert_eq!(*at_least, FencingToken(5));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn takeover_of_an_agreed_view_spares_untimed_members() {
    let held = rec(1, 3, 10, false);
    let other = rec(2, 4, 30, false);
    let v = view(vec![r(held.clone()), r(held.clone()), r(other)]);
    let ops = member_ops(&v, &takeover(&held));
    assert!(matches!(
        ops[0].as_ref().unwrap().kind,
        OpKind::Takeover { observed, .. } if observed == held.rvn
    ));
    assert!(ops[1].is_some());
    assert_eq!(ops[2], None);
}

#[test]
fn takeover_of_a_split_view_takes_every_answering_member() {
    let a = rec(1, 3, 10, false);
    let b = rec(1, 3, 11, false);
    let v = view(vec![r(a.clone()), r(b.clone()), None]);
    let shown = v.seen().unwrap().record().cloned().unwrap();
    let op = takeover(&shown);
    assert!(v.is_named_by(&op));
    let ops = member_ops(&v, &op);
    assert!(matches!(
        ops[0].as_ref().unwrap().kind,
        OpKind::Takeover { observed, .. } if observed == a.rvn
    ));
    assert!(matches!(
        ops[1].as_ref().unwrap().kind,
        OpKind::Takeover { observed, .. } if observed == b.rvn
    ));
    assert_eq!(ops[2], None, "a member that did not answer gets nothing");
}

#[test]
fn an_op_naming_another_view_is_not_named_by_this_one() {
    let a = rec(1, 3, 10, true);
    let v = view(vec![r(a.clone()), r(a.clone()), None]);
    let stale = grant(GrantFrom::Version {
        rvn: RecordVersion(1),
        token: a.token,
    });
    assert!(!v.is_named_by(&stale));
    let wrong_token = grant(GrantFrom::Version {
        rvn: a.rvn,
        token: FencingToken(2),
    });
    assert!(!v.is_named_by(&wrong_token));
}

#[test]
fn verdicts() {
    let w = rec(1, 3, 10, false);
    use MemberResult::*;
    assert_eq!(
        verdict(&[Applied(w.clone()), Unknown, Applied(w.clone())], false),
        Verdict::Applied(w.clone(), true)
    );
    assert_eq!(
        verdict(&[Landed(w.clone()), Unknown, Landed(w.clone())], false),
        Verdict::Applied(w.clone(), false)
    );
    assert_eq!(
        verdict(&[Applied(w.clone()), Unknown, Unknown], false),
        Verdict::Pending
    );
    assert_eq!(
        verdict(&[Applied(w.clone()), Unknown, Refused(None)], true),
        Verdict::Unknown
    );
    assert_eq!(
        verdict(&[Applied(w.clone()), NotSent, Refused(None)], false),
        Verdict::Refused
    );
    assert_eq!(
        verdict(
            &[
                Refused(None),
                Failed(StoreError::Misconfigured("x".into())),
                Unknown
            ],
            false
        ),
        Verdict::Refused
    );
}

#[test]
fn a_lost_answer_that_landed_counts_as_applied() {
    let prev = rec(1, 3, 10, true);
    let op = grant(GrantFrom::Version {
        rvn: prev.rvn,
        token: prev.token,
    });
    let own = op.apply(Some(&prev)).unwrap();
    assert_eq!(
        MemberResult::of(&op, Err(StoreError::conflict(Some(own.clone())))),
        MemberResult::Landed(own.clone())
    );
    assert_eq!(
        MemberResult::of(&op, Ok(own.clone())),
        MemberResult::Applied(own)
    );
    assert_eq!(
        MemberResult::of(&op, Err(StoreError::Unavailable("x".into()))),
        MemberResult::Unknown
    );
}
