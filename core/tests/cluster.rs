//! The Redis backend with a real `redis-server` (Debian's `redis-server`; `.ci/run` installs it): engines on one
//! queue, a worker killed mid-job, a Redis restart, cancel across nodes, backpressure and idempotency.
#![cfg(feature = "redis")]

#[path = "common/redis_server.rs"]
mod redis_server;

use redis_server::{RedisCluster, RedisServer as Redis, Reply};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vgen_core::engine::{Backend, EngineConfig, EventKind, RedisConfig, Request, Role};
use vgen_core::{Device, Engine, ErrorCode, JobState};

const WAIT: Option<Duration> = Some(Duration::from_secs(60));

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vgen-cluster-{tag}-{}-{}", std::process::id(), rand_u32()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_u32() -> u32 {
    static N: AtomicUsize = AtomicUsize::new(0);
    (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos())
        ^ N.fetch_add(1, Ordering::Relaxed) as u32
}

fn redis_config(redis: &Redis, role: Role, results: &Path) -> RedisConfig {
    redis_config_at(redis.url(), role, results)
}

fn redis_config_at(url: String, role: Role, results: &Path) -> RedisConfig {
    RedisConfig {
        url,
        namespace: "test".into(),
        role,
        results_dir: results.to_path_buf(),
        lease_ms: 1_000,
        cancel_check_ms: 20,
        ..RedisConfig::default()
    }
}

fn node(redis: &Redis, role: Role, results: &Path) -> Engine {
    node_with(redis, role, results, EngineConfig::default())
}

fn node_with(redis: &Redis, role: Role, results: &Path, base: EngineConfig) -> Engine {
    engine_on(redis_config(redis, role, results), base)
}

fn engine_on(redis: RedisConfig, base: EngineConfig) -> Engine {
    let config = EngineConfig {
        devices: vec![Device::Cpu],
        shutdown_timeout_ms: 2_000,
        backend: Backend::Redis(redis),
        // The test card is these tests' default; an engine never picks a test model by itself.
        default_model: base.default_model.clone().or(Some("testcard".into())),
        ..base
    };
    Engine::new(config).unwrap()
}

/// A `vgen worker` process, killed when dropped: a test that fails leaves no worker behind (holding its output
/// pipe open, or taking the next test's jobs).
struct WorkerProcess(std::process::Child);

impl std::ops::Deref for WorkerProcess {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for WorkerProcess {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `vgen worker` in a process of its own, with this engine configuration.
fn worker_process(config: serde_json::Value) -> WorkerProcess {
    let path = scratch("worker-config").join("worker.json");
    std::fs::write(&path, config.to_string()).unwrap();
    Command::new(env!("CARGO_BIN_EXE_vgen"))
        .args(["worker", "--config"])
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
        .map(WorkerProcess)
        .unwrap()
}

/// Waits until the job has finished `steps` denoising steps (it is running, on some worker).
fn wait_for_step(engine: &Engine, id: vgen_core::JobId, steps: u32) {
    let until = Instant::now() + Duration::from_secs(30);
    while engine.poll(id).unwrap().step < steps {
        assert!(Instant::now() < until, "{id} never reached step {steps}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn small(prompt: &str, seed: u64) -> Request {
    Request {
        num_frames: Some(5),
        width: Some(32),
        height: Some(32),
        steps: Some(4),
        seed: Some(seed),
        ..Request::new(prompt)
    }
}

fn slow(prompt: &str, step_ms: u64, steps: u32, seed: u64) -> Request {
    Request { model: Some("faulty".into()), steps: Some(steps), ..small(&format!("!slow={step_ms} {prompt}"), seed) }
}

/// Every event of the job, read back from Redis: numbered 1.. with no gap, and exactly one terminal event, last.
fn assert_one_end(engine: &Engine, id: vgen_core::JobId) {
    let events = engine.events(id, 0).unwrap();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "{id}: events numbered without gaps: {events:?}");
    }
    let ends = events.iter().filter(|e| e.kind.is_terminal()).count();
    assert_eq!(ends, 1, "{id} ended {ends} times: {events:?}");
    assert!(events.last().unwrap().kind.is_terminal());
}

#[test]
fn an_engine_reads_a_result_from_the_store_once() {
    let redis = Redis::start("once");
    let results = scratch("once-results");
    let api = node(&redis, Role::Submitter, &results);
    let worker = node(&redis, Role::Worker, &results);
    let id = api.submit(small("read once", 3)).unwrap();
    assert_eq!(api.wait(id, WAIT).unwrap().state, JobState::Succeeded);
    let first = api.result(id).unwrap();
    // With the file gone from the store, this engine still has the video it read; another engine reads the store.
    for file in std::fs::read_dir(&results).unwrap() {
        std::fs::remove_file(file.unwrap().path()).unwrap();
    }
    assert_eq!(api.result(id).unwrap(), first, "the second read comes from memory");
    assert_eq!(worker.result(id).unwrap_err().code(), ErrorCode::NotFound, "the store no longer has it");
    api.release(id).unwrap();
    assert!(api.result(id).is_err(), "release forgets it");
}

#[test]
fn engines_on_one_queue_run_every_job_once_and_any_node_reads_it() {
    let redis = Redis::start("many");
    let results = scratch("many-results");
    let api = node(&redis, Role::Submitter, &results);
    let workers = [node(&redis, Role::Worker, &results), node(&redis, Role::Worker, &results)];
    let ids: Vec<_> = (0..16)
        .map(|i| api.submit(Request { priority: (i % 3) as i32, ..small(&format!("job {i}"), i) }).unwrap())
        .collect();
    for &id in &ids {
        let status = api.wait(id, WAIT).unwrap();
        assert_eq!(status.state, JobState::Succeeded, "{status:?}");
        let video = workers[1].result(id).unwrap();
        assert_eq!((video.frames.num_frames, video.frames.height, video.frames.width), (5, 32, 32));
        assert_eq!(video, api.result(id).unwrap(), "every node reads the same result");
        assert_one_end(&api, id);
        assert_eq!(workers[0].poll(id).unwrap().state, JobState::Succeeded);
        let kinds: Vec<&str> = api.events(id, 0).unwrap().iter().map(|e| e.kind.name()).collect();
        assert!(kinds.contains(&"started") && kinds.contains(&"progress"), "{kinds:?}");
    }
    let m = api.cluster_metrics().unwrap().unwrap();
    assert_eq!(m.workers_alive, 2, "{m:?}");
    assert_eq!(m.queued_by_priority.iter().map(|p| p.1).sum::<u64>(), 0, "{m:?}");
    assert_eq!(m.running, 0);
}

#[test]
fn callbacks_on_the_submitting_node_see_every_event_and_one_end() {
    let redis = Redis::start("callbacks");
    let results = scratch("callbacks-results");
    let api = node(&redis, Role::Submitter, &results);
    let _worker = node(&redis, Role::Worker, &results);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let id = api
        .submit_with(
            small("callback", 3),
            Some(Arc::new(move |e: &vgen_core::engine::Event| s.lock().unwrap().push(e.clone()))),
        )
        .unwrap();
    api.wait(id, WAIT).unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while !seen.lock().unwrap().iter().any(|e| e.kind.is_terminal()) {
        assert!(Instant::now() < until, "no terminal callback");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    let seen = seen.lock().unwrap();
    let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "in order, none missing or twice");
    assert_eq!(seen.iter().filter(|e| e.kind.is_terminal()).count(), 1);
}

#[test]
fn a_cancel_through_any_node_stops_the_job_on_its_worker() {
    let redis = Redis::start("cancel");
    let results = scratch("cancel-results");
    let api = node(&redis, Role::Submitter, &results);
    let worker = node(&redis, Role::Worker, &results);
    let id = api.submit(slow("long", 50, 200, 1)).unwrap();
    wait_for_step(&api, id, 2);
    assert!(api.cancel(id).unwrap());
    assert_eq!(api.poll(id).unwrap().state, JobState::Cancelled, "cancel ends the job at once");
    assert!(!api.cancel(id).unwrap(), "a second cancel is harmless");
    // The worker's only slot is free again within a step or two: the next job runs at once.
    let started = Instant::now();
    let next = api.submit(small("next", 2)).unwrap();
    assert_eq!(api.wait(next, WAIT).unwrap().state, JobState::Succeeded);
    assert!(started.elapsed() < Duration::from_secs(5), "the cancelled run kept the worker busy");
    assert_one_end(&api, id);
    let progress = api.events(id, 0).unwrap().iter().filter(|e| matches!(e.kind, EventKind::Progress { .. })).count();
    assert!(progress < 100, "the run stopped early ({progress} steps)");
    drop(worker);
}

#[test]
fn a_worker_killed_mid_job_loses_nothing_another_worker_finishes_it_once() {
    let redis = Redis::start("kill");
    let results = scratch("kill-results");
    kill_a_worker_mid_job(&|role| redis_config(&redis, role, &results));
}

/// A worker process on `config(Role::Worker)` is SIGKILLed three steps into a job: another worker reclaims it when
/// the lease runs out and finishes it, the job ends once, and it ran (started) twice.
fn kill_a_worker_mid_job(config: &dyn Fn(Role) -> RedisConfig) {
    let api = engine_on(config(Role::Submitter), EngineConfig::default());
    let mut doomed = worker_process(
        serde_json::json!({"devices": ["cpu"], "default_model": "testcard", "backend": {"redis": config(Role::Worker)}}),
    );
    let id = api.submit(slow("doomed", 40, 40, 5)).unwrap();
    wait_for_step(&api, id, 3);
    doomed.kill().unwrap(); // SIGKILL: no goodbye, the lease simply stops being renewed
    doomed.wait().unwrap();
    let rescuer = engine_on(config(Role::Worker), EngineConfig::default());
    let status = api.wait(id, WAIT).unwrap();
    assert_eq!(status.state, JobState::Succeeded, "{status:?}");
    assert_eq!(api.result(id).unwrap().frames.num_frames, 5);
    assert_one_end(&api, id);
    let starts = api.events(id, 0).unwrap().iter().filter(|e| matches!(e.kind, EventKind::Started { .. })).count();
    assert_eq!(starts, 2, "it ran twice (at least once), and ended once");
    drop(rescuer);
}

#[test]
fn on_a_redis_cluster_a_worker_killed_mid_job_loses_nothing_and_every_key_is_in_one_slot() {
    let cluster = RedisCluster::start("cluster");
    let results = scratch("cluster-results");
    let config = |role| RedisConfig { cluster: true, ..redis_config_at(cluster.url(), role, &results) };
    kill_a_worker_mid_job(&config);
    // The hash tag put every key of the namespace on the node that holds its slot, and none anywhere else.
    let holder = cluster.holder("test").port;
    for node in &cluster.nodes {
        let Reply::Int(keys) = node.call(&["DBSIZE"]) else { panic!("DBSIZE") };
        if node.port == holder {
            assert!(keys >= 4, "the namespace's keys are on the node holding {{test}}: {keys}");
        } else {
            assert_eq!(keys, 0, "no key of the namespace on another node");
        }
    }
}

#[test]
fn an_idle_worker_blocks_in_redis_instead_of_polling_it() {
    let redis = Redis::start("idle");
    let results = scratch("idle-results");
    let worker = node(&redis, Role::Worker, &results);
    std::thread::sleep(Duration::from_millis(300)); // started, past its first reads
    let calls = |name: &str| -> i64 {
        let stats = redis.call(&["INFO", "commandstats"]);
        let line = stats.text().lines().find(|l| l.starts_with(&format!("cmdstat_{name}:"))).map(str::to_owned);
        line.and_then(|l| l.split("calls=").nth(1)?.split(',').next()?.parse().ok()).unwrap_or(0)
    };
    let before = calls("xreadgroup") + calls("zrevrange");
    std::thread::sleep(Duration::from_secs(2));
    let during = calls("xreadgroup") + calls("zrevrange") - before;
    // A blocking read and a read of the priorities each time it wakes, which is at least every quarter lease
    // (250 ms here) for the reclaim, which reads the priorities too: about 24 in 2 s, where polling every 10 ms
    // made over 400.
    assert!(during <= 40, "an idle worker made {during} queue reads in 2 s");
    // It still takes a job at once: the blocking read returns as the job arrives.
    let api = node(&redis, Role::Submitter, &results);
    let started = Instant::now();
    let id = api.submit(small("wakes the worker", 1)).unwrap();
    let status = api.wait(id, WAIT).unwrap();
    assert_eq!(status.state, JobState::Succeeded);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // Its priority had no stream when the worker last read them: taken within a second (the blocking read's bound).
    let waited = status.started_at_ms.unwrap() - status.submitted_at_ms;
    assert!(waited < 1_500, "the first job at a new priority waited {waited} ms to start");
    // And it stops at once, without waiting out its blocking read.
    let stopping = Instant::now();
    drop(worker);
    assert!(stopping.elapsed() < Duration::from_millis(900), "stop took {:?}", stopping.elapsed());
}

#[test]
fn jobs_queued_across_a_redis_restart_all_complete() {
    let mut redis = Redis::start("restart");
    let results = scratch("restart-results");
    let api = node(&redis, Role::Submitter, &results);
    let ids: Vec<_> = (0..6).map(|i| api.submit(small(&format!("survivor {i}"), i)).unwrap()).collect();
    redis.restart();
    // While Redis is down or loading, a submit says "unavailable, retry", never crashes or hangs.
    let worker = node(&redis, Role::Worker, &results);
    for id in ids {
        let status = api.wait(id, WAIT).unwrap();
        assert_eq!(status.state, JobState::Succeeded, "{status:?}");
        assert_one_end(&api, id);
    }
    drop(worker);
}

#[test]
fn a_submit_while_redis_is_down_is_unavailable_and_retryable() {
    let mut redis = Redis::start("down");
    let results = scratch("down-results");
    let api = node(&redis, Role::Submitter, &results);
    redis.shutdown();
    let e = api.submit(small("nowhere", 1)).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    assert!(e.retryable() && e.retry_after_ms().is_some(), "{e:?}");
    redis.launch();
    let _worker = node(&redis, Role::Worker, &results);
    let id = api.submit(small("back", 1)).unwrap();
    assert_eq!(api.wait(id, WAIT).unwrap().state, JobState::Succeeded);
}

#[test]
fn the_shared_queue_is_bounded_and_idempotency_holds_across_nodes() {
    let redis = Redis::start("bounds");
    let results = scratch("bounds-results");
    let a = node_with(&redis, Role::Submitter, &results, EngineConfig { queue_capacity: 2, ..EngineConfig::default() });
    let b = node_with(&redis, Role::Submitter, &results, EngineConfig { queue_capacity: 2, ..EngineConfig::default() });
    let keyed = Request { idempotency_key: Some("order-7".into()), ..small("keyed", 1) };
    let first = a.submit(keyed.clone()).unwrap();
    assert_eq!(b.submit(keyed.clone()).unwrap(), first, "the same key on another node is the same job");
    let e = b.submit(Request { prompt: "other".into(), ..keyed }).unwrap_err();
    assert_eq!(e.code(), ErrorCode::AlreadyExists, "{e}");
    b.submit(small("second", 2)).unwrap();
    let e = a.submit(small("third", 3)).unwrap_err();
    assert_eq!(e.code(), ErrorCode::QueueFull, "{e}");
    assert!(e.retry_after_ms().is_some());
    assert_eq!(a.cluster_metrics().unwrap().unwrap().queued_by_priority.iter().map(|p| p.1).sum::<u64>(), 2);
}

#[test]
fn identical_jobs_on_different_nodes_are_generated_once() {
    let redis = Redis::start("flight");
    let results = scratch("flight-results");
    let a = node(&redis, Role::Both, &results);
    let b = node(&redis, Role::Both, &results);
    let request = slow("same", 20, 10, 42);
    let x = a.submit(request.clone()).unwrap();
    let y = b.submit(request).unwrap();
    assert_ne!(x, y);
    for id in [x, y] {
        assert_eq!(a.wait(id, WAIT).unwrap().state, JobState::Succeeded);
    }
    assert_eq!(a.result(x).unwrap().frames, b.result(y).unwrap().frames);
    let hits = [x, y].iter().filter(|id| a.poll(**id).unwrap().cache_hit).count();
    assert_eq!(hits, 1, "one generation; the other job got its video");
}

#[test]
fn a_worker_stopped_with_sigterm_gives_its_job_back_and_another_finishes_it() {
    let redis = Redis::start("sigterm");
    let results = scratch("sigterm-results");
    let api = node(&redis, Role::Submitter, &results);
    let rc = RedisConfig { lease_ms: 60_000, ..redis_config(&redis, Role::Worker, &results) };
    let mut leaving = worker_process(
        serde_json::json!({"devices": ["cpu"], "default_model": "testcard", "shutdown_timeout_ms": 100, "backend": {"redis": rc.clone()}}),
    );
    let id = api.submit(slow("handed over", 40, 40, 6)).unwrap();
    wait_for_step(&api, id, 2);
    let term = Command::new("kill").args(["-TERM", &leaving.id().to_string()]).status().unwrap();
    assert!(term.success());
    assert!(leaving.wait().unwrap().success(), "a drained worker exits cleanly");
    // The lease is a minute long: only the hand-over lets another worker take the job this soon.
    let started = Instant::now();
    let config = EngineConfig { devices: vec![Device::Cpu], backend: Backend::Redis(rc), ..EngineConfig::default() };
    let next = Engine::new(config).unwrap();
    assert_eq!(api.wait(id, WAIT).unwrap().state, JobState::Succeeded);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_one_end(&api, id);
    drop(next);
}

/// The submitting engine answers `poll` and `latest_preview` for its jobs from the state it mirrors, without a
/// round trip: they keep answering, at once, while Redis is down (a game calls them every frame); `events`, which
/// reads the log in Redis, fails meanwhile. After `wait` sees the end, `poll` says so too.
#[test]
fn poll_and_previews_of_jobs_submitted_here_are_served_from_the_mirror() {
    let mut redis = Redis::start("mirror");
    let results = scratch("mirror");
    let worker = node(&redis, Role::Worker, &results);
    let submitter = node(&redis, Role::Submitter, &results);
    let id = submitter.submit(Request { preview_every: Some(1), ..slow("mirrored", 20, 60, 1) }).unwrap();
    wait_for_step(&submitter, id, 2);
    redis.shutdown();
    let start = Instant::now();
    for _ in 0..1000 {
        let s = submitter.poll(id).expect("poll answers from the mirror");
        assert!(s.step >= 2);
        submitter.latest_preview(id).expect("the preview answers from the mirror");
        submitter.peek(id, |s, _, _| s.step).unwrap();
    }
    assert!(start.elapsed() < Duration::from_millis(500), "no round trips: {:?} for 3,000 calls", start.elapsed());
    assert!(submitter.events(id, 0).is_err(), "events read Redis, which is down");
    redis.restart();
    let end = submitter.wait(id, Some(Duration::from_secs(60))).unwrap();
    assert!(end.state.is_terminal());
    assert_eq!(submitter.poll(id).unwrap().state, end.state, "poll agrees with wait at once");
    drop(worker);
}
