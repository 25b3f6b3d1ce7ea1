//! The `vgen-server` program: configuration errors, SIGTERM in HTTP mode (no new jobs, status still served,
//! exit 0) and the worker-only mode (`listen: null`).

use super::common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts the binary with this configuration (written into its results folder); returns it and its first line
/// on stdout.
pub(super) fn spawn(config: &Value) -> (Child, String) {
    let path = PathBuf::from(config["results_dir"].as_str().unwrap()).join("server.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vgen-server"))
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (child, line.trim().to_string())
}

pub(super) fn sigterm(child: &Child) {
    signal(child, "TERM");
}

/// Sends the named signal (`TERM`, `STOP`, `CONT`, ...) to the process.
pub(super) fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().unwrap().success();
    assert!(ok, "kill -{name} {}", child.id());
}

/// Waits for the process to exit; returns its exit code.
fn exit_code(child: &mut Child, limit: Duration) -> i32 {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().expect("exited, not killed by a signal");
        }
        if Instant::now() > until {
            child.kill().unwrap();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_bad_configuration_is_refused_with_the_field_named() {
    let mut config = config_json(json!({}));
    config["engine"]["queue_capacty"] = json!(3);
    let dir = PathBuf::from(config["results_dir"].as_str().unwrap());
    let path = dir.join("bad.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vgen-server")).arg("--config").arg(&path).output().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("queue_capacty"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_vgen-server")).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "no arguments: usage");
}

#[tokio::test]
async fn sigterm_stops_taking_jobs_lets_clients_read_status_then_exits_cleanly() {
    let engine = json!({"devices": ["cpu"], "default_model": "testcard", "shutdown_timeout_ms": 3000});
    let config = config_json(json!({"engine": engine}));
    let (mut child, line) = spawn(&config);
    let url = line.strip_prefix("vgen-server listening on ").unwrap_or_else(|| panic!("{line}")).to_string();
    let alpha = Client::at(&url, ALPHA);
    let done = alpha.submit(small_job("before", 1)).await;
    assert_eq!(alpha.finish(&done).await["status"], "completed");
    let slow = alpha.submit(slow_job(2, 200, 100)).await;
    alpha.wait_for(&slow, "running").await;

    sigterm(&child);
    // While the engine drains, new work is refused and status is still served.
    let until = Instant::now() + Duration::from_secs(2);
    let refused = loop {
        let r = alpha.post("/generate", small_job("after", 3)).await;
        if r.status == 503 || Instant::now() > until {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"]["code"], "shutting_down");
    assert_eq!(alpha.get(&format!("/jobs/{done}")).await.json()["status"], "completed");
    let code = tokio::task::spawn_blocking(move || exit_code(&mut child, Duration::from_secs(20))).await.unwrap();
    assert_eq!(code, 0);
    std::fs::remove_dir_all(config["results_dir"].as_str().unwrap()).unwrap();
}

#[test]
fn a_worker_only_process_runs_until_sigterm() {
    let mut config = config_json(json!({"listen": null}));
    config["tokens"] = json!([]);
    let (mut child, line) = spawn(&config);
    assert!(line.starts_with("vgen-server: worker only"), "{line}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(child.try_wait().unwrap().is_none(), "it keeps running");
    sigterm(&child);
    assert_eq!(exit_code(&mut child, Duration::from_secs(20)), 0);
    std::fs::remove_dir_all(config["results_dir"].as_str().unwrap()).unwrap();
}
