//! Every fuzz target over its committed corpus (`corpus/<target>/`) and the inputs that once crashed it
//! (`regressions/<target>/`), then over random mutations of them for a few seconds (`VGEN_FUZZ_SECONDS`, default
//! 2 per target; `VGEN_FUZZ_SEED` repeats a run). This is the short form `make test` runs on stable Rust; `make
//! fuzz` runs the same bodies under libFuzzer with coverage guidance.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn inputs(target: &str) -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = ["corpus", "regressions"]
        .iter()
        .filter_map(|d| std::fs::read_dir(root.join(d).join(target)).ok())
        .flatten()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// Fragments that parsers meet at their edges.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e308",
    b"18446744073709551616",
    b"\\u0000",
    b"\\ud800",
    b"\xff",
    b"\xc3\x28",
    b"  ",
    b"../",
    b"/",
    b"\"outputs\": [\"/tmp/\"]",
];

fn mutate(rng: &mut StdRng, seed: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let at = if v.is_empty() { 0 } else { rng.random_range(0..=v.len()) };
        match rng.random_range(0..6) {
            0 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 => v.insert(at, rng.random()),
            2 if !v.is_empty() => {
                let end = (at + rng.random_range(1..16)).min(v.len());
                v.drain(at.min(end)..end);
            }
            3 => {
                let t = TOKENS[rng.random_range(0..TOKENS.len())];
                v.splice(at..at, t.iter().copied());
            }
            4 if !corpus.is_empty() => {
                let other = &corpus[rng.random_range(0..corpus.len())];
                let from = rng.random_range(0..=other.len());
                v.truncate(at);
                v.extend_from_slice(&other[from..]);
            }
            _ if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] = *[b'0', b'9', b'-', b'"', 0xff, b' '].get(rng.random_range(0..6)).unwrap();
            }
            _ => {}
        }
    }
    v
}

fn run(target: &str, body: fn(&[u8])) {
    let corpus = inputs(target);
    assert!(!corpus.is_empty(), "{target} has a committed corpus");
    let seconds: f64 = std::env::var("VGEN_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let seed: u64 = std::env::var("VGEN_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let check = |input: &[u8]| {
        if std::panic::catch_unwind(|| body(input)).is_err() {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-failures").join(target);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("seed-{seed}"));
            std::fs::write(&path, input).unwrap();
            panic!(
                "{target} failed on {:?} (saved to {}; VGEN_FUZZ_SEED={seed})",
                String::from_utf8_lossy(input),
                path.display()
            );
        }
    };
    for input in &corpus {
        check(input);
    }
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut runs = 0;
    while Instant::now() < deadline {
        let pick = rng.random_range(0..corpus.len());
        let input = mutate(&mut rng, &corpus[pick], &corpus);
        check(&input);
        runs += 1;
    }
    eprintln!("{target}: {} corpus inputs and {runs} mutations (seed {seed}) passed", corpus.len());
}

#[test]
fn request_json() {
    run("request_json", vgen_fuzz::request_json);
}

#[test]
fn config_json() {
    run("config_json", vgen_fuzz::config_json);
}

#[test]
fn lora() {
    run("lora", vgen_fuzz::lora);
}

#[test]
fn gguf() {
    run("gguf", vgen_fuzz::gguf);
}

#[test]
fn image_bytes() {
    run("image_bytes", vgen_fuzz::image_bytes);
}

#[test]
fn tokenizer() {
    run("tokenizer", vgen_fuzz::tokenizer);
}

#[test]
fn model_folder() {
    run("model_folder", vgen_fuzz::model_folder);
}

#[test]
fn c_api() {
    run("c_api", vgen_fuzz::c_api::c_api);
}

#[test]
fn server_bodies() {
    run("server_bodies", vgen_fuzz::server_bodies);
}

#[test]
fn segments() {
    run("segments", vgen_fuzz::segments);
}
