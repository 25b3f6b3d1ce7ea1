//! The native Wan2.1 stack against diffusers 0.42.1 and transformers 5.23.0, number for number, in fp32 on the
//! CPU. The fixtures (`tests/fixtures/wan/`, made by `tools/wan_reference/make_fixtures.py`) hold tiny random
//! models in the diffusers layout with reference inputs and outputs, so these tests need no Python.
//! Tolerances: 1e-4 max abs error on model outputs, 1e-5 on scheduler arithmetic.

use std::collections::HashMap;
mod common;

use common::copy_dir;
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
            assert_close(
                &format!("{name} n{n} timesteps"),
                &t,
                &c[&format!("{name}.n{n}.timesteps")].to_kind(Kind::Float),
                1e-5,
            );
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

/// Few-step sampling: a fixed timestep list (lightx2v's [1000, 750, 500, 250] with shift 5, and two others) gives
/// diffusers' schedule with either sampler, the UniPC model switched to Euler included, and a UniPC run over it
/// steps as diffusers' does.
#[test]
fn fixed_timestep_lists_match_diffusers_with_either_sampler() {
    use vgen_core::schedulers::{Sampler, SamplerKind};
    let c = cases("samplers.safetensors");
    let model = SchedulerConfig::from_file(&fixtures().join("tiny-wan/scheduler/scheduler_config.json")).unwrap();
    for label in ["lightx2v", "two", "unshifted"] {
        let given: Vec<u32> =
            Vec::<i64>::try_from(&c[&format!("{label}.given")]).unwrap().iter().map(|&t| t as u32).collect();
        let shift = c[&format!("{label}.shift")].double_value(&[]);
        for (name, kind) in [("euler", SamplerKind::Euler), ("unipc", SamplerKind::Unipc)] {
            let sampler = Sampler { kind: Some(kind), flow_shift: Some(shift), timesteps: Some(given.clone()) };
            let s = model.for_sampler(&sampler).build_with(99, sampler.timesteps.as_deref()).unwrap();
            assert_eq!(s.timesteps().len(), given.len(), "{name} {label}: the steps are the list's");
            let t = Tensor::from_slice(s.timesteps());
            let want = c[&format!("{name}.{label}.timesteps")].to_kind(Kind::Float);
            assert_close(&format!("{name} {label} timesteps"), &t, &want, 1e-5);
            let sig = Tensor::from_slice(s.sigmas());
            assert_close(&format!("{name} {label} sigmas"), &sig, &c[&format!("{name}.{label}.sigmas")], 1e-7);
        }
    }
    let lightx2v = Sampler { kind: None, flow_shift: Some(5.0), timesteps: Some(vec![1000, 750, 500, 250]) };
    let mut s = model.for_sampler(&lightx2v).build_with(4, lightx2v.timesteps.as_deref()).unwrap();
    let mut x = c["run.sample"].shallow_clone();
    for i in 0..4 {
        x = s.step(&c[&format!("run.model_output.{i}")], &x).unwrap();
        assert_close(&format!("unipc lightx2v step {i}"), &x, &c[&format!("run.prev_sample.{i}")], 1e-5);
    }
    for (bad, why) in
        [(vec![], "empty"), (vec![500, 750], "fall strictly"), (vec![1001], "outside 1..=1000"), (vec![0], "outside")]
    {
        let e = model.build_with(4, Some(&bad)).err().unwrap();
        assert!(e.message().contains(why), "{bad:?}: {}", e.message());
    }
}

#[test]
fn umt5_encoder_matches_transformers() {
    let c = cases("text_encoder.safetensors");
    let folder = fixtures().join("tiny-wan/text_encoder");
    let config = read_config(&folder).unwrap();
    let (_vs, enc) =
        wan::load_component(&folder, "model", Device::Cpu, &[], &[], |p| Umt5Encoder::new(p, config)).unwrap();
    let _g = tch::no_grad_guard();
    let out = enc.forward(&c["input_ids"], &c["attention_mask"]);
    assert_close("last_hidden_state", &out, &c["last_hidden_state"], 1e-4);
    let long = enc.forward(&c["long.input_ids"], &c["long.attention_mask"]);
    assert_close("long last_hidden_state", &long, &c["long.last_hidden_state"], 1e-4);
    let buckets = vgen_core::models::wan::umt5::relative_position_bucket(&c["relative_positions"], 32, 128);
    assert_eq!(max_err(&buckets, &c["relative_position_buckets"]), 0.0);
}

/// The tiny random transformer of the fixtures, in fp32 on the CPU.
fn tiny_transformer() -> (tch::nn::VarStore, WanTransformer) {
    let folder = fixtures().join("tiny-wan/transformer");
    let config = read_config(&folder).unwrap();
    wan::load_component(&folder, "diffusion_pytorch_model", Device::Cpu, &[], &[], |p| WanTransformer::new(p, config))
        .unwrap()
}

#[test]
fn transformer_matches_diffusers() {
    let c = cases("transformer.safetensors");
    let (_vs, model) = tiny_transformer();
    let _g = tch::no_grad_guard();
    for case in ["a", "b"] {
        let x = &c[&format!("{case}.hidden_states")];
        let t = &c[&format!("{case}.timestep")];
        let text = &c[&format!("{case}.encoder_hidden_states")];
        let s = x.size();
        let (cos, sin) = model.rope.forward(s[2], s[3], s[4]);
        assert_close(&format!("{case} rope cos"), &cos, &c[&format!("{case}.rope_cos")], 1e-6);
        assert_close(&format!("{case} rope sin"), &sin, &c[&format!("{case}.rope_sin")], 1e-6);
        let (temb, proj) = model.condition_embedder.time(t, Kind::Float);
        let text_proj = model.condition_embedder.text(text);
        assert_close(&format!("{case} temb"), &temb, &c[&format!("{case}.temb")], 1e-4);
        assert_close(&format!("{case} timestep_proj"), &proj, &c[&format!("{case}.timestep_proj")], 1e-4);
        assert_close(&format!("{case} text_proj"), &text_proj, &c[&format!("{case}.text_proj")], 1e-4);
        let out = model.forward(x, t, text, None).unwrap();
        assert_close(&format!("{case} sample"), &out, &c[&format!("{case}.sample")], 1e-4);
    }
}

#[test]
fn vae_decoder_matches_diffusers_chunk_by_chunk() {
    let c = cases("vae.safetensors");
    let folder = fixtures().join("tiny-wan/vae");
    let config = read_config(&folder).unwrap();
    let (_vs, vae) =
        wan::load_component(&folder, "diffusion_pytorch_model", Device::Cpu, &[], &["encoder.", "quant_conv."], |p| {
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

/// diffusers' `enable_tiling()` on the tiny Wan2.1 VAE (8x) and the tiny Wan2.2 VAE (16x, in patches), with tiles
/// small enough that the latents span 2 x 3 (and 2 x 1) of them; without tiling, the same latents decode whole.
#[test]
fn tiled_vae_decode_matches_diffusers_enable_tiling() {
    use vgen_core::models::wan::vae_tiling::Tiling;
    let c = cases("tiling.safetensors");
    for (label, folder) in [("wan21", "tiny-wan/vae"), ("wan22", "tiny-wan22-ti2v/vae")] {
        let folder = fixtures().join(folder);
        let config = read_config(&folder).unwrap();
        let (_vs, vae) = wan::load_component(
            &folder,
            "diffusion_pytorch_model",
            Device::Cpu,
            &[],
            &["encoder.", "quant_conv."],
            |p| WanVaeDecoder::new(p, config),
        )
        .unwrap();
        let _g = tch::no_grad_guard();
        let z = &c[&format!("{label}.z")];
        let tile = Vec::<i64>::try_from(&c[&format!("{label}.tile")]).unwrap();
        let tiling = Tiling { sample_min: [tile[0]; 2], sample_stride: [tile[1]; 2] };
        let [.., h, w] = z.size()[..] else { unreachable!() };
        assert!(tiling.applies(vae.config.spatial_factor(), h, w));
        let mut chunks = Vec::new();
        vae.decode_tiled(z, tiling, |_, _, frames| {
            chunks.push(frames);
            Ok(())
        })
        .unwrap();
        let tiled = Tensor::cat(&chunks, 2);
        assert_close(&format!("{label} tiled"), &tiled, &c[&format!("{label}.tiled")], 1e-4);
        let mut whole = Vec::new();
        vae.decode(z, |_, _, frames| {
            whole.push(frames);
            Ok(())
        })
        .unwrap();
        assert_close(&format!("{label} whole"), &Tensor::cat(&whole, 2), &c[&format!("{label}.whole")], 1e-4);
    }
}

#[test]
fn vae_encoder_matches_diffusers_moments_and_mode() {
    let c = cases("vae.safetensors");
    let folder = fixtures().join("tiny-wan/vae");
    let config: wan::vae::VaeConfig = read_config(&folder).unwrap();
    let (mean, std) = (config.latents_mean.clone(), config.latents_std.clone());
    let (_vs, vae) = wan::load_component(
        &folder,
        "diffusion_pytorch_model",
        Device::Cpu,
        &[],
        &["decoder.", "post_quant_conv."],
        |p| wan::vae_encoder::WanVaeEncoder::new(p, config),
    )
    .unwrap();
    let _g = tch::no_grad_guard();
    let x = &c["encode.x"]; // 9 frames: the first alone, then two chunks of 4
    assert_close("moments", &vae.moments(x).unwrap(), &c["encode.moments"], 1e-4);
    // `encode` normalises the mode as the image-to-video pipelines do: (mode - mean) * (1 / std).
    let mean = Tensor::from_slice(&mean).to_kind(Kind::Float).view([1, -1, 1, 1, 1]);
    let std = Tensor::from_slice(&std).to_kind(Kind::Float).view([1, -1, 1, 1, 1]);
    let want = (&c["encode.mean"] - mean) * std.reciprocal();
    assert_close("normalised mode", &vae.encode(x).unwrap(), &want, 1e-4);
    // One frame alone is the first chunk: the same latent as the video's first latent frame.
    let first = vae.encode(&x.narrow(2, 0, 1)).unwrap();
    assert_close("first frame", &first, &want.narrow(2, 0, 1), 1e-5);
    let bad = vae.encode(&x.narrow(2, 0, 3));
    assert!(bad.is_err_and(|e| e.message().contains("1 + 4k frames")));
}

#[test]
fn tokenizers_give_transformers_ids_and_masks() {
    let text = std::fs::read_to_string(fixtures().join("cases/tokenizer_cases.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let max_len = json["max_length"].as_u64().unwrap() as usize;
    let mut checked = 0;
    for (folder, t) in json["tokenizers"].as_object().unwrap() {
        let tok = wan::tokenizer::WanTokenizer::from_folder(&fixtures().join(folder), max_len).unwrap();
        for case in t["cases"].as_array().unwrap() {
            let prompt = case["prompt"].as_str().unwrap();
            let (ids, mask) = tok.encode(&[prompt]).unwrap();
            let want_ids: Vec<i64> =
                case["input_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
            let want_mask: Vec<i64> =
                case["attention_mask"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
            assert_eq!(Vec::<i64>::try_from(ids.view(-1)).unwrap(), want_ids, "{folder}: {prompt:?}");
            assert_eq!(Vec::<i64>::try_from(mask.view(-1)).unwrap(), want_mask, "{folder}: {prompt:?}");
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked} cases");
    for case in json["prompt_clean"].as_array().unwrap() {
        let (raw, clean) = (case["raw"].as_str().unwrap(), case["clean"].as_str().unwrap());
        assert_eq!(wan::tokenizer::prompt_clean(raw), clean, "prompt_clean({raw:?})");
    }
}

#[test]
fn folding_the_prompt_padding_gives_the_same_velocity() {
    // Prompts as the pipeline hands them over: real rows, then zeros to the padded length. Folding the zeros into
    // one row with a ln(count) logit bias must not change the output; prompts of different lengths share a batch.
    let c = cases("transformer.safetensors");
    let (_vs, model) = tiny_transformer();
    let _g = tch::no_grad_guard();
    let (x, t) = (&c["a.hidden_states"], &c["a.timestep"]);
    // The fixture's own text already ends in zeros; random rows have none, so the lengths are exactly these.
    tch::manual_seed(3);
    let text = &c["a.encoder_hidden_states"].randn_like();
    let [b, l, _] = text.size()[..] else { unreachable!() };
    assert!(b == 2 && l >= 8, "the fixture's text is {:?}", text.size());
    for lengths in [[3, 7], [1, 4], [l - 1, 2], [5, l]] {
        let batch = text.copy();
        for (row, n) in lengths.into_iter().enumerate() {
            let _ = batch.get(row as i64).narrow(0, n, l - n).zero_();
        }
        let folded = model.text_context(&batch, None, true).unwrap();
        let full = model.text_context(&batch, None, false).unwrap();
        // Each prompt's real rows and one row for its padding; the batch takes the longest.
        let keys = lengths.iter().map(|&n| (n + 1).min(l)).max().unwrap();
        assert_eq!((folded.keys(), full.keys()), (keys, l), "{lengths:?}");
        let folded_out = model.forward_with(x, t, &folded).unwrap();
        let full_out = model.forward_with(x, t, &full).unwrap();
        assert_close(&format!("folded {lengths:?}"), &folded_out, &full_out, 1e-5);
    }
    // Nothing to fold when every row is real.
    assert_eq!(model.text_context(text, None, true).unwrap().keys(), l);
}

#[test]
fn the_whole_pipeline_matches_wan_pipeline_from_prompt_to_frames() {
    let c = cases("pipeline.safetensors");
    let call: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases/pipeline.json")).unwrap()).unwrap();
    let dir = std::env::temp_dir().join(format!("vgen-tiny-wan-{}", std::process::id()));
    copy_dir(&fixtures().join("tiny-wan"), &dir);
    std::fs::write(dir.join("vgen.json"), r#"{"max_sequence_length": 16}"#).unwrap();
    let model = wan::pipeline::WanModel::open(&dir).unwrap();
    let comps = model.components(vgen_core::Device::Cpu).unwrap();
    let _g = tch::no_grad_guard();
    let prompt = wan::tokenizer::prompt_clean(call["call"]["prompt"].as_str().unwrap());
    let negative = wan::tokenizer::prompt_clean(call["call"]["negative_prompt"].as_str().unwrap());
    assert_eq!(prompt, call["prompt_clean"]["prompt"].as_str().unwrap());
    let text = model.encode_prompts(&comps, &[&prompt, &negative], Device::Cpu).unwrap();
    assert_close("prompt_embeds", &text.narrow(0, 0, 1), &c["prompt_embeds"], 1e-4);
    assert_close("negative_prompt_embeds", &text.narrow(0, 1, 1), &c["negative_prompt_embeds"], 1e-4);
    let latents = model
        .denoise(&comps, c["latents"].shallow_clone(), &text, 2, 5.0, None, &Default::default(), |i, _, x, _| {
            assert_close(&format!("step {i} latents"), x, &c[&format!("step{}.latents", i - 1)], 1e-4);
            Ok(())
        })
        .unwrap()
        .0;
    let den = comps.vae.denormalize(&latents);
    assert_close("denormalized", &den, &c["latents_denormalized"], 1e-4);
    let mut chunks = Vec::new();
    comps
        .vae
        .decode(&den, |_, _, f| {
            chunks.push(f);
            Ok(())
        })
        .unwrap();
    let frames = (Tensor::cat(&chunks, 2) * 0.5 + 0.5).clamp(0.0, 1.0).permute([0, 2, 3, 4, 1]);
    assert_close("frames", &frames, &c["frames"], 1e-4);
    // The same seed drawn in Rust gives the same initial noise as torch.manual_seed(42) in Python.
    let noise = vgen_core::models::seeded_noise(42, &[1, 16, 3, 4, 4]).unwrap();
    assert_close("seeded noise", &noise, &c["latents"], 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The fixtures' tiny Wan as a TI2V model: `expand_timesteps` in its `model_index.json` (its transformer takes the
/// VAE's 16 channels, as TI2V-5B's takes its VAE's 48).
fn tiny_ti2v(dir: &Path) -> wan::pipeline::WanModel {
    copy_dir(&fixtures().join("tiny-wan"), dir);
    let index = dir.join("model_index.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    json["expand_timesteps"] = true.into();
    std::fs::write(&index, json.to_string()).unwrap();
    std::fs::write(dir.join("vgen.json"), r#"{"max_sequence_length": 16}"#).unwrap();
    wan::pipeline::WanModel::open(dir).unwrap()
}

#[test]
fn ti2v_image_to_video_matches_wan_image_to_video_pipeline_from_image_to_frames() {
    // `tools/wan_reference/make_ti2v_case.py`: diffusers' WanImageToVideoPipeline with expand_timesteps, 2 steps.
    let c = cases("ti2v_pipeline.safetensors");
    let dir = std::env::temp_dir().join(format!("vgen-tiny-ti2v-{}", std::process::id()));
    let model = tiny_ti2v(&dir);
    assert!(vgen_core::models::Model::info(&model).conditioning.image);
    let comps = model.components(vgen_core::Device::Cpu).unwrap();
    let _g = tch::no_grad_guard();
    let rgb: Vec<u8> = Vec::<u8>::try_from(c["image"].reshape([-1])).unwrap();
    let image = vgen_core::engine::image::Image::new(32, 32, rgb);
    let frames = Tensor::from_slice(&image.rgb).view([32, 32, 3]).permute([2, 0, 1]).to_kind(Kind::Float);
    let frames = (frames / 255.0 * 2.0 - 1.0).view([1, 3, 1, 32, 32]);
    let encoder = comps.image_encoder.as_ref().expect("a TI2V model loads the VAE's encoder");
    let condition = encoder.encode(&frames).unwrap();
    assert_close("condition (the image's normalised latent)", &condition, &c["condition"], 1e-4);
    let images = wan::pipeline::Images { first_latent: Some(condition), ..Default::default() };
    let text = model.encode_prompts(&comps, &["A cat and a dog.", "blurred"], Device::Cpu).unwrap();
    let latents = model
        .denoise(&comps, c["latents"].shallow_clone(), &text, 2, 5.0, None, &images, |i, _, x, _| {
            assert_close(&format!("step {i} latents"), x, &c[&format!("step{}.latents", i - 1)], 1e-4);
            Ok(())
        })
        .unwrap()
        .0;
    let mut chunks = Vec::new();
    comps
        .vae
        .decode(&comps.vae.denormalize(&latents), |_, _, f| {
            chunks.push(f);
            Ok(())
        })
        .unwrap();
    let out = (Tensor::cat(&chunks, 2) * 0.5 + 0.5).clamp(0.0, 1.0).permute([0, 2, 3, 4, 1]);
    assert_close("frames", &out, &c["frames"], 1e-4);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn per_token_timesteps_all_equal_give_what_one_timestep_gives() {
    let c = cases("transformer.safetensors");
    let (_vs, model) = tiny_transformer();
    let _g = tch::no_grad_guard();
    let x = &c["a.hidden_states"];
    let t = &c["a.timestep"];
    let [b, _, f, h, w] = x.size()[..] else { panic!() };
    let tokens = f * (h / 2) * (w / 2);
    let per_token = t.view([b, 1]).expand([b, tokens], false).contiguous();
    let one = model.forward(x, t, &c["a.encoder_hidden_states"], None).unwrap();
    let many = model.forward(x, &per_token, &c["a.encoder_hidden_states"], None).unwrap();
    assert_close("per-token = per-clip", &many, &one, 1e-5);
    assert!(model.forward(x, &per_token.narrow(1, 0, tokens - 1), &c["a.encoder_hidden_states"], None).is_err());
}

#[test]
fn the_transformer_runs_in_bf16_close_to_fp32() {
    // GPUs run the transformer in bf16 with fp32 norms and modulation; the same path runs here on the CPU.
    let c = cases("transformer.safetensors");
    let (mut vs, model) = tiny_transformer();
    vs.set_kind(Kind::BFloat16);
    let _g = tch::no_grad_guard();
    let out = model.forward(&c["a.hidden_states"], &c["a.timestep"], &c["a.encoder_hidden_states"], None).unwrap();
    assert_eq!(out.kind(), Kind::Float, "the velocity comes back in fp32");
    let err = (&out - &c["a.sample"]).abs();
    let (max, mean) = (err.max().double_value(&[]), err.mean(Kind::Float).double_value(&[]));
    eprintln!("bf16 transformer vs fp32 reference: max {max:.3e}, mean {mean:.3e}");
    assert!(max < 0.1 && mean < 0.02, "max {max}, mean {mean}");
}
