//! The `statelock` binary on a quorum store of three file-store members in
//! temporary directories: grants with increasing tokens; a member that
//! comes back empty is shown differing by `status` and `locks` until the
//! next grant rewrites it; the JSON of `status` and `locks` carries the
//! members and the majority; `unlock --force` releases a held quorum lock
//! on every member and its holder sees the lock lost.
//!
//! Every spawned process gets stdin from /dev/null (so `unlock` never
//! prompts). Waits poll for a condition with a bounded deadline.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_statelock");
const PATIENCE: Duration = Duration::from_secs(20);
const MEMBERS: [&str; 3] = ["a", "b", "c"];

/// A quorum of three file stores in a fresh temporary directory.
struct Quorum {
    dir: TempDir,
}

impl Quorum {
    fn new() -> Quorum {
        Quorum {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    /// The directory of member `name`.
    fn member(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn member_url(&self, name: &str) -> String {
        format!("file://{}", self.member(name).display())
    }

    fn url(&self) -> String {
        let members: Vec<String> = MEMBERS
            .iter()
            .map(|m| format!("store={}", self.member_url(m)))
            .collect();
        format!("quorum://?{}", members.join("&"))
    }

    /// `statelock --store QUORUM ARGS...`, stdin from /dev/null, output piped.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--store")
            .arg(self.url())
            .args(args)
            .env_remove("STATELOCK_STORE")
            .env_remove("RUST_LOG")
            .env("STATELOCK_CACHE_DIR", self.dir.path().join("cache"))
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run statelock")
    }

    /// `statelock ARGS...`, which must succeed; its stdout.
    fn stdout(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?} failed: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `status KEY --output json`, parsed.
    fn status(&self, key: &str) -> Value {
        serde_json::from_str(&self.stdout(&["status", key, "--output", "json"]))
            .expect("status JSON")
    }

    /// Runs `exec` on `key` and returns the token its command was given.
    fn exec_token(&self, key: &str) -> u64 {
        let out = self.stdout(&[
            "exec",
            "--key",
            key,
            "--wait",
            "30s",
            "--",
            "sh",
            "-c",
            "echo token=$STATELOCK_TOKEN",
        ]);
        out.lines()
            .find_map(|l| l.strip_prefix("token="))
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or_else(|| panic!("no token in {out:?}"))
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls `condition` until it holds; panics after [`PATIENCE`].
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what} ({PATIENCE:?})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for `child` to exit, at most [`PATIENCE`]; returns its status and stderr.
fn finish(child: &mut Child) -> (ExitStatus, String) {
    use std::io::Read;
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

/// The line of `status`' text that shows member `url`.
fn member_line<'a>(status: &'a str, url: &str) -> &'a str {
    status
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{url} ")))
        .unwrap_or_else(|| panic!("no line for {url} in:\n{status}"))
}

/// The `locks` table row of `key`.
fn locks_row(table: &str, key: &str) -> String {
    table
        .lines()
        .find(|l| l.starts_with(&format!("{key} ")))
        .unwrap_or_else(|| panic!("no row for {key} in:\n{table}"))
        .to_string()
}

/// Checks the quorum fields of `status --output json` against the schema
/// in the long help; returns `(verdict, agreeing)`.
fn check_quorum_json(quorum: &Quorum, status: &Value) -> (String, u64) {
    let members = status["members"].as_array().expect("members array");
    assert_eq!(members.len(), 3, "{status:#}");
    for (member, name) in members.iter().zip(MEMBERS) {
        assert_eq!(member["store"], Value::String(quorum.member_url(name)));
        assert!(member["agrees"].is_boolean(), "{member:#}");
        match member["answer"].as_str().expect("answer") {
            "record" => {
                assert!(member["record"]["token"].is_u64(), "{member:#}");
                assert!(member["record"]["rvn"].is_string(), "{member:#}");
            }
            "absent" => assert!(member["floor"].is_u64(), "{member:#}"),
            "error" => assert!(member["error"].is_string(), "{member:#}"),
            other => panic!("unknown answer {other:?}"),
        }
    }
    let majority = &status["majority"];
    assert_eq!(majority["members"], 3, "{majority:#}");
    assert_eq!(majority["needed"], 2, "{majority:#}");
    assert!(majority["answered"].is_u64(), "{majority:#}");
    let verdict = majority["verdict"].as_str().expect("verdict").to_string();
    let agreeing = majority["agreeing"].as_u64().expect("agreeing");
    let agreeing_members = members.iter().filter(|m| m["agrees"] == true).count() as u64;
    assert_eq!(agreeing, agreeing_members, "{status:#}");
    if verdict == "agreed" {
        assert_eq!(majority["rvn"], status["record"]["rvn"], "{status:#}");
    }
    (verdict, agreeing)
}

#[test]
fn a_member_that_comes_back_empty_differs_until_the_next_grant() {
    let quorum = Quorum::new();
    let key = "stack:web";
    let tokens: Vec<u64> = (0..3).map(|_| quorum.exec_token(key)).collect();
    assert_eq!(tokens, [1, 2, 3]);

    let status = quorum.status(key);
    assert_eq!(status["held"], false, "{status:#}");
    assert_eq!(status["record"]["token"], 3, "{status:#}");
    assert_eq!(
        check_quorum_json(&quorum, &status),
        ("agreed".to_string(), 3)
    );
    let table = quorum.stdout(&["locks"]);
    assert!(locks_row(&table, key).ends_with("3/3 agree"), "{table}");
    assert!(
        table.contains("MEMBERS: how many of the quorum's 3"),
        "{table}"
    );

    // Member c loses everything: it comes back as an empty directory.
    std::fs::remove_dir_all(quorum.member("c")).expect("remove member c");

    let shown = quorum.stdout(&["status", key]);
    let version = status["record"]["rvn"].as_str().expect("rvn");
    assert!(
        member_line(&shown, &quorum.member_url("a")).contains("free, token 3, last holder "),
        "{shown}"
    );
    assert!(
        member_line(&shown, &quorum.member_url("b"))
            .contains(&format!("version {}", &version[..8])),
        "{shown}"
    );
    assert!(
        member_line(&shown, &quorum.member_url("c")).ends_with("no record (token floor 0)"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "majority agrees on version {} (2 of 3 members)",
            &version[..8]
        )),
        "{shown}"
    );
    let status = quorum.status(key);
    assert_eq!(
        check_quorum_json(&quorum, &status),
        ("agreed".to_string(), 2)
    );
    assert_eq!(status["members"][2]["answer"], "absent", "{status:#}");
    assert_eq!(status["members"][2]["agrees"], false, "{status:#}");
    let table = quorum.stdout(&["locks"]);
    assert!(locks_row(&table, key).ends_with("2/3 agree"), "{table}");
    let listing: Value =
        serde_json::from_str(&quorum.stdout(&["locks", "--output", "json"])).expect("locks JSON");
    assert_eq!(listing["members"], 3, "{listing:#}");
    assert_eq!(listing["locks"][0]["members_agreeing"], 2, "{listing:#}");
    assert_eq!(listing["locks"][0]["record"]["token"], 3, "{listing:#}");

    // The next grant continues above every token and rewrites member c.
    assert_eq!(quorum.exec_token(key), 4);
    let status = quorum.status(key);
    assert_eq!(
        check_quorum_json(&quorum, &status),
        ("agreed".to_string(), 3)
    );
    assert_eq!(status["members"][2]["record"]["token"], 4, "{status:#}");
    let shown = quorum.stdout(&["status", key]);
    assert!(shown.contains("(3 of 3 members)"), "{shown}");
    let table = quorum.stdout(&["locks"]);
    assert!(locks_row(&table, key).ends_with("3/3 agree"), "{table}");

    // A never-locked key: JSON null as on any store; the text names the
    // members' agreement on its absence.
    assert_eq!(quorum.status("never:locked"), Value::Null);
    let shown = quorum.stdout(&["status", "never:locked"]);
    assert!(shown.contains("has never been locked"), "{shown}");
    assert!(
        shown.contains("majority agrees there is no record (3 of 3 members)"),
        "{shown}"
    );
}

/// A `statelock exec` holding a key; killed on drop (a failing test must
/// not leave processes behind).
struct Holder {
    exec: Child,
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.exec.kill();
        let _ = self.exec.wait();
    }
}

#[test]
fn force_unlock_releases_a_held_quorum_lock_and_its_holder_loses_it() {
    let quorum = Quorum::new();
    let key = "stack:forced";
    let marker = quorum.dir.path().join("running");
    let script = format!("touch '{}'; while :; do sleep 0.05; done", marker.display());
    let mut cmd = quorum.cmd(&[
        "exec", "--key", key, "--lease", "2s", "--grace", "500ms", "--", "sh", "-c", &script,
    ]);
    cmd.stdout(Stdio::null());
    let mut holder = Holder {
        exec: cmd.spawn().expect("spawn exec"),
    };
    wait_until("the holder's command runs", || marker.exists());
    let status = quorum.status(key);
    assert_eq!(status["held"], true, "{status:#}");
    let token = status["record"]["token"].as_u64().expect("token");

    // Still refused without --yes when stdin is not a terminal.
    let out = quorum.run(&["unlock", key, "--force"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(quorum.status(key)["held"], true);

    let out = quorum.run(&["unlock", key, "--force", "--yes", "--who", "oncall"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("on 3 of the quorum's 3 member stores"),
        "{stdout}"
    );
    assert!(stderr.contains("It is a quorum lock"), "{stderr}");
    assert!(
        member_line(&stderr, &quorum.member_url("a")).contains(&format!("held, token {token}")),
        "{stderr}"
    );

    let (exit, stderr) = finish(&mut holder.exec);
    assert_eq!(exit.code(), Some(75), "{stderr}");
    assert!(
        stderr.contains("lost the lock") && stderr.contains("oncall"),
        "{stderr}"
    );

    let status = quorum.status(key);
    assert_eq!(status["held"], false, "{status:#}");
    assert_eq!(status["record"]["forced_by"], "oncall", "{status:#}");
    assert_eq!(
        check_quorum_json(&quorum, &status),
        ("agreed".to_string(), 3)
    );
    for member in status["members"].as_array().expect("members") {
        assert_eq!(member["record"]["released"], true, "{member:#}");
    }
    // The next grant gets a larger token.
    assert!(quorum.exec_token(key) > token);
}
