//! # statelock
//!
//! Safe distributed locking of deployment state: leases with heartbeats,
//! takeover that is safe under clock skew, and a monotonic fencing token per key
//! that the state store enforces, so a paused or partitioned old holder can never
//! overwrite state after its lock was lost.
//!
//! ## Guarantees (see `PROTOCOL.md`-level names in `specs/`)
//! - `MutualExclusion`: with monotonic clocks drifting at most ρ (default
//!   1000 ppm), no two clients believe they hold a key at the same instant —
//!   whatever their wall clocks say.
//! - `TokenMonotonic`: every grant of a key gets a larger [`FencingToken`].
//! - `FencingMonotonic` / `NoLostUpdate`: a [`state::StateStore`] accepts a
//!   write only from the newest token, as a compare-and-swap chain.
//! - `OwnerOnlyRelease`: only the holder renews or releases; a force-unlock
//!   succeeds only against the record version the operator saw.
//!
//! ## I/O contract
//! The [`protocol`] core is pure; [`client::LockClient`] drives it with a
//! [`clock::Clock`] and a [`store::LockStore`]. Each store operation is one
//! conditional write.
//!
//! ## Example
//! ```
//! use statelock::{client::{LockClient, AcquireOptions}, store::memory::MemoryStore, LockKey};
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = LockClient::new(MemoryStore::new());
//! let key = LockKey::new("stack:user-platform:env:production")?;
//! let guard = client.acquire(&key, AcquireOptions::default()).await?;
//! println!("holding {} with fencing token {}", key, guard.token());
//! guard.release().await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(not(loom))]
pub mod cli;
pub mod client;
pub mod clock;
pub mod observe;
pub mod protocol;
pub mod state;
pub mod store;
pub(crate) mod sync;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use protocol::{FencingToken, HolderInfo, LockKey, LockRecord};
