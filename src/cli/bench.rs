//! `statelock bench`: a contention benchmark users run against their own
//! store, like pgbench for locks.
//!
//! N clients, each with its own store connection and its own
//! [`LockClient`], loop for a duration: acquire a key (client i uses key
//! i % K), seal the key's state and add one to a counter in its outputs
//! through the production state store, optionally sleep (`--work`), release.
//! The report gives critical sections per second, acquire waits, hand-off
//! latencies, fairness, store operations per critical section, takeovers,
//! errors, and overlaps: the final counter of each key must equal the
//! critical sections completed on it. `--raw` adds, for the same duration
//! and clients, the floor a bare create-if-absent/delete spin lock reaches on
//! the same kind of store ([`raw`]).
//!
//! This module measures; it decides nothing about locking (that is the
//! library's) and asserts nothing about speed. Times come from the
//! process's monotonic clock ([`Instant`]): every client runs in this
//! process.

mod counting;
mod raw;

use super::duration::{self, human};
use super::state::state_failure;
use super::{exit, lock_failure, CliError, Context, OutputFormat};
use crate::client::{AcquireOptions, LockClient, LockError, LockGuard};
use crate::protocol::{HolderInfo, LockKey, ProtocolConfig};
use crate::state::open::open_state_store;
use crate::state::{seal_for, SealError, StateError, StateStore};
use crate::store::url::StoreUrl;
use crate::store::{open_lock_store, LockStore, StoreError};
use counting::{CountingStore, StoreCounters, StoreCounts};
use raw::{RawLock, RawShared};
use serde::Serialize;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The most clients one run may have.
const MAX_CLIENTS: u32 = 1024;

/// The longest run.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// The output the counter lives in, in each key's state document.
const COUNTER_OUTPUT: &str = "statelock_bench_counter";

/// The `schema` field of the JSON report.
const SCHEMA: &str = "statelock-bench-v1";

/// The long help of `statelock bench` (with the JSON schema).
pub(crate) const BENCH_LONG_ABOUT: &str = "\
Measure lock contention on your own store (pgbench for locks).

--clients N clients run in this process, each with its own connection to
--store (its own SDK client for DynamoDB and S3; a mem:// store is one
store shared by all, as it exists only in this process) and its own lock
client. Client i uses key i % --keys. Until --duration elapses each client:
acquires its key (default options, --lease), seals the key's state in the
state store and adds one to the counter output `statelock_bench_counter`
(load, increment, fenced save), sleeps --work, and releases.

Keys are named statelock-bench/RUN/I (RUN is new each run); their released
lock records stay in the store (remove them later with `statelock purge`).
The state goes to --state-store if given, else to a temporary directory
removed at the end.

Overlaps: at the end each key's counter must equal the critical sections
completed on it; any difference is reported as overlaps and the command
exits 1. Exit 2: bad input. Exit 5: the store failed (misconfigured,
damaged record).

--raw also runs, for the same duration and clients, the floor: a bare spin
lock with one create-if-absent write and one delete per critical section,
polled every 25 ms, outside statelock's protocol (DynamoDB PutItem with
attribute_not_exists + DeleteItem of a scratch item in the lock table; S3
PutObject with If-None-Match: * + DeleteObject under PREFIX/bench-raw/; a
file created with O_CREAT|O_EXCL + unlink in the store's directory; in
memory, a mutex-protected set). Its critical section is only --work.

JSON report (--output json), one object; durations in milliseconds:
  schema            \"statelock-bench-v1\"
  store             the lock store URL (credentials removed)
  state_store       the state store URL (\"temporary\" when none was given)
  clients, keys     as given
  duration_ms       as given; elapsed_ms: measured, until every client stopped
  work_ms, lease_ms as given
  completed_cs      critical sections completed (saves accepted)
  cs_per_sec        completed_cs / elapsed
  acquire_wait_ms   {count, p50, p99, max}: acquire call to grant
  waiting_at_end_ms {count, p50, p99, max}: acquires still waiting when the
                    duration ran out (cut short; not in acquire_wait_ms)
  handoff_ms        {count, p50, p99, max}: a holder starting its release to
                    the next grant of the same key
  cs_per_client     {min, max, jain, counts: [per client]}; jain is Jain's
                    fairness index (1 = perfectly even), null when no CS ran
  store_ops         {reads, writes, failed_conditional_writes, per_cs:
                    {reads, writes, failed_conditional_writes}}: calls of
                    the lock store interface (each write is one conditional
                    write); per_cs values are null when no CS ran
  takeovers         takeovers that landed
  errors            failed iterations (acquire, state or release errors)
  first_error       the first such error's message, or null
  per_key           [{key, completed_cs, counter, uncertain}]: uncertain
                    counts saves whose outcome stayed unknown
  overlaps          sum over keys of how far counter is outside
                    [completed_cs, completed_cs + uncertain]
  raw               null without --raw; else {completed_cs, cs_per_sec,
                    elapsed_ms, acquire_wait_ms, waiting_at_end_ms,
                    cs_per_client, store_ops, errors, first_error, overlaps}
                    of the raw spin lock (store_ops counts its puts and
                    deletes; its overlaps: two clients inside the same key at
                    once, seen in-process)";

/// Arguments of `statelock bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Clients, each with its own store connection and lock client (1 to 1024)
    #[arg(long, value_name = "N")]
    pub clients: u32,
    /// How long to run, e.g. 15s or 2m
    #[arg(long, value_name = "DURATION")]
    pub duration: String,
    /// Keys the clients share: client i uses key i % K (1 to --clients)
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub keys: u32,
    /// Time spent inside each critical section, after the state save
    #[arg(long, default_value = "0s", value_name = "DURATION")]
    pub work: String,
    /// The lease of each grant
    #[arg(long, default_value = "20s", value_name = "DURATION")]
    pub lease: String,
    /// Output format: text (a table) or json (one object; schema in --help)
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Also measure the floor: a bare conditional-write + delete spin lock on the same store
    #[arg(long)]
    pub raw: bool,
}

/// The run's settings, validated.
#[derive(Debug, Clone)]
struct Plan {
    clients: usize,
    keys: usize,
    duration: Duration,
    work: Duration,
    lease: Duration,
    output: OutputFormat,
    raw: bool,
}

fn plan(args: &BenchArgs) -> Result<Plan, CliError> {
    if args.clients == 0 || args.clients > MAX_CLIENTS {
        return Err(CliError::usage(format!(
            "--clients must be 1 to {MAX_CLIENTS}, not {}",
            args.clients
        )));
    }
    if args.keys == 0 || args.keys > args.clients {
        return Err(CliError::usage(format!(
            "--keys must be 1 to --clients ({}), not {}: every key needs a client",
            args.clients, args.keys
        )));
    }
    let run_for = duration::parse("duration", &args.duration)?;
    if run_for.is_zero() || run_for > MAX_DURATION {
        return Err(CliError::usage(format!(
            "--duration must be more than 0s and at most 24h, not {:?}",
            args.duration
        )));
    }
    let work = duration::parse("work", &args.work)?;
    let lease = duration::parse("lease", &args.lease)?;
    ProtocolConfig::default()
        .check_lease(lease)
        .map_err(|e| CliError::usage(format!("invalid --lease {:?}: {e}", args.lease)))?;
    if work >= lease {
        return Err(CliError::usage(format!(
            "--work {} is not shorter than --lease {}: raise --lease or lower --work",
            args.work, args.lease
        )));
    }
    Ok(Plan {
        clients: args.clients as usize,
        keys: args.keys as usize,
        duration: run_for,
        work,
        lease,
        output: args.output,
        raw: args.raw,
    })
}

// ---------------------------------------------------------------------------
// Statistics

/// Count and percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct Summary {
    count: usize,
    p50: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The nearest-rank percentile `p` (0 < p <= 1) of sorted `values`.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn summarize(mut values: Vec<Duration>) -> Summary {
    values.sort_unstable();
    Summary {
        count: values.len(),
        p50: percentile(&values, 0.50).map(ms),
        p99: percentile(&values, 0.99).map(ms),
        max: values.last().copied().map(ms),
    }
}

/// Jain's fairness index of `counts`: (Σx)² / (n·Σx²), in (0, 1]; `None`
/// when every count is zero.
fn jain(counts: &[u64]) -> Option<f64> {
    let sum: f64 = counts.iter().map(|&c| c as f64).sum();
    let squares: f64 = counts.iter().map(|&c| (c as f64) * (c as f64)).sum();
    if counts.is_empty() || squares == 0.0 {
        return None;
    }
    Some((sum * sum) / (counts.len() as f64 * squares))
}

/// Critical sections per client.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct PerClient {
    min: u64,
    max: u64,
    jain: Option<f64>,
    counts: Vec<u64>,
}

fn per_client(counts: Vec<u64>) -> PerClient {
    PerClient {
        min: counts.iter().copied().min().unwrap_or(0),
        max: counts.iter().copied().max().unwrap_or(0),
        jain: jain(&counts),
        counts,
    }
}

fn per_sec(count: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        return 0.0;
    }
    (count as f64 / elapsed.as_secs_f64() * 100.0).round() / 100.0
}

// ---------------------------------------------------------------------------
// The report

#[derive(Debug, Clone, Serialize)]
struct OpsPerCs {
    reads: Option<f64>,
    writes: Option<f64>,
    failed_conditional_writes: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
struct StoreOps {
    reads: u64,
    writes: u64,
    failed_conditional_writes: u64,
    per_cs: OpsPerCs,
}

#[derive(Debug, Clone, Serialize)]
struct KeyReport {
    key: String,
    completed_cs: u64,
    counter: u64,
    uncertain: u64,
}

#[derive(Debug, Clone, Serialize)]
struct RawReport {
    completed_cs: u64,
    cs_per_sec: f64,
    elapsed_ms: f64,
    acquire_wait_ms: Summary,
    waiting_at_end_ms: Summary,
    cs_per_client: PerClient,
    store_ops: StoreOps,
    errors: u64,
    first_error: Option<String>,
    overlaps: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    schema: &'static str,
    store: String,
    state_store: String,
    clients: usize,
    keys: usize,
    duration_ms: f64,
    elapsed_ms: f64,
    work_ms: f64,
    lease_ms: f64,
    completed_cs: u64,
    cs_per_sec: f64,
    acquire_wait_ms: Summary,
    waiting_at_end_ms: Summary,
    handoff_ms: Summary,
    cs_per_client: PerClient,
    store_ops: StoreOps,
    takeovers: u64,
    errors: u64,
    first_error: Option<String>,
    per_key: Vec<KeyReport>,
    overlaps: u64,
    raw: Option<RawReport>,
}

fn store_ops(counts: StoreCounts, completed: u64) -> StoreOps {
    let per =
        |n: u64| (completed > 0).then(|| ((n as f64 / completed as f64) * 100.0).round() / 100.0);
    StoreOps {
        reads: counts.reads,
        writes: counts.writes,
        failed_conditional_writes: counts.failed_writes,
        per_cs: OpsPerCs {
            reads: per(counts.reads),
            writes: per(counts.writes),
            failed_conditional_writes: per(counts.failed_writes),
        },
    }
}

/// How far `counter` is outside `[completed, completed + uncertain]`.
fn overlaps_of(completed: u64, counter: u64, uncertain: u64) -> u64 {
    if counter < completed {
        completed - counter
    } else {
        counter.saturating_sub(completed.saturating_add(uncertain))
    }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}ms"))
}

/// `N (longest Xms)` for the acquires the end of the run cut short.
fn waiting(s: &Summary) -> String {
    match s.max {
        Some(max) => format!("{} (longest {max:.1}ms)", s.count),
        None => "0".to_string(),
    }
}

fn fairness(p: &PerClient) -> String {
    match p.jain {
        Some(j) => format!("{}–{} (Jain {j:.3})", p.min, p.max),
        None => format!("{}–{}", p.min, p.max),
    }
}

/// The human table: one column, or two with `--raw`.
fn render_text(r: &Report) -> String {
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let raw = r.raw.as_ref();
    let raw_or = |f: &dyn Fn(&RawReport) -> String| raw.map_or_else(String::new, f);
    let mut row = |name: &str, ours: String, floor: String| {
        rows.push((name.to_string(), ours, floor));
    };
    row(
        "CS/s",
        format!("{:.1}", r.cs_per_sec),
        raw_or(&|x| format!("{:.1}", x.cs_per_sec)),
    );
    row(
        "completed CS",
        r.completed_cs.to_string(),
        raw_or(&|x| x.completed_cs.to_string()),
    );
    row(
        "acquire wait p50",
        opt_ms(r.acquire_wait_ms.p50),
        raw_or(&|x| opt_ms(x.acquire_wait_ms.p50)),
    );
    row(
        "acquire wait p99",
        opt_ms(r.acquire_wait_ms.p99),
        raw_or(&|x| opt_ms(x.acquire_wait_ms.p99)),
    );
    row(
        "acquire wait max",
        opt_ms(r.acquire_wait_ms.max),
        raw_or(&|x| opt_ms(x.acquire_wait_ms.max)),
    );
    row(
        "still waiting at end",
        waiting(&r.waiting_at_end_ms),
        raw_or(&|x| waiting(&x.waiting_at_end_ms)),
    );
    let dash = || raw_or(&|_| "-".to_string());
    row("hand-off p50", opt_ms(r.handoff_ms.p50), dash());
    row("hand-off p99", opt_ms(r.handoff_ms.p99), dash());
    row(
        "CS per client",
        fairness(&r.cs_per_client),
        raw_or(&|x| fairness(&x.cs_per_client)),
    );
    let per = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
    let reads = |o: &StoreOps| format!("{} ({})", per(o.per_cs.reads), o.reads);
    let writes = |o: &StoreOps| format!("{} ({})", per(o.per_cs.writes), o.writes);
    let failed = |o: &StoreOps| {
        format!(
            "{} ({})",
            per(o.per_cs.failed_conditional_writes),
            o.failed_conditional_writes
        )
    };
    row(
        "store reads/CS",
        reads(&r.store_ops),
        raw_or(&|x| reads(&x.store_ops)),
    );
    row(
        "store writes/CS",
        writes(&r.store_ops),
        raw_or(&|x| writes(&x.store_ops)),
    );
    row(
        "failed cond. writes/CS",
        failed(&r.store_ops),
        raw_or(&|x| failed(&x.store_ops)),
    );
    row("takeovers", r.takeovers.to_string(), dash());
    row(
        "errors",
        r.errors.to_string(),
        raw_or(&|x| x.errors.to_string()),
    );
    row(
        "overlaps",
        r.overlaps.to_string(),
        raw_or(&|x| x.overlaps.to_string()),
    );
    let width = rows
        .iter()
        .map(|(n, _, _)| n.chars().count())
        .max()
        .unwrap_or(0);
    let ours_width = rows
        .iter()
        .map(|(_, o, _)| o.chars().count())
        .max()
        .unwrap_or(0)
        .max("statelock".len());
    let mut out = format!(
        "statelock bench: {} client{}, {} key{}, {} (ran {}), work {}, lease {}\nstore {}\nstate {}\n\n",
        r.clients,
        if r.clients == 1 { "" } else { "s" },
        r.keys,
        if r.keys == 1 { "" } else { "s" },
        human(Duration::from_secs_f64(r.duration_ms / 1e3)),
        human(Duration::from_secs_f64(r.elapsed_ms / 1e3)),
        human(Duration::from_secs_f64(r.work_ms / 1e3)),
        human(Duration::from_secs_f64(r.lease_ms / 1e3)),
        r.store,
        r.state_store,
    );
    if raw.is_some() {
        out.push_str(&format!(
            "{:width$}  {:ours_width$}  raw floor\n",
            "", "statelock"
        ));
    }
    for (name, ours, floor) in &rows {
        let line = if raw.is_some() {
            format!("{name:width$}  {ours:ours_width$}  {floor}")
        } else {
            format!("{name:width$}  {ours}")
        };
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if let Some(e) = &r.first_error {
        out.push_str(&format!("first error: {e}\n"));
    }
    if let Some(e) = raw.and_then(|x| x.first_error.as_ref()) {
        out.push_str(&format!("first raw error: {e}\n"));
    }
    out
}

// ---------------------------------------------------------------------------
// Progress

/// A progress bar on stderr while a phase runs, if stderr is a terminal;
/// nothing otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn start(phase: &str, run_for: Duration) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = indicatif::ProgressBar::new(run_for.as_millis().try_into().unwrap_or(u64::MAX));
        if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
            "{phase:>10} [{{bar:30}}] {{elapsed}} {{msg}}"
        )) {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress { bar: Some(bar) }
    }

    fn update(&self, started: Instant, completed: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(started.elapsed().as_millis().try_into().unwrap_or(u64::MAX));
            bar.set_message(format!("{completed} CS"));
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Updates `progress` every 200 ms until `done`.
async fn tick(
    progress: &Progress,
    started: Instant,
    completed: &AtomicU64,
    done: &CancellationToken,
) {
    loop {
        progress.update(started, completed.load(Ordering::Relaxed));
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

// ---------------------------------------------------------------------------
// The lock client phase

/// What a key's clients share.
#[derive(Debug)]
struct KeyState {
    key: LockKey,
    completed: AtomicU64,
    uncertain: AtomicU64,
    /// When the last holder started its release (taken by the next grant).
    released_at: Mutex<Option<Instant>>,
}

/// Errors of one iteration: counted, or ending the run.
enum Failure {
    Counted(String),
    Fatal(CliError),
}

/// What one client measured.
#[derive(Debug, Default)]
struct ClientResult {
    completed: u64,
    waits: Vec<Duration>,
    handoffs: Vec<Duration>,
    /// Waits cut short by the end of the run.
    unfinished: Vec<Duration>,
    /// Raw phase: conditional writes and deletes sent.
    writes: u64,
    /// Raw phase: conditional writes refused (the key was taken).
    failed_writes: u64,
    errors: u64,
    first_error: Option<String>,
}

impl ClientResult {
    fn count_error(&mut self, message: String) {
        self.errors += 1;
        self.first_error.get_or_insert(message);
    }
}

/// Everything a phase's clients share.
struct Shared {
    stop: CancellationToken,
    /// When the run ends (also enforced by a timer that cancels `stop`).
    deadline: Instant,
    completed: AtomicU64,
    fatal: Mutex<Option<CliError>>,
}

impl Shared {
    fn new(run_for: Duration) -> Shared {
        Shared {
            stop: CancellationToken::new(),
            deadline: Instant::now() + run_for,
            completed: AtomicU64::new(0),
            fatal: Mutex::new(None),
        }
    }

    /// True once the run is over (cancelling `stop` if the deadline passed).
    fn over(&self) -> bool {
        if Instant::now() >= self.deadline {
            self.stop.cancel();
        }
        self.stop.is_cancelled()
    }

    /// Ends the run with `e` (the first fatal error wins).
    fn fail(&self, e: CliError) {
        let mut fatal = self
            .fatal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        fatal.get_or_insert(e);
        self.stop.cancel();
    }

    fn fatal(&self) -> Option<CliError> {
        self.fatal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn lock_failure_of(e: LockError, store: &str) -> Failure {
    match e {
        LockError::Store(StoreError::Misconfigured(_) | StoreError::Corrupt { .. })
        | LockError::Protocol(_)
        | LockError::TokensExhausted { .. } => Failure::Fatal(lock_failure(e, store)),
        other => Failure::Counted(crate::store::url::redact_credentials(&other.to_string())),
    }
}

fn state_failure_of(e: StateError, state_text: &str) -> Failure {
    match e {
        StateError::Misconfigured(_)
        | StateError::Corrupt { .. }
        | StateError::ChecksumMismatch { .. } => Failure::Fatal(state_failure(e, state_text)),
        other => Failure::Counted(crate::store::url::redact_credentials(&other.to_string())),
    }
}

fn counter_of(doc: &crate::state::StateDocument) -> u64 {
    doc.outputs
        .get(COUNTER_OUTPUT)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

/// How one critical section's save ended.
enum Saved {
    Yes,
    /// The store did not answer and the state could not be read back.
    Unknown,
}

/// The critical section: seal, load, increment, fenced save.
async fn increment(
    state: &dyn StateStore,
    guard: &LockGuard,
    store_text: &str,
    state_text: &str,
) -> Result<Saved, Failure> {
    let (writer, _) = seal_for(state, guard).await.map_err(|e| match e {
        SealError::Lock(e) => lock_failure_of(e, store_text),
        SealError::State(e) => state_failure_of(e, state_text),
    })?;
    let loaded = state
        .load(guard.key())
        .await
        .map_err(|e| state_failure_of(e, state_text))?
        .ok_or_else(|| {
            Failure::Counted(format!(
                "the state of {} vanished after sealing",
                guard.key()
            ))
        })?;
    let mut document = loaded.document;
    let next = counter_of(&document).saturating_add(1);
    document
        .outputs
        .insert(COUNTER_OUTPUT.to_string(), serde_json::Value::from(next));
    match state.save(&writer, &loaded.version, document).await {
        Ok(_) => Ok(Saved::Yes),
        // The outcome is unknown: read it back (this client still holds the
        // lock and the fence, so nobody else wrote since).
        Err(StateError::Unavailable(why)) => match state.load(guard.key()).await {
            Ok(Some(now)) => {
                let ours = now
                    .stamp()
                    .is_some_and(|s| s.lease == writer.lease && s.fence == writer.token);
                if ours && counter_of(&now.document) == next {
                    Ok(Saved::Yes)
                } else {
                    Err(Failure::Counted(format!(
                        "the state store is unavailable: {why}"
                    )))
                }
            }
            _ => Ok(Saved::Unknown),
        },
        Err(e) => Err(state_failure_of(e, state_text)),
    }
}

/// One client's loop until `shared.stop`.
#[allow(clippy::too_many_arguments)]
async fn lock_client_loop(
    index: usize,
    client: LockClient,
    state: Arc<dyn StateStore>,
    key: Arc<KeyState>,
    plan: Plan,
    shared: Arc<Shared>,
    store_text: Arc<str>,
    state_text: Arc<str>,
) -> ClientResult {
    let mut result = ClientResult::default();
    let holder = HolderInfo::named(format!(
        "{} (statelock bench client {index})",
        super::default_who()
    ));
    while !shared.over() {
        let opts = AcquireOptions {
            lease: plan.lease,
            cancel: Some(shared.stop.clone()),
            holder: holder.clone(),
            ..AcquireOptions::default()
        };
        let asked = Instant::now();
        let guard = match client.acquire(&key.key, opts).await {
            Ok(guard) => guard,
            Err(LockError::Cancelled) => {
                result.unfinished.push(asked.elapsed());
                break;
            }
            Err(e) => {
                match lock_failure_of(e, &store_text) {
                    Failure::Fatal(e) => shared.fail(e),
                    Failure::Counted(m) => result.count_error(m),
                }
                continue;
            }
        };
        let granted = Instant::now();
        result.waits.push(granted.saturating_duration_since(asked));
        let released_at = key
            .released_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(at) = released_at {
            result.handoffs.push(granted.saturating_duration_since(at));
        }
        match increment(&*state, &guard, &store_text, &state_text).await {
            Ok(Saved::Yes) => {
                result.completed += 1;
                key.completed.fetch_add(1, Ordering::Relaxed);
                shared.completed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Saved::Unknown) => {
                key.uncertain.fetch_add(1, Ordering::Relaxed);
                result.count_error("the outcome of a state save is unknown".to_string());
            }
            Err(Failure::Fatal(e)) => shared.fail(e),
            Err(Failure::Counted(m)) => result.count_error(m),
        }
        if !plan.work.is_zero() {
            tokio::time::sleep(plan.work).await;
        }
        *key.released_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        if let Err(e) = guard.release().await {
            match lock_failure_of(e, &store_text) {
                Failure::Fatal(e) => shared.fail(e),
                Failure::Counted(m) => result.count_error(m),
            }
        }
    }
    result
}

/// Opens `n` lock stores for `url`: `n` connections, except for `mem://`,
/// which exists only in this process and is shared.
async fn open_stores(
    url: &StoreUrl,
    n: usize,
    store_text: &str,
) -> Result<Vec<Arc<dyn LockStore>>, CliError> {
    let fail = |e: StoreError| super::store_failure(&e, store_text);
    if *url == StoreUrl::Memory {
        let one = open_lock_store(url).await.map_err(fail)?;
        return Ok(vec![one; n]);
    }
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..n {
        let url = url.clone();
        opening.spawn(async move { (i, open_lock_store(&url).await) });
    }
    let mut stores: Vec<Option<Arc<dyn LockStore>>> = vec![None; n];
    while let Some(joined) = opening.join_next().await {
        let (i, opened) =
            joined.map_err(|e| CliError::new(exit::FAILURE, format!("unexpected error: {e}")))?;
        if let Some(slot) = stores.get_mut(i) {
            *slot = Some(opened.map_err(fail)?);
        }
    }
    Ok(stores.into_iter().flatten().collect())
}

/// The state stores of the clients, the text naming them, and the temporary
/// directory to remove afterwards.
struct StateStores {
    stores: Vec<Arc<dyn StateStore>>,
    text: String,
    temporary: Option<std::path::PathBuf>,
}

async fn open_state_stores(
    given: Option<&str>,
    n: usize,
    run: &str,
) -> Result<StateStores, CliError> {
    let (url, temporary) = match given {
        Some(url) => (url.to_string(), None),
        None => {
            let dir = std::env::temp_dir().join(format!("statelock-bench-{run}"));
            (format!("file://{}", dir.display()), Some(dir))
        }
    };
    let shared_one = matches!(StoreUrl::parse(&url), Ok(StoreUrl::Memory));
    let mut stores = Vec::with_capacity(n);
    let mut text = url.clone();
    for _ in 0..(if shared_one { 1 } else { n }) {
        let (store, shown) = open_state_store(Some(&url))
            .await
            .map_err(|e| state_failure(e, &crate::store::url::redact_credentials(&url)))?;
        text = shown;
        stores.push(store);
    }
    if shared_one {
        let one = stores.pop();
        stores = one.into_iter().cycle().take(n).collect();
    }
    if temporary.is_some() {
        text = format!("{text} (temporary)");
    }
    Ok(StateStores {
        stores,
        text,
        temporary,
    })
}

/// The lock client phase; returns the report without the raw section.
async fn run_locks(plan: &Plan, ctx: &Context, run: &str) -> Result<Report, CliError> {
    let store_text = ctx.store_text().to_string();
    let stores = open_stores(&ctx.store_url, plan.clients, &store_text).await?;
    let states = open_state_stores(ctx.state_store_url(), plan.clients, run).await?;
    let result = run_locks_with(plan, stores, &states, run, &store_text).await;
    if let Some(dir) = &states.temporary {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

async fn run_locks_with(
    plan: &Plan,
    stores: Vec<Arc<dyn LockStore>>,
    states: &StateStores,
    run: &str,
    store_text: &str,
) -> Result<Report, CliError> {
    let counters = Arc::new(StoreCounters::default());
    let mut keys = Vec::with_capacity(plan.keys);
    for i in 0..plan.keys {
        let key = LockKey::new(format!("statelock-bench/{run}/{i}"))
            .map_err(|e| CliError::new(exit::FAILURE, format!("unexpected error: {e}")))?;
        keys.push(Arc::new(KeyState {
            key,
            completed: AtomicU64::new(0),
            uncertain: AtomicU64::new(0),
            released_at: Mutex::new(None),
        }));
    }
    let shared = Arc::new(Shared::new(plan.duration));
    let store_text: Arc<str> = Arc::from(store_text);
    let state_text: Arc<str> = Arc::from(states.text.as_str());
    let progress = Progress::start("statelock", plan.duration);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (store, state)) in stores.into_iter().zip(states.stores.iter()).enumerate() {
        let client =
            LockClient::builder(Arc::new(CountingStore::new(store, counters.clone()))).build();
        let key = keys[index % keys.len()].clone();
        tasks.spawn(lock_client_loop(
            index,
            client,
            state.clone(),
            key,
            plan.clone(),
            shared.clone(),
            store_text.clone(),
            state_text.clone(),
        ));
    }
    let (results, elapsed) = {
        let stop = shared.stop.clone();
        let run_for = plan.duration;
        let timer = tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(run_for) => stop.cancel(),
            }
        });
        let done = CancellationToken::new();
        let ticking = tick(&progress, started, &shared.completed, &done);
        let joining = async {
            let mut results = Vec::new();
            while let Some(joined) = tasks.join_next().await {
                results.push(joined);
            }
            done.cancel();
            results
        };
        let (results, ()) = tokio::join!(joining, ticking);
        timer.abort();
        (results, started.elapsed())
    };
    progress.finish();
    if let Some(e) = shared.fatal() {
        return Err(e);
    }
    let mut clients = Vec::with_capacity(results.len());
    for joined in results {
        clients.push(
            joined.map_err(|e| CliError::new(exit::FAILURE, format!("unexpected error: {e}")))?,
        );
    }
    // The fenced counters.
    let mut per_key = Vec::with_capacity(keys.len());
    let check = states
        .stores
        .first()
        .ok_or_else(|| CliError::new(exit::FAILURE, "unexpected error: no state store"))?;
    for key in &keys {
        let counter = match check.load(&key.key).await {
            Ok(Some(loaded)) => counter_of(&loaded.document),
            Ok(None) => 0,
            Err(e) => return Err(state_failure(e, &states.text)),
        };
        per_key.push(KeyReport {
            key: key.key.to_string(),
            completed_cs: key.completed.load(Ordering::Relaxed),
            counter,
            uncertain: key.uncertain.load(Ordering::Relaxed),
        });
    }
    let overlaps = per_key
        .iter()
        .map(|k| overlaps_of(k.completed_cs, k.counter, k.uncertain))
        .sum();
    let completed: u64 = clients.iter().map(|c| c.completed).sum();
    let counts = counters.snapshot();
    let mut waits = Vec::new();
    let mut handoffs = Vec::new();
    let mut unfinished = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for c in &mut clients {
        waits.append(&mut c.waits);
        handoffs.append(&mut c.handoffs);
        unfinished.append(&mut c.unfinished);
        errors += c.errors;
        if first_error.is_none() {
            first_error = c.first_error.take();
        }
    }
    Ok(Report {
        schema: SCHEMA,
        store: store_text.to_string(),
        state_store: states.text.clone(),
        clients: plan.clients,
        keys: plan.keys,
        duration_ms: ms(plan.duration),
        elapsed_ms: ms(elapsed),
        work_ms: ms(plan.work),
        lease_ms: ms(plan.lease),
        completed_cs: completed,
        cs_per_sec: per_sec(completed, elapsed),
        acquire_wait_ms: summarize(waits),
        waiting_at_end_ms: summarize(unfinished),
        handoff_ms: summarize(handoffs),
        cs_per_client: per_client(clients.iter().map(|c| c.completed).collect()),
        store_ops: store_ops(counts, completed),
        takeovers: counts.takeovers,
        errors,
        first_error,
        per_key,
        overlaps,
        raw: None,
    })
}

// ---------------------------------------------------------------------------
// The raw floor phase

/// One raw client's loop until `shared.stop`.
async fn raw_client_loop(
    lock: RawLock,
    name: String,
    inside: Arc<AtomicUsize>,
    overlaps: Arc<AtomicU64>,
    plan: Plan,
    shared: Arc<Shared>,
) -> ClientResult {
    let mut result = ClientResult::default();
    'run: while !shared.over() {
        // The memory kind never waits on anything: let the timer run.
        tokio::task::yield_now().await;
        let asked = Instant::now();
        loop {
            result.writes += 1;
            match lock.try_acquire(&name).await {
                Ok(true) => break,
                Ok(false) => result.failed_writes += 1,
                Err(e @ StoreError::Unavailable(_)) => result.count_error(e.to_string()),
                Err(e) => {
                    result.count_error(e.to_string());
                    shared.stop.cancel();
                    break 'run;
                }
            }
            tokio::select! {
                _ = shared.stop.cancelled() => {
                    result.unfinished.push(asked.elapsed());
                    break 'run;
                }
                _ = tokio::time::sleep(raw::POLL) => {}
            }
        }
        result.waits.push(asked.elapsed());
        if inside.fetch_add(1, Ordering::SeqCst) != 0 {
            overlaps.fetch_add(1, Ordering::Relaxed);
        }
        if !plan.work.is_zero() {
            tokio::time::sleep(plan.work).await;
        }
        inside.fetch_sub(1, Ordering::SeqCst);
        // Release until it is done: a raw lock left behind blocks its key
        // for good (it has no lease).
        let mut tries = 0;
        loop {
            result.writes += 1;
            match lock.release(&name).await {
                Ok(()) => break,
                Err(e) => {
                    result.count_error(e.to_string());
                    tries += 1;
                    if tries >= 20 {
                        shared.stop.cancel();
                        break 'run;
                    }
                    tokio::time::sleep(raw::POLL).await;
                }
            }
        }
        result.completed += 1;
        shared.completed.fetch_add(1, Ordering::Relaxed);
    }
    result
}

async fn run_raw(plan: &Plan, ctx: &Context, run: &str) -> Result<RawReport, CliError> {
    let raw_shared = RawShared::default();
    let mut locks = Vec::with_capacity(plan.clients);
    for _ in 0..plan.clients {
        locks.push(
            RawLock::open(&ctx.store_url, &raw_shared)
                .await
                .map_err(|e| super::store_failure(&e, ctx.store_text()))?,
        );
    }
    let names: Vec<String> = (0..plan.keys).map(|i| format!("{run}-{i}")).collect();
    let inside: Vec<Arc<AtomicUsize>> = (0..plan.keys)
        .map(|_| Arc::new(AtomicUsize::new(0)))
        .collect();
    let overlaps = Arc::new(AtomicU64::new(0));
    let shared = Arc::new(Shared::new(plan.duration));
    let progress = Progress::start("raw floor", plan.duration);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, lock) in locks.into_iter().enumerate() {
        let k = index % plan.keys;
        tasks.spawn(raw_client_loop(
            lock,
            names[k].clone(),
            inside[k].clone(),
            overlaps.clone(),
            plan.clone(),
            shared.clone(),
        ));
    }
    let stop = shared.stop.clone();
    let run_for = plan.duration;
    let timer = tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(run_for) => stop.cancel(),
        }
    });
    let done = CancellationToken::new();
    let joining = async {
        let mut results = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            results.push(joined);
        }
        done.cancel();
        results
    };
    let (results, ()) = tokio::join!(joining, tick(&progress, started, &shared.completed, &done));
    timer.abort();
    let elapsed = started.elapsed();
    progress.finish();
    let mut clients = Vec::with_capacity(results.len());
    for joined in results {
        clients.push(
            joined.map_err(|e| CliError::new(exit::FAILURE, format!("unexpected error: {e}")))?,
        );
    }
    let completed: u64 = clients.iter().map(|c| c.completed).sum();
    let mut waits = Vec::new();
    let mut unfinished = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    let mut counts = StoreCounts::default();
    for c in &mut clients {
        waits.append(&mut c.waits);
        unfinished.append(&mut c.unfinished);
        counts.writes += c.writes;
        counts.failed_writes += c.failed_writes;
        errors += c.errors;
        if first_error.is_none() {
            first_error = c
                .first_error
                .take()
                .map(|e| crate::store::url::redact_credentials(&e));
        }
    }
    Ok(RawReport {
        completed_cs: completed,
        cs_per_sec: per_sec(completed, elapsed),
        elapsed_ms: ms(elapsed),
        acquire_wait_ms: summarize(waits),
        waiting_at_end_ms: summarize(unfinished),
        cs_per_client: per_client(clients.iter().map(|c| c.completed).collect()),
        store_ops: store_ops(counts, completed),
        errors,
        first_error,
        overlaps: overlaps.load(Ordering::Relaxed),
    })
}

// ---------------------------------------------------------------------------

/// Runs `statelock bench`.
pub(crate) async fn run(args: BenchArgs, ctx: &Context) -> Result<i32, CliError> {
    let plan = plan(&args)?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let run = run.get(..12).unwrap_or(&run).to_string();
    let mut report = run_locks(&plan, ctx, &run).await?;
    if plan.raw {
        report.raw = Some(run_raw(&plan, ctx, &run).await?);
    }
    match plan.output {
        OutputFormat::Json => {
            let text = serde_json::to_string_pretty(&report)
                .map_err(|e| CliError::new(exit::FAILURE, format!("unexpected error: {e}")))?;
            outln!("{text}");
        }
        OutputFormat::Text => out!("{}", render_text(&report)),
    }
    let raw_overlaps = report.raw.as_ref().map_or(0, |r| r.overlaps);
    if report.overlaps > 0 || raw_overlaps > 0 {
        return Err(CliError::new(
            exit::FAILURE,
            format!(
                "{} overlap{} found: a key's fenced counter differs from the critical sections completed on it{}; the store does not keep mutual exclusion",
                report.overlaps + raw_overlaps,
                if report.overlaps + raw_overlaps == 1 { "" } else { "s" },
                if raw_overlaps > 0 { " (or the raw lock let two clients in)" } else { "" },
            ),
        ));
    }
    if report.completed_cs == 0 && report.errors > 0 {
        return Err(CliError::new(
            exit::STORE,
            format!(
                "no critical section completed: {}",
                report
                    .first_error
                    .as_deref()
                    .unwrap_or("every iteration failed")
            ),
        ));
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(clients: u32, duration: &str, keys: u32) -> BenchArgs {
        BenchArgs {
            clients,
            duration: duration.to_string(),
            keys,
            work: "0s".to_string(),
            lease: "20s".to_string(),
            output: OutputFormat::Text,
            raw: false,
        }
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        for bad in [
            args(0, "2s", 1),
            args(4, "0s", 1),
            args(4, "banana", 1),
            args(4, "2s", 0),
            args(4, "2s", 5),
            args(MAX_CLIENTS + 1, "2s", 1),
        ] {
            let err = plan(&bad).unwrap_err();
            assert_eq!(err.code, exit::USAGE, "{bad:?}");
            assert!(!err.message.contains('\n'), "{}", err.message);
        }
        let mut short_lease = args(2, "2s", 1);
        short_lease.lease = "1ms".to_string();
        assert_eq!(plan(&short_lease).unwrap_err().code, exit::USAGE);
        let mut long_work = args(2, "2s", 1);
        long_work.work = "30s".to_string();
        assert_eq!(plan(&long_work).unwrap_err().code, exit::USAGE);
        assert!(plan(&args(4, "2s", 2)).is_ok());
    }

    #[test]
    fn jain_index_table() {
        assert_eq!(jain(&[]), None);
        assert_eq!(jain(&[0, 0]), None);
        assert_eq!(jain(&[5, 5, 5, 5]), Some(1.0));
        // One client did everything: 1/n.
        assert_eq!(jain(&[8, 0, 0, 0]), Some(0.25));
        let j = jain(&[1, 2, 3]).unwrap();
        assert!((j - 36.0 / 42.0).abs() < 1e-12, "{j}");
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = summarize(values.into_iter().rev().collect());
        assert_eq!(s.count, 100);
        assert_eq!(s.p50, Some(50.0));
        assert_eq!(s.p99, Some(99.0));
        assert_eq!(s.max, Some(100.0));
        let empty = summarize(Vec::new());
        assert_eq!((empty.count, empty.p50, empty.max), (0, None, None));
        let one = summarize(vec![Duration::from_micros(1500)]);
        assert_eq!((one.p50, one.p99), (Some(1.5), Some(1.5)));
    }

    #[test]
    fn overlaps_count_the_distance_outside_the_certain_range() {
        assert_eq!(overlaps_of(10, 10, 0), 0);
        assert_eq!(overlaps_of(10, 8, 0), 2);
        assert_eq!(overlaps_of(10, 11, 1), 0);
        assert_eq!(overlaps_of(10, 13, 1), 2);
    }
}
