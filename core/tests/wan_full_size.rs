//! The real Wan2.1-T2V-1.3B configuration (configs only: the checkpoint cannot be downloaded here). The module
//! paths of every full-size component must spell exactly the tensor names and shapes diffusers and transformers
//! build from these configs (`manifest.json`), so that the real checkpoint loads by lookup. The full-size
//! transformer step is slow and large (5.7 GB in fp32) and runs with `make test-wan-full`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use vgen_core::models::wan::{
    transformer::{TransformerConfig, WanTransformer},
    umt5::{Umt5Config, Umt5Encoder},
    vae::{VaeConfig, WanVaeDecoder},
};
use vgen_core::models::weights::read_config;

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wan/wan2.1-t2v-1.3b-configs")
}

fn manifest(component: &str) -> BTreeMap<String, Vec<i64>> {
    let text = std::fs::read_to_string(configs().join("manifest.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    serde_json::from_value(json[component].clone()).unwrap()
}

fn shapes(vs: &VarStore) -> BTreeMap<String, Vec<i64>> {
    vs.variables().into_iter().map(|(k, v)| (k, v.size())).collect()
}

fn names<T>(m: &BTreeMap<String, T>) -> Vec<&String> {
    m.keys().collect()
}

#[test]
fn full_size_vae_decoder_matches_the_manifest_exactly() {
    let config: VaeConfig = read_config(&configs().join("vae")).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let _vae = WanVaeDecoder::new(vs.root(), config).unwrap();
    let want: BTreeMap<_, _> = manifest("vae")
        .into_iter()
        .filter(|(k, _)| !k.starts_with("encoder.") && !k.starts_with("quant_conv."))
        .collect();
    assert_eq!(shapes(&vs), want);
}

#[test]
fn full_size_transformer_and_text_encoder_names_match_the_manifest() {
    // The same structure at a small width: every name, no 5.7 GB allocation.
    let mut t: TransformerConfig = read_config(&configs().join("transformer")).unwrap();
    assert_eq!((t.num_layers, t.num_attention_heads, t.attention_head_dim, t.ffn_dim), (30, 12, 128, 8960));
    (t.num_attention_heads, t.attention_head_dim, t.ffn_dim, t.text_dim) = (2, 6, 8, 8);
    let vs = VarStore::new(Device::Cpu);
    WanTransformer::new(vs.root(), t).unwrap();
    assert_eq!(names(&shapes(&vs)), names(&manifest("transformer")));

    let mut e: Umt5Config = read_config(&configs().join("text_encoder")).unwrap();
    assert_eq!((e.num_layers, e.d_model, e.vocab_size), (24, 4096, 256384));
    (e.d_model, e.d_ff, e.d_kv, e.num_heads, e.vocab_size) = (8, 8, 2, 2, 10);
    let vs = VarStore::new(Device::Cpu);
    Umt5Encoder::new(vs.root(), e).unwrap();
    // transformers ties encoder.embed_tokens to shared; only shared is stored.
    let want: BTreeMap<_, _> =
        manifest("text_encoder").into_iter().filter(|(k, _)| k != "encoder.embed_tokens.weight").collect();
    assert_eq!(names(&shapes(&vs)), names(&want));
}

#[test]
#[ignore = "5.7 GB and about a minute: run with `make test-wan-full`"]
fn full_size_transformer_builds_with_every_shape_and_runs_a_step() {
    let config: TransformerConfig = read_config(&configs().join("transformer")).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let model = WanTransformer::new(vs.root(), config).unwrap();
    let got = shapes(&vs);
    assert_eq!(got, manifest("transformer"));
    let params: i64 = got.values().map(|s| s.iter().product::<i64>()).sum();
    assert_eq!(params, 1_418_996_800);
    let _g = tch::no_grad_guard();
    // 2 latent frames of 30×52 (a 240×416, 5-frame video): 780 tokens, 16 text tokens.
    let x = Tensor::randn([1, 16, 2, 30, 52], (Kind::Float, Device::Cpu));
    let text = Tensor::randn([1, 16, 4096], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[999.0f32]);
    let start = std::time::Instant::now();
    let out = model.forward(&x, &t, &text, None).unwrap();
    eprintln!("full-size transformer step, 780 tokens, CPU: {:?}", start.elapsed());
    assert_eq!(out.size(), x.size());
    assert!(out.isfinite().all().int64_value(&[]) == 1);
}
