"""The engine and its jobs as Python users meet them: submit with every option, poll, events, wait, await, cancel
(here and from another thread), callbacks (order, thread, exactly one terminal event, a raising callback), many
threads at once, and the examples."""
import asyncio
import json
import random
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

import vgen
from conftest import REPO, slow_prompt


def test_generate_and_get_frames_without_a_copy(engine, tmp_path):
    job = engine.submit("a red circle moving right", seed=3, steps=4)
    assert isinstance(job.id, int)
    video = job.wait(timeout=60)
    frames = video.frames
    assert frames.dtype == np.uint8 and frames.shape == (17, 64, 64, 3)
    assert not frames.flags.writeable and frames.base is not None, "a view over the engine's buffer"
    assert np.shares_memory(frames, video.frames), "two reads view the same buffer: nothing is copied"
    assert video.fps == 8.0 and video.metadata["seed"] == 3
    status = job.status()
    assert status.state == "succeeded" and status.done and status.error is None
    assert status.step == status.steps == 4 and status.progress == 1.0 and status.attempts == 1
    assert repr(video) == "<vgen.Video 17 frames 64x64 at 8.0 fps>"
    assert repr(job) == f"<vgen.Job {job.id} succeeded>"


def test_the_frames_outlive_the_job_and_the_video(engine):
    frames = engine.submit("kept", seed=4, steps=2).wait(timeout=60).frames
    copy = frames.copy()
    import gc

    gc.collect()
    assert np.array_equal(frames, copy), "the array keeps the engine's buffer alive"


def test_every_request_field_reaches_the_engine(engine):
    job = engine.submit(
        "a blue square", negative_prompt="blur", width=96, height=80, num_frames=9, fps=12.0, steps=3,
        guidance_scale=2.5, seed=11, model="testcard", priority=5, deadline=60, idempotency_key="all-fields",
        preview_every=1,
    )
    video = job.wait(timeout=60)
    assert video.frames.shape == (9, 80, 96, 3) and video.fps == 12.0
    m = video.metadata
    assert (m["prompt"], m["seed"], m["model"], m["steps"], m["guidance_scale"]) == ("a blue square", 11, "testcard", 3, 2.5)
    assert any(e["type"] == "preview" for e in job.events()), "preview_every=1 sends previews"
    again = engine.submit(
        "a blue square", negative_prompt="blur", width=96, height=80, num_frames=9, fps=12.0, steps=3,
        guidance_scale=2.5, seed=11, model="testcard", priority=5, deadline=60, idempotency_key="all-fields",
        preview_every=1,
    )
    assert again.id == job.id, "the same idempotency key returns the same job"


def test_events_and_callbacks(engine):
    seen, done = [], threading.Event()
    job = engine.submit("callbacks", steps=4, preview_every=2, on_progress=seen.append, on_preview=seen.append,
                        on_done=lambda ev: done.set())
    job.wait(timeout=60)
    assert done.wait(5)
    assert any(e["type"] == "progress" for e in seen) and any(e["type"] == "preview" for e in seen)
    events = job.events()
    assert events[0]["type"] == "queued" and events[-1]["type"] == "finished"
    assert events[-1]["state"] == "succeeded" and events[-1]["job"] is not None
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert job.events(since=len(events)) == []
    assert job.events(since=len(events) - 1) == events[-1:]


def test_metrics_count_jobs(engine):
    before = engine.metrics()
    engine.submit("counted", steps=1).wait(timeout=60)
    after = engine.metrics()
    assert after["submitted"] == before["submitted"] + 1 and after["succeeded"] == before["succeeded"] + 1
    assert {"queue_depth", "running", "failed", "cancelled", "workers"} <= after.keys() and after["workers"] == 2
    text = engine.metrics_prometheus()
    assert any(line.startswith("vgen_") and line.split()[-1].replace(".", "").isdigit()
               for line in text.splitlines()), text[:400]


def test_cancel_and_timeout(engine):
    slow = engine.submit(slow_prompt(50), model="faulty", steps=200)
    with pytest.raises(vgen.TimeoutError) as info:
        slow.wait(timeout=0.01)
    assert isinstance(info.value, TimeoutError) and info.value.retryable
    assert slow.status().state in ("queued", "running"), "a wait that times out leaves the job going"
    assert slow.cancel()
    with pytest.raises(vgen.CancelledError):
        slow.wait(timeout=30)
    status = slow.status()
    assert status.state == "cancelled" and status.done and status.error[0] == "cancelled"
    assert not slow.cancel(), "cancelling an ended job is harmless and says so"


def test_cancel_from_another_thread(engine):
    job = engine.submit(slow_prompt(50), model="faulty", steps=200)
    while job.status().state != "running":
        time.sleep(0.005)
    results = []
    canceller = threading.Timer(0.2, lambda: results.append(job.cancel()))
    canceller.start()
    start = time.monotonic()
    with pytest.raises(vgen.CancelledError):
        job.wait(timeout=30)
    elapsed = time.monotonic() - start
    canceller.join()
    assert results == [True]
    assert elapsed < 5, f"the waiting thread woke {elapsed:.1f}s later; the job stops at its next step"
    assert job.status().step < 200


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


def test_asyncio_gather_of_two_jobs(engine):
    async def main():
        a = engine.submit("gather a", steps=3, seed=1)
        b = engine.submit("gather b", steps=3, seed=2)
        return await asyncio.gather(a, b)

    va, vb = asyncio.run(main())
    assert va.metadata["seed"] == 1 and vb.metadata["seed"] == 2
    assert va.metadata["prompt"] == "gather a" and vb.metadata["prompt"] == "gather b"


def test_asyncio_gather_of_two_slow_jobs_runs_them_at_once(engine):
    async def main():
        a = engine.submit(slow_prompt(20), model="faulty", steps=25, seed=1)
        b = engine.submit(slow_prompt(20), model="faulty", steps=25, seed=2)
        start = time.monotonic()
        videos = await asyncio.gather(a, b)
        return videos, time.monotonic() - start

    (va, vb), elapsed = asyncio.run(main())
    assert (va.metadata["seed"], vb.metadata["seed"]) == (1, 2)
    assert elapsed < 0.9, f"two 0.5 s jobs on two workers took {elapsed:.2f}s: the awaits ran one after another"


def test_an_awaited_job_raises_its_error_and_a_cancelled_task_cancels_the_job(engine):
    async def failing():
        return await engine.submit("!fail=model", model="faulty")

    with pytest.raises(vgen.ModelError):
        asyncio.run(failing())

    job = engine.submit(slow_prompt(50), model="faulty", steps=200)

    async def impatient():
        await asyncio.wait_for(job, timeout=0.1)

    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(impatient())
    with pytest.raises(vgen.CancelledError):
        job.wait(timeout=30)


def test_callbacks_arrive_in_order_on_the_dispatcher_thread_and_end_once(engine):
    events, threads, finished = [], set(), threading.Event()

    def record(event):
        events.append(event)
        threads.add(threading.current_thread().ident)
        if event["type"] == "finished":
            finished.set()

    job = engine.submit("ordered", steps=6, preview_every=2, on_progress=record, on_preview=record, on_done=record)
    job.wait(timeout=60)
    assert finished.wait(5)
    time.sleep(0.1)  # anything after the terminal event would arrive now
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "in order, none twice"
    assert [e["type"] for e in events].count("progress") >= 6
    assert [e["type"] for e in events].count("finished") == 1 and events[-1]["type"] == "finished"
    assert events[-1]["state"] == "succeeded"
    assert threading.main_thread().ident not in threads and len(threads) == 1, "on the one dispatcher thread"


def test_the_terminal_callback_fires_once_for_failed_and_cancelled_jobs(engine):
    outcomes = []
    failed = engine.submit("!fail=model", model="faulty", on_done=outcomes.append)
    cancelled = engine.submit(slow_prompt(50), model="faulty", steps=200, on_done=outcomes.append)
    cancelled.cancel()
    for job in (failed, cancelled):
        with pytest.raises(vgen.VgenError):
            job.wait(timeout=30)
    deadline = time.time() + 5
    while len(outcomes) < 2 and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert sorted(e["state"] for e in outcomes) == ["cancelled", "failed"]


def test_a_raising_callback_is_a_warning_and_the_job_finishes(engine):
    calls, done = [], threading.Event()

    def bad(event):
        calls.append(event["step"])
        raise RuntimeError("host bug")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        job = engine.submit("raising callback", steps=3, on_progress=bad, on_done=lambda e: done.set())
        video = job.wait(timeout=60)
        assert done.wait(5), "the terminal callback still runs"
    assert video.frames.shape[0] == 17 and job.status().state == "succeeded"
    assert len(calls) >= 3, "the callback is called again after raising"
    ours = [w for w in caught if issubclass(w.category, vgen.CallbackWarning)]
    assert len(ours) == len(calls) and "host bug" in str(ours[0].message)
    assert engine.submit("after a raising callback", steps=1).wait(timeout=60), "the engine goes on"


def test_concurrent_submitters_do_not_deadlock(engine):
    errors = []

    def worker(i):
        try:
            engine.submit(f"thread {i}", steps=2, seed=i).wait(timeout=60)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    assert engine.metrics()["succeeded"] >= 8


def test_stress_8_threads_200_jobs_with_random_cancels():
    """Eight threads submit 200 jobs between them and cancel some at random moments: before they start, while
    they run, after they end, from their own thread or another one. Every job must end exactly once, and within a
    time limit: a deadlock fails the test instead of hanging it (the threads are daemons)."""
    results = {"succeeded": 0, "cancelled": 0}
    terminal_counts, errors = [], []
    lock = threading.Lock()
    e = vgen.Engine(devices=["cpu"], workers_per_device=2)

    def worker(index):
        rng = random.Random(index)
        try:
            for n in range(25):
                finished = []
                # Some jobs take a few steps of a millisecond each, so that cancels land while they run.
                slow = rng.random() < 0.4
                job = e.submit(f"!slow=1 stress {index}.{n}" if slow else "stress", model="faulty" if slow else "noop",
                               steps=rng.randint(1, 8) if slow else None, seed=index * 1000 + n,
                               on_done=finished.append)
                roll = rng.random()
                if roll < 0.2:
                    job.cancel()
                elif roll < 0.4:
                    threading.Timer(rng.random() * 0.005, job.cancel).start()
                try:
                    job.wait(timeout=60)
                    key = "succeeded"
                except vgen.CancelledError:
                    key = "cancelled"
                end = time.time() + 5
                while not finished and time.time() < end:
                    time.sleep(0.001)
                states = [ev for ev in job.events() if ev["type"] == "finished"]
                with lock:
                    results[key] += 1
                    terminal_counts.append((len(finished), len(states), job.status().state == key))
        except Exception as ex:  # noqa: BLE001
            errors.append(ex)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(8)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1, 120 - (time.monotonic() - start)))
    assert not any(t.is_alive() for t in threads), "deadlock: threads still waiting after 120 s"
    assert not errors, errors
    e.close(timeout=10)
    assert results["succeeded"] + results["cancelled"] == 200 and results["cancelled"] > 0
    assert all(t == (1, 1, True) for t in terminal_counts), "one terminal callback and event per job"
    m = e.metrics()
    assert m["succeeded"] == results["succeeded"] and m["cancelled"] == results["cancelled"] and m["failed"] == 0


def test_engine_as_a_context_manager_closes_and_close_is_idempotent():
    with vgen.Engine(devices=["cpu"]) as e:
        assert e.submit("inside", steps=1).wait(timeout=60)
    with pytest.raises(vgen.ShuttingDownError):
        e.submit("after")
    e.close()
    e.close(timeout=0)


def test_close_cancels_what_is_left_after_its_timeout():
    e = vgen.Engine(devices=["cpu"])
    job = e.submit(slow_prompt(50), model="faulty", steps=200)
    start = time.monotonic()
    e.close(timeout=0.1)
    assert time.monotonic() - start < 5
    with pytest.raises(vgen.CancelledError):
        job.wait(timeout=5)


@pytest.mark.parametrize("example", ["hello.py", "hello_video.py"])
def test_examples_run(example, tmp_path):
    out = tmp_path / "hello.mp4"
    r = subprocess.run([sys.executable, str(REPO / "examples/python" / example), str(out)], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    if example == "hello.py":
        assert r.stdout.startswith(f"vgen {vgen.__version__} on libtorch ") and "devices: cpu" in r.stdout
    else:
        assert "step" in r.stdout and out.stat().st_size > 0


# Ending an engine while a job runs and a Python callback follows it: each way must return promptly and deliver
# every event up to the job's terminal one. Each runs in its own interpreter, so a hang fails the test by timeout
# instead of hanging the suite.
ENDINGS = {
    "del": "del job, engine\ngc.collect()",
    "close": "engine.close(0)",
    "exit": "pass  # the interpreter exits with the engine alive",
    "callback": "pass  # the progress callback below drops the last reference itself",
}
ENDING_SCRIPT = textwrap.dedent("""
    import gc, json, sys, time, vgen
    events = []
    def on_event(ev):
        events.append(ev["type"])
        if ENDING == "callback" and ev["type"] == "progress" and "engine" in holder:
            holder.pop("engine").close(0)  # the callback ends the engine it is called from
    holder = {}
    engine = vgen.Engine(devices=["cpu"])
    job = engine.submit("a red circle moving right", model="testcard", steps=200, width=256, height=256,
                        on_progress=on_event, on_done=on_event)
    if ENDING == "callback":
        holder["engine"] = engine
        del engine
    time.sleep(0.3)
    ENDING_CODE
    deadline = time.time() + 10
    while "finished" not in events and time.time() < deadline and ENDING != "exit":
        time.sleep(0.01)
    print(json.dumps(events), flush=True)
""")


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_ending_an_engine_mid_job_never_hangs_and_loses_no_event(ending, tmp_path):
    script = f"ENDING = {ending!r}\n" + ENDING_SCRIPT.replace("ENDING_CODE", ENDINGS[ending])
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    events = json.loads(r.stdout.strip().splitlines()[-1])
    assert "progress" in events, events
    if ending != "exit":
        assert events[-1] == "finished" and events.count("finished") == 1, events
