//! Chaos: thousands of jobs on four workers with random faults, panics, cancels and deadlines. Every job must end
//! exactly once, nothing may deadlock, and no engine thread may outlive the engine.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vgen_core::engine::{BreakerConfig, EngineConfig, EventKind, Request, RetryPolicy};
use vgen_core::models::faulty::{FaultRates, Faulty};
use vgen_core::models::{Models, noop::NoOp, testcard::TestCard};
use vgen_core::{Device, Engine, JobId};

fn engine_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("vgen-"))
        .count()
}

#[test]
fn two_thousand_jobs_with_random_faults_each_end_exactly_once() {
    const JOBS: u64 = 2_000;
    let rates = FaultRates { fail: 0.15, panic: 0.05, oom: 0.05, invalid: 0.03 };
    let mut models = Models::default();
    models.insert(Arc::new(Faulty::random(Arc::new(NoOp::new()), rates).named("chaos-noop")));
    models.insert(Arc::new(Faulty::random(Arc::new(TestCard::new()), rates).named("chaos-testcard")));
    let config = EngineConfig {
        devices: vec![Device::Cpu],
        workers_per_device: 4,
        queue_capacity: 10_000,
        retry: RetryPolicy { max_attempts: 3, base_delay_ms: 1, max_delay_ms: 5 },
        // Faults are per job, not the device's: keep the breaker from taking the only device away for long.
        breaker: BreakerConfig { failure_threshold: 50, cooldown_ms: 5 },
        shutdown_timeout_ms: 5_000,
        ..EngineConfig::default()
    };
    let engine = Arc::new(Engine::with_models(config, models).unwrap());
    let finished: Arc<Mutex<HashMap<JobId, u32>>> = Arc::default();
    let f = finished.clone();
    engine.on_event(Arc::new(move |ev| {
        if let EventKind::Finished { .. } = ev.kind {
            *f.lock().entry(ev.job).or_default() += 1;
        }
    }));

    let start = Instant::now();
    let mut ids = Vec::new();
    let canceller = {
        let engine = engine.clone();
        let (tx, rx) = crossbeam_channel::unbounded::<JobId>();
        let handle = std::thread::spawn(move || {
            for id in rx {
                let _ = engine.cancel(id);
            }
        });
        (tx, handle)
    };
    for i in 0..JOBS {
        let model = if i % 20 == 0 { "chaos-testcard" } else { "chaos-noop" };
        let request = Request {
            model: Some(model.into()),
            seed: Some(i),
            priority: (i % 7) as i32 - 3,
            num_frames: Some(if model == "chaos-testcard" { 5 } else { 1 }),
            width: Some(16),
            height: Some(16),
            steps: Some(3),
            deadline_ms: (i % 11 == 0).then_some(1 + i % 5),
            ..Request::new(format!("chaos {i}"))
        };
        match engine.submit(request) {
            Ok(id) => {
                if i % 13 == 0 {
                    canceller.0.send(id).unwrap();
                }
                ids.push(id);
            }
            Err(e) => panic!("submit {i} failed: {e}"),
        }
    }
    drop(canceller.0);
    canceller.1.join().unwrap();
    for id in &ids {
        let status = engine.wait(*id, Some(Duration::from_secs(60))).expect("no job may hang");
        assert!(status.state.is_terminal());
    }
    let elapsed = start.elapsed();

    let m = engine.metrics();
    assert_eq!(m.succeeded + m.failed + m.cancelled, JOBS, "{m:?}");
    assert!(m.succeeded > JOBS / 2, "most jobs survive their faults: {m:?}");
    assert!(m.retries > 0 && m.failed > 0 && m.cancelled > 0, "{m:?}");
    assert_eq!(m.running, 0);
    assert_eq!(m.queue_depth, 0);

    let engine = Arc::try_unwrap(engine).ok().expect("the test holds the only engine reference");
    drop(engine);
    // Every terminal event was delivered exactly once, to the engine-wide callback.
    let finished = finished.lock();
    assert_eq!(finished.len() as u64, JOBS);
    assert!(finished.values().all(|n| *n == 1), "a job ended twice");
    assert_eq!(engine_threads(), 0, "engine threads outlived the engine");
    eprintln!("chaos: {JOBS} jobs in {elapsed:?}: {} ok, {} failed, {} cancelled, {} retries", m.succeeded, m.failed, m.cancelled, m.retries);
}
