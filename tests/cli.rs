//! The `statelock` binary end to end, on the embedded file store in a
//! temporary directory: serialisation of concurrent `exec`s with increasing
//! tokens, takeover after a holder is killed with SIGKILL, force-unlock and its
//! refusals, a lost lease stopping the command (exit 75), signal forwarding,
//! exit codes, and one-line errors for bad input.
//!
//! Every spawned process gets stdin from /dev/null (so `exec` runs the command
//! in its own process group and `unlock` never prompts). Waits poll for a
//! condition (a marker file, the lock's status) with a bounded deadline.

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_statelock");
const PATIENCE: Duration = Duration::from_secs(20);

/// A store in a fresh temporary directory.
struct Store {
    dir: TempDir,
}

impl Store {
    fn new() -> Store {
        Store {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    fn url(&self) -> String {
        format!("file://{}", self.dir.path().join("locks").display())
    }

    /// A file in the test's directory (outside the store).
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `statelock --store URL ARGS...`, stdin from /dev/null, output piped.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--store")
            .arg(self.url())
            .args(args)
            .env_remove("STATELOCK_STORE")
            .env_remove("RUST_LOG")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run statelock")
    }

    /// `status KEY --output json`, parsed.
    fn status(&self, key: &str) -> Value {
        let out = self.run(&["status", key, "--output", "json"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "status failed: {}",
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    fn is_held(&self, key: &str) -> bool {
        self.status(key)["held"] == Value::Bool(true)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls `condition` until it holds; panics after [`PATIENCE`].
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` to exit, at most [`PATIENCE`]; returns its status and stderr.
fn finish(child: &mut Child) -> (ExitStatus, String) {
    let mut status = None;
    wait_until("the process exits", || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status.expect("exited"), stderr)
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// An `exec` holding a key while its command waits; killed on drop (test
/// failures must not leave processes behind).
struct Holder {
    exec: Child,
    /// The command's pid, which leads its own process group.
    command_pid: i32,
}

impl Holder {
    /// Starts `statelock exec --key KEY EXTRA... -- sh -c SCRIPT`, where the
    /// script first writes its pid to a marker file, and waits until the
    /// command runs and the store shows the lock held.
    fn start(store: &Store, key: &str, extra: &[&str], script: &str) -> Holder {
        let marker = store.path(&format!("holder-{}.pid", rand_suffix()));
        let full_script = format!("echo $$ > '{}'; {script}", marker.display());
        let mut args = vec!["exec", "--key", key];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", &full_script]);
        let exec = store
            .cmd(&args)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn exec");
        let mut holder = Holder {
            exec,
            command_pid: 0,
        };
        wait_until("the holder's command runs", || match read_pid(&marker) {
            Some(pid) => {
                holder.command_pid = pid;
                true
            }
            None => false,
        });
        assert!(
            store.is_held(key),
            "the command runs but the lock is not held"
        );
        holder
    }

    fn exec_pid(&self) -> Pid {
        Pid::from_raw(self.exec.id() as i32)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.exec.kill();
        let _ = self.exec.wait();
        if self.command_pid > 0 {
            let _ = killpg(Pid::from_raw(self.command_pid), Signal::SIGKILL);
        }
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// The token a command printed as `token=N`.
fn printed_token(stdout: &[u8]) -> u64 {
    let out = text(stdout);
    out.lines()
        .find_map(|l| l.strip_prefix("token="))
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no token in {out:?}"))
}

#[test]
fn concurrent_execs_never_overlap_and_tokens_increase() {
    let store = Store::new();
    let log = store.path("log");
    let script = format!(
        "echo \"start $STATELOCK_TOKEN\" >> '{log}'; sleep 0.3; echo \"end $STATELOCK_TOKEN\" >> '{log}'",
        log = log.display()
    );
    let runs: Vec<Child> = (0..3)
        .map(|_| {
            store
                .cmd(&[
                    "exec",
                    "--key",
                    "stack:demo",
                    "--wait",
                    "30s",
                    "--",
                    "sh",
                    "-c",
                    &script,
                ])
                .spawn()
                .expect("spawn exec")
        })
        .collect();
    for mut run in runs {
        let (status, stderr) = finish(&mut run);
        assert_eq!(status.code(), Some(0), "exec failed: {stderr}");
    }
    let log = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<(&str, u64)> = log
        .lines()
        .map(|l| {
            let (what, token) = l.split_once(' ').expect("two words");
            (what, token.parse().expect("token"))
        })
        .collect();
    assert_eq!(lines.len(), 6, "{log}");
    let mut last_token = 0;
    for pair in lines.chunks(2) {
        // Appends are ordered in time: a start must be followed by its own
        // end before anyone else starts.
        assert_eq!(pair[0].0, "start", "overlap in {log}");
        assert_eq!(pair[1], ("end", pair[0].1), "overlap in {log}");
        assert!(pair[0].1 > last_token, "tokens must increase: {log}");
        last_token = pair[0].1;
    }
    assert_eq!(last_token, 3);
    assert_eq!(store.status("stack:demo")["held"], Value::Bool(false));
}

#[test]
fn killed_holder_is_taken_over_after_its_lease_with_a_larger_token() {
    let store = Store::new();
    let key = "stack:crash";
    let holder = Holder::start(&store, key, &["--lease", "1s"], "exec sleep 30");
    let old_token = store.status(key)["record"]["token"]
        .as_u64()
        .expect("token");
    // Crash: SIGKILL the holder (no release) and its command.
    kill(holder.exec_pid(), Signal::SIGKILL).expect("kill statelock");
    killpg(Pid::from_raw(holder.command_pid), Signal::SIGKILL).expect("kill command");
    assert!(
        store.is_held(key),
        "a killed holder's record still says held"
    );

    let started = Instant::now();
    let out = store.run(&[
        "exec",
        "--key",
        key,
        "--lease",
        "1s",
        "--wait",
        "30s",
        "--",
        "sh",
        "-c",
        "echo token=$STATELOCK_TOKEN",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(printed_token(&out.stdout) > old_token);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took over too late"
    );
    assert!(
        text(&out.stderr).contains("waiting for"),
        "no wait progress: {}",
        text(&out.stderr)
    );
    drop(holder);
}

#[test]
fn force_unlock_stops_the_holder_with_sigterm_and_exit_75() {
    let store = Store::new();
    let key = "stack:forced";
    let term_marker = store.path("got-term");
    let script = format!(
        "trap 'echo TERM > \"{}\"; exit 0' TERM; while :; do sleep 0.05; done",
        term_marker.display()
    );
    let mut holder = Holder::start(&store, key, &["--lease", "2s", "--grace", "5s"], &script);

    // Refused without --force, and without --yes when stdin is not a terminal.
    let out = store.run(&["unlock", key]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--force"));
    let out = store.run(&["unlock", key, "--force"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("add --yes"),
        "{}",
        text(&out.stderr)
    );
    assert!(store.is_held(key), "a refused unlock changed the lock");

    let out = store.run(&["unlock", key, "--force", "--yes", "--who", "oncall"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Force-unlocked"));

    let (status, stderr) = finish(&mut holder.exec);
    assert_eq!(status.code(), Some(75), "{stderr}");
    assert!(
        stderr.contains("lost the lock") && stderr.contains("oncall"),
        "{stderr}"
    );
    wait_until("the command has handled SIGTERM", || term_marker.exists());
    let status = store.status(key);
    assert_eq!(status["held"], Value::Bool(false));
    assert_eq!(
        status["record"]["forced_by"],
        Value::String("oncall".into())
    );

    // Unlocking a lock that is not held is not an error.
    let out = store.run(&["unlock", key, "--force", "--yes"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).contains("not held"),
        "{}",
        text(&out.stdout)
    );
    let out = store.run(&["unlock", "never:locked", "--force"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("never been locked"));
}

#[test]
fn wait_zero_on_a_held_lock_exits_3_naming_the_holder_and_sigterm_is_forwarded() {
    let store = Store::new();
    let key = "stack:busy";
    let mut holder = Holder::start(
        &store,
        key,
        &["--who", "alice-ci", "--operation", "apply"],
        "exec sleep 30",
    );

    let out = store.run(&["exec", "--key", key, "--wait", "0s", "--", "true"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("alice-ci") && stderr.contains("apply"),
        "{stderr}"
    );

    let out = store.run(&["exec", "--key", key, "--wait", "300ms", "--", "true"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("gave up"));

    // SIGTERM to statelock reaches the command; the lock is then released.
    kill(holder.exec_pid(), Signal::SIGTERM).expect("signal exec");
    let (status, stderr) = finish(&mut holder.exec);
    assert_eq!(status.code(), Some(128 + 15), "{stderr}");
    assert!(!store.is_held(key), "the lock was not released");
}

#[test]
fn exec_passes_the_lock_to_the_command_and_propagates_its_exit_code() {
    let store = Store::new();
    let out = store.run(&[
        "exec",
        "--key",
        "k",
        "--",
        "sh",
        "-c",
        "echo token=$STATELOCK_TOKEN; echo key=$STATELOCK_KEY; echo lease=$STATELOCK_LEASE_ID; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    let stdout = text(&out.stdout);
    assert_eq!(printed_token(&out.stdout), 1);
    assert!(stdout.contains("key=k\n"), "{stdout}");
    let status = store.status("k");
    assert!(stdout.contains(&format!(
        "lease={}",
        status["record"]["owner"].as_str().unwrap_or("?")
    )));
    assert_eq!(
        status["held"],
        Value::Bool(false),
        "released after the command"
    );

    let out = store.run(&["exec", "--key", "k", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15));
    let out = store.run(&["exec", "--key", "k", "--", "/nonexistent/command"]);
    assert_eq!(out.status.code(), Some(127));
    assert_eq!(text(&out.stderr).lines().count(), 1);
    let out = store.run(&[
        "exec",
        "--key",
        "k",
        "--",
        "sh",
        "-c",
        "echo token=$STATELOCK_TOKEN",
    ]);
    assert_eq!(out.status.code(), Some(0));
    // Grants 1-3 went to the three runs above (the lock is taken before the
    // command is started, so the missing command had one too).
    assert_eq!(
        printed_token(&out.stdout),
        4,
        "every grant gets the next token"
    );
}

#[test]
fn bad_input_exits_2_with_one_line_and_no_panic() {
    let store = Store::new();
    let cases: &[&[&str]] = &[
        &["exec", "--key", "bad\nkey", "--", "true"],
        &["exec", "--key", "", "--", "true"],
        &["exec", "--key", "k", "--lease", "banana", "--", "true"],
        &["exec", "--key", "k", "--lease", "10ms", "--", "true"],
        &["exec", "--key", "k", "--wait", "later", "--", "true"],
        &["exec", "--key", "k", "--grace", "x", "--", "true"],
        &["exec", "--key", "k"],
        &["exec", "--key", "k", "--"],
        &["status", "bad\nkey"],
        &["unlock", "k"],
    ];
    for args in cases {
        let out = store.run(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("statelock: "), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
    }
    for url in ["ftp://x", "nonsense", "file://", "dynamodb://a"] {
        let out = Command::new(BIN)
            .args(["--store", url, "locks"])
            .stdin(Stdio::null())
            .output()
            .expect("run");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{url}: {stderr}");
    }
    // The environment variable names the store too.
    let out = Command::new(BIN)
        .arg("locks")
        .env("STATELOCK_STORE", "ftp://x")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    // clap's own usage errors exit 2 as well.
    for args in [
        &["frobnicate"][..],
        &["locks", "--output", "xml"],
        &["exec", "--", "true"],
    ] {
        let out = store.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!text(&out.stderr).contains("panicked"));
    }
    // Nothing was created by the bad inputs.
    let out = store.run(&["locks", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let listing = serde_json::from_slice::<Value>(&out.stdout).expect("locks JSON");
    assert_eq!(listing["locks"], Value::Array(vec![]));
    assert_eq!(listing["damaged"], Value::Array(vec![]));
}

#[test]
fn store_errors_exit_5_with_advice() {
    let store = Store::new();
    let file = store.path("not-a-directory");
    std::fs::write(&file, "x").expect("write");
    let out = Command::new(BIN)
        .args(["--store", &format!("file://{}", file.display()), "locks"])
        .output()
        .expect("run");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("check --store"), "{stderr}");
}

#[test]
fn locks_and_status_show_the_store() {
    let store = Store::new();
    let out = store.run(&["status", "never:locked"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("never been locked"));
    let out = store.run(&["status", "never:locked", "--output", "json"]);
    assert_eq!(text(&out.stdout).trim(), "null");
    let out = store.run(&["locks"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("No locks"));

    for key in ["b:free", "a:free"] {
        let out = store.run(&["exec", "--key", key, "--", "true"]);
        assert_eq!(out.status.code(), Some(0));
    }
    let holder = Holder::start(
        &store,
        "c:held",
        &["--who", "bob", "--operation", "plan"],
        "exec sleep 30",
    );

    let out = store.run(&["locks", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let listing: Value = serde_json::from_slice(&out.stdout).expect("locks JSON");
    let locks = listing["locks"].as_array().expect("an array of locks");
    let keys: Vec<&str> = locks
        .iter()
        .filter_map(|l| l["record"]["key"].as_str())
        .collect();
    assert_eq!(keys, ["a:free", "b:free", "c:held"]);
    assert_eq!(locks[2]["held"], Value::Bool(true));
    assert_eq!(
        locks[2]["record"]["holder"]["locked_by"],
        Value::String("bob".into())
    );

    let out = store.run(&["locks"]);
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("KEY") && lines[0].contains("UNCHANGED"),
        "{table}"
    );
    // Held (liveness still unknown) or alive (it renewed since the last look).
    assert!(
        (lines[3].contains("held") || lines[3].contains("alive"))
            && lines[3].contains("bob")
            && lines[3].contains("plan"),
        "{table}"
    );

    let out = store.run(&["status", "c:held"]);
    let detail = text(&out.stdout);
    let rvn = store.status("c:held")["record"]["rvn"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    assert!(detail.contains("state:          held"), "{detail}");
    assert!(detail.contains("record version:"), "{detail}");
    assert!(detail.contains("lease id:"), "{detail}");
    // The version changes with every heartbeat; it has the right shape.
    assert_eq!(rvn.len(), 32);
    drop(holder);
}

#[test]
fn audit_log_gets_json_lines() {
    let store = Store::new();
    let audit = store.path("audit.jsonl");
    let out = store.run(&[
        "--audit-log",
        audit.to_str().unwrap_or("audit"),
        "exec",
        "--key",
        "k",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let log = std::fs::read_to_string(&audit).expect("audit log");
    let events: Vec<String> = log
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON line");
            v["event"].as_str().unwrap_or("?").to_string()
        })
        .collect();
    assert_eq!(events, ["lock.acquired", "lock.released"], "{log}");
}

/// Runs `statelock unlock KEY --force` on a terminal (util-linux `script`
/// provides one); returns the process and a buffer that collects what it
/// shows. `None` if there is no `script` on this machine.
fn unlock_on_a_terminal(store: &Store, key: &str) -> Option<(Child, Arc<Mutex<String>>)> {
    let command = format!(
        "'{BIN}' --store '{}' unlock '{key}' --force --who oncall",
        store.url()
    );
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("STATELOCK_STORE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let shown = Arc::new(Mutex::new(String::new()));
    let mut stdout = child.stdout.take()?;
    let sink = shown.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut s) = sink.lock() {
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    Some((child, shown))
}

fn answer(child: &mut Child, line: &str) {
    let stdin = child.stdin.as_mut().expect("stdin");
    stdin.write_all(line.as_bytes()).expect("answer");
    stdin.flush().expect("flush");
}

fn shown_text(shown: &Arc<Mutex<String>>) -> String {
    shown.lock().map(|s| s.clone()).unwrap_or_default()
}

#[test]
fn unlock_on_a_terminal_asks_and_is_refused_when_the_record_changed() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no `script` command to provide a terminal");
        return;
    }
    let store = Store::new();
    let key = "stack:prompt";
    // A live holder: with a 2 s lease it heartbeats (a new record version)
    // every ~667 ms.
    let mut holder = Holder::start(&store, key, &["--lease", "2s"], "exec sleep 30");

    // Answering no changes nothing (exit 1).
    let Some((mut no, shown)) = unlock_on_a_terminal(&store, key) else {
        eprintln!("skipped: `script` cannot be started");
        return;
    };
    wait_until("the prompt shows", || shown_text(&shown).contains("[y/N]"));
    assert!(shown_text(&shown).contains(&format!("Force-unlock \"{key}\" held by")));
    answer(&mut no, "n\n");
    let (status, _) = finish(&mut no);
    assert_eq!(status.code(), Some(1), "{}", shown_text(&shown));
    assert!(store.is_held(key));

    // Answering yes after the holder renewed: the version shown is outdated,
    // so nothing is forced (exit 4).
    let Some((mut yes, shown)) = unlock_on_a_terminal(&store, key) else {
        panic!("`script` started once but not twice");
    };
    wait_until("the prompt shows", || shown_text(&shown).contains("[y/N]"));
    let text_shown = shown_text(&shown);
    let seen_rvn = text_shown
        .split("record version ")
        .nth(1)
        .map(|rest| rest.chars().take(32).collect::<String>())
        .expect("the prompt shows the record version");
    wait_until("the holder heartbeats", || {
        store.status(key)["record"]["rvn"].as_str() != Some(seen_rvn.as_str())
    });
    answer(&mut yes, "y\n");
    let (status, _) = finish(&mut yes);
    let text_shown = shown_text(&shown);
    assert_eq!(status.code(), Some(4), "{text_shown}");
    assert!(
        text_shown.contains("changed after it was shown"),
        "{text_shown}"
    );
    assert!(
        store.is_held(key),
        "a refused force-unlock released the lock"
    );
    assert_eq!(
        holder.exec.try_wait().ok().flatten(),
        None,
        "the holder must still run"
    );
}
