"""Errors: one exception class per core error code, each raised where a user meets it, with `.code` and
`.retryable`; wrong argument types raise TypeError before anything reaches the engine."""
import pytest

import vgen
from vgen import _vgen
from conftest import slow_prompt

CODES = _vgen.error_codes()


def class_for(code):
    return getattr(vgen, "".join(p.capitalize() for p in code.split("_")) + "Error")


def test_every_core_error_code_has_its_own_exported_class():
    assert len(CODES) == 16
    classes = set()
    for code, _number, retryable in CODES:
        cls = class_for(code)
        assert issubclass(cls, vgen.VgenError) and cls is not vgen.VgenError
        assert cls.code == code and cls.retryable is retryable, code
        assert cls.__name__ in vgen.__all__ and cls.__doc__
        classes.add(cls)
    assert len(classes) == len(CODES)


@pytest.mark.parametrize("cls, builtin", [
    (vgen.InvalidArgumentError, ValueError), (vgen.NotFoundError, LookupError), (vgen.IoError, OSError),
    (vgen.TimeoutError, TimeoutError),
])
def test_errors_are_also_the_builtin_exceptions_python_code_catches(cls, builtin):
    assert issubclass(cls, builtin)


@pytest.fixture(scope="module")
def failing_engine():
    # No retries and a breaker that never opens, so that each injected fault is the job's final error.
    with vgen.Engine(devices=["cpu"], retry={"max_attempts": 1}, breaker={"failure_threshold": 1000000}) as e:
        yield e


@pytest.mark.parametrize("code", [c for c, _, _ in CODES])
def test_a_job_failing_with_each_code_raises_its_class(failing_engine, code):
    done = []
    job = failing_engine.submit(f"!fail={code}", model="faulty", on_done=done.append)
    with pytest.raises(class_for(code)) as info:
        job.wait(timeout=30)
    err = info.value
    assert err.code == code and err.retryable is dict((c, r) for c, _, r in CODES)[code]
    assert "injected fault" in str(err)
    status = job.status()
    assert status.state == ("cancelled" if code == "cancelled" else "failed")
    assert status.error[0] == code and status.error[1].startswith("injected fault") and status.error[2] is err.retryable
    last = job.events()[-1]
    assert last["type"] == "finished" and last["error"]["code"] == code, "the terminal event names the same code"


def test_a_panicking_model_is_an_internal_error_and_the_engine_goes_on(failing_engine):
    with pytest.raises(vgen.InternalError) as info:
        failing_engine.submit("!panic", model="faulty").wait(timeout=30)
    assert info.value.retryable
    assert failing_engine.submit("fine", steps=1).wait(timeout=30)


# Each error where a user meets it, from the engine itself rather than injected.

def test_invalid_argument(engine):
    with pytest.raises(vgen.InvalidArgumentError) as info:
        engine.submit("x", width=100)
    assert isinstance(info.value, ValueError) and info.value.code == "invalid_argument"
    assert not info.value.retryable and "96 or 112" in str(info.value)
    with pytest.raises(vgen.InvalidArgumentError):
        vgen.Engine(devices=["cpu"], bogus=1)
    with pytest.raises(vgen.InvalidArgumentError):
        vgen.Engine(devices=["tpu"])
    # A second guidance scale is for a two-expert model (Wan2.2 A14B) only.
    with pytest.raises(vgen.InvalidArgumentError, match="guidance_scale_2: testcard has one transformer"):
        engine.submit("x", model="testcard", guidance_scale_2=3.0)
    with pytest.raises(TypeError):
        engine.submit("x", model="testcard", guidance_scale_2="3")


def test_an_image_in_every_form_reaches_the_engine_which_refuses_it_for_a_text_model(engine, tmp_path):
    import numpy as np

    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    pixels[4:8, 4:8] = (230, 40, 40)
    png = tmp_path / "start.png"
    png.write_bytes(_png(pixels))
    class GreyImage:  # PIL's protocol (mode, size, convert, tobytes), as a grey PIL image answers it
        mode, size = "L", (16, 16)

        def convert(self, mode):
            rgb = GreyImage()
            rgb.mode = mode
            return rgb

        def tobytes(self):
            return bytes(16 * 16 * len(self.mode))

    rgba = np.dstack([pixels, np.full((16, 16), 255, np.uint8)])
    for image in (str(png), png, png.read_bytes(), pixels, rgba, GreyImage()):
        with pytest.raises(vgen.InvalidArgumentError) as info:
            engine.submit("x", image=image, model="noop")
        assert "image: noop makes video from text only" in str(info.value), type(image)
    with pytest.raises(TypeError, match="image: an array must be"):
        engine.submit("x", image=np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="last_image: expected a path"):
        engine.submit("x", last_image=3.5)


def _png(rgb) -> bytes:
    """A minimal RGB8 PNG of an (h, w, 3) uint8 array, written with zlib alone."""
    import struct
    import zlib

    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_not_found(engine):
    with pytest.raises(vgen.NotFoundError) as info:
        engine.submit("x", model="nope")
    assert "testcard" in str(info.value), "the message lists the installed models"
    with pytest.raises(vgen.NotFoundError):
        vgen.Job(engine, 10**12).status()


def test_already_exists_for_a_reused_idempotency_key(engine):
    first = engine.submit("a", steps=1, idempotency_key="reused-key")
    assert engine.submit("a", steps=1, idempotency_key="reused-key").id == first.id
    with pytest.raises(vgen.AlreadyExistsError):
        engine.submit("b", steps=1, idempotency_key="reused-key")


def test_queue_full_says_when_to_retry():
    with vgen.Engine(devices=["cpu"], queue_capacity=1) as e:
        jobs = [e.submit(slow_prompt(50), model="faulty", steps=200, seed=1)]
        with pytest.raises(vgen.QueueFullError) as info:
            for seed in range(2, 10):
                jobs.append(e.submit(slow_prompt(50), model="faulty", steps=200, seed=seed))
        assert info.value.retryable and info.value.retry_after_ms is not None and info.value.retry_after_ms > 0
        for job in jobs:
            job.cancel()


def test_cancelled(engine):
    job = engine.submit(slow_prompt(50), model="faulty", steps=200)
    job.cancel()
    with pytest.raises(vgen.CancelledError) as info:
        job.wait(timeout=30)
    assert not info.value.retryable


def test_deadline_exceeded_while_running(engine):
    job = engine.submit(slow_prompt(50), model="faulty", steps=200, deadline=0.2)
    with pytest.raises(vgen.DeadlineExceededError):
        job.wait(timeout=30)
    assert job.status().state == "failed"


def test_timeout_of_a_wait(engine):
    job = engine.submit(slow_prompt(50), model="faulty", steps=200)
    with pytest.raises(vgen.TimeoutError) as info:
        job.wait(timeout=0.05)
    assert isinstance(info.value, TimeoutError) and info.value.retryable
    job.cancel()


def test_unavailable_device():
    with pytest.raises(vgen.UnavailableError) as info:
        vgen.Engine(devices=["cuda:99"])
    assert "cuda:99" in str(info.value)


def test_loras_reach_the_engine_which_names_what_is_wrong(engine, tmp_path):
    # Adapters are applied by Wan models (core/tests/wan_lora_parity.rs); here, what the engine says of bad ones.
    with pytest.raises(vgen.InvalidArgumentError, match=r"loras\[0\]: .*a\.safetensors: no such file"):
        engine.submit("x", loras=[{"path": tmp_path / "a.safetensors", "scale": 0.5}])
    with pytest.raises(vgen.InvalidArgumentError, match="takes no LoRA adapters"):
        engine.submit("x", model="testcard", loras=[{"name": "style"}])
    with pytest.raises(vgen.InvalidArgumentError, match=r"loras\[0\]\.expert: .* has one transformer"):
        engine.submit("x", loras=[{"path": tmp_path / "a.safetensors", "expert": "low"}])
    with pytest.raises(ValueError, match=r"loras\[0\]\.expert must be 'high' or 'low'"):
        engine.submit("x", loras=[{"path": tmp_path / "a.safetensors", "expert": "both"}])


def test_shutting_down():
    e = vgen.Engine(devices=["cpu"])
    e.close()
    with pytest.raises(vgen.ShuttingDownError):
        e.submit("late")


def test_io_error_and_unknown_format_on_save(engine, tmp_path):
    video = engine.submit("saved", steps=1).wait(timeout=60)
    with pytest.raises(vgen.IoError) as info:
        video.save(tmp_path / "missing-folder" / "clip.mp4")
    assert isinstance(info.value, OSError) and "missing-folder" in str(info.value), "the message names the path"
    with pytest.raises(vgen.InvalidArgumentError):
        video.save(tmp_path / "clip.avi")


def test_not_ready_before_the_job_ends(engine):
    job = engine.submit(slow_prompt(50), model="faulty", steps=200)
    with pytest.raises(vgen.NotReadyError):
        job._result()
    job.cancel()


@pytest.mark.parametrize("call, message", [
    (lambda e: e.submit(123), "prompt must be a str"),
    (lambda e: e.submit(None), "prompt must be a str"),
    (lambda e: e.submit("x", width="64"), "width must be an int"),
    (lambda e: e.submit("x", steps=2.0), "steps must be an int"),
    (lambda e: e.submit("x", seed=True), "seed must be an int, not bool"),
    (lambda e: e.submit("x", fps="8"), "fps must be a number"),
    (lambda e: e.submit("x", model=3), "model must be a str"),
    (lambda e: e.submit("x", vae_tiling="on"), "vae_tiling must be a bool"),
    (lambda e: e.submit("x", loras="style.safetensors"), "loras must be a list of dicts"),
    (lambda e: e.submit("x", loras=[{"file": "a"}]), r"loras\[0\]: unknown keys"),
    (lambda e: e.submit("x", loras=[{"path": "a", "scale": "1"}]), r"loras\[0\].scale must be a number"),
    (lambda e: e.submit("x", on_done="print"), "on_done must be callable"),
    (lambda e: vgen.Engine(devices="cpu"), "devices must be a list"),
    (lambda e: vgen.Engine(devices=[0]), "each device must be a str"),
    (lambda e: vgen.Engine(workers_per_device="2"), "workers_per_device must be an int"),
    (lambda e: vgen.Engine(limits=object()), "must be JSON values"),
    (lambda e: e.close(timeout="now"), "timeout must be a number"),
    (lambda e: vgen.Job(e, 1).wait(timeout="1"), "timeout must be a number"),
    (lambda e: vgen.Job(e, 1).events(since="0"), "since must be an int"),
    (lambda e: vgen.generate("x", progress="yes"), "progress must be a bool"),
    (lambda e: vgen.generate("x", engine="cpu"), "engine must be a vgen.Engine"),
    (lambda e: vgen.devices(probe=1), "probe must be a bool"),
])
def test_wrong_argument_types_raise_type_error(engine, call, message):
    with pytest.raises(TypeError, match=message):
        call(engine)
