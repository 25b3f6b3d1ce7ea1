"""vgen: native text-to-video generation on libtorch.

The engine is written in Rust; this package is a thin layer over it. It uses the libtorch of the ``torch`` wheel
you already have: importing torch first loads that libtorch, and the extension links to it instead of shipping a
second copy.
"""

import torch as _torch  # noqa: F401  (loads libtorch before the extension needs it)

from ._vgen import __version__, devices, libtorch_version

__all__ = ["__version__", "devices", "libtorch_version"]
