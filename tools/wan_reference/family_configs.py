#!/usr/bin/env python
"""Writes the real configurations of Wan2.1 I2V-14B-480P, FLF2V-14B-720P, Wan2.2 TI2V-5B, T2V-A14B and I2V-A14B
(configs only: no checkpoint can be downloaded here) to core/tests/fixtures/wan/family-configs/, and
manifest.json: every tensor each component holds, with its shape, as diffusers 0.42.1 / transformers 5.23.0 build
it on the meta device, at the **narrow widths** of `narrow()` (every layer and every name kept; the widths cut so
that vgen can build the same modules in a test, fast, and compare names and shapes exactly).

The configs are reconstructed from /work/shared/reference/wan22-and-i2v.md and the reference classes' defaults:
the architecture keys (layers, heads, widths, channels, patches, the image branch, the boundary) are what the
model cards and diffusers' conversion script give; the Wan2.2 VAE's 48 latent statistics are not reconstructed
(zeros and ones here), nor is anything that does not change a tensor's name or shape.

    nice -n 10 .venv/bin/python tools/wan_reference/family_configs.py
"""

from __future__ import annotations

import copy
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import full_config  # noqa: E402
import wan_fixture_lib as L  # noqa: E402

warnings.filterwarnings("ignore")

import torch  # noqa: E402

OUT = L.OUT / "family-configs"

T14B = dict(full_config.TRANSFORMER, num_attention_heads=40, num_layers=40, ffn_dim=13824)
I2V_14B = dict(T14B, in_channels=36, image_dim=1280, added_kv_proj_dim=5120)
FLF2V_14B = dict(I2V_14B, pos_embed_seq_len=514)
TI2V_5B = dict(full_config.TRANSFORMER, num_attention_heads=24, num_layers=30, ffn_dim=14336, in_channels=48,
               out_channels=48)
I2V_A14B = dict(T14B, in_channels=36)
VAE22 = {
    "_class_name": "AutoencoderKLWan", "_diffusers_version": full_config.DIFFUSERS_VERSION_SHIPPED,
    "attn_scales": [], "base_dim": 160, "decoder_base_dim": 256, "dim_mult": [1, 2, 4, 4], "dropout": 0.0,
    "in_channels": 12, "is_residual": True, "latents_mean": [0.0] * 48, "latents_std": [1.0] * 48,
    "num_res_blocks": 2, "out_channels": 12, "patch_size": 2, "scale_factor_spatial": 16,
    "scale_factor_temporal": 4, "temperal_downsample": [False, True, True], "z_dim": 48,
}
CLIP_H14 = {  # CLIP ViT-H/14 (open_clip's laion2b), as Wan2.1 I2V's image_encoder
    "architectures": ["CLIPVisionModel"], "attention_dropout": 0.0, "hidden_act": "gelu", "hidden_size": 1280,
    "image_size": 224, "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 5120,
    "layer_norm_eps": 1e-05, "model_type": "clip_vision_model", "num_attention_heads": 16, "num_channels": 3,
    "num_hidden_layers": 32, "patch_size": 14, "projection_dim": 1024,
}
CLIP_PROCESSOR = {
    "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True,
    "do_normalize": True, "do_rescale": True, "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}


def index(**extra) -> dict:
    base = dict(full_config.MODEL_INDEX, boundary_ratio=None, expand_timesteps=False, transformer_2=[None, None])
    base.update(extra)
    return base


I2V_INDEX = dict(image_encoder=["transformers", "CLIPVisionModel"], image_processor=["transformers", "CLIPImageProcessor"],
                 _class_name="WanImageToVideoPipeline")
SECOND = ["diffusers", "WanTransformer3DModel"]
FAMILY = {
    "wan2.1-i2v-14b-480p": {"model_index.json": index(**I2V_INDEX), "transformer": I2V_14B, "vae": full_config.VAE,
                            "image_encoder": CLIP_H14, "image_processor": CLIP_PROCESSOR},
    "wan2.1-flf2v-14b-720p": {"model_index.json": index(**I2V_INDEX), "transformer": FLF2V_14B,
                              "vae": full_config.VAE, "image_encoder": CLIP_H14, "image_processor": CLIP_PROCESSOR},
    "wan2.2-ti2v-5b": {"model_index.json": index(expand_timesteps=True), "transformer": TI2V_5B, "vae": VAE22},
    "wan2.2-t2v-a14b": {"model_index.json": index(boundary_ratio=0.875, transformer_2=SECOND), "transformer": T14B,
                        "transformer_2": T14B, "vae": full_config.VAE},
    "wan2.2-i2v-a14b": {"model_index.json": index(boundary_ratio=0.9, transformer_2=SECOND,
                                                  _class_name="WanImageToVideoPipeline"),
                        "transformer": I2V_A14B, "transformer_2": I2V_A14B, "vae": full_config.VAE},
}


def narrow(component: str, config: dict) -> dict:
    """The same structure at test widths; `core/tests/wan_full_size.rs` narrows the same way."""
    c = copy.deepcopy(config)
    if component.startswith("transformer"):
        c.update(num_attention_heads=2, attention_head_dim=6, ffn_dim=8, text_dim=8)
        if c.get("image_dim") is not None:
            c.update(image_dim=8, added_kv_proj_dim=12)
    elif component == "vae":
        c.update(base_dim=4, z_dim=c["z_dim"], latents_mean=c["latents_mean"], latents_std=c["latents_std"])
        if c.get("decoder_base_dim") is not None:
            c.update(decoder_base_dim=4)
    elif component == "image_encoder":
        c.update(hidden_size=8, intermediate_size=8, num_attention_heads=2)
    return c


def build(component: str, config: dict):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import CLIPVisionConfig, CLIPVisionModel

    with torch.device("meta"):
        if component.startswith("transformer"):
            return WanTransformer3DModel.from_config(config)
        if component == "vae":
            return AutoencoderKLWan.from_config(config)
        keys = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
        return CLIPVisionModel(CLIPVisionConfig(**keys))


def write() -> Path:
    manifest = {"note": "name -> shape of each component at narrow() widths, as diffusers 0.42.1 / transformers "
                        "5.23.0 build it (every layer and name kept)"}
    for name, files in FAMILY.items():
        for rel, obj in files.items():
            if rel.endswith(".json"):
                L.write_json(OUT / name / rel, obj)
            elif rel == "image_processor":
                L.write_json(OUT / name / rel / "preprocessor_config.json", obj)
            else:
                L.write_json(OUT / name / rel / "config.json", obj)
                manifest[f"{name}/{rel}"] = full_config.saved_tensors(build(rel, narrow(rel, obj)))
    body = ",\n".join(f" {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in manifest.items())
    (OUT / "manifest.json").write_text("{\n" + body + "\n}\n", encoding="utf-8")
    return OUT


if __name__ == "__main__":
    L.check_versions()
    out = write()
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out.relative_to(L.REPO)}: {total / 1e3:.0f} kB")
