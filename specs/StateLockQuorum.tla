-------------------------- MODULE StateLockQuorum --------------------------
(***************************************************************************)
(* The statelock quorum lock (docs/PROTOCOL.md, "Quorum lock") for one     *)
(* key over N = 3 member stores.                                           *)
(*                                                                         *)
(*   - Each member store holds one lock record (owner, token, version,     *)
(*     released) and applies conditional writes one at a time: a write    *)
(*     lands only on the exact version it names.                           *)
(*   - A client reads a *view*: each member's record, or no answer, with   *)
(*     answers from at least a majority.  From it the client builds the    *)
(*     quorum record: agreed (a majority answered the same version) or     *)
(*     split (held if any answered record is held; its version is the     *)
(*     digest of the whole view).  It times a held quorum version on its   *)
(*     own clock exactly as the single-store waiter times an rvn.          *)
(*   - Every lock operation is one write per member, all sent at once as   *)
(*     messages that may be delayed, reordered and lost; an operation      *)
(*     succeeds when a majority applied it.  A grant installs the token    *)
(*     T = 1 + the largest token of the view it was built from; a grant    *)
(*     that can no longer reach a majority is released at once on the      *)
(*     members that applied it.  Heartbeats and releases are the holder's  *)
(*     write, sent unchanged to every member.                              *)
(*   - Holders seal and write the state store (as in StateLock.tla; off   *)
(*     in the shipped models, MaxStateWrites = 0).                         *)
(*   - Faults: delayed and lost messages and answers, clients that pause   *)
(*     (their clocks run on), members that stop and come back with their   *)
(*     old records.                                                        *)
(*                                                                         *)
(* Variants (constant Variant):                                            *)
(*   "quorum"    the design;                                               *)
(*   "perstore"  a planted bug: each member installs its own next token   *)
(*               (its token + 1) instead of T, and the client takes the    *)
(*               token of the member that applied its grant first.         *)
(* and StaleRule, the held members of an agreed view a grant also repairs *)
(* (besides the agreed, released and absent ones):                         *)
(*   "atMost"    as first built (member_ops): a token no larger than       *)
(*               the agreed record's.  TLC finds MutualExclusion violated  *)
(*               once holders heartbeat: a waiter that read one member     *)
(*               before the holder's heartbeat reached it sees the old     *)
(*               version agreed, counts the member the heartbeat did       *)
(*               reach (same token, other version) as stale, and its       *)
(*               takeover lands on that member and on the one the          *)
(*               heartbeat has not reached yet: a majority, while the     *)
(*               holder's renewed lease runs (specs/traces/).              *)
(*   "below"     a token smaller than the agreed record's: a record of an  *)
(*               earlier grant.  A record with the agreed token at another *)
(*               version may be the holder's own later write; it is left   *)
(*               alone.                                                     *)
(*                                                                         *)
(* Clocks, leases and the state store are those of StateLock.tla (copied:  *)
(* that module's actions are written over its single record).  Record     *)
(* versions cannot be flags here (a view compares versions of different    *)
(* members), so they are values: a fresh version is the smallest positive  *)
(* integer that nothing in the state refers to, which no observer can tell *)
(* from a globally fresh random value and keeps the state space finite.    *)
(*                                                                         *)
(* t_send.  A lease counts from t_send, noted before the operation is      *)
(* sent.  The model counts it from the moment the first member applied     *)
(* the operation, which is later: every belief of the design lies inside   *)
(* one of the model's, so safety shown here holds for the design.          *)
(***************************************************************************)
EXTENDS Integers, Sequences, FiniteSets

CONSTANTS
    Clients,         \* the client processes (model values)
    Stores,          \* the member stores (model values), N = 3
    NoOne,           \* owner of an absent record (model value)
    Variant,         \* "quorum" | "perstore"
    StaleRule,       \* "atMost" | "below": which held members a grant repairs
    UnitsPerTick,    \* clock units per tick of real time at rate 1
    MinRate,         \* slowest a monotonic clock runs, clock units per tick
    MaxRate,         \* fastest a monotonic clock runs, clock units per tick
    RhoNum, RhoDen,  \* rho = RhoNum / RhoDen, the drift bound the design assumes
    Lease,           \* lease_ms, in clock units
    Margin,          \* margin, in clock units
    MaxGrants,       \* bound on grants applied by some member (keeps tokens finite)
    MaxStateWrites,  \* bound on accepted state writes (0: no state store)
    MaxOps,          \* bound on lock operations on their way at once
    MaxBeats,        \* bound on the heartbeats a holder sends per lease
    MaxStale,        \* bound on the answers of a round read before they changed
    TrackTokens,     \* FALSE: no tokens, grant history or state register
    OneShot,         \* TRUE: a client wants the lock until it has held it once
    FaultsStop,      \* TRUE: the liveness model (members stop, loss, crashes,
                     \*       then faults stop with at most one member down)
    FaultKinds,      \* the liveness model's faults, a subset of
                     \* {"stop", "lose", "crash", "giveup"}
    LiveBound        \* liveness model: ticks within which every client acquires

ASSUME Variant \in {"quorum", "perstore"}
ASSUME StaleRule \in {"atMost", "below"}
ASSUME FaultKinds \subseteq {"stop", "lose", "crash", "giveup"}
ASSUME Cardinality(Stores) = 3
ASSUME RhoDen > 0 /\ RhoNum \in 0..(RhoDen - 1)
ASSUME (Lease * RhoNum) % RhoDen = 0
ASSUME 0 < MinRate /\ MinRate <= MaxRate
ASSUME MinRate * RhoDen >= UnitsPerTick * (RhoDen - RhoNum)
ASSUME MaxRate * RhoDen <= UnitsPerTick * (RhoDen + RhoNum)

Majority == Cardinality(Stores) \div 2 + 1

(* Lease timing, as in StateLock.tla: the holder's lease is valid until    *)
(* t_send + lease*(1-rho) - margin; a waiter may take over once the same   *)
(* quorum version was seen for lease*(1+rho) + margin; the holder          *)
(* heartbeats every lease/3.  All on the client's own monotonic clock.     *)
LeaseValidity  == (Lease * (RhoDen - RhoNum)) \div RhoDen - Margin
TakeoverWait   == (Lease * (RhoDen + RhoNum)) \div RhoDen + Margin
HeartbeatEvery == Lease \div 3
ASSUME LeaseValidity > 0

(* After n ticks a clock may show X elapsed if n * MaxRate >= X, and      *)
(* surely does once n >= Cap(X) (StateLock.tla, "Clocks").                *)
Cap(X) == (X + MinRate - 1) \div MinRate
MayShow(n, X) == n * MaxRate >= X

HolderCap == Cap(LeaseValidity)   \* "my lease is over"
WaiterCap == Cap(TakeoverWait)    \* "I may take over"

(* The values a timer may take at the next tick, as a sequence.          *)
Advance(n, X) ==
    IF n + 1 >= Cap(X) THEN <<Cap(X)>>
    ELSE IF MayShow(n + 1, X) THEN <<n + 1, Cap(X)>>
    ELSE <<n + 1>>

Max(a, b) == IF a > b THEN a ELSE b
Min(a, b) == IF a < b THEN a ELSE b
SetMax(S) == CHOOSE x \in S : \A y \in S : x >= y
SetMin(S) == CHOOSE x \in S : \A y \in S : x <= y

-----------------------------------------------------------------------------
(* Records and views *)

(* A member's record.  ver 0 is "absent" (no write yet); every write     *)
(* gives the record the version of the operation that wrote it, the same  *)
(* on every member it lands on.                                           *)
Absent   == [ver |-> 0, owner |-> NoOne, tok |-> 0, rel |-> TRUE]
NoAnswer == [ver |-> -1, owner |-> NoOne, tok |-> 0, rel |-> TRUE]
Unread   == NoAnswer
NoneSeen == [s \in Stores |-> Unread]

(* The quorum version a waiter times: the agreed version (ag), or the     *)
(* digest of a split view (dg: which members answered and each one's      *)
(* version).  NoQV: nothing timed.                                        *)
NoQV == [ag |-> -1, dg |-> {}]

(* What a client makes of a view w whose answering members are A:         *)
(*   agreed  a majority of A answered the same version (av);              *)
(*   held    agreed: that write is held; split: any answered record is;   *)
(*   qv      the quorum version it times (agreed version or digest);      *)
(*   tok     T = 1 + the largest token in the view (the grant's at_least); *)
(*   targets the members a grant is sent to, each conditioned on the      *)
(*           version it answered (view.rs, member_ops): the released or   *)
(*           absent ones; in a split view every held member too (the      *)
(*           digest covered it, so it was timed); in an agreed view the    *)
(*           members at the agreed version and the *stale* ones: held at   *)
(*           another version with a token no larger than the agreed       *)
(*           record's (StaleRule "atMost", as first built) or smaller     *)
(*           ("below", as view.rs now does).  A larger token: left alone. *)
(*           "atMost" also counts the holder's own heartbeat that reached   *)
(*           a majority the waiter read too early as stale: see           *)
(*           specs/traces/quorum-stale-heartbeat.txt.                     *)
(*           A majority answering "absent" (version 0) is not an agreed    *)
(*           record: no member of such a view is stale.  Without tokens    *)
(*           (TrackTokens = FALSE, the liveness model) no member is stale  *)
(*           either: that model repairs fewer members than the design.     *)
Analyse(w, A) ==
    LET vs == {v \in {w[x].ver : x \in A} :
                  Cardinality({x \in A : w[x].ver = v}) >= Majority}
        agreed == vs # {}
        av == IF agreed THEN CHOOSE v \in vs : TRUE ELSE -1
        atok == IF agreed THEN w[CHOOSE x \in A : w[x].ver = av].tok ELSE 0
        stale(x) == /\ TrackTokens /\ agreed /\ av # 0
                    /\ w[x].ver # av /\ ~w[x].rel
                    /\ IF StaleRule = "atMost" THEN w[x].tok <= atok
                       ELSE w[x].tok < atok
    IN [agreed  |-> agreed,
        held    |-> IF agreed THEN \E x \in A : w[x].ver = av /\ ~w[x].rel
                    ELSE \E x \in A : ~w[x].rel,
        qv      |-> IF agreed THEN [ag |-> av, dg |-> {}]
                    ELSE [ag |-> -1, dg |-> {<<x, w[x].ver>> : x \in A}],
        tok     |-> 1 + SetMax({w[x].tok : x \in A}),
        targets |-> IF agreed
                    THEN {x \in A : w[x].ver = av \/ w[x].rel \/ stale(x)}
                    ELSE A,
        stale   |-> {x \in A : stale(x)}]

-----------------------------------------------------------------------------
VARIABLES
    rec,      \* each member's lock record
    cl,       \* each client's local state (see Idle)
    ops,      \* lock operations on their way (one write per member each)
    down,     \* the members that are stopped (liveness model)
    faults,   \* faults may (still) happen
    grants,   \* history: each grant applied by some member, in that order
    reg,      \* the state register: [ver, fence]
    snet,     \* state seals and writes on their way
    swrites,  \* history: every accepted state write
    elapsed   \* liveness model: ticks since faults stopped (capped at LiveBound)

vars == <<rec, cl, ops, down, faults, grants, reg, snet, swrites, elapsed>>

(* A client's local state.                                                *)
(*   phase   wait: reading views, timing a held quorum version; acq: its  *)
(*           grant is out; hold: holder; done: wants no more (OneShot);   *)
(*           crashed: takes no more steps                                 *)
(*   seen    the answers of this round captured before the member changed  *)
(*           (Unread: not read yet, or read and still current)            *)
(*   qv      the quorum version timed (NoQV: none), obsT ticks since t_obs *)
(*   tok     holder: its fencing token                                    *)
(*   myVer   holder: the version of its last write a majority applied     *)
(*   leaseT  holder: ticks since that write (its first application)       *)
(*   op      the version of the operation whose answers it awaits (0:     *)
(*           none): its grant (acq) or its heartbeat (hold)               *)
(*   opAge   ticks since that operation was first applied by a member     *)
(*   beats   holder: heartbeats sent in this lease (bounded by MaxBeats)  *)
(*   backoff it sent a lock operation in this tick (once faults stopped)  *)
Idle == [phase |-> "wait", seen |-> NoneSeen, qv |-> NoQV, obsT |-> 0,
         tok |-> 0, myVer |-> 0, leaseT |-> 0, op |-> 0, opAge |-> 0,
         beats |-> 0, backoff |-> FALSE]

InitVersion == 0

(* A client believes it holds the lock from the moment it has a majority  *)
(* of its grant until its own clock says the lease is over, or it          *)
(* releases, or learns that the lease is lost.                            *)
Believes(c) == cl[c].phase = "hold" /\ cl[c].leaseT < HolderCap

AfterHold(s) == [Idle EXCEPT !.phase = IF OneShot THEN "done" ELSE "wait",
                             !.backoff = s.backoff]

(* Once faults have stopped, a client sends at most one lock operation per *)
(* tick (its backoff); before that, any number.                           *)
MaySend(c) == faults \/ ~cl[c].backoff

NetworkHasRoom == Cardinality(ops) < MaxOps

-----------------------------------------------------------------------------
(* Versions.  Every version something in the state refers to; a fresh one *)
(* is the smallest positive integer not among them.                        *)
ClientVersions(x) ==
    {x.seen[s].ver : s \in Stores} \cup {x.qv.ag} \cup {p[2] : p \in x.qv.dg}
        \cup {x.myVer, x.op}
Used ==
    {rec[s].ver : s \in Stores}
        \cup UNION {{o.ver} \cup {o.cond[s] : s \in Stores} : o \in ops}
        \cup UNION {ClientVersions(cl[c]) : c \in Clients}
        \cup {grants[i].id : i \in DOMAIN grants}
Fresh == SetMin({v \in 1..(Cardinality(Used) + 1) : v \notin Used})

-----------------------------------------------------------------------------
(* Lock operations on their way.  An operation is                          *)
(*   kind   "grant" | "hb" | "rel";  from: its sender;  ver: its version   *)
(*   tok    the grant's token T (hb, rel: the holder's token)              *)
(*   cond   per member, the version it must find (-1: not sent there)      *)
(*   pend   members it has not reached yet; ok / no: members that applied  *)
(*          / refused it (kept while the sender awaits the answers)        *)
(*   landed grant: some member applied it (hb, rel: always TRUE)           *)
(*   hist   grant: "open" (a majority is still possible), "done" (granted, *)
(*          or it never can be: its history is settled; hb, rel: "done")   *)
(*   tk     grant: "acquire" (untimed), "agreed" or "split" (a takeover)   *)
(*   stale  grant: the stale members of its (agreed) view it is sent to    *)
(* A member's answer reaches the sender at any later step (the sender acts *)
(* on the answers in a step of its own, which it may delay at will).       *)
Awaited(o, next) ==
    /\ next[o.from].op = o.ver
    /\ \/ o.kind = "grant" /\ next[o.from].phase = "acq"
       \/ o.kind = "hb" /\ next[o.from].phase = "hold"

Hopeless(o) == Cardinality(o.ok) + Cardinality(o.pend) < Majority

(* After every step: a write on its way whose condition can never hold     *)
(* again (the member's version is another one and no operation on its way *)
(* can install the named one: versions are never reused while referred to) *)
(* is refused at once, as it would be whenever it arrived; writes to the   *)
(* members in `lost' are lost; a grant that can no longer reach a majority *)
(* has its history settled; operations nobody awaits keep only what can    *)
(* still matter, and are dropped once they reach no member any more.      *)
Settle(os, r, next, lost) ==
    LET dead(o) == {x \in o.pend :
                        \/ x \in lost
                        \/ /\ r[x].ver # o.cond[x]
                           /\ ~\E p \in os : p.ver = o.cond[x] /\ x \in p.pend}
        s1(o) == [o EXCEPT !.pend = @ \ dead(o),
                           !.cond = [x \in Stores |->
                                       IF x \in o.pend \ dead(o) THEN @[x] ELSE -1]]
        s2(o) == IF o.hist = "open" /\ Hopeless(o)
                 THEN [o EXCEPT !.hist = "done"] ELSE o
        s3(o) == IF Awaited(o, next) THEN o
                 ELSE [o EXCEPT !.ok = IF o.hist = "done" THEN {} ELSE @,
                                !.tk = "none"]
        all == {s3(s2(s1(o))) : o \in os}
    IN {o \in all : o.pend # {} \/ Awaited(o, next)}

(* A history entry is [tok, id]: id is the grant's version while it may    *)
(* still reach a majority, 0 once it has (granted), -1 if it never can.    *)
SettleGrants(g, os) ==
    [i \in DOMAIN g |->
        IF g[i].id > 0 /\ ~\E o \in os : o.ver = g[i].id /\ o.hist = "open"
        THEN [g[i] EXCEPT !.id = -1] ELSE g[i]]

Lost == IF faults THEN {} ELSE down

(* A client's timed quorum version is dead once no view of the current   *)
(* round can show it again: the round's Decide will restart the timing,    *)
(* exactly as if nothing were timed.  (Split: a member of the digest can   *)
(* only answer another version; agreed: fewer than a majority can still    *)
(* answer the version.)  A member whose answer was captured answers that;  *)
(* another can answer v if it is at v or a write of v is on its way to it. *)
QVDead(s, r, os) ==
    LET mayShow(x, v) ==
            IF s.seen[x] # Unread THEN s.seen[x].ver = v
            ELSE r[x].ver = v \/ \E o \in os : o.ver = v /\ x \in o.pend
    IN IF s.qv.ag >= 0
       THEN Cardinality({x \in Stores : mayShow(x, s.qv.ag)}) < Majority
       ELSE \E p \in s.qv.dg : ~mayShow(p[1], p[2])

(* Client states that no future can tell apart are made equal: a dead    *)
(* timed version is dropped; once the grant bound is reached no client    *)
(* can send a grant again, and what waiting clients have read no longer    *)
(* matters.                                                                 *)
NormClient(s, r, os, g) ==
    IF s.phase \notin {"wait", "acq"} THEN s
    ELSE IF s.phase = "wait" /\ TrackTokens /\ Len(g) >= MaxGrants
    THEN [Idle EXCEPT !.backoff = s.backoff]
    ELSE IF s.qv # NoQV /\ QVDead(s, r, os) THEN [s EXCEPT !.qv = NoQV, !.obsT = 0]
    ELSE s

(* Every step ends here: operations settled, history, clients normalized. *)
Commit(os, g, r, next) ==
    LET settled == Settle(os, r, next, Lost)
        g1 == SettleGrants(g, settled)
    IN /\ ops' = settled
       /\ grants' = g1
       /\ cl' = [c \in Clients |-> NormClient(next[c], r, settled, g1)]

-----------------------------------------------------------------------------
Init ==
    /\ rec = [s \in Stores |-> Absent]
    /\ cl = [c \in Clients |-> Idle]
    /\ ops = {}
    /\ down = {}
    /\ faults = TRUE
    /\ grants = <<>>
    /\ reg = [ver |-> InitVersion, fence |-> 0]
    /\ snet = {}
    /\ swrites = <<>>
    /\ elapsed = 0

-----------------------------------------------------------------------------
(* Reading.  A client in "wait" reads the members in rounds; each answer  *)
(* is the member's record at the moment it was read, a member that is      *)
(* stopped does not answer, and an answer may be lost.  An answer that is  *)
(* still the member's current record when the client decides is the same  *)
(* as one read at that moment; so the model takes every answer at the      *)
(* decision, except that whenever a member's record changes, a client in   *)
(* the middle of a round may have read the old one: it captures it then    *)
(* (Deliver).  This has exactly the views of reading each member at any    *)
(* moment of the round, with far fewer states.                            *)

(* A grant built from view w: one conditional write per target member, all *)
(* with the same new version and token T.                                  *)
SendGrant(c, v, w, a) ==
    /\ MaySend(c)
    /\ NetworkHasRoom
    /\ ~TrackTokens
       \/ Len(grants) + Cardinality({o \in ops : ~o.landed}) < MaxGrants
    /\ LET held == a.held
           o == [kind |-> "grant", from |-> c, ver |-> v,
                 tok |-> IF TrackTokens /\ Variant = "quorum" THEN a.tok ELSE 0,
                 cond |-> [x \in Stores |-> IF x \in a.targets THEN w[x].ver ELSE -1],
                 pend |-> a.targets, ok |-> {}, landed |-> FALSE, hist |-> "open",
                 stale |-> a.stale,
                 tk |-> IF ~held THEN "acquire"
                        ELSE IF a.agreed THEN "agreed" ELSE "split"]
           next == [cl EXCEPT ![c] =
                      [@ EXCEPT !.phase = "acq", !.seen = NoneSeen, !.op = v,
                                !.opAge = 0, !.backoff = ~faults,
                                !.qv = NoQV, !.obsT = 0]]
       IN Commit(ops \cup {o}, grants, rec, next)
    /\ UNCHANGED <<elapsed, rec, down, faults, reg, snet, swrites>>

(* With answers from a majority the client builds the quorum record.  Not *)
(* held (absent, released): it sends a grant at once.  Held: it times the  *)
(* quorum version on its own clock, keeping t_obs while the version is     *)
(* unchanged and restarting it when the version changes; once it has seen *)
(* the same version for TakeoverWait it sends the takeover.  t_obs is      *)
(* taken when the view is complete (on arrival of the last answer), after  *)
(* every read in it; and the takeover may be built from a view whose reads *)
(* happened before the wait ran out (a client that paused after reading).  *)
Decide(c) ==
    LET s == cl[c]
        v == Fresh
    IN
    /\ s.phase = "wait"
    /\ \E A \in SUBSET {x \in Stores : s.seen[x] # Unread \/ x \notin down} :
        /\ Cardinality(A) >= Majority
        /\ LET w == [x \in Stores |->
                        IF x \notin A THEN NoAnswer
                        ELSE IF s.seen[x] = Unread THEN rec[x] ELSE s.seen[x]]
               a == Analyse(w, A)
               q == a.qv
           IN
           IF ~a.held \/ (q = s.qv /\ s.obsT = WaiterCap)
           THEN SendGrant(c, v, w, a)
           ELSE /\ Commit(ops, grants, rec,
                          [cl EXCEPT ![c] =
                             [@ EXCEPT !.seen = NoneSeen, !.qv = q,
                                       !.obsT = IF q = s.qv THEN @ ELSE 0]])
                /\ UNCHANGED <<elapsed, rec, down, faults, reg, snet, swrites>>

(* The grant's answers.  A majority applied it: the client holds, its     *)
(* lease running from the first application, and seals the state store;   *)
(* if its clock says that lease is over already, the grant is of no use.  *)
(* No majority can apply it any more: a conflict; the members that did    *)
(* apply it are released at once (its own release, sent to every member). *)
ReceiveGrant(c) ==
    LET s == cl[c] IN
    /\ s.phase = "acq"
    /\ \E o \in ops :
        /\ o.ver = s.op /\ o.from = c
        /\ \/ /\ Cardinality(o.ok) >= Majority
              /\ LET holds == s.opAge < HolderCap
                     next == [cl EXCEPT ![c] =
                                IF holds
                                THEN [Idle EXCEPT !.phase = "hold", !.tok = o.tok,
                                                  !.myVer = o.ver, !.leaseT = s.opAge,
                                                  !.backoff = s.backoff]
                                ELSE [s EXCEPT !.phase = "wait", !.op = 0,
                                               !.opAge = 0]]
                 IN /\ Commit(ops, grants, rec, next)
                    /\ snet' = IF holds /\ TrackTokens /\ MaxStateWrites > 0
                               THEN snet \cup {[kind |-> "seal", from |-> c,
                                                tok |-> o.tok,
                                                ifMatch |-> InitVersion]}
                               ELSE snet
           \/ /\ Hopeless(o)
              /\ LET next == [cl EXCEPT ![c] =
                                [s EXCEPT !.phase = "wait", !.op = 0, !.opAge = 0]]
                     release == [kind |-> "rel", from |-> c, ver |-> Fresh,
                                 tok |-> o.tok,
                                 cond |-> [x \in Stores |-> o.ver],
                                 pend |-> Stores, ok |-> {},
                                 landed |-> TRUE, hist |-> "done", tk |-> "none", stale |-> {}]
                 IN /\ Commit(IF o.ok # {} THEN ops \cup {release} ELSE ops,
                              grants, rec, next)
                    /\ UNCHANGED snet
    /\ UNCHANGED <<elapsed, rec, down, faults, reg, swrites>>

(* While faults last, a client may stop waiting for its grant's answers   *)
(* at any moment (its next attempt is a new grant); the grant may still    *)
(* land.                                                                  *)
GiveUp(c) ==
    /\ FaultsStop /\ faults /\ "giveup" \in FaultKinds
    /\ cl[c].phase = "acq"
    /\ LET next == [cl EXCEPT ![c] = [@ EXCEPT !.phase = "wait", !.op = 0,
                                               !.opAge = 0]]
       IN Commit(ops, grants, rec, next)
    /\ UNCHANGED <<elapsed, rec, down, faults, reg, snet, swrites>>

(* Heartbeat every lease/3 by the holder's clock, and release: the holder's *)
(* write, conditioned on the version it last wrote (with a majority), sent *)
(* unchanged to every member.  The release ends the lease at once.         *)
HolderOp(c, kind) ==
    [kind |-> kind, from |-> c, ver |-> Fresh, tok |-> cl[c].tok,
     cond |-> [x \in Stores |-> cl[c].myVer], pend |-> Stores, ok |-> {},
     landed |-> TRUE, hist |-> "done", tk |-> "none", stale |-> {}]

Heartbeat(c) ==
    /\ Believes(c)
    /\ MayShow(cl[c].leaseT, HeartbeatEvery)
    /\ cl[c].op = 0
    /\ cl[c].beats < MaxBeats
    /\ MaySend(c)
    /\ NetworkHasRoom
    /\ LET o == HolderOp(c, "hb")
           next == [cl EXCEPT ![c] = [@ EXCEPT !.op = o.ver, !.opAge = 0,
                                               !.beats = @ + 1,
                                               !.backoff = ~faults]]
       IN Commit(ops \cup {o}, grants, rec, next)
    /\ UNCHANGED <<elapsed, rec, down, faults, reg, snet, swrites>>

(* The heartbeat's answers: a majority applied it (and the client's clock *)
(* says it is still in time): the lease now runs from it, and it is the    *)
(* version the holder last wrote.  No majority can apply it any more: the  *)
(* lease is lost.                                                          *)
ReceiveBeat(c) ==
    LET s == cl[c] IN
    /\ s.phase = "hold"
    /\ s.op # 0
    /\ \E o \in ops :
        /\ o.ver = s.op /\ o.from = c
        /\ \/ /\ Cardinality(o.ok) >= Majority
              /\ Commit(ops, grants, rec,
                        [cl EXCEPT ![c] =
                           IF Believes(c) /\ s.opAge < HolderCap
                           THEN [s EXCEPT !.myVer = o.ver,
                                          !.leaseT = Min(s.leaseT, s.opAge),
                                          !.op = 0, !.opAge = 0]
                           ELSE AfterHold(s)])
           \/ /\ Hopeless(o)
              /\ Commit(ops, grants, rec, [cl EXCEPT ![c] = AfterHold(s)])
    /\ UNCHANGED <<elapsed, rec, down, faults, reg, snet, swrites>>

Release(c) ==
    /\ cl[c].phase = "hold"
    /\ cl[c].op = 0
    /\ MaySend(c)
    /\ NetworkHasRoom
    /\ Commit(ops \cup {HolderOp(c, "rel")}, grants, rec,
              [cl EXCEPT ![c] = [AfterHold(@) EXCEPT !.backoff = ~faults]])
    /\ UNCHANGED <<elapsed, rec, down, faults, reg, snet, swrites>>

-----------------------------------------------------------------------------
(* The members.  A write lands if the member is at the version it names;   *)
(* otherwise it is refused.  A grant installs max(the member's next token, *)
(* T) (perstore: the member's next token), an owner and the grant's        *)
(* version; a heartbeat installs its version; a release its version and    *)
(* released.  While faults last each member's write arrives on its own;    *)
(* once they have stopped, an operation reaches all its (running) members  *)
(* in one step: two clients' writes no longer interleave, which is what    *)
(* the randomized backoff after a conflict buys (with probability 1).      *)
NewRec(o, x) ==
    CASE o.kind = "grant" ->
            [ver |-> o.ver, owner |-> o.from, rel |-> FALSE,
             tok |-> IF ~TrackTokens THEN 0
                     ELSE IF Variant = "perstore" THEN rec[x].tok + 1
                     ELSE Max(rec[x].tok + 1, o.tok)]
      [] o.kind = "hb"  -> [rec[x] EXCEPT !.ver = o.ver]
      [] o.kind = "rel" -> [rec[x] EXCEPT !.ver = o.ver, !.rel = TRUE]

(* A grant enters the history when a member first applies it (with its    *)
(* token; perstore: the token that member installed, the one the client    *)
(* takes), and counts as granted once a majority applied it.  Ordering the *)
(* history by first application orders it as the grants were decided: a   *)
(* grant's view is read before any member applies it.                      *)
Deliver(o, D) ==
    LET app == {x \in D : rec[x].ver = o.cond[x]}
        r == [x \in Stores |-> IF x \in app THEN NewRec(o, x) ELSE rec[x]]
        first == ~o.landed /\ app # {}
        granted == o.hist = "open" /\ Cardinality(o.ok \cup app) >= Majority
    IN
    \E t \in (IF first /\ Variant = "perstore" THEN {r[x].tok : x \in app}
              ELSE {o.tok}) :
        LET o1 == [o EXCEPT !.pend = @ \ D, !.ok = @ \cup app, !.tok = t,
                            !.landed = @ \/ app # {},
                            !.hist = IF granted THEN "done" ELSE @]
            \* a grant that can no longer reach a majority still lands, and
            \* counts towards MaxGrants, but is never granted; without
            \* tokens there is no history (it would grow without bound)
            g1 == IF first /\ TrackTokens
                  THEN Append(grants, [tok |-> t,
                                       id |-> IF o.hist = "done" THEN -1 ELSE o.ver])
                  ELSE grants
            g2 == IF granted
                  THEN [i \in DOMAIN g1 |->
                          IF g1[i].id = o.ver THEN [g1[i] EXCEPT !.id = 0]
                          ELSE g1[i]]
                  ELSE g1
            \* clients in a round that may have read a changed member before
            \* this write
            readers == {p \in Clients \X app :
                          /\ cl[p[1]].phase = "wait"
                          /\ cl[p[1]].seen[p[2]] = Unread
                          /\ Cardinality({x \in Stores : cl[p[1]].seen[x] # Unread})
                               < MaxStale}
        IN \E K \in {k \in SUBSET readers :
                        \A p, p2 \in k : p[1] = p2[1] => p = p2} :
           /\ rec' = r
           /\ Commit((ops \ {o}) \cup {o1}, g2, r,
                     [d \in Clients |->
                        [cl[d] EXCEPT !.seen =
                           [x \in Stores |-> IF <<d, x>> \in K THEN rec[x] ELSE @[x]]]])

StoreLock(o) ==
    /\ o \in ops
    /\ IF faults
       THEN \E s \in o.pend \ down : Deliver(o, {s})
       ELSE o.pend # {} /\ Deliver(o, o.pend)
    /\ UNCHANGED <<elapsed, down, faults, reg, snet, swrites>>

-----------------------------------------------------------------------------
(* The state store (StateLock.tla, "The state store"): the holder seals    *)
(* right after its grant (fence := max(fence, token)) and writes only once *)
(* it has read its own seal, If-Match: version; the store accepts a write  *)
(* only if its token is at least the fence and its If-Match is current.    *)
WriteState(c) ==
    /\ TrackTokens
    /\ Len(swrites) < MaxStateWrites
    /\ Believes(c)
    /\ \A m \in snet : m.from # c
    /\ IF reg.fence > cl[c].tok
       THEN /\ Commit(ops, grants, rec, [cl EXCEPT ![c] = AfterHold(@)])
            /\ UNCHANGED snet
       ELSE /\ reg.fence = cl[c].tok
            /\ snet' = snet \cup {[kind |-> "write", from |-> c,
                                    tok |-> cl[c].tok, ifMatch |-> reg.ver]}
            /\ UNCHANGED <<elapsed, cl, ops, grants>>
    /\ UNCHANGED <<elapsed, rec, down, faults, reg, swrites>>

Accepts(m, r) ==
    IF m.kind = "seal" THEN m.tok > r.fence
    ELSE m.ifMatch = r.ver /\ m.tok >= r.fence

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
            /\ UNCHANGED <<elapsed, reg, swrites>>
    /\ UNCHANGED <<elapsed, rec, cl, ops, down, faults, grants>>

-----------------------------------------------------------------------------
(* Faults of the liveness model.  In the safety models they are already   *)
(* there: a stopped member is one whose writes are delayed and whose       *)
(* answers nobody waits for; a lost message is one delayed for ever; a     *)
(* crash is a pause that never ends.                                       *)

(* A member stops (answers nothing, applies nothing) and comes back with  *)
(* its old record; at most one is stopped at a time.                      *)
StopMember(s) ==
    /\ FaultsStop /\ faults /\ "stop" \in FaultKinds
    /\ down = {}
    /\ down' = {s}
    /\ UNCHANGED <<elapsed, rec, cl, ops, faults, grants, reg, snet, swrites>>

RestartMember ==
    /\ FaultsStop /\ faults
    /\ down # {}
    /\ down' = {}
    /\ UNCHANGED <<elapsed, rec, cl, ops, faults, grants, reg, snet, swrites>>

(* A write to one member is lost (its outcome stays unknown). *)
Lose ==
    /\ FaultsStop /\ faults /\ "lose" \in FaultKinds
    /\ \E o \in ops, s \in Stores :
        /\ s \in o.pend
        /\ Commit((ops \ {o}) \cup {[o EXCEPT !.pend = @ \ {s}]}, grants, rec, cl)
    /\ UNCHANGED <<elapsed, rec, down, faults, reg, snet, swrites>>

(* A holder crashes: no more steps; its writes stay on their way. *)
Crash(c) ==
    /\ FaultsStop /\ faults /\ "crash" \in FaultKinds
    /\ cl[c].phase = "hold"
    /\ Commit(ops, grants, rec, [cl EXCEPT ![c] = [Idle EXCEPT !.phase = "crashed"]])
    /\ UNCHANGED <<elapsed, rec, down, faults, reg, snet, swrites>>

(* From some point on there are no more faults except at most one stopped *)
(* member (for good): no loss (writes to the stopped member are lost),    *)
(* no crash, every write arrives within the tick it was sent in.          *)
StopFaults ==
    /\ FaultsStop
    /\ faults
    /\ faults' = FALSE
    /\ elapsed' = 0
    /\ LET settled == Settle(ops, rec, cl, down) IN
       /\ ops' = settled
       /\ grants' = SettleGrants(grants, settled)
    /\ UNCHANGED <<rec, cl, down, reg, snet, swrites>>

-----------------------------------------------------------------------------
(* Real time advances by one tick.  Every client's clock runs on, paused  *)
(* or not, and each running timer moves within the window its clock       *)
(* allows (StateLock.tla, "Clocks"): a holder's lease timer, the age of    *)
(* the operation whose answers it awaits (once a member applied it), a     *)
(* waiter's t_obs timer.  A holder whose clock says the lease is over has *)
(* lost it.                                                                *)
(* Liveness model, once faults have stopped: clients act without delay    *)
(* (time advances only when no client can take a step that changes the    *)
(* state: read and decide, act on answers), which is what makes a bound   *)
(* on the ticks to acquisition meaningful.                                  *)
ClientProgress(c) ==
    \/ Decide(c) \/ ReceiveGrant(c) \/ ReceiveBeat(c)

Urgent ==
    FaultsStop /\ ~faults => \A c \in Clients : ~ENABLED <<ClientProgress(c)>>_vars

Started(c) == \E o \in ops : o.ver = cl[c].op /\ o.from = c /\ o.ok # {}

AgeMoves(c) ==
    IF cl[c].op # 0 /\ Started(c) THEN Advance(cl[c].opAge, LeaseValidity)
    ELSE <<cl[c].opAge>>

TickMoves(c) ==
    LET s == [cl[c] EXCEPT !.backoff = FALSE]
        ages == AgeMoves(c)
    IN
    CASE s.phase = "hold" ->
            LET ls == Advance(s.leaseT, LeaseValidity) IN
            [i \in 1..(Len(ls) * Len(ages)) |->
                LET l == ls[(i - 1) \div Len(ages) + 1]
                    a == ages[((i - 1) % Len(ages)) + 1]
                IN IF l = HolderCap THEN AfterHold(s)
                   ELSE [s EXCEPT !.leaseT = l, !.opAge = a]]
      [] s.phase = "acq" ->
            [i \in DOMAIN ages |-> [s EXCEPT !.opAge = ages[i]]]
      [] s.phase = "wait" /\ s.qv # NoQV ->
            LET ns == Advance(s.obsT, TakeoverWait) IN
            [i \in DOMAIN ns |-> [s EXCEPT !.obsT = ns[i]]]
      [] OTHER -> <<s>>

Tick ==
    /\ faults \/ ((\A o \in ops : o.pend = {}) /\ snet = {})
    /\ Urgent
    /\ elapsed' = IF FaultsStop /\ ~faults THEN Min(elapsed + 1, LiveBound)
                  ELSE elapsed
    /\ LET M == [c \in Clients |-> TickMoves(c)] IN
       \E pick \in [Clients -> 1..4] :
          /\ \A c \in Clients : pick[c] <= Len(M[c])
          /\ LET next == [c \in Clients |-> M[c][pick[c]]] IN
             /\ Commit(ops, grants, rec, next)
    /\ UNCHANGED <<rec, down, faults, reg, snet, swrites>>

-----------------------------------------------------------------------------
Next ==
    \/ Tick
    \/ \E c \in Clients :
        \/ Decide(c) \/ ReceiveGrant(c) \/ GiveUp(c)
        \/ Heartbeat(c) \/ ReceiveBeat(c) \/ Release(c)
        \/ WriteState(c) \/ Crash(c)
    \/ \E o \in ops : StoreLock(o)
    \/ \E m \in snet : StoreState(m)
    \/ \E s \in Stores : StopMember(s)
    \/ RestartMember
    \/ Lose
    \/ StopFaults

Spec == Init /\ [][Next]_vars

(* Fairness for the liveness model: real time advances; faults stop; the  *)
(* members apply every write; clients take their steps (read, decide, act *)
(* on answers).  A holder does not hold for ever without it: it sends at  *)
(* most MaxBeats heartbeats per hold, so its clock ends the lease.        *)
Fairness ==
    /\ WF_vars(Tick)
    /\ WF_vars(StopFaults)
    /\ WF_vars(\E o \in ops : StoreLock(o))
    /\ \A c \in Clients : WF_vars(ClientProgress(c))

LiveSpec == Spec /\ Fairness

(* Liveness from the moment faults stop.  Checking LiveSpec through a     *)
(* whole fault phase is far beyond TLC's reach without symmetry, so the   *)
(* liveness model starts where faults have just stopped, from every state *)
(* of a family that covers what a fault phase can leave behind: each      *)
(* member absent or holding one of up to three writes (held or released, *)
(* the same write on every member it landed on), at most one member down  *)
(* for good, each client waiting or crashed (a crashed holder's records   *)
(* stay held), at least one client waiting.  Writes still on their way    *)
(* when faults stop are left out: each would only land (a record of the   *)
(* family) or be lost.  Owners do not matter to a waiting client.         *)
LiveRecs ==
    {Absent} \cup
    {[ver |-> v, owner |-> NoOne, tok |-> 0, rel |-> r] :
        v \in 1..3, r \in BOOLEAN}

LiveInit ==
    /\ rec \in [Stores -> LiveRecs]
    /\ \A x, y \in Stores : rec[x].ver = rec[y].ver => rec[x] = rec[y]
    /\ cl \in [Clients -> {Idle, [Idle EXCEPT !.phase = "crashed"]}]
    /\ \E c \in Clients : cl[c].phase = "wait"
    /\ ops = {}
    /\ down \in {{}} \cup {{x} : x \in Stores}
    /\ faults = FALSE
    /\ grants = <<>>
    /\ reg = [ver |-> InitVersion, fence |-> 0]
    /\ snet = {}
    /\ swrites = <<>>
    /\ elapsed = 0

LiveAfterFaults == LiveInit /\ [][Next]_vars /\ Fairness

-----------------------------------------------------------------------------
(* The properties of PROTOCOL.md, with the names of StateLock.tla *)

(* No two clients believe they hold the key at the same real instant. *)
MutualExclusion ==
    \A c, d \in Clients : c # d => ~(Believes(c) /\ Believes(d))

(* The tokens granted strictly increase: of any two grants a majority     *)
(* applied, the one a member applied first has the smaller token.         *)
Granted(i) == grants[i].id = 0
TokenMonotonic ==
    \A i, j \in DOMAIN grants :
        i < j /\ Granted(i) /\ Granted(j) => grants[i].tok < grants[j].tok

(* Accepted state writes have non-decreasing tokens. *)
FencingMonotonic ==
    \A i, j \in DOMAIN swrites : i < j => swrites[i].tok <= swrites[j].tok

(* Every accepted state write names the version the previous one wrote. *)
NoLostUpdate ==
    \A i \in DOMAIN swrites :
        swrites[i].pre = IF i = 1 THEN InitVersion ELSE swrites[i - 1].post

(* Once a holder with token t has sealed the state, no write with a token  *)
(* below t is accepted.                                                    *)
SealFencesStaleWriters ==
    \A i \in DOMAIN swrites : swrites[i].tok >= swrites[i].sealed

(* Only the current owner's release or heartbeat succeeds: on every member *)
(* where a heartbeat or release on its way would apply now, the record is  *)
(* held by its sender under the very grant (token) it holds.               *)
OwnerOnlyRelease ==
    \A o \in ops :
        o.kind \in {"hb", "rel"} =>
            \A s \in o.pend :
                rec[s].ver = o.cond[s] =>
                    /\ rec[s].owner = o.from
                    /\ ~rec[s].rel
                    /\ rec[s].tok = o.tok

(* Liveness: once faults stop (at most one member stopped for good), a     *)
(* client that wants the lock gets it (or has crashed).                    *)
Waiting(c) == cl[c].phase \in {"wait", "acq"}
QuorumEventualAcquire ==
    \A c \in Clients : Waiting(c) ~> (Believes(c) \/ cl[c].phase = "crashed")

(* The same, as a bound TLC can check with symmetry, in the liveness model *)
(* (one acquisition per client, clients that act without delay once        *)
(* faults have stopped): LiveBound ticks after faults stopped no client is *)
(* waiting any more: each has held the lock, or holds it, or crashed.      *)
QuorumAcquiresInTime ==
    elapsed = LiveBound => \A c \in Clients : ~Waiting(c)

-----------------------------------------------------------------------------
(* More checks *)

TypeOK ==
    /\ \A s \in Stores :
        /\ rec[s].owner \in Clients \cup {NoOne}
        /\ rec[s].rel \in BOOLEAN
        /\ rec[s].ver >= 0
    /\ \A c \in Clients :
        /\ cl[c].phase \in {"wait", "acq", "hold", "done", "crashed"}
        /\ cl[c].leaseT \in 0..(HolderCap - 1)
        /\ cl[c].obsT \in 0..WaiterCap
        /\ cl[c].opAge \in 0..HolderCap
    /\ down \subseteq Stores /\ Cardinality(down) <= 1
    /\ Cardinality(ops) <= MaxOps + Cardinality(Clients)

(* Stronger than MutualExclusion: whoever believes it holds is the owner, *)
(* under its own grant, on a majority of the members.                     *)
BelieverHoldsMajority ==
    \A c \in Clients :
        Believes(c) =>
            Cardinality({s \in Stores : /\ rec[s].owner = c
                                        /\ ~rec[s].rel
                                        /\ rec[s].tok = cl[c].tok})
                >= Majority

(* Sanity checks that TLC is EXPECTED to find violated, to show that the  *)
(* model is not vacuous: a client comes to hold by a takeover timed on an *)
(* agreed version, and on a split view's digest; a heartbeat renews a     *)
(* lease; a client releases the members that applied a grant that lost;   *)
(* a grant repairs a member that had fallen behind (it missed a grant:    *)
(* its token jumps by more than one); a grant lands on a stale member      *)
(* (NoStaleRepair).                                                        *)
HoldsBy(c, kind) ==
    /\ cl[c].phase = "acq" /\ cl'[c].phase = "hold"
    /\ \E o \in ops : o.ver = cl[c].op /\ o.tk = kind
NoAgreedTakeover == [][\A c \in Clients : ~HoldsBy(c, "agreed")]_vars
NoSplitTakeover  == [][\A c \in Clients : ~HoldsBy(c, "split")]_vars
NoRenewal ==
    [][\A c \in Clients :
         cl[c].phase = "hold" /\ cl'[c].phase = "hold" /\ cl'[c].tok = cl[c].tok
            => cl'[c].leaseT >= cl[c].leaseT]_vars
NoConflictRelease ==
    [][\A c \in Clients :
         ~(cl[c].phase = "acq" /\ cl'[c].phase = "wait"
           /\ \E o \in ops' \ ops : o.kind = "rel" /\ o.from = c)]_vars
(* A grant lands on a stale member of an agreed view (held at another     *)
(* version, token no larger than the agreed record's).                   *)
NoStaleRepair ==
    [][\A o \in ops : \A x \in o.stale \cap o.pend : rec'[x].ver # o.ver]_vars

(* A grant lands on a member that missed an earlier grant (one that came  *)
(* back, or was left out of a view): its token jumps by more than one.    *)
NoRepair ==
    [][\A s \in Stores :
         rec'[s].tok # rec[s].tok => rec'[s].tok <= rec[s].tok + 1]_vars
=============================================================================
