"""Tiled VAE decode: diffusers' `AutoencoderKLWan.enable_tiling()` on the fixtures' tiny Wan2.1 VAE (8x in space)
and tiny Wan2.2 VAE (16x, 2x2 patches), with tiles small enough that the latents span 2 x 3 of them (2 x 1
for the Wan2.2 one), and 2 latent frames (5 frames), so the file stays under 1 MB. Writes
`cases/tiling.safetensors` (`{vae}.z`, `{vae}.tiled`, `{vae}.whole` and the tile settings), which
`core/tests/wan_parity.rs` checks vgen's tiled decode against.

    .venv/bin/python tools/wan_reference/make_tiling_case.py
"""

from __future__ import annotations

import pathlib

import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import save_file

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "core" / "tests" / "fixtures" / "wan"
# (label, VAE folder, latent frames, latent height, latent width, tile_sample_min, tile_sample_stride)
CASES = [
    ("wan21", FIXTURES / "tiny-wan" / "vae", 2, 5, 7, 32, 24),
    ("wan22", FIXTURES / "tiny-wan22-ti2v" / "vae", 2, 5, 4, 64, 48),
]


def main() -> None:
    torch.manual_seed(38)
    out = {}
    for label, folder, t, h, w, tile, stride in CASES:
        vae = AutoencoderKLWan.from_pretrained(folder).eval()
        z = torch.randn(1, vae.config.z_dim, t, h, w)
        with torch.no_grad():
            whole = vae.decode(z).sample
            vae.enable_tiling(tile_sample_min_height=tile, tile_sample_min_width=tile,
                              tile_sample_stride_height=stride, tile_sample_stride_width=stride)
            tiled = vae.decode(z).sample
        out[f"{label}.z"] = z
        out[f"{label}.whole"] = whole
        out[f"{label}.tiled"] = tiled
        out[f"{label}.tile"] = torch.tensor([tile, stride], dtype=torch.int64)
        print(label, "tiled vs whole max diff", (tiled - whole).abs().max().item())
    save_file(out, str(FIXTURES / "cases" / "tiling.safetensors"), metadata={"format": "pt"})


if __name__ == "__main__":
    main()
