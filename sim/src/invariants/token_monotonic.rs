//! `TokenMonotonic`: the tokens granted for a key strictly increase.
//!
//! Audited from both sides:
//! - each store host: every grant it applied has a token above every earlier
//!   grant of the key, no other write changes the token, each write starts
//!   from the record the previous write left, and the final record is the
//!   last write's (with several store hosts, each is audited on its own, and
//!   one that lost its records starts afresh);
//! - the clients: no token is handed to two acquires, every token a client
//!   was given is a grant a store made to that very lease, and one client's
//!   successive tokens for a key increase. With a quorum this is the check
//!   that matters: the members agree on each grant's token.

use super::verdict::{Invariant, Violation, MAX_PER_CHECK};
use crate::history::{Actor, Event, RecordView, What};
use std::collections::BTreeMap;

/// Checks the trace.
pub fn check(events: &[Event]) -> Vec<Violation> {
    let mut out = Vec::new();
    let push = |out: &mut Vec<Violation>, msg: String, ev: Vec<usize>, actors: Vec<Actor>| {
        if out.len() < MAX_PER_CHECK {
            out.push(Violation::new(Invariant::TokenMonotonic, msg, ev, actors));
        }
    };

    // Store side, per store host (each member of a quorum is a store of
    // its own; a member that lost its records starts afresh).
    let mut last: BTreeMap<(Actor, &str), (Option<RecordView>, usize)> = BTreeMap::new();
    let mut max_granted: BTreeMap<(Actor, &str), u64> = BTreeMap::new();
    // (store, key, token) -> event of the store's grants.
    let mut granted: BTreeMap<(Actor, &str, u64), usize> = BTreeMap::new();
    // (key, token) -> the leases some store granted it to, with the event.
    let mut grants: BTreeMap<(&str, u64), Vec<(u128, usize)>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let (from, op) = match &e.what {
            What::LockApplied { from, op } => (from, op),
            What::Wiped(store) => {
                last.retain(|(s, _), _| s != store);
                max_granted.retain(|(s, _), _| s != store);
                granted.retain(|(s, _, _), _| s != store);
                continue;
            }
            _ => continue,
        };
        let store = e.actor;
        let key = op.key.as_str();
        if let Some((before, j)) = last.get(&(store, key)) {
            if *before != op.prev {
                push(
                    &mut out,
                    format!("{store} wrote {key} from a record ({:?}) that is not the one the previous write left ({:?})", op.prev, before),
                    vec![*j, i],
                    vec![*from],
                );
            }
        }
        match (&op.next, op.kind.is_grant()) {
            (Some(next), true) => {
                let floor = max_granted.get(&(store, key)).copied().unwrap_or(0);
                let prev_token = op.prev.as_ref().map_or(0, |p| p.token);
                if next.token <= floor || next.token <= prev_token {
                    push(
                        &mut out,
                        format!(
                            "{store} granted {key} with token {} after granting token {floor} (record before: token {prev_token})",
                            next.token
                        ),
                        vec![i],
                        vec![*from],
                    );
                }
                max_granted.insert((store, key), floor.max(next.token));
                if let Some(j) = granted.insert((store, key, next.token), i) {
                    push(
                        &mut out,
                        format!("{store} granted token {} of {key} twice", next.token),
                        vec![j, i],
                        vec![*from],
                    );
                }
                grants
                    .entry((key, next.token))
                    .or_default()
                    .push((next.owner, i));
            }
            (Some(next), false) => {
                if let Some(prev) = &op.prev {
                    if prev.token != next.token {
                        push(
                            &mut out,
                            format!(
                                "a {} of {key} on {store} changed its token from {} to {}",
                                op.kind, prev.token, next.token
                            ),
                            vec![i],
                            vec![*from],
                        );
                    }
                }
            }
            (None, _) => {}
        }
        last.insert((store, key), (op.next.clone(), i));
    }
    for (i, e) in events.iter().enumerate() {
        let What::FinalRecord { store, key, record } = &e.what else {
            continue;
        };
        let logged = last
            .get(&(*store, key.as_str()))
            .and_then(|(r, _)| r.clone());
        if logged != *record {
            push(
                &mut out,
                format!("the final record of {key} on {store} ({record:?}) is not what the last applied write left ({logged:?})"),
                vec![i],
                vec![],
            );
        }
    }

    // Client side.
    let mut handed: BTreeMap<(&str, u64), (Actor, usize)> = BTreeMap::new();
    let mut per_client: BTreeMap<(Actor, &str), (u64, usize)> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let What::Acquired {
            key, token, owner, ..
        } = &e.what
        else {
            continue;
        };
        let key = key.as_str();
        if let Some((who, j)) = handed.insert((key, *token), (e.actor, i)) {
            push(
                &mut out,
                format!(
                    "token {token} of {key} was handed to {who} and again to {}",
                    e.actor
                ),
                vec![j, i],
                vec![who, e.actor],
            );
        }
        match grants.get(&(key, *token)) {
            Some(to) if !to.iter().any(|(granted_to, _)| granted_to == owner) => push(
                &mut out,
                format!("{} was given token {token} of {key}, but the store granted it to another lease", e.actor),
                to.iter().map(|(_, j)| *j).chain([i]).collect(),
                vec![e.actor],
            ),
            None => push(
                &mut out,
                format!("{} was given token {token} of {key}, which the store never granted", e.actor),
                vec![i],
                vec![e.actor],
            ),
            _ => {}
        }
        if let Some((before, j)) = per_client.insert((e.actor, key), (*token, i)) {
            if *token <= before {
                push(
                    &mut out,
                    format!(
                        "{} got token {token} of {key} after token {before}",
                        e.actor
                    ),
                    vec![j, i],
                    vec![e.actor],
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::LockOpKind::*;
    use crate::invariants::testing::{applied, c, ev, rec};

    fn acquired(ms: u64, who: u16, token: u64, owner: u128) -> Event {
        ev(
            ms,
            c(who),
            What::Acquired {
                key: "k".into(),
                op: 0,
                token,
                owner,
            },
        )
    }

    fn good() -> Vec<Event> {
        vec![
            applied(
                1,
                c(1),
                Acquire,
                Some(1),
                None,
                None,
                Some(rec(1, 1, 10, false)),
            ),
            acquired(2, 1, 1, 1),
            applied(
                3,
                c(1),
                Release,
                Some(1),
                Some(10),
                Some(rec(1, 1, 10, false)),
                Some(rec(1, 1, 11, true)),
            ),
            applied(
                4,
                c(2),
                Acquire,
                Some(2),
                None,
                Some(rec(1, 1, 11, true)),
                Some(rec(2, 2, 12, false)),
            ),
            acquired(5, 2, 2, 2),
            ev(
                9,
                Actor::Sim,
                What::FinalRecord {
                    store: Actor::Store(0),
                    key: "k".into(),
                    record: Some(rec(2, 2, 12, false)),
                },
            ),
        ]
    }

    #[test]
    fn increasing_grants_pass() {
        assert_eq!(check(&good()), vec![]);
    }

    #[test]
    fn a_reused_token_fails() {
        let mut h = good();
        // The second grant reuses token 1.
        h[3] = applied(
            4,
            c(2),
            Acquire,
            Some(2),
            None,
            Some(rec(1, 1, 11, true)),
            Some(rec(2, 1, 12, false)),
        );
        h[4] = acquired(5, 2, 1, 2);
        h[5] = ev(
            9,
            Actor::Sim,
            What::FinalRecord {
                store: Actor::Store(0),
                key: "k".into(),
                record: Some(rec(2, 1, 12, false)),
            },
        );
        let v = check(&h);
        assert!(v.iter().all(|v| v.invariant == Invariant::TokenMonotonic));
        assert!(
            v.iter()
                .any(|v| v.message.contains("after granting token 1")),
            "{v:?}"
        );
        assert!(
            v.iter()
                .any(|v| v.message.contains("handed to c1 and again to c2")),
            "{v:?}"
        );
    }

    #[test]
    fn a_token_the_store_never_granted_fails() {
        let mut h = good();
        h.push(acquired(6, 3, 7, 3));
        let v = check(&h);
        assert_eq!(v.len(), 1);
        assert!(v[0].message.contains("never granted"));
    }

    #[test]
    fn a_final_record_that_disagrees_with_the_log_fails() {
        let mut h = good();
        h[5] = ev(
            9,
            Actor::Sim,
            What::FinalRecord {
                store: Actor::Store(0),
                key: "k".into(),
                record: Some(rec(2, 5, 12, false)),
            },
        );
        assert_eq!(check(&h).len(), 1);
    }
}
