"""Storyboards on the default model, through vgen's engine, judged by the storyboard scorer (`storyboard.py`).

Held-out storyboards (three parts each; a held-out colour x shape x motion combination in every one, and orders of
motions no training clip has) are held to the targets where the model reaches them: each part's motion right in at
least 90% of the parts, and no jump at 95% of the joins. The colour and shape kept across the parts has a target
of 95% of the storyboards that the shipped model does not reach (87.5% of these 24, 86.5% of 96: a part's shape
reads otherwise when the VAE rounds a square's corners or a small triangle's tip, as in image-to-video's "kept"
measure, issue 33); IDENTITY_FLOOR holds it where it is, so that it cannot get worse unnoticed. A ten-part
storyboard keeps the object's colour within ΔE 10 of the first part's.

Run: .venv/bin/python -m pytest tools/shapes/test_storyboard.py -q (part of `make test`)
"""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import storyboard  # noqa: E402
import world  # noqa: E402

import vgen  # noqa: E402

COUNT = 24
TARGETS = {"motion": 0.90, "join": 0.95}
IDENTITY_TARGET = 0.95  # not reached: see the module's docstring
IDENTITY_FLOOR = 0.80
TEN_PARTS = (
    "growing", "moving right", "moving up", "shrinking", "moving left",
    "moving down", "standing still", "moving right", "moving up", "moving left",
)
MAX_DELTA_E = 10.0


@pytest.fixture(scope="module")
def engine():
    with vgen.Engine(devices=["cpu"]) as e:
        yield e


def test_held_out_storyboards_keep_their_motions_identity_and_joins(engine):
    boards = storyboard.held_out_storyboards(COUNT)
    assert all(any(world.Scene(b.color, b.shape, m).held_out for m in b.motions) for b in boards)
    jobs = [(b, engine.submit(b.prompts(), seed=i)) for i, b in enumerate(boards)]
    judged = []
    for board, job in jobs:
        video = job.wait(timeout=300)
        parts = video.metadata["segments"]
        assert [p["frames"] for p in parts] == [17, 16, 16] and video.frames.shape == (49, 64, 64, 3)
        judged.append({"prompts": board.prompts(), **storyboard.judge(np.asarray(video.frames), parts, board)})
    rates = storyboard.rates(judged)
    misses = "\n".join(
        f"{j['prompts']}: {j['verdict']} {j['measures']['read']}"
        for j in judged
        if not (all(j["verdict"]["motion"]) and j["verdict"]["identity"] and all(j["verdict"]["joins"]))
    )
    for key, least in {**TARGETS, "identity": IDENTITY_FLOOR}.items():
        assert rates[key] >= least, f"{key}: {rates[key]:.1%} (at least {least:.0%}); {rates}; the misses:\n{misses}"


def test_a_ten_part_storyboard_keeps_the_first_parts_colour(engine):
    board = storyboard.Storyboard("orange", "square", TEN_PARTS)
    assert storyboard.feasible(board.motions)
    video = engine.submit(board.prompts(), seed=10).wait(timeout=300)
    parts = video.metadata["segments"]
    assert len(parts) == 10 and video.frames.shape[0] == 17 + 9 * 16
    judged = storyboard.judge(np.asarray(video.frames), parts, board)
    drift = judged["measures"]["delta_e"]
    assert max(drift) <= MAX_DELTA_E, f"ΔE per part {drift}; read {judged['measures']['read']}"
    # The engine's own measure agrees that nothing drifted far.
    assert all(p["drift"]["color_delta_e"] <= MAX_DELTA_E for p in parts), [p["drift"] for p in parts]


def test_the_commands_segments_make_one_clip(tmp_path):
    """The README's example: `vgen generate --segment ... --segment ... --segment ...` on the default model."""
    import json
    import os
    import subprocess

    cli = os.environ.get("VGEN_CLI", str(pathlib.Path(__file__).resolve().parents[2] / "target/debug/vgen"))
    prompts = ["a red circle moving right", "a red circle moving up", "a red circle growing"]
    args = [cli, "generate", "--json", "--seed", "0", "--out", f"{tmp_path}/frames/"]
    for p in prompts:
        args += ["--segment", p]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert [(s["prompt"], s["start_frame"], s["frames"]) for s in result["segments"]] == [
        (prompts[0], 0, 17), (prompts[1], 17, 16), (prompts[2], 33, 16)]
    from PIL import Image

    frames = np.stack([np.asarray(Image.open(f)) for f in sorted((tmp_path / "frames").iterdir())])
    assert frames.shape == (49, 64, 64, 3)
    judged = storyboard.judge(frames, result["segments"], storyboard.Storyboard("red", "circle", tuple(
        world.parse(p).motion for p in prompts)))
    assert all(judged["verdict"]["motion"]) and judged["verdict"]["identity"] and all(judged["verdict"]["joins"]), judged
