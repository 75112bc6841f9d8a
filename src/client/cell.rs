//! The state a guard shares between its heartbeat task and the application's
//! release/drop: the lease machine plus who has claimed the release. Kept
//! synchronous and tiny so loom can check every interleaving of heartbeat,
//! release and drop (see the loom tests below).

use crate::protocol::{HeartbeatEvent, Lease, LockOp, MonoTime, Outcome, RecordVersion, WallTime};

/// Guard state behind the guard's mutex.
#[derive(Debug)]
pub(crate) struct GuardCell {
    pub(crate) lease: Lease,
    release_claimed: bool,
    lost_signalled: bool,
}

/// What the heartbeat task must do after feeding an answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AfterHeartbeat {
    Continue,
    /// The lease was just lost: signal the application (exactly once).
    SignalLost,
    /// The lease ended (released or already lost): stop.
    Stop,
}

impl GuardCell {
    pub(crate) fn new(lease: Lease) -> Self {
        GuardCell {
            lease,
            release_claimed: false,
            lost_signalled: false,
        }
    }

    /// The heartbeat to send now, unless a release was claimed or none is due.
    pub(crate) fn begin_heartbeat(
        &mut self,
        now: MonoTime,
        new_rvn: RecordVersion,
        wall: WallTime,
    ) -> Option<LockOp> {
        if self.release_claimed {
            return None;
        }
        self.lease.poll_heartbeat(now, new_rvn, wall)
    }

    /// Feeds a heartbeat answer (or a timeout, with `outcome = None`).
    pub(crate) fn finish_heartbeat(
        &mut self,
        now: MonoTime,
        outcome: Option<Outcome>,
    ) -> AfterHeartbeat {
        if let Some(outcome) = outcome {
            if let HeartbeatEvent::Ignored = self.lease.handle_heartbeat(now, outcome) {
                return AfterHeartbeat::Stop;
            }
        } else {
            self.lease.handle_timeout(now);
        }
        self.after()
    }

    fn after(&mut self) -> AfterHeartbeat {
        match self.lease.state() {
            crate::protocol::LeaseState::Held => AfterHeartbeat::Continue,
            crate::protocol::LeaseState::Lost(_) if !self.lost_signalled => {
                self.lost_signalled = true;
                AfterHeartbeat::SignalLost
            }
            _ => AfterHeartbeat::Stop,
        }
    }

    /// Claims the release: only the first caller gets the op to send (or
    /// `None` and `true` if the lease was superseded, nothing to release).
    /// Returns `(op, first_claim)`.
    pub(crate) fn claim_release(
        &mut self,
        new_rvn: RecordVersion,
        wall: WallTime,
    ) -> (Option<LockOp>, bool) {
        if self.release_claimed {
            return (None, false);
        }
        self.release_claimed = true;
        (self.lease.release(new_rvn, wall), true)
    }

    /// True if a release was claimed.
    pub(crate) fn release_claimed(&self) -> bool {
        self.release_claimed
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::protocol::{
        FencingToken, GrantFrom, HolderInfo, LeaseId, LockKey, OpKind, ProtocolConfig,
    };
    use crate::store::memory::MemoryStore;
    use crate::sync::Mutex;
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::sync::Arc;
    use std::time::Duration;

    fn setup() -> (Arc<MemoryStore>, Arc<Mutex<GuardCell>>) {
        let store = Arc::new(MemoryStore::new());
        let key = LockKey::new("k").unwrap();
        let op = LockOp {
            key,
            new_rvn: RecordVersion(1),
            at: WallTime(0),
            kind: OpKind::Acquire {
                from: GrantFrom::Absent {
                    floor: FencingToken(0),
                },
                owner: LeaseId(uuid::Uuid::from_u128(1)),
                lease_ms: 3000,
                holder: HolderInfo::named("me"),
                at_least: FencingToken::NONE,
                dequeue: Default::default(),
            },
        };
        let record = store.apply_now(&op).unwrap();
        let lease = Lease::granted(&record, MonoTime::ZERO, ProtocolConfig::default());
        (store, Arc::new(Mutex::new(GuardCell::new(lease))))
    }

    fn outcome(r: Result<crate::LockRecord, crate::store::StoreError>) -> Outcome {
        match r {
            Ok(rec) => Outcome::Applied(rec),
            Err(crate::store::StoreError::Conflict { current }) => {
                Outcome::Conflict(current.map(|b| *b))
            }
            Err(_) => Outcome::Unknown,
        }
    }

    /// Heartbeat vs release vs drop: exactly one release is sent, the record
    /// ends released, no heartbeat starts after the release was claimed, and
    /// a late heartbeat answer never revives the lease.
    #[test]
    fn heartbeat_release_drop_race() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            let (store, cell) = setup();
            let releases_sent = Arc::new(AtomicUsize::new(0));
            let claims = Arc::new(AtomicUsize::new(0));
            let now = MonoTime::from_duration(Duration::from_millis(1500));

            let hb = {
                let (store, cell) = (store.clone(), cell.clone());
                loom::thread::spawn(move || {
                    let op = cell
                        .lock()
                        .begin_heartbeat(now, RecordVersion(10), WallTime(0));
                    if let Some(op) = op {
                        let out = outcome(store.apply_now(&op));
                        let _ = cell.lock().finish_heartbeat(now, Some(out));
                    }
                })
            };
            let releaser = |rvn: u128| {
                let (store, cell, sent) = (store.clone(), cell.clone(), releases_sent.clone());
                let claims = claims.clone();
                loom::thread::spawn(move || {
                    let (op, _) = cell.lock().claim_release(RecordVersion(rvn), WallTime(0));
                    if op.is_some() {
                        claims.fetch_add(1, Ordering::SeqCst);
                    }
                    let mut next = op;
                    let mut n = 0;
                    while let Some(op) = next.take() {
                        sent.fetch_add(1, Ordering::SeqCst);
                        n += 1;
                        let out = outcome(store.apply_now(&op));
                        let step = cell.lock().lease.handle_release(
                            out,
                            RecordVersion(rvn + 1),
                            WallTime(0),
                        );
                        if let crate::protocol::ReleaseStep::Retry(op) = step {
                            assert!(n < 3, "release retried too often");
                            next = Some(op);
                        }
                    }
                })
            };
            let app = releaser(20);
            let dropper = releaser(30);
            hb.join().unwrap();
            app.join().unwrap();
            dropper.join().unwrap();

            let record = store.get_now(&LockKey::new("k").unwrap()).unwrap();
            assert!(record.released, "the lock must end released: {record:?}");
            assert_eq!(
                claims.load(Ordering::SeqCst),
                1,
                "release and drop must not both send"
            );
            let sent = releases_sent.load(Ordering::SeqCst);
            assert!(
                (1..=2).contains(&sent),
                "one release (plus one retry at most), got {sent}"
            );
            let cell = cell.lock();
            assert!(!cell.lease.is_valid(now));
            assert!(cell.release_claimed());
        });
    }

    /// Two guards' heartbeat tasks never both believe after a takeover race:
    /// the memory store's compare-and-swap admits exactly one acquirer.
    #[test]
    fn memory_store_cas_admits_one() {
        loom::model(|| {
            let store = Arc::new(MemoryStore::new());
            let wins = Arc::new(AtomicUsize::new(0));
            let handles: Vec<_> = (0..2u128)
                .map(|i| {
                    let (store, wins) = (store.clone(), wins.clone());
                    loom::thread::spawn(move || {
                        let op = LockOp {
                            key: LockKey::new("k").unwrap(),
                            new_rvn: RecordVersion(100 + i),
                            at: WallTime(0),
                            kind: OpKind::Acquire {
                                from: GrantFrom::Absent {
                                    floor: FencingToken(0),
                                },
                                owner: LeaseId(uuid::Uuid::from_u128(i + 1)),
                                lease_ms: 1000,
                                holder: HolderInfo::named("t"),
                                at_least: FencingToken::NONE,
                                dequeue: Default::default(),
                            },
                        };
                        if store.apply_now(&op).is_ok() {
                            wins.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            assert_eq!(wins.load(Ordering::SeqCst), 1);
            let rec = store.get_now(&LockKey::new("k").unwrap()).unwrap();
            assert_eq!(rec.token, crate::FencingToken(1));
        });
    }
}
