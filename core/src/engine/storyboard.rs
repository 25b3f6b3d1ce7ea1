//! Storyboards: a video longer than its model's native length, or one that tells a sequence, made as parts.
//!
//! A request's `segments` are the parts, each a prompt and a number of frames; one prompt with more frames than
//! the model's native length is split into parts of that length. The parts are generated one after another, each
//! (after the first) started from the last frame of the part before through the model's image conditioning: the
//! first latent frame for a TI2V model (Wan2.2 TI2V, the default model), the image path for an I2V model. The
//! video is continuous: a later part's frame 0 is its rendering of the frame it was given, so it is dropped, and
//! no frame repeats at a join.
//!
//! Invariants, kept by [`generate`] with the part cursor in [`Attempt`]:
//! - it is one job: one progress bar and ETA over all the parts, previews from each, cancellation at every step;
//! - frames go to the output files as each part decodes, and only the conditioning frame is carried from part to
//!   part, so memory does not grow with the length unless a job keeps the frames;
//! - each later part's colour is corrected at its join and matched to the first part's, and its drift from the
//!   first part measured (see `drift.rs`), announced by a `quality` event and listed in the result's `segments`.
//!
//! Frame counts: a part lists the frames it adds. The first part is generated at its count, which follows the
//! model's frame rule (1 + 4k for Wan); a later part is generated one frame longer (its given frame 0), so it
//! adds 4k frames.

use super::attempt::Attempt;
use super::drift::{ColorMatch, Drift};
use super::image::Image;
use super::request::{FrameRule, Limits, Params, Request};
use crate::error::{Error, Result};
use crate::models::{Model, ModelInfo};
use crate::video::{Frames, Video};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One part of a request's storyboard: `"a red circle moving up"`, or `{"prompt": "...", "num_frames": 16}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SegmentRequest {
    pub prompt: String,
    /// The frames this part adds to the video; the model's native length (less the given frame, after the
    /// first part) when left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_frames: Option<u32>,
}

impl<'de> Deserialize<'de> for SegmentRequest {
    /// A prompt, or `{"prompt": ..., "num_frames": ...}`; anything else is an error that says which forms there
    /// are (serde's own message for an untagged enum names none).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Part {
            prompt: String,
            #[serde(default)]
            num_frames: Option<u32>,
        }
        let value = serde_json::Value::deserialize(d)?;
        if let serde_json::Value::String(prompt) = value {
            return Ok(SegmentRequest { prompt, num_frames: None });
        }
        serde_json::from_value::<Part>(value)
            .map(|p| SegmentRequest { prompt: p.prompt, num_frames: p.num_frames })
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "a segment is a prompt or {{\"prompt\": \"...\", \"num_frames\": 16}} ({e})"
                ))
            })
    }
}

/// A part as the engine makes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Segment {
    pub prompt: String,
    /// Where its frames start in the video.
    pub start_frame: u32,
    /// How many frames it adds.
    pub frames: u32,
}

/// A part of a finished video, as its metadata lists it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SegmentRecord {
    pub prompt: String,
    pub start_frame: u32,
    pub frames: u32,
    /// The noise seed it was made with (the video's seed plus its index).
    pub seed: u64,
    /// Its drift from the first part, after the correction.
    pub drift: Drift,
    /// The colour correction applied at its join; `None` for the first part, or with `color_match: false`.
    pub color_match: Option<ColorMatch>,
    /// The mean per-channel shift that brought its foreground to the first part's colour (see `drift.rs`);
    /// `None` for the first part, or with `color_match: false`.
    pub color_shift: Option<[f64; 3]>,
}

/// The parts a request asks for, checked against the model and the limits: `None` for a video made in one
/// piece. A single segment is a plain request for its prompt.
pub fn plan(request: &Request, model: &ModelInfo, limits: &Limits) -> Result<Option<Vec<Segment>>> {
    let native = model.defaults.num_frames;
    let continues = model.conditioning.image && !model.conditioning.needs_last_image;
    if request.segments.is_empty() {
        // One prompt longer than the model's native length is a storyboard of that prompt, where the model can
        // continue from a frame; elsewhere it is one generation, as long as the model and limits allow. A length
        // past the limit is left to the plain check, which refuses it before anything is split (a fuzzed
        // `num_frames` near 2³² once made 268 million parts here).
        return Ok(match request.num_frames {
            Some(total)
                if continues && total > native && total <= limits.max_frames && model.frame_rule.accepts(total) =>
            {
                let mut parts = vec![native];
                let mut left = total - native;
                while left > 0 {
                    let frames = left.min(later_default(native));
                    parts.push(frames);
                    left -= frames;
                }
                Some(placed(parts.into_iter().map(|f| (request.prompt.trim().to_string(), f))))
            }
            _ => None,
        });
    }
    if !request.prompt.trim().is_empty() {
        return Err(Error::invalid("give prompt or segments, not both: a storyboard's prompts are its segments'"));
    }
    if request.last_image.is_some() {
        return Err(Error::invalid("last_image: a storyboard's parts start from the part before; give no last_image"));
    }
    if request.segments.len() > 1 && !continues {
        return Err(Error::invalid(format!(
            "segments: {} cannot continue from a frame (it takes no image), so it makes one part at most",
            model.name
        )));
    }
    let mut parts = Vec::with_capacity(request.segments.len());
    for (i, s) in request.segments.iter().enumerate() {
        let field = format!("segments[{i}]");
        let prompt = s.prompt.trim();
        if prompt.is_empty() {
            return Err(Error::invalid(format!("{field}.prompt is empty: describe the part")));
        }
        let chars = s.prompt.chars().count();
        if chars > limits.max_prompt_chars {
            return Err(Error::invalid(format!(
                "{field}.prompt has {chars} characters; the limit is {}",
                limits.max_prompt_chars
            )));
        }
        let frames = s.num_frames.unwrap_or(if i == 0 { native } else { later_default(native) });
        // A later part is generated with the frame it is given in front.
        let generated = if i == 0 { frames } else { frames.saturating_add(1) };
        if frames == 0 || !model.frame_rule.accepts(generated) {
            let hint = match (model.frame_rule, i) {
                (FrameRule::Any, _) => "at least 1".to_string(),
                (FrameRule::OnePlusFourK, 0) => {
                    let lo = (frames.max(1) - 1) / 4 * 4 + 1;
                    format!("1+4k frames, such as {lo} or {}", lo + 4)
                }
                (FrameRule::OnePlusFourK, _) => {
                    let lo = (frames / 4 * 4).max(4);
                    format!("4k frames after the frame it starts from, such as {lo} or {}", lo + 4)
                }
            };
            return Err(Error::invalid(format!(
                "{field}.num_frames {frames}: {} makes a {} part of {hint}",
                model.name,
                if i == 0 { "first" } else { "later" }
            )));
        }
        parts.push((prompt.to_string(), frames));
    }
    let total: u64 = parts.iter().map(|(_, f)| *f as u64).sum();
    if total > limits.max_frames as u64 {
        return Err(Error::invalid(format!("segments: {total} frames in all; the limit is {}", limits.max_frames)));
    }
    if let Some(n) = request.num_frames.filter(|&n| n as u64 != total) {
        return Err(Error::invalid(format!(
            "num_frames {n} disagrees with the segments' {total} frames: leave num_frames out, or make them agree"
        )));
    }
    Ok((parts.len() > 1).then(|| placed(parts.into_iter())))
}

/// The frames a later part adds by default: the native length, less the frame it starts from.
fn later_default(native: u32) -> u32 {
    native.saturating_sub(1).max(1)
}

fn placed(parts: impl Iterator<Item = (String, u32)>) -> Vec<Segment> {
    let mut start = 0;
    parts
        .map(|(prompt, frames)| {
            let s = Segment { prompt, start_frame: start, frames };
            start += frames;
            s
        })
        .collect()
}

/// Where a storyboard's part stands, kept by the [`Attempt`] while the model makes it: which part of how many,
/// and what happens to the frames the model hands over (see [`Cursor::take`]).
pub(crate) struct Cursor {
    pub index: u32,
    pub count: u32,
    /// The denoising steps each part takes.
    pub steps: u32,
    /// The frame this part was started from (a later part), which its frame 0 renders and is dropped for.
    given: Option<Arc<Image>>,
    color_match: bool,
    /// The first part's foreground colour, which a later part's frames are shifted to.
    reference: Option<[f64; 3]>,
    /// The frames handed over so far, before any was dropped.
    pub seen: usize,
    correction: Option<ColorMatch>,
    /// The sum of the reference shifts applied, weighted by frames.
    shifted: Option<[f64; 3]>,
    statistics: super::drift::Statistics,
    last: Option<Vec<u8>>,
    /// The video's frames so far, this part's appended as they come, when the job keeps them (handed from part
    /// to part, so each frame is copied once).
    kept: Option<Vec<u8>>,
    pub started: std::time::Instant,
    /// How long the parts before took, in all.
    pub parts_ms: f64,
}

impl Cursor {
    /// The frames of a chunk as the video gets them: frame 0 of a later part dropped (after fitting the join's
    /// colour correction to it), the correction applied, and the statistics, last frame and kept frames updated.
    /// `None` when nothing is left.
    pub fn take(&mut self, chunk: &Frames) -> Result<Option<Frames>> {
        let first = self.seen == 0;
        self.seen += chunk.num_frames;
        let mut frames = chunk.clone();
        if let (true, Some(given)) = (first, &self.given) {
            if self.color_match {
                self.correction = Some(ColorMatch::fit(chunk.frame(0), &given.rgb));
            }
            let rest = chunk.data()[chunk.frame(0).len()..].to_vec();
            frames = Frames::new(chunk.num_frames - 1, chunk.height, chunk.width, rest)?;
        }
        if frames.num_frames == 0 {
            return Ok(None);
        }
        if let Some(c) = &self.correction {
            frames = c.apply(&frames)?;
        }
        if let (true, Some(reference)) = (self.color_match, self.reference) {
            let (matched, shift) = super::drift::shift_foreground(&frames, reference)?;
            let sum = self.shifted.get_or_insert([0.0; 3]);
            for c in 0..3 {
                sum[c] += shift[c] * frames.num_frames as f64;
            }
            frames = matched;
        }
        self.statistics.add(&frames);
        self.last = Some(frames.frame(frames.num_frames - 1).to_vec());
        if let Some(kept) = &mut self.kept {
            kept.extend_from_slice(frames.data());
        }
        Ok(Some(frames))
    }
}

/// Makes the video `p` asks for: in one piece, or part by part for a storyboard (see the module's invariants).
pub fn generate(model: &dyn Model, p: &Params, attempt: &mut Attempt<'_>) -> Result<Video> {
    if p.segments.is_empty() {
        return model.generate(p, attempt);
    }
    let count = p.segments.len() as u32;
    let mut kept = attempt
        .retains_frames()
        .then(|| Vec::with_capacity(p.num_frames as usize * p.height as usize * p.width as usize * 3));
    let mut first_statistics = None;
    let mut records = Vec::with_capacity(p.segments.len());
    let mut given: Option<Arc<Image>> = p.image.clone();
    let mut parts_ms = 0.0;
    for (k, segment) in p.segments.iter().enumerate() {
        let later = k > 0;
        let seed = p.seed.wrapping_add(k as u64);
        let part = Params {
            prompt: segment.prompt.clone(),
            num_frames: segment.frames + u32::from(later),
            seed,
            image: given.clone(),
            last_image: None,
            segments: Vec::new(),
            ..p.clone()
        };
        let started = std::time::Instant::now();
        attempt.begin_part(Cursor {
            index: k as u32,
            count,
            steps: p.steps,
            given: if later { given.clone() } else { None },
            color_match: p.color_match,
            reference: first_statistics.as_ref().and_then(super::drift::Statistics::mean_rgb),
            seen: 0,
            correction: None,
            shifted: None,
            statistics: Default::default(),
            last: None,
            kept: kept.take(),
            started,
            parts_ms,
        });
        let video = model.generate(&part, attempt)?;
        // A model that does not stream hands its frames over here.
        if attempt.part_frames_seen() == 0 {
            attempt.emit(&video.frames)?;
        }
        let cursor = attempt.end_part().expect("begun above");
        parts_ms += started.elapsed().as_secs_f64() * 1e3;
        let added = cursor.seen.saturating_sub(usize::from(later));
        if added != segment.frames as usize {
            return Err(Error::internal(format!(
                "part {} of the storyboard made {added} frames, not {}",
                k + 1,
                segment.frames
            )));
        }
        let first = first_statistics.get_or_insert_with(|| cursor.statistics.clone());
        let drift = cursor.statistics.drift_from(first);
        attempt.quality(k as u32, count, drift);
        records.push(SegmentRecord {
            prompt: segment.prompt.clone(),
            start_frame: segment.start_frame,
            frames: segment.frames,
            seed,
            drift,
            color_match: cursor.correction,
            color_shift: cursor
                .shifted
                .map(|sum| sum.map(|v| super::drift::round(v / segment.frames.max(1) as f64, 1))),
        });
        kept = cursor.kept;
        let last = cursor.last.ok_or_else(|| Error::internal("a storyboard part made no frames"))?;
        given = Some(Arc::new(Image::new(p.width, p.height, last)));
    }
    let data = kept.unwrap_or_default();
    let frames = data.len() / (p.height as usize * p.width as usize * 3).max(1);
    let frames = Frames::new(frames, p.height as usize, p.width as usize, data)?;
    let metadata = crate::video::VideoMetadata { segments: records, ..Default::default() };
    Ok(Video { frames: Arc::new(frames), fps: p.fps, metadata })
}
