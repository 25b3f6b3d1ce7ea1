//! A worker's reconnects to Redis: after each failure it waits on `crate::backoff`'s schedule before trying again.

use std::time::{Duration, Instant};

/// A worker that cannot reach Redis waits before its next try: `crate::backoff`'s schedule, 50 ms doubling to
/// 5 s, with full jitter.
#[derive(Default)]
pub(super) struct Reconnect {
    failures: u32,
    until: Option<Instant>,
}

const RECONNECT: crate::backoff::Backoff =
    crate::backoff::Backoff::new(Duration::from_millis(50), Duration::from_millis(5_000));

impl Reconnect {
    pub(super) fn fail(&mut self) {
        self.failures = self.failures.saturating_add(1);
        self.until = Some(Instant::now() + RECONNECT.delay_random(self.failures));
    }
    pub(super) fn reset(&mut self) {
        self.failures = 0;
        self.until = None;
    }
    pub(super) fn waiting(&self) -> bool {
        self.until.is_some_and(|u| Instant::now() < u)
    }
    /// How long until the next try is due (zero when it is).
    pub(super) fn left(&self) -> Duration {
        self.until.map_or(Duration::ZERO, |u| u.saturating_duration_since(Instant::now()))
    }
}
