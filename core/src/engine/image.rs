//! A request's images (`image`, `last_image`): how a host gives one, and how it becomes the RGB8 pixels a model
//! conditions on.
//!
//! A host gives a file path, PNG or JPEG bytes (base64 in JSON), or raw RGB8 / RGBA8 pixels (base64 in JSON; the C
//! ABI and Python build that form). Validation decodes it before any work is queued, refuses an image that does
//! not decode, is empty, or has more pixels than `limits.max_image_pixels`, and resizes it to the video's size the
//! way diffusers' pipelines do by default (`VaeImageProcessor.resize`, `resize_mode="default"`): stretched to the
//! width and height, aspect ratio not kept, with Pillow's Lanczos filter, byte for byte (see `resample`). RGBA
//! is composited on nothing: its alpha channel is dropped, as PIL's `convert("RGB")` does.
//!
//! The pixels' hash goes into the cache key and the idempotency check, so two requests naming one path whose file
//! changed in between are two different videos.

use crate::error::{Error, Result};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::hash::{Hash, Hasher};

/// An image as a host gives it. In JSON: `{"path": "start.png"}`, `{"base64": "<PNG or JPEG bytes>"}`, or
/// `{"pixels": {"width": 64, "height": 64, "stride": 192, "format": "rgb8", "base64": "<rows>"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ImageInput {
    /// A PNG or JPEG file.
    Path(String),
    /// PNG or JPEG bytes, base64-encoded.
    Base64(String),
    /// Raw pixels.
    Pixels(Pixels),
}

/// Raw pixels: `height` rows of `stride` bytes, each starting with `width` pixels of `format`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pixels {
    pub width: u32,
    pub height: u32,
    /// Bytes from one row to the next; at least `width` × the format's bytes per pixel.
    pub stride: u32,
    pub format: PixelFormat,
    /// The rows, base64-encoded.
    pub base64: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PixelFormat {
    Rgb8,
    /// Alpha is dropped, as Pillow's `convert("RGB")` does.
    Rgba8,
    /// Blue, green, red, alpha: the byte order of most GPU textures and render targets on little-endian machines.
    Bgra8,
}

impl PixelFormat {
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Rgb8 => 3,
            PixelFormat::Rgba8 | PixelFormat::Bgra8 => 4,
        }
    }
}

/// Decoded RGB8 pixels, row-major without padding, and their hash.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
    pub hash: u64,
    /// The image as the host gave it, when this one is a resized copy.
    given: Option<std::sync::Arc<Image>>,
}

impl Image {
    pub fn new(width: u32, height: u32, rgb: Vec<u8>) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (width, height).hash(&mut h);
        rgb.hash(&mut h);
        Self { width, height, rgb, hash: h.finish(), given: None }
    }

    /// The image as the host gave it, before [`resize`]: what CLIP's image processor reads (diffusers passes the
    /// original image to it, not the one resized for the VAE).
    pub fn as_given(&self) -> &Image {
        self.given.as_deref().unwrap_or(self)
    }
}

/// Decodes `input` (the request's field `field`), refusing more than `max_pixels` pixels, and resizes it to
/// `width` × `height`.
pub fn load(input: &ImageInput, field: &str, max_pixels: u64, width: u32, height: u32) -> Result<Image> {
    let bad = |why: String| Error::invalid(format!("{field}: {why}"));
    let image = match input {
        ImageInput::Path(path) => {
            let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read {path:?}: {e}")))?;
            decode(&bytes, max_pixels).map_err(|why| bad(format!("{path:?}: {why}")))?
        }
        ImageInput::Base64(text) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| bad(format!("not base64: {e}")))?;
            decode(&bytes, max_pixels).map_err(bad)?
        }
        ImageInput::Pixels(p) => from_pixels(p, max_pixels).map_err(bad)?,
    };
    Ok(resize(image, width, height))
}

/// PNG or JPEG bytes decoded to RGB8, as `load` decodes a path's or base64's bytes (no resize): the parser the
/// fuzz target `image_bytes` drives.
pub fn decode_encoded(bytes: &[u8], field: &str, max_pixels: u64) -> Result<Image> {
    decode(bytes, max_pixels).map_err(|why| Error::invalid(format!("{field}: {why}")))
}

fn check_size(width: u64, height: u64, max_pixels: u64) -> std::result::Result<(), String> {
    if width == 0 || height == 0 {
        return Err(format!("the image is empty ({width}x{height})"));
    }
    if width.saturating_mul(height) > max_pixels {
        return Err(format!("{width}x{height} is more than limits.max_image_pixels ({max_pixels})"));
    }
    Ok(())
}

/// PNG or JPEG bytes, told apart by their signature.
fn decode(bytes: &[u8], max_pixels: u64) -> std::result::Result<Image, String> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(bytes, max_pixels)
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        decode_jpeg(bytes, max_pixels)
    } else if bytes.is_empty() {
        Err("the image is empty (no bytes)".into())
    } else {
        Err("not a PNG or JPEG image".into())
    }
}

fn decode_png(bytes: &[u8], max_pixels: u64) -> std::result::Result<Image, String> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    // 16-bit to 8, palettes and grey to RGB(A): every PNG comes out as 8-bit grey, grey+alpha, RGB or RGBA.
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| format!("not a valid PNG: {e}"))?;
    let info = reader.info();
    check_size(info.width as u64, info.height as u64, max_pixels)?;
    let mut buf = vec![0; reader.output_buffer_size().ok_or("the PNG is too large")?];
    let frame = reader.next_frame(&mut buf).map_err(|e| format!("not a valid PNG: {e}"))?;
    let (w, h) = (frame.width, frame.height);
    let channels = frame.color_type.samples();
    let rows = &buf[..frame.buffer_size()];
    let mut rgb = Vec::with_capacity(w as usize * h as usize * 3);
    for row in rows.chunks(frame.line_size) {
        for px in row[..w as usize * channels].chunks(channels) {
            match channels {
                1 | 2 => rgb.extend_from_slice(&[px[0], px[0], px[0]]),
                _ => rgb.extend_from_slice(&px[..3]),
            }
        }
    }
    Ok(Image::new(w, h, rgb))
}

fn decode_jpeg(bytes: &[u8], max_pixels: u64) -> std::result::Result<Image, String> {
    use zune_jpeg::zune_core::{bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions};
    let side = (max_pixels.min(1 << 30) as usize).max(1);
    let options =
        DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB).set_max_width(side).set_max_height(side);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(|e| format!("not a valid JPEG: {e:?}"))?;
    let (w, h) = decoder.dimensions().ok_or("not a valid JPEG: no size")?;
    check_size(w as u64, h as u64, max_pixels)?;
    let rgb = decoder.decode().map_err(|e| format!("not a valid JPEG: {e:?}"))?;
    if rgb.len() != w * h * 3 {
        return Err(format!("the JPEG decoded to {} bytes for {w}x{h} RGB", rgb.len()));
    }
    Ok(Image::new(w as u32, h as u32, rgb))
}

fn from_pixels(p: &Pixels, max_pixels: u64) -> std::result::Result<Image, String> {
    check_size(p.width as u64, p.height as u64, max_pixels)?;
    let bpp = p.format.bytes_per_pixel();
    let row = p.width as usize * bpp;
    if (p.stride as usize) < row {
        return Err(format!("stride {} is less than width x {bpp} bytes ({row})", p.stride));
    }
    let data =
        base64::engine::general_purpose::STANDARD.decode(p.base64.trim()).map_err(|e| format!("not base64: {e}"))?;
    let need = p.stride as usize * (p.height as usize - 1) + row;
    if data.len() < need {
        return Err(format!(
            "{} bytes of pixels; {}x{} at stride {} needs {need}",
            data.len(),
            p.width,
            p.height,
            p.stride
        ));
    }
    Ok(Image::new(p.width, p.height, rgb_rows(&data, p.width, p.height, p.stride as usize, p.format)))
}

/// RGB8 rows without padding from rows of `format` pixels `stride` bytes apart.
pub fn rgb_rows(data: &[u8], width: u32, height: u32, stride: usize, format: PixelFormat) -> Vec<u8> {
    let bpp = format.bytes_per_pixel();
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height as usize {
        let row = &data[y * stride..y * stride + width as usize * bpp];
        for px in row.chunks(bpp) {
            match format {
                PixelFormat::Bgra8 => rgb.extend_from_slice(&[px[2], px[1], px[0]]),
                PixelFormat::Rgb8 | PixelFormat::Rgba8 => rgb.extend_from_slice(&px[..3]),
            }
        }
    }
    rgb
}

/// Stretches to `width` × `height` with Pillow's Lanczos filter (see [`super::resample`]), as diffusers'
/// `VaeImageProcessor` does with `Image.resize(..., LANCZOS)`; an image of that size already is returned as it is.
/// The result keeps the image as it was given ([`Image::as_given`]) and a hash of it, since a model that also reads
/// the image another way (CLIP's crop) makes a different video from a different original.
pub fn resize(image: Image, width: u32, height: u32) -> Image {
    if (image.width, image.height) == (width, height) {
        return image;
    }
    let rgb =
        super::resample::resize(&image.rgb, image.width, image.height, width, height, super::resample::Filter::Lanczos);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (image.hash, width, height).hash(&mut h);
    Image { width, height, rgb, hash: h.finish(), given: Some(std::sync::Arc::new(image)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_bytes(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut e = png::Encoder::new(&mut out, width, height);
        e.set_color(png::ColorType::Rgb);
        e.write_header().unwrap().write_image_data(rgb).unwrap();
        out
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn png_bytes_and_raw_pixels_give_the_same_image() {
        let rgb: Vec<u8> = (0..4 * 2 * 3).map(|i| (i * 9) as u8).collect();
        let from_png = load(&ImageInput::Base64(b64(&png_bytes(4, 2, &rgb))), "image", 100, 4, 2).unwrap();
        assert_eq!(from_png.rgb, rgb);
        let mut rgba = Vec::new();
        for (i, px) in rgb.chunks(3).enumerate() {
            rgba.extend_from_slice(px);
            rgba.push(255);
            if i % 4 == 3 {
                rgba.extend_from_slice(&[0, 0]); // a stride of 18 bytes for 4 RGBA pixels
            }
        }
        let raw = Pixels { width: 4, height: 2, stride: 18, format: PixelFormat::Rgba8, base64: b64(&rgba) };
        let from_pixels = load(&ImageInput::Pixels(raw), "image", 100, 4, 2).unwrap();
        assert_eq!(from_pixels, from_png);
        let bgra: Vec<u8> = rgb.chunks(3).flat_map(|px| [px[2], px[1], px[0], 7]).collect();
        let raw = Pixels { width: 4, height: 2, stride: 16, format: PixelFormat::Bgra8, base64: b64(&bgra) };
        assert_eq!(load(&ImageInput::Pixels(raw), "image", 100, 4, 2).unwrap(), from_png);
    }

    #[test]
    fn bad_images_are_refused_naming_the_field() {
        let cases = [
            (ImageInput::Base64(b64(b"GIF89a....")), "not a PNG or JPEG"),
            (ImageInput::Base64("@@@".into()), "not base64"),
            (ImageInput::Base64(String::new()), "empty"),
            (ImageInput::Path("/nonexistent/start.png".into()), "cannot read"),
            (ImageInput::Base64(b64(&png_bytes(20, 20, &[0; 1200]))), "max_image_pixels"),
            (ImageInput::Base64(b64(&png_bytes(4, 2, &[0; 24])[..40])), "not a valid PNG"),
            (
                ImageInput::Pixels(Pixels {
                    width: 4,
                    height: 2,
                    stride: 8,
                    format: PixelFormat::Rgb8,
                    base64: b64(&[0; 24]),
                }),
                "stride",
            ),
            (
                ImageInput::Pixels(Pixels {
                    width: 0,
                    height: 2,
                    stride: 0,
                    format: PixelFormat::Rgb8,
                    base64: String::new(),
                }),
                "empty",
            ),
        ];
        for (input, why) in cases {
            let e = load(&input, "last_image", 100, 8, 8).unwrap_err();
            assert_eq!(e.code(), crate::ErrorCode::InvalidArgument);
            assert!(e.message().starts_with("last_image: ") && e.message().contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn resizing_stretches_and_keeps_flat_colours_and_changes_the_hash() {
        let flat = Image::new(10, 6, [200u8, 10, 30].repeat(60));
        let big = resize(flat.clone(), 16, 16);
        assert_eq!((big.width, big.height, big.rgb.len()), (16, 16, 16 * 16 * 3));
        assert!(big.rgb.chunks(3).all(|px| px == [200, 10, 30]), "a flat image stays flat");
        let small = resize(flat.clone(), 4, 2);
        assert!(small.rgb.chunks(3).all(|px| px == [200, 10, 30]));
        assert_ne!(big.hash, small.hash);
        // The image as given stays reachable (CLIP reads it), and an image already the size is itself.
        assert_eq!(small.as_given(), &flat);
        assert_eq!(flat.as_given(), &flat);
        assert_eq!(resize(flat.clone(), 10, 6), flat);
        // A step edge stays where it was, within a pixel, when the size doubles.
        let mut edge = vec![0u8; 8 * 8 * 3];
        for y in 0..8 {
            for x in 4..8 {
                edge[(y * 8 + x) * 3..(y * 8 + x) * 3 + 3].copy_from_slice(&[255, 255, 255]);
            }
        }
        let up = resize(Image::new(8, 8, edge), 16, 16);
        let row: Vec<u8> = (0..16).map(|x| up.rgb[(5 * 16 + x) * 3]).collect();
        assert!(row[..7].iter().all(|&v| v < 40) && row[9..].iter().all(|&v| v > 215), "{row:?}");
    }
}
