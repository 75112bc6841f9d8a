//! The process group `statelock exec` runs its command in, and the launcher
//! that leads it.
//!
//! The launcher is statelock's own binary in a hidden internal mode
//! ([`MODE`], dispatched by `cli::main_from` through [`dispatch`] before any
//! argument parsing or runtime). statelock starts it in a new process group,
//! which it leads; it blocks the signals it waits for, asks the kernel for a
//! signal when statelock dies (`PR_SET_PDEATHSIG`), optionally takes the
//! terminal, starts the command as its child in the same group and waits
//! with `sigwait`: when the command exits it exits with the command's code
//! (`128 + N` if killed by signal N); when statelock dies it kills the whole
//! group with SIGKILL, so no part of the command outlives the lock holder,
//! even after `kill -9` of statelock. Signals for the command (SIGINT,
//! SIGTERM, SIGHUP, SIGQUIT and the terminal's job-control signals) reach it
//! directly; the launcher takes them off its own queue and ignores them.
//!
//! A spawned process inherits the signal mask, and clearing it between fork
//! and exec would take `unsafe` code; so the command is started through a
//! second hidden mode ([`EXEC_MODE`]) that clears the mask and replaces
//! itself with the command (same pid), or prints why it cannot (exit 127 or
//! 126, as a shell does).
//!
//! [`CommandGroup`] is statelock's side: it starts the launcher from a thread
//! that lives as long as the process (the parent-death signal follows the
//! thread that forked, not the process), signals the group, waits for the
//! launcher without reaping it, kills what the command left in the group
//! before the group id can be reused, and takes the terminal back.
//!
//! Nothing here knows about locks or leases, and nothing here may leave a
//! process of the group running once statelock has returned from
//! [`CommandGroup::finish`]. Processes that leave the group (`setsid`,
//! daemons) are out of reach: that is what fencing at the state store is for.

use super::exit;
use nix::errno::Errno;
use nix::sys::signal::{killpg, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::{getpgrp, getpid, getppid, tcgetpgrp, tcsetpgrp, Pid};
use std::ffi::{OsStr, OsString};
use std::io::IsTerminal;
use std::process::{Child, Command, ExitStatus};

/// The hidden first argument that runs the launcher instead of the CLI.
pub(crate) const MODE: &str = "__supervise-child";
/// The hidden first argument that clears the signal mask and executes the
/// command (`EXEC_MODE -- PROGRAM ARGS...`), started by the launcher.
pub(crate) const EXEC_MODE: &str = "__supervise-exec";

/// Runs the launcher or the exec step if `args` (program name first) ask
/// for one of the hidden modes; returns the exit code, `None` for the CLI.
pub(crate) fn dispatch(args: &[OsString]) -> Option<i32> {
    let rest = args.get(2..).unwrap_or_default();
    match args.get(1)?.to_str()? {
        MODE => Some(main(rest)),
        EXEC_MODE => Some(exec_command(rest)),
        _ => None,
    }
}

/// The exec step: clears the signal mask inherited from the launcher and
/// replaces this process with `-- PROGRAM ARGS...`.
fn exec_command(args: &[OsString]) -> i32 {
    let Some((program, args)) = args
        .split_first()
        .and_then(|(dashes, rest)| (dashes == "--").then_some(rest.split_first()).flatten())
    else {
        errln!("statelock: {EXEC_MODE} is internal to `statelock exec`: expected -- CMD ARGS....");
        return exit::USAGE;
    };
    if let Err(e) = SigSet::empty().thread_set_mask() {
        errln!("statelock: cannot clear the signal mask for the command: {e}.");
        return exit::CANNOT_EXECUTE;
    }
    // Only returns on failure.
    let e = std::os::unix::process::CommandExt::exec(Command::new(program).args(args));
    let (code, why) = spawn_failure(&e);
    errln!("statelock: cannot run {program:?}: {why}; the lock is released.");
    code
}

/// The signal the kernel sends the launcher when statelock dies. Catchable
/// (the launcher must act on it), and checked against `getppid()` so that a
/// stray SIGUSR1 sent to the group changes nothing.
const PARENT_DEATH: Signal = Signal::SIGUSR1;

/// What the launcher was asked to do.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    /// statelock's pid: the launcher's parent.
    parent: Pid,
    /// Make the group the terminal's foreground group.
    terminal: bool,
    program: OsString,
    args: Vec<OsString>,
}

impl Request {
    /// `--parent-pid P [--terminal] -- PROGRAM ARGS...`
    fn parse(args: &[OsString]) -> Result<Request, String> {
        let mut parent = None;
        let mut terminal = false;
        let mut rest = args.iter();
        loop {
            match rest.next().and_then(|a| a.to_str()) {
                Some("--parent-pid") => {
                    let pid = rest
                        .next()
                        .and_then(|p| p.to_str())
                        .and_then(|p| p.parse::<i32>().ok())
                        .filter(|p| *p > 1)
                        .ok_or("--parent-pid needs a process id")?;
                    parent = Some(Pid::from_raw(pid));
                }
                Some("--terminal") => terminal = true,
                Some("--") => break,
                _ => return Err("expected --parent-pid P [--terminal] -- CMD ARGS...".into()),
            }
        }
        let program = rest.next().ok_or("missing the command after --")?.clone();
        Ok(Request {
            parent: parent.ok_or("missing --parent-pid")?,
            terminal,
            program,
            args: rest.cloned().collect(),
        })
    }
}

/// The signals the launcher takes with `sigwait`: blocked before the
/// command starts (std resets the mask of the processes it spawns, so the
/// command gets them with their default actions).
fn waited_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        PARENT_DEATH,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGTSTP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
    ] {
        set.add(sig);
    }
    set
}

/// Kills the launcher's whole group, the launcher included.
fn kill_own_group() -> i32 {
    let _ = killpg(getpgrp(), Signal::SIGKILL);
    // Not reached: SIGKILL cannot be caught.
    exit::SIGNAL_BASE + Signal::SIGKILL as i32
}

/// The launcher's `main`: `args` are the arguments after [`MODE`].
fn main(args: &[OsString]) -> i32 {
    let request = match Request::parse(args) {
        Ok(request) => request,
        Err(why) => {
            errln!("statelock: {MODE} is internal to `statelock exec`: {why}.");
            return exit::USAGE;
        }
    };
    // Killing "the own group" must never hit a group the launcher does not lead.
    if getpgrp() != getpid() {
        errln!(
            "statelock: {MODE} is internal to `statelock exec` and must lead its process group."
        );
        return exit::USAGE;
    }
    let waited = waited_signals();
    if let Err(e) = waited.thread_block() {
        errln!("statelock: cannot block signals in the command's launcher: {e}.");
        return exit::FAILURE;
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_pdeathsig(PARENT_DEATH) {
        errln!("statelock: cannot ask for a signal when statelock dies: {e}.");
        return exit::FAILURE;
    }
    // statelock may have died before the request above took effect.
    if getppid() != request.parent {
        return kill_own_group();
    }
    if request.terminal {
        // SIGTTOU is blocked: a background group may take the terminal.
        if let Err(e) = tcsetpgrp(std::io::stdin(), getpgrp()) {
            errln!("statelock: could not give the terminal to the command ({e}); Ctrl-C goes to statelock instead.");
        }
    }
    let child = match Command::new(own_binary())
        .arg(EXEC_MODE)
        .arg("--")
        .arg(&request.program)
        .args(&request.args)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            let (code, why) = spawn_failure(&e);
            errln!(
                "statelock: cannot run {:?}: {why}; the lock is released.",
                request.program
            );
            return code;
        }
    };
    let command = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let mut told_no_suspend = false;
    loop {
        match waited.wait() {
            Ok(Signal::SIGCHLD) => {
                if let Some(code) = reap(command, &mut told_no_suspend) {
                    return code;
                }
            }
            Ok(sig) if sig == PARENT_DEATH => {
                if getppid() != request.parent {
                    return kill_own_group();
                }
            }
            // For the command, not for the launcher.
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(e) => {
                errln!("statelock: the command's launcher cannot wait for signals ({e}); killing the command.");
                return kill_own_group();
            }
        }
    }
}

/// The exit code and reason for a command that cannot be started, as a
/// shell reports them.
fn spawn_failure(e: &std::io::Error) -> (i32, String) {
    match e.kind() {
        std::io::ErrorKind::NotFound => (exit::COMMAND_NOT_FOUND, "command not found".into()),
        std::io::ErrorKind::PermissionDenied => (exit::CANNOT_EXECUTE, "permission denied".into()),
        _ => (exit::CANNOT_EXECUTE, e.to_string()),
    }
}

/// After a SIGCHLD: the command's exit code if it has ended. A command
/// suspended from the terminal (Ctrl-Z) is continued at once: a lock holder
/// cannot be put aside while its lease runs on.
fn reap(command: Pid, told_no_suspend: &mut bool) -> Option<i32> {
    loop {
        match waitpid(command, Some(WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED)) {
            Ok(WaitStatus::Exited(_, code)) => return Some(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Some(exit::SIGNAL_BASE + sig as i32),
            Ok(WaitStatus::Stopped(_, Signal::SIGTSTP)) => {
                if !*told_no_suspend {
                    *told_no_suspend = true;
                    errln!("statelock: the command cannot be suspended while it holds the lock; continuing it.");
                }
                let _ = killpg(getpgrp(), Signal::SIGCONT);
            }
            Ok(WaitStatus::StillAlive) => return None,
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            // No child left to wait for: cannot happen while the command is
            // unreaped; treat it as gone.
            Err(_) => return Some(exit::FAILURE),
        }
    }
}

/// The exit code that reflects a process's status: its code, or `128 + N`
/// if signal N killed it.
pub(crate) fn exit_code_of(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| exit::SIGNAL_BASE + s))
        .unwrap_or(exit::FAILURE)
}

/// True if stdin is a terminal whose foreground process group is
/// statelock's: the command should get the terminal (and Ctrl-C).
fn in_terminal_foreground() -> bool {
    let stdin = std::io::stdin();
    stdin.is_terminal() && tcgetpgrp(&stdin) == Ok(getpgrp())
}

/// Calls `tcsetpgrp` with SIGTTOU blocked in the calling thread, as a
/// background process group must.
fn give_terminal_to(group: Pid) -> nix::Result<()> {
    let mut ttou = SigSet::empty();
    ttou.add(Signal::SIGTTOU);
    let old = ttou.thread_swap_mask(SigmaskHow::SIG_BLOCK)?;
    let result = tcsetpgrp(std::io::stdin(), group);
    let restored = old.thread_set_mask();
    result.and(restored)
}

/// The running binary, even if its file was replaced meanwhile (Linux);
/// elsewhere its path.
fn own_binary() -> std::path::PathBuf {
    if cfg!(target_os = "linux") {
        return std::path::PathBuf::from("/proc/self/exe");
    }
    std::env::current_exe().unwrap_or_else(|_| "statelock".into())
}

/// Starts `command` from a thread that never ends (the launcher's
/// parent-death signal fires when the thread that forked it ends), and hands
/// the child back.
async fn spawn_from_lasting_thread(mut command: Command) -> std::io::Result<Child> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("statelock-spawner".into())
        .spawn(move || {
            let _ = tx.send(command.spawn());
            loop {
                std::thread::park();
            }
        })?;
    rx.await.unwrap_or_else(|_| {
        Err(std::io::Error::other(
            "the thread starting the command ended early",
        ))
    })
}

/// statelock's handle on the launcher and its process group.
#[derive(Debug)]
pub(crate) struct CommandGroup {
    launcher: Child,
    /// The group id: the launcher's pid.
    group: Pid,
    /// The terminal was handed to the group and must be taken back.
    terminal: bool,
}

/// How the launcher ended, seen without reaping it.
pub(crate) type LauncherExit = Option<WaitStatus>;

impl CommandGroup {
    /// Starts `program args` with `env` added, behind a launcher that leads
    /// a new process group. The error is for statelock's own failure to
    /// start the launcher; a command that cannot be run makes the launcher
    /// say so and exit 127 or 126.
    pub(crate) async fn start(
        program: &str,
        args: &[String],
        env: &[(&str, String)],
    ) -> std::io::Result<CommandGroup> {
        let terminal = in_terminal_foreground();
        let mut command = Command::new(own_binary());
        command
            .arg(MODE)
            .arg("--parent-pid")
            .arg(std::process::id().to_string());
        if terminal {
            command.arg("--terminal");
        }
        command
            .arg("--")
            .arg(program)
            .args(args.iter().map(OsStr::new));
        command.envs(env.iter().map(|(k, v)| (k, v)));
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let launcher = spawn_from_lasting_thread(command).await?;
        let group = Pid::from_raw(i32::try_from(launcher.id()).map_err(std::io::Error::other)?);
        Ok(CommandGroup {
            launcher,
            group,
            terminal,
        })
    }

    /// The process group id.
    pub(crate) fn group(&self) -> Pid {
        self.group
    }

    /// Sends `sig` to the whole group (a group already gone is not an error).
    pub(crate) fn signal(&self, sig: Signal) {
        match killpg(self.group, sig) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => {
                tracing::warn!(group = self.group.as_raw(), signal = %sig, error = %e, "cannot signal the command's process group")
            }
        }
    }

    /// Completes when the launcher has exited, leaving it unreaped (its pid,
    /// and so the group id, stays taken until [`CommandGroup::finish`]).
    pub(crate) fn exited(
        &self,
    ) -> impl std::future::Future<Output = LauncherExit> + Send + 'static {
        let pid = self.group;
        let waiting = tokio::task::spawn_blocking(move || loop {
            match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Err(Errno::EINTR) => continue,
                Ok(status) => return Some(status),
                Err(e) => {
                    tracing::warn!(pid = pid.as_raw(), error = %e, "cannot wait for the command's launcher");
                    return None;
                }
            }
        });
        async move { waiting.await.ok().flatten() }
    }

    /// After the launcher has exited (or could not be waited for): kills
    /// whatever is left in the group, takes the terminal back, reaps the
    /// launcher and returns its exit code.
    pub(crate) async fn finish(self, exited: LauncherExit) -> i32 {
        // Before reaping: the group id cannot have been reused.
        self.signal(Signal::SIGKILL);
        if self.terminal {
            if let Err(e) = give_terminal_to(getpgrp()) {
                tracing::warn!(error = %e, "cannot take the terminal back");
            }
        }
        let mut launcher = self.launcher;
        let status = match launcher.try_wait() {
            Ok(Some(status)) => Ok(status),
            // Killed just above if it was still running; wait off the runtime.
            _ => tokio::task::spawn_blocking(move || launcher.wait())
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e))),
        };
        match (status, exited) {
            (Ok(status), _) => exit_code_of(status),
            (Err(_), Some(WaitStatus::Exited(_, code))) => code,
            (Err(_), Some(WaitStatus::Signaled(_, sig, _))) => exit::SIGNAL_BASE + sig as i32,
            (Err(e), _) => {
                tracing::warn!(error = %e, "lost track of the command's launcher");
                exit::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn request_parsing() {
        assert_eq!(
            Request::parse(&os(&[
                "--parent-pid",
                "42",
                "--terminal",
                "--",
                "sh",
                "-c",
                "x"
            ])),
            Ok(Request {
                parent: Pid::from_raw(42),
                terminal: true,
                program: "sh".into(),
                args: os(&["-c", "x"]),
            })
        );
        assert_eq!(
            Request::parse(&os(&["--parent-pid", "42", "--", "true"])).map(|r| r.terminal),
            Ok(false)
        );
        for bad in [
            &["--", "true"][..],
            &["--parent-pid", "x", "--", "true"],
            &["--parent-pid", "1", "--", "true"],
            &["--parent-pid", "42", "--"],
            &["--parent-pid", "42", "true"],
            &[],
        ] {
            assert!(Request::parse(&os(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn spawn_failures_map_like_a_shell() {
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(spawn_failure(&missing).0, exit::COMMAND_NOT_FOUND);
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(spawn_failure(&denied).0, exit::CANNOT_EXECUTE);
    }
}
