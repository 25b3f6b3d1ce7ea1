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
    /// Where jobs wait and their state lives: in this process (the default), or in Redis, shared by many engines.
    pub backend: Backend,
    /// The model of a request that names none. None: `shapes-tiny` where it is installed, else the first real
    /// model found (see `models::SearchPath`); an engine never picks a test model by itself, but a host may name
    /// one here.
    pub default_model: Option<String>,
    /// libtorch's CPU threads for inference (intra-op and inter-op), so that a host such as a game keeps its own
    /// cores: a CPU device then uses at most `workers_per_device × cpu_threads` cores. None: libtorch's default
    /// (one per core). Process-wide, as libtorch's settings are: the last engine created sets them.
    pub cpu_threads: Option<usize>,
    /// How many of the latest decoded frames a running job keeps readable (`Engine::frames`) when no job on its
    /// flight keeps its frames (`keep_frames: false`); a job that keeps them can read them all.
    pub frames_window: usize,
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
            backend: Backend::InProcess,
            default_model: None,
            cpu_threads: None,
            frames_window: 16,
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

/// Where the engine's queue and job state live. `"in_process"`, or `{"redis": {...}}`: the same API on both.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    #[default]
    InProcess,
    Redis(RedisConfig),
}

/// A Redis Streams backend (the `redis` cargo feature): jobs go to one stream per priority, workers in a consumer
/// group run them, and job state, events and results are readable from every engine sharing the namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port/db` (or `rediss://` for TLS, `redis+unix:///path` for a socket). With `cluster`, one or
    /// more nodes of a Redis Cluster, separated by commas (`redis://10.0.0.1:7000,redis://10.0.0.2:7000`): the
    /// client finds the rest.
    pub url: String,
    /// Whether `url` names a Redis Cluster. Every key of a namespace carries the hash tag `{namespace}`, so one
    /// namespace lives in one hash slot (on one primary and its replicas); namespaces spread over the cluster.
    pub cluster: bool,
    /// The prefix of every key, so that several clusters can share one Redis.
    pub namespace: String,
    /// Whether this engine runs jobs from the shared queue (`worker`), only submits and reads them
    /// (`submitter`), or both.
    pub role: Role,
    /// The shared result store: a folder every engine of the cluster can read and write (a shared filesystem).
    /// Finished videos are written here and referenced from Redis, never copied through it.
    pub results_dir: std::path::PathBuf,
    /// A job whose worker has not renewed its lease for this long is reclaimed and run again elsewhere.
    pub lease_ms: u64,
    /// How long a finished job's state, events and result are kept.
    pub job_ttl_ms: u64,
    /// How often a worker checks the jobs it runs for a cancel from another node.
    pub cancel_check_ms: u64,
    /// Timeout of one connection attempt or command.
    pub timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            cluster: false,
            namespace: "vgen".into(),
            role: Role::Both,
            results_dir: std::env::temp_dir().join("vgen-results"),
            lease_ms: 30_000,
            job_ttl_ms: 86_400_000,
            cancel_check_ms: 100,
            timeout_ms: 2_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Submitter,
    Worker,
    Both,
}
