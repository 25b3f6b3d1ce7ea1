"""Shared fixtures: one CPU engine for the tests that need no engine of their own, and where things are."""
import os
from pathlib import Path

import pytest

import vgen

REPO = Path(__file__).resolve().parents[3]


def slow_prompt(ms_per_step=20):
    """A prompt for the `faulty` model (the test card failing on command) whose every step takes `ms_per_step`:
    a job that stays running long enough to be cancelled, timed out or interrupted, without using the CPU."""
    return f"!slow={ms_per_step} a slow job"


@pytest.fixture(scope="session")
def engine():
    with vgen.Engine(devices=["cpu"], workers_per_device=2) as e:
        yield e


@pytest.fixture(scope="session")
def cli():
    """The `vgen` command from the same build as the extension (`make test-python` passes it in VGEN_CLI)."""
    path = Path(os.environ.get("VGEN_CLI", REPO / "target/debug/vgen")).resolve()
    assert path.is_file(), f"{path} is missing: run `make build`, or set VGEN_CLI to the vgen binary"
    return path


def pytest_addoption(parser):
    parser.addoption("--pip-install", action="store_true",
                     help="also run the tests marked `install`: pip install ./bindings/python into a fresh "
                          "environment (about 30 s after a `make build`; `make test-python` passes this)")


def pytest_configure(config):
    config.addinivalue_line("markers", "install: builds and pip-installs the package; run with --pip-install")


def pytest_collection_modifyitems(config, items):
    # Deselected, not skipped, without --pip-install: pytest's summary counts them.
    if config.getoption("--pip-install"):
        return
    deselected = [i for i in items if "install" in i.keywords]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [i for i in items if "install" not in i.keywords]
