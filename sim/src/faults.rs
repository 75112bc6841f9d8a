//! Faults: which can be switched on, and the injector that drives the
//! network- and host-level ones between simulation steps.
//!
//! With several store hosts (a quorum), a client's link faults cut or slow
//! its links to every store host (the client is the faulty party), and the
//! faults of a store host — a crash, a crash that loses its lock records
//! (`store-wipe`), a partition from some clients, slowness — hit **at most
//! one store host at a time** (the quorum of 3 tolerates one faulty
//! member). A store host that lost its records counts as faulty until the
//! quorum has repaired it (a majority of the store hosts, itself included,
//! holds the same write of every key), so no other store host fault starts
//! before that. Random message loss hits every link, as with one store.
//!
//! Network and host faults are injected here, from the run's `faults` random
//! stream, at exponentially distributed intervals; a share of them
//! ([`SimConfig::target_holders`]) is aimed at a client holding a lock.
//! Process pauses and clock faults happen inside the client hosts (see
//! [`crate::workload`]), from each client's own stream. Once enough of the
//! workload is done, [`Injector`] heals everything and declares the run
//! quiet: no fault starts after that, which is when `EventualAcquire` is
//! judged.

use crate::config::SimConfig;
use crate::context::Shared;
use crate::history::{Actor, Recorder, What};
use crate::rng::{stream, SimRng};
use crate::scenario::{Fault, FaultSet, ProtocolVariant};
use crate::server::Durable;
use crate::wire::{client_host, store_host, OPERATOR_HOST, STORE_HOST};
use rand::Rng;
use statelock::protocol::LockKey;
use std::sync::Arc;
use std::time::Duration;
use turmoil::Sim;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Undo {
    Repair(usize),
    RepairOneWay {
        client: usize,
        to_store: bool,
    },
    Release(usize),
    Latency(usize),
    LossOff,
    RestartClient(usize),
    RestartStore(usize),
    /// Store host `store` is reachable again from `clients`.
    RepairStore {
        store: usize,
        clients: Vec<usize>,
    },
    /// Store host `store`'s links are fast again.
    StoreFast(usize),
}

/// Injects network and host faults between simulation steps.
pub struct Injector {
    rng: SimRng,
    kinds: Vec<Fault>,
    clients: usize,
    next_at: Duration,
    active: Vec<(Duration, Undo)>,
    link_busy: Vec<bool>,
    client_down: Vec<bool>,
    store_down: bool,
    loss_on: bool,
    quiet: bool,
    /// Every store host's data (the wipe fault replaces a host's records).
    durables: Vec<Arc<Durable>>,
    keys: Vec<LockKey>,
    /// The store host under a fault now (several store hosts only).
    member_faulty: Option<usize>,
    /// The store host that lost its records and is not repaired yet.
    member_wiped: Option<usize>,
    /// The store host whose links are slow now.
    slow_store: Option<usize>,
}

impl Injector {
    /// An injector for a run of `cfg` with `seed`, over the store hosts'
    /// data `durables`.
    pub fn new(cfg: &SimConfig, seed: u64, durables: Vec<Arc<Durable>>) -> Self {
        let kinds: Vec<Fault> = [
            Fault::Partition,
            Fault::OneWay,
            Fault::Latency,
            Fault::Loss,
            Fault::Hold,
            Fault::ClientCrash,
            Fault::StoreCrash,
            Fault::StorePartition,
            Fault::StoreSlow,
            Fault::StoreWipe,
        ]
        .into_iter()
        .filter(|f| cfg.faults.has(*f) && (cfg.quorum() || !FaultSet::is_member_fault(*f)))
        .collect();
        let mut rng = stream(seed, "faults", 0, 0);
        let first = exp_delay(&mut rng, cfg.timing.fault_interval);
        Injector {
            rng,
            kinds,
            clients: cfg.clients,
            next_at: first,
            active: Vec::new(),
            link_busy: vec![false; cfg.clients],
            client_down: vec![false; cfg.clients],
            store_down: false,
            loss_on: false,
            quiet: false,
            durables,
            keys: cfg
                .key_names()
                .iter()
                .filter_map(|k| LockKey::new(k).ok())
                .collect(),
            member_faulty: None,
            member_wiped: None,
            slow_store: None,
        }
    }

    /// The store hosts' names.
    fn store_hosts(&self) -> Vec<String> {
        (0..self.durables.len()).map(store_host).collect()
    }

    /// True if a fault may hit a store host now: none is faulty, and the
    /// one that lost its records (if any) has been repaired since.
    fn member_free(&mut self) -> bool {
        if let Some(w) = self.member_wiped {
            if self.repaired(w) {
                self.member_wiped = None;
            }
        }
        self.member_faulty.is_none() && self.member_wiped.is_none()
    }

    /// True if store host `w` holds, for every key, the same write as
    /// enough other store hosts to make a majority with it.
    fn repaired(&self, w: usize) -> bool {
        let majority = self.durables.len() / 2 + 1;
        self.keys.iter().all(|k| {
            let Some(mine) = self.durables[w].locks().get_now(k) else {
                return false;
            };
            let same = self
                .durables
                .iter()
                .filter(|d| d.locks().get_now(k).is_some_and(|r| r.rvn == mine.rvn))
                .count();
            same >= majority
        })
    }

    /// True once faults have stopped.
    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// Called before each step at simulated time `now`.
    pub fn before_step(
        &mut self,
        sim: &mut Sim<'_>,
        now: Duration,
        cfg: &SimConfig,
        shared: &Shared,
        rec: &Recorder,
    ) {
        if self.quiet {
            return;
        }
        // End the faults whose time is up.
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].0 <= now {
                let (_, undo) = self.active.swap_remove(i);
                self.undo(sim, undo, cfg, shared, now, rec);
            } else {
                i += 1;
            }
        }
        let started = shared.ops_started();
        let quiet_due = started as f64 >= cfg.quiet_after * cfg.total_ops() as f64
            || now >= cfg.timing.fault_window_max;
        if quiet_due {
            self.heal_all(sim, cfg, shared, now, rec);
            return;
        }
        if now < self.next_at || self.kinds.is_empty() {
            return;
        }
        self.next_at = now + exp_delay(&mut self.rng, cfg.timing.fault_interval);
        let kind = self.kinds[self.rng.random_range(0..self.kinds.len())];
        self.start(sim, kind, cfg, shared, now, rec);
    }

    fn start(
        &mut self,
        sim: &mut Sim<'_>,
        kind: Fault,
        cfg: &SimConfig,
        shared: &Shared,
        now: Duration,
        rec: &Recorder,
    ) {
        let lease = cfg.timing.lease;
        let c = self.pick_client(cfg, shared);
        let host = client_host(c);
        let link_free = !self.link_busy[c];
        let note = |what: String| rec.record_at(now, Actor::Sim, What::Fault(what));
        let stores = self.store_hosts();
        let quorum = stores.len() > 1;
        // With one store host the trace names it "store", as it always did.
        let to = if quorum { "the stores" } else { "store" };
        match kind {
            Fault::Partition if link_free => {
                let d = self.duration(Duration::from_millis(20), lease * 2);
                for s in &stores {
                    sim.partition(host.as_str(), s.as_str());
                }
                self.link_busy[c] = true;
                self.active.push((now + d, Undo::Repair(c)));
                note(format!("partition {host} <-> {to} for {}ms", d.as_millis()));
            }
            Fault::OneWay if link_free => {
                let d = self.duration(Duration::from_millis(20), lease * 2);
                let to_store = self.rng.random_bool(0.5);
                if to_store {
                    for s in &stores {
                        sim.partition_oneway(host.as_str(), s.as_str());
                    }
                    note(format!(
                        "partition {host} -> {to} (requests lost) for {}ms",
                        d.as_millis()
                    ));
                } else {
                    for s in &stores {
                        sim.partition_oneway(s.as_str(), host.as_str());
                    }
                    note(format!(
                        "partition {to} -> {host} (answers lost) for {}ms",
                        d.as_millis()
                    ));
                }
                self.link_busy[c] = true;
                self.active.push((
                    now + d,
                    Undo::RepairOneWay {
                        client: c,
                        to_store,
                    },
                ));
            }
            Fault::Latency if link_free => {
                let d = self.duration(Duration::from_millis(50), lease * 2);
                let max = self.duration(Duration::from_millis(40), Duration::from_millis(300));
                for s in &stores {
                    sim.set_link_max_message_latency(host.as_str(), s.as_str(), max);
                }
                self.link_busy[c] = true;
                self.active.push((now + d, Undo::Latency(c)));
                note(format!(
                    "latency {host} <-> {to} up to {}ms for {}ms",
                    max.as_millis(),
                    d.as_millis()
                ));
            }
            Fault::Hold if link_free => {
                let d = self.duration(Duration::from_millis(10), lease * 2);
                for s in &stores {
                    sim.hold(host.as_str(), s.as_str());
                }
                self.link_busy[c] = true;
                self.active.push((now + d, Undo::Release(c)));
                note(format!(
                    "hold messages {host} <-> {to} for {}ms",
                    d.as_millis()
                ));
            }
            Fault::Loss if !self.loss_on => {
                let d = self.duration(Duration::from_millis(50), lease * 2);
                let rate = self.rng.random_range(0.02..0.2);
                sim.set_fail_rate(rate);
                self.loss_on = true;
                self.active.push((now + d, Undo::LossOff));
                note(format!(
                    "message loss {:.0}% on every link for {}ms",
                    rate * 100.0,
                    d.as_millis()
                ));
            }
            Fault::ClientCrash if !self.client_down[c] && sim.is_host_running(host.as_str()) => {
                let d = self.duration(Duration::ZERO, lease);
                sim.crash(host.as_str());
                shared.crashed(c);
                self.client_down[c] = true;
                self.active.push((now + d, Undo::RestartClient(c)));
                rec.record_at(now, Actor::Sim, What::Crash(Actor::Client(c as u16)));
            }
            Fault::StoreCrash if !quorum && !self.store_down => {
                let d = self.duration(Duration::from_millis(1), Duration::from_millis(300));
                sim.crash(STORE_HOST);
                self.store_down = true;
                self.active.push((now + d, Undo::RestartStore(0)));
                rec.record_at(now, Actor::Sim, What::Crash(Actor::Store(0)));
            }
            Fault::StoreCrash | Fault::StoreWipe if quorum && self.member_free() => {
                let j = self.rng.random_range(0..stores.len());
                let d = self.duration(Duration::from_millis(1), Duration::from_millis(300));
                sim.crash(stores[j].as_str());
                self.member_faulty = Some(j);
                self.active.push((now + d, Undo::RestartStore(j)));
                rec.record_at(now, Actor::Sim, What::Crash(self.durables[j].id));
                if kind == Fault::StoreWipe {
                    self.durables[j].wipe_locks();
                    self.member_wiped = Some(j);
                    rec.record_at(now, Actor::Sim, What::Wiped(self.durables[j].id));
                }
            }
            Fault::StorePartition if self.member_free() => {
                let j = self.rng.random_range(0..stores.len());
                let mut cut: Vec<usize> = (0..self.clients)
                    .filter(|&i| !self.link_busy[i] && self.rng.random_bool(0.5))
                    .collect();
                if cut.is_empty() && link_free {
                    cut.push(c);
                }
                if cut.is_empty() {
                    return;
                }
                let d = self.duration(Duration::from_millis(20), lease * 2);
                for &i in &cut {
                    sim.partition(client_host(i).as_str(), stores[j].as_str());
                    self.link_busy[i] = true;
                }
                self.member_faulty = Some(j);
                let names: Vec<String> = cut.iter().map(|&i| client_host(i)).collect();
                note(format!(
                    "partition {} <-> {} for {}ms",
                    stores[j],
                    names.join(", "),
                    d.as_millis()
                ));
                self.active.push((
                    now + d,
                    Undo::RepairStore {
                        store: j,
                        clients: cut,
                    },
                ));
            }
            Fault::StoreSlow if self.member_free() => {
                let j = self.rng.random_range(0..stores.len());
                let d = self.duration(Duration::from_millis(50), lease * 2);
                let max = self.duration(Duration::from_millis(40), Duration::from_millis(300));
                for i in 0..self.clients {
                    sim.set_link_max_message_latency(
                        client_host(i).as_str(),
                        stores[j].as_str(),
                        max,
                    );
                }
                self.member_faulty = Some(j);
                self.slow_store = Some(j);
                self.active.push((now + d, Undo::StoreFast(j)));
                note(format!(
                    "{} slow: latency up to {}ms for {}ms",
                    stores[j],
                    max.as_millis(),
                    d.as_millis()
                ));
            }
            _ => {}
        }
    }

    /// The client a fault hits: now and then one that holds a lock (faults
    /// that cut a holder off are the ones takeovers and fencing are for).
    fn pick_client(&mut self, cfg: &SimConfig, shared: &Shared) -> usize {
        let any = self.rng.random_range(0..self.clients);
        if cfg.target_holders <= 0.0 || !self.rng.random_bool(cfg.target_holders.min(1.0)) {
            return any;
        }
        let holders: Vec<usize> = (0..self.clients)
            .filter(|&c| shared.progress(c).holding.is_some())
            .collect();
        if holders.is_empty() {
            return any;
        }
        holders[self.rng.random_range(0..holders.len())]
    }

    fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        let (lo, hi) = (lo.as_millis() as u64, hi.as_millis() as u64);
        Duration::from_millis(self.rng.random_range(lo..=hi.max(lo)))
    }

    fn undo(
        &mut self,
        sim: &mut Sim<'_>,
        undo: Undo,
        cfg: &SimConfig,
        shared: &Shared,
        now: Duration,
        rec: &Recorder,
    ) {
        let heal = |what: String| rec.record_at(now, Actor::Sim, What::Heal(what));
        let stores = self.store_hosts();
        let to = if stores.len() > 1 {
            "the stores"
        } else {
            "store"
        };
        match undo {
            Undo::Repair(c) => {
                for s in &stores {
                    sim.repair(client_host(c).as_str(), s.as_str());
                }
                self.link_busy[c] = false;
                heal(format!("repair {} <-> {to}", client_host(c)));
            }
            Undo::RepairOneWay { client, to_store } => {
                let host = client_host(client);
                for s in &stores {
                    if to_store {
                        sim.repair_oneway(host.as_str(), s.as_str());
                    } else {
                        sim.repair_oneway(s.as_str(), host.as_str());
                    }
                }
                self.link_busy[client] = false;
                heal(format!("repair one-way partition of {host}"));
            }
            Undo::Release(c) => {
                for s in &stores {
                    sim.release(client_host(c).as_str(), s.as_str());
                }
                self.link_busy[c] = false;
                heal(format!("release held messages {} <-> {to}", client_host(c)));
            }
            Undo::Latency(c) => {
                for (j, s) in stores.iter().enumerate() {
                    if self.slow_store != Some(j) {
                        sim.set_link_max_message_latency(
                            client_host(c).as_str(),
                            s.as_str(),
                            cfg.timing.max_latency,
                        );
                    }
                }
                self.link_busy[c] = false;
                heal(format!("latency of {} back to normal", client_host(c)));
            }
            Undo::LossOff => {
                sim.set_fail_rate(0.0);
                // Links that loss broke are mended by their next message; mend
                // the ones no other fault owns now.
                for c in 0..self.clients {
                    if !self.link_busy[c] {
                        for s in &stores {
                            sim.repair(client_host(c).as_str(), s.as_str());
                        }
                    }
                }
                if cfg.faults.has(Fault::ForceUnlock) && cfg.protocol == ProtocolVariant::Statelock
                {
                    for s in &stores {
                        sim.repair(OPERATOR_HOST, s.as_str());
                    }
                }
                self.loss_on = false;
                heal("message loss off".into());
            }
            Undo::RestartClient(c) => {
                sim.bounce(client_host(c).as_str());
                shared.restarted(c);
                self.client_down[c] = false;
                rec.record_at(now, Actor::Sim, What::Restart(Actor::Client(c as u16)));
            }
            Undo::RestartStore(j) => {
                sim.bounce(stores[j].as_str());
                self.store_down = false;
                self.member_faulty = None;
                rec.record_at(now, Actor::Sim, What::Restart(self.durables[j].id));
            }
            Undo::RepairStore { store, clients } => {
                for &c in &clients {
                    sim.repair(client_host(c).as_str(), stores[store].as_str());
                    self.link_busy[c] = false;
                }
                self.member_faulty = None;
                heal(format!("repair {} <-> its clients", stores[store]));
            }
            Undo::StoreFast(j) => {
                let slowed: Vec<usize> = (0..self.clients)
                    .filter(|c| !self.active.iter().any(|(_, u)| *u == Undo::Latency(*c)))
                    .collect();
                for c in slowed {
                    sim.set_link_max_message_latency(
                        client_host(c).as_str(),
                        stores[j].as_str(),
                        cfg.timing.max_latency,
                    );
                }
                self.slow_store = None;
                self.member_faulty = None;
                heal(format!("{} fast again", stores[j]));
            }
        }
    }

    fn heal_all(
        &mut self,
        sim: &mut Sim<'_>,
        cfg: &SimConfig,
        shared: &Shared,
        now: Duration,
        rec: &Recorder,
    ) {
        // Stable order: by undo time, then as started.
        let mut active = std::mem::take(&mut self.active);
        active.sort_by_key(|(at, _)| *at);
        for (_, undo) in active {
            self.undo(sim, undo, cfg, shared, now, rec);
        }
        // Mend any link random loss left broken (no hold is left to lose).
        sim.set_fail_rate(0.0);
        for s in self.store_hosts() {
            for c in 0..self.clients {
                sim.repair(client_host(c).as_str(), s.as_str());
            }
            if cfg.faults.has(Fault::ForceUnlock) && cfg.protocol == ProtocolVariant::Statelock {
                sim.repair(OPERATOR_HOST, s.as_str());
            }
        }
        self.quiet = true;
        shared.set_quiet();
        rec.record_at(now, Actor::Sim, What::Quiet);
    }
}

fn exp_delay(rng: &mut SimRng, mean: Duration) -> Duration {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    let ms = (-u.ln() * mean.as_millis() as f64).round() as u64;
    Duration::from_millis(ms.max(1))
}
