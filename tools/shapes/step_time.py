"""Phase 2's seconds per step for each optimiser, measured side by side in one process.

A run's own timings mix whatever else shared the CPU while it ran; this measures AdamW and Muon
(`--dit-optimizer`) on the same batches, in turns, so that a busy moment slows both alike. The batches are a
finished run's encoded clips (its `latents/`), drawn as phase 2 draws them.

    .venv/bin/python tools/shapes/step_time.py --run single --steps 60
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import platform
import statistics
import time

import torch

import model
import train


def encoded_clips(run: pathlib.Path) -> dict:
    """A run's encoded training clips and their statistics, as phase 2 reads them (nothing is encoded here)."""
    data = train.read_latents(run / "latents", train.saved_plan(run)["dataset_clips"])
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


def measure(run: pathlib.Path, steps: int, batch: int, threads: int, rounds: int) -> dict:
    torch.set_num_threads(threads)
    plan = dataclasses.replace(train.Plan(), dit_batch=batch)
    data = encoded_clips(run)
    mean, std = train.latent_statistics(data)
    tokenizer = model.build_tokenizer()
    setups = {}
    for name in ("adamw", "muon"):
        torch.manual_seed(0)
        text_encoder, transformer = model.build_text_encoder(), model.build_transformer()
        optimizer = train.DitOptimizer(dataclasses.replace(plan, dit_optimizer=name), text_encoder, transformer)
        setups[name] = (text_encoder, transformer, optimizer)
    times: dict[str, list[float]] = {name: [] for name in setups}
    for round_ in range(rounds):  # in turns: AdamW's steps, then Muon's, on the same batches
        for name, (text_encoder, transformer, optimizer) in setups.items():
            for step in range(steps):
                clips = train.dit_batch(plan, round_ * steps + step, data, mean, std)
                started = time.perf_counter()
                train.dit_step(tokenizer, text_encoder, transformer, optimizer, clips)
                if step >= 2:  # the first steps of a turn warm the caches
                    times[name].append(time.perf_counter() - started)
    median = {name: statistics.median(t) for name, t in times.items()}
    return {
        "machine": f"{cpu_name()}, {torch.get_num_threads()} threads",
        "batch": batch,
        "steps_measured": {name: len(t) for name, t in times.items()},
        "median_s_per_step": {name: round(m, 4) for name, m in median.items()},
        "muon_over_adamw": round(median["muon"] / median["adamw"], 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run whose latents/ are encoded (tools/shapes/runs/<run>)")
    parser.add_argument("--steps", type=int, default=60, help="steps per optimiser in each turn")
    parser.add_argument("--rounds", type=int, default=2, help="turns of each optimiser")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    run = train.HERE / "runs" / args.run
    if not (run / "latents" / "stats.json").exists():
        raise SystemExit(f"{run}: no encoded latents (run phase 1 first)")
    print(json.dumps(measure(run, args.steps, args.batch, args.threads, args.rounds), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
