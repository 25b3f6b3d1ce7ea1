"""Types and documentation: every public name of `vgen` is annotated and documented (Args, Returns, Example), the
stub of the native module matches the module, and `mypy --strict` accepts the package and typical user code."""
import ast
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import vgen
from vgen import _vgen

PACKAGE = Path(vgen.__file__).parent

# Made by the engine, not by users: their constructors are not part of the API.
INTERNAL_CONSTRUCTORS = {"Job", "Video", "Status"}


def public_callables():
    """(qualified name, function) for every public function and method of the package, and `Engine.__init__`."""
    for name in vgen.__all__:
        obj = getattr(vgen, name)
        if inspect.isfunction(obj):
            yield name, obj
        elif inspect.isclass(obj) and obj.__module__.startswith("vgen") and not issubclass(obj, BaseException):
            members = {k: v for k, v in vars(obj).items() if not k.startswith("_") or k == "__await__"}
            if name not in INTERNAL_CONSTRUCTORS and "__init__" in vars(obj):
                members["__init__"] = obj.__init__
            for member, value in members.items():
                if isinstance(value, property):
                    yield f"{name}.{member}", value.fget
                elif inspect.isfunction(value):
                    yield f"{name}.{member}", value


def test_the_package_ships_its_types():
    assert (PACKAGE / "py.typed").is_file() and (PACKAGE / "_vgen.pyi").is_file()
    assert len(list(public_callables())) >= 15


def test_every_public_name_is_documented():
    # Constants and type aliases cannot hold a docstring: theirs is the string right after the assignment.
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    attribute_docs = {
        target.id
        for node, after in zip(tree.body, tree.body[1:])
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(after, ast.Expr)
        and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    }
    for name in vgen.__all__:
        obj = getattr(vgen, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"vgen.{name} has no docstring"
        else:
            assert name in attribute_docs, f"vgen.{name} has no docstring after its assignment"


@pytest.mark.parametrize("qualname, func", list(public_callables()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_public_callable_is_annotated_with_args_returns_and_example(qualname, func):
    sig = inspect.signature(func)
    params = [p for p in sig.parameters.values() if p.name not in ("self", "cls")]
    for p in params:
        assert p.annotation is not inspect.Parameter.empty, f"{qualname}: parameter {p.name} is not annotated"
    assert sig.return_annotation is not inspect.Signature.empty, f"{qualname}: the return type is not annotated"

    is_property = any(isinstance(v, property) and v.fget is func for v in vars(getattr(vgen, qualname.split(".")[0])).values()) \
        if "." in qualname else False
    if is_property:
        assert inspect.getdoc(func), f"{qualname}: no docstring"
        return
    # A constructor documents its arguments in its class's docstring, as Google style does.
    doc = inspect.getdoc(getattr(vgen, qualname.split(".")[0]) if qualname.endswith(".__init__") else func) or ""
    sections = {line.strip().rstrip(":") for line in doc.splitlines() if line.strip().endswith(":")}
    if params:
        assert "Args" in sections, f"{qualname}: no Args section"
        documented = doc.split("Args:")[1]
        for p in params:
            assert p.name in documented, f"{qualname}: argument {p.name} is not described under Args"
    if sig.return_annotation not in ("None", None) and not qualname.endswith(".__init__"):
        assert "Returns" in sections, f"{qualname}: no Returns section"
    assert "Example" in sections, f"{qualname}: no Example section"


def stub_signatures():
    """name -> parameter names, for each function and method in _vgen.pyi."""
    tree = ast.parse((PACKAGE / "_vgen.pyi").read_text())
    found = {}

    def params(fn):
        return [a.arg for a in fn.args.args + fn.args.kwonlyargs if a.arg != "self"]

    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            found[node.name] = params(node)
        elif isinstance(node, ast.ClassDef):
            found[node.name] = None
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    found[f"{node.name}.{item.name}"] = params(item)
                elif isinstance(item, ast.AnnAssign):
                    found[f"{node.name}.{item.target.id}"] = None
        elif isinstance(node, ast.AnnAssign):
            found[node.target.id] = None
    return found


def native_signatures():
    found = {}

    def params(obj):
        return [p for p in inspect.signature(obj).parameters if p not in ("self", "$self")]

    for name in dir(_vgen):
        if name.startswith("__") and name != "__version__":
            continue
        obj = getattr(_vgen, name)
        if inspect.isclass(obj):
            found[name] = None
            if issubclass(obj, BaseException):
                found.update({f"{name}.{a}": None for a in ("code", "retryable", "retry_after_ms")})
                continue
            if getattr(obj, "__text_signature__", None):  # a class with a constructor
                found[f"{name}.__init__"] = params(obj)
            for member, value in vars(obj).items():
                if member.startswith("__") and member != "__array_interface__":
                    continue
                elif callable(value):
                    found[f"{name}.{member}"] = params(value)
                else:
                    found[f"{name}.{member}"] = None  # a getter
        elif callable(obj):
            found[name] = params(obj)
        else:
            found[name] = None
    return found


def test_the_native_stub_matches_the_native_module():
    stub, native = stub_signatures(), native_signatures()
    # The stub writes getters as properties; the module has them as descriptors.
    stub = {k: (None if k.split(".")[-1] in ("fps", "metadata_json", "__array_interface__") else v)
            for k, v in stub.items()}
    assert stub.keys() == native.keys(), f"only in the stub: {stub.keys() - native.keys()}, " \
                                         f"only in the module: {native.keys() - stub.keys()}"
    for name, params in native.items():
        assert stub[name] == params, f"{name}: stub {stub[name]} != module {params}"


USAGE = '''
import asyncio
from typing import Any, Optional

import numpy as np
import numpy.typing as npt

import vgen


def on_progress(event: vgen.Event) -> None:
    step: Any = event["step"]
    print(step)


def make(engine: vgen.Engine) -> npt.NDArray[np.uint8]:
    job: vgen.Job = engine.submit("a red circle moving right", seed=1, steps=2, on_progress=on_progress)
    status: vgen.Status = job.status()
    eta: Optional[float] = status.eta_seconds
    events: list[vgen.Event] = job.events(since=0)
    try:
        video: vgen.Video = job.wait(timeout=10.0)
    except vgen.TimeoutError as e:
        code: str = e.code
        retry: bool = e.retryable
        raise
    cancelled: bool = job.cancel()
    video.save("clip.mp4")
    fps: float = video.fps
    seed: Any = video.metadata["seed"]
    return video.frames


async def both(engine: vgen.Engine) -> tuple[vgen.Video, vgen.Video]:
    a: vgen.Video = await engine.submit("a")
    videos = await asyncio.gather(engine.submit("b"), engine.submit("c"))
    return videos[0], videos[1]


with vgen.Engine(devices=["cpu"], workers_per_device=1, queue_capacity=8) as engine:
    frames = make(engine)
    counts: dict[str, Any] = engine.metrics()
    text: str = engine.metrics_prometheus()
video: vgen.Video = vgen.generate("x", steps=1, progress=False)
names: list[str] = [d["name"] for d in vgen.devices(probe=False)] + [m["name"] for m in vgen.models()]
version: str = vgen.__version__ + vgen.libtorch_version + vgen.cuda_status()
errors: list[type[vgen.VgenError]] = [vgen.InvalidArgumentError, vgen.QueueFullError, vgen.CancelledError]
engine.close(timeout=0.0)
'''

# A mistake mypy must catch, so that the check above cannot pass by checking nothing.
MISTAKE = '''
import vgen
video: vgen.Video = vgen.generate("x", steps="two")
'''


def run_mypy(tmp_path, request, name, source, *extra):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    cache = request.config.cache.mkdir("mypy")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache), "--no-error-summary", *extra, str(path)],
        capture_output=True, text=True, timeout=300,
    )


def test_mypy_strict_accepts_the_package_and_typical_use(tmp_path, request):
    r = run_mypy(tmp_path, request, "usage.py", USAGE, str(PACKAGE))
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_catches_a_wrong_argument_type(tmp_path, request):
    r = run_mypy(tmp_path, request, "mistake.py", MISTAKE)
    assert r.returncode == 1 and 'Argument "steps" to "generate" has incompatible type "str"' in r.stdout, r.stdout
