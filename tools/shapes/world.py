"""The shapes world: the prompt grammar and the procedural renderer.

A prompt is ``a {color} {shape} {motion}`` optionally followed by ``on a {background} background``
(case-insensitive, punctuation ignored). A clip is 17 frames (1 + 4k, the Wan VAE's rule) of 64x64
uint8 RGB at 8 fps showing one flat-coloured object that obeys the prompt:

- the object is fully inside the frame and about 15-35% of the frame's width across
  (the diameter of a circle, the side of an axis-aligned square or of an equilateral triangle pointing up);
- "moving X": its centre travels 30-45% of the frame (at least a quarter) in that direction;
- "standing still": it neither moves nor changes size;
- "growing" / "shrinking": its area changes by 2.4x-3.1x (at least 2x) in that direction, about a fixed centre;
- start positions and sizes vary with the seed.

Edges are anti-aliased by 4x4 supersampling; the object's colour itself is flat.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re

import numpy as np

FRAMES = 17
HEIGHT = 64
WIDTH = 64
FPS = 8

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "white": (255, 255, 255),
    "orange": (255, 128, 0),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = (
    "moving left",
    "moving right",
    "moving up",
    "moving down",
    "standing still",
    "growing",
    "shrinking",
)
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "gray": (128, 128, 128)}
DEFAULT_BACKGROUND = "black"

# Colour x shape x motion combinations that never appear in training (for both backgrounds).
# Every colour, shape and motion, and every pair of them, still appears in training with other partners,
# so these measure generalisation to unseen combinations of known words.
HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("red", "triangle", "moving up"),
    ("green", "circle", "shrinking"),
    ("blue", "square", "moving left"),
    ("yellow", "triangle", "growing"),
    ("cyan", "circle", "moving right"),
    ("magenta", "square", "standing still"),
    ("white", "triangle", "moving down"),
    ("orange", "circle", "moving up"),
    ("red", "square", "growing"),
    ("green", "triangle", "moving left"),
    ("blue", "circle", "standing still"),
    ("yellow", "square", "moving down"),
)

# Every word the grammar can produce, in a fixed order (the tokenizer's vocabulary follows it).
VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys(
        ["a", *COLORS, *SHAPES, *(w for m in MOTIONS for w in m.split()), "on", *BACKGROUNDS, "background"]
    )
)


@dataclasses.dataclass(frozen=True)
class Scene:
    """What a prompt asks for."""

    color: str
    shape: str
    motion: str
    background: str = DEFAULT_BACKGROUND

    @property
    def combination(self) -> tuple[str, str, str]:
        return (self.color, self.shape, self.motion)

    @property
    def held_out(self) -> bool:
        return self.combination in HELD_OUT

    def prompt(self, name_background: bool | None = None) -> str:
        """The canonical prompt; the background is named when it is not the default, or when asked to."""
        text = f"a {self.color} {self.shape} {self.motion}"
        if name_background or (name_background is None and self.background != DEFAULT_BACKGROUND):
            text += f" on a {self.background} background"
        return text


def words(prompt: str) -> list[str]:
    """Lower-cased words with punctuation removed: the same normalisation the tokenizer applies."""
    return re.sub(r"[^\w\s]", " ", prompt.lower()).split()


def parse(prompt: str) -> Scene:
    """Parse a prompt of the grammar into a Scene; raises ValueError on anything else."""
    text = " ".join(words(prompt))
    pattern = (
        r"^a (?P<color>{c}) (?P<shape>{s}) (?P<motion>{m})(?: on a (?P<bg>{b}) background)?$".format(
            c="|".join(COLORS), s="|".join(SHAPES), m="|".join(MOTIONS), b="|".join(BACKGROUNDS)
        )
    )
    match = re.match(pattern, text)
    if match is None:
        raise ValueError(f"not a prompt of the shapes grammar: {prompt!r}")
    return Scene(match["color"], match["shape"], match["motion"], match["bg"] or DEFAULT_BACKGROUND)


def all_scenes() -> list[Scene]:
    """All 168 x 2 scenes, in a fixed order."""
    return [
        Scene(c, s, m, b) for c, s, m, b in itertools.product(COLORS, SHAPES, MOTIONS, BACKGROUNDS)
    ]


def training_scenes() -> list[Scene]:
    return [s for s in all_scenes() if not s.held_out]


def held_out_scenes() -> list[Scene]:
    return [s for s in all_scenes() if s.held_out]


# Supersampling factor for anti-aliased edges.
_SS = 4


def _coverage(shape: str, cx: float, cy: float, size: float) -> tuple[int, int, np.ndarray]:
    """(top, left, fractions): the fraction of each pixel covered by the shape of width `size` whose centroid is
    (cx, cy), in pixels, over the window of pixels from (top, left) that it can touch. Every pixel outside the
    window is uncovered.

    The window is the shape's bounding box and one more pixel on each side. Each supersample in it is computed
    as it would be over the whole frame, so a render is the same to the bit as one that supersamples every
    pixel (test_world.py), for a fraction of the work (the training phases render every clip they see)."""
    n = _SS
    left, right, top, bottom = _extent(shape, size)
    x0, x1 = max(math.floor(cx - left) - 1, 0), min(math.ceil(cx + right) + 1, WIDTH)
    y0, y1 = max(math.floor(cy - top) - 1, 0), min(math.ceil(cy + bottom) + 1, HEIGHT)
    x1, y1 = max(x1, x0), max(y1, y0)
    ys = (np.arange(y0 * n, y1 * n) + 0.5) / n
    xs = (np.arange(x0 * n, x1 * n) + 0.5) / n
    x = xs[None, :] - cx
    y = ys[:, None] - cy
    if shape == "circle":
        inside = x * x + y * y <= (size / 2) ** 2
    elif shape == "square":
        inside = (np.abs(x) <= size / 2) & (np.abs(y) <= size / 2)
    elif shape == "triangle":
        # Equilateral, pointing up; the centroid is a third of the height above the base.
        h = size * math.sqrt(3) / 2
        top, base = -2 * h / 3, h / 3
        half_width = (y - top) / h * (size / 2)
        inside = (y >= top) & (y <= base) & (np.abs(x) <= half_width)
    else:
        raise ValueError(shape)
    return y0, x0, inside.reshape(y1 - y0, n, x1 - x0, n).mean(axis=(1, 3))


def _extent(shape: str, size: float) -> tuple[float, float, float, float]:
    """Distances from the centroid to the left, right, top and bottom of the shape."""
    if shape == "triangle":
        h = size * math.sqrt(3) / 2
        return size / 2, size / 2, 2 * h / 3, h / 3
    return size / 2, size / 2, size / 2, size / 2


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """Per-frame centroid (x, y) and size in pixels."""

    x: np.ndarray
    y: np.ndarray
    size: np.ndarray


def trajectory(scene: Scene, rng: np.random.Generator) -> Trajectory:
    """A random trajectory that obeys the scene's motion and keeps the object inside the frame."""
    margin = 1.0
    t = np.linspace(0.0, 1.0, FRAMES)
    if scene.motion == "growing" or scene.motion == "shrinking":
        small = rng.uniform(0.15, 0.20) * WIDTH
        large = small * rng.uniform(1.55, 1.75)
        start, end = (small, large) if scene.motion == "growing" else (large, small)
        # Scale linearly in width: the area trend is monotonic.
        size = start + (end - start) * t
        big = max(start, end)
    else:
        size = np.full(FRAMES, rng.uniform(0.15, 0.35) * WIDTH)
        big = size[0]
    left, right, top, bottom = _extent(scene.shape, big)
    lo_x, hi_x = left + margin, WIDTH - right - margin
    lo_y, hi_y = top + margin, HEIGHT - bottom - margin
    if scene.motion.startswith("moving"):
        travel = rng.uniform(0.30, 0.45) * WIDTH
        direction = scene.motion.split()[1]
        dx = {"left": -travel, "right": travel}.get(direction, 0.0)
        dy = {"up": -travel, "down": travel}.get(direction, 0.0)
        x0 = rng.uniform(lo_x - min(dx, 0), hi_x - max(dx, 0))
        y0 = rng.uniform(lo_y - min(dy, 0), hi_y - max(dy, 0))
        x = x0 + dx * t
        y = y0 + dy * t
    else:
        x = np.full(FRAMES, rng.uniform(lo_x, hi_x))
        y = np.full(FRAMES, rng.uniform(lo_y, hi_y))
    return Trajectory(x=x, y=y, size=size)


def render(scene: Scene, seed: int, frames: range = range(FRAMES)) -> np.ndarray:
    """Render a scene as a (FRAMES, HEIGHT, WIDTH, 3) uint8 RGB clip; the same seed gives the same clip.

    With `frames`, only those frames of that clip, in order (the seed decides the whole trajectory first)."""
    if not frames or frames.step != 1 or frames.start < 0 or frames.stop > FRAMES:
        raise ValueError(f"frames {frames}: expected a non-empty range of consecutive frames within 0..{FRAMES}")
    rng = np.random.default_rng(seed)
    path = trajectory(scene, rng)
    background = np.array(BACKGROUNDS[scene.background], dtype=np.float32)
    color = np.array(COLORS[scene.color], dtype=np.float32)
    clip = np.empty((len(frames), HEIGHT, WIDTH, 3), dtype=np.uint8)
    clip[:] = np.round(background).astype(np.uint8)  # what an uncovered pixel composites to
    for i, f in enumerate(frames):
        top, left, alpha = _coverage(scene.shape, path.x[f], path.y[f], path.size[f])
        window = clip[i, top : top + alpha.shape[0], left : left + alpha.shape[1]]
        window[:] = np.round(background + alpha[..., None] * (color - background)).astype(np.uint8)
    return clip


def random_scene(rng: np.random.Generator, scenes: list[Scene] | None = None) -> Scene:
    scenes = scenes if scenes is not None else training_scenes()
    return scenes[int(rng.integers(len(scenes)))]
