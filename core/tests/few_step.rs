//! Few-step sampling and step caching through the engine, on the fixtures' tiny Wan: a request's `sampler` (a
//! fixed timestep list, the other scheduler, a shift) and a model's `vgen.json` sampler, guidance 1, `step_cache`
//! and what each refuses. Diffusers' schedules for the same lists are matched in `wan_parity.rs`.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use vgen_core::engine::{EngineConfig, Request, StepCacheRequest};
use vgen_core::models::{Models, wan::pipeline::WanModel};
use vgen_core::schedulers::{Sampler, SamplerKind};
use vgen_core::{Engine, ErrorCode, Video};

fn models(dir: &std::path::Path) -> Models {
    let mut models = Models::default();
    for (name, serving) in [
        (
            "tiny-wan",
            r#"{"name": "tiny-wan", "max_sequence_length": 16, "width": 32, "height": 32, "num_frames": 5, "steps": 20}"#,
        ),
        // A distilled model's folder: its own sampler, four fixed steps and guidance 1 by default.
        (
            "tiny-wan-4step",
            r#"{"name": "tiny-wan-4step", "max_sequence_length": 16, "width": 32, "height": 32, "num_frames": 5,
                "guidance_scale": 1.0, "sampler": {"kind": "euler", "flow_shift": 5.0, "timesteps": [1000, 750, 500, 250]}}"#,
        ),
    ] {
        let folder = dir.join(name);
        common::tiny_wan(&folder, name, 5);
        std::fs::write(folder.join("vgen.json"), serving).unwrap();
        models.insert(Arc::new(WanModel::open(&folder).unwrap()));
    }
    models
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vgen-few-step-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(engine: &Engine, request: Request) -> Video {
    let id = engine.submit(request).unwrap();
    engine.wait(id, None).unwrap();
    (*engine.result(id).unwrap()).clone()
}

#[test]
fn fixed_timesteps_guidance_one_and_the_step_cache_through_the_engine() {
    let dir = scratch();
    let engine =
        Engine::with_models(EngineConfig { devices: vec![vgen_core::Device::Cpu], ..Default::default() }, models(&dir))
            .unwrap();
    let base = |model: &str| Request { model: Some(model.into()), seed: Some(7), ..Request::new("a cat") };

    // A distilled model's folder samples its own way: four steps, guidance 1 (no unconditional pass).
    let distilled = run(&engine, base("tiny-wan-4step"));
    assert_eq!((distilled.metadata.steps, distilled.metadata.guidance_scale), (4, 1.0));
    // The same settings asked for in a request on the plain model give the same video, bit for bit.
    let sampler =
        Sampler { kind: Some(SamplerKind::Euler), flow_shift: Some(5.0), timesteps: Some(vec![1000, 750, 500, 250]) };
    let asked = run(&engine, Request { sampler: Some(sampler.clone()), guidance_scale: Some(1.0), ..base("tiny-wan") });
    assert_eq!(asked.metadata.steps, 4);
    assert_eq!(asked.frames.data(), distilled.frames.data());
    // Another sampler or another shift is another video.
    let unipc = Sampler { kind: Some(SamplerKind::Unipc), ..sampler.clone() };
    let other = run(&engine, Request { sampler: Some(unipc), guidance_scale: Some(1.0), ..base("tiny-wan") });
    assert_ne!(other.frames.data(), asked.frames.data());

    // The step cache: off gives the uncached video bit for bit; on skips steps after the warm-up and never the
    // last, and says which.
    let plain = run(&engine, base("tiny-wan"));
    let off = run(&engine, Request { step_cache: Some(StepCacheRequest::On(false)), ..base("tiny-wan") });
    assert_eq!(off.frames.data(), plain.frames.data());
    assert!(plain.metadata.steps_skipped.is_empty());
    let cached =
        run(&engine, Request { step_cache: Some(StepCacheRequest::Threshold { threshold: 1.0 }), ..base("tiny-wan") });
    let skipped = &cached.metadata.steps_skipped;
    assert!(!skipped.is_empty(), "a threshold of 1 skips steps on this model");
    assert!(skipped.iter().all(|&s| s > 3 && s < 20), "not the warm-up (3 of 20) nor the last: {skipped:?}");
    assert_ne!(cached.frames.data(), plain.frames.data());

    // What is refused, naming the field.
    let refused = |request: Request, words: &str| {
        let e = engine.submit(request).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
        assert!(e.message().contains(words), "{words:?} not in {e}");
    };
    let with = |timesteps: Vec<u32>| Sampler { timesteps: Some(timesteps), ..Default::default() };
    refused(
        Request { sampler: Some(with(vec![500, 750])), ..base("tiny-wan") },
        "sampler.timesteps must fall strictly",
    );
    refused(
        Request { sampler: Some(with(vec![1001])), ..base("tiny-wan") },
        "sampler.timesteps: 1001 is outside 1..=1000",
    );
    refused(Request { sampler: Some(with(vec![])), ..base("tiny-wan") }, "sampler.timesteps is empty");
    refused(
        Request { sampler: Some(with(vec![900, 100])), steps: Some(3), ..base("tiny-wan") },
        "steps 3 disagrees with the sampler's 2 timesteps",
    );
    let shift = Sampler { flow_shift: Some(-1.0), ..Default::default() };
    refused(Request { sampler: Some(shift), ..base("tiny-wan") }, "sampler.flow_shift -1 is outside (0, 100]");
    refused(
        Request { step_cache: Some(StepCacheRequest::Threshold { threshold: 0.0 }), ..base("tiny-wan") },
        "step_cache.threshold 0 is outside (0, 10]",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
