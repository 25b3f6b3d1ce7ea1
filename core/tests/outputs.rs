//! Files the engine writes for a job (`Request::outputs`): written as the video is decoded, complete when the job
//! succeeds, absent when it fails or is cancelled, and the same pixels as the frames a host would take.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use vgen_core::engine::{EngineConfig, Request};
use vgen_core::models::{Models, wan::pipeline::WanModel};
use vgen_core::{Device, Engine, ErrorCode, JobState};

const WAIT: Option<Duration> = Some(Duration::from_secs(60));

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vgen-outputs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn out(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

/// Every entry in a folder, hidden ones (staged partial files) included.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn small(prompt: &str) -> Request {
    Request {
        num_frames: Some(5),
        width: Some(32),
        height: Some(32),
        steps: Some(4),
        seed: Some(1),
        ..Request::new(prompt)
    }
}

/// The built-in models plus `faulty`, which fails, panics or runs slowly on request.
fn engine() -> Engine {
    Engine::with_models(EngineConfig { devices: vec![Device::Cpu], ..Default::default() }, common::test_models())
        .unwrap()
}

/// Reads a folder of PNG frames back into RGB8 frames.
fn read_png_frames(dir: &Path) -> Vec<Vec<u8>> {
    let mut names = entries(dir);
    names.retain(|n| n.ends_with(".png"));
    names
        .iter()
        .map(|n| {
            let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(dir.join(n)).unwrap()));
            let mut reader = decoder.read_info().unwrap();
            let mut buf = vec![0; reader.output_buffer_size().unwrap()];
            let info = reader.next_frame(&mut buf).unwrap();
            buf.truncate(info.buffer_size());
            buf
        })
        .collect()
}

/// The stages a job went through, by name, in order.
fn stages(e: &Engine, id: vgen_core::JobId) -> Vec<String> {
    e.events(id, 0)
        .unwrap()
        .iter()
        .filter_map(|ev| match &ev.kind {
            vgen_core::engine::EventKind::Stage { stage } => Some(stage.name().to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn files_are_written_for_the_job_and_match_its_frames() {
    let dir = scratch("written");
    let e = engine();
    let req = Request { outputs: vec![out(&dir, "a.mp4"), out(&dir, "a.gif"), out(&dir, "frames/")], ..small("files") };
    let id = e.submit(req).unwrap();
    let s = e.wait(id, WAIT).unwrap();
    assert_eq!(s.state, JobState::Succeeded, "{:?}", s.error);
    let v = e.result(id).unwrap();
    assert_eq!(v.frames.num_frames, 5, "frames are kept by default");
    assert_eq!(entries(&dir), ["a.gif", "a.mp4", "frames"]);
    let pngs = read_png_frames(&dir.join("frames"));
    assert_eq!(pngs.len(), 5);
    for (t, png) in pngs.iter().enumerate() {
        assert_eq!(png.as_slice(), v.frames.frame(t), "frame {t}");
    }
    let stages = stages(&e, id);
    assert!(stages.contains(&"encoding_video".to_string()), "{stages:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_job_that_keeps_no_frames_still_gets_its_files() {
    let dir = scratch("frameless");
    let e = engine();
    let req = Request { outputs: vec![out(&dir, "v.png")], keep_frames: Some(false), ..small("frameless") };
    let id = e.submit(req).unwrap();
    assert_eq!(e.wait(id, WAIT).unwrap().state, JobState::Succeeded);
    let v = e.result(id).unwrap();
    assert_eq!(v.frames.num_frames, 0);
    assert_eq!(v.frames.byte_len(), 0);
    assert_eq!((v.metadata.num_frames, v.metadata.width), (5, 32), "the metadata still describes the video");
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(dir.join("v.png")).unwrap()));
    let reader = decoder.read_info().unwrap();
    assert_eq!(reader.info().animation_control().map(|a| a.num_frames), Some(5));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn failed_and_cancelled_jobs_leave_no_file_behind() {
    let dir = scratch("nothing");
    let e = engine();
    let failing = Request {
        model: Some("faulty".into()),
        outputs: vec![out(&dir, "failed.mp4"), out(&dir, "failed/")],
        ..small("!fail=model*9 fails")
    };
    let id = e.submit(failing).unwrap();
    assert_eq!(e.wait(id, WAIT).unwrap().state, JobState::Failed);

    let slow = Request {
        model: Some("faulty".into()),
        steps: Some(200),
        outputs: vec![out(&dir, "cancelled.gif")],
        ..small("!slow=10 cancelled")
    };
    let id = e.submit(slow).unwrap();
    while e.poll(id).unwrap().step < 2 {
        std::thread::sleep(Duration::from_millis(5));
    }
    e.cancel(id).unwrap();
    assert_eq!(e.wait(id, WAIT).unwrap().state, JobState::Cancelled);
    e.shutdown(Duration::from_secs(5));
    assert_eq!(entries(&dir), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_outputs_are_refused_at_submit() {
    let dir = scratch("bad");
    let e = engine();
    for (req, code, words) in [
        (Request { outputs: vec![out(&dir, "v.avi")], ..small("x") }, ErrorCode::InvalidArgument, ".mp4"),
        (
            Request { outputs: vec![out(&dir, "v.gif"), out(&dir, "v.gif")], ..small("x") },
            ErrorCode::InvalidArgument,
            "twice",
        ),
        (Request { keep_frames: Some(false), ..small("x") }, ErrorCode::InvalidArgument, "outputs"),
        (Request { outputs: vec![out(&dir, "missing/v.mp4")], ..small("x") }, ErrorCode::Io, "does not exist"),
        (Request { outputs: vec![String::new()], ..small("x") }, ErrorCode::InvalidArgument, "empty"),
    ] {
        let err = e.submit(req.clone()).unwrap_err();
        assert_eq!(err.code(), code, "{req:?}: {err}");
        assert!(err.message().contains(words), "{err}");
    }
    let err = Request::from_json(r#"{"prompt":"x","outputs":"v.mp4"}"#).unwrap_err();
    assert!(err.message().contains("outputs") || err.message().contains("sequence"), "{err}");
    assert_eq!(entries(&dir), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cached_video_is_written_to_new_files_and_identical_jobs_share_one_run() {
    let dir = scratch("cached");
    let e = engine();
    let first = e.submit(small("cached")).unwrap();
    assert_eq!(e.wait(first, WAIT).unwrap().state, JobState::Succeeded);
    let again = e.submit(Request { outputs: vec![out(&dir, "again.gif")], ..small("cached") }).unwrap();
    let s = e.wait(again, WAIT).unwrap();
    assert_eq!(s.state, JobState::Succeeded, "{:?}", s.error);
    assert!(s.cache_hit, "served from the cache, written by a worker");
    assert!(e.result(again).unwrap().metadata.cache_hit);
    assert_eq!(entries(&dir), ["again.gif"]);

    // Two identical jobs in flight at once, each with its own file: one run, both files.
    let slow = |name: &str| Request {
        model: Some("faulty".into()),
        outputs: vec![out(&dir, name)],
        ..small("!slow=20 shared")
    };
    let a = e.submit(slow("a.mp4")).unwrap();
    let b = e.submit(slow("b.mp4")).unwrap();
    for id in [a, b] {
        assert_eq!(e.wait(id, WAIT).unwrap().state, JobState::Succeeded);
    }
    assert_eq!(e.metrics().deduplicated, 1);
    assert_eq!(entries(&dir), ["a.mp4", "again.gif", "b.mp4"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The Wan pipeline streams: each decoded chunk goes to the files at once, and with `keep_frames: false` the
/// frames are never gathered. The files hold exactly the frames a job that keeps them gets.
#[test]
fn wan_streams_decoded_chunks_into_the_files() {
    let dir = scratch("wan");
    let model = dir.join("tiny-wan");
    common::tiny_wan(&model, "tiny-wan", 9);
    let mut models = Models::default();
    models.insert(Arc::new(WanModel::open(&model).unwrap()));
    let e = Engine::with_models(EngineConfig { devices: vec![Device::Cpu], ..Default::default() }, models).unwrap();
    let request = Request { seed: Some(3), num_frames: Some(13), ..Request::new("a red circle") };
    let streamed =
        e.submit(Request { outputs: vec![out(&dir, "frames/")], keep_frames: Some(false), ..request.clone() }).unwrap();
    assert_eq!(e.wait(streamed, WAIT).unwrap().state, JobState::Succeeded);
    let frameless = e.result(streamed).unwrap();
    assert_eq!(frameless.frames.num_frames, 0);
    let stages = stages(&e, streamed);
    assert!(!stages.contains(&"encoding_video".to_string()), "written while decoding, not after: {stages:?}");

    // Not cached (it had no frames to cache), so this runs again and keeps its frames.
    let kept = e.submit(request).unwrap();
    let s = e.wait(kept, WAIT).unwrap();
    assert!(!s.cache_hit);
    let v = e.result(kept).unwrap();
    let pngs = read_png_frames(&dir.join("frames"));
    assert_eq!(pngs.len(), 13);
    for (t, png) in pngs.iter().enumerate() {
        assert_eq!(png.as_slice(), v.frames.frame(t), "frame {t}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
