//! Property test: the real `LockClient` over a memory store, driven by random
//! interleavings of acquire (immediate and waiting), release, force-unlock,
//! process pauses, fenced state writes (checked and unchecked), clock drift
//! changes within ρ and clock advances — against a small reference model.
//!
//! After every step the PROTOCOL.md invariants are checked by name
//! (`MutualExclusion`, `TokenMonotonic`, `FencingMonotonic`, `NoLostUpdate`,
//! `OwnerOnlyRelease`) with `statelock::testkit::invariants`, and the model's
//! predictions (who gets the lock, which token) are compared with the client.

use async_trait::async_trait;
use proptest::prelude::*;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use statelock::client::{AcquireOptions, LockClient, LockError, LockGuard};
use statelock::clock::SkewedClock;
use statelock::protocol::{Backoff, LockOp, LockRecord, ProtocolConfig, RecordVersion, WallTime};
use statelock::state::register::FencedRegister;
use statelock::state::register_memory::MemoryRegister;
use statelock::state::StateError;
use statelock::store::memory::MemoryStore;
use statelock::store::{Listing, LockStore, StoreError};
use statelock::testkit::invariants::{
    check_fencing_monotonic, check_mutual_exclusion, check_no_lost_update,
    check_owner_only_release, check_token_monotonic, AcceptedWrite, BeliefInterval, TruePoint,
};
use statelock::{FencingToken, HolderInfo, LockKey};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CLIENTS: usize = 3;
const LEASE: Duration = Duration::from_millis(900);
const RHO_PPM: i64 = 1000;

fn key() -> LockKey {
    LockKey::new("stack:prop").unwrap()
}

// ---------------------------------------------------------------- the model

#[derive(Clone, Debug, PartialEq)]
enum Holding {
    Idle,
    Holding { token: u64, frozen: bool },
}

#[derive(Clone, Debug)]
struct Model {
    /// Who the lock record names as holder (None: free).
    record: Option<usize>,
    clients: Vec<Holding>,
    next_token: u64,
}

#[derive(Clone, Debug)]
enum Step {
    /// Try once (wait 0).
    Acquire(usize),
    /// Wait up to 2.5 leases.
    AcquireWaiting(usize),
    Release(usize),
    /// Stop heartbeats, as if the process were paused.
    Pause(usize),
    ForceUnlock,
    /// Write state only if the guard is valid.
    CheckedWrite(usize),
    /// Write state with the token without checking (a paused process that
    /// checked before its pause).
    UncheckedWrite(usize),
    SetDrift(usize, i64),
    Advance(u64),
}

struct ModelMachine;

impl ReferenceStateMachine for ModelMachine {
    type State = Model;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model {
            record: None,
            clients: vec![Holding::Idle; CLIENTS],
            next_token: 1,
        })
        .boxed()
    }

    fn transitions(_state: &Model) -> BoxedStrategy<Step> {
        let c = 0..CLIENTS;
        prop_oneof![
            3 => c.clone().prop_map(Step::Acquire),
            2 => c.clone().prop_map(Step::AcquireWaiting),
            2 => c.clone().prop_map(Step::Release),
            1 => c.clone().prop_map(Step::Pause),
            1 => Just(Step::ForceUnlock),
            2 => c.clone().prop_map(Step::CheckedWrite),
            1 => c.clone().prop_map(Step::UncheckedWrite),
            1 => (c, -RHO_PPM..=RHO_PPM).prop_map(|(c, p)| Step::SetDrift(c, p)),
            3 => (1u64..2000).prop_map(Step::Advance),
        ]
        .boxed()
    }

    fn preconditions(state: &Model, step: &Step) -> bool {
        match step {
            Step::Acquire(c) | Step::AcquireWaiting(c) => state.clients[*c] == Holding::Idle,
            Step::Release(c) | Step::CheckedWrite(c) | Step::UncheckedWrite(c) => {
                state.clients[*c] != Holding::Idle
            }
            Step::Pause(c) => matches!(state.clients[*c], Holding::Holding { frozen: false, .. }),
            Step::ForceUnlock => state.record.is_some(),
            _ => true,
        }
    }

    fn apply(mut state: Model, step: &Step) -> Model {
        match *step {
            Step::Acquire(c) => {
                if state.record.is_none() {
                    state.record = Some(c);
                    state.clients[c] = Holding::Holding {
                        token: state.next_token,
                        frozen: false,
                    };
                    state.next_token += 1;
                }
            }
            Step::AcquireWaiting(c) => {
                let holder_alive = match state.record {
                    Some(h) => matches!(state.clients[h], Holding::Holding { frozen: false, .. }),
                    None => false,
                };
                if !holder_alive {
                    state.record = Some(c);
                    state.clients[c] = Holding::Holding {
                        token: state.next_token,
                        frozen: false,
                    };
                    state.next_token += 1;
                }
            }
            Step::Release(c) => {
                if state.record == Some(c) {
                    state.record = None;
                }
                state.clients[c] = Holding::Idle;
            }
            Step::Pause(c) => {
                if let Holding::Holding { frozen, .. } = &mut state.clients[c] {
                    *frozen = true;
                }
            }
            Step::ForceUnlock => {
                // The forced holder keeps its (now useless) guard until it releases.
                if let Some(h) = state.record.take() {
                    if let Holding::Holding { frozen, .. } = &mut state.clients[h] {
                        // It will notice at its next heartbeat; treat it as not alive.
                        *frozen = true;
                    }
                }
            }
            Step::CheckedWrite(_)
            | Step::UncheckedWrite(_)
            | Step::SetDrift(..)
            | Step::Advance(_) => {}
        }
        state
    }
}

// ----------------------------------------------------- the system under test

/// A memory store that logs every applied op with the record it replaced.
#[derive(Debug, Default)]
struct LoggedStore {
    inner: MemoryStore,
    log: Mutex<Vec<(Option<LockRecord>, LockOp)>>,
}

#[async_trait]
impl LockStore for LoggedStore {
    async fn apply(&self, op: &LockOp) -> Result<LockRecord, StoreError> {
        let before = self.inner.get_now(&op.key);
        let result = self.inner.apply_now(op);
        if result.is_ok() {
            self.log.lock().unwrap().push((before, op.clone()));
        }
        result
    }
    async fn get(&self, key: &LockKey) -> Result<Option<LockRecord>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self) -> Result<Listing, StoreError> {
        self.inner.list().await
    }
    async fn token_floor(&self) -> Result<FencingToken, StoreError> {
        self.inner.token_floor().await
    }
    async fn purge(
        &self,
        key: &LockKey,
        observed: RecordVersion,
    ) -> Result<LockRecord, StoreError> {
        self.inner.purge(key, observed).await
    }
    fn describe(&self) -> String {
        "logged-mem://".into()
    }
    fn queues(&self) -> bool {
        self.inner.queues()
    }
}

struct Sut {
    origin: tokio::time::Instant,
    rt: tokio::runtime::Runtime,
    store: Arc<LoggedStore>,
    state: Arc<MemoryRegister>,
    clocks: Vec<SkewedClock>,
    clients: Vec<LockClient>,
    guards: Vec<Option<LockGuard>>,
    beliefs: Vec<BeliefInterval>,
    /// Index into `beliefs` of each client's open interval.
    open: Vec<Option<usize>>,
    grants: Vec<(LockKey, FencingToken)>,
    accepted: Vec<AcceptedWrite>,
    /// Leases the operator forced: outside MutualExclusion from then on.
    forced: Vec<bool>,
    seq: u64,
}

impl Sut {
    /// The current instant in true (virtual) time, ordered after every
    /// point taken before.
    fn now(&mut self) -> TruePoint {
        let _g = self.rt.enter();
        let at = tokio::time::Instant::now().duration_since(self.origin());
        self.seq += 1;
        TruePoint { at, seq: self.seq }
    }

    fn origin(&self) -> tokio::time::Instant {
        self.origin
    }

    /// Samples every client's belief at the current instant.
    fn sample(&mut self) {
        let now = self.now();
        for c in 0..CLIENTS {
            let valid = {
                let _g = self.rt.enter();
                !self.forced[c] && self.guards[c].as_ref().is_some_and(|g| g.is_valid())
            };
            match (valid, self.open[c]) {
                (true, Some(i)) => self.beliefs[i].end = now,
                (true, None) => {
                    let token = self.guards[c]
                        .as_ref()
                        .map(|g| g.token())
                        .unwrap_or_default();
                    self.beliefs.push(BeliefInterval {
                        client: format!("c{c}"),
                        key: key(),
                        start: now,
                        end: now,
                        token,
                    });
                    self.open[c] = Some(self.beliefs.len() - 1);
                }
                (false, _) => self.open[c] = None,
            }
        }
    }

    /// Advances virtual time in small steps, sampling beliefs.
    fn advance(&mut self, total: Duration) {
        let step = Duration::from_millis(50);
        let mut left = total;
        while !left.is_zero() {
            let d = left.min(step);
            self.rt.block_on(async move { tokio::time::sleep(d).await });
            left -= d;
            self.sample();
        }
    }

    fn opts(&self, c: usize, wait: Duration) -> AcquireOptions {
        AcquireOptions {
            lease: LEASE,
            wait: Some(wait),
            backoff: Backoff {
                base: Duration::from_millis(10),
                cap: Duration::from_millis(100),
                poll: Duration::from_millis(20),
            },
            holder: HolderInfo::named(format!("c{c}")),
            ..AcquireOptions::default()
        }
    }

    fn write(&mut self, c: usize, checked: bool) -> Option<Result<(), StateError>> {
        let guard = self.guards[c].as_ref()?;
        if checked && guard.check().is_err() {
            return None;
        }
        let token = guard.token();
        let state = self.state.clone();
        let result = self.rt.block_on(async {
            let current = state.load(&key()).await?;
            let expected = current.map(|s| s.version);
            let body = format!("c{c} token {token}");
            let written = state
                .save(&key(), token, expected.as_ref(), body.as_bytes())
                .await?;
            Ok::<_, StateError>((expected, written))
        });
        Some(result.map(|(expected, written)| {
            self.accepted.push(AcceptedWrite {
                key: key(),
                token,
                expected,
                written,
            });
        }))
    }
}

struct ClientUnderTest;

impl StateMachineTest for ClientUnderTest {
    type SystemUnderTest = Sut;
    type Reference = ModelMachine;

    fn init_test(_model: &Model) -> Sut {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let _g = rt.enter();
        let origin = tokio::time::Instant::now();
        let store = Arc::new(LoggedStore::default());
        let clocks: Vec<SkewedClock> = (0..CLIENTS)
            .map(|c| {
                SkewedClock::new(
                    Duration::from_secs(1000 * c as u64),
                    1.0,
                    WallTime(1_700_000_000_000),
                )
            })
            .collect();
        let clients = clocks
            .iter()
            .enumerate()
            .map(|(c, clock)| {
                LockClient::builder(store.clone() as Arc<dyn LockStore>)
                    .clock(clock.clone())
                    .protocol(ProtocolConfig {
                        drift_ppm: RHO_PPM as u32,
                        margin: Duration::from_millis(50),
                    })
                    .seed(c as u64)
                    .build()
            })
            .collect();
        drop(_g);
        Sut {
            origin,
            rt,
            store,
            state: Arc::new(MemoryRegister::new()),
            clocks,
            clients,
            guards: (0..CLIENTS).map(|_| None).collect(),
            beliefs: Vec::new(),
            open: vec![None; CLIENTS],
            grants: Vec::new(),
            accepted: Vec::new(),
            forced: vec![false; CLIENTS],
            seq: 0,
        }
    }

    fn apply(mut sut: Sut, model: &Model, step: Step) -> Sut {
        match step {
            Step::Acquire(c) | Step::AcquireWaiting(c) => {
                let wait = if matches!(step, Step::Acquire(_)) {
                    Duration::ZERO
                } else {
                    LEASE * 5 / 2
                };
                let opts = sut.opts(c, wait);
                let client = sut.clients[c].clone();
                // Run the acquire while sampling beliefs of the others.
                let task = {
                    let _g = sut.rt.enter();
                    tokio::spawn(async move { client.acquire(&key(), opts).await })
                };
                while !task.is_finished() {
                    sut.advance(Duration::from_millis(10));
                }
                let result = sut.rt.block_on(task).unwrap();
                match (&model.clients[c], result) {
                    (Holding::Holding { token, .. }, Ok(guard)) => {
                        assert_eq!(
                            guard.token(),
                            FencingToken(*token),
                            "model predicts the token"
                        );
                        sut.grants.push((key(), guard.token()));
                        sut.guards[c] = Some(guard);
                        sut.forced[c] = false;
                    }
                    (Holding::Idle, Err(LockError::Held { .. } | LockError::Timeout { .. })) => {}
                    (want, got) => panic!("client c{c}: model says {want:?}, client says {got:?}"),
                }
            }
            Step::Release(c) => {
                if let Some(g) = sut.guards[c].take() {
                    sut.rt.block_on(g.release()).unwrap();
                }
                let record = sut.store.inner.get_now(&key());
                assert_eq!(
                    record.as_ref().is_some_and(|r| r.is_held()),
                    model.record.is_some(),
                    "record held? model {:?}, store {record:?}",
                    model.record
                );
            }
            Step::Pause(c) => {
                if let Some(g) = &sut.guards[c] {
                    g.freeze_heartbeats();
                }
            }
            Step::ForceUnlock => {
                let admin = sut.clients[0].clone();
                let forced = sut.rt.block_on(async {
                    let seen = admin.status(&key()).await.unwrap().unwrap();
                    admin
                        .force_unlock(&key(), seen.record.rvn, "prop")
                        .await
                        .unwrap()
                });
                for c in 0..CLIENTS {
                    if sut.guards[c]
                        .as_ref()
                        .is_some_and(|g| g.lease_id() == forced.owner)
                    {
                        sut.forced[c] = true;
                    }
                }
            }
            Step::CheckedWrite(c) => {
                let forced = sut.forced[c];
                match sut.write(c, true) {
                    // A valid holder is the newest grant: its write must land
                    // — unless an operator forced its lock (it learns that at
                    // its next heartbeat); then fencing must stop it.
                    Some(Err(StateError::Stale { .. })) if forced => {}
                    Some(result) => result.unwrap(),
                    None => {}
                }
            }
            Step::UncheckedWrite(c) => {
                let newest = sut.grants.last().map(|(_, t)| *t);
                let token = sut.guards[c].as_ref().map(|g| g.token());
                if let Some(result) = sut.write(c, false) {
                    match result {
                        Ok(()) => {}
                        Err(StateError::Stale { .. }) => {
                            assert!(token < newest, "only an older token may be fenced off")
                        }
                        Err(e) => panic!("unexpected state error {e}"),
                    }
                }
            }
            Step::SetDrift(c, ppm) => {
                let _g = sut.rt.enter();
                sut.clocks[c].set_rate(1.0 + ppm as f64 / 1e6)
            }
            Step::Advance(ms) => sut.advance(Duration::from_millis(ms)),
        }
        sut.sample();
        sut
    }

    fn check_invariants(sut: &Sut, _model: &Model) {
        let checks = [
            check_mutual_exclusion(&sut.beliefs),
            check_token_monotonic(&sut.grants),
            check_fencing_monotonic(&sut.accepted),
            check_no_lost_update(&sut.accepted),
            check_owner_only_release(&sut.store.log.lock().unwrap()),
        ];
        for check in checks {
            if let Err(v) = check {
                panic!("{v}");
            }
        }
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        max_shrink_iters: 2000,
        .. ProptestConfig::default()
    })]

    #[test]
    fn client_satisfies_protocol_invariants(sequential 1..40 => ClientUnderTest);
}
