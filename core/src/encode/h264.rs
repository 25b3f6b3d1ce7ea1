//! MP4 output: frames through OpenH264 (yuv420p, no frame skipping, a bitrate scaled to the picture) into the
//! [`Mp4Muxer`](super::mp4::Mp4Muxer).

use super::mp4::Mp4Muxer;
use super::{Geometry, Staged, VideoEncoder, io};
use crate::error::{Error, Result};
use openh264::OpenH264API;
use openh264::encoder::{BitRate, Encoder, EncoderConfig, FrameRate, QpRange, RateControlMode};
use openh264::formats::YUVSlices;
use std::io::Write;

pub(crate) struct Mp4Encoder {
    staged: Staged,
    encoder: Encoder,
    muxer: Mp4Muxer,
    g: Geometry,
}

/// The target bits per second for a size and rate: 0.25 bits per pixel per frame, at least 400 kbit/s.
fn bitrate(g: &Geometry) -> u32 {
    ((g.width * g.height) as f64 * g.fps * 0.25).clamp(400_000.0, 50_000_000.0) as u32
}

impl Mp4Encoder {
    pub fn new(staged: Staged, g: Geometry) -> Result<Self> {
        if g.width % 2 != 0 || g.height % 2 != 0 || g.width > 4096 || g.height > 4096 {
            return Err(Error::invalid(format!("H.264 needs even sizes up to 4096; got {}x{}", g.width, g.height)));
        }
        let config = EncoderConfig::new()
            .bitrate(BitRate::from_bps(bitrate(&g)))
            .max_frame_rate(FrameRate::from_hz(g.fps as f32))
            .skip_frames(false)
            // Every frame is kept and rate control follows only the buffer: quality comes from the QP range (at most 16),
            // which keeps generated video visually lossless (above 35 dB PSNR in the tests).
            .rate_control_mode(RateControlMode::Bufferbased)
            .qp(QpRange::new(4, 20));
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config).map_err(io)?;
        Ok(Self { staged, encoder, muxer: Mp4Muxer::new(g.width as u16, g.height as u16, g.fps), g })
    }
}

/// RGB8 to planar YUV 4:2:0 in BT.601 limited ("TV") range, the range players assume for yuv420p H.264, with
/// rounding and each chroma sample the average of its 2×2 pixels. (OpenH264's own converter truncates, which
/// darkens and costs about a decibel.)
pub fn rgb_to_i420(rgb: &[u8], w: usize, h: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let px = |x: usize, y: usize| {
        let i = (y * w + x) * 3;
        (rgb[i] as f32, rgb[i + 1] as f32, rgb[i + 2] as f32)
    };
    let mut yp = vec![0u8; w * h];
    for y in 0..h {
        for x in 0..w {
            let (r, g, b) = px(x, y);
            yp[y * w + x] = (16.0 + 0.256_788 * r + 0.504_129 * g + 0.097_906 * b).round().clamp(0.0, 255.0) as u8;
        }
    }
    let (cw, ch) = (w / 2, h / 2);
    let mut up = vec![0u8; cw * ch];
    let mut vp = vec![0u8; cw * ch];
    for y in 0..ch {
        for x in 0..cw {
            let mut sum = (0.0, 0.0, 0.0);
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let (r, g, b) = px(2 * x + dx, 2 * y + dy);
                sum = (sum.0 + r / 4.0, sum.1 + g / 4.0, sum.2 + b / 4.0);
            }
            let (r, g, b) = sum;
            up[y * cw + x] = (128.0 - 0.148_223 * r - 0.290_993 * g + 0.439_216 * b).round().clamp(0.0, 255.0) as u8;
            vp[y * cw + x] = (128.0 + 0.439_216 * r - 0.367_788 * g - 0.071_427 * b).round().clamp(0.0, 255.0) as u8;
        }
    }
    (yp, up, vp)
}

/// Strips an Annex B start code (`00 00 01` or `00 00 00 01`).
fn strip_start_code(nal: &[u8]) -> &[u8] {
    if nal.starts_with(&[0, 0, 0, 1]) {
        &nal[4..]
    } else if nal.starts_with(&[0, 0, 1]) {
        &nal[3..]
    } else {
        nal
    }
}

impl VideoEncoder for Mp4Encoder {
    fn push(&mut self, frame: &[u8]) -> Result<()> {
        if frame.len() != self.g.width * self.g.height * 3 {
            return Err(Error::internal("frame size does not match the encoder's"));
        }
        let (w, h) = (self.g.width, self.g.height);
        let (y, u, v) = rgb_to_i420(frame, w, h);
        let yuv = YUVSlices::new((&y, &u, &v), (w, h), (w, w / 2, w / 2));
        let bits = self.encoder.encode(&yuv).map_err(io)?;
        let mut nals = Vec::new();
        for l in 0..bits.num_layers() {
            let Some(layer) = bits.layer(l) else { continue };
            for n in 0..layer.nal_count() {
                if let Some(nal) = layer.nal_unit(n) {
                    nals.push(strip_start_code(nal).to_vec());
                }
            }
        }
        self.muxer.add_frame(nals.iter().map(Vec::as_slice));
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<()> {
        let me = *self;
        let mut out = me.staged.create()?;
        me.muxer.write(&mut out)?;
        out.flush()?;
        drop(out);
        me.staged.commit()
    }
}
