//! The job engine, end to end, on real models: the test card (a real libtorch computation), `noop`, and
//! `faulty`, which fails on command.

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use vgen_core::engine::{BreakerConfig, BreakerState, EngineConfig, EventKind, JobState, Request, RetryPolicy, Stage};
use vgen_core::models::Models;
use vgen_core::{Device, Engine, ErrorCode};

mod common;

fn models() -> Models {
    common::test_models()
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy { max_attempts: 3, base_delay_ms: 5, max_delay_ms: 20 }
}

/// A CPU engine with quick retries, for the settings a test does not name.
fn config() -> EngineConfig {
    EngineConfig { devices: vec![Device::Cpu], retry: fast_retries(), ..EngineConfig::default() }
}

fn engine_with(config: EngineConfig) -> Engine {
    Engine::with_models(config, models()).unwrap()
}

fn engine() -> Engine {
    engine_with(config())
}

fn wait_running(e: &Engine, id: vgen_core::JobId) {
    while e.poll(id).unwrap().state != JobState::Running {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A small, quick test-card request.
fn small(prompt: &str) -> Request {
    Request {
        num_frames: Some(5),
        width: Some(32),
        height: Some(32),
        steps: Some(4),
        seed: Some(1),
        ..Request::new(prompt)
    }
}

fn faulty(prompt: &str) -> Request {
    Request { model: Some("faulty".into()), ..small(prompt) }
}

const WAIT: Option<Duration> = Some(Duration::from_secs(30));

#[test]
fn a_job_goes_queued_running_succeeded_with_stages_progress_and_a_video() {
    let e = engine();
    let id = e.submit(small("a red circle moving right")).unwrap();
    let status = e.wait(id, WAIT).unwrap();
    assert_eq!(status.state, JobState::Succeeded);
    assert_eq!((status.progress, status.step, status.steps, status.attempt), (1.0, 4, 4, 1));
    let video = e.result(id).unwrap();
    assert_eq!((video.frames.num_frames, video.frames.height, video.frames.width), (5, 32, 32));
    assert_eq!(video.metadata.seed, 1);
    assert_eq!(video.metadata.model, "testcard");
    assert_eq!(video.metadata.device, "cpu");
    assert!(video.metadata.timings_ms["generating"] > 0.0);
    assert!(video.metadata.peak_rss_bytes > 0);

    let events = e.events(id, 0).unwrap();
    let names: Vec<&str> = events.iter().map(|e| e.kind.name()).collect();
    assert_eq!(names.first(), Some(&"queued"));
    assert_eq!(names[1], "started");
    assert_eq!(names.last(), Some(&"finished"));
    assert_eq!(names.iter().filter(|n| **n == "finished").count(), 1);
    let stages: Vec<Stage> = events
        .iter()
        .filter_map(|e| if let EventKind::Stage { stage } = e.kind { Some(stage) } else { None })
        .collect();
    assert_eq!(stages, [Stage::EncodingPrompt, Stage::Generating, Stage::Decoding, Stage::Finalizing]);
    let mut last = 0.0;
    for ev in &events {
        if let EventKind::Progress { progress, .. } = ev.kind {
            assert!(progress >= last, "progress went back: {progress} < {last}");
            last = progress;
        }
    }
    // Sequence numbers count from 1 with no gaps, and the cursor returns only what is newer.
    assert!(events.iter().enumerate().all(|(i, ev)| ev.seq == i as u64 + 1));
    let tail = e.events(id, 3).unwrap();
    assert_eq!(tail.first().map(|ev| ev.seq), Some(4));
    assert_eq!(tail.len(), events.len() - 3);
}

#[test]
fn bad_requests_are_rejected_at_submit_with_the_reason() {
    let e = engine();
    let err = e.submit(Request { width: Some(100), ..small("x") }).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert!(err.message().contains("96 or 112"), "{err}");
    let err = e.submit(Request { model: Some("nope".into()), ..small("x") }).unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
    assert!(err.message().contains("testcard"), "lists the installed models: {err}");
    // Admission control: a request that could never fit the machine is refused before it queues.
    let huge = Request { width: Some(1920), height: Some(1920), num_frames: Some(257), ..small("x") };
    let e2 = engine_with(EngineConfig { memory_budget_bytes: Some(64 << 20), ..config() });
    let err = e2.submit(huge).unwrap_err();
    assert!(err.message().contains("GiB"), "{err}");
    assert_eq!(e.metrics().rejected, 2);
}

#[test]
fn cancel_while_queued_removes_it_at_once() {
    let e = engine();
    let blocker = e.submit(faulty("!slow=20 blocker")).unwrap();
    wait_running(&e, blocker);
    let queued = e.submit(small("waiting")).unwrap();
    assert_eq!(e.poll(queued).unwrap().state, JobState::Queued);
    assert!(e.cancel(queued).unwrap());
    let s = e.poll(queued).unwrap();
    assert_eq!(s.state, JobState::Cancelled);
    assert_eq!(s.error.unwrap().code, ErrorCode::Cancelled);
    assert_eq!(e.metrics().queue_depth, 0);
    assert!(!e.cancel(queued).unwrap(), "cancelling a finished job is a no-op that says so");
    e.cancel(blocker).unwrap();
}

#[test]
fn cancel_while_running_stops_at_the_next_step() {
    let e = engine();
    let id = e.submit(Request { steps: Some(200), ..faulty("!slow=10 long") }).unwrap();
    while e.poll(id).unwrap().step < 2 {
        std::thread::sleep(Duration::from_millis(2));
    }
    let t = Instant::now();
    assert!(e.cancel(id).unwrap());
    let s = e.wait(id, WAIT).unwrap();
    assert_eq!(s.state, JobState::Cancelled);
    assert!(s.step < 50, "stopped at step {}", s.step);
    // The worker is free again soon: a new job runs.
    let next = e.submit(small("after")).unwrap();
    assert_eq!(e.wait(next, WAIT).unwrap().state, JobState::Succeeded);
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn deadlines_fail_queued_and_running_jobs() {
    let e = engine();
    let running = e.submit(Request { steps: Some(200), deadline_ms: Some(150), ..faulty("!slow=5 runs") }).unwrap();
    let queued = e.submit(Request { deadline_ms: Some(50), ..small("waits") }).unwrap();
    let s = e.wait(queued, WAIT).unwrap();
    assert_eq!(s.state, JobState::Failed);
    assert_eq!(s.error.as_ref().unwrap().code, ErrorCode::DeadlineExceeded);
    let s = e.wait(running, WAIT).unwrap();
    assert_eq!(s.state, JobState::Failed);
    assert_eq!(s.error.unwrap().code, ErrorCode::DeadlineExceeded);
    assert!(s.step > 0 && s.step < 200);
}

#[test]
fn transient_faults_are_retried_with_backoff_and_others_are_not() {
    // A device fault (`unavailable`) is retried as the policy allows.
    let e = engine();
    let id = e.submit(faulty("!fail=unavailable*2 recovers")).unwrap();
    let s = e.wait(id, WAIT).unwrap();
    assert_eq!((s.state, s.attempt), (JobState::Succeeded, 3));
    let retries: Vec<_> =
        e.events(id, 0).unwrap().into_iter().filter(|ev| matches!(ev.kind, EventKind::RetryScheduled { .. })).collect();
    assert_eq!(retries.len(), 2);
    assert_eq!(e.result(id).unwrap().metadata.attempts, 3);

    let id = e.submit(faulty("!fail=unavailable*5 gives up")).unwrap();
    let s = e.wait(id, WAIT).unwrap();
    assert_eq!((s.state, s.attempt), (JobState::Failed, 3));
    assert!(s.error.as_ref().unwrap().retryable);
    assert!(s.error.unwrap().message.contains("after 3 attempts"));

    // An internal error that comes back the same way is the request's own: one retry, then it fails alone.
    let id = e.submit(faulty("!fail=internal*5 the same every time")).unwrap();
    let s = e.wait(id, WAIT).unwrap();
    assert_eq!((s.state, s.attempt), (JobState::Failed, 2));
    let message = s.error.unwrap().message;
    assert!(message.contains("failed the same way on 2 attempts: a fault of this request"), "{message}");
    let id = e.submit(faulty("!fail=internal*1 once")).unwrap();
    assert_eq!(e.wait(id, WAIT).unwrap().state, JobState::Succeeded, "a one-off internal error is retried");

    let id = e.submit(faulty("!fail=invalid_argument*1 bad")).unwrap();
    let s = e.wait(id, WAIT).unwrap();
    assert_eq!((s.state, s.attempt), (JobState::Failed, 1), "never retried");

    let id = e.submit(faulty("!panic*1 panics once")).unwrap();
    assert_eq!(e.wait(id, WAIT).unwrap().state, JobState::Succeeded, "a panic is caught and retried");
}

#[test]
fn out_of_memory_retries_in_degraded_mode_then_fails_with_a_hint() {
    let e = engine();
    let id = e.submit(faulty("!oom-unless-degraded fits when frugal")).unwrap();
    assert_eq!(e.wait(id, WAIT).unwrap().state, JobState::Succeeded);
    let degraded =
        e.events(id, 0).unwrap().iter().any(|ev| matches!(ev.kind, EventKind::Started { degraded: true, .. }));
    assert!(degraded);

    let id = e.submit(faulty("!oom*9 never fits")).unwrap();
    let s = e.wait(id, WAIT).unwrap();
    assert_eq!((s.state, s.attempt), (JobState::Failed, 2));
    let err = s.error.unwrap();
    assert_eq!(err.code, ErrorCode::ResourceExhausted);
    assert!(err.message.contains("lower width"), "{}", err.message);
}

/// One user's bad requests must not deny service to the rest: requests that fail the same way on every attempt
/// (errors, panics, numerical failures) fail alone and leave the device in rotation.
#[test]
fn requests_that_always_fail_do_not_open_the_breaker() {
    let e =
        engine_with(EngineConfig { breaker: BreakerConfig { failure_threshold: 2, cooldown_ms: 60_000 }, ..config() });
    for (i, prompt) in
        ["!fail=internal*100 bad", "!panic*100 bad", "!fail=numerical*100 bad", "!fail=internal*100 again"]
            .into_iter()
            .enumerate()
    {
        let id = e.submit(Request { seed: Some(i as u64), ..faulty(prompt) }).unwrap();
        let s = e.wait(id, WAIT).unwrap();
        assert_eq!((s.state, s.attempt), (JobState::Failed, 2), "{prompt}: one retry, then it fails alone");
    }
    assert_eq!(e.devices()[0].1, BreakerState::Closed, "the device stays in rotation");
    let good = e.submit(small("a good request after the bad ones")).unwrap();
    assert_eq!(e.wait(good, WAIT).unwrap().state, JobState::Succeeded);

    // Attempts that fail in different ways point at the device, and count against it.
    let flaky = e.submit(faulty("!fail=internal*1 !panic*2 flaky")).unwrap();
    assert_eq!(e.wait(flaky, WAIT).unwrap().state, JobState::Succeeded);
}

#[test]
fn the_breaker_opens_goes_half_open_and_closes() {
    let e = engine_with(EngineConfig {
        breaker: BreakerConfig { failure_threshold: 2, cooldown_ms: 150 },
        retry: RetryPolicy { max_attempts: 1, ..fast_retries() },
        ..config()
    });
    for _ in 0..2 {
        let id = e.submit(faulty("!fail=unavailable*1 device trouble")).unwrap();
        assert_eq!(e.wait(id, WAIT).unwrap().state, JobState::Failed);
    }
    assert_eq!(e.devices()[0].1, BreakerState::Open);
    let err = e.submit(small("while open")).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable);
    assert!(err.retryable() && err.retry_after_ms().is_some());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(e.devices()[0].1, BreakerState::HalfOpen);
    let probe = e.submit(small("probe")).unwrap();
    assert_eq!(e.wait(probe, WAIT).unwrap().state, JobState::Succeeded);
    assert_eq!(e.devices()[0].1, BreakerState::Closed);
}

#[test]
fn idempotency_keys_return_the_same_job_and_refuse_a_different_request() {
    let e = engine();
    let r = Request { idempotency_key: Some("k1".into()), ..small("same") };
    let a = e.submit(r.clone()).unwrap();
    let b = e.submit(r.clone()).unwrap();
    assert_eq!(a, b);
    let err = e.submit(Request { steps: Some(5), ..r }).unwrap_err();
    assert_eq!(err.code(), ErrorCode::AlreadyExists);
    e.wait(a, WAIT).unwrap();
}

#[test]
fn identical_requests_share_one_flight_then_hit_the_cache() {
    let e = engine();
    let blocker = e.submit(faulty("!slow=10 blocker")).unwrap();
    wait_running(&e, blocker);
    let a = e.submit(small("shared")).unwrap();
    let b = e.submit(small("shared")).unwrap();
    assert_ne!(a, b);
    assert_eq!(e.metrics().queue_depth, 1, "the second joined the first: one flight for two jobs");
    e.cancel(blocker).unwrap();
    let (sa, sb) = (e.wait(a, WAIT).unwrap(), e.wait(b, WAIT).unwrap());
    assert_eq!((sa.state, sb.state), (JobState::Succeeded, JobState::Succeeded));
    assert!(Arc::ptr_eq(&e.result(a).unwrap().frames, &e.result(b).unwrap().frames), "one video, not two");
    assert_eq!(e.metrics().deduplicated, 1);

    let c = e.submit(Request { priority: 3, ..small("shared") }).unwrap();
    let sc = e.poll(c).unwrap();
    assert_eq!(sc.state, JobState::Succeeded, "a cache hit finishes at submit");
    assert!(sc.cache_hit && e.result(c).unwrap().metadata.cache_hit);
    assert_eq!(e.result(c).unwrap().frames, e.result(a).unwrap().frames);
}

#[test]
fn cancelling_one_of_two_shared_jobs_leaves_the_other_running() {
    let e = engine();
    let a = e.submit(faulty("!slow=5 shared slow")).unwrap();
    let b = e.submit(faulty("!slow=5 shared slow")).unwrap();
    e.cancel(a).unwrap();
    assert_eq!(e.wait(b, WAIT).unwrap().state, JobState::Succeeded);
    assert_eq!(e.poll(a).unwrap().state, JobState::Cancelled);
}

#[test]
fn priority_order_fifo_within_a_priority_and_aging() {
    let e = engine_with(EngineConfig { aging_ms: 60_000, ..config() });
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    e.on_event(Arc::new(move |ev| {
        if let EventKind::Started { .. } = ev.kind {
            o.lock().push(ev.job);
        }
    }));
    let blocker = e.submit(faulty("!slow=30 blocker")).unwrap();
    wait_running(&e, blocker);
    let low1 = e.submit(Request { priority: -1, ..small("low 1") }).unwrap();
    let mid1 = e.submit(small("mid 1")).unwrap();
    let high = e.submit(Request { priority: 5, ..small("high") }).unwrap();
    let mid2 = e.submit(small("mid 2")).unwrap();
    assert_eq!(e.poll(high).unwrap().queue_position, 0);
    assert_eq!(e.poll(low1).unwrap().queue_position, 3);
    for id in [low1, mid1, high, mid2] {
        e.wait(id, WAIT).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(*order.lock(), vec![blocker, high, mid1, mid2, low1]);

    // Aging: with a 1 ms aging interval, an old low-priority job outranks a newer high one.
    let e = engine_with(EngineConfig { aging_ms: 1, ..config() });
    let blocker = e.submit(faulty("!slow=20 blocker")).unwrap();
    // Running, not queued: otherwise, on a loaded machine, the blocker would still be ahead of `old` in the queue.
    wait_running(&e, blocker);
    let old = e.submit(Request { priority: -5, ..small("old") }).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let new = e.submit(Request { priority: 5, ..small("new") }).unwrap();
    assert_eq!(e.poll(old).unwrap().queue_position, 0);
    e.cancel(blocker).unwrap();
    e.wait(new, WAIT).unwrap();
}

#[test]
fn a_full_queue_pushes_back_with_a_retry_hint() {
    let e = engine_with(EngineConfig { queue_capacity: 2, ..config() });
    let blocker = e.submit(faulty("!slow=20 blocker")).unwrap();
    wait_running(&e, blocker);
    e.submit(small("one")).unwrap();
    e.submit(small("two")).unwrap();
    let err = e.submit(small("three")).unwrap_err();
    assert_eq!(err.code(), ErrorCode::QueueFull);
    assert!(err.retryable() && err.retry_after_ms().unwrap() > 0);
}

#[test]
fn callbacks_get_every_event_and_the_terminal_one_exactly_once_off_the_worker() {
    let e = engine();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let finals = Arc::new(AtomicUsize::new(0));
    let (s, f) = (seen.clone(), finals.clone());
    let dropped = Arc::new(AtomicUsize::new(0));
    struct OnDrop(Arc<AtomicUsize>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let guard = OnDrop(dropped.clone());
    let id = e
        .submit_with(
            Request { preview_every: Some(2), ..small("with callbacks") },
            Some(Arc::new(move |ev| {
                let _keep = &guard;
                let thread = std::thread::current().name().unwrap_or("").to_string();
                s.lock().push((ev.seq, ev.kind.name(), thread));
                if ev.kind.is_terminal() {
                    f.fetch_add(1, Ordering::SeqCst);
                }
            })),
        )
        .unwrap();
    e.wait(id, WAIT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while dropped.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(finals.load(Ordering::SeqCst), 1);
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the callback is released after its last event");
    let seen = seen.lock();
    assert_eq!(seen.len(), e.events(id, 0).unwrap().len());
    assert!(seen.iter().all(|(_, _, thread)| thread == "vgen-dispatcher"));
    assert_eq!(seen.iter().filter(|(_, k, _)| *k == "preview").count(), 2, "previews at steps 2 and 4");
}

#[test]
fn eta_is_learned_from_history() {
    let e = engine();
    let first = e.submit(small("eta one")).unwrap();
    assert_eq!(e.poll(first).unwrap().eta_confidence, vgen_core::engine::Confidence::Prior);
    e.wait(first, WAIT).unwrap();
    let second = e.submit(Request { seed: Some(2), ..small("eta one") }).unwrap();
    let s = e.poll(second).unwrap();
    assert_eq!(s.eta_confidence, vgen_core::engine::Confidence::Measured);
    let took = e.result(first).unwrap().metadata.timings_ms.values().sum::<f64>();
    let eta = s.eta_ms.unwrap() as f64;
    assert!(eta <= took * 3.0 + 5.0, "eta {eta} ms vs {took} ms measured");
    let bigger = e.submit(Request { steps: Some(8), seed: Some(3), ..small("eta one") }).unwrap();
    assert_eq!(e.poll(bigger).unwrap().eta_confidence, vgen_core::engine::Confidence::Scaled);
}

#[test]
fn metrics_count_outcomes_and_render_as_prometheus() {
    let e = engine();
    let ok = e.submit(small("ok")).unwrap();
    let bad = e.submit(faulty("!fail=invalid_argument bad")).unwrap();
    e.wait(ok, WAIT).unwrap();
    e.wait(bad, WAIT).unwrap();
    let m = e.metrics();
    assert_eq!((m.submitted, m.succeeded, m.failed), (2, 1, 1));
    let text = m.to_prometheus();
    assert!(text.contains("vgen_jobs_succeeded_total 1"));
    assert!(text.contains("vgen_stage_latency_ms_bucket{stage=\"generating\",le=\"+Inf\"} 1"));
}

#[test]
fn results_are_released_and_retention_evicts() {
    let e = engine_with(EngineConfig {
        retention: vgen_core::engine::Retention { max_jobs: 1, ttl_ms: 3_600_000 },
        ..config()
    });
    let a = e.submit(small("first")).unwrap();
    e.wait(a, WAIT).unwrap();
    assert!(e.release(a).is_ok());
    assert_eq!(e.poll(a).unwrap_err().code(), ErrorCode::NotFound);
    let b = e.submit(small("second")).unwrap();
    let c = e.submit(small("third")).unwrap();
    e.wait(b, WAIT).unwrap();
    e.wait(c, WAIT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while e.poll(b).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(e.poll(b).unwrap_err().code(), ErrorCode::NotFound, "the oldest beyond max_jobs is evicted");
    assert!(e.poll(c).is_ok());
    assert_eq!(e.result(c).unwrap().frames.num_frames, 5);
}

#[test]
fn result_of_an_unfinished_job_is_not_ready_and_wait_times_out() {
    let e = engine();
    let id = e.submit(faulty("!slow=20 slow")).unwrap();
    assert_eq!(e.result(id).unwrap_err().code(), ErrorCode::NotReady);
    assert_eq!(e.wait(id, Some(Duration::from_millis(10))).unwrap_err().code(), ErrorCode::Timeout);
    e.cancel(id).unwrap();
}

#[test]
fn shutdown_drains_then_cancels_and_drop_never_hangs() {
    let e = engine();
    let quick = e.submit(small("drains")).unwrap();
    let slow = e.submit(Request { steps: Some(200), ..faulty("!slow=50 forever") }).unwrap();
    let t = Instant::now();
    e.shutdown(Duration::from_millis(300));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(e.poll(quick).unwrap().state, JobState::Succeeded);
    assert_eq!(e.poll(slow).unwrap().state, JobState::Cancelled);
    assert_eq!(e.submit(small("late")).unwrap_err().code(), ErrorCode::ShuttingDown);
    drop(e);
    // Dropping waits out the drain timeout, then cancels: the job stops at its next step.
    let e = engine_with(EngineConfig { shutdown_timeout_ms: 100, ..config() });
    let id = e.submit(Request { steps: Some(200), ..faulty("!slow=50 forever") }).unwrap();
    wait_running(&e, id);
    let t = Instant::now();
    drop(e);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[test]
fn the_disk_cache_serves_a_new_engine_and_keeps_to_its_budget() {
    let dir = std::env::temp_dir().join(format!("vgen-disk-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache =
        vgen_core::engine::CacheConfig { disk_dir: Some(dir.clone()), disk_max_bytes: 40_000, ..Default::default() };
    let frames = {
        let e = engine_with(EngineConfig { cache: cache.clone(), ..config() });
        let id = e.submit(small("kept on disk")).unwrap();
        e.wait(id, WAIT).unwrap();
        e.result(id).unwrap().frames.clone()
    };
    let e = engine_with(EngineConfig { cache: cache.clone(), ..config() });
    let id = e.submit(small("kept on disk")).unwrap();
    let s = e.poll(id).unwrap();
    assert!(s.cache_hit && s.state == JobState::Succeeded, "a restarted engine hits the disk cache");
    assert_eq!(*e.result(id).unwrap().frames, *frames);
    // Each video is 5×32×32×3 = 15,360 bytes: a 40,000-byte budget keeps two.
    for i in 0..4 {
        let id = e.submit(Request { seed: Some(100 + i), ..small("fills the disk") }).unwrap();
        e.wait(id, WAIT).unwrap();
    }
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|f| f.as_ref().unwrap().path().extension().is_some_and(|x| x == "vgen"))
        .count();
    assert_eq!(files, 2);
    // A corrupt entry is a miss, not an error.
    for f in std::fs::read_dir(&dir).unwrap() {
        std::fs::write(f.unwrap().path(), b"garbage").unwrap();
    }
    let e = engine_with(EngineConfig { cache, ..config() });
    let id = e.submit(Request { seed: Some(103), ..small("fills the disk") }).unwrap();
    assert!(!e.wait(id, WAIT).unwrap().cache_hit);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_a_real_model_a_request_that_names_none_is_refused_saying_where_vgen_looked() {
    let empty = std::env::temp_dir().join(format!("vgen-no-models-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let (models, problems) = Models::discover_in(std::slice::from_ref(&empty));
    assert!(problems.is_empty());
    assert_eq!(models.default_name(), None, "a test model is never the default");
    let e = Engine::with_models(config(), models).unwrap();
    let err = e.submit(Request::new("a red circle moving right")).unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
    for part in [empty.to_str().unwrap(), "make install", "VGEN_MODELS", "testcard, noop, faulty are test models"] {
        assert!(err.message().contains(part), "{part:?} in {}", err.message());
    }
    // A test model named outright still runs, and a host may make one its default.
    let id = e.submit(Request { model: Some("testcard".into()), steps: Some(1), ..Request::new("card") }).unwrap();
    assert_eq!(e.wait(id, WAIT).unwrap().state, JobState::Succeeded);
    let with_default = EngineConfig { default_model: Some("noop".into()), ..config() };
    let e = Engine::with_models(with_default, Models::discover_in(std::slice::from_ref(&empty)).0).unwrap();
    assert!(e.submit(Request::new("x")).is_ok());
    let bad = EngineConfig { default_model: Some("nope".into()), ..config() };
    let err = Engine::with_models(bad, Models::builtin()).err().expect("an unknown default model is refused");
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert!(err.message().starts_with("default_model: unknown model \"nope\""), "{}", err.message());
}

#[test]
fn concurrent_submits_with_one_idempotency_key_make_one_job() {
    // Repeated, since a race shows only sometimes: each round, 8 threads submit the same keyed request at once.
    let e = Arc::new(engine_with(config()));
    for round in 0..20 {
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (e, barrier) = (e.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let r = Request {
                        idempotency_key: Some(format!("once-{round}")),
                        steps: Some(1),
                        seed: Some(round),
                        ..Request::new("a keyed request")
                    };
                    barrier.wait();
                    e.submit(r).unwrap()
                })
            })
            .collect();
        let ids: std::collections::BTreeSet<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(ids.len(), 1, "round {round}: one job for one key, got {ids:?}");
        let id = *ids.first().unwrap();
        assert_eq!(e.wait(id, WAIT).unwrap().state, JobState::Succeeded);
    }
    assert_eq!(e.metrics().submitted, 20, "no job was made beside the 20 keyed ones");
}

/// A host callback slower than the events: it still gets every state change and the terminal event once, in
/// order, and the latest progress, while the events waiting for it stay bounded (progress coalesced).
#[test]
fn a_slow_callback_gets_every_state_change_and_the_latest_progress() {
    let e = engine();
    let seen: Arc<parking_lot::Mutex<Vec<vgen_core::engine::Event>>> = Arc::default();
    let sink = seen.clone();
    e.on_event(Arc::new(move |ev| {
        std::thread::sleep(Duration::from_millis(20)); // far slower than the job's steps
        sink.lock().push(ev.clone());
    }));
    let id = e.submit(Request { steps: Some(200), ..faulty("!slow=1 many steps") }).unwrap();
    assert_eq!(e.wait(id, WAIT).unwrap().state, JobState::Succeeded);
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while !seen.lock().iter().any(|ev| ev.kind.is_terminal()) {
        assert!(std::time::Instant::now() < until, "the terminal event arrives");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(50));
    let seen = seen.lock();
    let log = e.events(id, 0).unwrap();
    let not_progress = |ev: &&vgen_core::engine::Event| !matches!(ev.kind, EventKind::Progress { .. });
    let delivered: Vec<u64> = seen.iter().filter(not_progress).map(|ev| ev.seq).collect();
    let logged: Vec<u64> = log.iter().filter(not_progress).map(|ev| ev.seq).collect();
    assert_eq!(delivered, logged, "every state change, stage and the terminal event, in order");
    assert_eq!(seen.iter().filter(|ev| ev.kind.is_terminal()).count(), 1);
    let progress = |ev: &&vgen_core::engine::Event| matches!(ev.kind, EventKind::Progress { .. });
    let delivered: Vec<u64> = seen.iter().filter(progress).map(|ev| ev.seq).collect();
    let logged: Vec<u64> = log.iter().filter(progress).map(|ev| ev.seq).collect();
    assert!(delivered.windows(2).all(|w| w[0] < w[1]) && delivered.iter().all(|s| logged.contains(s)), "in order");
    assert_eq!(delivered.last(), logged.last(), "the latest progress arrives");
    assert!(logged.len() >= 200, "{} progress events made", logged.len());
    assert!(delivered.len() < logged.len() * 3 / 4, "coalesced: {} of {} delivered", delivered.len(), logged.len());
}
