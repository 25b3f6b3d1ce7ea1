//! Tiled VAE decode through the engine: a request turns it on or off, and a model tiles frames past its pixel
//! budget by itself. (`wan_parity.rs` checks the tiles against diffusers' `enable_tiling()` number for number.)

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use vgen_core::engine::{EngineConfig, Request};
use vgen_core::models::wan::pipeline::WanModel;
use vgen_core::{Device, Engine, JobState};

fn model(tag: &str, serving: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vgen-tiling-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wan/tiny-wan"), &dir);
    std::fs::write(dir.join("vgen.json"), serving).unwrap();
    dir
}

fn frames(engine: &Engine, model: &str, tiling: Option<bool>) -> Vec<u8> {
    let request = Request { model: Some(model.into()), seed: Some(5), vae_tiling: tiling, ..Request::new("a cat") };
    let id = engine.submit(request).unwrap();
    let status = engine.wait(id, Some(Duration::from_secs(120))).unwrap();
    assert_eq!(status.state, JobState::Succeeded, "{status:?}");
    engine.result(id).unwrap().frames.data().to_vec()
}

#[test]
fn a_request_turns_tiling_on_or_off_and_a_model_tiles_past_its_pixel_budget() {
    let common = r#""max_sequence_length": 16, "width": 32, "height": 32, "num_frames": 5, "steps": 2"#;
    // 16-pixel tiles every 8: the 4 x 4 latents of a 32 x 32 frame span 3 x 3 tiles.
    let small_budget = model(
        "small",
        &format!(r#"{{"name": "budget", {common}, "vae_tiling_above_pixels": 512, "vae_tile_pixels": [16, 8]}}"#),
    );
    let default_budget = model("default", &format!(r#"{{"name": "plain", {common}, "vae_tile_pixels": [16, 8]}}"#));
    let mut models = common::test_models();
    models.insert(Arc::new(WanModel::open(&small_budget).unwrap()));
    models.insert(Arc::new(WanModel::open(&default_budget).unwrap()));
    let engine =
        Engine::with_models(EngineConfig { devices: vec![Device::Cpu], ..EngineConfig::default() }, models).unwrap();
    let auto = frames(&engine, "budget", None);
    let whole = frames(&engine, "budget", Some(false));
    let tiled = frames(&engine, "budget", Some(true));
    assert_eq!(auto, tiled, "32 x 32 is past a 512-pixel budget: tiled by itself");
    assert_ne!(auto, whole, "tiles blend where they meet: another video");
    // Under the default budget (832 x 480) the same frame decodes whole unless the request asks for tiles.
    assert_eq!(frames(&engine, "plain", None), whole);
    assert_eq!(frames(&engine, "plain", Some(true)), tiled);
    // Tiling is part of the cache key: asking again for whole frames is served whole.
    assert_eq!(frames(&engine, "budget", Some(false)), whole);
}
