//! Expert swap through the model (Wan2.2 A14B, tiny): with the experts in host memory and lent to the device one
//! at a time, a job makes the same video as with both resident, swapping twice; jobs on two workers of one device
//! share the resident expert and get their own videos; and the memory plan chooses the swap on a GPU exactly when
//! both experts would not fit but one does, before block offload (the residency rules are unit-tested in
//! `models::expert_swap`).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use vgen_core::engine::{EngineConfig, Limits, Request, validate_request};
use vgen_core::models::Model;
use vgen_core::models::wan::pipeline::WanModel;
use vgen_core::{Device, Engine, JobState};

/// The tiny A14B (tiny-wan with a second expert laid over it) in a folder of its own, named `tag`, with `offload`.
fn a14b(tag: &str, offload: &str) -> PathBuf {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wan");
    let dir = std::env::temp_dir().join(format!("vgen-expert-swap-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::copy_dir(&fixtures.join("tiny-wan"), &dir);
    common::copy_dir(&fixtures.join("tiny-wan22-a14b"), &dir);
    let serving = format!(
        r#"{{"name": "{tag}", "max_sequence_length": 16, "width": 32, "height": 32, "num_frames": 5, "steps": 4, "offload": "{offload}"}}"#
    );
    std::fs::write(dir.join("vgen.json"), serving).unwrap();
    dir
}

fn run(engine: &Engine, model: &str, seed: u64) -> Vec<u8> {
    let id = engine.submit(Request { model: Some(model.into()), seed: Some(seed), ..Request::new("a cat") }).unwrap();
    let status = engine.wait(id, Some(Duration::from_secs(120))).unwrap();
    assert_eq!(status.state, JobState::Succeeded, "{status:?}");
    engine.result(id).unwrap().frames.data().to_vec()
}

#[test]
fn swapped_experts_make_the_same_video_two_swaps_a_job() {
    let _serial = common::serial();
    let mut models = common::test_models();
    let swapped = Arc::new(WanModel::open(&a14b("swapped", "experts")).unwrap());
    models.insert(swapped.clone());
    models.insert(Arc::new(WanModel::open(&a14b("resident", "off")).unwrap()));
    let engine =
        Engine::with_models(EngineConfig { devices: vec![Device::Cpu], ..EngineConfig::default() }, models).unwrap();
    assert_eq!(run(&engine, "swapped", 3), run(&engine, "resident", 3), "the same weights, one expert at a time");
    let components = swapped.components(Device::Cpu).unwrap();
    let swap = components.expert_swap.as_ref().expect("the experts are swapped");
    assert_eq!(swap.swaps(), 2, "in for the high-noise steps, then the low-noise expert for the rest");
    let [high, low] = swap.expert_bytes();
    assert!(high > 400_000 && low > 400_000, "{high} {low}");
    run(&engine, "swapped", 4);
    assert_eq!(swap.swaps(), 4, "two a job, however many steps");
    let resident = engine.memory_plan(&Request { model: Some("resident".into()), ..Request::new("a cat") }).unwrap();
    assert!(!resident[0].1.expert_swap);
    let plan = engine.memory_plan(&Request { model: Some("swapped".into()), ..Request::new("a cat") }).unwrap();
    assert!(plan[0].1.expert_swap && plan[0].1.offload_blocks.is_none(), "{plan:?}");
}

#[test]
fn jobs_on_two_workers_share_the_resident_expert_and_each_get_their_own_video() {
    let _serial = common::serial();
    let mut models = common::test_models();
    models.insert(Arc::new(WanModel::open(&a14b("shared", "experts")).unwrap()));
    models.insert(Arc::new(WanModel::open(&a14b("alone", "off")).unwrap()));
    let config = EngineConfig { devices: vec![Device::Cpu], workers_per_device: 2, ..EngineConfig::default() };
    let engine = Engine::with_models(config, models).unwrap();
    let ids: Vec<_> = (0..4)
        .map(|seed| {
            engine.submit(Request { model: Some("shared".into()), seed: Some(seed), ..Request::new("a cat") }).unwrap()
        })
        .collect();
    for (seed, id) in ids.into_iter().enumerate() {
        let status = engine.wait(id, Some(Duration::from_secs(120))).unwrap();
        assert_eq!(status.state, JobState::Succeeded, "{status:?}");
        let got = engine.result(id).unwrap().frames.data().to_vec();
        assert_eq!(got, run(&engine, "alone", seed as u64), "seed {seed}: the video of both experts resident");
    }
}

#[test]
fn the_memory_plan_swaps_experts_on_a_gpu_when_one_fits_and_both_do_not_before_offloading_blocks() {
    let m = WanModel::open(&a14b("auto", "auto")).unwrap();
    let params = validate_request(&Request::new("a cat"), m.info(), &Limits::default(), || 0).unwrap();
    let gpu = Device::Cuda(0);
    let whole = m.memory_plan(&params, gpu, None);
    assert!(!whole.expert_swap && whole.offload_blocks.is_none(), "no budget known: nothing to fit");
    assert!(!m.memory_plan(&params, gpu, Some(whole.bytes)).expert_swap, "both fit");
    let swap = m.memory_plan(&params, gpu, Some(whole.bytes - 1));
    assert!(swap.expert_swap && swap.offload_blocks.is_none(), "{swap:?}");
    // One expert's weight file (511,736 bytes) leaves the device.
    assert_eq!(whole.bytes - swap.bytes, 511_736);
    // Short of even that: the blocks of both are offloaded (tiny-wan has 2 blocks, both resident at once: nothing
    // saved), or nothing fits and admission refuses, as before.
    let tighter = m.memory_plan(&params, gpu, Some(swap.bytes - 1));
    assert!(!tighter.expert_swap, "{tighter:?}");
    assert!(!m.memory_plan(&params, Device::Cpu, Some(1)).expert_swap, "the CPU's memory is where they would go");
    let single = std::env::temp_dir().join(format!("vgen-expert-swap-{}-single", std::process::id()));
    let _ = std::fs::remove_dir_all(&single);
    common::copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wan/tiny-wan"), &single);
    std::fs::write(single.join("vgen.json"), r#"{"offload": "experts"}"#).unwrap();
    let refused = WanModel::open(&single).err().expect("one transformer has nothing to swap");
    assert!(refused.message().contains("offload \"experts\" is for a model with two experts"), "{refused}");
    for dir in [single, a14b("auto", "auto")] {
        let _ = std::fs::remove_dir_all(dir);
    }
}
