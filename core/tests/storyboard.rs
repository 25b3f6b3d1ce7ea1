//! Storyboards through the engine, on the test card (which continues from a frame it is given): one job over all
//! the parts, with one rising progress bar, previews and a `quality` event from each part, cancellation inside any
//! part, frames streamed to files, and the parts listed in the result. The default model's storyboards, judged by
//! the shapes scorer, are `tools/shapes/test_storyboard.py`.

use std::time::Duration;
use vgen_core::engine::{EngineConfig, EventKind, JobState, Request, SegmentRequest};
use vgen_core::{Device, Engine, ErrorCode};

mod common;

const WAIT: Option<Duration> = Some(Duration::from_secs(60));

fn engine() -> Engine {
    Engine::with_models(EngineConfig { devices: vec![Device::Cpu], ..Default::default() }, common::test_models())
        .unwrap()
}

fn part(prompt: &str, frames: Option<u32>) -> SegmentRequest {
    SegmentRequest { prompt: prompt.into(), num_frames: frames }
}

/// Three parts of the test card at 32×32: 5 + 4 + 8 frames, 4 steps each.
fn storyboard() -> Request {
    Request {
        segments: vec![part("red", Some(5)), part("green", Some(4)), part("blue", Some(8))],
        width: Some(32),
        height: Some(32),
        steps: Some(4),
        seed: Some(3),
        model: Some("testcard".into()),
        ..Default::default()
    }
}

#[test]
fn a_storyboard_is_one_job_with_one_rising_progress_bar_and_its_parts_listed() {
    let e = engine();
    let id = e.submit(Request { preview_every: Some(2), ..storyboard() }).unwrap();
    let status = e.wait(id, WAIT).unwrap();
    assert_eq!(status.state, JobState::Succeeded, "{:?}", status.error);
    assert_eq!(status.progress, 1.0);
    let video = e.result(id).unwrap();
    assert_eq!(video.frames.num_frames, 17, "5 + 4 + 8 frames, none repeated at a join");
    assert_eq!(video.metadata.num_frames, 17);
    let parts: Vec<(&str, u32, u32, u64)> =
        video.metadata.segments.iter().map(|s| (s.prompt.as_str(), s.start_frame, s.frames, s.seed)).collect();
    assert_eq!(parts, [("red", 0, 5, 3), ("green", 5, 4, 4), ("blue", 9, 8, 5)]);
    assert!(video.metadata.segments[0].color_match.is_none(), "the first part has no join");
    assert!(video.metadata.segments[1..].iter().all(|s| s.color_match.is_some()));
    // No frame is repeated at a join: the first frame a part adds is a new one.
    for join in [5, 9] {
        assert_ne!(video.frames.frame(join), video.frames.frame(join - 1), "frame {join} repeats the one before");
    }

    let events = e.events(id, 0).unwrap();
    let mut last = 0.0;
    let mut progress_events = 0;
    for ev in &events {
        if let EventKind::Progress { progress, .. } = ev.kind {
            assert!(progress >= last - 1e-9, "progress went back: {progress} < {last}");
            last = progress;
            progress_events += 1;
        }
    }
    assert!(progress_events >= 12, "a progress event for each of the 3 × 4 steps at least");
    let previews: Vec<u32> = events
        .iter()
        .filter_map(|ev| if let EventKind::Preview { step, .. } = ev.kind { Some(step) } else { None })
        .collect();
    assert_eq!(previews, [2, 4, 6, 8, 10, 12], "a preview every 2 of each part's 4 steps, counted over the parts");
    let steps: Vec<(u32, u32)> = events
        .iter()
        .filter_map(|ev| match ev.kind {
            EventKind::Progress { step, steps, .. } if steps > 0 => Some((step, steps)),
            _ => None,
        })
        .collect();
    assert!(steps.windows(2).all(|w| w[1].0 >= w[0].0), "the step count only rises: {steps:?}");
    assert!(steps.iter().all(|&(_, n)| n == 12) && steps.last() == Some(&(12, 12)), "{steps:?}");
    let quality: Vec<(u32, u32)> = events
        .iter()
        .filter_map(|ev| match &ev.kind {
            EventKind::Quality { segment, segments, .. } => Some((*segment, *segments)),
            _ => None,
        })
        .collect();
    assert_eq!(quality, [(0, 3), (1, 3), (2, 3)]);
    let EventKind::Quality { drift, .. } = &events.iter().find(|ev| ev.kind.name() == "quality").unwrap().kind else {
        unreachable!()
    };
    assert_eq!((drift.color_delta_e, drift.identity), (0.0, 1.0), "the first part has not drifted from itself");
    let frames_events: Vec<u32> = events
        .iter()
        .filter_map(|ev| if let EventKind::Frames { ready, .. } = ev.kind { Some(ready) } else { None })
        .collect();
    assert_eq!(frames_events.last(), Some(&17));

    // The same storyboard is the same video (the cache); another order of its parts is another.
    let again = e.submit(storyboard()).unwrap();
    e.wait(again, WAIT).unwrap();
    assert!(e.result(again).unwrap().metadata.cache_hit);
    let mut swapped = storyboard();
    swapped.segments.swap(1, 2);
    swapped.segments[1].num_frames = Some(8);
    swapped.segments[2].num_frames = Some(4);
    let other = e.submit(swapped).unwrap();
    e.wait(other, WAIT).unwrap();
    let other = e.result(other).unwrap();
    assert!(!other.metadata.cache_hit);
    assert_eq!(other.frames.frame(0), video.frames.frame(0), "the same first part");
    assert_ne!(other.frames.frame(6), video.frames.frame(6));
}

#[test]
fn a_later_part_starts_from_the_last_frame_before_it() {
    // The test card's part renders the frame it is given as its frame 0 (dropped) and moves off it; with the
    // colour match on, what it adds first is nearer the frame before than the same part made alone.
    let e = engine();
    let id = e.submit(storyboard()).unwrap();
    e.wait(id, WAIT).unwrap();
    let video = e.result(id).unwrap();
    let alone = e.submit(Request { segments: vec![part("green", Some(5))], seed: Some(4), ..storyboard() }).unwrap();
    e.wait(alone, WAIT).unwrap();
    let alone = e.result(alone).unwrap();
    let distance = |a: &[u8], b: &[u8]| a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).abs()).sum::<f64>();
    let continued = distance(video.frames.frame(5), video.frames.frame(4));
    let fresh = distance(alone.frames.frame(1), video.frames.frame(4));
    assert!(
        continued < fresh,
        "the continued part's first frame is {continued} from the frame before, a fresh one {fresh}"
    );
}

#[test]
fn a_storyboard_streams_to_files_and_can_be_cancelled_in_any_part() {
    let e = engine();
    let dir = std::env::temp_dir().join(format!("vgen-storyboard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let folder = format!("{}/frames/", dir.display());
    let mp4 = dir.join("story.mp4").to_string_lossy().into_owned();
    let id = e
        .submit(Request { outputs: vec![folder.clone(), mp4.clone()], keep_frames: Some(false), ..storyboard() })
        .unwrap();
    let status = e.wait(id, WAIT).unwrap();
    assert_eq!(status.state, JobState::Succeeded, "{:?}", status.error);
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 17, "one PNG per frame of the whole video");
    assert!(std::fs::metadata(&mp4).unwrap().len() > 0);
    let video = e.result(id).unwrap();
    assert_eq!((video.frames.num_frames, video.metadata.segments.len()), (0, 3), "no frames kept, the parts listed");

    // Cancelled in the second part (after the first part's quality event): no file appears.
    let slow = Request {
        segments: vec![part("red", Some(5)), part("green", Some(4)), part("blue", Some(4))],
        steps: Some(200),
        outputs: vec![dir.join("cancelled.mp4").to_string_lossy().into_owned()],
        seed: Some(9),
        ..storyboard()
    };
    let id = e.submit(slow).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !e.events(id, 0).unwrap().iter().any(|ev| ev.kind.name() == "quality") {
        assert!(std::time::Instant::now() < deadline, "the first part never finished");
        std::thread::sleep(Duration::from_millis(2));
    }
    e.cancel(id).unwrap();
    let status = e.wait(id, WAIT).unwrap();
    assert_eq!(status.state, JobState::Cancelled);
    assert!(!dir.join("cancelled.mp4").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn one_long_prompt_becomes_parts_of_the_native_length() {
    let e = engine();
    let id = e
        .submit(Request {
            num_frames: Some(41),
            steps: Some(2),
            width: Some(32),
            height: Some(32),
            model: Some("testcard".into()),
            ..Request::new("a long card")
        })
        .unwrap();
    e.wait(id, WAIT).unwrap();
    let video = e.result(id).unwrap();
    assert_eq!(video.frames.num_frames, 41);
    let frames: Vec<(u32, u32)> = video.metadata.segments.iter().map(|s| (s.start_frame, s.frames)).collect();
    assert_eq!(frames, [(0, 17), (17, 16), (33, 8)], "17 native frames, then 16 after each given frame");
}

#[test]
fn bad_storyboards_are_refused_with_what_to_change() {
    let e = engine();
    let refused = |r: Request| {
        let err = e.submit(r).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
        err.message().to_string()
    };
    let both = refused(Request { prompt: "a card".into(), ..storyboard() });
    assert!(both.contains("give prompt or segments, not both"), "{both}");
    let mut bad = storyboard();
    bad.segments[1].num_frames = Some(10);
    let m = refused(bad);
    assert!(m.contains("segments[1].num_frames 10") && m.contains("8 or 12"), "{m}");
    let mut bad = storyboard();
    bad.segments[0].num_frames = Some(6);
    let m = refused(bad);
    assert!(m.contains("segments[0].num_frames 6") && m.contains("5 or 9"), "{m}");
    let mut bad = storyboard();
    bad.segments[2].prompt = "  ".into();
    assert!(refused(bad).contains("segments[2].prompt is empty"));
    let m = refused(Request { num_frames: Some(9), ..storyboard() });
    assert!(m.contains("num_frames 9 disagrees with the segments' 17 frames"), "{m}");
    let m = refused(Request { model: Some("noop".into()), ..storyboard() });
    assert!(m.contains("noop cannot continue from a frame"), "{m}");
    let long = Request {
        segments: (0..20).map(|i| part(&format!("p{i}"), Some(if i == 0 { 17 } else { 16 }))).collect(),
        ..storyboard()
    };
    let m = refused(long);
    assert!(m.contains("frames in all; the limit is 257"), "{m}");
    let json = Request::from_json(r#"{"segments": ["a", {"prompt": "b", "num_frames": 4}], "color_match": false}"#);
    let parsed = json.unwrap();
    assert_eq!(parsed.segments, [part("a", None), part("b", Some(4))]);
    let e2 = Request::from_json(r#"{"segments": [{"prompt": "b", "frames": 4}]}"#).unwrap_err();
    assert!(e2.message().contains("a segment is a prompt or"), "{e2}");
    // A single segment is a plain request for its prompt.
    let one = e.submit(Request { segments: vec![part("just one", Some(5))], ..storyboard() }).unwrap();
    e.wait(one, WAIT).unwrap();
    let one = e.result(one).unwrap();
    assert_eq!((one.metadata.prompt.as_str(), one.frames.num_frames), ("just one", 5));
    assert!(one.metadata.segments.is_empty());
}

#[test]
fn memory_stays_flat_in_the_length_when_no_frames_are_kept() {
    // Twelve parts at 256×256 are 193 frames, 36 MiB of pixels; two parts are 33. Written only to a folder of
    // PNGs, the longer one must not hold its frames: the process's peak grows by less than two thirds of the
    // difference (measured: 10 MiB of 30, 2-core EPYC).
    let e = engine();
    let dir = std::env::temp_dir().join(format!("vgen-storyboard-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let peak = |parts: usize, name: &str| {
        let request = Request {
            segments: (0..parts).map(|i| part(&format!("card {i}"), Some(if i == 0 { 17 } else { 16 }))).collect(),
            width: Some(256),
            height: Some(256),
            steps: Some(1),
            seed: Some(1),
            model: Some("testcard".into()),
            outputs: vec![format!("{}/{name}/", dir.display())],
            keep_frames: Some(false),
            ..Default::default()
        };
        let id = e.submit(request).unwrap();
        assert_eq!(e.wait(id, WAIT).unwrap().state, JobState::Succeeded);
        e.result(id).unwrap().metadata.peak_rss_bytes
    };
    peak(2, "warm");
    let short = peak(2, "short");
    let long = peak(12, "long");
    let pixels: u64 = (193 - 33) * 256 * 256 * 3;
    eprintln!("peak RSS: {} MiB for 2 parts, {} MiB for 12", short >> 20, long >> 20);
    assert!(long < short + pixels * 2 / 3, "12 parts peaked {} MiB above 2 parts", (long.saturating_sub(short)) >> 20);
    assert_eq!(std::fs::read_dir(dir.join("long")).unwrap().count(), 193);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_length_past_the_limit_is_refused_before_it_is_split() {
    let e = engine();
    let started = std::time::Instant::now();
    let request = Request { num_frames: Some(4_294_967_293), model: Some("testcard".into()), ..Request::new("long") };
    let err = e.submit(request).unwrap_err();
    assert!(err.message().contains("above the limit of 257"), "{err}");
    assert!(started.elapsed() < Duration::from_millis(500), "refused in {:?}", started.elapsed());
}
