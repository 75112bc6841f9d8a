---------------------------- MODULE MCStateLock ----------------------------
(* Model-checking wrapper for StateLock: model values and the symmetry. *)
EXTENDS StateLock, TLC

CONSTANTS c1, c2, c3

MCClients == {c1, c2, c3}

(* Clients are interchangeable (safety models only: TLC cannot combine   *)
(* symmetry with liveness checking).                                     *)
ClientSymmetry == Permutations(Clients)
=============================================================================
