//! The optional disk cache: one file per cache key in a folder, within a byte budget, least recently used first.
//!
//! A file is a raw video file (`video_file.rs`), written to a temporary name and renamed into place, so a reader
//! never sees half a file, and concurrent engines sharing the folder at worst evict each other's entries early. A
//! file that cannot be read is treated as a miss and removed.

use crate::video::Video;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

pub(crate) struct DiskCache {
    dir: PathBuf,
    max_bytes: u64,
}

impl DiskCache {
    pub fn open(dir: &Path, max_bytes: u64) -> crate::Result<Self> {
        fs::create_dir_all(dir)
            .map_err(|e| crate::Error::invalid(format!("cannot use {} as the disk cache: {e}", dir.display())))?;
        Ok(Self { dir: dir.to_path_buf(), max_bytes })
    }

    fn path(&self, key: u64) -> PathBuf {
        self.dir.join(format!("{key:016x}.vgen"))
    }

    pub fn get(&self, key: u64) -> Option<Arc<Video>> {
        let path = self.path(key);
        match super::video_file::read(&path) {
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
        if let Err(e) = super::video_file::write(&self.path(key), video) {
            tracing::warn!(error = %e, "could not write to the disk cache");
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
