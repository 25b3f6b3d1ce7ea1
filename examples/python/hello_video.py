"""Generates a video with the default model, prints the progress, saves an MP4. Usage: hello_video.py [OUT.mp4]"""
import sys

import vgen

out = sys.argv[1] if len(sys.argv) > 1 else "hello_video.mp4"
with vgen.Engine() as engine:
    job = engine.submit(
        "a red circle moving right",
        seed=1,
        on_progress=lambda ev: print(f"step {ev['step']}/{ev['steps']}  {ev['progress']:.0%}", flush=True),
    )
    video = job.wait()
    video.save(out)
    print(f"wrote {out}: {video.frames.shape[0]} frames {video.frames.shape[2]}x{video.frames.shape[1]}")
