"""vgen's exceptions: ``VgenError`` and one subclass per core error code, each with ``.code`` and ``.retryable``.

The classes are written out, not made in a loop, so that type checkers and readers see every one. The native
module raises ``VgenError`` with a ``code``; ``reraise`` turns it into the code's subclass. ``test_errors.py`` checks
that every code the core has gets its own class here.
"""

from __future__ import annotations

import builtins
from typing import Callable, NoReturn, Optional, TypeVar

from . import _vgen

VgenError = _vgen.VgenError


class InvalidArgumentError(VgenError, ValueError):
    """A request or configuration value is wrong; the message says what to change. Also a ``ValueError``."""


class NotFoundError(VgenError, LookupError):
    """No such job, model or file. Also a ``LookupError``."""


class AlreadyExistsError(VgenError):
    """Something with that name or key exists already."""


class QueueFullError(VgenError):
    """The engine's queue is full; ``.retry_after_ms`` says when trying again may work."""


class CancelledError(VgenError):
    """The job was cancelled, by ``Job.cancel()``, Ctrl-C in ``vgen.generate``, or the engine shutting down."""


class DeadlineExceededError(VgenError):
    """The job's deadline passed, while it was queued or running."""


class ResourceExhaustedError(VgenError):
    """Out of memory (or another resource) on the device."""


class UnavailableError(VgenError):
    """The device or service is not available now (for example its circuit breaker is open)."""


class ModelError(VgenError):
    """The model failed: bad weights, a bad configuration or a failed computation."""


class InternalError(VgenError):
    """A bug in vgen (a panic is caught and reported as this)."""


class ShuttingDownError(VgenError):
    """The engine is shutting down and takes no more jobs."""


class IoError(VgenError, OSError):
    """Reading or writing a file failed. Also an ``OSError``."""


class UnsupportedError(VgenError):
    """The request asks for something this build or model does not do."""


class TimeoutError(VgenError, builtins.TimeoutError):
    """A wait ran out of time while the job is still going (the job goes on). Also the built-in ``TimeoutError``."""


class NotReadyError(VgenError):
    """The job has not finished, so it has no result yet."""


class NumericalError(VgenError):
    """The computation produced NaN or infinite values."""


ERRORS: dict[str, type[VgenError]] = {
    "invalid_argument": InvalidArgumentError,
    "not_found": NotFoundError,
    "already_exists": AlreadyExistsError,
    "queue_full": QueueFullError,
    "cancelled": CancelledError,
    "deadline_exceeded": DeadlineExceededError,
    "resource_exhausted": ResourceExhaustedError,
    "unavailable": UnavailableError,
    "model": ModelError,
    "internal": InternalError,
    "shutting_down": ShuttingDownError,
    "io": IoError,
    "unsupported": UnsupportedError,
    "timeout": TimeoutError,
    "not_ready": NotReadyError,
    "numerical": NumericalError,
}

# `.code` and `.retryable` as class attributes too, so that `except vgen.QueueFullError` handlers can read them
# from the class. Whether a code is retryable is the core's decision, so it comes from the native table.
for _code, _number, _retryable in _vgen.error_codes():
    if _code in ERRORS:
        ERRORS[_code].__module__ = "vgen"  # tracebacks say `vgen.QueueFullError`, where users find it
        ERRORS[_code].code = _code
        ERRORS[_code].retryable = _retryable
        ERRORS[_code].retry_after_ms = None

_T = TypeVar("_T")


def reraise(e: VgenError) -> NoReturn:
    """Raises a native ``VgenError`` again as its code's subclass, with the same message and fields."""
    cls: Optional[type[VgenError]] = ERRORS.get(getattr(e, "code", ""))
    if cls is None:
        raise e
    err = cls(*e.args)
    err.code = e.code
    err.retryable = getattr(e, "retryable", cls.retryable)
    err.retry_after_ms = getattr(e, "retry_after_ms", None)
    raise err from None


def call(f: Callable[..., _T], *args: object) -> _T:
    """Calls a native function, raising its error as the code's subclass."""
    try:
        return f(*args)
    except VgenError as e:
        reraise(e)
