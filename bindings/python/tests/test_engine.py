"""The Python API as its users meet it: submit, poll, events, wait, await, cancel, callbacks, errors, frames."""
import asyncio
import threading

import numpy as np
import pytest

import vgen


@pytest.fixture(scope="module")
def engine():
    with vgen.Engine(devices=["cpu"]) as e:
        yield e


def test_generate_and_get_frames_without_a_copy(engine, tmp_path):
    job = engine.submit("a red circle moving right", seed=3, steps=4)
    video = job.wait(timeout=60)
    frames = video.frames
    assert frames.dtype == np.uint8 and frames.shape == (17, 64, 64, 3)
    assert not frames.flags.writeable and frames.base is not None, "a view over the engine's buffer"
    assert video.fps == 8.0 and video.metadata["seed"] == 3
    assert job.status().state == "succeeded" and job.status().done
    video.save(tmp_path / "clip.mp4")
    video.save(tmp_path / "clip.gif")
    assert (tmp_path / "clip.mp4").stat().st_size > 0
    assert video._repr_html_().startswith("<img src=\"data:image/gif;base64,")


def test_events_and_callbacks(engine):
    seen, done = [], threading.Event()
    job = engine.submit("callbacks", steps=4, preview_every=2, on_progress=seen.append, on_preview=seen.append,
                        on_done=lambda ev: done.set())
    job.wait(timeout=60)
    assert done.wait(5)
    assert any(e["type"] == "progress" for e in seen) and any(e["type"] == "preview" for e in seen)
    events = job.events()
    assert events[0]["type"] == "queued" and events[-1]["type"] == "finished"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert job.events(since=len(events)) == []


def test_bad_arguments_raise_value_errors_with_codes(engine):
    with pytest.raises(vgen.InvalidArgumentError) as info:
        engine.submit("x", width=100)
    assert isinstance(info.value, ValueError) and isinstance(info.value, vgen.VgenError)
    assert info.value.code == "invalid_argument" and not info.value.retryable
    assert "96 or 112" in str(info.value)
    with pytest.raises(vgen.NotFoundError):
        engine.submit("x", model="nope")
    with pytest.raises(vgen.InvalidArgumentError):
        vgen.Engine(devices=["cpu"], bogus=1)


def test_cancel_and_timeout(engine):
    slow = engine.submit("slow", steps=200, width=512, height=512, num_frames=65)
    with pytest.raises(vgen.TimeoutError) as info:
        slow.wait(timeout=0.01)
    assert isinstance(info.value, TimeoutError) and info.value.retryable
    assert slow.cancel()
    with pytest.raises(vgen.CancelledError):
        slow.wait(timeout=30)
    assert slow.status().state == "cancelled"


def test_await_does_not_block_the_event_loop(engine):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        t = asyncio.create_task(ticker())
        video = await engine.submit("awaited", steps=8, seed=9, width=128, height=128)
        t.cancel()
        return video, ticks

    video, ticks = asyncio.run(main())
    assert video.frames.shape[1:] == (128, 128, 3)
    assert ticks > 1, "the loop kept running while the job did"


def test_concurrent_submitters_do_not_deadlock(engine):
    errors = []

    def worker(i):
        try:
            engine.submit(f"thread {i}", steps=2, seed=i).wait(timeout=60)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    assert engine.metrics()["succeeded"] >= 8
