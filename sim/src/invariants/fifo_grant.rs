//! `FifoGrant`: when there are no faults, a registered waiter is granted
//! before any waiter registered after it. Audited on each store host's
//! applied-write log: every grant (acquire or takeover) went to the head of
//! the hand-off queue of the record it replaced, or that queue was empty —
//! the rule of `statelock::testkit::invariants::check_fifo_grant`, applied
//! through [`granted_in_turn`].
//!
//! Judged only in runs without faults ([`super::CheckContext::fault_free`]).
//! Under faults a grant out of turn is part of the protocol: a takeover of a
//! lease that ran out removes its grantee's entry wherever it stands, and a
//! head that leaves a released record untaken for a whole lease (it crashed,
//! or is cut off, or its registration landed after it stopped waiting) is
//! skipped. This checker must not judge those runs; the run summary counts
//! the skips instead.

use super::verdict::{Invariant, Violation, MAX_PER_CHECK};
use crate::history::{short, Actor, Event, LockOpKind, What};
use statelock::testkit::invariants::granted_in_turn;
use std::collections::BTreeMap;

/// Checks the trace; judges nothing unless the run had no faults.
pub fn check(events: &[Event], fault_free: bool) -> Vec<Violation> {
    let mut out = Vec::new();
    if !fault_free {
        return out;
    }
    // (store, key, waiter) -> the event that registered it, and its sender.
    let mut registered: BTreeMap<(Actor, &str, u128), (usize, Actor)> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let What::LockApplied { from, op } = &e.what else {
            continue;
        };
        let store = e.actor;
        let key = op.key.as_str();
        if op.kind == LockOpKind::Enqueue {
            if let Some(waiter) = op.owner {
                registered.insert((store, key, waiter), (i, *from));
            }
            continue;
        }
        if !op.kind.is_grant() {
            continue;
        }
        let (Some(grantee), Some(prev)) = (op.owner, &op.prev) else {
            // A grant of an absent record: nobody can be registered.
            continue;
        };
        if granted_in_turn(&prev.queue, &grantee) {
            continue;
        }
        let Some(head) = prev.queue.first().copied() else {
            continue;
        };
        let place = match prev.queue.iter().position(|w| *w == grantee) {
            Some(at) => format!("registered at place {at}"),
            None => "not registered".to_string(),
        };
        let mut shown = Vec::new();
        let mut actors = vec![*from];
        if let Some((j, who)) = registered.get(&(store, key, head)) {
            shown.push(*j);
            actors.push(*who);
        }
        if let Some((j, _)) = registered.get(&(store, key, grantee)) {
            shown.push(*j);
        }
        shown.push(i);
        shown.sort_unstable();
        out.push(Violation::new(
            Invariant::FifoGrant,
            format!(
                "{store} applied a {} of {key} for {from}'s lease {} ({place}) while lease {} headed the queue of the record it replaced, {prev}, in a run without faults",
                op.kind,
                short(grantee),
                short(head)
            ),
            shown,
            actors,
        ));
        if out.len() >= MAX_PER_CHECK {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::LockOpKind::*;
    use crate::history::RecordView;
    use crate::invariants::testing::{applied, c, rec};

    fn queued(owner: u128, token: u64, rvn: u128, released: bool, queue: &[u128]) -> RecordView {
        RecordView {
            queue: queue.to_vec(),
            ..rec(owner, token, rvn, released)
        }
    }

    /// Lease 1 (c1) holds; c2 (lease 2) and then c3 (lease 3) register; c1
    /// releases; then `grant` is applied to the released record.
    fn history(grant: (u16, u128, Vec<u128>)) -> Vec<Event> {
        let (client, lease, after) = grant;
        vec![
            applied(
                1,
                c(1),
                Acquire,
                Some(1),
                None,
                None,
                Some(queued(1, 1, 10, false, &[])),
            ),
            applied(
                2,
                c(2),
                Enqueue,
                Some(2),
                None,
                Some(queued(1, 1, 10, false, &[])),
                Some(queued(1, 1, 10, false, &[2])),
            ),
            applied(
                3,
                c(3),
                Enqueue,
                Some(3),
                None,
                Some(queued(1, 1, 10, false, &[2])),
                Some(queued(1, 1, 10, false, &[2, 3])),
            ),
            applied(
                4,
                c(1),
                Release,
                Some(1),
                Some(10),
                Some(queued(1, 1, 10, false, &[2, 3])),
                Some(queued(1, 1, 11, true, &[2, 3])),
            ),
            applied(
                5,
                c(client),
                if lease == 3 { Takeover } else { Acquire },
                Some(lease),
                Some(11),
                Some(queued(1, 1, 11, true, &[2, 3])),
                Some(queued(lease, 2, 12, false, &after)),
            ),
        ]
    }

    #[test]
    fn grants_in_turn_pass() {
        let h = history((2, 2, vec![3]));
        assert!(check(&h, true).is_empty());
        // A grant of a record nobody waits for, and of an absent one.
        let free = vec![
            applied(
                1,
                c(4),
                Acquire,
                Some(4),
                None,
                None,
                Some(rec(4, 1, 1, false)),
            ),
            applied(
                2,
                c(4),
                Release,
                Some(4),
                Some(1),
                Some(rec(4, 1, 1, false)),
                Some(rec(4, 1, 2, true)),
            ),
            applied(
                3,
                c(5),
                Acquire,
                Some(5),
                None,
                Some(rec(4, 1, 2, true)),
                Some(rec(5, 2, 3, false)),
            ),
        ];
        assert!(check(&free, true).is_empty());
    }

    #[test]
    fn a_grant_past_a_registered_waiter_fails_without_faults_only() {
        // c3 skips c2, who registered first.
        let h = history((3, 3, vec![]));
        let v = check(&h, true);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].invariant, Invariant::FifoGrant);
        assert!(
            v[0].message.contains("registered at place 1"),
            "{}",
            v[0].message
        );
        // The event of the grant and the registrations of both waiters.
        assert_eq!(v[0].events, vec![1, 2, 4]);
        assert_eq!(v[0].actors, vec![c(3), c(2)]);
        // Under faults a skip is legitimate: not judged.
        assert!(check(&h, false).is_empty());

        // A client that never registered takes the record past both.
        let barging = history((4, 4, vec![2, 3]));
        let v = check(&barging, true);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].message.contains("not registered"), "{}", v[0].message);
    }
}
