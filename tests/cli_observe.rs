//! The operator's view: metrics (names, counts and labels after a scripted
//! run of the library on the memory store, under tokio's paused clock), the
//! Prometheus endpoint of `--metrics-addr` while `exec` runs, the audit log's
//! stable JSON lines (and that no secret reaches it), `--output json` of the
//! read commands, shell completions and `--quiet`.
//!
//! Waits poll for a condition (a marker file, an HTTP answer) with a bounded
//! deadline; nothing sleeps to paper over a race.

#[cfg(feature = "s3")]
mod common;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};
use serde_json::Value;
use statelock::client::{AcquireOptions, LockClient};
use statelock::clock::SkewedClock;
use statelock::observe;
use statelock::protocol::{Backoff, WallTime};
use statelock::state::{FencedStore, StateDocument, StateError, StateStore};
use statelock::store::memory::MemoryStore;
use statelock::store::LockStore;
use statelock::{HolderInfo, LockKey};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_statelock");
const PATIENCE: Duration = Duration::from_secs(20);
const LEASE: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------
// Metrics through the facade
// ---------------------------------------------------------------------------

/// The process's recorder (installed once for this test binary; only the
/// metrics test records anything in-process: the others run the binary).
fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in this test binary");
        snapshotter
    })
}

/// Counters and histogram sample counts by (name, sorted labels).
fn readings() -> BTreeMap<(String, Vec<(String, String)>), u64> {
    let mut out = BTreeMap::new();
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        let key: CompositeKey = key;
        let mut labels: Vec<(String, String)> = key
            .key()
            .labels()
            .map(|l| (l.key().to_string(), l.value().to_string()))
            .collect();
        labels.sort();
        let n = match (key.kind(), value) {
            (MetricKind::Counter, DebugValue::Counter(n)) => n,
            (MetricKind::Histogram, DebugValue::Histogram(samples)) => samples.len() as u64,
            _ => continue,
        };
        *out.entry((key.key().name().to_string(), labels))
            .or_insert(0) += n;
    }
    out
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

fn client(store: &Arc<MemoryStore>, seed: u64) -> LockClient {
    LockClient::builder(store.clone() as Arc<dyn LockStore>)
        .clock(SkewedClock::new(
            Duration::from_secs(seed * 1000),
            1.0,
            WallTime(1_700_000_000_000),
        ))
        .seed(seed)
        .build()
}

fn opts(name: &str, wait: Duration) -> AcquireOptions {
    AcquireOptions {
        lease: LEASE,
        wait: Some(wait),
        backoff: Backoff {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(500),
            poll: Duration::from_millis(40),
        },
        holder: HolderInfo::named(name),
        ..AcquireOptions::default()
    }
}

/// Acquire, heartbeats, a held lock refusing a second acquirer, a frozen
/// holder seen stale and taken over (losing its lease), its late state save
/// refused: every metric is counted once per event, labelled by the store's
/// kind and the key's stack and env.
#[tokio::test(start_paused = true)]
async fn a_scripted_run_counts_every_metric_with_store_stack_and_env() {
    let _ = snapshotter();
    let store = Arc::new(MemoryStore::new());
    let state = FencedStore::new(statelock::state::backend::MemoryBackend::new());
    let key = LockKey::new("stack:web:env:prod").unwrap();
    let (a, b, observer) = (client(&store, 1), client(&store, 2), client(&store, 3));

    let old = a.acquire(&key, opts("a", Duration::ZERO)).await.unwrap();
    let (old_writer, _) = statelock::state::seal_for(&state, &old).await.unwrap();
    // A few heartbeats (one every third of the lease).
    tokio::time::sleep(LEASE).await;
    assert!(old.is_valid());
    // Someone who does not want to wait finds it held.
    assert!(b.acquire(&key, opts("b", Duration::ZERO)).await.is_err());
    // The holder freezes; an observer sees its record unchanged for a whole
    // takeover wait; the waiter takes it over.
    old.freeze_heartbeats();
    assert!(observer.status(&key).await.unwrap().is_some());
    tokio::time::sleep(LEASE * 3).await;
    let seen = observer.status(&key).await.unwrap().unwrap();
    assert!(seen.stale, "{seen:?}");
    let new = b.acquire(&key, opts("b", PATIENCE)).await.unwrap();
    assert!(!old.is_valid());
    let (new_writer, sealed) = statelock::state::seal_for(&state, &new).await.unwrap();
    // The old holder's late save is refused.
    let refused = state
        .save(
            &old_writer,
            &sealed.version,
            StateDocument::empty(None, None),
        )
        .await;
    assert!(
        matches!(refused, Err(StateError::Stale { .. })),
        "{refused:?}"
    );
    assert_ne!(old_writer, new_writer);
    new.release().await.unwrap();

    let got = readings();
    let base = [("store", "memory"), ("stack", "web"), ("env", "prod")];
    let with = |extra: (&'static str, &'static str)| {
        let mut l = base.to_vec();
        l.push(extra);
        labels(&l)
    };
    let count = |name: &str, l: Vec<(String, String)>| {
        got.get(&(name.to_string(), l)).copied().unwrap_or(0)
    };
    assert_eq!(
        count(observe::ACQUISITION_SUCCESS, labels(&base)),
        2,
        "{got:#?}"
    );
    assert_eq!(
        count(observe::ACQUISITION_DURATION, labels(&base)),
        2,
        "{got:#?}"
    );
    assert_eq!(
        count(observe::ACQUISITION_FAILURE, with(("reason", "held"))),
        1,
        "{got:#?}"
    );
    assert_eq!(count(observe::TAKEOVER, labels(&base)), 1, "{got:#?}");
    assert_eq!(count(observe::STALE_DETECTED, labels(&base)), 1, "{got:#?}");
    assert_eq!(
        count(observe::LOST, with(("reason", "expired"))),
        1,
        "{got:#?}"
    );
    assert_eq!(count(observe::HELD_DURATION, labels(&base)), 1, "{got:#?}");
    assert!(
        count(observe::HEARTBEAT_SUCCESS, labels(&base)) >= 2,
        "{got:#?}"
    );
    assert_eq!(
        count(observe::STATE_SAVE_REJECTED, with(("reason", "stale"))),
        1,
        "{got:#?}"
    );
    // Nothing outside the documented names.
    for (name, _) in got.keys() {
        assert!(observe::METRICS.contains(&name.as_str()), "{name}");
    }
}

// ---------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `statelock --store file://DIR/locks ARGS...` with stdin from /dev/null.
fn cmd(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--store")
        .arg(format!("file://{}", dir.join("locks").display()))
        .args(args)
        .env_remove("STATELOCK_STORE")
        .env_remove("STATELOCK_STATE_STORE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn run(dir: &Path, args: &[&str]) -> Output {
    cmd(dir, args).output().expect("statelock runs")
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port nobody listens on now (the OS picks it).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// `GET /metrics` on 127.0.0.1:`port`: the body, or `None` if nothing answers.
fn get_metrics(port: u16) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.starts_with("HTTP/1.1 200").then_some(response)
}

/// While `exec` runs its command, `--metrics-addr` serves the acquisition
/// in Prometheus' text format, labelled by store, stack and env.
#[cfg(feature = "prometheus")]
#[test]
fn metrics_addr_serves_prometheus_while_exec_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (ready, done) = (dir.path().join("ready"), dir.path().join("done"));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let script = format!(
        "touch '{}'; while [ ! -e '{}' ]; do sleep 0.05; done",
        ready.display(),
        done.display()
    );
    let child = cmd(
        dir.path(),
        &[
            "--metrics-addr",
            &addr,
            "exec",
            "--key",
            "stack:web:env:prod",
            "--",
            "sh",
            "-c",
            &script,
        ],
    )
    .spawn()
    .expect("statelock runs");
    wait_for("the command to start", || ready.exists());
    let mut body = String::new();
    wait_for("the metrics endpoint", || match get_metrics(port) {
        Some(b) => {
            body = b;
            true
        }
        None => false,
    });
    std::fs::write(&done, b"").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        body.contains(
            r#"statelock_lock_acquisition_success{store="file",stack="web",env="prod"} 1"#
        ),
        "{body}"
    );
    assert!(
        body.contains("statelock_lock_acquisition_duration"),
        "{body}"
    );
    // A taken port is a usage error, and nothing runs.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let out = run(
        dir.path(),
        &["--metrics-addr", &busy, "exec", "--key", "k", "--", "true"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--metrics-addr"),
        "{}",
        text(&out.stderr)
    );
}

/// The audit log's lines, parsed; each must have `ts` (RFC 3339 UTC) and
/// `event`.
fn audit_lines(path: &Path) -> Vec<Value> {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    log.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            let ts = v["ts"].as_str().unwrap_or_else(|| panic!("no ts: {l}"));
            assert!(
                ts.len() == 24 && ts.ends_with('Z') && &ts[10..11] == "T",
                "not RFC 3339 UTC: {l}"
            );
            assert!(v["event"].is_string(), "no event: {l}");
            v
        })
        .collect()
}

fn events<'a>(lines: &'a [Value], name: &str) -> Vec<&'a Value> {
    lines.iter().filter(|v| v["event"] == name).collect()
}

const SECRET: &str = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY";

/// Acquired, released, forced, lost (by the force), state saved and state
/// rejected: stable names and fields, one JSON line each, appended across
/// runs; no secret from the environment reaches the log.
#[test]
fn the_audit_log_has_stable_events_and_fields() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let audit_arg = audit.to_str().unwrap();
    let state = format!("file://{}", dir.path().join("state").display());
    let key = "stack:web:env:prod";
    let with_audit = |args: &[&str]| {
        let mut all = vec!["--audit-log", audit_arg, "--state-store", &state];
        all.extend_from_slice(args);
        let mut c = cmd(dir.path(), &all);
        c.env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE");
        c
    };

    // 1. A deploy pulls and pushes its state under exec.
    let doc = dir.path().join("doc.json");
    let push = format!(
        "'{BIN}' state pull {key} --to '{0}' && '{BIN}' --audit-log '{audit_arg}' state push '{0}'",
        doc.display()
    );
    let out = with_audit(&["exec", "--key", key, "--", "sh", "-c", &push])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // 2. A holder is forced out while its command runs: its lease is lost
    //    (and its command stopped). It had noted its lock's environment.
    let (ready, env) = (dir.path().join("ready"), dir.path().join("env"));
    let holding = format!(
        "'{BIN}' state pull {key} --to '{doc}' && env | grep ^STATELOCK_ > '{env}' && \
         touch '{ready}' && sleep 60",
        doc = doc.display(),
        env = env.display(),
        ready = ready.display(),
    );
    let holder = with_audit(&[
        "exec", "--key", key, "--lease", "3s", "--", "sh", "-c", &holding,
    ])
    .spawn()
    .unwrap();
    wait_for("the holder's command", || ready.exists());
    let out = with_audit(&["unlock", key, "--force", "--yes", "--who", "oncall"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = holder.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", text(&out.stderr));
    // 3. A new holder seals the state; the old holder's late push (as a
    //    paused deploy script would send it) is refused.
    let out = with_audit(&["exec", "--key", key, "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let mut late = with_audit(&["state", "push", doc.to_str().unwrap()]);
    for line in std::fs::read_to_string(&env).unwrap().lines() {
        if let Some((name, value)) = line.split_once('=') {
            late.env(name, value);
        }
    }
    let out = late.output().unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", text(&out.stderr));

    let log = std::fs::read_to_string(&audit).unwrap();
    assert!(
        !log.contains(SECRET),
        "a secret reached the audit log: {log}"
    );
    let lines = audit_lines(&audit);

    let acquired = events(&lines, "lock.acquired");
    assert!(acquired.len() >= 3, "{log}");
    for a in &acquired {
        for field in ["key", "token", "lease_id", "holder", "store"] {
            assert!(!a[field].is_null(), "lock.acquired without {field}: {a}");
        }
        assert_eq!(a["store"], "file");
        assert_eq!(a["key"], key);
    }
    let released = events(&lines, "lock.released");
    assert!(!released.is_empty(), "{log}");
    assert!(released.iter().all(|r| r["duration_ms"].is_u64()), "{log}");
    let forced = events(&lines, "lock.forced");
    assert_eq!(forced.len(), 1, "{log}");
    assert_eq!(forced[0]["by"], "oncall");
    assert!(forced[0]["holder"].is_string(), "{log}");
    let lost = events(&lines, "lock.lost");
    assert_eq!(lost.len(), 1, "{log}");
    assert_eq!(lost[0]["reason"], "superseded");
    let saved = events(&lines, "state.saved");
    assert_eq!(saved.len(), 1, "{log}");
    assert_eq!(saved[0]["serial"], 1);
    assert!(saved[0]["token"].is_u64(), "{log}");
    let rejected = events(&lines, "state.rejected");
    assert_eq!(rejected.len(), 1, "{log}");
    assert_eq!(rejected[0]["why"], "stale");
    assert!(
        log.lines().all(|l| !l.contains("\"message\"")),
        "fields only: {log}"
    );
}

/// A takeover of an abandoned lease is on record with the previous holder
/// and token.
#[test]
fn a_takeover_names_the_previous_holder_and_token() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let audit_arg = audit.to_str().unwrap();
    let ready = dir.path().join("ready");
    let script = format!("touch '{}'; sleep 60", ready.display());
    let mut holder = cmd(
        dir.path(),
        &[
            "exec", "--key", "k", "--lease", "1s", "--who", "first", "--", "sh", "-c", &script,
        ],
    )
    .spawn()
    .unwrap();
    wait_for("the first holder", || ready.exists());
    // Killed with SIGKILL: its lease is abandoned, never released.
    holder.kill().unwrap();
    let _ = holder.wait();
    let out = run(
        dir.path(),
        &[
            "--audit-log",
            audit_arg,
            "exec",
            "--key",
            "k",
            "--wait",
            "30s",
            "--",
            "true",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines = audit_lines(&audit);
    let takeover = events(&lines, "lock.takeover");
    assert_eq!(takeover.len(), 1, "{lines:?}");
    assert_eq!(takeover[0]["previous_holder"], "first");
    assert_eq!(takeover[0]["previous_token"], 1);
    assert_eq!(takeover[0]["token"], 2);
    assert_eq!(events(&lines, "lock.acquired")[0]["how"], "takeover");
}

/// With an S3 store whose endpoint URL carries userinfo, and a secret in the
/// environment, the audit log names the store without either.
#[cfg(feature = "s3")]
#[test]
fn no_secret_from_an_endpoint_url_reaches_the_audit_log() {
    let Some(endpoint) = common::s3::endpoint() else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(common::s3::ensure_bucket(
        &common::s3::raw_client(&endpoint),
        common::s3::BUCKET,
    ));
    let with_userinfo = endpoint.replacen("http://", "http://AKIDEXAMPLE:hunter2-userinfo@", 1);
    let url = format!(
        "s3://{}/{}?region=us-east-1&endpoint={with_userinfo}",
        common::s3::BUCKET,
        common::s3::unique_prefix("audit")
    );
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let out = Command::new(BIN)
        .args(["--store", &url, "--audit-log", audit.to_str().unwrap()])
        .args(["exec", "--key", "stack:web:env:prod", "--", "true"])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", "us-east-1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = std::fs::read_to_string(&audit).unwrap_or_default();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(log.contains("lock.acquired"), "{log}");
    assert!(log.contains("\"store\":\"s3\""), "{log}");
    for secret in ["hunter2-userinfo", SECRET] {
        assert!(!log.contains(secret), "{secret} in the audit log: {log}");
    }
}

/// Every read command answers `--output json` with what its help says.
#[test]
fn read_commands_answer_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let state = format!("file://{}", dir.path().join("state").display());
    let key = "stack:web:env:prod";
    let out = run(dir.path(), &["exec", "--key", key, "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json = |args: &[&str]| -> Value {
        let mut all = vec!["--state-store", state.as_str()];
        all.extend_from_slice(args);
        let out = run(dir.path(), &all);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&out.stdout)))
    };
    let locks = json(&["locks", "--output", "json"]);
    assert_eq!(locks["locks"][0]["record"]["key"], key);
    assert_eq!(locks["locks"][0]["liveness"], "released");
    let status = json(&["status", key, "--output", "json"]);
    assert_eq!(status["record"]["token"], 1);
    assert_eq!(json(&["status", "never", "--output", "json"]), Value::Null);
    assert_eq!(
        json(&["state", "show", key, "--output", "json"]),
        Value::Null
    );
    assert_eq!(
        json(&["state", "history", key, "--output", "json"]),
        Value::Array(vec![])
    );
    // Each command's long help documents its JSON.
    for args in [
        vec!["locks", "--help"],
        vec!["status", "--help"],
        vec!["state", "show", "--help"],
        vec!["state", "history", "--help"],
    ] {
        let out = run(dir.path(), &args);
        assert!(text(&out.stdout).contains("JSON output"), "{args:?}");
    }
}

/// `completions bash|zsh|fish` print scripts naming the subcommands.
#[test]
fn completions_for_each_shell() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = run(dir.path(), &["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(
            script.contains("statelock") && script.contains("exec"),
            "{shell}"
        );
    }
    let out = run(dir.path(), &["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `--quiet` silences notes (a waiter's progress, state push's note) but not
/// errors.
#[test]
fn quiet_silences_notes_but_not_errors() {
    let dir = tempfile::tempdir().unwrap();
    let state = format!("file://{}", dir.path().join("state").display());
    let key = "stack:web:env:prod";
    let doc = dir.path().join("doc.json");
    let push = format!(
        "'{BIN}' state pull {key} --to '{0}' && '{BIN}' --quiet state push '{0}'",
        doc.display()
    );
    let out = run(
        dir.path(),
        &[
            "--state-store",
            &state,
            "exec",
            "--key",
            key,
            "--",
            "sh",
            "-c",
            &push,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "quiet push printed a note");
    let push_loud = format!(
        "'{BIN}' state pull {key} --to '{0}' && '{BIN}' state push '{0}'",
        doc.display()
    );
    let out = run(
        dir.path(),
        &[
            "--state-store",
            &state,
            "exec",
            "--key",
            key,
            "--",
            "sh",
            "-c",
            &push_loud,
        ],
    );
    assert!(text(&out.stderr).contains("saved"), "{}", text(&out.stderr));
    // Errors still print.
    let out = run(dir.path(), &["--quiet", "status", "k", "--observe", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!text(&out.stderr).is_empty());
}
