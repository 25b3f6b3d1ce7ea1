"""The shapes world obeys its semantics, and the scorer reads ground-truth renders correctly.

Run: .venv/bin/python -m pytest tools/shapes/test_world.py -q
"""

import math
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import score  # noqa: E402
import world  # noqa: E402


def test_grammar_parses_case_and_punctuation_and_defaults_the_background():
    assert world.parse("A Red Circle, moving LEFT!") == world.Scene("red", "circle", "moving left", "black")
    assert world.parse("a cyan triangle growing on a gray background.") == world.Scene(
        "cyan", "triangle", "growing", "gray"
    )
    for scene in world.all_scenes():
        assert world.parse(scene.prompt()) == scene
        assert world.parse(scene.prompt(name_background=True)) == scene
    with pytest.raises(ValueError):
        world.parse("a purple circle moving left")


def test_counts_and_held_out_combinations():
    assert len(world.all_scenes()) == 8 * 3 * 7 * 2
    assert len(set(world.HELD_OUT)) == len(world.HELD_OUT) == 12
    training = {s.combination for s in world.training_scenes()}
    assert not training & set(world.HELD_OUT)
    # Every pair inside a held-out combination is still seen in training with some other partner.
    for color, shape, motion in world.HELD_OUT:
        assert any(c == color and s == shape for c, s, _ in training)
        assert any(c == color and m == motion for c, _, m in training)
        assert any(s == shape and m == motion for _, s, m in training)


def test_vocabulary_covers_the_grammar():
    for scene in world.all_scenes():
        assert set(world.words(scene.prompt(name_background=True))) <= set(world.VOCABULARY)


@pytest.mark.parametrize("motion", world.MOTIONS)
@pytest.mark.parametrize("shape", world.SHAPES)
def test_trajectories_obey_the_semantics(shape, motion):
    scene = world.Scene("red", shape, motion)
    starts = set()
    for seed in range(200):
        path = world.trajectory(scene, np.random.default_rng(seed))
        starts.add((round(path.x[0], 3), round(path.y[0], 3), round(path.size[0], 3)))
        assert np.all(path.size >= 0.15 * world.WIDTH - 1e-9) and np.all(path.size <= 0.35 * world.WIDTH + 1e-9)
        for f in range(world.FRAMES):
            left, right, top, bottom = world._extent(shape, path.size[f])
            assert path.x[f] - left >= 0 and path.x[f] + right <= world.WIDTH
            assert path.y[f] - top >= 0 and path.y[f] + bottom <= world.HEIGHT
        dx, dy = path.x[-1] - path.x[0], path.y[-1] - path.y[0]
        growth = (path.size[-1] / path.size[0]) ** 2
        quarter = world.WIDTH / 4
        if motion == "moving left":
            assert dx <= -quarter and dy == 0
        elif motion == "moving right":
            assert dx >= quarter and dy == 0
        elif motion == "moving up":
            assert dy <= -quarter and dx == 0
        elif motion == "moving down":
            assert dy >= quarter and dx == 0
        elif motion == "growing":
            assert growth >= 2 and dx == 0 and dy == 0
            assert np.all(np.diff(path.size) > 0)
        elif motion == "shrinking":
            assert growth <= 0.5 and dx == 0 and dy == 0
            assert np.all(np.diff(path.size) < 0)
        else:
            assert dx == 0 and dy == 0 and growth == 1
    assert len(starts) == 200  # start positions and sizes vary


def test_render_is_flat_coloured_seeded_and_inside_the_frame():
    scene = world.Scene("orange", "triangle", "moving right", "gray")
    clip = world.render(scene, 7)
    assert clip.shape == (world.FRAMES, world.HEIGHT, world.WIDTH, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip, world.render(scene, 7))
    assert not np.array_equal(clip, world.render(scene, 8))
    background = np.array(world.BACKGROUNDS["gray"])
    color = np.array(world.COLORS["orange"])
    # Every pixel is a blend of the background and the one object colour (anti-aliased edges only).
    t = ((clip - background) @ (color - background)) / float((color - background) @ (color - background))
    blend = background + t[..., None] * (color - background)
    assert np.abs(blend - clip).max() <= 1.0
    assert (clip == color).all(axis=-1).sum(axis=(1, 2)).min() > 20  # a solid core in every frame
    border = np.concatenate([clip[:, 0], clip[:, -1], clip[:, :, 0], clip[:, :, -1]], axis=1)
    assert (border == background).all()


def supersampled_everywhere(scene: world.Scene, seed: int) -> np.ndarray:
    """The reference render: every pixel of every frame supersampled, not only the shape's window."""
    path = world.trajectory(scene, np.random.default_rng(seed))
    background = np.array(world.BACKGROUNDS[scene.background], dtype=np.float32)
    color = np.array(world.COLORS[scene.color], dtype=np.float32)
    n = world._SS
    ys = (np.arange(world.HEIGHT * n) + 0.5) / n
    xs = (np.arange(world.WIDTH * n) + 0.5) / n
    frames = []
    for cx, cy, size in zip(path.x, path.y, path.size):
        x, y = xs[None, :] - cx, ys[:, None] - cy
        if scene.shape == "circle":
            inside = x * x + y * y <= (size / 2) ** 2
        elif scene.shape == "square":
            inside = (np.abs(x) <= size / 2) & (np.abs(y) <= size / 2)
        else:
            h = size * np.sqrt(3) / 2
            top, base = -2 * h / 3, h / 3
            inside = (y >= top) & (y <= base) & (np.abs(x) <= (y - top) / h * (size / 2))
        alpha = inside.reshape(world.HEIGHT, n, world.WIDTH, n).mean(axis=(1, 3))[..., None]
        frames.append(np.round(background + alpha * (color - background)).astype(np.uint8))
    return np.stack(frames)


def test_render_equals_supersampling_every_pixel_for_every_shape_motion_and_background():
    rng = np.random.default_rng(99)
    scenes = world.all_scenes()
    for i in range(120):
        scene = scenes[int(rng.integers(len(scenes)))] if i >= len(world.SHAPES) else world.Scene("white", world.SHAPES[i], "growing", "gray")
        assert np.array_equal(world.render(scene, 500 + i), supersampled_everywhere(scene, 500 + i)), (scene, 500 + i)


def test_rendering_some_frames_gives_those_frames_of_the_whole_clip():
    scene = world.Scene("cyan", "circle", "moving up", "black")
    whole = world.render(scene, 3)
    for frames in (range(0, 1), range(5, 14), range(16, 17), range(world.FRAMES)):
        assert np.array_equal(world.render(scene, 3, frames), whole[frames.start : frames.stop])
    for bad in (range(0), range(0, 17, 2), range(10, 18), range(-1, 3)):
        with pytest.raises(ValueError, match="frames"):
            world.render(scene, 3, bad)


def test_scorer_reads_ground_truth_clips():
    rng = np.random.default_rng(1234)
    scenes = world.all_scenes()
    results = []
    for i in range(200):
        scene = scenes[int(rng.integers(len(scenes)))]
        results.append(score.judge(score.score_clip(world.render(scene, 10_000 + i)), scene))
    for key in ("color", "shape", "motion", "all"):
        accuracy = np.mean([r[key] for r in results])
        assert accuracy >= 0.99, (key, accuracy)
    # Every rendered clip is coherent in time.
    assert all(r["coherent"] for r in results)


def test_scorer_flags_an_object_that_jumps_between_frames():
    scene = world.Scene("red", "circle", "standing still")
    clip = world.render(scene, 7)
    assert score.score_clip(clip).coherent
    # The same object, every other frame shifted a quarter of the frame: colour and shape still read right.
    jumpy = clip.copy()
    jumpy[1::2] = np.roll(clip[1::2], world.WIDTH // 4, axis=2)
    reading = score.score_clip(jumpy)
    assert not reading.coherent and reading.max_jump >= 0.2, reading
    assert reading.color == "red" and reading.shape == "circle"
    # A clip whose object vanishes for a frame is not coherent either.
    gap = clip.copy()
    gap[8] = gap[8, 0, 0]
    assert not score.score_clip(gap).coherent


def test_scorer_sees_nothing_in_an_empty_clip():
    reading = score.score_clip(np.zeros((world.FRAMES, world.HEIGHT, world.WIDTH, 3), np.uint8))
    assert reading.color is None and not score.judge(reading, world.Scene("red", "circle", "growing"))["all"]


def test_fill_ratios_match_the_named_shapes():
    assert math.isclose(score.FILL_RATIOS["circle"], 0.785, abs_tol=1e-3)
