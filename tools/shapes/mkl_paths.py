"""MKL's Intel code paths on AMD CPUs: rerun this process with a one-function library preloaded.

PyTorch's CPU builds use MKL for matrix products, and MKL picks slower generic kernels on a CPU that is not
Intel's. `mkl_intel_paths.c` answers MKL's "is this an Intel CPU?" with yes; preloaded, it made phase 2 of
`train.py` 17% faster on an AMD EPYC (Zen 4), measured side by side (`README.md`, runs/retime). On Intel CPUs,
and anywhere the library cannot be built (no C compiler), nothing changes.

Invariant: the process re-executes itself at most once — the preload is in LD_PRELOAD before `execve`, and a
process that already has it (or has SHAPES_MKL_INTEL_PATHS=0) is left alone.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
SOURCE = HERE / "mkl_intel_paths.c"
LIBRARY = HERE / "runs" / ".mkl" / "libmkl_intel_paths.so"  # built on demand; runs/ is not committed
OPT_OUT = "SHAPES_MKL_INTEL_PATHS"


def cpu_vendor(cpuinfo: str) -> str | None:
    """The vendor_id of /proc/cpuinfo's text ("AuthenticAMD", "GenuineIntel"), or None."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "vendor_id":
            return value.strip()
    return None


def wanted(cpuinfo: str, env: dict[str, str]) -> bool:
    """Whether this process should rerun with the library preloaded."""
    if env.get(OPT_OUT) == "0" or LIBRARY.name in env.get("LD_PRELOAD", ""):
        return False
    return cpu_vendor(cpuinfo) == "AuthenticAMD"


def build(library: pathlib.Path = LIBRARY) -> pathlib.Path | None:
    """Compile the library if it is missing or older than its source; None (and a note) when that fails."""
    if library.exists() and library.stat().st_mtime >= SOURCE.stat().st_mtime:
        return library
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        print("mkl_paths: no C compiler; MKL keeps its generic paths on this AMD CPU", file=sys.stderr)
        return None
    library.parent.mkdir(parents=True, exist_ok=True)
    partial = library.with_suffix(".so.partial")
    done = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(partial), str(SOURCE)], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"mkl_paths: building {library.name} failed; MKL keeps its generic paths:\n{done.stderr}", file=sys.stderr)
        return None
    partial.replace(library)
    return library


def reexec_if_wanted() -> None:
    """On an AMD CPU, replace this process by itself with the library preloaded (returns only when it does not)."""
    try:
        cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return
    if not wanted(cpuinfo, dict(os.environ)):
        return
    library = build()
    if library is None:
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(filter(None, [str(library), env.get("LD_PRELOAD", "")]))
    print(f"mkl_paths: AMD CPU: rerunning with {library.name} preloaded (MKL's Intel paths; {OPT_OUT}=0 to skip)", file=sys.stderr, flush=True)
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
