----------------------------- MODULE StateLock -----------------------------
(***************************************************************************)
(* The statelock lock protocol (design/PROTOCOL.md) for one lock key.      *)
(*                                                                         *)
(*   - The lock store holds one lock record (owner, token, rvn, released)  *)
(*     and applies linearizable conditional writes: acquire, takeover,     *)
(*     heartbeat, release, force-unlock.                                   *)
(*   - With MaxQueue > 0 the record also holds the fair hand-off queue: a  *)
(*     sequence of waiter ids in arrival order.  Enqueue and Leave write   *)
(*     it without changing the rvn; an acquire of a released record needs  *)
(*     an empty queue or to be its head; a waiter that has seen a released *)
(*     record reserved for the same head for one lease (SkipWait) on its   *)
(*     own clock may skip that head.                                       *)
(*   - The state store holds one state register (version, fence).  A      *)
(*     holder seals it right after its grant (fence := max(fence, token), *)
(*     a message of its own that may be delayed or lost) and writes only  *)
(*     once it has read its own seal; a write lands only if its token is  *)
(*     at least the fence and its If-Match is the current version.        *)
(*   - Clients acquire, wait, take over, heartbeat, release, write state,  *)
(*     pause (they simply take no steps) and crash.                        *)
(*   - An operator may force-unlock a lock whose holder has crashed.       *)
(*   - Requests and answers may be delayed, reordered and lost.            *)
(*   - Real time advances in ticks (Tick).  Each client has a monotonic    *)
(*     clock whose rate against real time stays within [MinRate, MaxRate]  *)
(*     clock units per tick, and a wall clock with an arbitrary, fixed     *)
(*     offset that only the naive variant reads.                           *)
(*                                                                         *)
(* Variants (constant Variant):                                            *)
(*   "statelock"  the protocol; clock rates within rho;                    *)
(*   "naive"      the seed design: a waiter takes over when "expiresAt <   *)
(*                now" by its own wall clock (expiresAt = the writer's     *)
(*                wall clock + lease), and state writes are unconditional; *)
(*   "drift"      the protocol, with clock rates outside rho;              *)
(*   "barge"      a planted bug: the acquire of a released record ignores  *)
(*                the queue (FifoGrant must fail).                         *)
(*                                                                         *)
(* Three representation choices keep the state space small; each is exact *)
(* or errs on the side of more behaviours (see README.md):                *)
(*                                                                         *)
(* Record versions.  An rvn is a fresh random value on every write, and    *)
(* the protocol only ever asks "is the record's rvn still the one I        *)
(* know?".  That holds exactly when no write happened since the value was  *)
(* read.  So the model keeps no rvn values: everything that remembers an   *)
(* rvn (a waiter's observation, a holder's my_rvn, the condition of a      *)
(* request on its way, an answer's record) carries a flag "still current", *)
(* and every write of the record clears all of them.                       *)
(*                                                                         *)
(* Clocks.  The protocol only compares the difference of two readings of   *)
(* one client's monotonic clock with a constant: "now - t_send >=          *)
(* validity" (holder), "now - t_obs >= wait" (waiter).  The model keeps    *)
(* for each such difference the number n of real ticks since the recorded  *)
(* instant.  Over n ticks a clock whose rate stays within [MinRate,        *)
(* MaxRate] advances by some amount in [n*MinRate, n*MaxRate], whatever    *)
(* it did in between; so "elapsed >= X" may be true once n*MaxRate >= X    *)
(* and must be true once n*MinRate >= X.  At each Tick the model lets the  *)
(* clock say "elapsed" anywhere in that window, independently for each     *)
(* timer (more behaviours than one clock driving them all, never fewer).   *)
(* A count stops where the answer is certain, so the state space is finite *)
(* without bounding time.                                                  *)
(*                                                                         *)
(* t_send.  The holder counts its lease from t_send, noted before sending. *)
(* The model counts it from the moment the store applied the write, which  *)
(* is later: every belief of the protocol lies inside a belief of the      *)
(* model, so safety shown here holds for the protocol.  (It is also the    *)
(* latest point that is still safe: a waiter may read the new rvn right   *)
(* after the store applied it.)                                            *)
(***************************************************************************)
EXTENDS Integers, Sequences, FiniteSets

CONSTANTS
    Clients,         \* the client processes (model values)
    NoOne,           \* owner of an absent record (model value)
    Variant,         \* "statelock" | "naive" | "drift" | "barge"
    UnitsPerTick,    \* clock units per tick of real time at rate 1
    MinRate,         \* slowest a monotonic clock runs, clock units per tick
    MaxRate,         \* fastest a monotonic clock runs, clock units per tick
    RhoNum, RhoDen,  \* rho = RhoNum / RhoDen, the drift bound the protocol assumes
    Lease,           \* lease_ms, in clock units
    Margin,          \* margin, in clock units
    WallOffsets,     \* the wall clock offsets a client may have (naive variant)
    MaxGrants,       \* bound on grants (keeps tokens finite)
    MaxStateWrites,  \* bound on accepted state writes (keeps versions finite)
    MaxForces,       \* force-unlocks the operator may issue
    MaxInFlight,     \* bound on lock requests on their way at once
    TrackTokens,     \* FALSE: no tokens, grant history or state register
    OneShot,         \* TRUE: a client wants the lock until it has held it once
    FaultsStop,      \* TRUE: faults may stop for good (the liveness model)
    LoseMessages,    \* TRUE: the loss steps are part of the model
    MaxQueue,        \* longest waiter queue of the record (0: no queue)
    LeaveRule,       \* "answered" | "atOnce": when a waiter that gives up
                     \* sends Leave (see Quit)
    SkipRule,        \* "entry" | "client": what a skipping waiter times (see
                     \* StoreQueue)
    FaultFree,       \* TRUE: no faults from the first state, and clients
                     \*       act within every tick (no pauses)
    CrashWaiters,    \* TRUE: waiters may crash (even when faults are off)
    LiveBound,       \* ticks within which every live client acquires
                     \* (AcquiresInTime; 0: not checked)
    SkipBound        \* ticks within which a released record reserved for a
                     \* crashed head is granted (SkipInTime; 0: not checked)

ASSUME Variant \in {"statelock", "naive", "drift", "barge"}
ASSUME MaxQueue \in Nat /\ LiveBound \in Nat /\ SkipBound \in Nat
ASSUME LeaveRule \in {"answered", "atOnce"}
ASSUME SkipRule \in {"entry", "client"}
ASSUME Variant = "naive" => MaxQueue = 0
ASSUME RhoDen > 0 /\ RhoNum \in 0..(RhoDen - 1)
ASSUME (Lease * RhoNum) % RhoDen = 0
ASSUME 0 < MinRate /\ MinRate <= MaxRate

(* The rate bound: within rho of real time, except in the "drift"         *)
(* variant, whose point is a clock outside the bound.                     *)
RatesWithinRho ==
    /\ MinRate * RhoDen >= UnitsPerTick * (RhoDen - RhoNum)
    /\ MaxRate * RhoDen <= UnitsPerTick * (RhoDen + RhoNum)
ASSUME (Variant # "drift") = RatesWithinRho

(* The holder's lease is valid until t_send + lease*(1-rho) - margin; the *)
(* waiter may take over once the same rvn was seen for lease*(1+rho) +    *)
(* margin; the holder heartbeats every lease/3.  All on the client's own  *)
(* monotonic clock, in clock units.                                        *)
LeaseValidity  == (Lease * (RhoDen - RhoNum)) \div RhoDen - Margin
TakeoverWait   == (Lease * (RhoDen + RhoNum)) \div RhoDen + Margin
HeartbeatEvery == Lease \div 3
ASSUME LeaseValidity > 0

(* A waiter may skip the head a released record is reserved for once it   *)
(* has seen the same released version with the same head for one lease on *)
(* its own clock.                                                          *)
SkipWait == Lease

(* After n ticks a clock may show X elapsed if n * MaxRate >= X, and      *)
(* surely does once n >= Cap(X).                                          *)
Cap(X) == (X + MinRate - 1) \div MinRate
MayShow(n, X) == n * MaxRate >= X

HolderCap == Cap(LeaseValidity)   \* "my lease is over"
WaiterCap == Cap(TakeoverWait)    \* "I may take over"
SkipCap   == Cap(SkipWait)        \* "I may skip the head"

(* The values a timer may take at the next tick: one more, or straight   *)
(* to the cap if the clock may already show the time elapsed; only the   *)
(* cap once it must.  (A sequence, to make the choice cheap for TLC.)     *)
Advance(n, X) ==
    IF n + 1 >= Cap(X) THEN <<Cap(X)>>
    ELSE IF MayShow(n + 1, X) THEN <<n + 1, Cap(X)>>
    ELSE <<n + 1>>

Fenced == Variant # "naive"   \* the state register is a fenced CAS chain

Max(a, b) == IF a > b THEN a ELSE b
Min(a, b) == IF a < b THEN a ELSE b

(* Naive variant: the record's expiresAt is kept relative to real time,   *)
(* in clock units; below ExpFloor "expiresAt < :now" holds for every      *)
(* client's wall clock, so the value stops there.                          *)
ExpFloor == CHOOSE f \in {o - 1 : o \in WallOffsets} :
                \A o \in WallOffsets : f < o

-----------------------------------------------------------------------------
VARIABLES
    rec,      \* the lock record: [owner, token, released, exp, q]
    reg,      \* the state register: [ver, fence]
    cl,       \* each client's local state (see Idle)
    lnet,     \* heartbeat, release, force-unlock, Enqueue and Leave requests
              \* on their way
    rnet,     \* answers on their way
    snet,     \* state writes on their way
    forces,   \* force-unlocks issued
    faults,   \* faults may (still) happen
    wallOff,  \* each client's wall clock offset (naive variant)
    grants,   \* history: the token of every grant, in order
    swrites,  \* history: every accepted state write: [tok, pre, post, sealed]
    elapsed   \* ticks, for the time bounds: [all: since the first state, up
              \* to LiveBound; dead: since the record has been released and
              \* reserved for a crashed head while some live client wants
              \* it, up to SkipBound + 1]

vars == <<rec, reg, cl, lnet, rnet, snet, forces, faults, wallOff, grants,
          swrites, elapsed>>

(* A client's local state.                                                *)
(*   phase   idle: wants the lock; wait: saw it held, or released and     *)
(*           reserved for another head (obsT runs); acq: its acquire      *)
(*           landed, the answer is on its way; hold: holder; done: wants  *)
(*           no more (OneShot, or gave up); crashed: takes no more steps; *)
(*           away: gave up waiting, may want the lock again later         *)
(*   obsT    waiter: ticks since t_obs (its observed rvn is current while *)
(*           phase = "wait"; any write sends it back to "idle")           *)
(*   obsH    waiter: NoOne while it times a held version (takeover); the  *)
(*           head h while it times a released version reserved for h      *)
(*           (skip)                                                       *)
(*   enqOut  waiter: its Enqueue is on its way, answer not yet back (only *)
(*           without faults, see SendAcquire)                             *)
(*   tok     holder: its fencing token                                    *)
(*   myCur   holder: my_rvn (its last confirmed write) is still current   *)
(*   leaseT  holder: ticks since its last confirmed write                 *)
(*   hbOut   holder: a heartbeat is out, answer not yet back              *)
(*   backoff it sent a lock request (or read) in this tick (once faults  *)
(*           stopped)                                                     *)
Idle == [phase |-> "idle", obsT |-> 0, obsH |-> NoOne, enqOut |-> FALSE,
         tok |-> 0, myCur |-> FALSE, leaseT |-> 0, hbOut |-> FALSE,
         backoff |-> FALSE]

InitVersion == 0

(* A client believes it holds the lock from the moment it receives its    *)
(* grant until its own clock says the lease is over, or it releases, or   *)
(* learns that the lease is lost.                                         *)
Believes(c) == cl[c].phase = "hold" /\ cl[c].leaseT < HolderCap

-----------------------------------------------------------------------------
Init ==
    /\ rec = [owner |-> NoOne, token |-> 0, released |-> TRUE, exp |-> ExpFloor,
              q |-> <<>>]
    /\ reg = [ver |-> InitVersion, fence |-> 0]
    /\ cl = [c \in Clients |-> Idle]
    /\ lnet = {}
    /\ rnet = {}
    /\ snet = {}
    /\ forces = 0
    /\ faults = ~FaultFree
    /\ wallOff \in IF Variant = "naive" THEN [Clients -> WallOffsets]
                                        ELSE {[c \in Clients |-> 0]}
    /\ grants = <<>>
    /\ swrites = <<>>
    /\ elapsed = [all |-> 0, dead |-> 0]

-----------------------------------------------------------------------------
(* Every write of the lock record gives it a new rvn: whatever remembered  *)
(* the old one is no longer current.                                       *)
Outdated(s) ==
    IF s.phase = "wait"
    THEN [s EXCEPT !.phase = "idle", !.obsT = 0, !.obsH = NoOne,
                   !.myCur = FALSE]
    ELSE [s EXCEPT !.myCur = FALSE]
OutdatedClients == [c \in Clients |-> Outdated(cl[c])]
(* An answer from the store, to a grant or a heartbeat.  token: the      *)
(* lease's token; cur: the record it reports is still the current one;    *)
(* age: ticks since the store applied the write, on the receiver's clock. *)
Answer(to, kind, ok, token) ==
    [to |-> to, kind |-> kind, ok |-> ok, token |-> token, cur |-> TRUE,
     age |-> 0]

(* Does a client in local state s still wait for answer a?  (Answers     *)
(* nobody waits for are discarded on arrival; the model drops them at     *)
(* once.)                                                                  *)
Awaits(s, a) ==
    IF a.kind = "grant" THEN s.phase = "acq"
    ELSE s.phase = "hold" /\ s.hbOut /\ s.tok = a.token

(* A request whose condition can no longer hold is dropped at once unless *)
(* its sender waits for the answer (a heartbeat of the current lease): it *)
(* would fail without effect whenever it arrived.  Queue requests name no *)
(* version: they stay.                                                     *)
QueueOps(S) == {m \in S : m.op \in {"enq", "leave"}}
OutdatedRequests(S, next) ==
    {[m EXCEPT !.cur = FALSE] :
        m \in {x \in S : x.op = "hb" /\ Awaits(next[x.from],
                                                Answer(x.from, "hb", TRUE, x.tok))}}
    \cup QueueOps(S)
OutdatedAnswers == {[a EXCEPT !.cur = FALSE] : a \in rnet}

DropAnswersTo(c) == rnet' = {a \in rnet : a.to # c}

(* The client has left the holder role (lease over or lost, released).   *)
(* A state write already on its way may still arrive.                    *)
AfterHold(s) == [Idle EXCEPT !.phase = IF OneShot THEN "done" ELSE "idle",
                             !.backoff = s.backoff]

(* Once faults have stopped, a client sends at most one lock request per  *)
(* tick (its backoff); before that, any number.                           *)
MaySend(c) == faults \/ ~cl[c].backoff

(* At most MaxInFlight lock requests are on their way at once. *)
NetworkHasRoom == Cardinality(lnet) < MaxInFlight

-----------------------------------------------------------------------------
(* Acquire, take over and skip.                                            *)
(*                                                                         *)
(* One conditional write: record absent or released (and, with the queue, *)
(* its queue empty or headed by the acquirer), or (takeover) the rvn the  *)
(* waiter observed is still current and it has seen it for TakeoverWait  *)
(* on its own clock, or (skip) the released rvn it observed is still      *)
(* current and has been reserved for the same head h for SkipWait on its  *)
(* own clock; naive: "expiresAt < :now" by the sender's wall clock.  The  *)
(* request reaches the store in the step that sends it and only the       *)
(* answer travels: with t_send counted from the store's write, nothing in *)
(* an acquire request depends on when it was sent, so a request that      *)
(* travelled is the same as one sent later by a client that paused        *)
(* meanwhile, and one that lands after its sender gave up is one sent just *)
(* before giving up.  On a failure the store returns the record (ALL_OLD) *)
(* and the waiter records (rvn, t_obs), keeping t_obs if it already knew  *)
(* that rvn (and, for a released rvn, the same head); the model lets it    *)
(* see the record the moment the store answers (a later arrival would     *)
(* only make t_obs later, the waiter more cautious).  (The built client   *)
(* reads first and writes only when the write can succeed; a read that    *)
(* shows it cannot is the failure here.)                                   *)
(*                                                                         *)
(* The queue.  A waiter that reads the record held, or released and        *)
(* reserved for another head, and is not in the queue (which is not full) *)
(* sends Enqueue, a request that travels (StoreQueue).  It waits for the  *)
(* answer before it reads again (enqOut).  While faults last it may stop  *)
(* waiting for that answer at any moment (lost or late), so the model has *)
(* it stop at once: it may go on, or pause, which is waiting.  A grant      *)
(* removes the grantee from the queue, a skip also the skipped head.      *)
(* Queue writes keep the rvn.                                               *)
InQueue(c, q) == \E i \in DOMAIN q : q[i] = c
Without(q, S) == SelectSeq(q, LAMBDA x : x \notin S)
HeadIs(h) == rec.q # <<>> /\ Head(rec.q) = h

(* The head a released record is reserved for (NoOne: none, or held). *)
ReservedFor == IF rec.released /\ rec.q # <<>> THEN Head(rec.q) ELSE NoOne

FreeFor(c) ==
    /\ rec.released
    /\ rec.q = <<>> \/ Head(rec.q) = c \/ Variant = "barge"
TakeoverDue(c) ==
    /\ Variant # "naive"
    /\ cl[c].phase = "wait" /\ cl[c].obsH = NoOne /\ cl[c].obsT = WaiterCap
SkipDue(c) ==
    /\ cl[c].phase = "wait" /\ cl[c].obsH # NoOne /\ cl[c].obsT = SkipCap
    /\ HeadIs(cl[c].obsH)

AcquireCond(c) ==
    \/ FreeFor(c)
    \/ TakeoverDue(c)
    \/ SkipDue(c)
    \/ Variant = "naive" /\ rec.exp < wallOff[c]

(* Once the grant bound is reached nobody can acquire again, and the queue *)
(* decides only who acquires: the queue can change nothing the properties *)
(* look at any more.  So the model stops it there (as it stops the state  *)
(* register at MaxStateWrites): the last grant empties it and drops the   *)
(* queue requests on their way, and no more are sent.                      *)
GrantsLeft == ~TrackTokens \/ Len(grants) < MaxGrants
LastGrant == TrackTokens /\ Len(grants) + 1 = MaxGrants

EnqMsg(c) == [from |-> c, op |-> "enq", cur |-> FALSE, tok |-> 0]
LeaveMsg(c) == [from |-> c, op |-> "leave", cur |-> FALSE, tok |-> 0]

SendAcquire(c) ==
    /\ cl[c].phase \in {"idle", "wait"}
    /\ ~cl[c].enqOut
    /\ MaySend(c)
    /\ IF AcquireCond(c)
       THEN LET tok == IF TrackTokens THEN rec.token + 1 ELSE 0
                gone == IF ~FreeFor(c) /\ SkipDue(c) THEN {c, Head(rec.q)}
                        ELSE {c}
            IN
            /\ ~TrackTokens \/ Len(grants) < MaxGrants
            /\ rec' = [owner |-> c, token |-> tok, released |-> FALSE,
                       exp |-> IF Variant = "naive" THEN wallOff[c] + Lease
                               ELSE ExpFloor,
                       q |-> IF LastGrant THEN <<>> ELSE Without(rec.q, gone)]
            /\ grants' = IF TrackTokens THEN Append(grants, tok) ELSE grants
            /\ cl' = [OutdatedClients EXCEPT ![c] =
                        [Idle EXCEPT !.phase = "acq", !.backoff = ~faults]]
            /\ rnet' = OutdatedAnswers \cup {Answer(c, "grant", TRUE, tok)}
            /\ lnet' = LET l == OutdatedRequests(lnet, OutdatedClients) IN
                       IF LastGrant THEN l \ QueueOps(l) ELSE l
            /\ elapsed' = [elapsed EXCEPT !.dead = 0]
       ELSE LET h == ReservedFor
                same == cl[c].phase = "wait" /\ cl[c].obsH = h
                enq == /\ ~InQueue(c, rec.q) /\ Len(rec.q) < MaxQueue
                       /\ NetworkHasRoom /\ GrantsLeft
            IN
            /\ cl' = [cl EXCEPT ![c] =
                        [@ EXCEPT !.phase = IF Variant = "naive" THEN "idle"
                                            ELSE "wait",
                                  !.obsT = IF same THEN @ ELSE 0,
                                  !.obsH = h,
                                  !.enqOut = enq /\ ~faults,
                                  !.backoff = ~faults]]
            /\ lnet' = IF enq THEN lnet \cup {EnqMsg(c)} ELSE lnet
            /\ UNCHANGED <<rec, grants, rnet, elapsed>>
    /\ UNCHANGED <<reg, snet, forces, faults, wallOff, swrites>>

(* The grant's answer arrives.  The lease runs from the store's write;    *)
(* if the client's clock says it is over already, the grant is of no use  *)
(* and the client waits like anybody else (on its own rvn, if current).   *)
ReceiveGrant(c) ==
    \E a \in rnet :
        /\ a.to = c
        /\ a.kind = "grant"
        /\ Awaits(cl[c], a)
        /\ cl' = [cl EXCEPT ![c] =
                    IF a.age < HolderCap
                    THEN [Idle EXCEPT !.phase = "hold", !.tok = a.token,
                                      !.myCur = a.cur, !.leaseT = a.age,
                                      !.backoff = cl[c].backoff]
                    ELSE [Idle EXCEPT !.phase = IF a.cur /\ Variant # "naive"
                                                THEN "wait" ELSE "idle",
                                      !.backoff = cl[c].backoff]]
        \* A new holder seals the state (see "The state store" below).
        /\ snet' = IF a.age < HolderCap /\ Fenced /\ TrackTokens
                   THEN snet \cup {[kind |-> "seal", from |-> c, tok |-> a.token,
                                    ifMatch |-> InitVersion]}
                   ELSE snet
        /\ DropAnswersTo(c)
        /\ UNCHANGED <<rec, reg, lnet, forces, faults, wallOff, elapsed,
                       grants, swrites>>

(* The client times out waiting for the grant's answer and stops waiting  *)
(* (its next attempt is a new request).  While faults last it may do so   *)
(* at any moment, leaving a grant nobody uses; afterwards only when the   *)
(* answer was lost.                                                       *)
GiveUp(c) ==
    /\ cl[c].phase = "acq"
    /\ faults \/ \A a \in rnet : a.to # c
    /\ cl' = [cl EXCEPT ![c] = [Idle EXCEPT !.backoff = cl[c].backoff]]
    /\ DropAnswersTo(c)
    /\ UNCHANGED <<rec, reg, lnet, snet, forces, faults, wallOff, elapsed,
                   grants, swrites>>

-----------------------------------------------------------------------------
(* Heartbeat, release, force-unlock: requests that travel (join lnet and  *)
(* reach the store at any later step, in any order, or never).            *)

(* Heartbeat every lease/3 by the holder's clock: owner == me && rvn ==   *)
(* my_rvn.                                                                 *)
Heartbeat(c) ==
    /\ ~(FaultFree /\ OneShot)
    /\ Believes(c)
    /\ MayShow(cl[c].leaseT, HeartbeatEvery)
    /\ ~cl[c].hbOut
    /\ MaySend(c)
    /\ NetworkHasRoom
    /\ lnet' = lnet \cup {[from |-> c, op |-> "hb", cur |-> cl[c].myCur,
                           tok |-> cl[c].tok]}
    /\ cl' = [cl EXCEPT ![c] = [@ EXCEPT !.hbOut = TRUE, !.backoff = ~faults]]
    /\ UNCHANGED <<rec, reg, rnet, snet, forces, faults, wallOff, elapsed,
                   grants, swrites>>

(* Release: owner == me && rvn == my_rvn.  The client stops believing at   *)
(* once and does not wait for the answer.                                  *)
Release(c) ==
    /\ cl[c].phase = "hold"
    /\ ~cl[c].hbOut
    /\ MaySend(c)
    /\ NetworkHasRoom
    /\ lnet' = lnet \cup {[from |-> c, op |-> "rel", cur |-> cl[c].myCur,
                           tok |-> cl[c].tok]}
    /\ cl' = [cl EXCEPT ![c] = [AfterHold(@) EXCEPT !.backoff = ~faults]]
    /\ DropAnswersTo(c)
    /\ UNCHANGED <<rec, reg, snet, forces, faults, wallOff, elapsed, grants,
                   swrites>>

(* The operator reads the record, confirms that its holder is gone (the   *)
(* CLI asks for that) and force-unlocks, conditional on the rvn it read.   *)
(* Time between the read and the write is time the request travels.       *)
(* (Forcing a live holder's lock defeats MutualExclusion by definition;    *)
(* fencing still guards the state then, but this model does not do it.)   *)
OperatorForce ==
    /\ forces < MaxForces
    /\ ~rec.released
    /\ rec.owner \in Clients
    /\ cl[rec.owner].phase = "crashed"
    /\ NetworkHasRoom
    /\ lnet' = lnet \cup {[from |-> rec.owner, op |-> "force", cur |-> TRUE,
                           tok |-> rec.token]}
    /\ forces' = forces + 1
    /\ UNCHANGED <<rec, reg, cl, rnet, snet, faults, wallOff, elapsed, grants,
                   swrites>>

(* The store applies a request.  Heartbeat and release: owner == sender,   *)
(* not released, rvn == the sender's my_rvn.  Force-unlock: rvn == the     *)
(* rvn the operator read.  A heartbeat's answer travels back.              *)
ApplyCond(m) ==
    IF m.op = "force" THEN m.cur
    ELSE rec.owner = m.from /\ ~rec.released /\ m.cur

StoreLock(m) ==
    /\ m \in lnet
    /\ m.op \in {"hb", "rel", "force"}
    /\ IF ApplyCond(m)
       THEN /\ rec' = IF m.op = "hb"
                      THEN [rec EXCEPT !.exp = IF Variant = "naive"
                                               THEN wallOff[m.from] + Lease
                                               ELSE ExpFloor]
                      ELSE [rec EXCEPT !.released = TRUE]
            /\ lnet' = OutdatedRequests(lnet \ {m}, OutdatedClients)
            /\ cl' = OutdatedClients
            /\ rnet' = IF m.op = "hb"
                          /\ Awaits(cl[m.from], Answer(m.from, "hb", TRUE, m.tok))
                       THEN OutdatedAnswers \cup {Answer(m.from, "hb", TRUE, m.tok)}
                       ELSE OutdatedAnswers
       ELSE /\ lnet' = lnet \ {m}
            /\ rnet' = IF m.op = "hb"
                          /\ Awaits(cl[m.from], Answer(m.from, "hb", FALSE, m.tok))
                       THEN rnet \cup {Answer(m.from, "hb", FALSE, m.tok)}
                       ELSE rnet
            /\ UNCHANGED <<rec, cl>>
    /\ UNCHANGED <<reg, snet, forces, faults, wallOff, elapsed, grants,
                   swrites>>

(* The store applies a queue request.  Enqueue: the sender is not in the *)
(* queue and the queue is not full; effect: append it.  Leave: remove the *)
(* sender.  Neither names an rvn nor changes it, and neither touches the  *)
(* owner, token or released flag.  Its answer reaches the sender at once  *)
(* (a later answer is a sender that paused meanwhile; a lost one, a       *)
(* sender that gave up waiting).                                          *)
(*                                                                         *)
(* What a skipping waiter times (SkipRule).  "client": the head's client   *)
(* id, and the skip is conditioned on Head(queue) = that id.  A head that  *)
(* leaves, registers again and is the head again (the entries ahead of its *)
(* new entry gone) has the same id, so a waiter that did not read in       *)
(* between keeps timing it from its first sighting, and may skip it soon   *)
(* after it became the head again (traces/queue-skip-aba.txt).  "entry":   *)
(* every registration is an entry with a fresh id, the waiter times the    *)
(* head entry and the skip is conditioned on that entry id.  Like an rvn,  *)
(* an entry id is only ever asked "is it still the head?", which holds     *)
(* until the entry is removed (a head changes only so: entries are         *)
(* appended at the tail), so the model keeps no ids: removing an entry     *)
(* sends every waiter that timed it back to "idle", and its next read      *)
(* restarts t_obs.  (A grant does so for every waiter anyway: it writes a  *)
(* new rvn.)                                                               *)
Unseen(h) ==
    [d \in Clients |-> IF cl[d].phase = "wait" /\ cl[d].obsH = h
                      THEN Outdated(cl[d]) ELSE cl[d]]

StoreQueue(m) ==
    /\ m \in lnet
    /\ m.op \in {"enq", "leave"}
    /\ rec' = [rec EXCEPT !.q =
                 IF m.op = "leave" THEN Without(@, {m.from})
                 ELSE IF ~InQueue(m.from, @) /\ Len(@) < MaxQueue
                      THEN Append(@, m.from)
                      ELSE @]
    /\ lnet' = lnet \ {m}
    /\ LET seen == IF /\ SkipRule = "entry" /\ m.op = "leave"
                      /\ InQueue(m.from, rec.q)
                   THEN Unseen(m.from) ELSE cl
       IN cl' = IF m.op = "enq" THEN [seen EXCEPT ![m.from].enqOut = FALSE]
                ELSE seen
    /\ UNCHANGED <<reg, rnet, snet, forces, faults, wallOff, elapsed, grants,
                   swrites>>

(* Where a waiter goes when it gives up: "done" (for good) while faults   *)
(* last or when it wants the lock only once; otherwise "away", from where *)
(* it may come back (Return) and wait again.  (A client that gives up and *)
(* waits again while faults last adds no behaviour the safety properties  *)
(* can see: the queue only decides which of the grants the model without   *)
(* a queue allows happen, see README.md.)  In the crash models it does not *)
(* come back: a wait that is given up and started again restarts the       *)
(* waiter's own timers, which is not the delay SkipInTime bounds.          *)
QuitTo == IF OneShot \/ faults THEN "done" ELSE "away"

(* A waiter gives up: it sends Leave if it may be in the queue (it was in *)
(* it when last read, or an Enqueue of its own is on its way) and stops   *)
(* waiting.  LeaveRule "atOnce": it gives up at any moment, also while    *)
(* its Enqueue's answer is outstanding; that Enqueue may then land after  *)
(* the Leave and leave an entry nobody acts for.  "answered": it first     *)
(* waits for the answer to its Enqueue (so the Enqueue has landed before  *)
(* the Leave is sent), unless it stopped waiting for that answer (lost or *)
(* late, a fault: see SendAcquire).  It may want the lock again later.  A *)
(* waiter that is not in the queue gives up without a Leave (while faults *)
(* last that is a waiter that pauses for ever: nothing to add).           *)
MayBeQueued(c) == InQueue(c, rec.q) \/ EnqMsg(c) \in lnet

Quit(c) ==
    /\ MaxQueue > 0 /\ GrantsLeft
    /\ cl[c].phase \in {"idle", "wait"}
    /\ LeaveRule = "answered" => ~cl[c].enqOut
    /\ IF MayBeQueued(c)
       THEN /\ NetworkHasRoom
            /\ lnet' = lnet \cup {LeaveMsg(c)}
       ELSE /\ ~faults
            /\ UNCHANGED lnet
    /\ cl' = [cl EXCEPT ![c] = [Idle EXCEPT !.phase = QuitTo,
                                            !.backoff = cl[c].backoff]]
    /\ UNCHANGED <<rec, reg, rnet, snet, forces, faults, wallOff, elapsed,
                   grants, swrites>>

Return(c) ==
    /\ ~CrashWaiters
    /\ cl[c].phase = "away"
    /\ cl' = [cl EXCEPT ![c].phase = "idle"]
    /\ UNCHANGED <<rec, reg, lnet, rnet, snet, forces, faults, wallOff,
                   elapsed, grants, swrites>>

(* A heartbeat's answer arrives.  Confirmed (and the client's clock says   *)
(* it is still in time): the lease now runs from that write, and my_rvn is *)
(* the new rvn.  Failed, or too late: the lease is lost.                   *)
ReceiveBeat(c) ==
    \E a \in rnet :
        /\ a.to = c
        /\ a.kind = "hb"
        /\ Awaits(cl[c], a)
        /\ cl' = [cl EXCEPT ![c] =
                    IF a.ok /\ Believes(c) /\ a.age < HolderCap
                    THEN [@ EXCEPT !.myCur = a.cur, !.leaseT = Min(@, a.age),
                                   !.hbOut = FALSE]
                    ELSE AfterHold(@)]
        /\ DropAnswersTo(c)
        /\ UNCHANGED <<rec, reg, lnet, snet, forces, faults, wallOff, elapsed,
                       grants, swrites>>

-----------------------------------------------------------------------------
(* The state store (docs/PROTOCOL.md, "Fencing at the state store").      *)
(*                                                                         *)
(* Seal.  Right after its grant the holder sends a seal (ReceiveGrant):   *)
(* the store raises the register's fence to the holder's token (fence :=  *)
(* max(fence, token)); the content and version stay.  The seal is a       *)
(* message of its own: it may arrive at any later time (or never), after  *)
(* the holder's lease is over, after a newer holder's seal.  Nothing in a *)
(* seal depends on when it was sent, so a seal sent at the grant that     *)
(* travelled is the same as one sent later by a holder that paused.       *)
(*                                                                         *)
(* Write.  A holder that believes it holds reads the register.  A fence   *)
(* above its token means it is stale: it stops.  A fence below its token  *)
(* means its seal has not landed yet: it may not write (it waits).  Once  *)
(* it reads its own seal (fence = its token) it sends a write If-Match:   *)
(* version.  The write may arrive at any later time.  That covers a       *)
(* process that checked its lease, read the register, paused (GC,         *)
(* SIGSTOP, VM migration) and sent the write long after: the store cannot *)
(* tell a write sent late from one that travelled long, and nothing on    *)
(* the way looks at the lease again.  A holder writes only when no state  *)
(* message of its own is on its way.  The naive variant neither seals nor *)
(* looks at the fence.                                                     *)
WriteState(c) ==
    /\ TrackTokens
    /\ Len(swrites) < MaxStateWrites
    /\ Believes(c)
    /\ \A m \in snet : m.from # c
    /\ IF Fenced /\ reg.fence > cl[c].tok
       THEN /\ cl' = [cl EXCEPT ![c] = AfterHold(@)]
            /\ DropAnswersTo(c)
            /\ UNCHANGED snet
       ELSE /\ ~Fenced \/ reg.fence = cl[c].tok
            /\ snet' = snet \cup {[kind |-> "write", from |-> c,
                                    tok |-> cl[c].tok, ifMatch |-> reg.ver]}
            /\ UNCHANGED <<cl, rnet>>
    /\ UNCHANGED <<rec, reg, lnet, forces, faults, wallOff, elapsed, grants,
                   swrites>>

(* The state store.  A seal raises the fence (a seal below the fence     *)
(* would change nothing: it is dropped).                                   *)
(* A write lands only if its token is at least the fence and its If-Match *)
(* is the current version (naive: every write lands); the new version is  *)
(* fresh and the fence stays.  A message on its way that the store would  *)
(* now reject is rejected at once (it can never land later: versions are  *)
(* never reused and the fence never goes down), and once MaxStateWrites   *)
(* writes were accepted the model stops: messages still on their way are  *)
(* dropped.  The history records, with each accepted write, the highest   *)
(* token that had sealed when it landed (the fence).                      *)
Accepts(m, r) ==
    IF m.kind = "seal" THEN m.tok > r.fence
    ELSE ~Fenced \/ (m.ifMatch = r.ver /\ m.tok >= r.fence)

StoreState(m) ==
    /\ m \in snet
    /\ Len(swrites) < MaxStateWrites
    /\ IF m.kind = "seal"
       THEN LET r == [reg EXCEPT !.fence = Max(@, m.tok)] IN
            /\ reg' = r
            /\ snet' = {x \in snet \ {m} : Accepts(x, r)}
            /\ UNCHANGED swrites
       ELSE IF Accepts(m, reg)
       THEN LET r == [ver |-> Len(swrites) + 1, fence |-> reg.fence] IN
            /\ reg' = r
            /\ swrites' = Append(swrites, [tok |-> m.tok, pre |-> m.ifMatch,
                                            post |-> r.ver,
                                            sealed |-> reg.fence])
            /\ snet' = IF Len(swrites) + 1 = MaxStateWrites THEN {}
                       ELSE {x \in snet \ {m} : Accepts(x, r)}
       ELSE /\ snet' = snet \ {m}
            /\ UNCHANGED <<reg, swrites>>
    /\ UNCHANGED <<rec, cl, lnet, rnet, forces, faults, wallOff, elapsed,
                   grants>>

-----------------------------------------------------------------------------
(* Faults *)

(* A holder crashes: no more steps; its messages stay on their way.  (Any  *)
(* other crash looks to everybody else like a pause that never ends,       *)
(* which the model has anyway while faults last: a client need not take    *)
(* steps.)  In the crash models (CrashWaiters), where clients do not pause, *)
(* a waiter may crash at any moment, also while it is queued or its        *)
(* Enqueue is on its way (which still lands).                              *)
Crash(c) ==
    /\ \/ faults /\ cl[c].phase = "hold"
       \/ CrashWaiters /\ cl[c].phase \in {"idle", "wait"}
    /\ cl' = [cl EXCEPT ![c] = [Idle EXCEPT !.phase = "crashed"]]
    /\ DropAnswersTo(c)
    /\ UNCHANGED <<rec, reg, lnet, snet, forces, faults, wallOff, elapsed,
                   grants, swrites>>

(* Loss.  For safety a lost message is the same as one delayed for ever   *)
(* (nothing waits for a message to be gone), so the safety models leave    *)
(* these steps out (LoseMessages = FALSE); the liveness model has them.    *)
Lose ==
    /\ faults /\ LoseMessages
    /\ \/ \E m \in lnet : lnet' = lnet \ {m} /\ UNCHANGED <<rnet, snet>>
       \/ \E a \in rnet : rnet' = rnet \ {a} /\ UNCHANGED <<lnet, snet>>
       \/ \E m \in snet : snet' = snet \ {m} /\ UNCHANGED <<lnet, rnet>>
    /\ UNCHANGED <<rec, reg, cl, forces, faults, wallOff, elapsed, grants,
                   swrites>>

(* Liveness model: from some point on there are no more faults: no loss   *)
(* or crash, and every message arrives within the tick it was sent in.    *)
StopFaults ==
    /\ FaultsStop
    /\ faults
    /\ faults' = FALSE
    /\ UNCHANGED <<rec, reg, cl, lnet, rnet, snet, forces, wallOff, elapsed,
                   grants, swrites>>

-----------------------------------------------------------------------------
(* Real time advances by one tick.  Every client's clock runs on, paused   *)
(* or not, and each running timer moves within the window its clock        *)
(* allows; a holder whose clock says the lease is over has lost it (the    *)
(* guard's lease-lost signal).  The naive record's expiresAt comes one     *)
(* tick of wall time closer.                                               *)
(*                                                                         *)
(* Without faults (FaultFree) nobody pauses: within every tick each        *)
(* waiter reads the record (one read per tick: its poll interval is at     *)
(* most a tick, half a lease), and each holder renews its lease (heartbeat *)
(* confirmed, leaseT back to 0) or releases.  In the bounded-liveness      *)
(* model (FaultFree and OneShot) a holder does not heartbeat: it releases *)
(* in the tick after its grant.                                            *)
TickMoves(s) ==
    CASE s.phase = "hold" ->
            LET adv == Advance(s.leaseT, LeaseValidity) IN
            [i \in DOMAIN adv |->
                IF adv[i] = HolderCap THEN AfterHold(s)
                ELSE [s EXCEPT !.leaseT = adv[i], !.backoff = FALSE]]
      [] s.phase = "wait" ->
            LET adv == Advance(s.obsT, IF s.obsH = NoOne THEN TakeoverWait
                                       ELSE SkipWait) IN
            [i \in DOMAIN adv |-> [s EXCEPT !.obsT = adv[i], !.backoff = FALSE]]
      [] OTHER -> <<[s EXCEPT !.backoff = FALSE]>>

(* Answers age too; those whose receiver stopped waiting (its lease ran   *)
(* out) are dropped.                                                      *)
AgeMoves(next) ==
    {{[a EXCEPT !.age = Advance(a.age, LeaseValidity)[f[a]]] :
         a \in {b \in rnet : Awaits(next[b.to], b)}} :
        f \in {g \in [rnet -> {1, 2}] :
                 \A a \in rnet : g[a] <= Len(Advance(a.age, LeaseValidity))}}

Prompted(s) ==
    CASE s.phase \in {"idle", "wait"} -> s.backoff
      [] s.phase = "hold" -> s.leaseT = 0
      [] OTHER -> TRUE

Tick ==
    /\ faults \/ (lnet = {} /\ rnet = {} /\ snet = {})
    /\ FaultFree => \A c \in Clients : Prompted(cl[c])
    /\ elapsed' =
         [all |-> Min(elapsed.all + 1, LiveBound),
          dead |-> IF /\ SkipBound > 0
                      /\ ReservedFor \in Clients
                      /\ cl[ReservedFor].phase = "crashed"
                      /\ \E c \in Clients : cl[c].phase \in {"idle", "wait"}
                   THEN Min(elapsed.dead + 1, SkipBound + 1) ELSE 0]
    \* naive: ":now" is read from the wall clock when a request is sent;
    \* requests reach the store within the same tick (a restriction, so
    \* every violation found is a real one)
    /\ Variant = "naive" => lnet = {}
    /\ \E pick \in [Clients -> {1, 2}] :
          /\ \A c \in Clients : pick[c] <= Len(TickMoves(cl[c]))
          /\ LET next == [c \in Clients |-> TickMoves(cl[c])[pick[c]]] IN
             /\ cl' = next
             /\ rnet' \in AgeMoves(next)
    /\ rec' = IF Variant = "naive"
              THEN [rec EXCEPT !.exp = Max(@ - UnitsPerTick, ExpFloor)]
              ELSE rec
    /\ UNCHANGED <<reg, lnet, snet, forces, faults, wallOff, grants, swrites>>

-----------------------------------------------------------------------------
Next ==
    \/ Tick
    \/ \E c \in Clients :
        \/ SendAcquire(c) \/ ReceiveGrant(c) \/ GiveUp(c)
        \/ Heartbeat(c) \/ ReceiveBeat(c) \/ Release(c)
        \/ WriteState(c) \/ Crash(c)
        \/ Quit(c) \/ Return(c)
    \/ OperatorForce
    \/ \E m \in lnet : StoreLock(m)
    \/ \E m \in lnet : StoreQueue(m)
    \/ \E m \in snet : StoreState(m)
    \/ Lose
    \/ StopFaults

Spec == Init /\ [][Next]_vars

(* Fairness for the liveness model: real time advances; faults stop; the   *)
(* store serves every request; clients take their steps; a holder does not *)
(* hold for ever (if it can release again and again, it does).  The steps  *)
(* in ClientProgress are enabled in different phases, so weak fairness of  *)
(* their disjunction is weak fairness of each.                             *)
ClientProgress(c) ==
    \/ SendAcquire(c) \/ ReceiveGrant(c) \/ ReceiveBeat(c) \/ GiveUp(c)

Fairness ==
    /\ WF_vars(Tick)
    /\ WF_vars(StopFaults)
    /\ WF_vars(\E m \in lnet : StoreLock(m) \/ StoreQueue(m))
    /\ \A c \in Clients :
        /\ WF_vars(ClientProgress(c))
        /\ SF_vars(Release(c))

LiveSpec == Spec /\ Fairness

-----------------------------------------------------------------------------
(* The properties of PROTOCOL.md *)

(* No two clients believe they hold the key at the same real instant. *)
MutualExclusion ==
    \A c, d \in Clients : c # d => ~(Believes(c) /\ Believes(d))

(* The tokens granted strictly increase. *)
TokenMonotonic ==
    \A i, j \in DOMAIN grants : i < j => grants[i] < grants[j]

(* Accepted state writes have non-decreasing tokens: once a write with    *)
(* token t is accepted, no write with a token below t is.                 *)
FencingMonotonic ==
    \A i, j \in DOMAIN swrites : i < j => swrites[i].tok <= swrites[j].tok

(* Every accepted state write's precondition is the version written by   *)
(* the previously accepted write: the history is a chain.                *)
NoLostUpdate ==
    \A i \in DOMAIN swrites :
        swrites[i].pre = IF i = 1 THEN InitVersion ELSE swrites[i - 1].post

(* The seal's promise: once a holder with token t has sealed the state,   *)
(* no write with a token below t is accepted, however late it arrives.    *)
SealFencesStaleWriters ==
    \A i \in DOMAIN swrites : swrites[i].tok >= swrites[i].sealed

(* Only the current owner's release/heartbeat succeeds; a force-unlock    *)
(* succeeds only against the record version the operator saw.  Stated of *)
(* every request on its way: whenever its condition holds (so the store   *)
(* would apply it now), a heartbeat or release comes from the owner the    *)
(* record names, under the very grant (token) it holds, and a             *)
(* force-unlock targets exactly the record the operator read (its holder   *)
(* and token; `from' is that holder for a force).  That the rvn condition  *)
(* alone implies all this is what makes it safe to rely on.               *)
OwnerOnlyRelease ==
    \A m \in lnet :
        m.op \in {"hb", "rel", "force"} /\ ApplyCond(m) =>
            /\ ~rec.released
            /\ rec.owner = m.from
            /\ rec.token = m.tok

(* Liveness: once faults stop, a client that wants the lock gets it (or   *)
(* has crashed, or given up: done without holding is only reached by      *)
(* giving up).                                                            *)
Waiting(c) == cl[c].phase \in {"idle", "wait", "acq"}
EventualAcquire ==
    \A c \in Clients :
        Waiting(c) ~> (Believes(c) \/ cl[c].phase \in {"crashed", "done"})

(* Fair hand-off: a registered waiter is granted before any later-        *)
(* registered waiter.  The queue is the order of registration: an entry   *)
(* is appended when an Enqueue lands and nothing reorders entries.  So at *)
(* every grant (a client's acquire, takeover or skip landing) no client   *)
(* that registered before the grantee may still be in the queue: if the  *)
(* grantee is registered, nobody ahead of it; if it is not, nobody.       *)
(* Holds in behaviours without faults (FaultFree).                         *)
RegisteredBefore(d, c, q) ==
    \E i \in DOMAIN q :
        /\ q[i] = d
        /\ \A j \in DOMAIN q : q[j] = c => i < j
Granted(c) == cl'[c].phase = "acq" /\ cl[c].phase # "acq"
FifoGrant ==
    [][\A c \in Clients :
         Granted(c) =>
             \A d \in Clients \ {c} : ~RegisteredBefore(d, c, rec.q)]_vars

(* The same among the waiters that are still waiting: at every grant, no  *)
(* registered waiter that still waits (has not crashed or given up) is    *)
(* passed over.  With crashes the skip passes over the crashed head, and   *)
(* this asks whether the order of the live waiters behind it is kept.      *)
LiveFifoGrant ==
    [][\A c \in Clients :
         Granted(c) =>
             \A d \in Clients \ {c} :
                 cl[d].phase \in {"idle", "wait"} =>
                     ~RegisteredBefore(d, c, rec.q)]_vars

(* Bounded liveness (FaultFree, OneShot, waiters that may crash): LiveBound *)
(* ticks after the first state no live client is still waiting for the    *)
(* lock; each holds it, has held it, or crashed.                           *)
AcquiresInTime ==
    LiveBound > 0 /\ elapsed.all = LiveBound => \A c \in Clients : ~Waiting(c)

(* ... and a released record reserved for a crashed head is granted      *)
(* (skipped) within SkipBound ticks while a live client wants the lock:   *)
(* the time a crashed queued waiter can hold the key up.  (Only a grant    *)
(* changes a crashed head: it cannot leave.)                               *)
SkipInTime == elapsed.dead <= SkipBound

-----------------------------------------------------------------------------
(* More checks *)

TypeOK ==
    /\ rec.owner \in Clients \cup {NoOne}
    /\ rec.released \in BOOLEAN
    /\ rec.q \in Seq(Clients)
    /\ Len(rec.q) <= MaxQueue
    /\ \A i, j \in DOMAIN rec.q : i # j => rec.q[i] # rec.q[j]
    /\ \A c \in Clients :
        /\ cl[c].phase \in {"idle", "wait", "acq", "hold", "done", "crashed",
                            "away"}
        /\ cl[c].leaseT \in 0..(HolderCap - 1)
        /\ cl[c].obsT \in 0..Max(WaiterCap, SkipCap)
        /\ cl[c].obsH \in Clients \cup {NoOne}
        /\ cl[c].enqOut => cl[c].phase \in {"idle", "wait"}
    /\ \A a \in rnet : a.age \in 0..HolderCap

(* Stronger than MutualExclusion: whoever believes it holds is the owner  *)
(* the record names.                                                      *)
BelieverIsOwner ==
    \A c \in Clients : Believes(c) => rec.owner = c /\ ~rec.released

(* Sanity checks that TLC is EXPECTED to find violated, to show that the   *)
(* model is not vacuous: a waiter takes over a held lock; a heartbeat      *)
(* renews a lease; the operator force-unlocks a crashed holder's lock; the *)
(* store rejects a write from an older lease because a newer lease's seal *)
(* or write landed first (the paused-holder write that fencing must stop).*)
NoTakeover == [][~(~rec.released /\ rec'.token > rec.token)]_vars
NoRenewal ==
    [][\A c \in Clients :
         cl[c].phase = "hold" /\ cl'[c].phase = "hold" /\ cl'[c].tok = cl[c].tok
            => cl'[c].leaseT >= cl[c].leaseT]_vars
NoForcedUnlock ==
    [][~(/\ ~rec.released /\ rec'.released
         /\ rec.owner \in Clients /\ cl[rec.owner].phase = "crashed")]_vars
NoStaleWriteRejected ==
    [][\A m \in snet \ snet' :
         m.kind = "seal" \/ m.tok >= reg'.fence \/ Len(swrites') = MaxStateWrites]_vars
(* ... and a write that still names the current version is rejected only   *)
(* because a newer holder's seal landed before it (what the seal adds:    *)
(* the newer holder need not have written anything yet).                  *)
NoSealFencedWrite ==
    [][\A m \in snet \ snet' :
         ~(m.kind = "write" /\ m.ifMatch = reg'.ver /\ m.tok < reg'.fence)]_vars
(* With the queue: the head of a released record's queue is granted      *)
(* (NoHandOff), and a waiter skips the head a released record is reserved *)
(* for (NoSkip).                                                           *)
NoHandOff ==
    [][~(/\ rec.released /\ ~rec'.released /\ rec.q # <<>>
         /\ rec'.owner = Head(rec.q))]_vars
NoSkip ==
    [][~(/\ rec.released /\ ~rec'.released /\ rec.q # <<>>
         /\ rec'.owner # Head(rec.q))]_vars
=============================================================================
