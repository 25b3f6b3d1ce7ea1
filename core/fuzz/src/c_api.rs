//! The C API as a sequence of calls decoded from the input: submits of good and bad requests, polls, waits,
//! cancels, events, results, videos, previews, metrics and status queries, on known and unknown job ids, with NULL
//! where the contract allows a NULL to be passed (and must be reported). Every handle taken is freed exactly once,
//! and every callback's finalizer must have run by the time the engine is freed.

use std::ffi::{CStr, c_char, c_void};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use vgen::*;

/// Requests the sequence may submit (the input's bytes pick them); the last slot submits raw input bytes.
const REQUESTS: [&str; 7] = [
    r#"{"prompt": "a red circle", "model": "noop", "width": 16, "height": 16, "num_frames": 1, "steps": 2}"#,
    r#"{"prompt": "a card", "width": 32, "height": 32, "num_frames": 5, "steps": 2, "preview_every": 1}"#,
    r#"{"prompt": "!fail=internal*1 flaky", "model": "faulty", "width": 16, "height": 16, "num_frames": 1, "steps": 2}"#,
    r#"{"prompt": "!slow=2 slow", "model": "faulty", "width": 16, "height": 16, "num_frames": 1, "steps": 5, "deadline_ms": 3}"#,
    r#"{"prompt": "x", "width": 100}"#,
    r#"{"prompt": "a red circle", "model": "noop", "width": 16, "height": 16, "num_frames": 1, "steps": 2, "idempotency_key": "k"}"#,
    "{",
];

static CALLED: AtomicU64 = AtomicU64::new(0);
static REGISTERED: AtomicU64 = AtomicU64::new(0);
static FINALIZED: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" fn on_event(_userdata: *mut c_void, _job: u64, event: *const c_char) {
    assert!(!event.is_null());
    // SAFETY: the library passes a NUL-terminated string valid for the call.
    assert!(unsafe { CStr::from_ptr(event) }.to_str().is_ok());
    CALLED.fetch_add(1, Ordering::Relaxed);
}

unsafe extern "C" fn finalize(userdata: *mut c_void) {
    assert_eq!(userdata as usize, 0x5eed, "the finalizer gets the userdata it was registered with");
    FINALIZED.fetch_add(1, Ordering::SeqCst);
}

/// Reads the input a byte at a time; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else { return 0 };
        self.0 = rest;
        b
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn free_string(s: *mut c_char) {
    // SAFETY: NULL or a string the library returned and that is freed only here.
    unsafe { vgen_string_free(s) };
}

pub fn c_api(data: &[u8]) {
    let mut input = Input(data);
    let mut engine: *mut vgen_engine = ptr::null_mut();
    let config = c"{\"devices\": [\"cpu\"], \"workers_per_device\": 2, \"shutdown_timeout_ms\": 200}";
    // SAFETY: a NUL-terminated config and a valid out-pointer.
    let status = unsafe { vgen_engine_new(config.as_ptr(), &mut engine) };
    assert_eq!(status, vgen_status::VGEN_STATUS_OK);
    let registered_before = REGISTERED.load(Ordering::SeqCst);
    let finalized_before = FINALIZED.load(Ordering::SeqCst);
    let mut jobs: Vec<u64> = vec![u64::MAX];
    let mut steps = 0;
    while !input.is_empty() && steps < 64 {
        steps += 1;
        let op = input.byte();
        let job = {
            let pick = input.byte() as usize;
            if pick < 200 { jobs[pick % jobs.len()] } else { pick as u64 * 7919 }
        };
        let null = op & 0x80 != 0;
        // SAFETY (every call below): `engine` is live until the end; pointers are valid or NULL, as the
        // contract allows; returned strings and videos are freed exactly once.
        unsafe {
            match op % 12 {
                0 => {
                    let pick = input.byte() as usize % (REQUESTS.len() + 1);
                    let mut json = match REQUESTS.get(pick) {
                        Some(r) => r.as_bytes().to_vec(),
                        None => {
                            let n = input.byte() as usize;
                            input.bytes(n).into_iter().filter(|b| *b != 0).collect()
                        }
                    };
                    json.push(0);
                    let callback = vgen_callback {
                        callback: Some(on_event),
                        userdata: 0x5eed as *mut c_void,
                        finalizer: Some(finalize),
                    };
                    let with_callback = input.byte() & 1 == 1;
                    let mut id = 0;
                    let status = vgen_engine_submit(
                        engine,
                        if null { ptr::null() } else { json.as_ptr().cast() },
                        if with_callback { &callback } else { ptr::null() },
                        &mut id,
                    );
                    // The library owns the callback from the call on, whether the submit succeeds or not.
                    if with_callback {
                        REGISTERED.fetch_add(1, Ordering::SeqCst);
                    }
                    if status == vgen_status::VGEN_STATUS_OK {
                        jobs.push(id);
                    }
                }
                1 => {
                    let mut s = vgen_job_status::default();
                    let _ = vgen_job_poll(engine, job, if null { ptr::null_mut() } else { &mut s });
                }
                2 => {
                    let mut s = vgen_job_status::default();
                    let _ = vgen_job_wait(engine, job, (input.byte() % 4) as i64, &mut s);
                }
                3 => {
                    let mut cancelled = false;
                    let _ = vgen_job_cancel(engine, job, if null { ptr::null_mut() } else { &mut cancelled });
                }
                4 => {
                    let mut json = ptr::null_mut();
                    if vgen_job_events(engine, job, input.byte() as u64, &mut json) == vgen_status::VGEN_STATUS_OK {
                        assert!(CStr::from_ptr(json).to_str().is_ok());
                        free_string(json);
                    }
                }
                5 => {
                    let mut video = ptr::null_mut();
                    if vgen_job_result(engine, job, &mut video) == vgen_status::VGEN_STATUS_OK {
                        let mut data = ptr::null();
                        let (mut t, mut h, mut w, mut fps) = (0, 0, 0, 0.0);
                        assert_eq!(
                            vgen_video_frames(video, &mut data, &mut t, &mut h, &mut w, &mut fps),
                            vgen_status::VGEN_STATUS_OK
                        );
                        if t > 0 {
                            // The whole buffer is readable.
                            let bytes = std::slice::from_raw_parts(data, (t * h * w * 3) as usize);
                            std::hint::black_box(bytes.iter().map(|b| *b as u64).sum::<u64>());
                        }
                        let _ = vgen_video_frames(
                            video,
                            ptr::null_mut(),
                            ptr::null_mut(),
                            ptr::null_mut(),
                            ptr::null_mut(),
                            ptr::null_mut(),
                        );
                        let mut meta = ptr::null_mut();
                        if vgen_video_metadata(video, &mut meta) == vgen_status::VGEN_STATUS_OK {
                            free_string(meta);
                        }
                        let _ = vgen_video_save(video, c"/nonexistent-vgen-fuzz/v.mp4".as_ptr());
                        let _ = vgen_video_save(video, ptr::null());
                        vgen_video_free(video);
                    }
                }
                6 => {
                    let mut message = ptr::null_mut();
                    if vgen_job_error_message(engine, job, &mut message) == vgen_status::VGEN_STATUS_OK {
                        free_string(message);
                    }
                }
                7 => {
                    let mut text = ptr::null_mut();
                    if vgen_engine_metrics(engine, input.byte() as u32 % 3, &mut text) == vgen_status::VGEN_STATUS_OK {
                        free_string(text);
                    }
                }
                8 => {
                    let status = u32::from(input.byte()) | (u32::from(input.byte()) << 8);
                    assert!(!vgen_status_name(status).is_null());
                    let _ = vgen_status_is_retryable(status);
                    let _ = CStr::from_ptr(vgen_last_error()).to_str();
                }
                9 => {
                    let mut video = ptr::null_mut();
                    let mut step = 0;
                    if vgen_job_preview(engine, job, &mut video, if null { ptr::null_mut() } else { &mut step })
                        == vgen_status::VGEN_STATUS_OK
                    {
                        vgen_video_free(video);
                    }
                }
                10 => {
                    // Another engine from raw bytes: refused, or started and freed at once.
                    let n = input.byte() as usize;
                    let mut config: Vec<u8> = input.bytes(n).into_iter().filter(|b| *b != 0).collect();
                    config.push(0);
                    let mut other = ptr::null_mut();
                    if vgen_engine_new(config.as_ptr().cast(), &mut other) == vgen_status::VGEN_STATUS_OK {
                        vgen_engine_free(other);
                    } else {
                        assert!(other.is_null());
                    }
                }
                _ => {
                    let _ = vgen_engine_submit(ptr::null(), c"{}".as_ptr(), ptr::null(), ptr::null_mut());
                    let _ = vgen_job_poll(ptr::null(), job, ptr::null_mut());
                    vgen_engine_free(ptr::null_mut());
                    vgen_video_free(ptr::null_mut());
                    vgen_string_free(ptr::null_mut());
                }
            }
        }
    }
    // SAFETY: the engine is live and nothing else uses it.
    unsafe { vgen_engine_free(engine) };
    let registered = REGISTERED.load(Ordering::SeqCst) - registered_before;
    let finalized = FINALIZED.load(Ordering::SeqCst) - finalized_before;
    assert_eq!(finalized, registered, "every callback registered with the freed engine was finalised once");
    std::hint::black_box(CALLED.load(Ordering::Relaxed));
}
