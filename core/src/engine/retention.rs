//! Retention: finished jobs are kept for `retention.ttl_ms` and at most `retention.max_jobs` of them, then
//! forgotten with their events, video and idempotency key.

use super::Shared;
use super::job::JobId;
use std::time::{Duration, Instant};

impl Shared {
    /// Evicts finished jobs past their time to live, and the oldest beyond the count limit.
    pub(crate) fn evict_retired(&self, now: Instant) {
        let ttl = Duration::from_millis(self.config.retention.ttl_ms);
        let max = self.config.retention.max_jobs;
        let mut evict = Vec::new();
        {
            let mut retired = self.retired.lock();
            while let Some((at, id)) = retired.front().copied() {
                if now.saturating_duration_since(at) >= ttl || retired.len() > max {
                    retired.pop_front();
                    evict.push(id);
                } else {
                    break;
                }
            }
        }
        for id in evict {
            self.forget(id);
        }
    }

    pub(super) fn forget(&self, id: JobId) {
        // The table's lock is released before the key map's is taken (see the lock order in `submit`).
        let removed = self.jobs.write().remove(&id);
        if let Some(cell) = removed {
            if let Some(key) = &cell.request.idempotency_key {
                let mut map = self.idempotency.lock();
                if map.get(key) == Some(&id) {
                    map.remove(key);
                }
            }
        }
    }
}
