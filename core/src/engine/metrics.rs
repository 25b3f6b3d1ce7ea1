//! Counters, gauges and per-stage latency histograms, as a snapshot and as Prometheus text.

use super::job::Stage;
use parking_lot::Mutex;
use serde::Serialize;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds of the latency buckets, in milliseconds.
pub const BUCKETS_MS: [f64; 12] = [1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1e3, 5e3, 1e4, 6e4, 3e5, 1.8e6];

#[derive(Default)]
pub(crate) struct Metrics {
    pub submitted: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub cancelled: AtomicU64,
    pub cache_hits: AtomicU64,
    pub deduplicated: AtomicU64,
    pub retries: AtomicU64,
    pub rejected: AtomicU64,
    pub running: AtomicU64,
    stages: Mutex<[Histogram; Stage::ALL.len()]>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Histogram {
    /// Cumulative counts per bucket of [`BUCKETS_MS`], then +Inf.
    pub buckets: [u64; BUCKETS_MS.len() + 1],
    pub sum_ms: f64,
    pub count: u64,
}

impl Histogram {
    fn observe(&mut self, ms: f64) {
        for (i, bound) in BUCKETS_MS.iter().enumerate() {
            if ms <= *bound {
                self.buckets[i] += 1;
            }
        }
        self.buckets[BUCKETS_MS.len()] += 1;
        self.sum_ms += ms;
        self.count += 1;
    }
}

/// A snapshot of the engine's metrics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    pub queue_depth: u64,
    pub running: u64,
    pub submitted: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub cache_hits: u64,
    /// Submits that joined an identical job already in flight (single-flight).
    pub deduplicated: u64,
    pub retries: u64,
    /// Submits refused by validation, backpressure or an open breaker.
    pub rejected: u64,
    pub workers: u64,
    pub stage_latency: Vec<(Stage, Histogram)>,
}

impl Metrics {
    pub fn observe_stage(&self, stage: Stage, ms: f64) {
        self.stages.lock()[stage.index()].observe(ms);
    }

    pub fn snapshot(&self, queue_depth: u64, workers: u64) -> MetricsSnapshot {
        let stages = *self.stages.lock();
        MetricsSnapshot {
            queue_depth,
            running: self.running.load(Relaxed),
            submitted: self.submitted.load(Relaxed),
            succeeded: self.succeeded.load(Relaxed),
            failed: self.failed.load(Relaxed),
            cancelled: self.cancelled.load(Relaxed),
            cache_hits: self.cache_hits.load(Relaxed),
            deduplicated: self.deduplicated.load(Relaxed),
            retries: self.retries.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            workers,
            stage_latency: Stage::ALL.iter().map(|s| (*s, stages[s.index()])).collect(),
        }
    }
}

impl MetricsSnapshot {
    /// The Prometheus text exposition format.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(out, "# HELP vgen_{name} {help}\n# TYPE vgen_{name} {kind}\nvgen_{name} {v}");
        };
        gauge("queue_depth", "Jobs waiting to run.", "gauge", self.queue_depth);
        gauge("running", "Jobs running now.", "gauge", self.running);
        gauge("workers", "Inference workers.", "gauge", self.workers);
        gauge("jobs_submitted_total", "Jobs accepted.", "counter", self.submitted);
        gauge("jobs_succeeded_total", "Jobs that succeeded.", "counter", self.succeeded);
        gauge("jobs_failed_total", "Jobs that failed.", "counter", self.failed);
        gauge("jobs_cancelled_total", "Jobs cancelled.", "counter", self.cancelled);
        gauge("cache_hits_total", "Jobs answered from the cache.", "counter", self.cache_hits);
        gauge("deduplicated_total", "Jobs that joined an identical job in flight.", "counter", self.deduplicated);
        gauge("retries_total", "Attempts retried.", "counter", self.retries);
        gauge("rejected_total", "Submits refused.", "counter", self.rejected);
        let _ = writeln!(out, "# HELP vgen_stage_latency_ms Time per stage.\n# TYPE vgen_stage_latency_ms histogram");
        for (stage, h) in &self.stage_latency {
            let s = stage.name();
            for (i, bound) in BUCKETS_MS.iter().enumerate() {
                let _ = writeln!(out, "vgen_stage_latency_ms_bucket{{stage=\"{s}\",le=\"{bound}\"}} {}", h.buckets[i]);
            }
            let _ = writeln!(
                out,
                "vgen_stage_latency_ms_bucket{{stage=\"{s}\",le=\"+Inf\"}} {}",
                h.buckets[BUCKETS_MS.len()]
            );
            let _ = writeln!(out, "vgen_stage_latency_ms_sum{{stage=\"{s}\"}} {}", h.sum_ms);
            let _ = writeln!(out, "vgen_stage_latency_ms_count{{stage=\"{s}\"}} {}", h.count);
        }
        out
    }
}
