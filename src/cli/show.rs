//! `statelock locks` and `statelock status`: what the store says, as a table,
//! a detail view or JSON (the library's [`LockStatus`]). Read-only.

use super::duration::{human, wall, wall_with_age};
use super::exec::parse_key;
use super::{exit, lock_failure, CliError, Context, OutputFormat};
use crate::client::LockStatus;
use crate::protocol::{LockRecord, WallTime};
use std::fmt::Write as _;

/// Arguments of `statelock locks`.
#[derive(Debug, clap::Args)]
pub struct LocksArgs {
    /// Output format
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// Arguments of `statelock status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The lock key
    #[arg(value_name = "KEY")]
    pub key: String,
    /// Output format (JSON: a LockStatus, or null if the key was never locked)
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// `held`, `free` or `STALE`.
pub(crate) fn state_word(status: &LockStatus) -> &'static str {
    match (status.held, status.stale) {
        (false, _) => "free",
        (true, false) => "held",
        (true, true) => "STALE",
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

/// Renders the `locks` table (a header and one row per lock).
pub(crate) fn locks_table(statuses: &[LockStatus], now: WallTime) -> String {
    const HEADER: [&str; 8] = [
        "KEY",
        "STATE",
        "TOKEN",
        "HOLDER",
        "OPERATION",
        "ACQUIRED",
        "LAST HEARTBEAT",
        "LEASE",
    ];
    let dash = || "-".to_string();
    let rows: Vec<[String; 8]> = statuses
        .iter()
        .map(|s| {
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
                if held && r.expires() {
                    format!("{} ago", human(now.saturating_since(r.heartbeat_at)))
                } else {
                    dash()
                },
                lease_cell(r),
            ]
        })
        .collect();
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
    line(&HEADER);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    if statuses.iter().any(|s| s.stale) {
        out.push_str(
            "\nSTALE: held, but no heartbeat for longer than a takeover wait; the holder is probably gone and the next waiter will take the lock over.\n",
        );
    }
    if statuses.iter().any(|s| s.held && !s.record.expires()) {
        out.push_str(NEVER_EXPIRES_NOTE);
    }
    out
}

/// Explains locks without a lease (Terraform's), below a table or detail.
const NEVER_EXPIRES_NOTE: &str = "\nnever expires: a lock without a lease or fencing token (a Terraform lock); it stays until its holder releases it or an operator runs `statelock unlock --force` after checking the holder is gone.\n";

/// Renders one lock in detail.
pub(crate) fn status_text(status: &LockStatus, now: WallTime) -> String {
    let r = &status.record;
    let mut out = String::new();
    let mut field = |name: &str, value: &str| {
        let _ = writeln!(out, "{:<15} {value}", format!("{name}:"));
    };
    let state = match state_word(status) {
        "STALE" => format!(
            "STALE (held, but no heartbeat for {}; a waiter would take it over)",
            human(now.saturating_since(r.heartbeat_at))
        ),
        word => word.to_string(),
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
        (true, true) => field("last heartbeat", &wall_with_age(r.heartbeat_at, now)),
        (true, false) => field("last heartbeat", "none (this lock is never renewed)"),
        (false, _) => field("released", &wall_with_age(r.heartbeat_at, now)),
    }
    if let Some(by) = &r.forced_by {
        field("forced by", by);
    }
    if status.held && !r.expires() {
        out.push_str(NEVER_EXPIRES_NOTE);
    }
    out
}

/// Runs `statelock locks`.
pub(crate) async fn locks(args: LocksArgs, ctx: &Context) -> Result<i32, CliError> {
    let client = ctx.client().await?;
    let statuses = client
        .locks()
        .await
        .map_err(|e| lock_failure(e, ctx.store_text()))?;
    match args.output {
        OutputFormat::Json => outln!("{}", to_json(&statuses)?),
        OutputFormat::Text if statuses.is_empty() => outln!("No locks in {}.", ctx.store_text()),
        OutputFormat::Text => out!("{}", locks_table(&statuses, client.clock().wall())),
    }
    Ok(exit::OK)
}

/// Runs `statelock status KEY`.
pub(crate) async fn status(args: StatusArgs, ctx: &Context) -> Result<i32, CliError> {
    let key = parse_key(&args.key)?;
    let client = ctx.client().await?;
    let status = client
        .status(&key)
        .await
        .map_err(|e| lock_failure(e, ctx.store_text()))?;
    match (args.output, &status) {
        (OutputFormat::Json, _) => outln!("{}", to_json(&status)?),
        (OutputFormat::Text, None) => outln!(
            "{:?} has never been locked in {}.",
            key.as_str(),
            ctx.store_text()
        ),
        (OutputFormat::Text, Some(s)) => out!("{}", status_text(s, client.clock().wall())),
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
            },
            held,
            heartbeat_age_ms: 5_000,
            stale,
        }
    }

    #[test]
    fn table_aligns_and_marks_states() {
        let now = WallTime(1_705_329_635_000);
        let table = locks_table(
            &[
                status("a", true, false),
                status("stack:b", false, false),
                status("c", true, true),
            ],
            now,
        );
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("KEY      STATE  TOKEN  HOLDER"),
            "{table}"
        );
        assert!(
            lines[1].contains("held")
                && lines[1].contains("alice@laptop")
                && lines[1].contains("5s ago")
        );
        assert!(lines[2].contains("free") && !lines[2].contains("alice"));
        assert!(lines[3].contains("STALE"));
        assert!(table.contains("the holder is probably gone"));
        let column = lines[0].find("STATE").unwrap();
        assert_eq!(&lines[2][column..column + 4], "free");
    }

    /// A Terraform lock: no lease, no token.
    fn terraform_status() -> LockStatus {
        let mut s = status("bucket/env/prod.tfstate", true, false);
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

        let table = locks_table(&[terraform_status(), status("a", true, false)], now);
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
