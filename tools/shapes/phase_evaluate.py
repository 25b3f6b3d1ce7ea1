"""Phase 4: the export's sampler defaults chosen by evaluate.py's sweep (on seeds of its own), then the
208-clip evaluation at those defaults into `evaluation.json`, the model card, and the run's
`evaluation-records.json` (one record a clip)."""

from __future__ import annotations

import json
import pathlib

import evaluate
from progress import log


def evaluate_export(run: pathlib.Path, out: pathlib.Path, smoke: bool) -> None:
    if (run / "evaluate.done").exists():
        return
    if smoke:
        evaluate.SWEEP_GUIDANCE, evaluate.SWEEP_FLOW_SHIFT, evaluate.SWEEP_STEPS = (5.0,), (3.0,), (4, 8)
        original_cases = evaluate.cases
        evaluate.cases = lambda seeds: [c for c in original_cases(seeds) if c["prompt"] in SMOKE_PROMPTS]
        original_conflicts = evaluate.conflicting_cases
        evaluate.conflicting_cases = lambda seeds: original_conflicts(seeds, count=1)
    log("evaluate: sweeping guidance x flow_shift, then steps")
    swept = evaluate.sweep(out, log=log)
    log(f"evaluate: chosen {swept['chosen']}")
    evaluate.apply_defaults(out, swept["chosen"])
    defaults = evaluate.sampling_defaults(out)
    pipe = evaluate.load_pipeline(out)
    result = evaluate.assess(pipe, evaluate.cases([0, 1]), defaults["num_inference_steps"], defaults["guidance_scale"])
    result["seconds_per_clip_single"] = evaluate.single_clip_latency(
        pipe, defaults["num_inference_steps"], defaults["guidance_scale"]
    )
    log("evaluate:\n" + evaluate.table(result))
    evaluate.update_card(out, result, result["seconds_per_clip_single"])
    (out / "evaluation.json").write_text(
        json.dumps({"sweep": swept, **{k: v for k, v in result.items() if k != "records"}}, indent=2) + "\n"
    )
    records = result["records"]
    if json.loads((out / "model_index.json").read_text()).get("expand_timesteps"):
        image_pipe = evaluate.image_pipeline_of(pipe)  # the same export's components, loaded once
        steps, guidance = defaults["num_inference_steps"], defaults["guidance_scale"]
        images = evaluate.assess_images(image_pipe, evaluate.image_cases([0, 1]), steps, guidance)
        images["conflict"] = evaluate.assess_conflicts(image_pipe, evaluate.conflicting_cases([0]), steps, guidance)
        log("evaluate, image-to-video:\n" + evaluate.table(images) + f"\n  prompt against image: {images['conflict']}")
        evaluate.update_card(out, images, None)
        evaluation = json.loads((out / "evaluation.json").read_text())
        evaluation["image_to_video"] = {k: v for k, v in images.items() if k != "records"}
        (out / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
        records = records + images["records"]
    (run / "evaluation-records.json").write_text(json.dumps(records, indent=1) + "\n")
    (run / "evaluate.done").write_text("ok\n")


SMOKE_PROMPTS = {
    s.prompt(name_background=True if i % 2 else None)
    for i, (s, _) in enumerate(evaluate.evaluation_scenes())
    if i in (0, 80)
}
