"""What step k of a phase draws, and its learning rate.

Both depend only on (seed, phase, step): a run resumed from a checkpoint repeats the steps of an uninterrupted
one (checked with fixed threads: identical weights after a SIGTERM mid-phase and a rerun). The phases number
their draws 1 (VAE), 2 (the dataset's clips, dataset.py), 3 (transformer), 4 (decoder), 5 (the decoder's focus
measure).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from plan import Plan


def step_random(plan: Plan, phase: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    rng = np.random.default_rng([plan.seed, phase, step])
    return rng, torch.Generator().manual_seed(int(rng.integers(2**62)))


def learning_rate(base: float, warmup: int, total: int, step: int, decay: float = 0.0) -> float:
    """Linear warmup, then a cosine from `base` to a tenth of it: over all the steps left, or, when `decay` > 0,
    over only that last share of the `total` steps, the rate held at `base` until then."""
    if step < warmup:
        return base * (step + 1) / warmup
    start = max(warmup, round(total * (1 - decay))) if decay > 0 else warmup
    progress_ = max(step - start, 0) / max(total - start, 1)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress_, 1.0))))
