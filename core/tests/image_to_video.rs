//! Image-to-video through the engine and the command, on the fixtures' tiny random Wan made a TI2V model
//! (`expand_timesteps`; `wan_parity.rs` checks the same path number for number against diffusers): an image is
//! decoded, resized and conditioned on, its pixels are part of the cache key and the idempotency check, and every
//! image a model cannot take is refused before any work, naming the field.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use vgen_core::engine::image::ImageInput;
use vgen_core::engine::{EngineConfig, Request};
use vgen_core::models::wan::pipeline::WanModel;
use vgen_core::{Device, Engine, ErrorCode, JobState};

const WAIT: Option<Duration> = Some(Duration::from_secs(120));

/// The fixtures' tiny Wan with `expand_timesteps`, named `tiny-ti2v`, in a folder of its own.
fn tiny_ti2v(tag: &str) -> PathBuf {
    let dir = scratch(tag).join("tiny-ti2v");
    common::copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wan/tiny-wan"), &dir);
    let index = dir.join("model_index.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    json["expand_timesteps"] = true.into();
    std::fs::write(&index, json.to_string()).unwrap();
    let serving =
        r#"{"name": "tiny-ti2v", "max_sequence_length": 16, "width": 32, "height": 32, "num_frames": 9, "steps": 2}"#;
    std::fs::write(dir.join("vgen.json"), serving).unwrap();
    dir
}

fn engine(tag: &str) -> Engine {
    let mut models = common::test_models();
    models.insert(Arc::new(WanModel::open(&tiny_ti2v(tag)).unwrap()));
    let config = EngineConfig { devices: vec![Device::Cpu], ..EngineConfig::default() };
    Engine::with_models(config, models).unwrap()
}

/// A red square (16 px) on black, its top-left corner at (x, y), as the world of the model's training draws it.
fn square(width: u32, height: u32, x: u32, y: u32) -> Vec<u8> {
    let mut rgb = vec![0u8; (width * height * 3) as usize];
    for row in y..y + 16 {
        for col in x..x + 16 {
            let at = ((row * width + col) * 3) as usize;
            rgb[at..at + 3].copy_from_slice(&[230, 40, 40]);
        }
    }
    rgb
}

fn write_png(path: &Path, width: u32, height: u32, rgb: &[u8]) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut e = png::Encoder::new(file, width, height);
    e.set_color(png::ColorType::Rgb);
    e.write_header().unwrap().write_image_data(rgb).unwrap();
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vgen-i2v-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn request(image: &Path, seed: u64) -> Request {
    Request {
        model: Some("tiny-ti2v".into()),
        image: Some(ImageInput::Path(image.to_string_lossy().into_owned())),
        seed: Some(seed),
        ..Request::new("a red square moving right")
    }
}

#[test]
fn an_image_is_conditioned_on_and_its_pixels_are_part_of_the_cache_key() {
    let e = engine("first");
    let info = e.models().summaries().into_iter().find(|m| m.name == "tiny-ti2v").unwrap();
    assert!(info.conditioning.image && !info.conditioning.last_image, "a TI2V model takes an image, not a last frame");
    let dir = scratch("first");
    let start = dir.join("start.png");
    write_png(&start, 32, 32, &square(32, 32, 4, 8));
    let id = e.submit(request(&start, 1)).unwrap();
    let status = e.wait(id, WAIT).unwrap();
    assert_eq!(status.state, JobState::Succeeded, "{status:?}");
    let video = e.result(id).unwrap();
    assert_eq!((video.frames.num_frames, video.frames.width, video.frames.height), (9, 32, 32));
    // Without the image, the same prompt and seed make another video.
    let text = e.submit(Request { image: None, ..request(&start, 1) }).unwrap();
    e.wait(text, WAIT).unwrap();
    assert_ne!(e.result(text).unwrap().frames, video.frames, "the image changes the video");
    // The same request again is served from the cache; another image is another video.
    let again = e.submit(request(&start, 1)).unwrap();
    assert!(e.wait(again, WAIT).unwrap().cache_hit);
    let other = dir.join("other.png");
    write_png(&other, 32, 32, &square(32, 32, 12, 4));
    let moved = e.submit(request(&other, 1)).unwrap();
    assert!(!e.wait(moved, WAIT).unwrap().cache_hit);
    assert_ne!(e.result(moved).unwrap().frames, video.frames);
    // The same pixels as raw RGB8 through JSON: the same video, from the cache.
    let json = serde_json::json!({
        "prompt": "a red square moving right", "model": "tiny-ti2v", "seed": 1,
        "image": {"pixels": {"width": 32, "height": 32, "stride": 96, "format": "rgb8",
                             "base64": base64_of(&square(32, 32, 4, 8))}}
    });
    let raw = e.submit(Request::from_json(&json.to_string()).unwrap()).unwrap();
    assert!(e.wait(raw, WAIT).unwrap().cache_hit, "raw pixels and the PNG are one image");
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn an_image_of_another_size_is_stretched_to_the_video() {
    let e = engine("size");
    let dir = scratch("size");
    let start = dir.join("wide.png");
    write_png(&start, 64, 48, &square(64, 48, 8, 16));
    let id = e.submit(request(&start, 2)).unwrap();
    assert_eq!(e.wait(id, WAIT).unwrap().state, JobState::Succeeded);
    assert_eq!(e.result(id).unwrap().frames.width, 32);
}

#[test]
fn the_command_animates_an_image_and_refuses_one_for_a_text_model() {
    let dir = scratch("cli");
    let model = tiny_ti2v("cli");
    let start = dir.join("start.png");
    write_png(&start, 32, 32, &square(32, 32, 4, 8));
    let out = dir.join("clip.mp4");
    let run =
        |args: &[&std::ffi::OsStr]| std::process::Command::new(env!("CARGO_BIN_EXE_vgen")).args(args).output().unwrap();
    let ok = run(&[
        "generate".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--image".as_ref(),
        start.as_os_str(),
        "--prompt".as_ref(),
        "a cat".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(std::fs::metadata(&out).unwrap().len() > 0);
    let refused = run(&[
        "generate".as_ref(),
        "--model".as_ref(),
        "noop".as_ref(),
        "--image".as_ref(),
        start.as_os_str(),
        "--prompt".as_ref(),
        "a cat".as_ref(),
        "--out".as_ref(),
        dir.join("no.mp4").as_os_str(),
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("image: noop makes video from text only"), "{stderr}");
}

#[test]
fn images_a_model_cannot_take_are_refused_before_any_work_naming_the_field() {
    let e = engine("refuse");
    let dir = scratch("refuse");
    let start = dir.join("start.png");
    write_png(&start, 32, 32, &square(32, 32, 8, 8));
    let path = ImageInput::Path(start.to_string_lossy().into_owned());
    let cases = [
        (Request { model: Some("noop".into()), image: Some(path.clone()), ..Request::new("x") }, "image: noop"),
        (Request { last_image: Some(path.clone()), ..request(&start, 1) }, "last_image: tiny-ti2v"),
        (Request { image: None, last_image: Some(path.clone()), ..request(&start, 1) }, "last_image needs image"),
        (
            Request { image: Some(ImageInput::Base64("bm90IGFuIGltYWdl".into())), ..request(&start, 1) },
            "image: not a PNG",
        ),
        (
            Request { image: Some(ImageInput::Path("/nonexistent.png".into())), ..request(&start, 1) },
            "image: cannot read",
        ),
    ];
    for (r, why) in cases {
        let err = e.submit(r).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{why}: {err}");
        assert!(err.message().contains(why), "{why}: {err}");
    }
    assert_eq!(e.metrics().submitted, 0, "nothing was queued");
    // One idempotency key, one path, but the file's pixels changed: a different request.
    let keyed = Request { idempotency_key: Some("k".into()), ..request(&start, 1) };
    e.submit(keyed.clone()).unwrap();
    write_png(&start, 32, 32, &square(32, 32, 14, 14));
    assert_eq!(e.submit(keyed).unwrap_err().code(), ErrorCode::AlreadyExists);
}

/// The fixtures' tiny Wan2.1 image-to-video model (CLIP branch, 36 channels), or its first–last frame variant, in a
/// models folder of its own: `tiny-wan` with `tiny-wan-i2v` (and `tiny-wan-flf2v`) laid over it.
fn tiny_wan21(tag: &str, flf2v: bool) -> PathBuf {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wan");
    let dir = scratch(tag).join(if flf2v { "tiny-flf2v" } else { "tiny-i2v" });
    common::copy_dir(&fixtures.join("tiny-wan"), &dir);
    common::copy_dir(&fixtures.join("tiny-wan-i2v"), &dir);
    if flf2v {
        common::copy_dir(&fixtures.join("tiny-wan-flf2v"), &dir);
    }
    dir
}

#[test]
fn wan21_image_to_video_and_first_last_frame_run_and_refuse_what_they_cannot_do() {
    let mut models = common::test_models();
    models.insert(Arc::new(WanModel::open(&tiny_wan21("wan21", false)).unwrap()));
    models.insert(Arc::new(WanModel::open(&tiny_wan21("wan21", true)).unwrap()));
    let e =
        Engine::with_models(EngineConfig { devices: vec![Device::Cpu], ..EngineConfig::default() }, models).unwrap();
    let dir = scratch("wan21");
    let (start, end) = (dir.join("start.png"), dir.join("end.png"));
    write_png(&start, 48, 40, &square(48, 40, 4, 8)); // not the video's size: stretched for the VAE, cropped for CLIP
    write_png(&end, 32, 32, &square(32, 32, 14, 8));
    let path = |p: &Path| Some(ImageInput::Path(p.to_string_lossy().into_owned()));
    let i2v = |image: Option<ImageInput>| Request {
        model: Some("tiny-i2v".into()),
        image,
        seed: Some(3),
        ..Request::new("a red square moving right")
    };
    let flf2v =
        |last: Option<ImageInput>| Request { model: Some("tiny-flf2v".into()), last_image: last, ..i2v(path(&start)) };
    for r in [i2v(path(&start)), flf2v(path(&end))] {
        let id = e.submit(r).unwrap();
        let status = e.wait(id, WAIT).unwrap();
        assert_eq!(status.state, JobState::Succeeded, "{status:?}");
        let video = e.result(id).unwrap();
        assert_eq!((video.frames.num_frames, video.frames.width, video.frames.height), (9, 32, 32));
    }
    // Another image is another video (through the condition latents and CLIP both).
    let a = e.submit(i2v(path(&start))).unwrap();
    let b = e.submit(i2v(path(&end))).unwrap();
    e.wait(a, WAIT).unwrap();
    e.wait(b, WAIT).unwrap();
    assert_ne!(e.result(a).unwrap().frames, e.result(b).unwrap().frames);
    let submitted = e.metrics().submitted;
    for (r, why) in [
        (i2v(None), "image: tiny-i2v animates an image"),
        (Request { last_image: path(&end), ..i2v(path(&start)) }, "last_image: tiny-i2v"),
        (flf2v(None), "last_image: tiny-flf2v makes a video between a first and a last frame"),
    ] {
        let err = e.submit(r).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{why}: {err}");
        assert!(err.message().contains(why), "{why}: {err}");
    }
    assert_eq!(e.metrics().submitted, submitted, "nothing more was queued");
}

#[test]
fn the_command_runs_wan21_image_to_video_and_lists_what_each_model_makes() {
    let dir = scratch("cli21");
    let models = dir.join("models");
    for flf2v in [false, true] {
        let made = tiny_wan21("cli21", flf2v);
        common::copy_dir(&made, &models.join(made.file_name().unwrap()));
    }
    let start = dir.join("start.png");
    write_png(&start, 32, 32, &square(32, 32, 4, 8));
    let out = dir.join("clip.mp4");
    let vgen = || {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_vgen"));
        c.env("VGEN_MODELS", &models);
        c
    };
    let ok = vgen()
        .args(["generate", "--model", "tiny-i2v", "--prompt", "a cat", "--image"])
        .arg(&start)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(std::fs::metadata(&out).unwrap().len() > 0);
    let listed = String::from_utf8(vgen().arg("models").output().unwrap().stdout).unwrap();
    let row =
        |name: &str| listed.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{listed}")).to_string();
    assert!(row("tiny-i2v ").contains(" image "), "{listed}");
    assert!(row("tiny-flf2v").contains("first-last frame"), "{listed}");
}
