//! Writing videos to files: MP4 (H.264), GIF, animated PNG, or a folder of PNG frames.
//!
//! Every format is a [`VideoEncoder`]: frames go in one at a time, as they are decoded, and [`VideoEncoder::finish`]
//! commits the file. Output is written under a temporary name beside the target and renamed into place on
//! finish, so a failed or cancelled job never leaves a partial file behind. A host can implement the trait to
//! plug in its own encoder, or skip encoding and take the frames.
//!
//! H.264 comes from Cisco's OpenH264, compiled from source by the `openh264` crate (BSD-2-Clause). H.264 is
//! covered by patents; Cisco's royalty coverage applies only to its own prebuilt binaries, not to this build.
//! Distributors of vgen binaries that encode MP4 should check their situation; GIF and PNG are unencumbered.

mod h264;
pub mod mp4;

use crate::error::{Error, ErrorCode, Result};
use crate::video::Video;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A file format, chosen by the output path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `.mp4`: H.264, yuv420p.
    Mp4,
    /// `.gif`, with a palette per frame (NeuQuant).
    Gif,
    /// `.png`: an animated PNG.
    Apng,
    /// A path ending in `/`: a folder of numbered PNG frames.
    PngFrames,
}

impl Format {
    pub fn from_path(path: &Path) -> Result<Self> {
        let text = path.to_string_lossy();
        if text.ends_with('/') {
            return Ok(Format::PngFrames);
        }
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("mp4") => Ok(Format::Mp4),
            Some("gif") => Ok(Format::Gif),
            Some("png") | Some("apng") => Ok(Format::Apng),
            other => Err(Error::invalid(format!(
                "unknown output format {:?} for {}: use .mp4, .gif, .png (animated) or a folder path ending in /",
                other.unwrap_or(""),
                path.display()
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Mp4 => "mp4",
            Format::Gif => "gif",
            Format::Apng => "apng",
            Format::PngFrames => "png frames",
        }
    }
}

/// Frames in, a file out.
pub trait VideoEncoder: Send {
    /// Adds one RGB8 frame, `[H, W, 3]`.
    fn push(&mut self, frame: &[u8]) -> Result<()>;
    /// Writes the rest and moves the file into place.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// The size and rate of the frames an encoder will receive.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    pub width: usize,
    pub height: usize,
    pub fps: f64,
    pub num_frames: usize,
}

/// Checks, before any work is done, that `path` can be written: its folder exists and is writable.
pub fn check_writable(path: &Path) -> Result<()> {
    let format = Format::from_path(path)?;
    let parent = if format == Format::PngFrames {
        path.components().count().checked_sub(1).map(|_| path.parent().unwrap_or(Path::new(".")))
    } else {
        path.parent()
    };
    let dir = match parent {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(Error::new(
            ErrorCode::Io,
            format!("cannot write {}: folder {} does not exist", path.display(), dir.display()),
        ));
    }
    let probe = dir.join(format!(".vgen-write-test-{}", std::process::id()));
    fs::write(&probe, b"").map_err(|e| Error::new(ErrorCode::Io, format!("cannot write {}: {e}", path.display())))?;
    let _ = fs::remove_file(probe);
    Ok(())
}

/// Opens an encoder for `path` in the format its name asks for.
pub fn open(path: &Path, g: Geometry) -> Result<Box<dyn VideoEncoder>> {
    if g.width == 0 || g.height == 0 || g.fps.is_nan() || g.fps <= 0.0 {
        return Err(Error::invalid(format!("cannot encode {}x{} at {} fps", g.width, g.height, g.fps)));
    }
    Ok(match Format::from_path(path)? {
        Format::Mp4 => Box::new(h264::Mp4Encoder::new(Staged::file(path)?, g)?),
        Format::Gif => Box::new(GifEncoder::new(Staged::file(path)?, g)?),
        Format::Apng => Box::new(ApngEncoder::new(Staged::file(path)?, g)?),
        Format::PngFrames => Box::new(PngFramesEncoder::new(Staged::folder(path)?, g)),
    })
}

/// Writes a whole video to `path`.
pub fn write(path: &Path, video: &Video) -> Result<()> {
    check_writable(path)?;
    let f = &video.frames;
    if f.num_frames == 0 {
        return Err(Error::invalid(format!(
            "cannot write {}: this video kept no frames (it was made with keep_frames: false)",
            path.display()
        )));
    }
    let mut enc = open(path, Geometry { width: f.width, height: f.height, fps: video.fps, num_frames: f.num_frames })?;
    for t in 0..f.num_frames {
        enc.push(f.frame(t))?;
    }
    enc.finish()
}

/// Output staged under a temporary name; moved into place by `commit`, removed if dropped before.
pub(crate) struct Staged {
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl Staged {
    fn temp_for(target: &Path) -> PathBuf {
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "video".into());
        let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        // Unique per process and per output, so two jobs writing the same path never share a temporary file.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        dir.join(format!(".{name}.vgen-partial-{}-{n}", std::process::id()))
    }

    fn file(target: &Path) -> Result<Self> {
        Ok(Self { temp: Self::temp_for(target), target: target.to_path_buf(), committed: false })
    }

    fn folder(target: &Path) -> Result<Self> {
        let target = PathBuf::from(target.to_string_lossy().trim_end_matches('/'));
        let temp = Self::temp_for(&target);
        fs::create_dir_all(&temp).map_err(|e| Error::new(ErrorCode::Io, format!("{}: {e}", temp.display())))?;
        Ok(Self { temp, target, committed: false })
    }

    fn create(&self) -> Result<BufWriter<fs::File>> {
        let f = fs::File::create(&self.temp)
            .map_err(|e| Error::new(ErrorCode::Io, format!("{}: {e}", self.target.display())))?;
        Ok(BufWriter::new(f))
    }

    fn commit(mut self) -> Result<()> {
        if self.target.is_dir() {
            fs::remove_dir_all(&self.target)?;
        }
        fs::rename(&self.temp, &self.target)
            .map_err(|e| Error::new(ErrorCode::Io, format!("{}: {e}", self.target.display())))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = if self.temp.is_dir() { fs::remove_dir_all(&self.temp) } else { fs::remove_file(&self.temp) };
        }
    }
}

fn io(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::Io, e.to_string())
}

struct GifEncoder {
    staged: Staged,
    encoder: gif::Encoder<BufWriter<fs::File>>,
    g: Geometry,
    delay: u16,
}

impl GifEncoder {
    fn new(staged: Staged, g: Geometry) -> Result<Self> {
        if g.width > u16::MAX as usize || g.height > u16::MAX as usize {
            return Err(Error::invalid("GIF frames are at most 65535 pixels across"));
        }
        let mut encoder = gif::Encoder::new(staged.create()?, g.width as u16, g.height as u16, &[]).map_err(io)?;
        encoder.set_repeat(gif::Repeat::Infinite).map_err(io)?;
        // GIF delays are in centiseconds.
        let delay = (100.0 / g.fps).round().max(1.0) as u16;
        Ok(Self { staged, encoder, g, delay })
    }
}

impl VideoEncoder for GifEncoder {
    fn push(&mut self, frame: &[u8]) -> Result<()> {
        // Speed 1 is NeuQuant's best palette; these frames are small enough to afford it.
        let mut f = gif::Frame::from_rgb_speed(self.g.width as u16, self.g.height as u16, frame, 1);
        f.delay = self.delay;
        self.encoder.write_frame(&f).map_err(io)
    }
    fn finish(self: Box<Self>) -> Result<()> {
        let me = *self;
        let mut w = me.encoder.into_inner().map_err(io)?;
        w.flush()?;
        drop(w);
        me.staged.commit()
    }
}

struct ApngEncoder {
    staged: Staged,
    writer: Option<png::Writer<BufWriter<fs::File>>>,
}

impl ApngEncoder {
    fn new(staged: Staged, g: Geometry) -> Result<Self> {
        let mut e = png::Encoder::new(staged.create()?, g.width as u32, g.height as u32);
        e.set_color(png::ColorType::Rgb);
        e.set_depth(png::BitDepth::Eight);
        e.set_animated(g.num_frames.max(1) as u32, 0).map_err(io)?;
        let (num, den) = fps_to_delay(g.fps);
        e.set_frame_delay(num, den).map_err(io)?;
        let writer = e.write_header().map_err(io)?;
        Ok(Self { staged, writer: Some(writer) })
    }
}

/// A frame delay as a fraction of seconds for APNG (16-bit numerator and denominator).
fn fps_to_delay(fps: f64) -> (u16, u16) {
    let den = (fps * 100.0).round().clamp(1.0, u16::MAX as f64) as u16;
    (100, den)
}

impl VideoEncoder for ApngEncoder {
    fn push(&mut self, frame: &[u8]) -> Result<()> {
        self.writer.as_mut().ok_or_else(|| Error::internal("APNG writer gone"))?.write_image_data(frame).map_err(io)
    }
    fn finish(mut self: Box<Self>) -> Result<()> {
        if let Some(w) = self.writer.take() {
            w.finish().map_err(io)?;
        }
        let me = *self;
        me.staged.commit()
    }
}

struct PngFramesEncoder {
    staged: Staged,
    g: Geometry,
    next: usize,
}

impl PngFramesEncoder {
    fn new(staged: Staged, g: Geometry) -> Self {
        Self { staged, g, next: 0 }
    }
}

impl VideoEncoder for PngFramesEncoder {
    fn push(&mut self, frame: &[u8]) -> Result<()> {
        let path = self.staged.temp.join(format!("frame_{:05}.png", self.next));
        let file = BufWriter::new(fs::File::create(&path).map_err(io)?);
        let mut e = png::Encoder::new(file, self.g.width as u32, self.g.height as u32);
        e.set_color(png::ColorType::Rgb);
        e.set_depth(png::BitDepth::Eight);
        e.write_header().map_err(io)?.write_image_data(frame).map_err(io)?;
        self.next += 1;
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<()> {
        self.staged.commit()
    }
}
