//! Where a key's state lives in a state store, following the users' layout:
//! `stacks/{stack}/{env}/state.json`, immutable snapshots under `history/`,
//! copies under `backups/`. Keys that are not `stack:S:env:E` (or whose parts
//! are not safe path segments) live under `keys/` by their percent-encoded
//! name, or by their SHA-256 when that would be too long for S3.

use crate::protocol::LockKey;
use sha2::{Digest, Sha256};

/// The longest directory name a percent-encoded key may give; longer ones
/// use the key's SHA-256 (S3 object names are at most 1024 bytes).
const MAX_ENCODED: usize = 512;

/// The paths of one key's state, relative to the store's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatePaths {
    dir: String,
}

fn safe_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `(stack, env)` of a `stack:S:env:E` key.
pub fn stack_and_env(key: &LockKey) -> Option<(&str, &str)> {
    let rest = key.as_str().strip_prefix("stack:")?;
    let (stack, env) = rest.split_once(":env:")?;
    (!stack.contains(':') && !env.contains(':')).then_some((stack, env))
}

impl StatePaths {
    /// The paths of `key`'s state.
    pub fn of(key: &LockKey) -> StatePaths {
        let dir = match stack_and_env(key) {
            Some((stack, env)) if safe_segment(stack) && safe_segment(env) => {
                format!("stacks/{stack}/{env}")
            }
            _ => {
                let encoded = percent_encode(key.as_str());
                if encoded.len() <= MAX_ENCODED {
                    format!("keys/{encoded}")
                } else {
                    format!("keys/sha256-{}", hex::encode(Sha256::digest(key.as_str())))
                }
            }
        };
        StatePaths { dir }
    }

    /// The key's directory (`stacks/user-platform/production`).
    pub fn dir(&self) -> &str {
        &self.dir
    }

    /// The current document.
    pub fn state(&self) -> String {
        format!("{}/state.json", self.dir)
    }

    /// The prefix of the history snapshots (ends with `/`).
    pub fn history_prefix(&self) -> String {
        format!("{}/history/", self.dir)
    }

    /// The snapshot of save number `serial`: names sort in save order.
    pub fn history(&self, serial: u64) -> String {
        format!("{}{serial:020}.json", self.history_prefix())
    }

    /// The prefix of the backups (ends with `/`).
    pub fn backups_prefix(&self) -> String {
        format!("{}/backups/", self.dir)
    }

    /// A backup of the document at save number `serial`, taken at `at_ms`.
    pub fn backup(&self, serial: u64, at_ms: i64) -> String {
        format!("{}{serial:020}-{at_ms}.json", self.backups_prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(key: &str) -> StatePaths {
        StatePaths::of(&LockKey::new(key).unwrap())
    }

    #[test]
    fn the_users_layout_and_safe_fallbacks() {
        let p = paths("stack:user-platform:env:production");
        assert_eq!(p.state(), "stacks/user-platform/production/state.json");
        assert_eq!(
            p.history(42),
            "stacks/user-platform/production/history/00000000000000000042.json"
        );
        assert!(p.history(9) < p.history(10), "names sort in save order");
        assert_eq!(
            p.backup(3, 1_700_000_000_000),
            "stacks/user-platform/production/backups/00000000000000000003-1700000000000.json"
        );
        // Not a stack key, or parts that are not safe path segments.
        assert_eq!(paths("nightly-report").dir(), "keys/nightly-report");
        assert_eq!(
            paths("stack:a/../b:env:prod").dir(),
            "keys/stack%3Aa%2F..%2Fb%3Aenv%3Aprod"
        );
        assert_eq!(
            paths("stack:..:env:prod").dir(),
            "keys/stack%3A..%3Aenv%3Aprod"
        );
        assert_eq!(
            paths("stack:web:env:prod:service:api").dir(),
            "keys/stack%3Aweb%3Aenv%3Aprod%3Aservice%3Aapi"
        );
        let long = "k".repeat(1000) + " ";
        assert!(paths(&long).dir().starts_with("keys/sha256-"));
        assert_eq!(
            stack_and_env(&LockKey::new("stack:s:env:e").unwrap()),
            Some(("s", "e"))
        );
    }
}
