//! The trace of a run: every event that matters to a checker or to a human
//! reading a failure, stamped with TRUE simulated time (turmoil's clock, not a
//! client's skewed one). The checkers in [`crate::invariants`] are pure
//! functions of a `&[Event]`, so hand-made histories test them.
//!
//! Events are appended in execution order (deterministic: the simulation is
//! single-threaded). Within one simulation step, hosts run one after another,
//! so two hosts' timestamps may differ by up to one tick against that order.

use statelock::protocol::StopCause;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// A client host's index.
pub type ClientId = u16;

/// Who did something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Actor {
    /// The simulator (fault injection, run control).
    Sim,
    /// Store host `i` (`0`: the only one, or the first of a quorum; it
    /// also serves the state objects).
    Store(u8),
    /// The operator host (force-unlocks).
    Operator,
    /// Client host `i`.
    Client(ClientId),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Sim => f.write_str("sim"),
            Actor::Store(0) => f.write_str("store"),
            Actor::Store(i) => write!(f, "store{i}"),
            Actor::Operator => f.write_str("operator"),
            Actor::Client(i) => write!(f, "c{i}"),
        }
    }
}

/// The action a validity check guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarded {
    /// Sealing the state (right after the grant).
    Seal,
    /// Reading the state.
    Load,
    /// Going on with long work between the read and the write.
    Work,
    /// Writing the state.
    Save,
}

/// A lock record as the checkers see it (statelock or naive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView {
    /// The lease (or naive lock id) that holds or last held it.
    pub owner: u128,
    /// The fencing token (naive: the store's grant counter, never enforced).
    pub token: u64,
    /// The record version (naive records have none).
    pub rvn: Option<u128>,
    /// Released (naive: deleted).
    pub released: bool,
    /// The hand-off queue: the lease ids of the registered waiters, first
    /// registered first (naive records have none).
    pub queue: Vec<u128>,
}

impl fmt::Display for RecordView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{owner {} token {}", short(self.owner), self.token)?;
        if let Some(rvn) = self.rvn {
            write!(f, " rvn {}", short(rvn))?;
        }
        if self.released {
            f.write_str(" released")?;
        }
        if !self.queue.is_empty() {
            let ids: Vec<String> = self.queue.iter().map(|w| short(*w)).collect();
            write!(f, " queue [{}]", ids.join(" "))?;
        }
        f.write_str("}")
    }
}

/// The last 8 hex digits of an id, for traces.
pub fn short(id: u128) -> String {
    format!("{:08x}", id as u32)
}

/// Kinds of lock-store writes, both protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockOpKind {
    /// Grant of a free record.
    Acquire,
    /// Grant by takeover of a record version observed for a whole lease.
    Takeover,
    /// Renewal by the owner.
    Heartbeat,
    /// Release by the owner.
    Release,
    /// Release by an operator, conditional on the version seen.
    ForceUnlock,
    /// A waiter registers at the end of the record's hand-off queue (the
    /// record's version, owner and token stay).
    Enqueue,
    /// A waiter that gives up leaves the queue (the record's version, owner
    /// and token stay).
    Leave,
}

impl LockOpKind {
    /// True for grants.
    pub fn is_grant(self) -> bool {
        matches!(self, LockOpKind::Acquire | LockOpKind::Takeover)
    }
}

impl fmt::Display for LockOpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockOpKind::Acquire => "acquire",
            LockOpKind::Takeover => "takeover",
            LockOpKind::Heartbeat => "heartbeat",
            LockOpKind::Release => "release",
            LockOpKind::ForceUnlock => "force-unlock",
            LockOpKind::Enqueue => "enqueue",
            LockOpKind::Leave => "leave",
        })
    }
}

/// A lock-store write the store applied, with the record before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedOp {
    /// The key written.
    pub key: String,
    /// The write.
    pub kind: LockOpKind,
    /// The owner the write was made for (heartbeat/release: the sender's
    /// lease; grants: the new lease; enqueue/leave: the waiter's lease;
    /// force-unlock: none).
    pub owner: Option<u128>,
    /// The record version the write was conditional on (heartbeat/release:
    /// the sender's current version; takeover/force-unlock: the observed one).
    pub expected_rvn: Option<u128>,
    /// The record before the write.
    pub prev: Option<RecordView>,
    /// The record after the write (`None`: deleted, naive release).
    pub next: Option<RecordView>,
}

/// What happened to a state write, as its client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaveOutcome {
    /// Accepted; the new version.
    Accepted(String),
    /// Rejected; why.
    Rejected(String),
    /// No answer: it may or may not have landed.
    Unknown(String),
}

/// What a command does when asked to stop (SIGTERM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTerm {
    /// Ignores it: only SIGKILL (or the end of its work) stops it.
    Ignore,
    /// Stops this long after it.
    StopAfter(Duration),
}

impl fmt::Display for OnTerm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OnTerm::Ignore => f.write_str("ignores SIGTERM"),
            OnTerm::StopAfter(d) => write!(f, "stops {}ms after SIGTERM", d.as_millis()),
        }
    }
}

/// A supervised command's events (actor: its client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandEvent {
    /// The command started, under the holder's grant.
    Start {
        /// The key held.
        key: String,
        /// The holder's token.
        token: u64,
        /// How long its work takes if nobody stops it.
        run_ms: u64,
        /// The stop plan's grace period.
        grace_ms: u64,
        /// What it does on SIGTERM.
        on_term: OnTerm,
    },
    /// An unfenced write by the command.
    Write {
        /// The key held.
        key: String,
        /// The holder's token.
        token: u64,
        /// 1 for its first write, then +1.
        n: u32,
    },
    /// The supervisor asked the command to stop (SIGTERM).
    Terminate {
        /// The key held.
        key: String,
        /// The holder's token.
        token: u64,
        /// Why.
        cause: StopCause,
    },
    /// The supervisor killed the command (SIGKILL): it writes nothing more.
    Kill {
        /// The key held.
        key: String,
        /// The holder's token.
        token: u64,
    },
    /// The command exited by itself.
    Exit {
        /// The key held.
        key: String,
        /// The holder's token.
        token: u64,
        /// Why.
        reason: String,
    },
    /// The process runs again after a pause; `late`: its clock is past the
    /// kill time (`deadline − kill_margin`), so the supervisor could not stop
    /// the command in time and its later writes are not judged.
    Resumed {
        /// The key held.
        key: String,
        /// The holder's token.
        token: u64,
        /// Frozen past the kill time.
        late: bool,
    },
}

impl CommandEvent {
    /// The key and token the command acts under.
    pub fn grant(&self) -> (&str, u64) {
        match self {
            CommandEvent::Start { key, token, .. }
            | CommandEvent::Write { key, token, .. }
            | CommandEvent::Terminate { key, token, .. }
            | CommandEvent::Kill { key, token }
            | CommandEvent::Exit { key, token, .. }
            | CommandEvent::Resumed { key, token, .. } => (key, *token),
        }
    }
}

impl fmt::Display for CommandEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandEvent::Start {
                key,
                token,
                run_ms,
                grace_ms,
                on_term,
            } => write!(
                f,
                "command starts under {key} token {token}: works {run_ms}ms, grace {grace_ms}ms, {on_term}"
            ),
            CommandEvent::Write { key, token, n } => {
                write!(f, "command write #{n} (unfenced) under {key} token {token}")
            }
            CommandEvent::Terminate { key, token, cause } => {
                write!(f, "SIGTERM command under {key} token {token} ({cause:?})")
            }
            CommandEvent::Kill { key, token } => {
                write!(f, "SIGKILL command under {key} token {token}")
            }
            CommandEvent::Exit { key, token, reason } => {
                write!(f, "command under {key} token {token} exits: {reason}")
            }
            CommandEvent::Resumed { key, token, late } => write!(
                f,
                "supervisor of {key} token {token} runs again{}",
                if *late {
                    ": PAST THE KILL TIME, later command writes are not judged"
                } else {
                    ""
                }
            ),
        }
    }
}

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    // ---- run control and faults (actor: Sim) ----
    /// A fault began.
    Fault(String),
    /// A fault ended.
    Heal(String),
    /// A host was crashed.
    Crash(Actor),
    /// A crashed host was restarted.
    Restart(Actor),
    /// A store host lost its lock records (it comes back empty when it
    /// restarts): the writes it acknowledged are gone.
    Wiped(Actor),
    /// Faults stop from here on (all were healed); liveness is judged after
    /// the last pause that started before this ends.
    Quiet,
    /// The store's record of a key when the run ended (for audits).
    FinalRecord {
        /// The store host whose record it is.
        store: Actor,
        /// The key.
        key: String,
        /// The record (`None`: absent).
        record: Option<RecordView>,
    },
    /// The run ended.
    End {
        /// False if it was cut at the time limit.
        finished: bool,
    },

    // ---- client side ----
    /// A client process (re)started with this clock.
    ClientStarted {
        /// 1 for the first start, then +1 per restart.
        incarnation: u32,
        /// Clock rate relative to real time, in ppm offset (1.001 → 1000).
        rate_ppm: i64,
        /// Wall clock minus true time, ms.
        wall_skew_ms: i64,
    },
    /// The client's clock rate changed.
    ClockRate {
        /// New rate, ppm offset from 1.
        rate_ppm: i64,
    },
    /// The client's wall clock jumped.
    WallStep {
        /// The jump, ms.
        delta_ms: i64,
    },
    /// The client starts waiting for a lock.
    AcquireStart {
        /// The key.
        key: String,
        /// The client's op number.
        op: u32,
    },
    /// `acquire` returned a lock: the client believes it holds it from here.
    Acquired {
        /// The key.
        key: String,
        /// The client's op number.
        op: u32,
        /// The fencing token granted.
        token: u64,
        /// The lease id (record owner).
        owner: u128,
    },
    /// `acquire` gave up.
    AcquireFailed {
        /// The key.
        key: String,
        /// The client's op number.
        op: u32,
        /// Why.
        error: String,
    },
    /// The client asked its guard whether it still holds the lock, right
    /// before a protected action.
    Check {
        /// The key.
        key: String,
        /// The guard's token.
        token: u64,
        /// The answer.
        valid: bool,
        /// The action about to be taken.
        before: Guarded,
    },
    /// The holder sealed the state (raised its fence to the holder's token)
    /// — or tried to.
    Sealed {
        /// The key.
        key: String,
        /// The holder's token (after a re-base, if the fence was ahead).
        token: u64,
        /// What happened (`Accepted`: the sealed version).
        outcome: SaveOutcome,
    },
    /// The client read the state.
    Loaded {
        /// The key.
        key: String,
        /// The reader's token (0: naive).
        token: u64,
        /// The version read (`None`: no state yet).
        version: Option<String>,
    },
    /// Reading the state failed; the op is abandoned.
    LoadFailed {
        /// The key.
        key: String,
        /// Why.
        error: String,
    },
    /// The process froze (no heartbeats, no actions).
    PauseStart {
        /// The key held.
        key: String,
        /// The token held.
        token: u64,
        /// Length of the pause, ms.
        ms: u64,
    },
    /// The process runs again.
    PauseEnd {
        /// The key held.
        key: String,
        /// The token held.
        token: u64,
    },
    /// The client tried to write the state.
    Saved {
        /// The key.
        key: String,
        /// The writer's token.
        token: u64,
        /// The version the write was based on.
        expected: Option<String>,
        /// What happened.
        outcome: SaveOutcome,
    },
    /// The client stopped acting on a lock it no longer holds.
    Abandoned {
        /// The key.
        key: String,
        /// The token.
        token: u64,
        /// Why.
        reason: String,
    },
    /// The client released (or tried to).
    Released {
        /// The key.
        key: String,
        /// The token.
        token: u64,
        /// `ok` or the error.
        result: String,
    },
    /// A store request got no answer (timeout, connection lost).
    RpcFailed {
        /// The request.
        request: String,
        /// The error.
        error: String,
    },
    /// The client has done all its ops.
    Finished,
    /// A supervised command's event (see [`crate::command`]).
    Command(CommandEvent),

    // ---- operator ----
    /// The operator tried to force-unlock a lock held by a crashed client.
    ForceAttempt {
        /// The key.
        key: String,
        /// The record version the operator saw.
        seen: u128,
        /// `ok` or the error.
        result: String,
    },

    // ---- store side ----
    /// The store host (re)started; its data survived.
    StoreStarted,
    /// The store applied a lock write.
    LockApplied {
        /// The sender.
        from: Actor,
        /// The write, with the record before and after.
        op: AppliedOp,
    },
    /// The store rejected a lock write (its condition failed).
    LockRejected {
        /// The sender.
        from: Actor,
        /// The key.
        key: String,
        /// The write.
        kind: LockOpKind,
        /// The record it failed against.
        current: Option<RecordView>,
    },
    /// The store accepted a seal of a key's state: its fence is now the
    /// sealer's token and lease; the content is unchanged.
    StateSealed {
        /// The sender.
        from: Actor,
        /// The key.
        key: String,
        /// The sealer's token (the new fence).
        token: u64,
        /// The sealer's lease.
        lease: u128,
        /// The version sealed over (`None`: no state yet).
        expected: Option<String>,
        /// The version it created.
        version: String,
    },
    /// The store accepted a state write (a save).
    StateAccepted {
        /// The sender.
        from: Actor,
        /// The key.
        key: String,
        /// The writer's token (naive: its grant counter, not enforced).
        token: u64,
        /// The version the write was based on.
        expected: Option<String>,
        /// The version it created.
        version: String,
        /// Who wrote it (`c<id>#<op>`).
        body: String,
        /// The document's counter (one more per save; `None`: naive).
        counter: Option<u64>,
    },
    /// The store rejected a state write.
    StateRejected {
        /// The sender.
        from: Actor,
        /// The key.
        key: String,
        /// The writer's token.
        token: u64,
        /// Why.
        reason: String,
    },
}

/// One event of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// True simulated time since the start of the run.
    pub at: Duration,
    /// Who.
    pub actor: Actor,
    /// What.
    pub what: What,
}

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("none")
}

fn rate(ppm: i64) -> String {
    format!("{:.6}", 1.0 + ppm as f64 / 1e6)
}

impl fmt::Display for What {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            What::Fault(s) => write!(f, "FAULT {s}"),
            What::Heal(s) => write!(f, "heal {s}"),
            What::Crash(a) => write!(f, "CRASH {a}"),
            What::Restart(a) => write!(f, "restart {a}"),
            What::Quiet => f.write_str("faults stop; everything healed"),
            What::FinalRecord { store, key, record } => match record {
                Some(r) => write!(f, "final record {key} on {store}: {r}"),
                None => write!(f, "final record {key} on {store}: absent"),
            },
            What::Wiped(a) => write!(f, "WIPE {a}: its lock records are lost"),
            What::End { finished } => {
                write!(
                    f,
                    "end ({})",
                    if *finished {
                        "all ops done"
                    } else {
                        "TIME LIMIT"
                    }
                )
            }
            What::ClientStarted {
                incarnation,
                rate_ppm,
                wall_skew_ms,
            } => write!(
                f,
                "process start #{incarnation}: clock rate {} wall skew {wall_skew_ms:+}ms",
                rate(*rate_ppm)
            ),
            What::ClockRate { rate_ppm } => write!(f, "clock rate -> {}", rate(*rate_ppm)),
            What::WallStep { delta_ms } => write!(f, "wall clock steps {delta_ms:+}ms"),
            What::AcquireStart { key, op } => write!(f, "op {op}: acquire {key} ..."),
            What::Acquired {
                key,
                op,
                token,
                owner,
            } => write!(
                f,
                "op {op}: ACQUIRED {key} token {token} lease {}",
                short(*owner)
            ),
            What::AcquireFailed { key, op, error } => {
                write!(f, "op {op}: acquire {key} failed: {error}")
            }
            What::Check {
                key,
                token,
                valid,
                before,
            } => write!(
                f,
                "check before {before:?} on {key} token {token}: {}",
                if *valid { "valid" } else { "NOT valid" }
            ),
            What::Sealed {
                key,
                token,
                outcome,
            } => {
                write!(f, "seal {key} token {token}: ")?;
                match outcome {
                    SaveOutcome::Accepted(v) => write!(f, "sealed at {v}"),
                    SaveOutcome::Rejected(r) => write!(f, "failed: {r}"),
                    SaveOutcome::Unknown(r) => write!(f, "unknown: {r}"),
                }
            }
            What::Loaded {
                key,
                token,
                version,
            } => write!(f, "load {key} token {token}: version {}", opt(version)),
            What::LoadFailed { key, error } => write!(f, "load {key} failed: {error}"),
            What::PauseStart { key, token, ms } => {
                write!(f, "PAUSE {ms}ms holding {key} token {token}")
            }
            What::PauseEnd { key, token } => write!(f, "resume ({key} token {token})"),
            What::Saved {
                key,
                token,
                expected,
                outcome,
            } => {
                write!(f, "save {key} token {token} on {}: ", opt(expected))?;
                match outcome {
                    SaveOutcome::Accepted(v) => write!(f, "accepted as {v}"),
                    SaveOutcome::Rejected(r) => write!(f, "rejected: {r}"),
                    SaveOutcome::Unknown(r) => write!(f, "unknown: {r}"),
                }
            }
            What::Abandoned { key, token, reason } => {
                write!(f, "abandon {key} token {token}: {reason}")
            }
            What::Released { key, token, result } => {
                write!(f, "release {key} token {token}: {result}")
            }
            What::RpcFailed { request, error } => write!(f, "rpc {request}: {error}"),
            What::Finished => f.write_str("all ops done"),
            What::Command(c) => write!(f, "{c}"),
            What::ForceAttempt { key, seen, result } => {
                write!(f, "force-unlock {key} seen rvn {}: {result}", short(*seen))
            }
            What::StoreStarted => f.write_str("store up"),
            What::LockApplied { from, op } => {
                write!(f, "{} {} from {from}: ", op.kind, op.key)?;
                match &op.prev {
                    Some(p) => write!(f, "{p}")?,
                    None => f.write_str("{}")?,
                }
                f.write_str(" -> ")?;
                match &op.next {
                    Some(n) => write!(f, "{n}"),
                    None => f.write_str("deleted"),
                }
            }
            What::LockRejected {
                from,
                key,
                kind,
                current,
            } => {
                write!(f, "{kind} {key} from {from} rejected; record ")?;
                match current {
                    Some(c) => write!(f, "{c}"),
                    None => f.write_str("absent"),
                }
            }
            What::StateSealed {
                from,
                key,
                token,
                lease,
                expected,
                version,
            } => write!(
                f,
                "state {key} SEALED by {from} token {token} lease {}: {} -> {version}",
                short(*lease),
                opt(expected)
            ),
            What::StateAccepted {
                from,
                key,
                token,
                expected,
                version,
                body,
                counter,
            } => {
                write!(
                    f,
                    "state {key} from {from} token {token}: {} -> {version} ({body}",
                    opt(expected)
                )?;
                match counter {
                    Some(n) => write!(f, ", counter {n})"),
                    None => f.write_str(")"),
                }
            }
            What::StateRejected {
                from,
                key,
                token,
                reason,
            } => write!(
                f,
                "state {key} from {from} token {token} rejected: {reason}"
            ),
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>9} {:>8}  {}",
            fmt_time(self.at),
            self.actor,
            self.what
        )
    }
}

/// `12.345s`.
pub fn fmt_time(d: Duration) -> String {
    format!("{}.{:03}s", d.as_secs(), d.subsec_millis())
}

/// The shared, append-only event log of one run. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    events: Arc<Mutex<Vec<Event>>>,
}

impl Recorder {
    /// An empty log.
    pub fn new() -> Self {
        Recorder::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Event>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an event now (inside a simulated host).
    pub fn record(&self, actor: Actor, what: What) {
        self.record_at(now(), actor, what);
    }

    /// Records an event at `at`.
    pub fn record_at(&self, at: Duration, actor: Actor, what: What) {
        self.lock().push(Event { at, actor, what });
    }

    /// Takes every event recorded so far.
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.lock())
    }

    /// Number of events so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// True simulated time, read inside a host.
pub fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// Renders events `lo..hi` (clamped) whose actor or text concerns one of
/// `about`, at most `max` lines, marking the indices in `mark`.
pub fn excerpt(
    events: &[Event],
    lo: usize,
    hi: usize,
    about: &[Actor],
    mark: &[usize],
    max: usize,
) -> String {
    let hi = hi.min(events.len());
    let lo = lo.min(hi);
    let mut lines: Vec<String> = Vec::new();
    for (i, e) in events.iter().enumerate().take(hi).skip(lo) {
        let relevant = about.is_empty()
            || about.contains(&e.actor)
            || matches!(e.actor, Actor::Sim)
            || match &e.what {
                What::LockApplied { from, .. }
                | What::LockRejected { from, .. }
                | What::StateAccepted { from, .. }
                | What::StateSealed { from, .. }
                | What::StateRejected { from, .. } => about.contains(from),
                _ => false,
            };
        if relevant || mark.contains(&i) {
            let m = if mark.contains(&i) { ">>" } else { "  " };
            lines.push(format!("{m} #{i:<6} {e}"));
        }
    }
    if lines.len() > max {
        // Keep the marked lines and their neighbourhood, cut the middle.
        let keep: Vec<bool> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                l.starts_with(">>")
                    || lines[i.saturating_sub(3)..(i + 4).min(lines.len())]
                        .iter()
                        .any(|n| n.starts_with(">>"))
            })
            .collect();
        let mut out = Vec::new();
        let mut skipped = 0;
        for (l, k) in lines.iter().zip(keep) {
            if k {
                if skipped > 0 {
                    out.push(format!("   ... {skipped} events ..."));
                    skipped = 0;
                }
                out.push(l.clone());
            } else {
                skipped += 1;
            }
        }
        if skipped > 0 {
            out.push(format!("   ... {skipped} events ..."));
        }
        lines = out;
    }
    lines.join("\n")
}
