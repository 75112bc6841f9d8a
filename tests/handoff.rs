//! Hand-off between processes on the embedded file store: `statelock exec`
//! processes that wait for one key register in the lock record's queue and
//! are granted in the order they registered; one that dies while registered
//! delays the next by about one lease, never for good.

use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_statelock");

/// How long any one condition may take to come true.
const PATIENCE: Duration = Duration::from_secs(60);

fn statelock(url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--store")
        .arg(url)
        .args(args)
        .env_remove("STATELOCK_STORE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// The record of `key`, from `status --output json` (`Null` before the
/// first grant).
fn record(url: &str, key: &str) -> Value {
    let out = statelock(url, &["status", key, "--output", "json"])
        .stdout(Stdio::piped())
        .output()
        .expect("run status");
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    status["record"].clone()
}

fn queue_len(record: &Value) -> usize {
    record["queue"].as_array().map_or(0, Vec::len)
}

/// Polls `condition` every 20 ms until it holds; panics after [`PATIENCE`].
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn succeeds(mut child: Child, who: &str) {
    let status = child.wait().expect("wait");
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(status.success(), "{who} failed ({status}): {stderr}");
}

/// A holder that keeps the key until its stdin closes.
fn holder(url: &str, key: &str, lease: &str) -> Child {
    let child = statelock(
        url,
        &[
            "exec", "--key", key, "--lease", lease, "--", "sh", "-c", "read _",
        ],
    )
    .stdin(Stdio::piped())
    .spawn()
    .expect("spawn holder");
    wait_until("the holder holds the key", || {
        record(url, key)["released"] == Value::Bool(false)
    });
    child
}

/// A waiter whose command appends `name token` to `log`.
fn waiter(url: &str, key: &str, name: &str, log: &Path) -> Child {
    let script = format!("echo \"{name} $STATELOCK_TOKEN\" >> '{}'", log.display());
    statelock(
        url,
        &[
            "exec", "--key", key, "--wait", "120s", "--", "sh", "-c", &script,
        ],
    )
    .spawn()
    .expect("spawn waiter")
}

fn release(mut holder: Child) {
    // Closing the command's stdin ends it; exec then releases the key.
    if let Some(mut stdin) = holder.stdin.take() {
        let _ = stdin.write_all(b"\n");
    }
    succeeds(holder, "the holder");
}

#[test]
fn eight_processes_are_granted_in_the_order_they_registered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().join("locks").display());
    let log = dir.path().join("order");
    let key = "stack:web:env:prod";
    let first = holder(&url, key, "30s");
    let mut waiters = Vec::new();
    for i in 0..8 {
        waiters.push(waiter(&url, key, &format!("w{i}"), &log));
        // The next one starts only once this one is registered, so the
        // registration order is known.
        wait_until(&format!("waiter {i} is registered"), || {
            queue_len(&record(&url, key)) == i + 1
        });
    }
    let registered = record(&url, key)["queue"].clone();
    release(first);
    for (i, w) in waiters.into_iter().enumerate() {
        succeeds(w, &format!("waiter {i}"));
    }
    let order = std::fs::read_to_string(&log).expect("log");
    let got: Vec<(String, u64)> = order
        .lines()
        .map(|l| {
            let (name, token) = l.split_once(' ').expect("name and token");
            (name.to_string(), token.parse().expect("token"))
        })
        .collect();
    let want: Vec<(String, u64)> = (0..8).map(|i| (format!("w{i}"), i + 2)).collect();
    assert_eq!(
        got, want,
        "grants must follow the registration order {registered}"
    );
    let last = record(&url, key);
    assert_eq!(last["released"], Value::Bool(true));
    assert_eq!(queue_len(&last), 0, "every grant left the queue: {last}");
}

#[test]
fn a_waiter_killed_while_registered_is_skipped_once_its_turn_lapses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().join("locks").display());
    let log = dir.path().join("order");
    let key = "stack:api:env:prod";
    let first = holder(&url, key, "3s");
    let mut doomed = waiter(&url, key, "doomed", &log);
    wait_until("the doomed waiter is registered", || {
        queue_len(&record(&url, key)) == 1
    });
    let next = waiter(&url, key, "next", &log);
    wait_until("the next waiter is registered", || {
        queue_len(&record(&url, key)) == 2
    });
    // SIGKILL: it cannot leave the queue.
    doomed.kill().expect("kill");
    let _ = doomed.wait();
    let dead_head = record(&url, key)["queue"][0].clone();
    // The holder's lease is 3 s; the waiters' own leases (the default) do
    // not matter: a released record's head is skipped after the lease of
    // the release it did not take.
    release(first);
    succeeds(next, "the next waiter");
    let order = std::fs::read_to_string(&log).expect("log");
    assert_eq!(order, "next 2\n", "only the live waiter ran");
    let last = record(&url, key);
    assert_eq!(
        queue_len(&last),
        0,
        "the dead head {dead_head} was skipped: {last}"
    );
}
