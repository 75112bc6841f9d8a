//! Observability: metric names (the `metrics` facade) and audit events (the
//! `tracing` facade, target `statelock::audit`). Nothing here decides anything.

/// Counter: grants, labelled `how` = `acquire` | `takeover`.
pub const LOCK_ACQUIRED: &str = "statelock_lock_acquired_total";
/// Histogram: seconds from the first attempt to the grant.
pub const LOCK_ACQUIRE_SECONDS: &str = "statelock_lock_acquire_seconds";
/// Counter: acquisitions that gave up, labelled `reason`.
pub const LOCK_ACQUIRE_FAILED: &str = "statelock_lock_acquire_failed_total";
/// Counter: heartbeats, labelled `result` = `ok` | `retry` | `lost`.
pub const LOCK_HEARTBEAT: &str = "statelock_lock_heartbeat_total";
/// Counter: leases lost, labelled `reason` = `expired` | `superseded`.
pub const LOCK_LOST: &str = "statelock_lock_lost_total";
/// Counter: releases.
pub const LOCK_RELEASED: &str = "statelock_lock_released_total";
/// Histogram: seconds a lock was held.
pub const LOCK_HELD_SECONDS: &str = "statelock_lock_held_seconds";
/// Counter: force-unlocks.
pub const LOCK_FORCED: &str = "statelock_lock_force_unlocked_total";
/// Counter: stale locks seen by `locks()`.
pub const LOCK_STALE_SEEN: &str = "statelock_lock_stale_detected_total";

/// The `tracing` target of audit events (`lock.acquired`, `lock.released`,
/// `lock.lost`, `lock.force_unlocked`).
pub const AUDIT_TARGET: &str = "statelock::audit";
