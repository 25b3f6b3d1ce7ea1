//! A storyboard through the C ABI: the request JSON's `segments`, on the core fixtures' tiny Wan made a TI2V model
//! (each later part starts from the frame before as its first latent frame), and the parts in the video's
//! metadata. Its own test binary: it points `VGEN_MODELS` at that model before any engine exists.

mod common;

use std::ffi::{CStr, CString};
use std::ptr;
use vgen::*;

fn last_error() -> String {
    unsafe { CStr::from_ptr(vgen_last_error()) }.to_str().unwrap().to_string()
}

/// The tiny Wan with `expand_timesteps`: a model that continues from a frame (32×32, 9 frames by default).
fn models_folder() -> std::path::PathBuf {
    let root = std::env::temp_dir().join(format!("vgen-ffi-storyboard-{}", std::process::id()));
    common::tiny_ti2v(&root.join("tiny-ti2v"), 9);
    root
}

#[test]
fn a_storyboard_in_the_request_json_is_one_video_with_its_parts_listed() {
    unsafe { std::env::set_var("VGEN_MODELS", models_folder()) };
    let mut e = ptr::null_mut();
    let config = CString::new(r#"{"devices": ["cpu"]}"#).unwrap();
    assert_eq!(unsafe { vgen_engine_new(config.as_ptr(), &mut e) }, vgen_status::VGEN_STATUS_OK, "{}", last_error());
    let request = CString::new(
        r#"{"model": "tiny-ti2v", "seed": 2, "segments": ["a cat", {"prompt": "a dog", "num_frames": 4}, "a cow"]}"#,
    )
    .unwrap();
    let mut job = 0;
    let status = unsafe { vgen_engine_submit(e, request.as_ptr(), ptr::null(), &mut job) };
    assert_eq!(status, vgen_status::VGEN_STATUS_OK, "{}", last_error());
    let mut st = vgen_job_status::default();
    assert_eq!(unsafe { vgen_job_wait(e, job, 120_000, &mut st) }, vgen_status::VGEN_STATUS_OK, "{}", last_error());
    assert_eq!(st.state, vgen_job_state::VGEN_JOB_SUCCEEDED, "{}", last_error());
    let mut video = ptr::null_mut();
    assert_eq!(unsafe { vgen_job_result(e, job, &mut video) }, vgen_status::VGEN_STATUS_OK);
    let (mut data, mut n, mut h, mut w) = (ptr::null(), 0u32, 0u32, 0u32);
    let status = unsafe { vgen_video_frames(video, &mut data, &mut n, &mut h, &mut w, ptr::null_mut()) };
    assert_eq!(status, vgen_status::VGEN_STATUS_OK);
    assert_eq!((n, h, w), (9 + 4 + 8, 32, 32), "9 frames, then 4 and 8 after each given frame");
    let mut json = ptr::null_mut();
    assert_eq!(unsafe { vgen_video_metadata(video, &mut json) }, vgen_status::VGEN_STATUS_OK);
    let meta: serde_json::Value = serde_json::from_str(unsafe { CStr::from_ptr(json) }.to_str().unwrap()).unwrap();
    unsafe { vgen_string_free(json) };
    let parts: Vec<(String, u64, u64)> = meta["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (s["prompt"].as_str().unwrap().into(), s["start_frame"].as_u64().unwrap(), s["frames"].as_u64().unwrap())
        })
        .collect();
    let expect = [("a cat", 0, 9), ("a dog", 9, 4), ("a cow", 13, 8)].map(|(p, s, f)| (p.to_string(), s, f));
    assert_eq!(parts, expect);
    unsafe {
        vgen_video_free(video);
        vgen_engine_free(e);
    }
}
