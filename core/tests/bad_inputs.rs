//! The bad-inputs table (`tests/bad_inputs/table.json`): every bad request, engine config and model folder in it
//! gives its error code and message, and the engine goes on serving the next good job.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vgen_core::engine::{EngineConfig, Request};
use vgen_core::models::{Models, wan::pipeline::WanModel};
use vgen_core::{Device, Engine, JobState};

const WAIT: Option<Duration> = Some(Duration::from_secs(60));

fn table() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_inputs/table.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vgen-bad-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Checks one error against a table row; returns a line describing the mismatch, if any.
fn mismatch(row: &Value, what: &str, got: Result<(), vgen_core::Error>) -> Option<String> {
    let code = row["code"].as_str().unwrap();
    let words = row["message"].as_str().unwrap();
    match got {
        Ok(()) => Some(format!("{what}: accepted, expected {code} ({words:?})")),
        Err(e) if e.code().name() != code || !e.message().contains(words) => {
            Some(format!("{what}: got {}: {:?}, expected {code} containing {words:?}", e.code().name(), e.message()))
        }
        Err(_) => None,
    }
}

fn good_job(e: &Engine, model: Option<&str>) {
    let r = Request {
        num_frames: Some(5),
        width: Some(32),
        height: Some(32),
        steps: Some(2),
        model: model.map(str::to_string),
        ..Request::new("a good job after a bad one")
    };
    let id = e.submit(r).expect("a good job is accepted");
    let s = e.wait(id, WAIT).unwrap();
    assert_eq!(s.state, JobState::Succeeded, "a good job after a bad input: {:?}", s.error);
}

#[test]
fn bad_requests_get_their_error_and_the_engine_serves_the_next_job() {
    let dir = scratch("requests");
    let e =
        Engine::with_models(EngineConfig { devices: vec![Device::Cpu], ..Default::default() }, common::test_models())
            .unwrap();
    let rows = table()["requests"].as_array().unwrap().clone();
    assert!(rows.len() >= 30);
    let mut failures = Vec::new();
    for row in &rows {
        let text = match (&row["json"], row["prompt_chars"].as_u64()) {
            (_, Some(n)) => serde_json::json!({ "prompt": "a".repeat(n as usize) }).to_string(),
            (Value::String(s), _) => s.clone(),
            (v, _) => v.to_string(),
        };
        let text = text.replace("$DIR", &dir.to_string_lossy());
        let got = Request::from_json(&text).and_then(|r| e.submit(r)).map(|_| ());
        failures.extend(mismatch(row, &text.chars().take(120).collect::<String>(), got));
        good_job(&e, None);
    }
    assert!(failures.is_empty(), "{} of {} rows:\n{}", failures.len(), rows.len(), failures.join("\n"));
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no bad request wrote a file");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_configs_get_their_error_and_a_good_one_still_starts() {
    let rows = table()["configs"].as_array().unwrap().clone();
    let mut failures = Vec::new();
    for row in &rows {
        let text = match &row["json"] {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        let got = EngineConfig::from_json(&text).and_then(Engine::new).map(|_| ());
        failures.extend(mismatch(row, &text, got));
    }
    assert!(failures.is_empty(), "{} of {} rows:\n{}", failures.len(), rows.len(), failures.join("\n"));
    let e = Engine::new(EngineConfig::from_json(r#"{"devices": ["cpu"]}"#).unwrap()).unwrap();
    good_job(&e, None);
}

/// Applies one step of damage to a model folder.
fn damage(dir: &Path, step: &[Value]) {
    let op = step[0].as_str().unwrap();
    let path = |i: usize| dir.join(step[i].as_str().unwrap());
    match op {
        "remove" => std::fs::remove_file(path(1)).unwrap(),
        "write" => std::fs::write(path(1), step[2].as_str().unwrap()).unwrap(),
        "rename" => std::fs::rename(path(1), path(2)).unwrap(),
        "truncate" => {
            std::fs::OpenOptions::new().write(true).open(path(1)).unwrap().set_len(step[2].as_u64().unwrap()).unwrap()
        }
        "header_length" => {
            let mut bytes = std::fs::read(path(1)).unwrap();
            bytes[..8].copy_from_slice(&step[2].as_u64().unwrap().to_le_bytes());
            std::fs::write(path(1), bytes).unwrap();
        }
        "safetensors" => {
            let header = step[2].as_str().unwrap().as_bytes();
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(header);
            std::fs::write(path(1), bytes).unwrap();
        }
        "set" => {
            let mut config: Value = serde_json::from_str(&std::fs::read_to_string(path(1)).unwrap()).unwrap();
            config[step[2].as_str().unwrap()] = step[3].clone();
            std::fs::write(path(1), config.to_string()).unwrap();
        }
        "symlink" => std::os::unix::fs::symlink(step[2].as_str().unwrap(), path(1)).unwrap(),
        "shards" | "duplicate_shards" => {
            let (component, stem) = (path(1), step[2].as_str().unwrap());
            let single = component.join(format!("{stem}.safetensors"));
            let map = if op == "shards" {
                step[3].clone()
            } else {
                std::fs::copy(&single, component.join("a.safetensors")).unwrap();
                std::fs::copy(&single, component.join("b.safetensors")).unwrap();
                serde_json::json!({"first": "a.safetensors", "second": "b.safetensors"})
            };
            std::fs::remove_file(single).unwrap();
            let index = serde_json::json!({ "weight_map": map });
            std::fs::write(component.join(format!("{stem}.safetensors.index.json")), index.to_string()).unwrap();
        }
        "retype" => {
            // Every tensor's dtype becomes another of the same width; the header keeps its length (padded with
            // spaces, as the format allows), so only the dtype is wrong.
            let mut bytes = std::fs::read(path(1)).unwrap();
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            let mut header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
            for (name, entry) in header.iter_mut() {
                if name != "__metadata__" {
                    entry["dtype"] = step[2].clone();
                }
            }
            let mut text = serde_json::to_vec(&header).unwrap();
            assert!(text.len() <= n, "the retyped header must not grow");
            text.resize(n, b' ');
            bytes[8..8 + n].copy_from_slice(&text);
            std::fs::write(path(1), bytes).unwrap();
        }
        other => panic!("unknown damage {other:?}"),
    }
}

#[test]
fn bad_model_folders_are_refused_and_a_good_model_beside_them_still_serves() {
    let root = scratch("models");
    let (good_root, bad_root) = (root.join("good"), root.join("bad"));
    common::tiny_wan(&good_root.join("tiny-wan"), "tiny-wan", 5);
    let rows = table()["model_folders"].as_array().unwrap().clone();
    let mut failures = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let _ = std::fs::remove_dir_all(&bad_root);
        let bad = bad_root.join("broken");
        common::tiny_wan(&bad, "broken", 5);
        for step in row["steps"].as_array().unwrap() {
            damage(&bad, step.as_array().unwrap());
        }
        let what = format!("row {i} {}", row["steps"]);
        // Opening reads configs and headers; loading reads the weights. The error may come from either.
        let got = WanModel::open(&bad).and_then(|m| m.components(Device::Cpu).map(|_| ()));
        failures.extend(mismatch(row, &what, got));

        // A host that discovers both folders keeps the good model whatever the bad one holds, and a job sent to
        // the bad one (if it opened at all) fails with the same error instead of taking the engine down.
        let (models, _problems) = Models::discover_in(&[bad_root.clone(), good_root.clone()]);
        let has_bad = models.names().any(|n| n == "broken");
        let e = Engine::with_models(EngineConfig { devices: vec![Device::Cpu], ..Default::default() }, models).unwrap();
        if has_bad {
            let r = Request { model: Some("broken".into()), ..Request::new("x") };
            let id = e.submit(r).unwrap();
            let s = e.wait(id, WAIT).unwrap();
            let got = match s.state {
                JobState::Succeeded => Ok(()),
                _ => Err(s.error.expect("a failed job has an error").to_error()),
            };
            failures.extend(mismatch(row, &format!("{what} (as a job)"), got));
        }
        good_job(&e, Some("tiny-wan"));
    }
    assert!(failures.is_empty(), "{} of {} rows:\n{}", failures.len(), rows.len(), failures.join("\n"));
    let _ = std::fs::remove_dir_all(&root);
}
