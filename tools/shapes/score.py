"""The objective prompt-adherence scorer for the shapes world.

Reads a clip (T, H, W, 3) of RGB frames and says which colour, shape and motion it shows:

- background: the per-frame median of the border pixels;
- object: the pixels whose RGB distance from the background exceeds half the object's contrast
  (per frame the mean of the 8 most distant pixels, median over frames, at least 40 of 255), i.e. the 50%-coverage outline;
- colour: the named colour nearest (RGB distance) to the mean colour of the object's core pixels
  (those at least as far from the background as the median object pixel);
- shape: the median over frames of the bounding box's fill ratio (area / box area), nearest of
  circle 0.785, square 1.0, triangle 0.5;
- motion: the area ratio of the last three frames to the first three; >= 1.5 is "growing", <= 1/1.5
  "shrinking"; otherwise the centroid's displacement over the same frames: at least 1/8 of the frame
  in its larger component is "moving left/right/up/down", else "standing still".

Thresholds sit halfway between what the world's semantics demand (moving >= 1/4 frame; area >= 2x)
and nothing at all.

Beside the three attributes it measures temporal coherence, which the prompt does not name but every clip of the
world has: the object is in every frame, and its centroid moves at most MAX_JUMP of the frame between
consecutive frames (the world's fastest motion is 45% of the frame over 16 frames, under 3% a frame). A model
that draws each frame's object on its own passes colour and often shape while its object jumps about.

Usable as a library (`score_clip`, `judge`) and as a CLI on PNG folders or .npy arrays:

    python tools/shapes/score.py clip.npy --prompt "a red circle moving left"
    python tools/shapes/score.py frames_dir/ another.npy
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import world  # noqa: E402

FILL_RATIOS = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}
MIN_CONTRAST = 40.0
AREA_TREND = 1.5
MIN_TRAVEL = 1 / 8
EDGE_FRAMES = 3
MAX_JUMP = 0.08


@dataclasses.dataclass
class Reading:
    """What the scorer sees in a clip."""

    color: str | None
    shape: str | None
    motion: str | None
    mean_color: list[float]
    fill_ratio: float
    area_ratio: float
    displacement: list[float]  # (dx, dy) in fractions of the frame
    object_fraction: float  # mean fraction of the frame covered by the object
    # Temporal coherence: the fraction of frames that show the object, and the largest centroid move between
    # consecutive frames that show it, in fractions of the frame's larger side.
    coverage: float = 0.0
    max_jump: float = 0.0

    @property
    def coherent(self) -> bool:
        return self.coverage == 1.0 and self.max_jump <= MAX_JUMP

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _background(clip: np.ndarray) -> np.ndarray:
    border = np.concatenate(
        [clip[:, 0, :, :], clip[:, -1, :, :], clip[:, 1:-1, 0, :], clip[:, 1:-1, -1, :]], axis=1
    )
    return np.median(border, axis=1)  # (T, 3)


def _object(clip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's colour distance from its frame's background, and the object's mask: the pixels farther than
    half the object's contrast (per frame, the mean of its 8 most distant pixels; the median over frames)."""
    frames = clip.shape[0]
    background = _background(clip)
    distance = np.linalg.norm(clip - background[:, None, None, :], axis=-1)  # (T, H, W)
    top = -np.partition(-distance.reshape(frames, -1), 8, axis=1)[:, :8]
    contrast = max(float(np.median(top.mean(axis=1))), MIN_CONTRAST)
    return distance, distance > contrast / 2


def _color_name(pixels: np.ndarray) -> str:
    names = list(world.COLORS)
    palette = np.array([world.COLORS[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(np.linalg.norm(palette - pixels.mean(axis=0), axis=1)))]


def _fill(mask: np.ndarray) -> float:
    """The share of its bounding box that a (non-empty) object mask fills."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return float(mask.sum() / ((rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)))


def _shape_name(fill: float) -> str:
    return min(FILL_RATIOS, key=lambda s: abs(FILL_RATIOS[s] - fill))


def score_clip(clip: np.ndarray) -> Reading:
    """Read the colour, shape and motion shown by a (T, H, W, 3) clip (uint8, or floats in 0..255)."""
    clip = np.asarray(clip, dtype=np.float32)
    if clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3), got {clip.shape}")
    frames, height, width, _ = clip.shape
    distance, mask = _object(clip)
    areas = mask.sum(axis=(1, 2)).astype(np.float64)
    present = areas > 0
    if not present.any():
        return Reading(None, None, None, [0.0, 0.0, 0.0], 0.0, 1.0, [0.0, 0.0], 0.0, 0.0, 0.0)

    core = mask & (distance >= np.median(distance[mask]))
    mean_color = clip[core].mean(axis=0)
    color = _color_name(clip[core])

    ys, xs = np.mgrid[0:height, 0:width]
    fills, cx, cy = [], np.full(frames, np.nan), np.full(frames, np.nan)
    for f in np.flatnonzero(present):
        m = mask[f]
        fills.append(_fill(m))
        cx[f], cy[f] = xs[m].mean(), ys[m].mean()
    fill = float(np.median(fills))
    shape = _shape_name(fill)

    shown = np.flatnonzero(present)
    jumps = np.hypot(np.diff(cx[shown]) / max(width, height), np.diff(cy[shown]) / max(width, height))
    first = np.flatnonzero(present)[:EDGE_FRAMES]
    last = np.flatnonzero(present)[-EDGE_FRAMES:]
    area_ratio = float(areas[last].mean() / areas[first].mean())
    dx = float(cx[last].mean() - cx[first].mean()) / width
    dy = float(cy[last].mean() - cy[first].mean()) / height
    if area_ratio >= AREA_TREND:
        motion = "growing"
    elif area_ratio <= 1 / AREA_TREND:
        motion = "shrinking"
    elif max(abs(dx), abs(dy)) >= MIN_TRAVEL:
        if abs(dx) >= abs(dy):
            motion = "moving right" if dx > 0 else "moving left"
        else:
            motion = "moving down" if dy > 0 else "moving up"
    else:
        motion = "standing still"
    return Reading(
        color=color,
        shape=shape,
        motion=motion,
        mean_color=[round(float(v), 1) for v in mean_color],
        fill_ratio=round(fill, 3),
        area_ratio=round(area_ratio, 3),
        displacement=[round(dx, 3), round(dy, 3)],
        object_fraction=round(float(areas.mean() / (height * width)), 4),
        coverage=round(float(present.mean()), 3),
        max_jump=round(float(jumps.max()) if len(jumps) else 0.0, 3),
    )


def judge(reading: Reading, scene: world.Scene) -> dict[str, bool]:
    """Which attributes of the scene the reading gets right, and whether all three are."""
    verdict = {
        "color": reading.color == scene.color,
        "shape": reading.shape == scene.shape,
        "motion": reading.motion == scene.motion,
    }
    verdict["all"] = all(verdict.values())
    verdict["coherent"] = reading.coherent  # reported beside the three; not part of "all"
    return verdict


FIRST_FRAME_PSNR = 24.0  # dB: how close an image-to-video clip's frame 0 must be to the image it was given
FIRST_FRAME_OFFSET = 3.0  # pixels: how far the object's centroid in frame 0 may be from the image's


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8-range images, in dB (inf when equal)."""
    error = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if error == 0 else 10 * np.log10(255.0**2 / error)


def frame_attributes(clip: np.ndarray) -> list[tuple[str | None, str | None]]:
    """The colour and shape each frame of a clip shows on its own ((None, None) for a frame without the object)."""
    clip = np.asarray(clip, dtype=np.float32)
    distance, mask = _object(clip)
    out = []
    for f in range(clip.shape[0]):
        m = mask[f]
        if not m.any():
            out.append((None, None))
            continue
        core = m & (distance[f] >= np.median(distance[f][m]))
        out.append((_color_name(clip[f][core]), _shape_name(_fill(m))))
    return out


def centroid(image: np.ndarray) -> tuple[float, float] | None:
    """The object's centroid (x, y) in pixels in one (H, W, 3) image, or None when none shows."""
    _, mask = _object(np.asarray(image, dtype=np.float32)[None])
    if not mask[0].any():
        return None
    ys, xs = np.nonzero(mask[0])
    return float(xs.mean()), float(ys.mean())


def judge_image(clip: np.ndarray, image: np.ndarray, scene: world.Scene) -> tuple[dict, dict]:
    """An image-to-video clip against the image it started from and its prompt's scene: the three attributes as
    `judge` reads them; `kept`, the colour and shape right in every frame; `first_frame`, frame 0 within
    FIRST_FRAME_PSNR of the image with the object within FIRST_FRAME_OFFSET pixels of where the image has it; and
    `all`, every one of them. Returns the verdict and the measures behind it."""
    verdict = judge(score_clip(clip), scene)
    per_frame = frame_attributes(clip)
    verdict["kept"] = all(c == scene.color and s == scene.shape for c, s in per_frame)
    given, made = centroid(image), centroid(clip[0])
    offset = float("inf") if given is None or made is None else float(np.hypot(given[0] - made[0], given[1] - made[1]))
    similarity = psnr(clip[0], image)
    verdict["first_frame"] = bool(similarity >= FIRST_FRAME_PSNR and offset <= FIRST_FRAME_OFFSET)
    verdict["all"] = verdict["all"] and verdict["kept"] and verdict["first_frame"]
    measures = {
        "psnr": round(similarity, 2), "offset_px": round(offset, 2),
        "frames_kept": int(sum(c == scene.color and s == scene.shape for c, s in per_frame)),
    }
    return verdict, measures


def load_clip(path: str | pathlib.Path) -> np.ndarray:
    """A clip from a .npy array (T, H, W, 3) or a folder of PNG frames (sorted by name)."""
    path = pathlib.Path(path)
    if path.is_dir():
        from PIL import Image

        frames = sorted(path.glob("*.png"))
        if not frames:
            raise ValueError(f"no PNG frames in {path}")
        return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in frames])
    clip = np.load(path)
    if clip.dtype != np.uint8 and clip.max() <= 1.0 + 1e-6:
        clip = clip * 255.0
    return clip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clips", nargs="+", help=".npy (T,H,W,3) arrays or folders of PNG frames")
    parser.add_argument("--prompt", help="the prompt the clips should obey; adds a verdict and sets the exit code")
    args = parser.parse_args(argv)
    scene = world.parse(args.prompt) if args.prompt else None
    ok = True
    for path in args.clips:
        reading = score_clip(load_clip(path))
        record = {"clip": str(path), **reading.as_dict()}
        if scene is not None:
            record["verdict"] = judge(reading, scene)
            ok &= record["verdict"]["all"]
        print(json.dumps(record))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
