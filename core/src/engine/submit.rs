//! The submit path: a request becomes a job, which joins an identical flight, is served from the cache, or
//! starts a flight of its own in the queue; or it is refused before any work (validation, admission, a full queue,
//! every device out of rotation).
//!
//! Idempotency: a key's check and the registration of its job happen under the key map's lock, so concurrent
//! submits with one key make one job. Lock order: the idempotency map, then the in-flight map, a flight's
//! members, the queue, the job table (see `flight.rs`); nothing takes the idempotency map while holding those.

use super::Shared;
use super::cell::{JobCell, Outcome, Record};
use super::event::{Callback, EventKind};
use super::flight::Flight;
use super::job::{JobId, JobState, JobStatus};
use super::request::{self, Request};
use crate::error::{Error, ErrorCode, Result};
use parking_lot::Mutex;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

impl Shared {
    pub(super) fn submit(&self, request: Request, callback: Option<Callback>) -> Result<JobId> {
        if !self.accepting.load(Ordering::Acquire) {
            return Err(Error::new(ErrorCode::ShuttingDown, "the engine is shutting down"));
        }
        // Idempotency first: a repeated key returns the same job even when the queue is full. The key's map stays
        // locked until the new job is registered under it, so that concurrent submits with one key make one job.
        // Lock order: the idempotency map before in_flight, the queue and the job table; nothing takes it while
        // holding those (`forget` releases the table first).
        let mut idempotency = request.idempotency_key.as_ref().map(|_| self.idempotency.lock());
        if let (Some(key), Some(map)) = (&request.idempotency_key, idempotency.as_deref()) {
            if let Some(id) = map.get(key).copied() {
                if let Some(cell) = self.cell(id) {
                    // The same request naming the same image file is still another request when the file's pixels
                    // changed: the pixels' hash is compared too.
                    if cell.request != request || !self.same_images(&cell.params, &request)? {
                        return Err(Error::new(
                            ErrorCode::AlreadyExists,
                            format!("idempotency key {key:?} was used for {id} with a different request"),
                        ));
                    }
                    return Ok(id);
                }
            }
        }
        let model = self.models.get(request.model.as_deref())?;
        let info = model.info();
        let params = request::validate(&request, info, &self.config.limits, rand::random::<u64>)?;
        self.admit(&*model, &params)?;
        let now = Instant::now();
        if let Some(wait) = self.all_breakers_open(now) {
            return Err(Error::new(ErrorCode::Unavailable, "every device is failing and out of rotation for now")
                .with_retry_after(wait.as_millis() as u64));
        }
        let key = params.cache_key(info);
        let id = JobId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let deadline_ms = request.deadline_ms.or(self.config.default_deadline_ms);
        let deadline = deadline_ms.map(|ms| now + Duration::from_millis(ms));
        let plan = self.eta.lock().plan(&info.name, self.devices[0], &params);
        let mut status = JobStatus::queued(id, params.steps, &plan);
        // A cached video is served here unless files must be written from it: that is a worker's job (see
        // `worker::execute`), so that submit never waits for an encoder.
        let cached = if request.outputs.is_empty() { self.cached(key) } else { None };
        if cached.is_some() {
            status.eta_ms = Some(0);
        }
        let record = Record {
            status,
            events: Vec::new(),
            callback,
            result: None,
            flight: None,
            plan,
            eta_at: now,
            last_frames: None,
        };
        let cell = Arc::new(JobCell::new(id, request.clone(), params.clone(), deadline, record));
        let callbacks = self.engine_callbacks();
        let mut outbox = Vec::new();

        if let Some(video) = cached {
            self.register(&cell, &request, idempotency.as_deref_mut());
            drop(idempotency);
            self.metrics.submitted.fetch_add(1, Ordering::Relaxed);
            self.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
            let mut v = (*video).clone();
            v.metadata.cache_hit = true;
            self.finish(&cell, Outcome::Succeeded { video: Arc::new(v), cache_hit: true }, &callbacks, &mut outbox);
            self.dispatch(outbox);
            return Ok(id);
        }

        {
            // Join an identical flight, or start one. See flight.rs for why this holds the map's lock.
            let mut in_flight = self.in_flight.lock();
            let joinable = in_flight.get(&key).filter(|f| !f.cancelled.load(Ordering::Acquire)).cloned();
            if let Some((flight, mut members)) = joinable.as_ref().and_then(|f| {
                let members = f.members.lock();
                (!f.writing.load(Ordering::Acquire)).then_some((f, members))
            }) {
                let running = members.first().is_some_and(|m| m.read().status.state == JobState::Running);
                {
                    let mut r = cell.edit();
                    r.flight = Some(flight.clone());
                    if running {
                        let lead = members[0].read().status.clone();
                        r.status.state = JobState::Running;
                        r.status.attempt = lead.attempt;
                        r.status.stage = lead.stage;
                        r.status.progress = lead.progress;
                        r.status.step = lead.step;
                        r.status.started_at_ms = lead.started_at_ms;
                    }
                    r.push(id, EventKind::Queued { position: 0 }, &callbacks, &mut outbox);
                }
                members.push(cell.clone());
                drop(members);
                drop(in_flight);
                self.register(&cell, &request, idempotency.as_deref_mut());
                self.metrics.submitted.fetch_add(1, Ordering::Relaxed);
                self.metrics.deduplicated.fetch_add(1, Ordering::Relaxed);
                self.arm_deadline(&cell);
                self.dispatch(outbox);
                return Ok(id);
            }
            let mut queue = self.queue.lock();
            if queue.len() >= self.config.queue_capacity {
                let per_job = plan.total_ms().max(1.0);
                let retry_after = (per_job * queue.len() as f64 / self.workers.max(1) as f64) as u64;
                return Err(Error::new(
                    ErrorCode::QueueFull,
                    format!("the queue is full ({} jobs waiting); retry later", queue.len()),
                )
                .with_retry_after(retry_after.max(1)));
            }
            let flight = Arc::new(Flight {
                key,
                model: model.clone(),
                params: params.clone(),
                priority: request.priority,
                members: Mutex::new(vec![cell.clone()]),
                cancelled: AtomicBool::new(false),
                rank: Mutex::new(None),
                attempts: std::sync::atomic::AtomicU32::new(0),
                degraded: AtomicBool::new(false),
                writing: AtomicBool::new(false),
                position: AtomicU64::new(u64::MAX),
                last_failure: Mutex::new(None),
                decoded: Mutex::new(Default::default()),
            });
            let rank = queue.rank(request.priority, now);
            *flight.rank.lock() = Some(rank);
            let position = queue.position(rank).unwrap_or(0);
            {
                let mut r = cell.edit();
                r.flight = Some(flight.clone());
                r.push(id, EventKind::Queued { position }, &callbacks, &mut outbox);
            }
            queue.push(rank, flight.clone(), None);
            in_flight.insert(key, flight);
            // Registered before a worker can see the flight, so no event can refer to an unknown job.
            self.register(&cell, &request, idempotency.as_deref_mut());
            self.metrics.submitted.fetch_add(1, Ordering::Relaxed);
            self.queue_cv.notify_one();
        }
        self.arm_deadline(&cell);
        self.dispatch(outbox);
        Ok(id)
    }

    /// Whether `request`'s images decode to the pixels `params` (an earlier job's, from an equal request) were made
    /// from. Only a path can differ: bytes and pixels are in the request itself, which is equal.
    fn same_images(&self, params: &request::Params, request: &Request) -> Result<bool> {
        use super::image::{ImageInput, load};
        let max = self.config.limits.max_image_pixels;
        let same = |input: &Option<ImageInput>, made: &Option<Arc<super::image::Image>>, field| -> Result<bool> {
            match (input, made) {
                (Some(path @ ImageInput::Path(_)), Some(made)) => {
                    Ok(load(path, field, max, params.width, params.height)?.hash == made.hash)
                }
                _ => Ok(true),
            }
        };
        Ok(same(&request.image, &params.image, "image")?
            && same(&request.last_image, &params.last_image, "last_image")?)
    }

    /// Makes a new job known, under its idempotency key too: `idempotency` is the key map, which `submit` has held
    /// locked since it checked the key.
    pub(super) fn register(
        &self,
        cell: &Arc<JobCell>,
        request: &Request,
        idempotency: Option<&mut HashMap<String, JobId>>,
    ) {
        self.jobs.write().insert(cell.id, cell.clone());
        if let (Some(key), Some(map)) = (&request.idempotency_key, idempotency) {
            map.insert(key.clone(), cell.id);
        }
    }

    pub(super) fn arm_deadline(&self, cell: &JobCell) {
        if let Some(d) = cell.deadline {
            let mut timers = self.timers.lock();
            timers.push(Reverse((d, cell.id)));
            self.timers_cv.notify_one();
        }
    }
}
