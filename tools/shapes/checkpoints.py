"""Resumable phases: checkpoints and requested stops.

A phase writes its checkpoint every `checkpoint_minutes` and after the step during which SIGTERM or SIGINT
arrived, then ends by raising Stop; rerunning the same command resumes from that checkpoint. Since every step's
data and noise depend only on (seed, phase, step) (schedule.py), a resumed run computes the steps an
uninterrupted one would. A kill without a signal loses at most the steps since the last checkpoint.
"""

from __future__ import annotations

import os
import pathlib
import signal
import time

import torch


class Stop(Exception):
    """SIGTERM / SIGINT arrived: the current step was finished and checkpointed."""


STOP: dict[str, str | None] = {"signal": None}


def request_stop(signum, frame):
    # Only note it: the training loops finish the current step, checkpoint, then raise Stop.
    STOP["signal"] = signal.Signals(signum).name


def stop_requested() -> bool:
    return STOP["signal"] is not None


def save_atomic(state: dict, path: pathlib.Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


class Checkpoints:
    """A phase's checkpoint file: written every `minutes` and when a stop was requested, after which the phase
    ends by raising Stop. The last step is never checkpointed: the phase saves its result instead."""

    def __init__(self, path: pathlib.Path, minutes: float, phase: str):
        self.path, self.minutes, self.phase, self.saved = path, minutes, phase, time.monotonic()

    def after_step(self, done: int, total: int, state) -> None:
        """`state()` makes the dict to save; called only when one is due."""
        if done >= total or (time.monotonic() - self.saved < self.minutes * 60 and not stop_requested()):
            return
        save_atomic(state(), self.path)
        self.saved = time.monotonic()
        if stop_requested():
            raise Stop(f"{self.phase} checkpoint at step {done}")
