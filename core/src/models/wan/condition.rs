//! How a Wan model takes images besides the prompt, read from its folder, and what one job's images become.
//!
//! The family has three ways, all as diffusers 0.42.1's `WanImageToVideoPipeline` runs them:
//! - **Wan2.2 TI2V** (`expand_timesteps`): the first image's latent replaces latent frame 0 of the model's input
//!   at every step and of the result, and that frame's tokens get timestep 0.
//! - **Channel concatenation** (Wan2.1 I2V and FLF2V, Wan2.2 I2V-A14B; the transformer takes `2·z_dim + 4`
//!   channels): the video `[image, zeros…, (last_image)]` is VAE-encoded to condition latents, and 4 mask channels
//!   say which frames were given (latent frame 0 wholly; for a last image, the last of the 4 frames the last
//!   latent frame stands for). `[noise | mask | condition]` goes into every step.
//! - **CLIP tokens** (Wan2.1 I2V and FLF2V, whose transformer has an image embedder): the image's penultimate
//!   CLIP hidden states go to every block's cross-attention beside the text; FLF2V takes both images' tokens.

use crate::error::{Error, Result};
use tch::{Kind, Tensor};

/// What a Wan folder's model does with images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageConditioning {
    /// Text only.
    None,
    /// Wan2.2 TI2V's first latent frame.
    FirstLatent,
    /// The mask and condition latents beside the noise; `clip` when the transformer also takes CLIP tokens,
    /// `last_image` when the model can also be given the last frame, `two_images` when it must be (FLF2V: its
    /// image embedding reads both images' tokens).
    Concat { clip: bool, last_image: bool, two_images: bool },
}

impl ImageConditioning {
    /// The mode of a folder from its configs: `expand_timesteps` in `model_index.json`, the transformer's input
    /// channels against the VAE's `z_dim`, and whether the transformer embeds CLIP tokens (and, for first–last
    /// frame, two images' worth: `pos_embed_seq_len`).
    pub fn of(expand_timesteps: bool, in_channels: i64, z_dim: i64, image_dim: bool, pos_embed: bool) -> Result<Self> {
        if expand_timesteps {
            if in_channels != z_dim || image_dim {
                return Err(Error::invalid(format!(
                    "expand_timesteps (image conditioning the TI2V way) needs the transformer's in_channels {in_channels} \
                     to be the VAE's z_dim {z_dim}, and no image embedder"
                )));
            }
            return Ok(Self::FirstLatent);
        }
        if in_channels == z_dim {
            if image_dim {
                return Err(Error::invalid(format!(
                    "the transformer embeds CLIP tokens (image_dim) but takes {in_channels} channels, the VAE's z_dim: \
                     an image-to-video transformer takes 2 x z_dim + 4 ({})",
                    2 * z_dim + 4
                )));
            }
            return Ok(Self::None);
        }
        if in_channels == 2 * z_dim + 4 {
            // A CLIP model without the two-image position embedding reads one image's tokens: diffusers gives it no
            // last frame (its embeddings would not fit), so neither does vgen.
            return Ok(Self::Concat {
                clip: image_dim,
                last_image: !image_dim || pos_embed,
                two_images: image_dim && pos_embed,
            });
        }
        Err(Error::invalid(format!(
            "the transformer takes {in_channels} channels: neither the VAE's z_dim {z_dim} (text-to-video) nor \
             2 x z_dim + 4 = {} (image-to-video)",
            2 * z_dim + 4
        )))
    }

    pub fn takes_image(self) -> bool {
        self != Self::None
    }

    /// Whether a request without an image is refused: channel-concatenation models animate an image and make
    /// nothing useful from text alone (diffusers refuses them one too).
    pub fn needs_image(self) -> bool {
        matches!(self, Self::Concat { .. })
    }

    pub fn takes_last_image(self) -> bool {
        matches!(self, Self::Concat { last_image: true, .. })
    }

    pub fn needs_last_image(self) -> bool {
        matches!(self, Self::Concat { two_images: true, .. })
    }
}

/// The video the VAE encodes for channel concatenation: `first` (and `last`) `[1, 3, 1, H, W]` in [-1, 1], zeros
/// between, `frames` in all.
pub fn condition_video(first: &Tensor, last: Option<&Tensor>, frames: i64) -> Tensor {
    let between = frames - 1 - i64::from(last.is_some());
    let [_, c, _, h, w] = first.size()[..] else { unreachable!("[1, 3, 1, H, W] by construction") };
    let zeros = Tensor::zeros([1, c, between, h, w], (Kind::Float, first.device()));
    let mut parts = vec![first.shallow_clone(), zeros];
    if let Some(last) = last {
        parts.push(last.shallow_clone());
    }
    Tensor::cat(&parts, 2)
}

/// `[mask | latents]`, `[1, 4 + z, F, h, w]`: the 4 mask channels of latent frame f stand for video frames
/// 4f − 3 … 4f (frame 0's for video frame 0, four times over); 1 where the frame was given.
pub fn concat_condition(latents: &Tensor, last: bool) -> Tensor {
    let [b, _, f, h, w] = latents.size()[..] else { unreachable!("[B, z, F, h, w] by construction") };
    let mask = Tensor::zeros([b, 4, f, h, w], (Kind::Float, latents.device()));
    let _ = mask.narrow(2, 0, 1).fill_(1.0);
    if last {
        let _ = mask.narrow(2, f - 1, 1).narrow(1, 3, 1).fill_(1.0);
    }
    Tensor::cat(&[mask, latents.to_kind(Kind::Float)], 1)
}
