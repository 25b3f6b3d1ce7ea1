//! Wan2.2 against diffusers 0.42.1, number for number in fp32 on the CPU: the Wan2.2 VAE (residual blocks with
//! their parameter-free shortcuts, 2×2 patches, 16× in space) encoding a video and decoding chunk by chunk, 2-step
//! TI2V pipelines from text alone and from an image, and the A14B expert switch at `boundary_ratio` with both
//! guidance scales. The fixtures (`tests/fixtures/wan/tiny-wan22-ti2v`, `tiny-wan22-a14b`,
//! `cases/wan22.safetensors`) are made by `tools/wan_reference/make_wan22_case.py`; each tiny model is its folder
//! laid over a copy of `tiny-wan`. Tolerance: 1e-4 max abs error.

use std::collections::HashMap;
mod common;

use common::copy_dir;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};
use vgen_core::engine::Params;
use vgen_core::engine::image::Image;
use vgen_core::models::Model;
use vgen_core::models::wan::pipeline::{Images, WanModel};
use vgen_core::models::wan::vae::{FeatureCache, VaeConfig, WanVaeDecoder};
use vgen_core::models::wan::vae_encoder::WanVaeEncoder;
use vgen_core::models::wan::{load_component, vae};
use vgen_core::models::weights::read_config;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wan")
}

fn cases() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("cases/wan22.safetensors")).unwrap().into_iter().collect()
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.size(), want.size(), "{what}: shapes differ");
    let e = (got.to_kind(Kind::Double) - want.to_kind(Kind::Double)).abs().max().double_value(&[]);
    eprintln!("{what}: max abs error {e:.1e}");
    assert!(e <= tol, "{what}: max abs error {e:e} > {tol:e}");
}

/// `tiny-wan` with `layer` laid over it, in a scratch folder of this test's own (`tag`).
fn assemble(tag: &str, layer: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vgen-{tag}-{layer}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&fixtures().join("tiny-wan"), &dir);
    copy_dir(&fixtures().join(layer), &dir);
    dir
}

fn frames_of(chunks: Vec<Tensor>) -> Tensor {
    (Tensor::cat(&chunks, 2) * 0.5 + 0.5).clamp(0.0, 1.0).permute([0, 2, 3, 4, 1])
}

#[test]
fn the_wan22_vae_encodes_and_decodes_chunk_by_chunk_as_diffusers_does() {
    let c = cases();
    let folder = fixtures().join("tiny-wan22-ti2v/vae");
    let config: VaeConfig = read_config(&folder).unwrap();
    assert_eq!((config.spatial_factor(), config.temporal_factor()), (16, 4));
    let _g = tch::no_grad_guard();
    let (_ve, encoder) = load_component(
        &folder,
        "diffusion_pytorch_model",
        tch::Device::Cpu,
        &[],
        &["decoder.", "post_quant_conv."],
        |p| WanVaeEncoder::new(p, config.clone()),
    )
    .unwrap();
    let moments = encoder.moments(&c["vae.video"]).unwrap();
    assert_close("encode: the posterior's mode", &moments.narrow(1, 0, 12), &c["vae.mode"], 1e-4);
    let (_vd, decoder) =
        load_component(&folder, "diffusion_pytorch_model", tch::Device::Cpu, &[], &["encoder.", "quant_conv."], |p| {
            WanVaeDecoder::new(p, config.clone())
        })
        .unwrap();
    let z = &c["vae.z"];
    let x = decoder.post_quant(z);
    let mut cache = FeatureCache::default();
    let mut chunks = Vec::new();
    for i in 0..z.size()[2] {
        let raw = decoder.decode_chunk(&x.narrow(2, i, 1), &mut cache);
        assert_close(&format!("decode chunk {i} (in patches)"), &raw, &c[&format!("vae.decode.chunk.{i}")], 1e-4);
        chunks.push(vae::unpatchify(&raw, 2).clamp(-1.0, 1.0));
    }
    assert_close("decoded video", &Tensor::cat(&chunks, 2), &c["vae.decode.sample"], 1e-4);
    // patchify and unpatchify are inverses.
    let v = &c["vae.video"];
    assert_close("unpatchify(patchify(x))", &vae::unpatchify(&vae::patchify(v, 2), 2), v, 0.0);
}

#[test]
fn a_vae_config_the_layers_contradict_is_refused() {
    let folder = fixtures().join("tiny-wan22-ti2v/vae");
    let good: VaeConfig = read_config(&folder).unwrap();
    good.check().unwrap();
    for (mutate, why) in [
        (Box::new(|c: &mut VaeConfig| c.in_channels = 3) as Box<dyn Fn(&mut VaeConfig)>, "3 x patch_size²"),
        (Box::new(|c: &mut VaeConfig| c.scale_factor_spatial = Some(8)), "scale_factor_spatial"),
        (Box::new(|c: &mut VaeConfig| c.dim_mult = vec![1, 3, 3, 3]), "multiple of the next level's"),
    ] {
        let mut c = good.clone();
        mutate(&mut c);
        let e = c.check().unwrap_err();
        assert!(e.message().contains(why), "{why}: {e}");
    }
}

fn params(image: Option<Image>, guidance_scale_2: Option<f64>) -> Params {
    Params {
        prompt: "A cat and a dog.".into(),
        negative_prompt: "blurred".into(),
        width: 32,
        height: 32,
        num_frames: 9,
        fps: 16.0,
        steps: 2,
        guidance_scale: 5.0,
        guidance_scale_2,
        seed: 42,
        preview_every: None,
        sampler: Default::default(),
        step_cache: None,
        vae_tiling: None,
        loras: Vec::new(),
        image: image.map(std::sync::Arc::new),
        last_image: None,
        segments: Vec::new(),
        color_match: true,
    }
}

/// A 2-step run of `model` from the case's latents, each step and the frames checked against `prefix`.
fn run(model: &WanModel, c: &HashMap<String, Tensor>, latents: &str, prefix: &str, p: &Params) {
    let comps = model.components(vgen_core::Device::Cpu).unwrap();
    let images = model.images(&comps, p, tch::Device::Cpu).unwrap();
    let text = model.encode_prompts(&comps, &["A cat and a dog.", "blurred"], tch::Device::Cpu).unwrap();
    let out = model
        .denoise(
            &comps,
            c[latents].shallow_clone(),
            &text,
            2,
            p.guidance_scale,
            p.guidance_scale_2,
            &images,
            |i, _, x, _| {
                assert_close(&format!("{prefix} step {i}"), x, &c[&format!("{prefix}.step{}.latents", i - 1)], 1e-4);
                Ok(())
            },
        )
        .unwrap()
        .0;
    let mut chunks = Vec::new();
    comps
        .vae
        .decode(&comps.vae.denormalize(&out), |_, _, f| {
            chunks.push(f);
            Ok(())
        })
        .unwrap();
    assert_close(&format!("{prefix} frames"), &frames_of(chunks), &c[&format!("{prefix}.frames")], 1e-4);
}

#[test]
fn ti2v_with_the_wan22_vae_matches_from_text_and_from_an_image() {
    let c = cases();
    let dir = assemble("parity", "tiny-wan22-ti2v");
    let model = WanModel::open(&dir).unwrap();
    let info = model.info();
    assert!(info.conditioning.image && !info.conditioning.needs_image, "{:?}", info.conditioning);
    assert_eq!(info.size_multiple, 32, "16 pixels a latent pixel, 2 latent pixels a token");
    let _g = tch::no_grad_guard();
    run(&model, &c, "ti2v.latents", "ti2v.text", &params(None, None));
    let image = &c["ti2v.image"];
    let image = Image::new(32, 32, Vec::<u8>::try_from(image.reshape([-1])).unwrap());
    run(&model, &c, "ti2v.latents", "ti2v.image", &params(Some(image), None));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a14b_switches_experts_at_the_boundary_with_each_its_guidance() {
    let c = cases();
    let dir = assemble("parity", "tiny-wan22-a14b");
    let model = WanModel::open(&dir).unwrap();
    assert_eq!(model.info().defaults.guidance_scale_2, Some(5.0), "the second scale defaults to the first");
    let _g = tch::no_grad_guard();
    // Timesteps 999 and 750 against a boundary of 900: the first step is the high-noise expert's, at guidance
    // 5, the second the low-noise one's, at guidance 3.
    assert_eq!(Vec::<f32>::try_from(&c["a14b.timesteps"]).unwrap(), [999.0, 750.0]);
    run(&model, &c, "a14b.latents", "a14b", &params(None, Some(3.0)));
    // Either expert alone, or the wrong scale, gives other latents: the switch is what matches.
    let comps = model.components(vgen_core::Device::Cpu).unwrap();
    let text = model.encode_prompts(&comps, &["A cat and a dog.", "blurred"], tch::Device::Cpu).unwrap();
    let same_scale = model
        .denoise(
            &comps,
            c["a14b.latents"].shallow_clone(),
            &text,
            2,
            5.0,
            Some(5.0),
            &Images::default(),
            |_, _, _, _| Ok(()),
        )
        .unwrap()
        .0;
    let e = (same_scale - &c["a14b.step1.latents"]).abs().max().double_value(&[]);
    assert!(e > 1e-3, "guidance_scale_2 must change the low-noise steps ({e})");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_engine_and_the_command_run_both_wan22_models_and_take_a_second_scale_only_for_two_experts() {
    use std::sync::Arc;
    use vgen_core::engine::{EngineConfig, Request};
    use vgen_core::{Device, Engine, ErrorCode, JobState};
    let root = std::env::temp_dir().join(format!("vgen-wan22-models-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for layer in ["tiny-wan22-ti2v", "tiny-wan22-a14b"] {
        let made = assemble("engine", layer);
        copy_dir(&made, &root.join(layer));
        let _ = std::fs::remove_dir_all(&made);
    }
    let mut models = common::test_models();
    for layer in ["tiny-wan22-ti2v", "tiny-wan22-a14b"] {
        models.insert(Arc::new(WanModel::open(&root.join(layer)).unwrap()));
    }
    let e =
        Engine::with_models(EngineConfig { devices: vec![Device::Cpu], ..EngineConfig::default() }, models).unwrap();
    let wait = Some(std::time::Duration::from_secs(120));
    let a14b = |g2: Option<f64>| Request {
        model: Some("tiny-wan22-a14b".into()),
        seed: Some(1),
        guidance_scale_2: g2,
        ..Request::new("a cat")
    };
    let (one, other) = (e.submit(a14b(Some(3.0))).unwrap(), e.submit(a14b(Some(1.5))).unwrap());
    for id in [one, other] {
        assert_eq!(e.wait(id, wait).unwrap().state, JobState::Succeeded);
    }
    assert_ne!(e.result(one).unwrap().frames, e.result(other).unwrap().frames, "the second scale changes the video");
    // The text encoder serves both experts: an adapter for one may not change it.
    let te = vgen_core::engine::LoraRef {
        path: Some(fixtures().join("loras/te_peft.safetensors").to_string_lossy().into_owned()),
        name: None,
        scale: 1.0,
        expert: Some(vgen_core::engine::Expert::High),
    };
    let id = e.submit(Request { loras: vec![te], ..a14b(None) }).unwrap();
    let error = e.wait(id, wait).unwrap().error.expect("refused when its adapters load");
    assert!(
        error.code == ErrorCode::InvalidArgument && error.message.contains("which both experts share"),
        "{error:?}"
    );
    let ti2v = e.submit(Request { model: Some("tiny-wan22-ti2v".into()), ..Request::new("a cat") }).unwrap();
    let status = e.wait(ti2v, wait).unwrap();
    assert_eq!(status.state, JobState::Succeeded, "{status:?}");
    assert_eq!(e.result(ti2v).unwrap().frames.width, 32);
    let refused = e
        .submit(Request { model: Some("tiny-wan22-ti2v".into()), guidance_scale_2: Some(2.0), ..Request::new("x") })
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::InvalidArgument);
    assert!(refused.message().contains("guidance_scale_2: tiny-wan22-ti2v has one transformer"), "{refused}");
    let bad = e.submit(Request { width: Some(40), ..a14b(None) }).unwrap_err();
    assert!(bad.message().contains("multiple of 16"), "{bad}");
    let bad =
        e.submit(Request { model: Some("tiny-wan22-ti2v".into()), width: Some(48), ..Request::new("x") }).unwrap_err();
    assert!(bad.message().contains("multiple of 32"), "the Wan2.2 VAE's 16x and the patch's 2x: {bad}");

    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_vgen"))
        .env("VGEN_MODELS", &root)
        .arg("models")
        .output()
        .unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.lines().any(|l| l.starts_with("tiny-wan22-a14b") && l.contains("text, 2 experts")), "{listed}");
    assert!(listed.lines().any(|l| l.starts_with("tiny-wan22-ti2v") && l.contains("text+image")), "{listed}");

    // An adapter for each expert, from the command; on a one-transformer model, refused naming the field.
    let loras = fixtures().join("loras");
    let generate = |model: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_vgen"))
            .env("VGEN_MODELS", &root)
            .args(["generate", "--model", model, "--steps", "2", "--out"])
            .arg(root.join(format!("{model}-frames/")))
            .arg("--lora-high")
            .arg(loras.join("peft.safetensors"))
            .arg("--lora-low")
            .arg(format!("{}:0.5", loras.join("kohya.safetensors").display()))
            .args(["--prompt", "a cat"])
            .output()
            .unwrap()
    };
    let out = generate("tiny-wan22-a14b");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_dir(root.join("tiny-wan22-a14b-frames")).unwrap().count(), 9);
    let out = generate("tiny-wan22-ti2v");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("loras[0].expert: tiny-wan22-ti2v has one transformer"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
