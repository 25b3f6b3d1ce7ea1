//! Finished videos.
//!
//! # Thread safety
//! A `vgen_video` is immutable: it may be read from any number of threads at once. Free it once, last.

use crate::boundary::{borrow, core, guard, null, owned_string, string, write};
use crate::engine::vgen_engine;
use crate::pixels::{format_of, vgen_pixel_format, write_row};
use crate::status::vgen_status;
use std::ffi::c_char;
use std::sync::Arc;
use vgen_core::{JobId, Video};

/// A finished video: RGB8 frames and metadata. Opaque; from `vgen_job_result` or `vgen_job_preview`, freed with
/// `vgen_video_free`. It stays valid after the job is released or the engine is freed. Thread safety: immutable,
/// so any number of threads may read it at once; free it once, last.
#[allow(non_camel_case_types)]
pub struct vgen_video {
    video: Arc<Video>,
    /// The index in the whole video of this handle's frame 0: 0, except for the frames so far of a job that keeps
    /// only its last frames (`vgen_job_frames`).
    first_frame: u32,
}

impl vgen_video {
    fn boxed(video: Arc<Video>, first_frame: u32) -> *mut vgen_video {
        Box::into_raw(Box::new(vgen_video { video, first_frame }))
    }
}

/// The video of a succeeded job. A failed or cancelled job returns its error; an unfinished one
/// VGEN_STATUS_NOT_READY. Any thread.
///
/// \param out receives a video the caller frees with `vgen_video_free`.
///
/// # Safety
/// `engine` a live engine; `out` valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_job_result(
    engine: *const vgen_engine,
    job: u64,
    out: *mut *mut vgen_video,
) -> vgen_status {
    guard(|| {
        // SAFETY: by contract.
        let e = unsafe { borrow(engine, "engine") }?;
        if out.is_null() {
            return Err(null("out"));
        }
        let video = e.engine.result(JobId(job)).map_err(core)?;
        // SAFETY: checked non-NULL.
        unsafe { write(out, vgen_video::boxed(video, 0), "out") }
    })
}

/// The frames a job has decoded so far, while it runs, so that a game or a player can start showing the video
/// before the job ends: a streaming model (Wan, the default model) hands over each chunk as it decodes it; the job's
/// `frames_ready` and its `"frames"` events say when there are more. A job that keeps its frames gives all of them
/// (from frame 0); one with `"keep_frames": false` the last `frames_window` of them (an engine setting, 16 by
/// default), from frame `vgen_video_first_frame`, and still after the job has succeeded. Each call
/// copies the frames held: call it once per new chunk, not once per game frame. VGEN_STATUS_NOT_READY before the
/// first chunk (and for a job that failed or was cancelled, or one running on another node of a Redis cluster).
/// Any thread.
///
/// \param out receives a video the caller frees with `vgen_video_free`; it has no fps or metadata.
///
/// # Safety
/// `engine` a live engine; `out` valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_job_frames(
    engine: *const vgen_engine,
    job: u64,
    out: *mut *mut vgen_video,
) -> vgen_status {
    guard(|| {
        // SAFETY: by contract.
        let e = unsafe { borrow(engine, "engine") }?;
        if out.is_null() {
            return Err(null("out"));
        }
        let Some(so_far) = e.engine.frames(JobId(job)).map_err(core)? else {
            return Err((vgen_status::VGEN_STATUS_NOT_READY, format!("job {job} has decoded no frames yet")));
        };
        let video = Arc::new(Video { frames: so_far.frames, fps: 0.0, metadata: Default::default() });
        // SAFETY: checked non-NULL.
        unsafe { write(out, vgen_video::boxed(video, so_far.first as u32), "out") }
    })
}

/// Which frame of the whole video is this handle's frame 0: 0, except for the frames so far of a job that keeps
/// only its last ones (`vgen_job_frames`). Any thread.
///
/// # Safety
/// `video` a live video; `first_out` valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_video_first_frame(video: *const vgen_video, first_out: *mut u32) -> vgen_status {
    guard(|| {
        // SAFETY: by contract.
        let v = unsafe { borrow(video, "video") }?;
        // SAFETY: by contract.
        unsafe { write(first_out, v.first_frame, "first_out") }
    })
}

/// Copies frame `index` into the caller's buffer in `format` (a `VGEN_PIXELS_*`): `height` rows `dst_stride`
/// bytes apart, each `width` pixels, top row first, which is what a texture upload wants (Unity's
/// `LoadRawTextureData`, Godot's `Image.set_data`, `glTexSubImage2D`, a mapped staging buffer). RGBA8 and BGRA8
/// get alpha 255; bytes between a row's end and the stride are left as they were. VGEN_STATUS_INVALID_ARGUMENT for
/// an index out of range, an unknown format or a stride smaller than a row. Any thread.
///
/// # Safety
/// `video` a live video; `dst` valid for writes of `dst_stride × (height − 1)` bytes plus one row.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_video_copy_frame(
    video: *const vgen_video,
    index: usize,
    format: vgen_pixel_format,
    dst: *mut u8,
    dst_stride: usize,
) -> vgen_status {
    guard(|| {
        // SAFETY: by contract.
        let v = unsafe { borrow(video, "video") }?;
        let f = &v.video.frames;
        let format = format_of(format, "vgen_video_copy_frame")?;
        let invalid = |m: String| core(vgen_core::Error::invalid(m));
        if index >= f.num_frames {
            return Err(invalid(format!("frame {index} is out of range: the video has {} frames", f.num_frames)));
        }
        let row = f.width * format.bytes_per_pixel();
        if dst_stride < row {
            return Err(invalid(format!(
                "dst_stride {dst_stride} is less than a row ({} pixels x {} bytes = {row})",
                f.width,
                format.bytes_per_pixel()
            )));
        }
        if dst.is_null() {
            return Err(null("dst"));
        }
        let frame = f.frame(index);
        for y in 0..f.height {
            // SAFETY: row y lies within the `dst_stride × (height − 1) + row` bytes the contract makes writable.
            let out = unsafe { std::slice::from_raw_parts_mut(dst.add(y * dst_stride), row) };
            write_row(&frame[y * f.width * 3..(y + 1) * f.width * 3], format, out);
        }
        Ok(())
    })
}

/// Frees a video. NULL is accepted.
///
/// # Safety
/// `video` NULL or from `vgen_job_result`, not yet freed; no other call on it may run concurrently or follow.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_video_free(video: *mut vgen_video) {
    if !video.is_null() {
        // SAFETY: from Box::into_raw in vgen_job_result, freed once.
        drop(unsafe { Box::from_raw(video) });
    }
}

/// The frames: `*data_out` points at `frames × height × width × 3` bytes of RGB8, row-major, owned by the video
/// (valid until `vgen_video_free`; not to be freed or written). A video whose request set `"keep_frames": false`
/// has 0 frames, and `*data_out` is then NULL. Any of the size outputs may be NULL. Any thread.
///
/// # Safety
/// `video` a live video; each non-NULL output valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_video_frames(
    video: *const vgen_video,
    data_out: *mut *const u8,
    frames_out: *mut u32,
    height_out: *mut u32,
    width_out: *mut u32,
    fps_out: *mut f64,
) -> vgen_status {
    guard(|| {
        // SAFETY: by contract.
        let v = unsafe { borrow(video, "video") }?;
        let f = &v.video.frames;
        // SAFETY: by contract, each non-NULL output is writable.
        unsafe {
            // An empty Vec's pointer is dangling, not NULL: give C a NULL it can test.
            let data = if f.data().is_empty() { std::ptr::null() } else { f.data().as_ptr() };
            write(data_out, data, "data_out")?;
            for (p, x) in
                [(frames_out, f.num_frames as u32), (height_out, f.height as u32), (width_out, f.width as u32)]
            {
                if !p.is_null() {
                    p.write(x);
                }
            }
            if !fps_out.is_null() {
                fps_out.write(v.video.fps);
            }
        }
        Ok(())
    })
}

/// The metadata (seed, model, weights hash, device, dtype, timings per stage, `peak_rss_bytes`: the process's resident
/// memory high-water mark over the attempt, shared by concurrent jobs; attempts, cache hit) as
/// a JSON object. `json_out` receives a string the caller frees with `vgen_string_free`. Any thread.
///
/// # Safety
/// `video` a live video; `json_out` valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_video_metadata(video: *const vgen_video, json_out: *mut *mut c_char) -> vgen_status {
    guard(|| {
        // SAFETY: by contract.
        let v = unsafe { borrow(video, "video") }?;
        let json = serde_json::to_string(&v.video.metadata).unwrap_or_default();
        if json_out.is_null() {
            return Err(null("json_out"));
        }
        // SAFETY: checked non-NULL.
        unsafe { write(json_out, owned_string(json), "json_out") }
    })
}

/// Writes the video to a file in the format its name asks for: `.mp4`, `.gif`, `.png` (animated) or a folder
/// ending in `/`. The file appears complete or not at all. Any thread.
///
/// # Safety
/// `video` a live video; `path` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_video_save(video: *const vgen_video, path: *const c_char) -> vgen_status {
    guard(|| {
        // SAFETY: by contract.
        let v = unsafe { borrow(video, "video") }?;
        let path = unsafe { string(path, "path") }?;
        vgen_core::encode::write(std::path::Path::new(path), &v.video).map_err(core)
    })
}

/// The job's latest preview (a cheap projection of the latents to RGB, emitted every `preview_every` steps), as a
/// video handle with the same accessors; `step_out` (may be NULL) receives its step. VGEN_STATUS_NOT_READY when
/// there is no preview yet. The frames stay valid until `vgen_video_free`. Any thread.
///
/// # Safety
/// `engine` a live engine; `out` valid for a write; `step_out` NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_job_preview(
    engine: *const vgen_engine,
    job: u64,
    out: *mut *mut vgen_video,
    step_out: *mut u32,
) -> vgen_status {
    guard(|| {
        // SAFETY: by contract.
        let e = unsafe { borrow(engine, "engine") }?;
        if out.is_null() {
            return Err(null("out"));
        }
        let Some((step, frames)) = e.engine.latest_preview(JobId(job)).map_err(core)? else {
            return Err((vgen_status::VGEN_STATUS_NOT_READY, format!("job {job} has no preview yet")));
        };
        let video = Arc::new(Video { frames, fps: 0.0, metadata: Default::default() });
        if !step_out.is_null() {
            // SAFETY: non-NULL, writable by contract.
            unsafe { step_out.write(step) };
        }
        // SAFETY: checked non-NULL.
        unsafe { write(out, vgen_video::boxed(video, 0), "out") }
    })
}
