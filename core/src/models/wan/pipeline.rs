//! The Wan2.1 text-to-video pipeline as an engine [`Model`]: prompt → UMT5 embeddings (positive and negative) →
//! seeded latents → N flow-matching steps with classifier-free guidance → chunked VAE decode → RGB8 frames.
//!
//! It follows diffusers' `WanPipeline` (defaults 50 steps, guidance 5.0, 81 frames, 16 fps, 480×832), with two
//! deliberate differences: CFG runs the conditional and unconditional passes as one batch (one forward instead of
//! two), and every step checks the latents for NaN or Inf, failing the attempt with a retryable `numerical` error
//! instead of decoding garbage.

use super::clip::{ClipImageProcessor, ClipVisionConfig, ClipVisionEncoder};
use super::condition::{ImageConditioning, concat_condition, condition_video};
use super::tokenizer::{WanTokenizer, prompt_clean};
use super::transformer::{TransformerConfig, WanTransformer};
use super::umt5::{Umt5Config, Umt5Encoder};
use super::vae::{VaeConfig, WanVaeDecoder};
use super::vae_encoder::WanVaeEncoder;
use super::vae_tiling::Tiling;
use super::{cast_floats, load_component, load_transformer};
use crate::device::Device;
use crate::engine::{Attempt, FrameRule, Params, Stage};
use crate::error::{Error, ErrorCode, Result};
use crate::models::expert_swap::ExpertSwap;
use crate::models::lora::active::Applied;
use crate::models::lora::merged::{self, Budget, MergedSet};
use crate::models::per_device::PerDevice;
use crate::models::step_cache::{self, StepCache};
use crate::models::weights::{
    check_confined, fingerprint, header_elements, read_config, read_json, tensor_names, weight_files,
};
use crate::models::{Conditioning, Defaults, Model, ModelInfo};
use crate::schedulers::SchedulerConfig;
use crate::video::{Frames, Video};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Kind, Tensor, nn::VarStore};

/// Optional `vgen.json` beside `model_index.json`: the name and defaults vgen serves the model with.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServingConfig {
    pub name: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub num_frames: Option<u32>,
    pub fps: Option<f64>,
    pub steps: Option<u32>,
    pub guidance_scale: Option<f64>,
    /// The low-noise expert's guidance scale, for a two-expert model (the first scale when left out).
    pub guidance_scale_2: Option<f64>,
    pub max_sequence_length: Option<usize>,
    pub flow_shift: Option<f64>,
    /// The sampler requests start from (see `schedulers::Sampler`): a distilled model's folder names its kind,
    /// shift and fixed timesteps here.
    pub sampler: Option<crate::schedulers::Sampler>,
    /// A `[z_dim][3]` matrix projecting latents to RGB for previews.
    pub latent_rgb_factors: Option<Vec<[f64; 3]>>,
    /// The transformer's and text encoder's dtype on CUDA: "bf16" (the default), "fp16" or "fp32". The VAE and
    /// the CPU always use fp32.
    pub cuda_dtype: Option<String>,
    /// Frames of more pixels than this decode in tiles unless a request says otherwise (default 832 × 480).
    pub vae_tiling_above_pixels: Option<u64>,
    /// The tiles' size and stride in pixels, `[size, stride]` (default `[256, 192]`, diffusers').
    pub vae_tile_pixels: Option<[i64; 2]>,
    /// How the transformers fit a device short of memory: "auto" (the default: on a GPU whose memory budget the
    /// model would not fit otherwise, a two-expert model's idle expert waits in host memory (`models::expert_swap`)
    /// if that is enough, else the blocks are offloaded (`models::offload`)), "experts" (always swap the experts),
    /// "blocks" (always offload the blocks) or "off".
    pub offload: Option<String>,
    /// Bytes of merged LoRA weights (`models::lora::merged`) kept per device for recent adapter sets; a set that
    /// does not fit runs unmerged. By default, on the CPU, room for one set that touches every linear layer (a
    /// second copy of the transformers' linear weights); on a GPU, none (device memory is the memory plan's).
    pub lora_merge_bytes: Option<u64>,
}

/// Frames of more pixels than this decode in tiles when neither the request nor `vgen.json` says otherwise: 480p
/// (832 × 480) decodes whole, as diffusers does by default; larger frames tile, as the VAE's memory at 720p and
/// above is what runs GPUs out of memory (stable-diffusion.cpp #872, ComfyUI #11223).
pub const DEFAULT_TILING_ABOVE_PIXELS: u64 = 832 * 480;

/// Blocks copied ahead of the one that runs, with block offload: two blocks on the device at once.
pub const OFFLOAD_AHEAD: usize = 1;

/// How a model's transformers fit a device short of memory (a memory plan's choice, or `vgen.json`'s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offload {
    /// A two-expert model's experts live in host memory and are lent to the device one at a time, whole.
    Experts,
    /// The transformers' blocks live in host memory and are lent to the device two at a time.
    Blocks,
}

/// The loaded networks, on one device.
pub struct Components {
    _vars: Vec<VarStore>,
    pub encoder: Umt5Encoder,
    pub transformer: WanTransformer,
    /// Wan2.2 A14B's low-noise expert (`transformer_2`), which takes the steps below the boundary.
    pub transformer_2: Option<WanTransformer>,
    /// With expert swap: which of the two experts is on the device (see `models::expert_swap`).
    pub expert_swap: Option<ExpertSwap>,
    pub vae: WanVaeDecoder,
    /// The VAE's encoder, for a model that animates an image.
    pub image_encoder: Option<WanVaeEncoder>,
    /// The CLIP vision encoder, for a Wan2.1 image-to-video model.
    pub clip: Option<ClipVisionEncoder>,
}

// SAFETY: after loading, the weights are never written (the VarStores are frozen and every forward pass builds
// new tensors, with no in-place operation on a weight), and libtorch supports concurrent reads of one tensor from
// several threads. That is what lets one copy of the weights per device serve every worker on it.
unsafe impl Send for Components {}
unsafe impl Sync for Components {}

pub struct WanModel {
    folder: PathBuf,
    info: ModelInfo,
    serving: ServingConfig,
    scheduler: SchedulerConfig,
    tokenizer: WanTokenizer,
    transformer_config: TransformerConfig,
    /// Wan2.2 A14B: the low-noise expert's config, and the timestep below which it takes over
    /// (`boundary_ratio` × the schedule's length).
    experts: Option<(TransformerConfig, f64)>,
    vae_config: VaeConfig,
    encoder_config: Umt5Config,
    conditioning: ImageConditioning,
    /// The CLIP encoder's config and image processor, for a model that reads CLIP tokens.
    clip: Option<(ClipVisionConfig, ClipImageProcessor)>,
    weight_bytes: u64,
    /// The networks, loaded once per device however many workers the device has.
    loaded: PerDevice<Components>,
    /// The bytes of each transformer's weight files (`transformer`, `transformer_2`; 0 for a missing second).
    transformer_bytes: [u64; 2],
    /// The devices whose memory plan chose an offload; a device loads the model that way from then on.
    offload_on: std::sync::Mutex<std::collections::HashMap<Device, Offload>>,
    /// LoRA adapters loaded for recent jobs, by (file, its hash, device), oldest first.
    adapters: std::sync::Mutex<Vec<AdapterKey>>,
    /// Merged weights of recent adapter sets, per device, within `lora_merge_bytes`.
    merged: std::sync::Mutex<std::collections::HashMap<Device, Budget<MergeKey>>>,
}

type AdapterKey = ((PathBuf, String, Device), Arc<crate::models::lora::Adapter>);
/// An adapter set as merged: each adapter's file, hash, scale (bits) and expert.
type MergeKey = Vec<(PathBuf, String, u64, Option<usize>)>;

impl WanModel {
    /// Opens a diffusers-format Wan folder. Configs and the tokenizer are read and checked now; weights are loaded
    /// on first use on each device (and checked then, tensor by tensor).
    pub fn open(folder: &Path) -> Result<Self> {
        let index_path = folder.join("model_index.json");
        check_confined(folder)?;
        let index: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&index_path)
                .map_err(|e| Error::new(ErrorCode::NotFound, format!("{}: {e}", index_path.display())))?,
        )
        .map_err(|e| Error::invalid(format!("{}: {e}", index_path.display())))?;
        let class = index.get("_class_name").and_then(|c| c.as_str()).unwrap_or("");
        if class != "WanPipeline" && class != "WanImageToVideoPipeline" {
            return Err(Error::invalid(format!(
                "{} is a {class:?}, not a WanPipeline or WanImageToVideoPipeline",
                index_path.display()
            )));
        }
        let expand_timesteps = index.get("expand_timesteps").and_then(|e| e.as_bool()).unwrap_or(false);
        let serving: ServingConfig = match std::fs::read_to_string(folder.join("vgen.json")) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| Error::invalid(format!("{}/vgen.json: {e}", folder.display())))?,
            Err(_) => ServingConfig::default(),
        };
        if let Some(sampler) = &serving.sampler {
            sampler
                .check("sampler")
                .map_err(|e| Error::invalid(format!("{}/vgen.json: {}", folder.display(), e.message())))?;
        }
        let mut scheduler = SchedulerConfig::from_file(&folder.join("scheduler/scheduler_config.json"))?;
        if let Some(shift) = serving.flow_shift {
            scheduler = scheduler.with_flow_shift(shift);
        }
        let max_len = serving.max_sequence_length.unwrap_or(512);
        let tokenizer = WanTokenizer::from_folder(&folder.join("tokenizer"), max_len)?;
        let transformer_config: TransformerConfig = read_config(&folder.join("transformer"))?;
        let vae_config: VaeConfig = read_config(&folder.join("vae"))?;
        let encoder_config: Umt5Config = read_config(&folder.join("text_encoder"))?;
        // Wan2.2 A14B: two experts, `transformer` for high noise and `transformer_2` below the boundary.
        let experts = match index.get("boundary_ratio").and_then(|b| b.as_f64()) {
            Some(ratio) => {
                if !(ratio > 0.0 && ratio < 1.0) {
                    return Err(Error::invalid(format!(
                        "{}: boundary_ratio {ratio} is not between 0 and 1",
                        index_path.display()
                    )));
                }
                let second: TransformerConfig = read_config(&folder.join("transformer_2"))?;
                second.min_parameters()?;
                second.check()?;
                if (second.in_channels, second.out_channels, second.patch_size, second.text_dim, second.image_dim)
                    != (
                        transformer_config.in_channels,
                        transformer_config.out_channels,
                        transformer_config.patch_size,
                        transformer_config.text_dim,
                        transformer_config.image_dim,
                    )
                {
                    return Err(Error::invalid(format!(
                        "{}: transformer_2 must take and give what transformer does (channels, patches, text and \
                         image widths)",
                        folder.display()
                    )));
                }
                Some((second, ratio * scheduler.num_train_timesteps() as f64))
            }
            None => None,
        };
        // Each dimension positive (with its name), then the config consistent with itself, before anything reads it.
        transformer_config.min_parameters()?;
        transformer_config.check()?;
        vae_config.min_parameters()?;
        vae_config.check()?;
        if vae_config.temporal_factor() != 4 {
            return Err(Error::invalid(format!(
                "{}/vae: it compresses time {}x; vgen runs Wan VAEs that compress it 4x (videos of 1 + 4k frames)",
                folder.display(),
                vae_config.temporal_factor()
            )));
        }
        // How the model takes images (see `condition`): from `expand_timesteps`, the transformer's channels and
        // whether it embeds CLIP tokens.
        let conditioning = ImageConditioning::of(
            expand_timesteps,
            transformer_config.in_channels,
            vae_config.z_dim,
            transformer_config.image_dim.is_some(),
            transformer_config.pos_embed_seq_len.is_some(),
        )
        .map_err(|e| Error::invalid(format!("{}: {}", folder.display(), e.message())))?;
        let clip = match conditioning {
            ImageConditioning::Concat { clip: true, .. } => {
                let config: ClipVisionConfig = read_config(&folder.join("image_encoder"))?;
                let processor: ClipImageProcessor =
                    read_json(&folder.join("image_processor/preprocessor_config.json"))?;
                processor.check(config.image_size)?;
                if Some(config.hidden_size) != transformer_config.image_dim {
                    return Err(Error::invalid(format!(
                        "image_encoder hidden_size {} does not match transformer image_dim {:?}",
                        config.hidden_size, transformer_config.image_dim
                    )));
                }
                if let Some(n) = transformer_config.pos_embed_seq_len {
                    if n != 2 * config.tokens() {
                        return Err(Error::invalid(format!(
                            "transformer pos_embed_seq_len {n} is not two images' CLIP tokens (2 x {})",
                            config.tokens()
                        )));
                    }
                }
                Some((config, processor))
            }
            _ => None,
        };
        if encoder_config.d_model != transformer_config.text_dim {
            return Err(Error::invalid(format!(
                "text_encoder d_model {} does not match transformer text_dim {}",
                encoder_config.d_model, transformer_config.text_dim
            )));
        }
        // Every config is held to the weights it claims to describe before anything is allocated for it, so a
        // hostile or mistaken config.json is refused here, not by running out of memory at the first request.
        let mut files = Vec::new();
        let mut components = vec![
            ("transformer", "diffusion_pytorch_model", transformer_config.min_parameters()?),
            ("vae", "diffusion_pytorch_model", vae_config.min_parameters()?),
            ("text_encoder", "model", encoder_config.min_parameters()?),
        ];
        if let Some((config, _)) = &clip {
            components.push(("image_encoder", "model", config.min_parameters()?));
        }
        if let Some((config, _)) = &experts {
            components.push(("transformer_2", "diffusion_pytorch_model", config.min_parameters()?));
        }
        for (component, stem, min_parameters) in components {
            let component_files = weight_files(&folder.join(component), stem)?;
            let held = header_elements(&component_files)?;
            if min_parameters > held {
                return Err(Error::invalid(format!(
                    "{}/{component}/config.json describes at least {min_parameters} parameters but its weights hold {held}: \
                     the config does not match the weights",
                    folder.display()
                )));
            }
            files.extend(component_files);
        }
        let weight_bytes = files.iter().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum();
        let transformer_bytes = ["transformer", "transformer_2"].map(|c| {
            weight_files(&folder.join(c), "diffusion_pytorch_model")
                .into_iter()
                .flatten()
                .filter_map(|f| f.metadata().ok())
                .map(|m| m.len())
                .sum()
        });
        match serving.offload.as_deref() {
            None | Some("auto" | "blocks" | "off") => {}
            Some("experts") if experts.is_some() => {}
            Some("experts") => {
                return Err(Error::invalid(
                    "vgen.json: offload \"experts\" is for a model with two experts (Wan2.2 A14B); this one has one \
                     transformer",
                ));
            }
            Some(other) => {
                return Err(Error::invalid(format!(
                    "vgen.json: offload {other:?} is not auto, experts, blocks or off"
                )));
            }
        }
        let name = serving.name.clone().unwrap_or_else(|| {
            folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "wan".into())
        });
        let info = ModelInfo {
            name,
            weights_hash: fingerprint(&files)?,
            defaults: Defaults {
                width: serving.width.unwrap_or(832),
                height: serving.height.unwrap_or(480),
                num_frames: serving.num_frames.unwrap_or(81),
                fps: serving.fps.unwrap_or(16.0),
                steps: match serving.sampler.as_ref().and_then(|s| s.timesteps.as_ref()) {
                    Some(t) => t.len() as u32,
                    None => serving.steps.unwrap_or(50),
                },
                guidance_scale: serving.guidance_scale.unwrap_or(5.0),
                guidance_scale_2: experts
                    .as_ref()
                    .map(|_| serving.guidance_scale_2.or(serving.guidance_scale).unwrap_or(5.0)),
                sampler: Some(serving.sampler.clone().unwrap_or_default()),
            },
            // A latent pixel is `spatial_factor` pixels (8, or 16 for the Wan2.2 VAE) and a token covers a patch of
            // latent pixels: sides must be whole tokens.
            size_multiple: (vae_config.spatial_factor()
                * transformer_config.patch_size[1].max(transformer_config.patch_size[2]))
                as u32,
            frame_rule: FrameRule::OnePlusFourK,
            dtype: match serving.cuda_dtype.as_deref() {
                Some("fp16") => "f32 (fp16 on CUDA)".into(),
                Some("fp32") => "f32".into(),
                _ => "f32 (bf16 on CUDA)".into(),
            },
            conditioning: Conditioning {
                image: conditioning.takes_image(),
                last_image: conditioning.takes_last_image(),
                needs_image: conditioning.needs_image(),
                needs_last_image: conditioning.needs_last_image(),
            },
            takes_loras: true,
        };
        Ok(Self {
            folder: folder.to_path_buf(),
            info,
            serving,
            scheduler,
            tokenizer,
            transformer_config,
            experts,
            vae_config,
            encoder_config,
            conditioning,
            clip,
            weight_bytes,
            loaded: PerDevice::default(),
            transformer_bytes,
            offload_on: Default::default(),
            adapters: Default::default(),
            merged: Default::default(),
        })
    }

    pub fn tokenizer(&self) -> &WanTokenizer {
        &self.tokenizer
    }

    /// The networks on `device`, loading them the first time (once, while the device's other workers wait).
    pub fn components(&self, device: Device) -> Result<Arc<Components>> {
        self.loaded.get_or_load(device, || self.load(device))
    }

    fn load(&self, device: Device) -> Result<Components> {
        let dev = device.to_tch();
        let kind = self.compute_kind(device)?;
        let offload = self.offload(device);
        let (mut v1, encoder) =
            load_component(&self.folder.join("text_encoder"), "model", dev, &[], &["encoder.embed_tokens."], |p| {
                Umt5Encoder::new(p, self.encoder_config.clone())
            })?;
        // Offloaded transformers are read and cast in host memory, where they will live: the device never holds
        // more of them than the offload lends it.
        let transformer_dev = if offload.is_some() { tch::Device::Cpu } else { dev };
        let (mut v2, transformer) =
            load_transformer(&self.folder.join("transformer"), transformer_dev, self.transformer_config.clone())?;
        // Both experts stay on the device unless the memory plan said they do not fit: a job switches between
        // them once, and every job does.
        let transformer_2 = match &self.experts {
            Some((config, _)) => {
                let (mut v, t) = load_transformer(&self.folder.join("transformer_2"), transformer_dev, config.clone())?;
                if kind != Kind::Float {
                    cast_floats(&mut v, kind);
                }
                Some((v, t))
            }
            None => None,
        };
        let (v3, vae) = load_component(
            &self.folder.join("vae"),
            "diffusion_pytorch_model",
            dev,
            &[],
            &["encoder.", "quant_conv."],
            |p| WanVaeDecoder::new(p, self.vae_config.clone()),
        )?;
        let mut vars = vec![v3];
        let image_encoder = if self.conditioning.takes_image() {
            let (v4, e) = load_component(
                &self.folder.join("vae"),
                "diffusion_pytorch_model",
                dev,
                &[],
                &["decoder.", "post_quant_conv."],
                |p| WanVaeEncoder::new(p, self.vae_config.clone()),
            )?;
            vars.push(v4);
            Some(e)
        } else {
            None
        };
        // CLIP stays in fp32 on every device, like the VAE: it runs once per job on one or two images.
        let clip = match &self.clip {
            Some((config, _)) => {
                let folder = self.folder.join("image_encoder");
                // Checkpoints saved by transformers before 5 spell keys `vision_model.…`; 5 saves them bare.
                let names = tensor_names(&weight_files(&folder, "model")?)?;
                let prefix = if names.iter().any(|n| n.starts_with("vision_model.")) { "vision_model." } else { "" };
                let unused = ClipVisionEncoder::unused_prefixes(config, prefix);
                let unused: Vec<&str> = unused.iter().map(String::as_str).collect();
                let (v5, clip) = load_component(&folder, "model", dev, &[], &unused, |p| {
                    let root = if prefix.is_empty() { p } else { &p / "vision_model" };
                    ClipVisionEncoder::new(root, config.clone())
                })?;
                vars.push(v5);
                Some(clip)
            }
            None => None,
        };
        if kind != Kind::Float {
            cast_floats(&mut v1, kind);
            cast_floats(&mut v2, kind);
        }
        let mut transformer = transformer;
        let mut transformer_2 = transformer_2;
        let mut expert_swap = None;
        match offload {
            Some(Offload::Blocks) => {
                transformer.offload_blocks(&v2, OFFLOAD_AHEAD, dev);
                if let Some((v, t)) = transformer_2.as_mut() {
                    t.offload_blocks(v, OFFLOAD_AHEAD, dev);
                }
            }
            Some(Offload::Experts) => {
                let (v, t) = transformer_2.as_mut().expect("expert swap is chosen only for a model with two experts");
                expert_swap = Some(ExpertSwap::new(&v2, v, dev));
                transformer.buffers_to(dev);
                t.buffers_to(dev);
            }
            None => {}
        }
        vars.extend([v1, v2]);
        let transformer_2 = transformer_2.map(|(v, t)| {
            vars.push(v);
            t
        });
        Ok(Components { _vars: vars, encoder, transformer, transformer_2, expert_swap, vae, image_encoder, clip })
    }

    /// The adapters a job names, loaded on `device` in the transformer's dtype (kept for the next job that names
    /// the same file, the last 8), each checked against the transformer's layers; and the merged set the job
    /// computes with, when its adapters are merged (see [`Self::merged_set`]).
    fn adapters(
        &self,
        loras: &[crate::engine::Lora],
        device: Device,
        c: &Components,
    ) -> Result<(Vec<Applied>, Option<Arc<MergedSet>>)> {
        if loras.is_empty() {
            return Ok((Vec::new(), None));
        }
        let kind = self.compute_kind(device)?;
        // An adapter is checked against each transformer it applies to (a two-expert model's may differ in size),
        // with the text encoder's layers beside each.
        let encoder = c.encoder.linears();
        let with_encoder = |mut layers: std::collections::BTreeMap<String, [i64; 2]>| {
            layers.extend(encoder.clone());
            layers
        };
        let linears: Vec<_> =
            std::iter::once(&c.transformer).chain(&c.transformer_2).map(|t| with_encoder(t.linears())).collect();
        let mut out = Vec::with_capacity(loras.len());
        // The experts (indices into `linears`) each adapter applies to.
        let mut experts = Vec::with_capacity(loras.len());
        for lora in loras {
            let key = (lora.path.clone(), lora.hash.clone(), device);
            let cached = self
                .adapters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, a)| a.clone());
            let adapter = match cached {
                Some(a) => a,
                None => {
                    let a = Arc::new(crate::models::lora::Adapter::open(&lora.path, device.to_tch(), kind)?);
                    let mut cache = self.adapters.lock().unwrap_or_else(|e| e.into_inner());
                    cache.push((key, a.clone()));
                    if cache.len() > 8 {
                        cache.remove(0);
                    }
                    a
                }
            };
            let its: Vec<usize> = match lora.expert {
                Some(e) => vec![e.index()],
                None => (0..linears.len()).collect(),
            };
            for layers in its.iter().filter_map(|e| linears.get(*e)) {
                adapter.check(layers)?;
            }
            if lora.expert.is_some()
                && let Some(name) = adapter.layers.keys().find(|n| n.starts_with(super::umt5::PREFIX))
            {
                return Err(Error::invalid(format!(
                    "LoRA {}: it changes the text encoder ({name}), which both experts share: give it without \
                     \"expert\"",
                    lora.path.display()
                )));
            }
            out.push(Applied { adapter, scale: lora.scale, expert: lora.expert.map(|e| e.index()) });
            experts.push(its);
        }
        let merged = self.merged_set(loras, &out, &experts, device, c, &linears, kind);
        Ok((out, merged))
    }

    /// The merged set for a job's adapters (`applied`, each on `experts`, from `loras`; `linears` are each
    /// transformer's layers with the text encoder's), if they are merged: when the transformers are dense and
    /// resident (a merged copy of a quantized or offloaded layer would take the memory those save) and the set
    /// fits the device's `lora_merge_bytes` with idle older sets let go. Otherwise the job applies its adapters
    /// unmerged.
    #[allow(clippy::too_many_arguments)]
    fn merged_set(
        &self,
        loras: &[crate::engine::Lora],
        applied: &[Applied],
        experts: &[Vec<usize>],
        device: Device,
        c: &Components,
        linears: &[std::collections::BTreeMap<String, [i64; 2]>],
        kind: Kind,
    ) -> Option<Arc<MergedSet>> {
        let transformers = || std::iter::once(&c.transformer).chain(&c.transformer_2);
        if self.offload(device).is_some() || transformers().any(|t| t.is_quantized()) {
            return None;
        }
        let live: Vec<_> = (applied.iter().zip(loras).zip(experts)).filter(|((a, _), _)| a.scale != 0.0).collect();
        if live.is_empty() {
            return None;
        }
        let shape_of = |name: &str| linears.iter().find_map(|l| l.get(name).copied());
        let bytes = merged::set_bytes(live.iter().map(|((a, _), e)| (&*a.adapter, e.as_slice())), kind, shape_of);
        let key: MergeKey =
            live.iter().map(|((a, l), _)| (l.path.clone(), l.hash.clone(), a.scale.to_bits(), a.expert)).collect();
        let mut budgets = self.merged.lock().unwrap_or_else(|e| e.into_inner());
        let budget = budgets.entry(device).or_insert_with(|| {
            Budget::new(self.serving.lora_merge_bytes.unwrap_or_else(|| {
                if device.is_cuda() {
                    0
                } else {
                    let layers = transformers().flat_map(|t| t.linears().into_values());
                    layers.map(|[o, i]| (o * i) as u64 * kind.elt_size_in_bytes() as u64).sum()
                }
            }))
        });
        budget.get_or_start(key, bytes)
    }

    /// The bytes of each merged adapter set kept on `device`, least recently used first.
    pub fn merged_sets(&self, device: Device) -> Vec<u64> {
        self.merged.lock().unwrap_or_else(|e| e.into_inner()).get(&device).map(Budget::kept).unwrap_or_default()
    }

    /// How the transformers are offloaded on `device`, if they are: `vgen.json` says so, or a memory plan chose it.
    fn offload(&self, device: Device) -> Option<Offload> {
        self.configured_offload()
            .unwrap_or_else(|| self.offload_on.lock().unwrap_or_else(|e| e.into_inner()).get(&device).copied())
    }

    /// What `vgen.json`'s `offload` fixes (`Some(None)` for "off"), or None for "auto", which leaves it to the
    /// memory plan.
    fn configured_offload(&self) -> Option<Option<Offload>> {
        match self.serving.offload.as_deref() {
            Some("blocks") => Some(Some(Offload::Blocks)),
            Some("experts") => Some(Some(Offload::Experts)),
            Some("off") => Some(None),
            _ => None,
        }
    }

    /// The dtype the transformer and text encoder compute in on `device`.
    pub fn compute_kind(&self, device: Device) -> Result<Kind> {
        if !device.is_cuda() {
            return Ok(Kind::Float);
        }
        match self.serving.cuda_dtype.as_deref().unwrap_or("bf16") {
            "bf16" => Ok(Kind::BFloat16),
            "fp16" => Ok(Kind::Half),
            "fp32" => Ok(Kind::Float),
            other => Err(Error::invalid(format!("vgen.json: cuda_dtype {other:?} is not bf16, fp16 or fp32"))),
        }
    }

    /// Text embeddings `[B, L, d]` for cleaned prompts, with rows past each prompt's length zeroed.
    pub fn encode_prompts(&self, c: &Components, prompts: &[&str], device: tch::Device) -> Result<Tensor> {
        let (ids, mask) = self.tokenizer.encode(prompts)?;
        let (ids, mask) = (ids.to_device(device), mask.to_device(device));
        let hidden = c.encoder.forward(&ids, &mask).to_kind(Kind::Float);
        Ok(hidden * mask.unsqueeze(-1).to_kind(Kind::Float))
    }

    /// The denoising loop from `latents`, with `text` = [cond] or [cond; uncond] embeddings (batched CFG).
    /// `each_step(i, steps, latents)` is called after every step. `images` is what the job's images became (see
    /// [`Images`]), as diffusers' `WanImageToVideoPipeline` uses them. A two-expert model runs `transformer` at
    /// guidance `guidance` for timesteps at or above its boundary and `transformer_2` at `guidance_2` below it.
    /// Returns the latents and the steps (1-based) at which the step cache skipped the blocks.
    #[allow(clippy::too_many_arguments)]
    pub fn denoise(
        &self,
        c: &Components,
        latents: Tensor,
        text: &Tensor,
        schedule: impl Into<Schedule>,
        guidance: f64,
        guidance_2: Option<f64>,
        images: &Images,
        mut each_step: impl FnMut(usize, usize, &Tensor, f32) -> Result<()>,
    ) -> Result<(Tensor, Vec<u32>)> {
        let schedule = schedule.into();
        let first_frame = images.first_latent.as_ref();
        // m: 0 on latent frame 0, 1 elsewhere; the input is (1 - m)·condition + m·latents. Per step only m·latents
        // changes: (1 - m)·condition and the per-token mask `m[:, :, :, ::ph, ::pw]` (flattened in token order) are
        // made once.
        let [_, ph, pw] = self.transformer_config.patch_size;
        let condition = first_frame.map(|cond| {
            let mask = latents.ones_like();
            let _ = mask.narrow(2, 0, 1).fill_(0.0);
            let given = (mask.ones_like() - &mask) * cond;
            let per_token = mask.get(0).get(0).slice(1, 0, None, ph).slice(2, 0, None, pw).reshape([1, -1]);
            (given, mask, per_token)
        });
        let given = |x: &Tensor| match &condition {
            Some((given, mask, _)) => given + mask * x,
            None => x.shallow_clone(),
        };
        let sampler = &schedule.sampler;
        let mut scheduler =
            self.scheduler.for_sampler(sampler).build_with(schedule.steps, sampler.timesteps.as_deref())?;
        let timesteps = scheduler.timesteps().to_vec();
        let steps = timesteps.len();
        // The text side of the cross-attention (and the image's, for CLIP models) depends on the prompts and the
        // image alone: prepared once per expert (when it first runs, with its weights on the device), used every
        // step. Both halves of a CFG batch see the same image.
        let prompts = text.size()[0];
        let cfg = prompts == 2;
        let clip = images.clip_tokens.as_ref().map(|t| t.repeat([prompts, 1, 1]));
        let second = match (&c.transformer_2, &self.experts) {
            (Some(t2), Some((_, boundary))) => Some((t2, *boundary)),
            _ => None,
        };
        let mut contexts: [Option<super::transformer::TextContext>; 2] = [None, None];
        let mut x = latents;
        let mut cache = StepCache::new(schedule.step_cache, steps);
        // The expert the last step ran (0: `transformer`, 1: `transformer_2`), held on the device when the experts
        // are swapped (released before the other is asked for, or two jobs could each wait for the other).
        let mut held: Option<(usize, Option<crate::models::expert_swap::Held<'_>>)> = None;
        for (i, t) in timesteps.iter().enumerate() {
            let (transformer, guidance, expert) = match second {
                Some((t2, boundary)) if (*t as f64) < boundary => (t2, guidance_2.unwrap_or(guidance), 1),
                _ => (&c.transformer, guidance, 0),
            };
            if held.as_ref().is_none_or(|(e, _)| *e != expert) {
                if let Some(cache) = cache.as_mut().filter(|_| held.is_some()) {
                    // One expert's residual means nothing to the other.
                    cache.restart();
                }
                drop(held.take());
                held = Some((expert, c.expert_swap.as_ref().map(|s| s.hold(expert)).transpose()?));
                crate::models::lora::active::running_expert(expert);
            }
            let context = match &mut contexts[expert] {
                Some(context) => &*context,
                slot => slot.insert(transformer.text_context(text, clip.as_ref(), true)?),
            };
            let input = given(&x);
            let input = match &images.concat {
                Some(condition) => Tensor::cat(&[&input, condition], 1),
                None => input,
            };
            let batch = if cfg { Tensor::cat(&[&input, &input], 0) } else { input };
            let b = batch.size()[0];
            let timestep = match &condition {
                Some((_, _, per_token)) => (per_token * *t as f64).expand([b, -1], false),
                None => Tensor::full([b], *t as f64, (Kind::Float, x.device())),
            };
            let out = step_cache::step(&mut cache, i, &batch, |reuse, record| {
                transformer.forward_cached(&batch, &timestep, context, reuse, record)
            })?;
            let noise = if cfg {
                let parts = out.chunk(2, 0);
                &parts[1] + (&parts[0] - &parts[1]) * guidance
            } else {
                out
            };
            x = scheduler.step(&noise, &x)?;
            let finite = x.isfinite().all().int64_value(&[]) == 1;
            if !finite {
                return Err(Error::new(
                    ErrorCode::Numerical,
                    format!("NaN or Inf in the latents after step {}", i + 1),
                ));
            }
            each_step(i + 1, steps, &x, scheduler.sigmas()[i + 1])?;
        }
        Ok((given(&x), cache.map(|c| c.skipped().to_vec()).unwrap_or_default()))
    }

    /// A cheap RGB look at latents `[1, z, T, h, w]`: a linear projection per pixel, not a decode.
    fn preview(&self, latents: &Tensor) -> Result<Frames> {
        let z = latents.size()[1];
        let lat = latents.get(0).permute([1, 2, 3, 0]); // [T, h, w, z]
        let rgb = match &self.serving.latent_rgb_factors {
            Some(f) if f.len() == z as usize => {
                let flat: Vec<f64> = f.iter().flatten().copied().collect();
                let m = Tensor::from_slice(&flat).view([z, 3]).to_kind(Kind::Float).to_device(latents.device());
                lat.to_kind(Kind::Float).matmul(&m)
            }
            _ => lat.narrow(3, 0, 3.min(z)).to_kind(Kind::Float).tanh(),
        };
        Frames::from_tensor(&rgb.clamp(-1.0, 1.0), false)
    }
}

impl Model for WanModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn weights_bytes(&self) -> u64 {
        self.weight_bytes
    }

    fn folder(&self) -> Option<&Path> {
        Some(&self.folder)
    }

    fn memory_plan(&self, p: &Params, device: Device, budget: Option<u64>) -> crate::models::MemoryPlan {
        let whole = self.memory_estimate(p, device);
        let all = self.transformer_bytes[0] + self.transformer_bytes[1];
        let blocks = self.transformer_config.num_layers.max(1) as usize;
        let on_device = (OFFLOAD_AHEAD + 1).min(blocks);
        // The blocks are nearly all of a transformer's bytes; with block offload, `on_device` of them stay. With
        // expert swap, the larger expert's bytes are the most the device holds of the two.
        let offloaded = whole - all + all * on_device as u64 / blocks as u64;
        let swapped = whole - all + self.transformer_bytes[0].max(self.transformer_bytes[1]);
        let offload = match self.configured_offload() {
            Some(configured) => configured,
            // Once the model is on the device, it stays as it was loaded: every later plan is that one's.
            None if self.loaded.get(device).is_some() => self.offload(device),
            // Host memory is where an offload moves weights to: it saves nothing on the CPU. The experts go whole
            // (one copy per switch) before the blocks do (every block, every step).
            None => match budget {
                Some(b) if device.is_cuda() && whole > b => {
                    if self.experts.is_some() && swapped <= b {
                        Some(Offload::Experts)
                    } else if offloaded <= b {
                        Some(Offload::Blocks)
                    } else {
                        None
                    }
                }
                _ => None,
            },
        };
        if let Some(o) = offload.filter(|_| device.is_cuda()) {
            // Until the model loads, the load follows the plan that saves the most so far: every request admitted
            // on a plan then fits what is loaded.
            let mut chosen = self.offload_on.lock().unwrap_or_else(|e| e.into_inner());
            let saves = |o: Offload| match o {
                Offload::Experts => 1,
                Offload::Blocks => 2,
            };
            if chosen.get(&device).is_none_or(|c| saves(*c) < saves(o)) {
                chosen.insert(device, o);
            }
        }
        crate::models::MemoryPlan {
            bytes: match offload {
                Some(Offload::Blocks) => offloaded,
                Some(Offload::Experts) => swapped,
                None => whole,
            },
            offload_blocks: (offload == Some(Offload::Blocks)).then_some((on_device, blocks)),
            expert_swap: offload == Some(Offload::Experts),
        }
    }

    fn memory_estimate(&self, p: &Params, _device: Device) -> u64 {
        // Weights, then the decoder's widest activations: every pixel of a 4-frame chunk at 4·base_dim channels,
        // a few times over (fp32), plus the finished video.
        let pixels = p.width as u64 * p.height as u64;
        let decode = pixels * 4 * (self.vae_config.base_dim as u64 * 4) * 4 * 4;
        self.weight_bytes + decode + pixels * p.num_frames as u64 * 3
    }

    fn generate(&self, p: &Params, attempt: &mut Attempt<'_>) -> Result<Video> {
        let device = attempt.device();
        let dev = device.to_tch();
        attempt.stage(Stage::EncodingPrompt)?;
        let c = self.components(device)?;
        // The job's LoRA adapters apply to every linear layer it runs until it returns (see `models::lora`).
        let _adapters = {
            let (adapters, merged) = self.adapters(&p.loras, device, &c)?;
            crate::models::lora::active::scoped_for_experts(adapters, merged)
        };
        let prompt = prompt_clean(&p.prompt);
        let negative = prompt_clean(&p.negative_prompt);
        let unknown = self.tokenizer.unknown_words(&prompt);
        if !unknown.is_empty() {
            attempt.warn(format!("words outside the model's vocabulary are ignored: {}", unknown.join(", ")));
        }
        let (prompt, negative) =
            (self.tokenizer.without_unknown_words(&prompt), self.tokenizer.without_unknown_words(&negative));
        let cfg = p.guidance_scale > 1.0;
        let prompts: Vec<&str> = if cfg { vec![&prompt, &negative] } else { vec![&prompt] };
        let text = self.encode_prompts(&c, &prompts, dev)?;
        attempt.check()?;

        attempt.stage(Stage::Generating)?;
        let z = self.vae_config.z_dim;
        let (st, ss) = (self.vae_config.temporal_factor(), self.vae_config.spatial_factor());
        let shape = [1, z, (p.num_frames as i64 - 1) / st + 1, p.height as i64 / ss, p.width as i64 / ss];
        let latents = crate::models::seeded_noise(p.seed as i64 & i64::MAX, &shape)?.to_device(dev);
        let images = self.images(&c, p, dev)?;
        attempt.check()?;
        let (latents, steps_skipped) = self.denoise(
            &c,
            latents,
            &text,
            Schedule { steps: p.steps as usize, sampler: p.sampler.clone(), step_cache: p.step_cache },
            p.guidance_scale,
            p.guidance_scale_2,
            &images,
            |i, n, x, _| {
                if attempt.wants_preview(i as u32) {
                    attempt.preview(i as u32, self.preview(x)?);
                }
                attempt.step(i as u32, n as u32)
            },
        )?;

        attempt.stage(Stage::Decoding)?;
        let latents = c.vae.denormalize(&latents);
        // Each decoded chunk goes to the job's files at once; the frames are kept only if some job wants them,
        // so a video written only to files needs memory for one chunk, not for its length.
        let retain = attempt.retains_frames();
        let mut data = Vec::with_capacity(if retain { (p.num_frames * p.height * p.width * 3) as usize } else { 0 });
        let mut frames_kept = 0;
        let budget = self.serving.vae_tiling_above_pixels.unwrap_or(DEFAULT_TILING_ABOVE_PIXELS);
        let tiled = p.vae_tiling.unwrap_or(p.width as u64 * p.height as u64 > budget);
        let sink = |i: usize, total: usize, chunk: Tensor| {
            // [1, 3, t, H, W] → [t, H, W, 3]
            let f = Frames::from_tensor(&chunk.get(0).permute([1, 2, 3, 0]), false)?;
            drop(chunk);
            attempt.emit(&f)?;
            if retain {
                frames_kept += f.num_frames;
                data.extend_from_slice(f.data());
            }
            attempt.chunk(i as u32 + 1, total as u32)
        };
        if tiled {
            let tiling = match self.serving.vae_tile_pixels {
                Some([size, stride]) => Tiling { sample_min: [size; 2], sample_stride: [stride; 2] },
                None => Tiling::default(),
            };
            c.vae.decode_tiled(&latents, tiling, sink)?;
        } else {
            c.vae.decode(&latents, sink)?;
        }
        attempt.stage(Stage::Finalizing)?;
        let frames = Frames::new(frames_kept, p.height as usize, p.width as usize, data)?;
        let metadata = crate::video::VideoMetadata { steps_skipped, ..Default::default() };
        Ok(Video { frames: Arc::new(frames), fps: p.fps, metadata })
    }
}

/// How a denoising loop walks down the noise: a number of steps of the model's own scheduler, or what a request's
/// sampler asks for (a number of steps is the former: `denoise(.., 20, ..)`).
pub struct Schedule {
    pub steps: usize,
    pub sampler: crate::schedulers::Sampler,
    /// The step cache's threshold (see `models::step_cache`); None runs the blocks at every step.
    pub step_cache: Option<f64>,
}

impl From<usize> for Schedule {
    fn from(steps: usize) -> Self {
        Schedule { steps, sampler: Default::default(), step_cache: None }
    }
}

/// What a job's images become for the denoising loop (see `condition`); all `None` for text-to-video.
#[derive(Default)]
pub struct Images {
    /// TI2V: the first image's latent frame `[1, z, 1, h, w]`.
    pub first_latent: Option<Tensor>,
    /// Channel concatenation: `[mask | condition latents]`, `[1, 4 + z, F, h, w]`.
    pub concat: Option<Tensor>,
    /// CLIP models: the penultimate hidden states of each image, `[images, tokens, d]` (first, then last).
    pub clip_tokens: Option<Tensor>,
}

impl WanModel {
    /// The job's images made into the model's conditioning. A request was already checked against what the model
    /// takes; what is checked here is what only the model knows.
    pub fn images(&self, c: &Components, p: &Params, dev: tch::Device) -> Result<Images> {
        let Some(first) = &p.image else {
            if self.conditioning.needs_image() {
                return Err(Error::invalid(format!("image: {} animates an image; give one", self.info.name)));
            }
            return Ok(Images::default());
        };
        let encoder = c
            .image_encoder
            .as_ref()
            .ok_or_else(|| Error::invalid(format!("image: {} makes video from text only", self.info.name)))?;
        let last = p.last_image.as_ref();
        if last.is_some() && !self.conditioning.takes_last_image() {
            return Err(Error::invalid(format!("last_image: {} takes no last frame", self.info.name)));
        }
        if last.is_none() && self.conditioning.needs_last_image() {
            return Err(Error::invalid(format!("last_image: {} needs a last frame too", self.info.name)));
        }
        match self.conditioning {
            ImageConditioning::FirstLatent => {
                Ok(Images { first_latent: Some(encoder.encode(&image_frames(first, dev))?), ..Images::default() })
            }
            ImageConditioning::Concat { .. } => {
                if last.is_some() && p.num_frames < 5 {
                    return Err(Error::invalid("last_image needs a video of at least 5 frames"));
                }
                let video = condition_video(
                    &image_frames(first, dev),
                    last.map(|l| image_frames(l, dev)).as_ref(),
                    p.num_frames as i64,
                );
                let concat = concat_condition(&encoder.encode(&video)?, last.is_some());
                let clip_tokens = match (&self.clip, &c.clip) {
                    (Some((_, processor)), Some(clip)) => {
                        let given: Vec<Tensor> =
                            std::iter::once(first).chain(last).map(|i| processor.preprocess(i.as_given())).collect();
                        Some(clip.forward(&Tensor::cat(&given, 0).to_device(dev))?)
                    }
                    _ => None,
                };
                Ok(Images { first_latent: None, concat: Some(concat), clip_tokens })
            }
            ImageConditioning::None => {
                Err(Error::invalid(format!("image: {} makes video from text only", self.info.name)))
            }
        }
    }
}

/// An RGB8 image as the VAE takes a one-frame video: `[1, 3, 1, H, W]` in [-1, 1], `x / 255 · 2 - 1` in fp32 as
/// diffusers' `VaeImageProcessor` computes it.
fn image_frames(image: &crate::engine::image::Image, device: tch::Device) -> Tensor {
    let (h, w) = (image.height as i64, image.width as i64);
    Tensor::from_slice(&image.rgb)
        .view([h, w, 3])
        .permute([2, 0, 1])
        .to_kind(Kind::Float)
        .divide_scalar(255.0)
        .multiply_scalar(2.0)
        .g_sub_scalar(1.0)
        .view([1, 3, 1, h, w])
        .to_device(device)
}
