//! Admission: a request that could never fit any device's memory is refused at submit, and none is accepted
//! while every device's circuit breaker is open.

use super::Shared;
use super::request::Params;
use crate::device::Device;
use crate::error::{Error, Result};
use std::time::{Duration, Instant};

impl Shared {
    /// Rejects at submit a request that could never fit any device.
    pub(super) fn admit(&self, model: &dyn crate::models::Model, params: &Params) -> Result<()> {
        let mut best: Option<(u64, u64, Device)> = None;
        for (d, memory) in self.devices.iter().zip(&self.device_memory) {
            let budget = self.config.memory_budget_bytes.or(*memory);
            let need = model.memory_plan(params, *d, budget).bytes;
            let have = budget.unwrap_or(u64::MAX);
            if need <= have {
                return Ok(());
            }
            best = Some((need, have, *d));
        }
        match best {
            Some((need, have, d)) => Err(Error::invalid(format!(
                "this request needs about {:.1} GiB but {d} has {:.1} GiB: lower width, height or num_frames",
                need as f64 / (1u64 << 30) as f64,
                have as f64 / (1u64 << 30) as f64
            ))),
            None => Ok(()),
        }
    }

    pub(super) fn all_breakers_open(&self, now: Instant) -> Option<Duration> {
        let mut soonest: Option<Duration> = None;
        for b in &self.breakers {
            let wait = b.open_for(now)?;
            soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
        }
        soonest
    }
}

/// The memory of a device in bytes, where known: the machine's RAM for the CPU.
pub(super) fn device_memory(device: Device) -> Option<u64> {
    match device {
        Device::Cpu => std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kb| kb * 1024)
        }),
        Device::Cuda(_) => None,
    }
}
