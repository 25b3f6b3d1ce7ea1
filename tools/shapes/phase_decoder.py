"""Phase 1b: the VAE's decoder (and its post-quant conv) alone, fine-tuned after phase 2.

The encoder stays frozen, so the latents, their statistics and any transformer trained on them stay valid. The
targets are the dataset's own clips rendered again (dataset.DatasetClips), checked against their stored latents
before the first step. The decoder reads the stored posterior mode, or with decoder_sigma_max > 0 the
transformer's estimate of it from a noised latent (CleanEstimate), plus latent_noise x the latents' spread; with
decoder_focus > 0 part of each batch is drawn by (colour, shape) group in proportion to how far off each group's
reconstructed shapes were when the phase started (DecoderFocus, `decoder/focus.json`, so a resumed run draws the
same clips). Loss: phase 1's, with edge_weight on the object's outline.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch

import cpu_share
import model
import score
from checkpoints import Checkpoints
from dataset import ALL_SCENES, SCENE_INDEX, DatasetClips, latent_statistics, prompt_for, to_clips, to_video
from phase_dit import load_phase_two
from phase_vae import object_mask, pixel_weight, probe_vae, vae_working_form
from plan import Plan
from progress import Timer, log, progress, record_timing
from schedule import learning_rate, step_random


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
