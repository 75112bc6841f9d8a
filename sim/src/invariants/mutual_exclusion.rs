//! `MutualExclusion`: no two clients believe they hold the same key at the
//! same real instant.
//!
//! A client's *belief interval* for one grant starts when `acquire` returns
//! (event `Acquired`) and ends at the last instant it asked its guard
//! `is_valid()` and got `true` (event `Check { valid: true }`) — the client
//! checks right before each protected action, so that is the last instant it
//! acted as the holder on its own authority. Intervals are closed and in true
//! simulated time. Two intervals of different clients on one key must not
//! intersect.

use super::verdict::{Invariant, Violation, MAX_PER_CHECK};
use crate::history::{fmt_time, Actor, Event, What};
use std::collections::BTreeMap;
use std::time::Duration;

/// One grant as its holder believed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Belief {
    /// The holder.
    pub client: Actor,
    /// The key.
    pub key: String,
    /// The grant's token.
    pub token: u64,
    /// When `acquire` returned.
    pub start: Duration,
    /// The last instant `is_valid()` said true (at least `start`).
    pub end: Duration,
    /// Event index of the grant.
    pub start_event: usize,
    /// Event index of the last valid check (or the grant).
    pub end_event: usize,
}

/// The belief intervals of a trace, in grant order.
pub fn beliefs(events: &[Event]) -> Vec<Belief> {
    let mut out: Vec<Belief> = Vec::new();
    // (client, key, token) -> index of its latest belief
    let mut open: BTreeMap<(Actor, String, u64), usize> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        match &e.what {
            What::Acquired { key, token, .. } => {
                open.insert((e.actor, key.clone(), *token), out.len());
                out.push(Belief {
                    client: e.actor,
                    key: key.clone(),
                    token: *token,
                    start: e.at,
                    end: e.at,
                    start_event: i,
                    end_event: i,
                });
            }
            What::Check {
                key,
                token,
                valid: true,
                ..
            } => {
                if let Some(&b) = open.get(&(e.actor, key.clone(), *token)) {
                    if e.at >= out[b].end {
                        out[b].end = e.at;
                        out[b].end_event = i;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Checks the trace.
pub fn check(events: &[Event]) -> Vec<Violation> {
    let mut by_key: BTreeMap<&str, Vec<&Belief>> = BTreeMap::new();
    let all = beliefs(events);
    for b in &all {
        by_key.entry(b.key.as_str()).or_default().push(b);
    }
    let mut out = Vec::new();
    for (key, mut list) in by_key {
        list.sort_by_key(|b| (b.start, b.start_event));
        // Sweep by start time, keeping the intervals that may still overlap.
        let mut live: Vec<&Belief> = Vec::new();
        for b in list {
            live.retain(|o| o.end >= b.start);
            for o in &live {
                if o.client != b.client {
                    out.push(Violation::new(
                        Invariant::MutualExclusion,
                        format!(
                            "{} (token {}) believed it held {key} from {} to {}, and {} (token {}) from {} to {}",
                            o.client,
                            o.token,
                            fmt_time(o.start),
                            fmt_time(o.end),
                            b.client,
                            b.token,
                            fmt_time(b.start),
                            fmt_time(b.end)
                        ),
                        vec![o.start_event, o.end_event, b.start_event, b.end_event],
                        vec![o.client, b.client],
                    ));
                    if out.len() >= MAX_PER_CHECK {
                        return out;
                    }
                }
            }
            live.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Guarded;
    use crate::invariants::testing::{c, ev};

    fn acquired(ms: u64, who: u16, token: u64) -> Event {
        ev(
            ms,
            c(who),
            What::Acquired {
                key: "k".into(),
                op: 0,
                token,
                owner: u128::from(who),
            },
        )
    }
    fn check_at(ms: u64, who: u16, token: u64, valid: bool) -> Event {
        ev(
            ms,
            c(who),
            What::Check {
                key: "k".into(),
                token,
                valid,
                before: Guarded::Save,
            },
        )
    }

    #[test]
    fn sequential_holders_pass() {
        let h = vec![
            acquired(10, 1, 1),
            check_at(20, 1, 1, true),
            check_at(30, 1, 1, true),
            acquired(31, 2, 2),
            check_at(40, 2, 2, true),
        ];
        assert!(check(&h).is_empty());
        let b = beliefs(&h);
        assert_eq!(
            (b[0].start, b[0].end),
            (Duration::from_millis(10), Duration::from_millis(30))
        );
    }

    #[test]
    fn a_check_that_says_invalid_ends_nothing_and_extends_nothing() {
        // c1's belief ends at its last VALID check (20), so c2 at 25 is fine.
        let h = vec![
            acquired(10, 1, 1),
            check_at(20, 1, 1, true),
            acquired(25, 2, 2),
            check_at(50, 1, 1, false),
        ];
        assert!(check(&h).is_empty());
    }

    #[test]
    fn overlapping_beliefs_fail() {
        let h = vec![
            acquired(10, 1, 1),
            acquired(15, 2, 2),
            check_at(20, 1, 1, true),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].invariant, Invariant::MutualExclusion);
        assert_eq!(v[0].actors, vec![c(1), c(2)]);
        assert!(v[0].message.contains("c1 (token 1)"), "{}", v[0].message);
    }

    #[test]
    fn touching_intervals_fail_because_intervals_are_closed() {
        let h = vec![
            acquired(10, 1, 1),
            check_at(20, 1, 1, true),
            acquired(20, 2, 2),
        ];
        assert_eq!(check(&h).len(), 1);
    }
}
