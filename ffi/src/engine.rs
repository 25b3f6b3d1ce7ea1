//! The engine and its jobs.
//!
//! # Thread safety
//! A `vgen_engine` may be used from any number of threads at once, except `vgen_engine_free`, which must be the
//! last call on it. Job ids are plain numbers, valid for the engine that returned them.

use crate::boundary::{Fallible, borrow, core, guard, null, owned_string, string, write};
use crate::pixels::{pixels_input, vgen_image};
use crate::status::vgen_status;
use std::ffi::{c_char, c_void};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vgen_core::engine::{Event, JobStatus};
use vgen_core::{Engine, EngineConfig, JobId, Request};

/// An embedded engine: devices, workers and its job store. Opaque; create with `vgen_engine_new`, free with
/// `vgen_engine_free`. Thread safety: shared by any number of threads at once (every call but the free takes a
/// `const vgen_engine *`).
#[allow(non_camel_case_types)]
pub struct vgen_engine {
    pub(crate) engine: Arc<Engine>,
    /// The thread of a shutdown started by `vgen_engine_shutdown`, joined by `vgen_engine_free`.
    shutdown: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A job's state. Terminal states are SUCCEEDED, FAILED and CANCELLED; a job reaches exactly one, once.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum vgen_job_state {
    VGEN_JOB_QUEUED = 0,
    VGEN_JOB_RUNNING = 1,
    VGEN_JOB_SUCCEEDED = 2,
    VGEN_JOB_FAILED = 3,
    VGEN_JOB_CANCELLED = 4,
}

/// A snapshot of a job, filled by `vgen_job_poll` and `vgen_job_wait`. Plain data owned by the caller (usually
/// on its stack); it holds no pointers, so a copy is always valid.
///
/// It carries its own size, so that it can grow: the caller sets `size` to `sizeof(vgen_job_status)` as its
/// header defines it (`vgen_job_status s = VGEN_JOB_STATUS_INIT;`) and vgen fills only that many bytes. A host
/// built against an older header keeps working with a newer libvgen; new fields are only ever added at the end.
/// A `size` smaller than this layout's first version (ABI 2) is VGEN_STATUS_INVALID_ARGUMENT.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct vgen_job_status {
    /// Set by the caller: `sizeof(vgen_job_status)`.
    pub size: u32,
    pub state: vgen_job_state,
    /// 0 validating, 1 encoding prompt, 2 generating, 3 decoding, 4 encoding video, 5 finalizing.
    pub stage: u32,
    /// 0 to 1, weighted by each stage's measured cost.
    pub progress: f64,
    /// The denoising step done last, of `steps`.
    pub step: u32,
    pub steps: u32,
    /// Jobs ahead of this one while queued.
    pub queue_position: u32,
    /// 1 for the first attempt; 0 before it starts.
    pub attempt: u32,
    /// Estimated milliseconds to completion, or -1 when unknown.
    pub eta_ms: i64,
    /// How sure the ETA is: 0 a prior, 1 scaled from other sizes, 2 measured for this configuration.
    pub eta_confidence: u32,
    /// The job's error once it has failed or been cancelled, else VGEN_STATUS_OK. The message is available from
    /// `vgen_job_error_message`.
    pub error: vgen_status,
    /// True when the result came from the cache.
    pub cache_hit: bool,
    /// Frames decoded so far (`vgen_job_frames` reads them); rises chunk by chunk while the job decodes, and is
    /// back to 0 when an attempt is retried.
    pub frames_ready: u32,
    /// Rises by one with each new preview: when it has changed, `vgen_job_preview` has a new one.
    pub preview_seq: u64,
}

/// A status with its `size` set and everything else zero: what a Rust host passes to `vgen_job_poll`.
impl Default for vgen_job_status {
    fn default() -> Self {
        vgen_job_status {
            size: std::mem::size_of::<vgen_job_status>() as u32,
            state: vgen_job_state::VGEN_JOB_QUEUED,
            stage: 0,
            progress: 0.0,
            step: 0,
            steps: 0,
            queue_position: 0,
            attempt: 0,
            eta_ms: -1,
            eta_confidence: 0,
            error: vgen_status::VGEN_STATUS_OK,
            cache_hit: false,
            frames_ready: 0,
            preview_seq: 0,
        }
    }
}

/// `sizeof(vgen_job_status)` at ABI 2, the first layout that carries its size: the least `size` vgen accepts.
const STATUS_SIZE_V2: u32 = std::mem::size_of::<vgen_job_status>() as u32;

fn to_c(s: &JobStatus, position: u32, eta: Option<u64>) -> vgen_job_status {
    vgen_job_status {
        size: std::mem::size_of::<vgen_job_status>() as u32,
        state: match s.state {
            vgen_core::JobState::Queued => vgen_job_state::VGEN_JOB_QUEUED,
            vgen_core::JobState::Running => vgen_job_state::VGEN_JOB_RUNNING,
            vgen_core::JobState::Succeeded => vgen_job_state::VGEN_JOB_SUCCEEDED,
            vgen_core::JobState::Failed => vgen_job_state::VGEN_JOB_FAILED,
            vgen_core::JobState::Cancelled => vgen_job_state::VGEN_JOB_CANCELLED,
        },
        stage: s.stage as u32,
        progress: s.progress,
        step: s.step,
        steps: s.steps,
        queue_position: position,
        attempt: s.attempt,
        eta_ms: eta.map_or(-1, |e| e as i64),
        eta_confidence: s.eta_confidence as u32,
        error: s.error.as_ref().map_or(vgen_status::VGEN_STATUS_OK, |e| e.code.into()),
        cache_hit: s.cache_hit,
        frames_ready: s.frames_ready,
        preview_seq: s.preview_seq,
    }
}

/// Checks the caller's `size` before anything else happens.
///
/// # Safety
/// `out` NULL or valid for reads of its `size` field.
unsafe fn status_size(out: *const vgen_job_status) -> Fallible<u32> {
    if out.is_null() {
        return Err(null("out"));
    }
    // SAFETY: non-NULL and readable by contract; `size` is the first field of every layout.
    let size = unsafe { out.cast::<u32>().read() };
    if size < STATUS_SIZE_V2 {
        return Err((
            vgen_status::VGEN_STATUS_INVALID_ARGUMENT,
            format!(
                "out->size is {size}: set it to sizeof(vgen_job_status) ({STATUS_SIZE_V2} or more), for example with \
                 `vgen_job_status s = VGEN_JOB_STATUS_INIT;`"
            ),
        ));
    }
    Ok(size)
}

/// Writes the first `size` bytes of `status` (the caller's layout, never more than vgen's) into `out`, keeping
/// the caller's `size`.
///
/// # Safety
/// `out` valid for writes of `size` bytes.
unsafe fn write_status(out: *mut vgen_job_status, size: u32, status: vgen_job_status) {
    let status = vgen_job_status { size, ..status };
    let n = (size as usize).min(std::mem::size_of::<vgen_job_status>());
    // SAFETY: `n` bytes are readable from `status` and writable at `out` by contract.
    unsafe { std::ptr::copy_nonoverlapping((&status as *const vgen_job_status).cast::<u8>(), out.cast::<u8>(), n) };
}

/// Creates an engine from a JSON configuration (the fields of the Rust `EngineConfig`: `devices`,
/// `workers_per_device`, `queue_capacity`, `retry`, `breaker`, `default_deadline_ms`, `retention`, `cache`,
/// `limits`, `shutdown_timeout_ms`, `default_model`, ...; unknown fields are an error). `config_json` may be NULL
/// for the defaults. Models: the model folders found, in order, in `$VGEN_MODELS`, the user's data folder
/// (`$XDG_DATA_HOME/vgen/models`, else `~/.local/share/vgen/models`), the install prefix's `share/vgen/models`
/// (the folder above libvgen's) and the source tree libvgen was built from, whatever the working directory; and
/// the test models, never a default: `testcard`, `noop`, and `faulty`, the test card failing on command
/// (`!fail=CODE*N`, `!panic`, `!oom`, `!slow=MS` in the prompt), so that a host can test how it handles failure.
/// The default model is `default_model`, else `shapes-tiny`, else the first real model found; with none, a request
/// that names no model fails with VGEN_STATUS_NOT_FOUND, saying where vgen looked. `vgen_engine_models` lists them.
///
/// \param out receives the engine on success; the caller frees it with `vgen_engine_free`.
/// Any thread.
///
/// # Safety
/// `config_json` must be NULL or a NUL-terminated string; `out` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_engine_new(config_json: *const c_char, out: *mut *mut vgen_engine) -> vgen_status {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        let config = if config_json.is_null() {
            EngineConfig::default()
        } else {
            // SAFETY: non-NULL, NUL-terminated by contract.
            EngineConfig::from_json(unsafe { string(config_json, "config_json") }?).map_err(core)?
        };
        let (models, _problems) = vgen_core::models::Models::discover();
        let engine = Engine::with_models(config, models).map_err(core)?;
        let engine = vgen_engine { engine: Arc::new(engine), shutdown: Mutex::new(None) };
        // SAFETY: checked non-NULL above.
        unsafe { write(out, Box::into_raw(Box::new(engine)), "out") }
    })
}

/// Shuts the engine down and frees it: queued and running jobs get the configured drain timeout
/// (`shutdown_timeout_ms`, 10 s by default), then are cancelled; every engine thread is joined before this
/// returns. NULL is accepted. Every callback still held receives its job's terminal event and its finalizer runs
/// before this returns (on the engine's dispatcher thread). No other call on this engine may run concurrently or
/// follow, and it must not be called from a vgen callback (it joins the thread that runs callbacks). Videos
/// taken from the engine stay valid.
///
/// # Safety
/// `engine` must be NULL or an engine from `vgen_engine_new` not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_engine_free(engine: *mut vgen_engine) {
    if !engine.is_null() {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: from Box::into_raw in vgen_engine_new, freed once.
            let engine = unsafe { Box::from_raw(engine) };
            // A shutdown under way finishes first (at once when it has finished): the engine's last reference is
            // then this one, and dropping it finds nothing left to drain.
            if let Some(t) = engine.shutdown.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = t.join();
            }
            drop(engine);
        }));
    }
}

/// Starts shutting the engine down and returns at once, so that a game can end without a frame's hitch: new
/// submits are refused (VGEN_STATUS_SHUTTING_DOWN), queued and running jobs get `timeout_ms` (-1: the configured
/// `shutdown_timeout_ms`) to finish and are then cancelled, and every job's terminal event is delivered. Call it
/// again (each frame, say) to learn whether it has finished: VGEN_STATUS_OK once it has, VGEN_STATUS_NOT_READY
/// while it goes on. Once it has finished, `vgen_engine_free` returns without blocking. Polls, results and videos
/// keep working meanwhile. Any thread, a vgen callback included.
///
/// # Safety
/// `engine` a live engine.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_engine_shutdown(engine: *const vgen_engine, timeout_ms: i64) -> vgen_status {
    guard(|| {
        // SAFETY: by contract.
        let e = unsafe { borrow(engine, "engine") }?;
        let mut slot = e.shutdown.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(t) if t.is_finished() => Ok(()),
            Some(_) => Err((vgen_status::VGEN_STATUS_NOT_READY, "the engine is still shutting down".into())),
            None => {
                let timeout = match timeout_ms {
                    t if t >= 0 => Duration::from_millis(t as u64),
                    _ => Duration::from_millis(e.engine.config().shutdown_timeout_ms),
                };
                e.engine.refuse_new_jobs();
                let engine = e.engine.clone();
                let t = std::thread::Builder::new()
                    .name("vgen-shutdown".into())
                    .spawn(move || engine.shutdown(timeout))
                    .map_err(|err| core(vgen_core::Error::internal(format!("could not start shutting down: {err}"))))?;
                *slot = Some(t);
                Err((vgen_status::VGEN_STATUS_NOT_READY, "the engine is shutting down".into()))
            }
        }
    })
}

/// A per-job callback. `callback` receives every event of the job, the terminal one (`"type":"finished"`)
/// exactly once and last, on the engine's dispatcher thread (never an inference thread, never under an engine
/// lock; keep it short: it delays other jobs' callbacks, not their work). When 32 of a job's events wait for the
/// callbacks, its waiting progress and previews are coalesced to the latest of each (their `seq` then skips); no
/// other event is ever dropped, so memory stays bounded. `event_json` is the event as JSON and is
/// valid only during the call. A callback may call any vgen function on the engine except `vgen_engine_free`.
///
/// `finalizer` (may be NULL) runs exactly once, when vgen lets go of `userdata`:
/// - after the terminal event has been delivered, on the dispatcher thread (within `vgen_engine_free` at the
///   latest, which delivers every pending event before it returns);
/// - or, on the thread calling `vgen_engine_submit` before it returns, when the submit fails, when `callback` is
///   NULL, or when the request repeats an idempotency key (the existing job is returned and this callback is
///   not attached to it).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct vgen_callback {
    pub callback: Option<unsafe extern "C" fn(userdata: *mut c_void, job: u64, event_json: *const c_char)>,
    pub userdata: *mut c_void,
    pub finalizer: Option<unsafe extern "C" fn(userdata: *mut c_void)>,
}

/// Owns a C callback and runs its finalizer once, when dropped.
struct CCallback(vgen_callback);

// SAFETY: the host promises, by registering the callback, that it may be called from the dispatcher thread.
unsafe impl Send for CCallback {}
unsafe impl Sync for CCallback {}

impl Drop for CCallback {
    fn drop(&mut self) {
        if let Some(f) = self.0.finalizer {
            // SAFETY: the host's finalizer with its own userdata, called exactly once (here).
            unsafe { f(self.0.userdata) };
        }
    }
}

/// The engine's form of a C callback; `None` when it has no function (its finalizer then runs when `c` drops).
fn c_callback(c: Arc<CCallback>) -> Option<vgen_core::engine::Callback> {
    let f = c.0.callback?;
    Some(Arc::new(move |ev: &Event| {
        let json = std::ffi::CString::new(serde_json::to_string(ev).unwrap_or_default()).unwrap_or_default();
        // SAFETY: the host's callback with its own userdata; the JSON lives for the call.
        unsafe { f(c.0.userdata, ev.job.0, json.as_ptr()) };
    }))
}

/// Registers a callback for every event of every job of this engine, jobs submitted before it included (from
/// their next event), as `vgen_callback` describes for one job: on the dispatcher thread, in order within each job,
/// each job's terminal event exactly once. Its finalizer runs when the engine is freed, after the last event; or
/// before this returns, when this call fails or `callback->callback` is NULL. Any thread.
///
/// # Safety
/// `engine` a live engine; `callback` valid for a read.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_engine_on_event(
    engine: *const vgen_engine,
    callback: *const vgen_callback,
) -> vgen_status {
    // Taken first, so that its finalizer runs exactly once whatever happens next.
    // SAFETY: NULL or valid by contract.
    let owned = unsafe { callback.as_ref() }.map(|c| Arc::new(CCallback(*c)));
    guard(move || {
        // SAFETY: by contract.
        let e = unsafe { borrow(engine, "engine") }?;
        let Some(owned) = owned else { return Err(null("callback")) };
        if let Some(cb) = c_callback(owned) {
            e.engine.on_event(cb);
        }
        Ok(())
    })
}

/// Submits a request given as JSON (the fields of the Rust `Request`: `prompt`, `negative_prompt`, `width`,
/// `height`, `num_frames`, `fps`, `steps`, `guidance_scale`, `guidance_scale_2`, `seed`, `model`, `image`,
/// `last_image`, `priority`, `deadline_ms`, `idempotency_key`, `preview_every`, `vae_tiling`, `loras` (LoRA
/// adapters, `[{"path": "…", "scale": 0.8}]`), `outputs`, `keep_frames`; unknown fields and out-of-range values are
/// errors). `outputs` lists files for the engine to write as it decodes (by
/// extension, as `vgen_video_save`), each appearing complete only if the job succeeds; with `"keep_frames": false`
/// the video goes only to them and its result has no frames. Validation is synchronous: on error nothing is queued
/// and `vgen_last_error` says what to change. To give images as raw pixels, see `vgen_engine_submit_images`.
///
/// \param callback may be NULL; see `vgen_callback`.
/// \param job_out receives the job id on success.
/// Any thread.
///
/// # Safety
/// `engine` must be a live engine; `request_json` a NUL-terminated string; `callback` NULL or valid for a read;
/// `job_out` valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_engine_submit(
    engine: *const vgen_engine,
    request_json: *const c_char,
    callback: *const vgen_callback,
    job_out: *mut u64,
) -> vgen_status {
    // SAFETY: forwarded under the same contract, with no images.
    unsafe { vgen_engine_submit_images(engine, request_json, std::ptr::null(), std::ptr::null(), callback, job_out) }
}

/// Like `vgen_engine_submit`, with the request's first frame (`image`) and last frame (`last_image`) given as raw
/// pixels instead of in the JSON. Either may be NULL; giving one both ways is an error. They are checked as any
/// image is (its size against the engine's `limits.max_image_pixels`, a stride of at least a row) and resized to
/// the video's size as diffusers' pipelines do. `callback` and `job_out` are as for `vgen_engine_submit`.
/// Any thread.
///
/// # Safety
/// As `vgen_engine_submit`; `image` and `last_image` NULL or valid for a read, each `data` valid for reads of
/// `stride × (height − 1)` bytes plus one row.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_engine_submit_images(
    engine: *const vgen_engine,
    request_json: *const c_char,
    image: *const vgen_image,
    last_image: *const vgen_image,
    callback: *const vgen_callback,
    job_out: *mut u64,
) -> vgen_status {
    // Taken first, so that its finalizer runs exactly once whatever happens next.
    // SAFETY: NULL or valid by contract.
    let owned = unsafe { callback.as_ref() }.map(|c| Arc::new(CCallback(*c)));
    guard(move || {
        // SAFETY: by contract.
        let e = unsafe { borrow(engine, "engine") }?;
        let mut request = Request::from_json(unsafe { string(request_json, "request_json") }?).map_err(core)?;
        let max_pixels = e.engine.config().limits.max_image_pixels;
        for (field, given, slot) in
            [("image", image, &mut request.image), ("last_image", last_image, &mut request.last_image)]
        {
            // SAFETY: NULL or valid by contract.
            let Some(pixels) = (unsafe { given.as_ref() }) else { continue };
            if slot.is_some() {
                return Err(core(vgen_core::Error::invalid(format!(
                    "{field}: given twice, in request_json and as pixels"
                ))));
            }
            // SAFETY: `data` valid for the rows by contract, checked against the limits first.
            *slot = Some(unsafe { pixels_input(pixels, field, max_pixels) }?);
        }
        if job_out.is_null() {
            return Err(null("job_out"));
        }
        let id = e.engine.submit_with(request, owned.and_then(c_callback)).map_err(core)?;
        // SAFETY: checked non-NULL.
        unsafe { write(job_out, id.0, "job_out") }
    })
}

/// Fills `out` with the job's status at once. Never blocks and never allocates, so a game loop may call it every
/// frame; with the Redis backend that holds for the jobs submitted through this engine, whose status it mirrors
/// (within 20 ms), while a job submitted elsewhere is read from Redis. Any thread.
///
/// # Safety
/// `engine` a live engine; `out` valid for reads and writes of `out->size` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_job_poll(engine: *const vgen_engine, job: u64, out: *mut vgen_job_status) -> vgen_status {
    guard(|| {
        // SAFETY: by contract.
        let e = unsafe { borrow(engine, "engine") }?;
        // SAFETY: by contract.
        let size = unsafe { status_size(out) }?;
        let s = e.engine.peek(JobId(job), to_c).map_err(core)?;
        // SAFETY: `size` bytes writable by contract.
        unsafe { write_status(out, size, s) };
        Ok(())
    })
}

/// Waits up to `timeout_ms` (-1: forever) for the job to end, then fills `out`. Returns VGEN_STATUS_TIMEOUT if
/// it is still going (the job goes on). Any thread.
///
/// # Safety
/// `engine` a live engine; `out` valid for reads and writes of `out->size` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_job_wait(
    engine: *const vgen_engine,
    job: u64,
    timeout_ms: i64,
    out: *mut vgen_job_status,
) -> vgen_status {
    guard(|| {
        // SAFETY: by contract.
        let e = unsafe { borrow(engine, "engine") }?;
        // SAFETY: by contract.
        let size = unsafe { status_size(out) }?;
        let timeout = (timeout_ms >= 0).then(|| Duration::from_millis(timeout_ms as u64));
        // The status wait returns, not a second look-up: the job may be evicted (retention) in between.
        let s = e.engine.wait(JobId(job), timeout).map_err(core)?;
        // SAFETY: `size` bytes writable by contract.
        unsafe { write_status(out, size, to_c(&s, s.queue_position, s.eta_ms)) };
        Ok(())
    })
}

/// Cancels a job: a queued one at once, a running one at its next step. `cancelled_out` (may be NULL) is set to
/// false when the job had already ended, which is harmless. Any thread.
///
/// # Safety
/// `engine` a live engine; `cancelled_out` NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_job_cancel(
    engine: *const vgen_engine,
    job: u64,
    cancelled_out: *mut bool,
) -> vgen_status {
    guard(|| {
        // SAFETY: by contract.
        let e = unsafe { borrow(engine, "engine") }?;
        let cancelled = e.engine.cancel(JobId(job)).map_err(core)?;
        if !cancelled_out.is_null() {
            // SAFETY: non-NULL, by contract writable.
            unsafe { cancelled_out.write(cancelled) };
        }
        Ok(())
    })
}

/// Forgets a finished job now, with its events and video, instead of at the end of its retention (by default
/// an engine keeps up to 10,000 finished jobs for an hour). Video handles already taken stay valid; the job id is
/// unknown afterwards (`VGEN_STATUS_NOT_FOUND`). `VGEN_STATUS_INVALID_ARGUMENT` if the job has not finished:
/// cancel it first. Any thread.
///
/// # Safety
/// `engine` a live engine.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_job_release(engine: *const vgen_engine, job: u64) -> vgen_status {
    guard(|| {
        // SAFETY: by contract.
        let e = unsafe { borrow(engine, "engine") }?;
        e.engine.release(JobId(job)).map_err(core)
    })
}

/// The job's events with a sequence number above `since` (0 for all), as a JSON array of objects
/// (`{"job","seq","at_ms","type",...}`). Preview frames are not included in the JSON. Any thread.
///
/// \param json_out receives a string the caller frees with `vgen_string_free`.
///
/// # Safety
/// `engine` a live engine; `json_out` valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_job_events(
    engine: *const vgen_engine,
    job: u64,
    since: u64,
    json_out: *mut *mut c_char,
) -> vgen_status {
    guard(|| {
        // SAFETY: by contract.
        let e = unsafe { borrow(engine, "engine") }?;
        let events = e.engine.events(JobId(job), since).map_err(core)?;
        let json = serde_json::to_string(&events).unwrap_or_else(|_| "[]".into());
        if json_out.is_null() {
            return Err(null("json_out"));
        }
        // SAFETY: checked non-NULL.
        unsafe { write(json_out, owned_string(json), "json_out") }
    })
}

/// The message of a failed or cancelled job's error. Any thread.
///
/// \param message_out receives a string the caller frees with `vgen_string_free`; "" when the job has no error.
///
/// # Safety
/// `engine` a live engine; `message_out` valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_job_error_message(
    engine: *const vgen_engine,
    job: u64,
    message_out: *mut *mut c_char,
) -> vgen_status {
    guard(|| {
        // SAFETY: by contract.
        let e = unsafe { borrow(engine, "engine") }?;
        let message = e.engine.poll(JobId(job)).map_err(core)?.error.map(|e| e.message).unwrap_or_default();
        if message_out.is_null() {
            return Err(null("message_out"));
        }
        // SAFETY: checked non-NULL.
        unsafe { write(message_out, owned_string(message), "message_out") }
    })
}

/// The devices the engine runs jobs on, as a JSON array in the order of its worker slots:
/// `[{"device": "cpu", "breaker": "closed"}, {"device": "cuda:0", "breaker": "open"}]`. A device's circuit breaker
/// is `closed` (in rotation), `open` (failing, out of rotation until its cool-down ends) or `half_open` (one
/// probe job allowed). Any thread.
///
/// \param json_out receives a string the caller frees with `vgen_string_free`.
///
/// # Safety
/// `engine` a live engine; `json_out` valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_engine_devices(engine: *const vgen_engine, json_out: *mut *mut c_char) -> vgen_status {
    guard(|| {
        // SAFETY: by contract.
        let e = unsafe { borrow(engine, "engine") }?;
        if json_out.is_null() {
            return Err(null("json_out"));
        }
        let devices: Vec<serde_json::Value> = e
            .engine
            .devices()
            .into_iter()
            .map(|(device, breaker)| serde_json::json!({ "device": device.to_string(), "breaker": breaker }))
            .collect();
        let text = serde_json::Value::Array(devices).to_string();
        // SAFETY: checked non-NULL.
        unsafe { write(json_out, owned_string(text), "json_out") }
    })
}

/// The models the engine can run, as a JSON array sorted by name, one object per model: `name`, `default`
/// (whether a request that names no model gets it), `test_model` (`testcard`, `noop`, `faulty`: never a default
/// by themselves), `folder` (where it was found; null for a built-in model), `weights_bytes`, and the model's
/// defaults `width`, `height`, `num_frames`, `fps`, `steps`, `guidance_scale`, with `size_multiple` and `dtype`.
/// Any thread.
///
/// \param json_out receives a string the caller frees with `vgen_string_free`.
///
/// # Safety
/// `engine` a live engine; `json_out` valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_engine_models(engine: *const vgen_engine, json_out: *mut *mut c_char) -> vgen_status {
    guard(|| {
        // SAFETY: by contract.
        let e = unsafe { borrow(engine, "engine") }?;
        if json_out.is_null() {
            return Err(null("json_out"));
        }
        let text = serde_json::to_string(&e.engine.models().summaries())
            .map_err(|err| core(vgen_core::Error::internal(err.to_string())))?;
        // SAFETY: checked non-NULL.
        unsafe { write(json_out, owned_string(text), "json_out") }
    })
}

/// The engine's metrics: `format` 0 for a JSON object, 1 for Prometheus text. Any thread.
///
/// \param text_out receives a string the caller frees with `vgen_string_free`.
///
/// # Safety
/// `engine` a live engine; `text_out` valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_engine_metrics(
    engine: *const vgen_engine,
    format: u32,
    text_out: *mut *mut c_char,
) -> vgen_status {
    guard(|| {
        // SAFETY: by contract.
        let e = unsafe { borrow(engine, "engine") }?;
        let m = e.engine.metrics();
        let text = match format {
            0 => serde_json::to_string(&m).unwrap_or_default(),
            1 => m.to_prometheus(),
            other => {
                return Err((
                    vgen_status::VGEN_STATUS_INVALID_ARGUMENT,
                    format!("format {other} is not 0 (JSON) or 1 (Prometheus)"),
                ));
            }
        };
        if text_out.is_null() {
            return Err(null("text_out"));
        }
        // SAFETY: checked non-NULL.
        unsafe { write(text_out, owned_string(text), "text_out") }
    })
}
