"""Videos: the numpy frames are exactly the frames the `vgen` command writes for the same request and seed, and
`save` writes every format the command does."""
import struct
import subprocess
import time
import zlib

import numpy as np
import pytest

import vgen


def read_png(path):
    """Decodes an 8-bit RGB, non-interlaced PNG (what vgen writes) into a (H, W, 3) uint8 array, with nothing but
    zlib: the five scanline filters of the PNG specification, undone row by row."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    width, height, depth, color, _, _, interlace = header
    assert (depth, color, interlace) == (8, 2, 0), "8-bit RGB, not interlaced"
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * 3)
    bpp, out = 3, np.zeros((height, width * 3), np.int32)
    for y in range(height):
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        up = out[y - 1] if y else np.zeros(width * 3, np.int32)
        if kind == 0:
            row = line
        elif kind == 2:
            row = (line + up) & 0xFF
        else:  # Sub, Average and Paeth depend on the pixel to the left, decoded just before.
            row = np.zeros(width * 3, np.int32)
            for x in range(width * 3):
                a = row[x - bpp] if x >= bpp else 0
                b, c = up[x], (up[x - bpp] if x >= bpp else 0)
                if kind == 1:
                    pred = a
                elif kind == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                row[x] = (line[x] + pred) & 0xFF
        out[y] = row
    return out.astype(np.uint8).reshape(height, width, 3)


@pytest.mark.parametrize("seed", [7, 12345])
def test_frames_equal_the_frames_the_cli_writes_for_the_same_seed(engine, cli, tmp_path, seed):
    args = dict(prompt="a red circle moving right", model="testcard", width=96, height=64, steps=4, seed=seed)
    out = tmp_path / "frames"
    r = subprocess.run(
        [str(cli), "generate", "--prompt", args["prompt"], "--model", args["model"], "--device", "cpu",
         "--width", "96", "--height", "64", "--frames", "9", "--steps", "4", "--seed", str(seed), "--out", f"{out}/"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    files = sorted(out.glob("*.png"))
    assert len(files) == 9
    cli_frames = np.stack([read_png(f) for f in files])

    frames = engine.submit(args.pop("prompt"), num_frames=9, **args).wait(timeout=60).frames
    assert frames.shape == cli_frames.shape == (9, 64, 96, 3)
    assert np.array_equal(frames, cli_frames), f"{np.count_nonzero(frames != cli_frames)} values differ"
    assert frames.std() > 5, "a real picture, not a blank one"


def test_a_different_seed_gives_different_frames(engine):
    a = engine.submit("seeds", steps=2, seed=1).wait(timeout=60).frames
    b = engine.submit("seeds", steps=2, seed=2).wait(timeout=60).frames
    assert not np.array_equal(a, b)


def test_save_writes_every_format_the_cli_does(engine, tmp_path):
    video = engine.submit("saved", steps=2, seed=5, num_frames=5).wait(timeout=60)
    for name in ("clip.mp4", "clip.gif", "clip.png"):
        video.save(tmp_path / name)
        assert (tmp_path / name).stat().st_size > 100
    assert (tmp_path / "clip.mp4").read_bytes()[4:8] == b"ftyp"
    assert (tmp_path / "clip.gif").read_bytes()[:6] == b"GIF89a"
    assert b"acTL" in (tmp_path / "clip.png").read_bytes(), "an animated PNG"
    video.save(str(tmp_path / "frames") + "/")
    files = sorted((tmp_path / "frames").glob("*.png"))
    assert len(files) == 5
    assert np.array_equal(read_png(files[2]), video.frames[2]), "PNG frames are lossless"


def test_repr_html_shows_the_video_inline_in_a_notebook(engine):
    video = engine.submit("a <notebook> & friends", steps=1).wait(timeout=60)
    html = video._repr_html_()
    assert html.startswith('<img src="data:image/gif;base64,R0lGOD')
    assert 'title="a &lt;notebook&gt; &amp; friends"' in html


def test_outputs_are_written_while_decoding_and_keep_frames_false_keeps_none(engine, tmp_path):
    """Files named in ``outputs`` hold the frames a job that keeps them gets; with ``keep_frames=False`` the video
    has no frames and its metadata still describes it."""
    kwargs = dict(width=32, height=32, num_frames=5, steps=2, seed=21)
    kept = engine.submit("outputs", **kwargs).wait(timeout=60)
    streamed = engine.submit("outputs", outputs=[tmp_path / "v.gif", str(tmp_path / "frames") + "/"],
                             keep_frames=False, **kwargs).wait(timeout=60)
    assert kept.frames.shape == (5, 32, 32, 3)
    assert streamed.frames.shape == (0, 32, 32, 3)
    assert streamed.metadata["num_frames"] == 5
    assert (tmp_path / "v.gif").stat().st_size > 0
    written = sorted((tmp_path / "frames").iterdir())
    assert len(written) == 5
    for t, path in enumerate(written):
        assert np.array_equal(read_png(path), kept.frames[t])
    with pytest.raises(TypeError):
        engine.submit("x", outputs="v.mp4")
    with pytest.raises(vgen.InvalidArgumentError, match="outputs is empty"):
        engine.submit("x", keep_frames=False)


def test_frames_stream_while_the_job_decodes_and_are_the_videos():
    """What a player or a game does: read each decoded chunk as it is announced (``on_frames``), before the job ends,
    then upload frames as RGBA or BGRA."""
    with vgen.Engine(devices=["cpu"], cpu_threads=1) as engine:
        seen = []

        def on_frames(event):
            so_far = vgen.Job(engine, event["job"]).frames()
            seen.append((event["ready"], event["total"], so_far.first_frame, so_far.frames.copy()))

        job = engine.submit("a red circle moving right", seed=1, steps=20, preview_every=5, on_frames=on_frames)
        video = job.wait(timeout=120)
        status = job.status()
        assert (status.frames_ready, status.preview_seq) == (17, 4)
        deadline = time.monotonic() + 10
        while len(seen) < 5 and time.monotonic() < deadline:  # callbacks run on the dispatcher thread
            time.sleep(0.01)
        assert [s[0] for s in seen] == [1, 5, 9, 13, 17] and all(s[1] == 17 for s in seen)
        for ready, _, first, frames in seen:
            assert first == 0 and len(frames) >= ready
            assert np.array_equal(frames, video.frames[: len(frames)]), "the frames so far are the video's"
        assert np.array_equal(job.frames().frames, video.frames)

        bgra = video.frame(16, "bgra")
        assert bgra.shape == (64, 64, 4) and (bgra[..., 3] == 255).all()
        assert np.array_equal(bgra[..., 2::-1], video.frames[16])
        assert np.array_equal(video.frame(-1, "rgba")[..., :3], video.frames[16])
        with pytest.raises(IndexError, match="out of range: the video has 17 frames"):
            video.frame(17)
        with pytest.raises(ValueError, match="'rgb', 'rgba' or 'bgra'"):
            video.frame(0, "yuv")
