"""Phase 2b: image conditioning, the Wan2.2 TI2V way, so that one model does text-to-video and image-to-video.

The image's latent replaces latent frame 0 (the causal VAE encodes a clip's first frame on its own, so the latent
of the image alone is the clip's frame 0), and the timestep is per token: 0 on frame 0's tokens, the clip's noise
level on the rest. This is what diffusers' `WanImageToVideoPipeline` does with `expand_timesteps=True` (Wan2.2
TI2V-5B): `(1 - m) * condition + m * latents` as the model's input at every step, timestep `m[:, ::2, ::2] * t`
flattened, and the condition put back over the result at the end.

A share (`image_share`) of each batch's clips is conditioned on its own first frame; the rest are text-to-video
clips as phase 2 draws them, with the same per-token timesteps, all equal, so the text-to-video skill is kept.
The loss leaves out the latents that were given. The text encoder and transformer start from phase 2's (or the
base model's) weights with a fresh optimiser, and the exported weights are their EMA, as in phase 2.
"""

from __future__ import annotations

import pathlib

import torch

import evaluate
from dataset import ALL_SCENES, prompt_for
from phase_dit import JointPhase, pipeline_from, probe_dit, train_joint
from plan import Plan
from schedule import step_random

IMAGE_PHASE = 6  # step_random's phase number for this phase's draws (schedule.py)
PATCH = 2  # the transformer's spatial patch: one token per 2 x 2 latent pixels


def token_timesteps(mask: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """Per-token timesteps [B, tokens] from a first-frame mask [B, 1, T, H, W] (0 where the latent is given) and a
    timestep per clip [B]: `mask[:, ::2, ::2] * t`, flattened in the transformer's token order (frame, row, column)."""
    return (mask[:, 0, :, ::PATCH, ::PATCH] * timestep.view(-1, 1, 1, 1)).flatten(1)


def image_batch(plan: Plan, step: int, data: dict, mean: torch.Tensor, std: torch.Tensor):
    """Phase 2b's batch: phase 2's flow-matching draw, with `image_share` of the clips given their clean frame 0.
    Returns prompts, the model's input, per-token timesteps, the target and the loss weight (the mask)."""
    rng, gen = step_random(plan, IMAGE_PHASE, step)
    index = torch.from_numpy(rng.integers(len(data["scene"]), size=plan.dit_batch))
    prompts = []
    for i in index.tolist():
        text = prompt_for(ALL_SCENES[int(data["scene"][i])], rng)
        prompts.append("" if rng.random() < plan.prompt_dropout else text)
    x0 = (data["mean"][index] - mean) / std
    sigma = torch.sigmoid(torch.randn(plan.dit_batch, generator=gen))
    uniform = torch.rand(plan.dit_batch, generator=gen)
    sigma = torch.where(torch.rand(plan.dit_batch, generator=gen) < plan.uniform_sigma, uniform, sigma)
    shift = plan.image_sigma_shift
    sigma = shift * sigma / (1 + (shift - 1) * sigma)
    noise = torch.randn(x0.shape, generator=gen)
    s = sigma.view(-1, 1, 1, 1, 1)
    noisy = (1 - s) * x0 + s * noise
    conditioned = torch.rand(plan.dit_batch, generator=gen) < plan.image_share
    mask = torch.ones(x0.shape[0], 1, *x0.shape[2:])
    mask[conditioned, :, 0] = 0.0
    noisy = (1 - mask) * x0 + mask * noisy
    return prompts, noisy, token_timesteps(mask, sigma * 1000.0), noise - x0, mask


def image_pipeline(vae, text_encoder, transformer):
    """diffusers' WanImageToVideoPipeline over these modules, the TI2V way (no CLIP branch, expand_timesteps)."""
    return evaluate.image_pipeline_of(pipeline_from(vae, text_encoder, transformer))


def probe_image(vae, text_encoder, transformer, limit: int = 12) -> dict:
    """Phase 2's text-to-video probe, and the same prompts animated from a first frame (all-correct and first
    frame kept, per split)."""
    text = probe_dit(vae, text_encoder, transformer, limit)
    items = evaluate.image_cases([PROBE_SEED])
    items = [c for c in items if c["split"] == "held_out"][:limit] + [c for c in items if c["split"] == "seen"][:limit]
    result = evaluate.assess_images(image_pipeline(vae, text_encoder, transformer), items, 20, 3.0)
    return {"text": text, "image": {split: round(s["all"], 3) for split, s in result["splits"].items()}}


PROBE_SEED = 7


def image_phase(plan: Plan) -> JointPhase:
    return JointPhase(
        "image", plan.image_steps, plan.image_steps, plan.image_lr, plan.image_warmup, plan.dit_decay, image_batch,
        probe_image,
    )


def train_image(run: pathlib.Path, plan: Plan, vae, data: dict, text_encoder, transformer, compile: bool = True):
    """Phase 2b from the given (phase 2's EMA) weights; returns the EMA weights. No steps: the weights unchanged."""
    if plan.image_steps == 0:
        return text_encoder, transformer
    torch.manual_seed(plan.seed + IMAGE_PHASE)
    return train_joint(run, plan, image_phase(plan), vae, data, text_encoder, transformer, compile)
