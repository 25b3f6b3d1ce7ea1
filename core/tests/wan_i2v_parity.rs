//! Wan2.1 image-to-video and first–last frame against diffusers 0.42.1 and transformers 5.23.0, number for number
//! in fp32 on the CPU: Pillow's resizes, the CLIP image processor and vision encoder, the image embedding, the
//! transformer's image cross-attention, the 36-channel condition, and 2-step pipelines from images and prompt to
//! frames. The fixtures (`tests/fixtures/wan/tiny-wan-i2v`, `tiny-wan-flf2v` and `cases/i2v.safetensors`) are made
//! by `tools/wan_reference/make_i2v_case.py`; each tiny model is its folder laid over a copy of `tiny-wan`.
//! Tolerance: 1e-4 max abs error, as for the text-to-video stack.

use std::collections::HashMap;
mod common;

use common::copy_dir;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};
use vgen_core::engine::Params;
use vgen_core::engine::image::{Image, resize};
use vgen_core::engine::resample::{self, Filter};
use vgen_core::models::Model;
use vgen_core::models::wan::clip::{ClipImageProcessor, ClipVisionConfig, ClipVisionEncoder};
use vgen_core::models::wan::condition::ImageConditioning;
use vgen_core::models::wan::pipeline::WanModel;
use vgen_core::models::wan::transformer::{TransformerConfig, WanTransformer};
use vgen_core::models::weights::{read_config, read_json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wan")
}

fn cases() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("cases/i2v.safetensors")).unwrap().into_iter().collect()
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.size(), want.size(), "{what}: shapes differ");
    let e = (got.to_kind(Kind::Double) - want.to_kind(Kind::Double)).abs().max().double_value(&[]);
    eprintln!("{what}: max abs error {e:.1e}");
    assert!(e <= tol, "{what}: max abs error {e:e} > {tol:e}");
}

/// An `[H, W, 3]` uint8 case as an image.
fn image(t: &Tensor) -> Image {
    let [h, w, _] = t.size()[..] else { panic!("[H, W, 3]") };
    Image::new(w as u32, h as u32, Vec::<u8>::try_from(t.reshape([-1])).unwrap())
}

/// `tiny-wan` with `layers` laid over it, in a scratch folder of its own.
fn assemble(tag: &str, layers: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vgen-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&fixtures().join("tiny-wan"), &dir);
    for layer in layers {
        copy_dir(&fixtures().join(layer), &dir);
    }
    dir
}

fn clip_encoder(folder: &Path) -> (tch::nn::VarStore, ClipVisionEncoder) {
    let config: ClipVisionConfig = read_config(folder).unwrap();
    let unused = ClipVisionEncoder::unused_prefixes(&config, "");
    let unused: Vec<&str> = unused.iter().map(String::as_str).collect();
    vgen_core::models::wan::load_component(folder, "model", tch::Device::Cpu, &[], &unused, |p| {
        ClipVisionEncoder::new(p, config)
    })
    .unwrap()
}

#[test]
fn pillows_lanczos_and_bicubic_resizes_are_matched_byte_for_byte() {
    let c = cases();
    let first = image(&c["first_image"]);
    for (name, filter) in [("lanczos", Filter::Lanczos), ("bicubic", Filter::Bicubic)] {
        for (w, h) in [(32, 32), (17, 11), (46, 28), (40, 9)] {
            let want = Vec::<u8>::try_from(c[&format!("resize.{name}.{w}x{h}")].reshape([-1])).unwrap();
            let got = resample::resize(&first.rgb, first.width, first.height, w, h, filter);
            let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert_eq!(differ, 0, "{name} 40x24 -> {w}x{h}: {differ} bytes differ from Pillow's");
        }
    }
}

#[test]
fn the_clip_image_processor_resizes_crops_and_normalises_as_transformers_does() {
    let c = cases();
    let processor: ClipImageProcessor =
        read_json(&fixtures().join("tiny-wan-i2v/image_processor/preprocessor_config.json")).unwrap();
    processor.check(28).unwrap();
    let first = processor.preprocess(&image(&c["first_image"]));
    assert_close("pixel values (40x24: shortest edge to 28, centre crop)", &first, &c["i2v.pixel_values"], 1e-6);
    let last = processor.preprocess(&image(&c["last_image"]));
    assert_close("pixel values of the last image", &last, &c["flf2v.pixel_values"].narrow(0, 1, 1), 1e-6);
    // A processor this port would read differently is refused when the model opens.
    let mut bilinear = processor.clone();
    bilinear.resample = 2;
    assert!(bilinear.check(28).unwrap_err().message().contains("resample"));
    assert!(processor.check(224).unwrap_err().message().contains("crop_size"));
}

#[test]
fn the_clip_encoder_gives_the_penultimate_hidden_states_from_either_key_spelling() {
    let c = cases();
    let folder = fixtures().join("tiny-wan-i2v/image_encoder");
    let (_vs, encoder) = clip_encoder(&folder);
    let _g = tch::no_grad_guard();
    assert_close(
        "CLIP hidden_states[-2]",
        &encoder.forward(&c["i2v.pixel_values"]).unwrap(),
        &c["i2v.image_embeds"],
        1e-4,
    );
    assert_close("both images", &encoder.forward(&c["flf2v.pixel_values"]).unwrap(), &c["flf2v.image_embeds"], 1e-4);

    // Checkpoints saved before transformers 5 (the real Wan2.1 ones) spell every key `vision_model.…`.
    let dir = assemble("i2v-prefixed", &["tiny-wan-i2v"]);
    let file = dir.join("image_encoder/model.safetensors");
    let tensors = Tensor::read_safetensors(&file).unwrap();
    let renamed: Vec<(String, Tensor)> = tensors.into_iter().map(|(k, v)| (format!("vision_model.{k}"), v)).collect();
    Tensor::write_safetensors(&renamed, &file).unwrap();
    let model = WanModel::open(&dir).unwrap();
    let comps = model.components(vgen_core::Device::Cpu).unwrap();
    let clip = comps.clip.as_ref().expect("an I2V model loads CLIP");
    assert_close(
        "from vision_model.* keys",
        &clip.forward(&c["i2v.pixel_values"]).unwrap(),
        &c["i2v.image_embeds"],
        1e-4,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_image_embedding_and_the_transformer_with_image_tokens_match() {
    let c = cases();
    let _g = tch::no_grad_guard();
    for (name, folder, batch) in [("i2v", "tiny-wan-i2v", 2), ("flf2v", "tiny-wan-flf2v", 1)] {
        let config: TransformerConfig = read_config(&fixtures().join(folder).join("transformer")).unwrap();
        let (_vs, model) = vgen_core::models::wan::load_component(
            &fixtures().join(folder).join("transformer"),
            "diffusion_pytorch_model",
            tch::Device::Cpu,
            &[],
            &[],
            |p| WanTransformer::new(p, config),
        )
        .unwrap();
        let tokens = &c[&format!("{name}.image_embeds_in")];
        let embedder = model.condition_embedder.image.as_ref().expect("an image embedder");
        assert_close(
            &format!("{name} image embedding"),
            &embedder.forward(tokens).unwrap(),
            &c[&format!("{name}.image_embedding")],
            1e-4,
        );
        let (x, t, text) = (
            c["module.x"].narrow(0, 0, batch),
            c["module.t"].narrow(0, 0, batch),
            c["module.text"].narrow(0, 0, batch),
        );
        let out = model.forward(&x, &t, &text, Some(tokens)).unwrap();
        assert_close(&format!("{name} transformer forward"), &out, &c[&format!("{name}.out")], 1e-4);
        // The image tokens are not optional for an image-to-video transformer, nor the pairs for first–last frame.
        assert!(model.forward(&x, &t, &text, None).is_err());
        if name == "flf2v" {
            assert!(embedder.forward(&tokens.narrow(0, 0, 1)).is_err(), "one image's tokens for a two-image model");
        }
    }
}

/// The pipeline's path from a job's images to frames, checked at every stage against diffusers' own run.
fn pipeline_matches(name: &str, layers: &[&str], last: bool) {
    let c = cases();
    let dir = assemble(name, layers);
    let model = WanModel::open(&dir).unwrap();
    let info = model.info().conditioning;
    assert!(info.image && info.needs_image && info.last_image == last && info.needs_last_image == last, "{info:?}");
    let comps = model.components(vgen_core::Device::Cpu).unwrap();
    let _g = tch::no_grad_guard();
    // As the engine gives them: resized to the video's size for the VAE, the image as given kept for CLIP.
    let first = resize(image(&c["first_image"]), 32, 32);
    let last_image = last.then(|| resize(image(&c["last_image"]), 32, 32));
    let params = Params {
        prompt: "A cat and a dog.".into(),
        negative_prompt: "blurred".into(),
        width: 32,
        height: 32,
        num_frames: 9,
        fps: 16.0,
        steps: 2,
        guidance_scale: 5.0,
        guidance_scale_2: None,
        seed: 42,
        preview_every: None,
        sampler: Default::default(),
        step_cache: None,
        vae_tiling: None,
        loras: Vec::new(),
        image: Some(std::sync::Arc::new(first)),
        last_image: last_image.map(std::sync::Arc::new),
        segments: Vec::new(),
        color_match: true,
    };
    let images = model.images(&comps, &params, tch::Device::Cpu).unwrap();
    assert_close(
        &format!("{name} condition (mask | latents)"),
        images.concat.as_ref().unwrap(),
        &c[&format!("{name}.condition")],
        1e-4,
    );
    assert_close(
        &format!("{name} CLIP tokens"),
        images.clip_tokens.as_ref().unwrap(),
        &c[&format!("{name}.image_embeds")],
        1e-4,
    );
    let text = model.encode_prompts(&comps, &["A cat and a dog.", "blurred"], tch::Device::Cpu).unwrap();
    let latents = model
        .denoise(&comps, c[&format!("{name}.latents")].shallow_clone(), &text, 2, 5.0, None, &images, |i, _, x, _| {
            assert_close(&format!("{name} step {i} latents"), x, &c[&format!("{name}.step{}.latents", i - 1)], 1e-4);
            Ok(())
        })
        .unwrap()
        .0;
    let mut chunks = Vec::new();
    comps
        .vae
        .decode(&comps.vae.denormalize(&latents), |_, _, f| {
            chunks.push(f);
            Ok(())
        })
        .unwrap();
    let out = (Tensor::cat(&chunks, 2) * 0.5 + 0.5).clamp(0.0, 1.0).permute([0, 2, 3, 4, 1]);
    assert_close(&format!("{name} frames"), &out, &c[&format!("{name}.frames")], 1e-4);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn i2v_matches_wan_image_to_video_pipeline_from_image_and_prompt_to_frames() {
    pipeline_matches("i2v", &["tiny-wan-i2v"], false);
}

#[test]
fn flf2v_matches_wan_image_to_video_pipeline_from_first_and_last_frame_to_frames() {
    pipeline_matches("flf2v", &["tiny-wan-i2v", "tiny-wan-flf2v"], true);
}

#[test]
fn the_conditioning_mode_is_read_from_the_configs_and_inconsistent_ones_are_refused() {
    use ImageConditioning as M;
    assert_eq!(M::of(false, 16, 16, false, false).unwrap(), M::None);
    assert_eq!(M::of(true, 48, 48, false, false).unwrap(), M::FirstLatent);
    // Wan2.1 I2V (CLIP, one image), FLF2V (CLIP, two), Wan2.2 I2V-A14B (no CLIP, last frame optional).
    assert_eq!(
        M::of(false, 36, 16, true, false).unwrap(),
        M::Concat { clip: true, last_image: false, two_images: false }
    );
    assert_eq!(M::of(false, 36, 16, true, true).unwrap(), M::Concat { clip: true, last_image: true, two_images: true });
    assert_eq!(
        M::of(false, 36, 16, false, false).unwrap(),
        M::Concat { clip: false, last_image: true, two_images: false }
    );
    for (expand, ch, z, clip, why) in [
        (true, 36, 16, false, "expand_timesteps"),
        (false, 16, 16, true, "2 x z_dim + 4"),
        (false, 20, 16, false, "neither"),
    ] {
        let e = M::of(expand, ch, z, clip, false).unwrap_err();
        assert!(e.message().contains(why), "{why}: {e}");
    }
}
