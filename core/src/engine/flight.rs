//! A flight is one execution of a generation, shared by every job that asked for the same thing at the same
//! time (single-flight). Most flights carry one job.
//!
//! Invariants:
//! - A flight is in the engine's in-flight map from creation until it ends or every job has left it; a job can
//!   only join a flight while holding the map's lock, and a flight leaves the map under that same lock before its
//!   jobs are finished, so no job joins a flight that will not finish it.
//! - Lock order: in-flight map → `members` → a job's record. Nothing takes them in another order.

use super::cell::JobCell;
use super::queue::Rank;
use super::request::Params;
use crate::models::Model;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

pub(crate) struct Flight {
    pub key: u64,
    pub model: Arc<dyn Model>,
    pub params: Params,
    pub priority: i32,
    pub members: Mutex<Vec<Arc<JobCell>>>,
    /// Set when no job wants the result any more; the worker stops at the next step boundary.
    pub cancelled: AtomicBool,
    /// Its place in the queue while queued.
    pub rank: Mutex<Option<Rank>>,
    pub attempts: AtomicU32,
    /// The next attempt runs in degraded mode (after running out of memory).
    pub degraded: AtomicBool,
    /// Set when the attempt running it starts writing output files (see `output.rs`): from then on no job may
    /// join, since it would miss frames already written. Read and written under `members`' lock.
    pub writing: AtomicBool,
    /// The queue position last computed by a poll, and the queue version it was computed at (see `Queue`).
    pub position: AtomicU64,
    /// How the previous attempt failed, if it did: a second failure the same way is the request's fault
    /// (see `fault.rs`).
    pub last_failure: Mutex<Option<super::fault::Failure>>,
    /// The frames the running attempt has decoded so far (see `decoded.rs`).
    pub decoded: Mutex<super::decoded::DecodedFrames>,
}

impl Flight {
    /// Packs a queue version and a position for [`Flight::position`]. Positions above 2^24 are reported as that.
    pub fn pack_position(version: u64, position: u32) -> u64 {
        ((version & ((1 << 40) - 1)) << 24) | position.min((1 << 24) - 1) as u64
    }

    /// The cached position if it was computed at this queue version.
    pub fn cached_position(&self, version: u64) -> Option<u32> {
        let packed = self.position.load(Ordering::Acquire);
        (packed >> 24 == version & ((1 << 40) - 1)).then_some((packed & ((1 << 24) - 1)) as u32)
    }
}

impl Flight {
    pub fn members(&self) -> Vec<Arc<JobCell>> {
        self.members.lock().clone()
    }

    /// The latest deadline among its jobs: past it, no job is waiting for this flight. None if one has none.
    pub fn deadline(&self) -> Option<Instant> {
        let members = self.members.lock();
        let mut latest: Option<Instant> = None;
        for m in members.iter() {
            let d = m.deadline?;
            latest = Some(latest.map_or(d, |l| l.max(d)));
        }
        latest
    }

    /// The denoising steps at which some job wants a preview.
    pub fn preview_intervals(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.members.lock().iter().filter_map(|m| m.params.preview_every).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}
