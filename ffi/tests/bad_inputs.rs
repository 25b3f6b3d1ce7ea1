//! The C calls of the bad-inputs table (`core/tests/bad_inputs/table.json`), made through the exported functions
//! as a C host makes them: each gives its status and message, writes no output, and the engine goes on serving.

use serde_json::Value;
use std::ffi::{CStr, CString, c_char};
use std::ptr;
use vgen::*;

fn table() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/bad_inputs/table.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A row's string argument: text, raw bytes, or NULL (kept alive by the returned owner).
fn argument(row: &Value, name: &str) -> Option<Vec<u8>> {
    if let Some(bytes) = row.get(format!("{name}_bytes")).and_then(Value::as_array) {
        return Some(bytes.iter().map(|b| b.as_u64().unwrap() as u8).chain([0]).collect());
    }
    match row.get(name) {
        Some(Value::Null) => None,
        Some(Value::String(s)) => Some(CString::new(s.as_str()).unwrap().into_bytes_with_nul()),
        _ => panic!("row {row} needs {name}"),
    }
}

fn as_ptr(arg: &Option<Vec<u8>>) -> *const c_char {
    arg.as_ref().map_or(ptr::null(), |b| b.as_ptr().cast())
}

fn status_name(status: vgen_status) -> String {
    unsafe { CStr::from_ptr(vgen_status_name(status as u32)) }.to_str().unwrap().to_string()
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(vgen_last_error()) }.to_string_lossy().into_owned()
}

fn submit(engine: *const vgen_engine, json: &str) -> u64 {
    let json = CString::new(json).unwrap();
    let mut job = 0;
    let status = unsafe { vgen_engine_submit(engine, json.as_ptr(), ptr::null(), &mut job) };
    assert_eq!(status, vgen_status::VGEN_STATUS_OK, "{}", last_error());
    let mut s = vgen_job_status::default();
    let status = unsafe { vgen_job_wait(engine, job, 60_000, &mut s) };
    assert_eq!(status, vgen_status::VGEN_STATUS_OK, "{}", last_error());
    assert_eq!(s.state, vgen_job_state::VGEN_JOB_SUCCEEDED);
    job
}

const GOOD: &str = r#"{"prompt": "a good job", "width": 32, "height": 32, "num_frames": 5, "steps": 2}"#;

#[test]
fn bad_c_calls_get_their_status_and_the_engine_serves_the_next_job() {
    let config = CString::new(r#"{"devices": ["cpu"]}"#).unwrap();
    let mut engine = ptr::null_mut();
    assert_eq!(unsafe { vgen_engine_new(config.as_ptr(), &mut engine) }, vgen_status::VGEN_STATUS_OK);
    let done = submit(engine, GOOD);
    let rows = table()["c_calls"].as_array().unwrap().clone();
    let mut failures = Vec::new();
    for row in &rows {
        let job = match row.get("job").and_then(Value::as_u64) {
            Some(0) => done,
            Some(id) => id,
            None => 0,
        };
        let status = match row["call"].as_str().unwrap() {
            "engine_new" => {
                let arg = argument(row, "config");
                let mut out: *mut vgen_engine = ptr::null_mut();
                let target = if row.get("out") == Some(&Value::Null) { ptr::null_mut() } else { &mut out as *mut _ };
                let status = unsafe { vgen_engine_new(as_ptr(&arg), target) };
                assert!(out.is_null(), "no engine is written on failure");
                status
            }
            "submit" => {
                let arg = argument(row, "request");
                let target = if row.get("engine") == Some(&Value::Null) { ptr::null() } else { engine.cast_const() };
                let mut out = u64::MAX;
                let status = unsafe { vgen_engine_submit(target, as_ptr(&arg), ptr::null(), &mut out) };
                assert_eq!(out, u64::MAX, "no job id is written on failure");
                status
            }
            "poll" => unsafe { vgen_job_poll(engine, job, &mut vgen_job_status::default()) },
            "wait" => unsafe { vgen_job_wait(engine, job, 10, &mut vgen_job_status::default()) },
            "cancel" => unsafe { vgen_job_cancel(engine, job, ptr::null_mut()) },
            "release" => unsafe { vgen_job_release(engine, job) },
            "events" => {
                let mut out = ptr::null_mut();
                let status = unsafe { vgen_job_events(engine, job, 0, &mut out) };
                assert!(out.is_null());
                status
            }
            "result" => {
                let mut out = ptr::null_mut();
                let status = unsafe { vgen_job_result(engine, job, &mut out) };
                assert!(out.is_null());
                status
            }
            "save" => {
                let mut video = ptr::null_mut();
                assert_eq!(unsafe { vgen_job_result(engine, job, &mut video) }, vgen_status::VGEN_STATUS_OK);
                let arg = argument(row, "path");
                let status = unsafe { vgen_video_save(video, as_ptr(&arg)) };
                unsafe { vgen_video_free(video) };
                status
            }
            other => panic!("unknown call {other:?}"),
        };
        let (code, words) = (row["code"].as_str().unwrap(), row["message"].as_str().unwrap());
        let message = last_error();
        if status_name(status) != code || !message.contains(words) {
            failures.push(format!("{row}: got {} {message:?}", status_name(status)));
        }
        submit(engine, GOOD);
    }
    unsafe { vgen_engine_free(engine) };
    assert!(rows.len() >= 15);
    assert!(failures.is_empty(), "{} of {} rows:\n{}", failures.len(), rows.len(), failures.join("\n"));
}
