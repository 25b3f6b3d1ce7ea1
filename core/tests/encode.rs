//! Video files: encode, read back with independent decoders, and compare. MP4 is read by the `mp4` crate and
//! decoded by OpenH264; GIF and APNG by their crates. With `VGEN_REQUIRE_FFPROBE=1` (set by `make test`, which
//! installs Debian's ffmpeg) every format is also checked by `ffprobe -count_frames`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use vgen_core::encode::{self, Format, Geometry};
use vgen_core::{Frames, Video, VideoMetadata};

const W: usize = 64;
const H: usize = 48;
const T: usize = 17;
const FPS: f64 = 8.0;

/// A moving gradient with a moving soft-edged red blob: smooth, like generated video. (A hard-edged saturated
/// shape would lose colour at its edges to yuv420p's halved chroma resolution, as it does in any H.264 file.)
fn video() -> Video {
    let mut data = Vec::with_capacity(T * H * W * 3);
    for t in 0..T {
        for y in 0..H {
            for x in 0..W {
                let (dx, dy) = (x as f64 - 12.0 - 2.0 * t as f64, y as f64 - 24.0);
                let a = (-(dx * dx + dy * dy) / (2.0 * 5.0 * 5.0)).exp();
                let bg = [(x * 3 + t * 4) as f64, (y * 4) as f64, (128 + t * 3) as f64];
                let px = [230.0, 40.0, 40.0];
                for c in 0..3 {
                    data.push((bg[c] * (1.0 - a) + px[c] * a).round() as u8);
                }
            }
        }
    }
    Video { frames: Arc::new(Frames::new(T, H, W, data).unwrap()), fps: FPS, metadata: VideoMetadata::default() }
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let mse = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>() / a.len() as f64;
    if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0 * 255.0 / mse).log10() }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vgen-encode-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Frames of an MP4, decoded: the `mp4` crate reads the container, OpenH264 decodes the samples.
fn read_mp4(path: &Path) -> (u16, u16, f64, Vec<Vec<u8>>) {
    let file = std::fs::File::open(path).unwrap();
    let size = file.metadata().unwrap().len();
    let mut reader = mp4::Mp4Reader::read_header(std::io::BufReader::new(file), size).unwrap();
    assert_eq!(reader.tracks().len(), 1);
    let track = reader.tracks().values().next().unwrap();
    let (w, h) = (track.width(), track.height());
    let fps = track.frame_rate();
    let track_id = track.track_id();
    let count = track.sample_count();
    let avcc = &track.trak.mdia.minf.stbl.stsd.avc1.as_ref().expect("an avc1 track").avcc;
    let mut params = Vec::new();
    for nal in avcc.sequence_parameter_sets.iter().chain(&avcc.picture_parameter_sets) {
        params.extend_from_slice(&[0, 0, 0, 1]);
        params.extend_from_slice(&nal.bytes);
    }
    let mut decoder = openh264::decoder::Decoder::new().unwrap();
    let mut frames = Vec::new();
    for i in 1..=count {
        let sample = reader.read_sample(track_id, i).unwrap().unwrap();
        let mut annexb = if i == 1 { params.clone() } else { Vec::new() };
        let mut rest = &sample.bytes[..];
        while rest.len() >= 4 {
            let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            annexb.extend_from_slice(&[0, 0, 0, 1]);
            annexb.extend_from_slice(&rest[4..4 + n]);
            rest = &rest[4 + n..];
        }
        if let Some(yuv) = decoder.decode(&annexb).unwrap() {
            frames.push(to_rgb(&yuv));
        }
    }
    for yuv in decoder.flush_remaining().unwrap() {
        frames.push(to_rgb(&yuv));
    }
    (w, h, fps, frames)
}

/// Decoded 4:2:0 BT.601 limited range to RGB8, exactly (openh264's own converter is approximate).
fn to_rgb(yuv: &impl openh264::formats::YUVSource) -> Vec<u8> {
    let (w, h) = yuv.dimensions();
    let (sy, su, sv) = yuv.strides();
    let mut out = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let l = 1.164_383 * (yuv.y()[y * sy + x] as f64 - 16.0);
            let u = yuv.u()[(y / 2) * su + x / 2] as f64 - 128.0;
            let v = yuv.v()[(y / 2) * sv + x / 2] as f64 - 128.0;
            for c in [l + 1.596_027 * v, l - 0.391_762 * u - 0.812_968 * v, l + 2.017_232 * u] {
                out.push(c.round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
}

#[test]
fn mp4_round_trips_at_35_db_with_moov_first() {
    let v = video();
    let dir = scratch("mp4");
    let path = dir.join("out.mp4");
    encode::write(&path, &v).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let moov = bytes.windows(4).position(|w| w == b"moov").unwrap();
    let mdat = bytes.windows(4).position(|w| w == b"mdat").unwrap();
    assert!(moov < mdat, "moov comes first, so the file plays before it has fully arrived");
    let (w, h, fps, frames) = read_mp4(&path);
    assert_eq!((w as usize, h as usize), (W, H));
    assert!((fps - FPS).abs() < 1e-6, "{fps}");
    assert_eq!(frames.len(), T);
    let worst = frames.iter().enumerate().map(|(t, f)| psnr(f, v.frames.frame(t))).fold(f64::INFINITY, f64::min);
    eprintln!("mp4 round trip: worst frame {worst:.1} dB, {} bytes for {T} frames", bytes.len());
    assert!(worst >= 35.0, "worst frame {worst:.1} dB");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gif_apng_and_png_frames_round_trip() {
    let v = video();
    let dir = scratch("formats");
    let gif_path = dir.join("out.gif");
    encode::write(&gif_path, &v).unwrap();
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::RGBA);
    let mut d = opts.read_info(std::fs::File::open(&gif_path).unwrap()).unwrap();
    let mut n = 0;
    while let Some(f) = d.read_next_frame().unwrap() {
        assert_eq!((f.width as usize, f.height as usize, f.delay), (W, H, 13));
        let rgb: Vec<u8> = f.buffer.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
        let p = psnr(&rgb, v.frames.frame(n));
        assert!(p >= 30.0, "gif frame {n}: {p:.1} dB");
        n += 1;
    }
    assert_eq!(n, T);

    let png_path = dir.join("out.png");
    encode::write(&png_path, &v).unwrap();
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png_path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    assert_eq!(reader.info().animation_control().unwrap().num_frames as usize, T);
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    for t in 0..T {
        reader.next_frame(&mut buf).unwrap();
        assert_eq!(&buf[..W * H * 3], v.frames.frame(t), "apng frame {t} is lossless");
    }

    let folder = dir.join("frames/");
    encode::write(&folder, &v).unwrap();
    let mut names: Vec<_> =
        std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names.len(), T);
    assert_eq!(names[0], "frame_00000.png");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unfinished_encode_leaves_nothing_behind_and_bad_paths_are_refused() {
    let dir = scratch("partial");
    for name in ["a.mp4", "a.gif", "a.png", "frames/"] {
        let path = dir.join(name);
        let mut enc = encode::open(&path, Geometry { width: W, height: H, fps: FPS, num_frames: T }).unwrap();
        enc.push(video().frames.frame(0)).unwrap();
        drop(enc); // cancelled before finish
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no partial file is left");
    assert!(Format::from_path(Path::new("x.avi")).unwrap_err().message().contains(".mp4"));
    assert!(encode::check_writable(Path::new("/nonexistent-folder/x.mp4")).is_err());
    assert!(encode::check_writable(&dir.join("ok.mp4")).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ffprobe_reads_every_format() {
    if std::process::Command::new("ffprobe").arg("-version").output().is_err() {
        assert!(std::env::var_os("VGEN_REQUIRE_FFPROBE").is_none(), "ffprobe is required (make test installs ffmpeg)");
        eprintln!("ffprobe not installed: skipped (make test installs it)");
        return;
    }
    let v = video();
    let dir = scratch("ffprobe");
    for (name, codec) in [("out.mp4", "h264"), ("out.gif", "gif"), ("out.png", "apng")] {
        let path = dir.join(name);
        encode::write(&path, &v).unwrap();
        let out = std::process::Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries"])
            .arg("stream=codec_name,width,height,nb_read_frames,pix_fmt:format=duration")
            .args(["-of", "json"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let s = &json["streams"][0];
        assert_eq!(s["codec_name"], codec, "{name}");
        assert_eq!((s["width"].as_u64(), s["height"].as_u64()), (Some(W as u64), Some(H as u64)), "{name}");
        assert_eq!(s["nb_read_frames"].as_str().and_then(|n| n.parse::<usize>().ok()), Some(T), "{name}");
        if codec == "h264" {
            assert_eq!(s["pix_fmt"], "yuv420p");
            let duration: f64 = json["format"]["duration"].as_str().unwrap().parse().unwrap();
            assert!((duration - T as f64 / FPS).abs() < 0.01, "{name}: {duration}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
