//! A job as the host sees it: its id, state, stage and the snapshot `poll` returns.

use crate::error::{Error, ErrorCode};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A job's id, unique within an engine for its lifetime. Never 0, so C hosts can use 0 as "none".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}", self.0)
    }
}

/// Where a job is in its life. `queued → running → succeeded | failed | cancelled`; a job waiting to be retried
/// is `queued` again with a higher attempt number. Every job reaches exactly one terminal state, exactly once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u32)]
pub enum JobState {
    Queued = 0,
    Running = 1,
    Succeeded = 2,
    Failed = 3,
    Cancelled = 4,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The stages of a generation, in order. Progress weights each by its measured cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u32)]
pub enum Stage {
    Validating = 0,
    EncodingPrompt = 1,
    Generating = 2,
    Decoding = 3,
    EncodingVideo = 4,
    Finalizing = 5,
}

impl Stage {
    pub const ALL: [Stage; 6] = [
        Stage::Validating,
        Stage::EncodingPrompt,
        Stage::Generating,
        Stage::Decoding,
        Stage::EncodingVideo,
        Stage::Finalizing,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Stage::Validating => "validating",
            Stage::EncodingPrompt => "encoding_prompt",
            Stage::Generating => "generating",
            Stage::Decoding => "decoding",
            Stage::EncodingVideo => "encoding_video",
            Stage::Finalizing => "finalizing",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
}

/// How sure the engine is of an ETA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u32)]
pub enum Confidence {
    /// No history yet: a prior from the size of the work.
    Prior = 0,
    /// Scaled from this engine's history of other sizes on the same model and device.
    Scaled = 1,
    /// From this engine's history of this very configuration.
    Measured = 2,
}

/// A point-in-time view of a job, as `poll` returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: JobId,
    pub state: JobState,
    pub stage: Stage,
    /// 0 to 1, weighted by each stage's measured cost: 0.5 means half the time, not half the stages.
    pub progress: f64,
    /// The denoising step finished last, and how many there are.
    pub step: u32,
    pub steps: u32,
    /// Jobs ahead of this one in the queue while queued; 0 otherwise.
    pub queue_position: u32,
    /// 1 for the first try; higher after retries. 0 while it has not started.
    pub attempt: u32,
    /// Estimated milliseconds until the job finishes, and how sure that is.
    pub eta_ms: Option<u64>,
    pub eta_confidence: Confidence,
    /// Milliseconds since the Unix epoch.
    pub submitted_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub error: Option<JobError>,
    pub cache_hit: bool,
    /// Frames decoded so far by the running attempt (all of them once the job has succeeded): a player can show
    /// them before the job ends (`Engine::frames`). Back to 0 when an attempt is retried.
    #[serde(default)]
    pub frames_ready: u32,
    /// Rises by one with each preview the job gets, so a host can tell a new one exists without copying it.
    #[serde(default)]
    pub preview_seq: u64,
}

impl JobStatus {
    /// A job's status at submit: queued, nothing done, with the ETA of its plan.
    pub(crate) fn queued(id: JobId, steps: u32, plan: &super::eta::Plan) -> Self {
        Self {
            id,
            state: JobState::Queued,
            stage: Stage::Validating,
            progress: 0.0,
            step: 0,
            steps,
            queue_position: 0,
            attempt: 0,
            eta_ms: Some(plan.total_ms().round() as u64),
            eta_confidence: plan.confidence,
            submitted_at_ms: unix_ms(),
            started_at_ms: None,
            finished_at_ms: None,
            error: None,
            cache_hit: false,
            frames_ready: 0,
            preview_seq: 0,
        }
    }
}

/// A job's error as a host sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub code: ErrorCode,
    pub message: String,
    pub retryable: bool,
}

impl From<&Error> for JobError {
    fn from(e: &Error) -> Self {
        Self { code: e.code(), message: e.message().to_string(), retryable: e.retryable() }
    }
}

impl JobError {
    pub fn to_error(&self) -> Error {
        Error::new(self.code, self.message.clone())
    }
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
