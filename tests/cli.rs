//! The `statelock` binary end to end, on the embedded file store in a
//! temporary directory: serialisation of concurrent `exec`s with increasing
//! tokens, takeover after a holder is killed with SIGKILL, force-unlock and its
//! refusals, a lost lease stopping the command (exit 75), signal forwarding,
//! exit codes, and one-line errors for bad input. And what `exec` promises
//! about the command's processes, with real processes and signals: a command
//! that ignores SIGTERM is dead before a waiter can take over from a
//! partitioned holder (DynamoDB Local behind a TCP proxy), `kill -9` of
//! statelock kills the command's whole tree, signals reach the command's
//! group, leftovers in the group are killed, and on a terminal the command
//! gets the terminal and Ctrl-C.
//!
//! Every spawned process gets stdin from /dev/null unless a test provides a
//! terminal (so `unlock` never prompts). Waits poll for a condition (a marker
//! file, the lock's status, a process gone) with a bounded deadline.

#[cfg(any(feature = "dynamodb", feature = "s3"))]
mod common;

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
    /// A lock store elsewhere (a service), instead of the directory's.
    elsewhere: Option<String>,
}

impl Store {
    fn new() -> Store {
        Store {
            dir: tempfile::tempdir().expect("temporary directory"),
            elsewhere: None,
        }
    }

    /// Locks in the store at `url`; files in a fresh temporary directory.
    #[cfg(feature = "s3")]
    fn at(url: String) -> Store {
        Store {
            elsewhere: Some(url),
            ..Store::new()
        }
    }

    fn url(&self) -> String {
        match &self.elsewhere {
            Some(url) => url.clone(),
            None => format!("file://{}", self.dir.path().join("locks").display()),
        }
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
fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    wait_within(what, PATIENCE, condition);
}

/// Polls `condition` until it holds; panics after `limit`.
fn wait_within(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what} ({limit:?})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True once `pid` runs no more: gone, or a zombie nobody reaped yet.
fn is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
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
    /// The command's pid.
    command_pid: i32,
    /// The command's process group (led by statelock's launcher).
    command_group: Option<Pid>,
}

impl Holder {
    /// Starts `statelock exec --key KEY EXTRA... -- sh -c SCRIPT`, where the
    /// script first writes its pid to a marker file, and waits until the
    /// command runs and the store shows the lock held.
    fn start(store: &Store, key: &str, extra: &[&str], script: &str) -> Holder {
        Holder::start_in(store, key, extra, script, false)
    }

    /// [`Holder::start`], with statelock in a process group of its own if
    /// `own_group` (as a CI runner starts its steps).
    fn start_in(store: &Store, key: &str, extra: &[&str], script: &str, own_group: bool) -> Holder {
        use std::os::unix::process::CommandExt;
        let marker = store.path(&format!("holder-{}.pid", rand_suffix()));
        let full_script = format!("echo $$ > '{}'; {script}", marker.display());
        let mut args = vec!["exec", "--key", key];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", &full_script]);
        let mut cmd = store.cmd(&args);
        cmd.stdout(Stdio::null());
        if own_group {
            cmd.process_group(0);
        }
        let exec = cmd.spawn().expect("spawn exec");
        let mut holder = Holder {
            exec,
            command_pid: 0,
            command_group: None,
        };
        wait_until("the holder's command runs", || match read_pid(&marker) {
            Some(pid) => {
                holder.command_pid = pid;
                true
            }
            None => false,
        });
        holder.command_group = nix::unistd::getpgid(Some(Pid::from_raw(holder.command_pid))).ok();
        assert_ne!(
            holder.command_group,
            nix::unistd::getpgid(Some(holder.exec_pid())).ok(),
            "the command must run in a process group of its own"
        );
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
        if let Some(group) = self.command_group {
            let _ = killpg(group, Signal::SIGKILL);
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
    // Crash: SIGKILL the holder (no release); its command dies with it.
    kill(holder.exec_pid(), Signal::SIGKILL).expect("kill statelock");
    wait_until("the command dies with statelock", || {
        is_gone(holder.command_pid)
    });
    assert!(
        store.is_held(key),
        "a killed holder's record still says held"
    );

    let started = Instant::now();
    // The taker's own lease is long: on a loaded machine, a 1 s lease can
    // run out while its command starts (exit 75), which is not this test.
    let out = store.run(&[
        "exec",
        "--key",
        key,
        "--lease",
        "10s",
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
    let mut holder = Holder::start(&store, key, &["--lease", "2s", "--grace", "500ms"], &script);

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
    on_a_terminal(&format!(
        "'{BIN}' --store '{}' unlock '{key}' --force --who oncall",
        store.url()
    ))
}

/// Runs the shell command line `command` on a terminal (util-linux
/// `script`); returns the process and a buffer that collects what the
/// terminal shows. `None` if `script` cannot be started.
fn on_a_terminal(command: &str) -> Option<(Child, Arc<Mutex<String>>)> {
    let mut child = Command::new("script")
        .args(["-qfec", command, "/dev/null"])
        .env("SHELL", "/bin/sh")
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

/// `kill -9` of statelock kills the command's whole tree (a wrapper script
/// and the grandchild it started) within a second: when statelock alone is
/// killed, and when its whole process group is, as a CI runner does.
#[test]
fn kill_9_of_statelock_kills_the_whole_command_tree() {
    let store = Store::new();
    for (run, whole_group) in [(0, false), (1, true)] {
        let key = format!("stack:kill9-{run}");
        let grandchild_file = store.path(&format!("grandchild-{run}.pid"));
        let script = format!(
            "sleep 1000 & echo $! > '{}'; wait",
            grandchild_file.display()
        );
        let mut holder = Holder::start_in(&store, &key, &[], &script, whole_group);
        let mut grandchild = None;
        wait_until("the grandchild runs", || {
            grandchild = read_pid(&grandchild_file);
            grandchild.is_some()
        });
        let grandchild = grandchild.expect("grandchild pid");
        assert!(!is_gone(holder.command_pid) && !is_gone(grandchild));

        if whole_group {
            killpg(holder.exec_pid(), Signal::SIGKILL).expect("kill statelock's group");
        } else {
            kill(holder.exec_pid(), Signal::SIGKILL).expect("kill statelock");
        }
        let killed = Instant::now();
        let _ = holder.exec.wait();
        for (what, pid) in [("script", holder.command_pid), ("grandchild", grandchild)] {
            let left = Duration::from_secs(1).saturating_sub(killed.elapsed());
            wait_within(
                &format!("the {what} dies with statelock (whole group: {whole_group})"),
                left,
                || is_gone(pid),
            );
        }
    }
}

/// SIGINT to statelock reaches the command's group (its trap runs), the lock
/// is released and statelock exits 130; a command that ignores SIGINT is
/// killed after the grace, and statelock still exits 130.
#[test]
fn sigint_reaches_the_command_group_and_exits_130() {
    let store = Store::new();
    let key = "stack:sigint";
    let marker = store.path("got-int");
    let script = format!(
        "trap 'echo INT > \"{}\"; exit 3' INT; while :; do sleep 0.05; done",
        marker.display()
    );
    let mut holder = Holder::start(&store, key, &[], &script);
    kill(holder.exec_pid(), Signal::SIGINT).expect("signal statelock");
    let (status, stderr) = finish(&mut holder.exec);
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(marker.exists(), "the command did not get SIGINT: {stderr}");
    assert!(!store.is_held(key), "the lock was not released");

    let key = "stack:sigint-ignored";
    let mut holder = Holder::start(
        &store,
        key,
        &["--lease", "5s", "--grace", "1s"],
        "trap '' INT; while :; do sleep 0.05; done",
    );
    let sent = Instant::now();
    kill(holder.exec_pid(), Signal::SIGINT).expect("signal statelock");
    let (status, stderr) = finish(&mut holder.exec);
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        sent.elapsed() >= Duration::from_millis(950),
        "killed before the grace was over: {stderr}"
    );
    assert!(stderr.contains("SIGKILL"), "{stderr}");
    assert!(is_gone(holder.command_pid), "the command survived");
    assert!(!store.is_held(key), "the lock was not released");
}

/// A `--grace` that does not fit the lease is refused with one line that
/// says what to change; nothing runs and the lock is not taken.
#[test]
fn grace_too_long_for_the_lease_exits_2_and_runs_nothing() {
    let store = Store::new();
    let marker = store.path("ran");
    let marker_text = marker.display().to_string();
    let out = store.run(&[
        "exec",
        "--key",
        "stack:grace",
        "--lease",
        "2s",
        "--grace",
        "10s",
        "--",
        "touch",
        &marker_text,
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    // The longest grace for 2 s, and the shortest lease for 10 s.
    assert!(
        stderr.contains("lower --grace to 931ms") && stderr.contains("--lease to 20s"),
        "{stderr}"
    );
    assert!(!marker.exists(), "the command ran");
    assert_eq!(
        store.status("stack:grace"),
        Value::Null,
        "the lock was taken"
    );
}

/// A command that exits leaving a background process in its group: the
/// leftover is killed before statelock exits (the kill lands as statelock
/// releases the lock; a short bounded wait covers its delivery).
#[test]
fn leftovers_in_the_command_group_are_killed() {
    let store = Store::new();
    let leftover_file = store.path("leftover.pid");
    let script = format!("sleep 1000 & echo $! > '{}'", leftover_file.display());
    // Not a pipe: a surviving leftover would keep it open.
    let stderr_file = store.path("leftover.stderr");
    let mut exec = store
        .cmd(&["exec", "--key", "stack:leftover", "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_file).expect("stderr file"))
        .spawn()
        .expect("spawn exec");
    let (status, _) = finish(&mut exec);
    let stderr = std::fs::read_to_string(&stderr_file).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let leftover = read_pid(&leftover_file).expect("the leftover's pid");
    let limit = Instant::now() + Duration::from_millis(500);
    while !is_gone(leftover) && Instant::now() < limit {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !is_gone(leftover) {
        let _ = kill(Pid::from_raw(leftover), Signal::SIGKILL);
        panic!("the leftover {leftover} outlived statelock");
    }
    assert!(!store.is_held("stack:leftover"));
}

/// On a terminal the command gets the terminal: it reads a line typed
/// there, and Ctrl-C typed there stops it (statelock exits 130); afterwards
/// the shell that ran statelock can read the terminal again (statelock took
/// it back).
#[test]
fn on_a_terminal_the_command_reads_it_and_ctrl_c_stops_it() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no `script` command to provide a terminal");
        return;
    }
    let store = Store::new();
    let reader = store.path("reader.sh");
    std::fs::write(&reader, "echo ready; read line; echo \"got:$line\"\n").expect("script");
    let looper = store.path("looper.sh");
    std::fs::write(&looper, "echo ready; while :; do sleep 0.05; done\n").expect("script");
    for (key, script, typed, expect_exit) in [
        ("stack:tty-read", &reader, &b"hello\n"[..], "exit=0"),
        ("stack:tty-ctrl-c", &looper, &b"\x03"[..], "exit=130"),
    ] {
        let command = format!(
            "'{BIN}' --store '{}' exec --key '{key}' -- sh '{}'; echo \"exit=$?\"; read again; echo \"again:$again\"",
            store.url(),
            script.display()
        );
        let Some((mut term, shown)) = on_a_terminal(&command) else {
            panic!("`script` answered --version but cannot be started");
        };
        wait_until("the command runs", || shown_text(&shown).contains("ready"));
        let stdin = term.stdin.as_mut().expect("stdin");
        stdin.write_all(typed).expect("type");
        stdin.flush().expect("flush");
        wait_until("statelock exits", || shown_text(&shown).contains("exit="));
        let seen = shown_text(&shown);
        assert!(seen.contains(expect_exit), "{seen}");
        if key == "stack:tty-read" {
            assert!(seen.contains("got:hello"), "{seen}");
        }
        // The shell reads the terminal again: statelock gave it back.
        answer(&mut term, "more\n");
        let (status, _) = finish(&mut term);
        let seen = shown_text(&shown);
        assert_eq!(status.code(), Some(0), "{seen}");
        assert!(seen.contains("again:more"), "{seen}");
        assert!(!store.is_held(key), "the lock was not released");
    }
}

/// A holder whose store stops answering (a one-sided partition: DynamoDB
/// Local behind a proxy that is cut) while its command ignores SIGTERM:
/// every write of the command happens before the first write of the waiter
/// that takes over. 20 runs, 4 at a time; timestamps from both commands.
#[cfg(feature = "dynamodb")]
#[test]
fn a_command_ignoring_sigterm_is_dead_before_a_waiter_takes_over() {
    let Some(endpoint) = common::service("STATELOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    const RUNS: usize = 20;
    const AT_ONCE: usize = 4;
    let dir = Arc::new(tempfile::tempdir().expect("temporary directory"));
    let table = format!(
        "statelock-test-exec-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let out = ddb_statelock(&ddb_url(&table, &endpoint), &["dynamodb", "create-table"])
        .output()
        .expect("run statelock");
    assert!(out.status.success(), "create-table: {}", text(&out.stderr));

    let mut gaps = Vec::new();
    for round in 0..RUNS / AT_ONCE {
        let runs: Vec<_> = (0..AT_ONCE)
            .map(|i| {
                let (endpoint, table, dir) = (endpoint.clone(), table.clone(), dir.clone());
                std::thread::spawn(move || {
                    partitioned_holder_run(&endpoint, &table, dir.path(), round * AT_ONCE + i)
                })
            })
            .collect();
        for run in runs {
            gaps.push(run.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        }
    }
    assert_eq!(gaps.len(), RUNS);
    let min = gaps.iter().min().copied().unwrap_or_default();
    let max = gaps.iter().max().copied().unwrap_or_default();
    eprintln!(
        "last write of the partitioned holder → first write of the next holder: min {min:?}, max {max:?} over {RUNS} runs"
    );
}

#[cfg(feature = "dynamodb")]
fn ddb_url(table: &str, endpoint: &str) -> String {
    format!("dynamodb://{table}?region=us-east-1&endpoint={endpoint}")
}

/// `statelock --store URL ARGS...` with test credentials, output piped.
#[cfg(feature = "dynamodb")]
fn ddb_statelock(url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--store")
        .arg(url)
        .args(args)
        .env_remove("STATELOCK_STORE")
        .env_remove("RUST_LOG")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// `secs.nanos` as printed by `date +%s.%N`.
#[cfg(feature = "dynamodb")]
fn parse_stamp(line: &str) -> Option<Duration> {
    let (secs, nanos) = line.trim().split_once('.')?;
    if nanos.len() != 9 {
        return None;
    }
    Some(Duration::new(secs.parse().ok()?, nanos.parse().ok()?))
}

/// One run: holder A (lease 2 s, grace 300 ms: it is asked to stop when a
/// heartbeat goes unconfirmed for about 0.8 s) reaches the store through a
/// proxy and runs a command that ignores SIGTERM and logs a timestamp every
/// 10 ms; once it runs, the proxy is cut; waiter B (direct) takes over and
/// logs its first timestamp. Returns B's first timestamp minus A's last.
#[cfg(feature = "dynamodb")]
fn partitioned_holder_run(endpoint: &str, table: &str, dir: &Path, run: usize) -> Duration {
    let proxy = common::proxy::Proxy::start(common::authority(endpoint));
    let key = format!("exec:partition:{run}");
    let a_log = dir.join(format!("a-{run}.log"));
    let a_pid = dir.join(format!("a-{run}.pid"));
    let b_first = dir.join(format!("b-{run}.first"));
    let a_script = format!(
        "echo $$ > '{}'; trap '' TERM; while :; do date +%s.%N >> '{}'; sleep 0.01; done",
        a_pid.display(),
        a_log.display()
    );
    let mut a = ddb_statelock(
        &ddb_url(table, &proxy.endpoint()),
        &[
            "exec", "--key", &key, "--lease", "2s", "--grace", "300ms", "--", "sh", "-c", &a_script,
        ],
    )
    .spawn()
    .expect("start holder A");
    wait_until("A's command writes", || {
        if let Ok(Some(_)) = a.try_wait() {
            let (status, stderr) = finish(&mut a);
            panic!("run {run}: A ended before its command wrote ({status}): {stderr}");
        }
        std::fs::read_to_string(&a_log)
            .is_ok_and(|log| log.lines().any(|l| parse_stamp(l).is_some()))
    });
    proxy.cut();
    let mut b = ddb_statelock(
        &ddb_url(table, endpoint),
        &[
            "exec",
            "--key",
            &key,
            "--lease",
            "2s",
            "--wait",
            "30s",
            "--",
            "sh",
            "-c",
            &format!("date +%s.%N > '{}'", b_first.display()),
        ],
    )
    .spawn()
    .expect("start waiter B");
    let (a_status, a_err) = finish(&mut a);
    let (b_status, b_err) = finish(&mut b);
    assert_eq!(a_status.code(), Some(75), "run {run}, A: {a_err}");
    assert!(
        a_err.contains("SIGTERM") && a_err.contains("lease is running out"),
        "run {run}, A: {a_err}"
    );
    // The release at the end is bounded although the store does not answer.
    assert!(a_err.contains("frees itself"), "run {run}, A: {a_err}");
    if run == 0 {
        eprintln!("holder A said:\n{a_err}");
    }
    assert_eq!(b_status.code(), Some(0), "run {run}, B: {b_err}");
    let a_command = read_pid(&a_pid).expect("A's command pid");
    assert!(is_gone(a_command), "run {run}: A's command outlived A");

    let a_last = std::fs::read_to_string(&a_log)
        .expect("A's log")
        .lines()
        .filter_map(parse_stamp)
        .max()
        .expect("A wrote timestamps");
    let b_first = std::fs::read_to_string(&b_first)
        .ok()
        .and_then(|l| parse_stamp(&l))
        .expect("B's timestamp");
    assert!(
        a_last < b_first,
        "run {run}: A wrote at {a_last:?}, after B's first write at {b_first:?}"
    );
    b_first - a_last
}

/// The record file of `key` in the file store at `store`.
fn record_file(store: &Store, key: &str) -> PathBuf {
    use sha2::Digest;
    store
        .dir
        .path()
        .join("locks")
        .join(format!("{}.json", hex::encode(sha2::Sha256::digest(key))))
}

/// Moves the wall-clock times of `key`'s record `ms` into the past (as if
/// its holder's clock were behind, or the release were that old); the record
/// version is unchanged.
fn age_record(store: &Store, key: &str, ms: i64) {
    let path = record_file(store, key);
    let mut envelope: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("record file")).expect("JSON");
    for field in ["acquired_at", "heartbeat_at"] {
        let t = envelope["record"][field].as_i64().expect("wall time");
        envelope["record"][field] = Value::from(t - ms);
    }
    replace_record(&path, &envelope);
}

/// Replaces a record file atomically (a live holder may read it meanwhile).
fn replace_record(path: &Path, envelope: &Value) {
    let temp = path.with_extension(format!("{}.edit", rand_suffix()));
    std::fs::write(&temp, serde_json::to_vec_pretty(envelope).unwrap()).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

/// `purge --older-than` removes only long-released records, and a purged
/// key's next grant continues above every token it ever had (the token
/// floor); too short an age, or no confirmation without a terminal, is
/// refused.
#[test]
fn purge_removes_old_released_records_and_tokens_never_restart() {
    let store = Store::new();
    let key = "stack:old:env:gone";
    for _ in 0..3 {
        let out = store.run(&["exec", "--key", key, "--", "true"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    let out = store.run(&["exec", "--key", "stack:recent", "--", "true"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(store.status(key)["record"]["token"], Value::from(3));
    age_record(&store, key, 2 * 24 * 3600 * 1000);

    let out = store.run(&["purge", "--older-than", "10m"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("too short"));
    let out = store.run(&["purge", "--older-than", "1d"]);
    assert_eq!(out.status.code(), Some(2), "no --yes without a terminal");
    let out = store.run(&["purge", "--older-than", "1d", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).contains(&format!("would remove {key}")),
        "{}",
        text(&out.stdout)
    );
    assert!(
        record_file(&store, key).exists(),
        "a dry run removes nothing"
    );

    let out = store.run(&["purge", "--older-than", "1d", "--yes", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let done: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(done["purged"].as_array().map(Vec::len), Some(1));
    assert_eq!(done["kept_recent"], Value::from(1));
    assert!(!record_file(&store, key).exists());
    assert_eq!(store.status("stack:recent")["held"], Value::Bool(false));

    let out = store.run(&[
        "exec",
        "--key",
        key,
        "--",
        "sh",
        "-c",
        "echo token=$STATELOCK_TOKEN",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        printed_token(&out.stdout),
        4,
        "tokens continue above the purged ones"
    );
}

/// Liveness is judged by how long this machine has seen the record
/// unchanged, not by the holder's wall clock: a live holder whose clock is
/// five hours behind is not STALE, and a dead holder whose clock was ahead
/// (its last heartbeat "in the future") is STALE once this machine has seen
/// it unchanged for a takeover wait.
#[test]
fn locks_and_status_judge_liveness_by_this_machines_observation() {
    let store = Store::new();
    let cache = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        store
            .cmd(args)
            .env("STATELOCK_CACHE_DIR", cache.path())
            .output()
            .expect("run statelock")
    };
    // A live holder (6 s lease: renews every 2 s) whose clock is 5 h
    // behind: its record carries wall times five hours old.
    let live = Holder::start(&store, "live", &["--lease", "6s"], "exec sleep 30");
    age_record(&store, "live", 5 * 3600 * 1000);
    let out = run(&["locks"]);
    let table = text(&out.stdout);
    let row = table.lines().find(|l| l.starts_with("live")).expect("row");
    assert!(!row.contains("STALE"), "{table}");
    let out = run(&["status", "live", "--observe", "4s", "--output", "json"]);
    let status: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(status["liveness"], Value::from("alive"), "{status}");
    drop(live);

    // A dead holder whose clock was an hour ahead: a record written "in the
    // future", never renewed.
    let out = store.run(&["exec", "--key", "dead", "--lease", "1s", "--", "true"]);
    assert_eq!(out.status.code(), Some(0));
    let path = record_file(&store, "dead");
    let mut envelope: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    envelope["record"]["released"] = Value::Bool(false);
    envelope["record"]["heartbeat_at"] =
        Value::from(envelope["record"]["heartbeat_at"].as_i64().unwrap() + 3600 * 1000);
    replace_record(&path, &envelope);
    let first = run(&["status", "dead", "--output", "json"]);
    let first: Value = serde_json::from_slice(&first.stdout).expect("JSON");
    assert_eq!(first["liveness"], Value::from("unknown"), "{first}");
    // Seen unchanged for longer than a takeover wait (1 s × 1.001 + 0.1 s)
    // by this machine, across two runs of the CLI.
    wait_within("a takeover wait passes", Duration::from_secs(10), || {
        let out = run(&["status", "dead", "--output", "json"]);
        let s: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        s["liveness"] == "stale"
    });
    let out = run(&["locks"]);
    assert!(
        text(&out.stdout)
            .lines()
            .any(|l| l.starts_with("dead") && l.contains("STALE")),
        "{}",
        text(&out.stdout)
    );
}

/// A damaged record is flagged by `locks` (exit 5) while every healthy one
/// is still listed.
#[test]
fn locks_lists_healthy_records_next_to_a_damaged_one() {
    let store = Store::new();
    for key in ["a:ok", "b:damaged", "c:ok"] {
        let out = store.run(&["exec", "--key", key, "--", "true"]);
        assert_eq!(out.status.code(), Some(0));
    }
    std::fs::write(record_file(&store, "b:damaged"), b"{not json").unwrap();
    let out = store.run(&["locks"]);
    assert_eq!(out.status.code(), Some(5));
    let table = text(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("a:ok") && l.contains("free")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("c:ok") && l.contains("free")),
        "{table}"
    );
    assert!(table.contains("DAMAGED"), "{table}");
    let out = store.run(&["locks", "--output", "json"]);
    let listing: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(listing["locks"].as_array().map(Vec::len), Some(2));
    assert_eq!(listing["damaged"].as_array().map(Vec::len), Some(1));
}

/// An audit log that cannot be written is an error, not silence: `exec`
/// refuses to run the command (the grant's event is not on record) and
/// releases the lock; other commands fail after doing their work.
#[test]
fn an_unwritable_audit_log_is_an_error() {
    if !Path::new("/dev/full").exists() {
        eprintln!("skipped: no /dev/full to make writes fail");
        return;
    }
    let store = Store::new();
    let marker = store.path("ran");
    let out = store.run(&[
        "--audit-log",
        "/dev/full",
        "exec",
        "--key",
        "audited",
        "--",
        "touch",
        marker.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("audit log"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !marker.exists(),
        "the command must not run without its audit event"
    );
    assert!(!store.is_held("audited"), "the lock was released");
    // A writable log gets the event and the command runs.
    let log = store.path("audit.jsonl");
    let out = store.run(&[
        "--audit-log",
        log.to_str().unwrap(),
        "exec",
        "--key",
        "audited",
        "--",
        "touch",
        marker.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(marker.exists());
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("lock.acquired"));
}

/// Increments `outputs.counter` of the state document in the file named by
/// `$1` (no jq on the machine: sed and shell arithmetic).
const BUMP: &str = r#"n=$(grep -o '"counter": [0-9]*' "$1" | grep -o '[0-9]*$'); n=${n:-0}; if grep -q '"counter"' "$1"; then sed -i "s/\"counter\": $n/\"counter\": $((n+1))/" "$1"; else sed -i "s/\"outputs\": {}/\"outputs\": {\"counter\": 1}/" "$1"; fi"#;

/// Deploy scripts pull the state, change it and push it back inside
/// `statelock exec --state-store`: every push lands in order, the history
/// lists each version, and a push based on an old pull is refused.
#[test]
fn deploys_pull_change_and_push_the_state_under_exec() {
    let store = Store::new();
    let state_url = format!("file://{}", store.path("state").display());
    let key = "stack:web:env:prod";
    let script = format!(
        "bump() {{ {BUMP}; }}; statelock() {{ '{BIN}' \"$@\"; }}; \
         statelock state pull {key} --to \"$1\" && bump \"$1\" && statelock state push \"$1\""
    );
    for i in 0..3 {
        let doc = store.path(&format!("doc{i}.json"));
        let out = store.run(&[
            "--state-store",
            &state_url,
            "exec",
            "--key",
            key,
            "--",
            "sh",
            "-c",
            &script,
            "sh",
            doc.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    let out = store.run(&[
        "--state-store",
        &state_url,
        "state",
        "show",
        key,
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["outputs"]["counter"], Value::from(3));
    assert_eq!(doc["statelock"]["serial"], Value::from(3));
    let out = store.run(&[
        "--state-store",
        &state_url,
        "state",
        "history",
        key,
        "--output",
        "json",
    ]);
    let history: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let serials: Vec<u64> = history
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|h| h["serial"].as_u64())
        .collect();
    assert_eq!(serials, [3, 2, 1]);
    let tokens: Vec<u64> = history
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["token"].as_u64())
        .collect();
    assert_eq!(
        tokens,
        [3, 2, 1],
        "each deploy wrote with its own, larger token"
    );
    // A push based on an old pull changes nothing (exit 4).
    let old = store.path("doc0.json");
    let out = store.run(&[
        "--state-store",
        &state_url,
        "state",
        "push",
        old.to_str().unwrap(),
        "--key",
        key,
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("changed since this document was pulled"));
}

/// The promise fencing keeps when supervision cannot: holder A pulls the
/// state, then its statelock is frozen (SIGSTOP) while its command runs on;
/// B takes the lock over and seals the state; A's command then pushes —
/// refused (exit 75), nothing written; B's push stands.
#[test]
fn a_frozen_holders_push_after_a_takeover_is_refused() {
    let store = Store::new();
    let state_url = format!("file://{}", store.path("state").display());
    frozen_holder_is_fenced_out(&store, &state_url);
}

/// The same with locks and state in the S3 server's bucket.
#[cfg(feature = "s3")]
#[test]
fn a_frozen_holders_push_after_a_takeover_is_refused_on_s3() {
    let Some(endpoint) = common::s3::endpoint() else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let client = common::s3::raw_client(&endpoint);
    runtime.block_on(common::s3::ensure_bucket(&client, common::s3::BUCKET));
    let url = |what: &str| {
        format!(
            "s3://{}/{}?region=us-east-1&endpoint={endpoint}",
            common::s3::BUCKET,
            common::s3::unique_prefix(what)
        )
    };
    let store = Store::at(url("frozen-locks"));
    frozen_holder_is_fenced_out(&store, &url("frozen-state"));
}

fn frozen_holder_is_fenced_out(store: &Store, state_url: &str) {
    let key = "stack:api:env:prod";
    let a_doc = store.path("a.json");
    let pulled = store.path("pulled");
    let go = store.path("go");
    let a_rc = store.path("a.rc");
    let a_script = format!(
        "'{BIN}' state pull {key} --to '{a}'; touch '{pulled}'; \
         while [ ! -e '{go}' ]; do sleep 0.05; done; \
         sed -i 's/\"outputs\": {{}}/\"outputs\": {{\"writer\": \"A\"}}/' '{a}'; \
         '{BIN}' state push '{a}'; echo $? > '{rc}'",
        a = a_doc.display(),
        pulled = pulled.display(),
        go = go.display(),
        rc = a_rc.display()
    );
    let mut a = store
        .cmd(&[
            "--state-store",
            state_url,
            "exec",
            "--key",
            key,
            "--lease",
            "2s",
            "--",
            "sh",
            "-c",
            &a_script,
        ])
        .spawn()
        .expect("spawn A");
    wait_until("A pulled the state", || pulled.exists());
    let a_pid = Pid::from_raw(a.id() as i32);
    kill(a_pid, Signal::SIGSTOP).expect("SIGSTOP A's statelock");
    // B takes over after A's lease (2 s), seals, pushes.
    let b_script = format!(
        "'{BIN}' state pull {key} --to '{b}' && \
         sed -i 's/\"outputs\": {{}}/\"outputs\": {{\"writer\": \"B\"}}/' '{b}' && \
         '{BIN}' state push '{b}'",
        b = store.path("b.json").display()
    );
    let out = store.run(&[
        "--state-store",
        state_url,
        "exec",
        "--key",
        key,
        "--wait",
        "30s",
        "--",
        "sh",
        "-c",
        &b_script,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // A's command pushes now: refused.
    std::fs::write(&go, b"").unwrap();
    wait_until("A's push finished", || a_rc.exists());
    let rc = std::fs::read_to_string(&a_rc).unwrap();
    assert_eq!(
        rc.trim(),
        "75",
        "a stale holder's push must be refused as stale"
    );
    let out = store.run(&[
        "--state-store",
        state_url,
        "state",
        "show",
        key,
        "--output",
        "json",
    ]);
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["outputs"]["writer"], Value::from("B"), "{doc}");
    assert_eq!(doc["statelock"]["fence"], Value::from(2));
    kill(a_pid, Signal::SIGCONT).expect("SIGCONT");
    let (status, stderr) = finish(&mut a);
    assert_eq!(status.code(), Some(75), "A lost its lease: {stderr}");
}
