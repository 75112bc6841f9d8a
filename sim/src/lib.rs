//! Deterministic simulation of the statelock client (see README).
