"""Step caching on the default model: held-out accuracy and end-to-end time with and without the cache, through
vgen's engine, at the model's default steps (or --steps), for each threshold asked for.

Generates all 24 held-out scenes at --seeds seeds, one job at a time (so that each clip's wall time is its own),
every setting in turn on each clip, and judges every clip with the objective scorer. Prints a table and, with --json, the figures (the README and
benches/README.md quote them).

    .venv/bin/python tools/shapes/evaluate_step_cache.py --seeds 4 --thresholds 0.05,0.1,0.2 [--steps 20] --json out.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import score  # noqa: E402
import world  # noqa: E402


def run(engine, scenes, seeds: int, thresholds: dict, steps: int | None = None) -> dict:
    """Every held-out scene at every seed, one job at a time, each setting in turn on the same clip (so that the
    machine's drift over the run falls on every setting alike): per setting, the accuracy, the seconds per clip
    and the steps skipped."""
    verdicts = {label: [] for label in thresholds}
    seconds = {label: 0.0 for label in thresholds}
    skipped = {label: [] for label in thresholds}
    stages = {label: {"generating": 0.0, "decoding": 0.0} for label in thresholds}
    for s in scenes:
        for seed in range(seeds):
            for label, threshold in thresholds.items():
                started = time.perf_counter()
                video = engine.submit(s.prompt(), seed=seed, steps=steps, step_cache=threshold).wait(timeout=600)
                seconds[label] += time.perf_counter() - started
                skipped[label].append(len(video.metadata.get("steps_skipped", [])))
                for stage in stages[label]:
                    stages[label][stage] += video.metadata["timings_ms"][stage]
                verdicts[label].append(score.judge(score.score_clip(np.asarray(video.frames)), s))
    out = {}
    for label in thresholds:
        n = len(verdicts[label])
        out[label] = {k: sum(v[k] for v in verdicts[label]) / n for k in ("color", "shape", "motion", "all")}
        out[label].update(n=n, seconds_per_clip=round(seconds[label] / n, 4),
                          steps_skipped_mean=round(float(np.mean(skipped[label])), 2),
                          **{f"{stage}_ms": round(ms / n, 1) for stage, ms in stages[label].items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--thresholds", default="0.05,0.1,0.2")
    ap.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    ap.add_argument("--json", type=pathlib.Path)
    args = ap.parse_args()
    import vgen

    scenes = world.held_out_scenes()
    with vgen.Engine(devices=["cpu"]) as engine:
        engine.submit("a red circle moving right", seed=0).wait()  # loads the model
        thresholds = {"off": None, **{t: float(t) for t in args.thresholds.split(",")}}
        steps = args.steps or next(m["steps"] for m in vgen.models() if m["default"])
        results = run(engine, scenes, args.seeds, thresholds, steps)
        for label, r in results.items():
            print(f"{label:>5}: all-correct {r['all']:.3f} over {r['n']} held-out clips (colour {r['color']:.3f}, "
                  f"shape {r['shape']:.3f}, motion {r['motion']:.3f}); {r['seconds_per_clip'] * 1000:.0f} ms a clip, "
                  f"{r['steps_skipped_mean']} of {steps} steps skipped (denoising {r['generating_ms']:.0f} ms, decoding "
                  f"{r['decoding_ms']:.0f} ms)", flush=True)
    base = results["off"]
    for label, r in results.items():
        r["speedup"] = round(base["seconds_per_clip"] / r["seconds_per_clip"], 3)
        r["points_below_off"] = round(100 * (base["all"] - r["all"]), 2)
        print(f"{label:>5}: {r['speedup']:.2f}x, {r['points_below_off']:+.1f} points")
    if args.json:
        args.json.write_text(json.dumps(dict(steps=steps, settings=results), indent=2) + "\n")


if __name__ == "__main__":
    main()
