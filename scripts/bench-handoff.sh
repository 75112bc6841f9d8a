#!/usr/bin/env bash
# Cross-process lone-waiter hand-off: one `statelock exec` holds KEY for
# HOLD seconds and releases; one other `statelock exec` process waits for
# KEY. Prints p50 / p90 / max over the rounds of the time from the holder's
# `lock.released` audit event to the waiter's `lock.acquired` event (both
# written after the store answered, on this machine's wall clock).
#
#   scripts/bench-handoff.sh STORE_URL [ROUNDS] [HOLD]
#   e.g. scripts/bench-handoff.sh file:///tmp/handoff 30 1
#
# Builds and uses target/release/statelock.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
store=${1:?usage: scripts/bench-handoff.sh STORE_URL [ROUNDS] [HOLD]}
rounds=${2:-30}
hold=${3:-1}
bin="$root/target/release/statelock"
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin statelock
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
key="handoff/$$"

for ((r = 0; r < rounds; r++)); do
    "$bin" --store "$store" --audit-log "$work/holder.jsonl" exec --key "$key" -- sleep "$hold" &
    holder=$!
    # Start the waiter once the holder holds the key.
    for _ in $(seq 1 200); do
        [[ -s "$work/holder.jsonl" ]] && grep -q '"lock.acquired"' "$work/holder.jsonl" && break
        sleep 0.01
    done
    "$bin" --store "$store" --audit-log "$work/waiter.jsonl" exec --key "$key" --wait 60s -- true 2>>"$work/waiter.log"
    wait "$holder"
    cat "$work/holder.jsonl" >> "$work/all-holder.jsonl"
    cat "$work/waiter.jsonl" >> "$work/all-waiter.jsonl"
    rm -f "$work/holder.jsonl" "$work/waiter.jsonl"
done

python3 - "$work/all-holder.jsonl" "$work/all-waiter.jsonl" <<'PY'
import json, sys
from datetime import datetime
def events(path, name):
    out = []
    for line in open(path):
        e = json.loads(line)
        if e["event"] == name:
            out.append(datetime.strptime(e["ts"], "%Y-%m-%dT%H:%M:%S.%fZ"))
    return out
released = events(sys.argv[1], "lock.released")
acquired = events(sys.argv[2], "lock.acquired")
ms = sorted((a - r).total_seconds() * 1e3 for r, a in zip(released, acquired))
q = lambda p: ms[min(len(ms) - 1, round((len(ms) - 1) * p))]
print(f"rounds {len(ms)}: release -> waiter's grant p50 {q(0.5):.0f} ms, "
      f"p90 {q(0.9):.0f} ms, max {ms[-1]:.0f} ms")
PY
