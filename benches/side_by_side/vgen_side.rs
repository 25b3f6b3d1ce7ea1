//! vgen's half of the side-by-side benchmark (`benches/side_by_side/run.py` runs it beside diffusers): the same
//! cases, measured the same way, printed as one JSON object per line.
//!
//! ```text
//! vgen-side pipeline  --model DIR --runs N [--steps S --frames F --width W --height H --guidance G --step-cache T]
//! vgen-side step      --transformer DIR --frames F --height H --width W --runs N [--format f32|fp8|q8_0|q4_k]
//!                     [--device cpu|cuda] [--dtype f32|bf16] [--offload] [--lora RANK|full,...]
//! vgen-side loop      --transformer DIR --frames F --height H --width W --steps S [--step-cache T]
//! vgen-side decode    --vae DIR --frames F --height H --width W --out FILE.mp4 [--tile SIZE,STRIDE] [--device D]
//! vgen-side parity    --fixtures DIR [--device D] [--dtype f32|bf16]   (the tiny models against diffusers' fp32)
//! vgen-side cuda                                                       (what libtorch sees)
//! ```
//! Every case first runs once untimed (warm-up). Peak memory is the process's high-water mark (`VmHWM`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor, nn::VarStore};
use vgen_core::engine::{EngineConfig, Request};
use vgen_core::models::wan::pipeline::WanModel;
use vgen_core::models::wan::transformer::{TransformerConfig, WanTransformer};
use vgen_core::models::wan::vae::{VaeConfig, WanVaeDecoder};
use vgen_core::models::{Model, Models, weights};

fn main() {
    vgen_core::runtime::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag =
        |name: &str| -> Option<String> { args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned() };
    let num = |name: &str, default: i64| flag(name).map_or(default, |v| v.parse().expect(name));
    let device = match flag("--device").as_deref() {
        None | Some("cpu") => Device::Cpu,
        Some("cuda") => Device::Cuda(0),
        Some(other) => Device::Cuda(other.trim_start_matches("cuda:").parse().expect("--device cpu|cuda|cuda:N")),
    };
    let kind = match flag("--dtype").as_deref() {
        None | Some("f32") => Kind::Float,
        Some("bf16") => Kind::BFloat16,
        Some(other) => panic!("--dtype {other}: f32 or bf16"),
    };
    let offload = args.iter().any(|a| a == "--offload");
    let result = match args.first().map(String::as_str) {
        Some("pipeline") => pipeline(
            &PathBuf::from(flag("--model").expect("--model")),
            num("--runs", 5) as usize,
            flag("--steps").map(|v| v.parse().unwrap()),
            flag("--frames").map(|v| v.parse().unwrap()),
            flag("--width").map(|v| v.parse().unwrap()),
            flag("--height").map(|v| v.parse().unwrap()),
            flag("--guidance").map(|v| v.parse().unwrap()),
            flag("--step-cache").map(|v| v.parse().unwrap()),
        ),
        Some("step") => step(
            &PathBuf::from(flag("--transformer").expect("--transformer")),
            [num("--frames", 5), num("--height", 240), num("--width", 416)],
            num("--runs", 5) as usize,
            flag("--format").unwrap_or_else(|| "f32".into()),
            (device, kind, offload),
            flag("--lora").map(|l| l.split(',').map(str::to_string).collect()).unwrap_or_default(),
        ),
        Some("decode") => decode(
            &PathBuf::from(flag("--vae").expect("--vae")),
            [num("--frames", 17), num("--height", 64), num("--width", 64)],
            &PathBuf::from(flag("--out").expect("--out")),
            flag("--tile").map(|t| {
                let v: Vec<i64> = t.split(',').map(|x| x.parse().expect("--tile SIZE,STRIDE")).collect();
                vgen_core::models::wan::vae_tiling::Tiling { sample_min: [v[0]; 2], sample_stride: [v[1]; 2] }
            }),
            device,
        ),
        Some("loop") => denoising_loop(
            &PathBuf::from(flag("--transformer").expect("--transformer")),
            [num("--frames", 5), num("--height", 240), num("--width", 416)],
            num("--steps", 20) as usize,
            flag("--step-cache").map(|v| v.parse().expect("--step-cache")),
        ),
        Some("parity") => parity(&PathBuf::from(flag("--fixtures").expect("--fixtures")), device, kind),
        Some("cuda") => {
            let line = serde_json::json!({
                "side": "vgen", "case": "cuda", "available": tch::Cuda::is_available(),
                "devices": tch::Cuda::device_count(), "cudnn": tch::Cuda::cudnn_is_available(),
                "libtorch": vgen_core::runtime::LIBTORCH_VERSION,
            });
            println!("{line}");
            Ok(())
        }
        _ => Err(vgen_core::Error::invalid("usage: vgen-side pipeline|step|decode ... (see the source's header)")),
    };
    if let Err(e) = result {
        eprintln!("vgen-side: {e}");
        std::process::exit(1);
    }
}

/// The process's resident memory now, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The process's peak resident memory, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// End to end through the engine, as a host runs it: submit, wait, take the frames.
#[allow(clippy::too_many_arguments)]
fn pipeline(
    folder: &Path,
    runs: usize,
    steps: Option<u32>,
    frames: Option<u32>,
    width: Option<u32>,
    height: Option<u32>,
    guidance: Option<f64>,
    step_cache: Option<f64>,
) -> vgen_core::Result<()> {
    let model = Arc::new(WanModel::open(folder)?);
    let name = model.info().name.clone();
    let mut models = Models::default();
    models.insert(model);
    // No result cache: every run computes.
    let config = EngineConfig {
        devices: vec![vgen_core::Device::Cpu],
        cache: vgen_core::engine::CacheConfig { enabled: false, ..Default::default() },
        ..Default::default()
    };
    let engine = vgen_core::Engine::with_models(config, models)?;
    for run in 0..=runs {
        let request = Request {
            seed: Some(run as u64),
            steps,
            num_frames: frames,
            width,
            height,
            guidance_scale: guidance,
            step_cache: step_cache.map(|threshold| vgen_core::engine::StepCacheRequest::Threshold { threshold }),
            ..Request::new("a red circle moving right")
        };
        let started = Instant::now();
        let id = engine.submit(request)?;
        let status = engine.wait(id, None)?;
        let wall = started.elapsed();
        if let Some(e) = status.error {
            return Err(e.to_error());
        }
        let video = engine.result(id)?;
        let t = &video.metadata.timings_ms;
        let line = serde_json::json!({
            "side": "vgen", "case": "pipeline", "model": name, "warmup": run == 0,
            "wall_ms": ms(wall),
            "step_ms": t.get("generating").copied().unwrap_or(0.0) / video.metadata.steps.max(1) as f64,
            "decode_ms": t.get("decoding").copied().unwrap_or(0.0),
            "frames": video.frames.num_frames, "steps": video.metadata.steps,
            "steps_skipped": video.metadata.steps_skipped.len(),
            "peak_rss": peak_rss(), "threads": vgen_core::runtime::cpu_threads(),
        });
        println!("{line}");
        engine.release(id)?;
    }
    Ok(())
}

/// One denoising step with classifier-free guidance as the pipeline runs it: the conditional and unconditional
/// latents in one batch, the text side of the cross-attention prepared once per job (before the timed steps, as a
/// job pays it once), random weights built from a config. The prompts are `run.py`'s: 32 real rows each, then
/// zeros to 512, as the text encoder hands them over.
///
/// `format` other than f32 keeps the blocks' matrices quantized as `vgen quantize` does (`fp8`, `q8_0`, `q4_k`),
/// filled with the encoding of random values; `weights_bytes` is the resident memory the built model added.
///
/// With `loras` (each a rank, or `full` for a full weight delta), the step runs again for each with a random
/// adapter on every linear layer of the blocks, applied unmerged and then merged (`models::lora::merged`): the
/// rows say which, and the merged set's bytes; the warm-up row of a merged case includes the merging.
fn step(
    folder: &Path,
    [frames, height, width]: [i64; 3],
    runs: usize,
    format: String,
    (device, kind, offload): (Device, Kind, bool),
    loras: Vec<String>,
) -> vgen_core::Result<()> {
    const PROMPT_TOKENS: i64 = 32;
    const NEGATIVE_TOKENS: i64 = 32;
    let config: TransformerConfig = weights::read_config(folder)?;
    let text_dim = config.text_dim;
    let before = rss();
    let mut vs = VarStore::new(device);
    let mut model = match format.as_str() {
        "f32" => WanTransformer::new(vs.root(), config)?,
        other => {
            let format: weights::quantize::Format = other.parse()?;
            let storage = weights::quantize::block_storage(&config, format);
            let model = WanTransformer::with_storage(vs.root(), config, &storage)?;
            weights::quantize::fill_random(&vs, &storage)?;
            model
        }
    };
    if kind != Kind::Float {
        vgen_core::models::wan::cast_floats(&mut vs, kind);
    }
    if offload {
        model.offload_blocks(&vs, vgen_core::models::wan::pipeline::OFFLOAD_AHEAD, vs.device());
    }
    let weights_bytes = rss().saturating_sub(before);
    let _g = tch::no_grad_guard();
    tch::manual_seed(0);
    let latent_frames = (frames - 1) / 4 + 1;
    let x = Tensor::randn([1, 16, latent_frames, height / 8, width / 8], (Kind::Float, device));
    let text = Tensor::randn([2, 512, text_dim], (Kind::Float, device));
    let _ = text.get(0).narrow(0, PROMPT_TOKENS, 512 - PROMPT_TOKENS).zero_();
    let _ = text.get(1).narrow(0, NEGATIVE_TOKENS, 512 - NEGATIVE_TOKENS).zero_();
    let t = Tensor::from_slice(&[500.0f32, 500.0]).to_device(device);
    let tokens = latent_frames * (height / 16) * (width / 16);
    let context = model.text_context(&text, None, true).unwrap();
    // (the adapter's spec, and the adapter with whether it is merged), the base first.
    type Case = (String, Option<(Arc<vgen_core::models::lora::Adapter>, bool)>);
    let mut cases: Vec<Case> = vec![("none".into(), None)];
    for spec in &loras {
        let adapter = Arc::new(random_adapter(&model, spec, device, kind));
        cases.push((spec.clone(), Some((adapter.clone(), false))));
        cases.push((spec.clone(), Some((adapter, true))));
    }
    for (lora, case) in cases {
        use vgen_core::models::lora::{active, merged::MergedSet};
        let merged = case.as_ref().is_some_and(|(_, m)| *m);
        let set = merged.then(|| Arc::new(MergedSet::new(0)));
        let applied = case.map(|(adapter, _)| active::Applied { adapter, scale: 1.0, expert: None });
        let _scope = active::scoped_for_experts(applied.into_iter().collect(), set.clone());
        step_runs(&model, (&x, &t, &context), runs, device, |run, elapsed| {
            serde_json::json!({
                "side": "vgen", "case": "step", "warmup": run == 0, "tokens": tokens, "format": format,
                "offload": offload, "dtype": format!("{kind:?}"), "lora": lora, "merged": merged,
                "step_ms": ms(elapsed), "peak_rss": peak_rss(), "weights_bytes": weights_bytes,
                "threads": vgen_core::runtime::cpu_threads(),
            })
        })?;
    }
    Ok(())
}

/// A random adapter on every linear layer of `model`'s blocks: rank `spec` pairs, or full weight deltas (`full`).
fn random_adapter(model: &WanTransformer, spec: &str, device: Device, kind: Kind) -> vgen_core::models::lora::Adapter {
    use vgen_core::models::lora::{Adapter, Delta};
    let opts = (kind, device);
    let layers = model
        .linears()
        .into_iter()
        .filter(|(name, _)| name.starts_with("blocks."))
        .map(|(name, [out, inp])| {
            let delta = match spec {
                "full" => Delta { low_rank: None, weight: Some(Tensor::randn([out, inp], opts) * 0.01), bias: None },
                rank => {
                    let r: i64 = rank.parse().expect("--lora RANK|full");
                    let pair = (Tensor::randn([r, inp], opts) * 0.01, Tensor::randn([out, r], opts) * 0.01);
                    Delta { low_rank: Some(pair), weight: None, bias: None }
                }
            };
            (name, delta)
        })
        .collect();
    Adapter { path: PathBuf::from(format!("random-{spec}")), layers }
}

/// `runs` timed CFG steps after a warm-up, each printed as `row(run, elapsed)`.
fn step_runs(
    model: &WanTransformer,
    (x, t, context): (&Tensor, &Tensor, &vgen_core::models::wan::transformer::TextContext),
    runs: usize,
    device: Device,
    row: impl Fn(usize, Duration) -> serde_json::Value,
) -> vgen_core::Result<()> {
    for run in 0..=runs {
        let started = Instant::now();
        let out = model.forward_with(&Tensor::cat(&[x, x], 0), t, context)?;
        let parts = out.chunk(2, 0);
        let guided = &parts[1] + (&parts[0] - &parts[1]) * 5.0;
        if device.is_cuda() {
            if let Device::Cuda(i) = device {
                tch::Cuda::synchronize(i as i64);
            }
        }
        let elapsed = started.elapsed();
        assert_eq!(guided.size(), x.size());
        println!("{}", row(run, elapsed));
    }
    Ok(())
}

/// A whole denoising loop of `steps` with classifier-free guidance, UniPC at shift 3 as Wan2.1 ships it, random
/// weights from a config and `step`'s prompts: its time with or without the step cache, and the steps the cache
/// skipped. With random weights the skips are not those trained weights would give; the time of a skipped step
/// against a computed one is what this measures.
fn denoising_loop(
    folder: &Path,
    [frames, height, width]: [i64; 3],
    steps: usize,
    step_cache: Option<f64>,
) -> vgen_core::Result<()> {
    use vgen_core::models::step_cache::StepCache;
    use vgen_core::schedulers::{SchedulerConfig, unipc::UniPcConfig};
    let config: TransformerConfig = weights::read_config(folder)?;
    let text_dim = config.text_dim;
    let vs = VarStore::new(Device::Cpu);
    let model = WanTransformer::new(vs.root(), config)?;
    let _g = tch::no_grad_guard();
    tch::manual_seed(0);
    let latent_frames = (frames - 1) / 4 + 1;
    let latents = Tensor::randn([1, 16, latent_frames, height / 8, width / 8], (Kind::Float, Device::Cpu));
    let text = Tensor::randn([2, 512, text_dim], (Kind::Float, Device::Cpu));
    let _ = text.get(0).narrow(0, 32, 512 - 32).zero_();
    let _ = text.get(1).narrow(0, 32, 512 - 32).zero_();
    let context = model.text_context(&text, None, true)?;
    // One timed loop: its twenty steps are their own warm-up (at this size a 1.3B step takes seconds on a CPU).
    for run in 0..1 {
        let mut scheduler = SchedulerConfig::UniPc(UniPcConfig::flow(1000, 3.0)).build(steps)?;
        let timesteps = scheduler.timesteps().to_vec();
        let mut cache = StepCache::new(step_cache, steps);
        let mut x = latents.shallow_clone();
        let started = Instant::now();
        for (i, t) in timesteps.iter().enumerate() {
            let batch = Tensor::cat(&[&x, &x], 0);
            let timestep = Tensor::from_slice(&[*t, *t]);
            let out = vgen_core::models::step_cache::step(&mut cache, i, &batch, |reuse, record| {
                model.forward_cached(&batch, &timestep, &context, reuse, record)
            })?;
            let parts = out.chunk(2, 0);
            x = scheduler.step(&(&parts[1] + (&parts[0] - &parts[1]) * 5.0), &x)?;
        }
        let elapsed = started.elapsed();
        let skipped = cache.as_ref().map_or(0, |c| c.skipped().len());
        let line = serde_json::json!({
            "side": "vgen", "case": "loop", "warmup": false, "run": run, "steps": steps, "steps_skipped": skipped,
            "loop_ms": ms(elapsed), "tokens": latent_frames * (height / 16) * (width / 16),
            "threads": vgen_core::runtime::cpu_threads(),
        });
        println!("{line}");
    }
    Ok(())
}

/// A VAE decode of random latents, streamed chunk by chunk into an MP4 file, as the engine does for a job that
/// keeps no frames. Weights come from the folder when it has them, else random from its config.
fn decode(
    folder: &Path,
    [frames, height, width]: [i64; 3],
    out: &Path,
    tiling: Option<vgen_core::models::wan::vae_tiling::Tiling>,
    device: Device,
) -> vgen_core::Result<()> {
    let config: VaeConfig = weights::read_config(folder)?;
    let (z_dim, s) = (config.z_dim, config.spatial_factor());
    let vs = VarStore::new(device);
    let vae = WanVaeDecoder::new(vs.root(), config)?;
    if let Ok(files) = weights::weight_files(folder, "diffusion_pytorch_model") {
        weights::load(&vs, &files, &[], &["encoder.", "quant_conv."])?;
    }
    let _g = tch::no_grad_guard();
    tch::manual_seed(0);
    let latents = Tensor::randn([1, z_dim, (frames - 1) / 4 + 1, height / s, width / s], (Kind::Float, device));
    let geometry = vgen_core::encode::Geometry {
        width: width as usize,
        height: height as usize,
        fps: 16.0,
        num_frames: frames as usize,
    };
    let started = Instant::now();
    let mut encoder = vgen_core::encode::open(out, geometry)?;
    let sink = |_, _, chunk: Tensor| {
        let f = vgen_core::Frames::from_tensor(&chunk.get(0).permute([1, 2, 3, 0]), false)?;
        for t in 0..f.num_frames {
            encoder.push(f.frame(t))?;
        }
        Ok(())
    };
    match tiling {
        Some(t) => vae.decode_tiled(&latents, t, sink)?,
        None => vae.decode(&latents, sink)?,
    }
    encoder.finish()?;
    let line = serde_json::json!({
        "side": "vgen", "case": "decode", "frames": frames, "decode_ms": ms(started.elapsed()),
        "peak_rss": peak_rss(), "threads": vgen_core::runtime::cpu_threads(),
    });
    println!("{line}");
    Ok(())
}

/// The tiny fixture transformers in `dtype` on `device` against the fp32 outputs diffusers gave on the CPU
/// (`core/tests/fixtures/wan/cases`): text-to-video (`tiny-wan`, two cases) and image-to-video (`tiny-wan-i2v`,
/// with CLIP tokens). One line per case with the largest absolute error.
fn parity(fixtures: &Path, device: Device, kind: Kind) -> vgen_core::Result<()> {
    use vgen_core::models::wan;
    let cases = |name: &str| -> vgen_core::Result<std::collections::HashMap<String, Tensor>> {
        Ok(Tensor::read_safetensors(fixtures.join("cases").join(name))?.into_iter().collect())
    };
    let load = |folder: &str| -> vgen_core::Result<(VarStore, WanTransformer)> {
        let dir = fixtures.join(folder).join("transformer");
        let (mut vs, model) = wan::load_transformer(&dir, device, weights::read_config(&dir)?)?;
        if kind != Kind::Float {
            wan::cast_floats(&mut vs, kind);
        }
        Ok((vs, model))
    };
    let _g = tch::no_grad_guard();
    let report = |case: &str, got: &Tensor, want: &Tensor| {
        let err = (got.to_device(Device::Cpu).to_kind(Kind::Double) - want.to_kind(Kind::Double)).abs().max();
        let line = serde_json::json!({
            "side": "vgen", "case": "parity", "model": case, "dtype": format!("{kind:?}"),
            "max_abs_error": err.double_value(&[]), "scale": want.abs().max().double_value(&[]),
        });
        println!("{line}");
    };
    let c = cases("transformer.safetensors")?;
    let (_vs, t2v) = load("tiny-wan")?;
    for case in ["a", "b"] {
        let get = |k: &str| c[&format!("{case}.{k}")].to_device(device);
        let out = t2v.forward(&get("hidden_states"), &get("timestep"), &get("encoder_hidden_states"), None)?;
        report(&format!("t2v.{case}"), &out, &c[&format!("{case}.sample")]);
    }
    let c = cases("i2v.safetensors")?;
    let (_vs, i2v) = load("tiny-wan-i2v")?;
    let get = |k: &str| c[k].narrow(0, 0, 2).to_device(device);
    let out =
        i2v.forward(&get("module.x"), &get("module.t"), &get("module.text"), Some(&get("i2v.image_embeds_in")))?;
    report("i2v", &out, &c["i2v.out"]);
    Ok(())
}
