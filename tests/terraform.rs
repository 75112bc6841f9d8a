//! Terraform-compatible locks against DynamoDB Local, and against a real
//! Terraform 1.0.3 using its S3 backend (moto for S3, DynamoDB Local for the
//! lock table): each side sees, respects and reports the other's lock.
//!
//! Needs `eval "$(scripts/services.sh start)"` (which exports
//! `STATELOCK_TEST_DYNAMODB_ENDPOINT`, `STATELOCK_TEST_S3_ENDPOINT` and
//! `STATELOCK_TEST_TERRAFORM`). Without them these tests fail;
//! `STATELOCK_SKIP_SERVICE_TESTS=1` skips them explicitly.
#![cfg(feature = "dynamodb")]

mod common;

use aws_sdk_dynamodb::types::AttributeValue;
use common::{authority, sdk_client, service, HINT};
use statelock::client::{AcquireOptions, LockClient, LockError, LockGuard};
use statelock::protocol::{Backoff, GrantFrom, LeaseId, LockOp, OpKind, RecordVersion, WallTime};
use statelock::store::terraform::{TerraformDynamoStore, NO_EXPIRY_LEASE_MS};
use statelock::store::{LockStore, StoreError};
use statelock::testkit::faults::{FaultMode, LoseResponses};
use statelock::{FencingToken, HolderInfo, LockKey};
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

const TABLE: &str = "statelock-test-tf-locks";

async fn tf_store(endpoint: &str, table: &str) -> TerraformDynamoStore {
    let store = TerraformDynamoStore::new(sdk_client(endpoint), table);
    store
        .create_table()
        .await
        .unwrap_or_else(|e| panic!("cannot create the Terraform lock table: {e}"));
    store
}

/// A Terraform lock id no other test uses: `<bucket>/<key>`.
fn lock_id(name: &str) -> LockKey {
    LockKey::new(format!(
        "statelock-test/{name}/{}/terraform.tfstate",
        uuid::Uuid::new_v4().simple()
    ))
    .unwrap()
}

fn opts(who: &str, operation: &str, lease: Duration, wait: Option<Duration>) -> AcquireOptions {
    let mut holder = HolderInfo::named(who);
    holder.operation = Some(operation.to_string());
    AcquireOptions {
        lease,
        wait,
        backoff: Backoff {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(200),
            poll: Duration::from_millis(20),
        },
        holder,
        ..AcquireOptions::default()
    }
}

/// Acquires `key` without waiting (lease 20 s) as `who` doing `operation`.
async fn acquire_now(
    client: &LockClient,
    key: &LockKey,
    who: &str,
    operation: &str,
) -> Result<LockGuard, LockError> {
    let opts = opts(
        who,
        operation,
        Duration::from_secs(20),
        Some(Duration::ZERO),
    );
    client.acquire(key, opts).await
}

/// Terraform's item `id` in `table`.
async fn tf_item(
    raw: &aws_sdk_dynamodb::Client,
    table: &str,
    id: &str,
) -> Option<std::collections::HashMap<String, AttributeValue>> {
    common::raw_item(raw, table, "LockID", id).await
}

/// statelock writes Terraform's item shape; waits on and reports its own
/// locks like Terraform's; releases by deleting the item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_format_round_trip() {
    let Some(endpoint) = service("STATELOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    let store = tf_store(&endpoint, TABLE).await;
    let key = lock_id("round-trip");
    let client = LockClient::new(store);
    let guard = acquire_now(&client, &key, "alice@laptop", "OperationTypeApply")
        .await
        .expect("acquire");
    assert_eq!(
        guard.token(),
        FencingToken(0),
        "Terraform locks carry no token"
    );

    let item = tf_item(&sdk_client(&endpoint), TABLE, key.as_str())
        .await
        .expect("the lock item");
    assert_eq!(item.len(), 2, "only LockID and Info: {item:?}");
    let info: serde_json::Value =
        serde_json::from_str(item["Info"].as_s().expect("Info is a string")).expect("Info is JSON");
    let fields: Vec<&str> = info
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = fields.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [
            "Created",
            "ID",
            "Info",
            "Operation",
            "Path",
            "Version",
            "Who"
        ]
    );
    assert_eq!(info["ID"], guard.lease_id().to_string());
    assert_eq!(info["Who"], "alice@laptop");
    assert_eq!(info["Operation"], "OperationTypeApply");
    assert_eq!(info["Path"], key.as_str());
    assert!(info["Version"]
        .as_str()
        .expect("Version")
        .starts_with("statelock "));
    assert!(humantime::parse_rfc3339(info["Created"].as_str().expect("Created")).is_ok());

    let status = client.status(&key).await.expect("status").expect("held");
    assert!(status.held && !status.stale);
    assert_eq!(status.record.holder.locked_by, "alice@laptop");
    assert_eq!(status.record.lease_ms, NO_EXPIRY_LEASE_MS);

    let other = LockClient::new(TerraformDynamoStore::new(sdk_client(&endpoint), TABLE));
    match acquire_now(&other, &key, "bob@desk", "OperationTypePlan").await {
        Err(LockError::Held { holder }) => assert_eq!(holder.holder.locked_by, "alice@laptop"),
        other => panic!("the lock must be held, got {other:?}"),
    }
    guard.release().await.expect("release");
    assert_eq!(
        client.status(&key).await.expect("status").map(|s| s.held),
        None
    );
    let again = acquire_now(&other, &key, "bob@desk", "OperationTypePlan")
        .await
        .expect("free after release");
    again.release().await.expect("release");
}

/// An item written exactly as Terraform 1.0.3 writes it (plus its digest
/// item) is shown, never taken over, and force-unlocked only at the version
/// the operator saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_items_are_parsed_and_respected() {
    let Some(endpoint) = service("STATELOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    let store = tf_store(&endpoint, TABLE).await;
    let raw = sdk_client(&endpoint);
    let key = lock_id("terraform-item");
    let info = format!(
        r#"{{"ID":"5b9f1c2e-8d4a-4f51-9c0e-2a7b3d6e1f40","Operation":"OperationTypeApply","Info":"","Who":"carol@build-7","Version":"1.0.3","Created":"2024-01-15T14:20:00.123456Z","Path":"{key}"}}"#
    );
    raw.put_item()
        .table_name(TABLE)
        .item("LockID", AttributeValue::S(key.to_string()))
        .item("Info", AttributeValue::S(info.clone()))
        .send()
        .await
        .expect("put");
    raw.put_item()
        .table_name(TABLE)
        .item("LockID", AttributeValue::S(format!("{key}-md5")))
        .item(
            "Digest",
            AttributeValue::S("0123456789abcdef0123456789abcdef".into()),
        )
        .send()
        .await
        .expect("put digest");

    let record = store.get(&key).await.expect("get").expect("a lock");
    assert_eq!(
        record.owner.to_string(),
        "5b9f1c2e-8d4a-4f51-9c0e-2a7b3d6e1f40"
    );
    assert_eq!(record.holder.locked_by, "carol@build-7");
    assert_eq!(
        record.holder.operation.as_deref(),
        Some("OperationTypeApply")
    );
    assert_eq!(record.acquired_at.as_millis(), 1_705_328_400_123);
    let listed = store.list().await.expect("list");
    let mine: Vec<_> = listed
        .records
        .iter()
        .filter(|r| r.key.as_str().starts_with(key.as_str()))
        .collect();
    assert_eq!(mine, vec![&record], "the digest item is not a lock");
    assert_eq!(
        store
            .get(&LockKey::new(format!("{key}-md5")).unwrap())
            .await,
        Ok(None)
    );

    // Created in 2024, never renewed: still never taken over.
    let client = LockClient::new(store);
    let started = Instant::now();
    match client
        .acquire(
            &key,
            opts(
                "me@here",
                "apply",
                Duration::from_millis(300),
                Some(Duration::from_millis(1500)),
            ),
        )
        .await
    {
        Err(LockError::Timeout {
            holder: Some(h), ..
        }) => assert_eq!(h.holder.locked_by, "carol@build-7"),
        other => panic!("a Terraform lock must never be taken over, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(
        tf_item(&raw, TABLE, key.as_str())
            .await
            .and_then(|i| i.get("Info").cloned()),
        Some(AttributeValue::S(info))
    );

    // Force-unlock: only at the version shown.
    let stale = statelock::protocol::RecordVersion(record.rvn.0 ^ 1);
    assert!(matches!(
        client.force_unlock(&key, stale, "ops@admin").await,
        Err(LockError::Changed { .. })
    ));
    let forced = client
        .force_unlock(&key, record.rvn, "ops@admin")
        .await
        .expect("force");
    assert_eq!(forced.forced_by.as_deref(), Some("ops@admin"));
    assert!(tf_item(&raw, TABLE, key.as_str()).await.is_none());
    assert!(
        tf_item(&raw, TABLE, &format!("{key}-md5")).await.is_some(),
        "the digest is Terraform's"
    );
    let guard = acquire_now(&client, &key, "me@here", "apply")
        .await
        .expect("free after force-unlock");
    guard.release().await.expect("release");
}

/// `terraform force-unlock` deletes the item: the statelock holder's next
/// heartbeat notices and fires the lost signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_notices_a_terraform_force_unlock() {
    let Some(endpoint) = service("STATELOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    let client = LockClient::new(tf_store(&endpoint, TABLE).await);
    let key = lock_id("forced");
    let guard = client
        .acquire(
            &key,
            opts(
                "me@here",
                "apply",
                Duration::from_millis(900),
                Some(Duration::ZERO),
            ),
        )
        .await
        .expect("acquire");
    // Heartbeats (conditional no-op writes) keep it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(guard.is_valid());
    sdk_client(&endpoint)
        .delete_item()
        .table_name(TABLE)
        .key("LockID", AttributeValue::S(key.to_string()))
        .send()
        .await
        .expect("delete");
    tokio::time::timeout(Duration::from_secs(3), guard.lost())
        .await
        .expect("the holder must notice the force-unlock");
    assert!(matches!(guard.check(), Err(LockError::LeaseLost(_))));
}

/// An acquire whose answer is lost is recognised (by the lock's ID) and
/// granted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_acquire_response_is_recognised() {
    let Some(endpoint) = service("STATELOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    let faulty = LoseResponses::new(tf_store(&endpoint, TABLE).await);
    let switch = faulty.switch().clone();
    let client = LockClient::new(faulty);
    let key = lock_id("lost");
    switch.lose_next_responses(1);
    let guard = client
        .acquire(
            &key,
            opts(
                "me@here",
                "apply",
                Duration::from_secs(20),
                Some(Duration::from_secs(5)),
            ),
        )
        .await
        .expect("acquire despite the lost answer");
    assert_eq!(switch.injected(), 1);
    let status = client.status(&key).await.expect("status").expect("held");
    assert_eq!(status.record.owner, guard.lease_id());
    switch.lose_next_responses(1);
    guard
        .release()
        .await
        .expect("release despite the lost answer");
    assert!(client.status(&key).await.expect("status").is_none());
}

/// An acquire that landed but whose answer never came back is abandoned
/// when the wait runs out: the release recognises the lock by its `ID` (the
/// lease id) although it carries the acquire's own new version, which a
/// Terraform lock never has, and deletes it. Otherwise the lock, which never
/// expires, would stay forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_acquire_leaves_no_lock() {
    let Some(endpoint) = service("STATELOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    let raw = sdk_client(&endpoint);
    let faulty = LoseResponses::new(tf_store(&endpoint, TABLE).await);
    let switch = faulty.switch().clone();
    let client = LockClient::new(faulty);

    // The acquire lands, its answer is lost, and the caller does not wait.
    let key = lock_id("abandoned-now");
    switch.lose_next_responses(1);
    match acquire_now(&client, &key, "me@here", "apply").await {
        Err(LockError::Store(e)) => assert!(e.is_retryable(), "{e:?}"),
        other => panic!("a lost answer with no time to resend must fail, got {other:?}"),
    }
    assert_eq!(switch.injected(), 1, "only the acquire's answer was lost");
    assert!(
        tf_item(&raw, TABLE, key.as_str()).await.is_none(),
        "the abandoned lock must be deleted"
    );

    // Every answer is lost (the releases' too) for the whole wait: each
    // write lands, and the lock is still gone at the end.
    let key = lock_id("abandoned-wait");
    switch.set(FaultMode::LoseResponses);
    let result = client
        .acquire(
            &key,
            opts(
                "me@here",
                "apply",
                Duration::from_secs(20),
                Some(Duration::from_millis(300)),
            ),
        )
        .await;
    switch.off();
    assert!(
        matches!(result, Err(LockError::Store(_))),
        "no answer ever came: {result:?}"
    );
    assert!(switch.injected() >= 3, "acquire, resend, release");
    assert!(
        tf_item(&raw, TABLE, key.as_str()).await.is_none(),
        "the abandoned lock must be deleted"
    );
    let guard = acquire_now(&client, &key, "other@there", "apply")
        .await
        .expect("the key is free again");
    guard.release().await.expect("release");
}

/// A Terraform lock has one version: heartbeats and releases need only the
/// lease id (`Info.ID`) to match, whatever version the op carries, in this
/// store or in another one that has never seen the lock. Another lease id
/// never matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_and_release_recognise_the_lock_by_its_id() {
    let Some(endpoint) = service("STATELOCK_TEST_DYNAMODB_ENDPOINT") else {
        return;
    };
    let raw = sdk_client(&endpoint);
    let mine = tf_store(&endpoint, TABLE).await;
    let fresh = TerraformDynamoStore::new(sdk_client(&endpoint), TABLE);
    let key = lock_id("by-id");
    let owner = LeaseId::random();
    let op = |kind: OpKind| LockOp {
        key: key.clone(),
        new_rvn: RecordVersion::random(),
        at: WallTime(1_705_328_400_000),
        kind,
    };
    let granted = mine
        .apply(&op(OpKind::Acquire {
            from: GrantFrom::Absent {
                floor: FencingToken::NONE,
            },
            owner,
            lease_ms: 20_000,
            holder: HolderInfo::named("me@here"),
            at_least: FencingToken::NONE,
            dequeue: Default::default(),
        }))
        .await
        .expect("acquire");
    let wrong_version = || RecordVersion(granted.rvn.0 ^ 1);

    for store in [&mine, &fresh] {
        let beat = store
            .apply(&op(OpKind::Heartbeat {
                owner,
                current: wrong_version(),
            }))
            .await
            .expect("a heartbeat of the holder's lease id");
        assert_eq!((beat.owner, beat.rvn), (owner, granted.rvn));
    }
    // Another lease id is refused and shown the holder.
    for kind in [
        OpKind::Heartbeat {
            owner: LeaseId::random(),
            current: granted.rvn,
        },
        OpKind::Release {
            owner: LeaseId::random(),
            current: granted.rvn,
        },
    ] {
        match fresh.apply(&op(kind)).await {
            Err(StoreError::Conflict { current: Some(c) }) => assert_eq!(c.owner, owner),
            other => panic!("another lease must conflict, got {other:?}"),
        }
    }

    // The item is rewritten with the same ID but another `Info` (as when
    // the answer of an acquire from another store was lost): `mine`
    // remembers the old `Info`, fails once, and retries with the new one.
    let item = tf_item(&raw, TABLE, key.as_str()).await.expect("the lock");
    let info = item["Info"].as_s().expect("Info").clone();
    let rewritten = info.replace("\"Who\":\"me@here\"", "\"Who\":\"me@elsewhere\"");
    assert_ne!(rewritten, info);
    raw.put_item()
        .table_name(TABLE)
        .item("LockID", AttributeValue::S(key.to_string()))
        .item("Info", AttributeValue::S(rewritten))
        .send()
        .await
        .expect("rewrite");
    let beat = mine
        .apply(&op(OpKind::Heartbeat {
            owner,
            current: wrong_version(),
        }))
        .await
        .expect("a heartbeat of the rewritten lock");
    assert_eq!(beat.holder.locked_by, "me@elsewhere");

    let released = mine
        .apply(&op(OpKind::Release {
            owner,
            current: wrong_version(),
        }))
        .await
        .expect("a release of the holder's lease id");
    assert!(released.released);
    assert!(tf_item(&raw, TABLE, key.as_str()).await.is_none());
    // Released already: nothing to release, in either store.
    for store in [&mine, &fresh] {
        match store
            .apply(&op(OpKind::Release {
                owner,
                current: granted.rvn,
            }))
            .await
        {
            Err(StoreError::Conflict { current: None }) => {}
            other => panic!("a released lock has no record, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Against the real Terraform binary.

/// Creates an S3 bucket on moto with one unsigned HTTP request (moto accepts
/// any Authorization header).
fn create_bucket(s3_endpoint: &str, bucket: &str) {
    let host = authority(s3_endpoint);
    let mut stream = std::net::TcpStream::connect(host).expect("connect to the S3 server");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/s3/aws4_request, \
         SignedHeaders=host, Signature=0\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(
        response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
        "creating bucket {bucket} failed: {response}"
    );
}

struct Terraform {
    binary: String,
    dir: tempfile::TempDir,
}

impl Terraform {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_IN_AUTOMATION", "1")
            .env_remove("TF_CLI_ARGS")
            .kill_on_drop(true);
        cmd
    }

    /// Runs terraform to completion: (success, stdout + stderr).
    async fn run(&self, args: &[&str]) -> (bool, String) {
        let out = tokio::time::timeout(
            Duration::from_secs(180),
            self.command(args).stdin(Stdio::null()).output(),
        )
        .await
        .unwrap_or_else(|_| panic!("terraform {args:?} did not finish in 3 minutes"))
        .expect("run terraform");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

/// (b) A real `terraform apply` waiting at its prompt holds the lock:
/// statelock shows Terraform as the holder and refuses to acquire.
/// (a) statelock holds the lock: `terraform apply -lock-timeout=0s` fails with
/// its state-lock error naming statelock's holder; after the release it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_terraform_and_statelock_respect_each_other() {
    let (Some(ddb), Some(s3)) = (
        service("STATELOCK_TEST_DYNAMODB_ENDPOINT"),
        service("STATELOCK_TEST_S3_ENDPOINT"),
    ) else {
        return;
    };
    let binary = std::env::var("STATELOCK_TEST_TERRAFORM")
        .unwrap_or_else(|_| panic!("STATELOCK_TEST_TERRAFORM is not set: {HINT}"));
    assert!(
        std::path::Path::new(&binary).is_file(),
        "no Terraform binary at {binary}: {HINT}"
    );

    let table = "statelock-test-tf-e2e";
    let store = tf_store(&ddb, table).await;
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let bucket = format!("statelock-tf-{suffix}");
    create_bucket(&s3, &bucket);
    let state_key = "env/prod/terraform.tfstate";
    let key = LockKey::new(format!("{bucket}/{state_key}")).unwrap();

    let tf = Terraform {
        binary,
        dir: tempfile::tempdir().expect("temp dir"),
    };
    std::fs::write(
        tf.dir.path().join("main.tf"),
        format!(
            r#"terraform {{
  backend "s3" {{
    bucket                      = "{bucket}"
    key                         = "{state_key}"
    region                      = "us-east-1"
    endpoint                    = "{s3}"
    dynamodb_endpoint           = "{ddb}"
    dynamodb_table              = "{table}"
    force_path_style            = true
    skip_credentials_validation = true
    skip_metadata_api_check     = true
    skip_region_validation      = true
    access_key                  = "test"
    secret_key                  = "test"
  }}
}}

output "greeting" {{
  value = "hello from {suffix}"
}}
"#
        ),
    )
    .expect("write main.tf");
    let (ok, out) = tf.run(&["init", "-input=false", "-no-color"]).await;
    assert!(ok, "terraform init failed:\n{out}");

    let client = LockClient::new(store);

    // (b) Terraform holds the lock while it waits for approval.
    let mut apply = tf
        .command(&["apply", "-no-color", "-lock-timeout=0s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start terraform apply");
    let mut stdin = apply.stdin.take().expect("stdin");
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = client.status(&key).await.expect("status") {
            break status;
        }
        if let Ok(Some(exit)) = apply.try_wait() {
            let out = apply.wait_with_output().await.expect("output");
            panic!(
                "terraform apply exited ({exit}) before locking:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(Instant::now() < deadline, "terraform never took the lock");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(status.held);
    let who = status.record.holder.locked_by.clone();
    assert!(
        who.contains('@'),
        "Terraform's Who is user@host, got {who:?}"
    );
    assert_eq!(
        status.record.holder.operation.as_deref(),
        Some("OperationTypeApply")
    );
    assert_eq!(
        status
            .record
            .holder
            .metadata
            .get("terraform_version")
            .map(String::as_str),
        Some("1.0.3")
    );
    match acquire_now(&client, &key, "statelock-e2e@ci-runner", "statelock exec").await {
        Err(LockError::Held { holder }) => assert_eq!(holder.holder.locked_by, who),
        other => panic!("Terraform holds the lock; acquire must be refused, got {other:?}"),
    }
    // The same through the command line: `status` shows Terraform's holder
    // (a lock without lease or token), `exec --wait 0s` refuses (exit 3).
    let url = format!("dynamodb://{table}?endpoint={ddb}&format=terraform");
    let cli = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_statelock"));
        cmd.arg("--store").arg(&url).args(args);
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        cmd
    };
    let out = cli(&["status", key.as_str()])
        .output()
        .await
        .expect("run statelock status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "statelock status: {out:?}");
    for expected in [
        "state:          held",
        &format!("holder:         {who}"),
        "operation:      OperationTypeApply",
        "token:          none (this lock format has no fencing tokens)",
        "lease:          never expires",
        "meta terraform_version: 1.0.3",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
    let out = cli(&["exec", "--key", key.as_str(), "--wait", "0s", "--", "true"])
        .output()
        .await
        .expect("run statelock exec");
    assert_eq!(out.status.code(), Some(3), "exec --wait 0s: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&who), "exec names Terraform's holder: {err}");

    // Decline the apply: Terraform unlocks and exits.
    stdin.write_all(b"no\n").await.expect("answer the prompt");
    stdin.flush().await.expect("flush");
    let exit = tokio::time::timeout(Duration::from_secs(60), apply.wait())
        .await
        .expect("terraform apply finishes after the answer")
        .expect("wait");
    drop(stdin);
    assert!(!exit.success(), "a declined apply exits non-zero");
    assert!(
        client.status(&key).await.expect("status").is_none(),
        "Terraform released the lock"
    );

    // (a) `statelock exec` holds the lock: Terraform refuses and names the
    // holder. The command prints its lease id and waits for a line on stdin.
    let mut exec = tokio::process::Command::new(env!("CARGO_BIN_EXE_statelock"))
        .arg("--store")
        .arg(&url)
        .args([
            "exec",
            "--key",
            key.as_str(),
            "--who",
            "statelock-e2e@ci-runner",
            "--operation",
            "deploy",
            "--wait",
            "0s",
            "--",
            "sh",
            "-c",
            "echo \"$STATELOCK_LEASE_ID\"; read line",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start statelock exec");
    let mut exec_stdin = exec.stdin.take().expect("stdin");
    let mut lines = tokio::io::BufReader::new(exec.stdout.take().expect("stdout")).lines();
    let lease_id = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("statelock exec starts its command")
        .expect("read")
        .expect("the command prints its lease id");
    let (ok, out) = tf
        .run(&[
            "apply",
            "-no-color",
            "-input=false",
            "-auto-approve",
            "-lock-timeout=0s",
        ])
        .await;
    assert!(
        !ok,
        "terraform apply must fail while statelock holds the lock:\n{out}"
    );
    assert!(out.contains("Error acquiring the state lock"), "{out}");
    assert!(
        out.contains("statelock-e2e@ci-runner"),
        "Terraform must name the holder:\n{out}"
    );
    assert!(out.contains("deploy"), "and its operation:\n{out}");
    assert!(out.contains(&lease_id), "and its lock ID:\n{out}");
    exec_stdin
        .write_all(b"done\n")
        .await
        .expect("finish the command");
    drop(exec_stdin);
    let exit = tokio::time::timeout(Duration::from_secs(30), exec.wait())
        .await
        .expect("statelock exec ends with its command")
        .expect("wait");
    assert_eq!(exit.code(), Some(0), "statelock exec released and exited 0");

    let (ok, out) = tf
        .run(&[
            "apply",
            "-no-color",
            "-input=false",
            "-auto-approve",
            "-lock-timeout=0s",
        ])
        .await;
    assert!(
        ok,
        "terraform apply must work once statelock released the lock:\n{out}"
    );
    assert!(out.contains(&format!("hello from {suffix}")), "{out}");
    assert!(client.status(&key).await.expect("status").is_none());
    let locks = client.locks().await.expect("list");
    assert!(
        locks
            .locks
            .iter()
            .all(|l| !l.record.key.as_str().starts_with(&bucket)),
        "no lock (and no digest item) of this state is listed: {:?}",
        locks.locks
    );
}
