//! The quorum store with real processes and real services: four
//! `statelock exec` processes contend for one key through a quorum of a
//! DynamoDB Local table, a bucket on a moto (S3) server of the test's own
//! and a file store, each round a fenced increment of the key's state (a
//! file state store). Midway the moto server is killed with SIGKILL, and
//! later restarted on the same port, empty (moto keeps everything in
//! memory; the test creates the bucket again). Grants go on while it is
//! down, every increment lands exactly once, tokens only increase, and the
//! grants after its return repair it.
//!
//! A member that comes back without its records is outside what a quorum
//! tolerates in general (PROTOCOL.md, "Quorum lock"); here it is safe, and
//! the test checks the condition that makes it so: grants happened while
//! the member was down, and each of them had to land on *both* other
//! members, so those two hold every grant when the empty member returns.
//!
//! Needs DynamoDB Local (`STATELOCK_TEST_DYNAMODB_ENDPOINT`, from
//! `eval "$(scripts/services.sh start)"`) and the moto server that
//! `scripts/services.sh` installs (`.services/venv/bin/moto_server`, or
//! the program `STATELOCK_TEST_MOTO_SERVER` names): the test starts a moto
//! of its own on a free port so that killing it disturbs no other test.
//! Without them the test fails; `STATELOCK_SKIP_SERVICE_TESTS=1` skips it
//! explicitly. It never touches the shared moto server and stops every
//! process it started, by its own pid.
#![cfg(all(feature = "dynamodb", feature = "s3"))]

mod common;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_statelock");

/// The contending `statelock exec` processes (one at a time per thread).
const CONTENDERS: usize = 4;

/// Rounds each contender runs.
const ROUNDS: usize = 10;

/// The key they contend for.
const KEY: &str = "stack:quorum:env:prod";

/// The bucket on the private moto server.
const BUCKET: &str = "statelock-quorum";

/// The longest any phase of the run may take.
const PATIENCE: Duration = Duration::from_secs(60);

/// Increments `outputs.counter` of the state document in the file named by
/// `$1` (no jq on the machine: sed and shell arithmetic).
const BUMP: &str = r#"n=$(grep -o '"counter": [0-9]*' "$1" | grep -o '[0-9]*$'); n=${n:-0}; if grep -q '"counter"' "$1"; then sed -i "s/\"counter\": $n/\"counter\": $((n+1))/" "$1"; else sed -i "s/\"outputs\": {}/\"outputs\": {\"counter\": 1}/" "$1"; fi"#;

/// Marks the parent writes into the round log.
const DOWN: &str = "# member down";
const RESTARTING: &str = "# member restarting";
const UP: &str = "# member up";

/// The moto program `scripts/services.sh` installed (or the one
/// `STATELOCK_TEST_MOTO_SERVER` names); panics, failing the test, when
/// there is none.
fn moto_program() -> PathBuf {
    let program = std::env::var_os("STATELOCK_TEST_MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(".services/venv/bin/moto_server")
        });
    assert!(
        program.is_file(),
        "no moto server at {}: install it with `scripts/services.sh install s3` (or point \
         STATELOCK_TEST_MOTO_SERVER at a moto_server), or {}",
        program.display(),
        common::HINT
    );
    program
}

/// A moto server of this test's own on 127.0.0.1, killed (by its pid)
/// when dropped.
struct PrivateMoto {
    program: PathBuf,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl PrivateMoto {
    /// Starts moto on a free port and waits until it answers.
    fn start(program: PathBuf, log: PathBuf) -> PrivateMoto {
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut moto = PrivateMoto {
                program: program.clone(),
                port,
                log: log.clone(),
                child: None,
            };
            match moto.spawn() {
                Ok(()) => return moto,
                Err(e) => last = e,
            }
        }
        panic!("the private moto server did not start: {last}");
    }

    /// `http://127.0.0.1:PORT`.
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's pid.
    fn pid(&self) -> Pid {
        let child = self.child.as_ref().expect("the server runs");
        Pid::from_raw(i32::try_from(child.id()).expect("pid"))
    }

    /// Starts the server on its port and waits (bounded) until it answers
    /// `GET /` with 200; retries while the port is not free yet.
    fn spawn(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .expect("moto log");
            let mut child = Command::new(&self.program)
                .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("moto log"))
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot run {}: {e}", self.program.display()))?;
            loop {
                if answers(self.port) {
                    self.child = Some(child);
                    return Ok(());
                }
                if let Some(status) = child.try_wait().expect("try_wait") {
                    let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                    if log.contains("in use") && Instant::now() < deadline {
                        break; // the port is not free yet: start it again
                    }
                    return Err(format!("moto exited ({status}); its log:\n{log}"));
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "moto not answering on port {} after {PATIENCE:?}",
                        self.port
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILL to the server's pid; waits until it is gone.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
            kill(pid, Signal::SIGKILL).expect("SIGKILL the private moto server");
            child.wait().expect("reap the private moto server");
        }
    }
}

impl Drop for PrivateMoto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nothing listens on just now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Whether an HTTP server on `port` answers `GET /` with 200.
fn answers(port: u16) -> bool {
    let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    if conn
        .write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 16];
    let mut got = 0;
    while got < head.len() {
        match conn.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    String::from_utf8_lossy(&head[..got]).contains(" 200")
}

/// Creates `bucket`; whether it was new (`false`: it existed already).
async fn create_bucket(endpoint: &str, bucket: &str) -> bool {
    let client = common::s3::raw_client(endpoint);
    match client.create_bucket().bucket(bucket).send().await {
        Ok(_) => true,
        Err(e) => {
            let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&e);
            assert!(
                matches!(
                    code,
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ),
                "cannot create the bucket {bucket} at {endpoint}: {e:?}"
            );
            false
        }
    }
}

/// What the contenders share.
struct Run {
    dir: tempfile::TempDir,
    quorum: String,
    state: String,
    log: PathBuf,
    /// Set when a contender failed: the others stop.
    failed: AtomicBool,
}

impl Run {
    /// `statelock ARGS...` with test credentials and this run's cache
    /// directory, stdin from /dev/null, output piped.
    fn statelock(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("STATELOCK_STORE")
            .env_remove("STATELOCK_STATE_STORE")
            .env_remove("RUST_LOG")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("STATELOCK_CACHE_DIR", self.dir.path().join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Appends `line` to the round log.
    fn mark(&self, line: &str) {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("round log");
        log.write_all(format!("{line}\n").as_bytes())
            .expect("write the round log");
    }

    /// The round log's lines.
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Rounds logged after the marker `after` (all rounds without one).
    fn rounds_after(&self, after: Option<&str>) -> usize {
        let lines = self.lines();
        let start = match after {
            Some(marker) => match lines.iter().position(|l| l == marker) {
                Some(i) => i + 1,
                None => return 0,
            },
            None => 0,
        };
        lines[start..]
            .iter()
            .filter(|l| !l.starts_with('#'))
            .count()
    }

    /// Waits (bounded) until `n` rounds were logged after `after`; panics
    /// when a contender failed or the deadline passed.
    fn await_rounds(&self, after: Option<&str>, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.rounds_after(after) < n {
            assert!(
                !self.failed.load(Ordering::SeqCst),
                "a contender failed (its error follows)"
            );
            assert!(
                Instant::now() < deadline,
                "fewer than {n} rounds after {after:?} within {PATIENCE:?}: {:?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One contender: `ROUNDS` times `statelock exec` on the quorum, whose
    /// command pulls the state, increments its counter, pushes it and logs
    /// `NAME TOKEN` (all under the lock). The tokens it was granted, in
    /// order, or why a round failed.
    fn contend(&self, name: &str) -> Result<Vec<u64>, String> {
        let doc = self.dir.path().join(format!("{name}.json"));
        let script = format!(
            "bump() {{ {BUMP}; }}; sl() {{ '{BIN}' \"$@\"; }}; \
             sl state pull {KEY} --to \"$1\" && bump \"$1\" && sl state push \"$1\" && \
             echo \"$2 $STATELOCK_TOKEN\" >> '{log}' && echo \"token=$STATELOCK_TOKEN\"",
            log = self.log.display()
        );
        let mut tokens = Vec::new();
        for round in 0..ROUNDS {
            if self.failed.load(Ordering::SeqCst) {
                return Err(format!("{name}: stopped after another contender failed"));
            }
            let out: Output = self
                .statelock(&[
                    "--store",
                    &self.quorum,
                    "--state-store",
                    &self.state,
                    "exec",
                    "--key",
                    KEY,
                    "--wait",
                    "60s",
                    "--",
                    "sh",
                    "-c",
                    &script,
                    "sh",
                    doc.to_str().expect("path"),
                    name,
                ])
                .output()
                .map_err(|e| format!("{name}: cannot run statelock: {e}"))?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.code() != Some(0) {
                self.failed.store(true, Ordering::SeqCst);
                return Err(format!(
                    "{name} round {round}: exec exited {:?}: {stdout}{stderr}",
                    out.status.code()
                ));
            }
            let token = stdout
                .lines()
                .find_map(|l| l.strip_prefix("token="))
                .and_then(|t| t.trim().parse().ok())
                .ok_or_else(|| format!("{name} round {round}: no token in {stdout:?}"))?;
            tokens.push(token);
        }
        Ok(tokens)
    }

    /// The record of [`KEY`] in the store at `url`, as `statelock locks
    /// --output json` shows it.
    fn record_in(&self, url: &str) -> Value {
        let out = self
            .statelock(&["--store", url, "locks", "--output", "json"])
            .output()
            .expect("run statelock locks");
        assert_eq!(
            out.status.code(),
            Some(0),
            "locks on {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing: Value = serde_json::from_slice(&out.stdout).expect("locks JSON");
        listing["locks"]
            .as_array()
            .expect("locks array")
            .iter()
            .map(|status| status["record"].clone())
            .find(|record| record["key"] == KEY)
            .unwrap_or_else(|| panic!("no record of {KEY} in {url}: {listing}"))
    }

    /// `statelock state ARGS... --output json`, parsed.
    fn state_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--state-store", &self.state, "state"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--output", "json"]);
        let out = self.statelock(&all).output().expect("run statelock state");
        assert_eq!(
            out.status.code(),
            Some(0),
            "state {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("state JSON")
    }
}

/// Stops the contenders (after their current round) when dropped, so a
/// failing test leaves no rounds running.
struct StopOnDrop(Arc<Run>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.failed.store(true, Ordering::SeqCst);
    }
}

/// The parts of a record two members must agree on.
fn write_of(record: &Value) -> (Value, Value, Value, Value) {
    (
        record["rvn"].clone(),
        record["token"].clone(),
        record["owner"].clone(),
        record["released"].clone(),
    )
}

/// Four `statelock exec` processes contend on a quorum of DynamoDB Local,
/// a private moto and a file store; the moto member is killed midway and
/// restarted empty. Every increment lands exactly once, tokens never go
/// back, grants go on while the member is down, and after its return the
/// grants repair it.
#[test]
fn contenders_ride_out_a_killed_member_and_the_next_grants_repair_it() {
    let Some(ddb) = common::service("STATELOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    let program = moto_program();
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut moto = PrivateMoto::start(program, dir.path().join("moto.log"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    assert!(
        runtime.block_on(create_bucket(&moto.endpoint(), BUCKET)),
        "a new moto server already had the bucket {BUCKET}"
    );
    let table = format!("statelock-quorum-{}", uuid::Uuid::new_v4().simple());
    runtime
        .block_on(
            statelock::store::dynamodb::DynamoDbStore::new(common::sdk_client(&ddb), &table)
                .create_table(),
        )
        .expect("create the table");

    let ddb_url = format!("dynamodb://{table}?region=us-east-1&endpoint={ddb}");
    let s3_url = format!(
        "s3://{BUCKET}/quorum?region=us-east-1&endpoint={}",
        moto.endpoint()
    );
    let file_url = format!("file://{}", dir.path().join("locks").display());
    let run = Arc::new(Run {
        quorum: format!("quorum://?store={ddb_url}&store={s3_url}&store={file_url}"),
        state: format!("file://{}", dir.path().join("state").display()),
        log: dir.path().join("rounds.log"),
        failed: AtomicBool::new(false),
        dir,
    });

    let contenders: Vec<_> = (0..CONTENDERS)
        .map(|c| {
            let run = run.clone();
            std::thread::spawn(move || run.contend(&format!("p{c}")))
        })
        .collect();
    let _stop = StopOnDrop(run.clone());

    // A few rounds with every member up, then the moto member is killed.
    run.await_rounds(None, 6);
    let pid = moto.pid();
    moto.kill();
    run.mark(DOWN);
    assert!(
        nix::sys::signal::kill(pid, None).is_err(),
        "the killed moto server still runs"
    );
    // Grants go on without it. The first round logged after the mark may
    // have been granted before the kill; the others were not.
    run.await_rounds(Some(DOWN), 3);
    run.mark(RESTARTING);
    moto.spawn().expect("restart the private moto server");
    assert!(
        runtime.block_on(create_bucket(&moto.endpoint(), BUCKET)),
        "the restarted moto server still had the bucket: it should come back empty"
    );
    run.mark(UP);

    let mut per_process = Vec::new();
    let mut errors = Vec::new();
    for (c, handle) in contenders.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(tokens)) => per_process.push((c, tokens)),
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push(format!("contender p{c} panicked")),
        }
    }
    assert!(errors.is_empty(), "contenders failed: {errors:#?}");
    let total = CONTENDERS * ROUNDS;

    // Tokens never go back: per process, and in the order the rounds
    // completed (the log is written under the lock).
    for (c, tokens) in &per_process {
        assert_eq!(tokens.len(), ROUNDS, "p{c}");
        assert!(
            tokens.windows(2).all(|w| w[0] < w[1]),
            "p{c}'s tokens went back: {tokens:?}"
        );
    }
    let lines = run.lines();
    let logged: Vec<u64> = lines
        .iter()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            l.split_once(' ')
                .and_then(|(_, t)| t.parse().ok())
                .unwrap_or_else(|| panic!("bad log line {l:?}"))
        })
        .collect();
    assert_eq!(logged.len(), total, "one log line per round: {lines:?}");
    assert!(
        logged.windows(2).all(|w| w[0] < w[1]),
        "tokens went back in completion order: {lines:?}"
    );
    let mut granted: Vec<u64> = per_process.iter().flat_map(|(_, t)| t.clone()).collect();
    granted.sort_unstable();
    assert_eq!(
        granted, logged,
        "the processes saw the tokens the log shows"
    );

    // Grants happened while the member was down, and after its return.
    let index = |marker: &str| {
        lines
            .iter()
            .position(|l| l == marker)
            .unwrap_or_else(|| panic!("no {marker:?} in {lines:?}"))
    };
    let (down, restarting, up) = (index(DOWN), index(RESTARTING), index(UP));
    let while_down = lines[down + 1..restarting].len();
    let after_up = lines[up + 1..].len();
    assert!(
        while_down >= 2,
        "fewer than one grant while the member was down: {lines:?}"
    );
    assert!(
        after_up >= 2,
        "the rounds ended before the member was back long enough (raise ROUNDS): {lines:?}"
    );

    // The counter equals the completed rounds exactly; one save per round,
    // tokens never going back.
    let doc = run.state_json(&["show", KEY]);
    assert_eq!(doc["outputs"]["counter"], Value::from(total), "{doc}");
    assert_eq!(doc["statelock"]["serial"], Value::from(total), "{doc}");
    let limit = (total + 10).to_string();
    let history = run.state_json(&["history", KEY, "--limit", &limit]);
    let mut history = history.as_array().expect("history array").clone();
    history.reverse();
    let serials: Vec<u64> = history
        .iter()
        .filter_map(|h| h["serial"].as_u64())
        .collect();
    assert_eq!(serials, (1..=total as u64).collect::<Vec<_>>());
    let saved: Vec<u64> = history.iter().filter_map(|h| h["token"].as_u64()).collect();
    assert_eq!(
        saved, logged,
        "each save carries its round's token, in order"
    );

    // A majority of the members holds the last grant's released record;
    // no member is ahead of it; and the restarted member took part in the
    // grants after its return (repaired: it holds a token granted after it
    // came back). The last process may exit before its write reaches the
    // slowest member, so one member may be one grant behind.
    let last = logged.iter().copied().max().unwrap_or(0);
    let records = [
        run.record_in(&ddb_url),
        run.record_in(&file_url),
        run.record_in(&s3_url),
    ];
    let writes: Vec<_> = records.iter().map(write_of).collect();
    let agreed = writes
        .iter()
        .find(|w| writes.iter().filter(|o| o == w).count() >= 2)
        .unwrap_or_else(|| panic!("no majority of the members agrees: {records:?}"));
    let majority = records
        .iter()
        .find(|r| &write_of(r) == agreed)
        .unwrap_or_else(|| panic!("no agreed record"));
    assert_eq!(majority["token"].as_u64(), Some(last), "{records:?}");
    assert_eq!(majority["released"], Value::Bool(true), "{majority}");
    for r in &records {
        assert!(
            r["token"].as_u64().is_some_and(|t| t <= last),
            "a member is ahead of the last grant: {records:?}"
        );
    }
    let first_after_up = lines[up + 1..]
        .iter()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|t| t.parse::<u64>().ok())
        })
        .min()
        .unwrap_or(u64::MAX);
    let on_s3 = &records[2];
    assert!(
        on_s3["token"].as_u64().is_some_and(|t| t >= first_after_up),
        "the restarted member was not repaired: token {} but {first_after_up} was granted after \
         it came back ({records:?})",
        on_s3["token"]
    );
    eprintln!(
        "{total} rounds in {:?}: {while_down} logged while the member was down, {after_up} after \
         it was back; last token {last}",
        started.elapsed()
    );
}
