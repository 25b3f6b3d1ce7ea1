//! A queue of job events for a consumer that may fall behind (the host's callbacks on the dispatcher thread, the
//! Redis worker's mirror), with its memory bounded.
//!
//! Invariants:
//! - Nothing but progress, preview and frames events is ever dropped: every state change, stage, retry, warning
//!   and the terminal event is delivered, in order.
//! - Once [`COALESCE_AFTER`] events of a job wait, a new progress (preview, frames) event of that job replaces the one
//!   of the same kind still waiting at the tail of the job's events, in its place: a consumer that falls behind
//!   a job gets its latest progress and its latest preview, not every one. The replaced event is only ever one
//!   that no other event of its job follows, so each job's events stay in order (their sequence numbers
//!   increase, with gaps where events were coalesced). So a job's waiting events stay bounded (its state changes
//!   aside), and a slow consumer cannot pile up previews and the frames they hold; a burst of many jobs, each
//!   with a few events waiting, loses nothing.
//! - After `close`, pushes are ignored; `pop` returns what is queued, then `None`.

use super::event::EventKind;
use super::job::JobId;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::time::Duration;

/// How many of a job's events may wait before its progress and previews are coalesced.
pub(crate) const COALESCE_AFTER: usize = 32;

/// What the mailbox needs to know of an item.
pub(crate) trait Item {
    fn job(&self) -> JobId;
    fn kind(&self) -> &EventKind;
}

/// Which events may be replaced by a newer one of the same class.
fn class(kind: &EventKind) -> Option<u8> {
    match kind {
        EventKind::Progress { .. } => Some(0),
        EventKind::Preview { .. } => Some(1),
        EventKind::Frames { .. } => Some(2),
        _ => None,
    }
}

pub(crate) struct Mailbox<T> {
    inner: Mutex<(VecDeque<T>, bool)>,
    ready: Condvar,
}

impl<T: Item> Default for Mailbox<T> {
    fn default() -> Self {
        Self { inner: Mutex::new((VecDeque::new(), false)), ready: Condvar::new() }
    }
}

impl<T: Item> Mailbox<T> {
    pub fn push(&self, item: T) {
        let mut inner = self.inner.lock();
        let (queue, closed) = &mut *inner;
        if *closed {
            return;
        }
        // A job cannot have COALESCE_AFTER events waiting in a shorter queue: the common case scans nothing.
        if let Some(c) = class(item.kind()).filter(|_| queue.len() >= COALESCE_AFTER) {
            // One pass from the back: count the job's waiting events, and find the one of the same class in their
            // tail (the events after its last state change).
            let job = item.job();
            let (mut waiting, mut in_tail, mut replace) = (0, true, None);
            for (i, w) in queue.iter().enumerate().rev().filter(|(_, w)| w.job() == job) {
                waiting += 1;
                match class(w.kind()) {
                    Some(k) if in_tail && k == c && replace.is_none() => replace = Some(i),
                    Some(_) => {}
                    None => in_tail = false,
                }
            }
            if let Some(i) = replace.filter(|_| waiting >= COALESCE_AFTER) {
                queue[i] = item;
                return;
            }
        }
        queue.push_back(item);
        drop(inner);
        self.ready.notify_one();
    }

    /// The next item, waiting up to `timeout` (forever for `None`); `None` when the wait ends empty or the
    /// mailbox is closed and empty.
    pub fn pop(&self, timeout: Option<Duration>) -> Option<T> {
        let mut inner = self.inner.lock();
        loop {
            if let Some(item) = inner.0.pop_front() {
                return Some(item);
            }
            if inner.1 {
                return None;
            }
            match timeout {
                None => self.ready.wait(&mut inner),
                Some(t) => {
                    if self.ready.wait_for(&mut inner, t).timed_out() {
                        return inner.0.pop_front();
                    }
                }
            }
        }
    }

    /// The next item if one is waiting.
    pub fn try_pop(&self) -> Option<T> {
        self.inner.lock().0.pop_front()
    }

    /// No more items are taken; those waiting are still handed out.
    pub fn close(&self) {
        self.inner.lock().1 = true;
        self.ready.notify_all();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.lock().0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::job::JobState;

    struct Ev(JobId, EventKind);
    impl Item for Ev {
        fn job(&self) -> JobId {
            self.0
        }
        fn kind(&self) -> &EventKind {
            &self.1
        }
    }

    fn progress(step: u32) -> EventKind {
        EventKind::Progress { step, steps: 1000, progress: step as f64 / 1000.0, eta_ms: None }
    }

    fn preview(step: u32) -> EventKind {
        EventKind::Preview { step, frames: crate::video::Frames::none() }
    }

    #[test]
    fn a_consumer_that_falls_behind_gets_every_state_change_and_the_latest_progress() {
        let m = Mailbox::default();
        let (a, b) = (JobId(1), JobId(2));
        m.push(Ev(a, EventKind::Queued { position: 0 }));
        for step in 1..=500 {
            m.push(Ev(a, progress(step)));
            m.push(Ev(b, progress(step)));
            if step % 10 == 0 {
                m.push(Ev(a, preview(step)));
            }
            if step == 250 {
                m.push(Ev(a, EventKind::Warning { message: "half way".into() }));
            }
        }
        m.push(Ev(a, EventKind::Finished { state: JobState::Succeeded, error: None, cache_hit: false }));
        assert!(m.len() < 2 * COALESCE_AFTER + 8, "bounded: {} waiting", m.len());
        m.close();
        m.push(Ev(b, EventKind::Queued { position: 0 }));
        let mut got = Vec::new();
        while let Some(Ev(job, kind)) = m.pop(None) {
            got.push((job, kind));
        }
        let of = |job: JobId| got.iter().filter(move |(j, _)| *j == job).map(|(_, k)| k).collect::<Vec<_>>();
        let a_events = of(a);
        assert!(matches!(a_events.first(), Some(EventKind::Queued { .. })));
        assert!(matches!(a_events.last(), Some(EventKind::Finished { .. })), "the terminal event, last");
        assert_eq!(a_events.iter().filter(|k| matches!(k, EventKind::Warning { .. })).count(), 1);
        let steps: Vec<u32> = a_events
            .iter()
            .filter_map(|k| match k {
                EventKind::Progress { step, .. } => Some(*step),
                _ => None,
            })
            .collect();
        assert!(steps.windows(2).all(|w| w[0] < w[1]), "in order: {steps:?}");
        assert_eq!(steps.last(), Some(&500), "the latest progress is delivered");
        let warning_at = a_events.iter().position(|k| matches!(k, EventKind::Warning { .. })).unwrap();
        assert!(a_events[..warning_at].iter().all(|k| !matches!(k, EventKind::Progress { step, .. } if *step > 250)));
        let b_steps = of(b).len();
        assert!(b_steps < 100 && of(b).iter().all(|k| matches!(k, EventKind::Progress { .. })), "nothing after close");
    }

    #[test]
    fn below_the_threshold_nothing_is_coalesced_and_pop_waits() {
        let m = std::sync::Arc::new(Mailbox::default());
        // A burst of many jobs, each with fewer events waiting than the threshold, loses nothing.
        for job in 0..100 {
            for step in 1..COALESCE_AFTER as u32 {
                m.push(Ev(JobId(job), progress(step)));
            }
        }
        assert_eq!(m.len(), 100 * (COALESCE_AFTER - 1));
        while m.try_pop().is_some() {}
        assert!(m.pop(Some(Duration::from_millis(10))).is_none(), "an empty wait times out");
        let m2 = m.clone();
        let t = std::thread::spawn(move || m2.pop(None).map(|e| e.0));
        std::thread::sleep(Duration::from_millis(20));
        m.push(Ev(JobId(7), progress(1)));
        assert_eq!(t.join().unwrap(), Some(JobId(7)));
    }
}
