#!/usr/bin/env python
"""Writes the Wan2.1 parity fixtures into core/tests/fixtures/wan/ (see tools/wan_reference/README.md).

Tiny random-initialised (seeded) components in the diffusers layout, their inputs and reference outputs from
diffusers 0.42.1 / transformers 5.23.0 on torch 2.11.0 (CPU, fp32), and the reconstructed full-size Wan2.1-T2V-1.3B
configuration. Deterministic: running it twice gives byte-identical files.

    nice -n 10 .venv/bin/python tools/wan_reference/make_fixtures.py
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import family_configs  # noqa: E402
import full_config  # noqa: E402
import make_i2v_case  # noqa: E402
import make_lora_case  # noqa: E402
import make_quant_case  # noqa: E402
import make_ti2v_case  # noqa: E402
import make_wan22_case  # noqa: E402
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
from safetensors.torch import save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast, T5Tokenizer, UMT5Config, UMT5EncoderModel  # noqa: E402
from transformers.utils import logging as tlogging  # noqa: E402

dlogging.set_verbosity_error()
tlogging.set_verbosity_error()
dlogging.disable_progress_bar()
tlogging.disable_progress_bar()
logging.getLogger().setLevel(logging.ERROR)

OUT = L.OUT
CASES_DIR = OUT / L.CASES


class CaseFile:
    """A safetensors file of named tensors, each with a description for the README."""

    def __init__(self, name: str, title: str):
        self.name, self.title = name, title
        self.tensors: dict[str, torch.Tensor] = {}
        self.desc: dict[str, str] = {}

    def add(self, key: str, t: torch.Tensor, desc: str = "") -> None:
        assert key not in self.tensors, key
        assert t.dtype in (torch.float32, torch.int64), (key, t.dtype)
        self.tensors[key] = t.detach().cpu().contiguous().clone()
        self.desc[key] = desc

    def save(self) -> Path:
        path = CASES_DIR / f"{self.name}.safetensors"
        save_file(self.tensors, str(path), metadata={"format": "pt"})  # one key: the header stays byte-stable
        return path

    def table(self) -> str:
        rows = ["| tensor | shape | dtype | meaning |", "|---|---|---|---|"]
        for k, t in self.tensors.items():
            dt = {torch.float32: "F32", torch.int64: "I64"}[t.dtype]
            desc = self.desc[k].replace("|", "\\|")  # a literal | would end the Markdown cell
            rows.append(f"| `{k}` | {list(t.shape)} | {dt} | {desc} |")
        return "\n".join(rows)


# --- 1. tokenizers -----------------------------------------------------------------------------------------------


UNIGRAM_VOCAB = Path(__file__).resolve().parent / "unigram_vocab.json"


def train_unigram_vocab() -> list:
    """UnigramTrainer on the tiny corpus, with the pre-tokenizer T5Tokenizer uses. The trainer picks the same 150
    pieces on every run but its scores wobble in the 4th decimal between runs (hash-map order in its EM), so the
    result is frozen in unigram_vocab.json and only retrained on request (--retrain-unigram)."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=150,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        max_piece_length=8,
        shrinking_factor=0.75,
        n_sub_iterations=2,
        show_progress=False,
    )
    tok.train_from_iterator(L.CORPUS, trainer)
    return json.loads(tok.to_str())["model"]["vocab"]


def write_unigram_vocab(vocab: list) -> None:
    trainer = ("tokenizers.trainers.UnigramTrainer(vocab_size=150, special_tokens=['<pad>', '</s>', '<unk>'], "
               "unk_token='<unk>', max_piece_length=8, shrinking_factor=0.75, n_sub_iterations=2), pre-tokenizer "
               "WhitespaceSplit + Metaspace('▁', prepend_scheme='always', split=True), on wan_fixture_lib.CORPUS")
    lines = ",\n".join("  " + json.dumps([p, s], ensure_ascii=False) for p, s in vocab)
    UNIGRAM_VOCAB.write_text(f'{{\n "trainer": {json.dumps(trainer)},\n "vocab": [\n{lines}\n ]\n}}\n', encoding="utf-8")


def build_unigram_tokenizer(retrain: bool) -> T5Tokenizer:
    """A tiny T5-style Unigram (SentencePiece-like) tokenizer, loaded the way WanPipeline loads umt5-xxl's: through
    transformers' T5Tokenizer, which rebuilds the pipeline (WhitespaceSplit + Metaspace, `$A </s>`) around the
    vocabulary. The tokenizer.json it saves is exactly that rebuilt pipeline."""
    if retrain or not UNIGRAM_VOCAB.exists():
        write_unigram_vocab(train_unigram_vocab())
    vocab = [tuple(x) for x in json.loads(UNIGRAM_VOCAB.read_text(encoding="utf-8"))["vocab"]]
    assert [v[0] for v in vocab[:3]] == ["<pad>", "</s>", "<unk>"]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def build_wordlevel_tokenizer() -> PreTrainedTokenizerFast:
    counts: dict[str, int] = {}
    for line in L.CORPUS:
        for w in re.findall(r"\w+", line.lower()):
            counts[w] = counts.get(w, 0) + 1
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:97]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in words:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="removed")]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces; only used by decode()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


# --- 2. models ---------------------------------------------------------------------------------------------------


def build_text_encoder() -> UMT5EncoderModel:
    torch.manual_seed(1001)
    m = UMT5EncoderModel(UMT5Config(**L.UMT5_KW)).eval()
    L.perturb_constant_params(m, seed=1002)
    return m


def build_transformer() -> WanTransformer3DModel:
    torch.manual_seed(2001)
    m = WanTransformer3DModel(**L.TRANSFORMER_KW).eval()
    L.perturb_constant_params(m, seed=2002)
    return m


def build_vae() -> AutoencoderKLWan:
    torch.manual_seed(3001)
    m = AutoencoderKLWan(**L.VAE_KW).eval()
    L.perturb_constant_params(m, seed=3002)
    return m


# --- 3. cases ----------------------------------------------------------------------------------------------------


def text_encoder_cases(te: UMT5EncoderModel, tok) -> CaseFile:
    cf = CaseFile("text_encoder", "UMT5 encoder")
    enc = tok(L.TEXT_ENCODER_PROMPTS, padding="max_length", max_length=L.TOKENIZER_MAX_LENGTH, truncation=True,
              add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    ids, mask = enc.input_ids, enc.attention_mask
    gen = torch.Generator().manual_seed(1003)
    long_ids = torch.randint(3, L.UMT5_KW["vocab_size"], (1, 150), generator=gen)
    long_mask = torch.ones_like(long_ids)
    out = L.text_encoder_outputs(te, ids, mask, long_ids, long_mask)
    assert out["seq_lens"][0] < out["seq_lens"][1] <= L.TOKENIZER_MAX_LENGTH, out["seq_lens"]
    cf.add("input_ids", ids, f"tiny-wan tokenizer on {L.TEXT_ENCODER_PROMPTS!r}, max_length padding to {L.TOKENIZER_MAX_LENGTH}")
    cf.add("attention_mask", mask, "1 for real tokens (incl. `</s>`), 0 for padding")
    cf.add("long.input_ids", long_ids, "150 random ids, no padding: reaches the log buckets and the max-distance clamp")
    cf.add("long.attention_mask", long_mask, "all ones")
    descs = {
        "seq_lens": "`attention_mask.gt(0).sum(1)`",
        "last_hidden_state": "`UMT5EncoderModel(input_ids, attention_mask).last_hidden_state` (padded rows are NOT zero)",
        "prompt_embeds": "what WanPipeline passes on: `last_hidden_state` with rows >= seq_len set to 0",
        "position_bias_block0": "block 0 relative position bias (1, heads, q, k) for length 16; every block has its own table",
        "relative_positions": "memory_position - query_position, -200..200",
        "relative_position_buckets": "bucket per relative position (bidirectional: 16 per sign; 8 exact, then float32 log, truncated, clamped at 15)",
        "long.last_hidden_state": "reference output for the long case",
    }
    for k, v in out.items():
        cf.add(k, v, descs.get(k) or f"output of `encoder.block.{k[5:-4]}` (batch case)")
    return cf


def transformer_cases(tr: WanTransformer3DModel) -> CaseFile:
    cf = CaseFile("transformer", "WanTransformer3DModel")
    gen = torch.Generator().manual_seed(2003)
    cin, tdim = L.TRANSFORMER_KW["in_channels"], L.TRANSFORMER_KW["text_dim"]
    specs = {
        # B=2, square, float timesteps with a fraction, 16 text tokens with zero padding on the first prompt.
        "a": dict(shape=(2, cin, 3, 8, 8), timestep=torch.tensor([999.0, 437.3], dtype=torch.float32), text_len=16, pad_from=[10, 16]),
        # B=1, non-square (H != W), int64 timestep as WanPipeline passes it, 7 text tokens.
        "b": dict(shape=(1, cin, 2, 6, 4), timestep=torch.tensor([999], dtype=torch.int64), text_len=7, pad_from=[7]),
    }
    for name, s in specs.items():
        x = torch.randn(s["shape"], generator=gen)
        ehs = torch.randn((s["shape"][0], s["text_len"], tdim), generator=gen)
        for b, p in enumerate(s["pad_from"]):
            ehs[b, p:] = 0
        out = L.run_transformer_case(tr, x, s["timestep"], ehs)
        B, C, F, H, W = s["shape"]
        S = F * (H // 2) * (W // 2)
        cf.add(f"{name}.hidden_states", x, f"input latents (B, C, F, H, W); S = F*(H/2)*(W/2) = {S} tokens")
        cf.add(f"{name}.timestep", s["timestep"], "timestep per batch item" + (" (float32)" if s["timestep"].dtype == torch.float32 else " (int64, as the pipeline)"))
        cf.add(f"{name}.encoder_hidden_states", ehs, "text embeddings (B, L, text_dim), zero rows past the prompt")
        descs = {
            "rope_cos": "`rope` output 0: cos, (1, S, 1, head_dim), each frequency repeated twice (interleaved), t|h|w concatenated",
            "rope_sin": "`rope` output 1: sin, same layout",
            "patch_embedding": "Conv3d patch embedding output (B, inner, F, H/2, W/2)",
            "timesteps_proj": "sinusoid (B, 256): [cos | sin], computed in fp32",
            "temb": "`time_embedder` output (B, inner): linear_1 -> SiLU -> linear_2",
            "timestep_proj": "`time_proj(SiLU(temb))` (B, 6*inner), before unflatten to (B, 6, inner)",
            "text_proj": "`text_embedder` output (B, L, inner): linear_1 -> GELU(tanh) -> linear_2",
            "block0_attn1": "block 0 self-attention output (after to_out), before the gate",
            "block0_attn2": "block 0 cross-attention output (after to_out)",
            "block0_ffn": "block 0 FFN output, before the gate",
            "block0_out": "block 0 output (B, S, inner)",
            "block1_out": "block 1 output (B, S, inner)",
            "proj_out": "proj_out output before unpatchify (B, S, out*pt*ph*pw)",
            "sample": "model output (B, out, F, H, W)",
        }
        for k, v in out.items():
            cf.add(f"{name}.{k}", v, descs[k])
    return cf


def vae_cases(vae: AutoencoderKLWan) -> CaseFile:
    cf = CaseFile("vae", "AutoencoderKLWan")
    gen = torch.Generator().manual_seed(3003)
    z = torch.randn((1, L.VAE_KW["z_dim"], 3, 4, 4), generator=gen)
    x = torch.rand((1, 3, 9, 32, 32), generator=gen) * 2 - 1
    out = L.vae_outputs(vae, z, x)
    frac = float((out["decode.sample"].abs() >= 1).float().mean())
    assert frac < 0.2, f"too much of the decoded video is clamped ({frac:.2f}); the test would be weak"
    cf.add("decode.z", z, "latent (B, z_dim, T, h, w): 3 latent frames -> 1 + 4*2 = 9 video frames, 8x spatial")
    cf.add("encode.x", x, "video in [-1, 1] (B, 3, 9, H, W); the encoder takes it in chunks of 1, 4, 4 frames")
    descs = {
        "decode.post_quant_conv": "post_quant_conv(z), applied to all latent frames at once",
        "decode.sample": "`vae.decode(z).sample`: chunks concatenated in time, then clamped to [-1, 1]",
        "encode.moments": "quant_conv output (B, 2*z_dim, 3, h, w): [mean | logvar]",
        "encode.mean": "`vae.encode(x).latent_dist.mean` (= mode)",
    }
    for k, v in out.items():
        d = descs.get(k) or f"raw decoder output for latent frame {k.split('.')[-1]} (feature cache carried over), not clamped"
        cf.add(k, v, d)
    return cf


def scheduler_cases() -> CaseFile:
    cf = CaseFile("schedulers", "schedulers")
    unipc = UniPCMultistepScheduler.from_pretrained(str(OUT / L.TINY / "scheduler"))
    euler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(OUT / L.EULER))
    for n in L.SCHEDULER_STEP_COUNTS:
        unipc.set_timesteps(n)
        cf.add(f"unipc.n{n}.timesteps", unipc.timesteps, f"UniPC timesteps after set_timesteps({n}): int64 (sigma*1000 truncated)")
        cf.add(f"unipc.n{n}.sigmas", unipc.sigmas, f"UniPC sigmas ({n}+1), last one 0 (final_sigmas_type zero)")
    for n in L.SCHEDULER_STEP_COUNTS:
        euler.set_timesteps(n)
        cf.add(f"euler.n{n}.timesteps", euler.timesteps, f"FlowMatchEuler timesteps after set_timesteps({n}): float32 sigma*1000")
        cf.add(f"euler.n{n}.sigmas", euler.sigmas, f"FlowMatchEuler sigmas ({n}+1), last one 0")
    gen = torch.Generator().manual_seed(4001)
    for n in L.UNIPC_RUNS:
        x = torch.randn(L.SCHEDULER_SAMPLE_SHAPE, generator=gen)
        mos = [torch.randn(L.SCHEDULER_SAMPLE_SHAPE, generator=gen) for _ in range(n)]
        cf.add(f"unipc.run{n}.sample", x, f"initial sample of a {n}-step UniPC run")
        for i, mo in enumerate(mos):
            cf.add(f"unipc.run{n}.model_output.{i}", mo, f"model output fed to step {i}")
        rec = L.unipc_run(unipc, n, x, mos)
        for k, v in rec.items():
            d = {
                "x0_pred": "`convert_model_output`: sample - sigma*model_output (flow_prediction, predict_x0)",
                "corrected_sample": "UniC corrector output (the sample the predictor then starts from); steps >= 1",
                "prev_sample": "`step(...).prev_sample`",
                "predictor_order": "UniP order per step (1 = warm-up / lower_order_final)",
                "corrector_order": "UniC order per step (0 = no corrector at step 0)",
            }[k.split(".")[0]]
            cf.add(f"unipc.run{n}.{k}", v, d)
    for n in L.EULER_RUNS:
        x = torch.randn(L.SCHEDULER_SAMPLE_SHAPE, generator=gen)
        mos = [torch.randn(L.SCHEDULER_SAMPLE_SHAPE, generator=gen) for _ in range(n)]
        cf.add(f"euler.run{n}.sample", x, f"initial sample of a {n}-step Euler run")
        for i, mo in enumerate(mos):
            cf.add(f"euler.run{n}.model_output.{i}", mo, f"model output fed to step {i}")
        for k, v in L.euler_run(euler, n, x, mos).items():
            cf.add(f"euler.run{n}.{k}", v, "`step(...).prev_sample` = sample + (sigma_next - sigma)*model_output")
    return cf


def pipeline_case(pipe: WanPipeline) -> tuple[CaseFile, dict]:
    P = L.PIPELINE
    cf = CaseFile("pipeline", "WanPipeline")
    latents = L.pipeline_latents(pipe)
    out = L.pipeline_outputs(pipe, latents)
    cf.add("latents", latents, f"initial noise: torch.randn({list(latents.shape)}, generator=torch.Generator('cpu').manual_seed({P['latents_seed']})), passed as latents=")
    descs = {
        "prompt.input_ids": "tokenizer(prompt_clean(prompt)), padding to max_sequence_length",
        "prompt.attention_mask": "",
        "negative_prompt.input_ids": "tokenizer(prompt_clean(negative_prompt))",
        "negative_prompt.attention_mask": "",
        "prompt_embeds": "text encoder output, rows past the prompt length zeroed (B, max_sequence_length, d_model)",
        "negative_prompt_embeds": "same for the negative prompt",
        "timesteps": "scheduler timesteps (int64)",
        "sigmas": "scheduler sigmas (float32, steps+1)",
        "timestep": "the timestep tensor passed to the transformer: t.expand(B), int64",
        "noise_pred_cond": "transformer(latents, t, prompt_embeds)",
        "noise_pred_uncond": "transformer(latents, t, negative_prompt_embeds)",
        "noise_pred": "uncond + guidance_scale * (cond - uncond)",
        "latents": "latents after scheduler.step",
        "latents_denormalized": "latents / (1/latents_std) + latents_mean (this exact op order), fed to vae.decode",
        "video": "vae.decode(...).sample, clamped to [-1, 1] (B, 3, F, H, W)",
        "frames": "pipeline output (output_type='np'): (video*0.5+0.5).clamp(0,1) permuted to (B, F, H, W, 3)",
    }
    for k, v in out.items():
        key = k.split(".", 1)[1] if k.startswith("step") else k
        cf.add(k, v, descs[key])
    tok = pipe.tokenizer
    meta = {
        "call": {k: v for k, v in P.items() if k != "latents_seed"} | {"latents": "cases/pipeline.safetensors:latents"},
        "prompt_clean": {"prompt": L.prompt_clean(P["prompt"]), "negative_prompt": L.prompt_clean(P["negative_prompt"])},
        "prompt_tokens": tok.convert_ids_to_tokens(out["prompt.input_ids"][0].tolist()),
        "negative_prompt_tokens": tok.convert_ids_to_tokens(out["negative_prompt.input_ids"][0].tolist()),
        "vae_scale_factor_spatial": pipe.vae_scale_factor_spatial,
        "vae_scale_factor_temporal": pipe.vae_scale_factor_temporal,
        "latent_shape": list(latents.shape),
        "frames_shape": list(out["frames"].shape),
        "latents_note": f"latents = torch.randn(latent_shape, generator=torch.Generator('cpu').manual_seed({P['latents_seed']})); passed as latents=",
    }
    return cf, meta


def tokenizer_cases() -> dict:
    uni = T5Tokenizer.from_pretrained(str(OUT / L.TINY / "tokenizer"))
    wl = PreTrainedTokenizerFast.from_pretrained(str(OUT / L.WORDLEVEL))
    doc = {
        "call": f"tokenizer([prompt], padding='max_length', max_length={L.TOKENIZER_MAX_LENGTH}, truncation=True, "
        "add_special_tokens=True, return_attention_mask=True); unpadded_ids: tokenizer([prompt], add_special_tokens=True)",
        "max_length": L.TOKENIZER_MAX_LENGTH,
        "tokenizers": {},
        "prompt_clean": [{"raw": p, "clean": L.prompt_clean(p)} for p in L.PROMPT_CLEAN_CASES],
    }
    for folder, tok, note in [
        (f"{L.TINY}/tokenizer", uni, "Unigram, loaded with transformers.T5Tokenizer (as WanPipeline loads umt5-xxl's)"),
        (L.WORDLEVEL, wl, "WordLevel, loaded with transformers.PreTrainedTokenizerFast"),
    ]:
        cases = [L.tokenizer_case(tok, p) for p in L.TOKENIZER_PROMPTS]
        for c in cases:  # the tokenizer.json alone (tokenizers library) must agree with transformers
            ids, mask = L.raw_tokenizers_encode(OUT / folder / "tokenizer.json", c["prompt"], L.TOKENIZER_MAX_LENGTH)
            assert (ids, mask) == (c["input_ids"], c["attention_mask"]), (folder, c["prompt"], ids, c["input_ids"])
        doc["tokenizers"][folder] = {"class": type(tok).__name__, "note": note, "vocab_size": len(tok), "cases": cases}
    return doc


# --- 4. README -----------------------------------------------------------------------------------------------------


def tree_listing() -> str:
    lines = []
    for p in sorted(OUT.rglob("*")):
        if p.is_file() and p.name != "README.md":
            lines.append(f"| `{p.relative_to(OUT)}` | {p.stat().st_size:,} |")
    return "| file | bytes |\n|---|---|\n" + "\n".join(lines)


def decoder_slots_used(vae) -> int:
    z = torch.zeros((1, vae.config.z_dim, 1, 4, 4))
    vae.clear_cache()
    vae._conv_idx = [0]
    vae.decoder(vae.post_quant_conv(z), feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=True)
    used = vae._conv_idx[0]
    vae.clear_cache()
    return used


def compact(d: dict) -> str:
    return "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in d.items()) + "\n}"


def write_readme(case_files: list[CaseFile], versions: dict, pipe_meta: dict, te, tr, vae, full_params: dict) -> None:
    tpl = (Path(__file__).resolve().parent / "FIXTURES_README.md.in").read_text(encoding="utf-8")
    rope = tr.rope
    sub = {
        "VERSIONS": "\n".join(f"- {k}: `{v}`" for k, v in versions.items()),
        "UMT5_CONFIG": compact(L.UMT5_KW),
        "TRANSFORMER_CONFIG": compact(L.TRANSFORMER_KW),
        "VAE_CONFIG": compact(L.VAE_KW),
        "ROPE": f"t/h/w = {rope.t_dim}/{rope.h_dim}/{rope.w_dim}",
        "DEC_CONVS": str(decoder_slots_used(vae)),
        "ENC_CONVS": str(vae._cached_conv_counts["encoder"]),
        "DEC_ALLOC": str(vae._cached_conv_counts["decoder"]),
        "PARAMS": ", ".join(f"{n} {sum(p.numel() for p in m.parameters()):,}" for n, m in [("text_encoder", te), ("transformer", tr), ("vae", vae)]),
        "PIPELINE_META": json.dumps(pipe_meta, indent=1, ensure_ascii=False),
        "FILES": tree_listing(),
        "FULL_PARAMS": ", ".join(f"{k} {v:,}" for k, v in full_params.items()),
    }
    tables = []
    for cf in case_files:
        tables.append(f"### `cases/{cf.name}.safetensors` ({cf.title})\n\n{cf.table()}\n")
    sub["CASE_TABLES"] = "\n".join(tables)
    for k, v in sub.items():
        tpl = tpl.replace("{{" + k + "}}", v)
    assert "{{" not in tpl
    (OUT / "README.md").write_text(tpl, encoding="utf-8")


# --- main ----------------------------------------------------------------------------------------------------------


def main() -> None:
    t0 = time.time()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True, exist_ok=True)
    CASES_DIR.mkdir(parents=True, exist_ok=True)

    # Build and save everything first, so that no tokenizer call leaves padding/truncation in a tokenizer.json.
    uni, wl = build_unigram_tokenizer("--retrain-unigram" in sys.argv), build_wordlevel_tokenizer()
    wl.save_pretrained(str(OUT / L.WORDLEVEL))
    te, tr, vae = build_text_encoder(), build_transformer(), build_vae()
    unipc = UniPCMultistepScheduler.from_config(L.WAN21_SCHEDULER_CONFIG)
    pipe = WanPipeline(tokenizer=uni, text_encoder=te, vae=vae, scheduler=unipc, transformer=tr)
    pipe.save_pretrained(str(OUT / L.TINY), safe_serialization=True)
    FlowMatchEulerDiscreteScheduler(**L.EULER_KW).save_pretrained(str(OUT / L.EULER))
    for folder in (OUT / L.TINY / "tokenizer", OUT / L.WORDLEVEL):
        j = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        assert j["padding"] is None and j["truncation"] is None, folder

    # Every case runs on the components reloaded from disk, exactly as a consumer sees them.
    pipe = WanPipeline.from_pretrained(str(OUT / L.TINY)).to("cpu")
    te, tr, vae = pipe.text_encoder.eval(), pipe.transformer.eval(), pipe.vae.eval()
    case_files = [
        text_encoder_cases(te, pipe.tokenizer),
        transformer_cases(tr),
        vae_cases(vae),
        scheduler_cases(),
    ]
    pcf, pipe_meta = pipeline_case(pipe)
    case_files.append(pcf)
    for cf in case_files:
        cf.save()
    L.write_json(CASES_DIR / "pipeline.json", pipe_meta)
    L.write_json(CASES_DIR / "tokenizer_cases.json", tokenizer_cases())
    full_config.write(OUT / L.FULL)
    family_configs.write()
    # The image-to-video cases run on tiny-wan as just saved.
    make_ti2v_case.main()
    make_i2v_case.main()
    make_wan22_case.main()
    make_quant_case.main()
    make_lora_case.main()
    versions = L.versions()
    L.write_json(OUT / "VERSIONS.json", versions)
    write_readme(case_files, versions, pipe_meta, te, tr, vae, full_config.param_counts(OUT / L.FULL))
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT.relative_to(L.REPO)}: {total / 1e6:.2f} MB in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
