//! The quorum store: one lock over N independent member stores that keeps
//! working while a majority of them answers (PROTOCOL.md, "Quorum lock").
//!
//! It is itself a [`LockStore`], so the client, its timed takeover, `exec`
//! and the state seal run on it unchanged. The rules (what a view of the
//! members stands for, which conditional write each member gets, when an op
//! has succeeded) are pure functions in [`view`]; this module only sends
//! the members their requests in parallel and collects the answers. It
//! returns as soon as the answers decide an op; the other members' requests
//! keep running in the background, so a member that is merely slow still
//! receives the write.

pub mod view;

use crate::protocol::{FencingToken, LockKey, LockOp, LockRecord, OpKind, RecordVersion};
use crate::store::{DamagedRecord, Listing, LockStore, StoreError};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use view::{majority, member_ops, verdict, MemberRead, MemberResult, Seen, Verdict, View};

/// The most members a quorum store takes.
pub const MAX_MEMBERS: usize = 9;

/// The least time a request waits for the remaining members once a
/// majority has answered (see [`QuorumStore::with_straggler_wait`]).
pub const STRAGGLER_WAIT: Duration = Duration::from_millis(100);

/// Views remembered per key (the ops a client sends name one of the last
/// few views it was shown).
const VIEWS_PER_KEY: usize = 8;

/// A lock store over N member stores (N odd, 3 to [`MAX_MEMBERS`]).
pub struct QuorumStore {
    members: Vec<Arc<dyn LockStore>>,
    straggler_wait: Duration,
    views: Mutex<HashMap<LockKey, Vec<View>>>,
}

impl fmt::Debug for QuorumStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuorumStore")
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

/// One member's answer for a key in [`QuorumStore::member_views`].
// A few per operator command, moved once: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberView {
    /// The member's record (or its absence, with its floor).
    Read(MemberRead),
    /// The member did not answer usefully: why.
    Error(StoreError),
}

impl QuorumStore {
    /// A quorum over `members` (in this order). Refuses an even count, fewer
    /// than 3 or more than [`MAX_MEMBERS`] members, and two members that
    /// are the same place.
    pub fn new(members: Vec<Arc<dyn LockStore>>) -> Result<QuorumStore, StoreError> {
        let n = members.len();
        if !(3..=MAX_MEMBERS).contains(&n) || n.is_multiple_of(2) {
            return Err(StoreError::Misconfigured(format!(
                "a quorum store needs an odd number of member stores from 3 to {MAX_MEMBERS}, \
                 got {n}"
            )));
        }
        let mut places = std::collections::BTreeSet::new();
        for m in &members {
            if let Some(place) = m.shared_name() {
                if !places.insert(place.clone()) {
                    return Err(StoreError::Misconfigured(format!(
                        "the quorum lists the store {place} twice; its members must be \
                         independent stores"
                    )));
                }
            }
        }
        Ok(QuorumStore {
            members,
            straggler_wait: STRAGGLER_WAIT,
            views: Mutex::new(HashMap::new()),
        })
    }

    /// Sets how long a request waits for the other members once a majority
    /// has answered: at least `wait`, and at least twice as long as the
    /// majority took. A member that answers later is left out of that
    /// read's view (so a grant built from it skips the member) and does not
    /// hold a write when the next op is sent; it is brought up to date by
    /// the next grant whose view it answers in time.
    pub fn with_straggler_wait(mut self, wait: Duration) -> QuorumStore {
        self.straggler_wait = wait;
        self
    }

    /// The member stores, in order.
    pub fn members(&self) -> &[Arc<dyn LockStore>] {
        &self.members
    }

    /// How many members make a majority.
    pub fn majority(&self) -> usize {
        majority(self.members.len())
    }

    /// Every member's answer for `key` (waiting for all of them), for
    /// operators: `statelock status` shows it.
    pub async fn member_views(&self, key: &LockKey) -> Vec<MemberView> {
        let mut out: Vec<MemberView> = self
            .members
            .iter()
            .map(|_| MemberView::Error(StoreError::Unavailable("no answer in time".into())))
            .collect();
        let need = self.majority();
        let mut answered = 0usize;
        self.fan_out(
            |_, m| Some(read_member(m, key.clone())),
            |i, answer| {
                if let Some(slot) = out.get_mut(i) {
                    *slot = match answer {
                        Ok(read) => {
                            answered += 1;
                            MemberView::Read(read)
                        }
                        Err(e) => MemberView::Error(e),
                    };
                }
                answered >= need
            },
        )
        .await;
        out
    }

    /// Runs `task(member)` on every member (those it returns a future for)
    /// in parallel, each in its own task so that requests outlive the
    /// call, and hands each answer, as it arrives, to `on_answer` with its
    /// member index. Once `on_answer` has returned `true` (decided), the
    /// other members are still waited for until the straggler deadline, so
    /// that a healthy quorum's members all take part; a member answering
    /// later is left out (its request keeps running in the background).
    async fn fan_out<T, F, Fut>(&self, task: F, mut on_answer: impl FnMut(usize, T) -> bool)
    where
        T: Send + 'static,
        F: Fn(usize, Arc<dyn LockStore>) -> Option<Fut>,
        Fut: Future<Output = T> + Send + 'static,
    {
        let started = tokio::time::Instant::now();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut pending = 0usize;
        for (i, m) in self.members.iter().enumerate() {
            if let Some(fut) = task(i, m.clone()) {
                let tx = tx.clone();
                pending += 1;
                tokio::spawn(async move {
                    let out = fut.await;
                    let _ = tx.send((i, out));
                });
            }
        }
        drop(tx);
        let mut deadline: Option<tokio::time::Instant> = None;
        while pending > 0 {
            let next = match deadline {
                None => rx.recv().await,
                Some(d) => match tokio::time::timeout_at(d, rx.recv()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            let Some((i, out)) = next else { break };
            pending -= 1;
            if on_answer(i, out) && deadline.is_none() {
                deadline = Some(self.straggler_deadline(started));
            }
        }
    }

    /// Reads `key` on every member: the view (a majority of answers, the
    /// others given the straggler wait after it) or why there is none.
    async fn read_view(&self, key: &LockKey) -> Result<View, StoreError> {
        let n = self.members.len();
        let need = self.majority();
        let mut answers: Vec<Option<MemberRead>> = vec![None; n];
        let mut errors: Vec<(usize, StoreError)> = Vec::new();
        self.fan_out(
            |_, m| Some(read_member(m, key.clone())),
            |i, answer| {
                match answer {
                    Ok(read) => {
                        if let Some(slot) = answers.get_mut(i) {
                            *slot = Some(read);
                        }
                    }
                    Err(e) => errors.push((i, e)),
                }
                answers.iter().flatten().count() >= need
            },
        )
        .await;
        let view = View {
            key: key.clone(),
            answers,
        };
        if view.answered() >= need {
            return Ok(view);
        }
        Err(self.no_majority("read", &errors))
    }

    /// The error when fewer than a majority answered: a damaged record or
    /// a misconfigured member is said as such (retrying will not help),
    /// anything else is unavailability.
    fn no_majority(&self, what: &str, errors: &[(usize, StoreError)]) -> StoreError {
        let detail = errors
            .iter()
            .map(|(i, e)| format!("{}: {e}", self.members[*i].describe()))
            .collect::<Vec<_>>()
            .join("; ");
        let hopeless = errors.iter().filter(|(_, e)| !e.is_retryable()).count();
        let n = self.members.len();
        if n - hopeless < self.majority() {
            if let Some((_, first)) = errors.iter().find(|(_, e)| !e.is_retryable()) {
                return match first {
                    StoreError::Corrupt { key, .. } => StoreError::Corrupt {
                        key: key.clone(),
                        reason: format!("no majority of the quorum can {what} it ({detail})"),
                    },
                    _ => StoreError::Misconfigured(format!(
                        "no majority of the quorum's {n} stores can {what} ({detail})"
                    )),
                };
            }
        }
        StoreError::Unavailable(format!(
            "fewer than {} of the quorum's {n} stores answered the {what} ({detail})",
            self.majority()
        ))
    }

    /// Until when the remaining members are waited for, once a majority
    /// answered a request started at `started`.
    fn straggler_deadline(&self, started: tokio::time::Instant) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        now + self.straggler_wait.max(now.duration_since(started) * 2)
    }

    fn remember(&self, view: &View) {
        if let Ok(mut views) = self.views.lock() {
            if views.len() > 4096 {
                views.clear();
            }
            let list = views.entry(view.key.clone()).or_default();
            list.retain(|v| v.digest() != view.digest());
            list.push(view.clone());
            if list.len() > VIEWS_PER_KEY {
                list.remove(0);
            }
        }
    }

    /// The remembered view `op` names, if any.
    fn view_named_by(&self, op: &LockOp) -> Option<View> {
        let views = self.views.lock().ok()?;
        views
            .get(&op.key)?
            .iter()
            .rev()
            .find(|v| v.is_named_by(op))
            .cloned()
    }

    /// The view `op` names: remembered, or read afresh. `Err` carries the
    /// conflict to answer when the key has moved on.
    async fn named_view(&self, op: &LockOp) -> Result<View, StoreError> {
        if let Some(v) = self.view_named_by(op) {
            return Ok(v);
        }
        let view = self.read_view(&op.key).await?;
        self.remember(&view);
        if view.is_named_by(op) {
            Ok(view)
        } else {
            Err(StoreError::conflict(
                view.seen().and_then(|s| s.record().cloned()),
            ))
        }
    }

    /// Sends each member its op and decides.
    async fn send(&self, op: &LockOp, ops: Vec<Option<LockOp>>) -> (Verdict, Vec<MemberResult>) {
        let mut results: Vec<MemberResult> = ops
            .iter()
            .map(|o| match o {
                Some(_) => MemberResult::Unknown,
                None => MemberResult::NotSent,
            })
            .collect();
        let mut decided = Verdict::Pending;
        let ops = Arc::new(ops);
        // A refused grant is released on every member it landed on,
        // including members whose answer comes after the verdict.
        let partial = Arc::new(Mutex::new(Partial::default()));
        let grant = op.is_grant();
        self.fan_out(
            |i, m| {
                let (ops, partial) = (ops.clone(), partial.clone());
                ops.get(i).cloned().flatten().map(|member_op| async move {
                    let answer = m.apply(&member_op).await;
                    let result = MemberResult::of(&member_op, answer);
                    if grant {
                        if let MemberResult::Applied(rec) | MemberResult::Landed(rec) = &result {
                            let refused = match partial.lock() {
                                Ok(mut p) => {
                                    p.landed.push(i);
                                    p.refused
                                }
                                Err(_) => false,
                            };
                            if refused {
                                release_member(m, &member_op, rec.rvn).await;
                            }
                        }
                    }
                    result
                })
            },
            |i, result| {
                if let Some(slot) = results.get_mut(i) {
                    *slot = result;
                }
                if matches!(decided, Verdict::Pending) {
                    decided = verdict(&results, false);
                }
                !matches!(decided, Verdict::Pending)
            },
        )
        .await;
        if matches!(decided, Verdict::Pending) {
            decided = verdict(&results, true);
        }
        if grant && matches!(decided, Verdict::Refused) {
            let landed = match partial.lock() {
                Ok(mut p) => {
                    p.refused = true;
                    std::mem::take(&mut p.landed)
                }
                Err(_) => Vec::new(),
            };
            for i in landed {
                if let (Some(m), Some(Some(member_op))) =
                    (self.members.get(i).cloned(), ops.get(i).cloned())
                {
                    tokio::spawn(async move {
                        release_member(m, &member_op, member_op.new_rvn).await;
                    });
                }
            }
        }
        (decided, results)
    }
}

/// What a grant's member requests learned, shared with the requests that
/// are still running after the verdict.
#[derive(Debug, Default)]
struct Partial {
    /// The verdict was a refusal: a member that applies the grant now
    /// releases it at once.
    refused: bool,
    /// Members that applied the grant before the verdict.
    landed: Vec<usize>,
}

/// Releases the grant `granted` (which wrote version `rvn`) on `member`,
/// best effort: the client retries after its backoff anyway.
async fn release_member(member: Arc<dyn LockStore>, granted: &LockOp, rvn: RecordVersion) {
    let (OpKind::Acquire { owner, .. } | OpKind::Takeover { owner, .. }) = &granted.kind else {
        return;
    };
    // The version is derived from the grant's (itself random), not drawn
    // here: the store adds no randomness of its own, so a simulated run
    // replays exactly from its seed.
    let release = LockOp {
        key: granted.key.clone(),
        new_rvn: RecordVersion(rvn.0.rotate_left(64) ^ 0x7265_6c65_6173_6520_7061_7274_6961_6c21),
        at: granted.at,
        kind: OpKind::Release {
            owner: *owner,
            current: rvn,
        },
    };
    let _ = member.apply(&release).await;
}

/// One member's answer for `key`: its record, or its absence with its
/// token floor.
async fn read_member(member: Arc<dyn LockStore>, key: LockKey) -> Result<MemberRead, StoreError> {
    match member.get(&key).await? {
        Some(r) => Ok(MemberRead::Record(r)),
        None => Ok(MemberRead::Absent {
            floor: member.token_floor().await?,
        }),
    }
}

#[async_trait]
impl LockStore for QuorumStore {
    async fn apply(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
        if op.kind.is_queue_write() {
            return Err(StoreError::Misconfigured(
                "a quorum store keeps no hand-off queue: its waiters are not ordered".into(),
            ));
        }
        let ops = if view::names_a_view(op) {
            let view = self.named_view(op).await?;
            if op.is_grant() && view::quorum_token(&view, op).is_none() {
                return Err(StoreError::conflict(
                    view.seen().and_then(|s| s.record().cloned()),
                ));
            }
            member_ops(&view, op)
        } else {
            vec![Some(op.clone()); self.members.len()]
        };
        let (verdict, results) = self.send(op, ops).await;
        match verdict {
            Verdict::Applied(record, true) => Ok(record),
            // Like a single store: a resend of an op that had landed
            // everywhere it counts conflicts with the op's own write.
            Verdict::Applied(record, false) => Err(StoreError::conflict(Some(record))),
            Verdict::Refused => {
                if let Some(e) = results.iter().find_map(|r| match r {
                    MemberResult::Failed(e) if !e.is_retryable() => Some(e.clone()),
                    _ => None,
                }) {
                    let failed = results
                        .iter()
                        .filter(|r| matches!(r, MemberResult::Failed(_)))
                        .count();
                    if self.members.len() - failed < self.majority() {
                        return Err(e);
                    }
                }
                // The answer must carry the current record: what the
                // refusals said, or a fresh read when they say too little.
                let after = view::view_after(&op.key, &results);
                let seen = match after.seen() {
                    Some(seen) => seen,
                    None => {
                        let fresh = self.read_view(&op.key).await?;
                        self.remember(&fresh);
                        fresh.seen().ok_or_else(|| self.no_majority("read", &[]))?
                    }
                };
                Err(StoreError::conflict(seen.record().cloned()))
            }
            Verdict::Pending | Verdict::Unknown => {
                let unknown = results
                    .iter()
                    .filter(|r| matches!(r, MemberResult::Unknown | MemberResult::Failed(_)))
                    .count();
                Err(StoreError::Unavailable(format!(
                    "the {} was not confirmed by {} of the quorum's {} stores ({} did not answer \
                     or failed); it may have landed",
                    op.kind.name(),
                    self.majority(),
                    self.members.len(),
                    unknown
                )))
            }
        }
    }

    async fn get(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError> {
        let view = self.read_view(key).await?;
        self.remember(&view);
        match view.seen() {
            Some(Seen::Agreed(r)) | Some(Seen::Split(r)) => Ok(Some(r)),
            Some(Seen::Absent) => Ok(None),
            None => Err(self.no_majority("read", &[])),
        }
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        let n = self.members.len();
        let need = self.majority();
        let mut listings: Vec<Option<Listing>> = vec![None; n];
        let mut errors = Vec::new();
        self.fan_out(
            |_, m| Some(async move { m.list().await }),
            |i, answer| {
                match answer {
                    Ok(l) => listings[i] = Some(l),
                    Err(e) => errors.push((i, e)),
                }
                listings.iter().flatten().count() >= need
            },
        )
        .await;
        if listings.iter().flatten().count() < self.majority() {
            return Err(self.no_majority("list", &errors));
        }
        let mut keys: BTreeMap<LockKey, Vec<Option<MemberRead>>> = BTreeMap::new();
        let mut damaged: BTreeMap<String, DamagedRecord> = BTreeMap::new();
        for (i, listing) in listings.iter().enumerate() {
            let Some(listing) = listing else { continue };
            for r in &listing.records {
                keys.entry(r.key.clone()).or_insert_with(|| vec![None; n])[i] =
                    Some(MemberRead::Record(r.clone()));
            }
            for d in &listing.damaged {
                damaged.entry(d.key.clone()).or_insert_with(|| d.clone());
            }
        }
        let mut records = Vec::new();
        for (key, mut answers) in keys {
            for (i, a) in answers.iter_mut().enumerate() {
                if a.is_none() && listings[i].is_some() {
                    *a = Some(MemberRead::Absent {
                        floor: FencingToken::NONE,
                    });
                }
            }
            let view = View { key, answers };
            if let Some(Seen::Agreed(r) | Seen::Split(r)) = view.seen() {
                records.push(r);
            }
        }
        let mut listing = Listing::of(records);
        listing.damaged = damaged.into_values().collect();
        Ok(listing)
    }

    async fn token_floor(&self) -> Result<FencingToken, StoreError> {
        let need = self.majority();
        let mut floors = Vec::new();
        let mut errors = Vec::new();
        self.fan_out(
            |_, m| Some(async move { m.token_floor().await }),
            |i, answer| {
                match answer {
                    Ok(f) => floors.push(f),
                    Err(e) => errors.push((i, e)),
                }
                floors.len() >= need
            },
        )
        .await;
        if floors.len() < self.majority() {
            return Err(self.no_majority("read the token floor", &errors));
        }
        Ok(floors.into_iter().max().unwrap_or(FencingToken::NONE))
    }

    async fn purge(
        &self,
        key: &LockKey,
        observed: RecordVersion,
    ) -> Result<LockRecord, StoreError> {
        let view = self.read_view(key).await?;
        let current = view.seen().and_then(|s| s.record().cloned());
        let Some(Seen::Agreed(record)) = view.seen() else {
            return Err(StoreError::conflict(current));
        };
        if !record.released || record.rvn != observed {
            return Err(StoreError::conflict(current));
        }
        let targets: Vec<bool> = view
            .answers
            .iter()
            .map(|a| matches!(a, Some(MemberRead::Record(r)) if r.rvn == observed))
            .collect();
        let need = self.majority();
        let mut purged = 0usize;
        let mut errors = Vec::new();
        self.fan_out(
            |i, m| {
                let key = key.clone();
                targets
                    .get(i)
                    .copied()
                    .unwrap_or(false)
                    .then_some(async move { m.purge(&key, observed).await })
            },
            |i, answer| {
                match answer {
                    Ok(_) => purged += 1,
                    Err(e) => errors.push((i, e)),
                }
                purged >= need
            },
        )
        .await;
        if purged >= self.majority() {
            Ok(record)
        } else {
            Err(self.no_majority("purge", &errors))
        }
    }

    fn describe(&self) -> String {
        let members: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("store={}", m.describe()))
            .collect();
        format!("quorum://?{}", members.join("&"))
    }

    fn shared_name(&self) -> Option<String> {
        let names: Option<Vec<String>> = self.members.iter().map(|m| m.shared_name()).collect();
        names.map(|n| format!("quorum://?store={}", n.join("&store=")))
    }
}

#[cfg(all(test, feature = "testkit"))]
mod tests;
