//! `statelock purge --older-than D`: remove lock records released long ago.
//!
//! Records are never deleted by the protocol's own operations (their token
//! keeps the key's fencing tokens increasing). `purge` deletes released
//! records whose release is older than `--older-than`, each only after the
//! store's token floor has been raised above its token, so the next grant of
//! a purged key continues above every token ever issued. Held records are
//! never touched. `--dry-run` lists what would go; without `--yes` it asks
//! on a terminal and refuses otherwise, like `unlock`.

use super::duration::{self, human, wall};
use super::{exit, lock_failure, CliError, Context, OutputFormat};
use crate::client::{LockError, PurgeReport, PURGE_MIN_AGE};
use std::io::IsTerminal;

/// Arguments of `statelock purge`.
#[derive(Debug, clap::Args)]
pub struct PurgeArgs {
    /// Remove records released longer ago than this (at least 1h), e.g. 90d
    #[arg(long, value_name = "DURATION")]
    pub older_than: String,
    /// Only list what would be removed
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (required when stdin is not a terminal)
    #[arg(long, short)]
    pub yes: bool,
    /// Output format
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

fn summary(report: &PurgeReport, dry_run: bool) -> String {
    let verb = if dry_run { "would remove" } else { "removed" };
    format!(
        "{verb} {} released record{}; kept {} held, {} released recently{}",
        report.purged.len(),
        if report.purged.len() == 1 { "" } else { "s" },
        report.kept_held,
        report.kept_recent,
        if report.changed > 0 {
            format!(", {} that changed meanwhile", report.changed)
        } else {
            String::new()
        }
    )
}

/// Runs `statelock purge`.
pub(crate) async fn run(args: PurgeArgs, ctx: &Context) -> Result<i32, CliError> {
    let older_than = duration::parse("older-than", &args.older_than)?;
    if older_than < PURGE_MIN_AGE {
        return Err(CliError::usage(format!(
            "--older-than {} is too short: records released less than {} ago are never purged (a grant sent before the purge could still land); use e.g. --older-than 30d",
            args.older_than.trim(),
            human(PURGE_MIN_AGE)
        )));
    }
    let client = ctx.client().await?;
    let preview = client
        .purge(older_than, true)
        .await
        .map_err(|e| purge_failure(e, ctx))?;
    if args.dry_run || preview.purged.is_empty() {
        return report(&preview, true, args.output);
    }
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::usage(format!(
                "refusing to purge {} record(s) from {} without confirmation because stdin is not a terminal; add --yes (or look first with --dry-run)",
                preview.purged.len(),
                ctx.store_text()
            )));
        }
        for r in &preview.purged {
            errln!(
                "  {}  token {}  released {}",
                r.key,
                r.token,
                wall(r.heartbeat_at)
            );
        }
        let question = format!(
            "Remove these {} released record(s) from {}? (their tokens are kept in the token floor)",
            preview.purged.len(),
            ctx.store_text()
        );
        if !super::input::confirm(question).await {
            errln!("statelock: nothing was purged.");
            return Ok(exit::FAILURE);
        }
    }
    let done = client
        .purge(older_than, false)
        .await
        .map_err(|e| purge_failure(e, ctx))?;
    report(&done, false, args.output)
}

fn purge_failure(e: LockError, ctx: &Context) -> CliError {
    match e {
        LockError::PurgeTooSoon { .. } => CliError::usage(e.to_string()),
        other => lock_failure(other, ctx.store_text()),
    }
}

fn report(report: &PurgeReport, dry_run: bool, output: OutputFormat) -> Result<i32, CliError> {
    match output {
        OutputFormat::Json => {
            let json = serde_json::json!({
                "dry_run": dry_run,
                "purged": report.purged,
                "kept_held": report.kept_held,
                "kept_recent": report.kept_recent,
                "changed": report.changed,
            });
            outln!("{json:#}");
        }
        OutputFormat::Text => {
            for r in &report.purged {
                outln!(
                    "{} {}  (token {}, released {})",
                    if dry_run { "would remove" } else { "removed" },
                    r.key,
                    r.token,
                    wall(r.heartbeat_at)
                );
            }
            outln!("{}.", summary(report, dry_run));
        }
    }
    Ok(exit::OK)
}
