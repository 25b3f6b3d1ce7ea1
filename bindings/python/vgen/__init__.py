"""vgen: native text-to-video generation on libtorch.

The engine is written in Rust; this package is a thin layer over it. It uses the libtorch of the ``torch`` wheel
you already have: importing torch first loads that libtorch, and the extension links to it instead of shipping a
second copy.

Example:
    >>> import vgen
    >>> with vgen.Engine() as engine:
    ...     job = engine.submit("a red circle moving right", seed=1)
    ...     video = job.wait()
    ...     video.save("clip.mp4")
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch as _torch  # noqa: F401  (loads libtorch before the extension needs it)

from . import _vgen
from ._vgen import __version__, devices, libtorch_version

__all__ = [
    "__version__", "devices", "libtorch_version", "Engine", "Job", "Status", "Video", "VgenError",
] + [name for name in dir() if name.endswith("Error")]

VgenError = _vgen.VgenError


def _class_name(code: str) -> str:
    return "".join(part.capitalize() for part in code.split("_")) + "Error"


# One exception class per error code, each a VgenError with `.code` and `.retryable`. Bad arguments are also
# ValueErrors, timeouts TimeoutErrors, as Python users expect.
_BASES = {"invalid_argument": (ValueError,), "timeout": (TimeoutError,), "not_found": (LookupError,)}
_ERRORS: dict[str, type] = {}
for _code, _number, _retryable in _vgen.error_codes():
    _cls = type(_class_name(_code), (VgenError, *_BASES.get(_code, ())), {"code": _code, "retryable": _retryable})
    _ERRORS[_code] = _cls
    globals()[_cls.__name__] = _cls
    __all__.append(_cls.__name__)


def _raise(e: BaseException) -> None:
    """Re-raises a native VgenError as its code's subclass."""
    code = getattr(e, "code", None)
    cls = _ERRORS.get(code)
    if cls is None:
        raise e
    err = cls(*e.args)
    err.code, err.retryable, err.retry_after_ms = code, getattr(e, "retryable", False), getattr(e, "retry_after_ms", None)
    raise err from None


def _call(f, *args, **kwargs):
    try:
        return f(*args, **kwargs)
    except VgenError as e:
        _raise(e)


@dataclass(frozen=True)
class Status:
    """A snapshot of a job, as ``Job.status()`` returns it."""

    id: int
    state: str
    stage: str
    progress: float
    step: int
    steps: int
    queue_position: int
    eta_seconds: Optional[float]
    attempts: int
    error: Optional[tuple]
    cache_hit: bool

    @property
    def done(self) -> bool:
        return self.state in ("succeeded", "failed", "cancelled")


class Video:
    """A finished video. ``frames`` is a read-only numpy ``uint8`` array ``(T, H, W, 3)`` over the engine's buffer
    (no copy)."""

    def __init__(self, native: Any):
        self._native = native
        self.fps: float = native.fps
        self.metadata: dict = json.loads(native.metadata_json)

    @property
    def frames(self):
        import numpy

        return numpy.asarray(self._native)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the video by extension: .mp4 (H.264), .gif, .png (animated), or a folder ending in /."""
        _call(self._native.save, os.fspath(path))

    def _repr_html_(self) -> str:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "video.gif")
            self.save(path)
            with open(path, "rb") as f:
                data = base64.b64encode(f.read()).decode()
        title = html.escape(str(self.metadata.get("prompt", "")))
        return f'<img src="data:image/gif;base64,{data}" title="{title}"/>'

    def __repr__(self) -> str:
        t, h, w, _ = self.frames.shape
        return f"<vgen.Video {t} frames {w}x{h} at {self.fps} fps>"


class Job:
    """A submitted job: poll it, read its events, wait for it (or ``await`` it), cancel it."""

    def __init__(self, engine: "Engine", job_id: int):
        self._engine = engine
        self.id = job_id

    def status(self) -> Status:
        return Status(**_call(self._engine._native.poll, self.id))

    def events(self, since: int = 0) -> list[dict]:
        return json.loads(_call(self._engine._native.events, self.id, since))

    def cancel(self) -> bool:
        """Cancels the job; False if it had already ended."""
        return _call(self._engine._native.cancel, self.id)

    def wait(self, timeout: Optional[float] = None) -> Video:
        """Blocks (without holding the GIL) until the job ends; returns its video or raises its error."""
        _call(self._engine._native.wait, self.id, timeout)
        return Video(_call(self._engine._native.result, self.id))

    def __await__(self):
        return self._wait_async().__await__()

    async def _wait_async(self) -> Video:
        # The wait runs on a worker thread, so the event loop never blocks.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.wait)

    def __repr__(self) -> str:
        return f"<vgen.Job {self.id} {self.status().state}>"


class Engine:
    """An embedded engine. Use it as a context manager; leaving the block shuts it down.

    Args:
        devices: e.g. ``["cpu"]`` or ``["cuda:0"]``; None for auto (every GPU, else the CPU).
        workers_per_device: jobs run at once on each device.
        queue_capacity: jobs that may wait; beyond it submit raises ``QueueFullError``.
        **config: any other field of the engine configuration (``retry``, ``breaker``, ``default_deadline_ms``,
            ``retention``, ``cache``, ``limits``, ...); unknown fields raise ``InvalidArgumentError``.
    """

    def __init__(self, devices: Optional[list[str]] = None, workers_per_device: int = 1, queue_capacity: int = 1024, **config):
        config = {"devices": devices or [], "workers_per_device": workers_per_device, "queue_capacity": queue_capacity, **config}
        self._native = _call(_vgen.Engine, json.dumps(config))

    def submit(
        self,
        prompt: str,
        *,
        negative_prompt: Optional[str] = None,
        width: Optional[int] = None,
        height: Optional[int] = None,
        num_frames: Optional[int] = None,
        fps: Optional[float] = None,
        steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        seed: Optional[int] = None,
        model: Optional[str] = None,
        priority: int = 0,
        deadline: Optional[float] = None,
        idempotency_key: Optional[str] = None,
        preview_every: Optional[int] = None,
        on_progress: Optional[Callable[[dict], None]] = None,
        on_preview: Optional[Callable[[dict], None]] = None,
        on_done: Optional[Callable[[dict], None]] = None,
    ) -> Job:
        """Validates and queues a request; returns at once. ``deadline`` is in seconds from now. Callbacks run on
        the engine's dispatcher thread and receive the event as a dict."""
        request = {
            "prompt": prompt, "negative_prompt": negative_prompt, "width": width, "height": height,
            "num_frames": num_frames, "fps": fps, "steps": steps, "guidance_scale": guidance_scale, "seed": seed,
            "model": model, "priority": priority,
            "deadline_ms": None if deadline is None else max(1, int(deadline * 1000)),
            "idempotency_key": idempotency_key, "preview_every": preview_every,
        }
        handlers = {"progress": on_progress, "preview": on_preview, "finished": on_done}
        callback = None
        if any(handlers.values()):
            def callback(event_json: str) -> None:
                event = json.loads(event_json)
                handler = handlers.get(event.get("type"))
                if handler is not None:
                    handler(event)
        job_id = _call(self._native.submit, json.dumps(request), callback)
        return Job(self, job_id)

    def metrics(self) -> dict:
        return json.loads(self._native.metrics())

    def metrics_prometheus(self) -> str:
        return self._native.metrics_prometheus()

    def close(self, timeout: float = 10.0) -> None:
        """Drains for up to ``timeout`` seconds, then cancels what is left. Idempotent."""
        self._native.close(timeout)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
