//! `vgen`: the command-line face of the engine.
//!
//! Exit codes: 0 done; 1 the job failed or an error; 2 bad usage (what to change is printed first); 130 cancelled
//! by Ctrl-C (the job stops at its next step and no partial file is left).

use clap::{Parser, Subcommand};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use vgen_core::encode;
use vgen_core::engine::{EngineConfig, Expert, JobStatus, Request};
use vgen_core::models::Models;
use vgen_core::models::weights::quantize;
use vgen_core::{Device, Engine, ErrorCode, JobState, runtime};

const VERSION_LINE: &str = concat!(env!("CARGO_PKG_VERSION"), " (libtorch ", env!("VGEN_LIBTORCH_VERSION"), ")");
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_CANCELLED: u8 = 130;

#[derive(Parser)]
#[command(name = "vgen", version = VERSION_LINE, about = "Native text-to-video generation on libtorch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a video from a prompt and write it to one or more files.
    Generate(Box<Generate>),
    /// List the devices libtorch sees, and prove each one works by running a small computation on it.
    Devices {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the models: the built-in test models, and the model folders found on the search path ($VGEN_MODELS,
    /// the user's data folder, the install prefix's share/vgen/models, the source tree's models/).
    Models {
        #[arg(long)]
        json: bool,
    },
    /// Run an engine from a configuration file until SIGTERM or Ctrl-C: with a Redis backend, a worker node that
    /// takes jobs from the shared queue. On a signal it stops taking jobs, lets running ones finish for the
    /// configured shutdown timeout, and gives the rest back to the queue for other workers.
    Worker {
        /// The engine configuration (JSON, as `EngineConfig`), e.g. `{"backend": {"redis": {...}}}`.
        #[arg(long)]
        config: PathBuf,
    },
    /// Write a copy of a model folder with its transformers' weights quantized: fp8 (scaled, safetensors), q8_0 or
    /// q4_k (GGUF). vgen loads the new folder like any other; the weights stay quantized in memory.
    Quantize {
        /// fp8, q8_0 or q4_k.
        #[arg(long)]
        format: String,
        /// The model folder, or the name of a model on the search path (e.g. shapes-tiny).
        model: String,
        /// The folder to write; it must not exist.
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct Generate {
    /// The video to make; or give --segment instead.
    #[arg(long, required_unless_present = "segments", conflicts_with = "segments")]
    prompt: Option<String>,
    /// One part of a storyboard, PROMPT[:FRAMES] (the frames it adds; the model's native length by default).
    /// Repeat for each part, in order: each continues from the last frame of the one before, in one video.
    #[arg(long = "segment", value_name = "PROMPT[:FRAMES]")]
    segments: Vec<String>,
    #[arg(long)]
    negative_prompt: Option<String>,
    /// A PNG or JPEG to animate: the video's first frame (a model that takes images; see `vgen models`). Resized
    /// to the video's size as diffusers' pipelines do (stretched, Lanczos).
    #[arg(long)]
    image: Option<PathBuf>,
    /// A PNG or JPEG for the video's last frame (first–last frame models).
    #[arg(long)]
    last_image: Option<PathBuf>,
    #[arg(long)]
    width: Option<u32>,
    #[arg(long)]
    height: Option<u32>,
    /// Frame count, 1+4k for Wan models.
    #[arg(long)]
    frames: Option<u32>,
    #[arg(long)]
    fps: Option<f64>,
    #[arg(long)]
    steps: Option<u32>,
    #[arg(long)]
    guidance: Option<f64>,
    /// The low-noise expert's guidance, for a two-expert model (Wan2.2 A14B).
    #[arg(long)]
    guidance_2: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// A model name (see `vgen models`) or a model folder.
    #[arg(long)]
    model: Option<String>,
    /// auto (every GPU, else the CPU), cpu, or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Emit a preview event every N steps.
    #[arg(long)]
    preview_every: Option<u32>,
    /// Decode in overlapping spatial tiles (on) or whole (off); by default, frames past the model's pixel budget
    /// (832 x 480) tile. Tiles keep the VAE's memory flat in resolution.
    #[arg(long, value_parser = ["on", "off"])]
    vae_tiling: Option<String>,
    /// A LoRA adapter, PATH[:SCALE] (scale 1 by default), or NAME[:SCALE] for loras/NAME.safetensors in a models
    /// folder. Repeat for several.
    #[arg(long = "lora")]
    loras: Vec<String>,
    /// A LoRA adapter for a two-expert model's high-noise expert only (Wan2.2 A14B's `transformer`), as --lora.
    #[arg(long = "lora-high")]
    loras_high: Vec<String>,
    /// A LoRA adapter for a two-expert model's low-noise expert only (`transformer_2`), as --lora.
    #[arg(long = "lora-low")]
    loras_low: Vec<String>,
    /// The sampler: flow-matching euler or unipc (the model's own by default).
    #[arg(long, value_parser = ["euler", "unipc"])]
    sampler: Option<String>,
    /// The schedule's shift (higher spends more steps at high noise); the model's by default.
    #[arg(long)]
    flow_shift: Option<f64>,
    /// A fixed list of timesteps, falling, comma-separated (a distilled model's, e.g. 1000,750,500,250): the steps
    /// are then these.
    #[arg(long, value_delimiter = ',')]
    timesteps: Option<Vec<u32>>,
    /// Step caching: skip the transformer's blocks at steps where their effect is predictably close to the last
    /// computed (EasyCache); optionally a threshold (larger skips more and changes the video more).
    #[arg(long, num_args = 0..=1, default_missing_value = "on", value_name = "THRESHOLD")]
    step_cache: Option<String>,
    /// Output file: .mp4, .gif, .png (animated), or a folder ending in /. Repeat to write several formats.
    #[arg(long = "out", required = true)]
    out: Vec<PathBuf>,
    /// One JSON event per line on stdout, then a result summary, instead of a progress bar.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Devices { json } => report(devices(json)),
        Command::Models { json } => report(models(json)),
        Command::Generate(g) => generate(*g),
        Command::Worker { config } => report(worker(&config)),
        Command::Quantize { format, model, out, json } => match format.parse() {
            Ok(f) => report(quantize(&model, &out, f, json)),
            Err(e) => usage(e),
        },
    }
}

fn quantize(model: &str, out: &std::path::Path, format: quantize::Format, json: bool) -> vgen_core::Result<()> {
    let given = PathBuf::from(model);
    let src = if given.is_dir() {
        given
    } else {
        vgen_core::models::SearchPath::standard()
            .roots()
            .iter()
            .map(|r| r.path.join(model))
            .find(|p| p.join("model_index.json").is_file())
            .ok_or_else(|| {
                vgen_core::Error::new(
                    ErrorCode::NotFound,
                    format!("no model folder {model:?} here or on the search path"),
                )
            })?
    };
    let started = Instant::now();
    let report = quantize::quantize_model(&src, out, format)?;
    if json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        let kinds: Vec<String> = report.quantized.iter().map(|(k, n)| format!("{n} {k}")).collect();
        println!(
            "wrote {}: {} matrices quantized ({}), {} tensors kept; transformer weights {:.1} MB -> {:.1} MB ({:.2}x) in {:.1} s",
            out.display(),
            report.quantized.values().sum::<usize>(),
            kinds.join(", "),
            report.kept,
            report.bytes_before as f64 / 1e6,
            report.bytes_after as f64 / 1e6,
            report.bytes_after as f64 / report.bytes_before.max(1) as f64,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn worker(path: &std::path::Path) -> vgen_core::Result<()> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vgen_core::Error::invalid(format!("cannot read {}: {e}", path.display())))?;
    let config = EngineConfig::from_json(&text)?;
    let (models, problems) = Models::discover();
    for p in problems {
        eprintln!("vgen: warning: {p}");
    }
    let engine = Engine::with_models(config, models)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .map_err(|e| vgen_core::Error::internal(format!("cannot handle signals: {e}")))?;
    eprintln!("vgen: worker running; SIGTERM or Ctrl-C stops it");
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("vgen: stopping");
    engine.shutdown(Duration::from_millis(engine.config().shutdown_timeout_ms));
    Ok(())
}

/// `--lora PATH[:SCALE]` or `NAME[:SCALE]`: a path when it names a file or looks like one, else a name. A bad
/// scale is left in the path, where the engine's check names the whole argument.
fn lora_arg(arg: &str, expert: Option<Expert>) -> vgen_core::engine::LoraRef {
    let (target, scale) = match arg.rsplit_once(':') {
        Some((t, s)) if s.parse::<f64>().is_ok() => (t, s.parse().unwrap_or(1.0)),
        _ => (arg, 1.0),
    };
    let is_path = std::path::Path::new(target).is_file() || target.contains('/') || target.ends_with(".safetensors");
    vgen_core::engine::LoraRef {
        path: is_path.then(|| target.to_string()),
        name: (!is_path).then(|| target.to_string()),
        scale,
        expert,
    }
}

fn report(r: vgen_core::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vgen: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("vgen: {message}");
    ExitCode::from(EXIT_USAGE)
}

fn generate(g: Generate) -> ExitCode {
    // Everything a user can get wrong is checked before any work starts.
    for out in &g.out {
        if let Err(e) = encode::check_writable(out) {
            return usage(e.message());
        }
    }
    let devices = match g.device.as_str() {
        "auto" => Vec::new(),
        d => match d.parse::<Device>().and_then(Device::check_present) {
            Ok(d) => vec![d],
            Err(e) => return usage(e.message()),
        },
    };
    let (mut models, problems) = Models::discover();
    for p in problems {
        eprintln!("vgen: warning: skipped a model folder: {p}");
    }
    let model = match &g.model {
        Some(m) => match models.resolve(m) {
            Ok(name) => Some(name),
            Err(e) => return usage(e.message()),
        },
        None => None,
    };
    let engine = match Engine::with_models(EngineConfig { devices, ..Default::default() }, models) {
        Ok(e) => e,
        Err(e) => return usage(e),
    };
    let request = Request {
        negative_prompt: g.negative_prompt.clone(),
        width: g.width,
        height: g.height,
        num_frames: g.frames,
        fps: g.fps,
        steps: g.steps,
        guidance_scale: g.guidance,
        guidance_scale_2: g.guidance_2,
        seed: g.seed,
        model,
        preview_every: g.preview_every,
        vae_tiling: g.vae_tiling.as_deref().map(|v| v == "on"),
        loras: (g.loras.iter().map(|l| lora_arg(l, None)))
            .chain(g.loras_high.iter().map(|l| lora_arg(l, Some(Expert::High))))
            .chain(g.loras_low.iter().map(|l| lora_arg(l, Some(Expert::Low))))
            .collect(),
        sampler: (g.sampler.is_some() || g.flow_shift.is_some() || g.timesteps.is_some()).then(|| {
            vgen_core::schedulers::Sampler {
                kind: g.sampler.as_deref().map(|k| {
                    if k == "euler" {
                        vgen_core::schedulers::SamplerKind::Euler
                    } else {
                        vgen_core::schedulers::SamplerKind::Unipc
                    }
                }),
                flow_shift: g.flow_shift,
                timesteps: g.timesteps.clone(),
            }
        }),
        step_cache: match g.step_cache.as_deref() {
            None => None,
            Some("on") => Some(vgen_core::engine::StepCacheRequest::On(true)),
            Some(t) => match t.parse::<f64>() {
                Ok(threshold) => Some(vgen_core::engine::StepCacheRequest::Threshold { threshold }),
                Err(_) => return usage(format!("--step-cache takes a threshold such as 0.1, not {t:?}")),
            },
        },
        image: g.image.as_ref().map(|p| vgen_core::engine::image::ImageInput::Path(p.to_string_lossy().into_owned())),
        last_image: g
            .last_image
            .as_ref()
            .map(|p| vgen_core::engine::image::ImageInput::Path(p.to_string_lossy().into_owned())),
        // The engine writes the files as the video is decoded, and keeps no frames: memory stays that of one
        // decoded chunk, however long the video.
        outputs: g.out.iter().map(|p| p.to_string_lossy().into_owned()).collect(),
        keep_frames: Some(false),
        segments: match g.segments.iter().map(|s| segment_arg(s)).collect() {
            Ok(segments) => segments,
            Err(e) => return usage(e),
        },
        ..Request::new(g.prompt.clone().unwrap_or_default())
    };
    let id = match engine.submit(request) {
        Ok(id) => id,
        Err(e) if e.code() == ErrorCode::InvalidArgument || e.code() == ErrorCode::NotFound => {
            return usage(
                e.message()
                    .replace("].num_frames", "] frames")
                    .replace("num_frames", "--frames")
                    .replace("guidance_scale_2", "--guidance-2")
                    .replace("guidance_scale", "--guidance"),
            );
        }
        Err(e) => return report(Err(e)),
    };

    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    let started = Instant::now();
    let tty = !g.json && std::io::stderr().is_terminal();
    let mut seen = 0;
    let status = loop {
        if interrupted.load(Ordering::SeqCst) {
            let _ = engine.cancel(id);
        }
        if let Ok(events) = engine.events(id, seen) {
            for ev in events {
                seen = ev.seq;
                show(&ev, g.json, tty);
            }
        }
        match engine.wait(id, Some(Duration::from_millis(100))) {
            Ok(s) => break s,
            Err(e) if e.code() == ErrorCode::Timeout => {
                if tty {
                    if let Ok(s) = engine.poll(id) {
                        draw(&s, started.elapsed());
                    }
                }
            }
            Err(e) => return report(Err(e)),
        }
    };
    if let Ok(events) = engine.events(id, seen) {
        for ev in events {
            show(&ev, g.json, tty);
        }
    }
    if tty {
        draw(&status, started.elapsed());
        eprintln!();
    }
    match status.state {
        JobState::Succeeded => {}
        JobState::Cancelled => {
            eprintln!("vgen: cancelled; no file written");
            return ExitCode::from(EXIT_CANCELLED);
        }
        _ => {
            let e = status.error.map(|e| format!("{}: {}", e.code, e.message)).unwrap_or_default();
            eprintln!("vgen: the job failed: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    }
    let video = match engine.result(id) {
        Ok(v) => v,
        Err(e) => return report(Err(e)),
    };
    let m = &video.metadata;
    if g.json {
        let summary = serde_json::json!({
            "type": "result",
            "paths": g.out,
            "seed": m.seed,
            "model": m.model,
            "device": m.device,
            "width": m.width, "height": m.height, "frames": m.num_frames, "fps": video.fps,
            "timings_ms": m.timings_ms,
            "total_ms": started.elapsed().as_secs_f64() * 1e3,
            "peak_rss_bytes": m.peak_rss_bytes,
            "attempts": m.attempts,
            "cache_hit": m.cache_hit,
            "segments": m.segments,
        });
        emit(&summary.to_string());
    } else {
        if tty {
            eprintln!();
        }
        for out in &g.out {
            eprintln!("wrote {}", out.display());
        }
        eprintln!(
            "{} frames {}x{} at {} fps, seed {}, model {}, {:.1} s",
            m.num_frames,
            m.width,
            m.height,
            video.fps,
            m.seed,
            m.model,
            started.elapsed().as_secs_f64()
        );
    }
    ExitCode::SUCCESS
}

/// `--segment PROMPT[:FRAMES]`: the frames are what follows the last colon when it is a number, so a prompt may
/// hold colons of its own.
fn segment_arg(arg: &str) -> Result<vgen_core::engine::SegmentRequest, String> {
    use vgen_core::engine::SegmentRequest;
    match arg.rsplit_once(':') {
        Some((prompt, frames)) if !frames.is_empty() && frames.bytes().all(|b| b.is_ascii_digit()) => {
            let frames = frames.parse().map_err(|_| format!("--segment {arg:?}: {frames} frames is too many"))?;
            Ok(SegmentRequest { prompt: prompt.to_string(), num_frames: Some(frames) })
        }
        _ => Ok(SegmentRequest { prompt: arg.to_string(), num_frames: None }),
    }
}

/// An event as the user sees it: a JSON line with `--json`; otherwise only warnings, on stderr.
fn show(ev: &vgen_core::engine::Event, json: bool, tty: bool) {
    if json {
        emit(&serde_json::to_string(ev).unwrap_or_default());
    } else if let vgen_core::engine::EventKind::Warning { message } = &ev.kind {
        eprintln!("{}vgen: warning: {message}", if tty { "\r" } else { "" });
    }
}

/// Prints one line of JSON to stdout. A closed pipe (`vgen ... --json | head`) is not an error worth a panic:
/// the rest of the output is dropped and the job still finishes.
fn emit(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// One line: stage, bar, percent, step i/N, elapsed and the engine's ETA.
fn draw(s: &JobStatus, elapsed: Duration) {
    let width = 24;
    let filled = ((s.progress * width as f64).round() as usize).min(width);
    let eta = match (s.state, s.eta_ms) {
        (JobState::Succeeded, _) => "done".to_string(),
        (_, Some(ms)) => format!("eta {:.1}s", ms as f64 / 1e3),
        _ => "eta ?".to_string(),
    };
    let stage = if s.state == JobState::Queued { "queued" } else { s.stage.name() };
    eprint!(
        "\r{stage:<16} [{}{}] {:>3.0}% step {}/{} {:.1}s {eta}   ",
        "#".repeat(filled),
        " ".repeat(width - filled),
        s.progress * 100.0,
        s.step,
        s.steps,
        elapsed.as_secs_f64()
    );
    let _ = std::io::stderr().flush();
}

fn devices(json: bool) -> vgen_core::Result<()> {
    let cuda = runtime::init();
    let probes = Device::all().into_iter().map(Device::probe).collect::<vgen_core::Result<Vec<_>>>()?;
    if json {
        let out = serde_json::json!({
            "vgen": runtime::VERSION,
            "libtorch": runtime::LIBTORCH_VERSION,
            "cpu_threads": runtime::cpu_threads(),
            "cuda": cuda.describe(),
            "auto": Device::auto(),
            "devices": probes,
        });
        println!("{out}");
        return Ok(());
    }
    println!("vgen {} on libtorch {}", runtime::VERSION, runtime::LIBTORCH_VERSION);
    println!("CUDA: {}", cuda.describe());
    println!("CPU threads: {}", runtime::cpu_threads());
    println!("{:<8} {:>14} {:>22}", "device", "matmul GFLOP/s", "attention max error");
    for p in &probes {
        println!("{:<8} {:>14.1} {:>22.2e}", p.device.to_string(), p.matmul_gflops, p.attention_max_error);
    }
    let auto: Vec<String> = Device::auto().iter().map(ToString::to_string).collect();
    println!("jobs run on: {} (auto)", auto.join(", "));
    Ok(())
}

fn models(json: bool) -> vgen_core::Result<()> {
    let (models, problems) = Models::discover();
    let list = models.summaries();
    if json {
        println!("{}", serde_json::to_string(&list).map_err(|e| vgen_core::Error::internal(e.to_string()))?);
    } else {
        println!("{:<16} {:>12} {:>14} {:>6}  {:<15} folder", "model", "weights", "default size", "steps", "makes");
        for m in &list {
            let mark = match (m.default, m.test_model) {
                (true, _) => " (default)",
                (false, true) => " (test model)",
                _ => "",
            };
            let c = m.conditioning;
            let makes = if c.needs_last_image {
                "first-last frame"
            } else if c.needs_image && c.last_image {
                "image(+last)"
            } else if c.needs_image {
                "image"
            } else if c.image {
                "text+image"
            } else {
                "text"
            };
            // Wan2.2 A14B: a high-noise and a low-noise transformer.
            let makes =
                if m.defaults.guidance_scale_2.is_some() { format!("{makes}, 2 experts") } else { makes.into() };
            println!(
                "{:<16} {:>9.1} MB {:>14} {:>6}  {makes:<15} {}{mark}",
                m.name,
                m.weights_bytes as f64 / 1e6,
                format!("{}x{}x{}", m.defaults.width, m.defaults.height, m.defaults.num_frames),
                m.defaults.steps,
                m.folder.as_deref().unwrap_or("built in"),
            );
        }
        if let Err(e) = models.get(None) {
            println!("no default model: {}", e.message());
        }
        println!("searched: {}", models.searched().describe());
    }
    for p in problems {
        eprintln!("vgen: warning: skipped a model folder: {p}");
    }
    Ok(())
}
