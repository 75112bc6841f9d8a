------------------------- MODULE MCStateLockQuorum -------------------------
(* Model-checking wrapper for StateLockQuorum: model values and the        *)
(* symmetry.                                                               *)
EXTENDS StateLockQuorum, TLC

CONSTANTS c1, c2, c3, s1, s2, s3

MCClients2 == {c1, c2}
MCClients3 == {c1, c2, c3}
MCStores == {s1, s2, s3}

(* Clients are interchangeable, and so are members (nothing in the model   *)
(* orders them); a symmetry permutes both at once.  Not with TLC's        *)
(* temporal checking (LiveSpec): it cannot be combined with symmetry.  The *)
(* liveness model checks the invariant QuorumAcquiresInTime instead.       *)
QuorumSymmetry ==
    {[x \in Clients \cup Stores |-> IF x \in Clients THEN p[x] ELSE q[x]] :
        p \in Permutations(Clients), q \in Permutations(Stores)}
=============================================================================
