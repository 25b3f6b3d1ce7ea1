//! A Wan folder with a defect gives a clear error naming the file and tensor, never a panic; a good one runs
//! through the engine like any model.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use vgen_core::engine::{EngineConfig, Request};
use vgen_core::models::{Models, wan::pipeline::WanModel};
use vgen_core::{Device, Engine, ErrorCode, JobState};

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wan/tiny-wan")
}

/// A private copy of the tiny model to break.
fn copy(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vgen-wan-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::tiny_wan(&dir, "tiny-wan", 9);
    dir
}

/// Opens the folder and loads its weights; returns the error.
fn load_error(dir: &Path) -> vgen_core::Error {
    match WanModel::open(dir) {
        Err(e) => e,
        Ok(m) => m.components(Device::Cpu).err().expect("a broken folder must not load"),
    }
}

#[test]
fn a_good_folder_generates_through_the_engine() {
    let dir = copy("good");
    let mut models = Models::default();
    models.insert(Arc::new(WanModel::open(&dir).unwrap()));
    let e = Engine::with_models(EngineConfig { devices: vec![Device::Cpu], ..Default::default() }, models).unwrap();
    let id = e.submit(Request { seed: Some(7), preview_every: Some(1), ..Request::new("a cat and a dog") }).unwrap();
    let s = e.wait(id, Some(std::time::Duration::from_secs(60))).unwrap();
    assert_eq!(s.state, JobState::Succeeded, "{:?}", s.error);
    let v = e.result(id).unwrap();
    assert_eq!((v.frames.num_frames, v.frames.height, v.frames.width), (9, 32, 32));
    assert_eq!(v.metadata.model, "tiny-wan");
    let previews = e.events(id, 0).unwrap().iter().filter(|ev| ev.kind.name() == "preview").count();
    assert_eq!(previews, 2);

    // Words the vocabulary lacks are ignored, and the host is told which, once, as a warning event.
    let id = e.submit(Request { seed: Some(7), ..Request::new("a cat and a dog 🎈") }).unwrap();
    assert_eq!(e.wait(id, Some(std::time::Duration::from_secs(60))).unwrap().state, JobState::Succeeded);
    let warnings: Vec<String> = e
        .events(id, 0)
        .unwrap()
        .into_iter()
        .filter_map(|ev| match ev.kind {
            vgen_core::engine::EventKind::Warning { message } => Some(message),
            _ => None,
        })
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("🎈") && warnings[0].contains("ignored"), "{warnings:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_truncated_misshaped_and_pickle_weights_are_named() {
    let dir = copy("missing");
    std::fs::remove_file(dir.join("vae/diffusion_pytorch_model.safetensors")).unwrap();
    let e = load_error(&dir);
    assert_eq!(e.code(), ErrorCode::NotFound);
    assert!(e.message().contains("vae") && e.message().contains("diffusion_pytorch_model.safetensors"), "{e}");

    let dir = copy("pickle");
    std::fs::rename(dir.join("vae/diffusion_pytorch_model.safetensors"), dir.join("vae/diffusion_pytorch_model.bin"))
        .unwrap();
    let e = load_error(&dir);
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert!(e.message().contains("pickle") && e.message().contains(".bin"), "{e}");

    let dir = copy("truncated");
    let path = dir.join("transformer/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_error(&dir);
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert!(e.message().contains("transformer") && e.message().contains("truncated"), "{e}");

    let dir = copy("misshaped");
    let cfg = dir.join("transformer/config.json");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("\"ffn_dim\": 48", "\"ffn_dim\": 50");
    std::fs::write(&cfg, text).unwrap();
    let e = load_error(&dir);
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert!(e.message().contains("ffn") && e.message().contains("shape"), "{e}");

    let dir = copy("badconfig");
    let cfg = dir.join("vae/config.json");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("\"z_dim\": 16", "\"z_dim\": \"sixteen\"");
    std::fs::write(&cfg, text).unwrap();
    let e = load_error(&dir);
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert!(e.message().contains("vae/config.json") && e.message().contains("z_dim"), "{e}");

    let dir = copy("notokenizer");
    std::fs::remove_file(dir.join("tokenizer/tokenizer.json")).unwrap();
    let e = load_error(&dir);
    assert_eq!(e.code(), ErrorCode::NotFound);
    assert!(e.message().contains("tokenizer.json"), "{e}");
    for name in ["missing", "pickle", "truncated", "misshaped", "badconfig", "notokenizer"] {
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("vgen-wan-{name}-{}", std::process::id())));
    }
}

#[test]
fn sharded_weights_load_through_their_index() {
    let dir = copy("sharded");
    let folder = dir.join("transformer");
    let single = folder.join("diffusion_pytorch_model.safetensors");
    let tensors = tch::Tensor::read_safetensors(&single).unwrap();
    std::fs::remove_file(&single).unwrap();
    let (a, b) = tensors.split_at(tensors.len() / 2);
    let mut map = serde_json::Map::new();
    for (i, part) in [a, b].iter().enumerate() {
        let file = format!("diffusion_pytorch_model-0000{}-of-00002.safetensors", i + 1);
        tch::Tensor::write_safetensors(part, folder.join(&file)).unwrap();
        for (name, _) in part.iter() {
            map.insert(name.clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(folder.join("diffusion_pytorch_model.safetensors.index.json"), index.to_string()).unwrap();
    let sharded = WanModel::open(&dir).unwrap();
    let whole = WanModel::open(&tiny()).unwrap();
    let (s, w) = (sharded.components(Device::Cpu).unwrap(), whole.components(Device::Cpu).unwrap());
    let _g = tch::no_grad_guard();
    let x = tch::Tensor::randn([1, 16, 1, 4, 4], (tch::Kind::Float, tch::Device::Cpu));
    let t = tch::Tensor::from_slice(&[500.0f32]);
    let text = tch::Tensor::randn([1, 4, 32], (tch::Kind::Float, tch::Device::Cpu));
    let diff = (s.transformer.forward(&x, &t, &text, None).unwrap()
        - w.transformer.forward(&x, &t, &text, None).unwrap())
    .abs()
    .max();
    assert_eq!(diff.double_value(&[]), 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}
