"""Phase 1: the VAE (AutoencoderKLWan), trained from scratch, then the dataset encoded once.

A curriculum: vae_image_steps steps of single frames (the causal VAE's first-chunk path), cropped around the
object, then vae_steps video steps of 9-frame windows, every 4th step whole frames or clips instead. The video
steps start from a per-frame autoencoder (model.start_per_frame). Loss: L1 + L2 weighted towards the object (and
its outline with vae_edge_weight) of the decoded posterior mode, noised in the video steps, plus latent_l2 x the
mode's mean square; an update whose loss spikes past spike_factor x the running loss of its kind is skipped.
Then the dataset's clips are encoded (their posterior mean and std) and the latents' per-channel statistics
measured (`latents/stats.json`), which go into the VAE's config as Wan does.

The log-variance head is never trained: use `latent_dist.mode()` with this VAE.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch
import torch.nn.functional as F

import cpu_share
import model
import score
import world
from checkpoints import Checkpoints, Stop, save_atomic, stop_requested
from dataset import (
    ALL_SCENES, LATENT_CHUNK, SCENE_INDEX, TRAINING_SCENES, dataset_chunk, read_latents, to_clips, to_video,
)
from plan import Plan
from progress import Timer, log, progress, record_timing
from schedule import learning_rate, step_random


def object_mask(clip: np.ndarray, scene: world.Scene) -> np.ndarray:
    """(T, H, W) bool: the pixels of a rendered clip that differ from its background (the object and its
    anti-aliased edge)."""
    background = np.array(world.BACKGROUNDS[scene.background], dtype=np.int16)
    return np.abs(clip.astype(np.int16) - background).max(-1) > 4


def outline_band(mask: torch.Tensor, width: int = 2) -> torch.Tensor:
    """(B, 1, T, H, W) bool object mask -> the pixels within `width` of its outline, inside or outside."""
    b, _, t, h, w = mask.shape
    frames = mask.float().permute(0, 2, 1, 3, 4).reshape(b * t, 1, h, w)
    size = 2 * width + 1
    dilated = F.max_pool2d(frames, size, stride=1, padding=width)
    eroded = -F.max_pool2d(-frames, size, stride=1, padding=width)
    return (dilated > eroded).reshape(b, t, 1, h, w).permute(0, 2, 1, 3, 4)


def pixel_weight(masks: list[np.ndarray], object_weight: float, edge_weight: float) -> torch.Tensor:
    """(B, 1, T, H, W) per-pixel loss weight of the VAE's and the decoder's phases: background 1, object
    1 + object_weight, and edge_weight more within 2 pixels of the outline."""
    mask = torch.from_numpy(np.stack(masks))[:, None]
    weight = 1.0 + object_weight * mask.float()
    if edge_weight > 0:
        weight = weight + edge_weight * outline_band(mask).float()
    return weight


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


def encode_dataset(run: pathlib.Path, plan: Plan, vae, statistics: dict | None = None) -> dict:
    """Encode dataset_clips training clips (resumable by chunk); returns mean/std/scene tensors and stats: the
    per-channel latents_mean / latents_std measured on them, or `statistics` when given (a base model's, which its
    transformer was trained on)."""
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
        if statistics is not None:
            stats.update({k: list(statistics[k]) for k in ("latents_mean", "latents_std")}, given=True)
        stats_path.write_text(json.dumps(stats, indent=2) + "\n")
        log(f"latents: {len(data['scene'])} clips, shape {tuple(data['mean'].shape[1:])}, stats {stats_path}")
    data.update(json.loads(stats_path.read_text()))
    return data
