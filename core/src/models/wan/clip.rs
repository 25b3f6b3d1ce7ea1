//! The CLIP vision encoder of Wan2.1's image-to-video models (`image_encoder`, transformers 5.23.0's
//! `CLIPVisionModel`; ViT-H/14 in the real ones) and its image processor (`image_processor`,
//! `CLIPImageProcessor`).
//!
//! The pipeline reads the encoder's penultimate hidden states (`hidden_states[-2]`: every token, class token
//! first, after the second-to-last layer and before any final norm), so the last layer and `post_layernorm` are
//! never run, and not loaded. The processor resizes the image as the host gave it (not the copy resized for the
//! VAE) so that its shortest edge has `size.shortest_edge` pixels, with Pillow's bicubic filter, crops the centre,
//! then scales and normalises each channel, as transformers' Pillow backend does.

use super::transformer::Fp32LayerNorm;
use crate::engine::image::Image;
use crate::engine::resample::{Filter, resize};
use crate::error::{Error, Result};
use serde::Deserialize;
use tch::Tensor;
use tch::nn::{self, Module};

/// `image_encoder/config.json`. Defaults are transformers' `CLIPVisionConfig`'s; real folders name every value.
#[derive(Clone, Debug, Deserialize)]
pub struct ClipVisionConfig {
    #[serde(default = "hidden")]
    pub hidden_size: i64,
    #[serde(default = "intermediate")]
    pub intermediate_size: i64,
    #[serde(default = "twelve")]
    pub num_hidden_layers: i64,
    #[serde(default = "twelve")]
    pub num_attention_heads: i64,
    #[serde(default = "three")]
    pub num_channels: i64,
    #[serde(default = "image_size")]
    pub image_size: i64,
    #[serde(default = "patch")]
    pub patch_size: i64,
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
}

fn hidden() -> i64 {
    768
}
fn intermediate() -> i64 {
    3072
}
fn twelve() -> i64 {
    12
}
fn three() -> i64 {
    3
}
fn image_size() -> i64 {
    224
}
fn patch() -> i64 {
    32
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn eps() -> f64 {
    1e-5
}

impl ClipVisionConfig {
    /// How many tokens an image becomes: one per patch and the class token.
    pub fn tokens(&self) -> i64 {
        (self.image_size / self.patch_size).pow(2) + 1
    }

    /// At least how many parameters the layers the pipeline runs hold (attention and MLP matrices, patch and
    /// position embeddings), checked against the weight files before anything is allocated.
    pub fn min_parameters(&self) -> Result<u64> {
        let dims = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_channels", self.num_channels),
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
        ];
        let [d, ff, layers, _, ch, _, p] = super::positive("image_encoder", dims)?;
        let per_layer = d.saturating_mul(d).saturating_mul(4).saturating_add(d.saturating_mul(ff).saturating_mul(2));
        let embeddings = d
            .saturating_mul(ch.saturating_mul(p).saturating_mul(p))
            .saturating_add(d.saturating_mul(self.tokens().max(1) as u64));
        Ok(layers.saturating_sub(1).saturating_mul(per_layer).saturating_add(embeddings))
    }

    fn check(&self) -> Result<()> {
        if self.num_hidden_layers < 2 {
            return Err(Error::invalid(
                "image_encoder: num_hidden_layers must be at least 2 (the pipeline reads the penultimate layer)",
            ));
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(Error::invalid("image_encoder: hidden_size must be a multiple of num_attention_heads"));
        }
        if self.image_size % self.patch_size != 0 {
            return Err(Error::invalid("image_encoder: image_size must be a multiple of patch_size"));
        }
        if !matches!(self.hidden_act.as_str(), "gelu" | "quick_gelu") {
            return Err(Error::invalid(format!(
                "image_encoder: hidden_act {:?} is not supported (gelu or quick_gelu)",
                self.hidden_act
            )));
        }
        Ok(())
    }
}

struct Layer {
    layer_norm1: Fp32LayerNorm,
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    layer_norm2: Fp32LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl Layer {
    fn new(vs: nn::Path, c: &ClipVisionConfig) -> Self {
        let (d, lc) = (c.hidden_size, Default::default());
        let attn = &vs / "self_attn";
        Self {
            layer_norm1: Fp32LayerNorm::new(&vs / "layer_norm1", d, c.layer_norm_eps, true),
            q_proj: nn::linear(&attn / "q_proj", d, d, lc),
            k_proj: nn::linear(&attn / "k_proj", d, d, lc),
            v_proj: nn::linear(&attn / "v_proj", d, d, lc),
            out_proj: nn::linear(&attn / "out_proj", d, d, lc),
            layer_norm2: Fp32LayerNorm::new(&vs / "layer_norm2", d, c.layer_norm_eps, true),
            fc1: nn::linear(&vs / "mlp" / "fc1", d, c.intermediate_size, lc),
            fc2: nn::linear(&vs / "mlp" / "fc2", c.intermediate_size, d, lc),
        }
    }

    fn forward(&self, x: &Tensor, heads: i64, act: &str) -> Tensor {
        let kind = x.kind();
        let h = self.layer_norm1.forward(x).to_kind(kind);
        let split = |t: Tensor| t.unflatten(2, [heads, -1]).transpose(1, 2);
        let (q, k, v) =
            (split(self.q_proj.forward(&h)), split(self.k_proj.forward(&h)), split(self.v_proj.forward(&h)));
        let attn = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<&Tensor>, 0.0, false, None, false);
        let x = x + self.out_proj.forward(&attn.transpose(1, 2).flatten(2, 3));
        let h = self.fc1.forward(&self.layer_norm2.forward(&x).to_kind(kind));
        let h = match act {
            "quick_gelu" => &h * (&h * 1.702).sigmoid(),
            _ => h.gelu("none"),
        };
        &x + self.fc2.forward(&h)
    }
}

/// The encoder up to its penultimate layer.
pub struct ClipVisionEncoder {
    config: ClipVisionConfig,
    patch_embedding: nn::Conv2D,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: Fp32LayerNorm,
    layers: Vec<Layer>,
}

impl ClipVisionEncoder {
    /// The checkpoint keys this build leaves out: the last layer and the final norm, which the pipeline never
    /// runs (`prefix` is `""` or `"vision_model."`, as the checkpoint spells its keys).
    pub fn unused_prefixes(config: &ClipVisionConfig, prefix: &str) -> Vec<String> {
        vec![format!("{prefix}encoder.layers.{}.", config.num_hidden_layers - 1), format!("{prefix}post_layernorm.")]
    }

    pub fn new(vs: nn::Path, config: ClipVisionConfig) -> Result<Self> {
        config.check()?;
        let c = &config;
        let d = c.hidden_size;
        let emb = &vs / "embeddings";
        let conv = nn::ConvConfig { stride: c.patch_size, bias: false, ..Default::default() };
        Ok(Self {
            patch_embedding: nn::conv2d(&emb / "patch_embedding", c.num_channels, d, c.patch_size, conv),
            class_embedding: emb.var("class_embedding", &[d], nn::Init::Const(0.0)),
            position_embedding: (&emb / "position_embedding").var("weight", &[c.tokens(), d], nn::Init::Const(0.0)),
            pre_layrnorm: Fp32LayerNorm::new(&vs / "pre_layrnorm", d, c.layer_norm_eps, true),
            layers: (0..c.num_hidden_layers - 1).map(|i| Layer::new(&vs / "encoder" / "layers" / i, c)).collect(),
            config,
        })
    }

    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// The penultimate hidden states `[B, tokens, hidden]` of `pixels` `[B, 3, image_size, image_size]`.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let s = self.config.image_size;
        let [b, _, h, w] = pixels.size()[..] else {
            return Err(Error::internal(format!("CLIP pixels must be [B, 3, H, W], got {:?}", pixels.size())));
        };
        if (h, w) != (s, s) {
            return Err(Error::internal(format!("CLIP pixels are {h}x{w}; the encoder takes {s}x{s}")));
        }
        let kind = self.class_embedding.kind();
        let patches = pixels.to_kind(kind).apply(&self.patch_embedding).flatten(2, -1).transpose(1, 2);
        let class = self.class_embedding.view([1, 1, -1]).expand([b, 1, -1], false);
        let x = Tensor::cat(&[class, patches], 1) + self.position_embedding.unsqueeze(0);
        let mut x = self.pre_layrnorm.forward(&x).to_kind(kind);
        for layer in &self.layers {
            x = layer.forward(&x, self.config.num_attention_heads, &self.config.hidden_act);
        }
        Ok(x)
    }
}

/// `image_processor/preprocessor_config.json`: how an image becomes the encoder's pixels.
#[derive(Clone, Debug, Deserialize)]
pub struct ClipImageProcessor {
    #[serde(default = "yes")]
    pub do_resize: bool,
    #[serde(default)]
    pub size: Option<Size>,
    #[serde(default = "yes")]
    pub do_center_crop: bool,
    #[serde(default)]
    pub crop_size: Option<Size>,
    #[serde(default = "yes")]
    pub do_rescale: bool,
    #[serde(default = "rescale_factor")]
    pub rescale_factor: f64,
    #[serde(default = "yes")]
    pub do_normalize: bool,
    #[serde(default = "mean")]
    pub image_mean: [f64; 3],
    #[serde(default = "std")]
    pub image_std: [f64; 3],
    /// Pillow's filter number: 3 is bicubic, the only one CLIP's processors use.
    #[serde(default = "bicubic")]
    pub resample: u8,
}

/// `{"shortest_edge": n}` or `{"height": h, "width": w}`.
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct Size {
    pub shortest_edge: Option<u32>,
    pub height: Option<u32>,
    pub width: Option<u32>,
}

fn yes() -> bool {
    true
}
fn rescale_factor() -> f64 {
    1.0 / 255.0
}
fn mean() -> [f64; 3] {
    [0.48145466, 0.4578275, 0.40821073]
}
fn std() -> [f64; 3] {
    [0.26862954, 0.26130258, 0.27577711]
}
fn bicubic() -> u8 {
    3
}

impl ClipImageProcessor {
    /// Refuses what this port does not do, so that a folder it would read differently fails at open.
    pub fn check(&self, image_size: i64) -> Result<()> {
        if self.resample != 3 {
            return Err(Error::invalid(format!(
                "image_processor: resample {} is not supported (3, bicubic, as CLIP's processors use)",
                self.resample
            )));
        }
        if !self.do_resize || !self.do_center_crop {
            return Err(Error::invalid("image_processor: do_resize and do_center_crop must be true"));
        }
        let Some(shortest) = self.size.and_then(|s| s.shortest_edge) else {
            return Err(Error::invalid("image_processor: size must be {\"shortest_edge\": n}"));
        };
        let crop = self.crop();
        if crop != Some((image_size as u32, image_size as u32)) {
            return Err(Error::invalid(format!(
                "image_processor: crop_size {crop:?} is not the encoder's image_size {image_size}"
            )));
        }
        if shortest < image_size as u32 {
            return Err(Error::invalid(format!(
                "image_processor: shortest_edge {shortest} is smaller than the crop ({image_size})"
            )));
        }
        if self.image_std.contains(&0.0) {
            return Err(Error::invalid("image_processor: image_std has a zero"));
        }
        Ok(())
    }

    fn crop(&self) -> Option<(u32, u32)> {
        self.crop_size.and_then(|c| Some((c.height?, c.width?)))
    }

    /// `image` as the encoder takes it: `[1, 3, crop, crop]`, fp32.
    pub fn preprocess(&self, image: &Image) -> Tensor {
        let shortest = self.size.and_then(|s| s.shortest_edge).unwrap_or(224);
        let (crop_h, crop_w) = self.crop().unwrap_or((224, 224));
        // transformers' get_resize_output_image_size: the short side to `shortest`, the long one to
        // int(shortest · long / short).
        let (w, h) = (image.width, image.height);
        let (short, long) = if w <= h { (w, h) } else { (h, w) };
        let new_long = (shortest as f64 * long as f64 / short as f64) as u32;
        let (nw, nh) = if w <= h { (shortest, new_long) } else { (new_long, shortest) };
        let rgb = resize(&image.rgb, w, h, nw, nh, Filter::Bicubic);
        let (top, left) = ((nh - crop_h) / 2, (nw - crop_w) / 2);
        let mut out = vec![0f32; (3 * crop_h * crop_w) as usize];
        let plane = (crop_h * crop_w) as usize;
        for y in 0..crop_h {
            for x in 0..crop_w {
                let at = (((top + y) * nw + left + x) * 3) as usize;
                for c in 0..3 {
                    // In float64, then float32, as numpy rescales; normalised in float32.
                    let mut v = rgb[at + c] as f64;
                    if self.do_rescale {
                        v *= self.rescale_factor;
                    }
                    let mut v = v as f32;
                    if self.do_normalize {
                        v = (v - self.image_mean[c] as f32) / self.image_std[c] as f32;
                    }
                    out[c * plane + (y * crop_w + x) as usize] = v;
                }
            }
        }
        Tensor::from_slice(&out).view([1, 3, crop_h as i64, crop_w as i64])
    }
}
