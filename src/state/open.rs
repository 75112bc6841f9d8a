//! Opening a state store from its URL (`--state-store` /
//! `STATELOCK_STATE_STORE`): `file://DIR` (the default: `state` beside the
//! default lock store's `locks`, per user), `mem://` (in-process) and, with
//! the `s3` feature, `s3://BUCKET/PREFIX?region=R&endpoint=URL`.

use super::backend::MemoryBackend;
use super::file::FileBackend;
use super::{FencedStore, StateError, StateStore};
use crate::store::url::{default_store_dir, StoreUrl};
use crate::store::StoreError;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

/// The name of the default state directory, beside the default lock store.
pub const DEFAULT_STATE_SUBDIR: &str = "state";

fn state_error(e: StoreError) -> StateError {
    match e {
        StoreError::Misconfigured(why) => StateError::Misconfigured(why),
        StoreError::Unavailable(why) => StateError::Unavailable(why),
        StoreError::Corrupt { key, reason } => StateError::Corrupt { key, reason },
        other => StateError::Misconfigured(other.to_string()),
    }
}

/// The default state directory for the environment `env`: `state` beside the
/// default lock store's directory (`$STATELOCK_HOME/state`, else
/// `$XDG_STATE_HOME/statelock/state`, else `~/.local/state/statelock/state`).
pub fn default_state_dir(env: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf, StateError> {
    let locks = default_store_dir(env).map_err(state_error)?;
    let home = locks.parent().map(PathBuf::from).unwrap_or(locks);
    Ok(home.join(DEFAULT_STATE_SUBDIR))
}

/// The state store named by `url`, or the default one when `url` is `None`;
/// and the text naming it in messages (absolute, without credentials).
pub async fn open_state_store(
    url: Option<&str>,
) -> Result<(Arc<dyn StateStore>, String), StateError> {
    let parsed = match url {
        Some(text) => StoreUrl::parse(text)
            .and_then(StoreUrl::into_absolute)
            .map_err(state_error)?,
        None => StoreUrl::File(default_state_dir(|name| std::env::var_os(name))?),
    };
    match parsed {
        StoreUrl::File(dir) => {
            let backend = FileBackend::open(dir)?;
            let text = crate::store::url::file_store_url(backend.root());
            Ok((Arc::new(FencedStore::new(backend)), text))
        }
        StoreUrl::Memory => Ok((
            Arc::new(FencedStore::new(MemoryBackend::new())),
            "mem://".to_string(),
        )),
        #[cfg(feature = "s3")]
        StoreUrl::S3(location) => {
            let backend = super::s3::S3StateBackend::connect(&location).await?;
            let text = crate::store::url::redact_credentials(&location.url());
            Ok((Arc::new(FencedStore::new(backend)), text))
        }
        StoreUrl::Quorum(_) => Err(StateError::Misconfigured(
            "a quorum of lock stores cannot hold state documents: keep the state in one \
             store (file://DIR or s3://BUCKET/PREFIX); the fencing token of the quorum lock \
             still fences its writes"
                .to_string(),
        )),
        other => Err(StateError::Misconfigured(format!(
            "{} cannot hold state documents: use file://DIR or s3://BUCKET/PREFIX",
            crate::store::url::redact_credentials(&format!("{other:?}"))
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_state_directory_sits_beside_the_locks() {
        let env = |name: &str| (name == "HOME").then(|| OsString::from("/home/u"));
        assert_eq!(
            default_state_dir(env).unwrap(),
            PathBuf::from("/home/u/.local/state/statelock/state")
        );
        let env = |name: &str| (name == "STATELOCK_HOME").then(|| OsString::from("/srv/sl"));
        assert_eq!(
            default_state_dir(env).unwrap(),
            PathBuf::from("/srv/sl/state")
        );
        assert!(default_state_dir(|_| None).is_err());
    }

    #[tokio::test]
    async fn urls_open_the_right_store() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("st").display());
        let (_, text) = open_state_store(Some(&url)).await.unwrap();
        assert_eq!(text, url);
        let (_, text) = open_state_store(Some("mem://")).await.unwrap();
        assert_eq!(text, "mem://");
        assert!(matches!(
            open_state_store(Some("dynamodb://locks?region=r")).await,
            Err(StateError::Misconfigured(_))
        ));
        assert!(matches!(
            open_state_store(Some("nonsense")).await,
            Err(StateError::Misconfigured(_))
        ));
    }
}
