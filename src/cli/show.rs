//! `statelock locks` and `statelock status`: what the store says, as a table,
//! a detail view or JSON (the library's [`LockStatus`]). Read-only, except
//! for this machine's sightings cache (see [`super::sightings`]).
//!
//! On a quorum store (`quorum://`) they also show what the members hold
//! (see [`super::quorum`]).
//!
//! Liveness is judged by how long this machine has seen a record's version
//! unchanged, never by the holder's wall clock: wall times are shown as
//! information only.

use super::duration::{self, human, wall, wall_with_age};
use super::input::parse_key;
use super::quorum::{self, member_report, members_agreeing, QuorumStatusJson};
use super::sightings::Sightings;
use super::{exit, lock_failure, CliError, Context, OutputFormat};
use crate::client::{Liveness, LockClient, LockStatus};
use crate::protocol::{LockRecord, WallTime};
use crate::store::DamagedRecord;
use serde::Serialize;
use std::fmt::Write as _;
use std::time::Duration;

/// One `LockStatus` object, as `locks` and `status` print it in JSON.
const LOCK_STATUS_JSON: &str = "\
  record        object   the lock record:
    key           string
    owner         string   the lease id (UUID)
    token         number   the fencing token (0: a format without tokens)
    rvn           string   the record version (changes with every write
                           except a waiter's registration in the queue)
    lease_ms      number   the lease (18446744073709551615: never expires)
    released      bool
    holder        object   {locked_by, operation?, host?, pid?, metadata?}
    acquired_at   number   ms since the epoch, by the holder's wall clock
    heartbeat_at  number   ms since the epoch, by the holder's wall clock
    forced_by     string   present if the lock was force-unlocked
    queue         array    present if waiters are registered: their lease
                           ids, first in turn first
  held          bool     held (not released)
  liveness      string   released | never_expires | alive | unknown | stale
  unchanged_ms  number   how long this machine has seen the record unchanged
  stale         bool     liveness is stale: a waiter would take it over
  wall_age_ms   number   now minus heartbeat_at by the wall clocks
                         (informational; negative if the writer's is ahead)";

/// The long help after `locks`' options: its JSON schema.
const LOCKS_JSON_HELP: &str = "\
JSON output (--output json), one object:
  store     string   the store, as messages name it
  locks     array    one LockStatus per lock, in key order (below)
  damaged   array    {key, reason} of each record that cannot be read
                     (exit 5 when there is one)

LockStatus:";

/// The long help after `status`' options: its JSON schema.
const STATUS_JSON_HELP: &str = "\
JSON output (--output json): null if the key was never locked, else one
LockStatus object:";

/// Arguments of `statelock locks`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = format!(
    "{LOCKS_JSON_HELP}\n{LOCK_STATUS_JSON}\n\n{}",
    quorum::LOCKS_JSON_HELP
))]
pub struct LocksArgs {
    /// Output format
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// Arguments of `statelock status`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = format!(
    "{STATUS_JSON_HELP}\n{LOCK_STATUS_JSON}\n\n{}",
    quorum::STATUS_JSON_HELP
))]
pub struct StatusArgs {
    /// The lock key
    #[arg(value_name = "KEY")]
    pub key: String,
    /// Output format (JSON: a LockStatus, or null if the key was never locked)
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Keep reading the record for up to this long while its holder's
    /// liveness is unknown (a live holder renews every third of its lease)
    #[arg(long, default_value = "0s", value_name = "DURATION")]
    pub observe: String,
}

/// `free`, `held`, `alive`, `STALE` or `held` (never expires).
pub(crate) fn state_word(status: &LockStatus) -> &'static str {
    match status.liveness {
        Liveness::Released => "free",
        Liveness::Alive => "alive",
        Liveness::Stale => "STALE",
        Liveness::Unknown | Liveness::NeverExpires => "held",
    }
}

/// How long this machine has seen the version unchanged, for a table cell.
fn unchanged_cell(status: &LockStatus) -> String {
    match status.liveness {
        Liveness::Released | Liveness::NeverExpires => "-".to_string(),
        Liveness::Alive => "renewed".to_string(),
        _ if status.unchanged_ms == 0 => "first look".to_string(),
        _ => human(Duration::from_millis(status.unchanged_ms)),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, CliError> {
    serde_json::to_string_pretty(value).map_err(|e| {
        CliError::new(
            exit::FAILURE,
            format!("cannot encode the answer as JSON: {e}"),
        )
    })
}

/// The token column: `-` for lock formats without fencing tokens.
fn token_cell(r: &LockRecord) -> String {
    if r.has_token() {
        r.token.to_string()
    } else {
        "-".to_string()
    }
}

/// The lease column: `never expires` for lock formats without leases.
fn lease_cell(r: &LockRecord) -> String {
    if r.expires() {
        human(r.lease())
    } else {
        "never expires".to_string()
    }
}

/// How many of a quorum's members hold each listed record, for the
/// `MEMBERS` column of `locks`.
pub(crate) struct Agreement {
    /// Per lock (in listing order): members holding its record.
    pub(crate) agreeing: Vec<usize>,
    /// How many member stores the quorum has.
    pub(crate) members: usize,
    /// How many make a majority.
    pub(crate) majority: usize,
}

impl Agreement {
    /// The cell of lock `i`: `3/3 agree`, `2/3 agree`, or `split`.
    fn cell(&self, i: usize) -> String {
        match self.agreeing.get(i) {
            Some(&k) if k >= self.majority => format!("{k}/{} agree", self.members),
            _ => "split".to_string(),
        }
    }
}

/// Renders the `locks` table (a header and one row per lock, damaged
/// records last), with a `MEMBERS` column on a quorum store.
pub(crate) fn locks_table(
    statuses: &[LockStatus],
    damaged: &[DamagedRecord],
    agreement: Option<&Agreement>,
) -> String {
    const HEADER: [&str; 9] = [
        "KEY",
        "STATE",
        "TOKEN",
        "HOLDER",
        "OPERATION",
        "ACQUIRED",
        "UNCHANGED",
        "LEASE",
        "MEMBERS",
    ];
    let columns = if agreement.is_some() { 9 } else { 8 };
    let dash = || "-".to_string();
    let mut rows: Vec<[String; 9]> = statuses
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let r = &s.record;
            let held = s.held;
            [
                r.key.to_string(),
                state_word(s).to_string(),
                token_cell(r),
                if held {
                    r.holder.locked_by.clone()
                } else {
                    dash()
                },
                match (&r.holder.operation, held) {
                    (Some(op), true) => op.clone(),
                    _ => dash(),
                },
                if held { wall(r.acquired_at) } else { dash() },
                unchanged_cell(s),
                lease_cell(r),
                agreement.map(|a| a.cell(i)).unwrap_or_default(),
            ]
        })
        .collect();
    rows.extend(damaged.iter().map(|d| {
        [
            d.key.clone(),
            "DAMAGED".to_string(),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
        ]
    }));
    let mut widths = HEADER.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let pad = width.saturating_sub(cell.chars().count()) + 2;
                text.push_str(cell);
                text.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&HEADER[..columns]);
    for row in &rows {
        let cells: Vec<&str> = row.iter().take(columns).map(String::as_str).collect();
        line(&cells);
    }
    out.push_str(
        "\nUNCHANGED: how long this machine has seen the record unchanged (a live holder renews it every third of its lease); wall-clock times are informational.\n",
    );
    if statuses.iter().any(|s| s.stale) {
        out.push_str(
            "STALE: seen unchanged for longer than a takeover wait; the holder is probably gone and the next waiter will take the lock over.\n",
        );
    }
    if statuses
        .iter()
        .any(|s| s.held && s.liveness == Liveness::Unknown)
    {
        out.push_str(
            "held: liveness not known yet (first look, or unchanged for less than a takeover wait); run again, or `statelock status KEY --observe 10s`.\n",
        );
    }
    if statuses.iter().any(|s| s.held && !s.record.expires()) {
        out.push_str(NEVER_EXPIRES_NOTE);
    }
    if let Some(a) = agreement {
        let _ = writeln!(
            out,
            "MEMBERS: how many of the quorum's {} member stores hold the record shown ({} make a majority; the others are brought up to date by the next grant). split: no majority agrees; a held split lock is granted again only after a takeover wait (`statelock status KEY` shows each member).",
            a.members, a.majority
        );
    }
    for d in damaged {
        let _ = writeln!(
            out,
            "DAMAGED {}: {} (statelock never overwrites it: inspect and repair or remove it by hand)",
            d.key, d.reason
        );
    }
    out
}

/// Explains locks without a lease (Terraform's), below a table or detail.
const NEVER_EXPIRES_NOTE: &str = "never expires: a lock without a lease or fencing token (a Terraform lock); it stays until its holder releases it or an operator runs `statelock unlock --force` after checking the holder is gone.\n";

/// Renders one lock in detail.
pub(crate) fn status_text(status: &LockStatus, now: WallTime) -> String {
    let r = &status.record;
    let mut out = String::new();
    let mut field = |name: &str, value: &str| {
        let _ = writeln!(out, "{:<15} {value}", format!("{name}:"));
    };
    let unchanged = human(Duration::from_millis(status.unchanged_ms));
    let renew = human(r.lease() / 3);
    let state = match status.liveness {
        Liveness::Released => "free".to_string(),
        Liveness::NeverExpires => "held (never expires)".to_string(),
        Liveness::Alive => "held, alive (its record changed since this machine last looked)".to_string(),
        Liveness::Stale => format!(
            "STALE (seen unchanged by this machine for {unchanged}, longer than a takeover wait; a live holder renews every {renew}; a waiter would take it over)"
        ),
        Liveness::Unknown if status.unchanged_ms == 0 => format!(
            "held (first look from this machine; a live holder renews every {renew}: look again, or use --observe)"
        ),
        Liveness::Unknown => format!(
            "held (seen unchanged by this machine for {unchanged}; a live holder renews every {renew})"
        ),
    };
    field("key", r.key.as_str());
    field("state", &state);
    if r.has_token() {
        field("token", &r.token.to_string());
    } else {
        field("token", "none (this lock format has no fencing tokens)");
    }
    let who = if status.held { "holder" } else { "last holder" };
    field(who, &r.holder.locked_by);
    if let Some(op) = &r.holder.operation {
        field("operation", op);
    }
    if let Some(host) = &r.holder.host {
        field("host", host);
    }
    if let Some(pid) = r.holder.pid {
        field("pid", &pid.to_string());
    }
    for (k, v) in &r.holder.metadata {
        field(&format!("meta {k}"), v);
    }
    field("lease id", &r.owner.to_string());
    field("record version", &r.rvn.to_string());
    field("lease", &lease_cell(r));
    field("acquired", &wall_with_age(r.acquired_at, now));
    match (status.held, r.expires()) {
        (true, true) => field(
            "last heartbeat",
            &format!(
                "{} (by the holder's wall clock)",
                wall_with_age(r.heartbeat_at, now)
            ),
        ),
        (true, false) => field("last heartbeat", "none (this lock is never renewed)"),
        (false, _) => field("released", &wall_with_age(r.heartbeat_at, now)),
    }
    if let Some(by) = &r.forced_by {
        field("forced by", by);
    }
    if let Some(next) = r.queue_head() {
        let waiting = match r.queue.len() {
            1 => "1 registered waiter".to_string(),
            n => format!("{n} registered waiters"),
        };
        field("queue", &format!("{waiting}; next: lease {next}"));
    }
    if status.held && !r.expires() {
        out.push('\n');
        out.push_str(NEVER_EXPIRES_NOTE);
    }
    out
}

/// The JSON of `statelock locks --output json`.
#[derive(Serialize)]
struct LocksJson<'a> {
    store: &'a str,
    /// On a quorum store: how many member stores it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    members: Option<usize>,
    locks: Vec<LockJson<'a>>,
    damaged: &'a [DamagedRecord],
}

/// One lock in `statelock locks --output json`.
#[derive(Serialize)]
struct LockJson<'a> {
    #[serde(flatten)]
    status: &'a LockStatus,
    /// On a quorum store: how many member stores hold this record.
    #[serde(skip_serializing_if = "Option::is_none")]
    members_agreeing: Option<usize>,
}

/// Folds this machine's earlier sightings into `statuses` and saves them.
pub(crate) fn with_sightings(client: &LockClient, store: &str, statuses: &mut [LockStatus]) {
    let mut sightings = Sightings::load(store);
    for status in statuses.iter_mut() {
        sightings.apply(status, &client.protocol());
    }
    sightings.save();
}

/// Runs `statelock locks`.
pub(crate) async fn locks(args: LocksArgs, ctx: &Context) -> Result<i32, CliError> {
    let opened = ctx.open().await?;
    let client = opened.client;
    let mut listing = client
        .locks()
        .await
        .map_err(|e| lock_failure(e, ctx.store_text()))?;
    with_sightings(&client, ctx.store_text(), &mut listing.locks);
    let agreement = match &opened.quorum {
        Some(q) => Some(Agreement {
            agreeing: members_agreeing(q, &listing.locks).await,
            members: q.members().len(),
            majority: q.majority(),
        }),
        None => None,
    };
    match args.output {
        OutputFormat::Json => outln!(
            "{}",
            to_json(&LocksJson {
                store: ctx.store_text(),
                members: agreement.as_ref().map(|a| a.members),
                locks: listing
                    .locks
                    .iter()
                    .enumerate()
                    .map(|(i, status)| LockJson {
                        status,
                        members_agreeing: agreement
                            .as_ref()
                            .and_then(|a| a.agreeing.get(i).copied()),
                    })
                    .collect(),
                damaged: &listing.damaged,
            })?
        ),
        OutputFormat::Text if listing.locks.is_empty() && listing.damaged.is_empty() => {
            outln!("No locks in {}.", ctx.store_text())
        }
        OutputFormat::Text => out!(
            "{}",
            locks_table(&listing.locks, &listing.damaged, agreement.as_ref())
        ),
    }
    // A damaged record is a store problem the operator must look at.
    Ok(if listing.damaged.is_empty() {
        exit::OK
    } else {
        exit::STORE
    })
}

/// Runs `statelock status KEY`.
pub(crate) async fn status(args: StatusArgs, ctx: &Context) -> Result<i32, CliError> {
    let key = parse_key(&args.key)?;
    let observe = duration::parse("observe", &args.observe)?;
    let opened = ctx.open().await?;
    let client = opened.client;
    let mut status = client
        .observe(&key, observe)
        .await
        .map_err(|e| lock_failure(e, ctx.store_text()))?;
    if let Some(s) = status.as_mut() {
        with_sightings(&client, ctx.store_text(), std::slice::from_mut(s));
    }
    let members = match &opened.quorum {
        Some(q) => Some(member_report(q, &key).await),
        None => None,
    };
    match (args.output, &status, &members) {
        (OutputFormat::Json, Some(s), Some(report)) => {
            outln!("{}", to_json(&QuorumStatusJson::new(s, report))?)
        }
        (OutputFormat::Json, _, _) => outln!("{}", to_json(&status)?),
        (OutputFormat::Text, None, _) => outln!(
            "{:?} has never been locked in {}.",
            key.as_str(),
            ctx.store_text()
        ),
        (OutputFormat::Text, Some(s), _) => out!("{}", status_text(s, client.clock().wall())),
    }
    if let (OutputFormat::Text, Some(report)) = (args.output, &members) {
        out!("{}", report.text());
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{FencingToken, HolderInfo, LeaseId, LockKey, RecordVersion};
    use uuid::Uuid;

    fn status(key: &str, held: bool, stale: bool) -> LockStatus {
        LockStatus {
            record: LockRecord {
                key: LockKey::new(key).unwrap(),
                owner: LeaseId(Uuid::nil()),
                token: FencingToken(7),
                rvn: RecordVersion(0xabc),
                lease_ms: 20_000,
                released: !held,
                holder: HolderInfo {
                    operation: Some("apply".into()),
                    host: Some("ci-1".into()),
                    pid: Some(42),
                    ..HolderInfo::named("alice@laptop")
                },
                acquired_at: WallTime(1_705_329_600_000),
                heartbeat_at: WallTime(1_705_329_630_000),
                forced_by: None,
                queue: Vec::new(),
            },
            held,
            liveness: match (held, stale) {
                (false, _) => Liveness::Released,
                (true, true) => Liveness::Stale,
                (true, false) => Liveness::Unknown,
            },
            unchanged_ms: if stale { 30_000 } else { 5_000 },
            stale,
            wall_age_ms: 5_000,
        }
    }

    #[test]
    fn table_aligns_and_marks_states() {
        let damaged = [DamagedRecord {
            key: "bad".into(),
            reason: "not valid JSON".into(),
        }];
        let table = locks_table(
            &[
                status("a", true, false),
                status("stack:b", false, false),
                status("c", true, true),
            ],
            &damaged,
            None,
        );
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("KEY      STATE    TOKEN  HOLDER"),
            "{table}"
        );
        assert!(
            lines[1].contains("held")
                && lines[1].contains("alice@laptop")
                && lines[1].contains("5s"),
            "{table}"
        );
        assert!(lines[2].contains("free") && !lines[2].contains("alice"));
        assert!(lines[3].contains("STALE") && lines[3].contains("30s"));
        assert!(lines[4].starts_with("bad") && lines[4].contains("DAMAGED"));
        assert!(table.contains("the holder is probably gone"));
        assert!(table.contains("DAMAGED bad: not valid JSON"));
        let column = lines[0].find("STATE").unwrap();
        assert_eq!(&lines[2][column..column + 4], "free");
    }

    /// A Terraform lock: no lease, no token.
    fn terraform_status() -> LockStatus {
        let mut s = status("bucket/env/prod.tfstate", true, false);
        s.liveness = Liveness::NeverExpires;
        s.record.token = FencingToken::NONE;
        s.record.lease_ms = LockRecord::NO_EXPIRY_LEASE_MS;
        s.record
            .holder
            .metadata
            .insert("terraform_version".into(), "1.0.3".into());
        s
    }

    #[test]
    fn terraform_locks_show_no_lease_and_no_token() {
        let now = WallTime(1_705_329_635_000);
        let text = status_text(&terraform_status(), now);
        assert!(
            text.contains("token:          none (this lock format has no fencing tokens)"),
            "{text}"
        );
        assert!(text.contains("lease:          never expires"), "{text}");
        assert!(text.contains("last heartbeat: none"), "{text}");
        assert!(text.contains("meta terraform_version: 1.0.3"), "{text}");
        assert!(text.contains("statelock unlock --force"), "{text}");
        assert!(!text.contains("584942417"), "no absurd lease: {text}");

        let table = locks_table(&[terraform_status(), status("a", true, false)], &[], None);
        let lines: Vec<&str> = table.lines().collect();
        let token = lines[0].find("TOKEN").unwrap();
        assert_eq!(&lines[1][token..token + 2], "- ", "{table}");
        assert!(lines[1].ends_with("never expires"), "{table}");
        assert!(lines[2].ends_with("20s"), "{table}");
        assert!(table.contains("a Terraform lock"), "{table}");
    }

    #[test]
    fn detail_shows_version_and_lease_id() {
        let text = status_text(&status("a", true, false), WallTime(1_705_329_635_000));
        assert!(
            text.contains(&format!("record version: {}", RecordVersion(0xabc))),
            "{text}"
        );
        assert!(text.contains("lease id:       00000000-0000-0000-0000-000000000000"));
        assert!(text.contains("acquired:       2024-01-15T14:40:00Z (35s ago)"));
        assert!(text.contains("pid:            42"));
    }
}
