//! The quorum lock's rules as pure functions (PROTOCOL.md, "Quorum lock"):
//! the record a *view* (what each member answered) stands for, the
//! per-member conditional writes one quorum op becomes, and the verdict on
//! the members' answers. No I/O and no clocks here: the store in
//! [`super`] sends what these functions decide.

use crate::protocol::{
    FencingToken, GrantFrom, LockKey, LockOp, LockRecord, OpKind, Outcome, RecordVersion,
};
use crate::store::StoreError;
use sha2::{Digest, Sha256};

/// What one member answered for a key.
#[allow(clippy::large_enum_variant)] // a record per member and key, short-lived
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberRead {
    /// The member's record.
    Record(LockRecord),
    /// No record; the member's token floor.
    Absent {
        /// The member's token floor.
        floor: FencingToken,
    },
}

impl MemberRead {
    fn token(&self) -> FencingToken {
        match self {
            MemberRead::Record(r) => r.token,
            MemberRead::Absent { floor } => *floor,
        }
    }
}

/// The smallest number of members that is a majority of `n`.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// What every member answered for one key (`None`: no answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The key read.
    pub key: LockKey,
    /// Per member, in member order: its answer, or `None`.
    pub answers: Vec<Option<MemberRead>>,
}

/// The record a view stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A majority answered the same write: that record.
    Agreed(LockRecord),
    /// A majority answered that there is no record.
    Absent,
    /// No majority agrees: a record whose version digests the whole view,
    /// whose token is the view's largest, held if any answer is held, with
    /// the longest lease of the held answers.
    Split(LockRecord),
}

impl Seen {
    /// The record the client is shown (`None`: absent).
    pub fn record(&self) -> Option<&LockRecord> {
        match self {
            Seen::Agreed(r) | Seen::Split(r) => Some(r),
            Seen::Absent => None,
        }
    }
}

impl View {
    /// The number of members that answered.
    pub fn answered(&self) -> usize {
        self.answers.iter().filter(|a| a.is_some()).count()
    }

    /// The largest token (or floor) any member answered.
    pub fn max_token(&self) -> FencingToken {
        self.answers
            .iter()
            .flatten()
            .map(MemberRead::token)
            .max()
            .unwrap_or(FencingToken::NONE)
    }

    /// The largest floor among the members that answered "absent".
    pub fn max_absent_floor(&self) -> FencingToken {
        self.answers
            .iter()
            .flatten()
            .filter_map(|a| match a {
                MemberRead::Absent { floor } => Some(*floor),
                MemberRead::Record(_) => None,
            })
            .max()
            .unwrap_or(FencingToken::NONE)
    }

    /// The record this view stands for, or `None` if fewer than a majority
    /// of the members answered.
    pub fn seen(&self) -> Option<Seen> {
        let need = majority(self.answers.len());
        if self.answered() < need {
            return None;
        }
        let records: Vec<&LockRecord> = self
            .answers
            .iter()
            .flatten()
            .filter_map(|a| match a {
                MemberRead::Record(r) => Some(r),
                MemberRead::Absent { .. } => None,
            })
            .collect();
        for r in &records {
            if records
                .iter()
                .filter(|o| o.rvn == r.rvn && ***o == **r)
                .count()
                >= need
            {
                return Some(Seen::Agreed((*r).clone()));
            }
        }
        if self.answered() - records.len() >= need {
            return Some(Seen::Absent);
        }
        Some(Seen::Split(self.split_record(&records)))
    }

    /// The record of a split view (see [`Seen::Split`]).
    fn split_record(&self, records: &[&LockRecord]) -> LockRecord {
        let held: Vec<&LockRecord> = records.iter().copied().filter(|r| r.is_held()).collect();
        let shown = held
            .iter()
            .chain(records.iter())
            .copied()
            .max_by_key(|r| r.token)
            .cloned();
        let mut record = match shown {
            Some(r) => r,
            // A split view has at least one record (else it would agree on
            // absence or lack a majority of answers).
            None => LockRecord {
                key: self.key.clone(),
                owner: crate::protocol::LeaseId(uuid::Uuid::nil()),
                token: FencingToken::NONE,
                rvn: RecordVersion(0),
                lease_ms: 0,
                released: true,
                holder: Default::default(),
                acquired_at: crate::protocol::WallTime(0),
                heartbeat_at: crate::protocol::WallTime(0),
                forced_by: None,
                queue: Vec::new(),
            },
        };
        record.token = self.max_token();
        record.released = held.is_empty();
        if let Some(longest) = held.iter().map(|r| r.lease_ms).max() {
            record.lease_ms = longest;
        }
        record.rvn = self.digest();
        record
    }

    /// A 128-bit digest of which members answered and what: equal digests
    /// mean every answering member holds the very same write (or the same
    /// absence).
    pub fn digest(&self) -> RecordVersion {
        let mut h = Sha256::new();
        h.update(b"statelock-quorum-view-v1");
        h.update(self.key.as_str().as_bytes());
        for (i, answer) in self.answers.iter().enumerate() {
            h.update((i as u64).to_be_bytes());
            match answer {
                None => h.update([0u8]),
                Some(MemberRead::Absent { floor }) => {
                    h.update([1u8]);
                    h.update(floor.0.to_be_bytes());
                }
                Some(MemberRead::Record(r)) => {
                    h.update([2u8]);
                    h.update(r.rvn.0.to_be_bytes());
                }
            }
        }
        let out = h.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&out[..16]);
        RecordVersion(u128::from_be_bytes(bytes))
    }

    /// True if `op` names the record this view stands for: a grant's
    /// [`GrantFrom`] or takeover version, a force-unlock's version. Other
    /// ops do not name a view.
    pub fn is_named_by(&self, op: &LockOp) -> bool {
        let Some(seen) = self.seen() else {
            return false;
        };
        match (&op.kind, seen.record()) {
            // A grant of an absent key names the token floor it read: one
            // below a floor the view shows was decided before a purge.
            (
                OpKind::Acquire {
                    from: GrantFrom::Absent { floor },
                    ..
                },
                None,
            ) => *floor >= self.max_absent_floor(),
            (
                OpKind::Acquire {
                    from: GrantFrom::Version { rvn, token },
                    ..
                },
                Some(r),
            )
            | (
                OpKind::Takeover {
                    observed: rvn,
                    token,
                    ..
                },
                Some(r),
            ) => r.rvn == *rvn && r.token == *token,
            (OpKind::ForceUnlock { observed, .. }, Some(r)) => r.rvn == *observed,
            _ => false,
        }
    }
}

/// True for ops that name a view (grants and force-unlock): they are
/// turned into per-member ops by [`member_ops`]. The others (heartbeat,
/// rebase, release) go unchanged to every member.
pub fn names_a_view(op: &LockOp) -> bool {
    matches!(
        op.kind,
        OpKind::Acquire { .. } | OpKind::Takeover { .. } | OpKind::ForceUnlock { .. }
    )
}

/// The token every member of a grant built from `view` installs: one above
/// the largest token (or floor) the view holds, and at least the token the
/// op itself would install. `None` when the tokens are used up.
pub fn quorum_token(view: &View, op: &LockOp) -> Option<FencingToken> {
    let above_view = view.max_token().next()?;
    Some(match op.granted_token() {
        Some(t) => t.max(above_view),
        None => return None,
    })
}

/// The per-member ops of `op`, built from `view` (which `op` names, see
/// [`View::is_named_by`]); `None` for a member that gets nothing. A
/// grant's ops all carry `op`'s new version and install
/// [`quorum_token`]; ops that name no view are sent unchanged to every
/// member.
pub fn member_ops(view: &View, op: &LockOp) -> Vec<Option<LockOp>> {
    if !names_a_view(op) {
        return view.answers.iter().map(|_| Some(op.clone())).collect();
    }
    let seen = view.seen();
    let (agreed, agreed_token) = match &seen {
        Some(Seen::Agreed(r)) => (Some(r.rvn), Some(r.token)),
        _ => (None, None),
    };
    let split = matches!(seen, Some(Seen::Split(_)));
    let token = quorum_token(view, op);
    view.answers
        .iter()
        .map(|answer| {
            let answer = answer.as_ref()?;
            let kind = match (&op.kind, answer) {
                (OpKind::ForceUnlock { by, .. }, MemberRead::Record(r))
                    if split || agreed == Some(r.rvn) =>
                {
                    OpKind::ForceUnlock {
                        observed: r.rvn,
                        by: by.clone(),
                    }
                }
                (OpKind::ForceUnlock { .. }, _) => return None,
                (
                    OpKind::Acquire {
                        owner,
                        lease_ms,
                        holder,
                        ..
                    }
                    | OpKind::Takeover {
                        owner,
                        lease_ms,
                        holder,
                        ..
                    },
                    read,
                ) => {
                    let at_least = token?;
                    let takeover = matches!(op.kind, OpKind::Takeover { .. });
                    match read {
                        MemberRead::Absent { floor } => OpKind::Acquire {
                            from: GrantFrom::Absent { floor: *floor },
                            owner: *owner,
                            lease_ms: *lease_ms,
                            holder: holder.clone(),
                            at_least,
                            dequeue: Default::default(),
                        },
                        MemberRead::Record(r) if r.released => OpKind::Acquire {
                            from: GrantFrom::Version {
                                rvn: r.rvn,
                                token: r.token,
                            },
                            owner: *owner,
                            lease_ms: *lease_ms,
                            holder: holder.clone(),
                            at_least,
                            dequeue: Default::default(),
                        },
                        // A held member is taken over when the waiter timed
                        // it (it is the agreed version, or part of the split
                        // view whose digest was timed), or when it is stale:
                        // held at another version with a token *smaller*
                        // than the agreed record's, it belongs to an earlier
                        // grant, whose holder lost its majority to the
                        // agreed grant. A member with the agreed token at
                        // another version is left alone: it may hold the
                        // agreed holder's own later write (a heartbeat this
                        // view read on one member and not yet on the
                        // others), which must not be taken over untimed.
                        MemberRead::Record(r)
                            if (takeover && (split || agreed == Some(r.rvn)))
                                || (agreed != Some(r.rvn)
                                    && agreed_token.is_some_and(|t| r.token < t)) =>
                        {
                            OpKind::Takeover {
                                observed: r.rvn,
                                token: r.token,
                                owner: *owner,
                                lease_ms: *lease_ms,
                                holder: holder.clone(),
                                at_least,
                                dequeue: Default::default(),
                            }
                        }
                        MemberRead::Record(_) => return None,
                    }
                }
                _ => return None,
            };
            Some(LockOp {
                key: op.key.clone(),
                new_rvn: op.new_rvn,
                at: op.at,
                kind,
            })
        })
        .collect()
}

/// What one member did with its op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberResult {
    /// It was sent nothing.
    NotSent,
    /// It applied the op now.
    Applied(LockRecord),
    /// It had applied the op before (an earlier answer was lost): its
    /// refusal carries the op's own write.
    Landed(LockRecord),
    /// Its condition failed; its current record.
    Refused(Option<LockRecord>),
    /// No answer yet, or no usable answer: it may have applied the op.
    Unknown,
    /// It answered with an error retrying cannot cure.
    Failed(StoreError),
}

impl MemberResult {
    /// A member's answer to `op`, a lost answer resolved by the version.
    pub fn of(op: &LockOp, answer: Result<LockRecord, StoreError>) -> MemberResult {
        let outcome = match answer {
            Ok(r) => Outcome::Applied(r),
            Err(StoreError::Conflict { current }) => Outcome::Conflict(current.map(|r| *r)),
            Err(StoreError::Unavailable(_)) => Outcome::Unknown,
            Err(other) => return MemberResult::Failed(other),
        };
        let fresh = matches!(outcome, Outcome::Applied(_));
        match outcome.resolve(op) {
            Outcome::Applied(r) if fresh => MemberResult::Applied(r),
            Outcome::Applied(r) => MemberResult::Landed(r),
            Outcome::Conflict(current) => MemberResult::Refused(current),
            Outcome::Unknown => MemberResult::Unknown,
        }
    }
}

/// The verdict on a quorum op from its members' results so far.
#[allow(clippy::large_enum_variant)] // one per op
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A majority applied it: the record written, and whether any member
    /// applied it just now (`false`: it had landed before, on every member
    /// that has it).
    Applied(LockRecord, bool),
    /// So many members refused it that no majority can apply it.
    Refused,
    /// Not decided yet (some members have not answered).
    Pending,
    /// Every member answered, no majority applied it, and enough outcomes
    /// are unknown that a resend may still succeed.
    Unknown,
}

/// Decides from `results` (one per member; `Unknown` also stands for "not
/// answered yet" while `finished` is false).
pub fn verdict(results: &[MemberResult], finished: bool) -> Verdict {
    let need = majority(results.len());
    let applied: Vec<&LockRecord> = results
        .iter()
        .filter_map(|r| match r {
            MemberResult::Applied(rec) | MemberResult::Landed(rec) => Some(rec),
            _ => None,
        })
        .collect();
    if applied.len() >= need {
        if let Some(first) = applied.first() {
            let now = results
                .iter()
                .any(|r| matches!(r, MemberResult::Applied(_)));
            return Verdict::Applied((*first).clone(), now);
        }
    }
    let maybe = results
        .iter()
        .filter(|r| {
            matches!(
                r,
                MemberResult::Applied(_) | MemberResult::Landed(_) | MemberResult::Unknown
            )
        })
        .count();
    if maybe < need {
        return Verdict::Refused;
    }
    if finished {
        Verdict::Unknown
    } else {
        Verdict::Pending
    }
}

/// The view after an op's results: what each member now holds, as far as
/// its answer says (an applied op's record, a refusal's current record).
pub fn view_after(key: &LockKey, results: &[MemberResult]) -> View {
    View {
        key: key.clone(),
        answers: results
            .iter()
            .map(|r| match r {
                MemberResult::Applied(rec)
                | MemberResult::Landed(rec)
                | MemberResult::Refused(Some(rec)) => Some(MemberRead::Record(rec.clone())),
                _ => None,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
