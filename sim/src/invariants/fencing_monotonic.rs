//! `FencingMonotonic`: the state writes the store accepted for a key carry
//! non-decreasing tokens — once a write with token `t` is accepted, no write
//! with a token below `t` ever is. Audited on the store's accepted-write log,
//! in the order the store applied them.

use super::verdict::{Invariant, Violation, MAX_PER_CHECK};
use crate::history::{Actor, Event, What};
use std::collections::BTreeMap;

/// Checks the trace.
pub fn check(events: &[Event]) -> Vec<Violation> {
    let mut out = Vec::new();
    // Per key: the highest token accepted so far, its writer and its event.
    let mut highest: BTreeMap<&str, (u64, Actor, usize)> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let What::StateAccepted {
            from, key, token, ..
        } = &e.what
        else {
            continue;
        };
        match highest.get(key.as_str()) {
            Some(&(top, writer, j)) if *token < top => {
                out.push(Violation::new(
                    Invariant::FencingMonotonic,
                    format!("the store accepted a write of {key} with token {token} from {from} after one with token {top} from {writer}"),
                    vec![j, i],
                    vec![writer, *from],
                ));
                if out.len() >= MAX_PER_CHECK {
                    return out;
                }
            }
            _ => {
                highest.insert(key, (*token, *from, i));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariants::testing::{accepted, c};

    #[test]
    fn equal_and_rising_tokens_pass() {
        let h = vec![
            accepted(1, c(1), 1, None, "v1"),
            accepted(2, c(1), 1, Some("v1"), "v2"),
            accepted(3, c(2), 4, Some("v2"), "v3"),
        ];
        assert!(check(&h).is_empty());
    }

    #[test]
    fn a_stale_token_accepted_after_a_newer_one_fails() {
        let h = vec![
            accepted(1, c(1), 1, None, "v1"),
            accepted(2, c(2), 4, Some("v1"), "v2"),
            accepted(3, c(1), 1, Some("v2"), "v3"),
            accepted(4, c(3), 3, Some("v3"), "v4"),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!(v[0].invariant, Invariant::FencingMonotonic);
        assert_eq!(v[0].events, vec![1, 2]);
        // Measured against the highest token so far (4), not the last (1).
        assert!(
            v[1].message.contains("token 3") && v[1].message.contains("token 4"),
            "{}",
            v[1].message
        );
    }
}
