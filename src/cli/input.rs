//! What every command reads from its user: lock keys and holder labels
//! (checked, with one-line errors) and confirmations at a terminal prompt.

use super::CliError;
use crate::protocol::LockKey;

/// Parses and checks `--key`; one line even for keys with newlines.
pub(crate) fn parse_key(key: &str) -> Result<LockKey, CliError> {
    LockKey::new(key).map_err(|e| {
        let shown: String = key.chars().take(80).collect();
        let ellipsis = if shown.len() < key.len() { "..." } else { "" };
        CliError::usage(format!("invalid lock key {shown:?}{ellipsis}: {e}"))
    })
}

/// Checks a free-text holder field shown to others: one line, not empty.
pub(crate) fn parse_label(flag: &str, value: String) -> Result<String, CliError> {
    if value.trim().is_empty() || value.chars().any(char::is_control) {
        return Err(CliError::usage(format!(
            "invalid --{flag} {value:?}: it must be non-empty text without control characters"
        )));
    }
    Ok(value)
}

/// Asks on the terminal; true on `y` or `yes`.
pub(crate) async fn confirm(question: String) -> bool {
    let answer = tokio::task::spawn_blocking(move || {
        err!("{question} [y/N] ");
        let mut line = String::new();
        match std::io::stdin().read_line(&mut line) {
            Ok(_) => line,
            Err(_) => String::new(),
        }
    })
    .await
    .unwrap_or_default();
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}
