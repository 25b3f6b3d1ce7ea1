//! A circuit breaker per device: a device that keeps failing is taken out of rotation, then probed.
//!
//! Closed (healthy) → after `failure_threshold` consecutive failures → Open for `cooldown_ms` → HalfOpen: exactly
//! one probe job may run → success closes it, failure opens it again.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub cooldown_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { failure_threshold: 5, cooldown_ms: 30_000 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
enum Inner {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is running when `probing`; no other job may start on the device until it ends.
    HalfOpen {
        probing: bool,
    },
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self { config, inner: Mutex::new(Inner::Closed { failures: 0 }) }
    }

    /// Asks to start a job on the device. `Ok(())` grants it; `Err(wait)` refuses it, with how long until the
    /// device may be probed (zero while a probe runs).
    pub fn try_acquire(&self, now: Instant) -> Result<(), Duration> {
        let mut inner = self.inner.lock();
        match *inner {
            Inner::Closed { .. } => Ok(()),
            Inner::Open { until } if now >= until => {
                *inner = Inner::HalfOpen { probing: true };
                Ok(())
            }
            Inner::Open { until } => Err(until - now),
            Inner::HalfOpen { probing: false } => {
                *inner = Inner::HalfOpen { probing: true };
                Ok(())
            }
            Inner::HalfOpen { probing: true } => Err(Duration::ZERO),
        }
    }

    pub fn record_success(&self) {
        *self.inner.lock() = Inner::Closed { failures: 0 };
    }

    pub fn record_failure(&self, now: Instant) {
        let mut inner = self.inner.lock();
        let open = Inner::Open { until: now + Duration::from_millis(self.config.cooldown_ms) };
        *inner = match *inner {
            Inner::Closed { failures } if failures + 1 < self.config.failure_threshold => {
                Inner::Closed { failures: failures + 1 }
            }
            _ => open,
        };
    }

    /// A job that was granted the device ended without saying anything about its health (it was cancelled):
    /// a half-open breaker may grant its probe again.
    pub fn release(&self) {
        let mut inner = self.inner.lock();
        if let Inner::HalfOpen { probing: true } = *inner {
            *inner = Inner::HalfOpen { probing: false };
        }
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        match *self.inner.lock() {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until } if now >= until => BreakerState::HalfOpen,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a submitted job could run here eventually without waiting out a cool-down: closed or half-open.
    /// When it is open, how long until it may be probed.
    pub fn open_for(&self, now: Instant) -> Option<Duration> {
        match *self.inner.lock() {
            Inner::Open { until } if now < until => Some(until - now),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_goes_half_open_then_closes_on_success() {
        let b = Breaker::new(BreakerConfig { failure_threshold: 2, cooldown_ms: 100 });
        let t0 = Instant::now();
        b.record_failure(t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.record_failure(t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert!(b.try_acquire(t0 + Duration::from_millis(50)).is_err());
        let later = t0 + Duration::from_millis(150);
        assert!(b.try_acquire(later).is_ok(), "first probe after the cool-down");
        assert_eq!(b.try_acquire(later), Err(Duration::ZERO), "only one probe at a time");
        b.record_success();
        assert_eq!(b.state(later), BreakerState::Closed);
        assert!(b.try_acquire(later).is_ok());
    }

    #[test]
    fn a_failed_probe_reopens_and_a_success_resets_the_count() {
        let b = Breaker::new(BreakerConfig { failure_threshold: 2, cooldown_ms: 100 });
        let t0 = Instant::now();
        b.record_failure(t0);
        b.record_success();
        b.record_failure(t0);
        assert_eq!(b.state(t0), BreakerState::Closed, "success reset the consecutive count");
        b.record_failure(t0);
        let later = t0 + Duration::from_millis(150);
        assert!(b.try_acquire(later).is_ok());
        b.record_failure(later);
        assert_eq!(b.state(later), BreakerState::Open);
    }
}
