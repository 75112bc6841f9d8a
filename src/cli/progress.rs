//! What `exec` shows while it waits for a held lock: who holds it, since when,
//! and when a takeover becomes possible if the holder stays silent. A spinner
//! when stderr is a terminal; otherwise plain lines, rate-limited (on a change
//! of holder, else every [`LINE_INTERVAL`]) so logs stay readable.

use super::duration::{human, wall_with_age};
use crate::client::{StoreTrouble, WaitProgress};
use crate::clock::Clock;
use crate::protocol::{LeaseId, MonoTime};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The shortest gap between two plain lines about the same holder.
pub(crate) const LINE_INTERVAL: Duration = Duration::from_secs(10);

enum Display {
    /// Created at the first report (a lock acquired at once shows nothing).
    Spinner(Option<ProgressBar>),
    Lines,
}

struct State {
    display: Display,
    last_owner: Option<LeaseId>,
    last_line: Option<MonoTime>,
    last_trouble: Option<MonoTime>,
    reported: bool,
}

/// Reports wait progress for one key; cheap to call on every poll.
pub(crate) struct WaitReporter {
    key: String,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

impl WaitReporter {
    /// A reporter for `key`; a spinner if stderr is a terminal.
    pub(crate) fn new(key: &str, clock: Arc<dyn Clock>) -> Arc<WaitReporter> {
        let display = if std::io::stderr().is_terminal() {
            Display::Spinner(None)
        } else {
            Display::Lines
        };
        Arc::new(WaitReporter {
            key: key.to_string(),
            clock,
            state: Mutex::new(State {
                display,
                last_owner: None,
                last_line: None,
                last_trouble: None,
                reported: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Who holds the lock and since when.
    fn holder_line(&self, progress: &WaitProgress) -> String {
        let record = &progress.holder;
        let token = if record.has_token() {
            format!("with token {}", record.token)
        } else {
            "(no fencing token)".to_string()
        };
        format!(
            "waiting for {:?}: held by {} since {} {token}",
            self.key,
            record.holder,
            wall_with_age(record.acquired_at, self.clock.wall()),
        )
    }

    /// When a takeover becomes possible.
    fn takeover_line(progress: &WaitProgress) -> String {
        if !progress.holder.expires() {
            return format!(
                "this lock never expires (a Terraform lock): waiting until its holder releases it \
                 (waited {}); if the holder is gone, `statelock unlock --force` frees it",
                human(progress.waited),
            );
        }
        format!(
            "a takeover is possible in {} if the holder stays silent (waited {})",
            human(progress.takeover_in),
            human(progress.waited),
        )
    }

    /// Called by the client each time it learns who holds the lock.
    pub(crate) fn report(&self, progress: &WaitProgress) {
        let holder = self.holder_line(progress);
        let takeover = Self::takeover_line(progress);
        let now = self.clock.now();
        let mut state = self.lock();
        state.reported = true;
        let holder_changed = state.last_owner != Some(progress.holder.owner);
        state.last_owner = Some(progress.holder.owner);
        match &mut state.display {
            Display::Spinner(bar) => {
                let bar = bar.get_or_insert_with(|| {
                    let bar = ProgressBar::new_spinner();
                    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
                        bar.set_style(style);
                    }
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar
                });
                bar.set_message(format!("{holder}\n  {takeover}"));
            }
            Display::Lines => {
                let due = match state.last_line {
                    None => true,
                    Some(at) => now.saturating_since(at) >= LINE_INTERVAL,
                };
                if holder_changed || due {
                    state.last_line = Some(now);
                    errln!("statelock: {holder}; {takeover}");
                }
            }
        }
    }

    /// Called by the client each time a store request fails in a way that
    /// retrying may cure: says so at once (one line), then at most every
    /// [`LINE_INTERVAL`] while it lasts.
    pub(crate) fn store_trouble(&self, trouble: &StoreTrouble) {
        let now = self.clock.now();
        let mut state = self.lock();
        let due = match state.last_trouble {
            None => true,
            Some(at) => now.saturating_since(at) >= LINE_INTERVAL,
        };
        if !due {
            return;
        }
        state.last_trouble = Some(now);
        state.reported = true;
        let line = format!(
            "{} (failed {} time{} in a row; waited {}); retrying until --wait runs out",
            crate::store::url::redact_credentials(&trouble.error.to_string()),
            trouble.failures,
            if trouble.failures == 1 { "" } else { "s" },
            human(trouble.waited),
        );
        match &mut state.display {
            Display::Spinner(Some(bar)) => bar.println(format!("statelock: {line}")),
            _ => errln!("statelock: {line}"),
        }
    }

    /// Removes the spinner; true if anything was shown.
    pub(crate) fn finish(&self) -> bool {
        let mut state = self.lock();
        if let Display::Spinner(Some(bar)) = &mut state.display {
            bar.finish_and_clear();
        }
        state.reported
    }
}
