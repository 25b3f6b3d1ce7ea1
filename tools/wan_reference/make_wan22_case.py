"""Wan2.2: a tiny random TI2V model (the Wan2.2 VAE: residual blocks, 2x2 patches, 16x in space; a transformer
taking the VAE's channels) and a tiny A14B-style model (two experts switched at `boundary_ratio`), with their cases
through diffusers' `AutoencoderKLWan`, `WanPipeline` and `WanImageToVideoPipeline`, which
`core/tests/wan22_parity.rs` checks vgen against.

Each fixture folder holds what differs from `tiny-wan` and is laid over a copy of it:
- `tiny-wan22-ti2v/`: `model_index.json` (`WanPipeline`, `expand_timesteps`), `vgen.json`, `vae/` (the Wan2.2
  VAE at a tiny width, z_dim 12) and `transformer/` (12 channels in and out);
- `tiny-wan22-a14b/`: `model_index.json` (`WanPipeline`, `boundary_ratio` 0.9), `vgen.json` and `transformer_2/`
  (a second, differently seeded tiny transformer; the first expert is `tiny-wan`'s own).
Writes `cases/wan22.safetensors`.

    .venv/bin/python tools/wan_reference/make_wan22_case.py
"""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline, WanTransformer3DModel
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoTokenizer, UMT5EncoderModel

import wan_fixture_lib as lib

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "core" / "tests" / "fixtures" / "wan"
TI2V, A14B = FIXTURES / "tiny-wan22-ti2v", FIXTURES / "tiny-wan22-a14b"

Z = 12
VAE22_KW = dict(
    base_dim=4, decoder_base_dim=6, z_dim=Z, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
    temperal_downsample=[False, True, True], dropout=0.0, is_residual=True, in_channels=12, out_channels=12,
    patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16,
    latents_mean=[round(float(v), 2) for v in np.linspace(-0.6, 0.5, Z)],
    latents_std=[round(float(v), 2) for v in np.linspace(0.7, 2.1, Z)],
)
TI2V_TRANSFORMER_KW = dict(lib.TRANSFORMER_KW, in_channels=Z, out_channels=Z)
MODEL_INDEX = {
    "_class_name": "WanPipeline",
    "_diffusers_version": "0.42.1",
    "boundary_ratio": None,
    "expand_timesteps": False,
    "scheduler": ["diffusers", "UniPCMultistepScheduler"],
    "text_encoder": ["transformers", "UMT5EncoderModel"],
    "tokenizer": ["transformers", "T5Tokenizer"],
    "transformer": ["diffusers", "WanTransformer3DModel"],
    "transformer_2": [None, None],
    "vae": ["diffusers", "AutoencoderKLWan"],
}
SERVING = {"max_sequence_length": 16, "width": 32, "height": 32, "num_frames": 9, "steps": 2}


def make_models() -> tuple[AutoencoderKLWan, WanTransformer3DModel, WanTransformer3DModel, WanTransformer3DModel]:
    lib.setup_torch()
    for folder in (TI2V, A14B):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    torch.manual_seed(21)
    vae = AutoencoderKLWan(**VAE22_KW).eval()
    lib.perturb_constant_params(vae, seed=22)
    torch.manual_seed(23)
    ti2v = WanTransformer3DModel(**TI2V_TRANSFORMER_KW).eval()
    lib.perturb_constant_params(ti2v, seed=24)
    # The high-noise expert is tiny-wan's own transformer; the low-noise one is a second, differently seeded copy.
    high = WanTransformer3DModel.from_pretrained(FIXTURES / "tiny-wan" / "transformer").eval()
    torch.manual_seed(25)
    low = WanTransformer3DModel(**lib.TRANSFORMER_KW).eval()
    lib.perturb_constant_params(low, seed=26)
    vae.save_pretrained(TI2V / "vae")
    ti2v.save_pretrained(TI2V / "transformer")
    lib.write_json(TI2V / "model_index.json", dict(MODEL_INDEX, expand_timesteps=True))
    lib.write_json(TI2V / "vgen.json", dict(SERVING, name="tiny-wan22-ti2v"))
    low.save_pretrained(A14B / "transformer_2")
    lib.write_json(
        A14B / "model_index.json",
        dict(MODEL_INDEX, boundary_ratio=0.9, transformer_2=["diffusers", "WanTransformer3DModel"]),
    )
    lib.write_json(A14B / "vgen.json", dict(SERVING, name="tiny-wan22-a14b"))
    return vae, ti2v, high, low


def shared():
    base = FIXTURES / "tiny-wan"
    return dict(
        tokenizer=AutoTokenizer.from_pretrained(base / "tokenizer"),
        text_encoder=UMT5EncoderModel.from_pretrained(base / "text_encoder").eval(),
        scheduler=UniPCMultistepScheduler.from_pretrained(base / "scheduler"),
    )


def recorder(out: dict, prefix: str):
    def record(p, i, t, kwargs):
        out[f"{prefix}.step{i}.latents"] = kwargs["latents"].clone()
        return kwargs

    return record


CALL = dict(
    prompt="A cat and a dog.", negative_prompt="blurred", num_frames=9, num_inference_steps=2, guidance_scale=5.0,
    max_sequence_length=16, output_type="np", callback_on_step_end_tensor_inputs=["latents"],
)


def main() -> None:
    lib.i2v_prompt_clean_without_ftfy()
    vae, ti2v, high, low = make_models()
    out = {}
    with torch.no_grad():
        # The VAE on its own: encode a 9-frame 32x32 video (patchify, residual down blocks), decode chunk by chunk.
        g = torch.Generator().manual_seed(5)
        video = torch.rand(1, 3, 9, 32, 32, generator=g) * 2 - 1
        out["vae.video"] = video
        out["vae.mode"] = vae.encode(video).latent_dist.mode()
        z = torch.randn(1, Z, 3, 2, 2, generator=g)
        out["vae.z"] = z
        _, chunks = lib.vae_decode_chunks(vae, z)
        for i, c in enumerate(chunks):
            out[f"vae.decode.chunk.{i}"] = c
        out["vae.decode.sample"] = vae.decode(z).sample

        # TI2V: text only (WanPipeline with expand_timesteps) and from an image (WanImageToVideoPipeline).
        torch.manual_seed(42)
        latents = torch.randn(1, Z, 3, 2, 2)
        out["ti2v.latents"] = latents
        t2v = WanPipeline(vae=vae, transformer=ti2v, expand_timesteps=True, **shared())
        t2v.set_progress_bar_config(disable=True)
        frames = t2v(height=32, width=32, latents=latents.clone(), callback_on_step_end=recorder(out, "ti2v.text"),
                     **CALL).frames
        out["ti2v.text.frames"] = torch.from_numpy(np.asarray(frames)).float()
        y, x = np.mgrid[0:32, 0:32]
        image = np.stack([x * 8, y * 8, (x + y) * 4], axis=-1).clip(0, 255).astype(np.uint8)
        image[8:20, 10:22] = [240, 60, 40]
        out["ti2v.image"] = torch.from_numpy(image.copy())
        i2v = WanImageToVideoPipeline(vae=vae, transformer=ti2v, image_encoder=None, image_processor=None,
                                      expand_timesteps=True, **shared())
        i2v.set_progress_bar_config(disable=True)
        frames = i2v(image=Image.fromarray(image), height=32, width=32, latents=latents.clone(),
                     callback_on_step_end=recorder(out, "ti2v.image"), **CALL).frames
        out["ti2v.image.frames"] = torch.from_numpy(np.asarray(frames)).float()

        # A14B-style: the high-noise expert for t >= 0.9 * 1000, the low-noise one below, each with its guidance.
        torch.manual_seed(43)
        latents = torch.randn(1, 16, 3, 4, 4)
        out["a14b.latents"] = latents
        base = FIXTURES / "tiny-wan"
        two = WanPipeline(vae=AutoencoderKLWan.from_pretrained(base / "vae").eval(), transformer=high,
                          transformer_2=low, boundary_ratio=0.9, **shared())
        two.set_progress_bar_config(disable=True)
        frames = two(height=32, width=32, latents=latents.clone(), guidance_scale_2=3.0,
                     callback_on_step_end=recorder(out, "a14b"), **CALL).frames
        out["a14b.frames"] = torch.from_numpy(np.asarray(frames)).float()
        out["a14b.timesteps"] = two.scheduler.timesteps.clone().float()
    save_file({k: v.contiguous() for k, v in out.items()}, FIXTURES / "cases" / "wan22.safetensors")
    print({k: tuple(v.shape) for k, v in out.items()})


if __name__ == "__main__":
    main()
