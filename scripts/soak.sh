#!/usr/bin/env bash
# Long simulator sweeps, beyond what scripts/test.sh runs within its time
# budget: 10,000 seeds of statelock under every fault, more seeds of every
# planted bug, larger scenarios, and the quorum lock over three store hosts.
# Exits non-zero on any unexpected result.
# About an hour on 2 cores; SOAK_SEEDS changes the main sweep's size.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seeds=${SOAK_SEEDS:-10000}
cargo build --release -p statelock-sim --quiet
sim=target/release/statelock-sim
"$sim" sweep --seeds "0..$seeds" --protocol statelock --faults all
"$sim" sweep --seeds "0..2000" --protocol statelock --faults all --clients 8 --keys 2
"$sim" sweep --seeds "0..1000" --protocol naive --faults all --expect-violations
"$sim" sweep --seeds "0..1000" --protocol statelock --drift beyond --faults all --expect-violations
"$sim" sweep --seeds "0..1000" --bug no-seal --expect-violations
"$sim" sweep --seeds "0..1000" --bug unfenced-save --expect-violations
"$sim" sweep --seeds "0..1000" --supervisor late-kill --expect-violations
# the quorum lock: one faulty store host at a time must break nothing
"$sim" sweep --seeds "0..2000" --stores 3 --faults all
"$sim" sweep --seeds "0..300" --stores 3 --bug per-store-token --expect-violations
# a store host that loses acknowledged writes is outside the fault model:
# the quorum may repeat a token (allowed here; rare, so not expected)
"$sim" sweep --seeds "0..300" --stores 3 --faults all,store-wipe
