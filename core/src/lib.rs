//! # vgen-core
//!
//! The engine behind vgen: an embeddable, native text-to-video engine on libtorch. This crate holds the job
//! engine, the models and schedulers, and video encoding; `libvgen` (C) and `import vgen` (Python) are thin
//! layers over it.

pub mod backoff;
pub mod device;
pub mod encode;
pub mod engine;
pub mod error;
pub mod models;
pub mod runtime;
pub mod schedulers;
pub mod video;

pub use device::{Device, Probe};
pub use engine::{Engine, EngineConfig, JobId, JobState, JobStatus, Request, Stage};
pub use error::{Error, ErrorCode, Result};
pub use video::{Frames, Video, VideoMetadata};
