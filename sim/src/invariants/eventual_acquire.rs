//! `EventualAcquire` (liveness): once faults stop, a waiting client acquires
//! within `lease × (1 + ρ) + margin +` one backoff cap.
//!
//! "Faults stop" is the later of the `Quiet` event (every partition repaired,
//! every held message released, every crashed host restarted) and the end of
//! the last process pause. The bound passed in adds slack for the requests in
//! flight and is scaled by the slowest clock rate (see `run::liveness_bound`).
//!
//! Under faults the protocol promises no order between *live* contenders
//! (the hand-off queue's order, `FifoGrant`, is judged only in runs without
//! faults: a head that does not act in time is skipped), so what is
//! checked is that a waiter is never blocked: from the
//! moment it waits after faults stop, the key is granted — to it or to
//! another client — at least once per bound, and its own wait ends (granted
//! or given up) before the run does. A dead, paused, partitioned or ghost
//! holder that is not taken over in time shows up as a gap longer than the
//! bound.

use super::verdict::{Invariant, Violation, MAX_PER_CHECK};
use crate::history::{fmt_time, Actor, Event, What};
use std::collections::BTreeMap;
use std::time::Duration;

/// When faults stopped: the `Quiet` event, or later the end of a pause.
pub fn faults_stopped_at(events: &[Event]) -> Option<Duration> {
    let quiet = events.iter().find(|e| e.what == What::Quiet)?.at;
    let last_pause_end = events
        .iter()
        .filter(|e| matches!(e.what, What::PauseEnd { .. }))
        .map(|e| e.at)
        .max()
        .unwrap_or_default();
    Some(quiet.max(last_pause_end))
}

struct Wait {
    client: Actor,
    key: String,
    start: Duration,
    start_event: usize,
    end: Duration,
    end_event: Option<usize>,
}

/// Checks the trace against `bound`.
pub fn check(events: &[Event], bound: Duration) -> Vec<Violation> {
    let Some(t) = faults_stopped_at(events) else {
        return Vec::new();
    };
    let end = events
        .iter()
        .rev()
        .find(|e| matches!(e.what, What::End { .. }))
        .map(|e| e.at)
        .unwrap_or_else(|| events.last().map(|e| e.at).unwrap_or_default());

    // Grants per key (store side), in time order.
    let mut grants: BTreeMap<&str, Vec<(Duration, usize)>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        if let What::LockApplied { op, .. } = &e.what {
            if op.kind.is_grant() {
                grants.entry(op.key.as_str()).or_default().push((e.at, i));
            }
        }
    }
    for list in grants.values_mut() {
        list.sort();
    }

    // Waits per client.
    let mut waits: Vec<Wait> = Vec::new();
    let mut open: BTreeMap<Actor, usize> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        match &e.what {
            What::AcquireStart { key, .. } => {
                open.insert(e.actor, waits.len());
                waits.push(Wait {
                    client: e.actor,
                    key: key.clone(),
                    start: e.at,
                    start_event: i,
                    end,
                    end_event: None,
                });
            }
            What::Acquired { .. } | What::AcquireFailed { .. } => {
                if let Some(w) = open.remove(&e.actor) {
                    waits[w].end = e.at;
                    waits[w].end_event = Some(i);
                }
            }
            What::Crash(who) => {
                if let Some(w) = open.remove(who) {
                    waits[w].end = e.at;
                    waits[w].end_event = Some(i);
                }
            }
            _ => {}
        }
    }

    let mut out = Vec::new();
    for w in &waits {
        if w.end <= t {
            continue;
        }
        let from = w.start.max(t);
        let mut last = (from, w.start_event);
        let key_grants = grants.get(w.key.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        let mut points: Vec<(Duration, usize)> = key_grants
            .iter()
            .copied()
            .filter(|(at, _)| *at > from && *at < w.end)
            .collect();
        points.push((w.end, w.end_event.unwrap_or(w.start_event)));
        for (at, idx) in points {
            if at.saturating_sub(last.0) > bound {
                let still = w.end_event.is_none() && at == w.end;
                out.push(Violation::new(
                    Invariant::EventualAcquire,
                    format!(
                        "{} waited for {} from {} and nobody was granted it between {} and {} ({} > bound {}; faults stopped at {}){}",
                        w.client,
                        w.key,
                        fmt_time(w.start),
                        fmt_time(last.0),
                        fmt_time(at),
                        fmt_time(at - last.0),
                        fmt_time(bound),
                        fmt_time(t),
                        if still { "; it was still waiting when the run ended" } else { "" }
                    ),
                    vec![w.start_event, last.1, idx],
                    vec![w.client],
                ));
                if out.len() >= MAX_PER_CHECK {
                    return out;
                }
                break;
            }
            last = (at, idx);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::LockOpKind::*;
    use crate::invariants::testing::{applied, c, ev, rec};

    fn start(ms: u64, who: u16) -> Event {
        ev(
            ms,
            c(who),
            What::AcquireStart {
                key: "k".into(),
                op: 0,
            },
        )
    }
    fn got(ms: u64, who: u16) -> Event {
        ev(
            ms,
            c(who),
            What::Acquired {
                key: "k".into(),
                op: 0,
                token: 1,
                owner: 1,
            },
        )
    }
    fn quiet(ms: u64) -> Event {
        ev(ms, Actor::Sim, What::Quiet)
    }
    fn end(ms: u64) -> Event {
        ev(ms, Actor::Sim, What::End { finished: true })
    }
    fn grant(ms: u64, who: u16) -> Event {
        applied(
            ms,
            c(who),
            Takeover,
            Some(9),
            Some(1),
            None,
            Some(rec(9, 2, 2, false)),
        )
    }
    const BOUND: Duration = Duration::from_millis(1000);

    #[test]
    fn waits_within_the_bound_pass() {
        let h = vec![
            quiet(100),
            start(200, 1),
            grant(900, 2),
            grant(1800, 1),
            got(1801, 1),
            end(2000),
        ];
        assert!(check(&h, BOUND).is_empty());
    }

    #[test]
    fn waits_before_faults_stop_are_not_judged() {
        let h = vec![start(0, 1), got(5000, 1), quiet(6000), end(7000)];
        assert!(check(&h, BOUND).is_empty());
    }

    #[test]
    fn a_blocked_waiter_fails() {
        let h = vec![quiet(100), start(200, 1), got(1500, 1), end(2000)];
        let v = check(&h, BOUND);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].invariant, Invariant::EventualAcquire);
    }

    #[test]
    fn a_waiter_still_waiting_at_the_end_fails() {
        let h = vec![quiet(100), start(200, 1), end(5000)];
        let v = check(&h, BOUND);
        assert_eq!(v.len(), 1);
        assert!(v[0].message.contains("still waiting"), "{}", v[0].message);
    }

    #[test]
    fn the_clock_starts_after_the_last_pause() {
        let h = vec![
            start(0, 1),
            quiet(100),
            ev(
                1200,
                c(2),
                What::PauseEnd {
                    key: "k".into(),
                    token: 1,
                },
            ),
            got(2100, 1),
            end(3000),
        ];
        assert!(check(&h, BOUND).is_empty());
    }
}
