//! Quantized weights: ggml's block formats decoded to the bit as PyPI's `gguf` package (0.19.0) decodes them; GGUF
//! files that package wrote, and ComfyUI/lightx2v-style scaled fp8 files, loaded into the Wan transformer and run
//! against diffusers on the weights the reference decodes; hostile GGUF headers refused; and `vgen quantize`'s
//! three formats making the shipped model's video close to fp32's. Fixtures: `tools/wan_reference/make_quant_case.py`.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tch::{Device, Kind, Tensor};
use vgen_core::engine::{EngineConfig, Request};
use vgen_core::models::wan::pipeline::WanModel;
use vgen_core::models::wan::{self, transformer::TransformerConfig};
use vgen_core::models::weights::ggml::GgmlType;
use vgen_core::models::weights::gguf::{self, Gguf, TensorOut};
use vgen_core::models::weights::quantize::{Format, quantize_model};
use vgen_core::models::weights::read_config;
use vgen_core::{Engine, JobState};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wan")
}

fn cases(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("cases").join(name)).unwrap().into_iter().collect()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vgen-quant-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn max_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

#[test]
fn every_ggml_type_decodes_to_the_bit_as_the_gguf_package_does() {
    let c = cases("ggml.safetensors");
    for g in GgmlType::ALL {
        let blocks = &c[&format!("{}.blocks", g.name())];
        let want = &c[&format!("{}.values", g.name())];
        let got = g.dequantize(blocks, &want.size()).unwrap();
        assert_eq!(got.kind(), Kind::Float);
        // Bit for bit: compare the fp32 patterns, not the values (NaN-safe, and -0 differs from 0).
        let same = got.view_dtype(Kind::Int).eq_tensor(&want.view_dtype(Kind::Int)).all().int64_value(&[]);
        assert_eq!(same, 1, "{}: decoded values differ from gguf's (max error {:e})", g.name(), max_err(&got, want));
    }
}

#[test]
fn q8_0_and_q4_1_encode_byte_for_byte_as_the_gguf_package_does_and_q4_k_round_trips_closely() {
    let c = cases("ggml.safetensors");
    for g in [GgmlType::Q8_0, GgmlType::Q4_1] {
        let got = g.quantize(&c[&format!("{}.source", g.name())]).unwrap();
        assert!(got.equal(&c[&format!("{}.quantized", g.name())]), "{}: encoded bytes differ from gguf's", g.name());
    }
    tch::manual_seed(7);
    let x = Tensor::randn([8, 512], (Kind::Float, Device::Cpu)) * 0.2;
    for (g, worst) in [(GgmlType::Q8_0, 0.01), (GgmlType::Q4_1, 0.12), (GgmlType::Q4K, 0.12)] {
        let back = g.dequantize(&g.quantize(&x).unwrap(), &[8, 512]).unwrap();
        let rel = ((&back - &x).square().mean(Kind::Float) / x.square().mean(Kind::Float)).sqrt().double_value(&[]);
        eprintln!("{}: relative RMS error {rel:.4}", g.name());
        assert!(rel < worst, "{}: relative RMS error {rel} >= {worst}", g.name());
    }
    let err = GgmlType::Q4K.quantize(&Tensor::zeros([4, 100], (Kind::Float, Device::Cpu))).unwrap_err();
    assert!(err.to_string().contains("not a whole number of Q4_K blocks"), "{err}");
}

fn quant_transformer_output(folder: &str) -> (Tensor, usize, usize) {
    let c = cases("quant.safetensors");
    let dir = fixtures().join("tiny-wan-quant").join(folder);
    let config: TransformerConfig = read_config(&dir).unwrap();
    let (vs, model) = wan::load_transformer(&dir, Device::Cpu, config).unwrap();
    let slots = vs.variables().values().filter(|v| v.kind() == Kind::Uint8).count();
    let bytes: usize = vs.variables().values().map(|v| v.numel() * v.kind().elt_size_in_bytes()).sum();
    let out =
        tch::no_grad(|| model.forward(&c["hidden_states"], &c["timestep"], &c["encoder_hidden_states"], None).unwrap());
    (out, slots, bytes)
}

#[test]
fn a_gguf_that_the_gguf_package_wrote_runs_as_diffusers_runs_its_decoded_weights() {
    let c = cases("quant.safetensors");
    let (out, slots, bytes) = quant_transformer_output("transformer");
    // Every matrix the file holds in blocks stays in blocks: 8 attention, 2 ffn, 3 time, 1 text, 1 head (the
    // BF16 text matrix and the F16 patch embedding are floats).
    assert_eq!(slots, 15, "quantized layers");
    let e = max_err(&out, &c["gguf.output"]);
    eprintln!("GGUF (original key names, 9 types): max abs error {e:.1e}; {bytes} bytes of variables");
    assert!(e < 1e-4, "max abs error {e:e}");

    let header =
        Gguf::parse(&std::fs::read(fixtures().join("tiny-wan-quant/transformer/wan-tiny-mixed.gguf")).unwrap())
            .unwrap();
    let patch = header.tensors.iter().find(|t| t.name == "patch_embedding.weight").unwrap();
    assert_eq!(patch.shape, vec![256, 16, 1, 2, 2], "ComfyUI-GGUF's orig_shape restores the 5-D shape");
    assert_eq!(header.metadata["general.architecture"].as_str(), Some("wan"));
}

#[test]
fn scaled_fp8_safetensors_run_as_diffusers_runs_their_decoded_weights() {
    let c = cases("quant.safetensors");
    let (out, slots, _) = quant_transformer_output("transformer-fp8");
    // 5 with a per-tensor scale, 3 per channel, 2 without a scale.
    assert_eq!(slots, 10, "quantized layers");
    let e = max_err(&out, &c["fp8.output"]);
    eprintln!("scaled fp8 (ComfyUI and lightx2v names): max abs error {e:.1e}");
    assert!(e < 1e-4, "max abs error {e:e}");
    // Against the model before quantization it differs, but not by much: the weights were quantized, not lost.
    // (The GGUF fixture's k-quant layers hold random blocks, as the reference has no k-quant encoder, so only
    // the fp8 one can say this.)
    let drift = max_err(&out, &c["fp8.dense.output"]);
    let scale = c["fp8.dense.output"].abs().max().double_value(&[]);
    assert!(drift > 1e-5 && drift < 0.1 * scale, "drift from fp32 {drift} (outputs up to {scale})");
}

/// A small valid GGUF file's bytes: one Q8_0 matrix.
fn small_gguf() -> Vec<u8> {
    let dir = scratch("small");
    let path = dir.join("m.gguf");
    let x = Tensor::ones([2, 32], (Kind::Float, Device::Cpu));
    let q = GgmlType::Q8_0.quantize(&x).unwrap();
    let mut bytes = vec![0u8; q.numel()];
    q.copy_data_u8(&mut bytes, q.numel());
    let meta = vec![("general.architecture".to_string(), gguf::Value::Str("wan".into()))];
    gguf::write(&path, &meta, &[TensorOut { name: "w.weight", shape: &[2, 32], ggml: GgmlType::Q8_0, bytes: &bytes }])
        .unwrap();
    std::fs::read(path).unwrap()
}

#[test]
fn hostile_gguf_headers_are_refused_with_a_reason_never_a_crash_or_a_huge_allocation() {
    let good = small_gguf();
    let parsed = Gguf::parse(&good).unwrap();
    assert_eq!((parsed.version, parsed.tensors.len()), (3, 1));
    assert_eq!(parsed.tensors[0].shape, vec![2, 32]);
    // Offsets in `good`: magic 0, version 4, tensor count 8, kv count 16, first key's length 24.
    let key_len = 24;
    let key_end = key_len + 8 + "general.architecture".len();
    let value_len = key_end + 4;
    let tensor_name_len = value_len + 8 + 3; // "wan"
    let dims_n = tensor_name_len + 8 + "w.weight".len();
    let type_at = dims_n + 4 + 16;
    let offset_at = type_at + 4;
    let patch = |at: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        b
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "needs 4 bytes"),
        ("bad magic", patch(0, b"GGML"), "magic"),
        ("version 1", patch(4, &1u32.to_le_bytes()), "version 1"),
        ("2^63 tensors", patch(8, &(1u64 << 63).to_le_bytes()), "tensor count"),
        ("2^60 metadata pairs", patch(16, &(1u64 << 60).to_le_bytes()), "metadata count"),
        ("a 2^62-byte key", patch(key_len, &(1u64 << 62).to_le_bytes()), "needs"),
        ("value type 99", patch(key_end, &99u32.to_le_bytes()), "not a GGUF type"),
        ("a string longer than the file", patch(value_len, &u64::MAX.to_le_bytes()), "needs"),
        ("5 dimensions", patch(dims_n, &5u32.to_le_bytes()), "dimensions"),
        ("Q5_0", patch(type_at, &6u32.to_le_bytes()), "Q5_0"),
        ("an unknown type", patch(type_at, &77u32.to_le_bytes()), "unknown"),
        ("data past the end", patch(offset_at, &(1u64 << 40).to_le_bytes()), "past the end"),
        ("an unaligned offset", patch(offset_at, &3u64.to_le_bytes()), "multiple of"),
        ("truncated data", good[..parsed.tensors[0].start + 60].to_vec(), "past the end"),
        ("a row that is not whole blocks", patch(dims_n + 4, &33u64.to_le_bytes()), "whole"),
        ("zero rows", patch(dims_n + 12, &0u64.to_le_bytes()), "dimensions"),
        ("huge rows", patch(dims_n + 12, &(u64::MAX / 32).to_le_bytes()), "dimensions"),
    ];
    for (what, bytes, says) in cases {
        let err = Gguf::parse(&bytes).expect_err(what).to_string();
        assert!(err.contains("not a valid GGUF file") && err.contains(says), "{what}: {err}");
    }
    // Deeply nested arrays are refused before any recursion runs away.
    let mut nested = good[..key_end].to_vec();
    nested.extend(9u32.to_le_bytes());
    for _ in 0..8 {
        nested.extend(9u32.to_le_bytes());
        nested.extend(1u64.to_le_bytes());
    }
    nested.extend(vec![0u8; 64]);
    let err = Gguf::parse(&nested).unwrap_err().to_string();
    assert!(err.contains("nest"), "{err}");
}

#[test]
fn a_model_folder_with_a_bad_gguf_says_which_file_and_why() {
    let dir = scratch("bad-folder");
    common::copy_dir(&fixtures().join("tiny-wan-quant/transformer"), &dir);
    let path = dir.join("wan-tiny-mixed.gguf");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&path, bytes).unwrap();
    let config: TransformerConfig = read_config(&dir).unwrap();
    let err = wan::load_transformer(&dir, Device::Cpu, config).unwrap_err().to_string();
    assert!(err.contains("wan-tiny-mixed.gguf") && err.contains("past the end"), "{err}");
    std::fs::copy(&path, dir.join("second.gguf")).unwrap();
    let config: TransformerConfig = read_config(&dir).unwrap();
    let err = wan::load_transformer(&dir, Device::Cpu, config).unwrap_err().to_string();
    assert!(err.contains("2 GGUF files"), "{err}");
}

/// The shipped model's frames for one prompt and seed, from the model folder `folder`.
fn frames(folder: &Path, name: &str) -> Vec<u8> {
    let mut models = common::test_models();
    models.insert(Arc::new(WanModel::open(folder).unwrap()));
    let config = EngineConfig { devices: vec![vgen_core::Device::Cpu], ..EngineConfig::default() };
    let engine = Engine::with_models(config, models).unwrap();
    let request = Request { model: Some(name.into()), seed: Some(3), ..Request::new("a red circle moving right") };
    let id = engine.submit(request).unwrap();
    let status = engine.wait(id, Some(Duration::from_secs(300))).unwrap();
    assert_eq!(status.state, JobState::Succeeded, "{status:?}");
    engine.result(id).unwrap().frames.data().to_vec()
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>() / a.len() as f64;
    if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0f64 * 255.0 / mse).log10() }
}

#[test]
fn vgen_quantize_writes_folders_that_make_the_shipped_models_video_close_to_fp32() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes-tiny");
    let dir = scratch("shipped");
    let fp32 = frames(&shipped, "shapes-tiny");
    let source_bytes =
        std::fs::metadata(shipped.join("transformer/diffusion_pytorch_model.safetensors")).unwrap().len();
    // Measured on the dev box (fp32 CPU): fp8 50.5 dB, Q8_0 60.9 dB, Q4_K 40.1 dB.
    for (format, name, at_least_db, at_most_bytes) in
        [(Format::Fp8, "fp8", 40.0, 0.4), (Format::Q8_0, "q8_0", 45.0, 0.4), (Format::Q4K, "q4_k", 30.0, 0.3)]
    {
        let out = dir.join(name);
        let report = quantize_model(&shipped, &out, format).unwrap();
        assert_eq!(report.quantized.values().sum::<usize>(), 60, "{name}: every block matrix is quantized");
        let ratio = report.bytes_after as f64 / source_bytes as f64;
        assert!(ratio < at_most_bytes, "{name}: {ratio:.2} of the fp32 weights' size");
        let db = psnr(&frames(&out, "shapes-tiny"), &fp32);
        eprintln!("{name}: {db:.1} dB against fp32, weights {ratio:.2}x");
        assert!(db >= at_least_db, "{name}: {db:.1} dB < {at_least_db} dB against fp32");
        // Writing over an existing folder is refused; nothing is lost.
        let again = quantize_model(&shipped, &out, format).unwrap_err().to_string();
        assert!(again.contains("exists"), "{again}");
    }
    let err = quantize_model(&dir, &dir.join("x"), Format::Fp8).unwrap_err().to_string();
    assert!(err.contains("not a model folder"), "{err}");
}
