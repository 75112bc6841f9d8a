//! The operator host: while faults last, it looks at random keys and, when a
//! lock is held by a lease whose client crashed, force-unlocks it through the
//! real `LockClient::force_unlock` — conditional on the record version it was
//! shown, so it can never release a lock someone else took meanwhile
//! (`OwnerOnlyRelease`).

use crate::config::SimConfig;
use crate::context::Shared;
use crate::history::{Actor, Recorder, What};
use crate::remote::{lock_store, Rpc};
use crate::rng::{derive, stream};
use crate::wire::OPERATOR_HOST;
use rand::Rng;
use statelock::client::LockClient;
use statelock::clock::SkewedClock;
use statelock::protocol::LockKey;
use std::sync::Arc;
use std::time::Duration;

/// What the operator host needs.
#[derive(Debug)]
pub struct OperatorCtx {
    /// The run's seed.
    pub seed: u64,
    /// The run's configuration.
    pub cfg: Arc<SimConfig>,
    /// The trace.
    pub rec: Recorder,
    /// Shared progress (which leases died).
    pub shared: Arc<Shared>,
}

/// The operator's software.
pub async fn operator_main(ctx: Arc<OperatorCtx>) -> turmoil::Result {
    let rpc = Rpc::new(
        OPERATOR_HOST,
        Actor::Operator,
        ctx.cfg.timing.request_timeout,
        ctx.rec.clone(),
    );
    let client = LockClient::builder(lock_store(&rpc, &ctx.cfg)?)
        .clock(SkewedClock::exact())
        .seed(derive(ctx.seed, "operator-client", 0, 0))
        .protocol(ctx.cfg.protocol_config)
        .build();
    let mut rng = stream(ctx.seed, "operator", 0, 0);
    let keys = ctx.cfg.key_names();
    loop {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..=600))).await;
        if ctx.shared.is_quiet() {
            return Ok(());
        }
        let key = &keys[rng.random_range(0..keys.len())];
        let lock_key = LockKey::new(key.as_str())?;
        let Ok(Some(status)) = client.status(&lock_key).await else {
            continue;
        };
        let record = status.record;
        if record.released || !ctx.shared.is_dead_owner(key, record.owner.0.as_u128()) {
            continue;
        }
        let result = match client.force_unlock(&lock_key, record.rvn, "operator").await {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        ctx.rec.record(
            Actor::Operator,
            What::ForceAttempt {
                key: key.clone(),
                seen: record.rvn.0,
                result,
            },
        );
    }
}
