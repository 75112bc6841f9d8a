#!/usr/bin/env bash
# Contention across processes: PROCS shell loops run `statelock exec --key
# KEY -- true` back to back for DURATION seconds, every exec a new process
# (a CI job that deploys again and again). Prints, from the audit logs:
# critical sections, CS per loop (min-max) and Jain's index, the share of
# grants that went to the loop that had just released (barging), wait p50 /
# p99 / max (exec started -> lock.acquired) and hand-off p50 / p99
# (lock.released -> the next lock.acquired).
#
#   scripts/bench-processes.sh STORE_URL [PROCS] [DURATION]
#   e.g. scripts/bench-processes.sh file:///tmp/contend 8 20
#
# Uses target/release/statelock (built here), or STATELOCK_BIN if set (to
# measure another build in the same run).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
store=${1:?usage: scripts/bench-processes.sh STORE_URL [PROCS] [DURATION]}
procs=${2:-8}
duration=${3:-20}
bin=${STATELOCK_BIN:-}
if [[ -z "$bin" ]]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin statelock
    bin="$root/target/release/statelock"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
key="contend/$$"

for ((p = 0; p < procs; p++)); do
    (
        end=$((SECONDS + duration))
        while ((SECONDS < end)); do
            date +%s.%N >> "$work/starts.$p"
            "$bin" --store "$store" --audit-log "$work/audit.$p.jsonl" \
                exec --key "$key" --wait 300s -- true 2>> "$work/errors.$p" \
                || echo "exit $?" >> "$work/failed.$p"
        done
    ) &
done
wait

python3 - "$work" "$procs" <<'PY'
import glob, json, os, sys
from datetime import datetime, timezone
work, procs = sys.argv[1], int(sys.argv[2])
def ts(s):
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
events, waits, failed = [], [], 0
for p in range(procs):
    path = f"{work}/audit.{p}.jsonl"
    acquired = []
    if os.path.exists(path):
        for line in open(path):
            e = json.loads(line)
            if e["event"] in ("lock.acquired", "lock.released"):
                events.append((ts(e["ts"]), e["event"], p, e.get("token")))
            if e["event"] == "lock.acquired":
                acquired.append(ts(e["ts"]))
    starts = [float(l) for l in open(f"{work}/starts.{p}")] if os.path.exists(f"{work}/starts.{p}") else []
    waits += [(a - s) * 1e3 for s, a in zip(starts, acquired)]
    if os.path.exists(f"{work}/failed.{p}"):
        failed += sum(1 for _ in open(f"{work}/failed.{p}"))
# Order by token: the store's order of grants.
grants = sorted((t, tok, p) for t, ev, p, tok in events if ev == "lock.acquired")
grants.sort(key=lambda g: g[1])
releases = {tok: (t, p) for t, ev, p, tok in events if ev == "lock.released"}
per = [sum(1 for g in grants if g[2] == p) for p in range(procs)]
n = len(grants)
jain = (sum(per) ** 2) / (procs * sum(c * c for c in per)) if n else 0.0
same, handoff = 0, []
for prev, cur in zip(grants, grants[1:]):
    rel = releases.get(prev[1])
    if rel is None:
        continue
    if rel[1] == cur[2]:
        same += 1
    handoff.append((cur[0] - rel[0]) * 1e3)
def q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round((len(xs) - 1) * p))] if xs else float("nan")
tokens = [g[1] for g in grants]
gaps = sum(1 for a, b in zip(tokens, tokens[1:]) if b != a + 1)
print(f"processes {procs}: {n} critical sections, {failed} failed execs, token gaps {gaps}")
print(f"CS per loop {min(per)}-{max(per)}, Jain {jain:.3f}; "
      f"next grant to the loop that just released: {same}/{max(1, len(handoff))} "
      f"({100.0 * same / max(1, len(handoff)):.0f}%; served in turn: 0%, at random: {100.0 / procs:.0f}%)")
print(f"wait p50 {q(waits, .5):.0f} ms, p99 {q(waits, .99):.0f} ms, max {max(waits, default=float('nan')):.0f} ms; "
      f"hand-off p50 {q(handoff, .5):.1f} ms, p99 {q(handoff, .99):.1f} ms")
PY
