//! The raw video file: a JSON header line (sizes, fps, metadata) followed by the RGB8 frames, byte for byte.
//!
//! It is how the disk cache keeps videos and how a worker hands a result to other nodes (the cluster's result
//! store). Written to a temporary name, synced and renamed into place, so a reader never sees half a file. Read
//! with every size checked against the file's length before anything is allocated: a damaged or hostile file is
//! an error, never a huge allocation.

use crate::video::{Frames, Video, VideoMetadata};
use std::fs;
use std::io::{self, BufRead, Read, Write};
use std::path::Path;
use std::sync::Arc;

/// The longest header line accepted.
const MAX_HEADER_BYTES: u64 = 1 << 20;

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    num_frames: usize,
    height: usize,
    width: usize,
    fps: f64,
    metadata: VideoMetadata,
}

pub(crate) fn write(path: &Path, video: &Video) -> io::Result<()> {
    let f = &video.frames;
    let header = Header {
        num_frames: f.num_frames,
        height: f.height,
        width: f.width,
        fps: video.fps,
        metadata: video.metadata.clone(),
    };
    let name = path.file_name().ok_or_else(|| io::Error::other("a video file needs a file name"))?;
    let tmp = path.with_file_name(format!(
        ".{}.{}.{:x}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        rand::random::<u32>()
    ));
    let attempt = || -> io::Result<()> {
        let mut file = io::BufWriter::new(fs::File::create(&tmp)?);
        serde_json::to_writer(&mut file, &header).map_err(io::Error::other)?;
        file.write_all(b"\n")?;
        file.write_all(f.data())?;
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&tmp, path)
    };
    attempt().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

pub(crate) fn read(path: &Path) -> io::Result<Video> {
    let file = fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut file = io::BufReader::new(file);
    let mut line = Vec::new();
    (&mut file).take(MAX_HEADER_BYTES).read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(io::Error::other("no header line"));
    }
    let h: Header = serde_json::from_slice(&line).map_err(io::Error::other)?;
    let size = h
        .num_frames
        .checked_mul(h.height)
        .and_then(|n| n.checked_mul(h.width))
        .and_then(|n| n.checked_mul(3))
        .ok_or_else(|| io::Error::other("the header's sizes overflow"))?;
    if size as u64 != len - line.len() as u64 {
        return Err(io::Error::other(format!(
            "the header promises {size} bytes of frames; the file has {}",
            len - line.len() as u64
        )));
    }
    let mut data = Vec::with_capacity(size);
    file.read_to_end(&mut data)?;
    let frames = Frames::new(h.num_frames, h.height, h.width, data).map_err(io::Error::other)?;
    Ok(Video { frames: Arc::new(frames), fps: h.fps, metadata: h.metadata })
}
