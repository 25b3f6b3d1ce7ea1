"""`pip install ./bindings/python`, as a user runs it, into a fresh environment that already has torch: the package
builds, installs with its types, uses that torch's libtorch (no second copy) and makes a video.

Run by `make test-python` (`pytest --pip-install`). The build reuses cargo's target folder (CARGO_TARGET_DIR, else
target/) with the dev profile (MATURIN_PEP517_ARGS="--profile dev"): a release build would compile libtorch's
bindings again, for minutes. maturin's PyO3 settings differ from `make build`'s, so pyo3 and the extension compile
again: about 30 s after a `make build`, 6 s when nothing changed, and about 20 s on the next `make build`.
"""
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import time

import pytest

from conftest import REPO

CHECK = textwrap.dedent("""
    import importlib.metadata, json, os
    import vgen, torch
    package = os.path.dirname(vgen.__file__)
    video = vgen.generate("installed", steps=2, seed=1, progress=False)
    default = [m for m in vgen.models() if m["default"]]
    maps = open("/proc/self/maps").read().split()
    print(json.dumps({
        "vgen": vgen.__file__, "version": vgen.__version__, "dist_version": importlib.metadata.version("vgen"),
        "requires": importlib.metadata.requires("vgen"), "files": sorted(os.listdir(package)),
        "torch_lib": os.path.join(os.path.dirname(torch.__file__), "lib"),
        "libtorch_loaded": sorted({p for p in maps if p.endswith("/libtorch_cpu.so")}),
        "shape": list(video.frames.shape), "model": video.metadata["model"],
        "default": [(m["name"], m["folder"]) for m in default],
    }))
""")


@pytest.mark.install
def test_pip_install_into_a_fresh_environment_that_has_torch(tmp_path, capsys):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The environment sees this venv's torch and numpy, as a user's environment with torch installed would, so
    # pip resolves `torch==2.11.*` without downloading 4.6 GB.
    with open(os.path.join(site, "torch-from-project-venv.pth"), "w") as f:
        f.write(sysconfig.get_path("purelib") + "\n")

    env = dict(os.environ)
    env.setdefault("CARGO_TARGET_DIR", str(REPO / "target"))
    env["MATURIN_PEP517_ARGS"] = "--profile dev"
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--disable-pip-version-check",
                        str(REPO / "bindings/python")], capture_output=True, text=True, env=env, timeout=1500)
    elapsed = time.monotonic() - start
    with capsys.disabled():
        print(f"\npip install ./bindings/python: {elapsed:.0f} s")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Successfully installed vgen-" in r.stdout
    assert "Downloading torch" not in r.stdout, "the torch already in the environment satisfies the requirement"
    check = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "check"], capture_output=True,
                           text=True)
    assert "vgen" not in check.stdout, check.stdout

    # A user's own project: another folder, no $VGEN_MODELS, nothing in the user's data folder.
    user_env = {k: v for k, v in os.environ.items() if k != "VGEN_MODELS"}
    user_env["XDG_DATA_HOME"] = str(tmp_path / "no-user-models")
    r = subprocess.run([str(python), "-c", CHECK], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env=user_env)
    assert r.returncode == 0, r.stderr[-3000:]
    found = json.loads(r.stdout)
    assert found["vgen"].startswith(site), "the installed package, not the source tree"
    assert found["dist_version"] == found["version"]
    assert any(req.startswith("torch==2.11") for req in found["requires"]), found["requires"]
    assert {"__init__.py", "_vgen.pyi", "py.typed"} <= set(found["files"])
    assert [f for f in found["files"] if f.startswith("_vgen.") and f.endswith(".so")] == ["_vgen.abi3.so"]
    assert not any("libtorch" in f or f.endswith(".libs") for f in found["files"]), "no second copy of libtorch"
    assert found["libtorch_loaded"] == [os.path.realpath(os.path.join(found["torch_lib"], "libtorch_cpu.so"))], found
    assert found["shape"] == [17, 64, 64, 3]
    assert found["model"] == "shapes-tiny", "the default model is the one the package ships"
    package = os.path.realpath(os.path.dirname(found["vgen"]))
    assert [(n, os.path.realpath(f)) for n, f in found["default"]] == [
        ("shapes-tiny", os.path.join(package, "models", "shapes-tiny"))], found["default"]
    assert "models" in found["files"]
