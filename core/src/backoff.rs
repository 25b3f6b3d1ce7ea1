//! How long to wait before trying again: exponential backoff with full jitter, capped, as the project's guide
//! recommends. It is the one schedule behind the engine's retries of failed attempts, a Redis worker's
//! reconnects and the server's webhook deliveries.
//!
//! After failed attempt `n` (1-based) the wait is uniform in `[0, min(max, initial · 2^(n-1))]`. The ceiling
//! grows so that a struggling dependency gets room; the jitter spreads clients that failed together over the
//! whole window, so they do not come back in step (the "thundering herd"); the cap keeps the wait bounded.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first wait.
    pub initial: Duration,
    /// The largest ceiling.
    pub max: Duration,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The longest wait after failed attempt `attempt` (1-based): `min(max, initial · 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(64);
        let nanos = self.initial.as_nanos().saturating_mul(1u128 << doublings).min(self.max.as_nanos());
        Duration::new((nanos / 1_000_000_000).min(u64::MAX as u128) as u64, (nanos % 1_000_000_000) as u32)
    }

    /// The wait after failed attempt `attempt`, given a uniform random number in `[0, 1]` (clamped): that
    /// fraction of the ceiling.
    pub fn delay(&self, attempt: u32, unit_random: f64) -> Duration {
        self.ceiling(attempt).mul_f64(unit_random.clamp(0.0, 1.0))
    }

    /// The wait after failed attempt `attempt`, with a fresh random draw.
    pub fn delay_random(&self, attempt: u32) -> Duration {
        self.delay(attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_up_to_the_cap_and_the_wait_is_a_uniform_share_of_it() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        assert_eq!(b.ceiling(0), Duration::from_millis(100), "attempt 0 is read as the first");
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(3), Duration::from_millis(350));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_millis(350), "no overflow, however many attempts");
        assert_eq!(b.delay(2, 1.0), Duration::from_millis(200));
        assert_eq!(b.delay(2, 0.5), Duration::from_millis(100));
        assert_eq!(b.delay(3, 0.0), Duration::ZERO);
        assert_eq!(b.delay(3, 7.0), Duration::from_millis(350), "the random number is clamped");
        let big = Backoff::new(Duration::from_secs(1), Duration::MAX);
        assert!(big.ceiling(64) > Duration::from_secs(1 << 39));
    }

    #[test]
    fn random_waits_cover_the_window() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        let waits: Vec<Duration> = (0..2000).map(|_| b.delay_random(4)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(80)));
        assert!(waits.iter().any(|w| *w < Duration::from_millis(10)), "full jitter reaches near zero");
        assert!(waits.iter().any(|w| *w > Duration::from_millis(70)), "and near the ceiling");
    }
}
