//! `statelock bench` end to end: the binary run for about 2 s with 4
//! clients on the file store, the in-process store, DynamoDB Local and the
//! S3 server, its JSON report checked for what must hold whatever the
//! machine's speed (critical sections completed, no overlaps, every key's
//! fenced counter equal to the critical sections completed on it, Jain's
//! index in (0, 1], the raw section with `--raw`), and bad input refused
//! with exit 2 and one line. Nothing here asserts a timing.
//!
//! The service tests find DynamoDB Local and the S3 server through
//! `STATELOCK_TEST_DYNAMODB_ENDPOINT` / `STATELOCK_TEST_S3_ENDPOINT`
//! (`eval "$(scripts/services.sh start)"`) and fail when they are missing.

#[cfg(any(feature = "dynamodb", feature = "s3"))]
mod common;

use serde_json::Value;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_statelock");

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `statelock --store STORE bench ARGS...` with test credentials, stdin
/// from /dev/null, output captured (so neither stream is a terminal).
fn bench(store: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--store")
        .arg(store)
        .arg("bench")
        .args(args)
        .env_remove("STATELOCK_STORE")
        .env_remove("STATELOCK_STATE_STORE")
        .env_remove("RUST_LOG")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .output()
        .expect("run statelock bench")
}

/// Runs a JSON bench of 4 clients for 2 s and checks what must hold in any
/// report; returns it.
fn bench_json(store: &str, extra: &[&str]) -> Value {
    bench_json_for(store, "2s", extra)
}

/// The same for `duration`: a service's first requests (a new table, a JVM
/// warming up) can take seconds on a loaded machine, so its runs are longer.
fn bench_json_for(store: &str, duration: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--clients", "4", "--duration", duration, "--output", "json"];
    args.extend_from_slice(extra);
    let out = bench(store, &args);
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        text(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "nothing on stderr when it is not a terminal: {}",
        text(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    check_report(&report);
    report
}

fn u(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a count: {v}"))
}

fn check_report(r: &Value) {
    assert_eq!(r["schema"], "statelock-bench-v1");
    assert_eq!(u(r, "clients"), 4);
    let completed = u(r, "completed_cs");
    assert!(completed > 0, "no critical section completed: {r}");
    assert_eq!(u(r, "overlaps"), 0, "{r}");
    assert_eq!(u(r, "errors"), 0, "{r}");
    let per_key = r["per_key"].as_array().expect("per_key");
    assert_eq!(per_key.len() as u64, u(r, "keys"));
    let mut sum = 0;
    for k in per_key {
        assert_eq!(u(k, "counter"), u(k, "completed_cs"), "{k}");
        sum += u(k, "completed_cs");
    }
    assert_eq!(sum, completed);
    let per_client = &r["cs_per_client"];
    let counts: Vec<u64> = per_client["counts"]
        .as_array()
        .expect("counts")
        .iter()
        .map(|c| c.as_u64().expect("a count"))
        .collect();
    assert_eq!(counts.len(), 4);
    assert_eq!(counts.iter().sum::<u64>(), completed);
    let jain = per_client["jain"].as_f64().expect("jain");
    assert!(jain > 0.0 && jain <= 1.0, "Jain's index {jain}");
    assert!(r["cs_per_sec"].as_f64().expect("cs_per_sec") > 0.0);
    // Every grant waited (acquire_wait_ms counts grants, one per
    // completed critical section here since nothing failed).
    assert_eq!(u(&r["acquire_wait_ms"], "count"), completed);
    assert!(r["acquire_wait_ms"]["p50"].as_f64().is_some());
    // Every critical section wrote at least its grant and its release.
    let ops = &r["store_ops"];
    assert!(u(ops, "writes") >= 2 * completed, "{ops}");
    assert_eq!(u(r, "takeovers"), 0, "{r}");
}

fn check_raw(r: &Value) {
    let raw = &r["raw"];
    assert!(raw.is_object(), "--raw adds the raw section: {r}");
    assert!(u(raw, "completed_cs") > 0, "{raw}");
    assert_eq!(u(raw, "overlaps"), 0, "{raw}");
    assert_eq!(u(raw, "errors"), 0, "{raw}");
    assert!(raw["cs_per_sec"].as_f64().expect("cs_per_sec") > 0.0);
    assert_eq!(u(&raw["acquire_wait_ms"], "count"), u(raw, "completed_cs"));
    // One put and one delete per critical section, at least.
    assert!(u(&raw["store_ops"], "writes") >= 2 * u(raw, "completed_cs"));
}

#[test]
fn file_store_run_counts_every_critical_section() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = format!("file://{}", dir.path().join("locks").display());
    let report = bench_json(&store, &["--keys", "2"]);
    assert!(report["raw"].is_null(), "no raw section without --raw");
    assert_eq!(u(&report, "keys"), 2);
}

#[test]
fn file_store_run_with_raw_floor() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = format!("file://{}", dir.path().join("locks").display());
    let report = bench_json(&store, &["--raw"]);
    check_raw(&report);
    // The raw lock files are gone afterwards; the lock records stay.
    let left: Vec<String> = std::fs::read_dir(dir.path().join("locks"))
        .expect("the store's directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("bench-raw-"))
        .collect();
    assert!(left.is_empty(), "raw lock files left behind: {left:?}");
}

#[test]
fn memory_store_run_with_raw_floor_and_state_elsewhere() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let state = format!("file://{}", dir.path().join("state").display());
    let report = bench_json("mem://", &["--raw", "--state-store", &state]);
    check_raw(&report);
    assert_eq!(report["state_store"], state.as_str());
    // The counters live in the given state store.
    assert!(dir.path().join("state").read_dir().expect("state").count() > 0);
}

#[test]
fn text_output_is_a_table_without_progress_when_not_a_terminal() {
    let out = bench(
        "mem://",
        &["--clients", "2", "--duration", "1s", "--work", "1ms"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    for row in [
        "CS/s",
        "acquire wait p99",
        "hand-off p50",
        "Jain",
        "overlaps",
    ] {
        assert!(table.contains(row), "no {row:?} row in:\n{table}");
    }
    assert!(!table.contains("raw floor"), "{table}");
}

#[test]
fn bad_input_exits_2_with_one_line() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = format!("file://{}", dir.path().join("locks").display());
    for (store, args) in [
        (store.as_str(), vec!["--clients", "0", "--duration", "2s"]),
        (store.as_str(), vec!["--clients", "4", "--duration", "0s"]),
        (store.as_str(), vec!["--clients", "4", "--duration", "soon"]),
        (
            store.as_str(),
            vec!["--clients", "2", "--duration", "1s", "--keys", "3"],
        ),
        ("nosuch://x", vec!["--clients", "4", "--duration", "2s"]),
    ] {
        let out = bench(store, &args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let message = text(&out.stderr);
        assert_eq!(message.trim_end().lines().count(), 1, "{args:?}: {message}");
        assert!(message.starts_with("statelock: "), "{message}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn help_documents_the_json_fields() {
    let out = Command::new(BIN)
        .args(["bench", "--help"])
        .output()
        .expect("run statelock");
    assert!(out.status.success());
    let help = text(&out.stdout);
    let report = {
        let out = bench(
            "mem://",
            &[
                "--clients",
                "1",
                "--duration",
                "200ms",
                "--output",
                "json",
                "--raw",
            ],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).expect("JSON")
    };
    let mut fields: Vec<&String> = report.as_object().expect("object").keys().collect();
    fields.extend(report["raw"].as_object().expect("raw").keys());
    for field in fields {
        assert!(help.contains(field.as_str()), "{field} is not in --help");
    }
}

#[cfg(feature = "dynamodb")]
#[test]
fn dynamodb_local_run_with_raw_floor() {
    let Some(endpoint) = common::service("STATELOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    let table = format!(
        "statelock-test-bench-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let url = format!("dynamodb://{table}?region=us-east-1&endpoint={endpoint}");
    let created = Command::new(BIN)
        .args(["--store", &url, "dynamodb", "create-table"])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run statelock");
    assert!(created.status.success(), "{}", text(&created.stderr));
    let report = bench_json_for(&url, "8s", &["--raw"]);
    check_raw(&report);
}

#[cfg(feature = "s3")]
#[tokio::test]
async fn s3_server_run_with_raw_floor() {
    let Some(endpoint) = common::s3::endpoint() else {
        return;
    };
    let client = common::s3::raw_client(&endpoint);
    common::s3::ensure_bucket(&client, common::s3::BUCKET).await;
    let prefix = common::s3::unique_prefix("bench");
    let url = format!(
        "s3://{}/{prefix}?region=us-east-1&endpoint={endpoint}",
        common::s3::BUCKET
    );
    let report = tokio::task::spawn_blocking(move || bench_json_for(&url, "8s", &["--raw"]))
        .await
        .expect("the bench ran");
    check_raw(&report);
    // The raw floor's scratch objects are gone.
    let left = client
        .list_objects_v2()
        .bucket(common::s3::BUCKET)
        .prefix(format!("{prefix}/bench-raw/"))
        .send()
        .await
        .expect("list");
    assert_eq!(left.key_count().unwrap_or(0), 0, "{left:?}");
}
