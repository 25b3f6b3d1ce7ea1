//! The service on Redis: one API process and two worker processes (the built `vgen-server`, `listen: null` for the
//! workers) on a real `redis-server`. 50 jobs go through HTTP while one worker is killed with SIGKILL mid-job:
//! every job completes exactly once, with its video. A cancel through the API node stops the job on its worker.

use super::binary::{sigterm, spawn};
use super::common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use vgen_core::engine::{EngineConfig, EventKind};
use vgen_core::{Engine, JobId};

#[path = "../../../../core/tests/common/redis_server.rs"]
mod redis_server;
use redis_server::RedisServer;

fn engine(redis: &RedisServer, role: &str, results: &Path) -> Value {
    json!({"devices": ["cpu"], "shutdown_timeout_ms": 200, "backend": {"redis": {
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
        let config = json!({"listen": null, "tokens": [], "results_dir": dir, "engine": engine(redis, "worker", &results)});
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
    // Kill one worker while it is in the middle of a job: no goodbye, its lease just stops being renewed.
    let until = Instant::now() + Duration::from_secs(30);
    while client.get(&format!("/jobs/{}", ids[2])).await.json()["status"] == "pending" {
        assert!(Instant::now() < until, "no job started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut killed = processes.remove(1);
    killed.kill().unwrap();
    killed.wait().unwrap();
    for id in &ids {
        let status = client.finish(id).await;
        assert_eq!(status["status"], "completed", "{status}");
        let video = client.get(&format!("/jobs/{id}/video")).await;
        assert_eq!(video.status, 200);
        assert_mp4(&video.bytes);
    }
    let observer = observer(&redis, &results);
    let mut reruns = 0;
    for id in &ids {
        let events = observer.events(job_id(id), 0).unwrap();
        assert_eq!(events.iter().filter(|e| e.kind.is_terminal()).count(), 1, "{id} ended once: {events:?}");
        reruns += events.iter().filter(|e| matches!(e.kind, EventKind::Started { .. })).count() - 1;
    }
    assert!(reruns >= 1, "the killed worker's job ran again elsewhere");
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
    let steps = observer.events(job_id(&id), 0).unwrap().iter().filter(|e| matches!(e.kind, EventKind::Progress { .. })).count();
    assert!(steps < 100, "the run stopped early ({steps} of 200 steps)");
    stop(&mut processes);
    let _ = std::fs::remove_dir_all(&results);
}
