"""`vgen.generate`: one call on a default engine with a progress bar (tqdm's, or a plain one without tqdm), the
job's errors raised as their classes, and Ctrl-C cancelling the job."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import vgen
from conftest import REPO


def test_generate_returns_the_video_with_a_tqdm_bar(capsys):
    import tqdm  # noqa: F401  (in tools/requirements.txt: a missing tqdm fails here rather than skipping)

    video = vgen.generate("a red circle moving right", seed=1, steps=8)
    assert isinstance(video, vgen.Video) and video.frames.shape == (17, 64, 64, 3)
    assert video.metadata["seed"] == 1 and video.metadata["steps"] == 8
    err = capsys.readouterr().err
    assert "vgen: 100%" in err and "8/8" in err and "succeeded" in err, err


def test_generate_without_tqdm_draws_a_plain_bar_on_stderr(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # makes `import tqdm.auto` fail, as when it is not installed
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    video = vgen.generate("plain bar", seed=2, steps=4)
    assert video.frames.shape[0] == 17
    captured = capsys.readouterr()
    assert captured.out == ""
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("vgen: [########################] 100% step 4/4 ") and last.endswith("succeeded"), last


def test_generate_without_a_bar_prints_nothing(capsys):
    vgen.generate("quiet", steps=1, progress=False)
    assert capsys.readouterr() == ("", "")


def test_generate_uses_one_default_engine_and_takes_every_submit_option():
    vgen.generate("first", steps=1, progress=False)
    engine = vgen._default_engine()
    before = engine.metrics()["submitted"]
    seen = []
    video = vgen.generate(
        "second", negative_prompt="none", width=80, height=48, num_frames=5, fps=4.0, steps=2, guidance_scale=1.5,
        seed=3, model="testcard", priority=1, deadline=60, idempotency_key="generate-key", preview_every=1,
        on_progress=seen.append, on_preview=seen.append, on_done=seen.append, progress=False,
    )
    assert vgen._default_engine() is engine and engine.metrics()["submitted"] == before + 1
    assert video.frames.shape == (5, 48, 80, 3) and video.fps == 4.0 and video.metadata["guidance_scale"] == 1.5
    deadline = time.time() + 5
    while not any(e["type"] == "finished" for e in seen) and time.time() < deadline:
        time.sleep(0.01)
    assert {"progress", "preview", "finished"} <= {e["type"] for e in seen}


def test_generate_on_a_given_engine(engine):
    before = engine.metrics()["submitted"]
    video = vgen.generate("given", steps=1, seed=4, engine=engine, progress=False)
    assert engine.metrics()["submitted"] == before + 1
    assert np.array_equal(video.frames, engine.submit("given", steps=1, seed=4).wait(timeout=60).frames)


def test_generate_raises_the_jobs_error_as_its_class():
    with pytest.raises(vgen.ModelError):
        vgen.generate("!fail=model", model="faulty", progress=False)
    with pytest.raises(vgen.InvalidArgumentError):
        vgen.generate("x", width=100, progress=False)


def test_ctrl_c_cancels_the_job_and_raises_keyboard_interrupt(tmp_path):
    """A real SIGINT, in a child process: `generate` must notice it within a moment (its waits run without the
    GIL), cancel the job, and let KeyboardInterrupt end the program as Python's Ctrl-C does."""
    script = tmp_path / "interrupted.py"
    script.write_text(textwrap.dedent("""
        import signal, sys, time
        import vgen

        # A child started from a background job inherits SIGINT ignored (POSIX shells do that without job
        # control); a terminal's Ctrl-C reaches Python's own handler, so install it as the terminal case has it.
        signal.signal(signal.SIGINT, signal.default_int_handler)

        started = []
        def on_progress(event):
            if not started:
                started.append(1)
                print("running", flush=True)
        try:
            vgen.generate("!slow=150 interrupted", model="faulty", steps=200, on_progress=on_progress)
        except KeyboardInterrupt:
            engine = vgen._default_engine()
            deadline = time.time() + 10
            while engine.metrics()["cancelled"] == 0 and time.time() < deadline:
                time.sleep(0.01)
            print("interrupted; cancelled:", engine.metrics()["cancelled"], flush=True)
            raise
    """))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=tmp_path)
    try:
        assert child.stdout.readline().strip() == "running"
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    # The job alone takes 30 s; on a loaded 2-core machine the child still exits within a few seconds.
    assert time.monotonic() - sent < 20, "the interrupt was seen within a step, not after the 30 s job"
    assert "interrupted; cancelled: 1" in out, (out, err)
    assert "KeyboardInterrupt" in err and child.returncode == -signal.SIGINT, (child.returncode, err[-2000:])



def test_generate_uses_the_real_default_model_from_any_folder(tmp_path):
    # A user's own project: another working directory, no $VGEN_MODELS, no models in the user's data folder.
    env = {k: v for k, v in os.environ.items() if k != "VGEN_MODELS"}
    env["XDG_DATA_HOME"] = str(tmp_path / "no-user-models")
    code = textwrap.dedent("""
        import json, vgen
        video = vgen.generate("a red circle moving right", seed=1, progress=False)
        print(json.dumps({"model": video.metadata["model"], "steps": video.metadata["steps"]}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = json.loads((REPO / "models/shapes-tiny/vgen.json").read_text())["steps"]
    assert r.stdout.strip().endswith(f'{{"model": "shapes-tiny", "steps": {steps}}}'), r.stdout


def test_a_list_of_prompts_is_a_storyboard_made_as_one_video(engine):
    parts = ["a red card", {"prompt": "a green card", "num_frames": 4}, "a blue card"]
    events = []
    job = engine.submit(parts, model="testcard", width=32, height=32, steps=2, seed=5, on_done=events.append)
    video = job.wait()
    assert video.frames.shape == (17 + 4 + 16, 32, 32, 3)
    listed = [(s["prompt"], s["start_frame"], s["frames"], s["seed"]) for s in video.metadata["segments"]]
    assert listed == [("a red card", 0, 17, 5), ("a green card", 17, 4, 6), ("a blue card", 21, 16, 7)]
    quality = [e for e in job.events() if e["type"] == "quality"]
    assert [(e["segment"], e["segments"]) for e in quality] == [(0, 3), (1, 3), (2, 3)]
    assert set(quality[1]["drift"]) == {"color_delta_e", "sharpness_ratio", "identity"}
    plain = vgen.generate(["a red card"], model="testcard", width=32, height=32, steps=2, seed=5, progress=False)
    assert np.array_equal(np.asarray(plain.frames), np.asarray(video.frames)[:17]), "the first part is that prompt's video"
    for bad, why in [([], ValueError), ([3], TypeError), ([{"text": "x"}], TypeError), (b"x", TypeError),
                     ([{"prompt": "x", "num_frames": "4"}], TypeError)]:
        with pytest.raises(why):
            engine.submit(bad, model="testcard")
    with pytest.raises(vgen.InvalidArgumentError, match="noop cannot continue from a frame"):
        engine.submit(["a", "b"], model="noop")
