"""The trainer's seconds per step under two settings, measured side by side in one process.

A run's own timings mix whatever else shared the CPU while it ran; this alternates the two settings step by step
on the same batches, so that a busy moment slows both alike:

- `optimizer`: phase 2 with AdamW and with Muon (`--dit-optimizer`);
- `compile`: phase 2 (Muon) eager and compiled with torch.compile (train.py compiles; `--no-compile` does not);
- `matmuls`: phase 2 (Muon, compiled) with its hidden Linear products in float32 and in bfloat16
  (`--dit-matmuls`);
- `muon`: phase 2 (compiled, bfloat16 products) with torch.optim.Muon and with grouped_muon.GroupedMuon, which
  train.py uses (the same updates, a shape at a time);
- `batch`: phase 2 (compiled, bfloat16 products, GroupedMuon) on `--batch` clips and on the first 3/4 of them
  (`--dit-batch 24` against 32);
- `conv-layout`: phase 1's VAE steps with its 3-D convolution weights in the default layout and channels-last
  (train.py trains channels-last), for each kind of VAE step;
- `conv-precision`: phase 1's VAE steps (channels-last) with its convolutions in float32 and in bfloat16
  (`--vae-convolutions`).

The two VAE comparisons also time encoding the dataset's clips under each setting (one VAE, the same weights)
and report how far the second setting moves the latents.

Phase 2's batches are a finished run's encoded clips (its `latents/`), drawn as phase 2 draws them. On an AMD
CPU the script reruns itself with MKL's Intel paths, as train.py does (mkl_paths.py).

    .venv/bin/python tools/shapes/step_time.py --run three --compare compile --steps 40
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import platform
import statistics
import time

import numpy as np
import torch

import mkl_paths
import model
import world
from dataset import dataset_chunk, latent_statistics, read_latents, to_video
from grouped_muon import GroupedMuon
from phase_dit import DitOptimizer, dit_batch, dit_step, hidden_linears
from phase_vae import vae_batch, vae_loss
from plan import RUNS, Plan, saved_plan


def encoded_clips(run: pathlib.Path) -> dict:
    """A run's encoded training clips and their statistics, as phase 2 reads them (nothing is encoded here)."""
    data = read_latents(run / "latents", saved_plan(run)["dataset_clips"])
    data.update(json.loads((run / "latents" / "stats.json").read_text()))
    return data


def cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def phase_two_setups(compare: str, plan: Plan) -> dict:
    """Two (text encoder, transformer, optimiser) triples built from the same seed, differing only in `compare`."""
    grouped, per_matrix = GroupedMuon, torch.optim.Muon
    variants = {
        "optimizer": [("adamw", "adamw", False, False, grouped), ("muon", "muon", False, False, grouped)],
        "compile": [("eager", "muon", False, False, grouped), ("compiled", "muon", True, False, grouped)],
        "matmuls": [("float32", "muon", True, False, grouped), ("bfloat16", "muon", True, True, grouped)],
        "muon": [("per_matrix", "muon", True, True, per_matrix), ("grouped", "muon", True, True, grouped)],
        # the same trainer; measure_phase_two hands the second the first 3/4 of each batch (24 of 32)
        "batch": [("whole", "muon", True, True, grouped), ("three_quarters", "muon", True, True, grouped)],
    }[compare]
    setups = {}
    for name, optimizer, compiled, bfloat16, muon in variants:
        torch.manual_seed(0)
        text_encoder, transformer = model.build_text_encoder(), model.build_transformer()
        optimizer = DitOptimizer(
            dataclasses.replace(plan, dit_optimizer=optimizer), text_encoder, transformer, muon=muon
        )
        if bfloat16:
            model.bfloat16_products(hidden_linears(text_encoder, transformer))
        if compiled:
            model.compile_for_training(text_encoder, transformer)
        setups[name] = (text_encoder, transformer, optimizer)
    return setups


def measure_phase_two(run: pathlib.Path, compare: str, steps: int, batch: int) -> dict:
    plan = dataclasses.replace(Plan(), dit_batch=batch)
    data = encoded_clips(run)
    mean, std = latent_statistics(data)
    tokenizer = model.build_tokenizer()
    setups = phase_two_setups(compare, plan)
    times: dict[str, list[float]] = {name: [] for name in setups}
    losses: dict[str, list[float]] = {name: [] for name in setups}
    warmup = 3  # the first steps warm the caches (and compile)
    for step in range(warmup + steps):
        clips = dit_batch(plan, step, data, mean, std)
        for name, (text_encoder, transformer, optimizer) in setups.items():
            given = tuple(part[: batch * 3 // 4] for part in clips) if name == "three_quarters" else clips
            started = time.perf_counter()
            loss = dit_step(tokenizer, text_encoder, transformer, optimizer, given)
            if step >= warmup:
                times[name].append(time.perf_counter() - started)
            losses[name].append(round(loss.item(), 5))
    first, second = setups
    median = {name: statistics.median(t) for name, t in times.items()}
    weights = [dict(setups[name][1].named_parameters()) for name in (first, second)]
    return {
        "batch": batch,
        # after the same batches from the same start: 0.0 where the two settings compute the same updates
        "max_weight_difference": max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[0]),
        "steps_measured": steps,
        "median_s_per_step": {name: round(m, 4) for name, m in median.items()},
        f"{second}_over_{first}": round(median[second] / median[first], 3),
        "first_losses": {name: values[:3] for name, values in losses.items()},
    }


VAE_VARIANTS = {
    # name: (channels-last weights, bfloat16 convolutions)
    "conv-layout": {"default": (False, False), "channels_last": (True, False)},
    "conv-precision": {"float32": (True, False), "bfloat16": (True, True)},
}


def measure_vae_steps(compare: str, steps: int) -> dict:
    """Phase 1's VAE steps under the two settings of `compare`, on phase 1's own batches: image/frame steps, then
    video/full ones."""
    plan = Plan()
    setups = {}
    for name, (channels_last, bfloat16) in VAE_VARIANTS[compare].items():
        torch.manual_seed(0)
        vae = model.build_vae()
        model.start_per_frame(vae)
        model.conv_layout(vae, channels_last=channels_last)
        model.conv_precision(vae, bfloat16=bfloat16)
        setups[name] = (vae.train(), torch.optim.AdamW(vae.parameters(), lr=plan.vae_lr, betas=(0.9, 0.99)))
    times: dict[str, dict[str, list[float]]] = {name: {} for name in setups}
    losses: dict[str, dict[str, list[float]]] = {name: {} for name in setups}
    warmup = 4
    for first in (0, plan.vae_image_steps):
        for step in range(first, first + warmup + steps):
            kind, x, weight, gen = vae_batch(plan, step)
            state = gen.get_state()
            for name, (vae, optimizer) in setups.items():
                gen.set_state(state)  # the same latent noise for both settings
                started = time.perf_counter()
                loss, _ = vae_loss(plan, vae, kind, x, weight, gen)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if step - first >= warmup:
                    times[name].setdefault(kind, []).append(time.perf_counter() - started)
                if step - first < 3:
                    losses[name].setdefault(kind, []).append(round(loss.item(), 5))
    median = {name: {kind: statistics.median(t) for kind, t in kinds.items()} for name, kinds in times.items()}
    first, second = setups
    return {
        "median_s_per_step": {name: {k: round(v, 4) for k, v in kinds.items()} for name, kinds in median.items()},
        f"{second}_over_{first}": {kind: round(median[second][kind] / median[first][kind], 3) for kind in median[first]},
        "steps_measured": {kind: len(t) for kind, t in times[first].items()},
        "first_losses": losses,
        "encoding": measure_encoding(compare, setups[first][0], repeats=max(3, steps // 2)),
    }


@torch.inference_mode()
def measure_encoding(compare: str, vae, repeats: int) -> dict:
    """Encoding 16 clips drawn as the dataset's are, as phase 1 encodes them, under each setting of `compare`, alternated
    on one VAE (the same weights): seconds a clip, and how far the second setting moves the latents."""
    scenes, seeds = dataset_chunk(0, 16, 0)
    x = to_video(np.stack([world.render(s, int(seed)) for s, seed in zip(scenes, seeds)]))
    vae.eval()
    times: dict[str, list[float]] = {name: [] for name in VAE_VARIANTS[compare]}
    latents = {}
    for repeat in range(1 + repeats):  # the first round warms up
        for name, (channels_last, bfloat16) in VAE_VARIANTS[compare].items():
            model.conv_layout(vae, channels_last=channels_last)
            model.conv_precision(vae, bfloat16=bfloat16)
            started = time.perf_counter()
            latents[name] = vae.encode(x).latent_dist.mean
            if repeat:
                times[name].append((time.perf_counter() - started) / len(x))
    first, second = times
    median = {name: statistics.median(t) for name, t in times.items()}
    return {
        "median_s_per_clip": {name: round(m, 5) for name, m in median.items()},
        f"{second}_over_{first}": round(median[second] / median[first], 3),
        "latent_spread": round(latents[first].std().item(), 4),
        "max_latent_difference": round((latents[second] - latents[first]).abs().max().item(), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", choices=("optimizer", "compile", "matmuls", "muon", "batch", *VAE_VARIANTS), default="optimizer")
    parser.add_argument("--run", help="phase 2: a run whose latents/ are encoded (tools/shapes/runs/<run>)")
    parser.add_argument("--steps", type=int, default=40, help="measured steps of each setting (of each kind, for conv-layout)")
    parser.add_argument("--batch", type=int, default=32, help="phase 2's batch")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.compare in VAE_VARIANTS:
        result = measure_vae_steps(args.compare, args.steps)
    else:
        if not args.run:
            raise SystemExit(f"--compare {args.compare}: name a --run whose latents/ phase 2 reads")
        run = RUNS / args.run
        if not (run / "latents" / "stats.json").exists():
            raise SystemExit(f"{run}: no encoded latents (run phase 1 first)")
        result = measure_phase_two(run, args.compare, args.steps, args.batch)
    machine = {"machine": f"{cpu_name()}, {torch.get_num_threads()} threads", "compare": args.compare}
    print(json.dumps(machine | result, indent=2))
    return 0


if __name__ == "__main__":
    mkl_paths.reexec_if_wanted()  # on AMD CPUs, as train.py runs (see mkl_paths.py)
    raise SystemExit(main())
