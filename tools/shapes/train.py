"""Train the default model, shapes-tiny, from scratch on procedurally rendered clips.

Phases (each resumable; rerunning the same command continues from the latest checkpoint of the current
phase and skips finished phases):

1. vae      AutoencoderKLWan on reconstruction (object-weighted L1 + L2 of the noised posterior mode, small
            latent L2) of rendered clips;
   latents  then the training clips are encoded once and the per-channel latents_mean/latents_std measured.
2. dit      UMT5EncoderModel + WanTransformer3DModel trained jointly by rectified-flow matching on the
            normalised latents (the posterior's mode): x_t = (1 - s) x0 + s n, the model predicts n - x0 at timestep s * 1000
            (diffusers' Wan convention); s ~ logit-normal(0, 1) mixed with uniform; 10% empty prompts for
            classifier-free guidance; EMA weights are exported.
3. export   the diffusers folder layout (WanPipeline) into --out (default models/shapes-tiny).
4. evaluate sweep guidance / flow_shift / steps, write the chosen defaults, then the full evaluation into
            evaluation.json and the model card (skip with --no-evaluate).

Everything is seeded: the data and noise of step k depend only on (seed, phase, k), so a resumed run
computes the same steps as an uninterrupted one.

    .venv/bin/python tools/shapes/train.py --run main            # the real run (about 2 h on 2 cores)
    .venv/bin/python tools/shapes/train.py --smoke               # a few steps of every phase, scratch output
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import pathlib
import shutil
import signal
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
import cpu_share  # noqa: E402
import evaluate  # noqa: E402
from grouped_muon import GroupedMuon  # noqa: E402
import mkl_paths  # noqa: E402
import model  # noqa: E402
import score  # noqa: E402
import world  # noqa: E402

ALL_SCENES = world.all_scenes()
SCENE_INDEX = {scene: i for i, scene in enumerate(ALL_SCENES)}
TRAINING_SCENES = world.training_scenes()


@dataclasses.dataclass(frozen=True)
class Plan:
    seed: int = 0
    # Phase 1: the VAE, a curriculum. First vae_image_steps steps of single frames (the causal VAE's first-chunk
    # path; every 4th step half as many whole 64x64 frames), then vae_steps video steps: 9-frame windows, and
    # every 4th step two whole 17-frame clips. Frames and windows are otherwise cropped to vae_crop x vae_crop
    # around the object (8-aligned).
    vae_image_steps: int = 2000
    vae_image_batch: int = 16
    vae_steps: int = 2000
    vae_batch: int = 8
    vae_crop: int = 32
    vae_lr: float = 1e-3
    vae_warmup: int = 100
    latent_noise: float = 0.03  # video steps: noise added to the posterior mode, x the latents' spread
    latent_l2: float = 1e-4  # keeps the latent's scale bounded (the KL's mean term)
    object_weight: float = 7.0  # extra reconstruction weight on the object's pixels
    # Extra reconstruction weight on the pixels within 2 of the object's outline in phase 1 too (edge_weight is
    # phase 1b's): what the decoder phases of the warm-started chain won over thousands of steps, asked for from
    # the start. 0 (the chain's VAE) leaves phase 1's loss as it was.
    vae_edge_weight: float = 0.0
    spike_factor: float = 2.5  # skip an update whose loss exceeds this x the running loss of its kind
    # "float32", or "bfloat16": the VAE's convolutions run in bfloat16 while it trains (phase 1), encodes the
    # dataset and tunes its decoder (phase 1b) (model.conv_precision); weights, gradients, norms and the loss stay
    # float32, and the saved VAE is float32 and runs in float32 everywhere else.
    vae_convolutions: str = "float32"
    vae_probe_every: int = 250
    dataset_clips: int = 4096  # training clips encoded once for phase 2
    # Phase 1b: the decoder alone (and its post-quant conv) fine-tuned on whole encoded training clips, the encoder
    # frozen, so the latents, their statistics and any transformer trained on them stay valid. It runs after phase
    # 2, whose transformer it may read (decoder_sigma_max). 0 skips it.
    decoder_steps: int = 0
    decoder_batch: int = 4
    decoder_lr: float = 2e-4
    decoder_warmup: int = 50
    # Extra loss weight on the band of pixels within 2 of the object's outline: where the corners that tell a
    # square from a circle are won or lost.
    edge_weight: float = 16.0
    # > 0: the decoder reads what the sampler will hand it, the transformer's estimate of the clean latent,
    # x0 = x_t - s v, from the clip's latent noised to a level s drawn uniformly up to this (the text encoder and
    # transformer of this run's phase 2, or of its base run's when it trains none). The transformer's errors,
    # which round a square's corners, are then in the decoder's training data, and the clip it must draw is
    # still the true one.
    decoder_sigma_max: float = 0.0
    # > 0: this share of a decoder batch's clips is drawn by (colour, shape) group, each group in proportion to how
    # far off its reconstructions' shapes are when the phase starts (decoder/focus.json), the rest uniformly. The
    # decoder's misses are not spread evenly (`reads`' reconstructions: green triangles and squares read wrong 3
    # times in 8, the other colours' 2 in 56), and a uniform draw spends its steps where the decoder is already right.
    decoder_focus: float = 0.0
    # Phase 2: text encoder + transformer.
    dit_steps: int = 2800
    dit_batch: int = 64
    dit_lr: float = 4e-4
    dit_warmup: int = 200
    # > 0: the learning rate holds at dit_lr after the warmup and decays (cosine, to a tenth) over only this last
    # share of the steps (warmup-stable-decay). 0: it decays over all of them. A held rate keeps the steps large
    # for longer: runs/single's cosine had fallen to a third by its step 7,000, still without motion.
    dit_decay: float = 0.0
    # "adamw", or "muon": the matrices of the transformer's blocks and of the text encoder's layers take
    # orthogonalised momentum updates (torch.optim.Muon's, batched a shape at a time by grouped_muon.py, its step
    # scaled to AdamW's RMS so that dit_lr and weight_decay mean the same), the rest (embeddings, norms, biases,
    # the heads) AdamW.
    dit_optimizer: str = "adamw"
    # "float32", or "bfloat16": the matrix products of the hidden Linear layers (those Muon updates: the
    # transformer's blocks, the text encoder's layers) run in bfloat16 while phase 2 trains (model.BFloat16Linear);
    # weights, gradients, attention and norms stay float32, and the EMA weights that are exported are float32.
    dit_matmuls: str = "float32"
    weight_decay: float = 0.01
    prompt_dropout: float = 0.1
    uniform_sigma: float = 0.2  # fraction of sigmas drawn uniformly; the rest logit-normal(0, 1)
    # Shift of the training sigmas, s -> k s / (1 + (k - 1) s), the same map as the sampler's flow_shift: k > 1
    # spends more of the steps at high noise, where the layout and the motion of the clip are decided.
    sigma_shift: float = 1.0
    # > 0: the shift moves linearly from sigma_shift at phase 2's first step to this at its last, so that the
    # steps go to the layout and the motion first and to the details last (the warm-started chain did the same in
    # two runs: shift 2, then 1). 0 keeps sigma_shift throughout.
    sigma_shift_end: float = 0.0
    # Warm start: another run whose VAE and latents this run shares and whose exported (EMA) text encoder and
    # transformer phase 2 starts from, with a fresh optimiser. "" trains everything from scratch.
    base_run: str = ""
    # Another run whose phase 1 (its VAE, before any decoder phase) and encoded latents this run shares, to try
    # phase-2 settings without training the same VAE again: it must have run phase 1 with this plan's settings and
    # seed, so the outcome is the one this run's own phase 1 would give. Phase 2 starts from scratch.
    phase_one_run: str = ""
    ema_decay: float = 0.999
    # End phase 2 after this many steps (0: at dit_steps) with the EMA weights as they are, the schedule unchanged:
    # for a run that must finish by a deadline. Not pinned, so a resumed run may set it.
    dit_stop_at: int = 0
    dit_probe_every: int = 1000
    probe_prompts: int = 12  # per split, in the generation probes during phase 2
    checkpoint_minutes: float = 4.0

    @property
    def dit_end(self) -> int:
        """The step phase 2 ends at: dit_steps, or dit_stop_at when that comes first."""
        return min(self.dit_steps, self.dit_stop_at or self.dit_steps)


SMOKE = Plan(
    vae_image_steps=4,
    vae_image_batch=2,
    vae_steps=8,
    vae_batch=2,
    vae_warmup=1,
    vae_probe_every=2,
    dataset_clips=48,
    decoder_steps=4,
    decoder_batch=2,
    decoder_warmup=1,
    decoder_sigma_max=0.4,  # every setting of the single-run recipe, so the smoke passes through its code
    decoder_focus=0.5,
    vae_edge_weight=16.0,
    sigma_shift=2.0,
    sigma_shift_end=1.0,
    dit_decay=0.5,
    dit_optimizer="muon",
    dit_steps=6,
    dit_batch=8,
    dit_warmup=1,
    dit_probe_every=3,
    probe_prompts=2,
    checkpoint_minutes=0.0,
)


class Stop(Exception):
    """SIGTERM / SIGINT arrived: the current step was finished and checkpointed."""


STOP: dict[str, str | None] = {"signal": None}


def _stop(signum, frame):
    # Only note it: the training loops finish the current step, checkpoint, then raise Stop.
    STOP["signal"] = signal.Signals(signum).name


def stop_requested() -> bool:
    return STOP["signal"] is not None


def log(message: str) -> None:
    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stdout)
    sys.stdout.flush()


def progress(total: int, initial: int, desc: str):
    interactive = sys.stderr.isatty()
    return tqdm(
        total=total, initial=initial, desc=desc, dynamic_ncols=True, mininterval=0.5 if interactive else 15.0,
        smoothing=0.05,
    )


def step_random(plan: Plan, phase: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    rng = np.random.default_rng([plan.seed, phase, step])
    return rng, torch.Generator().manual_seed(int(rng.integers(2**62)))


def learning_rate(base: float, warmup: int, total: int, step: int, decay: float = 0.0) -> float:
    """Linear warmup, then a cosine from `base` to a tenth of it: over all the steps left, or, when `decay` > 0,
    over only that last share of the `total` steps, the rate held at `base` until then."""
    if step < warmup:
        return base * (step + 1) / warmup
    start = max(warmup, round(total * (1 - decay))) if decay > 0 else warmup
    progress_ = max(step - start, 0) / max(total - start, 1)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress_, 1.0))))


def save_atomic(state: dict, path: pathlib.Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


class Checkpoints:
    """A phase's checkpoint file: written every `minutes` and when a stop was requested, after which the phase
    ends by raising Stop. The last step is never checkpointed: the phase saves its result instead."""

    def __init__(self, path: pathlib.Path, minutes: float, phase: str):
        self.path, self.minutes, self.phase, self.saved = path, minutes, phase, time.monotonic()

    def after_step(self, done: int, total: int, state) -> None:
        """`state()` makes the dict to save; called only when one is due."""
        if done >= total or (time.monotonic() - self.saved < self.minutes * 60 and not stop_requested()):
            return
        save_atomic(state(), self.path)
        self.saved = time.monotonic()
        if stop_requested():
            raise Stop(f"{self.phase} checkpoint at step {done}")


def to_video(clips: np.ndarray) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) in [-1, 1]."""
    return torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def to_clips(video: torch.Tensor) -> np.ndarray:
    return ((video.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).numpy()


class Timer:
    """Seconds per step over the steps run in this process (the first few are warm-up and skipped)."""

    def __init__(self, skip: int = 2):
        self.skip, self.count, self.start = skip, 0, None

    def tick(self) -> None:
        self.count += 1
        if self.count == self.skip:
            self.start = time.perf_counter()

    @property
    def per_step(self) -> float | None:
        if self.start is None or self.count <= self.skip:
            return None
        return (time.perf_counter() - self.start) / (self.count - self.skip)


def record_timing(run: pathlib.Path, phase: str, per_step: float | None) -> None:
    if per_step is None:
        return
    path = run / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    timings[phase] = round(per_step, 4)
    path.write_text(json.dumps(timings, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------- phase 1


def object_mask(clip: np.ndarray, scene: world.Scene) -> np.ndarray:
    """(T, H, W) bool: the pixels of a rendered clip that differ from its background (the object and its
    anti-aliased edge)."""
    background = np.array(world.BACKGROUNDS[scene.background], dtype=np.int16)
    return np.abs(clip.astype(np.int16) - background).max(-1) > 4


def vae_batch(plan: Plan, step: int) -> tuple[str, torch.Tensor, torch.Tensor, torch.Generator]:
    """(kind, video, per-pixel loss weight, generator) of a VAE step; kind: image (cropped frames), frame (whole
    frames), video (cropped windows) or full (whole clips)."""
    rng, gen = step_random(plan, 1, step)
    if step < plan.vae_image_steps and step % 4 == 3:
        kind, count, frames, crop = "frame", max(1, plan.vae_image_batch // 2), 1, world.WIDTH
    elif step < plan.vae_image_steps:
        kind, count, frames, crop = "image", plan.vae_image_batch, 1, plan.vae_crop
    elif (step - plan.vae_image_steps) % 4 == 3:
        kind, count, frames, crop = "full", 2, world.FRAMES, world.WIDTH
    else:
        kind, count, frames, crop = "video", plan.vae_batch, 9, plan.vae_crop
    clips, masks = [], []
    for _ in range(count):
        scene = world.random_scene(rng, TRAINING_SCENES)
        seed = int(rng.integers(2**31))
        start = int(rng.integers(0, world.FRAMES - frames + 1))
        clip = world.render(scene, seed, range(start, start + frames))  # the frames a whole render would give
        mask = object_mask(clip, scene)
        if crop < world.WIDTH:
            ys, xs = np.nonzero(mask[frames // 2])
            top = int(np.clip(round((ys.mean() - crop / 2) / 8) * 8, 0, world.HEIGHT - crop))
            left = int(np.clip(round((xs.mean() - crop / 2) / 8) * 8, 0, world.WIDTH - crop))
            clip = clip[:, top : top + crop, left : left + crop]
            mask = mask[:, top : top + crop, left : left + crop]
        masks.append(mask)
        clips.append(clip)
    return kind, to_video(np.stack(clips)), pixel_weight(masks, plan.object_weight, plan.vae_edge_weight), gen


def vae_probe_clips() -> tuple[list[world.Scene], np.ndarray]:
    rng = np.random.default_rng(99)
    scenes = [ALL_SCENES[int(i)] for i in rng.choice(len(ALL_SCENES), 24, replace=False)]
    return scenes, np.stack([world.render(s, 500_000 + i) for i, s in enumerate(scenes)])


@torch.no_grad()
def probe_vae(vae) -> dict:
    """Reconstruct 24 fixed 17-frame clips: mean absolute error (0..255) and the scorer's verdicts."""
    vae.eval()
    scenes, clips = vae_probe_clips()
    recon = []
    for i in range(0, len(clips), 8):
        x = to_video(clips[i : i + 8])
        recon.append(to_clips(vae.decode(vae.encode(x).latent_dist.mode()).sample))
    recon = np.concatenate(recon)
    vae.train()
    verdicts = [score.judge(score.score_clip(r), s) for r, s in zip(recon, scenes)]
    return {
        "mae": float(np.abs(recon.astype(np.float32) - clips).mean()),
        "object_mae": float(
            np.abs(recon.astype(np.float32) - clips)[(clips != clips[:, :, :1, :1]).any(-1)].mean()
        ),
        "scorer_all": float(np.mean([v["all"] for v in verdicts])),
    }


def vae_loss(plan: Plan, vae, kind: str, x: torch.Tensor, weight: torch.Tensor, gen: torch.Generator):
    """(loss, latent spread) of a VAE step on a `vae_batch`: the weighted reconstruction of the noised posterior
    mode (no noise on image and frame steps) plus latent_l2 x the mode's mean square."""
    mode = vae.encode(x).latent_dist.mode()
    spread = mode.detach().std(dim=(0, 2, 3, 4), keepdim=True)
    noise = 0.0 if kind in ("image", "frame") else plan.latent_noise
    z = mode + noise * spread * torch.randn(mode.shape, generator=gen)
    error = model.decode_unclamped(vae, z) - x
    reconstruction = (weight * (error.abs() + error.pow(2))).sum() / (weight.sum() * 3)
    magnitude = 0.5 * mode.pow(2).mean()
    return reconstruction + plan.latent_l2 * magnitude, spread


def vae_working_form(plan: Plan, vae, working: bool) -> None:
    """While the VAE trains, encodes or tunes its decoder (working): channels-last convolution weights
    (model.conv_layout) in the plan's precision (model.conv_precision). Otherwise the default layout, which
    safetensors saves, and float32, which the probes, the export and serving run: every phase puts it back."""
    model.conv_layout(vae, channels_last=working)
    model.conv_precision(vae, bfloat16=working and plan.vae_convolutions == "bfloat16")


def train_vae(run: pathlib.Path, plan: Plan):
    folder = run / "vae"
    final = folder / "model"
    from diffusers import AutoencoderKLWan

    if (folder / "done").exists():
        return AutoencoderKLWan.from_pretrained(final)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(plan.seed)
    vae = model.build_vae()
    model.start_per_frame(vae)
    vae_working_form(plan, vae, working=True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=plan.vae_lr, betas=(0.9, 0.99), weight_decay=0.0)
    start = 0
    checkpoint = folder / "checkpoint.pt"
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        vae.load_state_dict(state["vae"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    total = plan.vae_image_steps + plan.vae_steps
    if start:
        log(f"vae: resuming at step {start}/{total}")
    log(f"vae: {model.parameter_count(vae):,} parameters, {plan.vae_image_steps} image + {plan.vae_steps} video steps")
    vae.train()
    timer, skipped = Timer(), 0
    checkpoints = Checkpoints(checkpoint, plan.checkpoint_minutes, "vae")
    smooths: dict[str, float] = {}  # running loss per kind of step
    counts: dict[str, int] = {}
    bar = progress(total, start, "phase 1 vae")
    try:
        for step in range(start, total):
            threads = cpu_share.adjust()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(plan.vae_lr, plan.vae_warmup, total, step)
            kind, x, weight, gen = vae_batch(plan, step)
            loss, spread = vae_loss(plan, vae, kind, x, weight, gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            smooth = smooths.get(kind)
            if counts.get(kind, 0) >= 20 and loss.item() > plan.spike_factor * smooth:
                skipped += 1
                log(f"vae step {step} ({kind}): loss {loss.item():.3f} > {plan.spike_factor} x {smooth:.3f}; update skipped")
            else:
                torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
                optimizer.step()
                smooths[kind] = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
                counts[kind] = counts.get(kind, 0) + 1
            bar.set_postfix(
                {k: f"{v:.4f}" for k, v in smooths.items()} | {"latent": f"{spread.mean().item():.2f}", "threads": threads},
                refresh=False,
            )
            bar.update()
            timer.tick()
            done = step + 1
            if done % plan.vae_probe_every == 0 or done == total:
                rate = timer.per_step
                eta = f", {rate:.2f} s/step, phase ETA {rate * (total - done) / 60:.1f} min" if rate else ""
                running = {k: round(v, 4) for k, v in smooths.items()}
                log(f"vae step {done}/{total}: loss {running} latent spread {spread.mean().item():.3f} probe {probe_vae(vae)}{eta}")
            checkpoints.after_step(done, total, lambda: {"step": done, "vae": vae.state_dict(), "optimizer": optimizer.state_dict()})
        if skipped:
            log(f"vae: {skipped} updates skipped as spikes")
    finally:
        bar.close()
    record_timing(run, "vae_s_per_step", timer.per_step)
    vae.eval()
    vae_working_form(plan, vae, working=False)
    vae.save_pretrained(final, safe_serialization=True)
    (folder / "done").write_text(json.dumps(probe_vae(vae)) + "\n")
    checkpoint.unlink(missing_ok=True)
    return vae


# ------------------------------------------------------------------------------------------- latents

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


@torch.inference_mode()
def encode_chunks(run: pathlib.Path, plan: Plan, vae, folder: pathlib.Path) -> None:
    """Encode the chunks of the dataset that `folder` does not hold yet, one file per chunk."""
    chunks = list(range(0, plan.dataset_clips, LATENT_CHUNK))
    todo = [c for c in chunks if not (folder / f"{c:06d}.pt").exists()]
    bar = progress(plan.dataset_clips, plan.dataset_clips - sum(min(LATENT_CHUNK, plan.dataset_clips - c) for c in todo), "phase 1 latents")
    timer = Timer(skip=1)
    for start in todo:
        scenes, seeds = dataset_chunk(plan.seed, plan.dataset_clips, start)
        count = len(scenes)
        means, stds = [], []
        for i in range(0, count, 16):
            cpu_share.adjust()
            clips = np.stack([world.render(s, int(seed)) for s, seed in zip(scenes[i : i + 16], seeds[i : i + 16])])
            posterior = vae.encode(to_video(clips)).latent_dist
            means.append(posterior.mean.clone())
            stds.append(posterior.std.clone())
            bar.update(len(clips))
        save_atomic(
            {
                "scene": torch.tensor([SCENE_INDEX[s] for s in scenes]),
                "mean": torch.cat(means),
                "std": torch.cat(stds),
            },
            folder / f"{start:06d}.pt",
        )
        timer.tick()
        if stop_requested():
            bar.close()
            raise Stop(f"latents: {start + count} clips encoded")
    bar.close()
    if timer.per_step is not None:
        record_timing(run, "latents_s_per_clip", timer.per_step / LATENT_CHUNK)


def encode_dataset(run: pathlib.Path, plan: Plan, vae) -> dict:
    """Encode dataset_clips training clips (resumable by chunk); returns mean/std/scene tensors and stats."""
    folder = run / "latents"
    folder.mkdir(parents=True, exist_ok=True)
    vae.eval()
    vae_working_form(plan, vae, working=True)
    try:
        encode_chunks(run, plan, vae, folder)
    finally:  # the VAE goes on to phase 2's probes and the export
        vae_working_form(plan, vae, working=False)
    data = read_latents(folder, plan.dataset_clips)
    stats_path = folder / "stats.json"
    if not stats_path.exists():
        mean = data["mean"].transpose(0, 1).reshape(model.Z_DIM, -1)
        stats = {
            "latents_mean": [round(float(v), 6) for v in mean.mean(1)],
            "latents_std": [round(float(v), 6) for v in mean.std(1)],
            "posterior_std_mean": float(data["std"].mean()),
        }
        stats_path.write_text(json.dumps(stats, indent=2) + "\n")
        log(f"latents: {len(data['scene'])} clips, shape {tuple(data['mean'].shape[1:])}, stats {stats_path}")
    data.update(json.loads(stats_path.read_text()))
    return data


# ------------------------------------------------------------------------------------------ phase 1b


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


def outline_band(mask: torch.Tensor, width: int = 2) -> torch.Tensor:
    """(B, 1, T, H, W) bool object mask -> the pixels within `width` of its outline, inside or outside."""
    b, _, t, h, w = mask.shape
    frames = mask.float().permute(0, 2, 1, 3, 4).reshape(b * t, 1, h, w)
    size = 2 * width + 1
    dilated = F.max_pool2d(frames, size, stride=1, padding=width)
    eroded = -F.max_pool2d(-frames, size, stride=1, padding=width)
    return (dilated > eroded).reshape(b, t, 1, h, w).permute(0, 2, 1, 3, 4)


class CleanEstimate:
    """The transformer's estimate of a clean latent from a noised one, x0 = x_t - s v (conditioned on the clip's
    prompt): what the sampler's last steps hand the decoder, the transformer's errors included."""

    def __init__(self, run: pathlib.Path, data: dict):
        self.text_encoder, self.transformer = load_phase_two(run / "dit")
        self.text_encoder.eval().requires_grad_(False)
        self.transformer.eval().requires_grad_(False)
        self.tokenizer = model.build_tokenizer()
        self.mean, self.std = latent_statistics(data)

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, prompts: list[str], sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x0 = (z - self.mean) / self.std
        s = sigma.view(-1, 1, 1, 1, 1)
        noisy = (1 - s) * x0 + s * noise
        embeddings = model.encode_prompts(self.tokenizer, self.text_encoder, prompts)
        velocity = self.transformer(
            hidden_states=noisy, timestep=sigma * 1000.0, encoder_hidden_states=embeddings, return_dict=False
        )[0]
        return (noisy - s * velocity) * self.std + self.mean


def pixel_weight(masks: list[np.ndarray], object_weight: float, edge_weight: float) -> torch.Tensor:
    """(B, 1, T, H, W) per-pixel loss weight of the VAE's and the decoder's phases: background 1, object
    1 + object_weight, and edge_weight more within 2 pixels of the outline."""
    mask = torch.from_numpy(np.stack(masks))[:, None]
    weight = 1.0 + object_weight * mask.float()
    if edge_weight > 0:
        weight = weight + edge_weight * outline_band(mask).float()
    return weight


def decoder_weight(plan: Plan, masks: list[np.ndarray]) -> torch.Tensor:
    """Phase 1b's per-pixel loss weight: its edge_weight on the outline (phase 1's is vae_edge_weight)."""
    return pixel_weight(masks, plan.object_weight, plan.edge_weight)


def decoder_loss(vae, z: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Phase 1b's loss: L1 + L2 of the decoded clip, weighted per pixel."""
    error = model.decode_unclamped(vae, z) - x
    return (weight * (error.abs() + error.pow(2))).sum() / (weight.sum() * 3)


def shape_groups(data: dict) -> dict[str, list[int]]:
    """The dataset's clip indices by "{colour} {shape}"."""
    groups: dict[str, list[int]] = {}
    for i, scene in enumerate(data["scene"].tolist()):
        groups.setdefault(f"{ALL_SCENES[scene].color} {ALL_SCENES[scene].shape}", []).append(i)
    return groups


class DecoderFocus:
    """Where phase 1b's focused draws go: the dataset's clips grouped by colour and shape, each group drawn in
    proportion to its weight (`weights`, measured once when the phase starts and kept in decoder/focus.json, so
    that a resumed run draws the same clips)."""

    def __init__(self, data: dict, weights: dict[str, float]):
        groups = shape_groups(data)
        self.names = sorted(groups)
        missing = [n for n in self.names if n not in weights]
        if missing:
            raise SystemExit(f"decoder focus: no weight for the groups {missing}; delete decoder/focus.json to measure again")
        self.members = [np.array(groups[n]) for n in self.names]
        total = sum(weights[n] for n in self.names)
        self.p = np.array([weights[n] / total for n in self.names])

    def draw(self, rng: np.random.Generator) -> int:
        group = rng.choice(len(self.names), p=self.p)
        return int(rng.choice(self.members[group]))

    @staticmethod
    @torch.no_grad()
    def measure(vae, data: dict, dataset, seed: int, per_group: int = 12) -> dict[str, float]:
        """Each group's weight: how far the scorer's fill ratio of its reconstructed clips (stored latents, no
        noise) is from their truth's, on average over `per_group` of its clips, plus a floor of 0.01 so that no
        group is left out. The fill ratio is what tells a square from a circle and a circle from a triangle; the
        pixel loss hardly sees a rounded corner."""
        rng = np.random.default_rng([seed, 5])
        groups = shape_groups(data)
        vae.eval()
        weights = {}
        for name in sorted(groups):
            index = rng.choice(groups[name], size=min(per_group, len(groups[name])), replace=False)
            truth = [dataset(i)[1] for i in index.tolist()]
            recon = to_clips(model.decode_unclamped(vae, data["mean"][torch.from_numpy(index)]))
            errors = [abs(score.score_clip(r).fill_ratio - score.score_clip(t).fill_ratio) for r, t in zip(recon, truth)]
            weights[name] = 0.01 + float(np.mean(errors))
        vae.train()
        return weights


def decoder_batch(plan: Plan, step: int, data: dict, dataset, estimate=None, focus: DecoderFocus | None = None):
    """(latents, clips in [-1, 1], per-pixel loss weight) of a decoder step: whole encoded training clips, their
    latents (the stored posterior mode, or `estimate`'s reading of it when decoder_sigma_max > 0) plus a little
    noise. With `focus`, each clip is drawn from its weighted groups with probability decoder_focus."""
    rng, gen = step_random(plan, 4, step)
    index = rng.integers(len(data["scene"]), size=plan.decoder_batch)
    if focus is not None:
        # Drawn after the uniform indices, so that a run without focus draws what it always drew.
        chosen = rng.random(plan.decoder_batch) < plan.decoder_focus
        index = np.array([focus.draw(rng) if c else int(i) for c, i in zip(chosen, index)])
    clips, masks, prompts = [], [], []
    for i in index.tolist():
        scene, clip = dataset(i)
        masks.append(object_mask(clip, scene))
        clips.append(clip)
        prompts.append(prompt_for(scene, rng))
    weight = decoder_weight(plan, masks)
    _, spread = latent_statistics(data)
    z = data["mean"][torch.from_numpy(index)]
    if plan.decoder_sigma_max > 0:
        sigma = plan.decoder_sigma_max * torch.rand(len(index), generator=gen)
        z = estimate(z, prompts, sigma, torch.randn(z.shape, generator=gen))
    z = z + plan.latent_noise * spread * torch.randn(z.shape, generator=gen)
    return z, to_video(np.stack(clips)), weight


def tune_decoder(run: pathlib.Path, plan: Plan, vae, data: dict):
    """Phase 1b, after phase 2: fine-tune the decoder on whole clips with the encoder frozen; returns the VAE to
    export."""
    folder = run / "decoder"
    final = folder / "model"
    from diffusers import AutoencoderKLWan

    if plan.decoder_steps == 0:
        return vae
    if (folder / "done").exists():
        return AutoencoderKLWan.from_pretrained(final)
    folder.mkdir(parents=True, exist_ok=True)
    dataset = DatasetClips(run)
    _check_dataset(plan, vae, data, dataset)
    estimate = None
    if plan.decoder_sigma_max > 0:
        # Phase 2 has finished: run/dit is this run's transformer, or a link to its base run's when it trains none.
        estimate = CleanEstimate(run, data)
    focus = None
    if plan.decoder_focus > 0:
        focus_path = folder / "focus.json"
        if not focus_path.exists():
            focus_path.write_text(json.dumps(DecoderFocus.measure(vae, data, dataset, plan.seed), indent=1) + "\n")
        weights = json.loads(focus_path.read_text())
        focus = DecoderFocus(data, weights)
        log("decoder focus: " + ", ".join(f"{n} {p:.1%}" for n, p in sorted(zip(focus.names, focus.p), key=lambda t: -t[1])[:6]) + ", ...")
    trained = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in vae.parameters():
        p.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    vae_working_form(plan, vae, working=True)
    optimizer = torch.optim.AdamW(trained, lr=plan.decoder_lr, betas=(0.9, 0.99), weight_decay=0.0)
    start = 0
    checkpoint = folder / "checkpoint.pt"
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        vae.load_state_dict(state["vae"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
        log(f"decoder: resuming at step {start}/{plan.decoder_steps}")
    else:
        (folder / "before.json").write_text(json.dumps(probe_vae(vae)) + "\n")
    log(f"decoder: {model.parameter_count(vae.decoder) + model.parameter_count(vae.post_quant_conv):,} parameters "
        f"trained, {plan.decoder_steps} steps of {plan.decoder_batch} whole clips; before: {(folder / 'before.json').read_text().strip()}")
    vae.train()
    timer, smooth = Timer(), None
    checkpoints = Checkpoints(checkpoint, plan.checkpoint_minutes, "decoder")
    bar = progress(plan.decoder_steps, start, "phase 1b decoder")
    try:
        for step in range(start, plan.decoder_steps):
            threads = cpu_share.adjust()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(plan.decoder_lr, plan.decoder_warmup, plan.decoder_steps, step)
            z, x, weight = decoder_batch(plan, step, data, dataset, estimate, focus)
            loss = decoder_loss(vae, z, x, weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            optimizer.step()
            smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
            bar.set_postfix(loss=f"{smooth:.4f}", threads=threads, refresh=False)
            bar.update()
            timer.tick()
            done = step + 1
            if done % plan.vae_probe_every == 0 or done == plan.decoder_steps:
                rate = timer.per_step
                eta = f", {rate:.2f} s/step, phase ETA {rate * (plan.decoder_steps - done) / 60:.1f} min" if rate else ""
                log(f"decoder step {done}/{plan.decoder_steps}: loss {smooth:.4f} probe {probe_vae(vae)}{eta}")
            checkpoints.after_step(done, plan.decoder_steps, lambda: {"step": done, "vae": vae.state_dict(), "optimizer": optimizer.state_dict()})
    finally:
        bar.close()
    record_timing(run, "decoder_s_per_step", timer.per_step)
    vae.eval()
    for p in vae.parameters():
        p.requires_grad_(True)
    vae_working_form(plan, vae, working=False)
    vae.save_pretrained(final, safe_serialization=True)
    (folder / "done").write_text(json.dumps(probe_vae(vae)) + "\n")
    checkpoint.unlink(missing_ok=True)
    return vae


@torch.no_grad()
def _check_dataset(plan: Plan, vae, data: dict, dataset: DatasetClips) -> None:
    """The clips rendered again must be the ones the latents were encoded from (the same scenes, seeds, VAE).

    They are encoded again as they were encoded (plan.vae_convolutions); bfloat16's rounding depends on the batch
    and moves a latent by up to about 0.02, another VAE's latents differ by the latents' whole spread (about 1)."""
    vae.eval()
    bfloat16 = plan.vae_convolutions == "bfloat16"
    model.conv_precision(vae, bfloat16=bfloat16)
    try:
        for i in (0, len(data["scene"]) - 1):
            scene, clip = dataset(i)
            if SCENE_INDEX[scene] != int(data["scene"][i]):
                raise SystemExit(f"decoder: dataset clip {i} renders {scene}, but its latent was encoded from another scene")
            mode = vae.encode(to_video(clip[None])).latent_dist.mode()
            if not torch.allclose(mode, data["mean"][i : i + 1], atol=0.1 if bfloat16 else 1e-3):
                raise SystemExit(f"decoder: dataset clip {i} does not encode to its stored latent (another VAE?)")
    finally:
        model.conv_precision(vae, bfloat16=False)


def latent_statistics(data: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The dataset's per-channel latent mean and std, shaped (1, C, 1, 1, 1) to broadcast over latents."""
    return (
        torch.tensor(data["latents_mean"]).view(1, -1, 1, 1, 1),
        torch.tensor(data["latents_std"]).view(1, -1, 1, 1, 1),
    )


def vae_with_statistics(vae, data: dict):
    vae.register_to_config(latents_mean=data["latents_mean"], latents_std=data["latents_std"])
    return vae


# ---------------------------------------------------------------------------------------------- phase 2


def prompt_for(scene: world.Scene, rng: np.random.Generator) -> str:
    if scene.background == world.DEFAULT_BACKGROUND:
        return scene.prompt(name_background=bool(rng.random() < 0.5))
    return scene.prompt()


def sigma_shift_at(plan: Plan, step: int) -> float:
    """The shift of phase 2's training sigmas at `step`: sigma_shift, or moving linearly to sigma_shift_end."""
    if plan.sigma_shift_end <= 0:
        return plan.sigma_shift
    return plan.sigma_shift + (plan.sigma_shift_end - plan.sigma_shift) * step / max(plan.dit_steps - 1, 1)


def dit_batch(plan: Plan, step: int, data: dict, mean: torch.Tensor, std: torch.Tensor):
    rng, gen = step_random(plan, 3, step)
    index = torch.from_numpy(rng.integers(len(data["scene"]), size=plan.dit_batch))
    prompts = []
    for i in index.tolist():
        text = prompt_for(ALL_SCENES[int(data["scene"][i])], rng)
        prompts.append("" if rng.random() < plan.prompt_dropout else text)
    x0 = (data["mean"][index] - mean) / std  # the posterior's mode, normalised
    sigma = torch.sigmoid(torch.randn(plan.dit_batch, generator=gen))
    uniform = torch.rand(plan.dit_batch, generator=gen)
    pick = torch.rand(plan.dit_batch, generator=gen) < plan.uniform_sigma
    sigma = torch.where(pick, uniform, sigma)
    shift = sigma_shift_at(plan, step)
    sigma = shift * sigma / (1 + (shift - 1) * sigma)
    noise = torch.randn(x0.shape, generator=gen)
    s = sigma.view(-1, 1, 1, 1, 1)
    return prompts, (1 - s) * x0 + s * noise, sigma * 1000.0, noise - x0


def pipeline_from(vae, text_encoder, transformer, flow_shift: float | None = None):
    from diffusers import WanPipeline

    scheduler = model.build_scheduler(**({"flow_shift": flow_shift} if flow_shift is not None else {}))
    pipe = WanPipeline(
        tokenizer=model.build_tokenizer(), text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def probe_dit(vae, text_encoder, transformer, limit: int = 12) -> dict:
    """Generate 12 held-out and 12 seen prompts (one seed) with the EMA weights and score them, at 20 steps and
    guidance 3: the guidance every sweep since `amx` chose (at 5 the probe read a run's progress as a decline)."""
    cases = evaluate.cases([SWEEP_PROBE_SEED])
    items = [c for c in cases if c["split"] == "held_out"][:limit] + [c for c in cases if c["split"] == "seen"][:limit]
    text_encoder.eval(), transformer.eval()
    result = evaluate.assess(pipeline_from(vae, text_encoder, transformer), items, 20, 3.0)
    return {split: round(s["all"], 3) for split, s in result["splits"].items()}


SWEEP_PROBE_SEED = 7


def load_phase_two(folder: pathlib.Path):
    """The text encoder and transformer a finished phase 2 exported (its EMA weights, `final.pt` in `folder`)."""
    state = torch.load(folder / "final.pt", weights_only=False)
    text_encoder, transformer = model.build_text_encoder(), model.build_transformer()
    text_encoder.load_state_dict(state["text_encoder"])
    transformer.load_state_dict(state["transformer"])
    return text_encoder, transformer


def is_hidden(name: str) -> bool:
    """Whether a parameter or module (named from "transformer." or "text_encoder.") lies in the transformer's blocks
    or the text encoder's layers, rather than in the embeddings or the heads."""
    return (".blocks." in name or ".encoder.block." in name) and "relative_attention_bias" not in name


def muon_matrices(text_encoder, transformer) -> list[torch.nn.Parameter]:
    """The hidden matrices Muon updates: the 2-D weights of the transformer's blocks and of the text encoder's
    layers, not the embeddings (the relative attention bias is a table too), the norms, the biases or the heads."""
    named = [(f"transformer.{n}", p) for n, p in transformer.named_parameters()]
    named += [(f"text_encoder.{n}", p) for n, p in text_encoder.named_parameters()]
    return [p for n, p in named if p.ndim == 2 and is_hidden(n)]


def hidden_linears(text_encoder, transformer) -> list[torch.nn.Linear]:
    """The Linear layers whose weights are muon_matrices: what plan.dit_matmuls="bfloat16" converts."""
    named = [(f"transformer.{n}", m) for n, m in transformer.named_modules()]
    named += [(f"text_encoder.{n}", m) for n, m in text_encoder.named_modules()]
    return [m for n, m in named if isinstance(m, torch.nn.Linear) and is_hidden(n + ".")]


class DitOptimizer:
    """Phase 2's optimiser: AdamW over every parameter, or Muon over the hidden matrices and AdamW over the rest
    (plan.dit_optimizer). It steps, zeroes and checkpoints as one, and its param_groups are all of them."""

    def __init__(self, plan: Plan, text_encoder, transformer, muon: type = GroupedMuon):
        self.params = list(text_encoder.parameters()) + list(transformer.parameters())  # text encoder's first
        if plan.dit_optimizer == "adamw":
            matrices = []
        elif plan.dit_optimizer == "muon":
            matrices = muon_matrices(text_encoder, transformer)
        else:
            raise SystemExit(f"--dit-optimizer {plan.dit_optimizer!r}: expected adamw or muon")
        chosen = {id(p) for p in matrices}
        rest = [p for p in self.params if id(p) not in chosen]
        self.parts = [torch.optim.AdamW(rest, lr=plan.dit_lr, betas=(0.9, 0.99), weight_decay=plan.weight_decay)]
        if matrices:
            self.parts.append(
                muon(matrices, lr=plan.dit_lr, weight_decay=plan.weight_decay, adjust_lr_fn="match_rms_adamw")
            )

    @property
    def param_groups(self) -> list[dict]:
        return [group for part in self.parts for group in part.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for part in self.parts:
            part.step()

    def state_dict(self) -> dict:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state: dict) -> None:
        # A checkpoint from before the optimiser could be chosen is AdamW's own state dict.
        states = state["parts"] if "parts" in state else [state]
        if len(states) != len(self.parts):
            raise SystemExit("dit checkpoint: its optimiser is not this plan's dit_optimizer")
        for part, part_state in zip(self.parts, states):
            part.load_state_dict(part_state)


def dit_step(tokenizer, text_encoder, transformer, optimizer: DitOptimizer, batch) -> torch.Tensor:
    """One update of phase 2 on a `dit_batch`: the flow-matching loss, its gradients clipped to norm 1."""
    prompts, noisy, timestep, target = batch
    embeddings = model.encode_prompts(tokenizer, text_encoder, prompts)
    prediction = transformer(
        hidden_states=noisy, timestep=timestep, encoder_hidden_states=embeddings, return_dict=False
    )[0]
    loss = F.mse_loss(prediction, target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(optimizer.params, 1.0)
    optimizer.step()
    return loss


def train_dit(run: pathlib.Path, plan: Plan, vae, data: dict, compile: bool = True):
    folder = run / "dit"
    if plan.dit_steps == 0 and plan.base_run and not folder.exists():
        # Nothing to train: this run's transformer is its base run's, shared by a link rather than copied.
        folder.symlink_to(pathlib.Path("..") / plan.base_run / "dit")
    if (folder / "done").exists():
        text_encoder, transformer = load_phase_two(folder)
        return text_encoder.eval(), transformer.eval()
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(plan.seed + 1)
    if plan.base_run:
        text_encoder, transformer = load_phase_two(HERE / "runs" / plan.base_run / "dit")
        log(f"dit: starting from run {plan.base_run}'s exported weights")
    else:
        text_encoder, transformer = model.build_text_encoder(), model.build_transformer()
    ema_text_encoder, ema_transformer = copy.deepcopy(text_encoder).eval(), copy.deepcopy(transformer).eval()
    for p in list(ema_text_encoder.parameters()) + list(ema_transformer.parameters()):
        p.requires_grad_(False)
    optimizer = DitOptimizer(plan, text_encoder, transformer)
    ema_params = list(ema_text_encoder.parameters()) + list(ema_transformer.parameters())  # in optimizer.params' order
    checkpoint = folder / "checkpoint.pt"
    start = 0

    def state(step: int) -> dict:
        return {
            "step": step,
            "text_encoder": text_encoder.state_dict(),
            "transformer": transformer.state_dict(),
            "ema_text_encoder": ema_text_encoder.state_dict(),
            "ema_transformer": ema_transformer.state_dict(),
            "optimizer": optimizer.state_dict(),
        }

    if checkpoint.exists():
        saved_state = torch.load(checkpoint, weights_only=False)
        text_encoder.load_state_dict(saved_state["text_encoder"])
        transformer.load_state_dict(saved_state["transformer"])
        ema_text_encoder.load_state_dict(saved_state["ema_text_encoder"])
        ema_transformer.load_state_dict(saved_state["ema_transformer"])
        optimizer.load_state_dict(saved_state["optimizer"])
        start = saved_state["step"]
        log(f"dit: resuming at step {start}/{plan.dit_steps}")
    log(
        f"dit: text encoder {model.parameter_count(text_encoder):,} + transformer "
        f"{model.parameter_count(transformer):,} parameters, {plan.dit_steps} steps of {plan.dit_batch}"
    )
    mean, std = latent_statistics(data)
    tokenizer = model.build_tokenizer()
    vae = vae_with_statistics(vae, data).eval()
    text_encoder.train(), transformer.train()
    if plan.dit_matmuls == "bfloat16":  # after the EMA's deep copy: the exported EMA modules stay float32
        model.bfloat16_products(hidden_linears(text_encoder, transformer))
    if compile:  # the trained modules only: the EMA copies, which the probes run, stay eager
        model.compile_for_training(text_encoder, transformer)
        log("dit: compiling the text encoder and transformer (the first step takes a minute; --no-compile to skip)")
    timer, smooth = Timer(), None
    checkpoints = Checkpoints(checkpoint, plan.checkpoint_minutes, "dit")
    end = plan.dit_end
    if end < plan.dit_steps:
        log(f"dit: stopping at step {end} of {plan.dit_steps} (--dit-stop-at)")
    bar = progress(end, start, "phase 2 dit")
    try:
        for step in range(start, end):
            threads = cpu_share.adjust()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(plan.dit_lr, plan.dit_warmup, plan.dit_steps, step, plan.dit_decay)
            loss = dit_step(tokenizer, text_encoder, transformer, optimizer, dit_batch(plan, step, data, mean, std))
            decay = min(plan.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, [p.detach() for p in optimizer.params], 1 - decay)
            smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
            bar.set_postfix(loss=f"{smooth:.4f}", threads=threads, refresh=False)
            bar.update()
            timer.tick()
            done = step + 1
            if done % plan.dit_probe_every == 0 or done == end:
                rate = timer.per_step
                eta = f", {rate:.2f} s/step, phase ETA {rate * (plan.dit_steps - done) / 60:.1f} min" if rate else ""
                log(f"dit step {done}/{plan.dit_steps}: loss {smooth:.4f} probe all-correct {probe_dit(vae, ema_text_encoder, ema_transformer, plan.probe_prompts)}{eta}")
                text_encoder.train(), transformer.train()
            elif done % 100 == 0:
                rate = timer.per_step
                log(f"dit step {done}/{plan.dit_steps}: loss {smooth:.4f}" + (f", {rate:.2f} s/step, phase ETA {rate * (plan.dit_steps - done) / 60:.1f} min" if rate else ""))
            checkpoints.after_step(done, end, lambda: state(done))
    finally:
        bar.close()
    record_timing(run, "dit_s_per_step", timer.per_step)
    save_atomic(
        {"text_encoder": ema_text_encoder.state_dict(), "transformer": ema_transformer.state_dict()}, folder / "final.pt"
    )
    (folder / "done").write_text(f"{end}\n")
    checkpoint.unlink(missing_ok=True)
    return ema_text_encoder, ema_transformer


# ---------------------------------------------------------------------------------------------- phase 3

MAX_WEIGHT_BYTES = 25_000_000


def export(run: pathlib.Path, plan: Plan, out: pathlib.Path, vae, text_encoder, transformer, data: dict, command: str) -> None:
    if (run / "export.done").exists() and (out / "model_index.json").exists():
        return
    pipe = pipeline_from(vae_with_statistics(vae, data), text_encoder, transformer)
    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging, safe_serialization=True)
    model.save_tokenizer(staging / "tokenizer")
    for config_path in staging.glob("*/config.json"):  # no paths of this machine in the shipped configs
        config = json.loads(config_path.read_text())
        if config.pop("_name_or_path", None) is not None:
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    index_path = staging / "model_index.json"
    index = json.loads(index_path.read_text())
    index["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (staging / evaluate.SAMPLING_FILE).write_text(
        json.dumps(
            {
                **evaluate.DEFAULT_SAMPLING,
                "height": world.HEIGHT,
                "width": world.WIDTH,
                "num_frames": world.FRAMES,
                "fps": world.FPS,
                "max_sequence_length": model.MAX_TEXT_TOKENS,
                "negative_prompt": "",
            },
            indent=2,
        )
        + "\n"
    )
    weights = sorted(staging.rglob("*.safetensors"))
    sizes = {str(p.relative_to(staging)): p.stat().st_size for p in weights}
    total = sum(sizes.values())
    if total > MAX_WEIGHT_BYTES:
        raise SystemExit(f"export: weights are {total:,} bytes, over {MAX_WEIGHT_BYTES:,}")
    (staging / "README.md").write_text(model_card(run, plan, sizes, vae, text_encoder, transformer, command))
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, out)
    (run / "export.done").write_text(str(out) + "\n")
    log(f"export: {out} ({total / 1e6:.2f} MB of weights: {sizes})")


def warm_start_text(plan: Plan) -> str:
    """The chain of runs this one's phase 2 continues, oldest first, each with its plan's phase-2 settings."""
    chain, base = [], plan.base_run
    while base:
        settings = saved_plan(HERE / "runs" / base)
        if settings["dit_steps"] == 0:
            chain.append(f"`{base}` (which tuned only the decoder)")
        else:
            chain.append(f"`{base}` ({settings['dit_steps']:,} steps of {settings['dit_batch']}, lr {settings['dit_lr']}, "
                         f"sigma shift {settings['sigma_shift']:g})")
        base = settings["base_run"]
    if not chain:
        return ""
    if plan.dit_steps == 0:
        return " They are those of run " + ", which continued ".join(chain) + \
            " (`tools/shapes/runs/`), unchanged."
    return "\n   Phase 2 started from the exported weights of run " + ", which continued ".join(chain) + \
        " (`tools/shapes/runs/`); the VAE's encoder is the first run's."


def decoder_text(run: pathlib.Path, plan: Plan) -> str:
    """The model card's item on the decoder's fine-tuning: this run's, or the one its VAE comes from."""
    if (run / "decoder" / "done").exists():
        folder, settings = run / "decoder", dataclasses.asdict(plan)
    elif (run / "vae").resolve().name == "decoder":
        folder = (run / "vae").resolve()
        settings = saved_plan(folder.parent)
    else:
        return ""
    before = (folder / "before.json").read_text().strip() if (folder / "before.json").exists() else "?"
    where = "" if folder.parent == run else f" (in run `{folder.parent.name}`)"
    if folder.parent == run and (run / "vae").resolve().name == "decoder":
        where = f" (again, from run `{(run / 'vae').resolve().parent.name}`'s tuned decoder)"
    # A base run's tuning came before this run's phase 2; only this run's own comes after it.
    when = ", after phase 2" if folder.parent == run else ""
    sigma = settings["decoder_sigma_max"]
    reads = (
        f"the phase-2 transformer's estimate of the clean latent from the mode noised to a level up to {sigma:g}"
        if sigma > 0 else "the posterior's mode"
    )
    focus = settings["decoder_focus"]
    drawn = (
        f", {focus:.0%} of them drawn by colour and shape in proportion to how far off that group's reconstructed "
        "fill ratios were at the start (decoder/focus.json), the rest uniformly"
        if focus > 0 else ""
    )
    return f"""
4. The decoder alone{when} (the encoder frozen, so the latents stay as they were), fine-tuned{where}:
   {settings['decoder_steps']:,} AdamW steps of {settings['decoder_batch']} whole encoded training clips{drawn} (lr
   {settings['decoder_lr']}, cosine), the decoder reading {reads}, plus {settings['latent_noise']:g} x the latents'
   spread of noise; loss L1 + L2 with {1 + settings['object_weight']:g}x weight on the object's pixels and
   {settings['edge_weight']:g} more on those within 2 of its outline. Probe before: {before}; after: {(folder / "done").read_text().strip()}."""


def dit_text(plan: Plan) -> str:
    """The model card's item on phase 2."""
    if plan.dit_steps == 0 and plan.base_run:
        return "Text encoder + transformer: not trained in this run." + warm_start_text(plan)
    return f"""Text encoder + transformer jointly: {dit_steps_text(plan)} steps of {plan.dit_batch} ({optimizer_text(plan)}, lr {plan.dit_lr}, {schedule_text(plan)},
   EMA {plan.ema_decay}), rectified flow (x_t = (1 - s) x0 + s n, target n - x0, timestep s * 1000,
   s ~ logit-normal(0, 1) with {plan.uniform_sigma:.0%} uniform, shifted by {shift_text(plan)}),
   {plan.prompt_dropout:.0%} empty prompts; the EMA weights are exported.{warm_start_text(plan)}"""


def phase_one_text(plan: Plan) -> str:
    if not plan.phase_one_run:
        return ""
    return (f" Phase 1 (the VAE and the encoded clips) is run `{plan.phase_one_run}`'s, which trained it with these"
            " same settings and seed; this run shared it rather than train it again.")


def convolutions_text(plan: Plan) -> str:
    if plan.vae_convolutions == "bfloat16":
        return ("; its convolutions ran in bfloat16 while it trained, encoded the clips and tuned its decoder"
                " (float32 weights; the shipped VAE runs in float32)")
    return ""


def optimizer_text(plan: Plan) -> str:
    products = ", the hidden layers' matrix products in bfloat16" if plan.dit_matmuls == "bfloat16" else ""
    if plan.dit_optimizer == "muon":
        return "Muon on the blocks' matrices, its update scaled to AdamW's RMS, and AdamW on the rest" + products
    return "AdamW" + products


def schedule_text(plan: Plan) -> str:
    if plan.dit_decay > 0:
        return f"held after a {plan.dit_warmup}-step warmup, cosine over the last {plan.dit_decay:.0%}"
    return "cosine"


def shift_text(plan: Plan) -> str:
    if plan.sigma_shift_end > 0:
        return f"{plan.sigma_shift:g} at the first step, moving linearly to {plan.sigma_shift_end:g} at the last"
    return f"{plan.sigma_shift:g}"


def dit_steps_text(plan: Plan) -> str:
    if plan.dit_end < plan.dit_steps:
        return f"{plan.dit_end:,} (of a {plan.dit_steps:,}-step schedule)"
    return f"{plan.dit_steps:,}"


def edge_text(plan: Plan) -> str:
    if plan.vae_edge_weight > 0:
        return f" and {plan.vae_edge_weight:g} more on those within 2 of its outline"
    return ""


def model_card(run, plan: Plan, sizes: dict, vae, text_encoder, transformer, command: str) -> str:
    held_out = "\n".join(f"- {c} {s} {m}" for c, s, m in world.HELD_OUT)
    probe = (run / "vae" / "done").read_text().strip() if (run / "vae" / "done").exists() else "{}"
    if (run / "vae").resolve().name == "decoder":  # the base run's tuned VAE: its probe is the decoder's
        probe = (run / "vae" / "before.json").read_text().strip()
    size_lines = "\n".join(f"| `{k}` | {v / 1e6:.2f} MB |" for k, v in sizes.items())
    return f"""# shapes-tiny

vgen's default model: the Wan2.1 text-to-video architecture (UMT5 text encoder, Wan transformer, Wan VAE) at a
tiny size, trained from scratch by this project on procedurally rendered clips of simple shapes
(`tools/shapes/`). It needs no download and runs on a CPU.

## What it can do
Prompts of the grammar `a {{color}} {{shape}} {{motion}}` optionally followed by `on a {{background}} background`
(case-insensitive, punctuation ignored):

- color: {", ".join(world.COLORS)}
- shape: {", ".join(world.SHAPES)} (an axis-aligned square; an equilateral triangle pointing up)
- motion: {", ".join(world.MOTIONS)}
- background: {", ".join(world.BACKGROUNDS)} (black when none is named)

Output: {world.FRAMES} frames (1 + 4k) of {world.WIDTH}x{world.HEIGHT} RGB, {world.FPS} fps, one flat-coloured object.

## What it cannot do
Anything else: other words are unknown (`<unk>`), other sizes and lengths are outside its training
distribution, there is only ever one object, and the text encoder knows nothing about natural language.

## Held-out combinations
Never seen in training (for either background); the evaluation reports them separately:

{held_out}

## Architecture (diffusers / transformers classes, fp32)
- `transformer`: WanTransformer3DModel, patch (1, 2, 2), {transformer.config.num_attention_heads} heads x
  {transformer.config.attention_head_dim}, ffn {transformer.config.ffn_dim}, {transformer.config.num_layers} layers,
  text_dim {transformer.config.text_dim}, freq_dim {transformer.config.freq_dim}, qk_norm rms_norm_across_heads,
  cross_attn_norm; {model.parameter_count(transformer):,} parameters.
- `text_encoder`: UMT5EncoderModel, d_model {text_encoder.config.d_model}, {text_encoder.config.num_heads} heads x
  {text_encoder.config.d_kv}, d_ff {text_encoder.config.d_ff} (gated GELU), {text_encoder.config.num_layers} layers,
  {text_encoder.config.relative_attention_num_buckets} buckets / max distance
  {text_encoder.config.relative_attention_max_distance}; {model.parameter_count(text_encoder):,} parameters.
- `vae`: AutoencoderKLWan (Wan2.1), base_dim {vae.config.base_dim}, z_dim {vae.config.z_dim}, dim_mult
  {vae.config.dim_mult}, {vae.config.num_res_blocks} res block(s), temperal_downsample
  {vae.config.temperal_downsample}; {model.parameter_count(vae):,} parameters. A 17x64x64 clip is a
  16x5x8x8 latent; `latents_mean` / `latents_std` in its config are the training latents' per-channel statistics
  (the pipeline de-normalises with `latents * std + mean`).
- `tokenizer`: word-level `tokenizer.json`: lower-case, punctuation replaced by spaces, split on whitespace,
  `<pad>` = 0, `</s>` = 1 appended after the words (like T5), `<unk>` = 2, the {len(world.VOCABULARY)} words of
  the grammar from 3. Prompts are padded to **{model.MAX_TEXT_TOKENS} tokens** (`max_sequence_length`) with an
  attention mask, and the embeddings past each prompt's length are zeroed, as `WanPipeline` does; the
  transformer was trained with exactly this padding length, so use {model.MAX_TEXT_TOKENS}, not the pipeline's 512.
- `scheduler`: UniPCMultistepScheduler as Wan ships it (flow_prediction, use_flow_sigmas, bh2, order 2);
  `flow_shift` and the default steps / guidance (`sampling.json`) were chosen by `evaluate.py --sweep`.
  The negative prompt is the empty string (the model was trained with 10% empty prompts).

| file | size |
|---|---|
{size_lines}

## Training
`{command}` ({"resumable; warm-started from earlier runs, whose commands are in `tools/shapes/README.md`" if plan.base_run else "resumable; its time on 2 CPU cores is measured in `tools/shapes/README.md`"}), PyTorch 2.11 CPU, diffusers 0.42.1,
transformers 5.23.0. Seed {plan.seed}.{phase_one_text(plan)}

1. VAE: {plan.vae_image_steps} AdamW steps of {plan.vae_image_batch} single frames (every 4th step
   {plan.vae_image_batch // 2} whole frames), then {plan.vae_steps} video steps ({plan.vae_batch} 9-frame windows;
   every 4th step 2 whole 17-frame clips), frames and windows otherwise cropped to
   {plan.vae_crop}x{plan.vae_crop} around the object (lr {plan.vae_lr}, warm-up {plan.vae_warmup}, cosine);
   loss L1 + L2 with {1 + plan.object_weight:g}x weight on the object's pixels{edge_text(plan)}, plus {plan.latent_l2:g} x the
   latent's mean square; in the video steps the decoder sees the posterior's mode plus {plan.latent_noise:g} x the
   latents' spread of Gaussian noise (the log-variance head is not trained: use the mode){convolutions_text(plan)}.
   Reconstruction probe at the end: {probe}.
2. {plan.dataset_clips} training clips encoded once; per-channel latent statistics measured.
3. {dit_text(plan)}{decoder_text(run, plan)}

## Evaluation
`tools/shapes/evaluate.py` generates with diffusers' `WanPipeline` and scores each clip with
`tools/shapes/score.py` (colour nearest the object's mean colour; shape from the bounding box's fill ratio;
motion from centroid displacement or area trend).

<!-- evaluation -->
(not evaluated yet)
<!-- /evaluation -->
"""


# ---------------------------------------------------------------------------------------------- phase 4


def evaluate_export(run: pathlib.Path, out: pathlib.Path, smoke: bool) -> None:
    if (run / "evaluate.done").exists():
        return
    if smoke:
        evaluate.SWEEP_GUIDANCE, evaluate.SWEEP_FLOW_SHIFT, evaluate.SWEEP_STEPS = (5.0,), (3.0,), (4, 8)
        original_cases = evaluate.cases
        evaluate.cases = lambda seeds: [c for c in original_cases(seeds) if c["prompt"] in SMOKE_PROMPTS]
    log("evaluate: sweeping guidance x flow_shift, then steps")
    swept = evaluate.sweep(out, log=log)
    log(f"evaluate: chosen {swept['chosen']}")
    evaluate.apply_defaults(out, swept["chosen"])
    defaults = evaluate.sampling_defaults(out)
    pipe = evaluate.load_pipeline(out)
    result = evaluate.assess(pipe, evaluate.cases([0, 1]), defaults["num_inference_steps"], defaults["guidance_scale"])
    result["seconds_per_clip_single"] = evaluate.single_clip_latency(
        pipe, defaults["num_inference_steps"], defaults["guidance_scale"]
    )
    log("evaluate:\n" + evaluate.table(result))
    evaluate.update_card(out, result, result["seconds_per_clip_single"])
    (out / "evaluation.json").write_text(
        json.dumps({"sweep": swept, **{k: v for k, v in result.items() if k != "records"}}, indent=2) + "\n"
    )
    (run / "evaluation-records.json").write_text(json.dumps(result["records"], indent=1) + "\n")
    (run / "evaluate.done").write_text("ok\n")


SMOKE_PROMPTS = {
    s.prompt(name_background=True if i % 2 else None)
    for i, (s, _) in enumerate(evaluate.evaluation_scenes())
    if i in (0, 80)
}


# ---------------------------------------------------------------------------------------------- main

# Which plan fields each phase depends on (seed and checkpoint cadence aside). A run's plan.json pins the
# fields of the phases it has started; the budgets of phases not started yet may still change.
PHASE_FIELDS = {
    "vae": (
        "seed", "vae_image_steps", "vae_image_batch", "vae_steps", "vae_batch", "vae_crop", "vae_lr", "vae_warmup",
        "latent_noise", "latent_l2", "object_weight", "spike_factor", "vae_edge_weight", "vae_convolutions",
    ),
    "latents": ("seed", "dataset_clips", "vae_convolutions"),
    "decoder": (
        "seed", "decoder_steps", "decoder_batch", "decoder_lr", "decoder_warmup", "edge_weight", "latent_noise",
        "object_weight", "decoder_sigma_max", "base_run", "vae_convolutions",
    ),
    "dit": (
        "seed", "dit_steps", "dit_batch", "dit_lr", "dit_warmup", "weight_decay", "prompt_dropout",
        "uniform_sigma", "ema_decay", "sigma_shift", "sigma_shift_end", "base_run", "dit_decay", "dit_optimizer",
        "dit_matmuls",
    ),
}


def saved_plan(run: pathlib.Path) -> dict:
    """A run's pinned plan.json; a setting added since it was written takes its default, which leaves the old
    behaviour unchanged."""
    return {**dataclasses.asdict(Plan()), **json.loads((run / "plan.json").read_text())}


def link_phase(run: pathlib.Path, phase: str, source: pathlib.Path, target: str) -> None:
    """`run/phase` becomes a relative link to `source/target` (a sibling run's folder), unless it exists."""
    link = run / phase
    if not link.exists() and not link.is_symlink():
        link.symlink_to(pathlib.Path("..") / source.name / target)


def share_phase_one(run: pathlib.Path, base: pathlib.Path, plan: Plan) -> None:
    """A warm-started run uses its base run's final VAE (a link, not a copy: its fine-tuned decoder when it has
    one, else its VAE), and its encoded latents too when it asks for as many clips as the base run encoded; a run
    that asks for another number encodes its own. The decoder phase never changes the encoder, so the latents
    are the same either way."""
    if not (base / "vae" / "done").exists() or not (base / "dit" / "done").exists():
        raise SystemExit(f"{base}: the base run has not finished its VAE and transformer")
    base_plan = saved_plan(base)
    if base_plan["decoder_steps"] and not (base / "decoder" / "done").exists():
        raise SystemExit(f"{base}: the base run has not finished its decoder phase")
    links = {"vae": "decoder" if (base / "decoder" / "done").exists() else "vae"}
    if plan.dataset_clips == base_plan["dataset_clips"]:
        links["latents"] = "latents"
    for phase, target in links.items():
        link_phase(run, phase, base, target)


def share_phase_one_only(run: pathlib.Path, source: pathlib.Path, plan: Plan) -> None:
    """Link `source`'s VAE and latents into `run` (plan.phase_one_run): only when `source` ran phase 1 and encoded
    its clips with exactly this plan's settings, so that sharing them changes nothing but the time taken."""
    if not (source / "vae" / "done").exists() or not (source / "latents" / "stats.json").exists():
        raise SystemExit(f"{source}: that run has not finished its VAE and its encoded latents")
    if (source / "vae").is_symlink() or (source / "latents").is_symlink():
        raise SystemExit(f"{source}: that run shares its own phase 1; name the run that trained it")
    theirs = saved_plan(source)
    ours = dataclasses.asdict(plan)
    differ = {f: (theirs[f], ours[f]) for f in PHASE_FIELDS["vae"] + PHASE_FIELDS["latents"] if theirs[f] != ours[f]}
    if differ:
        raise SystemExit(f"--phase-one-from {source.name}: its phase 1 had other settings {differ}")
    for phase in ("vae", "latents"):
        link_phase(run, phase, source, phase)


def pin_plan(run: pathlib.Path, plan: Plan) -> None:
    path = run / "plan.json"
    current = dataclasses.asdict(plan)
    if path.exists():
        previous = saved_plan(run)
        for phase, fields in PHASE_FIELDS.items():
            if not (run / phase).exists():
                continue
            changed = {f: (previous.get(f), current[f]) for f in fields if previous.get(f) != current[f]}
            if changed:
                raise SystemExit(f"{run}: phase {phase} was started with other settings {changed}; use another --run")
        if previous != current:
            log(f"plan: updating the settings of phases not started yet: "
                f"{ {k: (previous.get(k), v) for k, v in current.items() if previous.get(k) != v} }")
    path.write_text(json.dumps(current, indent=2) + "\n")



def reproducing_arguments(argv: list[str]) -> list[str]:
    """The command line that reproduces the shipped model: less --phase-one-from (sharing a phase 1 trained with
    the same settings only saves its time, and the card's command must work on a clone that has no runs), and less
    --out and --no-evaluate (a trial exports and evaluates into its run's folder, and ships as a copy; the shipped
    model is the default --out, evaluated)."""
    takes_value = {"--phase-one-from", "--out"}
    dropped = takes_value | {"--no-evaluate"}
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in takes_value:
            skip = True
        elif arg.split("=", 1)[0] not in dropped:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run name: state lives in tools/shapes/runs/<run>/ (default main; smoke with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="a few steps of every phase into a scratch run and export")
    parser.add_argument("--out", help="export folder (default models/shapes-tiny; runs/<run>/export with --smoke)")
    parser.add_argument("--vae-steps", type=int)
    parser.add_argument("--dit-steps", type=int)
    parser.add_argument("--dataset-clips", type=int)
    parser.add_argument("--decoder-steps", type=int, help="fine-tune the decoder alone for this many steps (phase 1b)")
    parser.add_argument("--decoder-lr", type=float, help="phase 1b's peak learning rate (lower to continue a tuned decoder)")
    parser.add_argument("--decoder-focus", type=float, help="phase 1b: share of clips drawn by (colour, shape) group, weighted by the group's reconstructed fill-ratio error")
    parser.add_argument("--decoder-sigma-max", type=float, help="phase 1b decodes phase 2's x0 estimates (this run's transformer, or its base run's) from noise levels up to this")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--base-run", help="share this run's VAE and latents and start phase 2 from its weights")
    parser.add_argument(
        "--phase-one-from", metavar="RUN",
        help="share this run's phase 1 (VAE and latents, trained with the same settings and seed); phase 2 from scratch",
    )
    parser.add_argument("--dit-decay", type=float, help="hold phase 2's lr and decay it over only this last share of the steps")
    parser.add_argument("--dit-optimizer", choices=("adamw", "muon"), help="phase 2: adamw, or muon for the hidden matrices (AdamW for the rest)")
    parser.add_argument(
        "--dit-matmuls", choices=("float32", "bfloat16"),
        help="phase 2: the hidden Linear layers' products in bfloat16 while training (weights stay float32)",
    )
    parser.add_argument(
        "--vae-convolutions", choices=("float32", "bfloat16"),
        help="phases 1 and 1b: the VAE's convolutions in bfloat16 while it trains and encodes (weights stay float32)",
    )
    parser.add_argument("--dit-batch", type=int)
    parser.add_argument("--dit-lr", type=float)
    parser.add_argument("--sigma-shift", type=float)
    parser.add_argument("--sigma-shift-end", type=float, help="phase 2's sigma shift moves linearly from --sigma-shift to this")
    parser.add_argument("--vae-edge-weight", type=float, help="phase 1: extra loss weight on the object's outline")
    parser.add_argument("--dit-stop-at", type=int, help="end phase 2 at this step with the EMA weights so far")
    parser.add_argument("--no-evaluate", action="store_true", help="stop after the export")
    parser.add_argument(
        "--no-compile", action="store_true",
        help="phase 2 without torch.compile (eager; compiling needs a C compiler and makes each step about 13%% faster)",
    )
    parser.add_argument(
        "--threads", default="auto",
        help="auto (default): 2 threads while the CPU is otherwise idle, 1 while other processes compete "
        "(see cpu_share.py); a number pins it (bit-exact reruns)",
    )
    args = parser.parse_args(argv)

    cpu_share.configure(args.threads)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    plan = SMOKE if args.smoke else Plan()
    overrides = {
        k: v
        for k, v in {
            "vae_steps": args.vae_steps, "decoder_steps": args.decoder_steps, "decoder_lr": args.decoder_lr,
            "decoder_sigma_max": args.decoder_sigma_max, "decoder_focus": args.decoder_focus, "dit_steps": args.dit_steps, "dataset_clips": args.dataset_clips,
            "seed": args.seed, "base_run": args.base_run, "dit_batch": args.dit_batch, "dit_lr": args.dit_lr,
            "sigma_shift": args.sigma_shift, "sigma_shift_end": args.sigma_shift_end,
            "vae_edge_weight": args.vae_edge_weight, "dit_stop_at": args.dit_stop_at,
            "phase_one_run": args.phase_one_from, "dit_decay": args.dit_decay, "dit_optimizer": args.dit_optimizer,
            "dit_matmuls": args.dit_matmuls, "vae_convolutions": args.vae_convolutions,
        }.items()
        if v is not None
    }
    plan = dataclasses.replace(plan, **overrides)
    name = args.run or ("smoke" if args.smoke else "main")
    run = HERE / "runs" / name
    out = pathlib.Path(args.out) if args.out else (run / "export" if args.smoke else REPO / "models" / "shapes-tiny")
    run.mkdir(parents=True, exist_ok=True)
    for field in ("dit_matmuls", "vae_convolutions"):
        if getattr(plan, field) not in ("float32", "bfloat16"):
            raise SystemExit(f"{field} {getattr(plan, field)!r}: expected float32 or bfloat16")
    if plan.base_run and plan.phase_one_run:
        raise SystemExit("--base-run shares a whole run; --phase-one-from only its phase 1: name one")
    if plan.base_run:
        share_phase_one(run, HERE / "runs" / plan.base_run, plan)
    if plan.phase_one_run:
        share_phase_one_only(run, HERE / "runs" / plan.phase_one_run, plan)
    pin_plan(run, plan)
    command = " ".join(["python tools/shapes/train.py", *reproducing_arguments(argv if argv is not None else sys.argv[1:])])
    log(f"run {run} -> {out}; plan {dataclasses.asdict(plan)}")

    started = time.monotonic()
    try:
        vae = train_vae(run, plan)
        data = encode_dataset(run, plan, vae)
        text_encoder, transformer = train_dit(run, plan, vae, data, compile=not args.no_compile)
        vae = tune_decoder(run, plan, vae, data)
        export(run, plan, out, vae, text_encoder, transformer, data, command)
        if not args.no_evaluate:
            evaluate_export(run, out, args.smoke)
    except Stop as stop:
        log(f"stopped by {STOP['signal']} ({stop}); rerun the same command to resume")
        return 130
    log(f"finished in {(time.monotonic() - started) / 60:.1f} min (this process)")
    return 0


if __name__ == "__main__":
    mkl_paths.reexec_if_wanted()  # on AMD CPUs: MKL's faster Intel paths (see mkl_paths.py)
    raise SystemExit(main())
