"""Train the default model, shapes-tiny, from scratch on procedurally rendered clips.

Phases (each resumable; rerunning the same command continues from the latest checkpoint of the current
phase and skips finished phases):

1. vae      AutoencoderKLWan on reconstruction (object-weighted L1 + L2 of the noised posterior mode, small
            latent L2) of rendered clips;
   latents  then the training clips are encoded once and the per-channel latents_mean/latents_std measured.
2. dit      UMT5EncoderModel + WanTransformer3DModel trained jointly by rectified-flow matching on the
            normalised latents (the posterior's mode): x_t = (1 - s) x0 + s n, the model predicts n - x0 at timestep s * 1000
            (diffusers' Wan convention); s ~ logit-normal(0, 1) mixed with uniform; 10% empty prompts for
            classifier-free guidance; EMA weights are exported.
3. export   the diffusers folder layout (WanPipeline) into --out (default models/shapes-tiny).
4. evaluate sweep guidance / flow_shift / steps, write the chosen defaults, then the full evaluation into
            evaluation.json and the model card (skip with --no-evaluate).

Everything is seeded: the data and noise of step k depend only on (seed, phase, k), so a resumed run
computes the same steps as an uninterrupted one.

    .venv/bin/python tools/shapes/train.py --run NAME [flags]    # a run (the shipped recipe's flags: README.md)
    .venv/bin/python tools/shapes/train.py --smoke               # a few steps of every phase, scratch output

The phases' code: phase_vae.py (1, and the dataset's encoding), phase_decoder.py (1b), phase_dit.py (2),
export.py and model_card.py (3), phase_evaluate.py (4); the settings in plan.py. This script builds the plan
from its flags, pins it, shares another run's phases when asked, and runs the phases in order.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import shutil
import signal
import sys
import time

import torch

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
import cpu_share  # noqa: E402
import mkl_paths  # noqa: E402
from checkpoints import STOP, Stop, request_stop  # noqa: E402
from export import export  # noqa: E402
from phase_decoder import tune_decoder  # noqa: E402
from phase_dit import train_dit  # noqa: E402
from phase_evaluate import evaluate_export  # noqa: E402
from phase_image import train_image  # noqa: E402
from phase_vae import encode_dataset, train_vae  # noqa: E402
from plan import PHASE_FIELDS, RUNS, SMOKE, Plan, saved_plan  # noqa: E402
from progress import log  # noqa: E402


def link_phase(run: pathlib.Path, phase: str, source: pathlib.Path, target: str) -> None:
    """`run/phase` becomes a relative link to `source/target` (a sibling run's folder), unless it exists."""
    link = run / phase
    if not link.exists() and not link.is_symlink():
        link.symlink_to(pathlib.Path("..") / source.name / target)


def share_phase_one(run: pathlib.Path, base: pathlib.Path, plan: Plan) -> None:
    """A warm-started run uses its base run's final VAE (a link, not a copy: its fine-tuned decoder when it has
    one, else its VAE), and its encoded latents too when it asks for as many clips as the base run encoded; a run
    that asks for another number encodes its own. The decoder phase never changes the encoder, so the latents
    are the same either way."""
    if not (base / "vae" / "done").exists() or not (base / "dit" / "done").exists():
        raise SystemExit(f"{base}: the base run has not finished its VAE and transformer")
    base_plan = saved_plan(base)
    if base_plan["decoder_steps"] and not (base / "decoder" / "done").exists():
        raise SystemExit(f"{base}: the base run has not finished its decoder phase")
    links = {"vae": "decoder" if (base / "decoder" / "done").exists() else "vae"}
    if plan.dataset_clips == base_plan["dataset_clips"]:
        links["latents"] = "latents"
    for phase, target in links.items():
        link_phase(run, phase, base, target)


def share_phase_one_only(run: pathlib.Path, source: pathlib.Path, plan: Plan) -> None:
    """Link `source`'s VAE and latents into `run` (plan.phase_one_run): only when `source` ran phase 1 and encoded
    its clips with exactly this plan's settings, so that sharing them changes nothing but the time taken."""
    if not (source / "vae" / "done").exists() or not (source / "latents" / "stats.json").exists():
        raise SystemExit(f"{source}: that run has not finished its VAE and its encoded latents")
    if (source / "vae").is_symlink() or (source / "latents").is_symlink():
        raise SystemExit(f"{source}: that run shares its own phase 1; name the run that trained it")
    theirs = saved_plan(source)
    ours = dataclasses.asdict(plan)
    differ = {f: (theirs[f], ours[f]) for f in PHASE_FIELDS["vae"] + PHASE_FIELDS["latents"] if theirs[f] != ours[f]}
    if differ:
        raise SystemExit(f"--phase-one-from {source.name}: its phase 1 had other settings {differ}")
    for phase in ("vae", "latents"):
        link_phase(run, phase, source, phase)


def load_base_model(run: pathlib.Path, plan: Plan):
    """The VAE, text encoder and transformer of plan.base_model, from the run's own copy of it (`base-model/`,
    taken at the run's first start): the export may write over the folder the run started from."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5EncoderModel

    if plan.dit_steps or plan.decoder_steps or plan.base_run or plan.phase_one_run:
        raise SystemExit("--base-model starts from an exported model: give --dit-steps 0 --decoder-steps 0 and no "
                         "--base-run or --phase-one-from")
    copy = run / "base-model"
    if not copy.exists():
        source = pathlib.Path(plan.base_model)
        source = source if source.is_absolute() else REPO / source
        if not (source / "model_index.json").exists():
            raise SystemExit(f"--base-model {plan.base_model}: no model_index.json there")
        staging = run / "base-model.staging"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging)
        staging.rename(copy)
    log(f"base model: {plan.base_model} (copied into {copy})")
    vae = AutoencoderKLWan.from_pretrained(copy / "vae", torch_dtype=torch.float32).eval()
    text_encoder = UMT5EncoderModel.from_pretrained(copy / "text_encoder", torch_dtype=torch.float32).eval()
    transformer = WanTransformer3DModel.from_pretrained(copy / "transformer", torch_dtype=torch.float32).eval()
    return vae, text_encoder, transformer


def pin_plan(run: pathlib.Path, plan: Plan) -> None:
    path = run / "plan.json"
    current = dataclasses.asdict(plan)
    if path.exists():
        previous = saved_plan(run)
        for phase, fields in PHASE_FIELDS.items():
            if not (run / phase).exists():
                continue
            changed = {f: (previous.get(f), current[f]) for f in fields if previous.get(f) != current[f]}
            if changed:
                raise SystemExit(f"{run}: phase {phase} was started with other settings {changed}; use another --run")
        if previous != current:
            log(f"plan: updating the settings of phases not started yet: "
                f"{ {k: (previous.get(k), v) for k, v in current.items() if previous.get(k) != v} }")
    path.write_text(json.dumps(current, indent=2) + "\n")


def reproducing_arguments(argv: list[str]) -> list[str]:
    """The command line that reproduces the shipped model: less --phase-one-from (sharing a phase 1 trained with
    the same settings only saves its time, and the card's command must work on a clone that has no runs), and less
    --out and --no-evaluate (a trial exports and evaluates into its run's folder, and ships as a copy; the shipped
    model is the default --out, evaluated)."""
    takes_value = {"--phase-one-from", "--out"}
    dropped = takes_value | {"--no-evaluate"}
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in takes_value:
            skip = True
        elif arg.split("=", 1)[0] not in dropped:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run name: state lives in tools/shapes/runs/<run>/ (default main; smoke with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="a few steps of every phase into a scratch run and export")
    parser.add_argument("--out", help="export folder (default models/shapes-tiny; runs/<run>/export with --smoke)")
    parser.add_argument("--vae-steps", type=int)
    parser.add_argument("--dit-steps", type=int)
    parser.add_argument("--dataset-clips", type=int)
    parser.add_argument("--decoder-steps", type=int, help="fine-tune the decoder alone for this many steps (phase 1b)")
    parser.add_argument("--decoder-lr", type=float, help="phase 1b's peak learning rate (lower to continue a tuned decoder)")
    parser.add_argument("--decoder-focus", type=float, help="phase 1b: share of clips drawn by (colour, shape) group, weighted by the group's reconstructed fill-ratio error")
    parser.add_argument("--decoder-sigma-max", type=float, help="phase 1b decodes phase 2's x0 estimates (this run's transformer, or its base run's) from noise levels up to this")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--base-run", help="share this run's VAE and latents and start phase 2 from its weights")
    parser.add_argument(
        "--phase-one-from", metavar="RUN",
        help="share this run's phase 1 (VAE and latents, trained with the same settings and seed); phase 2 from scratch",
    )
    parser.add_argument("--dit-decay", type=float, help="hold phase 2's lr and decay it over only this last share of the steps")
    parser.add_argument("--dit-optimizer", choices=("adamw", "muon"), help="phase 2: adamw, or muon for the hidden matrices (AdamW for the rest)")
    parser.add_argument(
        "--dit-matmuls", choices=("float32", "bfloat16"),
        help="phase 2: the hidden Linear layers' products in bfloat16 while training (weights stay float32)",
    )
    parser.add_argument(
        "--vae-convolutions", choices=("float32", "bfloat16"),
        help="phases 1 and 1b: the VAE's convolutions in bfloat16 while it trains and encodes (weights stay float32)",
    )
    parser.add_argument("--dit-batch", type=int)
    parser.add_argument("--dit-lr", type=float)
    parser.add_argument("--sigma-shift", type=float)
    parser.add_argument("--sigma-shift-end", type=float, help="phase 2's sigma shift moves linearly from --sigma-shift to this")
    parser.add_argument("--vae-edge-weight", type=float, help="phase 1: extra loss weight on the object's outline")
    parser.add_argument("--dit-stop-at", type=int, help="end phase 2 at this step with the EMA weights so far")
    parser.add_argument("--image-steps", type=int, help="phase 2b: this many steps of image conditioning (TI2V)")
    parser.add_argument("--image-share", type=float, help="phase 2b: share of a batch's clips given their first frame")
    parser.add_argument("--image-lr", type=float, help="phase 2b's peak learning rate")
    parser.add_argument(
        "--base-model", metavar="FOLDER",
        help="start from this exported model (its VAE, text encoder and transformer) instead of phases 1 and 2",
    )
    parser.add_argument("--no-evaluate", action="store_true", help="stop after the export")
    parser.add_argument(
        "--no-compile", action="store_true",
        help="phase 2 without torch.compile (eager; compiling needs a C compiler and makes each step about 13%% faster)",
    )
    parser.add_argument(
        "--threads", default="auto",
        help="auto (default): 2 threads while the CPU is otherwise idle, 1 while other processes compete "
        "(see cpu_share.py); a number pins it (bit-exact reruns)",
    )
    args = parser.parse_args(argv)

    cpu_share.configure(args.threads)
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    plan = SMOKE if args.smoke else Plan()
    overrides = {
        k: v
        for k, v in {
            "vae_steps": args.vae_steps, "decoder_steps": args.decoder_steps, "decoder_lr": args.decoder_lr,
            "decoder_sigma_max": args.decoder_sigma_max, "decoder_focus": args.decoder_focus, "dit_steps": args.dit_steps, "dataset_clips": args.dataset_clips,
            "seed": args.seed, "base_run": args.base_run, "dit_batch": args.dit_batch, "dit_lr": args.dit_lr,
            "sigma_shift": args.sigma_shift, "sigma_shift_end": args.sigma_shift_end,
            "vae_edge_weight": args.vae_edge_weight, "dit_stop_at": args.dit_stop_at,
            "phase_one_run": args.phase_one_from, "dit_decay": args.dit_decay, "dit_optimizer": args.dit_optimizer,
            "dit_matmuls": args.dit_matmuls, "vae_convolutions": args.vae_convolutions,
            "image_steps": args.image_steps, "image_share": args.image_share, "image_lr": args.image_lr,
            "base_model": args.base_model,
        }.items()
        if v is not None
    }
    plan = dataclasses.replace(plan, **overrides)
    name = args.run or ("smoke" if args.smoke else "main")
    run = RUNS / name
    out = pathlib.Path(args.out) if args.out else (run / "export" if args.smoke else REPO / "models" / "shapes-tiny")
    run.mkdir(parents=True, exist_ok=True)
    for field in ("dit_matmuls", "vae_convolutions"):
        if getattr(plan, field) not in ("float32", "bfloat16"):
            raise SystemExit(f"{field} {getattr(plan, field)!r}: expected float32 or bfloat16")
    if plan.base_run and plan.phase_one_run:
        raise SystemExit("--base-run shares a whole run; --phase-one-from only its phase 1: name one")
    if plan.base_run:
        share_phase_one(run, RUNS / plan.base_run, plan)
    if plan.phase_one_run:
        share_phase_one_only(run, RUNS / plan.phase_one_run, plan)
    pin_plan(run, plan)
    command = " ".join(["python tools/shapes/train.py", *reproducing_arguments(argv if argv is not None else sys.argv[1:])])
    log(f"run {run} -> {out}; plan {dataclasses.asdict(plan)}")

    started = time.monotonic()
    try:
        if plan.base_model:
            vae, text_encoder, transformer = load_base_model(run, plan)
            data = encode_dataset(run, plan, vae, statistics=vae.config)
        else:
            vae = train_vae(run, plan)
            data = encode_dataset(run, plan, vae)
            text_encoder, transformer = train_dit(run, plan, vae, data, compile=not args.no_compile)
            vae = tune_decoder(run, plan, vae, data)
        text_encoder, transformer = train_image(run, plan, vae, data, text_encoder, transformer, compile=not args.no_compile)
        export(run, plan, out, vae, text_encoder, transformer, data, command)
        if not args.no_evaluate:
            evaluate_export(run, out, args.smoke)
    except Stop as stop:
        log(f"stopped by {STOP['signal']} ({stop}); rerun the same command to resume")
        return 130
    log(f"finished in {(time.monotonic() - started) / 60:.1f} min (this process)")
    return 0


if __name__ == "__main__":
    mkl_paths.reexec_if_wanted()  # on AMD CPUs: MKL's faster Intel paths (see mkl_paths.py)
    raise SystemExit(main())
