//! A flight's output files, written while the video is decoded.
//!
//! A request may name files for the engine to write (`Request::outputs`). The model hands over frames as it
//! decodes them ([`Attempt::emit`](super::Attempt::emit)) and they go straight to every file of every job on the
//! flight, so a job that does not keep its frames (`keep_frames: false`) needs memory for one decoded chunk
//! whatever the length of the video. A model that does not stream has its finished frames written the same way
//! once it returns.
//!
//! Invariants:
//! - The jobs a flight writes for are fixed when writing starts: [`Outputs::open`] sets `Flight::writing` under
//!   the members' lock, and a job joins a flight only under that lock and only while the flag is clear, so no job
//!   can miss the first frames.
//! - Files are staged under temporary names and committed only for a job that succeeds and is still on the
//!   flight; dropping `Outputs` removes every uncommitted file, so a failed, cancelled or retried attempt leaves
//!   nothing behind.
//! - A file that fails to take a frame keeps its error and takes no more frames; the error fails only the jobs
//!   that asked for that file.

use super::flight::Flight;
use super::job::JobId;
use crate::encode::{self, Geometry, VideoEncoder};
use crate::error::{Error, Result};
use crate::video::Frames;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

pub(crate) struct Outputs {
    files: Vec<File>,
    frames_written: usize,
    frames_expected: usize,
    retain: bool,
}

struct File {
    job: JobId,
    path: PathBuf,
    encoder: Option<Box<dyn VideoEncoder>>,
    error: Option<Error>,
}

impl Outputs {
    /// Opens the files of every job now on the flight, and closes the flight to new jobs.
    pub fn open(flight: &Flight) -> Self {
        let p = &flight.params;
        let geometry = Geometry {
            width: p.width as usize,
            height: p.height as usize,
            fps: p.fps,
            num_frames: p.num_frames as usize,
        };
        let members = flight.members.lock();
        flight.writing.store(true, Ordering::Release);
        let retain = members.iter().any(|m| m.request.keep_frames != Some(false));
        let mut files = Vec::new();
        for m in members.iter() {
            for path in &m.request.outputs {
                let path = PathBuf::from(path);
                let (encoder, error) = match encode::open(&path, geometry) {
                    Ok(e) => (Some(e), None),
                    Err(e) => (None, Some(e)),
                };
                files.push(File { job: m.id, path, encoder, error });
            }
        }
        Self { files, frames_written: 0, frames_expected: p.num_frames as usize, retain }
    }

    /// Whether some job on the flight wants the frames themselves, so the model must keep them all.
    pub fn retain(&self) -> bool {
        self.retain
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn frames_written(&self) -> usize {
        self.frames_written
    }

    /// Appends frames to every open file.
    pub fn push(&mut self, frames: &Frames) {
        for t in 0..frames.num_frames {
            self.push_frame(frames.frame(t));
        }
    }

    /// Appends one RGB8 frame, `[H, W, 3]`, to every open file.
    pub fn push_frame(&mut self, frame: &[u8]) {
        for file in &mut self.files {
            let Some(encoder) = file.encoder.as_mut() else { continue };
            if let Err(e) = encoder.push(frame) {
                file.error = Some(e);
                file.encoder = None;
            }
        }
        self.frames_written += 1;
    }

    /// Finishes and moves into place the files of `job`. If any of them failed while frames were written, none
    /// is committed and the first error is returned.
    pub fn commit(&mut self, job: JobId) -> Result<()> {
        let mut finished = Vec::new();
        let mut failure = None;
        for file in self.files.iter_mut().filter(|f| f.job == job) {
            if failure.is_none() && self.frames_written != self.frames_expected {
                failure = Some(Error::internal(format!(
                    "{}: the model produced {} of {} frames",
                    file.path.display(),
                    self.frames_written,
                    self.frames_expected
                )));
            }
            if let Some(e) = file.error.take() {
                failure.get_or_insert(e);
            }
            if let Some(encoder) = file.encoder.take() {
                finished.push(encoder);
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        for encoder in finished {
            encoder.finish()?;
        }
        Ok(())
    }
}
