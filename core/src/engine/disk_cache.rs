//! The optional disk cache: one file per cache key in a folder, within a byte budget, least recently used first.
//!
//! A file is a JSON header line (sizes, fps, metadata) followed by the raw RGB8 frames. Files are written to a
//! temporary name and renamed into place, so a reader never sees half a file, and concurrent engines sharing the
//! folder at worst evict each other's entries early. A file that cannot be read is treated as a miss and removed.

use crate::video::{Frames, Video, VideoMetadata};
use std::fs;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    num_frames: usize,
    height: usize,
    width: usize,
    fps: f64,
    metadata: VideoMetadata,
}

pub(crate) struct DiskCache {
    dir: PathBuf,
    max_bytes: u64,
}

impl DiskCache {
    pub fn open(dir: &Path, max_bytes: u64) -> crate::Result<Self> {
        fs::create_dir_all(dir).map_err(|e| {
            crate::Error::invalid(format!("cannot use {} as the disk cache: {e}", dir.display()))
        })?;
        Ok(Self { dir: dir.to_path_buf(), max_bytes })
    }

    fn path(&self, key: u64) -> PathBuf {
        self.dir.join(format!("{key:016x}.vgen"))
    }

    pub fn get(&self, key: u64) -> Option<Arc<Video>> {
        let path = self.path(key);
        let read = || -> std::io::Result<Video> {
            let mut file = std::io::BufReader::new(fs::File::open(&path)?);
            let mut line = String::new();
            file.read_line(&mut line)?;
            let h: Header = serde_json::from_str(&line).map_err(std::io::Error::other)?;
            let mut data = Vec::with_capacity(h.num_frames * h.height * h.width * 3);
            file.read_to_end(&mut data)?;
            let frames = Frames::new(h.num_frames, h.height, h.width, data).map_err(std::io::Error::other)?;
            Ok(Video { frames: Arc::new(frames), fps: h.fps, metadata: h.metadata })
        };
        match read() {
            Ok(video) => {
                // Mark it used, for LRU eviction.
                let _ = fs::File::options().append(true).open(&path).and_then(|f| f.set_modified(SystemTime::now()));
                Some(Arc::new(video))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable disk cache entry; removed");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    pub fn insert(&self, key: u64, video: &Video) {
        let f = &video.frames;
        let size = f.byte_len() as u64;
        if size > self.max_bytes {
            return;
        }
        let header = Header { num_frames: f.num_frames, height: f.height, width: f.width, fps: video.fps, metadata: video.metadata.clone() };
        let tmp = self.dir.join(format!(".{key:016x}.{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file = std::io::BufWriter::new(fs::File::create(&tmp)?);
            serde_json::to_writer(&mut file, &header).map_err(std::io::Error::other)?;
            file.write_all(b"\n")?;
            file.write_all(f.data())?;
            file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            fs::rename(&tmp, self.path(key))
        };
        if let Err(e) = write() {
            tracing::warn!(error = %e, "could not write to the disk cache");
            let _ = fs::remove_file(&tmp);
            return;
        }
        self.evict();
    }

    fn evict(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
            .filter_map(|e| {
                let e = e.ok()?;
                let path = e.path();
                (path.extension()? == "vgen").then_some(())?;
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), path))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }
}
