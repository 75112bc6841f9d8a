//! `statelock state …`: the deployer's state documents in a state store
//! (`--state-store URL` / `STATELOCK_STATE_STORE`; default: a directory per
//! user beside the default lock store).
//!
//! - `show KEY`, `pull KEY [--to FILE]`, `history KEY`: read-only.
//! - `push FILE`: writes a document as the new version. Inside `statelock
//!   exec --state-store URL` it writes as the command's lock holder (the
//!   token and lease `exec` exports; `exec` sealed the state when it
//!   acquired the lock), so a shell deploy script is fenced without any Rust:
//!   once a newer holder sealed, nothing this holder pushes is accepted.
//!   Outside `exec` it takes the key's lock itself for the push.
//!   The document must be based on the current version: its stamp's serial
//!   (as `pull` gave it) must be the current one, else nothing is written.
//! - `backup KEY [--to FILE]`, `restore KEY SNAPSHOT [--force]`: a restore
//!   takes the lock, asks for confirmation like `unlock`, and writes the
//!   snapshot as a new version (the fence never goes back).

use super::duration::{self, human, wall};
use super::input::{parse_key, parse_label};
use super::{default_who, exit, lock_failure, CliError, Context, OutputFormat};
use crate::client::{AcquireOptions, LockClient, LockGuard};
use crate::protocol::{FencingToken, HolderInfo, LeaseId, LockKey};
use crate::state::open::open_state_store;
use crate::state::{seal_for, SealError, StateDocument, StateError, StateStore, Writer};
use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `statelock state`.
#[derive(Debug, clap::Args)]
pub struct StateArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: StateCommand,
}

/// The `state` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum StateCommand {
    /// Show a key's state: its version, fence, save count and contents
    Show {
        /// The lock key (its state lives under stacks/{stack}/{env}/ for stack:S:env:E)
        #[arg(value_name = "KEY")]
        key: String,
        /// Output format (JSON: the whole document)
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Write a key's state document to stdout (or --to FILE), to change and push back
    Pull {
        /// The lock key
        #[arg(value_name = "KEY")]
        key: String,
        /// Write it to this file instead of stdout
        #[arg(long, value_name = "FILE")]
        to: Option<PathBuf>,
    },
    /// Write a document (from FILE, or - for stdin) as the key's new state
    Push {
        /// The document to write (as `pull` gave it, changed)
        #[arg(value_name = "FILE")]
        file: String,
        /// The lock key (default: $STATELOCK_KEY, set by `statelock exec`)
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// Outside `exec`: how long to wait for the key's lock
        #[arg(long, default_value = "10m", value_name = "DURATION")]
        wait: String,
    },
    /// List a key's saved versions, newest first
    History {
        /// The lock key
        #[arg(value_name = "KEY")]
        key: String,
        /// How many to list
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Output format
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Copy a key's current state to a backup in the store (or --to FILE)
    Backup {
        /// The lock key
        #[arg(value_name = "KEY")]
        key: String,
        /// Write it to this file instead of a backup in the store
        #[arg(long, value_name = "FILE")]
        to: Option<PathBuf>,
    },
    /// Write a history snapshot or backup as the key's new state (takes the lock)
    Restore {
        /// The lock key
        #[arg(value_name = "KEY")]
        key: String,
        /// The snapshot or backup name (see `state history`)
        #[arg(value_name = "SNAPSHOT")]
        snapshot: String,
        /// Also write over a document whose checksums fail
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation (required when stdin is not a terminal)
        #[arg(long, short)]
        yes: bool,
        /// How long to wait for the key's lock
        #[arg(long, default_value = "10m", value_name = "DURATION")]
        wait: String,
    },
}

/// The exit code and sentence of a state error.
pub(crate) fn state_failure(e: StateError, store: &str) -> CliError {
    let (code, advice) = match &e {
        StateError::Stale { .. } => (exit::LEASE_LOST, "nothing was written"),
        StateError::NotSealed { .. } => (
            exit::FAILURE,
            "inside `statelock exec`, pass --state-store (or set STATELOCK_STATE_STORE) so exec seals the state when it takes the lock",
        ),
        StateError::VersionMismatch { .. } => (
            exit::CHANGED,
            "pull the state again, apply your change to it and push again",
        ),
        StateError::ChecksumMismatch { .. } => (
            exit::STORE,
            "nothing was written; see `statelock state history` and restore a good snapshot with --force",
        ),
        StateError::NotFound(_) => (exit::USAGE, "see `statelock state history`"),
        StateError::Unavailable(_) => (exit::STORE, "check that the state store is reachable, then try again"),
        StateError::Corrupt { .. } => (exit::STORE, "inspect that object in the state store"),
        _ => (
            exit::STORE,
            "check --state-store / STATELOCK_STATE_STORE and the store's setup",
        ),
    };
    CliError::new(code, format!("{e} (state store {store}); {advice}"))
}

fn seal_failure(e: SealError, ctx: &Context, state: &str) -> CliError {
    match e {
        SealError::Lock(e) => lock_failure(e, ctx.store_text()),
        SealError::State(e) => state_failure(e, state),
    }
}

fn read_document(file: &str) -> Result<StateDocument, CliError> {
    let bytes = if file == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| CliError::usage(format!("cannot read the document from stdin: {e}")))?;
        bytes
    } else {
        std::fs::read(file).map_err(|e| CliError::usage(format!("cannot read {file}: {e}")))?
    };
    StateDocument::from_json(&bytes).map_err(|e| CliError::usage(format!("{file}: {e}")))
}

fn write_out(to: Option<&PathBuf>, bytes: &[u8]) -> Result<(), CliError> {
    match to {
        Some(path) => std::fs::write(path, bytes).map_err(|e| {
            CliError::new(
                exit::FAILURE,
                format!("cannot write {}: {e}", path.display()),
            )
        }),
        None => {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(bytes);
            let _ = out.flush();
            Ok(())
        }
    }
}

/// The holder `statelock exec` exported to its command, if any.
fn writer_from_env() -> Result<Option<Writer>, CliError> {
    let (Ok(key), Ok(token), Ok(lease)) = (
        std::env::var("STATELOCK_KEY"),
        std::env::var("STATELOCK_TOKEN"),
        std::env::var("STATELOCK_LEASE_ID"),
    ) else {
        return Ok(None);
    };
    let key = parse_key(&key)?;
    let token = token
        .parse::<u64>()
        .map(FencingToken)
        .map_err(|_| CliError::usage(format!("STATELOCK_TOKEN {token:?} is not a token")))?;
    let lease = uuid::Uuid::parse_str(&lease)
        .map(LeaseId)
        .map_err(|_| CliError::usage(format!("STATELOCK_LEASE_ID {lease:?} is not a lease id")))?;
    Ok(Some(Writer { key, token, lease }))
}

/// Takes `key`'s lock for a state command run outside `exec`, and seals.
async fn lock_and_seal(
    ctx: &Context,
    key: &LockKey,
    wait: &str,
    operation: &str,
    state: &dyn StateStore,
    state_text: &str,
) -> Result<(LockClient, LockGuard, Writer), CliError> {
    let wait = duration::parse_wait(wait)?;
    let client = ctx.client().await?;
    let holder = HolderInfo {
        operation: Some(operation.to_string()),
        host: Some(super::hostname()),
        pid: Some(std::process::id()),
        ..HolderInfo::named(parse_label("who", default_who())?)
    };
    let opts = AcquireOptions {
        wait,
        holder,
        ..AcquireOptions::default()
    };
    let guard = client.acquire(key, opts).await.map_err(|e| match e {
        crate::client::LockError::Held { holder }
        | crate::client::LockError::Timeout {
            holder: Some(holder),
            ..
        } => CliError::new(
            exit::HELD,
            format!(
                "{:?} is held by {}; raise --wait to wait longer",
                key.as_str(),
                holder.holder
            ),
        ),
        other => lock_failure(other, ctx.store_text()),
    })?;
    let (writer, _) = seal_for(state, &guard)
        .await
        .map_err(|e| seal_failure(e, ctx, state_text))?;
    Ok((client, guard, writer))
}

async fn release(guard: LockGuard) {
    if let Err(e) = guard.release().await {
        errln!("statelock: could not release the lock ({e}); it frees itself after one lease.");
    }
}

/// Pushes `doc` as `writer`: it must be based on the current version.
async fn push_as(
    state: &dyn StateStore,
    writer: &Writer,
    doc: StateDocument,
    state_text: &str,
) -> Result<u64, CliError> {
    let current = state
        .load(&writer.key)
        .await
        .map_err(|e| state_failure(e, state_text))?
        .ok_or_else(|| {
            state_failure(
                StateError::NotSealed {
                    key: writer.key.to_string(),
                    fence: None,
                },
                state_text,
            )
        })?;
    // A holder whose lock was taken over is told so first: that is why
    // nothing it writes can land.
    if let Some(stamp) = current.stamp() {
        if stamp.fence > writer.token
            || (stamp.fence == writer.token && stamp.lease != writer.lease)
        {
            return Err(state_failure(
                StateError::Stale {
                    fence: stamp.fence,
                    token: writer.token,
                },
                state_text,
            ));
        }
    }
    let now = current.stamp().map_or(0, |s| s.serial);
    let based_on = doc.statelock.map_or(0, |s| s.serial);
    if based_on != now {
        return Err(CliError::new(
            exit::CHANGED,
            format!(
                "the state of {:?} changed since this document was pulled (it is based on save {based_on}, the state is at save {now}); nothing was written: pull again, redo the change, push again",
                writer.key.as_str()
            ),
        ));
    }
    state
        .save(writer, &current.version, doc)
        .await
        .map_err(|e| state_failure(e, state_text))?;
    Ok(now + 1)
}

/// Runs `statelock state …`.
pub(crate) async fn run(args: StateArgs, ctx: &Context) -> Result<i32, CliError> {
    let (state, state_text) = open_state_store(ctx.state_store_url())
        .await
        .map_err(|e| state_failure(e, ctx.state_store_url().unwrap_or("(default)")))?;
    let state: &dyn StateStore = &*state;
    match args.command {
        StateCommand::Show { key, output } => {
            let key = parse_key(&key)?;
            let loaded = state
                .load(&key)
                .await
                .map_err(|e| state_failure(e, &state_text))?;
            match (output, loaded) {
                (OutputFormat::Json, Some(l)) => {
                    let bytes = l
                        .document
                        .to_json()
                        .map_err(|e| CliError::new(exit::FAILURE, e))?;
                    write_out(None, &bytes)?;
                }
                (OutputFormat::Json, None) => outln!("null"),
                (OutputFormat::Text, None) => {
                    outln!("{:?} has no state in {state_text}.", key.as_str())
                }
                (OutputFormat::Text, Some(l)) => {
                    let d = &l.document;
                    outln!("key:            {}", key.as_str());
                    outln!("store:          {state_text}");
                    outln!("version:        {}", l.version);
                    if let Some(s) = l.stamp() {
                        outln!("saves:          {}", s.serial);
                        outln!("fence:          token {} (lease {})", s.fence, s.lease);
                        outln!("written:        {}", wall(s.written_at));
                    }
                    if let Some(by) = &d.metadata.last_updated_by {
                        outln!("updated by:     {by}");
                    }
                    outln!("resources:      {}", d.resources.len());
                    outln!("outputs:        {}", d.outputs.len());
                    outln!("checksums:      ok");
                }
            }
            Ok(exit::OK)
        }
        StateCommand::Pull { key, to } => {
            let key = parse_key(&key)?;
            let doc = match state
                .load(&key)
                .await
                .map_err(|e| state_failure(e, &state_text))?
            {
                Some(l) => l.document,
                None => {
                    let (stack, env) = crate::state::layout::stack_and_env(&key).unzip();
                    StateDocument::empty(stack, env)
                }
            };
            let bytes = doc.to_json().map_err(|e| CliError::new(exit::FAILURE, e))?;
            write_out(to.as_ref(), &bytes)?;
            Ok(exit::OK)
        }
        StateCommand::Push { file, key, wait } => {
            let doc = read_document(&file)?;
            match writer_from_env()? {
                Some(writer) => {
                    if let Some(k) = key {
                        if parse_key(&k)? != writer.key {
                            return Err(CliError::usage(format!(
                                "--key {k:?} is not the key this `statelock exec` holds ({:?})",
                                writer.key.as_str()
                            )));
                        }
                    }
                    let serial = push_as(state, &writer, doc, &state_text).await?;
                    errln!(
                        "statelock: saved {:?} as save {serial} with token {}.",
                        writer.key.as_str(),
                        writer.token
                    );
                    Ok(exit::OK)
                }
                None => {
                    let key = key.ok_or_else(|| {
                        CliError::usage(
                            "outside `statelock exec`, say which state to push with --key KEY",
                        )
                    })?;
                    let key = parse_key(&key)?;
                    let (_client, guard, writer) =
                        lock_and_seal(ctx, &key, &wait, "state push", state, &state_text).await?;
                    let result = push_as(state, &writer, doc, &state_text).await;
                    release(guard).await;
                    let serial = result?;
                    errln!(
                        "statelock: saved {:?} as save {serial} with token {}.",
                        key.as_str(),
                        writer.token
                    );
                    Ok(exit::OK)
                }
            }
        }
        StateCommand::History { key, limit, output } => {
            let key = parse_key(&key)?;
            let history = state
                .history(&key, limit)
                .await
                .map_err(|e| state_failure(e, &state_text))?;
            match output {
                OutputFormat::Json => outln!(
                    "{}",
                    serde_json::to_string_pretty(&history)
                        .map_err(|e| CliError::new(exit::FAILURE, e.to_string()))?
                ),
                OutputFormat::Text if history.is_empty() => {
                    outln!("{:?} has no saved versions in {state_text}.", key.as_str())
                }
                OutputFormat::Text => {
                    outln!(
                        "{:<22} {:>6} {:>7}  {:<20}  UPDATED BY",
                        "SNAPSHOT",
                        "SAVE",
                        "TOKEN",
                        "WRITTEN"
                    );
                    for h in &history {
                        outln!(
                            "{:<22} {:>6} {:>7}  {:<20}  {}{}",
                            h.id,
                            h.serial,
                            h.token.0,
                            wall(h.written_at),
                            h.updated_by.as_deref().unwrap_or("-"),
                            if h.checksums_ok {
                                ""
                            } else {
                                "  (checksum FAILS)"
                            }
                        );
                    }
                }
            }
            Ok(exit::OK)
        }
        StateCommand::Backup { key, to } => {
            let key = parse_key(&key)?;
            match to {
                Some(path) => {
                    let loaded = state
                        .load(&key)
                        .await
                        .map_err(|e| state_failure(e, &state_text))?
                        .ok_or_else(|| {
                            CliError::usage(format!("{:?} has no state to back up", key.as_str()))
                        })?;
                    let bytes = loaded
                        .document
                        .to_json()
                        .map_err(|e| CliError::new(exit::FAILURE, e))?;
                    write_out(Some(&path), &bytes)?;
                    outln!(
                        "Wrote the state of {:?} to {}.",
                        key.as_str(),
                        path.display()
                    );
                }
                None => {
                    let name = state
                        .backup(&key)
                        .await
                        .map_err(|e| state_failure(e, &state_text))?;
                    outln!("Backed up {:?} as {name} (restore with `statelock state restore {} {name}`).", key.as_str(), key.as_str());
                }
            }
            Ok(exit::OK)
        }
        StateCommand::Restore {
            key,
            snapshot,
            force,
            yes,
            wait,
        } => {
            let key = parse_key(&key)?;
            // The snapshot must exist and be sound before anything is locked.
            let doc = state
                .snapshot(&key, &snapshot)
                .await
                .map_err(|e| state_failure(e, &state_text))?;
            if !yes {
                if !std::io::stdin().is_terminal() {
                    return Err(CliError::usage(format!(
                        "refusing to restore {:?} without confirmation because stdin is not a terminal; add --yes",
                        key.as_str()
                    )));
                }
                let question = format!(
                    "Restore {:?} to snapshot {snapshot} ({} resources, saved with token {})?",
                    key.as_str(),
                    doc.resources.len(),
                    doc.statelock
                        .map_or_else(|| "-".to_string(), |s| s.fence.to_string())
                );
                if !super::input::confirm(question).await {
                    errln!("statelock: nothing was restored.");
                    return Ok(exit::FAILURE);
                }
            }
            let (_client, guard, writer) =
                lock_and_seal(ctx, &key, &wait, "state restore", state, &state_text).await?;
            let result = state.restore(&writer, &snapshot, force).await;
            release(guard).await;
            result.map_err(|e| state_failure(e, &state_text))?;
            outln!(
                "Restored {:?} to {snapshot} as a new version, written with token {}.",
                key.as_str(),
                writer.token
            );
            Ok(exit::OK)
        }
    }
}

/// Seals `guard`'s state for `exec` (the store named by `url`): returns the
/// store's text and the (possibly raised) token to export.
pub(crate) async fn seal_for_exec(
    url: &str,
    guard: &LockGuard,
    ctx: &Context,
) -> Result<(String, FencingToken), CliError> {
    let (state, text): (Arc<dyn StateStore>, String) = open_state_store(Some(url))
        .await
        .map_err(|e| state_failure(e, url))?;
    let started = std::time::Instant::now();
    let (writer, _) = seal_for(&*state, guard)
        .await
        .map_err(|e| seal_failure(e, ctx, &text))?;
    let took = started.elapsed();
    if took > Duration::from_secs(2) {
        errln!("statelock: sealing the state took {}.", human(took));
    }
    Ok((text, writer.token))
}
