"""Shared definitions for the Wan2.1 parity fixtures: tiny configs, prompts, paths and small helpers.

Used by make_fixtures.py (writes the fixtures) and check_fixtures.py (reloads and re-runs them). Everything that
decides a fixture's content lives here or in make_fixtures.py; nothing reads the network.
"""

from __future__ import annotations

import html
import json
import os
import platform
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "core" / "tests" / "fixtures" / "wan"

TINY = "tiny-wan"  # WanPipeline.save_pretrained folder: model_index.json + component folders
WORDLEVEL = "tokenizer-wordlevel"
EULER = "scheduler-euler"
CASES = "cases"
FULL = "wan2.1-t2v-1.3b-configs"

# The versions the issue names. make_fixtures.py refuses to run on others unless WAN_FIXTURES_ANY_VERSION=1.
PINNED = {"torch": "2.11.0", "diffusers": "0.42.1", "transformers": "5.23.0"}

# --- tiny configs ------------------------------------------------------------------------------------------------

# UMT5 encoder: per-layer relative attention bias, gated-GELU FFN. d_kv * num_heads == d_model as in umt5-xxl.
UMT5_KW = dict(
    vocab_size=160,  # >= both tiny tokenizers (Unigram 150 pieces, WordLevel 100 words)
    d_model=32,
    d_kv=8,
    d_ff=37,
    num_layers=3,
    num_decoder_layers=3,
    num_heads=4,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    dropout_rate=0.1,  # inert in eval(); kept as umt5-xxl has it
    layer_norm_epsilon=1e-6,
    initializer_factor=1.0,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)

# Transformer: 3 heads x 20 so that the RoPE split is uneven (t, h, w) = (8, 6, 6) like the real 44/42/42, and
# the head count is not 2 (a transposed heads/head_dim reshape would still fail).
TRANSFORMER_KW = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=3,
    attention_head_dim=20,
    in_channels=16,
    out_channels=16,
    text_dim=32,  # == UMT5 d_model
    freq_dim=256,
    ffn_dim=48,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=None,
    added_kv_proj_dim=None,
    rope_max_seq_len=32,
    pos_embed_seq_len=None,
)

# VAE: 3 spatial up/downsamples (8x) and 2 temporal (4x) as in the real model; z_dim 16 as in the real model.
# latents_mean / latents_std are set explicitly (not the diffusers defaults) so that a port that hardcodes the
# defaults fails the pipeline test.
VAE_KW = dict(
    base_dim=4,
    z_dim=16,
    dim_mult=[1, 2, 2, 2],
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    dropout=0.0,
    latents_mean=[-0.31, 0.27, -0.52, 0.08, 0.44, -0.17, 0.61, -0.05, 0.12, -0.73, 0.36, -0.22, 0.05, 0.58, -0.41, 0.19],
    latents_std=[1.42, 0.87, 2.05, 1.13, 0.66, 1.78, 1.25, 0.93, 2.31, 1.07, 0.79, 1.51, 1.96, 0.71, 1.34, 1.18],
)

# Wan2.1-T2V-1.3B-Diffusers scheduler/scheduler_config.json, reconstructed (see README.md for the reasoning).
# Only the keys the shipped file has; every other UniPCMultistepScheduler argument keeps its default.
WAN21_SCHEDULER_CONFIG = {
    "_class_name": "UniPCMultistepScheduler",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "disable_corrector": [],
    "dynamic_thresholding_ratio": 0.995,
    "final_sigmas_type": "zero",
    "flow_shift": 3.0,
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "predict_x0": True,
    "prediction_type": "flow_prediction",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "solver_order": 2,
    "solver_p": None,
    "solver_type": "bh2",
    "steps_offset": 0,
    "thresholding": False,
    "timestep_spacing": "linspace",
    "trained_betas": None,
    "use_beta_sigmas": False,
    "use_exponential_sigmas": False,
    "use_flow_sigmas": True,
    "use_karras_sigmas": False,
}

EULER_KW = dict(num_train_timesteps=1000, shift=3.0)

SCHEDULER_STEP_COUNTS = [2, 5, 10, 50]
UNIPC_RUNS = [2, 5, 10]
EULER_RUNS = [5]
SCHEDULER_SAMPLE_SHAPE = (2, 16, 2, 4, 4)

# --- tokenizers --------------------------------------------------------------------------------------------------

TOKENIZER_MAX_LENGTH = 16

# The corpus both tiny tokenizers are built from.
CORPUS = [
    "A cat and a dog baking a cake together in a kitchen.",
    "The cat is carefully measuring flour, while the dog is stirring the batter with a wooden spoon.",
    "The kitchen is cozy, with sunlight streaming through the window.",
    "A lively puppy running quickly on lush green grass.",
    "Bright tones, overexposed, static, blurred details, subtitles, worst quality, low quality.",
    "A red fox jumps over the lazy brown dog at sunset near the river.",
    "Waves crash against the rocks while seagulls fly above the ocean.",
    "A young woman walks through a busy city street at night, neon lights reflecting on wet pavement.",
    "Slow motion shot of a hummingbird drinking nectar from a flower.",
    "An astronaut floating in space, the earth glowing blue in the background.",
    "Snow falls gently on a quiet mountain village with warm lights in the windows.",
    "A chef slices vegetables on a wooden board in a bright restaurant kitchen.",
]

OVERLONG = (
    "a cat and a dog baking a cake together in a cozy kitchen while the sunlight is streaming through the "
    "window and a lively puppy is running on the green grass near the river at sunset"
)

TOKENIZER_PROMPTS = [
    "A cat and a dog baking a cake together in a kitchen.",
    "a CAT, a Dog!",
    "",
    "   ",
    "!!! ... ???",
    "zebra quantum xylophone",
    "Café déjà vu — naïve 猫 🐱",
    "ｃａｔ ａｎｄ ｄｏｇ",  # full-width letters: only an NFKC normalizer maps these to ASCII
    "line one\nline two\tthree",
    "  leading and   trailing spaces  ",
    "a cat </s> <pad> <unk> dog",  # literal special tokens in the text
    "3 cats and 12 dogs",
    "don't stop-motion",
    OVERLONG,
]

# WanPipeline.prompt_clean: ftfy (if installed) -> html.unescape twice -> strip -> collapse whitespace.
PROMPT_CLEAN_CASES = [
    "A cat &amp; a dog",
    "A cat &amp;amp; a dog",
    "  spaced   out\n\tprompt  ",
    "&lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot; &#39;single&#39; &eacute;t&eacute;",
    "no entities here",
    "",
    "a\u00a0b\u3000c\u2009d\u200be\x1ff\x85g",  # NBSP, ideographic space, thin space, zero-width space, US, NEL
    "\x1f\u00a0edges\x1f",  # str.strip() removes \x1f at the ends, the regex \s in the middle does not match it
]

# Two prompts of different real lengths for the UMT5 encoder case (tokenized with the tiny-wan tokenizer).
TEXT_ENCODER_PROMPTS = ["A cat and a dog.", "Slow motion shot of a hummingbird drinking nectar from a flower."]

# --- pipeline ----------------------------------------------------------------------------------------------------

PIPELINE = dict(
    prompt="A cat &amp; a dog  baking a cake in the kitchen.",
    negative_prompt="blurred, static, low quality",
    height=32,
    width=32,
    num_frames=9,
    num_inference_steps=2,
    guidance_scale=5.0,
    max_sequence_length=TOKENIZER_MAX_LENGTH,
    output_type="np",
    latents_seed=42,
)

# --- helpers -----------------------------------------------------------------------------------------------------


def prompt_clean(text: str) -> str:
    """WanPipeline's prompt_clean without ftfy (ftfy is not installed in the reference environment). Like diffusers,
    it uses the `regex` module, whose \\s is the Unicode White_Space property."""
    import regex

    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip()


def versions() -> dict:
    import diffusers
    import numpy
    import safetensors
    import tokenizers
    import transformers

    try:
        import ftfy  # noqa: F401

        ftfy_version = ftfy.__version__
    except ImportError:
        ftfy_version = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": numpy.__version__,
        "huggingface_hub": __import__("huggingface_hub").__version__,
        "ftfy": ftfy_version,
    }


def check_versions() -> None:
    v = versions()
    bad = {k: (v[k], want) for k, want in PINNED.items() if not v[k].split("+")[0] == want}
    if bad and os.environ.get("WAN_FIXTURES_ANY_VERSION") != "1":
        raise SystemExit(f"version mismatch (have, want): {bad}; set WAN_FIXTURES_ANY_VERSION=1 to override")
    if v["ftfy"] is not None:
        raise SystemExit("ftfy is installed: WanPipeline would run ftfy.fix_text on prompts; uninstall it")


def setup_torch() -> None:
    torch.set_num_threads(1)  # reproducible reductions; the machine is shared
    torch.set_grad_enabled(False)
    torch.use_deterministic_algorithms(True)


def perturb_constant_params(model: torch.nn.Module, seed: int, scale: float = 0.1) -> list[str]:
    """Give every parameter that init left constant (norm weights = 1, biases = 0) random values, so that a port
    that ignores one of them fails the comparison."""
    gen = torch.Generator().manual_seed(seed)
    changed = []
    for name, p in model.named_parameters():
        flat = p.detach().flatten()
        if flat.numel() == 1 or bool(torch.all(flat == flat[0])):
            p.data.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
            changed.append(name)
    return changed


def i2v_prompt_clean_without_ftfy() -> None:
    """diffusers 0.42.1's `pipeline_wan_i2v.basic_clean` calls `ftfy.fix_text` without checking that ftfy is
    installed (`pipeline_wan.basic_clean` checks), so without ftfy `WanImageToVideoPipeline` fails on every prompt.
    The reference environment has no ftfy (see `prompt_clean`), so the image-to-video cases give the I2V pipeline
    the text-to-video pipeline's cleaning, which is what it does with ftfy absent."""
    from diffusers.pipelines.wan import pipeline_wan, pipeline_wan_i2v

    pipeline_wan_i2v.basic_clean = pipeline_wan.basic_clean


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


class Recorder:
    """Collects forward-hook outputs by module name."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        self.out: dict[str, object] = {}
        self.handles = []
        mods = dict(model.named_modules())
        for n in names:
            self.handles.append(mods[n].register_forward_hook(self._hook(n)))

    def _hook(self, name):
        def fn(_module, _inputs, output):
            self.out[name] = output

        return fn

    def close(self):
        for h in self.handles:
            h.remove()


def transformer_hook_names(num_layers: int) -> list[str]:
    return [
        "rope",
        "patch_embedding",
        "condition_embedder.timesteps_proj",
        "condition_embedder",
        "blocks.0.attn1",
        "blocks.0.attn2",
        "blocks.0.ffn",
        *[f"blocks.{i}" for i in range(num_layers)],
        "proj_out",
    ]


def run_transformer_case(model, hidden_states, timestep, encoder_hidden_states) -> dict[str, torch.Tensor]:
    """One forward with hooks. Returns the named tensors documented in the README (without the case prefix)."""
    rec = Recorder(model, transformer_hook_names(model.config.num_layers))
    try:
        sample = model(
            hidden_states=hidden_states,
            timestep=timestep,
            encoder_hidden_states=encoder_hidden_states,
            return_dict=True,
        ).sample
    finally:
        rec.close()
    o = rec.out
    temb, timestep_proj, text, _img = o["condition_embedder"]
    out = {
        "rope_cos": o["rope"][0],
        "rope_sin": o["rope"][1],
        "patch_embedding": o["patch_embedding"],
        "timesteps_proj": o["condition_embedder.timesteps_proj"],
        "temb": temb,
        "timestep_proj": timestep_proj,
        "text_proj": text,
        "block0_attn1": o["blocks.0.attn1"],
        "block0_attn2": o["blocks.0.attn2"],
        "block0_ffn": o["blocks.0.ffn"],
    }
    for i in range(model.config.num_layers):
        out[f"block{i}_out"] = o[f"blocks.{i}"]
    out["proj_out"] = o["proj_out"]
    out["sample"] = sample
    return {k: v.contiguous() for k, v in out.items()}


def vae_decode_chunks(vae, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """AutoencoderKLWan._decode, step by step: post_quant_conv over the whole latent, then the decoder one latent
    frame at a time with the shared feature cache. Returns (post_quant_conv output, raw per-chunk outputs)."""
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    chunks = []
    for i in range(z.shape[2]):
        vae._conv_idx = [0]
        chunks.append(
            vae.decoder(x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=(i == 0))
        )
    vae.clear_cache()
    return x, chunks


def relative_position_buckets(attn_module, lo: int = -200, hi: int = 200) -> torch.Tensor:
    rel = torch.arange(lo, hi + 1, dtype=torch.long)
    return attn_module._relative_position_bucket(rel)


def unipc_run(scheduler, n: int, sample: torch.Tensor, model_outputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Steps a UniPC scheduler through n steps with fixed model outputs; records every update and its internals."""
    scheduler.set_timesteps(n)
    scheduler.set_begin_index(0)  # as WanPipeline does
    rec: dict[str, torch.Tensor] = {}
    orig_convert = scheduler.convert_model_output
    orig_c = scheduler.multistep_uni_c_bh_update
    cur = {}

    def convert(*a, **k):
        r = orig_convert(*a, **k)
        cur["x0_pred"] = r
        return r

    def corrector(*a, **k):
        r = orig_c(*a, **k)
        cur["corrected"] = r
        cur["corrector_order"] = k.get("order")
        return r

    scheduler.convert_model_output = convert
    scheduler.multistep_uni_c_bh_update = corrector
    orders, corr_orders = [], []
    x = sample
    try:
        for i, t in enumerate(scheduler.timesteps):
            cur.clear()
            x = scheduler.step(model_outputs[i], t, x, return_dict=False)[0]
            rec[f"x0_pred.{i}"] = cur["x0_pred"]
            if "corrected" in cur:
                rec[f"corrected_sample.{i}"] = cur["corrected"]
            orders.append(scheduler.this_order)
            corr_orders.append(cur.get("corrector_order") or 0)
            rec[f"prev_sample.{i}"] = x
    finally:
        del scheduler.convert_model_output
        del scheduler.multistep_uni_c_bh_update
    rec["predictor_order"] = torch.tensor(orders, dtype=torch.int64)
    rec["corrector_order"] = torch.tensor(corr_orders, dtype=torch.int64)
    return rec


def euler_run(scheduler, n: int, sample: torch.Tensor, model_outputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    scheduler.set_timesteps(n)
    scheduler.set_begin_index(0)
    rec = {}
    x = sample
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(model_outputs[i], t, x, return_dict=False)[0]
        rec[f"prev_sample.{i}"] = x
    return rec


def tokenizer_case(tok, prompt: str, max_length: int = TOKENIZER_MAX_LENGTH) -> dict:
    enc = tok(
        [prompt],
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
    )
    ids = list(map(int, enc["input_ids"][0]))
    free = tok([prompt], add_special_tokens=True)["input_ids"][0]
    return {
        "prompt": prompt,
        "input_ids": ids,
        "attention_mask": list(map(int, enc["attention_mask"][0])),
        "tokens": tok.convert_ids_to_tokens(ids),
        "unpadded_ids": list(map(int, free)),
    }


def raw_tokenizers_encode(tokenizer_json: Path, prompt: str, max_length: int) -> tuple[list[int], list[int]]:
    """What a consumer of tokenizer.json alone (the `tokenizers` library / crate) gets with the same settings."""
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(str(tokenizer_json))
    t.enable_truncation(max_length=max_length)
    t.enable_padding(length=max_length, pad_id=0, pad_token="<pad>")
    e = t.encode(prompt, add_special_tokens=True)
    return list(e.ids), list(e.attention_mask)


def text_encoder_outputs(te, ids, mask, long_ids, long_mask) -> dict[str, torch.Tensor]:
    """UMT5 encoder forward for the batch case (with per-block outputs and the pipeline's zeroing) and the long case."""
    seq_lens = mask.gt(0).sum(dim=1).long()
    rec = Recorder(te, [f"encoder.block.{i}" for i in range(te.config.num_layers)])
    try:
        h = te(ids, mask).last_hidden_state
    finally:
        rec.close()
    # WanPipeline._get_t5_prompt_embeds: keep u[:len], pad with zeros back to max length.
    embeds = torch.stack([torch.cat([u[:v], u.new_zeros(h.shape[1] - v, u.size(1))]) for u, v in zip(h, seq_lens)])
    attn0 = te.encoder.block[0].layer[0].SelfAttention
    rel = torch.arange(-200, 201, dtype=torch.long)
    out = {"seq_lens": seq_lens}
    for i in range(te.config.num_layers):
        out[f"block{i}_out"] = rec.out[f"encoder.block.{i}"]
    out["last_hidden_state"] = h
    out["prompt_embeds"] = embeds
    out["position_bias_block0"] = attn0.compute_bias(ids.shape[1], ids.shape[1])
    out["relative_positions"] = rel
    out["relative_position_buckets"] = attn0._relative_position_bucket(rel)
    out["long.last_hidden_state"] = te(long_ids, long_mask).last_hidden_state
    return {k: v.contiguous() for k, v in out.items()}


def vae_outputs(vae, z, x) -> dict[str, torch.Tensor]:
    sample = vae.decode(z).sample
    pq, chunks = vae_decode_chunks(vae, z)
    assert torch.equal(torch.cat(chunks, 2).clamp(-1, 1), sample), "chunked decode differs from vae.decode"
    out = {"decode.post_quant_conv": pq}
    for i, c in enumerate(chunks):
        out[f"decode.chunk.{i}"] = c
    out["decode.sample"] = sample
    moments = vae._encode(x)
    dist = vae.encode(x).latent_dist
    assert torch.equal(dist.mean, moments[:, : vae.config.z_dim])
    out["encode.moments"] = moments
    out["encode.mean"] = dist.mean
    return {k: v.contiguous() for k, v in out.items()}


def pipeline_outputs(pipe, latents: torch.Tensor) -> dict[str, torch.Tensor]:
    """Runs WanPipeline as PIPELINE says with the given initial latents, recording every stage. Each recorded stage
    is cross-checked against an independent recomputation (scheduler replay, decode + post-processing)."""
    import numpy as np
    from diffusers import UniPCMultistepScheduler

    P = PIPELINE
    calls, steps = [], []

    def hook(_m, _args, kwargs, output):
        calls.append((kwargs["timestep"].clone(), kwargs["encoder_hidden_states"].clone(), output[0].clone()))

    def on_step(_pipe, i, t, kw):
        steps.append(kw["latents"].clone())
        return {}

    pipe.set_progress_bar_config(disable=True)
    h = pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    try:
        frames = pipe(
            prompt=P["prompt"], negative_prompt=P["negative_prompt"], height=P["height"], width=P["width"],
            num_frames=P["num_frames"], num_inference_steps=P["num_inference_steps"],
            guidance_scale=P["guidance_scale"], latents=latents.clone(), output_type=P["output_type"],
            max_sequence_length=P["max_sequence_length"], callback_on_step_end=on_step,
        ).frames
    finally:
        h.remove()
    frames = torch.from_numpy(np.asarray(frames, dtype=np.float32))

    tok = pipe.tokenizer
    kw = dict(padding="max_length", max_length=P["max_sequence_length"], truncation=True, add_special_tokens=True,
              return_attention_mask=True, return_tensors="pt")
    ep = tok([prompt_clean(P["prompt"])], **kw)
    en = tok([prompt_clean(P["negative_prompt"])], **kw)
    pe, ne = pipe.encode_prompt(P["prompt"], P["negative_prompt"], True,
                                max_sequence_length=P["max_sequence_length"], device="cpu")
    out = {
        "prompt.input_ids": ep.input_ids,
        "prompt.attention_mask": ep.attention_mask,
        "negative_prompt.input_ids": en.input_ids,
        "negative_prompt.attention_mask": en.attention_mask,
        "prompt_embeds": pe,
        "negative_prompt_embeds": ne,
    }
    sched = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(P["num_inference_steps"])
    out["timesteps"], out["sigmas"] = sched.timesteps, sched.sigmas

    n = P["num_inference_steps"]
    assert len(calls) == 2 * n and len(steps) == n
    replay = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    replay.set_timesteps(n)
    replay.set_begin_index(0)
    x = latents.clone()
    for i in range(n):
        (t_c, ehs_c, cond), (t_u, ehs_u, uncond) = calls[2 * i], calls[2 * i + 1]
        assert torch.equal(ehs_c, pe) and torch.equal(ehs_u, ne) and torch.equal(t_c, t_u)
        guided = uncond + P["guidance_scale"] * (cond - uncond)
        x = replay.step(guided, replay.timesteps[i], x, return_dict=False)[0]
        assert torch.equal(x, steps[i]), "replayed scheduler step differs from the pipeline's"
        out[f"step{i}.timestep"] = t_c
        out[f"step{i}.noise_pred_cond"] = cond
        out[f"step{i}.noise_pred_uncond"] = uncond
        out[f"step{i}.noise_pred"] = guided
        out[f"step{i}.latents"] = steps[i]
    vae = pipe.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1)
    den = steps[-1] / inv_std + mean
    video = vae.decode(den).sample
    ref = (video * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1)
    assert torch.equal(ref, frames), "frames differ from the recomputed post-processing"
    out["latents_denormalized"] = den
    out["video"] = video
    out["frames"] = frames
    return {k: v.contiguous() for k, v in out.items()}


def pipeline_latents(pipe) -> torch.Tensor:
    P = PIPELINE
    vsf, vst = pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal
    shape = (1, pipe.transformer.config.in_channels, (P["num_frames"] - 1) // vst + 1, P["height"] // vsf,
             P["width"] // vsf)
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(P["latents_seed"]), dtype=torch.float32)
