//! Helpers to write hand-made histories for the checkers' tests.
use crate::history::{Actor, AppliedOp, Event, LockOpKind, RecordView, What};
use std::time::Duration;

pub fn ev(ms: u64, actor: Actor, what: What) -> Event {
    Event {
        at: Duration::from_millis(ms),
        actor,
        what,
    }
}

pub fn c(i: u16) -> Actor {
    Actor::Client(i)
}

pub fn rec(owner: u128, token: u64, rvn: u128, released: bool) -> RecordView {
    RecordView {
        owner,
        token,
        rvn: Some(rvn),
        released,
        queue: Vec::new(),
    }
}

pub fn applied(
    ms: u64,
    from: Actor,
    kind: LockOpKind,
    owner: Option<u128>,
    expected: Option<u128>,
    prev: Option<RecordView>,
    next: Option<RecordView>,
) -> Event {
    ev(
        ms,
        Actor::Store(0),
        What::LockApplied {
            from,
            op: AppliedOp {
                key: "k".into(),
                kind,
                owner,
                expected_rvn: expected,
                prev,
                next,
            },
        },
    )
}

pub fn accepted(ms: u64, from: Actor, token: u64, expected: Option<&str>, version: &str) -> Event {
    ev(
        ms,
        Actor::Store(0),
        What::StateAccepted {
            from,
            key: "k".into(),
            token,
            expected: expected.map(str::to_string),
            version: version.into(),
            body: format!("{from}"),
            counter: None,
        },
    )
}

pub fn saved(
    ms: u64,
    from: Actor,
    token: u64,
    expected: Option<&str>,
    version: &str,
    counter: u64,
) -> Event {
    ev(
        ms,
        Actor::Store(0),
        What::StateAccepted {
            from,
            key: "k".into(),
            token,
            expected: expected.map(str::to_string),
            version: version.into(),
            body: format!("{from}"),
            counter: Some(counter),
        },
    )
}

pub fn sealed(ms: u64, from: Actor, token: u64, expected: Option<&str>, version: &str) -> Event {
    ev(
        ms,
        Actor::Store(0),
        What::StateSealed {
            from,
            key: "k".into(),
            token,
            lease: u128::from(token),
            expected: expected.map(str::to_string),
            version: version.into(),
        },
    )
}

pub fn loaded(ms: u64, who: Actor, token: u64, version: Option<&str>) -> Event {
    ev(
        ms,
        who,
        What::Loaded {
            key: "k".into(),
            token,
            version: version.map(str::to_string),
        },
    )
}
