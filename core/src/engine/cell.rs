//! One job's record: its status, event log, callback and result, behind one short-held lock.
//!
//! Invariant: a job's state becomes terminal exactly once, in [`JobCell::finish`], under the record's lock; its
//! `Finished` event is the last event in its log and its callback is taken at that moment, so the callback can
//! receive the terminal event once and nothing after it.

use super::eta::Plan;
use super::event::{Callback, Event, EventKind};
use super::job::{JobError, JobId, JobState, JobStatus, Stage, unix_ms};
use super::request::{Params, Request};
use crate::error::Error;
use crate::video::Video;
use arc_swap::ArcSwap;
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::sync::Arc;
use std::time::Instant;

pub(crate) struct JobCell {
    pub id: JobId,
    pub request: Request,
    pub params: Params,
    pub deadline: Option<Instant>,
    record: Mutex<Record>,
    /// What poll reads: a copy of the record's status, republished after every change (see [`JobCell::edit`]),
    /// so that a host polling in a tight loop never touches the lock a worker takes at each step.
    snapshot: ArcSwap<Snapshot>,
    pub done: Condvar,
}

/// The part of a record that poll needs.
pub(crate) struct Snapshot {
    pub status: JobStatus,
    pub eta_at: Instant,
    pub flight: Option<Arc<super::flight::Flight>>,
}

/// A record locked for a change. Dropping it publishes the new status to pollers, so no change can be missed.
pub(crate) struct Edit<'a> {
    cell: &'a JobCell,
    record: MutexGuard<'a, Record>,
}

impl std::ops::Deref for Edit<'_> {
    type Target = Record;
    fn deref(&self) -> &Record {
        &self.record
    }
}

impl std::ops::DerefMut for Edit<'_> {
    fn deref_mut(&mut self) -> &mut Record {
        &mut self.record
    }
}

impl Drop for Edit<'_> {
    fn drop(&mut self) {
        self.cell.snapshot.store(Arc::new(self.record.snapshot()));
    }
}

pub(crate) struct Record {
    pub status: JobStatus,
    pub events: Vec<Event>,
    pub callback: Option<Callback>,
    pub result: Option<Arc<Video>>,
    /// The execution this job is attached to, while it is not terminal.
    pub flight: Option<Arc<super::flight::Flight>>,
    pub plan: Plan,
    /// When `status.eta_ms` was computed, so that poll can count down between updates.
    pub eta_at: Instant,
    /// The last decoded frames of a job that succeeded without keeping its frames (`keep_frames: false`), so that
    /// a host reading them after a `frames` event still finds them once the job has ended (`Engine::frames`).
    pub last_frames: Option<super::decoded::FramesSoFar>,
}

/// Events ready to hand to the dispatcher once every lock is released.
pub(crate) type Outbox = Vec<(Vec<Callback>, Event)>;

/// How a job ends.
pub(crate) enum Outcome {
    Succeeded { video: Arc<Video>, cache_hit: bool },
    Failed(Error),
    Cancelled(Error),
}

impl Record {
    fn snapshot(&self) -> Snapshot {
        Snapshot { status: self.status.clone(), eta_at: self.eta_at, flight: self.flight.clone() }
    }

    /// Appends an event and queues it for the job's callback and the engine's.
    pub fn push(&mut self, id: JobId, kind: EventKind, engine_callbacks: &[Callback], outbox: &mut Outbox) {
        let event = Event { job: id, seq: self.events.len() as u64 + 1, at_ms: unix_ms(), kind };
        let mut callbacks: Vec<Callback> = engine_callbacks.to_vec();
        callbacks.extend(self.callback.iter().cloned());
        if !callbacks.is_empty() {
            outbox.push((callbacks, event.clone()));
        }
        self.events.push(event);
    }
}

impl JobCell {
    pub fn new(id: JobId, request: Request, params: Params, deadline: Option<Instant>, record: Record) -> Self {
        let snapshot = ArcSwap::from_pointee(record.snapshot());
        Self { id, request, params, deadline, record: Mutex::new(record), snapshot, done: Condvar::new() }
    }

    /// Locks the record to read it.
    pub fn read(&self) -> MutexGuard<'_, Record> {
        self.record.lock()
    }

    /// Locks the record to change it; pollers see the change when the edit ends.
    pub fn edit(&self) -> Edit<'_> {
        Edit { cell: self, record: self.record.lock() }
    }

    /// The last published status, without taking any lock.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn is_terminal(&self) -> bool {
        self.snapshot.load().status.state.is_terminal()
    }

    /// Whether a worker has the job: from when it starts an attempt until the job is settled.
    pub fn is_running(&self) -> bool {
        self.snapshot.load().status.state == JobState::Running
    }

    /// Ends the job. Returns the state it ended in, or `None` if it had already ended (then nothing changes).
    /// `on_end` runs before any waiter wakes, so that what a waiter reads next (metrics) already counts this job.
    pub fn finish(
        &self,
        outcome: Outcome,
        engine_callbacks: &[Callback],
        outbox: &mut Outbox,
        on_end: impl FnOnce(JobState),
    ) -> Option<JobState> {
        let mut r = self.edit();
        if r.status.state.is_terminal() {
            return None;
        }
        let (state, error, cache_hit) = match outcome {
            Outcome::Succeeded { video, cache_hit } => {
                r.status.frames_ready = r.status.frames_ready.max(video.frames.num_frames as u32);
                r.result = Some(video);
                r.status.progress = 1.0;
                r.status.stage = Stage::Finalizing;
                (JobState::Succeeded, None, cache_hit)
            }
            Outcome::Failed(e) => (JobState::Failed, Some(JobError::from(&e)), false),
            Outcome::Cancelled(e) => (JobState::Cancelled, Some(JobError::from(&e)), false),
        };
        r.status.state = state;
        r.status.error = error.clone();
        r.status.cache_hit = cache_hit;
        r.status.eta_ms = Some(0);
        r.status.queue_position = 0;
        r.status.finished_at_ms = Some(unix_ms());
        r.flight = None;
        r.push(self.id, EventKind::Finished { state, error, cache_hit }, engine_callbacks, outbox);
        // The callback has had its last event: drop our reference so its finalizer can run once delivery ends.
        r.callback = None;
        on_end(state);
        drop(r);
        self.done.notify_all();
        Some(state)
    }
}
