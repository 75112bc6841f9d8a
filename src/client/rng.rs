//! The client's source of randomness: lease ids, record versions and backoff
//! jitter. Seedable, so that a simulation run is a function of its seed.

use crate::protocol::{LeaseId, RecordVersion};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Mutex;

/// A shared, seedable random source.
#[derive(Debug)]
pub(crate) struct ClientRng(Mutex<StdRng>);

impl ClientRng {
    pub(crate) fn new(seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        ClientRng(Mutex::new(rng))
    }

    fn with<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    pub(crate) fn rvn(&self) -> RecordVersion {
        RecordVersion(self.with(|r| r.random()))
    }

    pub(crate) fn lease_id(&self) -> LeaseId {
        let bytes: [u8; 16] = self.with(|r| r.random());
        LeaseId(uuid::Builder::from_random_bytes(bytes).into_uuid())
    }

    pub(crate) fn jitter(&self) -> f64 {
        self.with(|r| r.random_range(0.0..1.0))
    }
}
