//! What a game engine needs from the C ABI, called as a C host calls it: frames while the job decodes
//! (`vgen_job_frames`, `frames_ready`, `"frames"` events), copies straight into a texture's memory
//! (`vgen_video_copy_frame`), `preview_seq`, an engine-wide callback, a status struct that carries its size, and a
//! shutdown that does not block. On the core fixtures' tiny Wan (a streaming model: it decodes 9 frames in three
//! chunks). Its own test binary: it points `VGEN_MODELS` at that model before any engine exists.

mod common;

use std::ffi::{CStr, CString, c_char, c_void};
use std::ptr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use vgen::*;

fn last_error() -> String {
    unsafe { CStr::from_ptr(vgen_last_error()) }.to_str().unwrap().to_string()
}

fn models_folder() -> std::path::PathBuf {
    let root = std::env::temp_dir().join(format!("vgen-ffi-game-{}", std::process::id()));
    let dir = root.join("tiny-wan");
    common::copy_fixture("tiny-wan", &dir);
    let serving =
        r#"{"name": "tiny-wan", "max_sequence_length": 16, "width": 32, "height": 32, "num_frames": 9, "steps": 2}"#;
    std::fs::write(dir.join("vgen.json"), serving).unwrap();
    root
}

fn engine(config: &str) -> *mut vgen_engine {
    let mut e = ptr::null_mut();
    let config = CString::new(config).unwrap();
    assert_eq!(unsafe { vgen_engine_new(config.as_ptr(), &mut e) }, vgen_status::VGEN_STATUS_OK, "{}", last_error());
    e
}

fn submit(e: *const vgen_engine, request: &str) -> Result<u64, vgen_status> {
    let mut job = 0;
    let request = CString::new(request).unwrap();
    match unsafe { vgen_engine_submit(e, request.as_ptr(), ptr::null(), &mut job) } {
        vgen_status::VGEN_STATUS_OK => Ok(job),
        other => Err(other),
    }
}

/// Waits for the job to end and for the engine-wide callback to have had its last event (callbacks run on the
/// dispatcher thread, after the state changes).
fn wait(e: *const vgen_engine, job: u64) -> vgen_job_status {
    let mut st = vgen_job_status::default();
    assert_eq!(unsafe { vgen_job_wait(e, job, 120_000, &mut st) }, vgen_status::VGEN_STATUS_OK, "{}", last_error());
    let until = Instant::now() + Duration::from_secs(30);
    while !SEEN.lock().unwrap().finished.contains(&job) {
        assert!(Instant::now() < until, "job {job}'s terminal event never reached the engine-wide callback");
        std::thread::sleep(Duration::from_millis(1));
    }
    st
}

/// A video handle's frames: (first frame, frame count, bytes).
type FramesSeen = (u32, usize, Vec<u8>);

fn frames_of(v: *const vgen_video) -> FramesSeen {
    let (mut data, mut n, mut h, mut w) = (ptr::null(), 0u32, 0u32, 0u32);
    let status = unsafe { vgen_video_frames(v, &mut data, &mut n, &mut h, &mut w, ptr::null_mut()) };
    assert_eq!(status, vgen_status::VGEN_STATUS_OK);
    let mut first = u32::MAX;
    assert_eq!(unsafe { vgen_video_first_frame(v, &mut first) }, vgen_status::VGEN_STATUS_OK);
    let len = (n * h * w * 3) as usize;
    let bytes = if len == 0 { Vec::new() } else { unsafe { std::slice::from_raw_parts(data, len) }.to_vec() };
    (first, n as usize, bytes)
}

/// What the engine-wide callback saw: for each `"frames"` event, the job, the count it announced and the frames
/// `vgen_job_frames` gave right then (read from inside the callback, as a game's plugin would on its own thread).
#[derive(Default)]
struct Seen {
    engine: usize,
    frames: Vec<(u64, u32, FramesSeen)>,
    finished: Vec<u64>,
    finalized: bool,
}

static SEEN: Mutex<Seen> = Mutex::new(Seen { engine: 0, frames: Vec::new(), finished: Vec::new(), finalized: false });

unsafe extern "C" fn on_event(_userdata: *mut c_void, job: u64, event: *const c_char) {
    let json: serde_json::Value = serde_json::from_str(unsafe { CStr::from_ptr(event) }.to_str().unwrap()).unwrap();
    let engine = SEEN.lock().unwrap().engine as *const vgen_engine;
    match json["type"].as_str().unwrap() {
        "frames" => {
            let mut video = ptr::null_mut();
            assert_eq!(unsafe { vgen_job_frames(engine, job, &mut video) }, vgen_status::VGEN_STATUS_OK);
            let got = frames_of(video);
            unsafe { vgen_video_free(video) };
            SEEN.lock().unwrap().frames.push((job, json["ready"].as_u64().unwrap() as u32, got));
        }
        "finished" => SEEN.lock().unwrap().finished.push(job),
        _ => {}
    }
}

unsafe extern "C" fn finalize(_userdata: *mut c_void) {
    SEEN.lock().unwrap().finalized = true;
}

#[test]
fn a_game_plays_frames_as_they_decode_uploads_them_and_shuts_down_without_blocking() {
    // SAFETY (of the test): no other thread reads the environment while it is set; this binary has one test.
    unsafe { std::env::set_var("VGEN_MODELS", models_folder()) };
    assert_eq!(vgen_abi_version(), VGEN_ABI_VERSION);
    assert_eq!(VGEN_ABI_VERSION, 2);
    let e = engine(r#"{"devices": ["cpu"], "default_model": "tiny-wan", "frames_window": 2, "cpu_threads": 1}"#);
    SEEN.lock().unwrap().engine = e as usize;
    let cb = vgen_callback { callback: Some(on_event), userdata: ptr::null_mut(), finalizer: Some(finalize) };
    assert_eq!(unsafe { vgen_engine_on_event(e, &cb) }, vgen_status::VGEN_STATUS_OK);

    // 1. A job that keeps its frames: each chunk's frames can be read as it is announced, from frame 0, and are the
    //    finished video's frames.
    let kept = submit(e, r#"{"prompt": "a cat", "seed": 1, "preview_every": 1}"#).unwrap();
    let st = wait(e, kept);
    assert_eq!(st.state, vgen_job_state::VGEN_JOB_SUCCEEDED, "{}", last_error());
    assert_eq!(st.frames_ready, 9);
    assert_eq!(st.preview_seq, 2, "one preview after each of the 2 steps");
    let mut result = ptr::null_mut();
    assert_eq!(unsafe { vgen_job_result(e, kept, &mut result) }, vgen_status::VGEN_STATUS_OK);
    let (_, n, whole) = frames_of(result);
    assert_eq!(n, 9);
    let frame_bytes = 32 * 32 * 3;
    let seen: Vec<_> = SEEN.lock().unwrap().frames.iter().filter(|f| f.0 == kept).cloned().collect();
    assert_eq!(seen.iter().map(|f| f.1).collect::<Vec<_>>(), vec![1, 5, 9], "frame 0, then chunks of 4");
    for (_, ready, (first, count, bytes)) in &seen {
        assert_eq!(*first, 0);
        assert!(*count >= *ready as usize);
        assert_eq!(bytes[..], whole[..count * frame_bytes], "the frames so far are the video's first frames");
    }

    // 2. A job that keeps no frames: the last `frames_window` (2) frames, at least, can still be read as they pass,
    //    and they are the frames the same request makes when it keeps them.
    let out = std::env::temp_dir().join(format!("vgen-ffi-game-{}.gif", std::process::id()));
    let streamed = submit(
        e,
        &format!(r#"{{"prompt": "a dog", "seed": 2, "keep_frames": false, "outputs": ["{}"]}}"#, out.display()),
    )
    .unwrap();
    assert_eq!(wait(e, streamed).frames_ready, 9);
    assert!(out.exists());
    let reference = submit(e, r#"{"prompt": "a dog", "seed": 2}"#).unwrap();
    wait(e, reference);
    let mut video = ptr::null_mut();
    assert_eq!(unsafe { vgen_job_result(e, reference, &mut video) }, vgen_status::VGEN_STATUS_OK);
    let (_, _, same) = frames_of(video);
    unsafe { vgen_video_free(video) };
    let seen: Vec<_> = SEEN.lock().unwrap().frames.iter().filter(|f| f.0 == streamed).cloned().collect();
    assert_eq!(seen.len(), 3);
    for (_, ready, (first, count, bytes)) in &seen {
        let end = *first as usize + count;
        assert!(end >= *ready as usize && *count >= 1 && *count < 2 + 4, "{first} + {count} for {ready} ready");
        assert!(*count >= 2 || *ready == 1);
        assert_eq!(bytes[..], same[*first as usize * frame_bytes..end * frame_bytes]);
    }
    // Once it has ended, a job that kept no frames still gives its last ones.
    assert_eq!(unsafe { vgen_job_frames(e, streamed, &mut video) }, vgen_status::VGEN_STATUS_OK);
    let (first, count, bytes) = frames_of(video);
    unsafe { vgen_video_free(video) };
    assert_eq!((first, count), (5, 4));
    assert_eq!(bytes[..], same[5 * frame_bytes..]);

    // 3. A frame copied into a texture's memory, in each layout, with a padded stride.
    let stride = 32 * 4 + 16;
    for (format, order) in [(VGEN_PIXELS_RGBA8, [0, 1, 2]), (VGEN_PIXELS_BGRA8, [2, 1, 0])] {
        let mut texture = vec![0xABu8; stride * 32];
        let status = unsafe { vgen_video_copy_frame(result, 4, format, texture.as_mut_ptr(), stride) };
        assert_eq!(status, vgen_status::VGEN_STATUS_OK, "{}", last_error());
        for y in 0..32 {
            for x in 0..32 {
                let px = &texture[y * stride + x * 4..][..4];
                let rgb = &whole[4 * frame_bytes + (y * 32 + x) * 3..][..3];
                assert_eq!([px[order[0]], px[order[1]], px[order[2]], px[3]], [rgb[0], rgb[1], rgb[2], 255]);
            }
            assert!(
                texture[y * stride + 128..(y + 1) * stride].iter().all(|&b| b == 0xAB),
                "the padding is left alone"
            );
        }
    }
    let mut rgb = vec![0u8; 32 * 3 * 32];
    assert_eq!(
        unsafe { vgen_video_copy_frame(result, 8, VGEN_PIXELS_RGB8, rgb.as_mut_ptr(), 96) },
        vgen_status::VGEN_STATUS_OK
    );
    assert_eq!(rgb[..], whole[8 * frame_bytes..]);
    let mut bad =
        |index, format, stride| unsafe { vgen_video_copy_frame(result, index, format, rgb.as_mut_ptr(), stride) };
    assert_eq!(bad(9, VGEN_PIXELS_RGB8, 96), vgen_status::VGEN_STATUS_INVALID_ARGUMENT);
    assert!(last_error().contains("frame 9 is out of range: the video has 9 frames"), "{}", last_error());
    assert_eq!(bad(0, VGEN_PIXELS_RGBA8, 96), vgen_status::VGEN_STATUS_INVALID_ARGUMENT);
    assert!(last_error().contains("less than a row"), "{}", last_error());
    assert_eq!(bad(0, 7, 96), vgen_status::VGEN_STATUS_INVALID_ARGUMENT);
    assert!(last_error().contains("VGEN_PIXELS_BGRA8 (2)"), "{}", last_error());
    unsafe { vgen_video_free(result) };

    // 4. The status carries its size: a size too small is refused, and a newer header's bigger struct gets what
    //    this library knows, with the rest left alone.
    let mut st = vgen_job_status { size: 0, ..Default::default() };
    assert_eq!(unsafe { vgen_job_poll(e, kept, &mut st) }, vgen_status::VGEN_STATUS_INVALID_ARGUMENT);
    assert!(last_error().contains("VGEN_JOB_STATUS_INIT"), "{}", last_error());
    #[repr(C)]
    struct Newer {
        status: vgen_job_status,
        added: [u8; 16],
    }
    let mut newer = Newer { status: vgen_job_status::default(), added: [0x5A; 16] };
    newer.status.size = std::mem::size_of::<Newer>() as u32;
    assert_eq!(unsafe { vgen_job_poll(e, kept, &mut newer.status) }, vgen_status::VGEN_STATUS_OK);
    assert_eq!(newer.status.size as usize, std::mem::size_of::<Newer>());
    assert_eq!((newer.status.state, newer.status.frames_ready), (vgen_job_state::VGEN_JOB_SUCCEEDED, 9));
    assert_eq!(newer.added, [0x5A; 16]);

    // 5. Shutdown returns at once and says when it has finished; then freeing does not block.
    let slow = submit(e, r#"{"prompt": "a long one", "seed": 3, "steps": 100}"#).unwrap();
    let started = Instant::now();
    assert_eq!(unsafe { vgen_engine_shutdown(e, 0) }, vgen_status::VGEN_STATUS_NOT_READY);
    assert!(started.elapsed() < Duration::from_millis(100), "{:?}", started.elapsed());
    assert_eq!(submit(e, r#"{"prompt": "too late"}"#), Err(vgen_status::VGEN_STATUS_SHUTTING_DOWN));
    while unsafe { vgen_engine_shutdown(e, 0) } == vgen_status::VGEN_STATUS_NOT_READY {
        assert!(started.elapsed() < Duration::from_secs(30), "the shutdown never finished");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(wait(e, slow).state, vgen_job_state::VGEN_JOB_CANCELLED);
    assert!(SEEN.lock().unwrap().finished.contains(&slow), "the engine-wide callback got the terminal event");
    let freeing = Instant::now();
    unsafe { vgen_engine_free(e) };
    assert!(freeing.elapsed() < Duration::from_millis(50), "{:?}", freeing.elapsed());
    assert!(SEEN.lock().unwrap().finalized, "the engine-wide callback's finalizer ran when the engine was freed");
    let _ = std::fs::remove_file(out);
}
