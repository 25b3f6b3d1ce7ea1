"""The sampler sweep's clips and its choice of steps (no model needed).

Run: .venv/bin/python -m pytest tools/shapes/test_evaluate.py -q
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import evaluate  # noqa: E402


def test_sweep_clips_are_every_held_out_scene_and_the_same_seen_scenes_at_each_seed():
    for seeds in (evaluate.SWEEP_SEEDS, evaluate.SWEEP_STEPS_SEEDS):
        items = evaluate.sweep_cases(seeds)
        held_out = [c for c in items if c["split"] == "held_out"]
        seen = [c for c in items if c["split"] == "seen"]
        assert len(held_out) == 24 * len(seeds) and len(seen) == evaluate.SWEEP_SEEN * len(seeds)
        assert len({c["seed"] for c in items}) == len(items)  # no clip twice
        assert len({c["prompt"] for c in seen}) == evaluate.SWEEP_SEEN  # each seen scene at every seed
    grid, steps = (evaluate.sweep_cases(s) for s in (evaluate.SWEEP_SEEDS, evaluate.SWEEP_STEPS_SEEDS))
    assert {c["prompt"] for c in grid} == {c["prompt"] for c in steps}
    assert {c["seed"] for c in grid} < {c["seed"] for c in steps}


def test_the_sweep_never_chooses_on_the_evaluations_clips():
    evaluation = {c["seed"] for c in evaluate.cases([0, 1])}
    assert not evaluation & {c["seed"] for c in evaluate.sweep_cases(evaluate.SWEEP_STEPS_SEEDS)}


def result(steps: int, held_out: float, seen: float) -> dict:
    return {"steps": steps, "splits": {"seen": {"all": seen}, "held_out": {"all": held_out}}}


def test_fewest_steps_within_tolerance_of_the_best():
    by_steps = [result(4, 0.70, 0.72), result(6, 0.90, 0.90), result(8, 0.93, 0.93), result(20, 0.935, 0.935)]
    assert evaluate.fewest_steps_near_best(by_steps)["steps"] == 8  # 0.5 points below the best
    by_steps[2] = result(8, 0.92, 0.92)  # 1.5 points below: not near enough
    assert evaluate.fewest_steps_near_best(by_steps)["steps"] == 20
    # Order of the list does not matter, and a tie goes to fewer steps.
    assert evaluate.fewest_steps_near_best([result(12, 0.9, 0.9), result(10, 0.9, 0.9)])["steps"] == 10
