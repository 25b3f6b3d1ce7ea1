"""Progress bars for ``vgen.generate``: tqdm's when it is installed (``tqdm.auto``, so a notebook gets its widget), a
plain one on stderr otherwise. Both show denoising steps as the bar, with the stage and the engine's ETA beside it.
"""

from __future__ import annotations

import importlib
import sys
import time
from typing import TYPE_CHECKING, Any, Optional, TextIO

if TYPE_CHECKING:
    from . import Status


class ProgressBar:
    """What ``generate`` needs from a bar: show a status, then close."""

    def update(self, status: Status) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _describe(status: Status) -> str:
    if status.done:
        return status.state
    stage = "queued" if status.state == "queued" else status.stage
    if status.eta_seconds is not None:
        return f"{stage}, eta {status.eta_seconds:.1f}s"
    return stage


class TqdmBar(ProgressBar):
    def __init__(self, tqdm: Any, desc: str) -> None:
        self._bar = tqdm(total=None, desc=desc, unit="step", leave=True)

    def update(self, status: Status) -> None:
        if status.steps and self._bar.total != status.steps:
            self._bar.total = status.steps
        if status.step != self._bar.n:
            self._bar.n = status.step
        self._bar.set_postfix_str(_describe(status), refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


class PlainBar(ProgressBar):
    """One line, redrawn with a carriage return on a terminal; elsewhere (a log file, a pipe) a new line only when
    the step or stage changes, so that a log stays readable."""

    WIDTH = 24

    def __init__(self, desc: str, stream: Optional[TextIO] = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._desc = desc
        self._start = time.monotonic()
        self._last_key: Optional[tuple[int, str]] = None
        self._drawn = False

    def update(self, status: Status) -> None:
        key = (status.step, _describe(status).split(",")[0])
        if not self._tty and key == self._last_key:
            return
        self._last_key = key
        filled = int(round(self.WIDTH * min(max(status.progress, 0.0), 1.0)))
        bar = "#" * filled + " " * (self.WIDTH - filled)
        elapsed = time.monotonic() - self._start
        line = (
            f"{self._desc}: [{bar}] {status.progress:4.0%} step {status.step}/{status.steps} "
            f"{elapsed:.1f}s {_describe(status)}"
        )
        if self._tty:
            self._stream.write("\r" + line + "\033[K")
        else:
            self._stream.write(line + "\n")
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._tty and self._drawn:
            self._stream.write("\n")
            self._stream.flush()


def make_bar(desc: str) -> ProgressBar:
    """tqdm's bar when tqdm can be imported, else the plain one."""
    try:
        # Imported by name so that type checkers need no stubs for an optional dependency.
        tqdm = importlib.import_module("tqdm.auto").tqdm
    except ImportError:
        return PlainBar(desc)
    return TqdmBar(tqdm, desc)
