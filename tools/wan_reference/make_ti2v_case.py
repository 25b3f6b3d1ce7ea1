"""The Wan2.2 TI2V image-to-video case: the fixtures' tiny random Wan (`core/tests/fixtures/wan/tiny-wan`, whose
transformer takes as many channels as its VAE makes, as TI2V-5B's does) run through diffusers'
`WanImageToVideoPipeline` with `expand_timesteps=True` and no CLIP branch, from a fixed image, prompt and noise, 2
steps. Writes `cases/ti2v_pipeline.safetensors`, which `core/tests/wan_parity.rs` checks vgen against.

    .venv/bin/python tools/wan_reference/make_ti2v_case.py
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoTokenizer, UMT5EncoderModel

import wan_fixture_lib as lib

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "core" / "tests" / "fixtures" / "wan"


def main() -> None:
    lib.i2v_prompt_clean_without_ftfy()
    folder = FIXTURES / "tiny-wan"
    pipe = WanImageToVideoPipeline(
        tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder=UMT5EncoderModel.from_pretrained(folder / "text_encoder").eval(),
        vae=AutoencoderKLWan.from_pretrained(folder / "vae").eval(),
        scheduler=UniPCMultistepScheduler.from_pretrained(folder / "scheduler"),
        transformer=WanTransformer3DModel.from_pretrained(folder / "transformer").eval(),
        image_encoder=None,
        image_processor=None,
        expand_timesteps=True,
    )
    pipe.set_progress_bar_config(disable=True)
    # A deterministic 32x32 image: smooth gradients and a bright block, uint8.
    y, x = np.mgrid[0:32, 0:32]
    image = np.stack([x * 8, y * 8, (x + y) * 4], axis=-1).clip(0, 255).astype(np.uint8)
    image[8:16, 12:24] = [250, 240, 30]
    torch.manual_seed(42)
    latents = torch.randn(1, 16, 3, 4, 4)
    out = {"image": torch.from_numpy(image.copy()), "latents": latents.clone()}
    steps = {}

    def record(p, i, t, kwargs):
        steps[f"step{i}.latents"] = kwargs["latents"].clone()
        return kwargs

    with torch.no_grad():
        prepared = pipe.video_processor.preprocess(Image.fromarray(image), height=32, width=32)
        _, condition, _ = pipe.prepare_latents(prepared, 1, 16, 32, 32, 9, torch.float32, torch.device("cpu"), None, latents.clone())
        frames = pipe(
            image=Image.fromarray(image), prompt="A cat and a dog.", negative_prompt="blurred",
            height=32, width=32, num_frames=9, num_inference_steps=2, guidance_scale=5.0,
            max_sequence_length=16, latents=latents.clone(), output_type="np",
            callback_on_step_end=record, callback_on_step_end_tensor_inputs=["latents"],
        ).frames
    out.update(steps)
    out["condition"] = condition
    out["frames"] = torch.from_numpy(np.asarray(frames)).float()
    save_file({k: v.contiguous() for k, v in out.items()}, FIXTURES / "cases" / "ti2v_pipeline.safetensors")
    print({k: tuple(v.shape) for k, v in out.items()})


if __name__ == "__main__":
    main()
