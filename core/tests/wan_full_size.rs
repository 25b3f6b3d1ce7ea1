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

#[test]
#[ignore = "10 GB in bf16 and a few minutes on a CPU: run with `make test-wan-full`"]
fn full_size_ti2v_5b_builds_in_bf16_and_runs_a_step_with_an_image_frame() {
    // The real Wan2.2-TI2V-5B transformer with zero weights, built directly in bf16 (20 GB in fp32 would not fit
    // the development machine), one step at a small size with frame 0's tokens at timestep 0, as image-to-video
    // runs it.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wan/family-configs/wan2.2-ti2v-5b");
    let config: TransformerConfig = read_config(&dir.join("transformer")).unwrap();
    let mut vs = VarStore::new(Device::Cpu);
    vs.set_kind(Kind::BFloat16);
    let model = WanTransformer::new(vs.root(), config).unwrap();
    let params: i64 = shapes(&vs).values().map(|s| s.iter().product::<i64>()).sum();
    assert_eq!(params, 4_999_787_712, "diffusers' count for this config");
    let _g = tch::no_grad_guard();
    // 2 latent frames of 4×6 (a 64×96, 5-frame video): 12 tokens; frame 0's 6 get timestep 0.
    let x = Tensor::randn([1, 48, 2, 4, 6], (Kind::Float, Device::Cpu));
    let text = Tensor::randn([1, 16, 4096], (Kind::Float, Device::Cpu));
    let t = Tensor::cat(
        &[Tensor::zeros([1, 6], (Kind::Float, Device::Cpu)), Tensor::full([1, 6], 999.0, (Kind::Float, Device::Cpu))],
        1,
    );
    let start = std::time::Instant::now();
    let out = model.forward(&x, &t, &text, None).unwrap();
    eprintln!("TI2V-5B transformer step, 12 tokens, bf16 on the CPU: {:?}", start.elapsed());
    assert_eq!(out.size(), x.size());
    assert!(out.isfinite().all().int64_value(&[]) == 1);
}

/// `family-configs/`: the real configurations of Wan2.1 I2V-14B-480P and FLF2V-14B-720P, Wan2.2 TI2V-5B, T2V-A14B
/// and I2V-A14B (`tools/wan_reference/family_configs.py`), and each component's tensor names and shapes as
/// diffusers and transformers build it at narrow widths (every layer kept). vgen narrows the same way here.
fn family() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wan/family-configs")
}

fn family_manifest(key: &str) -> BTreeMap<String, Vec<i64>> {
    let text = std::fs::read_to_string(family().join("manifest.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    serde_json::from_value(json[key].clone()).unwrap_or_else(|e| panic!("{key}: {e}"))
}

#[test]
fn the_image_to_video_and_wan22_configurations_build_every_tensor_name_and_shape_diffusers_does() {
    use vgen_core::models::wan::clip::{ClipVisionConfig, ClipVisionEncoder};
    use vgen_core::models::wan::condition::ImageConditioning as M;
    use vgen_core::models::wan::vae_encoder::WanVaeEncoder;
    let expected = [
        ("wan2.1-i2v-14b-480p", M::Concat { clip: true, last_image: false, two_images: false }, 8),
        ("wan2.1-flf2v-14b-720p", M::Concat { clip: true, last_image: true, two_images: true }, 8),
        ("wan2.2-ti2v-5b", M::FirstLatent, 16),
        ("wan2.2-t2v-a14b", M::None, 8),
        ("wan2.2-i2v-a14b", M::Concat { clip: false, last_image: true, two_images: false }, 8),
    ];
    for (name, mode, spatial) in expected {
        let dir = family().join(name);
        let index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("model_index.json")).unwrap()).unwrap();
        let t: TransformerConfig = read_config(&dir.join("transformer")).unwrap();
        let vae: VaeConfig = read_config(&dir.join("vae")).unwrap();
        vae.check().unwrap();
        t.check().unwrap();
        assert_eq!(vae.spatial_factor(), spatial, "{name}");
        let expand = index["expand_timesteps"].as_bool().unwrap_or(false);
        let got =
            M::of(expand, t.in_channels, vae.z_dim, t.image_dim.is_some(), t.pos_embed_seq_len.is_some()).unwrap();
        assert_eq!(got, mode, "{name}");
        assert_eq!(dir.join("transformer_2").exists(), index["boundary_ratio"].is_number(), "{name}: two experts");

        for component in ["transformer", "transformer_2"] {
            if !dir.join(component).exists() {
                continue;
            }
            let mut c: TransformerConfig = read_config(&dir.join(component)).unwrap();
            (c.num_attention_heads, c.attention_head_dim, c.ffn_dim, c.text_dim) = (2, 6, 8, 8);
            if c.image_dim.is_some() {
                (c.image_dim, c.added_kv_proj_dim) = (Some(8), Some(12));
            }
            let vs = VarStore::new(Device::Cpu);
            WanTransformer::new(vs.root(), c).unwrap();
            assert_eq!(shapes(&vs), family_manifest(&format!("{name}/{component}")), "{name}/{component}");
        }

        let mut v = vae.clone();
        v.base_dim = 4;
        if v.decoder_base_dim.is_some() {
            v.decoder_base_dim = Some(4);
        }
        let (decoder, encoder) = (VarStore::new(Device::Cpu), VarStore::new(Device::Cpu));
        WanVaeDecoder::new(decoder.root(), v.clone()).unwrap();
        WanVaeEncoder::new(encoder.root(), v).unwrap();
        let mut both = shapes(&decoder);
        both.extend(shapes(&encoder));
        assert_eq!(both, family_manifest(&format!("{name}/vae")), "{name}/vae");

        if dir.join("image_encoder").exists() {
            let mut c: ClipVisionConfig = read_config(&dir.join("image_encoder")).unwrap();
            assert_eq!((c.hidden_size, c.num_hidden_layers, c.tokens()), (1280, 32, 257), "{name}: ViT-H/14");
            (c.hidden_size, c.intermediate_size, c.num_attention_heads) = (8, 8, 2);
            let unused = ClipVisionEncoder::unused_prefixes(&c, "");
            let vs = VarStore::new(Device::Cpu);
            ClipVisionEncoder::new(vs.root(), c).unwrap();
            let want: BTreeMap<_, _> = family_manifest(&format!("{name}/image_encoder"))
                .into_iter()
                .filter(|(k, _)| !unused.iter().any(|p| k.starts_with(p.as_str())))
                .collect();
            assert_eq!(shapes(&vs), want, "{name}/image_encoder (all but the last layer and the final norm)");
        }
    }
}
