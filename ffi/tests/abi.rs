//! The C ABI called directly from Rust, as a C host calls it: through the exported `extern "C"` functions and raw
//! pointers only. The C programs in `ffi/tests/c/` cover the same ground from C (and under ASan and valgrind);
//! these run in `cargo test` with the rest of the workspace.

use std::ffi::{CStr, CString, c_char, c_void};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use vgen::*;

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn text(p: *const c_char) -> String {
    assert!(!p.is_null());
    unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string()
}

fn last_error() -> String {
    text(vgen_last_error())
}

fn engine(config: &str) -> *mut vgen_engine {
    let mut e = ptr::null_mut();
    let status = unsafe { vgen_engine_new(cstr(config).as_ptr(), &mut e) };
    assert_eq!(status, vgen_status::VGEN_STATUS_OK, "{}", last_error());
    assert!(!e.is_null());
    e
}

fn submit(e: *const vgen_engine, request: &str, callback: Option<&vgen_callback>) -> Result<u64, vgen_status> {
    let mut job = 0;
    let cb = callback.map_or(ptr::null(), |c| c as *const vgen_callback);
    match unsafe { vgen_engine_submit(e, cstr(request).as_ptr(), cb, &mut job) } {
        vgen_status::VGEN_STATUS_OK => Ok(job),
        other => Err(other),
    }
}

fn wait(e: *const vgen_engine, job: u64, timeout_ms: i64) -> Result<vgen_job_status, vgen_status> {
    let mut st = vgen_job_status::default();
    match unsafe { vgen_job_wait(e, job, timeout_ms, &mut st) } {
        vgen_status::VGEN_STATUS_OK => Ok(st),
        other => Err(other),
    }
}

#[test]
fn status_numbers_names_and_retryability_are_stable() {
    use vgen_status::*;
    for (status, number, name) in [
        (VGEN_STATUS_OK, 0, "ok"),
        (VGEN_STATUS_INVALID_ARGUMENT, 1, "invalid_argument"),
        (VGEN_STATUS_QUEUE_FULL, 4, "queue_full"),
        (VGEN_STATUS_NUMERICAL, 16, "numerical"),
        (VGEN_STATUS_NULL_PARAMETER, 100, "null_parameter"),
        (VGEN_STATUS_PANIC, 101, "panic"),
        (VGEN_STATUS_INVALID_UTF8, 102, "invalid_utf8"),
    ] {
        assert_eq!(status as u32, number);
        assert_eq!(text(vgen_status_name(number)), name);
    }
    // Any number is safe to pass: a host may hold one from a newer vgen.
    for unknown in [17, 99, 103, 999, u32::MAX] {
        assert_eq!(text(vgen_status_name(unknown)), "unknown");
        assert!(!vgen_status_is_retryable(unknown));
    }
    assert!(vgen_status_is_retryable(VGEN_STATUS_QUEUE_FULL as u32));
    assert!(!vgen_status_is_retryable(VGEN_STATUS_INVALID_ARGUMENT as u32));
    assert!(!vgen_status_is_retryable(VGEN_STATUS_NULL_PARAMETER as u32));
    assert_eq!(text(vgen_version()), env!("CARGO_PKG_VERSION"));
    assert!(text(vgen_libtorch_version()).starts_with("2.11"));
}

#[test]
fn bad_arguments_are_statuses_with_a_message_and_outputs_stay_untouched() {
    let sentinel = 0x5a5a as *mut vgen_engine;
    let mut e = sentinel;
    let s = unsafe { vgen_engine_new(cstr(r#"{"devices": ["cpu"], "bogus": 1}"#).as_ptr(), &mut e) };
    assert_eq!(s, vgen_status::VGEN_STATUS_INVALID_ARGUMENT);
    assert!(last_error().contains("bogus"), "{}", last_error());
    assert_eq!(e, sentinel, "written on failure");

    let not_utf8 = b"{\"devices\": [\"\xff\"]}\0";
    let s = unsafe { vgen_engine_new(not_utf8.as_ptr().cast(), &mut e) };
    assert_eq!(s, vgen_status::VGEN_STATUS_INVALID_UTF8);
    assert_eq!(e, sentinel);
    assert_eq!(unsafe { vgen_engine_new(ptr::null(), ptr::null_mut()) }, vgen_status::VGEN_STATUS_NULL_PARAMETER);
    assert!(last_error().contains("out"), "{}", last_error());

    let e = engine(r#"{"devices": ["cpu"]}"#);
    let mut job = 77;
    let s = unsafe { vgen_engine_submit(e, ptr::null(), ptr::null(), &mut job) };
    assert_eq!((s, job), (vgen_status::VGEN_STATUS_NULL_PARAMETER, 77));
    assert_eq!(submit(e, r#"{"prompt": "x", "colour": "red"}"#, None), Err(vgen_status::VGEN_STATUS_INVALID_ARGUMENT));
    assert!(last_error().contains("colour"), "{}", last_error());
    assert_eq!(submit(e, r#"{"prompt": "x", "width": "wide"}"#, None), Err(vgen_status::VGEN_STATUS_INVALID_ARGUMENT));
    assert_eq!(submit(e, "not json", None), Err(vgen_status::VGEN_STATUS_INVALID_ARGUMENT));

    let mut st = vgen_job_status::default();
    assert_eq!(unsafe { vgen_job_poll(e, 424242, &mut st) }, vgen_status::VGEN_STATUS_NOT_FOUND);
    assert_eq!(unsafe { vgen_job_poll(ptr::null(), 1, &mut st) }, vgen_status::VGEN_STATUS_NULL_PARAMETER);
    assert_eq!(unsafe { vgen_engine_metrics(e, 7, &mut ptr::null_mut()) }, vgen_status::VGEN_STATUS_INVALID_ARGUMENT);
    unsafe { vgen_engine_free(e) };
    unsafe { vgen_engine_free(ptr::null_mut()) };
    unsafe { vgen_video_free(ptr::null_mut()) };
    unsafe { vgen_string_free(ptr::null_mut()) };
}

/// What a host's callback records. Counted atomically: the callback runs on the dispatcher thread.
#[derive(Default)]
struct Counts {
    events: AtomicUsize,
    finished: AtomicUsize,
    finalized: AtomicUsize,
}

unsafe extern "C" fn on_event(userdata: *mut c_void, _job: u64, event_json: *const c_char) {
    let counts = unsafe { &*(userdata as *const Counts) };
    counts.events.fetch_add(1, Ordering::SeqCst);
    if text(event_json).contains(r#""type":"finished""#) {
        counts.finished.fetch_add(1, Ordering::SeqCst);
    }
}

unsafe extern "C" fn on_release(userdata: *mut c_void) {
    let counts = unsafe { &*(userdata as *const Counts) };
    counts.finalized.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn a_job_runs_with_its_callback_and_the_finalizer_runs_once() {
    let e = engine(r#"{"devices": ["cpu"]}"#);
    let counts = Counts::default();
    let cb = vgen_callback {
        callback: Some(on_event),
        userdata: &counts as *const Counts as *mut c_void,
        finalizer: Some(on_release),
    };
    let job = submit(
        e,
        r#"{"prompt": "x", "model": "noop", "width": 32, "height": 16, "num_frames": 3, "steps": 4}"#,
        Some(&cb),
    )
    .unwrap();
    let st = wait(e, job, 30_000).unwrap();
    assert_eq!(st.state, vgen_job_state::VGEN_JOB_SUCCEEDED);
    assert_eq!((st.step, st.steps, st.progress, st.error), (4, 4, 1.0, vgen_status::VGEN_STATUS_OK));

    let mut video = ptr::null_mut();
    assert_eq!(unsafe { vgen_job_result(e, job, &mut video) }, vgen_status::VGEN_STATUS_OK);
    let (mut data, mut frames, mut height, mut width, mut fps) = (ptr::null(), 0, 0, 0, 0.0);
    let s = unsafe { vgen_video_frames(video, &mut data, &mut frames, &mut height, &mut width, &mut fps) };
    assert_eq!(s, vgen_status::VGEN_STATUS_OK);
    assert_eq!((frames, height, width), (3, 16, 32));
    assert!(!data.is_null());

    let mut events = ptr::null_mut();
    assert_eq!(unsafe { vgen_job_events(e, job, 0, &mut events) }, vgen_status::VGEN_STATUS_OK);
    let log: serde_json::Value = serde_json::from_str(&text(events)).unwrap();
    unsafe { vgen_string_free(events) };
    let log = log.as_array().unwrap();
    assert_eq!(log.last().unwrap()["type"], "finished");
    assert!(log.iter().enumerate().all(|(i, ev)| ev["seq"] == i as u64 + 1), "numbered from 1 without gaps");

    unsafe { vgen_engine_free(e) };
    // The video outlives the engine.
    assert_eq!(unsafe { *data.add(3 * 16 * 32 * 3 - 1) }, 0, "noop frames are black");
    unsafe { vgen_video_free(video) };
    assert_eq!(counts.finished.load(Ordering::SeqCst), 1);
    assert_eq!(counts.finalized.load(Ordering::SeqCst), 1);
    assert_eq!(counts.events.load(Ordering::SeqCst), log.len());
}

#[test]
fn the_finalizer_runs_once_when_submit_fails_or_there_is_no_callback_function() {
    let e = engine(r#"{"devices": ["cpu"]}"#);
    let counts = Counts::default();
    let userdata = &counts as *const Counts as *mut c_void;
    let cb = vgen_callback { callback: Some(on_event), userdata, finalizer: Some(on_release) };
    assert_eq!(submit(e, r#"{"prompt": ""}"#, Some(&cb)), Err(vgen_status::VGEN_STATUS_INVALID_ARGUMENT));
    assert_eq!(counts.finalized.load(Ordering::SeqCst), 1, "released before submit returned");
    assert_eq!(submit(ptr::null(), r#"{"prompt": "x"}"#, Some(&cb)), Err(vgen_status::VGEN_STATUS_NULL_PARAMETER));
    assert_eq!(counts.finalized.load(Ordering::SeqCst), 2);
    let only_finalizer = vgen_callback { callback: None, userdata, finalizer: Some(on_release) };
    submit(e, r#"{"prompt": "x", "model": "noop"}"#, Some(&only_finalizer)).unwrap();
    assert_eq!(counts.finalized.load(Ordering::SeqCst), 3);
    unsafe { vgen_engine_free(e) };
    assert_eq!((counts.events.load(Ordering::SeqCst), counts.finalized.load(Ordering::SeqCst)), (0, 3));
}

#[test]
fn wait_times_out_then_cancel_ends_a_running_job() {
    let e = engine(r#"{"devices": ["cpu"]}"#);
    let job = submit(e, r#"{"prompt": "!slow=20 long", "model": "faulty", "steps": 200}"#, None).unwrap();
    assert_eq!(wait(e, job, 50).err(), Some(vgen_status::VGEN_STATUS_TIMEOUT));
    let mut cancelled = false;
    assert_eq!(unsafe { vgen_job_cancel(e, job, &mut cancelled) }, vgen_status::VGEN_STATUS_OK);
    assert!(cancelled);
    let st = wait(e, job, 30_000).unwrap();
    assert_eq!((st.state, st.error), (vgen_job_state::VGEN_JOB_CANCELLED, vgen_status::VGEN_STATUS_CANCELLED));
    let mut message = ptr::null_mut();
    assert_eq!(unsafe { vgen_job_error_message(e, job, &mut message) }, vgen_status::VGEN_STATUS_OK);
    assert!(text(message).contains("cancelled"), "{}", text(message));
    unsafe { vgen_string_free(message) };
    let mut video = ptr::null_mut();
    assert_eq!(unsafe { vgen_job_result(e, job, &mut video) }, vgen_status::VGEN_STATUS_CANCELLED);
    assert!(video.is_null());
    assert_eq!(unsafe { vgen_job_cancel(e, job, &mut cancelled) }, vgen_status::VGEN_STATUS_OK);
    assert!(!cancelled, "already ended: harmless");
    unsafe { vgen_engine_free(e) };
}

#[test]
fn a_failing_job_reports_its_error_code() {
    let e = engine(r#"{"devices": ["cpu"], "retry": {"max_attempts": 1}}"#);
    let job = submit(e, r#"{"prompt": "!fail=unavailable broken", "model": "faulty", "steps": 2}"#, None).unwrap();
    let st = wait(e, job, 30_000).unwrap();
    assert_eq!(
        (st.state, st.error, st.attempt),
        (vgen_job_state::VGEN_JOB_FAILED, vgen_status::VGEN_STATUS_UNAVAILABLE, 1)
    );
    unsafe { vgen_engine_free(e) };
}

#[test]
fn a_job_that_keeps_no_frames_writes_its_outputs_and_returns_an_empty_video() {
    let dir = std::env::temp_dir().join(format!("vgen-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let gif = dir.join("clip.gif");
    let e = engine(r#"{"devices": ["cpu"]}"#);
    let request = serde_json::json!({
        "prompt": "a red circle", "width": 32, "height": 32, "num_frames": 5, "steps": 2,
        "outputs": [gif.to_str().unwrap()], "keep_frames": false,
    });
    let job = submit(e, &request.to_string(), None).unwrap();
    assert_eq!(wait(e, job, 60_000).unwrap().state, vgen_job_state::VGEN_JOB_SUCCEEDED);
    let mut video = ptr::null_mut();
    assert_eq!(unsafe { vgen_job_result(e, job, &mut video) }, vgen_status::VGEN_STATUS_OK);
    let (mut data, mut frames, mut height, mut width) = (std::ptr::dangling::<u8>(), 7, 0, 0);
    let s = unsafe { vgen_video_frames(video, &mut data, &mut frames, &mut height, &mut width, ptr::null_mut()) };
    assert_eq!(s, vgen_status::VGEN_STATUS_OK);
    assert_eq!((data, frames, height, width), (ptr::null(), 0, 32, 32), "no frames, and a NULL a host can test");
    unsafe { vgen_video_free(video) };
    unsafe { vgen_engine_free(e) };
    assert!(std::fs::read(&gif).unwrap().starts_with(b"GIF8"));
    std::fs::remove_dir_all(&dir).unwrap();
}
