//! `NoLostUpdate`: the accepted state writes of a key form one chain — each
//! (seal or save) is based on (its expected version is) the version the
//! previously accepted write created, and the first on no state at all. A
//! write based on anything else overwrote a version its writer never saw.
//! And the content agrees: each accepted save's counter is one more than the
//! previous accepted save's (a save based on an older read would repeat a
//! counter). Audited on the store's accepted-write log, in apply order.

use super::verdict::{Invariant, Violation, MAX_PER_CHECK};
use crate::history::{Actor, Event, What};
use std::collections::BTreeMap;

/// Checks the trace.
pub fn check(events: &[Event]) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut head: BTreeMap<&str, (String, Actor, usize)> = BTreeMap::new();
    // Per key: the counter of the last accepted save, its writer, its event.
    let mut counters: BTreeMap<&str, (u64, Actor, usize)> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let (from, key, expected, version, counter) = match &e.what {
            What::StateAccepted {
                from,
                key,
                expected,
                version,
                counter,
                ..
            } => (from, key, expected, version, *counter),
            What::StateSealed {
                from,
                key,
                expected,
                version,
                ..
            } => (from, key, expected, version, None),
            _ => continue,
        };
        let previous = head.get(key.as_str());
        let ok = match (previous, expected) {
            (None, None) => true,
            (Some((v, _, _)), Some(x)) => v == x,
            _ => false,
        };
        if !ok {
            let (prev_text, mut evs, mut actors) = match previous {
                Some((v, w, j)) => (format!("{v} (written by {w})"), vec![*j], vec![*w]),
                None => ("no state".to_string(), vec![], vec![]),
            };
            evs.push(i);
            actors.push(*from);
            out.push(Violation::new(
                Invariant::NoLostUpdate,
                format!(
                    "the store accepted {from}'s write of {key} based on {}, but the state was {prev_text}: that update is lost",
                    expected.as_deref().unwrap_or("no state")
                ),
                evs,
                actors,
            ));
            if out.len() >= MAX_PER_CHECK {
                return out;
            }
        }
        head.insert(key, (version.clone(), *from, i));
        let Some(n) = counter else { continue };
        let (last, writer, j) = counters
            .get(key.as_str())
            .map_or((0, None, None), |(c, w, j)| (*c, Some(*w), Some(*j)));
        if n != last + 1 {
            let mut evs: Vec<usize> = j.into_iter().collect();
            evs.push(i);
            let mut actors: Vec<Actor> = writer.into_iter().collect();
            actors.push(*from);
            out.push(Violation::new(
                Invariant::NoLostUpdate,
                format!(
                    "the store accepted {from}'s save of {key} with counter {n}, but the last accepted save had counter {last}: {}",
                    if n <= last { "a save was based on an older read, an update is lost" } else { "a save is missing from the chain" }
                ),
                evs,
                actors,
            ));
            if out.len() >= MAX_PER_CHECK {
                return out;
            }
        }
        counters.insert(key, (n, *from, i));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariants::testing::{accepted, c, saved, sealed};

    #[test]
    fn a_chain_passes() {
        let h = vec![
            accepted(1, c(1), 1, None, "v1"),
            accepted(2, c(2), 2, Some("v1"), "v2"),
            accepted(3, c(1), 3, Some("v2"), "v3"),
        ];
        assert!(check(&h).is_empty());
    }

    #[test]
    fn an_overwrite_of_an_unseen_version_fails() {
        let h = vec![
            accepted(1, c(1), 1, None, "v1"),
            accepted(2, c(2), 2, Some("v1"), "v2"),
            // c1 writes on v1 again: c2's v2 is overwritten unseen.
            accepted(3, c(1), 1, Some("v1"), "v3"),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].invariant, Invariant::NoLostUpdate);
        assert_eq!(v[0].events, vec![1, 2]);
        assert_eq!(v[0].actors, vec![c(2), c(1)]);
    }

    #[test]
    fn a_second_first_write_fails() {
        let h = vec![
            accepted(1, c(1), 1, None, "v1"),
            accepted(2, c(2), 2, None, "v2"),
        ];
        assert_eq!(check(&h).len(), 1);
    }

    #[test]
    fn seals_are_links_of_the_chain_and_counters_rise_by_one() {
        let h = vec![
            sealed(1, c(1), 1, None, "m1"),
            saved(2, c(1), 1, Some("m1"), "m2", 1),
            sealed(3, c(2), 2, Some("m2"), "m3"),
            saved(4, c(2), 2, Some("m3"), "m4", 2),
        ];
        assert!(check(&h).is_empty());
    }

    #[test]
    fn a_repeated_counter_is_a_lost_update() {
        let h = vec![
            sealed(1, c(1), 1, None, "m1"),
            saved(2, c(1), 1, Some("m1"), "m2", 1),
            sealed(3, c(2), 2, Some("m2"), "m3"),
            // c2 wrote on a read from before c1's save.
            saved(4, c(2), 2, Some("m3"), "m4", 1),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].events, vec![1, 3]);
        assert!(v[0].message.contains("counter 1"), "{}", v[0].message);
    }
}
