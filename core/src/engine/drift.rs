//! Drift between the parts of a storyboard: how far a later part's look has moved from the first part's, and the
//! colour correction that keeps it from adding up.
//!
//! Each part starts from a frame that went through the VAE once more than the frames before it (decoded, then
//! encoded again as the next part's condition), and such round trips shift colour and soften edges a little each
//! time: over many parts the object fades or changes hue. Two things hold it:
//! - **Measures** ([`Statistics`], [`Drift`]), generic to any video: the foreground's mean colour in CIELAB
//!   (ΔE76 from the first part's), the sharpness (the mean absolute Laplacian of luma, as a ratio to the first
//!   part's), and identity (the intersection of the foreground's coarse colour histograms, 1 = the same colours in
//!   the same shares). The foreground is every pixel more than [`FOREGROUND_CONTRAST`] from the frame's border
//!   median, the background estimate that needs no model.
//! - **Correction at each join** ([`ColorMatch`]): a part's frame 0 is the model's rendering of the frame it was
//!   given, so the two should be equal; a per-channel gain and offset fitted (least squares) from the one to the
//!   other is exactly the colour error of that round trip, and applying it to the whole part undoes it before it
//!   is passed on.
//! - **Matching the first part's colour** ([`shift_foreground`]), as LTX's and ComfyUI's long-video tools match
//!   colour statistics to a reference: within a part a model may still drift (an image-to-video model that
//!   follows its prompt's colour over the image's, say), so each frame's foreground is shifted, per channel, to
//!   the first part's foreground mean. Only the foreground moves (the background and the object's size and place
//!   are the frame's own), so a part whose object grows or moves keeps that change; a storyboard that means to
//!   change colour turns both corrections off (`color_match: false`).

use crate::video::Frames;
use serde::{Deserialize, Serialize};

/// A pixel is foreground when its RGB distance from the frame's border median exceeds this (of 255).
pub const FOREGROUND_CONTRAST: f64 = 40.0;
/// Bins per channel of the identity histogram (4³ = 64 colours).
const BINS: usize = 4;
/// The gain and offset a join's correction may apply: beyond them the two frames are not one picture.
const GAIN: (f64, f64) = (0.5, 2.0);
const OFFSET: f64 = 64.0;

/// The running colour and sharpness statistics of one part's frames.
#[derive(Clone, Debug)]
pub struct Statistics {
    lab_sum: [f64; 3],
    rgb_sum: [f64; 3],
    foreground: u64,
    laplacian_sum: f64,
    laplacian_count: u64,
    histogram: [u64; BINS * BINS * BINS],
}

impl Default for Statistics {
    fn default() -> Self {
        Self {
            lab_sum: [0.0; 3],
            rgb_sum: [0.0; 3],
            foreground: 0,
            laplacian_sum: 0.0,
            laplacian_count: 0,
            histogram: [0; 64],
        }
    }
}

impl Statistics {
    /// Adds every frame of `frames`.
    pub fn add(&mut self, frames: &Frames) {
        for t in 0..frames.num_frames {
            self.add_frame(frames.frame(t), frames.width, frames.height);
        }
    }

    fn add_frame(&mut self, rgb: &[u8], width: usize, height: usize) {
        let background = border_median(rgb, width, height);
        for p in rgb.chunks_exact(3) {
            if distance(p, background) > FOREGROUND_CONTRAST {
                let lab = lab([p[0], p[1], p[2]]);
                for c in 0..3 {
                    self.lab_sum[c] += lab[c];
                    self.rgb_sum[c] += p[c] as f64;
                }
                self.foreground += 1;
                let bin = |v: u8| v as usize * BINS / 256;
                self.histogram[(bin(p[0]) * BINS + bin(p[1])) * BINS + bin(p[2])] += 1;
            }
        }
        let luma = |x: usize, y: usize| {
            let p = &rgb[(y * width + x) * 3..][..3];
            0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64
        };
        for y in 1..height.saturating_sub(1) {
            for x in 1..width.saturating_sub(1) {
                let l = 4.0 * luma(x, y) - luma(x - 1, y) - luma(x + 1, y) - luma(x, y - 1) - luma(x, y + 1);
                self.laplacian_sum += l.abs();
                self.laplacian_count += 1;
            }
        }
    }

    /// The foreground's mean colour in CIELAB; `None` when no frame showed any foreground.
    pub fn mean_lab(&self) -> Option<[f64; 3]> {
        (self.foreground > 0).then(|| self.lab_sum.map(|s| s / self.foreground as f64))
    }

    /// The foreground's mean RGB; `None` when no frame showed any foreground.
    pub fn mean_rgb(&self) -> Option<[f64; 3]> {
        (self.foreground > 0).then(|| self.rgb_sum.map(|s| s / self.foreground as f64))
    }

    /// The mean absolute Laplacian of luma (0 for flat frames).
    pub fn sharpness(&self) -> f64 {
        self.laplacian_sum / self.laplacian_count.max(1) as f64
    }

    /// How far this part has drifted from `first`.
    pub fn drift_from(&self, first: &Statistics) -> Drift {
        let color_delta_e = match (self.mean_lab(), first.mean_lab()) {
            (Some(a), Some(b)) => (0..3).map(|c| (a[c] - b[c]).powi(2)).sum::<f64>().sqrt(),
            (None, None) => 0.0,
            // The foreground appeared or vanished: as far as colours go.
            _ => 100.0,
        };
        let sharpness_ratio = if first.sharpness() > 0.0 { self.sharpness() / first.sharpness() } else { 1.0 };
        let (a, b) = (self.foreground.max(1) as f64, first.foreground.max(1) as f64);
        let identity = if self.foreground == 0 && first.foreground == 0 {
            1.0
        } else {
            self.histogram.iter().zip(&first.histogram).map(|(&x, &y)| (x as f64 / a).min(y as f64 / b)).sum()
        };
        Drift {
            color_delta_e: round(color_delta_e, 2),
            sharpness_ratio: round(sharpness_ratio, 3),
            identity: round(identity, 3),
        }
    }
}

/// One part's drift from the first part (the first part's own is 0, 1, 1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    /// ΔE76 between the foreground's mean CIELAB colours.
    pub color_delta_e: f64,
    /// This part's sharpness over the first part's.
    pub sharpness_ratio: f64,
    /// The intersection of the foreground colour histograms, in [0, 1].
    pub identity: f64,
}

/// A per-channel `gain · v + offset` that maps one frame's colours onto another's.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColorMatch {
    pub gain: [f64; 3],
    pub offset: [f64; 3],
}

impl ColorMatch {
    /// The least-squares map from `made` to `wanted` (two frames of the same size meant to be the same picture),
    /// each channel's gain kept within 0.5–2 and its offset within ±64.
    pub fn fit(made: &[u8], wanted: &[u8]) -> Self {
        let mut gain = [1.0; 3];
        let mut offset = [0.0; 3];
        for c in 0..3 {
            let pairs = made.iter().skip(c).step_by(3).zip(wanted.iter().skip(c).step_by(3));
            let (mut n, mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for (&x, &y) in pairs {
                let (x, y) = (x as f64, y as f64);
                n += 1.0;
                sx += x;
                sy += y;
                sxx += x * x;
                sxy += x * y;
            }
            if n == 0.0 {
                continue;
            }
            let variance = sxx - sx * sx / n;
            let g = if variance > 1e-6 { (sxy - sx * sy / n) / variance } else { 1.0 };
            gain[c] = g.clamp(GAIN.0, GAIN.1);
            offset[c] = ((sy - gain[c] * sx) / n).clamp(-OFFSET, OFFSET);
        }
        Self { gain, offset }
    }

    /// The frames with the map applied, rounded and clamped to 0–255.
    pub fn apply(&self, frames: &Frames) -> crate::Result<Frames> {
        let data = frames
            .data()
            .iter()
            .enumerate()
            .map(|(i, &v)| (self.gain[i % 3] * v as f64 + self.offset[i % 3]).round().clamp(0.0, 255.0) as u8)
            .collect();
        Frames::new(frames.num_frames, frames.height, frames.width, data)
    }
}

/// Each frame with its foreground shifted, per channel, so that the foreground's mean is `reference`; pixels at
/// the foreground's edge (between half the contrast threshold and the threshold, the anti-aliased outline) move
/// in proportion. Returns the frames and the mean shift applied (0 for frames without foreground).
pub fn shift_foreground(frames: &Frames, reference: [f64; 3]) -> crate::Result<(Frames, [f64; 3])> {
    let mut data = frames.data().to_vec();
    let size = frames.width * frames.height * 3;
    let mut total = [0.0; 3];
    for t in 0..frames.num_frames {
        let frame = &mut data[t * size..(t + 1) * size];
        let background = border_median(frame, frames.width, frames.height);
        let weight = |p: &[u8]| {
            ((distance(p, background) - FOREGROUND_CONTRAST / 2.0) / (FOREGROUND_CONTRAST / 2.0)).clamp(0.0, 1.0)
        };
        let (mut sum, mut n) = ([0.0; 3], 0.0);
        for p in frame.chunks_exact(3).filter(|p| weight(p) >= 1.0) {
            for c in 0..3 {
                sum[c] += p[c] as f64;
            }
            n += 1.0;
        }
        if n == 0.0 {
            continue;
        }
        let shift: [f64; 3] = std::array::from_fn(|c| reference[c] - sum[c] / n);
        for p in frame.chunks_exact_mut(3) {
            let w = weight(p);
            if w > 0.0 {
                for c in 0..3 {
                    p[c] = (p[c] as f64 + w * shift[c]).round().clamp(0.0, 255.0) as u8;
                }
            }
        }
        for c in 0..3 {
            total[c] += shift[c] / frames.num_frames as f64;
        }
    }
    Ok((Frames::new(frames.num_frames, frames.height, frames.width, data)?, total.map(|v| round(v, 1))))
}

/// A pixel's RGB distance from the background colour: what tells the foreground from it.
fn distance(p: &[u8], background: [f64; 3]) -> f64 {
    (0..3).map(|c| (p[c] as f64 - background[c]).powi(2)).sum::<f64>().sqrt()
}

/// The median of each channel over a frame's outermost pixels.
fn border_median(rgb: &[u8], width: usize, height: usize) -> [f64; 3] {
    let mut channels: [Vec<u8>; 3] = Default::default();
    for y in 0..height {
        for x in 0..width {
            if y == 0 || x == 0 || y + 1 == height || x + 1 == width {
                for (c, values) in channels.iter_mut().enumerate() {
                    values.push(rgb[(y * width + x) * 3 + c]);
                }
            }
        }
    }
    channels.map(|mut v| {
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0) as f64
    })
}

/// sRGB (D65) to CIELAB.
fn lab(rgb: [u8; 3]) -> [f64; 3] {
    let linear = rgb.map(|v| {
        let v = v as f64 / 255.0;
        if v <= 0.04045 { v / 12.92 } else { ((v + 0.055) / 1.055).powf(2.4) }
    });
    let [r, g, b] = linear;
    let x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047;
    let y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    let z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883;
    let f = |t: f64| if t > 0.008856 { t.cbrt() } else { 7.787 * t + 16.0 / 116.0 };
    let (fx, fy, fz) = (f(x), f(y), f(z));
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

/// `v` rounded to `digits` decimals, as the measures are reported.
pub(crate) fn round(v: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (v * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `size`² frame: `background` with a `side`² square of `color` at (x, y).
    fn frame(size: usize, background: [u8; 3], color: [u8; 3], x: usize, y: usize, side: usize) -> Vec<u8> {
        let mut rgb = Vec::with_capacity(size * size * 3);
        for row in 0..size {
            for col in 0..size {
                let inside = (x..x + side).contains(&col) && (y..y + side).contains(&row);
                rgb.extend_from_slice(if inside { &color } else { &background });
            }
        }
        rgb
    }

    fn stats(frames: &[Vec<u8>], size: usize) -> Statistics {
        let mut s = Statistics::default();
        s.add(&Frames::new(frames.len(), size, size, frames.concat()).unwrap());
        s
    }

    #[test]
    fn a_moved_object_has_not_drifted_but_a_recoloured_one_has() {
        let first = stats(&[frame(32, [0; 3], [255, 0, 0], 4, 4, 8)], 32);
        let moved = stats(&[frame(32, [0; 3], [255, 0, 0], 18, 12, 8)], 32);
        let d = moved.drift_from(&first);
        assert_eq!((d.color_delta_e, d.identity), (0.0, 1.0), "{d:?}");
        assert!((d.sharpness_ratio - 1.0).abs() < 1e-9, "{d:?}");
        let faded = stats(&[frame(32, [0; 3], [180, 40, 40], 4, 4, 8)], 32);
        let d = faded.drift_from(&first);
        assert!(d.color_delta_e > 10.0 && d.identity < 0.5, "{d:?}");
        // A softened edge halves nothing of the colour but lowers the sharpness.
        let mut soft = frame(32, [0; 3], [255, 0, 0], 4, 4, 8);
        for v in soft.iter_mut() {
            *v = (*v as f64 * 0.5) as u8 + if *v > 0 { 100 } else { 0 };
        }
        assert!(stats(&[soft], 32).drift_from(&first).sharpness_ratio < 1.0);
    }

    #[test]
    fn the_join_correction_undoes_a_colour_shift_and_leaves_a_true_frame_alone() {
        let wanted = frame(16, [10, 10, 10], [250, 120, 0], 3, 3, 6);
        let made: Vec<u8> = wanted.iter().map(|&v| (v as f64 * 0.9 + 5.0).round() as u8).collect();
        let fix = ColorMatch::fit(&made, &wanted);
        let fixed = fix.apply(&Frames::new(1, 16, 16, made).unwrap()).unwrap();
        let worst = fixed.data().iter().zip(&wanted).map(|(&a, &b)| (a as i32 - b as i32).abs()).max().unwrap();
        assert!(worst <= 1, "{worst} levels off after the correction ({fix:?})");
        let same = ColorMatch::fit(&wanted, &wanted);
        assert_eq!(same.apply(&Frames::new(1, 16, 16, wanted.clone()).unwrap()).unwrap().data(), &wanted[..]);
        // A flat channel has no gain to fit: it keeps 1 and only shifts.
        let flat = ColorMatch::fit(&[7; 48], &[9; 48]);
        assert_eq!((flat.gain, flat.offset), ([1.0; 3], [2.0; 3]));
    }

    #[test]
    fn a_drifted_object_gets_the_first_parts_colour_back_and_the_background_stays() {
        let drifted = frame(16, [0; 3], [255, 0, 200], 4, 4, 6);
        let frames = Frames::new(1, 16, 16, drifted).unwrap();
        let (fixed, shift) = shift_foreground(&frames, [255.0, 0.0, 0.0]).unwrap();
        assert_eq!(fixed.data(), &frame(16, [0; 3], [255, 0, 0], 4, 4, 6)[..]);
        assert_eq!(shift, [0.0, 0.0, -200.0]);
        let empty = Frames::new(1, 16, 16, vec![9; 16 * 16 * 3]).unwrap();
        assert_eq!(shift_foreground(&empty, [255.0; 3]).unwrap().0, empty, "no foreground, nothing moves");
    }

    #[test]
    fn flat_channels_only_shift() {
        let flat = ColorMatch::fit(&[7, 7, 7, 7, 7, 7], &[9, 9, 9, 9, 9, 9]);
        assert_eq!(flat.apply(&Frames::new(1, 1, 2, vec![7; 6]).unwrap()).unwrap().data(), &[9; 6]);
    }
}
