#!/usr/bin/env bash
# The whole statelock test suite, from a fresh clone, with nothing installed by
# hand: lint, docs, unit + integration + property tests, loom, the real services
# (DynamoDB Local, the S3 server, Terraform — installed and started by
# scripts/services.sh), the simulator sweeps and the TLA+ model checks.
#
#   scripts/test.sh            everything
#   STATELOCK_TEST_QUICK=1     smaller simulator sweeps (local iteration)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

if [[ "${CI:-}" == "true" ]]; then
    export CARGO_INCREMENTAL=0
fi
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

suite_start=$SECONDS
stage_start=$SECONDS
stage() {
    local now=$SECONDS
    if [[ -n "${stage_name:-}" ]]; then
        printf '== %s: done in %ss\n' "$stage_name" "$((now - stage_start))" >&2
    fi
    stage_name=$1
    stage_start=$now
    printf '\n== %s\n' "$stage_name" >&2
}

stage "toolchain"
cargo --version >&2
rustup component list --installed 2>/dev/null | grep -E '^(rustfmt|clippy)' >&2 || true

stage "format"
cargo fmt --all -- --check

stage "clippy"
cargo clippy --workspace --all-targets --features testkit -- -D warnings

stage "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --features testkit --quiet

stage "services (DynamoDB Local, S3 server, Terraform)"
services="$root/scripts/services.sh"
trap '"$services" stop >/dev/null 2>&1 || true' EXIT
service_env=$("$services" start)
eval "$service_env"
export STATELOCK_TEST_DYNAMODB_ENDPOINT STATELOCK_TEST_S3_ENDPOINT AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION

stage "unit, integration, property and service tests"
cargo test --workspace --exclude statelock-sim --features testkit --no-fail-fast

stage "simulator tests (release: a debug build runs the seeded sweeps ~10x slower)"
cargo test --release -p statelock-sim --no-fail-fast

stage "loom (guard heartbeat/release/drop race, memory store CAS)"
RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 \
    cargo test --lib --release --no-default-features --target-dir target/loom -- loom

stage "simulator sweeps"
# Sized to keep the whole suite within 30 minutes on 2 cores; scripts/soak.sh
# runs the long sweeps.
seeds=240
bug_seeds=60
queue_seeds=30
quorum_seeds=60
quorum_bug_seeds=20
if [[ -n "${STATELOCK_TEST_QUICK:-}" ]]; then
    seeds=100
    bug_seeds=30
    queue_seeds=15
    quorum_seeds=20
    quorum_bug_seeds=10
fi
cargo build --release -p statelock-sim --quiet
sim=target/release/statelock-sim
# statelock under every fault: any violation fails the suite
"$sim" sweep --seeds "0..$seeds" --protocol statelock --faults all
# the seed design's naive protocol must be caught
"$sim" sweep --seeds "0..$bug_seeds" --protocol naive --faults all --expect-violations
# clocks beyond rho: MutualExclusion may break, fencing must hold
"$sim" sweep --seeds "0..$bug_seeds" --protocol statelock --drift beyond --faults all --expect-violations
# planted state-store bugs must be caught by SealFencesStaleWriters
"$sim" sweep --seeds "0..$bug_seeds" --bug no-seal --expect-violations
"$sim" sweep --seeds "0..$bug_seeds" --bug unfenced-save --expect-violations
# a supervisor that kills too late must be caught by SupervisedExclusion
"$sim" sweep --seeds "0..$bug_seeds" --supervisor late-kill --expect-violations
# without faults every grant goes to the head of the hand-off queue
# (FifoGrant), also with waiters that give up and leave
"$sim" sweep --seeds "0..$queue_seeds" --faults none
"$sim" sweep --seeds "0..$queue_seeds" --faults none --acquire-wait-ms 300
# a client that jumps the queue must be caught by FifoGrant
"$sim" sweep --seeds "0..$queue_seeds" --faults none --bug queue-jump --expect-violations
# the quorum lock over three store hosts, one of them faulty at a time
"$sim" sweep --seeds "0..$quorum_seeds" --stores 3 --faults all
# members that install their own next token must be caught by TokenMonotonic
"$sim" sweep --seeds "0..$quorum_bug_seeds" --stores 3 --bug per-store-token --expect-violations

stage "formal specs (TLC)"
specs/check.sh

stage "summary"
printf 'all stages passed in %ss\n' "$((SECONDS - suite_start))"
