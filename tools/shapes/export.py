"""Phase 3: the export, a diffusers folder that WanPipeline loads (`model_index.json`, `transformer/`, `vae/`,
`text_encoder/`, `scheduler/`, `tokenizer/`), plus `sampling.json` and the model card.

It is written into a staging folder and moved into place whole, so `--out` is never half-written; the configs
carry no path of this machine, and the weights must stay under MAX_WEIGHT_BYTES.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import evaluate
import model
import world
from dataset import vae_with_statistics
from model_card import model_card
from phase_dit import pipeline_from
from plan import Plan
from progress import log


MAX_WEIGHT_BYTES = 25_000_000


def base_expands(run: pathlib.Path) -> bool:
    """Whether the base model this run started from (if any) was already taught image conditioning."""
    index = run / "base-model" / "model_index.json"
    return index.exists() and bool(json.loads(index.read_text()).get("expand_timesteps"))


def export(run: pathlib.Path, plan: Plan, out: pathlib.Path, vae, text_encoder, transformer, data: dict, command: str) -> None:
    if (run / "export.done").exists() and (out / "model_index.json").exists():
        return
    pipe = pipeline_from(vae_with_statistics(vae, data), text_encoder, transformer)
    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging, safe_serialization=True)
    model.save_tokenizer(staging / "tokenizer")
    for config_path in staging.glob("*/config.json"):  # no paths of this machine in the shipped configs
        config = json.loads(config_path.read_text())
        if config.pop("_name_or_path", None) is not None:
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    index_path = staging / "model_index.json"
    index = json.loads(index_path.read_text())
    index["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
    # A model taught image conditioning (phase 2b) takes per-token timesteps, the Wan2.2 TI2V way: WanPipeline
    # then builds them for text-to-video, and WanImageToVideoPipeline conditions on an image with frame 0's at 0.
    index["expand_timesteps"] = plan.image_steps > 0 or base_expands(run)
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (staging / evaluate.SAMPLING_FILE).write_text(
        json.dumps(
            {
                **evaluate.DEFAULT_SAMPLING,
                "height": world.HEIGHT,
                "width": world.WIDTH,
                "num_frames": world.FRAMES,
                "fps": world.FPS,
                "max_sequence_length": model.MAX_TEXT_TOKENS,
                "negative_prompt": "",
            },
            indent=2,
        )
        + "\n"
    )
    weights = sorted(staging.rglob("*.safetensors"))
    sizes = {str(p.relative_to(staging)): p.stat().st_size for p in weights}
    total = sum(sizes.values())
    if total > MAX_WEIGHT_BYTES:
        raise SystemExit(f"export: weights are {total:,} bytes, over {MAX_WEIGHT_BYTES:,}")
    (staging / "README.md").write_text(model_card(run, plan, sizes, vae, text_encoder, transformer, command))
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, out)
    (run / "export.done").write_text(str(out) + "\n")
    log(f"export: {out} ({total / 1e6:.2f} MB of weights: {sizes})")
