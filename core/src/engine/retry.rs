//! When and how soon a failed attempt is tried again.

use crate::backoff::Backoff;
use crate::error::{Error, ErrorCode};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Retries with exponential backoff and full jitter (`crate::backoff`): the delay before attempt `n + 1` is
/// uniform in `[0, min(base · 2^(n-1), max)]`, so that many jobs failing together do not retry in step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. 1 means never retry.
    pub max_attempts: u32,
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 3, base_delay_ms: 500, max_delay_ms: 30_000 }
    }
}

impl RetryPolicy {
    /// The backoff schedule of these retries.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(Duration::from_millis(self.base_delay_ms), Duration::from_millis(self.max_delay_ms))
    }

    /// The delay after failed attempt `attempt` (1-based), given a uniform random number in [0, 1].
    pub fn delay(&self, attempt: u32, unit_random: f64) -> Duration {
        self.backoff().delay(attempt, unit_random)
    }

    /// Whether an attempt that failed with `error` should be tried again.
    pub fn should_retry(&self, error: &Error, attempt: u32) -> bool {
        attempt < self.max_attempts && is_transient(error)
    }
}

/// Transient failures are worth retrying: a device error, running out of memory, a worker panic, an internal or
/// numerical error. Invalid input, an unknown model, a policy rejection and cancellation never are.
pub fn is_transient(error: &Error) -> bool {
    matches!(
        error.code(),
        ErrorCode::Internal | ErrorCode::ResourceExhausted | ErrorCode::Unavailable | ErrorCode::Numerical
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_full_jitter() {
        let p = RetryPolicy { max_attempts: 9, base_delay_ms: 100, max_delay_ms: 1000 };
        assert_eq!(p.delay(1, 1.0), Duration::from_millis(100));
        assert_eq!(p.delay(2, 1.0), Duration::from_millis(200));
        assert_eq!(p.delay(3, 1.0), Duration::from_millis(400));
        assert_eq!(p.delay(8, 1.0), Duration::from_millis(1000));
        assert_eq!(p.delay(3, 0.0), Duration::ZERO);
        assert_eq!(p.delay(2, 0.25), Duration::from_millis(50));
    }

    #[test]
    fn only_transient_errors_are_retried_and_only_while_attempts_remain() {
        let p = RetryPolicy::default();
        assert!(p.should_retry(&Error::internal("x"), 1));
        assert!(p.should_retry(&Error::new(ErrorCode::ResourceExhausted, "x"), 2));
        assert!(!p.should_retry(&Error::internal("x"), 3));
        for code in [ErrorCode::InvalidArgument, ErrorCode::NotFound, ErrorCode::Cancelled, ErrorCode::DeadlineExceeded]
        {
            assert!(!p.should_retry(&Error::new(code, "x"), 1), "{code}");
        }
    }
}
