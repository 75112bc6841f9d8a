//! `statelock unlock KEY --force`: release a lock someone else holds.
//!
//! The operator sees the holder first; the force-unlock is then conditional on
//! the record version that was shown (`OwnerOnlyRelease`), so a lock that was
//! renewed, released or taken over in the meantime is left alone (exit 4).
//! Without `--yes` it asks on the terminal, and refuses when stdin is not one.
//!
//! On a quorum store the operator also sees each member's record; the
//! quorum's force-unlock is conditional per member on the view that was
//! shown, and the answer says on how many members the lock was released.

use super::duration::{human, wall, wall_with_age};
use super::input::{confirm, parse_key, parse_label};
use super::quorum::member_report;
use super::show::with_sightings;
use super::{default_who, exit, lock_failure, CliError, Context};
use crate::client::{Liveness, LockError};
use crate::protocol::{LockRecord, WallTime};
use std::io::IsTerminal;
use std::time::Duration;

/// The longest the prompt watches a holder whose liveness is unknown.
const OBSERVE_AT_MOST: Duration = Duration::from_secs(10);

/// Arguments of `statelock unlock`.
#[derive(Debug, clap::Args)]
pub struct UnlockArgs {
    /// The lock key
    #[arg(value_name = "KEY")]
    pub key: String,
    /// Required: release the lock although someone else holds it
    #[arg(long)]
    pub force: bool,
    /// Do not ask for confirmation (required when stdin is not a terminal)
    #[arg(long, short)]
    pub yes: bool,
    /// Who is forcing it, recorded for audit (default: `$USER@hostname`)
    #[arg(long, value_name = "NAME")]
    pub who: Option<String>,
}

fn describe_current(current: Option<&LockRecord>, now: WallTime) -> String {
    match current {
        None => "gone".to_string(),
        Some(r) if r.released => format!("released at {}", wall(r.heartbeat_at)),
        Some(r) => format!(
            "held by {} since {} with token {}",
            r.holder,
            wall_with_age(r.acquired_at, now),
            r.token
        ),
    }
}

/// Runs `statelock unlock`.
pub(crate) async fn run(args: UnlockArgs, ctx: &Context) -> Result<i32, CliError> {
    let key = parse_key(&args.key)?;
    if !args.force {
        return Err(CliError::usage(format!(
            "refusing to unlock {:?} without --force: releasing a lock that someone holds lets a second writer in; check `statelock status` first, then add --force",
            key.as_str()
        )));
    }
    let by = parse_label("who", args.who.unwrap_or_else(default_who))?;
    let opened = ctx.open().await?;
    let client = opened.client;
    let mut status = client
        .status(&key)
        .await
        .map_err(|e| lock_failure(e, ctx.store_text()))?;
    if let Some(s) = status.as_mut() {
        with_sightings(&client, ctx.store_text(), std::slice::from_mut(s));
    }
    // Unknown liveness: watch the record for a moment (a live holder renews
    // every third of its lease) before asking.
    // Only when a live holder would renew within the watch (and the operator
    // did not already answer with --yes).
    let renews_within = |s: &crate::client::LockStatus| {
        s.record.lease() / 3 + Duration::from_millis(500) <= OBSERVE_AT_MOST
    };
    if let Some(s) = status
        .as_ref()
        .filter(|s| s.liveness == Liveness::Unknown && !args.yes && renews_within(s))
    {
        let patience = s.record.lease() / 3 + Duration::from_millis(500);
        errln!(
            "statelock: watching {:?} for up to {} to see whether its holder is alive...",
            key.as_str(),
            human(patience)
        );
        status = client
            .observe(&key, patience)
            .await
            .map_err(|e| lock_failure(e, ctx.store_text()))?;
        if let Some(s) = status.as_mut() {
            with_sightings(&client, ctx.store_text(), std::slice::from_mut(s));
        }
    }
    let now = client.clock().wall();
    let shown = match status {
        None => {
            outln!(
                "{:?} has never been locked; nothing to unlock.",
                key.as_str()
            );
            return Ok(exit::OK);
        }
        Some(s) if !s.held => {
            outln!(
                "{:?} is not held ({}); nothing to unlock.",
                key.as_str(),
                describe_current(Some(&s.record), now)
            );
            return Ok(exit::OK);
        }
        Some(s) => s,
    };
    let record = &shown.record;
    let unchanged = human(Duration::from_millis(shown.unchanged_ms));
    let renew = human(record.lease() / 3);
    let staleness = match shown.liveness {
        Liveness::Stale => format!(
            "this machine has seen it unchanged for {unchanged}, longer than a takeover wait, so the holder is probably gone"
        ),
        Liveness::Alive => format!(
            "its holder renewed it while this machine watched (every {renew}), so the holder IS running"
        ),
        Liveness::NeverExpires => {
            "it never expires (a Terraform lock): make sure its holder is gone".to_string()
        }
        _ => format!(
            "this machine has seen it unchanged for only {unchanged} (a live holder renews every {renew}), so the holder may still be running"
        ),
    };
    errln!(
        "{:?} is {} (record version {}); {staleness}.",
        key.as_str(),
        describe_current(Some(record), now),
        record.rvn
    );
    let quorum = opened.quorum.as_deref();
    if let Some(q) = quorum {
        errln!(
            "It is a quorum lock; its member stores hold:\n{}",
            member_report(q, &key).await.text().trim_end()
        );
    }
    let on_quorum = match quorum {
        Some(q) => format!(" on the quorum of {} stores", q.members().len()),
        None => String::new(),
    };
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::usage(format!(
                "refusing to force-unlock {:?} without confirmation because stdin is not a terminal; add --yes to confirm",
                key.as_str()
            )));
        }
        let question = format!(
            "Force-unlock {:?}{on_quorum} held by {} since {}?",
            key.as_str(),
            record.holder,
            wall(record.acquired_at)
        );
        if !confirm(question).await {
            errln!("statelock: not unlocked.");
            return Ok(exit::FAILURE);
        }
    }
    match client.force_unlock(&key, record.rvn, &by).await {
        Ok(forced) => {
            let released_on = match quorum {
                Some(q) => format!(
                    " on {} of the quorum's {} member stores",
                    member_report(q, &key).await.holding(forced.rvn),
                    q.members().len()
                ),
                None => String::new(),
            };
            outln!(
                "Force-unlocked {:?}{released_on} (was held by {} with token {}); if that holder is still running it loses the lock at its next heartbeat, and the next holder gets a larger token.",
                key.as_str(),
                record.holder,
                record.token
            );
            Ok(exit::OK)
        }
        Err(LockError::Changed { current }) => {
            let now = client.clock().wall();
            let what = match current.as_deref() {
                Some(c) if c.is_held() && c.owner == record.owner => {
                    "the holder renewed its lease meanwhile, so it is alive".to_string()
                }
                other => format!("it is now {}", describe_current(other, now)),
            };
            Err(CliError::new(
                exit::CHANGED,
                format!(
                    "{:?} changed after it was shown ({what}); nothing was forced: look again with `statelock status` before retrying",
                    key.as_str()
                ),
            ))
        }
        Err(LockError::NotFound(_)) => {
            outln!(
                "{:?} has never been locked; nothing to unlock.",
                key.as_str()
            );
            Ok(exit::OK)
        }
        Err(other) => Err(lock_failure(other, ctx.store_text())),
    }
}
