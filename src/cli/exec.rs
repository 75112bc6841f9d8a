//! `statelock exec`: run a command while holding a lock, and never let the
//! command act after the lease could have ended.
//!
//! Order of events: validate the input (a `--grace` that does not fit the
//! lease is refused here, before the store is touched); open the store;
//! acquire the key (waiting with progress output, interruptible by
//! SIGINT/SIGTERM/SIGHUP); run the command behind the launcher
//! ([`super::launcher`]), which leads the command's own process group and
//! kills it if statelock dies, with `STATELOCK_KEY`, `STATELOCK_TOKEN` and
//! `STATELOCK_LEASE_ID` in its environment; while it runs, drive the stop
//! schedule of [`Supervisor`] with the guard's deadline: SIGTERM to the group
//! when no heartbeat was confirmed in time or the lease is lost, SIGKILL
//! before the lease's validity ends (exit 75); when the launcher exits, kill
//! what the command left in its group, then release the lock (bounded in
//! time), then exit.
//!
//! Signals to statelock (SIGINT, SIGTERM, SIGHUP) go to the command's whole
//! group and start a stop with the same grace; a second one kills at once;
//! statelock then exits `128 + N`. When stdin is a terminal and statelock is
//! its foreground job, the launcher hands the terminal to the command's group
//! (it can read the terminal, Ctrl-C reaches it) and statelock takes it back
//! afterwards.
//!
//! Nothing here decides whether the lease is held: that is the guard's; and
//! nothing here sleeps except where the supervisor says.

use super::duration::{self, human, wall_with_age};
use super::input::{parse_key, parse_label};
use super::launcher::CommandGroup;
use super::progress::WaitReporter;
use super::{default_who, exit, hostname, lock_failure, CliError, Context};
use crate::client::{AcquireOptions, LockError, LockGuard, StoreTrouble, WaitProgress};
use crate::clock::Clock;
use crate::protocol::{
    GraceTooLong, HolderInfo, LockKey, LockRecord, LostReason, MonoTime, ProtocolConfig, StopCause,
    StopPlan, SuperviseAction, Supervisor,
};
use nix::sys::signal::Signal;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The grace period when `--grace` is not given; cut to what fits the lease.
const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// The longest wait for the release at the end, when the store answered the
/// last heartbeat: a few attempts.
const RELEASE_LIMIT: Duration = Duration::from_secs(3);
/// The longest wait for the release when the last heartbeat was not
/// confirmed in time: about one attempt.
const RELEASE_LIMIT_UNANSWERED: Duration = Duration::from_secs(1);

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
    /// Time between SIGTERM and SIGKILL when the command must stop (lease running out or lost, or a signal); must fit the lease, about half of it [default: 10s, less for a short lease]
    #[arg(long, value_name = "DURATION")]
    pub grace: Option<String>,
    /// The command to run and its arguments, after `--`
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Validated input.
struct ExecPlan {
    key: LockKey,
    lease: Duration,
    wait: Option<Duration>,
    /// When to stop the command, for this lease.
    stop: StopPlan,
    holder: HolderInfo,
    /// The program to run and its arguments.
    program: String,
    program_args: Vec<String>,
}

/// The shortest lease, in whole seconds, whose stop schedule fits `grace`;
/// `None` if no accepted lease does.
fn lease_for_grace(cfg: &ProtocolConfig, grace: Duration) -> Option<Duration> {
    const LONGEST_LEASE_SECS: u64 = 7 * 24 * 3600;
    let fits = |secs: u64| StopPlan::max_grace(cfg, Duration::from_secs(secs)) >= grace;
    if !fits(LONGEST_LEASE_SECS) {
        return None;
    }
    // The longest grace grows with the lease: bisect.
    let (mut low, mut high) = (1, LONGEST_LEASE_SECS);
    while low < high {
        let mid = low + (high - low) / 2;
        if fits(mid) {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    Some(Duration::from_secs(low))
}

/// The one line for a `--grace` that does not fit: what to change.
fn grace_does_not_fit(
    cfg: &ProtocolConfig,
    grace: &str,
    lease: &str,
    e: &GraceTooLong,
) -> CliError {
    let or_lease = match lease_for_grace(cfg, e.grace) {
        Some(needed) => format!(", or raise --lease to {} or more", human(needed)),
        None => " (no lease allows a longer one)".to_string(),
    };
    CliError::usage(format!(
        "--grace {grace} does not fit a {lease} lease: the command must be stopped before the lease can end, leaving room for heartbeat retries; lower --grace to {} or less{or_lease}",
        human(e.max)
    ))
}

fn plan(args: ExecArgs) -> Result<ExecPlan, CliError> {
    let key = parse_key(&args.key)?;
    let lease = duration::parse("lease", &args.lease)?;
    // The client uses the default protocol constants; check the lease and
    // the grace before touching the store.
    let cfg = ProtocolConfig::default();
    cfg.check_lease(lease)
        .map_err(|e| CliError::usage(format!("invalid --lease {:?}: {e}", args.lease)))?;
    let wait = duration::parse_wait(&args.wait)?;
    let stop = match &args.grace {
        None => StopPlan::fitting(&cfg, lease, DEFAULT_GRACE),
        Some(text) => {
            let grace = duration::parse("grace", text)?;
            StopPlan::new(&cfg, lease, grace)
                .map_err(|e| grace_does_not_fit(&cfg, text.trim(), args.lease.trim(), &e))?
        }
    };
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
        stop,
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
    /// statelock: it cancels the wait or passes them to the command).
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

/// `128 + N` for a signal.
fn signal_exit(sig: Signal) -> i32 {
    exit::SIGNAL_BASE + sig as i32
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

/// Releases the lock, waiting at most a few seconds (one attempt's worth if
/// the last heartbeat went unanswered); a failure is reported but does not
/// change the exit code (the lock then frees itself after one lease).
async fn release(guard: LockGuard, plan: &ExecPlan, clock: &Arc<dyn Clock>) {
    let cfg = ProtocolConfig::default();
    // The deadline is `validity` after the last confirmed heartbeat was sent.
    let since_confirmed = cfg
        .holder_validity(plan.lease)
        .saturating_sub(guard.deadline().saturating_since(clock.now()));
    let answering = guard.is_valid()
        && since_confirmed <= cfg.heartbeat_interval(plan.lease) + cfg.heartbeat_retry(plan.lease);
    let limit = if answering {
        RELEASE_LIMIT
    } else {
        RELEASE_LIMIT_UNANSWERED
    };
    let key = plan.key.as_str();
    tokio::select! {
        released = guard.release() => if let Err(e) = released {
            errln!(
                "statelock: could not release {key:?} ({e}); it frees itself about {} after the last heartbeat.",
                human(plan.lease)
            );
        },
        _ = clock.sleep(limit) => errln!(
            "statelock: the store did not confirm the release of {key:?} within {}; the lock frees itself about {} after the last heartbeat.",
            human(limit),
            human(plan.lease)
        ),
    }
}

/// Runs `statelock exec`.
pub(crate) async fn run(args: ExecArgs, ctx: &Context) -> Result<i32, CliError> {
    let plan = plan(args)?;
    let client = ctx.client().await?;
    let clock = client.clock().clone();
    let mut signals = Signals::install().map_err(|e| {
        CliError::new(
            exit::FAILURE,
            format!("cannot install signal handlers: {e}"),
        )
    })?;
    let key_text = plan.key.as_str().to_string();

    // Acquire, showing progress, cancelled by the first signal.
    let reporter = WaitReporter::new(&key_text, clock.clone());
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
        let on_wait = reporter.clone();
        opts.on_wait = Some(Arc::new(move |p: &WaitProgress| on_wait.report(p)));
    }
    // A store that does not answer is said at once, whatever the wait.
    let on_trouble = reporter.clone();
    opts.on_store_error = Some(Arc::new(move |t: &StoreTrouble| {
        on_trouble.store_trouble(t)
    }));
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
    let now = clock.wall();
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
    // The grant's audit event must be on record before the command runs.
    if let Some(why) = super::audit_failure() {
        release(guard, &plan, &clock).await;
        return Err(CliError::new(
            exit::FAILURE,
            format!("{why}; the lock was released and the command was not run"),
        ));
    }
    if let Some(sig) = interrupted {
        release(guard, &plan, &clock).await;
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

    // Run the command in its own process group, behind the launcher.
    // With a state store, seal the key's state before the command runs (the
    // lock's token may be raised above the state's fence doing so), so from
    // now on no older holder can write it.
    let mut env = Vec::new();
    if let Some(url) = ctx.state_store_url() {
        match super::state::seal_for_exec(url, &guard, ctx).await {
            Ok((text, _)) => env.push(("STATELOCK_STATE_STORE", text)),
            Err(e) => {
                release(guard, &plan, &clock).await;
                return Err(CliError::new(
                    e.code,
                    format!(
                        "{}; the lock was released and the command was not run",
                        e.message
                    ),
                ));
            }
        }
    }
    env.extend([
        ("STATELOCK_KEY", key_text.clone()),
        ("STATELOCK_TOKEN", guard.token().to_string()),
        ("STATELOCK_LEASE_ID", guard.lease_id().to_string()),
    ]);
    let group = match CommandGroup::start(&plan.program, &plan.program_args, &env).await {
        Ok(group) => group,
        Err(e) => {
            release(guard, &plan, &clock).await;
            return Err(CliError::new(
                exit::FAILURE,
                format!("cannot start the command's launcher (statelock's own binary): {e}; the lock was released"),
            ));
        }
    };
    let code = supervise(group, &guard, &mut signals, &plan, &clock).await;
    release(guard, &plan, &clock).await;
    Ok(code)
}

/// A duration to a tenth of a second below a minute (`850ms`, `1.4s`),
/// else as [`human`] renders it.
fn tenths(d: Duration) -> String {
    if d < Duration::from_secs(1) || d >= Duration::from_secs(60) {
        human(d)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Says in one line why the command is being stopped and when SIGKILL
/// comes (`kill_in`; `None`: it was sent at once).
fn report_lease_stop(
    cause: StopCause,
    guard: &LockGuard,
    plan: &ExecPlan,
    now: MonoTime,
    kill_in: Option<Duration>,
) {
    let key = plan.key.as_str();
    let what = match cause {
        StopCause::LeaseLost => format!("lost the lock on {key:?} ({})", lost_cause(guard)),
        _ => {
            let validity = ProtocolConfig::default().holder_validity(plan.lease);
            let silent = now.saturating_since(guard.deadline() - validity);
            format!(
                "no heartbeat of {key:?} was confirmed for {}: the lease is running out",
                tenths(silent)
            )
        }
    };
    match kill_in {
        Some(kill_in) => errln!(
            "statelock: {what}; sent SIGTERM to the command's process group, SIGKILL follows in {} unless it exits, before another process can hold the lock.",
            tenths(kill_in)
        ),
        None => errln!(
            "statelock: {what}; killed the command's process group with SIGKILL at once, before another process can hold the lock."
        ),
    }
}

/// Runs the stop schedule until the launcher exits: SIGTERM and SIGKILL to
/// the group as the [`Supervisor`] says, signals to statelock passed on.
/// Kills what the command left behind and returns the exit code.
async fn supervise(
    group: CommandGroup,
    guard: &LockGuard,
    signals: &mut Signals,
    plan: &ExecPlan,
    clock: &Arc<dyn Clock>,
) -> i32 {
    let mut supervisor = Supervisor::new(plan.stop);
    let lost = guard.lost_token();
    let mut lost_seen = false;
    let exited = group.exited();
    tokio::pin!(exited);
    // The first signal statelock received while the command ran.
    let mut interrupted: Option<Signal> = None;
    // Why the lease made statelock stop the command, if it did.
    let mut lease_stop: Option<StopCause> = None;
    let launcher_exit = loop {
        let now = clock.now();
        let held = guard.is_valid();
        let was_stopping = supervisor.stopping();
        let wake = match supervisor.poll(now, guard.deadline(), held) {
            SuperviseAction::Wait { until } => Some(until),
            SuperviseAction::Terminate { cause, until } => {
                // A requested stop already passed on the signal received.
                if cause != StopCause::Requested {
                    group.signal(Signal::SIGTERM);
                    lease_stop = Some(cause);
                    report_lease_stop(cause, guard, plan, now, Some(until.saturating_since(now)));
                }
                Some(until)
            }
            SuperviseAction::Kill => {
                group.signal(Signal::SIGKILL);
                if !was_stopping {
                    // Noticed only when the kill was already due.
                    let cause = if held {
                        StopCause::LeaseRunningOut
                    } else {
                        StopCause::LeaseLost
                    };
                    lease_stop = Some(cause);
                    report_lease_stop(cause, guard, plan, now, None);
                } else if let (None, Some(sig)) = (lease_stop, interrupted) {
                    errln!("statelock: the command had not exited after {sig}; killed its process group with SIGKILL.");
                }
                tracing::warn!(
                    group = group.group().as_raw(),
                    "SIGKILL to the command's process group"
                );
                None
            }
            SuperviseAction::Done => None,
        };
        let sleep = match wake {
            Some(until) => clock.sleep(until.saturating_since(now)),
            None => Box::pin(std::future::pending()),
        };
        tokio::select! {
            // The command's end wins a tie; then a lost lease.
            biased;
            status = &mut exited => break status,
            _ = lost.cancelled(), if !lost_seen => lost_seen = true,
            Some(sig) = signals.recv() => {
                let now = clock.now();
                if interrupted.is_none() {
                    tracing::debug!(signal = %sig, "passing the signal to the command's process group");
                    interrupted = Some(sig);
                    group.signal(sig);
                    supervisor.request_stop(now);
                } else {
                    supervisor.request_kill(now);
                }
            }
            _ = sleep => {}
        }
    };
    let code = group.finish(launcher_exit).await;
    if lease_stop.is_some() {
        return exit::LEASE_LOST;
    }
    if !guard.is_valid() {
        // The command ended just as the lease did: its last writes may have
        // come too late.
        errln!(
            "statelock: lost the lock on {:?} before the command finished ({}); treat its result as unsafe.",
            plan.key.as_str(),
            lost_cause(guard)
        );
        return exit::LEASE_LOST;
    }
    match interrupted {
        Some(sig) => signal_exit(sig),
        None => code,
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
            grace: None,
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
            (
                ExecArgs {
                    grace: Some("10s".into()),
                    lease: "2s".into(),
                    ..args(&["true"])
                },
                "--grace 10s does not fit a 2s lease",
            ),
            (
                ExecArgs {
                    grace: Some("soon".into()),
                    ..args(&["true"])
                },
                "invalid --grace",
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

    #[test]
    fn grace_defaults_to_what_fits_and_an_explicit_one_must_fit() {
        let cfg = ProtocolConfig::default();
        let short = plan(ExecArgs {
            lease: "2s".into(),
            ..args(&["true"])
        })
        .map(|p| p.stop);
        assert_eq!(
            short,
            Ok(StopPlan::fitting(
                &cfg,
                Duration::from_secs(2),
                DEFAULT_GRACE
            ))
        );
        let long = plan(args(&["true"])).map(|p| p.stop.grace());
        assert_eq!(long, Ok(DEFAULT_GRACE));
        let explicit = plan(ExecArgs {
            grace: Some("2s".into()),
            ..args(&["true"])
        })
        .map(|p| p.stop.grace());
        assert_eq!(explicit, Ok(Duration::from_secs(2)));
    }

    /// The lease the refusal proposes is the shortest whole-second lease
    /// that fits the grace.
    #[test]
    fn the_proposed_lease_is_the_shortest_that_fits() {
        let cfg = ProtocolConfig::default();
        for grace_ms in [1u64, 500, 931, 1000, 10_000, 60_000, 3_600_000] {
            let grace = Duration::from_millis(grace_ms);
            let lease = lease_for_grace(&cfg, grace).expect("some lease fits");
            assert!(StopPlan::new(&cfg, lease, grace).is_ok(), "{grace_ms} ms");
            if lease > Duration::from_secs(1) {
                let shorter = lease - Duration::from_secs(1);
                assert!(
                    StopPlan::new(&cfg, shorter, grace).is_err(),
                    "{grace_ms} ms"
                );
            }
        }
        assert_eq!(
            lease_for_grace(&cfg, Duration::from_secs(10)),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            lease_for_grace(&cfg, Duration::from_secs(30 * 24 * 3600)),
            None
        );
    }
}
