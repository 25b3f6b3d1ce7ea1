//! The supervisor thread: expires deadlines and evicts finished jobs past their retention.
//!
//! Deadlines of running jobs are also checked by the worker at every step; the supervisor is what fails a job
//! whose deadline passes while it is still queued, or while its worker is inside a long step.

use super::Shared;
use super::job::JobId;
use crate::error::{Error, ErrorCode};
use std::cmp::Reverse;
use std::sync::Arc;
use std::time::{Duration, Instant};

const RETENTION_TICK: Duration = Duration::from_millis(500);

pub(crate) fn run(shared: Arc<Shared>) {
    let mut timers = shared.timers.lock();
    loop {
        if shared.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let mut due: Vec<JobId> = Vec::new();
        while let Some(Reverse((at, id))) = timers.peek().copied() {
            if at > now {
                break;
            }
            timers.pop();
            due.push(id);
        }
        let next = timers.peek().map(|Reverse((at, _))| *at);
        drop(timers);
        for id in due {
            if let Some(cell) = shared.cell(id) {
                shared.detach(&cell, Error::new(ErrorCode::DeadlineExceeded, "the job's deadline passed"), true);
            }
        }
        shared.evict_retired(now);
        timers = shared.timers.lock();
        let wait = next.map_or(RETENTION_TICK, |at| at.saturating_duration_since(Instant::now()).min(RETENTION_TICK));
        if timers.peek().map(|Reverse((at, _))| *at) == next {
            shared.timers_cv.wait_for(&mut timers, wait);
        }
    }
}
