"""The shipped default model, served by vgen's native engine (no diffusers), still does what its prompts say.

Eight prompts, four seen in training and four held out, are generated through `vgen.Engine` with the model's
default settings and judged by the objective scorer (`score.py`). A regression in any layer (tokenizer, text
encoder, transformer, scheduler, VAE, frame conversion) shows up as wrong colours, shapes or motions, and fails.

Run: .venv/bin/python -m pytest tools/shapes/test_default_model.py -q (part of `make test`)
"""

import json
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import score  # noqa: E402
import world  # noqa: E402

import vgen  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "shapes-tiny"

SEEN = [
    "a red circle moving right",
    "a blue triangle shrinking on a gray background",
    "a green square moving up",
    "a white circle standing still",
]
# From world.HELD_OUT: colour x shape x motion combinations the model never saw.
HELD_OUT = [
    "a blue square moving left",
    "a yellow triangle growing on a gray background",
    "a cyan circle moving right",
    "a magenta square standing still",
]
# The thresholds, per attribute, from the full evaluation (model card, 208 clips): colour is right in 98-99% of
# the clips and motion in 97-98%, so a regression in any layer shows there first. These seeds give 8 of 8
# all-correct with the shipped model (run `b24`, tools/shapes/README.md); shapes are its weakest attribute
# (92-94%: squares with rounded corners read as circles), so two misses are allowed.
MIN_RIGHT = {"color": 8, "motion": 7, "all": 6}


@pytest.fixture(scope="module")
def engine():
    with vgen.Engine(devices=["cpu"]) as e:
        yield e


def test_the_default_model_is_shipped_and_is_the_default(engine):
    serving = json.loads((MODEL / "vgen.json").read_text())
    assert serving["name"] == "shapes-tiny"
    weights = sum(p.stat().st_size for p in MODEL.rglob("*.safetensors"))
    assert weights <= 25_000_000, f"{weights} bytes of weights"
    default = [m for m in vgen.models() if m["default"]]
    assert [m["name"] for m in default] == ["shapes-tiny"]


def test_prompts_seen_and_held_out_come_out_as_asked(engine):
    assert all(not world.parse(p).held_out for p in SEEN)
    assert all(world.parse(p).held_out for p in HELD_OUT)
    jobs = [(p, engine.submit(p, seed=index)) for index, p in enumerate(SEEN + HELD_OUT)]
    verdicts = []
    for prompt, job in jobs:
        video = job.wait(timeout=120)
        assert video.frames.shape == (17, 64, 64, 3)
        reading = score.score_clip(np.asarray(video.frames))
        verdict = score.judge(reading, world.parse(prompt))
        verdicts.append((prompt, verdict, reading))
    wrong = "\n".join(f"{p}: read {r.color} {r.shape} {r.motion}" for p, v, r in verdicts if not v["all"])
    for key, least in MIN_RIGHT.items():
        right = sum(v[key] for _, v, _ in verdicts)
        assert right >= least, f"{key}: {right}/8 right, at least {least} expected; the misses:\n{wrong}"


def test_words_outside_the_vocabulary_are_ignored_with_a_warning(engine):
    # The video is still made from the words the model knows, and the host is told which words it ignored.
    job = engine.submit("a red circle moving right with sparkles", seed=3)
    with pytest.warns(vgen.ModelWarning, match="sparkles"):
        video = job.wait(timeout=120)
    assert video.frames.shape == (17, 64, 64, 3)
    assert [e["type"] for e in job.events()].count("warning") == 1
    verdict = score.judge(score.score_clip(np.asarray(video.frames)), world.parse("a red circle moving right"))
    assert verdict["color"] and verdict["shape"], verdict
    # Ignored means ignored: the same video as the prompt without those words.
    plain = engine.submit("a red circle moving right", seed=3).wait(timeout=120)
    assert np.array_equal(np.asarray(video.frames), np.asarray(plain.frames))
