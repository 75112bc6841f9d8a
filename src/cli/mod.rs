//! The `statelock` command-line tool: clap commands, thin over the library.
//!
//! Each command validates its input, opens the store named by `--store` (or
//! `STATELOCK_STORE`, default [`default_store_url`]: a per-user directory),
//! calls
//! [`LockClient`], and turns the answer into text or JSON and an exit code.
//! Nothing here decides anything about locking: waiting, takeover, heartbeats
//! and fencing are the library's. Errors become one sentence on stderr that
//! says what to do; no input or store answer can make the tool panic.
//!
//! # Exit codes
//! | code | meaning |
//! | --- | --- |
//! | 0 | success; `status` of a free, held or never-locked key; `unlock` of a lock that is not held |
//! | 1 | `unlock`/`purge`: the operator answered no at the prompt (nothing changed); the `--audit-log` could not be written (`exec` then runs nothing); or an unexpected error |
//! | 2 | bad input: usage error, invalid key, bad duration, a `--grace` that does not fit the lease, unknown store URL, no `--store` and no default store location, missing command, `unlock` without `--force`, or without `--yes` when stdin is not a terminal |
//! | 3 | `exec`: the lock is held and `--wait` ran out (immediately with `--wait 0s`) |
//! | 4 | `unlock`: the lock record changed after it was shown; nothing was forced |
//! | 5 | the lock store failed (unreachable, misconfigured or a damaged record) |
//! | 75 | `exec`: the lease ran out or was lost while the command ran; the command was stopped |
//! | 126 | `exec`: the command could not be executed |
//! | 127 | `exec`: the command was not found |
//! | 128+N | `exec`: the command was killed by signal N, or statelock was interrupted by signal N (while waiting, or while the command ran: its process group got the signal) |
//! | other | `exec`: the command's own exit code |

// Output that never panics: a closed pipe (`statelock locks | head -1`) or a
// closed stderr must not turn into a panic message.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        let _ = write!(stdout, $($arg)*);
        let _ = stdout.flush();
    }};
}
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}
// A note or progress line on stderr: silenced by `--quiet` (errors are not).
macro_rules! noteln {
    ($($arg:tt)*) => {{
        if !$crate::cli::quiet() {
            errln!($($arg)*);
        }
    }};
}
macro_rules! err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, $($arg)*);
        let _ = stderr.flush();
    }};
}

mod audit;
mod bench;
mod duration;
#[cfg(feature = "dynamodb")]
mod dynamodb;
mod exec;
mod input;
mod launcher;
mod progress;
mod purge;
mod quorum;
#[cfg(feature = "s3")]
mod s3;
mod show;
mod sightings;
mod state;
mod unlock;

pub use bench::BenchArgs;
#[cfg(feature = "dynamodb")]
pub use dynamodb::{CreateTableArgs, DynamoDbArgs, DynamoDbCommand};
pub use exec::ExecArgs;
pub use purge::PurgeArgs;
#[cfg(feature = "s3")]
pub use s3::{ProbeArgs, S3Args, S3Command};
pub use show::{LocksArgs, StatusArgs};
pub use state::{StateArgs, StateCommand};
pub use unlock::UnlockArgs;

pub(crate) use audit::audit_failure;

use crate::client::{LockClient, LockError};
use crate::store::quorum::QuorumStore;
use crate::store::url::{default_store_url, file_store_url, StoreUrl};
use crate::store::{open_lock_store, StoreError};
use clap::{ArgAction, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `--quiet` was given: notes and progress lines are not printed.
static QUIET: AtomicBool = AtomicBool::new(false);

/// True if `--quiet` was given (notes and progress lines stay unprinted;
/// errors still print).
pub(crate) fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// The exit codes of the tool (see the module documentation).
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Declined at a confirmation prompt, or an unexpected error.
    pub const FAILURE: i32 = 1;
    /// Bad input or usage (clap's usage errors use it too).
    pub const USAGE: i32 = 2;
    /// The lock is held: `--wait 0s` or the wait ran out.
    pub const HELD: i32 = 3;
    /// Force-unlock refused: the record changed since it was shown.
    pub const CHANGED: i32 = 4;
    /// The lock store failed.
    pub const STORE: i32 = 5;
    /// `exec`: the lease was lost and the command was stopped (`EX_TEMPFAIL`).
    pub const LEASE_LOST: i32 = 75;
    /// `exec`: the command exists but could not be executed.
    pub const CANNOT_EXECUTE: i32 = 126;
    /// `exec`: the command was not found.
    pub const COMMAND_NOT_FOUND: i32 = 127;
    /// Added to a signal number: killed (or interrupted) by that signal.
    pub const SIGNAL_BASE: i32 = 128;
}

const LONG_ABOUT: &str = "\
Safe distributed locks for deployment state: leases with heartbeats, takeover
that is safe under clock skew, and a fencing token per grant.

`statelock exec --key KEY -- CMD...` runs CMD while holding KEY, with
STATELOCK_KEY, STATELOCK_TOKEN (the fencing token) and STATELOCK_LEASE_ID in
its environment. CMD runs in its own process group: if heartbeats go
unconfirmed or the lock is lost, the group gets SIGTERM, then SIGKILL after
--grace, both before the lease can end; the group dies with statelock (even
on kill -9), and SIGINT/SIGTERM/SIGHUP to statelock go to the group. A
crashed holder's lock is taken over about one lease after its last heartbeat.

Store URLs (--store or STATELOCK_STORE):
  file://DIR                   a directory on this machine (a relative DIR is
                               taken from the working directory; messages
                               show the absolute path)
  mem://                       in-process only (forgets on exit; for trials)
  dynamodb://TABLE?region=R&endpoint=URL[&format=terraform]
                               (create the table once with
                               `statelock --store URL dynamodb create-table`)
  s3://BUCKET/PREFIX?region=R&endpoint=URL[&format=terraform]
                               records under PREFIX/locks/ (format=terraform:
                               Terraform's PREFIX/<state key>.tflock files);
                               check the service with `statelock s3 probe URL`

Default store: a directory per user, the same from any working directory:
$STATELOCK_HOME/locks, else $XDG_STATE_HOME/statelock/locks, else
$HOME/.local/state/statelock/locks. Processes of other users or on other
machines do not see it: give every party the same --store to exclude them.

Exit codes:
  0      success; status of a free, held or never-locked key; unlock of a
         lock that is not held
  1      unlock/purge: answered no at the prompt (nothing changed); the
         --audit-log could not be written; unexpected error
  2      bad input: usage error, invalid key, bad duration, a --grace that
         does not fit the lease, unknown store URL, no --store and no default
         store location, missing command after --,
         unlock without --force, or without --yes when stdin is not a terminal
  3      exec: the lock is held and --wait ran out (at once with --wait 0s)
  4      unlock: the lock changed after it was shown; nothing was forced
  5      the lock store failed (unreachable, misconfigured, damaged record)
  75     exec: the lease ran out or was lost while the command ran; it was
         stopped
  126    exec: the command could not be executed
  127    exec: the command was not found
  128+N  exec: the command was killed by signal N, or statelock was
         interrupted by signal N, while waiting or while the command ran (its
         process group got the signal); 130 = SIGINT, 143 = SIGTERM
  other  exec: the command's own exit code";

const EXEC_EXAMPLES: &str = "\
Examples:
  statelock exec --key stack:web:env:prod --operation apply -- terraform apply
  statelock exec --key nightly-report --wait 0s -- ./report.sh   # skip if running
  statelock exec --key db:migrate --lease 1m --wait forever -- ./migrate.sh";

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "statelock",
    version,
    about = "Safe distributed locks for deployment state (leases, skew-safe takeover, fencing tokens)",
    long_about = LONG_ABOUT
)]
pub struct Cli {
    /// Where the locks live: file://DIR, mem://, dynamodb://TABLE?region=R or s3://BUCKET/PREFIX?region=R [default: a directory per user]
    ///
    /// The default is file://$STATELOCK_HOME/locks, else
    /// file://$XDG_STATE_HOME/statelock/locks, else
    /// file://$HOME/.local/state/statelock/locks.
    #[arg(long, global = true, env = "STATELOCK_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// Log to stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides the filter
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// Append audit events (acquired, takeover, released, lost, forced, state saved/rejected) to FILE as JSON lines
    #[arg(long, global = true, value_name = "FILE", long_help = audit::AUDIT_LOG_HELP)]
    pub audit_log: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics while the command runs (e.g. 127.0.0.1:9464)
    #[cfg(feature = "prometheus")]
    #[arg(long, global = true, value_name = "ADDR", long_help = METRICS_ADDR_HELP)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Print no notes or progress on stderr (errors still print)
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Where state documents live: file://DIR or s3://BUCKET/PREFIX [default: a directory per user beside the locks]; `exec` seals the key's state there when given
    #[arg(long, global = true, env = "STATELOCK_STATE_STORE", value_name = "URL")]
    pub state_store: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command while holding a lock (waits for it, heartbeats, releases)
    #[command(after_help = EXEC_EXAMPLES)]
    Exec(ExecArgs),
    /// List every lock in the store
    Locks(LocksArgs),
    /// Show one lock in detail (a never-locked key is reported as such, exit 0)
    Status(StatusArgs),
    /// Force-release a lock, after showing its holder and asking for confirmation
    Unlock(UnlockArgs),
    /// Remove records released long ago (their tokens stay in the store's token floor)
    Purge(PurgeArgs),
    /// The state documents: show, pull, push, history, backup, restore
    State(StateArgs),
    /// Measure lock contention on the store: N clients, K keys, for a duration
    #[command(long_about = bench::BENCH_LONG_ABOUT)]
    Bench(BenchArgs),
    /// Set up a DynamoDB store: `dynamodb create-table`
    #[cfg(feature = "dynamodb")]
    #[command(name = "dynamodb")]
    DynamoDb(DynamoDbArgs),
    /// Check an S3 store's service: `s3 probe [URL]`
    #[cfg(feature = "s3")]
    #[command(name = "s3")]
    S3(S3Args),
    /// Print a shell completion script: `completions bash|zsh|fish`
    #[command(long_about = COMPLETIONS_HELP)]
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

const COMPLETIONS_HELP: &str = "\
Print a completion script for SHELL on stdout.

  bash: statelock completions bash > ~/.local/share/bash-completion/completions/statelock
  zsh:  statelock completions zsh > ~/.zfunc/_statelock   (with fpath+=~/.zfunc)
  fish: statelock completions fish > ~/.config/fish/completions/statelock.fish";

/// The long help of `--metrics-addr`.
#[cfg(feature = "prometheus")]
const METRICS_ADDR_HELP: &str = "\
Serve Prometheus metrics at http://ADDR/metrics for as long as the command
runs (for `exec`, while the lock is held). Prometheus names use `_` for `.`
(statelock_lock_acquisition_success and so on).

  statelock.lock.acquisition.duration  histogram, seconds to get the lock
  statelock.lock.acquisition.success   counter
  statelock.lock.acquisition.failure   counter, reason: held, timeout,
                                       cancelled, store, tokens_exhausted,
                                       invalid
  statelock.lock.held.duration         histogram, seconds held
  statelock.lock.heartbeat.success     counter
  statelock.lock.heartbeat.failure     counter, reason: unanswered, lost
  statelock.lock.stale.detected        counter
  statelock.lock.takeover              counter
  statelock.lock.lost                  counter, reason: expired, superseded
  statelock.state.save.rejected        counter, reason: stale

Every metric is labelled store (memory, file, dynamodb, s3,
terraform-dynamodb, terraform-s3) and, for keys stack:S:env:E, stack and
env.";

/// Output format of the read commands (`locks`, `status`, `state show`,
/// `state history`, `s3 probe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Text for humans.
    #[default]
    Text,
    /// JSON (the schema is in each command's long help).
    Json,
}

/// A failure to report: one sentence for stderr and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    /// The exit code.
    pub code: i32,
    /// One sentence (without the `statelock: ` prefix).
    pub message: String,
}

impl CliError {
    /// A failure with `code` and `message`.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        CliError {
            code,
            message: message.into(),
        }
    }

    /// Bad input (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        CliError::new(exit::USAGE, message)
    }
}

/// Turns a store error into one sentence plus what to do (exit 5).
pub(crate) fn store_failure(err: &StoreError, store: &str) -> CliError {
    let advice = match err {
        StoreError::Unavailable(_) => "check that the store is reachable, then try again",
        StoreError::Corrupt { .. } => {
            "inspect that record in the store and repair or remove it by hand (statelock never overwrites it)"
        }
        StoreError::Misconfigured(_) => {
            "check --store / STATELOCK_STORE and the store's setup (directory permissions, table, credentials)"
        }
        _ => "try again; if it persists, run with -vv and report it",
    };
    CliError::new(exit::STORE, format!("{err} (store {store}); {advice}"))
}

/// The generic mapping of a [`LockError`]; commands handle the errors they
/// expect (held, changed, ...) before falling back to this.
pub(crate) fn lock_failure(err: LockError, store: &str) -> CliError {
    match err {
        LockError::Store(e) => store_failure(&e, store),
        LockError::Protocol(e) => CliError::usage(e.to_string()),
        other => CliError::new(exit::FAILURE, format!("unexpected error: {other}")),
    }
}

/// What every command needs: the store it names.
pub(crate) struct Context {
    store_url: StoreUrl,
    store_text: String,
    state_store: Option<String>,
}

impl Context {
    /// The store as messages name it: a `file://` store by its absolute
    /// path, other stores as the user wrote them.
    pub(crate) fn store_text(&self) -> &str {
        &self.store_text
    }

    /// The state store URL given (`--state-store` / `STATELOCK_STATE_STORE`).
    pub(crate) fn state_store_url(&self) -> Option<&str> {
        self.state_store.as_deref()
    }

    /// Opens the store and a client over it.
    pub(crate) async fn client(&self) -> Result<LockClient, CliError> {
        Ok(self.open().await?.client)
    }

    /// Opens the store and a client over it, keeping a handle on the
    /// quorum store when the store is one (for the member views that
    /// `status`, `locks` and `unlock` show).
    ///
    /// A quorum is assembled here from its opened members, as
    /// [`open_lock_store`] does, because that function hands back only the
    /// `dyn LockStore`; the client and the member views must share the one
    /// quorum value, whose remembered views name what the operator was shown.
    pub(crate) async fn open(&self) -> Result<Opened, CliError> {
        let failure = |e: StoreError| store_failure(&e, &self.store_text);
        if let StoreUrl::Quorum(members) = &self.store_url {
            let mut stores = Vec::with_capacity(members.len());
            for member in members {
                stores.push(open_lock_store(member).await.map_err(failure)?);
            }
            let quorum = Arc::new(QuorumStore::new(stores).map_err(failure)?);
            return Ok(Opened {
                client: LockClient::builder(quorum.clone()).build(),
                quorum: Some(quorum),
            });
        }
        let store = open_lock_store(&self.store_url).await.map_err(failure)?;
        Ok(Opened {
            client: LockClient::builder(store).build(),
            quorum: None,
        })
    }
}

/// An opened store: the client over it, and the quorum store itself when
/// `--store` names a quorum.
pub(crate) struct Opened {
    /// The client over the store.
    pub(crate) client: LockClient,
    /// The same store as a quorum, if it is one.
    pub(crate) quorum: Option<Arc<QuorumStore>>,
}

/// `$USER@hostname`: who is acting, for holder info and audit.
pub(crate) fn default_who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_string());
    format!("{user}@{}", hostname())
}

/// This machine's host name (no extra dependency: the kernel publishes it).
pub(crate) fn hostname() -> String {
    let from_proc = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    from_proc
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".to_string())
}

/// Sets up logging: `-v` logs to stderr, `--audit-log` appends the audit
/// events (target [`crate::observe::AUDIT_TARGET`]) to a file as JSON lines
/// ([`audit`]).
fn init_tracing(verbose: u8, audit_log: Option<&PathBuf>) -> Result<(), CliError> {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
    use tracing_subscriber::prelude::*;

    let from_env = std::env::var_os("RUST_LOG").is_some();
    let stderr_layer = (verbose > 0 || from_env).then(|| {
        let fallback = match verbose {
            0 | 1 => "statelock=info",
            2 => "statelock=debug",
            _ => "statelock=trace,debug",
        };
        let filter = if from_env {
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(fallback))
        } else {
            EnvFilter::new(fallback)
        };
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
    });
    let audit_layer = match audit_log {
        Some(path) => Some(
            audit::AuditLog::open(path)
                .map_err(CliError::usage)?
                .install()
                .with_filter(
                    Targets::new().with_target(crate::observe::AUDIT_TARGET, LevelFilter::TRACE),
                ),
        ),
        None => None,
    };
    // A subscriber already set (only possible when embedded) is not an error.
    let _ = tracing_subscriber::registry()
        .with(stderr_layer)
        .with(audit_layer)
        .try_init();
    Ok(())
}

/// The store named by `--store` / `STATELOCK_STORE` (`given`), else the
/// per-user default from `env`, with a `file://` path made absolute; and
/// the text that names it in messages.
fn resolve_store(
    given: Option<String>,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<(StoreUrl, String), CliError> {
    let usage = |e: StoreError| match e {
        StoreError::Misconfigured(why) => CliError::usage(why),
        other => CliError::usage(other.to_string()),
    };
    let url = match &given {
        Some(text) => StoreUrl::parse(text).map_err(|e| match e {
            StoreError::Misconfigured(why) => CliError::usage(format!(
                "{why}; fix --store / STATELOCK_STORE, or leave both unset for the per-user \
                 default store"
            )),
            other => usage(other),
        })?,
        None => default_store_url(env).map_err(usage)?,
    };
    let url = url.into_absolute().map_err(usage)?;
    let text = match (&url, given) {
        (StoreUrl::File(dir), _) => file_store_url(dir),
        (_, Some(text)) => text,
        (other, None) => format!("{other:?}"),
    };
    Ok((url, text))
}

async fn run(cli: Cli) -> Result<i32, CliError> {
    let (store_url, store_text) = resolve_store(cli.store, |name| std::env::var_os(name))?;
    // What messages call the store: never with credentials typed into it.
    let store_text = crate::store::url::redact_credentials(&store_text);
    audit::set_store_url(&store_text);
    let ctx = Context {
        store_url,
        store_text,
        state_store: cli.state_store,
    };
    match cli.command {
        Command::Exec(args) => exec::run(args, &ctx).await,
        Command::Locks(args) => show::locks(args, &ctx).await,
        Command::Status(args) => show::status(args, &ctx).await,
        Command::Unlock(args) => unlock::run(args, &ctx).await,
        Command::Purge(args) => purge::run(args, &ctx).await,
        Command::State(args) => state::run(args, &ctx).await,
        Command::Bench(args) => bench::run(args, &ctx).await,
        #[cfg(feature = "dynamodb")]
        Command::DynamoDb(args) => dynamodb::run(args, &ctx).await,
        #[cfg(feature = "s3")]
        Command::S3(args) => s3::run(args, &ctx).await,
        Command::Completions { .. } => Ok(exit::OK),
    }
}

/// Writes the completion script of `shell` to stdout.
fn completions(shell: clap_complete::Shell) -> i32 {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "statelock", &mut script);
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&script);
    let _ = stdout.flush();
    exit::OK
}

/// Starts the Prometheus endpoint of `--metrics-addr` on `runtime`.
#[cfg(feature = "prometheus")]
fn serve_metrics(
    addr: std::net::SocketAddr,
    runtime: &tokio::runtime::Runtime,
) -> Result<(), CliError> {
    let _entered = runtime.enter();
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| {
            CliError::usage(format!(
                "cannot serve metrics at {addr}: {e}; pick another --metrics-addr (a free port)"
            ))
        })?;
    noteln!("statelock: metrics at http://{addr}/metrics");
    Ok(())
}

/// Runs the tool with the process's arguments; returns the exit code.
pub fn main() -> i32 {
    main_from(std::env::args_os())
}

/// Runs the tool with `args` (the first is the program name); returns the
/// exit code. Usage errors and `--help` are printed by clap.
pub fn main_from<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    // `statelock exec`'s launcher: before any parsing or runtime.
    if let Some(code) = launcher::dispatch(&args) {
        return code;
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    QUIET.store(cli.quiet, Ordering::Relaxed);
    if let Command::Completions { shell } = cli.command {
        return completions(shell);
    }
    if let Err(e) = init_tracing(cli.verbose, cli.audit_log.as_ref()) {
        errln!("statelock: {}.", e.message);
        return e.code;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("statelock: cannot start the async runtime: {e}.");
            return exit::FAILURE;
        }
    };
    #[cfg(feature = "prometheus")]
    if let Some(addr) = cli.metrics_addr {
        if let Err(e) = serve_metrics(addr, &runtime) {
            errln!("statelock: {}.", e.message);
            return e.code;
        }
    }
    let mut code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            errln!("statelock: {}.", e.message.trim_end_matches('.'));
            e.code
        }
    };
    // An audit log that could not be written fails the command.
    if let Some(why) = audit_failure() {
        errln!("statelock: {why}; audit events were lost: free space or fix the file, then check what ran.");
        if code == exit::OK {
            code = exit::FAILURE;
        }
    }
    // Do not hang on a task stuck in the store (e.g. a release on drop).
    runtime.shutdown_timeout(Duration::from_secs(2));
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<std::ffi::OsString> + 'a {
        move |name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.into())
    }

    #[test]
    fn the_store_is_named_by_its_absolute_path() {
        let home = [("HOME", "/home/u")];
        assert_eq!(
            resolve_store(None, env(&home)),
            Ok((
                StoreUrl::File("/home/u/.local/state/statelock/locks".into()),
                "file:///home/u/.local/state/statelock/locks".to_string()
            ))
        );
        // An explicit store wins over the default, and a relative path is
        // shown absolute.
        let cwd = std::env::current_dir().unwrap();
        let (url, text) = resolve_store(Some("file://rel/locks".into()), env(&home)).unwrap();
        assert_eq!(url, StoreUrl::File(cwd.join("rel/locks")));
        assert_eq!(text, format!("file://{}", cwd.join("rel/locks").display()));
        assert_eq!(
            resolve_store(Some("mem://".into()), env(&[])),
            Ok((StoreUrl::Memory, "mem://".to_string()))
        );
        // No store and no default location: exit 2, telling to pass --store.
        let err = resolve_store(None, env(&[])).unwrap_err();
        assert_eq!(err.code, exit::USAGE);
        assert!(err.message.contains("--store"), "{}", err.message);
    }

    #[test]
    fn help_lists_every_exit_code() {
        for code in [
            "0 ", "1 ", "2 ", "3 ", "4 ", "5 ", "75 ", "126 ", "127 ", "128+N ",
        ] {
            assert!(
                LONG_ABOUT.contains(&format!("\n  {code}")),
                "exit code {code} undocumented"
            );
        }
    }
}
