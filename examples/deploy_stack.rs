//! The deploy flow of a stack, on the embedded default stores (a directory for
//! locks, one for state; no services): take the stack's lock → seal and load
//! its state → "apply" (here: record a deployment) → save it, fenced by the
//! lock's token → release. Run it twice at once and the second run waits for
//! the first; each run's save carries a larger token.
//!
//! ```sh
//! cargo run --example deploy_stack -- user-platform production
//! cargo run --example deploy_stack -- user-platform production /tmp/deploy-demo
//! ```
//!
//! The optional third argument is a directory to keep locks and state in
//! (default: the per-user default stores that the `statelock` CLI uses too, so
//! `statelock state show stack:user-platform:env:production` shows the result).

use statelock::client::{AcquireOptions, LockClient};
use statelock::state::document::Resource;
use statelock::state::fenced::FencedStore;
use statelock::state::file::FileBackend;
use statelock::state::open::default_state_dir;
use statelock::state::{seal_for, StateStore};
use statelock::store::file::FileStore;
use statelock::{HolderInfo, LockKey};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deploy_stack: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (stack, env) = match args.as_slice() {
        [stack, env, ..] => (stack.clone(), env.clone()),
        _ => return Err("usage: deploy_stack STACK ENVIRONMENT [DIR]".into()),
    };
    let (locks, state) = match args.get(2) {
        Some(dir) => (
            FileStore::open(PathBuf::from(dir).join("locks"))?,
            FileBackend::open(PathBuf::from(dir).join("state"))?,
        ),
        None => (
            FileStore::open_default()?,
            FileBackend::open(default_state_dir(|name| std::env::var_os(name))?)?,
        ),
    };
    let state = FencedStore::new(state);
    let key = LockKey::new(format!("stack:{stack}:env:{env}"))?;

    // 1. The stack's lock: wait up to a minute, saying who holds it.
    let client = LockClient::new(locks);
    let said = std::sync::atomic::AtomicBool::new(false);
    let guard = client
        .acquire(
            &key,
            AcquireOptions {
                lease: Duration::from_secs(20),
                wait: Some(Duration::from_secs(60)),
                holder: HolderInfo::named("deploy_stack example"),
                on_wait: Some(std::sync::Arc::new(move |progress| {
                    // Say once who holds it.
                    if !said.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        eprintln!(
                            "waiting for {} (token {}) to release {}",
                            progress.holder.holder.locked_by,
                            progress.holder.token.0,
                            progress.holder.key
                        );
                    }
                })),
                ..AcquireOptions::default()
            },
        )
        .await?;
    println!("locked {key} with fencing token {}", guard.token().0);

    // 2. Seal the state with the lock's token (no older holder can save from
    //    now on), and load it.
    let (writer, sealed) = seal_for(&state, &guard).await?;
    let mut document = sealed.document.clone();
    let deploys = document
        .outputs
        .get("deploys")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);

    // 3. Apply: a real deployer would change infrastructure here, watching
    //    guard.lost() to stop when the lease is lost.
    tokio::select! {
        _ = guard.lost() => return Err("the lease was lost while applying: stopped".into()),
        _ = tokio::time::sleep(Duration::from_millis(300)) => {}
    }
    document
        .outputs
        .insert("deploys".into(), (deploys + 1).into());
    let resource = Resource {
        status: Some("deployed".into()),
        ..Resource::default()
    };
    document
        .resources
        .insert(format!("{stack}/service"), resource);

    // 4. Save, fenced: refused if another holder has sealed since.
    let version = state.save(&writer, &sealed.version, document).await?;
    println!(
        "saved deployment {} of {stack}/{env} with token {} (version {})",
        deploys + 1,
        writer.token.0,
        version.0
    );
    let history = state.history(&key, 3).await?;
    for entry in history {
        println!(
            "  history: save {} token {} at {}",
            entry.serial, entry.token.0, entry.id
        );
    }

    // 5. Release.
    guard.release().await?;
    Ok(())
}
