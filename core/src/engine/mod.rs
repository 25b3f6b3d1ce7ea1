//! The job engine: submit, poll or follow events, cancel, wait, take the result.
//!
//! ```text
//!  submit ──validate──► job ──► flight (single-flight by cache key) ──► queue (priority, aging)
//!                                                                         │
//!  poll / events / wait ◄── job records ◄── reports ◄── workers (one per device slot) ── model.generate
//!  callbacks ◄── dispatcher thread ◄── events          supervisor thread: deadlines, retention
//! ```
//!
//! A job is what a host holds; a flight is one execution, shared by identical jobs in flight. Locks are held
//! briefly and never while a model runs or a callback is called. See `flight.rs` for the lock order.

mod admission;
mod attempt;
mod breaker;
mod cache;
mod cell;
#[cfg(feature = "redis")]
mod cluster;
mod config;
mod decoded;
mod disk_cache;
mod dispatcher;
pub mod drift;
mod eta;
mod event;
mod fault;
mod flight;
pub mod image;
mod job;
mod mailbox;
mod metrics;
mod output;
mod queue;
mod request;
pub mod resample;
mod retention;
mod retry;
pub mod storyboard;
mod submit;
mod supervisor;
mod video_file;
mod worker;

pub use attempt::Attempt;
pub use breaker::{BreakerConfig, BreakerState};
#[cfg(feature = "redis")]
pub use cluster::ClusterMetrics;
pub use config::{Backend, CacheConfig, EngineConfig, RedisConfig, Retention, Role};
pub use decoded::FramesSoFar;
pub use event::{Callback, Event, EventKind};
pub use job::{Confidence, JobError, JobId, JobState, JobStatus, Stage};
pub use metrics::{BUCKETS_MS, Histogram, MetricsSnapshot};
pub use request::{
    Expert, FrameRule, Limits, Lora, LoraRef, Params, Request, StepCacheRequest, validate as validate_request,
};
pub use retry::RetryPolicy;
pub use storyboard::{Segment, SegmentRecord, SegmentRequest};

use crate::device::Device;
use crate::error::{Error, ErrorCode, Result};
use crate::models::Models;
use crate::video::{Frames, Video};
use breaker::Breaker;
use cache::ResultCache;
use cell::{JobCell, Outbox, Outcome};
use eta::EtaModel;
use flight::Flight;
use metrics::Metrics;
use parking_lot::{Condvar, Mutex, RwLock};
use queue::Queue;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The most worker threads one device may have.
pub const MAX_WORKERS_PER_DEVICE: usize = 64;
/// The longest queue a configuration may ask for.
pub const MAX_QUEUE_CAPACITY: usize = 10_000_000;

/// State shared by the engine's API and its threads.
pub(crate) struct Shared {
    config: EngineConfig,
    models: Models,
    devices: Vec<Device>,
    breakers: Vec<Breaker>,
    jobs: RwLock<HashMap<JobId, Arc<JobCell>>>,
    idempotency: Mutex<HashMap<String, JobId>>,
    in_flight: Mutex<HashMap<u64, Arc<Flight>>>,
    cache: Mutex<ResultCache>,
    disk_cache: Option<disk_cache::DiskCache>,
    queue: Mutex<Queue<Arc<Flight>>>,
    /// The queue's change counter (see `Queue::version`), read by poll without the queue's lock.
    queue_version: Arc<AtomicU64>,
    queue_cv: Condvar,
    timers: Mutex<BinaryHeap<Reverse<(Instant, JobId)>>>,
    timers_cv: Condvar,
    /// Finished jobs in the order they finished, for retention.
    retired: Mutex<VecDeque<(Instant, JobId)>>,
    eta: Mutex<EtaModel>,
    metrics: Metrics,
    callbacks: RwLock<Vec<Callback>>,
    dispatcher: dispatcher::Dispatcher,
    next_id: AtomicU64,
    accepting: AtomicBool,
    /// Tells workers and the supervisor to exit.
    stopping: AtomicBool,
    workers: usize,
    /// Each device's memory, read once at start (None where unknown).
    device_memory: Vec<Option<u64>>,
}

/// An embedded video-generation engine. Cheap to share across threads (`&Engine` is all any call needs).
pub struct Engine {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    dispatcher_thread: Mutex<Option<JoinHandle<()>>>,
    /// The Redis backend, when the configuration names one: every job call then goes to the cluster.
    #[cfg(feature = "redis")]
    cluster: Option<Arc<cluster::Cluster>>,
}

/// Routes a call to the cluster when the engine has one.
macro_rules! clustered {
    ($engine:expr, $c:ident => $call:expr) => {
        #[cfg(feature = "redis")]
        if let Some($c) = &$engine.cluster {
            return $call;
        }
    };
}

impl Engine {
    /// Starts an engine with the built-in models and every model folder on the standard search path
    /// ([`Models::discover`]); folders that fail to open are logged and skipped.
    pub fn new(config: EngineConfig) -> Result<Self> {
        let (models, problems) = Models::discover();
        for p in problems {
            tracing::warn!("skipped a model folder: {p}");
        }
        Self::with_models(config, models)
    }

    /// Starts an engine with these models: one worker thread per device slot, a supervisor and a dispatcher.
    pub fn with_models(config: EngineConfig, mut models: Models) -> Result<Self> {
        if let Some(name) = &config.default_model {
            models.set_default(name).map_err(|e| Error::invalid(format!("default_model: {}", e.message())))?;
        }
        // Each worker is a thread: a configuration may not ask for thousands of them.
        if config.workers_per_device == 0 || config.workers_per_device > MAX_WORKERS_PER_DEVICE {
            return Err(Error::invalid(format!("workers_per_device must be 1 to {MAX_WORKERS_PER_DEVICE}")));
        }
        if config.queue_capacity == 0 || config.queue_capacity > MAX_QUEUE_CAPACITY {
            return Err(Error::invalid(format!("queue_capacity must be 1 to {MAX_QUEUE_CAPACITY}")));
        }
        if config.retry.max_attempts == 0 {
            return Err(Error::invalid("retry.max_attempts must be at least 1 (the first attempt counts)"));
        }
        if config.retry.max_attempts > 100 {
            return Err(Error::invalid("retry.max_attempts must be at most 100"));
        }
        if config.cpu_threads.is_some_and(|n| n == 0 || n > 1024) {
            return Err(Error::invalid("cpu_threads must be 1 to 1024 (or null for libtorch's default)"));
        }
        if config.frames_window == 0 {
            return Err(Error::invalid("frames_window must be at least 1"));
        }
        if let Some(n) = config.cpu_threads {
            crate::runtime::limit_cpu_threads(n);
        }
        if config.breaker.failure_threshold == 0 {
            return Err(Error::invalid("breaker.failure_threshold must be at least 1"));
        }
        let mut devices = if config.devices.is_empty() { Device::auto() } else { config.devices.clone() };
        let mut seen = std::collections::HashSet::new();
        devices.retain(|d| seen.insert(*d));
        for d in &devices {
            d.check_present()?;
        }
        let disk_cache = match (&config.cache.disk_dir, config.cache.enabled) {
            (Some(dir), true) => Some(disk_cache::DiskCache::open(dir, config.cache.disk_max_bytes)?),
            _ => None,
        };
        let (dispatcher_tx, dispatcher_thread) = dispatcher::spawn()?;
        let workers = devices.len() * config.workers_per_device;
        let queue = Queue::new(Duration::from_millis(config.aging_ms.max(1)));
        let queue_version = queue.version();
        let shared = Arc::new(Shared {
            breakers: devices.iter().map(|_| Breaker::new(config.breaker.clone())).collect(),
            devices: devices.clone(),
            models,
            jobs: RwLock::new(HashMap::new()),
            idempotency: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            cache: Mutex::new(ResultCache::new(if config.cache.enabled { config.cache.max_bytes } else { 0 })),
            disk_cache,
            queue: Mutex::new(queue),
            queue_version,
            queue_cv: Condvar::new(),
            timers: Mutex::new(BinaryHeap::new()),
            timers_cv: Condvar::new(),
            retired: Mutex::new(VecDeque::new()),
            eta: Mutex::new(EtaModel::default()),
            metrics: Metrics::default(),
            callbacks: RwLock::new(Vec::new()),
            dispatcher: dispatcher_tx,
            next_id: AtomicU64::new(1),
            accepting: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
            workers,
            device_memory: devices.iter().map(|d| admission::device_memory(*d)).collect(),
            config,
        });
        // From here the engine owns every thread started: if one fails to start, dropping the engine stops and
        // joins the ones before it, so a failed start leaks no thread.
        #[allow(unused_mut)]
        let mut engine = Self {
            shared: shared.clone(),
            threads: Mutex::new(Vec::new()),
            dispatcher_thread: Mutex::new(Some(dispatcher_thread)),
            #[cfg(feature = "redis")]
            cluster: None,
        };
        for (slot, device) in devices.iter().enumerate() {
            for n in 0..shared.config.workers_per_device {
                let s = shared.clone();
                let device = *device;
                let name = format!("vgen-worker-{device}-{n}");
                engine.threads.lock().push(start_thread(&name, move || worker::run(s, slot, device))?);
            }
        }
        let s = shared.clone();
        engine.threads.lock().push(start_thread("vgen-supervisor", move || supervisor::run(s))?);
        drop(shared);
        match &engine.shared.config.backend {
            config::Backend::InProcess => {}
            #[cfg(feature = "redis")]
            config::Backend::Redis(redis) => {
                // On an error here the engine is dropped, which stops the threads already started.
                engine.cluster = Some(cluster::Cluster::start(engine.shared.clone(), redis.clone())?);
            }
            #[cfg(not(feature = "redis"))]
            config::Backend::Redis(_) => {
                return Err(Error::invalid(
                    "backend: this build of vgen has no Redis support (build vgen-core with the `redis` feature)",
                ));
            }
        }
        Ok(engine)
    }

    /// Validates a request and queues it. Returns the job's id at once, or an error that says what is wrong.
    pub fn submit(&self, request: Request) -> Result<JobId> {
        self.submit_with(request, None)
    }

    /// As [`submit`](Self::submit), with a callback that receives every event of this job, the terminal one
    /// exactly once, on the dispatcher thread. The callback is dropped after its last event.
    pub fn submit_with(&self, request: Request, callback: Option<Callback>) -> Result<JobId> {
        #[cfg(feature = "redis")]
        let result = match &self.cluster {
            Some(c) => c.submit(request, callback),
            None => self.shared.submit(request, callback),
        };
        #[cfg(not(feature = "redis"))]
        let result = self.shared.submit(request, callback);
        if result.is_err() {
            self.shared.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// A snapshot of the job, at once. It never waits for a worker: the queue position is recomputed only when
    /// the queue has changed since the last poll, and only if the queue's lock is free at that instant (else the
    /// previous position is reported).
    pub fn poll(&self, id: JobId) -> Result<JobStatus> {
        clustered!(self, c => c.poll(id));
        let cell = self.shared.cell(id).ok_or_else(|| not_found(id))?;
        let snapshot = cell.snapshot();
        let mut status = snapshot.status.clone();
        if let Some(eta) = status.eta_ms {
            status.eta_ms = Some(eta.saturating_sub(snapshot.eta_at.elapsed().as_millis() as u64));
        }
        if status.state == JobState::Queued {
            if let Some(flight) = &snapshot.flight {
                status.queue_position = self.shared.queue_position(flight);
            }
        }
        Ok(status)
    }

    /// Reads the job's latest status in place, without copying or allocating (for hosts that poll every frame,
    /// such as the C ABI). `f` also gets the queue position while the job is queued.
    pub fn peek<R>(&self, id: JobId, f: impl FnOnce(&JobStatus, u32, Option<u64>) -> R) -> Result<R> {
        clustered!(self, c => c.peek(id, |s| f(s, s.queue_position, s.eta_ms)));
        let cell = self.shared.cell(id).ok_or_else(|| not_found(id))?;
        let snapshot = cell.snapshot();
        let status = &snapshot.status;
        let position = match (&snapshot.flight, status.state) {
            (Some(flight), JobState::Queued) => self.shared.queue_position(flight),
            _ => 0,
        };
        let eta = status.eta_ms.map(|eta| eta.saturating_sub(snapshot.eta_at.elapsed().as_millis() as u64));
        Ok(f(status, position, eta))
    }

    /// The job's events with a sequence number above `since` (0 for all), in order.
    pub fn events(&self, id: JobId, since: u64) -> Result<Vec<Event>> {
        clustered!(self, c => c.events(id, since));
        let cell = self.shared.cell(id).ok_or_else(|| not_found(id))?;
        let r = cell.read();
        let from = (since as usize).min(r.events.len());
        Ok(r.events[from..].to_vec())
    }

    /// The job's latest preview and the step it shows, without copying its event log: a game loop asks for it
    /// every frame. `None` until the first preview.
    pub fn latest_preview(&self, id: JobId) -> Result<Option<(u32, Arc<Frames>)>> {
        let latest = |events: &[Event]| {
            events.iter().rev().find_map(|ev| match &ev.kind {
                EventKind::Preview { step, frames } => Some((*step, frames.clone())),
                _ => None,
            })
        };
        let Some(cell) = self.local_cell(id)? else { return Ok(None) };
        let r = cell.read();
        Ok(latest(&r.events))
    }

    /// The job's cell on this node: with the Redis backend, that of its local run, `None` when it runs elsewhere.
    /// Previews and decoded frames stay on the worker that made them (their pixels are not sent through Redis).
    fn local_cell(&self, id: JobId) -> Result<Option<Arc<JobCell>>> {
        #[cfg(feature = "redis")]
        let id = match &self.cluster {
            Some(c) => match c.local_run(id)? {
                Some(local) => local,
                None => return Ok(None),
            },
            None => id,
        };
        self.shared.cell(id).ok_or_else(|| not_found(id)).map(Some)
    }

    /// The frames the job has decoded so far, while it runs: all of them when the job keeps its frames, else the
    /// last `frames_window`; once it has succeeded, the result's frames (with `keep_frames: false`, the last
    /// `frames_window` it decoded, until the job is released). `None`
    /// before its first decoded chunk, and for a job running on another node. A streaming model (Wan and the
    /// default model) hands over each chunk as it decodes it; a job's `frames` events and `frames_ready` say
    /// when there are more. Each call copies the frames held, so call it per `frames` event, not per game frame.
    pub fn frames(&self, id: JobId) -> Result<Option<FramesSoFar>> {
        let Some(cell) = self.local_cell(id)? else { return Ok(None) };
        let flight = {
            let r = cell.read();
            if let Some(video) = &r.result {
                let n = video.frames.num_frames;
                if n > 0 {
                    return Ok(Some(FramesSoFar { first: 0, ready: n, frames: video.frames.clone() }));
                }
                return Ok(r.last_frames.clone());
            }
            if r.status.state != JobState::Running {
                return Ok(None);
            }
            r.flight.clone()
        };
        match flight {
            Some(f) => f.decoded.lock().snapshot(),
            None => Ok(None),
        }
    }

    /// Cancels a job. A queued job is removed at once; a running one stops at its next step boundary. Returns
    /// whether this call cancelled it: `false` means it had already finished, which is harmless.
    pub fn cancel(&self, id: JobId) -> Result<bool> {
        clustered!(self, c => c.cancel(id));
        let cell = self.shared.cell(id).ok_or_else(|| not_found(id))?;
        Ok(self.shared.detach(&cell, Error::new(ErrorCode::Cancelled, "cancelled by the host"), false))
    }

    /// Waits for the job to finish, up to `timeout` (forever for `None`). Returns its final status, or a
    /// `timeout` error while it is still going.
    pub fn wait(&self, id: JobId, timeout: Option<Duration>) -> Result<JobStatus> {
        clustered!(self, c => c.wait(id, timeout));
        let cell = self.shared.cell(id).ok_or_else(|| not_found(id))?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut r = cell.read();
        while !r.status.state.is_terminal() {
            match deadline {
                Some(d) => {
                    if cell.done.wait_until(&mut r, d).timed_out() && !r.status.state.is_terminal() {
                        return Err(Error::new(ErrorCode::Timeout, format!("{id} is still {}", r.status.state.name())));
                    }
                }
                None => cell.done.wait(&mut r),
            }
        }
        Ok(r.status.clone())
    }

    /// The finished video. A failed or cancelled job returns its error; an unfinished one `not_ready`.
    pub fn result(&self, id: JobId) -> Result<Arc<Video>> {
        clustered!(self, c => c.result(id));
        let cell = self.shared.cell(id).ok_or_else(|| not_found(id))?;
        let r = cell.read();
        match (&r.status.state, &r.result, &r.status.error) {
            (JobState::Succeeded, Some(v), _) => Ok(v.clone()),
            (JobState::Succeeded, None, _) => {
                Err(Error::new(ErrorCode::NotFound, format!("{id}'s video was released")))
            }
            (_, _, Some(e)) => Err(e.to_error()),
            (state, _, None) => Err(Error::new(ErrorCode::NotReady, format!("{id} is still {}", state.name()))),
        }
    }

    /// The request the job was submitted with, as the host sent it (its `metadata` included).
    pub fn request(&self, id: JobId) -> Result<Request> {
        clustered!(self, c => c.request(id));
        let cell = self.shared.cell(id).ok_or_else(|| not_found(id))?;
        Ok(cell.request.clone())
    }

    /// Forgets a finished job and its video now, rather than at the end of its retention.
    pub fn release(&self, id: JobId) -> Result<()> {
        clustered!(self, c => c.release(id));
        let cell = self.shared.cell(id).ok_or_else(|| not_found(id))?;
        if !cell.is_terminal() {
            return Err(Error::invalid(format!("{id} has not finished: cancel it first")));
        }
        self.shared.forget(id);
        Ok(())
    }

    /// Registers a callback for every event of every job, on the dispatcher thread.
    pub fn on_event(&self, callback: Callback) {
        clustered!(self, c => c.on_event(callback));
        self.shared.callbacks.write().push(callback);
    }

    /// This engine's counters. With the Redis backend, `queue_depth` is the cluster's backlog.
    pub fn metrics(&self) -> MetricsSnapshot {
        let depth = self.shared.queue.lock().len() as u64;
        let local = self.shared.metrics.snapshot(depth, self.shared.workers as u64);
        clustered!(self, c => c.metrics(local));
        local
    }

    /// The cluster's backlog per priority and its live workers (for autoscaling); `None` in-process.
    #[cfg(feature = "redis")]
    pub fn cluster_metrics(&self) -> Result<Option<ClusterMetrics>> {
        self.cluster.as_ref().map(|c| c.metrics_cluster()).transpose()
    }

    /// The devices this engine runs on, with the state of each one's circuit breaker.
    pub fn devices(&self) -> Vec<(Device, BreakerState)> {
        let now = Instant::now();
        self.shared.devices.iter().zip(&self.shared.breakers).map(|(d, b)| (*d, b.state(now))).collect()
    }

    pub fn models(&self) -> &Models {
        &self.shared.models
    }

    /// How `request` would use each device's memory (the engine's `memory_budget_bytes`, or the device's own
    /// memory where known): the estimate and what the model chose to fit it, such as block offload. Admission
    /// decides on the same plans.
    pub fn memory_plan(&self, request: &Request) -> Result<Vec<(Device, crate::models::MemoryPlan)>> {
        let shared = &self.shared;
        let model = shared.models.get(request.model.as_deref())?;
        let params = request::validate(request, model.info(), &shared.config.limits, || 0)?;
        Ok(shared
            .devices
            .iter()
            .zip(&shared.device_memory)
            .map(|(d, memory)| (*d, model.memory_plan(&params, *d, shared.config.memory_budget_bytes.or(*memory))))
            .collect())
    }

    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// The first step of a shutdown, on its own: from now on a submit fails with `shutting_down` (and a Redis
    /// worker takes no more jobs). For a host that shuts down on another thread and must know that no job is
    /// accepted once its call returns.
    pub fn refuse_new_jobs(&self) {
        #[cfg(feature = "redis")]
        if let Some(c) = &self.cluster {
            c.drain();
        }
        self.shared.accepting.store(false, Ordering::Release);
    }

    /// Stops taking jobs, lets queued and running ones finish for up to `timeout`, then cancels the rest and joins
    /// every thread. Idempotent.
    pub fn shutdown(&self, timeout: Duration) {
        let shared = &self.shared;
        self.refuse_new_jobs();
        let until = Instant::now() + timeout;
        // Both read under the queue's lock, under which a worker moves a job from the queue to the running count.
        // The count drops when an attempt ends, before its jobs are settled (so that a host woken by its job's end
        // reads a gauge that agrees with it): a job still marked running is busy too, or the drain would cancel a
        // job that had in fact finished (seen as the C misuse test's "drained job: ended cancelled").
        let busy = || {
            let queued_or_counted = {
                let queue = shared.queue.lock();
                !queue.is_empty() || shared.metrics.running.load(Ordering::Acquire) > 0
            };
            queued_or_counted || shared.jobs.read().values().any(|c| c.is_running())
        };
        while Instant::now() < until && busy() {
            std::thread::sleep(Duration::from_millis(2));
        }
        let live: Vec<Arc<JobCell>> = shared.jobs.read().values().filter(|c| !c.is_terminal()).cloned().collect();
        for cell in live {
            shared.detach(&cell, Error::new(ErrorCode::Cancelled, "the engine shut down"), false);
        }
        shared.stopping.store(true, Ordering::Release);
        {
            let _q = shared.queue.lock();
            shared.queue_cv.notify_all();
        }
        {
            let _t = shared.timers.lock();
            shared.timers_cv.notify_all();
        }
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        if let Some(d) = self.dispatcher_thread.lock().take() {
            // The dispatcher delivers every event already queued before it ends.
            shared.dispatcher.close();
            // A callback may shut the engine down (a host dropping its last reference from inside one): the
            // dispatcher cannot join itself, so it is left to finish the queue and end on its own.
            if d.thread().id() != std::thread::current().id() {
                let _ = d.join();
            }
        }
        // After the dispatcher: every local event has reached the cluster's mirror by now.
        #[cfg(feature = "redis")]
        if let Some(c) = &self.cluster {
            c.stop();
        }
    }
}

/// Starts one of the engine's named threads (workers, supervisor, dispatcher, the Redis follower and worker).
/// `VGEN_TEST_FAIL_THREAD_START` (a name prefix) makes that start fail, so tests can check that a failed start
/// leaks nothing.
pub(crate) fn start_thread(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    let refuse = std::env::var("VGEN_TEST_FAIL_THREAD_START").is_ok_and(|p| !p.is_empty() && name.starts_with(&p));
    let started = if refuse {
        Err(std::io::Error::other("refused for a test"))
    } else {
        std::thread::Builder::new().name(name.into()).spawn(f)
    };
    started.map_err(|e| Error::internal(format!("could not start the {name} thread: {e}")))
}

impl Drop for Engine {
    /// Shuts down with the configured timeout. A running job stops at its next step boundary, so dropping never
    /// waits longer than the timeout plus one step.
    fn drop(&mut self) {
        self.shutdown(Duration::from_millis(self.shared.config.shutdown_timeout_ms));
    }
}

fn not_found(id: JobId) -> Error {
    Error::new(ErrorCode::NotFound, format!("no job {id} (it may have been released or evicted)"))
}

impl Shared {
    pub(crate) fn cell(&self, id: JobId) -> Option<Arc<JobCell>> {
        self.jobs.read().get(&id).cloned()
    }

    fn queue_position(&self, flight: &Flight) -> u32 {
        let version = self.queue_version.load(Ordering::Acquire);
        if let Some(p) = flight.cached_position(version) {
            return p;
        }
        let rank = *flight.rank.lock();
        let Some(rank) = rank else { return 0 };
        let Some(queue) = self.queue.try_lock() else {
            return (flight.position.load(Ordering::Acquire) & ((1 << 24) - 1)) as u32;
        };
        let version = self.queue_version.load(Ordering::Acquire);
        let p = queue.position(rank).unwrap_or(0);
        drop(queue);
        flight.position.store(Flight::pack_position(version, p), Ordering::Release);
        p
    }

    pub(crate) fn engine_callbacks(&self) -> Vec<Callback> {
        let c = self.callbacks.read();
        if c.is_empty() { Vec::new() } else { c.clone() }
    }

    pub(crate) fn dispatch(&self, outbox: Outbox) {
        if !outbox.is_empty() {
            dispatcher::send(&self.dispatcher, outbox);
        }
    }

    /// Ends a job and does the engine's bookkeeping for it.
    pub(crate) fn finish(
        &self,
        cell: &Arc<JobCell>,
        outcome: Outcome,
        callbacks: &[Callback],
        outbox: &mut Outbox,
    ) -> bool {
        let ended = cell.finish(outcome, callbacks, outbox, |state| {
            let counter = match state {
                JobState::Succeeded => &self.metrics.succeeded,
                JobState::Failed => &self.metrics.failed,
                _ => &self.metrics.cancelled,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        });
        if ended.is_some() {
            self.retired.lock().push_back((Instant::now(), cell.id));
        }
        ended.is_some()
    }

    /// Takes a job out of its flight and ends it with `error` (cancelled, or deadline exceeded). When no job is
    /// left on the flight, the flight is cancelled: removed from the queue at once, or stopped by its worker at
    /// the next step boundary. Returns whether this call ended the job.
    pub(crate) fn detach(&self, cell: &Arc<JobCell>, error: Error, deadline: bool) -> bool {
        let flight = cell.read().flight.clone();
        let mut emptied = None;
        if let Some(flight) = &flight {
            let mut in_flight = self.in_flight.lock();
            let mut members = flight.members.lock();
            members.retain(|m| m.id != cell.id);
            if members.is_empty() {
                flight.cancelled.store(true, Ordering::Release);
                if in_flight.get(&flight.key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
                    in_flight.remove(&flight.key);
                }
                emptied = Some(flight.clone());
            }
        }
        if let Some(flight) = emptied {
            // Take the rank before locking the queue: workers lock the queue, then a rank (lock order).
            let rank = flight.rank.lock().take();
            if let Some(rank) = rank {
                self.queue.lock().remove(rank);
            }
        }
        let outcome = if deadline { Outcome::Failed(error) } else { Outcome::Cancelled(error) };
        let mut outbox = Vec::new();
        let ended = self.finish(cell, outcome, &self.engine_callbacks(), &mut outbox);
        self.dispatch(outbox);
        ended
    }
}
