//! `SupervisedExclusion`: a supervised command (`statelock exec`) is dead
//! before anyone else acts on its key. Every unfenced write by a command
//! running under token `t` happens, in true simulated time, strictly before
//! the first write of any later grant of the same key — the first accepted
//! state write (store side) or the first command write with a higher token,
//! whichever comes first.
//!
//! The one exception is by design: a command whose whole process (supervisor
//! included) was frozen past its kill time cannot have been stopped by
//! anyone. Its writes after the `Resumed { late: true }` event of its grant
//! are not judged (see [`crate::command`]); its writes before it are.
//!
//! Like every checker, a pure function of the trace: it must not look at
//! anything else.

use super::verdict::{Invariant, Violation, MAX_PER_CHECK};
use crate::history::{fmt_time, Actor, CommandEvent, Event, What};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The first write of a grant: when, which event, by whom.
#[derive(Debug, Clone, Copy)]
struct First {
    at: Duration,
    event: usize,
    actor: Actor,
    token: u64,
}

/// Checks the trace.
pub fn check<'a>(events: &'a [Event]) -> Vec<Violation> {
    // Per key: token -> its first write (fenced or unfenced).
    let mut first: BTreeMap<&str, BTreeMap<u64, First>> = BTreeMap::new();
    let mut note = |key: &'a str, token: u64, at: Duration, event: usize, actor: Actor| {
        first.entry(key).or_default().entry(token).or_insert(First {
            at,
            event,
            actor,
            token,
        });
    };
    // Command writes to judge: (key, token, at, event, actor).
    let mut judged: Vec<(&str, u64, Duration, usize, Actor)> = Vec::new();
    // Grants whose supervisor was frozen past the kill time.
    let mut late: BTreeSet<(Actor, &str, u64)> = BTreeSet::new();
    // The start and the stop request of each command, to show them.
    let mut shown: BTreeMap<(Actor, &str, u64), Vec<usize>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        match &e.what {
            What::Command(
                c @ (CommandEvent::Start { .. }
                | CommandEvent::Terminate { .. }
                | CommandEvent::Kill { .. }),
            ) => {
                let (key, token) = c.grant();
                shown.entry((e.actor, key, token)).or_default().push(i);
            }
            What::StateAccepted {
                from, key, token, ..
            } => note(key, *token, e.at, i, *from),
            What::Command(CommandEvent::Write { key, token, .. }) => {
                note(key, *token, e.at, i, e.actor);
                if !late.contains(&(e.actor, key.as_str(), *token)) {
                    judged.push((key, *token, e.at, i, e.actor));
                }
            }
            What::Command(CommandEvent::Resumed {
                key,
                token,
                late: true,
            }) => {
                late.insert((e.actor, key.as_str(), *token));
            }
            _ => {}
        }
    }
    // Per key and token: the earliest first write of any LATER token.
    let mut later: BTreeMap<&str, BTreeMap<u64, First>> = BTreeMap::new();
    for (key, tokens) in &first {
        let mut best: Option<First> = None;
        let mut out = BTreeMap::new();
        for (token, f) in tokens.iter().rev() {
            if let Some(b) = best {
                out.insert(*token, b);
            }
            if best.is_none_or(|b| (f.at, f.event) < (b.at, b.event)) {
                best = Some(*f);
            }
        }
        later.insert(key, out);
    }
    let mut out = Vec::new();
    let mut reported: BTreeSet<(&str, u64)> = BTreeSet::new();
    for (key, token, at, event, actor) in judged {
        let Some(next) = later.get(key).and_then(|m| m.get(&token)) else {
            continue;
        };
        if at < next.at || reported.contains(&(key, token)) {
            continue;
        }
        reported.insert((key, token));
        out.push(Violation::new(
            Invariant::SupervisedExclusion,
            format!(
                "{actor}'s supervised command (token {token}) wrote {key} at {}, but {} (token {}) had already written it at {}: the command outlived its lease",
                fmt_time(at),
                next.actor,
                next.token,
                fmt_time(next.at)
            ),
            shown
                .get(&(actor, key, token))
                .into_iter()
                .flatten()
                .copied()
                .chain([next.event, event])
                .collect(),
            vec![actor, next.actor],
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
    use crate::invariants::testing::{accepted, c, ev};

    fn write(ms: u64, who: u16, token: u64) -> Event {
        ev(
            ms,
            c(who),
            What::Command(CommandEvent::Write {
                key: "k".into(),
                token,
                n: 1,
            }),
        )
    }
    fn resumed(ms: u64, who: u16, token: u64, late: bool) -> Event {
        ev(
            ms,
            c(who),
            What::Command(CommandEvent::Resumed {
                key: "k".into(),
                token,
                late,
            }),
        )
    }

    #[test]
    fn a_command_that_stops_before_the_next_grant_writes_passes() {
        let h = vec![
            write(10, 1, 1),
            write(20, 1, 1),
            accepted(30, c(2), 2, None, "v1"),
            write(40, 3, 3),
            accepted(50, c(1), 4, Some("v1"), "v2"),
        ];
        assert!(check(&h).is_empty());
    }

    #[test]
    fn a_command_write_after_a_later_fenced_write_fails() {
        let h = vec![
            write(10, 1, 1),
            accepted(30, c(2), 2, None, "v1"),
            write(31, 1, 1),
            write(32, 1, 1),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 1, "one report per grant: {v:?}");
        assert_eq!(v[0].invariant, Invariant::SupervisedExclusion);
        assert_eq!(v[0].events, vec![1, 2]);
        assert_eq!(v[0].actors, vec![c(1), c(2)]);
        assert!(v[0].message.contains("token 1"), "{}", v[0].message);
    }

    #[test]
    fn the_report_shows_the_commands_start_and_stop() {
        let start = ev(
            0,
            c(1),
            What::Command(CommandEvent::Start {
                key: "k".into(),
                token: 1,
                run_ms: 900,
                grace_ms: 100,
                on_term: crate::history::OnTerm::Ignore,
            }),
        );
        let term = ev(
            20,
            c(1),
            What::Command(CommandEvent::Terminate {
                key: "k".into(),
                token: 1,
                cause: statelock::protocol::StopCause::LeaseRunningOut,
            }),
        );
        let h = vec![
            start,
            write(10, 1, 1),
            term,
            accepted(30, c(2), 2, None, "v1"),
            write(31, 1, 1),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].events, vec![0, 2, 3, 4]);
    }

    #[test]
    fn a_command_write_after_a_later_command_write_fails_even_at_the_same_instant() {
        let h = vec![write(10, 1, 1), write(20, 2, 2), write(20, 1, 1)];
        let v = check(&h);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].events, vec![1, 2]);
    }

    #[test]
    fn the_earliest_later_grant_counts_whatever_its_token() {
        // Token 3 wrote before token 2 (2's holder wrote late): a command of
        // token 1 writing between them is caught against token 3.
        let h = vec![
            accepted(10, c(3), 3, None, "v1"),
            write(15, 1, 1),
            accepted(20, c(2), 2, Some("v1"), "v2"),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 1);
        assert!(v[0].message.contains("c3 (token 3)"), "{}", v[0].message);
    }

    #[test]
    fn writes_of_other_keys_and_earlier_grants_do_not_count() {
        let mut other = accepted(5, c(2), 9, None, "v1");
        if let What::StateAccepted { key, .. } = &mut other.what {
            *key = "other".into();
        }
        let h = vec![accepted(1, c(3), 1, None, "v0"), other, write(10, 1, 2)];
        assert!(check(&h).is_empty());
    }

    #[test]
    fn writes_after_a_late_resume_are_not_judged_but_earlier_ones_are() {
        let h = vec![
            write(10, 1, 1),
            resumed(500, 1, 1, true),
            accepted(480, c(2), 2, None, "v1"),
            write(501, 1, 1),
        ];
        assert!(check(&h).is_empty());
        // A resume in time changes nothing.
        let h = vec![
            write(10, 1, 1),
            resumed(300, 1, 1, false),
            accepted(480, c(2), 2, None, "v1"),
            write(501, 1, 1),
        ];
        assert_eq!(check(&h).len(), 1);
        // Another grant's late resume excuses nothing.
        let h = vec![
            resumed(300, 1, 7, true),
            accepted(480, c(2), 2, None, "v1"),
            write(501, 1, 1),
        ];
        assert_eq!(check(&h).len(), 1);
    }
}
