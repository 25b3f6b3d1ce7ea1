//! The result cache: finished videos by cache key, within a byte budget, least recently used evicted first.

use crate::video::Video;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

#[derive(Default)]
pub(crate) struct ResultCache {
    max_bytes: u64,
    bytes: u64,
    tick: u64,
    entries: HashMap<u64, (Arc<Video>, u64)>,
    /// Last use → key, oldest first.
    by_use: BTreeMap<u64, u64>,
}

impl ResultCache {
    pub fn new(max_bytes: u64) -> Self {
        Self { max_bytes, ..Self::default() }
    }

    pub fn get(&mut self, key: u64) -> Option<Arc<Video>> {
        self.tick += 1;
        let tick = self.tick;
        let (video, used) = self.entries.get_mut(&key)?;
        self.by_use.remove(used);
        *used = tick;
        self.by_use.insert(tick, key);
        Some(video.clone())
    }

    pub fn insert(&mut self, key: u64, video: Arc<Video>) {
        let size = video.frames.byte_len() as u64;
        if size > self.max_bytes {
            return;
        }
        if let Some((old, used)) = self.entries.remove(&key) {
            self.bytes -= old.frames.byte_len() as u64;
            self.by_use.remove(&used);
        }
        while self.bytes + size > self.max_bytes {
            let Some((_, oldest)) = self.by_use.pop_first() else { break };
            if let Some((v, _)) = self.entries.remove(&oldest) {
                self.bytes -= v.frames.byte_len() as u64;
            }
        }
        self.tick += 1;
        self.entries.insert(key, (video, self.tick));
        self.by_use.insert(self.tick, key);
        self.bytes += size;
    }
}

/// The engine's two caches together: memory first, then the optional disk cache.
impl super::Shared {
    /// A finished video for this key: from memory, else from the disk cache (then kept in memory too).
    pub(crate) fn cached(&self, key: u64) -> Option<Arc<Video>> {
        if !self.config.cache.enabled {
            return None;
        }
        if let Some(v) = self.cache.lock().get(key) {
            return Some(v);
        }
        let v = self.disk_cache.as_ref()?.get(key)?;
        self.cache.lock().insert(key, v.clone());
        Some(v)
    }

    /// Keeps a finished video for identical requests to come.
    pub(crate) fn remember(&self, key: u64, video: &Arc<Video>) {
        if self.config.cache.enabled {
            self.cache.lock().insert(key, video.clone());
            if let Some(disk) = &self.disk_cache {
                disk.insert(key, video);
            }
        }
    }
}
