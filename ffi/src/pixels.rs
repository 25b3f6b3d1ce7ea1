//! Pixels as a host's memory holds them: the formats a host hands vgen (`vgen_image`) and asks back
//! (`vgen_video_copy_frame`), with a row stride, as textures and render targets lie.

use crate::boundary::{Fallible, core, null};
use crate::status::vgen_status;
use vgen_core::engine::image::{ImageInput, PixelFormat, Pixels};

/// A pixel layout: one of the `VGEN_PIXELS_*` numbers (never renumbered).
#[allow(non_camel_case_types)]
pub type vgen_pixel_format = u32;

/// 3 bytes a pixel: red, green, blue.
pub const VGEN_PIXELS_RGB8: vgen_pixel_format = 0;
/// 4 bytes a pixel: red, green, blue, alpha. vgen writes alpha 255; it drops alpha it is given, as Pillow's
/// `convert("RGB")` does.
pub const VGEN_PIXELS_RGBA8: vgen_pixel_format = 1;
/// 4 bytes a pixel: blue, green, red, alpha (the byte order of most GPU textures: Direct3D's and Vulkan's
/// B8G8R8A8, Unity's `TextureFormat.BGRA32`). Alpha as for RGBA8.
pub const VGEN_PIXELS_BGRA8: vgen_pixel_format = 2;

/// The format a number names, or an error that lists the ones there are.
pub(crate) fn format_of(code: vgen_pixel_format, what: &str) -> Fallible<PixelFormat> {
    match code {
        VGEN_PIXELS_RGB8 => Ok(PixelFormat::Rgb8),
        VGEN_PIXELS_RGBA8 => Ok(PixelFormat::Rgba8),
        VGEN_PIXELS_BGRA8 => Ok(PixelFormat::Bgra8),
        other => Err((
            vgen_status::VGEN_STATUS_INVALID_ARGUMENT,
            format!(
                "{what}: format {other} is none of VGEN_PIXELS_RGB8 (0), VGEN_PIXELS_RGBA8 (1), VGEN_PIXELS_BGRA8 (2)"
            ),
        )),
    }
}

/// Writes one row of RGB8 pixels into `dst` in `format` (`dst` holds exactly the row).
pub(crate) fn write_row(rgb: &[u8], format: PixelFormat, dst: &mut [u8]) {
    match format {
        PixelFormat::Rgb8 => dst.copy_from_slice(rgb),
        PixelFormat::Rgba8 => {
            for (px, out) in rgb.chunks_exact(3).zip(dst.chunks_exact_mut(4)) {
                out.copy_from_slice(&[px[0], px[1], px[2], 255]);
            }
        }
        PixelFormat::Bgra8 => {
            for (px, out) in rgb.chunks_exact(3).zip(dst.chunks_exact_mut(4)) {
                out.copy_from_slice(&[px[2], px[1], px[0], 255]);
            }
        }
    }
}

/// An image as raw pixels, for `vgen_engine_submit_images`: `height` rows `stride` bytes apart, each starting with
/// `width` pixels of `format` (a `VGEN_PIXELS_*`), top row first: a game engine's render target or a decoded
/// texture as it lies in memory. vgen copies the pixels before the call returns.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct vgen_image {
    pub data: *const u8,
    pub width: u32,
    pub height: u32,
    pub stride: u32,
    pub format: vgen_pixel_format,
}

/// A `vgen_image` as the request's pixels form. Its size is checked before a byte is read, so a wrong width,
/// height or stride is an error, not a read past the host's buffer (within what the host promised).
///
/// # Safety
/// `p.data` valid for reads of `stride × (height − 1)` bytes plus one row, when the size passes the checks.
pub(crate) unsafe fn pixels_input(p: &vgen_image, field: &str, max_pixels: u64) -> Fallible<ImageInput> {
    use base64::Engine as _;
    let bad = |why: String| core(vgen_core::Error::invalid(format!("{field}: {why}")));
    let format = format_of(p.format, field)?;
    let bpp = format.bytes_per_pixel() as u64;
    let (w, h, stride) = (p.width as u64, p.height as u64, p.stride as u64);
    if w == 0 || h == 0 {
        return Err(bad(format!("the image is empty ({w}x{h})")));
    }
    if w * h > max_pixels {
        return Err(bad(format!("{w}x{h} is more than limits.max_image_pixels ({max_pixels})")));
    }
    if stride < w * bpp {
        return Err(bad(format!("stride {stride} is less than width x {bpp} bytes ({})", w * bpp)));
    }
    if p.data.is_null() {
        return Err(null(&format!("{field}.data")));
    }
    let len = stride * (h - 1) + w * bpp;
    // SAFETY: non-NULL, and `len` is what the contract promises is readable.
    let bytes = unsafe { std::slice::from_raw_parts(p.data, len as usize) };
    Ok(ImageInput::Pixels(Pixels {
        width: p.width,
        height: p.height,
        stride: p.stride,
        format,
        base64: base64::engine::general_purpose::STANDARD.encode(bytes),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_out_in_each_format() {
        let rgb = [10, 20, 30, 40, 50, 60];
        let mut out3 = [0; 6];
        write_row(&rgb, PixelFormat::Rgb8, &mut out3);
        assert_eq!(out3, rgb);
        let mut out4 = [0; 8];
        write_row(&rgb, PixelFormat::Rgba8, &mut out4);
        assert_eq!(out4, [10, 20, 30, 255, 40, 50, 60, 255]);
        write_row(&rgb, PixelFormat::Bgra8, &mut out4);
        assert_eq!(out4, [30, 20, 10, 255, 60, 50, 40, 255]);
        assert!(format_of(3, "format").unwrap_err().1.contains("VGEN_PIXELS_BGRA8 (2)"));
    }
}
