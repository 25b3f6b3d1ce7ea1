#!/usr/bin/env python
"""Proves the Wan2.1 fixtures are self-consistent: reloads every fixture folder with diffusers / transformers
`from_pretrained`, re-runs every case from the inputs stored in cases/*.safetensors, and asserts that the stored
outputs are reproduced (max abs diff <= 1e-6 for floats, exact for integers and token ids).

    nice -n 10 .venv/bin/python tools/wan_reference/check_fixtures.py
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import wan_fixture_lib as L  # noqa: E402

L.check_versions()
L.setup_torch()
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from diffusers.utils import logging as dlogging  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerFast, T5Tokenizer, UMT5EncoderModel  # noqa: E402
from transformers.utils import logging as tlogging  # noqa: E402

dlogging.set_verbosity_error()
tlogging.set_verbosity_error()
dlogging.disable_progress_bar()
tlogging.disable_progress_bar()

OUT = L.OUT
TOL = 1e-6
failures: list[str] = []
counts = {"tensors": 0, "token_cases": 0}


def compare(group: str, ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor], prefix: str = "") -> None:
    for k, g in got.items():
        key = prefix + k
        if key not in ref:
            failures.append(f"{group}: {key} not in the fixture")
            continue
        r = ref[key]
        if tuple(r.shape) != tuple(g.shape) or r.dtype != g.dtype:
            failures.append(f"{group}: {key} shape/dtype {tuple(g.shape)}/{g.dtype} != {tuple(r.shape)}/{r.dtype}")
            continue
        if r.is_floating_point():
            d = float((r - g).abs().max()) if r.numel() else 0.0
            if not d <= TOL:
                failures.append(f"{group}: {key} max abs diff {d:.3g}")
        elif not torch.equal(r, g):
            failures.append(f"{group}: {key} differs")
        counts["tensors"] += 1


def cases(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(OUT / L.CASES / f"{name}.safetensors"))


def check_tokenizers() -> None:
    doc = json.loads((OUT / L.CASES / "tokenizer_cases.json").read_text(encoding="utf-8"))
    loaders = {
        f"{L.TINY}/tokenizer": [T5Tokenizer.from_pretrained, AutoTokenizer.from_pretrained],
        L.WORDLEVEL: [PreTrainedTokenizerFast.from_pretrained, AutoTokenizer.from_pretrained],
    }
    for folder, entry in doc["tokenizers"].items():
        path = OUT / folder
        tj = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
        if tj["padding"] is not None or tj["truncation"] is not None:
            failures.append(f"{folder}/tokenizer.json carries padding/truncation settings")
        for load in loaders[folder]:
            tok = load(str(path))
            if type(tok).__name__ != entry["class"]:
                failures.append(f"{folder}: {load.__qualname__} gave {type(tok).__name__}, want {entry['class']}")
            for c in entry["cases"]:
                got = L.tokenizer_case(tok, c["prompt"], doc["max_length"])
                if got != c:
                    failures.append(f"{folder} ({load.__qualname__}): {c['prompt']!r}: {got} != {c}")
                counts["token_cases"] += 1
        for c in entry["cases"]:  # the tokenizer.json alone, as the Rust `tokenizers` crate will read it
            ids, mask = L.raw_tokenizers_encode(path / "tokenizer.json", c["prompt"], doc["max_length"])
            if (ids, mask) != (c["input_ids"], c["attention_mask"]):
                failures.append(f"{folder} (tokenizers library): {c['prompt']!r}: {ids} != {c['input_ids']}")
    for c in doc["prompt_clean"]:
        if L.prompt_clean(c["raw"]) != c["clean"]:
            failures.append(f"prompt_clean({c['raw']!r})")
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean as diffusers_prompt_clean

    for c in doc["prompt_clean"]:
        if diffusers_prompt_clean(c["raw"]) != c["clean"]:
            failures.append(f"diffusers prompt_clean({c['raw']!r}) = {diffusers_prompt_clean(c['raw'])!r}")


def check_text_encoder() -> None:
    te = UMT5EncoderModel.from_pretrained(str(OUT / L.TINY / "text_encoder")).eval()
    ref = cases("text_encoder")
    got = L.text_encoder_outputs(te, ref["input_ids"], ref["attention_mask"], ref["long.input_ids"], ref["long.attention_mask"])
    compare("text_encoder", ref, got)
    tok = T5Tokenizer.from_pretrained(str(OUT / L.TINY / "tokenizer"))
    enc = tok(L.TEXT_ENCODER_PROMPTS, padding="max_length", max_length=L.TOKENIZER_MAX_LENGTH, truncation=True,
              add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    compare("text_encoder", ref, {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask})


def check_transformer() -> None:
    tr = WanTransformer3DModel.from_pretrained(str(OUT / L.TINY / "transformer")).eval()
    ref = cases("transformer")
    for name in sorted({k.split(".")[0] for k in ref}):
        got = L.run_transformer_case(tr, ref[f"{name}.hidden_states"], ref[f"{name}.timestep"], ref[f"{name}.encoder_hidden_states"])
        compare("transformer", ref, got, prefix=f"{name}.")


def check_vae() -> None:
    vae = AutoencoderKLWan.from_pretrained(str(OUT / L.TINY / "vae")).eval()
    ref = cases("vae")
    compare("vae", ref, L.vae_outputs(vae, ref["decode.z"], ref["encode.x"]))


def check_schedulers() -> None:
    ref = cases("schedulers")
    unipc = UniPCMultistepScheduler.from_pretrained(str(OUT / L.TINY / "scheduler"))
    euler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(OUT / L.EULER))
    # The UniPC folder must be exactly the reconstructed Wan2.1 config (plus defaults for the keys it omits).
    fresh = UniPCMultistepScheduler.from_config(L.WAN21_SCHEDULER_CONFIG)
    public = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731
    if public(fresh.config) != public(unipc.config):
        failures.append("tiny-wan/scheduler config differs from WAN21_SCHEDULER_CONFIG")
    got = {}
    for n in L.SCHEDULER_STEP_COUNTS:
        unipc.set_timesteps(n)
        got[f"unipc.n{n}.timesteps"], got[f"unipc.n{n}.sigmas"] = unipc.timesteps, unipc.sigmas
        euler.set_timesteps(n)
        got[f"euler.n{n}.timesteps"], got[f"euler.n{n}.sigmas"] = euler.timesteps, euler.sigmas
    for n in L.UNIPC_RUNS:
        p = f"unipc.run{n}."
        rec = L.unipc_run(unipc, n, ref[p + "sample"], [ref[f"{p}model_output.{i}"] for i in range(n)])
        got.update({p + k: v for k, v in rec.items()})
    for n in L.EULER_RUNS:
        p = f"euler.run{n}."
        rec = L.euler_run(euler, n, ref[p + "sample"], [ref[f"{p}model_output.{i}"] for i in range(n)])
        got.update({p + k: v for k, v in rec.items()})
    compare("schedulers", ref, got)
    stored = {k for k in ref if ".run" not in k or any(s in k for s in ("prev_sample", "x0_pred", "corrected", "order"))}
    missing = stored - set(got)
    if missing:
        failures.append(f"schedulers: not re-derived: {sorted(missing)[:5]}")


def check_pipeline() -> None:
    pipe = WanPipeline.from_pretrained(str(OUT / L.TINY)).to("cpu")
    ref = cases("pipeline")
    if not torch.equal(L.pipeline_latents(pipe), ref["latents"]):
        failures.append("pipeline: latents are not torch.randn(..., generator=Generator('cpu').manual_seed(42))")
    got = L.pipeline_outputs(pipe, ref["latents"])
    compare("pipeline", ref, got)
    if set(ref) - set(got) - {"latents"}:
        failures.append(f"pipeline: not re-derived: {sorted(set(ref) - set(got) - {'latents'})}")


def check_full_configs() -> None:
    path = OUT / L.FULL
    if not path.exists():
        failures.append(f"{L.FULL}/ is missing: run tools/wan_reference/full_config.py")
        return
    import full_config

    for problem in full_config.verify(path):
        failures.append(f"{L.FULL}: {problem}")


def main() -> None:
    steps = [check_tokenizers, check_text_encoder, check_transformer, check_vae, check_schedulers, check_pipeline,
             check_full_configs]
    for step in steps:
        before = len(failures)
        step()
        print(f"{step.__name__[6:]:>14}: {'ok' if len(failures) == before else 'FAILED'}")
    print(f"compared {counts['tensors']} tensors and {counts['token_cases']} tokenizer cases (tolerance {TOL})")
    if failures:
        print("\n".join(failures[:50]))
        raise SystemExit(1)
    print("all fixtures reproduce")


if __name__ == "__main__":
    main()
