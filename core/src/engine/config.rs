//! The engine's configuration. Deserialising rejects unknown fields, as the C and Python layers pass JSON.

use super::breaker::BreakerConfig;
use super::request::Limits;
use super::retry::RetryPolicy;
use crate::device::Device;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// The devices to run on. Empty means auto: every CUDA GPU, else the CPU.
    pub devices: Vec<Device>,
    /// Inference workers per device. Each runs one job at a time.
    pub workers_per_device: usize,
    /// Jobs that may wait in the queue; a submit beyond it fails with `queue_full`.
    pub queue_capacity: usize,
    pub retry: RetryPolicy,
    pub breaker: BreakerConfig,
    /// The deadline of a request that names none, in milliseconds from submit. None: no deadline.
    pub default_deadline_ms: Option<u64>,
    /// How long a queued job waits to gain one priority level.
    pub aging_ms: u64,
    pub retention: Retention,
    pub cache: CacheConfig,
    pub limits: Limits,
    /// How long shutdown lets running and queued jobs finish before it cancels them.
    pub shutdown_timeout_ms: u64,
    /// Memory a single job may use on a device, for admission control. None: the device's memory (the RAM on
    /// the CPU).
    pub memory_budget_bytes: Option<u64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            devices: Vec::new(),
            workers_per_device: 1,
            queue_capacity: 1024,
            retry: RetryPolicy::default(),
            breaker: BreakerConfig::default(),
            default_deadline_ms: None,
            aging_ms: 10_000,
            retention: Retention::default(),
            cache: CacheConfig::default(),
            limits: Limits::default(),
            shutdown_timeout_ms: 10_000,
            memory_budget_bytes: None,
        }
    }
}

impl EngineConfig {
    pub fn from_json(json: &str) -> crate::Result<Self> {
        crate::error::from_json_strict(json, "engine config")
    }
}

/// How long finished jobs and their videos are kept. Whichever limit is reached first evicts the oldest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    pub max_jobs: usize,
    pub ttl_ms: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self { max_jobs: 10_000, ttl_ms: 3_600_000 }
    }
}

/// The result cache: identical requests (same canonical parameters, weights and engine version) are served from
/// memory, least recently used evicted first, and optionally from a folder on disk that survives restarts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub enabled: bool,
    /// The memory budget, in bytes of frames.
    pub max_bytes: u64,
    /// A folder for the disk cache; none by default.
    pub disk_dir: Option<std::path::PathBuf>,
    /// The disk budget, in bytes; the least recently used files go first.
    pub disk_max_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { enabled: true, max_bytes: 1 << 30, disk_dir: None, disk_max_bytes: 10 << 30 }
    }
}
