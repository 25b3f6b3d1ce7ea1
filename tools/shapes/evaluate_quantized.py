"""The default model quantized: held-out accuracy of each `vgen quantize` format beside fp32, through vgen's engine.

Quantizes models/shapes-tiny with the `vgen` command into a scratch folder (fp8, q8_0, q4_k), serves the four
folders from one `vgen.Engine` (each renamed in its vgen.json), generates all 24 held-out scenes at --seeds seeds
with the model's defaults, and judges every clip with the objective scorer. Prints a table and, with --json, the
figures (the model card and benches/README.md quote them).

    .venv/bin/python tools/shapes/evaluate_quantized.py --vgen target/release/vgen --seeds 4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import score  # noqa: E402
import world  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "shapes-tiny"
FORMATS = ("fp8", "q8_0", "q4_k")


def prepare(vgen: str, root: pathlib.Path) -> dict[str, str]:
    """The model folders to compare, by label: fp32 (a copy of the shipped one) and each quantized format."""
    names = {}
    for label in ("fp32",) + FORMATS:
        out = root / f"shapes-tiny-{label}"
        if label == "fp32":
            subprocess.run(["cp", "-r", str(MODEL), str(out)], check=True)
        else:
            subprocess.run([vgen, "quantize", "--format", label, str(MODEL), str(out)], check=True)
        serving = json.loads((out / "vgen.json").read_text())
        serving["name"] = out.name
        (out / "vgen.json").write_text(json.dumps(serving))
        names[label] = out.name
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vgen", default=str(REPO / "target" / "release" / "vgen"), help="the vgen command")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--json", type=pathlib.Path)
    args = ap.parse_args()
    root = pathlib.Path(tempfile.mkdtemp(prefix="vgen-quant-eval-"))
    names = prepare(args.vgen, root)
    os.environ["VGEN_MODELS"] = str(root)
    import vgen  # after VGEN_MODELS is set: the engine discovers the folders

    scenes = world.held_out_scenes()
    results = {}
    with vgen.Engine(devices=["cpu"]) as engine:
        for label, name in names.items():
            started = time.time()
            jobs = [(s, engine.submit(s.prompt(), model=name, seed=seed)) for s in scenes for seed in range(args.seeds)]
            verdicts = [score.judge(score.score_clip(np.asarray(j.wait(timeout=600).frames)), s) for s, j in jobs]
            n = len(verdicts)
            results[label] = {k: sum(v[k] for v in verdicts) / n for k in ("color", "shape", "motion", "all")}
            results[label].update(n=n, seconds=round(time.time() - started, 1))
            weights = sum(p.stat().st_size for p in (root / name / "transformer").iterdir() if p.suffix != ".json")
            results[label]["transformer_bytes"] = weights
            print(f"{label:>5}: all-correct {results[label]['all']:.3f} over {n} held-out clips "
                  f"(colour {results[label]['color']:.3f}, shape {results[label]['shape']:.3f}, motion "
                  f"{results[label]['motion']:.3f}); transformer {weights / 1e6:.1f} MB; {results[label]['seconds']} s",
                  flush=True)
    base = results["fp32"]["all"]
    for label in FORMATS:
        results[label]["points_below_fp32"] = round(100 * (base - results[label]["all"]), 2)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    subprocess.run(["rm", "-rf", str(root)], check=False)


if __name__ == "__main__":
    main()
