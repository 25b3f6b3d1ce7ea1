//! One attempt at a generation, as a model sees it: where to run, and where to report each stage and step.
//!
//! Every report is also a check: it returns `cancelled` or `deadline_exceeded` when the job should stop, and the
//! model returns that error at once, so cancellation and deadlines work at step granularity.

use super::Shared;
use super::eta::Plan;
use super::event::EventKind;
use super::flight::Flight;
use super::job::{JobState, Stage};
use crate::device::Device;
use crate::error::{Error, ErrorCode, Result};
use crate::video::Frames;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

pub struct Attempt<'a> {
    device: Device,
    number: u32,
    degraded: bool,
    link: Option<(&'a Shared, &'a Flight)>,
    deadline: Option<Instant>,
    preview_every: Vec<u32>,
    plan: Plan,
    started: Instant,
    stage: Stage,
    stage_started: Instant,
    fraction: f64,
    pub(crate) timings_ms: [f64; Stage::ALL.len()],
    pub(crate) peak_rss: u64,
    rss_sampled: Instant,
    /// The flight's output files, opened when the model starts handing over frames (see `output.rs`).
    outputs: Option<super::output::Outputs>,
    /// The storyboard part being made, if the job is a storyboard (see `storyboard.rs`).
    part: Option<super::storyboard::Cursor>,
}

/// Resident memory is sampled at step boundaries at most this often: reading it costs a few microseconds, which
/// is nothing beside a real step but would dominate a model that does no work.
const RSS_SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_millis(5);

impl<'a> Attempt<'a> {
    pub(crate) fn new(
        shared: &'a Shared,
        flight: &'a Flight,
        device: Device,
        number: u32,
        degraded: bool,
        plan: Plan,
    ) -> Self {
        Self {
            number,
            degraded,
            link: Some((shared, flight)),
            deadline: flight.deadline(),
            preview_every: flight.preview_intervals(),
            plan,
            ..Attempt::detached(device)
        }
    }

    /// An attempt attached to no engine, for running a model directly (tools, tests). Reports go nowhere and it is
    /// never cancelled.
    pub fn detached(device: Device) -> Attempt<'static> {
        let now = Instant::now();
        Attempt {
            device,
            number: 1,
            degraded: false,
            link: None,
            deadline: None,
            preview_every: Vec::new(),
            plan: Plan { stage_ms: [1.0; Stage::ALL.len()], confidence: super::job::Confidence::Prior },
            started: now,
            stage: Stage::Validating,
            stage_started: now,
            fraction: 0.0,
            timings_ms: [0.0; Stage::ALL.len()],
            peak_rss: current_rss(),
            rss_sampled: now,
            outputs: None,
            part: None,
        }
    }

    /// The device to run on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// 1 for the first attempt.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// True when an earlier attempt ran out of memory: use the frugal path (for example a chunked decode).
    pub fn degraded(&self) -> bool {
        self.degraded
    }

    /// Returns an error if the job should stop now: it was cancelled, or its deadline passed.
    pub fn check(&self) -> Result<()> {
        if let Some((_, flight)) = self.link {
            if flight.cancelled.load(Ordering::Acquire) {
                return Err(Error::new(ErrorCode::Cancelled, "the job was cancelled"));
            }
        }
        if let Some(d) = self.deadline {
            if Instant::now() >= d {
                return Err(Error::new(ErrorCode::DeadlineExceeded, "the job's deadline passed while it ran"));
            }
        }
        Ok(())
    }

    /// Enters a stage.
    pub fn stage(&mut self, stage: Stage) -> Result<()> {
        self.check()?;
        let now = Instant::now();
        self.timings_ms[self.stage.index()] += (now - self.stage_started).as_secs_f64() * 1e3;
        self.stage = stage;
        self.stage_started = now;
        self.fraction = 0.0;
        self.publish(|_| EventKind::Stage { stage });
        Ok(())
    }

    /// Reports that denoising step `step` (1-based) of `steps` is done.
    pub fn step(&mut self, step: u32, steps: u32) -> Result<()> {
        self.progress_within(step as f64 / steps.max(1) as f64, step, steps)
    }

    /// Reports that `done` of `total` chunks of the current stage (a decode, an encode) are done.
    pub fn chunk(&mut self, done: u32, total: u32) -> Result<()> {
        self.progress_within(done as f64 / total.max(1) as f64, 0, 0)
    }

    fn progress_within(&mut self, fraction: f64, step: u32, steps: u32) -> Result<()> {
        // A storyboard counts its steps over all its parts, so that a bar drawn from them only rises.
        let (step, steps) = match &self.part {
            Some(part) if steps > 0 => (part.index * part.steps + step, part.count * part.steps),
            _ => (step, steps),
        };
        self.fraction = fraction;
        let now = Instant::now();
        if now - self.rss_sampled >= RSS_SAMPLE_EVERY {
            self.peak_rss = self.peak_rss.max(current_rss());
            self.rss_sampled = now;
        }
        if self.link.is_some() {
            let stage_elapsed = (now - self.stage_started).as_secs_f64() * 1e3;
            let (progress, eta) = match &self.part {
                None => (
                    self.plan.progress(self.stage, fraction),
                    self.plan.remaining_ms(
                        self.stage,
                        fraction,
                        stage_elapsed,
                        (now - self.started).as_secs_f64() * 1e3,
                    ),
                ),
                // A storyboard's plan is for all its parts, alike in shape: each part is a share of it. The parts
                // still to come take as long as the ones done did, once one is done.
                Some(part) => {
                    let count = part.count.max(1) as f64;
                    let each = Plan { stage_ms: self.plan.stage_ms.map(|ms| ms / count), ..self.plan };
                    let progress = (part.index as f64 + each.progress(self.stage, fraction)) / count;
                    let here = each.remaining_ms(
                        self.stage,
                        fraction,
                        stage_elapsed,
                        (now - part.started).as_secs_f64() * 1e3,
                    );
                    let per_part = if part.index > 0 { part.parts_ms / part.index as f64 } else { each.total_ms() };
                    (progress, here + per_part * (count - part.index as f64 - 1.0))
                }
            };
            let eta_ms = Some(eta.round().max(0.0) as u64);
            let stage = self.stage;
            self.publish(|s| {
                s.progress = progress;
                s.stage = stage;
                if steps > 0 {
                    s.step = step;
                    s.steps = steps;
                }
                s.eta_ms = eta_ms;
                EventKind::Progress { step: s.step, steps: s.steps, progress, eta_ms }
            });
        }
        self.check()
    }

    /// Tells every job on the flight something that does not stop it, as a `warning` event (and a log line).
    pub fn warn(&mut self, message: impl Into<String>) {
        let message = message.into();
        tracing::warn!(%message);
        self.publish(|_| EventKind::Warning { message: message.clone() });
    }

    /// Whether some job wants a preview after this denoising step.
    pub fn wants_preview(&self, step: u32) -> bool {
        self.preview_every.iter().any(|n| step % n == 0)
    }

    /// Hands preview frames (a cheap projection of the latents, not a decode) to the jobs that asked for them.
    /// `step` is the model's own; the event counts it over a storyboard's parts, as progress does.
    pub fn preview(&mut self, step: u32, frames: Frames) {
        let shown = match &self.part {
            Some(part) => part.index * part.steps + step,
            None => step,
        };
        if let Some((shared, flight)) = self.link {
            let frames = Arc::new(frames);
            let mut outbox = Vec::new();
            let callbacks = shared.engine_callbacks();
            for m in flight.members() {
                if m.params.preview_every.is_some_and(|n| step % n == 0) {
                    let mut r = m.edit();
                    if r.status.state == JobState::Running {
                        r.status.preview_seq += 1;
                        let kind = EventKind::Preview { step: shown, frames: frames.clone() };
                        r.push(m.id, kind, &callbacks, &mut outbox);
                        // Queued while the job's lock is held, so its events reach the dispatcher in order.
                        shared.dispatch(std::mem::take(&mut outbox));
                    }
                }
            }
        }
    }

    /// Whether the model must keep every frame and return them. `false` when every job on the flight only wants
    /// files: the model then hands frames to [`Attempt::emit`] as it decodes them and returns a video without
    /// frames, so memory stays that of one chunk. Call it once decoding begins: it closes the flight to new jobs.
    pub fn retains_frames(&mut self) -> bool {
        self.outputs().is_none_or(|o| o.retain())
    }

    /// Hands decoded frames, in order, to the jobs' output files and to their frames so far (`Engine::frames`,
    /// announced by a `frames` event). A model that streams calls it for each chunk it decodes; one that does not
    /// has its finished frames written after it returns.
    pub fn emit(&mut self, frames: &Frames) -> Result<()> {
        let taken;
        let frames = match &mut self.part {
            None => frames,
            Some(part) => match part.take(frames)? {
                Some(f) => {
                    taken = f;
                    &taken
                }
                None => return self.check(),
            },
        };
        let Some(outputs) = self.outputs() else { return self.check() };
        outputs.push(frames);
        let retain = outputs.retain();
        if let Some((shared, flight)) = self.link {
            // Every job on the flight sees the frames so far (`Engine::frames`), all of them when some job keeps
            // them anyway, else the last `frames_window` (see `decoded.rs`).
            let window = (!retain).then_some(shared.config.frames_window);
            let ready = flight.decoded.lock().push(frames, window) as u32;
            let total = flight.params.num_frames;
            self.publish(|s| {
                s.frames_ready = ready;
                EventKind::Frames { ready, total }
            });
        }
        self.check()
    }

    /// Starts making a storyboard's part: progress, the ETA and the frames handed over are the part's from now.
    pub(crate) fn begin_part(&mut self, cursor: super::storyboard::Cursor) {
        self.part = Some(cursor);
    }

    /// The frames the model has handed over for the current part.
    pub(crate) fn part_frames_seen(&self) -> usize {
        self.part.as_ref().map_or(0, |p| p.seen)
    }

    /// Ends the current part, handing back what was learnt of it.
    pub(crate) fn end_part(&mut self) -> Option<super::storyboard::Cursor> {
        self.part.take()
    }

    /// Tells the jobs how far part `segment` (0-based) of `segments` drifted from the first, as a `quality` event.
    pub(crate) fn quality(&mut self, segment: u32, segments: u32, drift: super::drift::Drift) {
        self.publish(|_| EventKind::Quality { segment, segments, drift });
    }

    /// Writes whatever frames of `video` the model did not emit itself. Runs after `generate` returns.
    pub(crate) fn write_rest(&mut self, video: &crate::video::Video) -> Result<()> {
        let Some(outputs) = self.outputs() else { return Ok(()) };
        if outputs.is_empty() || outputs.frames_written() > 0 {
            return Ok(());
        }
        let f = &video.frames;
        self.stage(Stage::EncodingVideo)?;
        let total = f.num_frames;
        for t in 0..total {
            self.outputs().expect("opened above").push_frame(f.frame(t));
            self.chunk(t as u32 + 1, total as u32)?;
        }
        Ok(())
    }

    /// The output files, opened on first use; `None` for a detached attempt.
    fn outputs(&mut self) -> Option<&mut super::output::Outputs> {
        let (_, flight) = self.link?;
        Some(self.outputs.get_or_insert_with(|| super::output::Outputs::open(flight)))
    }

    /// Takes the output files, to commit them for the jobs that succeed.
    pub(crate) fn take_outputs(&mut self) -> Option<super::output::Outputs> {
        self.outputs.take()
    }

    /// Closes the current stage's timing.
    pub(crate) fn finish_timing(&mut self) {
        self.peak_rss = self.peak_rss.max(current_rss());
        self.timings_ms[self.stage.index()] += self.stage_started.elapsed().as_secs_f64() * 1e3;
        self.stage_started = Instant::now();
    }

    fn publish(&self, mut update: impl FnMut(&mut super::job::JobStatus) -> EventKind) {
        let Some((shared, flight)) = self.link else { return };
        let mut outbox = Vec::new();
        let callbacks = shared.engine_callbacks();
        let now = Instant::now();
        for m in flight.members() {
            let mut r = m.edit();
            if r.status.state != JobState::Running {
                continue;
            }
            let kind = update(&mut r.status);
            r.eta_at = now;
            r.push(m.id, kind, &callbacks, &mut outbox);
            // Queued while the job's lock is held, so its events reach the dispatcher in order.
            shared.dispatch(std::mem::take(&mut outbox));
        }
    }
}

/// Resident memory of this process now, in bytes (0 where unknown). Each thread keeps `/proc/self/statm` open
/// and re-reads it in place, which costs a fraction of opening it each time.
pub(crate) fn current_rss() -> u64 {
    use std::os::unix::fs::FileExt;
    thread_local! {
        static STATM: Option<std::fs::File> = std::fs::File::open("/proc/self/statm").ok();
    }
    STATM.with(|file| {
        let mut buf = [0u8; 128];
        let n = file.as_ref().and_then(|f| f.read_at(&mut buf, 0).ok()).unwrap_or(0);
        std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|s| s.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u64>().ok())
            .map_or(0, |pages| pages * page_size())
    })
}

fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    *PAGE.get_or_init(|| u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096))
}
