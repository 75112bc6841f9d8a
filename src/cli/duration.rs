//! Durations on the command line (`20s`, `1m30s`, `500ms`, `0s`) and short
//! human renderings of durations and wall-clock times for output.

use super::CliError;
use crate::protocol::WallTime;
use std::time::Duration;

/// Parses the value of `--{flag}` with humantime.
pub(crate) fn parse(flag: &str, value: &str) -> Result<Duration, CliError> {
    humantime::parse_duration(value.trim()).map_err(|_| {
        CliError::usage(format!(
            "invalid --{flag} {value:?}: expected a duration such as 20s, 1m30s, 500ms or 0s"
        ))
    })
}

/// Parses `--wait`: a duration, or `forever`.
pub(crate) fn parse_wait(value: &str) -> Result<Option<Duration>, CliError> {
    match value.trim() {
        "forever" | "inf" | "infinite" => Ok(None),
        _ => parse("wait", value).map(Some),
    }
}

/// A short rendering: `850ms`, `12s`, `3m 5s`, `2h 1m 3s`.
pub(crate) fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

/// A wall-clock time to the second, UTC (`2024-01-15T14:40:00Z`).
pub(crate) fn wall(t: WallTime) -> String {
    humantime::format_rfc3339_seconds(t.to_system()).to_string()
}

/// `T (3m 5s ago)`, with the age measured against `now`.
pub(crate) fn wall_with_age(t: WallTime, now: WallTime) -> String {
    format!("{} ({} ago)", wall(t), human(now.saturating_since(t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        assert_eq!(parse("lease", "20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse("lease", "1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("lease", "0s"), Ok(Duration::ZERO));
        assert_eq!(parse("lease", "500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_wait("forever"), Ok(None));
        for bad in ["banana", "", "20", "-1s", "1x"] {
            let err = parse("lease", bad).unwrap_err();
            assert_eq!(err.code, super::super::exit::USAGE, "{bad:?}");
            assert!(!err.message.contains('\n'));
        }
    }

    #[test]
    fn renderings() {
        assert_eq!(human(Duration::from_millis(850)), "850ms");
        assert_eq!(human(Duration::from_millis(12_400)), "12s");
        assert_eq!(human(Duration::from_secs(185)), "3m 5s");
        assert_eq!(wall(WallTime(1_705_329_600_123)), "2024-01-15T14:40:00Z");
        assert_eq!(
            wall_with_age(WallTime(1_705_329_600_000), WallTime(1_705_329_665_000)),
            "2024-01-15T14:40:00Z (1m 5s ago)"
        );
    }
}
