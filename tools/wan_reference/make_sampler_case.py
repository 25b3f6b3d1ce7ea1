"""Few-step sampling: diffusers' schedules for a fixed timestep list, as distilled Wan models sample (lightx2v's
[1000, 750, 500, 250] with shift 5), for both of vgen's samplers, and one UniPC run over such a list on random
model outputs. The list goes to `set_timesteps(sigmas=numpy.array(t / 1000))`, the form both schedulers take a custom schedule
in. The Euler cases use `FlowMatchEulerDiscreteScheduler(shift=...)` with its other defaults, as vgen builds it
when a request asks for `"kind": "euler"` on a UniPC model; the UniPC cases the tiny Wan's scheduler with another
`flow_shift`. Writes `cases/samplers.safetensors`, which `core/tests/wan_parity.rs` checks vgen against.

    .venv/bin/python tools/wan_reference/make_sampler_case.py
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from safetensors.torch import save_file

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "core" / "tests" / "fixtures" / "wan"
# (label, shift, timesteps)
CASES = [
    ("lightx2v", 5.0, [1000, 750, 500, 250]),
    ("two", 3.0, [999, 500]),
    ("unshifted", 1.0, [1000, 700, 300]),
]


def main() -> None:
    out = {}
    base = UniPCMultistepScheduler.from_pretrained(str(FIXTURES / "tiny-wan" / "scheduler"))
    for label, shift, timesteps in CASES:
        # UniPC takes a custom schedule only as a numpy array (a list fails in its shift).
        sigmas = np.array([t / 1000 for t in timesteps])
        euler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
        euler.set_timesteps(sigmas=sigmas)
        unipc = UniPCMultistepScheduler.from_config(base.config, flow_shift=shift)
        unipc.set_timesteps(sigmas=sigmas)
        for name, s in (("euler", euler), ("unipc", unipc)):
            out[f"{name}.{label}.timesteps"] = s.timesteps.clone()
            out[f"{name}.{label}.sigmas"] = s.sigmas.clone()
        out[f"{label}.given"] = torch.tensor(timesteps, dtype=torch.int64)
        out[f"{label}.shift"] = torch.tensor(shift, dtype=torch.float64)
    # A UniPC run over the lightx2v list: its corrector and predictor at the uneven steps.
    gen = torch.Generator().manual_seed(34)
    unipc = UniPCMultistepScheduler.from_config(base.config, flow_shift=5.0)
    unipc.set_timesteps(sigmas=np.array([t / 1000 for t in CASES[0][2]]))
    x = torch.randn(1, 4, 2, 4, 4, generator=gen)
    out["run.sample"] = x.clone()
    for i, t in enumerate(unipc.timesteps):
        model_output = torch.randn(x.shape, generator=gen)
        out[f"run.model_output.{i}"] = model_output
        x = unipc.step(model_output, t, x).prev_sample
        out[f"run.prev_sample.{i}"] = x.clone()
    save_file(out, str(FIXTURES / "cases" / "samplers.safetensors"), metadata={"format": "pt"})
    print({k: v.tolist() for k, v in out.items() if k.endswith(("timesteps", "sigmas"))})


if __name__ == "__main__":
    main()
