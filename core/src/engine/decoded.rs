//! The frames a running job has decoded so far, so that a host (a game, a player) can show a video while it is
//! being made.
//!
//! A streaming model hands each decoded chunk to [`Attempt::emit`](super::Attempt::emit), which appends it here
//! (one buffer per flight: every job on a flight sees the same frames) and tells each job with a `frames` event.
//!
//! Invariants:
//! - `ready` counts every frame the current attempt has decoded, in order; the buffer holds the last of them, from
//!   frame `ready - held` on, with no gap.
//! - When some job keeps its frames, the buffer holds them all (the model keeps them anyway). When none does
//!   (`keep_frames: false`), it holds at least the last `window` frames and less than `window` plus one chunk, so
//!   memory stays flat in the video's length.
//! - A new attempt starts from nothing ([`DecodedFrames::restart`]): frames of a failed attempt are never mixed
//!   with the next one's.

use crate::error::Result;
use crate::video::Frames;
use std::collections::VecDeque;
use std::sync::Arc;

#[derive(Default)]
pub(crate) struct DecodedFrames {
    ready: usize,
    held: usize,
    chunks: VecDeque<Arc<Frames>>,
}

/// What a host gets for "the frames so far": `frames` are frames `first ..= first + frames - 1` of the video, and
/// `ready` were decoded in all (`first + frames.num_frames == ready`).
#[derive(Clone, Debug)]
pub struct FramesSoFar {
    pub first: usize,
    pub ready: usize,
    pub frames: Arc<Frames>,
}

impl DecodedFrames {
    /// Forgets every frame: a new attempt begins.
    pub fn restart(&mut self) {
        *self = Self::default();
    }

    /// Appends a decoded chunk; with `window` (no job keeps its frames), drops the oldest chunks that are not
    /// needed to hold the last `window` frames. Returns the number of frames ready.
    pub fn push(&mut self, chunk: &Frames, window: Option<usize>) -> usize {
        self.ready += chunk.num_frames;
        self.held += chunk.num_frames;
        self.chunks.push_back(Arc::new(chunk.clone()));
        if let Some(window) = window {
            while let Some(front) = self.chunks.front() {
                if self.held - front.num_frames < window {
                    break;
                }
                self.held -= front.num_frames;
                self.chunks.pop_front();
            }
        }
        self.ready
    }

    /// The frames held, as one block (a copy: a host asks for it once per chunk, not per frame). `None` before the
    /// first chunk.
    pub fn snapshot(&self) -> Result<Option<FramesSoFar>> {
        let Some(front) = self.chunks.front() else { return Ok(None) };
        let mut data = Vec::with_capacity(self.chunks.iter().map(|c| c.data().len()).sum());
        for c in &self.chunks {
            data.extend_from_slice(c.data());
        }
        let frames = Frames::new(self.held, front.height, front.width, data)?;
        Ok(Some(FramesSoFar { first: self.ready - self.held, ready: self.ready, frames: Arc::new(frames) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(first: u8, frames: usize) -> Frames {
        let data = (0..frames).flat_map(|t| vec![first + t as u8; 2 * 2 * 3]).collect();
        Frames::new(frames, 2, 2, data).unwrap()
    }

    #[test]
    fn holds_every_frame_without_a_window_and_the_last_ones_with_one() {
        let mut all = DecodedFrames::default();
        let mut window = DecodedFrames::default();
        assert!(all.snapshot().unwrap().is_none());
        let mut next = 0u8;
        for size in [1, 4, 4, 4, 4] {
            all.push(&chunk(next, size), None);
            window.push(&chunk(next, size), Some(5));
            next += size as u8;
        }
        let a = all.snapshot().unwrap().unwrap();
        assert_eq!((a.first, a.ready, a.frames.num_frames), (0, 17, 17));
        assert_eq!(a.frames.frame(16)[0], 16);
        let w = window.snapshot().unwrap().unwrap();
        // At least the last 5, less than 5 + one chunk, ending at the last frame decoded.
        assert_eq!((w.first, w.ready, w.frames.num_frames), (9, 17, 8));
        assert_eq!(w.frames.frame(0)[0], 9);
        assert_eq!(w.frames.frame(7)[0], 16);
        window.restart();
        assert!(window.snapshot().unwrap().is_none());
        window.push(&chunk(0, 1), Some(5));
        assert_eq!(window.snapshot().unwrap().unwrap().ready, 1, "a new attempt counts from 0");
    }
}
