//! `SealFencesStaleWriters`: the promise of the state store's seal. A holder
//! seals its key's state right after its grant (the fence rises to its token
//! `t`) and only then reads it; from the moment the store accepted that seal
//! — and so surely from the moment the holder has read the state — no save
//! by a holder with a token below `t` is ever accepted. A holder whose lock
//! was taken over can write nothing once its successor sealed, even if the
//! successor has not saved yet.
//!
//! Audited on the store's log of accepted seals and saves (apply order) and
//! on the holders' reads: a read recorded at time `T` was served before `T`.
//! The read clause also judges designs that do not seal at all.

use super::verdict::{Invariant, Violation, MAX_PER_CHECK};
use crate::history::{Actor, Event, What};
use std::collections::BTreeMap;

/// The highest token that has sealed or read a key so far, and by whom.
#[derive(Debug, Clone, Copy)]
struct Mark {
    token: u64,
    who: Actor,
    event: usize,
    sealed: bool,
}

/// Checks the trace.
pub fn check(events: &[Event]) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let (key, mark) = match &e.what {
            What::StateSealed {
                from, key, token, ..
            } => (
                key.as_str(),
                Mark {
                    token: *token,
                    who: *from,
                    event: i,
                    sealed: true,
                },
            ),
            What::Loaded { key, token, .. } if *token > 0 => (
                key.as_str(),
                Mark {
                    token: *token,
                    who: e.actor,
                    event: i,
                    sealed: false,
                },
            ),
            What::StateAccepted {
                from, key, token, ..
            } => {
                if let Some(m) = marks.get(key.as_str()) {
                    if *token < m.token {
                        let how = if m.sealed {
                            "sealed it"
                        } else {
                            "read it (a holder reads only after sealing)"
                        };
                        out.push(Violation::new(
                            Invariant::SealFencesStaleWriters,
                            format!(
                                "the store accepted {from}'s save of {key} with token {token} after {} (token {}) {how}: a stale writer got through",
                                m.who, m.token
                            ),
                            vec![m.event, i],
                            vec![m.who, *from],
                        ));
                        if out.len() >= MAX_PER_CHECK {
                            return out;
                        }
                    }
                }
                continue;
            }
            _ => continue,
        };
        match marks.get(key) {
            Some(m) if m.token >= mark.token => {}
            _ => {
                marks.insert(key, mark);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariants::testing::{c, loaded, saved, sealed};

    #[test]
    fn sealed_holders_in_token_order_pass() {
        let h = vec![
            sealed(1, c(1), 1, None, "m1"),
            loaded(2, c(1), 1, Some("m1")),
            saved(3, c(1), 1, Some("m1"), "m2", 1),
            sealed(4, c(2), 2, Some("m2"), "m3"),
            loaded(5, c(2), 2, Some("m3")),
            saved(6, c(2), 2, Some("m3"), "m4", 2),
        ];
        assert!(check(&h).is_empty());
    }

    #[test]
    fn a_save_by_an_older_token_after_a_seal_fails() {
        let h = vec![
            sealed(1, c(1), 1, None, "m1"),
            loaded(2, c(1), 1, Some("m1")),
            // c2 takes over and seals before c1, frozen, saves.
            sealed(3, c(2), 2, Some("m1"), "m2"),
            saved(4, c(1), 1, Some("m2"), "m3", 1),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].invariant, Invariant::SealFencesStaleWriters);
        assert_eq!(v[0].events, vec![2, 3]);
        assert_eq!(v[0].actors, vec![c(2), c(1)]);
        assert!(v[0].message.contains("sealed it"), "{}", v[0].message);
    }

    #[test]
    fn without_seals_a_save_by_an_older_token_after_a_newer_read_fails() {
        let h = vec![
            loaded(1, c(1), 1, None),
            loaded(2, c(2), 2, None),
            saved(3, c(1), 1, None, "m1", 1),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].message.contains("read it"), "{}", v[0].message);
    }

    #[test]
    fn a_save_before_the_newer_seal_passes() {
        // Write-time fencing alone would allow this too; the seal promises
        // nothing before it lands.
        let h = vec![
            sealed(1, c(1), 1, None, "m1"),
            saved(2, c(1), 1, Some("m1"), "m2", 1),
            sealed(3, c(2), 2, Some("m2"), "m3"),
        ];
        assert!(check(&h).is_empty());
    }
}
