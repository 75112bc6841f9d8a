//! `statelock exec`: run a command while holding a lock.
//!
//! Order of events: validate the input; open the store; acquire the key
//! (waiting with progress output, interruptible by SIGINT/SIGTERM/SIGHUP);
//! run the command with `STATELOCK_KEY`, `STATELOCK_TOKEN` and
//! `STATELOCK_LEASE_ID` in its environment while the guard heartbeats; if the
//! lease is lost, SIGTERM the command, SIGKILL it after `--grace`, and exit 75;
//! release the lock on every path.
//!
//! Signals and process groups: when stdin is a terminal the command stays in
//! statelock's process group, so it can read the terminal and job control
//! works; the terminal already delivers Ctrl-C (SIGINT) and hangups to it, so
//! statelock forwards those only when the terminal did not (it is not the
//! foreground job). Otherwise (CI, scripts) the command gets its own process
//! group and every signal goes to the whole group, so a wrapper script's
//! children stop too when the lease is lost.

use super::duration::{self, human, wall_with_age};
use super::progress::WaitReporter;
use super::{default_who, exit, hostname, lock_failure, CliError, Context};
use crate::client::{AcquireOptions, LockError, LockGuard, WaitProgress};
use crate::protocol::{HolderInfo, LockKey, LockRecord, LostReason, ProtocolConfig};
use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::io::IsTerminal;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Arguments of `statelock exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The lock key, e.g. stack:user-platform:env:production
    #[arg(long, value_name = "KEY")]
    pub key: String,
    /// The lease: renewed every third of it; a crashed holder's lock is taken over about one lease after its last heartbeat
    #[arg(long, default_value = "20s", value_name = "DURATION")]
    pub lease: String,
    /// How long to wait for a held lock (0s: fail at once if held; `forever`: no limit)
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    pub wait: String,
    /// Who holds the lock, shown to others (default: `$USER@hostname`)
    #[arg(long, value_name = "NAME")]
    pub who: Option<String>,
    /// What the command does, shown to others (e.g. apply)
    #[arg(long, value_name = "OP")]
    pub operation: Option<String>,
    /// After a lost lease, how long the command has between SIGTERM and SIGKILL
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    pub grace: String,
    /// The command to run and its arguments, after `--`
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Validated input.
struct ExecPlan {
    key: LockKey,
    lease: Duration,
    wait: Option<Duration>,
    grace: Duration,
    holder: HolderInfo,
    /// The program to run and its arguments.
    program: String,
    program_args: Vec<String>,
}

/// Parses and checks `--key`; one line even for keys with newlines.
pub(crate) fn parse_key(key: &str) -> Result<LockKey, CliError> {
    LockKey::new(key).map_err(|e| {
        let shown: String = key.chars().take(80).collect();
        let ellipsis = if shown.len() < key.len() { "..." } else { "" };
        CliError::usage(format!("invalid lock key {shown:?}{ellipsis}: {e}"))
    })
}

/// Checks a free-text holder field shown to others: one line, not empty.
pub(crate) fn parse_label(flag: &str, value: String) -> Result<String, CliError> {
    if value.trim().is_empty() || value.chars().any(char::is_control) {
        return Err(CliError::usage(format!(
            "invalid --{flag} {value:?}: it must be non-empty text without control characters"
        )));
    }
    Ok(value)
}

fn plan(args: ExecArgs) -> Result<ExecPlan, CliError> {
    let key = parse_key(&args.key)?;
    let lease = duration::parse("lease", &args.lease)?;
    // The client uses the default protocol constants; check the lease before
    // touching the store.
    ProtocolConfig::default()
        .check_lease(lease)
        .map_err(|e| CliError::usage(format!("invalid --lease {:?}: {e}", args.lease)))?;
    let wait = duration::parse_wait(&args.wait)?;
    let grace = duration::parse("grace", &args.grace)?;
    let mut command = args.command.into_iter();
    let program = match command.next() {
        None => {
            return Err(CliError::usage(
                "missing the command to run: put it after --, e.g. statelock exec --key KEY -- terraform apply",
            ))
        }
        Some(program) if program.is_empty() => {
            return Err(CliError::usage(
                "the command to run (after --) must not be an empty string",
            ))
        }
        Some(program) => program,
    };
    let locked_by = parse_label("who", args.who.unwrap_or_else(default_who))?;
    let operation = args
        .operation
        .map(|op| parse_label("operation", op))
        .transpose()?;
    Ok(ExecPlan {
        key,
        lease,
        wait,
        grace,
        holder: HolderInfo {
            locked_by,
            operation,
            host: Some(hostname()),
            pid: Some(std::process::id()),
            metadata: Default::default(),
        },
        program,
        program_args: command.collect(),
    })
}

/// SIGINT, SIGTERM and SIGHUP, as they arrive.
struct Signals {
    rx: mpsc::UnboundedReceiver<Signal>,
}

impl Signals {
    /// Installs the handlers (from now on these signals no longer kill
    /// statelock: it cancels the wait or forwards them).
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    Some(()) = interrupt.recv() => Signal::SIGINT,
                    Some(()) = terminate.recv() => Signal::SIGTERM,
                    Some(()) = hangup.recv() => Signal::SIGHUP,
                    else => return,
                };
                if tx.send(received).is_err() {
                    return;
                }
            }
        });
        Ok(Signals { rx })
    }

    async fn recv(&mut self) -> Option<Signal> {
        self.rx.recv().await
    }
}

/// Where signals for the command go.
struct ChildTarget {
    pid: Pid,
    /// The command leads its own process group: signal the group.
    own_group: bool,
}

impl ChildTarget {
    fn signal(&self, sig: Signal) {
        let sent = if self.own_group {
            killpg(self.pid, sig)
        } else {
            kill(self.pid, sig)
        };
        match sent {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => {
                tracing::warn!(pid = self.pid.as_raw(), signal = %sig, error = %e, "cannot signal the command")
            }
        }
    }

    /// Passes on a signal statelock received, unless the terminal already
    /// delivered it to the command (Ctrl-C / hangup of the foreground job).
    fn forward(&self, sig: Signal) {
        if !self.own_group
            && matches!(sig, Signal::SIGINT | Signal::SIGHUP)
            && terminal_reached_child()
        {
            tracing::debug!(signal = %sig, "not forwarded: the terminal delivered it to the command too");
            return;
        }
        tracing::debug!(signal = %sig, pid = self.pid.as_raw(), "forwarding signal to the command");
        self.signal(sig);
    }
}

/// True if statelock's process group is its terminal's foreground group, so a
/// terminal-generated signal reached every process of the group, the command
/// included. Read from `/proc/self/stat` (pgrp and tpgid); without `/proc`,
/// assume so when stdin is a terminal.
fn terminal_reached_child() -> bool {
    let fields = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the command name (which may contain spaces and ')'):
            // state ppid pgrp session tty_nr tpgid ...
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let pgrp: i32 = fields.get(2)?.parse().ok()?;
            let tpgid: i32 = fields.get(5)?.parse().ok()?;
            Some((pgrp, tpgid))
        });
    match fields {
        Some((pgrp, tpgid)) => tpgid > 0 && pgrp == tpgid,
        None => std::io::stdin().is_terminal(),
    }
}

/// `128 + N` for a signal.
fn signal_exit(sig: Signal) -> i32 {
    exit::SIGNAL_BASE + sig as i32
}

/// The exit code that reflects the command's status.
fn exit_code_of(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| exit::SIGNAL_BASE + s))
        .unwrap_or(exit::FAILURE)
}

/// "X since T with token N".
fn holder_text(record: &LockRecord, now: crate::protocol::WallTime) -> String {
    format!(
        "{} since {} with token {}",
        record.holder,
        wall_with_age(record.acquired_at, now),
        record.token
    )
}

/// Why the guard says the lease was lost, as a clause.
fn lost_cause(guard: &LockGuard) -> String {
    match guard.check() {
        Err(LockError::LeaseLost(LostReason::Superseded(Some(record)))) => {
            match (&record.forced_by, record.released) {
                (Some(by), true) => format!("it was force-unlocked by {by}"),
                (None, true) => "it was released by another process".to_string(),
                _ => format!(
                    "it was taken over by {} with token {}",
                    record.holder, record.token
                ),
            }
        }
        Err(LockError::LeaseLost(LostReason::Superseded(None))) => {
            "the lock record was changed or removed".to_string()
        }
        Err(LockError::LeaseLost(LostReason::Expired)) => {
            "no heartbeat was confirmed before the lease ran out".to_string()
        }
        _ => "the lease ended".to_string(),
    }
}

/// Releases the lock; a failure is reported but does not change the exit
/// code (the lock then frees itself after one lease).
async fn release(guard: LockGuard, key: &LockKey, lease: Duration) {
    if let Err(e) = guard.release().await {
        errln!(
            "statelock: could not release {:?} ({e}); it frees itself about {} after the last heartbeat.",
            key.as_str(),
            human(lease)
        );
    }
}

/// Runs `statelock exec`.
pub(crate) async fn run(args: ExecArgs, ctx: &Context) -> Result<i32, CliError> {
    let plan = plan(args)?;
    let client = ctx.client().await?;
    let mut signals = Signals::install().map_err(|e| {
        CliError::new(
            exit::FAILURE,
            format!("cannot install signal handlers: {e}"),
        )
    })?;
    let key_text = plan.key.as_str().to_string();

    // Acquire, showing progress, cancelled by the first signal.
    let reporter = WaitReporter::new(&key_text, client.clock().clone());
    let cancel = CancellationToken::new();
    let mut opts = AcquireOptions {
        lease: plan.lease,
        wait: plan.wait,
        cancel: Some(cancel.clone()),
        holder: plan.holder.clone(),
        ..AcquireOptions::default()
    };
    // With --wait 0s the only report would come just before giving up.
    if plan.wait != Some(Duration::ZERO) {
        let reporter = reporter.clone();
        opts.on_wait = Some(Arc::new(move |p: &WaitProgress| reporter.report(p)));
    }
    let (acquired, interrupted) = {
        let acquire = client.acquire(&plan.key, opts);
        tokio::pin!(acquire);
        let mut interrupted: Option<Signal> = None;
        loop {
            tokio::select! {
                result = &mut acquire => break (result, interrupted),
                Some(sig) = signals.recv(), if interrupted.is_none() => {
                    interrupted = Some(sig);
                    cancel.cancel();
                }
            }
        }
    };
    let waited = reporter.finish();
    let now = client.clock().wall();
    let guard = match acquired {
        Ok(guard) => guard,
        Err(LockError::Held { holder }) => {
            return Err(CliError::new(
                exit::HELD,
                format!(
                    "{key_text:?} is held by {}; not waiting because --wait is 0s",
                    holder_text(&holder, now)
                ),
            ))
        }
        Err(LockError::Timeout { waited, holder }) => {
            let by = match holder {
                Some(h) => format!(", held by {}", holder_text(&h, now)),
                None => String::new(),
            };
            return Err(CliError::new(
                exit::HELD,
                format!(
                    "gave up on {key_text:?} after waiting {}{by}; raise --wait to wait longer",
                    human(waited)
                ),
            ));
        }
        Err(LockError::Cancelled) => {
            let sig = interrupted.unwrap_or(Signal::SIGINT);
            return Err(CliError::new(
                signal_exit(sig),
                format!(
                    "interrupted by {sig} while waiting for {key_text:?}; the lock was not taken"
                ),
            ));
        }
        Err(other) => return Err(lock_failure(other, ctx.store_text())),
    };
    if let Some(sig) = interrupted {
        release(guard, &plan.key, plan.lease).await;
        return Err(CliError::new(
            signal_exit(sig),
            format!("interrupted by {sig} just as {key_text:?} was granted; released it without running the command"),
        ));
    }
    if waited {
        errln!(
            "statelock: acquired {key_text:?} with token {}.",
            guard.token()
        );
    }
    tracing::info!(lock_key = %plan.key, token = guard.token().0, program = %plan.program, args = ?plan.program_args, "running the command");

    // Run the command.
    let own_group = !std::io::stdin().is_terminal();
    let mut command = tokio::process::Command::new(&plan.program);
    command
        .args(&plan.program_args)
        .env("STATELOCK_KEY", plan.key.as_str())
        .env("STATELOCK_TOKEN", guard.token().to_string())
        .env("STATELOCK_LEASE_ID", guard.lease_id().to_string());
    if own_group {
        command.process_group(0);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            release(guard, &plan.key, plan.lease).await;
            let (code, why) = match e.kind() {
                std::io::ErrorKind::NotFound => {
                    (exit::COMMAND_NOT_FOUND, "command not found".to_string())
                }
                std::io::ErrorKind::PermissionDenied => {
                    (exit::CANNOT_EXECUTE, "permission denied".to_string())
                }
                _ => (exit::CANNOT_EXECUTE, e.to_string()),
            };
            return Err(CliError::new(
                code,
                format!(
                    "cannot run {:?}: {why}; the lock was released",
                    plan.program
                ),
            ));
        }
    };
    let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) else {
        // Only possible if the child was already reaped, which we have not done.
        let status = child.wait().await;
        release(guard, &plan.key, plan.lease).await;
        return Ok(status.map(exit_code_of).unwrap_or(exit::FAILURE));
    };
    let target = ChildTarget {
        pid: Pid::from_raw(pid),
        own_group,
    };

    let code = supervise(&mut child, &target, &guard, &mut signals, &plan).await;
    release(guard, &plan.key, plan.lease).await;
    Ok(code)
}

/// Waits for the command, forwarding signals, until it exits or the lease is
/// lost; returns the exit code.
async fn supervise(
    child: &mut Child,
    target: &ChildTarget,
    guard: &LockGuard,
    signals: &mut Signals,
    plan: &ExecPlan,
) -> i32 {
    let lost = guard.lost_token();
    let exited = loop {
        tokio::select! {
            // A lost lease wins a tie: being conservative is the point.
            biased;
            _ = lost.cancelled() => break None,
            status = child.wait() => break Some(status),
            Some(sig) = signals.recv() => target.forward(sig),
        }
    };
    match exited {
        Some(Ok(status)) if guard.is_valid() => exit_code_of(status),
        Some(Ok(_)) => {
            // The deadline passed while the command ran (no heartbeat was
            // confirmed in time): its last writes may have come too late.
            errln!(
                "statelock: lost the lock on {:?} before the command finished ({}); treat its result as unsafe.",
                plan.key.as_str(),
                lost_cause(guard)
            );
            exit::LEASE_LOST
        }
        Some(Err(e)) => {
            errln!("statelock: lost track of the command: {e}.");
            exit::FAILURE
        }
        None => {
            errln!(
                "statelock: lost the lock on {:?} ({}); sent SIGTERM to the command, and SIGKILL follows after {}, because another process may hold the lock now.",
                plan.key.as_str(),
                lost_cause(guard),
                human(plan.grace)
            );
            stop_after_loss(child, target, signals, plan.grace).await;
            exit::LEASE_LOST
        }
    }
}

/// SIGTERM now, SIGKILL after `grace`, until the command has exited.
async fn stop_after_loss(
    child: &mut Child,
    target: &ChildTarget,
    signals: &mut Signals,
    grace: Duration,
) {
    target.signal(Signal::SIGTERM);
    let grace_over = tokio::time::sleep(grace);
    tokio::pin!(grace_over);
    loop {
        tokio::select! {
            _ = child.wait() => return,
            _ = &mut grace_over => {
                tracing::warn!(pid = target.pid.as_raw(), "the command outlived the grace period: SIGKILL");
                target.signal(Signal::SIGKILL);
                let _ = child.wait().await;
                return;
            }
            Some(sig) = signals.recv() => target.forward(sig),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(command: &[&str]) -> ExecArgs {
        ExecArgs {
            key: "demo".into(),
            lease: "20s".into(),
            wait: "10m".into(),
            who: None,
            operation: None,
            grace: "10s".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn plan_validates_input() {
        assert!(plan(args(&["true"])).is_ok());
        let cases: Vec<(ExecArgs, &str)> = vec![
            (args(&[]), "missing the command"),
            (args(&[""]), "must not be an empty string"),
            (
                ExecArgs {
                    key: "a\nb".into(),
                    ..args(&["true"])
                },
                "invalid lock key",
            ),
            (
                ExecArgs {
                    lease: "banana".into(),
                    ..args(&["true"])
                },
                "invalid --lease",
            ),
            (
                ExecArgs {
                    lease: "10ms".into(),
                    ..args(&["true"])
                },
                "too short",
            ),
            (
                ExecArgs {
                    wait: "soon".into(),
                    ..args(&["true"])
                },
                "invalid --wait",
            ),
            (
                ExecArgs {
                    who: Some("a\nb".into()),
                    ..args(&["true"])
                },
                "invalid --who",
            ),
        ];
        for (input, want) in cases {
            let err = plan(input).err().map(|e| (e.code, e.message));
            let (code, message) = err.unwrap_or_default();
            assert_eq!(code, exit::USAGE, "{want}");
            assert!(message.contains(want), "{message:?} lacks {want:?}");
            assert!(!message.contains('\n'));
        }
    }
}
