#!/usr/bin/env python
"""Writes the real Wan2.1-T2V-1.3B configuration (configs only, no weights) to
core/tests/fixtures/wan/wan2.1-t2v-1.3b-configs/, so the Rust side can build the full-size model with random
weights. Also writes manifest.json: every tensor the full-size components hold, with its shape, as
diffusers 0.42.1 / transformers 5.23.0 build them from these configs (on the meta device: nothing is allocated).

The checkpoint (Wan-AI/Wan2.1-T2V-1.3B-Diffusers) cannot be downloaded here, so the files are reconstructed from
the Wan2.1 facts in /work/shared/reference/wan21.md and the constructor defaults of the reference classes; README.md
in the fixtures folder says which keys are certain and which are not.

    nice -n 10 .venv/bin/python tools/wan_reference/full_config.py
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import wan_fixture_lib as L  # noqa: E402

warnings.filterwarnings("ignore")

import torch  # noqa: E402

DIFFUSERS_VERSION_SHIPPED = "0.33.0.dev0"  # what the Wan-AI *-Diffusers repos were exported with

MODEL_INDEX = {
    "_class_name": "WanPipeline",
    "_diffusers_version": DIFFUSERS_VERSION_SHIPPED,
    "scheduler": ["diffusers", "UniPCMultistepScheduler"],
    "text_encoder": ["transformers", "UMT5EncoderModel"],
    "tokenizer": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "WanTransformer3DModel"],
    "vae": ["diffusers", "AutoencoderKLWan"],
}

TRANSFORMER = {
    "_class_name": "WanTransformer3DModel",
    "_diffusers_version": DIFFUSERS_VERSION_SHIPPED,
    "added_kv_proj_dim": None,
    "attention_head_dim": 128,
    "cross_attn_norm": True,
    "eps": 1e-06,
    "ffn_dim": 8960,
    "freq_dim": 256,
    "image_dim": None,
    "in_channels": 16,
    "num_attention_heads": 12,
    "num_layers": 30,
    "out_channels": 16,
    "patch_size": [1, 2, 2],
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 1024,
    "text_dim": 4096,
}

VAE = {
    "_class_name": "AutoencoderKLWan",
    "_diffusers_version": DIFFUSERS_VERSION_SHIPPED,
    "attn_scales": [],
    "base_dim": 96,
    "dim_mult": [1, 2, 4, 4],
    "dropout": 0.0,
    # The diffusers defaults, which are the Wan2.1 VAE's statistics.
    "latents_mean": [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
    "latents_std": [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916],
    "num_res_blocks": 2,
    "temperal_downsample": [False, True, True],
    "z_dim": 16,
}

TEXT_ENCODER = {  # google/umt5-xxl, as the encoder-only text_encoder of the Wan pipelines
    "architectures": ["UMT5EncoderModel"],
    "classifier_dropout": 0.0,
    "d_ff": 10240,
    "d_kv": 64,
    "d_model": 4096,
    "decoder_start_token_id": 0,
    "dense_act_fn": "gelu_new",
    "dropout_rate": 0.1,
    "eos_token_id": 1,
    "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0,
    "is_encoder_decoder": True,
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-06,
    "model_type": "umt5",
    "num_decoder_layers": 24,
    "num_heads": 64,
    "num_layers": 24,
    "output_past": True,
    "pad_token_id": 0,
    "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32,
    "scalable_attention": True,
    "tie_word_embeddings": False,
    "tokenizer_class": "T5Tokenizer",
    "use_cache": True,
    "vocab_size": 256384,
}

SCHEDULER = {"_class_name": "UniPCMultistepScheduler", "_diffusers_version": DIFFUSERS_VERSION_SHIPPED,
             **{k: v for k, v in L.WAN21_SCHEDULER_CONFIG.items() if k != "_class_name"}}

FILES = {
    "model_index.json": MODEL_INDEX,
    "transformer/config.json": TRANSFORMER,
    "vae/config.json": VAE,
    "text_encoder/config.json": TEXT_ENCODER,
    "scheduler/scheduler_config.json": SCHEDULER,
}

# Expected sizes, so that a wrong reconstruction is caught (the transformer is "roughly 1.42 B parameters").
EXPECT = {
    "transformer": dict(params=(1.40e9, 1.44e9), rope=(44, 42, 42), inner=1536),
    "vae": dict(params=(1.2e8, 1.3e8)),
    "text_encoder": dict(params=(5.6e9, 5.8e9)),
}


def build_meta(path: Path):
    """The three full-size models on the meta device (shapes only)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        tr = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(str(path / "transformer")))
        vae = AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(str(path / "vae")))
        te = UMT5EncoderModel(UMT5Config.from_pretrained(str(path / "text_encoder")))
    return tr, vae, te


def saved_tensors(model) -> dict[str, list[int]]:
    """What save_pretrained writes: the state dict without the tied duplicates transformers drops."""
    sd = model.state_dict()
    tied = getattr(model, "_tied_weights_keys", None) or {}
    drop = set(tied.keys()) if isinstance(tied, dict) else set()
    return {k: list(v.shape) for k, v in sd.items() if k not in drop}


def manifest(path: Path) -> dict:
    tr, vae, te = build_meta(path)
    return {
        "note": "tensor name -> shape of each full-size component as diffusers 0.42.1 / transformers 5.23.0 build "
        "it from these configs (what save_pretrained would write; text_encoder: the tied "
        "encoder.embed_tokens.weight is not saved, shared.weight is)",
        "transformer": saved_tensors(tr),
        "vae": saved_tensors(vae),
        "text_encoder": saved_tensors(te),
    }


def write(out: Path | None = None) -> Path:
    out = out or (L.OUT / L.FULL)
    for rel, obj in FILES.items():
        L.write_json(out / rel, obj)
    m = manifest(out)
    lines = ['{', f' "note": {json.dumps(m["note"])},']
    for i, comp in enumerate(("transformer", "vae", "text_encoder")):
        body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in m[comp].items())
        lines.append(f' "{comp}": {{\n{body}\n }}' + ("," if i < 2 else ""))
    lines.append("}")
    (out / "manifest.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
    problems = verify(out)
    if problems:
        raise SystemExit("\n".join(problems))
    return out


def verify(path: Path) -> list[str]:
    """Re-reads the folder with the reference classes and checks sizes, RoPE split and the manifest."""
    from diffusers import UniPCMultistepScheduler

    problems = []
    for rel, obj in FILES.items():
        if json.loads((path / rel).read_text(encoding="utf-8")) != obj:
            problems.append(f"{rel} differs from full_config.py")
    tr, vae, te = build_meta(path)
    for name, model in (("transformer", tr), ("vae", vae), ("text_encoder", te)):
        n = sum(p.numel() for p in model.parameters())
        lo, hi = EXPECT[name]["params"]
        if not lo <= n <= hi:
            problems.append(f"{name}: {n:,} parameters, expected {lo:,.0f}..{hi:,.0f}")
    if (tr.rope.t_dim, tr.rope.h_dim, tr.rope.w_dim) != EXPECT["transformer"]["rope"]:
        problems.append(f"rope split {(tr.rope.t_dim, tr.rope.h_dim, tr.rope.w_dim)}")
    if tr.config.num_attention_heads * tr.config.attention_head_dim != EXPECT["transformer"]["inner"]:
        problems.append("inner dim")
    if (vae.config.scale_factor_spatial, vae.config.scale_factor_temporal) != (8, 4):
        problems.append("vae scale factors")
    s = UniPCMultistepScheduler.from_config(json.loads((path / "scheduler/scheduler_config.json").read_text()))
    s.set_timesteps(50)
    if int(s.timesteps[0]) != 999 or float(s.sigmas[-1]) != 0.0:
        problems.append("scheduler schedule")
    m = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    for comp, model in (("transformer", tr), ("vae", vae), ("text_encoder", te)):
        if m.get(comp) != saved_tensors(model):
            problems.append(f"manifest.json[{comp}] differs from the model built from the config")
    return problems


def param_counts(path: Path) -> dict[str, int]:
    tr, vae, te = build_meta(path)
    return {n: sum(p.numel() for p in m.parameters()) for n, m in (("transformer", tr), ("vae", vae), ("text_encoder", te))}


if __name__ == "__main__":
    L.check_versions()
    out = write()
    print(f"wrote {out.relative_to(L.REPO)}: {param_counts(out)}")
