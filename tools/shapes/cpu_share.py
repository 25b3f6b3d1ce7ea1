"""Sharing the CPU: how many threads a step should use while other processes compete for the cores.

On this 2-core machine, with two OpenMP threads and a compiler busy on a core, each parallel region waits for
the thread that the scheduler has parked behind the compiler (more so under `nice -n 19`): a VAE step measured
15-45 s with 2 threads against 3.5-4.5 s with 1 thread, and 2.0 s with 2 threads on an idle machine.
`ThreadGovernor` therefore uses all its threads while the rest of the machine is idle and one thread while
other processes use more than half a core, judged from /proc/stat over the last step.

Floating-point results can differ in the last bits between thread counts, so a run with `--threads auto` is
reproducible in its data, noise and schedule but not bit for bit; a fixed count is bit-exact.
"""

from __future__ import annotations

import os
import time

import torch

BUSY_OTHERS = 0.5  # cores used by other processes above which one thread is faster
MIN_INTERVAL = 1.0  # seconds between decisions


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values)
    return total - idle, total


def _own_ticks() -> float:
    times = os.times()
    return (times.user + times.system) * os.sysconf("SC_CLK_TCK")


class ThreadGovernor:
    """Call `adjust()` between steps; it sets torch's thread count. `fixed` pins the count instead."""

    def __init__(self, max_threads: int = 2, fixed: bool = False):
        self.max_threads = max_threads
        self.fixed = fixed or not os.path.exists("/proc/stat")
        self.threads = max_threads
        torch.set_num_threads(max_threads)
        self.others = 0.0
        self._last = (*_cpu_ticks(), _own_ticks(), time.monotonic())

    def adjust(self) -> int:
        if self.fixed:
            return self.threads
        busy, total, own, now = (*_cpu_ticks(), _own_ticks(), time.monotonic())
        last_busy, last_total, last_own, last_time = self._last
        if now - last_time < MIN_INTERVAL or total <= last_total:
            return self.threads
        cores = os.cpu_count() or 1
        span = (total - last_total) / cores  # ticks of wall time
        self.others = max(0.0, ((busy - last_busy) - (own - last_own)) / span)
        self._last = (busy, total, own, now)
        threads = 1 if self.others > BUSY_OTHERS else self.max_threads
        if threads != self.threads:
            torch.set_num_threads(threads)
            self.threads = threads
        return self.threads


_governor: ThreadGovernor | None = None


def configure(threads: str | int = "auto", max_threads: int = 2) -> ThreadGovernor:
    """The process-wide governor: "auto" adapts between 1 and max_threads; a number pins it."""
    global _governor
    if str(threads) == "auto":
        _governor = ThreadGovernor(max_threads)
    else:
        _governor = ThreadGovernor(int(threads), fixed=True)
    return _governor


def adjust() -> int:
    """Re-decide the thread count (call between steps); a no-op until `configure` is called."""
    return _governor.adjust() if _governor is not None else torch.get_num_threads()
