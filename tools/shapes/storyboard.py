"""The storyboard scorer: a video made of parts, judged part by part and at every join.

A storyboard is a list of prompts of the shapes grammar for one object (one colour and shape, one background):
"a red circle moving right", "a red circle moving up", "a red circle growing". vgen makes it as one video
(`segments` in the request), each part continuing from the last frame of the part before. For each storyboard
the scorer checks what a viewer would:

- **motion**: each part shows its own motion. A part is read as a clip of the shapes world: the frame before it
  (its start) and its own frames, by `score.score_clip`.
- **identity**: the colour and shape hold across the parts: each part reads as the first part's colour and shape
  (beside that, `color`/`shape` record whether each reads as the prompt's).
- **join**: nothing jumps where one part meets the next: the object's centroid moves across the join (the last
  frame of a part to the first frame of the next) at most JOIN_SLACK times the larger of its moves over the frame
  pairs either side, plus JOIN_PIXELS; and its area changes by at most the same share of the larger neighbouring
  change plus JOIN_AREA (as a log ratio).
- **colour drift**: the object's mean colour in each part against the first part's, as ΔE76 (CIELAB).

Held-out storyboards (`held_out_storyboards`): every part's colour and shape are one of the held-out combinations'
(world.HELD_OUT), whose combination with that part's motion training never saw in at least one part, and the
order of the motions is one no training clip has (training clips have one motion each). The motions follow each
other as the world's geometry allows (`feasible`): a move needs the opposite move before it is made again, growing
and shrinking likewise, and growing needs the room it has before any move.

    python tools/shapes/storyboard.py --count 24 --json out.json   # the rates, and every storyboard's checks
    python tools/shapes/storyboard.py --strip strip.png --segment "a red circle moving right" --segment ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import score  # noqa: E402
import world  # noqa: E402

JOIN_SLACK = 2.0
JOIN_PIXELS = 1.5
JOIN_AREA = 0.15

def feasible(motions) -> bool:
    """Whether the world's geometry lets one object make these motions one after another. A move ends near the
    edge it went toward (the world's moves travel 30-45% of the frame), so the same move needs the opposite one in
    between; growing and shrinking change the size about a fixed centre, so neither repeats without the other
    between, and growing needs room on every side: only before any move. Standing still is always possible."""
    x = y = 0  # -1 / +1: near the left / right (top / bottom) edge; 0: not pushed to one
    size = 0  # -1 small after shrinking, +1 big after growing
    moved = False
    for m in motions:
        if m in ("moving left", "moving right"):
            to = -1 if m == "moving left" else 1
            if x == to:
                return False
            x, moved = to, True
        elif m in ("moving up", "moving down"):
            to = -1 if m == "moving up" else 1
            if y == to:
                return False
            y, moved = to, True
        elif m == "growing":
            if size == 1 or moved:
                return False
            size = 1
        elif m == "shrinking":
            if size == -1:
                return False
            size = -1
    return True


@dataclasses.dataclass(frozen=True)
class Storyboard:
    color: str
    shape: str
    motions: tuple[str, ...]
    background: str = world.DEFAULT_BACKGROUND

    def prompts(self) -> list[str]:
        return [world.Scene(self.color, self.shape, m, self.background).prompt() for m in self.motions]


def held_out_storyboards(count: int, parts: int = 3, seed: int = 38) -> list[Storyboard]:
    """`count` storyboards of `parts` parts, cycling over the held-out combinations: the held-out motion at a random
    place, the other motions drawn at random until the order is `feasible`; both backgrounds alternate."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        color, shape, held = world.HELD_OUT[i % len(world.HELD_OUT)]
        while True:
            motions = [str(m) for m in rng.choice(world.MOTIONS, size=parts)]
            motions[int(rng.integers(parts))] = held
            if feasible(motions):
                break
        background = list(world.BACKGROUNDS)[(i // len(world.HELD_OUT)) % len(world.BACKGROUNDS)]
        out.append(Storyboard(color, shape, tuple(motions), background))
    return out


def lab(rgb) -> np.ndarray:
    """sRGB (0..255, D65) to CIELAB."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = m @ linear / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def delta_e(a, b) -> float:
    return float(np.linalg.norm(lab(a) - lab(b)))


def tracks(video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The object's centroid (x, y) in pixels and area in pixels, per frame (NaN where it does not show)."""
    _, mask = score._object(np.asarray(video, dtype=np.float32))
    ys, xs = np.mgrid[0 : video.shape[1], 0 : video.shape[2]]
    area = mask.sum(axis=(1, 2)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (mask * xs).sum(axis=(1, 2)) / area
        cy = (mask * ys).sum(axis=(1, 2)) / area
    centre = np.stack([cx, cy], axis=1)
    centre[area == 0] = np.nan
    area[area == 0] = np.nan
    return centre, area


def join_ok(centre: np.ndarray, area: np.ndarray, at: int) -> tuple[bool, dict]:
    """Whether frame `at` (a part's first) continues frame `at - 1` within the motion of the frame pairs either
    side (`at - 2 → at - 1` and `at → at + 1`)."""
    def move(i: int) -> float:
        return float(np.hypot(*(centre[i + 1] - centre[i])))

    def grow(i: int) -> float:
        return float(abs(np.log(area[i + 1] / area[i])))

    here, around = move(at - 1), max(move(at - 2), move(at))
    size, sizes = grow(at - 1), max(grow(at - 2), grow(at))
    ok = bool(here <= JOIN_SLACK * around + JOIN_PIXELS and size <= JOIN_SLACK * sizes + JOIN_AREA)
    if not np.isfinite([here, around, size, sizes]).all():
        ok = False
    return ok, {"move_px": round(here, 2), "around_px": round(around, 2), "area_log": round(size, 3), "around_log": round(sizes, 3)}


def judge(video: np.ndarray, parts: list[dict], board: Storyboard) -> dict:
    """A storyboard's video (T, H, W, 3) against its storyboard; `parts` are the result's `segments` (each with
    `start_frame` and `frames`). Returns the verdicts and the measures behind them."""
    readings, joins = [], []
    centre, area = tracks(video)
    for k, part in enumerate(parts):
        start, frames = part["start_frame"], part["frames"]
        clip = video[max(start - 1, 0) : start + frames]
        readings.append(score.score_clip(clip))
        if k > 0:
            joins.append(join_ok(centre, area, start))
    first = readings[0]
    motion = [r.motion == m for r, m in zip(readings, board.motions)]
    identity = [r.color == first.color and r.shape == first.shape for r in readings]
    drift = [delta_e(r.mean_color, first.mean_color) for r in readings]
    verdict = {
        "motion": motion,
        "identity": all(identity),
        "joins": [ok for ok, _ in joins],
        "color": [r.color == board.color for r in readings],
        "shape": [r.shape == board.shape for r in readings],
    }
    measures = {
        "delta_e": [round(d, 2) for d in drift],
        "read": [{"color": r.color, "shape": r.shape, "motion": r.motion, "displacement": r.displacement,
                  "area_ratio": r.area_ratio} for r in readings],
        "join_measures": [m for _, m in joins],
    }
    return {"verdict": verdict, "measures": measures}


def rates(judged: list[dict]) -> dict:
    """The three targets' rates over storyboards: parts whose motion is right, storyboards whose identity holds,
    and joins without a jump; and the largest colour drift."""
    motions = [m for j in judged for m in j["verdict"]["motion"]]
    joins = [ok for j in judged for ok in j["verdict"]["joins"]]
    return {
        "storyboards": len(judged),
        "motion": round(sum(motions) / max(len(motions), 1), 4),
        "identity": round(sum(j["verdict"]["identity"] for j in judged) / max(len(judged), 1), 4),
        "join": round(sum(joins) / max(len(joins), 1), 4),
        "max_delta_e": max((max(j["measures"]["delta_e"]) for j in judged), default=0.0),
    }


def make(engine, board: Storyboard, seed: int, **request) -> tuple[np.ndarray, list[dict]]:
    """The storyboard's video through vgen, and its parts as the result lists them."""
    video = engine.submit(board.prompts(), seed=seed, **request).wait()
    return np.asarray(video.frames), video.metadata["segments"]


def strip(video: np.ndarray, parts: list[dict], every: int = 4, scale: int = 2) -> np.ndarray:
    """A picture of a storyboard's video: every `every`-th frame side by side, `scale` times enlarged, a gray gap
    between frames and a white one where a part begins."""
    tiles = []
    starts = {p["start_frame"] for p in parts[1:]}
    for t in range(0, video.shape[0], every):
        if tiles:
            began = any(t - every < s <= t for s in starts)
            tiles.append(np.full((video.shape[1], 3 if began else 1, 3), 255 if began else 96, np.uint8))
        tiles.append(video[t])
    picture = np.concatenate(tiles, axis=1)
    return picture.repeat(scale, axis=0).repeat(scale, axis=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default="shapes-tiny",
        help="a model name (default shapes-tiny); $VGEN_MODELS=FOLDER puts that folder's models first",
    )
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--strip", metavar="PNG", help="make the storyboard of --segment's prompts and save it as a strip")
    parser.add_argument("--segment", action="append", default=[], help="a part's prompt, for --strip (repeat)")
    parser.add_argument("--seed", type=int, default=0, help="the seed for --strip")
    parser.add_argument("--parts", type=int, default=3)
    parser.add_argument("--json", help="write every storyboard's verdict and measures here")
    parser.add_argument("--guidance", type=float, help="the guidance scale (the model's default when left out)")
    parser.add_argument("--steps", type=int, help="the denoising steps (the model's default when left out)")
    args = parser.parse_args(argv)
    import vgen

    engine = vgen.Engine(devices=["cpu"])
    model = args.model
    if args.strip:
        from PIL import Image

        video = engine.submit(args.segment, seed=args.seed, model=model).wait()
        frames = np.asarray(video.frames)
        Image.fromarray(strip(frames, video.metadata["segments"])).save(args.strip, optimize=True)
        scenes = [world.parse(p) for p in args.segment]
        board = Storyboard(scenes[0].color, scenes[0].shape, tuple(s.motion for s in scenes), scenes[0].background)
        print(json.dumps(judge(frames, video.metadata["segments"], board)))
        return 0
    judged = []
    for i, board in enumerate(held_out_storyboards(args.count, args.parts)):
        video, parts = make(engine, board, seed=i, model=model, guidance_scale=args.guidance, steps=args.steps)
        judged.append({"prompts": board.prompts(), "seed": i, **judge(video, parts, board)})
    result = rates(judged)
    print(json.dumps(result))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"rates": result, "storyboards": judged}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
