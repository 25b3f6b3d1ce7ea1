//! Resizing RGB8 pixels exactly as Pillow's `Image.resize` does for 8-bit images (`libImaging/Resample.c`), the
//! resize the reference pipelines run: diffusers' `VaeImageProcessor` (Lanczos) before the VAE, and transformers'
//! `CLIPImageProcessor` (bicubic) before the CLIP vision encoder.
//!
//! Pillow resamples one axis at a time, horizontal first, each only when that axis changes size. Per output pixel
//! it takes the filter, widened by the scale when shrinking, over the input pixels whose centres it covers, weights
//! normalised to sum to one, then rounded to fixed point with 22 fractional bits; each pass sums in integers and
//! rounds back to 8 bits. Doing the same here, down to the bounds' rounding, gives Pillow's bytes, not merely
//! close ones.

/// The filters vgen needs, with Pillow's definitions and supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Lanczos, a = 3 (`Image.LANCZOS`).
    Lanczos,
    /// Keys' cubic, a = −0.5 (`Image.BICUBIC`).
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Lanczos => 3.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output index along one axis: the first input index and the fixed-point weights from there.
fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    (0..out_size)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            // Pillow rounds the bounds by adding 0.5 and truncating (toward zero), then clamps.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).clamp(0, in_size as i64) as usize;
            let weights: Vec<f64> = (lo..hi).map(|j| filter.weight((j as f64 - center + 0.5) / filter_scale)).collect();
            let total: f64 = weights.iter().sum();
            let fixed = weights
                .iter()
                .map(|w| {
                    let w = if total != 0.0 { w / total } else { *w };
                    let scaled = w * (1u32 << PRECISION_BITS) as f64;
                    (if scaled < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
                })
                .collect();
            (lo, fixed)
        })
        .collect()
}

fn to_u8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One pass: `horizontal` maps `w` columns to `out` (rows stay `h`), else `h` rows to `out` (columns stay `w`).
fn pass(src: &[u8], w: usize, h: usize, out: usize, horizontal: bool, filter: Filter) -> Vec<u8> {
    let taps = coefficients(if horizontal { w } else { h }, out, filter);
    let (ow, oh) = if horizontal { (out, h) } else { (w, out) };
    let mut dst = vec![0u8; ow * oh * 3];
    for y in 0..oh {
        for x in 0..ow {
            let (lo, weights) = if horizontal { &taps[x] } else { &taps[y] };
            let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
            for (k, &wt) in weights.iter().enumerate() {
                let (sx, sy) = if horizontal { (lo + k, y) } else { (x, lo + k) };
                let at = (sy * w + sx) * 3;
                for (c, sum) in acc.iter_mut().enumerate() {
                    *sum += src[at + c] as i64 * wt as i64;
                }
            }
            let at = (y * ow + x) * 3;
            for (c, sum) in acc.iter().enumerate() {
                dst[at + c] = to_u8(*sum);
            }
        }
    }
    dst
}

/// `rgb` (`width` × `height`, RGB8, no row padding) resized to `out_width` × `out_height` with `filter`.
pub fn resize(rgb: &[u8], width: u32, height: u32, out_width: u32, out_height: u32, filter: Filter) -> Vec<u8> {
    let (w, h, ow, oh) = (width as usize, height as usize, out_width as usize, out_height as usize);
    let across = if ow != w { pass(rgb, w, h, ow, true, filter) } else { rgb.to_vec() };
    if oh != h { pass(&across, ow, h, oh, false, filter) } else { across }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point_and_a_flat_image_stays_flat() {
        for filter in [Filter::Lanczos, Filter::Bicubic] {
            for (from, to) in [(7, 3), (3, 7), (40, 28), (24, 28), (5, 5)] {
                for (_, weights) in coefficients(from, to, filter) {
                    let sum: i64 = weights.iter().map(|&w| w as i64).sum();
                    assert!((sum - (1 << PRECISION_BITS)).abs() <= weights.len() as i64, "{filter:?} {from}->{to}");
                }
            }
            let flat = vec![173u8; 9 * 5 * 3];
            assert!(resize(&flat, 9, 5, 4, 11, filter).iter().all(|&v| v == 173), "{filter:?}");
        }
    }

    #[test]
    fn only_the_axes_that_change_are_resampled() {
        let rgb: Vec<u8> = (0..6 * 4 * 3).map(|i| (i * 37 % 256) as u8).collect();
        assert_eq!(resize(&rgb, 6, 4, 6, 4, Filter::Bicubic), rgb);
        // Rows of a horizontal-only resize depend on their own row alone.
        let wide = resize(&rgb, 6, 4, 9, 4, Filter::Lanczos);
        let row = resize(&rgb[6 * 3..12 * 3], 6, 1, 9, 1, Filter::Lanczos);
        assert_eq!(&wide[9 * 3..18 * 3], &row[..]);
    }
}
