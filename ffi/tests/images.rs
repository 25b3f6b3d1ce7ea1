//! Images through the C ABI: raw RGB8 / RGBA8 pixels with a stride (`vgen_engine_submit_images`), as a game engine
//! hands over a render target, on the core fixtures' tiny Wan made a TI2V model. Its own test binary: it points
//! `VGEN_MODELS` at that model before any engine exists.

mod common;

use std::ffi::{CStr, CString};
use std::ptr;
use vgen::*;

fn last_error() -> String {
    unsafe { CStr::from_ptr(vgen_last_error()) }.to_str().unwrap().to_string()
}

/// The fixtures' tiny Wan with `expand_timesteps`, named `tiny-ti2v`, in a models folder of its own.
fn models_folder() -> std::path::PathBuf {
    let root = std::env::temp_dir().join(format!("vgen-ffi-images-{}", std::process::id()));
    common::tiny_ti2v(&root.join("tiny-ti2v"), 5);
    root
}

fn submit(
    e: *const vgen_engine,
    request: &str,
    image: Option<&vgen_image>,
    last: Option<&vgen_image>,
) -> Result<u64, (vgen_status, String)> {
    let mut job = 0;
    let request = CString::new(request).unwrap();
    let (i, l) = (image.map_or(ptr::null(), |i| i as *const _), last.map_or(ptr::null(), |l| l as *const _));
    match unsafe { vgen_engine_submit_images(e, request.as_ptr(), i, l, ptr::null(), &mut job) } {
        vgen_status::VGEN_STATUS_OK => Ok(job),
        other => Err((other, last_error())),
    }
}

fn wait(e: *const vgen_engine, job: u64) -> vgen_job_status {
    let mut st = vgen_job_status::default();
    assert_eq!(unsafe { vgen_job_wait(e, job, 120_000, &mut st) }, vgen_status::VGEN_STATUS_OK);
    st
}

#[test]
fn raw_pixels_with_a_stride_are_an_image_and_bad_ones_are_refused_naming_the_field() {
    // SAFETY (of the test): no other thread reads the environment while it is set; this binary has one test.
    unsafe { std::env::set_var("VGEN_MODELS", models_folder()) };
    let mut e = ptr::null_mut();
    let config = CString::new(r#"{"devices": ["cpu"]}"#).unwrap();
    assert_eq!(unsafe { vgen_engine_new(config.as_ptr(), &mut e) }, vgen_status::VGEN_STATUS_OK, "{}", last_error());

    // A 32x32 red square on black as RGBA rows 140 bytes apart (12 bytes of padding a row).
    let (w, h, stride) = (32u32, 32u32, 140u32);
    let mut rgba = vec![0u8; (stride * h) as usize];
    let mut rgb = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let px = if (8..20).contains(&x) && (10..22).contains(&y) { [230, 40, 40] } else { [0, 0, 0] };
            let at = (y * stride + x * 4) as usize;
            rgba[at..at + 4].copy_from_slice(&[px[0], px[1], px[2], 255]);
            rgb.extend_from_slice(&px);
        }
    }
    let image = vgen_image { data: rgba.as_ptr(), width: w, height: h, stride, format: VGEN_PIXELS_RGBA8 };
    let request = r#"{"prompt": "a red square moving right", "model": "tiny-ti2v", "seed": 3}"#;
    let job = submit(e, request, Some(&image), None).unwrap();
    let status = wait(e, job);
    assert_eq!(status.state, vgen_job_state::VGEN_JOB_SUCCEEDED);
    // The same pixels as RGB8 without padding are the same image: the same video, from the cache.
    let packed = vgen_image { data: rgb.as_ptr(), width: w, height: h, stride: w * 3, format: VGEN_PIXELS_RGB8 };
    let again = submit(e, request, Some(&packed), None).unwrap();
    assert!(wait(e, again).cache_hit, "RGBA with a stride and packed RGB are one image");
    // Without the image the same request is another video (not a cache hit).
    let text = submit(e, request, None, None).unwrap();
    assert!(!wait(e, text).cache_hit);

    let null_data = vgen_image { data: ptr::null(), ..image };
    let short_stride = vgen_image { stride: w * 4 - 1, ..image };
    let bad_format = vgen_image { format: 7, ..image };
    let empty = vgen_image { width: 0, ..image };
    let huge = vgen_image { width: 1 << 20, height: 1 << 20, stride: u32::MAX, ..image };
    let twice = r#"{"prompt": "x", "model": "tiny-ti2v", "image": {"path": "/nonexistent.png"}}"#;
    for (request, image, last, status, why) in [
        (request, Some(&null_data), None, vgen_status::VGEN_STATUS_NULL_PARAMETER, "image.data is NULL"),
        (request, Some(&short_stride), None, vgen_status::VGEN_STATUS_INVALID_ARGUMENT, "image: stride 127"),
        (request, Some(&bad_format), None, vgen_status::VGEN_STATUS_INVALID_ARGUMENT, "image: format 7"),
        (request, Some(&empty), None, vgen_status::VGEN_STATUS_INVALID_ARGUMENT, "image: the image is empty"),
        (request, Some(&huge), None, vgen_status::VGEN_STATUS_INVALID_ARGUMENT, "max_image_pixels"),
        (twice, Some(&image), None, vgen_status::VGEN_STATUS_INVALID_ARGUMENT, "image: given twice"),
        (request, Some(&image), Some(&image), vgen_status::VGEN_STATUS_INVALID_ARGUMENT, "last_image: tiny-ti2v"),
    ] {
        let got = submit(e, request, image, last).unwrap_err();
        assert_eq!(got.0, status, "{why}: {}", got.1);
        assert!(got.1.contains(why), "{why}: {}", got.1);
    }
    unsafe { vgen_engine_free(e) };
}
