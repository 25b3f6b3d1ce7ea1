//! LoRA adapters against diffusers 0.42.1 (`WanPipeline.load_lora_weights`, `set_adapters`, peft 0.18.0) on the
//! fixtures' tiny Wan: each format people ship (diffusers/PEFT, ComfyUI/kohya with alpha, musubi's underscores,
//! lightx2v's with `diff` and `diff_b`), a scale, and two adapters at once; an adapter at scale 0 gives the base
//! model's output bit for bit; and an adapter for another model is refused naming it and the key. Fixtures:
//! `tools/wan_reference/make_lora_case.py`. The tests run one at a time (`common::serial`): several compare
//! outputs bit for bit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};
use vgen_core::models::lora::merged::MergedSet;
use vgen_core::models::lora::{Adapter, active};
use vgen_core::models::wan::{self, transformer::WanTransformer};
use vgen_core::models::weights::read_config;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wan")
}

fn transformer() -> (tch::nn::VarStore, WanTransformer) {
    let dir = fixtures().join("tiny-wan/transformer");
    wan::load_transformer(&dir, Device::Cpu, read_config(&dir).unwrap()).unwrap()
}

fn adapter(name: &str) -> Arc<Adapter> {
    Arc::new(
        Adapter::open(&fixtures().join("loras").join(format!("{name}.safetensors")), Device::Cpu, Kind::Float).unwrap(),
    )
}

fn forward(model: &WanTransformer, adapters: Vec<(Arc<Adapter>, f64)>) -> Tensor {
    forward_merged(model, adapters, false)
}

/// The transformer's output on case `a` with `adapters`, merged into copies of the layers or applied unmerged.
fn forward_merged(model: &WanTransformer, adapters: Vec<(Arc<Adapter>, f64)>, merged: bool) -> Tensor {
    let c: HashMap<String, Tensor> =
        Tensor::read_safetensors(fixtures().join("cases/transformer.safetensors")).unwrap().into_iter().collect();
    let adapters = adapters.into_iter().map(|(adapter, scale)| active::Applied { adapter, scale, expert: None });
    let set = merged.then(|| Arc::new(MergedSet::new(0)));
    let adapters: Vec<_> = adapters.collect();
    let live = adapters.iter().any(|a| a.scale != 0.0);
    let _scope = active::scoped_for_experts(adapters, set.clone());
    let out = tch::no_grad(|| {
        model.forward(&c["a.hidden_states"], &c["a.timestep"], &c["a.encoder_hidden_states"], None).unwrap()
    });
    if let Some(set) = set {
        assert_eq!(set.merged_layers() > 0, live, "the layers ran from merged copies");
    }
    out
}

#[test]
fn every_format_one_scale_and_two_adapters_match_diffusers() {
    let _serial = common::serial();
    let want: HashMap<String, Tensor> =
        Tensor::read_safetensors(fixtures().join("cases/lora.safetensors")).unwrap().into_iter().collect();
    let (_vs, model) = transformer();
    let linears = model.linears();
    for name in ["peft", "kohya", "musubi", "lightx2v"] {
        adapter(name).check(&linears).unwrap();
    }
    let runs: [(&str, Vec<(&str, f64)>); 7] = [
        ("base", vec![]),
        ("peft", vec![("peft", 1.0)]),
        ("kohya", vec![("kohya", 1.0)]),
        ("kohya.0.7", vec![("kohya", 0.7)]),
        ("musubi", vec![("musubi", 1.0)]),
        ("lightx2v", vec![("lightx2v", 1.0)]),
        ("peft.0.8+kohya.0.5", vec![("peft", 0.8), ("kohya", 0.5)]),
    ];
    for (label, set) in runs {
        for merged in [false, true] {
            let got = forward_merged(&model, set.iter().map(|(n, s)| (adapter(n), *s)).collect(), merged);
            let e = (&got - &want[label]).abs().max().double_value(&[]);
            let moved = (&want[label] - &want["base"]).abs().max().double_value(&[]);
            eprintln!(
                "{label} (merged: {merged}): max abs error {e:.1e} (the adapter moves the output by up to {moved:.2})"
            );
            assert!(e < 1e-4, "{label} (merged: {merged}): max abs error {e:e}");
        }
    }
}

#[test]
fn an_adapter_at_scale_zero_gives_the_base_model_bit_for_bit() {
    let _serial = common::serial();
    let (_vs, model) = transformer();
    let base = forward(&model, vec![]);
    assert!(forward(&model, vec![(adapter("lightx2v"), 0.0)]).equal(&base));
    assert!(!forward(&model, vec![(adapter("lightx2v"), 0.1)]).equal(&base));
    assert!(forward(&model, vec![]).equal(&base), "a scope ends with its job: nothing stays applied");
}

fn write(dir: &Path, name: &str, tensors: &[(&str, Tensor)]) -> PathBuf {
    let path = dir.join(name);
    Tensor::write_safetensors(tensors, &path).unwrap();
    path
}

#[test]
fn adapters_for_another_model_or_malformed_are_refused_naming_the_file_and_key() {
    let _serial = common::serial();
    let dir = std::env::temp_dir().join(format!("vgen-lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_vs, model) = transformer();
    let linears = model.linears();
    let r = |n: i64, m: i64| Tensor::randn([n, m], (Kind::Float, Device::Cpu));
    // tiny-wan is 60 wide: a 64-wide adapter is for another size.
    let other_size = write(
        &dir,
        "wide.safetensors",
        &[
            ("transformer.blocks.0.attn1.to_q.lora_A.weight", r(4, 64)),
            ("transformer.blocks.0.attn1.to_q.lora_B.weight", r(64, 4)),
        ],
    );
    let err = Adapter::open(&other_size, Device::Cpu, Kind::Float).unwrap().check(&linears).unwrap_err().to_string();
    assert!(
        err.contains("wide.safetensors") && err.contains("blocks.0.attn1.to_q") && err.contains("another size"),
        "{err}"
    );
    let other_model = write(
        &dir,
        "deep.safetensors",
        &[
            ("transformer.blocks.7.attn1.to_q.lora_A.weight", r(4, 60)),
            ("transformer.blocks.7.attn1.to_q.lora_B.weight", r(60, 4)),
        ],
    );
    let err = Adapter::open(&other_model, Device::Cpu, Kind::Float).unwrap().check(&linears).unwrap_err().to_string();
    assert!(err.contains("deep.safetensors") && err.contains("blocks.7.attn1.to_q"), "{err}");
    // Every layer the model lacks is counted, the first five listed.
    let layers: Vec<(String, Tensor)> = (7..14)
        .flat_map(|i| {
            let key = format!("transformer.blocks.{i}.attn1.to_q");
            [(format!("{key}.lora_A.weight"), r(4, 60)), (format!("{key}.lora_B.weight"), r(60, 4))]
        })
        .collect();
    let layers: Vec<(&str, Tensor)> = layers.iter().map(|(k, t)| (k.as_str(), t.shallow_clone())).collect();
    let deeper = write(&dir, "deeper.safetensors", &layers);
    let err = Adapter::open(&deeper, Device::Cpu, Kind::Float).unwrap().check(&linears).unwrap_err().to_string();
    assert!(err.contains("7 layers this model does not") && err.contains("and 2 more"), "{err}");
    assert!(err.contains("blocks.10.attn1.to_q") && !err.contains("blocks.9.attn1"), "listed in name order: {err}");
    for (name, tensors, says) in [
        ("half.safetensors", vec![("transformer.blocks.0.attn1.to_q.lora_A.weight", r(4, 60))], "is missing"),
        (
            "rank.safetensors",
            vec![
                ("transformer.blocks.0.attn1.to_q.lora_A.weight", r(4, 60)),
                ("transformer.blocks.0.attn1.to_q.lora_B.weight", r(60, 3)),
            ],
            "rank 4",
        ),
        ("odd.safetensors", vec![("transformer.blocks.0.attn1.to_q.weight", r(60, 60))], "not a LoRA tensor"),
        ("norm.safetensors", vec![("diffusion_model.blocks.0.norm3.diff", r(1, 60).reshape([60]))], "norm"),
        ("dora.safetensors", vec![("transformer.blocks.0.attn1.to_q.dora_scale", r(1, 60))], "DoRA"),
        ("te.safetensors", vec![("lora_te_encoder_block_0.lora_down.weight", r(4, 60))], "text-encoder"),
    ] {
        let path = write(&dir, name, &tensors);
        let err = Adapter::open(&path, Device::Cpu, Kind::Float).unwrap_err().to_string();
        assert!(err.contains(name) && err.contains(says), "{name}: {err}");
    }
    let err = Adapter::open(&dir.join("missing.safetensors"), Device::Cpu, Kind::Float).unwrap_err().to_string();
    assert!(err.contains("missing.safetensors"), "{err}");
}

mod common;

/// Text-encoder adapters (PEFT's `text_encoder.…` keys and kohya's `lora_te_…` with alpha) against peft on
/// transformers' UMT5, unmerged and merged; with a transformer adapter beside them, the text encoder's output is
/// theirs alone.
#[test]
fn text_encoder_adapters_match_peft() {
    let _serial = common::serial();
    use vgen_core::models::wan::pipeline::WanModel;
    let want: HashMap<String, Tensor> =
        Tensor::read_safetensors(fixtures().join("cases/lora.safetensors")).unwrap().into_iter().collect();
    let dir = std::env::temp_dir().join(format!("vgen-lora-te-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::tiny_wan(&dir, "tiny", 5);
    let model = WanModel::open(&dir).unwrap();
    let comps = model.components(vgen_core::Device::Cpu).unwrap();
    let _g = tch::no_grad_guard();
    let encode = |set: Vec<(Arc<Adapter>, f64)>, merged: bool| {
        let set = set.into_iter().map(|(adapter, scale)| active::Applied { adapter, scale, expert: None }).collect();
        let _scope = active::scoped_for_experts(set, merged.then(|| Arc::new(MergedSet::new(0))));
        model.encode_prompts(&comps, &["A cat and a dog."], Device::Cpu).unwrap()
    };
    let base = encode(vec![], false);
    assert!((&base - &want["te.base"]).abs().max().double_value(&[]) < 1e-5);
    for name in ["te_peft", "te_kohya"] {
        let te = adapter(name);
        te.check(&comps.encoder.linears()).unwrap();
        assert!(te.layers.keys().all(|k| k.starts_with("text_encoder.encoder.block.")), "{:?}", te.layers.keys());
        for merged in [false, true] {
            let got = encode(vec![(te.clone(), 1.0), (adapter("peft"), 1.0)], merged);
            let e = (&got - &want[&format!("te.{name}")]).abs().max().double_value(&[]);
            let moved = (&want[&format!("te.{name}")] - &base).abs().max().double_value(&[]);
            eprintln!(
                "{name} (merged: {merged}): max abs error {e:.1e} (the adapter moves the output by up to {moved:.2})"
            );
            assert!(e < 1e-4 && moved > 0.01, "{name} (merged: {merged}): max abs error {e:e}");
        }
    }
    assert!(encode(vec![(adapter("te_peft"), 0.0)], true).equal(&base), "scale 0: the base encoder bit for bit");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Wan2.2 A14B-style (tiny-wan with a second expert): an adapter for the high-noise expert and another for the
/// low-noise one, as diffusers loads them (`load_lora_weights`, with `load_into_transformer_2` for the second),
/// and one adapter in both, over a 2-step run whose first step is the high-noise expert's.
#[test]
fn adapters_for_one_expert_or_both_match_diffusers_on_a_two_expert_model() {
    let _serial = common::serial();
    use vgen_core::models::lora::active::Applied;
    use vgen_core::models::wan::pipeline::{Images, WanModel};
    let want: HashMap<String, Tensor> =
        Tensor::read_safetensors(fixtures().join("cases/lora.safetensors")).unwrap().into_iter().collect();
    let dir = std::env::temp_dir().join(format!("vgen-lora-experts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::copy_dir(&fixtures().join("tiny-wan"), &dir);
    common::copy_dir(&fixtures().join("tiny-wan22-a14b"), &dir);
    let model = WanModel::open(&dir).unwrap();
    let comps = model.components(vgen_core::Device::Cpu).unwrap();
    let _g = tch::no_grad_guard();
    let text = model.encode_prompts(&comps, &["A cat and a dog.", "blurred"], Device::Cpu).unwrap();
    let run = |set: Vec<Applied>, merged: bool| {
        let _scope = active::scoped_for_experts(set, merged.then(|| Arc::new(MergedSet::new(0))));
        let latents = want["a14b.latents"].shallow_clone();
        model.denoise(&comps, latents, &text, 2, 5.0, None, &Images::default(), |_, _, _, _| Ok(())).unwrap().0
    };
    let applied = |name: &str, expert: Option<usize>| Applied { adapter: adapter(name), scale: 1.0, expert };
    for merged in [false, true] {
        let split = run(vec![applied("peft", Some(0)), applied("kohya", Some(1))], merged);
        let both = run(vec![applied("peft", None)], merged);
        for (label, got) in [("a14b.peft-high+kohya-low", &split), ("a14b.peft-both", &both)] {
            let e = (got - &want[label]).abs().max().double_value(&[]);
            eprintln!("{label} (merged: {merged}): max abs error {e:.1e}");
            assert!(e < 1e-4, "{label} (merged: {merged}): max abs error {e:e}");
        }
    }
    let both = run(vec![applied("peft", None)], false);
    let high_only = run(vec![applied("peft", Some(0))], false);
    assert!((&high_only - &both).abs().max().double_value(&[]) > 1e-3, "the low-noise expert's adapter matters");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Requests name adapters by path with scales; the engine applies them to that job alone.
#[test]
fn requests_apply_adapters_to_their_own_jobs_and_bad_ones_are_refused() {
    let _serial = common::serial();
    use std::time::Duration;
    use vgen_core::engine::{EngineConfig, LoraRef, Request};
    use vgen_core::models::wan::pipeline::WanModel;
    use vgen_core::{Engine, ErrorCode, JobState};
    let dir = std::env::temp_dir().join(format!("vgen-lora-engine-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::tiny_wan(&dir, "tiny", 5);
    // The same model with no room for merged weights: its jobs apply adapters unmerged.
    let unmerged_dir = dir.join("unmerged");
    common::tiny_wan(&unmerged_dir, "tiny-unmerged", 5);
    let serving = std::fs::read_to_string(unmerged_dir.join("vgen.json")).unwrap();
    std::fs::write(unmerged_dir.join("vgen.json"), serving.replace("}", r#", "lora_merge_bytes": 0}"#)).unwrap();
    let mut models = common::test_models();
    let tiny = Arc::new(WanModel::open(&dir).unwrap());
    let unmerged = Arc::new(WanModel::open(&unmerged_dir).unwrap());
    models.insert(tiny.clone());
    models.insert(unmerged.clone());
    let engine =
        Engine::with_models(EngineConfig { devices: vec![vgen_core::Device::Cpu], ..Default::default() }, models)
            .unwrap();
    let lora = |name: &str, scale: f64| LoraRef {
        path: Some(fixtures().join("loras").join(format!("{name}.safetensors")).to_string_lossy().into_owned()),
        name: None,
        scale,
        expert: None,
    };
    let run_on = |model: &str, loras: Vec<LoraRef>| {
        let request = Request { model: Some(model.into()), seed: Some(4), loras, ..Request::new("a cat") };
        let id = engine.submit(request).unwrap();
        let status = engine.wait(id, Some(Duration::from_secs(120))).unwrap();
        assert_eq!(status.state, JobState::Succeeded, "{status:?}");
        engine.result(id).unwrap().frames.data().to_vec()
    };
    let run = |loras: Vec<LoraRef>| run_on("tiny", loras);
    let base = run(vec![]);
    assert_eq!(tiny.merged_sets(vgen_core::Device::Cpu), Vec::<u64>::new(), "no adapters, nothing merged");
    let styled = run(vec![lora("lightx2v", 1.0)]);
    assert_ne!(styled, base, "the adapter changes the video");
    // On the CPU the model merges by default: one set, a copy of every layer the adapter touches (tiny-wan's
    // blocks' and head's linear layers, fp32).
    let kept = tiny.merged_sets(vgen_core::Device::Cpu);
    assert!(kept.len() == 1 && kept[0] > 100_000, "{kept:?}");
    assert_eq!(run(vec![lora("lightx2v", 1.0)]), styled, "the kept merged set gives the same video again");
    let applied_unmerged = run_on("tiny-unmerged", vec![lora("lightx2v", 1.0)]);
    assert!(unmerged.merged_sets(vgen_core::Device::Cpu).is_empty(), "lora_merge_bytes 0: nothing merged");
    let differing = styled.iter().zip(&applied_unmerged).filter(|(a, b)| a != b).count();
    let worst = styled.iter().zip(&applied_unmerged).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(
        worst <= 1 && differing * 100 <= styled.len(),
        "merged and unmerged: {differing} values differ, by {worst}"
    );
    assert_eq!(run(vec![lora("lightx2v", 0.0)]), base, "at scale 0, the base model's video bit for bit");
    assert_eq!(run(vec![]), base, "the next job without adapters is the base model's");
    assert_ne!(run(vec![lora("lightx2v", 0.5), lora("peft", 0.5)]), styled);
    assert_ne!(run(vec![lora("te_kohya", 1.0)]), base, "a text-encoder adapter alone changes the video");
    let refused = |loras: Vec<LoraRef>, model: &str| {
        let request = Request { model: Some(model.into()), loras, ..Request::new("a cat") };
        engine.submit(request).unwrap_err()
    };
    let e = refused(vec![lora("lightx2v", 9.0)], "tiny");
    assert!(e.code() == ErrorCode::InvalidArgument && e.message().contains("loras[0]: scale 9"), "{e}");
    let e = refused(vec![lora("nowhere", 1.0)], "tiny");
    assert!(e.message().contains("loras[0]") && e.message().contains("nowhere.safetensors"), "{e}");
    let e = refused(vec![LoraRef { path: None, name: Some("../etc/passwd".into()), scale: 1.0, expert: None }], "tiny");
    assert!(e.message().contains("not a plain file name"), "{e}");
    let e = refused(vec![lora("peft", 1.0)], "testcard");
    assert!(e.message().contains("takes no LoRA adapters"), "{e}");
    let high = LoraRef { expert: Some(vgen_core::engine::Expert::High), ..lora("peft", 1.0) };
    let e = refused(vec![lora("peft", 1.0), high], "tiny");
    assert!(e.message().contains("loras[1].expert: tiny has one transformer; \"high\" is for"), "{e}");
    // An adapter for another model fails its job with invalid_argument, naming the file and the key.
    let wide = dir.join("wide.safetensors");
    let r = |n: i64, m: i64| Tensor::randn([n, m], (Kind::Float, Device::Cpu));
    Tensor::write_safetensors(
        &[
            ("transformer.blocks.0.attn1.to_q.lora_A.weight", r(4, 64)),
            ("transformer.blocks.0.attn1.to_q.lora_B.weight", r(64, 4)),
        ],
        &wide,
    )
    .unwrap();
    let request = Request {
        model: Some("tiny".into()),
        loras: vec![LoraRef { path: Some(wide.to_string_lossy().into_owned()), name: None, scale: 1.0, expert: None }],
        ..Request::new("a cat")
    };
    let id = engine.submit(request).unwrap();
    let status = engine.wait(id, Some(Duration::from_secs(120))).unwrap();
    let error = status.error.expect("the job fails");
    assert!(error.code == ErrorCode::InvalidArgument, "{error:?}");
    assert!(error.message.contains("wide.safetensors") && error.message.contains("blocks.0.attn1.to_q"), "{error:?}");
}
