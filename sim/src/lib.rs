//! Deterministic simulation of the statelock client under faults.
//!
//! One run ([`run::run_seed`]) builds a [turmoil] world from a single seed: a
//! store host serving the reference lock store and a state object backend
//! over simulated TCP, and N client hosts running the production
//! [`statelock::client::LockClient`] through [`remote::RemoteLockStore`] and
//! the production [`statelock::state::FencedStore`] (seal, load, save)
//! through [`remote::RemoteStateBackend`]. Faults (partitions, lost and held
//! messages, crashes, process pauses, skewed and drifting clocks) are injected
//! from the same seed; every step is recorded in a [`history`] trace, and the
//! checkers in [`invariants`] — one per invariant of PROTOCOL.md — judge it.
//! Some ops run a supervised [`command`], stopped on the schedule of
//! `statelock exec`.
//!
//! Everything is a function of the seed: no OS randomness, no wall clock, no
//! hash-map iteration order. A run must be built with `--cfg tokio_unstable`
//! (the workspace's `.cargo/config.toml` sets it): without it tokio seeds its
//! scheduler randomly and a panic in a spawned host task is swallowed, so
//! [`run::run_seed`] refuses to run.
//!
//! This crate must not be used by the library: the `naive` protocol variant
//! lives here and only here.

pub mod command;
pub mod config;
pub mod context;
pub mod faults;
pub mod history;
pub mod invariants;
pub mod naive;
pub mod operator;
pub mod planted;
pub mod remote;
pub mod rng;
pub mod run;
pub mod scenario;
pub mod server;
pub mod sweep;
pub mod wire;
pub mod workload;

pub use config::SimConfig;
pub use invariants::Invariant;
pub use run::{run_seed, RunReport};
pub use scenario::{DriftMode, Fault, FaultSet, ProtocolVariant, StateBug, SupervisorVariant};

/// True when this build can run simulations deterministically (it was built
/// with `--cfg tokio_unstable`).
pub fn deterministic_build() -> bool {
    cfg!(tokio_unstable)
}
