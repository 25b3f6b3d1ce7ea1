"""Wan2.1 image-to-video and first–last frame: tiny random models of both, and their cases through diffusers'
`WanImageToVideoPipeline` and its modules (the CLIP vision encoder and its image processor, `WanImageEmbedding`,
the transformer's image cross-attention, the 36-channel condition), which `core/tests/wan_i2v_parity.rs` checks
vgen against.

The tiny models share the fixtures' tiny Wan (`tiny-wan`: tokenizer, UMT5, VAE, scheduler) and add only what is
their own, so each fixture folder holds the difference and a test lays it over a copy of `tiny-wan`:
- `tiny-wan-i2v/`: `model_index.json` (`WanImageToVideoPipeline`), `vgen.json`, `transformer/` (in_channels 36,
  image_dim, added_kv_proj_dim), `image_encoder/` (a 3-layer `CLIPVisionModel`, 28 px in 14 px patches: 5 tokens)
  and `image_processor/` (`CLIPImageProcessor`, shortest edge 28 and a 28 px centre crop);
- `tiny-wan-flf2v/`: `transformer/` with `pos_embed_seq_len` 10 (two images' 5 tokens) over `tiny-wan-i2v`.

diffusers splits the cross-attention's context at 512 tokens from its end (the text's padded length, hard-coded),
so these cases pad prompts to 512 tokens, as the real pipeline does by default. Writes `cases/i2v.safetensors`.

    .venv/bin/python tools/wan_reference/make_i2v_case.py
"""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile

import numpy as np
import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5EncoderModel

import wan_fixture_lib as lib

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "core" / "tests" / "fixtures" / "wan"
I2V, FLF2V = FIXTURES / "tiny-wan-i2v", FIXTURES / "tiny-wan-flf2v"

CLIP_KW = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=28, patch_size=14,
    hidden_act="gelu", projection_dim=16, layer_norm_eps=1e-5,
)
CLIP_TOKENS = (28 // 14) ** 2 + 1
I2V_TRANSFORMER_KW = dict(
    lib.TRANSFORMER_KW, in_channels=36, image_dim=CLIP_KW["hidden_size"],
    added_kv_proj_dim=lib.TRANSFORMER_KW["num_attention_heads"] * lib.TRANSFORMER_KW["attention_head_dim"],
)
FLF2V_TRANSFORMER_KW = dict(I2V_TRANSFORMER_KW, pos_embed_seq_len=2 * CLIP_TOKENS)
SERVING = {"name": "tiny-i2v", "max_sequence_length": 512, "width": 32, "height": 32, "num_frames": 9, "steps": 2}
MODEL_INDEX = {
    "_class_name": "WanImageToVideoPipeline",
    "_diffusers_version": "0.42.1",
    "boundary_ratio": None,
    "expand_timesteps": False,
    "image_encoder": ["transformers", "CLIPVisionModel"],
    "image_processor": ["transformers", "CLIPImageProcessor"],
    "scheduler": ["diffusers", "UniPCMultistepScheduler"],
    "text_encoder": ["transformers", "UMT5EncoderModel"],
    "tokenizer": ["transformers", "T5Tokenizer"],
    "transformer": ["diffusers", "WanTransformer3DModel"],
    "transformer_2": [None, None],
    "vae": ["diffusers", "AutoencoderKLWan"],
}


def image(width: int, height: int, seed: int) -> np.ndarray:
    """A deterministic uint8 RGB image: gradients and a bright block, so that resizing and cropping show."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, (x * y) % 256], axis=-1).astype(np.uint8)
    r = np.random.default_rng(seed)
    top, left = int(r.integers(0, height // 2)), int(r.integers(0, width // 2))
    rgb[top : top + height // 3, left : left + width // 3] = r.integers(0, 256, 3)
    return rgb


def make_models() -> tuple[WanTransformer3DModel, WanTransformer3DModel]:
    """The tiny I2V and FLF2V transformers, the CLIP encoder and the processor, saved into the fixture folders."""
    lib.setup_torch()
    for folder in (I2V, FLF2V):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    torch.manual_seed(7)
    i2v = WanTransformer3DModel(**I2V_TRANSFORMER_KW).eval()
    lib.perturb_constant_params(i2v, seed=8)
    torch.manual_seed(9)
    flf2v = WanTransformer3DModel(**FLF2V_TRANSFORMER_KW).eval()
    lib.perturb_constant_params(flf2v, seed=10)
    torch.manual_seed(11)
    clip = CLIPVisionModel(CLIPVisionConfig(**CLIP_KW)).eval()
    lib.perturb_constant_params(clip, seed=12)
    processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    i2v.save_pretrained(I2V / "transformer")
    clip.save_pretrained(I2V / "image_encoder")
    processor.save_pretrained(I2V / "image_processor")
    lib.write_json(I2V / "model_index.json", MODEL_INDEX)
    lib.write_json(I2V / "vgen.json", SERVING)
    flf2v.save_pretrained(FLF2V / "transformer")
    lib.write_json(FLF2V / "vgen.json", dict(SERVING, name="tiny-flf2v"))
    return i2v, flf2v


def pipeline(transformer: WanTransformer3DModel) -> WanImageToVideoPipeline:
    base = FIXTURES / "tiny-wan"
    pipe = WanImageToVideoPipeline(
        tokenizer=AutoTokenizer.from_pretrained(base / "tokenizer"),
        text_encoder=UMT5EncoderModel.from_pretrained(base / "text_encoder").eval(),
        vae=AutoencoderKLWan.from_pretrained(base / "vae").eval(),
        scheduler=UniPCMultistepScheduler.from_pretrained(base / "scheduler"),
        transformer=transformer,
        image_encoder=CLIPVisionModel.from_pretrained(I2V / "image_encoder").eval(),
        image_processor=CLIPImageProcessor.from_pretrained(I2V / "image_processor"),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe: WanImageToVideoPipeline, first: np.ndarray, last: np.ndarray | None, prefix: str) -> dict:
    """A 2-step pipeline run from fixed noise, with what vgen checks along the way."""
    torch.manual_seed(42)
    latents = torch.randn(1, 16, 3, 4, 4)
    out = {f"{prefix}.latents": latents.clone()}
    images = [Image.fromarray(first)] + ([Image.fromarray(last)] if last is not None else [])
    pixels = pipe.image_processor(images=images, return_tensors="pt")["pixel_values"]
    out[f"{prefix}.pixel_values"] = pixels
    out[f"{prefix}.image_embeds"] = pipe.encode_image(images if last is not None else images[0], torch.device("cpu"))
    prepared = [pipe.video_processor.preprocess(i, height=32, width=32) for i in images]
    _, condition = pipe.prepare_latents(
        prepared[0], 1, 16, 32, 32, 9, torch.float32, torch.device("cpu"), None, latents.clone(),
        prepared[1] if last is not None else None,
    )
    out[f"{prefix}.condition"] = condition

    def record(p, i, t, kwargs):
        out[f"{prefix}.step{i}.latents"] = kwargs["latents"].clone()
        return kwargs

    frames = pipe(
        image=images[0], last_image=images[1] if last is not None else None, prompt="A cat and a dog.",
        negative_prompt="blurred", height=32, width=32, num_frames=9, num_inference_steps=2, guidance_scale=5.0,
        max_sequence_length=512, latents=latents.clone(), output_type="np",
        callback_on_step_end=record, callback_on_step_end_tensor_inputs=["latents"],
    ).frames
    out[f"{prefix}.frames"] = torch.from_numpy(np.asarray(frames)).float()
    return out


def module_cases(i2v: WanTransformer3DModel, flf2v: WanTransformer3DModel) -> dict:
    """The image embedding and one transformer forward with image tokens, for both models."""
    out = {}
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 36, 3, 4, 4, generator=g)
    text = torch.randn(2, 512, lib.TRANSFORMER_KW["text_dim"], generator=g)
    text[:, 7:] = 0  # padded as the pipeline pads a 7-token prompt
    t = torch.tensor([999.0, 421.5])
    out["module.x"], out["module.t"], out["module.text"] = x, t, text  # FLF2V takes the first row of each
    for name, model in (("i2v", i2v), ("flf2v", flf2v)):
        # I2V: one image's tokens for each of a batch of 2; FLF2V: the first and the last image's tokens for a
        # batch of 1, which the image embedding folds to [1, 10, d] and adds its position embedding to.
        embeds = torch.randn(2, CLIP_TOKENS, CLIP_KW["hidden_size"], generator=g)
        batch = 2 if name == "i2v" else 1
        out[f"{name}.image_embeds_in"] = embeds
        out[f"{name}.image_embedding"] = model.condition_embedder.image_embedder(embeds)
        out[f"{name}.out"] = model(
            hidden_states=x[:batch], timestep=t[:batch], encoder_hidden_states=text[:batch],
            encoder_hidden_states_image=embeds, return_dict=False,
        )[0]
    return out


def main() -> None:
    lib.i2v_prompt_clean_without_ftfy()
    i2v, flf2v = make_models()
    out = {}
    with torch.no_grad():
        out.update(module_cases(i2v, flf2v))
        first, last = image(40, 24, 1), image(24, 24, 2)  # one wider than tall: CLIP crops it, the VAE stretches it
        out["first_image"], out["last_image"] = torch.from_numpy(first.copy()), torch.from_numpy(last.copy())
        # Pillow's own resizes of the first image, which vgen's resampler must equal byte for byte.
        for filter_name, filter_id in (("lanczos", Image.LANCZOS), ("bicubic", Image.BICUBIC)):
            for w, h in ((32, 32), (17, 11), (46, 28), (40, 9)):
                made = Image.fromarray(first).resize((w, h), resample=filter_id)
                out[f"resize.{filter_name}.{w}x{h}"] = torch.from_numpy(np.asarray(made).copy())
        out.update(run(pipeline(i2v), first, None, "i2v"))
        out.update(run(pipeline(flf2v), first, last, "flf2v"))
    save_file({k: v.contiguous() for k, v in out.items()}, FIXTURES / "cases" / "i2v.safetensors")
    print({k: tuple(v.shape) for k, v in out.items()})


if __name__ == "__main__":
    main()
