"""Quantized weights: cases for `core/tests/quantized_weights.rs`, made with PyPI's `gguf` package (0.19.0), the
reference for ggml's formats, and diffusers 0.42.1.

Writes into core/tests/fixtures/wan/:
- `cases/ggml.safetensors`: for each ggml type vgen reads, blocks (`{type}.blocks`, uint8 [n, block bytes]) and
  their values as `gguf.quants.dequantize` gives them (`{type}.values`, fp32); and for Q8_0 and Q4_1, values and
  how `gguf.quants.quantize` encodes them (`{type}.source`, `{type}.quantized`), since vgen writes them too.
- `tiny-wan-quant/`: a tiny Wan transformer (256 wide, so the k-quants' 256-value blocks fit), as a GGUF file
  that `gguf.GGUFWriter` wrote (`transformer/wan-tiny-mixed.gguf`, original Wan key names as the widely used Wan
  GGUFs have them, every linear layer in another type, the 5-D patch embedding flattened with ComfyUI-GGUF's
  `comfy.gguf.orig_shape` metadata) and as ComfyUI-style scaled fp8 safetensors
  (`transformer-fp8/diffusion_pytorch_model.safetensors`: `model.diffusion_model.` prefix, `scaled_fp8` marker,
  per-tensor `scale_weight`, per-channel `weight_scale` as lightx2v writes it, and weights with no scale);
- `cases/quant.safetensors`: one input and what diffusers' `WanTransformer3DModel` outputs for it when its
  weights are each file's weights decoded by the reference (`gguf.output`, `fp8.output`), and in fp32 before
  quantization (`gguf.dense.output`, `fp8.dense.output`). The fp8 model is narrower (64 wide): fp8 has no blocks.

    .venv/bin/python tools/wan_reference/make_quant_case.py
"""

from __future__ import annotations

import json
import pathlib

import gguf
import numpy as np
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import save_file

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "core" / "tests" / "fixtures" / "wan"
QUANT = FIXTURES / "tiny-wan-quant"
Q = gguf.GGMLQuantizationType

TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K]
TRANSFORMER_KW = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=32, freq_dim=256, ffn_dim=256, num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=32,
)
# The type each linear layer's weight is stored in (original key names).
LAYER_TYPES = {
    "blocks.0.self_attn.q.weight": Q.Q8_0,
    "blocks.0.self_attn.k.weight": Q.Q4_0,
    "blocks.0.self_attn.v.weight": Q.Q4_1,
    "blocks.0.self_attn.o.weight": Q.Q4_K,
    "blocks.0.cross_attn.q.weight": Q.Q5_K,
    "blocks.0.cross_attn.k.weight": Q.Q6_K,
    "blocks.0.cross_attn.v.weight": Q.Q4_1,
    "blocks.0.ffn.0.weight": Q.Q4_K,
    "blocks.0.ffn.2.weight": Q.Q6_K,
    "time_embedding.0.weight": Q.Q5_K,
    "time_projection.1.weight": Q.Q4_K,
    "text_embedding.0.weight": Q.BF16,
}
# Other matrices are Q4_0 (the file stays small); vectors and tables F32; the patch embedding F16.
DEFAULT_MATRIX = Q.Q4_0
# Scaled fp8 (ComfyUI): per-tensor `scale_weight`; lightx2v: per-channel `weight_scale`; and no scale at all.
FP8_TRANSFORMER_KW = dict(TRANSFORMER_KW, attention_head_dim=32, ffn_dim=96, freq_dim=64)
FP8_PER_TENSOR = ["blocks.0.self_attn.q.weight", "blocks.0.self_attn.k.weight", "blocks.0.ffn.0.weight",
                  "blocks.0.cross_attn.o.weight", "time_projection.1.weight"]
FP8_PER_CHANNEL = ["blocks.0.self_attn.v.weight", "blocks.0.ffn.2.weight", "head.head.weight"]
FP8_UNSCALED = ["blocks.0.self_attn.o.weight", "blocks.0.cross_attn.q.weight"]

# diffusers' key names in the original spelling: the inverse of `convert_wan_transformer_to_diffusers`.
TO_ORIGINAL = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("attn1.", "self_attn."), ("attn2.", "cross_attn."), (".to_out.0.", ".o."), (".to_q.", ".q."),
    (".to_k.", ".k."), (".to_v.", ".v."), ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"),
    ("proj_out", "head.head"), (".norm2.", ".norm__"), (".norm3.", ".norm2."), (".norm__", ".norm3."),
]


def original_name(key: str) -> str:
    if key == "scale_shift_table":
        return "head.modulation"
    for a, b in TO_ORIGINAL:
        key = key.replace(a, b)
    return key.replace("scale_shift_table", "modulation")


def random_blocks(qtype, n: int, rng: np.random.Generator) -> np.ndarray:
    """n valid blocks: values quantized by the reference where it can; else random bytes with finite fp16 scales."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    if qtype in (Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q8_0):
        values = rng.standard_normal((n, block), dtype=np.float32) * rng.uniform(0.01, 2.0, (n, 1)).astype(np.float32)
        return gguf.quants.quantize(values, qtype).view(np.uint8).reshape(n, size)
    raw = rng.integers(0, 256, (n, size), dtype=np.uint8)
    halfs = {Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}[qtype]
    for at in halfs:
        raw[:, at:at + 2] = rng.uniform(-0.05, 0.05, n).astype(np.float16).view(np.uint8).reshape(n, 2)
    return raw


def ggml_cases(rng: np.random.Generator) -> dict[str, torch.Tensor]:
    out = {}
    for qtype in TYPES:
        blocks = random_blocks(qtype, 24, rng)
        values = gguf.quants.dequantize(blocks, qtype).reshape(-1)
        out[f"{qtype.name}.blocks"] = torch.from_numpy(blocks.copy())
        out[f"{qtype.name}.values"] = torch.from_numpy(values.astype(np.float32).copy())
    source = (rng.standard_normal((16, 64), dtype=np.float32) * 0.3).astype(np.float32)
    source[3, :32] = 0.0  # an all-zero block: d = 0
    for qtype in (Q.Q8_0, Q.Q4_1):
        out[f"{qtype.name}.source"] = torch.from_numpy(source.copy())
        out[f"{qtype.name}.quantized"] = torch.from_numpy(gguf.quants.quantize(source, qtype).view(np.uint8).copy())
    return out


def quantize_weight(w: np.ndarray, qtype, rng: np.random.Generator) -> np.ndarray:
    """The layer's bytes in `qtype`: the reference's quantizer where it has one, else valid random k-quant blocks
    (the reference has no k-quant quantizer; what matters here is that both sides decode the same bytes)."""
    if qtype in (Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q8_0):
        return gguf.quants.quantize(w, qtype)
    rows, cols = w.shape
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return random_blocks(qtype, rows * cols // block, rng).reshape(rows, cols // block * size)


def to_fp8(w: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    return (w if scale is None else w / scale).to(torch.float8_e4m3fn)


def tiny_model(kw: dict) -> tuple[WanTransformer3DModel, dict[str, torch.Tensor]]:
    """A seeded tiny transformer and its weights under the original key names."""
    model = WanTransformer3DModel(**kw).eval()
    with torch.no_grad():
        for p in model.parameters():  # norms and tables away from their constant initial values
            p.add_(torch.randn_like(p) * 0.02)
    dense = {k: v.detach().clone() for k, v in model.state_dict().items()}
    original = {original_name(k): v for k, v in dense.items()}
    back = convert_wan_transformer_to_diffusers(dict(original))
    assert sorted(back) == sorted(dense), sorted(set(back) ^ set(dense))
    return model, original


def write_gguf(path: pathlib.Path, original: dict[str, torch.Tensor], rng: np.random.Generator) -> dict:
    """The model as ComfyUI-GGUF's converter lays a Wan model out; returns the weights the reference decodes."""
    writer = gguf.GGUFWriter(str(path), arch="wan")
    decoded = {}
    for name, t in sorted(original.items()):
        w = t.numpy().astype(np.float32)
        if name == "patch_embedding.weight":
            flat = w.reshape(w.shape[0], -1).astype(np.float16)
            writer.add_array(f"comfy.gguf.orig_shape.{name}", list(w.shape))
            writer.add_tensor(name, flat, raw_dtype=Q.F16)
            decoded[name] = torch.from_numpy(flat.astype(np.float32).reshape(w.shape))
            continue
        qtype = LAYER_TYPES.get(name, DEFAULT_MATRIX if w.ndim == 2 else Q.F32)
        data = quantize_weight(w, qtype, rng) if qtype != Q.F32 else w
        writer.add_tensor(name, data, raw_dtype=qtype)
        values = gguf.quants.dequantize(data, qtype)
        decoded[name] = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32).reshape(w.shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return decoded


def write_fp8(path: pathlib.Path, original: dict[str, torch.Tensor]) -> dict:
    """The model as scaled fp8 safetensors, as ComfyUI and lightx2v ship them; returns the decoded weights."""
    fp8, decoded = {"scaled_fp8": torch.zeros(2, dtype=torch.float8_e4m3fn)}, {}
    for name, t in sorted(original.items()):
        key = f"model.diffusion_model.{name}"
        if name in FP8_PER_TENSOR:
            scale = t.abs().max() / 448.0
            fp8[key] = to_fp8(t, scale)
            fp8[key.removesuffix(".weight") + ".scale_weight"] = scale.reshape(1).float()
            decoded[name] = fp8[key].float() * scale
        elif name in FP8_PER_CHANNEL:
            scale = t.abs().amax(dim=1, keepdim=True) / 448.0
            fp8[key] = to_fp8(t, scale)
            fp8[key + "_scale"] = scale.float()
            decoded[name] = fp8[key].float() * scale
        elif name in FP8_UNSCALED:
            fp8[key] = to_fp8(t, None)
            decoded[name] = fp8[key].float()
        else:
            fp8[key] = t.to(torch.bfloat16) if t.dim() > 1 else t
            decoded[name] = fp8[key].float()
    save_file(fp8, str(path))
    return decoded


def main() -> None:
    rng = np.random.default_rng(35)
    torch.manual_seed(35)
    (FIXTURES / "cases").mkdir(parents=True, exist_ok=True)
    save_file(ggml_cases(rng), str(FIXTURES / "cases" / "ggml.safetensors"), metadata={"format": "pt"})

    hidden = torch.randn(1, 16, 2, 4, 4)
    timestep = torch.tensor([700.0])
    text = torch.randn(1, 6, 32)
    cases = {"hidden_states": hidden, "timestep": timestep, "encoder_hidden_states": text}
    for label, folder, kw in [("gguf", "transformer", TRANSFORMER_KW), ("fp8", "transformer-fp8", FP8_TRANSFORMER_KW)]:
        model, original = tiny_model(kw)
        (QUANT / folder).mkdir(parents=True, exist_ok=True)
        config = dict(kw, patch_size=[1, 2, 2], _class_name="WanTransformer3DModel")
        (QUANT / folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if label == "gguf":
            decoded = write_gguf(QUANT / folder / "wan-tiny-mixed.gguf", original, rng)
        else:
            decoded = write_fp8(QUANT / folder / "diffusion_pytorch_model.safetensors", original)
        for which, state in [("dense", original), ("", decoded)]:
            model.load_state_dict(convert_wan_transformer_to_diffusers(dict(state)))
            with torch.no_grad():
                out = model(hidden_states=hidden, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
            cases[f"{label}.{which + '.' if which else ''}output"] = out
    save_file({k: v.contiguous() for k, v in cases.items()}, str(FIXTURES / "cases" / "quant.safetensors"),
              metadata={"format": "pt"})
    print("wrote", QUANT, "and cases/ggml.safetensors, cases/quant.safetensors")


if __name__ == "__main__":
    main()
