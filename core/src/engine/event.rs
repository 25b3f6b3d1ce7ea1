//! The event log: everything that happens to a job, numbered, so that a host that polls late loses nothing.

use super::job::{JobError, JobId, JobState, Stage};
use crate::video::Frames;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One thing that happened to a job. `seq` counts from 1 within the job, with no gaps.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    pub job: JobId,
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    Queued {
        position: u32,
    },
    Started {
        attempt: u32,
        device: String,
        degraded: bool,
    },
    Stage {
        stage: Stage,
    },
    Progress {
        step: u32,
        steps: u32,
        progress: f64,
        eta_ms: Option<u64>,
    },
    /// A cheap look at the video so far: the latents projected to RGB, not a full decode.
    Preview {
        step: u32,
        #[serde(skip, default = "Frames::none")]
        frames: Arc<Frames>,
    },
    /// A decoded chunk is ready: `ready` of the video's `total` frames can be read with `Engine::frames` (and,
    /// where the request keeps no frames, the last few of them).
    Frames {
        ready: u32,
        total: u32,
    },
    /// A storyboard's part `segment` (0-based) of `segments` is done: how far it drifted from the first part.
    Quality {
        segment: u32,
        segments: u32,
        drift: super::drift::Drift,
    },
    RetryScheduled {
        attempt: u32,
        delay_ms: u64,
        error: JobError,
    },
    /// Something the host should know that does not stop the job (words the model does not know, say).
    Warning {
        message: String,
    },
    /// The last event of every job, sent exactly once.
    Finished {
        state: JobState,
        error: Option<JobError>,
        cache_hit: bool,
    },
}

impl EventKind {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Queued { .. } => "queued",
            Self::Started { .. } => "started",
            Self::Stage { .. } => "stage",
            Self::Progress { .. } => "progress",
            Self::Preview { .. } => "preview",
            Self::Frames { .. } => "frames",
            Self::Quality { .. } => "quality",
            Self::RetryScheduled { .. } => "retry_scheduled",
            Self::Warning { .. } => "warning",
            Self::Finished { .. } => "finished",
        }
    }
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Finished { .. })
    }
}

/// A host's callback for events. Called on the engine's dispatcher thread, never on an inference worker and never
/// while an engine lock is held. Dropped (which runs any finalizer it owns) once it can receive nothing more.
pub type Callback = Arc<dyn Fn(&Event) + Send + Sync>;
