"""What a run reports while it trains: log lines, progress bars, and its seconds per step in
`runs/<name>/timings.json` (measured in this process, the first steps left out as warm-up)."""

from __future__ import annotations

import json
import pathlib
import sys
import time

from tqdm import tqdm


def log(message: str) -> None:
    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stdout)
    sys.stdout.flush()


def progress(total: int, initial: int, desc: str):
    interactive = sys.stderr.isatty()
    return tqdm(
        total=total, initial=initial, desc=desc, dynamic_ncols=True, mininterval=0.5 if interactive else 15.0,
        smoothing=0.05,
    )


class Timer:
    """Seconds per step over the steps run in this process (the first few are warm-up and skipped)."""

    def __init__(self, skip: int = 2):
        self.skip, self.count, self.start = skip, 0, None

    def tick(self) -> None:
        self.count += 1
        if self.count == self.skip:
            self.start = time.perf_counter()

    @property
    def per_step(self) -> float | None:
        if self.start is None or self.count <= self.skip:
            return None
        return (time.perf_counter() - self.start) / (self.count - self.skip)


def record_timing(run: pathlib.Path, phase: str, per_step: float | None) -> None:
    if per_step is None:
        return
    path = run / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    timings[phase] = round(per_step, 4)
    path.write_text(json.dumps(timings, indent=2) + "\n")
