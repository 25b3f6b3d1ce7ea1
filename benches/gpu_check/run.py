"""vgen's one-shot GPU check: one markdown table of what a GPU machine does with vgen, beside diffusers.

Runs on a machine with an NVIDIA GPU, Python and torch 2.11 but no Rust: the binary (`vgen-side`) is built on a
development machine and carried (`make gpu-check-prepare` puts it and the diffusers wheels in `.gpu/`, well under
64 MiB). On a machine without CUDA, or with --dry-run, every case runs at a small size on the CPU instead, which
proves the script and the binary (`make test` does that). The rows:

- whether CUDA was found and loaded, by libtorch in vgen and by torch;
- bf16 parity of the tiny fixture transformers (text-to-video, image-to-video) against diffusers' fp32 outputs,
  vgen and diffusers side by side;
- the Wan2.1-1.3B transformer's denoising step with CFG at 81 x 480 x 832, vgen beside diffusers in the same run,
  with the model FLOPs utilisation against the card's bf16 peak;
- peak device memory of that step in bf16, with the blocks' matrices in fp8 and Q4_K, and with block offload;
- the Wan2.1 VAE's decode of 81 frames at 480p, with and without tiling (random weights, its real widths).

Peak device memory is what `nvidia-smi` reports for the process (the CUDA context and the caching allocator's
reservations included), polled every 50 ms; on the CPU it is the peak RSS.

    python3 benches/gpu_check/run.py --vgen-side .gpu/bin/vgen-side --out gpu-check.md
    .venv/bin/python benches/gpu_check/run.py --vgen-side target/debug/vgen-side --dry-run
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "core" / "tests" / "fixtures" / "wan"
WAN13 = FIXTURES / "wan2.1-t2v-1.3b-configs"
SIDE = ROOT / "benches" / "side_by_side" / "run.py"
# Dense bf16 tensor-core peaks, FLOP/s, by the name torch reports.
PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "RTX 4090": 165e12}


def torch_lib() -> str:
    import torch

    return str(pathlib.Path(torch.__file__).parent / "lib")


def gpu_used() -> int:
    """Bytes in use on GPU 0, all processes."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                         capture_output=True, text=True).stdout.strip()
    return int(out.splitlines()[0]) * 2**20 if out else 0


class Peak:
    """The largest device memory `nvidia-smi` reports for `pid` while it runs (on the CPU: nothing). In a container
    whose PIDs `nvidia-smi` does not see, the GPU's whole use above what it was before the process started."""

    def __init__(self, pid: int, cuda: bool) -> None:
        self.pid, self.cuda, self.bytes, self.total, self.done = pid, cuda, 0, 0, False
        if cuda:
            self.baseline = gpu_used()
            self.thread = threading.Thread(target=self.poll, daemon=True)
            self.thread.start()

    def poll(self) -> None:
        while not self.done:
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout
            for line in out.splitlines():
                pid, _, mib = line.partition(",")
                if pid.strip() == str(self.pid):
                    self.bytes = max(self.bytes, int(mib.strip()) * 2**20)
            self.total = max(self.total, gpu_used() - self.baseline)
            time.sleep(0.05)

    def stop(self) -> int:
        self.done = True
        if self.cuda:
            self.thread.join()
        return self.bytes or self.total


def run(cmd: list[str], cuda: bool, env: dict | None = None) -> tuple[list[dict], int]:
    """The JSON lines a command prints, and its peak device memory."""
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                             env={**os.environ, **(env or {})})
    peak = Peak(child.pid, cuda)
    out, err = child.communicate()
    device_peak = peak.stop()
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({child.returncode}):\n{err[-3000:]}")
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return rows, device_peak


def timed(rows: list[dict], key: str) -> float:
    values = sorted(r[key] for r in rows if not r.get("warmup"))
    return values[len(values) // 2] if values else float("nan")


def step_flops(config: dict, frames: int, height: int, width: int, text_tokens: int = 512) -> float:
    """FLOPs of one CFG step (two forwards) of a Wan transformer: matmuls and attention, 2 per multiply-add."""
    d, f, layers = config["num_attention_heads"] * config["attention_head_dim"], config["ffn_dim"], config["num_layers"]
    s = ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)
    per_block = 8 * s * d * d + 4 * s * s * d + 4 * s * d * d + 4 * text_tokens * d * d + 4 * s * text_tokens * d + 4 * s * d * f
    return 2 * layers * per_block


def diffusers_parity(device: str) -> list[tuple[str, float]]:
    """The same cases through diffusers in bf16 on `device`."""
    import torch
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file

    out = []
    with torch.no_grad():
        c = load_file(FIXTURES / "cases" / "transformer.safetensors")
        m = WanTransformer3DModel.from_pretrained(FIXTURES / "tiny-wan" / "transformer", torch_dtype=torch.bfloat16).to(device)
        for case in ("a", "b"):
            get = lambda k: c[f"{case}.{k}"].to(device)  # noqa: E731
            y = m(hidden_states=get("hidden_states").bfloat16(), timestep=get("timestep"),
                  encoder_hidden_states=get("encoder_hidden_states").bfloat16(), return_dict=False)[0]
            out.append((f"t2v.{case}", (y.float().cpu() - c[f"{case}.sample"]).abs().max().item()))
        c = load_file(FIXTURES / "cases" / "i2v.safetensors")
        m = WanTransformer3DModel.from_pretrained(FIXTURES / "tiny-wan-i2v" / "transformer", torch_dtype=torch.bfloat16).to(device)
        get = lambda k: c[k][:2].to(device)  # noqa: E731
        y = m(hidden_states=get("module.x").bfloat16(), timestep=get("module.t"),
              encoder_hidden_states=get("module.text").bfloat16(),
              encoder_hidden_states_image=get("i2v.image_embeds_in").bfloat16(), return_dict=False)[0]
        out.append(("i2v", (y.float().cpu() - c["i2v.out"]).abs().max().item()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vgen-side", required=True)
    ap.add_argument("--dry-run", action="store_true", help="small sizes on the CPU, whatever the machine has")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=pathlib.Path)
    a = ap.parse_args()
    started = time.time()
    import torch

    cuda = torch.cuda.is_available() and not a.dry_run
    device = "cuda" if cuda else "cpu"
    env = {"LD_LIBRARY_PATH": torch_lib() + ":" + os.environ.get("LD_LIBRARY_PATH", "")}
    side = [str(pathlib.Path(a.vgen_side).resolve())]
    lines = []
    name = torch.cuda.get_device_name(0) if cuda else "CPU (dry run)"
    lines.append(f"# vgen GPU check · {time.strftime('%Y-%m-%d')} · {name} · torch {torch.__version__}"
                 + (" · dry run: small sizes on the CPU" if not cuda else ""))
    lines.append("")
    lines.append("| check | vgen | diffusers | note |")
    lines.append("|---|---|---|---|")

    info, _ = run(side + ["cuda"], False, env)
    lines.append(f"| CUDA found and loaded | {info[0]['available']} ({info[0]['devices']} devices, cuDNN {info[0]['cudnn']}, "
                 f"libtorch {info[0]['libtorch']}) | torch {torch.cuda.is_available()} | |")

    import importlib.util

    # Without diffusers (CI's environment has none) the diffusers column stays empty; the GPU machine gets it
    # from the wheels `make gpu-check-prepare` carries.
    have_diffusers = importlib.util.find_spec("diffusers") is not None
    theirs = dict(diffusers_parity(device)) if have_diffusers else {}
    if not have_diffusers:
        lines[0] += " · diffusers not installed: its column is empty"
    ours, _ = run(side + ["parity", "--fixtures", str(FIXTURES), "--device", device, "--dtype", "bf16"], False, env)
    for r in ours:
        d = theirs.get(r["model"])
        lines.append(f"| bf16 parity, {r['model']}: max abs error against diffusers' fp32 (outputs up to {r['scale']:.2f}) "
                     f"| {r['max_abs_error']:.2e} | {'' if d is None else f'{d:.2e}'} | {device} |")

    if cuda:
        transformer, size = WAN13 / "transformer", (81, 480, 832)
        vae, vae_size, tile = WAN13 / "vae", (81, 480, 832), "256,192"
    else:
        transformer, size = FIXTURES / "tiny-wan" / "transformer", (5, 32, 32)
        vae, vae_size, tile = FIXTURES / "tiny-wan" / "vae", (5, 64, 64), "32,24"
    frames, height, width = size
    dims = ["--frames", str(frames), "--height", str(height), "--width", str(width), "--runs", str(a.runs)]
    dtype = ["--dtype", "bf16"] if cuda else []
    config = json.loads((transformer / "config.json").read_text())
    flops = step_flops(config, frames, height, width)
    peak = next((v for k, v in PEAKS.items() if k in name), None)
    steps = {}
    for label, extra in (("bf16" if cuda else "f32", []), ("fp8", ["--format", "fp8"]), ("Q4_K", ["--format", "q4_k"]),
                         ("block offload", ["--offload"])):
        rows, dev_peak = run(side + ["step", "--transformer", str(transformer), "--device", device, *dtype, *dims, *extra], cuda, env)
        steps[label] = (timed(rows, "step_ms"), dev_peak if cuda else max(r["peak_rss"] for r in rows), rows[0]["tokens"])
    no_rows = ([{"step_ms": float("nan"), "peak_rss": 0, "decode_ms": float("nan")}], 0)
    d_rows, d_peak = run([sys.executable, str(SIDE), "--child", "step", "--transformer", str(transformer), "--device", device,
                          *dims], cuda) if have_diffusers else no_rows
    d_ms = timed(d_rows, "step_ms") if have_diffusers else float("nan")
    v_ms, _, tokens = steps["bf16" if cuda else "f32"]
    mfu = lambda ms: f", MFU {flops / (ms / 1e3) / peak:.0%}" if peak and ms == ms else ""  # noqa: E731
    what = "Wan2.1-1.3B" if cuda else "tiny-wan"
    lines.append(f"| {what} step with CFG, {frames}x{height}x{width} ({tokens} tokens), {flops / 1e12:.1f} TFLOP "
                 f"| {v_ms:.1f} ms{mfu(v_ms)} | {d_ms:.1f} ms{mfu(d_ms)} | vgen/diffusers {v_ms / d_ms:.2f} |")
    unit = "device" if cuda else "RSS"
    for label, (ms, mem, _) in steps.items():
        theirs_mem = f"{d_peak / 2**30:.2f} GiB" if (cuda and label == "bf16") else (
            f"{max(r['peak_rss'] for r in d_rows) / 2**30:.2f} GiB" if (not cuda and label == "f32") else "")
        lines.append(f"| {what} step, peak {unit} memory, {label} | {mem / 2**30:.2f} GiB ({ms:.1f} ms) | {theirs_mem} | |")

    vf, vh, vw = vae_size
    for tiled in (False, True):
        extra = ["--tile", tile] if tiled else []
        out = ROOT / "target" / "gpu-check-decode.mp4"
        out.parent.mkdir(exist_ok=True)
        rows, dev_peak = run(side + ["decode", "--vae", str(vae), "--frames", str(vf), "--height", str(vh), "--width", str(vw),
                                     "--out", str(out), "--device", device, *extra], cuda, env)
        mem = dev_peak if cuda else rows[0]["peak_rss"]
        d_extra = ["--tile", tile] if tiled else []
        d_rows, d_peak = run([sys.executable, str(SIDE), "--child", "decode", "--vae", str(vae), "--frames", str(vf),
                              "--height", str(vh), "--width", str(vw), "--device", device, *d_extra], cuda) if have_diffusers else no_rows
        d_mem = d_peak if cuda else d_rows[0]["peak_rss"]
        how = f"tiled {tile}" if tiled else "whole"
        lines.append(f"| VAE decode {vf} frames at {vw}x{vh}, {how}, peak {unit} memory | {mem / 2**30:.2f} GiB "
                     f"({rows[0]['decode_ms'] / 1e3:.1f} s) | {d_mem / 2**30:.2f} GiB ({d_rows[0]['decode_ms'] / 1e3:.1f} s) | |")
        out.unlink(missing_ok=True)

    lines.append("")
    lines.append(f"Ran in {time.time() - started:.0f} s.")
    table = "\n".join(lines)
    print(table)
    if a.out:
        a.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
