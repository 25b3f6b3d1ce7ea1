//! The shared result store: where a worker puts a finished video so that any node can hand it to its host. Redis
//! holds only the video's reference (a path within the store), never its frames.
//!
//! `ResultStore` is the seam for other stores (an object store, say); `DirStore` is a folder on a filesystem
//! every node mounts.

use crate::engine::video_file;
use crate::error::{Error, ErrorCode, Result};
use crate::video::Video;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub(crate) trait ResultStore: Send + Sync {
    /// Stores a video under a fresh name and returns its reference.
    fn put(&self, name: &str, video: &Video) -> Result<String>;
    fn get(&self, reference: &str) -> Result<Video>;
    fn remove(&self, reference: &str);
    /// Removes what is older than `age` (the store's retention).
    fn expire(&self, age: Duration);
}

pub(crate) struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::invalid(format!("cannot use {} as the result store: {e}", dir.display())))?;
        Ok(Self { dir: dir.to_path_buf() })
    }

    /// A reference is a plain file name in the folder: nothing read from Redis can point outside it.
    fn path(&self, reference: &str) -> Result<PathBuf> {
        let plain = !reference.is_empty()
            && reference.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            && !reference.starts_with('.');
        if !plain {
            return Err(Error::new(ErrorCode::Internal, format!("bad result reference {reference:?}")));
        }
        Ok(self.dir.join(reference))
    }
}

impl ResultStore for DirStore {
    fn put(&self, name: &str, video: &Video) -> Result<String> {
        let reference = format!("{name}.vgen");
        let path = self.path(&reference)?;
        video_file::write(&path, video).map_err(|e| {
            Error::new(ErrorCode::Unavailable, format!("cannot write the result to {}: {e}", path.display()))
        })?;
        Ok(reference)
    }

    fn get(&self, reference: &str) -> Result<Video> {
        let path = self.path(reference)?;
        video_file::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::new(ErrorCode::NotFound, format!("the result {} is no longer in the store", path.display()))
            }
            _ => Error::new(ErrorCode::Internal, format!("cannot read the result {}: {e}", path.display())),
        })
    }

    fn remove(&self, reference: &str) {
        if let Ok(path) = self.path(reference) {
            let _ = std::fs::remove_file(path);
        }
    }

    fn expire(&self, age: Duration) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let old =
                entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| now.duration_since(t).is_ok_and(|d| d > age));
            if old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}
