//! A worker node: takes jobs from the streams (highest priority first, then jobs reclaimed from dead workers),
//! runs each on the local engine, and mirrors the run into Redis under a lease.
//!
//! Three threads share the `runs` map (each change to a run is made under its lock, and a run's end removes it
//! there once, so two threads never both end it):
//! - the **taker** (`take_loop`) takes jobs while local slots are free: the streams in priority order without
//!   waiting, then one `XREADGROUP ... BLOCK` over all of them and this worker's wake stream, so an idle worker
//!   makes one call a second rather than a hundred; with no free slot it waits on `signal` for a run to end.
//!   Every quarter lease it also reclaims abandoned entries;
//! - the **mirror** (`work_loop`) waits on the mailbox of the local runs' events and writes them, the runs' ends
//!   and their results into Redis, retries ends Redis refused, and checks the runs for a cancel or a lost lease;
//! - the **lease keeper** (`lease_loop`) renews the leases every third of a lease and nothing else, so a slow
//!   result write or a slow reply on the other threads never costs a lease.
//!
//! The lease is the stream entry's idle time in the consumer group: the heartbeat `XCLAIM`s each running entry
//! to this node, which resets it; an entry idle longer than `lease_ms` belongs to a worker that died, and
//! `XAUTOCLAIM` hands it to a live one. The `lease` field of the job hash names the run that may report.

use super::reconnect::Reconnect;
use super::redis_link::Connection;
use super::reply::entries;
use super::{Cluster, GROUP, event_json, json, parse, scripts};
use crate::engine::cell::Outcome;
use crate::engine::event::{Event, EventKind};
use crate::engine::job::{JobError, JobId, JobState, JobStatus, unix_ms};
use crate::engine::request::{self, Request};
use crate::error::{Error, ErrorCode, Result};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// An event of a local run, for the worker thread to mirror.
pub(crate) struct Mirror {
    cluster: JobId,
    event: Event,
}

impl crate::engine::mailbox::Item for Mirror {
    fn job(&self) -> JobId {
        self.cluster
    }
    fn kind(&self) -> &EventKind {
        &self.event.kind
    }
}

/// A job this node is running (or waiting to run, behind an identical one).
pub(crate) struct Run {
    /// The job of the local engine that runs it, once started.
    pub(super) local: Option<JobId>,
    token: String,
    stream: String,
    entry: String,
    /// The single-flight key of its parameters; the cluster-wide cache key too.
    key: u64,
    /// Whether its video may serve identical requests (it has frames and no files of its own to write).
    cacheable: bool,
    /// Set when the cluster ended the job or another worker took it: the local run is being stopped.
    stopped_by_cluster: bool,
    /// Waiting for another job with the same key to finish, to share its video.
    waiting: Option<(Request, Option<u64>)>,
    /// The job's status as the cluster sees it, moved on by each mirrored event (never read from the local job,
    /// which may be further along than the event being mirrored).
    status: JobStatus,
}

/// The end of a run, kept until Redis accepts it.
struct Ending {
    id: JobId,
    token: String,
    stream: String,
    entry: String,
    key: u64,
    status: JobStatus,
    event: String,
    result: Option<String>,
    cacheable: bool,
}

/// How long the taker's blocking read waits before it reads the list of priorities again: a job at a priority no
/// job had before waits at most this long for an idle worker.
const BLOCK: Duration = Duration::from_millis(1_000);
/// How soon the mirror retries an end that Redis refused.
const RETRY: Duration = Duration::from_millis(50);

impl Cluster {
    /// The mirror thread: the local runs' events, ends and results into Redis, and the runs' checks.
    pub(super) fn work_loop(self: &Arc<Self>) {
        let check = Duration::from_millis(self.config.cancel_check_ms);
        let mut endings: Vec<Ending> = Vec::new();
        let (mut checked, mut swept) = (Instant::now(), Instant::now());
        let mut backoff = Reconnect::default();
        loop {
            let stopping = self.stopping.load(Ordering::Acquire);
            // Wait for an event until the next check is due (or the next try after a failure, or the retry of
            // a refused end).
            let mut wait =
                if backoff.waiting() { backoff.left().max(check) } else { check.saturating_sub(checked.elapsed()) };
            if !endings.is_empty() {
                wait = wait.min(RETRY);
            }
            let first = if stopping { self.mirror.try_pop() } else { self.mirror.pop(Some(wait)) };
            if let Some(m) = first {
                endings.extend(self.mirror_event(m));
                while let Some(m) = self.mirror.try_pop() {
                    endings.extend(self.mirror_event(m));
                }
            }
            endings.retain(|e| !self.try_finish(e));
            if stopping {
                // Runs still here were given back or are lost with this process; their entries are reclaimed.
                let runs: Vec<(JobId, Run)> = self.runs.lock().drain().collect();
                for (id, run) in runs {
                    let _ = self.give_back(id, &run, None);
                }
                return;
            }
            if backoff.waiting() || checked.elapsed() < check {
                continue;
            }
            let mut step = || -> Result<()> {
                self.check_runs()?;
                if swept.elapsed() >= Duration::from_secs(60) {
                    self.store.expire(Duration::from_millis(self.config.job_ttl_ms));
                    swept = Instant::now();
                }
                Ok(())
            };
            checked = Instant::now();
            outcome(step(), &mut backoff, "cluster worker");
        }
    }

    /// The taker thread: new jobs while local slots are free, and reclaimed ones.
    pub(super) fn take_loop(self: &Arc<Self>) {
        let lease = Duration::from_millis(self.config.lease_ms);
        let mut reclaimed = Instant::now() - lease;
        let mut blocking: Option<Connection> = None;
        let mut backoff = Reconnect::default();
        while !self.draining.load(Ordering::Acquire) && !self.stopping.load(Ordering::Acquire) {
            if backoff.waiting() {
                self.wait_signal(backoff.left());
                continue;
            }
            if self.free_slots() == 0 {
                // A run's end or shutdown wakes it; the timeout keeps the reclaims going on a full node too.
                self.wait_signal(lease / 4);
                continue;
            }
            let mut step = || -> Result<()> {
                // Read once for this step's reclaim, non-blocking reads and blocking read.
                let priorities = self.priorities()?;
                if reclaimed.elapsed() >= lease / 4 {
                    for (stream, entry, job) in self.reclaim(&priorities)? {
                        self.begin(stream, entry, job)?;
                    }
                    reclaimed = Instant::now();
                }
                let mut took = false;
                while self.free_slots() > 0 {
                    let Some((stream, entry, job)) = self.take(&priorities)? else { break };
                    self.begin(stream, entry, job)?;
                    took = true;
                }
                if !took && self.free_slots() > 0 {
                    let until_reclaim = (lease / 4).saturating_sub(reclaimed.elapsed());
                    for (i, (stream, entry, job)) in
                        self.take_blocking(&priorities, &mut blocking, until_reclaim)?.into_iter().enumerate()
                    {
                        // One entry a stream: more than the free slots only when jobs of several priorities came
                        // within one read. The extra ones go straight back for any worker's next reclaim.
                        if i == 0 || self.free_slots() > 0 {
                            self.begin(stream, entry, job)?;
                        } else {
                            self.hand_back(&stream, &entry)?;
                        }
                    }
                }
                Ok(())
            };
            outcome(step(), &mut backoff, "cluster taker");
        }
        let wake = self.keys.wake(&self.node);
        let _ = self.link.with(|c| redis::cmd("DEL").arg(&wake).query::<()>(c));
    }

    /// The lease keeper: renews the running jobs' leases and this worker's presence every third of a lease.
    pub(super) fn lease_loop(self: &Arc<Self>) {
        let every = Duration::from_millis(self.config.lease_ms) / 3;
        let mut backoff = Reconnect::default();
        while !self.stopping.load(Ordering::Acquire) {
            let started = Instant::now();
            outcome(self.heartbeat(), &mut backoff, "cluster lease keeper");
            let pause = if backoff.waiting() { backoff.left().min(every) } else { every };
            let left = pause.saturating_sub(started.elapsed());
            if !left.is_zero() {
                self.wait_signal(left);
            }
        }
    }

    /// Ends the taker's blocking read at once (at shutdown): a write to this worker's wake stream.
    pub(super) fn wake_taker(&self) {
        if self.config.role == crate::engine::config::Role::Submitter {
            return;
        }
        self.notify();
        let wake = self.keys.wake(&self.node);
        let _ = self.link.with(|c| redis::cmd("XADD").arg(&wake).arg("*").arg("wake").arg(1).query::<()>(c));
    }

    /// Removes a run from this node's runs (its end, or giving it back), which frees its slot for the taker.
    fn remove_run(&self, id: JobId) -> Option<Run> {
        let run = self.runs.lock().remove(&id);
        if run.is_some() {
            self.notify();
        }
        run
    }

    fn free_slots(&self) -> usize {
        let now = Instant::now();
        if self.shared.all_breakers_open(now).is_some() {
            return 0;
        }
        self.shared.workers.saturating_sub(self.runs.lock().len())
    }

    /// The next entry of the highest priority stream with one waiting.
    fn take(&self, priorities: &[i32]) -> Result<Option<(String, String, JobId)>> {
        for &p in priorities {
            let stream = self.keys.stream(p);
            let reply: redis::Value = self.link.with(|c| {
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(&self.node)
                    .arg("COUNT")
                    .arg(1)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(">")
                    .query(c)
            })?;
            if let Some((entry, job)) = entries(&reply).into_iter().next() {
                return Ok(Some((stream, entry, job)));
            }
        }
        Ok(None)
    }

    /// Waits up to `BLOCK` (at most `limit`) for an entry in any stream, highest priority first: one
    /// `XREADGROUP ... BLOCK` over every stream and this worker's wake stream (whose entries only end the wait).
    fn take_blocking(
        &self,
        priorities: &[i32],
        con: &mut Option<Connection>,
        limit: Duration,
    ) -> Result<Vec<(String, String, JobId)>> {
        let mut streams: Vec<String> = priorities.iter().map(|p| self.keys.stream(*p)).collect();
        streams.push(self.keys.wake(&self.node));
        let block = BLOCK.min(limit).max(Duration::from_millis(1));
        let reply: redis::Value = self.link.on(con, BLOCK, |c| {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP").arg(GROUP).arg(&self.node).arg("COUNT").arg(1);
            cmd.arg("BLOCK").arg(block.as_millis() as u64).arg("STREAMS").arg(&streams);
            for _ in &streams {
                cmd.arg(">");
            }
            cmd.query(c)
        })?;
        // The wake stream's entries carry no job and are skipped (the stream goes when the taker ends); the reply
        // lists the streams in the order asked, which is priority order.
        Ok(super::reply::stream_entries(&reply))
    }

    /// Puts an entry this node read but cannot run back for any worker: idle for longer than a lease, so the next
    /// reclaim anywhere takes it.
    fn hand_back(&self, stream: &str, entry: &str) -> Result<()> {
        self.link.with(|c| {
            redis::cmd("XCLAIM")
                .arg(stream)
                .arg(GROUP)
                .arg(&self.node)
                .arg(0)
                .arg(entry)
                .arg("IDLE")
                .arg(self.config.lease_ms * 10)
                .arg("JUSTID")
                .query::<()>(c)
        })
    }

    /// Entries whose worker stopped renewing them, now this node's.
    fn reclaim(&self, priorities: &[i32]) -> Result<Vec<(String, String, JobId)>> {
        let mut taken = Vec::new();
        for &p in priorities {
            let free = self.free_slots().saturating_sub(taken.len());
            if free == 0 {
                break;
            }
            let stream = self.keys.stream(p);
            let reply: redis::Value = self.link.with(|c| {
                redis::cmd("XAUTOCLAIM")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(&self.node)
                    .arg(self.config.lease_ms)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(free)
                    .query(c)
            })?;
            for (entry, job) in entries(&reply) {
                tracing::info!(job = %job, "reclaimed a job whose worker stopped renewing its lease");
                taken.push((stream.clone(), entry, job));
            }
        }
        Ok(taken)
    }

    /// Takes the job's lease and starts it on the local engine (or serves it from the cluster's cache, or waits
    /// behind an identical job that is running elsewhere).
    fn begin(self: &Arc<Self>, stream: String, entry: String, id: JobId) -> Result<()> {
        let token = format!("{}:{}", self.node, rand::random::<u64>());
        let reply: Vec<String> = self.link.with(|c| {
            scripts::START
                .key(self.keys.job(id))
                .key(&stream)
                .key(self.keys.backlog())
                .arg(&token)
                .arg(&entry)
                .invoke(c)
        })?;
        let (Some("run"), Some(request), Some(status)) =
            (reply.first().map(String::as_str), reply.get(1), reply.get(2))
        else {
            return Ok(());
        };
        let request: Request = parse(request, "job request")?;
        let status: JobStatus = parse(status, "job status")?;
        let mut run = Run {
            local: None,
            token,
            stream,
            entry,
            key: 0,
            cacheable: false,
            stopped_by_cluster: false,
            waiting: None,
            status: status.clone(),
        };
        let params = self.shared.models.get(request.model.as_deref()).and_then(|m| {
            request::validate(&request, m.info(), &self.shared.config.limits, rand::random::<u64>).map(|p| (m, p))
        });
        let (model, params) = match params {
            Ok(mp) => mp,
            Err(e) => {
                // This node cannot run it (a model it does not have, other limits): the job fails with the reason.
                self.runs.lock().insert(id, run);
                return self.end_now(id, status, Outcome::Failed(e), None);
            }
        };
        run.key = params.cache_key(model.info());
        run.cacheable =
            self.shared.config.cache.enabled && request.outputs.is_empty() && request.keep_frames != Some(false);
        let remaining = match request.deadline_ms {
            Some(ms) => match ms.checked_sub(unix_ms().saturating_sub(status.submitted_at_ms)) {
                Some(left) if left > 0 => Some(left),
                _ => {
                    self.runs.lock().insert(id, run);
                    let e = Error::new(
                        ErrorCode::DeadlineExceeded,
                        format!("the deadline of {ms} ms passed while {id} was queued"),
                    );
                    return self.end_now(id, status, Outcome::Failed(e), None);
                }
            },
            None => None,
        };
        run.waiting = Some((request, remaining));
        self.runs.lock().insert(id, run);
        self.advance(id, status)
    }

    /// A job waiting for its turn: served from the cluster's cache, or started if no identical job is running.
    fn advance(self: &Arc<Self>, id: JobId, status: JobStatus) -> Result<()> {
        let Some((key, cacheable)) = self.runs.lock().get(&id).map(|r| (r.key, r.cacheable)) else {
            return Ok(());
        };
        if cacheable {
            let hit: Option<String> = self.link.with(|c| redis::cmd("GET").arg(self.keys.cache(Some(key))).query(c))?;
            if let Some(reference) = hit {
                if let Ok(video) = self.store.get(&reference) {
                    let mut v = video;
                    v.metadata.cache_hit = true;
                    let outcome = Outcome::Succeeded { video: Arc::new(v), cache_hit: true };
                    return self.end_now(id, status, outcome, Some(reference));
                }
            }
        }
        let flight: bool = self.link.with(|c| {
            redis::cmd("SET")
                .arg(self.keys.flight(key))
                .arg(id.0)
                .arg("NX")
                .arg("PX")
                .arg(self.config.lease_ms)
                .query::<Option<String>>(c)
                .map(|r| r.is_some())
        })?;
        if !flight {
            return Ok(()); // an identical job is running; `check_runs` tries again
        }
        let Some((request, remaining)) = self.runs.lock().get_mut(&id).and_then(|r| r.waiting.take()) else {
            return Ok(());
        };
        let local_request = Request { idempotency_key: None, deadline_ms: remaining, priority: 0, ..request };
        let mirror = self.mirror.clone();
        let callback: crate::engine::Callback = Arc::new(move |event: &Event| {
            mirror.push(Mirror { cluster: id, event: event.clone() });
        });
        match self.shared.submit(local_request, Some(callback)) {
            Ok(local) => {
                if let Some(run) = self.runs.lock().get_mut(&id) {
                    run.local = Some(local);
                }
                Ok(())
            }
            Err(e) if e.retryable() => {
                // This node cannot take it now (its devices are failing): give it back for another worker.
                let run = self.remove_run(id);
                if let Some(run) = run {
                    self.give_back(id, &run, Some(key))?;
                }
                Ok(())
            }
            Err(e) => self.end_now(id, status, Outcome::Failed(e), None),
        }
    }

    /// Ends a job that never ran here (refused, past its deadline, or served from the cache).
    fn end_now(&self, id: JobId, status: JobStatus, outcome: Outcome, reference: Option<String>) -> Result<()> {
        let Some(run) = self.remove_run(id) else { return Ok(()) };
        let (state, error, cache_hit) = match &outcome {
            Outcome::Succeeded { cache_hit, .. } => (JobState::Succeeded, None, *cache_hit),
            Outcome::Failed(e) => (JobState::Failed, Some(JobError::from(e)), false),
            Outcome::Cancelled(e) => (JobState::Cancelled, Some(JobError::from(e)), false),
        };
        let now = unix_ms();
        let status = JobStatus {
            state,
            error: error.clone(),
            cache_hit,
            finished_at_ms: Some(now),
            started_at_ms: status.started_at_ms.or(Some(now)),
            progress: if state == JobState::Succeeded { 1.0 } else { status.progress },
            eta_ms: Some(0),
            queue_position: 0,
            ..status
        };
        let ending = Ending {
            id,
            token: run.token,
            stream: run.stream,
            entry: run.entry,
            key: run.key,
            event: event_json(id, EventKind::Finished { state, error, cache_hit }),
            status,
            result: reference,
            cacheable: false,
        };
        self.finish(&ending).map(|_| ())
    }

    /// Mirrors one local event. Returns the run's ending once its local job has finished.
    fn mirror_event(self: &Arc<Self>, m: Mirror) -> Option<Ending> {
        let id = m.cluster;
        // The event names its local job. The taker records that job in the run only after the local submit returns,
        // and the run's first events (its very end, for a quick one) may come here before that: an event is this
        // run's unless the run already names another local job (an earlier run of the same cluster job).
        let local = m.event.job;
        let (token, mut status, stopped, key, cacheable) = {
            let mut runs = self.runs.lock();
            let r = runs.get_mut(&id)?;
            if r.local.is_some_and(|l| l != local) {
                return None;
            }
            super::reply::advance_status(&mut r.status, &m.event);
            (r.token.clone(), r.status.clone(), r.stopped_by_cluster, r.key, r.cacheable)
        };
        let cell = self.shared.cell(local)?;
        match &m.event.kind {
            EventKind::Queued { .. } | EventKind::Preview { .. } => None,
            EventKind::Finished { state, error, cache_hit } => {
                let run = self.remove_run(id)?;
                let (video, local_status) = {
                    let r = cell.read();
                    (r.result.clone(), r.status.clone())
                };
                status = JobStatus {
                    id,
                    submitted_at_ms: status.submitted_at_ms,
                    queue_position: 0,
                    attempt: status.attempt.max(local_status.attempt),
                    ..local_status
                };
                self.shared.forget(local);
                let shut_down = *state == JobState::Cancelled && self.draining.load(Ordering::Acquire) && !stopped;
                if shut_down {
                    // This engine is shutting down, not the host cancelling: another worker runs it.
                    let _ = self.give_back(id, &run, Some(key));
                    return None;
                }
                let mut result = None;
                if let (JobState::Succeeded, Some(video)) = (state, video) {
                    match self.store.put(&format!("{}-{}-{:016x}", self.keys.ns, id.0, rand::random::<u64>()), &video) {
                        Ok(r) => result = Some(r),
                        Err(e) => {
                            // No shared copy, no success: the job fails, retryably, rather than losing the video.
                            status.state = JobState::Failed;
                            status.error = Some(JobError::from(&e));
                        }
                    }
                }
                let event = EventKind::Finished {
                    state: status.state,
                    error: if status.state == *state { error.clone() } else { status.error.clone() },
                    cache_hit: *cache_hit,
                };
                Some(Ending {
                    id,
                    token,
                    stream: run.stream,
                    entry: run.entry,
                    key,
                    event: event_json(id, event),
                    status,
                    result,
                    cacheable,
                })
            }
            kind => {
                let event = json(&Event { job: id, seq: 0, at_ms: m.event.at_ms, kind: kind.clone() });
                let kept: Result<i64> = self.link.with(|c| {
                    scripts::UPDATE
                        .key(self.keys.job(id))
                        .key(self.keys.events(id))
                        .arg(&token)
                        .arg(json(&status))
                        .arg(&event)
                        .invoke(c)
                });
                if let Ok(0) = kept {
                    self.stop_local(id);
                }
                None
            }
        }
    }

    /// Writes a run's end. Returns whether Redis took it (a refused write is retried at the next tick).
    fn try_finish(&self, ending: &Ending) -> bool {
        match self.finish(ending) {
            Ok(_) => true,
            Err(e) if e.code() == ErrorCode::Unavailable => false,
            Err(e) => {
                tracing::error!(job = %ending.id, error = %e, "could not record a job's end");
                true
            }
        }
    }

    fn finish(&self, e: &Ending) -> Result<bool> {
        let cached = e.cacheable && e.result.is_some();
        let ended: i64 = self.link.with(|c| {
            scripts::FINISH
                .key(self.keys.job(e.id))
                .key(self.keys.events(e.id))
                .key(self.keys.cache(cached.then_some(e.key)))
                .key(self.keys.flight(e.key))
                .key(&e.stream)
                .key(self.keys.backlog())
                .arg(&e.token)
                .arg(json(&e.status))
                .arg(&e.event)
                .arg(e.status.state.name())
                .arg(self.config.job_ttl_ms)
                .arg(e.result.as_deref().unwrap_or(""))
                .arg(e.id.0)
                .arg(&e.entry)
                .arg(if cached { "1" } else { "0" })
                .invoke(c)
        })?;
        if ended == 0 {
            // Another run ended it (or the host cancelled it): this run's video is nobody's.
            if let Some(r) = &e.result {
                self.store.remove(r);
            }
        }
        Ok(ended == 1)
    }

    /// Gives a job back without ending it: the lease is dropped and the entry made idle for a lease, so the next
    /// reclaim anywhere takes it.
    fn give_back(&self, id: JobId, run: &Run, key: Option<u64>) -> Result<()> {
        self.link.with(|c| {
            scripts::RELEASE.key(self.keys.job(id)).arg(&run.token).invoke::<i64>(c)?;
            if let Some(key) = key {
                let flight = self.keys.flight(key);
                let holder: Option<u64> = redis::cmd("GET").arg(&flight).query(c)?;
                if holder == Some(id.0) {
                    redis::cmd("DEL").arg(&flight).query::<()>(c)?;
                }
            }
            Ok(())
        })?;
        self.hand_back(&run.stream, &run.entry)
    }

    /// Renews every running entry's lease, the flights this node holds, and this worker's presence.
    fn heartbeat(&self) -> Result<()> {
        let runs: Vec<(String, String, u64, bool)> =
            self.runs.lock().values().map(|r| (r.stream.clone(), r.entry.clone(), r.key, r.local.is_some())).collect();
        let mut cmds = vec![redis::cmd("ZADD").arg(self.keys.workers()).arg(unix_ms()).arg(&self.node).clone()];
        for (stream, entry, key, running) in &runs {
            cmds.push(
                redis::cmd("XCLAIM").arg(stream).arg(GROUP).arg(&self.node).arg(0).arg(entry).arg("JUSTID").clone(),
            );
            if *running {
                cmds.push(redis::cmd("PEXPIRE").arg(self.keys.flight(*key)).arg(self.config.lease_ms).clone());
            }
        }
        self.link.pipeline(cmds)
    }

    /// Stops the runs the cluster ended (a cancel from any node) or gave to another worker, and moves waiting ones
    /// on.
    fn check_runs(self: &Arc<Self>) -> Result<()> {
        let runs: Vec<(JobId, String, bool)> =
            self.runs.lock().iter().map(|(id, r)| (*id, r.token.clone(), r.waiting.is_some())).collect();
        if runs.is_empty() {
            return Ok(());
        }
        let cmds = runs
            .iter()
            .map(|(id, _, _)| {
                redis::cmd("HMGET").arg(self.keys.job(*id)).arg("terminal").arg("lease").arg("status").clone()
            })
            .collect();
        let states: Vec<(Option<String>, Option<String>, Option<String>)> = self.link.pipeline(cmds)?;
        for ((id, token, waiting), (terminal, lease, status)) in runs.into_iter().zip(states) {
            if terminal.is_some() || lease.as_deref() != Some(token.as_str()) {
                if waiting {
                    let run = self.remove_run(id);
                    // Ended (a cancel) while it waited, and still this run's: acknowledge its entry, which FINISH
                    // does for the lease holder before it finds `terminal` set and writes nothing else. A run whose
                    // lease went elsewhere, or whose job is gone, has nothing to acknowledge here: the entry's new
                    // holder, or the reclaim that finds no job, does it.
                    if let (Some(run), Some(status)) = (run, status.as_deref()) {
                        if lease.as_deref() == Some(run.token.as_str()) {
                            self.finish(&Ending {
                                id,
                                token: run.token,
                                stream: run.stream,
                                entry: run.entry,
                                key: run.key,
                                status: parse(status, "job status")?,
                                event: String::new(),
                                result: None,
                                cacheable: false,
                            })?;
                        }
                    }
                } else {
                    self.stop_local(id);
                }
            } else if waiting {
                if let Some(status) = status {
                    self.advance(id, parse(&status, "job status")?)?;
                }
            }
        }
        Ok(())
    }

    /// Cancels the local run of a job the cluster no longer wants from this node.
    fn stop_local(&self, id: JobId) {
        let local = {
            let mut runs = self.runs.lock();
            let Some(run) = runs.get_mut(&id) else { return };
            if run.stopped_by_cluster {
                return;
            }
            run.stopped_by_cluster = true;
            run.local
        };
        if let Some(cell) = local.and_then(|l| self.shared.cell(l)) {
            self.shared.detach(&cell, Error::new(ErrorCode::Cancelled, "cancelled through the cluster"), false);
        }
    }
}

/// A worker thread's step: a failure makes it wait on the reconnect schedule before its next try.
fn outcome(result: Result<()>, backoff: &mut Reconnect, thread: &str) {
    match result {
        Ok(()) => backoff.reset(),
        Err(e) if e.code() == ErrorCode::Unavailable => {
            tracing::warn!(error = %e, thread, "redis unreachable; retrying with backoff");
            backoff.fail();
        }
        Err(e) => {
            tracing::error!(error = %e, thread, "cluster worker");
            backoff.fail();
        }
    }
}
