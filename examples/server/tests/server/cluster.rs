//! The service on Redis: one API process and two worker processes (the built `vgen-server`, `listen: null` for the
//! workers) on a real `redis-server`. 50 jobs go through HTTP while one worker is killed with SIGKILL mid-job:
//! every job completes exactly once, with its video, and the job the dead worker held runs again on the other.
//! A cancel through the API node stops the job on its worker.

use super::binary::{signal, sigterm, spawn};
use super::common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};
use vgen_core::engine::{EngineConfig, EventKind};
use vgen_core::{Engine, JobId};

#[path = "../../../../core/tests/common/redis_server.rs"]
mod redis_server;
use redis_server::RedisServer;

fn engine(redis: &RedisServer, role: &str, results: &Path) -> Value {
    json!({"devices": ["cpu"], "default_model": "testcard", "shutdown_timeout_ms": 200, "backend": {"redis": {
        "url": redis.url(), "namespace": "service", "role": role, "results_dir": results,
        "lease_ms": 1000, "cancel_check_ms": 20}}})
}

/// An engine in this process on the same cluster, to read what the service cannot show: every job's event log.
fn observer(redis: &RedisServer, results: &Path) -> Engine {
    Engine::new(EngineConfig::from_json(&engine(redis, "submitter", results).to_string()).unwrap()).unwrap()
}

/// The service's API process (a submitter) and `workers` worker-only processes on this Redis; returns the API's
/// base URL, the processes (the API first) and the shared results folder.
fn service(redis: &RedisServer, workers: usize) -> (String, Vec<std::process::Child>, std::path::PathBuf) {
    let results = results_dir();
    let api_config = config_json(json!({"results_dir": results, "engine": engine(redis, "submitter", &results)}));
    let (api, line) = spawn(&api_config);
    let base = line.trim_start_matches("vgen-server listening on ").to_string();
    let mut processes = vec![api];
    for n in 0..workers {
        let dir = results.join(format!("worker-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config =
            json!({"listen": null, "tokens": [], "results_dir": dir, "engine": engine(redis, "worker", &results)});
        processes.push(spawn(&config).0);
    }
    (base, processes, results)
}

/// Stops the processes still running with SIGTERM; each must exit cleanly.
fn stop(processes: &mut [std::process::Child]) {
    for p in processes.iter() {
        sigterm(p);
    }
    for p in processes {
        assert!(p.wait().unwrap().success());
    }
}

/// The stream of priority-0 jobs, which the tests' jobs are.
const STREAM: &str = "{service}:queue:0";

/// Freezes `worker` (SIGSTOP) at a moment it holds the lease of a job that has started and not finished, and
/// returns that job. A frozen process can neither finish the job nor give it back, so killing it now abandons
/// the job mid-run, whatever the timing: the lease (the stream entry's owner in the consumer group) says it
/// holds the job, and the job's event log says the run started and has not ended.
fn freeze_mid_job(redis: &RedisServer, observer: &Engine, worker: &Child) -> JobId {
    let owner = format!("-{}-", worker.id()); // consumer names are host-pid-random
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        signal(worker, "STOP");
        for entry in redis.call(&["XPENDING", STREAM, "workers", "-", "+", "100"]).items() {
            let [entry_id, consumer, ..] = entry.items() else { panic!("XPENDING entry {entry:?}") };
            if !consumer.text().contains(&owner) {
                continue;
            }
            let range = redis.call(&["XRANGE", STREAM, entry_id.text(), entry_id.text()]);
            let Some(read) = range.items().first() else { continue };
            let fields = read.items()[1].items();
            assert_eq!(fields[0].text(), "job", "{fields:?}");
            let job = JobId(fields[1].text().parse().unwrap());
            let events = observer.events(job, 0).unwrap();
            let started = events.iter().any(|e| matches!(e.kind, EventKind::Started { .. }));
            if started && !events.iter().any(|e| e.kind.is_terminal()) {
                return job;
            }
        }
        signal(worker, "CONT");
        assert!(Instant::now() < until, "the worker never held a running job");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn job_id(id: &str) -> JobId {
    JobId(id.trim_start_matches("job-").parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_node_and_two_workers_finish_50_jobs_once_each_though_a_worker_is_killed() {
    let redis = RedisServer::start("service");
    let (base, mut processes, results) = service(&redis, 2);
    let client = Client::at(&base, ALPHA);
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(client.submit(slow_job(i, 4, 40)).await);
    }
    // Kill one worker in the middle of a job: no goodbye, its lease just stops being renewed.
    let observer = observer(&redis, &results);
    let mut killed = processes.remove(1);
    let abandoned = freeze_mid_job(&redis, &observer, &killed);
    killed.kill().unwrap();
    killed.wait().unwrap();
    for id in &ids {
        let status = client.finish(id).await;
        assert_eq!(status["status"], "completed", "{status}");
        let video = client.get(&format!("/jobs/{id}/video")).await;
        assert_eq!(video.status, 200);
        assert_mp4(&video.bytes);
    }
    for id in &ids {
        let events = observer.events(job_id(id), 0).unwrap();
        assert_eq!(events.iter().filter(|e| e.kind.is_terminal()).count(), 1, "{id} ended once: {events:?}");
    }
    let events = observer.events(abandoned, 0).unwrap();
    let starts = events.iter().filter(|e| matches!(e.kind, EventKind::Started { .. })).count();
    assert!(starts >= 2, "the killed worker's job ran again elsewhere: {events:?}");
    stop(&mut processes);
    let _ = std::fs::remove_dir_all(&results);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_through_the_api_node_stops_the_job_on_its_worker() {
    let redis = RedisServer::start("service-cancel");
    let (base, mut processes, results) = service(&redis, 1);
    let client = Client::at(&base, ALPHA);
    let id = client.submit(slow_job(1, 200, 50)).await;
    client.wait_for(&id, "running").await;
    let r = client.post(&format!("/jobs/{id}/cancel"), json!({})).await;
    assert!(r.status < 300, "{}", String::from_utf8_lossy(&r.bytes));
    assert_eq!(client.get(&format!("/jobs/{id}")).await.json()["status"], "cancelled");
    // The worker stops at its next step boundary: its only slot runs the next job at once.
    let next = client.submit(small_job("next", 2)).await;
    let started = Instant::now();
    assert_eq!(client.finish(&next).await["status"], "completed");
    assert!(started.elapsed() < Duration::from_secs(5));
    let observer = observer(&redis, &results);
    let steps = observer
        .events(job_id(&id), 0)
        .unwrap()
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Progress { .. }))
        .count();
    assert!(steps < 100, "the run stopped early ({steps} of 200 steps)");
    stop(&mut processes);
    let _ = std::fs::remove_dir_all(&results);
}
