"""The Python API as its users meet it: submit, poll, events, wait, await, cancel, callbacks, errors, frames."""
import asyncio
import random
import time
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


def test_asyncio_gather_of_two_jobs(engine):
    async def main():
        a = engine.submit("gather a", steps=3, seed=1)
        b = engine.submit("gather b", steps=3, seed=2)
        return await asyncio.gather(a, b)

    va, vb = asyncio.run(main())
    assert va.metadata["seed"] == 1 and vb.metadata["seed"] == 2


def test_callbacks_arrive_in_order_and_end_once(engine):
    seqs, finished = [], []
    job = engine.submit("ordered", steps=6, on_progress=lambda e: seqs.append(e["seq"]), on_done=finished.append)
    job.wait(timeout=60)
    deadline = time.time() + 5
    while not finished and time.time() < deadline:
        time.sleep(0.01)
    assert seqs == sorted(seqs) and len(seqs) >= 6
    assert len(finished) == 1 and finished[0]["state"] == "succeeded"


def test_a_raising_callback_does_not_kill_the_job(engine):
    def bad(event):
        raise RuntimeError("host bug")

    job = engine.submit("raising callback", steps=3, on_progress=bad)
    assert job.wait(timeout=60).frames.shape[0] == 17


def test_stress_8_threads_200_jobs_with_random_cancels():
    rng = random.Random(0)
    seeds = list(range(200))
    rng.shuffle(seeds)
    results = {"done": 0, "cancelled": 0}
    lock = threading.Lock()
    with vgen.Engine(devices=["cpu"], workers_per_device=2) as e:
        def worker(chunk):
            for seed in chunk:
                job = e.submit("stress", model="noop", seed=seed)
                if seed % 5 == 0:
                    job.cancel()
                try:
                    job.wait(timeout=60)
                    key = "done"
                except vgen.CancelledError:
                    key = "cancelled"
                with lock:
                    results[key] += 1

        threads = [threading.Thread(target=worker, args=(seeds[i::8],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "deadlock"
    assert results["done"] + results["cancelled"] == 200


def test_hello_video_example_runs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[3] / "examples/python/hello_video.py"
    out = tmp_path / "hello.mp4"
    r = subprocess.run([sys.executable, str(example), str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "step" in r.stdout and out.stat().st_size > 0
