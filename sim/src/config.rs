//! What a run simulates: the protocol variant, the workload's shape, which
//! faults are on, and the timing constants (all in simulated time).

use crate::scenario::{DriftMode, Fault, FaultSet, ProtocolVariant, StateBug, SupervisorVariant};
use statelock::protocol::{Backoff, ProtocolConfig};
use std::time::Duration;

/// Timing constants, in simulated time. Chosen so that one run is a few
/// simulated seconds: leases of half a second, links of a few milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Simulated time per turmoil step.
    pub tick: Duration,
    /// Fastest message delivery on a healthy link.
    pub min_latency: Duration,
    /// Slowest message delivery on a healthy link.
    pub max_latency: Duration,
    /// A client gives up on a store request after this long (outcome unknown).
    pub request_timeout: Duration,
    /// With several store hosts: how long a quorum request waits for the
    /// remaining members once a majority answered
    /// (`QuorumStore::with_straggler_wait`; the library's 100 ms is scaled
    /// down like the lease).
    pub straggler_wait: Duration,
    /// The lease every client asks for.
    pub lease: Duration,
    /// Waiters' polling backoff.
    pub backoff: Backoff,
    /// How long a client waits for a lock before giving up on that op.
    pub acquire_wait: Duration,
    /// Longest "work" between reading and writing the state.
    pub work_max: Duration,
    /// Longest pause between two ops of one client.
    pub think_max: Duration,
    /// Mean time between two injected network/host faults.
    pub fault_interval: Duration,
    /// Faults stop at the latest after this long.
    pub fault_window_max: Duration,
    /// A run that has not finished after this long is cut (and judged).
    pub max_run: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            tick: Duration::from_millis(1),
            min_latency: Duration::from_millis(1),
            max_latency: Duration::from_millis(8),
            request_timeout: Duration::from_millis(60),
            straggler_wait: Duration::from_millis(20),
            lease: Duration::from_millis(400),
            backoff: Backoff {
                base: Duration::from_millis(10),
                cap: Duration::from_millis(120),
                poll: Duration::from_millis(20),
            },
            acquire_wait: Duration::from_secs(30),
            work_max: Duration::from_millis(8),
            think_max: Duration::from_millis(20),
            fault_interval: Duration::from_millis(250),
            fault_window_max: Duration::from_secs(120),
            max_run: Duration::from_secs(300),
        }
    }
}

/// Everything a run depends on besides its seed.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The protocol under test.
    pub protocol: ProtocolVariant,
    /// Number of client hosts.
    pub clients: usize,
    /// Number of lock-store hosts: 1 (one store), or an odd number from 3
    /// to 9, whose lock stores are the members of a quorum store on every
    /// client (the state objects stay on store host 0). At most one store
    /// host is faulty at a time.
    pub stores: usize,
    /// Number of lock keys (each op picks one at random).
    pub keys: usize,
    /// Ops (acquire → read → write → release) per client.
    pub ops_per_client: u32,
    /// Faults switched on.
    pub faults: FaultSet,
    /// Clock drift mode (used when [`Fault::Drift`] is on).
    pub drift: DriftMode,
    /// The drift the clients' clocks really have with [`DriftMode::Within`],
    /// in parts per million (`None`: the protocol's ρ). Separate from ρ so
    /// that a protocol configured without ρ or margin can run against clocks
    /// that still drift: `ρ = 0, margin = 0` with clocks at ±5 % is a
    /// protocol that believes clocks are perfect.
    pub clock_drift_ppm: Option<u32>,
    /// ρ and margin, shared by every client (the protocol's constants).
    pub protocol_config: ProtocolConfig,
    /// Timing constants.
    pub timing: Timing,
    /// Faults stop (and are healed) once this fraction of all ops is done,
    /// so every run ends with a quiet phase where liveness is judged.
    pub quiet_after: f64,
    /// Probability that an op's work between read and write is long: from a
    /// fifth of a lease to [`SimConfig::long_work_max`] leases, so the lease
    /// must be renewed, checking the guard every 5–50 ms all along.
    pub long_work: f64,
    /// Longest long work (and supervised command) while faults are on, in
    /// leases: beyond the holder's validity, so that a holder cut off from
    /// the store mid-work outlives its lease. At most 1.2 once faults stop,
    /// so that a live holder never blocks waiters past `EventualAcquire`'s
    /// bound.
    pub long_work_max: f64,
    /// Probability that a network or host fault hits a client holding a lock
    /// (rather than any client).
    pub target_holders: f64,
    /// Probability that a client pauses right after an acquire.
    pub pause_after_acquire: f64,
    /// Probability that a client pauses right before a write.
    pub pause_before_write: f64,
    /// Probability that an op runs a supervised command (statelock only):
    /// unfenced writes, stopped on the schedule of `statelock exec` (see
    /// [`crate::command`]), instead of a fenced read and write.
    pub supervised: f64,
    /// Probability that the process pauses while a supervised command runs.
    pub pause_supervised: f64,
    /// The supervisor of those commands: the library's, or a planted bug.
    pub supervisor: SupervisorVariant,
    /// A planted bug of the state side (statelock only), or none.
    pub bug: StateBug,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            protocol: ProtocolVariant::Statelock,
            clients: 5,
            stores: 1,
            keys: 1,
            ops_per_client: 40,
            faults: FaultSet::all(),
            drift: DriftMode::Within,
            clock_drift_ppm: None,
            // ρ = 5 %: large enough that drift within ρ is tens of
            // milliseconds per lease, well above the 1 ms step, so the
            // holder-validity and takeover-wait formulas are really tested.
            protocol_config: ProtocolConfig {
                drift_ppm: 50_000,
                margin: Duration::from_millis(20),
            },
            timing: Timing::default(),
            quiet_after: 0.7,
            long_work: 0.06,
            long_work_max: 2.5,
            target_holders: 0.5,
            pause_after_acquire: 0.02,
            pause_before_write: 0.03,
            supervised: 0.05,
            pause_supervised: 0.1,
            supervisor: SupervisorVariant::Exec,
            bug: StateBug::None,
        }
    }
}

impl SimConfig {
    /// This configuration with another lease; the margin becomes a
    /// twentieth of it.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.timing.lease = lease;
        self.protocol_config.margin = lease / 20;
        self
    }

    /// This configuration with another ρ, in parts per million.
    pub fn with_rho_ppm(mut self, ppm: u32) -> Self {
        self.protocol_config.drift_ppm = ppm;
        self
    }

    /// This configuration with another margin (`None`: keep it).
    pub fn with_margin(mut self, margin: Option<Duration>) -> Self {
        if let Some(m) = margin {
            self.protocol_config.margin = m;
        }
        self
    }

    /// This configuration with clocks drifting by up to `ppm` (`None`: by
    /// up to the protocol's ρ).
    pub fn with_clock_drift_ppm(mut self, ppm: Option<u32>) -> Self {
        self.clock_drift_ppm = ppm;
        self
    }

    /// This configuration with another acquire wait: how long a client waits
    /// for a lock before giving up on that op (and leaving the hand-off
    /// queue).
    pub fn with_acquire_wait(mut self, wait: Duration) -> Self {
        self.timing.acquire_wait = wait;
        self
    }

    /// This configuration with another simulation step.
    pub fn with_tick(mut self, tick: Duration) -> Self {
        self.timing.tick = tick;
        self
    }

    /// Checks that the protocol accepts this lease and ρ, and that the
    /// scenario is not empty, so that a run cannot pass vacuously.
    pub fn validate(&self) -> Result<(), String> {
        self.protocol_config
            .check_lease(self.timing.lease)
            .map_err(|e| format!("invalid scenario: {e}"))?;
        if self.clients == 0 || self.keys == 0 || self.ops_per_client == 0 {
            return Err("invalid scenario: clients, keys and ops must be at least 1".into());
        }
        if self
            .clock_drift_ppm
            .is_some_and(|ppm| ppm > MAX_CLOCK_DRIFT_PPM)
        {
            return Err(format!(
                "invalid scenario: clock drift must be at most {MAX_CLOCK_DRIFT_PPM} ppm (rates 0.5 to 1.5); use --drift beyond for wilder clocks"
            ));
        }
        for (name, p) in [
            ("--supervised", self.supervised),
            ("--long-work", self.long_work),
            ("--target-holders", self.target_holders),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!(
                    "invalid scenario: {name} is a share of ops or faults: use a number from 0 to 1"
                ));
            }
        }
        if !(0.2..=10.0).contains(&self.long_work_max) {
            return Err("invalid scenario: --long-work-max must be from 0.2 to 10 leases".into());
        }
        let quorum_ok = (3..=9).contains(&self.stores) && !self.stores.is_multiple_of(2);
        if self.stores != 1 && !quorum_ok {
            return Err(
                "invalid scenario: --stores must be 1 or an odd number from 3 to 9 (a quorum)"
                    .into(),
            );
        }
        if self.stores > 1 && self.protocol != ProtocolVariant::Statelock {
            return Err(
                "invalid scenario: several store hosts need --protocol statelock (the quorum store)"
                    .into(),
            );
        }
        if self.bug == StateBug::PerStoreToken && self.stores == 1 {
            return Err("invalid scenario: --bug per-store-token needs --stores 3".into());
        }
        if self.bug == StateBug::QueueJump
            && (self.stores != 1 || self.protocol != ProtocolVariant::Statelock || self.clients < 2)
        {
            return Err(
                "invalid scenario: --bug queue-jump needs one store host (a quorum keeps no queue), --protocol statelock and at least 2 clients"
                    .into(),
            );
        }
        if self.timing.acquire_wait.is_zero() {
            return Err("invalid scenario: --acquire-wait-ms must be at least 1".into());
        }
        if self.timing.tick.is_zero() {
            return Err("invalid scenario: the simulation step must be at least 1 ms".into());
        }
        Ok(())
    }

    /// ρ as a fraction.
    pub fn rho(&self) -> f64 {
        f64::from(self.protocol_config.drift_ppm) / 1e6
    }

    /// The drift bound of the clients' clocks with [`DriftMode::Within`], in
    /// parts per million: [`SimConfig::clock_drift_ppm`], or ρ.
    pub fn clock_drift(&self) -> u32 {
        self.clock_drift_ppm
            .unwrap_or(self.protocol_config.drift_ppm)
    }

    /// The range client clock rates are drawn from.
    pub fn rate_range(&self) -> (f64, f64) {
        if !self.faults.has(Fault::Drift) {
            return (1.0, 1.0);
        }
        match self.drift {
            DriftMode::Within => {
                let d = f64::from(self.clock_drift()) / 1e6;
                (1.0 - d, 1.0 + d)
            }
            DriftMode::Beyond => (0.5, 2.0),
        }
    }

    /// True if the clocks may drift further than the protocol's ρ: its
    /// assumption is broken, so `MutualExclusion` (and what rests on the
    /// holder's deadline, `SupervisedExclusion`) may fail.
    pub fn clocks_beyond_rho(&self) -> bool {
        let (lo, hi) = self.rate_range();
        let rho = self.rho();
        lo < 1.0 - rho - 1e-12 || hi > 1.0 + rho + 1e-12
    }

    /// The lock keys of this run.
    pub fn key_names(&self) -> Vec<String> {
        (0..self.keys).map(key_name).collect()
    }

    /// Total ops of the run.
    pub fn total_ops(&self) -> u64 {
        self.clients as u64 * u64::from(self.ops_per_client)
    }

    /// True if no fault is on (`--faults none`): no network or host fault,
    /// no pause, exact clocks, no operator. Only then is `FifoGrant` judged.
    pub fn fault_free(&self) -> bool {
        self.faults == FaultSet::none()
    }

    /// True if the clients' lock store is a quorum of several store hosts.
    pub fn quorum(&self) -> bool {
        self.stores > 1
    }

    /// True if a store host may lose acknowledged writes (`store-wipe` on a
    /// quorum): outside the quorum's fault model, so the invariants that
    /// rest on unique tokens may fail.
    pub fn lost_writes(&self) -> bool {
        self.quorum() && self.faults.has(Fault::StoreWipe)
    }

    /// One line describing the configuration, for summaries.
    pub fn describe(&self) -> String {
        let mut line = format!(
            "protocol={} clients={} keys={} ops/client={} lease={}ms rho={}ppm margin={}ms faults={} drift={}",
            self.protocol,
            self.clients,
            self.keys,
            self.ops_per_client,
            self.timing.lease.as_millis(),
            self.protocol_config.drift_ppm,
            self.protocol_config.margin.as_millis(),
            self.faults,
            self.drift
        );
        if let Some(ppm) = self.clock_drift_ppm {
            line.push_str(&format!(" clock-drift={ppm}ppm"));
        }
        if self.stores != 1 {
            line.push_str(&format!(" stores={}", self.stores));
        }
        line.push_str(&format!(" supervised={}", self.supervised));
        if self.supervisor != SupervisorVariant::Exec {
            line.push_str(&format!(" supervisor={}", self.supervisor));
        }
        if self.bug != StateBug::None {
            line.push_str(&format!(" bug={}", self.bug));
        }
        let d = SimConfig::default();
        if (self.long_work, self.long_work_max) != (d.long_work, d.long_work_max) {
            line.push_str(&format!(
                " long-work={}x{}",
                self.long_work, self.long_work_max
            ));
        }
        if self.target_holders != d.target_holders {
            line.push_str(&format!(" target-holders={}", self.target_holders));
        }
        if self.timing.acquire_wait != d.timing.acquire_wait {
            line.push_str(&format!(
                " acquire-wait={}ms",
                self.timing.acquire_wait.as_millis()
            ));
        }
        line
    }
}

/// The largest [`SimConfig::clock_drift_ppm`]: rates from 0.5 to 1.5.
pub const MAX_CLOCK_DRIFT_PPM: u32 = 500_000;

/// The name of lock key `i`.
pub fn key_name(i: usize) -> String {
    format!("stack:sim:env:k{i}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_scenarios_are_refused() {
        let cfg = SimConfig::default();
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(cfg.rate_range(), (0.95, 1.05));
        assert!(cfg.clone().with_rho_ppm(100_000).validate().is_err());
        assert!(cfg
            .clone()
            .with_lease(Duration::from_millis(20))
            .validate()
            .is_err());
        assert!(SimConfig {
            clients: 0,
            ..cfg.clone()
        }
        .validate()
        .is_err());
        assert!(!cfg.clocks_beyond_rho());
        let beyond = SimConfig {
            drift: DriftMode::Beyond,
            ..cfg.clone()
        };
        assert_eq!(beyond.rate_range(), (0.5, 2.0));
        assert!(beyond.clocks_beyond_rho());
        assert!(cfg
            .clone()
            .with_clock_drift_ppm(Some(600_000))
            .validate()
            .is_err());
        for (stores, ok) in [(1, true), (2, false), (3, true), (5, true), (11, false)] {
            let c = SimConfig {
                stores,
                ..cfg.clone()
            };
            assert_eq!(c.validate().is_ok(), ok, "stores {stores}");
        }
        let bug = SimConfig {
            bug: StateBug::PerStoreToken,
            ..cfg.clone()
        };
        assert!(bug.validate().is_err(), "the quorum bug needs a quorum");
        assert!(SimConfig { stores: 3, ..bug }.validate().is_ok());
        let jump = SimConfig {
            bug: StateBug::QueueJump,
            faults: FaultSet::none(),
            ..cfg.clone()
        };
        assert!(jump.validate().is_ok() && jump.fault_free());
        assert!(!cfg.fault_free());
        assert!(
            SimConfig { stores: 3, ..jump }.validate().is_err(),
            "a quorum keeps no queue to jump"
        );
        assert!(SimConfig {
            stores: 3,
            protocol: ProtocolVariant::Naive,
            ..cfg.clone()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn clock_drift_is_separate_from_rho() {
        // A protocol that assumes perfect clocks, with clocks at ±5 %.
        let mutant = SimConfig::default()
            .with_rho_ppm(0)
            .with_margin(Some(Duration::ZERO))
            .with_clock_drift_ppm(Some(50_000));
        assert_eq!(mutant.validate(), Ok(()));
        assert_eq!(mutant.rate_range(), (0.95, 1.05));
        assert!(mutant.clocks_beyond_rho());
        assert!(mutant.describe().contains("rho=0ppm margin=0ms"));
        assert!(mutant.describe().contains("clock-drift=50000ppm"));
        // By default the clocks follow ρ, whatever it is.
        let slow = SimConfig::default().with_rho_ppm(10_000);
        assert_eq!(slow.clock_drift(), 10_000);
        assert!(!slow.clocks_beyond_rho());
        // Clocks better than ρ are fine; without the drift fault clocks are exact.
        let calm = SimConfig::default().with_clock_drift_ppm(Some(1_000));
        assert!(!calm.clocks_beyond_rho());
        let exact = SimConfig {
            faults: FaultSet::all().without(Fault::Drift),
            ..mutant
        };
        assert_eq!(exact.rate_range(), (1.0, 1.0));
        assert!(!exact.clocks_beyond_rho());
    }
}
