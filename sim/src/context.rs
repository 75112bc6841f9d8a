//! What every host of a run shares and what a client host is given: the
//! run's progress ([`Shared`], kept outside the hosts so it survives their
//! crashes), a client's context ([`ClientCtx`]) and the lock protocol as the
//! workload drives it (`Session`).
//!
//! This module only holds these shared types; it must not import the modules
//! that use them (workload, faults, command, naive, operator).

use crate::config::SimConfig;
use crate::history::{Actor, Recorder, SaveOutcome, What};
use crate::scenario::Fault;
use statelock::client::LockGuard;
use statelock::clock::Clock;
use statelock::state::StateDocument;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Once faults stop, work and supervised commands last at most this many
/// leases (so that a live holder never blocks waiters past
/// `EventualAcquire`'s bound).
pub const QUIET_WORK_MAX: f64 = 1.2;

/// One client's progress, kept across its restarts.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    /// The next op number to start.
    pub next_op: u32,
    /// How many times the process started.
    pub incarnations: u32,
    /// All ops done.
    pub finished: bool,
    /// The lock held now, if any: (key, lease id).
    pub holding: Option<(String, u128)>,
}

/// State shared by the simulator and every host of one run.
#[derive(Debug)]
pub struct Shared {
    quiet: AtomicBool,
    progress: Vec<Mutex<Progress>>,
    dead_owners: Mutex<BTreeSet<(String, u128)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Fresh state for `clients` clients.
    pub fn new(clients: usize) -> Self {
        Shared {
            quiet: AtomicBool::new(false),
            progress: (0..clients)
                .map(|_| Mutex::new(Progress::default()))
                .collect(),
            dead_owners: Mutex::new(BTreeSet::new()),
        }
    }

    /// True once faults have stopped.
    pub fn is_quiet(&self) -> bool {
        self.quiet.load(Ordering::SeqCst)
    }

    /// Faults stop.
    pub fn set_quiet(&self) {
        self.quiet.store(true, Ordering::SeqCst);
    }

    /// Client `c`'s progress.
    pub fn progress(&self, c: usize) -> MutexGuard<'_, Progress> {
        lock(&self.progress[c])
    }

    /// Ops started by all clients.
    pub fn ops_started(&self) -> u64 {
        self.progress
            .iter()
            .map(|p| u64::from(lock(p).next_op))
            .sum()
    }

    /// True when every client has done all its ops.
    pub fn all_finished(&self) -> bool {
        self.progress.iter().all(|p| lock(p).finished)
    }

    /// Client `c` crashed: the lease it held (if any) has no living holder.
    pub fn crashed(&self, c: usize) {
        if let Some(held) = self.progress(c).holding.take() {
            lock(&self.dead_owners).insert(held);
        }
    }

    /// Client `c` restarted.
    pub fn restarted(&self, c: usize) {
        self.progress(c).holding = None;
    }

    /// True if `owner`'s holder of `key` crashed.
    pub fn is_dead_owner(&self, key: &str, owner: u128) -> bool {
        lock(&self.dead_owners).contains(&(key.to_string(), owner))
    }
}

/// What a client host needs.
#[derive(Debug)]
pub struct ClientCtx {
    /// Client index.
    pub id: usize,
    /// The run's seed.
    pub seed: u64,
    /// The run's configuration.
    pub cfg: Arc<SimConfig>,
    /// The trace.
    pub rec: Recorder,
    /// Shared progress.
    pub shared: Arc<Shared>,
}

impl ClientCtx {
    pub(crate) fn me(&self) -> Actor {
        Actor::Client(self.id as u16)
    }

    pub(crate) fn record(&self, what: What) {
        self.rec.record(self.me(), what);
    }

    /// The longest long work (or supervised command) now, in leases:
    /// [`SimConfig::long_work_max`] while faults are on, at most
    /// [`QUIET_WORK_MAX`] once they stop.
    pub(crate) fn long_work_max(&self) -> f64 {
        let max = self.cfg.long_work_max.max(0.2);
        if self.shared.is_quiet() {
            max.min(QUIET_WORK_MAX)
        } else {
            max
        }
    }

    /// True if work (or a supervised command) that began at `started` (true
    /// time) must end now: faults have stopped and it has lasted
    /// [`QUIET_WORK_MAX`] leases. A live holder must not block waiters past
    /// `EventualAcquire`'s bound once faults stop, whatever length it drew
    /// before.
    pub(crate) fn work_cut_short(&self, started: Duration) -> bool {
        self.shared.is_quiet()
            && crate::history::now().saturating_sub(started)
                >= self.cfg.timing.lease.mul_f64(QUIET_WORK_MAX)
    }

    /// True if this process may be paused now (pauses are on, faults have
    /// not stopped).
    pub(crate) fn pauses_allowed(&self) -> bool {
        self.cfg.faults.has(Fault::Pause) && !self.shared.is_quiet()
    }
}

/// The state as a holder read it.
#[derive(Debug, Clone, Default)]
pub struct StateRead {
    /// The version read (`None`: no state yet).
    pub version: Option<String>,
    /// The document's counter (`outputs.counter`; 0 if absent).
    pub counter: u64,
    /// The saves the document had when read (its stamp's serial).
    pub serial: u64,
    /// The document (`None`: no state yet; always `None` for the naive
    /// protocol, whose state is a bare body).
    pub document: Option<StateDocument>,
}

/// A lock protocol as the workload uses it.
pub(crate) trait Session {
    type Guard;
    /// Acquires `key`, waiting.
    async fn acquire(&self, key: &str) -> Result<Self::Guard, String>;
    /// The grant's token.
    fn token(&self, g: &Self::Guard) -> u64;
    /// The grant's lease id.
    fn owner(&self, g: &Self::Guard) -> u128;
    /// Whether the client may act as the holder now.
    fn is_valid(&self, g: &Self::Guard) -> bool;
    /// The process freezes: no more heartbeats.
    fn freeze(&self, g: &Self::Guard);
    /// Seals the state right after the grant (`None`: this protocol does
    /// not seal).
    async fn seal(&self, key: &str, g: &Self::Guard) -> Option<SaveOutcome>;
    /// Reads the state (pulls the document).
    async fn load(&self, key: &str, g: &Self::Guard) -> Result<StateRead, String>;
    /// Writes the state read as `read`, its counter one higher, as `by`.
    async fn save(&self, key: &str, g: &Self::Guard, read: &StateRead, by: String) -> SaveOutcome;
    /// Releases the lock.
    async fn release(&self, g: Self::Guard) -> Result<(), String>;
    /// What a supervisor needs: the library's guard and the client's clock
    /// (`None`: this protocol runs no supervised commands).
    fn supervision<'a>(&'a self, g: &'a Self::Guard)
        -> Option<(&'a LockGuard, &'a Arc<dyn Clock>)>;
}
