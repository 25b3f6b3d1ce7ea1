//! The native Wan2.1 stack against diffusers 0.42.1 and transformers 5.23.0, number for number, in fp32 on the
//! CPU. The fixtures (`tests/fixtures/wan/`, made by `tools/wan_reference/make_fixtures.py`) hold tiny random
//! models in the diffusers layout with reference inputs and outputs, so these tests need no Python.
//! Tolerances: 1e-4 max abs error on model outputs, 1e-5 on scheduler arithmetic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use vgen_core::models::wan::{self, transformer::WanTransformer, umt5::Umt5Encoder, vae::WanVaeDecoder};
use vgen_core::models::weights::read_config;
use vgen_core::schedulers::SchedulerConfig;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wan")
}

fn cases(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("cases").join(name)).unwrap().into_iter().collect()
}

fn max_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let e = max_err(got, want);
    eprintln!("{what}: max abs error {e:.1e}");
    assert!(e <= tol, "{what}: max abs error {e:e} > {tol:e}");
}

#[test]
fn schedulers_match_timesteps_sigmas_and_every_step() {
    let c = cases("schedulers.safetensors");
    let unipc = SchedulerConfig::from_file(&fixtures().join("tiny-wan/scheduler/scheduler_config.json")).unwrap();
    let euler = SchedulerConfig::from_file(&fixtures().join("scheduler-euler/scheduler_config.json")).unwrap();
    for n in [2usize, 5, 10, 50] {
        for (name, config) in [("unipc", &unipc), ("euler", &euler)] {
            let s = config.build(n).unwrap();
            let t = Tensor::from_slice(s.timesteps());
            let sig = Tensor::from_slice(s.sigmas());
            assert_close(&format!("{name} n{n} timesteps"), &t, &c[&format!("{name}.n{n}.timesteps")].to_kind(Kind::Float), 1e-5);
            assert_close(&format!("{name} n{n} sigmas"), &sig, &c[&format!("{name}.n{n}.sigmas")], 1e-7);
        }
    }
    for (name, config, n) in [("unipc", &unipc, 2), ("unipc", &unipc, 5), ("unipc", &unipc, 10), ("euler", &euler, 5)] {
        let mut s = config.build(n).unwrap();
        let mut x = c[&format!("{name}.run{n}.sample")].shallow_clone();
        for i in 0..n {
            let out = &c[&format!("{name}.run{n}.model_output.{i}")];
            x = s.step(out, &x).unwrap();
            assert_close(&format!("{name} run{n} step {i}"), &x, &c[&format!("{name}.run{n}.prev_sample.{i}")], 1e-5);
        }
    }
}

#[test]
fn umt5_encoder_matches_transformers() {
    let c = cases("text_encoder.safetensors");
    let folder = fixtures().join("tiny-wan/text_encoder");
    let config = read_config(&folder).unwrap();
    let (_vs, enc) = wan::load_component(&folder, "model", Device::Cpu, &[], &[], |p| Umt5Encoder::new(p, config)).unwrap();
    let _g = tch::no_grad_guard();
    let out = enc.forward(&c["input_ids"], &c["attention_mask"]);
    assert_close("last_hidden_state", &out, &c["last_hidden_state"], 1e-4);
    let long = enc.forward(&c["long.input_ids"], &c["long.attention_mask"]);
    assert_close("long last_hidden_state", &long, &c["long.last_hidden_state"], 1e-4);
    let buckets = vgen_core::models::wan::umt5::relative_position_bucket(&c["relative_positions"], 32, 128);
    assert_eq!(max_err(&buckets, &c["relative_position_buckets"]), 0.0);
}

#[test]
fn transformer_matches_diffusers() {
    let c = cases("transformer.safetensors");
    let folder = fixtures().join("tiny-wan/transformer");
    let config = read_config(&folder).unwrap();
    let (_vs, model) =
        wan::load_component(&folder, "diffusion_pytorch_model", Device::Cpu, &[], &[], |p| WanTransformer::new(p, config)).unwrap();
    let _g = tch::no_grad_guard();
    for case in ["a", "b"] {
        let x = &c[&format!("{case}.hidden_states")];
        let t = &c[&format!("{case}.timestep")];
        let text = &c[&format!("{case}.encoder_hidden_states")];
        let s = x.size();
        let (cos, sin) = model.rope.forward(s[2], s[3], s[4]);
        assert_close(&format!("{case} rope cos"), &cos, &c[&format!("{case}.rope_cos")], 1e-6);
        assert_close(&format!("{case} rope sin"), &sin, &c[&format!("{case}.rope_sin")], 1e-6);
        let (temb, proj, text_proj) = model.condition_embedder.forward(t, text);
        assert_close(&format!("{case} temb"), &temb, &c[&format!("{case}.temb")], 1e-4);
        assert_close(&format!("{case} timestep_proj"), &proj, &c[&format!("{case}.timestep_proj")], 1e-4);
        assert_close(&format!("{case} text_proj"), &text_proj, &c[&format!("{case}.text_proj")], 1e-4);
        let out = model.forward(x, t, text).unwrap();
        assert_close(&format!("{case} sample"), &out, &c[&format!("{case}.sample")], 1e-4);
    }
}

#[test]
fn vae_decoder_matches_diffusers_chunk_by_chunk() {
    let c = cases("vae.safetensors");
    let folder = fixtures().join("tiny-wan/vae");
    let config = read_config(&folder).unwrap();
    let (_vs, vae) = wan::load_component(&folder, "diffusion_pytorch_model", Device::Cpu, &[], &["encoder.", "quant_conv."], |p| {
        WanVaeDecoder::new(p, config)
    })
    .unwrap();
    let _g = tch::no_grad_guard();
    let z = &c["decode.z"];
    assert_close("post_quant_conv", &vae.post_quant(z), &c["decode.post_quant_conv"], 1e-5);
    let x = vae.post_quant(z);
    let mut cache = vgen_core::models::wan::vae::FeatureCache::default();
    for i in 0..3 {
        let out = vae.decode_chunk(&x.narrow(2, i, 1), &mut cache);
        assert_close(&format!("chunk {i}"), &out, &c[&format!("decode.chunk.{i}")], 1e-4);
    }
    let mut chunks = Vec::new();
    vae.decode(z, |_, _, frames| {
        chunks.push(frames);
        Ok(())
    })
    .unwrap();
    assert_close("sample", &Tensor::cat(&chunks, 2), &c["decode.sample"], 1e-4);
}
