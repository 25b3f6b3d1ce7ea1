"""The built `vgen-server` binary as the Python tests run it: on a free port, with the given tokens, the built-in
models (`testcard` the default) and, when asked, the core fixtures' tiny Wan made a TI2V model (`tiny-ti2v`, 32x32,
9 frames at 8 fps), which animates an image. `VGEN_SERVER` names the binary (default: target/debug/vgen-server).
"""

import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
from typing import Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]


def server_binary() -> pathlib.Path:
    if "VGEN_SERVER" in os.environ:
        return pathlib.Path(os.environ["VGEN_SERVER"])
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "debug" / "vgen-server"


def tiny_ti2v(models: pathlib.Path) -> None:
    """The core fixtures' tiny Wan with `expand_timesteps`: a model that takes an image (32x32, 9 frames)."""
    folder = models / "tiny-ti2v"
    shutil.copytree(ROOT / "core/tests/fixtures/wan/tiny-wan", folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["expand_timesteps"] = True
    (folder / "model_index.json").write_text(json.dumps(index))
    serving = {"name": "tiny-ti2v", "max_sequence_length": 16, "width": 32, "height": 32, "num_frames": 9,
               "steps": 2, "fps": 8}
    (folder / "vgen.json").write_text(json.dumps(serving))


@contextlib.contextmanager
def running(tmp: pathlib.Path, tokens: dict[str, str], with_ti2v: bool = False) -> Iterator[str]:
    """Yields the server's URL; then stops it with SIGTERM and checks that it exits 0. `tokens`: token → scope."""
    binary = server_binary()
    if not binary.exists():
        pytest.fail(f"{binary} is missing: build it with `cargo build -p vgen-server` (make test-server does)")
    env = dict(os.environ)
    if with_ti2v:
        tiny_ti2v(tmp / "models")
        env["VGEN_MODELS"] = str(tmp / "models")
    config = {
        "listen": "127.0.0.1:0",
        "tokens": [{"token": t, "scope": s} for t, s in tokens.items()],
        "results_dir": str(tmp / "results"),
        "engine": {"devices": ["cpu"], "default_model": "testcard", "shutdown_timeout_ms": 1000},
    }
    (tmp / "server.json").write_text(json.dumps(config))
    proc = subprocess.Popen([str(binary), "--config", str(tmp / "server.json")], stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        line = proc.stdout.readline().strip()
        prefix = "vgen-server listening on "
        assert line.startswith(prefix), f"unexpected first line: {line!r}"
        yield line[len(prefix):]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, f"vgen-server exited with {code} after SIGTERM"
