"""The training dataset: which clips, their prompts, their encoded latents and the latents' statistics.

Phase 1 encodes `dataset_clips` clips once, in chunks of LATENT_CHUNK (`runs/<name>/latents/`); phase 2 trains on
them and the decoder phase renders them again as its targets. A clip is a function of the seed and the chunk it
falls in (dataset_chunk), so the scenes and render seeds of clip i come from the plan of the run that encoded
the latents, which may be a base run's (DatasetClips). Scenes come from the training combinations only, never
the held-out ones (world.training_scenes); a latent stores its scene as an index into world.all_scenes().
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch

import world
from plan import saved_plan

ALL_SCENES = world.all_scenes()
SCENE_INDEX = {scene: i for i, scene in enumerate(ALL_SCENES)}  # how a latent file stores its clips' scenes
TRAINING_SCENES = world.training_scenes()  # the held-out combinations left out


def to_video(clips: np.ndarray) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) in [-1, 1]."""
    return torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def to_clips(video: torch.Tensor) -> np.ndarray:
    """(B, 3, T, H, W) in [-1, 1] -> (B, T, H, W, 3) uint8: to_video's inverse, rounded."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).numpy()


def prompt_for(scene: world.Scene, rng: np.random.Generator) -> str:
    """The prompt a training clip is given: a scene on the default background names it half the time."""
    if scene.background == world.DEFAULT_BACKGROUND:
        return scene.prompt(name_background=bool(rng.random() < 0.5))
    return scene.prompt()


LATENT_CHUNK = 256


def dataset_chunk(seed: int, clips: int, start: int) -> tuple[list[world.Scene], np.ndarray]:
    """The scenes and render seeds of the dataset's clips start .. start + LATENT_CHUNK (fewer at the end):
    what encode_dataset encodes, and what the decoder phase renders again as the targets of those latents."""
    rng = np.random.default_rng([seed, 2, start])
    count = min(LATENT_CHUNK, clips - start)
    scenes = [world.random_scene(rng, TRAINING_SCENES) for _ in range(count)]
    return scenes, rng.integers(2**31, size=count)


@torch.no_grad()
def read_latents(folder: pathlib.Path, clips: int) -> dict:
    """The encoded clips in a run's `latents/` folder: scene indices and posterior means and stds, in order."""
    parts = [torch.load(folder / f"{c:06d}.pt") for c in range(0, clips, LATENT_CHUNK)]
    return {k: torch.cat([p[k] for p in parts]) for k in ("scene", "mean", "std")}


class DatasetClips:
    """Renders the dataset's clip i again, exactly as it was encoded: the latents folder may be a base run's, so
    its scenes and seeds come from the plan of the run that encoded it."""

    def __init__(self, run: pathlib.Path):
        encoder_run = (run / "latents").resolve().parent
        origin = saved_plan(encoder_run)
        self.seed, self.clips = origin["seed"], origin["dataset_clips"]
        self.chunks: dict[int, tuple[list[world.Scene], np.ndarray]] = {}

    def __call__(self, index: int) -> tuple[world.Scene, np.ndarray]:
        start = index - index % LATENT_CHUNK
        if start not in self.chunks:
            self.chunks[start] = dataset_chunk(self.seed, self.clips, start)
        scenes, seeds = self.chunks[start]
        scene = scenes[index - start]
        return scene, world.render(scene, int(seeds[index - start]))


def latent_statistics(data: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The dataset's per-channel latent mean and std, shaped (1, C, 1, 1, 1) to broadcast over latents."""
    return (
        torch.tensor(data["latents_mean"]).view(1, -1, 1, 1, 1),
        torch.tensor(data["latents_std"]).view(1, -1, 1, 1, 1),
    )


def vae_with_statistics(vae, data: dict):
    vae.register_to_config(latents_mean=data["latents_mean"], latents_std=data["latents_std"])
    return vae
