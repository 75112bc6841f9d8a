//! The operator's view of a quorum store's members, for `status`, `locks`
//! and `unlock` on a `quorum://` store: what each member holds for a key,
//! and whether a majority agrees on it.
//!
//! Read-only: it reads the members and never writes them. It decides
//! nothing about locking either: what a view of the members stands for is
//! [`View::seen`]'s, as the quorum store itself judges it.

use crate::client::LockStatus;
use crate::protocol::{LockKey, LockRecord, RecordVersion};
use crate::store::quorum::view::{MemberRead, Seen, View};
use crate::store::quorum::{MemberView, QuorumStore};
use crate::store::url::redact_credentials;
use crate::store::{LockStore, StoreError};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// The JSON that `status --output json` adds on a quorum store.
pub(crate) const STATUS_JSON_HELP: &str = "\
On a quorum store (quorum://), the LockStatus object has two more fields:
  members       array    one object per member store, in URL order:
    store         string   the member store (credentials redacted)
    answer        string   record | absent | error
    record        object   (answer record) the member's lock record, as above
    floor         number   (answer absent) the member's token floor
    error         string   (answer error) why the member gave no answer
    agrees        bool     the member holds what the majority agrees on
  majority      object   whether a majority of the members agrees:
    verdict       string   agreed | absent | split | unanswered
                           (split: no majority holds the same write;
                           unanswered: fewer than a majority answered)
    rvn           string   (verdict agreed) the version a majority holds
    agreeing      number   members that hold what the majority agrees on
    answered      number   members that answered
    needed        number   how many members make a majority
    members       number   how many member stores the quorum has";

/// The JSON that `locks --output json` adds on a quorum store.
pub(crate) const LOCKS_JSON_HELP: &str = "\
On a quorum store (quorum://), two more fields:
  members            number   (top level) how many member stores it has
  members_agreeing   number   (each LockStatus) how many member stores hold
                              the record shown (0: no majority agrees)";

/// Every member's answer for one key, with its URL.
pub(crate) struct MemberReport {
    /// Each member as `describe()` names it (credentials redacted) and
    /// what it answered.
    pub(crate) members: Vec<(String, MemberView)>,
    /// How many members make a majority.
    pub(crate) needed: usize,
    /// What the view stands for (`None`: fewer than a majority answered).
    pub(crate) seen: Option<Seen>,
}

/// Reads `key` on every member of `quorum` (waiting for all of them).
pub(crate) async fn member_report(quorum: &QuorumStore, key: &LockKey) -> MemberReport {
    let views = quorum.member_views(key).await;
    let view = View {
        key: key.clone(),
        answers: views
            .iter()
            .map(|v| match v {
                MemberView::Read(read) => Some(read.clone()),
                MemberView::Error(_) => None,
            })
            .collect(),
    };
    let members = quorum
        .members()
        .iter()
        .map(|m| redact_credentials(&m.describe()))
        .zip(views)
        .collect();
    MemberReport {
        members,
        needed: quorum.majority(),
        seen: view.seen(),
    }
}

impl MemberReport {
    /// True if the member's answer is what the majority agrees on.
    fn agrees(&self, view: &MemberView) -> bool {
        match (&self.seen, view) {
            (Some(Seen::Agreed(r)), MemberView::Read(MemberRead::Record(m))) => m.rvn == r.rvn,
            (Some(Seen::Absent), MemberView::Read(MemberRead::Absent { .. })) => true,
            _ => false,
        }
    }

    /// How many members hold what the majority agrees on.
    pub(crate) fn agreeing(&self) -> usize {
        self.members.iter().filter(|(_, v)| self.agrees(v)).count()
    }

    /// How many members answered.
    fn answered(&self) -> usize {
        self.members
            .iter()
            .filter(|(_, v)| matches!(v, MemberView::Read(_)))
            .count()
    }

    /// How many members hold the write `rvn`.
    pub(crate) fn holding(&self, rvn: RecordVersion) -> usize {
        self.members
            .iter()
            .filter(|(_, v)| matches!(v, MemberView::Read(MemberRead::Record(r)) if r.rvn == rvn))
            .count()
    }

    /// One line per member, then the majority line.
    pub(crate) fn text(&self) -> String {
        let n = self.members.len();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<15} {n} stores; {} make a majority",
            "members:", self.needed
        );
        let width = self
            .members
            .iter()
            .map(|(url, _)| url.chars().count())
            .max()
            .unwrap_or(0);
        for (url, view) in &self.members {
            let pad = width.saturating_sub(url.chars().count());
            let _ = writeln!(
                out,
                "  {url}{}  {}",
                " ".repeat(pad),
                member_text(view).trim_end()
            );
        }
        out.push_str(&self.majority_text());
        out.push('\n');
        out
    }

    /// Whether a majority agrees, in one line.
    fn majority_text(&self) -> String {
        let n = self.members.len();
        let k = self.agreeing();
        let rest = if k < n {
            "; the others are brought up to date by the next grant"
        } else {
            ""
        };
        match &self.seen {
            Some(Seen::Agreed(r)) => format!(
                "majority agrees on version {} ({k} of {n} members){rest}",
                short(r.rvn)
            ),
            Some(Seen::Absent) => {
                format!("majority agrees there is no record ({k} of {n} members){rest}")
            }
            Some(Seen::Split(r)) if r.is_held() => {
                "no majority agrees: the next grant will need a takeover wait".to_string()
            }
            Some(Seen::Split(_)) => {
                "no majority agrees (no member holds the lock): the next grant rewrites every member that answers"
                    .to_string()
            }
            None => format!(
                "fewer than a majority answered ({} of {n}, {} needed): the lock can be neither read nor granted until more members answer",
                self.answered(),
                self.needed
            ),
        }
    }

    /// The `members` and `majority` fields of `status --output json`.
    fn json(&self) -> (Vec<MemberJson<'_>>, MajorityJson) {
        let members = self
            .members
            .iter()
            .map(|(url, view)| {
                let mut json = MemberJson {
                    store: url,
                    answer: "error",
                    record: None,
                    floor: None,
                    error: None,
                    agrees: self.agrees(view),
                };
                match view {
                    MemberView::Read(MemberRead::Record(r)) => {
                        json.answer = "record";
                        json.record = Some(r);
                    }
                    MemberView::Read(MemberRead::Absent { floor }) => {
                        json.answer = "absent";
                        json.floor = Some(floor.0);
                    }
                    MemberView::Error(e) => json.error = Some(error_text(e)),
                }
                json
            })
            .collect();
        let (verdict, rvn) = match &self.seen {
            Some(Seen::Agreed(r)) => ("agreed", Some(r.rvn)),
            Some(Seen::Absent) => ("absent", None),
            Some(Seen::Split(_)) => ("split", None),
            None => ("unanswered", None),
        };
        let majority = MajorityJson {
            verdict,
            rvn,
            agreeing: self.agreeing(),
            answered: self.answered(),
            needed: self.needed,
            members: self.members.len(),
        };
        (members, majority)
    }
}

/// The first 8 hex digits of a version: enough to tell writes apart by eye.
fn short(rvn: RecordVersion) -> String {
    let mut text = rvn.to_string();
    text.truncate(8);
    text
}

/// A member's error, without credentials.
fn error_text(e: &StoreError) -> String {
    redact_credentials(&e.to_string())
}

/// What one member holds, for its line in `status`.
fn member_text(view: &MemberView) -> String {
    match view {
        MemberView::Read(MemberRead::Record(r)) => record_text(r),
        MemberView::Read(MemberRead::Absent { floor }) => {
            format!("no record (token floor {})", floor.0)
        }
        MemberView::Error(e) => format!("error: {}", error_text(e)),
    }
}

fn record_text(r: &LockRecord) -> String {
    let (state, who) = if r.is_held() {
        ("held", "holder")
    } else {
        ("free", "last holder")
    };
    format!(
        "{state}, token {}, {who} {}, version {}",
        r.token,
        r.holder.locked_by,
        short(r.rvn)
    )
}

/// One member in `status --output json`.
#[derive(Serialize)]
struct MemberJson<'a> {
    store: &'a str,
    answer: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<&'a LockRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    floor: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    agrees: bool,
}

/// The `majority` field of `status --output json`.
#[derive(Serialize)]
struct MajorityJson {
    verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rvn: Option<RecordVersion>,
    agreeing: usize,
    answered: usize,
    needed: usize,
    members: usize,
}

/// `status --output json` on a quorum: the LockStatus with the members.
#[derive(Serialize)]
pub(crate) struct QuorumStatusJson<'a> {
    #[serde(flatten)]
    status: &'a LockStatus,
    members: Vec<MemberJson<'a>>,
    majority: MajorityJson,
}

impl<'a> QuorumStatusJson<'a> {
    /// `status` with the members of `report`.
    pub(crate) fn new(status: &'a LockStatus, report: &'a MemberReport) -> Self {
        let (members, majority) = report.json();
        QuorumStatusJson {
            status,
            members,
            majority,
        }
    }
}

/// How many members hold each of `statuses`' records (by version), from one
/// listing per member taken in parallel; a member whose listing fails holds
/// none. A split view's record carries a digest no member holds: 0.
pub(crate) async fn members_agreeing(quorum: &QuorumStore, statuses: &[LockStatus]) -> Vec<usize> {
    let mut tasks = tokio::task::JoinSet::new();
    for member in quorum.members() {
        let member: Arc<dyn LockStore> = member.clone();
        tasks.spawn(async move { member.list().await });
    }
    let mut versions: Vec<HashMap<LockKey, RecordVersion>> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(Ok(listing)) = joined {
            versions.push(
                listing
                    .records
                    .into_iter()
                    .map(|r| (r.key, r.rvn))
                    .collect(),
            );
        }
    }
    statuses
        .iter()
        .map(|s| {
            versions
                .iter()
                .filter(|v| v.get(&s.record.key) == Some(&s.record.rvn))
                .count()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{FencingToken, HolderInfo, LeaseId, WallTime};
    use uuid::Uuid;

    fn record(rvn: u128, token: u64, held: bool) -> LockRecord {
        LockRecord {
            key: LockKey::new("k").unwrap(),
            owner: LeaseId(Uuid::nil()),
            token: FencingToken(token),
            rvn: RecordVersion(rvn),
            lease_ms: 20_000,
            released: !held,
            holder: HolderInfo::named("alice@laptop"),
            acquired_at: WallTime(1_705_329_600_000),
            heartbeat_at: WallTime(1_705_329_630_000),
            forced_by: None,
            queue: Vec::new(),
        }
    }

    fn report(views: Vec<MemberView>) -> MemberReport {
        let view = View {
            key: LockKey::new("k").unwrap(),
            answers: views
                .iter()
                .map(|v| match v {
                    MemberView::Read(r) => Some(r.clone()),
                    MemberView::Error(_) => None,
                })
                .collect(),
        };
        MemberReport {
            members: ["file:///q/a", "file:///q/bb", "file:///q/c"]
                .iter()
                .map(|u| u.to_string())
                .zip(views)
                .collect(),
            needed: 2,
            seen: view.seen(),
        }
    }

    const V: u128 = 0xabcd_ef01_0000_0000_0000_0000_0000_0000;

    #[test]
    fn a_member_that_fell_behind_is_shown_differing() {
        let r = report(vec![
            MemberView::Read(MemberRead::Record(record(V, 3, false))),
            MemberView::Read(MemberRead::Record(record(V, 3, false))),
            MemberView::Read(MemberRead::Absent {
                floor: FencingToken(0),
            }),
        ]);
        let text = r.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[1].starts_with(
                "  file:///q/a   free, token 3, last holder alice@laptop, version abcdef01"
            ),
            "{text}"
        );
        assert!(lines[3].ends_with("no record (token floor 0)"), "{text}");
        assert!(
            lines[4].starts_with("majority agrees on version abcdef01 (2 of 3 members)"),
            "{text}"
        );
        let (members, majority) = r.json();
        assert_eq!(
            members.iter().map(|m| m.agrees).collect::<Vec<_>>(),
            [true, true, false]
        );
        assert_eq!((majority.verdict, majority.agreeing), ("agreed", 2));
        assert_eq!(r.holding(RecordVersion(V)), 2);
    }

    #[test]
    fn split_and_unanswered_views_say_so() {
        let split = report(vec![
            MemberView::Read(MemberRead::Record(record(V, 3, true))),
            MemberView::Read(MemberRead::Record(record(V + 1, 4, false))),
            MemberView::Error(StoreError::Unavailable("down".into())),
        ]);
        assert!(
            split
                .text()
                .contains("no majority agrees: the next grant will need a takeover wait"),
            "{}",
            split.text()
        );
        assert!(split
            .text()
            .contains("error: the lock store is unavailable: down"));
        assert_eq!(split.json().1.verdict, "split");

        let unanswered = report(vec![
            MemberView::Read(MemberRead::Record(record(V, 3, true))),
            MemberView::Error(StoreError::Unavailable("down".into())),
            MemberView::Error(StoreError::Unavailable("down".into())),
        ]);
        assert!(
            unanswered
                .text()
                .contains("fewer than a majority answered (1 of 3, 2 needed)"),
            "{}",
            unanswered.text()
        );
        assert_eq!(unanswered.json().1.verdict, "unanswered");
    }
}
