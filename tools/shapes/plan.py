"""A run's settings: the Plan, and which of them each phase depends on.

A run keeps its state in `runs/<name>/` (git-ignored). Its `plan.json` pins the settings of every phase it has
started (PHASE_FIELDS): rerunning the command resumes the run only with the same settings for those phases, while
the budgets of phases not started yet may still change. Settings added since a plan.json was written take their
defaults, which leave the old behaviour unchanged (saved_plan).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

RUNS = pathlib.Path(__file__).resolve().parent / "runs"  # each run's state: runs/<name>/ (git-ignored)


@dataclasses.dataclass(frozen=True)
class Plan:
    seed: int = 0
    # Phase 1: the VAE, a curriculum. First vae_image_steps steps of single frames (the causal VAE's first-chunk
    # path; every 4th step half as many whole 64x64 frames), then vae_steps video steps: 9-frame windows, and
    # every 4th step two whole 17-frame clips. Frames and windows are otherwise cropped to vae_crop x vae_crop
    # around the object (8-aligned).
    vae_image_steps: int = 2000
    vae_image_batch: int = 16
    vae_steps: int = 2000
    vae_batch: int = 8
    vae_crop: int = 32
    vae_lr: float = 1e-3
    vae_warmup: int = 100
    latent_noise: float = 0.03  # video steps: noise added to the posterior mode, x the latents' spread
    latent_l2: float = 1e-4  # keeps the latent's scale bounded (the KL's mean term)
    object_weight: float = 7.0  # extra reconstruction weight on the object's pixels
    # Extra reconstruction weight on the pixels within 2 of the object's outline in phase 1 too (edge_weight is
    # phase 1b's): what the decoder phases of the warm-started chain won over thousands of steps, asked for from
    # the start. 0 (the chain's VAE) leaves phase 1's loss as it was.
    vae_edge_weight: float = 0.0
    spike_factor: float = 2.5  # skip an update whose loss exceeds this x the running loss of its kind
    # "float32", or "bfloat16": the VAE's convolutions run in bfloat16 while it trains (phase 1), encodes the
    # dataset and tunes its decoder (phase 1b) (model.conv_precision); weights, gradients, norms and the loss stay
    # float32, and the saved VAE is float32 and runs in float32 everywhere else.
    vae_convolutions: str = "float32"
    vae_probe_every: int = 250
    dataset_clips: int = 4096  # training clips encoded once for phase 2
    # Phase 1b: the decoder alone (and its post-quant conv) fine-tuned on whole encoded training clips, the encoder
    # frozen, so the latents, their statistics and any transformer trained on them stay valid. It runs after phase
    # 2, whose transformer it may read (decoder_sigma_max). 0 skips it.
    decoder_steps: int = 0
    decoder_batch: int = 4
    decoder_lr: float = 2e-4
    decoder_warmup: int = 50
    # Extra loss weight on the band of pixels within 2 of the object's outline: where the corners that tell a
    # square from a circle are won or lost.
    edge_weight: float = 16.0
    # > 0: the decoder reads what the sampler will hand it, the transformer's estimate of the clean latent,
    # x0 = x_t - s v, from the clip's latent noised to a level s drawn uniformly up to this (the text encoder and
    # transformer of this run's phase 2, or of its base run's when it trains none). The transformer's errors,
    # which round a square's corners, are then in the decoder's training data, and the clip it must draw is
    # still the true one.
    decoder_sigma_max: float = 0.0
    # > 0: this share of a decoder batch's clips is drawn by (colour, shape) group, each group in proportion to how
    # far off its reconstructions' shapes are when the phase starts (decoder/focus.json), the rest uniformly. The
    # decoder's misses are not spread evenly (`reads`' reconstructions: green triangles and squares read wrong 3
    # times in 8, the other colours' 2 in 56), and a uniform draw spends its steps where the decoder is already right.
    decoder_focus: float = 0.0
    # Phase 2: text encoder + transformer.
    dit_steps: int = 2800
    dit_batch: int = 64
    dit_lr: float = 4e-4
    dit_warmup: int = 200
    # > 0: the learning rate holds at dit_lr after the warmup and decays (cosine, to a tenth) over only this last
    # share of the steps (warmup-stable-decay). 0: it decays over all of them. A held rate keeps the steps large
    # for longer: runs/single's cosine had fallen to a third by its step 7,000, still without motion.
    dit_decay: float = 0.0
    # "adamw", or "muon": the matrices of the transformer's blocks and of the text encoder's layers take
    # orthogonalised momentum updates (torch.optim.Muon's, batched a shape at a time by grouped_muon.py, its step
    # scaled to AdamW's RMS so that dit_lr and weight_decay mean the same), the rest (embeddings, norms, biases,
    # the heads) AdamW.
    dit_optimizer: str = "adamw"
    # "float32", or "bfloat16": the matrix products of the hidden Linear layers (those Muon updates: the
    # transformer's blocks, the text encoder's layers) run in bfloat16 while phase 2 trains (model.BFloat16Linear);
    # weights, gradients, attention and norms stay float32, and the EMA weights that are exported are float32.
    dit_matmuls: str = "float32"
    weight_decay: float = 0.01
    prompt_dropout: float = 0.1
    uniform_sigma: float = 0.2  # fraction of sigmas drawn uniformly; the rest logit-normal(0, 1)
    # Shift of the training sigmas, s -> k s / (1 + (k - 1) s), the same map as the sampler's flow_shift: k > 1
    # spends more of the steps at high noise, where the layout and the motion of the clip are decided.
    sigma_shift: float = 1.0
    # > 0: the shift moves linearly from sigma_shift at phase 2's first step to this at its last, so that the
    # steps go to the layout and the motion first and to the details last (the warm-started chain did the same in
    # two runs: shift 2, then 1). 0 keeps sigma_shift throughout.
    sigma_shift_end: float = 0.0
    # Warm start: another run whose VAE and latents this run shares and whose exported (EMA) text encoder and
    # transformer phase 2 starts from, with a fresh optimiser. "" trains everything from scratch.
    base_run: str = ""
    # Another run whose phase 1 (its VAE, before any decoder phase) and encoded latents this run shares, to try
    # phase-2 settings without training the same VAE again: it must have run phase 1 with this plan's settings and
    # seed, so the outcome is the one this run's own phase 1 would give. Phase 2 starts from scratch.
    phase_one_run: str = ""
    # Phase 2b (phase_image.py): image conditioning the Wan2.2 TI2V way, after phase 2. image_steps steps of
    # dit_batch clips, image_share of them given their clean first frame (latent frame 0, timestep 0 on its tokens);
    # the learning rate warms up over image_warmup steps, holds at image_lr and decays over the last dit_decay
    # share. Training sigmas are shifted by image_sigma_shift. 0 steps skips the phase (a text-to-video model).
    image_steps: int = 0
    image_share: float = 0.5
    image_lr: float = 3e-4
    image_warmup: int = 100
    image_sigma_shift: float = 2.0
    # An exported model folder (a diffusers layout this recipe wrote) to start from instead of training phases 1 and
    # 2: its VAE encodes the dataset (its latents' statistics kept as they are, since its transformer was trained
    # on them) and its text encoder and transformer go on to phase 2b. Needs dit_steps and decoder_steps 0.
    base_model: str = ""
    ema_decay: float = 0.999
    # End phase 2 after this many steps (0: at dit_steps) with the EMA weights as they are, the schedule unchanged:
    # for a run that must finish by a deadline. Not pinned, so a resumed run may set it.
    dit_stop_at: int = 0
    dit_probe_every: int = 1000
    probe_prompts: int = 12  # per split, in the generation probes during phase 2
    checkpoint_minutes: float = 4.0

    @property
    def dit_end(self) -> int:
        """The step phase 2 ends at: dit_steps, or dit_stop_at when that comes first."""
        return min(self.dit_steps, self.dit_stop_at or self.dit_steps)


SMOKE = Plan(
    vae_image_steps=4,
    vae_image_batch=2,
    vae_steps=8,
    vae_batch=2,
    vae_warmup=1,
    vae_probe_every=2,
    dataset_clips=48,
    decoder_steps=4,
    decoder_batch=2,
    decoder_warmup=1,
    decoder_sigma_max=0.4,  # every setting of the single-run recipe, so the smoke passes through its code
    decoder_focus=0.5,
    vae_edge_weight=16.0,
    sigma_shift=2.0,
    sigma_shift_end=1.0,
    dit_decay=0.5,
    dit_optimizer="muon",
    dit_steps=6,
    dit_batch=8,
    dit_warmup=1,
    dit_probe_every=3,
    probe_prompts=2,
    image_steps=4,
    image_warmup=1,
    checkpoint_minutes=0.0,
)


# Which plan fields each phase depends on (seed and checkpoint cadence aside). A run's plan.json pins the
# fields of the phases it has started; the budgets of phases not started yet may still change.
PHASE_FIELDS = {
    "vae": (
        "seed", "vae_image_steps", "vae_image_batch", "vae_steps", "vae_batch", "vae_crop", "vae_lr", "vae_warmup",
        "latent_noise", "latent_l2", "object_weight", "spike_factor", "vae_edge_weight", "vae_convolutions",
    ),
    "latents": ("seed", "dataset_clips", "vae_convolutions", "base_model"),
    "decoder": (
        "seed", "decoder_steps", "decoder_batch", "decoder_lr", "decoder_warmup", "edge_weight", "latent_noise",
        "object_weight", "decoder_sigma_max", "base_run", "vae_convolutions",
    ),
    "dit": (
        "seed", "dit_steps", "dit_batch", "dit_lr", "dit_warmup", "weight_decay", "prompt_dropout",
        "uniform_sigma", "ema_decay", "sigma_shift", "sigma_shift_end", "base_run", "dit_decay", "dit_optimizer",
        "dit_matmuls",
    ),
    "image": (
        "seed", "image_steps", "image_share", "image_lr", "image_warmup", "image_sigma_shift", "dit_batch",
        "prompt_dropout", "uniform_sigma", "ema_decay", "dit_decay", "dit_optimizer", "dit_matmuls", "base_model",
    ),
}


def saved_plan(run: pathlib.Path) -> dict:
    """A run's pinned plan.json; a setting added since it was written takes its default, which leaves the old
    behaviour unchanged."""
    return {**dataclasses.asdict(Plan()), **json.loads((run / "plan.json").read_text())}
