"""vgen: native text-to-video generation on libtorch.

The engine is written in Rust; this package is a thin layer over it. It uses the libtorch of the ``torch`` wheel
you already have: importing torch first loads that libtorch, and the extension links to it instead of shipping a
second copy.

Example:
    >>> import vgen
    >>> video = vgen.generate("a red circle moving right", seed=1)      # a progress bar, then the video
    >>> with vgen.Engine(devices=["cpu"]) as engine:                    # or: your own engine, many jobs
    ...     job = engine.submit("a red circle moving right", seed=1)
    ...     video = job.wait()
    ...     video.save("clip.mp4")
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import html
import importlib
import json
import os
import tempfile
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generator, Mapping, Optional, Sequence, Union

import numpy
import numpy.typing

# Loads libtorch before the extension needs it. By name, so that type checkers do not read all of torch.
importlib.import_module("torch")

from . import _vgen  # noqa: E402
from ._errors import (  # noqa: E402
    AlreadyExistsError,
    CancelledError,
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    IoError,
    ModelError,
    NotFoundError,
    NotReadyError,
    NumericalError,
    QueueFullError,
    ResourceExhaustedError,
    ShuttingDownError,
    TimeoutError,
    UnavailableError,
    UnsupportedError,
    VgenError,
    call as _call,
)
from ._progress import make_bar as _make_bar  # noqa: E402

__version__: str = _vgen.__version__
"""vgen's version, for example ``"0.1.0"``."""

libtorch_version: str = _vgen.libtorch_version
"""The libtorch release the extension was built against, for example ``"2.11.0+cu130"``."""

__all__ = [
    "__version__", "libtorch_version", "generate", "devices", "models", "cuda_status",
    "Engine", "Job", "Status", "Video", "Event", "CallbackWarning", "ModelWarning",
    "VgenError", "InvalidArgumentError", "NotFoundError", "AlreadyExistsError", "QueueFullError", "CancelledError",
    "DeadlineExceededError", "ResourceExhaustedError", "UnavailableError", "ModelError", "InternalError",
    "ShuttingDownError", "IoError", "UnsupportedError", "TimeoutError", "NotReadyError", "NumericalError",
]

Event = Dict[str, Any]
"""One event of a job, as callbacks and ``Job.events`` give it: ``type`` (``queued``, ``started``, ``stage``,
``progress``, ``preview``, ``retry_scheduled``, ``warning``, ``finished``), ``job``, ``seq`` (1, 2, ... with no gaps), ``at_ms``
and the type's own fields (``step``, ``steps``, ``progress``, ``eta_ms``; ``state`` and ``error`` when finished)."""

EventCallback = Callable[[Event], None]


def _parse_events(text: str) -> Any:
    """Parses event JSON (error codes are already names such as ``"invalid_argument"``, as ``VgenError.code``)."""
    return json.loads(text)


class CallbackWarning(RuntimeWarning):
    """An ``on_progress``, ``on_preview`` or ``on_done`` callback raised. The exception is reported as this warning
    and the job goes on: a bug in a host's callback never kills the job or the engine."""


class ModelWarning(UserWarning):
    """The model ran but something in the request was not fully honoured, for example words outside the model's
    vocabulary, which it ignores. Issued when the job's video is taken (``wait``, ``await``, ``generate``)."""


def _check(name: str, value: object, kind: Union[type, tuple[type, ...]], what: str) -> None:
    """Raises TypeError unless ``value`` is None or a ``kind`` (bool is not taken for a number)."""
    if value is None:
        return
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise TypeError(f"{name} must be {what}, not bool")
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be {what}, not {type(value).__name__}")


def _check_all(kind: Union[type, tuple[type, ...]], what: str, **values: object) -> None:
    for name, value in values.items():
        _check(name, value, kind, what)


def _loras_json(loras: object) -> list[dict[str, Any]]:
    """``loras`` as the request's JSON: a list of ``{"path" or "name": str, "scale": number}``, each with
    ``"expert": "high" | "low"`` for one expert of a two-expert model."""
    if loras is None:
        return []
    if isinstance(loras, (str, bytes, Mapping)) or not isinstance(loras, Sequence):
        raise TypeError("loras must be a list of dicts like {'path': ..., 'scale': 0.8}")
    out = []
    for i, entry in enumerate(loras):
        if not isinstance(entry, Mapping):
            raise TypeError(f"loras[{i}] must be a dict, not {type(entry).__name__}")
        unknown = set(entry) - {"path", "name", "scale", "expert"}
        if unknown:
            raise TypeError(f"loras[{i}]: unknown keys {sorted(unknown)}; use path or name, scale and expert")
        item: dict[str, Any] = {}
        if entry.get("path") is not None:
            item["path"] = os.fspath(entry["path"])
        if entry.get("name") is not None:
            _check(f"loras[{i}].name", entry["name"], str, "a str")
            item["name"] = entry["name"]
        if "scale" in entry:
            _check(f"loras[{i}].scale", entry["scale"], (int, float), "a number")
            item["scale"] = float(entry["scale"])
        if entry.get("expert") is not None:
            if entry["expert"] not in ("high", "low"):
                raise ValueError(f"loras[{i}].expert must be 'high' or 'low', not {entry['expert']!r}")
            item["expert"] = entry["expert"]
        out.append(item)
    return out


def _check_callback(name: str, value: object) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable, not {type(value).__name__}")


@dataclass(frozen=True)
class Status:
    """A snapshot of a job, as ``Job.status()`` returns it.

    Attributes:
        id: the job's id.
        state: ``queued``, ``running``, ``succeeded``, ``failed`` or ``cancelled``.
        stage: ``validating``, ``encoding_prompt``, ``generating``, ``decoding``, ``encoding_video`` or
            ``finalizing``.
        progress: 0 to 1, weighted by each stage's measured cost.
        step: the denoising step finished last; ``steps``: how many there are (0 until the job starts).
        queue_position: jobs ahead of it while queued.
        eta_seconds: the engine's estimate of the time left, or None.
        attempts: 1 on the first try, more after retries, 0 before it starts.
        error: ``(code, message, retryable)`` once it has failed or been cancelled, else None.
        cache_hit: whether the result came from the engine's cache.
        frames_ready: frames decoded so far (``Job.frames()`` reads them); back to 0 when an attempt is retried.
        preview_seq: rises by one with each new preview.

    Example:
        >>> s = job.status()
        >>> print(f"{s.state} {s.stage} {s.progress:.0%}")
    """

    id: int
    state: str
    stage: str
    progress: float
    step: int
    steps: int
    queue_position: int
    eta_seconds: Optional[float]
    attempts: int
    error: Optional[tuple[str, str, bool]]
    cache_hit: bool
    frames_ready: int
    preview_seq: int

    @property
    def done(self) -> bool:
        """Whether the job has ended: succeeded, failed or cancelled."""
        return self.state in ("succeeded", "failed", "cancelled")


class Video:
    """A finished video, owned by the engine and shared without copies. Made by ``Job.wait`` and
    ``vgen.generate``; not constructed by hand.

    Attributes:
        fps: frames per second.
        metadata: the request as run (prompt, model, seed, size, steps, ...), the device and the timings.

    Example:
        >>> video = vgen.generate("a red circle moving right", seed=1)
        >>> video.frames.shape, video.fps, video.metadata["seed"]
        ((17, 64, 64, 3), 8.0, 1)
    """

    def __init__(self, native: _vgen.NativeVideo, first_frame: int = 0) -> None:
        self._native = native
        self.fps: float = native.fps
        self.metadata: dict[str, Any] = json.loads(native.metadata_json)
        #: Which frame of the whole video ``frames[0]`` is: 0, except for ``Job.frames()`` of a job that keeps no
        #: frames (it holds the last few).
        self.first_frame: int = first_frame

    @property
    def frames(self) -> numpy.typing.NDArray[numpy.uint8]:
        """The frames, a read-only numpy ``uint8`` array ``(T, H, W, 3)`` (RGB) over the engine's buffer: no copy
        is made, and the array keeps the buffer alive."""
        return numpy.asarray(self._native)

    def frame(self, index: int, format: str = "rgba") -> numpy.typing.NDArray[numpy.uint8]:
        """One frame, copied into the layout a GPU texture takes.

        Args:
            index: the frame (negative counts from the end).
            format: ``"rgba"`` or ``"bgra"`` for ``(H, W, 4)`` with alpha 255, ``"rgb"`` for ``(H, W, 3)``.

        Returns:
            A new, writable ``uint8`` array.

        Raises:
            IndexError: an index out of range. ValueError: an unknown format.

        Example:
            >>> texture.LoadRawTextureData(video.frame(0, "rgba").tobytes())
        """
        frames = self.frames
        if not -len(frames) <= index < len(frames):
            raise IndexError(f"frame {index} is out of range: the video has {len(frames)} frames")
        rgb: numpy.typing.NDArray[numpy.uint8] = frames[index]
        if format == "rgb":
            return numpy.array(rgb, dtype=numpy.uint8)
        if format not in ("rgba", "bgra"):
            raise ValueError(f"format must be 'rgb', 'rgba' or 'bgra', not {format!r}")
        out = numpy.full(rgb.shape[:2] + (4,), 255, dtype=numpy.uint8)
        out[..., :3] = rgb if format == "rgba" else rgb[..., ::-1]
        return out

    def save(self, path: Union[str, os.PathLike[str]]) -> None:
        """Writes the video, in the format its name asks for, without holding the GIL.

        Args:
            path: ``.mp4`` (H.264), ``.gif``, ``.png`` (animated PNG), or a folder path ending in ``/`` for
                numbered PNG frames. The file appears complete or not at all.

        Returns:
            None.

        Raises:
            InvalidArgumentError: for an unknown extension. IoError: when the file cannot be written.

        Example:
            >>> video.save("clip.mp4")
        """
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
    """A submitted job: poll it, read its events, wait for it (or ``await`` it), cancel it. Made by
    ``Engine.submit``.

    Example:
        >>> job = engine.submit("a red circle moving right")
        >>> job.status().state
        'queued'
        >>> video = job.wait()          # or, in a coroutine: video = await job
    """

    def __init__(self, engine: Engine, job_id: int) -> None:
        self._engine = engine
        self.id: int = job_id

    def status(self) -> Status:
        """The job's state now. Never waits: cheap enough to call every frame of a UI.

        Returns:
            A ``Status`` snapshot.

        Example:
            >>> s = job.status()
            >>> s.state, s.step, s.steps, s.eta_seconds
            ('running', 3, 8, 1.2)
        """
        return Status(**_call(self._engine._native.poll, self.id))

    def events(self, since: int = 0) -> list[Event]:
        """The job's events after sequence number ``since``, oldest first; a late poller loses nothing.

        Args:
            since: the ``seq`` of the last event already seen (0 for all of them).

        Returns:
            A list of event dicts (see ``vgen.Event``), the last of a finished job of type ``finished``.

        Example:
            >>> seen = job.events()
            >>> newer = job.events(since=seen[-1]["seq"])
        """
        _check("since", since, int, "an int")
        events: list[Event] = _parse_events(_call(self._engine._native.events, self.id, since))
        return events

    def frames(self) -> Optional[Video]:
        """The frames decoded so far, while the job runs, so a player can start before it ends: all of them when
        the job keeps its frames, else the last ``frames_window`` (an engine setting, 16 by default) from frame
        ``video.first_frame``. After the job has succeeded, its result's frames. None before the first chunk.
        Each call copies the frames: call it when ``status().frames_ready`` has risen (or from ``on_frames``).

        Returns:
            A ``Video`` of the frames so far (``fps`` 0, no metadata), or None.

        Example:
            >>> so_far = job.frames()
            >>> so_far.first_frame, so_far.frames.shape
            (0, (5, 64, 64, 3))
        """
        got = _call(self._engine._native.frames, self.id)
        return None if got is None else Video(got[1], first_frame=got[0])

    def cancel(self) -> bool:
        """Cancels the job: a queued one leaves at once, a running one stops at its next step.

        Returns:
            True if this call cancelled it; False if it had already ended.

        Example:
            >>> if job.cancel():
            ...     print("cancelled")
        """
        cancelled: bool = _call(self._engine._native.cancel, self.id)
        return cancelled

    def wait(self, timeout: Optional[float] = None) -> Video:
        """Waits for the job to end, without holding the GIL, and returns its video. Ctrl-C interrupts the wait
        (raising ``KeyboardInterrupt``) and leaves the job running.

        Args:
            timeout: seconds to wait at most; None waits as long as it takes.

        Returns:
            The finished ``Video``.

        Raises:
            TimeoutError: ``timeout`` passed first (the job goes on). The job's own error otherwise, as its class:
            ``CancelledError``, ``DeadlineExceededError``, ``ResourceExhaustedError``, ...

        Example:
            >>> video = job.wait(timeout=60)
        """
        _check("timeout", timeout, (int, float), "a number of seconds")
        _call(self._engine._native.wait, self.id, timeout)
        return self._result()

    def _ended_within(self, timeout: float) -> bool:
        try:
            _call(self._engine._native.wait, self.id, timeout)
        except TimeoutError:
            return False
        return True

    def _result(self) -> Video:
        video = Video(_call(self._engine._native.result, self.id))
        for event in self.events():
            if event.get("type") == "warning":
                warnings.warn(str(event.get("message")), ModelWarning, stacklevel=3)
        return video

    def __await__(self) -> Generator[Any, None, Video]:
        """``await job`` waits on a worker thread, so the event loop keeps running; cancelling the awaiting task
        cancels the job.

        Returns:
            The finished ``Video``, or raises the job's error as ``wait`` does.

        Example:
            >>> video = await engine.submit("a red circle moving right")
            >>> a, b = await asyncio.gather(engine.submit("one"), engine.submit("two"))
        """
        return self._wait_async().__await__()

    async def _wait_async(self) -> Video:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, self.wait)
        except asyncio.CancelledError:
            self.cancel()
            raise

    def __repr__(self) -> str:
        return f"<vgen.Job {self.id} {self.status().state}>"


class Engine:
    """An embedded engine: a pool of workers, one per device slot, that runs jobs. Use it as a context manager;
    leaving the block shuts it down.

    Args:
        devices: e.g. ``["cpu"]`` or ``["cuda:0"]``; None for auto (every GPU, else the CPU).
        workers_per_device: jobs run at once on each device.
        queue_capacity: jobs that may wait; beyond it submit raises ``QueueFullError``.
        **config: any other field of the engine configuration (``retry``, ``breaker``, ``default_deadline_ms``,
            ``retention``, ``cache``, ``limits``, ``memory_budget_bytes``, ...), as JSON values.

    Raises:
        InvalidArgumentError: an unknown configuration field or a bad value. TypeError: a value of the wrong type.

    Example:
        >>> with vgen.Engine(devices=["cpu"], workers_per_device=2) as engine:
        ...     video = engine.submit("a red circle moving right", seed=1).wait()
    """

    def __init__(
        self,
        devices: Optional[Sequence[str]] = None,
        workers_per_device: int = 1,
        queue_capacity: int = 1024,
        **config: Any,
    ) -> None:
        if isinstance(devices, str) or not (devices is None or isinstance(devices, (list, tuple))):
            raise TypeError(f"devices must be a list of device names such as ['cpu'], not {devices!r}")
        for d in devices or ():
            _check("each device", d, str, "a str such as 'cpu' or 'cuda:0'")
        _check("workers_per_device", workers_per_device, int, "an int")
        _check("queue_capacity", queue_capacity, int, "an int")
        config = {
            "devices": list(devices or []), "workers_per_device": workers_per_device,
            "queue_capacity": queue_capacity, **config,
        }
        try:
            config_json = json.dumps(config)
        except TypeError as e:
            raise TypeError(f"the engine configuration must be JSON values: {e}") from None
        self._native: _vgen.Engine = _call(_vgen.Engine, config_json)
        _live_engines.add(self)

    def submit(
        self,
        prompt: "Union[str, Sequence[Union[str, Mapping[str, Any]]]]",
        *,
        negative_prompt: Optional[str] = None,
        width: Optional[int] = None,
        height: Optional[int] = None,
        num_frames: Optional[int] = None,
        fps: Optional[float] = None,
        steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        guidance_scale_2: Optional[float] = None,
        seed: Optional[int] = None,
        model: Optional[str] = None,
        image: Any = None,
        last_image: Any = None,
        priority: int = 0,
        deadline: Optional[float] = None,
        idempotency_key: Optional[str] = None,
        preview_every: Optional[int] = None,
        vae_tiling: Optional[bool] = None,
        loras: Optional[Sequence[Mapping[str, Any]]] = None,
        sampler: Optional[Mapping[str, Any]] = None,
        step_cache: Union[bool, float, None] = None,
        color_match: Optional[bool] = None,
        outputs: Optional[Sequence[Union[str, "os.PathLike[str]"]]] = None,
        keep_frames: bool = True,
        on_progress: Optional[EventCallback] = None,
        on_preview: Optional[EventCallback] = None,
        on_frames: Optional[EventCallback] = None,
        on_done: Optional[EventCallback] = None,
    ) -> Job:
        """Validates a request and queues it; returns at once. Every field left as None takes the model's default.

        Args:
            prompt: what the video shows; or a storyboard, a list of parts in order, each a prompt or
                ``{"prompt": ..., "num_frames": 16}`` (the frames it adds), made as one continuous video, each part
                starting from the last frame of the one before (a model that takes an image).
                ``video.metadata["segments"]`` lists the parts, with their ``start_frame``, ``frames`` and drift,
                and a ``quality`` event follows each.
            negative_prompt: what it should not show.
            width, height: in pixels, multiples of the model's size multiple (16).
            num_frames: 1 + 4k frames.
            fps: frames per second of the result.
            steps: denoising steps.
            guidance_scale: classifier-free guidance strength.
            guidance_scale_2: the low-noise expert's guidance, for a model with two (Wan2.2 A14B); refused for one
                transformer.
            seed: the noise seed; None draws one, reported in ``video.metadata["seed"]``.
            model: a model name from ``vgen.models()``; None for the default.
            image: the video's first frame, for a model that animates an image (``vgen.models()`` lists its
                ``conditioning``): a path, PNG or JPEG bytes, a ``(height, width, 3 or 4)`` uint8 array, or a PIL
                image. It is resized to the video's size as diffusers' pipelines do (stretched, Lanczos).
            last_image: the video's last frame, for a first–last frame model; the same forms.
            priority: higher runs first; waiting jobs gain priority over time.
            deadline: seconds from now after which the job fails with ``DeadlineExceededError``.
            idempotency_key: submitting the same key again returns the same job.
            preview_every: send a preview event every this many steps.
            vae_tiling: decode in overlapping 256-pixel tiles (diffusers' ``enable_tiling()``): the VAE's memory
                stays flat in resolution, pixels differ slightly where tiles meet. None tiles frames larger than the
                model's pixel budget (832 x 480 by default).
            loras: LoRA adapters, each ``{"path": ..., "scale": 0.8}`` or ``{"name": ..., "scale": 0.8}`` (a name is
                ``loras/NAME.safetensors`` in a models folder); the scale defaults to 1. On a two-expert model
                (Wan2.2 A14B), ``"expert": "high"`` or ``"low"`` applies one to that expert only.
            sampler: ``{"kind": "euler" or "unipc", "flow_shift": 5.0, "timesteps": [1000, 750, 500, 250]}``, each
                key optional, over the model's own: a distilled model's settings (with ``guidance_scale=1``, which
                skips the unconditional pass). With ``timesteps`` the steps are these.
            step_cache: skip the transformer's blocks at steps where their effect is predictably close to the last
                computed one: True for the default threshold, or a threshold (larger skips more). Off by default;
                ``video.metadata["steps_skipped"]`` lists the steps skipped.
            color_match: for a storyboard, correct each later part's colour at its join (default True).
            outputs: files for the engine to write as the video is decoded (``.mp4``, ``.gif``, ``.png`` or a
                folder ending in ``/``); each appears, complete, only if the job succeeds.
            keep_frames: False keeps no frames in memory (``video.frames`` is then empty): the video goes only to
                ``outputs``, and memory does not grow with its length.
            on_progress, on_preview, on_frames, on_done: called with each ``progress`` / ``preview`` /
                ``frames`` (a decoded chunk: ``ready`` of ``total`` frames, read them with ``Job.frames()``) /
                ``finished`` event dict, in order, on the engine's dispatcher thread with the GIL held; ``on_done``
                exactly once. An exception raised in one is reported as a ``CallbackWarning`` and the job goes on.

        Returns:
            The ``Job``.

        Raises:
            InvalidArgumentError: a value the model cannot take (the message says what would work). NotFoundError:
            an unknown model. QueueFullError: the queue is full. ShuttingDownError: the engine is closed.
            TypeError: an argument of the wrong type.

        Example:
            >>> job = engine.submit("a red circle moving right", seed=1, steps=8,
            ...                     on_progress=lambda e: print(e["step"], "/", e["steps"]))
        """
        prompt, segments = _prompt_json(prompt)
        _check("color_match", color_match, bool, "a bool")
        _check_all(str, "a str", negative_prompt=negative_prompt, model=model, idempotency_key=idempotency_key)
        _check_all(int, "an int", width=width, height=height, num_frames=num_frames, steps=steps, seed=seed,
                   priority=priority, preview_every=preview_every)
        _check_all((int, float), "a number", fps=fps, guidance_scale=guidance_scale, guidance_scale_2=guidance_scale_2,
                   deadline=deadline)
        _check_all(bool, "a bool", keep_frames=keep_frames, vae_tiling=vae_tiling)
        adapters = _loras_json(loras)
        _check("step_cache", step_cache, (bool, int, float), "True, False or a threshold")
        if sampler is not None and not isinstance(sampler, Mapping):
            raise TypeError(f"sampler must be a dict such as {{'kind': 'euler', 'timesteps': [1000, 500]}}, not {sampler!r}")
        if isinstance(outputs, (str, bytes, os.PathLike)) or (outputs is not None and not isinstance(outputs, Sequence)):
            raise TypeError("outputs must be a list of paths")
        paths = [os.fspath(p) for p in outputs or []]
        if not all(isinstance(p, str) for p in paths):
            raise TypeError("outputs must be a list of str paths")
        handlers = {"progress": on_progress, "preview": on_preview, "frames": on_frames, "finished": on_done}
        for kind, handler in handlers.items():
            _check_callback(f"on_{'done' if kind == 'finished' else kind}", handler)
        request = {
            "prompt": prompt, "negative_prompt": negative_prompt, "width": width, "height": height,
            "num_frames": num_frames, "fps": fps, "steps": steps, "guidance_scale": guidance_scale,
            "guidance_scale_2": guidance_scale_2, "seed": seed,
            "model": model, "priority": priority,
            "image": _image_json("image", image), "last_image": _image_json("last_image", last_image),
            "deadline_ms": None if deadline is None else max(1, int(deadline * 1000)),
            "idempotency_key": idempotency_key, "preview_every": preview_every, "vae_tiling": vae_tiling,
            "loras": adapters, "sampler": None if sampler is None else dict(sampler),
            "step_cache": step_cache if step_cache is None or isinstance(step_cache, bool) else {"threshold": step_cache},
            "outputs": paths, "keep_frames": keep_frames, "segments": segments, "color_match": color_match,
        }
        callback = _dispatch(handlers) if any(handlers.values()) else None
        job_id: int = _call(self._native.submit, json.dumps(request), callback)
        return Job(self, job_id)

    def metrics(self) -> dict[str, Any]:
        """The engine's counters now: ``submitted``, ``succeeded``, ``failed``, ``cancelled``, ``running``,
        ``queue_depth``, ``cache_hits``, ``deduplicated``, ``retries``, ``rejected``, ``workers`` and latency
        histograms per stage.

        Returns:
            A dict of those counters.

        Example:
            >>> engine.metrics()["succeeded"]
            3
        """
        metrics: dict[str, Any] = json.loads(self._native.metrics())
        return metrics

    def metrics_prometheus(self) -> str:
        """The same counters in Prometheus' text format, for a ``/metrics`` endpoint.

        Returns:
            The exposition text.

        Example:
            >>> print(engine.metrics_prometheus())
        """
        return self._native.metrics_prometheus()

    def close(self, timeout: float = 10.0) -> None:
        """Shuts the engine down: no new jobs, then up to ``timeout`` seconds for the queued and running ones to
        finish, then the rest are cancelled; every engine thread is joined. Idempotent.

        Args:
            timeout: seconds to let jobs finish before cancelling them.

        Returns:
            None.

        Example:
            >>> engine.close(timeout=0)     # cancel whatever is left, now
        """
        _check("timeout", timeout, (int, float), "a number of seconds")
        self._native.close(timeout)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Every engine not yet collected. At interpreter exit each is closed (its jobs cancelled, their last events
# delivered) while Python still runs: once finalization starts, the engine's threads could not call back into it.
_live_engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()


@atexit.register
def _close_live_engines() -> None:
    for engine in list(_live_engines):
        engine.close(0.0)


def _dispatch(handlers: dict[str, Optional[EventCallback]]) -> Callable[[str], None]:
    """The one native callback of a job: parses each event and hands it to the user's handler for its type."""

    def callback(event_json: str) -> None:
        event: Event = _parse_events(event_json)
        handler = handlers.get(event.get("type", ""))
        if handler is None:
            return
        try:
            handler(event)
        except Exception as e:  # noqa: BLE001  (a host's bug must not reach the engine)
            warnings.warn(
                CallbackWarning(f"a vgen {event.get('type')} callback of job {event.get('job')} raised {e!r}; "
                                "the job goes on"),
                stacklevel=2,
            )

    return callback


_default: Optional[Engine] = None
_default_lock = threading.Lock()


def _default_engine() -> Engine:
    """The engine behind ``vgen.generate``, made on first use (auto devices) and shut down at exit."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Engine()
            atexit.register(_default.close, 0.0)
        return _default


def _image_json(field: str, image: Any) -> Optional[Dict[str, Any]]:
    """An image as the request's JSON gives it: a path, encoded bytes, or raw RGB8 / RGBA8 pixels."""
    if image is None:
        return None
    if isinstance(image, (str, os.PathLike)):
        return {"path": os.fspath(image)}
    if isinstance(image, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(image)).decode("ascii")}
    if hasattr(image, "tobytes") and hasattr(image, "mode") and hasattr(image, "size"):  # a PIL image
        if image.mode not in ("RGB", "RGBA"):
            image = image.convert("RGB")
        width, height = image.size
        channels = len(image.mode)
        data = image.tobytes()
    elif hasattr(image, "__array_interface__"):  # a numpy array, or anything that speaks its protocol
        import numpy as np

        array = np.ascontiguousarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4):
            raise TypeError(f"{field}: an array must be (height, width, 3 or 4) uint8, not {array.shape} {array.dtype}")
        height, width, channels = array.shape
        data = array.tobytes()
    else:
        raise TypeError(f"{field}: expected a path, PNG or JPEG bytes, a numpy array or a PIL image, not {type(image).__name__}")
    return {"pixels": {
        "width": width, "height": height, "stride": width * channels, "format": "rgb8" if channels == 3 else "rgba8",
        "base64": base64.b64encode(data).decode("ascii"),
    }}


def _prompt_json(prompt: Any) -> tuple[str, list[Any]]:
    """A prompt as the request's ``prompt``, or a storyboard's parts as its ``segments``."""
    if isinstance(prompt, str):
        return prompt, []
    if isinstance(prompt, (bytes, Mapping)) or not isinstance(prompt, Sequence):
        raise TypeError(f"prompt must be a str or a list of parts, not {type(prompt).__name__}")
    segments: list[Any] = []
    for i, part in enumerate(prompt):
        if isinstance(part, str):
            segments.append(part)
        elif isinstance(part, Mapping):
            if not isinstance(part.get("prompt"), str):
                raise TypeError(f"prompt[{i}]: a part's 'prompt' must be a str")
            frames = part.get("num_frames")
            if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int)):
                raise TypeError(f"prompt[{i}]: a part's 'num_frames' must be an int")
            segments.append(dict(part))
        else:
            raise TypeError(f"prompt[{i}] must be a str or a dict with 'prompt', not {type(part).__name__}")
    if not segments:
        raise ValueError("prompt is an empty list: give at least one part")
    return "", segments


def generate(
    prompt: "Union[str, Sequence[Union[str, Mapping[str, Any]]]]",
    *,
    negative_prompt: Optional[str] = None,
    width: Optional[int] = None,
    height: Optional[int] = None,
    num_frames: Optional[int] = None,
    fps: Optional[float] = None,
    steps: Optional[int] = None,
    guidance_scale: Optional[float] = None,
    guidance_scale_2: Optional[float] = None,
    seed: Optional[int] = None,
    model: Optional[str] = None,
    image: Any = None,
    last_image: Any = None,
    priority: int = 0,
    deadline: Optional[float] = None,
    idempotency_key: Optional[str] = None,
    preview_every: Optional[int] = None,
    vae_tiling: Optional[bool] = None,
    loras: Optional[Sequence[Mapping[str, Any]]] = None,
    color_match: Optional[bool] = None,
    outputs: Optional[Sequence[Union[str, "os.PathLike[str]"]]] = None,
    keep_frames: bool = True,
    on_progress: Optional[EventCallback] = None,
    on_preview: Optional[EventCallback] = None,
    on_done: Optional[EventCallback] = None,
    progress: bool = True,
    engine: Optional[Engine] = None,
) -> Video:
    """Generates one video and returns it: one call, with a progress bar, as a diffusers pipeline call does.

    The job runs on a default engine made on first use (every GPU, else the CPU) and shut down at exit. The bar is
    tqdm's when tqdm is installed, else a plain one on stderr. Ctrl-C cancels the job and raises
    ``KeyboardInterrupt``.

    Args:
        prompt: what the video shows, or a storyboard: a list of parts (see ``Engine.submit``).
        negative_prompt, width, height, num_frames, fps, steps, guidance_scale, guidance_scale_2, seed, model, image,
            last_image, priority,
            deadline, idempotency_key, preview_every, vae_tiling, loras, color_match, outputs, keep_frames, on_progress,
            on_preview, on_done: as for
            ``Engine.submit``.
        progress: show the progress bar (default True).
        engine: run on this engine instead of the default one.

    Returns:
        The finished ``Video``.

    Raises:
        The job's error as its ``VgenError`` subclass; ``KeyboardInterrupt`` after cancelling the job on Ctrl-C.

    Example:
        >>> import vgen
        >>> video = vgen.generate("a red circle moving right", seed=1, steps=8)
        vgen: 100%|██████████| 8/8 [00:01<00:00, 6.50step/s, finalizing]
        >>> video.save("clip.mp4")
    """
    _check("progress", progress, bool, "a bool")
    if engine is not None and not isinstance(engine, Engine):
        raise TypeError(f"engine must be a vgen.Engine, not {type(engine).__name__}")
    job = (engine or _default_engine()).submit(
        prompt, negative_prompt=negative_prompt, width=width, height=height, num_frames=num_frames, fps=fps,
        steps=steps, guidance_scale=guidance_scale, guidance_scale_2=guidance_scale_2, seed=seed, model=model,
        image=image, last_image=last_image,
        priority=priority, deadline=deadline,
        idempotency_key=idempotency_key, preview_every=preview_every, vae_tiling=vae_tiling, loras=loras,
        color_match=color_match, outputs=outputs,
        keep_frames=keep_frames,
        on_progress=on_progress, on_preview=on_preview, on_done=on_done,
    )
    bar = _make_bar("vgen") if progress else None
    try:
        # Short waits, so that the bar moves and Ctrl-C is seen; each wait runs without the GIL.
        while not job._ended_within(0.1):
            if bar is not None:
                bar.update(job.status())
        if bar is not None:
            bar.update(job.status())
    except BaseException:
        job.cancel()
        raise
    finally:
        if bar is not None:
            bar.close()
    return job._result()


def devices(probe: bool = True) -> list[dict[str, Any]]:
    """The devices libtorch sees here, the CPU first, each checked with a small real computation (as ``vgen
    devices`` does).

    Args:
        probe: run the check (a timed matrix multiply and an attention compared with its definition); False
            lists the devices only.

    Returns:
        A dict per device: ``name`` (``"cpu"``, ``"cuda:0"``, ...), ``type`` (``"cpu"`` or ``"cuda"``), ``index``
        (the GPU's, else None), ``auto`` (whether an engine with no ``devices`` uses it) and, when probed,
        ``matmul_gflops`` and ``attention_max_error``.

    Example:
        >>> [d["name"] for d in vgen.devices(probe=False)]
        ['cpu']
    """
    _check("probe", probe, bool, "a bool")
    found: list[dict[str, Any]] = _call(_vgen.devices, probe)
    return found


def cuda_status() -> str:
    """Why CUDA is on or off here, in one line (the ``CUDA:`` line of ``vgen devices``).

    Returns:
        For example ``"no NVIDIA driver found (libcuda.so.1), so CUDA is off"``.

    Example:
        >>> print(vgen.cuda_status())
    """
    return _vgen.cuda_status()


def models() -> list[dict[str, Any]]:
    """The models an engine made here can run: the built-in test models (``testcard``, ``noop``, ``faulty``,
    never the default) and the Wan model folders found, in order, in ``$VGEN_MODELS``, the user's data folder
    (``$XDG_DATA_HOME/vgen/models``, else ``~/.local/share/vgen/models``), this package's own ``models/`` (which
    ships ``shapes-tiny``), the install prefix's ``share/vgen/models`` and the source tree vgen was built from. The
    working directory plays no part. A folder that fails to open is skipped with a warning.

    Returns:
        A dict per model: ``name``, ``default`` (whether requests that name no model get it), the defaults
        ``width``, ``height``, ``num_frames``, ``fps``, ``steps``, ``guidance_scale``, and ``size_multiple``,
        ``dtype``, ``weights_bytes``, ``folder`` (None for a built-in model) and ``test_model``.

    Example:
        >>> [m["name"] for m in vgen.models() if m["default"]]
        ['shapes-tiny']
    """
    found, problems = _call(_vgen.models)
    for problem in problems:
        warnings.warn(f"vgen skipped a model folder: {problem}", RuntimeWarning, stacklevel=2)
    return found
