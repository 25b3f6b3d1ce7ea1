//! Block offload through the model: forced by `vgen.json`, a transformer whose blocks live on the host and are
//! lent to the device two at a time makes the same video; and the memory plan chooses offload on a GPU exactly
//! when the model would not fit its budget otherwise (the schedule itself is unit-tested in `models::offload`).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use vgen_core::engine::{EngineConfig, Limits, Request, validate_request};
use vgen_core::models::Model;
use vgen_core::models::wan::pipeline::WanModel;
use vgen_core::{Device, Engine, JobState};

fn model(tag: &str, offload: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vgen-offload-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wan/tiny-wan"), &dir);
    let serving = format!(
        r#"{{"name": "{tag}", "max_sequence_length": 16, "width": 32, "height": 32, "num_frames": 5, "steps": 2, "offload": "{offload}"}}"#
    );
    std::fs::write(dir.join("vgen.json"), serving).unwrap();
    dir
}

#[test]
fn offloaded_blocks_make_the_same_video() {
    let mut models = common::test_models();
    let offloaded = Arc::new(WanModel::open(&model("offloaded", "blocks")).unwrap());
    models.insert(offloaded.clone());
    models.insert(Arc::new(WanModel::open(&model("resident", "off")).unwrap()));
    let engine =
        Engine::with_models(EngineConfig { devices: vec![Device::Cpu], ..EngineConfig::default() }, models).unwrap();
    let run = |name: &str| {
        let id = engine.submit(Request { model: Some(name.into()), seed: Some(9), ..Request::new("a cat") }).unwrap();
        assert_eq!(engine.wait(id, Some(Duration::from_secs(120))).unwrap().state, JobState::Succeeded);
        engine.result(id).unwrap().frames.data().to_vec()
    };
    assert_eq!(run("offloaded"), run("resident"), "the same weights, lent block by block");
    let components = offloaded.components(Device::Cpu).unwrap();
    let offload = components.transformer.offload().expect("the blocks are offloaded");
    assert_eq!((offload.schedule.blocks, offload.schedule.max_resident()), (2, 2));
    assert!(offload.block_bytes > 0);
    // The engine's memory plan says what the model chose.
    let plans = engine.memory_plan(&Request { model: Some("offloaded".into()), ..Request::new("a cat") }).unwrap();
    assert_eq!(plans.len(), 1);
    assert_eq!(plans[0].1.offload_blocks, Some((2, 2)), "{plans:?}");
    let plans = engine.memory_plan(&Request { model: Some("resident".into()), ..Request::new("a cat") }).unwrap();
    assert_eq!(plans[0].1.offload_blocks, None);
}

/// The shipped model (6 blocks) in a folder of its own, with `offload` set.
fn shipped(tag: &str, offload: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vgen-offload-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes-tiny"), &dir);
    let path = dir.join("vgen.json");
    let mut serving: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    serving["offload"] = offload.into();
    std::fs::write(&path, serving.to_string()).unwrap();
    dir
}

#[test]
fn the_memory_plan_offloads_on_a_gpu_only_when_the_model_would_not_fit_otherwise() {
    let m = WanModel::open(&shipped("auto", "auto")).unwrap();
    let params = validate_request(&Request::new("a cat"), m.info(), &Limits::default(), || 0).unwrap();
    let gpu = Device::Cuda(0);
    let whole = m.memory_plan(&params, gpu, None);
    assert_eq!(whole.offload_blocks, None, "no budget known: nothing to fit");
    assert_eq!(m.memory_plan(&params, gpu, Some(whole.bytes)).offload_blocks, None, "it fits as it is");
    let tight = m.memory_plan(&params, gpu, Some(whole.bytes - 1));
    assert_eq!(tight.offload_blocks, Some((2, 6)), "{tight:?}");
    // 4 of the 6 blocks leave the device: about two thirds of the transformer's 15.9 MB.
    let saved = whole.bytes - tight.bytes;
    assert!((10_000_000..11_000_000).contains(&saved), "saved {saved} bytes");
    // A budget that even offload cannot meet is not met by it: admission refuses the request as before.
    assert_eq!(m.memory_plan(&params, gpu, Some(tight.bytes - 1)).offload_blocks, None);
    let on_cpu = m.memory_plan(&params, Device::Cpu, Some(1));
    assert_eq!(on_cpu.offload_blocks, None, "the CPU's memory is where offload would put the blocks");
    let off = WanModel::open(&shipped("never", "off")).unwrap();
    assert_eq!(off.memory_plan(&params, gpu, Some(whole.bytes - 1)).offload_blocks, None);
}
