//! The dispatcher thread: the one place host callbacks run.
//!
//! Workers and API calls queue `(callbacks, event)` pairs after releasing every lock; this thread calls them in
//! order. A slow callback therefore delays other callbacks but never inference, and a panicking one is caught and
//! logged. Dropping the last reference to a callback here is what runs a C host's finalizer, on this thread.
//! The queue is a [`Mailbox`]: when the callbacks fall behind a job, its progress and previews are coalesced to the
//! latest of each, and nothing else is ever dropped (see `mailbox.rs`) but for one case: an event that reaches the
//! queue after its job's terminal event went out.
//!
//! Invariant: a callback receives nothing of a job after that job's `Finished` event. Events get their sequence
//! numbers under the job's lock, but each thread queues its events after releasing it, so a thread that pushed
//! a progress event just before another ended the job can queue it after the `Finished` event (seen under load in
//! the C concurrency test). Such an event is stale by then (the job's log, `events(id, since)`, has it in order),
//! and delivering it would tell the host the job moved after it ended, so the dispatcher drops it: it remembers
//! the jobs whose terminal event it delivered, the last [`REMEMBERED_FINISHED`] of them.

use super::cell::Outbox;
use super::event::{Callback, Event, EventKind};
use super::job::JobId;
use super::mailbox::{self, Mailbox};
use crate::error::Result;
use std::sync::Arc;
use std::thread::JoinHandle;

/// One event and the callbacks it goes to.
pub(crate) struct Delivery {
    callbacks: Vec<Callback>,
    event: Event,
}

impl mailbox::Item for Delivery {
    fn job(&self) -> JobId {
        self.event.job
    }
    fn kind(&self) -> &EventKind {
        &self.event.kind
    }
}

pub(crate) type Dispatcher = Arc<Mailbox<Delivery>>;

/// Starts the dispatcher thread; it runs until the mailbox is closed and emptied.
pub(crate) fn spawn() -> Result<(Dispatcher, JoinHandle<()>)> {
    let mailbox: Dispatcher = Arc::default();
    let inbox = mailbox.clone();
    let handle = super::start_thread("vgen-dispatcher", move || run(&inbox))?;
    Ok((mailbox, handle))
}

/// How many delivered terminal events the dispatcher remembers, to drop the stale events that race them.
pub(crate) const REMEMBERED_FINISHED: usize = 4096;

/// The jobs whose terminal event was delivered, the latest `REMEMBERED_FINISHED`.
#[derive(Default)]
struct Finished {
    jobs: std::collections::HashSet<JobId>,
    order: std::collections::VecDeque<JobId>,
}

impl Finished {
    /// Whether `event` may go out: not after its job's terminal event. Records a terminal event.
    fn admit(&mut self, event: &Event) -> bool {
        if self.jobs.contains(&event.job) {
            return false;
        }
        if matches!(event.kind, EventKind::Finished { .. }) {
            self.jobs.insert(event.job);
            self.order.push_back(event.job);
            if self.order.len() > REMEMBERED_FINISHED
                && let Some(old) = self.order.pop_front()
            {
                self.jobs.remove(&old);
            }
        }
        true
    }
}

fn run(inbox: &Mailbox<Delivery>) {
    let mut finished = Finished::default();
    while let Some(Delivery { callbacks, event }) = inbox.pop(None) {
        if !finished.admit(&event) {
            tracing::debug!(job = %event.job, seq = event.seq, "an event queued after its job's terminal event; dropped");
            continue;
        }
        for callback in callbacks {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| callback(&event)));
            if outcome.is_err() {
                tracing::error!(job = %event.job, seq = event.seq, "an event callback panicked; ignored");
            }
        }
    }
}

pub(crate) fn send(dispatcher: &Mailbox<Delivery>, outbox: Outbox) {
    for (callbacks, event) in outbox {
        dispatcher.push(Delivery { callbacks, event });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::job::JobState;
    use std::sync::Mutex;

    fn event(job: u64, seq: u64, kind: EventKind) -> Event {
        Event { job: JobId(job), seq, at_ms: 0, kind }
    }

    #[test]
    fn nothing_of_a_job_goes_out_after_its_terminal_event_even_when_queued_late() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let callback: Callback = Arc::new(move |e: &Event| sink.lock().unwrap().push((e.job.0, e.seq)));
        let inbox: Mailbox<Delivery> = Mailbox::default();
        let progress = EventKind::Progress { step: 1, steps: 2, progress: 0.5, eta_ms: None };
        let done = EventKind::Finished { state: JobState::Cancelled, error: None, cache_hit: false };
        // Job 1's progress (seq 2) was numbered before its end (seq 3) but queued after it; job 2 is in order.
        for e in [
            event(1, 3, done.clone()),
            event(2, 1, progress.clone()),
            event(1, 2, progress.clone()),
            event(2, 2, done.clone()),
        ] {
            inbox.push(Delivery { callbacks: vec![callback.clone()], event: e });
        }
        inbox.close();
        run(&inbox);
        assert_eq!(*seen.lock().unwrap(), vec![(1, 3), (2, 1), (2, 2)]);
    }

    #[test]
    fn the_memory_of_finished_jobs_is_bounded() {
        let mut f = Finished::default();
        let done = EventKind::Finished { state: JobState::Succeeded, error: None, cache_hit: false };
        for job in 0..(REMEMBERED_FINISHED as u64 + 10) {
            assert!(f.admit(&event(job, 1, done.clone())));
        }
        assert_eq!(f.jobs.len(), REMEMBERED_FINISHED);
        assert!(!f.admit(&event(REMEMBERED_FINISHED as u64, 1, done.clone())), "a recent job is remembered");
    }
}
