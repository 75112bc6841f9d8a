#!/usr/bin/env bash
# The main job on the embedded default store (a local directory; no services):
#   1. two deploys of one stack started at once run one after the other, with
#      increasing fencing tokens;
#   2. `statelock locks` shows the store;
#   3. a holder killed with SIGKILL is taken over one lease later, with a
#      larger token;
#   4. a lock left by a killed holder is force-unlocked, then acquired at once.
# Exits non-zero if any check fails. About 15 s after the build.
#
# Usage: scripts/demo.sh            builds the embedded-only binary (the file
#                                   store needs no AWS adapters, so it builds
#                                   with --no-default-features in a minute or two)
#        STATELOCK_BIN=path/to/statelock scripts/demo.sh   uses that binary
set -euo pipefail

cd "$(dirname "$0")/.."

if [[ -n "${STATELOCK_BIN:-}" ]]; then
    BIN="$STATELOCK_BIN"
else
    echo "== building statelock (embedded default only: cargo build --release --no-default-features)"
    cargo build --release --quiet --no-default-features --bin statelock --target-dir target/embedded
    BIN="target/embedded/release/statelock"
fi
[[ -x "$BIN" ]] || { echo "demo: no statelock binary at $BIN" >&2; exit 1; }

tmp="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

export STATELOCK_STORE="file://$tmp/locks"
KEY="demo:stack:production"
LOG="$tmp/deploys.log"
export LOG
failures=0
check() { # check DESCRIPTION COMMAND...
    if "${@:2}"; then echo "  ok: $1"; else echo "  FAILED: $1"; failures=$((failures + 1)); fi
}
# Waits (at most 10 s) until FILE exists and is not empty.
wait_for_file() {
    for _ in $(seq 200); do [[ -s "$1" ]] && return 0; sleep 0.05; done
    echo "demo: $1 never appeared" >&2
    return 1
}
# Kills PIDs with SIGKILL (a crash) and waits until they are gone. The
# processes were disowned, so the shell does not report them as killed.
crash() {
    kill -9 "$@"
    for _ in $(seq 200); do kill -0 "$@" 2>/dev/null || return 0; sleep 0.05; done
    echo "demo: $* did not die" >&2
    return 1
}
token_of() { # the token printed as "token=N" in FILE
    sed -n 's/.*token=\([0-9]*\).*/\1/p' "$1" | head -n 1
}

echo
echo "== 1. two deploys of $KEY started at the same time (store $STATELOCK_STORE)"
deploy='echo "[$1] running with token=$STATELOCK_TOKEN"; echo "start $1 $STATELOCK_TOKEN" >> "$LOG"; sleep 2; echo "end $1 $STATELOCK_TOKEN" >> "$LOG"; echo "[$1] done"'
"$BIN" exec --key "$KEY" --lease 3s --who alice --operation apply -- sh -c "$deploy" sh alice &
alice=$!
"$BIN" exec --key "$KEY" --lease 3s --who bob --operation apply -- sh -c "$deploy" sh bob &
bob=$!
pids+=("$alice" "$bob")
alice_rc=0; wait "$alice" || alice_rc=$?
bob_rc=0; wait "$bob" || bob_rc=$?
echo "-- deploy log:"
sed 's/^/   /' "$LOG"
check "both deploys exited 0 (alice $alice_rc, bob $bob_rc)" test "$alice_rc" -eq 0 -a "$bob_rc" -eq 0
serialised() {
    awk 'NR % 2 == 1 { if ($1 != "start") exit 1; who = $2; tok = $3; if (tok <= last) exit 1; last = tok }
         NR % 2 == 0 { if ($1 != "end" || $2 != who || $3 != tok) exit 1 }
         END { if (NR != 4) exit 1 }' "$LOG"
}
check "the second deploy started after the first ended, with a larger token" serialised
first_tokens="$(awk '$1 == "start" { printf "%s%s", sep, $3; sep = " then " }' "$LOG")"

echo
echo "== 2. statelock locks"
"$BIN" locks

echo
echo "== 3. a holder crashes (kill -9) while holding $KEY with --lease 2s"
"$BIN" exec --key "$KEY" --lease 2s --who carol --operation apply -- \
    sh -c 'echo $$ > "$0"; echo "[carol] running with token=$STATELOCK_TOKEN"; exec sleep 60' "$tmp/carol.pid" \
    > "$tmp/carol.out" &
carol=$!
disown "$carol"
pids+=("$carol")
wait_for_file "$tmp/carol.pid"
pids+=("$(cat "$tmp/carol.pid")")
cat "$tmp/carol.out"
crash "$carol" "$(cat "$tmp/carol.pid")"
echo "-- killed carol's statelock and command; the record still says held:"
"$BIN" locks
echo "-- dave waits for the lease to run out, then takes over:"
start=$(date +%s%N)
"$BIN" exec --key "$KEY" --lease 3s --wait 30s --who dave --operation apply -- \
    sh -c 'echo "[dave] took over with token=$STATELOCK_TOKEN"' > "$tmp/dave.out"
took_ms=$(( ($(date +%s%N) - start) / 1000000 ))
cat "$tmp/dave.out"
carol_token="$(token_of "$tmp/carol.out")"
dave_token="$(token_of "$tmp/dave.out")"
check "dave's token $dave_token is larger than crashed carol's $carol_token (took over after ${took_ms} ms)" \
    test "${dave_token:-0}" -gt "${carol_token:-0}"

echo
echo "== 4. force-unlock a lock whose holder was killed (lease 1h: it would stay held)"
"$BIN" exec --key "$KEY" --lease 1h --who erin --operation destroy -- \
    sh -c 'echo $$ > "$0"; exec sleep 60' "$tmp/erin.pid" &
erin=$!
disown "$erin"
pids+=("$erin")
wait_for_file "$tmp/erin.pid"
pids+=("$(cat "$tmp/erin.pid")")
crash "$erin" "$(cat "$tmp/erin.pid")"
echo "-- killed erin's statelock and command; nobody could take the lock over for an hour:"
"$BIN" status "$KEY"
unlock_rc=0
"$BIN" unlock "$KEY" --force --yes --who oncall || unlock_rc=$?
check "unlock --force --yes exited 0" test "$unlock_rc" -eq 0
"$BIN" exec --key "$KEY" --wait 0s --who frank -- \
    sh -c 'echo "[frank] got it at once with token=$STATELOCK_TOKEN"' > "$tmp/frank.out"
cat "$tmp/frank.out"
frank_token="$(token_of "$tmp/frank.out")"
check "frank's token $frank_token is larger than dave's $dave_token" \
    test "${frank_token:-0}" -gt "${dave_token:-0}"

echo
echo "== 5. deploys keep their state fenced: pull, change, push under exec"
export STATELOCK_STATE_STORE="file://$tmp/state"
SKEY="stack:demo:env:production"
# Adds one to outputs.counter of the state document in $1.
bump='n=$(grep -o "\"counter\": [0-9]*" "$1" | grep -o "[0-9]*$"); if [ -n "$n" ]; then sed -i "s/\"counter\": $n/\"counter\": $((n+1))/" "$1"; else sed -i "s/\"outputs\": {}/\"outputs\": {\"counter\": 1}/" "$1"; fi'
deploy_state="bump() { $bump; }; \"$BIN\" state pull $SKEY --to \"\$1\" && bump \"\$1\" && \"$BIN\" state push \"\$1\""
"$BIN" exec --key "$SKEY" --who grace --operation apply -- sh -c "$deploy_state" sh "$tmp/grace.json" &
grace=$!
"$BIN" exec --key "$SKEY" --who heidi --operation apply -- sh -c "$deploy_state" sh "$tmp/heidi.json" &
heidi=$!
pids+=("$grace" "$heidi")
grace_rc=0; wait "$grace" || grace_rc=$?
heidi_rc=0; wait "$heidi" || heidi_rc=$?
counter="$("$BIN" state show "$SKEY" --output json | grep -o '"counter": [0-9]*' | grep -o '[0-9]*$')"
check "both deploys pushed (grace $grace_rc, heidi $heidi_rc); the counter is ${counter:-none}" \
    test "$grace_rc" -eq 0 -a "$heidi_rc" -eq 0 -a "${counter:-0}" -eq 2

echo "-- ivan pulls, then his statelock is frozen (SIGSTOP) past its lease; judy takes over and pushes:"
"$BIN" exec --key "$SKEY" --lease 2s --who ivan --operation apply -- sh -c \
    "bump() { $bump; }; \"$BIN\" state pull $SKEY --to '$tmp/ivan.json'; echo pulled > '$tmp/ivan.pulled'; while [ ! -e '$tmp/ivan.go' ]; do sleep 0.05; done; bump '$tmp/ivan.json'; \"$BIN\" state push '$tmp/ivan.json'; echo \$? > '$tmp/ivan.rc'" \
    2> "$tmp/ivan.err" &
ivan=$!
pids+=("$ivan")
wait_for_file "$tmp/ivan.pulled" || { sed "s/^/   /" "$tmp/ivan.err"; exit 1; }
kill -STOP "$ivan"
"$BIN" exec --key "$SKEY" --wait 30s --who judy --operation apply -- sh -c "$deploy_state" sh "$tmp/judy.json"
touch "$tmp/ivan.go"
wait_for_file "$tmp/ivan.rc"
echo "-- ivan's push (after judy's takeover):"
sed 's/^/   /' "$tmp/ivan.err"
check "ivan's stale push was refused (exit $(cat "$tmp/ivan.rc"), 75 = stale)" test "$(cat "$tmp/ivan.rc")" -eq 75
counter="$("$BIN" state show "$SKEY" --output json | grep -o '"counter": [0-9]*' | grep -o '[0-9]*$')"
check "the state holds judy's push: counter ${counter:-none}" test "${counter:-0}" -eq 3
kill -CONT "$ivan" 2>/dev/null || true
wait "$ivan" 2>/dev/null || true
echo "-- statelock state history $SKEY:"
"$BIN" state history "$SKEY"
versions="$("$BIN" state history "$SKEY" --output json | grep -c '"serial"')"
check "the history lists the $versions saved versions" test "$versions" -eq 3

echo
echo "== summary"
echo "  concurrent deploys ran one at a time, tokens $first_tokens"
echo "  crashed holder (token $carol_token) taken over after ${took_ms} ms with token $dave_token"
echo "  force-unlocked a killed holder's lock; the next holder got token $frank_token"
echo "  three deploys pushed the state in turn; a frozen holder's late push was refused"
if [[ $failures -ne 0 ]]; then
    echo "demo: $failures check(s) FAILED" >&2
    exit 1
fi
echo "demo: all checks passed"
