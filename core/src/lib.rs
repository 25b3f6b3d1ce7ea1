//! # vgen-core
//!
//! The engine behind vgen: an embeddable, native text-to-video engine on libtorch. This crate holds the job
//! engine, the models and schedulers, and video encoding; `libvgen` (C) and `import vgen` (Python) are thin
//! layers over it.

pub mod device;
pub mod error;
pub mod runtime;

pub use device::{Device, Probe};
pub use error::{Error, ErrorCode, Result};
