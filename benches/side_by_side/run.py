"""vgen beside diffusers, on the same machine, model, settings and seeds: prints one table of ratios.

Each side runs in its own process (so peak memory is its own), warms up once, then runs --runs times; the table
gives medians and vgen/diffusers ratios. Cases:

  pipeline  a model folder end to end (default: models/shapes-tiny, the project's trained model), CPU
  step      one denoising step with classifier-free guidance, with random weights from a config (default: the
            real Wan2.1-T2V-1.3B configuration) at a reduced size on the CPU, or 480x832x81 with --device cuda:
            diffusers runs the conditional and unconditional forwards one after the other (as WanPipeline
            does), vgen as one batch with the text side prepared once per job; prompts of 32 tokens padded with
            zeros to 512, as the text encoder hands them over
  decode    VAE decode peak memory at 17, 33, 65 and 129 frames: vgen streaming to an MP4 file, diffusers
            returning the whole array (the tiny VAE, and the real Wan2.1 VAE configuration with random weights)

Usage (from the repository root; `make bench-side` builds vgen-side and runs this):
  .venv/bin/python benches/side_by_side/run.py [--cases pipeline,step,decode] [--runs 5] [--device cpu|cuda]
The diffusers side needs only torch, diffusers 0.42.1 and transformers 5.23.0, so a machine without Rust can run
it with a vgen-side binary built elsewhere (see benches/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WAN_CONFIGS = ROOT / "core/tests/fixtures/wan/wan2.1-t2v-1.3b-configs"
WAN_FAMILY = ROOT / "core/tests/fixtures/wan/family-configs"
TINY_WAN = ROOT / "core/tests/fixtures/wan/tiny-wan"
# The step case's prompts: real rows of the prompt and of the negative prompt, the rest of the 512 zero.
PROMPT_TOKENS = 32
NEGATIVE_TOKENS = 32


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# --- the diffusers side, run in a child process --------------------------------------------------------------


def diffusers_pipeline(a) -> None:
    import torch
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(a.model, torch_dtype=torch.float32)
    serving = json.loads((Path(a.model) / "vgen.json").read_text()) if (Path(a.model) / "vgen.json").exists() else {}
    kwargs = dict(
        height=a.height or serving.get("height", 480),
        width=a.width or serving.get("width", 832),
        num_frames=a.frames or serving.get("num_frames", 81),
        num_inference_steps=a.steps or serving.get("steps", 50),
        guidance_scale=a.guidance if a.guidance is not None else serving.get("guidance_scale", 5.0),
        max_sequence_length=serving.get("max_sequence_length", 512),
        output_type="np",
    )
    decode_ms = []
    original_decode = pipe.vae.decode

    def timed_decode(*args, **kw):
        started = time.perf_counter()
        out = original_decode(*args, **kw)
        decode_ms.append((time.perf_counter() - started) * 1e3)
        return out

    pipe.vae.decode = timed_decode
    for run in range(a.runs + 1):
        step_times = []
        last = [time.perf_counter()]

        def on_step(_pipe, _i, _t, kw):
            now = time.perf_counter()
            step_times.append((now - last[0]) * 1e3)
            last[0] = now
            return kw

        started = time.perf_counter()
        gen = torch.Generator().manual_seed(run)
        # The first step's time includes the prompt encoding; leave it out of the step figure.
        last[0] = time.perf_counter()
        out = pipe("a red circle moving right", generator=gen, callback_on_step_end=on_step, **kwargs)
        wall = (time.perf_counter() - started) * 1e3
        frames = (out.frames[0] * 255).round().astype("uint8")
        steps = statistics.median(step_times[1:] or step_times)
        print(json.dumps({"side": "diffusers", "case": "pipeline", "warmup": run == 0, "wall_ms": wall, "step_ms": steps,
                          "decode_ms": decode_ms[-1], "frames": int(frames.shape[0]), "peak_rss": peak_rss(),
                          "threads": torch.get_num_threads()}), flush=True)


def step_text(torch, text_dim: int, device, dtype):
    """The [cond; uncond] prompt embeddings of a step, as the text encoder and the pipeline hand them over:
    PROMPT_TOKENS and NEGATIVE_TOKENS real rows, then zeros to 512, as vgen-side builds them."""
    torch.manual_seed(1)
    text = torch.randn(2, 512, text_dim)
    text[0, PROMPT_TOKENS:] = 0
    text[1, NEGATIVE_TOKENS:] = 0
    return text.to(device=device, dtype=dtype)


def diffusers_step(a) -> None:
    """One denoising step with classifier-free guidance as WanPipeline runs it: two transformer forwards."""
    import torch
    from diffusers import WanTransformer3DModel

    device = torch.device(a.device)
    config = WanTransformer3DModel.load_config(a.transformer)
    dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    model = WanTransformer3DModel.from_config(config).to(device=device, dtype=dtype).eval()
    torch.manual_seed(0)
    lf = (a.frames - 1) // 4 + 1
    x = torch.randn(1, 16, lf, a.height // 8, a.width // 8, device=device, dtype=dtype)
    text = step_text(torch, config["text_dim"], device, dtype)
    t = torch.tensor([500.0], device=device)
    tokens = lf * (a.height // 16) * (a.width // 16)
    with torch.no_grad():
        for run in range(a.runs + 1):
            if a.device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            cond = model(hidden_states=x, timestep=t, encoder_hidden_states=text[:1], return_dict=False)[0]
            uncond = model(hidden_states=x, timestep=t, encoder_hidden_states=text[1:], return_dict=False)[0]
            uncond + 5.0 * (cond - uncond)
            if a.device == "cuda":
                torch.cuda.synchronize()
            step = (time.perf_counter() - started) * 1e3
            extra = {"cuda_peak": torch.cuda.max_memory_allocated()} if a.device == "cuda" else {}
            print(json.dumps({"side": "diffusers", "case": "step", "warmup": run == 0, "tokens": tokens, "step_ms": step,
                              "peak_rss": peak_rss(), "threads": torch.get_num_threads(), **extra}), flush=True)


def diffusers_decode(a) -> None:
    import torch
    from diffusers import AutoencoderKLWan

    folder = Path(a.vae)
    if (folder / "diffusion_pytorch_model.safetensors").exists():
        vae = AutoencoderKLWan.from_pretrained(folder, torch_dtype=torch.float32)
    else:
        vae = AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(folder))
    device = torch.device(a.device)
    vae.eval().to(device)
    torch.manual_seed(0)
    z = vae.config.z_dim
    spatial = vae.config.scale_factor_spatial or 8
    latents = torch.randn(1, z, (a.frames - 1) // 4 + 1, a.height // spatial, a.width // spatial).to(device)
    if a.tile:
        size, stride = (int(v) for v in a.tile.split(","))
        vae.enable_tiling(tile_sample_min_height=size, tile_sample_min_width=size, tile_sample_stride_height=stride,
                          tile_sample_stride_width=stride)
    with torch.no_grad():
        started = time.perf_counter()
        video = vae.decode(latents, return_dict=False)[0]
        frames = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()
        took = (time.perf_counter() - started) * 1e3
    print(json.dumps({"side": "diffusers", "case": "decode", "frames": int(frames.shape[1]), "decode_ms": took,
                      "peak_rss": peak_rss(), "threads": torch.get_num_threads()}), flush=True)


# --- the orchestration ---------------------------------------------------------------------------------------


def run_side(cmd: list[str]) -> list[dict]:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def median(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if not r.get("warmup") and key in r]
    return statistics.median(values) if values else float("nan")


def child(args: list[str]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", *args]


def mid_vae() -> Path:
    """A mid-size VAE: the Wan2.1 VAE's architecture at half its width (base_dim 48), random weights."""
    mid = Path(tempfile.mkdtemp()) / "vae"
    mid.mkdir()
    config = json.loads((WAN_CONFIGS / "vae/config.json").read_text())
    config["base_dim"] = 48
    (mid / "config.json").write_text(json.dumps(config))
    return mid


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="pipeline,step,decode,tiling")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default=str(ROOT / "models/shapes-tiny"))
    p.add_argument("--vgen-side", default=str(ROOT / "target/release/vgen-side"))
    p.add_argument("--child", nargs=argparse.REMAINDER)
    a = p.parse_args()
    if a.child:
        c = argparse.ArgumentParser()
        c.add_argument("what")
        for name in ("--model", "--transformer", "--vae", "--device", "--tile"):
            c.add_argument(name, default="cpu" if name == "--device" else None)
        for name in ("--runs", "--steps", "--frames", "--width", "--height"):
            c.add_argument(name, type=int, default=None)
        c.add_argument("--guidance", type=float, default=None)
        ca = c.parse_args(a.child)
        ca.runs = ca.runs or 5
        {"pipeline": diffusers_pipeline, "step": diffusers_step, "decode": diffusers_decode}[ca.what](ca)
        return

    import torch
    import diffusers
    import transformers

    side = a.vgen_side
    rows, quant_rows = [], []
    cases = a.cases.split(",")
    if "pipeline" in cases:
        r = str(a.runs)
        v = run_side([side, "pipeline", "--model", a.model, "--runs", r])
        d = run_side(child(["pipeline", "--model", a.model, "--runs", r]))
        for key, what in (("wall_ms", "wall time"), ("step_ms", "time per step"), ("decode_ms", "decode"), ("peak_rss", "peak RSS")):
            rows.append((f"{Path(a.model).name} end to end, {what}", median(v, key), median(d, key), key))
        # Guidance 1, as distilled models sample: no unconditional pass on either side.
        v1 = run_side([side, "pipeline", "--model", a.model, "--runs", r, "--guidance", "1"])
        d1 = run_side(child(["pipeline", "--model", a.model, "--runs", r, "--guidance", "1"]))
        for key, what in (("wall_ms", "wall time"), ("step_ms", "time per step")):
            rows.append((f"{Path(a.model).name} end to end at guidance 1, {what}", median(v1, key), median(d1, key), key))
        # Step caching (vgen only; diffusers' column is vgen without the cache, in the same run).
        vc = run_side([side, "pipeline", "--model", a.model, "--runs", r, "--step-cache", "0.1"])
        skipped = median(vc, "steps_skipped")
        for key, what in (("wall_ms", "wall time"), ("step_ms", "time per step")):
            rows.append((f"{Path(a.model).name} end to end with step_cache 0.1 ({skipped:g} steps skipped) against vgen "
                         f"without it, {what}", median(vc, key), median(v, key), key))
    if "step" in cases:
        size = ["--frames", "81", "--height", "480", "--width", "832"] if a.device == "cuda" else ["--frames", "5", "--height", "240", "--width", "416"]
        t = str(WAN_CONFIGS / "transformer")
        d = run_side(child(["step", "--transformer", t, "--runs", str(a.runs), "--device", a.device, *size]))
        if a.device == "cpu":
            v = run_side([side, "step", "--transformer", t, "--runs", str(a.runs), *size])
            tokens = v[0]["tokens"]
            rows.append((f"Wan2.1-1.3B denoising step with CFG, {tokens} tokens", median(v, "step_ms"), median(d, "step_ms"), "step_ms"))
            rows.append((f"Wan2.1-1.3B denoising step with CFG, {tokens} tokens, peak RSS", median(v, "peak_rss"), median(d, "peak_rss"), "peak_rss"))
            # Quantized weights (vgen only): the transformer's resident memory and step time in each format that
            # `vgen quantize` writes, beside vgen's own fp32 in the same run.
            # Step caching over a whole 20-step loop (vgen only; its other column is vgen without the cache).
            small = ["--frames", "5", "--height", "128", "--width", "128"]
            plain = run_side([side, "loop", "--transformer", t, "--steps", "20", *small])
            cached = run_side([side, "loop", "--transformer", t, "--steps", "20", "--step-cache", "0.1", *small])
            rows.append((f"Wan2.1-1.3B 20-step loop with CFG, {plain[0]['tokens']} tokens, step_cache 0.1 ({median(cached, 'steps_skipped'):g} "
                         "steps skipped, random weights) against vgen without it", median(cached, "loop_ms"),
                         median(plain, "loop_ms"), "loop_ms"))
            for fmt in ("fp8", "q8_0", "q4_k"):
                q = run_side([side, "step", "--transformer", t, "--runs", str(a.runs), "--format", fmt, *size])
                quant_rows.append((fmt, median(q, "weights_bytes"), median(v, "weights_bytes"), median(q, "step_ms"), median(v, "step_ms")))
        else:
            rows.append((f"diffusers 1.3B step on {a.device} (no vgen side in this script)", float("nan"), median(d, "step_ms"), "step_ms"))
    if "decode" in cases:
        mid = mid_vae()
        # The Wan2.2 VAE's architecture (TI2V-5B's: residual blocks, 2x2 patches, 16x) at a quarter of its width,
        # random weights, at 128x128 (8x8 latents).
        wan22 = Path(tempfile.mkdtemp()) / "vae"
        wan22.mkdir()
        config = json.loads((WAN_FAMILY / "wan2.2-ti2v-5b/vae/config.json").read_text())
        config.update(base_dim=40, decoder_base_dim=64)
        (wan22 / "config.json").write_text(json.dumps(config))
        for label, vae, size in (("tiny VAE, 64x64", Path(a.model) / "vae", ("64", "64")), ("mid-size VAE (random), 64x64", mid, ("64", "64")),
                                 ("Wan2.2 VAE at 1/4 width (random), 128x128", wan22, ("128", "128"))):
            if not vae.exists():
                continue
            for frames in ("17", "33", "65", "129"):
                with tempfile.TemporaryDirectory() as tmp:
                    v = run_side([side, "decode", "--vae", str(vae), "--frames", frames, "--height", size[0], "--width", size[1],
                                  "--out", os.path.join(tmp, "v.mp4")])
                d = run_side(child(["decode", "--vae", str(vae), "--frames", frames, "--height", size[0], "--width", size[1]]))
                rows.append((f"{label} decode {frames} frames, peak RSS", v[0]["peak_rss"], d[0]["peak_rss"], "peak_rss"))
                rows.append((f"{label} decode {frames} frames, time", v[0]["decode_ms"], d[0]["decode_ms"], "decode_ms"))
    if "tiling" in cases:
        mid = mid_vae()
        # Tiled decode (diffusers' enable_tiling, 128-pixel tiles every 96 here, so that CPU-sized frames span
        # several) at three sizes: peak memory should stay flat in resolution, on both sides.
        for px in ("192", "320", "448"):
            for tiled in (False, True):
                tile = ["--tile", "128,96"] if tiled else []
                with tempfile.TemporaryDirectory() as tmp:
                    v = run_side([side, "decode", "--vae", str(mid), "--frames", "5", "--height", px, "--width", px,
                                  "--out", os.path.join(tmp, "v.mp4"), *tile])
                d = run_side(child(["decode", "--vae", str(mid), "--frames", "5", "--height", px, "--width", px, *tile]))
                how = "tiled 128/96" if tiled else "whole"
                rows.append((f"mid-size VAE decode 5 frames at {px}x{px}, {how}, peak RSS", v[0]["peak_rss"], d[0]["peak_rss"], "peak_rss"))
                rows.append((f"mid-size VAE decode 5 frames at {px}x{px}, {how}, time", v[0]["decode_ms"], d[0]["decode_ms"], "decode_ms"))

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except StopIteration:
        pass
    print(f"# {time.strftime('%Y-%m-%d')} · {os.cpu_count()} CPUs ({cpu}) · torch {torch.__version__} · diffusers "
          f"{diffusers.__version__} · transformers {transformers.__version__} · {torch.get_num_threads()} threads · "
          f"median of {a.runs} runs after a warm-up")
    print("| case | vgen | diffusers | vgen/diffusers |")
    print("|---|---|---|---|")
    for what, v, d, key in rows:
        fmt = (lambda x: f"{x / 2**20:.0f} MiB") if key == "peak_rss" else (lambda x: f"{x:.1f} ms")
        ratio = v / d if d and d == d and v == v else float("nan")
        print(f"| {what} | {fmt(v)} | {fmt(d)} | {ratio:.2f} |")
    if quant_rows:
        print()
        print("| Wan2.1-1.3B transformer, blocks' matrices in | resident weights | of fp32 | step | of fp32 |")
        print("|---|---|---|---|---|")
        for fmt, wb, fb, st, fs in quant_rows:
            print(f"| {fmt} | {wb / 2**20:.0f} MiB | {wb / fb:.2f} | {st:.1f} ms | {st / fs:.2f} |")


if __name__ == "__main__":
    main()
