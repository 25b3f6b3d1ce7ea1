"""The shapes-tiny model: the Wan2.1 architecture at a tiny size, built from configs with random weights.

- VAE: `diffusers.AutoencoderKLWan` (the Wan2.1 variant, not the residual Wan2.2 one), 8x in space and 4x in
  time: a 17x64x64 RGB clip <-> a 16x5x8x8 latent.
- Text encoder: `transformers.UMT5EncoderModel` over a word-level vocabulary of the shapes grammar.
- Transformer: `diffusers.WanTransformer3DModel`, patch (1, 2, 2): 5 x 4 x 4 = 80 tokens per clip.
- Scheduler: `UniPCMultistepScheduler` configured as Wan ships it (flow_prediction, flow sigmas, bh2, order 2).
- Tokenizer: word-level (`tokenizers`), lower-cased, punctuation stripped, split on whitespace,
  `<pad>` = 0, `</s>` = 1 appended like T5, `<unk>` = 2, the grammar's words from 3.

Prompts are encoded exactly as `WanPipeline` encodes them, padded to MAX_TEXT_TOKENS.
"""

from __future__ import annotations

import json
import pathlib
import sys
import types

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import world  # noqa: E402

MAX_TEXT_TOKENS = 16
SPECIAL_TOKENS = {"<pad>": 0, "</s>": 1, "<unk>": 2}
TEXT_VOCAB_SIZE = 32  # 3 special tokens + 25 words, rounded up
Z_DIM = 16

VAE_CONFIG = dict(
    base_dim=12,
    z_dim=Z_DIM,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    dropout=0.0,
    latents_mean=[0.0] * Z_DIM,  # replaced by the training latents' statistics at export
    latents_std=[1.0] * Z_DIM,
)

TEXT_ENCODER_CONFIG = dict(
    vocab_size=TEXT_VOCAB_SIZE,
    d_model=192,
    d_kv=48,
    d_ff=256,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.0,
    layer_norm_epsilon=1e-6,
    feed_forward_proj="gated-gelu",
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)

TRANSFORMER_CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=4,
    attention_head_dim=48,
    in_channels=Z_DIM,
    out_channels=Z_DIM,
    text_dim=TEXT_ENCODER_CONFIG["d_model"],
    freq_dim=256,
    ffn_dim=768,
    num_layers=6,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=None,
    added_kv_proj_dim=None,
    rope_max_seq_len=1024,
)

# UniPC as Wan2.1 ships it; flow_shift is chosen for this model by `evaluate.py --sweep`.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    prediction_type="flow_prediction",
    use_flow_sigmas=True,
    flow_shift=3.0,
    solver_order=2,
    solver_type="bh2",
    predict_x0=True,
    lower_order_final=True,
    final_sigmas_type="zero",
    timestep_spacing="linspace",
)

TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "model_max_length": MAX_TEXT_TOKENS,
    "pad_token": "<pad>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "padding_side": "right",
    "truncation_side": "right",
    "clean_up_tokenization_spaces": False,
    "model_input_names": ["input_ids", "attention_mask"],
}


def build_vae(**overrides):
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(**{**VAE_CONFIG, **overrides})


def start_per_frame(vae) -> None:
    """Make a freshly built VAE treat every frame on its own: zero the past-frame taps of its causal 3x3x3
    convolutions and make its temporal resamplers select (down) or repeat (up) the current frame.

    The single-frame steps that start the VAE's training only reach the current-frame taps, so after them the
    video steps begin from a good per-frame autoencoder (with every 4th frame kept and repeated) instead of
    from random temporal taps that would scramble what the frames taught."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanResample

    with torch.no_grad():
        temporal = set()
        for module in vae.modules():
            if isinstance(module, WanResample) and hasattr(module, "time_conv"):
                conv = module.time_conv
                temporal.add(conv)
                conv.weight.zero_()
                conv.bias.zero_()
                out_channels, in_channels = conv.weight.shape[:2]
                for o in range(out_channels):  # the newest frame of each window (tap 2), channel for channel
                    conv.weight[o, o % in_channels, -1, 0, 0] = 1.0
        for module in vae.modules():
            if isinstance(module, WanCausalConv3d) and module not in temporal and module.weight.shape[2] > 1:
                module.weight[:, :, :-1].zero_()


def build_text_encoder():
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(**TEXT_ENCODER_CONFIG))


def build_transformer():
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(**TRANSFORMER_CONFIG)


def build_scheduler(**overrides):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(**{**SCHEDULER_CONFIG, **overrides})


def vocabulary() -> dict[str, int]:
    vocab = dict(SPECIAL_TOKENS)
    for word in world.VOCABULARY:
        vocab[word] = len(vocab)
    assert len(vocab) <= TEXT_VOCAB_SIZE
    return vocab


def build_word_tokenizer():
    """The `tokenizers.Tokenizer` behind tokenizer.json."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordLevel(vocab=vocabulary(), unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Lowercase(), normalizers.Replace(Regex(r"[^\w\s]"), " ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", SPECIAL_TOKENS["</s>"])]
    )
    return tokenizer


def save_tokenizer(folder: str | pathlib.Path) -> None:
    """Write tokenizer.json and tokenizer_config.json so AutoTokenizer / PreTrainedTokenizerFast load them."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        stale.unlink()
    build_word_tokenizer().save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")


def build_tokenizer():
    """The transformers tokenizer the pipeline uses (a PreTrainedTokenizerFast over the word-level model)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=build_word_tokenizer(),
        **{k: v for k, v in TOKENIZER_CONFIG.items() if k not in ("tokenizer_class", "model_input_names")},
    )


def encode_prompts(tokenizer, text_encoder, prompts: list[str], max_length: int = MAX_TEXT_TOKENS) -> torch.Tensor:
    """Prompt embeddings (B, max_length, d_model) exactly as WanPipeline makes them (gradients flow)."""
    from diffusers import WanPipeline

    shim = types.SimpleNamespace(tokenizer=tokenizer, text_encoder=text_encoder)
    return WanPipeline._get_t5_prompt_embeds(
        shim, prompt=prompts, max_sequence_length=max_length, device=torch.device("cpu"), dtype=torch.float32
    )


def conv_layout(module: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    """Store every 3-D convolution weight of `module` channels-last (NDHWC) or back in the default layout.

    Channels-last is oneDNN's own layout, so the VAE's convolutions and their gradients skip a reorder on every
    call: VAE training steps 16-27% faster on the EPYC host, with the same losses (README, "Training speed").
    safetensors saves only the default layout, so a VAE goes back to it before `save_pretrained`. The values do
    not change either way."""
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.Conv3d):
                m.weight.data = m.weight.data.contiguous(memory_format=layout)
    return module


class BFloat16Linear(torch.nn.Linear):
    """A Linear layer whose matrix product runs in bfloat16: its input, weight and bias are rounded to bfloat16
    for the product and its output comes back in the input's dtype. The weights, their gradients and the
    optimiser's state stay float32; only the products lose precision.

    CPUs with AVX-512 BF16 (AMD Zen 4) or AMX (Intel Sapphire Rapids) do twice or more the multiply-adds in
    bfloat16: phase 2's compiled steps ran 20% faster on the EPYC host (README, "Training speed"). Attention,
    norms and everything else stay in float32 (CPU attention in bfloat16 is slower in its backward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(torch.bfloat16)
        return torch.nn.functional.linear(x.to(torch.bfloat16), self.weight.to(torch.bfloat16), bias).to(x.dtype)


def bfloat16_products(layers: list[torch.nn.Linear]) -> None:
    """Make each of these Linear layers a BFloat16Linear in place: the same parameters, names and state_dict;
    a deep copy (the EMA's) keeps the class, so copy before converting the layers that train."""
    for layer in layers:
        if type(layer) is not torch.nn.Linear:
            raise TypeError(f"bfloat16_products: {type(layer).__name__} is not a plain torch.nn.Linear")
        layer.__class__ = BFloat16Linear


class BFloat16Convolution:
    """Mixed into a convolution's own class (Conv2d, Conv3d or a subclass such as the VAE's WanCausalConv3d):
    the convolution itself runs in bfloat16 (its input, weight and bias rounded for it) and its output comes back
    in the input's dtype. Whatever the subclass does around it (the causal padding, the frame cache) is unchanged;
    weights, gradients and optimiser state stay float32."""

    float32_class: type  # the class this one was made from, which conv_precision restores

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        bias = None if bias is None else bias.to(torch.bfloat16)
        return super()._conv_forward(x.to(torch.bfloat16), weight.to(torch.bfloat16), bias).to(x.dtype)


_BFLOAT16_CLASSES: dict[type, type] = {}


def _bfloat16_class(cls: type) -> type:
    if cls not in _BFLOAT16_CLASSES:
        _BFLOAT16_CLASSES[cls] = type(f"BFloat16{cls.__name__}", (BFloat16Convolution, cls), {"float32_class": cls})
    return _BFLOAT16_CLASSES[cls]


def conv_precision(module: torch.nn.Module, bfloat16: bool) -> torch.nn.Module:
    """Run every 2-D and 3-D convolution of `module` in bfloat16 (BFloat16Convolution) or back in float32, in
    place: the parameters, their names and the state_dict do not change, so a VAE goes back to float32 before it
    is probed, exported or served, and its weights are the ones it trained.

    CPUs with AVX-512 BF16 (AMD Zen 4) or AMX do twice or more the multiply-adds in bfloat16 (README, "Training
    speed"); norms, activations, the loss and the updates stay float32."""
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)):
            converted = isinstance(m, BFloat16Convolution)
            if bfloat16 and not converted:
                m.__class__ = _bfloat16_class(type(m))
            elif not bfloat16 and converted:
                m.__class__ = m.float32_class
    return module


def compile_for_training(*modules: torch.nn.Module) -> None:
    """torch.compile each module in place (its state_dict keys do not change), falling back to eager execution,
    with a warning, wherever compilation fails (no C compiler, an unsupported operation).

    Inductor fuses the elementwise work between the matrix products (norms, modulation, activations): phase 2's
    steps ran 13% faster side by side on the EPYC host (README, "Training speed"); the first step pays the
    compilation (about 30-80 s, cached in the system temp folder for later runs)."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    for module in modules:
        module.compile()


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def decode_unclamped(vae, z: torch.Tensor) -> torch.Tensor:
    """AutoencoderKLWan._decode without the final clamp to [-1, 1] (which would stop gradients while training)."""
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    frames = []
    for i in range(x.shape[2]):
        vae._conv_idx = [0]
        frames.append(
            vae.decoder(x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=i == 0)
        )
    vae.clear_cache()
    return torch.cat(frames, dim=2)
