//! Tiled VAE decode: the latents cut into overlapping spatial tiles, each decoded on its own, the overlaps
//! blended linearly. Peak memory then follows the tile's size, not the frame's, as it already follows one chunk
//! of frames, not the video's length.
//!
//! The tiling is diffusers' `AutoencoderKLWan.enable_tiling()` / `tiled_decode` (0.42.1), to the number
//! (`core/tests/wan_parity.rs`, fixtures by `tools/wan_reference/make_tiling_case.py`): tiles of
//! `sample_min / spatial_factor` latent pixels every `sample_stride / spatial_factor`, each blended with the
//! already-blended tile above and then the one to its left over `sample_min - sample_stride` output pixels (in
//! patches for the Wan2.2 VAE), each contributing its first `sample_stride` pixels. As in diffusers, each tile is
//! decoded over all frames before the next (one tile's feature cache and activations alive at a time), then the
//! tiles are blended and handed on chunk by chunk. The decoded tiles are kept until then: pixels, not features,
//! about (size / stride)² times the video's own size in fp32.

use super::vae::{FeatureCache, WanVaeDecoder, unpatchify};
use crate::error::{Error, Result};
use tch::Tensor;

/// Tile size and stride in output pixels, height and width (diffusers' defaults: 256 and 192).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    pub sample_min: [i64; 2],
    pub sample_stride: [i64; 2],
}

impl Default for Tiling {
    fn default() -> Self {
        Self { sample_min: [256, 256], sample_stride: [192, 192] }
    }
}

impl Tiling {
    /// Whether latents of `height` × `width` span more than one tile (diffusers decodes them whole otherwise).
    pub fn applies(&self, spatial_factor: i64, height: i64, width: i64) -> bool {
        height > self.sample_min[0] / spatial_factor || width > self.sample_min[1] / spatial_factor
    }
}

/// Blends `b`'s first rows (`dim` -2) or columns (-1) with `a`'s last, over `extent`, as diffusers' `blend_v`
/// and `blend_h`: `a·(1 − k/extent) + b·(k/extent)` for the k-th.
fn blend(a: &Tensor, b: &Tensor, extent: i64, dim: i64) -> Tensor {
    let extent = extent.min(a.size()[dim as usize]).min(b.size()[dim as usize]);
    if extent <= 0 {
        return b.shallow_clone();
    }
    let len = a.size()[dim as usize];
    let w: Vec<f32> = (0..extent).map(|k| (k as f64 / extent as f64) as f32).collect();
    let one_minus: Vec<f32> = (0..extent).map(|k| (1.0 - k as f64 / extent as f64) as f32).collect();
    let mut shape = vec![1i64; 5];
    shape[dim as usize] = extent;
    let w = Tensor::from_slice(&w).reshape(&shape).to_device(b.device()).to_kind(b.kind());
    let one_minus = Tensor::from_slice(&one_minus).reshape(&shape).to_device(b.device()).to_kind(b.kind());
    let head = a.narrow(dim, len - extent, extent) * one_minus + b.narrow(dim, 0, extent) * w;
    let rest = b.size()[dim as usize] - extent;
    Tensor::cat(&[head, b.narrow(dim, extent, rest)], dim)
}

impl WanVaeDecoder {
    /// As [`WanVaeDecoder::decode`], in tiles (see the module's documentation).
    pub fn decode_tiled(
        &self,
        z: &Tensor,
        tiling: Tiling,
        mut on_chunk: impl FnMut(usize, usize, Tensor) -> Result<()>,
    ) -> Result<()> {
        let config = &self.config;
        let (s, p) = (config.spatial_factor(), config.patch());
        let [_, _, t, h, w] = z.size()[..] else {
            return Err(Error::internal(format!("latents must be [B, C, T, H, W], got {:?}", z.size())));
        };
        let latent_min = [tiling.sample_min[0] / s, tiling.sample_min[1] / s];
        let latent_stride = [tiling.sample_stride[0] / s, tiling.sample_stride[1] / s];
        if latent_min.iter().chain(&latent_stride).any(|v| *v < 1)
            || tiling.sample_stride[0] > tiling.sample_min[0]
            || tiling.sample_stride[1] > tiling.sample_min[1]
        {
            return Err(Error::invalid(format!(
                "VAE tiles of {:?} every {:?} pixels: each must be at least {s} pixels, the stride at most the tile",
                tiling.sample_min, tiling.sample_stride
            )));
        }
        let out_stride = [tiling.sample_stride[0] / p, tiling.sample_stride[1] / p];
        let blend_extent = [tiling.sample_min[0] / p - out_stride[0], tiling.sample_min[1] / p - out_stride[1]];
        let (out_h, out_w) = (h * s / p, w * s / p);
        let x = self.post_quant(z);
        let origins = |len: i64, step: i64| (0..len).step_by(step as usize).collect::<Vec<_>>();
        let (rows, cols) = (origins(h, latent_stride[0]), origins(w, latent_stride[1]));
        // Tile by tile over all frames, as diffusers does: one tile's feature cache and activations are alive at a
        // time, so the decoder's memory follows the tile, whatever the frame's size. What is kept is each tile's
        // decoded pixels (3 channels, or 12 in patches), chunk by chunk.
        let mut decoded: Vec<Vec<Vec<Tensor>>> = Vec::with_capacity(rows.len());
        for &i in &rows {
            let mut row = Vec::with_capacity(cols.len());
            for &j in &cols {
                let latent = x.narrow(3, i, latent_min[0].min(h - i)).narrow(4, j, latent_min[1].min(w - j));
                let mut cache = FeatureCache::default();
                row.push((0..t).map(|k| self.decode_chunk(&latent.narrow(2, k, 1), &mut cache)).collect::<Vec<_>>());
            }
            decoded.push(row);
        }
        for k in 0..t {
            let mut tiles: Vec<Vec<Tensor>> = decoded
                .iter()
                .map(|row| row.iter().map(|chunks| chunks[k as usize].shallow_clone()).collect())
                .collect();
            // Blend in diffusers' order, each tile with the already-blended ones above and to its left.
            let mut result_rows = Vec::with_capacity(rows.len());
            for ri in 0..rows.len() {
                let mut result_row = Vec::with_capacity(cols.len());
                for ci in 0..cols.len() {
                    let mut tile = tiles[ri][ci].shallow_clone();
                    if ri > 0 {
                        tile = blend(&tiles[ri - 1][ci], &tile, blend_extent[0], 3);
                    }
                    if ci > 0 {
                        tile = blend(&tiles[ri][ci - 1], &tile, blend_extent[1], 4);
                    }
                    let [.., th, tw] = tile.size()[..] else { unreachable!("5-D") };
                    result_row.push(tile.narrow(3, 0, out_stride[0].min(th)).narrow(4, 0, out_stride[1].min(tw)));
                    tiles[ri][ci] = tile;
                }
                result_rows.push(Tensor::cat(&result_row, 4));
            }
            let frames = Tensor::cat(&result_rows, 3);
            let [.., fh, fw] = frames.size()[..] else { unreachable!("5-D") };
            let frames = frames.narrow(3, 0, out_h.min(fh)).narrow(4, 0, out_w.min(fw));
            on_chunk(k as usize, t as usize, unpatchify(&frames, p).clamp(-1.0, 1.0))?;
        }
        Ok(())
    }
}
