//! An inference worker: takes the best flight its device may run, runs the model, and settles the outcome:
//! success, a retry after a backoff, or failure. One thread per device slot.
//!
//! Invariant: a flight popped from the queue is settled exactly once by the worker that popped it: it is either
//! re-queued for a retry or every job still on it is finished. A panic in the model is caught here and becomes a
//! retryable `internal` error; it never kills the worker.

use super::Shared;
use super::attempt::Attempt;
use super::cell::Outcome;
use super::event::EventKind;
use super::fault::{self, Blame};
use super::flight::Flight;
use super::job::{JobState, Stage, unix_ms};
use super::retry::is_transient;
use crate::device::Device;
use crate::error::{Error, ErrorCode};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const IDLE_WAIT: Duration = Duration::from_millis(250);

pub(crate) fn run(shared: Arc<Shared>, slot: usize, device: Device) {
    if let Some(n) = shared.config.cpu_threads {
        crate::runtime::limit_cpu_threads(n);
    }
    while let Some(flight) = next(&shared, slot) {
        execute(&shared, slot, device, flight);
    }
}

/// Waits for a flight this device may run. `None` when the engine stops.
fn next(shared: &Shared, slot: usize) -> Option<Arc<Flight>> {
    let breaker = &shared.breakers[slot];
    let mut queue = shared.queue.lock();
    loop {
        if shared.stopping.load(Ordering::Acquire) {
            return None;
        }
        let now = Instant::now();
        let mut wait = IDLE_WAIT;
        if queue.has_ready(now) {
            match breaker.try_acquire(now) {
                Ok(()) => {
                    let flight = queue.pop(now)?;
                    *flight.rank.lock() = None;
                    // Counted as running while the queue is still locked: shutdown's drain waits while the queue
                    // holds a job or one runs, and a job between the two (popped, not yet started) would let it
                    // cancel that job. `execute` takes it off the count when the attempt ends.
                    shared.metrics.running.fetch_add(1, Ordering::AcqRel);
                    return Some(flight);
                }
                // Open: wait out the cool-down. Half-open with a probe running: look again soon.
                Err(w) => wait = if w.is_zero() { Duration::from_millis(20) } else { w.min(IDLE_WAIT) },
            }
        } else if let Some(at) = queue.next_ready_at() {
            wait = at.saturating_duration_since(now).min(IDLE_WAIT);
        }
        shared.queue_cv.wait_for(&mut queue, wait);
    }
}

fn execute(shared: &Shared, slot: usize, device: Device, flight: Arc<Flight>) {
    let breaker = &shared.breakers[slot];
    let number = flight.attempts.fetch_add(1, Ordering::AcqRel) + 1;
    let degraded = flight.degraded.load(Ordering::Acquire);
    let info = flight.model.info().clone();
    let plan = shared.eta.lock().plan(&info.name, device, &flight.params);

    let callbacks = shared.engine_callbacks();
    let mut outbox = Vec::new();
    let now = Instant::now();
    flight.decoded.lock().restart();
    for m in flight.members() {
        let mut r = m.edit();
        if r.status.state.is_terminal() {
            continue;
        }
        r.status.state = JobState::Running;
        r.status.attempt = number;
        r.status.stage = Stage::Validating;
        r.status.queue_position = 0;
        r.status.frames_ready = 0;
        r.status.started_at_ms.get_or_insert_with(unix_ms);
        r.status.eta_ms = Some(plan.total_ms().round() as u64);
        r.status.eta_confidence = plan.confidence;
        r.plan = plan;
        r.eta_at = now;
        r.push(
            m.id,
            EventKind::Started { attempt: number, device: device.to_string(), degraded },
            &callbacks,
            &mut outbox,
        );
        // Queued while the job's lock is held, so its events reach the dispatcher in order.
        shared.dispatch(std::mem::take(&mut outbox));
    }

    let span = tracing::info_span!("job", key = flight.key, attempt = number, device = %device, model = %info.name);
    let _entered = span.enter();
    let mut attempt = Attempt::new(shared, &flight, device, number, degraded, plan);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        attempt.check()?;
        // A video cached since this flight was queued (or one that jobs with output files were sent here to have
        // written, see `Shared::submit`) is written out, not made again.
        if let Some(video) = shared.cached(flight.key) {
            attempt.write_rest(&video)?;
            return Ok(((*video).clone(), true));
        }
        let _no_grad = tch::no_grad_guard();
        let video = super::storyboard::generate(&*flight.model, &flight.params, &mut attempt)?;
        attempt.write_rest(&video)?;
        Ok((video, false))
    }));
    attempt.finish_timing();
    let result =
        outcome.unwrap_or_else(|panic| Err(Error::internal(format!("the model panicked: {}", panic_message(&*panic)))));
    // Before any job is settled, so that a host woken by its job's end reads a gauge that agrees with it.
    shared.metrics.running.fetch_sub(1, Ordering::AcqRel);
    // Clean-up after every job: the model's tensors lived in `generate`'s frames and are freed by now; the
    // attempt holds no tensors, only timings.

    let mut outbox = Vec::new();
    match result {
        Ok((mut video, cache_hit)) => {
            breaker.record_success();
            let p = &flight.params;
            if cache_hit {
                shared.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
                video.metadata.cache_hit = true;
            } else {
                shared.eta.lock().record(&info.name, device, p, attempt.timings_ms);
                for stage in Stage::ALL {
                    shared.metrics.observe_stage(stage, attempt.timings_ms[stage.index()]);
                }
                let meta = &mut video.metadata;
                meta.prompt = p.prompt.clone();
                meta.seed = p.seed;
                meta.model = info.name.clone();
                meta.weights_hash = info.weights_hash.clone();
                meta.device = device.to_string();
                meta.dtype = info.dtype.clone();
                meta.width = p.width;
                meta.height = p.height;
                meta.num_frames = p.num_frames;
                meta.steps = p.steps;
                meta.guidance_scale = p.guidance_scale;
                meta.timings_ms =
                    Stage::ALL.iter().map(|s| (s.name().to_string(), attempt.timings_ms[s.index()])).collect();
                meta.peak_rss_bytes = attempt.peak_rss;
                // Read on this worker's thread, whose setting is the one the job ran with.
                meta.cpu_threads = if device.is_cuda() { 0 } else { crate::runtime::cpu_threads().max(0) as u32 };
                meta.attempts = number;
            }
            // A streaming model returns no frames when no job keeps them (see `Attempt::retains_frames`).
            let complete = video.frames.num_frames == p.num_frames as usize;
            let video = Arc::new(video);
            if complete && !cache_hit {
                shared.remember(flight.key, &video);
            }
            let frameless = std::sync::LazyLock::new(|| {
                let frames = crate::video::Frames::new(0, p.height as usize, p.width as usize, Vec::new())
                    .expect("zero frames need zero bytes");
                Arc::new(crate::video::Video { frames: Arc::new(frames), ..(*video).clone() })
            });
            let mut outputs = attempt.take_outputs();
            // The last decoded frames, for the jobs that keep none (a copy: made only when one of them is here).
            let mut last_frames = None;
            for m in take_members(shared, &flight) {
                let keep = m.request.keep_frames != Some(false);
                if !keep {
                    let last = last_frames.get_or_insert_with(|| flight.decoded.lock().snapshot().ok().flatten());
                    m.edit().last_frames = last.clone();
                }
                let outcome = match outputs.as_mut().map_or(Ok(()), |o| o.commit(m.id)) {
                    Err(e) => Outcome::Failed(e),
                    Ok(()) if !keep => Outcome::Succeeded { video: frameless.clone(), cache_hit },
                    Ok(()) if complete => Outcome::Succeeded { video: video.clone(), cache_hit },
                    Ok(()) => Outcome::Failed(Error::internal(format!(
                        "the model returned {} of {} frames",
                        video.frames.num_frames, p.num_frames
                    ))),
                };
                shared.finish(&m, outcome, &callbacks, &mut outbox);
            }
        }
        Err(e) if flight.cancelled.load(Ordering::Acquire) || e.code() == ErrorCode::Cancelled => {
            breaker.release();
            for m in take_members(shared, &flight) {
                shared.finish(&m, Outcome::Cancelled(e.clone()), &callbacks, &mut outbox);
            }
        }
        Err(e) => {
            // Only the device's own faults count against it (see fault.rs): one user's bad request must not take
            // the device out of rotation for everyone else.
            let blame = {
                let mut last = flight.last_failure.lock();
                let blame = fault::blame(&e, degraded, last.as_ref());
                *last = Some(fault::Failure::of(&e));
                blame
            };
            if blame == Blame::Device {
                breaker.record_failure(Instant::now());
            } else {
                breaker.release();
            }
            let oom = e.code() == ErrorCode::ResourceExhausted;
            let policy = &shared.config.retry;
            let retry = policy.should_retry(&e, number)
                && blame != Blame::Request
                && !(oom && degraded)
                && !shared.stopping.load(Ordering::Acquire)
                && !flight.members.lock().is_empty();
            if retry {
                if oom {
                    flight.degraded.store(true, Ordering::Release);
                }
                let delay = policy.delay(number, rand::random::<f64>());
                let error = super::job::JobError::from(&e);
                tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "attempt failed; retrying");
                for m in flight.members() {
                    let mut r = m.edit();
                    if r.status.state.is_terminal() {
                        continue;
                    }
                    r.status.state = JobState::Queued;
                    r.status.stage = Stage::Validating;
                    r.status.progress = 0.0;
                    r.status.step = 0;
                    r.status.error = None;
                    let kind = EventKind::RetryScheduled {
                        attempt: number + 1,
                        delay_ms: delay.as_millis() as u64,
                        error: error.clone(),
                    };
                    r.push(m.id, kind, &callbacks, &mut outbox);
                    // Queued while the job's lock is held, so its events reach the dispatcher in order.
                    shared.dispatch(std::mem::take(&mut outbox));
                }
                // This attempt's files are dropped with it; the next attempt writes afresh, so jobs may join again.
                {
                    let _members = flight.members.lock();
                    flight.writing.store(false, Ordering::Release);
                }
                shared.metrics.retries.fetch_add(1, Ordering::Relaxed);
                let mut queue = shared.queue.lock();
                let rank = queue.rank(flight.priority, Instant::now());
                *flight.rank.lock() = Some(rank);
                queue.push(rank, flight.clone(), Some(Instant::now() + delay));
                shared.queue_cv.notify_all();
            } else {
                let e = if oom && degraded {
                    Error::new(
                        ErrorCode::ResourceExhausted,
                        format!(
                            "{} (out of memory even in degraded mode: lower width, height or num_frames)",
                            e.message()
                        ),
                    )
                } else if blame == Blame::Request {
                    Error::new(
                        e.code(),
                        format!(
                            "{} (failed the same way on {number} attempts: a fault of this request, not of the device, \
                             which stays in service)",
                            e.message()
                        ),
                    )
                } else if is_transient(&e) && number >= policy.max_attempts {
                    Error::new(e.code(), format!("{} (after {number} attempts)", e.message()))
                } else {
                    e
                };
                for m in take_members(shared, &flight) {
                    shared.finish(&m, Outcome::Failed(e.clone()), &callbacks, &mut outbox);
                }
            }
        }
    }
    shared.dispatch(outbox);
}

/// Takes the flight out of the in-flight map, then takes its jobs (lock order: map, then members).
fn take_members(shared: &Shared, flight: &Arc<Flight>) -> Vec<Arc<super::cell::JobCell>> {
    let mut in_flight = shared.in_flight.lock();
    if in_flight.get(&flight.key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
        in_flight.remove(&flight.key);
    }
    let members = std::mem::take(&mut *flight.members.lock());
    drop(in_flight);
    members
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic".to_string()
    }
}
