//! `OwnerOnlyRelease`: only the current owner's heartbeat or release is ever
//! applied, at the record version it holds; a force-unlock is applied only
//! against the record version the operator saw. Audited on the store's
//! applied-write log, against the record each write replaced. (Naive records
//! have no version: there, only the owner is checked.)

use super::verdict::{Invariant, Violation, MAX_PER_CHECK};
use crate::history::{short, Event, LockOpKind, What};

/// Checks the trace.
pub fn check(events: &[Event]) -> Vec<Violation> {
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let What::LockApplied { from, op } = &e.what else {
            continue;
        };
        let problem = match op.kind {
            LockOpKind::Heartbeat | LockOpKind::Release => match &op.prev {
                None => Some("there was no record".to_string()),
                Some(p) if p.released => Some(format!("the record {p} was already released")),
                Some(p) if Some(p.owner) != op.owner => Some(format!(
                    "the record {p} is owned by another lease than the sender's ({})",
                    op.owner.map(short).unwrap_or_default()
                )),
                Some(p) if p.rvn.is_some() && p.rvn != op.expected_rvn => Some(format!(
                    "the record {p} is at another version than the sender's ({})",
                    op.expected_rvn.map(short).unwrap_or_default()
                )),
                Some(_) => None,
            },
            LockOpKind::ForceUnlock => match &op.prev {
                None => Some("there was no record".to_string()),
                Some(p) if p.rvn != op.expected_rvn => Some(format!(
                    "the record {p} is not at the version the operator saw ({})",
                    op.expected_rvn.map(short).unwrap_or_default()
                )),
                Some(_) => None,
            },
            // Grants are audited by TokenMonotonic and FifoGrant; the
            // queue's writes release nothing (they keep the lease).
            LockOpKind::Acquire
            | LockOpKind::Takeover
            | LockOpKind::Enqueue
            | LockOpKind::Leave => None,
        };
        if let Some(problem) = problem {
            out.push(Violation::new(
                Invariant::OwnerOnlyRelease,
                format!(
                    "the store applied a {} of {} from {from} although {problem}",
                    op.kind, op.key
                ),
                vec![i],
                vec![*from],
            ));
            if out.len() >= MAX_PER_CHECK {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Actor;
    use crate::history::LockOpKind::*;
    use crate::invariants::testing::{applied, c, rec};

    #[test]
    fn owner_ops_at_the_current_version_pass() {
        let h = vec![
            applied(
                1,
                c(1),
                Heartbeat,
                Some(1),
                Some(10),
                Some(rec(1, 1, 10, false)),
                Some(rec(1, 1, 11, false)),
            ),
            applied(
                2,
                c(1),
                Release,
                Some(1),
                Some(11),
                Some(rec(1, 1, 11, false)),
                Some(rec(1, 1, 12, true)),
            ),
            applied(
                3,
                Actor::Operator,
                ForceUnlock,
                None,
                Some(12),
                Some(rec(1, 1, 12, true)),
                Some(rec(1, 1, 13, true)),
            ),
        ];
        assert!(check(&h).is_empty());
    }

    #[test]
    fn foreign_stale_or_blind_ops_fail() {
        let h = vec![
            // Another lease's release.
            applied(
                1,
                c(2),
                Release,
                Some(2),
                Some(10),
                Some(rec(1, 1, 10, false)),
                Some(rec(1, 1, 11, true)),
            ),
            // The owner's heartbeat at an old version.
            applied(
                2,
                c(1),
                Heartbeat,
                Some(1),
                Some(9),
                Some(rec(1, 1, 10, false)),
                Some(rec(1, 1, 11, false)),
            ),
            // A release of a released record.
            applied(
                3,
                c(1),
                Release,
                Some(1),
                Some(10),
                Some(rec(1, 1, 10, true)),
                Some(rec(1, 1, 11, true)),
            ),
            // A force-unlock against a version the operator never saw.
            applied(
                4,
                Actor::Operator,
                ForceUnlock,
                None,
                Some(5),
                Some(rec(1, 1, 10, false)),
                Some(rec(1, 1, 11, true)),
            ),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 4, "{v:?}");
        assert!(v.iter().all(|v| v.invariant == Invariant::OwnerOnlyRelease));
        assert!(v[0].message.contains("owned by another lease"));
        assert!(v[1].message.contains("another version"));
        assert!(v[2].message.contains("already released"));
        assert!(v[3].message.contains("operator saw"));
    }
}
