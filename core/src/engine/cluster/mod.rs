//! The Redis backend: many engines share one queue and one job-state store, with the same API as one engine.
//!
//! ```text
//!  any node: submit ──SUBMIT──► stream {ns}:queue:{priority} ──XREADGROUP BLOCK / XAUTOCLAIM──► worker node
//!            poll / events / wait / result ◄── {ns}:job:{id} (hash), {ns}:events:{id} (list) ◄── UPDATE / FINISH
//!            cancel ──CANCEL──► terminal at once; the worker sees it at its next check and stops the run
//!  results:  worker ──► ResultStore (shared folder) ──reference in the job hash──► result() on any node
//! ```
//!
//! A worker node runs each job on its own in-process engine (`Shared`): retries, the circuit breakers, deadlines,
//! previews and output files work as on one machine, and this module mirrors the run into Redis. The scripts in
//! `scripts.rs` keep the cluster's invariants; delivery is at least once (a job whose worker dies runs again
//! elsewhere) and every job ends exactly once.
//!
//! Ids come from one Redis counter, so a `JobId` means the same job on every node.
//!
//! Every key is `{namespace}:...`: the braces are Redis Cluster's hash tag, so a namespace's keys share one slot
//! and every script and pipeline runs on one node (`backend.redis.cluster`).
//!
//! A worker node runs three threads besides the follower: the taker (`take_loop`) blocks in `XREADGROUP ... BLOCK`
//! while it has a free slot and waits on `signal` while it has none; the mirror (`work_loop`) writes the local
//! runs' events, ends and results into Redis; the lease keeper (`lease_loop`) renews the running jobs' leases, so
//! a slow result write or a slow Redis reply on the other two never costs a lease.

mod follower;
mod reconnect;
mod redis_link;
mod reply;
mod scripts;
mod store;
mod worker;

use super::config::{RedisConfig, Role};
use super::event::{Callback, Event, EventKind};
use super::job::{JobError, JobId, JobState, JobStatus, unix_ms};
use super::request::{self, Request};
use super::{MetricsSnapshot, Shared, start_thread};
use crate::error::{Error, ErrorCode, Result};
use crate::video::Video;
use parking_lot::{Condvar, Mutex, RwLock};
use redis_link::RedisLink;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use store::{DirStore, ResultStore};

/// The consumer group every worker reads the streams through.
const GROUP: &str = "workers";

/// What the cluster knows that one engine cannot: the backlog per priority and the workers alive, for autoscaling.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ClusterMetrics {
    /// Jobs waiting, not yet taken by a worker, per priority (highest first).
    pub queued_by_priority: Vec<(i32, u64)>,
    /// Jobs taken by a worker and not yet finished.
    pub running: u64,
    /// Worker engines that renewed their heartbeat within the lease.
    pub workers_alive: u64,
}

/// Redis key names: every one is `{namespace}:...`, the namespace in braces being Redis Cluster's hash tag, so all
/// the keys of a namespace hash to one slot and a script may touch any of them. Only this type builds key names.
pub(crate) struct Keys {
    /// The namespace as configured (it also names the result files).
    ns: String,
    /// `{namespace}`: the prefix of every key.
    tag: String,
}

impl Keys {
    fn new(ns: &str) -> Self {
        Self { ns: ns.to_string(), tag: format!("{{{ns}}}") }
    }
    fn next_id(&self) -> String {
        format!("{}:next_id", self.tag)
    }
    fn job(&self, id: JobId) -> String {
        format!("{}:job:{}", self.tag, id.0)
    }
    fn events(&self, id: JobId) -> String {
        format!("{}:events:{}", self.tag, id.0)
    }
    fn stream(&self, priority: i32) -> String {
        format!("{}:queue:{priority}", self.tag)
    }
    fn priorities(&self) -> String {
        format!("{}:priorities", self.tag)
    }
    /// The number of entries in all the streams: jobs not yet finished (kept by the scripts).
    fn backlog(&self) -> String {
        format!("{}:backlog", self.tag)
    }
    /// The idempotency key's record; for a request without one, a placeholder in the same slot that the scripts
    /// never touch.
    fn idempotency(&self, key: Option<&str>) -> String {
        format!("{}:idempotency:{}", self.tag, key.unwrap_or(""))
    }
    /// The cluster-wide cache's entry; `None` gives a placeholder the scripts never touch.
    fn cache(&self, key: Option<u64>) -> String {
        match key {
            Some(key) => format!("{}:cache:{key:016x}", self.tag),
            None => format!("{}:cache:", self.tag),
        }
    }
    fn flight(&self, key: u64) -> String {
        format!("{}:flight:{key:016x}", self.tag)
    }
    fn workers(&self) -> String {
        format!("{}:workers", self.tag)
    }
    /// A worker's own stream, read beside the queues in its blocking read, so that a write to it (at shutdown)
    /// ends the read at once.
    fn wake(&self, node: &str) -> String {
        format!("{}:wake:{node}", self.tag)
    }
}

/// A video read from the result store: its reference, the video, and when it was read.
pub(crate) struct ReadResult {
    reference: String,
    video: Arc<Video>,
    read_at: Instant,
}

/// A job submitted through this engine, as last read from Redis.
pub(crate) struct Mirrored {
    status: JobStatus,
    /// When the follower saw it end, for dropping it `job_ttl_ms` later, as Redis drops the job.
    ended_at: Option<Instant>,
}

impl Mirrored {
    /// Moves to a status read from Redis. An ended job's mirror never goes back: a read from before `wait` or
    /// `cancel` saw the end may land after it.
    fn advance(&mut self, status: JobStatus) {
        if self.status.state.is_terminal() {
            return;
        }
        if status.state.is_terminal() {
            self.ended_at = Some(Instant::now());
        }
        self.status = status;
    }
}

pub(crate) struct Cluster {
    config: RedisConfig,
    keys: Keys,
    link: RedisLink,
    store: Box<dyn ResultStore>,
    /// The local engine: validation and the model registry on every node, and the runs on a worker.
    shared: Arc<Shared>,
    /// This engine's name in the consumer group (unique per process).
    node: String,
    /// Engine-wide callbacks: every event of every job submitted through this engine.
    callbacks: RwLock<Vec<Callback>>,
    /// Jobs submitted here whose events go to callbacks: id → (its own callback, events delivered so far).
    followed: Mutex<HashMap<JobId, (Option<Callback>, u64)>>,
    /// The latest status of each job submitted here, as the follower last read it from Redis (within one tick):
    /// `poll` and `peek` answer from here without a round trip or a parse, so a host may call them every frame.
    /// Finished jobs stay until `release` or `job_ttl_ms`.
    mirrored: RwLock<HashMap<JobId, Mirrored>>,
    runs: Mutex<HashMap<JobId, worker::Run>>,
    /// Notified when a run ends (a slot is free for the taker) and at shutdown (for the taker and lease keeper).
    signal: Condvar,
    signal_lock: Mutex<()>,
    /// Videos this engine has read from the result store, each read once: id → (its reference, the video, when
    /// read). Dropped with `release` or `job_ttl_ms` after the read.
    results: Mutex<HashMap<JobId, ReadResult>>,
    /// Events of the local runs, for the worker thread to mirror into Redis (progress and previews coalesced when
    /// it falls behind; see `mailbox.rs`).
    mirror: Arc<crate::engine::mailbox::Mailbox<worker::Mirror>>,
    accepting: AtomicBool,
    /// Set at shutdown: take no more jobs; give back (not end) the ones the local engine stops.
    draining: AtomicBool,
    stopping: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Cluster {
    pub(crate) fn start(shared: Arc<Shared>, config: RedisConfig) -> Result<Arc<Self>> {
        if config.namespace.is_empty() || config.namespace.contains(char::is_whitespace) {
            return Err(Error::invalid("backend.redis.namespace must be a non-empty word"));
        }
        if config.lease_ms < 300 || config.cancel_check_ms == 0 || config.timeout_ms == 0 {
            return Err(Error::invalid(
                "backend.redis: lease_ms must be at least 300, cancel_check_ms and timeout_ms at least 1",
            ));
        }
        let link = RedisLink::open(&config.url, config.cluster, Duration::from_millis(config.timeout_ms))?;
        let store = Box::new(DirStore::open(&config.results_dir)?);
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        let node = format!(
            "{}-{}-{:08x}",
            if host.is_empty() { "node" } else { &host },
            std::process::id(),
            rand::random::<u32>()
        );
        let cluster = Arc::new(Self {
            keys: Keys::new(&config.namespace),
            link,
            store,
            shared,
            node,
            callbacks: RwLock::new(Vec::new()),
            followed: Mutex::new(HashMap::new()),
            mirrored: RwLock::new(HashMap::new()),
            runs: Mutex::new(HashMap::new()),
            signal: Condvar::new(),
            signal_lock: Mutex::new(()),
            results: Mutex::new(HashMap::new()),
            mirror: Arc::default(),
            accepting: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            config,
        });
        let c = cluster.clone();
        cluster.threads.lock().push(start_thread("vgen-cluster-follower", move || c.follow_loop())?);
        if cluster.config.role != Role::Submitter {
            if let Err(e) = cluster.start_worker() {
                cluster.stop(); // the threads started before it end and are joined
                return Err(e);
            }
        }
        Ok(cluster)
    }

    /// A worker's threads: the taker, the mirror and the lease keeper (see the module's docs).
    fn start_worker(self: &Arc<Self>) -> Result<()> {
        // The wake stream and its group exist before the taker's first read names it.
        let wake = self.keys.wake(&self.node);
        self.link.with(|c| {
            redis::cmd("XGROUP").arg("CREATE").arg(&wake).arg(GROUP).arg("$").arg("MKSTREAM").query::<()>(c)
        })?;
        let c = self.clone();
        self.threads.lock().push(start_thread("vgen-cluster-taker", move || c.take_loop())?);
        let c = self.clone();
        self.threads.lock().push(start_thread("vgen-cluster-worker", move || c.work_loop())?);
        let c = self.clone();
        self.threads.lock().push(start_thread("vgen-cluster-lease", move || c.lease_loop())?);
        Ok(())
    }

    /// Wakes the threads that wait on `signal` (a slot came free, or shutdown).
    fn notify(&self) {
        let _guard = self.signal_lock.lock();
        self.signal.notify_all();
    }

    /// Waits on `signal` for at most `timeout`.
    fn wait_signal(&self, timeout: Duration) {
        let mut guard = self.signal_lock.lock();
        self.signal.wait_for(&mut guard, timeout);
    }

    /// First half of shutdown: refuse submits, take no more jobs, and give back the ones the local engine stops.
    pub(crate) fn drain(&self) {
        self.accepting.store(false, Ordering::Release);
        self.draining.store(true, Ordering::Release);
        self.wake_taker();
    }

    /// Second half, after the local engine has stopped and delivered its last events: finish the mirroring, stop.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.wake_taker();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }

    pub(crate) fn on_event(&self, callback: Callback) {
        self.callbacks.write().push(callback);
    }

    pub(crate) fn submit(&self, request: Request, callback: Option<Callback>) -> Result<JobId> {
        if !self.accepting.load(Ordering::Acquire) {
            return Err(Error::new(ErrorCode::ShuttingDown, "the engine is shutting down"));
        }
        let shared = &self.shared;
        let model = shared.models.get(request.model.as_deref())?;
        let info = model.info();
        let params = request::validate(&request, info, &shared.config.limits, rand::random::<u64>)?;
        shared.admit(&*model, &params)?;
        let plan = shared.eta.lock().plan(&info.name, shared.devices[0], &params);
        let id = JobId(self.link.with(|c| redis::cmd("INCR").arg(self.keys.next_id()).query::<u64>(c))?);
        let status = JobStatus::queued(id, params.steps, &plan);
        // The seed is drawn once, here, so a job run again after its worker died makes the same video.
        let stored = Request { seed: Some(params.seed), ..request.clone() };
        let queued = event_json(id, EventKind::Queued { position: 0 });
        let keyed = request.idempotency_key.is_some();
        let reply: Vec<String> = self.link.with(|c| {
            scripts::SUBMIT
                .key(self.keys.idempotency(request.idempotency_key.as_deref()))
                .key(self.keys.job(id))
                .key(self.keys.events(id))
                .key(self.keys.stream(request.priority))
                .key(self.keys.priorities())
                .key(self.keys.backlog())
                .arg(id.0)
                .arg(json(&stored))
                .arg(json(&status))
                .arg(&queued)
                .arg(request.priority)
                .arg(shared.config.queue_capacity)
                .arg(self.config.job_ttl_ms)
                .arg(if keyed { "1" } else { "0" })
                .invoke(c)
        })?;
        match reply.first().map(String::as_str) {
            Some("queued") => {}
            Some("existing") => {
                let existing = JobId(reply.get(1).and_then(|s| s.parse().ok()).unwrap_or(0));
                let original = self.request(existing)?;
                if (Request { seed: request.seed.or(original.seed), ..request.clone() }) != original {
                    return Err(Error::new(
                        ErrorCode::AlreadyExists,
                        format!(
                            "idempotency key {:?} was used for {existing} with a different request",
                            request.idempotency_key.as_deref().unwrap_or("")
                        ),
                    ));
                }
                return Ok(existing);
            }
            Some("full") => {
                let backlog: u64 = reply.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let workers = self.metrics_cluster().map(|m| m.workers_alive).unwrap_or(1).max(1);
                let retry_after = (plan.total_ms().max(1.0) * backlog as f64 / workers as f64) as u64;
                return Err(Error::new(
                    ErrorCode::QueueFull,
                    format!("the cluster's queue is full ({backlog} jobs not finished); retry later"),
                )
                .with_retry_after(retry_after.max(1)));
            }
            _ => return Err(Error::new(ErrorCode::Internal, format!("redis: unexpected submit reply {reply:?}"))),
        }
        // Followed even without a callback: an engine-wide callback registered later still sees its events.
        self.mirrored.write().insert(id, Mirrored { status, ended_at: None });
        self.followed.lock().insert(id, (callback, 0));
        Ok(id)
    }

    fn status_and(&self, id: JobId, field: &str) -> Result<(JobStatus, Option<String>)> {
        let (status, other): (Option<String>, Option<String>) =
            self.link.with(|c| redis::cmd("HMGET").arg(self.keys.job(id)).arg("status").arg(field).query(c))?;
        let status = status.ok_or_else(|| not_found(id))?;
        Ok((parse(&status, "job status")?, other))
    }

    /// The job's status: from the mirror for a job submitted here, else from Redis.
    pub(crate) fn poll(&self, id: JobId) -> Result<JobStatus> {
        self.peek(id, JobStatus::clone)
    }

    /// Reads the job's status in place: from the mirror, without a round trip or an allocation, for a job
    /// submitted here; else from Redis.
    pub(crate) fn peek<R>(&self, id: JobId, f: impl FnOnce(&JobStatus) -> R) -> Result<R> {
        if let Some(m) = self.mirrored.read().get(&id) {
            return Ok(f(&m.status));
        }
        Ok(f(&self.fetch_status(id)?))
    }

    /// The job of this node's local engine that runs cluster job `id`, if it runs here. An unknown job is
    /// `not_found` (checked in the mirror, else in Redis).
    pub(crate) fn local_run(&self, id: JobId) -> Result<Option<JobId>> {
        if let Some(local) = self.runs.lock().get(&id).and_then(|r| r.local) {
            return Ok(Some(local));
        }
        if !self.mirrored.read().contains_key(&id) {
            self.fetch_status(id)?;
        }
        Ok(None)
    }

    /// A job's end seen here (by `wait` or `cancel`) goes to its mirror at once, so that `poll` never says a job
    /// is still going after `wait` said it ended.
    fn mirror_end(&self, id: JobId, status: &JobStatus) {
        if let Some(m) = self.mirrored.write().get_mut(&id) {
            m.advance(status.clone());
        }
    }

    /// The job's status as Redis has it now.
    fn fetch_status(&self, id: JobId) -> Result<JobStatus> {
        Ok(self.status_and(id, "status")?.0)
    }

    pub(crate) fn events(&self, id: JobId, since: u64) -> Result<Vec<Event>> {
        let (exists, items): (bool, Vec<String>) = self.link.pipeline(vec![
            redis::cmd("EXISTS").arg(self.keys.job(id)).clone(),
            redis::cmd("LRANGE").arg(self.keys.events(id)).arg(since.min(i64::MAX as u64)).arg(-1).clone(),
        ])?;
        if !exists && items.is_empty() {
            return Err(not_found(id));
        }
        items.iter().map(|e| parse(e, "job event")).collect()
    }

    pub(crate) fn wait(&self, id: JobId, timeout: Option<Duration>) -> Result<JobStatus> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut pause = Duration::from_millis(5);
        loop {
            let status = self.fetch_status(id)?;
            if status.state.is_terminal() {
                self.mirror_end(id, &status);
                return Ok(status);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::new(ErrorCode::Timeout, format!("{id} is still {}", status.state.name())));
            }
            let left = deadline.map_or(pause, |d| d.saturating_duration_since(Instant::now()));
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    pub(crate) fn cancel(&self, id: JobId) -> Result<bool> {
        // The job's stream and entry never change after submit: read here, they go to the script as its keys.
        let (status, stream, entry): (Option<String>, Option<String>, Option<String>) = self
            .link
            .with(|c| redis::cmd("HMGET").arg(self.keys.job(id)).arg("status").arg("stream").arg("entry").query(c))?;
        let (Some(status), Some(stream), Some(entry)) = (status, stream, entry) else { return Err(not_found(id)) };
        let status: JobStatus = parse(&status, "job status")?;
        if status.state.is_terminal() {
            return Ok(false);
        }
        let error = JobError::from(&Error::new(ErrorCode::Cancelled, "cancelled by the host"));
        let ended = JobStatus {
            state: JobState::Cancelled,
            error: Some(error.clone()),
            finished_at_ms: Some(unix_ms()),
            eta_ms: Some(0),
            queue_position: 0,
            ..status
        };
        let event =
            event_json(id, EventKind::Finished { state: JobState::Cancelled, error: Some(error), cache_hit: false });
        let n: i64 = self.link.with(|c| {
            scripts::CANCEL
                .key(self.keys.job(id))
                .key(self.keys.events(id))
                .key(&stream)
                .key(self.keys.backlog())
                .arg(json(&ended))
                .arg(&event)
                .arg(self.config.job_ttl_ms)
                .arg(&entry)
                .invoke(c)
        })?;
        match n {
            -1 => Err(not_found(id)),
            1 => {
                self.mirror_end(id, &ended);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    pub(crate) fn result(&self, id: JobId) -> Result<Arc<Video>> {
        let (status, reference) = self.status_and(id, "result")?;
        match (status.state, reference, &status.error) {
            (JobState::Succeeded, Some(r), _) => self.read_result(id, r),
            (JobState::Succeeded, None, _) => {
                Err(Error::new(ErrorCode::NotFound, format!("{id}'s video was released")))
            }
            (_, _, Some(e)) => Err(e.to_error()),
            (state, _, None) => Err(Error::new(ErrorCode::NotReady, format!("{id} is still {}", state.name()))),
        }
    }

    /// A finished job's video: read from the store once per engine, then from memory.
    fn read_result(&self, id: JobId, reference: String) -> Result<Arc<Video>> {
        if let Some(read) = self.results.lock().get(&id) {
            if read.reference == reference {
                return Ok(read.video.clone());
            }
        }
        let video = Arc::new(self.store.get(&reference)?);
        self.results.lock().insert(id, ReadResult { reference, video: video.clone(), read_at: Instant::now() });
        Ok(video)
    }

    pub(crate) fn request(&self, id: JobId) -> Result<Request> {
        let r: Option<String> =
            self.link.with(|c| redis::cmd("HGET").arg(self.keys.job(id)).arg("request").query(c))?;
        parse(&r.ok_or_else(|| not_found(id))?, "job request")
    }

    /// Forgets a finished job now. Its video file stays in the store until the store's retention removes it,
    /// because identical jobs served from the cluster's cache may share it.
    pub(crate) fn release(&self, id: JobId) -> Result<()> {
        let status = self.fetch_status(id)?;
        if !status.state.is_terminal() {
            return Err(Error::invalid(format!("{id} has not finished: cancel it first")));
        }
        self.link.with(|c| redis::cmd("DEL").arg(self.keys.job(id)).arg(self.keys.events(id)).query::<()>(c))?;
        self.followed.lock().remove(&id);
        self.mirrored.write().remove(&id);
        self.results.lock().remove(&id);
        Ok(())
    }

    pub(crate) fn metrics(&self, local: MetricsSnapshot) -> MetricsSnapshot {
        let queued = self.metrics_cluster().map(|m| m.queued_by_priority.iter().map(|p| p.1).sum()).unwrap_or(0);
        MetricsSnapshot { queue_depth: queued, ..local }
    }

    pub(crate) fn metrics_cluster(&self) -> Result<ClusterMetrics> {
        let now = unix_ms();
        let mut m = ClusterMetrics::default();
        for p in self.priorities()? {
            let stream = self.keys.stream(p);
            let (len, pending): (u64, redis::Value) = self.link.pipeline(vec![
                redis::cmd("XLEN").arg(&stream).clone(),
                redis::cmd("XPENDING").arg(&stream).arg(GROUP).clone(),
            ])?;
            let pending = match pending {
                redis::Value::Array(v) => match v.first() {
                    Some(redis::Value::Int(n)) => *n as u64,
                    _ => 0,
                },
                _ => 0,
            };
            m.queued_by_priority.push((p, len.saturating_sub(pending)));
            m.running += pending;
        }
        m.workers_alive = self.link.with(|c| {
            redis::cmd("ZCOUNT")
                .arg(self.keys.workers())
                .arg(now.saturating_sub(self.config.lease_ms))
                .arg("+inf")
                .query(c)
        })?;
        Ok(m)
    }

    /// The priorities that have a stream, highest first.
    fn priorities(&self) -> Result<Vec<i32>> {
        self.link.with(|c| redis::cmd("ZREVRANGE").arg(self.keys.priorities()).arg(0).arg(-1).query(c))
    }
}

fn not_found(id: JobId) -> Error {
    Error::new(ErrorCode::NotFound, format!("no job {id} (it may have been released or expired)"))
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("engine types serialise")
}

fn parse<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::new(ErrorCode::Internal, format!("a damaged {what} in Redis: {e}")))
}

/// An event as the scripts take it: `seq` is a placeholder they replace.
fn event_json(id: JobId, kind: EventKind) -> String {
    json(&Event { job: id, seq: 0, at_ms: unix_ms(), kind })
}
