"""Phase 2: the text encoder (UMT5EncoderModel) and the transformer (WanTransformer3DModel), trained jointly.

Rectified flow on the normalised latents (the posterior's mode), as diffusers' Wan: x_t = (1 - s) x0 + s n, the
model predicts n - x0 at timestep s * 1000; s ~ logit-normal(0, 1) with a share drawn uniformly, then shifted
(sigma_shift, moving to sigma_shift_end). A share of the prompts is empty, for classifier-free guidance. AdamW,
or Muon on the hidden matrices (DitOptimizer); the exported weights are an EMA of the trained ones, and stay
float32 and eager whatever the training products (dit_matmuls) or compilation. A probe generates with the EMA
weights every dit_probe_every steps.
"""

from __future__ import annotations

import copy
import dataclasses
import pathlib
from typing import Callable

import torch
import torch.nn.functional as F

import cpu_share
import evaluate
import model
from checkpoints import Checkpoints, save_atomic
from dataset import ALL_SCENES, latent_statistics, prompt_for, vae_with_statistics
from grouped_muon import GroupedMuon
from plan import RUNS, Plan
from progress import Timer, log, progress, record_timing
from schedule import learning_rate, step_random


def sigma_shift_at(plan: Plan, step: int) -> float:
    """The shift of phase 2's training sigmas at `step`: sigma_shift, or moving linearly to sigma_shift_end."""
    if plan.sigma_shift_end <= 0:
        return plan.sigma_shift
    return plan.sigma_shift + (plan.sigma_shift_end - plan.sigma_shift) * step / max(plan.dit_steps - 1, 1)


def dit_batch(plan: Plan, step: int, data: dict, mean: torch.Tensor, std: torch.Tensor):
    rng, gen = step_random(plan, 3, step)
    index = torch.from_numpy(rng.integers(len(data["scene"]), size=plan.dit_batch))
    prompts = []
    for i in index.tolist():
        text = prompt_for(ALL_SCENES[int(data["scene"][i])], rng)
        prompts.append("" if rng.random() < plan.prompt_dropout else text)
    x0 = (data["mean"][index] - mean) / std  # the posterior's mode, normalised
    sigma = torch.sigmoid(torch.randn(plan.dit_batch, generator=gen))
    uniform = torch.rand(plan.dit_batch, generator=gen)
    pick = torch.rand(plan.dit_batch, generator=gen) < plan.uniform_sigma
    sigma = torch.where(pick, uniform, sigma)
    shift = sigma_shift_at(plan, step)
    sigma = shift * sigma / (1 + (shift - 1) * sigma)
    noise = torch.randn(x0.shape, generator=gen)
    s = sigma.view(-1, 1, 1, 1, 1)
    return prompts, (1 - s) * x0 + s * noise, sigma * 1000.0, noise - x0


def pipeline_from(vae, text_encoder, transformer, flow_shift: float | None = None):
    from diffusers import WanPipeline

    scheduler = model.build_scheduler(**({"flow_shift": flow_shift} if flow_shift is not None else {}))
    pipe = WanPipeline(
        tokenizer=model.build_tokenizer(), text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def probe_dit(vae, text_encoder, transformer, limit: int = 12) -> dict:
    """Generate 12 held-out and 12 seen prompts (one seed) with the EMA weights and score them, at 20 steps and
    guidance 3: the guidance every sweep since `amx` chose (at 5 the probe read a run's progress as a decline)."""
    cases = evaluate.cases([SWEEP_PROBE_SEED])
    items = [c for c in cases if c["split"] == "held_out"][:limit] + [c for c in cases if c["split"] == "seen"][:limit]
    text_encoder.eval(), transformer.eval()
    result = evaluate.assess(pipeline_from(vae, text_encoder, transformer), items, 20, 3.0)
    return {split: round(s["all"], 3) for split, s in result["splits"].items()}


SWEEP_PROBE_SEED = 7


def load_phase_two(folder: pathlib.Path):
    """The text encoder and transformer a finished phase 2 exported (its EMA weights, `final.pt` in `folder`)."""
    state = torch.load(folder / "final.pt", weights_only=False)
    text_encoder, transformer = model.build_text_encoder(), model.build_transformer()
    text_encoder.load_state_dict(state["text_encoder"])
    transformer.load_state_dict(state["transformer"])
    return text_encoder, transformer


def is_hidden(name: str) -> bool:
    """Whether a parameter or module (named from "transformer." or "text_encoder.") lies in the transformer's blocks
    or the text encoder's layers, rather than in the embeddings or the heads."""
    return (".blocks." in name or ".encoder.block." in name) and "relative_attention_bias" not in name


def muon_matrices(text_encoder, transformer) -> list[torch.nn.Parameter]:
    """The hidden matrices Muon updates: the 2-D weights of the transformer's blocks and of the text encoder's
    layers, not the embeddings (the relative attention bias is a table too), the norms, the biases or the heads."""
    named = [(f"transformer.{n}", p) for n, p in transformer.named_parameters()]
    named += [(f"text_encoder.{n}", p) for n, p in text_encoder.named_parameters()]
    return [p for n, p in named if p.ndim == 2 and is_hidden(n)]


def hidden_linears(text_encoder, transformer) -> list[torch.nn.Linear]:
    """The Linear layers whose weights are muon_matrices: what plan.dit_matmuls="bfloat16" converts."""
    named = [(f"transformer.{n}", m) for n, m in transformer.named_modules()]
    named += [(f"text_encoder.{n}", m) for n, m in text_encoder.named_modules()]
    return [m for n, m in named if isinstance(m, torch.nn.Linear) and is_hidden(n + ".")]


class DitOptimizer:
    """Phase 2's optimiser: AdamW over every parameter, or Muon over the hidden matrices and AdamW over the rest
    (plan.dit_optimizer). It steps, zeroes and checkpoints as one, and its param_groups are all of them."""

    def __init__(self, plan: Plan, text_encoder, transformer, muon: type = GroupedMuon):
        self.params = list(text_encoder.parameters()) + list(transformer.parameters())  # text encoder's first
        if plan.dit_optimizer == "adamw":
            matrices = []
        elif plan.dit_optimizer == "muon":
            matrices = muon_matrices(text_encoder, transformer)
        else:
            raise SystemExit(f"--dit-optimizer {plan.dit_optimizer!r}: expected adamw or muon")
        chosen = {id(p) for p in matrices}
        rest = [p for p in self.params if id(p) not in chosen]
        self.parts = [torch.optim.AdamW(rest, lr=plan.dit_lr, betas=(0.9, 0.99), weight_decay=plan.weight_decay)]
        if matrices:
            self.parts.append(
                muon(matrices, lr=plan.dit_lr, weight_decay=plan.weight_decay, adjust_lr_fn="match_rms_adamw")
            )

    @property
    def param_groups(self) -> list[dict]:
        return [group for part in self.parts for group in part.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for part in self.parts:
            part.step()

    def state_dict(self) -> dict:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state: dict) -> None:
        # A checkpoint from before the optimiser could be chosen is AdamW's own state dict.
        states = state["parts"] if "parts" in state else [state]
        if len(states) != len(self.parts):
            raise SystemExit("dit checkpoint: its optimiser is not this plan's dit_optimizer")
        for part, part_state in zip(self.parts, states):
            part.load_state_dict(part_state)


def dit_step(tokenizer, text_encoder, transformer, optimizer: DitOptimizer, batch) -> torch.Tensor:
    """One update of phase 2 (or 2b) on a batch: the flow-matching loss, its gradients clipped to norm 1. A batch of
    phase 2b carries a fifth item, the loss's weight: 0 on the latents given rather than generated."""
    prompts, noisy, timestep, target = batch[:4]
    embeddings = model.encode_prompts(tokenizer, text_encoder, prompts)
    prediction = transformer(
        hidden_states=noisy, timestep=timestep, encoder_hidden_states=embeddings, return_dict=False
    )[0]
    if len(batch) > 4:
        weight = batch[4].expand_as(prediction)
        loss = ((prediction - target) ** 2 * weight).sum() / weight.sum()
    else:
        loss = F.mse_loss(prediction, target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(optimizer.params, 1.0)
    optimizer.step()
    return loss


@dataclasses.dataclass(frozen=True)
class JointPhase:
    """A phase that trains the text encoder and transformer jointly: phase 2 (`dit`) or phase 2b (`image`). Its
    folder in the run is `name`; it runs `steps` steps (ending early at `end`) of `draw(plan, step, data, mean,
    std)` with its own learning rate, and probes with `probe(vae, text_encoder, transformer, limit)`."""

    name: str
    steps: int
    end: int
    lr: float
    warmup: int
    decay: float
    draw: Callable
    probe: Callable


def dit_phase(plan: Plan) -> JointPhase:
    return JointPhase("dit", plan.dit_steps, plan.dit_end, plan.dit_lr, plan.dit_warmup, plan.dit_decay, dit_batch, probe_dit)


def train_dit(run: pathlib.Path, plan: Plan, vae, data: dict, compile: bool = True):
    """Phase 2: from scratch, or from the base run's exported weights; returns the EMA text encoder and
    transformer."""
    folder = run / "dit"
    if plan.dit_steps == 0 and plan.base_run and not folder.exists():
        # Nothing to train: this run's transformer is its base run's, shared by a link rather than copied.
        folder.symlink_to(pathlib.Path("..") / plan.base_run / "dit")
    if (folder / "done").exists():
        text_encoder, transformer = load_phase_two(folder)
        return text_encoder.eval(), transformer.eval()
    torch.manual_seed(plan.seed + 1)
    if plan.base_run:
        text_encoder, transformer = load_phase_two(RUNS / plan.base_run / "dit")
        log(f"dit: starting from run {plan.base_run}'s exported weights")
    else:
        text_encoder, transformer = model.build_text_encoder(), model.build_transformer()
    return train_joint(run, plan, dit_phase(plan), vae, data, text_encoder, transformer, compile)


def train_joint(run: pathlib.Path, plan: Plan, phase: JointPhase, vae, data: dict, text_encoder, transformer, compile: bool):
    """Train `text_encoder` and `transformer` through `phase` (resuming from its checkpoint); save and return
    their EMA weights."""
    folder = run / phase.name
    if (folder / "done").exists():
        text_encoder, transformer = load_phase_two(folder)
        return text_encoder.eval(), transformer.eval()
    folder.mkdir(parents=True, exist_ok=True)
    for p in list(text_encoder.parameters()) + list(transformer.parameters()):  # another phase's EMA weights are frozen
        p.requires_grad_(True)
    ema_text_encoder, ema_transformer = copy.deepcopy(text_encoder).eval(), copy.deepcopy(transformer).eval()
    for p in list(ema_text_encoder.parameters()) + list(ema_transformer.parameters()):
        p.requires_grad_(False)
    optimizer = DitOptimizer(plan, text_encoder, transformer)
    name = phase.name
    ema_params = list(ema_text_encoder.parameters()) + list(ema_transformer.parameters())  # in optimizer.params' order
    checkpoint = folder / "checkpoint.pt"
    start = 0

    def state(step: int) -> dict:
        return {
            "step": step,
            "text_encoder": text_encoder.state_dict(),
            "transformer": transformer.state_dict(),
            "ema_text_encoder": ema_text_encoder.state_dict(),
            "ema_transformer": ema_transformer.state_dict(),
            "optimizer": optimizer.state_dict(),
        }

    if checkpoint.exists():
        saved_state = torch.load(checkpoint, weights_only=False)
        text_encoder.load_state_dict(saved_state["text_encoder"])
        transformer.load_state_dict(saved_state["transformer"])
        ema_text_encoder.load_state_dict(saved_state["ema_text_encoder"])
        ema_transformer.load_state_dict(saved_state["ema_transformer"])
        optimizer.load_state_dict(saved_state["optimizer"])
        start = saved_state["step"]
        log(f"{name}: resuming at step {start}/{phase.steps}")
    log(
        f"{name}: text encoder {model.parameter_count(text_encoder):,} + transformer "
        f"{model.parameter_count(transformer):,} parameters, {phase.steps} steps of {plan.dit_batch}"
    )
    mean, std = latent_statistics(data)
    tokenizer = model.build_tokenizer()
    vae = vae_with_statistics(vae, data).eval()
    text_encoder.train(), transformer.train()
    if plan.dit_matmuls == "bfloat16":  # after the EMA's deep copy: the exported EMA modules stay float32
        model.bfloat16_products(hidden_linears(text_encoder, transformer))
    if compile:  # the trained modules only: the EMA copies, which the probes run, stay eager
        model.compile_for_training(text_encoder, transformer)
        log(f"{name}: compiling the text encoder and transformer (the first step takes a minute; --no-compile to skip)")
    timer, smooth = Timer(), None
    checkpoints = Checkpoints(checkpoint, plan.checkpoint_minutes, name)
    end = phase.end
    if end < phase.steps:
        log(f"{name}: stopping at step {end} of {phase.steps} (--dit-stop-at)")
    bar = progress(end, start, f"phase {name}")
    try:
        for step in range(start, end):
            threads = cpu_share.adjust()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(phase.lr, phase.warmup, phase.steps, step, phase.decay)
            loss = dit_step(tokenizer, text_encoder, transformer, optimizer, phase.draw(plan, step, data, mean, std))
            decay = min(plan.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, [p.detach() for p in optimizer.params], 1 - decay)
            smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
            bar.set_postfix(loss=f"{smooth:.4f}", threads=threads, refresh=False)
            bar.update()
            timer.tick()
            done = step + 1
            if done % plan.dit_probe_every == 0 or done == end:
                rate = timer.per_step
                eta = f", {rate:.2f} s/step, phase ETA {rate * (phase.steps - done) / 60:.1f} min" if rate else ""
                log(f"{name} step {done}/{phase.steps}: loss {smooth:.4f} probe all-correct {phase.probe(vae, ema_text_encoder, ema_transformer, plan.probe_prompts)}{eta}")
                text_encoder.train(), transformer.train()
            elif done % 100 == 0:
                rate = timer.per_step
                log(f"{name} step {done}/{phase.steps}: loss {smooth:.4f}" + (f", {rate:.2f} s/step, phase ETA {rate * (phase.steps - done) / 60:.1f} min" if rate else ""))
            checkpoints.after_step(done, end, lambda: state(done))
    finally:
        bar.close()
    record_timing(run, f"{name}_s_per_step", timer.per_step)
    save_atomic(
        {"text_encoder": ema_text_encoder.state_dict(), "transformer": ema_transformer.state_dict()}, folder / "final.pt"
    )
    (folder / "done").write_text(f"{end}\n")
    checkpoint.unlink(missing_ok=True)
    return ema_text_encoder, ema_transformer
