//! Lock keys: validated names such as `stack:user-platform:env:production`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// A validated lock key: 1–1024 bytes of UTF-8 without control characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct LockKey(String);

/// Why a string is not a valid [`LockKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidKey {
    /// The key is empty.
    #[error("a lock key must not be empty")]
    Empty,
    /// The key is longer than [`MAX_KEY_BYTES`].
    #[error("a lock key must be at most {MAX_KEY_BYTES} bytes, this one has {0}")]
    TooLong(usize),
    /// The key contains a control character (newline, tab, NUL, ...).
    #[error("a lock key must not contain control characters (found {0:?} at byte {1})")]
    ControlCharacter(char, usize),
}

impl LockKey {
    /// Validates `key`.
    pub fn new(key: impl Into<String>) -> Result<Self, InvalidKey> {
        let key = key.into();
        if key.is_empty() {
            return Err(InvalidKey::Empty);
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(InvalidKey::TooLong(key.len()));
        }
        if let Some((at, c)) = key.char_indices().find(|(_, c)| c.is_control()) {
            return Err(InvalidKey::ControlCharacter(c, at));
        }
        Ok(LockKey(key))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LockKey {
    type Err = InvalidKey;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LockKey::new(s)
    }
}

impl<'de> Deserialize<'de> for LockKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        LockKey::new(s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for LockKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_table() {
        let long = "k".repeat(MAX_KEY_BYTES);
        let too_long = "k".repeat(MAX_KEY_BYTES + 1);
        let cases: &[(&str, Result<(), InvalidKey>)] = &[
            ("stack:user-platform:env:production", Ok(())),
            ("a", Ok(())),
            ("bucket/path/terraform.tfstate", Ok(())),
            ("ünïcödé ok", Ok(())),
            (&long, Ok(())),
            ("", Err(InvalidKey::Empty)),
            (&too_long, Err(InvalidKey::TooLong(MAX_KEY_BYTES + 1))),
            ("a\nb", Err(InvalidKey::ControlCharacter('\n', 1))),
            ("\u{0}", Err(InvalidKey::ControlCharacter('\u{0}', 0))),
            ("tab\there", Err(InvalidKey::ControlCharacter('\t', 3))),
        ];
        for (input, want) in cases {
            assert_eq!(LockKey::new(*input).map(|_| ()), *want, "input {input:?}");
        }
    }

    #[test]
    fn deserialize_validates() {
        assert!(serde_json::from_str::<LockKey>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<LockKey>("\"\"").is_err());
    }
}
