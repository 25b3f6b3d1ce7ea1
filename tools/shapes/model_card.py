"""The model card (`README.md` of the export): what the model can do, its architecture, and how it was trained,
written from the run's plan and folders. Its evaluation section is filled in later by evaluate.update_card.
"""

from __future__ import annotations

import dataclasses
import pathlib

import model
import world
from plan import RUNS, Plan, saved_plan


def warm_start_text(plan: Plan) -> str:
    """The chain of runs this one's phase 2 continues, oldest first, each with its plan's phase-2 settings."""
    chain, base = [], plan.base_run
    while base:
        settings = saved_plan(RUNS / base)
        if settings["dit_steps"] == 0:
            chain.append(f"`{base}` (which tuned only the decoder)")
        else:
            chain.append(f"`{base}` ({settings['dit_steps']:,} steps of {settings['dit_batch']}, lr {settings['dit_lr']}, "
                         f"sigma shift {settings['sigma_shift']:g})")
        base = settings["base_run"]
    if not chain:
        return ""
    if plan.dit_steps == 0:
        return " They are those of run " + ", which continued ".join(chain) + \
            " (`tools/shapes/runs/`), unchanged."
    return "\n   Phase 2 started from the exported weights of run " + ", which continued ".join(chain) + \
        " (`tools/shapes/runs/`); the VAE's encoder is the first run's."


def decoder_text(run: pathlib.Path, plan: Plan) -> str:
    """The model card's item on the decoder's fine-tuning: this run's, or the one its VAE comes from."""
    if (run / "decoder" / "done").exists():
        folder, settings = run / "decoder", dataclasses.asdict(plan)
    elif (run / "vae").resolve().name == "decoder":
        folder = (run / "vae").resolve()
        settings = saved_plan(folder.parent)
    else:
        return ""
    before = (folder / "before.json").read_text().strip() if (folder / "before.json").exists() else "?"
    where = "" if folder.parent == run else f" (in run `{folder.parent.name}`)"
    if folder.parent == run and (run / "vae").resolve().name == "decoder":
        where = f" (again, from run `{(run / 'vae').resolve().parent.name}`'s tuned decoder)"
    # A base run's tuning came before this run's phase 2; only this run's own comes after it.
    when = ", after phase 2" if folder.parent == run else ""
    sigma = settings["decoder_sigma_max"]
    reads = (
        f"the phase-2 transformer's estimate of the clean latent from the mode noised to a level up to {sigma:g}"
        if sigma > 0 else "the posterior's mode"
    )
    focus = settings["decoder_focus"]
    drawn = (
        f", {focus:.0%} of them drawn by colour and shape in proportion to how far off that group's reconstructed "
        "fill ratios were at the start (decoder/focus.json), the rest uniformly"
        if focus > 0 else ""
    )
    return f"""
4. The decoder alone{when} (the encoder frozen, so the latents stay as they were), fine-tuned{where}:
   {settings['decoder_steps']:,} AdamW steps of {settings['decoder_batch']} whole encoded training clips{drawn} (lr
   {settings['decoder_lr']}, cosine), the decoder reading {reads}, plus {settings['latent_noise']:g} x the latents'
   spread of noise; loss L1 + L2 with {1 + settings['object_weight']:g}x weight on the object's pixels and
   {settings['edge_weight']:g} more on those within 2 of its outline. Probe before: {before}; after: {(folder / "done").read_text().strip()}."""


def dit_text(plan: Plan) -> str:
    """The model card's item on phase 2."""
    if plan.dit_steps == 0 and plan.base_run:
        return "Text encoder + transformer: not trained in this run." + warm_start_text(plan)
    return f"""Text encoder + transformer jointly: {dit_steps_text(plan)} steps of {plan.dit_batch} ({optimizer_text(plan)}, lr {plan.dit_lr}, {schedule_text(plan)},
   EMA {plan.ema_decay}), rectified flow (x_t = (1 - s) x0 + s n, target n - x0, timestep s * 1000,
   s ~ logit-normal(0, 1) with {plan.uniform_sigma:.0%} uniform, shifted by {shift_text(plan)}),
   {plan.prompt_dropout:.0%} empty prompts; the EMA weights are exported.{warm_start_text(plan)}"""


def phase_one_text(plan: Plan) -> str:
    if not plan.phase_one_run:
        return ""
    return (f" Phase 1 (the VAE and the encoded clips) is run `{plan.phase_one_run}`'s, which trained it with these"
            " same settings and seed; this run shared it rather than train it again.")


def convolutions_text(plan: Plan) -> str:
    if plan.vae_convolutions == "bfloat16":
        return ("; its convolutions ran in bfloat16 while it trained, encoded the clips and tuned its decoder"
                " (float32 weights; the shipped VAE runs in float32)")
    return ""


def optimizer_text(plan: Plan) -> str:
    products = ", the hidden layers' matrix products in bfloat16" if plan.dit_matmuls == "bfloat16" else ""
    if plan.dit_optimizer == "muon":
        return "Muon on the blocks' matrices, its update scaled to AdamW's RMS, and AdamW on the rest" + products
    return "AdamW" + products


def schedule_text(plan: Plan) -> str:
    if plan.dit_decay > 0:
        return f"held after a {plan.dit_warmup}-step warmup, cosine over the last {plan.dit_decay:.0%}"
    return "cosine"


def shift_text(plan: Plan) -> str:
    if plan.sigma_shift_end > 0:
        return f"{plan.sigma_shift:g} at the first step, moving linearly to {plan.sigma_shift_end:g} at the last"
    return f"{plan.sigma_shift:g}"


def dit_steps_text(plan: Plan) -> str:
    if plan.dit_end < plan.dit_steps:
        return f"{plan.dit_end:,} (of a {plan.dit_steps:,}-step schedule)"
    return f"{plan.dit_steps:,}"


def edge_text(plan: Plan) -> str:
    if plan.vae_edge_weight > 0:
        return f" and {plan.vae_edge_weight:g} more on those within 2 of its outline"
    return ""


IMAGE_ABILITY = f"""
Image-to-video: given a first frame ({world.WIDTH}x{world.HEIGHT} RGB; an image of another size is stretched to
it with a Lanczos filter, as diffusers' pipeline does by default), the clip starts from that image. The image fixes the object's colour,
shape, size and start position; the prompt gives the motion and should name the same colour and shape. When the
prompt names another colour or shape than the image shows, the evaluation below measures which one the clip
follows. diffusers: `WanImageToVideoPipeline(..., image_encoder=None, image_processor=None,
expand_timesteps=True)` over this folder's components; vgen: `--image`."""


def image_text(plan: Plan) -> str:
    """The model card's item on phase 2b (image conditioning)."""
    return f"""Image conditioning (the Wan2.2 TI2V way, `tools/shapes/phase_image.py`): {plan.image_steps:,} steps of
   {plan.dit_batch} clips, {plan.image_share:.0%} of them given their clean first frame as latent frame 0 with timestep 0
   on its tokens (per-token timesteps; the loss leaves the given latents out), the rest text-to-video as before;
   {optimizer_text(plan)}, lr {plan.image_lr} held after a {plan.image_warmup}-step warm-up, cosine over the last
   {plan.dit_decay:.0%}; sigmas shifted by {plan.image_sigma_shift:g}; {plan.prompt_dropout:.0%} empty prompts; EMA
   {plan.ema_decay}, exported. The export's `model_index.json` sets `expand_timesteps`."""


def fine_tune_card(run: pathlib.Path, plan: Plan, command: str) -> str:
    """The card of a model fine-tuned from an exported one (plan.base_model): the base model's card, with the
    image-to-video ability, this run's training and an evaluation to be filled in."""
    card = (run / "base-model" / "README.md").read_text()
    head, rest = card.split("## What it cannot do", 1)
    training, evaluation = rest.split("## Evaluation", 1)
    evaluation = evaluation.split("<!-- evaluation -->", 1)[0]
    # A base that was fine-tuned this way already states the ability (and its own image conditioning, kept above).
    ability = "" if IMAGE_ABILITY.strip() in head else "\n" + IMAGE_ABILITY
    title = "Image conditioning, continued" if "## Image conditioning" in training else "Image conditioning"
    return (
        head.rstrip() + ability + "\n\n## What it cannot do" + training.rstrip() + f"""

## {title}
`{command}` (resumable), on top of the model above (`{plan.base_model}` as it was before this run, whose training
is described above). Its VAE encoded {plan.dataset_clips:,} training clips of seed {plan.seed} again; their latent
statistics are the base model's.

1. {image_text(plan)}

## Evaluation""" + evaluation + "<!-- evaluation -->\n(not evaluated yet)\n<!-- /evaluation -->\n"
        + "\n<!-- image-evaluation -->\n(not evaluated yet)\n<!-- /image-evaluation -->\n"
    )


def model_card(run, plan: Plan, sizes: dict, vae, text_encoder, transformer, command: str) -> str:
    if plan.base_model:
        return fine_tune_card(run, plan, command)
    held_out = "\n".join(f"- {c} {s} {m}" for c, s, m in world.HELD_OUT)
    probe = (run / "vae" / "done").read_text().strip() if (run / "vae" / "done").exists() else "{}"
    if (run / "vae").resolve().name == "decoder":  # the base run's tuned VAE: its probe is the decoder's
        probe = (run / "vae" / "before.json").read_text().strip()
    size_lines = "\n".join(f"| `{k}` | {v / 1e6:.2f} MB |" for k, v in sizes.items())
    return f"""# shapes-tiny

vgen's default model: the Wan2.1 text-to-video architecture (UMT5 text encoder, Wan transformer, Wan VAE) at a
tiny size, trained from scratch by this project on procedurally rendered clips of simple shapes
(`tools/shapes/`). It needs no download and runs on a CPU.

## What it can do
Prompts of the grammar `a {{color}} {{shape}} {{motion}}` optionally followed by `on a {{background}} background`
(case-insensitive, punctuation ignored):

- color: {", ".join(world.COLORS)}
- shape: {", ".join(world.SHAPES)} (an axis-aligned square; an equilateral triangle pointing up)
- motion: {", ".join(world.MOTIONS)}
- background: {", ".join(world.BACKGROUNDS)} (black when none is named)

Output: {world.FRAMES} frames (1 + 4k) of {world.WIDTH}x{world.HEIGHT} RGB, {world.FPS} fps, one flat-coloured object.
{IMAGE_ABILITY if plan.image_steps else ""}
## What it cannot do
Anything else: other words are unknown (`<unk>`), other sizes and lengths are outside its training
distribution, there is only ever one object, and the text encoder knows nothing about natural language.

## Held-out combinations
Never seen in training (for either background); the evaluation reports them separately:

{held_out}

## Architecture (diffusers / transformers classes, fp32)
- `transformer`: WanTransformer3DModel, patch (1, 2, 2), {transformer.config.num_attention_heads} heads x
  {transformer.config.attention_head_dim}, ffn {transformer.config.ffn_dim}, {transformer.config.num_layers} layers,
  text_dim {transformer.config.text_dim}, freq_dim {transformer.config.freq_dim}, qk_norm rms_norm_across_heads,
  cross_attn_norm; {model.parameter_count(transformer):,} parameters.
- `text_encoder`: UMT5EncoderModel, d_model {text_encoder.config.d_model}, {text_encoder.config.num_heads} heads x
  {text_encoder.config.d_kv}, d_ff {text_encoder.config.d_ff} (gated GELU), {text_encoder.config.num_layers} layers,
  {text_encoder.config.relative_attention_num_buckets} buckets / max distance
  {text_encoder.config.relative_attention_max_distance}; {model.parameter_count(text_encoder):,} parameters.
- `vae`: AutoencoderKLWan (Wan2.1), base_dim {vae.config.base_dim}, z_dim {vae.config.z_dim}, dim_mult
  {vae.config.dim_mult}, {vae.config.num_res_blocks} res block(s), temperal_downsample
  {vae.config.temperal_downsample}; {model.parameter_count(vae):,} parameters. A 17x64x64 clip is a
  16x5x8x8 latent; `latents_mean` / `latents_std` in its config are the training latents' per-channel statistics
  (the pipeline de-normalises with `latents * std + mean`).
- `tokenizer`: word-level `tokenizer.json`: lower-case, punctuation replaced by spaces, split on whitespace,
  `<pad>` = 0, `</s>` = 1 appended after the words (like T5), `<unk>` = 2, the {len(world.VOCABULARY)} words of
  the grammar from 3. Prompts are padded to **{model.MAX_TEXT_TOKENS} tokens** (`max_sequence_length`) with an
  attention mask, and the embeddings past each prompt's length are zeroed, as `WanPipeline` does; the
  transformer was trained with exactly this padding length, so use {model.MAX_TEXT_TOKENS}, not the pipeline's 512.
- `scheduler`: UniPCMultistepScheduler as Wan ships it (flow_prediction, use_flow_sigmas, bh2, order 2);
  `flow_shift` and the default steps / guidance (`sampling.json`) were chosen by `evaluate.py --sweep`.
  The negative prompt is the empty string (the model was trained with 10% empty prompts).

| file | size |
|---|---|
{size_lines}

## Training
`{command}` ({"resumable; warm-started from earlier runs, whose commands are in `tools/shapes/README.md`" if plan.base_run else "resumable; its time on 2 CPU cores is measured in `tools/shapes/README.md`"}), PyTorch 2.11 CPU, diffusers 0.42.1,
transformers 5.23.0. Seed {plan.seed}.{phase_one_text(plan)}

1. VAE: {plan.vae_image_steps} AdamW steps of {plan.vae_image_batch} single frames (every 4th step
   {plan.vae_image_batch // 2} whole frames), then {plan.vae_steps} video steps ({plan.vae_batch} 9-frame windows;
   every 4th step 2 whole 17-frame clips), frames and windows otherwise cropped to
   {plan.vae_crop}x{plan.vae_crop} around the object (lr {plan.vae_lr}, warm-up {plan.vae_warmup}, cosine);
   loss L1 + L2 with {1 + plan.object_weight:g}x weight on the object's pixels{edge_text(plan)}, plus {plan.latent_l2:g} x the
   latent's mean square; in the video steps the decoder sees the posterior's mode plus {plan.latent_noise:g} x the
   latents' spread of Gaussian noise (the log-variance head is not trained: use the mode){convolutions_text(plan)}.
   Reconstruction probe at the end: {probe}.
2. {plan.dataset_clips} training clips encoded once; per-channel latent statistics measured.
3. {dit_text(plan)}{decoder_text(run, plan)}{image_item(plan)}

## Evaluation
`tools/shapes/evaluate.py` generates with diffusers' `WanPipeline` and scores each clip with
`tools/shapes/score.py` (colour nearest the object's mean colour; shape from the bounding box's fill ratio;
motion from centroid displacement or area trend).

<!-- evaluation -->
(not evaluated yet)
<!-- /evaluation -->
{IMAGE_MARKERS if plan.image_steps else ""}"""


IMAGE_MARKERS = "\n<!-- image-evaluation -->\n(not evaluated yet)\n<!-- /image-evaluation -->\n"


def image_item(plan: Plan) -> str:
    return f"\n5. {image_text(plan)}" if plan.image_steps else ""
