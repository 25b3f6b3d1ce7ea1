"""LoRA adapters: the fixtures' tiny Wan (`tiny-wan`) with adapters in each format people ship, loaded by diffusers'
`WanPipeline.load_lora_weights` (0.42.1, with peft 0.18.0) and mixed by `set_adapters`. Writes
`core/tests/fixtures/wan/loras/*.safetensors` and `cases/lora.safetensors` (the transformer's output on
`transformer.safetensors`' case `a` for each adapter set, and the latents of 2-step runs of the two-expert
`tiny-wan22-a14b` with adapters in one expert or both, and the text encoder's output with text-encoder adapters),
which `core/tests/wan_lora_parity.rs` checks vgen against.

Formats (`loras/`):
- `peft.safetensors`: diffusers/PEFT keys, `transformer.blocks.0.attn1.to_q.lora_A.weight`;
- `kohya.safetensors`: ComfyUI/kohya keys, `diffusion_model.blocks.0.self_attn.q.lora_down.weight` with `.alpha`;
- `musubi.safetensors`: the underscore form, `lora_unet_blocks_0_self_attn_q.lora_down.weight` with `.alpha`;
- `lightx2v.safetensors`: lightx2v's layout, `diffusion_model.blocks.0.self_attn.q.lora_A.weight`, with `diff_b`
  bias deltas on every layer, zero `diff` deltas on the norms, and the head as a full delta (`head.head.diff`,
  `head.head.diff_b`);
- `te_peft.safetensors` and `te_kohya.safetensors`: the text encoder's (UMT5's) attention and feed-forward layers,
  as `text_encoder.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight` and as kohya's
  `lora_te_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight` with `.alpha`. diffusers loads no
  text-encoder adapter for Wan, so the reference is peft's (`inject_adapter_in_model`) on transformers' UMT5.

    .venv/bin/python tools/wan_reference/make_lora_case.py
"""

from __future__ import annotations

import pathlib

import torch
from diffusers import WanPipeline, WanTransformer3DModel
from safetensors.torch import load_file, save_file

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "core" / "tests" / "fixtures" / "wan"
LORAS = FIXTURES / "loras"
RANK = 4
# Modules in the original spelling and diffusers', as the converters pair them.
ATTN = [("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0")]
FFN = [("ffn.0", "ffn.net.0.proj"), ("ffn.2", "ffn.net.2")]


def modules(transformer) -> list[tuple[str, str, int, int]]:
    """(original name, diffusers name, in, out) of every linear layer in the blocks."""
    out = []
    for i, block in enumerate(transformer.blocks):
        for attn, kind in (("attn1", "self_attn"), ("attn2", "cross_attn")):
            for o, c in ATTN:
                layer = getattr(block, attn).get_submodule(c)
                out.append((f"blocks.{i}.{kind}.{o}", f"blocks.{i}.{attn}.{c}", layer.in_features, layer.out_features))
        for o, c in FFN:
            layer = block.get_submodule(c)
            out.append((f"blocks.{i}.{o}", f"blocks.{i}.{c}", layer.in_features, layer.out_features))
    return out


def pair(gen: torch.Generator, fan_in: int, fan_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.randn(RANK, fan_in, generator=gen) * 0.2
    b = torch.randn(fan_out, RANK, generator=gen) * 0.2
    return a, b


def write_adapters(transformer) -> None:
    LORAS.mkdir(parents=True, exist_ok=True)
    layers = modules(transformer)
    gen = torch.Generator().manual_seed(34)
    peft = {}
    for _, name, fan_in, fan_out in layers:
        a, b = pair(gen, fan_in, fan_out)
        peft[f"transformer.{name}.lora_A.weight"], peft[f"transformer.{name}.lora_B.weight"] = a, b
    save_file(peft, str(LORAS / "peft.safetensors"))
    kohya = {}
    for original, _, fan_in, fan_out in layers:
        a, b = pair(gen, fan_in, fan_out)
        key = f"diffusion_model.{original}"
        kohya[f"{key}.lora_down.weight"], kohya[f"{key}.lora_up.weight"] = a, b
        kohya[f"{key}.alpha"] = torch.tensor(2.0)  # alpha / rank = 0.5
    save_file(kohya, str(LORAS / "kohya.safetensors"))
    musubi = {}
    for original, _, fan_in, fan_out in layers:
        a, b = pair(gen, fan_in, fan_out)
        key = "lora_unet_" + original.replace(".", "_")
        musubi[f"{key}.lora_down.weight"], musubi[f"{key}.lora_up.weight"] = a, b
        musubi[f"{key}.alpha"] = torch.tensor(8.0)  # alpha / rank = 2
    save_file(musubi, str(LORAS / "musubi.safetensors"))
    light = {}
    for original, _, fan_in, fan_out in layers:
        a, b = pair(gen, fan_in, fan_out)
        key = f"diffusion_model.{original}"
        light[f"{key}.lora_A.weight"], light[f"{key}.lora_B.weight"] = a, b
        light[f"{key}.diff_b"] = torch.randn(fan_out, generator=gen) * 0.05
    for i, block in enumerate(transformer.blocks):
        light[f"diffusion_model.blocks.{i}.norm3.diff"] = torch.zeros(block.norm2.weight.shape)
        light[f"diffusion_model.blocks.{i}.norm3.diff_b"] = torch.zeros(block.norm2.bias.shape)
    head = transformer.proj_out
    light["diffusion_model.head.head.diff"] = torch.randn(head.out_features, head.in_features, generator=gen) * 0.05
    light["diffusion_model.head.head.diff_b"] = torch.randn(head.out_features, generator=gen) * 0.05
    save_file(light, str(LORAS / "lightx2v.safetensors"))


def main() -> None:
    pipe = WanPipeline.from_pretrained(FIXTURES / "tiny-wan", torch_dtype=torch.float32)
    write_adapters(pipe.transformer)
    case = load_file(FIXTURES / "cases" / "transformer.safetensors")
    inputs = dict(hidden_states=case["a.hidden_states"], timestep=case["a.timestep"],
                  encoder_hidden_states=case["a.encoder_hidden_states"], return_dict=False)
    for name in ("peft", "kohya", "musubi", "lightx2v"):
        pipe.load_lora_weights(str(LORAS / f"{name}.safetensors"), adapter_name=name)
    out = {"base": None}
    runs = {
        "peft": (["peft"], [1.0]),
        "kohya": (["kohya"], [1.0]),
        "kohya.0.7": (["kohya"], [0.7]),
        "musubi": (["musubi"], [1.0]),
        "lightx2v": (["lightx2v"], [1.0]),
        "peft.0.8+kohya.0.5": (["peft", "kohya"], [0.8, 0.5]),
    }
    with torch.no_grad():
        pipe.disable_lora()
        out["base"] = pipe.transformer(**inputs)[0]
        pipe.enable_lora()
        for label, (names, weights) in runs.items():
            pipe.set_adapters(names, adapter_weights=weights)
            out[label] = pipe.transformer(**inputs)[0]
    out.update(two_experts())
    out.update(text_encoder())
    save_file({k: v.contiguous() for k, v in out.items()}, str(FIXTURES / "cases" / "lora.safetensors"),
              metadata={"format": "pt"})
    base = out["base"]
    for k, v in out.items():
        if v.shape == base.shape:
            print(f"{k}: max change from base {(v - base).abs().max().item():.3f}")
    print("a14b: peft in both experts vs peft-high + kohya-low, max difference "
          f"{(out['a14b.peft-both'] - out['a14b.peft-high+kohya-low']).abs().max().item():.3f}")


def text_encoder() -> dict[str, torch.Tensor]:
    """The tiny UMT5's last hidden state for "A cat and a dog." (16 tokens, rows past the prompt zeroed as the
    pipeline does) with each text-encoder adapter, through peft."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from transformers import AutoTokenizer, UMT5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "tiny-wan" / "tokenizer")
    tokens = tokenizer(["A cat and a dog."], padding="max_length", max_length=16, truncation=True,
                       add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    targets = ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]
    gen = torch.Generator().manual_seed(35)
    base = UMT5EncoderModel.from_pretrained(FIXTURES / "tiny-wan" / "text_encoder").eval()
    layers = []
    for i, block in enumerate(base.encoder.block):
        for j, sub in ((0, "SelfAttention"), (1, "DenseReluDense")):
            module = block.layer[j].get_submodule(sub)
            for t in targets:
                if hasattr(module, t):
                    linear = getattr(module, t)
                    layers.append((f"encoder.block.{i}.layer.{j}.{sub}.{t}", linear.in_features, linear.out_features))
    files = {"te_peft": ({}, None), "te_kohya": ({}, 2.0)}
    for name, (tensors, alpha) in files.items():
        for module, fan_in, fan_out in layers:
            a, b = pair(gen, fan_in, fan_out)
            if alpha is None:
                tensors[f"text_encoder.{module}.lora_A.weight"], tensors[f"text_encoder.{module}.lora_B.weight"] = a, b
            else:
                key = "lora_te_" + module.replace(".", "_")
                tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = a, b
                tensors[f"{key}.alpha"] = torch.tensor(alpha)
        save_file(tensors, str(LORAS / f"{name}.safetensors"))
    out = {}
    mask = tokens.attention_mask.unsqueeze(-1).float()
    with torch.no_grad():
        out["te.base"] = base(tokens.input_ids, tokens.attention_mask).last_hidden_state * mask
        for name, (_, alpha) in files.items():
            model = UMT5EncoderModel.from_pretrained(FIXTURES / "tiny-wan" / "text_encoder").eval()
            config = LoraConfig(r=RANK, lora_alpha=RANK if alpha is None else alpha, target_modules=targets)
            model = inject_adapter_in_model(config, model)
            loaded = load_file(str(LORAS / f"{name}.safetensors"))
            state = {}
            for module, _, _ in layers:
                if alpha is None:
                    a, b = (loaded[f"text_encoder.{module}.lora_{x}.weight"] for x in "AB")
                else:
                    key = "lora_te_" + module.replace(".", "_")
                    a, b = loaded[f"{key}.lora_down.weight"], loaded[f"{key}.lora_up.weight"]
                state[f"{module}.lora_A.weight"], state[f"{module}.lora_B.weight"] = a, b
            result = set_peft_model_state_dict(model, state)
            assert not result.unexpected_keys, result.unexpected_keys
            out[f"te.{name}"] = model(tokens.input_ids, tokens.attention_mask).last_hidden_state * mask
            print(f"te.{name}: max change from base {(out[f'te.{name}'] - out['te.base']).abs().max().item():.3f}")
    return out


def two_experts() -> dict[str, torch.Tensor]:
    """Wan2.2 A14B-style (tiny-wan with `tiny-wan22-a14b`'s second expert, boundary 0.9): 2 steps (t = 999 on the
    high-noise expert, 750 on the low-noise one) with `peft` loaded into `transformer` (diffusers' default) and
    `kohya` into `transformer_2` (`load_into_transformer_2=True`); then `peft` loaded into both."""
    out = {}
    torch.manual_seed(43)
    latents = torch.randn(1, 16, 3, 4, 4)
    out["a14b.latents"] = latents
    call = dict(prompt="A cat and a dog.", negative_prompt="blurred", height=32, width=32, num_frames=9,
                num_inference_steps=2, guidance_scale=5.0, max_sequence_length=16, output_type="latent")
    for label, loads in {
        "a14b.peft-high+kohya-low": [("peft", False), ("kohya", True)],
        "a14b.peft-both": [("peft", False), ("peft", True)],
    }.items():
        low = WanTransformer3DModel.from_pretrained(FIXTURES / "tiny-wan22-a14b" / "transformer_2").eval()
        pipe = WanPipeline.from_pretrained(FIXTURES / "tiny-wan", transformer_2=low, boundary_ratio=0.9,
                                           torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        for i, (name, into_2) in enumerate(loads):
            pipe.load_lora_weights(str(LORAS / f"{name}.safetensors"), adapter_name=f"{name}{i}",
                                   load_into_transformer_2=into_2)
        with torch.no_grad():
            out[label] = pipe(latents=latents.clone(), **call).frames
    return out


if __name__ == "__main__":
    main()
